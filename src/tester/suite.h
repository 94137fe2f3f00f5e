/* tester/suite - test suites: a folder with suite.json and cases.jsonl.
 *
 * suite.json: {"name": "...", "description": "...", "kind": "single"|"context",
 *              "defaults": {"max_tokens": 64, "temperature": 0, "system": "..."}}
 * cases.jsonl, one JSON object a line (blank lines allowed):
 *   single:  {"id", "images": [paths relative to the suite], "prompt",
 *             "expected", "scorer", scorer keys (see score.h), "tags", "max_tokens"}
 *   context: {"id", "tags", "turns": [{"images", "prompt", "expected", "scorer", ...}]}
 *            a turn without "scorer" is not scored (it sets the conversation up).
 *
 * Loading validates everything a run would trip over later: JSON syntax
 * (file:line), unknown keys, missing images, unknown scorers, bad patterns,
 * duplicate ids, an empty suite. */
#ifndef VLM_TESTER_SUITE_H
#define VLM_TESTER_SUITE_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "base/status.h"
#include "tester/score.h"

typedef struct tester_turn {
    const char *prompt;
    char **images; /* absolute or suite-relative resolved paths */
    size_t n_images;
    bool scored;
    tester_score_spec score;
    const cJSON *expected; /* for reports; NULL when not scored */
    int max_tokens;        /* 0: the suite default */
} tester_turn;

typedef struct tester_case {
    const char *id;
    int line; /* line in cases.jsonl */
    tester_turn *turns;
    size_t n_turns;
    const cJSON *tags; /* array of strings or NULL */
    cJSON *json;       /* the parsed line; strings above point into it */
} tester_case;

typedef struct tester_suite {
    char *dir;
    const char *name;
    const char *description;
    bool context;
    int max_tokens;     /* default 128 */
    double temperature; /* default 0 */
    const char *system; /* NULL: none */
    tester_case *cases;
    size_t n_cases;
    cJSON *meta; /* suite.json */
} tester_suite;

vlm_status tester_suite_load(const char *dir, tester_suite **out, vlm_err *err);
void tester_suite_free(tester_suite *s);

/* Load several suites; all must be of the wanted kind (context or not) and
 * their names distinct. */
vlm_status tester_suites_load(const char *const *dirs, size_t n, bool context, tester_suite ***out,
                              vlm_err *err);
void tester_suites_free(tester_suite **s, size_t n);

#endif
