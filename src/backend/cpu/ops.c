/* backend/cpu/ops - see ops.h.
 *
 * The matmul uses GCC/Clang vector extensions (8 x f32, one AVX register)
 * rather than intrinsics, so the same source builds for any target; with
 * -march=native it becomes AVX2/AVX-512 FMA code. Contraction into FMA is
 * allowed in this file (ISO C mode turns it off by default): it is both
 * faster and at least as accurate, and every path of a kernel contracts the
 * same way, so results stay independent of batching. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include "backend/cpu/ops.h"

#include <math.h>
#include <string.h>

#include "tensor/quant.h"

typedef float v8f __attribute__((vector_size(32)));

static inline v8f v8_load(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v8_store(float *p, v8f v) {
    memcpy(p, &v, sizeof v);
}

static inline float v8_sum(v8f v) {
    /* Fixed order: pairwise over the lanes. */
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* ---------------------------------------------------------------------------
 * widening */

void cpu_widen(cpu_weight w, int64_t offset, float *dst, int64_t n) {
    switch (w.dtype) {
    case VLM_DTYPE_F32:
        memcpy(dst, (const float *)w.data + offset, (size_t)n * sizeof(float));
        break;
    case VLM_DTYPE_BF16: {
        const uint16_t *s = (const uint16_t *)w.data + offset;
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            memcpy(&dst[i], &u, 4);
        }
        break;
    }
    case VLM_DTYPE_F16: {
        const uint16_t *s = (const uint16_t *)w.data + offset;
#if defined(__FLT16_MAX__)
        for (int64_t i = 0; i < n; i++) {
            __extension__ _Float16 h;
            memcpy(&h, &s[i], 2);
            dst[i] = (float)h;
        }
#else
        for (int64_t i = 0; i < n; i++) dst[i] = vlm_f16_to_f32(s[i]);
#endif
        break;
    }
    case VLM_DTYPE_Q8_0:
    case VLM_DTYPE_Q4_0:
    case VLM_DTYPE_Q4_K: {
        /* Whole blocks only: an embedding row or a whole matrix row (the
         * quantization policy quantizes only rows of whole blocks). */
        const vlm_dtype_info *d = vlm_dtype_get(w.dtype);
        if (offset % d->block_elems == 0 && n % d->block_elems == 0 &&
            vlm_dequantize(w.dtype,
                           (const uint8_t *)w.data + offset / d->block_elems * d->block_bytes, dst,
                           (size_t)n))
            break;
        memset(dst, 0, (size_t)n * sizeof(float));
        break;
    }
    default:
        /* The model checks dtypes when it looks weights up; zeros make a
         * broken invariant visible in tests without reading garbage. */
        memset(dst, 0, (size_t)n * sizeof(float));
        break;
    }
}

/* ---------------------------------------------------------------------------
 * matmul: y = x . W^T + b */

#define MM_KT 256 /* k tile: 4 rows x 256 f32 = 4 KiB of widened weights */
#define MM_TB 64  /* tokens per block: each weight row is read once per block */
#define MM_MR 4   /* weight rows per micro-kernel */

typedef struct mm_args {
    float *y;
    const float *x;
    int64_t n, in, out;
    cpu_weight w, b;
} mm_args;

typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));

/* Eight bf16 values widened in registers (bf16 is the top half of an f32). */
static inline v8f v8_load_bf16(const uint16_t *p) {
    v8h h;
    memcpy(&h, p, sizeof h);
    v8u u = __builtin_convertvector(h, v8u) << 16;
    v8f f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Scalar loads through memcpy: stored f32 weights need not be aligned. */
static inline float f32_at(const float *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

static inline float vlm_bf16_to_f32_p(const uint16_t *p) {
    return vlm_bf16_to_f32(*p);
}

/* The micro-kernels, for f32 rows and for bf16 rows read in place:
 *   tile4: acc[t][r] = x[t] . w[r] for 4 tokens x 4 rows,
 *   tile1: acc[r]    = x . w[r]    for 1 token  x 4 rows.
 * Each (t, r) sum is eight lanes over k in steps of 8, reduced in a fixed
 * order, then the scalar tail. Both kernels do exactly this per element, and
 * widening is exact, so a token's outputs are the same bits whichever kernel
 * and whichever batch computed them (the tests check it). */
#define MM_KERNELS(SFX, WT, LOADV, LOADS)                                                          \
    static inline void mm_tile4_##SFX(float acc[4][MM_MR], const float *const xr[4],               \
                                      const WT *const wr[MM_MR], int kn) {                         \
        int k8 = kn & ~7;                                                                          \
        v8f a[4][4] = {{{0}}};                                                                     \
        for (int k = 0; k < k8; k += 8) {                                                          \
            v8f w0 = LOADV(wr[0] + k), w1 = LOADV(wr[1] + k), w2 = LOADV(wr[2] + k),               \
                w3 = LOADV(wr[3] + k);                                                             \
            for (int t = 0; t < 4; t++) {                                                          \
                v8f xv = v8_load(xr[t] + k);                                                       \
                a[t][0] += xv * w0;                                                                \
                a[t][1] += xv * w1;                                                                \
                a[t][2] += xv * w2;                                                                \
                a[t][3] += xv * w3;                                                                \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < 4; t++)                                                                \
            for (int r = 0; r < 4; r++) {                                                          \
                float s = v8_sum(a[t][r]);                                                         \
                for (int k = k8; k < kn; k++) s += xr[t][k] * LOADS(wr[r] + k);                    \
                acc[t][r] = s;                                                                     \
            }                                                                                      \
    }                                                                                              \
    static inline void mm_tile1_##SFX(float acc[MM_MR], const float *xr,                           \
                                      const WT *const wr[MM_MR], int kn) {                         \
        int k8 = kn & ~7;                                                                          \
        v8f a[4] = {{0}};                                                                          \
        for (int k = 0; k < k8; k += 8) {                                                          \
            v8f w0 = LOADV(wr[0] + k), w1 = LOADV(wr[1] + k), w2 = LOADV(wr[2] + k),               \
                w3 = LOADV(wr[3] + k);                                                             \
            v8f xv = v8_load(xr + k);                                                              \
            a[0] += xv * w0;                                                                       \
            a[1] += xv * w1;                                                                       \
            a[2] += xv * w2;                                                                       \
            a[3] += xv * w3;                                                                       \
        }                                                                                          \
        for (int r = 0; r < 4; r++) {                                                              \
            float s = v8_sum(a[r]);                                                                \
            for (int k = k8; k < kn; k++) s += xr[k] * LOADS(wr[r] + k);                           \
            acc[r] = s;                                                                            \
        }                                                                                          \
    }

MM_KERNELS(f32, float, v8_load, f32_at)
MM_KERNELS(bf16, uint16_t, v8_load_bf16, vlm_bf16_to_f32_p)

/* Tokens [tb, tb+tn) x rows [o, o+nr) x k [k0, k0+kn); adds to y. Uses a,
 * o, nr, kn, tb, tn, wstride from the caller. */
#define MM_BLOCK(SFX, WT, WBASE)                                                                   \
    do {                                                                                           \
        const WT *wr[MM_MR];                                                                       \
        for (int r = 0; r < MM_MR; r++) wr[r] = (WBASE) + (int64_t)(r < nr ? r : 0) * wstride;     \
        int64_t t = tb;                                                                            \
        for (; t + 4 <= tb + tn; t += 4) {                                                         \
            const float *xr[4];                                                                    \
            float acc[4][MM_MR];                                                                   \
            for (int i = 0; i < 4; i++) xr[i] = a->x + (t + i) * in + k0;                          \
            mm_tile4_##SFX(acc, xr, wr, kn);                                                       \
            for (int i = 0; i < 4; i++) {                                                          \
                float *yr = a->y + (t + i) * a->out + o;                                           \
                for (int r = 0; r < nr; r++) yr[r] += acc[i][r];                                   \
            }                                                                                      \
        }                                                                                          \
        for (; t < tb + tn; t++) {                                                                 \
            float acc[MM_MR];                                                                      \
            mm_tile1_##SFX(acc, a->x + t * in + k0, wr, kn);                                       \
            float *yr = a->y + t * a->out + o;                                                     \
            for (int r = 0; r < nr; r++) yr[r] += acc[r];                                          \
        }                                                                                          \
    } while (0)

/* One (row quad, k tile) step for tokens [tb, tb+tn): adds to y. */
static inline void mm_step(const mm_args *a, int64_t q, int64_t k0, int64_t tb, int64_t tn,
                           float (*wt)[MM_KT]) {
    const int64_t in = a->in, o = q * MM_MR;
    const int nr = (int)(a->out - o < MM_MR ? a->out - o : MM_MR);
    const int kn = (int)(in - k0 < MM_KT ? in - k0 : MM_KT);
    int64_t wstride = in;
    if (a->w.dtype == VLM_DTYPE_F32) {
        MM_BLOCK(f32, float, (const float *)a->w.data + o * in + k0);
    } else if (a->w.dtype == VLM_DTYPE_BF16) {
        MM_BLOCK(bf16, uint16_t, (const uint16_t *)a->w.data + o * in + k0);
    } else {
        for (int r = 0; r < nr; r++) cpu_widen(a->w, (o + r) * in + k0, wt[r], kn);
        wstride = MM_KT;
        MM_BLOCK(f32, float, &wt[0][0]);
    }
}

/* Row quads [q0, q1) of the output: each quad walks k over a block of up to
 * MM_TB tokens, so W streams row by row, once per token block (once in total
 * for a decode step). Every output gets the same k-tile sequence whatever the
 * block, hence the same bits. (Putting the k tiles outside the quads, to keep
 * x in L1, measured no faster: W streaming dominates.) */
static void mm_range(void *ctx, int64_t q0, int64_t q1, int thread_idx) {
    (void)thread_idx;
    const mm_args *a = ctx;
    _Alignas(64) float wt[MM_MR][MM_KT]; /* widened f16 rows */
    for (int64_t tb = 0; tb < a->n; tb += MM_TB) {
        int64_t tn = a->n - tb < MM_TB ? a->n - tb : MM_TB;
        /* Start from the bias, then add each k tile. */
        int64_t o0 = q0 * MM_MR, o1 = q1 * MM_MR < a->out ? q1 * MM_MR : a->out;
        for (int64_t t = tb; t < tb + tn; t++) {
            float *yr = a->y + t * a->out;
            if (a->b.data)
                cpu_widen(a->b, o0, yr + o0, o1 - o0);
            else
                memset(yr + o0, 0, (size_t)(o1 - o0) * sizeof *yr);
        }
        for (int64_t q = q0; q < q1; q++)
            for (int64_t k0 = 0; k0 < a->in; k0 += MM_KT) mm_step(a, q, k0, tb, tn, wt);
    }
}

/* Quantized weights: rows [o0, o1) of W, each a run of blocks. Every output
 * is one dot product of a whole row with one token (vlm_quant_dot), so a
 * token's outputs are the same bits whatever the batch and the thread count.
 * The row (in * 34/32 bytes at most) stays in L1 while the tokens pass. */
static void mm_range_quant(void *ctx, int64_t o0, int64_t o1, int thread_idx) {
    (void)thread_idx;
    const mm_args *a = ctx;
    const vlm_dtype_info *d = vlm_dtype_get(a->w.dtype);
    const size_t row_bytes = (size_t)(a->in / d->block_elems) * d->block_bytes;
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *wr = (const uint8_t *)a->w.data + (size_t)o * row_bytes;
        float bias = 0.0f;
        if (a->b.data) cpu_widen(a->b, o, &bias, 1);
        for (int64_t t = 0; t < a->n; t++) {
            float s = 0.0f;
            vlm_quant_dot(a->w.dtype, wr, a->x + t * a->in, (size_t)a->in, &s);
            a->y[t * a->out + o] = s + bias;
        }
    }
}

void cpu_matmul(cpu_pool *pool, float *y, const float *x, int64_t n, int64_t in, int64_t out,
                cpu_weight w, cpu_weight b) {
    if (n <= 0 || out <= 0) return;
    mm_args a = {y, x, n, in, out, w, b};
    if (vlm_quant_is_block(w.dtype)) {
        parallel_for(pool, out, mm_range_quant, &a);
        return;
    }
    parallel_for(pool, (out + MM_MR - 1) / MM_MR, mm_range, &a);
}

/* ---------------------------------------------------------------------------
 * norms */

#define NORM_CHUNK 256 /* weights widened this many at a time */

void cpu_rmsnorm(float *out, const float *x, int64_t n, int64_t dim, cpu_weight w, float eps) {
    float wc[NORM_CHUNK];
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        double ss = 0.0; /* mean of squares in double: exact enough for any dim */
        for (int64_t i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
        for (int64_t i0 = 0; i0 < dim; i0 += NORM_CHUNK) {
            int64_t m = dim - i0 < NORM_CHUNK ? dim - i0 : NORM_CHUNK;
            cpu_widen(w, i0, wc, m);
            for (int64_t i = 0; i < m; i++) o[i0 + i] = xr[i0 + i] * inv * wc[i];
        }
    }
}

void cpu_layernorm(float *out, const float *x, int64_t n, int64_t dim, cpu_weight w, cpu_weight b,
                   float eps) {
    float wc[NORM_CHUNK], bc[NORM_CHUNK];
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < dim; i++) mean += xr[i];
        mean /= (double)dim;
        for (int64_t i = 0; i < dim; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        var /= (double)dim;
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        for (int64_t i0 = 0; i0 < dim; i0 += NORM_CHUNK) {
            int64_t k = dim - i0 < NORM_CHUNK ? dim - i0 : NORM_CHUNK;
            cpu_widen(w, i0, wc, k);
            cpu_widen(b, i0, bc, k);
            for (int64_t i = 0; i < k; i++) o[i0 + i] = (xr[i0 + i] - m) * rstd * wc[i] + bc[i];
        }
    }
}

/* ---------------------------------------------------------------------------
 * RoPE */

void cpu_rope_inv_freq(float *inv_freq, int head_dim, double theta, const float *factor) {
    for (int i = 0; i < head_dim / 2; i++) {
        /* torch: arange(0, d, 2).float() / d, then base ** that in f32. */
        float e = (float)(2 * i) / (float)head_dim;
        float p = (float)pow(theta, (double)e);
        float f = factor ? factor[i] : 1.0f;
        inv_freq[i] = 1.0f / (f * p);
    }
}

void cpu_rope_cos_sin(float *cos_t, float *sin_t, int64_t pos0, int64_t n, int head_dim,
                      const float *inv_freq, double mscale) {
    int half = head_dim / 2;
    float ms = (float)mscale;
    for (int64_t t = 0; t < n; t++) {
        float p = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            float ang = p * inv_freq[i];
            cos_t[t * half + i] = (float)cos((double)ang) * ms;
            sin_t[t * half + i] = (float)sin((double)ang) * ms;
        }
    }
}

void cpu_rope_apply(float *x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                    const float *cos_t, const float *sin_t) {
    int half = head_dim / 2;
    for (int64_t t = 0; t < n; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + t * row_stride + (int64_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

/* ---------------------------------------------------------------------------
 * attention */

typedef struct att_args {
    float *out;
    const float *q;
    cpu_weight k, v; /* F32 or BF16 rows */
    int64_t q_stride, kv_stride, n_q, n_kv, q_pos0;
    int n_heads, group, head_dim;
    bool causal;
    float scale;
    float *scratch;
} att_args;

/* q . k over hd values: eight lanes, fixed reduction, scalar tail. */
static inline float att_dot(const float *q, cpu_weight k, int64_t off, int hd) {
    v8f acc = {0};
    int d8 = hd & ~7;
    float s;
    if (k.dtype == VLM_DTYPE_BF16) {
        const uint16_t *kr = (const uint16_t *)k.data + off;
        for (int d = 0; d < d8; d += 8) acc += v8_load(q + d) * v8_load_bf16(kr + d);
        s = v8_sum(acc);
        for (int d = d8; d < hd; d++) s += q[d] * vlm_bf16_to_f32(kr[d]);
    } else {
        const float *kr = (const float *)k.data + off;
        for (int d = 0; d < d8; d += 8) acc += v8_load(q + d) * v8_load(kr + d);
        s = v8_sum(acc);
        for (int d = d8; d < hd; d++) s += q[d] * kr[d];
    }
    return s;
}

/* o += p * v over hd values: eight lanes, scalar tail. Each value is one
 * fused multiply-add in either part, as in a scalar loop, so the lanes give
 * the same result as one value at a time. (As a scalar loop this took 70% of
 * the attention's time.) */
static inline void att_axpy(float *o, float p, cpu_weight v, int64_t off, int hd) {
    const v8f pv = {p, p, p, p, p, p, p, p};
    int d8 = hd & ~7;
    if (v.dtype == VLM_DTYPE_BF16) {
        const uint16_t *vr = (const uint16_t *)v.data + off;
        for (int d = 0; d < d8; d += 8) v8_store(o + d, v8_load(o + d) + pv * v8_load_bf16(vr + d));
        for (int d = d8; d < hd; d++) o[d] += p * vlm_bf16_to_f32(vr[d]);
    } else {
        const float *vr = (const float *)v.data + off;
        for (int d = 0; d < d8; d += 8) v8_store(o + d, v8_load(o + d) + pv * v8_load(vr + d));
        for (int d = d8; d < hd; d++) o[d] += p * vr[d];
    }
}

/* Items are (head, query) pairs: item = h * n_q + i. */
static void att_range(void *ctx, int64_t it0, int64_t it1, int thread_idx) {
    const att_args *a = ctx;
    float *sc = a->scratch + (int64_t)thread_idx * a->n_kv;
    const int hd = a->head_dim;
    for (int64_t it = it0; it < it1; it++) {
        int h = (int)(it / a->n_q);
        int64_t i = it % a->n_q;
        int64_t kv_off = (int64_t)(h / a->group) * hd;
        const float *qv = a->q + i * a->q_stride + (int64_t)h * hd;
        int64_t nk = a->causal ? a->q_pos0 + i + 1 : a->n_kv;
        if (nk > a->n_kv) nk = a->n_kv;
        float mx = -INFINITY;
        for (int64_t j = 0; j < nk; j++) {
            float s = att_dot(qv, a->k, j * a->kv_stride + kv_off, hd) * a->scale;
            sc[j] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < nk; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        float inv = 1.0f / sum;
        float *o = a->out + i * (int64_t)a->n_heads * hd + (int64_t)h * hd;
        for (int d = 0; d < hd; d++) o[d] = 0.0f;
        for (int64_t j = 0; j < nk; j++)
            att_axpy(o, sc[j] * inv, a->v, j * a->kv_stride + kv_off, hd);
    }
}

void cpu_attention(cpu_pool *pool, float *out, const float *q, int64_t q_stride, cpu_weight k,
                   cpu_weight v, int64_t kv_stride, int64_t n_q, int64_t n_kv, int n_heads,
                   int n_kv_heads, int head_dim, bool causal, int64_t q_pos0, float scale,
                   float *scratch) {
    if (n_q <= 0) return;
    att_args a = {out,
                  q,
                  k,
                  v,
                  q_stride,
                  kv_stride,
                  n_q,
                  n_kv,
                  q_pos0,
                  n_heads,
                  n_heads / n_kv_heads,
                  head_dim,
                  causal,
                  scale,
                  scratch};
    parallel_for(pool, (int64_t)n_heads * n_q, att_range, &a);
}

void cpu_store_rows(void *dst, vlm_dtype dtype, int64_t offset, const float *src, int64_t n) {
    if (dtype == VLM_DTYPE_BF16) {
        uint16_t *d = (uint16_t *)dst + offset;
        for (int64_t i = 0; i < n; i++) d[i] = vlm_f32_to_bf16(src[i]);
    } else {
        memcpy((float *)dst + offset, src, (size_t)n * sizeof *src);
    }
}

/* ---------------------------------------------------------------------------
 * elementwise */

void cpu_quick_gelu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * (1.0f / (1.0f + expf(-1.702f * x[i])));
}

void cpu_gelu_erf(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752440f));
}

void cpu_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void cpu_add_bias(float *y, int64_t n, int64_t dim, cpu_weight b) {
    for (int64_t i = 0; i < dim; i++) {
        float bi;
        cpu_widen(b, i, &bi, 1);
        for (int64_t r = 0; r < n; r++) y[r * dim + i] += bi;
    }
}

int32_t cpu_argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i; /* strict: the lowest index wins ties */
    return (int32_t)best;
}

void cpu_silu_mul(float *out, const float *gu, int64_t n, int64_t ff) {
    for (int64_t r = 0; r < n; r++) {
        const float *g = gu + r * 2 * ff, *u = g + ff;
        float *o = out + r * ff;
        for (int64_t i = 0; i < ff; i++) o[i] = u[i] * (g[i] / (1.0f + expf(-g[i])));
    }
}

void cpu_embed_rows(float *out, cpu_weight table, int64_t dim, const int32_t *ids, int64_t n) {
    for (int64_t i = 0; i < n; i++) cpu_widen(table, (int64_t)ids[i] * dim, out + i * dim, dim);
}

void cpu_patch_embed(cpu_pool *pool, float *out, const float *img, int s, int p, int64_t width,
                     cpu_weight w, float *im2col) {
    int g = s / p;
    int64_t kdim = 3 * (int64_t)p * p;
    /* Patch (r, c) flattened in the weight's (channel, ky, kx) order. */
    for (int r = 0; r < g; r++)
        for (int c = 0; c < g; c++) {
            float *col = im2col + ((int64_t)r * g + c) * kdim;
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < p; ky++)
                    memcpy(col + ((int64_t)ch * p + ky) * p,
                           img + ((int64_t)ch * s + (int64_t)r * p + ky) * s + (int64_t)c * p,
                           (size_t)p * sizeof(float));
        }
    cpu_weight nob = {VLM_DTYPE_F32, NULL};
    cpu_matmul(pool, out, im2col, (int64_t)g * g, kdim, width, w, nob);
}
