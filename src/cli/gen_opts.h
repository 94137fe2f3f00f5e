/* cli/gen_opts - the options generate, chat and eval-logits share: the model,
 * images, prompt, sampling and load settings. */
#ifndef VLM_CLI_GEN_OPTS_H
#define VLM_CLI_GEN_OPTS_H

#include <stdbool.h>
#include <stdio.h>

#include "vlm/vlm.h"

#define GEN_MAX_IMAGES 64
#define GEN_MAX_STOPS  16

typedef struct gen_opts {
    const char *model;
    const char *images[GEN_MAX_IMAGES];
    int n_images;
    const char *prompt;     /* -p: one user turn */
    const char *raw_prompt; /* --raw-prompt: a whole chat-format conversation */
    const char *system;
    const char *out; /* --out PREFIX (eval-logits) */
    const char *stops[GEN_MAX_STOPS];
    int n_stops;
    bool json;
    bool ignore_eos;
    vlm_load_options lo;
    vlm_gen_params gp;
} gen_opts;

/* Parse argv[1..]; prints the error and returns false on a bad option. */
bool gen_opts_parse(const char *cmd, int argc, char **argv, gen_opts *o);

/* Load the model and the images (vlm_image_free each, vlm_model_free).
 * One warning line on stderr when the model was loaded on a degraded rung
 * or after an out-of-memory fallback. */
bool gen_load(const char *cmd, const gen_opts *o, vlm_model **m, vlm_image **imgs);

/* The model's memory plan as a JSON object: precision, rung, gave_up,
 * degraded, estimated_bytes, budget, budget_source, weight_bytes, fallbacks,
 * fallback_note; where it runs: device ("cpu", "cuda", "cuda+cpu"),
 * gpu_layers of n_layers, head_device, vision_device, gpu_estimated_bytes,
 * gpu_budget. */
void gen_plan_json(FILE *f, const vlm_model *m);

/* One warning line when a turn ran out of memory and finished on a lower
 * rung (vlm_gen_stats.fallbacks). */
void gen_turn_warning(const char *cmd, const vlm_gen_stats *st);

/* Write a JSON string (with quotes) of s[0..n) to f. */
void gen_json_string(FILE *f, const char *s, size_t n);

#endif
