#include "tensor/dtype.h"

static const vlm_dtype_info infos[VLM_DTYPE_COUNT] = {
    [VLM_DTYPE_F32] = {"F32", 1, 4, true},       [VLM_DTYPE_F16] = {"F16", 1, 2, true},
    [VLM_DTYPE_BF16] = {"BF16", 1, 2, true},     [VLM_DTYPE_F64] = {"F64", 1, 8, true},
    [VLM_DTYPE_I64] = {"I64", 1, 8, false},      [VLM_DTYPE_I32] = {"I32", 1, 4, false},
    [VLM_DTYPE_I16] = {"I16", 1, 2, false},      [VLM_DTYPE_I8] = {"I8", 1, 1, false},
    [VLM_DTYPE_U8] = {"U8", 1, 1, false},        [VLM_DTYPE_BOOL] = {"BOOL", 1, 1, false},
    [VLM_DTYPE_Q4_0] = {"Q4_0", 32, 18, true},   [VLM_DTYPE_Q4_1] = {"Q4_1", 32, 20, true},
    [VLM_DTYPE_Q5_0] = {"Q5_0", 32, 22, true},   [VLM_DTYPE_Q5_1] = {"Q5_1", 32, 24, true},
    [VLM_DTYPE_Q8_0] = {"Q8_0", 32, 34, true},   [VLM_DTYPE_Q2_K] = {"Q2_K", 256, 84, true},
    [VLM_DTYPE_Q3_K] = {"Q3_K", 256, 110, true}, [VLM_DTYPE_Q4_K] = {"Q4_K", 256, 144, true},
    [VLM_DTYPE_Q5_K] = {"Q5_K", 256, 176, true}, [VLM_DTYPE_Q6_K] = {"Q6_K", 256, 210, true},
};

const vlm_dtype_info *vlm_dtype_get(vlm_dtype t) {
    return (unsigned)t < VLM_DTYPE_COUNT ? &infos[t] : NULL;
}

int vlm_dtype_parse(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < VLM_DTYPE_COUNT; i++)
        if (strcmp(infos[i].name, name) == 0) return i;
    return -1;
}

bool vlm_dtype_nbytes(vlm_dtype t, uint64_t n, uint64_t *bytes) {
    const vlm_dtype_info *d = vlm_dtype_get(t);
    if (!d || n % d->block_elems) return false;
    return !__builtin_mul_overflow(n / d->block_elems, (uint64_t)d->block_bytes, bytes);
}

float vlm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t vlm_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (a < 0x38800000u) {                                   /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;          /* < half the smallest subnormal */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 113 - (int)(a >> 23) + 13; /* 126 - exp + 1 ... */
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    /* normal: rebias and round the 13 dropped bits to nearest even */
    uint32_t r = ((a >> 13) - ((127 - 15) << 10));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

bool vlm_dtype_to_f32(vlm_dtype t, const void *src, float *dst, size_t n) {
    switch (t) {
    case VLM_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return true;
    case VLM_DTYPE_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = vlm_bf16_to_f32(s[i]);
        return true;
    }
    case VLM_DTYPE_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = vlm_f16_to_f32(s[i]);
        return true;
    }
    case VLM_DTYPE_F64: {
        const double *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return true;
    }
    default:
        return false;
    }
}
