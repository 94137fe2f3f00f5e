/* runtime/planner - will the model fit, and at what cost: a memory plan made
 * before anything is loaded, from the config and the checkpoint headers.
 *
 * Three parts:
 *   estimator  the bytes of every component at a given precision, context,
 *              crop count and crop group: weights (per tensor, from the
 *              tensor list of models/phi3v_tensors and the quantization
 *              policy below), KV cache (runtime/kv_cache), the decoder
 *              workspace per prefill chunk, logits, the session's token ids
 *              and kept image rows (runtime/session), the image buffers and
 *              the vision tower's activations (models/phi3v), load-time
 *              conversion scratch, and a measured fixed overhead. Sizes the
 *              runtime computes with a function are computed with the same
 *              function here, so plan and code agree.
 *   budget     host bytes: min(MemAvailable, cgroup limit - usage) (the
 *              monitor's headroom) minus a margin of 10%, at least 512 MiB;
 *              under a tighter address-space limit, what is left of it
 *              minus 5%, at least 128 MiB; or the caller's figure. Device
 *              bytes: the GPU's free memory minus 5%, at least 256 MiB; or
 *              the caller's figure.
 *   ladder     rungs best first; the first that fits is chosen and every
 *              better one is kept with the reason it was turned down. With
 *              allow_degrade: fewer crops, a smaller context, and last
 *              q4_0_all (every matrix q4_0, KV cache bf16, context >= 512).
 *
 * The planner sits above models/ and runtime/ (it calls their size
 * functions) although it lives in mem/ beside the monitor. */
#ifndef VLM_MEM_PLANNER_H
#define VLM_MEM_PLANNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "backend/gpu.h"
#include "base/status.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/phi3v_config.h"
#include "tensor/dtype.h"

/* --- precisions and the quantization policy ------------------------------- */

typedef enum vlm_precision {
    VLM_PREC_NATIVE = 0, /* every tensor as stored (memory-mapped) */
    VLM_PREC_F32,
    VLM_PREC_BF16,
    VLM_PREC_F16,
    VLM_PREC_Q8_0, /* 34 B / 32 weights */
    VLM_PREC_Q4_0, /* 18 B / 32 */
    VLM_PREC_Q4_K, /* 144 B / 256 */
    /* The last rung of --allow-degrade ("q4 floor lifted"): every weight
     * matrix at q4_0, lm_head, the vision tower and the projector included,
     * and the KV cache in bf16 (vlm_plan_kv_dtype). Not on the plain ladder. */
    VLM_PREC_Q4_0_ALL,
    VLM_PREC_COUNT
} vlm_precision;

/* "native", "f32", "bf16", "f16", "q8_0", "q4_0", "q4_K", "q4_0_all". */
const char *vlm_precision_name(vlm_precision p);
/* -1 if unknown. */
int vlm_precision_parse(const char *name);

/* The quantization policy: the dtype tensor `name` of shape[rank], stored as
 * `stored`, is held in at precision p. The loader converts with it; the
 * estimator counts with it. At a plain precision (f32/bf16/f16) every tensor
 * takes that dtype; at native, the stored one. At a block precision:
 *   - only weight matrices (rank 2, "*.weight", not position_embedding) are
 *     quantized: norms, biases, class_embedding, position_embedding, the
 *     sub_GN/glb_GN separators and the rank-4 patch_embedding convolution
 *     stay as stored (they are <0.1% of the bytes and are read elementwise);
 *   - the token embedding is quantized like the decoder (one row is
 *     dequantized per token);
 *   - lm_head, the vision tower and the projector go no lower than q8_0: the
 *     head makes the logits directly, the tower's errors reach every image
 *     token (llama.cpp likewise keeps the output at q6_K in its q4 mixes and
 *     the CLIP projector file at f16); q8_0 is our best block type. Only
 *     q4_0_all (the last degraded rung) lifts that floor: every matrix q4_0;
 *   - a row (the last dimension) that is not a whole number of blocks: q4_K
 *     falls back to q4_0 (the same 4.5 bits per weight) when rows are whole
 *     32-blocks, anything else stays as stored. */
vlm_dtype vlm_plan_tensor_dtype(vlm_precision p, const char *name, int rank, const int64_t *shape,
                                vlm_dtype stored);

/* The KV cache's dtype at precision p for a requested one: bf16 at
 * q4_0_all (half the bytes of f32), the request's otherwise. */
vlm_dtype vlm_plan_kv_dtype(vlm_precision p, vlm_dtype requested);

/* Bytes of nelem elements in dtype t (block types: whole blocks). */
uint64_t vlm_plan_dtype_bytes(vlm_dtype t, uint64_t nelem);

/* Converting a tensor at load reads its stored rows in blocks of at most
 * this many bytes (whole rows, at least one). */
#define PLAN_READ_BLOCK ((uint64_t)4 << 20)
/* The read block for a tensor of `nbytes` stored bytes in rows of
 * `row_bytes`: min(nbytes, the whole rows PLAN_READ_BLOCK holds, >= 1 row). */
uint64_t vlm_plan_read_block_bytes(uint64_t row_bytes, uint64_t nbytes);

/* --- the model as the planner sees it ------------------------------------- */

typedef struct plan_tensor {
    char name[128];
    int rank;
    int64_t shape[4];
    uint64_t nelem;
    vlm_dtype stored;
    bool used; /* read by the model (CLIP layers past layer_idx are not) */
} plan_tensor;

/* Fixed overhead when it cannot be measured (no tokenizer.json): the
 * accounted bytes the Phi-3 tokenizer holds after loading (3,061,274) and at
 * the peak of loading it (13,303,576: the JSON tree in 1 MiB parse-scope
 * chunks, base/json.h, while the tables are built), measured on
 * tests/data/tiny/f32 (the same tokenizer.json as the real model), rounded up
 * to 64 KiB. */
#define PLAN_DEFAULT_TOKENIZER_BYTES ((uint64_t)3008 << 10)
#define PLAN_DEFAULT_TOKENIZER_PEAK  ((uint64_t)12992 << 10)

typedef struct plan_model {
    char *path; /* resolved folder or file (accounted) */
    vlm_config cfg;
    phi3v_config arch;
    int default_num_crops; /* preprocessor_config.json num_crops (4 if absent) */
    plan_tensor *tensors;  /* [n_tensors], the list phi3v_tensor_specs gives */
    size_t n_tensors;
    bool from_headers; /* stored dtypes read from the safetensors headers */
    uint64_t stored_bytes;
    /* Fixed overhead: tokenizer tables (measured by loading tokenizer.json
     * when present) and the safetensors index (measured while opening). */
    uint64_t tokenizer_bytes; /* held after loading */
    uint64_t tokenizer_peak;  /* above the bytes before loading, at the peak */
    bool tokenizer_measured;
    uint64_t index_bytes;
} plan_model;

/* From the typed config.json; tensors at dtype
 * `stored` (the checkpoint's torch_dtype) when set is NULL, else each with
 * its dtype from the headers (every tensor the config implies must be there
 * with its shape). */
vlm_status plan_model_init(plan_model *pm, const vlm_config *cfg, const vlm_tensor_set *set,
                           vlm_dtype stored, vlm_err *err);
/* A model folder (or a file / index inside one): configs, the headers of its
 * safetensors (no tensor data is touched), the tokenizer measured. */
vlm_status plan_model_open(plan_model *pm, const char *path, vlm_err *err);
void plan_model_free(plan_model *pm);

/* Weight bytes at precision p: used tensors only (what is loaded), and all
 * stored tensors. */
void plan_weight_bytes(const plan_model *pm, vlm_precision p, uint64_t *loaded, uint64_t *all);

/* --- the estimate ----------------------------------------------------------- */

typedef enum plan_comp {
    PLAN_WEIGHTS = 0,      /* at the rung's precision, used tensors */
    PLAN_KV_CACHE,         /* 2 x layers x ctx x kv_heads x head_dim x 4 (f32) or 2 (bf16) */
    PLAN_PREFILL,          /* decoder workspace for one chunk */
    PLAN_LOGITS,           /* vocab x f32 per position kept */
    PLAN_SESSION,          /* token ids [ctx] + image rows kept for a LongRoPE rebuild */
    PLAN_IMAGE_INPUT,      /* decoded RGB8 + pixel values of every crop */
    PLAN_IMAGE_PREPROCESS, /* resize passes + HD image (uint8), transient */
    PLAN_VISION,           /* one crop group: CLIP features + max(tower, glue) workspace */
    PLAN_IMAGE_FEATURES,   /* projected rows handed to prefill */
    PLAN_LOAD_SCRATCH,     /* converting at load: one source tensor + one f32 row; on a
                              GPU rung also the largest tensor on its way to the device */
    PLAN_OVERHEAD,         /* tokenizer, safetensors index, model structs */
    PLAN_PINNED_STAGING,   /* GPU rungs: pinned host buffer for transfers (0 on the CPU) */
    PLAN_COMP_COUNT
} plan_comp;

const char *plan_comp_name(plan_comp c);

/* Device-side components of a GPU rung (bytes). Everything is counted as
 * resident at once: the weights and cache for the whole run, the
 * activation buffers allocated once at their largest. */
typedef enum plan_gpu_comp {
    PLAN_GPU_WEIGHTS = 0, /* the GPU parts at the rung's precision */
    PLAN_GPU_KV_CACHE,    /* the GPU layers' share of the cache */
    PLAN_GPU_PREFILL,     /* decoder workspace for one chunk (one stream: threads = 1) */
    PLAN_GPU_VISION,      /* one crop group of the tower + glue, when the tower is there */
    PLAN_GPU_LOGITS,      /* vocab x f32 per position kept, when the head is there */
    PLAN_GPU_CUBLAS,      /* per GPU context (decoder, tower): cuBLAS workspace + its own */
    PLAN_GPU_CONTEXT,     /* the CUDA context: kernels, module images, driver state */
    PLAN_GPU_COMP_COUNT
} plan_gpu_comp;

const char *plan_gpu_comp_name(plan_gpu_comp c);

/* The device memory a process takes beyond what it allocates itself: the
 * CUDA context, our kernels' modules (lazy loading) and the cuBLAS handles'
 * internals. Measured on an H100 80GB (CUDA 13.0, driver 580): a bare
 * context holds 527 MiB (bench/gpu_context.sh); `vlmtest generate --device
 * cuda` on the tiny fixture had 741 MiB in use with 77 MiB accounted, so
 * 664 MiB. */
#define PLAN_GPU_CONTEXT_BYTES ((uint64_t)664 << 20)
/* cuBLAS / cuBLASLt workspace: 32 MiB, what NVIDIA recommends for Hopper
 * (cublasSetWorkspace; 4 MiB is enough before sm_90), and in the same
 * allocation the decode attention's 4096 arrival counters (backend/cuda/ctx.h
 * VLM_CUDA_ATT_COUNTERS, 4 bytes each). */
#define PLAN_GPU_CUBLAS_BYTES (((uint64_t)32 << 20) + 4096 * 4)

typedef enum plan_device { PLAN_CPU = 0, PLAN_GPU } plan_device;

/* What a rung asks for. */
typedef struct plan_setting {
    vlm_precision precision;
    int64_t context; /* KV cache rows */
    int num_crops;   /* tiles at most per image (HD transform N) */
    int crop_group;  /* crops through the tower at once (1..1+num_crops) */
    /* Placement: decoder layers [0, gpu_layers) on the GPU with their KV
     * cache; the embedding, final norm and lm_head there too when every
     * layer is; the vision tower + projector on the GPU or the CPU. */
    plan_device device;
    int gpu_layers; /* decoder layers on the GPU (first k) */
    bool vision_on_gpu;
} plan_setting;

/* The placement the model is created with for setting s of a model with
 * n_layers decoder layers (all zero for a CPU setting). */
void plan_setting_placement(const plan_setting *s, int n_layers, vlm_placement *out);

/* Which rungs the ladder may use: "auto" (GPU rungs first, then the CPU),
 * "cpu" (CPU rungs only), "cuda" (GPU rungs only). */
typedef enum plan_device_choice {
    PLAN_DEVICE_AUTO = 0,
    PLAN_DEVICE_CPU,
    PLAN_DEVICE_CUDA
} plan_device_choice;

/* "auto", "cpu", "cuda" -> the choice; -1 if unknown (NULL or "": auto). */
int plan_device_parse(const char *name);
const char *plan_device_name(plan_device_choice d);

/* What a request needs apart from the rung's choices. */
typedef struct plan_request {
    int64_t context;         /* 0: as a session picks it (4096, capped by the model) */
    int num_crops;           /* 0: preprocessor_config.json's value */
    int n_images;            /* images in one turn; -1: 1 when the model has vision */
    int image_width;         /* input image assumed for the decode and resize */
    int image_height;        /* buffers; 0: 4032 x 3024 (a 12 MP photo) */
    int64_t chunk;           /* prefill chunk; 0: the session's default (128) */
    vlm_dtype kv_dtype;      /* F32 (default) or BF16 */
    int logit_positions;     /* positions of logits kept; 0: 1 */
    int n_threads;           /* 0: vlm_threadpool_default_size() */
    uint64_t mem_budget;     /* host bytes; 0: from the machine */
    uint64_t gpu_mem_budget; /* device bytes; 0: from gpu_free_bytes (none without a GPU) */
    bool gpu_available;      /* a usable GPU (plan_request_detect_gpu) */
    uint64_t gpu_free_bytes; /* its free memory when asked */
    plan_device_choice device;
    int gpu_from;          /* skip GPU rungs of step < gpu_from (a load's fallback after a device
                              out-of-memory); 0: all */
    bool allow_degrade;    /* fewer crops, then a smaller context */
    int64_t min_context;   /* floor when degrading the context; 0: 1024 (512 on the
                              last rung, q4_0_all) */
    int precision;         /* -1: walk the ladder; a vlm_precision: only that one */
    uint64_t mapped_bytes; /* checkpoint bytes the caller has mapped already (they
                              count against an address-space limit) */
} plan_request;

void plan_request_init(plan_request *r);

/* Fill gpu_available and gpu_free_bytes from vlm_gpu_query (no GPU in a
 * build without CUDA). The message of the query is kept in why (may be NULL)
 * when there is no GPU. */
void plan_request_detect_gpu(plan_request *r, char *why, size_t why_cap);

typedef struct plan_estimate {
    plan_setting s;
    uint64_t bytes[PLAN_COMP_COUNT];
    int n_images;                                   /* images planned for */
    int image_tokens;                               /* worst case per image at num_crops */
    int crops;                                      /* 1 + tiles, worst case */
    uint64_t vision_group1;                         /* PLAN_VISION at crop group 1 */
    uint64_t vision_all;                            /* PLAN_VISION with every crop at once */
    uint64_t image_decoded, image_hd, image_pixels; /* one image's RGB8, HD and pixel bytes */
    uint64_t load_peak;                             /* weights + load scratch + overhead */
    uint64_t run_peak; /* everything resident while an image is encoded */
    uint64_t peak;     /* max of the two: what must fit the budget */
    /* GPU settings: bytes[] above are the host's share (what stays on the
     * CPU, the pinned staging, the transient uploads); gpu[] the device's. */
    uint64_t gpu[PLAN_GPU_COMP_COUNT];
    bool head_on_gpu; /* embedding, final norm, lm_head: with every layer */
    int n_layers;
    uint64_t host_bytes; /* = peak: must fit the host budget */
    uint64_t gpu_bytes;  /* sum of gpu[]: must fit the GPU budget */
} plan_estimate;

/* Estimate one setting (request r gives what the setting does not). */
vlm_status plan_estimate_setting(const plan_model *pm, const plan_request *r, const plan_setting *s,
                                 plan_estimate *out, vlm_err *err);

/* --- the budget ------------------------------------------------------------- */

#define PLAN_MARGIN_PERCENT 10
#define PLAN_MARGIN_MIN     ((uint64_t)512 << 20)
/* Under an address-space limit (RLIMIT_AS) the cap is exact and nothing
 * else draws on it, so the margin only covers what the estimate does not
 * count (thread stacks, the allocator's own mappings, code mapped later)
 * and the estimate's error: 5% of what is left, at least 128 MiB
 * (docs/planner.md, "Budget and alarm"). */
#define PLAN_AS_MARGIN_PERCENT 5
#define PLAN_AS_MARGIN_MIN     ((uint64_t)128 << 20)
/* The context floor of the last degraded rung (q4_0_all). */
#define PLAN_LAST_RUNG_MIN_CONTEXT 512

/* The address space left under RLIMIT_AS (limit - /proc/self/statm size);
 * false when there is no limit. The machine budget takes the smaller of
 * this (plus plan_request.mapped_bytes) and the monitor's headroom. */
bool plan_as_headroom(uint64_t *left);

/* headroom minus max(10%, 512 MiB) (0 when that is negative). */
uint64_t plan_budget_from_headroom(uint64_t headroom);
/* Address space left under RLIMIT_AS minus max(5%, 128 MiB) (0 when
 * negative). */
uint64_t plan_budget_from_as_headroom(uint64_t as_left);

/* The GPU budget from the device's free memory: free minus max(5%, 256 MiB)
 * (0 when that is negative). The margin is smaller than the host's: nothing
 * else of ours allocates on the device behind the plan's back, and what the
 * driver takes is PLAN_GPU_CONTEXT_BYTES inside the estimate; it covers
 * allocator rounding (2 MiB pages) and other processes' growth. */
#define PLAN_GPU_MARGIN_PERCENT 5
#define PLAN_GPU_MARGIN_MIN     ((uint64_t)256 << 20)
uint64_t plan_gpu_budget_from_free(uint64_t free_bytes);

/* --- the ladder ------------------------------------------------------------- */

/* The CPU precisions of the ladder, best (most bytes) first: native, bf16
 * (for an f32 checkpoint), then q8_0, q4_K, q4_0 by weight bytes. Returns
 * the count (at most VLM_PREC_COUNT). The run-time fallback steps down it. */
int vlm_plan_ladder(const plan_model *pm, vlm_precision *out);

#define PLAN_MAX_RUNGS 64

/* GPU rungs in ladder order get a step: the all-on-GPU rungs at each
 * GPU precision, then the partial rungs at each. A load that runs out of
 * device memory on step s plans again from step s + 1. */
typedef struct plan_rung {
    char label[96]; /* "cpu q8_0", "cpu q4_K, num_crops 4", "gpu bf16", "gpu native, 20/32
                       layers, vision cpu" */
    plan_estimate e;
    bool available;    /* false: a GPU rung without a GPU (estimated all the same) */
    bool fits_budgets; /* the estimate fits both budgets (availability aside) */
    int gpu_step;      /* -1: a CPU rung */
    bool fits;
    bool degraded;    /* gave up crops or context */
    char reason[256]; /* why it was turned down, or what it gave up */
} plan_rung;

typedef struct vlm_plan {
    uint64_t budget;         /* host bytes the plan must fit */
    bool budget_given;       /* from the request, not the machine */
    uint64_t headroom;       /* what the monitor saw, or the address space left (0: not read) */
    bool as_limited;         /* the address-space limit was the tighter cap (its margin applied) */
    uint64_t gpu_budget;     /* device bytes the GPU rungs must fit (0: none) */
    bool gpu_budget_given;   /* from the request, not the device */
    bool gpu_available;      /* as the request said */
    uint64_t gpu_free_bytes; /* the device's free memory when planned */
    plan_device_choice device;
    uint64_t alarm_threshold;        /* min(usage threshold, budget): the sampler's alarm */
    plan_rung rungs[PLAN_MAX_RUNGS]; /* in ladder order, up to and including the choice */
    int n_rungs;
    int chosen; /* index into rungs; -1 when none fits */
    int64_t requested_context;
    int requested_crops;
} vlm_plan;

/* Walk the ladder. VLM_OK with plan->chosen -1 when nothing fits (not an
 * error: the plan says why). */
vlm_status vlm_plan_make(const plan_model *pm, const plan_request *r, vlm_plan *plan, vlm_err *err);

/* The plan as JSON (NULL on allocation failure; free with cJSON_Delete). */
cJSON *vlm_plan_to_json(const plan_model *pm, const vlm_plan *plan);

#endif
