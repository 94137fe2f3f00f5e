/* models/phi3_gpu - the Phi-3 decoder's first gpu_layers layers (and, with
 * every layer there, the final norm and lm_head) on the CUDA backend, the
 * same computation as phi3_forward op for op (backend/cuda/cuda.h).
 *
 * Weights of the GPU part are uploaded once at create (device category
 * WEIGHTS); the host copies stay where they are (mapped or owned by the
 * weight source). The KV rows of the GPU layers are the vlm_kv's device
 * part (kv->dev_k / dev_v, [gpu_layers][max_ctx][kv_dim], allocated by
 * runtime/kv_cache when the model info says gpu_layers); a vlm_kv without
 * them fails the forward with VLM_ERR_INVALID_ARG. The host vlm_kv holds
 * the CPU layers only. Compiled only with VLM_HAVE_CUDA. */
#ifndef VLM_MODELS_PHI3_GPU_H
#define VLM_MODELS_PHI3_GPU_H

#ifdef VLM_HAVE_CUDA

#include "models/phi3.h"

typedef struct phi3_gpu phi3_gpu;

/* gpu_layers in [1, n_layers]; head only with gpu_layers == n_layers.
 * VLM_ERR_UNSUPPORTED for a weight type without a CUDA kernel (Q4_K),
 * VLM_ERR_NOMEM naming the tensor whose upload found no device memory. */
vlm_status phi3_gpu_create(const phi3_model *m, int gpu_layers, bool head, phi3_gpu **out,
                           vlm_err *err);
void phi3_gpu_free(phi3_gpu *g);
int phi3_gpu_layers(const phi3_gpu *g);
bool phi3_gpu_head(const phi3_gpu *g);

/* Layers [0, gpu_layers) on x ([n][d] f32, host; overwritten with the
 * hidden state after them unless the head is on the GPU: then only the
 * logits come back, as phi3_forward's logits_mode, or with
 * VLM_LOGITS_GREEDY only the last row's argmax, into *greedy_id, and x is
 * left as it was). RoPE tables for the cache's positions live on the device (filled
 * from cpu_rope_cos_sin as positions are reached). With the head on the
 * GPU a one-token forward runs as a CUDA graph (recorded once per cache
 * and logits mode, the position read from device memory), unless
 * VLM_CUDA_GRAPHS=0 was set when the model was created; a graph that cannot
 * be recorded or instantiated means plain launches, never an error. */
vlm_status phi3_gpu_forward(phi3_gpu *g, const vlm_kv *kv, float *x, int64_t n, int64_t pos0,
                            bool rope_long, int logits_mode, float *logits, int32_t *greedy_id,
                            vlm_err *err);

#endif
#endif
