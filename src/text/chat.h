/* text/chat - chat prompts for Phi-3(.5)-vision and prompt -> ids with images.
 *
 * The chat template in tokenizer_config.json is recognised, not executed:
 * the known Phi-3-vision template is implemented directly (spec §2.3) and
 * any other template is refused with VLM_ERR_UNSUPPORTED, so an unknown
 * model never gets a silently wrong prompt. */
#ifndef VLM_TEXT_CHAT_H
#define VLM_TEXT_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "text/tokenizer.h"

typedef struct chat_msg {
    const char *role;    /* "system", "user", "assistant" (rendered as <|role|>) */
    const char *content; /* UTF-8; images referenced as <|image_1|>, <|image_2|>, ... */
} chat_msg;

typedef enum chat_format {
    CHAT_FORMAT_PHI3V = 1, /* <|role|>\n content <|end|>\n ... <|assistant|>\n */
} chat_format;

/* Recognise a chat_template string; VLM_ERR_UNSUPPORTED if unknown. */
vlm_status chat_template_detect(const char *tmpl, chat_format *out, vlm_err *err);
/* Read "chat_template" from a tokenizer_config.json (file or model folder). */
vlm_status chat_template_load(const char *path, chat_format *out, vlm_err *err);

/* Render messages as the template does (add_generation_prompt: append
 * "<|assistant|>\n" unless the last message is the assistant's). *out is an
 * accounted NUL-terminated string (free with vlm_free). */
vlm_status chat_render(chat_format fmt, const chat_msg *msgs, size_t n, bool add_generation_prompt,
                       char **out, size_t *out_len, vlm_err *err);

/* Prompt -> input_ids with image placeholders (spec §2.4): split at
 * <|image_N|> tags, tokenize every chunk with BOS, and put num_img_tokens[k-1]
 * copies of -k for tag k. Tags must be 1..n_images, each once, in order. */
vlm_status chat_prompt_to_ids(const tokenizer *t, const char *prompt, size_t len,
                              const int32_t *num_img_tokens, size_t n_images, tok_ids *out,
                              vlm_err *err);

/* The same for one turn of a running conversation: the first chunk gets BOS
 * only with first_bos (a later turn continues the sequence), every chunk
 * after an image tag gets BOS; tags are numbered across the conversation, so
 * this turn's images are <|image_{image_base+1}|>.. and their placeholders
 * -(image_base+1).. ; num_img_tokens[0..n_images) are this turn's images. */
vlm_status chat_turn_to_ids(const tokenizer *t, const char *prompt, size_t len, bool first_bos,
                            size_t image_base, const int32_t *num_img_tokens, size_t n_images,
                            tok_ids *out, vlm_err *err);

/* Stop tokens (from generation_config eos_token_id, or given). */
#define CHAT_MAX_STOPS 16
typedef struct chat_stops {
    int32_t ids[CHAT_MAX_STOPS];
    size_t n;
} chat_stops;

vlm_status chat_stops_init(chat_stops *s, const int32_t *ids, size_t n, vlm_err *err);
/* eos_token_id of a generation_config.json text: an int or an array of ints. */
vlm_status chat_stops_from_generation_config(const char *json, size_t len, chat_stops *s,
                                             vlm_err *err);
bool chat_is_stop(const chat_stops *s, int32_t id);

#endif
