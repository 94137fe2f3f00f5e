/* bench_model - time the Phi-3.5-vision forward pass at full width on
 * synthetic bf16 weights, with fewer layers so it fits a small machine, and
 * extrapolate to the full depth.
 *
 *   bench_model [lm_layers=2] [clip_layers_run=2] [threads=0] [prompt=64] [decode=8]
 *
 * Prints one JSON object: per-layer and extrapolated times for the vision
 * tower (one 336x336 crop), prefill and decode. A benchmark, not a test. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "models/phi3v.h"
#include "runtime/session.h"

typedef struct synth {
    const phi3v_config *c;
    void *blocks[4096];
    int n;
    uint64_t bytes;
} synth;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* Shape of a checkpoint tensor from its name (spec §8). */
static int shape_of(const phi3v_config *c, const char *name, int64_t *s) {
    const int64_t d = c->hidden, ff = c->intermediate, D = c->vision.hidden,
                  I = c->vision.intermediate, P = c->vision.patch_size;
    const int64_t g = c->vision.image_size / P;
#define ENDS(x) (strlen(name) >= strlen(x) && !strcmp(name + strlen(name) - strlen(x), x))
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight"))
        return s[0] = c->vocab, s[1] = d, 2;
    if (strstr(name, "vision_model")) {
        if (ENDS("class_embedding")) return s[0] = D, 1;
        if (ENDS("patch_embedding.weight")) return s[0] = D, s[1] = 3, s[2] = P, s[3] = P, 4;
        if (ENDS("position_embedding.weight")) return s[0] = g * g + 1, s[1] = D, 2;
        if (ENDS("fc1.weight")) return s[0] = I, s[1] = D, 2;
        if (ENDS("fc1.bias")) return s[0] = I, 1;
        if (ENDS("fc2.weight")) return s[0] = D, s[1] = I, 2;
        if (ENDS("proj.weight")) return s[0] = D, s[1] = D, 2;
        return s[0] = D, 1;
    }
    if (ENDS("sub_GN")) return s[0] = 1, s[1] = 1, s[2] = 1, s[3] = 4 * D, 4;
    if (ENDS("glb_GN")) return s[0] = 1, s[1] = 1, s[2] = 4 * D, 3;
    if (ENDS("img_projection.0.weight")) return s[0] = d, s[1] = 4 * D, 2;
    if (ENDS("img_projection.2.weight")) return s[0] = d, s[1] = d, 2;
    if (ENDS("qkv_proj.weight")) return s[0] = 3 * d, s[1] = d, 2;
    if (ENDS("o_proj.weight")) return s[0] = d, s[1] = d, 2;
    if (ENDS("gate_up_proj.weight")) return s[0] = 2 * ff, s[1] = d, 2;
    if (ENDS("down_proj.weight")) return s[0] = d, s[1] = ff, 2;
    return s[0] = d, 1; /* norms, biases */
#undef ENDS
}

static vlm_status synth_lookup(void *ctx, const char *name, vlm_tensor_view *out, vlm_err *err) {
    synth *sy = ctx;
    memset(out, 0, sizeof *out);
    out->ndim = shape_of(sy->c, name, out->shape);
    int64_t n = 1;
    for (int i = 0; i < out->ndim; i++) n *= out->shape[i];
    uint16_t *p = vlm_alloc((size_t)n * 2, VLM_MEM_WEIGHTS);
    if (!p || sy->n == 4096) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", name);
    /* Small values around +-0.02 (bf16 0x3ca0 ~ 0.0195), varied per element. */
    uint32_t x = 2463534242u;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = (uint16_t)((x & 1 ? 0xbca0 : 0x3ca0) + ((x >> 8) & 0x3f));
    }
    sy->blocks[sy->n++] = p;
    sy->bytes += (uint64_t)n * 2;
    out->dtype = VLM_DTYPE_BF16;
    out->data = p;
    return VLM_OK;
}

int main(int argc, char **argv) {
    int lm_layers = argc > 1 ? atoi(argv[1]) : 2;
    int clip_run = argc > 2 ? atoi(argv[2]) : 2;
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    int prompt = argc > 4 ? atoi(argv[4]) : 64;
    int n_decode = argc > 5 ? atoi(argv[5]) : 8;
    phi3v_config c;
    phi3v_config_default(&c);
    c.n_layers = lm_layers;
    c.vision.n_layers = clip_run + 1; /* layer_idx -2: all but the last run */
    synth sy = {&c, {0}, 0, 0};
    vlm_weight_source src = {synth_lookup, &sy};
    vlm_err err;
    cpu_pool *pool = NULL;
    phi3v_model *pm = NULL;
    if (cpu_pool_create(threads, &pool, &err) || phi3v_create(&c, &src, pool, &pm, &err)) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        return 1;
    }
    arch_model am = {&phi3v_arch, pm, {0}};
    phi3v_arch.info(pm, &am.info);

    /* Vision: one crop through clip_run layers (the global view of a 1x1
     * grid is crop 0; time the tower on it). */
    const int S = c.vision.image_size;
    float *px = VLM_NEW_ARRAY(float, (size_t)3 * S * S, VLM_MEM_IMAGE);
    float *feat = VLM_NEW_ARRAY(float, (size_t)576 * 1024, VLM_MEM_IMAGE);
    float *ws = VLM_NEW_ARRAY(float, clip_workspace_floats(&pm->clip, 1, cpu_pool_threads(pool)),
                              VLM_MEM_ACTIVATIONS);
    for (int i = 0; i < 3 * S * S; i++) px[i] = sinf((float)i * 0.01f);
    double t0 = now_ms();
    clip_encode(&pm->clip, pool, px, 1, 1, feat, ws);
    double clip_ms = now_ms() - t0;

    session_options o;
    session_options_init(&o);
    o.max_ctx = 1024;
    o.chunk = 64;
    session *s = NULL;
    if (session_create(&am, &o, &s, &err)) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = VLM_NEW_ARRAY(int32_t, (size_t)prompt, VLM_MEM_OTHER);
    for (int i = 0; i < prompt; i++) ids[i] = 1 + (i * 7919) % 32000;
    t0 = now_ms();
    session_append(s, ids, prompt, NULL, 0, NULL, &err);
    double prefill_ms = now_ms() - t0;
    t0 = now_ms();
    for (int i = 0; i < n_decode; i++) session_append(s, &ids[i], 1, NULL, 0, NULL, &err);
    double decode_ms = (now_ms() - t0) / n_decode;

    /* The lm_head (32064 x 3072) is in every call; measure it alone to
     * extrapolate the layers. */
    float *xrow = VLM_NEW_ARRAY(float, (size_t)64 * 3072, VLM_MEM_ACTIVATIONS);
    float *lrow = VLM_NEW_ARRAY(float, (size_t)32064, VLM_MEM_ACTIVATIONS);
    cpu_weight nob = {VLM_DTYPE_F32, NULL};
    t0 = now_ms();
    cpu_matmul(pool, lrow, xrow, 1, 3072, 32064, pm->lm.lm_head, nob);
    double head_ms = now_ms() - t0;
    double dec_layer = (decode_ms - head_ms) / lm_layers;
    printf("{\"threads\": %d, \"weights_mb\": %.0f, \"clip_ms_per_crop_per_layer\": %.1f, "
           "\"clip_ms_per_crop_23_layers\": %.0f, \"prefill_tokens\": %d, "
           "\"prefill_ms_per_layer\": %.1f, \"prefill_ms_32_layers\": %.0f, "
           "\"decode_ms_lm_head\": %.1f, \"decode_ms_per_layer\": %.1f, "
           "\"decode_ms_per_token_32_layers\": %.0f}\n",
           cpu_pool_threads(pool), (double)sy.bytes / 1e6, clip_ms / clip_run,
           clip_ms / clip_run * 23, prompt, prefill_ms / lm_layers, prefill_ms / lm_layers * 32,
           head_ms, dec_layer, dec_layer * 32 + head_ms);
    vlm_free(xrow);
    vlm_free(lrow);
    vlm_free(ids);
    session_free(s);
    vlm_free(px);
    vlm_free(feat);
    vlm_free(ws);
    phi3v_free(pm);
    for (int i = 0; i < sy.n; i++) vlm_free(sy.blocks[i]);
    cpu_pool_free(pool);
    return 0;
}
