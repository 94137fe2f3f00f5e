/* models/clip - see clip.h. The forward pass reads top to bottom as the
 * architecture does: patches, CLS + positions, pre-LN, then pre-LN encoder
 * layers (attention, quick_gelu MLP), then the chosen hidden state. */
#include "models/clip.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

static cpu_weight cw(const vlm_tensor_view *v) {
    return (cpu_weight){v->dtype, v->data};
}

/* ---------------------------------------------------------------------------
 * loading */

vlm_status clip_load(clip_model *m, const clip_config *cfg, const vlm_weight_source *src,
                     const char *prefix, vlm_err *err) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int64_t D = cfg->hidden, I = cfg->intermediate, P = cfg->patch_size;
    m->grid = cfg->image_size / cfg->patch_size;
    m->n_pos = m->grid * m->grid + 1;
    m->n_run = cfg->n_layers + 1 + cfg->layer_idx;
    if (m->n_run < 0 || m->n_run > cfg->n_layers)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vision layer_idx %d with %d layers",
                           cfg->layer_idx, cfg->n_layers);
    char name[512];
    vlm_tensor_view v;
    vlm_status st;
#define GET1(field, suffix, d0)                                                                    \
    do {                                                                                           \
        snprintf(name, sizeof name, "%s.%s", prefix, suffix);                                      \
        if ((st = weights_get1(src, name, (d0), &v, err)) != VLM_OK) goto fail;                    \
        field = cw(&v);                                                                            \
    } while (0)
#define GET2(field, suffix, d0, d1)                                                                \
    do {                                                                                           \
        snprintf(name, sizeof name, "%s.%s", prefix, suffix);                                      \
        if ((st = weights_get2(src, name, (d0), (d1), &v, err)) != VLM_OK) goto fail;              \
        field = cw(&v);                                                                            \
    } while (0)
    GET1(m->class_emb, "embeddings.class_embedding", D);
    {
        int64_t shape[4] = {D, 3, P, P};
        snprintf(name, sizeof name, "%s.embeddings.patch_embedding.weight", prefix);
        if ((st = weights_get(src, name, 4, shape, &v, err)) != VLM_OK) goto fail;
        m->patch_w = cw(&v);
    }
    GET2(m->pos_emb, "embeddings.position_embedding.weight", m->n_pos, D);
    GET1(m->pre_ln_w, "pre_layrnorm.weight", D);
    GET1(m->pre_ln_b, "pre_layrnorm.bias", D);
    if (m->n_run > 0) {
        m->layers = VLM_NEW_ARRAY(clip_layer, (size_t)m->n_run, VLM_MEM_WEIGHTS);
        if (!m->layers) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "vision tower: out of memory for %d layers",
                             m->n_run);
            goto fail;
        }
    }
    for (int l = 0; l < m->n_run; l++) {
        clip_layer *L = &m->layers[l];
        char s[128];
#define LAYER1(field, what, d0)                                                                    \
    do {                                                                                           \
        snprintf(s, sizeof s, "encoder.layers.%d.%s", l, what);                                    \
        GET1(field, s, d0);                                                                        \
    } while (0)
#define LAYER2(field, what, d0, d1)                                                                \
    do {                                                                                           \
        snprintf(s, sizeof s, "encoder.layers.%d.%s", l, what);                                    \
        GET2(field, s, d0, d1);                                                                    \
    } while (0)
        LAYER1(L->ln1_w, "layer_norm1.weight", D);
        LAYER1(L->ln1_b, "layer_norm1.bias", D);
        LAYER2(L->q_w, "self_attn.q_proj.weight", D, D);
        LAYER1(L->q_b, "self_attn.q_proj.bias", D);
        LAYER2(L->k_w, "self_attn.k_proj.weight", D, D);
        LAYER1(L->k_b, "self_attn.k_proj.bias", D);
        LAYER2(L->v_w, "self_attn.v_proj.weight", D, D);
        LAYER1(L->v_b, "self_attn.v_proj.bias", D);
        LAYER2(L->o_w, "self_attn.out_proj.weight", D, D);
        LAYER1(L->o_b, "self_attn.out_proj.bias", D);
        LAYER1(L->ln2_w, "layer_norm2.weight", D);
        LAYER1(L->ln2_b, "layer_norm2.bias", D);
        LAYER2(L->fc1_w, "mlp.fc1.weight", I, D);
        LAYER1(L->fc1_b, "mlp.fc1.bias", I);
        LAYER2(L->fc2_w, "mlp.fc2.weight", D, I);
        LAYER1(L->fc2_b, "mlp.fc2.bias", D);
#undef LAYER1
#undef LAYER2
    }
#undef GET1
#undef GET2
    return VLM_OK;
fail:
    clip_free(m);
    return st;
}

void clip_free(clip_model *m) {
    if (!m) return;
    vlm_free(m->layers);
    m->layers = NULL;
}

/* ---------------------------------------------------------------------------
 * forward */

/* Workspace layout for T = group * n_pos tokens:
 *   x    [T][D]   residual stream
 *   h    [T][D]   normed input of a block
 *   q, k, v [T][D]
 *   att  [T][D]   attention output (heads concatenated)
 *   mlp  [T][I]
 *   col  [grid^2][3*P*P] im2col of one crop
 *   sc   [n_threads][n_pos] attention scores */
size_t clip_workspace_floats_cfg(const clip_config *cfg, int group, int n_threads) {
    size_t grid = (size_t)(cfg->image_size / cfg->patch_size), n_pos = grid * grid + 1;
    size_t T = (size_t)group * n_pos, D = (size_t)cfg->hidden, P = (size_t)cfg->patch_size;
    return T * D * 6 + T * (size_t)cfg->intermediate + grid * grid * 3 * P * P +
           (size_t)(n_threads < 1 ? 1 : n_threads) * n_pos;
}

static size_t up64(size_t f) {
    return (f + 63) / 64 * 64;
}

/* Projector rows of a group of gc crops: (grid/2)^2 merged cells a crop,
 * at least 2 (the two separators are projected in the same buffer). */
static size_t proj_rows(const clip_config *cfg, int gc) {
    const size_t mg = (size_t)(cfg->image_size / cfg->patch_size) / 2, rows = (size_t)gc * mg * mg;
    return rows < 2 ? 2 : rows;
}

void clip_gpu_layout_cfg(const clip_config *cfg, int gc, int64_t proj_d, clip_gpu_layout *out) {
    const size_t grid = (size_t)(cfg->image_size / cfg->patch_size), np = grid * grid + 1;
    const size_t T = (size_t)gc * np, D = (size_t)cfg->hidden, I = (size_t)cfg->intermediate;
    const size_t P = (size_t)cfg->patch_size, S = (size_t)cfg->image_size;
    const size_t col = 3 * P * P, wide = I > col ? I : col, half = I > D ? I : D;
    size_t at = 0;
    out->x = at, at += up64(T * D);
    out->h = at, at += up64(T * D);
    /* q, k, v back to back, unpadded: the packed product writes [T][3D] */
    out->q = at, out->k = at + T * D, out->v = at + 2 * T * D, at += up64(3 * T * D);
    out->att = at, at += up64(T * D);
    out->mlp = at, at += up64(T * wide);
    out->xb = at, at += up64((T * half + 1) / 2);
    out->x16 = at, at += up64((T * D + 1) / 2);
    out->px = at, at += up64((size_t)gc * 3 * S * S);
    out->seq = out->hid = out->prj = at;
    if (proj_d > 0) {
        const size_t rows = proj_rows(cfg, gc);
        out->seq = at, at += up64(rows * 4 * D);
        out->hid = at, at += up64(rows * (size_t)proj_d);
        out->prj = at, at += up64(rows * (size_t)proj_d);
    }
    out->total = at;
}

size_t clip_gpu_staging_bytes_cfg(const clip_config *cfg, int gc, int64_t proj_d) {
    const size_t S = (size_t)cfg->image_size, px = (size_t)gc * 3 * S * S;
    const size_t rows = proj_d > 0 ? proj_rows(cfg, gc) * (size_t)proj_d : 0;
    return (px > rows ? px : rows) * sizeof(float);
}

size_t clip_workspace_floats(const clip_model *m, int group, int n_threads) {
    return clip_workspace_floats_cfg(&m->cfg, group, n_threads);
}

/* One group of g crops: pixels [g][3][S][S] -> out [g][grid^2][D]. */
static void clip_encode_group(const clip_model *m, cpu_pool *pool, const float *pixels, int g,
                              float *out, float *ws) {
    const clip_config *c = &m->cfg;
    const int64_t D = c->hidden, I = c->intermediate, NP = m->n_pos, G2 = NP - 1;
    const int64_t T = (int64_t)g * NP, S = c->image_size;
    const int hd = c->hidden / c->n_heads;
    float *x = ws, *h = x + T * D, *q = h + T * D, *k = q + T * D, *v = k + T * D, *att = v + T * D,
          *mlp = att + T * D, *col = mlp + T * I,
          *sc = col + G2 * 3 * c->patch_size * c->patch_size;

    /* Embeddings: [CLS, patches] + positions, then pre_layrnorm. */
    for (int i = 0; i < g; i++) {
        float *xc = x + (int64_t)i * NP * D;
        cpu_widen(m->class_emb, 0, xc, D);
        cpu_patch_embed(pool, xc + D, pixels + (int64_t)i * 3 * S * S, (int)S, c->patch_size, D,
                        m->patch_w, col);
        for (int64_t p = 0; p < NP; p++) {
            cpu_widen(m->pos_emb, p * D, h, D);
            cpu_add(xc + p * D, h, D);
        }
    }
    cpu_layernorm(x, x, T, D, m->pre_ln_w, m->pre_ln_b, c->ln_eps);

    const float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < m->n_run; l++) {
        const clip_layer *L = &m->layers[l];
        /* h = x + out_proj(MHA(layer_norm1(x))) */
        cpu_layernorm(h, x, T, D, L->ln1_w, L->ln1_b, c->ln_eps);
        cpu_matmul(pool, q, h, T, D, D, L->q_w, L->q_b);
        cpu_matmul(pool, k, h, T, D, D, L->k_w, L->k_b);
        cpu_matmul(pool, v, h, T, D, D, L->v_w, L->v_b);
        for (int i = 0; i < g; i++) {
            int64_t o = (int64_t)i * NP * D;
            cpu_weight kw = {VLM_DTYPE_F32, k + o}, vw = {VLM_DTYPE_F32, v + o};
            cpu_attention(pool, att + o, q + o, D, kw, vw, D, NP, NP, c->n_heads, c->n_heads, hd,
                          false, 0, scale, sc);
        }
        cpu_matmul(pool, h, att, T, D, D, L->o_w, L->o_b);
        cpu_add(x, h, T * D);
        /* x = x + fc2(quick_gelu(fc1(layer_norm2(x)))) */
        cpu_layernorm(h, x, T, D, L->ln2_w, L->ln2_b, c->ln_eps);
        cpu_matmul(pool, mlp, h, T, D, I, L->fc1_w, L->fc1_b);
        cpu_quick_gelu(mlp, T * I);
        cpu_matmul(pool, h, mlp, T, I, D, L->fc2_w, L->fc2_b);
        cpu_add(x, h, T * D);
    }
    /* Drop CLS: position 0 of each crop. */
    for (int i = 0; i < g; i++)
        memcpy(out + (int64_t)i * G2 * D, x + ((int64_t)i * NP + 1) * D,
               (size_t)(G2 * D) * sizeof(float));
}

void clip_encode(const clip_model *m, cpu_pool *pool, const float *pixels, int n, int group,
                 float *out, float *ws) {
    const int64_t S = m->cfg.image_size, D = m->cfg.hidden, G2 = m->n_pos - 1;
    if (group < 1) group = 1;
    for (int i = 0; i < n; i += group) {
        int g = n - i < group ? n - i : group;
        clip_encode_group(m, pool, pixels + (int64_t)i * 3 * S * S, g, out + (int64_t)i * G2 * D,
                          ws);
    }
}
