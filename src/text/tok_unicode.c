/* text/tok_unicode - UTF-8 and character classes for the tokenizer, and the
 * small growable buffers its stages pass along. Categories come from
 * utf8proc; White_Space is listed here (utf8proc has no property for it). */
#include <string.h>
#include <utf8proc.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

size_t tok_utf8_next(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0 || n < 4) {
        if (n < 3) {
            *cp = u[0];
            return 1;
        }
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
          ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    return 4;
}

size_t tok_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode Table 3-7 (well-formed byte sequences). On an invalid sequence,
 * *bad is the length of its maximal subpart: the bytes that one U+FFFD
 * replaces under the "substitution of maximal subparts" practice, which is
 * what Rust's from_utf8_lossy and Python's errors="replace" implement. */
size_t tok_utf8_valid_char(const unsigned char *s, size_t n, size_t *bad) {
    unsigned char c = s[0];
    *bad = 1;
    if (c < 0x80) return 1;
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *bad = i;
            return 0;
        }
        unsigned char b = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) {
            *bad = i;
            return 0;
        }
    }
    return need;
}

bool tok_is_whitespace(uint32_t c) {
    if (c >= 0x09 && c <= 0x0D) return true;
    if (c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680) return true;
    if (c >= 0x2000 && c <= 0x200A) return true;
    return c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool tok_is_numeric(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

bool tok_is_word(uint32_t c) {
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    if (c == 0x200C || c == 0x200D) return true;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

bool tok_is_punct(uint32_t c) {
    if (c < 0x80)
        return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
               (c >= 0x7B && c <= 0x7E);
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        return true;
    default:
        return false;
    }
}

/* ---- buffers ---- */

vlm_status nbuf_reserve(nbuf *b, size_t extra, vlm_err *err) {
    size_t need;
    if (!vlm_size_add(b->len, extra, &need))
        return vlm_err_set(err, VLM_ERR_LIMIT, "tokenizer: text too long");
    if (need <= b->cap) return VLM_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 8) return vlm_err_set(err, VLM_ERR_LIMIT, "tokenizer: text too long");
        cap *= 2;
    }
    char *s = vlm_realloc(b->s, cap, VLM_MEM_SCRATCH);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (text buffer)");
    b->s = s;
    size_t ob;
    if (!vlm_size_mul(cap, sizeof(int32_t), &ob))
        return vlm_err_set(err, VLM_ERR_LIMIT, "tokenizer: text too long");
    int32_t *o = vlm_realloc(b->orig, ob, VLM_MEM_SCRATCH);
    if (!o) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (text buffer)");
    b->orig = o;
    b->cap = cap;
    return VLM_OK;
}

vlm_status nbuf_put(nbuf *b, const char *s, size_t n, int32_t orig, vlm_err *err) {
    vlm_status st = nbuf_reserve(b, n, err);
    if (st != VLM_OK) return st;
    memcpy(b->s + b->len, s, n);
    for (size_t i = 0; i < n; i++) b->orig[b->len + i] = orig;
    b->len += n;
    return VLM_OK;
}

void nbuf_free(nbuf *b) {
    vlm_free(b->s);
    vlm_free(b->orig);
    memset(b, 0, sizeof *b);
}

vlm_status plist_push(plist *l, size_t off, size_t len, vlm_err *err) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        piece *v = vlm_realloc(l->v, cap * sizeof *v, VLM_MEM_SCRATCH);
        if (!v) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (pieces)");
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n].off = off;
    l->v[l->n].len = len;
    l->n++;
    return VLM_OK;
}

void plist_free(plist *l) {
    vlm_free(l->v);
    memset(l, 0, sizeof *l);
}

vlm_status mlist_push(mlist *l, size_t s, size_t e, bool m, vlm_err *err) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        tok_match *v = vlm_realloc(l->v, cap * sizeof *v, VLM_MEM_SCRATCH);
        if (!v) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (matches)");
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n].s = s;
    l->v[l->n].e = e;
    l->v[l->n].m = m;
    l->n++;
    return VLM_OK;
}

vlm_status tok_ids_push(tok_ids *ids, int32_t id, vlm_err *err) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = vlm_realloc(ids->v, cap * sizeof *v, VLM_MEM_SCRATCH);
        if (!v) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (ids)");
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return VLM_OK;
}

void tok_ids_free(tok_ids *ids) {
    vlm_free(ids->v);
    memset(ids, 0, sizeof *ids);
}
