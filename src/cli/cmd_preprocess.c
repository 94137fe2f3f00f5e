/* vlmtest preprocess: one image through the Phi3V image processor, written
 * as the reference's pixel_values (float32 LE) plus a JSON description. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/json.h"
#include "models/phi3v_image.h"

static const char usage[] =
    "usage: vlmtest preprocess -m MODEL --image FILE [--num-crops N] [--max-pixels N]\n"
    "                          --out PREFIX\n"
    "\n"
    "Run the Phi-3(.5)-vision image processor on one image and write:\n"
    "  PREFIX.f32   pixel_values, little-endian float32 [num_crops+1, 3, 336, 336]:\n"
    "               the global image, the crops row-major, then all-zero padding\n"
    "  PREFIX.json  shape, image_sizes [H, W], num_img_tokens, crop grid\n"
    "\n"
    "  -m MODEL          model folder; num_crops is read from its\n"
    "                    preprocessor_config.json unless --num-crops is given\n"
    "  --image FILE      JPEG, PNG or WebP (format from the content)\n"
    "  --num-crops N     override num_crops (1..256)\n"
    "  --max-pixels N    refuse larger images (default 89478485, as PIL)\n"
    "  --out PREFIX      output path prefix\n";

static int write_json(const char *cmd, const char *path, const char *image,
                      const phi3v_pixels *px) {
    vlm_json_init();
    const phi3v_geometry *g = &px->geo;
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL;
    if (ok) {
        const int shape[4] = {px->n_entries, 3, PHI3V_CROP_SIZE, PHI3V_CROP_SIZE};
        const int sizes[2] = {g->hd_h, g->hd_w};
        const int grid[2] = {g->hc, g->wc};
        ok = cJSON_AddStringToObject(o, "image", image) &&
             cJSON_AddNumberToObject(o, "width", g->width) &&
             cJSON_AddNumberToObject(o, "height", g->height) &&
             cJSON_AddNumberToObject(o, "num_crops", g->num_crops) &&
             cJSON_AddItemToObject(o, "shape", cJSON_CreateIntArray(shape, 4)) &&
             cJSON_AddStringToObject(o, "dtype", "float32") &&
             cJSON_AddItemToObject(o, "image_sizes", cJSON_CreateIntArray(sizes, 2)) &&
             cJSON_AddNumberToObject(o, "num_img_tokens", g->num_img_tokens) &&
             cJSON_AddItemToObject(o, "crop_grid", cJSON_CreateIntArray(grid, 2)) &&
             cJSON_AddNumberToObject(o, "n_real_crops", px->n_real - 1);
    }
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    if (!text) {
        cli_error(cmd, "out of memory writing %s", path);
        return CLI_FAIL;
    }
    size_t len = strlen(text);
    vlm_err err;
    vlm_status s = vlm_file_write_atomic(path, text, len, &err);
    cJSON_free(text);
    if (s) {
        cli_error(cmd, "%s", err.msg);
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* Little-endian on disk whatever the host order (swapped in place). */
static int write_values(const char *cmd, const char *path, phi3v_pixels *px) {
    size_t n = (size_t)px->n_entries * PHI3V_CROP_FLOATS;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &px->values[i], 4);
        u = __builtin_bswap32(u);
        memcpy(&px->values[i], &u, 4);
    }
#endif
    vlm_err err;
    if (vlm_file_write_atomic(path, px->values, n * sizeof(float), &err)) {
        cli_error(cmd, "%s", err.msg);
        return CLI_FAIL;
    }
    return CLI_OK;
}

static int run(int argc, char **argv) {
    const char *cmd = "preprocess";
    const char *model = NULL, *image = NULL, *out = NULL;
    long num_crops = 0, max_pixels = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0 || strcmp(a, "--image") == 0 ||
            strcmp(a, "--out") == 0 || strcmp(a, "--num-crops") == 0 ||
            strcmp(a, "--max-pixels") == 0) {
            if (!v) {
                cli_error(cmd, "%s needs a value", a);
                return CLI_USAGE;
            }
            i++;
            if (a[1] == 'm' || strcmp(a, "--model") == 0)
                model = v;
            else if (strcmp(a, "--image") == 0)
                image = v;
            else if (strcmp(a, "--out") == 0)
                out = v;
            else if (strcmp(a, "--num-crops") == 0) {
                if (!cli_parse_int(v, 1, PHI3V_MAX_NUM_CROPS, &num_crops)) {
                    cli_error(cmd, "--num-crops %s: expected an integer in 1..%d", v,
                              PHI3V_MAX_NUM_CROPS);
                    return CLI_USAGE;
                }
            } else if (!cli_parse_int(v, 1, 4000000000L, &max_pixels)) {
                cli_error(cmd, "--max-pixels %s: expected a positive integer", v);
                return CLI_USAGE;
            }
        } else {
            cli_error(cmd, "unknown argument '%s' (see vlmtest preprocess --help)", a);
            return CLI_USAGE;
        }
    }
    if (!model || !image || !out) {
        cli_error(cmd, "-m MODEL, --image FILE and --out PREFIX are required");
        return CLI_USAGE;
    }
    vlm_err err;
    if (num_crops == 0) {
        int nc;
        if (phi3v_read_num_crops(model, &nc, &err)) {
            cli_error(cmd, "%s (give --num-crops to override)", err.msg);
            return CLI_FAIL;
        }
        num_crops = nc;
    }
    size_t plen = strlen(out);
    char *path = vlm_alloc(plen + 8, VLM_MEM_OTHER);
    if (!path) {
        cli_error(cmd, "out of memory");
        return CLI_FAIL;
    }
    vlm_image *img = NULL;
    phi3v_pixels px = {0};
    int rc = CLI_FAIL;
    if (vlm_image_load(image, (uint64_t)max_pixels, &img, &err) ||
        phi3v_preprocess(img, (int)num_crops, true, &px, &err)) {
        cli_error(cmd, "%s", err.msg);
        goto done;
    }
    memcpy(path, out, plen);
    memcpy(path + plen, ".f32", 5);
    if ((rc = write_values(cmd, path, &px)) != CLI_OK) goto done;
    memcpy(path + plen, ".json", 6);
    rc = write_json(cmd, path, image, &px);
    if (rc == CLI_OK)
        printf("%s: %dx%d -> image_sizes [%d, %d], grid %dx%d, %d image tokens, %d entries\n",
               image, px.geo.width, px.geo.height, px.geo.hd_h, px.geo.hd_w, px.geo.hc, px.geo.wc,
               px.geo.num_img_tokens, px.n_entries);
done:
    phi3v_pixels_free(&px);
    vlm_image_free(img);
    vlm_free(path);
    return rc;
}

const struct cli_command cli_command_preprocess = {
    "preprocess",
    "run the image processor on one image, write pixel_values",
    run,
    usage,
};
