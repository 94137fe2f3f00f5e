/* base/status - setting errors with a formatted message. */
#ifndef VLM_BASE_STATUS_H
#define VLM_BASE_STATUS_H

#include "vlm/status.h"

#if defined(__GNUC__)
#define VLM_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define VLM_PRINTF(f, a)
#endif

/* Set err (which may be NULL) to status s with a printf-style message and
 * return s, so callers can write `return vlm_err_set(err, ...);`. */
vlm_status vlm_err_set(vlm_err *err, vlm_status s, const char *fmt, ...) VLM_PRINTF(3, 4);

/* Put "prefix: " in front of an existing message (for adding context such as
 * a file name while an error travels up). Returns err->status. */
vlm_status vlm_err_prefix(vlm_err *err, const char *fmt, ...) VLM_PRINTF(2, 3);

/* Reset err to VLM_OK with an empty message. */
void vlm_err_clear(vlm_err *err);

#endif
