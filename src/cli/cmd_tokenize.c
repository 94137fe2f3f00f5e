/* vlmtest tokenize - text lines to token ids (and back) with a tokenizer.json,
 * as HF tokenizers' encode/decode give them; used by tests and cross-checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "cli.h"
#include "text/tokenizer.h"

static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = vlm_alloc(cap, VLM_MEM_OTHER);
    if (!b) return NULL;
    size_t r;
    while ((r = fread(b + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = vlm_realloc(b, cap * 2, VLM_MEM_OTHER);
            if (!nb) {
                vlm_free(b);
                return NULL;
            }
            b = nb;
            cap *= 2;
        }
    }
    *len = n;
    return b;
}

/* Print s as a JSON string (bytes >= 0x80 pass through; invalid UTF-8 was
 * already replaced by the decoder). */
static void print_json_string(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static int decode_line(const tokenizer *t, const char *line, size_t n, size_t lineno,
                       bool skip_special, bool json_out) {
    cJSON *arr = NULL;
    vlm_err err = {0};
    if (vlm_json_parse(line, n, "stdin", &arr, &err) != VLM_OK || !cJSON_IsArray(arr)) {
        cli_error("tokenize", "line %zu: expected a JSON array of ids", lineno);
        cJSON_Delete(arr);
        return CLI_FAIL;
    }
    size_t k = (size_t)cJSON_GetArraySize(arr), i = 0;
    int32_t *ids = vlm_alloc((k ? k : 1) * sizeof *ids, VLM_MEM_OTHER);
    if (!ids) {
        cJSON_Delete(arr);
        return CLI_FAIL;
    }
    for (const cJSON *c = arr->child; c; c = c->next, i++) {
        if (!cJSON_IsNumber(c) || c->valuedouble != (double)(int32_t)c->valuedouble) {
            cli_error("tokenize", "line %zu: item %zu is not an integer id", lineno, i);
            vlm_free(ids);
            cJSON_Delete(arr);
            return CLI_FAIL;
        }
        ids[i] = (int32_t)c->valuedouble;
    }
    cJSON_Delete(arr);
    char *text;
    size_t tl;
    vlm_status st = tokenizer_decode(t, ids, k, skip_special, &text, &tl, &err);
    vlm_free(ids);
    if (st != VLM_OK) {
        cli_error("tokenize", "line %zu: %s", lineno, err.msg);
        return CLI_FAIL;
    }
    if (json_out)
        print_json_string(text, tl);
    else
        fwrite(text, 1, tl, stdout);
    putchar('\n');
    vlm_free(text);
    return CLI_OK;
}

static int run(int argc, char **argv) {
    const char *path = NULL;
    bool add_special = false, decode = false, skip_special = false, json_out = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--add-special"))
            add_special = true;
        else if (!strcmp(argv[i], "--decode"))
            decode = true;
        else if (!strcmp(argv[i], "--skip-special"))
            skip_special = true;
        else if (!strcmp(argv[i], "--json"))
            json_out = true;
        else {
            cli_error("tokenize", "unknown argument '%s' (see vlmtest tokenize --help)", argv[i]);
            return CLI_USAGE;
        }
    }
    if (!path) {
        cli_error("tokenize", "--tokenizer PATH is required");
        return CLI_USAGE;
    }
    tokenizer *t = NULL;
    vlm_err err = {0};
    if (tokenizer_load(path, &t, &err) != VLM_OK) {
        cli_error("tokenize", "%s", err.msg);
        return CLI_FAIL;
    }
    size_t len = 0;
    char *in = read_stdin(&len);
    if (!in) {
        tokenizer_free(t);
        cli_error("tokenize", "cannot read stdin");
        return CLI_FAIL;
    }
    int rc = CLI_OK;
    tok_ids ids = {0};
    size_t pos = 0, lineno = 0;
    while (pos < len && rc == CLI_OK) {
        const char *nl = memchr(in + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - in) : len;
        lineno++;
        if (decode)
            rc = decode_line(t, in + pos, end - pos, lineno, skip_special, json_out);
        else {
            ids.n = 0;
            if (tokenizer_encode(t, in + pos, end - pos, add_special, &ids, &err) != VLM_OK) {
                cli_error("tokenize", "line %zu: %s", lineno, err.msg);
                rc = CLI_FAIL;
                break;
            }
            putchar('[');
            for (size_t i = 0; i < ids.n; i++) printf(i ? ",%d" : "%d", ids.v[i]);
            fputs("]\n", stdout);
        }
        pos = end + 1;
    }
    tok_ids_free(&ids);
    vlm_free(in);
    tokenizer_free(t);
    if (fflush(stdout) != 0) rc = CLI_FAIL;
    return rc;
}

const struct cli_command cli_command_tokenize = {
    "tokenize",
    "text lines to token ids (or ids to text) with a tokenizer.json",
    run,
    "usage: vlmtest tokenize --tokenizer PATH_OR_MODEL_DIR [--add-special]\n"
    "       vlmtest tokenize --tokenizer PATH_OR_MODEL_DIR --decode [--skip-special] [--json]\n"
    "\n"
    "Reads lines from stdin (split on \\n only; a trailing \\r belongs to the line)\n"
    "and prints one JSON array of ids per line, as HF tokenizers'\n"
    "encode(line, add_special_tokens=False) gives them. --add-special applies the\n"
    "post-processor (e.g. BOS) as encode(line) does. With --decode, each input line\n"
    "is a JSON array of ids and the decoded text is printed (as a JSON string with\n"
    "--json); --skip-special drops special tokens. A directory means\n"
    "DIR/tokenizer.json.\n",
};
