/* tokbench - encode throughput of the tokenizer on English prose, one core.
 *
 * usage: tokbench TOKENIZER_JSON_OR_DIR [TEXT_FILE] [--seconds S] [--whole-words]
 *
 * --whole-words turns off the cut of SentencePiece words before "▁" (same
 * ids; measures the plain priority-queue merge on whole segments).
 * Without TEXT_FILE, 4 MiB of deterministic English prose (common words,
 * sentences of 5-25 words, paragraphs of 3-8 sentences) is generated. Each
 * line (paragraph) is encoded as one text, as a prompt would be. Prints
 * MB/s (10^6 bytes of input per second) and tokens/s, best of the rounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/alloc.h"
#include "text/tok_internal.h"
#include "text/tokenizer.h"

static const char *WORDS[] = {
    "the",       "of",          "and",         "to",         "in",        "is",        "was",
    "that",      "for",         "it",          "with",       "as",        "his",       "on",
    "be",        "at",          "by",          "had",        "are",       "but",       "from",
    "or",        "have",        "an",          "they",       "which",     "one",       "you",
    "were",      "her",         "all",         "she",        "there",     "would",     "their",
    "we",        "him",         "been",        "has",        "when",      "who",       "will",
    "more",      "no",          "if",          "out",        "so",        "said",      "what",
    "up",        "its",         "about",       "into",       "than",      "them",      "can",
    "only",      "other",       "new",         "some",       "could",     "time",      "these",
    "two",       "may",         "then",        "do",         "first",     "any",       "my",
    "now",       "such",        "like",        "our",        "over",      "man",       "me",
    "even",      "most",        "made",        "after",      "also",      "did",       "many",
    "before",    "must",        "through",     "back",       "years",     "where",     "much",
    "your",      "way",         "well",        "down",       "should",    "because",   "each",
    "just",      "those",       "people",      "how",        "too",       "little",    "state",
    "good",      "very",        "make",        "world",      "still",     "own",       "see",
    "men",       "work",        "long",        "get",        "here",      "between",   "both",
    "life",      "being",       "under",       "never",      "day",       "same",      "another",
    "know",      "while",       "last",        "might",      "great",     "old",       "year",
    "off",       "come",        "since",       "against",    "go",        "came",      "right",
    "used",      "take",        "three",       "house",      "water",     "number",    "morning",
    "question",  "answer",      "children",    "government", "important", "different", "following",
    "without",   "however",     "development", "experience", "possible",  "something", "understand",
    "beautiful", "information", "photograph",  "Monday",     "London",    "President", "October",
    "Mr.",       "Dr.",         "don't",       "it's",       "we're",
};

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static char *make_prose(size_t target, size_t *len) {
    char *b = malloc(target + 4096);
    size_t n = 0;
    const size_t nw = sizeof WORDS / sizeof WORDS[0];
    while (n < target) {
        int sentences = 3 + (int)(next_rand() % 6);
        for (int s = 0; s < sentences; s++) {
            int words = 5 + (int)(next_rand() % 21);
            for (int w = 0; w < words; w++) {
                const char *word = WORDS[next_rand() % nw];
                size_t l = strlen(word);
                memcpy(b + n, word, l);
                if (w == 0 && b[n] >= 'a' && b[n] <= 'z') b[n] -= 32;
                n += l;
                uint32_t r = next_rand() % 100;
                if (w + 1 < words) b[n++] = r < 6 ? ',' : ' ';
                if (w + 1 < words && r < 6) b[n++] = ' ';
            }
            b[n++] = "..!?"[next_rand() % 4] == '.' ? '.' : "..!?"[next_rand() % 4];
            if (s + 1 < sentences) b[n++] = ' ';
        }
        b[n++] = '\n';
    }
    *len = n;
    return b;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const char *tok_path = NULL, *text_path = NULL;
    double seconds = 3.0;
    bool whole = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--whole-words"))
            whole = true;
        else if (!tok_path)
            tok_path = argv[i];
        else
            text_path = argv[i];
    }
    if (!tok_path) {
        fprintf(
            stderr,
            "usage: tokbench TOKENIZER_JSON_OR_DIR [TEXT_FILE] [--seconds S] [--whole-words]\n");
        return 2;
    }
    vlm_err err = {0};
    tokenizer *t = NULL;
    double t0 = now();
    if (tokenizer_load(tok_path, &t, &err) != VLM_OK) {
        fprintf(stderr, "tokbench: %s\n", err.msg);
        return 1;
    }
    double load_s = now() - t0;
    if (whole) t->bpe.meta_split = false;
    size_t len = 0;
    char *text = NULL;
    if (text_path) {
        FILE *f = fopen(text_path, "rb");
        if (!f) {
            perror(text_path);
            return 1;
        }
        fseek(f, 0, SEEK_END);
        len = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        text = malloc(len + 1);
        if (fread(text, 1, len, f) != len) return 1;
        fclose(f);
    } else
        text = make_prose((size_t)4 << 20, &len);
    tok_ids ids = {0};
    double best = 1e30;
    size_t tokens = 0;
    int rounds = 0;
    double start = now();
    do {
        double r0 = now();
        tokens = 0;
        for (size_t pos = 0; pos < len;) {
            const char *nl = memchr(text + pos, '\n', len - pos);
            size_t end = nl ? (size_t)(nl - text) : len;
            ids.n = 0;
            if (tokenizer_encode(t, text + pos, end - pos, false, &ids, &err) != VLM_OK) {
                fprintf(stderr, "tokbench: %s\n", err.msg);
                return 1;
            }
            tokens += ids.n;
            pos = end + 1;
        }
        double dt = now() - r0;
        if (dt < best) best = dt;
        rounds++;
    } while (now() - start < seconds);
    printf("tokenizer %s%s\ntext %s, %zu bytes\nload %.3f s\nencode: %.2f MB/s, %.0f tokens/s, "
           "%.2f bytes/token (best of %d rounds)\n",
           tok_path, whole ? " (--whole-words)" : "",
           text_path ? text_path : "(generated English prose)", len, load_s, len / best / 1e6,
           tokens / best, (double)len / (double)tokens, rounds);
    tok_ids_free(&ids);
    free(text);
    tokenizer_free(t);
    return 0;
}
