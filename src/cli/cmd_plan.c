/* vlmtest plan - will a model fit this machine, and how: the memory plan made
 * before loading (runtime/planner), with every component's bytes and the reason
 * each better rung of the ladder was turned down. Reads only configs and
 * safetensors headers (no tensor data is touched). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "runtime/planner.h"

static void print_estimate(const plan_estimate *e) {
    char h[32];
    bool gpu = e->s.device == PLAN_GPU;
    if (gpu)
        printf("  placement: decoder layers on the GPU %d/%d, head %s, vision %s\n",
               e->s.gpu_layers, e->n_layers, e->head_on_gpu ? "gpu" : "cpu",
               e->n_images > 0 || e->s.vision_on_gpu ? (e->s.vision_on_gpu ? "gpu" : "cpu")
                                                     : "cpu");
    if (gpu) printf("  host:\n");
    for (int k = 0; k < PLAN_COMP_COUNT; k++)
        printf("  %-22s %12s  %15llu\n", plan_comp_name((plan_comp)k),
               cli_human_bytes(e->bytes[k], h, sizeof h), (unsigned long long)e->bytes[k]);
    if (e->n_images > 0) {
        printf("  %-22s %12s  (crop group 1)\n", "vision per crop",
               cli_human_bytes(e->vision_group1, h, sizeof h));
        printf("  %-22s %12s  (%d crops at once)\n", "vision all at once",
               cli_human_bytes(e->vision_all, h, sizeof h), e->crops);
    }
    printf("  %-22s %12s  %15llu\n", "peak while loading",
           cli_human_bytes(e->load_peak, h, sizeof h), (unsigned long long)e->load_peak);
    printf("  %-22s %12s  %15llu\n", "peak while running",
           cli_human_bytes(e->run_peak, h, sizeof h), (unsigned long long)e->run_peak);
    printf("  %-22s %12s  %15llu\n", gpu ? "host peak" : "peak",
           cli_human_bytes(e->peak, h, sizeof h), (unsigned long long)e->peak);
    if (!gpu) return;
    printf("  gpu:\n");
    for (int k = 0; k < PLAN_GPU_COMP_COUNT; k++)
        printf("  %-22s %12s  %15llu\n", plan_gpu_comp_name((plan_gpu_comp)k),
               cli_human_bytes(e->gpu[k], h, sizeof h), (unsigned long long)e->gpu[k]);
    printf("  %-22s %12s  %15llu\n", "gpu total", cli_human_bytes(e->gpu_bytes, h, sizeof h),
           (unsigned long long)e->gpu_bytes);
}

static void print_text(const plan_model *pm, const vlm_plan *p, const plan_request *r,
                       const char *no_gpu) {
    char a[32], b[32];
    printf("model:        %s\n", pm->path);
    if (p->budget_given)
        printf("budget:       %s (--mem-budget)\n", cli_human_bytes(p->budget, a, sizeof a));
    else if (p->as_limited)
        printf("budget:       %s (address space left %s under the limit, less 5%%, at least "
               "128 MiB)\n",
               cli_human_bytes(p->budget, a, sizeof a), cli_human_bytes(p->headroom, b, sizeof b));
    else
        printf("budget:       %s (available %s less 10%%, at least 512 MiB)\n",
               cli_human_bytes(p->budget, a, sizeof a), cli_human_bytes(p->headroom, b, sizeof b));
    printf("device:       %s\n", plan_device_name(p->device));
    if (p->gpu_available)
        printf("gpu:          %s free\n", cli_human_bytes(p->gpu_free_bytes, a, sizeof a));
    else
        printf("gpu:          none (%s)\n", no_gpu);
    if (p->gpu_budget_given)
        printf("gpu budget:   %s (--gpu-mem-budget)\n",
               cli_human_bytes(p->gpu_budget, a, sizeof a));
    else if (p->gpu_available)
        printf("gpu budget:   %s (free less 5%%, at least 256 MiB)\n",
               cli_human_bytes(p->gpu_budget, a, sizeof a));
    printf("alarm:        %s (the sampler cleans up, then warns, above this RSS)\n",
           cli_human_bytes(p->alarm_threshold, a, sizeof a));
    int n_images = r->n_images < 0 ? (pm->arch.has_vision ? 1 : 0) : r->n_images;
    printf("request:      context %lld, num_crops %d, %d image(s)\n",
           (long long)p->requested_context, p->requested_crops, n_images);
    printf("weights:      (loaded / stored)\n");
    for (int k = 0; k < VLM_PREC_COUNT; k++) {
        uint64_t loaded, all;
        plan_weight_bytes(pm, (vlm_precision)k, &loaded, &all);
        printf("  %-8s %12s / %s\n", vlm_precision_name((vlm_precision)k),
               cli_human_bytes(loaded, a, sizeof a), cli_human_bytes(all, b, sizeof b));
    }
    printf("overhead:     tokenizer %s (%s), safetensors index %s\n",
           cli_human_bytes(pm->tokenizer_bytes, a, sizeof a),
           pm->tokenizer_measured ? "measured" : "default",
           cli_human_bytes(pm->index_bytes, b, sizeof b));
    printf("\nladder:\n");
    for (int i = 0; i < p->n_rungs; i++) {
        const plan_rung *g = &p->rungs[i];
        const char *mark = i == p->chosen ? "chosen" : !g->available ? "n/a" : "rejected";
        printf("  %-9s %-44s %s\n", mark, g->label, g->reason);
    }
    /* No rung chosen: the best GPU rung that would fit, for its figures. */
    int shown = p->chosen;
    for (int i = 0; shown < 0 && i < p->n_rungs; i++)
        if (p->rungs[i].fits_budgets && p->rungs[i].gpu_step >= 0) shown = i;
    if (shown >= 0 && shown != p->chosen) {
        const plan_rung *g = &p->rungs[shown];
        printf("\nwould fit:    %s (not available: no GPU; context %lld)\n", g->label,
               (long long)g->e.s.context);
        print_estimate(&g->e);
    }
    if (p->chosen >= 0) {
        const plan_rung *g = &p->rungs[p->chosen];
        printf("\nplan:         %s (context %lld", g->label, (long long)g->e.s.context);
        if (g->e.n_images > 0)
            printf(", num_crops %d, crop group %d of %d", g->e.s.num_crops, g->e.s.crop_group,
                   g->e.crops);
        printf(")\n");
        print_estimate(&g->e);
    }
}

static int run(int argc, char **argv) {
    const char *ref = NULL;
    bool json = false;
    plan_request r;
    plan_request_init(&r);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--allow-degrade")) {
            r.allow_degrade = true;
        } else if (!strcmp(a, "--mem-budget") && v) {
            if (!cli_parse_size(v, &r.mem_budget) || r.mem_budget == 0) {
                cli_error("plan", "--mem-budget wants a size such as 8G, not '%s'", v);
                return CLI_USAGE;
            }
            i++;
        } else if (!strcmp(a, "--device") && v) {
            int d = plan_device_parse(v);
            if (d < 0 || !v[0]) {
                cli_error("plan", "--device wants cuda, cpu or auto, not '%s'", v);
                return CLI_USAGE;
            }
            r.device = (plan_device_choice)d;
            i++;
        } else if (!strcmp(a, "--gpu-mem-budget") && v) {
            if (!cli_parse_size(v, &r.gpu_mem_budget) || r.gpu_mem_budget == 0) {
                cli_error("plan", "--gpu-mem-budget wants a size such as 24G, not '%s'", v);
                return CLI_USAGE;
            }
            i++;
        } else if (!strcmp(a, "--context") && v) {
            if (!cli_parse_int(v, 1, 1L << 30, &n)) {
                cli_error("plan", "--context wants a positive number of tokens, not '%s'", v);
                return CLI_USAGE;
            }
            r.context = n;
            i++;
        } else if (!strcmp(a, "--num-crops") && v) {
            if (!cli_parse_int(v, 1, 256, &n)) {
                cli_error("plan", "--num-crops wants 1..256, not '%s'", v);
                return CLI_USAGE;
            }
            r.num_crops = (int)n;
            i++;
        } else if (!strcmp(a, "--images") && v) {
            if (!cli_parse_int(v, 0, 64, &n)) {
                cli_error("plan", "--images wants 0..64, not '%s'", v);
                return CLI_USAGE;
            }
            r.n_images = (int)n;
            i++;
        } else if (!strcmp(a, "--image") && v) {
            int w, h;
            char end;
            if (sscanf(v, "%dx%d%c", &w, &h, &end) != 2 || w < 1 || h < 1 || w > 65535 ||
                h > 65535) {
                cli_error("plan", "--image wants WIDTHxHEIGHT in pixels, not '%s'", v);
                return CLI_USAGE;
            }
            r.image_width = w;
            r.image_height = h;
            i++;
        } else if (!strcmp(a, "--precision") && v) {
            r.precision = vlm_precision_parse(v);
            if (r.precision < 0) {
                cli_error("plan",
                          "--precision wants native, f32, bf16, f16, q8_0, q4_0, q4_K or q4_0_all");
                return CLI_USAGE;
            }
            i++;
        } else if (!strcmp(a, "--kv-dtype") && v) {
            if (strcmp(v, "f32") && strcmp(v, "bf16")) {
                cli_error("plan", "--kv-dtype wants f32 or bf16, not '%s'", v);
                return CLI_USAGE;
            }
            r.kv_dtype = strcmp(v, "bf16") ? VLM_DTYPE_F32 : VLM_DTYPE_BF16;
            i++;
        } else if (!strcmp(a, "--threads") && v) {
            if (!cli_parse_int(v, 1, 4096, &n)) {
                cli_error("plan", "--threads wants 1..4096, not '%s'", v);
                return CLI_USAGE;
            }
            r.n_threads = (int)n;
            i++;
        } else if (a[0] == '-' || ref) {
            cli_error("plan", "unexpected argument %s (see vlmtest plan --help)", a);
            return CLI_USAGE;
        } else {
            ref = a;
        }
    }
    if (!ref) {
        cli_error("plan", "which model? (see vlmtest plan --help)");
        return CLI_USAGE;
    }
    char no_gpu[256] = "";
    if (r.device != PLAN_DEVICE_CPU) plan_request_detect_gpu(&r, no_gpu, sizeof no_gpu);
    plan_model pm;
    vlm_plan *plan = NULL;
    vlm_err err = {0};
    int rc = CLI_FAIL;
    if (plan_model_open(&pm, ref, &err) != VLM_OK) {
        cli_error("plan", "%s", err.msg);
        return CLI_FAIL;
    }
    plan = vlm_calloc(1, sizeof *plan, VLM_MEM_OTHER);
    if (!plan) {
        cli_error("plan", "out of memory");
        goto done;
    }
    if (vlm_plan_make(&pm, &r, plan, &err) != VLM_OK) {
        cli_error("plan", "%s", err.msg);
        goto done;
    }
    if (json) {
        vlm_json_init();
        cJSON *j = vlm_plan_to_json(&pm, plan);
        char *text = j ? cJSON_Print(j) : NULL;
        cJSON_Delete(j);
        if (!text) {
            cli_error("plan", "out of memory writing JSON");
            goto done;
        }
        printf("%s\n", text);
        cJSON_free(text);
    } else {
        print_text(&pm, plan, &r, no_gpu);
    }
    rc = CLI_OK;
    if (plan->chosen < 0 && r.device == PLAN_DEVICE_CUDA && !r.gpu_available) {
        cli_error("plan", "--device cuda: no GPU (%s)", no_gpu);
        rc = CLI_FAIL;
    } else if (plan->chosen < 0) {
        char a[32], b[32];
        const plan_rung *last = plan->n_rungs ? &plan->rungs[plan->n_rungs - 1] : NULL;
        cli_error("plan", "nothing fits the budget of %s; the smallest rung (%s) needs %s%s",
                  cli_human_bytes(plan->budget, a, sizeof a), last ? last->label : "-",
                  cli_human_bytes(last ? last->e.peak : 0, b, sizeof b),
                  r.allow_degrade ? "" : " (--allow-degrade may drop crops and context)");
        rc = CLI_FAIL;
    }
done:
    vlm_free(plan);
    plan_model_free(&pm);
    return rc;
}

const struct cli_command cli_command_plan = {
    "plan",
    "the memory plan for a model: what fits the budget, and why",
    run,
    "usage: vlmtest plan MODEL [--device cuda|cpu|auto] [--mem-budget SIZE]\n"
    "                      [--gpu-mem-budget SIZE] [--context N] [--num-crops N]\n"
    "                      [--allow-degrade] [--json] [more options]\n"
    "\n"
    "MODEL is a model folder, a .safetensors file, a model.safetensors.index.json,\n"
    "or org/name[@revision] in the Hugging Face cache. Only configs and tensor\n"
    "headers are read.\n"
    "\n"
    "Estimates every component a run holds (weights at each precision, KV cache,\n"
    "prefill workspace, logits, image buffers, vision activations, fixed\n"
    "overhead; on the GPU also its cuBLAS workspace and CUDA context) and walks\n"
    "the ladder, best first: everything on the GPU at the stored precision, q8_0,\n"
    "q4_0; the first k decoder layers on the GPU (k the most that fit, the vision\n"
    "tower there too if it still fits); the stored precision on the CPU, q8_0,\n"
    "q4_K, q4_0, and with --allow-degrade fewer crops (16, 4, 1), a context\n"
    "halved down to 1024, then q4_0_all (every matrix q4_0, KV cache bf16) at a\n"
    "context down to 512. A rung fits both budgets. Without a GPU the GPU rungs\n"
    "are listed as not available, with their estimates. Prints the chosen rung\n"
    "with its host and device bytes and why each better one was turned down.\n"
    "Exits 0 when a rung fits, 1 when none does.\n"
    "\n"
    "  --mem-budget SIZE      host bytes (e.g. 8G); default: available memory\n"
    "                         (capped by the cgroup) less 10%, at least 512 MiB;\n"
    "                         under a tighter address-space limit (prlimit --as),\n"
    "                         what is left of it less 5%, at least 128 MiB\n"
    "  --device D             auto (the plan decides), cuda (GPU rungs only), cpu\n"
    "  --gpu-mem-budget SIZE  device bytes for the GPU rungs (default: the GPU's\n"
    "                         free memory less 5%, at least 256 MiB)\n"
    "  --context N            KV cache tokens (default 4096, capped by the model)\n"
    "  --num-crops N          HD crops per image (default: preprocessor_config.json)\n"
    "  --images N             images in one turn (default 1; 0: text only)\n"
    "  --image WxH            the input image size (default: the worst crop grid,\n"
    "                         decoded as a 4032x3024 photo)\n"
    "  --precision P          only this rung: native f32 bf16 f16 q8_0 q4_0 q4_K\n"
    "                         q4_0_all\n"
    "  --kv-dtype f32|bf16    KV cache element type (default f32)\n"
    "  --threads N            threads (the attention scratch grows with them)\n"
    "  --allow-degrade        may drop crops, then context, then lift the q8_0 floor\n"
    "  --json                 machine-readable output\n",
};
