/* Fuzz the scorers: the first line is a case's scorer spec (JSON), the rest
 * an answer. Parsing must fail cleanly or give a spec that scores any answer
 * (bytes that are not UTF-8 included) without crashing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "tester/score.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size);
    size_t spec_len = nl ? (size_t)(nl - data) : size;
    char *answer = malloc(size - spec_len + 1);
    if (!answer) return 0;
    size_t alen = nl ? size - spec_len - 1 : 0;
    memcpy(answer, nl ? (const char *)nl + 1 : "", alen);
    answer[alen] = '\0';
    /* The scorers work on NUL-terminated text: cut at the first NUL. */
    char *n = tester_normalize(answer);
    vlm_free(n);
    double v;
    tester_number_extract(answer, &v);
    cJSON *j = NULL;
    vlm_err e;
    if (vlm_json_parse((const char *)data, spec_len, "fuzz", &j, &e) == VLM_OK) {
        tester_score_spec s;
        if (tester_score_spec_parse(j, "fuzz", &s, &e) == VLM_OK) {
            bool pass;
            char why[128];
            tester_score(&s, answer, &pass, why, sizeof why, &e);
            tester_choice_extract(&s, answer);
            tester_score_spec_free(&s);
        }
        cJSON_Delete(j);
    }
    free(answer);
    return 0;
}
