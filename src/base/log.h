/* base/log - leveled logging to stderr.
 *
 * The level comes from VLM_LOG=debug|info|warn|error (default warn), read
 * once on first use; vlm_log_set_level overrides it. */
#ifndef VLM_BASE_LOG_H
#define VLM_BASE_LOG_H

#include "base/status.h"

typedef enum vlm_log_level {
    VLM_LOG_DEBUG = 0,
    VLM_LOG_INFO,
    VLM_LOG_WARN,
    VLM_LOG_ERROR,
    VLM_LOG_OFF
} vlm_log_level;

vlm_log_level vlm_log_get_level(void);
void vlm_log_set_level(vlm_log_level level);
/* Parse "debug", "info", "warn", "error", "off"; returns -1 if unknown. */
int vlm_log_parse_level(const char *s);

void vlm_log(vlm_log_level level, const char *fmt, ...) VLM_PRINTF(2, 3);

#define VLM_DEBUG(...) vlm_log(VLM_LOG_DEBUG, __VA_ARGS__)
#define VLM_INFO(...)  vlm_log(VLM_LOG_INFO, __VA_ARGS__)
#define VLM_WARN(...)  vlm_log(VLM_LOG_WARN, __VA_ARGS__)
#define VLM_ERROR(...) vlm_log(VLM_LOG_ERROR, __VA_ARGS__)

#endif
