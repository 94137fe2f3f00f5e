/* backend/cuda ops against the CPU ops (backend/cpu/ops.h, themselves
 * checked against PyTorch in tests/unit/test_cpu_ops.c) on random data, and
 * the accounted device allocator. Needs a CUDA device (label "gpu").
 *
 * Tolerances: the GPU sums in a different order than the CPU, so f32 results
 * agree to a few ulps times the reduction length: 1e-5 relative to the
 * largest output magnitude for norms, elementwise ops and f32 products
 * (TF32 is off); 1e-4 for attention (__expf); 1e-2 where cuBLAS multiplies
 * bf16/f16 weights by activations rounded to bf16/f16 (relative error
 * 2^-8 per product, averaging out over the sum). Exact where the op only
 * moves or rounds values (embedding, store_rows). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda.h"
#include "base/alloc.h"
#include "tensor/quant.h"

static vlm_cuda_ctx *CTX;
static cpu_pool *POOL;

static int setup(void **state) {
    (void)state;
    vlm_err err = {0};
    if (vlm_cuda_ctx_create(&CTX, 64u << 20, &err) != VLM_OK) {
        fprintf(stderr, "no CUDA context: %s\n", err.msg);
        return -1;
    }
    return cpu_pool_create(2, &POOL, &err) == VLM_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    vlm_cuda_ctx_destroy(CTX);
    cpu_pool_free(POOL);
    vlm_gpu_mem_stats st;
    vlm_gpu_mem_stats_get(&st);
    return st.total_current == 0 ? 0 : -1;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
}

static float *rnd(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

static void *up(const void *h, size_t bytes) {
    void *d = vlm_dev_alloc(bytes, VLM_MEM_ACTIVATIONS);
    assert_non_null(d);
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_upload(CTX, d, h, bytes, "test", &err), VLM_OK);
    return d;
}

static float *down(const void *d, size_t n) {
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_sync(CTX, "test", &err), VLM_OK);
    float *h = malloc(n * sizeof *h);
    assert_non_null(h);
    assert_int_equal(vlm_cuda_download(CTX, h, d, n * sizeof *h, "test", &err), VLM_OK);
    return h;
}

/* n bf16 device values, widened to f32 on the host. */
static float *down_bf16(const void *d, size_t n) {
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_sync(CTX, "test", &err), VLM_OK);
    uint16_t *b = malloc(n * sizeof *b);
    float *h = malloc(n * sizeof *h);
    assert_non_null(b);
    assert_non_null(h);
    assert_int_equal(vlm_cuda_download(CTX, b, d, n * sizeof *b, "test", &err), VLM_OK);
    for (size_t i = 0; i < n; i++) h[i] = vlm_bf16_to_f32(b[i]);
    free(b);
    return h;
}

/* max |got - want| <= rtol * max(|want|, 1e-3) */
static void close_to(const char *what, const float *got, const float *want, size_t n, double rtol) {
    double dmax = 0, wmax = 1e-3;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= dmax)) { /* NaN counts as the worst */
            dmax = isnan(d) ? INFINITY : d;
            at = i;
        }
        if (fabs(want[i]) > wmax) wmax = fabs(want[i]);
    }
    double tol = rtol * wmax;
    if (dmax > tol)
        fprintf(stderr, "%s: max |diff| %g at %zu (got %g want %g) > %g\n", what, dmax, at, got[at],
                want[at], tol);
    else
        printf("%-32s max |diff| %.3g (tol %.3g)\n", what, dmax, tol);
    assert_true(dmax <= tol);
}

static void to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = vlm_f32_to_bf16(src[i]);
}

#define OK(call)                                                                                   \
    do {                                                                                           \
        vlm_err e_ = {0};                                                                          \
        vlm_status s_ = (call);                                                                    \
        if (s_ != VLM_OK) fprintf(stderr, "%s: %s\n", #call, e_.msg);                              \
        assert_int_equal(s_, VLM_OK);                                                              \
    } while (0)
#define E (&e_)

/* --- matmul --------------------------------------------------------------- */

static void mm_case(vlm_dtype t, int64_t n, int64_t in, int64_t out, bool bias, double rtol) {
    float *x = rnd((size_t)(n * in), 1.0f);
    float *wf = rnd((size_t)(out * in), 0.1f);
    float *bf = rnd((size_t)out, 0.5f);
    uint64_t wbytes = 0;
    assert_true(vlm_dtype_nbytes(t, (uint64_t)(out * in), &wbytes));
    void *wh = malloc(wbytes);
    assert_non_null(wh);
    if (t == VLM_DTYPE_F32)
        memcpy(wh, wf, wbytes);
    else if (t == VLM_DTYPE_BF16)
        to_bf16(wh, wf, (size_t)(out * in));
    else if (t == VLM_DTYPE_F16)
        for (int64_t i = 0; i < out * in; i++) ((uint16_t *)wh)[i] = vlm_f32_to_f16(wf[i]);
    else
        assert_true(vlm_quantize(t, wf, wh, (size_t)(out * in)));
    float *want = malloc((size_t)(n * out) * sizeof *want);
    cpu_matmul(POOL, want, x, n, in, out, (cpu_weight){t, wh},
               (cpu_weight){VLM_DTYPE_F32, bias ? bf : NULL});

    float *dx = up(x, (size_t)(n * in) * 4);
    void *dw = up(wh, wbytes);
    float *db = up(bf, (size_t)out * 4);
    float *dy = vlm_dev_alloc((size_t)(n * out) * 4, VLM_MEM_ACTIVATIONS);
    assert_non_null(dy);
    OK(vlm_cuda_matmul(CTX, dy, dx, n, in, out, (vlm_cuda_weight){t, dw},
                       (vlm_cuda_weight){VLM_DTYPE_F32, bias ? db : NULL}, E));
    float *got = down(dy, (size_t)(n * out));
    char what[96];
    snprintf(what, sizeof what, "matmul %s n=%lld in=%lld out=%lld", vlm_dtype_get(t)->name,
             (long long)n, (long long)in, (long long)out);
    close_to(what, got, want, (size_t)(n * out), rtol);
    /* the fused residual form: y0 + x W^T (no bias) */
    float *y0 = rnd((size_t)(n * out), 2.0f);
    for (int64_t i = 0; i < n * out; i++) want[i] += y0[i] - (bias ? bf[i % out] : 0.0f);
    float *dy0 = up(y0, (size_t)(n * out) * 4);
    OK(vlm_cuda_matmul_acc(CTX, dy0, dx, n, in, out, (vlm_cuda_weight){t, dw}, E));
    free(got);
    got = down(dy0, (size_t)(n * out));
    snprintf(what, sizeof what, "matmul_acc %s n=%lld in=%lld out=%lld", vlm_dtype_get(t)->name,
             (long long)n, (long long)in, (long long)out);
    close_to(what, got, want, (size_t)(n * out), rtol);
    vlm_dev_free(dy0);
    free(y0);
    vlm_dev_free(dx);
    vlm_dev_free(dw);
    vlm_dev_free(db);
    vlm_dev_free(dy);
    free(x), free(wf), free(bf), free(wh), free(want), free(got);
}

static void test_matmul(void **state) {
    (void)state;
    /* GEMV (n <= 8): vector path (in % 8 == 0), scalar path, several tokens */
    mm_case(VLM_DTYPE_F32, 1, 256, 96, true, 1e-5);
    mm_case(VLM_DTYPE_F32, 3, 50, 33, false, 1e-5);
    mm_case(VLM_DTYPE_BF16, 1, 3072, 130, false, 1e-5);
    mm_case(VLM_DTYPE_BF16, 8, 96, 64, true, 1e-5);
    mm_case(VLM_DTYPE_BF16, 2, 36, 10, false, 1e-5);
    mm_case(VLM_DTYPE_F16, 1, 128, 40, false, 1e-5);
    mm_case(VLM_DTYPE_Q8_0, 1, 3072, 70, false, 1e-5);
    mm_case(VLM_DTYPE_Q4_0, 4, 256, 64, true, 1e-5);
    mm_case(VLM_DTYPE_Q8_0, 20, 96, 32, false, 1e-5); /* quantized: GEMV in chunks of 8 */
    mm_case(VLM_DTYPE_Q4_0, 2, 160, 9, false, 1e-5);  /* 5 blocks a row: k_gemv, not 16-byte */
    /* the 16-byte GEMVs (k_gemv16: in % 8 == 0; k_gemv_quant16: blocks per
     * row a multiple of 8): one, two and four warps per row (>= 6144,
     * >= 1536, fewer rows), a row that ends inside a step of 4 loads per
     * lane (1000 = 125 vectors), 1..8 tokens, the real model's rows, a
     * quantized row of one full 128-block staging chunk and a partial one */
    mm_case(VLM_DTYPE_BF16, 1, 3072, 6200, false, 1e-5);
    mm_case(VLM_DTYPE_BF16, 1, 8192, 1600, false, 1e-5);
    mm_case(VLM_DTYPE_BF16, 5, 1000, 1537, true, 1e-5);
    mm_case(VLM_DTYPE_BF16, 3, 1000, 7, false, 1e-5);
    mm_case(VLM_DTYPE_F16, 7, 3072, 33, false, 1e-5);
    mm_case(VLM_DTYPE_BF16, 6, 64, 6145, false, 1e-5);
    mm_case(VLM_DTYPE_Q8_0, 1, 4352, 40, false, 1e-5);
    mm_case(VLM_DTYPE_Q4_0, 1, 4352, 40, false, 1e-5);
    mm_case(VLM_DTYPE_Q8_0, 8, 8192, 19, true, 1e-5);
    mm_case(VLM_DTYPE_Q4_0, 3, 3072, 1601, false, 1e-5);
    mm_case(VLM_DTYPE_Q8_0, 5, 256, 5, false, 1e-5);
    /* cuBLAS (n > 8) */
    mm_case(VLM_DTYPE_F32, 40, 256, 96, true, 1e-5);
    mm_case(VLM_DTYPE_BF16, 40, 256, 96, false, 1e-2);
    mm_case(VLM_DTYPE_F16, 17, 64, 48, true, 1e-2);
    /* f32 mode: bf16/f16 weights widened, x stays f32, as the CPU; a 1 MiB
     * workspace makes the widening take several chunks of output rows */
    setenv("VLM_CUDA_F32_GEMM", "1", 1);
    vlm_cuda_ctx *saved = CTX, *f32ctx = NULL;
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_ctx_create(&f32ctx, 1u << 20, &err), VLM_OK);
    unsetenv("VLM_CUDA_F32_GEMM");
    CTX = f32ctx;
    mm_case(VLM_DTYPE_BF16, 40, 3072, 300, true, 1e-5);
    mm_case(VLM_DTYPE_F16, 17, 64, 48, false, 1e-5);
    CTX = saved;
    vlm_cuda_ctx_destroy(f32ctx);
}

/* --- norms, RoPE ------------------------------------------------------------ */

static void test_norms(void **state) {
    (void)state;
    int64_t n = 5, dim = 3072;
    float *x = rnd((size_t)(n * dim), 2.0f), *w = rnd((size_t)dim, 1.0f),
          *b = rnd((size_t)dim, 1.0f);
    uint16_t *wb = malloc((size_t)dim * 2);
    to_bf16(wb, w, (size_t)dim);
    float *want = malloc((size_t)(n * dim) * 4);
    float *dx = up(x, (size_t)(n * dim) * 4), *dw = up(w, (size_t)dim * 4),
          *db = up(b, (size_t)dim * 4);
    uint16_t *dwb = up(wb, (size_t)dim * 2);
    float *dy = vlm_dev_alloc((size_t)(n * dim) * 4, VLM_MEM_ACTIVATIONS);

    cpu_rmsnorm(want, x, n, dim, (cpu_weight){VLM_DTYPE_F32, w}, 1e-5f);
    OK(vlm_cuda_rmsnorm(CTX, dy, dx, n, dim, (vlm_cuda_weight){VLM_DTYPE_F32, dw}, 1e-5f, E));
    float *got = down(dy, (size_t)(n * dim));
    close_to("rmsnorm f32", got, want, (size_t)(n * dim), 1e-5);
    free(got);

    cpu_rmsnorm(want, x, n, dim, (cpu_weight){VLM_DTYPE_BF16, wb}, 1e-6f);
    OK(vlm_cuda_rmsnorm(CTX, dy, dx, n, dim, (vlm_cuda_weight){VLM_DTYPE_BF16, dwb}, 1e-6f, E));
    got = down(dy, (size_t)(n * dim));
    close_to("rmsnorm bf16 weight", got, want, (size_t)(n * dim), 1e-5);
    free(got);

    /* a width off the 1024-float rows kernel: the general one */
    int64_t d3 = 1000;
    cpu_rmsnorm(want, x, n, d3, (cpu_weight){VLM_DTYPE_F32, w}, 1e-5f);
    OK(vlm_cuda_rmsnorm(CTX, dy, dx, n, d3, (vlm_cuda_weight){VLM_DTYPE_F32, dw}, 1e-5f, E));
    got = down(dy, (size_t)(n * d3));
    close_to("rmsnorm f32 width 1000", got, want, (size_t)(n * d3), 1e-5);
    free(got);

    int64_t d2 = 1024;
    cpu_layernorm(want, x, n, d2, (cpu_weight){VLM_DTYPE_F32, w}, (cpu_weight){VLM_DTYPE_F32, b},
                  1e-5f);
    OK(vlm_cuda_layernorm(CTX, dy, dx, n, d2, (vlm_cuda_weight){VLM_DTYPE_F32, dw},
                          (vlm_cuda_weight){VLM_DTYPE_F32, db}, 1e-5f, E));
    got = down(dy, (size_t)(n * d2));
    close_to("layernorm", got, want, (size_t)(n * d2), 1e-5);
    free(got);

    /* in place (out == x), a small odd dim */
    cpu_layernorm(want, x, n, 31, (cpu_weight){VLM_DTYPE_F32, w}, (cpu_weight){VLM_DTYPE_F32, b},
                  1e-5f);
    OK(vlm_cuda_layernorm(CTX, dx, dx, n, 31, (vlm_cuda_weight){VLM_DTYPE_F32, dw},
                          (vlm_cuda_weight){VLM_DTYPE_F32, db}, 1e-5f, E));
    got = down(dx, (size_t)(n * 31));
    close_to("layernorm in place dim 31", got, want, (size_t)(n * 31), 1e-5);
    free(got);

    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dwb), vlm_dev_free(dy);
    free(x), free(w), free(b), free(wb), free(want);
}

static void test_rope(void **state) {
    (void)state;
    const int hd = 96, nh = 32, nkv = 32;
    const int64_t n = 7, stride = (int64_t)(nh + 2 * nkv) * hd; /* a fused qkv row */
    float factor[48], inv[48];
    for (int i = 0; i < hd / 2; i++) factor[i] = 1.0f + 0.1f * (float)i;
    cpu_rope_inv_freq(inv, hd, 10000.0, factor);
    float *cs = malloc((size_t)(n * hd / 2) * 4), *sn = malloc((size_t)(n * hd / 2) * 4);
    cpu_rope_cos_sin(cs, sn, 1000, n, hd, inv, 1.19);
    float *x = rnd((size_t)(n * stride), 1.0f);
    float *dx = up(x, (size_t)(n * stride) * 4), *dc = up(cs, (size_t)(n * hd / 2) * 4),
          *ds = up(sn, (size_t)(n * hd / 2) * 4);
    /* q heads and then k heads, as the decoder does */
    cpu_rope_apply(x, n, stride, nh, hd, cs, sn);
    cpu_rope_apply(x + nh * hd, n, stride, nkv, hd, cs, sn);
    OK(vlm_cuda_rope_apply(CTX, dx, n, stride, nh, hd, dc, ds, E));
    OK(vlm_cuda_rope_apply(CTX, dx + nh * hd, n, stride, nkv, hd, dc, ds, E));
    float *got = down(dx, (size_t)(n * stride));
    close_to("rope (fused qkv rows)", got, x, (size_t)(n * stride), 1e-6);
    vlm_dev_free(dx), vlm_dev_free(dc), vlm_dev_free(ds);
    free(cs), free(sn), free(x), free(got);
}

/* rope_store: the decoder's rotation and K/V stores in one launch against
 * cpu_rope_apply + cpu_store_rows, with GQA (8 q heads over 2 kv heads), at
 * a cache offset, into an F32 and a BF16 cache. */
static void test_rope_store(void **state) {
    (void)state;
    const int hd = 96, nh = 8, nkv = 2;
    const int64_t n = 5, kvd = (int64_t)nkv * hd, stride = (int64_t)(nh + 2 * nkv) * hd + 4;
    const int64_t off = 3 * kvd, cache = off + n * kvd;
    float factor[48], inv[48];
    for (int i = 0; i < hd / 2; i++) factor[i] = 1.0f + 0.05f * (float)i;
    cpu_rope_inv_freq(inv, hd, 10000.0, factor);
    float *cs = malloc((size_t)(n * hd / 2) * 4), *sn = malloc((size_t)(n * hd / 2) * 4);
    cpu_rope_cos_sin(cs, sn, 40, n, hd, inv, 1.0);
    float *dc = up(cs, (size_t)(n * hd / 2) * 4), *ds = up(sn, (size_t)(n * hd / 2) * 4);
    for (int bf = 0; bf < 2; bf++) {
        vlm_dtype t = bf ? VLM_DTYPE_BF16 : VLM_DTYPE_F32;
        size_t esz = bf ? 2 : 4;
        float *x = rnd((size_t)(n * stride), 1.0f);
        float *dx = up(x, (size_t)(n * stride) * 4);
        char *zeros = calloc((size_t)cache, esz);
        void *dk = up(zeros, (size_t)cache * esz), *dv = up(zeros, (size_t)cache * esz);
        char *hk = calloc((size_t)cache, esz), *hv = calloc((size_t)cache, esz);
        cpu_rope_apply(x, n, stride, nh + nkv, hd, cs, sn);
        for (int64_t r = 0; r < n; r++) {
            cpu_store_rows(hk, t, off + r * kvd, x + r * stride + nh * hd, kvd);
            cpu_store_rows(hv, t, off + r * kvd, x + r * stride + (nh + nkv) * hd, kvd);
        }
        OK(vlm_cuda_rope_store(CTX, dx, n, stride, nh, nkv, hd, dc, ds, dk, dv, t, off, E));
        float *got = down(dx, (size_t)(n * stride));
        close_to(bf ? "rope_store rows (bf16 cache)" : "rope_store rows (f32 cache)", got, x,
                 (size_t)(n * stride), 1e-6);
        char *gk = malloc((size_t)cache * esz), *gv = malloc((size_t)cache * esz);
        OK(vlm_cuda_download(CTX, gk, dk, (size_t)cache * esz, "k", E));
        OK(vlm_cuda_download(CTX, gv, dv, (size_t)cache * esz, "v", E));
        float *wk = malloc((size_t)cache * 4), *wv = malloc((size_t)cache * 4),
              *gkf = malloc((size_t)cache * 4), *gvf = malloc((size_t)cache * 4);
        cpu_weight hkw = {t, hk}, hvw = {t, hv}, gkw = {t, gk}, gvw = {t, gv};
        cpu_widen(hkw, 0, wk, cache), cpu_widen(hvw, 0, wv, cache);
        cpu_widen(gkw, 0, gkf, cache), cpu_widen(gvw, 0, gvf, cache);
        /* v is copied: exact; k is rotated: f32 within 1e-6, bf16 within
         * one bf16 step (a rounding tie may fall either way) */
        close_to("rope_store k cache", gkf, wk, (size_t)cache, bf ? 8e-3 : 1e-6);
        close_to("rope_store v cache", gvf, wv, (size_t)cache, 0);
        vlm_dev_free(dx), vlm_dev_free(dk), vlm_dev_free(dv);
        free(x), free(zeros), free(hk), free(hv), free(got), free(gk), free(gv);
        free(wk), free(wv), free(gkf), free(gvf);
    }
    vlm_dev_free(dc), vlm_dev_free(ds);
    free(cs), free(sn);
}

/* --- fused products ------------------------------------------------------- */

/* Device buffers a and b hold the same bytes. */
static void same_bits(const char *what, const void *da, const void *db, size_t bytes) {
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_sync(CTX, "test", &err), VLM_OK);
    char *a = malloc(bytes), *b = malloc(bytes);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(vlm_cuda_download(CTX, a, da, bytes, "a", &err), VLM_OK);
    assert_int_equal(vlm_cuda_download(CTX, b, db, bytes, "b", &err), VLM_OK);
    size_t at = 0;
    while (at < bytes && a[at] == b[at]) at++;
    if (at < bytes)
        fprintf(stderr, "%s: first differing byte %zu of %zu\n", what, at, bytes);
    else
        printf("%-40s bit for bit (%zu bytes)\n", what, bytes);
    assert_true(at == bytes);
    free(a), free(b);
}

static void *bf16_weights(int64_t rows, int64_t in, float scale) {
    float *wf = rnd((size_t)(rows * in), scale);
    uint16_t *wh = malloc((size_t)(rows * in) * 2);
    assert_non_null(wh);
    to_bf16(wh, wf, (size_t)(rows * in));
    void *d = up(wh, (size_t)(rows * in) * 2);
    free(wf), free(wh);
    return d;
}

static void *dev_filled(size_t n, float v) {
    float *h = malloc(n * 4);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) h[i] = v;
    void *d = up(h, n * 4);
    free(h);
    return d;
}

/* The fused products (matmul_silu, matmul_rope_store) give the two ops
 * they stand for bit for bit, at the decoder's shapes where the epilogue
 * kernels take them (two warps a row: >= 1536 rows) for 1, 3 and 8 tokens.
 * That the epilogue ran, not the two ops: matmul_silu leaves its scratch
 * untouched. The two ops themselves are checked against the CPU above. */
static void test_fused_products(void **state) {
    (void)state;
    const int64_t ns[3] = {1, 3, 8};
    for (int k = 0; k < 3; k++) {
        const int64_t n = ns[k], in = 512, ff = 1024;
        char what[96];
        float *x = rnd((size_t)(n * 3072), 1.0f);
        float *dx = up(x, (size_t)(n * 3072) * 4);
        /* silu: out = silu(gate) * up over W = [gate; up] */
        void *wgu = bf16_weights(2 * ff, in, 0.1f);
        vlm_cuda_weight gw = {VLM_DTYPE_BF16, wgu}, none = {VLM_DTYPE_F32, NULL};
        float *gu_f = dev_filled((size_t)(n * 2 * ff), 7.0f),
              *gu_r = dev_filled((size_t)(n * 2 * ff), 0.0f);
        float *o_f = dev_filled((size_t)(n * ff), 0.0f), *o_r = dev_filled((size_t)(n * ff), 0.0f);
        OK(vlm_cuda_matmul_silu(CTX, o_f, gu_f, dx, n, in, ff, gw, E));
        OK(vlm_cuda_matmul(CTX, gu_r, dx, n, in, 2 * ff, gw, none, E));
        OK(vlm_cuda_silu_mul(CTX, o_r, gu_r, n, ff, E));
        snprintf(what, sizeof what, "matmul_silu n=%lld", (long long)n);
        same_bits(what, o_f, o_r, (size_t)(n * ff) * 4);
        float *scratch = down(gu_f, (size_t)(n * 2 * ff));
        for (int64_t i = 0; i < n * 2 * ff; i++) assert_true(scratch[i] == 7.0f);
        free(scratch);
        vlm_dev_free(gu_f), vlm_dev_free(gu_r), vlm_dev_free(o_f), vlm_dev_free(o_r);
        vlm_dev_free(wgu);

        /* rope_store: 8 q heads over 4 kv heads of 96 (1536 rows), at a
         * cache offset, positions from the host or the device, F32 and
         * BF16 caches */
        const int hd = 96, nh = 8, nkv = 4, half = hd / 2;
        const int64_t kvd = (int64_t)nkv * hd, rows = (int64_t)(nh + 2 * nkv) * hd, pos = 37;
        const int64_t max_ctx = 64, cache = max_ctx * kvd;
        float factor[48], inv[48];
        for (int i = 0; i < half; i++) factor[i] = 1.0f + 0.05f * (float)i;
        cpu_rope_inv_freq(inv, hd, 10000.0, factor);
        float *cs = malloc((size_t)(max_ctx * half) * 4),
              *sn = malloc((size_t)(max_ctx * half) * 4);
        cpu_rope_cos_sin(cs, sn, 0, max_ctx, hd, inv, 1.0);
        float *dc = up(cs, (size_t)(max_ctx * half) * 4),
              *ds = up(sn, (size_t)(max_ctx * half) * 4);
        int32_t p32 = (int32_t)pos;
        int32_t *dpos = up(&p32, sizeof p32);
        void *wqkv = bf16_weights(rows, in, 0.1f);
        vlm_cuda_weight qw = {VLM_DTYPE_BF16, wqkv};
        for (int m = 0; m < 4; m++) {
            const bool bf = m & 1, devpos = m & 2;
            const vlm_dtype t = bf ? VLM_DTYPE_BF16 : VLM_DTYPE_F32;
            const size_t cb = (size_t)cache * (bf ? 2 : 4);
            float *q_f = dev_filled((size_t)(n * rows), 0.0f),
                  *q_r = dev_filled((size_t)(n * rows), 0.0f);
            void *k_f = dev_filled(cb / 4, 0.0f), *k_r = dev_filled(cb / 4, 0.0f);
            void *v_f = dev_filled(cb / 4, 0.0f), *v_r = dev_filled(cb / 4, 0.0f);
            OK(vlm_cuda_matmul(CTX, q_r, dx, n, in, rows, qw, none, E));
            if (devpos) {
                OK(vlm_cuda_matmul_rope_store(CTX, q_f, dx, n, in, qw, nh, nkv, hd, dc, ds, k_f,
                                              v_f, t, 0, dpos, E));
                OK(vlm_cuda_rope_store_pos(CTX, q_r, n, rows, nh, nkv, hd, dc, ds, k_r, v_r, t, 0,
                                           dpos, E));
            } else {
                OK(vlm_cuda_matmul_rope_store(CTX, q_f, dx, n, in, qw, nh, nkv, hd, dc + pos * half,
                                              ds + pos * half, k_f, v_f, t, pos * kvd, NULL, E));
                OK(vlm_cuda_rope_store(CTX, q_r, n, rows, nh, nkv, hd, dc + pos * half,
                                       ds + pos * half, k_r, v_r, t, pos * kvd, E));
            }
            snprintf(what, sizeof what, "matmul_rope_store n=%lld %s cache%s", (long long)n,
                     bf ? "bf16" : "f32", devpos ? " dev pos" : "");
            same_bits(what, q_f, q_r, (size_t)(n * rows) * 4);
            same_bits("  k cache", k_f, k_r, cb);
            same_bits("  v cache", v_f, v_r, cb);
            vlm_dev_free(q_f), vlm_dev_free(q_r), vlm_dev_free(k_f), vlm_dev_free(k_r);
            vlm_dev_free(v_f), vlm_dev_free(v_r);
        }
        vlm_dev_free(wqkv), vlm_dev_free(dc), vlm_dev_free(ds), vlm_dev_free(dpos);
        free(cs), free(sn);

        vlm_dev_free(dx);
        free(x);
    }
}

/* argmax on the card against cpu_argmax (the CPU's greedy pick): random
 * rows of the vocab's size, the largest value repeated (the lowest index
 * wins), NaNs in the row (never taken) and at index 0 (index 0), all -inf
 * (index 0), one value. */
static void test_argmax(void **state) {
    (void)state;
    const int64_t V = 32064;
    float *x = rnd((size_t)V, 4.0f);
    int32_t *dout = vlm_dev_alloc(sizeof(int32_t), VLM_MEM_ACTIVATIONS);
    assert_non_null(dout);
    for (int c = 0; c < 6; c++) {
        int64_t n = V;
        if (c == 1) x[20000] = x[777] = x[31000] = 9.0f; /* ties: 777 */
        if (c == 2) x[100] = x[777] = NAN;               /* 20000 now */
        if (c == 3) x[0] = NAN;                          /* 0 */
        if (c == 4)
            for (int64_t i = 0; i < V; i++) x[i] = -INFINITY;
        if (c == 5) n = 1;
        float *dx = up(x, (size_t)V * 4);
        OK(vlm_cuda_argmax(CTX, dout, dx, n, E));
        int32_t got = -1;
        OK(vlm_cuda_sync(CTX, "argmax", E));
        OK(vlm_cuda_download(CTX, &got, dout, sizeof got, "argmax", E));
        int32_t want = cpu_argmax(x, n);
        printf("argmax case %d: %d (cpu %d)\n", c, got, want);
        assert_int_equal(got, want);
        vlm_dev_free(dx);
    }
    assert_int_equal(cpu_argmax(x, V), 0);
    vlm_dev_free(dout);
    free(x);
}

/* --- attention -------------------------------------------------------------- */

static void attn_case(const char *what, vlm_dtype kvt, int64_t n_q, int64_t n_kv, int nh, int nkv,
                      int hd, bool causal, int64_t q_pos0) {
    int64_t q_stride = (int64_t)nh * hd + 5, kv_stride = (int64_t)nkv * hd + 3; /* padded rows */
    float *q = rnd((size_t)(n_q * q_stride), 1.0f);
    float *kf = rnd((size_t)(n_kv * kv_stride), 1.0f), *vf = rnd((size_t)(n_kv * kv_stride), 1.0f);
    size_t esz = kvt == VLM_DTYPE_BF16 ? 2 : 4;
    void *kh = malloc((size_t)(n_kv * kv_stride) * esz),
         *vh = malloc((size_t)(n_kv * kv_stride) * esz);
    cpu_store_rows(kh, kvt, 0, kf, n_kv * kv_stride);
    cpu_store_rows(vh, kvt, 0, vf, n_kv * kv_stride);
    float scale = 1.0f / sqrtf((float)hd);
    float *want = malloc((size_t)(n_q * nh * hd) * 4);
    float *scratch = malloc((size_t)(cpu_pool_threads(POOL) * n_kv) * 4);
    cpu_attention(POOL, want, q, q_stride, (cpu_weight){kvt, kh}, (cpu_weight){kvt, vh}, kv_stride,
                  n_q, n_kv, nh, nkv, hd, causal, q_pos0, scale, scratch);
    float *dq = up(q, (size_t)(n_q * q_stride) * 4);
    void *dk = up(kh, (size_t)(n_kv * kv_stride) * esz),
         *dv = up(vh, (size_t)(n_kv * kv_stride) * esz);
    float *dout = vlm_dev_alloc((size_t)(n_q * nh * hd) * 4, VLM_MEM_ACTIVATIONS);
    OK(vlm_cuda_attention(CTX, dout, dq, q_stride, (vlm_cuda_weight){kvt, dk},
                          (vlm_cuda_weight){kvt, dv}, kv_stride, n_q, n_kv, nh, nkv, hd, causal,
                          q_pos0, scale, E));
    float *got = down(dout, (size_t)(n_q * nh * hd));
    close_to(what, got, want, (size_t)(n_q * nh * hd), 1e-4);
    vlm_dev_free(dq), vlm_dev_free(dk), vlm_dev_free(dv), vlm_dev_free(dout);
    free(q), free(kf), free(vf), free(kh), free(vh), free(want), free(scratch), free(got);
}

static void test_attention(void **state) {
    (void)state;
    attn_case("attn prefill causal GQA", VLM_DTYPE_F32, 37, 37, 8, 2, 96, true, 0);
    attn_case("attn vision full hd64", VLM_DTYPE_F32, 50, 50, 4, 4, 64, false, 0);
    attn_case("attn chunk at pos 20", VLM_DTYPE_BF16, 5, 25, 4, 4, 96, true, 20);
    attn_case("attn decode split-K f32", VLM_DTYPE_F32, 1, 700, 32, 32, 96, true, 699);
    attn_case("attn decode split-K bf16", VLM_DTYPE_BF16, 1, 1500, 8, 2, 128, true, 1499);
    attn_case("attn tiny hd8", VLM_DTYPE_F32, 9, 9, 4, 4, 8, true, 0);
    /* short contexts: one split below 96 keys, split from there (>= 16
     * keys a split), keys not a multiple of the 4-key step, a causal chunk
     * whose queries see different key counts across splits */
    attn_case("attn decode 80 keys", VLM_DTYPE_BF16, 1, 80, 32, 32, 96, true, 79);
    attn_case("attn decode 97 keys split", VLM_DTYPE_BF16, 1, 97, 32, 32, 96, true, 96);
    attn_case("attn decode 101 keys split", VLM_DTYPE_F32, 1, 101, 4, 2, 64, true, 100);
    attn_case("attn chunk at pos 100 split", VLM_DTYPE_BF16, 3, 103, 4, 4, 96, true, 100);
    attn_case("attn decode 95 keys", VLM_DTYPE_F32, 1, 95, 2, 2, 96, true, 94);
    /* the tiled kernel (>= 32 queries): key tiles of 32 shared by 16
     * queries; partial query blocks, partial key tiles, a chunk at a later
     * position (queries of a block see different key counts), GQA */
    attn_case("attn tiled prefill 100 GQA bf16", VLM_DTYPE_BF16, 100, 100, 8, 2, 96, true, 0);
    attn_case("attn tiled chunk 70 at pos 40", VLM_DTYPE_BF16, 70, 110, 4, 4, 96, true, 40);
    attn_case("attn tiled vision 150 hd64", VLM_DTYPE_F32, 150, 150, 4, 4, 64, false, 0);
    attn_case("attn tiled hd8 33 queries", VLM_DTYPE_F32, 33, 33, 2, 2, 8, true, 0);
    attn_case("attn tiled hd128 full 47", VLM_DTYPE_BF16, 47, 61, 2, 1, 128, false, 0);
}

/* The decode step's device-position ops (what the CUDA graph records)
 * against the ops with the position as an argument, bit for bit: attention
 * over a cache of max_kv rows at positions on both sides of the split
 * thresholds (32 keys, one split per 16 keys, the 64-split cap), and
 * rope_store with the table rows and cache row of the position. Then the
 * same launches recorded once as a graph and replayed at each position
 * (only the device int32 changes): the same bits again. */
static void pos_case(const char *what, vlm_dtype kvt, int nh, int nkv, int hd, int64_t max_kv) {
    const int64_t q_stride = (int64_t)(nh + 2 * nkv) * hd, kvd = (int64_t)nkv * hd;
    const int64_t half = hd / 2, out_n = (int64_t)nh * hd;
    const size_t esz = kvt == VLM_DTYPE_BF16 ? 2 : 4;
    float *q = rnd((size_t)q_stride, 1.0f), *kf = rnd((size_t)(max_kv * kvd), 1.0f),
          *vf = rnd((size_t)(max_kv * kvd), 1.0f);
    void *kh = malloc((size_t)(max_kv * kvd) * esz), *vh = malloc((size_t)(max_kv * kvd) * esz);
    cpu_store_rows(kh, kvt, 0, kf, max_kv * kvd);
    cpu_store_rows(vh, kvt, 0, vf, max_kv * kvd);
    float inv[64];
    cpu_rope_inv_freq(inv, hd, 10000.0, NULL);
    float *tab = malloc((size_t)(2 * max_kv * half) * 4);
    cpu_rope_cos_sin(tab, tab + max_kv * half, 0, max_kv, hd, inv, 1.0);
    float *dtab = up(tab, (size_t)(2 * max_kv * half) * 4);
    float *dq = up(q, (size_t)q_stride * 4), *dq2 = up(q, (size_t)q_stride * 4);
    void *dk = up(kh, (size_t)(max_kv * kvd) * esz), *dv = up(vh, (size_t)(max_kv * kvd) * esz);
    void *dk2 = up(kh, (size_t)(max_kv * kvd) * esz), *dv2 = up(vh, (size_t)(max_kv * kvd) * esz);
    float *o1 = vlm_dev_alloc((size_t)out_n * 4, VLM_MEM_ACTIVATIONS),
          *o2 = vlm_dev_alloc((size_t)out_n * 4, VLM_MEM_ACTIVATIONS);
    int32_t *dpos = vlm_dev_alloc(sizeof(int32_t), VLM_MEM_ACTIVATIONS);
    assert_non_null(o1), assert_non_null(o2), assert_non_null(dpos);
    const vlm_cuda_weight K = {kvt, dk}, V = {kvt, dv};
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t pos[] = {0, 5, 30, 31, 32, 47, 79, 700, 1023, 1499, max_kv - 1};
    const int np = (int)(sizeof pos / sizeof pos[0]);
    float *want[sizeof pos / sizeof pos[0]];
    char msg[96];
    for (int i = 0; i < np; i++) {
        const int64_t p = pos[i];
        int32_t p32 = (int32_t)p;
        OK(vlm_cuda_upload(CTX, dpos, &p32, sizeof p32, "pos", E));
        /* rope_store: the rotated rows and both caches equal */
        OK(vlm_cuda_upload(CTX, dq, q, (size_t)q_stride * 4, "q", E));
        OK(vlm_cuda_upload(CTX, dq2, q, (size_t)q_stride * 4, "q", E));
        OK(vlm_cuda_rope_store(CTX, dq, 1, q_stride, nh, nkv, hd, dtab + p * half,
                               dtab + (max_kv + p) * half, dk, dv, kvt, p * kvd, E));
        OK(vlm_cuda_rope_store_pos(CTX, dq2, 1, q_stride, nh, nkv, hd, dtab, dtab + max_kv * half,
                                   dk2, dv2, kvt, 0, dpos, E));
        float *r1 = down(dq, (size_t)q_stride), *r2 = down(dq2, (size_t)q_stride);
        assert_memory_equal(r1, r2, (size_t)q_stride * 4);
        char *c1 = malloc((size_t)kvd * esz), *c2 = malloc((size_t)kvd * esz);
        OK(vlm_cuda_download(CTX, c1, (char *)dk + p * kvd * esz, (size_t)kvd * esz, "k", E));
        OK(vlm_cuda_download(CTX, c2, (char *)dk2 + p * kvd * esz, (size_t)kvd * esz, "k", E));
        assert_memory_equal(c1, c2, (size_t)kvd * esz);
        OK(vlm_cuda_download(CTX, c1, (char *)dv + p * kvd * esz, (size_t)kvd * esz, "v", E));
        OK(vlm_cuda_download(CTX, c2, (char *)dv2 + p * kvd * esz, (size_t)kvd * esz, "v", E));
        assert_memory_equal(c1, c2, (size_t)kvd * esz);
        free(c1), free(c2), free(r1), free(r2);
        /* attention over keys [0, p] from the rotated q */
        OK(vlm_cuda_attention(CTX, o1, dq, q_stride, K, V, kvd, 1, p + 1, nh, nkv, hd, true, p,
                              scale, E));
        OK(vlm_cuda_attention_pos(CTX, o2, dq, q_stride, K, V, kvd, 1, max_kv, nh, nkv, hd, scale,
                                  dpos, E));
        want[i] = down(o1, (size_t)out_n);
        float *got = down(o2, (size_t)out_n);
        assert_memory_equal(got, want[i], (size_t)out_n * 4);
        free(got);
    }
    /* recorded once, replayed per position; the output poisoned with NaN
     * before each run */
    float *nans = malloc((size_t)out_n * 4);
    for (int64_t j = 0; j < out_n; j++) nans[j] = NAN;
    vlm_cuda_graph *g = NULL;
    OK(vlm_cuda_capture_begin(CTX, E));
    OK(vlm_cuda_attention_pos(CTX, o2, dq, q_stride, K, V, kvd, 1, max_kv, nh, nkv, hd, scale, dpos,
                              E));
    OK(vlm_cuda_capture_end(CTX, &g, E));
    assert_non_null(g);
    for (int i = 0; i < np; i++) {
        int32_t p32 = (int32_t)pos[i];
        OK(vlm_cuda_upload(CTX, dq, q, (size_t)q_stride * 4, "q", E));
        OK(vlm_cuda_rope_store(CTX, dq, 1, q_stride, nh, nkv, hd, dtab + pos[i] * half,
                               dtab + (max_kv + pos[i]) * half, dk, dv, kvt, pos[i] * kvd, E));
        OK(vlm_cuda_upload(CTX, dpos, &p32, sizeof p32, "pos", E));
        OK(vlm_cuda_upload(CTX, o2, nans, (size_t)out_n * 4, "poison", E));
        OK(vlm_cuda_graph_launch(CTX, g, E));
        float *got = down(o2, (size_t)out_n);
        snprintf(msg, sizeof msg, "%s graph at %lld", what, (long long)pos[i]);
        if (memcmp(got, want[i], (size_t)out_n * 4)) fprintf(stderr, "%s: differs\n", msg);
        assert_memory_equal(got, want[i], (size_t)out_n * 4);
        free(got), free(want[i]);
    }
    printf("%-32s bit-equal at %d positions, direct and graph\n", what, np);
    vlm_cuda_graph_destroy(g);
    vlm_dev_free(dtab), vlm_dev_free(dq), vlm_dev_free(dq2), vlm_dev_free(dk), vlm_dev_free(dv);
    vlm_dev_free(dk2), vlm_dev_free(dv2), vlm_dev_free(o1), vlm_dev_free(o2), vlm_dev_free(dpos);
    free(q), free(kf), free(vf), free(kh), free(vh), free(tab), free(nans);
}

static void test_device_position(void **state) {
    (void)state;
    pos_case("pos decode 32h hd96 f32", VLM_DTYPE_F32, 32, 32, 96, 2048);
    pos_case("pos decode GQA hd128 bf16", VLM_DTYPE_BF16, 8, 2, 128, 1600);
    pos_case("pos decode 4h hd64 bf16", VLM_DTYPE_BF16, 4, 4, 64, 4096);
    /* an instantiation that fails (injected) reports NOMEM and no graph */
    vlm_cuda_graph *g = (vlm_cuda_graph *)1;
    vlm_err err = {0};
    vlm_cuda_graph_fail_at(1);
    OK(vlm_cuda_capture_begin(CTX, E));
    assert_int_equal(vlm_cuda_capture_end(CTX, &g, &err), VLM_ERR_NOMEM);
    assert_null(g);
    vlm_cuda_graph_fail_at(0);
}

/* n_seq sequences in one vlm_cuda_attention_seqs call against cpu_attention
 * per sequence. bf16: the caller's q, K, V count as bf16 precision, so the
 * tensor-core kernel runs where it applies (>= 32 queries, head_dim a
 * multiple of 16): it rounds q, K, V and P to bf16, so it is held to 1e-2 of
 * the largest output (bf16's relative step is 2^-8; the outputs are convex
 * combinations of V rows, so the errors do not grow with the key count),
 * and must differ from the f32 result (the tensor-core path really ran). */
static void attn_seqs_case(const char *what, vlm_dtype kvt, int n_seq, int64_t n_q, int64_t n_kv,
                           int nh, int nkv, int hd, bool causal, int64_t q_pos0, bool bf16) {
    int64_t q_stride = (int64_t)nh * hd + 3 * 16, kv_stride = (int64_t)nkv * hd + 16;
    int64_t QR = n_seq * n_q, KR = n_seq * n_kv, O = (int64_t)nh * hd;
    float *q = rnd((size_t)(QR * q_stride), 1.0f);
    float *kf = rnd((size_t)(KR * kv_stride), 1.0f), *vf = rnd((size_t)(KR * kv_stride), 1.0f);
    size_t esz = kvt == VLM_DTYPE_BF16 ? 2 : 4;
    char *kh = malloc((size_t)(KR * kv_stride) * esz), *vh = malloc((size_t)(KR * kv_stride) * esz);
    cpu_store_rows(kh, kvt, 0, kf, KR * kv_stride);
    cpu_store_rows(vh, kvt, 0, vf, KR * kv_stride);
    float scale = 1.0f / sqrtf((float)hd);
    float *want = malloc((size_t)(QR * O) * 4);
    float *scratch = malloc((size_t)(cpu_pool_threads(POOL) * n_kv) * 4);
    for (int z = 0; z < n_seq; z++) {
        size_t ko = (size_t)(z * n_kv * kv_stride) * esz;
        cpu_attention(POOL, want + z * n_q * O, q + z * n_q * q_stride, q_stride,
                      (cpu_weight){kvt, kh + ko}, (cpu_weight){kvt, vh + ko}, kv_stride, n_q, n_kv,
                      nh, nkv, hd, causal, q_pos0, scale, scratch);
    }
    float *dq = up(q, (size_t)(QR * q_stride) * 4);
    void *dk = up(kh, (size_t)(KR * kv_stride) * esz), *dv = up(vh, (size_t)(KR * kv_stride) * esz);
    float *dout = vlm_dev_alloc((size_t)(QR * O) * 4, VLM_MEM_ACTIVATIONS);
    OK(vlm_cuda_attention_seqs(CTX, dout, dq, q_stride, (vlm_cuda_weight){kvt, dk},
                               (vlm_cuda_weight){kvt, dv}, kv_stride, n_seq, n_q, n_kv, nh, nkv, hd,
                               causal, q_pos0, scale, bf16, E));
    float *got = down(dout, (size_t)(QR * O));
    close_to(what, got, want, (size_t)(QR * O), bf16 ? 1e-2 : 1e-4);
    if (bf16) {
        double dmax = 0;
        for (int64_t i = 0; i < QR * O; i++) dmax = fmax(dmax, fabs((double)got[i] - want[i]));
        assert_true(dmax > 1e-6); /* rounded to bf16: not the f32 kernel */
    }
    vlm_dev_free(dq), vlm_dev_free(dk), vlm_dev_free(dv), vlm_dev_free(dout);
    free(q), free(kf), free(vf), free(kh), free(vh), free(want), free(scratch), free(got);
}

static void test_attention_seqs(void **state) {
    (void)state;
    /* the f32 kernels, several sequences: tiled (blockIdx.z), and a launch
     * a sequence below 32 queries */
    attn_seqs_case("seqs tiled vision 3 x 77", VLM_DTYPE_F32, 3, 77, 77, 4, 4, 64, false, 0, false);
    attn_seqs_case("seqs few queries 2 x 5", VLM_DTYPE_BF16, 2, 5, 25, 4, 2, 96, true, 20, false);
    /* tensor cores: causal prefill with GQA and partial query (64) and key
     * (32) tiles; a chunk at a later position; the vision case (577 keys,
     * head_dim 64, crops as sequences); head_dims 16, 32, 80, 128 */
    attn_seqs_case("mma prefill 100 GQA bf16", VLM_DTYPE_BF16, 1, 100, 100, 8, 2, 96, true, 0,
                   true);
    attn_seqs_case("mma chunk 70 at pos 40", VLM_DTYPE_F32, 1, 70, 110, 4, 4, 64, true, 40, true);
    attn_seqs_case("mma chunk 33 at pos 300", VLM_DTYPE_BF16, 1, 33, 333, 4, 1, 96, true, 300,
                   true);
    attn_seqs_case("mma vision 2 x 577 hd64", VLM_DTYPE_F32, 2, 577, 577, 4, 4, 64, false, 0, true);
    attn_seqs_case("mma hd16 33 causal", VLM_DTYPE_F32, 1, 33, 33, 2, 2, 16, true, 0, true);
    /* the demo model's tower: 6 heads of 32 over 577 keys */
    attn_seqs_case("mma hd32 demo tower 2 x 577", VLM_DTYPE_BF16, 2, 577, 577, 6, 6, 32, false, 0,
                   true);
    attn_seqs_case("mma hd80 3 x 40", VLM_DTYPE_BF16, 3, 40, 50, 2, 2, 80, false, 0, true);
    attn_seqs_case("mma hd128 full 47 x 61", VLM_DTYPE_BF16, 1, 47, 61, 2, 1, 128, false, 0, true);
    /* enough blocks of 128 queries for the 8-warp kernel (>= 2 an SM on
     * 132 SMs): f32 K/V loaded between barriers, and bf16 K/V through the
     * cp.async double buffer, causal with GQA at a later position */
    attn_seqs_case("mma 8 warps f32 8 x 577", VLM_DTYPE_F32, 8, 577, 577, 8, 8, 64, false, 0, true);
    attn_seqs_case("mma 8 warps bf16 4 x 600 causal", VLM_DTYPE_BF16, 4, 600, 650, 16, 4, 96, true,
                   50, true);
}

/* --- the rest ----------------------------------------------------------------- */

static void test_elementwise(void **state) {
    (void)state;
    int64_t n = 3, ff = 1000, N = n * 2 * ff;
    float *a = rnd((size_t)N, 4.0f), *b = rnd((size_t)N, 1.0f);
    float *da = up(a, (size_t)N * 4), *db = up(b, (size_t)N * 4);
    float *want = malloc((size_t)N * 4), *got;

    memcpy(want, a, (size_t)N * 4);
    cpu_quick_gelu(want, N);
    OK(vlm_cuda_quick_gelu(CTX, da, N, E));
    got = down(da, (size_t)N);
    close_to("quick_gelu", got, want, (size_t)N, 1e-6);
    free(got);

    OK(vlm_cuda_upload(CTX, da, a, (size_t)N * 4, "a", E));
    memcpy(want, a, (size_t)N * 4);
    cpu_gelu_erf(want, N);
    OK(vlm_cuda_gelu_erf(CTX, da, N, E));
    got = down(da, (size_t)N);
    close_to("gelu_erf", got, want, (size_t)N, 1e-6);
    free(got);

    OK(vlm_cuda_upload(CTX, da, a, (size_t)N * 4, "a", E));
    memcpy(want, a, (size_t)N * 4);
    cpu_add(want, b, N);
    OK(vlm_cuda_add(CTX, da, db, N, E));
    got = down(da, (size_t)N);
    close_to("add", got, want, (size_t)N, 0);
    free(got);

    OK(vlm_cuda_upload(CTX, da, a, (size_t)N * 4, "a", E));
    memcpy(want, a, (size_t)N * 4);
    cpu_add_bias(want, n * 2, ff, (cpu_weight){VLM_DTYPE_F32, b});
    OK(vlm_cuda_add_bias(CTX, da, n * 2, ff, (vlm_cuda_weight){VLM_DTYPE_F32, db}, E));
    got = down(da, (size_t)N);
    close_to("add_bias", got, want, (size_t)N, 0);
    free(got);

    OK(vlm_cuda_upload(CTX, da, a, (size_t)N * 4, "a", E));
    cpu_silu_mul(want, a, n, ff);
    OK(vlm_cuda_silu_mul(CTX, db, da, n, ff, E));
    got = down(db, (size_t)(n * ff));
    close_to("silu_mul", got, want, (size_t)(n * ff), 1e-6);
    free(got);

    /* store_rows: bf16 rounding is exact (round to nearest even both sides) */
    uint16_t *hb = malloc((size_t)N * 2), *gb = malloc((size_t)N * 2);
    memset(hb, 0, (size_t)N * 2);
    cpu_store_rows(hb, VLM_DTYPE_BF16, 7, a, N - 7);
    void *dc = vlm_dev_alloc((size_t)N * 2, VLM_MEM_KV_CACHE);
    assert_non_null(dc);
    OK(vlm_cuda_upload(CTX, da, a, (size_t)N * 4, "a", E));
    OK(vlm_cuda_upload(CTX, dc, gb, 0, "nothing", E));
    memset(gb, 0, (size_t)N * 2);
    OK(vlm_cuda_upload(CTX, dc, gb, (size_t)N * 2, "zeros", E));
    OK(vlm_cuda_store_rows(CTX, dc, VLM_DTYPE_BF16, 7, da, N - 7, E));
    OK(vlm_cuda_sync(CTX, "store", E));
    OK(vlm_cuda_download(CTX, gb, dc, (size_t)N * 2, "cache", E));
    assert_memory_equal(gb, hb, (size_t)N * 2);
    /* strided: rows of 10 out of rows of 25 (a K block inside qkv rows) */
    memset(hb, 0, (size_t)N * 2);
    for (int r = 0; r < 40; r++) cpu_store_rows(hb, VLM_DTYPE_BF16, 3 + r * 10, a + r * 25 + 5, 10);
    memset(gb, 0, (size_t)N * 2);
    OK(vlm_cuda_upload(CTX, dc, gb, (size_t)N * 2, "zeros", E));
    OK(vlm_cuda_store_rows_strided(CTX, dc, VLM_DTYPE_BF16, 3, da + 5, 25, 40, 10, E));
    OK(vlm_cuda_sync(CTX, "store", E));
    OK(vlm_cuda_download(CTX, gb, dc, (size_t)N * 2, "cache", E));
    assert_memory_equal(gb, hb, (size_t)N * 2);
    vlm_dev_free(dc);

    /* embedding: bf16 table, exact */
    int64_t vocab = 50, dim = 24, nid = 6;
    float *tf = rnd((size_t)(vocab * dim), 1.0f);
    uint16_t *tb = malloc((size_t)(vocab * dim) * 2);
    to_bf16(tb, tf, (size_t)(vocab * dim));
    int32_t ids[6] = {0, 49, 3, 3, 17, 1};
    cpu_embed_rows(want, (cpu_weight){VLM_DTYPE_BF16, tb}, dim, ids, nid);
    void *dt = up(tb, (size_t)(vocab * dim) * 2), *di = up(ids, sizeof ids);
    OK(vlm_cuda_embed_rows(CTX, da, (vlm_cuda_weight){VLM_DTYPE_BF16, dt}, dim, di, nid, E));
    got = down(da, (size_t)(nid * dim));
    close_to("embed_rows", got, want, (size_t)(nid * dim), 0);
    free(got);
    vlm_dev_free(dt), vlm_dev_free(di);

    vlm_dev_free(da), vlm_dev_free(db);
    free(a), free(b), free(want), free(hb), free(gb), free(tf), free(tb);
}

static void test_patch_embed(void **state) {
    (void)state;
    int s = 56, p = 14;
    int64_t width = 64, g = s / p, per = 3LL * p * p;
    float *img = rnd((size_t)(3 * s * s), 1.0f), *w = rnd((size_t)(width * per), 0.05f);
    float *want = malloc((size_t)(g * g * width) * 4), *col = malloc((size_t)(g * g * per) * 4);
    cpu_patch_embed(POOL, want, img, s, p, width, (cpu_weight){VLM_DTYPE_F32, w}, col);
    float *dimg = up(img, (size_t)(3 * s * s) * 4), *dw = up(w, (size_t)(width * per) * 4);
    float *dcol = vlm_dev_alloc((size_t)(g * g * per) * 4, VLM_MEM_SCRATCH);
    float *dout = vlm_dev_alloc((size_t)(g * g * width) * 4, VLM_MEM_ACTIVATIONS);
    OK(vlm_cuda_patch_embed(CTX, dout, dimg, s, p, width, (vlm_cuda_weight){VLM_DTYPE_F32, dw},
                            dcol, E));
    float *got = down(dout, (size_t)(g * g * width));
    close_to("patch_embed f32", got, want, (size_t)(g * g * width), 1e-5);
    vlm_dev_free(dimg), vlm_dev_free(dw), vlm_dev_free(dcol), vlm_dev_free(dout);
    free(img), free(w), free(want), free(col), free(got);
}

/* --- 16-bit product inputs (the vision tower's path) ------------------------ */

static void to_half_host(vlm_dtype t, uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = t == VLM_DTYPE_BF16 ? vlm_f32_to_bf16(src[i]) : vlm_f32_to_f16(src[i]);
}
static float half_to_f32(vlm_dtype t, uint16_t h) {
    return t == VLM_DTYPE_BF16 ? vlm_bf16_to_f32(h) : vlm_f16_to_f32(h);
}

/* layernorm_h: bit for bit layernorm's f32 output rounded to nearest even
 * (what matmul's own rounding made of it), BF16 and F16, a full and a
 * partial block of threads. */
static void ln_h_case(vlm_dtype t, int64_t n, int64_t dim) {
    float *x = rnd((size_t)(n * dim), 3.0f), *w = rnd((size_t)dim, 1.0f),
          *b = rnd((size_t)dim, 0.5f);
    for (int64_t i = 0; i < n * dim; i++) x[i] += 0.7f; /* a mean to remove */
    float *dx = up(x, (size_t)(n * dim) * 4), *dw = up(w, (size_t)dim * 4),
          *db = up(b, (size_t)dim * 4);
    float *dy = vlm_dev_alloc((size_t)(n * dim) * 4, VLM_MEM_ACTIVATIONS);
    void *dh = vlm_dev_alloc((size_t)(n * dim) * 2, VLM_MEM_ACTIVATIONS);
    assert_non_null(dy);
    assert_non_null(dh);
    vlm_cuda_weight cw = {VLM_DTYPE_F32, dw}, cb = {VLM_DTYPE_F32, db};
    OK(vlm_cuda_layernorm(CTX, dy, dx, n, dim, cw, cb, 1e-5f, E));
    OK(vlm_cuda_layernorm_h(CTX, dh, t, dx, n, dim, cw, cb, 1e-5f, E));
    float *y = down(dy, (size_t)(n * dim));
    uint16_t *want = malloc((size_t)(n * dim) * 2), *got = malloc((size_t)(n * dim) * 2);
    to_half_host(t, want, y, (size_t)(n * dim));
    OK(vlm_cuda_download(CTX, got, dh, (size_t)(n * dim) * 2, "layernorm_h", E));
    assert_memory_equal(got, want, (size_t)(n * dim) * 2);
    printf("layernorm_h %s n=%lld dim=%lld: bit-identical to layernorm + rounding\n",
           vlm_dtype_get(t)->name, (long long)n, (long long)dim);
    /* and the CPU's LayerNorm, through the rounding (2^-8 relative) */
    float *cpu = malloc((size_t)(n * dim) * 4), *gotf = malloc((size_t)(n * dim) * 4);
    cpu_layernorm(cpu, x, n, dim, (cpu_weight){VLM_DTYPE_F32, w}, (cpu_weight){VLM_DTYPE_F32, b},
                  1e-5f);
    for (int64_t i = 0; i < n * dim; i++) gotf[i] = half_to_f32(t, got[i]);
    close_to("layernorm_h vs cpu_layernorm", gotf, cpu, (size_t)(n * dim), 4e-3);
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dy), vlm_dev_free(dh);
    free(x), free(w), free(b), free(y), free(want), free(got), free(cpu), free(gotf);
}

/* matmul_h / matmul_h_acc against cpu_matmul on the same 16-bit inputs
 * (x rounded on the host, widened for the CPU): only the summation order
 * differs (16-bit products are exact in f32). Biases in f32 (cuBLASLt's
 * epilogue) and bf16 (the epilogue or add_bias, whichever the library
 * takes), none; n from 3 to 1000. */
static void mm_h_case(vlm_dtype t, int64_t n, int64_t in, int64_t out, vlm_dtype bias_t) {
    float *x = rnd((size_t)(n * in), 1.0f), *wf = rnd((size_t)(out * in), 0.1f);
    float *bf = rnd((size_t)out, 0.5f), *y0 = rnd((size_t)(n * out), 2.0f);
    uint16_t *xh = malloc((size_t)(n * in) * 2), *wh = malloc((size_t)(out * in) * 2),
             *bh = malloc((size_t)out * 2);
    to_half_host(t, xh, x, (size_t)(n * in));
    to_half_host(t, wh, wf, (size_t)(out * in));
    for (int64_t i = 0; i < n * in; i++) x[i] = half_to_f32(t, xh[i]);
    to_bf16(bh, bf, (size_t)out);
    const bool has_b = bias_t != VLM_DTYPE_COUNT;
    if (bias_t == VLM_DTYPE_BF16)
        for (int64_t i = 0; i < out; i++) bf[i] = vlm_bf16_to_f32(bh[i]);
    float *want = malloc((size_t)(n * out) * 4);
    cpu_matmul(POOL, want, x, n, in, out, (cpu_weight){t, wh},
               (cpu_weight){VLM_DTYPE_F32, has_b ? bf : NULL});
    void *dx = up(xh, (size_t)(n * in) * 2), *dw = up(wh, (size_t)(out * in) * 2);
    void *db = bias_t == VLM_DTYPE_BF16 ? up(bh, (size_t)out * 2) : up(bf, (size_t)out * 4);
    float *dy = vlm_dev_alloc((size_t)(n * out) * 4, VLM_MEM_ACTIVATIONS);
    assert_non_null(dy);
    vlm_cuda_weight cw = {t, dw}, cb = {has_b ? bias_t : VLM_DTYPE_F32, has_b ? db : NULL};
    OK(vlm_cuda_matmul_h(CTX, dy, dx, n, in, out, cw, cb, E));
    float *got = down(dy, (size_t)(n * out));
    char what[96];
    snprintf(what, sizeof what, "matmul_h %s n=%lld in=%lld out=%lld b=%s", vlm_dtype_get(t)->name,
             (long long)n, (long long)in, (long long)out,
             has_b ? vlm_dtype_get(bias_t)->name : "none");
    close_to(what, got, want, (size_t)(n * out), 1e-4);
    /* y0 + x W^T + b */
    for (int64_t i = 0; i < n * out; i++) want[i] += y0[i];
    float *dy0 = up(y0, (size_t)(n * out) * 4);
    OK(vlm_cuda_matmul_h_acc(CTX, dy0, dx, n, in, out, cw, cb, E));
    free(got);
    got = down(dy0, (size_t)(n * out));
    snprintf(what, sizeof what, "matmul_h_acc %s n=%lld in=%lld out=%lld", vlm_dtype_get(t)->name,
             (long long)n, (long long)in, (long long)out);
    close_to(what, got, want, (size_t)(n * out), 1e-4);
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dy), vlm_dev_free(dy0);
    free(x), free(wf), free(bf), free(y0), free(xh), free(wh), free(bh), free(want), free(got);
}

/* How many bf16 steps apart two bf16 values are (0: the same value); a
 * sign change counts the steps through zero. */
static int bf16_steps(uint16_t a, uint16_t b) {
    int32_t ia = a & 0x8000 ? -(int32_t)(a & 0x7fff) : (int32_t)a;
    int32_t ib = b & 0x8000 ? -(int32_t)(b & 0x7fff) : (int32_t)b;
    return ia > ib ? ia - ib : ib - ia;
}

/* The bf16 residual's ops. layernorm_h16: bf16 rows in, 16-bit rows out,
 * against cpu_layernorm on the same values widened, rounded to bf16: each
 * value within one bf16 step (the device sums in another order), for the
 * 8-values-a-word kernel (dim a multiple of 256), the warp kernel (a
 * multiple of 128) and the block kernel (any other), odd and even row
 * counts. matmul_h_acc16: y16 += x W^T + b with a bf16 y16 and bias,
 * against cpu_matmul plus y16, rounded once (1e-2: a bf16 step and the
 * summation order). bf16_to_f32:
 * exact, eight at a time and one at a time. */
static void ln_h16_case(int64_t n, int64_t dim) {
    float *x = rnd((size_t)(n * dim), 3.0f), *w = rnd((size_t)dim, 1.0f),
          *b = rnd((size_t)dim, 0.5f);
    uint16_t *xh = malloc((size_t)(n * dim) * 2), *wh = malloc((size_t)dim * 2),
             *bh = malloc((size_t)dim * 2);
    for (int64_t i = 0; i < n * dim; i++) x[i] += 0.7f; /* a mean to remove */
    to_bf16(xh, x, (size_t)(n * dim));
    to_bf16(wh, w, (size_t)dim);
    to_bf16(bh, b, (size_t)dim);
    for (int64_t i = 0; i < n * dim; i++) x[i] = vlm_bf16_to_f32(xh[i]);
    float *want = malloc((size_t)(n * dim) * 4);
    cpu_layernorm(want, x, n, dim, (cpu_weight){VLM_DTYPE_BF16, wh},
                  (cpu_weight){VLM_DTYPE_BF16, bh}, 1e-5f);
    void *dx = up(xh, (size_t)(n * dim) * 2), *dw = up(wh, (size_t)dim * 2),
         *db = up(bh, (size_t)dim * 2);
    void *dh = vlm_dev_alloc((size_t)(n * dim) * 2, VLM_MEM_ACTIVATIONS);
    assert_non_null(dh);
    OK(vlm_cuda_layernorm_h16(CTX, dh, VLM_DTYPE_BF16, dx, n, dim,
                              (vlm_cuda_weight){VLM_DTYPE_BF16, dw},
                              (vlm_cuda_weight){VLM_DTYPE_BF16, db}, 1e-5f, E));
    uint16_t *got = malloc((size_t)(n * dim) * 2);
    OK(vlm_cuda_sync(CTX, "layernorm_h16", E));
    OK(vlm_cuda_download(CTX, got, dh, (size_t)(n * dim) * 2, "layernorm_h16", E));
    int worst = 0;
    for (int64_t i = 0; i < n * dim; i++) {
        const int st = bf16_steps(got[i], vlm_f32_to_bf16(want[i]));
        if (st > worst) worst = st;
    }
    printf("layernorm_h16 n=%lld dim=%lld: at most %d bf16 step from cpu_layernorm\n", (long long)n,
           (long long)dim, worst);
    assert_true(worst <= 1);
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dh);
    free(x), free(w), free(b), free(xh), free(wh), free(bh), free(want), free(got);
}

static void mm_acc16_case(int64_t n, int64_t in, int64_t out) {
    float *x = rnd((size_t)(n * in), 1.0f), *wf = rnd((size_t)(out * in), 0.1f);
    float *bf = rnd((size_t)out, 0.5f), *y0 = rnd((size_t)(n * out), 2.0f);
    uint16_t *xh = malloc((size_t)(n * in) * 2), *wh = malloc((size_t)(out * in) * 2),
             *bh = malloc((size_t)out * 2), *yh = malloc((size_t)(n * out) * 2);
    to_bf16(xh, x, (size_t)(n * in));
    to_bf16(wh, wf, (size_t)(out * in));
    to_bf16(bh, bf, (size_t)out);
    to_bf16(yh, y0, (size_t)(n * out));
    for (int64_t i = 0; i < n * in; i++) x[i] = vlm_bf16_to_f32(xh[i]);
    for (int64_t i = 0; i < out; i++) bf[i] = vlm_bf16_to_f32(bh[i]);
    float *want = malloc((size_t)(n * out) * 4);
    cpu_matmul(POOL, want, x, n, in, out, (cpu_weight){VLM_DTYPE_BF16, wh},
               (cpu_weight){VLM_DTYPE_F32, bf});
    for (int64_t i = 0; i < n * out; i++)
        want[i] = vlm_round_bf16(want[i] + vlm_bf16_to_f32(yh[i]));
    void *dx = up(xh, (size_t)(n * in) * 2), *dw = up(wh, (size_t)(out * in) * 2),
         *db = up(bh, (size_t)out * 2), *dy = up(yh, (size_t)(n * out) * 2);
    vlm_cuda_weight cw = {VLM_DTYPE_BF16, dw};
    OK(vlm_cuda_matmul_h_acc16(CTX, dy, dx, n, in, out, cw, (vlm_cuda_weight){VLM_DTYPE_BF16, db},
                               E));
    float *got = down_bf16(dy, (size_t)(n * out));
    char what[96];
    snprintf(what, sizeof what, "matmul_h_acc16 n=%lld in=%lld out=%lld", (long long)n,
             (long long)in, (long long)out);
    close_to(what, got, want, (size_t)(n * out), 1e-2);
    /* widened back to f32: exact */
    float *df = vlm_dev_alloc((size_t)(n * out) * 4, VLM_MEM_ACTIVATIONS);
    assert_non_null(df);
    for (int odd = 0; odd < 2; odd++) {
        const int64_t cnt = n * out - odd; /* odd: not whole 8-value words */
        OK(vlm_cuda_bf16_to_f32(CTX, df, dy, cnt, E));
        float *wide = down(df, (size_t)cnt);
        for (int64_t i = 0; i < cnt; i++) assert_true(wide[i] == got[i]);
        free(wide);
    }
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dy), vlm_dev_free(df);
    free(x), free(wf), free(bf), free(y0), free(xh), free(wh), free(bh), free(yh), free(want);
    free(got);
}

/* bias + quick-GELU + rounding in one pass against cpu_add_bias +
 * cpu_quick_gelu (f32): each value within one rounding (2^-8 relative for
 * bf16, 2^-11 for f16) plus expf's few ulps; to_half bit for bit as the
 * host rounds. */
static void gelu_h_case(vlm_dtype t, int64_t n, int64_t dim) {
    float *x = rnd((size_t)(n * dim), 4.0f), *b = rnd((size_t)dim, 1.0f);
    float *want = malloc((size_t)(n * dim) * 4);
    memcpy(want, x, (size_t)(n * dim) * 4);
    cpu_add_bias(want, n, dim, (cpu_weight){VLM_DTYPE_F32, b});
    cpu_quick_gelu(want, n * dim);
    float *dx = up(x, (size_t)(n * dim) * 4), *db = up(b, (size_t)dim * 4);
    void *dh = vlm_dev_alloc((size_t)(n * dim) * 2, VLM_MEM_ACTIVATIONS);
    assert_non_null(dh);
    OK(vlm_cuda_bias_quick_gelu_h(CTX, dh, t, dx, n, dim, (vlm_cuda_weight){VLM_DTYPE_F32, db}, E));
    OK(vlm_cuda_sync(CTX, "bias_quick_gelu_h", E));
    uint16_t *got = malloc((size_t)(n * dim) * 2), *want_h = malloc((size_t)(n * dim) * 2);
    OK(vlm_cuda_download(CTX, got, dh, (size_t)(n * dim) * 2, "bias_quick_gelu_h", E));
    const double ulp = t == VLM_DTYPE_BF16 ? 1.0 / 256 : 1.0 / 2048;
    size_t bad = 0;
    for (int64_t i = 0; i < n * dim; i++) {
        double g = half_to_f32(t, got[i]), w = want[i];
        if (!(fabs(g - w) <= ulp * fabs(w) + 1e-6)) bad++;
    }
    printf("bias_quick_gelu_h %s n=%lld dim=%lld: %zu values beyond one rounding\n",
           vlm_dtype_get(t)->name, (long long)n, (long long)dim, bad);
    assert_int_equal(bad, 0);
    /* to_half: the host's rounding of the same f32 values */
    OK(vlm_cuda_to_half(CTX, dh, t, dx, n * dim, E));
    OK(vlm_cuda_sync(CTX, "to_half", E));
    OK(vlm_cuda_download(CTX, got, dh, (size_t)(n * dim) * 2, "to_half", E));
    to_half_host(t, want_h, x, (size_t)(n * dim));
    assert_memory_equal(got, want_h, (size_t)(n * dim) * 2);
    vlm_dev_free(dx), vlm_dev_free(db), vlm_dev_free(dh);
    free(x), free(b), free(want), free(got), free(want_h);
}

/* quick-GELU in place on bf16 values (fc1's bf16 output): each value the
 * host's round_bf16(quick_gelu(x)) within one bf16 step (the device's expf
 * may differ from the host's by an ulp, which can move a rounding); a
 * count that is not whole 8-value vectors is refused. */
static void gelu_bf16_case(int64_t n) {
    float *x = rnd((size_t)n, 6.0f);
    uint16_t *xh = malloc((size_t)n * 2), *got = malloc((size_t)n * 2);
    to_bf16(xh, x, (size_t)n);
    float *want = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) want[i] = vlm_bf16_to_f32(xh[i]);
    cpu_quick_gelu(want, n);
    void *dx = up(xh, (size_t)n * 2);
    OK(vlm_cuda_quick_gelu_bf16(CTX, dx, n, E));
    OK(vlm_cuda_sync(CTX, "quick_gelu_bf16", E));
    OK(vlm_cuda_download(CTX, got, dx, (size_t)n * 2, "quick_gelu_bf16", E));
    size_t bad = 0, exact = 0;
    for (int64_t i = 0; i < n; i++) {
        const double g = vlm_bf16_to_f32(got[i]), w = vlm_round_bf16(want[i]);
        exact += got[i] == vlm_f32_to_bf16(want[i]);
        if (!(fabs(g - w) <= fabs(w) / 128 + 1e-30)) bad++;
    }
    printf("quick_gelu_bf16 n=%lld: %zu of %lld as the host rounds, %zu beyond one step\n",
           (long long)n, exact, (long long)n, bad);
    assert_int_equal(bad, 0);
    assert_true(exact >= (size_t)(n * 99 / 100));
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_quick_gelu_bf16(CTX, dx, n - 1, &err), VLM_ERR_INVALID_ARG);
    vlm_dev_free(dx);
    free(x), free(xh), free(got), free(want);
}

/* fc1 with its activation, matmul_h_qgelu16 (gemm90 where it takes the
 * shapes: Hopper, an sm_90a build, out a multiple of 256, in of 64),
 * against the host's round(quick_gelu(round(x W^T + b))) within 1e-2 of
 * the largest value (a bf16 step and the summation order), and against out16
 * followed by quick_gelu_bf16 on the device (the path elsewhere), 99% of
 * the values the same bits. The outputs are poisoned (NaN) first: every
 * value written. n 300: a last tile of 44 rows; 577 x 1024 -> 4096: the
 * tower's fc1 at one crop; 40 x 96 -> 200: shapes gemm90 does not take. */
static void mm_g90_case(int64_t n, int64_t in, int64_t out) {
    float *x = rnd((size_t)(n * in), 1.0f), *w = rnd((size_t)(out * in), 0.1f),
          *b = rnd((size_t)out, 0.5f);
    uint16_t *xh = malloc((size_t)(n * in) * 2), *wh = malloc((size_t)(out * in) * 2),
             *bh = malloc((size_t)out * 2), *nan16 = malloc((size_t)(n * out) * 2);
    to_bf16(xh, x, (size_t)(n * in));
    to_bf16(wh, w, (size_t)(out * in));
    to_bf16(bh, b, (size_t)out);
    for (int64_t i = 0; i < n * in; i++) x[i] = vlm_bf16_to_f32(xh[i]);
    for (int64_t i = 0; i < out * in; i++) w[i] = vlm_bf16_to_f32(wh[i]);
    for (int64_t i = 0; i < out; i++) b[i] = vlm_bf16_to_f32(bh[i]);
    for (int64_t i = 0; i < n * out; i++) nan16[i] = 0x7fc1;
    float *gl = malloc((size_t)(n * out) * 4);
    cpu_matmul(POOL, gl, x, n, in, out, (cpu_weight){VLM_DTYPE_F32, w},
               (cpu_weight){VLM_DTYPE_F32, b});
    for (int64_t i = 0; i < n * out; i++) gl[i] = vlm_round_bf16(gl[i]);
    cpu_quick_gelu(gl, n * out);
    for (int64_t i = 0; i < n * out; i++) gl[i] = vlm_round_bf16(gl[i]);
    void *dx = up(xh, (size_t)(n * in) * 2), *dw = up(wh, (size_t)(out * in) * 2),
         *db = up(bh, (size_t)out * 2), *dy = up(nan16, (size_t)(n * out) * 2),
         *dy2 = up(nan16, (size_t)(n * out) * 2);
    const vlm_cuda_weight cw = {VLM_DTYPE_BF16, dw}, cb = {VLM_DTYPE_BF16, db};
    OK(vlm_cuda_matmul_h_qgelu16(CTX, dy, dx, n, in, out, cw, cb, E));
    float *got = down_bf16(dy, (size_t)(n * out));
    char what[96];
    snprintf(what, sizeof what, "matmul_h_qgelu16 n=%lld in=%lld out=%lld", (long long)n,
             (long long)in, (long long)out);
    close_to(what, got, gl, (size_t)(n * out), 1e-2);
    free(got);
    /* the two passes on the device */
    OK(vlm_cuda_matmul_h_out16(CTX, dy2, dx, n, in, out, cw, cb, E));
    OK(vlm_cuda_quick_gelu_bf16(CTX, dy2, n * out, E));
    uint16_t *g1 = malloc((size_t)(n * out) * 2), *g2 = malloc((size_t)(n * out) * 2);
    OK(vlm_cuda_sync(CTX, "qgelu16", E));
    OK(vlm_cuda_download(CTX, g1, dy, (size_t)(n * out) * 2, "qgelu16", E));
    OK(vlm_cuda_download(CTX, g2, dy2, (size_t)(n * out) * 2, "qgelu16", E));
    int64_t same = 0;
    for (int64_t i = 0; i < n * out; i++) same += g1[i] == g2[i];
    printf("matmul_h_qgelu16: %lld of %lld as out16 + quick_gelu_bf16 (gemm90 %s)\n",
           (long long)same, (long long)(n * out), vlm_cuda_has_gemm90(CTX) ? "on" : "off");
    assert_true(same >= n * out * 99 / 100);
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dy), vlm_dev_free(dy2);
    free(x), free(w), free(b), free(xh), free(wh), free(bh), free(nan16), free(gl);
    free(g1), free(g2);
}

/* rmsnorm_h and silu_mul_h: bit for bit rmsnorm / silu_mul followed by
 * to_half (the rounding the prefill products did in their own pass), BF16
 * and F16, through the row kernel (3072) and the general one (64, 1000);
 * silu_mul_h refuses rows that are not whole 4-value vectors. */
static void norm_silu_h_case(vlm_dtype t, int64_t n, int64_t dim) {
    float *x = rnd((size_t)(n * dim), 2.0f), *w = rnd((size_t)dim, 1.0f);
    float *gu = rnd((size_t)(n * 2 * dim), 3.0f);
    float *dx = up(x, (size_t)(n * dim) * 4), *dw = up(w, (size_t)dim * 4);
    float *dgu = up(gu, (size_t)(n * 2 * dim) * 4);
    float *df = vlm_dev_alloc((size_t)(n * dim) * 4, VLM_MEM_ACTIVATIONS);
    void *dh = vlm_dev_alloc((size_t)(n * dim) * 2, VLM_MEM_ACTIVATIONS),
         *dh2 = vlm_dev_alloc((size_t)(n * dim) * 2, VLM_MEM_ACTIVATIONS);
    assert_non_null(df), assert_non_null(dh), assert_non_null(dh2);
    uint16_t *a = malloc((size_t)(n * dim) * 2), *b = malloc((size_t)(n * dim) * 2);
    const vlm_cuda_weight cw = {VLM_DTYPE_F32, dw};
    for (int op = 0; op < 2; op++) {
        if (op == 0) {
            OK(vlm_cuda_rmsnorm(CTX, df, dx, n, dim, cw, 1e-5f, E));
            OK(vlm_cuda_rmsnorm_h(CTX, dh2, t, dx, n, dim, cw, 1e-5f, E));
        } else {
            OK(vlm_cuda_silu_mul(CTX, df, dgu, n, dim, E));
            OK(vlm_cuda_silu_mul_h(CTX, dh2, t, dgu, n, dim, E));
        }
        OK(vlm_cuda_to_half(CTX, dh, t, df, n * dim, E));
        OK(vlm_cuda_sync(CTX, "norm_silu_h", E));
        OK(vlm_cuda_download(CTX, a, dh, (size_t)(n * dim) * 2, "norm_silu_h", E));
        OK(vlm_cuda_download(CTX, b, dh2, (size_t)(n * dim) * 2, "norm_silu_h", E));
        printf("%s %s n=%lld dim=%lld: bit for bit the f32 op + to_half\n",
               op ? "silu_mul_h" : "rmsnorm_h", vlm_dtype_get(t)->name, (long long)n,
               (long long)dim);
        assert_memory_equal(a, b, (size_t)(n * dim) * 2);
    }
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_silu_mul_h(CTX, dh2, t, dgu, n, dim - 1, &err), VLM_ERR_UNSUPPORTED);
    assert_int_equal(vlm_cuda_rmsnorm_h(CTX, dh2, VLM_DTYPE_F32, dx, n, dim, cw, 1e-5f, &err),
                     VLM_ERR_UNSUPPORTED);
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(dgu), vlm_dev_free(df), vlm_dev_free(dh);
    vlm_dev_free(dh2);
    free(x), free(w), free(gu), free(a), free(b);
}

static void test_half_inputs(void **state) {
    (void)state;
    ln_h_case(VLM_DTYPE_BF16, 37, 1024);
    ln_h16_case(37, 1024); /* the tower's rows: 16-byte words */
    ln_h16_case(8, 512);
    ln_h16_case(5, 384);            /* the warp kernel */
    ln_h16_case(3, 192);            /* the block kernel: the demo tower's width */
    mm_acc16_case(577, 1024, 1024); /* out_proj on the bf16 residual */
    mm_acc16_case(40, 4096, 1024);  /* fc2 */
    mm_acc16_case(9, 64, 48);
    ln_h_case(VLM_DTYPE_BF16, 5, 100);
    ln_h_case(VLM_DTYPE_F16, 9, 1024);
    mm_h_case(VLM_DTYPE_BF16, 40, 256, 96, VLM_DTYPE_F32);
    mm_h_case(VLM_DTYPE_BF16, 1000, 1024, 3072, VLM_DTYPE_F32); /* the tower's q|k|v shape */
    mm_h_case(VLM_DTYPE_BF16, 577, 4096, 1024, VLM_DTYPE_F32);  /* fc2 */
    mm_h_case(VLM_DTYPE_BF16, 17, 64, 48, VLM_DTYPE_BF16);
    mm_h_case(VLM_DTYPE_BF16, 3, 72, 40, VLM_DTYPE_COUNT); /* no bias, n below the GEMV size */
    mm_h_case(VLM_DTYPE_F16, 33, 128, 80, VLM_DTYPE_F32);
    mm_h_case(VLM_DTYPE_BF16, 19, 30, 7, VLM_DTYPE_F32); /* odd sizes: unaligned rows */
    gelu_h_case(VLM_DTYPE_BF16, 7, 4096);
    gelu_h_case(VLM_DTYPE_F16, 3, 1000);
    gelu_bf16_case(8 * 4096);
    gelu_bf16_case(8);
    mm_g90_case(300, 128, 512);
    mm_g90_case(1, 64, 256);
    mm_g90_case(577, 1024, 4096);               /* the tower's fc1 */
    mm_g90_case(40, 96, 200);                   /* shapes gemm90 does not take: the two passes */
    norm_silu_h_case(VLM_DTYPE_BF16, 37, 3072); /* the decoder's rows: the row kernel */
    norm_silu_h_case(VLM_DTYPE_F16, 5, 3072);
    norm_silu_h_case(VLM_DTYPE_BF16, 9, 64); /* the tiny model's */
    norm_silu_h_case(VLM_DTYPE_F16, 3, 1000);
}

/* The tower's bf16 q|k|v and attention: matmul_h_out16 against cpu_matmul
 * on the same bf16 inputs then rounded (1e-2: one bf16 step, and the
 * library's summation order); attention_seqs_h (bf16 q, K, V in one
 * [T][3D] buffer, bf16 out) against the f32-interface tensor-core kernel
 * (k_attn_mma) on the same values, rounded as to_half rounds: bit for bit
 * where attention_seqs_h runs k_attn_mma too, within one bf16 step where
 * it runs k_attn_wgmma (sm_90a; the tensor cores' own order of the
 * products' sums), with at most 2% of the values a step apart. np 77: one
 * key tile of 64 and a tail of 13, the second warpgroup's 13 queries;
 * np 577: the vision tower's (9 tiles and one key). */
static void bf16_qkv_attention_case(int n_seq, int64_t np) {
    const int nh = 4, hd = 64;
    const int64_t T = n_seq * np, D = nh * hd, in = 96;
    float *x = rnd((size_t)(T * in), 1.0f), *w = rnd((size_t)(3 * D * in), 0.2f),
          *b = rnd((size_t)(3 * D), 0.5f);
    uint16_t *xh = malloc((size_t)(T * in) * 2), *wh = malloc((size_t)(3 * D * in) * 2);
    to_bf16(xh, x, (size_t)(T * in));
    to_bf16(wh, w, (size_t)(3 * D * in));
    for (int64_t i = 0; i < T * in; i++) x[i] = vlm_bf16_to_f32(xh[i]);
    for (int64_t i = 0; i < 3 * D * in; i++) w[i] = vlm_bf16_to_f32(wh[i]);
    float *want = malloc((size_t)(T * 3 * D) * 4);
    cpu_matmul(POOL, want, x, T, in, 3 * D, (cpu_weight){VLM_DTYPE_F32, w},
               (cpu_weight){VLM_DTYPE_F32, b});
    for (int64_t i = 0; i < T * 3 * D; i++) want[i] = vlm_bf16_to_f32(vlm_f32_to_bf16(want[i]));
    void *dx = up(xh, (size_t)(T * in) * 2), *dw = up(wh, (size_t)(3 * D * in) * 2);
    float *db = up(b, (size_t)(3 * D) * 4);
    uint16_t *dqkv = vlm_dev_alloc((size_t)(T * 3 * D) * 2, VLM_MEM_ACTIVATIONS);
    vlm_err err = {0};
    /* a BF16 bias (the tower's, held as stored): the same products within
     * one bf16 step of the reference with the bias rounded to bf16 */
    uint16_t *bh = malloc((size_t)(3 * D) * 2);
    to_bf16(bh, b, (size_t)(3 * D));
    float *want16 = malloc((size_t)(T * 3 * D) * 4), *b16f = malloc((size_t)(3 * D) * 4);
    for (int64_t i = 0; i < 3 * D; i++) b16f[i] = vlm_bf16_to_f32(bh[i]);
    cpu_matmul(POOL, want16, x, T, in, 3 * D, (cpu_weight){VLM_DTYPE_F32, w},
               (cpu_weight){VLM_DTYPE_F32, b16f});
    for (int64_t i = 0; i < T * 3 * D; i++) want16[i] = vlm_round_bf16(want16[i]);
    void *dbh = up(bh, (size_t)(3 * D) * 2);
    OK(vlm_cuda_matmul_h_out16(CTX, dqkv, dx, T, in, 3 * D, (vlm_cuda_weight){VLM_DTYPE_BF16, dw},
                               (vlm_cuda_weight){VLM_DTYPE_BF16, dbh}, E));
    float *got16 = down_bf16(dqkv, (size_t)(T * 3 * D));
    close_to("matmul_h_out16 q|k|v, bf16 bias", got16, want16, (size_t)(T * 3 * D), 1e-2);
    vlm_dev_free(dbh);
    free(bh), free(want16), free(b16f), free(got16);
    /* an f32 bias */
    OK(vlm_cuda_matmul_h_out16(CTX, dqkv, dx, T, in, 3 * D, (vlm_cuda_weight){VLM_DTYPE_BF16, dw},
                               (vlm_cuda_weight){VLM_DTYPE_F32, db}, E));
    float *got = down_bf16(dqkv, (size_t)(T * 3 * D));
    close_to("matmul_h_out16 q|k|v", got, want, (size_t)(T * 3 * D), 1e-2);

    /* attention: bf16 in and out, against the f32 interface on the same values */
    const float scale = 0.125f;
    float *dq32 = up(got, (size_t)(T * 3 * D) * 4);
    float *dref = vlm_dev_alloc((size_t)(T * D) * 4, VLM_MEM_ACTIVATIONS);
    OK(vlm_cuda_attention_seqs(CTX, dref, dq32, 3 * D, (vlm_cuda_weight){VLM_DTYPE_F32, dq32 + D},
                               (vlm_cuda_weight){VLM_DTYPE_F32, dq32 + 2 * D}, 3 * D, n_seq, np, np,
                               nh, nh, hd, false, 0, scale, true, E));
    float *ref = down(dref, (size_t)(T * D));
    uint16_t *dout = vlm_dev_alloc((size_t)(T * D) * 2, VLM_MEM_ACTIVATIONS);
    OK(vlm_cuda_attention_seqs_h(CTX, dout, dqkv, 3 * D, dqkv + D, dqkv + 2 * D, 3 * D, n_seq, np,
                                 np, nh, nh, hd, scale, E));
    uint16_t *o16 = malloc((size_t)(T * D) * 2);
    assert_int_equal(vlm_cuda_sync(CTX, "test", &err), VLM_OK);
    assert_int_equal(vlm_cuda_download(CTX, o16, dout, (size_t)(T * D) * 2, "test", &err), VLM_OK);
    int64_t apart = 0;
    int worst = 0;
    for (int64_t i = 0; i < T * D; i++) {
        const int st = bf16_steps(o16[i], vlm_f32_to_bf16(ref[i]));
        apart += st > 0;
        if (st > worst) worst = st;
    }
    printf("attention_seqs_h %d x %lld: %lld of %lld values a bf16 step from k_attn_mma's, at "
           "most %d\n",
           n_seq, (long long)np, (long long)apart, (long long)(T * D), worst);
    assert_true(worst <= 1);
    assert_true(apart * 50 <= T * D);
    /* a K/V row start that is not 16-byte aligned is refused, not run */
    assert_int_equal(vlm_cuda_attention_seqs_h(CTX, dout, dqkv, 3 * D, dqkv + D + 4, dqkv + 2 * D,
                                               3 * D, n_seq, np, np, nh, nh, hd, scale, &err),
                     VLM_ERR_UNSUPPORTED);
    vlm_dev_free(dx), vlm_dev_free(dw), vlm_dev_free(db), vlm_dev_free(dqkv), vlm_dev_free(dq32);
    vlm_dev_free(dref), vlm_dev_free(dout);
    free(x), free(w), free(b), free(xh), free(wh), free(want), free(got), free(ref);
    free(o16);
}

static void test_bf16_qkv_attention(void **state) {
    (void)state;
    bf16_qkv_attention_case(3, 77);
    bf16_qkv_attention_case(2, 577);
}

/* Every crop's patch embedding, class and position rows at once against
 * cpu_patch_embed per crop + the adds of the CPU tower: f32 weights (1e-5),
 * bf16 weights (the GPU rounds the im2col to bf16: 1e-2). */
static void patch_crops_case(vlm_dtype t, double rtol) {
    const int s = 56, p = 14, nc = 3;
    const int64_t width = 64, g = s / p, per = 3LL * p * p, np = g * g + 1;
    float *img = rnd((size_t)(nc * 3 * s * s), 1.0f), *wf = rnd((size_t)(width * per), 0.05f);
    float *cls = rnd((size_t)width, 1.0f), *pos = rnd((size_t)(np * width), 1.0f);
    uint16_t *wh = malloc((size_t)(width * per) * 2);
    to_bf16(wh, wf, (size_t)(width * per));
    if (t == VLM_DTYPE_BF16)
        for (int64_t i = 0; i < width * per; i++) wf[i] = vlm_bf16_to_f32(wh[i]);
    float *want = malloc((size_t)(nc * np * width) * 4), *col = malloc((size_t)(g * g * per) * 4);
    for (int c = 0; c < nc; c++) {
        float *xc = want + (int64_t)c * np * width;
        memcpy(xc, cls, (size_t)width * 4);
        cpu_patch_embed(POOL, xc + width, img + (int64_t)c * 3 * s * s, s, p, width,
                        (cpu_weight){VLM_DTYPE_F32, wf}, col);
        cpu_add(xc, pos, np * width);
    }
    float *dimg = up(img, (size_t)(nc * 3 * s * s) * 4);
    void *dw =
        t == VLM_DTYPE_BF16 ? up(wh, (size_t)(width * per) * 2) : up(wf, (size_t)(width * per) * 4);
    float *dcls = up(cls, (size_t)width * 4), *dpos = up(pos, (size_t)(np * width) * 4);
    void *dcol = vlm_dev_alloc((size_t)(nc * g * g * per) * 4, VLM_MEM_SCRATCH);
    float *dtmp = vlm_dev_alloc((size_t)(nc * g * g * width) * 4, VLM_MEM_SCRATCH);
    float *dx = vlm_dev_alloc((size_t)(nc * np * width) * 4, VLM_MEM_ACTIVATIONS);
    assert_non_null(dcol);
    assert_non_null(dtmp);
    assert_non_null(dx);
    const vlm_cuda_weight cw = {t, dw}, ccls = {VLM_DTYPE_F32, dcls}, cpos = {VLM_DTYPE_F32, dpos};
    OK(vlm_cuda_patch_embed_crops(CTX, dx, dimg, VLM_DTYPE_F32, nc, s, p, width, cw, ccls, cpos,
                                  dcol, dtmp, E));
    float *got = down(dx, (size_t)(nc * np * width));
    char what[64];
    snprintf(what, sizeof what, "patch_embed_crops %s x%d", vlm_dtype_get(t)->name, nc);
    close_to(what, got, want, (size_t)(nc * np * width), rtol);
    /* the pixels sent as bf16: with BF16 weights the product rounds them
     * so itself, so the result is the same bit for bit; with f32 weights
     * they are refused */
    uint16_t *img16 = malloc((size_t)(nc * 3 * s * s) * 2);
    to_bf16(img16, img, (size_t)(nc * 3 * s * s));
    void *dimg16 = up(img16, (size_t)(nc * 3 * s * s) * 2);
    vlm_err err = {0};
    vlm_status st = vlm_cuda_patch_embed_crops(CTX, dx, dimg16, VLM_DTYPE_BF16, nc, s, p, width, cw,
                                               ccls, cpos, dcol, dtmp, &err);
    assert_int_equal(vlm_cuda_pixels16(CTX, cw), t == VLM_DTYPE_BF16);
    if (t == VLM_DTYPE_BF16) {
        assert_int_equal(st, VLM_OK);
        float *got16 = down(dx, (size_t)(nc * np * width));
        assert_memory_equal(got16, got, (size_t)(nc * np * width) * 4);
        free(got16);
    } else {
        assert_int_equal(st, VLM_ERR_UNSUPPORTED);
    }
    vlm_dev_free(dimg), vlm_dev_free(dimg16), vlm_dev_free(dw), vlm_dev_free(dcls);
    vlm_dev_free(dpos), vlm_dev_free(dcol), vlm_dev_free(dtmp), vlm_dev_free(dx);
    free(img), free(img16), free(wf), free(cls), free(pos), free(wh), free(want), free(col);
    free(got);
}

static void test_patch_embed_crops(void **state) {
    (void)state;
    patch_crops_case(VLM_DTYPE_F32, 1e-5);
    patch_crops_case(VLM_DTYPE_BF16, 1e-2);
}

/* Pinned host memory: counted by base/alloc while held, a copy through it
 * arrives intact. */
static void test_pinned(void **state) {
    (void)state;
    vlm_mem_stats before, during, after;
    vlm_alloc_get_stats(&before);
    size_t n = 1000;
    float *h = vlm_cuda_host_alloc(n * 4, VLM_MEM_IMAGE);
    assert_non_null(h); /* a card that runs this test has pinned memory to give */
    vlm_alloc_get_stats(&during);
    assert_int_equal(during.current[VLM_MEM_IMAGE], before.current[VLM_MEM_IMAGE] + n * 4);
    float *src = rnd(n, 1.0f);
    memcpy(h, src, n * 4);
    float *d = vlm_dev_alloc(n * 4, VLM_MEM_ACTIVATIONS);
    assert_non_null(d);
    OK(vlm_cuda_upload_async(CTX, d, h, n * 4, "pinned", E));
    float *got = down(d, n);
    assert_memory_equal(got, src, n * 4);
    vlm_cuda_host_free(h, n * 4, VLM_MEM_IMAGE);
    vlm_alloc_get_stats(&after);
    assert_int_equal(after.current[VLM_MEM_IMAGE], before.current[VLM_MEM_IMAGE]);
    vlm_dev_free(d);
    free(src), free(got);
}

/* Fences: a chunk's download is complete once its fence is waited on,
 * before the stream as a whole is synchronised; a fence never recorded or
 * out of range is an error, not a hang. */
static void test_fences(void **state) {
    (void)state;
    const size_t n = 1 << 20;
    float *src = rnd(n, 1.0f);
    float *d = up(src, n * 4);
    float *h = vlm_cuda_host_alloc(n * 4, VLM_MEM_IMAGE);
    assert_non_null(h);
    for (int k = 0; k < 4; k++) {
        OK(vlm_cuda_download_async(CTX, h + k * (n / 4), d + k * (n / 4), n, "fence chunk", E));
        OK(vlm_cuda_fence_record(CTX, k, E));
    }
    for (int k = 0; k < 4; k++) {
        OK(vlm_cuda_fence_wait(CTX, k, "fence chunk", E));
        assert_memory_equal(h + k * (n / 4), src + k * (n / 4), n);
    }
    vlm_err err = {0};
    assert_int_equal(vlm_cuda_fence_wait(CTX, VLM_CUDA_FENCES - 1, "unrecorded", &err),
                     VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_cuda_fence_record(CTX, VLM_CUDA_FENCES, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_cuda_fence_wait(CTX, -1, "negative", &err), VLM_ERR_INVALID_ARG);
    OK(vlm_cuda_sync(CTX, "fences", E));
    vlm_cuda_host_free(h, n * 4, VLM_MEM_IMAGE);
    vlm_dev_free(d);
    free(src);
}

/* The HD glue's 2x2 merge against the definition (spec 5.1): cell (i, j)
 * of crop c is TL | TR | BL | BR of feature rows (2i+dy)*grid + 2j+dx;
 * crops lie crop_rows rows apart after a CLS row. Exact (a gather). */
static void test_merge2x2(void **state) {
    (void)state;
    const int grid = 6, mg = 3, nc = 3;
    const int64_t dim = 5, crop_rows = grid * grid + 1, first = 1;
    float *f = rnd((size_t)(nc * crop_rows * dim), 1.0f);
    float *want = malloc((size_t)(nc * mg * mg * 4 * dim) * 4);
    for (int c = 0; c < nc; c++)
        for (int i = 0; i < mg; i++)
            for (int j = 0; j < mg; j++)
                for (int q = 0; q < 4; q++)
                    for (int64_t e = 0; e < dim; e++)
                        want[((c * mg * mg + i * mg + j) * 4 + q) * dim + e] =
                            f[(c * crop_rows + first + (2 * i + q / 2) * grid + 2 * j + q % 2) *
                                  dim +
                              e];
    float *df = up(f, (size_t)(nc * crop_rows * dim) * 4);
    float *dout = vlm_dev_alloc((size_t)(nc * mg * mg * 4 * dim) * 4, VLM_MEM_ACTIVATIONS);
    OK(vlm_cuda_merge2x2(CTX, dout, df, crop_rows, first, grid, dim, nc, E));
    float *got = down(dout, (size_t)(nc * mg * mg * 4 * dim));
    close_to("merge2x2", got, want, (size_t)(nc * mg * mg * 4 * dim), 0);
    vlm_dev_free(df), vlm_dev_free(dout);
    free(f), free(want), free(got);
}

/* --- the allocator ------------------------------------------------------------ */

static void test_dev_alloc(void **state) {
    (void)state;
    vlm_gpu_mem_stats a, b;
    vlm_gpu_mem_stats_get(&a);
    void *p = vlm_dev_alloc(1000, VLM_MEM_WEIGHTS), *q = vlm_dev_alloc(3 << 20, VLM_MEM_KV_CACHE);
    assert_non_null(p);
    assert_non_null(q);
    assert_int_equal(vlm_dev_alloc_size(q), 3 << 20);
    vlm_gpu_mem_stats_get(&b);
    assert_int_equal(b.current[VLM_MEM_WEIGHTS] - a.current[VLM_MEM_WEIGHTS], 1000);
    assert_int_equal(b.current[VLM_MEM_KV_CACHE] - a.current[VLM_MEM_KV_CACHE], 3 << 20);
    assert_int_equal(b.n_allocs - a.n_allocs, 2);
    vlm_dev_free(q);
    vlm_gpu_mem_reset_peak();
    vlm_gpu_mem_stats_get(&b);
    assert_int_equal(b.peak[VLM_MEM_KV_CACHE], b.current[VLM_MEM_KV_CACHE]);
    vlm_dev_free(p);
    vlm_gpu_mem_stats_get(&b);
    assert_int_equal(b.total_current, a.total_current);

    /* fault injection: the 2nd from now fails, then the rest succeed */
    vlm_dev_alloc_fail_at(2, false);
    p = vlm_dev_alloc(64, VLM_MEM_OTHER);
    q = vlm_dev_alloc(64, VLM_MEM_OTHER);
    void *r = vlm_dev_alloc(64, VLM_MEM_OTHER);
    assert_non_null(p);
    assert_null(q);
    assert_non_null(r);
    vlm_dev_free(p), vlm_dev_free(r);
    /* sticky: the 1st and everything after */
    vlm_dev_alloc_fail_at(1, true);
    assert_null(vlm_dev_alloc(64, VLM_MEM_OTHER));
    assert_null(vlm_dev_alloc(64, VLM_MEM_OTHER));
    vlm_dev_alloc_fail_at(0, false);
    p = vlm_dev_alloc(64, VLM_MEM_OTHER);
    assert_non_null(p);
    vlm_dev_free(p);
    vlm_gpu_mem_stats_get(&b);
    assert_int_equal(b.n_failed - a.n_failed, 3);
    assert_int_equal(b.total_current, a.total_current);

    /* a real refusal: more than the card has, NULL, nothing counted */
    vlm_gpu_info info;
    vlm_err err = {0};
    assert_int_equal(vlm_gpu_query(&info, &err), VLM_OK);
    printf("device %d: %s, sm_%d%d, %d SMs, %.1f GiB\n", info.device, info.name, info.cc_major,
           info.cc_minor, info.n_sms, (double)info.total_bytes / (1 << 30));
    assert_null(vlm_dev_alloc((size_t)info.total_bytes * 2, VLM_MEM_WEIGHTS));
    p = vlm_dev_alloc(64, VLM_MEM_OTHER); /* the device still works */
    assert_non_null(p);
    vlm_dev_free(p);

    /* a context with a workspace we cannot have fails cleanly, leaks nothing */
    vlm_cuda_ctx *c = NULL;
    assert_int_equal(vlm_cuda_ctx_create(&c, (size_t)info.total_bytes * 2, &err), VLM_ERR_NOMEM);
    assert_null(c);
    vlm_gpu_mem_stats_get(&b);
    assert_int_equal(b.total_current, a.total_current);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dev_alloc),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_norms),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_store),
        cmocka_unit_test(test_fused_products),
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_device_position),
        cmocka_unit_test(test_attention_seqs),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_patch_embed),
        cmocka_unit_test(test_merge2x2),
        cmocka_unit_test(test_half_inputs),
        cmocka_unit_test(test_patch_embed_crops),
        cmocka_unit_test(test_pinned),
        cmocka_unit_test(test_fences),
        cmocka_unit_test(test_bf16_qkv_attention),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
