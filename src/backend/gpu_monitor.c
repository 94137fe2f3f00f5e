/* backend/gpu_monitor - the device probe the monitor reads (mem/ sits below
 * the backends, so the backend hands it a function). Built with or without
 * CUDA: through gpu.h only. */
#include <stdio.h>
#include <string.h>

#include "backend/gpu.h"
#include "mem/monitor.h"

/* One cudaMemGetInfo (through vlm_gpu_query) and the accounted bytes. */
static bool gpu_probe(vlm_gpu_mem *out) {
    if (!vlm_gpu_built()) return false;
    vlm_gpu_info gi;
    if (vlm_gpu_query(&gi, NULL) != VLM_OK) return false;
    snprintf(out->name, sizeof out->name, "%s", gi.name);
    out->total_bytes = gi.total_bytes;
    out->free_bytes = gi.free_bytes;
    vlm_gpu_mem_stats gs;
    vlm_gpu_mem_stats_get(&gs);
    out->accounted_bytes = gs.total_current;
    out->accounted_peak = gs.total_peak;
    return true;
}

void vlm_gpu_monitor_install(void) {
    vlm_mem_set_gpu_probe(gpu_probe);
}
