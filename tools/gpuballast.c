/* gpuballast - hold device memory so that only SIZE stays free while a
 * command runs: a card that is already busy, for the GPU fallback tests.
 *
 *   build/gpuballast --leave 6G -- build/vlmtest generate -m MODEL ...
 *
 * The ballast is taken in 1 GiB pieces (the last one smaller) through the
 * accounted device allocator, the command runs as a child, and the ballast is
 * freed when it ends. Exits with the command's status (2 on a usage error or
 * without a GPU). Prints the free memory before and with the ballast on
 * stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/gpu.h"
#include "mem/monitor.h"

#ifdef VLM_HAVE_CUDA
#include "backend/cuda/cuda.h"
#endif

static int usage(void) {
    fprintf(stderr, "usage: gpuballast --leave SIZE -- COMMAND [ARG]...\n"
                    "  hold device memory so that only SIZE (e.g. 6G, 512M) stays free\n"
                    "  while COMMAND runs; exits with COMMAND's status\n");
    return 2;
}

int main(int argc, char **argv) {
    uint64_t leave = 0;
    int cmd = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--leave") && i + 1 < argc) {
            if (!vlm_mem_parse_size(argv[++i], &leave)) return usage();
        } else if (!strcmp(argv[i], "--")) {
            cmd = i + 1;
            break;
        } else {
            return usage();
        }
    }
    if (!cmd || cmd >= argc) return usage();
#ifndef VLM_HAVE_CUDA
    fprintf(stderr, "gpuballast: this build has no CUDA backend\n");
    return 2;
#else
    vlm_gpu_info gi;
    vlm_err err = {0};
    if (vlm_gpu_query(&gi, &err) != VLM_OK) {
        fprintf(stderr, "gpuballast: %s\n", err.msg);
        return 2;
    }
    const uint64_t piece = (uint64_t)1 << 30;
    enum { MAX_PIECES = 4096 };
    static void *held[MAX_PIECES];
    int n = 0;
    uint64_t total = 0;
    fprintf(stderr, "gpuballast: %s, %.2f GiB free; leaving %.2f GiB\n", gi.name,
            gi.free_bytes / 1073741824.0, leave / 1073741824.0);
    while (n < MAX_PIECES) {
        if (vlm_gpu_query(&gi, &err) != VLM_OK || gi.free_bytes <= leave) break;
        uint64_t want = gi.free_bytes - leave;
        if (want > piece) want = piece;
        if (want < ((uint64_t)2 << 20)) break; /* within the allocator's granularity */
        void *p = vlm_dev_alloc((size_t)want, VLM_MEM_OTHER);
        if (!p) break;
        held[n++] = p;
        total += want;
    }
    vlm_gpu_query(&gi, &err);
    fprintf(stderr, "gpuballast: holding %.2f GiB in %d pieces, %.2f GiB free\n",
            total / 1073741824.0, n, gi.free_bytes / 1073741824.0);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("gpuballast: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[cmd], argv + cmd);
        perror(argv[cmd]);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("gpuballast: waitpid");
            status = 2 << 8;
            break;
        }
    }
    for (int i = 0; i < n; i++) vlm_dev_free(held[i]);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
#endif
}
