/* backend/cuda/hopper - Hopper (sm_90a) building blocks shared by the
 * tensor-core kernels of ops.cu: shared-memory matrix descriptors, warpgroup
 * MMA (`wgmma`) fences and groups, mbarriers and the tensor-memory
 * accelerator's tile copies; and gemm90, a matrix product on them that
 * applies the bias and quick-GELU before its output leaves the SM (ops.cu,
 * vlm_cuda_matmul_h_qgelu16: the vision tower's fc1). Device
 * code only where the target is sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); the
 * kernels' bodies are empty elsewhere and the host asks the card
 * (wgmma_built in ops.cu) before launching one. */
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* A shared-memory matrix descriptor: 128-byte swizzle, 1024 bytes between
 * 8-row groups in either direction (only one of the two fields is read for
 * these shapes: K-major B steps over keys by the stride field, N-major B over
 * keys by the one the transposed layout uses; 64 dims are one row either
 * way). */
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)(1024 >> 4) << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}
__device__ __forceinline__ void wg_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_wait0() {
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
/* keeps the compiler from moving reads or writes of accumulators across the
 * asynchronous instructions that own them */
template <int N> __device__ __forceinline__ void wg_hold(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}

/* d (+)= A B for m64n256k16, A and B by descriptor, both K-major.
 * acc 0: d = A B. */
__device__ __forceinline__ void wg_mma_ss_n256(float (&d)[128], uint64_t da, uint64_t db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
        "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, "
        "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, "
        "%55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, "
        "%73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, "
        "%91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, "
        "%107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, "
        "%122, %123, %124, %125, %126, %127}, "
        "%128, %129, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
          "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
          "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
          "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
          "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
          "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
          "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
          "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
          "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
          "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
          "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(acc));
}

__device__ __forceinline__ void mbar_init(uint32_t a, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(a), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t a) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(a)
                 : "memory");
}
/* an arrival on the barrier once this thread's cp.async copies so far land */
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t a) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(a) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t a, int parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
}
/* the barrier expects tx more bytes (the tensor copies issued on it), and
 * this thread arrives */
__device__ __forceinline__ void mbar_arrive_tx(uint32_t a, uint32_t tx) {
    asm volatile(
        "{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(a),
        "r"(tx)
        : "memory");
}
/* a 2D tile of the tensor map's (c0 the inner coordinate) into shared
 * memory at dst, completing on the barrier bar */
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1,
                                            uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}
/* shared memory at src to the tensor map's 2D box at (c0, c1), in this
 * thread's bulk group */
__device__ __forceinline__ void tma_store_2d(const CUtensorMap *map, int c0, int c1, uint32_t src) {
    asm volatile(
        "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
            reinterpret_cast<uint64_t>(map)),
        "r"(c0), "r"(c1), "r"(src)
        : "memory");
}
/* the three epilogue warps of gemm90's first warpgroup (named barrier 1) */
__device__ __forceinline__ void g90_epi_sync() {
    asm volatile("bar.sync 1, 96;\n" ::: "memory");
}
/* gemm90's hand-over of the output tile between the two consumer
 * warpgroups and the three epilogue warps (352 threads): one side waits
 * (bar.sync), the other arrives (bar.arrive) */
__device__ __forceinline__ void g90_bar_sync(int id) {
    asm volatile("bar.sync %0, 352;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void g90_bar_arrive(int id) {
    asm volatile("bar.arrive %0, 352;\n" ::"r"(id) : "memory");
}
#endif

/* --- gemm90: y = epi(x W^T + b) on the tensor-memory accelerator and wgmma --
 * x [M][K] and W [N][K] bf16, row-major (both K-major operands), y [M][N]
 * bf16, b [N] bf16 or none; K a multiple of G90_BK, N of G90_BN. A
 * persistent grid (one block an SM) walks the 128 x 256 tiles of y, n
 * fastest. Each block is three warpgroups:
 * - thread 0 (the producer) copies 64-deep slices of x's 128 rows and W's
 *   256 rows into G90_ST stages of shared memory in the 128-byte swizzled
 *   layout by tensor map, each completing on its stage's full barrier;
 * - the two consumer warpgroups take 64 rows each, one m64n256k16 product
 *   per 16 of depth from the stage by descriptor, and hand the stage back
 *   (its empty barrier, one arrival a warp) once the products of the next
 *   stage are issued and the ones reading it are done. At a tile's end they
 *   write round(acc + b) as bf16 into the output tile in shared memory
 *   (named barrier 2, "full") and go on to the next tile;
 * - warps 1-3 of the first warpgroup (the epilogue warps) apply the
 *   activation to the output tile in place and store it by tensor map (rows
 *   past M left out), then hand the tile back (named barrier 3, "empty")
 *   once the copy has read it: quick-GELU's exponentials and divisions run
 *   beside the next tile's products instead of holding up the tensor cores.
 *   (Named barriers rather than mbarriers for this hand-over: ordinary
 *   stores and loads on both sides, which compute-sanitizer's racecheck
 *   follows through bar.sync / bar.arrive.)
 * The producer runs up to G90_ST stages ahead, into the next tile while
 * the consumers write the last one out. Epilogue G90_BIAS: y = round(acc +
 * b), as cuBLASLt's bias epilogue; G90_BIAS_QGELU: y = round(quick_gelu(
 * round(acc + b))), the two roundings of fc1's bf16 output and the
 * quick-GELU pass over it. */
constexpr int G90_BM = 128, G90_BN = 256, G90_BK = 64, G90_ST = 3;
constexpr int G90_A_BYTES = G90_BM * G90_BK * 2, G90_B_BYTES = G90_BN * G90_BK * 2;
constexpr int G90_STAGE = G90_A_BYTES + G90_B_BYTES;
constexpr int G90_OUT = G90_BM * G90_BN * 2; /* the output tile */
constexpr int G90_SMEM = G90_ST * G90_STAGE + G90_OUT + 2 * G90_ST * 8 + 1024;
constexpr int G90_THREADS = 384;
enum { G90_BIAS = 0, G90_BIAS_QGELU = 1 };

/* quick-GELU with the fast exponential and division (within a few units
 * of float rounding of the exact one; the result is rounded to bf16) */
__device__ __forceinline__ float g90_quick_gelu(float x) {
    return __fdividef(x, 1.0f + __expf(-1.702f * x));
}
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ uint32_t g90_qgelu2(uint32_t w) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(
        g90_quick_gelu(__uint_as_float(w << 16)), g90_quick_gelu(__uint_as_float(w & 0xffff0000u)));
    return *reinterpret_cast<const uint32_t *>(&v);
}
#endif

template <int EPI>
__global__ void __launch_bounds__(G90_THREADS, 1)
    k_gemm90(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb,
             const __grid_constant__ CUtensorMap ty, const uint16_t *bias, int M, int N, int K) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(1024) unsigned char g90_smem[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(g90_smem);
    /* [A, B] x G90_ST, the output tile, full x G90_ST, empty x G90_ST */
    const uint32_t sbase = (raw + 1023u) & ~1023u;
    const uint32_t obuf = sbase + G90_ST * G90_STAGE;
    const uint32_t full = obuf + G90_OUT, empty = full + G90_ST * 8;
    unsigned char *const ogen = g90_smem + (obuf - raw);
    const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
    const int tiles_n = N / G90_BN, n_tiles = (M + G90_BM - 1) / G90_BM * tiles_n;
    const int kbs = K / G90_BK;
    if (threadIdx.x == 0) {
        for (int i = 0; i < G90_ST; i++) {
            mbar_init(full + 8 * i, 1);
            mbar_init(empty + 8 * i, 8); /* lane 0 of each consumer warp */
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n");
        if (tid == 0) { /* the producer */
            int s = 0, ph = 0;
            for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
                const int m0 = t / tiles_n * G90_BM, n0 = t % tiles_n * G90_BN;
                for (int kb = 0; kb < kbs; kb++) {
                    mbar_wait(empty + 8 * s, ph ^ 1);
                    const uint32_t a = sbase + s * G90_STAGE, bar = full + 8 * s;
                    mbar_arrive_tx(bar, G90_STAGE);
                    tma_load_2d(a, &ta, kb * G90_BK, m0, bar);
                    tma_load_2d(a + G90_A_BYTES, &tb, kb * G90_BK, n0, bar);
                    if (++s == G90_ST) {
                        s = 0;
                        ph ^= 1;
                    }
                }
            }
        } else if (tid >= 32) { /* the epilogue warps */
            for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
                const int m0 = t / tiles_n * G90_BM, n0 = t % tiles_n * G90_BN;
                g90_bar_sync(2); /* the consumers wrote the tile */
                if (EPI == G90_BIAS_QGELU) {
                    uint4 *o = reinterpret_cast<uint4 *>(ogen);
#pragma unroll 2
                    for (int i = tid - 32; i < G90_OUT / 16; i += 96) {
                        uint4 v = o[i];
                        v.x = g90_qgelu2(v.x);
                        v.y = g90_qgelu2(v.y);
                        v.z = g90_qgelu2(v.z);
                        v.w = g90_qgelu2(v.w);
                        o[i] = v;
                    }
                }
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                g90_epi_sync();
                if (tid == 32) {
                    /* box (h, q): rows 64 h.., columns 64 q.. of the tile */
#pragma unroll
                    for (int b = 0; b < 8; b++)
                        tma_store_2d(&ty, n0 + 64 * (b & 3), m0 + 64 * (b >> 2), obuf + b * 8192);
                    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
                    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
                }
                /* the tile is free once the copy has read it (none after the
                 * last: no arrival is left pending at exit) */
                if (t + (int)gridDim.x < n_tiles) {
                    g90_epi_sync();
                    g90_bar_arrive(3);
                }
            }
            if (tid == 32) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n");
        const int c = wg - 1, lane = tid & 31, warp = tid >> 5;
        float acc[128];
        int s = 0, ph = 0;
        for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            const int n0 = t % tiles_n * G90_BN; /* the bias's columns */
            int prev = -1;
            for (int kb = 0; kb < kbs; kb++) {
                mbar_wait(full + 8 * s, ph);
                const uint32_t a = sbase + s * G90_STAGE + c * (64 * 128);
                const uint32_t b = sbase + s * G90_STAGE + G90_A_BYTES;
                wg_hold(acc);
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
                    wg_mma_ss_n256(acc, wg_desc(a + kk * 32), wg_desc(b + kk * 32),
                                   kb > 0 || kk > 0);
                wg_commit();
                /* the products of the stage before are done: hand it back */
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
                wg_hold(acc);
                if (prev >= 0 && lane == 0) mbar_arrive(empty + 8 * prev);
                prev = s;
                if (++s == G90_ST) {
                    s = 0;
                    ph ^= 1;
                }
            }
            wg_wait0();
            wg_hold(acc);
            if (lane == 0) mbar_arrive(empty + 8 * prev);
            /* round(acc + b) into the output tile once the epilogue warps
             * are done with the last one. Thread (warp, lane) holds rows 16
             * warp + lane / 4 (+ 8) of its 64, columns 8 j + 2 (lane % 4)
             * (+ 1); they go into this warpgroup's four boxes of 64 rows x
             * 64 columns in the 128-byte swizzled layout that the tensor
             * map stores (conflict-free: a store instruction's 8 rows land
             * in 8 different 16-byte chunks). */
            if (t != (int)blockIdx.x) g90_bar_sync(3);
            const int rl = 16 * warp + (lane >> 2);
            unsigned char *const half = ogen + c * (G90_OUT / 2);
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const int col = n0 + 8 * j + 2 * (lane & 3);
                float b0 = 0.0f, b1 = 0.0f;
                if (bias) {
                    const uint32_t bw = *reinterpret_cast<const uint32_t *>(bias + col);
                    b0 = __uint_as_float(bw << 16);
                    b1 = __uint_as_float(bw & 0xffff0000u);
                }
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int row = rl + 8 * h;
                    *reinterpret_cast<__nv_bfloat162 *>(half + (j >> 3) * 8192 + row * 128 +
                                                        (((j & 7) ^ (row & 7)) << 4) +
                                                        4 * (lane & 3)) =
                        __floats2bfloat162_rn(acc[4 * j + 2 * h] + b0, acc[4 * j + 2 * h + 1] + b1);
                }
            }
            g90_bar_arrive(2);
        }
    }
#endif
}

/* --- gemm90's host side ----------------------------------------------------- */
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

/* The driver's tensor-map encoder, looked up once through the runtime (no
 * link against libcuda); NULL where the driver has none. */
static inline PFN_cuTensorMapEncodeTiled_v12000 g90_encoder() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *f = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                             &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            (void)cudaGetLastError();
            f = NULL;
        }
        return (PFN_cuTensorMapEncodeTiled_v12000)f;
    }();
    return fn;
}

/* A map of a row-major [rows][k] bf16 matrix in boxes of box_rows rows x
 * G90_BK columns, 128-byte swizzled (rows past the end read as zeros and
 * are not written). */
static inline bool g90_map(CUtensorMap *m, const void *p, int64_t rows, int64_t k, int box_rows) {
    PFN_cuTensorMapEncodeTiled_v12000 enc = g90_encoder();
    if (!enc) return false;
    const cuuint64_t dims[2] = {(cuuint64_t)k, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)k * 2};
    const cuuint32_t box[2] = {G90_BK, (cuuint32_t)box_rows}, el[2] = {1, 1};
    return enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(p), dims, strides, box,
               el, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
               CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* Whether gemm90 takes the shapes and pointers (the tensor maps' rules: 16-
 * byte aligned bases and row strides; whole tiles of N and K). */
static inline bool g90_takes(const void *y, const void *x, const void *w, const void *b, int64_t M,
                             int64_t N, int64_t K) {
    return M > 0 && M <= INT32_MAX && N > 0 && N % G90_BN == 0 && N <= INT32_MAX && K > 0 &&
           K % G90_BK == 0 && K <= INT32_MAX && (uintptr_t)x % 16 == 0 && (uintptr_t)w % 16 == 0 &&
           (uintptr_t)y % 16 == 0 && (uintptr_t)b % 4 == 0;
}

/* y = epi(x W^T + b) on st with one block per SM (sms of them at most).
 * cudaErrorNotSupported: the shapes, no encoder, or the card refused the
 * shared memory (nothing launched); else the launch's own error. */
template <int EPI>
static inline cudaError_t g90_launch(cudaStream_t st, int sms, uint16_t *y, const uint16_t *x,
                                     const uint16_t *w, const uint16_t *b, int64_t M, int64_t N,
                                     int64_t K) {
    if (!g90_takes(y, x, w, b, M, N, K)) return cudaErrorNotSupported;
    CUtensorMap ta, tb, ty;
    if (!g90_map(&ta, x, M, K, G90_BM) || !g90_map(&tb, w, N, K, G90_BN) ||
        !g90_map(&ty, y, M, N, 64))
        return cudaErrorNotSupported;
    static const cudaError_t opted =
        cudaFuncSetAttribute(k_gemm90<EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, G90_SMEM);
    if (opted != cudaSuccess) {
        (void)cudaGetLastError();
        return cudaErrorNotSupported;
    }
    const int64_t tiles = (M + G90_BM - 1) / G90_BM * (N / G90_BN);
    const unsigned grid = (unsigned)(tiles < sms ? tiles : sms);
    k_gemm90<EPI><<<grid, G90_THREADS, G90_SMEM, st>>>(ta, tb, ty, b, (int)M, (int)N, (int)K);
    return cudaGetLastError();
}
