/* text/tok_decode - ids back to text: HF decoders (Sequence, Replace,
 * ByteFallback, Fuse, Strip, ByteLevel, Metaspace) over the list of token
 * strings, then joined; and the streaming detokenizer. */
#include <string.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

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

static vlm_status dec_step(const tok_dec *d, const tlist *in, tlist *o, tok_dec_ws *w,
                           vlm_err *err) {
    vlm_status st = VLM_OK;
    switch (d->kind) {
    case DEC_REPLACE: {
        mlist *mlp = &w->ml;
        if (w->md_re != d->re) {
            /* match data sized for this regex, kept for the next decode */
            tok_regex_match_data_free(w->md);
            w->md_re = NULL;
            if (!(w->md = tok_regex_match_data(d->re)))
                return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (regex)");
            w->md_re = d->re;
        }
        for (size_t i = 0; i < in->n && st == VLM_OK; i++) {
            const char *s = tl_at(in, i);
            if ((st = tok_regex_find_all_md(d->re, w->md, s, in->tl[i], false, mlp, err)) != VLM_OK)
                break;
            if ((st = tl_begin(o, err)) != VLM_OK) break;
            for (size_t k = 0; k < mlp->n && st == VLM_OK; k++) {
                if (mlp->v[k].m)
                    st = tl_bytes(o, d->content, d->content_len, err);
                else
                    st = tl_bytes(o, s + mlp->v[k].s, mlp->v[k].e - mlp->v[k].s, err);
            }
            tl_end(o);
        }
        return st;
    }
    case DEC_BYTE_FALLBACK: {
        size_t np = 0;
        if ((st = tok_dec_ws_reserve(w, in->n, err)) != VLM_OK) return st;
        char *pend = w->pend;
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
        tlist raw = w->raw;
        raw.len = raw.n = 0;
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
        w->raw = raw; /* its buffer is kept for the next decode */
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

static vlm_status run_chain(const tok_dec *d, tlist *a, tlist *b, tok_dec_ws *w, vlm_err *err) {
    if (d->kind != DEC_SEQUENCE) {
        b->len = b->n = 0;
        vlm_status st = dec_step(d, a, b, w, err);
        if (st != VLM_OK) return st;
        tlist t = *a;
        *a = *b;
        *b = t;
        return VLM_OK;
    }
    for (size_t i = 0; i < d->n_sub; i++) {
        vlm_status st = run_chain(&d->sub[i], a, b, w, err);
        if (st != VLM_OK) return st;
    }
    return VLM_OK;
}

void tok_dec_ws_free(tok_dec_ws *w) {
    if (!w) return;
    tl_free(&w->a);
    tl_free(&w->b);
    tl_free(&w->raw);
    vlm_free(w->ml.v);
    vlm_free(w->pend);
    vlm_free(w->toks);
    vlm_free(w->lens);
    tok_regex_match_data_free(w->md);
    memset(w, 0, sizeof *w);
}

/* The decoder chain on token strings, in w's lists: a and b trade places at
 * every step; the joined text ends in w->b (NUL-terminated). */
static vlm_status run_decoder_ws(const tokenizer *t, const char **toks, const size_t *lens,
                                 size_t n, tok_dec_ws *w, const char **out, size_t *out_len,
                                 vlm_err *err) {
    tlist *a = &w->a, *b = &w->b;
    a->len = a->n = 0;
    vlm_status st = VLM_OK;
    for (size_t i = 0; i < n && st == VLM_OK; i++) st = tl_push(a, toks[i], lens[i], err);
    if (st == VLM_OK && t->dec) st = run_chain(t->dec, a, b, w, err);
    /* join: "" after a decoder, " " without one (HF) */
    b->len = b->n = 0;
    for (size_t i = 0; i < a->n && st == VLM_OK; i++) {
        if (!t->dec && i > 0) st = tl_bytes(b, " ", 1, err);
        if (st == VLM_OK) st = tl_bytes(b, tl_at(a, i), a->tl[i], err);
    }
    if (st == VLM_OK) st = tl_bytes(b, "", 1, err);
    if (st != VLM_OK) return st;
    *out = b->buf;
    *out_len = b->len - 1;
    return VLM_OK;
}

vlm_status tok_dec_ws_reserve(tok_dec_ws *w, size_t n, vlm_err *err) {
    if (n > w->tok_cap) {
        const char **tk = vlm_realloc(w->toks, n * sizeof *tk, VLM_MEM_SCRATCH);
        if (!tk) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        w->toks = tk;
        size_t *ln = vlm_realloc(w->lens, n * sizeof *ln, VLM_MEM_SCRATCH);
        if (!ln) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        w->lens = ln;
        w->tok_cap = n;
    }
    if (n > w->pend_cap) {
        char *q = vlm_realloc(w->pend, n, VLM_MEM_SCRATCH);
        if (!q) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        w->pend = q;
        w->pend_cap = n;
    }
    return VLM_OK;
}

vlm_status tok_decode_ws(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                         tok_dec_ws *w, const char **out, size_t *out_len, vlm_err *err) {
    *out = "";
    *out_len = 0;
    vlm_status st = tok_dec_ws_reserve(w, n, err);
    if (st != VLM_OK) return st;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = tokenizer_id_to_token(t, ids[i], &len);
        if (!s) continue; /* unknown id: skipped, as HF does */
        if (skip_special && tokenizer_is_special(t, ids[i])) continue;
        w->toks[k] = s;
        w->lens[k] = len;
        k++;
    }
    return run_decoder_ws(t, w->toks, w->lens, k, w, out, out_len, err);
}

vlm_status tok_run_decoder(const tokenizer *t, const char **toks, const size_t *lens, size_t n,
                           char **out, size_t *out_len, vlm_err *err) {
    *out = NULL;
    *out_len = 0;
    tok_dec_ws w;
    memset(&w, 0, sizeof w);
    const char *s;
    size_t sl;
    vlm_status st = run_decoder_ws(t, toks, lens, n, &w, &s, &sl, err);
    if (st == VLM_OK) {
        /* hand over the joined buffer itself */
        *out = w.b.buf;
        *out_len = sl;
        w.b.buf = NULL;
    }
    tok_dec_ws_free(&w);
    return st;
}

vlm_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                            char **out, size_t *out_len, vlm_err *err) {
    *out = NULL;
    *out_len = 0;
    tok_dec_ws w;
    memset(&w, 0, sizeof w);
    const char *s;
    size_t sl;
    vlm_status st = tok_decode_ws(t, ids, n, skip_special, &w, &s, &sl, err);
    if (st == VLM_OK) {
        if (w.b.buf) {
            *out = w.b.buf; /* the joined text, NUL-terminated */
            w.b.buf = NULL;
        } else if (!(*out = vlm_strdup("", VLM_MEM_SCRATCH))) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (decode)");
        }
        *out_len = *out ? sl : 0;
    }
    tok_dec_ws_free(&w);
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
    tok_dec_ws_free(s->ws);
    vlm_free(s->ws);
    vlm_free(s->piece);
    tok_stream_init(s, s->t, s->skip_special);
}

/* Copy n bytes (and a NUL) into *buf, growing it (capacity *cap) only when
 * it is too small. */
static vlm_status keep_bytes(char **buf, size_t *cap, const char *src, size_t n, vlm_err *err) {
    if (n + 1 > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < n + 1) c *= 2;
        char *q = vlm_realloc(*buf, c, VLM_MEM_SCRATCH);
        if (!q) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (stream)");
        *buf = q;
        *cap = c;
    }
    memmove(*buf, src, n);
    (*buf)[n] = '\0';
    return VLM_OK;
}

static vlm_status stream_decode(tok_stream *s, const char **str, size_t *sl, vlm_err *err) {
    if (!s->ws) {
        s->ws = vlm_calloc(1, sizeof *s->ws, VLM_MEM_SCRATCH);
        if (!s->ws) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (stream)");
        /* the window never holds more than the released context and the
         * held-back ids: room for both now, so later steps do not grow it */
        vlm_status st = tok_dec_ws_reserve(s->ws, 4 * TOK_STREAM_MAX_PENDING, err);
        if (st != VLM_OK) return st;
    }
    return tok_decode_ws(s->t, s->ids.v, s->ids.n, s->skip_special, s->ws, str, sl, err);
}

/* HF DecodeStream::step: decode the window; if it grew past the previous
 * decode (the prefix) and does not end in U+FFFD, release the difference
 * and slide the window so that the released ids stay as one piece of
 * context (a Metaspace/Strip decoder treats the first token specially). */
vlm_status tok_stream_step(tok_stream *s, int32_t id, const char **text, size_t *len,
                           vlm_err *err) {
    *text = NULL;
    *len = 0;
    vlm_status st = tok_ids_push(&s->ids, id, err);
    if (st != VLM_OK) return st;
    const char *str;
    size_t sl;
    if ((st = stream_decode(s, &str, &sl, err)) != VLM_OK) return st;
    /* A UTF-8 character spans at most 4 byte tokens: a longer run that still
     * ends in U+FFFD is invalid text (or a real U+FFFD), released anyway so
     * the window stays bounded. */
    bool ends_bad = sl >= 3 && memcmp(str + sl - 3, FFFD, 3) == 0 &&
                    s->ids.n - s->prefix_index <= TOK_STREAM_MAX_PENDING;
    if (sl <= s->prefix_len || ends_bad) return VLM_OK;
    if (s->prefix_len && memcmp(str, s->prefix, s->prefix_len) != 0) {
        /* The context decoded differently once more ids came (HF reports
         * InvalidPrefix). We release what follows the common prefix. */
        size_t c = 0;
        while (c < s->prefix_len && str[c] == s->prefix[c]) c++;
        s->prefix_len = c;
    }
    size_t nl = sl - s->prefix_len;
    if ((st = keep_bytes(&s->piece, &s->piece_cap, str + s->prefix_len, nl, err)) != VLM_OK)
        return st;
    /* slide: keep the ids from prefix_index on as context; the new prefix
     * is their decode */
    size_t new_prefix_index = s->ids.n - s->prefix_index;
    size_t drop = s->prefix_index;
    memmove(s->ids.v, s->ids.v + drop, (s->ids.n - drop) * sizeof(int32_t));
    s->ids.n -= drop;
    const char *pre;
    size_t pl;
    if ((st = stream_decode(s, &pre, &pl, err)) != VLM_OK) return st;
    if ((st = keep_bytes(&s->prefix, &s->prefix_cap, pre, pl, err)) != VLM_OK) {
        s->prefix_len = 0;
        return st;
    }
    s->prefix_len = pl;
    s->prefix_index = new_prefix_index;
    *text = s->piece;
    *len = nl;
    return VLM_OK;
}

vlm_status tok_stream_flush(tok_stream *s, const char **text, size_t *len, vlm_err *err) {
    *text = NULL;
    *len = 0;
    const char *str;
    size_t sl;
    vlm_status st = stream_decode(s, &str, &sl, err);
    if (st != VLM_OK) return st;
    size_t c = 0;
    while (c < s->prefix_len && c < sl && str[c] == s->prefix[c]) c++;
    if ((st = keep_bytes(&s->piece, &s->piece_cap, str + c, sl - c, err)) != VLM_OK) return st;
    *text = s->piece;
    *len = sl - c;
    s->ids.n = 0;
    s->prefix_len = s->prefix_index = 0;
    return VLM_OK;
}
