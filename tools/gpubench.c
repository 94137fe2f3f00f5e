/* gpubench - speed of the CUDA backend's hot ops on the GPU machine, with
 * the bound they are measured against.
 *
 *   build/gpubench [--quick]
 *
 * Prints one line per case: time per call (median of repeats, CUDA events),
 * bytes of weights read, the achieved bandwidth and its fraction of the
 * measured device-to-device copy bandwidth (a copy reads and writes, so the
 * copy bandwidth is 2 * bytes / time). Shapes are Phi-3.5-vision's: decoder
 * d = 3072, ff = 8192, 32 heads of 96, vocab 32064; CLIP width 1024. The
 * decode estimate sums the GEMVs of one token over 32 layers plus lm_head;
 * the decode sweep runs them back to back on 32 layers of their own weights. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#ifndef VLM_HAVE_CUDA
int main(void) {
    printf("gpubench: this build has no CUDA backend\n");
    return 0;
}
#else
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "backend/cuda/cuda.h"

static vlm_cuda_ctx *ctx;

typedef vlm_status (*bench_fn)(void *arg, vlm_err *err);

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    int32_t *out;
    const float *x;
    int64_t n;
} am_arg;

static vlm_status do_argmax(void *arg, vlm_err *err) {
    const am_arg *a = arg;
    return vlm_cuda_argmax(ctx, a->out, a->x, a->n, err);
}

/* Median milliseconds of reps calls of fn (after 3 warm-up calls). */
static double time_ms(bench_fn fn, void *arg, int reps) {
    vlm_err err = {0};
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float t[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < 3; i++)
        if (fn(arg, &err) != VLM_OK) {
            fprintf(stderr, "gpubench: %s\n", err.msg);
            exit(1);
        }
    for (int i = 0; i < reps; i++) {
        cudaEventRecord(a, (cudaStream_t)vlm_cuda_ctx_stream(ctx));
        fn(arg, &err);
        cudaEventRecord(b, (cudaStream_t)vlm_cuda_ctx_stream(ctx));
        cudaEventSynchronize(b);
        cudaEventElapsedTime(&t[i], a, b);
    }
    if (vlm_cuda_sync(ctx, "bench", &err) != VLM_OK) {
        fprintf(stderr, "gpubench: %s\n", err.msg);
        exit(1);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    qsort(t, (size_t)reps, sizeof t[0], cmp_f);
    return t[reps / 2];
}

static void *dev(size_t bytes) {
    void *p = vlm_dev_alloc(bytes, VLM_MEM_SCRATCH);
    if (!p) {
        fprintf(stderr, "gpubench: no device memory for %zu bytes\n", bytes);
        exit(1);
    }
    cudaMemset(p, 0, bytes); /* zero weights: the timing does not depend on values */
    return p;
}

typedef struct {
    void *dst, *src;
    size_t bytes;
} copy_arg;
static vlm_status do_copy(void *a, vlm_err *err) {
    copy_arg *c = a;
    cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice,
                    (cudaStream_t)vlm_cuda_ctx_stream(ctx));
    return VLM_OK;
}

typedef struct {
    float *y, *x;
    int64_t n, in, out;
    vlm_cuda_weight w;
} mm_arg;
static vlm_status do_mm(void *a, vlm_err *err) {
    mm_arg *m = a;
    vlm_cuda_weight nob = {VLM_DTYPE_F32, NULL};
    return vlm_cuda_matmul(ctx, m->y, m->x, m->n, m->in, m->out, m->w, nob, err);
}

typedef struct {
    float *out, *q;
    vlm_cuda_weight k, v;
    int64_t n_q, n_kv;
    int nh, nkv, hd;
    bool causal;
    int n_seq; /* sequences in one launch (the vision tower's crops) */
    bool mma;  /* bf16 inputs: the tensor-core kernel where it applies */
} att_arg;
static vlm_status do_att(void *a, vlm_err *err) {
    att_arg *t = a;
    return vlm_cuda_attention_seqs(ctx, t->out, t->q, (int64_t)t->nh * t->hd, t->k, t->v,
                                   (int64_t)t->nkv * t->hd, t->n_seq, t->n_q, t->n_kv, t->nh,
                                   t->nkv, t->hd, t->causal, t->causal ? t->n_kv - t->n_q : 0,
                                   1.0f / sqrtf((float)t->hd), t->mma, err);
}

static size_t wbytes(vlm_dtype t, int64_t n) {
    uint64_t b = 0;
    vlm_dtype_nbytes(t, (uint64_t)n, &b);
    return (size_t)b;
}

/* One token's GEMVs as decoding queues them: every layer's own weights
 * (32 x qkv, o, gate_up, down, then lm_head; 7.44 GB in bf16), launched back
 * to back between two events, so that neither launch gaps of a lone call nor
 * L2 hits on weights read again (a lone 3072 x 3072 matrix is 19 MB, the L2
 * 50 MB) bend the figure. Median of 5 tokens; skipped when the card cannot
 * hold the weights. */
typedef struct {
    vlm_dtype t;
    float *x, *y;
    void *w[32 * 4 + 1];
} sweep_arg;
static const int64_t SWEEP_SHAPE[5][2] = {
    {3072, 9216}, {3072, 3072}, {3072, 16384}, {8192, 3072}, {3072, 32064}};
static vlm_status do_sweep(void *a, vlm_err *err) {
    sweep_arg *s = a;
    vlm_cuda_weight nob = {VLM_DTYPE_F32, NULL};
    for (int i = 0; i < 32 * 4 + 1; i++) {
        const int64_t *sh = SWEEP_SHAPE[i == 32 * 4 ? 4 : i % 4];
        vlm_status st = vlm_cuda_matmul(ctx, s->y, s->x, 1, sh[0], sh[1],
                                        (vlm_cuda_weight){s->t, s->w[i]}, nob, err);
        if (st != VLM_OK) return st;
    }
    return VLM_OK;
}
static void decode_sweep(vlm_dtype t, float *x, float *y, double bw) {
    sweep_arg s = {.t = t, .x = x, .y = y};
    double bytes = 0;
    int got = 0;
    for (int i = 0; i < 32 * 4 + 1; i++, got++) {
        const int64_t *sh = SWEEP_SHAPE[i == 32 * 4 ? 4 : i % 4];
        size_t wb = wbytes(t, sh[0] * sh[1]);
        s.w[i] = vlm_dev_alloc(wb, VLM_MEM_WEIGHTS);
        if (!s.w[i]) break;
        cudaMemset(s.w[i], 0, wb);
        bytes += (double)wb;
    }
    if (got == 32 * 4 + 1) {
        double ms = time_ms(do_sweep, &s, 5);
        char name[64];
        snprintf(name, sizeof name, "decode sweep %s (all layers)", vlm_dtype_get(t)->name);
        printf("%-40s %9.3f ms  %8.1f tok/s  %5.1f%% of bound (%.2f GB)\n", name, ms, 1e3 / ms,
               100.0 * (bytes / (ms * 1e-3) / 1e9) / bw, bytes / 1e9);
    } else {
        printf("decode sweep %s: no device memory for all layers, skipped\n",
               vlm_dtype_get(t)->name);
    }
    for (int i = 0; i < got; i++) vlm_dev_free(s.w[i]);
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int reps = quick ? 10 : 30;
    vlm_err err = {0};
    vlm_gpu_info info;
    if (vlm_gpu_query(&info, &err) != VLM_OK) {
        fprintf(stderr, "gpubench: %s\n", err.msg);
        return 1;
    }
    if (vlm_cuda_ctx_create(&ctx, 64u << 20, &err) != VLM_OK) {
        fprintf(stderr, "gpubench: %s\n", err.msg);
        return 1;
    }
    printf("device: %s (sm_%d%d, %d SMs)\n", info.name, info.cc_major, info.cc_minor, info.n_sms);

    copy_arg c = {dev(1u << 30), dev(1u << 30), 1u << 30};
    double ms = time_ms(do_copy, &c, reps);
    double bw = 2.0 * (double)c.bytes / (ms * 1e-3) / 1e9; /* GB/s, read + write */
    printf("%-40s %9.3f ms  %8.1f GB/s (the bound below)\n", "d2d copy 1 GiB", ms, bw);
    vlm_dev_free(c.dst);
    vlm_dev_free(c.src);

    const vlm_dtype types[] = {VLM_DTYPE_BF16, VLM_DTYPE_Q8_0, VLM_DTYPE_Q4_0};
    const struct {
        const char *name;
        int64_t in, out, per_layer;
    } shapes[] = {{"qkv 3072->9216", 3072, 9216, 1},
                  {"o 3072->3072", 3072, 3072, 1},
                  {"gate_up 3072->16384", 3072, 16384, 1},
                  {"down 8192->3072", 8192, 3072, 1},
                  {"lm_head 3072->32064", 3072, 32064, 0}};
    float *x = dev(800 * 8192 * 4), *y = dev(800 * 32064 * 4);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        double tok_ms = 0, tok_bytes = 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            size_t wb = wbytes(types[ti], shapes[si].in * shapes[si].out);
            mm_arg m = {y, x, 1, shapes[si].in, shapes[si].out, {types[ti], dev(wb)}};
            ms = time_ms(do_mm, &m, reps);
            double gbs = (double)wb / (ms * 1e-3) / 1e9;
            char name[96];
            snprintf(name, sizeof name, "gemv %s %s", vlm_dtype_get(types[ti])->name,
                     shapes[si].name);
            printf("%-40s %9.3f ms  %8.1f GB/s  %5.1f%% of bound\n", name, ms, gbs,
                   100.0 * gbs / bw);
            int mult = shapes[si].per_layer ? 32 : 1;
            tok_ms += ms * mult;
            tok_bytes += (double)wb * mult;
            if (types[ti] == VLM_DTYPE_BF16 && shapes[si].per_layer && !quick) {
                mm_arg p = m;
                p.n = 800;
                ms = time_ms(do_mm, &p, reps);
                snprintf(name, sizeof name, "gemm bf16 800 tok %s", shapes[si].name);
                printf("%-40s %9.3f ms  %8.1f TFLOP/s\n", name, ms,
                       2.0 * 800 * shapes[si].in * shapes[si].out / (ms * 1e-3) / 1e12);
            }
            vlm_dev_free((void *)m.w.data);
        }
        printf("%-40s %9.3f ms  %8.1f tok/s (bound %.1f tok/s at %.2f GB)\n",
               types[ti] == VLM_DTYPE_BF16   ? "decode GEMVs/token bf16"
               : types[ti] == VLM_DTYPE_Q8_0 ? "decode GEMVs/token q8_0"
                                             : "decode GEMVs/token q4_0",
               tok_ms, 1e3 / tok_ms, bw * 1e9 / tok_bytes, tok_bytes / 1e9);
        if (!quick) decode_sweep(types[ti], x, y, bw);
    }

    /* attention: decode (split-K) at 1000 and 4000 cached tokens, prefill
     * of 800, the vision tower's 577 tokens x 16 heads of 64 (one crop, and
     * 17 crops in one launch); "mma": the tensor-core kernel (bf16 inputs) */
    int64_t kv_max = 4096, q_floats = 17 * 577 * 16 * 64; /* >= 800 x 32 x 96 */
    float *q = dev((size_t)q_floats * 4), *o = dev((size_t)q_floats * 4);
    void *kc = dev((size_t)kv_max * 32 * 96 * 2), *vc = dev((size_t)kv_max * 32 * 96 * 2);
    const struct {
        const char *name;
        int64_t n_q, n_kv;
        int nh, hd;
        bool causal;
        int n_seq;
        bool mma;
    } at[] = {{"attn decode 1000 ctx bf16", 1, 1000, 32, 96, true, 1, false},
              {"attn decode 4000 ctx bf16", 1, 4000, 32, 96, true, 1, false},
              {"attn prefill 800 bf16", 800, 800, 32, 96, true, 1, false},
              {"attn prefill 800 bf16 mma", 800, 800, 32, 96, true, 1, true},
              {"attn vision 577 x 16h x 64", 577, 577, 16, 64, false, 1, false},
              {"attn vision 577 x 16h x 64 mma", 577, 577, 16, 64, false, 1, true},
              {"attn vision 17 crops one launch", 577, 577, 16, 64, false, 17, false},
              {"attn vision 17 crops one launch mma", 577, 577, 16, 64, false, 17, true}};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        att_arg a = {o,
                     q,
                     {VLM_DTYPE_BF16, kc},
                     {VLM_DTYPE_BF16, vc},
                     at[i].n_q,
                     at[i].n_kv,
                     at[i].nh,
                     at[i].nh,
                     at[i].hd,
                     at[i].causal,
                     at[i].n_seq,
                     at[i].mma};
        ms = time_ms(do_att, &a, reps);
        printf("%-40s %9.3f ms\n", at[i].name, ms);
    }
    vlm_dev_free(q), vlm_dev_free(o), vlm_dev_free(kc), vlm_dev_free(vc);
    /* the greedy pick after lm_head: one row of the vocab (whatever y
     * holds: the whole row is swept either way) */
    am_arg am = {dev(sizeof(int32_t)), y, 32064};
    ms = time_ms(do_argmax, &am, reps);
    printf("%-40s %9.3f ms\n", "argmax 32064 (greedy pick)", ms);
    vlm_dev_free(am.out);
    vlm_dev_free(x), vlm_dev_free(y);
    vlm_cuda_ctx_destroy(ctx);
    vlm_gpu_mem_stats st;
    vlm_gpu_mem_stats_get(&st);
    printf("device memory left accounted after free: %llu bytes\n",
           (unsigned long long)st.total_current);
    return st.total_current == 0 ? 0 : 1;
}
#endif
