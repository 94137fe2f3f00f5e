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

/* The HD projector after the tower (Phi-3-vision): separators and
 * Linear0 -> GELU(erf) -> Linear2, weights [d][4Dv], [d], [d][d], [d];
 * sub_gn, glb_gn [4Dv]. Uploaded once. */
typedef struct clip_gpu_projector {
    cpu_weight sub_gn, glb_gn, proj0_w, proj0_b, proj2_w, proj2_b;
    int64_t hidden; /* d, the decoder width */
} clip_gpu_projector;
vlm_status clip_gpu_set_projector(clip_gpu *g, const clip_gpu_projector *p, vlm_err *err);

/* Called by clip_gpu_encode_project for each chunk of whole crops as its
 * projected rows arrive: rows [cn * (grid/2)^2][d] of the call's crops
 * [c0, c0 + cn), crop by crop, cells row-major, valid during the call. */
typedef void (*clip_rows_fn)(void *ctx, const float *rows, int c0, int cn);

/* With the projector: n crops through the tower, the 2x2 merge and the
 * projector; the rows [n * (grid/2)^2][d] come down in up to
 * VLM_CUDA_FENCES chunks of whole crops and each is handed to rows_fn (may
 * be NULL) as soon as it has arrived, so that the caller places one while
 * the next is still copied. They land in the tower's pinned staging buffer
 * (valid until its next call) or, where it has none, in out (host, that
 * many rows; out may be NULL only when clip_gpu_reserve_staging said yes
 * for n crops). pool (may be NULL) copies the pixels into the pinned
 * buffer, rounded to bf16 where the patch product takes bf16 (BF16 patch
 * weights outside f32 mode; VLM_CUDA_PX16=0 keeps f32): the product rounds
 * them so itself. */
vlm_status clip_gpu_encode_project(clip_gpu *g, cpu_pool *pool, const float *pixels, int n,
                                   float *out, clip_rows_fn rows_fn, void *fn_ctx, vlm_err *err);
/* Sizes the pinned staging buffer for groups of n crops (once; it only
 * grows); false when the driver refuses page-locked memory (the copies then
 * go through the caller's memory). */
bool clip_gpu_reserve_staging(clip_gpu *g, int n);
/* The projected separators: out [2][d] host (sub_GN, then glb_GN).
 * Computed on the first call and kept (2d floats of host memory, counted
 * as image memory, until the tower is freed or the projector set again). */
vlm_status clip_gpu_project_separators(clip_gpu *g, float *out, vlm_err *err);

#endif
#endif
