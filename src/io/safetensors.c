/* io/safetensors - reading, validating and writing safetensors files and
 * sharded sets. See safetensors.h for the format and the rules enforced. */
#include "io/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/mapfile.h"
#include "base/file.h"
#include "base/json.h"

/* Parse-scope chunk for a header (Phi-3.5-vision's shards: ~50 KB of JSON each). */
#define ST_JSON_CHUNK ((size_t)64 << 10)

/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define JSON_INT_MAX 9007199254740992.0

/* ============================================================================
 * Small helpers: UTF-8, names in messages, a name -> index hash table
 * ========================================================================== */

bool vlm_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false; /* continuation byte, overlong 2-byte lead, or > U+10FFFF */
        }
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

/* A name made safe for a message: printable ASCII kept, other bytes as \xHH,
 * cut to fit `out` (which gets "..." when cut). */
static const char *msg_name(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (o + 8 >= cap) {
            memcpy(out + o, "...", 4);
            return out;
        }
        if (*p >= 0x20 && *p < 0x7f && *p != '\\')
            out[o++] = (char)*p;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", *p);
    }
    out[o] = '\0';
    return out;
}

#define MSGNAME(s, buf) msg_name((s), (buf), sizeof(buf))

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a 64 */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Open addressing over an array of tensors; slots hold index + 1 (0 = empty).
 * Capacity is a power of two at least twice the count, so probes stay short. */
typedef struct name_table {
    uint32_t *slots;
    size_t cap;
} name_table;

static bool table_init(name_table *t, size_t n) {
    size_t cap = 8;
    while (cap < 2 * n) cap <<= 1;
    t->slots = VLM_NEW_ARRAY(uint32_t, cap, VLM_MEM_OTHER);
    t->cap = t->slots ? cap : 0;
    return t->slots != NULL;
}

static void table_free(name_table *t) {
    vlm_free(t->slots);
    t->slots = NULL;
    t->cap = 0;
}

/* Insert arr[i]; returns the index of an entry with the same name (not
 * inserting), or -1 when inserted. */
static long table_insert(name_table *t, const vlm_st_tensor *arr, uint32_t i) {
    size_t mask = t->cap - 1, h = (size_t)hash_name(arr[i].name) & mask;
    while (t->slots[h]) {
        uint32_t j = t->slots[h] - 1;
        if (strcmp(arr[j].name, arr[i].name) == 0) return (long)j;
        h = (h + 1) & mask;
    }
    t->slots[h] = i + 1;
    return -1;
}

static long table_find(const name_table *t, const vlm_st_tensor *arr, const char *name) {
    if (!t->cap || !name) return -1;
    size_t mask = t->cap - 1, h = (size_t)hash_name(name) & mask;
    while (t->slots[h]) {
        uint32_t j = t->slots[h] - 1;
        if (strcmp(arr[j].name, name) == 0) return (long)j;
        h = (h + 1) & mask;
    }
    return -1;
}

static bool is_st_dtype(int d) {
    return d >= 0 && d <= VLM_DTYPE_BOOL;
}

/* A JSON number that is an exact non-negative integer up to 2^53. */
static bool json_uint(const cJSON *it, uint64_t *out) {
    if (!cJSON_IsNumber(it)) return false;
    double v = it->valuedouble;
    if (!(v >= 0 && v <= JSON_INT_MAX) || v != (double)(uint64_t)v) return false;
    *out = (uint64_t)v;
    return true;
}

/* ============================================================================
 * Reading
 * ========================================================================== */

struct vlm_st_file {
    char *path;
    const uint8_t *base; /* the whole file image; unmapped: the first 8 + N bytes only */
    uint64_t size;       /* bytes of the file */
    bool mapped;
    int fd;        /* unmapped: the open file tensors are read from; else -1 */
    uint8_t *head; /* unmapped: the header bytes read (accounted), base points here */
    uint64_t header_len;
    vlm_st_tensor *tensors; /* [n], sorted by offset */
    size_t n;
    const char **meta; /* [2 * n_meta]: key, value, ... */
    size_t n_meta;
    char *strings; /* names, metadata keys and values, NUL-separated */
    name_table table;
};

static int cmp_offset(const void *a, const void *b) {
    const vlm_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static char *arena_put(char **cursor, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = *cursor;
    memcpy(d, s, n);
    *cursor += n;
    return d;
}

/* Validate one tensor entry `it` (member name already checked) into *t. */
static vlm_status parse_tensor(const char *path, const cJSON *it, uint64_t data_size,
                               vlm_st_tensor *t, vlm_err *err) {
    char nb[160];
    const char *nm = MSGNAME(it->string, nb);
    if (!cJSON_IsObject(it))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": entry is not an object", path,
                           nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": missing or non-string dtype",
                           path, nm);
    int d = vlm_dtype_parse(dt->valuestring);
    /* Spellings the format defines that we do not compute with. */
    static const char *const later[] = {"U16",     "U32",     "U64",     "F8_E4M3", "F8_E5M2",
                                        "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"};
    for (size_t i = 0; !is_st_dtype(d) && i < sizeof later / sizeof *later; i++)
        if (strcmp(dt->valuestring, later[i]) == 0)
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: tensor \"%s\": dtype %s is not supported", path, nm, later[i]);
    if (!is_st_dtype(d)) {
        char db[64];
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype \"%s\"", path, nm,
                           MSGNAME(dt->valuestring, db));
    }
    t->dtype = (vlm_dtype)d;
    if (!cJSON_IsArray(sh))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": missing or non-array shape",
                           path, nm);
    int rank = cJSON_GetArraySize(sh);
    if (rank > VLM_ST_MAX_RANK)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: tensor \"%s\": rank %d is over the limit of %d", path, nm, rank,
                           VLM_ST_MAX_RANK);
    t->rank = rank;
    uint64_t nelem = 1;
    int k = 0;
    bool overflow = false;
    for (const cJSON *e = sh->child; e; e = e->next, k++) {
        uint64_t dim;
        if (!json_uint(e, &dim))
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: tensor \"%s\": shape[%d] is not a non-negative integer", path,
                               nm, k);
        t->shape[k] = (int64_t)dim;
        if (__builtin_mul_overflow(nelem, dim, &nelem)) overflow = true;
    }
    /* A zero dimension makes the product 0 whatever overflowed before it. */
    for (int j = 0; j < rank; j++)
        if (t->shape[j] == 0) overflow = false, nelem = 0;
    uint64_t nbytes = 0;
    if (overflow || !vlm_dtype_nbytes(t->dtype, nelem, &nbytes))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": shape size overflows 64 bits",
                           path, nm);
    t->nelem = nelem;
    uint64_t b, e;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &b) ||
        !json_uint(off->child->next, &e))
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: tensor \"%s\": data_offsets must be two non-negative integers",
                           path, nm);
    if (e < b)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: tensor \"%s\": data_offsets end %llu is before begin %llu", path,
                           nm, (unsigned long long)e, (unsigned long long)b);
    if (e > data_size)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: tensor \"%s\": data_offsets [%llu, %llu] run past the data area "
                           "of %llu bytes",
                           path, nm, (unsigned long long)b, (unsigned long long)e,
                           (unsigned long long)data_size);
    if (e - b != nbytes)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: tensor \"%s\": data_offsets span %llu bytes but %s x %llu elements "
                           "need %llu",
                           path, nm, (unsigned long long)(e - b), vlm_dtype_get(t->dtype)->name,
                           (unsigned long long)nelem, (unsigned long long)nbytes);
    t->offset = b; /* relative for now; made absolute by the caller */
    t->nbytes = nbytes;
    return VLM_OK;
}

/* Parse the header of the file image f->base[0, f->size). */
static vlm_status parse_file(vlm_st_file *f, vlm_err *err) {
    const char *path = f->path;
    if (f->size < 8)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: truncated: %llu bytes, too short for the 8-byte header length",
                           path, (unsigned long long)f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->base[i];
    if (hlen < 2)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: header length %llu is too small", path,
                           (unsigned long long)hlen);
    if (hlen > VLM_ST_MAX_HEADER)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: header length %llu is over the limit of %llu bytes", path,
                           (unsigned long long)hlen, (unsigned long long)VLM_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: truncated: header length %llu but only %llu bytes follow", path,
                           (unsigned long long)hlen, (unsigned long long)(f->size - 8));
    f->header_len = hlen;
    uint64_t data_size = f->size - 8 - hlen;
    const char *hdr = (const char *)f->base + 8;

    vlm_json_init();
    const char *end = NULL;
    vlm_json_alloc_reset();
    /* The tree lives only while the tensor table is filled (names are
     * copied out): parse it into a scope, ~20 nodes and strings per tensor
     * in a few chunks instead of one allocation each. */
    vlm_json_scope sc;
    vlm_json_scope_begin(&sc, ST_JSON_CHUNK);
    vlm_status st = VLM_OK;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root && vlm_json_alloc_failed()) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory parsing the header", path);
        goto out;
    }
    if (!root) {
        if (end && end >= hdr && end <= hdr + hlen)
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: header is not valid JSON (byte %zu)", path,
                             (size_t)(end - hdr));
        else
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: header is not valid JSON (or out of memory)",
                             path);
        goto out;
    }
    /* After the JSON value only padding may follow (HF pads with spaces). */
    for (const char *p = end; p && p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = vlm_err_set(err, VLM_ERR_FORMAT,
                             "%s: unexpected byte 0x%02x after the header JSON (byte %zu)", path,
                             (unsigned char)*p, (size_t)(p - hdr));
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto out;
    }

    /* Count, check names, size the string arena. */
    size_t n = 0, n_meta = 0, bytes = 0;
    const cJSON *meta = NULL;
    for (const cJSON *it = root->child; it; it = it->next) {
        char nb[160];
        const char *name = it->string ? it->string : "";
        if (strcmp(name, "__metadata__") == 0) {
            if (meta) {
                st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: __metadata__ appears twice", path);
                goto out;
            }
            meta = it;
            if (!cJSON_IsObject(it)) {
                st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: __metadata__ is not an object", path);
                goto out;
            }
            for (const cJSON *kv = it->child; kv; kv = kv->next) {
                const char *k = kv->string ? kv->string : "";
                if (!cJSON_IsString(kv)) {
                    st = vlm_err_set(err, VLM_ERR_FORMAT,
                                     "%s: __metadata__ \"%s\": value is not a string", path,
                                     MSGNAME(k, nb));
                    goto out;
                }
                if (!vlm_utf8_valid(k, strlen(k)) ||
                    !vlm_utf8_valid(kv->valuestring, strlen(kv->valuestring))) {
                    st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: __metadata__ \"%s\": invalid UTF-8",
                                     path, MSGNAME(k, nb));
                    goto out;
                }
                bytes += strlen(k) + strlen(kv->valuestring) + 2;
                n_meta++;
            }
            continue;
        }
        size_t len = strlen(name);
        if (len == 0) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: a tensor has an empty name", path);
            goto out;
        }
        if (!vlm_utf8_valid(name, len)) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": name is not valid UTF-8",
                             path, MSGNAME(name, nb));
            goto out;
        }
        bytes += len + 1;
        n++;
    }
    if (n > UINT32_MAX / 4) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: too many tensors (%zu)", path, n);
        goto out;
    }

    f->tensors = VLM_NEW_ARRAY(vlm_st_tensor, n ? n : 1, VLM_MEM_OTHER);
    f->meta = VLM_NEW_ARRAY(const char *, 2 * n_meta + 1, VLM_MEM_OTHER);
    f->strings = vlm_alloc(bytes + 1, VLM_MEM_OTHER);
    if (!f->tensors || !f->meta || !f->strings || !table_init(&f->table, n)) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for the header of %zu tensors",
                         path, n);
        goto out;
    }
    char *cur = f->strings;
    if (meta) {
        for (const cJSON *kv = meta->child; kv; kv = kv->next) {
            f->meta[2 * f->n_meta] = arena_put(&cur, kv->string ? kv->string : "");
            f->meta[2 * f->n_meta + 1] = arena_put(&cur, kv->valuestring);
            f->n_meta++;
        }
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it == meta) continue;
        vlm_st_tensor *t = &f->tensors[f->n];
        st = parse_tensor(path, it, data_size, t, err);
        if (st != VLM_OK) goto out;
        t->name = arena_put(&cur, it->string);
        t->file = f->path;
        f->n++;
    }
    qsort(f->tensors, f->n, sizeof *f->tensors, cmp_offset);
    for (size_t i = 0; i < f->n; i++) {
        vlm_st_tensor *t = &f->tensors[i];
        char nb[160], pb[160];
        if (i > 0 && t->offset < f->tensors[i - 1].offset + f->tensors[i - 1].nbytes) {
            st = vlm_err_set(
                err, VLM_ERR_FORMAT, "%s: tensor \"%s\": data [%llu, %llu) overlaps tensor \"%s\"",
                path, MSGNAME(t->name, nb), (unsigned long long)t->offset,
                (unsigned long long)(t->offset + t->nbytes), MSGNAME(f->tensors[i - 1].name, pb));
            goto out;
        }
        long dup = table_insert(&f->table, f->tensors, (uint32_t)i);
        if (dup >= 0) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\": name appears twice", path,
                             MSGNAME(t->name, nb));
            goto out;
        }
    }
    for (size_t i = 0; i < f->n; i++) {
        f->tensors[i].data = f->fd >= 0 ? NULL : f->base + 8 + hlen + f->tensors[i].offset;
        f->tensors[i].offset += 8 + hlen;
        f->tensors[i].fd = f->fd;
    }
out:
    cJSON_Delete(root);
    vlm_json_scope_end(&sc);
    return st;
}

static vlm_st_file *file_new(const char *path, vlm_err *err) {
    vlm_st_file *f = vlm_calloc(1, sizeof *f, VLM_MEM_OTHER);
    if (f) f->path = vlm_strdup(path, VLM_MEM_OTHER);
    if (!f || !f->path) {
        vlm_free(f);
        vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    f->fd = -1;
    return f;
}

vlm_status vlm_st_open_memory(const void *data, size_t len, const char *what, vlm_st_file **out,
                              vlm_err *err) {
    *out = NULL;
    vlm_st_file *f = file_new(what ? what : "<memory>", err);
    if (!f) return VLM_ERR_NOMEM;
    f->base = data;
    f->size = len;
    vlm_status st = parse_file(f, err);
    if (st != VLM_OK) {
        vlm_st_close(f);
        return st;
    }
    *out = f;
    return VLM_OK;
}

vlm_status vlm_st_open(const char *path, vlm_st_file **out, vlm_err *err) {
    *out = NULL;
    vlm_mapped_file map;
    vlm_status st = vlm_map_file(path, &map, err);
    if (st != VLM_OK) return st;
    vlm_st_file *f = file_new(path, err);
    if (!f) {
        vlm_unmap_file(&map);
        return VLM_ERR_NOMEM;
    }
    f->base = map.data;
    f->size = map.size;
    f->mapped = map.mapped;
    st = parse_file(f, err);
    if (st != VLM_OK) {
        vlm_st_close(f);
        return st;
    }
    *out = f;
    return VLM_OK;
}

/* pread exactly len bytes at off, or fail naming the file. */
static vlm_status read_at(int fd, const char *path, uint64_t off, void *buf, size_t len,
                          vlm_err *err) {
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t got = pread(fd, p, len, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return vlm_err_set(err, VLM_ERR_IO, "%s: read of %zu bytes at offset %llu failed: %s",
                               path, len, (unsigned long long)off,
                               got < 0 ? strerror(errno) : "unexpected end of file");
        p += got;
        off += (uint64_t)got;
        len -= (size_t)got;
    }
    return VLM_OK;
}

vlm_status vlm_st_open_unmapped(const char *path, vlm_st_file **out, vlm_err *err) {
    *out = NULL;
    int fd;
    uint64_t fsize;
    vlm_status st0 = vlm_file_open_regular(path, &fd, &fsize, err);
    if (st0 != VLM_OK) return st0;
    vlm_st_file *f = file_new(path, err);
    if (!f) {
        close(fd);
        return VLM_ERR_NOMEM;
    }
    f->fd = fd;
    f->size = fsize;
    /* The 8-byte length first; the JSON only when the length is one
     * parse_file accepts (it rejects the others before reading further). */
    uint8_t len8[8];
    size_t want = f->size < 8 ? (size_t)f->size : 8;
    vlm_status st = read_at(fd, path, 0, len8, want, err);
    if (st == VLM_OK && want == 8) {
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | len8[i];
        if (hlen >= 2 && hlen <= VLM_ST_MAX_HEADER && hlen <= f->size - 8) want = 8 + (size_t)hlen;
    }
    if (st == VLM_OK) {
        f->head = vlm_alloc(want ? want : 1, VLM_MEM_OTHER);
        if (!f->head)
            st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for a %zu-byte header", path,
                             want);
    }
    if (st == VLM_OK) st = read_at(fd, path, 0, f->head, want, err);
    if (st == VLM_OK) {
        f->base = f->head;
        st = parse_file(f, err);
    }
    if (st != VLM_OK) {
        vlm_st_close(f);
        return st;
    }
    *out = f;
    return VLM_OK;
}

vlm_status vlm_st_tensor_read(const vlm_st_tensor *t, uint64_t off, void *buf, size_t len,
                              vlm_err *err) {
    if (off > t->nbytes || len > t->nbytes - off)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "%s: tensor \"%s\": read of %zu bytes at %llu is outside its %llu bytes",
                           t->file, t->name, len, (unsigned long long)off,
                           (unsigned long long)t->nbytes);
    if (t->data) {
        memcpy(buf, (const uint8_t *)t->data + off, len);
        return VLM_OK;
    }
    vlm_status st = read_at(t->fd, t->file, t->offset + off, buf, len, err);
    if (st) vlm_err_prefix(err, "tensor \"%s\"", t->name);
    return st;
}

vlm_status vlm_st_tensor_map(const vlm_st_tensor *t, vlm_st_range *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    if (t->data || t->nbytes == 0) {
        out->data = t->data;
        return VLM_OK;
    }
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t page = pg > 0 ? (uint64_t)pg : 4096;
    uint64_t start = t->offset & ~(page - 1);
    uint64_t len = t->offset + t->nbytes - start;
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, t->fd, (off_t)start);
    if (p == MAP_FAILED) {
        int e = errno;
        return vlm_err_set(err, e == ENOMEM ? VLM_ERR_NOMEM : VLM_ERR_IO,
                           "%s: tensor \"%s\": mmap of %llu bytes failed: %s", t->file, t->name,
                           (unsigned long long)len, strerror(e));
    }
    vlm_alloc_note_mapped((int64_t)len);
    out->base = p;
    out->len = (size_t)len;
    out->data = (const uint8_t *)p + (t->offset - start);
    return VLM_OK;
}

void vlm_st_range_unmap(vlm_st_range *r) {
    if (r && r->base) {
        munmap(r->base, r->len);
        vlm_alloc_note_mapped(-(int64_t)r->len);
    }
    if (r) memset(r, 0, sizeof *r);
}

void vlm_st_tensor_drop_cache(const vlm_st_tensor *t) {
    if (!t->data && t->fd >= 0 && t->nbytes > 0)
        (void)posix_fadvise(t->fd, (off_t)t->offset, (off_t)t->nbytes, POSIX_FADV_DONTNEED);
}

void vlm_st_close(vlm_st_file *f) {
    if (!f) return;
    if (f->mapped) vlm_unmap_file(&(vlm_mapped_file){f->base, f->size, true});
    if (f->fd >= 0) close(f->fd);
    vlm_free(f->head);
    table_free(&f->table);
    vlm_free(f->tensors);
    vlm_free(f->meta);
    vlm_free(f->strings);
    vlm_free(f->path);
    vlm_free(f);
}

const char *vlm_st_path(const vlm_st_file *f) {
    return f->path;
}
uint64_t vlm_st_file_size(const vlm_st_file *f) {
    return f->size;
}
uint64_t vlm_st_header_size(const vlm_st_file *f) {
    return f->header_len;
}
size_t vlm_st_count(const vlm_st_file *f) {
    return f->n;
}
const vlm_st_tensor *vlm_st_at(const vlm_st_file *f, size_t i) {
    return i < f->n ? &f->tensors[i] : NULL;
}
const vlm_st_tensor *vlm_st_find(const vlm_st_file *f, const char *name) {
    long i = table_find(&f->table, f->tensors, name);
    return i >= 0 ? &f->tensors[i] : NULL;
}
size_t vlm_st_metadata_count(const vlm_st_file *f) {
    return f->n_meta;
}
void vlm_st_metadata_at(const vlm_st_file *f, size_t i, const char **key, const char **value) {
    *key = i < f->n_meta ? f->meta[2 * i] : NULL;
    *value = i < f->n_meta ? f->meta[2 * i + 1] : NULL;
}
const char *vlm_st_metadata_get(const vlm_st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

/* ============================================================================
 * Writing
 * ========================================================================== */

/* A growable string in accounted memory; `failed` sticks after a failed
 * allocation so callers check once at the end. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = vlm_realloc(b->p, cap, VLM_MEM_OTHER);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

static void sb_fmt(sbuf *b, const char *fmt, ...) VLM_PRINTF(2, 3);
static void sb_fmt(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal; UTF-8 passes through, control bytes are escaped. */
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            sb_put(b, e, 2);
        } else if (*p < 0x20) {
            sb_fmt(b, "\\u%04x", *p);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static vlm_status wtensor_check(const char *path, const vlm_st_wtensor *t, uint64_t *nbytes,
                                vlm_err *err) {
    char nb[160];
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0 ||
        !vlm_utf8_valid(t->name, strlen(t->name)))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: tensor \"%s\": invalid name", path,
                           t->name ? MSGNAME(t->name, nb) : "(null)");
    if (!is_st_dtype((int)t->dtype))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "%s: tensor \"%s\": dtype %d has no safetensors spelling", path,
                           MSGNAME(t->name, nb), (int)t->dtype);
    if (t->rank < 0 || t->rank > VLM_ST_MAX_RANK)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: tensor \"%s\": rank %d out of range",
                           path, MSGNAME(t->name, nb), t->rank);
    uint64_t n = 1;
    for (int k = 0; k < t->rank; k++) {
        if (t->shape[k] < 0 || (double)t->shape[k] > JSON_INT_MAX ||
            __builtin_mul_overflow(n, (uint64_t)t->shape[k], &n))
            return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                               "%s: tensor \"%s\": shape[%d] = %lld is invalid or overflows", path,
                               MSGNAME(t->name, nb), k, (long long)t->shape[k]);
    }
    if (!vlm_dtype_nbytes(t->dtype, n, nbytes))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: tensor \"%s\": size overflows", path,
                           MSGNAME(t->name, nb));
    return VLM_OK;
}

static vlm_status write_all(int fd, const char *path, const void *data, size_t len, vlm_err *err) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return vlm_err_set(err, VLM_ERR_IO, "%s: write failed: %s", path,
                               w < 0 ? strerror(errno) : "no progress");
        p += w;
        len -= (size_t)w;
    }
    return VLM_OK;
}

typedef struct layout_item {
    size_t index; /* into the caller's array */
    uint64_t nbytes;
    uint64_t begin; /* relative to the data area */
} layout_item;

/* Write the tensors t[sel[i]] to path. */
static vlm_status write_file(const char *path, const vlm_st_wtensor *t, const size_t *sel, size_t n,
                             const vlm_st_kv *meta, size_t n_meta, vlm_st_fill_fn fill, void *user,
                             vlm_err *err) {
    vlm_status st = VLM_OK;
    layout_item *lay = VLM_NEW_ARRAY(layout_item, n ? n : 1, VLM_MEM_OTHER);
    vlm_st_tensor *names = VLM_NEW_ARRAY(vlm_st_tensor, n ? n : 1, VLM_MEM_OTHER);
    name_table tab = {0};
    sbuf h = {0};
    char *buf = NULL, *tmp = NULL;
    int fd = -1;
    if (!lay || !names || !table_init(&tab, n)) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    /* Largest element size first (8, 4, 2, 1 bytes), stable within a size:
     * with the data area starting 8-aligned, every tensor is then aligned to
     * its element size, as the HF writer arranges it. */
    size_t m = 0;
    for (uint32_t es = 8; es >= 1; es /= 2) {
        for (size_t i = 0; i < n; i++) {
            const vlm_st_wtensor *w = &t[sel[i]];
            if (is_st_dtype((int)w->dtype) && vlm_dtype_get(w->dtype)->block_bytes != es) continue;
            if (!is_st_dtype((int)w->dtype) && es != 1) continue;
            st = wtensor_check(path, w, &lay[m].nbytes, err);
            if (st != VLM_OK) goto out;
            lay[m].index = sel[i];
            names[m].name = w->name;
            if (table_insert(&tab, names, (uint32_t)m) >= 0) {
                char nb[160];
                st = vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: tensor \"%s\": name given twice",
                                 path, MSGNAME(w->name, nb));
                goto out;
            }
            m++;
        }
    }
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        lay[i].begin = pos;
        pos += lay[i].nbytes;
    }

    sb_str(&h, "{");
    bool first = true;
    if (n_meta) {
        sb_str(&h, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json_str(&h, meta[i].key);
            sb_str(&h, ":");
            sb_json_str(&h, meta[i].value);
        }
        sb_str(&h, "}");
        first = false;
    }
    for (size_t i = 0; i < n; i++) {
        const vlm_st_wtensor *w = &t[lay[i].index];
        if (!first) sb_str(&h, ",");
        first = false;
        sb_json_str(&h, w->name);
        sb_fmt(&h, ":{\"dtype\":\"%s\",\"shape\":[", vlm_dtype_get(w->dtype)->name);
        for (int k = 0; k < w->rank; k++)
            sb_fmt(&h, "%s%lld", k ? "," : "", (long long)w->shape[k]);
        sb_fmt(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)lay[i].begin,
               (unsigned long long)(lay[i].begin + lay[i].nbytes));
    }
    sb_str(&h, "}");
    while (!h.failed && h.len % 8) sb_str(&h, " ");
    if (h.failed) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory building the header", path);
        goto out;
    }
    if (h.len > VLM_ST_MAX_HEADER) {
        st = vlm_err_set(err, VLM_ERR_LIMIT, "%s: header of %zu bytes is over the limit", path,
                         h.len);
        goto out;
    }

    size_t tl = strlen(path) + 32;
    tmp = vlm_alloc(tl, VLM_MEM_OTHER);
    const size_t chunk = (size_t)8 << 20; /* bytes per fill call */
    if (fill) buf = vlm_alloc(chunk, VLM_MEM_SCRATCH);
    if (!tmp || (fill && !buf)) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = vlm_err_set(err, VLM_ERR_IO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    st = write_all(fd, tmp, len8, 8, err);
    if (st == VLM_OK) st = write_all(fd, tmp, h.p, h.len, err);
    for (size_t i = 0; i < n && st == VLM_OK; i++) {
        const vlm_st_wtensor *w = &t[lay[i].index];
        if (w->data) {
            st = write_all(fd, tmp, w->data, (size_t)lay[i].nbytes, err);
            continue;
        }
        if (!fill) {
            char nb[160];
            st = vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: tensor \"%s\": no data and no fill",
                             path, MSGNAME(w->name, nb));
            break;
        }
        for (uint64_t o = 0; o < lay[i].nbytes && st == VLM_OK; o += chunk) {
            size_t len = lay[i].nbytes - o < chunk ? (size_t)(lay[i].nbytes - o) : chunk;
            st = fill(user, lay[i].index, o, buf, len, err);
            if (st == VLM_OK) st = write_all(fd, tmp, buf, len, err);
        }
    }
    if (close(fd) != 0 && st == VLM_OK)
        st = vlm_err_set(err, VLM_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    fd = -1;
    if (st == VLM_OK && rename(tmp, path) != 0)
        st = vlm_err_set(err, VLM_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (st != VLM_OK) unlink(tmp);
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    vlm_free(tmp);
    vlm_free(buf);
    vlm_free(h.p);
    table_free(&tab);
    vlm_free(names);
    vlm_free(lay);
    return st;
}

vlm_status vlm_st_write(const char *path, const vlm_st_wtensor *t, size_t n, const vlm_st_kv *meta,
                        size_t n_meta, vlm_st_fill_fn fill, void *user, vlm_err *err) {
    size_t *sel = VLM_NEW_ARRAY(size_t, n ? n : 1, VLM_MEM_OTHER);
    if (!sel) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) sel[i] = i;
    vlm_status st = write_file(path, t, sel, n, meta, n_meta, fill, user, err);
    vlm_free(sel);
    return st;
}

void vlm_st_plan_shards(vlm_st_wtensor *t, size_t n, uint64_t max_bytes, int *n_shards) {
    int shard = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb = 0;
        uint64_t ne = 1;
        for (int k = 0; k < t[i].rank; k++) ne *= (uint64_t)t[i].shape[k];
        if (is_st_dtype((int)t[i].dtype)) vlm_dtype_nbytes(t[i].dtype, ne, &nb);
        if (used > 0 && used + nb > max_bytes) {
            shard++;
            used = 0;
        }
        t[i].shard = shard;
        used += nb;
    }
    *n_shards = n ? shard + 1 : 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

vlm_status vlm_st_write_sharded(const char *dir, const vlm_st_wtensor *t, size_t n, int n_shards,
                                const vlm_st_kv *meta, size_t n_meta, vlm_st_fill_fn fill,
                                void *user, vlm_err *err) {
    if (n_shards < 1 || n_shards > 99999)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: %d shards is out of range", dir,
                           n_shards);
    for (size_t i = 0; i < n; i++)
        if (t[i].shard < 0 || t[i].shard >= n_shards)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                               "%s: tensor \"%s\": shard %d is out of range [0, %d)", dir,
                               t[i].name ? t[i].name : "(null)", t[i].shard, n_shards);
    size_t plen = strlen(dir) + 64;
    char *path = vlm_alloc(plen, VLM_MEM_OTHER);
    size_t *sel = VLM_NEW_ARRAY(size_t, n ? n : 1, VLM_MEM_OTHER);
    const char **order = VLM_NEW_ARRAY(const char *, 2 * (n ? n : 1), VLM_MEM_OTHER);
    sbuf ix = {0};
    vlm_status st = VLM_OK;
    if (!path || !sel || !order) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", dir);
        goto out;
    }
    if (n_shards == 1) {
        snprintf(path, plen, "%s/model.safetensors", dir);
        st = vlm_st_write(path, t, n, meta, n_meta, fill, user, err);
        goto out;
    }
    uint64_t total = 0;
    for (int s = 0; s < n_shards && st == VLM_OK; s++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (t[i].shard == s) sel[m++] = i;
        if (m == 0) {
            st = vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: shard %d would be empty", dir, s + 1);
            break;
        }
        snprintf(path, plen, "%s/model-%05d-of-%05d.safetensors", dir, s + 1, n_shards);
        st = write_file(path, t, sel, m, meta, n_meta, fill, user, err);
        for (size_t i = 0; i < m && st == VLM_OK; i++) {
            uint64_t nb = 0;
            wtensor_check(path, &t[sel[i]], &nb, NULL);
            total += nb;
        }
    }
    if (st != VLM_OK) goto out;
    /* The index as HF writes it: json.dumps(indent=2, sort_keys=True). */
    for (size_t i = 0; i < n; i++) order[i] = t[i].name;
    qsort(order, n, sizeof *order, cmp_str_ptr);
    sb_fmt(&ix, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n",
           (unsigned long long)total);
    for (size_t i = 0; i < n; i++) {
        /* Find the shard of order[i] (names are unique: write_file checked
         * within a shard; across shards, a repeat is caught here). */
        int s = -1;
        for (size_t j = 0; j < n; j++)
            if (t[j].name == order[i]) s = t[j].shard;
        if (i > 0 && strcmp(order[i], order[i - 1]) == 0) {
            st = vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: tensor \"%s\" is given twice", dir,
                             order[i]);
            goto out;
        }
        sb_str(&ix, "    ");
        sb_json_str(&ix, order[i]);
        sb_fmt(&ix, ": \"model-%05d-of-%05d.safetensors\"%s\n", s + 1, n_shards,
               i + 1 < n ? "," : "");
    }
    sb_str(&ix, "  }\n}\n");
    if (ix.failed) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory building the index", dir);
        goto out;
    }
    snprintf(path, plen, "%s/model.safetensors.index.json", dir);
    st = vlm_file_write_atomic(path, ix.p, ix.len, err);
out:
    vlm_free(ix.p);
    vlm_free(order);
    vlm_free(sel);
    vlm_free(path);
    return st;
}

/* ============================================================================
 * Sharded sets
 * ========================================================================== */

struct vlm_tensor_set {
    char *path;
    vlm_st_file **files;
    size_t n_files;
    vlm_st_tensor *all; /* [n] copies; names and data point into the files */
    size_t n;
    bool unmapped; /* files opened with vlm_st_open_unmapped */
    name_table table;
};

vlm_status vlm_st_index_parse(const char *text, size_t len, const char *what,
                              vlm_status (*each)(void *user, const char *name, const char *file,
                                                 vlm_err *err),
                              void *user, vlm_err *err) {
    cJSON *root = NULL;
    vlm_json_scope sc; /* the tree dies here: a few chunks, not 2 allocations per entry */
    vlm_json_scope_begin(&sc, ST_JSON_CHUNK);
    vlm_status st = vlm_json_parse(text, len, what, &root, err);
    if (st != VLM_OK) {
        vlm_json_scope_end(&sc);
        return st;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (!cJSON_IsObject(root)) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: not a JSON object", what);
    } else if (!cJSON_IsObject(wm)) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: missing or non-object \"weight_map\"", what);
    } else if (md && !cJSON_IsObject(md) && !cJSON_IsNull(md)) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"metadata\" is not an object", what);
    }
    for (const cJSON *it = st == VLM_OK ? wm->child : NULL; it && st == VLM_OK; it = it->next) {
        char nb[160];
        const char *name = it->string ? it->string : "";
        if (!cJSON_IsString(it)) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: weight_map \"%s\": value is not a string",
                             what, MSGNAME(name, nb));
            break;
        }
        const char *file = it->valuestring;
        if (!name[0] || !vlm_utf8_valid(name, strlen(name))) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: weight_map \"%s\": invalid tensor name",
                             what, MSGNAME(name, nb));
            break;
        }
        if (!file[0] || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0 ||
            !vlm_utf8_valid(file, strlen(file))) {
            char fb[160];
            st = vlm_err_set(err, VLM_ERR_FORMAT,
                             "%s: weight_map \"%s\": \"%s\" is not a plain file name", what,
                             MSGNAME(name, nb), MSGNAME(file, fb));
            break;
        }
        if (each) st = each(user, name, file, err);
    }
    cJSON_Delete(root);
    vlm_json_scope_end(&sc);
    return st;
}

/* The weight map while an index is being opened. */
typedef struct index_pairs {
    const char *what;
    char **names; /* [n] tensor names */
    int *file;    /* [n] index into files */
    size_t n, cap;
    char **files; /* distinct file names */
    size_t n_files;
} index_pairs;

static vlm_status pairs_add(void *user, const char *name, const char *file, vlm_err *err) {
    index_pairs *p = user;
    size_t fi = 0;
    while (fi < p->n_files && strcmp(p->files[fi], file) != 0) fi++;
    if (fi == p->n_files) {
        char **nf = vlm_realloc(p->files, (p->n_files + 1) * sizeof *nf, VLM_MEM_OTHER);
        if (!nf) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", p->what);
        p->files = nf;
        p->files[fi] = vlm_strdup(file, VLM_MEM_OTHER);
        if (!p->files[fi]) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", p->what);
        p->n_files++;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        char **nn = vlm_realloc(p->names, cap * sizeof *nn, VLM_MEM_OTHER);
        if (!nn) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", p->what);
        p->names = nn;
        int *nfi = vlm_realloc(p->file, cap * sizeof *nfi, VLM_MEM_OTHER);
        if (!nfi) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", p->what);
        p->file = nfi;
        p->cap = cap;
    }
    p->names[p->n] = vlm_strdup(name, VLM_MEM_OTHER);
    if (!p->names[p->n]) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", p->what);
    p->file[p->n] = (int)fi;
    p->n++;
    return VLM_OK;
}

static void pairs_free(index_pairs *p) {
    for (size_t i = 0; i < p->n; i++) vlm_free(p->names[i]);
    for (size_t i = 0; i < p->n_files; i++) vlm_free(p->files[i]);
    vlm_free(p->names);
    vlm_free(p->file);
    vlm_free(p->files);
}

/* Gather the tensors of every file into s->all with one name table. */
static vlm_status set_collect(vlm_tensor_set *s, vlm_err *err) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_files; i++) n += vlm_st_count(s->files[i]);
    s->all = VLM_NEW_ARRAY(vlm_st_tensor, n ? n : 1, VLM_MEM_OTHER);
    if (!s->all || !table_init(&s->table, n))
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", s->path);
    for (size_t i = 0; i < s->n_files; i++) {
        for (size_t j = 0; j < vlm_st_count(s->files[i]); j++) {
            s->all[s->n] = *vlm_st_at(s->files[i], j);
            long dup = table_insert(&s->table, s->all, (uint32_t)s->n);
            if (dup >= 0) {
                char nb[160];
                return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is also in %s",
                                   s->all[s->n].file, MSGNAME(s->all[s->n].name, nb),
                                   s->all[dup].file);
            }
            s->n++;
        }
    }
    return VLM_OK;
}

static vlm_status set_add_file(vlm_tensor_set *s, const char *path, vlm_err *err) {
    vlm_st_file **nf = vlm_realloc(s->files, (s->n_files + 1) * sizeof *nf, VLM_MEM_OTHER);
    if (!nf) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    s->files = nf;
    vlm_status st = s->unmapped ? vlm_st_open_unmapped(path, &s->files[s->n_files], err)
                                : vlm_st_open(path, &s->files[s->n_files], err);
    if (st == VLM_OK) s->n_files++;
    return st;
}

static vlm_status set_open_index(vlm_tensor_set *s, const char *index_path, vlm_err *err) {
    char *text = NULL;
    size_t len = 0;
    index_pairs p = {.what = index_path};
    char *dir = NULL, *fpath = NULL;
    bool *seen = NULL;
    vlm_status st =
        vlm_file_read_all(index_path, (size_t)256 << 20, VLM_MEM_OTHER, &text, &len, err);
    if (st != VLM_OK) return st;
    st = vlm_st_index_parse(text, len, index_path, pairs_add, &p, err);
    if (st != VLM_OK) goto out;
    if (p.n_files == 0) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: weight_map is empty", index_path);
        goto out;
    }
    dir = vlm_strdup(index_path, VLM_MEM_OTHER);
    if (!dir) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = '\0';
    else
        dir[0] = '\0';
    for (size_t i = 0; i < p.n_files && st == VLM_OK; i++) {
        size_t fl = strlen(dir) + strlen(p.files[i]) + 1;
        fpath = vlm_alloc(fl, VLM_MEM_OTHER);
        if (!fpath) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", index_path);
            break;
        }
        snprintf(fpath, fl, "%s%s", dir, p.files[i]);
        st = set_add_file(s, fpath, err);
        if (st == VLM_ERR_NOT_FOUND)
            vlm_err_prefix(err, "%s names a shard that is missing", index_path);
        vlm_free(fpath);
        fpath = NULL;
    }
    if (st != VLM_OK) goto out;
    st = set_collect(s, err);
    if (st != VLM_OK) goto out;
    /* The index and the shards must agree exactly. Files were opened in
     * the order of p.files, so file index i is s->files[i]. */
    seen = VLM_NEW_ARRAY(bool, s->n ? s->n : 1, VLM_MEM_OTHER);
    if (!seen) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    for (size_t i = 0; i < p.n; i++) {
        char nb[160];
        long j = table_find(&s->table, s->all, p.names[i]);
        const char *want = vlm_st_path(s->files[p.file[i]]);
        if (j < 0 || s->all[j].file != want) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is mapped to %s but %s",
                             index_path, MSGNAME(p.names[i], nb), p.files[p.file[i]],
                             j < 0 ? "no shard holds it" : "it is in another shard");
            goto out;
        }
        if (seen[j]) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is listed twice", index_path,
                             MSGNAME(p.names[i], nb));
            goto out;
        }
        seen[j] = true;
    }
    for (size_t j = 0; j < s->n; j++) {
        if (!seen[j]) {
            char nb[160];
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is in %s but not in the index",
                             index_path, MSGNAME(s->all[j].name, nb), s->all[j].file);
            goto out;
        }
    }
out:
    vlm_free(seen);
    vlm_free(dir);
    pairs_free(&p);
    vlm_free(text);
    return st;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Pick the tensor source inside a model folder; *out is accounted. */
static vlm_status folder_pick(const char *dir, char **out, vlm_err *err) {
    *out = NULL;
    size_t dl = strlen(dir) + 64;
    char *p = vlm_alloc(dl, VLM_MEM_OTHER);
    if (!p) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", dir);
    snprintf(p, dl, "%s/model.safetensors.index.json", dir);
    if (vlm_file_is_regular(p)) {
        *out = p;
        return VLM_OK;
    }
    snprintf(p, dl, "%s/model.safetensors", dir);
    if (vlm_file_is_regular(p)) {
        *out = p;
        return VLM_OK;
    }
    vlm_free(p);
    DIR *d = opendir(dir);
    if (!d) return vlm_err_set(err, VLM_ERR_IO, "%s: %s", dir, strerror(errno));
    char *found = NULL;
    int count = 0;
    vlm_status st = VLM_OK;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".safetensors")) continue;
        if (++count > 1) continue;
        size_t fl = strlen(dir) + strlen(e->d_name) + 2;
        found = vlm_alloc(fl, VLM_MEM_OTHER);
        if (!found) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", dir);
            break;
        }
        snprintf(found, fl, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (st == VLM_OK && count == 0)
        st = vlm_err_set(err, VLM_ERR_NOT_FOUND,
                         "%s: no model.safetensors.index.json, model.safetensors or other "
                         ".safetensors file",
                         dir);
    if (st == VLM_OK && count > 1)
        st = vlm_err_set(err, VLM_ERR_FORMAT,
                         "%s: %d .safetensors files but no model.safetensors.index.json to say "
                         "which belong to the model",
                         dir, count);
    if (st != VLM_OK) {
        vlm_free(found);
        return st;
    }
    *out = found;
    return VLM_OK;
}

static vlm_status set_open(const char *path, bool unmapped, vlm_tensor_set **out, vlm_err *err) {
    *out = NULL;
    vlm_tensor_set *s = vlm_calloc(1, sizeof *s, VLM_MEM_OTHER);
    if (s) s->path = vlm_strdup(path, VLM_MEM_OTHER);
    if (!s || !s->path) {
        vlm_free(s);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    }
    s->unmapped = unmapped;
    char *src = NULL;
    vlm_status st = VLM_OK;
    if (vlm_file_is_dir(path)) {
        st = folder_pick(path, &src, err);
    } else {
        src = vlm_strdup(path, VLM_MEM_OTHER);
        if (!src) st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    }
    if (st == VLM_OK) {
        if (ends_with(src, ".json")) {
            st = set_open_index(s, src, err);
        } else {
            st = set_add_file(s, src, err);
            if (st == VLM_OK) st = set_collect(s, err);
        }
    }
    vlm_free(src);
    if (st != VLM_OK) {
        vlm_tensor_set_close(s);
        return st;
    }
    *out = s;
    return VLM_OK;
}

vlm_status vlm_tensor_set_open(const char *path, vlm_tensor_set **out, vlm_err *err) {
    return set_open(path, false, out, err);
}

vlm_status vlm_tensor_set_open_unmapped(const char *path, vlm_tensor_set **out, vlm_err *err) {
    return set_open(path, true, out, err);
}

uint64_t vlm_tensor_set_mapped_bytes(const vlm_tensor_set *s) {
    uint64_t b = 0;
    for (size_t i = 0; i < s->n_files; i++)
        if (s->files[i]->mapped) b += s->files[i]->size;
    return b;
}

void vlm_tensor_set_close(vlm_tensor_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_files; i++) vlm_st_close(s->files[i]);
    vlm_free(s->files);
    vlm_free(s->all);
    table_free(&s->table);
    vlm_free(s->path);
    vlm_free(s);
}

size_t vlm_tensor_set_count(const vlm_tensor_set *s) {
    return s->n;
}
const vlm_st_tensor *vlm_tensor_set_at(const vlm_tensor_set *s, size_t i) {
    return i < s->n ? &s->all[i] : NULL;
}
const vlm_st_tensor *vlm_tensor_set_find(const vlm_tensor_set *s, const char *name) {
    long i = table_find(&s->table, s->all, name);
    return i >= 0 ? &s->all[i] : NULL;
}
size_t vlm_tensor_set_file_count(const vlm_tensor_set *s) {
    return s->n_files;
}
const vlm_st_file *vlm_tensor_set_file(const vlm_tensor_set *s, size_t i) {
    return i < s->n_files ? s->files[i] : NULL;
}
const char *vlm_tensor_set_path(const vlm_tensor_set *s) {
    return s->path;
}
