/* runtime/sampler - choosing the next token from logits.
 *
 * Processors run in the order of Hugging Face generate: repetition penalty,
 * then (when sampling) temperature, top-k, top-p, min-p. temperature 0 is
 * greedy: argmax, the lowest index on ties (torch.argmax). The random state
 * lives in the sampler (seeded; no global RNG): the same seed and the same
 * logits give the same tokens. Buffers are sized once for the vocab, so
 * sampling allocates nothing. */
#ifndef VLM_RUNTIME_SAMPLER_H
#define VLM_RUNTIME_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

typedef struct sampler_params {
    float temperature;        /* 0: greedy */
    int top_k;                /* 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off; HF semantics (divide positive, multiply negative) */
    uint64_t seed;
} sampler_params;

void sampler_params_init(sampler_params *p); /* greedy, all filters off, seed 0 */

typedef struct sampler {
    sampler_params p;
    int vocab;
    uint64_t rng[4]; /* xoshiro256** state */
    float *prob;     /* [vocab] */
    int32_t *order;  /* [vocab] token indices sorted by logit */
    uint32_t *seen;  /* [vocab] stamps for the repetition penalty */
    uint32_t stamp;
} sampler;

vlm_status sampler_create(const sampler_params *p, int vocab, sampler **out, vlm_err *err);
void sampler_free(sampler *s);
/* Restart the random sequence from a seed. */
void sampler_seed(sampler *s, uint64_t seed);

/* Pick a token. logits[vocab] is modified (penalty, temperature, filters).
 * history: the ids the repetition penalty looks at (the whole sequence so
 * far; negative ids, image placeholders, are skipped). */
int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int64_t n_history);

/* Whether sampler_sample is cpu_argmax of the logits as they come (greedy,
 * no repetition penalty): then a model may pick the token itself
 * (VLM_LOGITS_GREEDY) and the logits need not leave the device. */
bool sampler_is_greedy(const sampler *s);

/* Uniform double in [0, 1) from the sampler's state (exposed for tests). */
double sampler_uniform(sampler *s);

#endif
