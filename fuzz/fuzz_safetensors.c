/* Fuzz target: a safetensors file image (header parse, validation, lookups)
 * and the same bytes as a model.safetensors.index.json. Every accepted
 * tensor's first and last byte are read, so an offset the validator let
 * through outside the input shows up under ASan. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/log.h"
#include "io/safetensors.h"

static vlm_status count_entry(void *user, const char *name, const char *file, vlm_err *err) {
    (void)name, (void)file, (void)err;
    (*(size_t *)user)++;
    return VLM_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vlm_log_set_level(VLM_LOG_OFF);
    vlm_st_file *f = NULL;
    vlm_err err = {0};
    volatile unsigned sink = 0;
    if (vlm_st_open_memory(data, size, "fuzz.safetensors", &f, &err) == VLM_OK) {
        for (size_t i = 0; i < vlm_st_count(f); i++) {
            const vlm_st_tensor *t = vlm_st_at(f, i);
            if (vlm_st_find(f, t->name) != t) __builtin_trap();
            if (t->nbytes) {
                const uint8_t *p = t->data;
                if (p < data || p + t->nbytes > data + size) __builtin_trap();
                sink += p[0] + p[t->nbytes - 1];
            }
        }
        for (size_t i = 0; i < vlm_st_metadata_count(f); i++) {
            const char *k, *v;
            vlm_st_metadata_at(f, i, &k, &v);
            sink += (unsigned)strlen(k) + (unsigned)strlen(v);
            if (!vlm_st_metadata_get(f, k)) __builtin_trap();
        }
        vlm_st_close(f);
    } else if (err.msg[0] == '\0') {
        __builtin_trap(); /* a refusal must say why */
    }
    size_t n = 0;
    vlm_st_index_parse((const char *)data, size, "fuzz.index.json", count_entry, &n, &err);
    (void)sink;
    return 0;
}
