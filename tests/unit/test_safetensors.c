/* io/safetensors: write -> read round trips over every dtype, streamed
 * writes, sharded sets and their index, folder rules, handcrafted headers,
 * and allocation-failure sweeps. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "io/safetensors.h"

static const vlm_dtype all_dtypes[] = {
    VLM_DTYPE_F64, VLM_DTYPE_F32, VLM_DTYPE_F16, VLM_DTYPE_BF16, VLM_DTYPE_I64,
    VLM_DTYPE_I32, VLM_DTYPE_I16, VLM_DTYPE_I8,  VLM_DTYPE_U8,   VLM_DTYPE_BOOL,
};
#define N_DTYPES (sizeof all_dtypes / sizeof *all_dtypes)

static uint64_t live_blocks(void) {
    vlm_mem_stats s;
    vlm_alloc_get_stats(&s);
    return s.live_blocks;
}

/* Bytes of a pattern that differs per tensor and per byte. */
static unsigned char *pattern(size_t n, unsigned seed) {
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 131u + seed * 17u + (i >> 8));
    return p;
}

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void test_round_trip_every_dtype(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    char path[4200];
    snprintf(path, sizeof path, "%s/all.safetensors", dir);
    /* Each dtype three times: a [3, 5, 7] block, a scalar and an empty
     * [0, 4] tensor, in an order that mixes element sizes (the writer
     * reorders for alignment). */
    vlm_st_wtensor w[3 * N_DTYPES];
    unsigned char *data[3 * N_DTYPES];
    char names[3 * N_DTYPES][32];
    size_t n = 0;
    for (int pass = 0; pass < 3; pass++) {
        for (size_t d = 0; d < N_DTYPES; d++, n++) {
            vlm_st_wtensor *t = &w[n];
            memset(t, 0, sizeof *t);
            snprintf(names[n], sizeof names[n], "t.%s.%d", vlm_dtype_get(all_dtypes[d])->name,
                     pass);
            t->name = names[n];
            t->dtype = all_dtypes[d];
            size_t es = vlm_dtype_get(t->dtype)->block_bytes;
            if (pass == 0) {
                t->rank = 3, t->shape[0] = 3, t->shape[1] = 5, t->shape[2] = 7;
            } else if (pass == 1) {
                t->rank = 0;
            } else {
                t->rank = 2, t->shape[0] = 0, t->shape[1] = 4;
            }
            size_t ne = pass == 0 ? 105 : pass == 1 ? 1 : 0;
            data[n] = pattern(ne * es, (unsigned)n);
            if (t->dtype == VLM_DTYPE_BOOL)
                for (size_t i = 0; i < ne; i++) data[n][i] &= 1;
            t->data = data[n];
        }
    }
    vlm_st_kv meta[] = {{"format", "pt"}, {"note", "quote \" backslash \\ tab \t é"}};
    vlm_err err = {0};
    assert_int_equal(vlm_st_write(path, w, n, meta, 2, NULL, NULL, &err), VLM_OK);

    /* The header is padded with spaces to a multiple of 8 bytes. */
    size_t len = 0;
    unsigned char *raw = tu_read_file(path, &len);
    assert_non_null(raw);
    uint64_t hl = le64(raw);
    assert_int_equal(hl % 8, 0);
    assert_true(raw[8] == '{');
    size_t last = 8 + hl - 1;
    while (raw[last] == ' ') last--;
    assert_int_equal(raw[last], '}');
    free(raw);

    uint64_t before = live_blocks();
    vlm_st_file *f = NULL;
    assert_int_equal(vlm_st_open(path, &f, &err), VLM_OK);
    assert_int_equal(vlm_st_count(f), n);
    assert_int_equal(vlm_st_file_size(f), len);
    assert_int_equal(vlm_st_header_size(f), hl);
    for (size_t i = 0; i < n; i++) {
        const vlm_st_tensor *t = vlm_st_find(f, names[i]);
        assert_non_null(t);
        assert_string_equal(t->name, names[i]);
        assert_int_equal(t->dtype, w[i].dtype);
        assert_int_equal(t->rank, w[i].rank);
        for (int k = 0; k < t->rank; k++) assert_int_equal(t->shape[k], w[i].shape[k]);
        size_t es = vlm_dtype_get(t->dtype)->block_bytes;
        assert_int_equal(t->nbytes, t->nelem * es);
        if (t->nbytes) assert_memory_equal(t->data, data[i], t->nbytes);
        /* Each tensor aligned to its element size within the mapping. */
        assert_int_equal((uintptr_t)t->data % es, 0);
        assert_string_equal(t->file, path);
    }
    assert_null(vlm_st_find(f, "absent"));
    assert_null(vlm_st_find(f, "__metadata__"));
    assert_int_equal(vlm_st_metadata_count(f), 2);
    assert_string_equal(vlm_st_metadata_get(f, "format"), "pt");
    assert_string_equal(vlm_st_metadata_get(f, "note"), meta[1].value);
    /* Sorted by offset, back to back, covering the data area exactly (the
     * layout the reference library demands). */
    uint64_t pos = 8 + hl;
    for (size_t i = 0; i < n; i++) {
        const vlm_st_tensor *t = vlm_st_at(f, i);
        assert_int_equal(t->offset, pos);
        pos += t->nbytes;
    }
    assert_int_equal(pos, len);
    vlm_mem_stats s;
    vlm_alloc_get_stats(&s);
    assert_true(s.mapped_current >= len);
    vlm_st_close(f);
    assert_int_equal(live_blocks(), before);
    for (size_t i = 0; i < n; i++) free(data[i]);
    tu_rmtree(dir);
    free(dir);
}

/* Streamed: the fill callback writes each byte as a function of (tensor,
 * offset), so chunking mistakes show. */
static vlm_status fill_fn(void *user, size_t index, uint64_t offset, void *buf, size_t len,
                          vlm_err *err) {
    (void)user;
    (void)err;
    for (size_t i = 0; i < len; i++)
        ((unsigned char *)buf)[i] = (unsigned char)(index * 7 + offset + i);
    return VLM_OK;
}

static void test_streamed_write(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    char path[4200];
    snprintf(path, sizeof path, "%s/big.safetensors", dir);
    /* 5M f32 elements = 20 MB: several fill chunks. */
    vlm_st_wtensor w[2] = {
        {.name = "big", .dtype = VLM_DTYPE_F32, .rank = 2, .shape = {1000, 5000}},
        {.name = "small", .dtype = VLM_DTYPE_U8, .rank = 1, .shape = {3}},
    };
    vlm_err err = {0};
    assert_int_equal(vlm_st_write(path, w, 2, NULL, 0, fill_fn, NULL, &err), VLM_OK);
    vlm_st_file *f = NULL;
    assert_int_equal(vlm_st_open(path, &f, &err), VLM_OK);
    const vlm_st_tensor *t = vlm_st_find(f, "big");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 20000000);
    const unsigned char *p = t->data;
    for (size_t i = 0; i < t->nbytes; i += 4099) assert_int_equal(p[i], (unsigned char)(0 + i));
    t = vlm_st_find(f, "small");
    p = t->data;
    assert_int_equal(p[2], (unsigned char)(7 + 2));
    vlm_st_close(f);
    /* A tensor with neither data nor fill is refused, and no file is left. */
    vlm_st_wtensor bad = {.name = "x", .dtype = VLM_DTYPE_F32, .rank = 1, .shape = {2}};
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    assert_int_equal(vlm_st_write(path, &bad, 1, NULL, 0, NULL, NULL, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "\"x\""));
    assert_false(vlm_st_open(path, &f, &err) == VLM_OK);
    tu_rmtree(dir);
    free(dir);
}

static void test_writer_refuses_bad_input(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    char path[4200];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    float v[2] = {1, 2};
    vlm_err err = {0};
    vlm_st_wtensor dup[2] = {
        {.name = "a", .dtype = VLM_DTYPE_F32, .rank = 1, .shape = {2}, .data = v},
        {.name = "a", .dtype = VLM_DTYPE_F32, .rank = 1, .shape = {2}, .data = v},
    };
    assert_int_equal(vlm_st_write(path, dup, 2, NULL, 0, NULL, NULL, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "twice"));
    vlm_st_wtensor q = {.name = "q", .dtype = VLM_DTYPE_Q4_K, .rank = 1, .shape = {256}, .data = v};
    assert_int_equal(vlm_st_write(path, &q, 1, NULL, 0, NULL, NULL, &err), VLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "\"q\""));
    vlm_st_wtensor neg = {.name = "n", .dtype = VLM_DTYPE_F32, .rank = 1, .shape = {-1}, .data = v};
    assert_int_equal(vlm_st_write(path, &neg, 1, NULL, 0, NULL, NULL, &err), VLM_ERR_INVALID_ARG);
    vlm_st_wtensor meta = {
        .name = "__metadata__", .dtype = VLM_DTYPE_F32, .rank = 1, .shape = {2}, .data = v};
    assert_int_equal(vlm_st_write(path, &meta, 1, NULL, 0, NULL, NULL, &err), VLM_ERR_INVALID_ARG);
    tu_rmtree(dir);
    free(dir);
}

/* A file image built by hand: 8-byte length + header + data. */
static unsigned char *image(const char *header, size_t data_len, size_t *len) {
    size_t hl = strlen(header);
    *len = 8 + hl + data_len;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    return b;
}

/* Open the image in memory, and as a file without mapping it: both must
 * give the same status and message (after the path). */
static vlm_status open_image(const unsigned char *b, size_t len, vlm_err *err) {
    vlm_st_file *f = NULL;
    vlm_status st = vlm_st_open_memory(b, len, "mem.safetensors", &f, err);
    vlm_st_close(f);
    char *dir = tu_mkdtemp();
    char path[4200];
    snprintf(path, sizeof path, "%s/mem.safetensors", dir);
    assert_true(tu_write_file(path, b, len));
    vlm_err e2 = {0};
    f = NULL;
    vlm_status st2 = vlm_st_open_unmapped(path, &f, &e2);
    vlm_st_close(f);
    if (st2 != st || (st && !strstr(e2.msg, err->msg + strlen("mem.safetensors"))))
        fail_msg("unmapped open: status %d \"%s\", in memory: %d \"%s\"", st2, e2.msg, st,
                 err->msg);
    tu_rmtree(dir);
    free(dir);
    return st;
}

static vlm_status open_header(const char *header, size_t data_len, vlm_err *err) {
    size_t len;
    unsigned char *b = image(header, data_len, &len);
    vlm_status st = open_image(b, len, err);
    free(b);
    return st;
}

/* Truncated files: shorter than the length field, and a length past the end. */
static void test_truncated(void **state) {
    (void)state;
    vlm_err err = {0};
    const unsigned char short5[5] = {1, 2, 3, 4, 5};
    assert_int_equal(open_image(short5, sizeof short5, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "too short"));
    unsigned char past[12] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    memset(&err, 0, sizeof err);
    assert_int_equal(open_image(past, sizeof past, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "truncated: header length 200"));
}

static void test_handcrafted_headers(void **state) {
    (void)state;
    vlm_err err = {0};
    /* Accepted: empty header object, gaps between tensors, trailing bytes. */
    assert_int_equal(open_header("{}", 0, &err), VLM_OK);
    assert_int_equal(open_header("{}      ", 0, &err), VLM_OK);
    assert_int_equal(open_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
                                 "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                                 10, &err),
                     VLM_OK);
    /* Zero-size tensors may share an offset. */
    assert_int_equal(
        open_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]}}",
                    0, &err),
        VLM_OK);
    /* Refused, each naming the file and the tensor. */
    struct {
        const char *hdr;
        size_t data;
        const char *needle;
    } bad[] = {
        {"[]", 0, "not a JSON object"},
        {"{} x", 0, "after the header JSON"},
        {"{\"a\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "\"a\": unknown dtype"},
        {"{\"a\":{\"dtype\":\"Q4_0\",\"shape\":[32],\"data_offsets\":[0,18]}}", 18,
         "unknown dtype"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 2, "\"a\": shape[0]"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 2, "\"a\": shape[0]"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
         "\"a\": rank 9"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "need 1"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,0]}}", 2, "before begin"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[5,6]}}", 2, "past the data"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 2, "data_offsets"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 2, "data_offsets"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 2, "\"a\": missing or non-string dtype"},
        {"{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 2,
         "\"a\": missing or non-array shape"},
        {"{\"a\":5}", 2, "\"a\": entry is not an object"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
         "\"a\": shape size overflows"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}",
         4, "\"b\": data [1, 3) overlaps tensor \"a\""},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
         2, "\"a\": name appears twice"},
        {"{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty name"},
        {"{\"\xc3\x28\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "\"\\xc3(\": name is not valid UTF-8"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ \"k\": value is not a string"},
        {"{\"__metadata__\":[]}", 0, "__metadata__ is not an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&err, 0, sizeof err);
        vlm_status st = open_header(bad[i].hdr, bad[i].data, &err);
        if (st != VLM_ERR_FORMAT || !strstr(err.msg, bad[i].needle) ||
            !strstr(err.msg, "mem.safetensors"))
            fail_msg("case %zu (%s): status %d, message \"%s\"", i, bad[i].hdr, st, err.msg);
    }
}

static void test_utf8(void **state) {
    (void)state;
    assert_true(vlm_utf8_valid("abc", 3));
    assert_true(vlm_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    assert_false(vlm_utf8_valid("\xc0\x80", 2));         /* overlong NUL */
    assert_false(vlm_utf8_valid("\xe0\x80\xaf", 3));     /* overlong '/' */
    assert_false(vlm_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(vlm_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(vlm_utf8_valid("\xe2\x82", 2));         /* truncated */
    assert_false(vlm_utf8_valid("\x80", 1));
}

/* ---- sharded sets ------------------------------------------------------- */

#define N_SHARD_TENSORS 7

static void make_sharded(const char *dir, int n_shards, float vals[N_SHARD_TENSORS][6],
                         char names[N_SHARD_TENSORS][32]) {
    vlm_st_wtensor w[N_SHARD_TENSORS];
    for (int i = 0; i < N_SHARD_TENSORS; i++) {
        snprintf(names[i], 32, "layer.%d.weight", i);
        for (int k = 0; k < 6; k++) vals[i][k] = (float)(i * 10 + k);
        w[i] = (vlm_st_wtensor){.name = names[i],
                                .dtype = VLM_DTYPE_F32,
                                .rank = 2,
                                .shape = {2, 3},
                                .data = vals[i],
                                .shard = i % n_shards};
    }
    vlm_err err = {0};
    assert_int_equal(
        vlm_st_write_sharded(dir, w, N_SHARD_TENSORS, n_shards, NULL, 0, NULL, NULL, &err), VLM_OK);
}

static void check_set(const char *path, float vals[N_SHARD_TENSORS][6],
                      char names[N_SHARD_TENSORS][32], size_t n_files) {
    vlm_tensor_set *s = NULL;
    vlm_err err = {0};
    assert_int_equal(vlm_tensor_set_open(path, &s, &err), VLM_OK);
    assert_int_equal(vlm_tensor_set_count(s), N_SHARD_TENSORS);
    assert_int_equal(vlm_tensor_set_file_count(s), n_files);
    for (int i = 0; i < N_SHARD_TENSORS; i++) {
        const vlm_st_tensor *t = vlm_tensor_set_find(s, names[i]);
        assert_non_null(t);
        assert_memory_equal(t->data, vals[i], 24);
        if (n_files > 1) {
            char want[64];
            snprintf(want, sizeof want, "model-%05d-of-%05zu.safetensors", (int)(i % n_files) + 1,
                     n_files);
            assert_non_null(strstr(t->file, want));
        }
    }
    assert_null(vlm_tensor_set_find(s, "nope"));
    vlm_tensor_set_close(s);
}

/* The same set opened unmapped: no data pointer, nothing mapped; every
 * tensor read (whole and in part) and mapped on its own gives the bytes
 * written; a read outside a tensor is refused. */
static void check_set_unmapped(const char *path, float vals[N_SHARD_TENSORS][6],
                               char names[N_SHARD_TENSORS][32]) {
    vlm_mem_stats m0, m1;
    vlm_alloc_get_stats(&m0);
    vlm_tensor_set *s = NULL;
    vlm_err err = {0};
    assert_int_equal(vlm_tensor_set_open_unmapped(path, &s, &err), VLM_OK);
    assert_int_equal(vlm_tensor_set_count(s), N_SHARD_TENSORS);
    assert_int_equal(vlm_tensor_set_mapped_bytes(s), 0);
    vlm_alloc_get_stats(&m1);
    assert_int_equal(m1.mapped_current, m0.mapped_current);
    for (int i = 0; i < N_SHARD_TENSORS; i++) {
        const vlm_st_tensor *t = vlm_tensor_set_find(s, names[i]);
        assert_non_null(t);
        assert_null(t->data);
        float got[6] = {0};
        assert_int_equal(vlm_st_tensor_read(t, 0, got, 24, &err), VLM_OK);
        assert_memory_equal(got, vals[i], 24);
        assert_int_equal(vlm_st_tensor_read(t, 8, got, 8, &err), VLM_OK);
        assert_memory_equal(got, vals[i] + 2, 8);
        assert_int_equal(vlm_st_tensor_read(t, 20, got, 8, &err), VLM_ERR_INVALID_ARG);
        assert_non_null(strstr(err.msg, names[i]));
        vlm_st_range r;
        assert_int_equal(vlm_st_tensor_map(t, &r, &err), VLM_OK);
        assert_non_null(r.base);
        assert_memory_equal(r.data, vals[i], 24);
        vlm_alloc_get_stats(&m1);
        assert_int_equal(m1.mapped_current, m0.mapped_current + r.len);
        vlm_st_range_unmap(&r);
        vlm_st_range_unmap(&r); /* safe twice */
        vlm_alloc_get_stats(&m1);
        assert_int_equal(m1.mapped_current, m0.mapped_current);
    }
    vlm_tensor_set_close(s);
}

static void test_sharded_round_trip(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    float vals[N_SHARD_TENSORS][6];
    char names[N_SHARD_TENSORS][32];
    make_sharded(dir, 3, vals, names);
    char path[4200];
    check_set(dir, vals, names, 3);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    check_set(path, vals, names, 3);
    check_set_unmapped(dir, vals, names);
    /* The index carries total_size = the tensor bytes. */
    char *text = tu_read_file(path, NULL);
    assert_non_null(strstr(text, "\"total_size\": 168"));
    free(text);
    /* One shard: model.safetensors, no index. */
    char *dir1 = tu_mkdtemp();
    make_sharded(dir1, 1, vals, names);
    check_set(dir1, vals, names, 1);
    snprintf(path, sizeof path, "%s/model.safetensors", dir1);
    check_set(path, vals, names, 1);
    tu_rmtree(dir1);
    free(dir1);
    tu_rmtree(dir);
    free(dir);
}

static void write_index(const char *dir, const char *body) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    assert_true(tu_write_file(path, body, strlen(body)));
}

static void test_index_disagreements(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    float vals[N_SHARD_TENSORS][6];
    char names[N_SHARD_TENSORS][32];
    make_sharded(dir, 2, vals, names);
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *orig = tu_read_file(path, NULL);
    vlm_tensor_set *s = NULL;
    vlm_err err = {0};

    /* A tensor the index leaves out. */
    write_index(dir,
                "{\"weight_map\": {\"layer.0.weight\": \"model-00001-of-00002.safetensors\"}}");
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "not in the index"));
    assert_non_null(strstr(err.msg, "model.safetensors.index.json"));

    /* A name mapped to the wrong shard. */
    char *bad = strdup(orig);
    char *p = strstr(bad, "\"layer.0.weight\": \"model-00001");
    assert_non_null(p);
    p[strlen("\"layer.0.weight\": \"model-0000")] = '2';
    write_index(dir, bad);
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "\"layer.0.weight\""));
    free(bad);

    /* A name no shard holds. */
    write_index(dir, "{\"weight_map\": {\"ghost\": \"model-00001-of-00002.safetensors\"}}");
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "\"ghost\""));

    /* A shard file that is missing. */
    write_index(dir, "{\"weight_map\": {\"a\": \"model-00009-of-00009.safetensors\"}}");
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "model-00009-of-00009.safetensors"));

    /* A file name that would leave the folder. */
    write_index(dir, "{\"weight_map\": {\"a\": \"../x.safetensors\"}}");
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "plain file name"));

    write_index(dir, "{\"weight_map\": []}");
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    write_index(dir, "{\"weight_map\": {}}");
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "empty"));
    assert_null(s);
    free(orig);
    tu_rmtree(dir);
    free(dir);
}

static void test_folder_rules(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    vlm_tensor_set *s = NULL;
    vlm_err err = {0};
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, dir));
    float v = 1;
    vlm_st_wtensor w = {.name = "w", .dtype = VLM_DTYPE_F32, .rank = 1, .shape = {1}, .data = &v};
    char path[4200];
    snprintf(path, sizeof path, "%s/weights.safetensors", dir);
    assert_int_equal(vlm_st_write(path, &w, 1, NULL, 0, NULL, NULL, &err), VLM_OK);
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_OK);
    assert_non_null(vlm_tensor_set_find(s, "w"));
    vlm_tensor_set_close(s);
    snprintf(path, sizeof path, "%s/other.safetensors", dir);
    assert_int_equal(vlm_st_write(path, &w, 1, NULL, 0, NULL, NULL, &err), VLM_OK);
    assert_int_equal(vlm_tensor_set_open(dir, &s, &err), VLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "2 .safetensors files"));
    tu_rmtree(dir);
    free(dir);
}

/* Every allocation of an open, failed in turn: success or a clean NOMEM,
 * nothing leaked. */
static void open_alloc_failures(bool unmapped) {
    char *dir = tu_mkdtemp();
    float vals[N_SHARD_TENSORS][6];
    char names[N_SHARD_TENSORS][32];
    make_sharded(dir, 3, vals, names);
    int ok = 0, nomem = 0;
    for (uint64_t k = 1; k < 2000; k++) {
        uint64_t before = live_blocks();
        vlm_tensor_set *s = NULL;
        vlm_err err = {0};
        vlm_alloc_fail_at(vlm_alloc_count() + k, false);
        vlm_status st = unmapped ? vlm_tensor_set_open_unmapped(dir, &s, &err)
                                 : vlm_tensor_set_open(dir, &s, &err);
        vlm_alloc_fail_at(0, false);
        if (st == VLM_OK) {
            ok++;
            vlm_tensor_set_close(s);
        } else {
            if (st != VLM_ERR_NOMEM) fail_msg("fail at %llu: %s", (unsigned long long)k, err.msg);
            assert_null(s);
            nomem++;
        }
        assert_int_equal(live_blocks(), before);
        if (st == VLM_OK && k > 10) break; /* past the last allocation */
    }
    assert_true(nomem > 10);
    assert_true(ok >= 1);
    tu_rmtree(dir);
    free(dir);
}

static void test_open_alloc_failures(void **state) {
    (void)state;
    open_alloc_failures(false);
    open_alloc_failures(true);
}

static void test_write_alloc_failures(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    float vals[3][6] = {{0}};
    vlm_st_wtensor w[3];
    for (int i = 0; i < 3; i++)
        w[i] = (vlm_st_wtensor){.name = i == 0   ? "a"
                                        : i == 1 ? "b"
                                                 : "c",
                                .dtype = VLM_DTYPE_F32,
                                .rank = 2,
                                .shape = {2, 3},
                                .data = vals[i],
                                .shard = i % 2};
    bool done = false;
    for (uint64_t k = 1; k < 500 && !done; k++) {
        uint64_t before = live_blocks();
        vlm_err err = {0};
        vlm_alloc_fail_at(vlm_alloc_count() + k, false);
        vlm_status st = vlm_st_write_sharded(dir, w, 3, 2, NULL, 0, NULL, NULL, &err);
        vlm_alloc_fail_at(0, false);
        if (st != VLM_OK && st != VLM_ERR_NOMEM)
            fail_msg("fail at %llu: %s", (unsigned long long)k, err.msg);
        done = st == VLM_OK;
        assert_int_equal(live_blocks(), before);
    }
    assert_true(done);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_dtype),
        cmocka_unit_test(test_streamed_write),
        cmocka_unit_test(test_writer_refuses_bad_input),
        cmocka_unit_test(test_handcrafted_headers),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_sharded_round_trip),
        cmocka_unit_test(test_index_disagreements),
        cmocka_unit_test(test_folder_rules),
        cmocka_unit_test(test_open_alloc_failures),
        cmocka_unit_test(test_write_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
