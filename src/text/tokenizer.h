/* text/tokenizer - Hugging Face tokenizer.json (BPE models), identical ids.
 *
 * Loads the file the way HF tokenizers does (normalizer, pre-tokenizer, BPE
 * model, added tokens, post-processor, decoder) and encodes exactly as
 * `Tokenizer.encode(text, add_special_tokens)` does; decodes as
 * `Tokenizer.decode(ids, skip_special_tokens)`. See docs/tokenizer.md for
 * the supported components and the documented deviations.
 *
 * Input text is bytes: invalid UTF-8 is replaced by U+FFFD (one per maximal
 * invalid subpart, as Rust's String::from_utf8_lossy does) before encoding;
 * NUL is an ordinary character. A loaded tokenizer is immutable apart from
 * its word cache (mutex-protected), so one tokenizer may be shared by
 * threads. */
#ifndef VLM_TEXT_TOKENIZER_H
#define VLM_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct tokenizer tokenizer;

/* A growable array of token ids (accounted memory; free with tok_ids_free). */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

vlm_status tok_ids_push(tok_ids *ids, int32_t id, vlm_err *err);
void tok_ids_free(tok_ids *ids);

/* Load a tokenizer.json file, or a model folder holding one. */
vlm_status tokenizer_load(const char *path, tokenizer **out, vlm_err *err);
/* Load from JSON text (len bytes); `what` names the source in messages. */
vlm_status tokenizer_load_json(const char *json, size_t len, const char *what, tokenizer **out,
                               vlm_err *err);
void tokenizer_free(tokenizer *t);

/* Append the ids of text[0..len) to out. add_special applies the
 * post-processor (e.g. BOS for Llama-style files). On failure out may hold
 * part of the result. */
vlm_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                            tok_ids *out, vlm_err *err);

/* Decode ids into a NUL-terminated accounted string (*out, *out_len bytes
 * without the NUL; free with vlm_free). Unknown ids are skipped, as HF does. */
vlm_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                            char **out, size_t *out_len, vlm_err *err);

/* Id of a token string (added tokens first, then the model vocabulary);
 * -1 when absent. */
int32_t tokenizer_token_to_id(const tokenizer *t, const char *s, size_t len);
/* The string of an id (not NUL-terminated; *len set), NULL if none. */
const char *tokenizer_id_to_token(const tokenizer *t, int32_t id, size_t *len);
/* One more than the largest id that has a string. */
int32_t tokenizer_vocab_size(const tokenizer *t);
bool tokenizer_is_special(const tokenizer *t, int32_t id);
/* Bytes of the longest token string (a scan of the vocabulary): what one
 * token can add to decoded text, give or take a decoder's few bytes. */
size_t tokenizer_max_token_len(const tokenizer *t);

/* Streaming detokenizer: feed ids one by one, get text only when it ends
 * at a complete UTF-8 character (the algorithm of HF's DecodeStream: decode
 * a short window of context ids and release the new suffix unless it ends
 * with U+FFFD). */
typedef struct tok_stream {
    const tokenizer *t;
    bool skip_special;
    tok_ids ids;  /* window: context ids + pending ids */
    char *prefix; /* decode of ids[0..prefix_index) */
    size_t prefix_len, prefix_cap;
    size_t prefix_index;   /* ids before this index are context, already released */
    struct tok_dec_ws *ws; /* the decoder's buffers, kept between steps */
    char *piece;           /* the text released by the last step or flush */
    size_t piece_cap;
} tok_stream;

void tok_stream_init(tok_stream *s, const tokenizer *t, bool skip_special);
/* Add one id. *text is set to the newly released text (NUL-terminated, *len
 * bytes; owned by the stream, valid until its next call) or NULL when nothing
 * is ready yet. Text ending in U+FFFD is held back for at most 8 ids (a
 * character needs at most 4 byte tokens). The window of ids is bounded, and
 * every buffer is kept and only grows, so once warm a step allocates
 * nothing. */
vlm_status tok_stream_step(tok_stream *s, int32_t id, const char **text, size_t *len, vlm_err *err);
/* Release whatever is pending (may end with U+FFFD; *text as for a step,
 * never NULL), then start over (the buffers are kept). */
vlm_status tok_stream_flush(tok_stream *s, const char **text, size_t *len, vlm_err *err);
void tok_stream_free(tok_stream *s);

#endif
