/* runtime/api - the public API (include/vlm/vlm.h): loading a model folder,
 * sessions with the conversation -> ids rule, generation with stop strings
 * and streaming.
 *
 * Loading: resolve the reference (folder, file or org/name[@rev] in the HF
 * cache) -> the JSON files (io/config) -> the tensor headers (read, not mapped) ->
 * the family's tensor check -> the family's model over a weight source that
 * maps each kept tensor or reads and converts it -> tokenizer.json -> stop ids
 * (generation_config, else {32007, 32000, 2}) -> num_crops.
 *
 * Sessions (the rule the demo model was trained with, see docs/model.md):
 *   turn 1: [<|system|>\n{system}<|end|>\n]<|user|>\n<|image_1|>\n...{text}<|end|>\n<|assistant|>\n
 *            every chunk (split at image tags) with BOS, as the processor;
 *   turn t:  \n<|user|>\n<|image_k|>\n...{text}<|end|>\n<|assistant|>\n
 *            the first chunk without BOS (it continues), chunks after a tag with BOS;
 * the generated ids stay as generated, <|end|> appended when generation
 * stopped without producing it. Only the new tokens are prefilled. */
#include "runtime/api_internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "base/log.h"
#include "io/config.h"
#include "io/hf.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "mem/monitor.h"
#include "models/phi3v_image.h"
#include "models/phi3v_tensors.h"
#include "runtime/load_weights.h"
#include "runtime/planner.h"
#include "runtime/sampler.h"
#include "text/chat.h"

/* What the attempts of one load share: the ladder (known once the first
 * attempt has planned) and the precision the last attempt used. */
typedef struct load_ladder {
    vlm_precision prec[VLM_PREC_COUNT];
    uint64_t bytes[VLM_PREC_COUNT]; /* weight bytes of the used tensors at each */
    int n;
    int tried;     /* precision of the last attempt, -1 before the plan chose one */
    int tried_gpu; /* GPU step of the last attempt's rung, -1: a CPU rung (or none) */
    char tried_label[96];
    int gpu_from; /* GPU rungs before this step failed already (PLAN_MAX_RUNGS: none left) */
    bool no_fit;  /* the plan found no rung: an answer, not a failure to retry */
} load_ladder;

struct vlm_model {
    char *dir; /* the model folder (accounted) */
    vlm_model_configs cfgs;
    vlm_tensor_set *ts;
    cpu_pool *pool;
    arch_model *am;
    tokenizer *tok;
    int32_t stop_ids[VLM_MAX_STOP_IDS];
    int n_stop;
    int32_t end_id; /* <|end|>, -1 if the vocabulary has none */
    int num_crops;
    int crop_group;      /* crops through the vision tower at once (the plan's; >= 1) */
    int64_t max_context; /* 0: the session default */
    load_weights lw;     /* the weight source: converted tensors */
    /* the plan followed (see vlm_model_desc) */
    vlm_precision precision;
    char rung[96], gave_up[256], fallback_note[192];
    uint64_t plan_bytes, plan_budget, alarm_threshold;
    vlm_mem_sampler *watch; /* opts.watch_memory: the sampler with the plan's alarm */
    bool budget_given, plan_fits;
    int fallbacks;
    /* where the parts run (the rung's placement; all zero on the CPU) */
    vlm_placement place;
    uint64_t gpu_plan_bytes, gpu_budget;
    char first_rung[96]; /* the first attempt's plan, for reports of a fallback */
    /* What a run-time fallback reloads from (see chat_turn): the reference
     * and options of the load, the ladder it used, and the sessions open on
     * the model (a reload is done only under a single session). */
    char *ref;
    vlm_load_options opts;
    load_ladder ladder;
    int n_sessions;
};

struct vlm_session {
    vlm_model *m;
    session *s;
    char *system; /* accounted, NULL if none */
    int n_turns;
    int n_images;  /* images so far: the next is <|image_{n_images+1}|> */
    bool need_end; /* the last answer did not end with <|end|> */
    int32_t *gen;  /* [gen_cap] ids of the last turn */
    int n_gen, gen_cap;
    /* Copies of the images of the turns so far (accounted, image): a
     * fallback re-encodes them on the lower rung to replay the conversation.
     * no_replay: a copy failed, so this session does not fall back. */
    vlm_image **hist;
    int n_hist, cap_hist;
    bool no_replay;
};

/* Device memory of one phase: the accounted peak is restarted at the
 * phase's start; at its end the peak and the device's own used figure are
 * read. Both stay 0 without a GPU. */
static void gpu_phase_begin(void) {
    vlm_gpu_mem_reset_peak();
}

static void gpu_phase_end(uint64_t *peak, uint64_t *used) {
    vlm_gpu_mem_stats gs;
    vlm_gpu_mem_stats_get(&gs);
    *peak = gs.total_peak;
    *used = 0;
    vlm_gpu_info gi;
    if (vlm_gpu_built() && vlm_gpu_query(&gi, NULL) == VLM_OK && gi.total_bytes > gi.free_bytes)
        *used = gi.total_bytes - gi.free_bytes;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------------------
 * loading */

void vlm_load_options_init(vlm_load_options *o) {
    memset(o, 0, sizeof *o);
    o->device = "auto";
}

static bool is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The folder of a resolved reference: itself, or the folder of a file. */
static vlm_status model_dir(const char *resolved, char **out, vlm_err *err) {
    if (is_dir(resolved)) {
        *out = vlm_strdup(resolved, VLM_MEM_OTHER);
    } else {
        size_t len = strlen(resolved);
        if (len >= 5 && strcmp(resolved + len - 5, ".gguf") == 0)
            return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                               "%s: GGUF models are not loaded by this engine yet", resolved);
        const char *slash = strrchr(resolved, '/');
        *out = slash ? vlm_strndup(resolved, (size_t)(slash - resolved), VLM_MEM_OTHER)
                     : vlm_strdup(".", VLM_MEM_OTHER);
    }
    return *out ? VLM_OK : vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", resolved);
}

static vlm_status check_options(const vlm_load_options *o, vlm_err *err) {
    int dev = plan_device_parse(o->device);
    if (dev < 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "device \"%s\": expected \"cuda\", \"cpu\" or \"auto\"", o->device);
    if (dev == PLAN_DEVICE_CUDA && !vlm_gpu_built())
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "device \"cuda\": this build has no CUDA backend (rebuild with nvcc "
                           "installed, or make CUDA=1; \"cpu\" and \"auto\" run on the CPU)");
    if (o->precision && o->precision[0] && vlm_precision_parse(o->precision) < 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "precision \"%s\": expected f32, bf16, f16, q8_0, q4_0 or q4_K",
                           o->precision);
    if (o->num_crops < 0 || o->num_crops > PHI3V_MAX_NUM_CROPS)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "num_crops %d: expected 1..%d", o->num_crops,
                           PHI3V_MAX_NUM_CROPS);
    if (o->max_context < 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "max_context %d", o->max_context);
    return VLM_OK;
}

static vlm_dtype stored_dtype(const char *torch_dtype) {
    if (strcmp(torch_dtype, "float32") == 0) return VLM_DTYPE_F32;
    if (strcmp(torch_dtype, "float16") == 0) return VLM_DTYPE_F16;
    return VLM_DTYPE_BF16;
}

/* Plan the load: the rung (precision, and crops/context when degraded) and
 * its record in m. forced >= 0: that precision only (the user's or a
 * fallback's). VLM_ERR_NOMEM when no rung fits and nothing was forced. */
static vlm_status plan_load(vlm_model *m, const vlm_load_options *opts, int forced,
                            bool user_forced, load_ladder *ld, vlm_err *err) {
    plan_model pm;
    memset(&pm, 0, sizeof pm);
    pm.default_num_crops = m->cfgs.preproc.num_crops > 0 ? m->cfgs.preproc.num_crops : 4;
    pm.tokenizer_bytes = PLAN_DEFAULT_TOKENIZER_BYTES;
    pm.tokenizer_peak = PLAN_DEFAULT_TOKENIZER_PEAK;
    vlm_status st =
        plan_model_init(&pm, &m->cfgs.config, m->ts, stored_dtype(m->cfgs.config.torch_dtype), err);
    if (st) {
        plan_model_free(&pm);
        return st;
    }
    if (ld->n == 0) {
        ld->n = vlm_plan_ladder(&pm, ld->prec);
        for (int i = 0; i < ld->n; i++) plan_weight_bytes(&pm, ld->prec[i], &ld->bytes[i], NULL);
    }
    vlm_plan *plan = vlm_calloc(1, sizeof *plan, VLM_MEM_OTHER);
    if (!plan) {
        plan_model_free(&pm);
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for the memory plan", m->dir);
    }
    plan_request r;
    plan_request_init(&r);
    r.context = opts->max_context;
    r.num_crops = opts->num_crops;
    r.n_threads = opts->n_threads;
    r.mem_budget = opts->mem_budget;
    r.gpu_mem_budget = opts->gpu_mem_budget;
    r.allow_degrade = opts->allow_degrade;
    r.precision = forced;
    r.device = (plan_device_choice)plan_device_parse(opts->device);
    r.gpu_from = ld->gpu_from;
    char no_gpu[256] = "";
    if (r.device != PLAN_DEVICE_CPU && ld->gpu_from < PLAN_MAX_RUNGS)
        plan_request_detect_gpu(&r, no_gpu, sizeof no_gpu);
    if (r.device == PLAN_DEVICE_CUDA && !r.gpu_available) {
        vlm_free(plan);
        plan_model_free(&pm);
        ld->no_fit = true;
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "device \"cuda\": %s", no_gpu);
    }
    r.mapped_bytes = vlm_tensor_set_mapped_bytes(m->ts);
    st = vlm_plan_make(&pm, &r, plan, err);
    if (!st && plan->chosen < 0 && pm.arch.has_vision && plan->n_rungs > 0 &&
        strstr(plan->rungs[plan->n_rungs - 1].reason, "cannot hold")) {
        /* A context too short for one image at num_crops rules out every
         * rung; text still fits, and an image turn fails later with
         * VLM_ERR_LIMIT. Plan text only then. */
        r.n_images = 0;
        st = vlm_plan_make(&pm, &r, plan, err);
    }
    if (!st && plan->chosen < 0 && r.device == PLAN_DEVICE_CUDA) {
        /* GPU rungs only, and none fits (or none is left after a fallback):
         * a forced precision does not make a rung that places nothing. */
        ld->no_fit = true;
        st = vlm_err_set(err, VLM_ERR_NOMEM,
                         "%s: device \"cuda\": no GPU rung fits the GPU budget of %llu bytes and "
                         "the host budget of %llu bytes%s",
                         m->dir, (unsigned long long)plan->gpu_budget,
                         (unsigned long long)plan->budget,
                         ld->gpu_from > 0 ? " after running out of device memory" : "");
    }
    if (!st && plan->chosen < 0 && !user_forced && forced < 0) {
        /* nothing fits: name the last rung tried */
        const plan_rung *g = &plan->rungs[plan->n_rungs - 1];
        ld->no_fit = true;
        st = vlm_err_set(err, VLM_ERR_NOMEM,
                         "%s: the model does not fit the memory budget of %llu bytes: the "
                         "lowest rung (%s) needs %llu bytes%s",
                         m->dir, (unsigned long long)plan->budget, g->label,
                         (unsigned long long)g->e.peak,
                         opts->allow_degrade ? "" : " (allow_degrade may drop crops or context)");
    }
    if (!st) {
        /* The rung: the chosen one, or (forced and not fitting) the one tried. */
        const plan_rung *g = &plan->rungs[plan->chosen >= 0 ? plan->chosen : plan->n_rungs - 1];
        m->precision = g->e.s.precision;
        snprintf(m->rung, sizeof m->rung, "%s", g->label);
        const char *gave = g->degraded ? strstr(g->reason, "gave up ") : NULL;
        snprintf(m->gave_up, sizeof m->gave_up, "%s", gave ? gave + 8 : "");
        m->plan_bytes = g->e.peak;
        m->plan_budget = plan->budget;
        m->alarm_threshold = plan->alarm_threshold;
        m->budget_given = plan->budget_given;
        m->plan_fits = plan->chosen >= 0;
        m->crop_group = g->e.s.crop_group > 0 ? g->e.s.crop_group : 1;
        if (g->degraded) {
            m->num_crops = g->e.s.num_crops;
            m->max_context = g->e.s.context;
        }
        ld->tried = (int)m->precision;
        ld->tried_gpu = g->gpu_step;
        snprintf(ld->tried_label, sizeof ld->tried_label, "%s", g->label);
        plan_setting_placement(&g->e.s, pm.arch.n_layers, &m->place);
        m->gpu_plan_bytes = g->e.gpu_bytes;
        m->gpu_budget = plan->gpu_budget;
    }
    vlm_free(plan);
    plan_model_free(&pm);
    return st;
}

/* One attempt at precision `forced` (-1: as the plan chooses). On failure
 * everything the attempt held is freed. */
static vlm_status load_attempt(const char *ref, const vlm_load_options *opts, int forced,
                               load_ladder *ld, vlm_model **out, vlm_err *err) {
    *out = NULL;
    vlm_model *m = vlm_calloc(1, sizeof *m, VLM_MEM_OTHER);
    if (!m) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", ref);
    char *resolved = NULL;
    char path[4096];
    vlm_status st = vlm_hf_resolve(ref, &resolved, err);
    if (st) goto fail;
    if ((st = model_dir(resolved, &m->dir, err))) goto fail;
    if ((st = vlm_model_configs_load(m->dir, &m->cfgs, err))) goto fail;
    if ((st = check_options(opts, err))) goto fail;

    /* The family's table comes from the registry; the family builds its
     * model from the parsed config.json. */
    snprintf(path, sizeof path, "%s/config.json", m->dir);
    const vlm_arch *arch = NULL;
    if ((st = vlm_arch_for_config(&m->cfgs.config, path, &arch, err))) goto fail;

    /* Unmapped: the weight source maps or reads each tensor as the plan
     * says, so the address space holds no more of the checkpoint than the
     * plan counts (a limit below its size can still hold a quantized rung). */
    if ((st = vlm_tensor_set_open_unmapped(is_dir(resolved) ? m->dir : resolved, &m->ts, err)))
        goto fail;
    bool is_phi3v = strcmp(arch->name, PHI3V_ARCH) == 0;
    if (is_phi3v && (st = phi3v_check_tensors(&m->cfgs.config, m->ts, err))) goto fail;
    m->num_crops = opts->num_crops > 0 ? opts->num_crops : m->cfgs.preproc.num_crops;
    m->max_context = opts->max_context;

    /* The memory plan (Phi-3-vision; other families load as stored). */
    bool user_forced = opts->precision && opts->precision[0];
    if (forced < 0 && user_forced) forced = vlm_precision_parse(opts->precision);
    if (is_phi3v) {
        if ((st = plan_load(m, opts, forced, user_forced, ld, err))) goto fail;
    } else {
        m->precision = forced >= 0 ? (vlm_precision)forced : VLM_PREC_NATIVE;
        snprintf(m->rung, sizeof m->rung, "cpu %s (not planned)", vlm_precision_name(m->precision));
        m->plan_fits = true;
    }

    if ((st = cpu_pool_create(opts->n_threads, &m->pool, err))) goto fail;
    load_weights_init(&m->lw, m->ts, m->precision, m->pool);
    vlm_weight_source src = load_weights_source(&m->lw);
    const vlm_placement *place = vlm_placement_uses_gpu(&m->place) ? &m->place : NULL;
    if ((st = arch_model_create(&m->cfgs.config, path, &src, m->pool, place, &m->am, err)))
        goto fail;
    if (m->am->info.has_vision && m->am->info.image_size != PHI3V_CROP_SIZE) {
        st = vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                         "%s: vision image_size %d; the image processor makes %d-px crops", path,
                         m->am->info.image_size, PHI3V_CROP_SIZE);
        goto fail;
    }

    snprintf(path, sizeof path, "%s/tokenizer.json", m->dir);
    if (!vlm_file_is_regular(path)) {
        st = vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: missing (the model's tokenizer)", path);
        goto fail;
    }
    if ((st = tokenizer_load(path, &m->tok, err))) goto fail;
    m->end_id = tokenizer_token_to_id(m->tok, "<|end|>", 7);

    /* Stop ids: generation_config's eos_token_id, else spec §2.6's
     * {32007, 32000, 2} (vlm_gen_config_default). Ids outside the vocab
     * could never be produced and are dropped. */
    for (int i = 0; i < m->cfgs.gen.n_stop_ids; i++) {
        int id = m->cfgs.gen.stop_ids[i];
        if (id >= 0 && id < m->am->info.vocab) m->stop_ids[m->n_stop++] = id;
    }
    if (m->max_context > 0 && m->max_context > m->am->info.max_positions) {
        st = vlm_err_set(err, VLM_ERR_INVALID_ARG,
                         "max_context %lld is beyond the model's %lld positions",
                         (long long)m->max_context, (long long)m->am->info.max_positions);
        goto fail;
    }
    vlm_free(resolved);
    *out = m;
    return VLM_OK;
fail:
    vlm_free(resolved);
    vlm_model_free(m);
    return st;
}

/* The rung below precision p on the ladder: the first with fewer weight
 * bytes than p (-1: none). Before the ladder is known: the fixed order
 * native -> q8_0 -> q4_K -> q4_0. */
static int rung_below(const load_ladder *ld, int p) {
    if (p == VLM_PREC_Q4_0_ALL) return -1; /* the last rung: nothing is below it */
    if (ld->n == 0) {
        static const vlm_precision fixed[] = {VLM_PREC_NATIVE, VLM_PREC_Q8_0, VLM_PREC_Q4_K,
                                              VLM_PREC_Q4_0};
        for (int i = 0; i < 3; i++)
            if ((int)fixed[i] == p) return (int)fixed[i + 1];
        return -1;
    }
    uint64_t have = 0;
    bool found = false;
    for (int i = 0; i < ld->n; i++)
        if ((int)ld->prec[i] == p) {
            have = ld->bytes[i];
            found = true;
        }
    for (int i = 0; i < ld->n; i++)
        if (!found ? i > 0 : ld->bytes[i] < have) return (int)ld->prec[i];
    return -1;
}

vlm_status vlm_model_load(const char *ref, const vlm_load_options *opts, vlm_model **out,
                          vlm_err *err) {
    if (!out) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_model_load: out is NULL");
    *out = NULL;
    if (!ref || !ref[0])
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_model_load: no model reference");
    vlm_load_options def;
    if (!opts) {
        vlm_load_options_init(&def);
        opts = &def;
    }
    vlm_json_init();
    vlm_gpu_monitor_install(); /* the monitor's snapshots and timelines see the device */
    /* Attempts: as planned, then one rung down after each allocation
     * failure, until the ladder ends. An attempt that failed before the
     * plan chose a rung is retried as planned (at most once more). */
    load_ladder ld;
    memset(&ld, 0, sizeof ld);
    ld.tried = -1;
    ld.tried_gpu = -1;
    int forced = -1, fallbacks = 0, unplanned_retries = 0;
    char note[192] = "", first[96] = "";
    vlm_status st;
    for (;;) {
        st = load_attempt(ref, opts, forced, &ld, out, err);
        if (!first[0] && ld.tried >= 0) snprintf(first, sizeof first, "%s", ld.tried_label);
        if (st != VLM_ERR_NOMEM || ld.no_fit) break;
        int next;
        if (ld.tried < 0) {
            if (unplanned_retries++ > 0) break;
            next = forced;
        } else if (ld.tried_gpu >= 0) {
            /* Out of memory on a GPU rung (the device's or the host's):
             * everything the attempt held is freed; plan again from the next
             * GPU rung, the CPU rungs after them. */
            next = forced;
            ld.gpu_from = ld.tried_gpu + 1;
            size_t len = strlen(note);
            snprintf(note + len, sizeof note - len, "%s%s (out of memory)", len ? ", " : "",
                     ld.tried_label);
            fallbacks++;
        } else {
            next = rung_below(&ld, ld.tried);
            if (next < 0) break;
            ld.gpu_from = PLAN_MAX_RUNGS; /* a CPU rung failed: no GPU rung comes after it */
            size_t len = strlen(note);
            snprintf(note + len, sizeof note - len, "%s%s -> %s", len ? ", " : "",
                     vlm_precision_name((vlm_precision)ld.tried),
                     vlm_precision_name((vlm_precision)next));
            fallbacks++;
        }
        VLM_INFO("%s: out of memory while loading at %s (%s); retrying at %s", ref,
                 ld.tried >= 0 ? vlm_precision_name((vlm_precision)ld.tried) : "the plan",
                 err ? err->msg : "",
                 next >= 0 ? vlm_precision_name((vlm_precision)next) : "the plan");
        ld.tried = -1;
        ld.tried_gpu = -1;
        forced = next;
    }
    if (st == VLM_OK) {
        vlm_model *m = *out;
        m->fallbacks = fallbacks;
        snprintf(m->first_rung, sizeof m->first_rung, "%s", first);
        snprintf(m->fallback_note, sizeof m->fallback_note, "%s", note);
        m->ladder = ld;
        m->opts = *opts;
        m->opts.device = NULL;    /* the caller's string: not kept (a fallback reloads on */
        m->opts.precision = NULL; /* the CPU, at the rung it names) */
        m->ref = vlm_strdup(ref, VLM_MEM_OTHER);
        if (!m->ref) {
            vlm_model_free(m);
            *out = NULL;
            st = vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", ref);
        } else if (opts->watch_memory) {
            /* The plan's alarm: above it the sampler cleans up, then warns.
             * Watching is a help, not a need: without it the model works. */
            vlm_mem_sampler_config sc = {0};
            sc.capacity = 64;
            sc.threshold_bytes = m->alarm_threshold ? m->alarm_threshold : VLM_MEM_NO_LIMIT;
            vlm_err we = {0};
            if (vlm_mem_sampler_start(&sc, &m->watch, &we) != VLM_OK) {
                VLM_WARN("%s: memory watch not started: %s", ref, we.msg);
                m->watch = NULL;
            }
        }
    }
    return st;
}

/* Everything a load attempt made (what a fallback frees before reloading). */
static void model_release(vlm_model *m) {
    tokenizer_free(m->tok);
    arch_model_free(m->am);
    load_weights_free(&m->lw);
    cpu_pool_free(m->pool);
    vlm_tensor_set_close(m->ts);
    vlm_model_configs_free(&m->cfgs);
    vlm_free(m->dir);
    m->tok = NULL;
    m->am = NULL;
    m->pool = NULL;
    m->ts = NULL;
    m->dir = NULL;
    memset(&m->cfgs, 0, sizeof m->cfgs);
}

void vlm_model_free(vlm_model *m) {
    if (!m) return;
    if (m->watch) {
        vlm_mem_sampler_stop(m->watch);
        vlm_mem_sampler_destroy(m->watch);
        m->watch = NULL;
    }
    model_release(m);
    vlm_free(m->ref);
    vlm_free(m);
    /* The mapping is gone and every block is freed; malloc keeps freed
     * small blocks in its arenas, so the monitor's cleanup trims them back
     * to the OS (registered callbacks are the caller's to run). */
    vlm_mem_cleanup(false, NULL);
}

static const char *dtype_short(vlm_dtype d) {
    switch (d) {
    case VLM_DTYPE_F32:
        return "f32";
    case VLM_DTYPE_F16:
        return "f16";
    case VLM_DTYPE_BF16:
        return "bf16";
    default:
        return "other";
    }
}

void vlm_model_describe(const vlm_model *m, vlm_model_desc *o) {
    memset(o, 0, sizeof *o);
    if (!m || !m->am) return; /* none, or lost in a failed run-time fallback */
    const vlm_model_info *info = &m->am->info;
    snprintf(o->arch, sizeof o->arch, "%s", info->arch);
    snprintf(o->path, sizeof o->path, "%s", m->dir);
    o->num_crops = m->num_crops;
    o->crop_group = m->crop_group > 0 ? m->crop_group : 1;
    o->max_positions = info->max_positions;
    o->context = m->max_context > 0 ? m->max_context
                                    : (info->max_positions < 4096 ? info->max_positions : 4096);
    o->vocab = info->vocab;
    o->n_layers = info->n_layers;
    o->hidden = info->hidden;
    o->n_threads = cpu_pool_threads(m->pool);
    int dt = -1;
    for (size_t i = 0; i < vlm_tensor_set_count(m->ts); i++) {
        const vlm_st_tensor *t = vlm_tensor_set_at(m->ts, i);
        o->weight_bytes += t->nbytes;
        if (dt == -1)
            dt = (int)t->dtype;
        else if (dt != (int)t->dtype)
            dt = -2;
    }
    snprintf(o->dtype, sizeof o->dtype, "%s", dt == -2 ? "mixed" : dtype_short((vlm_dtype)dt));
    snprintf(o->precision, sizeof o->precision, "%s", vlm_precision_name(m->precision));
    snprintf(o->rung, sizeof o->rung, "%s", m->rung);
    snprintf(o->gave_up, sizeof o->gave_up, "%s", m->gave_up);
    snprintf(o->kv_dtype, sizeof o->kv_dtype, "%s",
             vlm_plan_kv_dtype(m->precision, VLM_DTYPE_F32) == VLM_DTYPE_BF16 ? "bf16" : "f32");
    /* degraded: some weights were stored smaller than in the checkpoint, or
     * the rung gave up crops or context */
    o->degraded = m->lw.converted_bytes < m->lw.source_bytes || m->gave_up[0] != '\0';
    o->plan_bytes = m->plan_bytes;
    o->plan_budget = m->plan_budget;
    o->alarm_threshold = m->alarm_threshold;
    o->mem_alarms = m->watch ? vlm_mem_sampler_alarms(m->watch) : 0;
    o->budget_given = m->budget_given;
    o->loaded_weight_bytes = m->lw.converted_bytes + m->lw.kept_bytes;
    o->fallbacks = m->fallbacks;
    snprintf(o->fallback_note, sizeof o->fallback_note, "%s", m->fallback_note);
    o->gpu_layers = m->place.gpu_layers;
    o->head_on_gpu = m->place.head_on_gpu;
    o->vision_on_gpu = m->place.vision_on_gpu;
    snprintf(o->device, sizeof o->device, "%s",
             !vlm_placement_uses_gpu(&m->place)                                      ? "cpu"
             : m->place.head_on_gpu && (m->place.vision_on_gpu || !info->has_vision) ? "cuda"
                                                                                     : "cuda+cpu");
    o->gpu_plan_bytes = m->gpu_plan_bytes;
    snprintf(o->first_rung, sizeof o->first_rung, "%s", m->first_rung);
    o->gpu_budget = m->gpu_budget;
    uint64_t counts[PHI3V_PART_COUNT] = {0};
    vlm_err err;
    if (strcmp(info->arch, PHI3V_ARCH) == 0 &&
        phi3v_param_counts(&m->cfgs.config, counts, &err) == VLM_OK) {
        o->params_vision = counts[PHI3V_PART_VISION];
        o->params_projector = counts[PHI3V_PART_GLUE];
        o->params_lm = counts[PHI3V_PART_LM];
        o->params_total = o->params_vision + o->params_projector + o->params_lm;
    }
}

arch_model *vlm_model_arch(vlm_model *m) {
    return m->am;
}

const tokenizer *vlm_model_tokenizer(const vlm_model *m) {
    return m->tok;
}

const int32_t *vlm_model_stop_ids(const vlm_model *m, int *n) {
    *n = m->n_stop;
    return m->stop_ids;
}

/* ---------------------------------------------------------------------------
 * prompts */

void vlm_prompt_free(vlm_prompt *p) {
    if (!p) return;
    tok_ids_free(&p->ids);
    vlm_free(p->rows);
    vlm_free(p->img_tokens);
    vlm_free(p->img_sizes);
    memset(p, 0, sizeof *p);
}

/* Preprocess and encode images[0..n) into p->rows. */
static vlm_status encode_images(vlm_model *m, vlm_image *const *images, int n, vlm_prompt *p,
                                vlm_err *err) {
    arch_model *am = m->am;
    const int64_t hidden = am->info.hidden;
    if (n == 0) return VLM_OK;
    if (!am->info.has_vision)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: the model has no vision tower",
                           am->info.arch);
    p->img_tokens = VLM_NEW_ARRAY(int32_t, (size_t)n, VLM_MEM_OTHER);
    p->img_sizes = VLM_NEW_ARRAY(int, (size_t)n * 2, VLM_MEM_OTHER);
    if (!p->img_tokens || !p->img_sizes)
        return vlm_err_set(err, VLM_ERR_NOMEM, "images: out of memory");
    for (int i = 0; i < n; i++) {
        if (!images[i]) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "image %d is NULL", i + 1);
        phi3v_pixels px;
        memset(&px, 0, sizeof px);
        vlm_status st = phi3v_preprocess(images[i], m->num_crops, false, &px, err);
        if (st) {
            vlm_err_prefix(err, "image %d", i + 1);
            return st;
        }
        int rows = am->arch->image_tokens(am->impl, px.geo.hc, px.geo.wc);
        float *grown = NULL;
        size_t bytes;
        if (rows != px.geo.num_img_tokens ||
            !vlm_size_mul((size_t)(p->n_rows + rows), (size_t)hidden * sizeof(float), &bytes)) {
            phi3v_pixels_free(&px);
            return vlm_err_set(err, VLM_ERR_INTERNAL,
                               "image %d: %d feature rows, the processor counts %d", i + 1, rows,
                               px.geo.num_img_tokens);
        }
        grown = vlm_realloc(p->rows, bytes, VLM_MEM_IMAGE);
        if (!grown) {
            phi3v_pixels_free(&px);
            return vlm_err_set(err, VLM_ERR_NOMEM, "image %d: out of memory for %d feature rows",
                               i + 1, rows);
        }
        p->rows = grown;
        vlm_image_input in = {px.values, px.n_real, px.geo.hc, px.geo.wc};
        /* Crops in the plan's groups: the activations of one group are what
         * the plan counted; any group size gives the same features. */
        int group = m->crop_group > 0 ? m->crop_group : 1;
        st = am->arch->encode_image(am->impl, &in, group, p->rows + p->n_rows * hidden, err);
        p->img_tokens[i] = rows;
        p->img_sizes[2 * i] = px.geo.hd_h;
        p->img_sizes[2 * i + 1] = px.geo.hd_w;
        phi3v_pixels_free(&px);
        if (st) {
            vlm_err_prefix(err, "image %d", i + 1);
            return st;
        }
        p->n_rows += rows;
        p->n_images = i + 1;
    }
    return VLM_OK;
}

vlm_status vlm_prompt_build(vlm_model *m, const char *text, bool first_bos, int image_base,
                            vlm_image *const *images, int n_images, vlm_prompt *p, vlm_err *err) {
    memset(p, 0, sizeof *p);
    if (!text) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "prompt: text is NULL");
    if (n_images < 0 || (n_images > 0 && !images))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "prompt: %d images", n_images);
    double t0 = now_ms();
    gpu_phase_begin();
    vlm_status st = encode_images(m, images, n_images, p, err);
    gpu_phase_end(&p->gpu_peak, &p->gpu_used);
    p->image_ms = now_ms() - t0;
    if (st) return st;
    return chat_turn_to_ids(m->tok, text, strlen(text), first_bos, (size_t)image_base,
                            p->img_tokens, (size_t)n_images, &p->ids, err);
}

/* ---------------------------------------------------------------------------
 * sessions */

vlm_status vlm_session_new(vlm_model *m, vlm_session **out, vlm_err *err) {
    if (!out) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_session_new: out is NULL");
    *out = NULL;
    if (!m) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_session_new: no model");
    if (!m->am)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "vlm_session_new: the model was lost when a fallback failed");
    vlm_session *s = vlm_calloc(1, sizeof *s, VLM_MEM_OTHER);
    if (!s) return vlm_err_set(err, VLM_ERR_NOMEM, "session: out of memory");
    s->m = m;
    session_options so;
    session_options_init(&so);
    so.max_ctx = m->max_context;
    so.kv_dtype = vlm_plan_kv_dtype(m->precision, so.kv_dtype); /* bf16 on the last rung */
    vlm_status st = session_create(m->am, &so, &s->s, err);
    if (st) {
        vlm_free(s);
        return st;
    }
    m->n_sessions++;
    *out = s;
    return VLM_OK;
}

static void hist_clear(vlm_session *s) {
    for (int i = 0; i < s->n_hist; i++) vlm_image_free(s->hist[i]);
    vlm_free(s->hist);
    s->hist = NULL;
    s->n_hist = s->cap_hist = 0;
    s->no_replay = false;
}

void vlm_session_free(vlm_session *s) {
    if (!s) return;
    s->m->n_sessions--;
    hist_clear(s);
    session_free(s->s);
    vlm_free(s->system);
    vlm_free(s->gen);
    vlm_free(s);
    vlm_mem_cleanup(false, NULL); /* as vlm_model_free */
}

void vlm_session_reset(vlm_session *s) {
    if (!s) return;
    if (s->s) session_reset(s->s);
    hist_clear(s);
    s->n_turns = 0;
    s->n_images = 0;
    s->need_end = false;
    s->n_gen = 0;
}

vlm_status vlm_session_set_system(vlm_session *s, const char *text, vlm_err *err) {
    if (!s) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "set_system: no session");
    if (s->n_turns > 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "set_system: the conversation has started (reset the session first)");
    char *copy = NULL;
    if (text && !(copy = vlm_strdup(text, VLM_MEM_OTHER)))
        return vlm_err_set(err, VLM_ERR_NOMEM, "set_system: out of memory");
    vlm_free(s->system);
    s->system = copy;
    return VLM_OK;
}

session *vlm_session_core(vlm_session *s) {
    return s->s;
}

const int32_t *vlm_session_last_ids(const vlm_session *s, int *n) {
    *n = s->n_gen;
    return s->gen;
}

void vlm_gen_params_init(vlm_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->max_tokens = 256;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

void vlm_string_free(char *s) {
    vlm_free(s);
}

/* A growable string (accounted). */
typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

static bool sbuf_add(sbuf *b, const char *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = vlm_realloc(b->s, cap, VLM_MEM_OTHER);
        if (!q) return false;
        b->s = q;
        b->cap = cap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
    return true;
}

/* Make room for n more bytes now, so the adds that follow do not grow it. */
static bool sbuf_reserve(sbuf *b, size_t n) {
    if (b->len + n + 1 <= b->cap) return true;
    char *q = vlm_realloc(b->s, b->len + n + 1, VLM_MEM_OTHER);
    if (!q) return false;
    b->s = q;
    b->cap = b->len + n + 1;
    return true;
}

static bool sbuf_adds(sbuf *b, const char *p) {
    return sbuf_add(b, p, strlen(p));
}

/* The text of one user turn (see the top of this file). */
static vlm_status render_turn(const vlm_session *s, const char *text, int n_images, sbuf *b,
                              vlm_err *err) {
    bool ok = true;
    if (s->n_turns == 0) {
        if (s->system)
            ok = sbuf_adds(b, "<|system|>\n") && sbuf_adds(b, s->system) &&
                 sbuf_adds(b, "<|end|>\n");
        ok = ok && sbuf_adds(b, "<|user|>\n");
    } else {
        ok = sbuf_adds(b, "\n<|user|>\n");
    }
    for (int i = 0; ok && i < n_images; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "<|image_%d|>\n", s->n_images + i + 1);
        ok = sbuf_adds(b, tag);
    }
    ok = ok && sbuf_adds(b, text) && sbuf_adds(b, "<|end|>\n<|assistant|>\n");
    return ok ? VLM_OK : vlm_err_set(err, VLM_ERR_NOMEM, "chat: out of memory for the prompt");
}

/* Generation state shared with the token callback. */
typedef struct gen_run {
    vlm_session *vs;
    const vlm_gen_params *p;
    tok_stream ts;
    sbuf acc;          /* text streamed so far (skip special) */
    size_t emitted;    /* bytes of acc handed to on_text */
    size_t max_stop;   /* longest stop string */
    bool stop_string;  /* a stop string was found: acc is cut before it */
    bool user_stopped; /* on_text returned false */
    vlm_status st;     /* an error inside the callback */
    vlm_err *err;
    double t_first;
} gen_run;

/* Hand acc[emitted..upto) to on_text. */
static bool emit(gen_run *g, size_t upto) {
    if (upto <= g->emitted) return true;
    bool go = true;
    if (g->p->on_text) go = g->p->on_text(g->p->user, g->acc.s + g->emitted, upto - g->emitted);
    g->emitted = upto;
    if (!go) g->user_stopped = true;
    return go;
}

/* Look for a stop string in the text added since `from`; cut acc there. */
static bool find_stop(gen_run *g, size_t from) {
    const vlm_gen_params *p = g->p;
    size_t start = from > g->max_stop ? from - g->max_stop : 0;
    size_t best = SIZE_MAX;
    for (int i = 0; i < p->n_stop; i++) {
        const char *ss = p->stop[i];
        if (!ss || !ss[0]) continue;
        const char *hit = strstr(g->acc.s + start, ss);
        if (hit && (size_t)(hit - g->acc.s) < best) best = (size_t)(hit - g->acc.s);
    }
    if (best == SIZE_MAX) return false;
    g->acc.len = best;
    g->acc.s[best] = '\0';
    return true;
}

/* A piece of decoded text: stop strings, then stream what cannot be the
 * start of a stop string any more. */
static bool gen_text(gen_run *g, const char *piece, size_t len) {
    size_t before = g->acc.len;
    if (len && !sbuf_add(&g->acc, piece, len)) {
        g->st = vlm_err_set(g->err, VLM_ERR_NOMEM, "generate: out of memory for the answer");
        return false;
    }
    if (g->max_stop && g->acc.len && find_stop(g, before)) {
        g->stop_string = true;
        emit(g, g->acc.len);
        return false;
    }
    size_t hold = g->max_stop ? g->max_stop - 1 : 0;
    return emit(g, g->acc.len > hold ? g->acc.len - hold : 0);
}

static bool on_token(void *user, int32_t tok) {
    gen_run *g = user;
    if (g->t_first == 0) g->t_first = now_ms();
    const char *piece = NULL; /* owned by the stream */
    size_t len = 0;
    vlm_status st = tok_stream_step(&g->ts, tok, &piece, &len, g->err);
    if (st) {
        g->st = st;
        return false;
    }
    return gen_text(g, piece ? piece : "", piece ? len : 0);
}

static const char *stop_name(session_stop r) {
    switch (r) {
    case SESSION_STOP_EOS:
        return "eos";
    case SESSION_STOP_CALLBACK:
        return "callback";
    case SESSION_STOP_CONTEXT:
        return "context";
    case SESSION_STOP_MAX:
    default:
        return "max_tokens";
    }
}

static vlm_status check_params(const vlm_gen_params *p, vlm_err *err) {
    if (p->max_tokens < 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "max_tokens %d", p->max_tokens);
    if (!(p->temperature >= 0))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "temperature %g", (double)p->temperature);
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%d stop strings", p->n_stop);
    return VLM_OK;
}

/* Prefill the prompt (and the <|end|> owed by the last answer), generate,
 * and record the turn. */
static vlm_status run_turn(vlm_session *vs, vlm_prompt *pr, const vlm_gen_params *p, double t0,
                           char **answer, vlm_gen_stats *stats, const char **phase, vlm_err *err) {
    vlm_model *m = vs->m;
    session *s = vs->s;
    vlm_status st;
    *phase = "prefill";
    if (vs->need_end && m->end_id >= 0) {
        /* the last answer's <|end|> leads this turn */
        if ((st = tok_ids_push(&pr->ids, 0, err))) return st;
        memmove(pr->ids.v + 1, pr->ids.v, (pr->ids.n - 1) * sizeof *pr->ids.v);
        pr->ids.v[0] = m->end_id;
    }
    if ((size_t)p->max_tokens + 1 > (size_t)INT32_MAX / sizeof(int32_t))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "max_tokens %d", p->max_tokens);
    if (p->max_tokens + 1 > vs->gen_cap) {
        int32_t *ng = VLM_NEW_ARRAY(int32_t, (size_t)p->max_tokens + 1, VLM_MEM_OTHER);
        if (!ng) return vlm_err_set(err, VLM_ERR_NOMEM, "generate: out of memory for the ids");
        vlm_free(vs->gen);
        vs->gen = ng;
        vs->gen_cap = p->max_tokens + 1;
        vs->n_gen = 0;
    }
    sampler_params sp;
    sampler_params_init(&sp);
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repetition_penalty;
    sp.seed = p->seed;
    sampler *smp = NULL;
    if ((st = sampler_create(&sp, m->am->info.vocab, &smp, err))) return st;

    /* The streamed text is kept for the stop strings: its room is taken
     * before the decode loop, as much as max_tokens tokens can decode to
     * (the longest token + a decoder's few bytes each, up to 1 MiB; beyond
     * that it grows by doubling), so decode steps do not allocate. */
    size_t per_token = tokenizer_max_token_len(m->tok) + 4;
    size_t room = (size_t)p->max_tokens + 1;
    room = room > ((size_t)1 << 20) / per_token ? (size_t)1 << 20 : room * per_token;
    sbuf acc = {0};
    if (!sbuf_reserve(&acc, room)) {
        sampler_free(smp);
        return vlm_err_set(err, VLM_ERR_NOMEM, "generate: out of memory for the answer");
    }

    double t_pre = now_ms();
    uint64_t gpu_pre[2], gpu_dec[2];
    gpu_phase_begin();
    st = session_append(s, pr->ids.v, (int64_t)pr->ids.n, pr->rows, pr->n_rows, NULL, err);
    gpu_phase_end(&gpu_pre[0], &gpu_pre[1]);
    double t_pre_end = now_ms();
    if (st) {
        vlm_free(acc.s);
        sampler_free(smp);
        return st;
    }
    /* The prompt is in the conversation now. */
    *phase = "decode";
    vs->n_turns++;
    vs->n_images += pr->n_images;
    vs->need_end = true;
    vs->n_gen = 0;

    gen_run g;
    memset(&g, 0, sizeof g);
    g.vs = vs;
    g.p = p;
    g.err = err;
    for (int i = 0; i < p->n_stop; i++)
        if (p->stop[i] && strlen(p->stop[i]) > g.max_stop) g.max_stop = strlen(p->stop[i]);
    g.acc = acc;
    tok_stream_init(&g.ts, m->tok, true);
    gen_options go = {p->max_tokens, m->stop_ids, p->ignore_eos ? 0 : m->n_stop, on_token, &g};
    session_stop why = SESSION_STOP_MAX;
    int n_out = 0;
    gpu_phase_begin();
    st = session_generate(s, smp, &go, vs->gen, &n_out, &why, err);
    gpu_phase_end(&gpu_dec[0], &gpu_dec[1]);
    double t_end = now_ms();
    sampler_free(smp);
    vs->n_gen = n_out;
    if (n_out > 0 && vs->gen[n_out - 1] == m->end_id) vs->need_end = false;
    if (!st) st = g.st;
    char *text = NULL;
    size_t text_len = 0;
    if (!st && !g.stop_string && !g.user_stopped) {
        /* the rest of the stream (stop strings still apply to it) */
        const char *piece = NULL;
        size_t len = 0;
        st = tok_stream_flush(&g.ts, &piece, &len, err);
        if (!st && gen_text(&g, piece ? piece : "", piece ? len : 0)) emit(&g, g.acc.len);
        if (!st) st = g.st;
    }
    if (!st && !g.stop_string) {
        /* the answer: one decode of the ids without the stop token */
        int n_text = n_out - (why == SESSION_STOP_EOS ? 1 : 0);
        st = tokenizer_decode(m->tok, vs->gen, (size_t)n_text, true, &text, &text_len, err);
    } else if (!st) {
        text = g.acc.s; /* cut before the stop string */
        g.acc.s = NULL;
        if (!text && !(text = vlm_strdup("", VLM_MEM_OTHER)))
            st = vlm_err_set(err, VLM_ERR_NOMEM, "generate: out of memory for the answer");
    }
    tok_stream_free(&g.ts);
    vlm_free(g.acc.s);
    if (st) {
        vlm_free(text);
        return st;
    }
    if (stats) {
        memset(stats, 0, sizeof *stats);
        stats->tokens_in = (int)pr->ids.n;
        stats->tokens_out = n_out;
        stats->image_tokens = (int)pr->n_rows;
        stats->image_ms = pr->image_ms;
        stats->prefill_ms = t_pre_end - t_pre;
        if (n_out > 0 && g.t_first == 0) g.t_first = t_end;
        stats->first_token_ms = n_out > 0 ? g.t_first - t0 : 0;
        stats->decode_ms = n_out > 0 ? t_end - g.t_first : 0;
        stats->decode_tps =
            n_out > 1 && stats->decode_ms > 0 ? (n_out - 1) / (stats->decode_ms / 1e3) : 0;
        const char *r = g.stop_string    ? "stop_string"
                        : g.user_stopped ? "callback"
                                         : stop_name(why);
        snprintf(stats->stop_reason, sizeof stats->stop_reason, "%s", r);
        stats->gpu_peak_image = pr->gpu_peak;
        stats->gpu_used_image = pr->gpu_used;
        stats->gpu_peak_prefill = gpu_pre[0];
        stats->gpu_used_prefill = gpu_pre[1];
        stats->gpu_peak_decode = gpu_dec[0];
        stats->gpu_used_decode = gpu_dec[1];
    }
    if (answer)
        *answer = text;
    else
        vlm_free(text);
    return VLM_OK;
}

/* One attempt at a turn: render (chat) or take (raw) the prompt, encode its
 * images, prefill, generate. *phase: where a failure happened ("image",
 * "prompt", "prefill", "decode"). */
static vlm_status turn_once(vlm_session *s, bool raw, const char *text, vlm_image *const *images,
                            int n_images, const vlm_gen_params *p, double t0, char **answer,
                            vlm_gen_stats *stats, const char **phase, vlm_err *err) {
    vlm_status st;
    sbuf b = {0};
    *phase = "prompt";
    if (!raw && (st = render_turn(s, text, n_images, &b, err))) {
        vlm_free(b.s);
        return st;
    }
    vlm_prompt pr;
    *phase = n_images > 0 ? "image" : "prompt";
    st = vlm_prompt_build(s->m, raw ? text : b.s, raw || s->n_turns == 0, raw ? 0 : s->n_images,
                          images, n_images, &pr, err);
    vlm_free(b.s);
    if (!st) st = run_turn(s, &pr, p, t0, answer, stats, phase, err);
    vlm_prompt_free(&pr);
    return st;
}

/* ---------------------------------------------------------------------------
 * the run-time fallback
 *
 * An allocation failure inside a turn (host memory, or a device's
 * VLM_ERR_NOMEM once a GPU backend reports one: the same status takes the
 * same path) leaves the turn's own buffers freed by the code that failed.
 * Then, when the model has a rung below its precision and this is its only
 * session: the session's cache and the model's weights are freed, the model
 * is loaded again one rung down under the same handle (vlm_model_load's own
 * ladder: a reload that fails goes further down), the conversation before
 * the turn is replayed (its token ids as they were, the earlier images
 * encoded again on the new rung), and the turn is tried again. Each rung is
 * tried at most once: the precision only goes down. With no rung left the
 * turn ends in VLM_ERR_NOMEM as before, the session usable. */

/* The conversation before a turn, to return to. */
typedef struct turn_mark {
    int64_t n_past;
    bool has_pending;
    int32_t pending;
    int n_turns, n_images;
    bool need_end;
} turn_mark;

static bool can_fall_back(const vlm_session *s) {
    const vlm_model *m = s->m;
    return m->am && m->n_sessions == 1 && !s->no_replay && m->ladder.n > 0 &&
           rung_below(&m->ladder, (int)m->precision) >= 0;
}

/* Reload m one rung below its precision, in place. On failure the model is
 * empty (am NULL: lost) and only vlm_model_free is left to call. */
static vlm_status model_step_down(vlm_model *m, vlm_err *err) {
    int next = rung_below(&m->ladder, (int)m->precision);
    vlm_load_options lo = m->opts;
    lo.precision = vlm_precision_name((vlm_precision)next);
    /* the same crops and context as the rung gave up (if it did) */
    lo.num_crops = m->num_crops;
    lo.max_context = (int)m->max_context;
    lo.allow_degrade = false;
    lo.watch_memory = false; /* the handle's watch, if any, keeps running */
    char from[16];
    snprintf(from, sizeof from, "%s", vlm_precision_name(m->precision));
    model_release(m);
    vlm_model *nm = NULL;
    vlm_status st = vlm_model_load(m->ref, &lo, &nm, err);
    if (st) return st;
    /* Move the new model's parts under the old handle; the handle keeps its
     * reference, options, ladder and session count. */
    vlm_model keep = *m;
    *m = *nm;
    vlm_free(m->ref);
    m->ref = keep.ref;
    m->opts = keep.opts;
    m->ladder = keep.ladder;
    m->n_sessions = keep.n_sessions;
    m->watch = keep.watch;
    m->fallbacks = keep.fallbacks + 1 + nm->fallbacks;
    size_t len = strlen(keep.fallback_note);
    snprintf(keep.fallback_note + len, sizeof keep.fallback_note - len, "%s%s -> %s%s%s",
             len ? ", " : "", from, vlm_precision_name(m->precision),
             nm->fallback_note[0] ? ", " : "", nm->fallback_note);
    snprintf(m->fallback_note, sizeof m->fallback_note, "%s", keep.fallback_note);
    vlm_free(nm);
    return VLM_OK;
}

static vlm_image *image_copy(const vlm_image *src) {
    vlm_image *c = vlm_calloc(1, sizeof *c, VLM_MEM_IMAGE);
    size_t bytes = (size_t)src->width * (size_t)src->height * 3;
    if (c) c->rgb = vlm_alloc(bytes ? bytes : 1, VLM_MEM_IMAGE);
    if (!c || !c->rgb) {
        vlm_free(c);
        return NULL;
    }
    c->width = src->width;
    c->height = src->height;
    memcpy(c->rgb, src->rgb, bytes);
    return c;
}

/* Keep copies of a finished turn's images for a later replay. */
static void hist_add(vlm_session *s, vlm_image *const *images, int n) {
    if (s->no_replay || n == 0) return;
    if (s->n_hist + n > s->cap_hist) {
        int cap = s->cap_hist ? s->cap_hist : 4;
        while (cap < s->n_hist + n) cap *= 2;
        vlm_image **nh = vlm_realloc(s->hist, (size_t)cap * sizeof *nh, VLM_MEM_OTHER);
        if (!nh) {
            s->no_replay = true;
            return;
        }
        s->hist = nh;
        s->cap_hist = cap;
    }
    for (int i = 0; i < n; i++) {
        vlm_image *c = image_copy(images[i]);
        if (!c) {
            s->no_replay = true;
            return;
        }
        s->hist[s->n_hist++] = c;
    }
}

/* Free the session's cache, reload the model one rung down, make a new
 * cache and replay ids[0..mark->n_past) with the history's images. */
static vlm_status fall_back(vlm_session *s, const turn_mark *mark, const int32_t *ids,
                            vlm_err *err) {
    vlm_model *m = s->m;
    session_free(s->s);
    s->s = NULL;
    vlm_status st = model_step_down(m, err);
    if (st) return st;
    session_options so;
    session_options_init(&so);
    so.max_ctx = m->max_context;
    so.kv_dtype = vlm_plan_kv_dtype(m->precision, so.kv_dtype); /* bf16 on the last rung */
    if ((st = session_create(m->am, &so, &s->s, err))) return st;
    s->n_turns = mark->n_turns;
    s->n_images = mark->n_images;
    s->need_end = mark->need_end;
    s->n_gen = 0;
    if (mark->n_past == 0) return VLM_OK;
    vlm_prompt pr;
    memset(&pr, 0, sizeof pr);
    st = encode_images(m, s->hist, s->n_hist, &pr, err);
    if (!st) st = session_append(s->s, ids, mark->n_past, pr.rows, pr.n_rows, NULL, err);
    vlm_prompt_free(&pr);
    if (st) return st;
    s->s->pending = mark->pending;
    s->s->has_pending = mark->has_pending;
    return VLM_OK;
}

static vlm_status chat_turn(vlm_session *s, bool raw, const char *text, vlm_image *const *images,
                            int n_images, const vlm_gen_params *p, char **answer,
                            vlm_gen_stats *stats, vlm_err *err) {
    if (!s->s || !s->m->am)
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "chat: the session lost its model when a fallback failed (free it)");
    vlm_status st = check_params(p, err);
    if (st) return st;
    double t0 = now_ms();
    turn_mark mark = {s->s->n_past, s->s->has_pending, s->s->pending,
                      s->n_turns,   s->n_images,       s->need_end};
    char from[16], phase_at[16] = "";
    snprintf(from, sizeof from, "%s", vlm_precision_name(s->m->precision));
    int32_t *ids = NULL; /* the conversation's ids before the turn, once a fallback needs them */
    int fallbacks = 0;
    for (;;) {
        const char *phase = "prompt";
        st = turn_once(s, raw, text, images, n_images, p, t0, answer, stats, &phase, err);
        if (st != VLM_ERR_NOMEM || !can_fall_back(s)) break;
        if (!ids && mark.n_past > 0) {
            ids = VLM_NEW_ARRAY(int32_t, (size_t)mark.n_past, VLM_MEM_OTHER);
            if (!ids) break; /* the turn's own NOMEM stands */
            memcpy(ids, s->s->ids, (size_t)mark.n_past * sizeof *ids);
        }
        if (!phase_at[0]) snprintf(phase_at, sizeof phase_at, "%s", phase);
        VLM_INFO("out of memory in the %s of a turn at %s (%s); reloading one rung down", phase,
                 vlm_precision_name(s->m->precision), err ? err->msg : "");
        /* down until the replay fits too, or no rung is left */
        vlm_status fst;
        do {
            fallbacks++;
            fst = fall_back(s, &mark, ids, err);
        } while (fst == VLM_ERR_NOMEM && s->m->am && can_fall_back(s));
        if (fst != VLM_OK) {
            /* a half-made replay is no conversation: the session is lost */
            session_free(s->s);
            s->s = NULL;
            st = fst;
            break;
        }
    }
    vlm_free(ids);
    if (st == VLM_OK) {
        hist_add(s, images, n_images);
        if (stats) {
            stats->fallbacks = fallbacks;
            if (fallbacks) {
                snprintf(stats->fallback_from, sizeof stats->fallback_from, "%s", from);
                snprintf(stats->fallback_to, sizeof stats->fallback_to, "%s",
                         vlm_precision_name(s->m->precision));
                snprintf(stats->fallback_phase, sizeof stats->fallback_phase, "%s", phase_at);
            }
        }
    }
    return st;
}

vlm_status vlm_session_chat(vlm_session *s, const char *text, vlm_image *const *images,
                            int n_images, const vlm_gen_params *p, char **answer,
                            vlm_gen_stats *stats, vlm_err *err) {
    if (answer) *answer = NULL;
    if (!s || !text) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "chat: no session or no text");
    if (n_images < 0 || (n_images > 0 && !images))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "chat: %d images", n_images);
    vlm_gen_params def;
    if (!p) {
        vlm_gen_params_init(&def);
        p = &def;
    }
    return chat_turn(s, false, text, images, n_images, p, answer, stats, err);
}

vlm_status vlm_session_chat_raw(vlm_session *s, const char *raw, vlm_image *const *images,
                                int n_images, const vlm_gen_params *p, char **answer,
                                vlm_gen_stats *stats, vlm_err *err) {
    if (answer) *answer = NULL;
    if (!s || !raw) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "chat: no session or no prompt");
    if (s->s && (s->n_turns > 0 || s->s->n_past > 0))
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "raw prompt: the session already holds a conversation");
    vlm_gen_params def;
    if (!p) {
        vlm_gen_params_init(&def);
        p = &def;
    }
    return chat_turn(s, true, raw, images, n_images, p, answer, stats, err);
}
