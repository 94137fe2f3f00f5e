/* Fuzz target: the model-folder JSON parsers. The first byte picks the
 * file kind (config.json, generation_config.json, preprocessor_config.json,
 * tokenizer_config.json); the rest is the text. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/log.h"
#include "io/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vlm_log_set_level(VLM_LOG_OFF);
    if (size < 1) return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    vlm_err err = {0};
    vlm_status st = VLM_OK;
    switch (data[0] % 4) {
    case 0: {
        vlm_config c;
        st = vlm_config_parse(text, len, "config.json", &c, &err);
        if (st == VLM_OK) {
            /* Accepted values hold the invariants the model code relies on. */
            if (c.head_dim * c.num_attention_heads != c.hidden_size) __builtin_trap();
            if (c.num_attention_heads % c.num_key_value_heads) __builtin_trap();
            for (int i = 0; i < c.rope_scaling.n_short; i++)
                if (!(c.rope_scaling.short_factor[i] > 0)) __builtin_trap();
        }
        vlm_config_free(&c);
        break;
    }
    case 1: {
        vlm_gen_config g;
        st = vlm_gen_config_parse(text, len, "generation_config.json", &g, &err);
        if (g.n_stop_ids < 1 || g.n_stop_ids > VLM_MAX_STOP_IDS) __builtin_trap();
        break;
    }
    case 2: {
        vlm_preproc_config p;
        st = vlm_preproc_config_parse(text, len, "preprocessor_config.json", &p, &err);
        if (p.num_crops < 1 || !(p.image_std[0] > 0)) __builtin_trap();
        break;
    }
    default: {
        vlm_tokenizer_config t;
        st = vlm_tokenizer_config_parse(text, len, "tokenizer_config.json", &t, &err);
        vlm_tokenizer_config_free(&t);
        break;
    }
    }
    if (st != VLM_OK && err.msg[0] == '\0') __builtin_trap();
    return 0;
}
