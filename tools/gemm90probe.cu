/* gemm90probe - checks and times hopper.cuh's gemm90 against cuBLAS on
 * random data: y = quick_gelu(x W^T + b) as fc1 and its quick-GELU pass
 * compute it (cuBLAS product with bf16 output and bias, then the pass).
 * usage: gemm90probe [M N K [reps]]   (default: the vision tower's fc1 at
 * 17 crops, 9809 4096 1024). Prints how many values differ from the
 * two-pass result, the relative L2 distance from a float64 product on
 * every 97th row, and the median times of gemm90 (with the activation and
 * with the bias alone), cuBLAS and the pass. Exits 1 when a value is NaN
 * (unwritten), differs by more than 2%, or the distance exceeds 1e-2; 2
 * without a compute capability 9.0 card (gemm90 needs sm_90a). */
#include "backend/cuda/hopper.cuh"

#include <cublas_v2.h>

#include <algorithm>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));            \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* the unfused path's epilogue: bias, round, quick-GELU, round */
__global__ void k_ref_epi(uint16_t *y, const float *acc, const uint16_t *b, int64_t M, int N) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * N;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float v = __bfloat162float(
            __float2bfloat16_rn(acc[i] + __uint_as_float((uint32_t)b[i % N] << 16)));
        y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(g90_quick_gelu(v)));
    }
}
/* the quick-GELU pass alone over bf16 (the timing baseline's second kernel) */
__global__ void k_qgelu16(uint32_t *x, int64_t n2) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n2;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t w = x[i];
        const float a = g90_quick_gelu(__uint_as_float(w << 16));
        const float c = g90_quick_gelu(__uint_as_float(w & 0xffff0000u));
        x[i] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(a)) |
               ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(c)) << 16);
    }
}

int main(int argc, char **argv) {
    int64_t M = argc > 3 ? atoll(argv[1]) : 9809, N = argc > 3 ? atoll(argv[2]) : 4096,
            K = argc > 3 ? atoll(argv[3]) : 1024;
    const int reps = argc > 4 ? atoi(argv[4]) : 30;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs; M %lld N %lld K %lld\n", prop.name, prop.multiProcessorCount, (long long)M,
           (long long)N, (long long)K);
    if (prop.major != 9 || prop.minor != 0) {
        fprintf(stderr, "gemm90probe: gemm90 needs a compute capability 9.0 card (this is %d.%d)\n",
                prop.major, prop.minor);
        return 2;
    }
    if (M < 1 || N < 256 || N % 256 || K < 64 || K % 64 || reps < 1) {
        fprintf(stderr, "gemm90probe: M >= 1, N a multiple of 256, K of 64, reps >= 1\n");
        return 2;
    }
    std::vector<uint16_t> hx(M * K), hw(N * K), hb(N);
    uint64_t r = 12345;
    auto rnd = [&] {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        return (float)((r >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
    };
    for (auto &v : hx) v = to_bf16(2.0f * rnd());
    for (auto &v : hw) v = to_bf16(0.05f * rnd());
    for (auto &v : hb) v = to_bf16(0.5f * rnd());
    uint16_t *x, *w, *b, *y, *y0;
    float *acc;
    CK(cudaMalloc(&x, M * K * 2));
    CK(cudaMalloc(&w, N * K * 2));
    CK(cudaMalloc(&b, N * 2));
    CK(cudaMalloc(&y, M * N * 2));
    CK(cudaMalloc(&y0, M * N * 2));
    CK(cudaMalloc(&acc, M * N * 4));
    CK(cudaMemcpy(x, hx.data(), M * K * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w, hw.data(), N * K * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b, hb.data(), N * 2, cudaMemcpyHostToDevice));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
    const float one = 1.0f, zero = 0.0f;
    auto cublas = [&](void *out, cudaDataType t) {
        if (cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, CUDA_R_16BF,
                         (int)K, x, CUDA_R_16BF, (int)K, &zero, out, t, (int)N, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx failed\n");
            exit(1);
        }
    };
    /* the reference: f32 product, then the unfused epilogue */
    cublas(acc, CUDA_R_32F);
    k_ref_epi<<<2048, 256>>>(y0, acc, b, M, (int)N);
    CK(cudaGetLastError());
    CK(cudaMemset(y, 0xff, M * N * 2)); /* NaN: every element must be written */
    const int sms = prop.multiProcessorCount;
    CK(g90_launch<G90_BIAS_QGELU>(0, sms, y, x, w, b, M, N, K));
    CK(cudaDeviceSynchronize());
    std::vector<uint16_t> hy(M * N), hy0(M * N);
    CK(cudaMemcpy(hy.data(), y, M * N * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hy0.data(), y0, M * N * 2, cudaMemcpyDeviceToHost));
    int64_t differ = 0, nan = 0, far = 0;
    for (int64_t i = 0; i < M * N; i++) {
        const float a = from_bf16(hy[i]), c = from_bf16(hy0[i]);
        if (a != a) nan++;
        if (hy[i] != hy0[i]) {
            differ++;
            if (fabsf(a - c) > 0.02f * fabsf(c) + 1e-3f) far++;
        }
    }
    /* float64 on every 97th row */
    double num = 0, den = 0;
    for (int64_t m = 0; m < M; m += 97)
        for (int64_t n = 0; n < N; n++) {
            double s = from_bf16(hb[n]);
            for (int64_t k = 0; k < K; k++)
                s += (double)from_bf16(hx[m * K + k]) * from_bf16(hw[n * K + k]);
            const double g = s / (1.0 + exp(-1.702 * s));
            const double d = from_bf16(hy[m * N + n]) - g;
            num += d * d;
            den += g * g;
        }
    printf("check: %lld of %lld differ from cuBLAS + pass (%lld by more than 2%%), %lld NaN; "
           "rel L2 vs float64 %.3e\n",
           (long long)differ, (long long)(M * N), (long long)far, (long long)nan, sqrt(num / den));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    auto timeit = [&](auto f) {
        std::vector<float> t;
        for (int i = 0; i < reps + 3; i++) {
            CK(cudaEventRecord(e0));
            f();
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (i >= 3) t.push_back(ms * 1000.0f);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    };
    const double gf = 2.0 * M * N * K / 1e9;
    const float tf = timeit([&] { CK(g90_launch<G90_BIAS_QGELU>(0, sms, y, x, w, b, M, N, K)); });
    const float tb = timeit([&] { CK(g90_launch<G90_BIAS>(0, sms, y, x, w, b, M, N, K)); });
    const float tc = timeit([&] { cublas(y0, CUDA_R_16BF); });
    const float tg = timeit([&] {
        k_qgelu16<<<4 * sms, 512>>>((uint32_t *)y0, M * N / 2);
        CK(cudaGetLastError());
    });
    printf("%-34s %9s %9s\n", "median of reps", "us", "TFLOP/s");
    printf("%-34s %9.1f %9.0f\n", "gemm90 bias + quick-GELU", tf, gf / tf * 1e3);
    printf("%-34s %9.1f %9.0f\n", "gemm90 bias", tb, gf / tb * 1e3);
    printf("%-34s %9.1f %9.0f\n", "cuBLAS (bf16 out, no bias)", tc, gf / tc * 1e3);
    printf("%-34s %9.1f\n", "quick-GELU pass", tg);
    printf("%-34s %9.1f\n", "cuBLAS + pass", tc + tg);
    return nan || far || !(sqrt(num / den) <= 1e-2);
}
