/* tester/worker - what runs inside a worker process: one model, its cases.
 *
 * The inference itself sits behind a backend, a small table of function
 * pointers: worker_vlm.c implements it with the libvlm API; tests supply
 * their own. The worker loop around it (worker.c) measures load time,
 * memory per phase and per case, and writes one JSON line per event to the
 * pipe back to the parent:
 *
 *   {"ev":"start", "mem":{...}}                       before loading
 *   {"ev":"loaded", "load_ms", "config", "mem"}      or {"ev":"load_error", "msg"}
 *   {"ev":"case_start", "i"}                          i: index into the job's items
 *   {"ev":"case_end", "i", "turns":[...], "peak_rss", "peak_accounted", "peak_cat", "mem",
 *    "placement": {"device", "gpu_layers", "n_layers", "head_device", "vision_device",
 *                  "precision", "rung"},
 *    "gpu": {"peak_accounted": {"load", "image", "prefill", "decode", "case"},
 *            "peak_device": {...the same, as the device reports it in use}},
 *    "fallbacks": [{"phase": "load", "before", "after", "steps", "note"}]}
 *   {"ev":"unloaded", "unload_ms", "mem"}
 *   {"ev":"done"}
 * where "mem" is {"rss", "hwm", "accounted", "cat": {"weights": bytes, ...}}. */
#ifndef VLM_TESTER_WORKER_H
#define VLM_TESTER_WORKER_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "base/status.h"
#include "tester/models.h"
#include "tester/suite.h"
#include "vlm/vlm.h"

typedef struct tester_job_item {
    const tester_suite *suite;
    const tester_case *kase;
} tester_job_item;

/* One model with the options to use (perhaps a fallback) and its cases. */
typedef struct tester_job {
    const tester_model *model;
    tester_model_opts opts;
    const tester_job_item *items;
    size_t n_items;
} tester_job;

typedef struct tester_gen {
    int max_tokens;
    double temperature;
} tester_gen;

typedef struct tester_backend {
    const char *name;
    /* Load job->model with job->opts; add to config what was used
     * (device, precision, crops, context, ...). */
    vlm_status (*load)(const tester_job *job, void **model, cJSON *config, vlm_err *err);
    /* A fresh conversation; system may be NULL. */
    vlm_status (*session_new)(void *model, const char *system, void **session, vlm_err *err);
    /* One user turn with its images; *answer is freed with answer_free. */
    vlm_status (*chat)(void *session, const tester_turn *turn, const tester_gen *gen, char **answer,
                       vlm_gen_stats *stats, vlm_err *err);
    void (*session_free)(void *session);
    void (*answer_free)(char *answer);
    void (*unload)(void *model);
} tester_backend;

/* The backend on the libvlm engine (worker_vlm.c). */
const tester_backend *tester_backend_vlm(void);

/* Exit codes of a worker process. */
enum { TESTER_WORKER_OK = 0, TESTER_WORKER_LOAD_FAILED = 3, TESTER_WORKER_PIPE = 4 };

/* Run the job in this (worker) process, writing events to fd. Returns the
 * worker's exit code. */
int tester_worker_run(const tester_backend *be, const tester_job *job, int fd);

#endif
