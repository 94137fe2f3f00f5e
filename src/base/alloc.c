/* base/alloc - see alloc.h.
 *
 * Every block carries a 64-byte header in front of the user bytes: size and
 * category (so vlm_free can account without a lookup), a magic value (to
 * catch frees of foreign pointers), and, when tracking, the call site and the
 * links of a list of live blocks for the leak report.
 *
 * Counters are lock-free atomics. Per-thread counters would avoid sharing a
 * cache line, but an exact peak needs the global total at the moment of each
 * allocation, and the engine allocates in large blocks, rarely: contention on
 * one counter per category is not a cost we can measure. The tracked list is
 * the only place with a mutex, and it is off in release builds. */
#include "base/alloc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_MAGIC 0x564c4d424c4f434bULL /* "VLMBLOCK" */
#define FREED_MAGIC 0x46524545424c4f43ULL /* "FREEBLOC" */

typedef struct block_hdr {
    uint64_t magic;
    uint64_t size;
    uint32_t cat;
    int32_t line;
    const char *file;
    struct block_hdr *prev, *next; /* live-list links; only when tracked */
    uint32_t tracked;
    uint32_t pad0;
} block_hdr;

_Static_assert(sizeof(block_hdr) <= VLM_ALLOC_ALIGN, "header must fit in one alignment unit");

static const char *const cat_names[VLM_MEM_CAT_COUNT] = {
    "weights", "kv_cache", "activations", "image", "scratch", "other",
};

static _Atomic uint64_t cur_bytes[VLM_MEM_CAT_COUNT];
static _Atomic uint64_t peak_bytes[VLM_MEM_CAT_COUNT];
static _Atomic uint64_t total_cur;
static _Atomic uint64_t total_peak;
static _Atomic int64_t mapped_cur;
static _Atomic int64_t mapped_peak;
static _Atomic uint64_t n_alloc;
static _Atomic uint64_t n_free;
static _Atomic uint64_t n_failed;
static _Atomic uint64_t fail_at; /* 0: off */
static _Atomic bool fail_sticky;
static _Atomic bool tracking;

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static block_hdr *live_head;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void print_stats_at_exit(void) {
    vlm_mem_stats s;
    vlm_alloc_get_stats(&s);
    fprintf(stderr,
            "vlmtest alloc stats: allocations=%llu frees=%llu failed=%llu live_blocks=%llu "
            "peak_bytes=%llu\n",
            (unsigned long long)s.alloc_count, (unsigned long long)s.free_count,
            (unsigned long long)s.failed_count, (unsigned long long)s.live_blocks,
            (unsigned long long)s.total_peak);
}

static void leak_report_at_exit(void) {
    if (!tracking) return;
    pthread_mutex_lock(&live_lock);
    bool any = live_head != NULL;
    pthread_mutex_unlock(&live_lock);
    if (any) {
        fprintf(stderr, "vlmtest: memory still held at exit:\n");
        vlm_alloc_leak_report(stderr);
    }
}

static void alloc_init(void) {
    const char *s = getenv("VLM_FAIL_ALLOC_AT");
    if (s && *s) {
        char *end = NULL;
        unsigned long long n = strtoull(s, &end, 10);
        if (end != s && n > 0) {
            atomic_store(&fail_sticky, *end == '+');
            atomic_store(&fail_at, (uint64_t)n);
        }
    }
    s = getenv("VLM_ALLOC_STATS");
    if (s && strcmp(s, "0") != 0 && *s) atexit(print_stats_at_exit);
    s = getenv("VLM_ALLOC_TRACK");
#ifdef NDEBUG
    bool track = false;
#else
    bool track = true;
#endif
    if (s && *s) track = strcmp(s, "0") != 0;
    atomic_store(&tracking, track);
    atexit(leak_report_at_exit);
}

static inline void ensure_init(void) {
    pthread_once(&init_once, alloc_init);
}

static void raise_peak(_Atomic uint64_t *peak, uint64_t value) {
    uint64_t p = atomic_load_explicit(peak, memory_order_relaxed);
    while (value > p && !atomic_compare_exchange_weak_explicit(
                            peak, &p, value, memory_order_relaxed, memory_order_relaxed)) {}
}

static void account_add(vlm_mem_cat cat, uint64_t size) {
    uint64_t c = atomic_fetch_add_explicit(&cur_bytes[cat], size, memory_order_relaxed) + size;
    raise_peak(&peak_bytes[cat], c);
    uint64_t t = atomic_fetch_add_explicit(&total_cur, size, memory_order_relaxed) + size;
    raise_peak(&total_peak, t);
}

static void account_sub(vlm_mem_cat cat, uint64_t size) {
    atomic_fetch_sub_explicit(&cur_bytes[cat], size, memory_order_relaxed);
    atomic_fetch_sub_explicit(&total_cur, size, memory_order_relaxed);
}

/* True if this attempt must fail by injection. Also counts the attempt. */
static bool next_attempt_fails(void) {
    uint64_t idx = atomic_fetch_add_explicit(&n_alloc, 1, memory_order_relaxed) + 1;
    uint64_t at = atomic_load_explicit(&fail_at, memory_order_relaxed);
    if (at == 0) return false;
    return idx == at || (idx > at && atomic_load_explicit(&fail_sticky, memory_order_relaxed));
}

static void live_insert(block_hdr *h) {
    pthread_mutex_lock(&live_lock);
    h->prev = NULL;
    h->next = live_head;
    if (live_head) live_head->prev = h;
    live_head = h;
    pthread_mutex_unlock(&live_lock);
}

static void live_remove(block_hdr *h) {
    pthread_mutex_lock(&live_lock);
    if (h->prev)
        h->prev->next = h->next;
    else
        live_head = h->next;
    if (h->next) h->next->prev = h->prev;
    pthread_mutex_unlock(&live_lock);
}

void *vlm_alloc_(size_t size, vlm_mem_cat cat, const char *file, int line) {
    ensure_init();
    if ((unsigned)cat >= VLM_MEM_CAT_COUNT) cat = VLM_MEM_OTHER;
    size_t total;
    if (next_attempt_fails() || !vlm_size_add(size, VLM_ALLOC_ALIGN, &total) ||
        size > (size_t)PTRDIFF_MAX - VLM_ALLOC_ALIGN) {
        atomic_fetch_add_explicit(&n_failed, 1, memory_order_relaxed);
        return NULL;
    }
    void *raw = NULL;
    if (posix_memalign(&raw, VLM_ALLOC_ALIGN, total) != 0 || !raw) {
        atomic_fetch_add_explicit(&n_failed, 1, memory_order_relaxed);
        return NULL;
    }
    block_hdr *h = raw;
    memset(h, 0, sizeof *h);
    h->magic = BLOCK_MAGIC;
    h->size = size;
    h->cat = (uint32_t)cat;
    h->file = file;
    h->line = line;
    if (atomic_load_explicit(&tracking, memory_order_relaxed)) {
        h->tracked = 1;
        live_insert(h);
    }
    account_add(cat, size);
    return (char *)raw + VLM_ALLOC_ALIGN;
}

void *vlm_calloc_(size_t n, size_t size, vlm_mem_cat cat, const char *file, int line) {
    size_t bytes;
    if (!vlm_size_mul(n, size, &bytes)) {
        ensure_init();
        atomic_fetch_add_explicit(&n_alloc, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&n_failed, 1, memory_order_relaxed);
        return NULL;
    }
    void *p = vlm_alloc_(bytes, cat, file, line);
    if (p) memset(p, 0, bytes);
    return p;
}

static block_hdr *hdr_of(const void *p) {
    return (block_hdr *)((char *)(uintptr_t)p - VLM_ALLOC_ALIGN);
}

size_t vlm_alloc_size(const void *p) {
    return p ? (size_t)hdr_of(p)->size : 0;
}

void *vlm_realloc_(void *p, size_t size, vlm_mem_cat cat, const char *file, int line) {
    if (!p) return vlm_alloc_(size, cat, file, line);
    block_hdr *h = hdr_of(p);
    /* A new block and a copy: posix_memalign has no realloc, and the copy
     * keeps the accounting simple. Callers grow geometrically. */
    void *q = vlm_alloc_(size, (vlm_mem_cat)h->cat, file, line);
    if (!q) return NULL;
    memcpy(q, p, h->size < size ? h->size : size);
    vlm_free(p);
    return q;
}

char *vlm_strndup_(const char *s, size_t n, vlm_mem_cat cat, const char *file, int line) {
    if (!s) return NULL;
    size_t len = strnlen(s, n);
    char *d = vlm_alloc_(len + 1, cat, file, line);
    if (!d) return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *vlm_strdup_(const char *s, vlm_mem_cat cat, const char *file, int line) {
    return s ? vlm_strndup_(s, strlen(s), cat, file, line) : NULL;
}

void vlm_free(void *p) {
    if (!p) return;
    block_hdr *h = hdr_of(p);
    if (h->magic != BLOCK_MAGIC) {
        /* Not ours, or freed twice: refuse rather than corrupt the counters. */
        fprintf(stderr, "vlmtest: vlm_free of a pointer not from vlm_alloc (%p)\n", p);
        return;
    }
    if (h->tracked) live_remove(h);
    account_sub((vlm_mem_cat)h->cat, h->size);
    atomic_fetch_add_explicit(&n_free, 1, memory_order_relaxed);
    h->magic = FREED_MAGIC;
    free(h);
}

const char *vlm_mem_cat_name(vlm_mem_cat cat) {
    return (unsigned)cat < VLM_MEM_CAT_COUNT ? cat_names[cat] : "unknown";
}

int vlm_mem_cat_parse(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < VLM_MEM_CAT_COUNT; i++)
        if (strcmp(name, cat_names[i]) == 0) return i;
    return -1;
}

void vlm_alloc_get_stats(vlm_mem_stats *out) {
    ensure_init();
    memset(out, 0, sizeof *out);
    for (int i = 0; i < VLM_MEM_CAT_COUNT; i++) {
        out->current[i] = atomic_load_explicit(&cur_bytes[i], memory_order_relaxed);
        out->peak[i] = atomic_load_explicit(&peak_bytes[i], memory_order_relaxed);
    }
    out->total_current = atomic_load_explicit(&total_cur, memory_order_relaxed);
    out->total_peak = atomic_load_explicit(&total_peak, memory_order_relaxed);
    int64_t m = atomic_load_explicit(&mapped_cur, memory_order_relaxed);
    int64_t mp = atomic_load_explicit(&mapped_peak, memory_order_relaxed);
    out->mapped_current = m > 0 ? (uint64_t)m : 0;
    out->mapped_peak = mp > 0 ? (uint64_t)mp : 0;
    out->alloc_count = atomic_load_explicit(&n_alloc, memory_order_relaxed);
    out->free_count = atomic_load_explicit(&n_free, memory_order_relaxed);
    out->failed_count = atomic_load_explicit(&n_failed, memory_order_relaxed);
    uint64_t ok = out->alloc_count - out->failed_count;
    out->live_blocks = ok >= out->free_count ? ok - out->free_count : 0;
}

void vlm_alloc_reset_peaks(void) {
    ensure_init();
    for (int i = 0; i < VLM_MEM_CAT_COUNT; i++)
        atomic_store(&peak_bytes[i], atomic_load(&cur_bytes[i]));
    atomic_store(&total_peak, atomic_load(&total_cur));
    atomic_store(&mapped_peak, atomic_load(&mapped_cur));
}

uint64_t vlm_alloc_count(void) {
    ensure_init();
    return atomic_load_explicit(&n_alloc, memory_order_relaxed);
}

void vlm_alloc_fail_at(uint64_t n, bool sticky) {
    ensure_init();
    atomic_store(&fail_sticky, sticky);
    atomic_store(&fail_at, n);
}

void vlm_alloc_note_mapped(int64_t delta) {
    ensure_init();
    int64_t m = atomic_fetch_add_explicit(&mapped_cur, delta, memory_order_relaxed) + delta;
    int64_t p = atomic_load_explicit(&mapped_peak, memory_order_relaxed);
    while (m > p && !atomic_compare_exchange_weak_explicit(
                        &mapped_peak, &p, m, memory_order_relaxed, memory_order_relaxed)) {}
}

void vlm_alloc_note_external(vlm_mem_cat cat, int64_t delta) {
    ensure_init();
    if ((int)cat < 0 || cat >= VLM_MEM_CAT_COUNT || delta == 0) return;
    if (delta > 0)
        account_add(cat, (uint64_t)delta);
    else
        account_sub(cat, (uint64_t)-delta);
}

void vlm_alloc_set_tracking(bool on) {
    ensure_init();
    atomic_store(&tracking, on);
}

bool vlm_alloc_tracking(void) {
    ensure_init();
    return atomic_load(&tracking);
}

typedef struct site {
    uint32_t cat;
    int32_t line;
    const char *file;
    uint64_t count, bytes;
} site;

static int site_cmp(const void *a, const void *b) {
    const site *x = a, *y = b;
    if (x->cat != y->cat) return x->cat < y->cat ? -1 : 1;
    int c = strcmp(x->file ? x->file : "", y->file ? y->file : "");
    if (c) return c;
    return (x->line > y->line) - (x->line < y->line);
}

size_t vlm_alloc_leak_report(FILE *f) {
    ensure_init();
    pthread_mutex_lock(&live_lock);
    size_t n = 0;
    for (block_hdr *h = live_head; h; h = h->next) n++;
    /* The report's own scratch is not accounted: it must work when the
     * accounted allocator is being made to fail. */
    site *sites = n ? malloc(n * sizeof *sites) : NULL;
    size_t ns = 0;
    if (sites) {
        for (block_hdr *h = live_head; h; h = h->next)
            sites[ns++] = (site){h->cat, h->line, h->file, 1, h->size};
    }
    pthread_mutex_unlock(&live_lock);
    if (n && !sites) {
        fprintf(f, "  %zu live blocks (no memory to group them)\n", n);
        return n;
    }
    if (ns) qsort(sites, ns, sizeof *sites, site_cmp); /* qsort(NULL, 0) is UB */
    size_t out = 0;
    for (size_t i = 0; i < ns;) {
        site s = sites[i++];
        while (i < ns && site_cmp(&s, &sites[i]) == 0) {
            s.count++;
            s.bytes += sites[i++].bytes;
        }
        sites[out++] = s;
    }
    for (size_t i = 0; i < out; i++)
        fprintf(f, "  %-11s %10llu bytes in %6llu blocks at %s:%d\n", cat_names[sites[i].cat],
                (unsigned long long)sites[i].bytes, (unsigned long long)sites[i].count,
                sites[i].file ? sites[i].file : "?", sites[i].line);
    free(sites);
    return n;
}
