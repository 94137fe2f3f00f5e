/* backend/gpu - what the rest of the program knows of the GPU backend.
 *
 * Always compiled. Built without CUDA (or with no usable device), every query
 * answers "no GPU" and the program runs on the CPU; the CUDA implementation
 * lives in backend/cuda/ and is compiled only when nvcc is found (make
 * CUDA=1 forces it, CUDA=0 leaves it out).
 *
 * Device memory is accounted like host memory (base/alloc): every device
 * allocation has a category (the same vlm_mem_cat), current and peak bytes
 * are kept per category, and VLM_FAIL_DEVICE_ALLOC_AT=N fails the N-th device
 * allocation ("N+": N and every later one), as VLM_FAIL_ALLOC_AT does on the
 * host. */
#ifndef VLM_BACKEND_GPU_H
#define VLM_BACKEND_GPU_H

#include <stdbool.h>
#include <stdint.h>

#include "base/alloc.h"
#include "base/status.h"

/* Compiled with the CUDA backend. */
bool vlm_gpu_built(void);

typedef struct vlm_gpu_info {
    int device;     /* CUDA ordinal */
    char name[128]; /* "NVIDIA H100 80GB HBM3" */
    int cc_major, cc_minor;
    int n_sms;
    uint64_t total_bytes; /* device memory */
    uint64_t free_bytes;  /* free now (cudaMemGetInfo) */
} vlm_gpu_info;

/* The device the backend uses (CUDA_VISIBLE_DEVICES and VLM_GPU_DEVICE
 * choose it; 0 by default). VLM_ERR_UNSUPPORTED with a message saying why
 * (not built with CUDA, no device, driver too old) when there is none. */
vlm_status vlm_gpu_query(vlm_gpu_info *out, vlm_err *err);

/* Accounted device memory (bytes), as vlm_mem_stats is for the host. */
typedef struct vlm_gpu_mem_stats {
    uint64_t current[VLM_MEM_CAT_COUNT];
    uint64_t peak[VLM_MEM_CAT_COUNT];
    uint64_t total_current, total_peak;
    uint64_t n_allocs; /* device allocations so far (fault injection counts these) */
    uint64_t n_failed; /* refused by the device or by fault injection */
} vlm_gpu_mem_stats;

void vlm_gpu_mem_stats_get(vlm_gpu_mem_stats *out);
void vlm_gpu_mem_reset_peak(void);

/* Where a model's parts run, given to the model when it is created
 * (vlm_arch.create). NULL, or all zero: everything on the CPU. */
typedef struct vlm_placement {
    int gpu_layers;     /* decoder layers [0, gpu_layers) on the GPU, with their KV cache */
    bool head_on_gpu;   /* token embedding, final norm and lm_head on the GPU
                           (only with every decoder layer there) */
    bool vision_on_gpu; /* vision tower and projector on the GPU */
} vlm_placement;

/* Install the device probe of mem/monitor (vlm_mem_set_gpu_probe): the
 * snapshots and the sampler's timeline then carry the device's free/used
 * memory (vlm_gpu_query) and the accounted device bytes. Without a GPU the
 * probe answers "none". Idempotent; backend/gpu_monitor.c. */
void vlm_gpu_monitor_install(void);

/* Any part on the GPU. */
static inline bool vlm_placement_uses_gpu(const vlm_placement *p) {
    return p && (p->gpu_layers > 0 || p->head_on_gpu || p->vision_on_gpu);
}

#endif
