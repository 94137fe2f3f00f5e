/* io/config - the JSON files of a Hugging Face model folder, read into typed
 * structs: config.json, generation_config.json, preprocessor_config.json and
 * tokenizer_config.json.
 *
 * Fields are those ../shared/docs/phi3v-spec.md uses for Phi3VForCausalLM.
 * Numbers are parsed as double and narrowed where the model uses float (the
 * rope factors, the norm eps). Every range check names the file and the key.
 *
 * The published Phi-3(.5)-vision config carries no vision-tower sizes (the
 * modeling code fixes CLIP ViT-L/14-336). An optional "vision_config" object
 * (our extension, for small test models) overrides them; without it the
 * CLIP-L/14-336 values of spec §4 apply. */
#ifndef VLM_IO_CONFIG_H
#define VLM_IO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define VLM_CFG_STR 64

typedef struct vlm_rope_scaling {
    char type[VLM_CFG_STR]; /* "" (none), "su", "longrope", "yarn", "linear", "dynamic" */
    float *short_factor;    /* [n_short]; accounted, NULL if absent */
    float *long_factor;     /* [n_long] */
    int n_short, n_long;    /* head_dim / 2 each for su/longrope */
    double factor;          /* "factor" when present (linear/dynamic/yarn), else 0 */
} vlm_rope_scaling;

typedef struct vlm_vision_config {
    int hidden_size;              /* 1024 (CLIP-L) */
    int intermediate_size;        /* 4096 */
    int num_hidden_layers;        /* 24, all stored; features come from layer_idx */
    int num_attention_heads;      /* 16 */
    int image_size;               /* 336 px */
    int patch_size;               /* 14 px */
    int num_channels;             /* 3 */
    float layer_norm_eps;         /* 1e-5 */
    char hidden_act[VLM_CFG_STR]; /* "quick_gelu" */
    bool from_config;             /* true if config.json had "vision_config" */
} vlm_vision_config;

typedef struct vlm_config {
    char architecture[VLM_CFG_STR]; /* architectures[0]: "Phi3VForCausalLM" */
    char model_type[VLM_CFG_STR];   /* "phi3_v" */
    char torch_dtype[VLM_CFG_STR];  /* "bfloat16"; "" if absent */
    char hidden_act[VLM_CFG_STR];   /* "silu" */
    /* language model */
    int hidden_size;         /* 3072 */
    int intermediate_size;   /* 8192 */
    int num_hidden_layers;   /* 32 */
    int num_attention_heads; /* 32 */
    int num_key_value_heads; /* 32 (defaults to num_attention_heads) */
    int head_dim;            /* hidden_size / num_attention_heads = 96 */
    int vocab_size;          /* 32064 */
    float rms_norm_eps;      /* 1e-5 */
    double rope_theta;       /* 10000 */
    vlm_rope_scaling rope_scaling;
    int64_t max_position_embeddings;          /* 131072 */
    int64_t original_max_position_embeddings; /* 4096 (0 if absent) */
    int64_t sliding_window;                   /* 262144; 0 if absent or null */
    int bos_token_id;                         /* 1 */
    int eos_token_id;                         /* 2 */
    int pad_token_id;                         /* 32000 (the code default when absent) */
    bool tie_word_embeddings;                 /* false */
    /* embd_layer */
    bool has_embd_layer;
    char embedding_cls[VLM_CFG_STR];      /* "image" */
    char projection_cls[VLM_CFG_STR];     /* "mlp" */
    char hd_transform_order[VLM_CFG_STR]; /* "sub_glb" */
    bool use_hd_transform;                /* true */
    bool with_learnable_separator;        /* true */
    /* img_processor */
    char img_processor_name[VLM_CFG_STR];      /* "clip_vision_model" */
    char img_processor_model[VLM_CFG_STR * 2]; /* "openai/clip-vit-large-patch14-336" */
    int image_dim_out;                         /* 1024: width of one CLIP feature */
    int num_img_tokens;                        /* 144 per 336 crop after the 2x2 merge */
    int layer_idx;                             /* -2: hidden_states index taken from CLIP */
    char type_feature[VLM_CFG_STR];            /* "patch": CLS dropped */
    bool has_img_processor;                    /* config.json has "img_processor": a vision model */
    vlm_vision_config vision;
} vlm_config;

/* The CLIP ViT-L/14-336 tower of spec §4. */
void vlm_vision_config_clip_l336(vlm_vision_config *v);

/* Parse config.json text; `what` names it in messages. Free with
 * vlm_config_free (also safe after a failed parse). */
vlm_status vlm_config_parse(const char *text, size_t len, const char *what, vlm_config *out,
                            vlm_err *err);
vlm_status vlm_config_load(const char *path, vlm_config *out, vlm_err *err);
void vlm_config_free(vlm_config *c);

/* generation_config.json. eos_token_id may be an int or a list. */
#define VLM_MAX_STOP_IDS 16
typedef struct vlm_gen_config {
    bool present; /* false: the file was absent; stop ids are the fallback */
    int stop_ids[VLM_MAX_STOP_IDS];
    int n_stop_ids;
    int bos_token_id; /* -1 if absent */
    int pad_token_id; /* -1 if absent */
    bool do_sample;
    float temperature; /* 1 if absent */
    float top_p;       /* 1 if absent */
    int top_k;         /* 0 if absent */
    int max_length;    /* 0 if absent */
} vlm_gen_config;

/* The stop ids when no generation_config.json exists: {32007, 32000, 2}
 * (spec §2.6: <|end|>, <|endoftext|>, </s>). */
void vlm_gen_config_default(vlm_gen_config *g);
vlm_status vlm_gen_config_parse(const char *text, size_t len, const char *what, vlm_gen_config *out,
                                vlm_err *err);
/* A missing file gives the default and VLM_OK. */
vlm_status vlm_gen_config_load(const char *path, vlm_gen_config *out, vlm_err *err);

/* preprocessor_config.json. */
typedef struct vlm_preproc_config {
    bool present;
    int num_crops;       /* 4 for Phi-3.5 (the default), 16 for 128k */
    float image_mean[3]; /* OpenAI CLIP mean */
    float image_std[3];
    int num_img_tokens; /* 144 */
    char image_processor_type[VLM_CFG_STR];
} vlm_preproc_config;

void vlm_preproc_config_default(vlm_preproc_config *p);
vlm_status vlm_preproc_config_parse(const char *text, size_t len, const char *what,
                                    vlm_preproc_config *out, vlm_err *err);
/* A missing file gives the default and VLM_OK. */
vlm_status vlm_preproc_config_load(const char *path, vlm_preproc_config *out, vlm_err *err);

/* tokenizer_config.json. Token fields may be strings or {"content": ...}. */
typedef struct vlm_tokenizer_config {
    bool present;
    char *chat_template;                                 /* accounted; NULL if absent */
    bool add_bos_token;                                  /* true if absent (Llama default) */
    bool add_eos_token;                                  /* false if absent */
    char *bos_token, *eos_token, *pad_token, *unk_token; /* accounted; NULL if absent */
    int64_t model_max_length; /* 0 if absent or absurd (HF writes 1e30 for "none") */
    char tokenizer_class[VLM_CFG_STR];
} vlm_tokenizer_config;

vlm_status vlm_tokenizer_config_parse(const char *text, size_t len, const char *what,
                                      vlm_tokenizer_config *out, vlm_err *err);
/* A missing file gives an empty config (present false) and VLM_OK. */
vlm_status vlm_tokenizer_config_load(const char *path, vlm_tokenizer_config *out, vlm_err *err);
void vlm_tokenizer_config_free(vlm_tokenizer_config *t);

/* Everything of a model folder: config.json is required, the others not. */
typedef struct vlm_model_configs {
    vlm_config config;
    vlm_gen_config gen;
    vlm_preproc_config preproc;
    vlm_tokenizer_config tokenizer;
} vlm_model_configs;

vlm_status vlm_model_configs_load(const char *dir, vlm_model_configs *out, vlm_err *err);
void vlm_model_configs_free(vlm_model_configs *m);

#endif
