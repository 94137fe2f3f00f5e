/* text/tokenizer against HF tokenizers 0.23 / transformers 5 on the
 * committed conformance corpus (fixtures made by reference/tokenizer_ref.py
 * on the GPU machine; see docs/tokenizer.md):
 *   tests/data/tokenizer/{phi3,bytelevel,metaspace}/expected.jsonl
 *   tests/data/tokenizer/{bytelevel,metaspace}/tokenizer.json
 *   tests/data/tokenizer/phi3/chat_expected.json
 * Every corpus line must give the reference ids (with and without special
 * tokens) and the reference decode (with and without skipping specials);
 * decode(encode(x)) == x wherever the reference round-trips. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "text/chat.h"
#include "text/tokenizer.h"

typedef struct lines {
    char *buf;
    size_t n;
    const char **s;
    size_t *len;
} lines;

/* Split on \n only; a final \n does not start another line (as the Python
 * reference and `vlmtest tokenize` do). */
static void read_lines(const char *path, lines *l) {
    size_t len;
    l->buf = tu_read_file(path, &len);
    if (!l->buf) fprintf(stderr, "missing %s\n", path);
    assert_non_null(l->buf);
    l->n = 0;
    for (size_t i = 0; i < len; i++)
        if (l->buf[i] == '\n') l->n++;
    if (len && l->buf[len - 1] != '\n') l->n++;
    l->s = calloc(l->n + 1, sizeof *l->s);
    l->len = calloc(l->n + 1, sizeof *l->len);
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= len && k < l->n; i++)
        if (i == len || l->buf[i] == '\n') {
            l->s[k] = l->buf + start;
            l->len[k++] = i - start;
            start = i + 1;
        }
}

static void free_lines(lines *l) {
    free(l->buf);
    free(l->s);
    free(l->len);
}

static bool ids_equal(const tok_ids *got, const cJSON *want) {
    if (!cJSON_IsArray(want) || (size_t)cJSON_GetArraySize(want) != got->n) return false;
    size_t i = 0;
    for (const cJSON *c = want->child; c; c = c->next, i++)
        if (!cJSON_IsNumber(c) || (int32_t)c->valuedouble != got->v[i]) return false;
    return true;
}

static bool hex_equal(const char *s, size_t n, const cJSON *hex) {
    if (!cJSON_IsString(hex) || strlen(hex->valuestring) != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex->valuestring + 2 * i, "%2x", &v) != 1 || (unsigned char)s[i] != v)
            return false;
    }
    return true;
}

static void check_corpus(const char *name) {
    char p[256];
    snprintf(p, sizeof p, "tests/data/tokenizer/%s/tokenizer.json", name);
    tokenizer *t = NULL;
    vlm_err err = {0};
    if (tokenizer_load(tu_src(p), &t, &err) != VLM_OK) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(t);
    lines corpus, exp;
    read_lines(tu_src("tests/data/tokenizer/corpus.txt"), &corpus);
    snprintf(p, sizeof p, "tests/data/tokenizer/%s/expected.jsonl", name);
    read_lines(tu_src(p), &exp);
    assert_int_equal(corpus.n, exp.n);
    size_t bad_ids = 0, bad_special = 0, bad_dec = 0, bad_skip = 0, bad_rt = 0, rt = 0;
    for (size_t i = 0; i < corpus.n; i++) {
        cJSON *e = NULL;
        assert_int_equal(vlm_json_parse(exp.s[i], exp.len[i], p, &e, &err), VLM_OK);
        tok_ids a = {0}, b = {0};
        assert_int_equal(tokenizer_encode(t, corpus.s[i], corpus.len[i], false, &a, &err), VLM_OK);
        assert_int_equal(tokenizer_encode(t, corpus.s[i], corpus.len[i], true, &b, &err), VLM_OK);
        bool ok = ids_equal(&a, cJSON_GetObjectItem(e, "ids"));
        if (!ok && bad_ids++ < 5) {
            fprintf(stderr, "%s line %zu \"%.*s\": ids differ\n  got ", name, i + 1,
                    (int)corpus.len[i], corpus.s[i]);
            for (size_t k = 0; k < a.n; k++) fprintf(stderr, "%d ", a.v[k]);
            char *w = vlm_json_print(cJSON_GetObjectItem(e, "ids"));
            fprintf(stderr, "\n  want %s\n", w);
            vlm_free(w);
        }
        if (!ids_equal(&b, cJSON_GetObjectItem(e, "ids_special")) && bad_special++ < 5)
            fprintf(stderr, "%s line %zu: ids with special tokens differ\n", name, i + 1);
        char *d;
        size_t dl;
        assert_int_equal(tokenizer_decode(t, a.v, a.n, false, &d, &dl, &err), VLM_OK);
        if (!hex_equal(d, dl, cJSON_GetObjectItem(e, "decoded_hex")) && bad_dec++ < 5)
            fprintf(stderr, "%s line %zu: decode differs: \"%.*s\"\n", name, i + 1, (int)dl, d);
        if (cJSON_IsTrue(cJSON_GetObjectItem(e, "roundtrip"))) {
            rt++;
            if ((dl != corpus.len[i] || memcmp(d, corpus.s[i], dl) != 0) && bad_rt++ < 5)
                fprintf(stderr, "%s line %zu: no round trip\n", name, i + 1);
        }
        vlm_free(d);
        assert_int_equal(tokenizer_decode(t, b.v, b.n, true, &d, &dl, &err), VLM_OK);
        if (!hex_equal(d, dl, cJSON_GetObjectItem(e, "decoded_skip_hex")) && bad_skip++ < 5)
            fprintf(stderr, "%s line %zu: decode (skip special) differs: \"%.*s\"\n", name, i + 1,
                    (int)dl, d);
        vlm_free(d);
        tok_ids_free(&a);
        tok_ids_free(&b);
        cJSON_Delete(e);
    }
    fprintf(stderr,
            "%s: %zu lines; mismatches: ids %zu, ids+special %zu, decode %zu, decode(skip) %zu, "
            "round trip %zu of %zu\n",
            name, corpus.n, bad_ids, bad_special, bad_dec, bad_skip, bad_rt, rt);
    assert_true(corpus.n >= 2000);
    assert_int_equal(bad_ids, 0);
    assert_int_equal(bad_special, 0);
    assert_int_equal(bad_dec, 0);
    assert_int_equal(bad_skip, 0);
    assert_int_equal(bad_rt, 0);
    free_lines(&corpus);
    free_lines(&exp);
    tokenizer_free(t);
}

static void test_phi3_corpus(void **state) {
    (void)state;
    check_corpus("phi3");
}

static void test_bytelevel_corpus(void **state) {
    (void)state;
    check_corpus("bytelevel");
}

static void test_metaspace_corpus(void **state) {
    (void)state;
    check_corpus("metaspace");
}

/* transformers' apply_chat_template output, byte for byte, and the prompt
 * ids of spec §2.4 computed with HF tokenizers. */
static void test_chat_fixture(void **state) {
    (void)state;
    cJSON *root = NULL;
    vlm_err err = {0};
    assert_int_equal(
        vlm_json_parse_file(tu_src("tests/data/tokenizer/phi3/chat_expected.json"), &root, &err),
        VLM_OK);
    tokenizer *t = NULL;
    assert_int_equal(tokenizer_load(tu_src("tests/data/tokenizer/phi3"), &t, &err), VLM_OK);
    chat_format f;
    assert_int_equal(chat_template_load(tu_src("tests/data/tokenizer/phi3"), &f, &err), VLM_OK);
    int n = 0;
    for (const cJSON *c = cJSON_GetObjectItem(root, "cases")->child; c; c = c->next, n++) {
        chat_msg msgs[16];
        size_t nm = 0;
        for (const cJSON *m = cJSON_GetObjectItem(c, "messages")->child; m; m = m->next) {
            assert_true(nm < 16);
            msgs[nm].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[nm].content = cJSON_GetObjectItem(m, "content")->valuestring;
            nm++;
        }
        char *p;
        size_t pl;
        assert_int_equal(chat_render(f, msgs, nm, true, &p, &pl, &err), VLM_OK);
        const char *want = cJSON_GetObjectItem(c, "prompt")->valuestring;
        if (strcmp(p, want) != 0) fprintf(stderr, "case %d:\n got %s\nwant %s\n", n, p, want);
        assert_string_equal(p, want);
        int32_t counts[8];
        size_t ni = 0;
        for (const cJSON *k = cJSON_GetObjectItem(c, "num_img_tokens")->child; k; k = k->next)
            counts[ni++] = k->valueint;
        tok_ids ids = {0};
        assert_int_equal(chat_prompt_to_ids(t, p, pl, counts, ni, &ids, &err), VLM_OK);
        assert_true(ids_equal(&ids, cJSON_GetObjectItem(c, "input_ids")));
        tok_ids_free(&ids);
        vlm_free(p);
    }
    assert_int_equal(n, 10);
    tokenizer_free(t);
    cJSON_Delete(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phi3_corpus),
        cmocka_unit_test(test_bytelevel_corpus),
        cmocka_unit_test(test_metaspace_corpus),
        cmocka_unit_test(test_chat_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
