/* cli/gen_opts - see gen_opts.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gen_opts.h"
#include "runtime/planner.h"

static bool parse_float(const char *s, float lo, float hi, float *out) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (!s[0] || *end || !(v >= lo && v <= hi)) return false;
    *out = (float)v;
    return true;
}

static const char *const value_opts[] = {
    "-m",
    "--model",
    "--image",
    "-p",
    "--prompt",
    "--raw-prompt",
    "--system",
    "--out",
    "--stop",
    "--max-tokens",
    "--temp",
    "--top-p",
    "--top-k",
    "--min-p",
    "--repeat-penalty",
    "--seed",
    "--num-crops",
    "--threads",
    "--ctx",
    "--precision",
    "--mem-budget",
    "--device",
    "--gpu-mem-budget",
};

static bool known_value_opt(const char *a) {
    for (size_t i = 0; i < sizeof value_opts / sizeof *value_opts; i++)
        if (!strcmp(a, value_opts[i])) return true;
    return false;
}

bool gen_opts_parse(const char *cmd, int argc, char **argv, gen_opts *o) {
    memset(o, 0, sizeof *o);
    vlm_load_options_init(&o->lo);
    o->lo.watch_memory = true; /* the plan's alarm threshold: clean up, then warn */
    vlm_gen_params_init(&o->gp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        bool takes = true, ok = true;
        if (!strcmp(a, "--json")) {
            o->json = true;
            takes = false;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
            takes = false;
        } else if (!strcmp(a, "--allow-degrade")) {
            o->lo.allow_degrade = true;
            takes = false;
        } else if (!known_value_opt(a)) {
            cli_error(cmd, "unknown option %s (see vlmtest %s --help)", a, cmd);
            return false;
        } else if (!v) {
            cli_error(cmd, "%s needs a value", a);
            return false;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "--image")) {
            if (o->n_images == GEN_MAX_IMAGES) {
                cli_error(cmd, "at most %d images", GEN_MAX_IMAGES);
                return false;
            }
            o->images[o->n_images++] = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "--raw-prompt")) {
            o->raw_prompt = v;
        } else if (!strcmp(a, "--system")) {
            o->system = v;
        } else if (!strcmp(a, "--out")) {
            o->out = v;
        } else if (!strcmp(a, "--stop")) {
            if (o->n_stops == GEN_MAX_STOPS) {
                cli_error(cmd, "at most %d stop strings", GEN_MAX_STOPS);
                return false;
            }
            o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--max-tokens")) {
            ok = cli_parse_int(v, 0, 1 << 20, &n);
            o->gp.max_tokens = (int)n;
        } else if (!strcmp(a, "--temp")) {
            ok = parse_float(v, 0, 100, &o->gp.temperature);
        } else if (!strcmp(a, "--top-p")) {
            ok = parse_float(v, 0, 1, &o->gp.top_p);
        } else if (!strcmp(a, "--top-k")) {
            ok = cli_parse_int(v, 0, 1 << 24, &n);
            o->gp.top_k = (int)n;
        } else if (!strcmp(a, "--min-p")) {
            ok = parse_float(v, 0, 1, &o->gp.min_p);
        } else if (!strcmp(a, "--repeat-penalty")) {
            ok = parse_float(v, 0.01f, 100, &o->gp.repetition_penalty);
        } else if (!strcmp(a, "--seed")) {
            char *end = NULL;
            unsigned long long s = strtoull(v, &end, 10);
            ok = v[0] && !*end;
            o->gp.seed = s;
        } else if (!strcmp(a, "--num-crops")) {
            ok = cli_parse_int(v, 1, 256, &n);
            o->lo.num_crops = (int)n;
        } else if (!strcmp(a, "--threads")) {
            ok = cli_parse_int(v, 1, 1024, &n);
            o->lo.n_threads = (int)n;
        } else if (!strcmp(a, "--precision")) {
            o->lo.precision = v;
        } else if (!strcmp(a, "--mem-budget")) {
            ok = cli_parse_size(v, &o->lo.mem_budget) && o->lo.mem_budget > 0;
        } else if (!strcmp(a, "--device")) {
            if (!v[0] || plan_device_parse(v) < 0) {
                cli_error(cmd, "--device wants cuda, cpu or auto, not '%s'", v);
                return false;
            }
            o->lo.device = v;
        } else if (!strcmp(a, "--gpu-mem-budget")) {
            if (!cli_parse_size(v, &o->lo.gpu_mem_budget) || o->lo.gpu_mem_budget == 0) {
                cli_error(cmd, "--gpu-mem-budget wants a size such as 24G, not '%s'", v);
                return false;
            }
        } else if (!strcmp(a, "--ctx")) {
            ok = cli_parse_int(v, 1, 1 << 24, &n);
            o->lo.max_context = (int)n;
        } else {
            cli_error(cmd, "unknown option %s (see vlmtest %s --help)", a, cmd);
            return false;
        }
        if (!ok) {
            cli_error(cmd, "bad value for %s: %s", a, v);
            return false;
        }
        if (takes) i++;
    }
    o->gp.stop = o->stops;
    o->gp.n_stop = o->n_stops;
    o->gp.ignore_eos = o->ignore_eos;
    if (!o->model) {
        cli_error(cmd, "no model (-m MODEL)");
        return false;
    }
    return true;
}

bool gen_load(const char *cmd, const gen_opts *o, vlm_model **m, vlm_image **imgs) {
    vlm_err err = {0};
    for (int i = 0; i < o->n_images; i++) {
        if (vlm_image_load(o->images[i], 0, &imgs[i], &err) != VLM_OK) {
            cli_error(cmd, "%s", err.msg);
            for (int j = 0; j < i; j++) vlm_image_free(imgs[j]);
            return false;
        }
    }
    if (vlm_model_load(o->model, &o->lo, m, &err) != VLM_OK) {
        cli_error(cmd, "%s", err.msg);
        for (int j = 0; j < o->n_images; j++) vlm_image_free(imgs[j]);
        return false;
    }
    /* One line when the plan (or a fallback) gave something up. */
    vlm_model_desc d;
    vlm_model_describe(*m, &d);
    if (d.degraded || d.fallbacks > 0)
        fprintf(stderr,
                "vlmtest %s: warning: loaded at %s (%s%s%s), estimated %.2f GiB of a %.2f GiB "
                "budget%s%s\n",
                cmd, d.precision, d.rung, d.gave_up[0] ? "; gave up " : "", d.gave_up,
                (double)d.plan_bytes / (1u << 30), (double)d.plan_budget / (1u << 30),
                d.fallbacks ? "; after out of memory: " : "", d.fallback_note);
    return true;
}

void gen_turn_warning(const char *cmd, const vlm_gen_stats *st) {
    if (st->fallbacks > 0)
        fprintf(stderr,
                "vlmtest %s: warning: out of memory in the %s at %s; the model was reloaded at %s "
                "and the turn finished there\n",
                cmd, st->fallback_phase, st->fallback_from, st->fallback_to);
}

void gen_plan_json(FILE *f, const vlm_model *m) {
    vlm_model_desc d;
    vlm_model_describe(m, &d);
    fputs("{\"precision\": ", f);
    gen_json_string(f, d.precision, strlen(d.precision));
    fputs(", \"rung\": ", f);
    gen_json_string(f, d.rung, strlen(d.rung));
    fputs(", \"gave_up\": ", f);
    gen_json_string(f, d.gave_up, strlen(d.gave_up));
    fprintf(f, ", \"kv_dtype\": \"%s\", \"context\": %lld, \"num_crops\": %d", d.kv_dtype,
            (long long)d.context, d.num_crops);
    fprintf(f,
            ", \"degraded\": %s, \"estimated_bytes\": %llu, \"budget\": %llu, "
            "\"budget_source\": \"%s\", \"weight_bytes\": %llu, \"fallbacks\": %d, "
            "\"fallback_note\": ",
            d.degraded ? "true" : "false", (unsigned long long)d.plan_bytes,
            (unsigned long long)d.plan_budget, d.budget_given ? "mem_budget" : "machine",
            (unsigned long long)d.loaded_weight_bytes, d.fallbacks);
    gen_json_string(f, d.fallback_note, strlen(d.fallback_note));
    fprintf(f,
            ", \"device\": \"%s\", \"gpu_layers\": %d, \"n_layers\": %d, \"head_device\": "
            "\"%s\", \"vision_device\": \"%s\", \"gpu_estimated_bytes\": %llu, \"gpu_budget\": "
            "%llu, \"alarm_threshold\": %llu, \"mem_alarms\": %u}",
            d.device, d.gpu_layers, d.n_layers, d.head_on_gpu ? "cuda" : "cpu",
            d.vision_on_gpu ? "cuda" : "cpu", (unsigned long long)d.gpu_plan_bytes,
            (unsigned long long)d.gpu_budget, (unsigned long long)d.alarm_threshold, d.mem_alarms);
}

void gen_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}
