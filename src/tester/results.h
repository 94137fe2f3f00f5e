/* tester/results - the results folder of a run: results/<run-id>/.
 *
 * results.jsonl holds one JSON record a line, appended and fsync'd as each
 * case (and each model attempt) finishes, so a killed run loses at most the
 * case in flight:
 *   {"type":"case",  "model", "suite", "case_id", "status", "passed", ...}
 *   {"type":"model", "model", "attempt", "outcome", "load_ms", "timeline", ...}
 * run.json describes the run (id, arguments, shard). Run ids are UTC times,
 * so they sort by time: 20261126T083445Z-1a2b. */
#ifndef VLM_TESTER_RESULTS_H
#define VLM_TESTER_RESULTS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "base/status.h"

void tester_run_id_new(char *out, size_t size);

typedef struct tester_results {
    char *dir;  /* out/<run-id> */
    char *path; /* dir/results.jsonl */
    int fd;
    char **done; /* sorted keys of case records already present */
    size_t n_done;
} tester_results;

/* Create out_dir/run_id (resume false: must not exist) or open it to go on
 * (resume true: must exist; a torn last line from a killed run is cut). */
vlm_status tester_results_open(const char *out_dir, const char *run_id, bool resume,
                               tester_results **out, vlm_err *err);
void tester_results_close(tester_results *r);

/* Append one record as a line and fsync. */
vlm_status tester_results_append(tester_results *r, const cJSON *rec, vlm_err *err);

/* Was this case recorded before (by an earlier part of a resumed run)? */
bool tester_results_has_case(const tester_results *r, const char *model, const char *suite,
                             const char *case_id);

/* Every record of dir/results.jsonl, in order, as a JSON array. A torn last
 * line is ignored; any other bad line is an error naming file:line. */
vlm_status tester_results_read(const char *dir, cJSON **out, vlm_err *err);

/* The identity of a case record: lowercased model, suite, case id joined by
 * U+001F. Accounted string. */
char *tester_case_key(const char *model, const char *suite, const char *case_id);

/* --shard K/N: does this (model, suite, case) belong to shard k (1-based) of
 * n? A stable hash (FNV-1a 64) of the key, so every shard of every job in an
 * array picks the same split. */
bool tester_shard_pick(const char *model, const char *suite, const char *case_id, int k, int n);
/* Parse "K/N" with 1 <= K <= N. */
bool tester_shard_parse(const char *s, int *k, int *n);

/* Remove from the array every case record that a later record of the same
 * (model, suite, case id) replaces; model records stay. */
vlm_status tester_records_dedupe(cJSON *records, vlm_err *err);

/* mkdir -p */
vlm_status tester_mkdirs(const char *path, vlm_err *err);

#endif
