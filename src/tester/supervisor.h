/* tester/supervisor - run one model's job in a worker process and watch it.
 *
 * The parent forks a worker, reads its JSON-line events from a pipe, samples
 * its RSS every 100 ms, and kills it (SIGKILL) when a case runs past the case
 * limit, the whole model past the model limit, or its RSS past the model's
 * mem_limit. A worker that dies is classified: "oom" when the cgroup's
 * oom_kill counter went up, the parent killed it for mem_limit, or it was
 * SIGKILLed with RSS near the cgroup limit; "crashed" for any other signal or
 * an unexpected exit; "timeout" when the parent killed it for time;
 * "load_error" when the backend could not load. */
#ifndef VLM_TESTER_SUPERVISOR_H
#define VLM_TESTER_SUPERVISOR_H

#include <stdint.h>

#include <cjson/cJSON.h>

#include "tester/worker.h"

typedef struct tester_limits {
    double case_timeout_s;  /* 0: none; per case (a context case: per conversation) */
    double model_timeout_s; /* 0: none; load + all cases + unload */
    double load_timeout_s;  /* 0: none; from the worker's start until it has loaded */
} tester_limits;

/* Called in the parent for each event line from the worker (parsed). */
typedef void (*tester_event_fn)(void *user, const cJSON *ev);
/* Called about every 100 ms with the worker's current RSS (for progress). */
typedef void (*tester_tick_fn)(void *user, uint64_t rss);

typedef struct tester_sup_result {
    char outcome[16]; /* "ok", "crashed", "oom", "timeout", "load_error" */
    char detail[256]; /* e.g. "killed by signal 6 (Aborted)" */
    long in_flight;   /* item index running when the worker ended, or -1 */
    size_t n_done;    /* items whose case_end arrived */
    int exit_code;    /* when it exited */
    int term_signal;  /* when a signal ended it */
    uint64_t last_rss, peak_rss;
    double wall_ms;
    /* Model-level measurements and the memory timeline (owned; see
     * tester_supervise). */
    cJSON *record;
} tester_sup_result;

/* Run job in a worker. Returns an error only when the worker could not be
 * started (pipe/fork failure, out of memory); every way the worker can end is
 * an outcome in res. res->record gets: load_ms, unload_ms, config,
 * mem_before_load, mem_after_load, mem_peak, mem_after_unload, residual,
 * accounted_after_load, accounted_after_unload, last_rss, and timeline
 * {"rss": [[t_ms, bytes]...], "events": [{"t_ms", "ev", "rss", "accounted",
 * "cat"}]}. Free it with cJSON_Delete. */
vlm_status tester_supervise(const tester_backend *be, const tester_job *job,
                            const tester_limits *lim, tester_event_fn on_event,
                            tester_tick_fn on_tick, void *user, tester_sup_result *res,
                            vlm_err *err);

#endif
