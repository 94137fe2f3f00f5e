/* stsample - write the safetensors sample whose values follow a formula
 * (shared with reference/check_safetensors.py and tests/unit/
 * test_safetensors_sample.c), one tensor per dtype plus a scalar and an
 * empty tensor:
 *
 *   float types (F64 F32 F16 BF16): v[i] = ((i % 64) - 31) * 0.125
 *   I64: i * 1000003 - 5000000000     I32: i * 7919 - 100000
 *   I16: (i * 37) % 65536 - 32768     I8:  (i * 13) % 256 - 128
 *   U8:  (i * 29) % 256               BOOL: i % 3 == 0
 *
 *   stsample OUT.safetensors */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "tensor/dtype.h"

typedef struct sample {
    const char *name;
    vlm_dtype dtype;
    int rank;
    int64_t shape[3];
} sample;

static const sample samples[] = {
    {"f64", VLM_DTYPE_F64, 2, {3, 4}}, {"f32", VLM_DTYPE_F32, 3, {2, 3, 4}},
    {"f16", VLM_DTYPE_F16, 1, {5}},    {"bf16", VLM_DTYPE_BF16, 2, {4, 4}},
    {"i64", VLM_DTYPE_I64, 1, {3}},    {"i32", VLM_DTYPE_I32, 2, {2, 2}},
    {"i16", VLM_DTYPE_I16, 1, {6}},    {"i8", VLM_DTYPE_I8, 1, {7}},
    {"u8", VLM_DTYPE_U8, 2, {2, 5}},   {"bool", VLM_DTYPE_BOOL, 2, {3, 3}},
    {"scalar", VLM_DTYPE_F32, 0, {0}}, {"empty", VLM_DTYPE_F32, 2, {0, 3}},
};
#define N_SAMPLES (sizeof samples / sizeof *samples)

/* Element i of a tensor of dtype t, as little-endian bytes into out. */
static void element(vlm_dtype t, uint64_t i, unsigned char *out) {
    double f = ((double)(i % 64) - 31) * 0.125;
    int64_t v = 0;
    switch (t) {
    case VLM_DTYPE_F64:
        memcpy(out, &f, 8);
        return;
    case VLM_DTYPE_F32: {
        float x = (float)f;
        memcpy(out, &x, 4);
        return;
    }
    case VLM_DTYPE_F16: {
        uint16_t h = vlm_f32_to_f16((float)f);
        memcpy(out, &h, 2);
        return;
    }
    case VLM_DTYPE_BF16: {
        uint16_t h = vlm_f32_to_bf16((float)f);
        memcpy(out, &h, 2);
        return;
    }
    case VLM_DTYPE_I64:
        v = (int64_t)i * 1000003 - 5000000000LL;
        break;
    case VLM_DTYPE_I32:
        v = (int64_t)i * 7919 - 100000;
        break;
    case VLM_DTYPE_I16:
        v = (int64_t)((i * 37) % 65536) - 32768;
        break;
    case VLM_DTYPE_I8:
        v = (int64_t)((i * 13) % 256) - 128;
        break;
    case VLM_DTYPE_U8:
        v = (int64_t)((i * 29) % 256);
        break;
    case VLM_DTYPE_BOOL:
        v = i % 3 == 0;
        break;
    default:
        break;
    }
    size_t es = vlm_dtype_get(t)->block_bytes;
    for (size_t k = 0; k < es; k++) out[k] = (unsigned char)((uint64_t)v >> (8 * k));
}

static vlm_status fill(void *user, size_t index, uint64_t offset, void *buf, size_t len,
                       vlm_err *err) {
    (void)user, (void)err;
    vlm_dtype t = samples[index].dtype;
    size_t es = vlm_dtype_get(t)->block_bytes;
    for (size_t b = 0; b < len; b += es) element(t, (offset + b) / es, (unsigned char *)buf + b);
    return VLM_OK;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: stsample OUT.safetensors\n");
        return 2;
    }
    vlm_st_wtensor w[N_SAMPLES];
    for (size_t i = 0; i < N_SAMPLES; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].name = samples[i].name;
        w[i].dtype = samples[i].dtype;
        w[i].rank = samples[i].rank;
        memcpy(w[i].shape, samples[i].shape, sizeof samples[i].shape);
    }
    vlm_st_kv meta[] = {{"format", "pt"}, {"origin", "vlmtest stsample"}};
    vlm_err err = {0};
    if (vlm_st_write(argv[1], w, N_SAMPLES, meta, 2, fill, NULL, &err)) {
        fprintf(stderr, "stsample: %s\n", err.msg);
        return 1;
    }
    return 0;
}
