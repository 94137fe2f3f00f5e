/* io/config: the real Phi-3-vision-128k and reconstructed Phi-3.5 files
 * parse to the values they hold (checked against the JSON read by a second,
 * independent path: cJSON directly), range errors name file and key, and
 * allocation failures are clean. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "io/config.h"

static cJSON *load_json(const char *path) {
    size_t len = 0;
    char *text = tu_read_file(path, &len);
    assert_non_null(text);
    vlm_json_init();
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    assert_non_null(j);
    return j;
}

static int jint(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_true(cJSON_IsNumber(it));
    return (int)it->valuedouble;
}

/* Compare the parsed struct with the file's own values. */
static void check_phi3v(const char *rel, int window, int pad) {
    const char *path = tu_shared(rel);
    vlm_config c;
    vlm_err err = {0};
    if (vlm_config_load(path, &c, &err)) fail_msg("%s", err.msg);
    cJSON *j = load_json(path);
    assert_string_equal(c.architecture, "Phi3VForCausalLM");
    assert_string_equal(c.model_type, "phi3_v");
    assert_string_equal(c.torch_dtype, "bfloat16");
    assert_int_equal(c.hidden_size, jint(j, "hidden_size"));
    assert_int_equal(c.intermediate_size, jint(j, "intermediate_size"));
    assert_int_equal(c.num_hidden_layers, jint(j, "num_hidden_layers"));
    assert_int_equal(c.num_attention_heads, jint(j, "num_attention_heads"));
    assert_int_equal(c.num_key_value_heads, jint(j, "num_key_value_heads"));
    assert_int_equal(c.vocab_size, jint(j, "vocab_size"));
    assert_int_equal(c.head_dim, 96); /* spec §0 */
    assert_int_equal(c.max_position_embeddings, jint(j, "max_position_embeddings"));
    assert_int_equal(c.original_max_position_embeddings,
                     jint(j, "original_max_position_embeddings"));
    assert_int_equal(c.sliding_window, window);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.eos_token_id, 2);
    assert_int_equal(c.pad_token_id, pad);
    assert_false(c.tie_word_embeddings);
    assert_true(c.rms_norm_eps == 1e-5f);
    assert_true(c.rope_theta == 10000.0);
    assert_string_equal(c.rope_scaling.type, "su");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    const char *keys[2] = {"short_factor", "long_factor"};
    for (int k = 0; k < 2; k++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(rs, keys[k]);
        const float *got = k ? c.rope_scaling.long_factor : c.rope_scaling.short_factor;
        assert_int_equal(k ? c.rope_scaling.n_long : c.rope_scaling.n_short, 48);
        int i = 0;
        for (const cJSON *e = arr->child; e; e = e->next, i++)
            assert_true(got[i] == (float)e->valuedouble); /* double, then narrowed */
    }
    assert_true(c.has_embd_layer);
    assert_string_equal(c.embedding_cls, "image");
    assert_string_equal(c.projection_cls, "mlp");
    assert_string_equal(c.hd_transform_order, "sub_glb");
    assert_true(c.use_hd_transform);
    assert_true(c.with_learnable_separator);
    assert_string_equal(c.img_processor_name, "clip_vision_model");
    assert_string_equal(c.img_processor_model, "openai/clip-vit-large-patch14-336");
    assert_int_equal(c.image_dim_out, 1024);
    assert_int_equal(c.num_img_tokens, 144);
    assert_int_equal(c.layer_idx, -2);
    assert_string_equal(c.type_feature, "patch");
    /* No vision_config in the published files: CLIP ViT-L/14-336 (spec §4). */
    assert_false(c.vision.from_config);
    assert_int_equal(c.vision.hidden_size, 1024);
    assert_int_equal(c.vision.intermediate_size, 4096);
    assert_int_equal(c.vision.num_hidden_layers, 24);
    assert_int_equal(c.vision.num_attention_heads, 16);
    assert_int_equal(c.vision.image_size, 336);
    assert_int_equal(c.vision.patch_size, 14);
    assert_true(c.vision.layer_norm_eps == 1e-5f);
    assert_string_equal(c.vision.hidden_act, "quick_gelu");
    cJSON_Delete(j);
    vlm_config_free(&c);
}

static void test_real_configs(void **state) {
    (void)state;
    /* 128k: sliding_window 131072, pad absent (code default 32000); 3.5:
     * 262144 and 32000 (spec §11). */
    check_phi3v("models/phi-3-vision-128k-instruct/config.json", 131072, 32000);
    check_phi3v("models/phi-3.5-vision-instruct/config.reconstructed.json", 262144, 32000);
}

static void test_real_preprocessor_and_tokenizer(void **state) {
    (void)state;
    vlm_err err = {0};
    vlm_preproc_config p;
    if (vlm_preproc_config_load(
            tu_shared("models/phi-3-vision-128k-instruct/preprocessor_config.json"), &p, &err))
        fail_msg("%s", err.msg);
    assert_true(p.present);
    assert_int_equal(p.num_crops, 16);
    assert_int_equal(p.num_img_tokens, 144);
    assert_true(p.image_mean[0] == 0.48145466f && p.image_mean[2] == 0.40821073f);
    assert_true(p.image_std[1] == 0.26130258f);
    assert_string_equal(p.image_processor_type, "Phi3VImageProcessor");

    vlm_tokenizer_config t;
    const char *tp = tu_shared("models/phi-3-vision-128k-instruct/tokenizer_config.json");
    if (vlm_tokenizer_config_load(tp, &t, &err)) fail_msg("%s", err.msg);
    cJSON *j = load_json(tp);
    assert_true(t.present);
    assert_string_equal(t.chat_template,
                        cJSON_GetObjectItemCaseSensitive(j, "chat_template")->valuestring);
    assert_non_null(strstr(t.chat_template, "<|assistant|>"));
    assert_true(t.add_bos_token);
    assert_false(t.add_eos_token);
    assert_string_equal(t.bos_token, "<s>");
    assert_string_equal(t.eos_token, "<|endoftext|>");
    assert_string_equal(t.pad_token, "<|endoftext|>");
    assert_string_equal(t.unk_token, "<unk>");
    assert_int_equal(t.model_max_length, 131072);
    assert_string_equal(t.tokenizer_class, "LlamaTokenizer");
    cJSON_Delete(j);
    vlm_tokenizer_config_free(&t);
}

static void test_generation_config(void **state) {
    (void)state;
    vlm_gen_config g;
    vlm_err err = {0};
    /* Absent file: the spec §2.6 stop set. */
    assert_int_equal(vlm_gen_config_load("/nonexistent/generation_config.json", &g, &err), VLM_OK);
    assert_false(g.present);
    assert_int_equal(g.n_stop_ids, 3);
    assert_int_equal(g.stop_ids[0], 32007);
    assert_int_equal(g.stop_ids[1], 32000);
    assert_int_equal(g.stop_ids[2], 2);
    const char *one = "{\"eos_token_id\": 32000, \"bos_token_id\": 1, \"do_sample\": false}";
    assert_int_equal(vlm_gen_config_parse(one, strlen(one), "g.json", &g, &err), VLM_OK);
    assert_true(g.present);
    assert_int_equal(g.n_stop_ids, 1);
    assert_int_equal(g.stop_ids[0], 32000);
    assert_int_equal(g.bos_token_id, 1);
    const char *list = "{\"eos_token_id\": [32007, 32001, 32000], \"pad_token_id\": 32000}";
    assert_int_equal(vlm_gen_config_parse(list, strlen(list), "g.json", &g, &err), VLM_OK);
    assert_int_equal(g.n_stop_ids, 3);
    assert_int_equal(g.stop_ids[1], 32001);
    assert_int_equal(g.pad_token_id, 32000);
    const char *bad = "{\"eos_token_id\": [1, \"x\"]}";
    assert_int_equal(vlm_gen_config_parse(bad, strlen(bad), "g.json", &g, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "g.json"));
    assert_non_null(strstr(err.msg, "eos_token_id"));
    const char *bad2 = "{\"top_p\": 2}";
    assert_int_equal(vlm_gen_config_parse(bad2, strlen(bad2), "g.json", &g, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "top_p"));
}

static void test_token_objects_and_template_lists(void **state) {
    (void)state;
    const char *text =
        "{\"bos_token\": {\"content\": \"<s>\", \"lstrip\": false}, \"eos_token\": null,"
        " \"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
        " {\"name\": \"default\", \"template\": \"D\"}], \"model_max_length\": 1e30}";
    vlm_tokenizer_config t;
    vlm_err err = {0};
    assert_int_equal(vlm_tokenizer_config_parse(text, strlen(text), "tc.json", &t, &err), VLM_OK);
    assert_string_equal(t.bos_token, "<s>");
    assert_null(t.eos_token);
    assert_string_equal(t.chat_template, "D");
    assert_int_equal(t.model_max_length, 0);
    assert_true(t.add_bos_token);
    vlm_tokenizer_config_free(&t);
    const char *bad = "{\"bos_token\": 5}";
    assert_int_equal(vlm_tokenizer_config_parse(bad, strlen(bad), "tc.json", &t, &err),
                     VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tc.json: \"bos_token\""));
}

static void test_vision_config_extension(void **state) {
    (void)state;
    const char *text =
        "{\"architectures\": [\"Phi3VForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": "
        "128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100,"
        " \"bos_token_id\": 1, \"eos_token_id\": 2, \"pad_token_id\": 0,"
        " \"img_processor\": {\"image_dim_out\": 32, \"layer_idx\": -2},"
        " \"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 64, "
        "\"num_hidden_layers\": 3, \"num_attention_heads\": 2, \"image_size\": 336, "
        "\"patch_size\": 14, \"layer_norm_eps\": 1e-6}}";
    vlm_config c;
    vlm_err err = {0};
    if (vlm_config_parse(text, strlen(text), "small/config.json", &c, &err))
        fail_msg("%s", err.msg);
    assert_true(c.vision.from_config);
    assert_int_equal(c.vision.hidden_size, 32);
    assert_int_equal(c.vision.num_hidden_layers, 3);
    assert_true(c.vision.layer_norm_eps == 1e-6f);
    assert_string_equal(c.vision.hidden_act, "quick_gelu");
    assert_int_equal(c.num_key_value_heads, 4); /* defaults to the heads */
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.rope_scaling.type[0], '\0');
    vlm_config_free(&c);
}

/* Each broken config: status FORMAT (or UNSUPPORTED), and the message names
 * the file and the key. */
static void test_config_errors(void **state) {
    (void)state;
    const char *base = "\"architectures\": [\"Phi3VForCausalLM\"], \"intermediate_size\": 128,"
                       " \"num_hidden_layers\": 2, \"vocab_size\": 100";
    struct {
        const char *extra;
        const char *needle;
    } cases[] = {
        {"\"hidden_size\": 0, \"num_attention_heads\": 4", "\"hidden_size\" = 0"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 5", "not a multiple"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": 3",
         "num_key_value_heads"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"rms_norm_eps\": -1", "rms_norm_eps"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_theta\": \"x\"", "rope_theta"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"eos_token_id\": 100", "eos_token_id"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_scaling\": {\"type\": \"su\","
         " \"short_factor\": [1, 2], \"long_factor\": [1, 2]}",
         "rope_scaling: short_factor has 2"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_scaling\": {\"type\": \"su\","
         " \"short_factor\": [1,1,1,1,1,1,1,-1], \"long_factor\": [1,1,1,1,1,1,1,1]}",
         "\"short_factor\"[7]"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"rope_scaling\": {\"type\": \"xx\"}",
         "\"xx\""},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"vision_config\": {\"image_size\": "
         "100, \"patch_size\": 14}",
         "vision_config: \"image_size\""},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"vision_config\": {\"hidden_size\": "
         "30, \"num_attention_heads\": 4}",
         "vision_config: \"hidden_size\" 30"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"img_processor\": {\"image_dim_out\": "
         "7}",
         "img_processor: \"image_dim_out\" 7"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"img_processor\": {\"layer_idx\": -99}",
         "layer_idx"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"embd_layer\": 3", "embd_layer"},
        {"\"hidden_size\": 64, \"num_attention_heads\": 4, \"max_position_embeddings\": 100,"
         " \"original_max_position_embeddings\": 200",
         "original_max_position_embeddings"},
        {"\"num_attention_heads\": 4", "\"hidden_size\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char text[1024];
        snprintf(text, sizeof text, "{%s, %s}", base, cases[i].extra);
        vlm_config c;
        vlm_err err = {0};
        vlm_status st = vlm_config_parse(text, strlen(text), "m/config.json", &c, &err);
        if (st == VLM_OK || !strstr(err.msg, "m/config.json") || !strstr(err.msg, cases[i].needle))
            fail_msg("case %zu: status %d, message \"%s\"", i, st, err.msg);
        vlm_config_free(&c);
    }
    vlm_config c;
    vlm_err err = {0};
    assert_int_equal(vlm_config_parse("[1]", 3, "m/config.json", &c, &err), VLM_ERR_FORMAT);
    assert_int_equal(vlm_config_parse("{", 1, "m/config.json", &c, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "m/config.json"));
    assert_int_equal(vlm_config_load("/nonexistent/config.json", &c, &err), VLM_ERR_NOT_FOUND);
}

static void test_model_folder_and_alloc_failures(void **state) {
    (void)state;
    /* A folder with the 128k files (no generation_config.json). */
    const char *dir = tu_shared("models/phi-3-vision-128k-instruct");
    char d[4096];
    snprintf(d, sizeof d, "%s", dir);
    vlm_mem_stats s0, s1;
    bool done = false;
    int nomem = 0;
    for (uint64_t k = 1; k < 5000 && !done; k++) {
        vlm_alloc_get_stats(&s0);
        vlm_model_configs m;
        vlm_err err = {0};
        vlm_alloc_fail_at(vlm_alloc_count() + k, false);
        vlm_status st = vlm_model_configs_load(d, &m, &err);
        vlm_alloc_fail_at(0, false);
        if (st == VLM_OK) {
            done = true;
            assert_int_equal(m.config.num_hidden_layers, 32);
            assert_int_equal(m.preproc.num_crops, 16);
            assert_false(m.gen.present);
            assert_int_equal(m.gen.stop_ids[0], 32007);
            assert_non_null(m.tokenizer.chat_template);
            vlm_model_configs_free(&m);
        } else if (st != VLM_ERR_NOMEM) {
            fail_msg("fail at %llu: %s", (unsigned long long)k, err.msg);
        } else {
            nomem++;
        }
        vlm_alloc_get_stats(&s1);
        assert_int_equal(s1.live_blocks, s0.live_blocks);
    }
    assert_true(done);
    assert_true(nomem > 10);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_configs),
        cmocka_unit_test(test_real_preprocessor_and_tokenizer),
        cmocka_unit_test(test_generation_config),
        cmocka_unit_test(test_token_objects_and_template_lists),
        cmocka_unit_test(test_vision_config_extension),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_model_folder_and_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
