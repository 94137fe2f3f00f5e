/* base/file - whole-file reads into accounted memory, and atomic writes. */
#ifndef VLM_BASE_FILE_H
#define VLM_BASE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "base/alloc.h"
#include "base/status.h"

/* Open a regular file read-only (close-on-exec): *fd and its size. A
 * missing file is VLM_ERR_NOT_FOUND, anything else that is not a readable
 * regular file VLM_ERR_IO; messages name the path. */
vlm_status vlm_file_open_regular(const char *path, int *fd, uint64_t *size, vlm_err *err);

/* Read a whole regular file into an accounted buffer with a NUL appended
 * (not counted in *len). Refuses files larger than max_bytes (0: no limit)
 * with VLM_ERR_LIMIT. Messages name the path. */
vlm_status vlm_file_read_all(const char *path, size_t max_bytes, vlm_mem_cat cat, char **out,
                             size_t *len, vlm_err *err);

/* Write data to path through a temporary file in the same directory, fsync
 * and rename, so a reader never sees half a file. */
vlm_status vlm_file_write_atomic(const char *path, const void *data, size_t len, vlm_err *err);

/* True if path names an existing regular file / directory. */
int vlm_file_is_regular(const char *path);
int vlm_file_is_dir(const char *path);

#endif
