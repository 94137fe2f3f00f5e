/* base/arena - see arena.h.
 *
 * Chunks form a singly linked list in the order they were made. `cur` is the
 * chunk pushes go to; every chunk after it is empty (used == 0), so rewinding
 * only has to clear the chunks after the mark's chunk, and trim can free them
 * without asking whether anything lives there. */
#include "base/arena.h"

#include <stdio.h>
#include <string.h>

#define ARENA_ALIGN VLM_ALLOC_ALIGN

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap;  /* bytes of data after the header */
    size_t used; /* bytes handed out from this chunk */
} arena_chunk;

/* The data starts one alignment unit after the chunk, which vlm_alloc
 * returns 64-byte aligned, so every push offset that is a multiple of 64 is
 * aligned too. */
#define CHUNK_HDR ((size_t)ARENA_ALIGN)
_Static_assert(sizeof(arena_chunk) <= CHUNK_HDR, "chunk header must fit in one unit");

struct vlm_arena {
    char name[32];
    vlm_mem_cat cat;
    bool fixed;
    size_t chunk_bytes; /* size of new chunks (growing mode) */
    arena_chunk *first;
    arena_chunk *cur;
    size_t used;     /* bytes handed out in all chunks */
    size_t high;     /* highest `used` */
    size_t capacity; /* data bytes over all chunks */
    size_t n_chunks;
};

static inline char *chunk_data(arena_chunk *c) {
    return (char *)c + CHUNK_HDR;
}

/* Round up to the alignment unit; false when that overflows. */
static bool round_up(size_t size, size_t *out) {
    if (size == 0) size = 1;
    if (size > SIZE_MAX - (ARENA_ALIGN - 1)) return false;
    *out = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    return true;
}

static arena_chunk *chunk_new(vlm_mem_cat cat, size_t cap) {
    size_t total;
    if (!vlm_size_add(cap, CHUNK_HDR, &total)) return NULL;
    arena_chunk *c = vlm_alloc(total, cat);
    if (!c) return NULL;
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    return c;
}

static vlm_status arena_create(vlm_arena **out, const char *name, vlm_mem_cat cat, size_t bytes,
                               bool fixed, vlm_err *err) {
    *out = NULL;
    const char *shown = name ? name : "arena";
    size_t cap = 0;
    if (bytes && !round_up(bytes, &cap))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "arena %s: size %zu is too large", shown,
                           bytes);
    vlm_arena *a = vlm_calloc(1, sizeof *a, cat);
    if (!a) return vlm_err_set(err, VLM_ERR_NOMEM, "arena %s: no memory for the arena", shown);
    snprintf(a->name, sizeof a->name, "%s", shown);
    a->cat = cat;
    a->fixed = fixed;
    a->chunk_bytes = cap;
    a->first = chunk_new(cat, cap);
    if (!a->first) {
        vlm_free(a);
        return vlm_err_set(err, VLM_ERR_NOMEM, "arena %s: no memory for a chunk of %zu bytes",
                           shown, cap);
    }
    a->cur = a->first;
    a->capacity = cap;
    a->n_chunks = 1;
    *out = a;
    return VLM_OK;
}

vlm_status vlm_arena_create(vlm_arena **out, const char *name, vlm_mem_cat cat, size_t chunk_bytes,
                            vlm_err *err) {
    return arena_create(out, name, cat, chunk_bytes ? chunk_bytes : VLM_ARENA_DEFAULT_CHUNK, false,
                        err);
}

vlm_status vlm_arena_create_fixed(vlm_arena **out, const char *name, vlm_mem_cat cat,
                                  size_t capacity, vlm_err *err) {
    return arena_create(out, name, cat, capacity, true, err);
}

void vlm_arena_destroy(vlm_arena *a) {
    if (!a) return;
    arena_chunk *c = a->first;
    while (c) {
        arena_chunk *next = c->next;
        vlm_free(c);
        c = next;
    }
    vlm_free(a);
}

void *vlm_arena_push(vlm_arena *a, size_t size) {
    size_t need;
    if (!a || !round_up(size, &need)) return NULL;
    arena_chunk *c = a->cur;
    if (c->cap - c->used < need) {
        if (a->fixed) return NULL;
        /* The chunks after cur are empty: take the first big enough one, or
         * make a new one right after cur. Skipped chunks stay empty. */
        arena_chunk *n = c->next;
        while (n && n->cap < need) n = n->next;
        if (!n) {
            n = chunk_new(a->cat, need > a->chunk_bytes ? need : a->chunk_bytes);
            if (!n) return NULL;
            n->next = c->next;
            c->next = n;
            a->capacity += n->cap;
            a->n_chunks++;
        }
        a->cur = c = n;
    }
    void *p = chunk_data(c) + c->used;
    c->used += need;
    a->used += need;
    if (a->used > a->high) a->high = a->used;
    return p;
}

void *vlm_arena_push_zero(vlm_arena *a, size_t size) {
    void *p = vlm_arena_push(a, size);
    if (p) memset(p, 0, size);
    return p;
}

void *vlm_arena_push_array(vlm_arena *a, size_t n, size_t elem_size) {
    size_t bytes;
    if (!vlm_size_mul(n, elem_size, &bytes)) return NULL;
    return vlm_arena_push(a, bytes);
}

void vlm_arena_reset(vlm_arena *a) {
    if (!a) return;
    for (arena_chunk *c = a->first; c; c = c->next) c->used = 0;
    a->cur = a->first;
    a->used = 0;
}

vlm_arena_mark vlm_arena_mark_get(const vlm_arena *a) {
    vlm_arena_mark m = {0};
    if (a) {
        m.chunk = a->cur;
        m.offset = a->cur->used;
        m.used = a->used;
    }
    return m;
}

void vlm_arena_rewind(vlm_arena *a, vlm_arena_mark m) {
    if (!a || !m.chunk) return;
    arena_chunk *c = m.chunk;
    for (arena_chunk *n = c->next; n; n = n->next) n->used = 0;
    c->used = m.offset;
    a->cur = c;
    a->used = m.used;
}

size_t vlm_arena_trim(vlm_arena *a) {
    if (!a) return 0;
    size_t freed = 0;
    arena_chunk *c = a->cur->next;
    a->cur->next = NULL;
    while (c) {
        arena_chunk *next = c->next;
        freed += c->cap + CHUNK_HDR;
        a->capacity -= c->cap;
        a->n_chunks--;
        vlm_free(c);
        c = next;
    }
    return freed;
}

size_t vlm_arena_trim_cb(void *arena) {
    return vlm_arena_trim(arena);
}

void vlm_arena_reset_high_water(vlm_arena *a) {
    if (a) a->high = a->used;
}

size_t vlm_arena_used(const vlm_arena *a) {
    return a ? a->used : 0;
}

size_t vlm_arena_high_water(const vlm_arena *a) {
    return a ? a->high : 0;
}

size_t vlm_arena_capacity(const vlm_arena *a) {
    return a ? a->capacity : 0;
}

size_t vlm_arena_chunk_count(const vlm_arena *a) {
    return a ? a->n_chunks : 0;
}

bool vlm_arena_is_fixed(const vlm_arena *a) {
    return a && a->fixed;
}

const char *vlm_arena_name(const vlm_arena *a) {
    return a ? a->name : "";
}
