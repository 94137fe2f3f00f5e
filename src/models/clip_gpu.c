/* models/clip_gpu - see clip_gpu.h. */
#include "models/clip_gpu.h"

#ifdef VLM_HAVE_CUDA

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include "backend/cpu/parallel.h"
#include "backend/cuda/cuda.h"
#include "base/alloc.h"
#include "base/log.h"
#include "tensor/dtype.h"
#include "tensor/quant.h"

/* q, k and v are packed at upload into qkv_w [3D][D] and qkv_b [3D] (one
 * GEMM instead of three) when their weights share one dtype; otherwise
 * qkv_w.data is NULL and the three stay apart. The products' biases are
 * held in f32 (cuBLASLt's bias epilogue takes the output's type: f32 for
 * out_proj and fc2, which add into the f32 residual), except that BF16
 * biases of q/k/v_proj and fc1 stay BF16: those products write bf16 on the
 * 16-bit path (runtime/planner.c counts the same). */
typedef struct gpu_clip_layer {
    vlm_cuda_weight ln1_w, ln1_b, q_w, k_w, v_w, o_w, q_b, k_b, v_b, o_b, ln2_w, ln2_b, fc1_w,
        fc1_b, fc2_w, fc2_b;
    vlm_cuda_weight qkv_w, qkv_b;
    /* BF16 or F16 when every matrix of the layer has that one type: the
     * 16-bit path (each product's input rounded once, by the op before
     * it); F32 for the f32-activation path (other types, mixed types) */
    vlm_dtype half_t;
} gpu_clip_layer;

struct clip_gpu {
    const clip_model *m;
    vlm_cuda_ctx *ctx;
    gpu_clip_layer *L;
    vlm_cuda_weight class_emb, patch_w, pos_emb, pre_ln_w, pre_ln_b;
    int32_t *pos_ids; /* device [n_pos]: 0..n_pos-1, rows of pos_emb gathered by embed_rows */
    void **owned;
    int n_owned;
    bool bf16_attn;  /* the layers' products round activations to bf16 (BF16 weights) */
    bool gelu16;     /* fc1 writes bf16 (bias in the epilogue), quick-GELU in place */
    bool res16;      /* the residual stream in bf16 (every layer BF16, not f32 mode) */
    int refuse_at;   /* VLM_CUDA_RES16_REFUSE_AT (tests): see residual_acc */
    int acc16_calls; /* bf16-residual products of the current crop group */
    bool px16;       /* pixels go up as bf16 (the patch product rounds them so anyway) */
    float *act;      /* device, act_floats (clip_gpu_layout) */
    size_t act_floats;
    /* pinned host staging for the pixels and the projected rows, or NULL
     * (refused: the copies go through pageable memory) */
    void *stage;
    size_t stage_bytes;
    /* the projector (clip_gpu_set_projector), or has_proj false */
    bool has_proj;
    int64_t d;
    float *sep; /* host [2][d]: the projected separators, once computed; NULL before */
    vlm_cuda_weight sub_gn, glb_gn, proj0_w, proj0_b, proj2_w, proj2_b;
};

static vlm_status upload(clip_gpu *g, cpu_weight w, int64_t n, const char *name, int layer,
                         vlm_cuda_weight *out, vlm_err *err) {
    if (w.dtype != VLM_DTYPE_F32 && w.dtype != VLM_DTYPE_F16 && w.dtype != VLM_DTYPE_BF16 &&
        w.dtype != VLM_DTYPE_Q8_0 && w.dtype != VLM_DTYPE_Q4_0)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "vision layer %d %s: %s weights have no CUDA kernel", layer, name,
                           vlm_dtype_get(w.dtype)->name);
    uint64_t bytes = 0;
    if (!vlm_dtype_nbytes(w.dtype, (uint64_t)n, &bytes))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vision layer %d %s: bad size", layer, name);
    void *d = vlm_dev_alloc((size_t)bytes, VLM_MEM_WEIGHTS);
    if (!d)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "vision layer %d %s: out of GPU memory for %llu bytes of weights", layer,
                           name, (unsigned long long)bytes);
    g->owned[g->n_owned++] = d;
    *out = (vlm_cuda_weight){w.dtype, d};
    return vlm_cuda_upload(g->ctx, d, w.data, (size_t)bytes, name, err);
}

/* The type a bias is held in on the device: BF16 where keep16 and it is
 * stored BF16, else F32. */
static vlm_dtype bias_type(cpu_weight w, bool keep16) {
    return keep16 && w.dtype == VLM_DTYPE_BF16 ? VLM_DTYPE_BF16 : VLM_DTYPE_F32;
}

/* A bias ([n], any float dtype) to the device at dst, as bias_type says. */
static vlm_status upload_bias_to(clip_gpu *g, cpu_weight w, int64_t n, bool keep16, void *dst,
                                 const char *name, int layer, vlm_err *err) {
    if (bias_type(w, keep16) == VLM_DTYPE_BF16)
        return vlm_cuda_upload(g->ctx, dst, w.data, (size_t)n * 2, name, err);
    float *f = VLM_NEW_ARRAY(float, (size_t)n, VLM_MEM_SCRATCH);
    if (!f)
        return vlm_err_set(err, VLM_ERR_NOMEM, "vision layer %d %s: out of host memory", layer,
                           name);
    vlm_status st = VLM_OK;
    if (!vlm_to_f32(w.dtype, w.data, f, (size_t)n))
        st = vlm_err_set(err, VLM_ERR_UNSUPPORTED, "vision layer %d %s: %s bias", layer, name,
                         vlm_dtype_get(w.dtype)->name);
    else
        st = vlm_cuda_upload(g->ctx, dst, f, (size_t)n * sizeof(float), name, err);
    vlm_free(f);
    return st;
}

/* A product's bias [n], held on the device as bias_type says. */
static vlm_status upload_bias(clip_gpu *g, cpu_weight w, int64_t n, bool keep16, const char *name,
                              int layer, vlm_cuda_weight *out, vlm_err *err) {
    const vlm_dtype t = bias_type(w, keep16);
    const size_t bytes = (size_t)n * (t == VLM_DTYPE_BF16 ? 2 : sizeof(float));
    void *d = vlm_dev_alloc(bytes, VLM_MEM_WEIGHTS);
    if (!d)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "vision layer %d %s: out of GPU memory for %zu bytes of weights", layer,
                           name, bytes);
    g->owned[g->n_owned++] = d;
    *out = (vlm_cuda_weight){t, d};
    return upload_bias_to(g, w, n, keep16, d, name, layer, err);
}

/* q, k, v weights ([D][D] each) into one [3D][D] buffer and their biases
 * into one [3D] (BF16 where they are, else f32), rows in q, k, v order,
 * so that row j of the product is q | k | v of token j. The caller has
 * checked that the weights share a type and the biases are all BF16 or
 * none. */
static vlm_status upload_qkv(clip_gpu *g, const clip_layer *H, int64_t D, int layer,
                             gpu_clip_layer *G, vlm_err *err) {
    const cpu_weight w[3] = {H->q_w, H->k_w, H->v_w}, b[3] = {H->q_b, H->k_b, H->v_b};
    const bool b16 = b[0].dtype == VLM_DTYPE_BF16; /* the caller: all three or none */
    uint64_t wb = 0, bb = (uint64_t)D * (b16 ? 2 : sizeof(float));
    if (!vlm_dtype_nbytes(w[0].dtype, (uint64_t)(D * D), &wb))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vision layer %d qkv: bad size", layer);
    char *dw = vlm_dev_alloc((size_t)(3 * wb), VLM_MEM_WEIGHTS);
    if (dw) g->owned[g->n_owned++] = dw;
    char *db = dw ? vlm_dev_alloc((size_t)(3 * bb), VLM_MEM_WEIGHTS) : NULL;
    if (db) g->owned[g->n_owned++] = db;
    if (!dw || !db)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "vision layer %d q/k/v_proj: out of GPU memory for %llu bytes of "
                           "packed weights",
                           layer, (unsigned long long)(3 * (wb + bb)));
    static const char *const names[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++) {
        vlm_status st = vlm_cuda_upload(g->ctx, dw + i * wb, w[i].data, (size_t)wb, names[i], err);
        if (st == VLM_OK) st = upload_bias_to(g, b[i], D, b16, db + i * bb, names[i], layer, err);
        if (st != VLM_OK) return st;
    }
    G->qkv_w = (vlm_cuda_weight){w[0].dtype, dw};
    G->qkv_b = (vlm_cuda_weight){b16 ? VLM_DTYPE_BF16 : VLM_DTYPE_F32, db};
    return VLM_OK;
}

vlm_status clip_gpu_create(const clip_model *m, clip_gpu **out, vlm_err *err) {
    *out = NULL;
    const clip_config *c = &m->cfg;
    clip_gpu *g = vlm_calloc(1, sizeof *g, VLM_MEM_OTHER);
    if (!g) return vlm_err_set(err, VLM_ERR_NOMEM, "GPU vision tower: out of host memory");
    g->m = m;
    /* workspace: bf16 activations of 1024 rows of the MLP width */
    vlm_status st = vlm_cuda_ctx_create(&g->ctx, (size_t)1024 * (size_t)c->intermediate * 2, err);
    if (st != VLM_OK) goto fail;
    g->L = VLM_NEW_ARRAY(gpu_clip_layer, (size_t)(m->n_run > 0 ? m->n_run : 1), VLM_MEM_OTHER);
    g->owned = VLM_NEW_ARRAY(void *, (size_t)m->n_run * 18 + 12, VLM_MEM_OTHER);
    int32_t *ids = VLM_NEW_ARRAY(int32_t, (size_t)m->n_pos, VLM_MEM_SCRATCH);
    if (!g->L || !g->owned || !ids) {
        vlm_free(ids);
        st = vlm_err_set(err, VLM_ERR_NOMEM, "GPU vision tower: out of host memory");
        goto fail;
    }
    for (int i = 0; i < m->n_pos; i++) ids[i] = i;
    g->pos_ids = vlm_dev_alloc((size_t)m->n_pos * sizeof(int32_t), VLM_MEM_OTHER);
    st = g->pos_ids ? vlm_cuda_upload(g->ctx, g->pos_ids, ids, (size_t)m->n_pos * sizeof(int32_t),
                                      "position ids", err)
                    : vlm_err_set(err, VLM_ERR_NOMEM,
                                  "GPU vision tower: out of GPU memory for position ids");
    vlm_free(ids);
    if (st != VLM_OK) goto fail;
    const int64_t D = c->hidden, I = c->intermediate, P = c->patch_size;
    if ((st = upload(g, m->class_emb, D, "class_embedding", -1, &g->class_emb, err)) ||
        (st = upload(g, m->patch_w, D * 3 * P * P, "patch_embedding", -1, &g->patch_w, err)) ||
        (st = upload(g, m->pos_emb, (int64_t)m->n_pos * D, "position_embedding", -1, &g->pos_emb,
                     err)) ||
        (st = upload(g, m->pre_ln_w, D, "pre_layrnorm.weight", -1, &g->pre_ln_w, err)) ||
        (st = upload(g, m->pre_ln_b, D, "pre_layrnorm.bias", -1, &g->pre_ln_b, err)))
        goto fail;
    /* The residual stream in bf16, as a bf16 reference keeps its hidden
     * states: the pre-LayerNorm's output rounded to bf16, out_proj and fc2
     * adding into it in their f32 accumulators and rounding once
     * (matmul_h_acc16, their biases then held BF16, as cuBLASLt's bf16
     * epilogue takes them), the LayerNorms reading it. Half the bytes of
     * the f32 stream for the two residual products and the two LayerNorms
     * of every layer. Every layer on the BF16 path with BF16 biases, f32
     * mode off; VLM_CUDA_RES16=0 keeps the f32 stream. */
    const char *e = getenv("VLM_CUDA_RES16");
    const bool res_want = !(e && !strcmp(e, "0")) && !vlm_cuda_f32_mode(g->ctx);
    for (int l = 0; l < m->n_run; l++) {
        const clip_layer *H = &m->layers[l];
        gpu_clip_layer *G = &g->L[l];
        /* packed where the weights share a type and the biases are all
         * BF16 or none (each bias is then held as bias_type says alone) */
        const int n16 = (H->q_b.dtype == VLM_DTYPE_BF16) + (H->k_b.dtype == VLM_DTYPE_BF16) +
                        (H->v_b.dtype == VLM_DTYPE_BF16);
        bool pack =
            H->q_w.dtype == H->k_w.dtype && H->q_w.dtype == H->v_w.dtype && (n16 == 0 || n16 == 3);
        if (pack) {
            if ((st = upload_qkv(g, H, D, l, G, err)) != VLM_OK) goto fail;
        } else if ((st = upload(g, H->q_w, D * D, "q_proj.weight", l, &G->q_w, err)) ||
                   (st = upload_bias(g, H->q_b, D, true, "q_proj.bias", l, &G->q_b, err)) ||
                   (st = upload(g, H->k_w, D * D, "k_proj.weight", l, &G->k_w, err)) ||
                   (st = upload_bias(g, H->k_b, D, true, "k_proj.bias", l, &G->k_b, err)) ||
                   (st = upload(g, H->v_w, D * D, "v_proj.weight", l, &G->v_w, err)) ||
                   (st = upload_bias(g, H->v_b, D, true, "v_proj.bias", l, &G->v_b, err)))
            goto fail;
        if ((st = upload(g, H->ln1_w, D, "layer_norm1.weight", l, &G->ln1_w, err)) ||
            (st = upload(g, H->ln1_b, D, "layer_norm1.bias", l, &G->ln1_b, err)) ||
            (st = upload(g, H->o_w, D * D, "out_proj.weight", l, &G->o_w, err)) ||
            (st = upload_bias(g, H->o_b, D, res_want, "out_proj.bias", l, &G->o_b, err)) ||
            (st = upload(g, H->ln2_w, D, "layer_norm2.weight", l, &G->ln2_w, err)) ||
            (st = upload(g, H->ln2_b, D, "layer_norm2.bias", l, &G->ln2_b, err)) ||
            (st = upload(g, H->fc1_w, I * D, "fc1.weight", l, &G->fc1_w, err)) ||
            (st = upload_bias(g, H->fc1_b, I, true, "fc1.bias", l, &G->fc1_b, err)) ||
            (st = upload(g, H->fc2_w, D * I, "fc2.weight", l, &G->fc2_w, err)) ||
            (st = upload_bias(g, H->fc2_b, D, res_want, "fc2.bias", l, &G->fc2_b, err)))
            goto fail;
        /* the 16-bit path: one BF16/F16 type for every matrix, not f32 mode */
        vlm_dtype t = H->o_w.dtype;
        bool half = (t == VLM_DTYPE_BF16 || t == VLM_DTYPE_F16) && H->q_w.dtype == t &&
                    H->k_w.dtype == t && H->v_w.dtype == t && H->fc1_w.dtype == t &&
                    H->fc2_w.dtype == t && !vlm_cuda_f32_mode(g->ctx);
        G->half_t = half ? t : VLM_DTYPE_F32;
    }
    /* Attention may run on tensor cores (q, K, V rounded to bf16) only where
     * every product before it already rounds its activations to bf16: BF16
     * weights, f32 mode off (vlm_cuda_attention_seqs checks the mode). */
    g->bf16_attn = m->n_run > 0;
    for (int l = 0; l < m->n_run; l++) {
        const clip_layer *H = &m->layers[l];
        if (H->q_w.dtype != VLM_DTYPE_BF16 || H->k_w.dtype != VLM_DTYPE_BF16 ||
            H->v_w.dtype != VLM_DTYPE_BF16)
            g->bf16_attn = false;
    }
    /* VLM_CUDA_GELU16=0 keeps fc1's f32 output and the one-pass bias +
     * quick-GELU + rounding (one rounding, not two); VLM_CUDA_PX16=0 sends
     * the pixels up as f32 */
    e = getenv("VLM_CUDA_GELU16");
    g->gelu16 = !(e && !strcmp(e, "0"));
    g->res16 = res_want && m->n_run > 0;
    for (int l = 0; l < m->n_run; l++) {
        const gpu_clip_layer *G = &g->L[l];
        if (G->half_t != VLM_DTYPE_BF16 || G->o_b.dtype != VLM_DTYPE_BF16 ||
            G->fc2_b.dtype != VLM_DTYPE_BF16)
            g->res16 = false;
    }
    e = getenv("VLM_CUDA_RES16_REFUSE_AT");
    g->refuse_at = e ? atoi(e) : 0;
    e = getenv("VLM_CUDA_PX16");
    g->px16 = !(e && !strcmp(e, "0")) && vlm_cuda_pixels16(g->ctx, g->patch_w);
    *out = g;
    return VLM_OK;
fail:
    clip_gpu_free(g);
    return st;
}

void clip_gpu_free(clip_gpu *g) {
    if (!g) return;
    if (g->ctx) vlm_cuda_sync(g->ctx, "GPU vision tower free", NULL);
    for (int i = 0; i < g->n_owned; i++) vlm_dev_free(g->owned[i]);
    vlm_dev_free(g->pos_ids);
    vlm_dev_free(g->act);
    vlm_cuda_host_free(g->stage, g->stage_bytes, VLM_MEM_IMAGE);
    vlm_cuda_ctx_destroy(g->ctx);
    vlm_free(g->sep);
    vlm_free(g->owned);
    vlm_free(g->L);
    vlm_free(g);
}

#define RUN(call)                                                                                  \
    do {                                                                                           \
        if ((st = (call)) != VLM_OK) return st;                                                    \
    } while (0)

vlm_status clip_gpu_set_projector(clip_gpu *g, const clip_gpu_projector *p, vlm_err *err) {
    const int64_t D4 = 4 * (int64_t)g->m->cfg.hidden, d = p->hidden;
    vlm_status st;
    vlm_free(g->sep); /* projected by the projector before */
    g->sep = NULL;
    if ((st = upload(g, p->sub_gn, D4, "sub_GN", -1, &g->sub_gn, err)) ||
        (st = upload(g, p->glb_gn, D4, "glb_GN", -1, &g->glb_gn, err)) ||
        (st = upload(g, p->proj0_w, d * D4, "img_projection.0.weight", -1, &g->proj0_w, err)) ||
        (st = upload(g, p->proj0_b, d, "img_projection.0.bias", -1, &g->proj0_b, err)) ||
        (st = upload(g, p->proj2_w, d * d, "img_projection.2.weight", -1, &g->proj2_w, err)) ||
        (st = upload(g, p->proj2_b, d, "img_projection.2.bias", -1, &g->proj2_b, err)))
        return st;
    g->d = d;
    g->has_proj = true;
    return VLM_OK;
}

/* Device activations of at least need floats. */
static vlm_status grow(clip_gpu *g, size_t need, const char *what, vlm_err *err) {
    if (need <= g->act_floats) return VLM_OK;
    vlm_dev_free(g->act);
    g->act_floats = 0;
    g->act = vlm_dev_alloc(need * sizeof(float), VLM_MEM_ACTIVATIONS);
    if (!g->act)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "GPU vision tower: out of GPU memory for %s (%zu bytes)", what,
                           need * sizeof(float));
    g->act_floats = need;
    return VLM_OK;
}

/* The pinned staging buffer of at least need bytes; NULL when the runtime
 * refuses it (the copies then go through pageable memory: slower, never an
 * error). Grown like the activations. */
static void *staging(clip_gpu *g, size_t need) {
    if (g->stage && g->stage_bytes >= need) return g->stage;
    vlm_cuda_host_free(g->stage, g->stage_bytes, VLM_MEM_IMAGE);
    g->stage = vlm_cuda_host_alloc(need, VLM_MEM_IMAGE);
    g->stage_bytes = g->stage ? need : 0;
    return g->stage;
}

/* The pixels into the pinned buffer over the pool's threads, in blocks of
 * 32 Ki values, at the host's memory bandwidth rather than one core's:
 * copied as f32, or rounded to bf16 (to16) as the patch product would
 * round them on the device. */
typedef struct {
    void *dst;
    const float *src;
    size_t n;
    bool to16;
} pool_copy;

#define PX_BLOCK ((size_t)1 << 15)

static void pool_copy_range(void *ctx, int64_t b, int64_t e, int t) {
    (void)t;
    const pool_copy *pc = ctx;
    for (int64_t i = b; i < e; i++) {
        size_t o = (size_t)i * PX_BLOCK, n = pc->n - o < PX_BLOCK ? pc->n - o : PX_BLOCK;
        if (!pc->to16) {
            memcpy((float *)pc->dst + o, pc->src + o, n * sizeof(float));
            continue;
        }
        uint16_t *d = (uint16_t *)pc->dst + o;
        const float *sp = pc->src + o;
        for (size_t j = 0; j < n; j++) d[j] = vlm_f32_to_bf16(sp[j]);
    }
}

static void copy_par(cpu_pool *pool, void *dst, const float *src, size_t n, bool to16) {
    pool_copy pc = {dst, src, n, to16};
    parallel_for(pool, (int64_t)((n + PX_BLOCK - 1) / PX_BLOCK), pool_copy_range, &pc);
}

bool clip_gpu_reserve_staging(clip_gpu *g, int n) {
    return staging(g, clip_gpu_staging_bytes_cfg(&g->m->cfg, n, g->has_proj ? g->d : 0)) != NULL;
}

/* One layer's q|k|v products and attention over every crop of the group
 * (one launch), from the LayerNorm output (xb in 16 bits on the 16-bit
 * path, h in f32 otherwise). The output is left where the output
 * projection reads it: xb in 16 bits on the 16-bit path, att in f32
 * otherwise. gc crops of NP rows (T = gc NP); q, k, v are consecutive
 * [T][D] buffers ([T][3D] when q|k|v are packed). */
static vlm_status attend(clip_gpu *g, const gpu_clip_layer *L, int gc, void *xb, float *h, float *q,
                         float *k, float *v, float *att, float *mlp, vlm_err *err) {
    const clip_config *c = &g->m->cfg;
    const int64_t D = c->hidden, I = c->intermediate, NP = g->m->n_pos, T = (int64_t)gc * NP;
    const int hd = c->hidden / c->n_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const vlm_dtype ht = L->half_t;
    const bool hp = ht != VLM_DTYPE_F32;
    vlm_status st;
    /* Packed BF16 q|k|v on the 16-bit path: the product writes q|k|v as
     * bf16 into the MLP buffer (idle until fc1: [T][I] f32 holds [T][3D]
     * bf16 when 2I >= 3D), attention reads them there and writes its
     * output as bf16 into xb: no rounding passes. Where the kernel does not
     * take the shapes, the f32 q|k|v below (nothing of xb was changed). */
    if (hp && g->bf16_attn && L->qkv_w.data && ht == VLM_DTYPE_BF16 && 2 * I >= 3 * D) {
        uint16_t *qkv16 = (uint16_t *)mlp;
        vlm_err e2 = {0};
        st = vlm_cuda_matmul_h_out16(g->ctx, qkv16, xb, T, D, 3 * D, L->qkv_w, L->qkv_b, &e2);
        if (st == VLM_OK)
            st =
                vlm_cuda_attention_seqs_h(g->ctx, xb, qkv16, 3 * D, qkv16 + D, qkv16 + 2 * D, 3 * D,
                                          gc, NP, NP, c->n_heads, c->n_heads, hd, scale, &e2);
        if (st != VLM_ERR_UNSUPPORTED) {
            if (st != VLM_OK) *err = e2;
            return st;
        }
    }
    int64_t qs = D;
    if (L->qkv_w.data) {
        qs = 3 * D;
        if (hp)
            RUN(vlm_cuda_matmul_h(g->ctx, q, xb, T, D, 3 * D, L->qkv_w, L->qkv_b, err));
        else
            RUN(vlm_cuda_matmul(g->ctx, q, h, T, D, 3 * D, L->qkv_w, L->qkv_b, err));
    } else if (hp) {
        RUN(vlm_cuda_matmul_h(g->ctx, q, xb, T, D, D, L->q_w, L->q_b, err));
        RUN(vlm_cuda_matmul_h(g->ctx, k, xb, T, D, D, L->k_w, L->k_b, err));
        RUN(vlm_cuda_matmul_h(g->ctx, v, xb, T, D, D, L->v_w, L->v_b, err));
    } else {
        RUN(vlm_cuda_matmul(g->ctx, q, h, T, D, D, L->q_w, L->q_b, err));
        RUN(vlm_cuda_matmul(g->ctx, k, h, T, D, D, L->k_w, L->k_b, err));
        RUN(vlm_cuda_matmul(g->ctx, v, h, T, D, D, L->v_w, L->v_b, err));
    }
    const float *kp = L->qkv_w.data ? q + D : k, *vp = L->qkv_w.data ? q + 2 * D : v;
    vlm_cuda_weight kw = {VLM_DTYPE_F32, kp}, vw = {VLM_DTYPE_F32, vp};
    int64_t kvs = qs;
    if (hp && g->bf16_attn) {
        /* K and V rounded to bf16 once, into h (unused by the 16-bit path:
         * [T][D] f32 holds [2][T][D] bf16), so the tensor-core attention
         * streams half the bytes with cp.async instead of rounding every
         * tile for each of a head's query blocks: the same rounding it does
         * itself, so the same result */
        uint16_t *kb = (uint16_t *)h, *vb = kb + T * D;
        RUN(vlm_cuda_store_rows_strided(g->ctx, kb, VLM_DTYPE_BF16, 0, kp, qs, T, D, err));
        RUN(vlm_cuda_store_rows_strided(g->ctx, vb, VLM_DTYPE_BF16, 0, vp, qs, T, D, err));
        kw = (vlm_cuda_weight){VLM_DTYPE_BF16, kb};
        vw = (vlm_cuda_weight){VLM_DTYPE_BF16, vb};
        kvs = D;
    }
    RUN(vlm_cuda_attention_seqs(g->ctx, att, q, qs, kw, vw, kvs, gc, NP, NP, c->n_heads, c->n_heads,
                                hd, false, 0, scale, g->bf16_attn, err));
    return hp ? vlm_cuda_to_half(g->ctx, xb, ht, att, T * D, err) : VLM_OK;
}

/* x += xh W^T + b, the residual products (out_proj, fc2) on the 16-bit
 * path: into the bf16 stream x16 while *res16 holds, else into the f32 x.
 * Where cuBLASLt takes no bf16-residual product, the stream is widened
 * into x once and the rest of the tower runs on it (*res16 cleared).
 * VLM_CUDA_RES16_REFUSE_AT=N (read when the tower is created; for tests)
 * refuses a group's N-th such product as cuBLASLt would. */
static vlm_status residual_acc(clip_gpu *g, bool *res16, float *x, void *x16, const void *xh,
                               int64_t T, int64_t in, int64_t out, vlm_cuda_weight w,
                               vlm_cuda_weight b, vlm_err *err) {
    vlm_status st;
    if (*res16) {
        vlm_err e2 = {0};
        if (g->refuse_at > 0 && ++g->acc16_calls >= g->refuse_at)
            st = VLM_ERR_UNSUPPORTED;
        else
            st = vlm_cuda_matmul_h_acc16(g->ctx, x16, xh, T, in, out, w, b, &e2);
        if (st != VLM_ERR_UNSUPPORTED) {
            if (st != VLM_OK) *err = e2;
            return st;
        }
        *res16 = false;
        RUN(vlm_cuda_bf16_to_f32(g->ctx, x, x16, T * out, err));
    }
    return vlm_cuda_matmul_h_acc(g->ctx, x, xh, T, in, out, w, b, err);
}

/* The MLP on the 16-bit path, from LN2's output in xb:
 * x += fc2(quick_gelu(fc1(xb))), biases included. With gelu16 and a BF16
 * fc1 bias, fc1 writes bf16 into mlp with the bias and quick-GELU applied
 * (matmul_h_qgelu16: in the product's epilogue on Hopper, else a pass in
 * place over fc1's bf16 output) and fc2 reads it; otherwise fc1 writes f32
 * into mlp and one pass adds the bias, applies quick-GELU and rounds into
 * xb. */
static vlm_status mlp16(clip_gpu *g, const gpu_clip_layer *L, int64_t T, bool *res16, float *x,
                        void *x16, void *xb, float *mlp, vlm_err *err) {
    const clip_config *c = &g->m->cfg;
    const int64_t D = c->hidden, I = c->intermediate;
    vlm_status st;
    if (g->gelu16 && L->half_t == VLM_DTYPE_BF16 && L->fc1_b.dtype == VLM_DTYPE_BF16 &&
        (T * I) % 8 == 0 && (uintptr_t)mlp % 16 == 0) {
        vlm_err e2 = {0};
        st = vlm_cuda_matmul_h_qgelu16(g->ctx, mlp, xb, T, D, I, L->fc1_w, L->fc1_b, &e2);
        if (st == VLM_OK)
            return residual_acc(g, res16, x, x16, mlp, T, I, D, L->fc2_w, L->fc2_b, err);
        if (st != VLM_ERR_UNSUPPORTED) {
            *err = e2;
            return st;
        }
    }
    const vlm_cuda_weight none = {VLM_DTYPE_F32, NULL};
    RUN(vlm_cuda_matmul_h(g->ctx, mlp, xb, T, D, I, L->fc1_w, none, err));
    RUN(vlm_cuda_bias_quick_gelu_h(g->ctx, xb, L->half_t, mlp, T, I, L->fc1_b, err));
    return residual_acc(g, res16, x, x16, xb, T, I, D, L->fc2_w, L->fc2_b, err);
}

/* One group of gc crops, as clip_encode_group; with out NULL the features
 * stay on the device (rows 1.. of each crop of the activations' x). The
 * layout is clip_gpu_layout_cfg's (the planner counts the same). */
static vlm_status encode_group(clip_gpu *g, cpu_pool *pool, const float *pixels, int gc, float *out,
                               vlm_err *err) {
    const clip_model *m = g->m;
    const clip_config *c = &m->cfg;
    const int64_t D = c->hidden, I = c->intermediate, NP = m->n_pos, G2 = NP - 1;
    const int64_t T = (int64_t)gc * NP, S = c->image_size, P = c->patch_size;
    const int64_t proj_d = g->has_proj ? g->d : 0;
    clip_gpu_layout lo;
    clip_gpu_layout_cfg(c, gc, proj_d, &lo);
    vlm_status st = grow(g, lo.total, "a crop group", err);
    if (st != VLM_OK) return st;
    float *A = g->act, *x = A + lo.x, *h = A + lo.h, *q = A + lo.q, *k = A + lo.k, *v = A + lo.v,
          *att = A + lo.att, *mlp = A + lo.mlp, *px = A + lo.px;
    void *xb = A + lo.xb, *x16 = A + lo.x16;
    bool res16 = g->res16;
    g->acc16_calls = 0;
    /* Pixels up through the pinned buffer (written by the pool's threads,
     * as bf16 where px16 says the product rounds them so), four crops at a
     * time: the next chunk is written while the last one's DMA runs. Or
     * straight from the caller's pageable memory, as f32. */
    const size_t crop_px = 3 * (size_t)(S * S);
    void *sb = staging(g, clip_gpu_staging_bytes_cfg(c, gc, proj_d));
    const bool px16 = sb && g->px16;
    const size_t esz = px16 ? 2 : sizeof(float);
    vlm_cuda_mark(g->ctx, 0);
    if (sb) {
        for (int c0 = 0; c0 < gc; c0 += 4) {
            const int cn = gc - c0 < 4 ? gc - c0 : 4;
            const size_t o = (size_t)c0 * crop_px, n = (size_t)cn * crop_px;
            copy_par(pool, (char *)sb + o * esz, pixels + o, n, px16);
            RUN(vlm_cuda_upload_async(g->ctx, (char *)px + o * esz, (char *)sb + o * esz, n * esz,
                                      "crop pixels", err));
        }
    } else {
        RUN(vlm_cuda_upload(g->ctx, px, pixels, (size_t)gc * crop_px * sizeof(float), "crop pixels",
                            err));
    }
    vlm_cuda_mark(g->ctx, 1);
    /* every crop's patches in one im2col and one product (the im2col in
     * mlp, the patch rows in h), then class and positions in one launch */
    RUN(vlm_cuda_patch_embed_crops(g->ctx, x, px, px16 ? VLM_DTYPE_BF16 : VLM_DTYPE_F32, gc, (int)S,
                                   (int)P, D, g->patch_w, g->class_emb, g->pos_emb, mlp, h, err));
    if (res16)
        RUN(vlm_cuda_layernorm_h(g->ctx, x16, VLM_DTYPE_BF16, x, T, D, g->pre_ln_w, g->pre_ln_b,
                                 c->ln_eps, err));
    else
        RUN(vlm_cuda_layernorm(g->ctx, x, x, T, D, g->pre_ln_w, g->pre_ln_b, c->ln_eps, err));
    for (int l = 0; l < m->n_run; l++) {
        const gpu_clip_layer *L = &g->L[l];
        const vlm_dtype ht = L->half_t;
        const bool hp = ht != VLM_DTYPE_F32;
        if (res16)
            RUN(vlm_cuda_layernorm_h16(g->ctx, xb, ht, x16, T, D, L->ln1_w, L->ln1_b, c->ln_eps,
                                       err));
        else if (hp)
            RUN(vlm_cuda_layernorm_h(g->ctx, xb, ht, x, T, D, L->ln1_w, L->ln1_b, c->ln_eps, err));
        else
            RUN(vlm_cuda_layernorm(g->ctx, h, x, T, D, L->ln1_w, L->ln1_b, c->ln_eps, err));
        RUN(attend(g, L, gc, xb, h, q, k, v, att, mlp, err));
        if (hp) {
            /* x += att Wo^T + bo (bias in the product's epilogue); then the
             * MLP: LN2 -> 16 bits, fc1 (f32 out), bias + quick-GELU -> 16
             * bits, x += fc2 (+ bias) */
            RUN(residual_acc(g, &res16, x, x16, xb, T, D, D, L->o_w, L->o_b, err));
            if (res16)
                RUN(vlm_cuda_layernorm_h16(g->ctx, xb, ht, x16, T, D, L->ln2_w, L->ln2_b, c->ln_eps,
                                           err));
            else
                RUN(vlm_cuda_layernorm_h(g->ctx, xb, ht, x, T, D, L->ln2_w, L->ln2_b, c->ln_eps,
                                         err));
            RUN(mlp16(g, L, T, &res16, x, x16, xb, mlp, err));
        } else {
            /* x += att Wo^T + bo: the residual add fused into the product */
            RUN(vlm_cuda_matmul_acc(g->ctx, x, att, T, D, D, L->o_w, err));
            RUN(vlm_cuda_add_bias(g->ctx, x, T, D, L->o_b, err));
            RUN(vlm_cuda_layernorm(g->ctx, h, x, T, D, L->ln2_w, L->ln2_b, c->ln_eps, err));
            RUN(vlm_cuda_matmul(g->ctx, mlp, h, T, D, I, L->fc1_w, L->fc1_b, err));
            RUN(vlm_cuda_quick_gelu(g->ctx, mlp, T * I, err));
            RUN(vlm_cuda_matmul_acc(g->ctx, x, mlp, T, I, D, L->fc2_w, err));
            RUN(vlm_cuda_add_bias(g->ctx, x, T, D, L->fc2_b, err));
        }
    }
    /* the features as f32 where the merge and the projector read them */
    if (res16) RUN(vlm_cuda_bf16_to_f32(g->ctx, x, x16, T * D, err));
    vlm_cuda_mark(g->ctx, 2);
    if (!out) return VLM_OK;
    /* without CLS: rows 1..NP-1 of each crop */
    for (int i = 0; i < gc; i++)
        RUN(vlm_cuda_download(g->ctx, out + (int64_t)i * G2 * D, x + ((int64_t)i * NP + 1) * D,
                              (size_t)(G2 * D) * sizeof(float), "vision features", err));
    return vlm_cuda_sync(g->ctx, "GPU vision tower", err);
}

vlm_status clip_gpu_encode(clip_gpu *g, const float *pixels, int n, int group, float *out,
                           vlm_err *err) {
    const int64_t S = g->m->cfg.image_size, D = g->m->cfg.hidden, G2 = g->m->n_pos - 1;
    if (group < 1) group = 1;
    for (int i = 0; i < n; i += group) {
        int gc = n - i < group ? n - i : group;
        vlm_status st = encode_group(g, NULL, pixels + (int64_t)i * 3 * S * S, gc,
                                     out + (int64_t)i * G2 * D, err);
        if (st != VLM_OK) return st;
    }
    return VLM_OK;
}

vlm_status clip_gpu_encode_project(clip_gpu *g, cpu_pool *pool, const float *pixels, int n,
                                   float *out, clip_rows_fn rows_fn, void *fn_ctx, vlm_err *err) {
    if (!g->has_proj)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "GPU vision tower: no projector set");
    vlm_status st = encode_group(g, pool, pixels, n, NULL, err);
    if (st != VLM_OK) return st;
    const int64_t D = g->m->cfg.hidden, D4 = 4 * D, d = g->d, mg = g->m->grid / 2;
    const int64_t rows = (int64_t)n * mg * mg;
    clip_gpu_layout lo;
    clip_gpu_layout_cfg(&g->m->cfg, n, d, &lo);
    float *x = g->act + lo.x, *seq = g->act + lo.seq, *hid = g->act + lo.hid,
          *prj = g->act + lo.prj;
    RUN(vlm_cuda_merge2x2(g->ctx, seq, x, g->m->n_pos, 1, g->m->grid, D, n, err));
    RUN(vlm_cuda_matmul(g->ctx, hid, seq, rows, D4, d, g->proj0_w, g->proj0_b, err));
    RUN(vlm_cuda_gelu_erf(g->ctx, hid, rows * d, err));
    RUN(vlm_cuda_matmul(g->ctx, prj, hid, rows, d, d, g->proj2_w, g->proj2_b, err));
    /* Down into the pinned buffer encode_group sized for them (into out
     * where there is none), in up to VLM_CUDA_FENCES chunks of whole crops,
     * each handed to rows_fn as soon as it has arrived: the caller places
     * one chunk while the next is still copied. */
    const size_t bytes = (size_t)(rows * d) * sizeof(float);
    float *dst = g->stage && g->stage_bytes >= bytes ? (float *)g->stage : out;
    if (!dst)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "GPU image projector: no pinned buffer and no output given");
    const int n_chunks = n < VLM_CUDA_FENCES ? n : VLM_CUDA_FENCES;
    const int per = (n + n_chunks - 1) / n_chunks;
    const size_t crop_floats = (size_t)(mg * mg * d);
    vlm_cuda_mark(g->ctx, 3);
    int k = 0;
    for (int c0 = 0; c0 < n; c0 += per, k++) {
        const int cn = n - c0 < per ? n - c0 : per;
        const size_t o = (size_t)c0 * crop_floats, nb = (size_t)cn * crop_floats * sizeof(float);
        RUN(dst == out
                ? vlm_cuda_download(g->ctx, dst + o, prj + o, nb, "projected image rows", err)
                : vlm_cuda_download_async(g->ctx, dst + o, prj + o, nb, "projected image rows",
                                          err));
        RUN(vlm_cuda_fence_record(g->ctx, k, err));
    }
    vlm_cuda_mark(g->ctx, 4);
    k = 0;
    for (int c0 = 0; c0 < n; c0 += per, k++) {
        const int cn = n - c0 < per ? n - c0 : per;
        RUN(vlm_cuda_fence_wait(g->ctx, k, "GPU image projector", err));
        if (rows_fn) rows_fn(fn_ctx, dst + (size_t)c0 * crop_floats, c0, cn);
    }
    st = vlm_cuda_sync(g->ctx, "GPU image projector", err);
    if (st == VLM_OK && vlm_cuda_timing(g->ctx))
        VLM_INFO("GPU vision, %d crops (GPU time): pixels up %.3f ms, tower %.3f ms, merge and "
                 "projector %.3f ms, rows down %.3f ms; from the upload to the rows %.3f ms",
                 n, vlm_cuda_span_ms(g->ctx, 0, 1), vlm_cuda_span_ms(g->ctx, 1, 2),
                 vlm_cuda_span_ms(g->ctx, 2, 3), vlm_cuda_span_ms(g->ctx, 3, 4),
                 vlm_cuda_span_ms(g->ctx, 0, 4));
    return st;
}

vlm_status clip_gpu_project_separators(clip_gpu *g, float *out, vlm_err *err) {
    if (!g->has_proj)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "GPU vision tower: no projector set");
    const int64_t D4 = 4 * (int64_t)g->m->cfg.hidden, d = g->d;
    const size_t bytes = (size_t)(2 * d) * sizeof(float);
    /* the same two rows for every image: computed once, then copied */
    if (g->sep) {
        memcpy(out, g->sep, bytes);
        return VLM_OK;
    }
    /* the layout of one crop (the planner's smallest group): its
     * projector rows hold the two separators */
    clip_gpu_layout lo;
    clip_gpu_layout_cfg(&g->m->cfg, 1, d, &lo);
    vlm_status st = grow(g, lo.total, "the separators", err);
    if (st != VLM_OK) return st;
    float *seq = g->act + lo.seq, *hid = g->act + lo.hid, *prj = g->act + lo.prj;
    /* row 0 of each one-row table (pos_ids[0] is 0) */
    RUN(vlm_cuda_embed_rows(g->ctx, seq, g->sub_gn, D4, g->pos_ids, 1, err));
    RUN(vlm_cuda_embed_rows(g->ctx, seq + D4, g->glb_gn, D4, g->pos_ids, 1, err));
    RUN(vlm_cuda_matmul(g->ctx, hid, seq, 2, D4, d, g->proj0_w, g->proj0_b, err));
    RUN(vlm_cuda_gelu_erf(g->ctx, hid, 2 * d, err));
    RUN(vlm_cuda_matmul(g->ctx, prj, hid, 2, d, d, g->proj2_w, g->proj2_b, err));
    RUN(vlm_cuda_download(g->ctx, out, prj, bytes, "separators", err));
    RUN(vlm_cuda_sync(g->ctx, "GPU image projector", err));
    g->sep = vlm_alloc(bytes, VLM_MEM_IMAGE); /* NULL: computed again next time */
    if (g->sep) memcpy(g->sep, out, bytes);
    return VLM_OK;
}

#else
typedef int clip_gpu_unused; /* ISO C wants a declaration in every unit */
#endif
