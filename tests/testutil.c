#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *rotate(const char *base, const char *rel) {
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", base, rel);
    return b;
}

const char *tu_src(const char *rel) {
    return rotate(VLM_SOURCE_DIR, rel);
}
const char *tu_shared(const char *rel) {
    const char *env = getenv("VLM_SHARED_DIR");
    return rotate(env && *env ? env : VLM_SHARED_DIR, rel);
}
const char *tu_build(const char *rel) {
    return rotate(VLM_BUILD_DIR, rel);
}

bool tu_have_shared(void) {
    struct stat st;
    return stat(tu_shared("models/phi-3-vision-128k-instruct/tokenizer.json"), &st) == 0;
}

char *tu_mkdtemp(void) {
    char tmpl[] = "/tmp/vlmtest-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void tu_rmtree(const char *dir) {
    if (!dir || strncmp(dir, "/tmp/vlmtest-", 13) != 0) return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

void *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len) *len = (size_t)n;
    }
    return buf;
}

bool tu_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}
