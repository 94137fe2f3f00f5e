/* models/phi3v_config: the published configs map onto the struct with the
 * spec's numbers (§0, §3.8, §6.5, §11). */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "io/config.h"
#include "models/phi3v_config.h"

static void load(const char *rel, phi3v_config *c) {
    vlm_config vc;
    vlm_err err;
    vlm_status st = vlm_config_load(tu_shared(rel), &vc, &err);
    if (st == VLM_OK) st = phi3v_config_from_config(&vc, rel, c, &err);
    if (st != VLM_OK) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    vlm_config_free(&vc);
}

/* config.json text with the required keys of a small model plus `extra`
 * members, through io/config and the mapping. */
static vlm_status from_text(const char *extra, phi3v_config *c, vlm_err *err) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\"architectures\": [\"Phi3VForCausalLM\"], \"hidden_size\": 64, "
             "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
             "\"vocab_size\": 300%s%s}",
             extra[0] ? ", " : "", extra);
    vlm_config vc;
    vlm_status st = vlm_config_parse(text, strlen(text), "x.json", &vc, err);
    if (st == VLM_OK) st = phi3v_config_from_config(&vc, "x.json", c, err);
    vlm_config_free(&vc);
    return st;
}

static void test_phi35(void **state) {
    (void)state;
    phi3v_config c, d;
    load("models/phi-3.5-vision-instruct/config.reconstructed.json", &c);
    phi3v_config_default(&d);
    assert_int_equal(c.hidden, 3072);
    assert_int_equal(c.head_dim, 96);
    assert_int_equal(c.n_kv_heads, 32);
    assert_int_equal(c.vocab, 32064);
    assert_int_equal(c.original_max_position_embeddings, 4096);
    assert_int_equal(c.rope_kind, PHI3_ROPE_SU);
    /* The built-in default is the same model. */
    assert_memory_equal(c.short_factor, d.short_factor, sizeof c.short_factor);
    assert_memory_equal(c.long_factor, d.long_factor, sizeof c.long_factor);
    assert_true(c.short_factor[0] == 1.08f && c.long_factor[47] == (float)64.83999633789062);
    /* CLIP-L/14-336 when config.json has no vision_config. */
    assert_int_equal(c.vision.hidden, 1024);
    assert_int_equal(c.vision.n_layers, 24);
    assert_int_equal(phi3v_vision_layers_run(&c), 23);
    assert_int_equal(phi3v_vision_grid(&c), 24);
    assert_int_equal(phi3v_tokens_per_crop(&c), 144);
    /* §3.8 token counts. */
    assert_int_equal(phi3v_image_tokens(&c, 2, 2), 757);
    assert_int_equal(phi3v_image_tokens(&c, 1, 2), 457);
    assert_int_equal(phi3v_image_tokens(&c, 2, 1), 469);
    assert_int_equal(phi3v_image_tokens(&c, 4, 1), 781);
    assert_int_equal(phi3v_image_tokens(&c, 4, 4), 2509);
    assert_true(fabs(phi3v_rope_mscale(&c) - 1.1902380714238083) < 1e-15);
    assert_false(c.tie_word_embeddings);
}

static void test_phi3_128k(void **state) {
    (void)state;
    phi3v_config c;
    load("models/phi-3-vision-128k-instruct/config.json", &c);
    assert_true(c.short_factor[0] == 1.05f);
    assert_true(c.long_factor[0] == (float)1.0299999713897705);
    assert_int_equal(c.n_layers, 32);
}

static void test_bad(void **state) {
    (void)state;
    phi3v_config c;
    vlm_err err;
    assert_int_equal(from_text("\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}", &c, &err),
                     VLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "yarn"));
    /* A 3x3 patch grid cannot be 2x2-merged. */
    assert_int_equal(
        from_text("\"rope_scaling\": null, \"img_processor\": {\"image_dim_out\": "
                  "64}, \"vision_config\": {\"hidden_size\": 64, "
                  "\"num_attention_heads\": 4, \"image_size\": 42, \"patch_size\": 14}",
                  &c, &err),
        VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "odd"));
    assert_int_equal(from_text("\"img_processor\": {\"image_dim_out\": 1024, \"num_img_tokens\": "
                               "100}",
                               &c, &err),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "num_img_tokens"));
    assert_int_equal(from_text("\"img_processor\": {\"image_dim_out\": 1024, \"type_feature\": "
                               "\"cls_patch\"}",
                               &c, &err),
                     VLM_ERR_UNSUPPORTED);
    assert_int_equal(from_text("\"img_processor\": {}, \"vision_config\": {\"hidden_act\": "
                               "\"gelu\"}",
                               &c, &err),
                     VLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "gelu"));
    assert_int_equal(from_text("\"embd_layer\": {\"hd_transform_order\": \"glb_sub\"}, "
                               "\"img_processor\": {}",
                               &c, &err),
                     VLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "glb_sub"));
    assert_int_not_equal(from_text("\"max_position_embeddings\": \"big\"", &c, &err), VLM_OK);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    /* Without img_processor the model is text-only; the vision_config
     * extension names the feature layer too. */
    vlm_status st = from_text("", &c, &err);
    if (st != VLM_OK) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, VLM_OK);
    assert_false(c.has_vision);
    assert_int_equal(from_text("\"img_processor\": {\"image_dim_out\": 64}, \"vision_config\": "
                               "{\"hidden_size\": 64, \"num_attention_heads\": 4, "
                               "\"num_hidden_layers\": 3, \"image_size\": 56, \"layer_idx\": -3}",
                               &c, &err),
                     VLM_OK);
    assert_true(c.has_vision);
    assert_int_equal(c.vision.layer_idx, -3);
    assert_int_equal(phi3v_vision_layers_run(&c), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phi35),
        cmocka_unit_test(test_phi3_128k),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
