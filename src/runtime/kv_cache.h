/* runtime/kv_cache - the decoder's key/value cache, f32 or bf16, sized once
 * for the session's maximum context and accounted as kv_cache.
 *
 * Bytes: 2 * n_layers * max_ctx * kv_dim * (4 or 2). Phi-3.5-vision at 4096
 * tokens: 3 GiB in f32, 1.5 GiB in bf16. When the model runs its first
 * info->gpu_layers layers on the GPU, their rows live there (vlm_dev_alloc,
 * device category kv_cache) and the host holds only the other layers'. */
#ifndef VLM_RUNTIME_KV_CACHE_H
#define VLM_RUNTIME_KV_CACHE_H

#include <stdint.h>

#include "models/model.h"

typedef struct kv_cache {
    vlm_kv kv;            /* what the decoder reads and writes */
    int64_t bytes;        /* host bytes, accounted under VLM_MEM_KV_CACHE */
    int64_t device_bytes; /* GPU bytes (the GPU layers'), device category KV_CACHE */
} kv_cache;

/* Host bytes a cache of max_ctx tokens takes: the layers from
 * info->gpu_layers on (0 on overflow, and when every layer is on the GPU). */
uint64_t kv_cache_bytes(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype);
/* GPU bytes: the first info->gpu_layers layers (0 without GPU layers). */
uint64_t kv_cache_device_bytes(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype);

/* dtype: VLM_DTYPE_F32 or VLM_DTYPE_BF16. VLM_ERR_NOMEM naming the host or
 * GPU part that found no memory; VLM_ERR_UNSUPPORTED for GPU layers in a
 * build without a GPU backend. */
vlm_status kv_cache_create(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype,
                           kv_cache **out, vlm_err *err);
void kv_cache_free(kv_cache *c);

#endif
