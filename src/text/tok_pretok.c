/* text/tok_pretok - HF pre-tokenizers: Sequence, Metaspace, ByteLevel,
 * Split, Digits, Whitespace, WhitespaceSplit, Punctuation,
 * CharDelimiterSplit; and the split behaviours they share (HF
 * NormalizedString::split). Empty pieces are dropped, as HF does. */
#include <string.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

uint32_t tok_byte_to_char(unsigned char b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256u + b;
    if (b <= 160) return 289u + (b - 127u);
    return 323; /* 173 */
}

int tok_char_to_byte(uint32_t cp) {
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)(cp - 256);
    if (cp >= 289 && cp <= 322) return (int)(cp - 289 + 127);
    if (cp == 323) return 173;
    return -1;
}

/* Covering ranges for a character predicate: each matching character is a
 * match of its own; the runs between are non-matches. */
typedef bool (*char_pred)(uint32_t cp, uint32_t arg);

static bool pred_ws(uint32_t cp, uint32_t arg) {
    (void)arg;
    return tok_is_whitespace(cp);
}
static bool pred_num(uint32_t cp, uint32_t arg) {
    (void)arg;
    return tok_is_numeric(cp);
}
static bool pred_punct(uint32_t cp, uint32_t arg) {
    (void)arg;
    return tok_is_punct(cp);
}
static bool pred_eq(uint32_t cp, uint32_t arg) {
    return cp == arg;
}

static vlm_status find_chars(const char *s, size_t len, char_pred f, uint32_t arg, mlist *out,
                             vlm_err *err) {
    out->n = 0;
    if (len == 0) return mlist_push(out, 0, 0, false, err);
    size_t last = 0;
    vlm_status st = VLM_OK;
    for (size_t i = 0; i < len && st == VLM_OK;) {
        uint32_t cp;
        size_t n = tok_utf8_next(s + i, len - i, &cp);
        if (f(cp, arg)) {
            if (last < i) st = mlist_push(out, last, i, false, err);
            if (st == VLM_OK) st = mlist_push(out, i, i + n, true, err);
            last = i + n;
        }
        i += n;
    }
    if (st == VLM_OK && last < len) st = mlist_push(out, last, len, false, err);
    return st;
}

/* Apply a split behaviour to a covering list, in place: afterwards every
 * entry with m == false is a piece to keep (m == true: removed). */
static void apply_behavior(mlist *ml, split_behavior b) {
    size_t n = ml->n, k = 0;
    tok_match *v = ml->v;
    bool prev = false;
    switch (b) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) v[i].m = false;
        return;
    case SPLIT_REMOVED:
        return;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            bool m = v[i].m;
            if (m == prev && k > 0)
                v[k - 1].e = v[i].e;
            else
                v[k++] = (tok_match){v[i].s, v[i].e, false};
            prev = m;
        }
        break;
    case SPLIT_MERGED_PREV:
        for (size_t i = 0; i < n; i++) {
            bool m = v[i].m;
            if (m && !prev && k > 0)
                v[k - 1].e = v[i].e;
            else
                v[k++] = (tok_match){v[i].s, v[i].e, false};
            prev = m;
        }
        break;
    case SPLIT_MERGED_NEXT:
        /* Walk backwards, collecting at the end of the array, then move. */
        k = n;
        for (size_t i = n; i-- > 0;) {
            bool m = v[i].m;
            tok_match cur = v[i];
            if (m && !prev && k < n)
                v[k].s = cur.s;
            else
                v[--k] = (tok_match){cur.s, cur.e, false};
            prev = m;
        }
        memmove(v, v + k, (n - k) * sizeof *v);
        k = n - k;
        break;
    }
    ml->n = k;
}

/* Copy the kept ranges of src[base + ...] into nb as new pieces. */
static vlm_status emit_kept(const nbuf *src, size_t base, const mlist *ml, nbuf *nb, plist *nl,
                            vlm_err *err) {
    vlm_status st = VLM_OK;
    for (size_t i = 0; i < ml->n && st == VLM_OK; i++) {
        if (ml->v[i].m || ml->v[i].e <= ml->v[i].s) continue;
        size_t a = base + ml->v[i].s, len = ml->v[i].e - ml->v[i].s;
        size_t at = nb->len;
        if ((st = nbuf_reserve(nb, len, err)) != VLM_OK) break;
        memcpy(nb->s + at, src->s + a, len);
        memcpy(nb->orig + at, src->orig + a, len * sizeof(int32_t));
        nb->len += len;
        st = plist_push(nl, at, len, err);
    }
    return st;
}

static vlm_status pre_metaspace(const tok_pretok *p, const nbuf *cb, const piece *pc, nbuf *nb,
                                plist *nl, mlist *ml, vlm_err *err) {
    const char *s = cb->s + pc->off;
    size_t at = nb->len;
    vlm_status st = VLM_OK;
    bool starts = pc->len >= p->rep_len && memcmp(s, p->rep, p->rep_len) == 0;
    bool first_space = pc->len > 0 && s[0] == ' ';
    /* after ' ' -> replacement, the text starts with the replacement if it
     * did already or if it started with a space */
    bool starts_after = starts || first_space;
    bool prepend = false;
    if (p->scheme == PREPEND_ALWAYS)
        prepend = !starts_after;
    else if (p->scheme == PREPEND_FIRST)
        prepend = !starts_after && cb->orig[pc->off] == 0;
    if (prepend && (st = nbuf_put(nb, p->rep, p->rep_len, cb->orig[pc->off], err)) != VLM_OK)
        return st;
    for (size_t i = 0; i < pc->len && st == VLM_OK; i++) {
        if (s[i] == ' ')
            st = nbuf_put(nb, p->rep, p->rep_len, cb->orig[pc->off + i], err);
        else
            st = nbuf_put(nb, s + i, 1, cb->orig[pc->off + i], err);
    }
    if (st != VLM_OK) return st;
    size_t len = nb->len - at;
    if (!p->split) return len ? plist_push(nl, at, len, err) : VLM_OK;
    if ((st = find_chars(nb->s + at, len, pred_eq, p->replacement, ml, err)) != VLM_OK) return st;
    apply_behavior(ml, SPLIT_MERGED_NEXT);
    for (size_t i = 0; i < ml->n && st == VLM_OK; i++)
        if (ml->v[i].e > ml->v[i].s)
            st = plist_push(nl, at + ml->v[i].s, ml->v[i].e - ml->v[i].s, err);
    return st;
}

static vlm_status pre_bytelevel(const tok_pretok *p, const nbuf *cb, const piece *pc, nbuf *nb,
                                plist *nl, mlist *ml, nbuf *tmp, vlm_err *err) {
    tmp->len = 0;
    vlm_status st = VLM_OK;
    const char *s = cb->s + pc->off;
    if (p->add_prefix_space && (pc->len == 0 || s[0] != ' '))
        st = nbuf_put(tmp, " ", 1, cb->orig[pc->off], err);
    if (st == VLM_OK && (st = nbuf_reserve(tmp, pc->len, err)) == VLM_OK) {
        memcpy(tmp->s + tmp->len, s, pc->len);
        memcpy(tmp->orig + tmp->len, cb->orig + pc->off, pc->len * sizeof(int32_t));
        tmp->len += pc->len;
    }
    if (st != VLM_OK) return st;
    if (p->use_regex) {
        if ((st = tok_regex_find_all(p->re, tmp->s, tmp->len, false, ml, err)) != VLM_OK) return st;
        apply_behavior(ml, SPLIT_ISOLATED);
    } else {
        ml->n = 0;
        if ((st = mlist_push(ml, 0, tmp->len, false, err)) != VLM_OK) return st;
    }
    for (size_t i = 0; i < ml->n && st == VLM_OK; i++) {
        size_t a = ml->v[i].s, b = ml->v[i].e;
        if (b <= a) continue;
        size_t at = nb->len;
        for (size_t k = a; k < b && st == VLM_OK; k++) {
            char u[4];
            size_t ul = tok_utf8_encode(tok_byte_to_char((unsigned char)tmp->s[k]), u);
            st = nbuf_put(nb, u, ul, tmp->orig[k], err);
        }
        if (st == VLM_OK) st = plist_push(nl, at, nb->len - at, err);
    }
    return st;
}

static vlm_status pre_leaf(const tok_pretok *p, const nbuf *cb, const piece *pc, nbuf *nb,
                           plist *nl, mlist *ml, nbuf *tmp, vlm_err *err) {
    const char *s = cb->s + pc->off;
    vlm_status st;
    split_behavior b = SPLIT_REMOVED;
    switch (p->kind) {
    case PRE_METASPACE:
        return pre_metaspace(p, cb, pc, nb, nl, ml, err);
    case PRE_BYTELEVEL:
        return pre_bytelevel(p, cb, pc, nb, nl, ml, tmp, err);
    case PRE_SPLIT:
        st = tok_regex_find_all(p->re, s, pc->len, p->invert, ml, err);
        b = p->behavior;
        break;
    case PRE_WHITESPACE:
        st = tok_regex_find_all(p->re, s, pc->len, true, ml, err);
        b = SPLIT_REMOVED;
        break;
    case PRE_DIGITS:
        st = find_chars(s, pc->len, pred_num, 0, ml, err);
        b = p->individual_digits ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        break;
    case PRE_WHITESPACE_SPLIT:
        st = find_chars(s, pc->len, pred_ws, 0, ml, err);
        b = SPLIT_REMOVED;
        break;
    case PRE_PUNCTUATION:
        st = find_chars(s, pc->len, pred_punct, 0, ml, err);
        b = p->behavior;
        break;
    case PRE_CHAR_DELIMITER:
        st = find_chars(s, pc->len, pred_eq, p->delimiter, ml, err);
        b = SPLIT_REMOVED;
        break;
    default:
        return vlm_err_set(err, VLM_ERR_INTERNAL, "tokenizer: bad pre-tokenizer kind");
    }
    if (st != VLM_OK) return st;
    apply_behavior(ml, b);
    return emit_kept(cb, pc->off, ml, nb, nl, err);
}

vlm_status tok_pretokenize(const tok_pretok *p, nbuf *cb, plist *cur, nbuf *nb, plist *nl,
                           vlm_err *err) {
    if (p->kind == PRE_SEQUENCE) {
        for (size_t i = 0; i < p->n_sub; i++) {
            vlm_status st = tok_pretokenize(&p->sub[i], cb, cur, nb, nl, err);
            if (st != VLM_OK) return st;
        }
        return VLM_OK;
    }
    nb->len = 0;
    nl->n = 0;
    mlist ml = {0};
    nbuf tmp = {0};
    vlm_status st = VLM_OK;
    for (size_t i = 0; i < cur->n && st == VLM_OK; i++)
        if (cur->v[i].len > 0) st = pre_leaf(p, cb, &cur->v[i], nb, nl, &ml, &tmp, err);
    vlm_free(ml.v);
    nbuf_free(&tmp);
    if (st != VLM_OK) return st;
    nbuf tb = *cb;
    *cb = *nb;
    *nb = tb;
    plist tl = *cur;
    *cur = *nl;
    *nl = tl;
    return VLM_OK;
}

void tok_pretok_free(tok_pretok *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_sub; i++) tok_pretok_free(&p->sub[i]);
    vlm_free(p->sub);
    tok_regex_free(p->re);
}
