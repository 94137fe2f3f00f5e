/* tester/models - the models file (vlmtest.models.json).
 *
 *   {"models": [ {"name": "phi-3.5-vision-instruct",
 *                 "source": "../shared/models/phi-3.5-vision-instruct",
 *                 "options": {"device": "cpu", "precision": "bf16", "num_crops": 4,
 *                             "max_context": 4096, "mem_budget": "8G",
 *                             "gpu_mem_budget": "20G"}} ]}
 * (a bare top-level array is accepted too). A source is a path (relative to
 * the models file's folder) or a Hugging Face reference org/name[@rev],
 * looked up in the local HF cache. Names are unique without regard to case.
 *
 * Test-only options drive the isolation tests: "test_crash": "abort" (the
 * worker aborts after loading), "oom" (it allocates until it is killed),
 * "hang" (it stops answering), "leak_bytes" (it leaks "test_leak_bytes",
 * default 64 MiB, after unloading). */
#ifndef VLM_TESTER_MODELS_H
#define VLM_TESTER_MODELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "base/status.h"

typedef enum tester_crash_mode {
    TESTER_CRASH_NONE = 0,
    TESTER_CRASH_ABORT,
    TESTER_CRASH_OOM,
    TESTER_CRASH_HANG,
    TESTER_CRASH_LEAK,
} tester_crash_mode;

typedef struct tester_model_opts {
    char device[16];         /* "auto", "cpu", "cuda" */
    char precision[16];      /* "" = as stored */
    int num_crops;           /* 0 = the model's default */
    int max_context;         /* 0 = the default */
    uint64_t mem_budget;     /* bytes; 0 = derived from the machine */
    uint64_t gpu_mem_budget; /* device bytes; 0 = the GPU's free memory less 5% */
    uint64_t mem_limit;      /* bytes of worker RSS at which the parent kills it; 0 = none */
    int n_threads;
    tester_crash_mode test_crash;
    uint64_t test_leak_bytes;
} tester_model_opts;

typedef struct tester_model {
    const char *name;
    const char *source; /* as written */
    char *resolved;     /* path resolved against the models file, or the HF ref */
    bool is_path;
    tester_model_opts opts;
} tester_model;

typedef struct tester_models {
    char *path;
    tester_model *models;
    size_t n;
    cJSON *json;
} tester_models;

/* Parse and validate. Every source must exist (a path, or a reference present
 * in the Hugging Face cache). */
vlm_status tester_models_load(const char *path, tester_models **out, vlm_err *err);
void tester_models_free(tester_models *m);

/* Index of the model named name (case-insensitive), or -1. */
int tester_models_find(const tester_models *m, const char *name);

/* The options as a JSON object (for results and reports). */
cJSON *tester_model_opts_json(const tester_model_opts *o);
const char *tester_crash_mode_name(tester_crash_mode m);

/* Parse "512M", "8G", "1.5GiB", "4096" (binary units). */
bool tester_parse_size(const char *s, uint64_t *out);

#endif
