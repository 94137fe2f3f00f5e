/* vlmtest eval-logits: run a prompt (and images) through the model and write
 * the logits at every prompt position, for comparison with a reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "cli.h"
#include "gen_opts.h"
#include "runtime/api_internal.h"

static const char usage[] =
    "usage: vlmtest eval-logits -m MODEL [--image FILE]... (-p PROMPT | --raw-prompt TEXT)\n"
    "                           [--num-crops N] [--threads N] [--ctx N] --out PREFIX\n"
    "\n"
    "Writes\n"
    "  PREFIX.f32   logits at every prompt position, [n_tokens x vocab] float32 LE\n"
    "  PREFIX.json  {ids (image k as -k), n_tokens, vocab, image_sizes [[H, W]...],\n"
    "               num_img_tokens [...]}\n"
    "\n"
    "  -p PROMPT          one user turn: "
    "<|user|>\\n<|image_1|>\\n...PROMPT<|end|>\\n<|assistant|>\\n\n"
    "  --raw-prompt TEXT  a whole conversation in the chat format, tokenized as the\n"
    "                     processor does (every chunk between image tags with BOS)\n";

static bool write_f32(const char *path, const float *v, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = true;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; ok && i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        u = __builtin_bswap32(u);
        ok = fwrite(&u, 4, 1, f) == 1;
    }
#else
    ok = fwrite(v, sizeof(float), n, f) == n;
#endif
    return fclose(f) == 0 && ok;
}

static bool write_json(const char *path, const vlm_prompt *p, int vocab) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fputs("{\"ids\": [", f);
    for (size_t i = 0; i < p->ids.n; i++) fprintf(f, "%s%d", i ? ", " : "", p->ids.v[i]);
    fprintf(f, "], \"n_tokens\": %zu, \"vocab\": %d, \"image_sizes\": [", p->ids.n, vocab);
    for (int i = 0; i < p->n_images; i++)
        fprintf(f, "%s[%d, %d]", i ? ", " : "", p->img_sizes[2 * i], p->img_sizes[2 * i + 1]);
    fputs("], \"num_img_tokens\": [", f);
    for (int i = 0; i < p->n_images; i++) fprintf(f, "%s%d", i ? ", " : "", p->img_tokens[i]);
    fputs("]}\n", f);
    return fclose(f) == 0;
}

/* "<|user|>\n<|image_1|>\n...text<|end|>\n<|assistant|>\n" (accounted; vlm_free). */
static char *wrap_prompt(const char *text, int n_images) {
    size_t cap = strlen(text) + 64 + (size_t)n_images * 24;
    char *s = vlm_alloc(cap, VLM_MEM_OTHER);
    if (!s) return NULL;
    size_t len = (size_t)snprintf(s, cap, "<|user|>\n");
    for (int i = 0; i < n_images; i++)
        len += (size_t)snprintf(s + len, cap - len, "<|image_%d|>\n", i + 1);
    snprintf(s + len, cap - len, "%s<|end|>\n<|assistant|>\n", text);
    return s;
}

static int run(int argc, char **argv) {
    const char *cmd = "eval-logits";
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
    if (!o.out) {
        cli_error(cmd, "no output prefix (--out PREFIX)");
        return CLI_USAGE;
    }
    char *text = o.raw_prompt ? NULL : wrap_prompt(o.prompt, o.n_images);
    if (!o.raw_prompt && !text) {
        cli_error(cmd, "out of memory");
        return CLI_FAIL;
    }
    vlm_model *m = NULL;
    vlm_image *imgs[GEN_MAX_IMAGES] = {0};
    if (!gen_load(cmd, &o, &m, imgs)) {
        vlm_free(text);
        return CLI_FAIL;
    }
    int rc = CLI_FAIL;
    vlm_err err = {0};
    vlm_session *s = NULL;
    vlm_prompt p;
    memset(&p, 0, sizeof p);
    float *logits = NULL;
    const int vocab = vlm_model_arch(m)->info.vocab;
    vlm_status r = vlm_session_new(m, &s, &err);
    if (!r)
        r = vlm_prompt_build(m, o.raw_prompt ? o.raw_prompt : text, true, 0, imgs, o.n_images, &p,
                             &err);
    size_t n_logits = 0;
    if (!r && !vlm_size_mul(p.ids.n, (size_t)vocab, &n_logits))
        r = vlm_err_set(&err, VLM_ERR_LIMIT, "%zu tokens x %d logits overflow", p.ids.n, vocab);
    if (!r && !(logits = VLM_NEW_ARRAY(float, n_logits ? n_logits : 1, VLM_MEM_ACTIVATIONS)))
        r = vlm_err_set(&err, VLM_ERR_NOMEM, "out of memory for %zu tokens x %d logits", p.ids.n,
                        vocab);
    if (!r)
        r = session_append(vlm_session_core(s), p.ids.v, (int64_t)p.ids.n, p.rows, p.n_rows, logits,
                           &err);
    if (r) {
        cli_error(cmd, "%s", err.msg);
    } else {
        size_t plen = strlen(o.out) + 8;
        char *path = vlm_alloc(plen, VLM_MEM_OTHER);
        if (path) {
            snprintf(path, plen, "%s.f32", o.out);
            bool ok = write_f32(path, logits, n_logits);
            if (ok) {
                snprintf(path, plen, "%s.json", o.out);
                ok = write_json(path, &p, vocab);
            }
            if (ok)
                rc = CLI_OK;
            else
                cli_error(cmd, "cannot write %s", path);
            vlm_free(path);
        }
    }
    vlm_free(logits);
    vlm_prompt_free(&p);
    vlm_session_free(s);
    vlm_model_free(m);
    for (int i = 0; i < o.n_images; i++) vlm_image_free(imgs[i]);
    vlm_free(text);
    return rc;
}

const struct cli_command cli_command_eval_logits = {
    "eval-logits", "write the logits at every prompt position (reference comparisons)", run, usage};
