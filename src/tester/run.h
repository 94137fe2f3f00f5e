/* tester/run - the run, context, merge and memcheck commands, with the
 * backend passed in: the vlmtest command line passes the libvlm backend,
 * tests pass their own, so the whole path (argument parsing, validation,
 * workers, results, reports) is the same code in both.
 *
 * Each returns a process exit code: 0 everything ran and passed, 1 a case
 * failed, a model crashed or a check failed, 2 bad arguments or input. */
#ifndef VLM_TESTER_RUN_H
#define VLM_TESTER_RUN_H

#include <stdbool.h>

#include "tester/worker.h"

/* argv[0] is the command name ("run" or "context"). */
int tester_cmd_run(int argc, char **argv, const tester_backend *be, bool context);
int tester_cmd_merge(int argc, char **argv);
int tester_cmd_memcheck(int argc, char **argv, const tester_backend *be);

extern const char tester_run_usage[];
extern const char tester_context_usage[];
extern const char tester_merge_usage[];
extern const char tester_memcheck_usage[];

#endif
