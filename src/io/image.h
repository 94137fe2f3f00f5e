/* io/image - decode JPEG, PNG and WebP to 8-bit RGB, as Pillow 9.4's
 * Image.open(f).convert('RGB') does.
 *
 * The format comes from the magic bytes, never from the file name. The
 * conversions to RGB follow Pillow (checked against Pillow 9.4, see
 * docs/preprocessing.md):
 *   grey 1/2/4/8 bit   value scaled to 0..255 (1 bit: 0/255, 2 bit: x85, 4 bit: x17)
 *   grey 16 bit        Pillow's mode "I": the value is CLIPPED to 255, not scaled
 *   RGB/GA/RGBA 16 bit the high byte of each sample
 *   palette            PLTE lookup; indices past the PLTE are Pillow's grey ramp (i,i,i)
 *   alpha (GA, RGBA, tRNS, WebP alpha)  dropped, not composited
 *   CMYK/YCCK JPEG     read as Adobe-inverted CMYK (Pillow's "CMYK;I"), then
 *                      R = (255-K) - (C'(255-K))/255 with Pillow's rounding
 * A pixel-count limit, checked from the header before any pixel buffer is
 * allocated, guards against decompression bombs. */
#ifndef VLM_IO_IMAGE_H
#define VLM_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "vlm/vlm.h"

/* PIL's Image.MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3. */
#define VLM_IMAGE_DEFAULT_MAX_PIXELS 89478485ull

struct vlm_image {
    int width;    /* pixels */
    int height;   /* pixels */
    uint8_t *rgb; /* [height][width][3], row-major, accounted (VLM_MEM_IMAGE) */
};

typedef enum image_format {
    IMAGE_FORMAT_UNKNOWN = 0,
    IMAGE_FORMAT_JPEG,
    IMAGE_FORMAT_PNG,
    IMAGE_FORMAT_WEBP,
} image_format;

/* The format named by the first bytes of data (IMAGE_FORMAT_UNKNOWN when no
 * decoder of ours claims them). */
image_format image_sniff(const uint8_t *data, size_t len);
const char *image_format_name(image_format f);

/* Decode an encoded image held in memory. `name` is used in messages (a path,
 * "<fuzz>"). max_pixels 0: VLM_IMAGE_DEFAULT_MAX_PIXELS. Errors:
 * VLM_ERR_FORMAT (corrupt, truncated, empty), VLM_ERR_UNSUPPORTED (another
 * format, or a variant we do not decode such as animated WebP), VLM_ERR_LIMIT
 * (over max_pixels), VLM_ERR_NOMEM. */
vlm_status image_decode(const uint8_t *data, size_t len, const char *name, uint64_t max_pixels,
                        vlm_image **out, vlm_err *err);

/* A blank image of width x height (pixels zeroed), accounted. */
vlm_status image_new(int width, int height, vlm_image **out, vlm_err *err);

#endif
