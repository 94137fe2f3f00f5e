#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[VLM_STATUS_COUNT] = {
    [VLM_OK] = "ok",
    [VLM_ERR_NOMEM] = "out_of_memory",
    [VLM_ERR_IO] = "io_error",
    [VLM_ERR_FORMAT] = "bad_format",
    [VLM_ERR_INVALID_ARG] = "invalid_argument",
    [VLM_ERR_NOT_FOUND] = "not_found",
    [VLM_ERR_UNSUPPORTED] = "unsupported",
    [VLM_ERR_LIMIT] = "over_limit",
    [VLM_ERR_DEVICE] = "device_error",
    [VLM_ERR_CANCELLED] = "cancelled",
    [VLM_ERR_INTERNAL] = "internal_error",
};

const char *vlm_status_name(vlm_status s) {
    if ((unsigned)s >= VLM_STATUS_COUNT) return "unknown";
    return status_names[s];
}

vlm_status vlm_err_set(vlm_err *err, vlm_status s, const char *fmt, ...) {
    if (!err) return s;
    err->status = s;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return s;
}

vlm_status vlm_err_prefix(vlm_err *err, const char *fmt, ...) {
    if (!err) return VLM_OK;
    char prefix[VLM_ERR_MSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[VLM_ERR_MSG_SIZE];
    memcpy(old, err->msg, sizeof old);
    /* Built piecewise: the two parts may together exceed the buffer. */
    size_t n = strnlen(prefix, sizeof err->msg - 1);
    memcpy(err->msg, prefix, n);
    const char sep[] = ": ";
    for (size_t i = 0; sep[i] && n < sizeof err->msg - 1; i++) err->msg[n++] = sep[i];
    size_t m = strnlen(old, sizeof old);
    if (m > sizeof err->msg - 1 - n) m = sizeof err->msg - 1 - n;
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = '\0';
    return err->status;
}

void vlm_err_clear(vlm_err *err) {
    if (!err) return;
    err->status = VLM_OK;
    err->msg[0] = '\0';
}
