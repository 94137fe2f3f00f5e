/* Fuzz target: image decoding (JPEG, PNG, WebP by their magic bytes) and, for
 * images that decode, the Phi3V preprocessing. Any input must give a clean
 * status; nothing may crash or leak. */
#include <stddef.h>
#include <stdint.h>

#include "io/image.h"
#include "models/phi3v_image.h"

/* Keep each run fast: the pixel limit the fuzzer may reach, and the largest
 * image that is also preprocessed. */
#define FUZZ_MAX_PIXELS        (4u << 20)
#define FUZZ_PREPROCESS_PIXELS (1u << 16)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vlm_image *img = NULL;
    vlm_err err;
    if (image_decode(data, size, "<fuzz>", FUZZ_MAX_PIXELS, &img, &err) != VLM_OK) return 0;
    if ((uint64_t)img->width * (uint64_t)img->height <= FUZZ_PREPROCESS_PIXELS) {
        /* num_crops 1..4 from the last byte (each crop costs time). */
        int num_crops = 1 + (size ? data[size - 1] % 4 : 0);
        phi3v_pixels px;
        if (phi3v_preprocess(img, num_crops, false, &px, &err) == VLM_OK) phi3v_pixels_free(&px);
    }
    vlm_image_free(img);
    return 0;
}
