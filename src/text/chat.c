/* text/chat - see chat.h. */
#include "text/chat.h"

#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"

/* The chat_template of Phi-3-vision-128k-instruct / Phi-3.5-vision-instruct
 * tokenizer_config.json, verbatim (the file holds real newlines inside the
 * quotes). */
static const char PHI3V_TEMPLATE[] =
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + "
    "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != "
    "'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}";

/* Canonical form for comparison: whitespace outside string literals and
 * the whitespace-control dashes ({{- -}} {%- -%}) removed. Neither changes
 * what this template outputs: its only text is inside expressions. Quoted
 * text is kept byte for byte. */
static size_t canon(const char *s, char *o) {
    size_t n = 0;
    char q = 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (q) {
            if (c == '\\' && s[i + 1]) { /* a Jinja escape: '\\n' is a newline */
                char d = s[++i];
                if (d == 'n')
                    o[n++] = '\n';
                else {
                    o[n++] = c;
                    o[n++] = d;
                }
                continue;
            }
            if (c == q) q = 0;
            o[n++] = c;
            continue;
        }
        if (c == '\'' || c == '"') q = c;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        if (c == '-' && i > 0 && (s[i - 1] == '{' || s[i - 1] == '%') && n > 0 &&
            (o[n - 1] == '{' || o[n - 1] == '%'))
            continue;
        if (c == '-' && (s[i + 1] == '}' || s[i + 1] == '%')) continue;
        o[n++] = c;
    }
    o[n] = 0;
    return n;
}

static bool same_template(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *ca = vlm_alloc(la + 1, VLM_MEM_SCRATCH), *cb = vlm_alloc(lb + 1, VLM_MEM_SCRATCH);
    bool same = false;
    if (ca && cb) {
        canon(a, ca);
        canon(b, cb);
        same = strcmp(ca, cb) == 0;
    }
    vlm_free(ca);
    vlm_free(cb);
    return same;
}

vlm_status chat_template_detect(const char *tmpl, chat_format *out, vlm_err *err) {
    if (tmpl && same_template(tmpl, PHI3V_TEMPLATE)) {
        *out = CHAT_FORMAT_PHI3V;
        return VLM_OK;
    }
    return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                       "chat_template: not a template we know (only the Phi-3-vision template "
                       "\"<|role|>\\n...<|end|>\\n\" is implemented)");
}

vlm_status chat_template_load(const char *path, chat_format *out, vlm_err *err) {
    char full[4096];
    if (vlm_file_is_dir(path)) {
        if ((size_t)snprintf(full, sizeof full, "%s/tokenizer_config.json", path) >= sizeof full)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: path too long", path);
        path = full;
    }
    cJSON *root = NULL;
    vlm_status st = vlm_json_parse_file(path, &root, err);
    if (st != VLM_OK) return st;
    const char *tmpl = NULL;
    st = vlm_json_get_string(root, "chat_template", path, &tmpl, err);
    if (st == VLM_OK) {
        st = chat_template_detect(tmpl, out, err);
        if (st != VLM_OK) vlm_err_prefix(err, "%s", path);
    }
    cJSON_Delete(root);
    return st;
}

vlm_status chat_render(chat_format fmt, const chat_msg *msgs, size_t n, bool add_generation_prompt,
                       char **out, size_t *out_len, vlm_err *err) {
    *out = NULL;
    *out_len = 0;
    if (fmt != CHAT_FORMAT_PHI3V)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "chat_render: unknown format %d", (int)fmt);
    if (n == 0) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "chat_render: no messages");
    size_t total = 1;
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "chat_render: message %zu: %s is NULL", i,
                               msgs[i].role ? "content" : "role");
        total += strlen(msgs[i].role) + strlen(msgs[i].content) + 16;
    }
    total += 16;
    char *s = vlm_alloc(total, VLM_MEM_OTHER);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "chat_render: out of memory");
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, total - len, "<|%s|>\n%s<|end|>\n", msgs[i].role,
                                msgs[i].content);
    if (add_generation_prompt && strcmp(msgs[n - 1].role, "assistant") != 0)
        len += (size_t)snprintf(s + len, total - len, "<|assistant|>\n");
    *out = s;
    *out_len = len;
    return VLM_OK;
}

/* <|image_N|> at p (N ASCII digits); returns its length, 0 if none. */
static size_t image_tag(const char *p, size_t n, long *num) {
    if (n < 11 || memcmp(p, "<|image_", 8) != 0) return 0;
    size_t i = 8;
    long v = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9') {
        if (v < 100000000) v = v * 10 + (p[i] - '0');
        i++;
    }
    if (i == 8 || i + 2 > n || p[i] != '|' || p[i + 1] != '>') return 0;
    *num = v;
    return i + 2;
}

vlm_status chat_prompt_to_ids(const tokenizer *t, const char *prompt, size_t len,
                              const int32_t *num_img_tokens, size_t n_images, tok_ids *out,
                              vlm_err *err) {
    return chat_turn_to_ids(t, prompt, len, true, 0, num_img_tokens, n_images, out, err);
}

vlm_status chat_turn_to_ids(const tokenizer *t, const char *prompt, size_t len, bool first_bos,
                            size_t image_base, const int32_t *num_img_tokens, size_t n_images,
                            tok_ids *out, vlm_err *err) {
    size_t chunk = 0, seen = 0;
    vlm_status st = VLM_OK;
    for (size_t i = 0; i <= len && st == VLM_OK;) {
        long num = 0;
        size_t tl = i < len ? image_tag(prompt + i, len - i, &num) : 0;
        if (i < len && !tl) {
            i++;
            continue;
        }
        /* a chunk ends here (at a tag or at the end): encode it with BOS */
        /* every chunk but a continuing turn's first one starts with BOS */
        bool bos = first_bos || chunk > 0;
        if ((st = tokenizer_encode(t, prompt + chunk, i - chunk, bos, out, err)) != VLM_OK) break;
        if (i == len) break;
        long want = (long)(image_base + seen + 1);
        if (num != want || seen >= n_images) {
            if (seen >= n_images || num <= (long)image_base || (size_t)num > image_base + n_images)
                return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                                   "prompt: image tag <|image_%ld|> at byte %zu but %zu image%s "
                                   "given",
                                   num, i, n_images, n_images == 1 ? "" : "s");
            return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                               "prompt: image tag <|image_%ld|> at byte %zu: tags must be "
                               "<|image_%zu|>..<|image_%zu|>, each once, in order",
                               num, i, image_base + 1, image_base + n_images);
        }
        if (num_img_tokens[seen] < 0)
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "prompt: image %zu: negative token count",
                               image_base + seen + 1);
        for (int32_t k = 0; k < num_img_tokens[seen] && st == VLM_OK; k++)
            st = tok_ids_push(out, -(int32_t)(image_base + seen + 1), err);
        seen++;
        i += tl;
        chunk = i;
    }
    if (st == VLM_OK && seen != n_images)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "prompt: %zu image%s given but %zu <|image_N|> tag%s in the prompt",
                           n_images, n_images == 1 ? "" : "s", seen, seen == 1 ? "" : "s");
    return st;
}

vlm_status chat_stops_init(chat_stops *s, const int32_t *ids, size_t n, vlm_err *err) {
    s->n = 0;
    for (size_t i = 0; i < n; i++) {
        if (chat_is_stop(s, ids[i])) continue;
        if (s->n == CHAT_MAX_STOPS)
            return vlm_err_set(err, VLM_ERR_LIMIT, "stop tokens: more than %d", CHAT_MAX_STOPS);
        s->ids[s->n++] = ids[i];
    }
    return VLM_OK;
}

vlm_status chat_stops_from_generation_config(const char *json, size_t len, chat_stops *s,
                                             vlm_err *err) {
    cJSON *root = NULL;
    vlm_status st = vlm_json_parse(json, len, "generation_config.json", &root, err);
    if (st != VLM_OK) return st;
    s->n = 0;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    int32_t ids[CHAT_MAX_STOPS];
    size_t n = 0;
    if (cJSON_IsNumber(e))
        ids[n++] = (int32_t)e->valuedouble;
    else if (cJSON_IsArray(e)) {
        for (const cJSON *c = e->child; c; c = c->next) {
            if (!cJSON_IsNumber(c) || n == CHAT_MAX_STOPS) {
                st = vlm_err_set(err, VLM_ERR_FORMAT,
                                 "generation_config.json: eos_token_id must hold at most %d ids",
                                 CHAT_MAX_STOPS);
                break;
            }
            ids[n++] = (int32_t)c->valuedouble;
        }
    } else
        st = vlm_err_set(err, VLM_ERR_FORMAT,
                         "generation_config.json: eos_token_id missing or not an id / id list");
    cJSON_Delete(root);
    if (st != VLM_OK) return st;
    return chat_stops_init(s, ids, n, err);
}

bool chat_is_stop(const chat_stops *s, int32_t id) {
    for (size_t i = 0; i < s->n; i++)
        if (s->ids[i] == id) return true;
    return false;
}
