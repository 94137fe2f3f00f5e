/* runtime/kv_cache - see kv_cache.h. */
#include "runtime/kv_cache.h"

#include "base/alloc.h"

uint64_t kv_cache_bytes(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype) {
    size_t per = 0, total = 0;
    if (max_ctx <= 0 || info->kv_dim <= 0 || info->n_layers <= 0) return 0;
    if (dtype != VLM_DTYPE_F32 && dtype != VLM_DTYPE_BF16) return 0;
    if (!vlm_size_mul((size_t)info->kv_dim, dtype == VLM_DTYPE_BF16 ? 2 : 4, &per) ||
        !vlm_size_mul(per, (size_t)max_ctx, &per) ||
        !vlm_size_mul(per, (size_t)info->n_layers, &per) || !vlm_size_mul(per, 2, &total))
        return 0;
    return total;
}

vlm_status kv_cache_create(const vlm_model_info *info, int64_t max_ctx, vlm_dtype dtype,
                           kv_cache **out, vlm_err *err) {
    *out = NULL;
    uint64_t bytes = kv_cache_bytes(info, max_ctx, dtype);
    if (bytes == 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "KV cache: bad size or dtype (%lld tokens, dtype %d; F32 or BF16)",
                           (long long)max_ctx, (int)dtype);
    kv_cache *c = vlm_calloc(1, sizeof *c, VLM_MEM_KV_CACHE);
    if (!c) return vlm_err_set(err, VLM_ERR_NOMEM, "KV cache: out of memory");
    c->kv.n_layers = info->n_layers;
    c->kv.max_ctx = max_ctx;
    c->kv.kv_dim = info->kv_dim;
    c->kv.dtype = dtype;
    c->bytes = (int64_t)bytes;
    /* Not zeroed: every row is written before it is read. */
    c->kv.k = vlm_alloc(bytes / 2, VLM_MEM_KV_CACHE);
    c->kv.v = c->kv.k ? vlm_alloc(bytes / 2, VLM_MEM_KV_CACHE) : NULL;
    if (!c->kv.v) {
        kv_cache_free(c);
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "KV cache: out of memory for %lld tokens (%llu bytes)",
                           (long long)max_ctx, (unsigned long long)bytes);
    }
    *out = c;
    return VLM_OK;
}

void kv_cache_free(kv_cache *c) {
    if (!c) return;
    vlm_free(c->kv.k);
    vlm_free(c->kv.v);
    vlm_free(c);
}
