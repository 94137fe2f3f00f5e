/* models/phi3 - see phi3.h. Structs and loading first, then the forward pass
 * in the order the data flows. */
#include "models/phi3.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

static cpu_weight cw(const vlm_tensor_view *v) {
    return (cpu_weight){v->dtype, v->data};
}

/* ---------------------------------------------------------------------------
 * loading */

vlm_status phi3_load(phi3_model *m, const phi3v_config *c, const vlm_weight_source *src,
                     vlm_err *err) {
    memset(m, 0, sizeof *m);
    m->cfg = c;
    const int64_t d = c->hidden, ff = c->intermediate, hd = c->head_dim;
    const int64_t qkv_rows = (c->n_heads + 2 * (int64_t)c->n_kv_heads) * hd;
    vlm_tensor_view v;
    vlm_status st;
    char name[256];
#define GET(field, nm, ...)                                                                        \
    do {                                                                                           \
        int64_t shape_[] = {__VA_ARGS__};                                                          \
        if ((st = weights_get(src, nm, (int)(sizeof shape_ / sizeof shape_[0]), shape_, &v,        \
                              err)) != VLM_OK)                                                     \
            goto fail;                                                                             \
        field = cw(&v);                                                                            \
    } while (0)
    GET(m->embed, "model.embed_tokens.weight", c->vocab, d);
    GET(m->norm, "model.norm.weight", d);
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else
        GET(m->lm_head, "lm_head.weight", c->vocab, d);
    m->layers = VLM_NEW_ARRAY(phi3_layer, (size_t)c->n_layers, VLM_MEM_WEIGHTS);
    if (!m->layers) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "decoder: out of memory for %d layers", c->n_layers);
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        phi3_layer *L = &m->layers[l];
#define LNAME(what) (snprintf(name, sizeof name, "model.layers.%d.%s", l, what), name)
        GET(L->in_norm, LNAME("input_layernorm.weight"), d);
        GET(L->qkv, LNAME("self_attn.qkv_proj.weight"), qkv_rows, d);
        GET(L->o, LNAME("self_attn.o_proj.weight"), d, c->n_heads * hd);
        GET(L->post_norm, LNAME("post_attention_layernorm.weight"), d);
        GET(L->gate_up, LNAME("mlp.gate_up_proj.weight"), 2 * ff, d);
        GET(L->down, LNAME("mlp.down_proj.weight"), d, ff);
#undef LNAME
    }
#undef GET
    if (c->rope_kind == PHI3_ROPE_SU) {
        cpu_rope_inv_freq(m->inv_freq_short, c->head_dim, c->rope_theta, c->short_factor);
        cpu_rope_inv_freq(m->inv_freq_long, c->head_dim, c->rope_theta, c->long_factor);
        m->mscale = phi3v_rope_mscale(c);
    } else {
        cpu_rope_inv_freq(m->inv_freq_short, c->head_dim, c->rope_theta, NULL);
        memcpy(m->inv_freq_long, m->inv_freq_short, sizeof m->inv_freq_long);
        m->mscale = 1.0;
    }
    return VLM_OK;
fail:
    phi3_free(m);
    return st;
}

void phi3_free(phi3_model *m) {
    if (!m) return;
    vlm_free(m->layers);
    m->layers = NULL;
}

void phi3_embed(const phi3_model *m, const int32_t *ids, int64_t n, float *out) {
    cpu_embed_rows(out, m->embed, m->cfg->hidden, ids, n);
}

/* ---------------------------------------------------------------------------
 * forward */

/* Workspace for T = max_tokens:
 *   xb   [T][d]       normed input of a block
 *   qkv  [T][(H+2KV)*hd]
 *   att  [T][H*hd]
 *   gu   [T][2*ff]
 *   hmid [T][ff]
 *   cos, sin [T][hd/2]
 *   sc   [n_threads][max_ctx] attention scores */
size_t phi3_workspace_floats(const phi3_model *m, int64_t max_tokens, int64_t max_ctx,
                             int n_threads) {
    return phi3_workspace_floats_cfg(m->cfg, max_tokens, max_ctx, n_threads);
}

size_t phi3_workspace_floats_cfg(const phi3v_config *c, int64_t max_tokens, int64_t max_ctx,
                                 int n_threads) {
    size_t T = (size_t)max_tokens, hd = (size_t)c->head_dim;
    size_t qkv = ((size_t)c->n_heads + 2 * (size_t)c->n_kv_heads) * hd;
    return T * ((size_t)c->hidden + qkv + (size_t)c->n_heads * hd + 3 * (size_t)c->intermediate +
                hd) +
           (size_t)(n_threads < 1 ? 1 : n_threads) * (size_t)max_ctx;
}

void phi3_forward(const phi3_model *m, cpu_pool *pool, vlm_kv *kv, float *x, int64_t n,
                  int64_t pos0, bool rope_long, int logits_mode, float *logits, float *ws) {
    phi3_forward_layers(m, pool, kv, 0, x, n, pos0, rope_long, logits_mode, logits, ws);
}

void phi3_forward_layers(const phi3_model *m, cpu_pool *pool, vlm_kv *kv, int l0, float *x,
                         int64_t n, int64_t pos0, bool rope_long, int logits_mode, float *logits,
                         float *ws) {
    const phi3v_config *c = m->cfg;
    const int64_t d = c->hidden, ff = c->intermediate, hd = c->head_dim;
    const int H = c->n_heads, KV = c->n_kv_heads;
    const int64_t qd = H * hd, kvd = KV * hd, qkvd = qd + 2 * kvd, half = hd / 2;
    float *xb = ws, *qkv = xb + n * d, *att = qkv + n * qkvd, *gu = att + n * qd,
          *hmid = gu + n * 2 * ff, *cos_t = hmid + n * ff, *sin_t = cos_t + n * half,
          *sc = sin_t + n * half;
    const cpu_weight nob = {VLM_DTYPE_F32, NULL};

    /* cos/sin for the new positions, shared by every layer. */
    cpu_rope_cos_sin(cos_t, sin_t, pos0, n, (int)hd,
                     rope_long ? m->inv_freq_long : m->inv_freq_short, m->mscale);
    const float scale = (float)(1.0 / sqrt((double)hd));

    for (int l = l0; l < c->n_layers; l++) {
        const phi3_layer *L = &m->layers[l];
        /* layer l's element offset; the host cache starts at the first CPU layer */
        const int64_t lo = (int64_t)(l - kv->gpu_layers) * kv->max_ctx * kv->kv_dim;

        /* x = x + o_proj(attention(rope(qkv_proj(rmsnorm(x))))) */
        cpu_rmsnorm(xb, x, n, d, L->in_norm, c->rms_eps);
        cpu_matmul(pool, qkv, xb, n, d, qkvd, L->qkv, nob);
        cpu_rope_apply(qkv, n, qkvd, H, (int)hd, cos_t, sin_t);       /* Q */
        cpu_rope_apply(qkv + qd, n, qkvd, KV, (int)hd, cos_t, sin_t); /* K */
        /* K/V enter the cache first (rounded if it is bf16), and attention
         * reads every key from there, the new ones included: so a token sees
         * the same keys whether it came in a chunk or alone. */
        for (int64_t t = 0; t < n; t++) {
            cpu_store_rows(kv->k, kv->dtype, lo + (pos0 + t) * kvd, qkv + t * qkvd + qd, kvd);
            cpu_store_rows(kv->v, kv->dtype, lo + (pos0 + t) * kvd, qkv + t * qkvd + qd + kvd, kvd);
        }
        size_t esz = kv->dtype == VLM_DTYPE_BF16 ? 2 : 4;
        cpu_weight kc = {kv->dtype, (const char *)kv->k + (size_t)lo * esz};
        cpu_weight vc = {kv->dtype, (const char *)kv->v + (size_t)lo * esz};
        cpu_attention(pool, att, qkv, qkvd, kc, vc, kvd, n, pos0 + n, H, KV, (int)hd, true, pos0,
                      scale, sc);
        cpu_matmul(pool, xb, att, n, qd, d, L->o, nob);
        cpu_add(x, xb, n * d);

        /* x = x + down(up * silu(gate)), gate_up = gate_up_proj(rmsnorm(x)) */
        cpu_rmsnorm(xb, x, n, d, L->post_norm, c->rms_eps);
        cpu_matmul(pool, gu, xb, n, d, 2 * ff, L->gate_up, nob);
        cpu_silu_mul(hmid, gu, n, ff);
        cpu_matmul(pool, xb, hmid, n, ff, d, L->down, nob);
        cpu_add(x, xb, n * d);
    }

    if (logits_mode == VLM_LOGITS_NONE || !logits) return;
    int64_t first = logits_mode == VLM_LOGITS_LAST ? n - 1 : 0;
    cpu_rmsnorm(xb, x + first * d, n - first, d, m->norm, c->rms_eps);
    cpu_matmul(pool, logits, xb, n - first, d, c->vocab, m->lm_head, nob);
}
