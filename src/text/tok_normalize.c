/* text/tok_normalize - HF normalizers: Sequence, Prepend, Replace, NFC,
 * NFD, NFKC, NFKD, Lowercase, Strip.
 *
 * Each output byte carries the original offset of the input it came from
 * (see tok_internal.h). Unicode normalisation uses utf8proc_decompose into
 * our own buffer (utf8proc_map would malloc). The text is cut before every
 * ASCII character: no composition or reordering crosses such a point, so
 * each cut normalises alone and its output inherits the offset of its first
 * input byte. */
#include <string.h>
#include <utf8proc.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

static vlm_status copy_range(const nbuf *in, size_t a, size_t b, nbuf *out, vlm_err *err) {
    if (b <= a) return VLM_OK;
    vlm_status st = nbuf_reserve(out, b - a, err);
    if (st != VLM_OK) return st;
    memcpy(out->s + out->len, in->s + a, b - a);
    memcpy(out->orig + out->len, in->orig + a, (b - a) * sizeof(int32_t));
    out->len += b - a;
    return VLM_OK;
}

static vlm_status norm_prepend(const tok_norm *n, const nbuf *in, nbuf *out, vlm_err *err) {
    vlm_status st;
    if (in->len > 0 && (st = nbuf_put(out, n->str, n->str_len, in->orig[0], err)) != VLM_OK)
        return st;
    return copy_range(in, 0, in->len, out, err);
}

static vlm_status norm_replace(const tok_norm *n, const nbuf *in, nbuf *out, vlm_err *err) {
    vlm_status st = VLM_OK;
    if (n->re) {
        mlist ml = {0};
        st = tok_regex_find_all(n->re, in->s, in->len, false, &ml, err);
        for (size_t i = 0; st == VLM_OK && i < ml.n; i++) {
            const tok_match *m = &ml.v[i];
            if (!m->m)
                st = copy_range(in, m->s, m->e, out, err);
            else {
                int32_t o = m->s < in->len ? in->orig[m->s] : (in->len ? in->orig[in->len - 1] : 0);
                st = nbuf_put(out, n->content, n->content_len, o, err);
            }
        }
        vlm_free(ml.v);
        return st;
    }
    size_t i = 0;
    if (n->str_len > 0) {
        while (i < in->len) {
            const char *hit = memmem(in->s + i, in->len - i, n->str, n->str_len);
            if (!hit) break;
            size_t at = (size_t)(hit - in->s);
            if ((st = copy_range(in, i, at, out, err)) != VLM_OK) return st;
            if ((st = nbuf_put(out, n->content, n->content_len, in->orig[at], err)) != VLM_OK)
                return st;
            i = at + n->str_len;
        }
    }
    return copy_range(in, i, in->len, out, err);
}

static vlm_status norm_unicode(const tok_norm *n, const nbuf *in, nbuf *out, vlm_err *err) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    switch (n->kind) {
    case NORM_NFC:
        opt |= UTF8PROC_COMPOSE;
        break;
    case NORM_NFD:
        opt |= UTF8PROC_DECOMPOSE;
        break;
    case NORM_NFKC:
        opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        break;
    default:
        opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        break;
    }
    utf8proc_int32_t *buf = NULL;
    size_t buf_cap = 0;
    vlm_status st = VLM_OK;
    size_t i = 0;
    while (i < in->len && st == VLM_OK) {
        if ((unsigned char)in->s[i] < 0x80 &&
            (i + 1 == in->len || (unsigned char)in->s[i + 1] < 0x80)) {
            st = copy_range(in, i, i + 1, out, err); /* ASCII not followed by a mark */
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < in->len && (unsigned char)in->s[j] >= 0x80) j++;
        /* [i, j): one cut. Decompose (and reorder), then compose. */
        size_t want = (j - i) * 4 + 16;
        for (;;) {
            if (want > buf_cap) {
                utf8proc_int32_t *nb = vlm_realloc(buf, want * sizeof *buf, VLM_MEM_SCRATCH);
                if (!nb) {
                    st = vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (normalizer)");
                    break;
                }
                buf = nb;
                buf_cap = want;
            }
            utf8proc_ssize_t r =
                utf8proc_decompose((const utf8proc_uint8_t *)in->s + i, (utf8proc_ssize_t)(j - i),
                                   buf, (utf8proc_ssize_t)buf_cap, opt);
            if (r < 0) {
                st = vlm_err_set(err, VLM_ERR_INTERNAL, "tokenizer: normalizer: %s",
                                 utf8proc_errmsg(r));
                break;
            }
            if ((size_t)r > buf_cap) {
                want = (size_t)r;
                continue;
            }
            r = utf8proc_normalize_utf32(buf, r, opt);
            if (r < 0) {
                st = vlm_err_set(err, VLM_ERR_INTERNAL, "tokenizer: normalizer: %s",
                                 utf8proc_errmsg(r));
                break;
            }
            /* Alignment: when the cut keeps its number of code points (most
             * text, e.g. "1" + U+FE0F + U+20E3), output k comes from input
             * code point k, as HF's aligned normalizers record it; otherwise
             * every output points at the start of the cut. */
            size_t n_in = 0;
            for (size_t a = i; a < j;) {
                uint32_t cp;
                a += tok_utf8_next(in->s + a, j - a, &cp);
                n_in++;
            }
            size_t a = i;
            for (utf8proc_ssize_t k = 0; k < r && st == VLM_OK; k++) {
                char u[4];
                size_t ul = tok_utf8_encode((uint32_t)buf[k], u);
                int32_t o = in->orig[i];
                if (n_in == (size_t)r) {
                    o = in->orig[a];
                    uint32_t cp;
                    a += tok_utf8_next(in->s + a, j - a, &cp);
                }
                st = nbuf_put(out, u, ul, o, err);
            }
            break;
        }
        i = j;
    }
    vlm_free(buf);
    return st;
}

static vlm_status norm_lower(const nbuf *in, nbuf *out, vlm_err *err) {
    vlm_status st = nbuf_reserve(out, in->len, err);
    for (size_t i = 0; i < in->len && st == VLM_OK;) {
        unsigned char c = (unsigned char)in->s[i];
        if (c < 0x80) {
            char l = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            st = nbuf_put(out, &l, 1, in->orig[i], err);
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = tok_utf8_next(in->s + i, in->len - i, &cp);
        char u[8];
        size_t ul;
        if (cp == 0x130) { /* the one multi-char lowercase mapping: i + U+0307 */
            memcpy(u, "i\xcc\x87", 3);
            ul = 3;
        } else
            ul = tok_utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), u);
        st = nbuf_put(out, u, ul, in->orig[i], err);
        i += n;
    }
    return st;
}

static vlm_status norm_strip(const tok_norm *n, const nbuf *in, nbuf *out, vlm_err *err) {
    size_t a = 0, b = in->len;
    if (n->left) {
        while (a < b) {
            uint32_t cp;
            size_t l = tok_utf8_next(in->s + a, b - a, &cp);
            if (!tok_is_whitespace(cp)) break;
            a += l;
        }
    }
    if (n->right) {
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)in->s[k] & 0xC0) == 0x80) k--;
            uint32_t cp;
            tok_utf8_next(in->s + k, b - k, &cp);
            if (!tok_is_whitespace(cp)) break;
            b = k;
        }
    }
    return copy_range(in, a, b, out, err);
}

vlm_status tok_normalize(const tok_norm *n, const nbuf *in, nbuf *out, vlm_err *err) {
    out->len = 0;
    switch (n->kind) {
    case NORM_PREPEND:
        return norm_prepend(n, in, out, err);
    case NORM_REPLACE:
        return norm_replace(n, in, out, err);
    case NORM_NFC:
    case NORM_NFD:
    case NORM_NFKC:
    case NORM_NFKD:
        return norm_unicode(n, in, out, err);
    case NORM_LOWERCASE:
        return norm_lower(in, out, err);
    case NORM_STRIP:
        return norm_strip(n, in, out, err);
    case NORM_SEQUENCE:
        break;
    }
    /* Sequence: ping-pong between two scratch buffers. */
    nbuf a = {0}, b = {0};
    vlm_status st = copy_range(in, 0, in->len, &a, err);
    for (size_t i = 0; i < n->n_sub && st == VLM_OK; i++) {
        st = tok_normalize(&n->sub[i], &a, &b, err);
        nbuf t = a;
        a = b;
        b = t;
    }
    if (st == VLM_OK) st = copy_range(&a, 0, a.len, out, err);
    nbuf_free(&a);
    nbuf_free(&b);
    return st;
}

void tok_norm_free(tok_norm *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n_sub; i++) tok_norm_free(&n->sub[i]);
    vlm_free(n->sub);
    vlm_free(n->str);
    vlm_free(n->content);
    tok_regex_free(n->re);
}
