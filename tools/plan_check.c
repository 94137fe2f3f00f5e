/* plan_check - the memory planner's estimate against a real run: load a
 * model through the public API, answer one turn (text, or one image), unload,
 * and compare the accounted peak plus the mapped bytes with the plan's peak
 * for the same setting (native precision unless --precision names one, the
 * crop group the load chose).
 *
 *   plan_check MODEL [--ctx N] [--num-crops N] [--image FILE] [--tokens N]
 *              [--threads N] [--precision P]
 *
 * Prints one JSON object: measured and estimated bytes, the estimate's load
 * and run peaks and its components, the difference in percent. A benchmark
 * for bench/plan_vs_measured.sh (test_memsafe does the same on the tiny
 * fixture). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "mem/monitor.h"
#include "runtime/planner.h"
#include "vlm/vlm.h"

int main(int argc, char **argv) {
    const char *model = NULL, *image = NULL, *precision = NULL;
    int ctx = 0, crops = 0, tokens = 4, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--ctx") && v)
            ctx = atoi(argv[++i]);
        else if (!strcmp(a, "--num-crops") && v)
            crops = atoi(argv[++i]);
        else if (!strcmp(a, "--image") && v)
            image = argv[++i];
        else if (!strcmp(a, "--tokens") && v)
            tokens = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && v)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--precision") && v && vlm_precision_parse(v) >= 0)
            precision = argv[++i];
        else if (a[0] != '-' && !model)
            model = a;
        else {
            fprintf(stderr, "usage: plan_check MODEL [--ctx N] [--num-crops N] [--image FILE] "
                            "[--tokens N] [--threads N] [--precision P]\n");
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "plan_check: no model\n");
        return 2;
    }
    vlm_err err;
    plan_model pm;
    if (plan_model_open(&pm, model, &err)) {
        fprintf(stderr, "plan_check: %s\n", err.msg);
        return 1;
    }

    vlm_mem_stats s0, s1;
    vlm_alloc_get_stats(&s0);
    vlm_mem_scope sc;
    vlm_mem_scope_result res;
    vlm_mem_scope_begin(&sc, "run");
    vlm_load_options lo;
    vlm_load_options_init(&lo);
    lo.n_threads = threads;
    lo.num_crops = crops;
    lo.max_context = ctx;
    lo.precision = precision;
    vlm_model *m = NULL;
    vlm_session *s = NULL;
    vlm_image *img = NULL;
    char *answer = NULL;
    vlm_gen_stats gs;
    memset(&gs, 0, sizeof gs);
    vlm_model_desc desc;
    vlm_status st = vlm_model_load(model, &lo, &m, &err);
    if (!st) {
        vlm_alloc_get_stats(&s1);
        vlm_model_describe(m, &desc);
        st = vlm_session_new(m, &s, &err);
    }
    if (!st && image) st = vlm_image_load(image, 0, &img, &err);
    if (!st) {
        vlm_gen_params p;
        vlm_gen_params_init(&p);
        p.max_tokens = tokens;
        p.ignore_eos = true;
        st = vlm_session_chat(s, "Describe what you see.", img ? &img : NULL, img ? 1 : 0, &p,
                              &answer, &gs, &err);
    }
    int w = img ? vlm_image_width(img) : 0, h = img ? vlm_image_height(img) : 0;
    vlm_string_free(answer);
    vlm_image_free(img);
    vlm_session_free(s);
    vlm_model_free(m);
    vlm_mem_scope_end(&sc, &res);
    if (st) {
        fprintf(stderr, "plan_check: %s\n", err.msg);
        plan_model_free(&pm);
        return 1;
    }
    uint64_t mapped = s1.mapped_current - s0.mapped_current;
    uint64_t measured = res.accounted_peak - res.accounted_start + mapped;

    plan_request r;
    plan_request_init(&r);
    r.n_threads = desc.n_threads;
    r.n_images = img || image ? 1 : 0;
    r.image_width = w;
    r.image_height = h;
    vlm_precision prec =
        precision ? (vlm_precision)vlm_precision_parse(precision) : VLM_PREC_NATIVE;
    plan_setting set = {prec, desc.context, desc.num_crops, desc.crop_group, PLAN_CPU, 0, false};
    plan_estimate e;
    if (plan_estimate_setting(&pm, &r, &set, &e, &err)) {
        fprintf(stderr, "plan_check: %s\n", err.msg);
        plan_model_free(&pm);
        return 1;
    }
    printf("{\"model\": \"%s\", \"precision\": \"%s\", \"context\": %lld, \"num_crops\": %d, "
           "\"image\": \"%s\", "
           "\"image_tokens\": %d, \"tokens_out\": %d, \"threads\": %d,\n",
           model, vlm_precision_name(prec), (long long)desc.context, desc.num_crops,
           image ? image : "", gs.image_tokens, gs.tokens_out, desc.n_threads);
    printf(" \"measured\": %llu, \"accounted_peak\": %llu, \"mapped\": %llu,\n",
           (unsigned long long)measured,
           (unsigned long long)(res.accounted_peak - res.accounted_start),
           (unsigned long long)mapped);
    printf(" \"estimated\": %llu, \"load_peak\": %llu, \"run_peak\": %llu, \"diff_percent\": "
           "%.2f,\n \"components\": {",
           (unsigned long long)e.peak, (unsigned long long)e.load_peak,
           (unsigned long long)e.run_peak,
           100.0 * ((double)measured - (double)e.peak) / (double)e.peak);
    for (int c = 0; c < PLAN_COMP_COUNT; c++)
        printf("%s\"%s\": %llu", c ? ", " : "", plan_comp_name((plan_comp)c),
               (unsigned long long)e.bytes[c]);
    printf("}}\n");
    plan_model_free(&pm);
    return 0;
}
