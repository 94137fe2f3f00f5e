/* tester/memprobe - the few readings the supervisor needs that the memory
 * monitor (src/mem/monitor) has no call for: another process's VmRSS/VmHWM
 * (the monitor reads only its own), the machine-wide OOM-kill count, and a
 * fractional-millisecond clock. The parsing, the cgroup and the per-case
 * peaks are the monitor's (vlm_mem_parse_proc_status, vlm_mem_read_cgroup,
 * vlm_mem_scope_begin/end). */
#ifndef VLM_TESTER_MEMPROBE_H
#define VLM_TESTER_MEMPROBE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* VmRSS and VmHWM of pid (0: this process) in bytes; false if unreadable
 * (the process is gone, or a zombie without VmRSS). Does not allocate: it
 * runs in the supervisor's poll loop. */
bool memprobe_read(pid_t pid, uint64_t *rss, uint64_t *hwm);
/* oom_kill count of this process's memory cgroup; -1 if there is none. */
int64_t memprobe_cgroup_oom_kills(void);
/* The machine's oom_kill count from /proc/vmstat (the kernel OOM killer
 * outside any cgroup limit); -1 if unknown. */
int64_t memprobe_global_oom_kills(void);
/* The cgroup's memory limit in bytes (the tightest over its ancestors); 0
 * if unlimited or unknown. */
uint64_t memprobe_cgroup_limit(void);
/* Milliseconds on the monotonic clock. */
double memprobe_now_ms(void);

#endif
