/* vlmtest - run and test vision-language models on machines short of memory. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#define CLI_COMMAND(n) extern const struct cli_command cli_command_##n;
#include "cli_commands.inc"
#undef CLI_COMMAND

static const struct cli_command *const commands[] = {
#define CLI_COMMAND(n) &cli_command_##n,
#include "cli_commands.inc"
#undef CLI_COMMAND
};
static const size_t n_commands = sizeof commands / sizeof commands[0];

static void print_usage(FILE *f) {
    fprintf(f, "usage: vlmtest COMMAND [OPTIONS]\n\n"
               "Run and test vision-language models without running out of memory.\n\n"
               "commands:\n");
    for (size_t i = 0; i < n_commands; i++)
        fprintf(f, "  %-12s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(f, "\n`vlmtest COMMAND --help` explains a command.\n"
               "Environment: VLM_LOG=debug|info|warn|error, VLM_THREADS=N,\n"
               "VLM_FAIL_ALLOC_AT=N[+] (fault injection), VLM_ALLOC_STATS=1.\n");
}

static const struct cli_command *find_command(const char *name) {
    for (size_t i = 0; i < n_commands; i++)
        if (strcmp(commands[i]->name, name) == 0) return commands[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0) {
        print_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(name, "help") == 0) {
        if (argc < 3) {
            print_usage(stdout);
            return CLI_OK;
        }
        name = argv[2];
        const struct cli_command *c = find_command(name);
        if (!c) {
            fprintf(stderr, "vlmtest: no command '%s' (see vlmtest --help)\n", name);
            return CLI_USAGE;
        }
        fputs(c->usage, stdout);
        return CLI_OK;
    }
    const struct cli_command *c = find_command(name);
    if (!c) {
        fprintf(stderr, "vlmtest: no command '%s' (see vlmtest --help)\n", name);
        return CLI_USAGE;
    }
    if (cli_wants_help(argc - 1, argv + 1)) {
        fputs(c->usage, stdout);
        return CLI_OK;
    }
    return c->run(argc - 1, argv + 1);
}
