/* io/hf - resolving model references to local folders. */
#include "io/hf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "base/file.h"

#define HF_PATH_MAX 4096

/* snprintf that reports truncation (paths too long are refused, not cut). */
static bool fmt(char *buf, size_t cap, const char *f, ...) VLM_PRINTF(3, 4);
static bool fmt(char *buf, size_t cap, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, cap, f, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap;
}

static bool repo_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/* Check one part of org/name: non-empty, allowed characters, not "." or "..". */
static bool part_ok(const char *s, size_t n) {
    if (n == 0 || n > 96) return false;
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return false;
    for (size_t i = 0; i < n; i++)
        if (!repo_char(s[i])) return false;
    return true;
}

/* A revision: a branch, tag or commit. Branch names may hold '/', so refs
 * can nest ("refs/pr/1"); refuse anything that could climb out. */
static bool revision_ok(const char *r) {
    size_t n = strlen(r);
    if (n == 0 || n > 255 || r[0] == '/' || r[n - 1] == '/') return false;
    if (strstr(r, "..") || strstr(r, "//")) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)r[i] <= 0x20 || r[i] == 0x7f || r[i] == '\\') return false;
    return true;
}

bool vlm_hf_is_repo_id(const char *ref) {
    if (!ref) return false;
    const char *slash = strchr(ref, '/');
    if (!slash) return false;
    const char *at = strchr(slash, '@');
    size_t name_len = at ? (size_t)(at - slash - 1) : strlen(slash + 1);
    if (!part_ok(ref, (size_t)(slash - ref)) || !part_ok(slash + 1, name_len)) return false;
    return !at || revision_ok(at + 1);
}

static bool is_commit(const char *s) {
    size_t n = strlen(s);
    if (n != 40) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* Append "; what" to the list of places looked at (cut when full). */
static void note(char *list, size_t cap, const char *path, const char *why) {
    size_t n = strlen(list);
    if (n + 8 >= cap) return;
    fmt(list + n, cap - n, "%s%s (%s)", n ? "; " : "", path, why);
}

/* The candidate cache folders, in order, without repeats. */
static int cache_dirs(char dirs[4][HF_PATH_MAX]) {
    int n = 0;
    const char *hub = getenv("HF_HUB_CACHE"), *home = getenv("HF_HOME");
    const char *xdg = getenv("XDG_CACHE_HOME"), *user = getenv("HOME");
    char tmp[HF_PATH_MAX];
    for (int k = 0; k < 4; k++) {
        tmp[0] = '\0';
        bool ok = false;
        if (k == 0 && hub && *hub) ok = fmt(tmp, sizeof tmp, "%s", hub);
        if (k == 1 && home && *home) ok = fmt(tmp, sizeof tmp, "%s/hub", home);
        if (k == 2 && xdg && *xdg) ok = fmt(tmp, sizeof tmp, "%s/huggingface/hub", xdg);
        if (k == 3 && user && *user) ok = fmt(tmp, sizeof tmp, "%s/.cache/huggingface/hub", user);
        if (!ok) continue;
        bool dup = false;
        for (int j = 0; j < n; j++) dup |= strcmp(dirs[j], tmp) == 0;
        if (!dup) memcpy(dirs[n++], tmp, sizeof tmp);
    }
    return n;
}

/* Read the commit hash a refs/<revision> file holds; false if unreadable. */
static bool read_ref(const char *path, char commit[64]) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[128] = {0};
    bool ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!ok) return false;
    size_t n = strcspn(line, " \t\r\n");
    line[n] = '\0';
    if (n == 0 || n >= 64) return false;
    memcpy(commit, line, n + 1);
    return true;
}

vlm_status vlm_hf_resolve(const char *ref, char **out, vlm_err *err) {
    *out = NULL;
    if (!ref || !*ref) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "empty model reference");
    struct stat sb;
    if (stat(ref, &sb) == 0) {
        *out = vlm_strdup(ref, VLM_MEM_OTHER);
        return *out ? VLM_OK : vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", ref);
    }
    char looked[VLM_ERR_MSG_SIZE];
    looked[0] = '\0';
    note(looked, sizeof looked, ref, "no such file or folder");
    if (!vlm_hf_is_repo_id(ref))
        return vlm_err_set(err, VLM_ERR_NOT_FOUND,
                           "model \"%s\" not found: not a path, and not an org/name[@revision] "
                           "reference; looked at: %s",
                           ref, looked);
    char org[128], name[128], rev[256];
    const char *slash = strchr(ref, '/');
    const char *at = strchr(slash, '@');
    fmt(org, sizeof org, "%.*s", (int)(slash - ref), ref);
    fmt(name, sizeof name, "%.*s", (int)(at ? at - slash - 1 : (long)strlen(slash + 1)), slash + 1);
    fmt(rev, sizeof rev, "%s", at ? at + 1 : "main");

    char dirs[4][HF_PATH_MAX];
    int nd = cache_dirs(dirs);
    if (nd == 0) note(looked, sizeof looked, "$HF_HUB_CACHE, $HF_HOME, $HOME", "none set");
    char path[HF_PATH_MAX + 512], snap[HF_PATH_MAX + 512];
    for (int i = 0; i < nd; i++) {
        char commit[64];
        fmt(commit, sizeof commit, "%.40s", rev);
        if (!is_commit(rev)) {
            if (!fmt(path, sizeof path, "%s/models--%s--%s/refs/%s", dirs[i], org, name, rev) ||
                !read_ref(path, commit)) {
                note(looked, sizeof looked, path, "missing");
                continue;
            }
            if (!is_commit(commit)) {
                note(looked, sizeof looked, path, "does not hold a commit hash");
                continue;
            }
        }
        if (fmt(snap, sizeof snap, "%s/models--%s--%s/snapshots/%s", dirs[i], org, name, commit) &&
            vlm_file_is_dir(snap)) {
            *out = vlm_strdup(snap, VLM_MEM_OTHER);
            return *out ? VLM_OK : vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", snap);
        }
        note(looked, sizeof looked, snap, "missing");
    }
    return vlm_err_set(err, VLM_ERR_NOT_FOUND, "model \"%s\" not found; looked at: %s", ref,
                       looked);
}
