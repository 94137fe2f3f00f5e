/* models/model - the interface every model family implements, and the KV
 * cache layout the decoders write.
 *
 * A family is one vlm_arch (a table of functions) keyed by the config.json
 * `architectures` name; the registry (models/registry.h) finds it. The
 * runtime (sessions, generation) only talks to this interface, so a second
 * family is a new file under src/models/, not a change to the runtime. */
#ifndef VLM_MODELS_MODEL_H
#define VLM_MODELS_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/cpu/parallel.h"
#include "backend/gpu.h"
#include "base/status.h"
#include "io/config.h"
#include "models/weights.h"
#include "tensor/dtype.h"

/* The KV cache as the decoder sees it: for each layer, max_ctx rows of
 * kv_dim keys and values, element [l * max_ctx * kv_dim + pos * kv_dim + i].
 * F32, or BF16 (half the bytes; the bf16 reference keeps K/V in bf16 too).
 * Owned by runtime/kv_cache. */
typedef struct vlm_kv {
    int n_layers;
    int64_t max_ctx; /* rows per layer */
    int64_t kv_dim;  /* n_kv_heads * head_dim */
    vlm_dtype dtype; /* F32 or BF16 */
    void *k;         /* host: [n_layers - gpu_layers][max_ctx][kv_dim], layer l at l - gpu_layers */
    void *v;         /* the same for V; NULL when every layer is on the GPU */
    int gpu_layers;  /* layers [0, gpu_layers) keep their rows on the GPU */
    void *dev_k;     /* device: [gpu_layers][max_ctx][kv_dim] (vlm_dev_alloc), or NULL */
    void *dev_v;
} vlm_kv;

/* What the runtime needs to know about a loaded model. */
typedef struct vlm_model_info {
    const char *arch; /* "Phi3VForCausalLM" */
    int n_layers;
    int gpu_layers;        /* decoder layers [0, gpu_layers) run on the GPU, their KV there */
    int64_t kv_dim;        /* floats per token per layer, K and V each */
    int hidden;            /* width of an embedding row (image feature rows too) */
    int vocab;             /* logits per position */
    int64_t max_positions; /* max_position_embeddings */
    /* LongRoPE: sequences longer than this use the long factors (0: no
     * switch). See docs/model.md for the convention. */
    int64_t rope_switch_len;
    int bos_id, eos_id;
    bool has_vision;
    int image_size; /* crop side in pixels */
} vlm_model_info;

/* One preprocessed image: crops [n_crops][3][S][S], the global view first,
 * then the hc*wc tiles row-major (more entries, such as zero padding crops,
 * may follow and are ignored). */
typedef struct vlm_image_input {
    const float *pixels;
    int n_crops;
    int hc, wc; /* tile grid (rows, columns) */
} vlm_image_input;

enum vlm_logits_mode {
    VLM_LOGITS_NONE = 0, /* fill the cache only */
    VLM_LOGITS_LAST,     /* logits[vocab] of the last position */
    VLM_LOGITS_ALL,      /* logits[n][vocab] of every position */
    /* *greedy_id = cpu_argmax of the last position's logits; logits[vocab]
     * is scratch the model may leave unfilled (with the head on the GPU the
     * argmax runs there and only the id comes back) */
    VLM_LOGITS_GREEDY,
};

/* One forward call over n new tokens at positions pos0..pos0+n-1. */
typedef struct vlm_forward_args {
    const int32_t *ids; /* [n]; ids < 0 are image placeholders */
    int64_t n;
    const float *img_rows; /* [count of ids < 0][hidden], in placeholder order */
    int64_t pos0;
    bool rope_long; /* use the long RoPE factors */
    int logits_mode;
    float *logits;
    int32_t *greedy_id; /* VLM_LOGITS_GREEDY's answer */
} vlm_forward_args;

typedef struct vlm_arch {
    const char *name; /* config.json architectures[0] */
    /* Build from config.json (parsed by io/config; `what` names it in
     * messages) and the weight source. pool may be NULL (one thread).
     * place: which parts run on the GPU (NULL: all on the CPU); a family
     * that cannot honour it fails with VLM_ERR_UNSUPPORTED. */
    vlm_status (*create)(const vlm_config *config, const char *what, const vlm_weight_source *src,
                         cpu_pool *pool, const vlm_placement *place, void **out, vlm_err *err);
    void (*destroy)(void *model);
    void (*info)(const void *model, vlm_model_info *out);
    /* Image tokens (feature rows) for an hc x wc tile grid. */
    int (*image_tokens)(const void *model, int hc, int wc);
    /* Features for one image, out[image_tokens][hidden]; crops through the
     * vision tower `group` at a time (any group gives the same values). */
    vlm_status (*encode_image)(void *model, const vlm_image_input *img, int group, float *out,
                               vlm_err *err);
    /* Workspace (floats) for forward calls of up to max_tokens tokens with a
     * cache of max_ctx rows. */
    size_t (*workspace_floats)(const void *model, int64_t max_tokens, int64_t max_ctx);
    /* Run n <= max_tokens tokens through the decoder, writing their K/V at
     * pos0.. and reading the cache rows before pos0. */
    vlm_status (*forward)(void *model, vlm_kv *kv, const vlm_forward_args *a, float *ws,
                          vlm_err *err);
} vlm_arch;

#endif
