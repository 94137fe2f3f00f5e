#include "cli.h"

#include "tester/run.h"

static int run(int argc, char **argv) {
    return tester_cmd_run(argc, argv, tester_backend_vlm(), false);
}

const struct cli_command cli_command_run = {
    "run",
    "test models on suites, each model in its own worker process",
    run,
    tester_run_usage,
};
