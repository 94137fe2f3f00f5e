/* models/phi3v_tensors - the Phi3V tensor list and the checkpoint check. */
#include "models/phi3v_tensors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/log.h"

typedef struct spec_list {
    phi3v_tensor_spec *v;
    size_t n, cap;
} spec_list;

/* Append one spec; the name is formatted. Capacity is sized up front. */
static void add(spec_list *l, phi3v_part part, bool used, int rank, const int64_t *shape,
                const char *fmt, ...) VLM_PRINTF(6, 7);
static void add(spec_list *l, phi3v_part part, bool used, int rank, const int64_t *shape,
                const char *fmt, ...) {
    if (l->n >= l->cap) return;
    phi3v_tensor_spec *s = &l->v[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->rank = rank;
    for (int i = 0; i < rank; i++) s->shape[i] = shape[i];
    s->part = part;
    s->used = used;
}

#define SHAPE(...)                                                                                 \
    (const int64_t[]) {                                                                            \
        __VA_ARGS__                                                                                \
    }
#define ADD1(l, part, used, a, ...)    add(l, part, used, 1, SHAPE(a), __VA_ARGS__)
#define ADD2(l, part, used, a, b, ...) add(l, part, used, 2, SHAPE(a, b), __VA_ARGS__)

vlm_status phi3v_tensor_specs(const vlm_config *c, phi3v_tensor_spec **out, size_t *n,
                              vlm_err *err) {
    *out = NULL;
    *n = 0;
    if (strcmp(c->architecture, PHI3V_ARCH) != 0)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "config: architecture \"%s\" is not " PHI3V_ARCH, c->architecture);
    if (c->has_embd_layer && c->projection_cls[0] && strcmp(c->projection_cls, "mlp") != 0)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "config: embd_layer.projection_cls \"%s\" is not supported (only mlp)",
                           c->projection_cls);
    if (c->has_embd_layer && !c->use_hd_transform)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "config: embd_layer.use_hd_transform false is not supported");
    const vlm_vision_config *v = &c->vision;
    const int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    const int64_t hd = c->head_dim,
                  qkv = (c->num_attention_heads + 2 * c->num_key_value_heads) * hd;
    const int64_t D = v->hidden_size, Iv = v->intermediate_size, P = v->patch_size;
    const int64_t grid = v->image_size / v->patch_size;
    const int L = c->num_hidden_layers, Lv = v->num_hidden_layers;
    /* Layers whose output reaches hidden_states[layer_idx]: hidden_states
     * holds Lv + 1 entries (embeddings, then each layer). */
    int used_layers = c->layer_idx < 0 ? Lv + 1 + c->layer_idx : c->layer_idx;
    bool separators = !c->has_embd_layer || c->with_learnable_separator;

    spec_list l = {0};
    l.cap = 3 + (size_t)L * 7 + 6 + 7 + (size_t)Lv * 16 + 2;
    l.v = VLM_NEW_ARRAY(phi3v_tensor_spec, l.cap, VLM_MEM_OTHER);
    if (!l.v) return vlm_err_set(err, VLM_ERR_NOMEM, "phi3v tensor list: out of memory");

    ADD2(&l, PHI3V_PART_LM, true, V, H, "model.embed_tokens.weight");
    for (int i = 0; i < L; i++) {
        ADD1(&l, PHI3V_PART_LM, true, H, "model.layers.%d.input_layernorm.weight", i);
        ADD2(&l, PHI3V_PART_LM, true, qkv, H, "model.layers.%d.self_attn.qkv_proj.weight", i);
        ADD2(&l, PHI3V_PART_LM, true, H, H, "model.layers.%d.self_attn.o_proj.weight", i);
        ADD1(&l, PHI3V_PART_LM, true, H, "model.layers.%d.post_attention_layernorm.weight", i);
        ADD2(&l, PHI3V_PART_LM, true, 2 * I, H, "model.layers.%d.mlp.gate_up_proj.weight", i);
        ADD2(&l, PHI3V_PART_LM, true, H, I, "model.layers.%d.mlp.down_proj.weight", i);
    }
    ADD1(&l, PHI3V_PART_LM, true, H, "model.norm.weight");
    if (!c->tie_word_embeddings) ADD2(&l, PHI3V_PART_LM, true, V, H, "lm_head.weight");

    const char *G = PHI3V_GLUE_PREFIX;
    if (separators) {
        add(&l, PHI3V_PART_GLUE, true, 3, SHAPE(1, 1, 4 * D), "%sglb_GN", G);
        add(&l, PHI3V_PART_GLUE, true, 4, SHAPE(1, 1, 1, 4 * D), "%ssub_GN", G);
    }
    ADD2(&l, PHI3V_PART_GLUE, true, H, 4 * D, "%simg_projection.0.weight", G);
    ADD1(&l, PHI3V_PART_GLUE, true, H, "%simg_projection.0.bias", G);
    ADD2(&l, PHI3V_PART_GLUE, true, H, H, "%simg_projection.2.weight", G);
    ADD1(&l, PHI3V_PART_GLUE, true, H, "%simg_projection.2.bias", G);

    const char *P_ = PHI3V_VISION_PREFIX;
    const phi3v_part VP = PHI3V_PART_VISION;
    ADD1(&l, VP, true, D, "%sembeddings.class_embedding", P_);
    add(&l, VP, true, 4, SHAPE(D, v->num_channels, P, P), "%sembeddings.patch_embedding.weight",
        P_);
    ADD2(&l, VP, true, grid * grid + 1, D, "%sembeddings.position_embedding.weight", P_);
    ADD1(&l, VP, true, D, "%spre_layrnorm.weight", P_);
    ADD1(&l, VP, true, D, "%spre_layrnorm.bias", P_);
    for (int i = 0; i < Lv; i++) {
        bool u = i < used_layers;
        const char *pre = "encoder.layers";
        ADD1(&l, VP, u, D, "%s%s.%d.layer_norm1.weight", P_, pre, i);
        ADD1(&l, VP, u, D, "%s%s.%d.layer_norm1.bias", P_, pre, i);
        static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            ADD2(&l, VP, u, D, D, "%s%s.%d.self_attn.%s.weight", P_, pre, i, proj[k]);
            ADD1(&l, VP, u, D, "%s%s.%d.self_attn.%s.bias", P_, pre, i, proj[k]);
        }
        ADD1(&l, VP, u, D, "%s%s.%d.layer_norm2.weight", P_, pre, i);
        ADD1(&l, VP, u, D, "%s%s.%d.layer_norm2.bias", P_, pre, i);
        ADD2(&l, VP, u, Iv, D, "%s%s.%d.mlp.fc1.weight", P_, pre, i);
        ADD1(&l, VP, u, Iv, "%s%s.%d.mlp.fc1.bias", P_, pre, i);
        ADD2(&l, VP, u, D, Iv, "%s%s.%d.mlp.fc2.weight", P_, pre, i);
        ADD1(&l, VP, u, D, "%s%s.%d.mlp.fc2.bias", P_, pre, i);
    }
    ADD1(&l, VP, false, D, "%spost_layernorm.weight", P_);
    ADD1(&l, VP, false, D, "%spost_layernorm.bias", P_);
    *out = l.v;
    *n = l.n;
    return VLM_OK;
}

phi3v_part phi3v_part_of(const char *name) {
    if (strncmp(name, PHI3V_VISION_PREFIX, strlen(PHI3V_VISION_PREFIX)) == 0)
        return PHI3V_PART_VISION;
    if (strncmp(name, PHI3V_GLUE_PREFIX, strlen(PHI3V_GLUE_PREFIX)) == 0) return PHI3V_PART_GLUE;
    return PHI3V_PART_LM;
}

const char *phi3v_part_name(phi3v_part p) {
    static const char *const names[] = {"vision", "projector", "language_model"};
    return (unsigned)p < PHI3V_PART_COUNT ? names[p] : "?";
}

static void shape_str(char *buf, size_t cap, int rank, const int64_t *shape) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < rank && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

vlm_status phi3v_check_tensors(const vlm_config *c, const vlm_tensor_set *set, vlm_err *err) {
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    vlm_status st = phi3v_tensor_specs(c, &specs, &n, err);
    if (st) return st;
    for (size_t i = 0; i < n && st == VLM_OK; i++) {
        const phi3v_tensor_spec *s = &specs[i];
        const vlm_st_tensor *t = vlm_tensor_set_find(set, s->name);
        char want[96], got[128];
        if (!t) {
            st = vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: tensor \"%s\" is missing",
                             vlm_tensor_set_path(set), s->name);
            break;
        }
        bool same = t->rank == s->rank;
        for (int k = 0; same && k < s->rank; k++) same = t->shape[k] == s->shape[k];
        if (!same) {
            shape_str(want, sizeof want, s->rank, s->shape);
            shape_str(got, sizeof got, t->rank, t->shape);
            st = vlm_err_set(err, VLM_ERR_FORMAT,
                             "%s: tensor \"%s\" has shape %s but the config implies %s", t->file,
                             s->name, got, want);
            break;
        }
        if (!vlm_dtype_get(t->dtype)->is_float || t->dtype == VLM_DTYPE_BOOL) {
            st = vlm_err_set(err, VLM_ERR_FORMAT,
                             "%s: tensor \"%s\" has dtype %s; weights must be floating point",
                             t->file, s->name, vlm_dtype_get(t->dtype)->name);
            break;
        }
    }
    if (st == VLM_OK && vlm_tensor_set_count(set) > n) {
        /* More stored than the model reads: name the first stranger. */
        for (size_t j = 0; j < vlm_tensor_set_count(set); j++) {
            const vlm_st_tensor *t = vlm_tensor_set_at(set, j);
            bool known = false;
            for (size_t i = 0; i < n && !known; i++) known = strcmp(specs[i].name, t->name) == 0;
            if (!known) {
                VLM_WARN("%s: tensor \"%s\" is not part of " PHI3V_ARCH " (ignored)", t->file,
                         t->name);
                break;
            }
        }
    }
    vlm_free(specs);
    return st;
}

vlm_status phi3v_param_counts(const vlm_config *c, uint64_t counts[PHI3V_PART_COUNT],
                              vlm_err *err) {
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    for (int p = 0; p < PHI3V_PART_COUNT; p++) counts[p] = 0;
    vlm_status st = phi3v_tensor_specs(c, &specs, &n, err);
    if (st) return st;
    for (size_t i = 0; i < n; i++) {
        uint64_t e = 1;
        for (int k = 0; k < specs[i].rank; k++) e *= (uint64_t)specs[i].shape[k];
        counts[specs[i].part] += e;
    }
    vlm_free(specs);
    return VLM_OK;
}
