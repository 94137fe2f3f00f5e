/* models/phi3v - see phi3v.h. */
#include "models/phi3v.h"
#include "models/clip_gpu.h"
#include "models/phi3_gpu.h"

#include <string.h>

#include "base/alloc.h"
#include "models/phi3v_tensors.h"

static cpu_weight cw(const vlm_tensor_view *v) {
    return (cpu_weight){v->dtype, v->data};
}

/* ---------------------------------------------------------------------------
 * loading */

vlm_status phi3v_create(const phi3v_config *cfg, const vlm_weight_source *src, cpu_pool *pool,
                        phi3v_model **out, vlm_err *err) {
    *out = NULL;
    vlm_status st = phi3v_config_check(cfg, err);
    if (st != VLM_OK) return st;
    phi3v_model *m = vlm_calloc(1, sizeof *m, VLM_MEM_WEIGHTS);
    if (!m) return vlm_err_set(err, VLM_ERR_NOMEM, "Phi3V model: out of memory");
    m->cfg = *cfg;
    m->pool = pool;
    if ((st = phi3_load(&m->lm, &m->cfg, src, err)) != VLM_OK) goto fail;
    if (cfg->has_vision) {
        if ((st = clip_load(&m->clip, &m->cfg.vision, src, PHI3V_VISION_MODEL, err)) != VLM_OK)
            goto fail;
        const int64_t D4 = 4 * (int64_t)cfg->image_dim_out, d = cfg->hidden;
        vlm_tensor_view v;
        int64_t s_sub[4] = {1, 1, 1, D4}, s_glb[3] = {1, 1, D4};
        if ((st = weights_get(src, "model.vision_embed_tokens.sub_GN", 4, s_sub, &v, err)))
            goto fail;
        m->sub_gn = cw(&v);
        if ((st = weights_get(src, "model.vision_embed_tokens.glb_GN", 3, s_glb, &v, err)))
            goto fail;
        m->glb_gn = cw(&v);
        if ((st = weights_get2(src, "model.vision_embed_tokens.img_projection.0.weight", d, D4, &v,
                               err)))
            goto fail;
        m->proj0_w = cw(&v);
        if ((st = weights_get1(src, "model.vision_embed_tokens.img_projection.0.bias", d, &v, err)))
            goto fail;
        m->proj0_b = cw(&v);
        if ((st = weights_get2(src, "model.vision_embed_tokens.img_projection.2.weight", d, d, &v,
                               err)))
            goto fail;
        m->proj2_w = cw(&v);
        if ((st = weights_get1(src, "model.vision_embed_tokens.img_projection.2.bias", d, &v, err)))
            goto fail;
        m->proj2_b = cw(&v);
    }
    *out = m;
    return VLM_OK;
fail:
    phi3v_free(m);
    return st;
}

void phi3v_free(phi3v_model *m) {
    if (!m) return;
#ifdef VLM_HAVE_CUDA
    phi3_gpu_free(m->gpu);
    clip_gpu_free(m->clip_gpu);
#endif
    clip_free(&m->clip);
    phi3_free(&m->lm);
    vlm_free(m);
}

/* ---------------------------------------------------------------------------
 * HD glue
 *
 * The 2x2 merge, GELU and both projector Linears act on each merged vector
 * alone, and the matmul's bits do not depend on how many rows it is given
 * (docs/model.md, numerics). So the glue runs per crop group: each crop's
 * merged cells are projected and written straight to their rows of the
 * image's output, and the two separators are projected once and copied to
 * every place they stand. Peak memory is one group's features and workspace
 * whatever the crop count; only the output rows grow with it. */

/* Rows of the glue workspace for `group` crops: their merged cells, or the
 * two separator vectors, whichever is more. */
static size_t glue_rows(const phi3v_config *c, int group) {
    size_t mm = (size_t)phi3v_tokens_per_crop(c), rows = (size_t)(group < 1 ? 1 : group) * mm;
    return rows < 2 ? 2 : rows;
}

/* seq [rows][4 Dv] merged vectors, hid [rows][d] after Linear0 + GELU,
 * prj [rows][d] after Linear2. */
size_t phi3v_glue_workspace_floats_cfg(const phi3v_config *c, int group) {
    return glue_rows(c, group) * (4 * (size_t)c->image_dim_out + 2 * (size_t)c->hidden);
}

size_t phi3v_glue_workspace_floats(const phi3v_model *m, int group) {
    return phi3v_glue_workspace_floats_cfg(&m->cfg, group);
}

/* The 2x2-merged vector at merged cell (i, j) of crop features g
 * [grid][grid][Dv]: TL | TR | BL | BR, Dv each (spec §5.1). */
static void merge_cell(const float *g, int grid, int64_t Dv, int i, int j, float *dst) {
    for (int dy = 0; dy < 2; dy++)
        for (int dx = 0; dx < 2; dx++)
            memcpy(dst + (dy * 2 + dx) * Dv, g + ((int64_t)(2 * i + dy) * grid + 2 * j + dx) * Dv,
                   (size_t)Dv * sizeof(float));
}

/* The projector on n vectors: prj[n][d] = Linear2(GELU_erf(Linear0(seq[n][4 Dv]))). */
static void project(const phi3v_model *m, const float *seq, int64_t n, float *hid, float *prj) {
    const int64_t D4 = 4 * (int64_t)m->cfg.image_dim_out, d = m->cfg.hidden;
    cpu_matmul(m->pool, hid, seq, n, D4, d, m->proj0_w, m->proj0_b);
    cpu_gelu_erf(hid, n * d);
    cpu_matmul(m->pool, prj, hid, n, d, d, m->proj2_w, m->proj2_b);
}

/* Output row of merged cell (i, j) of crop t (0: the global view, 1..: the
 * tiles row-major) in the sub_glb order:
 *   sub mosaic: hc*mg rows of wc*mg cells, each row closed by sub_GN;
 *   glb_GN;
 *   global view: mg rows of mg cells, each row closed by sub_GN. */
static int64_t cell_row(int t, int i, int j, int hc, int wc, int mg) {
    const int64_t sub_w = (int64_t)wc * mg + 1;
    if (t == 0) return (int64_t)hc * mg * sub_w + 1 + (int64_t)i * (mg + 1) + j;
    int k = t - 1;
    return ((int64_t)(k / wc) * mg + i) * sub_w + (int64_t)(k % wc) * mg + j;
}

/* Projected cells prj [g][mg*mg][d] of crops [t0, t0+g) to their rows of
 * out; a crop row's mg cells are consecutive output rows. */
typedef struct {
    const phi3v_model *m;
    const float *prj;
    int t0, hc, wc;
    float *out;
} scatter_job;

/* rows [b, e) of the g * mg crop rows: one memcpy of mg cells each */
static void scatter_range(void *ctx, int64_t b, int64_t e, int t) {
    (void)t;
    const scatter_job *j = ctx;
    const int mg = j->m->clip.grid / 2;
    const int64_t d = j->m->cfg.hidden;
    for (int64_t r = b; r < e; r++) {
        const int c = (int)(r / mg), i = (int)(r % mg);
        memcpy(j->out + cell_row(j->t0 + c, i, 0, j->hc, j->wc, mg) * d, j->prj + r * mg * d,
               (size_t)(mg * d) * sizeof(float));
    }
}

/* Projected cells prj [g][mg*mg][d] of crops [t0, t0+g) to their rows of
 * out; a crop row's mg cells are consecutive output rows. Over the pool's
 * threads: 30 MB at 1 + 16 crops. */
static void scatter_crops(const phi3v_model *m, const float *prj, int t0, int g, int hc, int wc,
                          float *out) {
    scatter_job j = {m, prj, t0, hc, wc, out};
    parallel_for(m->pool, (int64_t)g * (m->clip.grid / 2), scatter_range, &j);
}

#ifdef VLM_HAVE_CUDA
/* clip_gpu_encode_project's chunks of projected rows to their places:
 * crops [c0, c0 + cn) of the group that starts at crop t0 of the image. */
typedef struct {
    const phi3v_model *m;
    int t0, hc, wc;
    float *out;
} place_job;

static void place_rows(void *ctx, const float *rows, int c0, int cn) {
    const place_job *pj = ctx;
    scatter_crops(pj->m, rows, pj->t0 + c0, cn, pj->hc, pj->wc, pj->out);
}
#endif

/* The projected separators prj [2][d] (sub_GN, glb_GN) to every row they
 * occupy. */
static void scatter_separators(const phi3v_model *m, const float *prj, int hc, int wc, float *out) {
    const int mg = m->clip.grid / 2;
    const int64_t d = m->cfg.hidden;
    const size_t row = (size_t)d * sizeof(float);
    const int64_t sub_w = (int64_t)wc * mg + 1, glb = (int64_t)hc * mg * sub_w;
    for (int64_t R = 0; R < (int64_t)hc * mg; R++)
        memcpy(out + (R * sub_w + sub_w - 1) * d, prj, row);
    memcpy(out + glb * d, prj + d, row);
    for (int i = 0; i < mg; i++) memcpy(out + (glb + 1 + (int64_t)i * (mg + 1) + mg) * d, prj, row);
}

/* The separators: project sub_GN and glb_GN (one 2-row matmul) and copy them
 * to every row they occupy. */
static void glue_separators(const phi3v_model *m, int hc, int wc, float *out, float *ws) {
    const int64_t D4 = 4 * (int64_t)m->cfg.image_dim_out, d = m->cfg.hidden;
    float *seq = ws, *hid = seq + 2 * D4, *prj = hid + 2 * d;
    cpu_widen(m->sub_gn, 0, seq, D4);
    cpu_widen(m->glb_gn, 0, seq + D4, D4);
    project(m, seq, 2, hid, prj);
    scatter_separators(m, prj, hc, wc, out);
}

/* Crops [t0, t0+g) of an image: CLIP features f[g][grid^2][Dv] -> their
 * merged, projected cells at their rows of out. ws:
 * phi3v_glue_workspace_floats(m, g) floats. */
static void glue_crops(const phi3v_model *m, const float *f, int t0, int g, int hc, int wc,
                       float *out, float *ws) {
    const int grid = m->clip.grid, mg = grid / 2;
    const int64_t Dv = m->cfg.image_dim_out, D4 = 4 * Dv, d = m->cfg.hidden;
    const int64_t crop = (int64_t)grid * grid * Dv, mm = (int64_t)mg * mg;
    const int64_t rows = (int64_t)glue_rows(&m->cfg, g);
    float *seq = ws, *hid = seq + rows * D4, *prj = hid + rows * d;
    for (int c = 0; c < g; c++)
        for (int i = 0; i < mg; i++)
            for (int j = 0; j < mg; j++)
                merge_cell(f + c * crop, grid, Dv, i, j, seq + (c * mm + (int64_t)i * mg + j) * D4);
    project(m, seq, g * mm, hid, prj);
    scatter_crops(m, prj, t0, g, hc, wc, out);
}

/* The whole sequence at once from every crop's features, as the reference
 * builds it (spec §5): kept as the all-at-once path the grouped one is
 * tested against. ws: phi3v_glue_all_workspace_floats(m, hc, wc) floats. */
size_t phi3v_glue_all_workspace_floats(const phi3v_model *m, int hc, int wc) {
    size_t n = (size_t)phi3v_image_tokens(&m->cfg, hc, wc);
    return n * (4 * (size_t)m->cfg.image_dim_out + (size_t)m->cfg.hidden);
}

void phi3v_glue_all(const phi3v_model *m, const float *feats, int hc, int wc, float *out,
                    float *ws) {
    const int grid = m->clip.grid, mg = grid / 2;
    const int64_t Dv = m->cfg.image_dim_out, D4 = 4 * Dv;
    const int64_t crop = (int64_t)grid * grid * Dv;
    const int64_t n = phi3v_image_tokens(&m->cfg, hc, wc);
    float *seq = ws, *hid = ws + n * D4;
    int64_t r = 0;
    /* Sub mosaic: hc*mg rows of wc*mg merged cells, tile (R/mg, C/mg), each
     * row closed by sub_GN. */
    for (int R = 0; R < hc * mg; R++) {
        for (int C = 0; C < wc * mg; C++) {
            int t = (R / mg) * wc + C / mg;
            merge_cell(feats + (1 + (int64_t)t) * crop, grid, Dv, R % mg, C % mg, seq + r++ * D4);
        }
        cpu_widen(m->sub_gn, 0, seq + r++ * D4, D4);
    }
    /* glb_GN, then the global view's mg x mg cells, each row closed by sub_GN. */
    cpu_widen(m->glb_gn, 0, seq + r++ * D4, D4);
    for (int i = 0; i < mg; i++) {
        for (int j = 0; j < mg; j++) merge_cell(feats, grid, Dv, i, j, seq + r++ * D4);
        cpu_widen(m->sub_gn, 0, seq + r++ * D4, D4);
    }
    project(m, seq, n, hid, out);
}

void phi3v_encode_floats(const phi3v_config *c, int hc, int wc, int group, int n_threads,
                         size_t *feat_floats, size_t *ws_floats) {
    int n = 1 + hc * wc, grid = phi3v_vision_grid(c);
    if (group < 1) group = 1;
    if (group > n) group = n;
    *feat_floats = (size_t)group * (size_t)grid * (size_t)grid * (size_t)c->vision.hidden;
    size_t ws = clip_workspace_floats_cfg(&c->vision, group, n_threads);
    size_t glue = phi3v_glue_workspace_floats_cfg(c, group);
    *ws_floats = glue > ws ? glue : ws;
}

vlm_status phi3v_encode_image(phi3v_model *m, const vlm_image_input *img, int group, float *out,
                              vlm_err *err) {
    if (!m->cfg.has_vision)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "model has no vision tower");
    int tiles = img->hc * img->wc;
    if (img->hc < 1 || img->wc < 1 || tiles > 4096 || img->n_crops < 1 + tiles || !img->pixels)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "image: crop grid %dx%d does not fit %d crops (global + tiles)", img->hc,
                           img->wc, img->n_crops);
    int n = 1 + tiles;
    if (group < 1) group = 1;
    if (group > n) group = n;
    const clip_model *c = &m->clip;
    const int64_t S = c->cfg.image_size;
#ifdef VLM_HAVE_CUDA
    if (m->clip_gpu) {
        /* Tower, merge and projector on the GPU; only the projected rows
         * come back, [g * mg^2][d] floats a group (at least the 2 separator
         * rows), scattered to their places here. The CPU tower's workspace
         * ([group * 577][6 * 1024 + 4096] floats: 118 MB for 5 crops, 400 MB
         * for 17) is not needed, and allocating and zeroing it cost more than
         * the tower itself. Not zeroed: every row read is written first. */
        const int64_t d = m->cfg.hidden;
        /* the rows come back in the tower's pinned buffer, a chunk of crops
         * at a time, and each chunk is scattered from there while the next
         * is copied (place_rows); only without a pinned buffer do they need
         * memory of ours */
        const bool pinned = clip_gpu_reserve_staging(m->clip_gpu, group);
        const size_t rows = pinned ? 2 : glue_rows(&m->cfg, group);
        float *prj = vlm_alloc(rows * (size_t)d * sizeof(float), VLM_MEM_IMAGE);
        if (!prj)
            return vlm_err_set(err, VLM_ERR_NOMEM,
                               "image: out of memory for the projected rows of %d crops", group);
        vlm_status st = clip_gpu_project_separators(m->clip_gpu, prj, err);
        if (st == VLM_OK) scatter_separators(m, prj, img->hc, img->wc, out);
        for (int t = 0; t < n && st == VLM_OK; t += group) {
            int g = n - t < group ? n - t : group;
            place_job pj = {m, t, img->hc, img->wc, out};
            st = clip_gpu_encode_project(m->clip_gpu, m->pool, img->pixels + (int64_t)t * 3 * S * S,
                                         g, pinned ? NULL : prj, place_rows, &pj, err);
        }
        vlm_free(prj);
        return st;
    }
#endif
    size_t feat_floats, ws_floats;
    phi3v_encode_floats(&m->cfg, img->hc, img->wc, group, cpu_pool_threads(m->pool), &feat_floats,
                        &ws_floats);
    /* one group's CLIP features, and a workspace the tower and then the glue use */
    float *feats = VLM_NEW_ARRAY(float, feat_floats, VLM_MEM_IMAGE);
    float *ws = VLM_NEW_ARRAY(float, ws_floats, VLM_MEM_ACTIVATIONS);
    if (!feats || !ws) {
        vlm_free(feats);
        vlm_free(ws);
        return vlm_err_set(err, VLM_ERR_NOMEM, "image: out of memory for a group of %d crops",
                           group);
    }
    glue_separators(m, img->hc, img->wc, out, ws);
    for (int t = 0; t < n; t += group) {
        int g = n - t < group ? n - t : group;
        clip_encode(c, m->pool, img->pixels + (int64_t)t * 3 * S * S, g, g, feats, ws);
        glue_crops(m, feats, t, g, img->hc, img->wc, out, ws);
    }
    vlm_free(feats);
    vlm_free(ws);
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * decoder input and forward */

vlm_status phi3v_embed(const phi3v_model *m, const int32_t *ids, int64_t n, const float *img_rows,
                       float *out, vlm_err *err) {
    const int64_t d = m->cfg.hidden;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0) {
            if (!img_rows)
                return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                                   "token %lld is an image placeholder (%d) but no image "
                                   "features were given",
                                   (long long)i, id);
            memcpy(out + i * d, img_rows + k++ * d, (size_t)d * sizeof(float));
        } else if (id >= m->cfg.vocab) {
            return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                               "token %lld: id %d is outside the vocab "
                               "of %d",
                               (long long)i, id, m->cfg.vocab);
        } else {
            phi3_embed(&m->lm, &ids[i], 1, out + i * d);
        }
    }
    return VLM_OK;
}

size_t phi3v_workspace_floats_cfg(const phi3v_config *c, int64_t max_tokens, int64_t max_ctx,
                                  int n_threads) {
    return (size_t)max_tokens * (size_t)c->hidden +
           phi3_workspace_floats_cfg(c, max_tokens, max_ctx, n_threads);
}

size_t phi3v_workspace_floats(const phi3v_model *m, int64_t max_tokens, int64_t max_ctx) {
    return phi3v_workspace_floats_cfg(&m->cfg, max_tokens, max_ctx, cpu_pool_threads(m->pool));
}

vlm_status phi3v_forward(phi3v_model *m, vlm_kv *kv, const vlm_forward_args *a, float *ws,
                         vlm_err *err) {
    if (a->n <= 0) return VLM_OK;
    if (a->pos0 < 0 || a->pos0 + a->n > kv->max_ctx)
        return vlm_err_set(err, VLM_ERR_LIMIT, "positions %lld..%lld exceed the cache of %lld",
                           (long long)a->pos0, (long long)(a->pos0 + a->n - 1),
                           (long long)kv->max_ctx);
    int on_gpu = 0;
#ifdef VLM_HAVE_CUDA
    on_gpu = m->gpu ? phi3_gpu_layers(m->gpu) : 0;
#endif
    if (kv->gpu_layers != on_gpu)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "forward: the KV cache keeps %d layers on the GPU, the model runs %d "
                           "there",
                           kv->gpu_layers, on_gpu);
    float *x = ws;
    vlm_status st = phi3v_embed(m, a->ids, a->n, a->img_rows, x, err);
    if (st != VLM_OK) return st;
    const bool greedy = a->logits_mode == VLM_LOGITS_GREEDY;
    if (greedy && (!a->greedy_id || !a->logits))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "forward: greedy mode needs an id and a logits row of scratch");
    /* the CPU's share computes the last row's logits and takes their argmax */
    int l0 = 0, mode = greedy ? VLM_LOGITS_LAST : a->logits_mode;
#ifdef VLM_HAVE_CUDA
    if (m->gpu) {
        /* The first layers on the GPU, the hidden state back to the host;
         * with the head there too, the logits (or the greedy id) come back
         * instead. */
        st = phi3_gpu_forward(m->gpu, kv, x, a->n, a->pos0, a->rope_long, a->logits_mode, a->logits,
                              a->greedy_id, err);
        if (st != VLM_OK) return st;
        l0 = phi3_gpu_layers(m->gpu);
        if (phi3_gpu_head(m->gpu)) mode = VLM_LOGITS_NONE;
    }
#endif
    if (l0 < m->cfg.n_layers || mode != VLM_LOGITS_NONE) {
        phi3_forward_layers(&m->lm, m->pool, kv, l0, x, a->n, a->pos0, a->rope_long, mode,
                            a->logits, ws + a->n * m->cfg.hidden);
        if (greedy) *a->greedy_id = cpu_argmax(a->logits, m->cfg.vocab);
    }
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * the registry entry */

static vlm_status arch_create(const vlm_config *config, const char *what,
                              const vlm_weight_source *src, cpu_pool *pool,
                              const vlm_placement *place, void **out, vlm_err *err) {
    if (vlm_placement_uses_gpu(place) && !vlm_gpu_built())
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "%s: GPU placement asked for, but this build has no CUDA backend", what);
    phi3v_config cfg;
    vlm_status st = phi3v_config_from_config(config, what, &cfg, err);
    if (st != VLM_OK) return st;
    if (place && (place->gpu_layers < 0 || place->gpu_layers > cfg.n_layers ||
                  (place->head_on_gpu && place->gpu_layers != cfg.n_layers)))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "%s: GPU placement of %d decoder layers of %d%s", what,
                           place->gpu_layers, cfg.n_layers,
                           place->head_on_gpu ? " with the head (needs every layer)" : "");
    phi3v_model *m = NULL;
    st = phi3v_create(&cfg, src, pool, &m, err);
    if (st == VLM_OK && vlm_placement_uses_gpu(place)) {
#ifdef VLM_HAVE_CUDA
        /* The vision tower, 2x2 merge and projector on the GPU, and/or the
         * first decoder layers. */
        if (place->vision_on_gpu && cfg.has_vision) {
            st = clip_gpu_create(&m->clip, &m->clip_gpu, err);
            clip_gpu_projector pj = {m->sub_gn,  m->glb_gn,  m->proj0_w, m->proj0_b,
                                     m->proj2_w, m->proj2_b, cfg.hidden};
            if (st == VLM_OK) st = clip_gpu_set_projector(m->clip_gpu, &pj, err);
        }
        if (st == VLM_OK && (place->gpu_layers > 0 || place->head_on_gpu))
            st = phi3_gpu_create(&m->lm, place->gpu_layers, place->head_on_gpu, &m->gpu, err);
        if (st != VLM_OK) vlm_err_prefix(err, "%s", what);
#endif
        if (st != VLM_OK) {
            phi3v_free(m);
            m = NULL;
        }
    }
    *out = m;
    return st;
}

static void arch_destroy(void *model) {
    phi3v_free(model);
}

void phi3v_info_from_config(const phi3v_config *c, vlm_model_info *o) {
    memset(o, 0, sizeof *o);
    o->arch = "Phi3VForCausalLM";
    o->n_layers = c->n_layers;
    o->kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    o->hidden = c->hidden;
    o->vocab = c->vocab;
    o->max_positions = c->max_position_embeddings;
    o->rope_switch_len = c->rope_kind == PHI3_ROPE_SU ? c->original_max_position_embeddings : 0;
    o->bos_id = c->bos_id;
    o->eos_id = c->eos_id;
    o->has_vision = c->has_vision;
    o->image_size = c->vision.image_size;
}

static void arch_info(const void *model, vlm_model_info *o) {
    const phi3v_model *m = model;
    phi3v_info_from_config(&m->cfg, o);
#ifdef VLM_HAVE_CUDA
    o->gpu_layers = m->gpu ? phi3_gpu_layers(m->gpu) : 0;
#endif
}

static int arch_image_tokens(const void *model, int hc, int wc) {
    return phi3v_image_tokens(&((const phi3v_model *)model)->cfg, hc, wc);
}

static vlm_status arch_encode_image(void *model, const vlm_image_input *img, int group, float *out,
                                    vlm_err *err) {
    return phi3v_encode_image(model, img, group, out, err);
}

static size_t arch_workspace_floats(const void *model, int64_t max_tokens, int64_t max_ctx) {
    return phi3v_workspace_floats(model, max_tokens, max_ctx);
}

static vlm_status arch_forward(void *model, vlm_kv *kv, const vlm_forward_args *a, float *ws,
                               vlm_err *err) {
    return phi3v_forward(model, kv, a, ws, err);
}

const vlm_arch phi3v_arch = {
    "Phi3VForCausalLM", arch_create,       arch_destroy,          arch_info,
    arch_image_tokens,  arch_encode_image, arch_workspace_floats, arch_forward,
};
