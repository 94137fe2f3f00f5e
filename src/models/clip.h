/* models/clip - a CLIP ViT vision tower (pre-LN, quick_gelu), run up to a
 * chosen hidden state, CLS dropped (spec §4).
 *
 * Phi-3-vision uses CLIP ViT-L/14-336 and takes hidden_states[-2]: the output
 * of encoder layer n_layers-2, without the last layer and post_layernorm. The
 * dimensions are a config so tiny test towers run the same code. Crops are
 * independent: encoding them in groups of any size gives identical values. */
#ifndef VLM_MODELS_CLIP_H
#define VLM_MODELS_CLIP_H

#include <stddef.h>
#include <stdint.h>

#include "backend/cpu/ops.h"
#include "models/weights.h"

typedef struct clip_config {
    int hidden;       /* width: 1024 */
    int intermediate; /* MLP: 4096 */
    int n_layers;     /* layers in the checkpoint: 24 */
    int n_heads;      /* 16 (head_dim 64) */
    int image_size;   /* crop side in pixels: 336 */
    int patch_size;   /* 14 -> a 24x24 grid */
    float ln_eps;     /* 1e-5 for every LayerNorm */
    /* Features are hidden_states[layer_idx] (Python indexing over the
     * n_layers+1 hidden states): -2 is the output of layer n_layers-2. */
    int layer_idx;
} clip_config;

typedef struct clip_layer {
    cpu_weight ln1_w, ln1_b;       /* [D] */
    cpu_weight q_w, k_w, v_w, o_w; /* [D][D] */
    cpu_weight q_b, k_b, v_b, o_b; /* [D] */
    cpu_weight ln2_w, ln2_b;       /* [D] */
    cpu_weight fc1_w, fc1_b;       /* [I][D], [I] */
    cpu_weight fc2_w, fc2_b;       /* [D][I], [D] */
} clip_layer;

typedef struct clip_model {
    clip_config cfg;
    int grid;                      /* image_size / patch_size */
    int n_pos;                     /* grid^2 + 1 (CLS) */
    int n_run;                     /* encoder layers run: n_layers + 1 + layer_idx */
    cpu_weight class_emb;          /* [D] */
    cpu_weight patch_w;            /* [D][3][P][P], no bias */
    cpu_weight pos_emb;            /* [n_pos][D] */
    cpu_weight pre_ln_w, pre_ln_b; /* [D] ("pre_layrnorm") */
    clip_layer *layers;            /* [n_run] */
} clip_model;

/* Look up the tower's tensors under `prefix` (".../vision_model") and check
 * their shapes. Only the layers that are run are looked up. */
vlm_status clip_load(clip_model *m, const clip_config *cfg, const vlm_weight_source *src,
                     const char *prefix, vlm_err *err);
void clip_free(clip_model *m);

/* Floats of workspace clip_encode needs for `group` crops at once. */
size_t clip_workspace_floats(const clip_model *m, int group, int n_threads);
/* The same from the config alone (the memory planner sizes it before any
 * weight is loaded). */
size_t clip_workspace_floats_cfg(const clip_config *cfg, int group, int n_threads);

/* The GPU tower's device activations (models/clip_gpu.c) for a group of gc
 * crops, here so that the planner (every build) sizes them as the tower
 * lays them out. Offsets in floats, each region starting on 64 floats
 * (256 bytes); T = gc * (grid^2 + 1). */
typedef struct clip_gpu_layout {
    size_t x, h, q, k, v, att; /* [T][D] f32 (q, k, v consecutive: the packed q|k|v rows) */
    size_t mlp;                /* [T][max(I, 3P^2)] f32: fc1's output; the crops' im2col */
    size_t xb;                 /* [T][max(D, I)] 16-bit: the products' rounded inputs */
    size_t x16;                /* [T][D] bf16: the residual on the bf16 path */
    size_t px;                 /* [gc][3][S][S] f32: the pixels */
    size_t seq, hid, prj;      /* projector (proj_d > 0): [rows][4D], [rows][d], [rows][d] */
    size_t total;              /* floats */
} clip_gpu_layout;
/* proj_d: the projector's width (the decoder's hidden), 0 without one;
 * rows = max(gc * (grid/2)^2, 2). */
void clip_gpu_layout_cfg(const clip_config *cfg, int gc, int64_t proj_d, clip_gpu_layout *out);
/* The GPU tower's pinned host staging buffer for gc crops, bytes: the
 * larger of the pixels going up ([gc][3][S][S] f32) and, with a
 * projector, the projected rows coming down ([rows][proj_d] f32). */
size_t clip_gpu_staging_bytes_cfg(const clip_config *cfg, int gc, int64_t proj_d);

/* Encode n crops (CHW f32, [n][3][S][S], normalised) into features
 * out[n][grid*grid][D] (CLS dropped), `group` crops at a time. */
void clip_encode(const clip_model *m, cpu_pool *pool, const float *pixels, int n, int group,
                 float *out, float *ws);

#endif
