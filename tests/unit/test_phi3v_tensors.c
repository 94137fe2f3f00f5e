/* models/phi3v_tensors: the list for the published config is exactly the
 * published index (names) and the spec §8 counts; the checkpoint check
 * finds missing tensors, wrong shapes and wrong dtypes, naming file and
 * tensor. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/phi3v_tensors.h"

static void load_config(const char *rel, vlm_config *c) {
    vlm_err err = {0};
    if (vlm_config_load(tu_shared(rel), c, &err)) fail_msg("%s", err.msg);
}

static void test_full_list_matches_published_index(void **state) {
    (void)state;
    vlm_config c;
    load_config("models/phi-3.5-vision-instruct/config.reconstructed.json", &c);
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    vlm_err err = {0};
    assert_int_equal(phi3v_tensor_specs(&c, &specs, &n, &err), VLM_OK);

    size_t len = 0;
    char *text = tu_read_file(
        tu_shared("models/phi-3-vision-128k-instruct/model.safetensors.index.json"), &len);
    assert_non_null(text);
    vlm_json_init();
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    assert_int_equal((size_t)cJSON_GetArraySize(wm), n); /* 592 */
    assert_int_equal(n, 592);
    uint64_t bytes = 0, parts[PHI3V_PART_COUNT] = {0};
    for (size_t i = 0; i < n; i++) {
        if (!cJSON_GetObjectItemCaseSensitive(wm, specs[i].name))
            fail_msg("%s is not in the published index", specs[i].name);
        uint64_t e = 1;
        for (int k = 0; k < specs[i].rank; k++) e *= (uint64_t)specs[i].shape[k];
        bytes += 2 * e;
        parts[specs[i].part] += e;
        assert_int_equal(phi3v_part_of(specs[i].name), specs[i].part);
    }
    /* bf16 bytes equal the index's total_size (spec §8). */
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(j, "metadata");
    assert_int_equal(bytes,
                     (uint64_t)cJSON_GetObjectItemCaseSensitive(md, "total_size")->valuedouble);
    /* Spec §8 counts. */
    assert_int_equal(parts[PHI3V_PART_LM], 3821079552ull);
    assert_int_equal(parts[PHI3V_PART_GLUE], 22034432ull);
    assert_int_equal(parts[PHI3V_PART_VISION], 303507456ull);
    uint64_t counts[PHI3V_PART_COUNT];
    assert_int_equal(phi3v_param_counts(&c, counts, &err), VLM_OK);
    assert_int_equal(counts[0] + counts[1] + counts[2], 4146621440ull);
    /* Unused: layer 23 (16 tensors) and post_layernorm (2), spec §8. */
    int unused = 0;
    for (size_t i = 0; i < n; i++) unused += !specs[i].used;
    assert_int_equal(unused, 18);
    cJSON_Delete(j);
    vlm_free(specs);
    vlm_config_free(&c);
}

static vlm_status zero_fill(void *user, size_t index, uint64_t offset, void *buf, size_t len,
                            vlm_err *err) {
    (void)user, (void)index, (void)offset, (void)err;
    memset(buf, 0, len);
    return VLM_OK;
}

static const char *small_config =
    "{\"architectures\": [\"Phi3VForCausalLM\"], \"hidden_size\": 16, \"intermediate_size\": 24,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
    " \"vocab_size\": 50, \"bos_token_id\": 1, \"eos_token_id\": 2, \"pad_token_id\": 0,"
    " \"embd_layer\": {\"projection_cls\": \"mlp\", \"use_hd_transform\": true,"
    " \"with_learnable_separator\": true},"
    " \"img_processor\": {\"image_dim_out\": 8},"
    " \"vision_config\": {\"hidden_size\": 8, \"intermediate_size\": 12, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"image_size\": 28, \"patch_size\": 14}}";

/* Write the list for small_config, with tensor `skip` left out and tensor
 * `bad` given a wrong shape (-1: none). */
static void write_small(const char *dir, long skip, long bad, vlm_dtype dtype) {
    vlm_config c;
    vlm_err err = {0};
    assert_int_equal(vlm_config_parse(small_config, strlen(small_config), "c", &c, &err), VLM_OK);
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    assert_int_equal(phi3v_tensor_specs(&c, &specs, &n, &err), VLM_OK);
    vlm_st_wtensor *w = calloc(n, sizeof *w);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if ((long)i == skip) continue;
        w[m].name = specs[i].name;
        w[m].dtype = dtype;
        w[m].rank = specs[i].rank;
        memcpy(w[m].shape, specs[i].shape, sizeof w[m].shape);
        if ((long)i == bad) w[m].shape[0] += 1;
        w[m].shard = i < n / 2 ? 0 : 1;
        m++;
    }
    assert_int_equal(vlm_st_write_sharded(dir, w, m, 2, NULL, 0, zero_fill, NULL, &err), VLM_OK);
    free(w);
    vlm_free(specs);
    vlm_config_free(&c);
}

static vlm_status check_dir(const char *dir, vlm_err *err) {
    vlm_config c;
    assert_int_equal(vlm_config_parse(small_config, strlen(small_config), "c", &c, err), VLM_OK);
    vlm_tensor_set *s = NULL;
    assert_int_equal(vlm_tensor_set_open(dir, &s, err), VLM_OK);
    vlm_status st = phi3v_check_tensors(&c, s, err);
    vlm_tensor_set_close(s);
    vlm_config_free(&c);
    return st;
}

static void test_check(void **state) {
    (void)state;
    vlm_err err = {0};
    char *dir = tu_mkdtemp();
    write_small(dir, -1, -1, VLM_DTYPE_BF16);
    if (check_dir(dir, &err)) fail_msg("%s", err.msg);
    tu_rmtree(dir);
    free(dir);

    /* Tensor 1 is model.layers.0.input_layernorm.weight; 2 is the GQA qkv
     * [(2 + 2*1) * 8, 16] = [32, 16]. */
    dir = tu_mkdtemp();
    write_small(dir, 1, -1, VLM_DTYPE_BF16);
    assert_int_equal(check_dir(dir, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "\"model.layers.0.input_layernorm.weight\" is missing"));
    assert_non_null(strstr(err.msg, dir));
    tu_rmtree(dir);
    free(dir);

    dir = tu_mkdtemp();
    write_small(dir, -1, 2, VLM_DTYPE_BF16);
    assert_int_equal(check_dir(dir, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "model-00001-of-00002.safetensors: tensor "
                                    "\"model.layers.0.self_attn.qkv_proj.weight\" has shape "
                                    "[33, 16] but the config implies [32, 16]"));
    tu_rmtree(dir);
    free(dir);

    dir = tu_mkdtemp();
    write_small(dir, -1, -1, VLM_DTYPE_I32);
    assert_int_equal(check_dir(dir, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "dtype I32"));
    tu_rmtree(dir);
    free(dir);
}

static void test_unsupported(void **state) {
    (void)state;
    vlm_config c;
    vlm_err err = {0};
    const char *t = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 16,"
                    " \"intermediate_size\": 24, \"num_hidden_layers\": 2,"
                    " \"num_attention_heads\": 2, \"vocab_size\": 50}";
    assert_int_equal(vlm_config_parse(t, strlen(t), "c", &c, &err), VLM_OK);
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    assert_int_equal(phi3v_tensor_specs(&c, &specs, &n, &err), VLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "LlamaForCausalLM"));
    vlm_config_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_list_matches_published_index),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_unsupported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
