/* text/tok_load - tokenizer.json into a tokenizer: the model, the
 * normalizer, pre-tokenizer, decoder and post-processor trees, and the added
 * tokens. Every error names the field at fault by its JSON path
 * ("tokenizer.json: model.merges[41]: ..."); components we do not implement
 * are refused (VLM_ERR_UNSUPPORTED), never skipped. */
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "base/log.h"
#include "text/tok_internal.h"

#define PATH_MAX_LEN 200

/* ---- JSON helpers: every message names the field path ---- */

static vlm_status jerr(vlm_err *err, const char *path, const char *fmt, const char *arg) {
    char m[300];
    snprintf(m, sizeof m, fmt, arg);
    return vlm_err_set(err, VLM_ERR_FORMAT, "tokenizer.json: %s: %s", path, m);
}

static const cJSON *jget(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNull(it) ? NULL : it;
}

static vlm_status jbool(const cJSON *o, const char *k, const char *path, bool *out, vlm_err *err) {
    const cJSON *it = jget(o, k);
    if (!it) return VLM_OK;
    if (!cJSON_IsBool(it)) {
        char p[PATH_MAX_LEN];
        /* a path longer than p is cut in the message (the result is read so
         * that -O3's -Wformat-truncation knows the cut is meant) */
        if (snprintf(p, sizeof p, "%s.%s", path, k) >= (int)sizeof p) p[sizeof p - 1] = '\0';
        return jerr(err, p, "must be true or false%s", "");
    }
    *out = cJSON_IsTrue(it);
    return VLM_OK;
}

/* A string field; *out NULL when absent and !required. */
static vlm_status jstring(const cJSON *o, const char *k, const char *path, bool required,
                          const char **out, vlm_err *err) {
    const cJSON *it = jget(o, k);
    char p[PATH_MAX_LEN];
    snprintf(p, sizeof p, "%s.%s", path, k);
    *out = NULL;
    if (!it) return required ? jerr(err, p, "missing%s", "") : VLM_OK;
    if (!cJSON_IsString(it) || !it->valuestring) return jerr(err, p, "must be a string%s", "");
    *out = it->valuestring;
    return VLM_OK;
}

static vlm_status jint(const cJSON *o, const char *k, const char *path, bool required, int64_t lo,
                       int64_t hi, int64_t *out, vlm_err *err) {
    const cJSON *it = jget(o, k);
    char p[PATH_MAX_LEN];
    snprintf(p, sizeof p, "%s.%s", path, k);
    if (!it) return required ? jerr(err, p, "missing%s", "") : VLM_OK;
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || v != (double)(int64_t)v || v < (double)lo || v > (double)hi)
        return jerr(err, p, "must be an integer in range%s", "");
    *out = (int64_t)v;
    return VLM_OK;
}

static char *dupn(const char *s, size_t n) {
    char *d = vlm_alloc(n + 1, VLM_MEM_OTHER);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static vlm_status nomem(vlm_err *err, const char *path) {
    return vlm_err_set(err, VLM_ERR_NOMEM, "tokenizer.json: %s: out of memory", path);
}

/* A single character field (Metaspace replacement, Strip content). */
static vlm_status jchar(const cJSON *o, const char *k, const char *path, uint32_t def,
                        uint32_t *out, vlm_err *err) {
    const char *s;
    vlm_status st = jstring(o, k, path, false, &s, err);
    if (st != VLM_OK) return st;
    if (!s) {
        *out = def;
        return VLM_OK;
    }
    size_t n = strlen(s), bad;
    if (n == 0 || tok_utf8_valid_char((const unsigned char *)s, n, &bad) != n) {
        char p[PATH_MAX_LEN];
        snprintf(p, sizeof p, "%s.%s", path, k);
        return jerr(err, p, "must be a single character%s", "");
    }
    tok_utf8_next(s, n, out);
    return VLM_OK;
}

/* pattern: {"String": "..."} or {"Regex": "..."} */
static vlm_status jpattern(const cJSON *o, const char *path, tok_regex **re, char **lit,
                           size_t *lit_len, vlm_err *err) {
    char p[PATH_MAX_LEN];
    snprintf(p, sizeof p, "%s.pattern", path);
    const cJSON *pat = jget(o, "pattern");
    if (!pat) return jerr(err, p, "missing%s", "");
    const cJSON *s = jget(pat, "String"), *r = jget(pat, "Regex");
    const cJSON *it = s ? s : r;
    if (!it || !cJSON_IsString(it))
        return jerr(err, p, "must be {\"String\": ...} or {\"Regex\": ...}%s", "");
    size_t n = strlen(it->valuestring);
    if (lit && s) {
        *lit = dupn(it->valuestring, n);
        *lit_len = n;
        return *lit ? VLM_OK : nomem(err, p);
    }
    char q[PATH_MAX_LEN + 16];
    snprintf(q, sizeof q, "tokenizer.json: %s", p);
    return tok_regex_compile(it->valuestring, n, s != NULL, q, re, err);
}

/* A built-in expression (GPT-2's, Whitespace's) for the component at path. */
static vlm_status builtin_regex(const char *re_text, const char *path, tok_regex **re,
                                vlm_err *err) {
    char q[PATH_MAX_LEN + 16];
    snprintf(q, sizeof q, "tokenizer.json: %s", path);
    return tok_regex_compile(re_text, strlen(re_text), false, q, re, err);
}

static vlm_status jtype(const cJSON *o, const char *path, const char **type, vlm_err *err) {
    if (!cJSON_IsObject(o)) return jerr(err, path, "must be an object%s", "");
    return jstring(o, "type", path, true, type, err);
}

static vlm_status junsupported(vlm_err *err, const char *path, const char *type) {
    return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "tokenizer.json: %s.type: \"%s\" is not supported",
                       path, type);
}

/* Parse an array field into a freshly allocated array of n_sub elements. */
static vlm_status jarray(const cJSON *o, const char *k, const char *path, const cJSON **arr,
                         size_t *n, vlm_err *err) {
    char p[PATH_MAX_LEN];
    snprintf(p, sizeof p, "%s.%s", path, k);
    *arr = jget(o, k);
    if (!*arr || !cJSON_IsArray(*arr)) return jerr(err, p, "must be an array%s", "");
    *n = (size_t)cJSON_GetArraySize(*arr);
    return VLM_OK;
}

/* ---- normalizers ---- */

static vlm_status parse_norm(const cJSON *o, const char *path, tok_norm *n, vlm_err *err) {
    const char *type;
    vlm_status st = jtype(o, path, &type, err);
    if (st != VLM_OK) return st;
    if (!strcmp(type, "Sequence")) {
        n->kind = NORM_SEQUENCE;
        const cJSON *a;
        size_t cnt;
        if ((st = jarray(o, "normalizers", path, &a, &cnt, err)) != VLM_OK) return st;
        if (cnt && !(n->sub = VLM_NEW_ARRAY(tok_norm, cnt, VLM_MEM_OTHER))) return nomem(err, path);
        n->n_sub = cnt;
        size_t i = 0;
        for (const cJSON *c = a->child; c && st == VLM_OK; c = c->next, i++) {
            char p[PATH_MAX_LEN];
            snprintf(p, sizeof p, "%s.normalizers[%zu]", path, i);
            st = parse_norm(c, p, &n->sub[i], err);
        }
        return st;
    }
    if (!strcmp(type, "Prepend")) {
        n->kind = NORM_PREPEND;
        const char *s;
        if ((st = jstring(o, "prepend", path, true, &s, err)) != VLM_OK) return st;
        n->str_len = strlen(s);
        return (n->str = dupn(s, n->str_len)) ? VLM_OK : nomem(err, path);
    }
    if (!strcmp(type, "Replace")) {
        n->kind = NORM_REPLACE;
        const char *c;
        if ((st = jstring(o, "content", path, true, &c, err)) != VLM_OK) return st;
        n->content_len = strlen(c);
        if (!(n->content = dupn(c, n->content_len))) return nomem(err, path);
        return jpattern(o, path, &n->re, &n->str, &n->str_len, err);
    }
    static const struct {
        const char *name;
        norm_kind kind;
    } simple[] = {{"NFC", NORM_NFC},
                  {"NFD", NORM_NFD},
                  {"NFKC", NORM_NFKC},
                  {"NFKD", NORM_NFKD},
                  {"Lowercase", NORM_LOWERCASE}};
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (!strcmp(type, simple[i].name)) {
            n->kind = simple[i].kind;
            return VLM_OK;
        }
    if (!strcmp(type, "Strip")) {
        n->kind = NORM_STRIP;
        n->left = n->right = true;
        if ((st = jbool(o, "strip_left", path, &n->left, err)) != VLM_OK) return st;
        return jbool(o, "strip_right", path, &n->right, err);
    }
    return junsupported(err, path, type);
}

/* ---- pre-tokenizers ---- */

static vlm_status parse_scheme(const cJSON *o, const char *path, prepend_scheme *out,
                               vlm_err *err) {
    const char *s;
    bool legacy = true;
    *out = PREPEND_ALWAYS;
    vlm_status st = jstring(o, "prepend_scheme", path, false, &s, err);
    if (st != VLM_OK) return st;
    if (!s) {
        /* older files: add_prefix_space true/false */
        if ((st = jbool(o, "add_prefix_space", path, &legacy, err)) != VLM_OK) return st;
        *out = legacy ? PREPEND_ALWAYS : PREPEND_NEVER;
        return VLM_OK;
    }
    if (!strcmp(s, "always"))
        *out = PREPEND_ALWAYS;
    else if (!strcmp(s, "first"))
        *out = PREPEND_FIRST;
    else if (!strcmp(s, "never"))
        *out = PREPEND_NEVER;
    else {
        char p[PATH_MAX_LEN];
        snprintf(p, sizeof p, "%s.prepend_scheme", path);
        return jerr(err, p, "unknown scheme \"%s\"", s);
    }
    return VLM_OK;
}

static vlm_status parse_behavior(const cJSON *o, const char *path, split_behavior def,
                                 split_behavior *out, vlm_err *err) {
    const char *s;
    vlm_status st = jstring(o, "behavior", path, false, &s, err);
    if (st != VLM_OK) return st;
    *out = def;
    if (!s) return VLM_OK;
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i])) {
            *out = (split_behavior)i;
            return VLM_OK;
        }
    char p[PATH_MAX_LEN];
    snprintf(p, sizeof p, "%s.behavior", path);
    return jerr(err, p, "unknown behavior \"%s\"", s);
}

static vlm_status parse_pre(const cJSON *o, const char *path, tok_pretok *p, vlm_err *err) {
    const char *type;
    vlm_status st = jtype(o, path, &type, err);
    if (st != VLM_OK) return st;
    if (!strcmp(type, "Sequence")) {
        p->kind = PRE_SEQUENCE;
        const cJSON *a;
        size_t cnt;
        if ((st = jarray(o, "pretokenizers", path, &a, &cnt, err)) != VLM_OK) return st;
        if (cnt && !(p->sub = VLM_NEW_ARRAY(tok_pretok, cnt, VLM_MEM_OTHER)))
            return nomem(err, path);
        p->n_sub = cnt;
        size_t i = 0;
        for (const cJSON *c = a->child; c && st == VLM_OK; c = c->next, i++) {
            char q[PATH_MAX_LEN];
            snprintf(q, sizeof q, "%s.pretokenizers[%zu]", path, i);
            st = parse_pre(c, q, &p->sub[i], err);
        }
        return st;
    }
    if (!strcmp(type, "Metaspace")) {
        p->kind = PRE_METASPACE;
        p->split = true;
        if ((st = jchar(o, "replacement", path, 0x2581, &p->replacement, err)) != VLM_OK) return st;
        p->rep_len = tok_utf8_encode(p->replacement, p->rep);
        if ((st = jbool(o, "split", path, &p->split, err)) != VLM_OK) return st;
        return parse_scheme(o, path, &p->scheme, err);
    }
    if (!strcmp(type, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = p->use_regex = true;
        if ((st = jbool(o, "add_prefix_space", path, &p->add_prefix_space, err)) != VLM_OK)
            return st;
        if ((st = jbool(o, "use_regex", path, &p->use_regex, err)) != VLM_OK) return st;
        if (!p->use_regex) return VLM_OK;
        return builtin_regex(TOK_GPT2_REGEX, path, &p->re, err);
    }
    if (!strcmp(type, "Split")) {
        p->kind = PRE_SPLIT;
        if ((st = jbool(o, "invert", path, &p->invert, err)) != VLM_OK) return st;
        if ((st = parse_behavior(o, path, SPLIT_REMOVED, &p->behavior, err)) != VLM_OK) return st;
        if (!jget(o, "behavior")) {
            char q[PATH_MAX_LEN];
            snprintf(q, sizeof q, "%s.behavior", path);
            return jerr(err, q, "missing%s", "");
        }
        return jpattern(o, path, &p->re, NULL, NULL, err);
    }
    if (!strcmp(type, "Digits")) {
        p->kind = PRE_DIGITS;
        return jbool(o, "individual_digits", path, &p->individual_digits, err);
    }
    if (!strcmp(type, "Whitespace")) {
        p->kind = PRE_WHITESPACE;
        return builtin_regex("\\w+|[^\\w\\s]+", path, &p->re, err);
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        p->kind = PRE_WHITESPACE_SPLIT;
        return VLM_OK;
    }
    if (!strcmp(type, "Punctuation")) {
        p->kind = PRE_PUNCTUATION;
        return parse_behavior(o, path, SPLIT_ISOLATED, &p->behavior, err);
    }
    if (!strcmp(type, "CharDelimiterSplit")) {
        p->kind = PRE_CHAR_DELIMITER;
        if (!jget(o, "delimiter")) {
            char q[PATH_MAX_LEN];
            snprintf(q, sizeof q, "%s.delimiter", path);
            return jerr(err, q, "missing%s", "");
        }
        return jchar(o, "delimiter", path, ' ', &p->delimiter, err);
    }
    if (!strcmp(type, "BertPreTokenizer")) {
        /* whitespace split (removed), then punctuation isolated */
        p->kind = PRE_SEQUENCE;
        if (!(p->sub = VLM_NEW_ARRAY(tok_pretok, 2, VLM_MEM_OTHER))) return nomem(err, path);
        p->n_sub = 2;
        p->sub[0].kind = PRE_WHITESPACE_SPLIT;
        p->sub[1].kind = PRE_PUNCTUATION;
        p->sub[1].behavior = SPLIT_ISOLATED;
        return VLM_OK;
    }
    return junsupported(err, path, type);
}

/* ---- decoders ---- */

static vlm_status parse_dec(const cJSON *o, const char *path, tok_dec *d, vlm_err *err) {
    const char *type;
    vlm_status st = jtype(o, path, &type, err);
    if (st != VLM_OK) return st;
    if (!strcmp(type, "Sequence")) {
        d->kind = DEC_SEQUENCE;
        const cJSON *a;
        size_t cnt;
        if ((st = jarray(o, "decoders", path, &a, &cnt, err)) != VLM_OK) return st;
        if (cnt && !(d->sub = VLM_NEW_ARRAY(tok_dec, cnt, VLM_MEM_OTHER))) return nomem(err, path);
        d->n_sub = cnt;
        size_t i = 0;
        for (const cJSON *c = a->child; c && st == VLM_OK; c = c->next, i++) {
            char q[PATH_MAX_LEN];
            snprintf(q, sizeof q, "%s.decoders[%zu]", path, i);
            st = parse_dec(c, q, &d->sub[i], err);
        }
        return st;
    }
    if (!strcmp(type, "Replace")) {
        d->kind = DEC_REPLACE;
        const char *c;
        if ((st = jstring(o, "content", path, true, &c, err)) != VLM_OK) return st;
        d->content_len = strlen(c);
        if (!(d->content = dupn(c, d->content_len))) return nomem(err, path);
        return jpattern(o, path, &d->re, NULL, NULL, err);
    }
    if (!strcmp(type, "ByteFallback")) {
        d->kind = DEC_BYTE_FALLBACK;
        return VLM_OK;
    }
    if (!strcmp(type, "Fuse")) {
        d->kind = DEC_FUSE;
        return VLM_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        d->kind = DEC_BYTE_LEVEL;
        return VLM_OK;
    }
    if (!strcmp(type, "Strip")) {
        d->kind = DEC_STRIP;
        int64_t a = 0, b = 0;
        if ((st = jchar(o, "content", path, ' ', &d->ch, err)) != VLM_OK) return st;
        if ((st = jint(o, "start", path, true, 0, 1 << 30, &a, err)) != VLM_OK) return st;
        if ((st = jint(o, "stop", path, true, 0, 1 << 30, &b, err)) != VLM_OK) return st;
        d->start = (size_t)a;
        d->stop = (size_t)b;
        return VLM_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        d->kind = DEC_METASPACE;
        if ((st = jchar(o, "replacement", path, 0x2581, &d->ch, err)) != VLM_OK) return st;
        return parse_scheme(o, path, &d->scheme, err);
    }
    return junsupported(err, path, type);
}

/* ---- post-processor ---- */

static vlm_status ids_append(int32_t **v, size_t *n, const int32_t *src, size_t k, bool front,
                             const char *path, vlm_err *err) {
    if (!k) return VLM_OK;
    int32_t *nv = vlm_realloc(*v, (*n + k) * sizeof(int32_t), VLM_MEM_OTHER);
    if (!nv) return nomem(err, path);
    if (front) {
        memmove(nv + k, nv, *n * sizeof(int32_t));
        memcpy(nv, src, k * sizeof(int32_t));
    } else
        memcpy(nv + *n, src, k * sizeof(int32_t));
    *v = nv;
    *n += k;
    return VLM_OK;
}

static vlm_status template_ids(const cJSON *specials, const char *name, const char *path,
                               tok_ids *out, vlm_err *err) {
    const cJSON *sp = jget(specials, name);
    char q[PATH_MAX_LEN];
    snprintf(q, sizeof q, "%s.special_tokens", path);
    if (!sp) return jerr(err, q, "no entry for \"%s\"", name);
    const cJSON *ids = jget(sp, "ids");
    if (!cJSON_IsArray(ids)) return jerr(err, q, "\"%s\".ids must be an array", name);
    vlm_status st = VLM_OK;
    for (const cJSON *c = ids->child; c && st == VLM_OK; c = c->next) {
        if (!cJSON_IsNumber(c) || c->valuedouble < 0 || c->valuedouble >= TOK_MAX_ID)
            return jerr(err, q, "\"%s\".ids must hold token ids", name);
        st = tok_ids_push(out, (int32_t)c->valuedouble, err);
    }
    return st;
}

static vlm_status parse_post(const cJSON *o, const char *path, tokenizer *t, vlm_err *err) {
    const char *type;
    vlm_status st = jtype(o, path, &type, err);
    if (st != VLM_OK) return st;
    t->has_post = true;
    if (!strcmp(type, "Sequence")) {
        const cJSON *a;
        size_t cnt, i = 0;
        if ((st = jarray(o, "processors", path, &a, &cnt, err)) != VLM_OK) return st;
        for (const cJSON *c = a->child; c && st == VLM_OK; c = c->next, i++) {
            char q[PATH_MAX_LEN];
            snprintf(q, sizeof q, "%s.processors[%zu]", path, i);
            st = parse_post(c, q, t, err);
        }
        return st;
    }
    if (!strcmp(type, "ByteLevel")) return VLM_OK; /* offsets only */
    tok_ids pre = {0}, post = {0};
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = jget(o, "single"), *specials = jget(o, "special_tokens");
        char q[PATH_MAX_LEN];
        snprintf(q, sizeof q, "%s.single", path);
        if (!cJSON_IsArray(single)) return jerr(err, q, "must be an array%s", "");
        bool seen_a = false;
        size_t i = 0;
        for (const cJSON *c = single->child; c && st == VLM_OK; c = c->next, i++) {
            const cJSON *sp = jget(c, "SpecialToken"), *sq = jget(c, "Sequence");
            snprintf(q, sizeof q, "%s.single[%zu]", path, i);
            if (sp) {
                const char *id;
                if ((st = jstring(sp, "id", q, true, &id, err)) != VLM_OK) break;
                st = template_ids(specials, id, path, seen_a ? &post : &pre, err);
            } else if (sq) {
                const char *id;
                if ((st = jstring(sq, "id", q, true, &id, err)) != VLM_OK) break;
                if (strcmp(id, "A") != 0 || seen_a) {
                    st = jerr(err, q, "only one sequence \"A\" is supported in single%s", "");
                    break;
                }
                seen_a = true;
            } else
                st = jerr(err, q, "must be SpecialToken or Sequence%s", "");
        }
        if (st == VLM_OK && !seen_a) st = jerr(err, path, "single has no sequence%s", "");
    } else if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        const cJSON *cls = jget(o, "cls"), *sep = jget(o, "sep");
        if (!cJSON_IsArray(cls) || cJSON_GetArraySize(cls) != 2 ||
            !cJSON_IsNumber(cJSON_GetArrayItem(cls, 1)) || !cJSON_IsArray(sep) ||
            cJSON_GetArraySize(sep) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(sep, 1)))
            return jerr(err, path, "cls and sep must be [token, id]%s", "");
        st = tok_ids_push(&pre, (int32_t)cJSON_GetArrayItem(cls, 1)->valuedouble, err);
        if (st == VLM_OK)
            st = tok_ids_push(&post, (int32_t)cJSON_GetArrayItem(sep, 1)->valuedouble, err);
    } else
        return junsupported(err, path, type);
    /* a later processor wraps the output of the earlier ones */
    if (st == VLM_OK) st = ids_append(&t->post_pre, &t->n_post_pre, pre.v, pre.n, true, path, err);
    if (st == VLM_OK)
        st = ids_append(&t->post_post, &t->n_post_post, post.v, post.n, false, path, err);
    tok_ids_free(&pre);
    tok_ids_free(&post);
    return st;
}

/* ---- model ---- */

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n) p *= 2;
    return p;
}

static vlm_status parse_model(const cJSON *o, bpe_model *m, vlm_err *err) {
    const char *path = "model";
    if (!cJSON_IsObject(o)) return jerr(err, path, "missing or not an object%s", "");
    const char *type;
    vlm_status st = jstring(o, "type", path, false, &type, err);
    if (st != VLM_OK) return st;
    if (type && strcmp(type, "BPE") != 0) return junsupported(err, path, type);
    const cJSON *dropout = jget(o, "dropout");
    if (dropout && (!cJSON_IsNumber(dropout) || dropout->valuedouble != 0.0))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "tokenizer.json: model.dropout: BPE dropout is not supported");
    const cJSON *vocab = jget(o, "vocab");
    if (!cJSON_IsObject(vocab)) return jerr(err, "model.vocab", "missing or not an object%s", "");
    size_t count = 0, bytes = 0;
    int32_t max_id = -1;
    for (const cJSON *c = vocab->child; c; c = c->next) {
        if (!cJSON_IsNumber(c) || c->valuedouble < 0 || c->valuedouble >= TOK_MAX_ID ||
            c->valuedouble != (double)(int32_t)c->valuedouble)
            return jerr(err, "model.vocab", "id of \"%s\" is not an integer in [0, 2^24)",
                        c->string);
        size_t l = strlen(c->string);
        if (l >= UINT32_MAX / 2) return jerr(err, "model.vocab", "token too long%s", "");
        bytes += l;
        count++;
        if ((int32_t)c->valuedouble > max_id) max_id = (int32_t)c->valuedouble;
    }
    m->n_ids = max_id + 1;
    m->pool = vlm_alloc(bytes + 1, VLM_MEM_OTHER);
    m->str_off = VLM_NEW_ARRAY(uint32_t, (size_t)m->n_ids + 1, VLM_MEM_OTHER);
    m->str_len = VLM_NEW_ARRAY(uint32_t, (size_t)m->n_ids + 1, VLM_MEM_OTHER);
    m->vtab_mask = pow2_at_least(count * 2) - 1;
    m->vtab = VLM_NEW_ARRAY(int32_t, m->vtab_mask + 1, VLM_MEM_OTHER);
    if (!m->pool || !m->str_off || !m->str_len || !m->vtab) return nomem(err, "model.vocab");
    for (int32_t i = 0; i < m->n_ids; i++) m->str_len[i] = UINT32_MAX;
    memset(m->vtab, 0xff, (m->vtab_mask + 1) * sizeof(int32_t));
    for (const cJSON *c = vocab->child; c; c = c->next) {
        int32_t id = (int32_t)c->valuedouble;
        size_t l = strlen(c->string);
        int32_t old = bpe_vocab_get(m, c->string, l);
        m->str_off[id] = (uint32_t)m->pool_len;
        m->str_len[id] = (uint32_t)l;
        memcpy(m->pool + m->pool_len, c->string, l);
        m->pool_len += l;
        if (old >= 0) { /* repeated key: the last one wins */
            for (size_t i = (size_t)tok_hash(c->string, l) & m->vtab_mask;;
                 i = (i + 1) & m->vtab_mask)
                if (m->vtab[i] == old) {
                    m->vtab[i] = id;
                    break;
                }
            continue;
        }
        size_t i = (size_t)tok_hash(c->string, l) & m->vtab_mask;
        while (m->vtab[i] >= 0) i = (i + 1) & m->vtab_mask;
        m->vtab[i] = id;
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        m->ascii_id[c] = bpe_vocab_get(m, &ch, 1);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_id[b] = bpe_vocab_get(m, name, 6);
    }
    m->fuse_unk = false;
    if ((st = jbool(o, "byte_fallback", path, &m->byte_fallback, err)) != VLM_OK) return st;
    if ((st = jbool(o, "fuse_unk", path, &m->fuse_unk, err)) != VLM_OK) return st;
    if ((st = jbool(o, "ignore_merges", path, &m->ignore_merges, err)) != VLM_OK) return st;
    const char *s;
    m->unk_id = -1;
    if ((st = jstring(o, "unk_token", path, false, &s, err)) != VLM_OK) return st;
    if (s) {
        m->unk_id = bpe_vocab_get(m, s, strlen(s));
        m->unk_missing = m->unk_id < 0;
    }
    if ((st = jstring(o, "continuing_subword_prefix", path, false, &s, err)) != VLM_OK) return st;
    if (s) {
        m->cont_prefix_len = strlen(s);
        if (!(m->cont_prefix = dupn(s, m->cont_prefix_len))) return nomem(err, path);
    }
    if ((st = jstring(o, "end_of_word_suffix", path, false, &s, err)) != VLM_OK) return st;
    if (s) {
        m->eow_suffix_len = strlen(s);
        if (!(m->eow_suffix = dupn(s, m->eow_suffix_len))) return nomem(err, path);
    }
    if (m->cont_prefix_len + m->eow_suffix_len > 256)
        return jerr(err, path, "continuing_subword_prefix/end_of_word_suffix too long%s", "");
    /* merges */
    const cJSON *merges = jget(o, "merges");
    if (!cJSON_IsArray(merges)) return jerr(err, "model.merges", "missing or not an array%s", "");
    size_t nm = (size_t)cJSON_GetArraySize(merges);
    m->mtab_mask = pow2_at_least(nm * 2) - 1;
    if (!(m->mtab = VLM_NEW_ARRAY(merge_ent, m->mtab_mask + 1, VLM_MEM_OTHER)))
        return nomem(err, "model.merges");
    char *buf = NULL;
    size_t buf_cap = 0, i = 0;
    uint32_t rank = 0;
    for (const cJSON *c = merges->child; c; c = c->next, i++) {
        char q[PATH_MAX_LEN];
        snprintf(q, sizeof q, "model.merges[%zu]", i);
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(c)) {
            const char *line = c->valuestring;
            if (!strncmp(line, "#version", 8)) continue;
            const char *sp = strchr(line, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = jerr(err, q, "must be \"a b\" (two tokens, one space)%s", "");
                break;
            }
            a = line;
            al = (size_t)(sp - line);
            b = sp + 1;
            bl = strlen(b);
        } else if (cJSON_IsArray(c) && cJSON_GetArraySize(c) == 2 && cJSON_IsString(c->child) &&
                   cJSON_IsString(c->child->next)) {
            a = c->child->valuestring;
            al = strlen(a);
            b = c->child->next->valuestring;
            bl = strlen(b);
        } else {
            st = jerr(err, q, "must be \"a b\" or [\"a\", \"b\"]%s", "");
            break;
        }
        int32_t ia = bpe_vocab_get(m, a, al), ib = bpe_vocab_get(m, b, bl);
        if (ia < 0 || ib < 0) {
            char tokname[64];
            snprintf(tokname, sizeof tokname, "%.*s", (int)(ia < 0 ? al : bl), ia < 0 ? a : b);
            st = jerr(err, q, "token \"%s\" is not in model.vocab", tokname);
            break;
        }
        if (bl < m->cont_prefix_len) {
            st = jerr(err, q, "second token shorter than continuing_subword_prefix%s", "");
            break;
        }
        size_t nl = al + bl - m->cont_prefix_len;
        if (nl > buf_cap) {
            char *nb = vlm_realloc(buf, nl * 2 + 16, VLM_MEM_SCRATCH);
            if (!nb) {
                st = nomem(err, q);
                break;
            }
            buf = nb;
            buf_cap = nl * 2 + 16;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b + m->cont_prefix_len, bl - m->cont_prefix_len);
        int32_t inew = bpe_vocab_get(m, buf, nl);
        if (inew < 0) {
            char tokname[64];
            snprintf(tokname, sizeof tokname, "%.*s", (int)(nl > 60 ? 60 : nl), buf);
            st = jerr(err, q, "merged token \"%s\" is not in model.vocab", tokname);
            break;
        }
        bpe_merge_put(m, ia, ib, rank++, inew);
    }
    vlm_free(buf);
    if (st != VLM_OK) return st;
    bpe_check_meta_split(m);
    /* the word cache */
    m->cache_slots = 8192;
    if (!(m->cache = VLM_NEW_ARRAY(cache_ent *, m->cache_slots, VLM_MEM_OTHER)))
        return nomem(err, "model");
    pthread_mutex_init(&m->cache_lock, NULL);
    return VLM_OK;
}

/* ---- added tokens ---- */

static vlm_status parse_added(const cJSON *arr, tokenizer *t, vlm_err *err) {
    if (!arr) return VLM_OK;
    if (!cJSON_IsArray(arr)) return jerr(err, "added_tokens", "must be an array%s", "");
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (n && !(t->added = VLM_NEW_ARRAY(added_tok, n, VLM_MEM_OTHER)))
        return nomem(err, "added_tokens");
    size_t i = 0;
    vlm_status st = VLM_OK;
    for (const cJSON *c = arr->child; c && st == VLM_OK; c = c->next, i++) {
        char q[PATH_MAX_LEN];
        snprintf(q, sizeof q, "added_tokens[%zu]", i);
        if (!cJSON_IsObject(c)) return jerr(err, q, "must be an object%s", "");
        int64_t id = 0;
        const char *content;
        if ((st = jint(c, "id", q, true, 0, TOK_MAX_ID - 1, &id, err)) != VLM_OK) break;
        if ((st = jstring(c, "content", q, true, &content, err)) != VLM_OK) break;
        if (!*content) continue; /* HF ignores empty tokens */
        added_tok *a = &t->added[t->n_added];
        a->normalized = true;
        if ((st = jbool(c, "special", q, &a->special, err)) != VLM_OK ||
            (st = jbool(c, "lstrip", q, &a->lstrip, err)) != VLM_OK ||
            (st = jbool(c, "rstrip", q, &a->rstrip, err)) != VLM_OK ||
            (st = jbool(c, "normalized", q, &a->normalized, err)) != VLM_OK ||
            (st = jbool(c, "single_word", q, &a->single_word, err)) != VLM_OK)
            break;
        a->id = (int32_t)id;
        a->len = strlen(content);
        if (!(a->content = dupn(content, a->len))) return nomem(err, q);
        t->n_added++;
    }
    return st;
}

static vlm_status build_added(tokenizer *t, vlm_err *err) {
    int32_t n_ids = t->bpe.n_ids;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > n_ids) n_ids = t->added[i].id + 1;
    t->n_ids = n_ids;
    if (n_ids) {
        t->added_by_id = VLM_NEW_ARRAY(int32_t, (size_t)n_ids, VLM_MEM_OTHER);
        t->special = VLM_NEW_ARRAY(uint8_t, (size_t)n_ids, VLM_MEM_OTHER);
        if (!t->added_by_id || !t->special) return nomem(err, "added_tokens");
        for (int32_t i = 0; i < n_ids; i++) t->added_by_id[i] = -1;
    }
    vlm_status st = VLM_OK;
    nbuf in = {0}, out = {0};
    for (size_t i = 0; i < t->n_added && st == VLM_OK; i++) {
        added_tok *a = &t->added[i];
        t->added_by_id[a->id] = (int32_t)i;
        if (a->special) {
            /* decode skips by string: any id whose string is this token */
            t->special[a->id] = 1;
            int32_t mid = bpe_vocab_get(&t->bpe, a->content, a->len);
            if (mid >= 0) t->special[mid] = 1;
        }
        if (!a->normalized || !t->norm) {
            st = tok_trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, a->content, a->len,
                              (int32_t)i, err);
            continue;
        }
        in.len = 0;
        if ((st = nbuf_put(&in, a->content, a->len, 0, err)) != VLM_OK) break;
        if ((st = tok_normalize(t->norm, &in, &out, err)) != VLM_OK) break;
        st = tok_trie_add(&t->trie_norm, out.s, out.len, (int32_t)i, err);
    }
    nbuf_free(&in);
    nbuf_free(&out);
    return st;
}

/* ---- load / free ---- */

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    bpe_free(&t->bpe);
    if (t->norm) tok_norm_free(t->norm);
    vlm_free(t->norm);
    if (t->pre) tok_pretok_free(t->pre);
    vlm_free(t->pre);
    if (t->dec) tok_dec_free(t->dec);
    vlm_free(t->dec);
    for (size_t i = 0; i < t->n_added; i++) vlm_free(t->added[i].content);
    vlm_free(t->added);
    vlm_free(t->added_by_id);
    vlm_free(t->special);
    vlm_free(t->trie_raw.nodes);
    vlm_free(t->trie_norm.nodes);
    vlm_free(t->post_pre);
    vlm_free(t->post_post);
    vlm_free(t);
}

static vlm_status load_root(const cJSON *root, tokenizer *t, vlm_err *err) {
    if (!cJSON_IsObject(root)) return jerr(err, "(root)", "must be an object%s", "");
    vlm_status st = parse_model(jget(root, "model"), &t->bpe, err);
    if (st != VLM_OK) return st;
    const cJSON *o;
    if ((o = jget(root, "normalizer"))) {
        if (!(t->norm = VLM_NEW_ARRAY(tok_norm, 1, VLM_MEM_OTHER))) return nomem(err, "normalizer");
        if ((st = parse_norm(o, "normalizer", t->norm, err)) != VLM_OK) return st;
    }
    if ((o = jget(root, "pre_tokenizer"))) {
        if (!(t->pre = VLM_NEW_ARRAY(tok_pretok, 1, VLM_MEM_OTHER)))
            return nomem(err, "pre_tokenizer");
        if ((st = parse_pre(o, "pre_tokenizer", t->pre, err)) != VLM_OK) return st;
    }
    if ((o = jget(root, "decoder"))) {
        if (!(t->dec = VLM_NEW_ARRAY(tok_dec, 1, VLM_MEM_OTHER))) return nomem(err, "decoder");
        if ((st = parse_dec(o, "decoder", t->dec, err)) != VLM_OK) return st;
    }
    if ((o = jget(root, "post_processor")) && (st = parse_post(o, "post_processor", t, err)))
        return st;
    if (jget(root, "truncation") || jget(root, "padding"))
        VLM_WARN("tokenizer.json: truncation/padding settings are ignored");
    if ((st = parse_added(jget(root, "added_tokens"), t, err)) != VLM_OK) return st;
    return build_added(t, err);
}

/* cJSON keeps strings NUL-terminated: a "\u0000" escape inside a token
 * would silently cut it. Such files are refused instead. */
static bool has_nul_escape(const char *json, size_t len) {
    for (const char *p = json; (p = memmem(p, len - (size_t)(p - json), "\\u0000", 6)) != NULL;
         p++) {
        size_t bs = 0;
        while (p - (ptrdiff_t)bs > json && p[-(ptrdiff_t)bs - 1] == '\\') bs++;
        if (bs % 2 == 0) return true; /* the backslash itself is not escaped */
    }
    return false;
}

vlm_status tokenizer_load_json(const char *json, size_t len, const char *what, tokenizer **out,
                               vlm_err *err) {
    *out = NULL;
    if (has_nul_escape(json, len))
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "%s: a string holds \\u0000 (NUL inside a token is not supported)",
                           what);
    cJSON *root = NULL;
    vlm_mem_stats before, after;
    vlm_alloc_get_stats(&before);
    /* The tree lives only until the tables are built: parse it into a bump
     * arena (a dozen 1 MiB chunks for Phi-3's 220,000 nodes and strings
     * instead of one allocation each), dropped whole below. */
    vlm_json_scope scope;
    vlm_json_scope_begin(&scope, 0);
    vlm_status st = vlm_json_parse(json, len, what, &root, err);
    if (st != VLM_OK) {
        vlm_json_scope_end(&scope);
        /* cJSON reports a failed allocation as a syntax error */
        vlm_alloc_get_stats(&after);
        if (after.failed_count != before.failed_count)
            return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory while parsing", what);
        return st;
    }
    tokenizer *t = vlm_calloc(1, sizeof *t, VLM_MEM_OTHER);
    if (!t) {
        vlm_json_scope_end(&scope);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", what);
    }
    st = load_root(root, t, err);
    vlm_json_scope_end(&scope);
    if (st != VLM_OK) {
        if (err && strncmp(err->msg, "tokenizer.json: ", 16) == 0 && strcmp(what, "tokenizer.json"))
            vlm_err_prefix(err, "%s", what);
        tokenizer_free(t);
        return st;
    }
    *out = t;
    return VLM_OK;
}

vlm_status tokenizer_load(const char *path, tokenizer **out, vlm_err *err) {
    char full[4096];
    *out = NULL;
    if (vlm_file_is_dir(path)) {
        if ((size_t)snprintf(full, sizeof full, "%s/tokenizer.json", path) >= sizeof full)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: path too long", path);
        path = full;
    }
    char *buf = NULL;
    size_t len = 0;
    vlm_status st = vlm_file_read_all(path, (size_t)1 << 30, VLM_MEM_OTHER, &buf, &len, err);
    if (st != VLM_OK) return st;
    st = tokenizer_load_json(buf, len, path, out, err);
    vlm_free(buf);
    return st;
}
