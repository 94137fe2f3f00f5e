/* models/phi3v_image - the Phi-3(.5)-vision image processor (HD transform),
 * bit-exact with the reference (processing_phi3_v.py run on Pillow 9.4 and
 * torch 1.13; spec §3):
 *
 *   RGB8 w x h --transpose if w < h--> landscape frame
 *     --Pillow bilinear resize (fixed point)--> new_w x new_h   (uint8)
 *     --white pad, height to a multiple of 336, extra row at the bottom--
 *     --transpose back--> HD image H x W (uint8)                 image_sizes = [H, W]
 *     --x/255, (x - mean)/std in float32--> normalised [3][H][W]
 *   pixel_values = [global, tile(0,0), tile(0,1), ..., zeros...]   [num_crops+1][3][336][336]
 *     global: torch bicubic (A = -0.75, half-pixel) of the normalised HD image to 336x336
 *     tiles: row-major over the hc x wc grid
 *   num_img_tokens = (hc*wc + 1)*144 + 1 + (hc + 1)*12 */
#ifndef VLM_MODELS_PHI3V_IMAGE_H
#define VLM_MODELS_PHI3V_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "io/image.h"

#define PHI3V_CROP_SIZE     336                                     /* pixels per tile side */
#define PHI3V_CROP_FLOATS   (3 * PHI3V_CROP_SIZE * PHI3V_CROP_SIZE) /* floats per crop */
#define PHI3V_MAX_NUM_CROPS 256 /* upper bound we accept for num_crops */

/* Everything that follows from (w, h, num_crops) alone, before pixel work. */
typedef struct phi3v_geometry {
    int width, height; /* input image, pixels */
    int num_crops;     /* N: the upper bound on hc*wc */
    bool transposed;   /* width < height: the resize runs on the transposed image */
    int new_w, new_h;  /* resized size in the landscape frame, before padding */
    int pad_top;       /* white rows above, landscape frame (extra one goes below) */
    int hd_h, hd_w;    /* padded HD image, original orientation: image_sizes = [hd_h, hd_w] */
    int hc, wc;        /* crop grid, rows x cols: hd_h/336 x hd_w/336 */
    int num_img_tokens;
} phi3v_geometry;

/* HD size selection in IEEE double (§3.2). Fails with VLM_ERR_INVALID_ARG for
 * a bad size or num_crops, VLM_ERR_UNSUPPORTED when the aspect ratio is so
 * extreme that the resized height would be 0 (the reference fails too). */
vlm_status phi3v_image_geometry(int width, int height, int num_crops, phi3v_geometry *g,
                                vlm_err *err);

/* The image-token count for a crop grid (§3.8). */
int phi3v_num_image_tokens(int hc, int wc);

/* The padded HD image as uint8 RGB [hd_h][hd_w][3] (accounted, category
 * image; free with vlm_free). Exposed for tests: the reference hashes it. */
vlm_status phi3v_hd_image(const vlm_image *img, const phi3v_geometry *g, uint8_t **out,
                          vlm_err *err);

typedef struct phi3v_pixels {
    phi3v_geometry geo;
    int n_real;    /* 1 + hc*wc: the global image and the tiles */
    int n_entries; /* entries in values: num_crops+1 with padding, else n_real */
    float *values; /* [n_entries][3][336][336]; entries >= n_real are zero */
} phi3v_pixels;

/* The full preprocessing of one image. With pad_entries the result has
 * num_crops+1 entries exactly as the reference's pixel_values; without, only
 * the n_real entries that carry data (the engine skips the zero padding). */
vlm_status phi3v_preprocess(const vlm_image *img, int num_crops, bool pad_entries,
                            phi3v_pixels *out, vlm_err *err);
void phi3v_pixels_free(phi3v_pixels *p);

/* The second half of phi3v_preprocess: pixel values from the padded HD image
 * of phi3v_hd_image (normalise, global bicubic, crops). */
vlm_status phi3v_pixels_from_hd(const uint8_t *hd, const phi3v_geometry *g, bool pad_entries,
                                phi3v_pixels *out, vlm_err *err);

/* num_crops from MODEL_DIR/preprocessor_config.json (VLM_ERR_NOT_FOUND when
 * the file or the key is missing, VLM_ERR_FORMAT when out of range). */
vlm_status phi3v_read_num_crops(const char *model_dir, int *out, vlm_err *err);

/* Steps, exposed for tests. ------------------------------------------------ */

/* Normalisation of one uint8 value of channel c (0..2), float32 without FMA:
 * ((float)v / 255) - mean[c]) / std[c]. */
float phi3v_normalize(int c, uint8_t v);

/* Bicubic (torch, A = -0.75, align_corners False) of a normalised HD image
 * given as uint8 [h][w][3] plus the per-channel lookup of phi3v_normalize,
 * to [3][336][336] float32. */
void phi3v_global_image(const uint8_t *hd, int h, int w, float *out);

#endif
