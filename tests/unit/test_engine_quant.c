/* Load-time quantization on the tiny bf16 fixture (tests/data/tiny/bf16)
 * against its transformers references (tests/data/tiny/ref/bf16, computed
 * from the unquantized bf16 weights): q8_0 logits (the whole last row)
 * within 2e-2 relative L2 and the first greedy token identical on the 5
 * prompts; the divergence step of 32 greedy ids and the q4_0 / q4_K drift
 * are printed (docs/planner.md records them: the tiny model's random
 * weights leave near-ties among its 32,064 logits, so later greedy steps
 * flip under q8_0 noise on 2 of the 5 prompts) and bounded loosely. Also: the quantized CPU matmul
 * against the dequantized weights and across thread counts, what the policy quantizes in the tiny
 * model, and the accounted peak while loading (no second full-precision copy); and on the trained
 * demo model (models/demo), q8_0's greedy ids against native's (test_demo_greedy). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/ops.h"
#include "base/alloc.h"
#include "base/json.h"
#include "runtime/api_internal.h"
#include "runtime/planner.h"
#include "tensor/quant.h"
#include "vlm/vlm.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#else
#define SLOW_BUILD 0
#endif

static const char *const cases[] = {"text_only", "one_image", "two_images", "multi_turn", "system"};
#define N_CASES  5
#define N_GREEDY 32

static vlm_model *load_at(const char *prec, int threads) {
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = threads;
    lo.precision = prec;
    vlm_model *m = NULL;
    vlm_err err;
    vlm_status st = vlm_model_load(tu_src("tests/data/tiny/bf16"), &lo, &m, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    return m;
}

static cJSON *load_case(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/tiny/ref/bf16/%s.json", name);
    cJSON *j = NULL;
    vlm_err err;
    vlm_json_init();
    assert_int_equal(vlm_json_parse_file(tu_src(rel), &j, &err), VLM_OK);
    return j;
}

static float *read_f32(const char *name, const char *what, size_t *n) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/tiny/ref/bf16/%s.%s.f32", name, what);
    size_t len = 0;
    float *v = tu_read_file(tu_src(rel), &len);
    assert_non_null(v);
    *n = len / sizeof(float);
    return v;
}

static int *json_ints(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int *v = malloc(sizeof(int) * (size_t)(*n ? *n : 1));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = (int)e->valuedouble;
    return v;
}

typedef struct drift {
    double rel;     /* max |logit - ref| / max |ref|, over the compared logits */
    double rel_l2;  /* ||logits - ref|| / ||ref|| over the last row (the whole vocabulary) */
    int first_diff; /* first greedy step that differs from the reference; -1: none in N_GREEDY */
} drift;

/* One case at the model's precision: the logits at every position (the
 * fixture's column subset) and the whole last row against the reference,
 * then N_GREEDY greedy ids. */
static drift run_case(vlm_model *m, const char *name) {
    drift d = {0, 0, -1};
    cJSON *c = load_case(name);
    vlm_image *imgs[4] = {0};
    int n_img = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "images")) {
        char rel[256];
        snprintf(rel, sizeof rel, "tests/data/tiny/images/%s", e->valuestring);
        vlm_err err;
        assert_int_equal(vlm_image_load(tu_src(rel), 0, &imgs[n_img], &err), VLM_OK);
        n_img++;
    }
    const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
    vlm_err err;
    vlm_prompt p;
    assert_int_equal(vlm_prompt_build(m, prompt, true, 0, imgs, n_img, &p, &err), VLM_OK);
    const int vocab = vlm_model_arch(m)->info.vocab;
    float *logits = malloc(p.ids.n * (size_t)vocab * sizeof(float));
    vlm_session *vs = NULL;
    assert_int_equal(vlm_session_new(m, &vs, &err), VLM_OK);
    assert_int_equal(session_append(vlm_session_core(vs), p.ids.v, (int64_t)p.ids.n, p.rows,
                                    p.n_rows, logits, &err),
                     VLM_OK);
    vlm_session_free(vs);
    size_t n_cols_f, n_last, lc_len;
    float *ref_cols = read_f32(name, "logits_cols", &n_cols_f);
    float *ref_last = read_f32(name, "logits_last", &n_last);
    char *lc_text = tu_read_file(tu_src("tests/data/tiny/logit_cols.json"), &lc_len);
    cJSON *lc = NULL;
    assert_int_equal(vlm_json_parse(lc_text, lc_len, "logit_cols.json", &lc, &err), VLM_OK);
    int n_cols;
    int *cols = json_ints(lc, &n_cols);
    assert_int_equal(n_cols_f, p.ids.n * (size_t)n_cols);
    assert_int_equal(n_last, (size_t)vocab);
    double worst = 0, scale = 0;
    for (size_t t = 0; t < p.ids.n; t++)
        for (int j = 0; j < n_cols; j++) {
            double r = ref_cols[t * (size_t)n_cols + (size_t)j];
            double dd = fabs((double)logits[t * (size_t)vocab + (size_t)cols[j]] - r);
            if (!(dd <= worst)) worst = dd;
            if (fabs(r) > scale) scale = fabs(r);
        }
    const float *last = logits + (p.ids.n - 1) * (size_t)vocab;
    double num = 0, den = 0;
    for (int j = 0; j < vocab; j++) {
        double dd = (double)last[j] - (double)ref_last[j];
        num += dd * dd;
        den += (double)ref_last[j] * ref_last[j];
    }
    d.rel_l2 = sqrt(num / (den > 0 ? den : 1));
    for (int j = 0; j < vocab; j++) {
        double dd = fabs((double)last[j] - (double)ref_last[j]);
        if (!(dd <= worst)) worst = dd;
        if (fabs((double)ref_last[j]) > scale) scale = fabs((double)ref_last[j]);
    }
    d.rel = worst / (scale > 0 ? scale : 1);
    free(cols);
    cJSON_Delete(lc);
    free(lc_text);
    free(ref_cols);
    free(ref_last);
    free(logits);

    assert_int_equal(vlm_session_new(m, &vs, &err), VLM_OK);
    vlm_gen_params gp;
    vlm_gen_params_init(&gp);
    gp.max_tokens = N_GREEDY;
    gp.ignore_eos = true;
    char *answer = NULL;
    vlm_gen_stats stats;
    assert_int_equal(vlm_session_chat_raw(vs, prompt, imgs, n_img, &gp, &answer, &stats, &err),
                     VLM_OK);
    int n_gen, n_want;
    const int32_t *gen = vlm_session_last_ids(vs, &n_gen);
    int *want = json_ints(cJSON_GetObjectItem(c, "greedy_ids"), &n_want);
    assert_true(n_want >= N_GREEDY);
    assert_int_equal(n_gen, N_GREEDY);
    for (int i = 0; i < N_GREEDY && d.first_diff < 0; i++)
        if (gen[i] != want[i]) d.first_diff = i;
    free(want);
    vlm_string_free(answer);
    vlm_session_free(vs);
    vlm_prompt_free(&p);
    for (int i = 0; i < n_img; i++) vlm_image_free(imgs[i]);
    cJSON_Delete(c);
    return d;
}

/* rel_tol bounds the last row's relative L2 error; max_tol the max error
 * over every compared logit relative to the largest reference logit;
 * first_ok: the first greedy token must match. */
static void check_precision(const char *prec, double rel_tol, double max_tol, bool first_ok) {
    vlm_model *m = load_at(prec, 2);
    vlm_model_desc md;
    vlm_model_describe(m, &md);
    assert_string_equal(md.precision, prec);
    assert_true(md.degraded);
    double worst = 0;
    for (int i = 0; i < N_CASES; i++) {
        drift d = run_case(m, cases[i]);
        fprintf(stderr,
                "%s %-10s logits max rel error %.3e, last row rel L2 %.3e, first greedy "
                "divergence %d\n",
                prec, cases[i], d.rel, d.rel_l2, d.first_diff);
        if (d.rel > worst) worst = d.rel;
        assert_true(d.rel_l2 <= rel_tol);
        assert_true(d.rel <= max_tol);
        if (first_ok) assert_int_not_equal(d.first_diff, 0);
    }
    fprintf(stderr, "%s: worst logits rel error %.3e\n", prec, worst);
    vlm_model_free(m);
}

static void test_q8_0_quality(void **state) {
    (void)state;
    check_precision("q8_0", 2e-2, 5e-2, true);
}

/* q4: the drift is recorded (docs/planner.md); bounded loosely so that a
 * broken kernel (garbage logits) still fails. */
static void test_q4_drift(void **state) {
    (void)state;
    check_precision("q4_0", 0.25, 0.5, false);
    check_precision("q4_K", 0.25, 0.5, false);
}

/* The trained demo model (models/demo: width 256, confident logits) on the
 * first DEMO_CASES prompts of suites/smoke, each with its image: greedy ids
 * of 32 new tokens (ignore_eos) at q8_0, q4_0 and q4_K against native's,
 * whose answers test_demo_equivalence.sh holds to PyTorch's. q8_0 must give
 * native's answer ids, through the first <|end|>, on every case, and all 32
 * ids on all but one (past <|end|> the model continues text it was never
 * trained on, where near-ties exist); the divergence steps at every
 * precision are printed (docs/planner.md records them). */
#define DEMO_END_ID 1027 /* <|end|> in the demo tokenizer */
#define DEMO_CASES  6

static void demo_ids(const char *prec, int32_t ids[DEMO_CASES][N_GREEDY]) {
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = 2;
    lo.precision = prec;
    vlm_model *m = NULL;
    vlm_err err;
    vlm_status st = vlm_model_load(tu_src("models/demo"), &lo, &m, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    size_t len;
    char *text = tu_read_file(tu_src("suites/smoke/cases.jsonl"), &len);
    assert_non_null(text);
    char *line = text;
    for (int k = 0; k < DEMO_CASES; k++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        cJSON *c = NULL;
        assert_int_equal(vlm_json_parse(line, (size_t)(nl - line), "cases.jsonl", &c, &err),
                         VLM_OK);
        line = nl + 1;
        char rel[256];
        snprintf(rel, sizeof rel, "suites/smoke/%s",
                 cJSON_GetArrayItem(cJSON_GetObjectItem(c, "images"), 0)->valuestring);
        vlm_image *img = NULL;
        assert_int_equal(vlm_image_load(tu_src(rel), 0, &img, &err), VLM_OK);
        vlm_session *vs = NULL;
        assert_int_equal(vlm_session_new(m, &vs, &err), VLM_OK);
        vlm_gen_params gp;
        vlm_gen_params_init(&gp);
        gp.max_tokens = N_GREEDY;
        gp.ignore_eos = true;
        char *answer = NULL;
        st = vlm_session_chat(vs, cJSON_GetObjectItem(c, "prompt")->valuestring, &img, 1, &gp,
                              &answer, NULL, &err);
        if (st) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(st, VLM_OK);
        int n;
        const int32_t *gen = vlm_session_last_ids(vs, &n);
        assert_int_equal(n, N_GREEDY);
        memcpy(ids[k], gen, sizeof ids[k]);
        vlm_string_free(answer);
        vlm_session_free(vs);
        vlm_image_free(img);
        cJSON_Delete(c);
    }
    free(text);
    vlm_model_free(m);
}

static int first_diff(const int32_t *a, const int32_t *b) {
    for (int i = 0; i < N_GREEDY; i++)
        if (a[i] != b[i]) return i;
    return -1;
}

static void test_demo_greedy(void **state) {
    (void)state;
    static int32_t native[DEMO_CASES][N_GREEDY], got[DEMO_CASES][N_GREEDY];
    demo_ids(NULL, native);
    static const char *const precs[] = {"q8_0", "q4_0", "q4_K", "q4_0_all"};
    /* under a sanitizer only the asserted precision (the q4 figures are a record) */
    for (int p = 0; p < (SLOW_BUILD ? 1 : 4); p++) {
        demo_ids(precs[p], got);
        int same = 0, same_answer = 0;
        fprintf(stderr, "demo %s vs native, first divergence (answer length) per case:", precs[p]);
        for (int k = 0; k < DEMO_CASES; k++) {
            int d = first_diff(native[k], got[k]);
            int end = 0;
            while (end < N_GREEDY && native[k][end] != DEMO_END_ID) end++;
            same += d < 0;
            same_answer += d < 0 || d > end;
            fprintf(stderr, " %d (%d)", d, end + 1);
        }
        fprintf(stderr, "; %d of %d answers identical, %d identical for %d tokens\n", same_answer,
                DEMO_CASES, same, N_GREEDY);
        if (p == 0) {
            assert_int_equal(same_answer, DEMO_CASES);
            assert_true(same >= DEMO_CASES - 1);
        }
        /* q4_0_all (the last degraded rung: every matrix 4-bit) still
         * answers as native does on all but two prompts (the shipped model
         * changes none; the one before changed smoke-004 "2" to "3" and
         * smoke-005 "left" to "right"; garbage logits match none;
         * docs/planner.md) */
        if (p == 3) assert_true(same_answer >= DEMO_CASES - 2);
    }
}

/* Which tensors the policy quantizes in the tiny model, and the loader
 * agrees: weight bytes as the planner counts them. In the tiny model the
 * matrices are 32 wide (rows of one 32-block) or 64/128: q4_K (256-blocks)
 * cannot tile them, so q4_K loads as q4_0 tensor for tensor. */
static void test_policy_tiny(void **state) {
    (void)state;
    plan_model pm;
    vlm_err err;
    assert_int_equal(plan_model_open(&pm, tu_src("tests/data/tiny/bf16"), &err), VLM_OK);
    int n_q8 = 0, n_q4 = 0, n_k = 0, n_kept = 0;
    for (size_t i = 0; i < pm.n_tensors; i++) {
        const plan_tensor *t = &pm.tensors[i];
        vlm_dtype d8 = vlm_plan_tensor_dtype(VLM_PREC_Q8_0, t->name, t->rank, t->shape, t->stored);
        vlm_dtype dk = vlm_plan_tensor_dtype(VLM_PREC_Q4_K, t->name, t->rank, t->shape, t->stored);
        vlm_dtype d4 = vlm_plan_tensor_dtype(VLM_PREC_Q4_0, t->name, t->rank, t->shape, t->stored);
        n_q8 += d8 == VLM_DTYPE_Q8_0;
        n_q4 += d4 == VLM_DTYPE_Q4_0;
        n_k += dk == VLM_DTYPE_Q4_K;
        n_kept += d8 == t->stored;
        /* q4_K never applies in the tiny model; where it falls back it is q4_0 */
        assert_int_equal(dk, d4);
    }
    fprintf(stderr, "tiny: %zu tensors; q8_0 quantizes %d (keeps %d), q4_0 %d, q4_K %d\n",
            pm.n_tensors, n_q8, n_kept, n_q4, n_k);
    assert_true(n_q8 > 0 && n_q4 > 0);
    assert_int_equal(n_k, 0);
    uint64_t q8 = 0, native = 0;
    plan_weight_bytes(&pm, VLM_PREC_Q8_0, &q8, NULL);
    plan_weight_bytes(&pm, VLM_PREC_NATIVE, &native, NULL);
    plan_model_free(&pm);

    /* The loader holds what the planner counts; the accounted peak of the
     * weights while loading is the converted bytes (no full-precision
     * copy), and the conversion scratch is a few rows. */
    vlm_alloc_reset_peaks();
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    vlm_model *m = load_at("q8_0", 2);
    vlm_alloc_get_stats(&b);
    vlm_model_desc md;
    vlm_model_describe(m, &md);
    fprintf(stderr,
            "q8_0: weights %llu bytes (planner %llu, native %llu), peak weights %llu, "
            "peak scratch %llu\n",
            (unsigned long long)md.loaded_weight_bytes, (unsigned long long)q8,
            (unsigned long long)native, (unsigned long long)b.peak[VLM_MEM_WEIGHTS],
            (unsigned long long)b.peak[VLM_MEM_SCRATCH]);
    assert_int_equal(md.loaded_weight_bytes, q8);
    assert_true(q8 < native);
    assert_int_equal(b.current[VLM_MEM_WEIGHTS] - a.current[VLM_MEM_WEIGHTS],
                     b.peak[VLM_MEM_WEIGHTS] - a.current[VLM_MEM_WEIGHTS]);
    vlm_model_free(m);
}

/* The quantized matmul: equal (to float rounding) to the f32 matmul over the
 * dequantized weights, and the same bits for 1 and 3 threads and for a token
 * alone or in a batch. */
static void test_quant_matmul(void **state) {
    (void)state;
    const int64_t in = 512, out = 37, n = 5;
    float *w = malloc((size_t)(in * out) * sizeof(float));
    float *x = malloc((size_t)(in * n) * sizeof(float));
    float *wd = malloc((size_t)(in * out) * sizeof(float));
    float bias[37];
    srand(7);
    for (int64_t i = 0; i < in * out; i++) w[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int64_t i = 0; i < in * n; i++) x[i] = (float)rand() / RAND_MAX * 2 - 1;
    for (int i = 0; i < out; i++) bias[i] = (float)i / 10;
    cpu_pool *p1 = NULL, *p3 = NULL;
    vlm_err err;
    assert_int_equal(cpu_pool_create(1, &p1, &err), VLM_OK);
    assert_int_equal(cpu_pool_create(3, &p3, &err), VLM_OK);
    const vlm_dtype types[] = {VLM_DTYPE_Q8_0, VLM_DTYPE_Q4_0, VLM_DTYPE_Q4_K};
    for (int k = 0; k < 3; k++) {
        const vlm_dtype_info *di = vlm_dtype_get(types[k]);
        size_t bytes = (size_t)(in * out) / di->block_elems * di->block_bytes;
        void *q = malloc(bytes);
        assert_true(vlm_quantize(types[k], w, q, (size_t)(in * out)));
        assert_true(vlm_dequantize(types[k], q, wd, (size_t)(in * out)));
        float y1[5 * 37], y3[5 * 37], yr[5 * 37], ya[37];
        cpu_weight cq = {types[k], q}, cb = {VLM_DTYPE_F32, bias}, cf = {VLM_DTYPE_F32, wd};
        cpu_matmul(p1, y1, x, n, in, out, cq, cb);
        cpu_matmul(p3, y3, x, n, in, out, cq, cb);
        cpu_matmul(p1, yr, x, n, in, out, cf, cb);
        cpu_matmul(p3, ya, x + 2 * in, 1, in, out, cq, cb); /* token 2 alone */
        assert_memory_equal(y1, y3, sizeof y1);
        assert_memory_equal(ya, y1 + 2 * out, sizeof ya);
        double worst = 0;
        for (int i = 0; i < n * out; i++) {
            double d = fabs((double)y1[i] - (double)yr[i]) / (1 + fabs((double)yr[i]));
            if (!(d <= worst)) worst = d;
        }
        fprintf(stderr, "%s matmul vs dequantized f32: max rel %.3g\n", di->name, worst);
        assert_true(worst < 1e-4);
        /* an embedding row: dequantized exactly */
        float row[512];
        cpu_widen(cq, 3 * in, row, in);
        assert_memory_equal(row, wd + 3 * in, sizeof row);
        free(q);
    }
    cpu_pool_free(p1);
    cpu_pool_free(p3);
    free(w);
    free(x);
    free(wd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_matmul), cmocka_unit_test(test_policy_tiny),
        cmocka_unit_test(test_q8_0_quality), cmocka_unit_test(test_q4_drift),
        cmocka_unit_test(test_demo_greedy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
