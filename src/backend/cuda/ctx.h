/* backend/cuda/ctx - the context's insides, shared by gpu_cuda.c and
 * ops.cu. */
#ifndef VLM_BACKEND_CUDA_CTX_H
#define VLM_BACKEND_CUDA_CTX_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/cuda.h"

/* decode attention counters: (query, head) pairs of one launch at most */
#define VLM_CUDA_ATT_COUNTERS 4096

struct vlm_cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws; /* device: cuBLAS's workspace, from the accounted allocator */
    size_t blas_ws_bytes;
    cublasLtHandle_t lt; /* for products with a bias epilogue; NULL: add_bias instead */
    /* device: one arrival counter per (query, head) warp of the decode
     * attention, zero between its launches (the last split of a warp to
     * finish merges the splits and resets it); NULL: a combine launch */
    int *att_cnt;
    void *workspace; /* device, workspace_bytes */
    /* VLM_CUDA_TIMING=1: events marking points of the queued work (the
     * decode step; the vision tower's stages), for measuring; NULL
     * otherwise */
    cudaEvent_t mark[VLM_CUDA_MARKS];
    /* fences (events without timing) for waiting on part of the queued
     * work, created on first use; NULL before */
    cudaEvent_t fence[VLM_CUDA_FENCES];
    size_t workspace_bytes;
    bool f32_products;  /* BF16/F16 weights: widen to f32 and SGEMM (VLM_CUDA_F32_GEMM=1) */
    bool mma_attention; /* tensor-core attention allowed (VLM_CUDA_MMA_ATTN unset or not 0) */
};

#endif
