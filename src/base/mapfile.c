#include "base/mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/file.h"

vlm_status vlm_map_file(const char *path, vlm_mapped_file *out, vlm_err *err) {
    *out = (vlm_mapped_file){(const uint8_t *)"", 0, false};
    if (!path) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "no path given");
    int fd;
    uint64_t fsize;
    vlm_status rs = vlm_file_open_regular(path, &fd, &fsize, err);
    if (rs != VLM_OK) return rs;
    if (fsize == 0) {
        close(fd);
        return VLM_OK;
    }
    /* A private read-only mapping: opening a checkpoint touches only the
     * pages that are read (headers), not the tensor data. */
    void *p = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return vlm_err_set(err, e == ENOMEM ? VLM_ERR_NOMEM : VLM_ERR_IO,
                           "%s: mmap of %llu bytes failed: %s", path, (unsigned long long)fsize,
                           strerror(e));
    out->data = p;
    out->size = fsize;
    out->mapped = true;
    vlm_alloc_note_mapped((int64_t)out->size);
    return VLM_OK;
}

void vlm_unmap_file(vlm_mapped_file *m) {
    if (m && m->mapped) {
        munmap((void *)(uintptr_t)m->data, (size_t)m->size);
        vlm_alloc_note_mapped(-(int64_t)m->size);
    }
    if (m) *m = (vlm_mapped_file){(const uint8_t *)"", 0, false};
}
