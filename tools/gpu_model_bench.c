/* gpu_model_bench - the whole Phi-3.5-vision model on the GPU, from a
 * checkpoint folder (a full-size synthetic one from mkcheckpoint), every part
 * placed there as vlm_placement {L, head, vision} says:
 *
 *   gpu_model_bench DIR [decode_tokens=64] [prefill_tokens=800] [parts=dpv]
 *
 * Measures, after one warm-up each (median of 3 where it says so):
 *   - decode: a 16-token prompt, then decode_tokens greedy tokens through
 *     session_generate (logits copied to the host, host sampler); tokens/s
 *     and its fraction of the bound (tokens/s x decoder + lm_head weight
 *     bytes / the measured device-to-device copy bandwidth); at the end
 *     again with a model created under VLM_CUDA_GRAPHS=0 (plain launches
 *     per token instead of the decode step's CUDA graph);
 *   - prefill: prefill_tokens tokens in one chunk into a fresh session (ms,
 *     median of 3);
 *   - the vision tower + 2x2 merge + projector for 1 + 4 and 1 + 16 crops,
 *     all crops in one group (ms, median of 3).
 * parts picks what runs (d decode, p prefill, v vision: a profiler run of
 * one part). Prints one line per figure and a JSON line last. A benchmark, not a test:
 * synthetic weights, so the generated ids mean nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef VLM_HAVE_CUDA
int main(void) {
    printf("gpu_model_bench: this build has no CUDA backend\n");
    return 0;
}
#else
#include <cuda_runtime_api.h>

#include "backend/cuda/cuda.h"
#include "base/alloc.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/registry.h"
#include "runtime/load_weights.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median3(double *t) {
    qsort(t, 3, sizeof *t, cmp_d);
    return t[1];
}

static int fail(const char *what, const vlm_err *err) {
    fprintf(stderr, "gpu_model_bench: %s: %s\n", what, err->msg);
    return 1;
}

/* Device-to-device copy bandwidth, GB/s (read + write counted), median of 5
 * copies of 1 GiB: the bound decoding is measured against (as gpubench). */
static double copy_bandwidth(void) {
    size_t bytes = 1u << 30;
    void *a = vlm_dev_alloc(bytes, VLM_MEM_SCRATCH), *b = vlm_dev_alloc(bytes, VLM_MEM_SCRATCH);
    double bw = 0;
    if (a && b) {
        double t[5];
        cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); /* warm-up */
        for (int i = 0; i < 5; i++) {
            cudaDeviceSynchronize();
            double t0 = now_ms();
            cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
            cudaDeviceSynchronize();
            t[i] = now_ms() - t0;
        }
        qsort(t, 5, sizeof *t, cmp_d);
        bw = 2.0 * (double)bytes / (t[2] * 1e-3) / 1e9;
    }
    vlm_dev_free(a);
    vlm_dev_free(b);
    return bw;
}

static vlm_status open_session(arch_model *m, int64_t chunk, session **s, vlm_err *err) {
    session_options o;
    session_options_init(&o);
    o.max_ctx = 1024;
    o.chunk = chunk;
    o.kv_dtype = VLM_DTYPE_BF16;
    return session_create(m, &o, s, err);
}

/* Greedy decode of n_dec tokens after a 16-token prompt, after one
 * warm-up run: tokens/s of the second. */
static vlm_status decode_rate(arch_model *m, sampler *smp, const int32_t *ids, int32_t *out,
                              int n_dec, double *tok_s, vlm_err *err) {
    double dec_ms = 0;
    for (int rep = 0; rep < 2; rep++) { /* the first is the warm-up */
        session *s = NULL;
        vlm_status st = open_session(m, 16, &s, err);
        if (st != VLM_OK) return st;
        if ((st = session_append(s, ids, 16, NULL, 0, NULL, err)) != VLM_OK) {
            session_free(s);
            return st;
        }
        int n_out = 0;
        session_stop why;
        gen_options g = {n_dec, NULL, 0, NULL, NULL};
        double t0 = now_ms();
        st = session_generate(s, smp, &g, out, &n_out, &why, err);
        dec_ms = now_ms() - t0;
        session_free(s);
        if (st != VLM_OK) return st;
        if (n_out != n_dec)
            return vlm_err_set(err, VLM_ERR_INTERNAL, "%d of %d tokens generated", n_out, n_dec);
    }
    *tok_s = n_dec / (dec_ms * 1e-3);
    return VLM_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr,
                "usage: gpu_model_bench DIR [decode_tokens=64] [prefill_tokens=800] [parts=dpv]\n");
        return 2;
    }
    const char *dir = argv[1];
    int n_dec = argc > 2 ? atoi(argv[2]) : 64;
    int n_pre = argc > 3 ? atoi(argv[3]) : 800;
    const char *parts = argc > 4 ? argv[4] : "dpv";
    bool do_dec = strchr(parts, 'd') != NULL, do_pre = strchr(parts, 'p') != NULL,
         do_vis = strchr(parts, 'v') != NULL;
    if (n_dec < 1 || n_dec > 512 || n_pre < 1 || n_pre > 1000) {
        fprintf(stderr, "gpu_model_bench: decode 1..512, prefill 1..1000 tokens\n");
        return 2;
    }
    vlm_err err = {0};
    vlm_gpu_info gi;
    if (vlm_gpu_query(&gi, &err) != VLM_OK) return fail("device", &err);
    printf("device: %s (sm_%d%d, %d SMs)\n", gi.name, gi.cc_major, gi.cc_minor, gi.n_sms);
    double bw = copy_bandwidth();
    printf("%-36s %10.1f GB/s\n", "d2d copy (the bound)", bw);

    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    vlm_config vc;
    if (vlm_config_load(path, &vc, &err) != VLM_OK) return fail(path, &err);
    vlm_tensor_set *ts = NULL;
    if (vlm_tensor_set_open(dir, &ts, &err) != VLM_OK) return fail(dir, &err);
    cpu_pool *pool = NULL;
    if (cpu_pool_create(0, &pool, &err) != VLM_OK) return fail("threads", &err);
    load_weights lw;
    load_weights_init(&lw, ts, VLM_PREC_NATIVE, pool);
    vlm_weight_source src = load_weights_source(&lw);

    /* Every part on the GPU. */
    arch_model *m = NULL;
    int L = vc.num_hidden_layers;
    vlm_placement place = {L, true, true};
    double t0 = now_ms();
    if (arch_model_create(&vc, dir, &src, pool, &place, &m, &err) != VLM_OK)
        return fail("create", &err);
    double load_ms = now_ms() - t0;
    vlm_gpu_mem_stats ms;
    vlm_gpu_mem_stats_get(&ms);
    printf("%-36s %10.0f ms  (%.2f GB of weights on the GPU)\n", "load + upload", load_ms,
           (double)ms.current[VLM_MEM_WEIGHTS] / 1e9);

    /* Bytes one decode step reads: each layer's qkv, o, gate_up, down
     * (bf16) and lm_head, from the model's own sizes (d, kv_dim, vocab). */
    const vlm_model_info *mi = &m->info;
    double d = mi->hidden, ff = vc.intermediate_size;
    double step_bytes = 2.0 * (L * (d * (d + 2.0 * (double)mi->kv_dim) + d * d + 3.0 * ff * d) +
                               (double)mi->vocab * d);

    int32_t *ids = VLM_NEW_ARRAY(int32_t, 1024, VLM_MEM_OTHER);
    int32_t *out = VLM_NEW_ARRAY(int32_t, 512, VLM_MEM_OTHER);
    if (!ids || !out) {
        fprintf(stderr, "gpu_model_bench: out of host memory\n");
        return 1;
    }
    for (int i = 0; i < 1024; i++) ids[i] = 1 + (i * 7919) % 32000;

    /* --- decode --- */
    sampler_params sp;
    sampler_params_init(&sp);
    sampler *smp = NULL;
    if (sampler_create(&sp, mi->vocab, &smp, &err) != VLM_OK) return fail("sampler", &err);
    double tok_s = 0;
    if (do_dec && decode_rate(m, smp, ids, out, n_dec, &tok_s, &err) != VLM_OK)
        return fail("decode", &err);
    double pct = 100.0 * tok_s * step_bytes / 1e9 / bw;
    printf("%-36s %10.1f tok/s  %5.1f%% of bound (%.2f GB per token, bound %.1f tok/s)\n",
           "decode (16-token prompt, greedy)", tok_s, pct, step_bytes / 1e9, bw * 1e9 / step_bytes);

    /* --- prefill --- */
    double pre[3] = {0, 0, 0}, pre_ms;
    for (int rep = 0; rep < 4 && do_pre; rep++) {
        session *s = NULL;
        if (open_session(m, n_pre, &s, &err) != VLM_OK) return fail("session", &err);
        t0 = now_ms();
        if (session_append(s, ids, n_pre, NULL, 0, NULL, &err) != VLM_OK)
            return fail("prefill", &err);
        if (rep) pre[rep - 1] = now_ms() - t0;
        session_free(s);
    }
    pre_ms = median3(pre);
    printf("%-29s %4d tok %10.2f ms\n", "prefill (one chunk)", n_pre, pre_ms);

    /* --- vision: 1 + 4 and 1 + 16 crops --- */
    double vis_ms[2] = {0, 0};
    const int grids[2] = {2, 4};
    int S = mi->image_size;
    for (int gidx = 0; gidx < 2 && mi->has_vision && do_vis; gidx++) {
        int g = grids[gidx], nc = 1 + g * g;
        size_t npx = (size_t)nc * 3 * (size_t)S * (size_t)S;
        float *px = VLM_NEW_ARRAY(float, npx, VLM_MEM_IMAGE);
        int nt = m->arch->image_tokens(m->impl, g, g);
        float *rows = VLM_NEW_ARRAY(float, (size_t)nt *(size_t)mi->hidden, VLM_MEM_IMAGE);
        if (!px || !rows) {
            fprintf(stderr, "gpu_model_bench: out of host memory for %d crops\n", nc);
            return 1;
        }
        uint32_t x = 2463534242u;
        for (size_t i = 0; i < npx; i++) { /* normalized pixels in about [-2, 2] */
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            px[i] = (float)(x >> 8) / (float)(1u << 24) * 4.0f - 2.0f;
        }
        vlm_image_input in = {px, nc, g, g};
        double t[3];
        for (int rep = 0; rep < 4; rep++) {
            t0 = now_ms();
            if (m->arch->encode_image(m->impl, &in, nc, rows, &err) != VLM_OK)
                return fail("vision", &err);
            if (rep) t[rep - 1] = now_ms() - t0;
        }
        vis_ms[gidx] = median3(t);
        char name[64];
        snprintf(name, sizeof name, "vision tower + glue, 1+%d crops", g * g);
        printf("%-36s %10.2f ms  (%d image rows)\n", name, vis_ms[gidx], nt);
        vlm_free(px);
        vlm_free(rows);
    }

    /* --- decode again with plain launches (VLM_CUDA_GRAPHS=0 is read when
     * the model is created: a second model, after the first is gone) --- */
    arch_model_free(m);
    m = NULL;
    double tok_plain = 0;
    if (do_dec) {
        setenv("VLM_CUDA_GRAPHS", "0", 1);
        if (arch_model_create(&vc, dir, &src, pool, &place, &m, &err) != VLM_OK)
            return fail("create (plain launches)", &err);
        unsetenv("VLM_CUDA_GRAPHS");
        if (decode_rate(m, smp, ids, out, n_dec, &tok_plain, &err) != VLM_OK)
            return fail("decode (plain launches)", &err);
        printf("%-36s %10.1f tok/s  %5.1f%% of bound (CUDA graph: %.2fx)\n",
               "decode, plain launches (no graph)", tok_plain,
               100.0 * tok_plain * step_bytes / 1e9 / bw, tok_plain > 0 ? tok_s / tok_plain : 0);
    }

    printf("{\"device\": \"%s\", \"copy_gbs\": %.1f, \"decode_tok_s\": %.2f, "
           "\"decode_pct_of_bound\": %.1f, \"decode_plain_tok_s\": %.2f, \"step_gb\": %.3f, "
           "\"prefill_tokens\": %d, "
           "\"prefill_ms\": %.2f, \"vision_1p4_ms\": %.2f, \"vision_1p16_ms\": %.2f}\n",
           gi.name, bw, tok_s, pct, tok_plain, step_bytes / 1e9, n_pre, pre_ms, vis_ms[0],
           vis_ms[1]);

    sampler_free(smp);
    vlm_free(ids);
    vlm_free(out);
    arch_model_free(m);
    load_weights_free(&lw);
    vlm_tensor_set_close(ts);
    vlm_config_free(&vc);
    cpu_pool_free(pool);
    vlm_gpu_mem_stats_get(&ms);
    printf("device memory left accounted after unload: %llu bytes\n",
           (unsigned long long)ms.total_current);
    return ms.total_current == 0 ? 0 : 1;
}
#endif
