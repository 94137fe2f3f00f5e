/* tester/memprobe - /proc and cgroup readings (see memprobe.h). */
#include "tester/memprobe.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double memprobe_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

bool memprobe_read(pid_t pid, uint64_t *rss, uint64_t *hwm) {
    char path[64];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    /* open/read rather than stdio: this runs in a poll loop and in forked
     * children, and must not allocate. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    uint64_t r = 0, h = 0;
    bool got = false;
    const char *p = strstr(buf, "VmRSS:");
    if (p) {
        r = strtoull(p + 6, NULL, 10) * 1024;
        got = true;
    }
    p = strstr(buf, "VmHWM:");
    if (p) h = strtoull(p + 6, NULL, 10) * 1024;
    if (rss) *rss = r;
    if (hwm) *hwm = h;
    return got; /* a zombie has no VmRSS line */
}

void memprobe_reset_hwm(void) {
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t w = write(fd, "5", 1);
    (void)w;
    close(fd);
}

/* The cgroup v2 folder of this process, from /proc/self/cgroup ("0::/path"). */
static bool cgroup_dir(char *out, size_t size) {
    int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    char *p = strstr(buf, "0::");
    if (!p) return false;
    p += 3;
    char *nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    snprintf(out, size, "/sys/fs/cgroup%s", strcmp(p, "/") == 0 ? "" : p);
    return true;
}

static bool read_small(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    return true;
}

int64_t memprobe_cgroup_oom_kills(void) {
    char dir[512], path[600], buf[2048];
    if (!cgroup_dir(dir, sizeof dir)) return -1;
    snprintf(path, sizeof path, "%s/memory.events", dir);
    if (!read_small(path, buf, sizeof buf)) return -1;
    const char *p = strstr(buf, "oom_kill ");
    return p ? (int64_t)strtoll(p + 9, NULL, 10) : -1;
}

uint64_t memprobe_cgroup_limit(void) {
    char dir[512], path[600], buf[64];
    if (!cgroup_dir(dir, sizeof dir)) return 0;
    snprintf(path, sizeof path, "%s/memory.max", dir);
    if (!read_small(path, buf, sizeof buf) || strncmp(buf, "max", 3) == 0) return 0;
    return strtoull(buf, NULL, 10);
}
