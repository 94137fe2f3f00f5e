/* text/tok_decode - ids back to text: HF decoders (Sequence, Replace,
 * ByteFallback, Fuse, Strip, ByteLevel, Metaspace) over the list of token
 * strings, then joined; and the streaming detokenizer. */
#include <string.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

/* A list of strings in one buffer. */
typedef struct tlist {
    char *buf;
    size_t len, cap;
    size_t *off, *tl;
    size_t n, ncap;
} tlist;

/* String i of l (never a null pointer, even before the first byte arrives:
 * pointer arithmetic on NULL is undefined even with a zero offset). */
static const char *tl_at(const tlist *l, size_t i) {
    return l->buf ? l->buf + l->off[i] : "";
}

static vlm_status tl_bytes(tlist *l, const char *s, size_t n, vlm_err *err) {
    if (n == 0) return VLM_OK;
    if (l->len + n > l->cap) {
        size_t cap = l->cap ? l->cap : 256;
        while (cap < l->len + n) cap *= 2;
        char *b = vlm_realloc(l->buf, cap, VLM_MEM_SCRATCH);
        if (!b) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        l->buf = b;
        l->cap = cap;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return VLM_OK;
}

/* Start a new string (its bytes follow with tl_bytes). */
static vlm_status tl_begin(tlist *l, vlm_err *err) {
    if (l->n == l->ncap) {
        size_t cap = l->ncap ? l->ncap * 2 : 64;
        size_t *o = vlm_realloc(l->off, cap * sizeof *o, VLM_MEM_SCRATCH);
        if (!o) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        l->off = o;
        size_t *t = vlm_realloc(l->tl, cap * sizeof *t, VLM_MEM_SCRATCH);
        if (!t) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        l->tl = t;
        l->ncap = cap;
    }
    l->off[l->n] = l->len;
    l->tl[l->n] = 0;
    l->n++;
    return VLM_OK;
}

static void tl_end(tlist *l) {
    l->tl[l->n - 1] = l->len - l->off[l->n - 1];
}

static vlm_status tl_push(tlist *l, const char *s, size_t n, vlm_err *err) {
    vlm_status st = tl_begin(l, err);
    if (st == VLM_OK) st = tl_bytes(l, s, n, err);
    if (st == VLM_OK) tl_end(l);
    return st;
}

static void tl_free(tlist *l) {
    vlm_free(l->buf);
    vlm_free(l->off);
    vlm_free(l->tl);
    memset(l, 0, sizeof *l);
}

static const char FFFD[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Append bytes, replacing invalid UTF-8 as String::from_utf8_lossy does. */
static vlm_status lossy_bytes(tlist *l, const char *s, size_t n, vlm_err *err) {
    vlm_status st = VLM_OK;
    size_t i = 0, run = 0;
    while (i < n && st == VLM_OK) {
        size_t bad;
        size_t k = tok_utf8_valid_char((const unsigned char *)s + i, n - i, &bad);
        if (k) {
            i += k;
            continue;
        }
        st = tl_bytes(l, s + run, i - run, err);
        if (st == VLM_OK) st = tl_bytes(l, FFFD, 3, err);
        i += bad;
        run = i;
    }
    if (st == VLM_OK && n > run) st = tl_bytes(l, s + run, n - run, err);
    return st;
}

static bool utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t bad, k = tok_utf8_valid_char((const unsigned char *)s + i, n - i, &bad);
        if (!k) return false;
        i += k;
    }
    return true;
}

/* "<0xHH>" -> byte (Rust's u8::from_str_radix also takes a leading '+'). */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d;
        if (i == 3 && c == '+') continue;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    if (s[3] == '+' && s[4] == '+') return -1;
    return v;
}

static vlm_status flush_bytes(tlist *o, const char *b, size_t n, vlm_err *err) {
    vlm_status st = VLM_OK;
    if (!n) return VLM_OK;
    if (utf8_valid(b, n)) return tl_push(o, b, n, err);
    for (size_t i = 0; i < n && st == VLM_OK; i++) st = tl_push(o, FFFD, 3, err);
    return st;
}

static vlm_status dec_step(const tok_dec *d, const tlist *in, tlist *o, vlm_err *err) {
    vlm_status st = VLM_OK;
    switch (d->kind) {
    case DEC_REPLACE: {
        mlist ml = {0};
        for (size_t i = 0; i < in->n && st == VLM_OK; i++) {
            const char *s = tl_at(in, i);
            if ((st = tok_regex_find_all(d->re, s, in->tl[i], false, &ml, err)) != VLM_OK) break;
            if ((st = tl_begin(o, err)) != VLM_OK) break;
            for (size_t k = 0; k < ml.n && st == VLM_OK; k++) {
                if (ml.v[k].m)
                    st = tl_bytes(o, d->content, d->content_len, err);
                else
                    st = tl_bytes(o, s + ml.v[k].s, ml.v[k].e - ml.v[k].s, err);
            }
            tl_end(o);
        }
        vlm_free(ml.v);
        return st;
    }
    case DEC_BYTE_FALLBACK: {
        char *pend = NULL;
        size_t np = 0;
        if (in->n && !(pend = vlm_alloc(in->n, VLM_MEM_SCRATCH)))
            return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        for (size_t i = 0; i < in->n && st == VLM_OK; i++) {
            int b = byte_token(tl_at(in, i), in->tl[i]);
            if (b >= 0) {
                pend[np++] = (char)b;
                continue;
            }
            st = flush_bytes(o, pend, np, err);
            np = 0;
            if (st == VLM_OK) st = tl_push(o, tl_at(in, i), in->tl[i], err);
        }
        if (st == VLM_OK) st = flush_bytes(o, pend, np, err);
        vlm_free(pend);
        return st;
    }
    case DEC_FUSE:
        if ((st = tl_begin(o, err)) != VLM_OK) return st;
        for (size_t i = 0; i < in->n && st == VLM_OK; i++)
            st = tl_bytes(o, tl_at(in, i), in->tl[i], err);
        tl_end(o);
        return st;
    case DEC_STRIP:
        for (size_t i = 0; i < in->n && st == VLM_OK; i++) {
            const char *s = tl_at(in, i);
            size_t n = in->tl[i], a = 0, b = n;
            char c[4];
            size_t cl = tok_utf8_encode(d->ch, c);
            for (size_t k = 0; k < d->start && a + cl <= n && memcmp(s + a, c, cl) == 0; k++)
                a += cl;
            for (size_t k = 0; k < d->stop && b >= a + cl && memcmp(s + b - cl, c, cl) == 0; k++)
                b -= cl;
            st = tl_push(o, s + a, b - a, err);
        }
        return st;
    case DEC_BYTE_LEVEL: {
        tlist raw = {0};
        for (size_t i = 0; i < in->n && st == VLM_OK; i++) {
            const char *s = tl_at(in, i);
            size_t n = in->tl[i], at = raw.len;
            bool all = true;
            for (size_t k = 0; k < n && st == VLM_OK;) {
                uint32_t cp;
                size_t cl = tok_utf8_next(s + k, n - k, &cp);
                int b = tok_char_to_byte(cp);
                if (b < 0) {
                    all = false;
                    break;
                }
                char bb = (char)b;
                st = tl_bytes(&raw, &bb, 1, err);
                k += cl;
            }
            if (st == VLM_OK && !all) {
                raw.len = at; /* a char outside the map: the token's own bytes */
                st = tl_bytes(&raw, s, n, err);
            }
        }
        if (st == VLM_OK && (st = tl_begin(o, err)) == VLM_OK) {
            st = lossy_bytes(o, raw.buf, raw.len, err);
            tl_end(o);
        }
        tl_free(&raw);
        return st;
    }
    case DEC_METASPACE: {
        char rep[4];
        size_t rl = tok_utf8_encode(d->ch, rep);
        for (size_t i = 0; i < in->n && st == VLM_OK; i++) {
            const char *s = tl_at(in, i);
            size_t n = in->tl[i];
            if ((st = tl_begin(o, err)) != VLM_OK) break;
            for (size_t k = 0; k < n && st == VLM_OK;) {
                if (k + rl <= n && memcmp(s + k, rep, rl) == 0) {
                    if (!(i == 0 && d->scheme != PREPEND_NEVER)) st = tl_bytes(o, " ", 1, err);
                    k += rl;
                } else {
                    uint32_t cp;
                    size_t cl = tok_utf8_next(s + k, n - k, &cp);
                    st = tl_bytes(o, s + k, cl, err);
                    k += cl;
                }
            }
            tl_end(o);
        }
        return st;
    }
    case DEC_SEQUENCE:
        break;
    }
    return vlm_err_set(err, VLM_ERR_INTERNAL, "tokenizer: bad decoder kind");
}

static vlm_status run_chain(const tok_dec *d, tlist *a, tlist *b, vlm_err *err) {
    if (d->kind != DEC_SEQUENCE) {
        b->len = b->n = 0;
        vlm_status st = dec_step(d, a, b, err);
        if (st != VLM_OK) return st;
        tlist t = *a;
        *a = *b;
        *b = t;
        return VLM_OK;
    }
    for (size_t i = 0; i < d->n_sub; i++) {
        vlm_status st = run_chain(&d->sub[i], a, b, err);
        if (st != VLM_OK) return st;
    }
    return VLM_OK;
}

vlm_status tok_run_decoder(const tokenizer *t, const char **toks, const size_t *lens, size_t n,
                           char **out, size_t *out_len, vlm_err *err) {
    *out = NULL;
    *out_len = 0;
    tlist a = {0}, b = {0};
    vlm_status st = VLM_OK;
    for (size_t i = 0; i < n && st == VLM_OK; i++) st = tl_push(&a, toks[i], lens[i], err);
    if (st == VLM_OK && t->dec) st = run_chain(t->dec, &a, &b, err);
    /* join: "" after a decoder, " " without one (HF) */
    b.len = b.n = 0;
    for (size_t i = 0; i < a.n && st == VLM_OK; i++) {
        if (!t->dec && i > 0) st = tl_bytes(&b, " ", 1, err);
        if (st == VLM_OK) st = tl_bytes(&b, tl_at(&a, i), a.tl[i], err);
    }
    if (st == VLM_OK) st = tl_bytes(&b, "", 1, err);
    if (st == VLM_OK) {
        *out = b.buf;
        *out_len = b.len - 1;
        b.buf = NULL;
    }
    tl_free(&a);
    tl_free(&b);
    return st;
}

vlm_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                            char **out, size_t *out_len, vlm_err *err) {
    *out = NULL;
    *out_len = 0;
    const char **toks = NULL;
    size_t *lens = NULL;
    if (n) {
        toks = vlm_calloc(n, sizeof *toks, VLM_MEM_SCRATCH);
        lens = vlm_calloc(n, sizeof *lens, VLM_MEM_SCRATCH);
        if (!toks || !lens) {
            vlm_free(toks);
            vlm_free(lens);
            return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tokenizer_id_to_token(t, ids[i], &len);
        if (!s) continue; /* unknown id: skipped, as HF does */
        if (skip_special && tokenizer_is_special(t, ids[i])) continue;
        toks[k] = s;
        lens[k] = len;
        k++;
    }
    vlm_status st = tok_run_decoder(t, toks, lens, k, out, out_len, err);
    vlm_free(toks);
    vlm_free(lens);
    return st;
}

void tok_dec_free(tok_dec *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n_sub; i++) tok_dec_free(&d->sub[i]);
    vlm_free(d->sub);
    vlm_free(d->str);
    vlm_free(d->content);
    tok_regex_free(d->re);
}

/* ---- streaming ---- */

#define TOK_STREAM_MAX_PENDING 8 /* ids held back at most while text ends in U+FFFD */

void tok_stream_init(tok_stream *s, const tokenizer *t, bool skip_special) {
    memset(s, 0, sizeof *s);
    s->t = t;
    s->skip_special = skip_special;
}

void tok_stream_free(tok_stream *s) {
    tok_ids_free(&s->ids);
    vlm_free(s->prefix);
    s->prefix = NULL;
    s->prefix_len = s->prefix_index = 0;
}

/* HF DecodeStream::step: decode the window; if it grew past the previous
 * decode (the prefix) and does not end in U+FFFD, release the difference
 * and slide the window so that the released ids stay as one piece of
 * context (a Metaspace/Strip decoder treats the first token specially). */
vlm_status tok_stream_step(tok_stream *s, int32_t id, char **text, size_t *len, vlm_err *err) {
    *text = NULL;
    *len = 0;
    vlm_status st = tok_ids_push(&s->ids, id, err);
    if (st != VLM_OK) return st;
    char *str;
    size_t sl;
    st = tokenizer_decode(s->t, s->ids.v, s->ids.n, s->skip_special, &str, &sl, err);
    if (st != VLM_OK) return st;
    /* A UTF-8 character spans at most 4 byte tokens: a longer run that still
     * ends in U+FFFD is invalid text (or a real U+FFFD), released anyway so
     * the window stays bounded. */
    bool ends_bad = sl >= 3 && memcmp(str + sl - 3, FFFD, 3) == 0 &&
                    s->ids.n - s->prefix_index <= TOK_STREAM_MAX_PENDING;
    if (sl <= s->prefix_len || ends_bad) {
        vlm_free(str);
        return VLM_OK;
    }
    if (s->prefix_len && memcmp(str, s->prefix, s->prefix_len) != 0) {
        /* The context decoded differently once more ids came (HF reports
         * InvalidPrefix). We release what follows the common prefix. */
        size_t c = 0;
        while (c < s->prefix_len && str[c] == s->prefix[c]) c++;
        s->prefix_len = c;
    }
    size_t nl = sl - s->prefix_len;
    char *chunk = vlm_alloc(nl + 1, VLM_MEM_SCRATCH);
    if (!chunk) {
        vlm_free(str);
        return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (stream)");
    }
    memcpy(chunk, str + s->prefix_len, nl);
    chunk[nl] = 0;
    vlm_free(str);
    /* slide: keep the ids from prefix_index on as context; the new prefix
     * is their decode */
    size_t new_prefix_index = s->ids.n - s->prefix_index;
    size_t drop = s->prefix_index;
    memmove(s->ids.v, s->ids.v + drop, (s->ids.n - drop) * sizeof(int32_t));
    s->ids.n -= drop;
    char *pre;
    size_t pl;
    st = tokenizer_decode(s->t, s->ids.v, s->ids.n, s->skip_special, &pre, &pl, err);
    if (st != VLM_OK) {
        vlm_free(chunk);
        return st;
    }
    vlm_free(s->prefix);
    s->prefix = pre;
    s->prefix_len = pl;
    s->prefix_index = new_prefix_index;
    *text = chunk;
    *len = nl;
    return VLM_OK;
}

vlm_status tok_stream_flush(tok_stream *s, char **text, size_t *len, vlm_err *err) {
    *text = NULL;
    *len = 0;
    char *str;
    size_t sl;
    vlm_status st = tokenizer_decode(s->t, s->ids.v, s->ids.n, s->skip_special, &str, &sl, err);
    if (st != VLM_OK) return st;
    size_t c = 0;
    while (c < s->prefix_len && c < sl && str[c] == s->prefix[c]) c++;
    memmove(str, str + c, sl - c + 1);
    *text = str;
    *len = sl - c;
    const tokenizer *t = s->t;
    bool sk = s->skip_special;
    tok_stream_free(s);
    tok_stream_init(s, t, sk);
    return VLM_OK;
}
