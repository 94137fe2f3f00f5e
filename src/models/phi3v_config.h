/* models/phi3v_config - the numbers that shape a Phi-3-vision model
 * (spec §0, §4, §6), with the vision tower's dimensions configurable so tiny
 * test models use the same code.
 *
 * phi3v_config_default() gives Phi-3.5-vision-instruct. config.json is
 * parsed once, by io/config; phi3v_config_from_config maps that onto this
 * struct. */
#ifndef VLM_MODELS_PHI3V_CONFIG_H
#define VLM_MODELS_PHI3V_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"
#include "io/config.h"
#include "models/clip.h"

#define PHI3V_MAX_ROPE_HALF 256 /* head_dim / 2 at most */

typedef enum phi3_rope_kind {
    PHI3_ROPE_PLAIN = 0, /* no rope_scaling */
    PHI3_ROPE_SU,        /* "su" / "longrope": short and long factors + mscale */
} phi3_rope_kind;

typedef struct phi3v_config {
    /* language model (§6) */
    int hidden;                           /* d_model 3072 */
    int intermediate;                     /* MLP 8192 */
    int n_layers;                         /* 32 */
    int n_heads;                          /* 32 */
    int n_kv_heads;                       /* 32 (plain MHA; fewer would be GQA) */
    int head_dim;                         /* hidden / n_heads = 96 */
    int vocab;                            /* 32064 embedding and lm_head rows */
    float rms_eps;                        /* 1e-5 */
    double rope_theta;                    /* 10000 */
    int max_position_embeddings;          /* 131072 */
    int original_max_position_embeddings; /* 4096: the LongRoPE switch point */
    phi3_rope_kind rope_kind;
    float short_factor[PHI3V_MAX_ROPE_HALF]; /* head_dim/2 values, float32 as torch has them */
    float long_factor[PHI3V_MAX_ROPE_HALF];
    bool tie_word_embeddings; /* false for Phi-3-vision */
    int bos_id, eos_id;

    /* vision tower and HD glue (§4, §5) */
    bool has_vision;
    clip_config vision;
    int image_dim_out; /* CLIP width as the glue sees it (1024) */
} phi3v_config;

/* Phi-3.5-vision-instruct (config.reconstructed.json). */
void phi3v_config_default(phi3v_config *c);

/* Fill c from config.json as io/config parsed it (the published keys plus
 * our optional `vision_config`; CLIP-L/14-336 without it), refusing what
 * this implementation does not compute (another rope type, activation,
 * feature type or HD order). `what` names the file in messages. Runs
 * phi3v_config_check. */
vlm_status phi3v_config_from_config(const vlm_config *v, const char *what, phi3v_config *c,
                                    vlm_err *err);

/* Internal consistency (divisibility, ranges); the message names the field. */
vlm_status phi3v_config_check(const phi3v_config *c, vlm_err *err);

/* Derived numbers. */
int phi3v_vision_grid(const phi3v_config *c);       /* image_size / patch_size: 24 */
int phi3v_vision_layers_run(const phi3v_config *c); /* encoder layers actually run: 23 */
int phi3v_tokens_per_crop(const phi3v_config *c);   /* (grid/2)^2 merged tokens: 144 */
/* Image tokens for an hc x wc crop grid: (hc*wc+1)*m*m + 1 + (hc+1)*m with
 * m = grid/2 (757 for 2x2 in the real model). */
int phi3v_image_tokens(const phi3v_config *c, int hc, int wc);
/* The LongRoPE attention scaling sqrt(1 + ln(max/orig)/ln(orig)), 1 when
 * max <= orig (double, as the reference computes it). */
double phi3v_rope_mscale(const phi3v_config *c);

#endif
