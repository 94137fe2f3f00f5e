/* Fuzz the memory monitor's text parsers (/proc/self/status, /proc/meminfo,
 * /proc/pressure/memory, cgroup values, sizes) with arbitrary bytes. They
 * read files the kernel writes, but containers and odd kernels vary, and a
 * monitor that crashes on a strange line is worse than none. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/alloc.h"
#include "mem/monitor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1 << 16) return 0;
    char *text = vlm_alloc(size + 1, VLM_MEM_OTHER);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    vlm_proc_mem p;
    vlm_sys_mem m;
    vlm_psi psi;
    uint64_t v;
    if (vlm_mem_parse_proc_status(text, &p) && p.rss_bytes % 1024) __builtin_trap();
    if (vlm_mem_parse_meminfo(text, &m) && m.available_bytes > m.total_bytes) __builtin_trap();
    if (vlm_mem_parse_psi(text, &psi)) {
        if (!(psi.some_avg10 >= 0 && psi.some_avg10 <= 100)) __builtin_trap();
        (void)vlm_mem_pressure_level(&psi);
    }
    vlm_mem_parse_cgroup_value(text, &v);
    vlm_mem_parse_size(text, &v);
    vlm_free(text);
    return 0;
}
