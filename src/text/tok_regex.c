/* text/tok_regex - PCRE2 (UTF + UCP, JIT when available) standing in for
 * the Oniguruma engine HF tokenizers uses. PCRE2's memory goes through the
 * accounted allocator (a general context with our malloc/free); JIT code
 * pages are mmap'd by PCRE2 itself.
 *
 * One difference is patched: with UCP, PCRE2's \s also matches U+180E,
 * which is not Unicode White_Space (Oniguruma's \s). \s outside a class and
 * inside one, and \S outside a class, are rewritten to explicit sets. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <string.h>

#include "base/alloc.h"
#include "text/tok_internal.h"

struct tok_regex {
    pcre2_code *code;
    bool jit;
};

static void *re_malloc(PCRE2_SIZE n, void *data) {
    (void)data;
    return vlm_alloc(n, VLM_MEM_OTHER);
}
static void re_free(void *p, void *data) {
    (void)data;
    vlm_free(p);
}

#define WS_SET                                                                                     \
    "\\t-\\r "                                                                                     \
    "\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* Rewrite \s / \S; returns an accounted NUL-terminated string. */
static char *translate(const char *p, size_t n, size_t *out_len) {
    size_t cap = n * 2 + 64, len = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (p[i] == '\\') cap += sizeof(WS_SET) + 4;
    char *o = vlm_alloc(cap, VLM_MEM_OTHER);
    if (!o) return NULL;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (d == 's' || (d == 'S' && !in_class)) {
                const char *pre = in_class ? "" : (d == 's' ? "[" : "[^");
                const char *post = in_class ? "" : "]";
                len += (size_t)snprintf(o + len, cap - len, "%s%s%s", pre, WS_SET, post);
            } else {
                o[len++] = c;
                o[len++] = d;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            o[len++] = c;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && p[i + 1] == '^') o[len++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[len++] = p[++i];
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        o[len++] = c;
    }
    o[len] = 0;
    *out_len = len;
    return o;
}

vlm_status tok_regex_compile(const char *pat, size_t len, bool literal, const char *field,
                             tok_regex **out, vlm_err *err) {
    *out = NULL;
    pcre2_general_context *gc = pcre2_general_context_create(re_malloc, re_free, NULL);
    if (!gc) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory (regex)", field);
    pcre2_compile_context *cc = pcre2_compile_context_create(gc);
    if (!cc) {
        pcre2_general_context_free(gc);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory (regex)", field);
    }
    char *tp = NULL;
    size_t tl = len;
    const char *src = pat;
    if (!literal) {
        tp = translate(pat, len, &tl);
        if (!tp) {
            pcre2_compile_context_free(cc);
            pcre2_general_context_free(gc);
            return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory (regex)", field);
        }
        src = tp;
    }
    int ec = 0;
    PCRE2_SIZE eo = 0;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)src, tl, opts, &ec, &eo, cc);
    vlm_free(tp);
    pcre2_compile_context_free(cc);
    pcre2_general_context_free(gc);
    if (!code) {
        if (ec == PCRE2_ERROR_HEAP_FAILED || ec == PCRE2_ERROR_NOMEMORY)
            return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory (regex)", field);
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: bad regular expression at offset %zu: %s",
                           field, (size_t)eo, (const char *)msg);
    }
    tok_regex *re = vlm_calloc(1, sizeof *re, VLM_MEM_OTHER);
    if (!re) {
        pcre2_code_free(code);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory (regex)", field);
    }
    re->code = code;
    re->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    *out = re;
    return VLM_OK;
}

void tok_regex_free(tok_regex *re) {
    if (!re) return;
    pcre2_code_free(re->code);
    vlm_free(re);
}

void *tok_regex_match_data(const tok_regex *re) {
    return pcre2_match_data_create_from_pattern(re->code, NULL);
}

void tok_regex_match_data_free(void *md) {
    pcre2_match_data_free(md);
}

int tok_regex_find(const tok_regex *re, void *md, const char *s, size_t len, size_t start,
                   size_t *ms, size_t *me, vlm_err *err) {
    uint32_t opts = PCRE2_NO_UTF_CHECK;
    for (;;) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, start, opts, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !(opts & PCRE2_NO_JIT)) {
            opts |= PCRE2_NO_JIT; /* the interpreter keeps its frames on the heap */
            continue;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            vlm_err_set(err, rc == PCRE2_ERROR_NOMEMORY ? VLM_ERR_NOMEM : VLM_ERR_LIMIT,
                        "tokenizer: regular expression match failed: %s", (const char *)msg);
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        *ms = ov[0];
        *me = ov[1];
        return 1;
    }
}

/* HF's Pattern::find_matches for a regex: ranges covering s, the matched
 * ones flagged. An empty match is kept (as a zero-length range) and the
 * search moves on by one character. */
vlm_status tok_regex_find_all(const tok_regex *re, const char *s, size_t len, bool invert,
                              mlist *out, vlm_err *err) {
    out->n = 0;
    if (len == 0) return mlist_push(out, 0, 0, invert, err);
    void *md = tok_regex_match_data(re);
    if (!md) return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer: out of memory (regex)");
    vlm_status st = tok_regex_find_all_md(re, md, s, len, invert, out, err);
    tok_regex_match_data_free(md);
    return st;
}

vlm_status tok_regex_find_all_md(const tok_regex *re, void *md, const char *s, size_t len,
                                 bool invert, mlist *out, vlm_err *err) {
    out->n = 0;
    if (len == 0) return mlist_push(out, 0, 0, invert, err);
    vlm_status st = VLM_OK;
    size_t prev = 0, pos = 0;
    while (pos < len) {
        size_t a, b;
        int r = tok_regex_find(re, md, s, len, pos, &a, &b, err);
        if (r < 0) {
            st = err ? err->status : VLM_ERR_LIMIT;
            break;
        }
        if (r == 0) break;
        if (prev != a && (st = mlist_push(out, prev, a, invert, err)) != VLM_OK) break;
        if ((st = mlist_push(out, a, b, !invert, err)) != VLM_OK) break;
        prev = b;
        if (b == a) {
            uint32_t cp;
            pos = b + tok_utf8_next(s + b, len - b, &cp);
        } else
            pos = b;
    }
    if (st == VLM_OK && prev < len) st = mlist_push(out, prev, len, invert, err);
    return st;
}
