/* runtime/sampler - see sampler.h. */
#include "runtime/sampler.h"

#include "backend/cpu/ops.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "base/alloc.h"

void sampler_params_init(sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void sampler_seed(sampler *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

double sampler_uniform(sampler *s) {
    uint64_t *r = s->rng;
    uint64_t out = rotl(r[1] * 5, 7) * 9, t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = rotl(r[3], 45);
    return (double)(out >> 11) * (1.0 / 9007199254740992.0); /* 53 bits */
}

vlm_status sampler_create(const sampler_params *p, int vocab, sampler **out, vlm_err *err) {
    *out = NULL;
    if (vocab <= 0) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "sampler: vocab %d", vocab);
    if (!(p->temperature >= 0.0f) || p->top_k < 0 || !(p->top_p > 0.0f) || !(p->min_p >= 0.0f) ||
        p->min_p > 1.0f || !(p->repetition_penalty > 0.0f))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "sampler: temperature %g, top_k %d, top_p %g, min_p %g, "
                           "repetition_penalty %g (need temperature >= 0, top_k >= 0, "
                           "0 < top_p, 0 <= min_p <= 1, penalty > 0)",
                           (double)p->temperature, p->top_k, (double)p->top_p, (double)p->min_p,
                           (double)p->repetition_penalty);
    sampler *s = vlm_calloc(1, sizeof *s, VLM_MEM_SCRATCH);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "sampler: out of memory");
    s->p = *p;
    s->vocab = vocab;
    s->prob = VLM_NEW_ARRAY(float, (size_t)vocab, VLM_MEM_SCRATCH);
    s->order = VLM_NEW_ARRAY(int32_t, (size_t)vocab, VLM_MEM_SCRATCH);
    s->seen = VLM_NEW_ARRAY(uint32_t, (size_t)vocab, VLM_MEM_SCRATCH);
    if (!s->prob || !s->order || !s->seen) {
        sampler_free(s);
        return vlm_err_set(err, VLM_ERR_NOMEM, "sampler: out of memory for a vocab of %d", vocab);
    }
    sampler_seed(s, p->seed);
    *out = s;
    return VLM_OK;
}

void sampler_free(sampler *s) {
    if (!s) return;
    vlm_free(s->prob);
    vlm_free(s->order);
    vlm_free(s->seen);
    vlm_free(s);
}

/* Sort order: logit descending, index ascending on ties: a total order, so
 * any correct sort gives the same permutation. */
static inline bool before(const float *keys, int32_t i, int32_t j) {
    float x = keys[i], y = keys[j];
    return x > y || (x == y && i < j);
}

/* Heapsort of ord[n] by `before`, in place. glibc's qsort_r takes a
 * temporary buffer from malloc for arrays over 1 KiB (its merge sort), which
 * the decode loop must not do; a heap needs no memory at all. */
static void sift_down(int32_t *ord, int n, int i, const float *keys) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) return;
        /* a max-heap of the order's last element: the one `before` ranks last */
        if (c + 1 < n && before(keys, ord[c], ord[c + 1])) c++;
        if (!before(keys, ord[i], ord[c])) return;
        int32_t t = ord[i];
        ord[i] = ord[c];
        ord[c] = t;
        i = c;
    }
}

static void sort_order(int32_t *ord, int n, const float *keys) {
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(ord, n, i, keys);
    for (int end = n - 1; end > 0; end--) {
        int32_t t = ord[0];
        ord[0] = ord[end];
        ord[end] = t;
        sift_down(ord, end, 0, keys);
    }
}

bool sampler_is_greedy(const sampler *s) {
    return s->p.temperature <= 0.0f && s->p.repetition_penalty == 1.0f;
}

int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int64_t n_history) {
    const int V = s->vocab;
    const sampler_params *p = &s->p;

    /* Repetition penalty once per distinct token seen (HF semantics). */
    if (p->repetition_penalty != 1.0f && n_history > 0) {
        if (++s->stamp == 0) {
            memset(s->seen, 0, (size_t)V * sizeof *s->seen);
            s->stamp = 1;
        }
        for (int64_t i = 0; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || t >= V || s->seen[t] == s->stamp) continue;
            s->seen[t] = s->stamp;
            logits[t] = logits[t] < 0 ? logits[t] * p->repetition_penalty
                                      : logits[t] / p->repetition_penalty;
        }
    }
    if (p->temperature <= 0.0f) return cpu_argmax(logits, V);

    for (int i = 0; i < V; i++) logits[i] /= p->temperature;

    /* Candidates sorted by logit (descending, index ascending on ties). */
    for (int i = 0; i < V; i++) s->order[i] = i;
    sort_order(s->order, V, logits);

    int n = V;
    if (p->top_k > 0 && p->top_k < n) {
        /* HF keeps every token whose logit reaches the k-th: ties stay. */
        n = p->top_k;
        while (n < V && logits[s->order[n]] == logits[s->order[n - 1]]) n++;
    }

    /* Softmax over the kept candidates (in sorted order, from the max). */
    double mx = logits[s->order[0]], sum = 0.0;
    for (int i = 0; i < n; i++) {
        double e = exp((double)logits[s->order[i]] - mx);
        s->prob[i] = (float)e;
        sum += e;
    }
    for (int i = 0; i < n; i++) s->prob[i] = (float)(s->prob[i] / sum);

    /* top-p: the smallest prefix whose mass reaches top_p (at least one). */
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += s->prob[i];
            if (cum >= (double)p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    /* min-p: drop candidates below min_p times the top probability. */
    if (p->min_p > 0.0f) {
        float thr = p->min_p * s->prob[0];
        int keep = 1;
        while (keep < n && s->prob[keep] >= thr) keep++;
        n = keep;
    }

    /* Draw from the kept candidates in sorted order. */
    double total = 0.0;
    for (int i = 0; i < n; i++) total += s->prob[i];
    double u = sampler_uniform(s) * total, cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum) return s->order[i];
    }
    return s->order[n - 1];
}
