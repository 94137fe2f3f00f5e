/* models/registry - see registry.h. */
#include "models/registry.h"

#include <string.h>

#include "base/alloc.h"
#include "models/phi3v.h"

static const vlm_arch *const families[] = {
    &phi3v_arch,
};

const vlm_arch *vlm_arch_find(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strcmp(families[i]->name, name) == 0) return families[i];
    return NULL;
}

vlm_status vlm_arch_for_config(const vlm_config *config, const char *what, const vlm_arch **out,
                               vlm_err *err) {
    const vlm_arch *f = vlm_arch_find(config->architecture);
    if (!f)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: architecture %s is not supported", what,
                           config->architecture[0] ? config->architecture : "(none)");
    *out = f;
    return VLM_OK;
}

vlm_status arch_model_create(const vlm_config *config, const char *what,
                             const vlm_weight_source *src, cpu_pool *pool,
                             const vlm_placement *place, arch_model **out, vlm_err *err) {
    *out = NULL;
    const vlm_arch *a = NULL;
    vlm_status st = vlm_arch_for_config(config, what, &a, err);
    if (st != VLM_OK) return st;
    arch_model *m = vlm_calloc(1, sizeof *m, VLM_MEM_WEIGHTS);
    if (!m) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", what);
    m->arch = a;
    st = a->create(config, what, src, pool, place, &m->impl, err);
    if (st != VLM_OK) {
        vlm_free(m);
        return st;
    }
    a->info(m->impl, &m->info);
    *out = m;
    return VLM_OK;
}

void arch_model_free(arch_model *m) {
    if (!m) return;
    if (m->impl) m->arch->destroy(m->impl);
    vlm_free(m);
}
