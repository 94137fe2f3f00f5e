/* backend/cuda/ops - the CUDA op set (backend/cuda/cuda.h), one kernel per
 * CPU op of backend/cpu/ops.h with the same semantics. Activations f32;
 * every reduction accumulates in f32. Reductions run in a different order
 * from the CPU's, so results agree to float rounding, not bit for bit (the
 * tolerances are in tests/gpu/test_cuda_ops.c). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <type_traits>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backend/cuda/ctx.h"
}
#include "backend/cuda/hopper.cuh"

/* tensor/quant.h's block layouts (its C11 _Static_asserts keep it out of
 * C++): Q8_0 = {f16 d; int8 qs[32]} (34 bytes), Q4_0 = {f16 d; u8 qs[16]}
 * (18 bytes), byte j of qs holding element j (low nibble) and j + 16. */
#define VLM_QK 32
struct vlm_block_q8_0 {
    uint16_t d;
    int8_t qs[VLM_QK];
};
struct vlm_block_q4_0 {
    uint16_t d;
    uint8_t qs[VLM_QK / 2];
};
static_assert(sizeof(vlm_block_q8_0) == 34, "Q8_0 block");
static_assert(sizeof(vlm_block_q4_0) == 18, "Q4_0 block");

namespace {

/* A launch's configuration error (bad grid, no kernel image for this
 * card): execution errors surface at vlm_cuda_sync. */
vlm_status launched(const char *op, vlm_err *err) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return VLM_OK;
    return vlm_err_set(err, e == cudaErrorMemoryAllocation ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                       "%s: CUDA launch: %s (%s)", op, cudaGetErrorString(e), cudaGetErrorName(e));
}

unsigned blocks_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b > 65535LL * 16) b = 65535LL * 16; /* grid-stride loops cover the rest */
    return (unsigned)(b < 1 ? 1 : b);
}

__device__ __forceinline__ float ld_w(vlm_dtype t, const void *p, int64_t i) {
    switch (t) {
    case VLM_DTYPE_F16:
        return __half2float(((const __half *)p)[i]);
    case VLM_DTYPE_BF16:
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

/* Four consecutive values of a weight (F32, F16 or BF16) from element i
 * (a multiple of 4; the weight 16-byte aligned): one 16- or 8-byte load,
 * the values ld_w gives. */
__device__ __forceinline__ void ld_w4(vlm_dtype t, const void *p, int64_t i, float (&o)[4]) {
    if (t == VLM_DTYPE_F16 || t == VLM_DTYPE_BF16) {
        const uint2 u = *reinterpret_cast<const uint2 *>((const uint16_t *)p + i);
        const uint16_t h[4] = {(uint16_t)(u.x & 0xffffu), (uint16_t)(u.x >> 16),
                               (uint16_t)(u.y & 0xffffu), (uint16_t)(u.y >> 16)};
#pragma unroll
        for (int e = 0; e < 4; e++)
            o[e] = t == VLM_DTYPE_BF16 ? __uint_as_float((uint32_t)h[e] << 16)
                                       : __half2float(__ushort_as_half(h[e]));
        return;
    }
    const float4 f = *reinterpret_cast<const float4 *>((const float *)p + i);
    o[0] = f.x, o[1] = f.y, o[2] = f.z, o[3] = f.w;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Programmatic dependent launch (sm_90): a kernel that lets the next one
 * start early calls pdl_trigger (a hint; the dependent still waits for the
 * whole grid), and a kernel launched with the attribute calls pdl_wait
 * before it reads anything an earlier kernel wrote. Both are no-ops on
 * older cards and for kernels launched without the attribute. */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* The 128-byte line at p into L2 (a hint: no value, no fault). */
__device__ __forceinline__ void prefetch_l2(const void *p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

/* Card facts the launches use, read once: multiprocessors, whether
 * programmatic dependent launch is there (sm_90+, VLM_CUDA_PDL=0 turns it
 * off), VLM_GEMV_WS (1, 2 or 4 warps a row: a fixed choice, for measuring)
 * VLM_CUDA_ATTN_ASYNC=0 (the tensor-core attention loads its K/V tiles
 * synchronously), VLM_CUDA_DEC_GROUPS=0 (decode attention on the
 * one-key-per-warp-step kernel), VLM_CUDA_ATT_MERGE=0 (the decode
 * attention's key splits merged by a launch of their own),
 * VLM_CUDA_FUSE (the GEMV epilogues kept, by letter: s matmul_silu, r
 * matmul_rope_store; "0" none: two launches each) and
 * VLM_CUDA_PREFETCH=0 (the decode attention and the row RMSNorm read
 * nothing before their dependency wait),
 * for measuring. */
struct card_facts {
    int sms = 0, fixed_ws = 0, cc = 0; /* cc: compute capability, 10 major + minor */
    bool pdl = false, attn_async = true, dec_groups = true, att_merge = true;
    bool fuse_silu = true, fuse_rope = true, prefetch = true;
    card_facts() {
        int dev = 0, major = 0;
        if (cudaGetDevice(&dev) == cudaSuccess) {
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
            int minor = 0;
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
            cc = 10 * major + minor;
        }
        (void)cudaGetLastError();
        const char *e = getenv("VLM_CUDA_PDL");
        pdl = major >= 9 && !(e && e[0] == '0');
        const char *a = getenv("VLM_CUDA_ATTN_ASYNC");
        attn_async = !(a && a[0] == '0');
        const char *dg = getenv("VLM_CUDA_DEC_GROUPS");
        dec_groups = !(dg && dg[0] == '0');
        const char *am = getenv("VLM_CUDA_ATT_MERGE");
        att_merge = !(am && am[0] == '0');
        const char *fu = getenv("VLM_CUDA_FUSE"); /* the epilogues kept: s, r; "0" none */
        if (fu) {
            fuse_silu = strchr(fu, 's') != nullptr;
            fuse_rope = strchr(fu, 'r') != nullptr;
        }
        const char *pf = getenv("VLM_CUDA_PREFETCH");
        prefetch = !(pf && pf[0] == '0');
        const char *w = getenv("VLM_GEMV_WS");
        if (w && (w[0] == '1' || w[0] == '2' || w[0] == '4') && !w[1]) fixed_ws = w[0] - '0';
    }
};

const card_facts &card() {
    static const card_facts c; /* thread-safe initialisation (C++11) */
    return c;
}

/* Sum over a block of blockDim.x (a multiple of 32, <= 1024) threads; every
 * thread gets the total. sh: 32 floats. */
__device__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(t);
}

/* Round to nearest even, NaN kept (as vlm_f32_to_bf16). */
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ float half_bits_to_f32(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}

/* Small pieces whose bits two kernels must agree on (a fused GEMV epilogue
 * and the plain kernel it replaces): one definition, one expression. */
__device__ __forceinline__ float silu_mul1(float g, float u) {
    return u * (g / (1.0f + expf(-g)));
}

/* CLIP's quick-GELU, x sigmoid(1.702 x) */
__device__ __forceinline__ float quick_gelu1(float x) {
    return x / (1.0f + expf(-1.702f * x));
}

/* rotate_half(x) = (-x2, x1): the pair (a, b) of dims i, i + half */
__device__ __forceinline__ void rope_rot(float &a, float &b, float c, float s) {
    /* the FMAs spelled out: left to the compiler, which product it fused
     * differed between the two kernels */
    const float a2 = __fmaf_rn(a, c, -__fmul_rn(b, s)), b2 = __fmaf_rn(b, c, __fmul_rn(a, s));
    a = a2;
    b = b2;
}

__device__ __forceinline__ void store_kv(void *dst, bool bf, int64_t at, float v) {
    if (bf)
        ((uint16_t *)dst)[at] = f32_to_bf16_bits(v);
    else
        ((float *)dst)[at] = v;
}

/* Four floats rounded to bf16 (BF) or f16, round to nearest even, as one
 * 8-byte word in memory order: the 16-bit outputs of the row kernels. */
template <bool BF> __device__ __forceinline__ uint2 pack4_half(float a, float b, float c, float d) {
    uint2 u;
    if (BF) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
        u.x = *reinterpret_cast<uint32_t *>(&lo);
        u.y = *reinterpret_cast<uint32_t *>(&hi);
    } else {
        __half2 lo = __floats2half2_rn(a, b), hi = __floats2half2_rn(c, d);
        u.x = *reinterpret_cast<uint32_t *>(&lo);
        u.y = *reinterpret_cast<uint32_t *>(&hi);
    }
    return u;
}

/* --- norms ----------------------------------------------------------------- */

template <int OUT = 0> /* OUT: 0 f32, 1 bf16, 2 f16 (rmsnorm_h) */
__global__ void k_rmsnorm(void *out, const float *x, int64_t dim, vlm_dtype wt, const void *w,
                          float eps) {
    pdl_wait();    /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger(); /* the next product may start loading its weights */
    __shared__ float sh[32];
    const float *xr = x + blockIdx.x * dim;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, sh);
    float r = rsqrtf(ss / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const float y = xr[i] * r * ld_w(wt, w, i);
        const int64_t at = blockIdx.x * dim + i;
        if (OUT == 0)
            ((float *)out)[at] = y;
        else if (OUT == 1)
            ((__nv_bfloat16 *)out)[at] = __float2bfloat16_rn(y);
        else
            ((__half *)out)[at] = __float2half_rn(y);
    }
}

/* RMSNorm of rows of 1024 VPL floats (the decoder's 3072: VPL 3) with 256
 * threads a row, the row in registers (VPL float4 a thread), one barrier:
 * the 8 warps' sums of squares meet in shared memory and every thread adds
 * them in the same order. A decode token runs it 65 times on one row, where
 * the general kernel (1024 threads, two barriers) was latency-bound. */
template <int VPL, int OUT = 0> /* OUT: 0 f32, 1 bf16, 2 f16 (rmsnorm_h) */
__global__ void __launch_bounds__(256) k_rmsnorm_rows(void *out, const float *x, vlm_dtype wt,
                                                      const void *w, float eps, bool prefetch) {
    constexpr int dim = 1024 * VPL;
    /* the weights are no earlier kernel's output: with prefetch they are
     * read before the wait, while the kernel before finishes */
    float gw[VPL][4];
    auto load_g = [&]() {
#pragma unroll
        for (int j = 0; j < VPL; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                gw[j][e] = ld_w(wt, w, 4 * ((int64_t)threadIdx.x + 256 * j) + e);
    };
    if (prefetch) load_g();
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();
    if (!prefetch) load_g();
    __shared__ float sh[8];
    const float4 *xr = (const float4 *)(x + blockIdx.x * (int64_t)dim);
    float4 v[VPL];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        v[j] = xr[threadIdx.x + 256 * j];
        ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; k++) tot += sh[k];
    const float r = rsqrtf(tot / (float)dim + eps);
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        const float4 y = make_float4(v[j].x * r * gw[j][0], v[j].y * r * gw[j][1],
                                     v[j].z * r * gw[j][2], v[j].w * r * gw[j][3]);
        const int64_t at = blockIdx.x * (int64_t)dim / 4 + threadIdx.x + 256 * j;
        if (OUT == 0)
            ((float4 *)out)[at] = y;
        else
            ((uint2 *)out)[at] = pack4_half<OUT == 1>(y.x, y.y, y.z, y.w);
    }
}

/* One normalised value; explicit round-to-nearest intrinsics so that the
 * compiler contracts nothing differently in k_layernorm and k_layernorm_h
 * (layernorm_h must give layernorm's bits). */
__device__ __forceinline__ float ln_apply(float xv, float mean, float r, float wv, bool has_b,
                                          float bv) {
    const float y = __fmul_rn(__fmul_rn(__fsub_rn(xv, mean), r), wv);
    return has_b ? __fadd_rn(y, bv) : y;
}

__device__ __forceinline__ float ln_value(float xv, float mean, float r, vlm_dtype wt,
                                          const void *w, vlm_dtype bt, const void *b, int64_t i) {
    return ln_apply(xv, mean, r, ld_w(wt, w, i), b != nullptr, b ? ld_w(bt, b, i) : 0.0f);
}

__global__ void k_layernorm(float *out, const float *x, int64_t dim, vlm_dtype wt, const void *w,
                            vlm_dtype bt, const void *b, float eps) {
    __shared__ float sh[32];
    const float *xr = x + blockIdx.x * dim;
    float *orow = out + blockIdx.x * dim;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
    float mean = block_sum(s, sh) / (float)dim;
    float v = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        float d = xr[i] - mean;
        v += d * d;
    }
    float r = rsqrtf(block_sum(v, sh) / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        orow[i] = ln_value(xr[i], mean, r, wt, w, bt, b, i);
}

__device__ __forceinline__ float ld_f(const float *p, int64_t i) {
    return p[i];
}
__device__ __forceinline__ float ld_f(const __nv_bfloat16 *p, int64_t i) {
    return __bfloat162float(p[i]);
}

/* As k_layernorm (the same reductions in the same order, the same
 * ln_value), the result rounded to bf16 or f16 as k_to_half rounds it; x
 * f32, or bf16 (TI __nv_bfloat16: the vision tower's bf16 residual). */
template <typename TI>
__global__ void k_layernorm_h(void *out, bool bf16, const TI *x, int64_t dim, vlm_dtype wt,
                              const void *w, vlm_dtype bt, const void *b, float eps) {
    __shared__ float sh[32];
    const TI *xr = x + blockIdx.x * dim;
    const int64_t o = blockIdx.x * dim;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += ld_f(xr, i);
    float mean = block_sum(s, sh) / (float)dim;
    float v = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        float d = ld_f(xr, i) - mean;
        v += d * d;
    }
    float r = rsqrtf(block_sum(v, sh) / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        float y = ln_value(ld_f(xr, i), mean, r, wt, w, bt, b, i);
        if (bf16)
            ((__nv_bfloat16 *)out)[o + i] = __float2bfloat16_rn(y);
        else
            ((__half *)out)[o + i] = __float2half_rn(y);
    }
}

/* out[i] = x16[i] (bf16 bits) as f32: exact. */
__global__ void k_bf16_to_f32(float *out, const uint16_t *x16, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __uint_as_float((uint32_t)x16[i] << 16);
}

/* Eight bf16 values (one 16-byte word, memory order) widened to f32. */
__device__ __forceinline__ void bf16x8_to_f32(const uint4 &u, float (&f)[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        f[2 * e] = __uint_as_float(w[e] << 16);
        f[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
    }
}

/* The same, eight values a thread (one 16-byte load, two 16-byte stores). */
__global__ void k_bf16_to_f32x8(float4 *out, const uint4 *x16, int64_t n8) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8;
         i += (int64_t)gridDim.x * blockDim.x) {
        float f[8];
        bf16x8_to_f32(x16[i], f);
        out[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
        out[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
    }
}

/* LayerNorm with a warp per row for rows of 128 VPL floats (the vision
 * tower's 1024: VPL 8): the row lives in the lane's registers (VPL float4s,
 * lane l holding floats 4 (l + 32 j) ..), mean and variance are warp sums
 * (the butterfly gives every lane the same bits), no block barriers; 8 rows
 * a block of 256 threads. The one-block-a-row kernels above keep the other
 * sizes. OUT: 0 f32, 1 bf16, 2 f16 (each value as ln_value, then rounded as
 * k_to_half rounds). k_layernorm and k_layernorm_h take this kernel for the
 * same sizes, so the 16-bit result stays layernorm's value rounded. */
template <int VPL, int OUT, bool IN16 = false>
__global__ void __launch_bounds__(256)
    k_layernorm_warp(void *out, const void *x, int64_t n, vlm_dtype wt, const void *w, vlm_dtype bt,
                     const void *b, float eps) {
    constexpr int dim = VPL * 128;
    const int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= n) return;
    float4 v[VPL];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        if (IN16) { /* four bf16 values in one 8-byte load */
            const uint2 u = ((const uint2 *)((const uint16_t *)x + row * dim))[lane + 32 * j];
            v[j] = make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                               __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
        } else {
            v[j] = ((const float4 *)((const float *)x + row * dim))[lane + 32 * j];
        }
        s += v[j].x + v[j].y + v[j].z + v[j].w;
    }
    const float mean = warp_sum(s) / (float)dim;
    float q = 0.0f;
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        float a = v[j].x - mean, c = v[j].y - mean, d = v[j].z - mean, e = v[j].w - mean;
        q += a * a + c * c + d * d + e * e;
    }
    const float r = rsqrtf(warp_sum(q) / (float)dim + eps);
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        const int64_t i = 4 * (lane + 32 * j);
        /* ln_value, with the lane's 4 weights and biases in one load each */
        float wv[4], bv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        ld_w4(wt, w, i, wv);
        if (b) ld_w4(bt, b, i, bv);
        const float y0 = ln_apply(v[j].x, mean, r, wv[0], b != nullptr, bv[0]);
        const float y1 = ln_apply(v[j].y, mean, r, wv[1], b != nullptr, bv[1]);
        const float y2 = ln_apply(v[j].z, mean, r, wv[2], b != nullptr, bv[2]);
        const float y3 = ln_apply(v[j].w, mean, r, wv[3], b != nullptr, bv[3]);
        const int64_t o = row * dim + i;
        if (OUT == 0) {
            *(float4 *)((float *)out + o) = make_float4(y0, y1, y2, y3);
        } else {
            *(uint2 *)((uint16_t *)out + o) = pack4_half<OUT == 1>(y0, y1, y2, y3);
        }
    }
}

/* LayerNorm of bf16 rows (the vision tower's bf16 residual) into 16-bit
 * rows: two rows a warp, each lane's 8 C values of a row held as C 16-byte
 * words of packed bf16 (the row's loads all in flight at once; 8 C
 * registers a row), widened where each pass reads them. Three blocks an SM
 * (80 registers; ptxas keeps 8-16 bytes a thread in local memory), so that
 * the 9,809 rows of 17 crops are nearly all in flight at once: the kernel
 * is bound by the latency of its loads (Nsight Compute), and this form took
 * 8.7 against k_layernorm_warp's 10.7 us at 5 crops. The sums run in a
 * different order from k_layernorm_warp's. dim = 256 C. */
template <int C, int OUT>
__global__ void __launch_bounds__(256, 3)
    k_layernorm16_rows(void *out, const uint16_t *x, int64_t n, vlm_dtype wt, const void *w,
                       vlm_dtype bt, const void *b, float eps) {
    constexpr int dim = C * 256;
    const int64_t row0 = ((int64_t)blockIdx.x * 8 + (threadIdx.x >> 5)) * 2;
    const int lane = threadIdx.x & 31;
    if (row0 >= n) return;
    const bool two = row0 + 1 < n;
    uint4 u[2][C];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const uint4 *xr = (const uint4 *)(x + (two ? row0 + rr : row0) * dim);
#pragma unroll
        for (int j = 0; j < C; j++) u[rr][j] = xr[lane + 32 * j];
    }
    float mean[2], r[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < C; j++) {
            float f[8];
            bf16x8_to_f32(u[rr][j], f);
#pragma unroll
            for (int e = 0; e < 8; e++) s += f[e];
        }
        mean[rr] = warp_sum(s) / (float)dim;
    }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        float q = 0.0f;
#pragma unroll
        for (int j = 0; j < C; j++) {
            float f[8];
            bf16x8_to_f32(u[rr][j], f);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float d = f[e] - mean[rr];
                q += d * d;
            }
        }
        r[rr] = rsqrtf(warp_sum(q) / (float)dim + eps);
    }
#pragma unroll
    for (int j = 0; j < C; j++) {
        const int64_t i = 8 * (lane + 32 * j);
        uint2 packed[2][2]; /* [row][half]: four outputs each */
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float wv[4], bv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            ld_w4(wt, w, i + 4 * hf, wv);
            if (b) ld_w4(bt, b, i + 4 * hf, bv);
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                float f[8];
                bf16x8_to_f32(u[rr][j], f);
                float y[4];
#pragma unroll
                for (int e = 0; e < 4; e++)
                    y[e] = ln_apply(f[4 * hf + e], mean[rr], r[rr], wv[e], b != nullptr, bv[e]);
                packed[rr][hf] = pack4_half<OUT == 1>(y[0], y[1], y[2], y[3]);
            }
        }
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            if (rr == 1 && !two) break;
            *(uint4 *)((uint16_t *)out + (row0 + rr) * dim + i) =
                make_uint4(packed[rr][0].x, packed[rr][0].y, packed[rr][1].x, packed[rr][1].y);
        }
    }
}

/* Launches k_layernorm_warp where it applies (dim a multiple of 128 up to
 * 1024; x, out, w and b 16-byte aligned); false otherwise. in16: x is bf16
 * (then out_kind is 1 or 2), through k_layernorm16_rows where dim is a
 * multiple of 256. */
bool layernorm_warp(cudaStream_t st, int out_kind, void *out, const void *x, int64_t n, int64_t dim,
                    vlm_cuda_weight w, vlm_cuda_weight b, float eps, bool in16 = false) {
    if (dim % 128 || dim > 1024 || ((uintptr_t)x % 16) || ((uintptr_t)out % 16) ||
        ((uintptr_t)w.data % 16) || ((uintptr_t)b.data % 16) || (in16 && out_kind == 0))
        return false;
    const unsigned grid = (unsigned)((n + 7) / 8), grid2 = (unsigned)((n + 15) / 16);
    if (in16 && dim % 256 == 0) { /* 16-byte words of 8 values: k_layernorm16_rows */
#define LN16(CC)                                                                                   \
    case CC:                                                                                       \
        if (out_kind == 1)                                                                         \
            k_layernorm16_rows<CC, 1><<<grid2, 256, 0, st>>>(out, (const uint16_t *)x, n, w.dtype, \
                                                             w.data, b.dtype, b.data, eps);        \
        else                                                                                       \
            k_layernorm16_rows<CC, 2><<<grid2, 256, 0, st>>>(out, (const uint16_t *)x, n, w.dtype, \
                                                             w.data, b.dtype, b.data, eps);        \
        return true;
        switch (dim / 256) {
            LN16(1)
            LN16(2)
            LN16(3)
            LN16(4)
        default:
            break;
        }
#undef LN16
    }
#define LNW(V)                                                                                     \
    case V:                                                                                        \
        if (in16 && out_kind == 1)                                                                 \
            k_layernorm_warp<V, 1, true>                                                           \
                <<<grid, 256, 0, st>>>(out, x, n, w.dtype, w.data, b.dtype, b.data, eps);          \
        else if (in16)                                                                             \
            k_layernorm_warp<V, 2, true>                                                           \
                <<<grid, 256, 0, st>>>(out, x, n, w.dtype, w.data, b.dtype, b.data, eps);          \
        else if (out_kind == 0)                                                                    \
            k_layernorm_warp<V, 0>                                                                 \
                <<<grid, 256, 0, st>>>(out, x, n, w.dtype, w.data, b.dtype, b.data, eps);          \
        else if (out_kind == 1)                                                                    \
            k_layernorm_warp<V, 1>                                                                 \
                <<<grid, 256, 0, st>>>(out, x, n, w.dtype, w.data, b.dtype, b.data, eps);          \
        else                                                                                       \
            k_layernorm_warp<V, 2>                                                                 \
                <<<grid, 256, 0, st>>>(out, x, n, w.dtype, w.data, b.dtype, b.data, eps);          \
        return true;
    switch (dim / 128) {
        LNW(1)
        LNW(2)
        LNW(4)
        LNW(8)
    default:
        return false;
    }
#undef LNW
}

/* Rows of 4k floats, 4 at a time (16-byte loads), a block of 256 threads
 * per row stride (no 64-bit division per element): the vision tower's K/V
 * rounding (store_rows_strided), fc1's bias + quick-GELU and to_half. */
__global__ void k_store_strided4(uint16_t *dst, const float *src, int64_t src_stride,
                                 int64_t n_rows, int64_t row_len) {
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const float4 *sr = (const float4 *)(src + r * src_stride);
        uint2 *dr = (uint2 *)(dst + r * row_len);
        for (int64_t c = threadIdx.x; c < row_len / 4; c += blockDim.x) {
            const float4 v = sr[c];
            uint2 u;
            u.x = (uint32_t)f32_to_bf16_bits(v.x) | ((uint32_t)f32_to_bf16_bits(v.y) << 16);
            u.y = (uint32_t)f32_to_bf16_bits(v.z) | ((uint32_t)f32_to_bf16_bits(v.w) << 16);
            dr[c] = u;
        }
    }
}

int norm_threads(int64_t dim) {
    int t = 32;
    while (t < 1024 && t < dim) t *= 2;
    return t;
}

/* --- RoPE ------------------------------------------------------------------ */

/* One thread per (row, head, pair i < head_dim/2). */
__global__ void k_rope(float *x, int64_t n, int64_t row_stride, int n_heads, int head_dim,
                       const float *cos_t, const float *sin_t) {
    int half = head_dim / 2;
    int64_t total = n * n_heads * half;
    for (int64_t id = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; id < total;
         id += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(id % half);
        int64_t rh = id / half;
        int h = (int)(rh % n_heads);
        int64_t r = rh / n_heads;
        float *v = x + r * row_stride + (int64_t)h * head_dim;
        float c = cos_t[r * half + i], s = sin_t[r * half + i];
        float a = v[i], b = v[i + half];
        /* rotate_half(x) = (-x2, x1) */
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

/* The decoder's RoPE and K/V stores in one launch: ids below n * (H + KV) *
 * half rotate a pair of q or k as k_rope (and a k pair also goes to the
 * cache), the next n * KV * head_dim ids copy one v element each. */
__global__ void k_rope_store(float *x, int64_t n, int64_t row_stride, int n_heads, int n_kv_heads,
                             int head_dim, const float *cos_t, const float *sin_t, void *kd,
                             void *vd, vlm_dtype t, int64_t offset, const int32_t *dpos) {
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();
    const int half = head_dim / 2, nr = n_heads + n_kv_heads;
    const int64_t kvd = (int64_t)n_kv_heads * head_dim, n_rot = n * nr * half;
    const bool bf = t == VLM_DTYPE_BF16;
    if (dpos) { /* the position from the device: tables and cache rows from there */
        const int64_t p = *dpos;
        cos_t += p * half;
        sin_t += p * half;
        offset += p * kvd;
    }
    for (int64_t id = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; id < n_rot + n * kvd;
         id += (int64_t)gridDim.x * blockDim.x) {
        if (id >= n_rot) { /* v element e of row r */
            int64_t j = id - n_rot, r = j / kvd, e = j % kvd;
            store_kv(vd, bf, offset + r * kvd + e, x[r * row_stride + (int64_t)nr * head_dim + e]);
            continue;
        }
        int i = (int)(id % half);
        int64_t rh = id / half;
        int h = (int)(rh % nr);
        int64_t r = rh / nr;
        float *v = x + r * row_stride + (int64_t)h * head_dim;
        float c = cos_t[r * half + i], s = sin_t[r * half + i];
        float a = v[i], b = v[i + half];
        rope_rot(a, b, c, s);
        v[i] = a;
        v[i + half] = b;
        if (h < n_heads) continue;
        int64_t at = offset + r * kvd + (int64_t)(h - n_heads) * head_dim + i;
        store_kv(kd, bf, at, a);
        store_kv(kd, bf, at + half, b);
    }
}

/* --- attention --------------------------------------------------------------
 * One warp per (query, head, key split). Lane l holds output dims
 * l, l+32, l+64, l+96 (head_dim <= 128); q.k is a warp sum. Online softmax
 * in f32: m (running max), l (running sum of exp), acc (running weighted
 * sum), rescaled when the max grows. With one split the warp writes the
 * normalised row; with several, each writes (m, l, acc) to the workspace
 * and k_attn_combine merges them. */

constexpr int ATT_MAXD = 128;
constexpr int ATT_PER_LANE = ATT_MAXD / 32;
constexpr int ATT_KB = 4; /* keys per step of a warp */

/* Below this many keys the few-query kernels take one split: a warp walks
 * every key (6 steps of 16 keys at most in k_attn_dec), with no partials,
 * fence, counter or merge, which cost more than the steps they save at
 * short contexts (decode after a 16-token prompt on an H100, three rounds in
 * turns: 317-320 tokens/s with 32, 321-324 with 96, 319-323 with 160). */
constexpr int ATT_ONE_SPLIT = 96;

/* Key splits of the few-query kernel for n_qh (query, head) warps over n_kv
 * keys: one below ATT_ONE_SPLIT keys, else aim for ~2048 warps, each
 * split >= 16 keys (4 steps of ATT_KB; decoding at 800 cached tokens: 32
 * heads x 50 splits), at most cap. Grows
 * with n_kv, so the count for the longest cache bounds every shorter one:
 * the device-position kernels launch that many and use this count of the
 * current length (the same splits, so the same sums, as a launch for that
 * length). */
__host__ __device__ __forceinline__ int att_splits(int64_t n_qh, int64_t n_kv, int cap) {
    if (n_qh >= 1024 || n_kv < ATT_ONE_SPLIT) return 1;
    int64_t want = 2048 / n_qh, by_len = n_kv / 16;
    int64_t s = want < by_len ? want : by_len;
    if (s > cap) s = cap;
    return s < 1 ? 1 : (int)s;
}

/* One warp merges the n_use partials (m, l, acc[head_dim]) of the
 * (query, head) pair qh into its normalised output row: lane l holds dims
 * l, l + 32, ... The partials come through L2 (__ldcg): in k_attn_dec other
 * blocks wrote them during this launch. Lane s reads split s's (m, l) (the
 * max in one pass over the lanes), and each split's acc row is read
 * MERGE_INFLIGHT splits at a time, all loads issued before the sums: at 62
 * splits (1000 cached keys) a merge that read one split after the other
 * waited ~60 L2 round trips. The sums still run in split order, so l and acc
 * are the ones a split-by-split loop gives, bit for bit. */
constexpr int MERGE_INFLIGHT = 8;

__device__ void attn_merge_splits(float *out, const float *part, int64_t qh, int n_heads,
                                  int head_dim, int n_split, int n_use) {
    const int lane = threadIdx.x & 31;
    const int64_t st = 2 + head_dim;
    const float *pr = part + qh * n_split * st;
    float m = -INFINITY;
    for (int s = lane; s < n_use; s += 32) m = fmaxf(m, __ldcg(pr + s * st));
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.0f;
    float acc[ATT_PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s0 = 0; s0 < n_use; s0 += 32) {
        const int cnt = n_use - s0 < 32 ? n_use - s0 : 32;
        /* lane u: split s0 + u's weight c (0 for an empty split: m = -inf,
         * l = 0) and its l * c */
        float c = 0.0f, lc = 0.0f;
        if (lane < cnt) {
            const float ls = __ldcg(pr + (s0 + lane) * st + 1);
            if (ls != 0.0f) {
                c = __expf(__ldcg(pr + (s0 + lane) * st) - m);
                lc = ls * c;
            }
        }
        for (int k = 0; k < cnt; k += MERGE_INFLIGHT) {
            float v[MERGE_INFLIGHT][ATT_PER_LANE];
#pragma unroll
            for (int u = 0; u < MERGE_INFLIGHT; u++)
#pragma unroll
                for (int j = 0; j < ATT_PER_LANE; j++) {
                    const int d = lane + 32 * j;
                    v[u][j] =
                        k + u < cnt && d < head_dim ? __ldcg(pr + (s0 + k + u) * st + 2 + d) : 0.0f;
                }
#pragma unroll
            for (int u = 0; u < MERGE_INFLIGHT; u++) {
                const float cu = __shfl_sync(0xffffffffu, c, (k + u) & 31);
                const float lu = __shfl_sync(0xffffffffu, lc, (k + u) & 31);
                if (k + u >= cnt || cu == 0.0f) continue; /* past the end, or empty */
                l += lu;
#pragma unroll
                for (int j = 0; j < ATT_PER_LANE; j++) acc[j] += v[u][j] * cu;
            }
        }
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    int64_t qi = qh / n_heads;
    int h = (int)(qh % n_heads);
    float *orow = out + qi * (int64_t)n_heads * head_dim + (int64_t)h * head_dim;
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < head_dim) orow[d] = acc[j] * inv;
    }
}

__global__ void k_attention(float *out, const float *q, int64_t q_stride, vlm_dtype kvt,
                            const void *k, const void *v, int64_t kv_stride, int64_t n_q,
                            int64_t n_kv, int n_heads, int n_kv_heads, int head_dim, bool causal,
                            int64_t q_pos0, float scale, int n_split, float *part,
                            const int32_t *dpos) {
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();
    int warps = blockDim.x >> 5;
    int64_t qh = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (qh >= n_q * n_heads) return;
    int split = blockIdx.y;
    /* n_split: the launch's splits (the partials' layout); n_use of them
     * take keys. With the position on the device (dpos: the graph's decode
     * step) the queries sit at *dpos.., the keys are [0, *dpos + n_q), and
     * n_use is the count a launch for that length would have had. */
    int n_use = n_split;
    if (dpos) {
        q_pos0 = *dpos;
        n_kv = q_pos0 + n_q;
        n_use = att_splits(n_q * n_heads, n_kv, n_split);
        if (split >= n_use) return;
    }
    int64_t qi = qh / n_heads;
    int h = (int)(qh % n_heads);
    int kvh = h / (n_heads / n_kv_heads);
    int64_t n_see = causal ? q_pos0 + qi + 1 : n_kv;
    if (n_see > n_kv) n_see = n_kv;
    int64_t per = (n_see + n_use - 1) / n_use;
    int64_t k0 = (int64_t)split * per, k1 = k0 + per < n_see ? k0 + per : n_see;

    const float *qr = q + qi * q_stride + (int64_t)h * head_dim;
    float qv[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        qv[j] = d < head_dim ? qr[d] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int64_t kvoff = (int64_t)kvh * head_dim;
    /* ATT_KB keys per step: their K and V elements are all loaded before
     * any arithmetic (2 * ATT_KB * ATT_PER_LANE loads in flight per lane,
     * where one key at a time waited a memory latency per key), then the
     * block's scores join the online softmax at once. Keys past k1 score
     * -inf and weigh exp(-inf) = 0. */
    for (int64_t t = k0; t < k1; t += ATT_KB) {
        float kk[ATT_KB][ATT_PER_LANE], vv[ATT_KB][ATT_PER_LANE], sc[ATT_KB];
#pragma unroll
        for (int b = 0; b < ATT_KB; b++) {
            bool in = t + b < k1;
            int64_t base = (t + b) * kv_stride + kvoff;
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                bool ok = in && d < head_dim;
                kk[b][j] = ok ? ld_w(kvt, k, base + d) : 0.0f;
                vv[b][j] = ok ? ld_w(kvt, v, base + d) : 0.0f;
            }
        }
        float mn = m;
#pragma unroll
        for (int b = 0; b < ATT_KB; b++) {
            float sv = 0.0f;
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; j++) sv += qv[j] * kk[b][j];
            sv = warp_sum(sv) * scale;
            sc[b] = t + b < k1 ? sv : -INFINITY;
            mn = fmaxf(mn, sc[b]);
        }
        float corr = __expf(m - mn); /* m = -inf before the first key: 0 */
        l *= corr;
#pragma unroll
        for (int j = 0; j < ATT_PER_LANE; j++) acc[j] *= corr;
#pragma unroll
        for (int b = 0; b < ATT_KB; b++) {
            float p = __expf(sc[b] - mn);
            l += p;
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; j++) acc[j] += p * vv[b][j];
        }
        m = mn;
    }
    if (n_split == 1) {
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *orow = out + qi * (int64_t)n_heads * head_dim + (int64_t)h * head_dim;
#pragma unroll
        for (int j = 0; j < ATT_PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < head_dim) orow[d] = acc[j] * inv;
        }
        return;
    }
    /* part: [n_q*n_heads][n_split][2 + head_dim] */
    float *pr = part + (qh * n_split + split) * (int64_t)(2 + head_dim);
    if (lane == 0) {
        pr[0] = m;
        pr[1] = l;
    }
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < head_dim) pr[2 + d] = acc[j];
    }
}

/* --- attention, decode: a key per lane group ---------------------------------
 * The same work split as k_attention (a warp per (query, head, key split),
 * the same partials for k_attn_combine, the same device-position rule), but
 * the warp takes 8 keys at a time: lane group g (lanes 4g .. 4g + 3) scores
 * key g, each lane holding a quarter of the head's dims (HD / 4 values read
 * as 16-byte vectors: one row of K or V is 4 lanes' contiguous loads), so a
 * score needs two shuffles instead of a 32-lane sum per key, and every lane
 * has 2 keys' K and V vectors in flight. Each group keeps its own online
 * softmax (max, sum, its quarter of the output, in log2 units: q is
 * pre-scaled by scale * log2(e)); the 8 groups merge by shuffles at the end.
 * KV bf16 (HD a multiple of 32) or f32 (HD a multiple of 16), rows 16-byte
 * aligned (the launcher checks). */
constexpr int DEC_U = 2; /* keys per lane group in flight */

template <int HD, bool BF>
__global__ void __launch_bounds__(128)
    k_attn_dec(float *out, const float *q, int64_t q_stride, const void *k, const void *v,
               int64_t kv_stride, int64_t n_q, int64_t n_kv, int n_heads, int n_kv_heads,
               bool causal, int64_t q_pos0, float scale, int n_split, float *part,
               const int32_t *dpos, int *cnt, bool prefetch) {
    constexpr int EPL = HD / 4;    /* values a lane holds */
    constexpr int PV = BF ? 8 : 4; /* values per 16-byte vector */
    constexpr int NV = EPL / PV;   /* vectors per lane and row */
    const int64_t qh = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (qh >= n_q * n_heads) return;
    const int split = blockIdx.y;
    int n_use = n_split;
    /* The device position is written before the step's first kernel, so
     * it may be read before pdl_wait; so may the cached keys of earlier
     * steps. The queries and the newest n_q K/V rows are the kernel
     * before's: they are read after the wait (the prefetch below may touch
     * the newest rows too: it only moves lines into L2, where the writes
     * land). */
    if (dpos) { /* as k_attention */
        q_pos0 = *dpos;
        n_kv = q_pos0 + n_q;
        n_use = att_splits(n_q * n_heads, n_kv, n_split);
        if (split >= n_use) return;
    }
    const int64_t qi = qh / n_heads;
    const int h = (int)(qh % n_heads), kvh = h / (n_heads / n_kv_heads);
    int64_t n_see = causal ? q_pos0 + qi + 1 : n_kv;
    if (n_see > n_kv) n_see = n_kv;
    const int64_t per = (n_see + n_use - 1) / n_use;
    const int64_t k0 = (int64_t)split * per, k1 = k0 + per < n_see ? k0 + per : n_see;
    const int64_t kvoff = (int64_t)kvh * HD + t * EPL;
    const size_t esz = BF ? 2 : 4;
    /* this lane's K and V vectors of the split's keys into L2 while the
     * kernel before finishes (its weight stream evicted them) */
    if (prefetch)
        for (int64_t key = k0 + g; key < k1; key += 8) {
            const size_t at = (size_t)(kvoff + key * kv_stride) * esz;
            prefetch_l2((const char *)k + at);
            prefetch_l2((const char *)v + at);
        }
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();

    const float sl2 = scale * 1.4426950408889634f;
    const float *qr = q + qi * q_stride + (int64_t)h * HD + t * EPL;
    float qv[EPL], acc[EPL];
#pragma unroll
    for (int j = 0; j < EPL; j++) qv[j] = qr[j] * sl2, acc[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int64_t kb = k0; kb < k1; kb += 8 * DEC_U) {
        uint4 kr[DEC_U][NV], vr[DEC_U][NV];
#pragma unroll
        for (int u = 0; u < DEC_U; u++) {
            const int64_t key = kb + u * 8 + g;
            const bool in = key < k1;
            const size_t at = (size_t)(kvoff + (in ? key : k0) * kv_stride) * esz;
            const uint4 *kp = (const uint4 *)((const char *)k + at);
            const uint4 *vp = (const uint4 *)((const char *)v + at);
#pragma unroll
            for (int j = 0; j < NV; j++) {
                kr[u][j] = in ? __ldg(kp + j) : make_uint4(0u, 0u, 0u, 0u);
                vr[u][j] = in ? __ldg(vp + j) : make_uint4(0u, 0u, 0u, 0u);
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_U; u++) {
            float kf[EPL], vf[EPL];
#pragma unroll
            for (int j = 0; j < NV; j++) {
                if (BF) { /* bf16 -> f32: the bits in the high half */
                    const uint32_t kw[4] = {kr[u][j].x, kr[u][j].y, kr[u][j].z, kr[u][j].w};
                    const uint32_t vw[4] = {vr[u][j].x, vr[u][j].y, vr[u][j].z, vr[u][j].w};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        kf[j * 8 + 2 * e] = __uint_as_float(kw[e] << 16);
                        kf[j * 8 + 2 * e + 1] = __uint_as_float(kw[e] & 0xffff0000u);
                        vf[j * 8 + 2 * e] = __uint_as_float(vw[e] << 16);
                        vf[j * 8 + 2 * e + 1] = __uint_as_float(vw[e] & 0xffff0000u);
                    }
                } else {
                    kf[j * 4] = __uint_as_float(kr[u][j].x),
                           kf[j * 4 + 1] = __uint_as_float(kr[u][j].y);
                    kf[j * 4 + 2] = __uint_as_float(kr[u][j].z),
                               kf[j * 4 + 3] = __uint_as_float(kr[u][j].w);
                    vf[j * 4] = __uint_as_float(vr[u][j].x),
                           vf[j * 4 + 1] = __uint_as_float(vr[u][j].y);
                    vf[j * 4 + 2] = __uint_as_float(vr[u][j].z),
                               vf[j * 4 + 3] = __uint_as_float(vr[u][j].w);
                }
            }
            float sc = 0.0f;
#pragma unroll
            for (int j = 0; j < EPL; j++) sc += qv[j] * kf[j];
            sc += __shfl_xor_sync(0xffffffffu, sc, 1);
            sc += __shfl_xor_sync(0xffffffffu, sc, 2);
            if (kb + u * 8 + g >= k1) continue; /* this group's key is past the split */
            const float mn = fmaxf(m, sc);
            const float corr = exp2f(m - mn); /* m = -inf before the first key: 0 */
            const float p = exp2f(sc - mn);
            l = l * corr + p;
#pragma unroll
            for (int j = 0; j < EPL; j++) acc[j] = acc[j] * corr + p * vf[j];
            m = mn;
        }
    }
    /* merge the 8 groups: lanes t, t + 4, ..., t + 28 hold the same dims */
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, off);
        const float lo = __shfl_xor_sync(0xffffffffu, l, off);
        const float mn = fmaxf(m, mo);
        const float c = mn == -INFINITY ? 0.0f : exp2f(m - mn);
        const float co = mn == -INFINITY ? 0.0f : exp2f(mo - mn);
        l = l * c + lo * co;
#pragma unroll
        for (int j = 0; j < EPL; j++) {
            const float ao = __shfl_xor_sync(0xffffffffu, acc[j], off);
            acc[j] = acc[j] * c + ao * co;
        }
        m = mn;
    }
    /* lanes 0..3 hold the merged state. One split in use (a device
     * position below ATT_ONE_SPLIT keys) writes the row itself, as a
     * launch of one split would, unless k_attn_combine (no counters) reads
     * the partials. */
    if (n_split == 1 || (n_use == 1 && cnt)) {
        if (g != 0) return;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *orow = out + qi * (int64_t)n_heads * HD + (int64_t)h * HD + t * EPL;
#pragma unroll
        for (int j = 0; j < EPL; j++) orow[j] = acc[j] * inv;
        return;
    }
    /* partials as k_attention's, m in natural-log units for k_attn_combine */
    float *pr = part + (qh * n_split + split) * (int64_t)(2 + HD);
    if (g == 0) {
        if (t == 0) {
            pr[0] = m == -INFINITY ? -INFINITY : m * 0.6931471805599453f;
            pr[1] = l;
        }
#pragma unroll
        for (int j = 0; j < EPL; j++) pr[2 + t * EPL + j] = acc[j];
    }
    if (!cnt) return; /* k_attn_combine merges the splits */
    /* The last of the n_use splits of this (query, head) to arrive merges
     * them all, in split order as k_attn_combine does (the same sums,
     * whichever split comes last), and sets the counter back to 0 for the
     * next launch: one launch fewer a layer. */
    __threadfence(); /* the partials above are visible before the count */
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(cnt + qh, 1) == n_use - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence(); /* the other splits' partials, read below through L2 */
    attn_merge_splits(out, part, qh, n_heads, HD, n_split, n_use);
    if (lane == 0) cnt[qh] = 0;
}

/* --- attention, tiled (prefill chunks and the vision tower) -----------------
 * Many queries: a block takes FA_QT consecutive queries of one head (4 per
 * warp) and walks the keys in tiles of FA_KT, each tile's K and V loaded
 * once into shared memory for all FA_QT queries (the one-warp-per-query
 * kernel read every key from L2 once per query). Lane j scores key j of the
 * tile for the warp's 4 queries (q from shared memory as one float4 per
 * dimension: Qs is [dim][query]); the tile's scores join each query's online
 * softmax (f32, __expf) at once; then lane l accumulates output dims l,
 * l+32, ... over the tile's keys, p broadcast by shuffles. Keys a query may
 * not see (causal, or past the end) score -inf and weigh 0. Ks rows are
 * padded to ATT_MAXD + 1 floats so that the 32 lanes reading 32 different
 * keys at one dim hit 32 banks. Shared memory: 41 KB. */
constexpr int FA_QT = 16;           /* queries per block: 4 warps x 4 */
constexpr int FA_KT = 32;           /* keys per tile: one per lane */
constexpr int FA_KP = ATT_MAXD + 1; /* padded K row */
constexpr int FA_MIN_Q = 32;        /* queries from which the tiled kernel is used */

__global__ void __launch_bounds__(128)
    k_attn_tiled(float *out, const float *q, int64_t q_stride, vlm_dtype kvt, const void *k,
                 const void *v, int64_t kv_stride, int64_t n_q, int64_t n_kv, int n_heads,
                 int n_kv_heads, int head_dim, bool causal, int64_t q_pos0, float scale) {
    __shared__ __align__(16) float Qs[ATT_MAXD][FA_QT];
    __shared__ float Ks[FA_KT][FA_KP];
    __shared__ float Vs[FA_KT][ATT_MAXD];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int64_t q0 = (int64_t)blockIdx.x * FA_QT;
    /* sequence blockIdx.z: its queries, keys and outputs follow the previous
     * sequence's n_q (n_kv) rows */
    const int64_t z = blockIdx.z;
    q += z * n_q * q_stride;
    out += z * n_q * (int64_t)n_heads * head_dim;
    for (int i = tid; i < FA_QT * head_dim; i += blockDim.x) {
        int r = i / head_dim, d = i % head_dim;
        int64_t qi = q0 + r;
        Qs[d][r] = qi < n_q ? q[qi * q_stride + (int64_t)h * head_dim + d] : 0.0f;
    }
    /* the keys any query of the block sees */
    int64_t q_hi = q0 + FA_QT < n_q ? q0 + FA_QT : n_q;
    int64_t kend = causal ? q_pos0 + q_hi : n_kv;
    if (kend > n_kv) kend = n_kv;
    /* the keys each of the warp's 4 queries sees (0 past the last query) */
    int64_t see[4];
    float m[4], l[4], acc[4][ATT_PER_LANE];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int64_t qi = q0 + warp * 4 + a;
        int64_t ns = causal ? q_pos0 + qi + 1 : n_kv;
        see[a] = qi < n_q ? (ns < n_kv ? ns : n_kv) : 0;
        m[a] = -INFINITY;
        l[a] = 0.0f;
#pragma unroll
        for (int j = 0; j < ATT_PER_LANE; j++) acc[a][j] = 0.0f;
    }
    const int64_t kvoff = z * n_kv * kv_stride + (int64_t)kvh * head_dim;
    for (int64_t t0 = 0; t0 < kend; t0 += FA_KT) {
        __syncthreads(); /* the previous tile is used up (and Qs written) */
        for (int i = tid; i < FA_KT * head_dim; i += blockDim.x) {
            int r = i / head_dim, d = i % head_dim;
            int64_t key = t0 + r;
            bool in = key < kend;
            int64_t at = key * kv_stride + kvoff + d;
            Ks[r][d] = in ? ld_w(kvt, k, at) : 0.0f;
            Vs[r][d] = in ? ld_w(kvt, v, at) : 0.0f;
        }
        __syncthreads();
        /* scores of key t0 + lane for the warp's 4 queries */
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int d = 0; d < head_dim; d++) {
            float kd = Ks[lane][d];
            float4 qd = *(const float4 *)&Qs[d][warp * 4];
            s[0] += qd.x * kd;
            s[1] += qd.y * kd;
            s[2] += qd.z * kd;
            s[3] += qd.w * kd;
        }
        int64_t key = t0 + lane;
        float p[4];
#pragma unroll
        for (int a = 0; a < 4; a++) {
            float sa = key < see[a] ? s[a] * scale : -INFINITY;
            float tmax = sa;
            for (int o = 16; o > 0; o >>= 1)
                tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
            float mn = fmaxf(m[a], tmax);
            /* nothing seen yet and nothing in this tile: keep the state */
            float corr = mn == -INFINITY ? 1.0f : __expf(m[a] - mn);
            p[a] = sa == -INFINITY ? 0.0f : __expf(sa - mn);
            l[a] = l[a] * corr + warp_sum(p[a]);
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; j++) acc[a][j] *= corr;
            m[a] = mn;
        }
        int kn = kend - t0 < FA_KT ? (int)(kend - t0) : FA_KT;
        for (int kk = 0; kk < kn; kk++) {
            float pk[4];
#pragma unroll
            for (int a = 0; a < 4; a++) pk[a] = __shfl_sync(0xffffffffu, p[a], kk);
#pragma unroll
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                float vd = d < head_dim ? Vs[kk][d] : 0.0f;
#pragma unroll
                for (int a = 0; a < 4; a++) acc[a][j] += pk[a] * vd;
            }
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int64_t qi = q0 + warp * 4 + a;
        if (qi >= n_q) break;
        float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
        float *orow = out + qi * (int64_t)n_heads * head_dim + (int64_t)h * head_dim;
#pragma unroll
        for (int j = 0; j < ATT_PER_LANE; j++) {
            int d = lane + 32 * j;
            if (d < head_dim) orow[d] = acc[a][j] * inv;
        }
    }
}

/* --- attention on tensor cores (bf16 mode: prefill and the vision tower) ----
 * Flash-style: a block of NW warps (4 or 8) takes 16 NW consecutive queries
 * of one head and walks the keys in tiles of MA_KT = 64. Each warp keeps its
 * 16 queries (rounded to bf16) as mma A fragments in registers, and its
 * 16 x head_dim output and the online softmax state (max, sum; f32) in
 * registers too; only the K and V tiles pass through shared memory, as bf16
 * ([key][head_dim + 8]: the 8 extra keep the fragment loads free of bank
 * conflicts). Per tile and warp: S = Q K^T with mma.m16n8k16 (bf16 in, f32
 * accumulate; K fragments read as 32-bit words), the online softmax on the
 * accumulators (row max and sum over the 4 lanes of a row by shuffles, exp2
 * of the scaled scores), P rounded to bf16 as the A operand of O += P V
 * straight from the S accumulators (the m16n8 C layout of two key octets is
 * the m16k16 A layout), V's B fragments by ldmatrix .trans from the
 * row-major tile. Keys a query may not see (causal, or past the end) weigh
 * 0; tiles wholly after the block's last query are skipped. Only for
 * callers whose q, K and V have bf16 precision already (their products
 * round activations to bf16): the result differs from the f32 kernels by
 * the bf16 rounding of q, K, V and P (~4e-3 relative). head_dim a multiple
 * of 16, <= 128 (a template argument, so every loop over it unrolls into
 * registers). */
constexpr int MA_KT = 64;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *reinterpret_cast<uint32_t *>(&v);
}

/* 2^x with one MUFU instruction (subnormal results flushed to 0; -inf
 * gives 0): the softmax's exponentials, whose results are rounded to bf16
 * as P anyway. */
__device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Four 8x8 b16 matrices, transposed, from shared memory: lane l gives the
 * address of row l % 8 of matrix l / 8. */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem_row) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* The online softmax's step for a thread's two rows (the four lanes of a
 * row hold its scores): the tile's row maxima tmax (raw scores) joined
 * across those lanes and scaled to log2 units by sl2, the running maxima m
 * moved, the running sums l rescaled, and corr, what the output so far is
 * to be scaled by. */
__device__ __forceinline__ void softmax_rows_step(float (&tmax)[2], float (&m)[2], float (&l)[2],
                                                  float (&corr)[2], float sl2) {
#pragma unroll
    for (int row = 0; row < 2; row++) {
        tmax[row] = fmaxf(tmax[row], __shfl_xor_sync(0xffffffffu, tmax[row], 1));
        tmax[row] = fmaxf(tmax[row], __shfl_xor_sync(0xffffffffu, tmax[row], 2));
        const float mn = fmaxf(m[row], tmax[row] * sl2);
        corr[row] = ex2_approx(m[row] - mn);
        m[row] = mn;
        l[row] *= corr[row];
    }
}

/* Four consecutive values of a K or V row (f32 or bf16 in global memory) as
 * bf16 into shared memory. vec: the row start and kv_stride allow one
 * 16-byte (f32) or 8-byte (bf16) load. */
__device__ __forceinline__ void load4_bf16(__nv_bfloat16 *dst, vlm_dtype t, const void *src,
                                           int64_t at, bool vec, bool in) {
    float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (in) {
        if (t == VLM_DTYPE_BF16) {
            const __nv_bfloat16 *p = (const __nv_bfloat16 *)src + at;
            if (vec) {
                *reinterpret_cast<uint2 *>(dst) = __ldg(reinterpret_cast<const uint2 *>(p));
                return;
            }
            for (int i = 0; i < 4; i++) f[i] = __bfloat162float(p[i]);
        } else {
            const float *p = (const float *)src + at;
            if (vec) {
                float4 v = __ldg(reinterpret_cast<const float4 *>(p));
                f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
            } else {
                for (int i = 0; i < 4; i++) f[i] = p[i];
            }
        }
    }
    uint2 o;
    o.x = pack_bf16(f[0], f[1]);
    o.y = pack_bf16(f[2], f[3]);
    *reinterpret_cast<uint2 *>(dst) = o;
}

/* 16 bytes from global to shared memory without passing through registers
 * (cp.async, sm_80+); n bytes of it read (0: the 16 bytes are zeroed). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int n) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* NW warps (16 queries each) a block. ASYNC: K and V are bf16 rows whose
 * starts are 16-byte aligned, copied with cp.async into two buffers a tile
 * apart (tile t + 1 loads while tile t is computed); otherwise (f32, or
 * unaligned) each tile is loaded and rounded by the threads between two
 * barriers. Shared memory (dynamic): (ASYNC ? 2 : 1) x 2 x 64 x
 * (head_dim + 8) bf16. */
template <int HD, bool ASYNC> constexpr size_t mma_smem() {
    return (size_t)(ASYNC ? 2 : 1) * 2 * MA_KT * (HD + 8) * 2;
}

/* Up to head_dim 64 the kernel fits in 128 registers, so that two blocks
 * of 8 warps (four of 4) share an SM; at 133 the vision tower's blocks ran
 * one to an SM. Wider heads keep what they need. */
template <int HD, int NW> constexpr int mma_min_blocks() {
    return HD <= 64 ? 16 / NW : 1;
}

template <int HD, int NW, bool ASYNC, bool H16 = false>
__global__ void __launch_bounds__(NW * 32, mma_min_blocks<HD, NW>())
    k_attn_mma(void *out_, const void *q_, int64_t q_stride, vlm_dtype kvt, const void *k,
               const void *v, int64_t kv_stride, int64_t n_q, int64_t n_kv, int n_heads,
               int n_kv_heads, bool causal, int64_t q_pos0, float scale, bool vec) {
    constexpr int HP = HD + 8; /* padded row (bf16) */
    constexpr int NT = MA_KT / 8, DT = HD / 8, KS = HD / 16, QT = NW * 16;
    extern __shared__ __align__(16) unsigned char ma_smem[];
    __nv_bfloat16 *Kbuf = (__nv_bfloat16 *)ma_smem;            /* [buffers][MA_KT][HP] */
    __nv_bfloat16 *Vbuf = Kbuf + (ASYNC ? 2 : 1) * MA_KT * HP; /* [buffers][MA_KT][HP] */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3; /* fragment row group, thread in group */
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int64_t z = blockIdx.z; /* the sequence (the vision tower's crops) */
    /* H16: q and the output are bf16 (the tower's 16-bit path), else f32 */
    const float *q = (const float *)q_ + (H16 ? 0 : z * n_q * q_stride);
    const __nv_bfloat16 *qh = (const __nv_bfloat16 *)q_ + (H16 ? z * n_q * q_stride : 0);
    float *out = (float *)out_ + (H16 ? 0 : z * n_q * (int64_t)n_heads * HD);
    __nv_bfloat16 *outh = (__nv_bfloat16 *)out_ + (H16 ? z * n_q * (int64_t)n_heads * HD : 0);
    const int64_t kvoff = z * n_kv * kv_stride + (int64_t)kvh * HD;
    const int64_t q0 = (int64_t)blockIdx.x * QT;
    const int64_t r0 = q0 + warp * 16 + g, r1 = r0 + 8; /* this lane's two query rows */
    const int64_t q_hi = q0 + QT < n_q ? q0 + QT : n_q;
    /* key counts and positions in 32 bits (mma_attention takes no
     * sequence past INT32_MAX keys): fewer registers in the tile loop */
    const int kend = (int)(causal && q_pos0 + q_hi < n_kv ? q_pos0 + q_hi : n_kv);

    /* one tile of K and V rows [t0, t0 + MA_KT) into buffer b */
    auto load_tile = [&](int t0, int b) {
        __nv_bfloat16 *Ks = Kbuf + b * MA_KT * HP, *Vs = Vbuf + b * MA_KT * HP;
        if (ASYNC) {
            for (int i = tid; i < MA_KT * (HD / 8); i += NW * 32) {
                const int kr = i / (HD / 8), d = (i % (HD / 8)) * 8;
                const int key = t0 + kr;
                const bool in = key < kend;
                const int64_t at = kvoff + (in ? key : 0) * kv_stride + d;
                cp_async16(Ks + kr * HP + d, (const __nv_bfloat16 *)k + at, in ? 16 : 0);
                cp_async16(Vs + kr * HP + d, (const __nv_bfloat16 *)v + at, in ? 16 : 0);
            }
            cp_async_commit();
        } else {
            for (int i = tid; i < MA_KT * (HD / 4); i += NW * 32) {
                const int kr = i / (HD / 4), d = (i % (HD / 4)) * 4;
                const int key = t0 + kr;
                const int64_t at = kvoff + key * kv_stride + d;
                load4_bf16(Ks + kr * HP + d, kvt, k, at, vec, key < kend);
                load4_bf16(Vs + kr * HP + d, kvt, v, at, vec, key < kend);
            }
        }
    };
    if (ASYNC && kend > 0) load_tile(0, 0); /* in flight while Q is read */

    /* Q as A fragments: a0 (row g, dims 2t..), a1 (row g + 8), a2, a3 the
     * same 8 dims on */
    uint32_t qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        const int d = ks * 16 + 2 * t4;
        bool in0 = r0 < n_q, in1 = r1 < n_q;
        if (H16) { /* two bf16 values are one 32-bit word already */
            const __nv_bfloat16 *p0 = qh + r0 * q_stride + (int64_t)h * HD + d;
            const __nv_bfloat16 *p1 = qh + r1 * q_stride + (int64_t)h * HD + d;
            qa[ks][0] = in0 ? *reinterpret_cast<const uint32_t *>(p0) : 0u;
            qa[ks][1] = in1 ? *reinterpret_cast<const uint32_t *>(p1) : 0u;
            qa[ks][2] = in0 ? *reinterpret_cast<const uint32_t *>(p0 + 8) : 0u;
            qa[ks][3] = in1 ? *reinterpret_cast<const uint32_t *>(p1 + 8) : 0u;
            continue;
        }
        const float *p0 = q + r0 * q_stride + (int64_t)h * HD + d;
        const float *p1 = q + r1 * q_stride + (int64_t)h * HD + d;
        qa[ks][0] = pack_bf16(in0 ? p0[0] : 0.0f, in0 ? p0[1] : 0.0f);
        qa[ks][1] = pack_bf16(in1 ? p1[0] : 0.0f, in1 ? p1[1] : 0.0f);
        qa[ks][2] = pack_bf16(in0 ? p0[8] : 0.0f, in0 ? p0[9] : 0.0f);
        qa[ks][3] = pack_bf16(in1 ? p1[8] : 0.0f, in1 ? p1[9] : 0.0f);
    }
    float o[DT][4];
#pragma unroll
    for (int j = 0; j < DT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    /* softmax state of rows r0 (index 0) and r1 (index 1), in log2 units */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float sl2 = scale * 1.4426950408889634f;
    const int see0 = (int)(causal && q_pos0 + r0 + 1 < n_kv ? q_pos0 + r0 + 1 : n_kv);
    const int see1 = (int)(causal && q_pos0 + r1 + 1 < n_kv ? q_pos0 + r1 + 1 : n_kv);

    int buf = 0;
    for (int t0 = 0; t0 < kend; t0 += MA_KT) {
        if (ASYNC) {
            if (t0 + MA_KT < kend) { /* the next tile into the other buffer */
                load_tile(t0 + MA_KT, buf ^ 1);
                cp_async_wait<1>(); /* this tile's group is complete */
            } else {
                cp_async_wait<0>();
            }
            __syncthreads(); /* every thread's copies of this tile are visible */
        } else {
            __syncthreads(); /* the previous tile is used up */
            load_tile(t0, 0);
            __syncthreads();
        }
        /* the keys of this tile that exist: key octets and 16-key chunks
         * wholly past them are skipped (577 vision keys leave 1 of 64 in
         * the last tile); their scores stay 0 and are masked below */
        const int kn = kend - t0 < MA_KT ? kend - t0 : MA_KT;
        const __nv_bfloat16 *Ks = Kbuf + buf * MA_KT * HP, *Vs = Vbuf + buf * MA_KT * HP;
        /* S = Q K^T: 16 queries x 64 keys, NT accumulators of 8 keys */
        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            if (j * 8 >= kn) continue;
            const __nv_bfloat16 *kr = Ks + (j * 8 + g) * HP + 2 * t4;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr + ks * 16);
                uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + ks * 16 + 8);
                mma_bf16(s[j], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b0, b1);
            }
        }
        /* online softmax: c0, c1 are row r0's keys 8j + 2t, +1; c2, c3
         * row r1's. Only tiles reaching past a row's last visible key
         * need the per-key test. The row maxima are taken on the raw
         * scores (the scale is positive) and scaled once; each p is
         * then one FMA and one ex2: exp2(s sl2 - m). */
        const bool full = t0 + MA_KT <= see0 && t0 + MA_KT <= see1;
        if (!full) {
#pragma unroll
            for (int j = 0; j < NT; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = t0 + j * 8 + 2 * t4 + (e & 1);
                    if (key >= ((e >> 1) ? see1 : see0)) s[j][e] = -INFINITY;
                }
            }
        }
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < NT; j++) {
            tmax[0] = fmaxf(tmax[0], fmaxf(s[j][0], s[j][1]));
            tmax[1] = fmaxf(tmax[1], fmaxf(s[j][2], s[j][3]));
        }
        /* Every row, a query's or not, sees key 0 (see0, see1 >= 1), so
         * m is finite from the first tile on and a masked score (-inf)
         * gives p = ex2(-inf) = 0; corr is 0 at the first tile. */
        float corr[2];
        softmax_rows_step(tmax, m, l, corr, sl2);
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = e >> 1;
                const float p = ex2_approx(fmaf(s[j][e], sl2, -m[row]));
                s[j][e] = p;
                l[row] += p; /* this lane's part; the row's 4 lanes add up at the end */
            }
        }
#pragma unroll
        for (int j = 0; j < DT; j++) {
            o[j][0] *= corr[0], o[j][1] *= corr[0];
            o[j][2] *= corr[1], o[j][3] *= corr[1];
        }
        /* O += P V over 16 keys at a time: P's A fragment from the S
         * accumulators of key octets 2kc and 2kc + 1 */
#pragma unroll
        for (int kc = 0; kc < MA_KT / 16; kc++) {
            if (kc * 16 >= kn) break;
            const uint32_t a0 = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
            const uint32_t a1 = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
            const uint32_t a2 = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            const uint32_t a3 = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            /* matrix lane / 8: keys +0 / +8 (bit 0), dims +0 / +8 (bit 1) */
            const int mi = lane >> 3;
            const __nv_bfloat16 *vr =
                Vs + (kc * 16 + (lane & 7) + (mi & 1) * 8) * HP + (mi >> 1) * 8;
#pragma unroll
            for (int j = 0; j < DT; j += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, vr + j * 8);
                mma_bf16(o[j], a0, a1, a2, a3, b[0], b[1]);
                mma_bf16(o[j + 1], a0, a1, a2, a3, b[2], b[3]);
            }
        }
        if (ASYNC) {
            __syncthreads(); /* this buffer is used up before the next-but-one tile lands in it */
            buf ^= 1;
        }
    }
#pragma unroll
    for (int row = 0; row < 2; row++) {
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 1);
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 2);
    }
    const float inv0 = l[0] > 0.0f ? 1.0f / l[0] : 0.0f, inv1 = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
    const int64_t c0 = r0 * (int64_t)n_heads * HD + (int64_t)h * HD + 2 * t4;
    const int64_t c1 = r1 * (int64_t)n_heads * HD + (int64_t)h * HD + 2 * t4;
    if (H16) { /* rounded as to_half rounds: the output projection's input */
#pragma unroll
        for (int j = 0; j < DT; j++) {
            if (r0 < n_q)
                *reinterpret_cast<uint32_t *>(outh + c0 + j * 8) =
                    pack_bf16(o[j][0] * inv0, o[j][1] * inv0);
            if (r1 < n_q)
                *reinterpret_cast<uint32_t *>(outh + c1 + j * 8) =
                    pack_bf16(o[j][2] * inv1, o[j][3] * inv1);
        }
        return;
    }
    float *o0 = out + c0, *o1 = out + c1;
#pragma unroll
    for (int j = 0; j < DT; j++) {
        if (r0 < n_q) o0[j * 8] = o[j][0] * inv0, o0[j * 8 + 1] = o[j][1] * inv0;
        if (r1 < n_q) o1[j * 8] = o[j][2] * inv1, o1[j * 8 + 1] = o[j][3] * inv1;
    }
}

/* Launches k_attn_mma<HD, NW, ASYNC>; the dynamic shared memory limit is
 * raised once per instance where it passes 48 KB. false: the card refused
 * (the caller falls back to the f32 kernel). */
template <int HD, int NW, bool ASYNC, bool H16 = false>
bool launch_mma(dim3 grid, cudaStream_t st, void *out, const void *q, int64_t q_stride,
                vlm_dtype kvt, const void *k, const void *v, int64_t kv_stride, int64_t n_q,
                int64_t n_kv, int n_heads, int n_kv_heads, bool causal, int64_t q_pos0, float scale,
                bool vec) {
    constexpr size_t smem = mma_smem<HD, ASYNC>();
    static int opted = smem <= 48 * 1024 ? 1 : 0; /* 1 yes, -1 refused */
    if (!opted) {
        cudaError_t e = cudaFuncSetAttribute(
            k_attn_mma<HD, NW, ASYNC, H16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) (void)cudaGetLastError();
        opted = e == cudaSuccess ? 1 : -1;
    }
    if (opted < 0) return false;
    k_attn_mma<HD, NW, ASYNC, H16>
        <<<grid, NW * 32, smem, st>>>(out, q, q_stride, kvt, k, v, kv_stride, n_q, n_kv, n_heads,
                                      n_kv_heads, causal, q_pos0, scale, vec);
    return true;
}

template <int HD>
bool launch_mma_hd(int nw, bool async, bool h16, dim3 grid, cudaStream_t st, void *out,
                   const void *q, int64_t q_stride, vlm_dtype kvt, const void *k, const void *v,
                   int64_t kv_stride, int64_t n_q, int64_t n_kv, int n_heads, int n_kv_heads,
                   bool causal, int64_t q_pos0, float scale, bool vec) {
#define MMA_ARGS                                                                                   \
    grid, st, out, q, q_stride, kvt, k, v, kv_stride, n_q, n_kv, n_heads, n_kv_heads, causal,      \
        q_pos0, scale, vec
    if (h16) /* bf16 q and output: only with bf16 K/V through cp.async */
        return nw == 8 ? launch_mma<HD, 8, true, true>(MMA_ARGS)
                       : launch_mma<HD, 4, true, true>(MMA_ARGS);
    if (nw == 8)
        return async ? launch_mma<HD, 8, true>(MMA_ARGS) : launch_mma<HD, 8, false>(MMA_ARGS);
    return async ? launch_mma<HD, 4, true>(MMA_ARGS) : launch_mma<HD, 4, false>(MMA_ARGS);
#undef MMA_ARGS
}

/* --- attention on Hopper's warpgroup MMA (sm_90a: the vision tower) --------
 * The 16-bit path's attention for head_dim 64 without a causal mask (the
 * vision tower's shape), on `wgmma` instead of `mma.sync`: a block of two
 * warpgroups (256 threads) takes 128 queries of one head, each warpgroup 64
 * of them, and walks the keys in tiles of 64. Q stays in registers as the A
 * operand (each warp's 16 rows in the m16k16 layout, as k_attn_mma keeps
 * them); K and V tiles pass through shared memory in the 128-byte swizzled
 * layout the tensor cores read through a matrix descriptor (a key's 64 dims
 * are one 128-byte row, its 16-byte chunk j stored at j ^ (key % 8)), both
 * copied by cp.async from the same rows and read as they lie: K as a
 * K-major B (S = Q K^T), V as an N-major B (O += P V, the instruction's
 * transpose). One instruction per 16 dims (S) or 16 keys (O) and warpgroup,
 * where k_attn_mma issues eight per warp plus their fragment loads from
 * shared memory; the online softmax is k_attn_mma's (log2 units, one FMA and
 * one ex2 a score), on accumulators laid out as mma.sync's. A last tile of at
 * most 16 keys (577 vision keys leave 1) runs as an n16 product. The same
 * roundings and sums as k_attn_mma (q, K, V, P to bf16, f32 accumulation):
 * the same bits on the tests' shapes. Compiled where the target is sm_90a;
 * wgmma_built() asks the card whether this build has it. */
constexpr int WG_KT = 64;                  /* keys a tile */
constexpr int WG_TILE_BYTES = WG_KT * 128; /* one tile of K or V: 64 rows of 128 bytes */

__device__ int d_wgmma_built;

__global__ void k_wgmma_probe() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    d_wgmma_built = 1;
#else
    d_wgmma_built = 0;
#endif
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* d (+)= A B for m64n64k16: A from registers, B by descriptor; TB: B is
 * N-major (transposed). acc 0: d = A B. */
template <int TB>
__device__ __forceinline__ void wg_mma_n64(float (&d)[32], uint32_t a0, uint32_t a1, uint32_t a2,
                                           uint32_t a3, uint64_t desc, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "n"(TB), "r"(acc));
}
/* the same for m64n16k16 (K-major B): the last tile's 16 keys */
__device__ __forceinline__ void wg_mma_n16(float (&d)[8], uint32_t a0, uint32_t a1, uint32_t a2,
                                           uint32_t a3, uint64_t desc, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %14, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, %13;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "n"(0), "r"(acc));
}

/* The online softmax of one tile's scores (NS accumulators: row g's keys
 * 8j + 2t, +1 in s[4j], s[4j + 1], row g + 8's in s[4j + 2], s[4j + 3]);
 * keys from valid on weigh 0. The scores become p, in place; corr is what
 * the output so far is to be scaled by (wg_rescale). */
template <int NS>
__device__ __forceinline__ void wg_softmax(float (&s)[NS], float (&corr)[2], float (&m)[2],
                                           float (&l)[2], float sl2, int valid, int t4) {
    if (valid < NS * 2) { /* the last tile: keys past the end */
#pragma unroll
        for (int i = 0; i < NS; i++) {
            const int key = (i >> 2) * 8 + 2 * t4 + (i & 1);
            if (key >= valid) s[i] = -INFINITY;
        }
    }
    /* the row maxima as trees (a chain of NS / 2 dependent steps holds the
     * warp up; the maximum is the same in any order) */
    float mx[2][NS / 4];
#pragma unroll
    for (int j = 0; j < NS / 4; j++) {
        mx[0][j] = fmaxf(s[4 * j], s[4 * j + 1]);
        mx[1][j] = fmaxf(s[4 * j + 2], s[4 * j + 3]);
    }
#pragma unroll
    for (int w = NS / 8; w >= 1; w /= 2)
#pragma unroll
        for (int j = 0; j < w; j++) {
            mx[0][j] = fmaxf(mx[0][j], mx[0][j + w]);
            mx[1][j] = fmaxf(mx[1][j], mx[1][j + w]);
        }
    float tmax[2] = {mx[0][0], mx[1][0]};
    softmax_rows_step(tmax, m, l, corr, sl2);
#pragma unroll
    for (int i = 0; i < NS; i++) {
        const int r = (i >> 1) & 1;
        s[i] = ex2_approx(fmaf(s[i], sl2, -m[r]));
        l[r] += s[i];
    }
}

/* o (32 accumulators over dims, rows as wg_softmax's) scaled by corr. */
__device__ __forceinline__ void wg_rescale(float (&o)[32], const float (&corr)[2]) {
    /* o rescaled only where a row's maximum moved in some lane of the warp
     * (corr is exactly 1 elsewhere, and x 1 changes nothing): most tiles
     * past the first few move none */
    if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
        for (int i = 0; i < 32; i++) o[i] *= corr[(i >> 1) & 1];
    }
}

/* Turns between the two warpgroups of a block (named barriers 1 and 2,
 * immediate ids): warpgroup w waits for its turn, and passes it on. */
__device__ __forceinline__ void wg_turn_wait(int w) {
    if (w == 0)
        asm volatile("bar.sync 1, 256;\n" ::: "memory");
    else
        asm volatile("bar.sync 2, 256;\n" ::: "memory");
}
__device__ __forceinline__ void wg_turn_pass(int w) {
    if (w == 0)
        asm volatile("bar.arrive 2, 256;\n" ::: "memory");
    else
        asm volatile("bar.arrive 1, 256;\n" ::: "memory");
}
#endif

/* The kernel. The two warpgroups are decoupled: instead of a block barrier
 * a tile, each of WG_MB_ST = 4 buffers has a "full" barrier (every
 * thread's cp.async copies of its tile have landed:
 * cp.async.mbarrier.arrive) and an "empty" one (every thread is done
 * reading it), so a warpgroup waits for data and buffers only, and runs up
 * to two tiles apart from the other. Tile t + 2 is copied while t is
 * computed. A tile's S product is issued together with the last tile's
 * O += P V, both waited for before the softmax (waiting for S alone, so
 * that the exponentials overlap P V, makes ptxas serialize the products:
 * the softmax rewrites registers of a product still in flight). PP: the
 * two warpgroups take turns to issue (named barriers 1 and 2), a
 * warpgroup passing the turn once its products are done, so that one's
 * softmax overlaps the other's products. Measured on an H100 (perf.md,
 * phase 8): the block barrier a tile, 2 or 4 buffers, the decoupled form
 * without turns and with them are within 1% of each other on the tower. */
constexpr int WG_MB_ST = 4;
constexpr int WG_MB_SMEM = 2 * WG_MB_ST * WG_TILE_BYTES + 2 * WG_MB_ST * 8 + 1024;

template <bool PP>
__global__ void __launch_bounds__(256, 2)
    k_attn_wgmma(__nv_bfloat16 *out, const __nv_bfloat16 *q, int64_t q_stride,
                 const __nv_bfloat16 *k, const __nv_bfloat16 *v, int64_t kv_stride, int n_q,
                 int n_kv, int n_heads, int n_kv_heads, float scale) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int ST = WG_MB_ST;
    extern __shared__ __align__(1024) unsigned char wg_smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(wg_smem_raw);
    const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
    unsigned char *sm = wg_smem_raw + pad; /* [K x ST][V x ST][full x ST][empty x ST] */
    const uint32_t sbase = raw + pad;
    const uint32_t full = sbase + 2 * ST * WG_TILE_BYTES, empty = full + ST * 8;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = tid >> 7;
    const int g = lane >> 2, t4 = lane & 3;
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    const int64_t z = blockIdx.z;
    const __nv_bfloat16 *kz = k + z * n_kv * kv_stride + (int64_t)kvh * 64;
    const __nv_bfloat16 *vz = v + z * n_kv * kv_stride + (int64_t)kvh * 64;
    const int r0 = blockIdx.x * 128 + warp * 16 + g, r1 = r0 + 8;
    const int n_tiles = (n_kv + WG_KT - 1) / WG_KT;
    if (tid == 0) {
        for (int i = 0; i < ST; i++) {
            mbar_init(full + 8 * i, 256);
            mbar_init(empty + 8 * i, 256);
        }
    }
    __syncthreads();

    /* this thread's four chunks of tile t into its buffer, then its
     * arrival on the buffer's full barrier once they land */
    auto load_tile = [&](int t) {
        const int b = t % ST, t0 = t * WG_KT;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = tid + i * 256, row = c >> 3, j = c & 7;
            const int key = t0 + row;
            const bool in = key < n_kv;
            const int64_t at = (int64_t)(in ? key : 0) * kv_stride + j * 8;
            const int so = row * 128 + ((j ^ (row & 7)) << 4);
            cp_async16(sm + b * WG_TILE_BYTES + so, kz + at, in ? 16 : 0);
            cp_async16(sm + (ST + b) * WG_TILE_BYTES + so, vz + at, in ? 16 : 0);
        }
        mbar_arrive_cp_async(full + 8 * b);
    };
    load_tile(0);
    if (n_tiles > 1) load_tile(1);

    uint32_t qa[4][4];
    const __nv_bfloat16 *q0 = q + z * (int64_t)n_q * q_stride + (int64_t)h * 64 + 2 * t4;
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        const __nv_bfloat16 *p0 = q0 + (int64_t)r0 * q_stride + ks * 16;
        const __nv_bfloat16 *p1 = q0 + (int64_t)r1 * q_stride + ks * 16;
        qa[ks][0] = r0 < n_q ? *reinterpret_cast<const uint32_t *>(p0) : 0u;
        qa[ks][1] = r1 < n_q ? *reinterpret_cast<const uint32_t *>(p1) : 0u;
        qa[ks][2] = r0 < n_q ? *reinterpret_cast<const uint32_t *>(p0 + 8) : 0u;
        qa[ks][3] = r1 < n_q ? *reinterpret_cast<const uint32_t *>(p1 + 8) : 0u;
    }
    float o[32];
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float sl2 = scale * 1.4426950408889634f;
    uint32_t pa[16]; /* the last tile's P as A fragments, per 16 keys */
    int pk = 0;      /* how many 16-key chunks of pa its P V takes (4, or 1: a short tile) */
    /* named barrier 1 + w: warpgroup w's turn to issue; warpgroup 0 goes first */
    if (PP && wg == 1) wg_turn_pass(1);

    for (int t = 0; t < n_tiles; t++) {
        const int b = t % ST, t0 = t * WG_KT;
        if (t + 2 < n_tiles) {
            /* its buffer's last tile (t - 2) read by every thread */
            if (t + 2 >= ST) mbar_wait(empty + 8 * ((t + 2) % ST), ((t + 2) / ST - 1) & 1);
            load_tile(t + 2);
        }
        mbar_wait(full + 8 * b, (t / ST) & 1);
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* visible to wgmma */
        const uint32_t ks_addr = sbase + b * WG_TILE_BYTES;
        const uint32_t vlast = sbase + (ST + (t + ST - 1) % ST) * WG_TILE_BYTES;
        const int valid = n_kv - t0;
        /* one tile of NS scores a thread: 32 (64 keys), or 8 (the last
         * tile's at most 16 keys, an n16 product), each in code of its own
         * so that no register is an accumulator in one and a copy in the
         * other */
        auto step = [&](auto ns) {
            constexpr int NS = decltype(ns)::value;
            float s[NS];
            if (PP) wg_turn_wait(wg);
            wg_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                if constexpr (NS == 32)
                    wg_mma_n64<0>(s, qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3],
                                  wg_desc(ks_addr + ks * 32), ks);
                else
                    wg_mma_n16(s, qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3],
                               wg_desc(ks_addr + ks * 32), ks);
            }
            wg_commit();
            if (t > 0) { /* the last tile's P V: a whole tile (only the final one is short) */
#pragma unroll
                for (int kc = 0; kc < 4; kc++)
                    wg_mma_n64<1>(o, pa[4 * kc], pa[4 * kc + 1], pa[4 * kc + 2], pa[4 * kc + 3],
                                  wg_desc(vlast + kc * 2048), 1);
                wg_commit();
            }
            /* S, and the last tile's P V: o and pa are free */
            wg_wait0();
            wg_hold(s);
            wg_hold(o);
            /* the other warpgroup's turn: its products run during this
             * softmax */
            if (PP) wg_turn_pass(wg);
            float corr[2];
            wg_softmax(s, corr, m, l, sl2, valid, t4);
            if (t > 0) mbar_arrive(empty + 8 * ((t - 1) % ST));
            wg_rescale(o, corr);
            pk = NS / 8;
#pragma unroll
            for (int i = 0; i < NS / 2; i++) pa[i] = pack_bf16(s[2 * i], s[2 * i + 1]);
        };
        if (valid > 16)
            step(std::integral_constant<int, 32>{});
        else
            step(std::integral_constant<int, 8>{});
    }
    /* the last tile's P V */
    const uint32_t vlast = sbase + (ST + (n_tiles - 1) % ST) * WG_TILE_BYTES;
    if (PP) wg_turn_wait(wg);
    wg_fence();
    if (pk == 4) {
#pragma unroll
        for (int kc = 0; kc < 4; kc++)
            wg_mma_n64<1>(o, pa[4 * kc], pa[4 * kc + 1], pa[4 * kc + 2], pa[4 * kc + 3],
                          wg_desc(vlast + kc * 2048), 1);
    } else {
        wg_mma_n64<1>(o, pa[0], pa[1], pa[2], pa[3], wg_desc(vlast), 1);
    }
    wg_commit();
    wg_wait0();
    wg_hold(o);
    if (PP && wg == 0) wg_turn_pass(0);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inv0 = l[0] > 0.0f ? 1.0f / l[0] : 0.0f, inv1 = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
    __nv_bfloat16 *oz = out + z * (int64_t)n_q * n_heads * 64 + (int64_t)h * 64 + 2 * t4;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if (r0 < n_q)
            *reinterpret_cast<uint32_t *>(oz + (int64_t)r0 * n_heads * 64 + j * 8) =
                pack_bf16(o[4 * j] * inv0, o[4 * j + 1] * inv0);
        if (r1 < n_q)
            *reinterpret_cast<uint32_t *>(oz + (int64_t)r1 * n_heads * 64 + j * 8) =
                pack_bf16(o[4 * j + 2] * inv1, o[4 * j + 3] * inv1);
    }
#endif
}

/* Whether this build carries k_attn_wgmma's body for the current card (an
 * sm_90a target and a compute capability 9.0 card), asked once with a probe
 * kernel on st; VLM_CUDA_WGMMA=0 says no (k_attn_mma then runs). */
bool wgmma_built(cudaStream_t st) {
    static int built = -1; /* the same answer for every context of the process */
    if (built < 0) {
        int b = 0;
        const char *e = getenv("VLM_CUDA_WGMMA");
        if (!(e && !strcmp(e, "0")) && card().cc == 90) {
            k_wgmma_probe<<<1, 1, 0, st>>>();
            if (cudaMemcpyFromSymbolAsync(&b, d_wgmma_built, sizeof b, 0, cudaMemcpyDeviceToHost,
                                          st) != cudaSuccess ||
                cudaStreamSynchronize(st) != cudaSuccess) {
                (void)cudaGetLastError();
                b = 0;
            }
        }
        built = b;
    }
    return built == 1;
}

/* The tensor-core attention for n_seq sequences: 128 queries a block (8
 * warps) where that still gives two blocks an SM, so K and V pass through
 * shared memory half as often as with 64 (the vision tower's 17 x 16 x 5
 * blocks); 64 otherwise (prefill chunks: 32 heads x 13 blocks of 64 at 800
 * tokens). false: head_dim has no instance or the card refused its shared
 * memory (nothing launched). */
bool mma_attention(cudaStream_t st, bool async, bool h16, void *out, const void *q,
                   int64_t q_stride, vlm_dtype kvt, const void *k, const void *v, int64_t kv_stride,
                   int n_seq, int64_t n_q, int64_t n_kv, int n_heads, int n_kv_heads, int head_dim,
                   bool causal, int64_t q_pos0, float scale, bool vec) {
    if (n_kv > INT32_MAX - MA_KT || n_q > INT32_MAX - 128 ||
        (causal && q_pos0 + n_q > INT32_MAX - MA_KT))
        return false;
    if (h16 && head_dim == 64 && !causal && wgmma_built(st)) {
        const dim3 grid((unsigned)((n_q + 127) / 128), (unsigned)n_heads, (unsigned)n_seq);
        /* VLM_CUDA_WG_TURNS=0: the warpgroups issue their products without
         * taking turns (for measuring) */
        static const bool turns = [] {
            const char *e = getenv("VLM_CUDA_WG_TURNS");
            return !(e && !strcmp(e, "0"));
        }();
        static int opted = 0; /* 1 yes, -1 refused: k_attn_mma runs */
        if (!opted) {
            cudaError_t e = cudaFuncSetAttribute(
                k_attn_wgmma<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, WG_MB_SMEM);
            if (e == cudaSuccess)
                e = cudaFuncSetAttribute(k_attn_wgmma<false>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, WG_MB_SMEM);
            if (e != cudaSuccess) (void)cudaGetLastError();
            opted = e == cudaSuccess ? 1 : -1;
        }
        if (opted > 0) {
            (turns ? k_attn_wgmma<true> : k_attn_wgmma<false>)<<<grid, 256, WG_MB_SMEM, st>>>(
                (__nv_bfloat16 *)out, (const __nv_bfloat16 *)q, q_stride, (const __nv_bfloat16 *)k,
                (const __nv_bfloat16 *)v, kv_stride, (int)n_q, (int)n_kv, n_heads, n_kv_heads,
                scale);
            return true;
        }
    }
    const int64_t blocks128 = (n_q + 127) / 128 * n_heads * n_seq;
    /* VLM_CUDA_MMA_NW=4 or 8 fixes the warps a block (for measuring) */
    static const int nw_env = [] {
        const char *e = getenv("VLM_CUDA_MMA_NW");
        return e && (!strcmp(e, "4") || !strcmp(e, "8")) ? atoi(e) : 0;
    }();
    const int nw = nw_env ? nw_env : blocks128 >= 2 * (int64_t)card().sms ? 8 : 4;
    const dim3 grid((unsigned)((n_q + nw * 16 - 1) / (nw * 16)), (unsigned)n_heads,
                    (unsigned)n_seq);
#define MMA_CASE(D)                                                                                \
    case D:                                                                                        \
        return launch_mma_hd<D>(nw, async, h16, grid, st, out, q, q_stride, kvt, k, v, kv_stride,  \
                                n_q, n_kv, n_heads, n_kv_heads, causal, q_pos0, scale, vec);
    switch (head_dim) {
        MMA_CASE(16)
        MMA_CASE(32)
        MMA_CASE(48)
        MMA_CASE(64)
        MMA_CASE(80)
        MMA_CASE(96)
        MMA_CASE(112)
        MMA_CASE(128)
    default:
        return false;
    }
#undef MMA_CASE
}

/* One warp per (query, head): merge the splits' partial softmaxes. */
__global__ void k_attn_combine(float *out, const float *part, int64_t n_qh, int n_heads,
                               int head_dim, int n_split, const int32_t *dpos) {
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();
    int warps = blockDim.x >> 5;
    int64_t qh = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5);
    if (qh >= n_qh) return;
    /* with dpos, only the splits k_attention used (as it counts them) */
    const int n_use = dpos ? att_splits(n_qh, *dpos + n_qh / n_heads, n_split) : n_split;
    attn_merge_splits(out, part, qh, n_heads, head_dim, n_split, n_use);
}

/* --- elementwise ----------------------------------------------------------- */

#define GRID_LOOP(i, n)                                                                            \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ void k_quick_gelu(float *x, int64_t n) {
    GRID_LOOP(i, n) x[i] = quick_gelu1(x[i]);
}

__global__ void k_gelu_erf(float *x, int64_t n) {
    GRID_LOOP(i, n) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

__global__ void k_add(float *y, const float *x, int64_t n) {
    GRID_LOOP(i, n) y[i] += x[i];
}

__global__ void k_add_bias(float *y, int64_t n, int64_t dim, vlm_dtype bt, const void *b) {
    GRID_LOOP(i, n * dim) y[i] += ld_w(bt, b, i % dim);
}

__global__ void k_silu_mul(float *out, const float *gu, int64_t n, int64_t ff) {
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();
    GRID_LOOP(i, n * ff) {
        int64_t r = i / ff, c = i % ff;
        out[i] = silu_mul1(gu[r * 2 * ff + c], gu[r * 2 * ff + ff + c]);
    }
}

/* silu_mul rounded to bf16 (BF) or f16, four values a thread: row
 * blockIdx.y, 16-byte loads of gate and up, an 8-byte store (ff a multiple
 * of 4; gu 16-byte and out 8-byte aligned). The values k_silu_mul computes,
 * rounded as to_half rounds them: the 16-bit input of the down product. */
template <bool BF> __global__ void k_silu_mul_h4(void *out, const float *gu, int64_t ff4) {
    pdl_wait();
    pdl_trigger();
    const int64_t r = blockIdx.y;
    const float4 *g = (const float4 *)gu + r * 2 * ff4, *u = g + ff4;
    uint2 *o = (uint2 *)out + r * ff4;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < ff4;
         c += (int64_t)gridDim.x * blockDim.x) {
        const float4 a = g[c], b = u[c];
        o[c] = pack4_half<BF>(silu_mul1(a.x, b.x), silu_mul1(a.y, b.y), silu_mul1(a.z, b.z),
                              silu_mul1(a.w, b.w));
    }
}

/* (v, i) takes (v2, i2) if that is larger, or as large at a lower index;
 * a NaN is never taken. A total order on what is taken, so the sweep and
 * the tree below give the lowest index of the largest non-NaN value. */
__device__ __forceinline__ void am_take(float &v, int &i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

/* out = cpu_argmax(x[n]) with one block of 1024 threads: each sweeps a
 * stride of x, AM_INFLIGHT loads issued before it compares them (one at a
 * time, each waited an L2 round trip: the vocab's 32 loads a thread took
 * longer than the rest of the kernel), then the warps and the block reduce
 * (value, index) pairs.
 * cpu_argmax's scan keeps index 0 when x[0] is NaN (nothing compares
 * larger); elsewhere NaNs lose, as in am_take. */
constexpr int AM_INFLIGHT = 8;

__global__ void __launch_bounds__(1024) k_argmax(int32_t *out, const float *x, int64_t n) {
    pdl_wait(); /* launched as a programmatic dependent (launch_pdl) */
    pdl_trigger();
    __shared__ float sv[32];
    __shared__ int si[32];
    float v = -INFINITY;
    int i = INT_MAX; /* none yet: any non-NaN value is taken */
    const int64_t step = blockDim.x;
    for (int64_t j0 = threadIdx.x; j0 < n; j0 += AM_INFLIGHT * step) {
        float xv[AM_INFLIGHT];
#pragma unroll
        for (int u = 0; u < AM_INFLIGHT; u++) {
            const int64_t j = j0 + u * step;
            xv[u] = j < n ? x[j] : NAN; /* past the end: never taken */
        }
#pragma unroll
        for (int u = 0; u < AM_INFLIGHT; u++) am_take(v, i, xv[u], (int)(j0 + u * step));
    }
    for (int o = 16; o > 0; o >>= 1)
        am_take(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sv[w] = v, si[w] = i;
    __syncthreads();
    if (w != 0) return;
    v = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
    i = lane < (int)(blockDim.x >> 5) ? si[lane] : INT_MAX;
    for (int o = 16; o > 0; o >>= 1)
        am_take(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    if (lane == 0) *out = i == INT_MAX || isnan(x[0]) ? 0 : i;
}

__global__ void k_store_rows(void *dst, vlm_dtype t, int64_t offset, const float *src, int64_t n) {
    GRID_LOOP(i, n) {
        if (t == VLM_DTYPE_BF16)
            ((uint16_t *)dst)[offset + i] = f32_to_bf16_bits(src[i]);
        else
            ((float *)dst)[offset + i] = src[i];
    }
}

__global__ void k_store_strided(void *dst, vlm_dtype t, int64_t offset, const float *src,
                                int64_t src_stride, int64_t n_rows, int64_t row_len) {
    GRID_LOOP(i, n_rows * row_len) {
        float v = src[(i / row_len) * src_stride + i % row_len];
        if (t == VLM_DTYPE_BF16)
            ((uint16_t *)dst)[offset + i] = f32_to_bf16_bits(v);
        else
            ((float *)dst)[offset + i] = v;
    }
}

__global__ void k_merge2x2(float *out, const float *f, int64_t crop_rows, int64_t first, int grid,
                           int64_t dim, int n_crops) {
    const int mg = grid / 2;
    const int64_t mm = (int64_t)mg * mg;
    GRID_LOOP(i, (int64_t)n_crops * mm * 4 * dim) {
        int64_t e = i % dim, q = (i / dim) % 4, cell = i / (4 * dim);
        int64_t c = cell / mm, rem = cell % mm, ci = rem / mg, cj = rem % mg;
        int64_t r = (2 * ci + q / 2) * grid + 2 * cj + q % 2;
        out[i] = f[(c * crop_rows + first + r) * dim + e];
    }
}

__global__ void k_embed(float *out, vlm_dtype t, const void *table, int64_t dim, const int32_t *ids,
                        int64_t n) {
    GRID_LOOP(i, n * dim) {
        int64_t r = i / dim, c = i % dim;
        out[i] = ld_w(t, table, (int64_t)ids[r] * dim + c);
    }
}

__global__ void k_widen(float *dst, vlm_dtype t, const void *src, int64_t n) {
    GRID_LOOP(i, n) dst[i] = ld_w(t, src, i);
}

__global__ void k_to_half(void *dst, bool bf16, const float *src, int64_t n) {
    GRID_LOOP(i, n) {
        if (bf16)
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(src[i]);
        else
            ((__half *)dst)[i] = __float2half_rn(src[i]);
    }
}

/* k_bias_quick_gelu_h and k_to_half for rows of 4k floats, 4 at a time:
 * a block of 256 threads per row stride, 16-byte loads and 8-byte stores,
 * no 64-bit division per element; the same values. */
template <bool BF>
__global__ void k_bias_quick_gelu_h4(void *out, const float *x, int64_t n, int64_t dim,
                                     vlm_dtype bt, const void *b) {
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const float4 *xr = (const float4 *)(x + r * dim);
        uint2 *orow = (uint2 *)((uint16_t *)out + r * dim);
        for (int64_t c = threadIdx.x; c < dim / 4; c += blockDim.x) {
            const float4 v4 = xr[c];
            float v[4] = {v4.x, v4.y, v4.z, v4.w}, gl[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                gl[e] = quick_gelu1(v[e] + (b ? ld_w(bt, b, 4 * c + e) : 0.0f));
            }
            orow[c] = pack4_half<BF>(gl[0], gl[1], gl[2], gl[3]);
        }
    }
}

/* Every row of y16 [n][out] (bf16) set to the bias b[out] rounded to bf16. */
__global__ void k_fill_rows_bf16(uint16_t *y16, int64_t n, int64_t out, vlm_dtype bt,
                                 const void *b) {
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x)
        for (int64_t c = threadIdx.x; c < out; c += blockDim.x)
            y16[r * out + c] = f32_to_bf16_bits(ld_w(bt, b, c));
}

template <bool BF> __global__ void k_to_half4(void *dst, const float *src, int64_t n4) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float4 v = ((const float4 *)src)[i];
        ((uint2 *)dst)[i] = pack4_half<BF>(v.x, v.y, v.z, v.w);
    }
}

/* fc1's bias, quick-GELU and the rounding of fc2's input in one pass. */
__global__ void k_bias_quick_gelu_h(void *out, bool bf16, const float *x, int64_t n, int64_t dim,
                                    vlm_dtype bt, const void *b) {
    GRID_LOOP(i, n * dim) {
        float g = quick_gelu1(x[i] + (b ? ld_w(bt, b, i % dim) : 0.0f));
        if (bf16)
            ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(g);
        else
            ((__half *)out)[i] = __float2half_rn(g);
    }
}

/* x = round_bf16(quick_gelu(x)) over n bf16 values in place, 8 a thread
 * (16-byte loads and stores; n8 = n / 8), as k_bias_quick_gelu_h
 * computes each value: fc1's bf16 output (bias in its epilogue) to fc2's
 * input. */
__global__ void k_quick_gelu_bf16x8(uint4 *x, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint4 v = x[i];
        uint32_t *w = reinterpret_cast<uint32_t *>(&v);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float a = bf16_bits_to_f32((uint16_t)(w[e] & 0xffffu));
            const float b = bf16_bits_to_f32((uint16_t)(w[e] >> 16));
            w[e] = (uint32_t)f32_to_bf16_bits(quick_gelu1(a)) |
                   ((uint32_t)f32_to_bf16_bits(quick_gelu1(b)) << 16);
        }
        x[i] = v;
    }
}

/* im2col of n_crops CHW images ([n_crops][3][s][s], f32, or bf16 with
 * in16) into [n_crops * (s/p)^2][3*p*p] (k_im2col's order, crop after
 * crop), as f32 (ht 0), bf16 (1) or f16 (2). */
__global__ void k_im2col_crops(void *col, int ht, const void *img, bool in16, int n_crops, int s,
                               int p) {
    const int g = s / p;
    const int64_t per = 3LL * p * p, gg = (int64_t)g * g;
    GRID_LOOP(i, (int64_t)n_crops * gg * per) {
        int64_t patch = i / per, e = i % per;
        int64_t crop = patch / gg, pc = patch % gg;
        int c = (int)(e / (p * p)), rem = (int)(e % (p * p));
        int py = rem / p, px = rem % p;
        int gy = (int)(pc / g), gx = (int)(pc % g);
        const int64_t at =
            crop * 3 * s * s + (int64_t)c * s * s + (int64_t)(gy * p + py) * s + gx * p + px;
        const float v =
            in16 ? bf16_bits_to_f32(((const uint16_t *)img)[at]) : ((const float *)img)[at];
        if (ht == 1)
            ((__nv_bfloat16 *)col)[i] = __float2bfloat16_rn(v);
        else if (ht == 2)
            ((__half *)col)[i] = __float2half_rn(v);
        else
            ((float *)col)[i] = v;
    }
}

/* x [n_crops][np][dim]: row 0 class + pos[0], row r patches[crop][r - 1] +
 * pos[r]; patches [n_crops][np - 1][dim]. */
__global__ void k_clip_embed(float *x, const float *patches, vlm_dtype ct, const void *cls,
                             vlm_dtype pt, const void *pos, int n_crops, int64_t np, int64_t dim) {
    GRID_LOOP(i, (int64_t)n_crops * np * dim) {
        int64_t e = i % dim, row = i / dim, r = row % np, crop = row / np;
        float v = r == 0 ? ld_w(ct, cls, e) : patches[(crop * (np - 1) + r - 1) * dim + e];
        x[i] = v + ld_w(pt, pos, r * dim + e);
    }
}

/* im2col of a CHW image (3 x s x s) into [(s/p)^2][3*p*p], a patch's values
 * in (channel, row, column) order as the conv weight [width][3][p][p]. */
__global__ void k_im2col(float *col, const float *img, int s, int p) {
    int g = s / p;
    int64_t per = 3LL * p * p;
    GRID_LOOP(i, (int64_t)g * g * per) {
        int64_t patch = i / per, e = i % per;
        int c = (int)(e / (p * p)), rem = (int)(e % (p * p));
        int py = rem / p, px = rem % p;
        int gy = (int)(patch / g), gx = (int)(patch % g);
        col[i] = img[(int64_t)c * s * s + (int64_t)(gy * p + py) * s + gx * p + px];
    }
}

/* --- GEMV for decoding ------------------------------------------------------
 * One warp per output row; the row is read once for all n (<= 8) tokens.
 * F32 / F16 / BF16 rows whose length and address allow it are read in
 * 16-byte vectors, two in flight per lane (the loop is unrolled by two);
 * Q8_0 / Q4_0: one 32-weight block per lane per step (the 34- and 18-byte
 * blocks are only 2-byte aligned, so they are read in 16-bit words). */

constexpr int GEMV_WARPS = 4;
constexpr int GEMV_MAXN = VLM_CUDA_GEMV_MAX_N;

template <int N>
__device__ __forceinline__ void fma_x8(float (&acc)[GEMV_MAXN], const float (&w)[8], const float *x,
                                       int64_t in, int64_t col, int n) {
#pragma unroll
    for (int t = 0; t < N; t++) {
        if (t >= n) break;
        const float4 *xv = (const float4 *)(x + t * in + col);
        float4 a = xv[0], b = xv[1];
        acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y +
                  w[6] * b.z + w[7] * b.w;
    }
}

__device__ __forceinline__ void unpack8(vlm_dtype t, uint4 u, float (&w)[8]) {
    const uint32_t wd[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        uint16_t lo = (uint16_t)(wd[j] & 0xffffu), hi = (uint16_t)(wd[j] >> 16);
        if (t == VLM_DTYPE_BF16) {
            w[2 * j] = __uint_as_float((uint32_t)lo << 16);
            w[2 * j + 1] = __uint_as_float((uint32_t)hi << 16);
        } else {
            w[2 * j] = half_bits_to_f32(lo);
            w[2 * j + 1] = half_bits_to_f32(hi);
        }
    }
}

__global__ void k_gemv(float *y, const float *x, int64_t n, int64_t in, int64_t out, vlm_dtype t,
                       const void *w, bool vec, bool acc_y) {
    int64_t row = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= out) return;
    float acc[GEMV_MAXN];
#pragma unroll
    for (int i = 0; i < GEMV_MAXN; i++) acc[i] = 0.0f;
    int nn = (int)n;

    if (t == VLM_DTYPE_Q8_0 || t == VLM_DTYPE_Q4_0) {
        int64_t nb = in / VLM_QK;
        size_t bbytes = t == VLM_DTYPE_Q8_0 ? sizeof(vlm_block_q8_0) : sizeof(vlm_block_q4_0);
        const uint8_t *wr = (const uint8_t *)w + row * nb * (int64_t)bbytes;
        for (int64_t b = lane; b < nb; b += 32) {
            const uint16_t *blk = (const uint16_t *)(wr + b * (int64_t)bbytes);
            float d = half_bits_to_f32(blk[0]);
            float wv[VLM_QK];
            if (t == VLM_DTYPE_Q8_0) {
#pragma unroll
                for (int j = 0; j < VLM_QK / 2; j++) {
                    uint16_t u = blk[1 + j];
                    wv[2 * j] = d * (float)(int8_t)(u & 0xff);
                    wv[2 * j + 1] = d * (float)(int8_t)(u >> 8);
                }
            } else {
                /* byte j: element j (low nibble) and j + 16 (high) */
#pragma unroll
                for (int j = 0; j < VLM_QK / 4; j++) {
                    uint16_t u = blk[1 + j];
                    uint8_t b0 = (uint8_t)(u & 0xff), b1 = (uint8_t)(u >> 8);
                    wv[2 * j] = d * (float)((int)(b0 & 15) - 8);
                    wv[2 * j + 16] = d * (float)((int)(b0 >> 4) - 8);
                    wv[2 * j + 1] = d * (float)((int)(b1 & 15) - 8);
                    wv[2 * j + 17] = d * (float)((int)(b1 >> 4) - 8);
                }
            }
#pragma unroll
            for (int tk = 0; tk < GEMV_MAXN; tk++) { /* unrolled: acc stays in registers */
                if (tk >= nn) break;
                const float *xr = x + tk * in + b * VLM_QK;
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < VLM_QK; j++) s += wv[j] * xr[j];
                acc[tk] += s;
            }
        }
    } else if (vec && (t == VLM_DTYPE_BF16 || t == VLM_DTYPE_F16)) {
        /* 8 weights per 16-byte load */
        const uint4 *wr = (const uint4 *)((const uint16_t *)w + row * in);
        int64_t nv = in / 8;
        int64_t i = lane;
        for (; i + 32 < nv; i += 64) {
            uint4 u0 = wr[i], u1 = wr[i + 32]; /* two loads in flight */
            float w0[8], w1[8];
            unpack8(t, u0, w0);
            unpack8(t, u1, w1);
            fma_x8<GEMV_MAXN>(acc, w0, x, in, i * 8, nn);
            fma_x8<GEMV_MAXN>(acc, w1, x, in, (i + 32) * 8, nn);
        }
        for (; i < nv; i += 32) {
            float w0[8];
            unpack8(t, wr[i], w0);
            fma_x8<GEMV_MAXN>(acc, w0, x, in, i * 8, nn);
        }
    } else if (vec && t == VLM_DTYPE_F32) {
        const float4 *wr = (const float4 *)((const float *)w + row * in);
        int64_t nv = in / 8; /* two float4 per step: 8 weights */
        for (int64_t i = lane; i < nv; i += 32) {
            float4 a = wr[2 * i], b = wr[2 * i + 1];
            float w0[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            fma_x8<GEMV_MAXN>(acc, w0, x, in, i * 8, nn);
        }
    } else {
        for (int64_t i = lane; i < in; i += 32) {
            float wv = ld_w(t, w, row * in + i);
#pragma unroll
            for (int tk = 0; tk < GEMV_MAXN; tk++) {
                if (tk >= nn) break;
                acc[tk] += wv * x[tk * in + i];
            }
        }
    }
#pragma unroll
    for (int tk = 0; tk < GEMV_MAXN; tk++) {
        if (tk >= nn) break;
        float s = warp_sum(acc[tk]);
        if (lane == 0) y[tk * out + row] = acc_y ? y[tk * out + row] + s : s;
    }
}

/* --- GEMV, the fast paths ----------------------------------------------------
 * Decoding is bound by reading the weights once per token, so these kernels
 * are written for DRAM bandwidth: every weight byte is read with a 16-byte
 * load that bypasses L1 (ld.global.nc.L1::no_allocate: x, re-read by every
 * row, stays in L1), each lane keeps GV_LOADS such loads in flight, and the
 * token count NT (1..8) is a template argument so the accumulators live in
 * registers with no runtime bounds. k_gemv above stays for the shapes these
 * do not take (rows not a multiple of 8 weights, unaligned blocks). */

constexpr int GV_LOADS = 4; /* 16-byte weight loads in flight per lane */
/* Blocks per SM k_gemv16 for one token (decoding) is compiled to keep
 * resident (<= 40 registers a thread, no spills): 12 x 132 SMs = 1584
 * blocks, so the 3072-row products at two warps a row (1536 blocks) run in
 * one wave, without a tail. More tokens need their accumulators: no bound. */
constexpr int GV_MIN_BLOCKS = 12;

__device__ __forceinline__ uint4 ld_stream16(const void *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

/* What k_gemv16 does with its products (EPI). GV_PLAIN: y = W x (or
 * y += W x). The other two take the small op after the product into the
 * same launch, so the decode step has a kernel boundary fewer each (two a
 * layer), with the results of the two launches bit for bit:
 *  - GV_SILU: W = [gate; up] (2 ff rows): a block takes gate row i and up
 *    row i and writes out[t][i] = silu(gate) * up, as k_silu_mul;
 *  - GV_ROPE: W = the fused qkv (H + 2 KV heads of head_dim rows): a block
 *    takes rows i and i + head_dim / 2 of a head, rotates a q or k pair as
 *    k_rope_store and stores k and v pairs into the cache.
 * The epilogues run after the weight loop, so its registers are not
 * theirs (the folds into the weight loop measured slower: cuda.md). On the
 * H100 each gave about 1% of decode speed. The RMSNorm after o and down
 * did not fold this way: done by the last block to finish (an arrival
 * counter), it cost 5% (cuda.md). */
enum { GV_PLAIN = 0, GV_SILU = 1, GV_ROPE = 2 };

struct gv_epi {
    float *out;                        /* SILU: [NT][out / 2] */
    int n_heads, n_kv_heads, head_dim; /* ROPE: as k_rope_store */
    bool kv_bf16;
    const float *cos_t, *sin_t;
    void *kd, *vd;
    int64_t offset;
    const int32_t *dpos;
};

/* GV_ROPE's pair q (head q / half, dims i and i + half; heads [0, H) q,
 * [H, H + KV) k, then v) of token t: y's two values a, b as the product
 * gave them. */
__device__ void gv_rope_pair(const gv_epi &e, float *y, int64_t out, int64_t q, int t, float a,
                             float b) {
    const int half = e.head_dim / 2, nr = e.n_heads + e.n_kv_heads;
    const int64_t h = q / half, i = q % half, kvd = (int64_t)e.n_kv_heads * e.head_dim;
    const float *ct = e.cos_t, *sn = e.sin_t;
    int64_t off = e.offset;
    if (e.dpos) {
        const int64_t p = *e.dpos;
        ct += p * half;
        sn += p * half;
        off += p * kvd;
    }
    if (h < nr) rope_rot(a, b, ct[t * half + i], sn[t * half + i]);
    float *yr = y + t * out + h * e.head_dim + i;
    yr[0] = a;
    yr[half] = b;
    if (h < e.n_heads) return;
    void *dst = h < nr ? e.kd : e.vd;
    const int64_t at = off + t * kvd + (h < nr ? h - e.n_heads : h - nr) * e.head_dim + i;
    store_kv(dst, e.kv_bf16, at, a);
    store_kv(dst, e.kv_bf16, at + half, b);
}

/* BF16 / F16 rows of in % 8 == 0 weights, 16-byte aligned. WS warps share a
 * row (WS = 1, 2, 4; the block's GEMV_WARPS / WS rows) so that short
 * matrices (3072 rows) still give every SM enough loads in flight; warp s of
 * a row takes the 16-byte vectors [i0 + s * 32 * GV_LOADS, + 32 * GV_LOADS)
 * of every stride of WS * 32 * GV_LOADS. y[t][row] = sum_i W[row][i] x[t][i],
 * then the epilogue EPI (gv_epi; GV_SILU and GV_ROPE take rows in pairs, so
 * they need an even row count a block: WS 1 or 2). */
template <int NT, int WS, int EPI = GV_PLAIN>
__global__ void __launch_bounds__(GEMV_WARPS * 32, NT == 1 ? GV_MIN_BLOCKS : 1)
    k_gemv16(float *y, const float *x, int64_t in, int64_t out, bool bf16, const uint4 *w,
             bool acc_y, gv_epi e) {
    constexpr int RPB = GEMV_WARPS / WS; /* rows per block */
    constexpr bool PAIRS = EPI == GV_SILU || EPI == GV_ROPE;
    static_assert(!PAIRS || RPB % 2 == 0, "row pairs need an even row count a block");
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int s = warp % WS;
    int64_t row;
    bool live;
    if (PAIRS) { /* pair q: gate row q and up row q + out / 2 (SILU), or rows
                  * i and i + half of head q / half, i = q % half (ROPE) */
        const int j = warp / WS;
        const int64_t q = (int64_t)blockIdx.x * (RPB / 2) + j / 2;
        live = q < out / 2;
        if (EPI == GV_SILU)
            row = q + (j & 1) * (out / 2);
        else {
            const int half = e.head_dim / 2;
            row = (q / half) * e.head_dim + q % half + (j & 1) * half;
        }
    } else {
        row = (int64_t)blockIdx.x * RPB + warp / WS;
        live = row < out;
    }
    int64_t nv = in / 8; /* 16-byte vectors per row */
    const uint4 *wr = w + (live ? row : 0) * nv;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    vlm_dtype dt = bf16 ? VLM_DTYPE_BF16 : VLM_DTYPE_F16;
    /* Launched as a programmatic dependent, the block may start while the
     * kernel that writes x (or y) is finishing: wait for it first. (Loading
     * or prefetching the first weights before the wait spilled under the
     * 40-register bound of GV_MIN_BLOCKS.) */
    pdl_wait();
    pdl_trigger();
    for (int64_t i0 = (int64_t)s * 32 * GV_LOADS; live && i0 < nv; i0 += WS * 32 * GV_LOADS) {
        uint4 u[GV_LOADS];
#pragma unroll
        for (int k = 0; k < GV_LOADS; k++) { /* all loads first: GV_LOADS in flight */
            int64_t i = i0 + k * 32 + lane;
            u[k] = i < nv ? ld_stream16(wr + i) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int k = 0; k < GV_LOADS; k++) {
            int64_t i = i0 + k * 32 + lane;
            if (i >= nv) break;
            float wv[8];
            unpack8(dt, u[k], wv);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const float4 *xv = (const float4 *)(x + t * in + i * 8);
                float4 a = __ldg(xv), b = __ldg(xv + 1);
                acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                          wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
    if (WS == 1 && !PAIRS) {
        if (live && lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++)
                y[t * out + row] = acc_y ? y[t * out + row] + acc[t] : acc[t];
        return;
    }
    __shared__ float part[GEMV_WARPS][NT];
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < NT; t++) part[warp][t] = acc[t];
    __syncthreads();
    if (PAIRS) {
        /* lane p * NT + t of warp 0: pair p of the block, token t; the row
         * sums as GV_PLAIN forms them */
        if (warp != 0 || lane >= RPB / 2 * NT) return;
        const int p = lane / NT, t = lane % NT;
        const int64_t q = (int64_t)blockIdx.x * (RPB / 2) + p;
        if (q >= out / 2) return;
        float a = 0.0f, b = 0.0f;
#pragma unroll
        for (int j = 0; j < WS; j++) {
            a += part[2 * p * WS + j][t];
            b += part[(2 * p + 1) * WS + j][t];
        }
        if (EPI == GV_SILU)
            e.out[t * (out / 2) + q] = silu_mul1(a, b);
        else
            gv_rope_pair(e, y, out, q, t, a, b);
        return;
    }
    if (live && s == 0 && lane < NT) {
        float v = 0.0f;
#pragma unroll
        for (int j = 0; j < WS; j++) v += part[warp + j][lane];
        y[lane * out + row] = acc_y ? y[lane * out + row] + v : v;
    }
}

/* Q8_0 / Q4_0 rows whose byte length is a multiple of 16 (blocks per row a
 * multiple of 8) at a 16-byte aligned address. The 34- and 18-byte blocks
 * straddle 16-byte words, so a warp first copies GVQ_CHUNK blocks of its row
 * to shared memory with coalesced 16-byte loads (Q8_0: 272 words, 9 per lane
 * in flight; Q4_0: 144, 5 per lane), then each lane dequantizes whole blocks
 * from there in registers (block lane, lane + 32, ...) and multiplies them
 * with x. One warp per row; block barriers around the staging. */
constexpr int GVQ_CHUNK = 128; /* blocks per staging step; 4352 bytes for Q8_0 */

template <int NT, bool Q8>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    k_gemv_quant16(float *y, const float *x, int64_t in, int64_t out, const uint8_t *w,
                   bool acc_y) {
    constexpr int BB = Q8 ? (int)sizeof(vlm_block_q8_0) : (int)sizeof(vlm_block_q4_0);
    constexpr int CW = GVQ_CHUNK * BB / 16;  /* 16-byte words per full chunk */
    constexpr int PER_LANE = (CW + 31) / 32; /* loads in flight per lane */
    __shared__ uint4 stage[GEMV_WARPS][CW];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * GEMV_WARPS + warp;
    /* every warp of the block runs the same steps (rows of one length), so
     * the staging can use block barriers; a warp past the last row idles */
    bool live = row < out;
    int64_t nb = in / VLM_QK;
    const uint4 *wr = (const uint4 *)(w + (live ? row : 0) * nb * BB);
    const uint8_t *sb = (const uint8_t *)stage[warp];
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int64_t b0 = 0; b0 < nb; b0 += GVQ_CHUNK) {
        int cnt = nb - b0 < GVQ_CHUNK ? (int)(nb - b0) : GVQ_CHUNK;
        int words = cnt * BB / 16; /* whole: b0 * BB and the row's end are 16-byte aligned */
        const uint4 *src = wr + b0 * BB / 16;
        uint4 u[PER_LANE];
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) {
            int i = k * 32 + lane;
            u[k] = live && i < words ? ld_stream16(src + i) : make_uint4(0u, 0u, 0u, 0u);
        }
        __syncthreads(); /* the previous chunk's reads of stage are done */
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) {
            int i = k * 32 + lane;
            if (i < words) stage[warp][i] = u[k];
        }
        __syncthreads();
        for (int lb = lane; live && lb < cnt; lb += 32) {
            const uint8_t *blk = sb + lb * BB;
            float d = half_bits_to_f32(*(const uint16_t *)blk);
            float wv[VLM_QK];
            /* the quants from shared memory in 16-bit words (a block starts
             * at an even byte: 34 and 18 are even) */
            const uint16_t *q16 = (const uint16_t *)(blk + 2);
            if (Q8) {
#pragma unroll
                for (int j = 0; j < VLM_QK / 2; j++) {
                    uint16_t u = q16[j];
                    wv[2 * j] = d * (float)(int8_t)(u & 0xff);
                    wv[2 * j + 1] = d * (float)(int8_t)(u >> 8);
                }
            } else {
                /* byte j: element j (low nibble) and j + 16 (high) */
#pragma unroll
                for (int j = 0; j < VLM_QK / 4; j++) {
                    uint16_t u = q16[j];
                    uint8_t c0 = (uint8_t)(u & 0xff), c1 = (uint8_t)(u >> 8);
                    wv[2 * j] = d * (float)((int)(c0 & 15) - 8);
                    wv[2 * j + 16] = d * (float)((int)(c0 >> 4) - 8);
                    wv[2 * j + 1] = d * (float)((int)(c1 & 15) - 8);
                    wv[2 * j + 17] = d * (float)((int)(c1 >> 4) - 8);
                }
            }
            int64_t col = (b0 + lb) * VLM_QK;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const float4 *xv = (const float4 *)(x + t * in + col);
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < VLM_QK / 4; j++) {
                    float4 a = __ldg(xv + j);
                    s += wv[4 * j] * a.x + wv[4 * j + 1] * a.y + wv[4 * j + 2] * a.z +
                         wv[4 * j + 3] * a.w;
                }
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (live && lane == 0) y[t * out + row] = acc_y ? y[t * out + row] + v : v;
    }
}

/* Warps per row of k_gemv16 for `out` rows.
 * Measured on the H100 (gpubench, isolated products): two warps a row beat
 * one on every decoder shape (qkv 66% -> 89% of the copy bandwidth, gate_up
 * 77% -> 103%, down 64% -> 82%, lm_head 85% -> 93%) and four; small outputs
 * take four, so that there are warps enough. VLM_GEMV_WS fixes it, for
 * measuring. */
int gemv_warps_per_row(int64_t out) {
    const card_facts &c = card();
    if (c.fixed_ws) return c.fixed_ws;
    return out >= 1536 ? 2 : 4;
}

/* A launch as a programmatic dependent of the kernel before it where the
 * card has it: the kernel must call pdl_wait before it touches memory an
 * earlier kernel reads or writes (every kernel launched this way does so
 * first thing); a plain launch otherwise. The decode step's kernels go this
 * way, so each one's launch and block scheduling overlap the kernel before
 * (measured on the H100: the 129-product decode sweep 82.0% -> 86.8% of the
 * copy bandwidth). */
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kern)(KArgs...), dim3 grid, unsigned block, cudaStream_t st, Args... args) {
    if (!card().pdl) {
        kern<<<grid, block, 0, st>>>(static_cast<KArgs>(args)...);
        return;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(block);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kern, static_cast<KArgs>(args)...);
}

/* Launches k_gemv16 / k_gemv_quant16 for nt (1..8) tokens. */
template <int NT>
void launch_gemv_fast(cudaStream_t st, float *y, const float *x, int64_t in, int64_t out,
                      vlm_dtype t, const void *w, bool acc_y) {
    if (t == VLM_DTYPE_Q8_0 || t == VLM_DTYPE_Q4_0) {
        unsigned grid = (unsigned)((out + GEMV_WARPS - 1) / GEMV_WARPS);
        if (t == VLM_DTYPE_Q8_0)
            k_gemv_quant16<NT, true>
                <<<grid, GEMV_WARPS * 32, 0, st>>>(y, x, in, out, (const uint8_t *)w, acc_y);
        else
            k_gemv_quant16<NT, false>
                <<<grid, GEMV_WARPS * 32, 0, st>>>(y, x, in, out, (const uint8_t *)w, acc_y);
        return;
    }
    int ws = gemv_warps_per_row(out);
    unsigned grid = (unsigned)((out * ws + GEMV_WARPS - 1) / GEMV_WARPS);
    bool bf = t == VLM_DTYPE_BF16;
    const uint4 *wv = (const uint4 *)w;
    if (ws == 1)
        launch_pdl(k_gemv16<NT, 1>, dim3(grid), GEMV_WARPS * 32, st, y, x, in, out, bf, wv, acc_y,
                   gv_epi{});
    else if (ws == 2)
        launch_pdl(k_gemv16<NT, 2>, dim3(grid), GEMV_WARPS * 32, st, y, x, in, out, bf, wv, acc_y,
                   gv_epi{});
    else
        launch_pdl(k_gemv16<NT, 4>, dim3(grid), GEMV_WARPS * 32, st, y, x, in, out, bf, wv, acc_y,
                   gv_epi{});
}

void launch_gemv_fast_n(cudaStream_t st, int nt, float *y, const float *x, int64_t in, int64_t out,
                        vlm_dtype t, const void *w, bool acc_y) {
    switch (nt) {
    case 1:
        launch_gemv_fast<1>(st, y, x, in, out, t, w, acc_y);
        break;
    case 2:
        launch_gemv_fast<2>(st, y, x, in, out, t, w, acc_y);
        break;
    case 3:
        launch_gemv_fast<3>(st, y, x, in, out, t, w, acc_y);
        break;
    case 4:
        launch_gemv_fast<4>(st, y, x, in, out, t, w, acc_y);
        break;
    case 5:
        launch_gemv_fast<5>(st, y, x, in, out, t, w, acc_y);
        break;
    case 6:
        launch_gemv_fast<6>(st, y, x, in, out, t, w, acc_y);
        break;
    case 7:
        launch_gemv_fast<7>(st, y, x, in, out, t, w, acc_y);
        break;
    default:
        launch_gemv_fast<8>(st, y, x, in, out, t, w, acc_y);
        break;
    }
}

/* k_gemv16 with the epilogue EPI for nt (1..8) tokens at two warps a row
 * (the decoder's shapes: gemv_warps_per_row). */
template <int NT, int EPI>
void launch_gemv_epi(cudaStream_t st, float *y, const float *x, int64_t in, int64_t out, bool bf,
                     const void *w, bool acc_y, const gv_epi &e) {
    unsigned grid = (unsigned)((out * 2 + GEMV_WARPS - 1) / GEMV_WARPS);
    launch_pdl(k_gemv16<NT, 2, EPI>, dim3(grid), GEMV_WARPS * 32, st, y, x, in, out, bf,
               (const uint4 *)w, acc_y, e);
}

template <int EPI>
void launch_gemv_epi_n(cudaStream_t st, int nt, float *y, const float *x, int64_t in, int64_t out,
                       bool bf, const void *w, bool acc_y, const gv_epi &e) {
    void (*const by_n[GEMV_MAXN])(cudaStream_t, float *, const float *, int64_t, int64_t, bool,
                                  const void *, bool, const gv_epi &) = {
        launch_gemv_epi<1, EPI>, launch_gemv_epi<2, EPI>, launch_gemv_epi<3, EPI>,
        launch_gemv_epi<4, EPI>, launch_gemv_epi<5, EPI>, launch_gemv_epi<6, EPI>,
        launch_gemv_epi<7, EPI>, launch_gemv_epi<8, EPI>};
    by_n[nt - 1](st, y, x, in, out, bf, w, acc_y, e);
}

/* Whether the fast GEMV takes this product: 16-byte aligned W and x, rows of
 * whole 16-byte words (BF16/F16: in % 8 == 0; Q8_0/Q4_0: blocks per row a
 * multiple of 8). */
bool gemv_fast_ok(vlm_dtype t, int64_t in, const void *w, const float *x) {
    if ((uintptr_t)w % 16 || (uintptr_t)x % 16 || in % 8) return false;
    if (t == VLM_DTYPE_BF16 || t == VLM_DTYPE_F16) return true;
    if (t == VLM_DTYPE_Q8_0 || t == VLM_DTYPE_Q4_0) return in % (VLM_QK * 8) == 0;
    return false;
}

} // namespace

/* --- the C interface --------------------------------------------------------- */

extern "C" {

vlm_status vlm_cuda_rmsnorm(vlm_cuda_ctx *ctx, float *out, const float *x, int64_t n, int64_t dim,
                            vlm_cuda_weight w, float eps, vlm_err *err) {
    if (n <= 0) return VLM_OK;
    if (dim % 1024 == 0 && dim <= 4096 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)out % 16) == 0) {
        void (*const rows[4])(void *, const float *, vlm_dtype, const void *, float, bool) = {
            k_rmsnorm_rows<1>, k_rmsnorm_rows<2>, k_rmsnorm_rows<3>, k_rmsnorm_rows<4>};
        launch_pdl(rows[dim / 1024 - 1], dim3((unsigned)n), 256u, ctx->stream, (void *)out, x,
                   w.dtype, w.data, eps, card().prefetch);
        return launched("rmsnorm", err);
    }
    launch_pdl(k_rmsnorm<0>, dim3((unsigned)n), (unsigned)norm_threads(dim), ctx->stream,
               (void *)out, x, dim, w.dtype, w.data, eps);
    return launched("rmsnorm", err);
}

static bool half_type(vlm_dtype t) {
    return t == VLM_DTYPE_BF16 || t == VLM_DTYPE_F16;
}

vlm_status vlm_cuda_rmsnorm_h(vlm_cuda_ctx *ctx, void *out16, vlm_dtype dtype, const float *x,
                              int64_t n, int64_t dim, vlm_cuda_weight w, float eps, vlm_err *err) {
    if (!half_type(dtype))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "rmsnorm_h: output dtype %s",
                           vlm_dtype_get(dtype)->name);
    if (n <= 0) return VLM_OK;
    const bool bf = dtype == VLM_DTYPE_BF16;
    if (dim % 1024 == 0 && dim <= 4096 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)out16 % 8) == 0) {
        void (*const rows[2][4])(void *, const float *, vlm_dtype, const void *, float,
                                 bool) = {{k_rmsnorm_rows<1, 2>, k_rmsnorm_rows<2, 2>,
                                           k_rmsnorm_rows<3, 2>, k_rmsnorm_rows<4, 2>},
                                          {k_rmsnorm_rows<1, 1>, k_rmsnorm_rows<2, 1>,
                                           k_rmsnorm_rows<3, 1>, k_rmsnorm_rows<4, 1>}};
        launch_pdl(rows[bf][dim / 1024 - 1], dim3((unsigned)n), 256u, ctx->stream, out16, x,
                   w.dtype, w.data, eps, card().prefetch);
        return launched("rmsnorm_h", err);
    }
    launch_pdl(bf ? k_rmsnorm<1> : k_rmsnorm<2>, dim3((unsigned)n), (unsigned)norm_threads(dim),
               ctx->stream, out16, x, dim, w.dtype, w.data, eps);
    return launched("rmsnorm_h", err);
}

vlm_status vlm_cuda_layernorm(vlm_cuda_ctx *ctx, float *out, const float *x, int64_t n, int64_t dim,
                              vlm_cuda_weight w, vlm_cuda_weight b, float eps, vlm_err *err) {
    if (n <= 0) return VLM_OK;
    if (layernorm_warp(ctx->stream, 0, out, x, n, dim, w, b, eps))
        return launched("layernorm", err);
    k_layernorm<<<(unsigned)n, norm_threads(dim), 0, ctx->stream>>>(out, x, dim, w.dtype, w.data,
                                                                    b.dtype, b.data, eps);
    return launched("layernorm", err);
}

vlm_status vlm_cuda_rope_apply(vlm_cuda_ctx *ctx, float *x, int64_t n, int64_t row_stride,
                               int n_heads, int head_dim, const float *cos_t, const float *sin_t,
                               vlm_err *err) {
    int64_t total = n * n_heads * (head_dim / 2);
    if (total <= 0) return VLM_OK;
    k_rope<<<blocks_for(total, 256), 256, 0, ctx->stream>>>(x, n, row_stride, n_heads, head_dim,
                                                            cos_t, sin_t);
    return launched("rope", err);
}

/* rope_store and rope_store_pos: one kernel; dev_pos NULL takes the tables
 * and the offset at the position already. */
static vlm_status rope_store(vlm_cuda_ctx *ctx, float *qkv, int64_t n, int64_t row_stride,
                             int n_heads, int n_kv_heads, int head_dim, const float *cos_t,
                             const float *sin_t, void *k_dst, void *v_dst, vlm_dtype dtype,
                             int64_t offset, const int32_t *dev_pos, const char *what,
                             vlm_err *err) {
    if (dtype != VLM_DTYPE_F32 && dtype != VLM_DTYPE_BF16)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "rope_store: KV dtype %d", (int)dtype);
    int64_t total =
        n * ((int64_t)(n_heads + n_kv_heads) * (head_dim / 2) + (int64_t)n_kv_heads * head_dim);
    if (total <= 0) return VLM_OK;
    launch_pdl(k_rope_store, dim3(blocks_for(total, 256)), 256u, ctx->stream, qkv, n, row_stride,
               n_heads, n_kv_heads, head_dim, cos_t, sin_t, k_dst, v_dst, dtype, offset, dev_pos);
    return launched(what, err);
}

vlm_status vlm_cuda_rope_store(vlm_cuda_ctx *ctx, float *qkv, int64_t n, int64_t row_stride,
                               int n_heads, int n_kv_heads, int head_dim, const float *cos_t,
                               const float *sin_t, void *k_dst, void *v_dst, vlm_dtype dtype,
                               int64_t offset, vlm_err *err) {
    return rope_store(ctx, qkv, n, row_stride, n_heads, n_kv_heads, head_dim, cos_t, sin_t, k_dst,
                      v_dst, dtype, offset, nullptr, "rope_store", err);
}

/* The few-query kernel (decode, short chunks): split the keys when there
 * are too few (query, head) warps to fill the card (att_splits), partials
 * in the workspace merged by k_attn_combine. dpos non-NULL: the queries'
 * position comes from the device at run time and n_kv is the largest key
 * count it may give (the launch has the splits of that length). */
/* The heads and KV dtype every CUDA attention kernel takes. */
static vlm_status attention_shape_ok(int head_dim, int n_heads, int n_kv_heads, vlm_dtype kv,
                                     vlm_err *err) {
    if (head_dim <= 0 || head_dim > ATT_MAXD || n_kv_heads <= 0 || n_heads % n_kv_heads)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "attention: head_dim %d, %d heads over %d kv heads (CUDA kernel takes "
                           "head_dim <= %d)",
                           head_dim, n_heads, n_kv_heads, ATT_MAXD);
    if (kv != VLM_DTYPE_F32 && kv != VLM_DTYPE_BF16)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "attention: KV dtype %d", (int)kv);
    return VLM_OK;
}

static vlm_status attention_few(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                                vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride,
                                int64_t n_q, int64_t n_kv, int n_heads, int n_kv_heads,
                                int head_dim, bool causal, int64_t q_pos0, float scale,
                                const int32_t *dpos, vlm_err *err) {
    const int64_t n_qh = n_q * n_heads;
    int n_split = att_splits(n_qh, n_kv, 64);
    size_t part_bytes = (size_t)n_qh * n_split * (2 + head_dim) * sizeof(float);
    if (n_split > 1 && part_bytes > ctx->workspace_bytes) {
        n_split = 1; /* correct without the partials, only slower */
    }
    const int warps = 4;
    dim3 grid((unsigned)((n_qh + warps - 1) / warps), (unsigned)n_split);
    /* the lane-group kernel where rows are 16-byte vectors of a quarter head */
    const bool bf = k.dtype == VLM_DTYPE_BF16;
    const size_t esz = bf ? 2 : 4;
    const bool rows16 = ((uintptr_t)k.data % 16) == 0 && ((uintptr_t)v.data % 16) == 0 &&
                        ((size_t)kv_stride * esz) % 16 == 0 &&
                        ((size_t)head_dim / 4 * esz) % 16 == 0 && card().dec_groups;
    /* the lane-group kernel merges its splits itself where the context has
     * the counters (one per (query, head) warp) */
    int *cnt = n_split > 1 && ctx->att_cnt && n_qh <= VLM_CUDA_ATT_COUNTERS && card().att_merge
                   ? ctx->att_cnt
                   : NULL;
    bool done = false, rows16_merged = false;
#define DEC_CASE(D)                                                                                \
    case D:                                                                                        \
        if (bf)                                                                                    \
            launch_pdl(k_attn_dec<D, true>, grid, warps * 32u, ctx->stream, out, q, q_stride,      \
                       k.data, v.data, kv_stride, n_q, n_kv, n_heads, n_kv_heads, causal, q_pos0,  \
                       scale, n_split, (float *)ctx->workspace, dpos, cnt, card().prefetch);       \
        else                                                                                       \
            launch_pdl(k_attn_dec<D, false>, grid, warps * 32u, ctx->stream, out, q, q_stride,     \
                       k.data, v.data, kv_stride, n_q, n_kv, n_heads, n_kv_heads, causal, q_pos0,  \
                       scale, n_split, (float *)ctx->workspace, dpos, cnt, card().prefetch);       \
        rows16_merged = cnt != NULL;                                                               \
        done = true;                                                                               \
        break;
    if (rows16) {
        switch (head_dim) {
            DEC_CASE(64)
            DEC_CASE(96)
            DEC_CASE(128)
        default:
            break;
        }
    }
#undef DEC_CASE
    if (!done)
        launch_pdl(k_attention, grid, warps * 32u, ctx->stream, out, q, q_stride, k.dtype, k.data,
                   v.data, kv_stride, n_q, n_kv, n_heads, n_kv_heads, head_dim, causal, q_pos0,
                   scale, n_split, (float *)ctx->workspace, dpos);
    vlm_status st = launched("attention", err);
    if (st != VLM_OK || n_split == 1 || rows16_merged) return st;
    launch_pdl(k_attn_combine, dim3((unsigned)((n_qh + warps - 1) / warps)), warps * 32u,
               ctx->stream, out, (const float *)ctx->workspace, n_qh, n_heads, head_dim, n_split,
               dpos);
    return launched("attention (combine)", err);
}

/* One sequence (n_seq 1) or, for the tiled kernels, n_seq sequences in one
 * launch (blockIdx.z). */
static vlm_status attention(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                            vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride, int n_seq,
                            int64_t n_q, int64_t n_kv, int n_heads, int n_kv_heads, int head_dim,
                            bool causal, int64_t q_pos0, float scale, bool bf16_inputs,
                            vlm_err *err) {
    vlm_status sh = attention_shape_ok(head_dim, n_heads, n_kv_heads, k.dtype, err);
    if (sh != VLM_OK) return sh;
    if (n_seq < 1 || n_seq > 65535)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "attention: %d sequences (1..65535)", n_seq);
    int64_t n_qh = n_q * n_heads;
    if (n_qh <= 0) return VLM_OK;
    /* Tensor cores where the caller's q, K, V are of bf16 precision already
     * and f32 mode is off (VLM_CUDA_MMA_ATTN=0 at context creation turns
     * them off too); the f32 kernels otherwise. */
    if (bf16_inputs && ctx->mma_attention && !ctx->f32_products && n_q >= FA_MIN_Q &&
        head_dim % 16 == 0) {
        const size_t esz = k.dtype == VLM_DTYPE_BF16 ? 2 : 4;
        /* f32 rows: one 16-byte load per 4 values where every row start
         * allows it; bf16 rows: cp.async of 8 values where every row start
         * is 16-byte aligned */
        const bool vec = ((uintptr_t)k.data % (4 * esz)) == 0 &&
                         ((uintptr_t)v.data % (4 * esz)) == 0 && kv_stride % 4 == 0;
        const bool async = k.dtype == VLM_DTYPE_BF16 && ((uintptr_t)k.data % 16) == 0 &&
                           ((uintptr_t)v.data % 16) == 0 && kv_stride % 8 == 0 && card().attn_async;
        const bool ok = mma_attention(ctx->stream, async, false, out, q, q_stride, k.dtype, k.data,
                                      v.data, kv_stride, n_seq, n_q, n_kv, n_heads, n_kv_heads,
                                      head_dim, causal, q_pos0, scale, vec);
        if (ok) return launched("attention (tensor cores)", err);
    }
    if (n_q >= FA_MIN_Q) { /* prefill chunks, the vision tower: K/V tiles shared by 16 queries */
        dim3 fgrid((unsigned)((n_q + FA_QT - 1) / FA_QT), (unsigned)n_heads, (unsigned)n_seq);
        k_attn_tiled<<<fgrid, 128, 0, ctx->stream>>>(out, q, q_stride, k.dtype, k.data, v.data,
                                                     kv_stride, n_q, n_kv, n_heads, n_kv_heads,
                                                     head_dim, causal, q_pos0, scale);
        return launched("attention (tiled)", err);
    }
    if (n_seq > 1) { /* few queries a sequence: one launch each */
        const size_t esz = k.dtype == VLM_DTYPE_BF16 ? 2 : 4;
        for (int z = 0; z < n_seq; z++) {
            const size_t kvo = (size_t)(z * n_kv * kv_stride) * esz;
            vlm_cuda_weight kz = {k.dtype, (const char *)k.data + kvo},
                            vz = {v.dtype, (const char *)v.data + kvo};
            vlm_status st =
                attention(ctx, out + z * n_q * n_heads * head_dim, q + z * n_q * q_stride, q_stride,
                          kz, vz, kv_stride, 1, n_q, n_kv, n_heads, n_kv_heads, head_dim, causal,
                          q_pos0, scale, bf16_inputs, err);
            if (st != VLM_OK) return st;
        }
        return VLM_OK;
    }
    return attention_few(ctx, out, q, q_stride, k, v, kv_stride, n_q, n_kv, n_heads, n_kv_heads,
                         head_dim, causal, q_pos0, scale, nullptr, err);
}

vlm_status vlm_cuda_attention(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                              vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride, int64_t n_q,
                              int64_t n_kv, int n_heads, int n_kv_heads, int head_dim, bool causal,
                              int64_t q_pos0, float scale, vlm_err *err) {
    return attention(ctx, out, q, q_stride, k, v, kv_stride, 1, n_q, n_kv, n_heads, n_kv_heads,
                     head_dim, causal, q_pos0, scale, false, err);
}

vlm_status vlm_cuda_attention_seqs(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                                   vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride,
                                   int n_seq, int64_t n_q, int64_t n_kv, int n_heads,
                                   int n_kv_heads, int head_dim, bool causal, int64_t q_pos0,
                                   float scale, bool bf16_inputs, vlm_err *err) {
    return attention(ctx, out, q, q_stride, k, v, kv_stride, n_seq, n_q, n_kv, n_heads, n_kv_heads,
                     head_dim, causal, q_pos0, scale, bf16_inputs, err);
}

vlm_status vlm_cuda_store_rows(vlm_cuda_ctx *ctx, void *dst, vlm_dtype dtype, int64_t offset,
                               const float *src, int64_t n, vlm_err *err) {
    if (dtype != VLM_DTYPE_F32 && dtype != VLM_DTYPE_BF16)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "store_rows: dtype %d", (int)dtype);
    if (n <= 0) return VLM_OK;
    k_store_rows<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(dst, dtype, offset, src, n);
    return launched("store_rows", err);
}

vlm_status vlm_cuda_store_rows_strided(vlm_cuda_ctx *ctx, void *dst, vlm_dtype dtype,
                                       int64_t offset, const float *src, int64_t src_stride,
                                       int64_t n_rows, int64_t row_len, vlm_err *err) {
    if (dtype != VLM_DTYPE_F32 && dtype != VLM_DTYPE_BF16)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "store_rows: dtype %d", (int)dtype);
    int64_t n = n_rows * row_len;
    if (n <= 0) return VLM_OK;
    if (dtype == VLM_DTYPE_BF16 && row_len % 4 == 0 && src_stride % 4 == 0 && offset % 4 == 0 &&
        ((uintptr_t)src % 16) == 0 && ((uintptr_t)dst % 8) == 0) {
        const int64_t grid = n_rows < 65535 * 16 ? n_rows : 65535 * 16;
        k_store_strided4<<<(unsigned)grid, 256, 0, ctx->stream>>>((uint16_t *)dst + offset, src,
                                                                  src_stride, n_rows, row_len);
        return launched("store_rows_strided", err);
    }
    k_store_strided<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(dst, dtype, offset, src,
                                                                 src_stride, n_rows, row_len);
    return launched("store_rows_strided", err);
}

vlm_status vlm_cuda_merge2x2(vlm_cuda_ctx *ctx, float *out, const float *feats, int64_t crop_rows,
                             int64_t first, int grid, int64_t dim, int n_crops, vlm_err *err) {
    int64_t n = (int64_t)n_crops * (grid / 2) * (grid / 2) * 4 * dim;
    if (n <= 0) return VLM_OK;
    k_merge2x2<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(out, feats, crop_rows, first, grid, dim,
                                                            n_crops);
    return launched("merge2x2", err);
}

vlm_status vlm_cuda_quick_gelu(vlm_cuda_ctx *ctx, float *x, int64_t n, vlm_err *err) {
    if (n <= 0) return VLM_OK;
    k_quick_gelu<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(x, n);
    return launched("quick_gelu", err);
}

vlm_status vlm_cuda_gelu_erf(vlm_cuda_ctx *ctx, float *x, int64_t n, vlm_err *err) {
    if (n <= 0) return VLM_OK;
    k_gelu_erf<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(x, n);
    return launched("gelu_erf", err);
}

vlm_status vlm_cuda_add(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, vlm_err *err) {
    if (n <= 0) return VLM_OK;
    k_add<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(y, x, n);
    return launched("add", err);
}

vlm_status vlm_cuda_add_bias(vlm_cuda_ctx *ctx, float *y, int64_t n, int64_t dim, vlm_cuda_weight b,
                             vlm_err *err) {
    if (n <= 0 || dim <= 0 || !b.data) return VLM_OK;
    k_add_bias<<<blocks_for(n * dim, 256), 256, 0, ctx->stream>>>(y, n, dim, b.dtype, b.data);
    return launched("add_bias", err);
}

vlm_status vlm_cuda_silu_mul_h(vlm_cuda_ctx *ctx, void *out16, vlm_dtype dtype, const float *gu,
                               int64_t n, int64_t ff, vlm_err *err) {
    if (!half_type(dtype) || ff % 4 || ((uintptr_t)gu % 16) || ((uintptr_t)out16 % 8) || n > 65535)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "silu_mul_h: %s, %lld rows of %lld (the kernel takes rows of a multiple "
                           "of 4, aligned, at most 65535 rows)",
                           vlm_dtype_get(dtype)->name, (long long)n, (long long)ff);
    if (n <= 0 || ff <= 0) return VLM_OK;
    const int64_t ff4 = ff / 4;
    const dim3 grid((unsigned)((ff4 + 255) / 256 < 64 ? (ff4 + 255) / 256 : 64), (unsigned)n);
    if (dtype == VLM_DTYPE_BF16)
        launch_pdl(k_silu_mul_h4<true>, grid, 256u, ctx->stream, out16, gu, ff4);
    else
        launch_pdl(k_silu_mul_h4<false>, grid, 256u, ctx->stream, out16, gu, ff4);
    return launched("silu_mul_h", err);
}

vlm_status vlm_cuda_silu_mul(vlm_cuda_ctx *ctx, float *out, const float *gu, int64_t n, int64_t ff,
                             vlm_err *err) {
    if (n <= 0 || ff <= 0) return VLM_OK;
    launch_pdl(k_silu_mul, dim3(blocks_for(n * ff, 256)), 256u, ctx->stream, out, gu, n, ff);
    return launched("silu_mul", err);
}

vlm_status vlm_cuda_argmax(vlm_cuda_ctx *ctx, int32_t *out, const float *x, int64_t n,
                           vlm_err *err) {
    if (n <= 0 || n > INT_MAX)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "argmax: %lld values", (long long)n);
    launch_pdl(k_argmax, dim3(1), 1024u, ctx->stream, out, x, n);
    return launched("argmax", err);
}

vlm_status vlm_cuda_embed_rows(vlm_cuda_ctx *ctx, float *out, vlm_cuda_weight table, int64_t dim,
                               const int32_t *ids, int64_t n, vlm_err *err) {
    if (n <= 0 || dim <= 0) return VLM_OK;
    k_embed<<<blocks_for(n * dim, 256), 256, 0, ctx->stream>>>(out, table.dtype, table.data, dim,
                                                               ids, n);
    return launched("embed_rows", err);
}

/* A cuBLAS product that failed: VLM_ERR_NOMEM when cuBLAS ran out of
 * memory (the fallback steps down), else VLM_ERR_DEVICE, naming the op
 * and its n x in x out shape. */
static vlm_status blas_failed(const char *op, cublasStatus_t bs, int64_t n, int64_t in, int64_t out,
                              vlm_err *err) {
    return vlm_err_set(err, bs == CUBLAS_STATUS_ALLOC_FAILED ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                       "%s %lld x %lld x %lld: cuBLAS: %s", op, (long long)n, (long long)in,
                       (long long)out, cublasGetStatusString(bs));
}

/* y = x W^T (+ b), or with acc_y y += x W^T (+ b). */
static vlm_status matmul(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, int64_t in,
                         int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, bool acc_y,
                         vlm_err *err) {
    if (n <= 0 || out <= 0) return VLM_OK;
    vlm_dtype t = w.dtype;
    bool plain = t == VLM_DTYPE_F32 || t == VLM_DTYPE_F16 || t == VLM_DTYPE_BF16;
    bool quant = t == VLM_DTYPE_Q8_0 || t == VLM_DTYPE_Q4_0;
    if (!plain && !quant)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "matmul: weight dtype %d has no CUDA kernel",
                           (int)t);
    if (quant && in % VLM_QK)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "matmul: %lld inputs is not a whole number of %d-weight blocks",
                           (long long)in, VLM_QK);
    vlm_status st;
    if (quant || n <= GEMV_MAXN) {
        for (int64_t t0 = 0; t0 < n; t0 += GEMV_MAXN) {
            int64_t nn = n - t0 < GEMV_MAXN ? n - t0 : GEMV_MAXN;
            /* 16-byte vectors need 8-weight rows and aligned x and W. */
            bool vec = in % 8 == 0 && ((uintptr_t)w.data % 16) == 0 &&
                       ((uintptr_t)(x + t0 * in) % 16) == 0;
            if (t != VLM_DTYPE_F32 && gemv_fast_ok(t, in, w.data, x + t0 * in)) {
                launch_gemv_fast_n(ctx->stream, (int)nn, y + t0 * out, x + t0 * in, in, out, t,
                                   w.data, acc_y);
                st = launched("matmul (gemv)", err);
                if (st != VLM_OK) return st;
                continue;
            }
            unsigned grid = (unsigned)((out + GEMV_WARPS - 1) / GEMV_WARPS);
            k_gemv<<<grid, GEMV_WARPS * 32, 0, ctx->stream>>>(y + t0 * out, x + t0 * in, nn, in,
                                                              out, t, w.data, vec, acc_y);
            st = launched("matmul (gemv)", err);
            if (st != VLM_OK) return st;
        }
    } else {
        /* cuBLAS is column-major: row-major y[n][out] is Y (out x n, ld out),
         * W[out][in] is an (in x out, ld in) matrix taken transposed, x[n][in]
         * is (in x n, ld in): Y = op_T(W) * X. */
        const float alpha = 1.0f, beta = acc_y ? 1.0f : 0.0f;
        cublasStatus_t bs;
        if (t == VLM_DTYPE_F32) {
            bs = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in,
                              &alpha, w.data, CUDA_R_32F, (int)in, x, CUDA_R_32F, (int)in, &beta, y,
                              CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        } else if (ctx->f32_products) {
            /* W widened to f32 in the workspace, a chunk of output rows at
             * a time; y's columns [o0, o0 + nr) of every row */
            int64_t rows = (int64_t)(ctx->workspace_bytes / ((size_t)in * 4));
            if (rows < 1)
                return vlm_err_set(err, VLM_ERR_NOMEM,
                                   "matmul: a weight row of %lld needs %lld bytes of GPU "
                                   "workspace, the context has %zu",
                                   (long long)in, (long long)in * 4, ctx->workspace_bytes);
            bs = CUBLAS_STATUS_SUCCESS;
            for (int64_t o0 = 0; o0 < out && bs == CUBLAS_STATUS_SUCCESS; o0 += rows) {
                int64_t nr = out - o0 < rows ? out - o0 : rows;
                const char *wsrc = (const char *)w.data + (size_t)(o0 * in) * 2;
                k_widen<<<blocks_for(nr * in, 256), 256, 0, ctx->stream>>>((float *)ctx->workspace,
                                                                           t, wsrc, nr * in);
                st = launched("matmul (widen weights)", err);
                if (st != VLM_OK) return st;
                bs = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, (int)n, (int)in,
                                  &alpha, ctx->workspace, CUDA_R_32F, (int)in, x, CUDA_R_32F,
                                  (int)in, &beta, y + o0, CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT);
            }
        } else {
            /* x rounded to the weight's type in the workspace, in chunks
             * of rows that fit it */
            int64_t rows = (int64_t)(ctx->workspace_bytes / ((size_t)in * 2));
            if (rows < 1)
                return vlm_err_set(err, VLM_ERR_NOMEM,
                                   "matmul: a row of %lld activations needs %lld bytes of GPU "
                                   "workspace, the context has %zu",
                                   (long long)in, (long long)in * 2, ctx->workspace_bytes);
            bool bf = t == VLM_DTYPE_BF16;
            cudaDataType_t dt = bf ? CUDA_R_16BF : CUDA_R_16F;
            bs = CUBLAS_STATUS_SUCCESS;
            for (int64_t r0 = 0; r0 < n && bs == CUBLAS_STATUS_SUCCESS; r0 += rows) {
                int64_t nr = n - r0 < rows ? n - r0 : rows;
                k_to_half<<<blocks_for(nr * in, 256), 256, 0, ctx->stream>>>(ctx->workspace, bf,
                                                                             x + r0 * in, nr * in);
                st = launched("matmul (round activations)", err);
                if (st != VLM_OK) return st;
                bs = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)nr, (int)in,
                                  &alpha, w.data, dt, (int)in, ctx->workspace, dt, (int)in, &beta,
                                  y + r0 * out, CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT);
            }
        }
        if (bs != CUBLAS_STATUS_SUCCESS) return blas_failed("matmul", bs, n, in, out, err);
    }
    return vlm_cuda_add_bias(ctx, y, n, out, b, err);
}

bool vlm_cuda_rounds_inputs(const vlm_cuda_ctx *ctx, vlm_cuda_weight w, int64_t n) {
    return n > GEMV_MAXN && half_type(w.dtype) && !ctx->f32_products;
}

vlm_status vlm_cuda_matmul(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, int64_t in,
                           int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, vlm_err *err) {
    return matmul(ctx, y, x, n, in, out, w, b, false, err);
}

vlm_status vlm_cuda_matmul_acc(vlm_cuda_ctx *ctx, float *y, const float *x, int64_t n, int64_t in,
                               int64_t out, vlm_cuda_weight w, vlm_err *err) {
    const vlm_cuda_weight none = {VLM_DTYPE_F32, NULL};
    return matmul(ctx, y, x, n, in, out, w, none, true, err);
}

/* Whether k_gemv16's epilogues take an n-token product of `out` rows: the
 * fast GEMV's 16-bit weights at two warps a row (the decoder's shapes). */
static bool gemv_epi_ok(bool on, vlm_cuda_weight w, const float *x, int64_t n, int64_t in,
                        int64_t out) {
    return on && n >= 1 && n <= GEMV_MAXN &&
           (w.dtype == VLM_DTYPE_BF16 || w.dtype == VLM_DTYPE_F16) &&
           gemv_fast_ok(w.dtype, in, w.data, x) && gemv_warps_per_row(out) == 2;
}

vlm_status vlm_cuda_matmul_silu(vlm_cuda_ctx *ctx, float *out, float *gu, const float *x, int64_t n,
                                int64_t in, int64_t ff, vlm_cuda_weight w, vlm_err *err) {
    if (n <= 0 || ff <= 0) return VLM_OK;
    if (gemv_epi_ok(card().fuse_silu, w, x, n, in, 2 * ff)) {
        gv_epi e = {};
        e.out = out;
        launch_gemv_epi_n<GV_SILU>(ctx->stream, (int)n, gu, x, in, 2 * ff,
                                   w.dtype == VLM_DTYPE_BF16, w.data, false, e);
        return launched("matmul_silu", err);
    }
    const vlm_cuda_weight none = {VLM_DTYPE_F32, NULL};
    vlm_status st = matmul(ctx, gu, x, n, in, 2 * ff, w, none, false, err);
    return st != VLM_OK ? st : vlm_cuda_silu_mul(ctx, out, gu, n, ff, err);
}

vlm_status vlm_cuda_matmul_rope_store(vlm_cuda_ctx *ctx, float *qkv, const float *x, int64_t n,
                                      int64_t in, vlm_cuda_weight w, int n_heads, int n_kv_heads,
                                      int head_dim, const float *cos_t, const float *sin_t,
                                      void *k_dst, void *v_dst, vlm_dtype dtype, int64_t offset,
                                      const int32_t *dev_pos, vlm_err *err) {
    const int64_t out = (int64_t)(n_heads + 2 * n_kv_heads) * head_dim;
    if (n <= 0 || out <= 0) return VLM_OK;
    if (head_dim % 2 == 0 && (dtype == VLM_DTYPE_F32 || dtype == VLM_DTYPE_BF16) &&
        gemv_epi_ok(card().fuse_rope, w, x, n, in, out)) {
        gv_epi e = {};
        e.n_heads = n_heads;
        e.n_kv_heads = n_kv_heads;
        e.head_dim = head_dim;
        e.kv_bf16 = dtype == VLM_DTYPE_BF16;
        e.cos_t = cos_t;
        e.sin_t = sin_t;
        e.kd = k_dst;
        e.vd = v_dst;
        e.offset = offset;
        e.dpos = dev_pos;
        launch_gemv_epi_n<GV_ROPE>(ctx->stream, (int)n, qkv, x, in, out, w.dtype == VLM_DTYPE_BF16,
                                   w.data, false, e);
        return launched("matmul_rope_store", err);
    }
    const vlm_cuda_weight none = {VLM_DTYPE_F32, NULL};
    vlm_status st = matmul(ctx, qkv, x, n, in, out, w, none, false, err);
    if (st != VLM_OK) return st;
    return rope_store(ctx, qkv, n, out, n_heads, n_kv_heads, head_dim, cos_t, sin_t, k_dst, v_dst,
                      dtype, offset, dev_pos, "matmul_rope_store", err);
}

vlm_status vlm_cuda_patch_embed(vlm_cuda_ctx *ctx, float *out, const float *img, int s, int p,
                                int64_t width, vlm_cuda_weight w, float *im2col_dev, vlm_err *err) {
    if (p <= 0 || s % p)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "patch_embed: side %d is not a multiple of %d",
                           s, p);
    int64_t g = s / p, per = 3LL * p * p;
    k_im2col<<<blocks_for(g * g * per, 256), 256, 0, ctx->stream>>>(im2col_dev, img, s, p);
    vlm_status st = launched("patch_embed (im2col)", err);
    if (st != VLM_OK) return st;
    vlm_cuda_weight none = {VLM_DTYPE_F32, NULL};
    return vlm_cuda_matmul(ctx, out, im2col_dev, g * g, per, width, w, none, err);
}

vlm_status vlm_cuda_rope_store_pos(vlm_cuda_ctx *ctx, float *qkv, int64_t n, int64_t row_stride,
                                   int n_heads, int n_kv_heads, int head_dim,
                                   const float *cos_table, const float *sin_table, void *k_dst,
                                   void *v_dst, vlm_dtype dtype, int64_t layer_offset,
                                   const int32_t *dev_pos, vlm_err *err) {
    if (!dev_pos) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "rope_store: no device position");
    return rope_store(ctx, qkv, n, row_stride, n_heads, n_kv_heads, head_dim, cos_table, sin_table,
                      k_dst, v_dst, dtype, layer_offset, dev_pos, "rope_store (device position)",
                      err);
}

vlm_status vlm_cuda_attention_pos(vlm_cuda_ctx *ctx, float *out, const float *q, int64_t q_stride,
                                  vlm_cuda_weight k, vlm_cuda_weight v, int64_t kv_stride,
                                  int64_t n_q, int64_t max_kv, int n_heads, int n_kv_heads,
                                  int head_dim, float scale, const int32_t *dev_pos, vlm_err *err) {
    vlm_status sh = attention_shape_ok(head_dim, n_heads, n_kv_heads, k.dtype, err);
    if (sh != VLM_OK) return sh;
    if (!dev_pos || n_q < 1 || n_q >= FA_MIN_Q || max_kv < n_q)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "attention (device position): %lld queries, %lld keys at most%s",
                           (long long)n_q, (long long)max_kv, dev_pos ? "" : ", no position");
    return attention_few(ctx, out, q, q_stride, k, v, kv_stride, n_q, max_kv, n_heads, n_kv_heads,
                         head_dim, true, 0, scale, dev_pos, err);
}

/* --- bf16 GEMM inputs (the vision tower) ---------------------------------- */

bool vlm_cuda_f32_mode(const vlm_cuda_ctx *ctx) {
    return ctx->f32_products;
}

static bool float_type(vlm_dtype t, cudaDataType_t *out) {
    switch (t) {
    case VLM_DTYPE_F32:
        *out = CUDA_R_32F;
        return true;
    case VLM_DTYPE_BF16:
        *out = CUDA_R_16BF;
        return true;
    case VLM_DTYPE_F16:
        *out = CUDA_R_16F;
        return true;
    default:
        return false;
    }
}

/* The largest power of two (<= 256) dividing the address: cuBLASLt's
 * heuristic must only offer algorithms that work at that alignment. */
static uint32_t align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && a % al) al >>= 1;
    return al;
}

/* y = xh W^T + beta y + b (y of type yt: f32, or bf16 rounded from the
 * f32 result) through cublasLtMatmul with the BIAS epilogue,
 * the layouts as the cublasGemmEx call of matmul (column-major: Y is
 * out x n, W taken transposed, X in x n). False (nothing queued) when the
 * library has no handle or no algorithm for this case; the caller then
 * runs cublasGemmEx and add_bias. */
static bool lt_matmul_bias(vlm_cuda_ctx *ctx, void *y, const void *xh, int64_t n, int64_t in,
                           int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, float beta,
                           cudaDataType_t yt) {
    cudaDataType_t dt, bt;
    if (!ctx->lt || !b.data || !float_type(w.dtype, &dt) || !float_type(b.dtype, &bt)) return false;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    bool ok =
        cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const void *bias = b.data;
    const int32_t bias_type = (int32_t)bt;
    const uint64_t ws = ctx->blas_ws_bytes;
    const uint32_t al_a = align_of(w.data), al_b = align_of(xh), al_c = align_of(y);
    ok = ok &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                        sizeof bias) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                        sizeof bias_type) == CUBLAS_STATUS_SUCCESS;
    ok = ok &&
         cublasLtMatrixLayoutCreate(&la, dt, (uint64_t)in, (uint64_t)out, in) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutCreate(&lb, dt, (uint64_t)in, (uint64_t)n, in) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutCreate(&lc, yt, (uint64_t)out, (uint64_t)n, out) ==
             CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                              sizeof ws) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                              &al_a, sizeof al_a) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                              &al_b, sizeof al_b) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                              &al_c, sizeof al_c) == CUBLAS_STATUS_SUCCESS &&
         cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                              &al_c, sizeof al_c) == CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    ok = ok &&
         cublasLtMatmulAlgoGetHeuristic(ctx->lt, op, la, lb, lc, lc, pref, 1, &res, &found) ==
             CUBLAS_STATUS_SUCCESS &&
         found > 0;
    const float alpha = 1.0f;
    ok = ok && cublasLtMatmul(ctx->lt, op, &alpha, w.data, la, xh, lb, &beta, y, lc, y, lc,
                              &res.algo, ctx->blas_ws, ws, ctx->stream) == CUBLAS_STATUS_SUCCESS;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    return ok;
}

static vlm_status matmul_h(vlm_cuda_ctx *ctx, float *y, const void *xh, int64_t n, int64_t in,
                           int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, bool acc_y,
                           vlm_err *err) {
    if (n <= 0 || out <= 0) return VLM_OK;
    if (!half_type(w.dtype))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "matmul_h: weight dtype %d is not BF16 or F16 (16-bit activations)",
                           (int)w.dtype);
    if (n > INT32_MAX || in > INT32_MAX || out > INT32_MAX)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "matmul_h: %lld x %lld x %lld is too large",
                           (long long)n, (long long)in, (long long)out);
    const float beta = acc_y ? 1.0f : 0.0f;
    if (lt_matmul_bias(ctx, y, xh, n, in, out, w, b, beta, CUDA_R_32F))
        return launched("matmul_h (Lt)", err);
    (void)cudaGetLastError(); /* a refused cuBLASLt call leaves nothing to report */
    const float alpha = 1.0f;
    cudaDataType_t dt = w.dtype == VLM_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    cublasStatus_t bs = cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in,
                                     &alpha, w.data, dt, (int)in, xh, dt, (int)in, &beta, y,
                                     CUDA_R_32F, (int)out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (bs != CUBLAS_STATUS_SUCCESS) return blas_failed("matmul_h", bs, n, in, out, err);
    return vlm_cuda_add_bias(ctx, y, n, out, b, err);
}

vlm_status vlm_cuda_matmul_h(vlm_cuda_ctx *ctx, float *y, const void *xh, int64_t n, int64_t in,
                             int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, vlm_err *err) {
    return matmul_h(ctx, y, xh, n, in, out, w, b, false, err);
}

vlm_status vlm_cuda_matmul_h_acc(vlm_cuda_ctx *ctx, float *y, const void *xh, int64_t n, int64_t in,
                                 int64_t out, vlm_cuda_weight w, vlm_cuda_weight b, vlm_err *err) {
    return matmul_h(ctx, y, xh, n, in, out, w, b, true, err);
}

vlm_status vlm_cuda_layernorm_h(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const float *x,
                                int64_t n, int64_t dim, vlm_cuda_weight w, vlm_cuda_weight b,
                                float eps, vlm_err *err) {
    if (!half_type(dtype))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "layernorm_h: output dtype %d", (int)dtype);
    if (n <= 0) return VLM_OK;
    if (layernorm_warp(ctx->stream, dtype == VLM_DTYPE_BF16 ? 1 : 2, out, x, n, dim, w, b, eps))
        return launched("layernorm_h", err);
    k_layernorm_h<float><<<(unsigned)n, norm_threads(dim), 0, ctx->stream>>>(
        out, dtype == VLM_DTYPE_BF16, x, dim, w.dtype, w.data, b.dtype, b.data, eps);
    return launched("layernorm_h", err);
}

vlm_status vlm_cuda_layernorm_h16(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const void *x16,
                                  int64_t n, int64_t dim, vlm_cuda_weight w, vlm_cuda_weight b,
                                  float eps, vlm_err *err) {
    if (!half_type(dtype))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "layernorm_h16: output dtype %d", (int)dtype);
    if (n <= 0) return VLM_OK;
    if (layernorm_warp(ctx->stream, dtype == VLM_DTYPE_BF16 ? 1 : 2, out, x16, n, dim, w, b, eps,
                       true))
        return launched("layernorm_h16", err);
    k_layernorm_h<__nv_bfloat16><<<(unsigned)n, norm_threads(dim), 0, ctx->stream>>>(
        out, dtype == VLM_DTYPE_BF16, (const __nv_bfloat16 *)x16, dim, w.dtype, w.data, b.dtype,
        b.data, eps);
    return launched("layernorm_h16", err);
}

/* What the bf16-output products (matmul_h_out16, matmul_h_acc16) take:
 * BF16 weights outside f32 mode, sizes cuBLAS's int arguments hold;
 * VLM_ERR_UNSUPPORTED naming op otherwise. */
static vlm_status bf16_product_ok(const vlm_cuda_ctx *ctx, const char *op, vlm_cuda_weight w,
                                  int64_t n, int64_t in, int64_t out, vlm_err *err) {
    if (w.dtype != VLM_DTYPE_BF16 || ctx->f32_products || n > INT32_MAX || in > INT32_MAX ||
        out > INT32_MAX)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "%s: needs BF16 weights outside f32 mode (%lld x %lld x %lld)", op,
                           (long long)n, (long long)in, (long long)out);
    return VLM_OK;
}

vlm_status vlm_cuda_matmul_h_acc16(vlm_cuda_ctx *ctx, void *y16, const void *xh, int64_t n,
                                   int64_t in, int64_t out, vlm_cuda_weight w, vlm_cuda_weight b,
                                   vlm_err *err) {
    if (n <= 0 || out <= 0) return VLM_OK;
    vlm_status st = bf16_product_ok(ctx, "matmul_h_acc16", w, n, in, out, err);
    if (st != VLM_OK) return st;
    if (lt_matmul_bias(ctx, y16, xh, n, in, out, w, b, 1.0f, CUDA_R_16BF))
        return launched("matmul_h_acc16 (Lt)", err);
    (void)cudaGetLastError(); /* a refused cuBLASLt call leaves nothing to report */
    return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                       "matmul_h_acc16: cuBLASLt took no bf16 product of %lld x %lld x %lld with "
                       "a bf16 residual",
                       (long long)n, (long long)in, (long long)out);
}

vlm_status vlm_cuda_bf16_to_f32(vlm_cuda_ctx *ctx, float *out, const void *x16, int64_t n,
                                vlm_err *err) {
    if (n <= 0) return VLM_OK;
    if (n % 8 == 0 && ((uintptr_t)x16 % 16) == 0 && ((uintptr_t)out % 16) == 0) {
        k_bf16_to_f32x8<<<blocks_for(n / 8, 256), 256, 0, ctx->stream>>>((float4 *)out,
                                                                         (const uint4 *)x16, n / 8);
        return launched("bf16_to_f32", err);
    }
    k_bf16_to_f32<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(out, (const uint16_t *)x16, n);
    return launched("bf16_to_f32", err);
}

vlm_status vlm_cuda_bias_quick_gelu_h(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const float *x,
                                      int64_t n, int64_t dim, vlm_cuda_weight b, vlm_err *err) {
    if (!half_type(dtype))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "bias_quick_gelu_h: output dtype %d",
                           (int)dtype);
    if (n <= 0 || dim <= 0) return VLM_OK;
    if (dim % 4 == 0 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)out % 8) == 0) {
        const unsigned grid = (unsigned)(n < 65535 * 16 ? n : 65535 * 16);
        if (dtype == VLM_DTYPE_BF16)
            k_bias_quick_gelu_h4<true>
                <<<grid, 256, 0, ctx->stream>>>(out, x, n, dim, b.dtype, b.data);
        else
            k_bias_quick_gelu_h4<false>
                <<<grid, 256, 0, ctx->stream>>>(out, x, n, dim, b.dtype, b.data);
        return launched("bias_quick_gelu_h", err);
    }
    k_bias_quick_gelu_h<<<blocks_for(n * dim, 256), 256, 0, ctx->stream>>>(
        out, dtype == VLM_DTYPE_BF16, x, n, dim, b.dtype, b.data);
    return launched("bias_quick_gelu_h", err);
}

vlm_status vlm_cuda_quick_gelu_bf16(vlm_cuda_ctx *ctx, void *x16, int64_t n, vlm_err *err) {
    if (n <= 0) return VLM_OK;
    if (n % 8 || ((uintptr_t)x16 % 16))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "quick_gelu_bf16: %lld values at %p are not whole aligned 8-value "
                           "vectors",
                           (long long)n, x16);
    const int64_t n8 = n / 8;
    const int64_t blocks = (n8 + 255) / 256;
    k_quick_gelu_bf16x8<<<(unsigned)(blocks < 65535 * 16 ? blocks : 65535 * 16), 256, 0,
                          ctx->stream>>>((uint4 *)x16, n8);
    return launched("quick_gelu_bf16", err);
}

vlm_status vlm_cuda_to_half(vlm_cuda_ctx *ctx, void *out, vlm_dtype dtype, const float *x,
                            int64_t n, vlm_err *err) {
    if (!half_type(dtype))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "to_half: output dtype %d", (int)dtype);
    if (n <= 0) return VLM_OK;
    if (n % 4 == 0 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)out % 8) == 0) {
        if (dtype == VLM_DTYPE_BF16)
            k_to_half4<true><<<blocks_for(n / 4, 256), 256, 0, ctx->stream>>>(out, x, n / 4);
        else
            k_to_half4<false><<<blocks_for(n / 4, 256), 256, 0, ctx->stream>>>(out, x, n / 4);
        return launched("to_half", err);
    }
    k_to_half<<<blocks_for(n, 256), 256, 0, ctx->stream>>>(out, dtype == VLM_DTYPE_BF16, x, n);
    return launched("to_half", err);
}

bool vlm_cuda_pixels16(const vlm_cuda_ctx *ctx, vlm_cuda_weight w) {
    return w.dtype == VLM_DTYPE_BF16 && !ctx->f32_products;
}

vlm_status vlm_cuda_patch_embed_crops(vlm_cuda_ctx *ctx, float *x, const void *img, vlm_dtype img_t,
                                      int n_crops, int s, int p, int64_t width, vlm_cuda_weight w,
                                      vlm_cuda_weight class_emb, vlm_cuda_weight pos_emb, void *col,
                                      float *tmp, vlm_err *err) {
    if (p <= 0 || s % p)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "patch_embed_crops: side %d is not a multiple of %d", s, p);
    if (img_t != VLM_DTYPE_F32 && !(img_t == VLM_DTYPE_BF16 && vlm_cuda_pixels16(ctx, w)))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "patch_embed_crops: %s pixels need BF16 weights outside f32 mode",
                           vlm_dtype_get(img_t)->name);
    if (n_crops <= 0) return VLM_OK;
    const int64_t g = s / p, per = 3LL * p * p, rows = (int64_t)n_crops * g * g;
    const bool h = half_type(w.dtype) && !ctx->f32_products;
    const int ht = !h ? 0 : w.dtype == VLM_DTYPE_BF16 ? 1 : 2;
    k_im2col_crops<<<blocks_for(rows * per, 256), 256, 0, ctx->stream>>>(
        col, ht, img, img_t == VLM_DTYPE_BF16, n_crops, s, p);
    vlm_status st = launched("patch_embed_crops (im2col)", err);
    if (st != VLM_OK) return st;
    const vlm_cuda_weight none = {VLM_DTYPE_F32, NULL};
    st = h ? vlm_cuda_matmul_h(ctx, tmp, col, rows, per, width, w, none, err)
           : vlm_cuda_matmul(ctx, tmp, (const float *)col, rows, per, width, w, none, err);
    if (st != VLM_OK) return st;
    const int64_t np = g * g + 1, total = (int64_t)n_crops * np * width;
    k_clip_embed<<<blocks_for(total, 256), 256, 0, ctx->stream>>>(
        x, tmp, class_emb.dtype, class_emb.data, pos_emb.dtype, pos_emb.data, n_crops, np, width);
    return launched("patch_embed_crops (class and positions)", err);
}

/* VLM_CUDA_GEMM90=0 leaves fc1 and its activation to cuBLASLt and the
 * quick-GELU pass (for measuring). */
bool vlm_cuda_has_gemm90(vlm_cuda_ctx *ctx) {
    static const bool off = [] {
        const char *e = getenv("VLM_CUDA_GEMM90");
        return e && !strcmp(e, "0");
    }();
    return !off && wgmma_built(ctx->stream);
}

vlm_status vlm_cuda_matmul_h_out16(vlm_cuda_ctx *ctx, void *y16, const void *xh, int64_t n,
                                   int64_t in, int64_t out, vlm_cuda_weight w, vlm_cuda_weight b,
                                   vlm_err *err) {
    if (n <= 0 || out <= 0) return VLM_OK;
    vlm_status chk = bf16_product_ok(ctx, "matmul_h_out16", w, n, in, out, err);
    if (chk != VLM_OK) return chk;
    if (lt_matmul_bias(ctx, y16, xh, n, in, out, w, b, 0.0f, CUDA_R_16BF))
        return launched("matmul_h_out16 (Lt)", err);
    (void)cudaGetLastError(); /* a refused cuBLASLt call leaves nothing to report */
    /* cuBLAS with a bf16 C: the rows filled with the bias (rounded to bf16:
     * exact for the bf16 biases of a bf16 checkpoint), then y = acc + C in
     * f32 rounded once (beta 1) */
    float beta = 0.0f;
    if (b.data) {
        k_fill_rows_bf16<<<(unsigned)(n < 65535 * 16 ? n : 65535 * 16), 256, 0, ctx->stream>>>(
            (uint16_t *)y16, n, out, b.dtype, b.data);
        vlm_status st = launched("matmul_h_out16 (bias rows)", err);
        if (st != VLM_OK) return st;
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    cublasStatus_t bs =
        cublasGemmEx(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in, &alpha, w.data,
                     CUDA_R_16BF, (int)in, xh, CUDA_R_16BF, (int)in, &beta, y16, CUDA_R_16BF,
                     (int)out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (bs != CUBLAS_STATUS_SUCCESS) return blas_failed("matmul_h_out16", bs, n, in, out, err);
    return VLM_OK;
}

vlm_status vlm_cuda_matmul_h_qgelu16(vlm_cuda_ctx *ctx, void *y16, const void *xh, int64_t n,
                                     int64_t in, int64_t out, vlm_cuda_weight w, vlm_cuda_weight b,
                                     vlm_err *err) {
    if (n <= 0 || out <= 0) return VLM_OK;
    vlm_status st = bf16_product_ok(ctx, "matmul_h_qgelu16", w, n, in, out, err);
    if (st != VLM_OK) return st;
    /* gemm90 (hopper.cuh) where it takes the shapes, cuBLASLt and the pass
     * elsewhere (or where it declines: nothing launched) */
    if ((!b.data || b.dtype == VLM_DTYPE_BF16) && g90_takes(y16, xh, w.data, b.data, n, out, in) &&
        vlm_cuda_has_gemm90(ctx) &&
        g90_launch<G90_BIAS_QGELU>(ctx->stream, card().sms, (uint16_t *)y16, (const uint16_t *)xh,
                                   (const uint16_t *)w.data, (const uint16_t *)b.data, n, out,
                                   in) != cudaErrorNotSupported)
        return launched("matmul_h_qgelu16 (gemm90)", err);
    st = vlm_cuda_matmul_h_out16(ctx, y16, xh, n, in, out, w, b, err);
    return st == VLM_OK ? vlm_cuda_quick_gelu_bf16(ctx, y16, n * out, err) : st;
}

vlm_status vlm_cuda_attention_seqs_h(vlm_cuda_ctx *ctx, void *out16, const void *q16,
                                     int64_t q_stride, const void *k16, const void *v16,
                                     int64_t kv_stride, int n_seq, int64_t n_q, int64_t n_kv,
                                     int n_heads, int n_kv_heads, int head_dim, float scale,
                                     vlm_err *err) {
    if (ctx->f32_products || !ctx->mma_attention || head_dim % 16 || head_dim > ATT_MAXD ||
        n_kv_heads <= 0 || n_heads % n_kv_heads || n_seq < 1 || n_seq > 65535 || q_stride % 2 ||
        ((uintptr_t)q16 % 4) || ((uintptr_t)out16 % 4) || ((uintptr_t)k16 % 16) ||
        ((uintptr_t)v16 % 16) || kv_stride % 8)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "attention_seqs_h: head_dim %d, strides %lld / %lld, or the mode does "
                           "not allow bf16 attention",
                           head_dim, (long long)q_stride, (long long)kv_stride);
    if (n_q <= 0) return VLM_OK;
    const bool ok = mma_attention(ctx->stream, true, true, out16, q16, q_stride, VLM_DTYPE_BF16,
                                  k16, v16, kv_stride, n_seq, n_q, n_kv, n_heads, n_kv_heads,
                                  head_dim, false, 0, scale, true);
    if (!ok)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "attention_seqs_h: the card refused the kernel's shared memory");
    return launched("attention (bf16 in and out)", err);
}

} // extern "C"
