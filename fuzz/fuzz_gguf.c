/* libFuzzer target: the GGUF reader over arbitrary bytes. Whatever it
 * accepts must be safe to walk: every metadata value (nested arrays and
 * string elements included) and every byte of every tensor's data, and the
 * first block of each float/block tensor is widened to f32. */
#include <stddef.h>
#include <stdint.h>

#include "io/gguf.h"
#include "tensor/quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t walk_value(const vlm_gguf_value *v) {
    uint64_t h = (uint64_t)v->type;
    if (v->type == VLM_GGUF_STRING) {
        for (uint64_t i = 0; i < v->str.len; i++) h = h * 31 + (uint8_t)v->str.ptr[i];
    } else if (v->type == VLM_GGUF_ARRAY) {
        for (uint64_t i = 0; i < v->arr.n; i++) {
            uint64_t u;
            double f;
            vlm_gguf_str s;
            if (v->arr.items) h += walk_value(&v->arr.items[i]);
            if (vlm_gguf_arr_u64(v, i, &u)) h += u;
            if (vlm_gguf_arr_f64(v, i, &f)) h += (uint64_t)(f == f);
            if (vlm_gguf_arr_str(v, i, &s)) h += s.len;
        }
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vlm_gguf *g = NULL;
    vlm_err err;
    if (vlm_gguf_open_memory(data, size, "fuzz.gguf", &g, &err) != VLM_OK) return 0;
    volatile uint64_t sink = 0;
    for (size_t i = 0; i < vlm_gguf_n_kv(g); i++) {
        const vlm_gguf_kv *kv = vlm_gguf_kv_at(g, i);
        sink += walk_value(&kv->value);
        sink += vlm_gguf_find(g, kv->key) == &kv->value;
    }
    for (size_t i = 0; i < vlm_gguf_n_tensors(g); i++) {
        const vlm_gguf_tensor *t = vlm_gguf_tensor_at(g, i);
        sink += vlm_gguf_find_tensor(g, t->name) == t;
        const uint8_t *p = t->data;
        for (uint64_t k = 0; k < t->nbytes; k++) sink += p[k];
        const vlm_dtype_info *info = vlm_dtype_get(t->dtype);
        float block[256];
        if (info->is_float && t->nbytes >= info->block_bytes && info->block_elems <= 256 &&
            vlm_to_f32(t->dtype, t->data, block, info->block_elems))
            sink += block[0] == block[0];
    }
    vlm_gguf_close(g);
    (void)sink;
    return 0;
}
