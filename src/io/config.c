/* io/config - typed views of a model folder's JSON files. */
#include "io/config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"

/* Parse-scope chunk for the config files (config.json ~4 KB, tokenizer_config.json
 * up to ~30 KB with its added tokens): a few chunks per file. */
#define CONFIG_JSON_CHUNK ((size_t)64 << 10)

/* JSON files of a model folder are small; refuse anything absurd. */
#define CONFIG_MAX_BYTES ((size_t)64 << 20)

/* ============================================================================
 * Typed getters with ranges
 * ========================================================================== */

/* Optional integer in [lo, hi]; *out keeps its default when absent/null. */
static vlm_status get_int(const cJSON *obj, const char *key, const char *what, int64_t lo,
                          int64_t hi, bool required, int64_t *out, vlm_err *err) {
    int64_t v = *out;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!required && (!it || cJSON_IsNull(it))) return VLM_OK; /* the default stands */
    vlm_status st = vlm_json_get_int(obj, key, what, &v, err);
    if (st != VLM_OK) return st;
    if (v < lo || v > hi)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" = %lld is out of range [%lld, %lld]",
                           what, key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return VLM_OK;
}

static vlm_status get_int32(const cJSON *obj, const char *key, const char *what, int64_t lo,
                            int64_t hi, bool required, int *out, vlm_err *err) {
    int64_t v = *out;
    vlm_status st = get_int(obj, key, what, lo, hi, required, &v, err);
    if (st == VLM_OK) *out = (int)v;
    return st;
}

/* Optional finite number in (lo, hi]. */
static vlm_status get_num(const cJSON *obj, const char *key, const char *what, double lo, double hi,
                          double *out, vlm_err *err) {
    double v = *out;
    vlm_status st = vlm_json_get_double_opt(obj, key, what, &v, err);
    if (st != VLM_OK) return st;
    if (!(v > lo && v <= hi))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" = %g is out of range (%g, %g]", what,
                           key, v, lo, hi);
    *out = v;
    return VLM_OK;
}

/* Optional string copied into buf[cap]; too long is an error. */
static vlm_status get_str(const cJSON *obj, const char *key, const char *what, char *buf,
                          size_t cap, vlm_err *err) {
    const char *s = NULL;
    vlm_status st = vlm_json_get_string_opt(obj, key, what, &s, err);
    if (st != VLM_OK || !s) return st;
    size_t n = strlen(s);
    if (n >= cap)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" is %zu bytes, over the limit of %zu",
                           what, key, n, cap - 1);
    memcpy(buf, s, n + 1);
    return VLM_OK;
}

static vlm_status get_bool(const cJSON *obj, const char *key, const char *what, bool *out,
                           vlm_err *err) {
    return vlm_json_get_bool_opt(obj, key, what, out, err);
}

/* An optional member that must be an object (or null); *out NULL if absent. */
static vlm_status get_obj(const cJSON *obj, const char *key, const char *what, const cJSON **out,
                          vlm_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!it || cJSON_IsNull(it)) return VLM_OK;
    if (!cJSON_IsObject(it))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be an object", what, key);
    *out = it;
    return VLM_OK;
}

/* A token id field that may be an int, a list of ints (first taken) or null. */
static vlm_status get_token_id(const cJSON *obj, const char *key, const char *what, int64_t hi,
                               int *out, vlm_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsArray(it)) {
        it = it->child;
        if (!it) return VLM_OK;
        if (!cJSON_IsNumber(it))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must hold integers", what, key);
        double v = it->valuedouble;
        if (!(v >= -1 && v <= (double)hi) || v != floor(v))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" = %g is out of range [-1, %lld]",
                               what, key, v, (long long)hi);
        *out = (int)v;
        return VLM_OK;
    }
    return get_int32(obj, key, what, -1, hi, false, out, err);
}

/* A list of n finite positive numbers, parsed as double then narrowed. */
static vlm_status get_factors(const cJSON *obj, const char *key, const char *what, float **out,
                              int *n_out, vlm_err *err) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!arr || cJSON_IsNull(arr)) return VLM_OK;
    if (!cJSON_IsArray(arr))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be a list of numbers", what, key);
    int n = cJSON_GetArraySize(arr);
    if (n > 65536)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" has %d entries, too many", what, key,
                           n);
    float *f = VLM_NEW_ARRAY(float, n ? (size_t)n : 1, VLM_MEM_OTHER);
    if (!f) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for \"%s\"", what, key);
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
        if (!(v > 0 && v < 1e30)) {
            vlm_free(f);
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"%s\"[%d] must be a positive finite number", what, key, i);
        }
        f[i] = (float)v;
    }
    *out = f;
    *n_out = n;
    return VLM_OK;
}

/* A nested "file: key" label for messages about members of an object. */
static void sub_what(char *buf, size_t cap, const char *what, const char *key) {
    snprintf(buf, cap, "%.400s: %s", what, key);
}

/* ============================================================================
 * config.json
 * ========================================================================== */

void vlm_vision_config_clip_l336(vlm_vision_config *v) {
    memset(v, 0, sizeof *v);
    v->hidden_size = 1024;
    v->intermediate_size = 4096;
    v->num_hidden_layers = 24;
    v->num_attention_heads = 16;
    v->image_size = 336;
    v->patch_size = 14;
    v->num_channels = 3;
    v->layer_norm_eps = 1e-5f;
    snprintf(v->hidden_act, sizeof v->hidden_act, "quick_gelu");
}

static vlm_status parse_vision(const cJSON *vc, const char *w, vlm_vision_config *v, vlm_err *err) {
    vlm_status st = VLM_OK;
    double eps = v->layer_norm_eps;
    if (!st) st = get_int32(vc, "hidden_size", w, 1, 1 << 16, false, &v->hidden_size, err);
    if (!st)
        st = get_int32(vc, "intermediate_size", w, 1, 1 << 18, false, &v->intermediate_size, err);
    if (!st) st = get_int32(vc, "num_hidden_layers", w, 1, 256, false, &v->num_hidden_layers, err);
    if (!st)
        st = get_int32(vc, "num_attention_heads", w, 1, 1024, false, &v->num_attention_heads, err);
    if (!st) st = get_int32(vc, "image_size", w, 1, 8192, false, &v->image_size, err);
    if (!st) st = get_int32(vc, "patch_size", w, 1, 1024, false, &v->patch_size, err);
    if (!st) st = get_int32(vc, "num_channels", w, 1, 4, false, &v->num_channels, err);
    if (!st) st = get_num(vc, "layer_norm_eps", w, 0, 1, &eps, err);
    if (!st) st = get_str(vc, "hidden_act", w, v->hidden_act, sizeof v->hidden_act, err);
    if (st) return st;
    v->layer_norm_eps = (float)eps;
    if (v->hidden_size % v->num_attention_heads)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"hidden_size\" %d is not a multiple of \"num_attention_heads\" %d",
                           w, v->hidden_size, v->num_attention_heads);
    if (v->image_size % v->patch_size)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"image_size\" %d is not a multiple of \"patch_size\" %d", w,
                           v->image_size, v->patch_size);
    /* The 2x2 merge of spec §5.1 needs an even patch grid. */
    if ((v->image_size / v->patch_size) % 2)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: the patch grid %d x %d is odd; the 2x2 merge needs it even", w,
                           v->image_size / v->patch_size, v->image_size / v->patch_size);
    if (strcmp(v->hidden_act, "quick_gelu") && strcmp(v->hidden_act, "gelu"))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: \"hidden_act\" \"%s\" is not supported",
                           w, v->hidden_act);
    v->from_config = true;
    return VLM_OK;
}

static vlm_status parse_rope(const cJSON *rs, const char *w, int head_dim, vlm_rope_scaling *r,
                             vlm_err *err) {
    vlm_status st = get_str(rs, "type", w, r->type, sizeof r->type, err);
    if (!st && !r->type[0]) st = get_str(rs, "rope_type", w, r->type, sizeof r->type, err);
    if (st) return st;
    if (!r->type[0]) return vlm_err_set(err, VLM_ERR_FORMAT, "%s: missing \"type\"", w);
    static const char *const known[] = {"su", "longrope", "yarn", "linear", "dynamic", "default"};
    bool ok = false;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) ok |= strcmp(r->type, known[i]) == 0;
    if (!ok)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: \"type\" \"%s\" is not supported", w,
                           r->type);
    double factor = 0;
    const cJSON *fi = cJSON_GetObjectItemCaseSensitive(rs, "factor");
    if (fi && !cJSON_IsNull(fi)) {
        factor = 1;
        st = get_num(rs, "factor", w, 0, 1e6, &factor, err);
        if (st) return st;
    }
    r->factor = factor;
    st = get_factors(rs, "short_factor", w, &r->short_factor, &r->n_short, err);
    if (!st) st = get_factors(rs, "long_factor", w, &r->long_factor, &r->n_long, err);
    if (st) return st;
    if (strcmp(r->type, "su") == 0 || strcmp(r->type, "longrope") == 0) {
        /* One factor per rotary frequency: head_dim / 2 of them. */
        if (!r->short_factor || !r->long_factor)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: type \"%s\" needs \"short_factor\" and \"long_factor\"", w,
                               r->type);
        if (r->n_short != head_dim / 2 || r->n_long != head_dim / 2)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: short_factor has %d and long_factor %d entries; head_dim %d "
                               "needs %d each",
                               w, r->n_short, r->n_long, head_dim, head_dim / 2);
    }
    return VLM_OK;
}

static vlm_status parse_config(const cJSON *root, const char *what, vlm_config *c, vlm_err *err) {
    if (!cJSON_IsObject(root))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: not a JSON object", what);
    vlm_status st = VLM_OK;
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (!cJSON_IsArray(arch) || !cJSON_IsString(arch->child))
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"architectures\" must be a non-empty list of strings", what);
    if (strlen(arch->child->valuestring) >= sizeof c->architecture)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"architectures\"[0] is too long", what);
    snprintf(c->architecture, sizeof c->architecture, "%s", arch->child->valuestring);

    int64_t maxpos = 4096, origpos = 0, window = 0;
    double eps = 1e-5, theta = 10000;
    c->pad_token_id = 32000;
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    c->num_key_value_heads = 0;
    if (!st) st = get_str(root, "model_type", what, c->model_type, sizeof c->model_type, err);
    if (!st) st = get_str(root, "torch_dtype", what, c->torch_dtype, sizeof c->torch_dtype, err);
    if (!st) snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    if (!st) st = get_str(root, "hidden_act", what, c->hidden_act, sizeof c->hidden_act, err);
    if (!st) st = get_int32(root, "hidden_size", what, 1, 1 << 20, true, &c->hidden_size, err);
    if (!st)
        st = get_int32(root, "intermediate_size", what, 1, 1 << 22, true, &c->intermediate_size,
                       err);
    if (!st)
        st = get_int32(root, "num_hidden_layers", what, 1, 1024, true, &c->num_hidden_layers, err);
    if (!st)
        st = get_int32(root, "num_attention_heads", what, 1, 4096, true, &c->num_attention_heads,
                       err);
    if (!st)
        st = get_int32(root, "num_key_value_heads", what, 0, 4096, false, &c->num_key_value_heads,
                       err);
    if (!st) st = get_int32(root, "vocab_size", what, 1, 1 << 24, true, &c->vocab_size, err);
    if (!st) st = get_num(root, "rms_norm_eps", what, 0, 1, &eps, err);
    if (!st) st = get_num(root, "rope_theta", what, 0, 1e12, &theta, err);
    if (!st)
        st = get_int(root, "max_position_embeddings", what, 1, (int64_t)1 << 30, false, &maxpos,
                     err);
    if (!st)
        st = get_int(root, "original_max_position_embeddings", what, 0, (int64_t)1 << 30, false,
                     &origpos, err);
    if (!st) st = get_int(root, "sliding_window", what, 0, (int64_t)1 << 40, false, &window, err);
    if (!st)
        st = get_token_id(root, "bos_token_id", what, c->vocab_size - 1, &c->bos_token_id, err);
    if (!st)
        st = get_token_id(root, "eos_token_id", what, c->vocab_size - 1, &c->eos_token_id, err);
    if (!st)
        st = get_token_id(root, "pad_token_id", what, c->vocab_size - 1, &c->pad_token_id, err);
    if (!st) st = get_bool(root, "tie_word_embeddings", what, &c->tie_word_embeddings, err);
    if (st) return st;
    c->rms_norm_eps = (float)eps;
    c->rope_theta = theta;
    c->max_position_embeddings = maxpos;
    c->original_max_position_embeddings = origpos;
    c->sliding_window = window;
    if (c->num_key_value_heads == 0) c->num_key_value_heads = c->num_attention_heads;
    if (c->hidden_size % c->num_attention_heads)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"hidden_size\" %d is not a multiple of \"num_attention_heads\" %d",
                           what, c->hidden_size, c->num_attention_heads);
    if (c->num_key_value_heads > c->num_attention_heads ||
        c->num_attention_heads % c->num_key_value_heads)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"num_key_value_heads\" %d must divide \"num_attention_heads\" %d",
                           what, c->num_key_value_heads, c->num_attention_heads);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (c->head_dim % 2)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: head_dim %d is odd; RoPE needs it even", what,
                           c->head_dim);
    if (origpos > maxpos)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"original_max_position_embeddings\" %lld exceeds "
                           "\"max_position_embeddings\" %lld",
                           what, (long long)origpos, (long long)maxpos);

    char w[512];
    const cJSON *rs = NULL, *el = NULL, *ip = NULL, *vc = NULL;
    if (!st) st = get_obj(root, "rope_scaling", what, &rs, err);
    if (!st) st = get_obj(root, "embd_layer", what, &el, err);
    if (!st) st = get_obj(root, "img_processor", what, &ip, err);
    if (!st) st = get_obj(root, "vision_config", what, &vc, err);
    if (st) return st;
    if (rs) {
        sub_what(w, sizeof w, what, "rope_scaling");
        st = parse_rope(rs, w, c->head_dim, &c->rope_scaling, err);
        if (st) return st;
    }
    if (el) {
        sub_what(w, sizeof w, what, "embd_layer");
        c->has_embd_layer = true;
        if (!st) st = get_str(el, "embedding_cls", w, c->embedding_cls, VLM_CFG_STR, err);
        if (!st) st = get_str(el, "projection_cls", w, c->projection_cls, VLM_CFG_STR, err);
        if (!st) st = get_str(el, "hd_transform_order", w, c->hd_transform_order, VLM_CFG_STR, err);
        if (!st) st = get_bool(el, "use_hd_transform", w, &c->use_hd_transform, err);
        if (!st)
            st = get_bool(el, "with_learnable_separator", w, &c->with_learnable_separator, err);
        if (st) return st;
    }
    vlm_vision_config_clip_l336(&c->vision);
    if (vc) {
        sub_what(w, sizeof w, what, "vision_config");
        st = parse_vision(vc, w, &c->vision, err);
        if (st) return st;
    }
    c->image_dim_out = c->vision.hidden_size;
    /* absent: what the tower's patch grid merges to (144 for CLIP-L/14-336) */
    int grid = c->vision.image_size / c->vision.patch_size;
    c->num_img_tokens = (grid / 2) * (grid / 2);
    c->layer_idx = -2;
    snprintf(c->type_feature, sizeof c->type_feature, "patch");
    int L = c->vision.num_hidden_layers;
    if (vc && (st = get_int32(vc, "layer_idx", w, -(L + 1), L, false, &c->layer_idx, err)))
        return st; /* our extension may name the layer too; img_processor's wins */
    if (ip) {
        sub_what(w, sizeof w, what, "img_processor");
        c->has_img_processor = true;
        if (!st) st = get_str(ip, "name", w, c->img_processor_name, VLM_CFG_STR, err);
        if (!st) st = get_str(ip, "model_name", w, c->img_processor_model, 2 * VLM_CFG_STR, err);
        if (!st) st = get_int32(ip, "image_dim_out", w, 1, 1 << 16, false, &c->image_dim_out, err);
        if (!st)
            st = get_int32(ip, "num_img_tokens", w, 1, 1 << 16, false, &c->num_img_tokens, err);
        if (!st) st = get_int32(ip, "layer_idx", w, -(L + 1), L, false, &c->layer_idx, err);
        if (!st) st = get_str(ip, "type_feature", w, c->type_feature, VLM_CFG_STR, err);
        if (st) return st;
        if (c->image_dim_out != c->vision.hidden_size)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"image_dim_out\" %d differs from the vision tower width %d", w,
                               c->image_dim_out, c->vision.hidden_size);
        if (strcmp(c->type_feature, "patch") && strcmp(c->type_feature, "cls_patch"))
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: \"type_feature\" \"%s\" is not supported", w, c->type_feature);
    }
    return VLM_OK;
}

void vlm_config_free(vlm_config *c) {
    if (!c) return;
    vlm_free(c->rope_scaling.short_factor);
    vlm_free(c->rope_scaling.long_factor);
    c->rope_scaling.short_factor = c->rope_scaling.long_factor = NULL;
}

vlm_status vlm_config_parse(const char *text, size_t len, const char *what, vlm_config *out,
                            vlm_err *err) {
    memset(out, 0, sizeof *out);
    cJSON *root = NULL;
    vlm_json_scope sc; /* the tree dies here: one chunk, not one allocation per node */
    vlm_json_scope_begin(&sc, CONFIG_JSON_CHUNK);
    vlm_status st = vlm_json_parse(text, len, what, &root, err);
    if (st) {
        vlm_json_scope_end(&sc);
        return st;
    }
    st = parse_config(root, what, out, err);
    cJSON_Delete(root);
    vlm_json_scope_end(&sc);
    if (st) vlm_config_free(out);
    return st;
}

/* Read a JSON file of a model folder (a missing one is VLM_ERR_NOT_FOUND). */
static vlm_status load_text(const char *path, char **text, size_t *len, vlm_err *err) {
    return vlm_file_read_all(path, CONFIG_MAX_BYTES, VLM_MEM_OTHER, text, len, err);
}

vlm_status vlm_config_load(const char *path, vlm_config *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t len = 0;
    vlm_status st = load_text(path, &text, &len, err);
    if (st) return st;
    st = vlm_config_parse(text, len, path, out, err);
    vlm_free(text);
    return st;
}

/* ============================================================================
 * generation_config.json
 * ========================================================================== */

void vlm_gen_config_default(vlm_gen_config *g) {
    memset(g, 0, sizeof *g);
    g->stop_ids[0] = 32007; /* <|end|> */
    g->stop_ids[1] = 32000; /* <|endoftext|> */
    g->stop_ids[2] = 2;     /* </s> */
    g->n_stop_ids = 3;
    g->bos_token_id = -1;
    g->pad_token_id = -1;
    g->temperature = 1;
    g->top_p = 1;
}

vlm_status vlm_gen_config_parse(const char *text, size_t len, const char *what, vlm_gen_config *g,
                                vlm_err *err) {
    vlm_gen_config_default(g);
    cJSON *root = NULL;
    vlm_json_scope sc; /* the tree dies here: one chunk, not one allocation per node */
    vlm_json_scope_begin(&sc, CONFIG_JSON_CHUNK);
    vlm_status st = vlm_json_parse(text, len, what, &root, err);
    if (st) {
        vlm_json_scope_end(&sc);
        return st;
    }
    g->present = true;
    const int64_t max_id = (1 << 24) - 1;
    double temp = 1, top_p = 1;
    if (!cJSON_IsObject(root)) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: not a JSON object", what);
        goto out;
    }
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsArray(eos)) {
        int n = 0;
        for (const cJSON *e = eos->child; e; e = e->next) {
            double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (!(v >= 0 && v <= (double)max_id) || v != floor(v)) {
                st = vlm_err_set(err, VLM_ERR_FORMAT,
                                 "%s: \"eos_token_id\"[%d] must be a token id in [0, %lld]", what,
                                 n, (long long)max_id);
                goto out;
            }
            if (n == VLM_MAX_STOP_IDS) {
                st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"eos_token_id\" lists more than %d ids",
                                 what, VLM_MAX_STOP_IDS);
                goto out;
            }
            g->stop_ids[n++] = (int)v;
        }
        if (n > 0) g->n_stop_ids = n;
    } else if (eos && !cJSON_IsNull(eos)) {
        int id = 0;
        st = get_int32(root, "eos_token_id", what, 0, max_id, true, &id, err);
        if (st) goto out;
        g->stop_ids[0] = id;
        g->n_stop_ids = 1;
    }
    if (!st) st = get_int32(root, "bos_token_id", what, -1, max_id, false, &g->bos_token_id, err);
    if (!st) st = get_int32(root, "pad_token_id", what, -1, max_id, false, &g->pad_token_id, err);
    if (!st) st = get_bool(root, "do_sample", what, &g->do_sample, err);
    if (!st) st = vlm_json_get_double_opt(root, "temperature", what, &temp, err);
    if (!st && !(temp >= 0 && temp <= 100))
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"temperature\" %g is out of range [0, 100]",
                         what, temp);
    if (!st) st = vlm_json_get_double_opt(root, "top_p", what, &top_p, err);
    if (!st && !(top_p >= 0 && top_p <= 1))
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"top_p\" %g is out of range [0, 1]", what,
                         top_p);
    if (!st) st = get_int32(root, "top_k", what, 0, 1 << 24, false, &g->top_k, err);
    if (!st) st = get_int32(root, "max_length", what, 0, 1 << 30, false, &g->max_length, err);
    g->temperature = (float)temp;
    g->top_p = (float)top_p;
out:
    cJSON_Delete(root);
    vlm_json_scope_end(&sc);
    if (st) vlm_gen_config_default(g);
    return st;
}

vlm_status vlm_gen_config_load(const char *path, vlm_gen_config *out, vlm_err *err) {
    vlm_gen_config_default(out);
    if (!vlm_file_is_regular(path)) return VLM_OK;
    char *text = NULL;
    size_t len = 0;
    vlm_status st = load_text(path, &text, &len, err);
    if (st) return st;
    st = vlm_gen_config_parse(text, len, path, out, err);
    vlm_free(text);
    return st;
}

/* ============================================================================
 * preprocessor_config.json
 * ========================================================================== */

void vlm_preproc_config_default(vlm_preproc_config *p) {
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    memset(p, 0, sizeof *p);
    p->num_crops = 4;
    memcpy(p->image_mean, mean, sizeof mean);
    memcpy(p->image_std, std, sizeof std);
    p->num_img_tokens = 144;
}

static vlm_status get_vec3(const cJSON *obj, const char *key, const char *what, bool positive,
                           float out[3], vlm_err *err) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!arr || cJSON_IsNull(arr)) return VLM_OK;
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != 3)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be a list of 3 numbers", what,
                           key);
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
        if (!(v >= -1e6 && v <= 1e6) || (positive && !(v > 0)))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\"[%d] is not a valid %s", what, key,
                               i, positive ? "positive number" : "number");
        out[i] = (float)v;
    }
    return VLM_OK;
}

vlm_status vlm_preproc_config_parse(const char *text, size_t len, const char *what,
                                    vlm_preproc_config *p, vlm_err *err) {
    vlm_preproc_config_default(p);
    cJSON *root = NULL;
    vlm_json_scope sc; /* the tree dies here: one chunk, not one allocation per node */
    vlm_json_scope_begin(&sc, CONFIG_JSON_CHUNK);
    vlm_status st = vlm_json_parse(text, len, what, &root, err);
    if (st) {
        vlm_json_scope_end(&sc);
        return st;
    }
    p->present = true;
    if (!cJSON_IsObject(root)) st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: not a JSON object", what);
    if (!st) st = get_int32(root, "num_crops", what, 1, 256, false, &p->num_crops, err);
    if (!st) st = get_vec3(root, "image_mean", what, false, p->image_mean, err);
    if (!st) st = get_vec3(root, "image_std", what, true, p->image_std, err);
    if (!st)
        st = get_int32(root, "num_img_tokens", what, 1, 1 << 16, false, &p->num_img_tokens, err);
    if (!st)
        st = get_str(root, "image_processor_type", what, p->image_processor_type, VLM_CFG_STR, err);
    cJSON_Delete(root);
    vlm_json_scope_end(&sc);
    if (st) vlm_preproc_config_default(p);
    return st;
}

vlm_status vlm_preproc_config_load(const char *path, vlm_preproc_config *out, vlm_err *err) {
    vlm_preproc_config_default(out);
    if (!vlm_file_is_regular(path)) return VLM_OK;
    char *text = NULL;
    size_t len = 0;
    vlm_status st = load_text(path, &text, &len, err);
    if (st) return st;
    st = vlm_preproc_config_parse(text, len, path, out, err);
    vlm_free(text);
    return st;
}

/* ============================================================================
 * tokenizer_config.json
 * ========================================================================== */

void vlm_tokenizer_config_free(vlm_tokenizer_config *t) {
    if (!t) return;
    vlm_free(t->chat_template);
    vlm_free(t->bos_token);
    vlm_free(t->eos_token);
    vlm_free(t->pad_token);
    vlm_free(t->unk_token);
    t->chat_template = t->bos_token = t->eos_token = t->pad_token = t->unk_token = NULL;
}

static vlm_status dup_str(const char *s, const char *what, const char *key, char **out,
                          vlm_err *err) {
    *out = vlm_strdup(s, VLM_MEM_OTHER);
    return *out ? VLM_OK
                : vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for \"%s\"", what, key);
}

/* A special token: a string, {"content": string, ...} (AddedToken) or null. */
static vlm_status get_token(const cJSON *obj, const char *key, const char *what, char **out,
                            vlm_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return VLM_OK;
    if (cJSON_IsObject(it)) it = cJSON_GetObjectItemCaseSensitive(it, "content");
    if (!cJSON_IsString(it))
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"%s\" must be a string or an object with a \"content\" string",
                           what, key);
    return dup_str(it->valuestring, what, key, out, err);
}

/* chat_template: a string, or a list of {"name", "template"} where the one
 * named "default" (else the first) is taken. */
static vlm_status get_template(const cJSON *root, const char *what, char **out, vlm_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (!it || cJSON_IsNull(it)) return VLM_OK;
    if (cJSON_IsString(it)) return dup_str(it->valuestring, what, "chat_template", out, err);
    if (!cJSON_IsArray(it))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"chat_template\" must be a string or a list",
                           what);
    const cJSON *pick = NULL;
    int i = 0;
    for (const cJSON *e = it->child; e; e = e->next, i++) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(e, "template");
        if (!cJSON_IsObject(e) || !cJSON_IsString(name) || !cJSON_IsString(tpl))
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"chat_template\"[%d] must be {\"name\": string, "
                               "\"template\": string}",
                               what, i);
        if (!pick || strcmp(name->valuestring, "default") == 0) pick = tpl;
    }
    if (!pick) return VLM_OK;
    return dup_str(pick->valuestring, what, "chat_template", out, err);
}

vlm_status vlm_tokenizer_config_parse(const char *text, size_t len, const char *what,
                                      vlm_tokenizer_config *t, vlm_err *err) {
    memset(t, 0, sizeof *t);
    t->add_bos_token = true;
    cJSON *root = NULL;
    vlm_json_scope sc; /* the tree dies here: one chunk, not one allocation per node */
    vlm_json_scope_begin(&sc, CONFIG_JSON_CHUNK);
    vlm_status st = vlm_json_parse(text, len, what, &root, err);
    if (st) {
        vlm_json_scope_end(&sc);
        return st;
    }
    t->present = true;
    double mml = 0;
    if (!cJSON_IsObject(root)) st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: not a JSON object", what);
    if (!st) st = get_template(root, what, &t->chat_template, err);
    if (!st) st = get_bool(root, "add_bos_token", what, &t->add_bos_token, err);
    if (!st) st = get_bool(root, "add_eos_token", what, &t->add_eos_token, err);
    if (!st) st = get_token(root, "bos_token", what, &t->bos_token, err);
    if (!st) st = get_token(root, "eos_token", what, &t->eos_token, err);
    if (!st) st = get_token(root, "pad_token", what, &t->pad_token, err);
    if (!st) st = get_token(root, "unk_token", what, &t->unk_token, err);
    if (!st) st = vlm_json_get_double_opt(root, "model_max_length", what, &mml, err);
    if (!st) st = get_str(root, "tokenizer_class", what, t->tokenizer_class, VLM_CFG_STR, err);
    /* HF writes 1e30 (VERY_LARGE_INTEGER) for "no limit". */
    if (!st) t->model_max_length = (mml >= 1 && mml <= 1e15) ? (int64_t)mml : 0;
    cJSON_Delete(root);
    vlm_json_scope_end(&sc);
    if (st) {
        vlm_tokenizer_config_free(t);
        t->present = false;
    }
    return st;
}

vlm_status vlm_tokenizer_config_load(const char *path, vlm_tokenizer_config *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    out->add_bos_token = true;
    if (!vlm_file_is_regular(path)) return VLM_OK;
    char *text = NULL;
    size_t len = 0;
    vlm_status st = load_text(path, &text, &len, err);
    if (st) return st;
    st = vlm_tokenizer_config_parse(text, len, path, out, err);
    vlm_free(text);
    return st;
}

/* ============================================================================
 * A model folder
 * ========================================================================== */

vlm_status vlm_model_configs_load(const char *dir, vlm_model_configs *m, vlm_err *err) {
    memset(m, 0, sizeof *m);
    vlm_gen_config_default(&m->gen);
    vlm_preproc_config_default(&m->preproc);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: path too long", dir);
    vlm_status st = vlm_config_load(path, &m->config, err);
    if (!st) {
        snprintf(path, sizeof path, "%s/generation_config.json", dir);
        st = vlm_gen_config_load(path, &m->gen, err);
    }
    if (!st) {
        snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
        st = vlm_preproc_config_load(path, &m->preproc, err);
    }
    if (!st) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        st = vlm_tokenizer_config_load(path, &m->tokenizer, err);
    }
    if (st) vlm_model_configs_free(m);
    return st;
}

void vlm_model_configs_free(vlm_model_configs *m) {
    if (!m) return;
    vlm_config_free(&m->config);
    vlm_tokenizer_config_free(&m->tokenizer);
}
