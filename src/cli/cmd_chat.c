/* vlmtest chat: an interactive multi-turn conversation. Each input line is a
 * user turn; `/image PATH` attaches an image to the next turn, `/reset`
 * starts over, `/quit` (or end of input) leaves. Works on a pipe as on a
 * terminal (the prompt marker is printed only for a terminal). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gen_opts.h"
#include "runtime/api_internal.h"

static const char usage[] =
    "usage: vlmtest chat -m MODEL [--system S] [--max-tokens N] [--temp T] [--top-p P]\n"
    "                    [--top-k K] [--min-p P] [--repeat-penalty R] [--seed S]\n"
    "                    [--num-crops N] [--threads N] [--ctx N] [--stop STR]...\n"
    "                    [--precision P] [--mem-budget SIZE] [--allow-degrade]\n"
    "                    [--device cuda|cpu|auto] [--gpu-mem-budget SIZE]\n"
    "\n"
    "Loading options as for vlmtest generate (see its --help).\n"
    "Reads turns from stdin, one per line, and streams each answer to stdout\n"
    "(followed by an empty line). Commands:\n"
    "  /image PATH   attach an image to the next turn (repeat for several)\n"
    "  /reset        forget the conversation (the system message stays)\n"
    "  /quit         leave\n";

static bool stream_out(void *user, const char *piece, size_t len) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true;
}

static int run(int argc, char **argv) {
    const char *cmd = "chat";
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return CLI_OK;
    }
    gen_opts o;
    if (!gen_opts_parse(cmd, argc, argv, &o)) return CLI_USAGE;
    if (o.prompt || o.raw_prompt || o.n_images || o.json) {
        cli_error(cmd, "turns and images come from stdin (see vlmtest chat --help)");
        return CLI_USAGE;
    }
    vlm_model *m = NULL;
    if (!gen_load(cmd, &o, &m, NULL)) return CLI_FAIL;
    vlm_err err = {0};
    vlm_session *s = NULL;
    if (vlm_session_new(m, &s, &err) || (o.system && vlm_session_set_system(s, o.system, &err))) {
        cli_error(cmd, "%s", err.msg);
        vlm_session_free(s);
        vlm_model_free(m);
        return CLI_FAIL;
    }
    o.gp.on_text = stream_out;
    const bool tty = isatty(STDIN_FILENO);
    vlm_image *imgs[GEN_MAX_IMAGES];
    int n_imgs = 0, rc = CLI_OK;
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        if (tty) {
            fputs(n_imgs ? "[+image] > " : "> ", stdout);
            fflush(stdout);
        }
        ssize_t len = getline(&line, &cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (!strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            vlm_session_reset(s);
            for (int i = 0; i < n_imgs; i++) vlm_image_free(imgs[i]);
            n_imgs = 0;
            fputs("[reset]\n", stdout);
            continue;
        }
        if (!strncmp(line, "/image ", 7)) {
            const char *path = line + 7;
            while (*path == ' ') path++;
            vlm_image *img = NULL;
            if (n_imgs == GEN_MAX_IMAGES)
                cli_error(cmd, "at most %d images per turn", GEN_MAX_IMAGES);
            else if (vlm_image_load(path, 0, &img, &err))
                cli_error(cmd, "%s", err.msg);
            else
                imgs[n_imgs++] = img;
            continue;
        }
        if (line[0] == '/') {
            cli_error(cmd, "unknown command %s (/image PATH, /reset, /quit)", line);
            continue;
        }
        char *answer = NULL;
        vlm_gen_stats st;
        vlm_status r = vlm_session_chat(s, line, imgs, n_imgs, &o.gp, &answer, &st, &err);
        for (int i = 0; i < n_imgs; i++) vlm_image_free(imgs[i]);
        n_imgs = 0;
        if (r) {
            fputc('\n', stdout);
            fflush(stdout);
            cli_error(cmd, "%s", err.msg);
            rc = CLI_FAIL;
            /* a full context ends the conversation; after other errors it goes
             * on (the exit status still says a turn failed) */
            if (r == VLM_ERR_LIMIT || r == VLM_ERR_NOMEM) break;
            continue;
        }
        vlm_string_free(answer);
        fputs("\n\n", stdout);
        fflush(stdout);
        gen_turn_warning(cmd, &st);
    }
    free(line);
    for (int i = 0; i < n_imgs; i++) vlm_image_free(imgs[i]);
    vlm_session_free(s);
    vlm_model_free(m);
    return rc;
}

const struct cli_command cli_command_chat = {"chat", "an interactive multi-turn conversation", run,
                                             usage};
