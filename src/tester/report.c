/* tester/report - summaries and the three report files (see report.h). */
#include "tester/report.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "tester/results.h"
#include "tester/strbuf.h"
#include "tester/tjson.h"

/* ------------------------------------------------------------------------ */
/* small JSON helpers                                                       */

static const char *str_at(const cJSON *o, const char *k) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
    return s ? s : "";
}
static double num_at(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(it) ? it->valuedouble : 0;
}
static double num_at_ix(const cJSON *a, int i) {
    const cJSON *it = cJSON_GetArrayItem(a, i);
    return cJSON_IsNumber(it) ? it->valuedouble : 0;
}
static bool has_num(const cJSON *o, const char *k) {
    return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, k));
}

/* ------------------------------------------------------------------------ */
/* the summary                                                              */

typedef struct key_ix {
    char *key;
    int ix;
} key_ix;

static int cmp_key_ix(const void *a, const void *b) {
    const key_ix *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->ix > y->ix) - (x->ix < y->ix);
}

/* keep[i] = record i is a case record that is the last of its key. */
static vlm_status dedupe_cases(const cJSON *records, int n, bool *keep, vlm_err *err) {
    key_ix *v = VLM_NEW_ARRAY(key_ix, (size_t)n + 1, VLM_MEM_OTHER);
    if (!v) return vlm_err_set(err, VLM_ERR_NOMEM, "report: out of memory");
    int m = 0;
    vlm_status st = VLM_OK;
    for (int i = 0; i < n; i++) {
        const cJSON *r = cJSON_GetArrayItem(records, i);
        if (strcmp(str_at(r, "type"), "case") != 0) continue;
        char *k = tester_case_key(str_at(r, "model"), str_at(r, "suite"), str_at(r, "case_id"));
        if (!k) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "report: out of memory");
            break;
        }
        v[m].key = k;
        v[m++].ix = i;
    }
    if (!st) {
        qsort(v, (size_t)m, sizeof *v, cmp_key_ix);
        for (int i = 0; i < m; i++)
            if (i + 1 == m || strcmp(v[i].key, v[i + 1].key) != 0) keep[v[i].ix] = true;
    }
    for (int i = 0; i < m; i++) vlm_free(v[i].key);
    vlm_free(v);
    return st;
}

static cJSON *find_by(cJSON *arr, const char *key, const char *value) {
    cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (strcasecmp(str_at(it, key), value) == 0) return it;
    }
    return NULL;
}

static void bump(cJSON *o, const char *k, double d) {
    cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsNumber(it))
        cJSON_SetNumberValue(it, it->valuedouble + d);
    else
        cJSON_AddNumberToObject(o, k, d);
}

static cJSON *model_entry(cJSON *models, const char *name) {
    cJSON *m = find_by(models, "model", name);
    if (m) return m;
    m = cJSON_CreateObject();
    if (!m) return NULL;
    cJSON_AddStringToObject(m, "model", name);
    cJSON_AddNumberToObject(m, "cases", 0);
    cJSON_AddNumberToObject(m, "passed", 0);
    cJSON_AddNumberToObject(m, "failed", 0);
    cJSON_AddNumberToObject(m, "errors", 0);
    /* device peaks (accounted, and as the device reports its use) and the
     * most fallbacks a case went through: 0 on the CPU */
    cJSON_AddNumberToObject(m, "max_case_gpu_peak", 0);
    cJSON_AddNumberToObject(m, "max_case_gpu_used", 0);
    cJSON_AddNumberToObject(m, "fallbacks", 0);
    if (!tjson_add(m, "suites", cJSON_CreateArray()) ||
        !tjson_add(m, "attempts", cJSON_CreateArray())) {
        cJSON_Delete(m);
        return NULL;
    }
    return tjson_push(models, m) ? m : NULL;
}

/* Set o[k] = v (replacing it). */
static void set_max(cJSON *o, const char *k, double v) {
    cJSON_DeleteItemFromObjectCaseSensitive(o, k);
    cJSON_AddNumberToObject(o, k, v);
}

/* Per tag: a suite keeps the counts of up to MAX_TAGS distinct tags (a
 * suite of many cases with a tag of their own, such as an image size, would
 * otherwise make this quadratic); later new tags are left out and the suite
 * says so ("tags_truncated"). */
#define MAX_TAGS 256

/* Count a case under each distinct tag it carries (tags[] of its record) in
 * the suite entry s: cases, passed, turns scored and passed. false: out of
 * memory. */
static bool count_tags(cJSON *s, const cJSON *r, bool passed) {
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(r, "tags");
    if (!cJSON_IsArray(tags) || cJSON_GetArraySize(tags) == 0) return true;
    cJSON *tt = cJSON_GetObjectItemCaseSensitive(s, "tags");
    if (!tt && !tjson_add(s, "tags", tt = cJSON_CreateArray())) return false;
    const cJSON *tg;
    int i = 0;
    cJSON_ArrayForEach(tg, tags) {
        i++;
        if (!cJSON_IsString(tg) || !tg->valuestring[0]) continue;
        bool dup = false; /* ["a", "a"] counts the case once */
        for (int j = 0; j < i - 1 && !dup; j++) {
            const cJSON *o = cJSON_GetArrayItem(tags, j);
            dup = cJSON_IsString(o) && strcmp(o->valuestring, tg->valuestring) == 0;
        }
        if (dup) continue;
        cJSON *e = NULL, *it;
        cJSON_ArrayForEach(it, tt) {
            if (strcmp(str_at(it, "tag"), tg->valuestring) == 0) {
                e = it;
                break;
            }
        }
        if (!e) {
            if (cJSON_GetArraySize(tt) >= MAX_TAGS) {
                if (!cJSON_GetObjectItemCaseSensitive(s, "tags_truncated") &&
                    !cJSON_AddTrueToObject(s, "tags_truncated"))
                    return false;
                continue;
            }
            e = cJSON_CreateObject();
            if (!e || !cJSON_AddStringToObject(e, "tag", tg->valuestring)) {
                cJSON_Delete(e);
                return false;
            }
            if (!tjson_push(tt, e)) return false;
        }
        bump(e, "cases", 1);
        bump(e, "passed", passed);
        bump(e, "turns_scored", num_at(r, "turns_scored"));
        bump(e, "turns_passed", num_at(r, "turns_passed"));
    }
    return true;
}

/* After the counting: a suite's tags carried by fewer than two cases are
 * dropped (they would repeat the case list), the rest get their pass rate;
 * no tags left, no "tags". */
static bool finish_tags(cJSON *s) {
    cJSON *tt = cJSON_GetObjectItemCaseSensitive(s, "tags");
    if (!tt) return true;
    for (int i = cJSON_GetArraySize(tt) - 1; i >= 0; i--) {
        cJSON *e = cJSON_GetArrayItem(tt, i);
        double c = num_at(e, "cases");
        if (c < 2) {
            cJSON_DeleteItemFromArray(tt, i);
            continue;
        }
        if (!cJSON_AddNumberToObject(e, "pass_rate", num_at(e, "passed") / c)) return false;
    }
    if (cJSON_GetArraySize(tt) == 0) cJSON_DeleteItemFromObjectCaseSensitive(s, "tags");
    return true;
}

/* Whether any suite of the summary's models has tags left (finish_tags). */
static bool has_tags(const cJSON *models) {
    const cJSON *m, *s;
    cJSON_ArrayForEach(m, models) {
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(m, "suites")) {
            if (cJSON_GetObjectItemCaseSensitive(s, "tags")) return true;
        }
    }
    return false;
}

/* "cpu", or "cuda 20/32 layers, vision cpu" from a case's placement. */
static void placement_text(const cJSON *pl, char *out, size_t cap) {
    const char *dev = str_at(pl, "device");
    if (!dev[0] || strcmp(dev, "cpu") == 0) {
        snprintf(out, cap, "cpu");
        return;
    }
    snprintf(out, cap, "cuda %d/%d layers, vision %s", (int)num_at(pl, "gpu_layers"),
             (int)num_at(pl, "n_layers"),
             strcmp(str_at(pl, "vision_device"), "cuda") == 0 ? "cuda" : "cpu");
}

static const char *const model_fields[] = {"outcome",
                                           "detail",
                                           "config",
                                           "options",
                                           "load_ms",
                                           "unload_ms",
                                           "mem_before_load",
                                           "mem_after_load",
                                           "mem_peak",
                                           "mem_after_unload",
                                           "residual",
                                           "accounted_after_load",
                                           "accounted_after_unload",
                                           "last_rss",
                                           "source",
                                           NULL};

vlm_status tester_report_summary(const cJSON *records, cJSON **out, vlm_err *err) {
    *out = NULL;
    vlm_json_init();
    int n = cJSON_GetArraySize(records);
    bool *keep = VLM_NEW_ARRAY(bool, (size_t)n + 1, VLM_MEM_OTHER);
    if (!keep) return vlm_err_set(err, VLM_ERR_NOMEM, "report: out of memory");
    vlm_status st = dedupe_cases(records, n, keep, err);
    if (st) {
        vlm_free(keep);
        return st;
    }
    cJSON *sum = cJSON_CreateObject();
    cJSON *models = cJSON_CreateArray();
    cJSON *failures = cJSON_CreateArray();
    cJSON *run_ids = cJSON_CreateArray();
    if (!sum || !models || !failures || !run_ids) {
        cJSON_Delete(sum);
        cJSON_Delete(models);
        cJSON_Delete(failures);
        cJSON_Delete(run_ids);
        vlm_free(keep);
        return vlm_err_set(err, VLM_ERR_NOMEM, "report: out of memory");
    }
    int total = 0, total_passed = 0;
    bool ok = true; /* false once an allocation failed: the summary would be incomplete */
    for (int i = 0; i < n && ok; i++) {
        const cJSON *r = cJSON_GetArrayItem(records, i);
        const char *type = str_at(r, "type");
        const char *rid = str_at(r, "run_id");
        if (rid[0]) {
            bool seen = false;
            const cJSON *x;
            cJSON_ArrayForEach(x, run_ids) seen = seen || strcmp(x->valuestring, rid) == 0;
            if (!seen) ok = tjson_push(run_ids, cJSON_CreateString(rid));
        }
        cJSON *m = model_entry(models, str_at(r, "model"));
        if (!m) {
            ok = false;
            break;
        }
        if (strcmp(type, "model") == 0) {
            /* The last attempt describes the model; all are listed. */
            cJSON *a = cJSON_CreateObject();
            ok = a != NULL;
            for (const char *const *f = model_fields; ok && *f; f++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, *f);
                if (!v) continue;
                cJSON_DeleteItemFromObjectCaseSensitive(m, *f);
                ok = tjson_add(m, *f, cJSON_Duplicate(v, true)) &&
                     tjson_add(a, *f, cJSON_Duplicate(v, true));
            }
            ok = ok && cJSON_AddNumberToObject(a, "attempt", num_at(r, "attempt")) &&
                 cJSON_AddBoolToObject(a, "fallback",
                                       cJSON_IsTrue(cJSON_GetObjectItem(r, "fallback")));
            if (!ok)
                cJSON_Delete(a);
            else
                ok = tjson_push(cJSON_GetObjectItemCaseSensitive(m, "attempts"), a);
            continue;
        }
        if (strcmp(type, "case") != 0 || !keep[i]) continue;
        bool passed = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "passed"));
        const char *status = str_at(r, "status");
        bool error = strcmp(status, "ok") != 0;
        total++;
        total_passed += passed;
        bump(m, "cases", 1);
        bump(m, passed ? "passed" : error ? "errors" : "failed", 1);
        if (has_num(r, "first_token_ms") && !error) {
            bump(m, "sum_first_token_ms", num_at(r, "first_token_ms"));
            bump(m, "n_timed", 1);
            bump(m, "sum_case_ms", num_at(r, "total_ms"));
            bump(m, "sum_decode_tps", num_at(r, "decode_tps"));
        }
        /* Device: where the case ran, its device peaks, the fallbacks. */
        const cJSON *pl = cJSON_GetObjectItemCaseSensitive(r, "placement");
        if (pl) {
            char dev[64];
            placement_text(pl, dev, sizeof dev);
            cJSON_DeleteItemFromObjectCaseSensitive(m, "device");
            ok = ok && cJSON_AddStringToObject(m, "device", dev);
        }
        const cJSON *gpu = cJSON_GetObjectItemCaseSensitive(r, "gpu");
        double ga = num_at(cJSON_GetObjectItemCaseSensitive(gpu, "peak_accounted"), "case");
        double gd = num_at(cJSON_GetObjectItemCaseSensitive(gpu, "peak_device"), "case");
        if (ga > num_at(m, "max_case_gpu_peak")) set_max(m, "max_case_gpu_peak", ga);
        if (gd > num_at(m, "max_case_gpu_used")) set_max(m, "max_case_gpu_used", gd);
        int nfb = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "fallbacks"));
        if (nfb > num_at(m, "fallbacks")) set_max(m, "fallbacks", nfb);
        if (num_at(r, "peak_rss") > num_at(m, "max_case_peak_rss")) {
            cJSON_DeleteItemFromObjectCaseSensitive(m, "max_case_peak_rss");
            cJSON_AddNumberToObject(m, "max_case_peak_rss", num_at(r, "peak_rss"));
        }
        cJSON *suites = cJSON_GetObjectItemCaseSensitive(m, "suites");
        cJSON *s = find_by(suites, "suite", str_at(r, "suite"));
        if (!s) {
            s = cJSON_CreateObject();
            if (!s || !cJSON_AddStringToObject(s, "suite", str_at(r, "suite"))) {
                cJSON_Delete(s);
                ok = false;
                break;
            }
            if (!tjson_push(suites, s)) {
                ok = false;
                break;
            }
        }
        bump(s, "cases", 1);
        bump(s, "passed", passed);
        /* Context cases: turns are scored one by one too. */
        bump(s, "turns_scored", num_at(r, "turns_scored"));
        bump(s, "turns_passed", num_at(r, "turns_passed"));
        bump(m, "turns_scored", num_at(r, "turns_scored"));
        bump(m, "turns_passed", num_at(r, "turns_passed"));
        ok = count_tags(s, r, passed) && ok;
        if (!passed) {
            cJSON *f = cJSON_CreateObject();
            ok = f != NULL;
            if (f) {
                cJSON_AddStringToObject(f, "model", str_at(r, "model"));
                cJSON_AddStringToObject(f, "suite", str_at(r, "suite"));
                cJSON_AddStringToObject(f, "case_id", str_at(r, "case_id"));
                cJSON_AddStringToObject(f, "status", status);
                cJSON_AddStringToObject(f, "answer", str_at(r, "answer"));
                cJSON_AddStringToObject(f, "reason", str_at(r, "reason"));
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "expected");
                if (e) ok = tjson_add(f, "expected", cJSON_Duplicate(e, true));
                ok = tjson_push(failures, f) && ok;
            }
        }
    }
    /* Rates and means. */
    cJSON *m;
    cJSON_ArrayForEach(m, models) {
        double c = num_at(m, "cases"), t = num_at(m, "n_timed");
        cJSON_AddNumberToObject(m, "pass_rate", c > 0 ? num_at(m, "passed") / c : 0);
        if (t > 0) {
            cJSON_AddNumberToObject(m, "mean_first_token_ms", num_at(m, "sum_first_token_ms") / t);
            cJSON_AddNumberToObject(m, "mean_case_ms", num_at(m, "sum_case_ms") / t);
            cJSON_AddNumberToObject(m, "mean_decode_tps", num_at(m, "sum_decode_tps") / t);
        }
        cJSON_DeleteItemFromObjectCaseSensitive(m, "sum_first_token_ms");
        cJSON_DeleteItemFromObjectCaseSensitive(m, "sum_case_ms");
        cJSON_DeleteItemFromObjectCaseSensitive(m, "sum_decode_tps");
        cJSON_DeleteItemFromObjectCaseSensitive(m, "n_timed");
        cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(m, "suites")) {
            double sc = num_at(s, "cases");
            cJSON_AddNumberToObject(s, "pass_rate", sc > 0 ? num_at(s, "passed") / sc : 0);
            ok = finish_tags(s) && ok;
        }
    }
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", &tm);
    ok = cJSON_AddStringToObject(sum, "generated", now) && ok;
    ok = tjson_add(sum, "run_ids", run_ids) && ok;
    ok = cJSON_AddNumberToObject(sum, "cases", total) && ok;
    ok = cJSON_AddNumberToObject(sum, "passed", total_passed) && ok;
    ok = tjson_add(sum, "models", models) && ok;
    ok = tjson_add(sum, "failures", failures) && ok;
    vlm_free(keep);
    if (!ok) {
        cJSON_Delete(sum);
        return vlm_err_set(err, VLM_ERR_NOMEM, "report: out of memory");
    }
    *out = sum;
    return VLM_OK;
}

/* ------------------------------------------------------------------------ */
/* formatting                                                               */

static void fmt_bytes(char *out, size_t size, double b);

/* A byte figure of o[k], or "-" when the worker never reported it (it
 * crashed before that phase). */
static void fmt_field(char *out, size_t size, const cJSON *o, const char *k) {
    if (!has_num(o, k))
        snprintf(out, size, "-");
    else
        fmt_bytes(out, size, num_at(o, k));
}

static void fmt_bytes(char *out, size_t size, double b) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double a = fabs(b);
    while (a >= 1024 && u < 4) {
        a /= 1024;
        b /= 1024;
        u++;
    }
    snprintf(out, size, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

static const char *expected_text(const cJSON *e, char *buf, size_t size) {
    if (!e) return "";
    if (cJSON_IsString(e)) return e->valuestring;
    char *s = vlm_json_print(e);
    snprintf(buf, size, "%s", s ? s : "?");
    vlm_free(s);
    return buf;
}

/* One line of Markdown table text: '|' and newlines escaped. */
static void md_cell(tsb *b, const char *s) {
    for (const char *p = s; *p; p++) {
        if (*p == '|')
            tsb_puts(b, "\\|");
        else if (*p == '\n' || *p == '\r')
            tsb_puts(b, " ");
        else
            tsb_putn(b, p, 1);
    }
}

/* The pass-rate tables (per suite, per tag) in Markdown or HTML: a row's
 * leading text cells, escaped for the format, up to the separator before
 * the next cell. */
static void row_cells(tsb *b, bool html, const char *const *cells, int n) {
    for (int i = 0; i < n; i++) {
        tsb_puts(b, html ? (i ? "</td><td>" : "<tr><td>") : (i ? " | " : "| "));
        if (html)
            tsb_html(b, cells[i]);
        else
            md_cell(b, cells[i]);
    }
}

/* One row: the text cells, then the entry's cases, passed, pass rate and
 * turns passed. */
static void rate_row(tsb *b, bool html, const char *const *cells, int n, const cJSON *e) {
    row_cells(b, html, cells, n);
    tsb_printf(b,
               html ? "</td><td class=\"num\">%d</td><td class=\"num\">%d</td><td "
                      "class=\"num\">%.1f%%</td><td class=\"num\">%d/%d</td></tr>\n"
                    : " | %d | %d | %.1f%% | %d/%d |\n",
               (int)num_at(e, "cases"), (int)num_at(e, "passed"), 100 * num_at(e, "pass_rate"),
               (int)num_at(e, "turns_passed"), (int)num_at(e, "turns_scored"));
}

/* The rows of the per-suite table (tags false) or of the per-tag table
 * (each suite's tags, and a row saying where a suite left tags out). */
static void rate_rows(tsb *b, bool html, const cJSON *models, bool tags) {
    const cJSON *m, *s, *e;
    cJSON_ArrayForEach(m, models) {
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(m, "suites")) {
            const char *cells[3] = {str_at(m, "model"), str_at(s, "suite"), ""};
            if (!tags) {
                rate_row(b, html, cells, 2, s);
                continue;
            }
            cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(s, "tags")) {
                cells[2] = str_at(e, "tag");
                rate_row(b, html, cells, 3, e);
            }
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "tags_truncated"))) {
                row_cells(b, html, cells, 2);
                tsb_printf(b,
                           html ? "</td><td colspan=\"5\">more than %d tags: the rest left "
                                  "out</td></tr>\n"
                                : " | (more than %d tags: the rest left out) | | | | |\n",
                           MAX_TAGS);
            }
        }
    }
}

static char *render_md(const cJSON *sum) {
    tsb b = {0};
    char x[64], y[64], z[64], w[64];
    tsb_puts(&b, "# vlmtest report\n\n");
    tsb_printf(&b, "Generated %s. Runs:", str_at(sum, "generated"));
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(sum, "run_ids"))
        tsb_printf(&b, " `%s`", it->valuestring);
    tsb_printf(&b, ". %d cases, %d passed.\n\n", (int)num_at(sum, "cases"),
               (int)num_at(sum, "passed"));
    tsb_puts(&b, "## Summary per model\n\n| model | outcome | cases | passed | failed | errors | "
                 "pass rate | load ms | after load | peak | residual after unload | first "
                 "token ms | decode tok/s | device | GPU peak | GPU in use | fallbacks |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(sum, "models");
    const cJSON *m;
    cJSON_ArrayForEach(m, models) {
        fmt_bytes(x, sizeof x, num_at(m, "mem_after_load"));
        fmt_bytes(y, sizeof y, num_at(m, "mem_peak"));
        fmt_bytes(z, sizeof z, num_at(m, "residual"));
        tsb_puts(&b, "| ");
        md_cell(&b, str_at(m, "model"));
        char gp[32], gu[32];
        fmt_bytes(gp, sizeof gp, num_at(m, "max_case_gpu_peak"));
        fmt_bytes(gu, sizeof gu, num_at(m, "max_case_gpu_used"));
        tsb_printf(&b, " | %s | %d | %d | %d | %d | %.1f%% | %.0f | %s | %s | %s | %.1f | %.1f | ",
                   str_at(m, "outcome")[0] ? str_at(m, "outcome") : "-", (int)num_at(m, "cases"),
                   (int)num_at(m, "passed"), (int)num_at(m, "failed"), (int)num_at(m, "errors"),
                   100 * num_at(m, "pass_rate"), num_at(m, "load_ms"), x, y, z,
                   num_at(m, "mean_first_token_ms"), num_at(m, "mean_decode_tps"));
        md_cell(&b, str_at(m, "device")[0] ? str_at(m, "device") : "-");
        tsb_printf(&b, " | %s | %s | %d |\n", gp, gu, (int)num_at(m, "fallbacks"));
    }
    tsb_puts(&b, "\n## Summary per suite\n\n| model | suite | cases | passed | pass rate | turns "
                 "passed |\n|---|---|---|---|---|---|\n");
    rate_rows(&b, false, models, false);
    if (has_tags(models)) {
        tsb_puts(&b, "\n## Pass rate per tag\n\nTags that two or more cases of a suite carry."
                     "\n\n| model | suite | tag | cases | passed | pass rate | turns passed |\n"
                     "|---|---|---|---|---|---|---|\n");
        rate_rows(&b, false, models, true);
    }
    tsb_puts(&b, "\n## Models: configuration and memory\n\n");
    cJSON_ArrayForEach(m, models) {
        tsb_printf(&b, "### %s\n\n", str_at(m, "model"));
        const cJSON *a;
        cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(m, "attempts")) {
            char *cfg = vlm_json_print(cJSON_GetObjectItemCaseSensitive(a, "config"));
            fmt_field(x, sizeof x, a, "mem_before_load");
            fmt_field(y, sizeof y, a, "mem_after_load");
            fmt_field(z, sizeof z, a, "mem_peak");
            fmt_field(w, sizeof w, a, "mem_after_unload");
            tsb_printf(&b,
                       "- attempt %d%s: **%s** %s; load %.0f ms; RSS before load %s, after load "
                       "%s, peak %s, after unload %s; config `%s`\n",
                       (int)num_at(a, "attempt"),
                       cJSON_IsTrue(cJSON_GetObjectItem(a, "fallback")) ? " (fallback)" : "",
                       str_at(a, "outcome"), str_at(a, "detail"), num_at(a, "load_ms"), x, y, z, w,
                       cfg ? cfg : "{}");
            vlm_free(cfg);
        }
        tsb_puts(&b, "\n");
    }
    tsb_puts(&b, "## Failures\n\n");
    const cJSON *fails = cJSON_GetObjectItemCaseSensitive(sum, "failures");
    if (cJSON_GetArraySize(fails) == 0) tsb_puts(&b, "None.\n");
    const cJSON *f;
    cJSON_ArrayForEach(f, fails) {
        char eb[512];
        tsb_printf(&b, "- **%s** `%s/%s` (%s): ", str_at(f, "model"), str_at(f, "suite"),
                   str_at(f, "case_id"), str_at(f, "status"));
        md_cell(&b, str_at(f, "reason"));
        tsb_puts(&b, "\n  - expected: ");
        md_cell(&b, expected_text(cJSON_GetObjectItemCaseSensitive(f, "expected"), eb, sizeof eb));
        tsb_puts(&b, "\n  - answer: ");
        md_cell(&b, str_at(f, "answer"));
        tsb_puts(&b, "\n");
    }
    return tsb_take(&b);
}

/* ------------------------------------------------------------------------ */
/* HTML and SVG                                                             */

static const char *const cat_colors[] = {"#4e79a7", "#f28e2b", "#e15759",
                                         "#76b7b2", "#59a14f", "#edc948"};
static const char *const cat_names[] = {"weights", "kv_cache", "activations",
                                        "image",   "scratch",  "other"};
#define N_CATS 6

/* Horizontal bars, one per model: value[i] with its label text. */
static void svg_bars(tsb *b, const char *cls, const char *title, const cJSON *models,
                     const char *field, double scale_max, bool bytes, const char *unit) {
    int n = cJSON_GetArraySize(models);
    int row = 26, left = 220, width = 760, h = 40 + row * (n ? n : 1);
    double max = scale_max;
    const cJSON *m;
    if (max <= 0) {
        cJSON_ArrayForEach(m, models) max = fmax(max, num_at(m, field));
    }
    if (max <= 0) max = 1;
    tsb_printf(b,
               "<svg class=\"chart %s\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
               "height=\"%d\" role=\"img\"><title>",
               cls, left + width + 120, h);
    tsb_html(b, title);
    tsb_printf(b, "</title><text x=\"4\" y=\"18\" class=\"ct\">");
    tsb_html(b, title);
    tsb_puts(b, "</text>");
    int i = 0;
    cJSON_ArrayForEach(m, models) {
        double v = num_at(m, field);
        int y = 30 + i * row;
        double wpx = fmax(0, v / max * width);
        char lab[64];
        if (bytes)
            fmt_bytes(lab, sizeof lab, v);
        else
            snprintf(lab, sizeof lab, "%.1f%s", v, unit);
        tsb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", left - 6, y + 15);
        tsb_html(b, str_at(m, "model"));
        tsb_printf(b,
                   "</text><rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#cfd8e3\"/>"
                   "<rect class=\"bar\" x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" "
                   "fill=\"%s\"/><text x=\"%.1f\" y=\"%d\">%s</text>",
                   left, y, width, row - 6, left, y, wpx, row - 6, cat_colors[i % N_CATS],
                   left + wpx + 6, y + 15, lab);
        i++;
    }
    tsb_puts(b, "</svg>\n");
}

typedef double tl_point[2]; /* (t_ms, bytes) */

static int cmp_point(const void *a, const void *b) {
    const double *x = a, *y = b;
    return (x[0] > y[0]) - (x[0] < y[0]);
}

/* The memory timeline of a model record: RSS as a line, the accounted
 * categories as stacked steps at each worker event, and the phases marked. */
static void svg_timeline(tsb *b, const char *model, const cJSON *rec) {
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(rec, "timeline");
    const cJSON *pts = cJSON_GetObjectItemCaseSensitive(tl, "rss");
    const cJSON *evs = cJSON_GetObjectItemCaseSensitive(tl, "events");
    int W = 960, H = 290, L = 70, R = 70, T = 40, B = 40;
    double tmax = 1, ymax = 1;
    const cJSON *p;
    /* RSS over time: the parent's samples and the worker's readings at its
     * events, merged in time order. */
    int n_pts = cJSON_GetArraySize(pts), n_evs = cJSON_GetArraySize(evs);
    tl_point *line = VLM_NEW_ARRAY(tl_point, (size_t)(n_pts + n_evs) + 1, VLM_MEM_OTHER);
    int n_line = 0;
    cJSON_ArrayForEach(p, pts) {
        if (line) {
            line[n_line][0] = num_at_ix(p, 0);
            line[n_line++][1] = num_at_ix(p, 1);
        }
        tmax = fmax(tmax, num_at_ix(p, 0));
        ymax = fmax(ymax, num_at_ix(p, 1));
    }
    cJSON_ArrayForEach(p, evs) {
        if (line && num_at(p, "rss") > 0) {
            line[n_line][0] = num_at(p, "t_ms");
            line[n_line++][1] = num_at(p, "rss");
        }
        tmax = fmax(tmax, num_at(p, "t_ms"));
        ymax = fmax(ymax, num_at(p, "rss"));
        ymax = fmax(ymax, num_at(p, "accounted"));
    }
    if (line) qsort(line, (size_t)n_line, sizeof *line, cmp_point);
    ymax *= 1.1;
    double pw = W - L - R, ph = H - T - B;
#define X(t) (L + (t) / tmax * pw)
#define Y(v) (T + ph - (v) / ymax * ph)
    tsb_printf(b, "<svg class=\"timeline\" data-model=\"");
    tsb_html(b, model);
    tsb_printf(b,
               "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "role=\"img\"><title>memory timeline of ",
               W, H);
    tsb_html(b, model);
    tsb_printf(b,
               "</title><rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" "
               "fill=\"#fafbfc\" stroke=\"#ccc\"/>",
               L, T, pw, ph);
    /* Axis labels: 0, ymax/2, ymax and the time span. */
    for (int k = 0; k <= 2; k++) {
        char lab[64];
        fmt_bytes(lab, sizeof lab, ymax / 1.1 * k / 2);
        double yy = Y(ymax / 1.1 * k / 2);
        tsb_printf(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" class=\"ax\">%s</text>", L - 4,
                   yy + 4, lab);
    }
    tsb_printf(b, "<text x=\"%d\" y=\"%d\" class=\"ax\">0 s</text>", L, H - B + 16);
    tsb_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" class=\"ax\">%.1f s</text>", W - R,
               H - B + 16, tmax / 1000);
    /* Stacked categories as steps: one run of rectangles per stretch of
     * events whose stack looks the same (to half a pixel), so a long sweep
     * does not draw thousands of identical rectangles. */
    bool in_run = false;
    double run_t0 = 0, run_v[N_CATS], run_px[N_CATS];
    for (const cJSON *e = evs ? evs->child : NULL;; e = e->next) {
        const cJSON *cat = e ? cJSON_GetObjectItemCaseSensitive(e, "cat") : NULL;
        if (e && !cat) continue;
        double v[N_CATS], px[N_CATS];
        bool same = in_run && e;
        for (int c = 0; e && c < N_CATS; c++) {
            v[c] = num_at(cat, cat_names[c]);
            px[c] = round(v[c] / ymax * ph * 2);
            same = same && px[c] == run_px[c];
        }
        if (same) continue;
        if (in_run) {
            double t1 = e ? num_at(e, "t_ms") : tmax, base = 0;
            for (int c = 0; c < N_CATS; c++) {
                if (run_v[c] <= 0) continue;
                tsb_printf(b,
                           "<rect class=\"cat\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
                           "height=\"%.1f\" fill=\"%s\" fill-opacity=\"0.55\"/>",
                           X(run_t0), Y(base + run_v[c]), fmax(1, X(t1) - X(run_t0)),
                           Y(base) - Y(base + run_v[c]), cat_colors[c]);
                base += run_v[c];
            }
        }
        if (!e) break;
        in_run = true;
        run_t0 = num_at(e, "t_ms");
        memcpy(run_v, v, sizeof v);
        memcpy(run_px, px, sizeof px);
    }
    /* RSS line. */
    tsb_puts(b, "<polyline class=\"rss\" fill=\"none\" stroke=\"#222\" stroke-width=\"1.5\" "
                "points=\"");
    /* Per pixel column the lowest and the highest reading, in time order:
     * the line stays a few thousand points however long the run, and keeps
     * its peaks. */
    for (int i = 0; i < n_line;) {
        int col = (int)X(line[i][0]), lo = i, hi = i, k = i;
        for (; k < n_line && (int)X(line[k][0]) == col; k++) {
            if (line[k][1] < line[lo][1]) lo = k;
            if (line[k][1] > line[hi][1]) hi = k;
        }
        int first = lo < hi ? lo : hi, second = lo < hi ? hi : lo;
        tsb_printf(b, "%.1f,%.1f ", X(line[first][0]), Y(line[first][1]));
        if (second != first) tsb_printf(b, "%.1f,%.1f ", X(line[second][0]), Y(line[second][1]));
        i = k;
    }
    tsb_puts(b, "\"/>");
    vlm_free(line);
    /* Phase marks. */
    static const char *const marks[][2] = {{"start", "load"},
                                           {"loaded", "loaded"},
                                           {"unload_start", "unload"},
                                           {"unloaded", "unloaded"}};
    cJSON_ArrayForEach(p, evs) {
        const char *ev = str_at(p, "ev");
        for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++) {
            if (strcmp(ev, marks[k][0]) != 0) continue;
            double xx = X(num_at(p, "t_ms"));
            tsb_printf(b,
                       "<line class=\"mark\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%.0f\" "
                       "stroke=\"#888\" stroke-dasharray=\"4 3\"/><text x=\"%.1f\" y=\"%d\" "
                       "class=\"ax\">%s</text>",
                       xx, xx, T - 14 + (int)(k % 2) * 12, T + ph, xx + 3,
                       T - 18 + (int)(k % 2) * 12, marks[k][1]);
        }
    }
    const char *outcome = str_at(rec, "outcome");
    if (outcome[0] && strcmp(outcome, "ok") != 0) {
        double xx = X(tmax);
        tsb_printf(b,
                   "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%.0f\" stroke=\"#c00\" "
                   "stroke-width=\"2\"/><text x=\"%.1f\" y=\"%d\" text-anchor=\"end\" "
                   "fill=\"#c00\">%s</text>",
                   xx, xx, T, T + ph, xx - 4, T + 14, outcome);
    }
    /* Legend. */
    int lx = L;
    tsb_printf(b,
               "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"#222\" "
               "stroke-width=\"2\"/><text x=\"%d\" y=\"%d\" class=\"ax\">RSS</text>",
               lx, lx + 18, H - 10, H - 10, lx + 22, H - 6);
    lx += 70;
    for (int c = 0; c < N_CATS; c++) {
        tsb_printf(b,
                   "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"10\" fill=\"%s\"/><text "
                   "x=\"%d\" y=\"%d\" class=\"ax\">%s</text>",
                   lx, H - 15, cat_colors[c], lx + 16, H - 6, cat_names[c]);
        lx += 110;
    }
    tsb_puts(b, "</svg>\n");
#undef X
#undef Y
}

static const cJSON *last_model_record(const cJSON *records, const char *model) {
    const cJSON *found = NULL, *r;
    cJSON_ArrayForEach(r, records) {
        if (strcmp(str_at(r, "type"), "model") == 0 && strcasecmp(str_at(r, "model"), model) == 0)
            found = r;
    }
    return found;
}

static const char html_style[] =
    "body{font-family:sans-serif;margin:24px;color:#222;background:#fff}"
    "h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;"
    "font-size:13px;text-align:left;vertical-align:top}th{background:#eef2f6}"
    "tr.bad td{background:#fdecec}.num{text-align:right}"
    "svg text{font-family:sans-serif;font-size:12px}svg .ct{font-size:14px;font-weight:bold}"
    "svg .ax{font-size:11px;fill:#555}.pre{white-space:pre-wrap;font-family:monospace}";

/* Per case: where it ran, device memory per phase (accounted / as the
 * device reports it), and the fallbacks with the rung before and after.
 * Cases on the CPU without a fallback are counted, not listed, and at most
 * DEVICE_ROWS rows are written, so the report stays small on long sweeps
 * (results.jsonl has every case). */
#define DEVICE_ROWS 200

static void render_device_cases(tsb *b, const cJSON *records) {
    int plain = 0, listed = 0, more = 0;
    tsb_puts(b, "<h2>Device per case</h2>\n<table class=\"device-cases\"><thead><tr><th>model"
                "</th><th>case</th><th>device</th><th>precision</th><th>GPU load</th><th>GPU "
                "image</th><th>GPU prefill</th><th>GPU decode</th><th>GPU in use (device)</th>"
                "<th>fallbacks</th></tr></thead><tbody>\n");
    const cJSON *r;
    cJSON_ArrayForEach(r, records) {
        if (strcmp(str_at(r, "type"), "case") != 0) continue;
        const cJSON *pl = cJSON_GetObjectItemCaseSensitive(r, "placement");
        int n_fb = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "fallbacks"));
        const char *where = str_at(pl, "device");
        if (n_fb == 0 && (!where[0] || strcmp(where, "cpu") == 0)) {
            plain++;
            continue;
        }
        if (listed == DEVICE_ROWS) {
            more++;
            continue;
        }
        listed++;
        const cJSON *gpu = cJSON_GetObjectItemCaseSensitive(r, "gpu");
        const cJSON *ga = cJSON_GetObjectItemCaseSensitive(gpu, "peak_accounted");
        const cJSON *gd = cJSON_GetObjectItemCaseSensitive(gpu, "peak_device");
        char dev[64], v[4][32], u[32];
        if (pl)
            placement_text(pl, dev, sizeof dev);
        else
            snprintf(dev, sizeof dev, "-");
        static const char *const ph[4] = {"load", "image", "prefill", "decode"};
        for (int i = 0; i < 4; i++) fmt_bytes(v[i], sizeof v[i], num_at(ga, ph[i]));
        fmt_bytes(u, sizeof u, num_at(gd, "case"));
        tsb_puts(b, "<tr class=\"device-case\"><td>");
        tsb_html(b, str_at(r, "model"));
        tsb_puts(b, "</td><td>");
        tsb_html(b, str_at(r, "suite"));
        tsb_puts(b, "/");
        tsb_html(b, str_at(r, "case_id"));
        tsb_puts(b, "</td><td>");
        tsb_html(b, dev);
        tsb_puts(b, "</td><td>");
        tsb_html(b, str_at(pl, "precision"));
        tsb_printf(b,
                   "</td><td class=\"num\">%s</td><td class=\"num\">%s</td><td class=\"num\">"
                   "%s</td><td class=\"num\">%s</td><td class=\"num\">%s</td><td>",
                   v[0], v[1], v[2], v[3], u);
        const cJSON *f;
        int nf = 0;
        cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(r, "fallbacks")) {
            if (nf++) tsb_puts(b, "<br>");
            tsb_html(b, str_at(f, "phase"));
            tsb_puts(b, ": ");
            tsb_html(b, str_at(f, "before"));
            tsb_puts(b, " &rarr; ");
            tsb_html(b, str_at(f, "after"));
        }
        if (!nf) tsb_puts(b, "none");
        tsb_puts(b, "</td></tr>\n");
    }
    tsb_printf(b,
               "</tbody></table>\n<p class=\"device-note\">%d case(s) ran on the CPU without a "
               "fallback (device peak 0)%s",
               plain, more ? "; " : ".");
    if (more) tsb_printf(b, "%d more on the GPU or after a fallback: see results.jsonl.", more);
    tsb_puts(b, "</p>\n");
}

static char *render_html(const cJSON *sum, const cJSON *records) {
    tsb b = {0};
    char x[64], y[64], z[64], w[64];
    tsb_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<title>vlmtest report</title><style>");
    tsb_puts(&b, html_style);
    tsb_puts(&b, "</style></head><body>\n<h1>vlmtest report</h1>\n<p>Generated ");
    tsb_html(&b, str_at(sum, "generated"));
    tsb_puts(&b, ". Runs:");
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(sum, "run_ids")) {
        tsb_puts(&b, " <code>");
        tsb_html(&b, it->valuestring);
        tsb_puts(&b, "</code>");
    }
    tsb_printf(&b, ". %d cases, %d passed.</p>\n", (int)num_at(sum, "cases"),
               (int)num_at(sum, "passed"));
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(sum, "models");
    tsb_puts(&b, "<h2>Summary</h2>\n<table class=\"summary\"><thead><tr><th>model</th>"
                 "<th>outcome</th><th>cases</th><th>passed</th><th>failed</th><th>errors</th>"
                 "<th>pass rate</th><th>load ms</th><th>RSS before load</th><th>after load</th>"
                 "<th>peak</th><th>after unload</th><th>residual</th><th>first token ms</th>"
                 "<th>decode tok/s</th><th>device</th><th>GPU peak</th><th>GPU in use</th>"
                 "<th>fallbacks</th></tr></thead><tbody>\n");
    const cJSON *m;
    cJSON_ArrayForEach(m, models) {
        const char *outcome = str_at(m, "outcome");
        bool bad = outcome[0] && strcmp(outcome, "ok") != 0;
        tsb_printf(&b, "<tr class=\"model-row%s\" data-model=\"", bad ? " bad" : "");
        tsb_html(&b, str_at(m, "model"));
        tsb_puts(&b, "\"><td>");
        tsb_html(&b, str_at(m, "model"));
        tsb_puts(&b, "</td><td>");
        tsb_html(&b, outcome[0] ? outcome : "-");
        if (bad) {
            tsb_puts(&b, "<br><small>");
            tsb_html(&b, str_at(m, "detail"));
            tsb_puts(&b, "</small>");
        }
        fmt_field(x, sizeof x, m, "mem_before_load");
        fmt_field(y, sizeof y, m, "mem_after_load");
        fmt_field(z, sizeof z, m, "mem_peak");
        fmt_field(w, sizeof w, m, "mem_after_unload");
        char r[64];
        fmt_field(r, sizeof r, m, "residual");
        tsb_printf(&b,
                   "</td><td class=\"num\">%d</td><td class=\"num\">%d</td><td "
                   "class=\"num\">%d</td><td class=\"num\">%d</td><td class=\"num\">%.1f%%</td>"
                   "<td class=\"num\">%.0f</td><td class=\"num\">%s</td><td class=\"num\">%s</td>"
                   "<td class=\"num\">%s</td><td class=\"num\">%s</td><td class=\"num\">%s</td>"
                   "<td class=\"num\">%.1f</td><td class=\"num\">%.1f</td><td class=\"device\">",
                   (int)num_at(m, "cases"), (int)num_at(m, "passed"), (int)num_at(m, "failed"),
                   (int)num_at(m, "errors"), 100 * num_at(m, "pass_rate"), num_at(m, "load_ms"), x,
                   y, z, w, r, num_at(m, "mean_first_token_ms"), num_at(m, "mean_decode_tps"));
        tsb_html(&b, str_at(m, "device")[0] ? str_at(m, "device") : "-");
        char gp[32], gu[32];
        fmt_bytes(gp, sizeof gp, num_at(m, "max_case_gpu_peak"));
        fmt_bytes(gu, sizeof gu, num_at(m, "max_case_gpu_used"));
        tsb_printf(&b,
                   "</td><td class=\"num gpu-peak\">%s</td><td class=\"num\">%s</td>"
                   "<td class=\"num\">%d</td></tr>\n",
                   gp, gu, (int)num_at(m, "fallbacks"));
    }
    tsb_puts(&b, "</tbody></table>\n<h2>Pass rate</h2>\n");
    /* pass_rate is 0..1; show percent. */
    cJSON *pct = cJSON_CreateArray();
    cJSON_ArrayForEach(m, models) {
        cJSON *o = cJSON_CreateObject();
        if (!o) continue;
        cJSON_AddStringToObject(o, "model", str_at(m, "model"));
        cJSON_AddNumberToObject(o, "v", 100 * num_at(m, "pass_rate"));
        tjson_push(pct, o);
    }
    svg_bars(&b, "pass-rate", "pass rate per model (%)", pct, "v", 100, false, "%");
    cJSON_Delete(pct);
    tsb_puts(&b, "<h2>Latency</h2>\n");
    svg_bars(&b, "latency", "mean time to first token (ms)", models, "mean_first_token_ms", 0,
             false, " ms");
    svg_bars(&b, "latency", "mean time per case (ms)", models, "mean_case_ms", 0, false, " ms");
    svg_bars(&b, "latency", "load time (ms)", models, "load_ms", 0, false, " ms");
    tsb_puts(&b, "<h2>Memory</h2>\n");
    svg_bars(&b, "memory", "RSS after load", models, "mem_after_load", 0, true, "");
    svg_bars(&b, "memory", "peak RSS", models, "mem_peak", 0, true, "");
    svg_bars(&b, "memory", "residual RSS after unload (vs before load)", models, "residual", 0,
             true, "");
    tsb_puts(&b, "<h2>Memory timelines</h2>\n");
    cJSON_ArrayForEach(m, models) {
        const char *name = str_at(m, "model");
        tsb_puts(&b, "<h3>");
        tsb_html(&b, name);
        tsb_puts(&b, "</h3>\n");
        const cJSON *rec = last_model_record(records, name);
        static const cJSON empty_rec; /* a model with case records only: an empty chart */
        svg_timeline(&b, name, rec ? rec : &empty_rec);
        const cJSON *a;
        cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(m, "attempts")) {
            char *cfg = vlm_json_print(cJSON_GetObjectItemCaseSensitive(a, "config"));
            tsb_printf(&b, "<p>attempt %d%s: <b>", (int)num_at(a, "attempt"),
                       cJSON_IsTrue(cJSON_GetObjectItem(a, "fallback")) ? " (fallback)" : "");
            tsb_html(&b, str_at(a, "outcome"));
            tsb_puts(&b, "</b> ");
            tsb_html(&b, str_at(a, "detail"));
            tsb_puts(&b, "; config <code>");
            tsb_html(&b, cfg ? cfg : "{}");
            tsb_puts(&b, "</code></p>\n");
            vlm_free(cfg);
        }
    }
    render_device_cases(&b, records);
    tsb_puts(&b,
             "<h2>Per suite</h2>\n<table class=\"suites\"><thead><tr><th>model</th><th>"
             "suite</th><th>cases</th><th>passed</th><th>pass rate</th><th>turns passed</th></tr>"
             "</thead><tbody>\n");
    rate_rows(&b, true, models, false);
    tsb_puts(&b, "</tbody></table>\n");
    if (has_tags(models)) {
        tsb_puts(&b, "<h2>Per tag</h2>\n<p>Tags that two or more cases of a suite carry.</p>\n"
                     "<table class=\"tags\"><thead><tr><th>model</th><th>suite</th><th>tag</th>"
                     "<th>cases</th><th>passed</th><th>pass rate</th><th>turns passed</th></tr>"
                     "</thead><tbody>\n");
        rate_rows(&b, true, models, true);
        tsb_puts(&b, "</tbody></table>\n");
    }
    tsb_puts(&b, "<h2>Failures</h2>\n");
    const cJSON *fails = cJSON_GetObjectItemCaseSensitive(sum, "failures");
    if (cJSON_GetArraySize(fails) == 0)
        tsb_puts(&b, "<p>None.</p>\n");
    else
        tsb_puts(&b, "<table class=\"failures\"><thead><tr><th>model</th><th>case</th><th>"
                     "status</th><th>reason</th><th>expected</th><th>answer</th></tr></thead>"
                     "<tbody>\n");
    const cJSON *f;
    cJSON_ArrayForEach(f, fails) {
        char eb[512];
        tsb_puts(&b, "<tr class=\"failure\"><td>");
        tsb_html(&b, str_at(f, "model"));
        tsb_puts(&b, "</td><td>");
        tsb_html(&b, str_at(f, "suite"));
        tsb_puts(&b, "/");
        tsb_html(&b, str_at(f, "case_id"));
        tsb_puts(&b, "</td><td>");
        tsb_html(&b, str_at(f, "status"));
        tsb_puts(&b, "</td><td>");
        tsb_html(&b, str_at(f, "reason"));
        tsb_puts(&b, "</td><td class=\"pre\">");
        tsb_html(&b, expected_text(cJSON_GetObjectItemCaseSensitive(f, "expected"), eb, sizeof eb));
        tsb_puts(&b, "</td><td class=\"pre\">");
        tsb_html(&b, str_at(f, "answer"));
        tsb_puts(&b, "</td></tr>\n");
    }
    if (cJSON_GetArraySize(fails) > 0) tsb_puts(&b, "</tbody></table>\n");
    tsb_puts(&b, "</body></html>\n");
    return tsb_take(&b);
}

static vlm_status write_text(const char *dir, const char *name, const char *text, vlm_err *err) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!text) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory rendering", path);
    return vlm_file_write_atomic(path, text, strlen(text), err);
}

vlm_status tester_report_write(const char *dir, const cJSON *records, cJSON **summary_out,
                               vlm_err *err) {
    if (summary_out) *summary_out = NULL;
    cJSON *sum;
    vlm_status st = tester_report_summary(records, &sum, err);
    if (st) return st;
    char *json = cJSON_Print(sum);
    st = write_text(dir, "report.json", json, err);
    cJSON_free(json);
    if (!st) {
        char *md = render_md(sum);
        st = write_text(dir, "report.md", md, err);
        vlm_free(md);
    }
    if (!st) {
        char *html = render_html(sum, records);
        st = write_text(dir, "report.html", html, err);
        vlm_free(html);
    }
    if (!st && summary_out)
        *summary_out = sum;
    else
        cJSON_Delete(sum);
    return st;
}
