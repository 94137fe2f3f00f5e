/* text/tokenizer: golden ids from the real Phi-3.5-vision processor, spec
 * examples (§2.1-2.4), each HF component on small hand-made tokenizer.json
 * files (expected ids worked out from HF's documented semantics), bad input,
 * malformed files, streaming, chat prompts, and allocation failure. */
#include "testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "text/chat.h"
#include "text/tok_internal.h"
#include "text/tokenizer.h"

static tokenizer *phi;

static const char *phi_path(void) {
    return tu_src("tests/data/tokenizer/phi3/tokenizer.json");
}

static int setup(void **state) {
    (void)state;
    vlm_err err = {0};
    if (tokenizer_load(phi_path(), &phi, &err) != VLM_OK) {
        fprintf(stderr, "load: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tokenizer_free(phi);
    return 0;
}

static void expect_ids(const tokenizer *t, const char *text, size_t len, bool special,
                       const int32_t *want, size_t n) {
    tok_ids ids = {0};
    vlm_err err = {0};
    assert_int_equal(tokenizer_encode(t, text, len, special, &ids, &err), VLM_OK);
    if (ids.n != n || (n && memcmp(ids.v, want, n * sizeof(int32_t)) != 0)) {
        fprintf(stderr, "text \"%.*s\": got", (int)len, text);
        for (size_t i = 0; i < ids.n; i++) fprintf(stderr, " %d", ids.v[i]);
        fprintf(stderr, "\n  want");
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(ids.n, n);
    if (n) assert_memory_equal(ids.v, want, n * sizeof(int32_t));
    tok_ids_free(&ids);
}

#define EXPECT(t, text, special, ...)                                                              \
    do {                                                                                           \
        static const int32_t w_[] = {__VA_ARGS__};                                                 \
        expect_ids((t), (text), strlen(text), (special), w_, sizeof w_ / sizeof w_[0]);            \
    } while (0)
#define EXPECT_EMPTY(t, text, special) expect_ids((t), (text), strlen(text), (special), NULL, 0)

static char *decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip, size_t *len) {
    char *s;
    size_t l;
    vlm_err err = {0};
    assert_int_equal(tokenizer_decode(t, ids, n, skip, &s, &l, &err), VLM_OK);
    if (len) *len = l;
    return s;
}

static void expect_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip,
                          const char *want, size_t want_len) {
    size_t l;
    char *s = decode(t, ids, n, skip, &l);
    if (l != want_len || memcmp(s, want, l) != 0)
        fprintf(stderr, "decode: got \"%.*s\" want \"%.*s\"\n", (int)l, s, (int)want_len, want);
    assert_int_equal(l, want_len);
    assert_memory_equal(s, want, l);
    vlm_free(s);
}

static tokenizer *load(const char *json) {
    tokenizer *t = NULL;
    vlm_err err = {0};
    vlm_status st = tokenizer_load_json(json, strlen(json), "test.json", &t, &err);
    if (st != VLM_OK) fprintf(stderr, "load: %s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    return t;
}

/* ---- golden (shared/) and spec examples ---- */

static void test_golden_prompts(void **state) {
    (void)state;
    cJSON *root = NULL;
    vlm_err err = {0};
    assert_int_equal(
        vlm_json_parse_file(
            tu_shared("models/phi-3.5-vision-instruct/golden/tokenization_golden.json"), &root,
            &err),
        VLM_OK);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    int checked = 0;
    for (const cJSON *c = cases->child; c; c = c->next) {
        const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
        int32_t counts[8];
        size_t n_img = 0;
        const cJSON *imgs = cJSON_GetObjectItem(c, "images");
        const cJSON *nit = cJSON_GetObjectItem(c, "num_img_tokens");
        for (const cJSON *i = imgs ? imgs->child : NULL; i; i = i->next)
            counts[n_img++] = cJSON_GetObjectItem(i, "num_img_tokens")->valueint;
        for (const cJSON *i = nit ? nit->child : NULL; i; i = i->next)
            counts[n_img++] = i->valueint;
        tok_ids want = {0};
        const cJSON *ids = cJSON_GetObjectItem(c, "input_ids");
        const cJSON *rle = cJSON_GetObjectItem(c, "input_ids_rle");
        for (const cJSON *i = ids ? ids->child : NULL; i; i = i->next)
            assert_int_equal(tok_ids_push(&want, i->valueint, NULL), VLM_OK);
        for (const cJSON *i = rle ? rle->child : NULL; i; i = i->next)
            for (int k = 0; k < cJSON_GetArrayItem(i, 1)->valueint; k++)
                assert_int_equal(tok_ids_push(&want, cJSON_GetArrayItem(i, 0)->valueint, NULL),
                                 VLM_OK);
        const cJSON *len = cJSON_GetObjectItem(c, "input_ids_len");
        if (len) assert_int_equal(want.n, len->valueint);
        tok_ids got = {0};
        assert_int_equal(chat_prompt_to_ids(phi, prompt, strlen(prompt), counts, n_img, &got, &err),
                         VLM_OK);
        assert_int_equal(got.n, want.n);
        assert_memory_equal(got.v, want.v, want.n * sizeof(int32_t));
        tok_ids_free(&want);
        tok_ids_free(&got);
        checked++;
    }
    assert_int_equal(checked, 7);
    cJSON_Delete(root);
}

static void test_spec_examples(void **state) {
    (void)state;
    /* §2.2: rstrip on <|assistant|> eats the newline; <|end|> keeps it */
    EXPECT(phi, "<|assistant|>\n", false, 32001);
    EXPECT(phi, "<|end|>\n", false, 32007, 29871, 13);
    EXPECT(phi, "\n", false, 29871, 13);
    /* §10.2 */
    EXPECT(phi, "<|assistant|>\nA1", false, 32001, 319, 29896);
    /* empty text: nothing, or BOS alone */
    EXPECT_EMPTY(phi, "", false);
    EXPECT(phi, "", true, 1);
    /* the prepend applies to each segment between added tokens */
    EXPECT(phi, "<|user|>\nSummarize the deck of slides.<|end|>\n<|assistant|>\n", true, 1, 32010,
           29871, 13, 11139, 3034, 675, 278, 19810, 310, 2243, 2247, 29889, 32007, 29871, 13,
           32001);
    /* byte fallback: U+1F600 is not in the vocabulary: <0xF0><0x9F><0x98><0x80> = 3 + byte */
    EXPECT(phi, "\xF0\x9F\x98\x80", false, 29871, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80);
}

static void test_phi_decode(void **state) {
    (void)state;
    static const int32_t ids[] = {1,   32010, 29871, 13,    11139, 3034,  675, 278,  19810,
                                  310, 2243,  2247,  29889, 32007, 29871, 13,  32001};
    const size_t n = sizeof ids / sizeof ids[0];
    /* §2.1 decoder: "▁" -> " ", bytes, fuse, strip one leading space */
    const char *skip = "\nSummarize the deck of slides. \n";
    expect_decode(phi, ids, n, true, skip, strlen(skip));
    const char *keep = "<s><|user|> \nSummarize the deck of slides.<|end|> \n<|assistant|>";
    expect_decode(phi, ids, n, false, keep, strlen(keep));
    /* after an added token the segment gets its own "▁", which decodes to a
     * space: HF does not round-trip this either */
    tok_ids m = {0};
    const char *mixed = "<|user|> mixed <|end|>";
    assert_int_equal(tokenizer_encode(phi, mixed, strlen(mixed), false, &m, NULL), VLM_OK);
    expect_decode(phi, m.v, m.n, false, "<|user|>  mixed <|end|>", 23);
    tok_ids_free(&m);
    /* unknown ids are skipped */
    static const int32_t odd[] = {-5, 99999, 15043};
    expect_decode(phi, odd, 3, false, "Hello", 5);
    /* round trips */
    const char *texts[] = {"Hello world", "  two  spaces ", "Ünïcödé → 日本語 😀", "tab\there",
                           "a\rb"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        tok_ids t = {0};
        assert_int_equal(tokenizer_encode(phi, texts[i], strlen(texts[i]), false, &t, NULL),
                         VLM_OK);
        expect_decode(phi, t.v, t.n, false, texts[i], strlen(texts[i]));
        tok_ids_free(&t);
    }
}

static void test_bad_text(void **state) {
    (void)state;
    /* invalid UTF-8 becomes U+FFFD (one per maximal subpart), then encodes */
    const char bad[] = "\xff"
                       "ab"
                       "\xe6\x97"
                       "c"
                       "\xed\xa0\x80";
    const char fixed[] = "\xEF\xBF\xBD"
                         "ab"
                         "\xEF\xBF\xBD"
                         "c"
                         "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD";
    tok_ids a = {0}, b = {0};
    assert_int_equal(tokenizer_encode(phi, bad, sizeof bad - 1, false, &a, NULL), VLM_OK);
    assert_int_equal(tokenizer_encode(phi, fixed, sizeof fixed - 1, false, &b, NULL), VLM_OK);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.v, b.v, a.n * sizeof(int32_t));
    tok_ids_free(&a);
    tok_ids_free(&b);
    /* NUL is a character like any other: <0x00> = id 3, and it round-trips */
    const char nul[] = "a\0b";
    expect_ids(phi, "\0", 1, false, (const int32_t[]){29871, 3}, 2);
    tok_ids c = {0};
    assert_int_equal(tokenizer_encode(phi, nul, 3, false, &c, NULL), VLM_OK);
    expect_decode(phi, c.v, c.n, false, nul, 3);
    tok_ids_free(&c);
    /* every single byte value, alone and in a run, never fails */
    char all[512];
    for (int i = 0; i < 256; i++) all[i] = all[256 + i] = (char)i;
    for (int i = 0; i < 256; i++) {
        tok_ids d = {0};
        assert_int_equal(tokenizer_encode(phi, all + i, 1, true, &d, NULL), VLM_OK);
        tok_ids_free(&d);
    }
    tok_ids e = {0};
    assert_int_equal(tokenizer_encode(phi, all, sizeof all, true, &e, NULL), VLM_OK);
    char *s;
    size_t l;
    assert_int_equal(tokenizer_decode(phi, e.v, e.n, false, &s, &l, NULL), VLM_OK);
    vlm_free(s);
    tok_ids_free(&e);
}

/* Cutting SentencePiece words before "▁" (bpe_check_meta_split) must not
 * change a single id: compare with the plain merge over the whole corpus. */
static void test_meta_split_exact(void **state) {
    (void)state;
    assert_true(phi->bpe.meta_split);
    tokenizer *plain = NULL;
    assert_int_equal(tokenizer_load(phi_path(), &plain, NULL), VLM_OK);
    plain->bpe.meta_split = false;
    size_t len;
    char *text = tu_read_file(tu_src("tests/data/tokenizer/corpus.txt"), &len);
    assert_non_null(text);
    size_t lines = 0;
    for (size_t pos = 0; pos < len; lines++) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        tok_ids a = {0}, b = {0};
        assert_int_equal(tokenizer_encode(phi, text + pos, end - pos, false, &a, NULL), VLM_OK);
        assert_int_equal(tokenizer_encode(plain, text + pos, end - pos, false, &b, NULL), VLM_OK);
        assert_int_equal(a.n, b.n);
        assert_memory_equal(a.v, b.v, a.n * sizeof(int32_t));
        tok_ids_free(&a);
        tok_ids_free(&b);
        pos = end + 1;
    }
    assert_true(lines >= 2000);
    free(text);
    tokenizer_free(plain);
}

/* One tokenizer shared by threads: the word cache is its only mutable part. */
typedef struct thread_job {
    const char *text;
    size_t len;
    const tok_ids *want; /* ids of every line, from a private tokenizer */
    size_t mismatches;
} thread_job;

static void encode_lines(const tokenizer *t, const char *text, size_t len, tok_ids *out) {
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (tokenizer_encode(t, text + pos, end - pos, true, out, NULL) != VLM_OK) return;
        pos = end + 1;
    }
}

static void *encode_job(void *arg) {
    thread_job *j = arg;
    for (int round = 0; round < 3; round++) {
        tok_ids got = {0};
        encode_lines(phi, j->text, j->len, &got);
        if (got.n != j->want->n || memcmp(got.v, j->want->v, got.n * sizeof(int32_t)) != 0)
            j->mismatches++;
        tok_ids_free(&got);
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    size_t len;
    char *text = tu_read_file(tu_src("tests/data/tokenizer/corpus.txt"), &len);
    assert_non_null(text);
    tokenizer *ref = NULL;
    assert_int_equal(tokenizer_load(phi_path(), &ref, NULL), VLM_OK);
    tok_ids want = {0};
    encode_lines(ref, text, len, &want);
    assert_true(want.n > 10000);
    thread_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){text, len, &want, 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) assert_int_equal(jobs[i].mismatches, 0);
    tok_ids_free(&want);
    tokenizer_free(ref);
    free(text);
}

/* ---- components on small files ---- */

/* Vocabulary of single characters a..z, space, digits, '-', plus extras. */
#define CHAR_VOCAB                                                                                 \
    "\"a\":0,\"b\":1,\"c\":2,\"d\":3,\"e\":4,\"x\":5,\"y\":6,\"-\":7,\" \":8,\"1\":9,\"2\":10,"    \
    "\"w\":11,\"<unk>\":12"

static void test_split_behaviors(void **state) {
    (void)state;
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    /* a=0 -=7 b=1; "a-"=20, "-b"=21, "--"=22 */
    static const int32_t want[5][4] = {
        {0, 1, -1}, {0, 7, 7, 1}, {20, 7, 1, -1}, {0, 7, 21, -1}, {0, 22, 1, -1}};
    for (int k = 0; k < 5; k++) {
        char json[1024];
        snprintf(json, sizeof json,
                 "{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
                 ",\"a-\":20,\"-b\":21,\"--\":22},\"merges\":[\"a -\",\"- b\",\"- -\"]},"
                 "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
                 "\"behavior\":\"%s\",\"invert\":false}}",
                 names[k]);
        tokenizer *t = load(json);
        size_t n = 0;
        while (n < 4 && want[k][n] >= 0) n++;
        /* "a--b": matches at both dashes */
        expect_ids(t, "a--b", 4, false, want[k], n);
        tokenizer_free(t);
    }
    /* no pre-tokenizer: one word, merges by rank: "a -" (0) first */
    tokenizer *t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
                        ",\"a-\":20,\"-b\":21},\"merges\":[[\"a\",\"-\"],[\"-\",\"b\"]]}}");
    EXPECT(t, "a-b", false, 20, 1);
    EXPECT(t, "b-b", false, 1, 21);
    tokenizer_free(t);
    /* regex Split with invert: keep the matches of [a-c]+ as pieces, isolate the rest */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
             ",\"ab\":20,\"bx\":21},\"merges\":[\"b x\",\"a b\"]},"
             "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x+\"},"
             "\"behavior\":\"Removed\",\"invert\":true}}");
    /* invert + Removed keeps only the x runs */
    EXPECT(t, "abxxab", false, 5, 5);
    tokenizer_free(t);
}

static void test_added_tokens(void **state) {
    (void)state;
    tokenizer *t = load(
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB "},\"merges\":[]},"
        "\"added_tokens\":["
        "{\"id\":30,\"content\":\"<m>\",\"lstrip\":true,\"rstrip\":false,\"single_word\":false,"
        "\"normalized\":false,\"special\":true},"
        "{\"id\":31,\"content\":\"<r>\",\"lstrip\":false,\"rstrip\":true,\"normalized\":false},"
        "{\"id\":32,\"content\":\"wd\",\"single_word\":true,\"normalized\":false},"
        "{\"id\":33,\"content\":\"ab\",\"normalized\":false},"
        "{\"id\":34,\"content\":\"abc\",\"normalized\":false},"
        "{\"id\":35,\"content\":\"bcd\",\"normalized\":false}]}");
    /* lstrip eats the spaces on the left, rstrip those on the right */
    EXPECT(t, "x  <m> y", false, 5, 30, 8, 6);
    EXPECT(t, "x <r>  y", false, 5, 8, 31, 6);
    EXPECT(t, "x <r>\t\n", false, 5, 8, 31);
    /* single_word: only between non-word characters */
    EXPECT(t, "a wd b", false, 0, 8, 32, 8, 1);
    EXPECT(t, "awd b", false, 0, 11, 3, 8, 1);
    EXPECT(t, "wd-wd", false, 32, 7, 32);
    /* leftmost-longest: "abc" at 0 beats "ab" and the later "bcd" */
    EXPECT(t, "abcd", false, 34, 3);
    EXPECT(t, "xbcdab", false, 5, 35, 33);
    /* decode: added tokens by content; skip_special drops <m> only */
    static const int32_t ids[] = {30, 5, 31};
    expect_decode(t, ids, 3, false, "<m> x <r>", 9);
    expect_decode(t, ids, 3, true, "x <r>", 5);
    assert_int_equal(tokenizer_token_to_id(t, "<r>", 3), 31);
    assert_int_equal(tokenizer_token_to_id(t, "x", 1), 5);
    assert_int_equal(tokenizer_token_to_id(t, "zz", 2), -1);
    tokenizer_free(t);

    /* normalized tokens match the normalized text (here: lowercased) */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB "},\"merges\":[]},"
             "\"normalizer\":{\"type\":\"Lowercase\"},"
             "\"added_tokens\":["
             "{\"id\":40,\"content\":\"ABE\",\"normalized\":true},"
             "{\"id\":41,\"content\":\"XY\",\"normalized\":false}]}");
    EXPECT(t, "xAbEx", false, 5, 40, 5);
    EXPECT(t, "XYxy", false, 41, 5, 6);
    tokenizer_free(t);
}

static void test_metaspace(void **state) {
    (void)state;
    static const char *schemes[] = {"always", "first", "never"};
    /* ▁=20 ▁a=21 (merge "▁ a"); <x> added; text "a<x>a b" */
    static const int32_t want[3][6] = {
        {21, 30, 21, 21, -1}, {21, 30, 0, 21, -1}, {0, 30, 0, 21, -1}};
    for (int k = 0; k < 3; k++) {
        char json[1024];
        snprintf(json, sizeof json,
                 "{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
                 ",\"\\u2581\":20,\"\\u2581a\":21},\"merges\":[\"\\u2581 a\"]},"
                 "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                 "\"prepend_scheme\":\"%s\",\"split\":true},"
                 "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                 "\"prepend_scheme\":\"%s\",\"split\":true},"
                 "\"added_tokens\":[{\"id\":30,\"content\":\"<x>\",\"normalized\":false}]}",
                 schemes[k], schemes[k]);
        tokenizer *t = load(json);
        size_t n = 0;
        while (n < 6 && want[k][n] >= 0) n++;
        expect_ids(t, "a<x>a a", 7, false, want[k], n);
        if (k == 0) {
            /* decoder: the first token's ▁ is dropped, the others become spaces */
            static const int32_t ids[] = {21, 21, 20};
            expect_decode(t, ids, 3, false, "a a ", 4);
        }
        tokenizer_free(t);
    }
}

static void test_digits_unk_affixes(void **state) {
    (void)state;
    tokenizer *t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
                        ",\"12\":20},\"merges\":[\"1 2\"]},"
                        "\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":true}}");
    EXPECT(t, "a12b", false, 0, 9, 10, 1);
    tokenizer_free(t);
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
             ",\"12\":20},\"merges\":[\"1 2\"]},"
             "\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":false}}");
    EXPECT(t, "a12b", false, 0, 20, 1);
    tokenizer_free(t);
    /* unknown characters: fused into one <unk>, or one each */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
             "},\"merges\":[],\"unk_token\":\"<unk>\",\"fuse_unk\":true}}");
    EXPECT(t,
           "a\xe2\x82\xac\xe2\x82\xac"
           "a",
           false, 0, 12, 0);
    tokenizer_free(t);
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
             "},\"merges\":[],\"unk_token\":\"<unk>\",\"fuse_unk\":false}}");
    EXPECT(t,
           "a\xe2\x82\xac\xe2\x82\xac"
           "a",
           false, 0, 12, 12, 0);
    tokenizer_free(t);
    /* no unk token: the character is dropped */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB "},\"merges\":[]}}");
    EXPECT(t,
           "a\xe2\x82\xac"
           "b",
           false, 0, 1);
    tokenizer_free(t);
    /* continuing_subword_prefix / end_of_word_suffix: merges strip the prefix */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"##b\":1,\"##c</w>\":2,\"ab\":3,"
             "\"abc</w>\":4},\"merges\":[\"a ##b\",\"ab ##c</w>\"],"
             "\"continuing_subword_prefix\":\"##\",\"end_of_word_suffix\":\"</w>\"}}");
    EXPECT(t, "abc", false, 4);
    tokenizer_free(t);
    /* ignore_merges: a whole word in the vocabulary is taken as is */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
             ",\"abc\":20},\"merges\":[],\"ignore_merges\":true}}");
    EXPECT(t, "abc", false, 20);
    EXPECT(t, "abd", false, 0, 1, 3);
    tokenizer_free(t);
    /* merge order: lowest rank first, leftmost on ties */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"aa\":1,\"aaa\":2},"
             "\"merges\":[\"a a\",\"aa a\"]}}");
    /* "aaaaa": (a a)@0 -> aa; (a a)@2 -> aa; then (aa a)@2 -> aaa (aa aa is no merge) */
    EXPECT(t, "aaaaa", false, 1, 2);
    EXPECT(t, "aaa", false, 2);
    EXPECT(t, "aaaa", false, 1, 1);
    tokenizer_free(t);
}

static void test_normalizers(void **state) {
    (void)state;
    /* NFKC: U+FB01 (fi ligature) -> "fi"; Lowercase; Strip; Replace regex */
    tokenizer *t = load(
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"f\":0,\"i\":1,\"a\":2,\"-\":3,\" \":4,"
        "\"\\u00e9\":5,\"e\":6,\"\\u0301\":7,\"\\u0307\":8},\"merges\":[]},"
        "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},"
        "{\"type\":\"Lowercase\"},{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true},"
        "{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"content\":\"-\"}]}}");
    EXPECT(t, "\xef\xac\x81", false, 0, 1);      /* ﬁ */
    EXPECT(t, "  FI \t A  ", false, 0, 1, 3, 2); /* strip, runs of spaces -> "-" */
    EXPECT(t, "e\xcc\x81", false, 5);            /* composed to é */
    EXPECT(t, "\xc4\xb0", false, 1, 8);          /* İ lowercases to i + U+0307 */
    tokenizer_free(t);
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"e\":0,\"\\u0301\":1,\"\\u00e9\":2},"
             "\"merges\":[]},\"normalizer\":{\"type\":\"NFD\"}}");
    EXPECT(t, "\xc3\xa9", false, 0, 1);
    tokenizer_free(t);
    /* Prepend + Replace(String), as in the Phi file */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"_\":0,\"a\":1,\"b\":2},\"merges\":[]},"
             "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\","
             "\"prepend\":\"_\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
             "\"content\":\"_\"}]}}");
    EXPECT(t, "a b", false, 0, 1, 0, 2);
    EXPECT_EMPTY(t, "", false);
    tokenizer_free(t);
}

/* A byte-level file: the 256 GPT-2 byte characters plus a few merges. */
static char *bytelevel_json(const char *extra_vocab, const char *merges, const char *extra) {
    size_t cap = 65536, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t ul = tok_utf8_encode(tok_byte_to_char((unsigned char)b), u);
        const char *esc = b == '"' ? "\\\"" : b == '\\' ? "\\\\" : NULL;
        n += (size_t)snprintf(j + n, cap - n, "%s\"%s%.*s\":%d", b ? "," : "", esc ? esc : "",
                              esc ? 0 : (int)ul, u, b);
    }
    n += (size_t)snprintf(j + n, cap - n,
                          "%s},\"merges\":[%s]},"
                          "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                          "\"trim_offsets\":true,\"use_regex\":true},"
                          "\"decoder\":{\"type\":\"ByteLevel\"}%s}",
                          extra_vocab, merges, extra);
    return j;
}

static void test_bytelevel(void **state) {
    (void)state;
    char *j = bytelevel_json(",\"he\":256,\"ll\":257,\"hell\":258,\"hello\":259,"
                             "\"\\u0120w\":260,\"or\":261,\"\\u0120wor\":262,\"\\u0120worl\":263,"
                             "\"\\u0120world\":264",
                             "\"h e\",\"l l\",\"he ll\",\"hell o\",\"\\u0120 w\",\"o r\","
                             "\"\\u0120w or\",\"\\u0120wor l\",\"\\u0120worl d\"",
                             ",\"post_processor\":{\"type\":\"ByteLevel\"}");
    tokenizer *t = load(j);
    free(j);
    EXPECT(t, "hello world", false, 259, 264);
    /* the GPT-2 regex: contractions, digits, punctuation, trailing spaces */
    /* "he" "'s" " " " 1" "!": \s+(?!\S) leaves the last space to " ?\p{N}+" */
    EXPECT(t, "he's  1!", false, 256, '\'', 's', ' ', ' ', '1', '!');
    static const int32_t ids[] = {259, 264};
    expect_decode(t, ids, 2, false, "hello world", 11);
    /* bytes that are not UTF-8 decode to U+FFFD (from_utf8_lossy) */
    static const int32_t bad[] = {'a', 0xff - 0, 'b'};
    int32_t bad_ids[3];
    for (int i = 0; i < 3; i++) bad_ids[i] = bad[i];
    /* byte 0xff's character is U+00FF -> vocab id 255 */
    bad_ids[1] = 255;
    expect_decode(t, bad_ids, 3, false,
                  "a\xef\xbf\xbd"
                  "b",
                  5);
    /* round trip of arbitrary UTF-8 */
    const char *s = "Ünï  cödé\t→ 日本 😀  ";
    tok_ids x = {0};
    assert_int_equal(tokenizer_encode(t, s, strlen(s), false, &x, NULL), VLM_OK);
    expect_decode(t, x.v, x.n, false, s, strlen(s));
    tok_ids_free(&x);
    tokenizer_free(t);
    /* add_prefix_space */
    j = bytelevel_json("", "", "");
    char *p = strstr(j, "\"add_prefix_space\":false");
    memcpy(p, "\"add_prefix_space\":true ", 24);
    t = load(j);
    free(j);
    EXPECT(t, "a", false, 0x20 + 0, 'a'); /* " a": Ġ (byte 0x20, id 32) then a */
    tokenizer_free(t);
}

static void test_decoders(void **state) {
    (void)state;
    /* ByteFallback: a run of byte tokens that is not UTF-8 gives one U+FFFD per byte */
    tokenizer *t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"<0xE6>\":0,\"<0x97>\":1,"
                        "\"<0xA5>\":2,\"x\":3,\"  y  \":4},\"merges\":[]},"
                        "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":"
                        "\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":"
                        "\" \",\"start\":1,\"stop\":2}]}}");
    static const int32_t ok[] = {0, 1, 2, 3};
    expect_decode(t, ok, 4, false, "\xe6\x97\xa5x", 4);
    static const int32_t cut[] = {0, 1, 3};
    expect_decode(t, cut, 3, false, "\xef\xbf\xbd\xef\xbf\xbdx", 7);
    static const int32_t strip[] = {4};
    expect_decode(t, strip, 1, false, " y", 2);
    tokenizer_free(t);
    /* no decoder: tokens joined with spaces */
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]}}");
    static const int32_t ab[] = {0, 1};
    expect_decode(t, ab, 2, false, "a b", 3);
    tokenizer_free(t);
}

static void test_post_processor(void **state) {
    (void)state;
    tokenizer *t =
        load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"[C]\":1,\"[S]\":2},\"merges\":[]},"
             "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":["
             "{\"SpecialToken\":{\"id\":\"[C]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
             "\"type_id\":0}},{\"SpecialToken\":{\"id\":\"[S]\",\"type_id\":0}}],\"pair\":[],"
             "\"special_tokens\":{\"[C]\":{\"id\":\"[C]\",\"ids\":[1],\"tokens\":[\"[C]\"]},"
             "\"[S]\":{\"id\":\"[S]\",\"ids\":[2],\"tokens\":[\"[S]\"]}}}}");
    EXPECT(t, "aa", true, 1, 0, 0, 2);
    EXPECT(t, "aa", false, 0, 0);
    tokenizer_free(t);
    t = load("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
             "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",102],"
             "\"cls\":[\"[CLS]\",101]}}");
    EXPECT(t, "a", true, 101, 0, 102);
    tokenizer_free(t);
}

/* ---- malformed files: the message names the field ---- */

static void test_malformed(void **state) {
    (void)state;
    static const struct {
        const char *json, *field;
    } cases[] = {
        {"{", "invalid JSON"},
        {"[]", "(root)"},
        {"{}", "model"},
        {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "model.type"},
        {"{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "model.vocab"},
        {"{\"model\":{\"vocab\":{\"a\":-1},\"merges\":[]}}", "model.vocab"},
        {"{\"model\":{\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", "model.vocab"},
        {"{\"model\":{\"vocab\":{\"a\":0}}}", "model.merges"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a\"]}}", "model.merges[0]"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a a\",\"a b\"]}}", "model.merges[0]"},
        {"{\"model\":{\"vocab\":{\"a\":0,\"aa\":1},\"merges\":[\"a a\",\"a b\"]}}",
         "model.merges[1]"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}}", "model.merges[0]"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[],\"dropout\":0.1}}", "model.dropout"},
        {"{\"model\":{\"vocab\":{\"a\\u0000b\":0},\"merges\":[]}}", "\\u0000"},
        {"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[],\"byte_fallback\":1}}",
         "model.byte_fallback"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"normalizer\":{\"type\":\"Precompiled\"}}",
         "normalizer.type"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"normalizer\":{\"type\":\"Sequence\","
         "\"normalizers\":[{\"type\":\"NFC\"},{\"kind\":1}]}}",
         "normalizer.normalizers[1].type"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"normalizer\":{\"type\":\"Replace\","
         "\"content\":\"x\"}}",
         "normalizer.pattern"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\","
         "\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
         "pre_tokenizer.pattern: bad regular expression"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\","
         "\"pattern\":{\"String\":\"x\"},\"behavior\":\"Sideways\"}}",
         "pre_tokenizer.behavior"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Metaspace\","
         "\"prepend_scheme\":\"sometimes\"}}",
         "pre_tokenizer.prepend_scheme"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Metaspace\","
         "\"replacement\":\"ab\"}}",
         "pre_tokenizer.replacement"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"decoder\":{\"type\":\"Strip\","
         "\"content\":\" \",\"stop\":0}}",
         "decoder.start"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"decoder\":{\"type\":\"Sequence\","
         "\"decoders\":[{\"type\":\"WordPiece\"}]}}",
         "decoder.decoders[0].type"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"added_tokens\":[{\"id\":1}]}",
         "added_tokens[0].content"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"added_tokens\":[{\"id\":1,"
         "\"content\":\"x\",\"special\":\"yes\"}]}",
         "added_tokens[0].special"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"added_tokens\":[{\"id\":99999999,"
         "\"content\":\"x\"}]}",
         "added_tokens[0].id"},
        {"{\"model\":{\"vocab\":{},\"merges\":[]},\"post_processor\":{\"type\":"
         "\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}},"
         "{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{}}}",
         "post_processor.special_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tokenizer *t = (tokenizer *)1;
        vlm_err err = {0};
        vlm_status st =
            tokenizer_load_json(cases[i].json, strlen(cases[i].json), "tokenizer.json", &t, &err);
        if (st == VLM_OK || !strstr(err.msg, cases[i].field))
            fprintf(stderr, "case %zu: status %d message \"%s\" (want \"%s\")\n", i, (int)st,
                    err.msg, cases[i].field);
        assert_int_not_equal(st, VLM_OK);
        assert_null(t);
        assert_non_null(strstr(err.msg, cases[i].field));
    }
    /* a missing file names the path */
    tokenizer *t = NULL;
    vlm_err err = {0};
    assert_int_not_equal(tokenizer_load("/nonexistent/tok.json", &t, &err), VLM_OK);
    assert_non_null(strstr(err.msg, "/nonexistent/tok.json"));
    /* a model folder means DIR/tokenizer.json */
    assert_int_equal(tokenizer_load(tu_src("tests/data/tokenizer/phi3"), &t, &err), VLM_OK);
    assert_int_equal(tokenizer_vocab_size(t), 32045);
    tokenizer_free(t);
}

/* ---- streaming ---- */

static void test_stream(void **state) {
    (void)state;
    const char *text = "Hello 日本語 😀 world\n  done <|end|> ok";
    tok_ids ids = {0};
    assert_int_equal(tokenizer_encode(phi, text, strlen(text), true, &ids, NULL), VLM_OK);
    for (int skip = 0; skip < 2; skip++) {
        size_t full_len;
        char *full = decode(phi, ids.v, ids.n, skip, &full_len);
        tok_stream s;
        tok_stream_init(&s, phi, skip);
        char acc[256];
        size_t an = 0;
        int held = 0;
        for (size_t i = 0; i < ids.n; i++) {
            const char *chunk;
            size_t pl;
            assert_int_equal(tok_stream_step(&s, ids.v[i], &chunk, &pl, NULL), VLM_OK);
            if (!chunk) {
                held++;
                continue;
            }
            /* released text is always whole UTF-8 */
            for (size_t k = 0; k < pl;) {
                size_t bad, c = tok_utf8_valid_char((const unsigned char *)chunk + k, pl - k, &bad);
                assert_true(c > 0);
                k += c;
            }
            assert_true(an + pl < sizeof acc);
            memcpy(acc + an, chunk, pl);
            an += pl;
        }
        const char *rest;
        size_t rl;
        assert_int_equal(tok_stream_flush(&s, &rest, &rl, NULL), VLM_OK);
        memcpy(acc + an, rest, rl);
        an += rl;
        tok_stream_free(&s);
        /* the emoji is 4 byte tokens: at least 3 steps held back */
        assert_true(held >= 3);
        assert_int_equal(an, full_len);
        assert_memory_equal(acc, full, an);
        vlm_free(full);
    }
    tok_ids_free(&ids);

    /* invalid UTF-8 forever (<0xFF> = 258): held back at most 8 ids, and the
     * pieces still add up to the full decode */
    int32_t ff[20];
    for (int i = 0; i < 20; i++) ff[i] = 258;
    size_t full_len;
    char *full = decode(phi, ff, 20, false, &full_len);
    tok_stream s;
    tok_stream_init(&s, phi, false);
    char acc[256];
    size_t an = 0;
    int first_release = -1;
    for (int i = 0; i < 20; i++) {
        const char *chunk;
        size_t pl;
        assert_int_equal(tok_stream_step(&s, ff[i], &chunk, &pl, NULL), VLM_OK);
        if (chunk && first_release < 0) first_release = i;
        if (chunk) {
            memcpy(acc + an, chunk, pl);
            an += pl;
        }
    }
    const char *rest;
    size_t rl;
    assert_int_equal(tok_stream_flush(&s, &rest, &rl, NULL), VLM_OK);
    memcpy(acc + an, rest, rl);
    an += rl;
    tok_stream_free(&s);
    assert_true(first_release >= 0 && first_release <= 9);
    assert_int_equal(an, full_len);
    assert_memory_equal(acc, full, an);
    vlm_free(full);
}

/* ---- chat ---- */

static void test_chat(void **state) {
    (void)state;
    chat_format f;
    vlm_err err = {0};
    assert_int_equal(chat_template_load(tu_src("tests/data/tokenizer/phi3"), &f, &err), VLM_OK);
    assert_int_equal(f, CHAT_FORMAT_PHI3V);
    assert_int_equal(chat_template_detect("{{ messages[0]['content'] }}", &f, &err),
                     VLM_ERR_UNSUPPORTED);
    assert_int_equal(chat_template_detect("{% for message in messages %}{{'<|' + message['role'] "
                                          "+ '|>' + '\\n' + message['content'] + '<|end|>\\n' }}"
                                          "{% endfor %}",
                                          &f, &err),
                     VLM_ERR_UNSUPPORTED);
    /* whitespace and {{- -}} do not change this template's output */
    assert_int_equal(
        chat_template_detect("{% for message in messages %}\n  {{ '<|' + message['role'] + '|>' + "
                             "'\\n' + message['content'] + '<|end|>\\n' }}\n{% endfor %}\n{% if "
                             "add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
                             "{{ '<|assistant|>\\n' }}{% endif %}",
                             &f, &err),
        VLM_OK);

    /* §2.3 examples */
    chat_msg one[] = {{"user", "<|image_1|>\n<|image_2|>\nSummarize the deck of slides."}};
    char *p;
    size_t pl;
    assert_int_equal(chat_render(f, one, 1, true, &p, &pl, &err), VLM_OK);
    const char *want =
        "<|user|>\n<|image_1|>\n<|image_2|>\nSummarize the deck of slides.<|end|>\n<|assistant|>\n";
    assert_string_equal(p, want);
    assert_int_equal(pl, strlen(want));
    vlm_free(p);
    chat_msg multi[] = {
        {"system", "S"}, {"user", "<|image_1|>\nq1"}, {"assistant", "a1"}, {"user", "q2"}};
    assert_int_equal(chat_render(f, multi, 4, true, &p, &pl, &err), VLM_OK);
    assert_string_equal(p, "<|system|>\nS<|end|>\n<|user|>\n<|image_1|>\nq1<|end|>\n<|assistant|>"
                           "\na1<|end|>\n<|user|>\nq2<|end|>\n<|assistant|>\n");
    vlm_free(p);
    /* no generation prompt after an assistant turn, nor when not asked */
    assert_int_equal(chat_render(f, multi, 3, true, &p, &pl, &err), VLM_OK);
    assert_string_equal(p, "<|system|>\nS<|end|>\n<|user|>\n<|image_1|>\nq1<|end|>\n<|assistant|>"
                           "\na1<|end|>\n");
    vlm_free(p);
    assert_int_equal(chat_render(f, multi, 2, false, &p, &pl, &err), VLM_OK);
    assert_string_equal(p, "<|system|>\nS<|end|>\n<|user|>\n<|image_1|>\nq1<|end|>\n");
    vlm_free(p);
    assert_int_equal(chat_render(f, multi, 0, true, &p, &pl, &err), VLM_ERR_INVALID_ARG);

    /* image tags: 1..K, each once, in order, and K == number of images */
    const int32_t counts[] = {2, 3};
    tok_ids ids = {0};
    const char *ok = "<|image_1|>x<|image_2|>";
    assert_int_equal(chat_prompt_to_ids(phi, ok, strlen(ok), counts, 2, &ids, &err), VLM_OK);
    /* "x" -> "▁x" (921, merge "▁ x") */
    static const int32_t want_ids[] = {1, -1, -1, 1, 921, -2, -2, -2, 1};
    assert_int_equal(ids.n, sizeof want_ids / sizeof want_ids[0]);
    assert_memory_equal(ids.v, want_ids, sizeof want_ids);
    tok_ids_free(&ids);
    const char *bad[] = {"<|image_2|><|image_1|>", "<|image_1|><|image_1|>", "<|image_1|>",
                         "<|image_1|><|image_2|><|image_3|>", "<|image_0|><|image_1|>"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(chat_prompt_to_ids(phi, bad[i], strlen(bad[i]), counts, 2, &ids, &err),
                         VLM_ERR_INVALID_ARG);
        assert_non_null(strstr(err.msg, "prompt"));
        tok_ids_free(&ids);
    }
    /* "<|image_x|>" and "<|image_|>" are text, not tags */
    const char *txt = "<|image_x|><|image_|>";
    assert_int_equal(chat_prompt_to_ids(phi, txt, strlen(txt), NULL, 0, &ids, &err), VLM_OK);
    assert_true(ids.n > 3);
    tok_ids_free(&ids);

    /* stop tokens */
    chat_stops s;
    const char *gc = "{\"eos_token_id\": [32007, 32000, 32007], \"bos_token_id\": 1}";
    assert_int_equal(chat_stops_from_generation_config(gc, strlen(gc), &s, &err), VLM_OK);
    assert_int_equal(s.n, 2);
    assert_true(chat_is_stop(&s, 32000));
    assert_true(chat_is_stop(&s, 32007));
    assert_false(chat_is_stop(&s, 2));
    const char *gc1 = "{\"eos_token_id\": 2}";
    assert_int_equal(chat_stops_from_generation_config(gc1, strlen(gc1), &s, &err), VLM_OK);
    assert_true(chat_is_stop(&s, 2));
    const char *gc2 = "{\"eos_token_id\": \"x\"}";
    assert_int_equal(chat_stops_from_generation_config(gc2, strlen(gc2), &s, &err), VLM_ERR_FORMAT);
    const int32_t rec[] = {32007, 32000, 2};
    assert_int_equal(chat_stops_init(&s, rec, 3, &err), VLM_OK);
    assert_true(chat_is_stop(&s, 2));
}

/* ---- allocation failure: every failing allocation gives OK or NOMEM ---- */

static void sweep(const char *json, const char *text) {
    for (uint64_t n = 1;; n++) {
        vlm_mem_stats a, b;
        vlm_alloc_get_stats(&a);
        uint64_t base = vlm_alloc_count();
        vlm_alloc_fail_at(base + n, false);
        tokenizer *t = NULL;
        vlm_err err = {0};
        vlm_status st = tokenizer_load_json(json, strlen(json), "test.json", &t, &err);
        tok_ids ids = {0};
        char *out = NULL;
        size_t ol;
        if (st == VLM_OK) st = tokenizer_encode(t, text, strlen(text), true, &ids, &err);
        if (st == VLM_OK) st = tokenizer_decode(t, ids.v, ids.n, false, &out, &ol, &err);
        if (st == VLM_OK && t->bpe.cache) {
            /* second encode: the cache path */
            ids.n = 0;
            st = tokenizer_encode(t, text, strlen(text), true, &ids, &err);
        }
        bool hit = vlm_alloc_count() >= base + n;
        vlm_alloc_fail_at(0, false);
        if (st != VLM_OK && st != VLM_ERR_NOMEM)
            fprintf(stderr, "fail_at %llu: %s\n", (unsigned long long)n, err.msg);
        assert_true(st == VLM_OK || st == VLM_ERR_NOMEM);
        vlm_free(out);
        tok_ids_free(&ids);
        tokenizer_free(t);
        vlm_alloc_get_stats(&b);
        assert_int_equal(b.total_current, a.total_current);
        if (!hit) break; /* the workload finished below the failure index */
    }
}

static void test_alloc_failures(void **state) {
    (void)state;
    sweep("{\"model\":{\"type\":\"BPE\",\"vocab\":{" CHAR_VOCAB
          ",\"12\":20,\"<0x41>\":21},\"merges\":[\"1 2\"],\"byte_fallback\":true,"
          "\"unk_token\":\"<unk>\"},"
          "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},"
          "{\"type\":\"Lowercase\"},{\"type\":\"Prepend\",\"prepend\":\" \"},{\"type\":"
          "\"Replace\",\"pattern\":{\"Regex\":\"b+\"},\"content\":\"c\"}]},"
          "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\"},"
          "{\"type\":\"Metaspace\",\"replacement\":\"-\",\"prepend_scheme\":\"first\"},"
          "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x+\"},\"behavior\":\"Isolated\"}]},"
          "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
          "{\"String\":\"-\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
          "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
          "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"b\",1],\"cls\":[\"a\",0]},"
          "\"added_tokens\":[{\"id\":30,\"content\":\"<m>\",\"normalized\":false,"
          "\"special\":true},{\"id\":31,\"content\":\"WD\",\"normalized\":true}]}",
          "ABC 12 x<m>wd A\xef\xac\x81 \xe2\x82\xac");
    char *j = bytelevel_json(",\"he\":256", "\"h e\"", "");
    sweep(j, "hello world, he's 123!  ");
    free(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_prompts),
        cmocka_unit_test(test_spec_examples),
        cmocka_unit_test(test_phi_decode),
        cmocka_unit_test(test_bad_text),
        cmocka_unit_test(test_meta_split_exact),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_split_behaviors),
        cmocka_unit_test(test_added_tokens),
        cmocka_unit_test(test_metaspace),
        cmocka_unit_test(test_digits_unk_affixes),
        cmocka_unit_test(test_normalizers),
        cmocka_unit_test(test_bytelevel),
        cmocka_unit_test(test_decoders),
        cmocka_unit_test(test_post_processor),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_chat),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
