/* tester: the whole sweep through the real supervisor, pipes, limits,
 * results and reports, with a test backend defined here in place of the
 * engine. The backend answers from the prompt:
 *   ECHO:text   answers "text"          RECALL:k  answers turn k's answer
 *   SLEEP:s     sleeps s seconds first  ABORT     raises SIGABRT
 *   ALLOC       allocates until killed
 * and from the model: a name with "wrong" answers "nonsense", "loadfail"
 * cannot load, "bigcrops" aborts while loading with num_crops > 2, "gpu"
 * reports a split placement with a load fallback and device bytes per phase
 * (as the engine does on a GPU machine).
 *
 * Run as `test_tester_run --as-cli COMMAND ARGS...` it is the vlmtest command
 * line on this backend (the kill -9 test and the HTML report test use that). */
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/json.h"
#include "mem/monitor.h"
#include "tester/memprobe.h"
#include "tester/report.h"
#include "tester/results.h"
#include "tester/run.h"

/* ------------------------------------------------------------------------ */
/* the test backend                                                         */

typedef struct tmodel {
    char *weights; /* 4 MiB, touched, so load shows in RSS and accounting */
    bool wrong;
    bool gpu;
} tmodel;

typedef struct tsession {
    tmodel *m;
    char *answers[16];
    int n;
    char *kv; /* 1 MiB of "KV cache" per session */
} tsession;

#define WEIGHTS_BYTES (4u << 20)

static vlm_status tb_load(const tester_job *job, void **model, cJSON *config, vlm_err *err) {
    const char *name = job->model->name;
    if (strstr(name, "loadfail"))
        return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: no weights here", job->model->resolved);
    if (strstr(name, "bigcrops") && job->opts.num_crops > 2) raise(SIGABRT);
    if (strstr(name, "slowload")) sleep(30);
    tmodel *m = calloc(1, sizeof *m);
    m->weights = vlm_alloc(WEIGHTS_BYTES, VLM_MEM_WEIGHTS);
    if (!m->weights) {
        free(m);
        return vlm_err_set(err, VLM_ERR_NOMEM, "test backend: out of memory");
    }
    memset(m->weights, 1, WEIGHTS_BYTES);
    m->wrong = strstr(name, "wrong") != NULL;
    m->gpu = strstr(name, "gpu") != NULL;
    cJSON_AddStringToObject(config, "backend", "test");
    if (m->gpu) {
        cJSON_AddStringToObject(config, "device", "cuda+cpu");
        cJSON_AddNumberToObject(config, "gpu_layers", 20);
        cJSON_AddNumberToObject(config, "n_layers", 32);
        cJSON_AddStringToObject(config, "head_device", "cpu");
        cJSON_AddStringToObject(config, "vision_device", "cuda");
        cJSON *plan = cJSON_AddObjectToObject(config, "plan");
        cJSON_AddStringToObject(plan, "precision", "native");
        cJSON_AddStringToObject(plan, "rung", "gpu native, 20/32 layers, vision gpu");
        cJSON_AddStringToObject(plan, "first_rung", "gpu native");
        cJSON_AddNumberToObject(plan, "fallbacks", 1);
        cJSON_AddStringToObject(plan, "fallback_note", "gpu native (out of memory)");
    }
    cJSON_AddNumberToObject(config, "num_crops", job->opts.num_crops);
    cJSON_AddNumberToObject(config, "max_context", job->opts.max_context);
    *model = m;
    return VLM_OK;
}

static vlm_status tb_session_new(void *model, const char *system, void **session, vlm_err *err) {
    (void)system;
    tsession *s = calloc(1, sizeof *s);
    s->m = model;
    s->kv = vlm_alloc(1u << 20, VLM_MEM_KV_CACHE);
    if (!s->kv) {
        free(s);
        return vlm_err_set(err, VLM_ERR_NOMEM, "test backend: out of memory");
    }
    memset(s->kv, 2, 1u << 20);
    *session = s;
    return VLM_OK;
}

static vlm_status tb_chat(void *session, const tester_turn *turn, const tester_gen *gen,
                          char **answer, vlm_gen_stats *st, vlm_err *err) {
    (void)gen;
    tsession *s = session;
    const char *p = turn->prompt;
    for (size_t i = 0; i < turn->n_images; i++) {
        struct stat sb;
        if (stat(turn->images[i], &sb) != 0)
            return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: gone", turn->images[i]);
    }
    const char *q;
    if ((q = strstr(p, "SLEEP:"))) usleep((useconds_t)(atof(q + 6) * 1e6));
    if (strstr(p, "ABORT")) raise(SIGABRT);
    if (strstr(p, "ALLOC")) {
        for (int i = 0; i < 256; i++) {
            char *b = vlm_alloc(16u << 20, VLM_MEM_ACTIVATIONS);
            if (b) memset(b, 3, 16u << 20);
            usleep(10000);
        }
        return vlm_err_set(err, VLM_ERR_INTERNAL, "ALLOC was not stopped");
    }
    char buf[512] = "I do not know";
    if ((q = strstr(p, "ECHO:"))) snprintf(buf, sizeof buf, "%s", q + 5);
    if ((q = strstr(p, "RECALL:"))) {
        int k = atoi(q + 7);
        snprintf(buf, sizeof buf, "%s", k >= 1 && k <= s->n ? s->answers[k - 1] : "?");
    }
    if (s->m->wrong) snprintf(buf, sizeof buf, "nonsense");
    if (s->n < 16) s->answers[s->n++] = strdup(buf);
    *answer = strdup(buf);
    memset(st, 0, sizeof *st);
    st->tokens_in = (int)strlen(p) / 4 + 10 * (int)turn->n_images;
    st->tokens_out = 1 + (int)strlen(buf) / 4;
    st->image_tokens = 10 * (int)turn->n_images;
    st->prefill_ms = 1;
    st->first_token_ms = 2;
    st->decode_ms = 3;
    st->decode_tps = 100;
    if (s->m->gpu) {
        st->gpu_peak_image = 3000;
        st->gpu_peak_prefill = 5000;
        st->gpu_peak_decode = 4000;
        st->gpu_used_prefill = 9000;
    }
    snprintf(st->stop_reason, sizeof st->stop_reason, "eos");
    return VLM_OK;
}

static void tb_session_free(void *session) {
    tsession *s = session;
    for (int i = 0; i < s->n; i++) free(s->answers[i]);
    vlm_free(s->kv);
    free(s);
}
static void tb_answer_free(char *a) {
    free(a);
}
static void tb_unload(void *model) {
    tmodel *m = model;
    vlm_free(m->weights);
    free(m);
}

static const tester_backend test_backend = {
    "test", tb_load, tb_session_new, tb_chat, tb_session_free, tb_answer_free, tb_unload,
};

/* ------------------------------------------------------------------------ */
/* fixtures                                                                 */

static char *tmp;

static const char *p(const char *rel) {
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp, rel);
    return b;
}

static void put(const char *rel, const char *text) {
    const char *path = p(rel);
    char dir[1024], cmd[1100];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(tu_write_file(path, text, strlen(text)));
}

/* A models file: each entry "name" or "name|{options json}". */
static void models(const char *rel, const char *const *entries, size_t n) {
    char text[8192] = "{\"models\":[";
    for (size_t i = 0; i < n; i++) {
        char name[128];
        const char *bar = strchr(entries[i], '|');
        size_t l = bar ? (size_t)(bar - entries[i]) : strlen(entries[i]);
        snprintf(name, sizeof name, "%.*s", (int)l, entries[i]);
        size_t t = strlen(text);
        snprintf(text + t, sizeof text - t, "%s{\"name\":\"%s\",\"source\":\"weights\"%s%s%s}",
                 i ? "," : "", name, bar ? ",\"options\":" : "", bar ? bar + 1 : "", "");
    }
    strcat(text, "]}");
    put("weights/model.safetensors", "0123456789");
    put(rel, text);
}

/* The suite used by most tests: one passing case per scorer for a model
 * that echoes, and an image. */
static void scorer_suite(const char *dir) {
    char path[256], cases[4096];
    snprintf(path, sizeof path, "%s/suite.json", dir);
    put(path, "{\"name\":\"scorers\",\"defaults\":{\"max_tokens\":16}}");
    snprintf(path, sizeof path, "%s/img/one.png", dir);
    put(path, "\x89PNG fixture");
    snprintf(cases, sizeof cases, "%s",
             "{\"id\":\"exact\",\"images\":[\"img/one.png\"],\"prompt\":\"ECHO:Paris.\","
             "\"expected\":\"paris\",\"scorer\":\"exact\"}\n"
             "{\"id\":\"contains\",\"prompt\":\"ECHO:a red car\",\"expected\":\"red\","
             "\"scorer\":\"contains\"}\n"
             "{\"id\":\"contains_all\",\"prompt\":\"ECHO:dog and ball\",\"expected\":[\"dog\","
             "\"ball\"],\"scorer\":\"contains_all\"}\n"
             "{\"id\":\"contains_any\",\"prompt\":\"ECHO:a puppy\",\"expected\":[\"dog\","
             "\"puppy\"],\"scorer\":\"contains_any\"}\n"
             "{\"id\":\"not_contains\",\"prompt\":\"ECHO:a cat\",\"expected\":\"sorry\","
             "\"scorer\":\"not_contains\"}\n"
             "{\"id\":\"regex\",\"prompt\":\"ECHO:555-1234\",\"expected\":\"^\\\\d{3}-\\\\d{4}$\","
             "\"scorer\":\"regex\"}\n"
             "{\"id\":\"choice\",\"prompt\":\"ECHO:The answer is (C).\",\"expected\":\"C\","
             "\"scorer\":\"choice\"}\n"
             "{\"id\":\"number\",\"prompt\":\"ECHO:There are 7 birds\",\"expected\":7,"
             "\"scorer\":\"number\"}\n"
             "{\"id\":\"yes_no\",\"prompt\":\"ECHO:Yes, it is.\",\"expected\":\"yes\","
             "\"scorer\":\"yes_no\"}\n");
    snprintf(path, sizeof path, "%s/cases.jsonl", dir);
    put(path, cases);
}

static int run_cli(bool context, const char *const *args) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)(context ? "context" : "run");
    for (; *args; args++) argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    return tester_cmd_run(argc, argv, &test_backend, context);
}

/* All records of the one run folder under out. */
static cJSON *records_of(const char *out) {
    char cmd[1200], dir[1024] = "";
    snprintf(cmd, sizeof cmd, "ls -d '%s'/*/ | head -1", out);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(dir, sizeof dir, f));
    pclose(f);
    dir[strcspn(dir, "\n")] = '\0';
    cJSON *all;
    vlm_err e;
    if (tester_results_read(dir, &all, &e)) fail_msg("%s", e.msg);
    return all;
}

static const char *s_at(const cJSON *o, const char *k) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
    return s ? s : "";
}

static double n_at(const cJSON *o, const char *k) {
    return cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

static const cJSON *find_rec(const cJSON *all, const char *type, const char *model,
                             const char *case_id, int nth) {
    const cJSON *r;
    cJSON_ArrayForEach(r, all) {
        if (strcmp(s_at(r, "type"), type) || strcmp(s_at(r, "model"), model)) continue;
        if (case_id && strcmp(s_at(r, "case_id"), case_id)) continue;
        if (nth-- == 0) return r;
    }
    return NULL;
}

static int count_recs(const cJSON *all, const char *type, const char *model, const char *status) {
    int n = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, all) {
        if (strcmp(s_at(r, "type"), type)) continue;
        if (model && strcmp(s_at(r, "model"), model)) continue;
        if (status && strcmp(s_at(r, "status"), status)) continue;
        n++;
    }
    return n;
}

static int setup(void **state) {
    (void)state;
    tmp = tu_mkdtemp();
    if (!tmp) return -1;
    scorer_suite("suites/scorers");
    put("suites/plain/suite.json", "{\"name\":\"plain\"}");
    put("suites/plain/cases.jsonl",
        "{\"id\":\"1\",\"prompt\":\"ECHO:one\",\"expected\":\"one\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"2\",\"prompt\":\"ECHO:two\",\"expected\":\"two\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"3\",\"prompt\":\"ECHO:three\",\"expected\":3,\"scorer\":\"number\"}\n");
    /* Three cases; the second makes the worker abort. */
    put("suites/abort/suite.json", "{\"name\":\"abort\"}");
    put("suites/abort/cases.jsonl",
        "{\"id\":\"1\",\"prompt\":\"ECHO:x\",\"expected\":\"x\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"2\",\"prompt\":\"ABORT\",\"expected\":\"x\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"3\",\"prompt\":\"ECHO:x\",\"expected\":\"x\",\"scorer\":\"exact\"}\n");
    return 0;
}
static int teardown(void **state) {
    (void)state;
    tu_rmtree(tmp);
    free(tmp);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* tests                                                                    */

static void test_every_scorer_pass_and_fail(void **state) {
    (void)state;
    const char *m[] = {"echo", "wrong-one"};
    models("m1.json", m, 2);
    const char *args[] = {"--models", p("m1.json"), "--suite", p("suites/scorers"),
                          "--out",    p("out1"),    NULL};
    assert_int_equal(run_cli(false, args), 1); /* the wrong model fails cases */
    cJSON *all = records_of(p("out1"));
    assert_int_equal(count_recs(all, "case", "echo", "ok"), 9);
    const cJSON *r;
    cJSON_ArrayForEach(r, all) {
        if (strcmp(s_at(r, "type"), "case")) continue;
        bool passed = cJSON_IsTrue(cJSON_GetObjectItem(r, "passed"));
        if (strcmp(s_at(r, "model"), "echo") == 0) {
            if (!passed) fail_msg("echo %s failed: %s", s_at(r, "case_id"), s_at(r, "reason"));
        } else {
            /* "nonsense" passes only not_contains. */
            assert_int_equal(passed, strcmp(s_at(r, "case_id"), "not_contains") == 0);
            if (!passed) assert_true(s_at(r, "reason")[0] != '\0');
        }
        assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(r, "peak_rss")) > 0);
        assert_non_null(cJSON_GetObjectItem(r, "peak_cat"));
    }
    const cJSON *exact = find_rec(all, "case", "echo", "exact", 0);
    assert_string_equal(s_at(exact, "answer"), "Paris.");
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(exact, "tokens_in")) >= 10);
    /* Model records: measurements per phase. */
    const cJSON *mr = find_rec(all, "model", "echo", NULL, 0);
    assert_non_null(mr);
    assert_string_equal(s_at(mr, "outcome"), "ok");
    double before = cJSON_GetNumberValue(cJSON_GetObjectItem(mr, "mem_before_load"));
    double after = cJSON_GetNumberValue(cJSON_GetObjectItem(mr, "mem_after_load"));
    double acc = cJSON_GetNumberValue(cJSON_GetObjectItem(mr, "accounted_after_load"));
    assert_true(before > 0);
    assert_true(acc >= WEIGHTS_BYTES);
    assert_true(after >= before);
    assert_non_null(cJSON_GetObjectItem(mr, "residual"));
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(mr, "timeline"), "events"));
    assert_string_equal(s_at(cJSON_GetObjectItem(mr, "config"), "backend"), "test");
    cJSON_Delete(all);
    /* Reports. */
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && test -s */report.json && test -s */report.md && test -s */report.html"
             " && grep -q 'wrong-one' */report.md && grep -q 'nonsense' */report.md",
             p("out1"));
    assert_int_equal(system(cmd), 0);
}

/* Reports under allocation failure at every point: success or a clean
 * VLM_ERR_NOMEM, no crash, no leak (ASan build). Uses out1's records. */
/* tester_report_write of records into dir with the allocation at every
 * index up to dense failing, then every stride-th to the end (to keep the
 * test quick): VLM_OK or a clean VLM_ERR_NOMEM, no block leaked. */
static void sweep_report_alloc_failures(const char *dir, const cJSON *records, uint64_t dense,
                                        uint64_t stride) {
    uint64_t a0 = vlm_alloc_count();
    vlm_err e;
    assert_int_equal(tester_report_write(dir, records, NULL, &e), VLM_OK);
    uint64_t need = vlm_alloc_count() - a0;
    assert_true(need > 10);
    for (uint64_t n = 1; n <= need + 1; n += n < dense ? 1 : stride) {
        vlm_mem_stats m0, m1;
        vlm_alloc_get_stats(&m0);
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        vlm_status st = tester_report_write(dir, records, NULL, &e);
        vlm_alloc_fail_at(0, false);
        if (st != VLM_OK && st != VLM_ERR_NOMEM)
            fail_msg("fail at +%llu: %s", (unsigned long long)n, e.msg);
        vlm_alloc_get_stats(&m1);
        if (m1.live_blocks != m0.live_blocks)
            fail_msg("fail at +%llu: %lld blocks leaked", (unsigned long long)n,
                     (long long)(m1.live_blocks - m0.live_blocks));
    }
}

static void test_report_alloc_failures(void **state) {
    (void)state;
    cJSON *all = records_of(p("out1"));
    sweep_report_alloc_failures(p("out1"), all, 2000, 37);
    cJSON_Delete(all);
}

/* The entry of tag t in suite sn of model mn of a report summary, or NULL. */
static const cJSON *tag_entry(const cJSON *sum, const char *mn, const char *sn, const char *t) {
    const cJSON *m, *s, *e;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(sum, "models")) {
        if (strcmp(s_at(m, "model"), mn)) continue;
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(m, "suites")) {
            if (strcmp(s_at(s, "suite"), sn)) continue;
            cJSON_ArrayForEach(e, cJSON_GetObjectItem(s, "tags")) {
                if (strcmp(s_at(e, "tag"), t) == 0) return e;
            }
        }
    }
    return NULL;
}

/* Pass rates per tag: a case counts once under each distinct string tag;
 * a suite's tags carried by one case are left out; past 256 distinct tags a
 * suite keeps the first and says it left the rest out; the Markdown and HTML
 * reports show the table; allocation failures anywhere give a clean
 * VLM_ERR_NOMEM and no leak. */
static void test_report_per_tag(void **state) {
    (void)state;
    cJSON *all =
        cJSON_Parse("[{\"type\":\"case\",\"model\":\"m\",\"suite\":\"a\",\"case_id\":\"1\","
                    "\"status\":\"ok\",\"passed\":true,\"turns_scored\":1,\"turns_passed\":1,"
                    "\"tags\":[\"colour\",\"10x10\",\"colour\"]},"
                    "{\"type\":\"case\",\"model\":\"m\",\"suite\":\"a\",\"case_id\":\"2\","
                    "\"status\":\"ok\",\"passed\":false,\"turns_scored\":1,\"turns_passed\":0,"
                    "\"tags\":[\"colour\",\"20x20\",7]},"
                    "{\"type\":\"case\",\"model\":\"m\",\"suite\":\"a\",\"case_id\":\"3\","
                    "\"status\":\"ok\",\"passed\":true,\"turns_scored\":1,\"turns_passed\":1,"
                    "\"tags\":[\"Colour\"]},"
                    "{\"type\":\"case\",\"model\":\"m\",\"suite\":\"b\",\"case_id\":\"1\","
                    "\"status\":\"ok\",\"passed\":true,\"turns_scored\":3,\"turns_passed\":2,"
                    "\"tags\":[\"colour\"]},"
                    "{\"type\":\"case\",\"model\":\"m\",\"suite\":\"b\",\"case_id\":\"2\","
                    "\"status\":\"ok\",\"passed\":false,\"turns_scored\":2,\"turns_passed\":1,"
                    "\"tags\":[\"colour\"]}]");
    assert_non_null(all);
    /* suite c: 300 cases, each with a tag of its own and the shared "all" */
    for (int i = 0; i < 300; i++) {
        char rec[256];
        snprintf(rec, sizeof rec,
                 "{\"type\":\"case\",\"model\":\"m\",\"suite\":\"c\",\"case_id\":\"%d\","
                 "\"status\":\"ok\",\"passed\":%s,\"turns_scored\":1,\"turns_passed\":%d,"
                 "\"tags\":[\"all\",\"own-%d\"]}",
                 i, i % 3 ? "true" : "false", i % 3 ? 1 : 0, i);
        cJSON *r = cJSON_Parse(rec);
        assert_non_null(r);
        cJSON_AddItemToArray(all, r);
    }
    cJSON *sum;
    vlm_err e;
    assert_int_equal(tester_report_summary(all, &sum, &e), VLM_OK);
    const cJSON *ca = tag_entry(sum, "m", "a", "colour");
    assert_non_null(ca);
    assert_int_equal((int)n_at(ca, "cases"), 2); /* the repeated tag counts once */
    assert_int_equal((int)n_at(ca, "passed"), 1);
    assert_true(n_at(ca, "pass_rate") == 0.5);
    assert_null(tag_entry(sum, "m", "a", "10x10"));  /* one case: left out */
    assert_null(tag_entry(sum, "m", "a", "Colour")); /* tags match exactly */
    const cJSON *cb = tag_entry(sum, "m", "b", "colour");
    assert_non_null(cb);
    assert_int_equal((int)n_at(cb, "turns_scored"), 5);
    assert_int_equal((int)n_at(cb, "turns_passed"), 3);
    const cJSON *all_c = tag_entry(sum, "m", "c", "all");
    assert_non_null(all_c);
    assert_int_equal((int)n_at(all_c, "cases"), 300);
    assert_int_equal((int)n_at(all_c, "passed"), 200);
    assert_null(tag_entry(sum, "m", "c", "own-0"));
    const cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItem(sum, "models"), 0);
    const cJSON *sc = cJSON_GetArrayItem(cJSON_GetObjectItem(m0, "suites"), 2);
    assert_string_equal(s_at(sc, "suite"), "c");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(sc, "tags_truncated")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(sc, "tags")), 1);
    cJSON_Delete(sum);
    /* the written reports show the table */
    assert_int_equal(mkdir(p("tags"), 0755), 0);
    assert_int_equal(tester_report_write(p("tags"), all, NULL, &e), VLM_OK);
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && grep -q '^## Pass rate per tag' report.md && "
             "grep -q '^| m | a | colour | 2 | 1 | 50.0%% | 1/2 |$' report.md && "
             "grep -q '^| m | c | (more than 256 tags' report.md && "
             "grep -q '<h2>Per tag</h2>' report.html && ! grep -q 'own-1' report.md",
             p("tags"));
    assert_int_equal(system(cmd), 0);
    /* allocation failures while counting and rendering the tags */
    sweep_report_alloc_failures(p("tags"), all, 1500, 97);
    cJSON_Delete(all);
}

static void test_name_selection_case_insensitive(void **state) {
    (void)state;
    const char *m[] = {"Phi-3.5-Vision-Instruct", "other"};
    models("m2.json", m, 2);
    const char *args[] = {"phi-3.5-vision-instruct", "--models", p("m2.json"), "--suite",
                          p("suites/scorers"),       "--out",    p("out2"),    NULL};
    assert_int_equal(run_cli(false, args), 0);
    cJSON *all = records_of(p("out2"));
    assert_int_equal(count_recs(all, "case", "Phi-3.5-Vision-Instruct", "ok"), 9);
    assert_int_equal(count_recs(all, "case", "other", NULL), 0);
    cJSON_Delete(all);
    const char *bad[] = {"nosuch", "--models", p("m2.json"), "--suite", p("suites/scorers"),
                         "--out",  p("out2b"), NULL};
    assert_int_equal(run_cli(false, bad), 2);
    struct stat sb;
    assert_int_not_equal(stat(p("out2b"), &sb), 0); /* nothing started */
}

static void test_bad_input_before_any_model(void **state) {
    (void)state;
    /* A model that would leave a trace if it were loaded: none must be. */
    const char *m[] = {"echo"};
    models("m3.json", m, 1);
    put("suites/dup/suite.json", "{\"name\":\"dup\"}");
    put("suites/dup/cases.jsonl",
        "{\"id\":\"a\",\"prompt\":\"ECHO:x\",\"expected\":\"x\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"a\",\"prompt\":\"ECHO:x\",\"expected\":\"x\",\"scorer\":\"exact\"}\n");
    const char *args[] = {"--models", p("m3.json"),    "--suite", p("suites/scorers"),
                          "--suite",  p("suites/dup"), "--out",   p("out3"),
                          NULL};
    assert_int_equal(run_cli(false, args), 2);
    struct stat sb;
    assert_int_not_equal(stat(p("out3"), &sb), 0);
    const char *nomodels[] = {"--models", p("none.json"), "--suite", p("suites/scorers"),
                              "--out",    p("out3"),      NULL};
    assert_int_equal(run_cli(false, nomodels), 2);
    const char *badshard[] = {"--shard", "4/3", NULL};
    assert_int_equal(run_cli(false, badshard), 2);
    assert_int_not_equal(stat(p("out3"), &sb), 0);
}

static void test_crash_recorded_next_model_runs(void **state) {
    (void)state;
    const char *m[] = {"crasher|{\"test_crash\":\"abort\"}", "after"};
    models("m4.json", m, 2);
    const char *args[] = {"--models", p("m4.json"), "--suite", p("suites/scorers"),
                          "--out",    p("out4"),    NULL};
    assert_int_equal(run_cli(false, args), 1);
    cJSON *all = records_of(p("out4"));
    const cJSON *mr = find_rec(all, "model", "crasher", NULL, 0);
    assert_string_equal(s_at(mr, "outcome"), "crashed");
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(mr, "signal")), SIGABRT);
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(mr, "last_rss")) > 0);
    assert_int_equal(count_recs(all, "case", "crasher", "not_run"), 9);
    assert_int_equal(count_recs(all, "case", "after", "ok"), 9);
    assert_string_equal(s_at(find_rec(all, "model", "after", NULL, 0), "outcome"), "ok");
    cJSON_Delete(all);
}

static void test_crash_in_case_keeps_last_sample(void **state) {
    (void)state;
    const char *m[] = {"m"};
    models("m5.json", m, 1);
    const char *args[] = {"--models", p("m5.json"), "--suite", p("suites/abort"),
                          "--out",    p("out5"),    NULL};
    assert_int_equal(run_cli(false, args), 1);
    cJSON *all = records_of(p("out5"));
    assert_string_equal(s_at(find_rec(all, "case", "m", "1", 0), "status"), "ok");
    const cJSON *c2 = find_rec(all, "case", "m", "2", 0);
    assert_string_equal(s_at(c2, "status"), "crashed");
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(c2, "last_rss")) > 0);
    assert_non_null(strstr(s_at(c2, "reason"), "signal 6"));
    assert_string_equal(s_at(find_rec(all, "case", "m", "3", 0), "status"), "not_run");
    cJSON_Delete(all);
}

static void test_oom_kill_over_mem_limit(void **state) {
    (void)state;
    uint64_t rss = 0;
    assert_true(memprobe_read(0, &rss, NULL));
    char entry[256];
    snprintf(entry, sizeof entry, "hog|{\"test_crash\":\"oom\",\"mem_limit\":%llu}",
             (unsigned long long)(rss + (96ull << 20)));
    const char *m[] = {entry, "after"};
    models("m6.json", m, 2);
    const char *args[] = {"--models", p("m6.json"), "--suite", p("suites/abort"),
                          "--out",    p("out6"),    NULL};
    run_cli(false, args);
    cJSON *all = records_of(p("out6"));
    const cJSON *mr = find_rec(all, "model", "hog", NULL, 0);
    assert_string_equal(s_at(mr, "outcome"), "oom");
    assert_non_null(strstr(s_at(mr, "detail"), "mem_limit"));
    assert_true(cJSON_GetNumberValue(cJSON_GetObjectItem(mr, "mem_peak")) > (double)rss);
    assert_int_equal(count_recs(all, "case", "after", NULL), 3);
    cJSON_Delete(all);
}

static void test_case_and_model_timeouts(void **state) {
    (void)state;
    put("suites/slow/suite.json", "{\"name\":\"slow\"}");
    put("suites/slow/cases.jsonl",
        "{\"id\":\"fast\",\"prompt\":\"ECHO:x\",\"expected\":\"x\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"slow\",\"prompt\":\"SLEEP:30 "
        "ECHO:x\",\"expected\":\"x\",\"scorer\":\"exact\"}\n");
    const char *m[] = {"m", "hung|{\"test_crash\":\"hang\"}", "slowload"};
    models("m7.json", m, 3);
    const char *args[] = {"--models",
                          p("m7.json"),
                          "--suite",
                          p("suites/slow"),
                          "--out",
                          p("out7"),
                          "--case-timeout",
                          "1",
                          "--model-timeout",
                          "3",
                          "--load-timeout",
                          "1",
                          NULL};
    double t0 = memprobe_now_ms();
    assert_int_equal(run_cli(false, args), 1);
    assert_true(memprobe_now_ms() - t0 < 20000); /* not the 30 s the slow case wants */
    cJSON *all = records_of(p("out7"));
    assert_string_equal(s_at(find_rec(all, "case", "m", "fast", 0), "status"), "ok");
    assert_string_equal(s_at(find_rec(all, "case", "m", "slow", 0), "status"), "timeout");
    const cJSON *h = find_rec(all, "model", "hung", NULL, 0);
    assert_string_equal(s_at(h, "outcome"), "timeout");
    assert_non_null(strstr(s_at(h, "detail"), "model time limit"));
    const cJSON *sl = find_rec(all, "model", "slowload", NULL, 0);
    assert_string_equal(s_at(sl, "outcome"), "timeout");
    assert_non_null(strstr(s_at(sl, "detail"), "load time limit"));
    cJSON_Delete(all);
}

static void test_retry_fallback(void **state) {
    (void)state;
    const char *m[] = {"bigcrops|{\"num_crops\":4,\"max_context\":4096}"};
    models("m8.json", m, 1);
    const char *args[] = {"--models", p("m8.json"), "--suite",          p("suites/scorers"),
                          "--out",    p("out8"),    "--retry-fallback", NULL};
    /* The fallback attempt finished every case, and they passed. */
    assert_int_equal(run_cli(false, args), 0);
    cJSON *all = records_of(p("out8"));
    const cJSON *a1 = find_rec(all, "model", "bigcrops", NULL, 0);
    const cJSON *a2 = find_rec(all, "model", "bigcrops", NULL, 1);
    assert_string_equal(s_at(a1, "outcome"), "crashed");
    assert_string_equal(s_at(a2, "outcome"), "ok");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(a2, "fallback")));
    const cJSON *cfg = cJSON_GetObjectItem(a2, "config");
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(cfg, "num_crops")), 2);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(cfg, "max_context")), 2048);
    assert_int_equal(count_recs(all, "case", "bigcrops", "ok"), 9);
    assert_int_equal(count_recs(all, "case", "bigcrops", NULL), 9);
    cJSON_Delete(all);
    /* Without the flag: no second attempt. */
    const char *args2[] = {"--models", p("m8.json"), "--suite", p("suites/scorers"),
                           "--out",    p("out8b"),   NULL};
    run_cli(false, args2);
    all = records_of(p("out8b"));
    assert_int_equal(count_recs(all, "model", "bigcrops", NULL), 1);
    assert_int_equal(count_recs(all, "case", "bigcrops", "not_run"), 9);
    cJSON_Delete(all);
}

static void test_load_error(void **state) {
    (void)state;
    const char *m[] = {"loadfail"};
    models("m9.json", m, 1);
    const char *args[] = {"--models", p("m9.json"), "--suite", p("suites/abort"),
                          "--out",    p("out9"),    NULL};
    assert_int_equal(run_cli(false, args), 1);
    cJSON *all = records_of(p("out9"));
    const cJSON *mr = find_rec(all, "model", "loadfail", NULL, 0);
    assert_string_equal(s_at(mr, "outcome"), "load_error");
    assert_non_null(strstr(s_at(mr, "detail"), "no weights here"));
    assert_int_equal(count_recs(all, "case", "loadfail", "error"), 3);
    cJSON_Delete(all);
}

/* Where a case ran, device bytes per phase and the load's fallback reach
 * the records, the summary and both reports (from the test backend's
 * figures: no GPU is needed). */
static void test_device_fields(void **state) {
    (void)state;
    const char *m[] = {"gpu-split", "plain"};
    models("m15.json", m, 2);
    const char *args[] = {"--models",          p("m15.json"), "--suite",
                          p("suites/scorers"), "--out",       p("out15"),
                          "--run-id",          "r",           NULL};
    assert_int_equal(run_cli(false, args), 0);
    cJSON *all = records_of(p("out15"));
    const cJSON *c = find_rec(all, "case", "gpu-split", NULL, 0);
    assert_non_null(c);
    const cJSON *pl = cJSON_GetObjectItem(c, "placement");
    assert_string_equal(s_at(pl, "device"), "cuda+cpu");
    assert_int_equal((int)n_at(pl, "gpu_layers"), 20);
    assert_string_equal(s_at(pl, "vision_device"), "cuda");
    const cJSON *ga = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "gpu"), "peak_accounted");
    assert_int_equal((int)n_at(ga, "image"), 3000);
    assert_int_equal((int)n_at(ga, "prefill"), 5000);
    assert_int_equal((int)n_at(ga, "decode"), 4000);
    assert_int_equal((int)n_at(ga, "case"), 5000); /* the largest phase */
    const cJSON *gd = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "gpu"), "peak_device");
    assert_int_equal((int)n_at(gd, "case"), 9000);
    const cJSON *fb = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "fallbacks"), 0);
    assert_string_equal(s_at(fb, "phase"), "load");
    assert_string_equal(s_at(fb, "before"), "gpu native");
    assert_string_equal(s_at(fb, "after"), "gpu native, 20/32 layers, vision gpu");
    /* the other model: on the CPU, nothing on a device, no fallback */
    c = find_rec(all, "case", "plain", NULL, 0);
    assert_string_equal(s_at(cJSON_GetObjectItem(c, "placement"), "device"), "cpu");
    ga = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "gpu"), "peak_accounted");
    assert_int_equal((int)n_at(ga, "case"), 0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(c, "fallbacks")), 0);
    cJSON_Delete(all);

    cJSON *rep = NULL;
    vlm_err e;
    assert_int_equal(vlm_json_parse_file(p("out15/r/report.json"), &rep, &e), VLM_OK);
    const cJSON *ms = cJSON_GetObjectItem(rep, "models");
    const cJSON *g = cJSON_GetArrayItem(ms, 0), *q = cJSON_GetArrayItem(ms, 1);
    if (strcmp(s_at(g, "model"), "gpu-split") != 0) {
        const cJSON *t = g;
        g = q;
        q = t;
    }
    assert_string_equal(s_at(g, "device"), "cuda 20/32 layers, vision cuda");
    assert_int_equal((int)n_at(g, "max_case_gpu_peak"), 5000);
    assert_int_equal((int)n_at(g, "max_case_gpu_used"), 9000);
    assert_int_equal((int)n_at(g, "fallbacks"), 1);
    assert_string_equal(s_at(q, "device"), "cpu");
    assert_int_equal((int)n_at(q, "max_case_gpu_peak"), 0);
    cJSON_Delete(rep);
    size_t len;
    char *html = tu_read_file(p("out15/r/report.html"), &len);
    assert_non_null(strstr(html, "<tr class=\"device-case\"><td>gpu-split</td>"));
    assert_non_null(strstr(html, "load: gpu native &rarr; gpu native, 20/32 layers, vision gpu"));
    assert_null(strstr(html, "<tr class=\"device-case\"><td>plain</td>"));
    free(html);
    char *md = tu_read_file(p("out15/r/report.md"), &len);
    assert_non_null(strstr(md, "| cuda 20/32 layers, vision cuda | 4.9 KiB | 8.8 KiB | 1 |"));
    free(md);
}

static void test_context_three_turns(void **state) {
    (void)state;
    put("suites/ctx/suite.json", "{\"name\":\"ctx\",\"kind\":\"context\"}");
    put("suites/ctx/img.png", "png");
    put("suites/ctx/cases.jsonl",
        "{\"id\":\"good\",\"turns\":["
        "{\"images\":[\"img.png\"],\"prompt\":\"ECHO:blue\",\"expected\":\"blue\","
        "\"scorer\":\"contains\"},"
        "{\"prompt\":\"ECHO:seven\",\"expected\":7,\"scorer\":\"number\"},"
        "{\"prompt\":\"RECALL:1\",\"expected\":\"blue\",\"scorer\":\"exact\"}]}\n"
        "{\"id\":\"bad\",\"turns\":["
        "{\"prompt\":\"ECHO:red\"},"
        "{\"prompt\":\"ECHO:two\",\"expected\":3,\"scorer\":\"number\"},"
        "{\"prompt\":\"RECALL:1\",\"expected\":\"red\",\"scorer\":\"exact\"}]}\n");
    const char *m[] = {"chat"};
    models("m10.json", m, 1);
    const char *args[] = {"--models", p("m10.json"), "--suite", p("suites/ctx"),
                          "--out",    p("out10"),    NULL};
    assert_int_equal(run_cli(true, args), 1);
    cJSON *all = records_of(p("out10"));
    const cJSON *good = find_rec(all, "case", "chat", "good", 0);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(good, "passed")));
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(good, "turns_passed")), 3);
    const cJSON *turns = cJSON_GetObjectItem(good, "turns");
    assert_int_equal(cJSON_GetArraySize(turns), 3);
    assert_string_equal(s_at(cJSON_GetArrayItem(turns, 2), "answer"), "blue"); /* history kept */
    const cJSON *bad = find_rec(all, "case", "chat", "bad", 0);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(bad, "passed")));
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(bad, "turns_scored")), 2);
    assert_int_equal((int)cJSON_GetNumberValue(cJSON_GetObjectItem(bad, "turns_passed")), 1);
    turns = cJSON_GetObjectItem(bad, "turns");
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(turns, 1), "passed")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(turns, 2), "passed")));
    assert_non_null(strstr(s_at(bad, "reason"), "turn 2"));
    cJSON_Delete(all);
    /* A context suite given to `run` is refused before anything runs. */
    const char *wrong[] = {"--models", p("m10.json"), "--suite", p("suites/ctx"),
                           "--out",    p("out10b"),   NULL};
    assert_int_equal(run_cli(false, wrong), 2);
}

/* "model\tsuite\tcase\tanswer" lines of the case records, sorted. */
static char *case_fingerprint(const char *dir) {
    cJSON *all;
    vlm_err e;
    if (tester_results_read(dir, &all, &e)) fail_msg("%s", e.msg);
    char *lines[512];
    int n = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, all) {
        if (strcmp(s_at(r, "type"), "case")) continue;
        char buf[1024];
        snprintf(buf, sizeof buf, "%s\t%s\t%s\t%s\n", s_at(r, "model"), s_at(r, "suite"),
                 s_at(r, "case_id"), s_at(r, "answer"));
        assert_true(n < 512);
        lines[n++] = strdup(buf);
    }
    cJSON_Delete(all);
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && strcmp(lines[k - 1], lines[k]) > 0; k--) {
            char *t = lines[k];
            lines[k] = lines[k - 1];
            lines[k - 1] = t;
        }
    size_t total = 1;
    for (int i = 0; i < n; i++) total += strlen(lines[i]);
    char *s = calloc(1, total);
    for (int i = 0; i < n; i++) {
        strcat(s, lines[i]);
        free(lines[i]);
    }
    return s;
}

static void test_shards_merge_equal_unsharded(void **state) {
    (void)state;
    const char *m[] = {"alpha", "beta-wrong", "Gamma"};
    models("m11.json", m, 3);
    const char *all_args[] = {"--models", p("m11.json"),
                              "--suite",  p("suites/scorers"),
                              "--suite",  p("suites/plain"),
                              "--out",    p("out11"),
                              "--run-id", "full",
                              NULL};
    run_cli(false, all_args);
    int sizes[3];
    for (int k = 1; k <= 3; k++) {
        char shard[16], id[24];
        snprintf(shard, sizeof shard, "%d/3", k);
        snprintf(id, sizeof id, "shard%d", k);
        const char *args[] = {"--models", p("m11.json"),
                              "--suite",  p("suites/scorers"),
                              "--suite",  p("suites/plain"),
                              "--out",    p("out11"),
                              "--shard",  shard,
                              "--run-id", id,
                              NULL};
        run_cli(false, args);
        char dir[64];
        snprintf(dir, sizeof dir, "out11/%s", id);
        cJSON *recs;
        vlm_err e;
        assert_int_equal(tester_results_read(p(dir), &recs, &e), VLM_OK);
        sizes[k - 1] = count_recs(recs, "case", NULL, NULL);
        cJSON_Delete(recs);
    }
    /* 3 models x 12 cases, split three ways with nothing lost or doubled. */
    assert_int_equal(sizes[0] + sizes[1] + sizes[2], 36);
    for (int k = 0; k < 3; k++) assert_true(sizes[k] > 0 && sizes[k] < 36);
    char *argv[] = {"merge",
                    (char *)p("out11/shard1"),
                    (char *)p("out11/shard2"),
                    (char *)p("out11/shard3"),
                    "--out",
                    (char *)p("merged11"),
                    NULL};
    /* p() rotates 8 buffers; the 5 above are distinct. */
    assert_int_equal(tester_cmd_merge(6, argv), 0);
    char *a = case_fingerprint(p("out11/full"));
    char *b = case_fingerprint(p("merged11"));
    assert_string_equal(a, b);
    free(a);
    free(b);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "test -s '%s/report.html' && test -s '%s/report.json'", p("merged11"),
             p("merged11"));
    assert_int_equal(system(cmd), 0);
    /* Merging into a folder that has results is refused. */
    assert_int_equal(tester_cmd_merge(6, argv), 2);
}

/* The parent is killed with SIGKILL mid-run; --resume finishes the run with
 * every case recorded exactly once. */
static void test_resume_after_kill9(void **state) {
    (void)state;
    put("suites/many/suite.json", "{\"name\":\"many\"}");
    char cases[8192] = "";
    for (int i = 0; i < 10; i++) {
        size_t l = strlen(cases);
        snprintf(cases + l, sizeof cases - l,
                 "{\"id\":\"c%02d\",\"prompt\":\"SLEEP:0.15 ECHO:v%d\",\"expected\":\"v%d\","
                 "\"scorer\":\"exact\"}\n",
                 i, i, i);
    }
    put("suites/many/cases.jsonl", cases);
    const char *m[] = {"first", "second"};
    models("m12.json", m, 2);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        execl("/proc/self/exe", "test_tester_run", "--as-cli", "run", "--models", p("m12.json"),
              "--suite", p("suites/many"), "--out", p("out12"), "--run-id", "killed", (char *)NULL);
        _exit(127);
    }
    /* Wait until some cases are recorded, then kill the parent outright. */
    int lines = 0;
    for (int tries = 0; tries < 1500 && lines < 5; tries++) {
        usleep(20000);
        size_t len = 0;
        char *t = tu_read_file(p("out12/killed/results.jsonl"), &len);
        lines = 0;
        for (size_t i = 0; t && i < len; i++) lines += t[i] == '\n';
        free(t);
    }
    assert_true(lines >= 5);
    kill(pid, SIGKILL);
    int ws;
    waitpid(pid, &ws, 0);
    assert_true(WIFSIGNALED(ws));
    size_t len0 = 0;
    char *before = tu_read_file(p("out12/killed/results.jsonl"), &len0);
    int cases_before = 0;
    for (char *q = before; (q = strstr(q, "\"type\":\"case\"")); q++) cases_before++;
    free(before);
    assert_true(cases_before < 20);
    const char *args[] = {"--models",       p("m12.json"), "--suite",
                          p("suites/many"), "--out",       p("out12"),
                          "--resume",       "killed",      NULL};
    assert_int_equal(run_cli(false, args), 0);
    cJSON *all;
    vlm_err e;
    assert_int_equal(tester_results_read(p("out12/killed"), &all, &e), VLM_OK);
    assert_int_equal(count_recs(all, "case", NULL, NULL), 20);
    for (int mi = 0; mi < 2; mi++)
        for (int i = 0; i < 10; i++) {
            char id[16];
            snprintf(id, sizeof id, "c%02d", i);
            const char *model = mi ? "second" : "first";
            assert_non_null(find_rec(all, "case", model, id, 0));
            assert_null(find_rec(all, "case", model, id, 1)); /* not duplicated */
            char want[16];
            snprintf(want, sizeof want, "v%d", i);
            assert_string_equal(s_at(find_rec(all, "case", model, id, 0), "answer"), want);
        }
    cJSON_Delete(all);
}

/* A long sweep keeps its model record and report.html bounded. */
static void test_long_sweep_bounded(void **state) {
    (void)state;
    enum { N = 1500 };
    char *cases = malloc(N * 96);
    size_t l = 0;
    for (int i = 0; i < N; i++)
        l += (size_t)snprintf(cases + l, 96,
                              "{\"id\":\"c%d\",\"prompt\":\"ECHO:x\",\"expected\":\"x\","
                              "\"scorer\":\"exact\"}\n",
                              i);
    put("suites/long/suite.json", "{\"name\":\"long\"}");
    put("suites/long/cases.jsonl", cases);
    free(cases);
    const char *m[] = {"m"};
    models("m14.json", m, 1);
    const char *args[] = {"--models",       p("m14.json"), "--suite",
                          p("suites/long"), "--out",       p("out14"),
                          "--run-id",       "r",           NULL};
    assert_int_equal(run_cli(false, args), 0);
    cJSON *all = records_of(p("out14"));
    assert_int_equal(count_recs(all, "case", "m", "ok"), N);
    const cJSON *tl = cJSON_GetObjectItem(find_rec(all, "model", "m", NULL, 0), "timeline");
    int n_ev = cJSON_GetArraySize(cJSON_GetObjectItem(tl, "events"));
    assert_true(n_ev > 500 && n_ev <= 1010);
    cJSON_Delete(all);
    struct stat sb;
    assert_int_equal(stat(p("out14/r/report.html"), &sb), 0);
    assert_true(sb.st_size < 100 * 1024);
}

/* The RSS readings the measurements rest on. */
static void test_memprobe(void **state) {
    (void)state;
    uint64_t rss0, hwm0, rss1, hwm1, rss2, hwm2;
    assert_true(memprobe_read(0, &rss0, &hwm0));
    assert_true(rss0 > 0 && hwm0 >= rss0);
    /* mmap, not malloc: the sanitizer's allocator would keep freed memory. */
    size_t n = 64u << 20;
    char *b = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(b != MAP_FAILED);
    memset(b, 7, n);
    assert_true(memprobe_read(getpid(), &rss1, &hwm1));
    assert_true(rss1 >= rss0 + n / 2);
    munmap(b, n);
    /* A case's scope (as the worker opens one) starts a new peak window. */
    vlm_mem_scope sc;
    vlm_mem_scope_begin(&sc, "case");
    assert_true(memprobe_read(0, &rss2, &hwm2));
    vlm_mem_scope_result r;
    vlm_mem_scope_end(&sc, &r);
    assert_true(hwm2 < hwm1); /* the window starts again below the old peak */
    assert_true(r.rss_peak < hwm1);
    assert_true(memprobe_cgroup_oom_kills() >= -1);
    assert_false(memprobe_read(999999999, &rss2, NULL)); /* no such process */
    assert_true(memprobe_global_oom_kills() >= 0);
}

static int memcheck(const char *name, const char *models_rel) {
    char *argv[] = {"memcheck", (char *)name, "--models", (char *)p(models_rel), NULL};
    return tester_cmd_memcheck(4, argv, &test_backend);
}

static void test_memcheck_pass_and_leak(void **state) {
    (void)state;
    const char *m[] = {"tidy", "leaky|{\"test_crash\":\"leak_bytes\",\"test_leak_bytes\":\"96M\"}",
                       "crashy|{\"test_crash\":\"abort\"}"};
    models("m13.json", m, 3);
    assert_int_equal(memcheck("TIDY", "m13.json"), 0);
    assert_int_equal(memcheck("leaky", "m13.json"), 1);
    assert_int_equal(memcheck("crashy", "m13.json"), 1);
    assert_int_equal(memcheck("nosuch", "m13.json"), 2);
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--as-cli") == 0) {
        const char *cmd = argv[2];
        if (strcmp(cmd, "run") == 0)
            return tester_cmd_run(argc - 2, argv + 2, &test_backend, false);
        if (strcmp(cmd, "context") == 0)
            return tester_cmd_run(argc - 2, argv + 2, &test_backend, true);
        if (strcmp(cmd, "memcheck") == 0)
            return tester_cmd_memcheck(argc - 2, argv + 2, &test_backend);
        if (strcmp(cmd, "merge") == 0) return tester_cmd_merge(argc - 2, argv + 2);
        fprintf(stderr, "unknown command %s\n", cmd);
        return 2;
    }
    /* TESTER_ONLY / TESTER_SKIP = pattern: run or skip matching tests (debugging). */
    if (getenv("TESTER_ONLY")) cmocka_set_test_filter(getenv("TESTER_ONLY"));
    if (getenv("TESTER_SKIP")) cmocka_set_skip_filter(getenv("TESTER_SKIP"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_scorer_pass_and_fail),
        cmocka_unit_test(test_report_alloc_failures),
        cmocka_unit_test(test_report_per_tag),
        cmocka_unit_test(test_name_selection_case_insensitive),
        cmocka_unit_test(test_bad_input_before_any_model),
        cmocka_unit_test(test_crash_recorded_next_model_runs),
        cmocka_unit_test(test_crash_in_case_keeps_last_sample),
        cmocka_unit_test(test_oom_kill_over_mem_limit),
        cmocka_unit_test(test_case_and_model_timeouts),
        cmocka_unit_test(test_retry_fallback),
        cmocka_unit_test(test_load_error),
        cmocka_unit_test(test_device_fields),
        cmocka_unit_test(test_context_three_turns),
        cmocka_unit_test(test_shards_merge_equal_unsharded),
        cmocka_unit_test(test_resume_after_kill9),
        cmocka_unit_test(test_memcheck_pass_and_leak),
        cmocka_unit_test(test_memprobe),
        cmocka_unit_test(test_long_sweep_bounded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
