/* backend/cuda - the CUDA backend: accounted device memory, a per-model
 * context (stream, cuBLAS handle, workspace) and the op set, with the CPU
 * ops' semantics (backend/cpu/ops.h).
 *
 * Compiled only when nvcc is found (VLM_HAVE_CUDA). Every pointer named
 * "device" below is device memory from vlm_dev_alloc; activations are f32,
 * row-major, one token per row, as on the CPU. Ops are queued on the
 * context's stream and return at once; errors of a kernel launch are
 * reported by the launch itself (configuration) or by vlm_cuda_sync
 * (execution), naming the op. */
#ifndef VLM_BACKEND_CUDA_H
#define VLM_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/gpu.h"
#include "base/alloc.h"
#include "base/status.h"
#include "tensor/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- accounted device memory (dev_alloc.c) ------------------------------ */

/* cudaMalloc of size bytes (at least 256-byte aligned) counted under cat.
 * NULL when the device refuses, when fault injection
 * (VLM_FAIL_DEVICE_ALLOC_AT=N or "N+", or vlm_dev_alloc_fail_at) says so,
 * or when the host record cannot be allocated; the caller reports
 * VLM_ERR_NOMEM naming what the memory was for. size 0 allocates 1 byte. */
void *vlm_dev_alloc(size_t size, vlm_mem_cat cat);
/* NULL is ignored. A pointer not from vlm_dev_alloc is ignored too (and
 * logged): the accounting stays right. */
void vlm_dev_free(void *p);
/* Bytes of a live allocation, 0 for anything else. */
size_t vlm_dev_alloc_size(const void *p);
/* Fail the n-th device allocation from now (counting from 1), and with
 * sticky every later one too; n = 0 turns fault injection off. */
void vlm_dev_alloc_fail_at(uint64_t n, bool sticky);
/* Device allocations made so far (what fault injection counts). */
uint64_t vlm_dev_alloc_count(void);

/* --- the context: one per model ----------------------------------------- */

typedef struct vlm_cuda_ctx vlm_cuda_ctx;

/* Selects the device (VLM_GPU_DEVICE, default 0), creates a stream, a
 * cuBLAS handle bound to it and a device workspace of workspace_bytes
 * (category SCRATCH; used by matmul to round activations to bf16 and by
 * attention for split-K partials; ops that need more than this fail with
 * VLM_ERR_NOMEM saying how much). VLM_ERR_UNSUPPORTED when there is no
 * device. */
vlm_status vlm_cuda_ctx_create(vlm_cuda_ctx **out, size_t workspace_bytes, vlm_err *err);
void vlm_cuda_ctx_destroy(vlm_cuda_ctx *ctx);
/* The context's cudaStream_t (as void *, so C callers need no CUDA
 * header): for timing with events and for copies of one's own. */
void *vlm_cuda_ctx_stream(vlm_cuda_ctx *ctx);
/* Wait for every queued op; the first execution error, naming `what`. */
vlm_status vlm_cuda_sync(vlm_cuda_ctx *ctx, const char *what, vlm_err *err);

/* Measuring (VLM_CUDA_TIMING=1 when the context was created): mark(i),
 * 0 <= i < VLM_CUDA_MARKS, records event i on the stream; after a sync,
 * span_ms(i, j) is the GPU time from mark i to mark j and marks_ms the
 * span from 0 to 1. Off: timing() is false, the calls do nothing and the
 * spans are 0. */
#define VLM_CUDA_MARKS 6
bool vlm_cuda_timing(const vlm_cuda_ctx *ctx);
void vlm_cuda_mark(vlm_cuda_ctx *ctx, int i);
double vlm_cuda_span_ms(vlm_cuda_ctx *ctx, int i, int j);
double vlm_cuda_marks_ms(vlm_cuda_ctx *ctx);

/* Fences: fence_record(i), 0 <= i < VLM_CUDA_FENCES, marks the work queued
 * so far; fence_wait(i) returns when that work is done (the first
 * execution error, naming what), so that the host can use the first part
 * of a result while the rest is still copied. */
#define VLM_CUDA_FENCES 8
vlm_status vlm_cuda_fence_record(vlm_cuda_ctx *ctx, int i, vlm_err *err);
vlm_status vlm_cuda_fence_wait(vlm_cuda_ctx *ctx, int i, const char *what, vlm_err *err);

/* Copies on the context's stream (synchronous with respect to the host for
 * pageable memory, so src may be reused at return). */
vlm_status vlm_cuda_upload(vlm_cuda_ctx *ctx, void *dst_dev, const void *src_host, size_t bytes,
                           const char *what, vlm_err *err);
vlm_status vlm_cuda_download(vlm_cuda_ctx *ctx, void *dst_host, const void *src_dev, size_t bytes,
                             const char *what, vlm_err *err);

/* Pinned (page-locked) host memory of size bytes, counted by base/alloc
 * under cat (vlm_alloc_note_external). NULL when the runtime refuses: the
 * caller falls back to its pageable copy, it is never an error. Free with
 * the same size and cat. */
void *vlm_cuda_host_alloc(size_t size, vlm_mem_cat cat);
void vlm_cuda_host_free(void *p, size_t size, vlm_mem_cat cat);
/* cudaMemcpyAsync host to device without waiting: src_host (pinned) must
 * stay unchanged until the stream has passed the copy (a later sync). */
vlm_status vlm_cuda_upload_async(vlm_cuda_ctx *ctx, void *dst_dev, const void *src_host,
                                 size_t bytes, const char *what, vlm_err *err);

/* --- ops (ops.cu) -------------------------------------------------------- */

/* A weight on the device: F32, F16, BF16, or Q8_0 / Q4_0 rows of whole
 * blocks laid out exactly as tensor/quant.h's blocks. */
typedef struct vlm_cuda_weight {
    vlm_dtype dtype;
    const void *data; /* device */
} vlm_cuda_weight;

/* y[n][out] = x[n][in] . W[out][in]^T (+ b[out]); b.data may be NULL.
 * n > VLM_CUDA_GEMV_MAX_N with F32 / F16 / BF16 weights: cuBLAS (F32:
 * SGEMM, TF32 off; F16/BF16: x rounded to the weight's type in the
 * workspace, tensor cores with f32 accumulation). Otherwise, and for every
 * block-quantized W: the hand-written GEMV, f32 accumulation, x f32.
 * With VLM_CUDA_F32_GEMM=1 set when the context was created, F16/BF16
 * products above the GEMV size keep x in f32 instead: W is widened to f32
 * in the workspace (chunks of output rows) and multiplied by SGEMM (the
 * "f32 mode" the model tests hold to 2e-3 of the CPU path).
 * y must not alias x. */
#define VLM_CUDA_GEMV_MAX_N 8
vlm_status vlm_cuda_matmul(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, int64_t in,
                           int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, vlm_err *err);
/* y[n][out] += x[n][in] . W[out][in]^T: the residual add fused into the
 * product (the GEMV adds its sums to y; cuBLAS with beta = 1), one launch
 * and one pass over y fewer than matmul + add. y must not alias x. */
vlm_status vlm_cuda_matmul_acc(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, int64_t in,
                               int64_t out, vlm_cuda_weight w, vlm_err *err);
/* Whether matmul rounds an n-row x to w's 16-bit type before its product
 * (cuBLAS on F16/BF16 weights above the GEMV size, outside f32 mode): then
 * an op before it may write x rounded already (rmsnorm_h, silu_mul_h) and
 * matmul_h take it, the same product without the rounding pass. */
bool vlm_cuda_rounds_inputs(const vlm_cuda_ctx *ctx, vlm_cuda_weight w, int64_t n);

/* A product and the small op after it, in one launch where the fast GEMV
 * takes the product (n <= VLM_CUDA_GEMV_MAX_N, BF16/F16 weights, the
 * decoder's shapes), else as the two ops; the results are the two ops'
 * bit for bit either way (VLM_CUDA_FUSE=0 always takes two).
 * matmul_silu: out [n][ff] = silu(x Wg^T) * (x Wu^T) for W = [Wg; Wu]
 *   ([2 ff][in], as silu_mul's gu); gu [n][2 ff] is scratch (two ops only).
 * matmul_rope_store: qkv [n][(H + 2 KV) hd] = x W^T, then rope_store
 *   (dev_pos NULL) or rope_store_pos (dev_pos given) with these arguments. */
vlm_status vlm_cuda_matmul_silu(vlm_cuda_ctx *ctx, float *out, float *gu, const float *x, int64_t n,
                                int64_t in, int64_t ff, vlm_cuda_weight w, vlm_err *err);
vlm_status vlm_cuda_matmul_rope_store(vlm_cuda_ctx *ctx, float *qkv, const float *x, int64_t n,
                                      int64_t in, vlm_cuda_weight w, int n_heads, int n_kv_heads,
                                      int head_dim, const float *cos_t, const float *sin_t,
                                      void *k_dst, void *v_dst, vlm_dtype dtype, int64_t offset,
                                      const int32_t *dev_pos, vlm_err *err);

/* As cpu_rmsnorm / cpu_layernorm (out may equal x). */
vlm_status vlm_cuda_rmsnorm(vlm_cuda_ctx *ctx, float *out, const float *x, int64_t n, int64_t dim,
                            vlm_cuda_weight w, float eps, vlm_err *err);
/* rmsnorm's values rounded to dtype (BF16 or F16) as to_half rounds them,
 * into out16 [n][dim]: a product's 16-bit input in one pass. out16 must not
 * overlap x. VLM_ERR_UNSUPPORTED for another dtype. */
vlm_status vlm_cuda_rmsnorm_h(vlm_cuda_ctx *ctx, void *out16, vlm_dtype dtype, const float *x,
                              int64_t n, int64_t dim, vlm_cuda_weight w, float eps, vlm_err *err);
vlm_status vlm_cuda_layernorm(vlm_cuda_ctx *ctx, float *out, const float *x, int64_t n, int64_t dim,
                              vlm_cuda_weight w, vlm_cuda_weight b, float eps, vlm_err *err);

/* As cpu_rope_apply; cos_t/sin_t are device copies of cpu_rope_cos_sin's
 * tables ([n][head_dim/2] f32), computed on the host so both backends
 * rotate by bit-identical angles. */
vlm_status vlm_cuda_rope_apply(vlm_cuda_ctx *ctx, float *x, int64_t n, int64_t row_stride,
                               int n_heads, int head_dim, const float *cos_t, const float *sin_t,
                               vlm_err *err);

/* The decoder's rotation and K/V stores in one launch, for n fused qkv rows
 * (row_stride floats apart; q's n_heads heads, then k's n_kv_heads, then
 * v's): rope_apply over the q and k heads in place, then k's and v's
 * n_kv_heads * head_dim values of row r stored (as store_rows: F32 or
 * BF16) at element offset + r * n_kv_heads * head_dim of k_dst and v_dst.
 * The same values as rope_apply + two store_rows_strided, two launches
 * fewer. */
vlm_status vlm_cuda_rope_store(vlm_cuda_ctx *ctx, float *qkv, int64_t n, int64_t row_stride,
                               int n_heads, int n_kv_heads, int head_dim, const float *cos_t,
                               const float *sin_t, void *k_dst, void *v_dst, vlm_dtype dtype,
                               int64_t offset, vlm_err *err);

/* As cpu_attention (k, v F32 or BF16; head_dim <= 128), online softmax in
 * f32. The key range of each (query, head) is cut into splits when there
 * are few queries (decode), partial results combined in a second kernel;
 * the partials live in the workspace. */
vlm_status vlm_cuda_attention(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                              vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride, int64_t n_q,
                              int64_t n_kv, int n_heads, int n_kv_heads, int head_dim, bool causal,
                              int64_t q_pos0, float scale, vlm_err *err);

/* n_seq independent sequences of the same shape in one launch: sequence s's
 * queries are rows [s * n_q, (s + 1) * n_q) of q (and of out), its keys
 * rows [s * n_kv, (s + 1) * n_kv) of k and v (the vision tower's crops).
 * bf16_inputs: q, K and V carry bf16 precision already (the caller's
 * products round activations to bf16), so with >= 32 queries a sequence
 * and head_dim a multiple of 16 the tensor-core kernel may round them to
 * bf16 (~4e-3 relative); not in f32 mode, nor with VLM_CUDA_MMA_ATTN=0 set
 * when the context was created. vlm_cuda_attention is n_seq 1 without
 * bf16_inputs. */
vlm_status vlm_cuda_attention_seqs(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                                   vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride,
                                   int n_seq, int64_t n_q, int64_t n_kv, int n_heads,
                                   int n_kv_heads, int head_dim, bool causal, int64_t q_pos0,
                                   float scale, bool bf16_inputs, vlm_err *err);

/* As cpu_store_rows: n f32 values at element offset of dst as F32 or BF16
 * (round to nearest even). */
vlm_status vlm_cuda_store_rows(vlm_cuda_ctx *ctx, void *dst, vlm_dtype dtype, int64_t offset,
                               const float *src, int64_t n, vlm_err *err);

/* n_rows rows of row_len values, src rows src_stride floats apart, stored
 * contiguously from element offset of dst (F32 or BF16): the K (or V) rows
 * of a whole chunk, taken out of the fused qkv rows, in one launch. */
vlm_status vlm_cuda_store_rows_strided(vlm_cuda_ctx *ctx, void *dst, vlm_dtype dtype,
                                       int64_t offset, const float *src, int64_t src_stride,
                                       int64_t n_rows, int64_t row_len, vlm_err *err);

/* The HD glue's 2x2 merge: for n_crops crops whose feature rows (grid x
 * grid of dim values, row-major) start at feats + (c * crop_rows + first)
 * * dim, out[c][i][j] = TL | TR | BL | BR of merged cell (i, j): out is
 * [n_crops * (grid/2)^2][4 * dim]. */
vlm_status vlm_cuda_merge2x2(vlm_cuda_ctx *ctx, float *out, const float *feats, int64_t crop_rows,
                             int64_t first, int grid, int64_t dim, int n_crops, vlm_err *err);

/* Elementwise, as the CPU ops of the same names. */
vlm_status vlm_cuda_quick_gelu(vlm_cuda_ctx *ctx, float *x, int64_t n, vlm_err *err);
vlm_status vlm_cuda_gelu_erf(vlm_cuda_ctx *ctx, float *x, int64_t n, vlm_err *err);
vlm_status vlm_cuda_add(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, vlm_err *err);
vlm_status vlm_cuda_add_bias(vlm_cuda_ctx *ctx, float *y, int64_t n, int64_t dim, vlm_cuda_weight b,
                             vlm_err *err);
vlm_status vlm_cuda_silu_mul(vlm_cuda_ctx *ctx, float *out, const float *gu, int64_t n, int64_t ff,
                             vlm_err *err);
/* silu_mul's values rounded to dtype (BF16 or F16) as to_half rounds them,
 * into out16 [n][ff]: the down product's 16-bit input in one pass. ff a
 * multiple of 4, gu 16-byte and out16 8-byte aligned, n <= 65535, else
 * VLM_ERR_UNSUPPORTED (nothing launched). */
vlm_status vlm_cuda_silu_mul_h(vlm_cuda_ctx *ctx, void *out16, vlm_dtype dtype, const float *gu,
                               int64_t n, int64_t ff, vlm_err *err);

/* *out (device) = cpu_argmax(x[n]): the lowest index of the largest value,
 * NaNs never taken (index 0 when x[0] is NaN), as the CPU's greedy pick. */
vlm_status vlm_cuda_argmax(vlm_cuda_ctx *ctx, int32_t *out, const float *x, int64_t n,
                           vlm_err *err);

/* out[i] = table[ids[i]], ids a device array already checked in range. */
vlm_status vlm_cuda_embed_rows(vlm_cuda_ctx *ctx, float *out, vlm_cuda_weight table, int64_t dim,
                               const int32_t *ids, int64_t n, vlm_err *err);

/* As cpu_patch_embed: im2col into im2col_dev ((s/p)^2 * 3*p*p floats), then
 * the matmul. */
vlm_status vlm_cuda_patch_embed(vlm_cuda_ctx *ctx, float *out, const float *img, int s, int p,
                                int64_t width, vlm_cuda_weight w, float *im2col_dev, vlm_err *err);

/* --- the decode step as a CUDA graph ------------------------------------- */

/* Ops whose position comes from device memory (dev_pos: one int32 the
 * caller sets before each run), so that one recorded launch sequence serves
 * every decode token.
 *
 * rope_store_pos: as rope_store for the rows at positions *dev_pos ..
 * *dev_pos + n - 1: cos/sin rows from cos_table/sin_table ([max_ctx][hd/2],
 * row p = position p, cpu_rope_cos_sin's values), K/V stored at element
 * layer_offset + (*dev_pos + r) * n_kv_heads * head_dim. */
vlm_status vlm_cuda_rope_store_pos(vlm_cuda_ctx *ctx, float *qkv, int64_t n, int64_t row_stride,
                                   int n_heads, int n_kv_heads, int head_dim,
                                   const float *cos_table, const float *sin_table, void *k_dst,
                                   void *v_dst, vlm_dtype dtype, int64_t layer_offset,
                                   const int32_t *dev_pos, vlm_err *err);
/* attention_pos: causal attention of n_q (< 32) queries at positions
 * *dev_pos.. over keys [0, *dev_pos + n_q), for any *dev_pos + n_q <=
 * max_kv. The launch has the key splits of max_kv; the kernels use the
 * split count of the actual length, so the result is bit for bit that of
 * vlm_cuda_attention(n_kv = *dev_pos + n_q, q_pos0 = *dev_pos). */
vlm_status vlm_cuda_attention_pos(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                                  vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride,
                                  int64_t n_q, int64_t max_kv, int n_heads, int n_kv_heads,
                                  int head_dim, float scale, const int32_t *dev_pos, vlm_err *err);

/* An instantiated graph of a context's stream (cudaGraphExec_t). */
typedef struct vlm_cuda_graph vlm_cuda_graph;

/* Record the ops queued on ctx's stream from capture_begin to capture_end
 * (thread-local capture mode: other threads' CUDA calls are unaffected)
 * instead of running them; capture_end instantiates them. capture_end
 * always ends the capture, also after a failed op in between; on failure
 * *out is NULL, the CUDA error is cleared and the status says why
 * (VLM_ERR_NOMEM when the device had no memory for it). The n-th
 * instantiation can be made to fail for tests (vlm_cuda_graph_fail_at). */
vlm_status vlm_cuda_capture_begin(vlm_cuda_ctx *ctx, vlm_err *err);
vlm_status vlm_cuda_capture_end(vlm_cuda_ctx *ctx, vlm_cuda_graph **out, vlm_err *err);
/* Queue one run of the graph on ctx's stream. */
vlm_status vlm_cuda_graph_launch(vlm_cuda_ctx *ctx, vlm_cuda_graph *g, vlm_err *err);
void vlm_cuda_graph_destroy(vlm_cuda_graph *g);
/* Fail the n-th graph instantiation from now (1 = the next); 0: off. */
void vlm_cuda_graph_fail_at(uint64_t n);
/* Graph instantiations so far (successful or not). */
uint64_t vlm_cuda_graph_count(void);

/* Queued copies (cudaMemcpyAsync) on ctx's stream, for the per-token
 * copies of the decode step through pinned memory (vlm_cuda_host_alloc):
 * the host side must stay valid until the next vlm_cuda_sync. */
vlm_status vlm_cuda_download_async(vlm_cuda_ctx *ctx, void *dst_host, const void *src_dev,
                                   size_t bytes, const char *what, vlm_err *err);

/* --- bf16 GEMM inputs (the vision tower) ----------------------------------
 * Products whose activations are already in the weight's 16-bit type
 * ("_h": BF16 or F16, the same type as W), written by the op before the
 * product, so the product has no rounding pass and no workspace and is one
 * cuBLAS call for any n. The rounding is the one matmul does (round to
 * nearest even), so layernorm_h + matmul_h give matmul's bits. Not for f32
 * mode (the caller checks vlm_cuda_f32_mode). */

/* True when the context was created with VLM_CUDA_F32_GEMM=1. */
bool vlm_cuda_f32_mode(const vlm_cuda_ctx *ctx);

/* y[n][out] = xh[n][in] . W[out][in]^T (+ b[out]); W BF16 or F16, xh of
 * the same type, y f32, b any float dtype or b.data NULL. The bias is
 * added by cuBLASLt's epilogue (no pass of its own) when the library takes
 * it, by add_bias otherwise. */
vlm_status vlm_cuda_matmul_h(vlm_cuda_ctx *ctx, float *y, const void *xh, int64_t n, int64_t in,
                             int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, vlm_err *err);
/* y[n][out] += xh . W^T (+ b): cuBLAS with beta = 1, the bias in the same
 * epilogue (the residual products of the tower: out_proj, fc2). */
vlm_status vlm_cuda_matmul_h_acc(vlm_cuda_ctx *ctx, float *y, const void *xh, int64_t n, int64_t in,
                                 int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, vlm_err *err);

/* As vlm_cuda_layernorm, the output rounded to dtype (BF16 or F16) in the
 * same pass: bit for bit layernorm's f32 result as matmul would round it. */
vlm_status vlm_cuda_layernorm_h(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const float *x,
                                int64_t n, int64_t dim, vlm_cuda_weight w, vlm_cuda_weight b,
                                float eps, vlm_err *err);

/* As vlm_cuda_layernorm_h from a bf16 x (the vision tower's bf16
 * residual): each row's values widened to f32, then the same arithmetic. */
vlm_status vlm_cuda_layernorm_h16(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const void *x16,
                                  int64_t n, int64_t dim, vlm_cuda_weight w, vlm_cuda_weight b,
                                  float eps, vlm_err *err);

/* y16[n][out] = round_bf16(y16 + xh . W^T + b): a bf16 residual y16 added
 * in the product's f32 accumulator and rounded once (cuBLASLt, beta 1, the
 * bias in the epilogue); W BF16, xh bf16. VLM_ERR_UNSUPPORTED (nothing
 * launched, y16 untouched) where cuBLASLt takes no such product or in f32
 * mode. */
vlm_status vlm_cuda_matmul_h_acc16(vlm_cuda_ctx *ctx, void *y16, const void *xh, int64_t n,
                                   int64_t in, int64_t out, vlm_cuda_weight w, vlm_cuda_weight b,
                                   vlm_err *err);

/* out[i] = x16[i]: n bf16 values widened to f32 (exact). */
vlm_status vlm_cuda_bf16_to_f32(vlm_cuda_ctx *ctx, float *out, const void *x16, int64_t n,
                                vlm_err *err);

/* out[i][j] = round(quick_gelu(x[i][j] + b[j])) to dtype (BF16 or F16):
 * fc1's bias, the activation and fc2's input rounding in one pass (reads
 * n * dim f32, writes n * dim 16-bit values). b.data may be NULL. */
vlm_status vlm_cuda_bias_quick_gelu_h(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const float *x,
                                      int64_t n, int64_t dim, vlm_cuda_weight b, vlm_err *err);

/* x16[i] = round_bf16(quick_gelu(x16[i])) in place over n bf16 values (n
 * a multiple of 8, x16 16-byte aligned): the activation on fc1's bf16
 * output, whose bias came in the product's epilogue (two roundings, as a
 * bf16 reference computes the MLP, where vlm_cuda_bias_quick_gelu_h rounds
 * once). */
vlm_status vlm_cuda_quick_gelu_bf16(vlm_cuda_ctx *ctx, void *x16, int64_t n, vlm_err *err);

/* n f32 values rounded to dtype (BF16 or F16), as matmul rounds x. */
vlm_status vlm_cuda_to_half(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const float *x,
                            int64_t n, vlm_err *err);

/* The CLIP embeddings of n_crops crops at once: im2col of every crop
 * (img [n_crops][3][s][s] of img_t) into col, one product with the patch
 * weight w [width][3p^2] into tmp [n_crops * (s/p)^2][width], then one
 * launch writing x [n_crops][(s/p)^2 + 1][width]: row 0 of each crop
 * class_emb + pos_emb[0], row r the patch r - 1 + pos_emb[r] (as
 * cpu_patch_embed and the CPU tower's embedding adds). col must hold
 * n_crops * (s/p)^2 * 3p^2 floats; with a BF16/F16 w outside f32 mode it
 * is filled with 16-bit values (half of it) and the product is matmul_h.
 * img_t is F32, or BF16 where vlm_cuda_pixels16 says the product rounds
 * the pixels to bf16 anyway (the same result from half the bytes). */
bool vlm_cuda_pixels16(const vlm_cuda_ctx *ctx, vlm_cuda_weight w);
vlm_status vlm_cuda_patch_embed_crops(vlm_cuda_ctx *ctx, float *x, const void *img, vlm_dtype img_t,
                                      int n_crops, int s, int p, int64_t width, vlm_cuda_weight w,
                                      vlm_cuda_weight class_emb, vlm_cuda_weight pos_emb, void *col,
                                      float *tmp, vlm_err *err);

/* --- the tower's q|k|v and attention in bf16 ------------------------------
 * y16[n][out] = round_bf16(xh . W^T + b): BF16 W and xh, the f32 result of
 * the product and bias rounded once to bf16 (cuBLASLt's epilogue). The
 * tower's q|k|v product, so attention reads bf16 q, K and V (the values the
 * tensor-core kernel would round them to) with no rounding pass. Where
 * cuBLASLt offers no bf16-output product with the bias, cuBLAS with a bf16
 * C holding the bias (rounded to bf16: exact for a bf16 checkpoint's
 * biases) and beta 1, one rounding of the f32 sum. VLM_ERR_UNSUPPORTED
 * when the weights are not BF16 or in f32 mode: the caller keeps the f32
 * path. */
vlm_status vlm_cuda_matmul_h_out16(vlm_cuda_ctx *ctx, void *y16, const void *xh, int64_t n,
                                   int64_t in, int64_t out, vlm_cuda_weight w, vlm_cuda_weight b,
                                   vlm_err *err);
/* y16[n][out] = round_bf16(quick_gelu(round_bf16(xh . W^T + b))): fc1 and
 * its activation, with matmul_h_out16's product and bias and
 * quick_gelu_bf16's two roundings. On an sm_90a build and a compute
 * capability 9.0 card, for out a multiple of 256 and in of 64 (16-byte
 * aligned xh and y16; BF16 or no bias), one product applies the activation
 * in its epilogue (gemm90, backend/cuda/hopper.cuh: fc1's output is written
 * once instead of written, read and written again); its exponential and
 * division are the fast ones, so a value may differ from the two-pass
 * result by one bf16 step where the exact one lies at a rounding boundary.
 * Otherwise matmul_h_out16 then quick_gelu_bf16, which needs n * out a
 * multiple of 8 and y16 16-byte aligned. VLM_ERR_UNSUPPORTED as
 * matmul_h_out16. */
vlm_status vlm_cuda_matmul_h_qgelu16(vlm_cuda_ctx *ctx, void *y16, const void *xh, int64_t n,
                                     int64_t in, int64_t out, vlm_cuda_weight w, vlm_cuda_weight b,
                                     vlm_err *err);
/* Whether matmul_h_qgelu16 runs gemm90 where the shapes fit (an sm_90a
 * build on a compute capability 9.0 card, VLM_CUDA_GEMM90 not 0). */
bool vlm_cuda_has_gemm90(vlm_cuda_ctx *ctx);
/* As vlm_cuda_attention_seqs on the tensor-core kernel (not causal), with
 * q, K, V bf16 (q_stride, kv_stride in elements; K and V rows 16-byte
 * aligned) and the output written as bf16 rounded as vlm_cuda_to_half
 * rounds (out16 [n_seq * n_q][n_heads * head_dim]): the output projection's
 * 16-bit input. VLM_ERR_UNSUPPORTED where that kernel does not apply (f32
 * mode, VLM_CUDA_MMA_ATTN=0, head_dim, strides, alignment). */
vlm_status vlm_cuda_attention_seqs_h(vlm_cuda_ctx *ctx, void *out16, const void *q16,
                                     int64_t q_stride, const void *k16, const void *v16,
                                     int64_t kv_stride, int n_seq, int64_t n_q, int64_t n_kv,
                                     int n_heads, int n_kv_heads, int head_dim, float scale,
                                     vlm_err *err);

#ifdef __cplusplus
}
#endif

#endif
