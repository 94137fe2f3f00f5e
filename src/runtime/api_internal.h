/* runtime/api_internal - what the command line and the tests reach below the
 * public API (include/vlm/vlm.h): the prompt builder (text + images -> ids
 * with placeholders and the image feature rows), raw-prompt turns, and the
 * session and model behind the handles. */
#ifndef VLM_RUNTIME_API_INTERNAL_H
#define VLM_RUNTIME_API_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "models/registry.h"
#include "runtime/session.h"
#include "text/tokenizer.h"
#include "vlm/vlm.h"

/* One prompt ready for the decoder. */
typedef struct vlm_prompt {
    tok_ids ids;    /* ids with -k placeholders for image k (numbered across the conversation) */
    float *rows;    /* [n_rows][hidden] projected image features, in placeholder order */
    int64_t n_rows; /* placeholders in ids */
    int n_images;   /* images of this prompt */
    int32_t *img_tokens; /* [n_images] feature rows per image */
    int *img_sizes;      /* [n_images][2]: image_sizes (height, width of the padded HD image) */
    double image_ms;     /* preprocessing + vision tower + projector */
    uint64_t gpu_peak, gpu_used; /* device bytes while encoding (see vlm_gen_stats) */
} vlm_prompt;

/* Build text's ids as the processor does (split at <|image_N|> tags, -k
 * runs; the first chunk gets BOS only with first_bos, every chunk after a tag
 * gets BOS) and encode the images (tags image_base+1 ..). Free with
 * vlm_prompt_free, also after a failure. */
vlm_status vlm_prompt_build(vlm_model *m, const char *text, bool first_bos, int image_base,
                            vlm_image *const *images, int n_images, vlm_prompt *out, vlm_err *err);
void vlm_prompt_free(vlm_prompt *p);

/* The parts behind the handles. */
arch_model *vlm_model_arch(vlm_model *m);
const tokenizer *vlm_model_tokenizer(const vlm_model *m);
session *vlm_session_core(vlm_session *s);
/* The generation_config stop ids in effect. */
const int32_t *vlm_model_stop_ids(const vlm_model *m, int *n);

/* A whole conversation already in the chat format (<|image_N|> tags for
 * images[0..n) in order), tokenized as the processor does (every chunk with
 * BOS), prefilled into an empty session, then generation as
 * vlm_session_chat. Later vlm_session_chat calls continue it. */
vlm_status vlm_session_chat_raw(vlm_session *s, const char *raw, vlm_image *const *images,
                                int n_images, const vlm_gen_params *p, char **answer,
                                vlm_gen_stats *stats, vlm_err *err);

/* The ids the last turn generated (the stop token included when one was
 * produced); valid until the next call on s. */
const int32_t *vlm_session_last_ids(const vlm_session *s, int *n);

#endif
