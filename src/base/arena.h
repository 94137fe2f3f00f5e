/* base/arena - bump allocators for memory that dies together.
 *
 * An arena hands out 64-byte aligned pieces of larger chunks that it takes
 * from the accounted allocator in one category (activations, scratch, ...).
 * Nothing is freed piece by piece: a step pushes what it needs, then the
 * arena is reset (or rewound to a mark) and the chunks are reused, so the
 * hot path makes no call to the allocator at all.
 *
 * Two modes:
 *   growing - chunks of chunk_bytes (or larger, for a big push) are added on
 *             demand; trim gives back the chunks beyond the first;
 *   fixed   - one chunk of exactly `capacity` bytes, made at creation; a push
 *             that does not fit returns NULL. The memory planner sizes these
 *             so that a plan's activations provably fit.
 *
 * An arena is used by one thread at a time (no locks). */
#ifndef VLM_BASE_ARENA_H
#define VLM_BASE_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/alloc.h"
#include "base/status.h"

typedef struct vlm_arena vlm_arena;

#define VLM_ARENA_DEFAULT_CHUNK ((size_t)1 << 20) /* 1 MiB */

/* A saved position: vlm_arena_rewind(a, m) forgets every push made after
 * vlm_arena_mark(a) returned m. Marks are plain values; a mark taken before a
 * reset (or trim) must not be used after it. */
typedef struct vlm_arena_mark {
    void *chunk;   /* the chunk that was current */
    size_t offset; /* bytes used in that chunk */
    size_t used;   /* bytes used in the whole arena */
} vlm_arena_mark;

/* Growing arena: the first chunk (chunk_bytes, rounded up to 64; 0 means
 * VLM_ARENA_DEFAULT_CHUNK) is taken now, so a failure shows at creation. `name` (copied, may be
 * NULL) appears in messages and reports. */
vlm_status vlm_arena_create(vlm_arena **out, const char *name, vlm_mem_cat cat, size_t chunk_bytes,
                            vlm_err *err);
/* Fixed arena of capacity bytes (rounded up to 64) that never grows. */
vlm_status vlm_arena_create_fixed(vlm_arena **out, const char *name, vlm_mem_cat cat,
                                  size_t capacity, vlm_err *err);
void vlm_arena_destroy(vlm_arena *a);

/* size bytes, 64-byte aligned, uninitialised; NULL when the arena is fixed
 * and full, when a new chunk cannot be allocated (real or injected failure),
 * or when size overflows. A size of 0 takes one 64-byte unit so every push
 * returns a distinct pointer. */
void *vlm_arena_push(vlm_arena *a, size_t size);
/* Same, zeroed. */
void *vlm_arena_push_zero(vlm_arena *a, size_t size);
/* n elements of elem_size bytes, overflow-checked, uninitialised. */
void *vlm_arena_push_array(vlm_arena *a, size_t n, size_t elem_size);

/* Forget every push; keep the chunks for reuse. */
void vlm_arena_reset(vlm_arena *a);
vlm_arena_mark vlm_arena_mark_get(const vlm_arena *a);
void vlm_arena_rewind(vlm_arena *a, vlm_arena_mark m);

/* Free the chunks that hold no live push: after a reset, every chunk but the
 * first. Returns the bytes given back to the accounted allocator. */
size_t vlm_arena_trim(vlm_arena *a);
/* The same with a void pointer, for cleanup registries (mem/monitor). */
size_t vlm_arena_trim_cb(void *arena);
/* Drop the high-water mark to the bytes in use now. */
void vlm_arena_reset_high_water(vlm_arena *a);

/* Bytes handed out now (each push rounded up to 64). */
size_t vlm_arena_used(const vlm_arena *a);
/* Highest vlm_arena_used since creation or the last high-water reset. */
size_t vlm_arena_high_water(const vlm_arena *a);
/* Bytes held in chunks (what the arena costs the allocator). */
size_t vlm_arena_capacity(const vlm_arena *a);
size_t vlm_arena_chunk_count(const vlm_arena *a);
bool vlm_arena_is_fixed(const vlm_arena *a);
const char *vlm_arena_name(const vlm_arena *a);

#endif
