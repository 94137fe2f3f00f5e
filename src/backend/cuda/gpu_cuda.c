/* backend/cuda/gpu_cuda - the GPU interface (backend/gpu.h) of a CUDA
 * build: accounted device memory, the device query and the per-model
 * context. */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/ctx.h"
#include "base/log.h"

/* --- accounted device memory ---------------------------------------------
 * cudaMalloc gives no room for a header, so each live allocation has a host
 * record (pointer, size, category) in a list; frees search it. A model holds
 * a few hundred device buffers, so the linear search costs nothing next to
 * cudaFree itself. */

typedef struct dev_rec {
    void *p;
    size_t size;
    vlm_mem_cat cat;
    struct dev_rec *next;
} dev_rec;

static pthread_mutex_t dev_mu = PTHREAD_MUTEX_INITIALIZER;
static dev_rec *dev_live;
static vlm_gpu_mem_stats dev_stats;
static uint64_t dev_fail_at; /* 0: off; else the allocation number to fail */
static bool dev_fail_sticky;
static bool dev_env_read;

/* VLM_FAIL_DEVICE_ALLOC_AT=N or N+ (read once, at the first allocation;
 * dev_mu held). */
static void dev_read_env(void) {
    if (dev_env_read) return;
    dev_env_read = true;
    const char *s = getenv("VLM_FAIL_DEVICE_ALLOC_AT");
    if (!s || !*s) return;
    char *end = NULL;
    unsigned long long n = strtoull(s, &end, 10);
    if (end == s || n == 0) return;
    dev_fail_at = dev_stats.n_allocs + (uint64_t)n;
    dev_fail_sticky = end && *end == '+';
}

void *vlm_dev_alloc(size_t size, vlm_mem_cat cat) {
    if ((int)cat < 0 || cat >= VLM_MEM_CAT_COUNT) cat = VLM_MEM_OTHER;
    if (size == 0) size = 1;
    pthread_mutex_lock(&dev_mu);
    dev_read_env();
    uint64_t nth = ++dev_stats.n_allocs;
    bool inject = dev_fail_at && (nth == dev_fail_at || (dev_fail_sticky && nth > dev_fail_at));
    pthread_mutex_unlock(&dev_mu);
    if (inject) {
        pthread_mutex_lock(&dev_mu);
        dev_stats.n_failed++;
        pthread_mutex_unlock(&dev_mu);
        return NULL;
    }
    dev_rec *r = vlm_alloc(sizeof *r, VLM_MEM_OTHER);
    void *p = NULL;
    cudaError_t e = r ? cudaMalloc(&p, size) : cudaErrorMemoryAllocation;
    if (e != cudaSuccess || !p) {
        if (r) (void)cudaGetLastError(); /* clear the sticky-free error state */
        vlm_free(r);
        pthread_mutex_lock(&dev_mu);
        dev_stats.n_failed++;
        pthread_mutex_unlock(&dev_mu);
        return NULL;
    }
    r->p = p;
    r->size = size;
    r->cat = cat;
    pthread_mutex_lock(&dev_mu);
    r->next = dev_live;
    dev_live = r;
    dev_stats.current[cat] += size;
    if (dev_stats.current[cat] > dev_stats.peak[cat]) dev_stats.peak[cat] = dev_stats.current[cat];
    dev_stats.total_current += size;
    if (dev_stats.total_current > dev_stats.total_peak)
        dev_stats.total_peak = dev_stats.total_current;
    pthread_mutex_unlock(&dev_mu);
    return p;
}

void vlm_dev_free(void *p) {
    if (!p) return;
    pthread_mutex_lock(&dev_mu);
    dev_rec **pp = &dev_live;
    while (*pp && (*pp)->p != p) pp = &(*pp)->next;
    dev_rec *r = *pp;
    if (r) {
        *pp = r->next;
        dev_stats.current[r->cat] -= r->size;
        dev_stats.total_current -= r->size;
    }
    pthread_mutex_unlock(&dev_mu);
    if (!r) {
        vlm_log(VLM_LOG_ERROR, "vlm_dev_free: %p is not a live device allocation", p);
        return;
    }
    cudaFree(p);
    vlm_free(r);
}

size_t vlm_dev_alloc_size(const void *p) {
    size_t n = 0;
    pthread_mutex_lock(&dev_mu);
    for (dev_rec *r = dev_live; r; r = r->next)
        if (r->p == p) {
            n = r->size;
            break;
        }
    pthread_mutex_unlock(&dev_mu);
    return n;
}

void vlm_dev_alloc_fail_at(uint64_t n, bool sticky) {
    pthread_mutex_lock(&dev_mu);
    dev_env_read = true; /* an explicit setting wins over the environment */
    dev_fail_at = n ? dev_stats.n_allocs + n : 0;
    dev_fail_sticky = sticky;
    pthread_mutex_unlock(&dev_mu);
}

uint64_t vlm_dev_alloc_count(void) {
    pthread_mutex_lock(&dev_mu);
    uint64_t n = dev_stats.n_allocs;
    pthread_mutex_unlock(&dev_mu);
    return n;
}

bool vlm_gpu_built(void) {
    return true;
}

void vlm_gpu_mem_stats_get(vlm_gpu_mem_stats *out) {
    pthread_mutex_lock(&dev_mu);
    *out = dev_stats;
    pthread_mutex_unlock(&dev_mu);
}

void vlm_gpu_mem_reset_peak(void) {
    pthread_mutex_lock(&dev_mu);
    for (int c = 0; c < VLM_MEM_CAT_COUNT; c++) dev_stats.peak[c] = dev_stats.current[c];
    dev_stats.total_peak = dev_stats.total_current;
    pthread_mutex_unlock(&dev_mu);
}

/* --- the device ---------------------------------------------------------- */

/* VLM_GPU_DEVICE (an ordinal among the visible devices), 0 by default. */
static int chosen_device(void) {
    const char *s = getenv("VLM_GPU_DEVICE");
    if (!s || !*s) return 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return (end != s && v >= 0 && v < 1024) ? (int)v : -1;
}

vlm_status vlm_gpu_query(vlm_gpu_info *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "no GPU: %s (%s)", cudaGetErrorString(e),
                           cudaGetErrorName(e));
    }
    if (n <= 0) return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "no GPU: no CUDA device is visible");
    int dev = chosen_device();
    if (dev < 0 || dev >= n)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "no GPU: VLM_GPU_DEVICE=%s, but %d CUDA device(s) are visible",
                           getenv("VLM_GPU_DEVICE"), n);
    struct cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, dev);
    if (e == cudaSuccess) e = cudaSetDevice(dev);
    size_t free_b = 0, total_b = 0;
    if (e == cudaSuccess) e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "no GPU: device %d: %s", dev,
                           cudaGetErrorString(e));
    }
    out->device = dev;
    /* prop.name is 256 bytes; ours keeps the first 127 */
    size_t nl = strnlen(prop.name, sizeof prop.name);
    if (nl >= sizeof out->name) nl = sizeof out->name - 1;
    memcpy(out->name, prop.name, nl);
    out->name[nl] = '\0';
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->n_sms = prop.multiProcessorCount;
    out->total_bytes = total_b;
    out->free_bytes = free_b;
    return VLM_OK;
}

/* --- the context ----------------------------------------------------------- */

vlm_status vlm_cuda_ctx_create(vlm_cuda_ctx **out, size_t workspace_bytes, vlm_err *err) {
    *out = NULL;
    vlm_gpu_info info;
    vlm_status st = vlm_gpu_query(&info, err);
    if (st != VLM_OK) return st;
    vlm_cuda_ctx *c = vlm_calloc(1, sizeof *c, VLM_MEM_OTHER);
    if (!c) return vlm_err_set(err, VLM_ERR_NOMEM, "CUDA context: out of host memory");
    c->device = info.device;
    cudaError_t e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        vlm_free(c);
        (void)cudaGetLastError();
        return vlm_err_set(err, e == cudaErrorMemoryAllocation ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                           "CUDA context: stream: %s", cudaGetErrorString(e));
    }
    cublasStatus_t be = cublasCreate(&c->blas);
    if (be != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        vlm_cuda_ctx_destroy(c);
        return vlm_err_set(err, be == CUBLAS_STATUS_ALLOC_FAILED ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                           "CUDA context: cuBLAS handle: %s", cublasGetStatusString(be));
    }
    cublasSetStream(c->blas, c->stream);
    /* f32 products stay f32: no TF32 behind our back (the CPU path is the
     * reference). */
    cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    /* cuBLAS's workspace comes from us (category SCRATCH) so that it is
     * counted and its failure is ours to report: 32 MiB on Hopper, 4 MiB
     * before (NVIDIA's recommendations). The decode attention's arrival
     * counters (VLM_CUDA_ATT_COUNTERS ints, zero between launches) sit
     * after it in the same allocation. */
    size_t blas_bytes = info.cc_major >= 9 ? (32u << 20) : (4u << 20);
    c->blas_ws = vlm_dev_alloc(blas_bytes + VLM_CUDA_ATT_COUNTERS * sizeof(int), VLM_MEM_SCRATCH);
    if (!c->blas_ws) {
        vlm_cuda_ctx_destroy(c);
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "CUDA context: cuBLAS workspace of %zu bytes: out of device memory",
                           blas_bytes);
    }
    c->blas_ws_bytes = blas_bytes;
    c->att_cnt = (int *)((char *)c->blas_ws + blas_bytes);
    if (cudaMemset(c->att_cnt, 0, VLM_CUDA_ATT_COUNTERS * sizeof(int)) != cudaSuccess) {
        (void)cudaGetLastError();
        c->att_cnt = NULL; /* the attention combines in a launch of its own */
    }
    be = cublasSetWorkspace(c->blas, c->blas_ws, blas_bytes);
    if (be != CUBLAS_STATUS_SUCCESS) {
        vlm_cuda_ctx_destroy(c);
        return vlm_err_set(err, VLM_ERR_DEVICE, "CUDA context: cuBLAS workspace: %s",
                           cublasGetStatusString(be));
    }
    /* cuBLASLt (the bias epilogue of matmul_h) is an extra: without a
     * handle those products add their bias in a pass of their own. */
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) c->lt = NULL;
    const char *f32 = getenv("VLM_CUDA_F32_GEMM");
    c->f32_products = f32 && *f32 && strcmp(f32, "0") != 0;
    const char *mma = getenv("VLM_CUDA_MMA_ATTN");
    c->mma_attention = !(mma && !strcmp(mma, "0"));
    const char *tm = getenv("VLM_CUDA_TIMING");
    if (tm && tm[0] == '1') {
        bool ok = true;
        for (int i = 0; i < VLM_CUDA_MARKS && ok; i++)
            ok = cudaEventCreate(&c->mark[i]) == cudaSuccess;
        if (!ok) { /* no timing, nothing else lost */
            (void)cudaGetLastError();
            for (int i = 0; i < VLM_CUDA_MARKS; i++) {
                if (c->mark[i]) cudaEventDestroy(c->mark[i]);
                c->mark[i] = NULL;
            }
        }
    }
    c->workspace_bytes = workspace_bytes;
    if (workspace_bytes) {
        c->workspace = vlm_dev_alloc(workspace_bytes, VLM_MEM_SCRATCH);
        if (!c->workspace) {
            vlm_cuda_ctx_destroy(c);
            return vlm_err_set(err, VLM_ERR_NOMEM,
                               "CUDA context: workspace of %zu bytes: out of device memory",
                               workspace_bytes);
        }
    }
    *out = c;
    return VLM_OK;
}

void vlm_cuda_ctx_destroy(vlm_cuda_ctx *c) {
    if (!c) return;
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->blas) cublasDestroy(c->blas); /* before its workspace goes */
    if (c->lt) cublasLtDestroy(c->lt);
    vlm_dev_free(c->blas_ws);
    vlm_dev_free(c->workspace);
    for (int i = 0; i < VLM_CUDA_MARKS; i++)
        if (c->mark[i]) cudaEventDestroy(c->mark[i]);
    for (int i = 0; i < VLM_CUDA_FENCES; i++)
        if (c->fence[i]) cudaEventDestroy(c->fence[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
    vlm_free(c);
}

bool vlm_cuda_timing(const vlm_cuda_ctx *c) {
    return c->mark[0] != NULL;
}

void vlm_cuda_mark(vlm_cuda_ctx *c, int i) {
    if (c->mark[0] && i >= 0 && i < VLM_CUDA_MARKS) cudaEventRecord(c->mark[i], c->stream);
}

double vlm_cuda_span_ms(vlm_cuda_ctx *c, int i, int j) {
    float ms = 0.0f;
    if (!c->mark[0] || i < 0 || j < 0 || i >= VLM_CUDA_MARKS || j >= VLM_CUDA_MARKS ||
        cudaEventElapsedTime(&ms, c->mark[i], c->mark[j]) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0.0;
    }
    return ms;
}

double vlm_cuda_marks_ms(vlm_cuda_ctx *c) {
    return vlm_cuda_span_ms(c, 0, 1);
}

vlm_status vlm_cuda_fence_record(vlm_cuda_ctx *c, int i, vlm_err *err) {
    if (i < 0 || i >= VLM_CUDA_FENCES)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "CUDA fence %d: not in 0..%d", i,
                           VLM_CUDA_FENCES - 1);
    cudaError_t e = cudaSuccess;
    if (!c->fence[i]) e = cudaEventCreateWithFlags(&c->fence[i], cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(c->fence[i], c->stream);
    if (e == cudaSuccess) return VLM_OK;
    (void)cudaGetLastError();
    return vlm_err_set(err, e == cudaErrorMemoryAllocation ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                       "CUDA fence %d: %s", i, cudaGetErrorString(e));
}

vlm_status vlm_cuda_fence_wait(vlm_cuda_ctx *c, int i, const char *what, vlm_err *err) {
    if (i < 0 || i >= VLM_CUDA_FENCES || !c->fence[i])
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: CUDA fence %d was never recorded",
                           what ? what : "GPU", i);
    cudaError_t e = cudaEventSynchronize(c->fence[i]);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e == cudaSuccess) return VLM_OK;
    return vlm_err_set(err, e == cudaErrorMemoryAllocation ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                       "%s: CUDA: %s (%s)", what ? what : "GPU", cudaGetErrorString(e),
                       cudaGetErrorName(e));
}

void *vlm_cuda_ctx_stream(vlm_cuda_ctx *c) {
    return (void *)c->stream;
}

vlm_status vlm_cuda_sync(vlm_cuda_ctx *c, const char *what, vlm_err *err) {
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e == cudaSuccess) return VLM_OK;
    return vlm_err_set(err, e == cudaErrorMemoryAllocation ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                       "%s: CUDA: %s (%s)", what ? what : "GPU", cudaGetErrorString(e),
                       cudaGetErrorName(e));
}

/* A copy queued on the context's stream; with wait, done when this returns. */
static vlm_status copy(vlm_cuda_ctx *c, void *dst, const void *src, size_t bytes,
                       enum cudaMemcpyKind kind, bool wait, const char *what, vlm_err *err) {
    if (bytes == 0) return VLM_OK;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, c->stream);
    if (e == cudaSuccess && wait) e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) return VLM_OK;
    (void)cudaGetLastError();
    return vlm_err_set(err, VLM_ERR_DEVICE, "%s: copy of %zu bytes %s the GPU: %s",
                       what ? what : "GPU", bytes, kind == cudaMemcpyHostToDevice ? "to" : "from",
                       cudaGetErrorString(e));
}

vlm_status vlm_cuda_upload(vlm_cuda_ctx *c, void *dst_dev, const void *src_host, size_t bytes,
                           const char *what, vlm_err *err) {
    return copy(c, dst_dev, src_host, bytes, cudaMemcpyHostToDevice, true, what, err);
}

vlm_status vlm_cuda_download(vlm_cuda_ctx *c, void *dst_host, const void *src_dev, size_t bytes,
                             const char *what, vlm_err *err) {
    return copy(c, dst_host, src_dev, bytes, cudaMemcpyDeviceToHost, true, what, err);
}

/* --- graphs, pinned staging, queued copies -------------------------------- */

static pthread_mutex_t graph_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t graph_count, graph_fail_at;

void vlm_cuda_graph_fail_at(uint64_t n) {
    pthread_mutex_lock(&graph_mu);
    graph_fail_at = n ? graph_count + n : 0;
    pthread_mutex_unlock(&graph_mu);
}

uint64_t vlm_cuda_graph_count(void) {
    pthread_mutex_lock(&graph_mu);
    uint64_t n = graph_count;
    pthread_mutex_unlock(&graph_mu);
    return n;
}

static vlm_status cuda_fail(cudaError_t e, const char *what, vlm_err *err) {
    (void)cudaGetLastError();
    return vlm_err_set(err, e == cudaErrorMemoryAllocation ? VLM_ERR_NOMEM : VLM_ERR_DEVICE,
                       "%s: CUDA: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

vlm_status vlm_cuda_capture_begin(vlm_cuda_ctx *c, vlm_err *err) {
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    return e == cudaSuccess ? VLM_OK : cuda_fail(e, "graph capture", err);
}

vlm_status vlm_cuda_capture_end(vlm_cuda_ctx *c, vlm_cuda_graph **out, vlm_err *err) {
    *out = NULL;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (e != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        return cuda_fail(e, "graph capture", err);
    }
    pthread_mutex_lock(&graph_mu);
    uint64_t nth = ++graph_count;
    bool inject = graph_fail_at && nth == graph_fail_at;
    pthread_mutex_unlock(&graph_mu);
    cudaGraphExec_t exec = NULL;
    e = inject ? cudaErrorMemoryAllocation : cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph); /* the instance keeps what it needs */
    if (e != cudaSuccess) return cuda_fail(e, "graph instantiation", err);
    *out = (vlm_cuda_graph *)exec;
    return VLM_OK;
}

vlm_status vlm_cuda_graph_launch(vlm_cuda_ctx *c, vlm_cuda_graph *g, vlm_err *err) {
    cudaError_t e = cudaGraphLaunch((cudaGraphExec_t)g, c->stream);
    return e == cudaSuccess ? VLM_OK : cuda_fail(e, "graph launch", err);
}

void vlm_cuda_graph_destroy(vlm_cuda_graph *g) {
    if (g) cudaGraphExecDestroy((cudaGraphExec_t)g);
}

/* --- pinned host memory ------------------------------------------------------ */

void *vlm_cuda_host_alloc(size_t size, vlm_mem_cat cat) {
    void *p = NULL;
    if (size == 0) size = 1;
    if (cudaHostAlloc(&p, size, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    vlm_alloc_note_external(cat, (int64_t)size);
    return p;
}

void vlm_cuda_host_free(void *p, size_t size, vlm_mem_cat cat) {
    if (!p) return;
    cudaFreeHost(p);
    vlm_alloc_note_external(cat, -(int64_t)(size ? size : 1));
}

vlm_status vlm_cuda_upload_async(vlm_cuda_ctx *c, void *dst_dev, const void *src_host, size_t bytes,
                                 const char *what, vlm_err *err) {
    return copy(c, dst_dev, src_host, bytes, cudaMemcpyHostToDevice, false, what, err);
}

vlm_status vlm_cuda_download_async(vlm_cuda_ctx *c, void *dst_host, const void *src_dev,
                                   size_t bytes, const char *what, vlm_err *err) {
    return copy(c, dst_host, src_dev, bytes, cudaMemcpyDeviceToHost, false, what, err);
}
