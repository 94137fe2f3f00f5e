/* tester/memprobe - readings on top of mem/monitor (see memprobe.h). */
#include "tester/memprobe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cgroup.h"
#include "mem/monitor.h"

double memprobe_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

bool memprobe_read(pid_t pid, uint64_t *rss, uint64_t *hwm) {
    vlm_proc_mem pm;
    if (pid == 0) {
        vlm_mem_read_proc(NULL, &pm);
    } else {
        char path[64], buf[8192];
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
        if (vlm_read_small_file(path, buf, sizeof buf) < 0) return false;
        vlm_mem_parse_proc_status(buf, &pm);
    }
    if (rss) *rss = pm.rss_bytes;
    if (hwm) *hwm = pm.hwm_bytes;
    return pm.have;
}

int64_t memprobe_cgroup_oom_kills(void) {
    vlm_cgroup_mem cg;
    return vlm_mem_read_cgroup(NULL, &cg) ? (int64_t)cg.oom_kills : -1;
}

uint64_t memprobe_cgroup_limit(void) {
    vlm_cgroup_mem cg;
    if (!vlm_mem_read_cgroup(NULL, &cg) || cg.limit_bytes == VLM_MEM_NO_LIMIT) return 0;
    return cg.limit_bytes;
}

int64_t memprobe_global_oom_kills(void) {
    /* /proc/vmstat is ~6 KiB; oom_kill sits near its end. */
    char buf[16384];
    if (vlm_read_small_file("/proc/vmstat", buf, sizeof buf) < 0) return -1;
    const char *p = strstr(buf, "\noom_kill ");
    return p ? (int64_t)strtoll(p + 10, NULL, 10) : -1;
}
