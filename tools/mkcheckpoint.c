/* mkcheckpoint - write a synthetic Phi-3.5-vision checkpoint: the real tensor
 * names, shapes and shard layout (from the published index), random or zero
 * weights, with config.json, preprocessor_config.json and the tokenizer files.
 *
 * Full size is 8.3 GB in bf16; tensors are streamed through a fixed buffer,
 * so memory stays at a few MB whatever the size. Values are a pure function
 * of (seed, tensor, element), so any run with the same options writes the
 * same bytes. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/phi3v_tensors.h"

static const char usage[] =
    "usage: mkcheckpoint --out DIR [options]\n"
    "\n"
    "Write a synthetic Phi3VForCausalLM checkpoint (safetensors shards + index,\n"
    "config.json, preprocessor_config.json, tokenizer files).\n"
    "\n"
    "  --out DIR              output folder (created)\n"
    "  --layers N             language-model layers (default 32)\n"
    "  --vision-layers N      CLIP layers (default 24)\n"
    "  --tiny                 a small model: hidden 64, intermediate 128, 4 heads,\n"
    "                         vision hidden 32, intermediate 64, 2 heads, 2 layers,\n"
    "                         2 LM layers (later options override)\n"
    "  --hidden N --intermediate N --heads N --kv-heads N --vocab N\n"
    "  --vision-hidden N --vision-intermediate N --vision-heads N\n"
    "  --random SEED          random weights from SEED (default: --random 1)\n"
    "  --zero                 all weights zero\n"
    "  --dtype bf16|f16|f32   stored dtype (default bf16)\n"
    "  --single               one model.safetensors instead of the published shards\n"
    "  --shared DIR           the shared reference folder (default $VLM_SHARED_DIR,\n"
    "                         else ../shared next to the source tree)\n";

typedef struct options {
    const char *out, *shared;
    int layers, vision_layers;
    int hidden, intermediate, heads, kv_heads, vocab;
    int v_hidden, v_intermediate, v_heads;
    bool zero, single, vision_changed;
    uint64_t seed;
    vlm_dtype dtype;
} options;

static void die_err(const vlm_err *e) {
    fprintf(stderr, "mkcheckpoint: %s\n", e->msg);
    exit(1);
}

static int parse_int(const char *flag, const char *s, int lo, int hi) {
    char *end;
    errno = 0;
    long v = strtol(s ? s : "", &end, 10);
    if (!s || errno || *end || v < lo || v > hi) {
        fprintf(stderr, "mkcheckpoint: %s needs an integer in [%d, %d]\n", flag, lo, hi);
        exit(2);
    }
    return (int)v;
}

/* ---------------------------------------------------------------------------
 * Weights: a hash of (seed, tensor, element) -> uniform in [-1, 1), scaled by
 * the tensor's role so a forward pass stays finite.
 * ------------------------------------------------------------------------- */

typedef struct fill_ctx {
    const options *o;
    const phi3v_tensor_spec *specs;
    float *scale; /* [n] */
    float *bias;  /* [n]: 1 for norm weights, else 0 */
} fill_ctx;

static inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static vlm_status fill(void *user, size_t index, uint64_t offset, void *buf, size_t len,
                       vlm_err *err) {
    (void)err;
    fill_ctx *c = user;
    if (c->o->zero) {
        memset(buf, 0, len);
        return VLM_OK;
    }
    size_t es = vlm_dtype_get(c->o->dtype)->block_bytes;
    uint64_t e0 = offset / es, key = mix64(c->o->seed ^ ((uint64_t)index << 40));
    float s = c->scale[index], b = c->bias[index];
    for (size_t i = 0; i < len / es; i++) {
        uint64_t r = mix64(key ^ (e0 + i));
        /* 24 random bits -> [-1, 1) */
        float u = (float)(r >> 40) * (2.0f / 16777216.0f) - 1.0f;
        float v = b + s * u;
        if (c->o->dtype == VLM_DTYPE_BF16) {
            uint16_t h = vlm_f32_to_bf16(v);
            memcpy((char *)buf + 2 * i, &h, 2);
        } else if (c->o->dtype == VLM_DTYPE_F16) {
            uint16_t h = vlm_f32_to_f16(v);
            memcpy((char *)buf + 2 * i, &h, 2);
        } else {
            memcpy((char *)buf + 4 * i, &v, 4);
        }
    }
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * config.json: the reconstructed Phi-3.5 config with the options applied.
 * ------------------------------------------------------------------------- */

static void set_num(cJSON *obj, const char *key, double v) {
    cJSON *n = cJSON_CreateNumber(v);
    if (!n || (cJSON_GetObjectItemCaseSensitive(obj, key)
                   ? !cJSON_ReplaceItemInObjectCaseSensitive(obj, key, n)
                   : !cJSON_AddItemToObject(obj, key, n))) {
        fprintf(stderr, "mkcheckpoint: out of memory\n");
        exit(1);
    }
}

/* Resample a factor list to n entries (n <= the list's length): the rope
 * factors belong to frequencies, so a smaller head keeps the spread. */
static void resample_factors(cJSON *rs, const char *key, int n) {
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(rs, key);
    int m = cJSON_GetArraySize(arr);
    if (!arr || m == n) return;
    cJSON *out = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_GetArrayItem(arr, (int)((long)i * m / n));
        cJSON_AddItemToArray(out, cJSON_CreateNumber(e ? e->valuedouble : 1.0));
    }
    cJSON_ReplaceItemInObjectCaseSensitive(rs, key, out);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    vlm_err err = {0};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (vlm_file_write_atomic(path, text, strlen(text), &err)) die_err(&err);
}

static void copy_file(const char *from_dir, const char *dir, const char *name) {
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    vlm_err err = {0};
    snprintf(path, sizeof path, "%s/%s", from_dir, name);
    if (vlm_file_read_all(path, 0, VLM_MEM_OTHER, &text, &len, &err)) die_err(&err);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (vlm_file_write_atomic(path, text, len, &err)) die_err(&err);
    vlm_free(text);
}

static char *make_config(const options *o, const char *shared) {
    char path[4096];
    vlm_err err = {0};
    cJSON *root = NULL;
    int n = snprintf(path, sizeof path,
                     "%s/models/phi-3.5-vision-instruct/config.reconstructed.json", shared);
    if (n < 0 || (size_t)n >= sizeof path) {
        fprintf(stderr, "mkcheckpoint: shared folder path too long: %s\n", shared);
        exit(1);
    }
    if (vlm_json_parse_file(path, &root, &err)) die_err(&err);
    set_num(root, "num_hidden_layers", o->layers);
    set_num(root, "hidden_size", o->hidden);
    set_num(root, "intermediate_size", o->intermediate);
    set_num(root, "num_attention_heads", o->heads);
    set_num(root, "num_key_value_heads", o->kv_heads);
    set_num(root, "vocab_size", o->vocab);
    cJSON *dt = cJSON_CreateString(o->dtype == VLM_DTYPE_BF16  ? "bfloat16"
                                   : o->dtype == VLM_DTYPE_F16 ? "float16"
                                                               : "float32");
    cJSON_ReplaceItemInObjectCaseSensitive(root, "torch_dtype", dt);
    cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    resample_factors(rs, "short_factor", o->hidden / o->heads / 2);
    resample_factors(rs, "long_factor", o->hidden / o->heads / 2);
    if (o->vision_changed) {
        cJSON *vc = cJSON_CreateObject();
        set_num(vc, "hidden_size", o->v_hidden);
        set_num(vc, "intermediate_size", o->v_intermediate);
        set_num(vc, "num_hidden_layers", o->vision_layers);
        set_num(vc, "num_attention_heads", o->v_heads);
        set_num(vc, "image_size", 336);
        set_num(vc, "patch_size", 14);
        set_num(vc, "layer_norm_eps", 1e-5);
        cJSON_AddItemToObject(vc, "hidden_act", cJSON_CreateString("quick_gelu"));
        cJSON_AddItemToObject(root, "vision_config", vc);
        cJSON *ip = cJSON_GetObjectItemCaseSensitive(root, "img_processor");
        if (ip) set_num(ip, "image_dim_out", o->v_hidden);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) {
        fprintf(stderr, "mkcheckpoint: out of memory\n");
        exit(1);
    }
    return text;
}

/* ---------------------------------------------------------------------------
 * Shard layout: the published index's name -> file map.
 * ------------------------------------------------------------------------- */

typedef struct shard_map {
    char **names;
    char **files;
    size_t n, cap;
} shard_map;

static vlm_status map_add(void *user, const char *name, const char *file, vlm_err *err) {
    shard_map *m = user;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 256;
        m->names = realloc(m->names, m->cap * sizeof *m->names);
        m->files = realloc(m->files, m->cap * sizeof *m->files);
        if (!m->names || !m->files)
            return vlm_err_set(err, VLM_ERR_NOMEM, "mkcheckpoint: out of memory");
    }
    m->names[m->n] = strdup(name);
    m->files[m->n] = strdup(file);
    m->n++;
    return VLM_OK;
}

int main(int argc, char **argv) {
    options o = {.layers = 32,
                 .vision_layers = 24,
                 .hidden = 3072,
                 .intermediate = 8192,
                 .heads = 32,
                 .kv_heads = 32,
                 .vocab = 32064,
                 .v_hidden = 1024,
                 .v_intermediate = 4096,
                 .v_heads = 16,
                 .seed = 1,
                 .dtype = VLM_DTYPE_BF16};
    bool kv_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--out") && v) {
            o.out = v, i++;
        } else if (!strcmp(a, "--shared") && v) {
            o.shared = v, i++;
        } else if (!strcmp(a, "--layers")) {
            o.layers = parse_int(a, v, 1, 1024), i++;
        } else if (!strcmp(a, "--vision-layers")) {
            o.vision_layers = parse_int(a, v, 1, 256), i++, o.vision_changed = true;
        } else if (!strcmp(a, "--hidden")) {
            o.hidden = parse_int(a, v, 2, 1 << 16), i++;
        } else if (!strcmp(a, "--intermediate")) {
            o.intermediate = parse_int(a, v, 1, 1 << 18), i++;
        } else if (!strcmp(a, "--heads")) {
            o.heads = parse_int(a, v, 1, 1024), i++;
        } else if (!strcmp(a, "--kv-heads")) {
            o.kv_heads = parse_int(a, v, 1, 1024), i++, kv_set = true;
        } else if (!strcmp(a, "--vocab")) {
            o.vocab = parse_int(a, v, 1, 1 << 22), i++;
        } else if (!strcmp(a, "--vision-hidden")) {
            o.v_hidden = parse_int(a, v, 1, 1 << 16), i++, o.vision_changed = true;
        } else if (!strcmp(a, "--vision-intermediate")) {
            o.v_intermediate = parse_int(a, v, 1, 1 << 18), i++, o.vision_changed = true;
        } else if (!strcmp(a, "--vision-heads")) {
            o.v_heads = parse_int(a, v, 1, 1024), i++, o.vision_changed = true;
        } else if (!strcmp(a, "--tiny")) {
            o.layers = 2, o.hidden = 64, o.intermediate = 128, o.heads = 4, o.kv_heads = 4;
            o.vision_layers = 2, o.v_hidden = 32, o.v_intermediate = 64, o.v_heads = 2;
            o.vision_changed = true;
        } else if (!strcmp(a, "--random")) {
            if (!v) return fputs(usage, stderr), 2;
            o.seed = strtoull(v, NULL, 10), o.zero = false, i++;
        } else if (!strcmp(a, "--zero")) {
            o.zero = true;
        } else if (!strcmp(a, "--single")) {
            o.single = true;
        } else if (!strcmp(a, "--dtype") && v) {
            i++;
            if (!strcmp(v, "bf16"))
                o.dtype = VLM_DTYPE_BF16;
            else if (!strcmp(v, "f16"))
                o.dtype = VLM_DTYPE_F16;
            else if (!strcmp(v, "f32"))
                o.dtype = VLM_DTYPE_F32;
            else
                return fprintf(stderr, "mkcheckpoint: --dtype must be bf16, f16 or f32\n"), 2;
        } else {
            fprintf(stderr, "mkcheckpoint: unknown option %s\n\n%s", a, usage);
            return 2;
        }
    }
    if (!o.out) return fputs(usage, stderr), 2;
    if (!kv_set) o.kv_heads = o.heads;

    /* The shared folder: option, environment, else next to the sources. */
    char shared[4096];
    if (o.shared) {
        snprintf(shared, sizeof shared, "%s", o.shared);
    } else if (getenv("VLM_SHARED_DIR")) {
        snprintf(shared, sizeof shared, "%s", getenv("VLM_SHARED_DIR"));
    } else {
        snprintf(shared, sizeof shared, "%s", __FILE__);
        char *slash = strrchr(shared, '/');
        if (slash) *slash = '\0'; /* .../tools */
        slash = strrchr(shared, '/');
        if (slash) *slash = '\0'; /* the source tree */
        strncat(shared, "/../shared", sizeof shared - strlen(shared) - 1);
    }
    if (mkdir(o.out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mkcheckpoint: %s: %s\n", o.out, strerror(errno));
        return 1;
    }

    vlm_err err = {0};
    char *config_text = make_config(&o, shared);
    vlm_config cfg;
    if (vlm_config_parse(config_text, strlen(config_text), "generated config.json", &cfg, &err))
        die_err(&err);
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    if (phi3v_tensor_specs(&cfg, &specs, &n, &err)) die_err(&err);

    /* Shards as published; names the index lacks go to the last shard. */
    char path[8192];
    snprintf(path, sizeof path, "%s/models/phi-3-vision-128k-instruct/model.safetensors.index.json",
             shared);
    shard_map map = {0};
    char *idx_text = NULL;
    size_t idx_len = 0;
    if (vlm_file_read_all(path, 0, VLM_MEM_OTHER, &idx_text, &idx_len, &err)) die_err(&err);
    if (vlm_st_index_parse(idx_text, idx_len, path, map_add, &map, &err)) die_err(&err);
    vlm_free(idx_text);
    /* Shard k of the index is the k-th file name in sorted order
     * (model-00001-of-00002 < model-00002-of-00002). */
    const char *files[64];
    int n_files = 0;
    for (size_t i = 0; i < map.n; i++) {
        int k = 0;
        while (k < n_files && strcmp(files[k], map.files[i])) k++;
        if (k == n_files && n_files < 64) files[n_files++] = map.files[i];
    }
    for (int a = 0; a < n_files; a++)
        for (int b = a + 1; b < n_files; b++)
            if (strcmp(files[b], files[a]) < 0) {
                const char *t = files[a];
                files[a] = files[b];
                files[b] = t;
            }

    vlm_st_wtensor *w = calloc(n, sizeof *w);
    fill_ctx fc = {.o = &o, .specs = specs};
    fc.scale = calloc(n, sizeof *fc.scale);
    fc.bias = calloc(n, sizeof *fc.bias);
    int used[64] = {0};
    if (!w || !fc.scale || !fc.bias) return fprintf(stderr, "mkcheckpoint: out of memory\n"), 1;
    for (size_t i = 0; i < n; i++) {
        w[i].name = specs[i].name;
        w[i].dtype = o.dtype;
        w[i].rank = specs[i].rank;
        memcpy(w[i].shape, specs[i].shape, sizeof specs[i].shape);
        int shard = n_files ? n_files - 1 : 0;
        for (size_t j = 0; j < map.n; j++) {
            if (strcmp(map.names[j], specs[i].name)) continue;
            for (int k = 0; k < n_files; k++)
                if (!strcmp(files[k], map.files[j])) shard = k;
        }
        w[i].shard = o.single ? 0 : shard;
        used[w[i].shard] = 1;
        /* Norm weights near 1, biases small, matrices ~ U(-1,1)/sqrt(fan_in). */
        const char *nm = specs[i].name;
        bool norm = strstr(nm, "norm") && strstr(nm, ".weight");
        bool bias = strstr(nm, ".bias") != NULL;
        uint64_t fan_in = 1;
        for (int k = 1; k < specs[i].rank; k++) fan_in *= (uint64_t)specs[i].shape[k];
        fc.bias[i] = norm ? 1.0f : 0.0f;
        fc.scale[i] = norm || bias || specs[i].rank < 2 ? 0.02f : 1.0f / sqrtf((float)fan_in);
    }
    /* Drop shards a reduced model leaves empty; keep the order. */
    int remap[64], n_shards = 0;
    for (int k = 0; k < 64; k++) remap[k] = used[k] ? n_shards++ : -1;
    for (size_t i = 0; i < n; i++) w[i].shard = remap[w[i].shard];

    vlm_st_kv meta[] = {{"format", "pt"}};
    if (vlm_st_write_sharded(o.out, w, n, n_shards, meta, 1, fill, &fc, &err)) die_err(&err);

    write_text(o.out, "config.json", config_text);
    cJSON_free(config_text);
    /* preprocessor_config.json: the 128k file with Phi-3.5's num_crops. */
    cJSON *pp = NULL;
    snprintf(path, sizeof path, "%s/models/phi-3-vision-128k-instruct/preprocessor_config.json",
             shared);
    if (vlm_json_parse_file(path, &pp, &err)) die_err(&err);
    set_num(pp, "num_crops", 4);
    char *pp_text = cJSON_Print(pp);
    cJSON_Delete(pp);
    write_text(o.out, "preprocessor_config.json", pp_text ? pp_text : "{}");
    cJSON_free(pp_text);
    snprintf(path, sizeof path, "%s/models/phi-3-vision-128k-instruct", shared);
    copy_file(path, o.out, "tokenizer.json");
    copy_file(path, o.out, "tokenizer_config.json");
    copy_file(path, o.out, "special_tokens_map.json");

    uint64_t params = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t e = 1;
        for (int k = 0; k < specs[i].rank; k++) e *= (uint64_t)specs[i].shape[k];
        params += e;
    }
    printf("mkcheckpoint: wrote %s: %zu tensors, %llu parameters, %d shard%s\n", o.out, n,
           (unsigned long long)params, n_shards, n_shards == 1 ? "" : "s");
    for (size_t j = 0; j < map.n; j++) free(map.names[j]), free(map.files[j]);
    free(map.names);
    free(map.files);
    free(w);
    free(fc.scale);
    free(fc.bias);
    vlm_free(specs);
    vlm_config_free(&cfg);
    return 0;
}
