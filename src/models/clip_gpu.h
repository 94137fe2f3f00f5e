/* models/clip_gpu - the CLIP vision tower on the CUDA backend, the same
 * computation as clip_encode op for op. Weights uploaded once at create
 * (device category WEIGHTS; host tensors untouched); activations on the
 * device grown to the largest group; features copied to the host without
 * the CLS row, as clip_encode writes them. Compiled only with
 * VLM_HAVE_CUDA. */
#ifndef VLM_MODELS_CLIP_GPU_H
#define VLM_MODELS_CLIP_GPU_H

#ifdef VLM_HAVE_CUDA

#include "models/clip.h"

typedef struct clip_gpu clip_gpu;

vlm_status clip_gpu_create(const clip_model *m, clip_gpu **out, vlm_err *err);
void clip_gpu_free(clip_gpu *g);

/* As clip_encode: n crops ([n][3][S][S] host f32) in groups of `group`,
 * out [n][grid^2][D] host. */
vlm_status clip_gpu_encode(clip_gpu *g, const float *pixels, int n, int group, float *out,
                           vlm_err *err);

#endif
#endif
