/* models/phi3_gpu - see phi3_gpu.h. */
#include "models/phi3_gpu.h"

#ifdef VLM_HAVE_CUDA

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda.h"
#include "base/alloc.h"
#include "base/log.h"

typedef struct gpu_layer {
    vlm_cuda_weight in_norm, qkv, o, post_norm, gate_up, down;
} gpu_layer;

struct phi3_gpu {
    const phi3_model *m;
    vlm_cuda_ctx *ctx;
    int n_layers;
    bool head;
    gpu_layer *L;
    vlm_cuda_weight norm, lm_head;
    void **owned; /* device buffers of the weights */
    int n_owned;
    /* device activations, grown to the largest call; act[0] is the device
     * position (int32) the graph's kernels read, the rows start at act + 4 */
    float *act;
    size_t act_floats;
    /* RoPE cos/sin of positions [0, rope_rows) on the device (cos
     * [rope_rows][hd/2], then sin), cpu_rope_cos_sin's values for the
     * short (or, rope_long_tab, long) factors, filled up to rope_filled */
    float *rope;
    int64_t rope_rows, rope_filled;
    bool rope_long_tab;
    /* the decode step as a CUDA graph (head on the GPU, VLM_CUDA_GRAPHS not
     * 0): recorded at the first n == 1 forward and again whenever a buffer
     * it baked in changes (key) */
    bool graphs;
    /* above the GEMV size, the norms and SiLU write the products' 16-bit
     * inputs themselves (VLM_CUDA_PREFILL16 not 0; enqueue) */
    bool prefill16;
    vlm_cuda_graph *graph;
    struct graph_key {
        const void *act, *rope, *k, *v;
        int64_t max_ctx;
        int dtype;
        bool logits;
    } key;
    /* host staging of a decode step (page-locked when the driver allows):
     * [4 floats: the position as int32, padding][d: x][vocab: logits] */
    float *stage; /* pinned where the driver gives it (else ordinary memory) */
    size_t stage_bytes;
    bool stage_pinned;
    /* VLM_CUDA_TIMING=1: GPU time of the graph's decode steps, and their
     * wall time from one step's start to the next's (logged at free) */
    double t_gpu_ms, t_wall_ms, t_last, t_prev_gpu;
    int64_t t_pos;
    long t_steps;
};

/* Context workspace: bf16 activations of 512 rows of the widest input, the
 * attention partials of decode; larger prefill chunks are split by the
 * matmul. */
static size_t workspace_bytes(const phi3v_config *c) {
    size_t w =
        (size_t)512 * (size_t)(c->intermediate > c->hidden ? c->intermediate : c->hidden) * 2;
    size_t a = (size_t)64 * (size_t)c->n_heads * (size_t)(2 + c->head_dim) * sizeof(float);
    return (w > a ? w : a) + (1u << 20);
}

static vlm_status upload(phi3_gpu *g, cpu_weight w, int64_t n, const char *name, int layer,
                         vlm_cuda_weight *out, vlm_err *err) {
    if (w.dtype != VLM_DTYPE_F32 && w.dtype != VLM_DTYPE_F16 && w.dtype != VLM_DTYPE_BF16 &&
        w.dtype != VLM_DTYPE_Q8_0 && w.dtype != VLM_DTYPE_Q4_0)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "decoder layer %d %s: %s weights have no CUDA kernel (F32, F16, BF16, "
                           "Q8_0, Q4_0)",
                           layer, name, vlm_dtype_get(w.dtype)->name);
    uint64_t bytes = 0;
    if (!vlm_dtype_nbytes(w.dtype, (uint64_t)n, &bytes))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "decoder layer %d %s: bad size", layer, name);
    void *d = vlm_dev_alloc((size_t)bytes, VLM_MEM_WEIGHTS);
    if (!d)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "decoder layer %d %s: out of GPU memory for %llu bytes of weights",
                           layer, name, (unsigned long long)bytes);
    g->owned[g->n_owned++] = d;
    *out = (vlm_cuda_weight){w.dtype, d};
    return vlm_cuda_upload(g->ctx, d, w.data, (size_t)bytes, name, err);
}

vlm_status phi3_gpu_create(const phi3_model *m, int gpu_layers, bool head, phi3_gpu **out,
                           vlm_err *err) {
    *out = NULL;
    const phi3v_config *c = m->cfg;
    if (gpu_layers < 1 || gpu_layers > c->n_layers || (head && gpu_layers != c->n_layers))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "GPU placement: %d decoder layers of %d%s",
                           gpu_layers, c->n_layers,
                           head ? " with the head (needs every layer)" : "");
    phi3_gpu *g = vlm_calloc(1, sizeof *g, VLM_MEM_OTHER);
    if (!g) return vlm_err_set(err, VLM_ERR_NOMEM, "GPU decoder: out of host memory");
    g->m = m;
    g->n_layers = gpu_layers;
    g->head = head;
    const char *ge = getenv("VLM_CUDA_GRAPHS");
    g->graphs = head && !(ge && !strcmp(ge, "0"));
    const char *pe = getenv("VLM_CUDA_PREFILL16");
    g->prefill16 = !(pe && !strcmp(pe, "0"));
    vlm_status st = vlm_cuda_ctx_create(&g->ctx, workspace_bytes(c), err);
    if (st != VLM_OK) goto fail;
    g->L = VLM_NEW_ARRAY(gpu_layer, (size_t)gpu_layers, VLM_MEM_OTHER);
    g->owned = VLM_NEW_ARRAY(void *, (size_t)gpu_layers * 6 + 2, VLM_MEM_OTHER);
    if (!g->L || !g->owned) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "GPU decoder: out of host memory");
        goto fail;
    }
    const int64_t d = c->hidden, ff = c->intermediate, hd = c->head_dim;
    const int64_t qd = c->n_heads * hd, qkvd = qd + 2 * (int64_t)c->n_kv_heads * hd;
    for (int l = 0; l < gpu_layers; l++) {
        const phi3_layer *H = &m->layers[l];
        gpu_layer *G = &g->L[l];
        if ((st = upload(g, H->in_norm, d, "input_layernorm", l, &G->in_norm, err)) ||
            (st = upload(g, H->qkv, qkvd * d, "qkv_proj", l, &G->qkv, err)) ||
            (st = upload(g, H->o, d * qd, "o_proj", l, &G->o, err)) ||
            (st = upload(g, H->post_norm, d, "post_attention_layernorm", l, &G->post_norm, err)) ||
            (st = upload(g, H->gate_up, 2 * ff * d, "gate_up_proj", l, &G->gate_up, err)) ||
            (st = upload(g, H->down, d * ff, "down_proj", l, &G->down, err)))
            goto fail;
    }
    if (head &&
        ((st = upload(g, m->norm, d, "model.norm", -1, &g->norm, err)) ||
         (st = upload(g, m->lm_head, (int64_t)c->vocab * d, "lm_head", -1, &g->lm_head, err))))
        goto fail;
    if (head) {
        g->stage_bytes = (size_t)(4 + d + c->vocab) * sizeof(float);
        g->stage = vlm_cuda_host_alloc(g->stage_bytes, VLM_MEM_OTHER);
        g->stage_pinned = g->stage != NULL;
        /* refused pinned memory: ordinary memory, the copies then wait */
        if (!g->stage) g->stage = vlm_alloc(g->stage_bytes, VLM_MEM_OTHER);
        if (!g->stage) {
            st = vlm_err_set(err, VLM_ERR_NOMEM,
                             "GPU decoder: out of host memory for the decode staging buffer");
            goto fail;
        }
    }
    *out = g;
    return VLM_OK;
fail:
    phi3_gpu_free(g);
    return st;
}

void phi3_gpu_free(phi3_gpu *g) {
    if (!g) return;
    if (g->ctx) vlm_cuda_sync(g->ctx, "GPU decoder free", NULL);
    if (g->t_steps > 0)
        vlm_log(VLM_LOG_INFO,
                "GPU decoder: %ld decode steps, %.3f ms each from start to start, of which "
                "%.3f ms GPU time (input copy and graph)",
                g->t_steps, g->t_wall_ms / (double)g->t_steps, g->t_gpu_ms / (double)g->t_steps);
    vlm_cuda_graph_destroy(g->graph);
    if (g->stage_pinned)
        vlm_cuda_host_free(g->stage, g->stage_bytes, VLM_MEM_OTHER);
    else
        vlm_free(g->stage);
    for (int i = 0; i < g->n_owned; i++) vlm_dev_free(g->owned[i]);
    vlm_dev_free(g->act);
    vlm_dev_free(g->rope);
    vlm_cuda_ctx_destroy(g->ctx);
    vlm_free(g->owned);
    vlm_free(g->L);
    vlm_free(g);
}

int phi3_gpu_layers(const phi3_gpu *g) {
    return g->n_layers;
}

bool phi3_gpu_head(const phi3_gpu *g) {
    return g->head;
}

/* kv must hold this part's layers on the device (runtime/kv_cache
 * allocates them there when the model info says gpu_layers). */
static vlm_status check_kv(const phi3_gpu *g, const vlm_kv *kv, vlm_err *err) {
    if (kv->gpu_layers != g->n_layers || !kv->dev_k || !kv->dev_v)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "GPU decoder: the KV cache keeps %d layers on the GPU (%s), the model "
                           "runs %d there",
                           kv->gpu_layers, kv->dev_k ? "allocated" : "none allocated", g->n_layers);
    if (kv->dtype != VLM_DTYPE_F32 && kv->dtype != VLM_DTYPE_BF16)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "GPU decoder: KV dtype %d", (int)kv->dtype);
    return VLM_OK;
}

/* The RoPE tables on the device for positions [0, upto) of a cache of
 * max_ctx positions: allocated once for max_ctx rows (category
 * ACTIVATIONS), filled on the host by cpu_rope_cos_sin (the CPU path's
 * values, bit for bit) in steps of 256 rows as positions are reached, and
 * refilled from 0 when the factors switch (LongRoPE). */
static vlm_status ensure_rope(phi3_gpu *g, int64_t max_ctx, int64_t upto, bool rope_long,
                              vlm_err *err) {
    const phi3_model *m = g->m;
    const int64_t hd = m->cfg->head_dim, half = hd / 2;
    if (!g->rope || g->rope_rows < max_ctx) {
        vlm_dev_free(g->rope);
        g->rope_rows = g->rope_filled = 0;
        g->rope = vlm_dev_alloc((size_t)(max_ctx * hd) * sizeof(float), VLM_MEM_ACTIVATIONS);
        if (!g->rope)
            return vlm_err_set(err, VLM_ERR_NOMEM,
                               "GPU decoder: out of GPU memory for the RoPE tables of %lld "
                               "positions (%zu bytes)",
                               (long long)max_ctx, (size_t)(max_ctx * hd) * sizeof(float));
        g->rope_rows = max_ctx;
    }
    if (rope_long != g->rope_long_tab) {
        g->rope_filled = 0;
        g->rope_long_tab = rope_long;
    }
    if (upto <= g->rope_filled) return VLM_OK;
    int64_t from = g->rope_filled, to = (upto + 255) / 256 * 256;
    if (to > g->rope_rows) to = g->rope_rows;
    const int64_t rows = to - from;
    float *tab = vlm_alloc((size_t)(2 * rows * half) * sizeof(float), VLM_MEM_SCRATCH);
    if (!tab) return vlm_err_set(err, VLM_ERR_NOMEM, "GPU decoder: out of memory for RoPE tables");
    cpu_rope_cos_sin(tab, tab + rows * half, from, rows, (int)hd,
                     rope_long ? m->inv_freq_long : m->inv_freq_short, m->mscale);
    vlm_status st = vlm_cuda_upload(g->ctx, g->rope + from * half, tab,
                                    (size_t)(rows * half) * sizeof(float), "RoPE cos table", err);
    if (st == VLM_OK)
        st = vlm_cuda_upload(g->ctx, g->rope + (g->rope_rows + from) * half, tab + rows * half,
                             (size_t)(rows * half) * sizeof(float), "RoPE sin table", err);
    vlm_free(tab);
    if (st == VLM_OK) g->rope_filled = to;
    return st;
}

/* Floats of the activation buffer before the logits for a call of n
 * tokens: the device position (4 floats: an int32, the greedy id as an
 * int32, padding), then x and xb
 * [n][d], qkv [n][qkvd], att [n][qd], gu [n][2 ff], hmid [n][ff] (enqueue's
 * layout); the logits rows follow. */
static size_t act_floats_before_logits(const phi3v_config *c, int64_t n) {
    const int64_t qd = (int64_t)c->n_heads * c->head_dim;
    const int64_t qkvd = qd + 2 * (int64_t)c->n_kv_heads * c->head_dim;
    return 4 + (size_t)n * (size_t)(2 * c->hidden + qkvd + qd + 3 * c->intermediate);
}

/* Queue the layers (and with want_logits the head over rows [first, n);
 * with greedy also the argmax of the last row into the activations' second
 * int32) on the activations in g->act. dpos non-NULL: the position is the device's
 * int32 there (the graph's step, n == 1), the launches do not depend on
 * pos0; otherwise pos0 is baked into the launches. */
static vlm_status enqueue(phi3_gpu *g, const vlm_kv *kv, int64_t n, int64_t pos0,
                          const int32_t *dpos, bool want_logits, int64_t first, bool greedy,
                          vlm_err *err) {
    const phi3v_config *c = g->m->cfg;
    const int64_t d = c->hidden, ff = c->intermediate, hd = c->head_dim;
    const int H = c->n_heads, KV = c->n_kv_heads;
    const int64_t qd = H * hd, kvd = KV * hd, qkvd = qd + 2 * kvd, half = hd / 2;
    float *dx = g->act + 4, *xb = dx + n * d, *qkv = xb + n * d, *att = qkv + n * qkvd,
          *gu = att + n * qd, *hmid = gu + n * 2 * ff,
          *dlog = g->act + act_floats_before_logits(c, n);
    const float *cos_tab = g->rope, *sin_tab = g->rope + g->rope_rows * half;
    const float scale = (float)(1.0 / sqrt((double)hd));
    const vlm_cuda_weight nob = {VLM_DTYPE_F32, NULL};
    const size_t esz = kv->dtype == VLM_DTYPE_BF16 ? 2 : 4;
    vlm_status st;
#define RUN(call)                                                                                  \
    do {                                                                                           \
        if ((st = (call)) != VLM_OK) return st;                                                    \
    } while (0)
    for (int l = 0; l < g->n_layers; l++) {
        const gpu_layer *L = &g->L[l];
        const int64_t lo = (int64_t)l * kv->max_ctx * kvd;
        vlm_cuda_weight kc = {kv->dtype, (const char *)kv->dev_k + (size_t)lo * esz};
        vlm_cuda_weight vc = {kv->dtype, (const char *)kv->dev_v + (size_t)lo * esz};
        /* above the GEMV size with 16-bit weights the products round
         * their inputs: the norms and SiLU write them rounded (xb and hmid
         * hold the 16-bit rows), one pass fewer each (VLM_CUDA_PREFILL16=0
         * at creation: the passes, for measuring). The MLP takes it when
         * both its products do (else the fused f32 ops below). */
        const bool p16 = !dpos && g->prefill16;
        const bool qkv16 = p16 && vlm_cuda_rounds_inputs(g->ctx, L->qkv, n);
        const bool mlp16 = p16 && vlm_cuda_rounds_inputs(g->ctx, L->gate_up, n) &&
                           vlm_cuda_rounds_inputs(g->ctx, L->down, n) && ff % 4 == 0 &&
                           (uintptr_t)gu % 16 == 0 && (uintptr_t)hmid % 8 == 0 && n <= 65535;
        if (qkv16)
            RUN(vlm_cuda_rmsnorm_h(g->ctx, xb, L->qkv.dtype, dx, n, d, L->in_norm, c->rms_eps,
                                   err));
        else
            RUN(vlm_cuda_rmsnorm(g->ctx, xb, dx, n, d, L->in_norm, c->rms_eps, err));
        /* q's H heads and k's KV heads lie side by side at the start of
         * each qkv row: the product, one rotation over H + KV heads, and
         * the chunk's K/V rows into the cache (positions pos0..pos0+n-1) */
        if (qkv16) {
            RUN(vlm_cuda_matmul_h(g->ctx, qkv, xb, n, d, qkvd, L->qkv, nob, err));
            RUN(vlm_cuda_rope_store(g->ctx, qkv, n, qkvd, H, KV, (int)hd, cos_tab + pos0 * half,
                                    sin_tab + pos0 * half, kv->dev_k, kv->dev_v, kv->dtype,
                                    lo + pos0 * kvd, err));
        } else if (dpos) {
            RUN(vlm_cuda_matmul_rope_store(g->ctx, qkv, xb, n, d, L->qkv, H, KV, (int)hd, cos_tab,
                                           sin_tab, kv->dev_k, kv->dev_v, kv->dtype, lo, dpos,
                                           err));
            RUN(vlm_cuda_attention_pos(g->ctx, att, qkv, qkvd, kc, vc, kvd, n, kv->max_ctx, H, KV,
                                       (int)hd, scale, dpos, err));
        } else {
            RUN(vlm_cuda_matmul_rope_store(g->ctx, qkv, xb, n, d, L->qkv, H, KV, (int)hd,
                                           cos_tab + pos0 * half, sin_tab + pos0 * half, kv->dev_k,
                                           kv->dev_v, kv->dtype, lo + pos0 * kvd, NULL, err));
        }
        if (!dpos) {
            /* BF16 qkv weights: above the GEMV size the qkv product
             * rounded its input to bf16, so prefill chunks may take the
             * tensor-core attention (the op keeps f32 in f32 mode and
             * below 32 queries) */
            RUN(vlm_cuda_attention_seqs(g->ctx, att, qkv, qkvd, kc, vc, kvd, 1, n, pos0 + n, H, KV,
                                        (int)hd, true, pos0, scale, L->qkv.dtype == VLM_DTYPE_BF16,
                                        err));
        }
        /* x += o(att): the residual add fused into the product */
        RUN(vlm_cuda_matmul_acc(g->ctx, dx, att, n, qd, d, L->o, err));
        if (mlp16) {
            RUN(vlm_cuda_rmsnorm_h(g->ctx, xb, L->gate_up.dtype, dx, n, d, L->post_norm, c->rms_eps,
                                   err));
            RUN(vlm_cuda_matmul_h(g->ctx, gu, xb, n, d, 2 * ff, L->gate_up, nob, err));
            RUN(vlm_cuda_silu_mul_h(g->ctx, hmid, L->down.dtype, gu, n, ff, err));
            RUN(vlm_cuda_matmul_h_acc(g->ctx, dx, hmid, n, ff, d, L->down, nob, err));
        } else {
            RUN(vlm_cuda_rmsnorm(g->ctx, xb, dx, n, d, L->post_norm, c->rms_eps, err));
            /* gate and up, and silu(gate) * up, in one op */
            RUN(vlm_cuda_matmul_silu(g->ctx, hmid, gu, xb, n, d, ff, L->gate_up, err));
            RUN(vlm_cuda_matmul_acc(g->ctx, dx, hmid, n, ff, d, L->down, err));
        }
    }
    if (want_logits) {
        RUN(vlm_cuda_rmsnorm(g->ctx, xb, dx + first * d, n - first, d, g->norm, c->rms_eps, err));
        RUN(vlm_cuda_matmul(g->ctx, dlog, xb, n - first, d, c->vocab, g->lm_head, nob, err));
        if (greedy)
            RUN(vlm_cuda_argmax(g->ctx, (int32_t *)g->act + 1,
                                dlog + (n - 1 - first) * (int64_t)c->vocab, c->vocab, err));
    }
#undef RUN
    return VLM_OK;
}

/* The decode step's graph for this cache and logits mode: the one recorded
 * before when nothing it baked in changed, else recorded now. false when
 * it cannot be had (the capture or instantiation failed: graphs are off for
 * this model from then on, the step runs as plain launches). */
static bool step_graph(phi3_gpu *g, const vlm_kv *kv, bool want_logits) {
    struct graph_key k;
    memset(&k, 0, sizeof k); /* padding too: keys are compared with memcmp */
    k.act = g->act;
    k.rope = g->rope;
    k.k = kv->dev_k;
    k.v = kv->dev_v;
    k.max_ctx = kv->max_ctx;
    k.dtype = (int)kv->dtype;
    k.logits = want_logits;
    if (g->graph && !memcmp(&k, &g->key, sizeof k)) return true;
    vlm_cuda_graph_destroy(g->graph);
    g->graph = NULL;
    vlm_err e = {0};
    vlm_status st = vlm_cuda_capture_begin(g->ctx, &e);
    if (st == VLM_OK) {
        /* with the head, the argmax too (a few microseconds): one graph
         * serves greedy steps (only the id comes back) and the others */
        vlm_status sq =
            enqueue(g, kv, 1, 0, (const int32_t *)g->act, want_logits, 0, want_logits, &e);
        vlm_err e2 = {0};
        st = vlm_cuda_capture_end(g->ctx, &g->graph, sq == VLM_OK ? &e : &e2);
        if (sq != VLM_OK) st = sq;
    }
    if (st != VLM_OK || !g->graph) {
        vlm_log(VLM_LOG_WARN, "GPU decoder: no CUDA graph for the decode step (%s); plain launches",
                e.msg);
        vlm_cuda_graph_destroy(g->graph);
        g->graph = NULL;
        g->graphs = false;
        return false;
    }
    g->key = k;
    return true;
}

/* VLM_CUDA_TIMING=1: at the start of a graph step at pos0, add the previous
 * step's wall time (start to start) and GPU time to the totals when the two
 * are consecutive positions of one generation (a prefill or a new session
 * in between is not a decode step's time). */
static void step_timing(phi3_gpu *g, int64_t pos0) {
    if (!vlm_cuda_timing(g->ctx)) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
    if (g->t_last > 0 && pos0 == g->t_pos + 1) {
        g->t_wall_ms += now - g->t_last;
        g->t_gpu_ms += g->t_prev_gpu;
        g->t_steps++;
    }
    g->t_last = now;
    g->t_pos = pos0;
}

vlm_status phi3_gpu_forward(phi3_gpu *g, const vlm_kv *kv, float *x, int64_t n, int64_t pos0,
                            bool rope_long, int logits_mode, float *logits, int32_t *greedy_id,
                            vlm_err *err) {
    const phi3_model *m = g->m;
    const phi3v_config *c = m->cfg;
    const int64_t d = c->hidden;
    const bool want_logits = g->head && logits && logits_mode != VLM_LOGITS_NONE;
    /* greedy: the argmax on the card, only the id comes back */
    const bool greedy = want_logits && logits_mode == VLM_LOGITS_GREEDY && greedy_id;
    const int64_t first = logits_mode == VLM_LOGITS_ALL ? 0 : n - 1;
    vlm_status st = check_kv(g, kv, err);
    if (st != VLM_OK) return st;

    /* the rows of enqueue, then logits [n - first][vocab] */
    const size_t before = act_floats_before_logits(c, n);
    size_t need = before + (want_logits ? (size_t)(n - first) * (size_t)c->vocab : 0);
    if (need > g->act_floats) {
        vlm_dev_free(g->act);
        g->act_floats = 0;
        g->act = vlm_dev_alloc(need * sizeof(float), VLM_MEM_ACTIVATIONS);
        if (!g->act)
            return vlm_err_set(err, VLM_ERR_NOMEM,
                               "GPU decoder: out of GPU memory for the activations of %lld "
                               "tokens (%zu bytes)",
                               (long long)n, need * sizeof(float));
        g->act_floats = need;
    }
    if ((st = ensure_rope(g, kv->max_ctx, pos0 + n, rope_long, err)) != VLM_OK) return st;
    float *dx = g->act + 4, *dlog = g->act + before;

    if (n == 1 && g->graphs && step_graph(g, kv, want_logits)) {
        /* One decode step: the position and x go up in one queued copy
         * from the staging buffer, the graph runs every layer and the head,
         * the logits row comes down into the staging buffer; one wait. The
         * hidden state stays on the card (nobody reads it with the head
         * here). */
        int32_t p32 = (int32_t)pos0;
        memcpy(g->stage, &p32, sizeof p32);
        memcpy(g->stage + 4, x, (size_t)d * sizeof(float));
        float *hlog = g->stage + 4 + d;
        step_timing(g, pos0);
        vlm_cuda_mark(g->ctx, 0);
        if ((st = vlm_cuda_upload_async(g->ctx, g->act, g->stage, (size_t)(4 + d) * sizeof(float),
                                        "decode step input", err)) ||
            (st = vlm_cuda_graph_launch(g->ctx, g->graph, err)))
            return st;
        vlm_cuda_mark(g->ctx, 1);
        if ((greedy && (st = vlm_cuda_download_async(g->ctx, hlog, g->act + 1, sizeof(int32_t),
                                                     "greedy id", err))) ||
            (want_logits && !greedy &&
             (st = vlm_cuda_download_async(g->ctx, hlog, dlog, (size_t)c->vocab * sizeof(float),
                                           "logits", err))) ||
            (st = vlm_cuda_sync(g->ctx, "GPU decoder (graph)", err)))
            return st;
        if (vlm_cuda_timing(g->ctx)) g->t_prev_gpu = vlm_cuda_marks_ms(g->ctx);
        if (greedy)
            memcpy(greedy_id, hlog, sizeof(int32_t));
        else if (want_logits)
            memcpy(logits, hlog, (size_t)c->vocab * sizeof(float));
        return VLM_OK;
    }

    if ((st = vlm_cuda_upload(g->ctx, dx, x, (size_t)(n * d) * sizeof(float), "hidden state", err)))
        return st;
    if ((st = enqueue(g, kv, n, pos0, NULL, want_logits, first, greedy, err)) != VLM_OK) return st;
    if (greedy &&
        (st = vlm_cuda_download(g->ctx, greedy_id, g->act + 1, sizeof(int32_t), "greedy id", err)))
        return st;
    if (want_logits && !greedy &&
        (st = vlm_cuda_download(g->ctx, logits, dlog,
                                (size_t)((n - first) * c->vocab) * sizeof(float), "logits", err)))
        return st;
    /* With the head here the caller reads only the logits: x stays as it
     * was (phi3_gpu.h). */
    if (!g->head && (st = vlm_cuda_download(g->ctx, x, dx, (size_t)(n * d) * sizeof(float),
                                            "hidden state", err)))
        return st;
    return vlm_cuda_sync(g->ctx, "GPU decoder", err);
}

#else
typedef int phi3_gpu_unused; /* ISO C wants a declaration in every unit */
#endif
