/* gemm90probe - checks and times hopper.cuh's gemm90 on random data against
 * the path it replaces, the backend's own ops: matmul_h_out16 (cuBLASLt, the
 * bias in its epilogue, bf16 out) followed by quick_gelu_bf16 (the pass).
 * usage: gemm90probe [M N K [reps]]   (default: the vision tower's fc1 at
 * 17 crops, 9809 4096 1024). Prints how many values differ from the
 * two-pass result, the relative L2 distance from a float64 product on
 * every 97th row, and the median times of gemm90 (with the activation and
 * with the bias alone), matmul_h_out16 and the pass. Exits 1 when a value
 * is NaN (unwritten), differs by more than 2%, or the distance exceeds
 * 1e-2; 2 without a compute capability 9.0 card (gemm90 needs sm_90a) or
 * when the backend fails. */
#include "backend/cuda/hopper.cuh"

#include "backend/cuda/cuda.h"
#include "backend/cuda/ctx.h"

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
#define OK(x)                                                                                      \
    do {                                                                                           \
        if ((x) != VLM_OK) {                                                                       \
            fprintf(stderr, "gemm90probe: %s\n", err.msg);                                         \
            exit(2);                                                                               \
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
    vlm_err err = {};
    vlm_cuda_ctx *ctx = NULL;
    OK(vlm_cuda_ctx_create(&ctx, (size_t)8 << 20, &err));
    uint16_t *x = (uint16_t *)vlm_dev_alloc(M * K * 2, VLM_MEM_ACTIVATIONS),
             *w = (uint16_t *)vlm_dev_alloc(N * K * 2, VLM_MEM_WEIGHTS),
             *b = (uint16_t *)vlm_dev_alloc(N * 2, VLM_MEM_WEIGHTS),
             *y = (uint16_t *)vlm_dev_alloc(M * N * 2, VLM_MEM_ACTIVATIONS),
             *y0 = (uint16_t *)vlm_dev_alloc(M * N * 2, VLM_MEM_ACTIVATIONS);
    if (!x || !w || !b || !y || !y0) {
        fprintf(stderr, "gemm90probe: out of GPU memory\n");
        return 2;
    }
    OK(vlm_cuda_upload(ctx, x, hx.data(), M * K * 2, "x", &err));
    OK(vlm_cuda_upload(ctx, w, hw.data(), N * K * 2, "W", &err));
    OK(vlm_cuda_upload(ctx, b, hb.data(), N * 2, "b", &err));
    const vlm_cuda_weight cw = {VLM_DTYPE_BF16, w}, cb = {VLM_DTYPE_BF16, b};
    cudaStream_t st = ctx->stream;
    const int sms = prop.multiProcessorCount;
    /* the two passes gemm90 replaces, and gemm90 into NaN-poisoned rows
     * (every value must be written) */
    auto two_pass = [&] {
        OK(vlm_cuda_matmul_h_out16(ctx, y0, x, M, K, N, cw, cb, &err));
        OK(vlm_cuda_quick_gelu_bf16(ctx, y0, M * N, &err));
    };
    two_pass();
    CK(cudaMemsetAsync(y, 0xff, M * N * 2, st));
    CK(g90_launch<G90_BIAS_QGELU>(st, sms, y, x, w, b, M, N, K));
    OK(vlm_cuda_sync(ctx, "gemm90probe", &err));
    std::vector<uint16_t> hy(M * N), hy0(M * N);
    OK(vlm_cuda_download(ctx, hy.data(), y, M * N * 2, "y", &err));
    OK(vlm_cuda_download(ctx, hy0.data(), y0, M * N * 2, "y0", &err));
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
    printf("check: %lld of %lld differ from the two passes (%lld by more than 2%%), %lld NaN; "
           "rel L2 vs float64 %.3e\n",
           (long long)differ, (long long)(M * N), (long long)far, (long long)nan, sqrt(num / den));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    auto timeit = [&](auto f) {
        std::vector<float> t;
        for (int i = 0; i < reps + 3; i++) {
            CK(cudaEventRecord(e0, st));
            f();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (i >= 3) t.push_back(ms * 1000.0f);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    };
    const double gf = 2.0 * M * N * K / 1e9;
    const float tf = timeit([&] { CK(g90_launch<G90_BIAS_QGELU>(st, sms, y, x, w, b, M, N, K)); });
    const float tb = timeit([&] { CK(g90_launch<G90_BIAS>(st, sms, y, x, w, b, M, N, K)); });
    const float tc =
        timeit([&] { OK(vlm_cuda_matmul_h_out16(ctx, y0, x, M, K, N, cw, cb, &err)); });
    const float tg = timeit([&] { OK(vlm_cuda_quick_gelu_bf16(ctx, y0, M * N, &err)); });
    printf("%-34s %9s %9s\n", "median of reps", "us", "TFLOP/s");
    printf("%-34s %9.1f %9.0f\n", "gemm90 bias + quick-GELU", tf, gf / tf * 1e3);
    printf("%-34s %9.1f %9.0f\n", "gemm90 bias", tb, gf / tb * 1e3);
    printf("%-34s %9.1f %9.0f\n", "matmul_h_out16 (cuBLASLt, bias)", tc, gf / tc * 1e3);
    printf("%-34s %9.1f\n", "quick_gelu_bf16 (the pass)", tg);
    printf("%-34s %9.1f\n", "the two passes", tc + tg);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    vlm_dev_free(x), vlm_dev_free(w), vlm_dev_free(b), vlm_dev_free(y), vlm_dev_free(y0);
    vlm_cuda_ctx_destroy(ctx);
    return nan || far || !(sqrt(num / den) <= 1e-2);
}
