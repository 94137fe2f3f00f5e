// bench/gpu_context - what the CUDA context takes on the device, for
// runtime/planner.h's PLAN_GPU_CONTEXT_BYTES and PLAN_GPU_CUBLAS_BYTES.
// Stage "ctx": the context alone (cudaFree(0)); "kernel": and one kernel
// launched (its module loaded); "cublas": and a cuBLAS + cuBLASLt handle with
// a 32 MiB workspace and one bf16 GEMM. Prints one JSON line with
// cudaMemGetInfo, then holds everything for `hold` seconds so that
// bench/gpu_context.sh can read nvidia-smi meanwhile.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__global__ void touch(float *p) {
    p[threadIdx.x] = (float)threadIdx.x;
}

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                               \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

int main(int argc, char **argv) {
    const char *stage = argc > 1 ? argv[1] : "ctx";
    int hold = argc > 2 ? atoi(argv[2]) : 3;
    CK(cudaFree(0));
    float *buf = NULL;
    if (strcmp(stage, "ctx") != 0) {
        CK(cudaMalloc(&buf, 256 * sizeof(float)));
        touch<<<1, 256>>>(buf);
        CK(cudaDeviceSynchronize());
    }
    cublasHandle_t h = NULL;
    cublasLtHandle_t lt = NULL;
    void *ws = NULL;
    __nv_bfloat16 *a = NULL;
    float *c = NULL;
    if (strcmp(stage, "cublas") == 0) {
        const int n = 1024;
        size_t wsb = (size_t)32 << 20;
        if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS ||
            cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS)
            return 1;
        CK(cudaMalloc(&ws, wsb));
        cublasSetWorkspace(h, ws, wsb);
        CK(cudaMalloc(&a, (size_t)n * n * sizeof *a));
        CK(cudaMalloc(&c, (size_t)n * n * sizeof *c));
        CK(cudaMemset(a, 0, (size_t)n * n * sizeof *a));
        float one = 1, zero = 0;
        if (cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, a,
                         CUDA_R_16BF, n, &zero, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
            return 1;
        CK(cudaDeviceSynchronize());
    }
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    // what this program allocated itself (to subtract): 1 KiB, or + 32 MiB
    // workspace + 2 + 4 MiB of GEMM operands
    size_t own = strcmp(stage, "cublas") == 0 ? ((size_t)38 << 20) + 1024
                 : strcmp(stage, "ctx")       ? 1024
                                              : 0;
    printf("{\"stage\": \"%s\", \"device\": \"%s\", \"pid\": %d, \"total_bytes\": %zu, "
           "\"free_bytes\": %zu, \"own_bytes\": %zu}\n",
           stage, prop.name, (int)getpid(), total_b, free_b, own);
    fflush(stdout);
    sleep(hold);
    if (h) cublasDestroy(h);
    if (lt) cublasLtDestroy(lt);
    cudaFree(ws);
    cudaFree(a);
    cudaFree(c);
    cudaFree(buf);
    return 0;
}
