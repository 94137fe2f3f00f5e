/* models/phi3v_config - see phi3v_config.h. */
#include "models/phi3v_config.h"

#include <math.h>
#include <string.h>

#include <stdint.h>

/* LongRoPE factors of Phi-3.5-vision-instruct (spec §6.5), parsed as doubles
 * and stored as float32 exactly as torch.tensor(list, dtype=float32) does. */
static const double phi35_long_factor[48] = {
    1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601,
    1.5899999141693115, 1.600000023841858,  1.6200000047683716, 2.620000123977661,
    3.2300000190734863, 3.2300000190734863, 4.789999961853027,  7.400000095367432,
    7.700000286102295,  9.09000015258789,   12.199999809265137, 17.670000076293945,
    24.46000099182129,  28.57000160217285,  30.420001983642578, 30.840002059936523,
    32.590003967285156, 32.93000411987305,  42.320003509521484, 44.96000289916992,
    50.340003967285156, 50.45000457763672,  57.55000305175781,  57.93000411987305,
    58.21000289916992,  60.1400032043457,   62.61000442504883,  62.62000274658203,
    62.71000289916992,  63.1400032043457,   63.1400032043457,   63.77000427246094,
    63.93000411987305,  63.96000289916992,  63.970001220703125, 64.02999877929688,
    64.06999969482422,  64.08000183105469,  64.12000274658203,  64.41000366210938,
    64.4800033569336,   64.51000213623047,  64.52999877929688,  64.83999633789062,
};
static const double phi35_short_factor[48] = {
    1.08,
    1.1,
    1.1300000000000001,
    1.2800000000000002,
    1.3100000000000003,
    1.4500000000000004,
    1.4500000000000004,
    1.9500000000000008,
    2.030000000000001,
    2.4299999999999926,
    2.5699999999999896,
    2.9499999999999815,
    3.729999999999965,
    3.869999999999962,
    4.189999999999955,
    4.43999999999995,
    4.6399999999999455,
    4.979999999999938,
    5.159999999999934,
    5.279999999999932,
    5.759999999999922,
    5.889999999999919,
    5.889999999999919,
    5.969999999999917,
    6.089999999999915,
    6.2799999999999105,
    6.7699999999999,
    6.8899999999998975,
    7.109999999999893,
    7.129999999999892,
    7.179999999999891,
    7.289999999999889,
    7.339999999999888,
    7.559999999999883,
    7.619999999999882,
    7.69999999999988,
    7.879999999999876,
    7.879999999999876,
    7.879999999999876,
    7.939999999999875,
    7.949999999999875,
    7.979999999999874,
    8.19999999999987,
    8.439999999999864,
    8.469999999999864,
    8.589999999999861,
    8.809999999999857,
    8.999999999999853,
};

void phi3v_config_default(phi3v_config *c) {
    memset(c, 0, sizeof *c);
    c->hidden = 3072;
    c->intermediate = 8192;
    c->n_layers = 32;
    c->n_heads = 32;
    c->n_kv_heads = 32;
    c->head_dim = 96;
    c->vocab = 32064;
    c->rms_eps = 1e-5f;
    c->rope_theta = 10000.0;
    c->max_position_embeddings = 131072;
    c->original_max_position_embeddings = 4096;
    c->rope_kind = PHI3_ROPE_SU;
    for (int i = 0; i < 48; i++) {
        c->short_factor[i] = (float)phi35_short_factor[i];
        c->long_factor[i] = (float)phi35_long_factor[i];
    }
    c->tie_word_embeddings = false;
    c->bos_id = 1;
    c->eos_id = 2;
    c->has_vision = true;
    c->vision.hidden = 1024;
    c->vision.intermediate = 4096;
    c->vision.n_layers = 24;
    c->vision.n_heads = 16;
    c->vision.image_size = 336;
    c->vision.patch_size = 14;
    c->vision.ln_eps = 1e-5f;
    c->vision.layer_idx = -2;
    c->image_dim_out = 1024;
}

vlm_status phi3v_config_from_config(const vlm_config *v, const char *what, phi3v_config *c,
                                    vlm_err *err) {
    phi3v_config_default(c);
    if (v->max_position_embeddings > INT32_MAX || v->original_max_position_embeddings > INT32_MAX)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: max_position_embeddings %lld", what,
                           (long long)v->max_position_embeddings);
    c->hidden = v->hidden_size;
    c->intermediate = v->intermediate_size;
    c->n_layers = v->num_hidden_layers;
    c->n_heads = v->num_attention_heads;
    c->n_kv_heads = v->num_key_value_heads;
    c->head_dim = v->head_dim;
    c->vocab = v->vocab_size;
    c->rms_eps = v->rms_norm_eps;
    c->rope_theta = v->rope_theta;
    c->max_position_embeddings = (int)v->max_position_embeddings;
    /* absent: no LongRoPE switch point other than the table's end */
    c->original_max_position_embeddings = v->original_max_position_embeddings > 0
                                              ? (int)v->original_max_position_embeddings
                                              : (int)v->max_position_embeddings;
    c->tie_word_embeddings = v->tie_word_embeddings;
    c->bos_id = v->bos_token_id;
    c->eos_id = v->eos_token_id;
    if (strcmp(v->hidden_act, "silu"))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" (only silu)", what,
                           v->hidden_act);

    const vlm_rope_scaling *rs = &v->rope_scaling;
    if (!rs->type[0] || !strcmp(rs->type, "default")) {
        c->rope_kind = PHI3_ROPE_PLAIN;
    } else if (!strcmp(rs->type, "su") || !strcmp(rs->type, "longrope")) {
        int half = c->head_dim / 2;
        if (half > PHI3V_MAX_ROPE_HALF)
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: head_dim %d is too large", what,
                               c->head_dim);
        if (rs->n_short != half || rs->n_long != half) /* io/config checked; kept for safety */
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: rope_scaling short_factor/long_factor have %d/%d values, "
                               "head_dim/2 is %d",
                               what, rs->n_short, rs->n_long, half);
        c->rope_kind = PHI3_ROPE_SU;
        memcpy(c->short_factor, rs->short_factor, (size_t)half * sizeof(float));
        memcpy(c->long_factor, rs->long_factor, (size_t)half * sizeof(float));
    } else {
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: rope_scaling type \"%s\"", what,
                           rs->type);
    }

    c->has_vision = v->has_img_processor;
    if (c->has_vision) {
        const vlm_vision_config *vc = &v->vision;
        if (strcmp(v->type_feature, "patch"))
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: img_processor.type_feature \"%s\" (only patch)", what,
                               v->type_feature);
        if (v->has_embd_layer && v->hd_transform_order[0] &&
            strcmp(v->hd_transform_order, "sub_glb"))
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: embd_layer.hd_transform_order \"%s\" (only sub_glb)", what,
                               v->hd_transform_order);
        if (strcmp(vc->hidden_act, "quick_gelu"))
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: vision_config.hidden_act \"%s\" (only quick_gelu)", what,
                               vc->hidden_act);
        if (vc->num_channels != 3)
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: vision_config.num_channels %d (only 3)", what,
                               vc->num_channels);
        c->image_dim_out = v->image_dim_out;
        c->vision.hidden = vc->hidden_size;
        c->vision.intermediate = vc->intermediate_size;
        c->vision.n_layers = vc->num_hidden_layers;
        c->vision.n_heads = vc->num_attention_heads;
        c->vision.image_size = vc->image_size;
        c->vision.patch_size = vc->patch_size;
        c->vision.ln_eps = vc->layer_norm_eps;
        c->vision.layer_idx = v->layer_idx;
        int grid = vc->image_size / vc->patch_size;
        if (v->num_img_tokens != (grid / 2) * (grid / 2))
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: img_processor.num_img_tokens %d, but a %dx%d patch grid "
                               "merges to %d",
                               what, v->num_img_tokens, grid, grid, (grid / 2) * (grid / 2));
    }
    return phi3v_config_check(c, err);
}

vlm_status phi3v_config_check(const phi3v_config *c, vlm_err *err) {
#define NEED(cond, ...)                                                                            \
    do {                                                                                           \
        if (!(cond)) return vlm_err_set(err, VLM_ERR_FORMAT, __VA_ARGS__);                         \
    } while (0)
    NEED(c->hidden > 0 && c->n_heads > 0 && c->hidden % c->n_heads == 0,
         "config: hidden_size %d / num_attention_heads %d", c->hidden, c->n_heads);
    NEED(c->head_dim == c->hidden / c->n_heads && c->head_dim % 2 == 0 &&
             c->head_dim / 2 <= PHI3V_MAX_ROPE_HALF,
         "config: head_dim %d", c->head_dim);
    NEED(c->n_kv_heads > 0 && c->n_heads % c->n_kv_heads == 0,
         "config: num_key_value_heads %d does not divide num_attention_heads %d", c->n_kv_heads,
         c->n_heads);
    NEED(c->intermediate > 0, "config: intermediate_size %d", c->intermediate);
    NEED(c->n_layers > 0 && c->n_layers <= 4096, "config: num_hidden_layers %d", c->n_layers);
    NEED(c->vocab > 0, "config: vocab_size %d", c->vocab);
    NEED(c->rms_eps > 0, "config: rms_norm_eps %g", (double)c->rms_eps);
    NEED(c->rope_theta > 0, "config: rope_theta %g", c->rope_theta);
    NEED(c->max_position_embeddings > 0 && c->original_max_position_embeddings > 0,
         "config: max_position_embeddings %d / original_max_position_embeddings %d",
         c->max_position_embeddings, c->original_max_position_embeddings);
    if (c->has_vision) {
        const clip_config *v = &c->vision;
        NEED(v->hidden > 0 && v->n_heads > 0 && v->hidden % v->n_heads == 0,
             "config: vision hidden_size %d / num_attention_heads %d", v->hidden, v->n_heads);
        NEED(v->intermediate > 0, "config: vision intermediate_size %d", v->intermediate);
        NEED(v->patch_size > 0 && v->image_size > 0 && v->image_size % v->patch_size == 0,
             "config: vision image_size %d is not a multiple of patch_size %d", v->image_size,
             v->patch_size);
        int grid = v->image_size / v->patch_size;
        NEED(grid % 2 == 0, "config: vision patch grid %d is odd (the 2x2 merge needs it even)",
             grid);
        NEED(v->n_layers > 0 && v->layer_idx < 0 && v->layer_idx >= -v->n_layers,
             "config: vision layer_idx %d with %d layers (a negative index is expected)",
             v->layer_idx, v->n_layers);
        NEED(v->ln_eps > 0, "config: vision layer_norm_eps %g", (double)v->ln_eps);
        NEED(c->image_dim_out == v->hidden, "config: image_dim_out %d != vision width %d",
             c->image_dim_out, v->hidden);
    }
#undef NEED
    return VLM_OK;
}

int phi3v_vision_grid(const phi3v_config *c) {
    return c->vision.image_size / c->vision.patch_size;
}

int phi3v_vision_layers_run(const phi3v_config *c) {
    /* hidden_states has n_layers+1 entries; entry n_layers+1+idx is the output
     * of that many layers. */
    return c->vision.n_layers + 1 + c->vision.layer_idx;
}

int phi3v_tokens_per_crop(const phi3v_config *c) {
    int m = phi3v_vision_grid(c) / 2;
    return m * m;
}

int phi3v_image_tokens(const phi3v_config *c, int hc, int wc) {
    int m = phi3v_vision_grid(c) / 2;
    return (hc * wc + 1) * m * m + 1 + (hc + 1) * m;
}

double phi3v_rope_mscale(const phi3v_config *c) {
    double scale = (double)c->max_position_embeddings / c->original_max_position_embeddings;
    if (scale <= 1.0) return 1.0;
    return sqrt(1.0 + log(scale) / log((double)c->original_max_position_embeddings));
}
