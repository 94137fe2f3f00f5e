/* tensor/dtype - element types of stored and computed tensors, and the
 * scalar conversions between them.
 *
 * Plain types have an element size; block-quantized types (GGUF) have a block
 * of `block_elems` elements stored in `block_bytes` bytes. */
#ifndef VLM_TENSOR_DTYPE_H
#define VLM_TENSOR_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum vlm_dtype {
    VLM_DTYPE_F32 = 0,
    VLM_DTYPE_F16,
    VLM_DTYPE_BF16,
    VLM_DTYPE_F64,
    VLM_DTYPE_I64,
    VLM_DTYPE_I32,
    VLM_DTYPE_I16,
    VLM_DTYPE_I8,
    VLM_DTYPE_U8,
    VLM_DTYPE_BOOL,
    /* GGUF block types */
    VLM_DTYPE_Q4_0,
    VLM_DTYPE_Q4_1,
    VLM_DTYPE_Q5_0,
    VLM_DTYPE_Q5_1,
    VLM_DTYPE_Q8_0,
    VLM_DTYPE_Q2_K,
    VLM_DTYPE_Q3_K,
    VLM_DTYPE_Q4_K,
    VLM_DTYPE_Q5_K,
    VLM_DTYPE_Q6_K,
    VLM_DTYPE_COUNT
} vlm_dtype;

typedef struct vlm_dtype_info {
    const char *name;     /* "F32", "BF16", "Q4_K", ... (safetensors / GGUF spelling) */
    uint32_t block_elems; /* 1 for plain types */
    uint32_t block_bytes; /* bytes per block (= element size for plain types) */
    bool is_float;        /* usable as weights by widening to f32 */
} vlm_dtype_info;

const vlm_dtype_info *vlm_dtype_get(vlm_dtype t);
/* Case-sensitive lookup by name ("F32", "BF16", "Q8_0"); -1 if unknown. */
int vlm_dtype_parse(const char *name);

/* Bytes needed for n elements (n must be a multiple of block_elems for block
 * types); false on overflow or a partial block. */
bool vlm_dtype_nbytes(vlm_dtype t, uint64_t n, uint64_t *bytes);

/* --- scalar conversions ---------------------------------------------------- */

static inline float vlm_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, as PyTorch does; NaN stays NaN. */
static inline uint16_t vlm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Round f to the nearest bf16 value and back (the reference's op rounding). */
static inline float vlm_round_bf16(float f) {
    return vlm_bf16_to_f32(vlm_f32_to_bf16(f));
}

float vlm_f16_to_f32(uint16_t h);
uint16_t vlm_f32_to_f16(float f);

/* Convert n elements of a plain float type (F32, F16, BF16, F64) to f32. */
bool vlm_dtype_to_f32(vlm_dtype t, const void *src, float *dst, size_t n);

#endif
