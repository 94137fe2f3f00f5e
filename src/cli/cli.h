/* cli - the vlmtest command line: shared pieces of the subcommands.
 *
 * Each subcommand lives in src/cli/cmd_NAME.c and defines
 *     const struct cli_command cli_command_NAME = {"NAME", "summary", run, usage};
 * The build collects them into the command table; nothing else to register. */
#ifndef VLM_CLI_H
#define VLM_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct cli_command {
    const char *name;
    const char *summary;               /* one line for `vlmtest --help` */
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
    const char *usage;                 /* full help text for `vlmtest NAME --help` */
};

/* Exit codes shared by every subcommand. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Parse a size such as "512M", "8GiB", "1.5G", "4096" (bytes). Binary units. */
bool cli_parse_size(const char *s, uint64_t *out);
/* Parse a non-negative integer in [lo, hi]. */
bool cli_parse_int(const char *s, long lo, long hi, long *out);
/* Bytes for people ("1.23 GiB", "512 B") into buf; returns buf. */
const char *cli_human_bytes(uint64_t bytes, char *buf, size_t cap);
/* Print "vlmtest NAME: message" to stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True if argv has -h or --help before any "--". */
bool cli_wants_help(int argc, char **argv);

#endif
