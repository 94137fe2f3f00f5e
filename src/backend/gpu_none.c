/* backend/gpu_none - the GPU interface of a build without CUDA: there is no
 * device, nothing is ever allocated on one. backend/cuda/ replaces this when
 * the CUDA backend is compiled in (VLM_HAVE_CUDA). */
#include "backend/gpu.h"

#include <string.h>

#ifndef VLM_HAVE_CUDA

bool vlm_gpu_built(void) {
    return false;
}

vlm_status vlm_gpu_query(vlm_gpu_info *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                       "no GPU: this build has no CUDA backend (rebuild with nvcc installed, "
                       "or make CUDA=1)");
}

void vlm_gpu_mem_stats_get(vlm_gpu_mem_stats *out) {
    memset(out, 0, sizeof *out);
}

void vlm_gpu_mem_reset_peak(void) {}

#else
typedef int gpu_none_unused; /* ISO C wants a declaration in every unit */
#endif
