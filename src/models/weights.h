/* models/weights - how a model asks for its tensors.
 *
 * The model never opens files. It asks a weight source for each tensor by its
 * real checkpoint name (e.g. "model.layers.3.self_attn.qkv_proj.weight") and
 * gets a view: dtype, shape, and a pointer to the stored bytes (memory-mapped
 * bf16 in the real model). Weights stay in their stored dtype; the CPU kernels
 * widen bf16/f16 to f32 as they read. The loader (safetensors, GGUF, a test
 * fixture) fills in the lookup function. */
#ifndef VLM_MODELS_WEIGHTS_H
#define VLM_MODELS_WEIGHTS_H

#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

#define VLM_TENSOR_MAX_DIMS 8

typedef struct vlm_tensor_view {
    vlm_dtype dtype; /* F32, F16, BF16; Q8_0, Q4_0, Q4_K (quantized at load) */
    int ndim;
    int64_t shape[VLM_TENSOR_MAX_DIMS]; /* row-major, outermost first */
    const void *data;                   /* the stored bytes; not owned */
} vlm_tensor_view;

/* Find tensor `name`. VLM_ERR_NOT_FOUND (with a message naming the tensor)
 * when it does not exist. The view's data must stay valid while the model
 * lives. */
typedef vlm_status (*vlm_weight_lookup_fn)(void *ctx, const char *name, vlm_tensor_view *out,
                                           vlm_err *err);

typedef struct vlm_weight_source {
    vlm_weight_lookup_fn lookup;
    void *ctx;
} vlm_weight_source;

/* Look up `name` and check that its shape is exactly shape[0..ndim-1] and its
 * dtype one the CPU kernels read (F32, F16, BF16, or Q8_0/Q4_0/Q4_K with
 * rows of whole blocks). The message names the
 * tensor, the expected and the found shape. */
vlm_status weights_get(const vlm_weight_source *src, const char *name, int ndim,
                       const int64_t *shape, vlm_tensor_view *out, vlm_err *err);

/* The same with the shape given inline: weights_get1(src, name, n, out, err). */
vlm_status weights_get1(const vlm_weight_source *src, const char *name, int64_t d0,
                        vlm_tensor_view *out, vlm_err *err);
vlm_status weights_get2(const vlm_weight_source *src, const char *name, int64_t d0, int64_t d1,
                        vlm_tensor_view *out, vlm_err *err);

/* Number of elements of a view. */
int64_t weights_numel(const vlm_tensor_view *v);

#endif
