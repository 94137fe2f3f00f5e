#include "base/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -1: not read from the environment yet. */
static atomic_int log_level = -1;

int vlm_log_parse_level(const char *s) {
    static const char *const names[] = {"debug", "info", "warn", "error", "off"};
    if (!s) return -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) return i;
    if (strcmp(s, "warning") == 0) return VLM_LOG_WARN;
    return -1;
}

vlm_log_level vlm_log_get_level(void) {
    int lv = atomic_load_explicit(&log_level, memory_order_relaxed);
    if (lv < 0) {
        lv = vlm_log_parse_level(getenv("VLM_LOG"));
        if (lv < 0) lv = VLM_LOG_WARN;
        atomic_store_explicit(&log_level, lv, memory_order_relaxed);
    }
    return (vlm_log_level)lv;
}

void vlm_log_set_level(vlm_log_level level) {
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

void vlm_log(vlm_log_level level, const char *fmt, ...) {
    static const char *const tags[] = {"debug", "info", "warn", "error"};
    if (level < vlm_log_get_level() || level >= VLM_LOG_OFF) return;
    /* One formatted line per call, written with a single fputs so lines from
     * several threads do not interleave. */
    char line[1024];
    int n = snprintf(line, sizeof line, "vlmtest %s: ", tags[level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    if (len + 1 < sizeof line && (len == 0 || line[len - 1] != '\n')) {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}
