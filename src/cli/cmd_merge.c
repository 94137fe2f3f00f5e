#include "cli.h"

#include "tester/run.h"

static int run(int argc, char **argv) {
    return tester_cmd_merge(argc, argv);
}

const struct cli_command cli_command_merge = {
    "merge",
    "merge result folders (shards) into one with reports",
    run,
    tester_merge_usage,
};
