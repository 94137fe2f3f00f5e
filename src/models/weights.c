/* models/weights - see weights.h. */
#include "models/weights.h"

#include <stdio.h>
#include <string.h>

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

vlm_status weights_get(const vlm_weight_source *src, const char *name, int ndim,
                       const int64_t *shape, vlm_tensor_view *out, vlm_err *err) {
    if (!src || !src->lookup)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: no weight source", name);
    vlm_tensor_view v;
    memset(&v, 0, sizeof v);
    vlm_status st = src->lookup(src->ctx, name, &v, err);
    if (st != VLM_OK) return st;
    bool block =
        v.dtype == VLM_DTYPE_Q8_0 || v.dtype == VLM_DTYPE_Q4_0 || v.dtype == VLM_DTYPE_Q4_K;
    if (block && (v.ndim < 1 || v.shape[v.ndim - 1] % vlm_dtype_get(v.dtype)->block_elems != 0))
        return vlm_err_set(err, VLM_ERR_FORMAT, "tensor %s: rows of %lld are not whole %s blocks",
                           name, v.ndim >= 1 ? (long long)v.shape[v.ndim - 1] : 0LL,
                           vlm_dtype_get(v.dtype)->name);
    if (v.dtype != VLM_DTYPE_F32 && v.dtype != VLM_DTYPE_F16 && v.dtype != VLM_DTYPE_BF16 &&
        !block) {
        const vlm_dtype_info *d = vlm_dtype_get(v.dtype);
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "tensor %s: dtype %s is not supported", name,
                           d ? d->name : "?");
    }
    bool same = v.ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = v.shape[i] == shape[i];
    if (!same || !v.data) {
        char want[160], got[160];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, v.ndim < 0 || v.ndim > VLM_TENSOR_MAX_DIMS ? 0 : v.ndim,
                  v.shape);
        if (!v.data) return vlm_err_set(err, VLM_ERR_FORMAT, "tensor %s: no data", name);
        return vlm_err_set(err, VLM_ERR_FORMAT, "tensor %s: shape %s, expected %s", name, got,
                           want);
    }
    *out = v;
    return VLM_OK;
}

vlm_status weights_get1(const vlm_weight_source *src, const char *name, int64_t d0,
                        vlm_tensor_view *out, vlm_err *err) {
    int64_t s[1] = {d0};
    return weights_get(src, name, 1, s, out, err);
}

vlm_status weights_get2(const vlm_weight_source *src, const char *name, int64_t d0, int64_t d1,
                        vlm_tensor_view *out, vlm_err *err) {
    int64_t s[2] = {d0, d1};
    return weights_get(src, name, 2, s, out, err);
}

int64_t weights_numel(const vlm_tensor_view *v) {
    int64_t n = 1;
    for (int i = 0; i < v->ndim; i++) n *= v->shape[i];
    return n;
}
