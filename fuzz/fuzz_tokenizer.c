/* Fuzz target: tokenizer.json loading, encode, decode and streaming.
 *
 * Input: byte 0 picks the tokenizer. 0: a fixed byte-level file, 1: a fixed
 * SentencePiece-style file (normalizers, Metaspace, byte fallback, added
 * tokens), 2: the input itself holds a tokenizer.json up to the first NUL,
 * then the text. The rest is text (arbitrary bytes) to encode with and
 * without special tokens; the ids are decoded (all and streamed), and the
 * text's bytes are also decoded as raw ids. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "text/tokenizer.h"

static const char BYTELEVEL[] =
    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"\\u0120a\":4,"
    "\"ab\":5,\"abc\":6,\"1\":7,\"!\":8,\"'\":9,\"s\":10},\"merges\":[\"\\u0120 a\",\"a b\","
    "\"ab c\"]},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
    "\"Split\",\"pattern\":{\"Regex\":\"(?i:'s|'t)|\\\\p{N}{1,3}| ?\\\\p{L}+|\\\\s+(?!\\\\S)|"
    "\\\\s+\"},\"behavior\":\"MergedWithNext\",\"invert\":false},{\"type\":\"ByteLevel\","
    "\"add_prefix_space\":true,\"use_regex\":true}]},\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":"
    "\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":"
    "{\"<s>\":{\"id\":\"<s>\",\"ids\":[20],\"tokens\":[\"<s>\"]}}},\"added_tokens\":["
    "{\"id\":20,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
    "{\"id\":21,\"content\":\"<m>\",\"lstrip\":true,\"rstrip\":true,\"normalized\":false},"
    "{\"id\":22,\"content\":\"ab\",\"single_word\":true,\"normalized\":true}]}";

static const char SPIECE[] =
    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"<unk>\":0,\"<0x00>\":1,\"<0x41>\":2,\"<0xC3>\":3,"
    "\"<0xA9>\":4,\"\\u2581\":5,\"a\":6,\"\\u2581a\":7,\"b\":8,\"ab\":9,\"1\":10},\"merges\":["
    "\"\\u2581 a\",\"a b\"],\"unk_token\":\"<unk>\",\"byte_fallback\":true,\"fuse_unk\":true},"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},{\"type\":"
    "\"Lowercase\"},{\"type\":\"Strip\",\"strip_left\":false,\"strip_right\":true},{\"type\":"
    "\"Replace\",\"pattern\":{\"Regex\":\"\\\\s{2,}\"},\"content\":\" \"}]},\"pre_tokenizer\":"
    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
    "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\","
    "\"split\":true},{\"type\":\"Punctuation\",\"behavior\":\"Contiguous\"}]},\"decoder\":{"
    "\"type\":\"Sequence\",\"decoders\":[{\"type\":\"ByteFallback\"},{\"type\":\"Metaspace\","
    "\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\"},{\"type\":\"Fuse\"},{\"type\":"
    "\"Strip\",\"content\":\" \",\"start\":1,\"stop\":1}]},\"added_tokens\":[{\"id\":30,"
    "\"content\":\"<|x|>\",\"special\":true,\"normalized\":false,\"rstrip\":true},{\"id\":31,"
    "\"content\":\"AB\",\"normalized\":true}]}";

static tokenizer *fixed[2];

static void run_text(const tokenizer *t, const uint8_t *text, size_t n) {
    for (int special = 0; special < 2; special++) {
        tok_ids ids = {0};
        if (tokenizer_encode(t, (const char *)text, n, special, &ids, NULL) == VLM_OK) {
            char *s;
            size_t l;
            if (tokenizer_decode(t, ids.v, ids.n, special, &s, &l, NULL) == VLM_OK) vlm_free(s);
            tok_stream st;
            tok_stream_init(&st, t, special);
            const char *piece;
            for (size_t i = 0; i < ids.n; i++)
                if (tok_stream_step(&st, ids.v[i], &piece, &l, NULL) != VLM_OK) break;
            (void)tok_stream_flush(&st, &piece, &l, NULL);
            tok_stream_free(&st);
        }
        tok_ids_free(&ids);
    }
    /* the bytes as ids, in and out of range */
    int32_t raw[64];
    size_t k = 0;
    for (size_t i = 0; i + 1 < n && k < 64; i += 2)
        raw[k++] = (int32_t)(int16_t)(text[i] | (text[i + 1] << 8));
    char *s;
    size_t l;
    if (tokenizer_decode(t, raw, k, false, &s, &l, NULL) == VLM_OK) vlm_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int mode = data[0] % 3;
    data++;
    size--;
    if (mode < 2) {
        if (!fixed[mode]) {
            const char *j = mode ? SPIECE : BYTELEVEL;
            if (tokenizer_load_json(j, strlen(j), "fixed", &fixed[mode], NULL) != VLM_OK)
                abort(); /* the fixed files are valid: a failure here is a bug */
        }
        run_text(fixed[mode], data, size);
        return 0;
    }
    const uint8_t *nul = memchr(data, 0, size);
    size_t jl = nul ? (size_t)(nul - data) : size;
    tokenizer *t = NULL;
    if (tokenizer_load_json((const char *)data, jl, "fuzz", &t, NULL) == VLM_OK) {
        size_t off = nul ? jl + 1 : size;
        run_text(t, data + off, size - off);
        tokenizer_free(t);
    }
    return 0;
}
