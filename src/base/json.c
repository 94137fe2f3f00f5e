#include "base/json.h"

#include <pthread.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"

/* cJSON reports a failed allocation as a syntax error; this per-thread flag
 * tells the two apart. */
static _Thread_local bool json_alloc_failed;

/* The innermost parse scope of this thread, NULL outside any. */
static _Thread_local vlm_json_scope *json_scope;

struct vlm_json_chunk {
    vlm_json_chunk *next; /* older */
    size_t used, cap;     /* bytes of data */
    _Alignas(16) unsigned char data[];
};

#define JSON_ALIGN 8 /* cJSON stores doubles and pointers, nothing wider */

static void *scope_alloc(vlm_json_scope *s, size_t n) {
    n = (n + JSON_ALIGN - 1) & ~(size_t)(JSON_ALIGN - 1);
    vlm_json_chunk *c = s->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > s->chunk_bytes ? n : s->chunk_bytes;
        c = vlm_alloc(sizeof *c + cap, VLM_MEM_OTHER);
        if (!c) return NULL;
        c->used = 0;
        c->cap = cap;
        if (n > s->chunk_bytes && s->chunks) {
            /* an oversized piece: keep filling the current chunk */
            c->next = s->chunks->next;
            s->chunks->next = c;
        } else {
            c->next = s->chunks;
            s->chunks = c;
        }
        s->n_chunks++;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

static bool scope_owns(const vlm_json_scope *s, const void *p) {
    for (; s; s = s->outer)
        for (const vlm_json_chunk *c = s->chunks; c; c = c->next)
            if ((const unsigned char *)p >= c->data && (const unsigned char *)p < c->data + c->cap)
                return true;
    return false;
}

static void *json_malloc(size_t n) {
    void *p = json_scope ? scope_alloc(json_scope, n) : vlm_alloc(n, VLM_MEM_OTHER);
    if (!p) json_alloc_failed = true;
    return p;
}

static void json_free(void *p) {
    if (p && json_scope && scope_owns(json_scope, p)) return; /* freed with the scope */
    vlm_free(p);
}

void vlm_json_scope_begin(vlm_json_scope *s, size_t chunk_bytes) {
    s->chunks = NULL;
    s->n_chunks = 0;
    s->chunk_bytes = chunk_bytes ? chunk_bytes : VLM_JSON_SCOPE_CHUNK;
    s->outer = json_scope;
    json_scope = s;
}

void vlm_json_scope_end(vlm_json_scope *s) {
    for (vlm_json_chunk *c = s->chunks, *next; c; c = next) {
        next = c->next;
        vlm_free(c);
    }
    s->chunks = NULL;
    s->n_chunks = 0;
    if (json_scope == s) json_scope = s->outer;
}

void vlm_json_alloc_reset(void) {
    json_alloc_failed = false;
}

bool vlm_json_alloc_failed(void) {
    return json_alloc_failed;
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void install_hooks(void) {
    cJSON_Hooks h = {json_malloc, json_free};
    cJSON_InitHooks(&h);
}

void vlm_json_init(void) {
    pthread_once(&hooks_once, install_hooks);
}

vlm_status vlm_json_parse(const char *text, size_t len, const char *what, cJSON **out,
                          vlm_err *err) {
    vlm_json_init();
    *out = NULL;
    const char *end = NULL;
    vlm_json_alloc_reset();
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root && vlm_json_alloc_failed())
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory parsing JSON", what);
    if (!root) {
        /* cJSON reports no distinction between a syntax error and a failed
         * allocation; a syntax error leaves end inside the text. */
        if (end && end >= text && (size_t)(end - text) <= len) {
            size_t off = (size_t)(end - text), line = 1;
            for (size_t i = 0; i < off; i++)
                if (text[i] == '\n') line++;
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: invalid JSON at line %zu (byte %zu)", what,
                               line, off);
        }
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: invalid JSON (or out of memory)", what);
    }
    *out = root;
    return VLM_OK;
}

vlm_status vlm_json_parse_file(const char *path, cJSON **out, vlm_err *err) {
    char *buf = NULL;
    size_t len = 0;
    vlm_status st = vlm_file_read_all(path, (size_t)1 << 30, VLM_MEM_OTHER, &buf, &len, err);
    if (st != VLM_OK) return st;
    st = vlm_json_parse(buf, len, path, out, err);
    vlm_free(buf);
    return st;
}

static const cJSON *get_item(const cJSON *obj, const char *key) {
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static vlm_status get_number(const cJSON *obj, const char *key, const char *what, double *out,
                             bool optional, vlm_err *err) {
    const cJSON *it = get_item(obj, key);
    if (!it || cJSON_IsNull(it)) {
        if (optional) return VLM_OK;
        return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: missing key \"%s\"", what, key);
    }
    if (!cJSON_IsNumber(it))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be a number", what, key);
    *out = it->valuedouble;
    return VLM_OK;
}

static vlm_status get_int(const cJSON *obj, const char *key, const char *what, int64_t *out,
                          bool optional, vlm_err *err) {
    double v = 0;
    const cJSON *it = get_item(obj, key);
    if (!it || cJSON_IsNull(it)) return get_number(obj, key, what, &v, optional, err);
    vlm_status st = get_number(obj, key, what, &v, optional, err);
    if (st != VLM_OK) return st;
    /* Range first: converting an out-of-range double to int64 is undefined. */
    if (!(v <= 9007199254740992.0 && v >= -9007199254740992.0) || v != (double)(int64_t)v)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be an integer", what, key);
    *out = (int64_t)v;
    return VLM_OK;
}

vlm_status vlm_json_get_int(const cJSON *obj, const char *key, const char *what, int64_t *out,
                            vlm_err *err) {
    return get_int(obj, key, what, out, false, err);
}
vlm_status vlm_json_get_int_opt(const cJSON *obj, const char *key, const char *what, int64_t *out,
                                vlm_err *err) {
    return get_int(obj, key, what, out, true, err);
}
vlm_status vlm_json_get_double(const cJSON *obj, const char *key, const char *what, double *out,
                               vlm_err *err) {
    return get_number(obj, key, what, out, false, err);
}
vlm_status vlm_json_get_double_opt(const cJSON *obj, const char *key, const char *what, double *out,
                                   vlm_err *err) {
    return get_number(obj, key, what, out, true, err);
}

vlm_status vlm_json_get_bool_opt(const cJSON *obj, const char *key, const char *what, bool *out,
                                 vlm_err *err) {
    const cJSON *it = get_item(obj, key);
    if (!it || cJSON_IsNull(it)) return VLM_OK;
    if (!cJSON_IsBool(it))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(it);
    return VLM_OK;
}

static vlm_status get_string(const cJSON *obj, const char *key, const char *what, const char **out,
                             bool optional, vlm_err *err) {
    const cJSON *it = get_item(obj, key);
    if (!it || cJSON_IsNull(it)) {
        if (optional) return VLM_OK;
        return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: missing key \"%s\"", what, key);
    }
    if (!cJSON_IsString(it) || !it->valuestring)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be a string", what, key);
    *out = it->valuestring;
    return VLM_OK;
}

vlm_status vlm_json_get_string(const cJSON *obj, const char *key, const char *what,
                               const char **out, vlm_err *err) {
    return get_string(obj, key, what, out, false, err);
}
vlm_status vlm_json_get_string_opt(const cJSON *obj, const char *key, const char *what,
                                   const char **out, vlm_err *err) {
    return get_string(obj, key, what, out, true, err);
}

char *vlm_json_print(const cJSON *item) {
    vlm_json_init();
    return cJSON_PrintUnformatted(item);
}
