/* backend/cpu/ops against PyTorch (reference/ops_ref.py -> ops.safetensors):
 * matmul with f32/bf16/f16 weights, norms, RoPE tables and rotation across
 * the short/long factors, attention (causal, GQA, full), GELU (erf),
 * quick_gelu, SiLU gating, the patch convolution. Also: results do not
 * depend on the thread count or on how tokens are batched. */
#include "testutil.h"

#include "model_fixture.h"

#include <math.h>
#include <stdlib.h>

#include "backend/cpu/ops.h"

static fx_file *F;

static int setup(void **state) {
    (void)state;
    F = fx_open(tu_src("tests/data/model_ref/ops.safetensors"));
    return F ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    fx_close(F);
    return 0;
}

static cpu_weight wt(const char *name) {
    const fx_tensor *t = fx_find(F, name);
    assert_non_null(t);
    return (cpu_weight){t->view.dtype, t->view.data};
}

static int64_t dim(const char *name, int i) {
    const fx_tensor *t = fx_find(F, name);
    assert_non_null(t);
    return t->view.shape[i];
}

static void check(const char *what, const float *got, const float *want, size_t n, double tol) {
    double d = fx_max_abs_diff(got, want, n);
    if (d > tol) fprintf(stderr, "%s: max |diff| %g > %g\n", what, d, tol);
    assert_true(d <= tol);
}

static void run_mm(const char *name, cpu_pool *pool, double tol) {
    char k[64];
    snprintf(k, sizeof k, "%s.x", name);
    size_t nx;
    float *x = fx_f32(F, k, &nx);
    int64_t n = dim(k, 0), in = dim(k, 1);
    snprintf(k, sizeof k, "%s.w", name);
    cpu_weight w = wt(k);
    int64_t out = dim(k, 0);
    snprintf(k, sizeof k, "%s.b", name);
    cpu_weight b = {VLM_DTYPE_F32, NULL};
    if (fx_find(F, k)) b = wt(k);
    snprintf(k, sizeof k, "%s.y", name);
    float *want = fx_f32(F, k, NULL);
    float *y = malloc((size_t)(n * out) * sizeof *y);
    cpu_matmul(pool, y, x, n, in, out, w, b);
    check(name, y, want, (size_t)(n * out), tol);

    /* Row by row (the decode shape) gives bit-identical rows. */
    float *y1 = malloc((size_t)out * sizeof *y1);
    for (int64_t t = 0; t < n; t++) {
        cpu_matmul(NULL, y1, x + t * in, 1, in, out, w, b);
        assert_memory_equal(y1, y + t * out, (size_t)out * sizeof *y1);
    }
    free(y1);
    free(y);
    free(x);
    free(want);
}

static void test_matmul(void **state) {
    (void)state;
    cpu_pool *pool = NULL;
    vlm_err err;
    assert_int_equal(cpu_pool_create(3, &pool, &err), VLM_OK);
    run_mm("mm_f32", NULL, 1e-5);
    run_mm("mm_f32", pool, 1e-5);
    run_mm("mm_f32_big", pool, 1e-5);
    run_mm("mm_bf16", pool, 1e-5);
    run_mm("mm_f16", NULL, 1e-5);
    cpu_pool_free(pool);
}

static void test_norms(void **state) {
    (void)state;
    float *x = fx_f32(F, "rms.x", NULL), *want = fx_f32(F, "rms.y", NULL);
    float y[4 * 64];
    cpu_rmsnorm(y, x, 4, 64, wt("rms.w"), 1e-5f);
    check("rmsnorm", y, want, 256, 2e-6);
    cpu_rmsnorm(x, x, 4, 64, wt("rms.w"), 1e-5f); /* in place */
    check("rmsnorm in place", x, want, 256, 2e-6);
    free(x);
    free(want);
    x = fx_f32(F, "ln.x", NULL);
    want = fx_f32(F, "ln.y", NULL);
    cpu_layernorm(y, x, 4, 64, wt("ln.w"), wt("ln.b"), 1e-5f);
    check("layernorm", y, want, 256, 2e-6);
    free(x);
    free(want);
}

static void test_rope(void **state) {
    (void)state;
    /* The tiny model's factors as stored in its config.json. */
    const float short_f[8] = {1.0f, 1.05f, 1.1f, 1.3f, 1.6f, 2.0f, 2.5f, 3.0f};
    const float long_f[8] = {1.0f, 1.2f, 1.9f, 3.7f, 6.1f, 9.3f, 14.0f, 20.5f};
    size_t npos = 0;
    int32_t *pos = fx_i32(F, "rope.pos", &npos);
    float *ms = fx_f32(F, "rope.mscale", NULL);
    /* mscale = sqrt(1 + ln(2048/64)/ln(64)) for the tiny config. */
    assert_true(fabs(ms[0] - sqrt(1.0 + log(32.0) / log(64.0))) < 1e-6);
    for (int kind = 0; kind < 2; kind++) {
        const char *kn = kind ? "long" : "short";
        char k[64];
        float inv[8];
        cpu_rope_inv_freq(inv, 16, 10000.0, kind ? long_f : short_f);
        snprintf(k, sizeof k, "rope.%s.inv_freq", kn);
        float *want_inv = fx_f32(F, k, NULL);
        for (int i = 0; i < 8; i++) assert_true(fabsf(inv[i] - want_inv[i]) <= 1e-6f * want_inv[i]);
        float *c = malloc(npos * 8 * sizeof *c), *s = malloc(npos * 8 * sizeof *s);
        snprintf(k, sizeof k, "rope.%s.x", kn);
        float *x = fx_f32(F, k, NULL);
        for (size_t p = 0; p < npos; p++)
            cpu_rope_cos_sin(c + p * 8, s + p * 8, pos[p], 1, 16, want_inv, ms[0]);
        snprintf(k, sizeof k, "rope.%s.cos", kn);
        float *wc = fx_f32(F, k, NULL);
        snprintf(k, sizeof k, "rope.%s.sin", kn);
        float *wsn = fx_f32(F, k, NULL);
        /* f32 cos/sin of the same f32 angle: within 2 ulp of torch's. */
        check("rope cos", c, wc, npos * 8, 3e-7);
        check("rope sin", s, wsn, npos * 8, 3e-7);
        cpu_rope_apply(x, (int64_t)npos, 32, 2, 16, c, s);
        snprintf(k, sizeof k, "rope.%s.y", kn);
        float *wy = fx_f32(F, k, NULL);
        check("rope apply", x, wy, npos * 32, 2e-6);
        free(want_inv);
        free(c);
        free(s);
        free(x);
        free(wc);
        free(wsn);
        free(wy);
    }
    free(pos);
    free(ms);
}

static void run_att(const char *name, int H, int KVH, int hd, bool causal, int64_t pos0,
                    cpu_pool *pool) {
    char k[64];
    snprintf(k, sizeof k, "%s.q", name);
    float *q = fx_f32(F, k, NULL);
    int64_t nq = dim(k, 0);
    snprintf(k, sizeof k, "%s.k", name);
    float *kk = fx_f32(F, k, NULL);
    int64_t nkv = dim(k, 0);
    snprintf(k, sizeof k, "%s.v", name);
    float *v = fx_f32(F, k, NULL);
    snprintf(k, sizeof k, "%s.out", name);
    float *want = fx_f32(F, k, NULL);
    float *out = malloc((size_t)(nq * H * hd) * sizeof *out);
    float *sc = malloc((size_t)(cpu_pool_threads(pool) * nkv) * sizeof *sc);
    const int64_t kvd = (int64_t)KVH * hd, nkvv = nkv * kvd;
    cpu_attention(pool, out, q, H * hd, (cpu_weight){VLM_DTYPE_F32, kk},
                  (cpu_weight){VLM_DTYPE_F32, v}, kvd, nq, nkv, H, KVH, hd, causal, pos0,
                  1.0f / sqrtf((float)hd), sc);
    check(name, out, want, (size_t)(nq * H * hd), 2e-6);

    /* A bf16 cache: the same bits as f32 attention over the rounded K/V. */
    uint16_t *kb = malloc((size_t)nkvv * 2), *vb = malloc((size_t)nkvv * 2);
    cpu_store_rows(kb, VLM_DTYPE_BF16, 0, kk, nkvv);
    cpu_store_rows(vb, VLM_DTYPE_BF16, 0, v, nkvv);
    for (int64_t i = 0; i < nkvv; i++) {
        assert_true(kb[i] == vlm_f32_to_bf16(kk[i]));
        kk[i] = vlm_bf16_to_f32(kb[i]);
        v[i] = vlm_bf16_to_f32(vb[i]);
    }
    float *ob = malloc((size_t)(nq * H * hd) * sizeof *ob);
    cpu_attention(pool, ob, q, H * hd, (cpu_weight){VLM_DTYPE_BF16, kb},
                  (cpu_weight){VLM_DTYPE_BF16, vb}, kvd, nq, nkv, H, KVH, hd, causal, pos0,
                  1.0f / sqrtf((float)hd), sc);
    cpu_attention(pool, out, q, H * hd, (cpu_weight){VLM_DTYPE_F32, kk},
                  (cpu_weight){VLM_DTYPE_F32, v}, kvd, nq, nkv, H, KVH, hd, causal, pos0,
                  1.0f / sqrtf((float)hd), sc);
    assert_memory_equal(ob, out, (size_t)(nq * H * hd) * sizeof *ob);
    check("bf16 cache vs reference", ob, want, (size_t)(nq * H * hd), 0.05);
    free(kb);
    free(vb);
    free(ob);
    free(q);
    free(kk);
    free(v);
    free(want);
    free(out);
    free(sc);
}

static void test_attention(void **state) {
    (void)state;
    cpu_pool *pool = NULL;
    vlm_err err;
    assert_int_equal(cpu_pool_create(2, &pool, &err), VLM_OK);
    run_att("att_causal", 2, 2, 16, true, 4, NULL);
    run_att("att_causal", 2, 2, 16, true, 4, pool);
    run_att("att_gqa", 4, 2, 8, true, 3, pool);
    run_att("att_full", 3, 3, 8, false, 0, pool);
    cpu_pool_free(pool);
}

static void test_activations(void **state) {
    (void)state;
    size_t n = 0;
    float *x = fx_f32(F, "act.x", &n), *g = fx_f32(F, "act.gelu", NULL),
          *qg = fx_f32(F, "act.quick_gelu", NULL);
    float *y = malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    cpu_gelu_erf(y, (int64_t)n);
    check("gelu", y, g, n, 2e-6);
    memcpy(y, x, n * sizeof *y);
    cpu_quick_gelu(y, (int64_t)n);
    check("quick_gelu", y, qg, n, 2e-6);
    free(x);
    free(g);
    free(qg);
    free(y);
    float *gu = fx_f32(F, "silu.gu", NULL), *want = fx_f32(F, "silu.y", NULL), out[150];
    cpu_silu_mul(out, gu, 3, 50);
    check("silu_mul", out, want, 150, 2e-6);
    free(gu);
    free(want);
}

static void test_patch_embed(void **state) {
    (void)state;
    float *img = fx_f32(F, "patch.img", NULL), *want = fx_f32(F, "patch.y", NULL);
    float out[4 * 8], col[4 * 588];
    cpu_patch_embed(NULL, out, img, 28, 14, 8, wt("patch.w"), col);
    check("patch_embed", out, want, 32, 2e-5);
    free(img);
    free(want);
}

static void test_widen(void **state) {
    (void)state;
    /* bf16 0x3f80 = 1, 0xc040 = -3; f16 0x3c00 = 1, 0xc200 = -3, 0x0001 = 2^-24. */
    uint16_t b[2] = {0x3f80, 0xc040}, h[3] = {0x3c00, 0xc200, 0x0001};
    float o[3];
    cpu_widen((cpu_weight){VLM_DTYPE_BF16, b}, 0, o, 2);
    assert_true(o[0] == 1.0f && o[1] == -3.0f);
    cpu_widen((cpu_weight){VLM_DTYPE_F16, h}, 0, o, 3);
    assert_true(o[0] == 1.0f && o[1] == -3.0f && o[2] == ldexpf(1.0f, -24));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),      cmocka_unit_test(test_norms),
        cmocka_unit_test(test_rope),        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_activations), cmocka_unit_test(test_patch_embed),
        cmocka_unit_test(test_widen),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
