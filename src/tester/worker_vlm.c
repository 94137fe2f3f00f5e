/* tester/worker_vlm - the worker backend on the libvlm engine: the public
 * API of include/vlm/vlm.h and nothing else, so the tester drives the engine
 * exactly as a user program does. */
#include "tester/worker.h"

#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

static vlm_status be_load(const tester_job *job, void **model, cJSON *config, vlm_err *err) {
    const tester_model_opts *o = &job->opts;
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.device = o->device[0] ? o->device : NULL;
    lo.precision = o->precision[0] ? o->precision : NULL;
    lo.num_crops = o->num_crops;
    lo.max_context = o->max_context;
    lo.mem_budget = o->mem_budget;
    lo.gpu_mem_budget = o->gpu_mem_budget;
    lo.n_threads = o->n_threads;
    vlm_model *m = NULL;
    vlm_status st = vlm_model_load(job->model->resolved, &lo, &m, err);
    if (st) return st;
    /* What the engine reports it uses (after its defaults and the plan),
     * not what was asked: the asked options are recorded apart. */
    vlm_model_desc d;
    vlm_model_describe(m, &d);
    cJSON_AddStringToObject(config, "backend", "libvlm");
    /* where the parts run: "cpu", "cuda" (all on the GPU), "cuda+cpu" */
    cJSON_AddStringToObject(config, "device", d.device);
    cJSON_AddNumberToObject(config, "gpu_layers", d.gpu_layers);
    cJSON_AddStringToObject(config, "head_device", d.head_on_gpu ? "cuda" : "cpu");
    cJSON_AddStringToObject(config, "vision_device", d.vision_on_gpu ? "cuda" : "cpu");
    cJSON_AddStringToObject(config, "arch", d.arch);
    cJSON_AddStringToObject(config, "dtype", d.dtype);
    cJSON_AddStringToObject(config, "path", d.path);
    cJSON_AddNumberToObject(config, "num_crops", d.num_crops);
    cJSON_AddNumberToObject(config, "context", (double)d.context);
    cJSON_AddNumberToObject(config, "max_positions", (double)d.max_positions);
    cJSON_AddNumberToObject(config, "n_threads", d.n_threads);
    cJSON_AddNumberToObject(config, "n_layers", d.n_layers);
    cJSON_AddNumberToObject(config, "hidden", d.hidden);
    cJSON_AddNumberToObject(config, "vocab", d.vocab);
    cJSON_AddNumberToObject(config, "params_total", (double)d.params_total);
    cJSON_AddNumberToObject(config, "weight_bytes", (double)d.weight_bytes);
    if (lo.mem_budget) cJSON_AddNumberToObject(config, "mem_budget", (double)lo.mem_budget);
    if (lo.gpu_mem_budget)
        cJSON_AddNumberToObject(config, "gpu_mem_budget", (double)lo.gpu_mem_budget);
    /* the memory plan the load followed (docs/planner.md) */
    cJSON *plan = cJSON_AddObjectToObject(config, "plan");
    if (plan) {
        cJSON_AddStringToObject(plan, "precision", d.precision);
        cJSON_AddStringToObject(plan, "rung", d.rung);
        cJSON_AddStringToObject(plan, "gave_up", d.gave_up);
        cJSON_AddBoolToObject(plan, "degraded", d.degraded);
        cJSON_AddNumberToObject(plan, "estimated_bytes", (double)d.plan_bytes);
        cJSON_AddNumberToObject(plan, "budget", (double)d.plan_budget);
        cJSON_AddNumberToObject(plan, "weight_bytes", (double)d.loaded_weight_bytes);
        cJSON_AddNumberToObject(plan, "fallbacks", d.fallbacks);
        cJSON_AddStringToObject(plan, "fallback_note", d.fallback_note);
        cJSON_AddStringToObject(plan, "first_rung", d.first_rung);
        cJSON_AddNumberToObject(plan, "gpu_estimated_bytes", (double)d.gpu_plan_bytes);
        cJSON_AddNumberToObject(plan, "gpu_budget", (double)d.gpu_budget);
    }
    if (d.degraded || d.fallbacks > 0)
        fprintf(stderr, "vlmtest: warning: %s loaded at %s (%s%s%s)%s%s\n", job->model->resolved,
                d.precision, d.rung, d.gave_up[0] ? "; gave up " : "", d.gave_up,
                d.fallbacks ? "; after out of memory: " : "", d.fallback_note);
    *model = m;
    return VLM_OK;
}

static vlm_status be_session_new(void *model, const char *system, void **session, vlm_err *err) {
    vlm_session *s = NULL;
    vlm_status st = vlm_session_new((vlm_model *)model, &s, err);
    if (st) return st;
    if (system && (st = vlm_session_set_system(s, system, err))) {
        vlm_session_free(s);
        return st;
    }
    *session = s;
    return VLM_OK;
}

static vlm_status be_chat(void *session, const tester_turn *turn, const tester_gen *gen,
                          char **answer, vlm_gen_stats *stats, vlm_err *err) {
    vlm_image **imgs = NULL;
    vlm_status st = VLM_OK;
    size_t loaded = 0;
    if (turn->n_images) {
        imgs = VLM_NEW_ARRAY(vlm_image *, turn->n_images, VLM_MEM_IMAGE);
        if (!imgs) return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory for image handles");
    }
    for (; loaded < turn->n_images; loaded++)
        if ((st = vlm_image_load(turn->images[loaded], 0, &imgs[loaded], err))) break;
    if (!st) {
        vlm_gen_params p;
        vlm_gen_params_init(&p);
        p.max_tokens = gen->max_tokens;
        p.temperature = (float)gen->temperature;
        st = vlm_session_chat((vlm_session *)session, turn->prompt, imgs, (int)turn->n_images, &p,
                              answer, stats, err);
    }
    for (size_t i = 0; i < loaded; i++) vlm_image_free(imgs[i]);
    vlm_free(imgs);
    return st;
}

static void be_session_free(void *session) {
    vlm_session_free((vlm_session *)session);
}
static void be_answer_free(char *answer) {
    vlm_string_free(answer);
}
static void be_unload(void *model) {
    vlm_model_free((vlm_model *)model);
}

static const tester_backend vlm_backend = {
    "libvlm", be_load, be_session_new, be_chat, be_session_free, be_answer_free, be_unload,
};

const tester_backend *tester_backend_vlm(void) {
    return &vlm_backend;
}
