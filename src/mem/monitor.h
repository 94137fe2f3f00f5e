/* mem/monitor - how much memory the process, the machine and the container
 * have, how hard the kernel is working to find more, and what the engine
 * itself holds.
 *
 * Sources (Linux):
 *   process    /proc/self/status VmRSS, VmHWM (resident now, and its peak);
 *   machine    /proc/meminfo MemTotal, MemAvailable, SwapTotal - SwapFree;
 *   container  the memory cgroup of this process (base/cgroup): v2
 *              memory.max, memory.current, memory.events oom_kill; v1
 *              memory.limit_in_bytes, memory.usage_in_bytes, memory.oom_control
 *              oom_kill. The limit is the tightest over the group and its
 *              ancestors; "max", and v1's huge "unlimited" values, mean none;
 *   pressure   /proc/pressure/memory (PSI): the share of the last 10 s in
 *              which some / all runnable tasks were stalled waiting for memory;
 *   engine     vlm_alloc_get_stats: accounted bytes per category, mapped bytes.
 * macOS: the process figures come from task_info; the rest reads as absent.
 *
 * Every reader takes a root directory put in front of /proc and /sys ("" or
 * NULL: the real machine) so the parsers are tested on fixture copies. A
 * missing or garbled source leaves its fields "absent", never an error: the
 * monitor reports what it can see.
 *
 * Pressure levels (from PSI avg10, in percent of wall time):
 *   critical   full >= 10 or some >= 40: all work stops for memory a tenth of
 *              the time, or tasks wait nearly half of it; an OOM kill or a
 *              swap storm is near, shrink now;
 *   elevated   full >= 1 or some >= 10: reclaim is costing real time; do not
 *              grow (no larger batch, no new image) and clean up;
 *   normal     otherwise.
 * Separately, a usage threshold in bytes (default 12 GiB, as the system this
 * replaces used; VLM_MEM_THRESHOLD or vlm_mem_set_threshold) marks a snapshot
 * "over threshold" when the process RSS passes it. */
#ifndef VLM_MEM_MONITOR_H
#define VLM_MEM_MONITOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "base/alloc.h"
#include "base/arena.h"
#include "base/status.h"

#define VLM_MEM_DEFAULT_THRESHOLD ((uint64_t)12 << 30) /* 12 GiB */
#define VLM_MEM_NO_LIMIT          UINT64_MAX

/* PSI thresholds of the levels above, percent. */
#define VLM_PSI_ELEVATED_SOME 10.0
#define VLM_PSI_ELEVATED_FULL 1.0
#define VLM_PSI_CRITICAL_SOME 40.0
#define VLM_PSI_CRITICAL_FULL 10.0

typedef enum vlm_pressure_level {
    VLM_PRESSURE_UNKNOWN = 0, /* no PSI on this machine */
    VLM_PRESSURE_NORMAL,
    VLM_PRESSURE_ELEVATED,
    VLM_PRESSURE_CRITICAL,
} vlm_pressure_level;

/* --- parsers: one source each ------------------------------------------- */

typedef struct vlm_proc_mem {
    bool have;          /* the figures below were read */
    uint64_t rss_bytes; /* VmRSS */
    uint64_t hwm_bytes; /* VmHWM: peak RSS (since start or the last reset) */
} vlm_proc_mem;

typedef struct vlm_sys_mem {
    bool have;
    uint64_t total_bytes;     /* MemTotal */
    uint64_t available_bytes; /* MemAvailable (MemFree on kernels without it) */
    uint64_t swap_total_bytes;
    uint64_t swap_used_bytes; /* SwapTotal - SwapFree */
} vlm_sys_mem;

typedef struct vlm_cgroup_mem {
    int version;          /* 1, 2; 0 when there is no memory cgroup */
    uint64_t limit_bytes; /* VLM_MEM_NO_LIMIT when none */
    bool have_current;    /* current_bytes was read (v2's root group has none) */
    uint64_t current_bytes;
    uint64_t oom_kills; /* OOM kills in the group so far */
    char dir[1024];     /* the group's directory (with the root prefix) */
} vlm_cgroup_mem;

typedef struct vlm_psi {
    bool have;
    double some_avg10; /* percent */
    double full_avg10; /* percent (0 on kernels that report only "some") */
} vlm_psi;

/* Parse the text of /proc/self/status, /proc/meminfo, /proc/pressure/memory.
 * False (and *out marked absent) when the needed lines are missing or
 * garbled. */
bool vlm_mem_parse_proc_status(const char *text, vlm_proc_mem *out);
bool vlm_mem_parse_meminfo(const char *text, vlm_sys_mem *out);
bool vlm_mem_parse_psi(const char *text, vlm_psi *out);
/* A cgroup memory value: decimal bytes, or "max" / a v1 value of 2^62 and
 * above (the page-rounded LONG_MAX v1 writes for "unlimited") as no limit. */
bool vlm_mem_parse_cgroup_value(const char *text, uint64_t *out);

/* The same from files under root. */
bool vlm_mem_read_proc(const char *root, vlm_proc_mem *out);
bool vlm_mem_read_sys(const char *root, vlm_sys_mem *out);
bool vlm_mem_read_cgroup(const char *root, vlm_cgroup_mem *out);
bool vlm_mem_read_psi(const char *root, vlm_psi *out);

vlm_pressure_level vlm_mem_pressure_level(const vlm_psi *psi);
const char *vlm_pressure_level_name(vlm_pressure_level level);

/* --- the snapshot ------------------------------------------------------- */

/* --- the GPU ------------------------------------------------------------------
 * mem sits below the backends, so the GPU backend installs a probe
 * (vlm_gpu_monitor_install, backend/gpu.h) that reads the device: free and
 * total as cudaMemGetInfo reports them, and the engine's accounted device
 * bytes. NVML, when libnvidia-ml.so.1 loads (dlopen; nothing is linked),
 * adds what the driver counts for this process on every device. */
typedef struct vlm_gpu_mem {
    bool have; /* a device was read through the probe */
    char name[128];
    uint64_t total_bytes, free_bytes;
    uint64_t used_bytes;      /* total - free: every process and every context */
    uint64_t accounted_bytes; /* the engine's device allocations now */
    uint64_t accounted_peak;  /* and their peak */
    bool have_process;        /* NVML answered */
    bool process_found;       /* this pid was among NVML's processes (not in a PID namespace
                                 of its own, where NVML lists the host's pids) */
    uint64_t process_bytes;   /* NVML: this process's device memory, all devices */
} vlm_gpu_mem;

typedef bool (*vlm_mem_gpu_probe_fn)(vlm_gpu_mem *out);
/* Install the device probe (NULL: none). */
void vlm_mem_set_gpu_probe(vlm_mem_gpu_probe_fn fn);
/* The probe's figures and NVML's; have = false without a probe or a device. */
void vlm_mem_read_gpu(vlm_gpu_mem *out);
/* NVML's figure for this process: false when NVML is not there. */
bool vlm_mem_nvml_process_bytes(uint64_t *bytes, bool *found);

typedef struct vlm_mem_snapshot {
    uint64_t time_ms; /* monotonic clock */
    vlm_proc_mem proc;
    vlm_sys_mem sys;
    vlm_cgroup_mem cgroup;
    vlm_psi psi;
    vlm_pressure_level level;
    vlm_mem_stats accounted;
    /* What the engine may still take: MemAvailable, capped by the cgroup's
     * limit minus its usage. 0 when neither is known. */
    uint64_t headroom_bytes;
    uint64_t threshold_bytes;
    bool over_threshold; /* rss_bytes > threshold_bytes */
    int threads;         /* the default thread pool's size */
    vlm_gpu_mem gpu;     /* the device (have = false: none) */
} vlm_mem_snapshot;

/* Read everything under root (NULL: the real machine). Never fails. */
void vlm_mem_snapshot_take(const char *root, vlm_mem_snapshot *out);
/* The snapshot as a JSON object (keys in docs/memory-foundation.md); NULL on
 * allocation failure. Free with cJSON_Delete. */
cJSON *vlm_mem_snapshot_to_json(const vlm_mem_snapshot *s);

/* The usage threshold; the first read takes VLM_MEM_THRESHOLD (bytes, or
 * with a K/M/G/T suffix, binary) if set. 0 turns it off. */
uint64_t vlm_mem_get_threshold(void);
void vlm_mem_set_threshold(uint64_t bytes);
/* Parse a size such as "12G", "512M", "4096"; false if garbled. */
bool vlm_mem_parse_size(const char *s, uint64_t *out);

/* RSS of this process now (0 if unknown): the cheap read, for samplers. */
uint64_t vlm_mem_rss_now(void);
uint64_t vlm_mem_time_ms(void);

/* --- cleanup ------------------------------------------------------------ */

/* A cleanup callback gives memory back and returns the bytes it freed. */
typedef size_t (*vlm_mem_cleanup_fn)(void *ctx);

#define VLM_MEM_CLEANUP_SLOTS 32

/* Register fn(ctx) to run in vlm_mem_cleanup(true, ...). VLM_ERR_LIMIT when
 * all VLM_MEM_CLEANUP_SLOTS are taken. A callback runs in whichever thread
 * calls vlm_mem_cleanup: register only what is safe there (an arena is not
 * thread-safe, so register it only if its owner is the one cleaning up). */
vlm_status vlm_mem_register_cleanup(vlm_mem_cleanup_fn fn, void *ctx, vlm_err *err);
void vlm_mem_unregister_cleanup(vlm_mem_cleanup_fn fn, void *ctx);
/* Shorthands for arenas (vlm_arena_trim). */
vlm_status vlm_mem_register_arena(vlm_arena *a, vlm_err *err);
void vlm_mem_unregister_arena(vlm_arena *a);

typedef struct vlm_mem_cleanup_result {
    uint64_t rss_before;
    uint64_t rss_after;
    int64_t released_bytes;  /* rss_before - rss_after: what the OS got back */
    uint64_t callback_bytes; /* what the registered callbacks reported freeing */
    int callbacks_run;
    bool malloc_trimmed; /* malloc_trim(0) ran (glibc) */
} vlm_mem_cleanup_result;

/* Run the registered callbacks (if run_registered), then malloc_trim(0) on
 * glibc so freed heap pages go back to the OS, and measure RSS around it. */
void vlm_mem_cleanup(bool run_registered, vlm_mem_cleanup_result *out);

/* --- scoped measurement ------------------------------------------------- */

/* A region measured from begin to end. Scopes nest (and may overlap across
 * threads); each is a caller-owned struct, nothing is allocated. The peak RSS
 * comes from VmHWM, which begin resets (via /proc/self/clear_refs) after
 * handing the peak so far to every open scope; where the reset is refused
 * the peak is exact only if the region set a new process-wide peak, else it
 * is a lower bound (peak_exact false). begin also starts a new peak window of
 * the accounted allocator (vlm_alloc_reset_peaks), in the same way. */
typedef struct vlm_mem_scope {
    char name[64];
    uint64_t t0_ms;
    uint64_t rss_start;
    uint64_t accounted_start;
    uint64_t rss_peak_carried; /* VmHWM values seen at nested resets */
    uint64_t acc_peak_carried;
    bool hwm_reset_ok;
    uint64_t hwm_start;
    struct vlm_mem_scope *next_open; /* list of open scopes */
    bool open;
} vlm_mem_scope;

typedef struct vlm_mem_scope_result {
    char name[64];
    double wall_ms;
    uint64_t rss_start, rss_end, rss_peak;
    int64_t rss_delta; /* rss_end - rss_start */
    uint64_t accounted_start, accounted_end, accounted_peak;
    int64_t accounted_delta;
    bool peak_exact;
} vlm_mem_scope_result;

void vlm_mem_scope_begin(vlm_mem_scope *s, const char *name);
void vlm_mem_scope_end(vlm_mem_scope *s, vlm_mem_scope_result *out);

/* --- the background sampler --------------------------------------------- */

typedef struct vlm_mem_sample {
    uint64_t t_ms; /* since the sampler started */
    uint64_t rss_bytes;
    uint64_t accounted[VLM_MEM_CAT_COUNT];
    uint64_t accounted_total;
    uint64_t mapped_bytes;
    uint64_t gpu_bytes;     /* from the gpu_bytes callback, else the device's used bytes (the
                               probe's total - free); 0 without a GPU */
    uint64_t gpu_accounted; /* the engine's device allocations (the probe); 0 without */
} vlm_mem_sample;

typedef struct vlm_mem_sampler vlm_mem_sampler;

/* Called in the sampler's thread when RSS passes the threshold (once per
 * crossing; it re-arms when RSS falls below), after the cleanup has run. */
typedef void (*vlm_mem_alarm_fn)(void *ctx, const vlm_mem_sample *s, uint64_t threshold,
                                 const vlm_mem_cleanup_result *cleanup);

typedef struct vlm_mem_sampler_config {
    unsigned interval_ms;     /* 0: 50 */
    size_t capacity;          /* samples kept (a ring: the oldest go); 0: 4096 */
    uint64_t threshold_bytes; /* 0: vlm_mem_get_threshold(); VLM_MEM_NO_LIMIT: off */
    /* On a crossing: cleanup (malloc_trim only, unless cleanup_registered;
     * see vlm_mem_register_cleanup on threads), then a warning, then alarm. */
    bool cleanup_registered;
    vlm_mem_alarm_fn alarm;
    void *alarm_ctx;
    uint64_t (*gpu_bytes)(void *ctx); /* device bytes in use; NULL: the GPU probe's used bytes */
    void *gpu_ctx;
} vlm_mem_sampler_config;

/* Start sampling (a first sample is taken before it returns). cfg may be
 * NULL for the defaults. */
vlm_status vlm_mem_sampler_start(const vlm_mem_sampler_config *cfg, vlm_mem_sampler **out,
                                 vlm_err *err);
/* Take a last sample and stop the thread; the samples stay readable. */
void vlm_mem_sampler_stop(vlm_mem_sampler *s);
void vlm_mem_sampler_destroy(vlm_mem_sampler *s);

/* Samples kept, and samples taken in all (more once the ring wrapped). */
size_t vlm_mem_sampler_count(vlm_mem_sampler *s);
uint64_t vlm_mem_sampler_taken(vlm_mem_sampler *s);
/* Copy sample i (0 = oldest kept); false if out of range. */
bool vlm_mem_sampler_get(vlm_mem_sampler *s, size_t i, vlm_mem_sample *out);
/* The sample with the highest RSS and the highest accounted total seen
 * (over every sample taken, also those the ring dropped). */
void vlm_mem_sampler_peak(vlm_mem_sampler *s, vlm_mem_sample *rss_peak,
                          vlm_mem_sample *accounted_peak);
/* The sample with the most device bytes in use (gpu_bytes). */
void vlm_mem_sampler_gpu_peak(vlm_mem_sampler *s, vlm_mem_sample *gpu_peak);
/* Times the alarm fired. */
unsigned vlm_mem_sampler_alarms(vlm_mem_sampler *s);
/* The timeline as JSON: {"interval_ms", "taken", "samples": [...],
 * "peak_rss", "peak_accounted", "peak_gpu"}. */
cJSON *vlm_mem_sampler_to_json(vlm_mem_sampler *s);

#endif
