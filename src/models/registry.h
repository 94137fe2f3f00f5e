/* models/registry - model families by config.json `architectures` name.
 *
 * Adding a family: write src/models/<family>.c with a `const vlm_arch`
 * and add one line to the table in registry.c. */
#ifndef VLM_MODELS_REGISTRY_H
#define VLM_MODELS_REGISTRY_H

#include "models/model.h"

/* The family registered under name, or NULL. */
const vlm_arch *vlm_arch_find(const char *name);

/* The family for a parsed config.json (its `architectures`[0]).
 * VLM_ERR_UNSUPPORTED names the architecture; `what` names the file. */
vlm_status vlm_arch_for_config(const vlm_config *config, const char *what, const vlm_arch **out,
                               vlm_err *err);

/* A loaded model of any family: its table, its state, its numbers. */
typedef struct arch_model {
    const vlm_arch *arch;
    void *impl;
    vlm_model_info info;
} arch_model;

/* Find the family for config and create the model (freed with
 * arch_model_free); place as in vlm_arch.create. */
vlm_status arch_model_create(const vlm_config *config, const char *what,
                             const vlm_weight_source *src, cpu_pool *pool,
                             const vlm_placement *place, arch_model **out, vlm_err *err);
void arch_model_free(arch_model *m);

#endif
