/* io/gguf - GGUF read (validated, memory-mapped) and write. See gguf.h and
 * docs/formats-gguf.md. */
#include "io/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/mapfile.h"
#include "base/log.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/gguf reads little-endian fields in place: a little-endian host is assumed"
#endif

/* ========================================================================
 * Types
 * ======================================================================== */

static const char *const type_names[VLM_GGUF_TYPE_COUNT] = {
    "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",   "FLOAT32",
    "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64",
};
static const uint8_t type_sizes[VLM_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *vlm_gguf_type_name(vlm_gguf_type t) {
    return (unsigned)t < VLM_GGUF_TYPE_COUNT ? type_names[t] : "?";
}

size_t vlm_gguf_type_size(vlm_gguf_type t) {
    return (unsigned)t < VLM_GGUF_TYPE_COUNT ? type_sizes[t] : 0;
}

/* ggml's tensor type ids. Ids ggml once used and dropped (4, 5, 31-33,
 * 36-38) have no entry: a file with one is unknown, not unsupported. */
typedef struct ggml_type_entry {
    const char *name;
    int dtype; /* vlm_dtype, or -1 where we do not read the type */
} ggml_type_entry;

static const ggml_type_entry ggml_types[] = {
    [0] = {"F32", VLM_DTYPE_F32},
    [1] = {"F16", VLM_DTYPE_F16},
    [2] = {"Q4_0", VLM_DTYPE_Q4_0},
    [3] = {"Q4_1", VLM_DTYPE_Q4_1},
    [6] = {"Q5_0", VLM_DTYPE_Q5_0},
    [7] = {"Q5_1", VLM_DTYPE_Q5_1},
    [8] = {"Q8_0", VLM_DTYPE_Q8_0},
    [9] = {"Q8_1", -1},
    [10] = {"Q2_K", VLM_DTYPE_Q2_K},
    [11] = {"Q3_K", VLM_DTYPE_Q3_K},
    [12] = {"Q4_K", VLM_DTYPE_Q4_K},
    [13] = {"Q5_K", VLM_DTYPE_Q5_K},
    [14] = {"Q6_K", VLM_DTYPE_Q6_K},
    [15] = {"Q8_K", -1},
    [16] = {"IQ2_XXS", -1},
    [17] = {"IQ2_XS", -1},
    [18] = {"IQ3_XXS", -1},
    [19] = {"IQ1_S", -1},
    [20] = {"IQ4_NL", -1},
    [21] = {"IQ3_S", -1},
    [22] = {"IQ2_S", -1},
    [23] = {"IQ4_XS", -1},
    [24] = {"I8", VLM_DTYPE_I8},
    [25] = {"I16", VLM_DTYPE_I16},
    [26] = {"I32", VLM_DTYPE_I32},
    [27] = {"I64", VLM_DTYPE_I64},
    [28] = {"F64", VLM_DTYPE_F64},
    [29] = {"IQ1_M", -1},
    [30] = {"BF16", VLM_DTYPE_BF16},
    [34] = {"TQ1_0", -1},
    [35] = {"TQ2_0", -1},
    [39] = {"MXFP4", -1},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

const char *vlm_gguf_ggml_type_name(uint32_t id) {
    return id < N_GGML_TYPES ? ggml_types[id].name : NULL;
}

int vlm_gguf_dtype_from_ggml(uint32_t id) {
    return id < N_GGML_TYPES && ggml_types[id].name ? ggml_types[id].dtype : -1;
}

int vlm_gguf_ggml_from_dtype(vlm_dtype t) {
    for (uint32_t id = 0; id < N_GGML_TYPES; id++)
        if (ggml_types[id].name && ggml_types[id].dtype == (int)t) return (int)id;
    return -1;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF,
 * and no NUL (names become C strings). */
static bool utf8_valid(const uint8_t *s, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0) return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < (uint64_t)len) return false;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += (uint64_t)len;
    }
    return true;
}

/* A short printable rendering of a name for messages: at most 60 bytes,
 * non-printable bytes as '?'. */
static const char *printable(char *buf, size_t cap, const uint8_t *s, uint64_t n) {
    size_t k = 0;
    for (uint64_t i = 0; i < n && k + 4 < cap && i < 60; i++)
        buf[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (n > 60 && k + 4 < cap) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = '\0';
    return buf;
}

/* ========================================================================
 * The open file
 * ======================================================================== */

struct vlm_gguf {
    char *path;                /* for messages */
    const uint8_t *base;       /* the whole file */
    uint64_t size;             /* bytes */
    bool mapped;               /* base is our mmap (else the caller's memory) */
    uint32_t version;          /* 2 or 3 */
    uint64_t alignment;        /* of the data section and every tensor offset */
    uint64_t data_offset;      /* file offset of the data section */
    size_t n_kv;               /* metadata pairs, file order */
    vlm_gguf_kv *kv;           /* (n_kv) */
    size_t n_tensors;          /* tensor infos, file order */
    vlm_gguf_tensor *tensors;  /* (n_tensors) */
    uint32_t *kv_index;        /* open addressing: slot -> kv index + 1, 0 empty */
    uint32_t *tensor_index;    /* the same for tensors */
    size_t kv_cap, tensor_cap; /* slots (powers of two) */
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static size_t table_cap(size_t n) {
    size_t cap = 8;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

/* Insert entry i named `name`; returns the index of an existing entry with
 * the same name (a duplicate), or -1 after inserting. */
static long table_insert(uint32_t *tab, size_t cap, const char *name, size_t i,
                         const char *(*name_of)(const vlm_gguf *, size_t), const vlm_gguf *g) {
    size_t s = (size_t)hash_str(name) & (cap - 1);
    while (tab[s]) {
        size_t j = tab[s] - 1;
        if (strcmp(name_of(g, j), name) == 0) return (long)j;
        s = (s + 1) & (cap - 1);
    }
    tab[s] = (uint32_t)(i + 1);
    return -1;
}

static long table_find(const uint32_t *tab, size_t cap, const char *name,
                       const char *(*name_of)(const vlm_gguf *, size_t), const vlm_gguf *g) {
    if (!tab || !name) return -1;
    size_t s = (size_t)hash_str(name) & (cap - 1);
    while (tab[s]) {
        size_t j = tab[s] - 1;
        if (strcmp(name_of(g, j), name) == 0) return (long)j;
        s = (s + 1) & (cap - 1);
    }
    return -1;
}

static const char *kv_name(const vlm_gguf *g, size_t i) {
    return g->kv[i].key;
}
static const char *tensor_name(const vlm_gguf *g, size_t i) {
    return g->tensors[i].name;
}

static void value_free(vlm_gguf_value *v) {
    if (v->type != VLM_GGUF_ARRAY || !v->arr.items) return;
    vlm_gguf_value *items = (vlm_gguf_value *)v->arr.items;
    for (uint64_t k = 0; k < v->arr.n; k++) value_free(&items[k]);
    vlm_free(items);
    v->arr.items = NULL;
}

void vlm_gguf_close(vlm_gguf *g) {
    if (!g) return;
    for (size_t i = 0; i < g->n_kv; i++) {
        vlm_free((char *)g->kv[i].key);
        value_free(&g->kv[i].value);
    }
    vlm_free(g->kv);
    for (size_t i = 0; i < g->n_tensors; i++) vlm_free((char *)g->tensors[i].name);
    vlm_free(g->tensors);
    vlm_free(g->kv_index);
    vlm_free(g->tensor_index);
    if (g->mapped && g->base) vlm_unmap_file(&(vlm_mapped_file){g->base, g->size, true});
    vlm_free(g->path);
    vlm_free(g);
}

/* ========================================================================
 * Parsing. A cursor over the bytes; every read checks what is left first.
 * ======================================================================== */

typedef struct parser {
    vlm_gguf *g;
    uint64_t pos; /* next byte */
    vlm_err *err;
    char ctx[200]; /* what is being read, for messages: "metadata key 'x'" */
} parser;

static vlm_status VLM_PRINTF(3, 4) fail(parser *ps, vlm_status s, const char *fmt, ...) {
    char msg[VLM_ERR_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return vlm_err_set(ps->err, s, "%s: %s%s%s", ps->g->path, ps->ctx, ps->ctx[0] ? ": " : "", msg);
}

static uint64_t left(const parser *ps) {
    return ps->g->size - ps->pos;
}

static vlm_status need(parser *ps, uint64_t n, const char *what) {
    if (n <= left(ps)) return VLM_OK;
    return fail(ps, VLM_ERR_FORMAT,
                "file truncated: %s needs %llu bytes at offset %llu, only %llu left", what,
                (unsigned long long)n, (unsigned long long)ps->pos, (unsigned long long)left(ps));
}

static vlm_status rd_u32(parser *ps, uint32_t *v, const char *what) {
    vlm_status s = need(ps, 4, what);
    if (s) return s;
    memcpy(v, ps->g->base + ps->pos, 4);
    ps->pos += 4;
    return VLM_OK;
}

static vlm_status rd_u64(parser *ps, uint64_t *v, const char *what) {
    vlm_status s = need(ps, 8, what);
    if (s) return s;
    memcpy(v, ps->g->base + ps->pos, 8);
    ps->pos += 8;
    return VLM_OK;
}

/* A string: uint64 length, then the bytes. */
static vlm_status rd_str(parser *ps, vlm_gguf_str *out, const char *what) {
    uint64_t len;
    vlm_status s = rd_u64(ps, &len, what);
    if (s) return s;
    if (len > left(ps))
        return fail(ps, VLM_ERR_FORMAT,
                    "%s length %llu at offset %llu runs past the end of the file (%llu bytes left)",
                    what, (unsigned long long)len, (unsigned long long)(ps->pos - 8),
                    (unsigned long long)left(ps));
    out->ptr = (const char *)ps->g->base + ps->pos;
    out->len = len;
    ps->pos += len;
    return VLM_OK;
}

/* A key or tensor name: non-empty, bounded, valid UTF-8; copied with a NUL. */
static vlm_status rd_name(parser *ps, uint64_t max, const char *what, char **out) {
    vlm_gguf_str s = {0}; /* initialized: -O3 cannot see rd_str fills it on success */
    vlm_status st = rd_str(ps, &s, what);
    if (st) return st;
    char shown[80];
    if (s.len == 0) return fail(ps, VLM_ERR_FORMAT, "empty %s", what);
    if (s.len > max)
        return fail(ps, VLM_ERR_FORMAT, "%s of %llu bytes is longer than the limit of %llu", what,
                    (unsigned long long)s.len, (unsigned long long)max);
    if (!utf8_valid((const uint8_t *)s.ptr, s.len))
        return fail(ps, VLM_ERR_FORMAT, "%s '%s' is not valid UTF-8 (or holds a NUL byte)", what,
                    printable(shown, sizeof shown, (const uint8_t *)s.ptr, s.len));
    *out = vlm_strndup(s.ptr, (size_t)s.len, VLM_MEM_OTHER);
    if (!*out) return fail(ps, VLM_ERR_NOMEM, "out of memory copying a %s", what);
    return VLM_OK;
}

/* The fewest bytes one element of type t takes in the file. */
static uint64_t min_elem_bytes(vlm_gguf_type t) {
    if (t == VLM_GGUF_STRING) return 8;    /* the length */
    if (t == VLM_GGUF_ARRAY) return 4 + 8; /* element type + count */
    return type_sizes[t];
}

static vlm_status rd_value(parser *ps, vlm_gguf_type t, vlm_gguf_value *v, int depth) {
    v->type = t;
    const uint8_t *p = ps->g->base + ps->pos;
    vlm_status s;
    switch (t) {
    case VLM_GGUF_UINT8:
    case VLM_GGUF_UINT16:
    case VLM_GGUF_UINT32:
    case VLM_GGUF_UINT64: {
        size_t n = type_sizes[t];
        if ((s = need(ps, n, vlm_gguf_type_name(t)))) return s;
        v->u = 0;
        memcpy(&v->u, p, n); /* little-endian: the low bytes */
        ps->pos += n;
        return VLM_OK;
    }
    case VLM_GGUF_INT8:
    case VLM_GGUF_INT16:
    case VLM_GGUF_INT32:
    case VLM_GGUF_INT64: {
        size_t n = type_sizes[t];
        if ((s = need(ps, n, vlm_gguf_type_name(t)))) return s;
        if (t == VLM_GGUF_INT8) v->i = (int8_t)p[0];
        if (t == VLM_GGUF_INT16) v->i = (int16_t)(p[0] | (p[1] << 8));
        if (t == VLM_GGUF_INT32) {
            int32_t x;
            memcpy(&x, p, 4);
            v->i = x;
        }
        if (t == VLM_GGUF_INT64) memcpy(&v->i, p, 8);
        ps->pos += n;
        return VLM_OK;
    }
    case VLM_GGUF_FLOAT32: {
        float f;
        if ((s = need(ps, 4, "FLOAT32"))) return s;
        memcpy(&f, p, 4);
        v->f = f;
        ps->pos += 4;
        return VLM_OK;
    }
    case VLM_GGUF_FLOAT64:
        if ((s = need(ps, 8, "FLOAT64"))) return s;
        memcpy(&v->f, p, 8);
        ps->pos += 8;
        return VLM_OK;
    case VLM_GGUF_BOOL:
        if ((s = need(ps, 1, "BOOL"))) return s;
        if (p[0] > 1)
            return fail(ps, VLM_ERR_FORMAT, "BOOL value %u at offset %llu is neither 0 nor 1", p[0],
                        (unsigned long long)ps->pos);
        v->u = p[0];
        ps->pos += 1;
        return VLM_OK;
    case VLM_GGUF_STRING:
        return rd_str(ps, &v->str, "string");
    case VLM_GGUF_ARRAY: {
        if (depth >= VLM_GGUF_MAX_DEPTH)
            return fail(ps, VLM_ERR_FORMAT, "arrays nested deeper than %d levels at offset %llu",
                        VLM_GGUF_MAX_DEPTH, (unsigned long long)ps->pos);
        uint32_t et;
        uint64_t n;
        if ((s = rd_u32(ps, &et, "array element type"))) return s;
        if (et >= VLM_GGUF_TYPE_COUNT)
            return fail(ps, VLM_ERR_FORMAT, "unknown array element type %u at offset %llu", et,
                        (unsigned long long)(ps->pos - 4));
        if ((s = rd_u64(ps, &n, "array length"))) return s;
        v->arr.elem = (vlm_gguf_type)et;
        v->arr.n = 0;
        v->arr.data = NULL;
        v->arr.items = NULL;
        uint64_t min = min_elem_bytes((vlm_gguf_type)et);
        if (n > left(ps) / min)
            return fail(
                ps, VLM_ERR_FORMAT,
                "array of %llu %s elements at offset %llu cannot fit in the %llu bytes left",
                (unsigned long long)n, vlm_gguf_type_name((vlm_gguf_type)et),
                (unsigned long long)(ps->pos - 12), (unsigned long long)left(ps));
        if (et != VLM_GGUF_STRING && et != VLM_GGUF_ARRAY) {
            v->arr.n = n;
            v->arr.data = ps->g->base + ps->pos;
            if (et == VLM_GGUF_BOOL) {
                for (uint64_t k = 0; k < n; k++)
                    if (ps->g->base[ps->pos + k] > 1)
                        return fail(ps, VLM_ERR_FORMAT, "BOOL array element %llu is %u, not 0 or 1",
                                    (unsigned long long)k, ps->g->base[ps->pos + k]);
            }
            ps->pos += n * min;
            return VLM_OK;
        }
        if (n == 0) return VLM_OK;
        vlm_gguf_value *items = vlm_calloc((size_t)n, sizeof *items, VLM_MEM_OTHER);
        if (!items)
            return fail(ps, VLM_ERR_NOMEM, "out of memory for an array of %llu values",
                        (unsigned long long)n);
        /* Owned by v from here on, so a failure below frees what was read. */
        v->arr.items = items;
        v->arr.n = n;
        for (uint64_t k = 0; k < n; k++) {
            if ((s = rd_value(ps, (vlm_gguf_type)et, &items[k], depth + 1))) return s;
        }
        return VLM_OK;
    }
    default:
        return fail(ps, VLM_ERR_FORMAT, "unknown value type %d", (int)t);
    }
}

static vlm_status parse_header(parser *ps, uint64_t *n_tensors, uint64_t *n_kv) {
    vlm_gguf *g = ps->g;
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
        char shown[16];
        return fail(ps, VLM_ERR_FORMAT, "not a GGUF file (starts with '%s', expected 'GGUF')",
                    printable(shown, sizeof shown, g->base, g->size < 4 ? g->size : 4));
    }
    ps->pos = 4;
    uint32_t version;
    vlm_status s = rd_u32(ps, &version, "the version");
    if (s) return s;
    if (version == 1)
        return fail(ps, VLM_ERR_UNSUPPORTED,
                    "GGUF version 1 (32-bit counts) is not supported; "
                    "convert the file with a current llama.cpp");
    if ((version & 0xffff) == 0 && version != 0)
        return fail(ps, VLM_ERR_UNSUPPORTED,
                    "big-endian GGUF (version %u byte-swapped) is not supported",
                    __builtin_bswap32(version));
    if (version != 2 && version != 3)
        return fail(ps, VLM_ERR_UNSUPPORTED, "GGUF version %u is not supported (only 2 and 3)",
                    version);
    g->version = version;
    if ((s = rd_u64(ps, n_tensors, "the tensor count"))) return s;
    if ((s = rd_u64(ps, n_kv, "the metadata count"))) return s;
    /* Every pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1
     * bytes; every tensor info 8 + 1 + 4 + 8 + 4 + 8. */
    if (*n_kv > left(ps) / 14 || *n_kv >= UINT32_MAX / 4)
        return fail(ps, VLM_ERR_FORMAT,
                    "metadata count %llu is impossible in a file of %llu bytes "
                    "(truncated or corrupt)",
                    (unsigned long long)*n_kv, (unsigned long long)g->size);
    if (*n_tensors > left(ps) / 33 || *n_tensors >= UINT32_MAX / 4)
        return fail(ps, VLM_ERR_FORMAT,
                    "tensor count %llu is impossible in a file of %llu bytes "
                    "(truncated or corrupt)",
                    (unsigned long long)*n_tensors, (unsigned long long)g->size);
    return VLM_OK;
}

static vlm_status parse_kv(parser *ps, uint64_t n_kv) {
    vlm_gguf *g = ps->g;
    g->kv = VLM_NEW_ARRAY(vlm_gguf_kv, n_kv ? (size_t)n_kv : 1, VLM_MEM_OTHER);
    g->kv_cap = table_cap((size_t)n_kv);
    g->kv_index = VLM_NEW_ARRAY(uint32_t, g->kv_cap, VLM_MEM_OTHER);
    if (!g->kv || !g->kv_index)
        return fail(ps, VLM_ERR_NOMEM, "out of memory for %llu metadata pairs",
                    (unsigned long long)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        snprintf(ps->ctx, sizeof ps->ctx, "metadata pair %llu", (unsigned long long)i);
        char *key = NULL;
        vlm_status s = rd_name(ps, VLM_GGUF_MAX_KEY_LEN, "key", &key);
        if (s) return s;
        vlm_gguf_kv *kv = &g->kv[g->n_kv++];
        kv->key = key;
        snprintf(ps->ctx, sizeof ps->ctx, "metadata key '%.120s'", key);
        long dup = table_insert(g->kv_index, g->kv_cap, key, g->n_kv - 1, kv_name, g);
        if (dup >= 0) return fail(ps, VLM_ERR_FORMAT, "key appears twice");
        uint32_t t;
        if ((s = rd_u32(ps, &t, "the value type"))) return s;
        if (t >= VLM_GGUF_TYPE_COUNT)
            return fail(ps, VLM_ERR_FORMAT, "unknown value type %u at offset %llu", t,
                        (unsigned long long)(ps->pos - 4));
        if ((s = rd_value(ps, (vlm_gguf_type)t, &kv->value, 0))) return s;
    }
    ps->ctx[0] = '\0';
    return VLM_OK;
}

static vlm_status parse_alignment(parser *ps) {
    vlm_gguf *g = ps->g;
    g->alignment = VLM_GGUF_DEFAULT_ALIGNMENT;
    const vlm_gguf_value *a = vlm_gguf_find(g, "general.alignment");
    if (!a) return VLM_OK;
    snprintf(ps->ctx, sizeof ps->ctx, "metadata key 'general.alignment'");
    if (a->type != VLM_GGUF_UINT32)
        return fail(ps, VLM_ERR_FORMAT, "type is %s, expected UINT32", vlm_gguf_type_name(a->type));
    if (a->u == 0 || (a->u & (a->u - 1)))
        return fail(ps, VLM_ERR_FORMAT, "%llu is not a power of two", (unsigned long long)a->u);
    g->alignment = a->u;
    ps->ctx[0] = '\0';
    return VLM_OK;
}

static vlm_status parse_tensor_info(parser *ps, uint64_t i) {
    vlm_gguf *g = ps->g;
    vlm_status s;
    snprintf(ps->ctx, sizeof ps->ctx, "tensor %llu", (unsigned long long)i);
    char *name = NULL;
    if ((s = rd_name(ps, VLM_GGUF_MAX_NAME_LEN, "tensor name", &name))) return s;
    vlm_gguf_tensor *t = &g->tensors[g->n_tensors++];
    t->name = name;
    snprintf(ps->ctx, sizeof ps->ctx, "tensor '%.120s'", name);
    if (table_insert(g->tensor_index, g->tensor_cap, name, g->n_tensors - 1, tensor_name, g) >= 0)
        return fail(ps, VLM_ERR_FORMAT, "name appears twice");
    if ((s = rd_u32(ps, &t->n_dims, "the dimension count"))) return s;
    if (t->n_dims < 1 || t->n_dims > VLM_GGUF_MAX_DIMS)
        return fail(ps, VLM_ERR_FORMAT, "%u dimensions (1 to %d allowed)", t->n_dims,
                    VLM_GGUF_MAX_DIMS);
    t->n_elems = 1;
    for (uint32_t d = 0; d < VLM_GGUF_MAX_DIMS; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if ((s = rd_u64(ps, &t->dims[d], "a dimension"))) return s;
        /* ggml keeps sizes in int64_t. */
        if (t->dims[d] > (uint64_t)INT64_MAX ||
            __builtin_mul_overflow(t->n_elems, t->dims[d], &t->n_elems) ||
            t->n_elems > (uint64_t)INT64_MAX)
            return fail(ps, VLM_ERR_FORMAT, "the element count overflows (dimension %u is %llu)", d,
                        (unsigned long long)t->dims[d]);
    }
    if ((s = rd_u32(ps, &t->ggml_type, "the tensor type"))) return s;
    const char *tname = vlm_gguf_ggml_type_name(t->ggml_type);
    int dt = vlm_gguf_dtype_from_ggml(t->ggml_type);
    if (!tname) return fail(ps, VLM_ERR_FORMAT, "unknown tensor type id %u", t->ggml_type);
    if (dt < 0)
        return fail(ps, VLM_ERR_UNSUPPORTED, "tensor type %s (id %u) is not supported", tname,
                    t->ggml_type);
    t->dtype = (vlm_dtype)dt;
    const vlm_dtype_info *info = vlm_dtype_get(t->dtype);
    if (t->dims[0] % info->block_elems)
        return fail(ps, VLM_ERR_FORMAT, "row length %llu is not a multiple of the %s block size %u",
                    (unsigned long long)t->dims[0], tname, info->block_elems);
    if (!vlm_dtype_nbytes(t->dtype, t->n_elems, &t->nbytes))
        return fail(ps, VLM_ERR_FORMAT, "byte size of %llu %s elements overflows",
                    (unsigned long long)t->n_elems, tname);
    if ((s = rd_u64(ps, &t->offset, "the data offset"))) return s;
    if (t->offset % g->alignment)
        return fail(ps, VLM_ERR_FORMAT, "data offset %llu is not a multiple of the alignment %llu",
                    (unsigned long long)t->offset, (unsigned long long)g->alignment);
    return VLM_OK;
}

/* A tensor's bytes in the data section, for the overlap check. */
typedef struct span {
    uint64_t off, len;
    uint32_t idx;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static vlm_status check_layout(parser *ps) {
    vlm_gguf *g = ps->g;
    ps->ctx[0] = '\0';
    /* The data section starts at the next multiple of the alignment. */
    uint64_t pad = (g->alignment - ps->pos % g->alignment) % g->alignment;
    g->data_offset = ps->pos + pad;
    uint64_t data_size = g->data_offset <= g->size ? g->size - g->data_offset : 0;
    uint64_t max_end = 0;
    for (size_t i = 0; i < g->n_tensors; i++) {
        vlm_gguf_tensor *t = &g->tensors[i];
        uint64_t end;
        if (__builtin_add_overflow(t->offset, t->nbytes, &end) || end > data_size) {
            snprintf(ps->ctx, sizeof ps->ctx, "tensor '%.120s'", t->name);
            return fail(ps, VLM_ERR_FORMAT,
                        "data [%llu, +%llu bytes) runs past the end of the data section "
                        "(%llu bytes from offset %llu; file of %llu bytes)",
                        (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                        (unsigned long long)data_size, (unsigned long long)g->data_offset,
                        (unsigned long long)g->size);
        }
        if (end > max_end) max_end = end;
        t->data = t->nbytes ? g->base + g->data_offset + t->offset : NULL;
    }
    if (g->n_tensors < 2) return VLM_OK;
    span *sp = VLM_NEW_ARRAY(span, g->n_tensors, VLM_MEM_SCRATCH);
    if (!sp) return fail(ps, VLM_ERR_NOMEM, "out of memory checking tensor overlap");
    size_t n = 0;
    for (size_t i = 0; i < g->n_tensors; i++) {
        if (g->tensors[i].nbytes == 0) continue; /* empty tensors overlap nothing */
        sp[n++] = (span){g->tensors[i].offset, g->tensors[i].nbytes, (uint32_t)i};
    }
    qsort(sp, n, sizeof *sp, cmp_span);
    vlm_status s = VLM_OK;
    for (size_t k = 1; k < n; k++) {
        if (sp[k].off < sp[k - 1].off + sp[k - 1].len) {
            const vlm_gguf_tensor *a = &g->tensors[sp[k - 1].idx], *b = &g->tensors[sp[k].idx];
            s = fail(ps, VLM_ERR_FORMAT,
                     "tensors '%.100s' [%llu, +%llu) and '%.100s' [%llu, +%llu) overlap", a->name,
                     (unsigned long long)a->offset, (unsigned long long)a->nbytes, b->name,
                     (unsigned long long)b->offset, (unsigned long long)b->nbytes);
            break;
        }
    }
    vlm_free(sp);
    return s;
}

static vlm_status parse(vlm_gguf *g, vlm_err *err) {
    parser ps = {.g = g, .err = err};
    uint64_t n_tensors = 0, n_kv = 0; /* set by parse_header on success; -O3 cannot see it */
    vlm_status s = parse_header(&ps, &n_tensors, &n_kv);
    if (!s) s = parse_kv(&ps, n_kv);
    if (!s) s = parse_alignment(&ps);
    if (s) return s;
    g->tensors = VLM_NEW_ARRAY(vlm_gguf_tensor, n_tensors ? (size_t)n_tensors : 1, VLM_MEM_OTHER);
    g->tensor_cap = table_cap((size_t)n_tensors);
    g->tensor_index = VLM_NEW_ARRAY(uint32_t, g->tensor_cap, VLM_MEM_OTHER);
    if (!g->tensors || !g->tensor_index)
        return fail(&ps, VLM_ERR_NOMEM, "out of memory for %llu tensor infos",
                    (unsigned long long)n_tensors);
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((s = parse_tensor_info(&ps, i))) return s;
    return check_layout(&ps);
}

static vlm_status open_common(vlm_gguf *g, vlm_gguf **out, vlm_err *err) {
    vlm_status s = parse(g, err);
    if (s) {
        vlm_gguf_close(g);
        return s;
    }
    *out = g;
    return VLM_OK;
}

static vlm_status gguf_new(const char *name, vlm_gguf **out, vlm_err *err) {
    vlm_gguf *g = vlm_calloc(1, sizeof *g, VLM_MEM_OTHER);
    if (g) g->path = vlm_strdup(name ? name : "(memory)", VLM_MEM_OTHER);
    if (!g || !g->path) {
        vlm_free(g);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", name ? name : "(memory)");
    }
    *out = g;
    return VLM_OK;
}

vlm_status vlm_gguf_open_memory(const void *data, size_t size, const char *name, vlm_gguf **out,
                                vlm_err *err) {
    *out = NULL;
    if (!data && size)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: no data", name ? name : "(memory)");
    vlm_gguf *g = NULL;
    vlm_status s = gguf_new(name, &g, err);
    if (s) return s;
    g->base = data ? data : (const uint8_t *)"";
    g->size = size;
    return open_common(g, out, err);
}

vlm_status vlm_gguf_open(const char *path, vlm_gguf **out, vlm_err *err) {
    *out = NULL;
    if (!path) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "gguf: no path given");
    vlm_mapped_file map;
    vlm_status s = vlm_map_file(path, &map, err);
    if (s != VLM_OK) return s;
    if (map.size < 24) {
        vlm_unmap_file(&map);
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: file truncated: %llu bytes is shorter than a GGUF header (24)",
                           path, (unsigned long long)map.size);
    }
    vlm_gguf *g = NULL;
    s = gguf_new(path, &g, err);
    if (s) {
        vlm_unmap_file(&map);
        return s;
    }
    g->base = map.data;
    g->size = map.size;
    g->mapped = map.mapped;
    s = open_common(g, out, err);
    if (!s) {
        VLM_DEBUG("%s: GGUF v%u, %zu metadata pairs, %zu tensors, data at %llu", path, g->version,
                  g->n_kv, g->n_tensors, (unsigned long long)g->data_offset);
    }
    return s;
}

/* ========================================================================
 * Lookup
 * ======================================================================== */

uint32_t vlm_gguf_version(const vlm_gguf *g) {
    return g->version;
}
uint64_t vlm_gguf_alignment(const vlm_gguf *g) {
    return g->alignment;
}
uint64_t vlm_gguf_data_offset(const vlm_gguf *g) {
    return g->data_offset;
}
uint64_t vlm_gguf_file_size(const vlm_gguf *g) {
    return g->size;
}
size_t vlm_gguf_n_kv(const vlm_gguf *g) {
    return g->n_kv;
}
const vlm_gguf_kv *vlm_gguf_kv_at(const vlm_gguf *g, size_t i) {
    return i < g->n_kv ? &g->kv[i] : NULL;
}
size_t vlm_gguf_n_tensors(const vlm_gguf *g) {
    return g->n_tensors;
}
const vlm_gguf_tensor *vlm_gguf_tensor_at(const vlm_gguf *g, size_t i) {
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const vlm_gguf_value *vlm_gguf_find(const vlm_gguf *g, const char *key) {
    long i = table_find(g->kv_index, g->kv_cap, key, kv_name, g);
    return i < 0 ? NULL : &g->kv[i].value;
}

const vlm_gguf_tensor *vlm_gguf_find_tensor(const vlm_gguf *g, const char *name) {
    long i = table_find(g->tensor_index, g->tensor_cap, name, tensor_name, g);
    return i < 0 ? NULL : &g->tensors[i];
}

static bool is_unsigned(vlm_gguf_type t) {
    return t == VLM_GGUF_UINT8 || t == VLM_GGUF_UINT16 || t == VLM_GGUF_UINT32 ||
           t == VLM_GGUF_UINT64;
}
static bool is_signed(vlm_gguf_type t) {
    return t == VLM_GGUF_INT8 || t == VLM_GGUF_INT16 || t == VLM_GGUF_INT32 || t == VLM_GGUF_INT64;
}

static vlm_status get_typed(const vlm_gguf *g, const char *key, const vlm_gguf_value **v,
                            vlm_err *err) {
    *v = vlm_gguf_find(g, key);
    if (!*v) return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: no metadata key '%s'", g->path, key);
    return VLM_OK;
}

static vlm_status wrong_type(const vlm_gguf *g, const char *key, const vlm_gguf_value *v,
                             const char *want, vlm_err *err) {
    return vlm_err_set(err, VLM_ERR_FORMAT, "%s: metadata key '%s' is a %s, expected %s", g->path,
                       key, vlm_gguf_type_name(v->type), want);
}

vlm_status vlm_gguf_get_u64(const vlm_gguf *g, const char *key, uint64_t *out, vlm_err *err) {
    const vlm_gguf_value *v;
    vlm_status s = get_typed(g, key, &v, err);
    if (s) return s;
    if (is_unsigned(v->type)) {
        *out = v->u;
        return VLM_OK;
    }
    if (is_signed(v->type) && v->i >= 0) {
        *out = (uint64_t)v->i;
        return VLM_OK;
    }
    return wrong_type(g, key, v, "a non-negative integer", err);
}

vlm_status vlm_gguf_get_i64(const vlm_gguf *g, const char *key, int64_t *out, vlm_err *err) {
    const vlm_gguf_value *v;
    vlm_status s = get_typed(g, key, &v, err);
    if (s) return s;
    if (is_signed(v->type)) {
        *out = v->i;
        return VLM_OK;
    }
    if (is_unsigned(v->type) && v->u <= (uint64_t)INT64_MAX) {
        *out = (int64_t)v->u;
        return VLM_OK;
    }
    return wrong_type(g, key, v, "an integer up to 2^63-1", err);
}

vlm_status vlm_gguf_get_f64(const vlm_gguf *g, const char *key, double *out, vlm_err *err) {
    const vlm_gguf_value *v;
    vlm_status s = get_typed(g, key, &v, err);
    if (s) return s;
    if (v->type == VLM_GGUF_FLOAT32 || v->type == VLM_GGUF_FLOAT64)
        *out = v->f;
    else if (is_signed(v->type))
        *out = (double)v->i;
    else if (is_unsigned(v->type))
        *out = (double)v->u;
    else
        return wrong_type(g, key, v, "a number", err);
    return VLM_OK;
}

vlm_status vlm_gguf_get_bool(const vlm_gguf *g, const char *key, bool *out, vlm_err *err) {
    const vlm_gguf_value *v;
    vlm_status s = get_typed(g, key, &v, err);
    if (s) return s;
    if (v->type != VLM_GGUF_BOOL) return wrong_type(g, key, v, "BOOL", err);
    *out = v->u != 0;
    return VLM_OK;
}

vlm_status vlm_gguf_get_str(const vlm_gguf *g, const char *key, vlm_gguf_str *out, vlm_err *err) {
    const vlm_gguf_value *v;
    vlm_status s = get_typed(g, key, &v, err);
    if (s) return s;
    if (v->type != VLM_GGUF_STRING) return wrong_type(g, key, v, "STRING", err);
    *out = v->str;
    return VLM_OK;
}

vlm_status vlm_gguf_get_arr(const vlm_gguf *g, const char *key, vlm_gguf_type elem,
                            const vlm_gguf_value **out, vlm_err *err) {
    const vlm_gguf_value *v;
    vlm_status s = get_typed(g, key, &v, err);
    if (s) return s;
    if (v->type != VLM_GGUF_ARRAY) return wrong_type(g, key, v, "ARRAY", err);
    if (elem != VLM_GGUF_TYPE_COUNT && v->arr.elem != elem)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: metadata key '%s' is an array of %s, expected an array of %s",
                           g->path, key, vlm_gguf_type_name(v->arr.elem), vlm_gguf_type_name(elem));
    *out = v;
    return VLM_OK;
}

/* Element i of a scalar array, widened into *u or *i (whichever applies)
 * or *f. Returns the element type, or VLM_GGUF_TYPE_COUNT if unusable. */
static vlm_gguf_type arr_elem(const vlm_gguf_value *a, uint64_t i, uint64_t *u, int64_t *s,
                              double *f) {
    if (!a || a->type != VLM_GGUF_ARRAY || i >= a->arr.n || !a->arr.data)
        return VLM_GGUF_TYPE_COUNT;
    const uint8_t *p = (const uint8_t *)a->arr.data + i * type_sizes[a->arr.elem];
    switch (a->arr.elem) {
    case VLM_GGUF_UINT8:
    case VLM_GGUF_BOOL:
        *u = p[0];
        break;
    case VLM_GGUF_UINT16:
        *u = (uint64_t)(p[0] | (p[1] << 8));
        break;
    case VLM_GGUF_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        *u = x;
        break;
    }
    case VLM_GGUF_UINT64:
        memcpy(u, p, 8);
        break;
    case VLM_GGUF_INT8:
        *s = (int8_t)p[0];
        break;
    case VLM_GGUF_INT16:
        *s = (int16_t)(p[0] | (p[1] << 8));
        break;
    case VLM_GGUF_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        *s = x;
        break;
    }
    case VLM_GGUF_INT64:
        memcpy(s, p, 8);
        break;
    case VLM_GGUF_FLOAT32: {
        float x;
        memcpy(&x, p, 4);
        *f = x;
        break;
    }
    case VLM_GGUF_FLOAT64:
        memcpy(f, p, 8);
        break;
    default:
        return VLM_GGUF_TYPE_COUNT;
    }
    return a->arr.elem;
}

bool vlm_gguf_arr_u64(const vlm_gguf_value *a, uint64_t i, uint64_t *out) {
    uint64_t u = 0;
    int64_t s = 0;
    double f = 0;
    vlm_gguf_type t = arr_elem(a, i, &u, &s, &f);
    if (is_unsigned(t) || t == VLM_GGUF_BOOL)
        *out = u;
    else if (is_signed(t) && s >= 0)
        *out = (uint64_t)s;
    else
        return false;
    return true;
}

bool vlm_gguf_arr_i64(const vlm_gguf_value *a, uint64_t i, int64_t *out) {
    uint64_t u = 0;
    int64_t s = 0;
    double f = 0;
    vlm_gguf_type t = arr_elem(a, i, &u, &s, &f);
    if (is_signed(t))
        *out = s;
    else if ((is_unsigned(t) || t == VLM_GGUF_BOOL) && u <= (uint64_t)INT64_MAX)
        *out = (int64_t)u;
    else
        return false;
    return true;
}

bool vlm_gguf_arr_f64(const vlm_gguf_value *a, uint64_t i, double *out) {
    uint64_t u = 0;
    int64_t s = 0;
    double f = 0;
    vlm_gguf_type t = arr_elem(a, i, &u, &s, &f);
    if (t == VLM_GGUF_FLOAT32 || t == VLM_GGUF_FLOAT64)
        *out = f;
    else if (is_signed(t))
        *out = (double)s;
    else if (is_unsigned(t) || t == VLM_GGUF_BOOL)
        *out = (double)u;
    else
        return false;
    return true;
}

bool vlm_gguf_arr_str(const vlm_gguf_value *a, uint64_t i, vlm_gguf_str *out) {
    if (!a || a->type != VLM_GGUF_ARRAY || a->arr.elem != VLM_GGUF_STRING || i >= a->arr.n)
        return false;
    *out = a->arr.items[i].str;
    return true;
}

/* ========================================================================
 * Writing
 * ======================================================================== */

typedef struct wtensor {
    char *name;
    vlm_dtype dtype;
    uint32_t n_dims;
    uint64_t dims[VLM_GGUF_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* borrowed */
} wtensor;

struct vlm_gguf_writer {
    uint32_t version;
    uint64_t alignment;
    uint8_t *kv; /* serialized metadata pairs */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;      /* (n_kv) for the duplicate check */
    wtensor *tensors; /* (n_tensors) */
    size_t n_tensors, tensors_cap;
};

vlm_status vlm_gguf_writer_new(vlm_gguf_writer **out, vlm_err *err) {
    *out = vlm_calloc(1, sizeof **out, VLM_MEM_OTHER);
    if (!*out) return vlm_err_set(err, VLM_ERR_NOMEM, "gguf writer: out of memory");
    (*out)->version = 3;
    (*out)->alignment = VLM_GGUF_DEFAULT_ALIGNMENT;
    return VLM_OK;
}

void vlm_gguf_writer_free(vlm_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) vlm_free(w->keys[i]);
    vlm_free(w->keys);
    for (size_t i = 0; i < w->n_tensors; i++) vlm_free(w->tensors[i].name);
    vlm_free(w->tensors);
    vlm_free(w->kv);
    vlm_free(w);
}

vlm_status vlm_gguf_writer_set_version(vlm_gguf_writer *w, uint32_t version, vlm_err *err) {
    if (version != 2 && version != 3)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "gguf writer: version %u (2 or 3 allowed)",
                           version);
    w->version = version;
    return VLM_OK;
}

/* Append n bytes to the metadata buffer (growing it geometrically). */
static bool kv_put(vlm_gguf_writer *w, const void *p, size_t n) {
    if (n > w->kv_cap - w->kv_len) {
        size_t cap = w->kv_cap ? w->kv_cap : 256;
        while (cap - w->kv_len < n) {
            if (cap > SIZE_MAX / 2) return false;
            cap *= 2;
        }
        uint8_t *b = vlm_realloc(w->kv, cap, VLM_MEM_OTHER);
        if (!b) return false;
        w->kv = b;
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return true;
}

static bool kv_put_u32(vlm_gguf_writer *w, uint32_t v) {
    return kv_put(w, &v, 4);
}
static bool kv_put_u64(vlm_gguf_writer *w, uint64_t v) {
    return kv_put(w, &v, 8);
}
static bool kv_put_str(vlm_gguf_writer *w, const char *p, uint64_t n) {
    return kv_put_u64(w, n) && (n == 0 || kv_put(w, p, (size_t)n));
}

/* Serialize v (without its type id). Returns VLM_ERR_NOMEM or
 * VLM_ERR_INVALID_ARG; the caller rolls the buffer back on failure. */
static vlm_status put_value(vlm_gguf_writer *w, const vlm_gguf_value *v, int depth) {
    if ((unsigned)v->type >= VLM_GGUF_TYPE_COUNT) return VLM_ERR_INVALID_ARG;
    switch (v->type) {
    case VLM_GGUF_STRING:
        if (!v->str.ptr && v->str.len) return VLM_ERR_INVALID_ARG;
        return kv_put_str(w, v->str.ptr, v->str.len) ? VLM_OK : VLM_ERR_NOMEM;
    case VLM_GGUF_ARRAY: {
        vlm_gguf_type et = v->arr.elem;
        if (depth >= VLM_GGUF_MAX_DEPTH || (unsigned)et >= VLM_GGUF_TYPE_COUNT)
            return VLM_ERR_INVALID_ARG;
        if (!kv_put_u32(w, (uint32_t)et) || !kv_put_u64(w, v->arr.n)) return VLM_ERR_NOMEM;
        if (et == VLM_GGUF_STRING || et == VLM_GGUF_ARRAY) {
            if (v->arr.n && !v->arr.items) return VLM_ERR_INVALID_ARG;
            for (uint64_t k = 0; k < v->arr.n; k++) {
                if (v->arr.items[k].type != et) return VLM_ERR_INVALID_ARG;
                vlm_status s = put_value(w, &v->arr.items[k], depth + 1);
                if (s) return s;
            }
            return VLM_OK;
        }
        size_t bytes;
        if (!vlm_size_mul((size_t)v->arr.n, type_sizes[et], &bytes) || (bytes && !v->arr.data))
            return VLM_ERR_INVALID_ARG;
        if (et == VLM_GGUF_BOOL)
            for (size_t k = 0; k < bytes; k++)
                if (((const uint8_t *)v->arr.data)[k] > 1) return VLM_ERR_INVALID_ARG;
        return kv_put(w, v->arr.data, bytes) ? VLM_OK : VLM_ERR_NOMEM;
    }
    case VLM_GGUF_INT8:
    case VLM_GGUF_INT16:
    case VLM_GGUF_INT32:
    case VLM_GGUF_INT64: {
        int64_t x = v->i; /* two's complement: the low bytes are the narrow value */
        return kv_put(w, &x, type_sizes[v->type]) ? VLM_OK : VLM_ERR_NOMEM;
    }
    case VLM_GGUF_FLOAT32: {
        float f = (float)v->f;
        return kv_put(w, &f, 4) ? VLM_OK : VLM_ERR_NOMEM;
    }
    case VLM_GGUF_FLOAT64:
        return kv_put(w, &v->f, 8) ? VLM_OK : VLM_ERR_NOMEM;
    case VLM_GGUF_BOOL:
        if (v->u > 1) return VLM_ERR_INVALID_ARG;
        return kv_put(w, &v->u, 1) ? VLM_OK : VLM_ERR_NOMEM;
    default: /* unsigned */
        return kv_put(w, &v->u, type_sizes[v->type]) ? VLM_OK : VLM_ERR_NOMEM;
    }
}

/* A scalar whose value does not fit its type is a caller error. */
static bool value_fits(const vlm_gguf_value *v) {
    switch (v->type) {
    case VLM_GGUF_UINT8:
        return v->u <= UINT8_MAX;
    case VLM_GGUF_UINT16:
        return v->u <= UINT16_MAX;
    case VLM_GGUF_UINT32:
        return v->u <= UINT32_MAX;
    case VLM_GGUF_INT8:
        return v->i >= INT8_MIN && v->i <= INT8_MAX;
    case VLM_GGUF_INT16:
        return v->i >= INT16_MIN && v->i <= INT16_MAX;
    case VLM_GGUF_INT32:
        return v->i >= INT32_MIN && v->i <= INT32_MAX;
    default:
        return true;
    }
}

vlm_status vlm_gguf_writer_add(vlm_gguf_writer *w, const char *key, const vlm_gguf_value *v,
                               vlm_err *err) {
    size_t klen = key ? strlen(key) : 0;
    if (klen == 0 || klen > VLM_GGUF_MAX_KEY_LEN || !utf8_valid((const uint8_t *)key, klen))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: key '%.100s' must be 1 to %d bytes of UTF-8",
                           key ? key : "(null)", VLM_GGUF_MAX_KEY_LEN);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "gguf writer: key '%.200s' added twice",
                               key);
    if (!value_fits(v))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: key '%.200s': value does not fit a %s", key,
                           vlm_gguf_type_name(v->type));
    bool is_align = strcmp(key, "general.alignment") == 0;
    if (is_align && (v->type != VLM_GGUF_UINT32 || v->u == 0 || (v->u & (v->u - 1))))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: general.alignment must be a UINT32 power of two");
    char **keys = vlm_realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *keys, VLM_MEM_OTHER);
    if (!keys) return vlm_err_set(err, VLM_ERR_NOMEM, "gguf writer: out of memory");
    w->keys = keys;
    char *copy = vlm_strdup(key, VLM_MEM_OTHER);
    if (!copy) return vlm_err_set(err, VLM_ERR_NOMEM, "gguf writer: out of memory");
    size_t mark = w->kv_len;
    vlm_status s = VLM_ERR_NOMEM;
    if (kv_put_str(w, key, klen) && kv_put_u32(w, (uint32_t)v->type)) s = put_value(w, v, 0);
    if (s) {
        w->kv_len = mark;
        vlm_free(copy);
        return vlm_err_set(err, s,
                           s == VLM_ERR_NOMEM ? "gguf writer: key '%.200s': out of memory"
                                              : "gguf writer: key '%.200s': malformed %s value",
                           key, vlm_gguf_type_name(v->type));
    }
    w->keys[w->n_kv++] = copy;
    if (is_align) w->alignment = v->u;
    return VLM_OK;
}

vlm_status vlm_gguf_writer_add_u32(vlm_gguf_writer *w, const char *key, uint32_t v, vlm_err *err) {
    vlm_gguf_value x = {.type = VLM_GGUF_UINT32, .u = v};
    return vlm_gguf_writer_add(w, key, &x, err);
}
vlm_status vlm_gguf_writer_add_u64(vlm_gguf_writer *w, const char *key, uint64_t v, vlm_err *err) {
    vlm_gguf_value x = {.type = VLM_GGUF_UINT64, .u = v};
    return vlm_gguf_writer_add(w, key, &x, err);
}
vlm_status vlm_gguf_writer_add_i64(vlm_gguf_writer *w, const char *key, int64_t v, vlm_err *err) {
    vlm_gguf_value x = {.type = VLM_GGUF_INT64, .i = v};
    return vlm_gguf_writer_add(w, key, &x, err);
}
vlm_status vlm_gguf_writer_add_f32(vlm_gguf_writer *w, const char *key, float v, vlm_err *err) {
    vlm_gguf_value x = {.type = VLM_GGUF_FLOAT32, .f = v};
    return vlm_gguf_writer_add(w, key, &x, err);
}
vlm_status vlm_gguf_writer_add_bool(vlm_gguf_writer *w, const char *key, bool v, vlm_err *err) {
    vlm_gguf_value x = {.type = VLM_GGUF_BOOL, .u = v};
    return vlm_gguf_writer_add(w, key, &x, err);
}
vlm_status vlm_gguf_writer_add_str(vlm_gguf_writer *w, const char *key, const char *s,
                                   vlm_err *err) {
    vlm_gguf_value x = {.type = VLM_GGUF_STRING, .str = {s, s ? strlen(s) : 0}};
    return vlm_gguf_writer_add(w, key, &x, err);
}

vlm_status vlm_gguf_writer_add_tensor(vlm_gguf_writer *w, const char *name, vlm_dtype t,
                                      uint32_t n_dims, const uint64_t *dims, const void *data,
                                      vlm_err *err) {
    size_t nlen = name ? strlen(name) : 0;
    if (nlen == 0 || nlen > VLM_GGUF_MAX_NAME_LEN || !utf8_valid((const uint8_t *)name, nlen))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: tensor name '%.100s' must be 1 to %d bytes of UTF-8",
                           name ? name : "(null)", VLM_GGUF_MAX_NAME_LEN);
    if (vlm_gguf_ggml_from_dtype(t) < 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: tensor '%.200s': dtype %d has no GGUF type", name, (int)t);
    if (n_dims < 1 || n_dims > VLM_GGUF_MAX_DIMS || !dims)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: tensor '%.200s': %u dimensions (1 to %d allowed)", name,
                           n_dims, VLM_GGUF_MAX_DIMS);
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "gguf writer: tensor '%.200s' added twice",
                               name);
    wtensor wt = {.dtype = t, .n_dims = n_dims, .data = data};
    uint64_t n = 1;
    for (uint32_t d = 0; d < VLM_GGUF_MAX_DIMS; d++) {
        wt.dims[d] = d < n_dims ? dims[d] : 1;
        if (__builtin_mul_overflow(n, wt.dims[d], &n) || n > (uint64_t)INT64_MAX)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                               "gguf writer: tensor '%.200s': element count overflows", name);
    }
    const vlm_dtype_info *info = vlm_dtype_get(t);
    if (wt.dims[0] % info->block_elems || !vlm_dtype_nbytes(t, n, &wt.nbytes))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "gguf writer: tensor '%.200s': row length %llu is not a multiple of "
                           "the %s block size %u",
                           name, (unsigned long long)wt.dims[0], info->name, info->block_elems);
    if (wt.nbytes && !data)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "gguf writer: tensor '%.200s': no data", name);
    if (w->n_tensors == w->tensors_cap) {
        size_t cap = w->tensors_cap ? 2 * w->tensors_cap : 16;
        wtensor *nt = vlm_realloc(w->tensors, cap * sizeof *nt, VLM_MEM_OTHER);
        if (!nt) return vlm_err_set(err, VLM_ERR_NOMEM, "gguf writer: out of memory");
        w->tensors = nt;
        w->tensors_cap = cap;
    }
    wt.name = vlm_strdup(name, VLM_MEM_OTHER);
    if (!wt.name) return vlm_err_set(err, VLM_ERR_NOMEM, "gguf writer: out of memory");
    w->tensors[w->n_tensors++] = wt;
    return VLM_OK;
}

static bool put_all(FILE *f, const void *p, size_t n) {
    return n == 0 || fwrite(p, 1, n, f) == n;
}

static bool put_zeros(FILE *f, uint64_t n) {
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (fwrite(zeros, 1, k, f) != k) return false;
        n -= k;
    }
    return true;
}

static uint64_t pad_to(uint64_t x, uint64_t a) {
    return (a - x % a) % a;
}

vlm_status vlm_gguf_writer_write(vlm_gguf_writer *w, const char *path, vlm_err *err) {
    if (!path) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "gguf writer: no path given");
    size_t plen = strlen(path);
    char *tmp = vlm_alloc(plen + 16, VLM_MEM_SCRATCH);
    if (!tmp) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        vlm_free(tmp);
        return vlm_err_set(err, VLM_ERR_IO, "%s: cannot create a temporary file: %s", path,
                           strerror(e));
    }
    /* mkstemp creates the file 0600; a model file is meant to be shared. */
    FILE *f = fchmod(fd, 0644) == 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        vlm_free(tmp);
        return vlm_err_set(err, VLM_ERR_IO, "%s: %s", path, strerror(e));
    }
    bool ok = put_all(f, "GGUF", 4) && put_all(f, &w->version, 4);
    uint64_t nt = w->n_tensors;
    ok = ok && put_all(f, &nt, 8) && put_all(f, &w->n_kv, 8) && put_all(f, w->kv, w->kv_len);
    uint64_t pos = 24 + w->kv_len, off = 0;
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        uint64_t nlen = strlen(t->name);
        uint32_t type = (uint32_t)vlm_gguf_ggml_from_dtype(t->dtype);
        ok = put_all(f, &nlen, 8) && put_all(f, t->name, (size_t)nlen) &&
             put_all(f, &t->n_dims, 4) && put_all(f, t->dims, 8 * (size_t)t->n_dims) &&
             put_all(f, &type, 4) && put_all(f, &off, 8);
        pos += 8 + nlen + 4 + 8 * (uint64_t)t->n_dims + 4 + 8;
        off += t->nbytes + pad_to(t->nbytes, w->alignment);
    }
    ok = ok && put_zeros(f, pad_to(pos, w->alignment));
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        ok =
            put_all(f, t->data, (size_t)t->nbytes) && put_zeros(f, pad_to(t->nbytes, w->alignment));
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) unlink(tmp);
    vlm_free(tmp);
    if (!ok) return vlm_err_set(err, VLM_ERR_IO, "%s: write failed: %s", path, strerror(e));
    return VLM_OK;
}
