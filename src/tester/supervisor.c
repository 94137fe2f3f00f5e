/* tester/supervisor - fork, pipe, poll, limits, and the post-mortem. */
#include "tester/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/json.h"
#include "base/log.h"
#include "tester/memprobe.h"
#include "tester/tjson.h"

#define SAMPLE_MS       100.0
#define MAX_RSS_POINTS  2000
#define MAX_CASE_EVENTS 1000

typedef struct sup_state {
    tester_sup_result *res;
    cJSON *rss_points; /* [[t_ms, bytes], ...] */
    cJSON *events;
    double t_start;
    double case_t0;
    double sample_every; /* ms; doubles when the timeline is thinned */
    bool got_done;
    bool loaded; /* "loaded" or "load_error" arrived */
    bool got_load_error;
    char load_error[256];
} sup_state;

static double num_at(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(it) ? it->valuedouble : 0;
}

static void set_num(cJSON *o, const char *k, double v) {
    cJSON_DeleteItemFromObjectCaseSensitive(o, k);
    cJSON_AddNumberToObject(o, k, v);
}

/* Keep the timeline bounded: drop every other point and sample half as often. */
static void thin_points(sup_state *s) {
    int n = cJSON_GetArraySize(s->rss_points);
    if (n < MAX_RSS_POINTS) return;
    for (int i = n - 2; i > 0; i -= 2) cJSON_DeleteItemFromArray(s->rss_points, i);
    s->sample_every *= 2;
}

/* The same for the per-case markers (two per case): over the cap, every
 * other case marker goes; the phase markers (start, loaded, unload) stay. */
static void thin_events(sup_state *s) {
    int n_case = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, s->events) {
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "ev"));
        n_case += ev && strncmp(ev, "case_", 5) == 0;
    }
    if (n_case < MAX_CASE_EVENTS) return;
    int k = 0;
    cJSON *next;
    for (cJSON *it = s->events->child; it; it = next) {
        next = it->next;
        const char *ev = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "ev"));
        if (!ev || strncmp(ev, "case_", 5) != 0) continue;
        if (k++ % 2 == 1) cJSON_Delete(cJSON_DetachItemViaPointer(s->events, it));
    }
}

static void add_point(sup_state *s, double t, uint64_t rss) {
    cJSON *p = cJSON_CreateArray();
    if (!p) return;
    tjson_push(p, cJSON_CreateNumber((double)(int64_t)t));
    tjson_push(p, cJSON_CreateNumber((double)rss));
    tjson_push(s->rss_points, p);
    thin_points(s);
}

static void handle_event(sup_state *s, const cJSON *ev, tester_event_fn on_event, void *user) {
    tester_sup_result *r = s->res;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "ev"));
    if (!name) return;
    double now = memprobe_now_ms();
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(ev, "mem");
    double rss = num_at(mem, "rss");
    /* A marker on the timeline with the worker's own accounting. */
    cJSON *m = cJSON_CreateObject();
    if (m) {
        cJSON_AddNumberToObject(m, "t_ms", (double)(int64_t)(now - s->t_start));
        cJSON_AddStringToObject(m, "ev", name);
        cJSON_AddNumberToObject(m, "rss", rss);
        cJSON_AddNumberToObject(m, "accounted", num_at(mem, "accounted"));
        const cJSON *cat = cJSON_GetObjectItemCaseSensitive(mem, "cat");
        if (cat) tjson_add(m, "cat", cJSON_Duplicate(cat, true));
        if (strcmp(name, "case_start") == 0 || strcmp(name, "case_end") == 0)
            cJSON_AddNumberToObject(m, "i", num_at(ev, "i"));
        /* Between its start and end markers a case is drawn with its peak
         * bytes per category (the worker frees its buffers before case_end,
         * so the readings at the two markers alone would show nothing). */
        const cJSON *peak = cJSON_GetObjectItemCaseSensitive(ev, "peak_cat");
        cJSON *last = cJSON_GetArrayItem(s->events, cJSON_GetArraySize(s->events) - 1);
        const char *last_ev =
            last ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(last, "ev")) : NULL;
        if (peak && strcmp(name, "case_end") == 0 && last_ev &&
            strcmp(last_ev, "case_start") == 0 && num_at(last, "i") == num_at(ev, "i")) {
            cJSON *dup = cJSON_Duplicate(peak, true);
            if (dup) {
                cJSON_DeleteItemFromObjectCaseSensitive(last, "cat");
                tjson_add(last, "cat", dup);
                cJSON_AddTrueToObject(last, "cat_is_peak");
            }
        }
        if (tjson_push(s->events, m) && strcmp(name, "case_end") == 0) thin_events(s);
    }
    if (rss > 0) {
        r->last_rss = (uint64_t)rss;
        if ((uint64_t)rss > r->peak_rss) r->peak_rss = (uint64_t)rss;
    }
    double hwm = num_at(mem, "hwm");
    if ((uint64_t)hwm > r->peak_rss) r->peak_rss = (uint64_t)hwm;
    if (strcmp(name, "start") == 0) {
        set_num(r->record, "mem_before_load", rss);
        set_num(r->record, "accounted_before_load", num_at(mem, "accounted"));
    } else if (strcmp(name, "loaded") == 0) {
        s->loaded = true;
        set_num(r->record, "load_ms", num_at(ev, "load_ms"));
        set_num(r->record, "gpu_peak_load", num_at(ev, "gpu_peak_load"));
        set_num(r->record, "gpu_used_load", num_at(ev, "gpu_used_load"));
        set_num(r->record, "mem_after_load", rss);
        set_num(r->record, "accounted_after_load", num_at(mem, "accounted"));
        set_num(r->record, "mapped_after_load", num_at(mem, "mapped"));
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(ev, "config");
        if (cfg) {
            cJSON_DeleteItemFromObjectCaseSensitive(r->record, "config");
            tjson_add(r->record, "config", cJSON_Duplicate(cfg, true));
        }
    } else if (strcmp(name, "load_error") == 0) {
        s->loaded = true;
        s->got_load_error = true;
        snprintf(s->load_error, sizeof s->load_error, "%s",
                 cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "msg"))
                     ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "msg"))
                     : "load failed");
    } else if (strcmp(name, "case_start") == 0) {
        r->in_flight = (long)num_at(ev, "i");
        s->case_t0 = now;
    } else if (strcmp(name, "case_end") == 0) {
        r->in_flight = -1;
        r->n_done++;
    } else if (strcmp(name, "unloaded") == 0) {
        set_num(r->record, "unload_ms", num_at(ev, "unload_ms"));
        set_num(r->record, "mem_after_unload", rss);
        set_num(r->record, "accounted_after_unload", num_at(mem, "accounted"));
        set_num(r->record, "residual", rss - num_at(r->record, "mem_before_load"));
    } else if (strcmp(name, "done") == 0) {
        s->got_done = true;
    }
    if (on_event) on_event(user, ev);
}

/* Split complete lines out of buf[0..*len) and handle them. */
static void drain_lines(sup_state *s, char *buf, size_t *len, tester_event_fn on_event,
                        void *user) {
    size_t start = 0;
    for (size_t i = 0; i < *len; i++) {
        if (buf[i] != '\n') continue;
        cJSON *ev = NULL;
        vlm_err e;
        if (i > start && vlm_json_parse(buf + start, i - start, "worker pipe", &ev, &e) == VLM_OK) {
            handle_event(s, ev, on_event, user);
            cJSON_Delete(ev);
        } else if (i > start) {
            VLM_WARN("tester: unreadable line from worker: %s", e.msg);
        }
        start = i + 1;
    }
    memmove(buf, buf + start, *len - start);
    *len -= start;
}

static void classify(sup_state *s, int wstatus, const char *kill_reason, int64_t oom_before,
                     int64_t global_oom_before, const char *kill_outcome) {
    tester_sup_result *r = s->res;
    if (kill_reason) {
        snprintf(r->outcome, sizeof r->outcome, "%s", kill_outcome);
        snprintf(r->detail, sizeof r->detail, "%s", kill_reason);
        if (WIFSIGNALED(wstatus)) r->term_signal = WTERMSIG(wstatus);
        return;
    }
    if (WIFEXITED(wstatus)) {
        r->exit_code = WEXITSTATUS(wstatus);
        if (r->exit_code == TESTER_WORKER_OK && s->got_done) {
            snprintf(r->outcome, sizeof r->outcome, "ok");
        } else if (s->got_load_error) {
            snprintf(r->outcome, sizeof r->outcome, "load_error");
            snprintf(r->detail, sizeof r->detail, "%.250s", s->load_error);
        } else {
            snprintf(r->outcome, sizeof r->outcome, "crashed");
            snprintf(r->detail, sizeof r->detail, "worker exited with code %d", r->exit_code);
        }
        return;
    }
    int sig = WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0;
    r->term_signal = sig;
    int64_t oom_after = memprobe_cgroup_oom_kills();
    uint64_t limit = memprobe_cgroup_limit();
    int64_t global_after = memprobe_global_oom_kills();
    bool cgroup_oom = oom_before >= 0 && oom_after > oom_before;
    bool global_oom = global_oom_before >= 0 && global_after > global_oom_before;
    bool near_limit = limit && r->peak_rss >= limit / 10 * 9;
    if (sig == SIGKILL && (cgroup_oom || global_oom || near_limit)) {
        snprintf(r->outcome, sizeof r->outcome, "oom");
        snprintf(r->detail, sizeof r->detail,
                 "killed by SIGKILL: %s (last RSS %llu bytes, cgroup limit %llu)",
                 cgroup_oom   ? "cgroup oom_kill count went up"
                 : global_oom ? "the kernel's oom_kill count went up"
                              : "RSS near the cgroup limit",
                 (unsigned long long)r->last_rss, (unsigned long long)limit);
        return;
    }
    snprintf(r->outcome, sizeof r->outcome, "crashed");
    snprintf(r->detail, sizeof r->detail, "killed by signal %d (%s), last RSS %llu bytes", sig,
             strsignal(sig), (unsigned long long)r->last_rss);
}

vlm_status tester_supervise(const tester_backend *be, const tester_job *job,
                            const tester_limits *lim, tester_event_fn on_event,
                            tester_tick_fn on_tick, void *user, tester_sup_result *res,
                            vlm_err *err) {
    memset(res, 0, sizeof *res);
    res->in_flight = -1;
    vlm_json_init();
    sup_state s = {.res = res, .sample_every = SAMPLE_MS};
    res->record = cJSON_CreateObject();
    s.rss_points = cJSON_CreateArray();
    s.events = cJSON_CreateArray();
    size_t cap = 1 << 16, len = 0;
    char *buf = vlm_alloc(cap, VLM_MEM_OTHER);
    int fds[2] = {-1, -1};
    if (!res->record || !s.rss_points || !s.events || !buf) {
        cJSON_Delete(res->record);
        res->record = NULL;
        cJSON_Delete(s.rss_points);
        cJSON_Delete(s.events);
        vlm_free(buf);
        return vlm_err_set(err, VLM_ERR_NOMEM, "supervisor: out of memory for model %s",
                           job->model->name);
    }
    if (pipe2(fds, O_CLOEXEC) != 0) {
        int e = errno;
        cJSON_Delete(res->record);
        res->record = NULL;
        cJSON_Delete(s.rss_points);
        cJSON_Delete(s.events);
        vlm_free(buf);
        return vlm_err_set(err, VLM_ERR_IO, "supervisor: pipe: %s", strerror(e));
    }
    int64_t oom_before = memprobe_cgroup_oom_kills();
    int64_t global_oom_before = memprobe_global_oom_kills();
    pid_t parent = getpid();
    fflush(NULL); /* the child must not write out the parent's buffered output again */
    s.t_start = memprobe_now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        cJSON_Delete(res->record);
        res->record = NULL;
        cJSON_Delete(s.rss_points);
        cJSON_Delete(s.events);
        vlm_free(buf);
        return vlm_err_set(err, VLM_ERR_IO, "supervisor: fork for model %s: %s", job->model->name,
                           strerror(e));
    }
    if (pid == 0) {
        /* The worker. It dies with its parent (a killed sweep leaves no
         * orphans holding memory), and ends with _exit so that the
         * parent's atexit handlers and stdio buffers are not run twice. */
        close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(TESTER_WORKER_PIPE);
        signal(SIGPIPE, SIG_IGN);
        /* Whatever the engine prints goes to stderr: stdout belongs to the
         * parent (`--json` writes the summary there). */
        dup2(2, 1);
        int rc = tester_worker_run(be, job, fds[1]);
        close(fds[1]);
        _exit(rc);
    }
    close(fds[1]);

    const char *kill_reason = NULL;
    const char *kill_outcome = NULL;
    char reason[256];
    double last_sample = 0;
    bool eof = false;
    int wstatus = 0;
    while (!eof) {
        struct pollfd p = {fds[0], POLLIN, 0};
        int pr = poll(&p, 1, 50);
        if (pr < 0 && errno != EINTR) break;
        if (pr > 0) {
            if (len == cap) {
                /* A line longer than the buffer: grow (events are small, but
                 * answers can be long). */
                char *nb = vlm_realloc(buf, cap * 2, VLM_MEM_OTHER);
                if (!nb) {
                    len = 0; /* drop the partial line */
                } else {
                    buf = nb;
                    cap *= 2;
                }
            }
            ssize_t n = read(fds[0], buf + len, cap - len);
            if (n > 0) {
                len += (size_t)n;
                drain_lines(&s, buf, &len, on_event, user);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                eof = true;
            }
        }
        double now = memprobe_now_ms();
        if (now - last_sample >= s.sample_every) {
            last_sample = now;
            uint64_t rss = 0;
            if (memprobe_read(pid, &rss, NULL) && rss > 0) {
                add_point(&s, now - s.t_start, rss);
                res->last_rss = rss;
                if (rss > res->peak_rss) res->peak_rss = rss;
                if (on_tick) on_tick(user, rss);
                if (job->opts.mem_limit && rss > job->opts.mem_limit && !kill_reason) {
                    snprintf(reason, sizeof reason,
                             "RSS %llu bytes over the model's mem_limit of %llu: killed",
                             (unsigned long long)rss, (unsigned long long)job->opts.mem_limit);
                    kill_reason = reason;
                    kill_outcome = "oom";
                }
            }
        }
        if (!kill_reason && lim && lim->model_timeout_s > 0 &&
            now - s.t_start > lim->model_timeout_s * 1000) {
            snprintf(reason, sizeof reason, "model time limit of %g s reached: killed",
                     lim->model_timeout_s);
            kill_reason = reason;
            kill_outcome = "timeout";
        }
        if (!kill_reason && lim && lim->load_timeout_s > 0 && !s.loaded &&
            now - s.t_start > lim->load_timeout_s * 1000) {
            snprintf(reason, sizeof reason, "load time limit of %g s reached: killed",
                     lim->load_timeout_s);
            kill_reason = reason;
            kill_outcome = "timeout";
        }
        if (!kill_reason && lim && lim->case_timeout_s > 0 && res->in_flight >= 0 &&
            now - s.case_t0 > lim->case_timeout_s * 1000) {
            snprintf(reason, sizeof reason, "case time limit of %g s reached: killed",
                     lim->case_timeout_s);
            kill_reason = reason;
            kill_outcome = "timeout";
        }
        if (kill_reason) {
            kill(pid, SIGKILL);
            break;
        }
    }
    /* Drain whatever the worker wrote before it ended. */
    for (;;) {
        if (len == cap) break;
        ssize_t n = read(fds[0], buf + len, cap - len);
        if (n <= 0) break;
        len += (size_t)n;
        drain_lines(&s, buf, &len, on_event, user);
    }
    close(fds[0]);
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {}
    res->wall_ms = memprobe_now_ms() - s.t_start;
    classify(&s, wstatus, kill_reason, oom_before, global_oom_before, kill_outcome);
    vlm_free(buf);

    set_num(res->record, "mem_peak", (double)res->peak_rss);
    set_num(res->record, "last_rss", (double)res->last_rss);
    set_num(res->record, "wall_ms", res->wall_ms);
    cJSON *tl = cJSON_AddObjectToObject(res->record, "timeline");
    if (tl) {
        tjson_add(tl, "rss", s.rss_points);
        tjson_add(tl, "events", s.events);
    } else {
        cJSON_Delete(s.rss_points);
        cJSON_Delete(s.events);
    }
    VLM_INFO("tester: model %s: worker %d ended: %s %s", job->model->name, (int)pid, res->outcome,
             res->detail);
    return VLM_OK;
}
