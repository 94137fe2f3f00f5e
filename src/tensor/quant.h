/* tensor/quant - the GGUF (ggml) block-quantized weight formats.
 *
 * A quantized row is a sequence of blocks; each block holds block_elems
 * weights (32 for the "legacy" types, QK_K = 256 for the k-quants) in
 * block_bytes bytes. All multi-byte fields are little-endian; the scales d
 * and dmin are IEEE half precision. The structs below are the byte layout
 * of one block exactly as it lies in a GGUF file (every member is a byte
 * array or a uint16_t at an even offset, so there is no padding).
 *
 * Dequantization follows the format's own arithmetic in float32 and in the
 * same order of operations, so the result is bit-exact with any other
 * implementation that does the same (checked against numpy vectors in
 * tests/data/gguf/). */
#ifndef VLM_TENSOR_QUANT_H
#define VLM_TENSOR_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor/dtype.h"

#define VLM_QK       32  /* weights per block of the legacy types */
#define VLM_QK_K     256 /* weights per super-block of the k-quants */
#define VLM_K_SCALES 12  /* bytes of packed 6-bit scales in Q3_K/Q4_K/Q5_K */

/* x = d * (q - 8), q a nibble; qs[j] holds element j (low) and j+16 (high). */
typedef struct vlm_block_q4_0 {
    uint16_t d;
    uint8_t qs[VLM_QK / 2];
} vlm_block_q4_0;

/* x = d * q + m, q a nibble, same nibble order as Q4_0. */
typedef struct vlm_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[VLM_QK / 2];
} vlm_block_q4_1;

/* x = d * (q - 16), q 5 bits: the nibble as Q4_0 plus bit j of the
 * little-endian uint32 qh as bit 4 of element j. */
typedef struct vlm_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[VLM_QK / 2];
} vlm_block_q5_0;

/* x = d * q + m, q 5 bits as Q5_0. */
typedef struct vlm_block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[VLM_QK / 2];
} vlm_block_q5_1;

/* x = d * q, q a signed byte. */
typedef struct vlm_block_q8_0 {
    uint16_t d;
    int8_t qs[VLM_QK];
} vlm_block_q8_0;

/* 16 sub-blocks of 16: x = d*(sc&15) * q - dmin*(sc>>4), q 2 bits. */
typedef struct vlm_block_q2_k {
    uint8_t scales[VLM_QK_K / 16];
    uint8_t qs[VLM_QK_K / 4];
    uint16_t d;
    uint16_t dmin;
} vlm_block_q2_k;

/* 16 sub-blocks of 16: x = d*(s-32) * (q - 4*!hbit), q 2 bits from qs plus
 * a high bit from hmask; s a 6-bit scale packed in 12 bytes. */
typedef struct vlm_block_q3_k {
    uint8_t hmask[VLM_QK_K / 8];
    uint8_t qs[VLM_QK_K / 4];
    uint8_t scales[VLM_K_SCALES];
    uint16_t d;
} vlm_block_q3_k;

/* 8 sub-blocks of 32: x = d*sc * q - dmin*m, q a nibble; sc, m 6 bits. */
typedef struct vlm_block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[VLM_K_SCALES];
    uint8_t qs[VLM_QK_K / 2];
} vlm_block_q4_k;

/* 8 sub-blocks of 32: as Q4_K with a fifth bit per weight from qh. */
typedef struct vlm_block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[VLM_K_SCALES];
    uint8_t qh[VLM_QK_K / 8];
    uint8_t qs[VLM_QK_K / 2];
} vlm_block_q5_k;

/* 16 sub-blocks of 16: x = d*sc * (q - 32), q 6 bits (4 in ql, 2 in qh),
 * sc a signed byte. */
typedef struct vlm_block_q6_k {
    uint8_t ql[VLM_QK_K / 2];
    uint8_t qh[VLM_QK_K / 4];
    int8_t scales[VLM_QK_K / 16];
    uint16_t d;
} vlm_block_q6_k;

_Static_assert(sizeof(vlm_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(vlm_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(vlm_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(vlm_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(vlm_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(vlm_block_q2_k) == 84, "Q2_K block");
_Static_assert(sizeof(vlm_block_q3_k) == 110, "Q3_K block");
_Static_assert(sizeof(vlm_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(vlm_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(vlm_block_q6_k) == 210, "Q6_K block");

/* True for the block-quantized types (Q4_0 .. Q6_K). */
bool vlm_quant_is_block(vlm_dtype t);

/* Dequantize n weights (a multiple of the type's block_elems) of block type
 * t from src (n / block_elems blocks, any alignment) to f32. False if t is
 * not a block type or n is not a whole number of blocks. */
bool vlm_dequantize(vlm_dtype t, const void *src, float *dst, size_t n);

/* Widen or dequantize n elements of any float or block type to f32
 * (vlm_dtype_to_f32 for F32/F16/BF16/F64, vlm_dequantize otherwise). */
bool vlm_to_f32(vlm_dtype t, const void *src, float *dst, size_t n);

/* Quantize n floats (a whole number of blocks) to Q8_0, Q4_0 or Q4_K.
 * Round to nearest; see docs/formats-gguf.md for the Q4_K scale search.
 * False for any other type or a partial block. Non-finite inputs give
 * unspecified (but in-range, finite-scale) blocks. */
bool vlm_quantize(vlm_dtype t, const float *src, void *dst, size_t n);
bool vlm_quant_can_quantize(vlm_dtype t);

/* --- dot products: one quantized weight row with an f32 activation --------
 *
 * sum_i w[i] * x[i] over n weights (a whole number of blocks). This is the
 * inner loop of the CPU matmul for quantized weights: the weights are never
 * widened to a temporary row. The result equals the dot product of the
 * dequantized row with x up to float rounding (a different summation order,
 * and fused multiply-adds where the CPU has them). */
float vlm_dot_q8_0_f32(const void *w, const float *x, size_t n);
float vlm_dot_q4_0_f32(const void *w, const float *x, size_t n);
float vlm_dot_q4_k_f32(const void *w, const float *x, size_t n);

/* The portable versions (always compiled; the ones above use AVX2+FMA
 * intrinsics where the compiler targets them). Exposed so the tests can
 * check that both agree. */
float vlm_dot_q8_0_f32_portable(const void *w, const float *x, size_t n);
float vlm_dot_q4_0_f32_portable(const void *w, const float *x, size_t n);
float vlm_dot_q4_k_f32_portable(const void *w, const float *x, size_t n);

/* Dispatch on t; false (and *out untouched) for a type without a dot. */
bool vlm_quant_dot(vlm_dtype t, const void *w, const float *x, size_t n, float *out);

#endif
