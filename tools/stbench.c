/* stbench - time opening a checkpoint's tensors and measure what it costs in
 * resident memory, before any tensor data is touched.
 *
 *   stbench PATH [--runs N] [--cold] [--touch]
 *
 * --cold evicts the shard files from the page cache first (posix_fadvise
 * DONTNEED), so the open reads the headers from disk. --touch then reads one
 * byte per page of every tensor and reports the RSS after that too. Prints
 * one line of key=value pairs per figure. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "io/safetensors.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Resident set size in bytes, from /proc/self/statm. */
static long rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static void evict(const vlm_tensor_set *s) {
    for (size_t i = 0; i < vlm_tensor_set_file_count(s); i++) {
        int fd = open(vlm_st_path(vlm_tensor_set_file(s, i)), O_RDONLY);
        if (fd < 0) continue;
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: stbench PATH [--runs N] [--cold] [--touch]\n");
        return 2;
    }
    int runs = 5;
    int cold = 0, touch = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cold"))
            cold = 1;
        else if (!strcmp(argv[i], "--touch"))
            touch = 1;
    }
    vlm_err err = {0};
    for (int r = 0; r < runs; r++) {
        vlm_tensor_set *s = NULL;
        if (cold) {
            if (vlm_tensor_set_open(argv[1], &s, &err)) goto fail;
            evict(s);
            vlm_tensor_set_close(s);
        }
        long rss0 = rss_bytes();
        double t0 = now_ms();
        if (vlm_tensor_set_open(argv[1], &s, &err)) goto fail;
        double t1 = now_ms();
        long rss1 = rss_bytes();
        vlm_mem_stats ms;
        vlm_alloc_get_stats(&ms);
        uint64_t bytes = 0;
        for (size_t i = 0; i < vlm_tensor_set_count(s); i++)
            bytes += vlm_tensor_set_at(s, i)->nbytes;
        printf("run=%d open_ms=%.3f rss_delta_mb=%.2f heap_mb=%.3f mapped_gb=%.3f tensors=%zu "
               "tensor_gb=%.3f%s\n",
               r, t1 - t0, (rss1 - rss0) / 1048576.0, ms.total_current / 1048576.0,
               ms.mapped_current / 1e9, vlm_tensor_set_count(s), bytes / 1e9, cold ? " cold" : "");
        if (touch && r == runs - 1) {
            volatile unsigned sum = 0;
            double t2 = now_ms();
            for (size_t i = 0; i < vlm_tensor_set_count(s); i++) {
                const vlm_st_tensor *t = vlm_tensor_set_at(s, i);
                const unsigned char *p = t->data;
                for (uint64_t o = 0; o < t->nbytes; o += 4096) sum += p[o];
            }
            (void)sum;
            printf("touch_ms=%.1f rss_after_touch_mb=%.1f\n", now_ms() - t2,
                   (rss_bytes() - rss0) / 1048576.0);
        }
        vlm_tensor_set_close(s);
    }
    return 0;
fail:
    fprintf(stderr, "stbench: %s\n", err.msg);
    return 1;
}
