/* models/phi3 - the Phi-3 decoder (spec §6): fused qkv and gate_up, RMSNorm,
 * SiLU-gated MLP, RoPE with LongRoPE ("su") scaling, causal attention over a
 * KV cache, final norm, lm_head. Logits are f32.
 *
 * The decoder takes input embeddings (text rows already spliced with image
 * features by the caller), so it does not know about images. */
#ifndef VLM_MODELS_PHI3_H
#define VLM_MODELS_PHI3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/cpu/ops.h"
#include "models/model.h"
#include "models/phi3v_config.h"
#include "models/weights.h"

typedef struct phi3_layer {
    cpu_weight in_norm;   /* [d]  input_layernorm */
    cpu_weight qkv;       /* [(H + 2*KV) * hd][d]: rows Q | K | V */
    cpu_weight o;         /* [d][H * hd] */
    cpu_weight post_norm; /* [d]  post_attention_layernorm */
    cpu_weight gate_up;   /* [2*ff][d]: rows gate | up */
    cpu_weight down;      /* [d][ff] */
} phi3_layer;

typedef struct phi3_model {
    const phi3v_config *cfg;                   /* owned by the caller, outlives the model */
    cpu_weight embed;                          /* [vocab][d] */
    cpu_weight norm;                           /* [d] */
    cpu_weight lm_head;                        /* [vocab][d] */
    phi3_layer *layers;                        /* [n_layers] */
    float inv_freq_short[PHI3V_MAX_ROPE_HALF]; /* [hd/2] (plain RoPE: factors 1) */
    float inv_freq_long[PHI3V_MAX_ROPE_HALF];
    double mscale; /* applied to cos and sin (1 for plain RoPE) */
} phi3_model;

vlm_status phi3_load(phi3_model *m, const phi3v_config *cfg, const vlm_weight_source *src,
                     vlm_err *err);
void phi3_free(phi3_model *m);

/* Embedding rows for token ids (ids must be in [0, vocab)). */
void phi3_embed(const phi3_model *m, const int32_t *ids, int64_t n, float *out);

size_t phi3_workspace_floats(const phi3_model *m, int64_t max_tokens, int64_t max_ctx,
                             int n_threads);
/* The same from the config alone (for the memory planner). */
size_t phi3_workspace_floats_cfg(const phi3v_config *c, int64_t max_tokens, int64_t max_ctx,
                                 int n_threads);

/* x: [n][d] input embeddings (overwritten). Writes K/V for positions
 * pos0..pos0+n-1 into kv and attends causally over 0..pos0+i.
 * logits_mode/logits as in vlm_forward_args. */
void phi3_forward(const phi3_model *m, cpu_pool *pool, vlm_kv *kv, float *x, int64_t n,
                  int64_t pos0, bool rope_long, int logits_mode, float *logits, float *ws);
/* The same from layer l0 on (layers before it ran elsewhere: the GPU, with x
 * their output); the host KV rows of layers < l0 are neither read nor
 * written. */
void phi3_forward_layers(const phi3_model *m, cpu_pool *pool, vlm_kv *kv, int l0, float *x,
                         int64_t n, int64_t pos0, bool rope_long, int logits_mode, float *logits,
                         float *ws);

#endif
