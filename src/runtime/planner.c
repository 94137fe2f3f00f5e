/* runtime/planner - the estimate, the budget and the ladder. See planner.h. */
#include "runtime/planner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/threadpool.h"
#include "io/image.h"
#include "mem/monitor.h"
#include "models/phi3v.h"
#include "models/phi3v_image.h"
#include "models/phi3v_tensors.h"
#include "models/registry.h"
#include "runtime/kv_cache.h"
#include "runtime/session.h"

static const char *const comp_names[PLAN_COMP_COUNT] = {
    "weights",     "kv_cache",         "prefill_activations", "logits",         "session",
    "image_input", "image_preprocess", "vision_activations",  "image_features", "load_scratch",
    "overhead",    "pinned_staging",
};

static const char *const gpu_comp_names[PLAN_GPU_COMP_COUNT] = {
    "weights", "kv_cache",         "prefill_activations", "vision_activations",
    "logits",  "cublas_workspace", "cuda_context",
};

const char *plan_gpu_comp_name(plan_gpu_comp c) {
    return (unsigned)c < PLAN_GPU_COMP_COUNT ? gpu_comp_names[c] : "?";
}

int plan_device_parse(const char *name) {
    if (!name || !name[0] || !strcmp(name, "auto")) return PLAN_DEVICE_AUTO;
    if (!strcmp(name, "cpu")) return PLAN_DEVICE_CPU;
    if (!strcmp(name, "cuda")) return PLAN_DEVICE_CUDA;
    return -1;
}

const char *plan_device_name(plan_device_choice d) {
    return d == PLAN_DEVICE_CPU ? "cpu" : d == PLAN_DEVICE_CUDA ? "cuda" : "auto";
}

void plan_setting_placement(const plan_setting *s, int n_layers, vlm_placement *out) {
    memset(out, 0, sizeof *out);
    if (s->device != PLAN_GPU) return;
    int k = s->gpu_layers < 0 ? 0 : s->gpu_layers > n_layers ? n_layers : s->gpu_layers;
    out->gpu_layers = k;
    out->head_on_gpu = n_layers > 0 && k == n_layers;
    out->vision_on_gpu = s->vision_on_gpu;
}

void plan_request_detect_gpu(plan_request *r, char *why, size_t why_cap) {
    vlm_gpu_info gi;
    vlm_err e = {0};
    r->gpu_available = vlm_gpu_query(&gi, &e) == VLM_OK;
    r->gpu_free_bytes = r->gpu_available ? gi.free_bytes : 0;
    if (why && why_cap) snprintf(why, why_cap, "%s", r->gpu_available ? "" : e.msg);
}

const char *plan_comp_name(plan_comp c) {
    return (unsigned)c < PLAN_COMP_COUNT ? comp_names[c] : "?";
}

void plan_request_init(plan_request *r) {
    memset(r, 0, sizeof *r);
    r->n_images = -1;
    r->kv_dtype = VLM_DTYPE_F32;
    r->precision = -1;
}

static uint64_t max_u64(uint64_t a, uint64_t b) {
    return a > b ? a : b;
}

/* ---------------------------------------------------------------------------
 * the estimate */

/* The default input image when none is named: a 12 MP phone photo. */
#define PLAN_IMAGE_W 4032
#define PLAN_IMAGE_H 3024

/* Rows session_append keeps for a LongRoPE rebuild: capacity starts at 1024
 * and doubles until it holds them (runtime/session.c). */
static uint64_t kept_rows_cap(uint64_t rows) {
    if (rows == 0) return 0;
    uint64_t cap = 1024;
    while (cap < rows) cap *= 2;
    return cap;
}

/* Transient bytes of phi3v_hd_image for geometry g (both resize passes and
 * the HD image live together; the coefficient tables are a few KB). */
static uint64_t resize_bytes(const phi3v_geometry *g) {
    uint64_t lw = (uint64_t)(g->transposed ? g->height : g->width);
    uint64_t lh = (uint64_t)(g->transposed ? g->width : g->height);
    uint64_t b = 0;
    if ((uint64_t)g->new_w != lw) b += lh * (uint64_t)g->new_w * 3;
    if ((uint64_t)g->new_h != lh) b += (uint64_t)g->new_h * (uint64_t)g->new_w * 3;
    return b;
}

/* The GPU backend's contexts (backend/cuda: one per model part on the GPU)
 * each hold a cuBLAS workspace (PLAN_GPU_CUBLAS_BYTES) and a workspace of
 * their own: the decoder's 512 x max(ff, hidden) x 2 bytes + 1 MiB
 * (models/phi3_gpu.c), the tower's 1024 x its MLP width x 2 bytes
 * (models/clip_gpu.c). */
static uint64_t gpu_ctx_bytes(const phi3v_config *c, bool decoder, bool vision) {
    uint64_t b = 0;
    if (decoder) {
        uint64_t w = (uint64_t)(c->intermediate > c->hidden ? c->intermediate : c->hidden);
        b += PLAN_GPU_CUBLAS_BYTES + 512 * w * 2 + ((uint64_t)1 << 20);
    }
    if (vision) b += PLAN_GPU_CUBLAS_BYTES + 1024 * (uint64_t)c->vision.intermediate * 2;
    return b;
}

/* Where tensor `name` lives under placement (k layers, head, vision) on a
 * GPU setting: true for the device. */
static bool tensor_on_gpu(const char *name, int k, bool head, bool vision) {
    if (strncmp(name, "model.layers.", 13) == 0) return atoi(name + 13) < k;
    if (phi3v_part_of(name) != PHI3V_PART_LM) return vision; /* tower, projector, separators */
    return head;                                             /* embed_tokens, model.norm, lm_head */
}

/* The GPU vision tower (models/clip_gpu.c) holds its products' biases
 * (q/k/v/out_proj, fc1, fc2 of each layer) in the type of the product's
 * output (cuBLASLt's bias epilogue takes that type): BF16 biases stay as
 * they are (q|k|v and fc1 write bf16, out_proj and fc2 add into the bf16
 * residual), others become f32. With VLM_CUDA_RES16=0 or in f32 mode the
 * tower holds out_proj's and fc2's in f32 (2 x hidden x 2 B a layer more
 * than this counts: switches for measuring). */
static bool gpu_f32_bias(const char *name, vlm_dtype d) {
    if (phi3v_part_of(name) != PHI3V_PART_VISION || !strstr(name, "encoder.layers.")) return false;
    return (strstr(name, "_proj.bias") || strstr(name, ".fc1.bias") || strstr(name, ".fc2.bias")) &&
           d != VLM_DTYPE_BF16;
}

vlm_status plan_estimate_setting(const plan_model *pm, const plan_request *r, const plan_setting *s,
                                 plan_estimate *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    out->s = *s;
    const phi3v_config *c = &pm->arch;
    vlm_model_info info;
    phi3v_info_from_config(c, &info);
    int threads = r->n_threads > 0 ? r->n_threads : vlm_threadpool_default_size();
    int n_images = r->n_images < 0 ? (c->has_vision ? 1 : 0) : r->n_images;
    if (!c->has_vision) n_images = 0;
    uint64_t *b = out->bytes;

    /* Placement (GPU settings): the first k decoder layers, the head with
     * every layer, the vision tower on its own. */
    bool on_gpu = s->device == PLAN_GPU;
    int L = c->n_layers;
    int k = !on_gpu ? 0 : s->gpu_layers < 0 ? 0 : s->gpu_layers > L ? L : s->gpu_layers;
    bool head = on_gpu && k == L;
    bool vis = on_gpu && s->vision_on_gpu && c->has_vision;
    out->s.gpu_layers = k;
    out->s.vision_on_gpu = vis;
    out->head_on_gpu = head;
    out->n_layers = L;
    uint64_t *dev = out->gpu;

    /* Weights, and the scratch of converting them at load. A tensor bound
     * for the device passes through the host once: its mapped source pages
     * plus its converted (or pinned) copy, one tensor at a time. A tensor
     * converted on the host: one block of the source rows read with pread
     * (vlm_plan_read_block_bytes) plus one f32 row per thread. */
    uint64_t all, moved = 0; /* moved: the host's bytes of the tensors placed on the GPU */
    plan_weight_bytes(pm, s->precision, &b[PLAN_WEIGHTS], &all);
    for (size_t i = 0; i < pm->n_tensors; i++) {
        const plan_tensor *t = &pm->tensors[i];
        if (!t->used) continue;
        vlm_dtype d = vlm_plan_tensor_dtype(s->precision, t->name, t->rank, t->shape, t->stored);
        uint64_t src = vlm_plan_dtype_bytes(t->stored, t->nelem);
        uint64_t held = vlm_plan_dtype_bytes(d, t->nelem);
        if (on_gpu && tensor_on_gpu(t->name, k, head, vis)) {
            moved += held;
            dev[PLAN_GPU_WEIGHTS] += gpu_f32_bias(t->name, d) ? t->nelem * sizeof(float) : held;
            b[PLAN_LOAD_SCRATCH] = max_u64(b[PLAN_LOAD_SCRATCH], src + held);
            continue;
        }
        if (d == t->stored) continue;
        const uint64_t row = (uint64_t)t->shape[t->rank - 1];
        uint64_t sc = vlm_plan_read_block_bytes(vlm_plan_dtype_bytes(t->stored, row),
                                                vlm_plan_dtype_bytes(t->stored, t->nelem)) +
                      (uint64_t)threads * row * sizeof(float);
        b[PLAN_LOAD_SCRATCH] = max_u64(b[PLAN_LOAD_SCRATCH], sc);
    }
    b[PLAN_WEIGHTS] -= moved;

    /* The session: KV cache, decoder workspace for one chunk, logits, token
     * ids, kept image rows. */
    session_options so;
    session_options_init(&so);
    so.max_ctx = s->context;
    so.chunk = r->chunk;
    so.kv_dtype = vlm_plan_kv_dtype(s->precision, r->kv_dtype);
    int64_t ctx, chunk;
    session_sizes(&info, &so, &ctx, &chunk);
    if (info.max_positions > 0 && ctx > info.max_positions)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "plan: context %lld is beyond the model's %lld positions",
                           (long long)ctx, (long long)info.max_positions);
    uint64_t kv = kv_cache_bytes(&info, ctx, so.kv_dtype);
    if (kv == 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "plan: bad context %lld or KV dtype",
                           (long long)ctx);
    out->s.context = ctx;
    b[PLAN_KV_CACHE] = kv + sizeof(kv_cache);
    b[PLAN_PREFILL] = (uint64_t)phi3v_workspace_floats_cfg(c, chunk, ctx, threads) * sizeof(float);
    int positions = r->logit_positions > 0 ? r->logit_positions : 1;
    b[PLAN_LOGITS] = (uint64_t)info.vocab * sizeof(float) * (uint64_t)positions;
    b[PLAN_SESSION] = sizeof(session) + (uint64_t)ctx * sizeof(int32_t);

    /* Images: the worst grid num_crops allows (num_crops x 1 tiles: the
     * most crops and the most row separators) unless an image size is
     * given; decode and resize buffers for the given or the default photo. */
    uint64_t image_phase = 0;
    out->s.crop_group = 0;
    if (n_images > 0) {
        if (s->num_crops < 1 || s->num_crops > PHI3V_MAX_NUM_CROPS)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "plan: num_crops %d (1..%d)", s->num_crops,
                               PHI3V_MAX_NUM_CROPS);
        bool given = r->image_width > 0 && r->image_height > 0;
        phi3v_geometry g;
        vlm_status st =
            phi3v_image_geometry(given ? r->image_width : PLAN_IMAGE_W,
                                 given ? r->image_height : PLAN_IMAGE_H, s->num_crops, &g, err);
        if (st != VLM_OK) return st;
        int hc = given ? g.hc : s->num_crops, wc = given ? g.wc : 1;
        out->crops = 1 + hc * wc;
        out->image_tokens = phi3v_image_tokens(c, hc, wc);
        int group = s->crop_group < 1 ? 1 : s->crop_group > out->crops ? out->crops : s->crop_group;
        out->s.crop_group = group;
        out->n_images = n_images;
        uint64_t decoded = (uint64_t)g.width * (uint64_t)g.height * 3;
        uint64_t hd = (uint64_t)g.hd_h * (uint64_t)g.hd_w * 3;
        uint64_t pixels = (uint64_t)out->crops * PHI3V_CROP_FLOATS * sizeof(float);
        size_t feat, ws;
        phi3v_encode_floats(c, hc, wc, group, threads, &feat, &ws);
        b[PLAN_VISION] = (uint64_t)(feat + ws) * sizeof(float);
        phi3v_encode_floats(c, hc, wc, 1, threads, &feat, &ws);
        out->vision_group1 = (uint64_t)(feat + ws) * sizeof(float);
        phi3v_encode_floats(c, hc, wc, out->crops, threads, &feat, &ws);
        out->vision_all = (uint64_t)(feat + ws) * sizeof(float);
        uint64_t rows = (uint64_t)n_images * (uint64_t)out->image_tokens;
        b[PLAN_IMAGE_INPUT] = (uint64_t)n_images * (decoded + sizeof(vlm_image)) + pixels;
        b[PLAN_IMAGE_PREPROCESS] = resize_bytes(&g) + hd;
        b[PLAN_IMAGE_FEATURES] = rows * (uint64_t)c->hidden * sizeof(float);
        if (info.rope_switch_len > 0 && ctx > info.rope_switch_len)
            b[PLAN_SESSION] += kept_rows_cap(rows) * (uint64_t)c->hidden * sizeof(float);
        out->image_decoded = decoded;
        out->image_hd = hd;
        out->image_pixels = pixels;
    }

    /* The device's share (GPU settings): the GPU layers' KV cache, one
     * chunk's decoder workspace (one stream: no per-thread attention
     * scratch), the vision group's activations, the logits, cuBLAS and the
     * context. The host keeps the rest: the CPU layers' cache, its own
     * workspace while any layer runs there, the logits the sampler reads,
     * the image buffers (decoding and cropping stay on the CPU) and a
     * pinned staging buffer for the largest transfer (a chunk of hidden
     * rows, the logits, or one crop group's pixels). */
    if (on_gpu) {
        uint64_t kv_layer = kv / (uint64_t)L;
        dev[PLAN_GPU_KV_CACHE] = kv_layer * (uint64_t)k;
        b[PLAN_KV_CACHE] -= dev[PLAN_GPU_KV_CACHE];
        /* plus the decoder's RoPE tables on the device: cos and sin of
         * every position, head_dim floats a position */
        if (k > 0)
            dev[PLAN_GPU_PREFILL] = ((uint64_t)phi3v_workspace_floats_cfg(c, chunk, ctx, 1) +
                                     (uint64_t)ctx * (uint64_t)c->head_dim) *
                                    sizeof(float);
        if (k == L) b[PLAN_PREFILL] = 0;
        if (head) dev[PLAN_GPU_LOGITS] = b[PLAN_LOGITS];
        if (vis) {
            /* the GPU tower's own layout for one crop group, projector
             * rows included (clip_gpu_layout_cfg) */
            if (n_images > 0) {
                clip_gpu_layout lo;
                clip_gpu_layout_cfg(&c->vision, out->s.crop_group, c->hidden, &lo);
                dev[PLAN_GPU_VISION] = (uint64_t)lo.total * sizeof(float);
            }
            b[PLAN_VISION] = 0;
        }
        bool any = k > 0 || vis;
        if (any) {
            dev[PLAN_GPU_CUBLAS] = gpu_ctx_bytes(c, k > 0, vis);
            dev[PLAN_GPU_CONTEXT] = PLAN_GPU_CONTEXT_BYTES;
            uint64_t stage = max_u64((uint64_t)chunk * (uint64_t)c->hidden, (uint64_t)info.vocab);
            b[PLAN_PINNED_STAGING] = stage * sizeof(float);
            /* the tower's own pinned buffer (pixels up, projected rows
             * down), held while the tower is */
            if (vis && n_images > 0)
                b[PLAN_PINNED_STAGING] +=
                    clip_gpu_staging_bytes_cfg(&c->vision, out->s.crop_group, c->hidden);
        }
        for (int i = 0; i < PLAN_GPU_COMP_COUNT; i++) out->gpu_bytes += dev[i];
    }
    if (n_images > 0) {
        /* Phases of one image (decoded images stay with the caller):
         * resize (passes + HD), crops (HD + pixels), encode (pixels + every
         * image's rows + features + workspace). */
        uint64_t decoded = (uint64_t)out->image_decoded;
        uint64_t hd = out->image_hd, pixels = out->image_pixels;
        uint64_t resize = b[PLAN_IMAGE_PREPROCESS], crops = hd + pixels;
        uint64_t encode = pixels + b[PLAN_IMAGE_FEATURES] + b[PLAN_VISION];
        image_phase = (uint64_t)n_images * (decoded + sizeof(vlm_image)) +
                      max_u64(resize, max_u64(crops, encode));
    }

    /* Fixed: tokenizer tables, the safetensors index, the model's structs. */
    int clip_layers = c->has_vision ? phi3v_vision_layers_run(c) : 0;
    b[PLAN_OVERHEAD] = pm->tokenizer_bytes + pm->index_bytes + sizeof(arch_model) +
                       sizeof(phi3v_model) + (uint64_t)c->n_layers * sizeof(phi3_layer) +
                       (uint64_t)clip_layers * sizeof(clip_layer);

    uint64_t tok_transient =
        pm->tokenizer_peak > pm->tokenizer_bytes ? pm->tokenizer_peak - pm->tokenizer_bytes : 0;
    out->load_peak =
        b[PLAN_WEIGHTS] + b[PLAN_OVERHEAD] + max_u64(b[PLAN_LOAD_SCRATCH], tok_transient);
    out->run_peak = b[PLAN_WEIGHTS] + b[PLAN_OVERHEAD] + b[PLAN_KV_CACHE] + b[PLAN_PREFILL] +
                    b[PLAN_LOGITS] + b[PLAN_SESSION] + b[PLAN_PINNED_STAGING] + image_phase;
    out->peak = max_u64(out->load_peak, out->run_peak);
    out->host_bytes = out->peak;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * the budget */

bool plan_as_headroom(uint64_t *left) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return false;
    /* /proc/self/statm: the first field is the address space in pages. */
    uint64_t used = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long long pages = 0;
        if (fscanf(f, "%llu", &pages) == 1)
            used = (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
        fclose(f);
    }
    *left = (uint64_t)rl.rlim_cur > used ? (uint64_t)rl.rlim_cur - used : 0;
    return true;
}

uint64_t plan_budget_from_headroom(uint64_t headroom) {
    uint64_t margin = max_u64(headroom / 100 * PLAN_MARGIN_PERCENT, PLAN_MARGIN_MIN);
    return headroom > margin ? headroom - margin : 0;
}

uint64_t plan_gpu_budget_from_free(uint64_t free_bytes) {
    uint64_t margin = max_u64(free_bytes / 100 * PLAN_GPU_MARGIN_PERCENT, PLAN_GPU_MARGIN_MIN);
    return free_bytes > margin ? free_bytes - margin : 0;
}

uint64_t plan_budget_from_as_headroom(uint64_t as_left) {
    uint64_t margin = max_u64(as_left / 100 * PLAN_AS_MARGIN_PERCENT, PLAN_AS_MARGIN_MIN);
    return as_left > margin ? as_left - margin : 0;
}

/* ---------------------------------------------------------------------------
 * the ladder */

static void fmt_gib(char *buf, size_t cap, uint64_t b) {
    snprintf(buf, cap, "%.2f GiB", (double)b / (double)(1u << 30));
}

/* GiB, or MiB below one GiB (a small model's device figures). */
static void fmt_size(char *buf, size_t cap, uint64_t b) {
    if (b >= (1u << 30))
        fmt_gib(buf, cap, b);
    else
        snprintf(buf, cap, "%.1f MiB", (double)b / (double)(1u << 20));
}

static plan_rung *add_rung(vlm_plan *p) {
    if (p->n_rungs >= PLAN_MAX_RUNGS) return NULL;
    plan_rung *g = &p->rungs[p->n_rungs++];
    memset(g, 0, sizeof *g);
    return g;
}

/* The estimate fits the host budget and, on a GPU setting, the GPU's. */
static bool within(const vlm_plan *p, const plan_estimate *e) {
    return e->host_bytes <= p->budget && (e->s.device != PLAN_GPU || e->gpu_bytes <= p->gpu_budget);
}

/* Try setting s, with the crop group from every crop at once down to one
 * (lossless: the features are identical), keeping the largest that fits.
 * gpu_step: the GPU rung's step (-1: a CPU rung); available: false for a
 * GPU rung without a GPU (estimated and listed, never chosen). */
static vlm_status try_rung(const plan_model *pm, const plan_request *r, vlm_plan *p, plan_setting s,
                           const char *label, bool degraded, int gpu_step, bool available,
                           bool *fits, vlm_err *err) {
    plan_rung *g = add_rung(p);
    *fits = false;
    if (!g) return VLM_OK;
    snprintf(g->label, sizeof g->label, "%s", label);
    g->available = available;
    g->degraded = degraded;
    g->gpu_step = gpu_step;
    s.crop_group = 1 + s.num_crops; /* clamped to the crops of the grid */
    vlm_status st;
    for (;;) {
        if ((st = plan_estimate_setting(pm, r, &s, &g->e, err)) != VLM_OK) return st;
        if (within(p, &g->e) || g->e.s.crop_group <= 1) break;
        s.crop_group = g->e.s.crop_group / 2;
    }
    const plan_estimate *e = &g->e;
    char need[32], have[32], gneed[32], ghave[32];
    fmt_gib(need, sizeof need, e->peak);
    fmt_gib(have, sizeof have, p->budget);
    fmt_size(gneed, sizeof gneed, e->gpu_bytes);
    fmt_size(ghave, sizeof ghave, p->gpu_budget);
    int64_t img_tokens = (int64_t)e->n_images * e->image_tokens;
    if (img_tokens >= e->s.context) {
        snprintf(g->reason, sizeof g->reason,
                 "a context of %lld tokens cannot hold %d image(s) of %d tokens",
                 (long long)e->s.context, e->n_images, e->image_tokens);
        return VLM_OK;
    }
    bool gpu = e->s.device == PLAN_GPU;
    bool placed = !gpu || e->s.gpu_layers > 0 || e->s.vision_on_gpu;
    g->fits_budgets = placed && within(p, e);
    g->fits = available && g->fits_budgets;
    *fits = g->fits;
    /* Without a GPU the reason still says what the rung would need. */
    size_t o = 0;
    if (!available) o = (size_t)snprintf(g->reason, sizeof g->reason, "not available (no GPU); ");
    char *rs = g->reason + o;
    size_t cap = sizeof g->reason - o;
    if (!placed) {
        snprintf(rs, cap, "no decoder layer fits the GPU budget of %s", ghave);
    } else if (gpu && e->gpu_bytes > p->gpu_budget) {
        snprintf(rs, cap, "needs %s (%llu bytes) on the GPU > gpu budget %s (%llu bytes)", gneed,
                 (unsigned long long)e->gpu_bytes, ghave, (unsigned long long)p->gpu_budget);
    } else if (!g->fits_budgets) {
        snprintf(rs, cap, "needs %s (%llu bytes)%s > budget %s (%llu bytes)", need,
                 (unsigned long long)e->peak, gpu ? " on the host" : "", have,
                 (unsigned long long)p->budget);
    } else if (gpu) {
        snprintf(rs, cap, "%s: needs %s of %s on the GPU, %s of %s",
                 available ? "fits" : "would fit", gneed, ghave, need, have);
    } else {
        snprintf(rs, cap, "fits: needs %s of %s", need, have);
    }
    return VLM_OK;
}

/* The partial rung's placement at s.precision: k the most leading decoder
 * layers the GPU budget holds (the tower on the CPU), then the tower on the
 * GPU too if it still fits beside them. Decided at crop group 1 (the
 * smallest vision workspace); try_rung then widens the group. */
static vlm_status choose_layers(const plan_model *pm, const plan_request *r, const vlm_plan *p,
                                plan_setting *s, vlm_err *err) {
    plan_estimate e;
    vlm_status st;
    int L = pm->arch.n_layers, k;
    s->crop_group = 1;
    s->vision_on_gpu = false;
    for (k = L; k > 0; k--) {
        s->gpu_layers = k;
        if ((st = plan_estimate_setting(pm, r, s, &e, err)) != VLM_OK) return st;
        if (e.gpu_bytes <= p->gpu_budget) break;
    }
    s->gpu_layers = k;
    if (pm->arch.has_vision) {
        s->vision_on_gpu = true;
        if ((st = plan_estimate_setting(pm, r, s, &e, err)) != VLM_OK) return st;
        if (e.gpu_bytes > p->gpu_budget) s->vision_on_gpu = false;
    }
    return VLM_OK;
}

/* Quantized precisions in ladder order: more weight bytes first; a tie
 * (q4_0 and q4_K are both 0.5625 B/weight) goes to the better quality:
 * q8_0, then q4_K (per-sub-block 6-bit scales and mins), then q4_0. */
int vlm_plan_ladder(const plan_model *pm, vlm_precision *out) {
    int n = 0;
    uint64_t native, bf16;
    plan_weight_bytes(pm, VLM_PREC_NATIVE, &native, NULL);
    plan_weight_bytes(pm, VLM_PREC_BF16, &bf16, NULL);
    out[n++] = VLM_PREC_NATIVE;
    if (bf16 < native) out[n++] = VLM_PREC_BF16; /* an f32 checkpoint */
    vlm_precision q[3] = {VLM_PREC_Q8_0, VLM_PREC_Q4_K, VLM_PREC_Q4_0};
    uint64_t qb[3];
    for (int i = 0; i < 3; i++) plan_weight_bytes(pm, q[i], &qb[i], NULL);
    for (int i = 1; i < 3; i++) /* stable insertion sort, bytes descending */
        for (int j = i; j > 0 && qb[j] > qb[j - 1]; j--) {
            vlm_precision tp = q[j];
            q[j] = q[j - 1];
            q[j - 1] = tp;
            uint64_t tb = qb[j];
            qb[j] = qb[j - 1];
            qb[j - 1] = tb;
        }
    for (int i = 0; i < 3; i++) out[n++] = q[i];
    return n;
}

vlm_status vlm_plan_make(const plan_model *pm, const plan_request *r, vlm_plan *p, vlm_err *err) {
    memset(p, 0, sizeof *p);
    p->chosen = -1;
    if (r->precision >= VLM_PREC_COUNT)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "plan: precision %d", r->precision);
    if (r->kv_dtype != VLM_DTYPE_F32 && r->kv_dtype != VLM_DTYPE_BF16)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "plan: the KV cache is f32 or bf16");

    /* Budget: given, or the monitor's headroom less the margin. */
    if (r->mem_budget) {
        p->budget = r->mem_budget;
        p->budget_given = true;
    } else {
        vlm_mem_snapshot snap;
        vlm_mem_snapshot_take(NULL, &snap);
        p->headroom = snap.headroom_bytes;
        /* A limit on the address space (prlimit --as) is a cap too: what
         * is left of it, plus the checkpoint mapping the caller already
         * holds (the estimate counts the weights it keeps mapped). When it
         * is the tighter cap its own, smaller margin applies: the limit is
         * exact and only this process draws on it, unlike MemAvailable. */
        uint64_t as_left = 0;
        uint64_t budget = plan_budget_from_headroom(p->headroom);
        if (plan_as_headroom(&as_left)) {
            as_left += r->mapped_bytes;
            uint64_t as_budget = plan_budget_from_as_headroom(as_left);
            if (as_budget < budget) {
                p->headroom = as_left;
                p->as_limited = true;
                budget = as_budget;
            }
        }
        p->budget = budget;
    }
    p->device = r->device;
    p->gpu_available = r->gpu_available;
    p->gpu_free_bytes = r->gpu_available ? r->gpu_free_bytes : 0;
    if (r->device == PLAN_DEVICE_CPU) {
        /* no GPU rung is planned: no GPU budget */
    } else if (r->gpu_mem_budget) {
        p->gpu_budget = r->gpu_mem_budget;
        p->gpu_budget_given = true;
    } else if (r->gpu_available) {
        p->gpu_budget = plan_gpu_budget_from_free(r->gpu_free_bytes);
    }
    uint64_t th = vlm_mem_get_threshold();
    p->alarm_threshold = th && th < p->budget ? th : p->budget;

    vlm_model_info info;
    phi3v_info_from_config(&pm->arch, &info);
    session_options so;
    session_options_init(&so);
    so.max_ctx = r->context;
    int64_t ctx, chunk;
    session_sizes(&info, &so, &ctx, &chunk);
    int crops = r->num_crops > 0 ? r->num_crops : pm->default_num_crops;
    p->requested_context = ctx;
    p->requested_crops = crops;
    plan_setting base = {VLM_PREC_NATIVE, ctx, crops, 1 + crops, PLAN_CPU, 0, false};
    char label[96];
    vlm_status st;
    bool fits = false;

    /* GPU rungs first: everything on the GPU at the stored precision, bf16
     * for an f32 checkpoint, q8_0, q4_0 (the block types the GPU kernels
     * read); then the first k decoder layers at each of them, the tower
     * placed on its own. Listed without a GPU (estimates shown, never
     * chosen). */
    int L = pm->arch.n_layers;
    if (r->device != PLAN_DEVICE_CPU) {
        vlm_precision gp[4];
        int ng = 0;
        if (r->precision >= 0) {
            gp[ng++] = (vlm_precision)r->precision;
        } else {
            uint64_t nat, half;
            plan_weight_bytes(pm, VLM_PREC_NATIVE, &nat, NULL);
            plan_weight_bytes(pm, VLM_PREC_BF16, &half, NULL);
            gp[ng++] = VLM_PREC_NATIVE;
            if (half < nat) gp[ng++] = VLM_PREC_BF16;
            gp[ng++] = VLM_PREC_Q8_0;
            gp[ng++] = VLM_PREC_Q4_0;
        }
        for (int i = 0; i < 2 * ng && !fits; i++) {
            if (i < r->gpu_from) continue;
            bool all = i < ng;
            plan_setting s = base;
            s.device = PLAN_GPU;
            s.precision = gp[all ? i : i - ng];
            const char *pn = vlm_precision_name(s.precision);
            if (all) {
                s.gpu_layers = L;
                s.vision_on_gpu = pm->arch.has_vision;
                snprintf(label, sizeof label, "gpu %s", pn);
            } else {
                if ((st = choose_layers(pm, r, p, &s, err)) != VLM_OK) return st;
                snprintf(label, sizeof label, "gpu %s, %d/%d layers, vision %s", pn, s.gpu_layers,
                         L,
                         !pm->arch.has_vision ? "none"
                         : s.vision_on_gpu    ? "gpu"
                                              : "cpu");
            }
            if ((st = try_rung(pm, r, p, s, label, false, i, r->gpu_available, &fits, err)) !=
                VLM_OK)
                return st;
        }
    }

    /* CPU precisions, best first. */
    vlm_precision precs[VLM_PREC_COUNT];
    int np = vlm_plan_ladder(pm, precs);
    if (r->precision >= 0) {
        precs[0] = (vlm_precision)r->precision;
        np = 1;
    }
    if (r->device == PLAN_DEVICE_CUDA) np = 0;
    for (int i = 0; i < np && !fits; i++) {
        plan_setting s = base;
        s.precision = precs[i];
        snprintf(label, sizeof label, "cpu %s", vlm_precision_name(precs[i]));
        if ((st = try_rung(pm, r, p, s, label, false, -1, true, &fits, err)) != VLM_OK) return st;
    }

    /* Degrading, at the last precision tried: fewer crops (16 -> 4 -> 1),
     * then the context halved down to the floor. */
    int n_images = r->n_images < 0 ? (pm->arch.has_vision ? 1 : 0) : r->n_images;
    if (!pm->arch.has_vision) n_images = 0;
    if (!fits && r->allow_degrade && np > 0) {
        plan_setting s = base;
        s.precision = precs[np - 1];
        static const int crop_steps[] = {16, 4, 1};
        for (size_t i = 0; i < 3 && !fits && n_images > 0; i++) {
            if (crop_steps[i] >= s.num_crops) continue;
            s.num_crops = crop_steps[i];
            snprintf(label, sizeof label, "cpu %s, num_crops %d", vlm_precision_name(s.precision),
                     s.num_crops);
            if ((st = try_rung(pm, r, p, s, label, true, -1, true, &fits, err)) != VLM_OK)
                return st;
        }
        int64_t floor = r->min_context > 0 ? r->min_context : 1024;
        while (!fits && s.context / 2 >= floor) {
            s.context /= 2;
            snprintf(label, sizeof label, "cpu %s, num_crops %d, context %lld",
                     vlm_precision_name(s.precision), n_images > 0 ? s.num_crops : 0,
                     (long long)s.context);
            if ((st = try_rung(pm, r, p, s, label, true, -1, true, &fits, err)) != VLM_OK)
                return st;
            const plan_estimate *e = &p->rungs[p->n_rungs - 1].e;
            if ((int64_t)e->n_images * e->image_tokens >= e->s.context) break; /* too short */
        }
        /* The last rung, when nothing above fits: the q8_0 floor of lm_head,
         * the vision tower and the projector lifted (every matrix q4_0), the
         * KV cache in bf16, at the crops reached above; the context from the
         * request halved down to 512, the largest that fits. Forcing one
         * precision (r->precision) leaves it out. */
        int64_t last_floor = PLAN_LAST_RUNG_MIN_CONTEXT;
        if (r->min_context > 0 && r->min_context < last_floor) last_floor = r->min_context;
        s.precision = VLM_PREC_Q4_0_ALL;
        s.context = ctx;
        while (!fits && r->precision < 0 && s.context >= last_floor) {
            snprintf(label, sizeof label, "cpu q4_0_all (kv bf16), num_crops %d, context %lld",
                     n_images > 0 ? s.num_crops : 0, (long long)s.context);
            if ((st = try_rung(pm, r, p, s, label, true, -1, true, &fits, err)) != VLM_OK)
                return st;
            const plan_estimate *e = &p->rungs[p->n_rungs - 1].e;
            if ((int64_t)e->n_images * e->image_tokens >= e->s.context) break; /* too short */
            s.context /= 2;
        }
    }
    if (fits) {
        p->chosen = p->n_rungs - 1;
        plan_rung *g = &p->rungs[p->chosen];
        if (g->degraded) {
            char gave[256] = "";
            size_t o = 0;
            if (g->e.s.num_crops != crops && n_images > 0)
                o += (size_t)snprintf(gave + o, sizeof gave - o, "num_crops %d -> %d", crops,
                                      g->e.s.num_crops);
            if (g->e.s.context != ctx && o < sizeof gave)
                o += (size_t)snprintf(gave + o, sizeof gave - o, "%scontext %lld -> %lld",
                                      o ? ", " : "", (long long)ctx, (long long)g->e.s.context);
            if (g->e.s.precision == VLM_PREC_Q4_0_ALL && o < sizeof gave)
                snprintf(gave + o, sizeof gave - o,
                         "%sthe q8_0 floor (lm_head, vision tower, projector at q4_0)%s",
                         o ? ", " : "",
                         r->kv_dtype == VLM_DTYPE_BF16 ? "" : ", KV cache f32 -> bf16");
            size_t len = strlen(g->reason);
            snprintf(g->reason + len, sizeof g->reason - len, "; gave up %s", gave);
        }
    }
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * JSON */

/* cJSON's Add* return NULL when an allocation fails: every call is
 * checked, and a partial object is thrown away. */
#define J(x) (ok = ok && ((x) != NULL))

static cJSON *rung_json(const plan_rung *g) {
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL;
    const plan_estimate *e = &g->e;
    J(cJSON_AddStringToObject(o, "label", g->label));
    J(cJSON_AddStringToObject(o, "device", e->s.device == PLAN_GPU ? "gpu" : "cpu"));
    J(cJSON_AddStringToObject(o, "precision", vlm_precision_name(e->s.precision)));
    J(cJSON_AddBoolToObject(o, "available", g->available));
    J(cJSON_AddBoolToObject(o, "fits", g->fits));
    J(cJSON_AddBoolToObject(o, "fits_budgets", g->fits_budgets));
    J(cJSON_AddBoolToObject(o, "degraded", g->degraded));
    J(cJSON_AddStringToObject(o, "reason", g->reason));
    J(cJSON_AddNumberToObject(o, "context", (double)e->s.context));
    J(cJSON_AddNumberToObject(o, "num_crops", e->s.num_crops));
    J(cJSON_AddNumberToObject(o, "crop_group", e->s.crop_group));
    J(cJSON_AddNumberToObject(o, "crops", e->crops));
    J(cJSON_AddNumberToObject(o, "n_images", e->n_images));
    J(cJSON_AddNumberToObject(o, "image_tokens", e->image_tokens));
    J(cJSON_AddNumberToObject(o, "gpu_layers", e->s.gpu_layers));
    J(cJSON_AddNumberToObject(o, "n_layers", e->n_layers));
    J(cJSON_AddBoolToObject(o, "head_on_gpu", e->head_on_gpu));
    J(cJSON_AddBoolToObject(o, "vision_on_gpu", e->s.vision_on_gpu));
    if (e->s.device == PLAN_GPU) J(cJSON_AddNumberToObject(o, "gpu_step", g->gpu_step));
    J(cJSON_AddNumberToObject(o, "gpu_bytes", (double)e->gpu_bytes));
    /* bytes: the host's share of every component; gpu: the device's. */
    cJSON *c = ok ? cJSON_AddObjectToObject(o, "bytes") : NULL;
    J(c);
    for (int k = 0; ok && k < PLAN_COMP_COUNT; k++)
        J(cJSON_AddNumberToObject(c, comp_names[k], (double)e->bytes[k]));
    cJSON *gc = ok ? cJSON_AddObjectToObject(o, "gpu") : NULL;
    J(gc);
    for (int k = 0; ok && k < PLAN_GPU_COMP_COUNT; k++)
        J(cJSON_AddNumberToObject(gc, gpu_comp_names[k], (double)e->gpu[k]));
    J(cJSON_AddNumberToObject(o, "vision_group1", (double)e->vision_group1));
    J(cJSON_AddNumberToObject(o, "vision_all_at_once", (double)e->vision_all));
    J(cJSON_AddNumberToObject(o, "load_peak", (double)e->load_peak));
    J(cJSON_AddNumberToObject(o, "run_peak", (double)e->run_peak));
    J(cJSON_AddNumberToObject(o, "peak", (double)e->peak));
    J(cJSON_AddNumberToObject(o, "host_bytes", (double)e->host_bytes));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *vlm_plan_to_json(const plan_model *pm, const vlm_plan *p) {
    cJSON *r = cJSON_CreateObject();
    bool ok = r != NULL;
    J(cJSON_AddStringToObject(r, "model", pm->path ? pm->path : ""));
    J(cJSON_AddBoolToObject(r, "fits", p->chosen >= 0));
    cJSON *b = ok ? cJSON_AddObjectToObject(r, "budget") : NULL;
    J(b);
    J(cJSON_AddNumberToObject(b, "bytes", (double)p->budget));
    J(cJSON_AddStringToObject(b, "source", p->budget_given ? "--mem-budget" : "machine"));
    J(cJSON_AddNumberToObject(b, "headroom", (double)p->headroom));
    J(cJSON_AddBoolToObject(b, "address_space_limit", p->as_limited));
    J(cJSON_AddNumberToObject(b, "gpu_bytes", (double)p->gpu_budget));
    J(cJSON_AddStringToObject(b, "gpu_source",
                              p->gpu_budget_given ? "--gpu-mem-budget"
                              : p->gpu_available  ? "device"
                                                  : "none"));
    J(cJSON_AddNumberToObject(b, "alarm_threshold", (double)p->alarm_threshold));
    J(cJSON_AddStringToObject(r, "device", plan_device_name(p->device)));
    cJSON *gpu = ok ? cJSON_AddObjectToObject(r, "gpu") : NULL;
    J(gpu);
    J(cJSON_AddBoolToObject(gpu, "available", p->gpu_available));
    J(cJSON_AddNumberToObject(gpu, "free_bytes", (double)p->gpu_free_bytes));
    J(cJSON_AddNumberToObject(r, "requested_context", (double)p->requested_context));
    J(cJSON_AddNumberToObject(r, "requested_num_crops", p->requested_crops));
    cJSON *w = ok ? cJSON_AddObjectToObject(r, "weight_bytes") : NULL;
    J(w);
    for (int k = 0; ok && k < VLM_PREC_COUNT; k++) {
        uint64_t loaded, all;
        plan_weight_bytes(pm, (vlm_precision)k, &loaded, &all);
        cJSON *o = cJSON_AddObjectToObject(w, vlm_precision_name((vlm_precision)k));
        J(o);
        J(cJSON_AddNumberToObject(o, "loaded", (double)loaded));
        J(cJSON_AddNumberToObject(o, "all", (double)all));
    }
    cJSON *ov = ok ? cJSON_AddObjectToObject(r, "overhead") : NULL;
    J(ov);
    J(cJSON_AddNumberToObject(ov, "tokenizer", (double)pm->tokenizer_bytes));
    J(cJSON_AddNumberToObject(ov, "tokenizer_peak", (double)pm->tokenizer_peak));
    J(cJSON_AddBoolToObject(ov, "tokenizer_measured", pm->tokenizer_measured));
    J(cJSON_AddNumberToObject(ov, "index", (double)pm->index_bytes));
    cJSON *rungs = ok ? cJSON_AddArrayToObject(r, "rungs") : NULL;
    J(rungs);
    for (int i = 0; ok && i < p->n_rungs; i++) {
        cJSON *o = rung_json(&p->rungs[i]);
        if (o && !cJSON_AddItemToArray(rungs, o)) {
            cJSON_Delete(o);
            o = NULL;
        }
        J(o);
    }
    if (ok && p->chosen >= 0) {
        cJSON *o = rung_json(&p->rungs[p->chosen]);
        if (o && !cJSON_AddItemToObject(r, "chosen", o)) { /* the key failed */
            cJSON_Delete(o);
            o = NULL;
        }
        J(o);
    } else {
        J(cJSON_AddNullToObject(r, "chosen"));
    }
    if (!ok) {
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}
