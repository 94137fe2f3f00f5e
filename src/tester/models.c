/* tester/models - parsing and validating the models file. */
#include "tester/models.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"

static const char *const crash_names[] = {"none", "abort", "oom", "hang", "leak_bytes"};

const char *tester_crash_mode_name(tester_crash_mode m) {
    return (unsigned)m < sizeof crash_names / sizeof crash_names[0] ? crash_names[m] : "?";
}

bool tester_parse_size(const char *s, uint64_t *out) {
    if (!s || !*s) return false;
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return false;
    double mul = 1;
    while (*end == ' ') end++;
    switch (toupper((unsigned char)*end)) {
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'M':
        mul = 1024.0 * 1024;
        end++;
        break;
    case 'G':
        mul = 1024.0 * 1024 * 1024;
        end++;
        break;
    case 'T':
        mul = 1024.0 * 1024 * 1024 * 1024;
        end++;
        break;
    default:
        break;
    }
    if (mul > 1 && (*end == 'i' || *end == 'I')) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return false;
    double b = v * mul;
    if (b > 1.8e19) return false;
    *out = (uint64_t)b;
    return true;
}

static vlm_status get_size(const cJSON *o, const char *key, const char *where, uint64_t *out,
                           vlm_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it)) return VLM_OK;
    if (cJSON_IsNumber(it) && it->valuedouble >= 0) {
        *out = (uint64_t)it->valuedouble;
        return VLM_OK;
    }
    if (cJSON_IsString(it) && tester_parse_size(it->valuestring, out)) return VLM_OK;
    return vlm_err_set(err, VLM_ERR_FORMAT,
                       "%s: \"%s\" must be a byte count or a size such as \"8G\"", where, key);
}

static vlm_status get_small_int(const cJSON *o, const char *key, const char *where, int lo, int hi,
                                int *out, vlm_err *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it)) return VLM_OK;
    if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int64_t)it->valuedouble ||
        it->valuedouble < lo || it->valuedouble > hi)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"%s\" must be an integer in %d..%d", where,
                           key, lo, hi);
    *out = (int)it->valuedouble;
    return VLM_OK;
}

static vlm_status parse_opts(const cJSON *o, const char *where, tester_model_opts *opts,
                             vlm_err *err) {
    static const char *const known[] = {
        "device",    "precision",  "num_crops",       "max_context",    "mem_budget", "mem_limit",
        "n_threads", "test_crash", "test_leak_bytes", "gpu_mem_budget", NULL};
    memset(opts, 0, sizeof *opts);
    snprintf(opts->device, sizeof opts->device, "auto");
    if (!o || cJSON_IsNull(o)) return VLM_OK;
    if (!cJSON_IsObject(o))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"options\" must be an object", where);
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        bool ok = false;
        for (const char *const *k = known; *k; k++) ok = ok || strcmp(*k, it->string) == 0;
        if (!ok)
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: unknown option \"%s\"", where, it->string);
    }
    vlm_status st;
    const char *s = NULL;
    if ((st = vlm_json_get_string_opt(o, "device", where, &s, err))) return st;
    if (s) {
        if (strcmp(s, "auto") && strcmp(s, "cpu") && strcmp(s, "cuda"))
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"device\" must be \"auto\", \"cpu\" or \"cuda\", not \"%s\"",
                               where, s);
        snprintf(opts->device, sizeof opts->device, "%s", s);
    }
    s = NULL;
    if ((st = vlm_json_get_string_opt(o, "precision", where, &s, err))) return st;
    if (s) {
        static const char *const precs[] = {"f32",  "bf16", "f16",      "q8_0",
                                            "q4_0", "q4_K", "q4_0_all", NULL};
        bool ok = false;
        for (const char *const *p = precs; *p; p++) ok = ok || strcmp(*p, s) == 0;
        if (!ok)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"precision\" must be one of f32, bf16, f16, q8_0, q4_0, "
                               "q4_K, q4_0_all, not \"%s\"",
                               where, s);
        snprintf(opts->precision, sizeof opts->precision, "%s", s);
    }
    if ((st = get_small_int(o, "num_crops", where, 0, 64, &opts->num_crops, err))) return st;
    if ((st = get_small_int(o, "max_context", where, 0, 1 << 24, &opts->max_context, err)))
        return st;
    if ((st = get_small_int(o, "n_threads", where, 0, 4096, &opts->n_threads, err))) return st;
    if ((st = get_size(o, "mem_budget", where, &opts->mem_budget, err))) return st;
    if ((st = get_size(o, "gpu_mem_budget", where, &opts->gpu_mem_budget, err))) return st;
    if ((st = get_size(o, "mem_limit", where, &opts->mem_limit, err))) return st;
    if ((st = get_size(o, "test_leak_bytes", where, &opts->test_leak_bytes, err))) return st;
    s = NULL;
    if ((st = vlm_json_get_string_opt(o, "test_crash", where, &s, err))) return st;
    if (s) {
        int m = -1;
        for (int i = 1; i < (int)(sizeof crash_names / sizeof crash_names[0]); i++)
            if (strcmp(s, crash_names[i]) == 0) m = i;
        if (m < 0)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: \"test_crash\" must be \"abort\", \"oom\", \"hang\" or "
                               "\"leak_bytes\", not \"%s\"",
                               where, s);
        opts->test_crash = (tester_crash_mode)m;
        if (m == TESTER_CRASH_LEAK && !opts->test_leak_bytes) opts->test_leak_bytes = 64u << 20;
    }
    return VLM_OK;
}

/* org/name or org/name@rev: one slash, no spaces, not a path. */
static bool looks_like_hf_ref(const char *s) {
    if (s[0] == '/' || s[0] == '.' || s[0] == '~') return false;
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || strchr(slash + 1, '/') || !slash[1]) return false;
    for (const char *p = s; *p; p++)
        if (isspace((unsigned char)*p)) return false;
    return true;
}

/* The HF cache folder of a reference, if present: $HF_HUB_CACHE, else
 * $HF_HOME/hub, else ~/.cache/huggingface/hub; models--org--name. */
static bool hf_cache_has(const char *ref) {
    char base[2048];
    const char *hub = getenv("HF_HUB_CACHE");
    const char *home = getenv("HF_HOME");
    if (hub && *hub)
        snprintf(base, sizeof base, "%s", hub);
    else if (home && *home)
        snprintf(base, sizeof base, "%s/hub", home);
    else
        snprintf(base, sizeof base, "%s/.cache/huggingface/hub",
                 getenv("HOME") ? getenv("HOME") : "");
    char name[1024];
    size_t n = 0;
    for (const char *p = ref; *p && *p != '@' && n + 3 < sizeof name; p++) {
        if (*p == '/') {
            name[n++] = '-';
            name[n++] = '-';
        } else {
            name[n++] = *p;
        }
    }
    name[n] = '\0';
    char full[3200];
    snprintf(full, sizeof full, "%s/models--%s", base, name);
    return vlm_file_is_dir(full);
}

vlm_status tester_models_load(const char *path, tester_models **out, vlm_err *err) {
    *out = NULL;
    tester_models *m = VLM_NEW_ARRAY(tester_models, 1, VLM_MEM_OTHER);
    if (!m) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    vlm_status st = VLM_OK;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    m->path = vlm_strdup(path, VLM_MEM_OTHER);
    if (!m->path) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (!vlm_file_is_regular(path)) {
        st = vlm_err_set(err, VLM_ERR_NOT_FOUND,
                         "%s: models file not found (give one with --models FILE)", path);
        goto done;
    }
    if ((st = vlm_json_parse_file(path, &m->json, err))) goto done;
    const cJSON *list = m->json;
    if (cJSON_IsObject(list)) list = cJSON_GetObjectItemCaseSensitive(m->json, "models");
    if (!cJSON_IsArray(list)) {
        st = vlm_err_set(err, VLM_ERR_FORMAT,
                         "%s: expected {\"models\": [...]} or a top-level array", path);
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(list);
    if (n == 0) {
        st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: no models listed", path);
        goto done;
    }
    m->models = VLM_NEW_ARRAY(tester_model, n, VLM_MEM_OTHER);
    if (!m->models) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        char where[PATH_MAX + 64];
        snprintf(where, sizeof where, "%s: models[%zu]", path, m->n);
        tester_model *md = &m->models[m->n];
        if (!cJSON_IsObject(it)) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: must be an object", where);
            goto done;
        }
        const cJSON *k;
        cJSON_ArrayForEach(k, it) {
            if (strcmp(k->string, "name") && strcmp(k->string, "source") &&
                strcmp(k->string, "options") && strcmp(k->string, "note")) {
                st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: unknown key \"%s\"", where, k->string);
                goto done;
            }
        }
        if ((st = vlm_json_get_string(it, "name", where, &md->name, err))) goto done;
        if (!md->name[0] || strchr(md->name, '\n')) {
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"name\" must be non-empty", where);
            goto done;
        }
        snprintf(where, sizeof where, "%s: model \"%s\"", path, md->name);
        for (size_t j = 0; j < m->n; j++)
            if (strcasecmp(m->models[j].name, md->name) == 0) {
                st = vlm_err_set(err, VLM_ERR_FORMAT,
                                 "%s: the name is used twice (names ignore case)", where);
                goto done;
            }
        if ((st = vlm_json_get_string(it, "source", where, &md->source, err))) goto done;
        if ((st = parse_opts(cJSON_GetObjectItemCaseSensitive(it, "options"), where, &md->opts,
                             err)))
            goto done;
        m->n++;
        const char *src = md->source;
        char full[PATH_MAX * 2];
        if (src[0] == '/')
            snprintf(full, sizeof full, "%s", src);
        else
            snprintf(full, sizeof full, "%s/%s", dir, src);
        if (vlm_file_is_dir(full) || vlm_file_is_regular(full)) {
            md->is_path = true;
            md->resolved = vlm_strdup(full, VLM_MEM_OTHER);
        } else if (looks_like_hf_ref(src) && hf_cache_has(src)) {
            md->resolved = vlm_strdup(src, VLM_MEM_OTHER);
        } else {
            st = vlm_err_set(err, VLM_ERR_NOT_FOUND,
                             "%s: source \"%s\" not found (no file or folder at %s%s)", where, src,
                             full,
                             looks_like_hf_ref(src) ? ", and not in the Hugging Face cache" : "");
            goto done;
        }
        if (!md->resolved) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", where);
            goto done;
        }
    }
done:
    if (st)
        tester_models_free(m);
    else
        *out = m;
    return st;
}

void tester_models_free(tester_models *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) vlm_free(m->models[i].resolved);
    vlm_free(m->models);
    cJSON_Delete(m->json);
    vlm_free(m->path);
    vlm_free(m);
}

int tester_models_find(const tester_models *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (strcasecmp(m->models[i].name, name) == 0) return (int)i;
    return -1;
}

cJSON *tester_model_opts_json(const tester_model_opts *o) {
    vlm_json_init();
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "device", o->device);
    if (o->precision[0]) cJSON_AddStringToObject(j, "precision", o->precision);
    cJSON_AddNumberToObject(j, "num_crops", o->num_crops);
    cJSON_AddNumberToObject(j, "max_context", o->max_context);
    cJSON_AddNumberToObject(j, "mem_budget", (double)o->mem_budget);
    if (o->gpu_mem_budget) cJSON_AddNumberToObject(j, "gpu_mem_budget", (double)o->gpu_mem_budget);
    if (o->mem_limit) cJSON_AddNumberToObject(j, "mem_limit", (double)o->mem_limit);
    if (o->n_threads) cJSON_AddNumberToObject(j, "n_threads", o->n_threads);
    if (o->test_crash)
        cJSON_AddStringToObject(j, "test_crash", tester_crash_mode_name(o->test_crash));
    return j;
}
