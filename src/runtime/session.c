/* runtime/session - see session.h. */
#include "runtime/session.h"

#include <string.h>

#include "base/alloc.h"

void session_options_init(session_options *o) {
    memset(o, 0, sizeof *o);
}

void session_sizes(const vlm_model_info *info, const session_options *o, int64_t *max_ctx,
                   int64_t *chunk) {
    int64_t ctx = o->max_ctx > 0 ? o->max_ctx : 4096;
    if (o->max_ctx <= 0 && info->max_positions > 0 && ctx > info->max_positions)
        ctx = info->max_positions;
    int64_t ch = o->chunk > 0 ? o->chunk : 128;
    *max_ctx = ctx;
    *chunk = ch > ctx ? ctx : ch;
}

vlm_status session_create(arch_model *m, const session_options *o, session **out, vlm_err *err) {
    *out = NULL;
    session_options def;
    if (!o) {
        session_options_init(&def);
        o = &def;
    }
    const vlm_model_info *info = &m->info;
    int64_t max_ctx, chunk;
    session_sizes(info, o, &max_ctx, &chunk);
    if (info->max_positions > 0 && max_ctx > info->max_positions)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "session: context %lld is beyond the model's %lld positions",
                           (long long)max_ctx, (long long)info->max_positions);

    session *s = vlm_calloc(1, sizeof *s, VLM_MEM_ACTIVATIONS);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "session: out of memory");
    s->m = m;
    s->max_ctx = max_ctx;
    s->chunk = chunk;
    s->keep_images = info->rope_switch_len > 0 && max_ctx > info->rope_switch_len;
    vlm_status st = kv_cache_create(info, max_ctx, o->kv_dtype, &s->kv, err);
    if (st != VLM_OK) goto fail;
    size_t ws = m->arch->workspace_floats(m->impl, chunk, max_ctx);
    s->ws = VLM_NEW_ARRAY(float, ws, VLM_MEM_ACTIVATIONS);
    s->logits = VLM_NEW_ARRAY(float, (size_t)info->vocab, VLM_MEM_ACTIVATIONS);
    s->ids = VLM_NEW_ARRAY(int32_t, (size_t)max_ctx, VLM_MEM_ACTIVATIONS);
    if (!s->ws || !s->logits || !s->ids) {
        st = vlm_err_set(err, VLM_ERR_NOMEM,
                         "session: out of memory for the workspace (%zu floats, %lld tokens)", ws,
                         (long long)max_ctx);
        goto fail;
    }
    *out = s;
    return VLM_OK;
fail:
    session_free(s);
    return st;
}

void session_free(session *s) {
    if (!s) return;
    kv_cache_free(s->kv);
    vlm_free(s->ws);
    vlm_free(s->logits);
    vlm_free(s->ids);
    vlm_free(s->img_rows);
    vlm_free(s);
}

void session_reset(session *s) {
    s->n_past = 0;
    s->n_img_rows = 0;
    s->rope_long = false;
    s->has_pending = false;
    s->greedy_valid = false;
}

const float *session_logits(const session *s) {
    return s->logits;
}

/* Run the sequence positions [from, to) (already in s->ids) through the
 * model in chunks. rows: the image row of the first placeholder in the
 * range. logits_all: NULL or [to-from][vocab]; want_last: leave the last
 * position's logits in s->logits. */
static vlm_status run_range(session *s, int64_t from, int64_t to, const float *rows, bool rope_long,
                            float *logits_all, bool want_last, vlm_err *err) {
    const vlm_model_info *info = &s->m->info;
    for (int64_t pos = from; pos < to; pos += s->chunk) {
        int64_t n = to - pos < s->chunk ? to - pos : s->chunk;
        bool last = pos + n == to;
        vlm_forward_args a = {s->ids + pos, n, rows, pos, rope_long, VLM_LOGITS_NONE, NULL, NULL};
        if (logits_all) {
            a.logits_mode = VLM_LOGITS_ALL;
            a.logits = logits_all + (pos - from) * (int64_t)info->vocab;
        } else if (last && want_last) {
            a.logits_mode = s->greedy ? VLM_LOGITS_GREEDY : VLM_LOGITS_LAST;
            a.logits = s->logits;
            a.greedy_id = &s->greedy_id;
        }
        vlm_status st = s->m->arch->forward(s->m->impl, &s->kv->kv, &a, s->ws, err);
        if (st != VLM_OK) return st;
        if (last && want_last) s->greedy_valid = a.logits_mode == VLM_LOGITS_GREEDY;
        if (last && want_last && logits_all)
            memcpy(s->logits, a.logits + (n - 1) * (int64_t)info->vocab,
                   (size_t)info->vocab * sizeof(float));
        for (int64_t i = 0; i < n; i++)
            if (s->ids[pos + i] < 0) rows += info->hidden;
    }
    return VLM_OK;
}

vlm_status session_append(session *s, const int32_t *ids, int64_t n, const float *img_rows,
                          int64_t n_img_rows, float *logits_all, vlm_err *err) {
    const vlm_model_info *info = &s->m->info;
    const int64_t hidden = info->hidden;
    if (n < 0 || (n > 0 && !ids))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "session: %lld tokens", (long long)n);
    int64_t n_new = n + (s->has_pending ? 1 : 0);
    if (n_new == 0) return VLM_OK;
    if (n_new > s->max_ctx - s->n_past)
        return vlm_err_set(err, VLM_ERR_LIMIT,
                           "session: %lld new tokens do not fit the context of %lld tokens "
                           "(%lld in use)",
                           (long long)n_new, (long long)s->max_ctx, (long long)s->n_past);
    int64_t neg = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0)
            neg++;
        else if (ids[i] >= info->vocab)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                               "session: token %lld has id %d, outside the vocab of %d",
                               (long long)i, ids[i], info->vocab);
    }
    if (neg != n_img_rows || (neg > 0 && !img_rows))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "session: %lld image placeholders but %lld image feature rows",
                           (long long)neg, (long long)n_img_rows);

    /* Keep the image rows for a LongRoPE rebuild before touching any state,
     * so a failure leaves the session as it was. */
    const int64_t rows_before = s->n_img_rows;
    if (s->keep_images && neg > 0) {
        if (s->n_img_rows + neg > s->img_cap) {
            int64_t cap = s->img_cap ? s->img_cap : 1024;
            while (cap < s->n_img_rows + neg) cap *= 2;
            size_t bytes;
            if (!vlm_size_mul((size_t)cap, (size_t)hidden * sizeof(float), &bytes))
                return vlm_err_set(err, VLM_ERR_NOMEM, "session: image rows overflow");
            float *p = vlm_realloc(s->img_rows, bytes, VLM_MEM_IMAGE);
            if (!p)
                return vlm_err_set(err, VLM_ERR_NOMEM,
                                   "session: out of memory keeping %lld image rows",
                                   (long long)(s->n_img_rows + neg));
            s->img_rows = p;
            s->img_cap = cap;
        }
        memcpy(s->img_rows + s->n_img_rows * hidden, img_rows,
               (size_t)(neg * hidden) * sizeof(float));
        s->n_img_rows += neg;
    }

    const int64_t start = s->n_past;
    int64_t at = start;
    if (s->has_pending) s->ids[at++] = s->pending;
    const int64_t first_caller = at;
    if (n > 0) memcpy(s->ids + at, ids, (size_t)n * sizeof *ids);
    const int64_t end = at + n;

    /* LongRoPE: decide by the total length after this call. */
    vlm_status st = VLM_OK;
    bool want_long = info->rope_switch_len > 0 && end > info->rope_switch_len;
    if (want_long && !s->rope_long) {
        if (start > 0) {
            /* Keys made with the short factors: run the sequence again. The
             * flag flips only once every key is redone, so a failure here
             * leaves a cache that the next call rebuilds again. */
            st = run_range(s, 0, start, s->img_rows, true, NULL, false, err);
            if (st != VLM_OK) goto fail;
            s->n_rebuilds++;
        }
        s->rope_long = true;
    }

    const float *rows = s->keep_images ? s->img_rows + rows_before * hidden : img_rows;
    if (first_caller > start && logits_all) {
        /* The pending token alone, so logits_all lines up with the caller's
         * tokens (results do not depend on how tokens are grouped). */
        st = run_range(s, start, first_caller, NULL, s->rope_long, NULL, n == 0, err);
        if (st != VLM_OK) goto fail;
        if (n > 0) st = run_range(s, first_caller, end, rows, s->rope_long, logits_all, true, err);
    } else {
        /* The pending token (if any, then without logits_all) leads the new
         * tokens in one pass. */
        st = run_range(s, start, end, rows, s->rope_long, logits_all, true, err);
    }
    if (st != VLM_OK) goto fail;
    s->n_past = end;
    s->has_pending = false;
    return VLM_OK;
fail:
    /* The cache rows past n_past are garbage but never read; the sequence
     * stays as it was before the call. */
    s->n_img_rows = rows_before;
    return st;
}

vlm_status session_generate(session *s, sampler *smp, const gen_options *g, int32_t *out_ids,
                            int *n_out, session_stop *reason, vlm_err *err) {
    *n_out = 0;
    *reason = SESSION_STOP_MAX;
    if (s->n_past == 0 && !s->has_pending)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "generate: the session is empty");
    if (smp->vocab != s->m->info.vocab)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "generate: the sampler's vocab %d differs from the model's %d",
                           smp->vocab, s->m->info.vocab);
    if (g->max_new < 0 || (g->n_stop_ids > 0 && !g->stop_ids))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "generate: max_new %d, %d stop ids",
                           g->max_new, g->n_stop_ids);
    vlm_status st;
    if (s->has_pending && (st = session_append(s, NULL, 0, NULL, 0, NULL, err)) != VLM_OK)
        return st;
    /* a greedy pick is the argmax of the logits as they are: the model may
     * take it itself, on the GPU (only the id leaves the card) */
    const bool greedy = sampler_is_greedy(smp);
    for (int i = 0; i < g->max_new; i++) {
        int32_t tok = greedy && s->greedy_valid ? s->greedy_id
                                                : sampler_sample(smp, s->logits, s->ids, s->n_past);
        out_ids[(*n_out)++] = tok;
        s->pending = tok;
        s->has_pending = true;
        bool stop_id = false;
        for (int j = 0; j < g->n_stop_ids; j++) stop_id |= g->stop_ids[j] == tok;
        if (stop_id) {
            *reason = SESSION_STOP_EOS;
            return VLM_OK;
        }
        if (g->on_token && !g->on_token(g->user, tok)) {
            *reason = SESSION_STOP_CALLBACK;
            return VLM_OK;
        }
        if (*n_out == g->max_new) break;
        if (s->n_past + 1 > s->max_ctx) {
            *reason = SESSION_STOP_CONTEXT;
            return VLM_OK;
        }
        s->greedy = greedy;
        st = session_append(s, NULL, 0, NULL, 0, NULL, err);
        s->greedy = false;
        if (st != VLM_OK) return st;
    }
    *reason = SESSION_STOP_MAX;
    return VLM_OK;
}
