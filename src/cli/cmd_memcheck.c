#include "cli.h"

#include "tester/run.h"

static int run(int argc, char **argv) {
    return tester_cmd_memcheck(argc, argv, tester_backend_vlm());
}

const struct cli_command cli_command_memcheck = {
    "memcheck",
    "load, infer once, unload, and check memory returns to the baseline",
    run,
    tester_memcheck_usage,
};
