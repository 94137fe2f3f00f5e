/* base/cgroup - where this process's control group lives, and small readers
 * for the files of /proc and /sys that the thread pool and the memory monitor
 * look at.
 *
 * Every function takes a root directory that is put in front of /proc/... and
 * /sys/...: "" or NULL reads the real machine, a fixture folder such as
 * tests/data/proc/v2 reads copies, so the parsers are tested on cgroup v1, v2,
 * missing and garbled files without needing such a machine. */
#ifndef VLM_BASE_CGROUP_H
#define VLM_BASE_CGROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VLM_CGROUP_PATH_MAX 1024

typedef struct vlm_cgroup {
    int version;                     /* 1 or 2; 0 when not found */
    char mount[VLM_CGROUP_PATH_MAX]; /* root + mount point of the hierarchy */
    char dir[VLM_CGROUP_PATH_MAX];   /* root + the process's group, under mount */
} vlm_cgroup;

/* Find the group of this process that governs `controller` ("memory",
 * "cpu"): a cgroup v1 hierarchy that carries the controller if there is one
 * (hybrid machines keep memory on v1), else the unified v2 hierarchy. Uses
 * root/proc/self/cgroup and root/proc/self/mountinfo; without mountinfo it
 * assumes the usual mount at /sys/fs/cgroup. When the group's directory is
 * not visible (a container that sees its own group as the root), dir is the
 * mount point. False when nothing usable is found. */
bool vlm_cgroup_find(const char *root, const char *controller, vlm_cgroup *out);

/* Move cg->dir one level up; false once it is the mount point. Limits are
 * hierarchical: the tightest of the group and its ancestors applies. */
bool vlm_cgroup_parent(vlm_cgroup *cg);

/* Read a small text file (up to cap-1 bytes, NUL-terminated). Returns the
 * length, or -1 when it cannot be opened or read. Works on /proc files, whose
 * size reads as 0. */
long vlm_read_small_file(const char *path, char *buf, size_t cap);

/* root + rel into buf ("" / NULL root: rel alone). False if it does not fit. */
bool vlm_path_join(char *buf, size_t cap, const char *root, const char *rel);

/* Parse a decimal unsigned integer at *s (leading blanks skipped), advancing
 * *s past it. False when no digits or on overflow. */
bool vlm_parse_u64(const char **s, uint64_t *out);

/* CPU quota of the process's cgroup in CPUs (cpu.max "quota period" on v2,
 * cpu.cfs_quota_us / cpu.cfs_period_us on v1), the tightest over the group
 * and its ancestors. False when there is no quota ("max", -1, no cgroup) or
 * the files are unreadable or garbled. */
bool vlm_cgroup_cpu_quota(const char *root, double *cpus);

#endif
