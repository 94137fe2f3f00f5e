/* runtime/planner_model - the planner's view of a checkpoint: precisions, the
 * quantization policy, the tensor list with stored dtypes, the measured
 * fixed overhead. See planner.h. */
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "io/hf.h"
#include "mem/monitor.h"
#include "runtime/planner.h"
#include "models/phi3v_tensors.h"
#include "tensor/quant.h"
#include "text/tokenizer.h"

/* ---------------------------------------------------------------------------
 * precisions */

static const char *const prec_names[VLM_PREC_COUNT] = {
    "native", "f32", "bf16", "f16", "q8_0", "q4_0", "q4_K", "q4_0_all",
};

const char *vlm_precision_name(vlm_precision p) {
    return (unsigned)p < VLM_PREC_COUNT ? prec_names[p] : "?";
}

int vlm_precision_parse(const char *name) {
    for (int i = 0; name && i < VLM_PREC_COUNT; i++)
        if (strcmp(prec_names[i], name) == 0) return i;
    return -1;
}

static vlm_dtype prec_dtype(vlm_precision p) {
    static const vlm_dtype d[VLM_PREC_COUNT] = {
        VLM_DTYPE_F32,  VLM_DTYPE_F32,  VLM_DTYPE_BF16, VLM_DTYPE_F16,
        VLM_DTYPE_Q8_0, VLM_DTYPE_Q4_0, VLM_DTYPE_Q4_K, VLM_DTYPE_Q4_0,
    };
    return d[p];
}

vlm_dtype vlm_plan_kv_dtype(vlm_precision p, vlm_dtype requested) {
    return p == VLM_PREC_Q4_0_ALL ? VLM_DTYPE_BF16 : requested;
}

uint64_t vlm_plan_dtype_bytes(vlm_dtype t, uint64_t nelem) {
    const vlm_dtype_info *d = vlm_dtype_get(t);
    return (nelem + d->block_elems - 1) / d->block_elems * d->block_bytes;
}

uint64_t vlm_plan_read_block_bytes(uint64_t row_bytes, uint64_t nbytes) {
    if (row_bytes == 0) return nbytes;
    uint64_t rows = PLAN_READ_BLOCK / row_bytes;
    uint64_t b = (rows ? rows : 1) * row_bytes;
    return b < nbytes ? b : nbytes;
}

/* ---------------------------------------------------------------------------
 * the quantization policy (the one place it is decided) */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* A block type whose blocks tile rows of `row` elements, starting from t:
 * q4_K -> q4_0 (same 4.5 bits/weight) when rows are whole 32-blocks;
 * otherwise none (-1). */
static int fit_rows(vlm_dtype t, int64_t row) {
    if (row > 0 && row % vlm_dtype_get(t)->block_elems == 0) return (int)t;
    if (t == VLM_DTYPE_Q4_K && row > 0 && row % VLM_QK == 0) return VLM_DTYPE_Q4_0;
    return -1;
}

vlm_dtype vlm_plan_tensor_dtype(vlm_precision p, const char *name, int rank, const int64_t *shape,
                                vlm_dtype stored) {
    if (p == VLM_PREC_NATIVE || (unsigned)p >= VLM_PREC_COUNT) return stored;
    vlm_dtype target = prec_dtype(p);
    if (!vlm_quant_is_block(target)) return target;
    /* Block precisions: weight matrices only. */
    bool matrix =
        rank == 2 && ends_with(name, ".weight") && strstr(name, "position_embedding") == NULL;
    if (!matrix) return stored;
    /* The output head, the vision tower and the projector: not below q8_0,
     * except on the last degraded rung (q4_0_all). */
    bool floor_q8 = p != VLM_PREC_Q4_0_ALL &&
                    (strcmp(name, "lm_head.weight") == 0 || phi3v_part_of(name) != PHI3V_PART_LM);
    if (floor_q8) target = VLM_DTYPE_Q8_0;
    int t = fit_rows(target, shape[rank - 1]);
    return t < 0 ? stored : (vlm_dtype)t;
}

/* ---------------------------------------------------------------------------
 * the model */

static vlm_dtype dtype_from_torch(const char *torch_dtype) {
    if (strcmp(torch_dtype, "float32") == 0) return VLM_DTYPE_F32;
    if (strcmp(torch_dtype, "float16") == 0) return VLM_DTYPE_F16;
    return VLM_DTYPE_BF16; /* "bfloat16", and what Phi-3-vision ships when absent */
}

vlm_status plan_model_init(plan_model *pm, const vlm_config *cfg, const vlm_tensor_set *set,
                           vlm_dtype stored, vlm_err *err) {
    vlm_status st = phi3v_config_from_config(cfg, "config.json", &pm->arch, err);
    if (st != VLM_OK) return st;
    if (set && (st = phi3v_check_tensors(cfg, set, err)) != VLM_OK) return st;
    phi3v_tensor_spec *specs = NULL;
    size_t n = 0;
    if ((st = phi3v_tensor_specs(cfg, &specs, &n, err)) != VLM_OK) return st;
    pm->tensors = VLM_NEW_ARRAY(plan_tensor, n, VLM_MEM_OTHER);
    if (!pm->tensors) {
        vlm_free(specs);
        return vlm_err_set(err, VLM_ERR_NOMEM, "planner: out of memory for %zu tensors", n);
    }
    pm->n_tensors = n;
    if (pm->default_num_crops <= 0) pm->default_num_crops = 4;
    pm->from_headers = set != NULL;
    pm->stored_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        plan_tensor *t = &pm->tensors[i];
        const phi3v_tensor_spec *s = &specs[i];
        snprintf(t->name, sizeof t->name, "%s", s->name);
        t->rank = s->rank;
        t->nelem = 1;
        for (int k = 0; k < s->rank; k++) {
            t->shape[k] = s->shape[k];
            t->nelem *= (uint64_t)s->shape[k];
        }
        t->used = s->used;
        const vlm_st_tensor *h = set ? vlm_tensor_set_find(set, s->name) : NULL;
        t->stored = h ? h->dtype : stored;
        pm->stored_bytes += vlm_plan_dtype_bytes(t->stored, t->nelem);
    }
    vlm_free(specs);
    return VLM_OK;
}

/* Accounted bytes a tokenizer.json holds once loaded, and at the peak of
 * loading it, measured in a scope (nests with any caller's). */
static vlm_status measure_tokenizer(const char *path, uint64_t *held, uint64_t *peak,
                                    vlm_err *err) {
    vlm_mem_scope sc;
    vlm_mem_scope_result r;
    tokenizer *t = NULL;
    vlm_mem_scope_begin(&sc, "planner tokenizer");
    vlm_status st = tokenizer_load(path, &t, err);
    vlm_mem_scope_end(&sc, &r);
    if (st != VLM_OK) return st;
    *held = r.accounted_end > r.accounted_start ? r.accounted_end - r.accounted_start : 0;
    *peak = r.accounted_peak > r.accounted_start ? r.accounted_peak - r.accounted_start : 0;
    tokenizer_free(t);
    return VLM_OK;
}

vlm_status plan_model_open(plan_model *pm, const char *ref, vlm_err *err) {
    memset(pm, 0, sizeof *pm);
    vlm_model_configs mc;
    memset(&mc, 0, sizeof mc);
    vlm_tensor_set *set = NULL;
    char dir[4096], path[4200];
    vlm_status st = vlm_hf_resolve(ref, &pm->path, err);
    if (st != VLM_OK) return st;
    /* The configs live in the folder, or next to a file given directly. */
    if (vlm_file_is_dir(pm->path)) {
        snprintf(dir, sizeof dir, "%s", pm->path);
    } else {
        const char *slash = strrchr(pm->path, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - pm->path) : 1,
                 slash ? pm->path : ".");
    }
    if ((st = vlm_model_configs_load(dir, &mc, err)) != VLM_OK) goto fail;
    pm->cfg = mc.config;
    memset(&mc.config, 0, sizeof mc.config);
    pm->default_num_crops = mc.preproc.num_crops > 0 ? mc.preproc.num_crops : 4;

    /* Headers only: opening maps the files and parses the JSON headers. */
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    if ((st = vlm_tensor_set_open_unmapped(pm->path, &set, err)) != VLM_OK) goto fail;
    vlm_alloc_get_stats(&b);
    pm->index_bytes = b.total_current > a.total_current ? b.total_current - a.total_current : 0;
    st = plan_model_init(pm, &pm->cfg, set, dtype_from_torch(pm->cfg.torch_dtype), err);
    if (st != VLM_OK) goto fail;

    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    pm->tokenizer_bytes = PLAN_DEFAULT_TOKENIZER_BYTES;
    pm->tokenizer_peak = PLAN_DEFAULT_TOKENIZER_PEAK;
    if (vlm_file_is_regular(path)) {
        if ((st = measure_tokenizer(path, &pm->tokenizer_bytes, &pm->tokenizer_peak, err)) !=
            VLM_OK)
            goto fail;
        pm->tokenizer_measured = true;
    }
    vlm_tensor_set_close(set);
    vlm_model_configs_free(&mc);
    return VLM_OK;
fail:
    vlm_tensor_set_close(set);
    vlm_model_configs_free(&mc);
    plan_model_free(pm);
    return st;
}

void plan_model_free(plan_model *pm) {
    if (!pm) return;
    vlm_free(pm->path);
    vlm_free(pm->tensors);
    vlm_config_free(&pm->cfg);
    memset(pm, 0, sizeof *pm);
}

void plan_weight_bytes(const plan_model *pm, vlm_precision p, uint64_t *loaded, uint64_t *all) {
    uint64_t l = 0, a = 0;
    for (size_t i = 0; i < pm->n_tensors; i++) {
        const plan_tensor *t = &pm->tensors[i];
        uint64_t b = vlm_plan_dtype_bytes(
            vlm_plan_tensor_dtype(p, t->name, t->rank, t->shape, t->stored), t->nelem);
        a += b;
        if (t->used) l += b;
    }
    if (loaded) *loaded = l;
    if (all) *all = a;
}
