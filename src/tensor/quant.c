/* tensor/quant - dequantization, quantization and dot products of the GGUF
 * block types. Block layouts: tensor/quant.h; the arithmetic and the Q4_K
 * scale search: docs/formats-gguf.md. */
#include "tensor/quant.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define QUANT_AVX2 1
#endif

/* Dequantization must not fuse a*b+c into one rounding: the format's
 * reference arithmetic rounds the product and the sum separately, and our
 * results are compared bit for bit. GCC in ISO C mode does not contract;
 * clang does unless told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* Blocks may sit at any address (a caller's buffer, a mapped file), so
 * multi-byte fields are read with memcpy rather than through the structs. */
static inline uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline float rdh(const uint8_t *p) {
    return vlm_f16_to_f32(rd16(p));
}
static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

bool vlm_quant_is_block(vlm_dtype t) {
    return t >= VLM_DTYPE_Q4_0 && t <= VLM_DTYPE_Q6_K;
}

/* ========================================================================
 * Dequantization, one block at a time. b: the block's bytes; y: its
 * block_elems outputs.
 * ======================================================================== */

static void dq_q4_0(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q4_0, d));
    const uint8_t *qs = b + offsetof(vlm_block_q4_0, qs);
    for (int j = 0; j < VLM_QK / 2; j++) {
        y[j] = (float)((qs[j] & 0x0f) - 8) * d;
        y[j + VLM_QK / 2] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void dq_q4_1(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q4_1, d));
    const float m = rdh(b + offsetof(vlm_block_q4_1, m));
    const uint8_t *qs = b + offsetof(vlm_block_q4_1, qs);
    for (int j = 0; j < VLM_QK / 2; j++) {
        y[j] = (float)(qs[j] & 0x0f) * d + m;
        y[j + VLM_QK / 2] = (float)(qs[j] >> 4) * d + m;
    }
}

/* Bit 4 of element j is bit j of qh (elements 0..31). */
static void dq_q5_0(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q5_0, d));
    const uint32_t qh = rd32(b + offsetof(vlm_block_q5_0, qh));
    const uint8_t *qs = b + offsetof(vlm_block_q5_0, qs);
    for (int j = 0; j < VLM_QK / 2; j++) {
        int h0 = (int)((qh >> j) & 1u) << 4;
        int h1 = (int)((qh >> (j + 16)) & 1u) << 4;
        y[j] = (float)(((qs[j] & 0x0f) | h0) - 16) * d;
        y[j + VLM_QK / 2] = (float)(((qs[j] >> 4) | h1) - 16) * d;
    }
}

static void dq_q5_1(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q5_1, d));
    const float m = rdh(b + offsetof(vlm_block_q5_1, m));
    const uint32_t qh = rd32(b + offsetof(vlm_block_q5_1, qh));
    const uint8_t *qs = b + offsetof(vlm_block_q5_1, qs);
    for (int j = 0; j < VLM_QK / 2; j++) {
        int h0 = (int)((qh >> j) & 1u) << 4;
        int h1 = (int)((qh >> (j + 16)) & 1u) << 4;
        y[j] = (float)((qs[j] & 0x0f) | h0) * d + m;
        y[j + VLM_QK / 2] = (float)((qs[j] >> 4) | h1) * d + m;
    }
}

static void dq_q8_0(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q8_0, d));
    const uint8_t *qs = b + offsetof(vlm_block_q8_0, qs);
    for (int j = 0; j < VLM_QK; j++) y[j] = (float)(int8_t)qs[j] * d;
}

/* Q2_K: 256 weights in two halves of 128. In a half, byte l of the 32 qs
 * bytes holds four 2-bit weights, at shifts 0, 2, 4, 6, for elements l,
 * l+32, l+64, l+96 of the half. Each run of 16 elements has its own scale
 * byte: low nibble scale, high nibble min, in the order the elements run. */
static void dq_q2_k(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q2_k, d));
    const float dmin = rdh(b + offsetof(vlm_block_q2_k, dmin));
    const uint8_t *sc = b + offsetof(vlm_block_q2_k, scales);
    const uint8_t *q = b + offsetof(vlm_block_q2_k, qs);
    int is = 0;
    for (int half = 0; half < 2; half++) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int part = 0; part < 2; part++) {
                const float dl = d * (float)(sc[is] & 0x0f);
                const float ml = dmin * (float)(sc[is] >> 4);
                is++;
                for (int l = 0; l < 16; l++) {
                    *y++ = dl * (float)((q[part * 16 + l] >> shift) & 3) - ml;
                }
            }
        }
        q += 32;
    }
}

/* The 16 six-bit scales of Q3_K in 12 bytes: scale i has its low nibble in
 * byte i (i < 8, low half) or byte i-8 (i >= 8, high half), and its top two
 * bits in byte 8 + i%4 at bit 2*(i/4). */
static inline int q3k_scale(const uint8_t *s, int i) {
    int lo = i < 8 ? (s[i] & 0x0f) : (s[i - 8] >> 4);
    int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return lo | (hi << 4);
}

/* Q3_K: the 2-bit layout of Q2_K, plus a high bit: bit k of hmask[l] (for
 * the k-th run of 32 in 0..7) set means the value is q, clear means q - 4.
 * Scales are stored with a bias of 32. */
static void dq_q3_k(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q3_k, d));
    const uint8_t *hm = b + offsetof(vlm_block_q3_k, hmask);
    const uint8_t *q = b + offsetof(vlm_block_q3_k, qs);
    const uint8_t *sc = b + offsetof(vlm_block_q3_k, scales);
    int is = 0;
    unsigned m = 1;
    for (int half = 0; half < 2; half++) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int part = 0; part < 2; part++) {
                const float dl = d * (float)(q3k_scale(sc, is) - 32);
                is++;
                for (int l = 0; l < 16; l++) {
                    int v = (q[part * 16 + l] >> shift) & 3;
                    if (!(hm[part * 16 + l] & m)) v -= 4;
                    *y++ = dl * (float)v;
                }
            }
            m <<= 1;
        }
        q += 32;
    }
}

/* The 8 six-bit scales and mins of Q4_K/Q5_K in 12 bytes: sub-blocks 0..3
 * keep theirs in the low 6 bits of bytes j (scale) and j+4 (min); 4..7 keep
 * the low nibbles in byte j+4 (scale low, min high) and the top two bits in
 * bits 6..7 of bytes j-4 (scale) and j (min). */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K: four chunks of 64; in chunk c, byte l of qs[32c..] holds element l
 * (low nibble, sub-block 2c) and element 32+l (high nibble, sub-block 2c+1). */
static void dq_q4_k(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q4_k, d));
    const float dmin = rdh(b + offsetof(vlm_block_q4_k, dmin));
    const uint8_t *s = b + offsetof(vlm_block_q4_k, scales);
    const uint8_t *q = b + offsetof(vlm_block_q4_k, qs);
    for (int c = 0; c < 4; c++) {
        int sc, mn;
        k4_scale_min(s, 2 * c, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        k4_scale_min(s, 2 * c + 1, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0x0f) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        q += 32;
    }
}

/* Q5_K: Q4_K plus bit 4 of each weight: for chunk c, bit 2c of qh[l] for
 * element l, bit 2c+1 for element 32+l. */
static void dq_q5_k(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q5_k, d));
    const float dmin = rdh(b + offsetof(vlm_block_q5_k, dmin));
    const uint8_t *s = b + offsetof(vlm_block_q5_k, scales);
    const uint8_t *qh = b + offsetof(vlm_block_q5_k, qh);
    const uint8_t *q = b + offsetof(vlm_block_q5_k, qs);
    for (int c = 0; c < 4; c++) {
        int sc, mn;
        k4_scale_min(s, 2 * c, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        k4_scale_min(s, 2 * c + 1, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        const unsigned u1 = 1u << (2 * c), u2 = 2u << (2 * c);
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)((q[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        q += 32;
    }
}

/* Q6_K: two halves of 128. In a half, for l < 32: ql[l] holds the low
 * nibbles of elements l (low) and l+64 (high), ql[l+32] those of l+32 and
 * l+96; qh[l] holds their top two bits at shifts 0, 2, 4, 6 for l, l+32,
 * l+64, l+96. Scales: one signed byte per 16 elements. */
static void dq_q6_k(const uint8_t *b, float *y) {
    const float d = rdh(b + offsetof(vlm_block_q6_k, d));
    const uint8_t *ql = b + offsetof(vlm_block_q6_k, ql);
    const uint8_t *qh = b + offsetof(vlm_block_q6_k, qh);
    const int8_t *sc = (const int8_t *)(b + offsetof(vlm_block_q6_k, scales));
    for (int half = 0; half < 2; half++) {
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is + 0] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

typedef void (*dq_fn)(const uint8_t *b, float *y);

static dq_fn dq_for(vlm_dtype t) {
    switch (t) {
    case VLM_DTYPE_Q4_0:
        return dq_q4_0;
    case VLM_DTYPE_Q4_1:
        return dq_q4_1;
    case VLM_DTYPE_Q5_0:
        return dq_q5_0;
    case VLM_DTYPE_Q5_1:
        return dq_q5_1;
    case VLM_DTYPE_Q8_0:
        return dq_q8_0;
    case VLM_DTYPE_Q2_K:
        return dq_q2_k;
    case VLM_DTYPE_Q3_K:
        return dq_q3_k;
    case VLM_DTYPE_Q4_K:
        return dq_q4_k;
    case VLM_DTYPE_Q5_K:
        return dq_q5_k;
    case VLM_DTYPE_Q6_K:
        return dq_q6_k;
    default:
        return NULL;
    }
}

bool vlm_dequantize(vlm_dtype t, const void *src, float *dst, size_t n) {
    dq_fn f = dq_for(t);
    if (!f) return false;
    const vlm_dtype_info *info = vlm_dtype_get(t);
    if (n % info->block_elems) return false;
    const uint8_t *b = src;
    for (size_t i = 0; i < n / info->block_elems; i++) {
        f(b, dst);
        b += info->block_bytes;
        dst += info->block_elems;
    }
    return true;
}

bool vlm_to_f32(vlm_dtype t, const void *src, float *dst, size_t n) {
    if (vlm_quant_is_block(t)) return vlm_dequantize(t, src, dst, n);
    return vlm_dtype_to_f32(t, src, dst, n);
}

/* ========================================================================
 * Quantization (round to nearest). Scales are rounded to f16 first and the
 * weights are quantized against the rounded scale, so the stored block is
 * the best one for the scale actually stored.
 * ======================================================================== */

/* round(v) clamped to [lo, hi]; NaN gives lo (no undefined conversion). */
static inline int clamp_round(float v, int lo, int hi) {
    if (!(v >= (float)lo)) return lo;
    if (v >= (float)hi) return hi;
    return (int)floorf(v + 0.5f);
}

/* Sum of 8 partial sums, in a fixed order. */
static inline float sum8(const float *p) {
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

/* round(v) clamped to 0..15, written as compares (maxss/minss) so the
 * loops vectorise, where fminf/fmaxf would be library calls; NaN gives 0. */
static inline int nibble_round(float v) {
    v = v > 0.0f ? v : 0.0f;
    v = v < 15.0f ? v : 15.0f;
    return (int)(v + 0.5f);
}

static inline float f16_round(float f, uint16_t *h) {
    *h = vlm_f32_to_f16(f);
    return vlm_f16_to_f32(*h);
}

/* Q8_0: d = max|x| / 127, q = round(x / d). */
static void q_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < VLM_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    uint16_t dh;
    const float d = f16_round(amax / 127.0f, &dh);
    const float id = (d != 0.0f && isfinite(d)) ? 1.0f / d : 0.0f;
    wr16(b + offsetof(vlm_block_q8_0, d), dh);
    int8_t *qs = (int8_t *)(b + offsetof(vlm_block_q8_0, qs));
    for (int j = 0; j < VLM_QK; j++) qs[j] = (int8_t)clamp_round(x[j] * id, -127, 127);
}

/* Q4_0: the element of largest magnitude (with its sign) maps to q = 0,
 * i.e. d = max / -8, so the full range -8..7 is used on the side of the
 * extreme value. */
static void q_q4_0(const float *x, uint8_t *b) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < VLM_QK; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    uint16_t dh;
    const float d = f16_round(max / -8.0f, &dh);
    const float id = (d != 0.0f && isfinite(d)) ? 1.0f / d : 0.0f;
    wr16(b + offsetof(vlm_block_q4_0, d), dh);
    uint8_t *qs = b + offsetof(vlm_block_q4_0, qs);
    for (int j = 0; j < VLM_QK / 2; j++) {
        int q0 = clamp_round(x[j] * id + 8.0f, 0, 15);
        int q1 = clamp_round(x[j + VLM_QK / 2] * id + 8.0f, 0, 15);
        qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
}

/* One sub-block of Q4_K: find scale s >= 0 and min m >= 0 so that
 * x ~= s * q - m with q in 0..15, minimising the squared error.
 *
 * The search: for 21 candidate step counts 14.0, 14.1, ... 16.0 spread over
 * [min(x,0), max(x)], assign q by rounding, then refit (s, -m) by least
 * squares on those q (with -m forced <= 0, because Q4_K subtracts the min);
 * keep the candidate of least squared error. The plain min/max fit is the
 * starting point, so the result is never worse than it. */
#define Q4K_SUB 32
static void q4k_fit(const float *x, float *s_out, float *m_out) {
    float mn = x[0], mx = x[0];
    for (int l = 1; l < Q4K_SUB; l++) {
        mn = x[l] < mn ? x[l] : mn;
        mx = x[l] > mx ? x[l] : mx;
    }
    if (mn > 0.0f) mn = 0.0f;
    if (!(mx > mn) || !isfinite(mx - mn)) {
        *s_out = 0.0f;
        *m_out = isfinite(mn) ? -mn : 0.0f;
        return;
    }
    float best_s = (mx - mn) / 15.0f, best_m = -mn;
    float best_err = 0.0f, sx = 0.0f;
    for (int l = 0; l < Q4K_SUB; l++) {
        float e = best_s * (float)nibble_round((x[l] - mn) / best_s) - best_m - x[l];
        best_err += e * e;
        sx += x[l];
    }
    for (int k = -10; k <= 10; k++) {
        const float iscale = (15.0f + 0.1f * (float)k) / (mx - mn);
        /* Sums in 8 lanes so the loops vectorise; q <= 15 keeps sq and sqq
         * exact. */
        float q[Q4K_SUB], psq[8] = {0}, psqq[8] = {0}, psqx[8] = {0};
        for (int l = 0; l < Q4K_SUB; l += 8) {
            for (int j = 0; j < 8; j++) {
                q[l + j] = (float)nibble_round(iscale * (x[l + j] - mn));
                psq[j] += q[l + j];
                psqq[j] += q[l + j] * q[l + j];
                psqx[j] += q[l + j] * x[l + j];
            }
        }
        const float sq = sum8(psq), sqq = sum8(psqq), sqx = sum8(psqx);
        const float det = Q4K_SUB * sqq - sq * sq;
        if (det <= 0) continue;
        float a = (Q4K_SUB * sqx - sq * sx) / det;
        float off = (sqq * sx - sq * sqx) / det; /* x ~= a q + off */
        if (off > 0) {
            off = 0;
            a = sqx / sqq;
        }
        if (!(a > 0)) continue;
        float perr[8] = {0};
        for (int l = 0; l < Q4K_SUB; l += 8) {
            for (int j = 0; j < 8; j++) {
                float e = a * q[l + j] + off - x[l + j];
                perr[j] += e * e;
            }
        }
        const float err = sum8(perr);
        if (err < best_err) {
            best_err = err;
            best_s = a;
            best_m = -off;
        }
    }
    *s_out = best_s;
    *m_out = best_m;
}

/* Q4_K: fit each of the 8 sub-blocks, quantize the 8 scales and 8 mins to
 * 6 bits against super-block scales d = max(s)/63, dmin = max(m)/63 (both
 * stored as f16), then assign every weight the nearest level of the scale
 * and min actually stored. */
static void q_q4_k(const float *x, uint8_t *b) {
    float s[8], m[8], smax = 0.0f, mmax = 0.0f;
    for (int j = 0; j < 8; j++) {
        q4k_fit(x + Q4K_SUB * j, &s[j], &m[j]);
        smax = fmaxf(smax, s[j]);
        mmax = fmaxf(mmax, m[j]);
    }
    uint16_t dh, dminh;
    const float d = f16_round(smax / 63.0f, &dh);
    const float dmin = f16_round(mmax / 63.0f, &dminh);
    const float id = (d > 0.0f && isfinite(d)) ? 1.0f / d : 0.0f;
    const float idmin = (dmin > 0.0f && isfinite(dmin)) ? 1.0f / dmin : 0.0f;
    int sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = clamp_round(s[j] * id, 0, 63);
        mn[j] = clamp_round(m[j] * idmin, 0, 63);
    }
    wr16(b + offsetof(vlm_block_q4_k, d), dh);
    wr16(b + offsetof(vlm_block_q4_k, dmin), dminh);
    uint8_t *ps = b + offsetof(vlm_block_q4_k, scales);
    for (int j = 0; j < 4; j++) {
        ps[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        ps[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
        ps[j + 8] = (uint8_t)((sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4));
    }
    uint8_t q[VLM_QK_K];
    for (int j = 0; j < 8; j++) {
        const float dl = d * (float)sc[j], ml = dmin * (float)mn[j];
        const float idl = (dl > 0.0f && isfinite(dl)) ? 1.0f / dl : 0.0f;
        for (int l = 0; l < Q4K_SUB; l++) {
            q[Q4K_SUB * j + l] = (uint8_t)clamp_round((x[Q4K_SUB * j + l] + ml) * idl, 0, 15);
        }
    }
    uint8_t *qs = b + offsetof(vlm_block_q4_k, qs);
    for (int c = 0; c < 4; c++) {
        for (int l = 0; l < 32; l++) {
            qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
        }
    }
}

bool vlm_quant_can_quantize(vlm_dtype t) {
    return t == VLM_DTYPE_Q8_0 || t == VLM_DTYPE_Q4_0 || t == VLM_DTYPE_Q4_K;
}

bool vlm_quantize(vlm_dtype t, const float *src, void *dst, size_t n) {
    void (*f)(const float *, uint8_t *);
    switch (t) {
    case VLM_DTYPE_Q8_0:
        f = q_q8_0;
        break;
    case VLM_DTYPE_Q4_0:
        f = q_q4_0;
        break;
    case VLM_DTYPE_Q4_K:
        f = q_q4_k;
        break;
    default:
        return false;
    }
    const vlm_dtype_info *info = vlm_dtype_get(t);
    if (n % info->block_elems) return false;
    uint8_t *b = dst;
    for (size_t i = 0; i < n / info->block_elems; i++) {
        f(src, b);
        src += info->block_elems;
        b += info->block_bytes;
    }
    return true;
}

/* ========================================================================
 * Dot products: quantized weight row . f32 activations.
 *
 * By far the most time of a quantized matmul is spent here. Each block's
 * integer weights are multiplied with x in f32 and the block's partial sum
 * is scaled once (d * sum q x rather than sum (d q) x). The portable code
 * keeps 8 independent partial sums so the compiler can vectorise it.
 * ======================================================================== */

float vlm_dot_q8_0_f32_portable(const void *w, const float *x, size_t n) {
    const uint8_t *b = w;
    float acc[8] = {0};
    for (size_t i = 0; i < n / VLM_QK; i++, b += sizeof(vlm_block_q8_0), x += VLM_QK) {
        const float d = rdh(b);
        const int8_t *q = (const int8_t *)(b + offsetof(vlm_block_q8_0, qs));
        float p[8] = {0};
        for (int j = 0; j < VLM_QK; j += 8)
            for (int k = 0; k < 8; k++) p[k] += (float)q[j + k] * x[j + k];
        for (int k = 0; k < 8; k++) acc[k] += d * p[k];
    }
    return sum8(acc);
}

float vlm_dot_q4_0_f32_portable(const void *w, const float *x, size_t n) {
    const uint8_t *b = w;
    float acc[8] = {0};
    for (size_t i = 0; i < n / VLM_QK; i++, b += sizeof(vlm_block_q4_0), x += VLM_QK) {
        const float d = rdh(b);
        const uint8_t *q = b + offsetof(vlm_block_q4_0, qs);
        float p[8] = {0};
        for (int j = 0; j < VLM_QK / 2; j += 8) {
            for (int k = 0; k < 8; k++) {
                p[k] += (float)((q[j + k] & 0x0f) - 8) * x[j + k];
                p[k] += (float)((q[j + k] >> 4) - 8) * x[j + k + VLM_QK / 2];
            }
        }
        for (int k = 0; k < 8; k++) acc[k] += d * p[k];
    }
    return sum8(acc);
}

/* Q4_K: per sub-block, sum (dl q - ml) x = dl * sum q x - ml * sum x. */
float vlm_dot_q4_k_f32_portable(const void *w, const float *x, size_t n) {
    const uint8_t *b = w;
    float acc[8] = {0};
    for (size_t i = 0; i < n / VLM_QK_K; i++, b += sizeof(vlm_block_q4_k)) {
        const float d = rdh(b + offsetof(vlm_block_q4_k, d));
        const float dmin = rdh(b + offsetof(vlm_block_q4_k, dmin));
        const uint8_t *s = b + offsetof(vlm_block_q4_k, scales);
        const uint8_t *q = b + offsetof(vlm_block_q4_k, qs);
        for (int c = 0; c < 4; c++, q += 32, x += 64) {
            int sc1, mn1, sc2, mn2;
            k4_scale_min(s, 2 * c, &sc1, &mn1);
            k4_scale_min(s, 2 * c + 1, &sc2, &mn2);
            float p1[8] = {0}, p2[8] = {0}, s1[8] = {0}, s2[8] = {0};
            for (int l = 0; l < 32; l += 8) {
                for (int k = 0; k < 8; k++) {
                    p1[k] += (float)(q[l + k] & 0x0f) * x[l + k];
                    s1[k] += x[l + k];
                    p2[k] += (float)(q[l + k] >> 4) * x[32 + l + k];
                    s2[k] += x[32 + l + k];
                }
            }
            const float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
            const float d2 = d * (float)sc2, m2 = dmin * (float)mn2;
            for (int k = 0; k < 8; k++) acc[k] += d1 * p1[k] - m1 * s1[k] + d2 * p2[k] - m2 * s2[k];
        }
    }
    return sum8(acc);
}

#ifdef QUANT_AVX2
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 bytes at p as 8 floats (signed or unsigned). */
static inline __m256 i8x8_ps(const void *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline __m256 u8x8_ps(__m128i v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

float vlm_dot_q8_0_f32(const void *w, const float *x, size_t n) {
    const uint8_t *b = w;
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n / VLM_QK; i++, b += sizeof(vlm_block_q8_0), x += VLM_QK) {
        const uint8_t *q = b + offsetof(vlm_block_q8_0, qs);
        __m256 p = _mm256_mul_ps(i8x8_ps(q), _mm256_loadu_ps(x));
        p = _mm256_fmadd_ps(i8x8_ps(q + 8), _mm256_loadu_ps(x + 8), p);
        p = _mm256_fmadd_ps(i8x8_ps(q + 16), _mm256_loadu_ps(x + 16), p);
        p = _mm256_fmadd_ps(i8x8_ps(q + 24), _mm256_loadu_ps(x + 24), p);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(rdh(b)), p, acc);
    }
    return hsum256(acc);
}

float vlm_dot_q4_0_f32(const void *w, const float *x, size_t n) {
    const uint8_t *b = w;
    const __m128i lo_mask = _mm_set1_epi8(0x0f);
    const __m256 eight = _mm256_set1_ps(8.0f);
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n / VLM_QK; i++, b += sizeof(vlm_block_q4_0), x += VLM_QK) {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(b + offsetof(vlm_block_q4_0, qs)));
        const __m128i lo = _mm_and_si128(raw, lo_mask);                    /* elements 0..15 */
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), lo_mask); /* 16..31 */
        __m256 p = _mm256_mul_ps(_mm256_sub_ps(u8x8_ps(lo), eight), _mm256_loadu_ps(x));
        p = _mm256_fmadd_ps(_mm256_sub_ps(u8x8_ps(_mm_srli_si128(lo, 8)), eight),
                            _mm256_loadu_ps(x + 8), p);
        p = _mm256_fmadd_ps(_mm256_sub_ps(u8x8_ps(hi), eight), _mm256_loadu_ps(x + 16), p);
        p = _mm256_fmadd_ps(_mm256_sub_ps(u8x8_ps(_mm_srli_si128(hi, 8)), eight),
                            _mm256_loadu_ps(x + 24), p);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(rdh(b)), p, acc);
    }
    return hsum256(acc);
}

float vlm_dot_q4_k_f32(const void *w, const float *x, size_t n) {
    const uint8_t *b = w;
    const __m128i lo_mask = _mm_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n / VLM_QK_K; i++, b += sizeof(vlm_block_q4_k)) {
        const float d = rdh(b + offsetof(vlm_block_q4_k, d));
        const float dmin = rdh(b + offsetof(vlm_block_q4_k, dmin));
        const uint8_t *s = b + offsetof(vlm_block_q4_k, scales);
        const uint8_t *q = b + offsetof(vlm_block_q4_k, qs);
        for (int c = 0; c < 4; c++, q += 32, x += 64) {
            int sc1, mn1, sc2, mn2;
            k4_scale_min(s, 2 * c, &sc1, &mn1);
            k4_scale_min(s, 2 * c + 1, &sc2, &mn2);
            __m256 p1 = _mm256_setzero_ps(), p2 = _mm256_setzero_ps();
            __m256 s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps();
            for (int h = 0; h < 2; h++) {
                const __m128i raw = _mm_loadu_si128((const __m128i *)(q + 16 * h));
                const __m128i lo = _mm_and_si128(raw, lo_mask);
                const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), lo_mask);
                const float *x1 = x + 16 * h, *x2 = x + 32 + 16 * h;
                const __m256 xa = _mm256_loadu_ps(x1), xb = _mm256_loadu_ps(x1 + 8);
                const __m256 xc = _mm256_loadu_ps(x2), xd = _mm256_loadu_ps(x2 + 8);
                p1 = _mm256_fmadd_ps(u8x8_ps(lo), xa, p1);
                p1 = _mm256_fmadd_ps(u8x8_ps(_mm_srli_si128(lo, 8)), xb, p1);
                p2 = _mm256_fmadd_ps(u8x8_ps(hi), xc, p2);
                p2 = _mm256_fmadd_ps(u8x8_ps(_mm_srli_si128(hi, 8)), xd, p2);
                s1 = _mm256_add_ps(s1, _mm256_add_ps(xa, xb));
                s2 = _mm256_add_ps(s2, _mm256_add_ps(xc, xd));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc1), p1, acc);
            acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * (float)mn1), s1, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc2), p2, acc);
            acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * (float)mn2), s2, acc);
        }
    }
    return hsum256(acc);
}
#else
float vlm_dot_q8_0_f32(const void *w, const float *x, size_t n) {
    return vlm_dot_q8_0_f32_portable(w, x, n);
}
float vlm_dot_q4_0_f32(const void *w, const float *x, size_t n) {
    return vlm_dot_q4_0_f32_portable(w, x, n);
}
float vlm_dot_q4_k_f32(const void *w, const float *x, size_t n) {
    return vlm_dot_q4_k_f32_portable(w, x, n);
}
#endif

bool vlm_quant_dot(vlm_dtype t, const void *w, const float *x, size_t n, float *out) {
    switch (t) {
    case VLM_DTYPE_Q8_0:
        *out = vlm_dot_q8_0_f32(w, x, n);
        return true;
    case VLM_DTYPE_Q4_0:
        *out = vlm_dot_q4_0_f32(w, x, n);
        return true;
    case VLM_DTYPE_Q4_K:
        *out = vlm_dot_q4_k_f32(w, x, n);
        return true;
    default:
        return false;
    }
}
