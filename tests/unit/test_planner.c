/* runtime/planner: the quantization policy case by case; the weight bytes of the
 * full-size Phi-3.5-vision shapes at every precision against closed forms
 * worked out by hand from spec §8 (the arithmetic is in the comments); the
 * KV cache, decoder and vision workspaces against the formulas of the model
 * code's layout comments; estimate against what the code really allocates on
 * tests/data/tiny/f32 (accounted bytes, within 5%); the budget margin; the
 * ladder at budgets between rungs, degrading only when allowed; JSON; and
 * allocation failures walked over plan_model_open + vlm_plan_make. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/json.h"
#include "io/image.h"
#include "mem/monitor.h"
#include "runtime/planner.h"
#include "models/phi3v_image.h"
#include "models/registry.h"
#include "runtime/session.h"

#define GiB ((uint64_t)1 << 30)

static bool within(uint64_t measured, uint64_t estimated, double tol) {
    double m = (double)measured, e = (double)estimated;
    return m >= e * (1 - tol) && m <= e * (1 + tol);
}

/* ---------------------------------------------------------------------------
 * the policy */

static void test_policy(void **state) {
    (void)state;
    const int64_t mat[2] = {3072, 3072}, odd[2] = {8, 40}, r32[2] = {64, 96}, v1[1] = {3072};
    const int64_t conv[4] = {1024, 3, 14, 14}, pos[2] = {577, 1024};
    const vlm_dtype B = VLM_DTYPE_BF16;
    const char *o = "model.layers.0.self_attn.o_proj.weight";
    /* native keeps, plain precisions convert everything */
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_NATIVE, o, 2, mat, B), B);
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_F32, o, 2, mat, B), VLM_DTYPE_F32);
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_F16, "model.norm.weight", 1, v1, B),
                     VLM_DTYPE_F16);
    /* decoder matrices and the token embedding take the block type */
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q4_K, o, 2, mat, B), VLM_DTYPE_Q4_K);
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q4_0, "model.embed_tokens.weight", 2, mat, B),
                     VLM_DTYPE_Q4_0);
    /* norms, biases, the conv, positions, separators stay as stored */
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q8_0, "model.norm.weight", 1, v1, B), B);
    assert_int_equal(
        vlm_plan_tensor_dtype(VLM_PREC_Q8_0,
                              "model.vision_embed_tokens.img_processor.vision_model.embeddings."
                              "patch_embedding.weight",
                              4, conv, B),
        B);
    assert_int_equal(
        vlm_plan_tensor_dtype(VLM_PREC_Q4_0,
                              "model.vision_embed_tokens.img_processor.vision_model.embeddings."
                              "position_embedding.weight",
                              2, pos, VLM_DTYPE_F32),
        VLM_DTYPE_F32);
    /* head, tower, projector: not below q8_0 */
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q4_K, "lm_head.weight", 2, mat, B),
                     VLM_DTYPE_Q8_0);
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q4_0,
                                           "model.vision_embed_tokens.img_projection.2.weight", 2,
                                           mat, B),
                     VLM_DTYPE_Q8_0);
    /* the last degraded rung lifts that floor: every matrix q4_0, the rest as
     * stored, rows not whole 32-blocks as stored; its KV cache is bf16 */
    const vlm_precision A = VLM_PREC_Q4_0_ALL;
    assert_int_equal(vlm_plan_tensor_dtype(A, "lm_head.weight", 2, mat, B), VLM_DTYPE_Q4_0);
    assert_int_equal(
        vlm_plan_tensor_dtype(A, "model.vision_embed_tokens.img_projection.2.weight", 2, mat, B),
        VLM_DTYPE_Q4_0);
    assert_int_equal(vlm_plan_tensor_dtype(A,
                                           "model.vision_embed_tokens.img_processor.vision_model."
                                           "encoder.layers.0.mlp.fc1.weight",
                                           2, mat, B),
                     VLM_DTYPE_Q4_0);
    assert_int_equal(vlm_plan_tensor_dtype(A, o, 2, mat, B), VLM_DTYPE_Q4_0);
    assert_int_equal(vlm_plan_tensor_dtype(A, o, 2, r32, B), VLM_DTYPE_Q4_0);
    assert_int_equal(vlm_plan_tensor_dtype(A, o, 2, odd, B), B);
    assert_int_equal(vlm_plan_tensor_dtype(A, "model.norm.weight", 1, v1, B), B);
    assert_int_equal(vlm_plan_kv_dtype(A, VLM_DTYPE_F32), VLM_DTYPE_BF16);
    assert_int_equal(vlm_plan_kv_dtype(VLM_PREC_Q4_0, VLM_DTYPE_F32), VLM_DTYPE_F32);
    assert_int_equal(vlm_plan_kv_dtype(VLM_PREC_Q4_0, VLM_DTYPE_BF16), VLM_DTYPE_BF16);
    /* rows not whole blocks: q4_K -> q4_0 on 32-rows, else stored */
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q4_K, o, 2, r32, B), VLM_DTYPE_Q4_0);
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q8_0, o, 2, odd, B), B);
    assert_int_equal(vlm_plan_tensor_dtype(VLM_PREC_Q4_K, o, 2, odd, VLM_DTYPE_F32), VLM_DTYPE_F32);
    /* bytes of blocks */
    assert_int_equal(vlm_plan_dtype_bytes(VLM_DTYPE_Q8_0, 64), 68);
    assert_int_equal(vlm_plan_dtype_bytes(VLM_DTYPE_Q4_K, 512), 288);
    assert_int_equal(vlm_plan_dtype_bytes(VLM_DTYPE_BF16, 3), 6);
    for (int p = 0; p < VLM_PREC_COUNT; p++)
        assert_int_equal(vlm_precision_parse(vlm_precision_name((vlm_precision)p)), p);
    assert_int_equal(vlm_precision_parse("q5_0"), -1);
}

/* ---------------------------------------------------------------------------
 * full-size Phi-3.5-vision shapes (config only, bf16) */

static void full_model(plan_model *pm) {
    vlm_config cfg;
    vlm_err err;
    const char *path = tu_shared("models/phi-3.5-vision-instruct/config.reconstructed.json");
    assert_int_equal(vlm_config_load(path, &cfg, &err), VLM_OK);
    memset(pm, 0, sizeof *pm);
    pm->default_num_crops = 4;
    pm->tokenizer_bytes = PLAN_DEFAULT_TOKENIZER_BYTES;
    pm->tokenizer_peak = PLAN_DEFAULT_TOKENIZER_PEAK;
    vlm_status st = plan_model_init(pm, &cfg, NULL, VLM_DTYPE_BF16, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    vlm_config_free(&cfg);
}

static void test_full_weights(void **state) {
    (void)state;
    plan_model pm;
    full_model(&pm);
    assert_int_equal(pm.n_tensors, 592);
    uint64_t params = 0;
    for (size_t i = 0; i < pm.n_tensors; i++) params += pm.tensors[i].nelem;
    assert_int_equal(params, 4146621440ull);          /* spec §8 */
    assert_int_equal(pm.stored_bytes, 8293242880ull); /* the index's total_size */
    uint64_t loaded, all;
    plan_weight_bytes(&pm, VLM_PREC_BF16, &loaded, &all);
    assert_int_equal(all, 8293242880ull);
    /* Not loaded: CLIP layer 23 (4 x (1024^2 + 1024) + 4096x1024 + 4096 +
     * 1024x4096 + 1024 + 4 x 1024 = 12,596,224) and post_layernorm (2048):
     * 12,598,272 parameters, 25,196,544 bytes. */
    assert_int_equal(loaded, 8293242880ull - 25196544ull);
    plan_weight_bytes(&pm, VLM_PREC_NATIVE, &loaded, NULL);
    assert_int_equal(loaded, 8268046336ull);
    plan_weight_bytes(&pm, VLM_PREC_F32, &loaded, &all);
    assert_int_equal(all, 2 * 8293242880ull);
    /* Quantized matrices (loaded): decoder 32 x (9216x3072 + 3072^2 +
     * 16384x3072 + 3072x8192) = 3,623,878,656; embed_tokens and lm_head
     * 98,500,608 each; CLIP 23 x (4 x 1024^2 + 2 x 4096x1024) = 289,406,976;
     * projector 3072x4096 + 3072^2 = 22,020,096. Everything else loaded
     * (1,716,224 parameters) stays bf16: 3,432,448 bytes.
     * q8_0: 4,132,306,944 / 32 x 34 + 3,432,448 = 4,394,008,576.
     * q4_0 / q4_K: decoder + embed (3,722,379,264) / 32 x 18 = 2,093,838,336;
     * head + CLIP + projector at q8_0 (409,927,680) / 32 x 34 = 435,548,160;
     * + 3,432,448 = 2,532,818,944 (q4_K: / 256 x 144, the same bytes). */
    plan_weight_bytes(&pm, VLM_PREC_Q8_0, &loaded, &all);
    assert_int_equal(loaded, 4394008576ull);
    /* + layer 23's matrices at q8_0 (12,582,912 / 32 x 34 = 13,369,344) and
     * its 13,312 vector parameters + post-LN 2,048 in bf16 (30,720 B) */
    assert_int_equal(all, 4394008576ull + 13369344ull + 30720ull);
    plan_weight_bytes(&pm, VLM_PREC_Q4_0, &loaded, NULL);
    assert_int_equal(loaded, 2532818944ull);
    plan_weight_bytes(&pm, VLM_PREC_Q4_K, &loaded, NULL);
    assert_int_equal(loaded, 2532818944ull);
    /* q4_0_all: every quantized matrix at q4_0, (3,722,379,264 +
     * 409,927,680) / 32 x 18 = 2,324,422,656, + 3,432,448 = 2,327,855,104
     * (28.2% of native's 8,268,046,336 instead of 30.6%) */
    plan_weight_bytes(&pm, VLM_PREC_Q4_0_ALL, &loaded, NULL);
    assert_int_equal(loaded, 2327855104ull);
    /* it is not on the plain ladder (the run-time fallback's) */
    vlm_precision lad[VLM_PREC_COUNT];
    int n = vlm_plan_ladder(&pm, lad);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++) assert_int_not_equal(lad[i], VLM_PREC_Q4_0_ALL);
    plan_model_free(&pm);
}

static void test_full_components(void **state) {
    (void)state;
    plan_model pm;
    full_model(&pm);
    plan_request r;
    plan_request_init(&r);
    r.n_threads = 1;
    plan_setting s = {VLM_PREC_NATIVE, 4096, 16, 17, PLAN_CPU, 0, false};
    plan_estimate e;
    vlm_err err;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    /* KV: 2 x 32 layers x 4096 x 32 heads x 96 x 4 B = 3 GiB (+ the struct) */
    assert_true(e.bytes[PLAN_KV_CACHE] >= 3 * GiB && e.bytes[PLAN_KV_CACHE] < 3 * GiB + 256);
    /* decoder workspace, chunk 128 (phi3.c layout + phi3v's embedding rows):
     * 128 x 3072 + 128 x (3072 + 9216 + 3072 + 3 x 8192 + 96) + 1 x 4096
     * = 5,521,408 floats */
    assert_int_equal(e.bytes[PLAN_PREFILL], 5521408ull * 4);
    assert_int_equal(e.bytes[PLAN_LOGITS], 32064ull * 4);
    /* worst grid at 16 crops: 16 x 1 tiles, 17 crops,
     * 17 x 144 + 1 + 17 x 12 = 2653 tokens */
    assert_int_equal(e.crops, 17);
    assert_int_equal(e.image_tokens, 2653);
    /* all at once: features 17 x 576 x 1024 = 10,027,008 floats; CLIP
     * workspace T = 17 x 577 = 9809: 9809 x 1024 x 6 + 9809 x 4096 +
     * 576 x 588 + 577 = 100,783,425 floats (> glue 17 x 144 x (4096 +
     * 2 x 3072) = 25,067,520) */
    assert_int_equal(e.vision_all, (10027008ull + 100783425ull) * 4);
    /* one crop at a time: features 576 x 1024 = 589,824; CLIP 577 x 6144 +
     * 577 x 4096 + 338,688 + 577 = 6,247,745 > glue 144 x 10240 = 1,474,560
     * floats. Nothing of it depends on the crop count. */
    assert_int_equal(e.vision_group1, (589824ull + 6247745ull) * 4);
    assert_int_equal(e.bytes[PLAN_VISION], e.vision_all);
    assert_int_equal(e.bytes[PLAN_IMAGE_FEATURES], 2653ull * 3072 * 4);
    assert_int_equal(e.bytes[PLAN_LOAD_SCRATCH], 0);
    /* crop by crop, 16 crops need at most 1.2x what 1 crop needs (the same) */
    uint64_t v16 = e.vision_group1;
    s.num_crops = 1;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    assert_int_equal(e.crops, 2);
    assert_true((double)v16 <= 1.2 * (double)e.vision_group1);
    s.num_crops = 16;
    /* q4_K: converting at load holds one read block of whole source rows
     * (at most 4 MiB) plus one f32 row per thread (1 here). The largest:
     * down_proj, rows of 8192 bf16 (16 KiB): 256 rows = 4 MiB exactly, and
     * an 8192-float row; rows of 3072 (embed_tokens, qkv) fit 682 rows,
     * 4,190,208 bytes. */
    s.precision = VLM_PREC_Q4_K;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    assert_int_equal(e.bytes[PLAN_LOAD_SCRATCH], 256ull * 8192 * 2 + 8192 * 4);
    assert_int_equal(e.bytes[PLAN_WEIGHTS], 2532818944ull);
    /* bf16 KV halves it; beyond 4096 the session keeps image rows
     * (capacity 1024 doubled to 4096 rows >= 2653) */
    r.kv_dtype = VLM_DTYPE_BF16;
    s.context = 8192;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    assert_true(e.bytes[PLAN_KV_CACHE] >= 3 * GiB && e.bytes[PLAN_KV_CACHE] < 3 * GiB + 256);
    assert_true(e.bytes[PLAN_SESSION] >= 8192ull * 4 + 4096ull * 3072 * 4);
    /* q4_0_all: the KV cache is bf16 whatever the request says:
     * 2 x 32 x 512 x 3072 x 2 B = 192 MiB at context 512 */
    r.kv_dtype = VLM_DTYPE_F32;
    s.precision = VLM_PREC_Q4_0_ALL;
    s.context = 512;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    assert_true(e.bytes[PLAN_KV_CACHE] >= 192ull << 20 &&
                e.bytes[PLAN_KV_CACHE] < (192ull << 20) + 256);
    assert_int_equal(e.bytes[PLAN_WEIGHTS], 2327855104ull);
    s.precision = VLM_PREC_Q4_K;
    /* beyond the model's positions: an error naming the context */
    s.context = 200000;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "200000"));
    plan_model_free(&pm);
}

static void test_budget(void **state) {
    (void)state;
    assert_int_equal(plan_budget_from_headroom(16 * GiB), 16 * GiB - 16 * GiB / 100 * 10);
    assert_int_equal(plan_budget_from_headroom(2 * GiB), 2 * GiB - 512 * (1u << 20));
    assert_int_equal(plan_budget_from_headroom(100u << 20), 0);
    /* under an address-space limit: 5%, at least 128 MiB */
    assert_int_equal(plan_budget_from_as_headroom(16 * GiB), 16 * GiB - 16 * GiB / 100 * 5);
    assert_int_equal(plan_budget_from_as_headroom(2885189166ull), 2885189166ull - 144259455ull);
    assert_int_equal(plan_budget_from_as_headroom(1 * GiB), 1 * GiB - 128 * (1u << 20));
    assert_int_equal(plan_budget_from_as_headroom(100u << 20), 0);
}

/* ---------------------------------------------------------------------------
 * the ladder */

static uint64_t peak_at(const plan_model *pm, const plan_request *r, vlm_precision p, int crops,
                        int64_t ctx, int group) {
    plan_setting s = {p, ctx, crops, group, PLAN_CPU, 0, false};
    plan_estimate e;
    vlm_err err;
    assert_int_equal(plan_estimate_setting(pm, r, &s, &e, &err), VLM_OK);
    return e.peak;
}

static const plan_rung *chosen(const vlm_plan *p) {
    assert_true(p->chosen >= 0);
    return &p->rungs[p->chosen];
}

static void test_ladder(void **state) {
    (void)state;
    plan_model pm;
    full_model(&pm);
    plan_request r;
    plan_request_init(&r);
    r.n_threads = 1;
    r.num_crops = 16;
    vlm_plan *p = calloc(1, sizeof *p);
    vlm_err err;
    uint64_t native = peak_at(&pm, &r, VLM_PREC_NATIVE, 16, 4096, 17);
    uint64_t q8 = peak_at(&pm, &r, VLM_PREC_Q8_0, 16, 4096, 17);
    uint64_t q8_g1 = peak_at(&pm, &r, VLM_PREC_Q8_0, 16, 4096, 1);
    uint64_t q4k = peak_at(&pm, &r, VLM_PREC_Q4_K, 16, 4096, 17);
    uint64_t q4k_g1 = peak_at(&pm, &r, VLM_PREC_Q4_K, 16, 4096, 1);
    assert_true(native > q8 && q8 > q8_g1 && q8_g1 > q4k && q4k > q4k_g1);

    /* plenty: native, GPU rungs listed before it and not available */
    r.mem_budget = 64 * GiB;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_NATIVE);
    assert_int_equal(chosen(p)->e.s.crop_group, 17);
    assert_true(p->rungs[0].e.s.device == PLAN_GPU && !p->rungs[0].available);
    assert_non_null(strstr(p->rungs[0].reason, "not available (no GPU)"));

    /* between q8_0 and native: q8_0, native rejected with its bytes */
    r.mem_budget = q8 + 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_Q8_0);
    const plan_rung *nat = &p->rungs[p->chosen - 1];
    assert_int_equal(nat->e.s.precision, VLM_PREC_NATIVE);
    assert_false(nat->fits);
    char want[32];
    snprintf(want, sizeof want, "(%llu bytes)", (unsigned long long)nat->e.peak);
    assert_non_null(strstr(nat->reason, want));

    /* under q8_0 even one crop at a time: q4_K (before q4_0: the same
     * bytes, better quality) */
    r.mem_budget = q8_g1 - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_Q4_K);
    assert_int_equal(p->rungs[p->chosen - 1].e.s.precision, VLM_PREC_Q8_0);

    /* under q4_K all at once but above one crop at a time: a smaller crop
     * group, not a lower rung, and nothing given up */
    r.mem_budget = q4k - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_Q4_K);
    assert_true(chosen(p)->e.s.crop_group < 17);
    assert_false(chosen(p)->degraded);

    /* under every precision: none without --allow-degrade (q4_0 was tried) */
    r.mem_budget = q4k_g1 - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(p->chosen, -1);
    assert_int_equal(p->rungs[p->n_rungs - 1].e.s.precision, VLM_PREC_Q4_0);
    for (int i = 0; i < p->n_rungs; i++) assert_false(p->rungs[i].degraded);

    /* with it: fewer crops first (16 -> 4), keeping the context */
    r.allow_degrade = true;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.num_crops, 4);
    assert_int_equal(chosen(p)->e.s.context, 4096);
    assert_true(chosen(p)->degraded);
    assert_non_null(strstr(chosen(p)->reason, "num_crops 16 -> 4"));

    /* below one crop at full context: the context is halved */
    uint64_t c1 = peak_at(&pm, &r, VLM_PREC_Q4_0, 1, 4096, 1);
    r.mem_budget = c1 - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.num_crops, 1);
    assert_int_equal(chosen(p)->e.s.context, 2048);
    assert_non_null(strstr(chosen(p)->reason, "context 4096 -> 2048"));

    /* below q4_0 at one crop and the 1024 floor: the last rung, q4_0_all
     * with a bf16 KV cache, at the largest context that fits. Its weights
     * are 205 MB smaller and a bf16 cache of 2048 rows is an f32 one of
     * 1024, so 2048 fits where q4_0 at 1024 did not. */
    uint64_t q4_1024 = peak_at(&pm, &r, VLM_PREC_Q4_0, 1, 1024, 1);
    uint64_t all_2048 = peak_at(&pm, &r, VLM_PREC_Q4_0_ALL, 1, 2048, 1);
    uint64_t all_512 = peak_at(&pm, &r, VLM_PREC_Q4_0_ALL, 1, 512, 1);
    assert_true(all_2048 < q4_1024 && all_512 < all_2048);
    r.mem_budget = q4_1024 - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_Q4_0_ALL);
    assert_int_equal(chosen(p)->e.s.context, 2048);
    assert_int_equal(chosen(p)->e.s.num_crops, 1);
    assert_int_equal(p->rungs[p->chosen - 1].e.s.precision, VLM_PREC_Q4_0_ALL); /* 4096 */
    assert_int_equal(p->rungs[p->chosen - 2].e.s.precision, VLM_PREC_Q4_0);     /* 1024 */
    assert_int_equal(p->rungs[p->chosen - 2].e.s.context, 1024);
    assert_non_null(strstr(chosen(p)->reason, "num_crops 16 -> 1, context 4096 -> 2048"));
    assert_non_null(strstr(chosen(p)->reason, "the q8_0 floor"));
    assert_non_null(strstr(chosen(p)->reason, "KV cache f32 -> bf16"));
    /* down to 512 */
    r.mem_budget = all_512;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_Q4_0_ALL);
    assert_int_equal(chosen(p)->e.s.context, 512);
    /* a precision asked for never lifts the floor */
    r.precision = VLM_PREC_Q4_0;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(p->chosen, -1);
    for (int i = 0; i < p->n_rungs; i++)
        assert_int_not_equal(p->rungs[i].e.s.precision, VLM_PREC_Q4_0_ALL);
    r.precision = -1;

    /* nothing at all: the last rung's floor (512) stops it */
    r.mem_budget = 1u << 20;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(p->chosen, -1);
    assert_int_equal(p->rungs[p->n_rungs - 1].e.s.precision, VLM_PREC_Q4_0_ALL);
    assert_int_equal(p->rungs[p->n_rungs - 1].e.s.context, 512);

    /* one precision asked for */
    r.allow_degrade = false;
    r.mem_budget = 64 * GiB;
    r.precision = VLM_PREC_Q4_0;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.precision, VLM_PREC_Q4_0);

    /* JSON */
    vlm_json_init();
    cJSON *j = vlm_plan_to_json(&pm, p);
    assert_non_null(j);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "fits")));
    cJSON *c = cJSON_GetObjectItem(j, "chosen");
    assert_string_equal(cJSON_GetObjectItem(c, "precision")->valuestring, "q4_0");
    cJSON *b = cJSON_GetObjectItem(c, "bytes");
    assert_int_equal((uint64_t)cJSON_GetObjectItem(b, "weights")->valuedouble, 2532818944ull);
    cJSON *w = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "weight_bytes"), "bf16");
    assert_int_equal((uint64_t)cJSON_GetObjectItem(w, "all")->valuedouble, 8293242880ull);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "rungs")), p->n_rungs);
    cJSON_Delete(j);
    free(p);
    plan_model_free(&pm);
}

/* ---------------------------------------------------------------------------
 * estimate vs what the code allocates (tiny f32 fixture) */

static vlm_status set_lookup(void *ctx, const char *name, vlm_tensor_view *out, vlm_err *err) {
    const vlm_st_tensor *t = vlm_tensor_set_find(ctx, name);
    if (!t) return vlm_err_set(err, VLM_ERR_NOT_FOUND, "tensor \"%s\" is missing", name);
    out->dtype = t->dtype;
    out->ndim = t->rank;
    for (int k = 0; k < t->rank; k++) out->shape[k] = t->shape[k];
    out->data = t->data;
    return VLM_OK;
}

static uint64_t accounted(void) {
    vlm_mem_stats s;
    vlm_alloc_get_stats(&s);
    return s.total_current;
}

static void test_measured_tiny(void **state) {
    (void)state;
    const char *dir = tu_src("tests/data/tiny/f32");
    plan_model pm;
    vlm_err err;
    vlm_status st = plan_model_open(&pm, dir, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    assert_true(pm.from_headers && pm.tokenizer_measured);
    /* the default overhead constant stays within 5% of a measurement */
    assert_true(within(pm.tokenizer_bytes, PLAN_DEFAULT_TOKENIZER_BYTES, 0.05));
    assert_true(within(pm.tokenizer_peak, PLAN_DEFAULT_TOKENIZER_PEAK, 0.05));

    vlm_image *img = NULL;
    assert_int_equal(vlm_image_load(tu_src("tests/data/tiny/images/landscape.png"), 0, &img, &err),
                     VLM_OK);
    plan_request r;
    plan_request_init(&r);
    r.n_threads = 2;
    r.image_width = vlm_image_width(img);
    r.image_height = vlm_image_height(img);
    plan_setting s = {VLM_PREC_NATIVE, 1024, 4, 2, PLAN_CPU, 0, false};
    plan_estimate e;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);

    /* the model over the mapped checkpoint */
    vlm_tensor_set *set = NULL;
    cpu_pool *pool = NULL;
    arch_model *m = NULL;
    assert_int_equal(vlm_tensor_set_open(dir, &set, &err), VLM_OK);
    assert_int_equal(cpu_pool_create(2, &pool, &err), VLM_OK);
    vlm_weight_source src = {set_lookup, set};
    assert_int_equal(arch_model_create(&pm.cfg, "config.json", &src, pool, NULL, &m, &err), VLM_OK);

    /* session: KV + workspace + logits + ids */
    session_options o;
    session_options_init(&o);
    o.max_ctx = 1024;
    session *sess = NULL;
    uint64_t a0 = accounted();
    assert_int_equal(session_create(m, &o, &sess, &err), VLM_OK);
    uint64_t sess_measured = accounted() - a0;
    uint64_t sess_est = e.bytes[PLAN_KV_CACHE] + e.bytes[PLAN_PREFILL] + e.bytes[PLAN_LOGITS] +
                        sizeof(session) + 1024 * sizeof(int32_t);
    fprintf(stderr, "session: measured %llu, estimated %llu\n", (unsigned long long)sess_measured,
            (unsigned long long)sess_est);
    assert_true(within(sess_measured, sess_est, 0.05));

    /* preprocessing: resize + HD, then HD + pixels */
    phi3v_pixels px;
    vlm_mem_scope sc;
    vlm_mem_scope_result res;
    vlm_mem_scope_begin(&sc, "preprocess");
    assert_int_equal(phi3v_preprocess(img, 4, false, &px, &err), VLM_OK);
    vlm_mem_scope_end(&sc, &res);
    uint64_t decoded = (uint64_t)r.image_width * (uint64_t)r.image_height * 3;
    uint64_t pixels = e.bytes[PLAN_IMAGE_INPUT] - decoded - sizeof(vlm_image);
    uint64_t hd = (uint64_t)px.geo.hd_h * (uint64_t)px.geo.hd_w * 3;
    uint64_t pre_est =
        e.bytes[PLAN_IMAGE_PREPROCESS] > hd + pixels ? e.bytes[PLAN_IMAGE_PREPROCESS] : hd + pixels;
    fprintf(stderr, "preprocess peak: measured %llu, estimated %llu\n",
            (unsigned long long)(res.accounted_peak - res.accounted_start),
            (unsigned long long)pre_est);
    assert_true(within(res.accounted_peak - res.accounted_start, pre_est, 0.05));
    assert_int_equal(res.accounted_end - res.accounted_start, pixels);
    assert_int_equal(px.n_real, e.crops);

    /* the vision tower, two crops at a time */
    int tokens = m->arch->image_tokens(m->impl, px.geo.hc, px.geo.wc);
    assert_int_equal(tokens, e.image_tokens);
    float *rows = malloc((size_t)tokens * (size_t)m->info.hidden * sizeof(float));
    vlm_image_input in = {px.values, px.n_real, px.geo.hc, px.geo.wc};
    vlm_mem_scope_begin(&sc, "encode");
    assert_int_equal(m->arch->encode_image(m->impl, &in, 2, rows, &err), VLM_OK);
    vlm_mem_scope_end(&sc, &res);
    fprintf(stderr, "vision: measured %llu, estimated %llu\n",
            (unsigned long long)(res.accounted_peak - res.accounted_start),
            (unsigned long long)e.bytes[PLAN_VISION]);
    assert_true(within(res.accounted_peak - res.accounted_start, e.bytes[PLAN_VISION], 0.05));
    assert_int_equal(e.bytes[PLAN_IMAGE_FEATURES],
                     (uint64_t)tokens * (uint64_t)m->info.hidden * sizeof(float));

    /* the weights the model reads: the used tensors' stored bytes */
    uint64_t used = 0;
    for (size_t i = 0; i < vlm_tensor_set_count(set); i++) {
        const vlm_st_tensor *t = vlm_tensor_set_at(set, i);
        bool u = true;
        for (size_t k = 0; k < pm.n_tensors; k++)
            if (!strcmp(pm.tensors[k].name, t->name)) u = pm.tensors[k].used;
        if (u) used += t->nbytes;
    }
    assert_int_equal(e.bytes[PLAN_WEIGHTS], used);

    free(rows);
    phi3v_pixels_free(&px);
    session_free(sess);
    arch_model_free(m);
    cpu_pool_free(pool);
    vlm_tensor_set_close(set);
    vlm_image_free(img);
    plan_model_free(&pm);
}

/* ---------------------------------------------------------------------------
 * allocation failures: a folder with the tiny checkpoint but no
 * tokenizer.json (every allocation walked), then sampled points with it */

static vlm_status plan_once(const char *dir, vlm_plan *p, vlm_err *err) {
    plan_model pm;
    vlm_status st = plan_model_open(&pm, dir, err);
    if (st != VLM_OK) return st;
    plan_request r;
    plan_request_init(&r);
    r.mem_budget = 1 * GiB;
    r.n_threads = 1;
    st = vlm_plan_make(&pm, &r, p, err);
    if (st == VLM_OK) {
        cJSON *j = vlm_plan_to_json(&pm, p);
        if (!j) st = vlm_err_set(err, VLM_ERR_NOMEM, "plan JSON: out of memory");
        cJSON_Delete(j);
    }
    plan_model_free(&pm);
    return st;
}

static void sweep(const char *dir, uint64_t stride) {
    vlm_plan *p = calloc(1, sizeof *p);
    vlm_err err;
    vlm_json_init();
    uint64_t c0 = vlm_alloc_count();
    assert_int_equal(plan_once(dir, p, &err), VLM_OK);
    uint64_t n = vlm_alloc_count() - c0;
    assert_true(n > 0);
    int ok = 0, nomem = 0;
    for (uint64_t k = 1; k <= n + 1; k += stride) {
        uint64_t live = accounted();
        vlm_alloc_fail_at(vlm_alloc_count() + k, false);
        vlm_status st = plan_once(dir, p, &err);
        vlm_alloc_fail_at(0, false);
        if (st != VLM_OK && st != VLM_ERR_NOMEM)
            fprintf(stderr, "at %llu: %s\n", (unsigned long long)k, err.msg);
        assert_true(st == VLM_OK || st == VLM_ERR_NOMEM);
        st == VLM_OK ? ok++ : nomem++;
        if (accounted() != live)
            fprintf(stderr, "at %llu: %lld bytes left\n", (unsigned long long)k,
                    (long long)(accounted() - live));
        assert_int_equal(accounted(), live);
    }
    assert_true(nomem > 0);
    free(p);
}

/* ---------------------------------------------------------------------------
 * the GPU rungs (planned with a GPU budget given; no GPU is needed) */

/* Full-size bf16, by hand from spec §8 (shapes in docs/planner.md):
 * one decoder layer: qkv 9216 x 3072 + o 3072 x 3072 + gate_up 16384 x 3072
 * + down 3072 x 8192 + 2 norms x 3072 = 113,252,352 params = 226,504,704 B;
 * its KV at 4096 f32: 2 x 4096 x (32 x 96) x 4 = 100,663,296 B;
 * embed_tokens and lm_head 32064 x 3072 = 197,001,216 B each, model.norm
 * 6,144 B; vision tower (CLIP layers 0..22, embeddings, pre-LN) + projector +
 * separators: 312,943,616 params = 625,887,232 B as stored, the same on
 * the GPU, whose tower keeps the layers' bf16 biases bf16 (each product's
 * epilogue takes its output's type: q|k|v and fc1 write bf16, out_proj and
 * fc2 add into the bf16 residual). */
#define LAYER_W       226504704ull
#define LAYER_KV      100663296ull
#define HEAD_W        (2 * 197001216ull + 6144ull)
#define VISION_W_HOST 625887232ull
#define VISION_W      VISION_W_HOST
#define PREFILL_1     (5521408ull * 4) /* chunk 128, one thread (test_full_components) */
/* the GPU decoder's share: that workspace and the RoPE tables (cos, sin:
 * 4096 positions x head_dim 96 floats) */
#define PREFILL_GPU (PREFILL_1 + 4096ull * 96 * 4)
/* the decoder's GPU context: cuBLAS 32 MiB + 512 x 8192 x 2 + 1 MiB; the
 * tower's: cuBLAS 32 MiB + 1024 x 4096 x 2 (models/phi3_gpu.c, clip_gpu.c) */
#define CTX_DEC (PLAN_GPU_CUBLAS_BYTES + 512ull * 8192 * 2 + (1ull << 20))
#define CTX_VIS (PLAN_GPU_CUBLAS_BYTES + 1024ull * 4096 * 2)
/* The GPU tower's activations for g crops (models/clip_gpu.c's layout),
 * T = 577 g rows: x, h, q, k, v, att [T][1024] f32, fc1's output
 * [T][4096] f32, the 16-bit product inputs [T][4096] x 2 B, the bf16
 * residual [T][1024] x 2 B, the pixels [g][3][336][336] f32, the
 * projector's rows (144 g) x (4096 + 2 x 3072) f32; every region a
 * multiple of 256 B at these sizes. */
#define GPU_VIS(g)                                                                                 \
    ((g) * (577ull * (6 * 1024 + 4096 + 2048 + 512) + 3ull * 336 * 336 + 144ull * 10240) * 4)
/* its pinned staging: the larger of the pixels and the projected rows
 * (144 g x 3072 f32) */
#define GPU_VIS_STAGE(g) ((g)*144ull * 3072 * 4)
#define GPU_FIXED        (PREFILL_GPU + CTX_DEC + PLAN_GPU_CONTEXT_BYTES)

static void test_gpu_components(void **state) {
    (void)state;
    plan_model pm;
    full_model(&pm);
    plan_request r;
    plan_request_init(&r);
    r.n_threads = 1;
    plan_setting s = {VLM_PREC_NATIVE, 4096, 16, 1, PLAN_GPU, 32, true};
    plan_estimate e, cpu;
    vlm_err err;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    /* everything on the GPU: every used weight, the whole cache, logits */
    assert_int_equal(e.gpu[PLAN_GPU_WEIGHTS], 8268046336ull);
    assert_int_equal(e.gpu[PLAN_GPU_WEIGHTS], 32 * LAYER_W + HEAD_W + VISION_W);
    assert_int_equal(e.gpu[PLAN_GPU_KV_CACHE], 32 * LAYER_KV);
    assert_int_equal(e.gpu[PLAN_GPU_PREFILL], PREFILL_GPU);
    assert_int_equal(e.gpu[PLAN_GPU_VISION], GPU_VIS(1));
    assert_int_equal(e.gpu[PLAN_GPU_LOGITS], 32064ull * 4);
    assert_int_equal(e.gpu[PLAN_GPU_CUBLAS], CTX_DEC + CTX_VIS);
    assert_int_equal(e.gpu[PLAN_GPU_CONTEXT], PLAN_GPU_CONTEXT_BYTES);
    uint64_t sum = 0;
    for (int i = 0; i < PLAN_GPU_COMP_COUNT; i++) sum += e.gpu[i];
    assert_int_equal(e.gpu_bytes, sum);
    assert_true(e.head_on_gpu);
    /* the host keeps no weight, no cache row, no decoder workspace, no
     * vision workspace; it stages the largest transfer (a chunk of 128
     * hidden rows: 393,216 floats > 32,064 logits > one crop's 338,688
     * pixels) and holds one tensor on its way up (embed_tokens: mapped +
     * copy) */
    assert_int_equal(e.bytes[PLAN_WEIGHTS], 0);
    assert_true(e.bytes[PLAN_KV_CACHE] < 256); /* the struct */
    assert_int_equal(e.bytes[PLAN_PREFILL], 0);
    assert_int_equal(e.bytes[PLAN_VISION], 0);
    assert_int_equal(e.bytes[PLAN_PINNED_STAGING], 128ull * 3072 * 4 + GPU_VIS_STAGE(1));
    assert_int_equal(e.bytes[PLAN_LOAD_SCRATCH], 2 * 197001216ull);
    assert_int_equal(e.bytes[PLAN_LOGITS], 32064ull * 4); /* the sampler's copy */

    /* the first 10 layers, vision on the CPU: the host holds the other 22
     * layers, the head and the tower, their cache and its workspace */
    s.gpu_layers = 10;
    s.vision_on_gpu = false;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    assert_false(e.head_on_gpu);
    assert_int_equal(e.gpu[PLAN_GPU_WEIGHTS], 10 * LAYER_W);
    assert_int_equal(e.gpu[PLAN_GPU_KV_CACHE], 10 * LAYER_KV);
    assert_int_equal(e.gpu[PLAN_GPU_VISION] + e.gpu[PLAN_GPU_LOGITS], 0);
    assert_int_equal(e.gpu_bytes, 10 * (LAYER_W + LAYER_KV) + GPU_FIXED);
    assert_int_equal(e.bytes[PLAN_WEIGHTS], 22 * LAYER_W + HEAD_W + VISION_W_HOST);
    plan_setting c = {VLM_PREC_NATIVE, 4096, 16, 1, PLAN_CPU, 0, false};
    assert_int_equal(plan_estimate_setting(&pm, &r, &c, &cpu, &err), VLM_OK);
    assert_int_equal(e.bytes[PLAN_KV_CACHE], cpu.bytes[PLAN_KV_CACHE] - 10 * LAYER_KV);
    assert_int_equal(e.bytes[PLAN_PREFILL], cpu.bytes[PLAN_PREFILL]);
    assert_int_equal(e.bytes[PLAN_VISION], cpu.bytes[PLAN_VISION]);

    /* the tower alone on the GPU (no layer): its weights and one group */
    s.gpu_layers = 0;
    s.vision_on_gpu = true;
    assert_int_equal(plan_estimate_setting(&pm, &r, &s, &e, &err), VLM_OK);
    assert_int_equal(e.gpu[PLAN_GPU_WEIGHTS], VISION_W);
    assert_int_equal(e.gpu[PLAN_GPU_PREFILL] + e.gpu[PLAN_GPU_KV_CACHE], 0);

    /* the placement handed to the model */
    vlm_placement pl;
    s.gpu_layers = 32;
    plan_setting_placement(&s, 32, &pl);
    assert_true(pl.gpu_layers == 32 && pl.head_on_gpu && pl.vision_on_gpu);
    s.gpu_layers = 31;
    s.vision_on_gpu = false;
    plan_setting_placement(&s, 32, &pl);
    assert_true(pl.gpu_layers == 31 && !pl.head_on_gpu && !pl.vision_on_gpu);
    plan_setting_placement(&c, 32, &pl);
    assert_false(vlm_placement_uses_gpu(&pl));
    plan_model_free(&pm);
}

/* The device bytes of a GPU setting: precision p, context ctx, k decoder
 * layers and the tower there or not; crops in groups of one. */
static uint64_t gpu_need_at(const plan_model *pm, const plan_request *r, vlm_precision p,
                            int64_t ctx, int k, bool vision) {
    plan_setting s = {p, ctx, 4, 1, PLAN_GPU, k, vision};
    plan_estimate e;
    vlm_err err;
    assert_int_equal(plan_estimate_setting(pm, r, &s, &e, &err), VLM_OK);
    return e.gpu_bytes;
}

static uint64_t gpu_need(const plan_model *pm, const plan_request *r, vlm_precision p, int k,
                         bool vision) {
    return gpu_need_at(pm, r, p, 4096, k, vision);
}

static void test_gpu_ladder(void **state) {
    (void)state;
    plan_model pm;
    full_model(&pm);
    plan_request r;
    plan_request_init(&r);
    r.n_threads = 1;
    r.num_crops = 4;
    r.mem_budget = 64 * GiB;
    r.gpu_available = true; /* as plan_request_detect_gpu would say on a GPU machine */
    vlm_plan *p = calloc(1, sizeof *p);
    vlm_err err;

    /* the default budget from the free memory: 5%, at least 256 MiB */
    assert_int_equal(plan_gpu_budget_from_free(80 * GiB), 80 * GiB - 80 * GiB / 100 * 5);
    assert_int_equal(plan_gpu_budget_from_free(2 * GiB), 2 * GiB - 256 * (1u << 20));
    assert_int_equal(plan_gpu_budget_from_free(200u << 20), 0);
    r.gpu_free_bytes = 80 * GiB;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(p->gpu_budget, plan_gpu_budget_from_free(80 * GiB));
    assert_false(p->gpu_budget_given);
    /* a big card: everything on it at the stored precision, step 0 */
    assert_int_equal(p->chosen, 0);
    assert_string_equal(chosen(p)->label, "gpu native");
    assert_true(chosen(p)->e.head_on_gpu && chosen(p)->e.s.vision_on_gpu);
    assert_int_equal(chosen(p)->e.s.gpu_layers, 32);
    assert_int_equal(chosen(p)->e.s.crop_group, 5);

    /* between all-q8_0 and all-native: q8_0, native turned down for the GPU */
    uint64_t nat = gpu_need(&pm, &r, VLM_PREC_NATIVE, 32, true);
    uint64_t q8 = gpu_need(&pm, &r, VLM_PREC_Q8_0, 32, true);
    uint64_t q4 = gpu_need(&pm, &r, VLM_PREC_Q4_0, 32, true);
    assert_true(nat > q8 && q8 > q4);
    r.gpu_mem_budget = q8;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_true(p->gpu_budget_given);
    assert_string_equal(chosen(p)->label, "gpu q8_0");
    assert_int_equal(chosen(p)->gpu_step, 1);
    assert_non_null(strstr(p->rungs[0].reason, "on the GPU > gpu budget"));
    r.gpu_mem_budget = q8 - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_string_equal(chosen(p)->label, "gpu q4_0");

    /* below all-q4_0: the first k layers at native, k the most that fit:
     * 10 layers and half of an 11th beyond the fixed part */
    r.gpu_mem_budget = GPU_FIXED + 10 * (LAYER_W + LAYER_KV) + (LAYER_W + LAYER_KV) / 2;
    assert_true(r.gpu_mem_budget < q4);
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    const plan_rung *g = chosen(p);
    assert_int_equal(g->gpu_step, 3);
    assert_int_equal(g->e.s.precision, VLM_PREC_NATIVE);
    assert_int_equal(g->e.s.gpu_layers, 10);
    assert_false(g->e.s.vision_on_gpu); /* 625 MB do not fit in half a layer */
    assert_false(g->e.head_on_gpu);
    assert_string_equal(g->label, "gpu native, 10/32 layers, vision cpu");
    assert_int_equal(g->e.gpu_bytes, GPU_FIXED + 10 * (LAYER_W + LAYER_KV));
    /* exactly 11 layers' worth: 11 */
    r.gpu_mem_budget = GPU_FIXED + 11 * (LAYER_W + LAYER_KV);
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.gpu_layers, 11);

    /* native asked for (all-q8_0 would fit first otherwise): every layer
     * and the head fit, the tower does not: placed on its own, on the CPU,
     * with all 32 layers on the GPU */
    uint64_t all_layers = gpu_need(&pm, &r, VLM_PREC_NATIVE, 32, false);
    assert_true(all_layers < nat);
    r.gpu_mem_budget = all_layers;
    r.precision = VLM_PREC_NATIVE;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    g = chosen(p);
    assert_int_equal(g->gpu_step, 1); /* native only: all, then partial */
    assert_int_equal(g->e.s.gpu_layers, 32);
    assert_true(g->e.head_on_gpu);
    assert_false(g->e.s.vision_on_gpu);
    assert_string_equal(g->label, "gpu native, 32/32 layers, vision cpu");
    r.precision = -1;

    /* both budgets: the host's too. A GPU rung whose host share does not
     * fit is turned down, and so is the CPU. */
    r.gpu_mem_budget = 0;
    r.mem_budget = 256u << 20;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(p->chosen, -1);
    assert_non_null(strstr(p->rungs[0].reason, "on the host > budget"));
    assert_true(p->rungs[0].e.gpu_bytes <= p->gpu_budget);
    r.mem_budget = 64 * GiB;

    /* without a GPU: listed with estimates, never chosen; "would fit" */
    r.gpu_available = false;
    r.gpu_mem_budget = 80 * GiB;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(chosen(p)->e.s.device, PLAN_CPU);
    assert_false(p->rungs[0].available);
    assert_true(p->rungs[0].fits_budgets);
    assert_non_null(strstr(p->rungs[0].reason, "not available (no GPU); would fit"));
    /* every crop at once: nat (one at a time) + the larger vision group */
    assert_int_equal(p->rungs[0].e.s.crop_group, 5);
    assert_int_equal(p->rungs[0].e.gpu_bytes,
                     nat - GPU_VIS(1) + p->rungs[0].e.gpu[PLAN_GPU_VISION]);
    assert_int_equal(p->rungs[0].e.gpu[PLAN_GPU_VISION], GPU_VIS(5));

    /* --device cpu: no GPU rung; --device cuda: no CPU rung */
    r.gpu_available = true;
    r.device = PLAN_DEVICE_CPU;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    for (int i = 0; i < p->n_rungs; i++) assert_int_equal(p->rungs[i].e.s.device, PLAN_CPU);
    r.device = PLAN_DEVICE_CUDA;
    r.gpu_mem_budget = 1u << 20;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_int_equal(p->chosen, -1);
    assert_int_equal(p->n_rungs, 6); /* native, q8_0, q4_0; all and partial */
    for (int i = 0; i < p->n_rungs; i++) assert_int_equal(p->rungs[i].e.s.device, PLAN_GPU);

    /* the fallback after device out-of-memory at step 0 starts at step 1 */
    r.device = PLAN_DEVICE_AUTO;
    r.gpu_mem_budget = 80 * GiB;
    r.gpu_from = 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    assert_string_equal(chosen(p)->label, "gpu q8_0");
    assert_int_equal(p->rungs[0].gpu_step, 1);
    r.gpu_from = 0;

    /* JSON: device and host components, the split, the placement */
    vlm_json_init();
    r.gpu_mem_budget = GPU_FIXED + 10 * (LAYER_W + LAYER_KV);
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    cJSON *j = vlm_plan_to_json(&pm, p);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "device")->valuestring, "auto");
    cJSON *b = cJSON_GetObjectItem(j, "budget");
    assert_string_equal(cJSON_GetObjectItem(b, "gpu_source")->valuestring, "--gpu-mem-budget");
    cJSON *c = cJSON_GetObjectItem(j, "chosen");
    assert_string_equal(cJSON_GetObjectItem(c, "device")->valuestring, "gpu");
    assert_int_equal((int)cJSON_GetObjectItem(c, "gpu_layers")->valuedouble, 10);
    assert_int_equal((int)cJSON_GetObjectItem(c, "n_layers")->valuedouble, 32);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(c, "vision_on_gpu")));
    cJSON *gc = cJSON_GetObjectItem(c, "gpu");
    assert_int_equal((uint64_t)cJSON_GetObjectItem(gc, "weights")->valuedouble, 10 * LAYER_W);
    assert_int_equal((uint64_t)cJSON_GetObjectItem(gc, "kv_cache")->valuedouble, 10 * LAYER_KV);
    assert_int_equal((uint64_t)cJSON_GetObjectItem(gc, "cuda_context")->valuedouble,
                     PLAN_GPU_CONTEXT_BYTES);
    assert_int_equal((uint64_t)cJSON_GetObjectItem(c, "gpu_bytes")->valuedouble,
                     GPU_FIXED + 10 * (LAYER_W + LAYER_KV));
    cJSON *hb = cJSON_GetObjectItem(c, "bytes");
    assert_int_equal((uint64_t)cJSON_GetObjectItem(hb, "weights")->valuedouble,
                     22 * LAYER_W + HEAD_W + VISION_W_HOST);
    cJSON_Delete(j);
    free(p);
    plan_model_free(&pm);
}

/* The tower's placement does not follow the layers': it joins the GPU
 * beside fewer than all layers when the budget leaves room for it after k.
 * That needs a layer heavier than the tower: at the model's full 131,072
 * positions one layer's f32 cache is 3 GiB (2 x 131072 x 3072 x 4 B), the
 * tower with its GPU context about 0.7 GB. */
static uint64_t gpu_need_ctx(const plan_model *pm, const plan_request *r, int64_t ctx, int k,
                             bool vision) {
    return gpu_need_at(pm, r, VLM_PREC_NATIVE, ctx, k, vision);
}

static void test_gpu_vision_independent(void **state) {
    (void)state;
    plan_model pm;
    full_model(&pm);
    plan_request r;
    plan_request_init(&r);
    r.n_threads = 1;
    r.num_crops = 4;
    r.context = 131072;
    r.mem_budget = 1024 * GiB; /* the host's share is not what this test is about */
    r.gpu_available = true;
    vlm_err err;
    uint64_t k5_vis = gpu_need_ctx(&pm, &r, 131072, 5, true);
    uint64_t k6 = gpu_need_ctx(&pm, &r, 131072, 6, false);
    assert_true(k5_vis < k6); /* the precondition: the tower weighs less than a layer here */
    r.gpu_mem_budget = k5_vis;
    vlm_plan *p = calloc(1, sizeof *p);
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    const plan_rung *g = chosen(p);
    assert_int_equal(g->e.s.device, PLAN_GPU);
    assert_int_equal(g->e.s.precision, VLM_PREC_NATIVE);
    assert_int_equal(g->e.s.gpu_layers, 5);
    assert_true(g->e.s.vision_on_gpu);
    assert_false(g->e.head_on_gpu);
    assert_true(g->e.gpu_bytes <= r.gpu_mem_budget);
    assert_string_equal(g->label, "gpu native, 5/32 layers, vision gpu");
    /* one byte less: the tower goes back to the CPU, the layers stay */
    r.gpu_mem_budget = k5_vis - 1;
    assert_int_equal(vlm_plan_make(&pm, &r, p, &err), VLM_OK);
    g = chosen(p);
    assert_int_equal(g->e.s.gpu_layers, 5);
    assert_false(g->e.s.vision_on_gpu);
    free(p);
    plan_model_free(&pm);
}

static void test_alloc_failures(void **state) {
    (void)state;
    char *tmp = tu_mkdtemp();
    static const char *const files[] = {
        "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "preprocessor_config.json"};
    char a[4096], b[4096];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(a, sizeof a, "%s", tu_src("tests/data/tiny/f32"));
        snprintf(a + strlen(a), sizeof a - strlen(a), "/%s", files[i]);
        snprintf(b, sizeof b, "%s/%s", tmp, files[i]);
        assert_int_equal(symlink(a, b), 0);
    }
    sweep(tmp, 1);
    tu_rmtree(tmp);
    free(tmp);
    /* with the tokenizer: about 100 points across its allocations */
    vlm_plan *p = calloc(1, sizeof *p);
    vlm_err err;
    uint64_t c0 = vlm_alloc_count();
    assert_int_equal(plan_once(tu_src("tests/data/tiny/f32"), p, &err), VLM_OK);
    uint64_t n = vlm_alloc_count() - c0;
    free(p);
    sweep(tu_src("tests/data/tiny/f32"), n / 100 + 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_full_weights),
        cmocka_unit_test(test_full_components),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_ladder),
        cmocka_unit_test(test_measured_tiny),
        cmocka_unit_test(test_gpu_components),
        cmocka_unit_test(test_gpu_ladder),
        cmocka_unit_test(test_gpu_vision_independent),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
