/* vlmtest generate: one prompt (and images) through the model, the answer
 * streamed to stdout; --json prints one object with the answer, token
 * counts, timings and the generated ids instead. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "backend/gpu.h"
#include "cli.h"
#include "gen_opts.h"
#include "runtime/api_internal.h"

static const char usage[] =
    "usage: vlmtest generate -m MODEL [--image FILE]... (-p PROMPT | --raw-prompt TEXT)\n"
    "                        [--system S] [--max-tokens N] [--temp T] [--top-p P] [--top-k K]\n"
    "                        [--min-p P] [--repeat-penalty R] [--seed S] [--num-crops N]\n"
    "                        [--threads N] [--ctx N] [--stop STR]... [--ignore-eos] [--json]\n"
    "                        [--precision P] [--mem-budget SIZE] [--allow-degrade]\n"
    "                        [--device cuda|cpu|auto] [--gpu-mem-budget SIZE]\n"
    "\n"
    "  -m MODEL            model folder, safetensors file, or org/name[@rev] in the HF cache\n"
    "  --image FILE        JPEG, PNG or WebP; attached to the turn in order\n"
    "  -p PROMPT           one user turn (images go in front as <|image_N|> tags)\n"
    "  --raw-prompt TEXT   a whole conversation in the chat format, with <|image_N|> tags\n"
    "                      for the --image files in order; tokenized as the processor does\n"
    "  --system S          system message (with -p)\n"
    "  --max-tokens N      new tokens at most (default 256)\n"
    "  --temp T            temperature (default 0: greedy)\n"
    "  --top-p/--top-k/--min-p/--repeat-penalty  sampling filters (off by default)\n"
    "  --seed S            random seed (default 0)\n"
    "  --num-crops N       override preprocessor_config's num_crops\n"
    "  --threads N         threads (default: VLM_THREADS, else the CPUs available)\n"
    "  --ctx N             KV cache tokens (default min(4096, the model's positions))\n"
    "  --stop STR          stop when the answer contains STR (not included in it)\n"
    "  --ignore-eos        do not stop on the generation_config stop ids\n"
    "  --precision P       load the weights at P: f32, bf16, f16, q8_0, q4_0, q4_K,\n"
    "                      q4_0_all (every matrix q4_0, KV cache bf16)\n"
    "                      (default: the best rung of the memory plan that fits)\n"
    "  --mem-budget SIZE   plan against SIZE bytes (8G, 512M) instead of the machine\n"
    "  --allow-degrade     the plan may drop crops, then context, then lift the q8_0\n"
    "                      floor (q4_0_all, KV bf16, context down to 512) to fit\n"
    "  --device D          auto (default: GPU rungs first when a GPU is there), cuda (GPU\n"
    "                      rungs only; an error without a GPU), cpu\n"
    "  --gpu-mem-budget SIZE  device bytes for the GPU rungs (default: free less 5%)\n"
    "  --json              print {answer, tokens_in, tokens_out, image_tokens, timings,\n"
    "                      gpu, stop_reason, ids, plan} instead of streaming the text\n";

static bool stream_out(void *user, const char *piece, size_t len) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void print_json(const vlm_model *m, const char *answer, const vlm_gen_stats *st,
                       const int32_t *ids, int n, double load_ms) {
    fputs("{\"answer\": ", stdout);
    gen_json_string(stdout, answer, strlen(answer));
    printf(", \"tokens_in\": %d, \"tokens_out\": %d, \"image_tokens\": %d", st->tokens_in,
           st->tokens_out, st->image_tokens);
    printf(", \"timings\": {\"load_ms\": %.3f, \"image_ms\": %.3f, \"prefill_ms\": %.3f, "
           "\"first_token_ms\": %.3f, "
           "\"decode_ms\": %.3f, \"decode_tokens_per_s\": %.4f}",
           load_ms, st->image_ms, st->prefill_ms, st->first_token_ms, st->decode_ms,
           st->decode_tps);
    /* device bytes per phase: accounted peak, and in use as the device says */
    printf(", \"gpu\": {\"peak_image\": %llu, \"peak_prefill\": %llu, \"peak_decode\": %llu, "
           "\"used_image\": %llu, \"used_prefill\": %llu, \"used_decode\": %llu}",
           (unsigned long long)st->gpu_peak_image, (unsigned long long)st->gpu_peak_prefill,
           (unsigned long long)st->gpu_peak_decode, (unsigned long long)st->gpu_used_image,
           (unsigned long long)st->gpu_used_prefill, (unsigned long long)st->gpu_used_decode);
    printf(", \"stop_reason\": \"%s\"", st->stop_reason);
    if (st->fallbacks > 0)
        printf(", \"turn_fallback\": {\"from\": \"%s\", \"to\": \"%s\", \"phase\": \"%s\", "
               "\"reloads\": %d}",
               st->fallback_from, st->fallback_to, st->fallback_phase, st->fallbacks);
    fputs(", \"ids\": [", stdout);
    for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
    fputs("], \"plan\": ", stdout);
    gen_plan_json(stdout, m);
    /* the object is closed by print_teardown, after the model is freed */
}

/* Device memory before the load and after the unload: what a run leaves
 * behind on the card (free bytes as the device reports them, and bytes still
 * held through the accounted device allocator). Zeros without a GPU. */
static void print_teardown(uint64_t free_before) {
    vlm_gpu_info gi;
    vlm_err err = {0};
    uint64_t free_after = vlm_gpu_query(&gi, &err) == VLM_OK ? gi.free_bytes : 0;
    vlm_gpu_mem_stats ms;
    vlm_gpu_mem_stats_get(&ms);
    printf(", \"teardown\": {\"gpu_free_before_load\": %llu, \"gpu_free_after_unload\": %llu, "
           "\"gpu_accounted_after_unload\": %llu}}\n",
           (unsigned long long)free_before, (unsigned long long)free_after,
           (unsigned long long)ms.total_current);
}

static int run(int argc, char **argv) {
    const char *cmd = "generate";
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return CLI_OK;
    }
    gen_opts o;
    if (!gen_opts_parse(cmd, argc, argv, &o)) return CLI_USAGE;
    if (!o.prompt == !o.raw_prompt) {
        cli_error(cmd, "give exactly one of -p PROMPT and --raw-prompt TEXT");
        return CLI_USAGE;
    }
    if (o.raw_prompt && o.system) {
        cli_error(cmd, "--system goes with -p (a raw prompt carries its own system turn)");
        return CLI_USAGE;
    }
    vlm_model *m = NULL;
    vlm_image *imgs[GEN_MAX_IMAGES] = {0};
    uint64_t gpu_free_before = 0;
    if (o.json) {
        vlm_gpu_info gi;
        vlm_err gerr = {0};
        if (vlm_gpu_query(&gi, &gerr) == VLM_OK) gpu_free_before = gi.free_bytes;
    }
    double t0 = now_ms();
    if (!gen_load(cmd, &o, &m, imgs)) return CLI_FAIL;
    double load_ms = now_ms() - t0; /* images decoded + model opened */
    int rc = CLI_FAIL;
    vlm_err err = {0};
    vlm_session *s = NULL;
    char *answer = NULL;
    vlm_gen_stats st;
    if (!o.json) o.gp.on_text = stream_out;
    vlm_status r = vlm_session_new(m, &s, &err);
    if (!r && o.system) r = vlm_session_set_system(s, o.system, &err);
    if (!r)
        r = o.raw_prompt
                ? vlm_session_chat_raw(s, o.raw_prompt, imgs, o.n_images, &o.gp, &answer, &st, &err)
                : vlm_session_chat(s, o.prompt, imgs, o.n_images, &o.gp, &answer, &st, &err);
    if (r) {
        if (!o.json) fflush(stdout);
        cli_error(cmd, "%s", err.msg);
    } else {
        if (!o.json) fflush(stdout);
        gen_turn_warning(cmd, &st);
        if (o.json) {
            int n = 0;
            const int32_t *ids = vlm_session_last_ids(s, &n);
            print_json(m, answer, &st, ids, n, load_ms);
        } else {
            fputc('\n', stdout);
        }
        rc = CLI_OK;
    }
    vlm_string_free(answer);
    vlm_session_free(s);
    vlm_model_free(m);
    for (int i = 0; i < o.n_images; i++) vlm_image_free(imgs[i]);
    if (o.json && rc == CLI_OK) print_teardown(gpu_free_before);
    return rc;
}

const struct cli_command cli_command_generate = {
    "generate", "answer a prompt (with images) with a model", run, usage};
