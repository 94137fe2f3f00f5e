/* A minimal safetensors reader for the model tests (header-only, test code):
 * reads the whole file, parses the JSON header, and serves tensors by name,
 * also as a vlm_weight_source for the models. The library's own loader
 * (io/safetensors) is tested separately. */
#ifndef VLM_TESTS_MODEL_FIXTURE_H
#define VLM_TESTS_MODEL_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/parallel.h"
#include "base/json.h"
#include "io/config.h"
#include "models/registry.h"
#include "models/weights.h"
#include "tensor/dtype.h"

typedef struct fx_tensor {
    char *name;
    vlm_tensor_view view;
    int is_i32;
    size_t nbytes;
} fx_tensor;

typedef struct fx_file {
    uint8_t *buf;
    size_t len;
    fx_tensor *t;
    int n;
} fx_file;

static inline void fx_close(fx_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    free(f->buf);
    free(f);
}

static inline fx_file *fx_open(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    fx_file *f = calloc(1, sizeof *f);
    fseek(fp, 0, SEEK_END);
    f->len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->buf = malloc(f->len);
    if (fread(f->buf, 1, f->len, fp) != f->len) {
        fclose(fp);
        fx_close(f);
        return NULL;
    }
    fclose(fp);
    uint64_t hl;
    memcpy(&hl, f->buf, 8);
    cJSON *h = NULL;
    vlm_err err;
    if (vlm_json_parse((const char *)f->buf + 8, hl, path, &h, &err) != VLM_OK) {
        fprintf(stderr, "%s\n", err.msg);
        fx_close(f);
        return NULL;
    }
    const uint8_t *data = f->buf + 8 + hl;
    f->t = calloc((size_t)cJSON_GetArraySize(h) + 1, sizeof *f->t);
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        fx_tensor *t = &f->t[f->n++];
        t->name = strdup(e->string);
        const char *dt = cJSON_GetObjectItem(e, "dtype")->valuestring;
        t->is_i32 = strcmp(dt, "I32") == 0;
        t->view.dtype = (vlm_dtype)vlm_dtype_parse(dt);
        const cJSON *s;
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(e, "shape")) {
            t->view.shape[t->view.ndim++] = (int64_t)s->valuedouble;
        }
        const cJSON *off = cJSON_GetObjectItem(e, "data_offsets");
        size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        t->nbytes = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble - b;
        t->view.data = data + b;
    }
    cJSON_Delete(h);
    return f;
}

static inline const fx_tensor *fx_find(const fx_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

/* A malloc'd f32 copy of an F32 tensor (aligned for direct use); *n gets the
 * element count. Fails the test if absent. */
static inline float *fx_f32(const fx_file *f, const char *name, size_t *n) {
    if (n) *n = 0;
    const fx_tensor *t = fx_find(f, name);
    if (!t || t->view.dtype != VLM_DTYPE_F32) {
        fprintf(stderr, "fixture tensor %s missing or not F32\n", name);
        return NULL;
    }
    float *p = malloc(t->nbytes + 4);
    memcpy(p, t->view.data, t->nbytes);
    if (n) *n = t->nbytes / 4;
    return p;
}

static inline int32_t *fx_i32(const fx_file *f, const char *name, size_t *n) {
    if (n) *n = 0;
    const fx_tensor *t = fx_find(f, name);
    if (!t || !t->is_i32) {
        fprintf(stderr, "fixture tensor %s missing or not I32\n", name);
        return NULL;
    }
    int32_t *p = malloc(t->nbytes + 4);
    memcpy(p, t->view.data, t->nbytes);
    if (n) *n = t->nbytes / 4;
    return p;
}

static inline vlm_status fx_lookup(void *ctx, const char *name, vlm_tensor_view *out,
                                   vlm_err *err) {
    const fx_tensor *t = fx_find(ctx, name);
    if (!t) return vlm_err_set(err, VLM_ERR_NOT_FOUND, "tensor %s not found", name);
    *out = t->view;
    return VLM_OK;
}

/* Largest |a-b| over n values. */
static inline double fx_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = a[i] - b[i];
        if (d < 0) d = -d;
        if (d > m || d != d) m = d != d ? 1e30 : d;
    }
    return m;
}

/* ||a-b|| / ||b||. */
static inline double fx_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? __builtin_sqrt(num / den) : __builtin_sqrt(num);
}

/* The reference fixture of the model tests: tests/data/model_ref's tiny
 * checkpoint (W) and PyTorch's expected outputs (E), its config.json as a
 * cJSON tree (tests edit it), a 2-thread pool and W as a weight source. */
typedef struct fx_ref {
    fx_file *W, *E;
    cJSON *config;
    cpu_pool *pool;
    vlm_weight_source src;
} fx_ref;

static inline void fx_ref_close(fx_ref *r) {
    fx_close(r->W);
    fx_close(r->E);
    cJSON_Delete(r->config);
    cpu_pool_free(r->pool);
    memset(r, 0, sizeof *r);
}

/* paths relative to the source tree: tu_src() of the test. 0 on success. */
static inline int fx_ref_open(fx_ref *r, const char *weights, const char *expected,
                              const char *config) {
    memset(r, 0, sizeof *r);
    vlm_err err;
    r->W = fx_open(weights);
    r->E = fx_open(expected);
    if (!r->W || !r->E) return -1;
    if (vlm_json_parse_file(config, &r->config, &err) != VLM_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    if (cpu_pool_create(2, &r->pool, &err) != VLM_OK) return -1;
    r->src = (vlm_weight_source){fx_lookup, r->W};
    return 0;
}

/* Create the model from a config tree through the one parser (io/config),
 * as the loader does: tests edit the cJSON tree and hand it over as text. */
static inline vlm_status fx_arch_create(const cJSON *c, const char *what,
                                        const vlm_weight_source *s, cpu_pool *p,
                                        const vlm_placement *place, arch_model **m, vlm_err *err) {
    char *text = cJSON_PrintUnformatted(c);
    if (!text) return vlm_err_set(err, VLM_ERR_NOMEM, "print config");
    vlm_config vc;
    vlm_status st = vlm_config_parse(text, strlen(text), what, &vc, err);
    cJSON_free(text);
    *m = NULL;
    if (st == VLM_OK) st = arch_model_create(&vc, what, s, p, place, m, err);
    vlm_config_free(&vc);
    return st;
}

#endif
