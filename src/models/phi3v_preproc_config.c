/* models/phi3v_preproc_config - the one preprocessor_config.json key the
 * image processor needs (num_crops). Kept apart so it can move onto the
 * typed model-config parser (io/config) without touching the pipeline. */
#include "models/phi3v_image.h"

#include <stdio.h>

#include "base/json.h"

vlm_status phi3v_read_num_crops(const char *model_dir, int *out, vlm_err *err) {
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "%s: model path too long", model_dir);
    cJSON *root;
    vlm_status s = vlm_json_parse_file(path, &root, err);
    if (s) return s;
    int64_t v = 0;
    s = vlm_json_get_int(root, "num_crops", path, &v, err);
    cJSON_Delete(root);
    if (s) return s;
    if (v < 1 || v > PHI3V_MAX_NUM_CROPS)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: num_crops %lld is not in 1..%d", path,
                           (long long)v, PHI3V_MAX_NUM_CROPS);
    *out = (int)v;
    return VLM_OK;
}
