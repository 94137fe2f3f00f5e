/* text/tokenizer - added-token matching and the encode pipeline.
 *
 * encode(text) follows HF TokenizerImpl::encode_single_sequence:
 *   1. split the raw text on added tokens whose normalized flag is false
 *      (leftmost-longest; lstrip/rstrip/single_word as AddedVocabulary);
 *   2. normalize each remaining segment, then split it on the added tokens
 *      whose normalized flag is true (matched on their normalized form);
 *   3. pre-tokenize each remaining piece, run the BPE model on each word;
 *   4. with add_special, wrap the ids by the post-processor's template.
 * Loading is in tok_load.c. */
#include <string.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

/* ---- added tokens: a byte trie, leftmost-longest ---- */

static vlm_status trie_node_new(tok_trie *t, unsigned char byte, int32_t *out, vlm_err *err) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        trie_node *nv = vlm_realloc(t->nodes, cap * sizeof *nv, VLM_MEM_OTHER);
        if (!nv)
            return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer.json: added_tokens: out of memory");
        t->nodes = nv;
        t->cap = cap;
    }
    t->nodes[t->n] = (trie_node){-1, -1, -1, byte};
    *out = (int32_t)t->n++;
    return VLM_OK;
}

vlm_status tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t tok, vlm_err *err) {
    vlm_status st;
    int32_t node;
    if (t->n == 0 && (st = trie_node_new(t, 0, &node, err)) != VLM_OK) return st;
    if (n == 0) return VLM_OK;
    t->first[(unsigned char)s[0] >> 3] |= (uint8_t)(1u << ((unsigned char)s[0] & 7));
    node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t c = t->nodes[node].first_child;
        while (c >= 0 && t->nodes[c].byte != b) c = t->nodes[c].next_sibling;
        if (c < 0) {
            if ((st = trie_node_new(t, b, &c, err)) != VLM_OK) return st;
            t->nodes[c].next_sibling = t->nodes[node].first_child;
            t->nodes[node].first_child = c;
        }
        node = c;
    }
    t->nodes[node].tok = tok;
    return VLM_OK;
}

/* Longest token starting at s[i]; returns its end (or 0) and sets *tok. */
static size_t trie_longest(const tok_trie *t, const char *s, size_t len, size_t i, int32_t *tok) {
    size_t best = 0;
    int32_t node = 0;
    for (size_t k = i; k < len; k++) {
        unsigned char b = (unsigned char)s[k];
        int32_t c = t->nodes[node].first_child;
        while (c >= 0 && t->nodes[c].byte != b) c = t->nodes[c].next_sibling;
        if (c < 0) break;
        node = c;
        if (t->nodes[node].tok >= 0) {
            best = k + 1;
            *tok = t->nodes[node].tok;
        }
    }
    return best;
}

static bool ends_with_word(const char *s, size_t n) {
    if (n == 0) return false;
    size_t k = n - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    uint32_t cp;
    tok_utf8_next(s + k, n - k, &cp);
    return tok_is_word(cp);
}

static bool starts_with_word(const char *s, size_t n) {
    if (n == 0) return false;
    uint32_t cp;
    tok_utf8_next(s, n, &cp);
    return tok_is_word(cp);
}

/* HF AddedVocabulary::find_matches: segments of s covering it, each either
 * an added token (tok >= 0) or text (tok == -1). Matching continues after
 * the matched token itself (an rstrip extension does not move the scan). */
typedef struct seg {
    size_t s, e;
    int32_t tok;
} seg;
typedef struct slist {
    seg *v;
    size_t n, cap;
} slist;

static vlm_status seg_push(slist *l, size_t s, size_t e, int32_t tok, vlm_err *err) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        seg *v = vlm_realloc(l->v, cap * sizeof *v, VLM_MEM_SCRATCH);
        if (!v) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (segments)");
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (seg){s, e, tok};
    return VLM_OK;
}

static vlm_status find_added(const tokenizer *t, const tok_trie *tr, const char *s, size_t len,
                             slist *out, vlm_err *err) {
    out->n = 0;
    size_t start_off = 0;
    vlm_status st = VLM_OK;
    if (tr->n > 0) {
        for (size_t i = 0; i < len && st == VLM_OK;) {
            unsigned char b0 = (unsigned char)s[i];
            int32_t tok = -1;
            size_t end =
                (tr->first[b0 >> 3] >> (b0 & 7)) & 1 ? trie_longest(tr, s, len, i, &tok) : 0;
            if (!end) {
                i++;
                continue;
            }
            const added_tok *at = &t->added[tok];
            size_t ms = i, me = end;
            i = end;
            if (at->single_word && ((ms > 0 && ends_with_word(s, ms)) ||
                                    (me < len && starts_with_word(s + me, len - me))))
                continue;
            if (at->lstrip) {
                size_t ns = ms;
                while (ns > 0) {
                    size_t k = ns - 1;
                    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
                    uint32_t cp;
                    tok_utf8_next(s + k, ns - k, &cp);
                    if (!tok_is_whitespace(cp)) break;
                    ns = k;
                }
                ms = ns > start_off ? ns : start_off;
            }
            if (at->rstrip) {
                while (me < len) {
                    uint32_t cp;
                    size_t n = tok_utf8_next(s + me, len - me, &cp);
                    if (!tok_is_whitespace(cp)) break;
                    me += n;
                }
            }
            if (start_off < ms) st = seg_push(out, start_off, ms, -1, err);
            if (st == VLM_OK) st = seg_push(out, ms, me, tok, err);
            start_off = me;
        }
    }
    if (st == VLM_OK && start_off < len) st = seg_push(out, start_off, len, -1, err);
    return st;
}

/* ---- lookups ---- */

int32_t tokenizer_token_to_id(const tokenizer *t, const char *s, size_t len) {
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->added[i].content, s, len) == 0)
            return t->added[i].id;
    return bpe_vocab_get(&t->bpe, s, len);
}

const char *tokenizer_id_to_token(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids) return NULL;
    if (t->added_by_id[id] >= 0) {
        const added_tok *a = &t->added[t->added_by_id[id]];
        *len = a->len;
        return a->content;
    }
    if (id >= t->bpe.n_ids || t->bpe.str_len[id] == UINT32_MAX) return NULL;
    *len = t->bpe.str_len[id];
    return t->bpe.pool + t->bpe.str_off[id];
}

int32_t tokenizer_vocab_size(const tokenizer *t) {
    return t->n_ids;
}

size_t tokenizer_max_token_len(const tokenizer *t) {
    size_t best = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        size_t len;
        if (tokenizer_id_to_token(t, id, &len) && len > best) best = len;
    }
    return best;
}

bool tokenizer_is_special(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && t->special[id];
}

/* ---- encode ---- */

/* Copy text into b, replacing invalid UTF-8 by U+FFFD; orig = input offset. */
static vlm_status sanitize(const char *text, size_t len, nbuf *b, vlm_err *err) {
    vlm_status st = nbuf_reserve(b, len, err);
    for (size_t i = 0; i < len && st == VLM_OK;) {
        size_t bad, k = tok_utf8_valid_char((const unsigned char *)text + i, len - i, &bad);
        if (k) {
            if (b->len + k > b->cap && (st = nbuf_reserve(b, k, err)) != VLM_OK) break;
            for (size_t j = 0; j < k; j++) {
                b->s[b->len] = text[i + j];
                b->orig[b->len++] = (int32_t)(i > INT32_MAX ? INT32_MAX : i);
            }
            i += k;
        } else {
            st = nbuf_put(b, "\xEF\xBF\xBD", 3, (int32_t)(i > INT32_MAX ? INT32_MAX : i), err);
            i += bad;
        }
    }
    return st;
}

typedef struct enc_ctx {
    nbuf seg, norm, a, b;
    plist pa, pb;
    slist sub;
} enc_ctx;

static vlm_status encode_text(const tokenizer *t, enc_ctx *c, const nbuf *raw, size_t s, size_t e,
                              tok_ids *out, vlm_err *err) {
    vlm_status st;
    c->seg.len = 0;
    if ((st = nbuf_reserve(&c->seg, e - s, err)) != VLM_OK) return st;
    memcpy(c->seg.s, raw->s + s, e - s);
    memcpy(c->seg.orig, raw->orig + s, (e - s) * sizeof(int32_t));
    c->seg.len = e - s;
    const nbuf *nt = &c->seg;
    if (t->norm) {
        if ((st = tok_normalize(t->norm, &c->seg, &c->norm, err)) != VLM_OK) return st;
        nt = &c->norm;
    }
    if ((st = find_added(t, &t->trie_norm, nt->s, nt->len, &c->sub, err)) != VLM_OK) return st;
    for (size_t i = 0; i < c->sub.n; i++) {
        const seg *g = &c->sub.v[i];
        if (g->tok >= 0) {
            if ((st = tok_ids_push(out, t->added[g->tok].id, err)) != VLM_OK) return st;
            continue;
        }
        if (g->e <= g->s) continue;
        /* the piece list starts as the whole sub-segment */
        c->a.len = 0;
        if ((st = nbuf_reserve(&c->a, g->e - g->s, err)) != VLM_OK) return st;
        memcpy(c->a.s, nt->s + g->s, g->e - g->s);
        memcpy(c->a.orig, nt->orig + g->s, (g->e - g->s) * sizeof(int32_t));
        c->a.len = g->e - g->s;
        c->pa.n = 0;
        if ((st = plist_push(&c->pa, 0, c->a.len, err)) != VLM_OK) return st;
        if (t->pre && (st = tok_pretokenize(t->pre, &c->a, &c->pa, &c->b, &c->pb, err)) != VLM_OK)
            return st;
        for (size_t k = 0; k < c->pa.n; k++) {
            const piece *p = &c->pa.v[k];
            if ((st = bpe_tokenize((bpe_model *)&t->bpe, c->a.s + p->off, p->len, out, err)) !=
                VLM_OK)
                return st;
        }
    }
    return VLM_OK;
}

vlm_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                            tok_ids *out, vlm_err *err) {
    nbuf raw = {0};
    slist segs = {0};
    enc_ctx c = {0};
    vlm_status st = sanitize(text, len, &raw, err);
    if (st == VLM_OK) st = find_added(t, &t->trie_raw, raw.s, raw.len, &segs, err);
    for (size_t i = 0; add_special && st == VLM_OK && i < t->n_post_pre; i++)
        st = tok_ids_push(out, t->post_pre[i], err);
    for (size_t i = 0; i < segs.n && st == VLM_OK; i++) {
        const seg *g = &segs.v[i];
        if (g->tok >= 0)
            st = tok_ids_push(out, t->added[g->tok].id, err);
        else if (g->e > g->s)
            st = encode_text(t, &c, &raw, g->s, g->e, out, err);
    }
    for (size_t i = 0; add_special && st == VLM_OK && i < t->n_post_post; i++)
        st = tok_ids_push(out, t->post_post[i], err);
    nbuf_free(&raw);
    vlm_free(segs.v);
    nbuf_free(&c.seg);
    nbuf_free(&c.norm);
    nbuf_free(&c.a);
    nbuf_free(&c.b);
    plist_free(&c.pa);
    plist_free(&c.pb);
    vlm_free(c.sub.v);
    return st;
}
