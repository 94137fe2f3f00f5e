/* backend/cpu/ops - the CPU op set the models are written in.
 *
 * Activations are f32, row-major, one token per row. Weights stay in their
 * stored dtype (F32, F16 or BF16), given as (dtype, pointer); every kernel
 * widens them to f32 as it reads and accumulates in f32 (spec §9, computed in
 * f32 throughout).
 *
 * Every result is independent of how the work is split: an output element is
 * computed by one thread, in an order that depends neither on the number of
 * threads nor on how many tokens are in the batch. So a token's activations
 * are bit-identical whether it runs alone (decode), in a chunk (prefill) or
 * with other crops (vision groups). */
#ifndef VLM_BACKEND_CPU_OPS_H
#define VLM_BACKEND_CPU_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/cpu/parallel.h"
#include "tensor/dtype.h"

/* A weight as the kernels read it. */
typedef struct cpu_weight {
    vlm_dtype dtype; /* F32, F16, BF16; Q8_0, Q4_0, Q4_K (rows of whole blocks) */
    const void *data;
} cpu_weight;

/* Widen n elements starting at element `offset` of w to f32. Block types:
 * offset and n must be whole blocks (zeros otherwise). */
void cpu_widen(cpu_weight w, int64_t offset, float *dst, int64_t n);

/* y[n][out] = x[n][in] . W[out][in]^T (+ b[out]).
 * By far the most time goes here. Parallel over output rows; a block of
 * tokens shares each widened tile of W, so W is read once per block of tokens
 * (once in total for a decode step, where this is a GEMV). b.data may be NULL.
 * Block-quantized W (in a whole number of blocks): one vlm_quant_dot per
 * output, parallel over rows, x stays f32.
 * y must not alias x. */
void cpu_matmul(cpu_pool *pool, float *y, const float *x, int64_t n, int64_t in, int64_t out,
                cpu_weight w, cpu_weight b);

/* out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w, rows of dim (RMSNorm, no
 * bias). out may equal x. */
void cpu_rmsnorm(float *out, const float *x, int64_t n, int64_t dim, cpu_weight w, float eps);

/* out[r] = (x[r] - mean) * rsqrt(var + eps) * w + b, biased variance, as
 * torch.nn.LayerNorm. out may equal x. */
void cpu_layernorm(float *out, const float *x, int64_t n, int64_t dim, cpu_weight w, cpu_weight b,
                   float eps);

/* RoPE inverse frequencies, float32 as the reference computes them:
 * inv_freq[i] = 1 / (factor[i] * theta^(2i/head_dim)), i < head_dim/2.
 * factor NULL: all ones (plain RoPE). */
void cpu_rope_inv_freq(float *inv_freq, int head_dim, double theta, const float *factor);

/* cos/sin tables for n positions pos0..pos0+n-1, [n][head_dim/2] each:
 * angle = (float)p * inv_freq[i] (one f32 product), cos and sin evaluated in
 * double and rounded to f32 (high accuracy, spec §10.22), then times
 * (float)mscale. */
void cpu_rope_cos_sin(float *cos_t, float *sin_t, int64_t pos0, int64_t n, int head_dim,
                      const float *inv_freq, double mscale);

/* Rotate-half RoPE in place on n rows of n_heads heads of head_dim values,
 * rows row_stride floats apart; pair (i, i + head_dim/2):
 * x' = x*cos + rotate_half(x)*sin. */
void cpu_rope_apply(float *x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                    const float *cos_t, const float *sin_t);

/* Scaled dot-product attention, softmax in f32.
 * q: [n_q] rows (row stride q_stride) of n_heads*head_dim;
 * k, v: F32 or BF16, [n_kv] rows (stride kv_stride elements) of
 * n_kv_heads*head_dim (query head h reads kv head h / (n_heads/n_kv_heads));
 * out: [n_q][n_heads*head_dim].
 * causal: query i sits at position q_pos0 + i and sees keys 0..q_pos0+i
 * (the KV rows are positions 0..n_kv-1); otherwise every key.
 * scratch: n_threads(pool) * n_kv floats. */
void cpu_attention(cpu_pool *pool, float *out, const float *q, int64_t q_stride, cpu_weight k,
                   cpu_weight v, int64_t kv_stride, int64_t n_q, int64_t n_kv, int n_heads,
                   int n_kv_heads, int head_dim, bool causal, int64_t q_pos0, float scale,
                   float *scratch);

/* Store n f32 values at element `offset` of dst as dtype (F32, or BF16
 * rounded to nearest even): how K/V rows enter the cache. */
void cpu_store_rows(void *dst, vlm_dtype dtype, int64_t offset, const float *src, int64_t n);

/* Elementwise, in place over n values. */
void cpu_quick_gelu(float *x, int64_t n);          /* x * sigmoid(1.702 x) (CLIP) */
void cpu_gelu_erf(float *x, int64_t n);            /* 0.5 x (1 + erf(x / sqrt 2)) (exact GELU) */
void cpu_add(float *y, const float *x, int64_t n); /* y += x (residual) */
/* Add a bias row b[dim] to each of n rows. */
void cpu_add_bias(float *y, int64_t n, int64_t dim, cpu_weight b);

/* SiLU-gated MLP middle: gu is [n][2*ff] with gate first, up second;
 * out[n][ff] = up * silu(gate). out must not alias gu. */
void cpu_silu_mul(float *out, const float *gu, int64_t n, int64_t ff);

/* The index of the largest of x[n] by a scan with a strict `>`: the lowest
 * index on ties (torch.argmax), NaNs never win (index 0 if x[0] is NaN). */
int32_t cpu_argmax(const float *x, int64_t n);

/* out[i] = table[ids[i]] for rows of dim (ids already checked in range). */
void cpu_embed_rows(float *out, cpu_weight table, int64_t dim, const int32_t *ids, int64_t n);

/* Patch embedding: conv2d(3 -> width, kernel p, stride p, no bias) over a
 * CHW image of side s; out is [(s/p)^2][width], patches row-major.
 * im2col: scratch of (s/p)^2 * 3*p*p floats. w is [width][3][p][p]. */
void cpu_patch_embed(cpu_pool *pool, float *out, const float *img, int s, int p, int64_t width,
                     cpu_weight w, float *im2col);

#endif
