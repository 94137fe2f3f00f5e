/* runtime/kv_cache - see kv_cache.h. */
#include "runtime/kv_cache.h"

#include "base/alloc.h"
#ifdef VLM_HAVE_CUDA
#include "backend/cuda/cuda.h"
#endif

/* Bytes of K and V together for `layers` layers of max_ctx rows (0 on
 * overflow or a bad argument; 0 layers give 0 too). */
static uint64_t layers_bytes(const vlm_model_info *info, int layers, int64_t max_ctx,
                             vlm_dtype dtype) {
    size_t per = 0, total = 0;
    if (max_ctx <= 0 || info->kv_dim <= 0 || layers <= 0) return 0;
    if (dtype != VLM_DTYPE_F32 && dtype != VLM_DTYPE_BF16) return 0;
    if (!vlm_size_mul((size_t)info->kv_dim, dtype == VLM_DTYPE_BF16 ? 2 : 4, &per) ||
        !vlm_size_mul(per, (size_t)max_ctx, &per) || !vlm_size_mul(per, (size_t)layers, &per) ||
        !vlm_size_mul(per, 2, &total))
        return 0;
    return total;
}

static int gpu_layers_of(const vlm_model_info *info) {
    int g = info->gpu_layers;
    return g < 0 ? 0 : g > info->n_layers ? info->n_layers : g;
}

uint64_t kv_cache_bytes(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype) {
    if (info->n_layers <= 0) return 0;
    return layers_bytes(info, info->n_layers - gpu_layers_of(info), max_ctx, dtype);
}

uint64_t kv_cache_device_bytes(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype) {
    return layers_bytes(info, gpu_layers_of(info), max_ctx, dtype);
}

vlm_status kv_cache_create(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype,
                           kv_cache **out, vlm_err *err) {
    *out = NULL;
    const int gl = gpu_layers_of(info);
    /* the whole cache's size validates the arguments, wherever it lives */
    if (info->n_layers <= 0 || layers_bytes(info, info->n_layers, max_ctx, dtype) == 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "KV cache: bad size or dtype (%lld tokens, dtype %d; F32 or BF16)",
                           (long long)max_ctx, (int)dtype);
    uint64_t host = layers_bytes(info, info->n_layers - gl, max_ctx, dtype);
    uint64_t dev = layers_bytes(info, gl, max_ctx, dtype);
    kv_cache *c = vlm_calloc(1, sizeof *c, VLM_MEM_KV_CACHE);
    if (!c) return vlm_err_set(err, VLM_ERR_NOMEM, "KV cache: out of memory");
    c->kv.n_layers = info->n_layers;
    c->kv.max_ctx = max_ctx;
    c->kv.kv_dim = info->kv_dim;
    c->kv.dtype = dtype;
    c->kv.gpu_layers = gl;
    c->bytes = (int64_t)host;
    c->device_bytes = (int64_t)dev;
    /* Not zeroed: every row is written before it is read. */
    if (host) {
        c->kv.k = vlm_alloc(host / 2, VLM_MEM_KV_CACHE);
        c->kv.v = c->kv.k ? vlm_alloc(host / 2, VLM_MEM_KV_CACHE) : NULL;
        if (!c->kv.v) {
            kv_cache_free(c);
            return vlm_err_set(err, VLM_ERR_NOMEM,
                               "KV cache: out of memory for %lld tokens of %d layers (%llu bytes)",
                               (long long)max_ctx, info->n_layers - gl, (unsigned long long)host);
        }
    }
    if (dev) {
#ifdef VLM_HAVE_CUDA
        c->kv.dev_k = vlm_dev_alloc((size_t)(dev / 2), VLM_MEM_KV_CACHE);
        c->kv.dev_v = c->kv.dev_k ? vlm_dev_alloc((size_t)(dev / 2), VLM_MEM_KV_CACHE) : NULL;
        if (!c->kv.dev_v) {
            kv_cache_free(c);
            return vlm_err_set(err, VLM_ERR_NOMEM,
                               "KV cache: out of GPU memory for %lld tokens of %d layers (%llu "
                               "bytes)",
                               (long long)max_ctx, gl, (unsigned long long)dev);
        }
#else
        kv_cache_free(c);
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "KV cache: %d layers on the GPU, but this build has no GPU backend", gl);
#endif
    }
    *out = c;
    return VLM_OK;
}

void kv_cache_free(kv_cache *c) {
    if (!c) return;
    vlm_free(c->kv.k);
    vlm_free(c->kv.v);
#ifdef VLM_HAVE_CUDA
    vlm_dev_free(c->kv.dev_k);
    vlm_dev_free(c->kv.dev_v);
#endif
    vlm_free(c);
}
