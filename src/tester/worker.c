/* tester/worker - the loop inside a worker process (see worker.h). */
#include "tester/worker.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "backend/gpu.h"
#include "base/alloc.h"
#include "base/json.h"
#include "mem/monitor.h"
#include "tester/memprobe.h"
#include "tester/tjson.h"

/* Write one event as a JSON line. The line goes out in as few write()s as
 * the pipe takes; the parent drops a torn last line if the worker dies in
 * the middle of it. False when the parent is gone. */
static bool emit(int fd, cJSON *ev) {
    char *s = vlm_json_print(ev);
    cJSON_Delete(ev);
    if (!s) return true; /* out of memory: lose the event, keep going */
    size_t n = strlen(s);
    s[n] = '\n';
    size_t off = 0;
    bool ok = true;
    while (off < n + 1) {
        ssize_t w = write(fd, s + off, n + 1 - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            ok = false;
            break;
        }
        off += (size_t)w;
    }
    vlm_free(s);
    return ok;
}

static cJSON *mem_json(void) {
    uint64_t rss = 0, hwm = 0;
    memprobe_read(0, &rss, &hwm);
    vlm_mem_stats ms;
    vlm_alloc_get_stats(&ms);
    cJSON *m = cJSON_CreateObject();
    if (!m) return NULL;
    cJSON_AddNumberToObject(m, "rss", (double)rss);
    cJSON_AddNumberToObject(m, "hwm", (double)hwm);
    cJSON_AddNumberToObject(m, "accounted", (double)ms.total_current);
    cJSON_AddNumberToObject(m, "mapped", (double)ms.mapped_current);
    cJSON *cat = cJSON_AddObjectToObject(m, "cat");
    for (int c = 0; cat && c < VLM_MEM_CAT_COUNT; c++)
        cJSON_AddNumberToObject(cat, vlm_mem_cat_name((vlm_mem_cat)c), (double)ms.current[c]);
    return m;
}

static cJSON *event(const char *name) {
    vlm_json_init();
    cJSON *ev = cJSON_CreateObject();
    if (!ev) return NULL;
    cJSON_AddStringToObject(ev, "ev", name);
    cJSON *m = mem_json();
    if (m) tjson_add(ev, "mem", m);
    return ev;
}

/* Test-only: grow RSS in 16 MiB steps until the parent kills us for going
 * over the model's mem_limit (or the cgroup does). Stops at 8 GiB so that a
 * misconfigured test cannot take the machine down; then it aborts. */
static void crash_oom(void) {
    for (int i = 0; i < 512; i++) {
        char *p = vlm_alloc(16u << 20, VLM_MEM_OTHER);
        if (p) memset(p, 0x5a, 16u << 20);
        usleep(10000);
    }
    raise(SIGABRT);
}

/* Device memory of the load (bytes; 0 without a GPU), and where the model's
 * parts run with the load's fallbacks: what every case record carries. */
typedef struct worker_model_info {
    uint64_t gpu_peak_load, gpu_used_load;
    cJSON *placement; /* {"device", "gpu_layers", "n_layers", "head_device", "vision_device",
                         "precision", "rung"} */
    cJSON *fallbacks; /* [{"phase": "load", "before", "after", "note"}] */
} worker_model_info;

static uint64_t gpu_used_now(void) {
    vlm_gpu_info gi;
    if (!vlm_gpu_built() || vlm_gpu_query(&gi, NULL) != VLM_OK || gi.total_bytes < gi.free_bytes)
        return 0;
    return gi.total_bytes - gi.free_bytes;
}

static const char *cfg_str(const cJSON *o, const char *k, const char *def) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
    return s ? s : def;
}

static double cfg_num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* From the config the backend reported (a backend that says nothing of
 * placement ran on the CPU). */
static void model_info_from_config(const cJSON *config, worker_model_info *wi) {
    const cJSON *plan = cJSON_GetObjectItemCaseSensitive(config, "plan");
    wi->placement = cJSON_CreateObject();
    if (wi->placement) {
        cJSON *p = wi->placement;
        cJSON_AddStringToObject(p, "device", cfg_str(config, "device", "cpu"));
        cJSON_AddNumberToObject(p, "gpu_layers", cfg_num(config, "gpu_layers"));
        cJSON_AddNumberToObject(p, "n_layers", cfg_num(config, "n_layers"));
        cJSON_AddStringToObject(p, "head_device", cfg_str(config, "head_device", "cpu"));
        cJSON_AddStringToObject(p, "vision_device", cfg_str(config, "vision_device", "cpu"));
        cJSON_AddStringToObject(p, "precision", cfg_str(plan, "precision", ""));
        cJSON_AddStringToObject(p, "rung", cfg_str(plan, "rung", ""));
    }
    wi->fallbacks = cJSON_CreateArray();
    if (wi->fallbacks && cfg_num(plan, "fallbacks") > 0) {
        cJSON *f = cJSON_CreateObject();
        if (f) {
            cJSON_AddStringToObject(f, "phase", "load");
            cJSON_AddStringToObject(f, "before", cfg_str(plan, "first_rung", ""));
            cJSON_AddStringToObject(f, "after", cfg_str(plan, "rung", ""));
            cJSON_AddNumberToObject(f, "steps", cfg_num(plan, "fallbacks"));
            cJSON_AddStringToObject(f, "note", cfg_str(plan, "fallback_note", ""));
            tjson_push(wi->fallbacks, f);
        }
    }
}

/* {"load", "image", "prefill", "decode", "case"} of device bytes. */
static cJSON *gpu_phases(uint64_t load, const uint64_t ph[3]) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    uint64_t c = load;
    static const char *const names[3] = {"image", "prefill", "decode"};
    cJSON_AddNumberToObject(o, "load", (double)load);
    for (int i = 0; i < 3; i++) {
        cJSON_AddNumberToObject(o, names[i], (double)ph[i]);
        if (ph[i] > c) c = ph[i];
    }
    cJSON_AddNumberToObject(o, "case", (double)c);
    return o;
}

static cJSON *turn_json(const char *answer, const vlm_gen_stats *st, double ms, const vlm_err *e) {
    cJSON *t = cJSON_CreateObject();
    if (!t) return NULL;
    cJSON_AddStringToObject(t, "answer", answer ? answer : "");
    if (e) {
        cJSON_AddStringToObject(t, "error", e->msg);
        cJSON_AddStringToObject(t, "error_status", vlm_status_name(e->status));
    }
    cJSON_AddNumberToObject(t, "tokens_in", st->tokens_in);
    cJSON_AddNumberToObject(t, "tokens_out", st->tokens_out);
    cJSON_AddNumberToObject(t, "image_tokens", st->image_tokens);
    cJSON_AddNumberToObject(t, "image_ms", st->image_ms);
    cJSON_AddNumberToObject(t, "prefill_ms", st->prefill_ms);
    cJSON_AddNumberToObject(t, "first_token_ms", st->first_token_ms);
    cJSON_AddNumberToObject(t, "decode_ms", st->decode_ms);
    cJSON_AddNumberToObject(t, "decode_tps", st->decode_tps);
    cJSON_AddStringToObject(t, "stop_reason", st->stop_reason);
    cJSON_AddNumberToObject(t, "total_ms", ms);
    return t;
}

static bool run_case(const tester_backend *be, void *model, const worker_model_info *wi,
                     const tester_job_item *it, int fd, size_t index) {
    uint64_t gpu_peak[3] = {0}, gpu_used[3] = {0}; /* image, prefill, decode: max over turns */
    cJSON *ev = event("case_start");
    if (ev) cJSON_AddNumberToObject(ev, "i", (double)index);
    if (!emit(fd, ev)) return false;
    /* The case's peaks: VmHWM reset to the current RSS and a new peak window
     * of the accounted allocator (per category), both opened by the scope. */
    vlm_mem_scope scope;
    vlm_mem_scope_begin(&scope, it->kase->id);
    cJSON *turns = cJSON_CreateArray();
    void *sess = NULL;
    vlm_err e;
    vlm_err_clear(&e);
    vlm_gen_stats zero;
    memset(&zero, 0, sizeof zero);
    if (be->session_new(model, it->suite->system, &sess, &e)) {
        cJSON *t = turn_json(NULL, &zero, 0, &e);
        if (t && turns)
            tjson_push(turns, t);
        else
            cJSON_Delete(t);
    } else {
        for (size_t k = 0; k < it->kase->n_turns; k++) {
            const tester_turn *turn = &it->kase->turns[k];
            tester_gen g = {turn->max_tokens ? turn->max_tokens : it->suite->max_tokens,
                            it->suite->temperature};
            char *answer = NULL;
            vlm_gen_stats st;
            memset(&st, 0, sizeof st);
            vlm_err_clear(&e);
            double t0 = memprobe_now_ms();
            vlm_status s = be->chat(sess, turn, &g, &answer, &st, &e);
            const uint64_t pk[3] = {st.gpu_peak_image, st.gpu_peak_prefill, st.gpu_peak_decode};
            const uint64_t us[3] = {st.gpu_used_image, st.gpu_used_prefill, st.gpu_used_decode};
            for (int q = 0; q < 3; q++) {
                if (pk[q] > gpu_peak[q]) gpu_peak[q] = pk[q];
                if (us[q] > gpu_used[q]) gpu_used[q] = us[q];
            }
            cJSON *t = turn_json(answer, &st, memprobe_now_ms() - t0, s ? &e : NULL);
            if (answer) be->answer_free(answer);
            if (t && turns)
                tjson_push(turns, t);
            else
                cJSON_Delete(t);
            if (s) break; /* the conversation cannot go on */
        }
        be->session_free(sess);
    }
    vlm_mem_scope_result peak;
    vlm_mem_scope_end(&scope, &peak);
    vlm_mem_stats ms;
    vlm_alloc_get_stats(&ms);
    ev = event("case_end");
    if (ev) {
        cJSON_AddNumberToObject(ev, "i", (double)index);
        if (turns) tjson_add(ev, "turns", turns);
        turns = NULL;
        cJSON_AddNumberToObject(ev, "peak_rss", (double)peak.rss_peak);
        cJSON_AddNumberToObject(ev, "peak_accounted", (double)peak.accounted_peak);
        cJSON *pc = cJSON_AddObjectToObject(ev, "peak_cat");
        for (int c = 0; pc && c < VLM_MEM_CAT_COUNT; c++)
            cJSON_AddNumberToObject(pc, vlm_mem_cat_name((vlm_mem_cat)c), (double)ms.peak[c]);
        /* where it ran, device memory per phase, the fallbacks taken */
        if (wi->placement) tjson_add(ev, "placement", cJSON_Duplicate(wi->placement, true));
        cJSON *gpu = cJSON_AddObjectToObject(ev, "gpu");
        if (gpu) {
            cJSON *a = gpu_phases(wi->gpu_peak_load, gpu_peak);
            if (a) tjson_add(gpu, "peak_accounted", a);
            cJSON *d = gpu_phases(wi->gpu_used_load, gpu_used);
            if (d) tjson_add(gpu, "peak_device", d);
        }
        if (wi->fallbacks) tjson_add(ev, "fallbacks", cJSON_Duplicate(wi->fallbacks, true));
    }
    cJSON_Delete(turns);
    return emit(fd, ev);
}

int tester_worker_run(const tester_backend *be, const tester_job *job, int fd) {
    const tester_model_opts *o = &job->opts;
    if (!emit(fd, event("start"))) return TESTER_WORKER_PIPE;
    vlm_alloc_reset_peaks();
    void *model = NULL;
    vlm_err e;
    vlm_err_clear(&e);
    cJSON *config = cJSON_CreateObject();
    worker_model_info wi;
    memset(&wi, 0, sizeof wi);
    vlm_gpu_monitor_install();
    vlm_gpu_mem_reset_peak();
    double t0 = memprobe_now_ms();
    vlm_status st = config ? be->load(job, &model, config, &e)
                           : vlm_err_set(&e, VLM_ERR_NOMEM, "worker: out of memory");
    double load_ms = memprobe_now_ms() - t0;
    vlm_gpu_mem_stats gs;
    vlm_gpu_mem_stats_get(&gs);
    wi.gpu_peak_load = gs.total_peak;
    wi.gpu_used_load = gpu_used_now();
    if (st) {
        cJSON_Delete(config);
        cJSON *ev = event("load_error");
        if (ev) {
            cJSON_AddStringToObject(ev, "msg", e.msg);
            cJSON_AddStringToObject(ev, "status", vlm_status_name(st));
        }
        emit(fd, ev);
        return TESTER_WORKER_LOAD_FAILED;
    }
    model_info_from_config(config, &wi);
    cJSON *ev = event("loaded");
    if (ev) {
        cJSON_AddNumberToObject(ev, "load_ms", load_ms);
        cJSON_AddNumberToObject(ev, "gpu_peak_load", (double)wi.gpu_peak_load);
        cJSON_AddNumberToObject(ev, "gpu_used_load", (double)wi.gpu_used_load);
        tjson_add(ev, "config", config);
    } else {
        cJSON_Delete(config);
    }
    if (!emit(fd, ev)) return TESTER_WORKER_PIPE;

    switch (o->test_crash) {
    case TESTER_CRASH_ABORT:
        raise(SIGABRT);
        break;
    case TESTER_CRASH_OOM:
        crash_oom();
        break;
    case TESTER_CRASH_HANG:
        for (;;) pause();
    default:
        break;
    }

    bool pipe_ok = true;
    for (size_t i = 0; i < job->n_items && pipe_ok; i++)
        pipe_ok = run_case(be, model, &wi, &job->items[i], fd, i);
    cJSON_Delete(wi.placement);
    cJSON_Delete(wi.fallbacks);
    if (!pipe_ok) return TESTER_WORKER_PIPE;

    if (!emit(fd, event("unload_start"))) return TESTER_WORKER_PIPE;
    t0 = memprobe_now_ms();
    be->unload(model);
    /* Give freed heap back to the kernel so RSS shows what is really held. */
    malloc_trim(0);
    double unload_ms = memprobe_now_ms() - t0;
    if (o->test_crash == TESTER_CRASH_LEAK) {
        /* Test-only: a leak the cleanup check must catch (touched, so it is
         * resident). Deliberately never freed. */
        char *leak = vlm_alloc((size_t)o->test_leak_bytes, VLM_MEM_OTHER);
        if (leak) memset(leak, 0x6b, (size_t)o->test_leak_bytes);
    }
    ev = event("unloaded");
    if (ev) cJSON_AddNumberToObject(ev, "unload_ms", unload_ms);
    if (!emit(fd, ev)) return TESTER_WORKER_PIPE;
    if (!emit(fd, event("done"))) return TESTER_WORKER_PIPE;
    return TESTER_WORKER_OK;
}
