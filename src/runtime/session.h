/* runtime/session - a conversation with one model: the KV cache kept across
 * turns, prefill of only the new tokens (in chunks), the decode step, the
 * LongRoPE switch, and the generation loop.
 *
 * The session owns everything the hot path touches, sized once at creation:
 * the KV cache (kv_cache), the forward workspace (activations) and the
 * logits (activations). A decode step allocates nothing.
 *
 * LongRoPE convention (the reference's eager path, spec §6.5): a forward call
 * that makes the sequence L tokens long uses the long factors when
 * L > rope_switch_len (original_max_position_embeddings, 4096), the short
 * ones otherwise. So a 4096-token prompt is short, the 4097th token is long.
 * When the total crosses the switch length while the cache holds keys made
 * with the short factors, the whole sequence (image features included) is run
 * again with the long factors, as the reference discards its cache there. One
 * prefill call decides once, by the total length after the call, for all its
 * chunks. */
#ifndef VLM_RUNTIME_SESSION_H
#define VLM_RUNTIME_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "models/registry.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"

typedef struct session_options {
    int64_t max_ctx;    /* tokens the cache holds; 0: min(4096, max_positions) */
    int64_t chunk;      /* prefill tokens per forward call; 0: 128 */
    vlm_dtype kv_dtype; /* VLM_DTYPE_F32 (default, 0) or VLM_DTYPE_BF16 (half the bytes) */
} session_options;

void session_options_init(session_options *o);

/* The cache rows and prefill chunk session_create uses for o (the 0
 * defaults resolved, the chunk capped at the context); the memory planner
 * sizes a session with it. */
void session_sizes(const vlm_model_info *info, const session_options *o, int64_t *max_ctx,
                   int64_t *chunk);

typedef struct session {
    arch_model *m; /* not owned */
    kv_cache *kv;
    int64_t max_ctx, chunk;
    float *ws;      /* forward workspace, chunk tokens */
    float *logits;  /* [vocab] after the last call */
    int32_t *ids;   /* [max_ctx] the sequence so far (ids < 0: image rows) */
    int64_t n_past; /* tokens in the cache */
    /* Image feature rows of the sequence, kept only when a LongRoPE rebuild
     * can happen (max_ctx > rope_switch_len), to run the sequence again. */
    bool keep_images;
    float *img_rows; /* [n_img_rows][hidden] */
    int64_t n_img_rows, img_cap;
    bool rope_long;     /* the cache holds keys made with the long factors */
    int64_t n_rebuilds; /* times the cache was recomputed for LongRoPE */
    bool has_pending;   /* a generated token not yet in the cache */
    int32_t pending;
    /* session_generate with a greedy sampler: its appends ask the model for
     * the last position's argmax (VLM_LOGITS_GREEDY), so the logits need not
     * leave the GPU; greedy_valid: greedy_id is that argmax and logits[] is
     * not the last position's */
    bool greedy, greedy_valid;
    int32_t greedy_id;
} session;

vlm_status session_create(arch_model *m, const session_options *o, session **out, vlm_err *err);
void session_free(session *s);
/* Forget the conversation (the cache is kept allocated). */
void session_reset(session *s);

/* Append n tokens and run them through the decoder. ids < 0 are image
 * placeholders, filled in order from img_rows[n_img_rows][hidden] (their
 * count must match). A pending generated token, if any, goes first.
 * logits_all: NULL, or [n][vocab] for the logits of every appended token
 * (the pending token's row is not included). The last position's logits are
 * always in s->logits afterwards. VLM_ERR_LIMIT when the context is full. */
vlm_status session_append(session *s, const int32_t *ids, int64_t n, const float *img_rows,
                          int64_t n_img_rows, float *logits_all, vlm_err *err);

/* The logits after the last call, [vocab]; not the last position's while
 * greedy_valid (session_generate's own appends with a greedy sampler). */
const float *session_logits(const session *s);

/* --- generation ------------------------------------------------------------ */

/* Called with each new token; return false to stop (e.g. a stop string was
 * found in the decoded text). */
typedef bool (*session_token_fn)(void *user, int32_t token);

typedef enum session_stop {
    SESSION_STOP_EOS = 0,  /* a stop id was generated (it is in out_ids) */
    SESSION_STOP_MAX,      /* max_new tokens */
    SESSION_STOP_CALLBACK, /* on_token returned false */
    SESSION_STOP_CONTEXT,  /* the cache is full */
} session_stop;

typedef struct gen_options {
    int max_new;             /* new tokens at most */
    const int32_t *stop_ids; /* e.g. {32007, 32000, 2}; the first one hit stops */
    int n_stop_ids;
    session_token_fn on_token; /* may be NULL */
    void *user;
} gen_options;

/* Generate from the current logits (after an append). The generated tokens
 * go to out_ids[max_new]. Every generated token belongs to the conversation:
 * all but the last are in the cache; the last is kept pending and goes into
 * the cache at the start of the next append (so the next turn prefills it
 * with its own tokens). */
vlm_status session_generate(session *s, sampler *smp, const gen_options *g, int32_t *out_ids,
                            int *n_out, session_stop *reason, vlm_err *err);

#endif
