/* mem/monitor - see monitor.h. */
#include "mem/monitor.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef __APPLE__
#include <mach/mach.h>
#endif

#include "base/cgroup.h"
#include "base/json.h"
#include "base/log.h"
#include "base/threadpool.h"

/* ======================================================================
 * Parsers
 * ====================================================================== */

/* Find the line that starts with key (e.g. "VmRSS:") and return a pointer
 * just after the key, or NULL. */
static const char *find_line(const char *text, const char *key) {
    size_t kl = strlen(key);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, key, kl) == 0) return p + kl;
        p = strchr(p, '\n');
        if (p) p++;
    }
    return NULL;
}

/* "KEY:   12345 kB" -> bytes. The unit must be kB (all the fields we read
 * have it); anything else on the line is garbage. */
static bool find_kb(const char *text, const char *key, uint64_t *bytes) {
    const char *p = find_line(text, key);
    uint64_t kb;
    if (!p || !vlm_parse_u64(&p, &kb)) return false;
    while (*p == ' ' || *p == '\t') p++;
    if (strncmp(p, "kB", 2) != 0 || (p[2] != '\n' && p[2] != '\0')) return false;
    if (kb > UINT64_MAX / 1024) return false;
    *bytes = kb * 1024;
    return true;
}

bool vlm_mem_parse_proc_status(const char *text, vlm_proc_mem *out) {
    memset(out, 0, sizeof *out);
    if (!text) return false;
    vlm_proc_mem m = {0};
    if (!find_kb(text, "VmRSS:", &m.rss_bytes) || !find_kb(text, "VmHWM:", &m.hwm_bytes))
        return false;
    m.have = true;
    *out = m;
    return true;
}

bool vlm_mem_parse_meminfo(const char *text, vlm_sys_mem *out) {
    memset(out, 0, sizeof *out);
    if (!text) return false;
    vlm_sys_mem m = {0};
    if (!find_kb(text, "MemTotal:", &m.total_bytes)) return false;
    /* MemAvailable exists since Linux 3.14; MemFree undercounts (it leaves
     * out reclaimable cache) but is the honest fallback. */
    if (!find_kb(text, "MemAvailable:", &m.available_bytes) &&
        !find_kb(text, "MemFree:", &m.available_bytes))
        return false;
    uint64_t swap_free = 0;
    if (find_kb(text, "SwapTotal:", &m.swap_total_bytes) &&
        find_kb(text, "SwapFree:", &swap_free) && swap_free <= m.swap_total_bytes)
        m.swap_used_bytes = m.swap_total_bytes - swap_free;
    if (m.available_bytes > m.total_bytes) return false;
    m.have = true;
    *out = m;
    return true;
}

/* "some avg10=1.23 avg60=... total=..." -> 1.23 */
static bool psi_avg10(const char *text, const char *kind, double *out) {
    const char *p = find_line(text, kind);
    if (!p) return false;
    const char *a = strstr(p, "avg10=");
    const char *nl = strchr(p, '\n');
    if (!a || (nl && a > nl)) return false;
    char *end = NULL;
    double v = strtod(a + 6, &end);
    if (end == a + 6 || !isfinite(v) || v < 0 || v > 100) return false;
    *out = v;
    return true;
}

bool vlm_mem_parse_psi(const char *text, vlm_psi *out) {
    memset(out, 0, sizeof *out);
    if (!text) return false;
    vlm_psi p = {0};
    if (!psi_avg10(text, "some ", &p.some_avg10)) return false;
    /* Kernels before 5.x's "full" line for memory report only "some". */
    if (find_line(text, "full ") && !psi_avg10(text, "full ", &p.full_avg10)) return false;
    p.have = true;
    *out = p;
    return true;
}

bool vlm_mem_parse_cgroup_value(const char *text, uint64_t *out) {
    if (!text) return false;
    const char *p = text;
    while (*p == ' ' || *p == '\t') p++;
    uint64_t v;
    if (strncmp(p, "max", 3) == 0) {
        p += 3;
        v = VLM_MEM_NO_LIMIT;
    } else if (!vlm_parse_u64(&p, &v)) {
        return false;
    }
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (*p) return false;
    /* v1 writes "unlimited" as LONG_MAX rounded down to a page
     * (9223372036854771712); no machine has 4 EiB, so anything from 2^62 up
     * is no limit. */
    if (v >= ((uint64_t)1 << 62)) v = VLM_MEM_NO_LIMIT;
    *out = v;
    return true;
}

/* root + rel into a buffer and read it; false if missing. */
static bool read_rooted(const char *root, const char *rel, char *buf, size_t cap) {
    char path[VLM_CGROUP_PATH_MAX];
    return vlm_path_join(path, sizeof path, root, rel) && vlm_read_small_file(path, buf, cap) >= 0;
}

static bool read_in_dir(const char *dir, const char *file, char *buf, size_t cap) {
    char path[VLM_CGROUP_PATH_MAX + 64];
    int n = snprintf(path, sizeof path, "%s/%s", dir, file);
    return n > 0 && (size_t)n < sizeof path && vlm_read_small_file(path, buf, cap) >= 0;
}

bool vlm_mem_read_proc(const char *root, vlm_proc_mem *out) {
#ifdef __APPLE__
    (void)root;
    memset(out, 0, sizeof *out);
    mach_task_basic_info_data_t info;
    mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
    if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, (task_info_t)&info, &count) !=
        KERN_SUCCESS)
        return false;
    out->have = true;
    out->rss_bytes = info.resident_size;
    out->hwm_bytes = info.resident_size_max;
    return true;
#else
    char buf[8192];
    if (!read_rooted(root, "/proc/self/status", buf, sizeof buf)) {
        memset(out, 0, sizeof *out);
        return false;
    }
    return vlm_mem_parse_proc_status(buf, out);
#endif
}

bool vlm_mem_read_sys(const char *root, vlm_sys_mem *out) {
    char buf[8192];
    if (!read_rooted(root, "/proc/meminfo", buf, sizeof buf)) {
        memset(out, 0, sizeof *out);
        return false;
    }
    return vlm_mem_parse_meminfo(buf, out);
}

bool vlm_mem_read_psi(const char *root, vlm_psi *out) {
    char buf[1024];
    if (!read_rooted(root, "/proc/pressure/memory", buf, sizeof buf)) {
        memset(out, 0, sizeof *out);
        return false;
    }
    return vlm_mem_parse_psi(buf, out);
}

bool vlm_mem_read_cgroup(const char *root, vlm_cgroup_mem *out) {
    memset(out, 0, sizeof *out);
    out->limit_bytes = VLM_MEM_NO_LIMIT;
    vlm_cgroup cg;
    if (!vlm_cgroup_find(root, "memory", &cg)) return false;
    out->version = cg.version;
    snprintf(out->dir, sizeof out->dir, "%s", cg.dir);
    bool v2 = cg.version == 2;
    char buf[4096];
    uint64_t v;
    if (read_in_dir(cg.dir, v2 ? "memory.current" : "memory.usage_in_bytes", buf, sizeof buf) &&
        vlm_mem_parse_cgroup_value(buf, &v) && v != VLM_MEM_NO_LIMIT) {
        out->current_bytes = v;
        out->have_current = true;
    }
    /* Both v2's memory.events and v1's memory.oom_control have a line
     * "oom_kill N" (v2 counts the subtree, v1 the group). */
    if (read_in_dir(cg.dir, v2 ? "memory.events" : "memory.oom_control", buf, sizeof buf)) {
        const char *p = find_line(buf, "oom_kill ");
        if (p && !vlm_parse_u64(&p, &out->oom_kills)) out->oom_kills = 0;
    }
    /* The tightest limit over the group and its ancestors applies. */
    do {
        if (read_in_dir(cg.dir, v2 ? "memory.max" : "memory.limit_in_bytes", buf, sizeof buf) &&
            vlm_mem_parse_cgroup_value(buf, &v) && v < out->limit_bytes)
            out->limit_bytes = v;
    } while (vlm_cgroup_parent(&cg));
    return true;
}

vlm_pressure_level vlm_mem_pressure_level(const vlm_psi *psi) {
    if (!psi || !psi->have) return VLM_PRESSURE_UNKNOWN;
    if (psi->full_avg10 >= VLM_PSI_CRITICAL_FULL || psi->some_avg10 >= VLM_PSI_CRITICAL_SOME)
        return VLM_PRESSURE_CRITICAL;
    if (psi->full_avg10 >= VLM_PSI_ELEVATED_FULL || psi->some_avg10 >= VLM_PSI_ELEVATED_SOME)
        return VLM_PRESSURE_ELEVATED;
    return VLM_PRESSURE_NORMAL;
}

const char *vlm_pressure_level_name(vlm_pressure_level level) {
    switch (level) {
    case VLM_PRESSURE_NORMAL:
        return "normal";
    case VLM_PRESSURE_ELEVATED:
        return "elevated";
    case VLM_PRESSURE_CRITICAL:
        return "critical";
    default:
        return "unknown";
    }
}

/* ======================================================================
 * Snapshot
 * ====================================================================== */

bool vlm_mem_parse_size(const char *s, uint64_t *out) {
    if (!s) return false;
    const char *p = s;
    uint64_t v;
    if (!vlm_parse_u64(&p, &v)) return false;
    int shift = 0;
    switch (*p) {
    case 'k':
    case 'K':
        shift = 10;
        p++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        p++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        p++;
        break;
    case 't':
    case 'T':
        shift = 40;
        p++;
        break;
    default:
        break;
    }
    if (shift && (*p == 'i' || *p == 'I')) p++;
    if (*p == 'b' || *p == 'B') p++;
    if (*p) return false;
    if (shift && v > (UINT64_MAX >> shift)) return false;
    *out = v << shift;
    return true;
}

static _Atomic uint64_t threshold_bytes = VLM_MEM_DEFAULT_THRESHOLD;
static pthread_once_t threshold_once = PTHREAD_ONCE_INIT;

static void threshold_init(void) {
    const char *s = getenv("VLM_MEM_THRESHOLD");
    uint64_t v;
    if (s && *s) {
        if (vlm_mem_parse_size(s, &v))
            atomic_store(&threshold_bytes, v);
        else
            VLM_WARN("VLM_MEM_THRESHOLD=%s is not a size (e.g. 12G); keeping 12 GiB", s);
    }
}

uint64_t vlm_mem_get_threshold(void) {
    pthread_once(&threshold_once, threshold_init);
    return atomic_load(&threshold_bytes);
}

void vlm_mem_set_threshold(uint64_t bytes) {
    pthread_once(&threshold_once, threshold_init);
    atomic_store(&threshold_bytes, bytes);
}

uint64_t vlm_mem_time_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t vlm_mem_rss_now(void) {
#ifdef __APPLE__
    vlm_proc_mem m;
    return vlm_mem_read_proc(NULL, &m) ? m.rss_bytes : 0;
#else
    /* statm is one short line ("size resident shared ..." in pages): far
     * cheaper to produce than status, which matters at 20 reads a second. */
    char buf[256];
    if (vlm_read_small_file("/proc/self/statm", buf, sizeof buf) < 0) return 0;
    const char *p = buf;
    uint64_t size, resident;
    if (!vlm_parse_u64(&p, &size) || !vlm_parse_u64(&p, &resident)) return 0;
    long page = sysconf(_SC_PAGESIZE);
    return resident * (uint64_t)(page > 0 ? page : 4096);
#endif
}

/* ======================================================================
 * The GPU: the backend's probe, and NVML through dlopen
 * ====================================================================== */

static _Atomic(vlm_mem_gpu_probe_fn) gpu_probe;

void vlm_mem_set_gpu_probe(vlm_mem_gpu_probe_fn fn) {
    atomic_store(&gpu_probe, fn);
}

/* The few NVML entry points used, as nvml.h declares them (return 0 is
 * NVML_SUCCESS). nvmlProcessInfo_t of the _v2 / _v3 process queries:
 * pid, used bytes, GPU and compute instance ids. */
typedef struct nvml_proc {
    unsigned int pid;
    unsigned long long used;
    unsigned int gpu_instance, compute_instance;
} nvml_proc;

static struct {
    pthread_once_t once;
    bool ok;
    int (*init)(void);
    int (*count)(unsigned int *);
    int (*handle)(unsigned int, void **);
    int (*procs)(void *, unsigned int *, nvml_proc *);
} nvml = {PTHREAD_ONCE_INIT, false, NULL, NULL, NULL, NULL};

/* Load and initialise NVML once; the library stays loaded (and NVML
 * initialised) for the life of the process. */
static void nvml_load(void) {
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    *(void **)&nvml.init = dlsym(h, "nvmlInit_v2");
    *(void **)&nvml.count = dlsym(h, "nvmlDeviceGetCount_v2");
    *(void **)&nvml.handle = dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&nvml.procs = dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    if (!nvml.procs) *(void **)&nvml.procs = dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v2");
    if (!nvml.init || !nvml.count || !nvml.handle || !nvml.procs || nvml.init() != 0) {
        dlclose(h);
        return;
    }
    nvml.ok = true;
}

bool vlm_mem_nvml_process_bytes(uint64_t *bytes, bool *found) {
    *bytes = 0;
    *found = false;
    pthread_once(&nvml.once, nvml_load);
    if (!nvml.ok) return false;
    unsigned int n = 0;
    if (nvml.count(&n) != 0) return false;
    unsigned int pid = (unsigned int)getpid();
    for (unsigned int d = 0; d < n; d++) {
        void *dev = NULL;
        nvml_proc p[64];
        unsigned int cnt = 64;
        if (nvml.handle(d, &dev) != 0 || nvml.procs(dev, &cnt, p) != 0) continue;
        for (unsigned int i = 0; i < cnt && i < 64; i++) {
            if (p[i].pid != pid) continue;
            *found = true;
            if (p[i].used != ~0ull) *bytes += p[i].used; /* ~0: not available (MIG) */
        }
    }
    return true;
}

void vlm_mem_read_gpu(vlm_gpu_mem *out) {
    memset(out, 0, sizeof *out);
    vlm_mem_gpu_probe_fn fn = atomic_load(&gpu_probe);
    if (fn && fn(out)) {
        out->have = true;
        out->used_bytes =
            out->total_bytes > out->free_bytes ? out->total_bytes - out->free_bytes : 0;
    } else {
        memset(out, 0, sizeof *out);
    }
    /* NVML only where there is a device to ask about. */
    if (out->have)
        out->have_process = vlm_mem_nvml_process_bytes(&out->process_bytes, &out->process_found);
}

void vlm_mem_snapshot_take(const char *root, vlm_mem_snapshot *out) {
    memset(out, 0, sizeof *out);
    out->time_ms = vlm_mem_time_ms();
    vlm_mem_read_proc(root, &out->proc);
    vlm_mem_read_sys(root, &out->sys);
    vlm_mem_read_cgroup(root, &out->cgroup);
    vlm_mem_read_psi(root, &out->psi);
    out->level = vlm_mem_pressure_level(&out->psi);
    vlm_alloc_get_stats(&out->accounted);
    uint64_t headroom = out->sys.have ? out->sys.available_bytes : 0;
    if (out->cgroup.version && out->cgroup.limit_bytes != VLM_MEM_NO_LIMIT) {
        /* memory.current counts the group's page cache too, which the kernel
         * could reclaim: this errs on the safe side. */
        uint64_t cg = out->cgroup.limit_bytes > out->cgroup.current_bytes
                          ? out->cgroup.limit_bytes - out->cgroup.current_bytes
                          : 0;
        if (!out->sys.have || cg < headroom) headroom = cg;
    }
    out->headroom_bytes = headroom;
    out->threshold_bytes = vlm_mem_get_threshold();
    out->over_threshold =
        out->threshold_bytes && out->proc.have && out->proc.rss_bytes > out->threshold_bytes;
    out->threads = vlm_threadpool_default_size();
    vlm_mem_read_gpu(&out->gpu);
}

/* Add a number, or null when !have. False on allocation failure. */
static bool json_num(cJSON *o, const char *key, bool have, double v) {
    cJSON *item = have ? cJSON_CreateNumber(v) : cJSON_CreateNull();
    if (!item) return false;
    if (!cJSON_AddItemToObject(o, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

static bool json_str(cJSON *o, const char *key, const char *v) {
    return cJSON_AddStringToObject(o, key, v) != NULL;
}

static bool json_bool(cJSON *o, const char *key, bool v) {
    return cJSON_AddBoolToObject(o, key, v) != NULL;
}

static cJSON *json_categories(const uint64_t *bytes, uint64_t total) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = true;
    for (int c = 0; c < VLM_MEM_CAT_COUNT; c++)
        ok = ok && json_num(o, vlm_mem_cat_name((vlm_mem_cat)c), true, (double)bytes[c]);
    ok = ok && json_num(o, "total", true, (double)total);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static bool json_add(cJSON *o, const char *key, cJSON *child) {
    if (!child) return false;
    if (!cJSON_AddItemToObject(o, key, child)) {
        cJSON_Delete(child);
        return false;
    }
    return true;
}

cJSON *vlm_mem_snapshot_to_json(const vlm_mem_snapshot *s) {
    vlm_json_init();
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const vlm_cgroup_mem *cg = &s->cgroup;
    bool limited = cg->version && cg->limit_bytes != VLM_MEM_NO_LIMIT;
    bool ok = json_num(o, "time_ms", true, (double)s->time_ms) &&
              json_num(o, "rss_bytes", s->proc.have, (double)s->proc.rss_bytes) &&
              json_num(o, "peak_rss_bytes", s->proc.have, (double)s->proc.hwm_bytes) &&
              json_num(o, "mem_total_bytes", s->sys.have, (double)s->sys.total_bytes) &&
              json_num(o, "mem_available_bytes", s->sys.have, (double)s->sys.available_bytes) &&
              json_num(o, "swap_total_bytes", s->sys.have, (double)s->sys.swap_total_bytes) &&
              json_num(o, "swap_used_bytes", s->sys.have, (double)s->sys.swap_used_bytes) &&
              json_num(o, "cgroup_version", true, cg->version) &&
              json_num(o, "cgroup_limit_bytes", limited, (double)cg->limit_bytes) &&
              json_num(o, "cgroup_current_bytes", cg->have_current, (double)cg->current_bytes) &&
              json_num(o, "oom_kills", true, (double)cg->oom_kills) &&
              json_num(o, "headroom_bytes", true, (double)s->headroom_bytes) &&
              json_num(o, "threshold_bytes", s->threshold_bytes != 0, (double)s->threshold_bytes) &&
              json_bool(o, "over_threshold", s->over_threshold);
    if (ok) {
        cJSON *p = cJSON_CreateObject();
        ok = p && json_str(p, "level", vlm_pressure_level_name(s->level)) &&
             json_num(p, "some_avg10", s->psi.have, s->psi.some_avg10) &&
             json_num(p, "full_avg10", s->psi.have, s->psi.full_avg10);
        if (!ok) cJSON_Delete(p);
        ok = ok && json_add(o, "pressure", p);
    }
    ok = ok &&
         json_add(o, "accounted",
                  json_categories(s->accounted.current, s->accounted.total_current)) &&
         json_add(o, "accounted_peak",
                  json_categories(s->accounted.peak, s->accounted.total_peak)) &&
         json_num(o, "mapped_bytes", true, (double)s->accounted.mapped_current) &&
         json_num(o, "threads", true, s->threads);
    /* "gpu": "none", or the device's figures */
    if (ok && !s->gpu.have) {
        ok = json_str(o, "gpu", "none");
    } else if (ok) {
        const vlm_gpu_mem *g = &s->gpu;
        cJSON *d = cJSON_CreateObject();
        ok = d && json_str(d, "name", g->name) &&
             json_num(d, "total_bytes", true, (double)g->total_bytes) &&
             json_num(d, "free_bytes", true, (double)g->free_bytes) &&
             json_num(d, "used_bytes", true, (double)g->used_bytes) &&
             json_num(d, "accounted_bytes", true, (double)g->accounted_bytes) &&
             json_num(d, "accounted_peak_bytes", true, (double)g->accounted_peak) &&
             json_num(d, "process_bytes", g->have_process && g->process_found,
                      (double)g->process_bytes) &&
             json_str(d, "process_source",
                      !g->have_process   ? "none (no NVML)"
                      : g->process_found ? "nvml"
                                         : "nvml (pid not listed)");
        if (!ok) cJSON_Delete(d);
        ok = ok && json_add(o, "gpu", d);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ======================================================================
 * Cleanup
 * ====================================================================== */

typedef struct cleanup_slot {
    vlm_mem_cleanup_fn fn;
    void *ctx;
} cleanup_slot;

static pthread_mutex_t cleanup_lock = PTHREAD_MUTEX_INITIALIZER;
static cleanup_slot cleanup_slots[VLM_MEM_CLEANUP_SLOTS];

vlm_status vlm_mem_register_cleanup(vlm_mem_cleanup_fn fn, void *ctx, vlm_err *err) {
    if (!fn) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "cleanup: no callback given");
    pthread_mutex_lock(&cleanup_lock);
    for (int i = 0; i < VLM_MEM_CLEANUP_SLOTS; i++) {
        if (!cleanup_slots[i].fn) {
            cleanup_slots[i] = (cleanup_slot){fn, ctx};
            pthread_mutex_unlock(&cleanup_lock);
            return VLM_OK;
        }
    }
    pthread_mutex_unlock(&cleanup_lock);
    return vlm_err_set(err, VLM_ERR_LIMIT, "cleanup: all %d callback slots are taken",
                       VLM_MEM_CLEANUP_SLOTS);
}

void vlm_mem_unregister_cleanup(vlm_mem_cleanup_fn fn, void *ctx) {
    pthread_mutex_lock(&cleanup_lock);
    for (int i = 0; i < VLM_MEM_CLEANUP_SLOTS; i++)
        if (cleanup_slots[i].fn == fn && cleanup_slots[i].ctx == ctx)
            cleanup_slots[i] = (cleanup_slot){0};
    pthread_mutex_unlock(&cleanup_lock);
}

vlm_status vlm_mem_register_arena(vlm_arena *a, vlm_err *err) {
    return vlm_mem_register_cleanup(vlm_arena_trim_cb, a, err);
}

void vlm_mem_unregister_arena(vlm_arena *a) {
    vlm_mem_unregister_cleanup(vlm_arena_trim_cb, a);
}

void vlm_mem_cleanup(bool run_registered, vlm_mem_cleanup_result *out) {
    vlm_mem_cleanup_result r = {0};
    r.rss_before = vlm_mem_rss_now();
    if (run_registered) {
        /* Run from a copy so a callback may (un)register without deadlock. */
        cleanup_slot slots[VLM_MEM_CLEANUP_SLOTS];
        pthread_mutex_lock(&cleanup_lock);
        memcpy(slots, cleanup_slots, sizeof slots);
        pthread_mutex_unlock(&cleanup_lock);
        for (int i = 0; i < VLM_MEM_CLEANUP_SLOTS; i++) {
            if (!slots[i].fn) continue;
            r.callback_bytes += slots[i].fn(slots[i].ctx);
            r.callbacks_run++;
        }
    }
#ifdef __GLIBC__
    /* Freed blocks below the mmap threshold stay in malloc's arenas; trim
     * hands their whole pages back (madvise) from every arena. */
    malloc_trim(0);
    r.malloc_trimmed = true;
#endif
    r.rss_after = vlm_mem_rss_now();
    r.released_bytes = (int64_t)r.rss_before - (int64_t)r.rss_after;
    if (out) *out = r;
}

/* ======================================================================
 * Scoped measurement
 * ====================================================================== */

static pthread_mutex_t scope_lock = PTHREAD_MUTEX_INITIALIZER;
static vlm_mem_scope *open_scopes;

/* Reset VmHWM to the current RSS (Linux >= 4.0). */
static bool reset_hwm(void) {
#ifdef __linux__
    FILE *f = fopen("/proc/self/clear_refs", "we");
    if (!f) return false;
    bool ok = fputs("5", f) >= 0;
    ok = (fclose(f) == 0) && ok;
    return ok;
#else
    return false;
#endif
}

static uint64_t u64_max(uint64_t a, uint64_t b) {
    return a > b ? a : b;
}

void vlm_mem_scope_begin(vlm_mem_scope *s, const char *name) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name ? name : "scope");
    pthread_mutex_lock(&scope_lock);
    vlm_proc_mem pm;
    vlm_mem_stats st;
    vlm_mem_read_proc(NULL, &pm);
    vlm_alloc_get_stats(&st);
    /* Hand the peaks so far to the scopes already open before resetting. */
    for (vlm_mem_scope *o = open_scopes; o; o = o->next_open) {
        o->rss_peak_carried = u64_max(o->rss_peak_carried, pm.hwm_bytes);
        o->acc_peak_carried = u64_max(o->acc_peak_carried, st.total_peak);
    }
    s->hwm_reset_ok = reset_hwm();
    vlm_alloc_reset_peaks();
    vlm_mem_read_proc(NULL, &pm);
    vlm_alloc_get_stats(&st);
    s->rss_start = pm.rss_bytes;
    s->hwm_start = pm.hwm_bytes;
    s->accounted_start = st.total_current;
    s->t0_ms = vlm_mem_time_ms();
    s->open = true;
    s->next_open = open_scopes;
    open_scopes = s;
    pthread_mutex_unlock(&scope_lock);
}

void vlm_mem_scope_end(vlm_mem_scope *s, vlm_mem_scope_result *out) {
    vlm_mem_scope_result r = {0};
    pthread_mutex_lock(&scope_lock);
    vlm_proc_mem pm;
    vlm_mem_stats st;
    vlm_mem_read_proc(NULL, &pm);
    vlm_alloc_get_stats(&st);
    snprintf(r.name, sizeof r.name, "%s", s->name);
    r.wall_ms = (double)(vlm_mem_time_ms() - s->t0_ms);
    r.rss_start = s->rss_start;
    r.rss_end = pm.rss_bytes;
    r.rss_delta = (int64_t)r.rss_end - (int64_t)r.rss_start;
    uint64_t floor_peak = u64_max(r.rss_start, r.rss_end);
    if (s->hwm_reset_ok) {
        r.rss_peak = u64_max(u64_max(s->rss_peak_carried, pm.hwm_bytes), floor_peak);
        r.peak_exact = true;
    } else if (pm.hwm_bytes > s->hwm_start) {
        /* The process-wide peak rose inside the region: that is its peak. */
        r.rss_peak = u64_max(pm.hwm_bytes, floor_peak);
        r.peak_exact = true;
    } else {
        r.rss_peak = u64_max(s->rss_peak_carried, floor_peak);
        r.peak_exact = false;
    }
    r.accounted_start = s->accounted_start;
    r.accounted_end = st.total_current;
    r.accounted_delta = (int64_t)r.accounted_end - (int64_t)r.accounted_start;
    r.accounted_peak = u64_max(u64_max(s->acc_peak_carried, st.total_peak),
                               u64_max(r.accounted_start, r.accounted_end));
    if (s->open) {
        vlm_mem_scope **pp = &open_scopes;
        while (*pp && *pp != s) pp = &(*pp)->next_open;
        if (*pp) *pp = s->next_open;
        s->open = false;
    }
    pthread_mutex_unlock(&scope_lock);
    VLM_DEBUG("mem scope %s: rss %+lld bytes (peak %llu), accounted %+lld bytes (peak %llu), "
              "%.1f ms",
              r.name, (long long)r.rss_delta, (unsigned long long)r.rss_peak,
              (long long)r.accounted_delta, (unsigned long long)r.accounted_peak, r.wall_ms);
    if (out) *out = r;
}

/* ======================================================================
 * Background sampler
 * ====================================================================== */

struct vlm_mem_sampler {
    vlm_mem_sampler_config cfg;
    pthread_t thread;
    bool thread_running;
    pthread_mutex_t lock;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    bool stop;
    uint64_t t0_ms;

    vlm_mem_sample *ring; /* (capacity) */
    size_t head;          /* next slot to write */
    size_t count;         /* samples in the ring */
    uint64_t taken;
    vlm_mem_sample peak_rss, peak_acc, peak_gpu;

    bool above; /* RSS was over the threshold at the last sample */
    unsigned alarms;
};

static void sampler_take(vlm_mem_sampler *s, vlm_mem_sample *out) {
    vlm_mem_stats st;
    vlm_alloc_get_stats(&st);
    memset(out, 0, sizeof *out);
    out->t_ms = vlm_mem_time_ms() - s->t0_ms;
    out->rss_bytes = vlm_mem_rss_now();
    memcpy(out->accounted, st.current, sizeof out->accounted);
    out->accounted_total = st.total_current;
    out->mapped_bytes = st.mapped_current;
    vlm_mem_gpu_probe_fn fn = atomic_load(&gpu_probe);
    vlm_gpu_mem g;
    memset(&g, 0, sizeof g);
    bool have = fn && fn(&g);
    out->gpu_accounted = have ? g.accounted_bytes : 0;
    if (s->cfg.gpu_bytes)
        out->gpu_bytes = s->cfg.gpu_bytes(s->cfg.gpu_ctx);
    else if (have && g.total_bytes > g.free_bytes)
        out->gpu_bytes = g.total_bytes - g.free_bytes;
}

/* Store a sample; true if it crossed the threshold upwards. Lock held. */
static bool sampler_record(vlm_mem_sampler *s, const vlm_mem_sample *x) {
    s->ring[s->head] = *x;
    s->head = (s->head + 1) % s->cfg.capacity;
    if (s->count < s->cfg.capacity) s->count++;
    if (s->taken == 0 || x->rss_bytes > s->peak_rss.rss_bytes) s->peak_rss = *x;
    if (s->taken == 0 || x->accounted_total > s->peak_acc.accounted_total) s->peak_acc = *x;
    if (s->taken == 0 || x->gpu_bytes > s->peak_gpu.gpu_bytes) s->peak_gpu = *x;
    s->taken++;
    uint64_t th = s->cfg.threshold_bytes;
    bool above = th != VLM_MEM_NO_LIMIT && x->rss_bytes > th;
    bool crossed = above && !s->above;
    s->above = above;
    if (crossed) s->alarms++;
    return crossed;
}

/* Over the threshold: clean up first (it may be enough), then say so. */
static void sampler_alarm(vlm_mem_sampler *s, const vlm_mem_sample *x) {
    vlm_mem_cleanup_result c;
    vlm_mem_cleanup(s->cfg.cleanup_registered, &c);
    VLM_WARN("memory: RSS %.1f MiB is over the threshold of %.1f MiB; cleanup gave back "
             "%.1f MiB",
             (double)x->rss_bytes / 1048576.0, (double)s->cfg.threshold_bytes / 1048576.0,
             (double)c.released_bytes / 1048576.0);
    if (s->cfg.alarm) s->cfg.alarm(s->cfg.alarm_ctx, x, s->cfg.threshold_bytes, &c);
}

static void *sampler_main(void *p) {
    vlm_mem_sampler *s = p;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        uint64_t ns = (uint64_t)next.tv_nsec + (uint64_t)s->cfg.interval_ms * 1000000u;
        next.tv_sec += (time_t)(ns / 1000000000u);
        next.tv_nsec = (long)(ns % 1000000000u);
        while (!s->stop && pthread_cond_timedwait(&s->cv, &s->lock, &next) == 0) {}
        if (s->stop) break;
        /* If we fell behind (a stalled machine), do not burst to catch up. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > next.tv_sec + 1) next = now;
        pthread_mutex_unlock(&s->lock);
        vlm_mem_sample x;
        sampler_take(s, &x);
        pthread_mutex_lock(&s->lock);
        if (sampler_record(s, &x)) {
            pthread_mutex_unlock(&s->lock);
            sampler_alarm(s, &x);
            pthread_mutex_lock(&s->lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

vlm_status vlm_mem_sampler_start(const vlm_mem_sampler_config *cfg, vlm_mem_sampler **out,
                                 vlm_err *err) {
    *out = NULL;
    vlm_mem_sampler_config c = {0};
    if (cfg) c = *cfg;
    if (c.interval_ms == 0) c.interval_ms = 50;
    if (c.capacity == 0) c.capacity = 4096;
    if (c.threshold_bytes == 0) c.threshold_bytes = vlm_mem_get_threshold();
    if (c.threshold_bytes == 0) c.threshold_bytes = VLM_MEM_NO_LIMIT;
    vlm_mem_sampler *s = vlm_calloc(1, sizeof *s, VLM_MEM_OTHER);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "memory sampler: no memory for the sampler");
    s->cfg = c;
    s->ring = VLM_NEW_ARRAY(vlm_mem_sample, c.capacity, VLM_MEM_OTHER);
    if (!s->ring) {
        vlm_free(s);
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "memory sampler: no memory for a timeline of %zu samples", c.capacity);
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->t0_ms = vlm_mem_time_ms();
    vlm_mem_sample x;
    sampler_take(s, &x);
    bool crossed = sampler_record(s, &x);
    int rc = pthread_create(&s->thread, NULL, sampler_main, s);
    if (rc != 0) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->lock);
        vlm_free(s->ring);
        vlm_free(s);
        return vlm_err_set(err, VLM_ERR_NOMEM, "memory sampler: cannot start its thread: %s",
                           strerror(rc));
    }
    s->thread_running = true;
    if (crossed) sampler_alarm(s, &x);
    *out = s;
    return VLM_OK;
}

void vlm_mem_sampler_stop(vlm_mem_sampler *s) {
    if (!s || !s->thread_running) return;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    s->thread_running = false;
    vlm_mem_sample x;
    sampler_take(s, &x);
    pthread_mutex_lock(&s->lock);
    bool crossed = sampler_record(s, &x);
    pthread_mutex_unlock(&s->lock);
    if (crossed) sampler_alarm(s, &x);
}

void vlm_mem_sampler_destroy(vlm_mem_sampler *s) {
    if (!s) return;
    vlm_mem_sampler_stop(s);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->lock);
    vlm_free(s->ring);
    vlm_free(s);
}

size_t vlm_mem_sampler_count(vlm_mem_sampler *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}

uint64_t vlm_mem_sampler_taken(vlm_mem_sampler *s) {
    pthread_mutex_lock(&s->lock);
    uint64_t n = s->taken;
    pthread_mutex_unlock(&s->lock);
    return n;
}

bool vlm_mem_sampler_get(vlm_mem_sampler *s, size_t i, vlm_mem_sample *out) {
    pthread_mutex_lock(&s->lock);
    bool ok = i < s->count;
    if (ok) {
        size_t oldest = (s->head + s->cfg.capacity - s->count) % s->cfg.capacity;
        *out = s->ring[(oldest + i) % s->cfg.capacity];
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

void vlm_mem_sampler_peak(vlm_mem_sampler *s, vlm_mem_sample *rss_peak,
                          vlm_mem_sample *accounted_peak) {
    pthread_mutex_lock(&s->lock);
    if (rss_peak) *rss_peak = s->peak_rss;
    if (accounted_peak) *accounted_peak = s->peak_acc;
    pthread_mutex_unlock(&s->lock);
}

void vlm_mem_sampler_gpu_peak(vlm_mem_sampler *s, vlm_mem_sample *gpu_peak) {
    pthread_mutex_lock(&s->lock);
    *gpu_peak = s->peak_gpu;
    pthread_mutex_unlock(&s->lock);
}

unsigned vlm_mem_sampler_alarms(vlm_mem_sampler *s) {
    pthread_mutex_lock(&s->lock);
    unsigned n = s->alarms;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static cJSON *sample_json(const vlm_mem_sample *x) {
    cJSON *o = cJSON_CreateObject();
    bool ok = o && json_num(o, "t_ms", true, (double)x->t_ms) &&
              json_num(o, "rss_bytes", true, (double)x->rss_bytes) &&
              json_add(o, "accounted", json_categories(x->accounted, x->accounted_total)) &&
              json_num(o, "mapped_bytes", true, (double)x->mapped_bytes) &&
              json_num(o, "gpu_bytes", true, (double)x->gpu_bytes) &&
              json_num(o, "gpu_accounted", true, (double)x->gpu_accounted);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *vlm_mem_sampler_to_json(vlm_mem_sampler *s) {
    vlm_json_init();
    size_t n = vlm_mem_sampler_count(s);
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_CreateArray();
    bool ok = o && arr && json_num(o, "interval_ms", true, s->cfg.interval_ms) &&
              json_num(o, "taken", true, (double)vlm_mem_sampler_taken(s));
    for (size_t i = 0; ok && i < n; i++) {
        vlm_mem_sample x;
        if (!vlm_mem_sampler_get(s, i, &x)) break;
        cJSON *item = sample_json(&x);
        ok = item && cJSON_AddItemToArray(arr, item);
        if (!ok) cJSON_Delete(item);
    }
    if (ok) {
        ok = cJSON_AddItemToObject(o, "samples", arr);
        if (!ok) cJSON_Delete(arr);
        arr = NULL;
    } else {
        cJSON_Delete(arr);
        arr = NULL;
    }
    vlm_mem_sample pr, pa, pg;
    vlm_mem_sampler_peak(s, &pr, &pa);
    vlm_mem_sampler_gpu_peak(s, &pg);
    ok = ok && json_add(o, "peak_rss", sample_json(&pr)) &&
         json_add(o, "peak_accounted", sample_json(&pa)) &&
         json_add(o, "peak_gpu", sample_json(&pg));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}
