/* base/json - cJSON (Debian's libcjson) with its allocations routed through
 * the accounted allocator, plus small typed accessors that produce messages
 * naming the file and the key at fault. */
#ifndef VLM_BASE_JSON_H
#define VLM_BASE_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* Install the allocator hooks (idempotent, thread-safe). Every function here
 * calls it; call it yourself before using cJSON_* directly. */
void vlm_json_init(void);

/* For callers of cJSON_Parse* directly: reset before parsing; true after if
 * an allocation on this thread failed meanwhile (cJSON reports that as a
 * syntax error). vlm_json_parse does this itself and returns VLM_ERR_NOMEM. */
void vlm_json_alloc_reset(void);
bool vlm_json_alloc_failed(void);

/* Parse len bytes (need not be NUL-terminated). `what` names the source in
 * messages (a path, "tokenizer.json", ...). Reports the byte offset of a
 * syntax error. Free the result with cJSON_Delete. */
vlm_status vlm_json_parse(const char *text, size_t len, const char *what, cJSON **out,
                          vlm_err *err);
/* Read and parse a whole file. */
vlm_status vlm_json_parse_file(const char *path, cJSON **out, vlm_err *err);

/* Typed getters. A missing key gives VLM_ERR_NOT_FOUND, a wrong type
 * VLM_ERR_FORMAT; both messages name `what` and the key. The _opt variants
 * leave *out untouched and return VLM_OK when the key is absent or null. */
vlm_status vlm_json_get_int(const cJSON *obj, const char *key, const char *what, int64_t *out,
                            vlm_err *err);
vlm_status vlm_json_get_int_opt(const cJSON *obj, const char *key, const char *what, int64_t *out,
                                vlm_err *err);
vlm_status vlm_json_get_double(const cJSON *obj, const char *key, const char *what, double *out,
                               vlm_err *err);
vlm_status vlm_json_get_double_opt(const cJSON *obj, const char *key, const char *what, double *out,
                                   vlm_err *err);
vlm_status vlm_json_get_bool_opt(const cJSON *obj, const char *key, const char *what, bool *out,
                                 vlm_err *err);
/* The returned string points into obj. */
vlm_status vlm_json_get_string(const cJSON *obj, const char *key, const char *what,
                               const char **out, vlm_err *err);
vlm_status vlm_json_get_string_opt(const cJSON *obj, const char *key, const char *what,
                                   const char **out, vlm_err *err);

/* Print compactly into an accounted string (free with vlm_free); NULL on
 * allocation failure. */
char *vlm_json_print(const cJSON *item);

#endif
