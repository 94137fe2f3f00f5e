/* vlm/vlm.h - the public API of libvlm: load a model, open a session, add
 * images and text, generate, unload.
 *
 * All functions that can fail return a vlm_status and fill the vlm_err the
 * caller passes (it may be NULL). Handles are opaque. Nothing here aborts. */
#ifndef VLM_VLM_H
#define VLM_VLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vlm_model vlm_model;
typedef struct vlm_session vlm_session;
typedef struct vlm_image vlm_image;

/* --- loading ---------------------------------------------------------------- */

typedef struct vlm_load_options {
    const char *device;      /* "cpu", "cuda", "auto" (default "auto": the plan decides: GPU
                                rungs first when a GPU is there); "cuda": GPU rungs only */
    const char *precision;   /* NULL: as stored; "f32", "bf16", "f16", "q8_0", "q4_0", "q4_K" */
    int num_crops;           /* 0: preprocessor_config's value */
    int max_context;         /* tokens of KV cache; 0: the default (4096, capped by the model) */
    uint64_t mem_budget;     /* host bytes the model may use; 0: derived from the machine */
    uint64_t gpu_mem_budget; /* device bytes; 0: the GPU's free memory less 5% (>= 256 MiB) */
    int n_threads;           /* 0: VLM_THREADS, else the CPUs this process may use */
    bool allow_degrade;      /* the planner may drop crops or context to fit */
    /* Watch the process's memory while the model is loaded (the monitor's
     * sampler, every 50 ms): when RSS passes the plan's alarm threshold
     * (VLM_MEM_THRESHOLD, 12 GiB by default, capped by the budget) it cleans
     * up (malloc_trim), then warns once per crossing. */
    bool watch_memory;
} vlm_load_options;

void vlm_load_options_init(vlm_load_options *o);

/* ref: a model folder (config.json + safetensors + tokenizer files), a .gguf
 * file, or "org/name[@revision]" resolved in the Hugging Face cache.
 *
 * Loading follows a memory plan (docs/planner.md): the planner runs on every
 * load against opts->mem_budget or, when 0, the machine's budget (capped by
 * RLIMIT_AS). precision NULL: the best ladder rung that fits (native when the
 * budget is large; q8_0, q4_K, q4_0 quantized at load below it); nothing
 * fits: VLM_ERR_NOMEM naming the need and the budget. precision given: that
 * precision, fitting or not. An allocation failure while loading frees what
 * that attempt held and retries one rung down (bounded by the ladder);
 * vlm_model_describe reports the rung and the fallbacks taken. */
vlm_status vlm_model_load(const char *ref, const vlm_load_options *opts, vlm_model **out,
                          vlm_err *err);
void vlm_model_free(vlm_model *m);

/* What a loaded model is: for reports and `vlmtest info`. */
typedef struct vlm_model_desc {
    char arch[64];   /* config.json architectures[0], "Phi3VForCausalLM" */
    char dtype[16];  /* stored weight dtype ("bf16", "f32", "f16"; "mixed") */
    char path[1024]; /* the folder the model was loaded from */
    int num_crops;   /* in effect (preprocessor_config or the override) */
    int crop_group;  /* crops through the vision tower at once (the plan's choice) */
    int64_t context; /* KV tokens a session holds */
    int64_t max_positions;
    int vocab, n_layers, hidden, n_threads;
    uint64_t params_vision, params_projector, params_lm, params_total;
    uint64_t weight_bytes; /* bytes of all stored tensors (memory-mapped) */
    /* The memory plan the load followed (docs/planner.md). */
    char precision[16];           /* weights as loaded: "native", "q8_0", "q4_K", ... */
    char rung[96];                /* the ladder rung used, "cpu q8_0" */
    char gave_up[256];            /* "" or what the rung gave up ("num_crops 16 -> 4") */
    char kv_dtype[8];             /* the KV cache's sessions: "f32", "bf16" (q4_0_all) */
    bool degraded;                /* a rung below native precision, or with fewer crops/context */
    uint64_t plan_bytes;          /* estimated peak host bytes at that rung */
    uint64_t plan_budget;         /* the budget it was planned against */
    uint64_t alarm_threshold;     /* RSS above which the watch cleans up and warns */
    unsigned mem_alarms;          /* times the watch fired (0 without watch_memory) */
    bool budget_given;            /* from vlm_load_options.mem_budget, not the machine */
    uint64_t loaded_weight_bytes; /* converted (accounted) + kept mapped, used tensors */
    int fallbacks;                /* rungs stepped down after an allocation failure */
    char fallback_note[192];      /* "" or what the fallbacks were */
    /* Where the parts run (the rung's placement). */
    char device[16];         /* "cpu", "cuda" (everything on the GPU), "cuda+cpu" (split) */
    int gpu_layers;          /* decoder layers [0, gpu_layers) on the GPU, of n_layers */
    bool head_on_gpu;        /* token embedding, final norm, lm_head */
    bool vision_on_gpu;      /* vision tower + projector */
    uint64_t gpu_plan_bytes; /* estimated device bytes at that rung (0 on the CPU) */
    uint64_t gpu_budget;     /* the GPU budget it was planned against (0: none) */
    char first_rung[96];     /* the rung the first attempt planned ("" if it never planned);
                                differs from rung after a fallback */
} vlm_model_desc;

void vlm_model_describe(const vlm_model *m, vlm_model_desc *out);

/* --- images ----------------------------------------------------------------- */

/* Decode a JPEG, PNG or WebP file to 8-bit RGB. max_pixels 0: the default
 * limit (89,478,485, as PIL) against decompression bombs. */
vlm_status vlm_image_load(const char *path, uint64_t max_pixels, vlm_image **out, vlm_err *err);
vlm_status vlm_image_from_rgb(const uint8_t *rgb, int width, int height, vlm_image **out,
                              vlm_err *err);
int vlm_image_width(const vlm_image *img);
int vlm_image_height(const vlm_image *img);
void vlm_image_free(vlm_image *img);

/* --- sessions and generation ------------------------------------------------- */

typedef struct vlm_gen_params {
    int max_tokens;           /* new tokens at most (default 256) */
    float temperature;        /* 0: greedy (default) */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    uint64_t seed;
    const char *const *stop; /* extra stop strings */
    int n_stop;
    /* Called with each piece of text as it becomes complete UTF-8; return
     * false to stop early. May be NULL. */
    bool (*on_text)(void *user, const char *piece, size_t len);
    void *user;
    /* Keep going past the generation_config stop ids (reference comparisons
     * that want a fixed number of tokens); stop strings still apply. */
    bool ignore_eos;
} vlm_gen_params;

void vlm_gen_params_init(vlm_gen_params *p);

typedef struct vlm_gen_stats {
    int tokens_in;  /* tokens prefilled for this turn (image tokens included) */
    int tokens_out; /* new tokens generated */
    int image_tokens;
    double image_ms; /* preprocessing + vision tower + projector */
    double prefill_ms;
    double first_token_ms; /* from the call until the first new token */
    double decode_ms;
    double decode_tps;    /* tokens/s over the decode steps after the first token */
    char stop_reason[16]; /* "eos", "stop_string", "max_tokens", "callback", "context" */
    /* Device memory per phase (bytes; all 0 without a GPU): the accounted
     * peak of the phase (device allocations of the engine, every category)
     * and what the device reports in use at the phase's end (total - free:
     * every process and the CUDA context included). */
    uint64_t gpu_peak_image, gpu_peak_prefill, gpu_peak_decode;
    uint64_t gpu_used_image, gpu_used_prefill, gpu_used_decode;
    /* Out of memory inside the turn, and the model reloaded lower to finish
     * it (see vlm_session_chat): reloads, the precision before and after,
     * and where the first failure happened ("image", "prompt", "prefill",
     * "decode"). 0 / "" when none. */
    int fallbacks;
    char fallback_from[16], fallback_to[16], fallback_phase[16];
} vlm_gen_stats;

vlm_status vlm_session_new(vlm_model *m, vlm_session **out, vlm_err *err);
void vlm_session_free(vlm_session *s);
/* Forget the conversation (and its KV cache). */
void vlm_session_reset(vlm_session *s);
/* Set the system message; only before the first turn. */
vlm_status vlm_session_set_system(vlm_session *s, const char *text, vlm_err *err);

/* One user turn: the text, with images attached to this turn (rendered as
 * <|image_N|> tags in front of the text, numbered across the conversation),
 * then the assistant's answer is generated and kept in the history. Only the
 * new tokens are prefilled. *answer is allocated by libvlm: free it with
 * vlm_string_free.
 *
 * Out of memory inside the turn (its images, prefill or decode): when the
 * model has a rung below its precision and s is its only session, the model
 * is reloaded one rung down under the same handle, the conversation so far
 * replayed (earlier images encoded again) and the turn retried; stats
 * record it (fallbacks, fallback_from/_to/_phase). Otherwise, or with no
 * rung left, VLM_ERR_NOMEM and the session stays usable. If the reload
 * itself fails the model is lost: only the _free functions remain. */
vlm_status vlm_session_chat(vlm_session *s, const char *text, vlm_image *const *images,
                            int n_images, const vlm_gen_params *p, char **answer,
                            vlm_gen_stats *stats, vlm_err *err);

void vlm_string_free(char *s);

#ifdef __cplusplus
}
#endif
#endif
