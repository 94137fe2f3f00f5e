/* tester/score: every scorer with a passing and a failing answer, the
 * normalisation, the extraction of choice letters and numbers, and the spec
 * errors a suite author can make. */
#include "testutil.h"

#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "tester/score.h"

/* Parse a spec from JSON text, score answer, return the verdict. */
static bool judge(const char *spec_json, const char *answer) {
    cJSON *j;
    vlm_err e;
    assert_int_equal(vlm_json_parse(spec_json, strlen(spec_json), "spec", &j, &e), VLM_OK);
    tester_score_spec s;
    vlm_status st = tester_score_spec_parse(j, "spec", &s, &e);
    if (st) fail_msg("spec %s: %s", spec_json, e.msg);
    bool pass = false;
    char why[256];
    assert_int_equal(tester_score(&s, answer, &pass, why, sizeof why, &e), VLM_OK);
    if (!pass) assert_true(why[0] != '\0'); /* a failure always says why */
    tester_score_spec_free(&s);
    cJSON_Delete(j);
    return pass;
}

static vlm_status parse_err(const char *spec_json, char *msg, size_t size) {
    cJSON *j;
    vlm_err e;
    assert_int_equal(vlm_json_parse(spec_json, strlen(spec_json), "spec", &j, &e), VLM_OK);
    tester_score_spec s;
    vlm_status st = tester_score_spec_parse(j, "cases.jsonl:7", &s, &e);
    if (st == VLM_OK)
        tester_score_spec_free(&s);
    else
        snprintf(msg, size, "%s", e.msg);
    cJSON_Delete(j);
    return st;
}

static void test_normalize(void **state) {
    (void)state;
    char *n = tester_normalize("  Hello,   WORLD!\n\tÉté… ");
    assert_non_null(n);
    assert_string_equal(n, "hello world été");
    vlm_free(n);
    n = tester_normalize("");
    assert_string_equal(n, "");
    vlm_free(n);
}

static void test_exact(void **state) {
    (void)state;
    assert_true(judge("{\"scorer\":\"exact\",\"expected\":\"Paris\"}", "paris."));
    assert_true(judge("{\"scorer\":\"exact\",\"expected\":\"New York\"}", "  new   york!"));
    assert_true(judge("{\"scorer\":\"exact\",\"expected\":[\"cat\",\"kitten\"]}", "Kitten"));
    assert_false(judge("{\"scorer\":\"exact\",\"expected\":\"Paris\"}", "Paris, France"));
    assert_false(judge("{\"scorer\":\"exact\",\"expected\":\"Paris\"}", ""));
}

static void test_contains(void **state) {
    (void)state;
    assert_true(
        judge("{\"scorer\":\"contains\",\"expected\":\"red car\"}", "I see a RED car, parked."));
    assert_false(judge("{\"scorer\":\"contains\",\"expected\":\"red car\"}", "a blue car"));
}

static void test_contains_all_any_not(void **state) {
    (void)state;
    const char *all = "{\"scorer\":\"contains_all\",\"expected\":[\"dog\",\"ball\"]}";
    assert_true(judge(all, "The dog chases a ball."));
    assert_false(judge(all, "The dog sleeps."));
    const char *any = "{\"scorer\":\"contains_any\",\"expected\":[\"dog\",\"puppy\"]}";
    assert_true(judge(any, "A puppy!"));
    assert_false(judge(any, "A cat."));
    const char *not = "{\"scorer\":\"not_contains\",\"expected\":[\"sorry\",\"cannot\"]}";
    assert_true(judge(not, "It is a cat."));
    assert_false(judge(not, "Sorry, I cannot see images."));
    assert_false(judge("{\"scorer\":\"not_contains\",\"expected\":\"cat\"}", "a CAT"));
}

static void test_regex(void **state) {
    (void)state;
    const char *re = "{\"scorer\":\"regex\",\"expected\":\"^\\\\d{3}-\\\\d{4}$\"}";
    assert_true(judge(re, "555-1234"));
    assert_false(judge(re, "call 555-1234"));
    assert_true(judge("{\"scorer\":\"regex\",\"expected\":\"(?i)\\\\bstop sign\\\\b\"}",
                      "That is a Stop Sign."));
}

static void test_choice(void **state) {
    (void)state;
    const char *c = "{\"scorer\":\"choice\",\"expected\":\"B\"}";
    assert_true(judge(c, "B"));
    assert_true(judge(c, "(B)"));
    assert_true(judge(c, "b."));
    assert_true(judge(c, "The answer is B because the sky is blue."));
    assert_true(judge(c, "B. The second option"));
    assert_false(judge(c, "C"));
    assert_false(judge(c, "A dog is in the picture.")); /* no letter named */
    assert_false(judge(c, "(A) or (B)"));               /* ambiguous */
    const char *opts = "{\"scorer\":\"choice\",\"expected\":\"C\","
                       "\"options\":[\"a cat\",\"a dog\",\"a red bird\",\"a fish\"]}";
    assert_true(judge(opts, "It looks like a red bird to me."));
    assert_false(judge(opts, "It looks like a dog."));
    const char *obj = "{\"scorer\":\"choice\",\"expected\":\"A\",\"options\":{\"A\":\"yes\","
                      "\"B\":\"no\"}}";
    assert_true(judge(obj, "Answer: A"));
}

static void test_number(void **state) {
    (void)state;
    const char *n = "{\"scorer\":\"number\",\"expected\":3}";
    assert_true(judge(n, "There are 3 cats."));
    assert_true(judge(n, "Three."));
    assert_false(judge(n, "There are 4 cats."));
    assert_false(judge(n, "Several cats."));
    const char *t = "{\"scorer\":\"number\",\"expected\":1234.5,\"tolerance\":0.6}";
    assert_true(judge(t, "about 1,234 dollars"));
    assert_false(judge(t, "about 1,233 dollars"));
    assert_true(judge("{\"scorer\":\"number\",\"expected\":-2.5}", "It is -2.5 degrees"));
    double v;
    assert_true(tester_number_extract("x = .5", &v));
    assert_true(v == 0.5);
}

static void test_yes_no(void **state) {
    (void)state;
    const char *y = "{\"scorer\":\"yes_no\",\"expected\":\"yes\"}";
    assert_true(judge(y, "Yes, there is a cat."));
    assert_false(judge(y, "No."));
    assert_false(judge(y, "Maybe."));
    assert_true(judge("{\"scorer\":\"yes_no\",\"expected\":false}", "I think the answer is no."));
    assert_false(judge("{\"scorer\":\"yes_no\",\"expected\":\"no\"}", "Nothing is there, yes."));
}

static void test_spec_errors(void **state) {
    (void)state;
    char msg[600];
    assert_int_equal(parse_err("{\"scorer\":\"fuzzy\",\"expected\":\"x\"}", msg, sizeof msg),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "cases.jsonl:7"));
    assert_non_null(strstr(msg, "unknown scorer \"fuzzy\""));
    assert_int_equal(parse_err("{\"expected\":\"x\"}", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "missing \"scorer\""));
    assert_int_equal(
        parse_err("{\"scorer\":\"regex\",\"expected\":\"(unclosed\"}", msg, sizeof msg),
        VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "bad pattern"));
    assert_int_equal(parse_err("{\"scorer\":\"number\",\"expected\":\"three\"}", msg, sizeof msg),
                     VLM_ERR_FORMAT);
    assert_int_equal(parse_err("{\"scorer\":\"choice\",\"expected\":\"E\"}", msg, sizeof msg),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "not among"));
    assert_int_equal(parse_err("{\"scorer\":\"contains_all\",\"expected\":\"x\"}", msg, sizeof msg),
                     VLM_ERR_FORMAT);
    assert_int_equal(parse_err("{\"scorer\":\"yes_no\",\"expected\":\"maybe\"}", msg, sizeof msg),
                     VLM_ERR_FORMAT);
    assert_int_equal(parse_err("{\"scorer\":\"exact\"}", msg, sizeof msg), VLM_ERR_FORMAT);
    assert_non_null(strstr(msg, "missing \"expected\""));
    assert_int_equal(parse_err("{\"scorer\":\"exact\",\"expected\":\"\"}", msg, sizeof msg),
                     VLM_ERR_FORMAT);
}

/* Every allocation failure while parsing and scoring gives a clean error. */
static void test_alloc_failures(void **state) {
    (void)state;
    const char *spec = "{\"scorer\":\"contains_all\",\"expected\":[\"dog\",\"ball\",\"red\"]}";
    cJSON *j;
    vlm_err e;
    assert_int_equal(vlm_json_parse(spec, strlen(spec), "spec", &j, &e), VLM_OK);
    for (uint64_t n = 1; n < 200; n++) {
        vlm_mem_stats m0, m1;
        vlm_alloc_get_stats(&m0);
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        tester_score_spec s;
        vlm_status st = tester_score_spec_parse(j, "spec", &s, &e);
        bool pass = false;
        if (st == VLM_OK) {
            st = tester_score(&s, "A red dog and a ball", &pass, NULL, 0, &e);
            tester_score_spec_free(&s);
        }
        vlm_alloc_fail_at(0, false);
        assert_true(st == VLM_OK || st == VLM_ERR_NOMEM);
        vlm_alloc_get_stats(&m1);
        assert_int_equal(m1.live_blocks, m0.live_blocks);
        if (st == VLM_OK) assert_true(pass);
    }
    cJSON_Delete(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalize),   cmocka_unit_test(test_exact),
        cmocka_unit_test(test_contains),    cmocka_unit_test(test_contains_all_any_not),
        cmocka_unit_test(test_regex),       cmocka_unit_test(test_choice),
        cmocka_unit_test(test_number),      cmocka_unit_test(test_yes_no),
        cmocka_unit_test(test_spec_errors), cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
