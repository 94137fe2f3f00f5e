#include "cli.h"

#include "tester/run.h"

static int run(int argc, char **argv) {
    return tester_cmd_run(argc, argv, tester_backend_vlm(), true);
}

const struct cli_command cli_command_context = {
    "context",
    "test models on multi-turn conversations (context suites)",
    run,
    tester_context_usage,
};
