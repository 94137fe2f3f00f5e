#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int vlm_file_is_regular(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int vlm_file_is_dir(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

vlm_status vlm_file_open_regular(const char *path, int *fd, uint64_t *size, vlm_err *err) {
    *fd = -1;
    *size = 0;
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) {
        int e = errno;
        return vlm_err_set(err, e == ENOENT ? VLM_ERR_NOT_FOUND : VLM_ERR_IO, "%s: %s", path,
                           strerror(e));
    }
    struct stat st;
    if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(f);
        return vlm_err_set(err, VLM_ERR_IO, "%s: not a regular file", path);
    }
    *fd = f;
    *size = (uint64_t)st.st_size;
    return VLM_OK;
}

vlm_status vlm_file_read_all(const char *path, size_t max_bytes, vlm_mem_cat cat, char **out,
                             size_t *len, vlm_err *err) {
    *out = NULL;
    if (len) *len = 0;
    int fd;
    uint64_t fsize;
    vlm_status rs = vlm_file_open_regular(path, &fd, &fsize, err);
    if (rs != VLM_OK) return rs;
    size_t size = (size_t)fsize;
    if (max_bytes && size > max_bytes) {
        close(fd);
        return vlm_err_set(err, VLM_ERR_LIMIT, "%s: file is %zu bytes, over the limit of %zu", path,
                           size, max_bytes);
    }
    char *buf = vlm_alloc(size + 1, cat);
    if (!buf) {
        close(fd);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            vlm_free(buf);
            close(fd);
            return vlm_err_set(err, VLM_ERR_IO, "%s: read failed after %zu of %zu bytes: %s", path,
                               got, size, r == 0 ? "file shrank" : strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    if (len) *len = size;
    return VLM_OK;
}

vlm_status vlm_file_write_atomic(const char *path, const void *data, size_t len, vlm_err *err) {
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return vlm_err_set(err, VLM_ERR_IO, "%s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return vlm_err_set(err, VLM_ERR_IO, "%s: write failed: %s", tmp, strerror(e));
        }
        done += (size_t)w;
    }
    int sync_rc = fsync(fd);
    int sync_errno = errno;
    if (close(fd) != 0 && sync_rc == 0) {
        sync_rc = -1;
        sync_errno = errno;
    }
    if (sync_rc != 0) {
        int e = sync_errno;
        unlink(tmp);
        return vlm_err_set(err, VLM_ERR_IO, "%s: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return vlm_err_set(err, VLM_ERR_IO, "%s: rename failed: %s", path, strerror(e));
    }
    return VLM_OK;
}
