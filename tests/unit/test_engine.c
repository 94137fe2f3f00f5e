/* The engine end to end (runtime/api) against the transformers reference
 * fixtures of tests/data/tiny (reference/phi3v_ref.py: CLIPVisionModel +
 * Phi3ForCausalLM in float32, the bf16 model's weights widened to f32):
 * input ids, CLIP states, projected features, logits at every position,
 * greedy ids; the session's turn rule; stops; seeds; thread counts; bad
 * models. Allocation failures: test_engine_faults. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/json.h"
#include "io/safetensors.h"
#include "models/phi3v.h"
#include "models/phi3v_image.h"
#include "runtime/api_internal.h"
#include "text/chat.h"
#include "vlm/vlm.h"

static const char *const cases[] = {"text_only", "one_image", "two_images", "multi_turn", "system"};
#define N_CASES 5

static vlm_model *load_model(const char *dtype, int threads) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/tiny/%s", dtype);
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = threads;
    vlm_model *m = NULL;
    vlm_err err;
    vlm_status st = vlm_model_load(tu_src(rel), &lo, &m, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    return m;
}

static cJSON *load_case(const char *dtype, const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/tiny/ref/%s/%s.json", dtype, name);
    cJSON *j = NULL;
    vlm_err err;
    vlm_json_init();
    assert_int_equal(vlm_json_parse_file(tu_src(rel), &j, &err), VLM_OK);
    return j;
}

static float *read_f32(const char *dtype, const char *name, const char *what, size_t *n) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/tiny/ref/%s/%s.%s.f32", dtype, name, what);
    size_t len = 0;
    float *v = tu_read_file(tu_src(rel), &len);
    assert_non_null(v);
    *n = len / sizeof(float);
    return v;
}

/* The images a case names, loaded. */
static int case_images(const cJSON *c, vlm_image **imgs) {
    const cJSON *a = cJSON_GetObjectItem(c, "images");
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        char rel[256];
        snprintf(rel, sizeof rel, "tests/data/tiny/images/%s", e->valuestring);
        vlm_err err;
        assert_int_equal(vlm_image_load(tu_src(rel), 0, &imgs[n], &err), VLM_OK);
        n++;
    }
    return n;
}

static int *json_ints(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int *v = malloc(sizeof(int) * (size_t)(*n ? *n : 1));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = (int)e->valuedouble;
    return v;
}

static double max_abs(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* One reference case: ids, features, CLIP states (f32), logits at every
 * position (column subset) and the full last row, greedy ids. */
static void check_case(vlm_model *m, const char *dtype, const char *name, double logit_tol) {
    cJSON *c = load_case(dtype, name);
    vlm_image *imgs[4] = {0};
    int n_img = case_images(c, imgs);
    const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
    vlm_err err;
    vlm_prompt p;
    vlm_status st = vlm_prompt_build(m, prompt, true, 0, imgs, n_img, &p, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);

    /* ids, image sizes and token counts as the processor gave them */
    int n_ref;
    int *ref_ids = json_ints(cJSON_GetObjectItem(c, "input_ids"), &n_ref);
    assert_int_equal((int)p.ids.n, n_ref);
    for (int i = 0; i < n_ref; i++) assert_int_equal(p.ids.v[i], ref_ids[i]);
    free(ref_ids);
    int n_tok;
    int *ntok = json_ints(cJSON_GetObjectItem(c, "num_img_tokens"), &n_tok);
    assert_int_equal(n_tok, n_img);
    for (int i = 0; i < n_img; i++) {
        assert_int_equal(p.img_tokens[i], ntok[i]);
        const cJSON *sz = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "image_sizes"), i);
        assert_int_equal(p.img_sizes[2 * i], (int)cJSON_GetArrayItem(sz, 0)->valuedouble);
        assert_int_equal(p.img_sizes[2 * i + 1], (int)cJSON_GetArrayItem(sz, 1)->valuedouble);
    }

    /* projected features of each image (f32: 1e-5 relative L2) */
    arch_model *am = vlm_model_arch(m);
    const int hidden = am->info.hidden;
    const float *rows = p.rows;
    for (int k = 0; k < n_img && !strcmp(dtype, "f32"); k++) {
        char what[32];
        snprintf(what, sizeof what, "features%d", k);
        size_t n;
        float *want = read_f32(dtype, name, what, &n);
        assert_int_equal(n, (size_t)ntok[k] * (size_t)hidden);
        double e = rel_l2(rows, want, n);
        fprintf(stderr, "%s/%s image %d features: rel L2 %.3g\n", dtype, name, k, e);
        assert_true(e <= 1e-5);
        rows += n;
        free(want);
    }
    free(ntok);

    /* CLIP hidden_states[-2] of image 0's real crops, CLS dropped */
    if (n_img > 0 && !strcmp(dtype, "f32")) {
        const phi3v_model *pm = am->impl;
        phi3v_pixels px;
        assert_int_equal(phi3v_preprocess(imgs[0], 4, false, &px, &err), VLM_OK);
        size_t n;
        float *want = read_f32(dtype, name, "clip0", &n);
        const clip_model *cm = &pm->clip;
        size_t per = (size_t)(cm->n_pos - 1) * (size_t)cm->cfg.hidden;
        assert_int_equal(n, (size_t)px.n_real * per);
        float *got = malloc(n * sizeof(float));
        float *ws =
            malloc(clip_workspace_floats(cm, 1, cpu_pool_threads(pm->pool)) * sizeof(float));
        clip_encode(cm, pm->pool, px.values, px.n_real, 1, got, ws);
        double e = rel_l2(got, want, n);
        fprintf(stderr, "%s/%s clip0: rel L2 %.3g\n", dtype, name, e);
        assert_true(e <= 1e-5);
        free(ws);
        free(got);
        free(want);
        phi3v_pixels_free(&px);
    }

    /* logits at every prompt position */
    const int vocab = am->info.vocab;
    float *logits = malloc(p.ids.n * (size_t)vocab * sizeof(float));
    vlm_session *vs = NULL;
    assert_int_equal(vlm_session_new(m, &vs, &err), VLM_OK);
    st = session_append(vlm_session_core(vs), p.ids.v, (int64_t)p.ids.n, p.rows, p.n_rows, logits,
                        &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    size_t n_cols_f, n_last;
    float *ref_cols = read_f32(dtype, name, "logits_cols", &n_cols_f);
    float *ref_last = read_f32(dtype, name, "logits_last", &n_last);
    size_t lc_len;
    char *lc_text = tu_read_file(tu_src("tests/data/tiny/logit_cols.json"), &lc_len);
    cJSON *lc = NULL;
    assert_int_equal(vlm_json_parse(lc_text, lc_len, "logit_cols.json", &lc, &err), VLM_OK);
    int n_cols;
    int *cols = json_ints(lc, &n_cols);
    assert_int_equal(n_cols_f, p.ids.n * (size_t)n_cols);
    double worst = 0;
    for (size_t t = 0; t < p.ids.n; t++)
        for (int j = 0; j < n_cols; j++) {
            double d = fabs((double)logits[t * (size_t)vocab + (size_t)cols[j]] -
                            (double)ref_cols[t * (size_t)n_cols + (size_t)j]);
            if (!(d <= worst)) worst = d;
        }
    assert_int_equal(n_last, (size_t)vocab);
    double last = max_abs(logits + (p.ids.n - 1) * (size_t)vocab, ref_last, (size_t)vocab);
    fprintf(stderr, "%s/%s: %zu tokens, logits max |diff| %.3g (all positions), %.3g (last row)\n",
            dtype, name, p.ids.n, worst, last);
    assert_true(worst <= logit_tol && last <= logit_tol);
    free(cols);
    cJSON_Delete(lc);
    free(lc_text);
    free(ref_cols);
    free(ref_last);
    free(logits);
    vlm_session_free(vs);

    /* greedy ids: 64 new tokens without early stop */
    assert_int_equal(vlm_session_new(m, &vs, &err), VLM_OK);
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = 64;
    gp.ignore_eos = true;
    char *answer = NULL;
    vlm_gen_stats stats;
    st = vlm_session_chat_raw(vs, prompt, imgs, n_img, &gp, &answer, &stats, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    int n_gen, n_want;
    const int32_t *gen = vlm_session_last_ids(vs, &n_gen);
    int *want = json_ints(cJSON_GetObjectItem(c, "greedy_ids"), &n_want);
    assert_int_equal(n_gen, n_want);
    for (int i = 0; i < n_want; i++) {
        if (gen[i] != want[i]) fprintf(stderr, "%s/%s greedy id %d differs\n", dtype, name, i);
        assert_int_equal(gen[i], want[i]);
    }
    assert_int_equal(stats.tokens_out, 64);
    assert_int_equal(stats.tokens_in, (int)p.ids.n);
    assert_string_equal(stats.stop_reason, "max_tokens");
    free(want);
    vlm_string_free(answer);
    vlm_session_free(vs);

    vlm_prompt_free(&p);
    for (int i = 0; i < n_img; i++) vlm_image_free(imgs[i]);
    cJSON_Delete(c);
}

static void test_reference_f32(void **state) {
    (void)state;
    vlm_model *m = load_model("f32", 2);
    for (int i = 0; i < N_CASES; i++) check_case(m, "f32", cases[i], 1e-4);
    vlm_model_free(m);
}

static void test_reference_bf16(void **state) {
    (void)state;
    vlm_model *m = load_model("bf16", 2);
    for (int i = 0; i < N_CASES; i++) check_case(m, "bf16", cases[i], 1e-2);
    vlm_model_free(m);
}

/* The session's turn rule applied to the multi_turn case's conversation
 * (answer "A red circle.") gives the ids the processor gives the whole
 * text: turn 1 with BOS chunks, the answer as plain text + <|end|>, turn 2
 * starting "\n<|user|>" without BOS. */
static void test_turn_rule_ids(void **state) {
    (void)state;
    vlm_model *m = load_model("f32", 1);
    cJSON *c = load_case("f32", "multi_turn");
    const tokenizer *tok = vlm_model_tokenizer(m);
    int n_ref;
    int *ref = json_ints(cJSON_GetObjectItem(c, "input_ids"), &n_ref);
    int32_t ntok =
        (int32_t)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "num_img_tokens"), 0)->valuedouble;
    tok_ids ids = {0};
    vlm_err err;
    const char *t1 = "<|user|>\n<|image_1|>\nWhat shape is this?<|end|>\n<|assistant|>\n";
    const char *t2 = "\n<|user|>\nAnd what colour is it?<|end|>\n<|assistant|>\n";
    assert_int_equal(chat_turn_to_ids(tok, t1, strlen(t1), true, 0, &ntok, 1, &ids, &err), VLM_OK);
    assert_int_equal(tokenizer_encode(tok, "A red circle.", 13, false, &ids, &err), VLM_OK);
    assert_int_equal(tok_ids_push(&ids, tokenizer_token_to_id(tok, "<|end|>", 7), &err), VLM_OK);
    assert_int_equal(chat_turn_to_ids(tok, t2, strlen(t2), false, 1, NULL, 0, &ids, &err), VLM_OK);
    assert_int_equal((int)ids.n, n_ref);
    for (int i = 0; i < n_ref; i++) assert_int_equal(ids.v[i], ref[i]);
    /* a later turn's image is numbered across the conversation */
    tok_ids_free(&ids);
    const char *t3 = "\n<|user|>\n<|image_2|>\nAnd this?<|end|>\n<|assistant|>\n";
    int32_t five = 5;
    assert_int_equal(chat_turn_to_ids(tok, t3, strlen(t3), false, 1, &five, 1, &ids, &err), VLM_OK);
    int neg = 0;
    for (size_t i = 0; i < ids.n; i++) neg += ids.v[i] == -2;
    assert_int_equal(neg, 5);
    assert_int_not_equal(ids.v[0], 1); /* no BOS at the start of a later turn */
    tok_ids_free(&ids);
    assert_int_equal(chat_turn_to_ids(tok, t3, strlen(t3), false, 0, &five, 1, &ids, &err),
                     VLM_ERR_INVALID_ARG);
    tok_ids_free(&ids);
    free(ref);
    cJSON_Delete(c);
    vlm_model_free(m);
}

/* Multi-turn through the public API: the logits after turn 2 is appended to
 * the live session equal a fresh prefill of the whole conversation. */
static void test_multiturn_live_equals_fresh(void **state) {
    (void)state;
    vlm_model *m = load_model("f32", 2);
    vlm_image *img = NULL;
    vlm_err err;
    assert_int_equal(vlm_image_load(tu_src("tests/data/tiny/images/portrait.png"), 0, &img, &err),
                     VLM_OK);
    vlm_session *s = NULL;
    assert_int_equal(vlm_session_new(m, &s, &err), VLM_OK);
    assert_int_equal(vlm_session_set_system(s, "Be brief.", &err), VLM_OK);
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = 12;
    gp.ignore_eos = true;
    char *a1 = NULL;
    vlm_gen_stats st1, st2;
    assert_int_equal(vlm_session_chat(s, "What shape is this?", &img, 1, &gp, &a1, &st1, &err),
                     VLM_OK);
    int n1;
    const int32_t *g1 = vlm_session_last_ids(s, &n1);
    assert_int_equal(n1, 12);
    int32_t gen1[12];
    memcpy(gen1, g1, sizeof gen1);
    /* set_system only before the first turn */
    assert_int_equal(vlm_session_set_system(s, "x", &err), VLM_ERR_INVALID_ARG);
    /* turn 2 with a second image; max_tokens 0 leaves the prefill's logits */
    gp.max_tokens = 0;
    char *a2 = NULL;
    assert_int_equal(vlm_session_chat(s, "And this one?", &img, 1, &gp, &a2, &st2, &err), VLM_OK);
    assert_string_equal(a2, "");
    const int vocab = vlm_model_arch(m)->info.vocab;
    float *live = malloc((size_t)vocab * sizeof(float));
    memcpy(live, session_logits(vlm_session_core(s)), (size_t)vocab * sizeof(float));
    /* only the new tokens were prefilled: <|end|> + turn 2 */
    vlm_prompt t2;
    assert_int_equal(
        vlm_prompt_build(m, "\n<|user|>\n<|image_2|>\nAnd this one?<|end|>\n<|assistant|>\n", false,
                         1, &img, 1, &t2, &err),
        VLM_OK);
    assert_int_equal(st2.tokens_in, (int)t2.ids.n + 1);
    assert_int_equal(st2.image_tokens, (int)t2.n_rows);

    /* the whole conversation, fresh */
    vlm_prompt t1;
    assert_int_equal(vlm_prompt_build(m,
                                      "<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\nWhat "
                                      "shape is this?<|end|>\n<|assistant|>\n",
                                      true, 0, &img, 1, &t1, &err),
                     VLM_OK);
    assert_int_equal(st1.tokens_in, (int)t1.ids.n);
    tok_ids all = {0};
    for (size_t i = 0; i < t1.ids.n; i++) tok_ids_push(&all, t1.ids.v[i], &err);
    for (int i = 0; i < 12; i++) tok_ids_push(&all, gen1[i], &err);
    tok_ids_push(&all, tokenizer_token_to_id(vlm_model_tokenizer(m), "<|end|>", 7), &err);
    for (size_t i = 0; i < t2.ids.n; i++) tok_ids_push(&all, t2.ids.v[i], &err);
    const int hidden = vlm_model_arch(m)->info.hidden;
    float *rows = malloc((size_t)(t1.n_rows + t2.n_rows) * (size_t)hidden * sizeof(float));
    memcpy(rows, t1.rows, (size_t)t1.n_rows * (size_t)hidden * sizeof(float));
    memcpy(rows + t1.n_rows * hidden, t2.rows, (size_t)t2.n_rows * (size_t)hidden * sizeof(float));
    vlm_session *f = NULL;
    assert_int_equal(vlm_session_new(m, &f, &err), VLM_OK);
    assert_int_equal(session_append(vlm_session_core(f), all.v, (int64_t)all.n, rows,
                                    t1.n_rows + t2.n_rows, NULL, &err),
                     VLM_OK);
    double d = max_abs(live, session_logits(vlm_session_core(f)), (size_t)vocab);
    fprintf(stderr, "live vs fresh (%zu tokens): max |diff| %.3g\n", all.n, d);
    assert_true(d <= 1e-5);
    /* the conversation crossed the LongRoPE switch (512) in the live session */
    assert_true(all.n > 512);

    /* reset: the next turn is a first turn again */
    vlm_session_reset(s);
    gp.max_tokens = 3;
    char *a3 = NULL;
    assert_int_equal(vlm_session_chat(s, "Hi", NULL, 0, &gp, &a3, &st1, &err), VLM_OK);
    vlm_prompt t3;
    assert_int_equal(vlm_prompt_build(m,
                                      "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n"
                                      "<|assistant|>\n",
                                      true, 0, NULL, 0, &t3, &err),
                     VLM_OK);
    assert_int_equal(st1.tokens_in, (int)t3.ids.n);

    vlm_prompt_free(&t1);
    vlm_prompt_free(&t2);
    vlm_prompt_free(&t3);
    tok_ids_free(&all);
    free(rows);
    free(live);
    vlm_string_free(a1);
    vlm_string_free(a2);
    vlm_string_free(a3);
    vlm_session_free(f);
    vlm_session_free(s);
    vlm_image_free(img);
    vlm_model_free(m);
}

typedef struct streamed {
    char buf[8192];
    size_t len;
    int calls, stop_after;
} streamed;

static bool on_text(void *user, const char *piece, size_t len) {
    streamed *s = user;
    assert_true(s->len + len < sizeof s->buf);
    memcpy(s->buf + s->len, piece, len);
    s->len += len;
    s->buf[s->len] = '\0';
    s->calls++;
    return !(s->stop_after && s->calls >= s->stop_after);
}

static char *chat_once(vlm_model *m, const vlm_gen_params *gp, vlm_gen_stats *st) {
    vlm_session *s = NULL;
    vlm_err err;
    assert_int_equal(vlm_session_new(m, &s, &err), VLM_OK);
    char *a = NULL;
    vlm_status r = vlm_session_chat(s, "Tell me a story.", NULL, 0, gp, &a, st, &err);
    if (r) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(r, VLM_OK);
    vlm_session_free(s);
    return a;
}

/* Same seed, same text; another seed, another text; streaming pieces add up
 * to the answer; stop strings cut the answer before them. */
static void test_sampling_and_stops(void **state) {
    (void)state;
    vlm_model *m = load_model("f32", 2);
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = 24;
    gp.temperature = 1.0f;
    gp.top_k = 50;
    gp.seed = 7;
    vlm_gen_stats st;
    char *a = chat_once(m, &gp, &st), *b = chat_once(m, &gp, &st);
    assert_string_equal(a, b);
    gp.seed = 8;
    char *c = chat_once(m, &gp, &st);
    assert_string_not_equal(a, c);
    vlm_string_free(a);
    vlm_string_free(b);
    vlm_string_free(c);

    /* greedy, streamed */
    vlm_gen_params_init(&gp);
    gp.max_tokens = 40;
    gp.ignore_eos = true;
    streamed sm = {0};
    gp.on_text = on_text;
    gp.user = &sm;
    char *full = chat_once(m, &gp, &st);
    assert_string_equal(sm.buf, full);
    assert_string_equal(st.stop_reason, "max_tokens");
    assert_int_equal(st.tokens_out, 40);
    assert_true(st.first_token_ms >= st.prefill_ms && st.decode_tps > 0);
    size_t flen = strlen(full);
    assert_true(flen > 20);
    /* a stop string from the middle of the greedy answer */
    char stop[8];
    memcpy(stop, full + flen / 2, 4);
    stop[4] = '\0';
    const char *first = strstr(full, stop);
    size_t cut = (size_t)(first - full);
    const char *stops[2] = {"no such text \x01", stop};
    gp.stop = stops;
    gp.n_stop = 2;
    memset(&sm, 0, sizeof sm);
    char *s1 = chat_once(m, &gp, &st);
    assert_int_equal(strlen(s1), cut);
    assert_memory_equal(s1, full, cut);
    assert_string_equal(sm.buf, s1); /* nothing of the stop string was streamed */
    assert_string_equal(st.stop_reason, "stop_string");
    vlm_string_free(s1);
    /* the callback stops generation */
    gp.n_stop = 0;
    memset(&sm, 0, sizeof sm);
    sm.stop_after = 2;
    char *s2 = chat_once(m, &gp, &st);
    assert_string_equal(st.stop_reason, "callback");
    assert_true(st.tokens_out < 40);
    vlm_string_free(s2);
    vlm_string_free(full);
    vlm_model_free(m);
}

/* Symlink every file of the tiny bf16 model into dir except `skip`. */
static void link_model(const char *dir, const char *skip) {
    static const char *const files[] = {"config.json",
                                        "generation_config.json",
                                        "model.safetensors",
                                        "preprocessor_config.json",
                                        "special_tokens_map.json",
                                        "tokenizer.json",
                                        "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        if (skip && !strcmp(files[i], skip)) continue;
        char src[1024], dst[1024];
        snprintf(src, sizeof src, "%s/%s", tu_src("tests/data/tiny/bf16"), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        assert_int_equal(symlink(src, dst), 0);
    }
}

/* The generation_config stop ids end generation (reason "eos"; the stop
 * token is not in the answer). A copy of the bf16 model whose
 * generation_config names the 6th greedy token of text_only. */
static void test_eos_from_generation_config(void **state) {
    (void)state;
    cJSON *c = load_case("bf16", "text_only");
    int n_want;
    int *want = json_ints(cJSON_GetObjectItem(c, "greedy_ids"), &n_want);
    int stop_at = -1;
    for (int i = 3; i < n_want && stop_at < 0; i++) {
        bool earlier = false;
        for (int j = 0; j < i; j++) earlier |= want[j] == want[i];
        if (!earlier) stop_at = i;
    }
    assert_true(stop_at > 0);
    char *dir = tu_mkdtemp();
    link_model(dir, "generation_config.json");
    char path[1024], text[128];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    snprintf(text, sizeof text, "{\"eos_token_id\": [%d, 32007]}", want[stop_at]);
    assert_true(tu_write_file(path, text, strlen(text)));
    vlm_model *m = NULL;
    vlm_err err;
    assert_int_equal(vlm_model_load(dir, NULL, &m, &err), VLM_OK);
    vlm_session *s = NULL;
    assert_int_equal(vlm_session_new(m, &s, &err), VLM_OK);
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = 64;
    char *a = NULL;
    vlm_gen_stats st;
    const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
    assert_int_equal(vlm_session_chat_raw(s, prompt, NULL, 0, &gp, &a, &st, &err), VLM_OK);
    assert_string_equal(st.stop_reason, "eos");
    assert_int_equal(st.tokens_out, stop_at + 1);
    int n;
    const int32_t *ids = vlm_session_last_ids(s, &n);
    char *expect = NULL;
    size_t elen;
    assert_int_equal(
        tokenizer_decode(vlm_model_tokenizer(m), ids, (size_t)stop_at, true, &expect, &elen, &err),
        VLM_OK);
    assert_string_equal(a, expect);
    vlm_free(expect);
    vlm_string_free(a);
    vlm_session_free(s);
    vlm_model_free(m);
    tu_rmtree(dir);
    free(dir);
    free(want);
    cJSON_Delete(c);
}

/* The logits do not depend on the thread count (bit for bit). */
static void test_threads_bit_identical(void **state) {
    (void)state;
    float *out[3] = {0};
    const int threads[3] = {1, 2, 3};
    vlm_image *img = NULL;
    vlm_err err;
    assert_int_equal(vlm_image_load(tu_src("tests/data/tiny/images/wide.png"), 0, &img, &err),
                     VLM_OK);
    size_t n = 0;
    for (int t = 0; t < 3; t++) {
        vlm_model *m = load_model("bf16", threads[t]);
        vlm_model_desc d;
        vlm_model_describe(m, &d);
        assert_int_equal(d.n_threads, threads[t]);
        vlm_prompt p;
        assert_int_equal(vlm_prompt_build(m,
                                          "<|user|>\n<|image_1|>\nWhat is it?<|end|>\n"
                                          "<|assistant|>\n",
                                          true, 0, &img, 1, &p, &err),
                         VLM_OK);
        const int vocab = vlm_model_arch(m)->info.vocab;
        n = p.ids.n * (size_t)vocab;
        out[t] = malloc(n * sizeof(float));
        vlm_session *s = NULL;
        assert_int_equal(vlm_session_new(m, &s, &err), VLM_OK);
        assert_int_equal(session_append(vlm_session_core(s), p.ids.v, (int64_t)p.ids.n, p.rows,
                                        p.n_rows, out[t], &err),
                         VLM_OK);
        vlm_session_free(s);
        vlm_prompt_free(&p);
        vlm_model_free(m);
    }
    assert_memory_equal(out[0], out[1], n * sizeof(float));
    assert_memory_equal(out[0], out[2], n * sizeof(float));
    for (int t = 0; t < 3; t++) free(out[t]);
    vlm_image_free(img);
}

static void test_describe(void **state) {
    (void)state;
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.num_crops = 9;
    lo.max_context = 1024;
    vlm_model *m = NULL;
    vlm_err err;
    assert_int_equal(vlm_model_load(tu_src("tests/data/tiny/f32"), &lo, &m, &err), VLM_OK);
    vlm_model_desc d;
    vlm_model_describe(m, &d);
    assert_string_equal(d.arch, "Phi3VForCausalLM");
    assert_string_equal(d.dtype, "f32");
    assert_int_equal(d.num_crops, 9);
    assert_int_equal(d.context, 1024);
    assert_int_equal(d.vocab, 32064);
    assert_int_equal(d.n_layers, 2);
    /* every stored tensor is 4 bytes a parameter in the f32 model */
    assert_true(d.params_total > 0 && d.params_lm > d.params_vision);
    assert_true(d.weight_bytes >= 4 * d.params_total);
    vlm_model_free(m);
    /* the bf16 model stores 2 bytes a parameter */
    vlm_load_options_init(&lo);
    assert_int_equal(vlm_model_load(tu_src("tests/data/tiny/bf16"), &lo, &m, &err), VLM_OK);
    vlm_model_describe(m, &d);
    assert_string_equal(d.dtype, "bf16");
    assert_int_equal(d.num_crops, 4);
    assert_int_equal(d.context, 4096);
    assert_true(d.weight_bytes >= 2 * d.params_total && d.weight_bytes < 3 * d.params_total);
    vlm_model_free(m);
}

/* ---------------------------------------------------------------------------
 * bad models: each a clear error, no crash, no leak */

/* Write dir/model.safetensors from the tiny bf16 tensors, with `edit`
 * applied to the tensor named `name`. */
typedef enum { EDIT_DROP, EDIT_SHAPE, EDIT_DTYPE } edit_kind;

static void write_edited(const char *dir, const char *name, edit_kind edit) {
    vlm_tensor_set *set = NULL;
    vlm_err err;
    assert_int_equal(vlm_tensor_set_open(tu_src("tests/data/tiny/bf16"), &set, &err), VLM_OK);
    size_t n = vlm_tensor_set_count(set), k = 0;
    vlm_st_wtensor *w = calloc(n, sizeof *w);
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        const vlm_st_tensor *t = vlm_tensor_set_at(set, i);
        vlm_st_wtensor x = {t->name, t->dtype, t->rank, {0}, t->data, 0};
        memcpy(x.shape, t->shape, sizeof x.shape);
        if (!strcmp(t->name, name)) {
            found = true;
            if (edit == EDIT_DROP) continue;
            if (edit == EDIT_SHAPE) x.shape[0] -= 1;         /* a shorter first axis */
            if (edit == EDIT_DTYPE) x.dtype = VLM_DTYPE_I16; /* same bytes, not a float */
        }
        w[k++] = x;
    }
    assert_true(found);
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(vlm_st_write(path, w, k, NULL, 0, NULL, NULL, &err), VLM_OK);
    free(w);
    vlm_tensor_set_close(set);
}

static void expect_load_error(const char *dir, vlm_status want, const char *needle) {
    vlm_mem_stats before, after;
    vlm_alloc_get_stats(&before);
    vlm_model *m = NULL;
    vlm_err err = {0};
    vlm_status st = vlm_model_load(dir, NULL, &m, &err);
    if (st != want || !strstr(err.msg, needle))
        fprintf(stderr, "want %s with \"%s\", got %s: %s\n", vlm_status_name(want), needle,
                vlm_status_name(st), err.msg);
    assert_int_equal(st, want);
    assert_non_null(strstr(err.msg, needle));
    assert_null(m);
    vlm_alloc_get_stats(&after);
    assert_int_equal(after.total_current, before.total_current);
    assert_int_equal(after.mapped_current, before.mapped_current);
}

static char *bad_model(const char *skip) {
    char *dir = tu_mkdtemp();
    link_model(dir, skip);
    return dir;
}

static void write_config(const char *dir, const char *from, const char *to) {
    size_t len;
    char *text = tu_read_file(tu_src("tests/data/tiny/bf16/config.json"), &len);
    char *at = strstr(text, from);
    assert_non_null(at);
    size_t out_cap = len + strlen(to) + 1;
    char *out = malloc(out_cap);
    size_t pre = (size_t)(at - text);
    memcpy(out, text, pre);
    strcpy(out + pre, to);
    strcat(out, at + strlen(from));
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_true(tu_write_file(path, out, strlen(out)));
    free(out);
    free(text);
}

static void test_bad_models(void **state) {
    (void)state;
    static const char qkv[] = "model.layers.1.self_attn.qkv_proj.weight";
    char *d = bad_model("model.safetensors");
    write_edited(d, qkv, EDIT_DROP);
    expect_load_error(d, VLM_ERR_NOT_FOUND, qkv);
    tu_rmtree(d);
    free(d);
    d = bad_model("model.safetensors");
    write_edited(d, qkv, EDIT_SHAPE);
    expect_load_error(d, VLM_ERR_FORMAT, qkv);
    tu_rmtree(d);
    free(d);
    d = bad_model("model.safetensors");
    write_edited(d, "model.norm.weight", EDIT_DTYPE);
    expect_load_error(d, VLM_ERR_FORMAT, "model.norm.weight");
    tu_rmtree(d);
    free(d);
    d = bad_model("config.json");
    write_config(d, "\"architectures\": [\n    \"Phi3VForCausalLM\"\n  ],", "");
    expect_load_error(d, VLM_ERR_FORMAT, "architectures");
    tu_rmtree(d);
    free(d);
    d = bad_model("config.json");
    write_config(d, "\"Phi3VForCausalLM\"", "\"MysteryForCausalLM\"");
    expect_load_error(d, VLM_ERR_UNSUPPORTED, "MysteryForCausalLM");
    tu_rmtree(d);
    free(d);
    d = bad_model("tokenizer.json");
    expect_load_error(d, VLM_ERR_NOT_FOUND, "tokenizer.json");
    tu_rmtree(d);
    free(d);
    d = bad_model("model.safetensors");
    expect_load_error(d, VLM_ERR_NOT_FOUND, d);
    tu_rmtree(d);
    free(d);
    expect_load_error(tu_src("tests/data/tiny/no-such-model"), VLM_ERR_NOT_FOUND, "no-such-model");
    d = bad_model(NULL);
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.device = "cuda";
    vlm_model *m = NULL;
    vlm_err err;
    assert_int_equal(vlm_model_load(d, &lo, &m, &err), VLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "cuda"));
    tu_rmtree(d);
    free(d);
}

/* A prompt longer than the context: VLM_ERR_LIMIT, and the session stays
 * usable. Bad arguments are refused. */
static void test_context_and_args(void **state) {
    (void)state;
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.max_context = 64;
    vlm_model *m = NULL;
    vlm_err err;
    assert_int_equal(vlm_model_load(tu_src("tests/data/tiny/bf16"), &lo, &m, &err), VLM_OK);
    vlm_session *s = NULL;
    assert_int_equal(vlm_session_new(m, &s, &err), VLM_OK);
    char longp[2048];
    memset(longp, 0, sizeof longp);
    for (int i = 0; i < 100; i++) strcat(longp, "word ");
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = 4;
    char *a = NULL;
    vlm_gen_stats st;
    assert_int_equal(vlm_session_chat(s, longp, NULL, 0, &gp, &a, &st, &err), VLM_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "context"));
    assert_null(a);
    /* an image of 469 tokens does not fit 64 either */
    vlm_image *img = NULL;
    assert_int_equal(vlm_image_load(tu_src("tests/data/tiny/images/portrait.png"), 0, &img, &err),
                     VLM_OK);
    assert_int_equal(vlm_session_chat(s, "x", &img, 1, &gp, &a, &st, &err), VLM_ERR_LIMIT);
    /* still a first turn: the next one works, and fills the context */
    gp.max_tokens = 100;
    assert_int_equal(vlm_session_chat(s, "Hi", NULL, 0, &gp, &a, &st, &err), VLM_OK);
    assert_true(!strcmp(st.stop_reason, "context") || !strcmp(st.stop_reason, "eos"));
    vlm_string_free(a);
    gp.max_tokens = -1;
    assert_int_equal(vlm_session_chat(s, "Hi", NULL, 0, &gp, &a, &st, &err), VLM_ERR_INVALID_ARG);
    vlm_gen_params_init(&gp);
    assert_int_equal(vlm_session_chat(s, NULL, NULL, 0, &gp, &a, &st, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_session_chat(s, "x", NULL, 2, &gp, &a, &st, &err), VLM_ERR_INVALID_ARG);
    /* a raw prompt needs an empty session and tags matching the images */
    assert_int_equal(vlm_session_chat_raw(s, "<|user|>\nx<|end|>\n", NULL, 0, &gp, &a, &st, &err),
                     VLM_ERR_INVALID_ARG);
    vlm_session_reset(s);
    assert_int_equal(
        vlm_session_chat_raw(s, "<|user|>\n<|image_1|>\nx", NULL, 0, &gp, &a, &st, &err),
        VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "image"));
    vlm_image_free(img);
    vlm_session_free(s);
    vlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_f32),
        cmocka_unit_test(test_reference_bf16),
        cmocka_unit_test(test_turn_rule_ids),
        cmocka_unit_test(test_multiturn_live_equals_fresh),
        cmocka_unit_test(test_sampling_and_stops),
        cmocka_unit_test(test_eos_from_generation_config),
        cmocka_unit_test(test_threads_bit_identical),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_context_and_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
