/* base/mapfile - read-only memory mapping of a whole file, counted as mapped
 * bytes by the accounted allocator (not as resident memory: the kernel pages
 * in only what is touched and can drop clean pages under pressure). */
#ifndef VLM_BASE_MAPFILE_H
#define VLM_BASE_MAPFILE_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

typedef struct vlm_mapped_file {
    const uint8_t *data; /* the file's bytes ("" for an empty file) */
    uint64_t size;       /* bytes */
    bool mapped;         /* data is our mapping (false for an empty file) */
} vlm_mapped_file;

/* Map path read-only. Refuses non-regular files; an empty file maps to an
 * empty buffer. Messages name the path. */
vlm_status vlm_map_file(const char *path, vlm_mapped_file *out, vlm_err *err);

/* Unmap (safe on a zeroed or already unmapped struct). */
void vlm_unmap_file(vlm_mapped_file *m);

#endif
