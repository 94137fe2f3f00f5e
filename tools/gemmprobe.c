/* gemmprobe - how far cuBLASLt's first heuristic pick (the algorithm the
 * CUDA backend's lt_matmul_bias runs) is from the fastest of the
 * algorithms the heuristic offers, for the vision tower's and prefill's
 * products at Phi-3.5-vision's sizes.
 *
 *   build/gemmprobe
 *
 * Each product is the backend's: bf16 weights and activations, f32
 * accumulation, the BIAS epilogue; q|k|v and fc1 write bf16 with a bf16
 * bias, the products that add into the f32 residual (out_proj, fc2,
 * prefill's o and down) write f32 with beta 1, and the tower's out_proj and
 * fc2 on its bf16 residual write bf16 with beta 1. The operands are zeros
 * (the timing of real data is a few percent slower: the cards draw more
 * power). Every offered algorithm (up to 16) runs 3 times, then 20 times
 * between CUDA events, in two rounds; the better round counts. One line a
 * product: the first pick's time and TFLOP/s, the fastest, and every time
 * in the heuristic's order. A measurement, not a test (docs/perf.md). */
#include <stdio.h>

#ifndef VLM_HAVE_CUDA
int main(void) {
    printf("gemmprobe: this build has no CUDA backend\n");
    return 0;
}
#else
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>

#define MAX_ALGOS 16
#define WS_BYTES  ((size_t)32 << 20) /* the backend's cuBLAS workspace */

static cublasLtHandle_t lt;
static void *ws;

typedef struct {
    const char *name;
    int n, in, out; /* rows, input width, output width */
    bool y16;       /* bf16 output and bias (else f32) */
    bool acc;       /* added into y (beta 1) */
} shape;

/* Milliseconds a call of algorithm a, best of two rounds of 20; a
 * negative value where the library refused it. */
static float time_algo(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la,
                       cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                       const cublasLtMatmulAlgo_t *a, const void *A, const void *B, void *Y,
                       float beta, cudaEvent_t e0, cudaEvent_t e1) {
    const float alpha = 1.0f;
    float best = -1.0f;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3; i++)
            if (cublasLtMatmul(lt, op, &alpha, A, la, B, lb, &beta, Y, lc, Y, lc, a, ws, WS_BYTES,
                               0) != CUBLAS_STATUS_SUCCESS)
                return -1.0f;
        cudaEventRecord(e0, 0);
        for (int i = 0; i < 20; i++)
            cublasLtMatmul(lt, op, &alpha, A, la, B, lb, &beta, Y, lc, Y, lc, a, ws, WS_BYTES, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, e0, e1);
        if (best < 0.0f || ms / 20 < best) best = ms / 20;
    }
    return best;
}

static bool probe(const shape *s) {
    void *A = NULL, *B = NULL, *Y = NULL, *bias = NULL;
    const size_t ysz = s->y16 ? 2 : 4;
    bool ok = cudaMalloc(&A, (size_t)s->in * s->out * 2) == cudaSuccess &&
              cudaMalloc(&B, (size_t)s->in * s->n * 2) == cudaSuccess &&
              cudaMalloc(&Y, (size_t)s->out * s->n * ysz) == cudaSuccess &&
              cudaMalloc(&bias, (size_t)s->out * ysz) == cudaSuccess;
    if (ok) {
        cudaMemset(A, 0, (size_t)s->in * s->out * 2);
        cudaMemset(B, 0, (size_t)s->in * s->n * 2);
        cudaMemset(Y, 0, (size_t)s->out * s->n * ysz);
        cudaMemset(bias, 0, (size_t)s->out * ysz);
    }
    const cudaDataType_t yt = s->y16 ? CUDA_R_16BF : CUDA_R_32F;
    const int32_t bt = (int32_t)yt;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const uint64_t wsb = WS_BYTES;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    ok = ok && cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == 0 &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == 0 &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) == 0 &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == 0 &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                        sizeof bias) == 0 &&
         cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt) ==
             0 &&
         cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s->in, s->out, s->in) == 0 &&
         cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s->in, s->n, s->in) == 0 &&
         cublasLtMatrixLayoutCreate(&lc, yt, s->out, s->n, s->out) == 0 &&
         cublasLtMatmulPreferenceCreate(&pref) == 0 &&
         cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb,
                                              sizeof wsb) == 0;
    cublasLtMatmulHeuristicResult_t res[MAX_ALGOS];
    int found = 0;
    ok =
        ok &&
        cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, MAX_ALGOS, res, &found) == 0 &&
        found > 0;
    if (ok) {
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        float t[MAX_ALGOS];
        int best = -1;
        for (int i = 0; i < found; i++) {
            t[i] = time_algo(op, la, lb, lc, &res[i].algo, A, B, Y, s->acc ? 1.0f : 0.0f, e0, e1);
            if (t[i] > 0.0f && (best < 0 || t[i] < t[best])) best = i;
        }
        const double gflop = 2.0 * s->n * s->in * s->out / 1e9;
        printf("%-15s %5d x %5d -> %5d: %2d algorithms; first %7.1f us %4.0f TFLOP/s; fastest "
               "#%d %7.1f us %4.0f TFLOP/s; all (us):",
               s->name, s->n, s->in, s->out, found, t[0] * 1e3, gflop / t[0], best,
               best >= 0 ? t[best] * 1e3 : 0.0, best >= 0 ? gflop / t[best] : 0.0);
        for (int i = 0; i < found; i++) printf(" %.1f", t[i] * 1e3);
        printf("\n");
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    } else {
        printf("%-15s: no algorithm (or out of device memory)\n", s->name);
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    cudaFree(A);
    cudaFree(B);
    cudaFree(Y);
    cudaFree(bias);
    return ok;
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        fprintf(stderr, "gemmprobe: no CUDA device\n");
        return 1;
    }
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS || cudaMalloc(&ws, WS_BYTES) != cudaSuccess) {
        fprintf(stderr, "gemmprobe: no cuBLASLt handle or workspace\n");
        return 1;
    }
    const int T17 = 17 * 577, T5 = 5 * 577; /* tower rows at 1 + 16 and 1 + 4 crops */
    const shape shapes[] = {
        {"tower q|k|v", T17, 1024, 3072, true, false},
        {"tower out_proj", T17, 1024, 1024, false, true},
        {"tower out_proj16", T17, 1024, 1024, true, true},
        {"tower fc1", T17, 1024, 4096, true, false},
        {"tower fc2", T17, 4096, 1024, false, true},
        {"tower fc2 16", T17, 4096, 1024, true, true},
        {"tower5 fc1", T5, 1024, 4096, true, false},
        {"tower5 fc2", T5, 4096, 1024, false, true},
        {"prefill qkv", 800, 3072, 9216, false, true},
        {"prefill o", 800, 3072, 3072, false, true},
        {"prefill gate_up", 800, 3072, 16384, false, true},
        {"prefill down", 800, 8192, 3072, false, true},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) bad += !probe(&shapes[i]);
    cudaFree(ws);
    cublasLtDestroy(lt);
    return bad ? 1 : 0;
}
#endif
