/* tester: suite and models-file validation (each bad input gives a clear
 * error naming the file, line or key), the results file (append, torn line,
 * resume set), run ids and shard selection. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/json.h"
#include "tester/models.h"
#include "tester/results.h"
#include "tester/suite.h"

static char *tmp;

static int setup(void **state) {
    (void)state;
    tmp = tu_mkdtemp();
    return tmp ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    tu_rmtree(tmp);
    free(tmp);
    return 0;
}

static const char *p(const char *rel) {
    static char bufs[4][1024];
    static int k;
    char *b = bufs[k++ & 3];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp, rel);
    return b;
}

static void put(const char *rel, const char *text) {
    const char *path = p(rel);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(tu_write_file(path, text, strlen(text)));
}

static const char *meta = "{\"name\":\"s\",\"defaults\":{\"max_tokens\":8}}";

/* Load suite folder rel; return the status and copy the message. */
static vlm_status load(const char *rel, char *msg, size_t size) {
    tester_suite *s = NULL;
    vlm_err e;
    vlm_err_clear(&e);
    vlm_status st = tester_suite_load(p(rel), &s, &e);
    snprintf(msg, size, "%s", e.msg);
    tester_suite_free(s);
    return st;
}

static void test_suite_ok(void **state) {
    (void)state;
    put("ok/suite.json", meta);
    put("ok/img/a.png", "not really a png; only existence is checked here");
    put("ok/cases.jsonl",
        "{\"id\":\"c1\",\"images\":[\"img/a.png\"],\"prompt\":\"What?\",\"expected\":\"cat\","
        "\"scorer\":\"contains\",\"tags\":[\"animals\"]}\n"
        "\n"
        "{\"id\":\"c2\",\"prompt\":\"How many?\",\"expected\":2,\"scorer\":\"number\","
        "\"tolerance\":0}\n");
    tester_suite *s;
    vlm_err e;
    assert_int_equal(tester_suite_load(p("ok"), &s, &e), VLM_OK);
    assert_string_equal(s->name, "s");
    assert_int_equal(s->n_cases, 2);
    assert_int_equal(s->max_tokens, 8);
    assert_int_equal(s->cases[0].n_turns, 1);
    assert_int_equal(s->cases[0].turns[0].n_images, 1);
    assert_string_equal(s->cases[0].turns[0].images[0], p("ok/img/a.png"));
    assert_int_equal(s->cases[1].line, 3);
    assert_int_equal(s->cases[1].turns[0].score.kind, TESTER_SC_NUMBER);
    tester_suite_free(s);
}

static void test_suite_malformed_line(void **state) {
    (void)state;
    char msg[600];
    put("bad1/suite.json", meta);
    put("bad1/cases.jsonl",
        "{\"id\":\"c1\",\"prompt\":\"x\",\"expected\":\"y\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"c2\",\"prompt\":\"x\" \"expected\":\"y\"}\n");
    assert_int_equal(load("bad1", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "cases.jsonl:2"));
    assert_non_null(strstr(msg, "malformed JSON"));
}

static void test_suite_missing_image(void **state) {
    (void)state;
    char msg[600];
    put("bad2/suite.json", meta);
    put("bad2/cases.jsonl", "{\"id\":\"c1\",\"images\":[\"nope.jpg\"],\"prompt\":\"x\","
                            "\"expected\":\"y\",\"scorer\":\"exact\"}\n");
    assert_int_equal(load("bad2", msg, sizeof msg), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(msg, "cases.jsonl:1"));
    assert_non_null(strstr(msg, "image \"nope.jpg\" not found"));
}

static void test_suite_unknown_scorer(void **state) {
    (void)state;
    char msg[600];
    put("bad3/suite.json", meta);
    put("bad3/cases.jsonl",
        "{\"id\":\"c1\",\"prompt\":\"x\",\"expected\":\"y\",\"scorer\":\"fuzzy\"}\n");
    assert_int_equal(load("bad3", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "cases.jsonl:1"));
    assert_non_null(strstr(msg, "unknown scorer \"fuzzy\""));
}

static void test_suite_duplicate_id(void **state) {
    (void)state;
    char msg[600];
    put("bad4/suite.json", meta);
    put("bad4/cases.jsonl",
        "{\"id\":\"c1\",\"prompt\":\"x\",\"expected\":\"y\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"c2\",\"prompt\":\"x\",\"expected\":\"y\",\"scorer\":\"exact\"}\n"
        "{\"id\":\"c1\",\"prompt\":\"z\",\"expected\":\"y\",\"scorer\":\"exact\"}\n");
    assert_int_equal(load("bad4", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "cases.jsonl:3"));
    assert_non_null(strstr(msg, "duplicate case id \"c1\" (first on line 1)"));
}

static void test_suite_empty(void **state) {
    (void)state;
    char msg[600];
    put("bad5/suite.json", meta);
    put("bad5/cases.jsonl", "\n   \n");
    assert_int_equal(load("bad5", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "no cases"));
    put("bad5b/suite.json", meta);
    assert_int_equal(load("bad5b", msg, sizeof msg), VLM_ERR_NOT_FOUND); /* no cases.jsonl */
    assert_non_null(strstr(msg, "cases.jsonl"));
    assert_int_equal(load("does-not-exist", msg, sizeof msg), VLM_ERR_NOT_FOUND);
}

static void test_suite_other_errors(void **state) {
    (void)state;
    char msg[600];
    put("bad6/suite.json", "{\"name\":\"s\",\"kind\":\"chatty\"}");
    put("bad6/cases.jsonl",
        "{\"id\":\"c1\",\"prompt\":\"x\",\"expected\":\"y\",\"scorer\":\"exact\"}\n");
    assert_int_equal(load("bad6", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "\"kind\""));
    put("bad7/suite.json", meta);
    put("bad7/cases.jsonl",
        "{\"id\":\"c1\",\"prompt\":\"x\",\"expectd\":\"y\",\"scorer\":\"exact\"}\n");
    assert_int_equal(load("bad7", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "unknown key \"expectd\""));
    put("bad8/suite.json", meta);
    put("bad8/cases.jsonl", "[1,2]\n");
    assert_int_equal(load("bad8", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "cases.jsonl:1"));
}

static void test_context_suite(void **state) {
    (void)state;
    char msg[600];
    put("ctx/suite.json", "{\"name\":\"ctx\",\"kind\":\"context\"}");
    put("ctx/cases.jsonl",
        "{\"id\":\"conv1\",\"turns\":[{\"prompt\":\"Remember blue.\"},"
        "{\"prompt\":\"What colour?\",\"expected\":\"blue\",\"scorer\":\"contains\"},"
        "{\"prompt\":\"Count?\",\"expected\":3,\"scorer\":\"number\"}]}\n");
    tester_suite *s;
    vlm_err e;
    assert_int_equal(tester_suite_load(p("ctx"), &s, &e), VLM_OK);
    assert_true(s->context);
    assert_int_equal(s->cases[0].n_turns, 3);
    assert_false(s->cases[0].turns[0].scored);
    assert_true(s->cases[0].turns[1].scored);
    tester_suite_free(s);
    put("ctx2/suite.json", "{\"name\":\"ctx2\",\"kind\":\"context\"}");
    put("ctx2/cases.jsonl", "{\"id\":\"c\",\"turns\":[{\"prompt\":\"a\"},{\"prompt\":\"b\","
                            "\"expected\":\"x\",\"scorer\":\"nope\"}]}\n");
    assert_int_equal(load("ctx2", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "cases.jsonl:1: turn 2"));
    put("ctx3/suite.json", "{\"name\":\"ctx3\",\"kind\":\"context\"}");
    put("ctx3/cases.jsonl", "{\"id\":\"c\",\"turns\":[{\"prompt\":\"a\"}]}\n");
    assert_int_equal(load("ctx3", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "no turn has a scorer"));
    /* A single-turn suite given to `context` (and the reverse) is refused. */
    tester_suite **v;
    const char *dirs[] = {p("ok")};
    assert_int_equal(tester_suites_load(dirs, 1, true, &v, &e), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(e.msg, "vlmtest run"));
}

/* --- models file --------------------------------------------------------- */

static vlm_status load_models(const char *json, char *msg, size_t size, tester_models **out) {
    put("models.json", json);
    tester_models *m = NULL;
    vlm_err e;
    vlm_err_clear(&e);
    vlm_status st = tester_models_load(p("models.json"), &m, &e);
    snprintf(msg, size, "%s", e.msg);
    if (out)
        *out = m;
    else
        tester_models_free(m);
    return st;
}

static void test_models_file(void **state) {
    (void)state;
    char msg[600];
    put("m/a/config.json", "{}");
    tester_models *m;
    assert_int_equal(load_models("{\"models\":[{\"name\":\"Phi-3.5-Vision-Instruct\","
                                 "\"source\":\"m/a\",\"options\":{\"device\":\"cpu\","
                                 "\"precision\":\"bf16\",\"num_crops\":4,\"max_context\":2048,"
                                 "\"mem_budget\":\"1.5G\",\"test_crash\":\"abort\"}},"
                                 "{\"name\":\"second\",\"source\":\"m/a\"}]}",
                                 msg, sizeof msg, &m),
                     VLM_OK);
    assert_int_equal(m->n, 2);
    assert_int_equal(tester_models_find(m, "phi-3.5-vision-instruct"), 0);
    assert_int_equal(tester_models_find(m, "SECOND"), 1);
    assert_int_equal(tester_models_find(m, "third"), -1);
    assert_string_equal(m->models[0].opts.device, "cpu");
    assert_int_equal(m->models[0].opts.num_crops, 4);
    assert_true(m->models[0].opts.mem_budget == 1610612736ull);
    assert_int_equal(m->models[0].opts.test_crash, TESTER_CRASH_ABORT);
    assert_string_equal(m->models[1].opts.device, "auto");
    assert_true(m->models[0].is_path);
    tester_models_free(m);

    assert_int_equal(load_models("{\"models\":[{\"name\":\"x\",\"source\":\"m/nowhere\"}]}", msg,
                                 sizeof msg, NULL),
                     VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(msg, "source \"m/nowhere\" not found"));
    setenv("HF_HUB_CACHE", p("hfcache"), 1);
    assert_int_equal(load_models("{\"models\":[{\"name\":\"x\",\"source\":\"org/model@main\"}]}",
                                 msg, sizeof msg, NULL),
                     VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(msg, "Hugging Face cache"));
    put("hfcache/models--org--model/refs/main", "abc");
    assert_int_equal(load_models("{\"models\":[{\"name\":\"x\",\"source\":\"org/model@main\"}]}",
                                 msg, sizeof msg, NULL),
                     VLM_OK);
    unsetenv("HF_HUB_CACHE");
    assert_int_equal(load_models("{\"models\":[{\"name\":\"A\",\"source\":\"m/a\"},"
                                 "{\"name\":\"a\",\"source\":\"m/a\"}]}",
                                 msg, sizeof msg, NULL),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "used twice"));
    assert_int_equal(load_models("{\"models\":[{\"name\":\"a\",\"source\":\"m/a\","
                                 "\"options\":{\"num_crop\":4}}]}",
                                 msg, sizeof msg, NULL),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "unknown option \"num_crop\""));
    assert_int_equal(load_models("{\"models\":[{\"name\":\"a\",\"source\":\"m/a\","
                                 "\"options\":{\"device\":\"tpu\"}}]}",
                                 msg, sizeof msg, NULL),
                     VLM_ERR_FORMAT);
    assert_int_equal(load_models("{\"models\":[{\"name\":\"a\",\"source\":\"m/a\","
                                 "\"options\":{\"test_crash\":\"explode\"}}]}",
                                 msg, sizeof msg, NULL),
                     VLM_ERR_FORMAT);
    assert_int_equal(load_models("{\"models\":[{\"name\":\"a\",\"source\":\"m/a\","
                                 "\"options\":{\"mem_budget\":\"lots\"}}]}",
                                 msg, sizeof msg, NULL),
                     VLM_ERR_FORMAT);
    assert_int_equal(load_models("{\"models\":[]}", msg, sizeof msg, NULL), VLM_ERR_FORMAT);
    assert_int_equal(load_models("{\"models\":[{\"name\":\"a\"}]}", msg, sizeof msg, NULL),
                     VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(msg, "source"));
    assert_int_equal(load_models("{\"models\":[ {\"name\":", msg, sizeof msg, NULL),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "models.json"));
    tester_models *none;
    vlm_err e;
    assert_int_equal(tester_models_load(p("no-such.json"), &none, &e), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(e.msg, "models file not found"));
}

/* --- results ------------------------------------------------------------- */

static cJSON *case_rec(const char *model, const char *suite, const char *id) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "type", "case");
    cJSON_AddStringToObject(r, "model", model);
    cJSON_AddStringToObject(r, "suite", suite);
    cJSON_AddStringToObject(r, "case_id", id);
    return r;
}

static void test_results_append_resume(void **state) {
    (void)state;
    vlm_json_init();
    tester_results *r;
    vlm_err e;
    assert_int_equal(tester_results_open(p("res"), "run1", false, &r, &e), VLM_OK);
    for (int i = 0; i < 3; i++) {
        char id[24];
        snprintf(id, sizeof id, "c%d", i);
        cJSON *c = case_rec("Model", "s", id);
        assert_int_equal(tester_results_append(r, c, &e), VLM_OK);
        cJSON_Delete(c);
    }
    tester_results_close(r);
    /* A second open without resume refuses to overwrite. */
    assert_int_equal(tester_results_open(p("res"), "run1", false, &r, &e), VLM_ERR_INVALID_ARG);
    assert_int_equal(tester_results_open(p("res"), "nope", true, &r, &e), VLM_ERR_NOT_FOUND);
    /* A killed writer left half a line. */
    FILE *f = fopen(p("res/run1/results.jsonl"), "a");
    fputs("{\"type\":\"case\",\"model\":\"Model\",\"suite\":\"s\",\"case_id\":\"c3\",\"answ", f);
    fclose(f);
    assert_int_equal(tester_results_open(p("res"), "run1", true, &r, &e), VLM_OK);
    assert_int_equal(r->n_done, 3);
    assert_true(tester_results_has_case(r, "MODEL", "s", "c0")); /* model names ignore case */
    assert_true(tester_results_has_case(r, "Model", "s", "c2"));
    assert_false(tester_results_has_case(r, "Model", "s", "c3"));
    assert_false(tester_results_has_case(r, "Model", "t", "c0"));
    cJSON *c = case_rec("Model", "s", "c3");
    assert_int_equal(tester_results_append(r, c, &e), VLM_OK);
    cJSON_Delete(c);
    tester_results_close(r);
    cJSON *all;
    assert_int_equal(tester_results_read(p("res/run1"), &all, &e), VLM_OK);
    assert_int_equal(cJSON_GetArraySize(all), 4); /* the torn line is gone, not glued */
    cJSON_Delete(all);
    /* A bad line that is not the last is an error naming file:line. */
    put("res/bad/results.jsonl", "{\"type\":\"case\"}\nnot json\n{}\n");
    assert_int_equal(tester_results_read(p("res/bad"), &all, &e), VLM_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "results.jsonl:2"));
}

static void test_records_dedupe(void **state) {
    (void)state;
    vlm_json_init();
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, case_rec("m", "s", "1"));
    cJSON *model = cJSON_CreateObject();
    cJSON_AddStringToObject(model, "type", "model");
    cJSON_AddItemToArray(a, model);
    cJSON_AddItemToArray(a, case_rec("m", "s", "2"));
    cJSON *late = case_rec("M", "s", "1");
    cJSON_AddStringToObject(late, "answer", "late");
    cJSON_AddItemToArray(a, late);
    vlm_err e;
    assert_int_equal(tester_records_dedupe(a, &e), VLM_OK);
    assert_int_equal(cJSON_GetArraySize(a), 3);
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 2), "answer")), "late");
    cJSON_Delete(a);
}

static void test_run_ids_sort_by_time(void **state) {
    (void)state;
    char a[64], b[64];
    tester_run_id_new(a, sizeof a);
    usleep(1100 * 1000);
    tester_run_id_new(b, sizeof b);
    assert_true(strcmp(a, b) < 0);
    assert_int_equal(strlen(a), strlen(b));
}

static void test_shards(void **state) {
    (void)state;
    int k, n;
    assert_true(tester_shard_parse("2/3", &k, &n));
    assert_int_equal(k, 2);
    assert_int_equal(n, 3);
    assert_false(tester_shard_parse("0/3", &k, &n));
    assert_false(tester_shard_parse("4/3", &k, &n));
    assert_false(tester_shard_parse("1/", &k, &n));
    assert_false(tester_shard_parse("a/b", &k, &n));
    /* Each case is in exactly one shard, and the split is not lopsided. */
    int counts[3] = {0};
    for (int i = 0; i < 300; i++) {
        char id[24];
        snprintf(id, sizeof id, "case-%d", i);
        int hits = 0;
        for (int s = 1; s <= 3; s++)
            if (tester_shard_pick("Model", "suite", id, s, 3)) {
                hits++;
                counts[s - 1]++;
            }
        assert_int_equal(hits, 1);
        /* The model name's case does not move a case between shards. */
        for (int s = 1; s <= 3; s++)
            assert_int_equal(tester_shard_pick("Model", "suite", id, s, 3),
                             tester_shard_pick("MODEL", "suite", id, s, 3));
    }
    for (int s = 0; s < 3; s++) assert_true(counts[s] > 60);
    assert_true(tester_shard_pick("m", "s", "x", 1, 1));
}

static void test_parse_size(void **state) {
    (void)state;
    uint64_t v;
    assert_true(tester_parse_size("4096", &v) && v == 4096);
    assert_true(tester_parse_size("512M", &v) && v == 512ull << 20);
    assert_true(tester_parse_size("8GiB", &v) && v == 8ull << 30);
    assert_true(tester_parse_size("1.5G", &v) && v == 1610612736ull);
    assert_false(tester_parse_size("8X", &v));
    assert_false(tester_parse_size("", &v));
    assert_false(tester_parse_size("-1", &v));
}

/* The suites shipped in suites/ are valid. */
static void test_shipped_suites(void **state) {
    (void)state;
    const char *single[] = {tu_src("suites/colors")};
    tester_suite **v;
    vlm_err e;
    if (tester_suites_load(single, 1, false, &v, &e)) fail_msg("%s", e.msg);
    assert_int_equal(v[0]->n_cases, 9);
    /* One case per scorer. */
    bool seen[TESTER_SC_COUNT] = {false};
    for (size_t i = 0; i < v[0]->n_cases; i++) seen[v[0]->cases[i].turns[0].score.kind] = true;
    for (int k = 0; k < TESTER_SC_COUNT; k++) assert_true(seen[k]);
    tester_suites_free(v, 1);
    const char *ctx[] = {tu_src("suites/colors-context")};
    if (tester_suites_load(ctx, 1, true, &v, &e)) fail_msg("%s", e.msg);
    assert_int_equal(v[0]->cases[0].n_turns, 3);
    tester_suites_free(v, 1);
}

/* Every allocation failure while loading a suite, a models file, results
 * for resume and a report gives a clean VLM_ERR_NOMEM and leaks nothing
 * (the ASan build checks the leaks). */
static void test_alloc_failures(void **state) {
    (void)state;
    put("af/suite.json", "{\"name\":\"af\",\"kind\":\"context\"}");
    put("af/img.png", "png");
    put("af/cases.jsonl",
        "{\"id\":\"a\",\"turns\":[{\"images\":[\"img.png\"],\"prompt\":\"x\"},"
        "{\"prompt\":\"y\",\"expected\":[\"a\",\"b\"],\"scorer\":\"contains_all\"}]}\n"
        "{\"id\":\"b\",\"turns\":[{\"prompt\":\"x\",\"expected\":\"^a\",\"scorer\":\"regex\"}]}\n");
    put("af/w/m.gguf", "x");
    put("af/models.json", "{\"models\":[{\"name\":\"a\",\"source\":\"w\",\"options\":{"
                          "\"num_crops\":2}},{\"name\":\"b\",\"source\":\"w/m.gguf\"}]}");
    put("af/res/r/results.jsonl", "{\"type\":\"case\",\"model\":\"a\",\"suite\":\"s\","
                                  "\"case_id\":\"1\",\"passed\":true,\"status\":\"ok\"}\n"
                                  "{\"type\":\"model\",\"model\":\"a\",\"outcome\":\"ok\"}\n{\"ty");
    int ok = 0;
    for (uint64_t n = 1; n < 400; n++) {
        vlm_err e;
        vlm_mem_stats m0, m1;
        vlm_alloc_get_stats(&m0);
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        tester_suite *s = NULL;
        tester_models *m = NULL;
        tester_results *r = NULL;
        vlm_status st = tester_suite_load(p("af"), &s, &e);
        if (!st) st = tester_models_load(p("af/models.json"), &m, &e);
        if (!st) st = tester_results_open(p("af/res"), "r", true, &r, &e);
        vlm_alloc_fail_at(0, false);
        if (st != VLM_OK && st != VLM_ERR_NOMEM)
            fail_msg("fail at +%llu: %s", (unsigned long long)n, e.msg);
        if (st == VLM_OK) {
            assert_int_equal(s->n_cases, 2);
            assert_int_equal(m->n, 2);
            assert_int_equal(r->n_done, 1);
            ok++;
        }
        tester_results_close(r);
        tester_models_free(m);
        tester_suite_free(s);
        vlm_alloc_get_stats(&m1);
        if (m1.live_blocks != m0.live_blocks)
            fail_msg("fail at +%llu: %lld blocks leaked", (unsigned long long)n,
                     (long long)(m1.live_blocks - m0.live_blocks));
    }
    assert_true(ok > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_suite_ok),
        cmocka_unit_test(test_suite_malformed_line),
        cmocka_unit_test(test_suite_missing_image),
        cmocka_unit_test(test_suite_unknown_scorer),
        cmocka_unit_test(test_suite_duplicate_id),
        cmocka_unit_test(test_suite_empty),
        cmocka_unit_test(test_suite_other_errors),
        cmocka_unit_test(test_context_suite),
        cmocka_unit_test(test_models_file),
        cmocka_unit_test(test_results_append_resume),
        cmocka_unit_test(test_records_dedupe),
        cmocka_unit_test(test_run_ids_sort_by_time),
        cmocka_unit_test(test_shards),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_shipped_suites),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
