/* vlmtest info - what a checkpoint holds: architecture, parameters per part,
 * dtypes, bytes on disk and the weight bytes at each precision. Reads only
 * the headers (no tensor data is touched). */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "io/config.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "runtime/planner.h"
#include "models/phi3v_tensors.h"

/* Weight precisions reported, each tensor held as the quantization policy
 * of runtime/planner says (the one the loader uses): block types for weight
 * matrices whose rows are whole blocks, the head, vision tower and projector
 * not below q8_0, everything else as stored. */
typedef struct precision {
    const char *name;
    vlm_precision p;
} precision;

static const precision precisions[] = {
    {"f32", VLM_PREC_F32},           {"bf16", VLM_PREC_BF16}, {"f16", VLM_PREC_F16},
    {"q8_0", VLM_PREC_Q8_0},         {"q4_0", VLM_PREC_Q4_0}, {"q4_K", VLM_PREC_Q4_K},
    {"q4_0_all", VLM_PREC_Q4_0_ALL},
};
#define N_PREC (sizeof precisions / sizeof *precisions)

static uint64_t bytes_at(const precision *p, const vlm_st_tensor *t) {
    int64_t shape[4] = {0};
    for (int k = 0; k < t->rank && k < 4; k++) shape[k] = t->shape[k];
    if (t->rank > 4) return t->nbytes; /* nothing of ours: as stored */
    return vlm_plan_dtype_bytes(vlm_plan_tensor_dtype(p->p, t->name, t->rank, shape, t->dtype),
                                t->nelem);
}

typedef struct info {
    char *path;
    bool have_config;
    vlm_config cfg;
    vlm_tensor_set *set;
    uint64_t params[PHI3V_PART_COUNT], total, tensor_bytes, disk_bytes;
    uint64_t dtype_tensors[VLM_DTYPE_COUNT], dtype_params[VLM_DTYPE_COUNT];
    uint64_t prec_bytes[N_PREC];
    bool valid;
    vlm_err check;
} info;

static void fmt_count(char *buf, size_t cap, uint64_t v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    size_t o = 0;
    for (int i = 0; i < n && o + 2 < cap; i++) {
        if (i > 0 && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = '\0';
}

static void print_text(const info *in, bool tensors) {
    char a[40];
    printf("model:         %s\n", in->path);
    printf("architecture:  %s\n", in->have_config ? in->cfg.architecture : "(no config.json)");
    if (in->have_config) {
        const vlm_config *c = &in->cfg;
        printf("language:      %d layers, hidden %d, %d heads (%d kv) x %d, mlp %d, vocab %d\n",
               c->num_hidden_layers, c->hidden_size, c->num_attention_heads, c->num_key_value_heads,
               c->head_dim, c->intermediate_size, c->vocab_size);
        printf("vision:        %d layers, hidden %d, %d heads, mlp %d, %dpx / %dpx patches%s\n",
               c->vision.num_hidden_layers, c->vision.hidden_size, c->vision.num_attention_heads,
               c->vision.intermediate_size, c->vision.image_size, c->vision.patch_size,
               c->vision.from_config ? "" : " (CLIP ViT-L/14-336)");
    }
    fmt_count(a, sizeof a, in->disk_bytes);
    printf("files:         %zu, %s bytes on disk\n", vlm_tensor_set_file_count(in->set), a);
    printf("tensors:       %zu\n", vlm_tensor_set_count(in->set));
    printf("dtypes:       ");
    for (int d = 0; d < VLM_DTYPE_COUNT; d++)
        if (in->dtype_tensors[d])
            printf(" %s x %llu", vlm_dtype_get((vlm_dtype)d)->name,
                   (unsigned long long)in->dtype_tensors[d]);
    printf("\n");
    fmt_count(a, sizeof a, in->total);
    printf("parameters:    %s (%.2f B)\n", a, (double)in->total / 1e9);
    for (int p = 0; p < PHI3V_PART_COUNT; p++) {
        fmt_count(a, sizeof a, in->params[p]);
        printf("  %-15s %15s\n", phi3v_part_name((phi3v_part)p), a);
    }
    printf("weights at precision:\n");
    for (size_t i = 0; i < N_PREC; i++)
        printf("  %-6s %10.3f GB\n", precisions[i].name, (double)in->prec_bytes[i] / 1e9);
    if (in->have_config)
        printf("check:         %s\n",
               in->valid ? "ok (every tensor the config implies)" : in->check.msg);
    if (tensors) {
        printf("\n");
        for (size_t i = 0; i < vlm_tensor_set_count(in->set); i++) {
            const vlm_st_tensor *t = vlm_tensor_set_at(in->set, i);
            printf("%-80s %-5s [", t->name, vlm_dtype_get(t->dtype)->name);
            for (int k = 0; k < t->rank; k++)
                printf("%s%lld", k ? ", " : "", (long long)t->shape[k]);
            printf("]\n");
        }
    }
}

static int print_json(const info *in, bool tensors) {
    vlm_json_init();
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "model", in->path);
    cJSON_AddStringToObject(r, "architecture", in->have_config ? in->cfg.architecture : "");
    cJSON *p = cJSON_AddObjectToObject(r, "parameters");
    cJSON_AddNumberToObject(p, "total", (double)in->total);
    for (int k = 0; k < PHI3V_PART_COUNT; k++)
        cJSON_AddNumberToObject(p, phi3v_part_name((phi3v_part)k), (double)in->params[k]);
    cJSON_AddNumberToObject(r, "tensors", (double)vlm_tensor_set_count(in->set));
    cJSON_AddNumberToObject(r, "files", (double)vlm_tensor_set_file_count(in->set));
    cJSON_AddNumberToObject(r, "bytes_on_disk", (double)in->disk_bytes);
    cJSON_AddNumberToObject(r, "tensor_bytes", (double)in->tensor_bytes);
    cJSON *d = cJSON_AddObjectToObject(r, "dtypes");
    for (int k = 0; k < VLM_DTYPE_COUNT; k++) {
        if (!in->dtype_tensors[k]) continue;
        cJSON *o = cJSON_AddObjectToObject(d, vlm_dtype_get((vlm_dtype)k)->name);
        cJSON_AddNumberToObject(o, "tensors", (double)in->dtype_tensors[k]);
        cJSON_AddNumberToObject(o, "parameters", (double)in->dtype_params[k]);
    }
    cJSON *w = cJSON_AddObjectToObject(r, "weight_bytes");
    for (size_t k = 0; k < N_PREC; k++)
        cJSON_AddNumberToObject(w, precisions[k].name, (double)in->prec_bytes[k]);
    if (in->have_config) {
        const vlm_config *c = &in->cfg;
        cJSON *cf = cJSON_AddObjectToObject(r, "config");
        cJSON_AddNumberToObject(cf, "num_hidden_layers", c->num_hidden_layers);
        cJSON_AddNumberToObject(cf, "hidden_size", c->hidden_size);
        cJSON_AddNumberToObject(cf, "intermediate_size", c->intermediate_size);
        cJSON_AddNumberToObject(cf, "num_attention_heads", c->num_attention_heads);
        cJSON_AddNumberToObject(cf, "num_key_value_heads", c->num_key_value_heads);
        cJSON_AddNumberToObject(cf, "vocab_size", c->vocab_size);
        cJSON_AddNumberToObject(cf, "vision_layers", c->vision.num_hidden_layers);
        cJSON_AddNumberToObject(cf, "vision_hidden_size", c->vision.hidden_size);
        cJSON_AddNumberToObject(cf, "vision_intermediate_size", c->vision.intermediate_size);
        cJSON_AddBoolToObject(r, "valid", in->valid);
        if (!in->valid) cJSON_AddStringToObject(r, "error", in->check.msg);
    }
    if (tensors) {
        cJSON *arr = cJSON_AddArrayToObject(r, "tensor_list");
        for (size_t i = 0; i < vlm_tensor_set_count(in->set); i++) {
            const vlm_st_tensor *t = vlm_tensor_set_at(in->set, i);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToArray(arr, o);
            cJSON_AddStringToObject(o, "name", t->name);
            cJSON_AddStringToObject(o, "dtype", vlm_dtype_get(t->dtype)->name);
            cJSON *s = cJSON_AddArrayToObject(o, "shape");
            for (int k = 0; k < t->rank; k++)
                cJSON_AddItemToArray(s, cJSON_CreateNumber((double)t->shape[k]));
            cJSON_AddStringToObject(o, "part", phi3v_part_name(phi3v_part_of(t->name)));
            cJSON_AddStringToObject(o, "file", t->file);
            cJSON_AddNumberToObject(o, "bytes", (double)t->nbytes);
        }
    }
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    if (!text) {
        cli_error("info", "out of memory");
        return CLI_FAIL;
    }
    printf("%s\n", text);
    cJSON_free(text);
    return CLI_OK;
}

static int run(int argc, char **argv) {
    const char *ref = NULL;
    bool json = false, tensors = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--tensors"))
            tensors = true;
        else if (argv[i][0] == '-' || ref) {
            cli_error("info", "unexpected argument %s (see vlmtest info --help)", argv[i]);
            return CLI_USAGE;
        } else
            ref = argv[i];
    }
    if (!ref) {
        cli_error("info", "which model? (see vlmtest info --help)");
        return CLI_USAGE;
    }
    info in = {0};
    vlm_err err = {0};
    int rc = CLI_FAIL;
    if (vlm_hf_resolve(ref, &in.path, &err)) goto fail;
    /* config.json lives in the folder (or next to a file given directly). */
    char cfg_path[4096];
    if (vlm_file_is_dir(in.path)) {
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", in.path);
    } else {
        const char *slash = strrchr(in.path, '/');
        int dl = slash ? (int)(slash - in.path) : 1;
        snprintf(cfg_path, sizeof cfg_path, "%.*s/config.json", dl, slash ? in.path : ".");
    }
    if (vlm_file_is_regular(cfg_path)) {
        if (vlm_config_load(cfg_path, &in.cfg, &err)) goto fail;
        in.have_config = true;
    }
    if (vlm_tensor_set_open(in.path, &in.set, &err)) goto fail;
    for (size_t i = 0; i < vlm_tensor_set_file_count(in.set); i++)
        in.disk_bytes += vlm_st_file_size(vlm_tensor_set_file(in.set, i));
    for (size_t i = 0; i < vlm_tensor_set_count(in.set); i++) {
        const vlm_st_tensor *t = vlm_tensor_set_at(in.set, i);
        in.params[phi3v_part_of(t->name)] += t->nelem;
        in.total += t->nelem;
        in.tensor_bytes += t->nbytes;
        in.dtype_tensors[t->dtype]++;
        in.dtype_params[t->dtype] += t->nelem;
        for (size_t k = 0; k < N_PREC; k++) in.prec_bytes[k] += bytes_at(&precisions[k], t);
    }
    if (in.have_config) in.valid = phi3v_check_tensors(&in.cfg, in.set, &in.check) == VLM_OK;
    rc = json ? print_json(&in, tensors) : (print_text(&in, tensors), CLI_OK);
    if (in.have_config && !in.valid) {
        cli_error("info", "%s", in.check.msg);
        rc = CLI_FAIL;
    }
    goto done;
fail:
    cli_error("info", "%s", err.msg);
done:
    vlm_tensor_set_close(in.set);
    vlm_config_free(&in.cfg);
    vlm_free(in.path);
    return rc;
}

const struct cli_command cli_command_info = {
    "info",
    "show what a checkpoint holds: architecture, parameters, dtypes, sizes",
    run,
    "usage: vlmtest info MODEL [--json] [--tensors]\n"
    "\n"
    "MODEL is a model folder, a .safetensors file, a model.safetensors.index.json,\n"
    "or org/name[@revision] in the Hugging Face cache.\n"
    "\n"
    "Prints the architecture, the parameter count per part (vision tower,\n"
    "projector, language model), the dtypes stored, the bytes on disk and the\n"
    "weight bytes at each precision (f32, bf16, f16, q8_0, q4_0, q4_K, every\n"
    "tensor as the quantization policy of docs/planner.md holds it: tensors\n"
    "that are not quantized stay as stored). With a config.json,\n"
    "checks that every tensor the config implies is present with its shape;\n"
    "exits 1 if not. Only headers are read.\n"
    "\n"
    "  --json     machine-readable output\n"
    "  --tensors  list every tensor\n",
};
