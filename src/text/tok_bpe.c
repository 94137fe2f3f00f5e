/* text/tok_bpe - the BPE model: vocabulary, merge ranks, and the merge loop.
 *
 * A word becomes one symbol per character (or its <0xHH> byte tokens, or a
 * fused <unk>), then the adjacent pair with the lowest merge rank is merged
 * until no pair has a rank; ties go to the leftmost pair. Pairs wait in a
 * binary min-heap keyed (rank << 32 | position), so a word of n symbols
 * costs O(n log n); stale heap entries are recognised when popped (the pair
 * at that position no longer has that rank). This is HF's Word::merge_all.
 *
 * By far the most time of an encode is spent in bpe_merge_word; words seen
 * before come from a bounded direct-mapped cache instead. */
#include <string.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

#define CACHE_MAX_WORD 128 /* bytes; longer words are not cached */

uint64_t tok_hash(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h ^ (h >> 29);
}

int32_t bpe_vocab_get(const bpe_model *m, const char *s, size_t len) {
    if (!m->vtab) return -1;
    size_t i = (size_t)tok_hash(s, len) & m->vtab_mask;
    for (;;) {
        int32_t id = m->vtab[i];
        if (id < 0) return -1;
        if (m->str_len[id] == len && memcmp(m->pool + m->str_off[id], s, len) == 0) return id;
        i = (i + 1) & m->vtab_mask;
    }
}

/* splitmix64's finalizer: both ids reach every bit of the slot index */
static inline size_t merge_slot(uint64_t key, size_t mask) {
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebULL;
    key ^= key >> 31;
    return (size_t)key & mask;
}

static inline const merge_ent *merge_get(const bpe_model *m, int32_t a, int32_t b) {
    if (!m->mtab) return NULL;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = merge_slot(key, m->mtab_mask);
    for (;;) {
        const merge_ent *e = &m->mtab[i];
        if (e->key == key) return e;
        if (e->key == 0) return NULL;
        i = (i + 1) & m->mtab_mask;
    }
}

/* Insert or overwrite (a later duplicate of a pair wins, as in HF's map). */
void bpe_merge_put(bpe_model *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = merge_slot(key, m->mtab_mask);
    while (m->mtab[i].key != 0 && m->mtab[i].key != key) i = (i + 1) & m->mtab_mask;
    m->mtab[i].key = key;
    m->mtab[i].rank = rank;
    m->mtab[i].new_id = new_id;
}

/* ---- the merge loop ---- */

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len; /* bytes of input; 0 once merged into its left neighbour */
} sym;

typedef struct word {
    sym *s;
    size_t n, cap;
    uint64_t *heap;
    size_t hn, hcap;
    bool s_owned, h_owned; /* false while the arrays are the caller's stack buffers */
} word;

/* Double an array that starts on the stack and moves to the heap. */
static void *grow(void *p, size_t *cap, size_t elem, bool *owned) {
    size_t ncap = *cap * 2;
    void *q;
    if (*owned)
        q = vlm_realloc(p, ncap * elem, VLM_MEM_SCRATCH);
    else if ((q = vlm_alloc(ncap * elem, VLM_MEM_SCRATCH)) != NULL)
        memcpy(q, p, *cap * elem);
    if (!q) return NULL;
    *owned = true;
    *cap = ncap;
    return q;
}

static vlm_status word_add(word *w, int32_t id, uint32_t len, vlm_err *err) {
    if (w->n >= (size_t)INT32_MAX / 2)
        return vlm_err_set(err, VLM_ERR_LIMIT, "tokenizer: word too long for BPE");
    if (w->n == w->cap) {
        sym *s = grow(w->s, &w->cap, sizeof *s, &w->s_owned);
        if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (BPE word)");
        w->s = s;
    }
    sym *y = &w->s[w->n];
    y->id = id;
    y->len = len;
    y->prev = (int32_t)w->n - 1;
    y->next = (int32_t)w->n + 1;
    w->n++;
    return VLM_OK;
}

static void heap_push(word *w, uint64_t k) {
    size_t i = w->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (w->heap[p] <= k) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = k;
}

static uint64_t heap_pop(word *w) {
    uint64_t top = w->heap[0], k = w->heap[--w->hn];
    size_t i = 0, n = w->hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && w->heap[c + 1] < w->heap[c]) c++;
        if (k <= w->heap[c]) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = k;
    return top;
}

static vlm_status try_pair(const bpe_model *m, word *w, int32_t pos, vlm_err *err) {
    int32_t nx = w->s[pos].next;
    if (nx < 0 || (size_t)nx >= w->n) return VLM_OK;
    const merge_ent *e = merge_get(m, w->s[pos].id, w->s[nx].id);
    if (!e) return VLM_OK;
    if (w->hn == w->hcap) {
        uint64_t *h = grow(w->heap, &w->hcap, sizeof *h, &w->h_owned);
        if (!h) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (BPE heap)");
        w->heap = h;
    }
    heap_push(w, ((uint64_t)e->rank << 32) | (uint32_t)pos);
    return VLM_OK;
}

static vlm_status merge_all(const bpe_model *m, word *w, vlm_err *err) {
    vlm_status st;
    if (w->n) w->s[w->n - 1].next = -1;
    for (size_t i = 0; i + 1 < w->n; i++)
        if ((st = try_pair(m, w, (int32_t)i, err)) != VLM_OK) return st;
    while (w->hn) {
        uint64_t top = heap_pop(w);
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t pos = (int32_t)(uint32_t)top;
        sym *a = &w->s[pos];
        if (a->len == 0 || a->next < 0) continue;
        sym *b = &w->s[a->next];
        const merge_ent *e = merge_get(m, a->id, b->id);
        if (!e || e->rank != rank) continue; /* stale entry */
        a->id = e->new_id;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) w->s[b->next].prev = pos;
        if (a->prev >= 0 && (st = try_pair(m, w, a->prev, err)) != VLM_OK) return st;
        if ((st = try_pair(m, w, pos, err)) != VLM_OK) return st;
    }
    return VLM_OK;
}

/* Symbols of one character: the vocabulary entry, else its byte tokens,
 * else <unk> (fused with a pending one when fuse_unk). */
static vlm_status word_from_text(const bpe_model *m, word *w, const char *s, size_t len,
                                 vlm_err *err) {
    int32_t unk = -1;
    uint32_t unk_len = 0;
    bool affix = m->cont_prefix || m->eow_suffix;
    char tmp[512];
    vlm_status st;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = tok_utf8_next(s + i, len - i, &cp);
        bool first = i == 0, last = i + n == len;
        const char *key = s + i;
        size_t klen = n;
        int32_t id;
        if (!affix && cp < 0x80)
            id = m->ascii_id[cp];
        else {
            if (affix) {
                size_t pl = (!first && m->cont_prefix) ? m->cont_prefix_len : 0;
                size_t sl = (last && m->eow_suffix) ? m->eow_suffix_len : 0;
                if (pl + n + sl > sizeof tmp)
                    return vlm_err_set(err, VLM_ERR_LIMIT, "tokenizer: affix too long");
                if (pl) memcpy(tmp, m->cont_prefix, pl);
                memcpy(tmp + pl, s + i, n);
                if (sl) memcpy(tmp + pl + n, m->eow_suffix, sl);
                key = tmp;
                klen = pl + n + sl;
            }
            id = bpe_vocab_get(m, key, klen);
        }
        if (id >= 0) {
            if (unk >= 0) {
                if ((st = word_add(w, unk, unk_len, err)) != VLM_OK) return st;
                unk = -1;
            }
            if ((st = word_add(w, id, (uint32_t)n, err)) != VLM_OK) return st;
            i += n;
            continue;
        }
        if (m->byte_fallback) {
            bool all = true;
            for (size_t k = 0; k < klen; k++)
                if (m->byte_id[(unsigned char)key[k]] < 0) all = false;
            if (all) {
                /* HF pushes the bytes without flushing a pending <unk> */
                for (size_t k = 0; k < klen; k++)
                    if ((st = word_add(w, m->byte_id[(unsigned char)key[k]], 1, err)) != VLM_OK)
                        return st;
                i += n;
                continue;
            }
        }
        if (m->unk_id >= 0) {
            if (unk >= 0 && m->fuse_unk)
                unk_len += (uint32_t)n;
            else {
                if (unk >= 0 && (st = word_add(w, unk, unk_len, err)) != VLM_OK) return st;
                unk = m->unk_id;
                unk_len = (uint32_t)n;
            }
        } else if (m->unk_missing)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "tokenizer: model.unk_token is not in the vocabulary");
        i += n;
    }
    if (unk >= 0 && (st = word_add(w, unk, unk_len, err)) != VLM_OK) return st;
    return VLM_OK;
}

static vlm_status merge_word(const bpe_model *m, const char *s, size_t len, tok_ids *out,
                             vlm_err *err) {
    sym s_stack[64];
    uint64_t h_stack[128];
    word w = {s_stack, 0, 64, h_stack, 0, 128, false, false};
    vlm_status st = word_from_text(m, &w, s, len, err);
    if (st == VLM_OK) st = merge_all(m, &w, err);
    for (int32_t i = w.n ? 0 : -1; st == VLM_OK && i >= 0; i = w.s[i].next)
        st = tok_ids_push(out, w.s[i].id, err);
    if (w.s_owned) vlm_free(w.s);
    if (w.h_owned) vlm_free(w.heap);
    return st;
}

/* One word through the cache and the merge loop. */
static vlm_status tokenize_cached(bpe_model *m, const char *s, size_t len, tok_ids *out,
                                  vlm_err *err) {
    uint64_t h = 0;
    size_t slot = 0;
    bool cacheable = m->cache && len <= CACHE_MAX_WORD;
    if (cacheable) {
        h = tok_hash(s, len);
        slot = (size_t)h & (m->cache_slots - 1);
        pthread_mutex_lock(&m->cache_lock);
        cache_ent *e = m->cache[slot];
        if (e && e->hash == h && e->len == len && memcmp(e + 1, s, len) == 0) {
            const int32_t *ids = (const int32_t *)((const char *)(e + 1) + ((len + 3) & ~3u));
            vlm_status st = VLM_OK;
            for (uint32_t i = 0; i < e->n_ids && st == VLM_OK; i++)
                st = tok_ids_push(out, ids[i], err);
            pthread_mutex_unlock(&m->cache_lock);
            return st;
        }
        pthread_mutex_unlock(&m->cache_lock);
    }
    size_t first = out->n;
    vlm_status st = merge_word(m, s, len, out, err);
    if (st != VLM_OK || !cacheable) return st;
    size_t n_ids = out->n - first;
    size_t sz = sizeof(cache_ent) + ((len + 3) & ~(size_t)3) + n_ids * sizeof(int32_t);
    cache_ent *e = vlm_alloc(sz, VLM_MEM_OTHER);
    if (!e) return VLM_OK; /* not caching is not an error */
    e->hash = h;
    e->len = (uint32_t)len;
    e->n_ids = (uint32_t)n_ids;
    memcpy(e + 1, s, len);
    if (n_ids)
        memcpy((char *)(e + 1) + ((len + 3) & ~(size_t)3), out->v + first, n_ids * sizeof(int32_t));
    pthread_mutex_lock(&m->cache_lock);
    cache_ent *old = m->cache[slot];
    m->cache[slot] = e;
    pthread_mutex_unlock(&m->cache_lock);
    vlm_free(old);
    return VLM_OK;
}

#define META "\xe2\x96\x81" /* U+2581, SentencePiece's space */

/* Where no vocabulary token holds a "▁" right after another character, no
 * merge can join a symbol ending in that character to one starting with
 * "▁" (the joined string would have to be a token). Such a point splits the
 * word into parts that merge independently, with the same result as the
 * whole word; the parts are short (SentencePiece words) and cacheable. */
void bpe_check_meta_split(bpe_model *m) {
    m->meta_split = false;
    if (m->cont_prefix || m->eow_suffix || bpe_vocab_get(m, META, 3) < 0) return;
    for (int32_t id = 0; id < m->n_ids; id++) {
        if (m->str_len[id] == UINT32_MAX) continue;
        const char *t = m->pool + m->str_off[id];
        size_t n = m->str_len[id];
        for (size_t i = 1; i + 3 <= n; i++)
            if (memcmp(t + i, META, 3) == 0 && (i < 3 || memcmp(t + i - 3, META, 3) != 0)) return;
    }
    m->meta_split = true;
}

vlm_status bpe_tokenize(bpe_model *m, const char *s, size_t len, tok_ids *out, vlm_err *err) {
    if (len == 0) return VLM_OK;
    if (m->ignore_merges) {
        int32_t id = bpe_vocab_get(m, s, len);
        if (id >= 0) return tok_ids_push(out, id, err);
    }
    if (!m->meta_split) return tokenize_cached(m, s, len, out, err);
    size_t start = 0;
    for (size_t i = 1; i + 3 <= len; i++) {
        if ((unsigned char)s[i] != 0xe2 || memcmp(s + i, META, 3) != 0) continue;
        if (i >= 3 && memcmp(s + i - 3, META, 3) == 0) continue;
        vlm_status st = tokenize_cached(m, s + start, i - start, out, err);
        if (st != VLM_OK) return st;
        start = i;
    }
    return tokenize_cached(m, s + start, len - start, out, err);
}

void bpe_free(bpe_model *m) {
    if (m->cache) {
        for (size_t i = 0; i < m->cache_slots; i++) vlm_free(m->cache[i]);
        vlm_free(m->cache);
        pthread_mutex_destroy(&m->cache_lock);
    }
    vlm_free(m->pool);
    vlm_free(m->str_off);
    vlm_free(m->str_len);
    vlm_free(m->vtab);
    vlm_free(m->mtab);
    vlm_free(m->cont_prefix);
    vlm_free(m->eow_suffix);
    memset(m, 0, sizeof *m);
}
