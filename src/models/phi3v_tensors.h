/* models/phi3v_tensors - the tensors a Phi3VForCausalLM checkpoint holds, with
 * the shapes its config implies (spec §8). One list, shared by the model
 * loader, the checkpoint check, `vlmtest info` and tools/mkcheckpoint.
 *
 * With H = hidden_size, I = intermediate_size, V = vocab_size, nh/nkv heads,
 * hd = H / nh, and the vision tower (D, Iv, Lv layers, image S, patch P):
 *   LM:     embed_tokens [V, H]; per layer: input_layernorm [H],
 *           qkv_proj [(nh + 2 nkv) hd, H], o_proj [H, H],
 *           post_attention_layernorm [H], gate_up_proj [2I, H], down_proj [H, I];
 *           norm [H]; lm_head [V, H] unless tie_word_embeddings.
 *   glue:   glb_GN [1, 1, 4D], sub_GN [1, 1, 1, 4D], img_projection.0 [H, 4D] + [H],
 *           img_projection.2 [H, H] + [H].
 *   vision: class_embedding [D], patch_embedding [D, 3, P, P],
 *           position_embedding [(S/P)^2 + 1, D], pre_layrnorm, Lv encoder layers,
 *           post_layernorm. */
#ifndef VLM_MODELS_PHI3V_TENSORS_H
#define VLM_MODELS_PHI3V_TENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "io/config.h"
#include "io/safetensors.h"

#define PHI3V_ARCH "Phi3VForCausalLM"
/* The CLIP tower's names: "<PHI3V_VISION_MODEL>.embeddings...". */
#define PHI3V_VISION_MODEL  "model.vision_embed_tokens.img_processor.vision_model"
#define PHI3V_VISION_PREFIX PHI3V_VISION_MODEL "."
#define PHI3V_GLUE_PREFIX   "model.vision_embed_tokens."

typedef enum phi3v_part {
    PHI3V_PART_VISION = 0, /* the CLIP tower */
    PHI3V_PART_GLUE,       /* separators and the projector */
    PHI3V_PART_LM,         /* the language model */
    PHI3V_PART_COUNT
} phi3v_part;

typedef struct phi3v_tensor_spec {
    char name[128];
    int rank;
    int64_t shape[4];
    phi3v_part part;
    bool used; /* false: stored but never read (CLIP layers past layer_idx, post_layernorm) */
} phi3v_tensor_spec;

/* The full list for config c, in a fixed order (accounted array; free with
 * vlm_free). Fails with VLM_ERR_UNSUPPORTED when c is not a Phi3V config we
 * implement. */
vlm_status phi3v_tensor_specs(const vlm_config *c, phi3v_tensor_spec **out, size_t *n,
                              vlm_err *err);

/* Every tensor of the list present in set, with its shape and a float dtype;
 * the error names the file and the tensor. Tensors the list does not know
 * are logged (VLM_WARN) and allowed. */
vlm_status phi3v_check_tensors(const vlm_config *c, const vlm_tensor_set *set, vlm_err *err);

/* The part a tensor name belongs to (by prefix). */
phi3v_part phi3v_part_of(const char *name);
const char *phi3v_part_name(phi3v_part p);

/* Parameter count the config implies, per part (sums of the list). */
vlm_status phi3v_param_counts(const vlm_config *c, uint64_t counts[PHI3V_PART_COUNT], vlm_err *err);

#endif
