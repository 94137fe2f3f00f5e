/* tester/memprobe - process memory as the kernel sees it: VmRSS and VmHWM
 * from /proc/PID/status, resetting the high-water mark, and the cgroup's
 * memory limit and oom_kill counter.
 *
 * A small stand-in kept apart on purpose: the memory monitor (src/mem/
 * monitor) will own these readings; switching means changing these few
 * functions. */
#ifndef VLM_TESTER_MEMPROBE_H
#define VLM_TESTER_MEMPROBE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* VmRSS and VmHWM of pid (0: this process) in bytes; false if unreadable
 * (the process is gone). */
bool memprobe_read(pid_t pid, uint64_t *rss, uint64_t *hwm);
/* Reset this process's VmHWM to its current RSS (/proc/self/clear_refs "5"),
 * so the next reading is the peak of the window that starts now. */
void memprobe_reset_hwm(void);
/* oom_kill count from this cgroup's memory.events (cgroup v2); -1 if none. */
int64_t memprobe_cgroup_oom_kills(void);
/* The machine's oom_kill count from /proc/vmstat (the kernel OOM killer
 * outside any cgroup limit); -1 if unknown. */
int64_t memprobe_global_oom_kills(void);
/* This cgroup's memory.max in bytes; 0 if unlimited or unknown. */
uint64_t memprobe_cgroup_limit(void);
/* Milliseconds on the monotonic clock. */
double memprobe_now_ms(void);

#endif
