/* base/cgroup - see cgroup.h. */
#include "base/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

long vlm_read_small_file(const char *path, char *buf, size_t cap) {
    if (!buf || cap == 0) return -1;
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0) {
            if (errno == EINTR) continue;
            close(fd);
            buf[0] = '\0';
            return -1;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (long)len;
}

bool vlm_path_join(char *buf, size_t cap, const char *root, const char *rel) {
    int n = snprintf(buf, cap, "%s%s", root ? root : "", rel);
    return n >= 0 && (size_t)n < cap;
}

bool vlm_parse_u64(const char **s, uint64_t *out) {
    const char *p = *s;
    while (*p == ' ' || *p == '\t') p++;
    if (*p < '0' || *p > '9') return false;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
        p++;
    }
    *s = p;
    *out = v;
    return true;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* True if the comma-separated list has the token. */
static bool list_has(const char *list, size_t len, const char *token) {
    size_t tl = strlen(token);
    const char *p = list, *end = list + len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t l = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (l == tl && memcmp(p, token, tl) == 0) return true;
        p += l + 1;
    }
    return false;
}

/* The path of this process's group in the v1 hierarchy carrying controller
 * (version 1) or in the unified hierarchy (version 2), from
 * /proc/self/cgroup lines "ID:CONTROLLERS:PATH". */
static bool proc_cgroup_path(const char *text, const char *controller, int version, char *path,
                             size_t cap) {
    const char *line = text;
    while (*line) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        const char *c1 = memchr(line, ':', len);
        const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - line)) : NULL;
        if (c2) {
            size_t clen = (size_t)(c2 - c1 - 1);
            bool match = version == 2 ? (clen == 0 && c1 - line == 1 && line[0] == '0')
                                      : (clen > 0 && list_has(c1 + 1, clen, controller));
            size_t plen = len - (size_t)(c2 + 1 - line);
            if (match && plen > 0 && c2[1] == '/' && plen < cap) {
                memcpy(path, c2 + 1, plen);
                path[plen] = '\0';
                return true;
            }
        }
        if (!nl) break;
        line = nl + 1;
    }
    return false;
}

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape_octal(char *s) {
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
}

/* Find in mountinfo the mount of the v1 hierarchy with controller (version
 * 1) or of cgroup2 (version 2): its mount point and the group path that is
 * its root. Lines: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] -
 * FSTYPE SOURCE SUPEROPTS". */
static bool mountinfo_find(const char *path, const char *controller, int version, char *mnt,
                           size_t mnt_cap, char *mroot, size_t mroot_cap) {
    FILE *f = fopen(path, "re");
    if (!f) return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char *fields[6] = {0};
        char *save = NULL;
        char *tok = strtok_r(line, " \n", &save);
        int i = 0;
        for (; tok && i < 6; i++, tok = strtok_r(NULL, " \n", &save)) fields[i] = tok;
        if (i < 6) continue;
        /* skip optional fields up to the "-" separator */
        while (tok && strcmp(tok, "-") != 0) tok = strtok_r(NULL, " \n", &save);
        if (!tok) continue;
        char *fstype = strtok_r(NULL, " \n", &save);
        char *source = strtok_r(NULL, " \n", &save);
        char *superopts = strtok_r(NULL, " \n", &save);
        if (!fstype || !source) continue;
        if (version == 2) {
            found = strcmp(fstype, "cgroup2") == 0;
        } else {
            found = strcmp(fstype, "cgroup") == 0 && superopts &&
                    list_has(superopts, strlen(superopts), controller);
        }
        if (found) {
            unescape_octal(fields[3]);
            unescape_octal(fields[4]);
            if (strlen(fields[4]) >= mnt_cap || strlen(fields[3]) >= mroot_cap) {
                found = false;
                continue;
            }
            strcpy(mnt, fields[4]);
            strcpy(mroot, fields[3]);
        }
    }
    fclose(f);
    return found;
}

/* Build out->dir from the mount and the group path, falling back to the
 * mount point when the group's directory is not there. */
static bool cgroup_resolve(const char *root, const char *mnt, const char *mroot, const char *gpath,
                           int version, vlm_cgroup *out) {
    char full_mnt[VLM_CGROUP_PATH_MAX];
    if (!vlm_path_join(full_mnt, sizeof full_mnt, root, mnt) || !is_dir(full_mnt)) return false;
    /* The group path is relative to the hierarchy's root; the mount may
     * show only a subtree of it (mroot). */
    const char *rel = gpath;
    size_t rl = strlen(mroot);
    if (strcmp(mroot, "/") != 0) {
        if (strncmp(gpath, mroot, rl) == 0 && (gpath[rl] == '/' || gpath[rl] == '\0'))
            rel = gpath + rl;
        else
            rel = "";
    }
    if (strcmp(rel, "/") == 0) rel = "";
    out->version = version;
    snprintf(out->mount, sizeof out->mount, "%s", full_mnt);
    char dir[VLM_CGROUP_PATH_MAX];
    int n = snprintf(dir, sizeof dir, "%s%s", full_mnt, rel);
    if (n > 0 && (size_t)n < sizeof dir && is_dir(dir))
        snprintf(out->dir, sizeof out->dir, "%s", dir);
    else
        snprintf(out->dir, sizeof out->dir, "%s", full_mnt);
    return true;
}

bool vlm_cgroup_find(const char *root, const char *controller, vlm_cgroup *out) {
    memset(out, 0, sizeof *out);
    char path[VLM_CGROUP_PATH_MAX];
    char text[8192];
    if (!vlm_path_join(path, sizeof path, root, "/proc/self/cgroup") ||
        vlm_read_small_file(path, text, sizeof text) < 0)
        text[0] = '\0';
    char mountinfo[VLM_CGROUP_PATH_MAX];
    if (!vlm_path_join(mountinfo, sizeof mountinfo, root, "/proc/self/mountinfo")) return false;

    char gpath[VLM_CGROUP_PATH_MAX], mnt[VLM_CGROUP_PATH_MAX], mroot[VLM_CGROUP_PATH_MAX];
    for (int version = 1; version <= 2; version++) {
        if (!proc_cgroup_path(text, controller, version, gpath, sizeof gpath)) continue;
        if (mountinfo_find(mountinfo, controller, version, mnt, sizeof mnt, mroot, sizeof mroot) &&
            cgroup_resolve(root, mnt, mroot, gpath, version, out))
            return true;
        /* No mountinfo (or no such mount listed): the usual places. */
        const char *guess = version == 2 ? "/sys/fs/cgroup" : NULL;
        char v1guess[64];
        if (version == 1) {
            snprintf(v1guess, sizeof v1guess, "/sys/fs/cgroup/%s", controller);
            guess = v1guess;
        }
        if (cgroup_resolve(root, guess, "/", gpath, version, out)) return true;
    }
    return false;
}

bool vlm_cgroup_parent(vlm_cgroup *cg) {
    size_t ml = strlen(cg->mount);
    size_t dl = strlen(cg->dir);
    if (dl <= ml) return false;
    char *slash = strrchr(cg->dir, '/');
    if (!slash || (size_t)(slash - cg->dir) < ml) return false;
    *slash = '\0';
    return true;
}

/* One level's quota in CPUs; false when unlimited or unreadable. */
static bool level_quota(const vlm_cgroup *cg, double *cpus) {
    char path[VLM_CGROUP_PATH_MAX + 32], buf[128];
    uint64_t quota, period;
    if (cg->version == 2) {
        snprintf(path, sizeof path, "%s/cpu.max", cg->dir);
        if (vlm_read_small_file(path, buf, sizeof buf) < 0) return false;
        const char *p = buf;
        if (!vlm_parse_u64(&p, &quota) || !vlm_parse_u64(&p, &period)) return false;
    } else {
        snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", cg->dir);
        if (vlm_read_small_file(path, buf, sizeof buf) < 0) return false;
        const char *p = buf;
        if (!vlm_parse_u64(&p, &quota)) return false; /* "-1": no quota */
        snprintf(path, sizeof path, "%s/cpu.cfs_period_us", cg->dir);
        if (vlm_read_small_file(path, buf, sizeof buf) < 0) return false;
        p = buf;
        if (!vlm_parse_u64(&p, &period)) return false;
    }
    if (quota == 0 || period == 0) return false;
    *cpus = (double)quota / (double)period;
    return true;
}

bool vlm_cgroup_cpu_quota(const char *root, double *cpus) {
    vlm_cgroup cg;
    if (!vlm_cgroup_find(root, "cpu", &cg)) return false;
    bool any = false;
    double best = 0;
    do {
        double q;
        if (level_quota(&cg, &q) && (!any || q < best)) {
            best = q;
            any = true;
        }
    } while (vlm_cgroup_parent(&cg));
    if (any) *cpus = best;
    return any;
}
