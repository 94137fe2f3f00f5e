/* tester/run - the sweep: models x suites through supervised workers. */
#include "tester/run.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "tester/memprobe.h"
#include "tester/report.h"
#include "tester/results.h"
#include "tester/strbuf.h"
#include "tester/supervisor.h"
#include "tester/tjson.h"

#define COMMON_OPTIONS                                                                             \
    "  --models FILE       the models file (default vlmtest.models.json)\n"                        \
    "  --suite DIR         a suite folder; repeatable (default: every suite of the\n"              \
    "                      right kind under suites/)\n"                                            \
    "  --out DIR           where run folders go (default results)\n"                               \
    "  --run-id ID         name the run (default: the UTC start time)\n"                           \
    "  --resume RUN_ID     go on with an interrupted run, skipping recorded cases\n"               \
    "  --shard K/N         run the K-th of N deterministic slices of the cases\n"                  \
    "  --retry-fallback    re-run a crashed or OOM-killed model once with fewer\n"                 \
    "                      crops and a smaller context\n"                                          \
    "  --device D          run every model on D (cuda, cpu, auto), over the models\n"              \
    "                      file's \"device\" option\n"                                             \
    "  --gpu-mem-budget SIZE  device bytes for every model's GPU rungs (over\n"                    \
    "                      \"gpu_mem_budget\")\n"                                                  \
    "  --case-timeout S    kill a worker whose case runs longer (default 600)\n"                   \
    "  --model-timeout S   kill a worker whose model runs longer (default: none)\n"                \
    "  --json              print the summary (report.json) on stdout\n"                            \
    "\nResults go to OUT/RUN_ID/results.jsonl (one record per case, fsync'd as it\n"               \
    "finishes) with report.json, report.md and report.html. Exit status: 0 all\n"                  \
    "passed, 1 a case failed or a model crashed, 2 bad arguments or input.\n"

const char tester_run_usage[] =
    "usage: vlmtest run [NAME...] [OPTIONS]\n\n"
    "Test every model of the models file (or those NAMEd, case-insensitively) on\n"
    "single-turn suites, one model at a time, each in its own worker process.\n\n" COMMON_OPTIONS;

const char tester_context_usage[] =
    "usage: vlmtest context [NAME...] [OPTIONS]\n\n"
    "Like `vlmtest run`, over context suites: each case is a conversation whose\n"
    "turns share one session (the KV cache is reused); each turn is scored, and\n"
    "the case passes when every scored turn does.\n\n" COMMON_OPTIONS;

const char tester_merge_usage[] =
    "usage: vlmtest merge DIR... --out DIR [--json]\n\n"
    "Merge run folders (for instance the shards of a job array) into one folder\n"
    "with one results.jsonl and the reports. A case recorded in several folders\n"
    "is kept once (the last given wins).\n";

const char tester_memcheck_usage[] =
    "usage: vlmtest memcheck MODEL [--models FILE] [--tolerance SIZE] [--timeout S] [--json]\n\n"
    "Record a baseline, load MODEL (a name from the models file, or a model path)\n"
    "in a worker, report the configuration used, run one simple inference,\n"
    "unload, clean up, and check that RSS came back to the baseline within the\n"
    "tolerance (default max(32 MiB, 2% of the model's size)). Prints PASS or FAIL\n"
    "with the figures; exit status 0 or 1 (2 for bad arguments).\n";

/* ------------------------------------------------------------------------ */
/* arguments                                                                */

typedef struct run_args {
    const char *models_path;
    const char **names;
    size_t n_names;
    const char **suites;
    size_t n_suites;
    const char *out_dir;
    const char *run_id;
    const char *resume;
    int shard_k, shard_n;
    bool retry_fallback;
    bool json;
    const char *device;      /* --device: overrides every model's option */
    uint64_t gpu_mem_budget; /* --gpu-mem-budget: likewise */
    tester_limits limits;
} run_args;

static void err_msg(const char *cmd, const char *fmt, const char *a) {
    fprintf(stderr, "vlmtest %s: ", cmd);
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
}

static bool parse_seconds(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0) || v > 1e7) return false;
    *out = v;
    return true;
}

/* 0 ok, 2 usage error (printed). */
static int parse_run_args(int argc, char **argv, run_args *a) {
    const char *cmd = argv[0];
    memset(a, 0, sizeof *a);
    a->models_path = "vlmtest.models.json";
    a->out_dir = "results";
    a->shard_k = a->shard_n = 1;
    a->limits.case_timeout_s = 600;
    a->limits.load_timeout_s = 1800;
    a->names = VLM_NEW_ARRAY(const char *, (size_t)argc + 1, VLM_MEM_OTHER);
    a->suites = VLM_NEW_ARRAY(const char *, (size_t)argc + 1, VLM_MEM_OTHER);
    if (!a->names || !a->suites) {
        err_msg(cmd, "%s", "out of memory");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = strcmp(o, "--models") == 0 || strcmp(o, "--suite") == 0 ||
                     strcmp(o, "--out") == 0 || strcmp(o, "--resume") == 0 ||
                     strcmp(o, "--shard") == 0 || strcmp(o, "--case-timeout") == 0 ||
                     strcmp(o, "--model-timeout") == 0 || strcmp(o, "--run-id") == 0 ||
                     strcmp(o, "--load-timeout") == 0 || strcmp(o, "--device") == 0 ||
                     strcmp(o, "--gpu-mem-budget") == 0;
        if (takes && !v) {
            err_msg(cmd, "%s needs a value", o);
            return 2;
        }
        if (strcmp(o, "--models") == 0)
            a->models_path = argv[++i];
        else if (strcmp(o, "--suite") == 0)
            a->suites[a->n_suites++] = argv[++i];
        else if (strcmp(o, "--out") == 0)
            a->out_dir = argv[++i];
        else if (strcmp(o, "--run-id") == 0)
            a->run_id = argv[++i];
        else if (strcmp(o, "--resume") == 0)
            a->resume = argv[++i];
        else if (strcmp(o, "--retry-fallback") == 0)
            a->retry_fallback = true;
        else if (strcmp(o, "--json") == 0)
            a->json = true;
        else if (strcmp(o, "--device") == 0) {
            const char *d = argv[++i];
            if (strcmp(d, "cuda") && strcmp(d, "cpu") && strcmp(d, "auto")) {
                err_msg(cmd, "--device %s: expected cuda, cpu or auto", d);
                return 2;
            }
            a->device = d;
        } else if (strcmp(o, "--gpu-mem-budget") == 0) {
            if (!tester_parse_size(argv[++i], &a->gpu_mem_budget) || a->gpu_mem_budget == 0) {
                err_msg(cmd, "--gpu-mem-budget %s: expected a size such as 24G", argv[i]);
                return 2;
            }
        } else if (strcmp(o, "--shard") == 0) {
            if (!tester_shard_parse(argv[++i], &a->shard_k, &a->shard_n)) {
                err_msg(cmd, "--shard %s: expected K/N with 1 <= K <= N", argv[i]);
                return 2;
            }
        } else if (strcmp(o, "--case-timeout") == 0) {
            if (!parse_seconds(argv[++i], &a->limits.case_timeout_s)) {
                err_msg(cmd, "--case-timeout %s: expected seconds", argv[i]);
                return 2;
            }
        } else if (strcmp(o, "--load-timeout") == 0) {
            if (!parse_seconds(argv[++i], &a->limits.load_timeout_s)) {
                err_msg(cmd, "--load-timeout %s: expected seconds", argv[i]);
                return 2;
            }
        } else if (strcmp(o, "--model-timeout") == 0) {
            if (!parse_seconds(argv[++i], &a->limits.model_timeout_s)) {
                err_msg(cmd, "--model-timeout %s: expected seconds", argv[i]);
                return 2;
            }
        } else if (o[0] == '-' && o[1]) {
            err_msg(cmd, "unknown option %s (see --help)", o);
            return 2;
        } else {
            a->names[a->n_names++] = o;
        }
    }
    if (a->resume && a->run_id) {
        err_msg(cmd, "%s", "--resume and --run-id exclude each other");
        return 2;
    }
    return 0;
}

static void free_run_args(run_args *a) {
    vlm_free(a->names);
    vlm_free(a->suites);
}

/* The suites under dir (default suites/): sub-folders with a suite.json. */
static vlm_status default_suites(const char *dir, bool context, char ***out, size_t *n,
                                 vlm_err *err) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return vlm_err_set(err, VLM_ERR_NOT_FOUND,
                           "%s: no suites folder (give suites with --suite DIR)", dir);
    size_t cap = 16;
    char **v = VLM_NEW_ARRAY(char *, cap, VLM_MEM_OTHER);
    vlm_status st = v ? VLM_OK : vlm_err_set(err, VLM_ERR_NOMEM, "out of memory");
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[PATH_MAX], meta[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(meta, sizeof meta, "%s/suite.json", path);
        if (!vlm_file_is_regular(meta)) continue;
        /* Only the suites of the wanted kind. */
        cJSON *j = NULL;
        if (vlm_json_parse_file(meta, &j, err)) {
            st = err->status;
            break;
        }
        const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "kind"));
        bool is_ctx = kind && strcmp(kind, "context") == 0;
        cJSON_Delete(j);
        if (is_ctx != context) continue;
        if (*n == cap) {
            char **nv = vlm_realloc(v, cap * 2 * sizeof *v, VLM_MEM_OTHER);
            if (!nv) {
                st = vlm_err_set(err, VLM_ERR_NOMEM, "out of memory");
                break;
            }
            v = nv;
            cap *= 2;
        }
        v[*n] = vlm_strdup(path, VLM_MEM_OTHER);
        if (!v[*n])
            st = vlm_err_set(err, VLM_ERR_NOMEM, "out of memory");
        else
            (*n)++;
    }
    closedir(d);
    if (!st && *n == 0)
        st = vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: no %s suites found", dir,
                         context ? "context" : "single-turn");
    if (st) {
        for (size_t i = 0; i < *n; i++) vlm_free(v[i]);
        vlm_free(v);
        *n = 0;
        return st;
    }
    /* readdir order is arbitrary; sort for a stable run order. */
    for (size_t i = 1; i < *n; i++)
        for (size_t k = i; k > 0 && strcmp(v[k - 1], v[k]) > 0; k--) {
            char *t = v[k];
            v[k] = v[k - 1];
            v[k - 1] = t;
        }
    *out = v;
    return VLM_OK;
}

/* ------------------------------------------------------------------------ */
/* progress                                                                 */

typedef struct progress {
    bool tty;
    size_t model_i, n_models;
    const char *model;
    size_t case_j, n_cases, passed;
    size_t done_total, total;
    uint64_t rss;
    double t0, last_draw;
} progress;

static void fmt_mib(char *out, size_t size, uint64_t b) {
    if (b >= (1ull << 30))
        snprintf(out, size, "%.2f GiB", (double)b / (1 << 30));
    else
        snprintf(out, size, "%.1f MiB", (double)b / (1 << 20));
}

static void progress_draw(progress *p, bool force) {
    if (!p->tty) return;
    double now = memprobe_now_ms();
    if (!force && now - p->last_draw < 200) return;
    p->last_draw = now;
    char rss[32], eta[32] = "?";
    fmt_mib(rss, sizeof rss, p->rss);
    if (p->done_total > 0) {
        double left = (now - p->t0) / (double)p->done_total * (double)(p->total - p->done_total);
        snprintf(eta, sizeof eta, "%.0fs", left / 1000);
    }
    fprintf(stderr, "\r\033[Kmodel %zu/%zu %s | case %zu/%zu | passed %zu | RSS %s | ETA %s",
            p->model_i, p->n_models, p->model, p->case_j, p->n_cases, p->passed, rss, eta);
    fflush(stderr);
}

/* ------------------------------------------------------------------------ */
/* one model                                                                */

typedef struct model_run {
    const char *cmd;
    const char *run_id;
    tester_results *res;
    const tester_job *job;
    int attempt;
    bool fallback;
    progress *prog;
    size_t n_passed, n_failed;
    bool write_failed;
} model_run;

static void add_turn_stats(cJSON *dst, const cJSON *t) {
    static const char *const keys[] = {"tokens_in",  "tokens_out", "image_tokens", "image_ms",
                                       "prefill_ms", "decode_ms",  "total_ms",     NULL};
    for (const char *const *k = keys; *k; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, *k);
        if (!cJSON_IsNumber(v)) continue;
        cJSON *d = cJSON_GetObjectItemCaseSensitive(dst, *k);
        if (d)
            cJSON_SetNumberValue(d, d->valuedouble + v->valuedouble);
        else
            cJSON_AddNumberToObject(dst, *k, v->valuedouble);
    }
}

static cJSON *case_record_base(const model_run *mr, const tester_job_item *it, const char *status) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    cJSON_AddStringToObject(r, "type", "case");
    cJSON_AddStringToObject(r, "run_id", mr->run_id);
    cJSON_AddStringToObject(r, "model", mr->job->model->name);
    cJSON_AddStringToObject(r, "suite", it->suite->name);
    cJSON_AddStringToObject(r, "case_id", it->kase->id);
    cJSON_AddStringToObject(r, "status", status);
    cJSON_AddNumberToObject(r, "attempt", mr->attempt);
    if (mr->fallback) cJSON_AddBoolToObject(r, "fallback", true);
    if (it->kase->tags) tjson_add(r, "tags", cJSON_Duplicate(it->kase->tags, true));
    return r;
}

static void write_record(model_run *mr, cJSON *r) {
    if (!r) {
        mr->write_failed = true;
        return;
    }
    vlm_err e;
    if (tester_results_append(mr->res, r, &e)) {
        fprintf(stderr, "vlmtest %s: %s\n", mr->cmd, e.msg);
        mr->write_failed = true;
    }
    cJSON_Delete(r);
}

/* A case_end event: score each turn, write the record. */
static void on_case_end(model_run *mr, const cJSON *ev) {
    long i = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ev, "i"));
    if (i < 0 || (size_t)i >= mr->job->n_items) return;
    const tester_job_item *it = &mr->job->items[i];
    const cJSON *turns = cJSON_GetObjectItemCaseSensitive(ev, "turns");
    bool error = false, all_pass = true;
    int scored = 0, turns_passed = 0;
    char reason[512] = "";
    cJSON *out_turns = cJSON_CreateArray();
    cJSON *r = case_record_base(mr, it, "ok");
    if (!r || !out_turns) {
        cJSON_Delete(r);
        cJSON_Delete(out_turns);
        mr->write_failed = true;
        return;
    }
    const char *last_answer = "";
    for (size_t k = 0; k < it->kase->n_turns; k++) {
        const tester_turn *turn = &it->kase->turns[k];
        const cJSON *t = cJSON_GetArrayItem(turns, (int)k);
        cJSON *ot = t ? cJSON_Duplicate(t, true) : cJSON_CreateObject();
        if (!ot) continue;
        cJSON_AddStringToObject(ot, "prompt", turn->prompt);
        const char *answer = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "answer"));
        const char *terr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "error"));
        if (!t) terr = "turn not reached";
        char tag[32] = "";
        if (it->kase->n_turns > 1) snprintf(tag, sizeof tag, "turn %zu: ", k + 1);
        if (terr) {
            error = true;
            if (!reason[0]) snprintf(reason, sizeof reason, "%s%.400s", tag, terr);
        }
        if (answer) last_answer = answer;
        if (t) add_turn_stats(r, t);
        if (turn->scored) {
            scored++;
            bool pass = false;
            char why[256] = "";
            vlm_err e;
            if (!terr && tester_score(&turn->score, answer, &pass, why, sizeof why, &e)) {
                snprintf(why, sizeof why, "%.250s", e.msg);
            }
            if (terr) snprintf(why, sizeof why, "error: %.200s", terr);
            turns_passed += pass;
            all_pass = all_pass && pass;
            cJSON_AddStringToObject(ot, "scorer", tester_scorer_name(turn->score.kind));
            tjson_add(ot, "expected", cJSON_Duplicate(turn->expected, true));
            cJSON_AddBoolToObject(ot, "passed", pass);
            if (!pass) {
                cJSON_AddStringToObject(ot, "reason", why);
                if (!reason[0]) snprintf(reason, sizeof reason, "%s%s", tag, why);
            }
        }
        tjson_push(out_turns, ot);
    }
    bool passed = !error && all_pass && scored > 0;
    if (error) cJSON_SetValuestring(cJSON_GetObjectItemCaseSensitive(r, "status"), "error");
    cJSON_AddBoolToObject(r, "passed", passed);
    cJSON_AddStringToObject(r, "answer", last_answer);
    if (reason[0]) cJSON_AddStringToObject(r, "reason", reason);
    if (it->kase->n_turns == 1 && it->kase->turns[0].expected) {
        tjson_add(r, "expected", cJSON_Duplicate(it->kase->turns[0].expected, true));
        cJSON_AddStringToObject(r, "scorer", tester_scorer_name(it->kase->turns[0].score.kind));
    }
    cJSON_AddNumberToObject(r, "turns_scored", scored);
    cJSON_AddNumberToObject(r, "turns_passed", turns_passed);
    const cJSON *t0 = cJSON_GetArrayItem(turns, 0);
    if (t0) {
        cJSON_AddNumberToObject(
            r, "first_token_ms",
            cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t0, "first_token_ms")));
        double tps = 0;
        int n = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, turns) {
            tps += cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t, "decode_tps"));
            n++;
        }
        cJSON_AddNumberToObject(r, "decode_tps", n ? tps / n : 0);
    }
    static const char *const mem_keys[] = {
        "peak_rss", "peak_accounted", "peak_cat", "placement", "gpu", NULL};
    for (const char *const *k = mem_keys; *k; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(ev, *k);
        if (v) tjson_add(r, *k, cJSON_Duplicate(v, true));
    }
    /* Fallbacks: the load's (from the worker) and this run's own retry with
     * fewer crops and a smaller context (attempt 2). */
    cJSON *fb = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(ev, "fallbacks"), true);
    if (!fb) fb = cJSON_CreateArray();
    if (fb && mr->fallback) {
        cJSON *f = cJSON_CreateObject();
        if (f) {
            char before[96], after[96];
            const tester_model_opts *o0 = &mr->job->model->opts, *o1 = &mr->job->opts;
            snprintf(before, sizeof before, "num_crops %d, max_context %d", o0->num_crops,
                     o0->max_context);
            snprintf(after, sizeof after, "num_crops %d, max_context %d", o1->num_crops,
                     o1->max_context);
            cJSON_AddStringToObject(f, "phase", "worker");
            cJSON_AddStringToObject(f, "before", before);
            cJSON_AddStringToObject(f, "after", after);
            tjson_push(fb, f);
        }
    }
    if (fb) tjson_add(r, "fallbacks", fb);
    tjson_add(r, "turns", out_turns);
    if (passed)
        mr->n_passed++;
    else
        mr->n_failed++;
    progress *p = mr->prog;
    p->case_j++;
    p->passed += passed;
    p->done_total++;
    if (!p->tty) {
        double ms = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "total_ms"));
        fprintf(stderr, "[vlmtest] model %zu/%zu %s: case %zu/%zu %s/%s %s (%.0f ms)%s%s\n",
                p->model_i, p->n_models, p->model, p->case_j, p->n_cases, it->suite->name,
                it->kase->id,
                passed  ? "PASS"
                : error ? "ERROR"
                        : "FAIL",
                isnan(ms) ? 0 : ms, reason[0] ? ": " : "", reason);
    }
    progress_draw(p, true);
    write_record(mr, r);
}

static void on_event(void *user, const cJSON *ev) {
    model_run *mr = user;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "ev"));
    if (!name) return;
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(ev, "mem");
    if (mem)
        mr->prog->rss =
            (uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(mem, "rss"));
    if (strcmp(name, "case_end") == 0)
        on_case_end(mr, ev);
    else
        progress_draw(mr->prog, false);
}

static void on_tick(void *user, uint64_t rss) {
    model_run *mr = user;
    mr->prog->rss = rss;
    progress_draw(mr->prog, false);
}

static void write_model_record(model_run *mr, const tester_sup_result *sr, size_t n_items) {
    cJSON *r = sr->record ? cJSON_Duplicate(sr->record, true) : cJSON_CreateObject();
    if (!r) {
        mr->write_failed = true;
        return;
    }
    const tester_model *m = mr->job->model;
    cJSON_AddStringToObject(r, "type", "model");
    cJSON_AddStringToObject(r, "run_id", mr->run_id);
    cJSON_AddStringToObject(r, "model", m->name);
    cJSON_AddStringToObject(r, "source", m->source);
    cJSON_AddNumberToObject(r, "attempt", mr->attempt);
    cJSON_AddBoolToObject(r, "fallback", mr->fallback);
    cJSON_AddStringToObject(r, "outcome", sr->outcome);
    cJSON_AddStringToObject(r, "detail", sr->detail);
    cJSON *opts = tester_model_opts_json(&mr->job->opts);
    if (opts) tjson_add(r, "options", opts);
    if (!cJSON_GetObjectItemCaseSensitive(r, "config")) {
        cJSON *cfg = tester_model_opts_json(&mr->job->opts);
        if (cfg) tjson_add(r, "config", cfg);
    }
    cJSON_AddNumberToObject(r, "cases_planned", (double)n_items);
    cJSON_AddNumberToObject(r, "cases_done", (double)sr->n_done);
    if (sr->term_signal) cJSON_AddNumberToObject(r, "signal", sr->term_signal);
    write_record(mr, r);
}

/* Record the cases a worker did not finish: the one in flight gets the
 * outcome (with the last memory sample), the rest "not_run". */
static void write_unfinished(model_run *mr, const tester_sup_result *sr, size_t from) {
    for (size_t i = from; i < mr->job->n_items; i++) {
        const tester_job_item *it = &mr->job->items[i];
        bool in_flight = (long)i == sr->in_flight;
        bool load = strcmp(sr->outcome, "load_error") == 0;
        const char *status = load ? "error" : in_flight ? sr->outcome : "not_run";
        cJSON *r = case_record_base(mr, it, status);
        if (r) {
            char reason[400];
            if (load || in_flight)
                snprintf(reason, sizeof reason, "%s: %s", sr->outcome, sr->detail);
            else
                snprintf(reason, sizeof reason, "not run: the worker ended early (%s)",
                         sr->outcome);
            cJSON_AddBoolToObject(r, "passed", false);
            cJSON_AddStringToObject(r, "answer", "");
            cJSON_AddStringToObject(r, "reason", reason);
            if (in_flight) {
                cJSON_AddNumberToObject(r, "peak_rss", (double)sr->peak_rss);
                cJSON_AddNumberToObject(r, "last_rss", (double)sr->last_rss);
            }
            if (it->kase->n_turns == 1 && it->kase->turns[0].expected)
                tjson_add(r, "expected", cJSON_Duplicate(it->kase->turns[0].expected, true));
        }
        mr->n_failed++;
        mr->prog->done_total++;
        if (!mr->prog->tty)
            fprintf(stderr, "[vlmtest] model %zu/%zu %s: case %s/%s %s\n", mr->prog->model_i,
                    mr->prog->n_models, mr->prog->model, it->suite->name, it->kase->id, status);
        write_record(mr, r);
    }
}

static void fallback_opts(tester_model_opts *o) {
    o->num_crops = o->num_crops > 1 ? o->num_crops / 2 : 1;
    o->max_context =
        o->max_context > 0 ? (o->max_context / 2 > 512 ? o->max_context / 2 : 512) : 2048;
}

/* Run one model over its items: attempt 1, and with retry_fallback an
 * attempt 2 over what attempt 1 left when it crashed or was OOM-killed.
 * Returns false if the model did not end well. */
static bool run_model(const tester_backend *be, const run_args *a, const char *run_id,
                      tester_results *res, const tester_model *model, tester_job_item *items,
                      size_t n_items, progress *prog, size_t *n_passed, size_t *n_failed) {
    tester_job job = {model, model->opts, items, n_items};
    if (a->device) snprintf(job.opts.device, sizeof job.opts.device, "%s", a->device);
    if (a->gpu_mem_budget) job.opts.gpu_mem_budget = a->gpu_mem_budget;
    bool ok = true;
    for (int attempt = 1; attempt <= 2 && job.n_items; attempt++) {
        model_run mr = {"run", run_id, res, &job, attempt, attempt > 1, prog, 0, 0, false};
        tester_sup_result sr;
        vlm_err e;
        if (tester_supervise(be, &job, &a->limits, on_event, on_tick, &mr, &sr, &e)) {
            fprintf(stderr, "\nvlmtest: %s\n", e.msg);
            return false;
        }
        if (prog->tty) fprintf(stderr, "\n");
        bool crash = strcmp(sr.outcome, "crashed") == 0 || strcmp(sr.outcome, "oom") == 0;
        bool retry = crash && a->retry_fallback && attempt == 1;
        write_model_record(&mr, &sr, job.n_items);
        fprintf(stderr, "[vlmtest] model %s: %s%s%s\n", model->name, sr.outcome,
                sr.detail[0] ? ": " : "", sr.detail);
        if (strcmp(sr.outcome, "ok") != 0) {
            ok = false;
            if (retry) {
                /* Again, smaller, from the case that was in flight. */
                job.items += sr.n_done;
                job.n_items -= sr.n_done;
                fallback_opts(&job.opts);
                fprintf(stderr,
                        "[vlmtest] model %s: retrying %zu cases with num_crops %d, "
                        "max_context %d\n",
                        model->name, job.n_items, job.opts.num_crops, job.opts.max_context);
            } else {
                write_unfinished(&mr, &sr, sr.n_done);
            }
        } else {
            ok = true;
        }
        *n_passed += mr.n_passed;
        *n_failed += mr.n_failed;
        if (mr.write_failed) ok = false;
        cJSON_Delete(sr.record);
        if (!retry) break;
    }
    return ok;
}

static vlm_status write_run_json(const tester_results *res, const char *run_id, const run_args *a,
                                 int argc, char **argv, vlm_err *err) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory");
    cJSON_AddStringToObject(j, "run_id", run_id);
    cJSON_AddStringToObject(j, "command", argv[0]);
    cJSON *args = cJSON_AddArrayToObject(j, "argv");
    for (int i = 0; args && i < argc; i++) tjson_push(args, cJSON_CreateString(argv[i]));
    cJSON_AddStringToObject(j, "models_file", a->models_path);
    char shard[32];
    snprintf(shard, sizeof shard, "%d/%d", a->shard_k, a->shard_n);
    cJSON_AddStringToObject(j, "shard", shard);
    cJSON_AddNumberToObject(j, "cgroup_memory_limit", (double)memprobe_cgroup_limit());
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory");
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/run.json", res->dir);
    vlm_status st = vlm_file_write_atomic(path, s, strlen(s), err);
    cJSON_free(s);
    return st;
}

static void print_summary(const cJSON *sum) {
    const cJSON *m;
    printf("%-32s %8s %8s %8s  %s\n", "model", "cases", "passed", "rate", "outcome");
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(sum, "models")) {
        const char *outcome = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "outcome"));
        printf("%-32s %8d %8d %7.1f%%  %s\n",
               cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "model")),
               (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(m, "cases")),
               (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(m, "passed")),
               100 * cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(m, "pass_rate")),
               outcome ? outcome : "-");
    }
}

/* Read back everything recorded in dir and write the reports; print the
 * summary. Returns 0/1 by whether every case passed, 2 on error. */
static int finish_reports(const char *cmd, const char *dir, bool json) {
    cJSON *records, *sum;
    vlm_err e;
    if (tester_results_read(dir, &records, &e) || tester_report_write(dir, records, &sum, &e)) {
        if (e.status != VLM_OK) fprintf(stderr, "vlmtest %s: %s\n", cmd, e.msg);
        return 2;
    }
    cJSON_Delete(records);
    int rc = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(sum, "models")) {
        const char *o = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "outcome"));
        if (o && strcmp(o, "ok") != 0) rc = 1;
    }
    if (cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(sum, "passed")) <
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(sum, "cases")))
        rc = 1;
    if (json) {
        char *s = cJSON_Print(sum);
        if (s) printf("%s\n", s);
        cJSON_free(s);
    } else {
        print_summary(sum);
        printf("reports: %s/report.html, report.md, report.json\n", dir);
    }
    cJSON_Delete(sum);
    return rc;
}

int tester_cmd_run(int argc, char **argv, const tester_backend *be, bool context) {
    const char *cmd = argv[0];
    run_args a;
    int rc = parse_run_args(argc, argv, &a);
    if (rc) {
        free_run_args(&a);
        return rc;
    }
    vlm_err e;
    vlm_err_clear(&e);
    tester_models *models = NULL;
    tester_suite **suites = NULL;
    size_t n_suites = a.n_suites;
    char **found = NULL;
    tester_results *res = NULL;
    tester_job_item *items = NULL;
    const tester_model **chosen = NULL;
    size_t n_chosen = 0;
    char run_id[128];
    rc = 2;

    /* 1. Everything is validated before any model is loaded. */
    if (tester_models_load(a.models_path, &models, &e)) goto fail;
    chosen = VLM_NEW_ARRAY(const tester_model *, models->n + a.n_names + 1, VLM_MEM_OTHER);
    if (!chosen) {
        vlm_err_set(&e, VLM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (a.n_names == 0) {
        for (size_t i = 0; i < models->n; i++) chosen[n_chosen++] = &models->models[i];
    } else {
        for (size_t i = 0; i < a.n_names; i++) {
            int k = tester_models_find(models, a.names[i]);
            if (k < 0) {
                char list[1024] = "";
                for (size_t j = 0; j < models->n; j++) {
                    size_t l = strlen(list);
                    snprintf(list + l, sizeof list - l, "%s%s", j ? ", " : "",
                             models->models[j].name);
                }
                vlm_err_set(&e, VLM_ERR_NOT_FOUND, "no model \"%s\" in %s (it has: %s)", a.names[i],
                            a.models_path, list);
                goto fail;
            }
            bool dup = false;
            for (size_t j = 0; j < n_chosen; j++) dup = dup || chosen[j] == &models->models[k];
            if (!dup) chosen[n_chosen++] = &models->models[k];
        }
    }
    if (n_suites == 0) {
        if (default_suites("suites", context, &found, &n_suites, &e)) goto fail;
        if (tester_suites_load((const char *const *)found, n_suites, context, &suites, &e))
            goto fail;
    } else if (tester_suites_load(a.suites, n_suites, context, &suites, &e)) {
        goto fail;
    }

    /* 2. The run folder. */
    if (a.resume)
        snprintf(run_id, sizeof run_id, "%s", a.resume);
    else if (a.run_id)
        snprintf(run_id, sizeof run_id, "%s", a.run_id);
    else
        tester_run_id_new(run_id, sizeof run_id);
    if (tester_results_open(a.out_dir, run_id, a.resume != NULL, &res, &e)) goto fail;
    if (!a.resume && write_run_json(res, run_id, &a, argc, argv, &e)) goto fail;
    fprintf(stderr, "[vlmtest] run %s -> %s\n", run_id, res->dir);

    /* 3. The cases of each model: this shard's, not yet recorded. */
    size_t total_cases = 0;
    for (size_t s = 0; s < n_suites; s++) total_cases += suites[s]->n_cases;
    items = VLM_NEW_ARRAY(tester_job_item, total_cases * n_chosen + 1, VLM_MEM_OTHER);
    if (!items) {
        vlm_err_set(&e, VLM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t *starts = VLM_NEW_ARRAY(size_t, n_chosen + 1, VLM_MEM_OTHER);
    if (!starts) {
        vlm_err_set(&e, VLM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t n_items = 0, skipped = 0;
    for (size_t m = 0; m < n_chosen; m++) {
        starts[m] = n_items;
        for (size_t s = 0; s < n_suites; s++)
            for (size_t c = 0; c < suites[s]->n_cases; c++) {
                const tester_case *k = &suites[s]->cases[c];
                if (!tester_shard_pick(chosen[m]->name, suites[s]->name, k->id, a.shard_k,
                                       a.shard_n))
                    continue;
                if (tester_results_has_case(res, chosen[m]->name, suites[s]->name, k->id)) {
                    skipped++;
                    continue;
                }
                items[n_items++] = (tester_job_item){suites[s], k};
            }
    }
    starts[n_chosen] = n_items;
    if (a.resume)
        fprintf(stderr, "[vlmtest] resuming: %zu cases already recorded, %zu to go\n", skipped,
                n_items);

    /* 4. One model at a time. */
    progress prog = {isatty(2) != 0, 0, n_chosen, "", 0, 0, 0, 0, n_items, 0, memprobe_now_ms(), 0};
    size_t n_passed = 0, n_failed = 0;
    for (size_t m = 0; m < n_chosen; m++) {
        size_t n = starts[m + 1] - starts[m];
        prog.model_i = m + 1;
        prog.model = chosen[m]->name;
        prog.case_j = 0;
        prog.n_cases = n;
        prog.passed = 0;
        if (n == 0) {
            fprintf(stderr, "[vlmtest] model %s: nothing to run\n", chosen[m]->name);
            continue;
        }
        run_model(be, &a, run_id, res, chosen[m], items + starts[m], n, &prog, &n_passed,
                  &n_failed);
    }
    vlm_free(starts);
    rc = finish_reports(cmd, res->dir, a.json);
    goto done;
fail:
    fprintf(stderr, "vlmtest %s: %s\n", cmd, e.msg);
done:
    vlm_free(items);
    vlm_free(chosen);
    tester_results_close(res);
    tester_suites_free(suites, n_suites);
    if (found) {
        for (size_t i = 0; i < n_suites; i++) vlm_free(found[i]);
        vlm_free(found);
    }
    tester_models_free(models);
    free_run_args(&a);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* merge                                                                    */

int tester_cmd_merge(int argc, char **argv) {
    const char *cmd = argv[0];
    const char *out = NULL;
    bool json = false;
    int n_dirs = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0) {
            if (i + 1 >= argc) {
                err_msg(cmd, "%s", "--out needs a value");
                return 2;
            }
            out = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (argv[i][0] == '-') {
            err_msg(cmd, "unknown option %s (see --help)", argv[i]);
            return 2;
        } else {
            n_dirs++;
        }
    }
    if (!out || n_dirs == 0) {
        err_msg(cmd, "%s", "usage: vlmtest merge DIR... --out DIR");
        return 2;
    }
    vlm_json_init();
    vlm_err e;
    vlm_err_clear(&e);
    cJSON *all = cJSON_CreateArray();
    cJSON *from = cJSON_CreateArray();
    int rc = 2;
    char path[PATH_MAX];
    if (!all || !from) {
        vlm_err_set(&e, VLM_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0) {
            i++;
            continue;
        }
        if (argv[i][0] == '-') continue;
        cJSON *recs;
        if (tester_results_read(argv[i], &recs, &e)) goto fail;
        cJSON *r;
        while ((r = cJSON_DetachItemFromArray(recs, 0))) tjson_push(all, r);
        cJSON_Delete(recs);
        tjson_push(from, cJSON_CreateString(argv[i]));
    }
    /* Drop case records that a later one replaces (last given wins). */
    if (tester_records_dedupe(all, &e)) goto fail;
    if (tester_mkdirs(out, &e)) goto fail;
    snprintf(path, sizeof path, "%s/results.jsonl", out);
    if (vlm_file_is_regular(path)) {
        vlm_err_set(&e, VLM_ERR_INVALID_ARG, "%s: already exists; merge into a new folder", path);
        goto fail;
    }
    {
        tsb b = {0};
        const cJSON *r;
        cJSON_ArrayForEach(r, all) {
            char *s = vlm_json_print(r);
            if (!s)
                b.oom = true;
            else
                tsb_puts(&b, s);
            tsb_puts(&b, "\n");
            vlm_free(s);
        }
        char *text = tsb_take(&b);
        if (!text) {
            vlm_err_set(&e, VLM_ERR_NOMEM, "out of memory");
            goto fail;
        }
        vlm_status st = vlm_file_write_atomic(path, text, strlen(text), &e);
        vlm_free(text);
        if (st) goto fail;
        cJSON *meta = cJSON_CreateObject();
        if (meta) {
            tjson_add(meta, "merged_from", from);
            from = NULL;
            char *s = cJSON_Print(meta);
            snprintf(path, sizeof path, "%s/run.json", out);
            if (s) vlm_file_write_atomic(path, s, strlen(s), NULL);
            cJSON_free(s);
            cJSON_Delete(meta);
        }
    }
    fprintf(stderr, "[vlmtest] merged %d folders, %d records -> %s\n", n_dirs,
            cJSON_GetArraySize(all), out);
    cJSON_Delete(all);
    cJSON_Delete(from);
    return finish_reports(cmd, out, json) == 2 ? 2 : 0;
fail:
    fprintf(stderr, "vlmtest %s: %s\n", cmd, e.msg);
    cJSON_Delete(all);
    cJSON_Delete(from);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* memcheck                                                                 */

typedef struct memcheck_state {
    char answer[256];
    char error[256];
    double total_ms;
    int tokens_out;
    bool got_case;
} memcheck_state;

static void memcheck_event(void *user, const cJSON *ev) {
    memcheck_state *ms = user;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "ev"));
    if (!name || strcmp(name, "case_end") != 0) return;
    const cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ev, "turns"), 0);
    const char *a = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "answer"));
    const char *er = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "error"));
    snprintf(ms->answer, sizeof ms->answer, "%s", a ? a : "");
    snprintf(ms->error, sizeof ms->error, "%s", er ? er : "");
    ms->total_ms = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t, "total_ms"));
    ms->tokens_out = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(t, "tokens_out"));
    ms->got_case = true;
}

/* Bytes of the model's files: the weights files of a folder, or the file. */
static uint64_t model_files_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (S_ISREG(st.st_mode)) return (uint64_t)st.st_size;
    DIR *d = opendir(path);
    if (!d) return 0;
    uint64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *dot = strrchr(e->d_name, '.');
        if (!dot || (strcmp(dot, ".safetensors") && strcmp(dot, ".gguf") && strcmp(dot, ".bin")))
            continue;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) sum += (uint64_t)st.st_size;
    }
    closedir(d);
    return sum;
}

int tester_cmd_memcheck(int argc, char **argv, const tester_backend *be) {
    const char *cmd = argv[0];
    const char *name = NULL, *models_path = "vlmtest.models.json";
    uint64_t tolerance = 0;
    double timeout = 1800;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if ((strcmp(o, "--models") == 0 || strcmp(o, "--tolerance") == 0 ||
             strcmp(o, "--timeout") == 0) &&
            i + 1 >= argc) {
            err_msg(cmd, "%s needs a value", o);
            return 2;
        }
        if (strcmp(o, "--models") == 0)
            models_path = argv[++i];
        else if (strcmp(o, "--tolerance") == 0) {
            if (!tester_parse_size(argv[++i], &tolerance)) {
                err_msg(cmd, "--tolerance %s: expected a size such as 64M", argv[i]);
                return 2;
            }
        } else if (strcmp(o, "--timeout") == 0) {
            if (!parse_seconds(argv[++i], &timeout)) {
                err_msg(cmd, "--timeout %s: expected seconds", argv[i]);
                return 2;
            }
        } else if (strcmp(o, "--json") == 0)
            json = true;
        else if (o[0] == '-') {
            err_msg(cmd, "unknown option %s (see --help)", o);
            return 2;
        } else if (name) {
            err_msg(cmd, "%s", "give one MODEL");
            return 2;
        } else
            name = o;
    }
    if (!name) {
        err_msg(cmd, "%s", "usage: vlmtest memcheck MODEL");
        return 2;
    }
    vlm_err e;
    vlm_err_clear(&e);
    tester_models *models = NULL;
    tester_model adhoc;
    const tester_model *model = NULL;
    memset(&adhoc, 0, sizeof adhoc);
    if (vlm_file_is_regular(models_path)) {
        if (tester_models_load(models_path, &models, &e)) {
            fprintf(stderr, "vlmtest %s: %s\n", cmd, e.msg);
            return 2;
        }
        int k = tester_models_find(models, name);
        if (k >= 0) model = &models->models[k];
    }
    if (!model) {
        if (!vlm_file_is_dir(name) && !vlm_file_is_regular(name)) {
            fprintf(stderr, "vlmtest %s: no model \"%s\" in %s, and no such path\n", cmd, name,
                    models_path);
            tester_models_free(models);
            return 2;
        }
        adhoc.name = name;
        adhoc.source = name;
        adhoc.resolved = (char *)name;
        adhoc.is_path = true;
        snprintf(adhoc.opts.device, sizeof adhoc.opts.device, "auto");
        model = &adhoc;
    }
    /* One simple inference: a text-only question. */
    tester_turn turn;
    memset(&turn, 0, sizeof turn);
    turn.prompt = "What is the capital of France? Answer in one word.";
    tester_case kase;
    memset(&kase, 0, sizeof kase);
    kase.id = "memcheck";
    kase.turns = &turn;
    kase.n_turns = 1;
    tester_suite suite;
    memset(&suite, 0, sizeof suite);
    suite.name = "memcheck";
    suite.max_tokens = 16;
    tester_job_item item = {&suite, &kase};
    tester_job job = {model, model->opts, &item, 1};
    tester_limits lim = {timeout, timeout, timeout};
    memcheck_state ms;
    memset(&ms, 0, sizeof ms);
    tester_sup_result sr;
    if (tester_supervise(be, &job, &lim, memcheck_event, NULL, &ms, &sr, &e)) {
        fprintf(stderr, "vlmtest %s: %s\n", cmd, e.msg);
        tester_models_free(models);
        return 2;
    }
    const cJSON *rec = sr.record;
    double before = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "mem_before_load"));
    double after_load =
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "mem_after_load"));
    double after_unload =
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "mem_after_unload"));
    double residual = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "residual"));
    double acc_after =
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "accounted_after_unload"));
    double acc_before =
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "accounted_before_load"));
    uint64_t size = model->is_path ? model_files_size(model->resolved) : 0;
    if (size == 0) {
        double w =
            cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "accounted_after_load")) +
            cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(rec, "mapped_after_load"));
        size = w > 0 && !isnan(w) ? (uint64_t)w : 0;
    }
    uint64_t tol = tolerance ? tolerance : (uint64_t)fmax(32.0 * 1024 * 1024, 0.02 * (double)size);
    bool ran = strcmp(sr.outcome, "ok") == 0 && ms.got_case && !ms.error[0];
    bool back = ran && !isnan(residual) && residual <= (double)tol;
    bool pass = ran && back;
    char *cfg = vlm_json_print(cJSON_GetObjectItemCaseSensitive(rec, "config"));
    if (json) {
        cJSON *j = cJSON_CreateObject();
        if (j) {
            cJSON_AddStringToObject(j, "model", model->name);
            cJSON_AddStringToObject(j, "result", pass ? "PASS" : "FAIL");
            cJSON_AddStringToObject(j, "outcome", sr.outcome);
            cJSON_AddStringToObject(j, "detail", sr.detail);
            cJSON_AddNumberToObject(j, "mem_before_load", before);
            cJSON_AddNumberToObject(j, "mem_after_load", after_load);
            cJSON_AddNumberToObject(j, "mem_peak", (double)sr.peak_rss);
            cJSON_AddNumberToObject(j, "mem_after_unload", after_unload);
            cJSON_AddNumberToObject(j, "residual", residual);
            cJSON_AddNumberToObject(j, "tolerance", (double)tol);
            cJSON_AddNumberToObject(j, "model_size", (double)size);
            cJSON_AddStringToObject(j, "answer", ms.answer);
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(rec, "config");
            if (c) tjson_add(j, "config", cJSON_Duplicate(c, true));
            char *s = cJSON_Print(j);
            if (s) printf("%s\n", s);
            cJSON_free(s);
            cJSON_Delete(j);
        }
    } else {
        char b0[32], b1[32], b2[32], b3[32], b4[32], b5[32];
        fmt_mib(b0, sizeof b0, (uint64_t)fmax(0, before));
        fmt_mib(b1, sizeof b1, (uint64_t)fmax(0, after_load));
        fmt_mib(b2, sizeof b2, sr.peak_rss);
        fmt_mib(b3, sizeof b3, (uint64_t)fmax(0, after_unload));
        fmt_mib(b4, sizeof b4, (uint64_t)fabs(isnan(residual) ? 0 : residual));
        fmt_mib(b5, sizeof b5, tol);
        printf("memcheck %s (%s)\n", model->name, model->resolved);
        printf("  backend/config   %s %s\n", be->name, cfg ? cfg : "{}");
        printf("  worker           %s%s%s\n", sr.outcome, sr.detail[0] ? ": " : "", sr.detail);
        printf("  inference        %s%s%s (%d tokens, %.0f ms)\n", ms.error[0] ? "error: " : "\"",
               ms.error[0] ? ms.error : ms.answer, ms.error[0] ? "" : "\"", ms.tokens_out,
               isnan(ms.total_ms) ? 0 : ms.total_ms);
        printf("  RSS before load  %s\n  after load       %s\n  peak             %s\n"
               "  after unload     %s\n",
               b0, b1, b2, b3);
        printf("  residual         %s%s (tolerance %s)\n", residual < 0 ? "-" : "+", b4, b5);
        printf("  accounted bytes  %.0f before load, %.0f after unload\n",
               isnan(acc_before) ? 0 : acc_before, isnan(acc_after) ? 0 : acc_after);
        printf("%s\n", pass ? "PASS" : "FAIL");
    }
    vlm_free(cfg);
    cJSON_Delete(sr.record);
    tester_models_free(models);
    return pass ? 0 : 1;
}
