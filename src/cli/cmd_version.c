#include "cli.h"

#include <stdio.h>

static int run(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("vlmtest 0.1.0\n");
    return CLI_OK;
}

const struct cli_command cli_command_version = {
    "version",
    "print the version",
    run,
    "usage: vlmtest version\n\nPrint the version of vlmtest.\n",
};
