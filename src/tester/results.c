/* tester/results - run ids, the append-only results file, resume, shards. */
#include "tester/results.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "tester/tjson.h"

void tester_run_id_new(char *out, size_t size) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char t[32];
    strftime(t, sizeof t, "%Y%m%dT%H%M%SZ", &tm);
    /* Milliseconds and the pid keep two runs started in the same second apart. */
    snprintf(out, size, "%s-%03ld-%05d", t, ts.tv_nsec / 1000000, (int)getpid() % 100000);
}

vlm_status tester_mkdirs(const char *path, vlm_err *err) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return vlm_err_set(err, VLM_ERR_IO, "%s: cannot create: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return VLM_OK;
}

char *tester_case_key(const char *model, const char *suite, const char *case_id) {
    size_t n = strlen(model) + strlen(suite) + strlen(case_id) + 3;
    char *k = vlm_alloc(n, VLM_MEM_OTHER);
    if (!k) return NULL;
    snprintf(k, n, "%s\x1f%s\x1f%s", model, suite, case_id);
    for (char *p = k; *p && *p != '\x1f'; p++) *p = (char)tolower((unsigned char)*p);
    return k;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Parse the file's text into records; a last line without '\n' is torn
 * (the writer died in it) and is skipped; *good_len is the length of the
 * complete part. */
static vlm_status parse_records(const char *path, const char *text, size_t len, cJSON *arr,
                                size_t *good_len, vlm_err *err) {
    int line = 0;
    size_t p = 0;
    *good_len = 0;
    while (p < len) {
        const char *nl = memchr(text + p, '\n', len - p);
        line++;
        if (!nl) break; /* torn */
        size_t e = (size_t)(nl - text);
        if (e > p) {
            char where[PATH_MAX + 32];
            snprintf(where, sizeof where, "%s:%d", path, line);
            cJSON *rec;
            vlm_status st = vlm_json_parse(text + p, e - p, where, &rec, err);
            if (st) return st;
            tjson_push(arr, rec);
        }
        p = e + 1;
        *good_len = p;
    }
    return VLM_OK;
}

vlm_status tester_results_read(const char *dir, cJSON **out, vlm_err *err) {
    *out = NULL;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    char *text;
    size_t len, good;
    vlm_status st = vlm_file_read_all(path, 0, VLM_MEM_OTHER, &text, &len, err);
    if (st) return st;
    vlm_json_init();
    cJSON *arr = cJSON_CreateArray();
    if (!arr) {
        vlm_free(text);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", path);
    }
    st = parse_records(path, text, len, arr, &good, err);
    vlm_free(text);
    if (st) {
        cJSON_Delete(arr);
        return st;
    }
    *out = arr;
    return VLM_OK;
}

static vlm_status load_done(tester_results *r, vlm_err *err) {
    char *text;
    size_t len, good;
    vlm_status st = vlm_file_read_all(r->path, 0, VLM_MEM_OTHER, &text, &len, err);
    if (st == VLM_ERR_NOT_FOUND) {
        vlm_err_clear(err);
        return VLM_OK;
    }
    if (st) return st;
    vlm_json_init();
    cJSON *arr = cJSON_CreateArray();
    if (!arr) {
        vlm_free(text);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", r->path);
    }
    st = parse_records(r->path, text, len, arr, &good, err);
    vlm_free(text);
    if (!st && good < len && truncate(r->path, (off_t)good) != 0)
        st = vlm_err_set(err, VLM_ERR_IO, "%s: cannot cut the torn last line: %s", r->path,
                         strerror(errno));
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (!st && n) {
        r->done = VLM_NEW_ARRAY(char *, n, VLM_MEM_OTHER);
        if (!r->done) st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", r->path);
    }
    const cJSON *rec;
    cJSON_ArrayForEach(rec, arr) {
        if (st) break;
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "type"));
        if (!type || strcmp(type, "case") != 0) continue;
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "model"));
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "suite"));
        const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "case_id"));
        if (!m || !s || !c) continue;
        char *k = tester_case_key(m, s, c);
        if (!k) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", r->path);
            break;
        }
        r->done[r->n_done++] = k;
    }
    cJSON_Delete(arr);
    if (!st && r->n_done) qsort(r->done, r->n_done, sizeof *r->done, cmp_str);
    return st;
}

vlm_status tester_results_open(const char *out_dir, const char *run_id, bool resume,
                               tester_results **out, vlm_err *err) {
    *out = NULL;
    for (const char *p = run_id; *p; p++)
        if (*p == '/' || (p == run_id && *p == '.'))
            return vlm_err_set(err, VLM_ERR_INVALID_ARG, "run id \"%s\": not a plain name", run_id);
    tester_results *r = VLM_NEW_ARRAY(tester_results, 1, VLM_MEM_OTHER);
    if (!r) return vlm_err_set(err, VLM_ERR_NOMEM, "results: out of memory");
    r->fd = -1;
    size_t n = strlen(out_dir) + strlen(run_id) + 2;
    r->dir = vlm_alloc(n, VLM_MEM_OTHER);
    r->path = vlm_alloc(n + 16, VLM_MEM_OTHER);
    vlm_status st = VLM_OK;
    if (!r->dir || !r->path) {
        st = vlm_err_set(err, VLM_ERR_NOMEM, "results: out of memory");
        goto done;
    }
    snprintf(r->dir, n, "%s/%s", out_dir, run_id);
    snprintf(r->path, n + 16, "%s/results.jsonl", r->dir);
    if (resume) {
        if (!vlm_file_is_dir(r->dir)) {
            st = vlm_err_set(err, VLM_ERR_NOT_FOUND, "--resume %s: no run folder %s", run_id,
                             r->dir);
            goto done;
        }
        if ((st = load_done(r, err))) goto done;
    } else {
        if (vlm_file_is_dir(r->dir)) {
            st = vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: already exists", r->dir);
            goto done;
        }
        if ((st = tester_mkdirs(r->dir, err))) goto done;
    }
    r->fd = open(r->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (r->fd < 0) st = vlm_err_set(err, VLM_ERR_IO, "%s: %s", r->path, strerror(errno));
done:
    if (st)
        tester_results_close(r);
    else
        *out = r;
    return st;
}

void tester_results_close(tester_results *r) {
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    for (size_t i = 0; i < r->n_done; i++) vlm_free(r->done[i]);
    vlm_free(r->done);
    vlm_free(r->dir);
    vlm_free(r->path);
    vlm_free(r);
}

vlm_status tester_results_append(tester_results *r, const cJSON *rec, vlm_err *err) {
    char *s = vlm_json_print(rec);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory printing a record", r->path);
    size_t n = strlen(s);
    s[n] = '\n'; /* the NUL's place: the line goes out in one write */
    size_t off = 0;
    vlm_status st = VLM_OK;
    while (off < n + 1) {
        ssize_t w = write(r->fd, s + off, n + 1 - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            st = vlm_err_set(err, VLM_ERR_IO, "%s: write: %s", r->path, strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    vlm_free(s);
    if (!st && fsync(r->fd) != 0)
        st = vlm_err_set(err, VLM_ERR_IO, "%s: fsync: %s", r->path, strerror(errno));
    return st;
}

bool tester_results_has_case(const tester_results *r, const char *model, const char *suite,
                             const char *case_id) {
    if (!r->n_done) return false;
    char *k = tester_case_key(model, suite, case_id);
    if (!k) return false;
    bool hit = bsearch(&k, r->done, r->n_done, sizeof *r->done, cmp_str) != NULL;
    vlm_free(k);
    return hit;
}

bool tester_shard_pick(const char *model, const char *suite, const char *case_id, int k, int n) {
    if (n <= 1) return true;
    uint64_t h = 0xcbf29ce484222325ull;
    const char *parts[3] = {model, suite, case_id};
    for (int i = 0; i < 3; i++) {
        for (const char *p = parts[i]; *p; p++) {
            unsigned char c = (unsigned char)*p;
            if (i == 0) c = (unsigned char)tolower(c);
            h = (h ^ c) * 0x100000001b3ull;
        }
        h = (h ^ 0x1f) * 0x100000001b3ull;
    }
    return (int)(h % (uint64_t)n) == k - 1;
}

bool tester_shard_parse(const char *s, int *k, int *n) {
    char *end;
    long a = strtol(s, &end, 10);
    if (end == s || *end != '/') return false;
    const char *q = end + 1;
    long b = strtol(q, &end, 10);
    if (end == q || *end || b < 1 || b > 1000000 || a < 1 || a > b) return false;
    *k = (int)a;
    *n = (int)b;
    return true;
}

typedef struct rec_key {
    char *key;
    int ix;
} rec_key;

static int cmp_rec_key(const void *a, const void *b) {
    const rec_key *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->ix > y->ix) - (x->ix < y->ix);
}

static const char *rec_str(const cJSON *r, const char *k) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, k));
    return s ? s : "";
}

vlm_status tester_records_dedupe(cJSON *records, vlm_err *err) {
    int n = cJSON_GetArraySize(records);
    rec_key *v = VLM_NEW_ARRAY(rec_key, (size_t)n + 1, VLM_MEM_OTHER);
    bool *drop = VLM_NEW_ARRAY(bool, (size_t)n + 1, VLM_MEM_OTHER);
    vlm_status st = VLM_OK;
    int m = 0;
    if (!v || !drop) st = vlm_err_set(err, VLM_ERR_NOMEM, "dedupe: out of memory");
    for (int i = 0; i < n && !st; i++) {
        const cJSON *r = cJSON_GetArrayItem(records, i);
        if (strcmp(rec_str(r, "type"), "case") != 0) continue;
        char *k = tester_case_key(rec_str(r, "model"), rec_str(r, "suite"), rec_str(r, "case_id"));
        if (!k) {
            st = vlm_err_set(err, VLM_ERR_NOMEM, "dedupe: out of memory");
            break;
        }
        v[m].key = k;
        v[m++].ix = i;
    }
    if (!st) {
        qsort(v, (size_t)m, sizeof *v, cmp_rec_key);
        for (int i = 0; i + 1 < m; i++)
            if (strcmp(v[i].key, v[i + 1].key) == 0) drop[v[i].ix] = true;
        for (int i = n - 1; i >= 0; i--)
            if (drop[i]) cJSON_DeleteItemFromArray(records, i);
    }
    for (int i = 0; i < m; i++) vlm_free(v[i].key);
    vlm_free(v);
    vlm_free(drop);
    return st;
}
