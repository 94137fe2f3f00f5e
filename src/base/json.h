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

/* A parse scope: between begin and end, every cJSON allocation made on this
 * thread comes from a bump arena of accounted chunks (chunk_bytes each, 0:
 * VLM_JSON_SCOPE_CHUNK; larger requests get a chunk of their own), and
 * cJSON's frees of that memory do nothing; end releases every chunk at once.
 * A large parse (the Phi-3 tokenizer.json: ~220,000 nodes and strings) then
 * costs a dozen allocations instead of one per node, which keeps the
 * fault-injection walks of a load short. Every cJSON value made inside the
 * scope must be dead by its end (cJSON_Delete is allowed, not needed), and
 * nothing made inside may be freed with vlm_free. Scopes nest (the inner
 * one serves until it ends); a failed chunk allocation fails the cJSON call
 * as any allocation failure does (vlm_json_alloc_failed). */
typedef struct vlm_json_chunk vlm_json_chunk;
typedef struct vlm_json_scope {
    vlm_json_chunk *chunks; /* newest first */
    size_t chunk_bytes;
    size_t n_chunks;
    struct vlm_json_scope *outer;
} vlm_json_scope;

#define VLM_JSON_SCOPE_CHUNK ((size_t)1 << 20) /* 1 MiB */

void vlm_json_scope_begin(vlm_json_scope *s, size_t chunk_bytes);
void vlm_json_scope_end(vlm_json_scope *s);

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
