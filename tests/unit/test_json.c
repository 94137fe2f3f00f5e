/* base/json: the parse scope. A document of many nodes parsed inside a scope
 * costs a few chunk allocations instead of one per node, reads the same as
 * one parsed outside, and ending the scope returns every byte; scopes nest;
 * a failed chunk allocation fails the parse as out of memory, leaving
 * nothing behind. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"

/* {"k0": "v0", ..., "k{n-1}": [i, "s"]} style: n members, 4 allocations each
 * outside a scope (member node, key, array node + children). */
static char *make_doc(int n, size_t *len) {
    size_t cap = (size_t)n * 48 + 16;
    char *s = malloc(cap);
    size_t at = 0;
    at += (size_t)snprintf(s + at, cap - at, "{");
    for (int i = 0; i < n; i++)
        at += (size_t)snprintf(s + at, cap - at, "%s\"key%d\": [%d, \"val%d\"]", i ? "," : "", i, i,
                               i);
    at += (size_t)snprintf(s + at, cap - at, "}");
    *len = at;
    return s;
}

static void check_doc(const cJSON *root, int n) {
    assert_int_equal(cJSON_GetArraySize(root), n);
    char key[32], val[32];
    for (int i = 0; i < n; i += 997) {
        snprintf(key, sizeof key, "key%d", i);
        snprintf(val, sizeof val, "val%d", i);
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
        assert_non_null(a);
        assert_int_equal(cJSON_GetArrayItem(a, 0)->valueint, i);
        assert_string_equal(cJSON_GetArrayItem(a, 1)->valuestring, val);
    }
}

static void test_scope_parse(void **state) {
    (void)state;
    const int n = 20000;
    size_t len;
    char *doc = make_doc(n, &len);
    vlm_err err;
    vlm_mem_stats s0, s1;
    vlm_alloc_get_stats(&s0);

    /* outside a scope: one allocation per node or string */
    uint64_t c0 = vlm_alloc_count();
    cJSON *plain = NULL;
    assert_int_equal(vlm_json_parse(doc, len, "doc", &plain, &err), VLM_OK);
    uint64_t plain_allocs = vlm_alloc_count() - c0;
    assert_true(plain_allocs > (uint64_t)n * 4);
    check_doc(plain, n);

    /* inside: a few 1 MiB chunks, the same tree */
    vlm_json_scope sc;
    vlm_json_scope_begin(&sc, 0);
    c0 = vlm_alloc_count();
    cJSON *root = NULL;
    assert_int_equal(vlm_json_parse(doc, len, "doc", &root, &err), VLM_OK);
    uint64_t scoped_allocs = vlm_alloc_count() - c0;
    assert_int_equal(scoped_allocs, sc.n_chunks);
    assert_true(scoped_allocs >= 2 && scoped_allocs <= 16);
    check_doc(root, n);
    /* a tree made before the scope is freed for real inside it */
    cJSON_Delete(plain);
    cJSON_Delete(root); /* nothing: the scope frees it */
    vlm_json_scope_end(&sc);
    vlm_alloc_get_stats(&s1);
    /* every byte back: the plain tree and the chunks */
    assert_int_equal(s1.total_current, s0.total_current);
    assert_int_equal(s1.live_blocks, s0.live_blocks);
    free(doc);
}

static void test_scope_nested_and_big(void **state) {
    (void)state;
    vlm_mem_stats s0, s1;
    vlm_alloc_get_stats(&s0);
    vlm_json_scope outer, inner;
    vlm_json_scope_begin(&outer, 4096);
    vlm_err err;
    cJSON *a = NULL, *b = NULL;
    assert_int_equal(vlm_json_parse("{\"x\": [1, 2, 3]}", 16, "a", &a, &err), VLM_OK);
    vlm_json_scope_begin(&inner, 4096);
    /* a string longer than a chunk gets a chunk of its own */
    size_t big = 10000;
    char *doc = malloc(big + 8);
    doc[0] = '"';
    memset(doc + 1, 'z', big);
    doc[big + 1] = '"';
    assert_int_equal(vlm_json_parse(doc, big + 2, "b", &b, &err), VLM_OK);
    assert_int_equal(strlen(b->valuestring), big);
    assert_true(inner.n_chunks >= 2);
    /* deleting the outer scope's tree inside the inner scope is harmless */
    cJSON_Delete(a);
    vlm_json_scope_end(&inner);
    /* the outer scope serves again */
    uint64_t before = outer.n_chunks;
    assert_int_equal(vlm_json_parse("[true]", 6, "c", &a, &err), VLM_OK);
    assert_true(cJSON_IsTrue(cJSON_GetArrayItem(a, 0)));
    assert_true(outer.n_chunks == before);
    vlm_json_scope_end(&outer);
    vlm_alloc_get_stats(&s1);
    assert_int_equal(s1.total_current, s0.total_current);
    assert_int_equal(s1.live_blocks, s0.live_blocks);
    free(doc);
}

static void test_scope_alloc_failures(void **state) {
    (void)state;
    size_t len;
    char *doc = make_doc(30000, &len);
    int nomem = 0, ok = 0;
    for (uint64_t k = 1; k <= 40; k++) {
        vlm_mem_stats s0, s1;
        vlm_alloc_get_stats(&s0);
        vlm_json_scope sc;
        vlm_json_scope_begin(&sc, 0);
        cJSON *root = NULL;
        vlm_err err = {0};
        vlm_alloc_fail_at(vlm_alloc_count() + k, false);
        vlm_status st = vlm_json_parse(doc, len, "doc", &root, &err);
        vlm_alloc_fail_at(0, false);
        if (st == VLM_OK) {
            ok++;
            check_doc(root, 30000);
        } else {
            assert_int_equal(st, VLM_ERR_NOMEM);
            assert_non_null(strstr(err.msg, "doc: out of memory"));
            nomem++;
        }
        vlm_json_scope_end(&sc);
        vlm_alloc_get_stats(&s1);
        assert_int_equal(s1.total_current, s0.total_current);
        assert_int_equal(s1.live_blocks, s0.live_blocks);
    }
    /* 30,000 members need a few chunks: failing any of them is out of memory */
    assert_true(nomem >= 2);
    assert_true(ok >= 1);
    free(doc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scope_parse),
        cmocka_unit_test(test_scope_nested_and_big),
        cmocka_unit_test(test_scope_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
