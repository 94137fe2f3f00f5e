/* models/phi3v - Phi-3-vision (Phi3VForCausalLM): the CLIP tower, the HD glue
 * (2x2 merge, tile mosaic, sub_GN / glb_GN separators, "sub_glb" order), the
 * projector, the splice of image features at placeholder positions, and the
 * Phi-3 decoder (spec §4-§6). Registered as "Phi3VForCausalLM". */
#ifndef VLM_MODELS_PHI3V_H
#define VLM_MODELS_PHI3V_H

#include "models/clip.h"
#include "models/model.h"
#include "models/phi3.h"
#include "models/phi3v_config.h"

typedef struct phi3v_model {
    phi3v_config cfg;
    cpu_pool *pool; /* not owned; NULL: one thread */
    clip_model clip;
    phi3_model lm;
    cpu_weight sub_gn;           /* [4*Dv] row separator ([1,1,1,4Dv]) */
    cpu_weight glb_gn;           /* [4*Dv] sub/global separator ([1,1,4Dv]) */
    cpu_weight proj0_w, proj0_b; /* [d][4*Dv], [d] */
    cpu_weight proj2_w, proj2_b; /* [d][d], [d] */
    struct phi3_gpu *gpu;        /* the decoder's GPU part (models/phi3_gpu.h); NULL: all CPU */
    struct clip_gpu *clip_gpu;   /* the vision tower on the GPU (models/clip_gpu.h), or NULL */
} phi3v_model;

vlm_status phi3v_create(const phi3v_config *cfg, const vlm_weight_source *src, cpu_pool *pool,
                        phi3v_model **out, vlm_err *err);
void phi3v_free(phi3v_model *m);

/* The glue for one image all at once (the reference's order, spec §5):
 * CLIP features feats[1+hc*wc][grid^2][Dv] (global first, then tiles
 * row-major) -> projected rows out[image_tokens][d]. phi3v_encode_image
 * glues per crop group instead (identical bits); this is the path it is
 * tested against. ws: phi3v_glue_all_workspace_floats(m, hc, wc) floats. */
size_t phi3v_glue_all_workspace_floats(const phi3v_model *m, int hc, int wc);
void phi3v_glue_all(const phi3v_model *m, const float *feats, int hc, int wc, float *out,
                    float *ws);

/* CLIP + glue for one image, `group` crops at a time: each group goes
 * through the tower, then its merged cells through the projector straight to
 * their rows of out[image_tokens][d]. Allocates one group's features (image)
 * and one workspace (activations), both independent of the crop count. */
vlm_status phi3v_encode_image(phi3v_model *m, const vlm_image_input *img, int group, float *out,
                              vlm_err *err);

/* Embeddings of ids[n] with image rows spliced in at ids < 0, in order. */
vlm_status phi3v_embed(const phi3v_model *m, const int32_t *ids, int64_t n, const float *img_rows,
                       float *out, vlm_err *err);

size_t phi3v_workspace_floats(const phi3v_model *m, int64_t max_tokens, int64_t max_ctx);

/* --- sizes from the config alone, for the memory planner (the functions
 * above and phi3v_encode_image call these, so plan and code agree). */
/* Glue workspace for `group` crops (their merged cells through the projector). */
size_t phi3v_glue_workspace_floats_cfg(const phi3v_config *c, int group);
size_t phi3v_glue_workspace_floats(const phi3v_model *m, int group);
size_t phi3v_workspace_floats_cfg(const phi3v_config *c, int64_t max_tokens, int64_t max_ctx,
                                  int n_threads);
/* What phi3v_encode_image allocates for an hc x wc grid encoded `group`
 * crops at a time: the CLIP features of one group (image) and the workspace
 * max(CLIP(group), glue(group)) (activations), in floats. Neither grows with
 * the crop count. */
void phi3v_encode_floats(const phi3v_config *c, int hc, int wc, int group, int n_threads,
                         size_t *feat_floats, size_t *ws_floats);
/* The vlm_model_info a model built from c reports. */
void phi3v_info_from_config(const phi3v_config *c, vlm_model_info *o);
vlm_status phi3v_forward(phi3v_model *m, vlm_kv *kv, const vlm_forward_args *a, float *ws,
                         vlm_err *err);

extern const vlm_arch phi3v_arch;

#endif
