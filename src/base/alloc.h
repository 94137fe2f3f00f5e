/* base/alloc - the accounted allocator: every heap byte the engine holds.
 *
 * Each block is tagged with a category; current and peak bytes are kept per
 * category and in total with lock-free atomic counters, so the monitor, the
 * planner and the reports read one truth. Blocks are 64-byte aligned. Sizes
 * are overflow-checked. A failure returns NULL (never aborts).
 *
 * Fault injection: VLM_FAIL_ALLOC_AT=N fails exactly the N-th allocation
 * (1-based) of the process; VLM_FAIL_ALLOC_AT=N+ fails the N-th and every one
 * after it. vlm_alloc_fail_at() does the same from code. VLM_ALLOC_STATS=1
 * prints the allocation count at exit so a sweep knows how far to walk.
 *
 * Tracking (call sites of live blocks, for the leak report) is on in debug
 * builds and wherever VLM_ALLOC_TRACK=1. */
#ifndef VLM_BASE_ALLOC_H
#define VLM_BASE_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum vlm_mem_cat {
    VLM_MEM_WEIGHTS = 0,
    VLM_MEM_KV_CACHE,
    VLM_MEM_ACTIVATIONS,
    VLM_MEM_IMAGE,
    VLM_MEM_SCRATCH,
    VLM_MEM_OTHER,
    VLM_MEM_CAT_COUNT
} vlm_mem_cat;

#define VLM_ALLOC_ALIGN 64

typedef struct vlm_mem_stats {
    uint64_t current[VLM_MEM_CAT_COUNT]; /* bytes live now, per category */
    uint64_t peak[VLM_MEM_CAT_COUNT];    /* highest current since the last peak reset */
    uint64_t total_current;              /* sum of current over categories */
    uint64_t total_peak;                 /* highest total_current */
    uint64_t mapped_current;             /* bytes memory-mapped (not counted above) */
    uint64_t mapped_peak;
    uint64_t alloc_count;  /* allocation attempts so far (the fault-injection index) */
    uint64_t free_count;   /* blocks freed */
    uint64_t failed_count; /* attempts that returned NULL (real or injected) */
    uint64_t live_blocks;  /* blocks allocated and not yet freed */
} vlm_mem_stats;

void *vlm_alloc_(size_t size, vlm_mem_cat cat, const char *file, int line);
void *vlm_calloc_(size_t n, size_t size, vlm_mem_cat cat, const char *file, int line);
/* Like realloc: on failure the old block is untouched and NULL is returned.
 * The block keeps its category. p == NULL allocates in cat. */
void *vlm_realloc_(void *p, size_t size, vlm_mem_cat cat, const char *file, int line);
char *vlm_strdup_(const char *s, vlm_mem_cat cat, const char *file, int line);
char *vlm_strndup_(const char *s, size_t n, vlm_mem_cat cat, const char *file, int line);
void vlm_free(void *p);

#define vlm_alloc(size, cat)      vlm_alloc_((size), (cat), __FILE__, __LINE__)
#define vlm_calloc(n, size, cat)  vlm_calloc_((n), (size), (cat), __FILE__, __LINE__)
#define vlm_realloc(p, size, cat) vlm_realloc_((p), (size), (cat), __FILE__, __LINE__)
#define vlm_strdup(s, cat)        vlm_strdup_((s), (cat), __FILE__, __LINE__)
#define vlm_strndup(s, n, cat)    vlm_strndup_((s), (n), (cat), __FILE__, __LINE__)
/* Allocate an array of n elements of type T, overflow-checked, zeroed. */
#define VLM_NEW_ARRAY(T, n, cat) ((T *)vlm_calloc((n), sizeof(T), (cat)))

/* Size of the user part of a block from vlm_alloc (0 for NULL). */
size_t vlm_alloc_size(const void *p);

/* Multiply two sizes; false on overflow. */
static inline bool vlm_size_mul(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool vlm_size_add(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

const char *vlm_mem_cat_name(vlm_mem_cat cat);
/* Parse a category name ("weights", ...); -1 if unknown. */
int vlm_mem_cat_parse(const char *name);

void vlm_alloc_get_stats(vlm_mem_stats *out);
/* Start a new peak window: every peak becomes the current value. */
void vlm_alloc_reset_peaks(void);
/* Number of allocation attempts so far. */
uint64_t vlm_alloc_count(void);

/* Fail the n-th allocation attempt (counting from process start, 1-based);
 * with sticky, every attempt from the n-th on. n == 0 turns injection off. */
void vlm_alloc_fail_at(uint64_t n, bool sticky);

/* Memory-mapped bytes are counted separately: they are not resident until
 * touched, and the kernel can drop clean pages under pressure. */
void vlm_alloc_note_mapped(int64_t delta_bytes);

/* Host memory taken outside this allocator (the GPU runtime's pinned
 * buffers, backend/cuda) counted under cat: +bytes when taken, -bytes when
 * given back. Not subject to fault injection: the caller of such memory
 * falls back to ordinary memory when it is refused. */
void vlm_alloc_note_external(vlm_mem_cat cat, int64_t delta_bytes);

/* Call-site tracking for leak reports (default: on in debug builds or with
 * VLM_ALLOC_TRACK=1). Only blocks allocated while tracking is on are listed. */
void vlm_alloc_set_tracking(bool on);
bool vlm_alloc_tracking(void);

/* Write the live tracked blocks, grouped by category and call site, to f.
 * Returns the number of live tracked blocks. */
size_t vlm_alloc_leak_report(FILE *f);

#endif
