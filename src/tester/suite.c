/* tester/suite - loading and validating suites. */
#include "tester/suite.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"

static bool key_known(const char *k, const char *const *known) {
    for (; *known; known++)
        if (strcmp(k, *known) == 0) return true;
    return false;
}

static vlm_status check_keys(const cJSON *obj, const char *const *known, const char *where,
                             vlm_err *err) {
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        if (!key_known(it->string, known))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: unknown key \"%s\"", where, it->string);
    }
    return VLM_OK;
}

static char *path_join(const char *dir, const char *rel) {
    size_t n = strlen(dir) + strlen(rel) + 2;
    char *p = vlm_alloc(n, VLM_MEM_OTHER);
    if (p) snprintf(p, n, "%s/%s", dir, rel);
    return p;
}

static void turn_free(tester_turn *t) {
    for (size_t i = 0; i < t->n_images; i++) vlm_free(t->images[i]);
    vlm_free(t->images);
    tester_score_spec_free(&t->score);
}

static const char *const turn_keys[] = {"images",    "prompt",     "expected", "scorer", "options",
                                        "tolerance", "max_tokens", "note",     NULL};
static const char *const single_keys[] = {"id",         "images",  "prompt", "expected",
                                          "scorer",     "options", "tags",   "tolerance",
                                          "max_tokens", "note",    NULL};
static const char *const context_keys[] = {"id", "turns", "tags", "note", NULL};

static vlm_status parse_turn(const tester_suite *s, const cJSON *obj, const char *where,
                             bool need_scorer, tester_turn *t, vlm_err *err) {
    memset(t, 0, sizeof *t);
    vlm_status st = check_keys(obj, need_scorer ? single_keys : turn_keys, where, err);
    if (st) return st;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    if (!cJSON_IsString(p) || !p->valuestring[0])
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"prompt\" must be a non-empty string", where);
    t->prompt = p->valuestring;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(obj, "max_tokens");
    if (mt) {
        if (!cJSON_IsNumber(mt) || mt->valuedouble < 1 || mt->valuedouble > 1e6)
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"max_tokens\" must be 1..1000000", where);
        t->max_tokens = (int)mt->valuedouble;
    }
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(obj, "images");
    if (imgs && !cJSON_IsNull(imgs)) {
        if (!cJSON_IsArray(imgs))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"images\" must be an array of paths",
                               where);
        int n = cJSON_GetArraySize(imgs);
        if (n > 0) {
            t->images = VLM_NEW_ARRAY(char *, (size_t)n, VLM_MEM_OTHER);
            if (!t->images) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", where);
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, imgs) {
            if (!cJSON_IsString(it) || !it->valuestring[0]) {
                turn_free(t);
                return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"images\" must hold paths", where);
            }
            const char *rel = it->valuestring;
            char *full = rel[0] == '/' ? vlm_strdup(rel, VLM_MEM_OTHER) : path_join(s->dir, rel);
            if (!full) {
                turn_free(t);
                return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", where);
            }
            t->images[t->n_images++] = full;
            if (!vlm_file_is_regular(full)) {
                vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: image \"%s\" not found (looked at %s)",
                            where, rel, full);
                turn_free(t);
                return VLM_ERR_NOT_FOUND;
            }
        }
    }
    if (need_scorer || cJSON_GetObjectItemCaseSensitive(obj, "scorer") ||
        cJSON_GetObjectItemCaseSensitive(obj, "expected")) {
        st = tester_score_spec_parse(obj, where, &t->score, err);
        if (st) {
            turn_free(t);
            return st;
        }
        t->scored = true;
        t->expected = cJSON_GetObjectItemCaseSensitive(obj, "expected");
    }
    return VLM_OK;
}

static void case_free(tester_case *c) {
    for (size_t i = 0; i < c->n_turns; i++) turn_free(&c->turns[i]);
    vlm_free(c->turns);
    cJSON_Delete(c->json);
}

/* Fill c from its parsed line (c->json set). */
static vlm_status parse_case(tester_suite *s, tester_case *c, const char *where, vlm_err *err) {
    const cJSON *j = c->json;
    if (!cJSON_IsObject(j))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: a case must be a JSON object", where);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
    if (!cJSON_IsString(id) || !id->valuestring[0] || strchr(id->valuestring, '\n'))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"id\" must be a non-empty string", where);
    c->id = id->valuestring;
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(j, "tags");
    if (tags) {
        const cJSON *it;
        bool ok = cJSON_IsArray(tags);
        cJSON_ArrayForEach(it, tags) ok = ok && cJSON_IsString(it);
        if (!ok)
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"tags\" must be an array of strings",
                               where);
        c->tags = tags;
    }
    const cJSON *turns = cJSON_GetObjectItemCaseSensitive(j, "turns");
    if (!s->context) {
        if (turns)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"turns\" belongs in a context suite (suite.json \"kind\": "
                               "\"context\")",
                               where);
        c->turns = VLM_NEW_ARRAY(tester_turn, 1, VLM_MEM_OTHER);
        if (!c->turns) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", where);
        vlm_status st = parse_turn(s, j, where, true, &c->turns[0], err);
        if (st) return st;
        c->n_turns = 1;
        return VLM_OK;
    }
    vlm_status st = check_keys(j, context_keys, where, err);
    if (st) return st;
    if (!cJSON_IsArray(turns) || cJSON_GetArraySize(turns) == 0)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: a context case needs \"turns\": a non-empty array", where);
    size_t n = (size_t)cJSON_GetArraySize(turns);
    c->turns = VLM_NEW_ARRAY(tester_turn, n, VLM_MEM_OTHER);
    if (!c->turns) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", where);
    const cJSON *it;
    size_t k = 0, n_scored = 0;
    cJSON_ArrayForEach(it, turns) {
        char w[700];
        snprintf(w, sizeof w, "%.600s: turn %zu", where, k + 1);
        if (!cJSON_IsObject(it))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: must be an object", w);
        st = parse_turn(s, it, w, false, &c->turns[k], err);
        if (st) return st;
        n_scored += c->turns[k].scored;
        c->n_turns = ++k;
    }
    if (n_scored == 0) return vlm_err_set(err, VLM_ERR_FORMAT, "%s: no turn has a scorer", where);
    return VLM_OK;
}

static vlm_status parse_meta(tester_suite *s, const char *path, vlm_err *err) {
    static const char *const keys[] = {"name", "description", "kind", "defaults", "version", NULL};
    static const char *const dkeys[] = {"max_tokens", "temperature", "system", NULL};
    vlm_status st = vlm_json_parse_file(path, &s->meta, err);
    if (st) return st;
    if (!cJSON_IsObject(s->meta))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: must be a JSON object", path);
    if ((st = check_keys(s->meta, keys, path, err))) return st;
    if ((st = vlm_json_get_string(s->meta, "name", path, &s->name, err))) return st;
    if (!s->name[0] || strchr(s->name, '/') || strchr(s->name, '\n'))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"name\" must be non-empty, without '/'",
                           path);
    s->description = "";
    if ((st = vlm_json_get_string_opt(s->meta, "description", path, &s->description, err)))
        return st;
    const char *kind = "single";
    if ((st = vlm_json_get_string_opt(s->meta, "kind", path, &kind, err))) return st;
    if (strcmp(kind, "context") == 0)
        s->context = true;
    else if (strcmp(kind, "single") != 0)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: \"kind\" must be \"single\" or \"context\", not \"%s\"", path,
                           kind);
    s->max_tokens = 128;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(s->meta, "defaults");
    if (d) {
        char w[700];
        snprintf(w, sizeof w, "%.600s: defaults", path);
        if (!cJSON_IsObject(d)) return vlm_err_set(err, VLM_ERR_FORMAT, "%s: must be an object", w);
        if ((st = check_keys(d, dkeys, w, err))) return st;
        int64_t mt = s->max_tokens;
        if ((st = vlm_json_get_int_opt(d, "max_tokens", w, &mt, err))) return st;
        if (mt < 1 || mt > 1000000)
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"max_tokens\" must be 1..1000000", w);
        s->max_tokens = (int)mt;
        if ((st = vlm_json_get_double_opt(d, "temperature", w, &s->temperature, err))) return st;
        if (s->temperature < 0)
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"temperature\" must be >= 0", w);
        if ((st = vlm_json_get_string_opt(d, "system", w, &s->system, err))) return st;
    }
    return VLM_OK;
}

vlm_status tester_suite_load(const char *dir, tester_suite **out, vlm_err *err) {
    *out = NULL;
    if (!vlm_file_is_dir(dir))
        return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: suite directory not found", dir);
    tester_suite *s = VLM_NEW_ARRAY(tester_suite, 1, VLM_MEM_OTHER);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", dir);
    char *meta_path = NULL, *cases_path = NULL, *text = NULL;
    vlm_status st = VLM_OK;
    s->dir = vlm_strdup(dir, VLM_MEM_OTHER);
    meta_path = path_join(dir, "suite.json");
    cases_path = path_join(dir, "cases.jsonl");
    if (!s->dir || !meta_path || !cases_path) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    if ((st = parse_meta(s, meta_path, err))) goto done;
    size_t len;
    if ((st = vlm_file_read_all(cases_path, (size_t)1 << 30, VLM_MEM_OTHER, &text, &len, err)))
        goto done;
    /* Count lines for the case array (an upper bound on cases). */
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    s->cases = VLM_NEW_ARRAY(tester_case, n_lines, VLM_MEM_OTHER);
    if (!s->cases) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", cases_path);
        goto done;
    }
    int line = 0;
    for (char *p = text; p < text + len || (p == text && len == 0);) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        char *end = nl ? nl : text + len;
        line++;
        char *q = p;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < end) {
            char where[600];
            snprintf(where, sizeof where, "%s:%d", cases_path, line);
            tester_case *c = &s->cases[s->n_cases];
            memset(c, 0, sizeof *c);
            c->line = line;
            vlm_err perr;
            vlm_err_clear(&perr);
            if ((st = vlm_json_parse(p, (size_t)(end - p), where, &c->json, &perr))) {
                vlm_err_set(err, st, "%s: malformed JSON line: %s", where, perr.msg);
                goto done;
            }
            s->n_cases++;
            if ((st = parse_case(s, c, where, err))) goto done;
            for (size_t k = 0; k + 1 < s->n_cases; k++) {
                if (strcmp(s->cases[k].id, c->id) == 0) {
                    st = vlm_err_set(err, VLM_ERR_FORMAT,
                                     "%s: duplicate case id \"%s\" (first on line %d)", where,
                                     c->id, s->cases[k].line);
                    goto done;
                }
            }
        }
        if (!nl) break;
        p = nl + 1;
    }
    if (s->n_cases == 0) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: the suite has no cases", cases_path);
        goto done;
    }
done:
    vlm_free(meta_path);
    vlm_free(cases_path);
    vlm_free(text);
    if (st)
        tester_suite_free(s);
    else
        *out = s;
    return st;
}

void tester_suite_free(tester_suite *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_cases; i++) case_free(&s->cases[i]);
    vlm_free(s->cases);
    cJSON_Delete(s->meta);
    vlm_free(s->dir);
    vlm_free(s);
}

vlm_status tester_suites_load(const char *const *dirs, size_t n, bool context, tester_suite ***out,
                              vlm_err *err) {
    *out = NULL;
    if (n == 0) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "no suites given");
    tester_suite **v = VLM_NEW_ARRAY(tester_suite *, n, VLM_MEM_OTHER);
    if (!v) return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory loading suites");
    vlm_status st = VLM_OK;
    for (size_t i = 0; i < n && !st; i++) {
        st = tester_suite_load(dirs[i], &v[i], err);
        if (st) break;
        if (v[i]->context != context) {
            st = vlm_err_set(err, VLM_ERR_INVALID_ARG,
                             "%s: suite \"%s\" is a %s suite; use `vlmtest %s` for it", dirs[i],
                             v[i]->name, v[i]->context ? "context" : "single-turn",
                             v[i]->context ? "context" : "run");
            break;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(v[k]->name, v[i]->name) == 0) {
                st = vlm_err_set(err, VLM_ERR_INVALID_ARG,
                                 "%s: suite name \"%s\" is also used by %s", dirs[i], v[i]->name,
                                 v[k]->dir);
                break;
            }
    }
    if (st) {
        tester_suites_free(v, n);
        return st;
    }
    *out = v;
    return VLM_OK;
}

void tester_suites_free(tester_suite **s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) tester_suite_free(s[i]);
    vlm_free(s);
}
