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

static bool read_small(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    return true;
}

/* Read a memory-controller file of this process's cgroup: cgroup v2
 * ("0::/path", file v2name) or v1 ("N:memory:/path", file v1name). Inside a
 * container the path from /proc/self/cgroup may not exist in the mounted
 * hierarchy, whose root is then the container's own cgroup: fall back to it. */
static bool cgroup_read(const char *v2name, const char *v1name, char *buf, size_t size) {
    char self[2048];
    if (!read_small("/proc/self/cgroup", self, sizeof self)) return false;
    char path[1024], *save = NULL;
    for (char *line = strtok_r(self, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = *c2 = '\0';
        const char *ctrl = c1 + 1, *cg = c2 + 1;
        if (strcmp(cg, "/") == 0) cg = "";
        if (strcmp(line, "0") == 0 && ctrl[0] == '\0') {
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/%s", cg, v2name);
            if (read_small(path, buf, size)) return true;
            snprintf(path, sizeof path, "/sys/fs/cgroup/%s", v2name);
            if (read_small(path, buf, size)) return true;
        } else if (strstr(ctrl, "memory")) {
            snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/%s", cg, v1name);
            if (read_small(path, buf, size)) return true;
            snprintf(path, sizeof path, "/sys/fs/cgroup/memory/%s", v1name);
            if (read_small(path, buf, size)) return true;
        }
    }
    return false;
}

int64_t memprobe_cgroup_oom_kills(void) {
    char buf[2048];
    if (!cgroup_read("memory.events", "memory.oom_control", buf, sizeof buf)) return -1;
    const char *p = strstr(buf, "oom_kill ");
    return p ? (int64_t)strtoll(p + 9, NULL, 10) : -1;
}

int64_t memprobe_global_oom_kills(void) {
    /* /proc/vmstat is ~6 KiB; oom_kill sits near its end. */
    int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[16384];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    const char *p = strstr(buf, "\noom_kill ");
    return p ? (int64_t)strtoll(p + 10, NULL, 10) : -1;
}

uint64_t memprobe_cgroup_limit(void) {
    char buf[64];
    if (!cgroup_read("memory.max", "memory.limit_in_bytes", buf, sizeof buf) ||
        strncmp(buf, "max", 3) == 0)
        return 0;
    uint64_t v = strtoull(buf, NULL, 10);
    return v >= (1ull << 62) ? 0 : v; /* v1 writes "no limit" as a huge number */
}
