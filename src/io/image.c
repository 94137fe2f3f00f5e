/* io/image - JPEG (libjpeg-turbo), PNG (libpng) and WebP (libwebp) to RGB8.
 *
 * Memory: the struct and the pixel buffer come from the accounted allocator
 * (category image); libpng's allocations go through it too
 * (png_create_read_struct_2). libjpeg keeps its own small internal pools
 * (malloc inside the library: a few hundred KB for the largest progressive
 * image, freed by jpeg_destroy_decompress) and libwebp decodes straight into
 * our buffer (WebPDecodeRGBInto) with only its small working state outside.
 *
 * Both libjpeg and libpng report fatal errors through a callback that must
 * not return; the default one of libjpeg calls exit(). We longjmp back to the
 * decoder function instead. Everything that has to be freed after such a jump
 * lives in a context struct (not in locals), so its values are well defined
 * after longjmp. */
#include "io/image.h"

#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

#include "base/alloc.h"
#include "base/file.h"
#include "base/log.h"

/* ---------------------------------------------------------------------------
 * image objects */

vlm_status image_new(int width, int height, vlm_image **out, vlm_err *err) {
    *out = NULL;
    if (width <= 0 || height <= 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "image size %dx%d: both must be > 0", width,
                           height);
    size_t n;
    if (!vlm_size_mul((size_t)width, (size_t)height, &n) || !vlm_size_mul(n, 3, &n))
        return vlm_err_set(err, VLM_ERR_LIMIT, "image size %dx%d overflows", width, height);
    vlm_image *img = vlm_alloc(sizeof *img, VLM_MEM_IMAGE);
    if (!img) return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory for an image");
    img->rgb = vlm_calloc(n, 1, VLM_MEM_IMAGE);
    if (!img->rgb) {
        vlm_free(img);
        return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory for a %dx%d image (%zu bytes)", width,
                           height, n);
    }
    img->width = width;
    img->height = height;
    *out = img;
    return VLM_OK;
}

void vlm_image_free(vlm_image *img) {
    if (!img) return;
    vlm_free(img->rgb);
    vlm_free(img);
}

int vlm_image_width(const vlm_image *img) {
    return img ? img->width : 0;
}

int vlm_image_height(const vlm_image *img) {
    return img ? img->height : 0;
}

vlm_status vlm_image_from_rgb(const uint8_t *rgb, int width, int height, vlm_image **out,
                              vlm_err *err) {
    if (!out) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_image_from_rgb: out is NULL");
    *out = NULL;
    if (!rgb) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_image_from_rgb: rgb is NULL");
    vlm_image *img;
    vlm_status s = image_new(width, height, &img, err);
    if (s) return s;
    memcpy(img->rgb, rgb, (size_t)width * (size_t)height * 3);
    *out = img;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * format detection */

image_format image_sniff(const uint8_t *d, size_t len) {
    if (len >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return IMAGE_FORMAT_JPEG;
    if (len >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return IMAGE_FORMAT_PNG;
    if (len >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0)
        return IMAGE_FORMAT_WEBP;
    return IMAGE_FORMAT_UNKNOWN;
}

const char *image_format_name(image_format f) {
    switch (f) {
    case IMAGE_FORMAT_JPEG:
        return "JPEG";
    case IMAGE_FORMAT_PNG:
        return "PNG";
    case IMAGE_FORMAT_WEBP:
        return "WebP";
    default:
        return "unknown";
    }
}

/* A name for formats we recognise but do not decode, for a better message. */
static const char *sniff_other(const uint8_t *d, size_t len) {
    if (len >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) return "GIF";
    if (len >= 2 && d[0] == 'B' && d[1] == 'M') return "BMP";
    if (len >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0)) return "TIFF";
    if (len >= 12 && memcmp(d + 4, "ftyp", 4) == 0) return "HEIF/AVIF/MP4";
    if (len >= 2 && d[0] == 0xFF && d[1] == 0xD8) return "truncated JPEG";
    return NULL;
}

static vlm_status check_pixels(const char *name, const char *fmt, uint64_t w, uint64_t h,
                               uint64_t max_pixels, vlm_err *err) {
    if (w == 0 || h == 0)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: %s header declares an empty image (%llux%llu)",
                           name, fmt, (unsigned long long)w, (unsigned long long)h);
    if (w > INT_MAX || h > INT_MAX || w * h > max_pixels)
        return vlm_err_set(err, VLM_ERR_LIMIT,
                           "%s: %s image of %llux%llu = %llu pixels is over the limit of %llu "
                           "pixels (possible decompression bomb)",
                           name, fmt, (unsigned long long)w, (unsigned long long)h,
                           (unsigned long long)(w * h), (unsigned long long)max_pixels);
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * JPEG */

struct jpeg_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg casts cinfo->err to this */
    jmp_buf jmp;
    const char *name;
    char msg[JMSG_LENGTH_MAX];
    vlm_status status; /* what a jump reports */
    vlm_image *img;    /* freed after a jump */
    uint8_t *row;      /* scratch scanline (CMYK / grey), freed after a jump */
};

static void jpeg_on_error(j_common_ptr cinfo) {
    struct jpeg_ctx *c = (struct jpeg_ctx *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, c->msg);
    c->status = cinfo->err->msg_code == JERR_OUT_OF_MEMORY ? VLM_ERR_NOMEM : VLM_ERR_FORMAT;
    longjmp(c->jmp, 1);
}

/* Warnings (level -1) are tolerated as Pillow tolerates them, except running
 * out of data: libjpeg would pad with grey, Pillow raises "image file is
 * truncated", and so do we. Trace messages (level >= 0) are dropped. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    struct jpeg_ctx *c = (struct jpeg_ctx *)cinfo->err;
    if (level >= 0) return;
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(c->msg, sizeof c->msg, "file is truncated");
        c->status = VLM_ERR_FORMAT;
        longjmp(c->jmp, 1);
    }
    char buf[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buf);
    VLM_DEBUG("%s: libjpeg warning: %s", c->name, buf);
    cinfo->err->num_warnings++;
}

/* Pillow's MULDIV255: a*b/255 rounded, in integers. */
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

static inline uint8_t clip8(int v) {
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* The part of the decode that libjpeg may jump out of. Everything to free
 * lives in *ctx, owned by the caller's frame, so its values stay defined
 * after the longjmp. */
static vlm_status jpeg_run(struct jpeg_decompress_struct *cinfo, struct jpeg_ctx *ctx,
                           const uint8_t *data, size_t len, uint64_t max_pixels, vlm_err *err) {
    const char *name = ctx->name;
    if (setjmp(ctx->jmp)) {
        if (ctx->status == VLM_ERR_NOMEM)
            return vlm_err_set(err, VLM_ERR_NOMEM, "%s: JPEG: %s", name, ctx->msg);
        return vlm_err_set(err, ctx->status, "%s: corrupt JPEG: %s", name, ctx->msg);
    }
    jpeg_create_decompress(cinfo);
    jpeg_mem_src(cinfo, data, (unsigned long)len);
    jpeg_read_header(cinfo, TRUE);

    /* Pillow picks its mode from the component count and lets libjpeg
     * convert: 1 -> L, 3 -> RGB (libjpeg's YCbCr/RGB guess from the JFIF and
     * Adobe markers), 4 -> CMYK (YCCK converted by libjpeg). DCT method and
     * fancy upsampling stay at libjpeg's defaults (ISLOW, on), as in Pillow
     * outside draft mode. */
    int nc = cinfo->num_components;
    if (nc == 1)
        cinfo->out_color_space = JCS_GRAYSCALE;
    else if (nc == 3)
        cinfo->out_color_space = JCS_RGB;
    else if (nc == 4)
        cinfo->out_color_space = JCS_CMYK;
    else
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: JPEG with %d components is not supported",
                           name, nc);
    vlm_status s =
        check_pixels(name, "JPEG", cinfo->image_width, cinfo->image_height, max_pixels, err);
    if (s) return s;
    jpeg_start_decompress(cinfo);
    int w = (int)cinfo->output_width, h = (int)cinfo->output_height;
    if (cinfo->output_components != nc)
        return vlm_err_set(err, VLM_ERR_INTERNAL, "%s: JPEG gave %d components for %d", name,
                           cinfo->output_components, nc);
    s = image_new(w, h, &ctx->img, err);
    if (s) return vlm_err_prefix(err, "%s", name);
    if (nc != 3) {
        ctx->row = vlm_alloc((size_t)w * (size_t)nc, VLM_MEM_IMAGE);
        if (!ctx->row)
            return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for a JPEG row", name);
    }
    while (cinfo->output_scanline < cinfo->output_height) {
        uint8_t *dst = ctx->img->rgb + (size_t)cinfo->output_scanline * (size_t)w * 3;
        JSAMPROW rowp = nc == 3 ? dst : ctx->row;
        jpeg_read_scanlines(cinfo, &rowp, 1);
        if (nc == 1) {
            for (int x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = ctx->row[x];
        } else if (nc == 4) {
            /* Pillow reads every CMYK JPEG as "CMYK;I" (Adobe's inverted
             * storage: byte = 255 - ink), then cmyk2rgb:
             * out = (255-K) - C*(255-K)/255 with ink C = 255 - byte. */
            for (int x = 0; x < w; x++) {
                const uint8_t *p = ctx->row + 4 * x;
                int nk = p[3];
                for (int k = 0; k < 3; k++) dst[3 * x + k] = clip8(nk - muldiv255(255 - p[k], nk));
            }
        }
    }
    jpeg_finish_decompress(cinfo);
    return VLM_OK;
}

static vlm_status decode_jpeg(const uint8_t *data, size_t len, const char *name,
                              uint64_t max_pixels, vlm_image **out, vlm_err *err) {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_ctx ctx;
    memset(&cinfo, 0, sizeof cinfo); /* jpeg_destroy of a never-created struct is a no-op */
    memset(&ctx, 0, sizeof ctx);
    ctx.name = name;
    cinfo.err = jpeg_std_error(&ctx.pub);
    ctx.pub.error_exit = jpeg_on_error;
    ctx.pub.emit_message = jpeg_on_message;
    vlm_status s = jpeg_run(&cinfo, &ctx, data, len, max_pixels, err);
    jpeg_destroy_decompress(&cinfo);
    vlm_free(ctx.row);
    if (s) {
        vlm_image_free(ctx.img);
        return s;
    }
    *out = ctx.img;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * PNG */

struct png_ctx {
    jmp_buf jmp;
    const char *name;
    const uint8_t *data;
    size_t len, pos;
    char msg[256];
    int nomem;      /* an allocation inside libpng failed */
    int rows_done;  /* every pixel is decoded; only trailing chunks remain */
    vlm_image *img; /* freed after a jump */
    uint8_t *raw;   /* decoded rows (one, or all for interlaced files) */
    png_structp png;
    png_infop info;
};

static void png_on_error(png_structp png, png_const_charp msg) {
    struct png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jmp, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    struct png_ctx *c = png_get_error_ptr(png);
    VLM_DEBUG("%s: libpng warning: %s", c->name, msg);
}

static png_voidp png_on_malloc(png_structp png, png_alloc_size_t size) {
    void *p = vlm_alloc(size, VLM_MEM_IMAGE);
    if (!p) {
        struct png_ctx *c = png_get_mem_ptr(png);
        if (c) c->nomem = 1;
    }
    return p;
}

static void png_on_free(png_structp png, png_voidp p) {
    (void)png;
    vlm_free(p);
}

static void png_on_read(png_structp png, png_bytep out, size_t n) {
    struct png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "file is truncated");
    memcpy(out, c->data + c->pos, n);
    c->pos += n;
}

/* One decoded row (after png_set_packing: one byte per sample below 8 bits,
 * big-endian pairs at 16 bits) to RGB8, as Pillow's modes convert. */
static void png_row_to_rgb(const uint8_t *src, uint8_t *dst, int w, int ctype, int depth,
                           const uint8_t pal[256][3]) {
    int x;
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
        for (x = 0; x < w; x++) {
            int v;
            if (depth == 16) {
                v = (src[2 * x] << 8) | src[2 * x + 1];
                if (v > 255) v = 255; /* mode "I" -> "RGB" clips */
            } else {
                v = src[x];
                if (depth == 1)
                    v = v ? 255 : 0;
                else if (depth == 2)
                    v *= 85;
                else if (depth == 4)
                    v *= 17;
            }
            dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = (uint8_t)v;
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
        int step = depth == 16 ? 4 : 2;
        for (x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[step * x];
        break;
    }
    case PNG_COLOR_TYPE_RGB:
    case PNG_COLOR_TYPE_RGB_ALPHA: {
        int ch = ctype == PNG_COLOR_TYPE_RGB ? 3 : 4;
        int bps = depth == 16 ? 2 : 1; /* high byte first */
        for (x = 0; x < w; x++)
            for (int k = 0; k < 3; k++) dst[3 * x + k] = src[(ch * x + k) * bps];
        break;
    }
    case PNG_COLOR_TYPE_PALETTE:
        for (x = 0; x < w; x++) memcpy(dst + 3 * x, pal[src[x]], 3);
        break;
    default:
        break;
    }
}

/* The part of the decode that libpng may jump out of; see jpeg_run. */
static vlm_status png_run(struct png_ctx *ctx, uint64_t max_pixels, vlm_err *err) {
    const char *name = ctx->name;
    if (setjmp(ctx->jmp)) {
        /* Pillow stops at the end of the image data and ignores what
         * follows (a missing IEND, a broken trailing chunk); so do we. */
        if (ctx->rows_done) {
            VLM_DEBUG("%s: ignoring an error after the image data: %s", name, ctx->msg);
            return VLM_OK;
        }
        if (ctx->nomem) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: PNG: out of memory", name);
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: corrupt PNG: %s", name, ctx->msg);
    }
    png_structp png = ctx->png;
    png_infop info = ctx->info;
    png_set_read_fn(png, ctx, png_on_read);
    /* A bad CRC is an error in every chunk (libpng would only warn for
     * ancillary ones); Pillow also rejects them. */
    png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    /* Let our own limit, not libpng's 1,000,000 default, decide. */
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
    png_read_info(png, info);

    png_uint_32 w32, h32;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w32, &h32, &depth, &ctype, &interlace, NULL, NULL);
    vlm_status s = check_pixels(name, "PNG", w32, h32, max_pixels, err);
    if (s) return s;
    int w = (int)w32, h = (int)h32;

    /* Palette: Pillow starts from a grey ramp and overwrites the entries the
     * PLTE chunk gives, so an index past the PLTE gives (i, i, i). */
    uint8_t pal[256][3];
    for (int i = 0; i < 256; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte = NULL;
        int n_plte = 0;
        if (png_get_PLTE(png, info, &plte, &n_plte) & PNG_INFO_PLTE) {
            for (int i = 0; i < n_plte && i < 256; i++) {
                pal[i][0] = plte[i].red;
                pal[i][1] = plte[i].green;
                pal[i][2] = plte[i].blue;
            }
        }
    }
    if (depth < 8) png_set_packing(png); /* one sample per byte, not rescaled */
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);

    s = image_new(w, h, &ctx->img, err);
    if (s) return vlm_err_prefix(err, "%s", name);
    size_t raw_rows = passes > 1 ? (size_t)h : 1;
    size_t raw_size;
    if (!vlm_size_mul(rowbytes, raw_rows, &raw_size) ||
        !(ctx->raw = vlm_alloc(raw_size, VLM_MEM_IMAGE)))
        return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory for PNG rows (%zu x %zu bytes)",
                           name, rowbytes, raw_rows);
    const uint8_t(*cpal)[3] = (const uint8_t(*)[3])pal;
    if (passes > 1) {
        /* Adam7 needs the whole image before any row is final. */
        for (int pass = 0; pass < passes; pass++)
            for (int y = 0; y < h; y++) png_read_row(png, ctx->raw + (size_t)y * rowbytes, NULL);
        for (int y = 0; y < h; y++)
            png_row_to_rgb(ctx->raw + (size_t)y * rowbytes, ctx->img->rgb + (size_t)y * w * 3, w,
                           ctype, depth, cpal);
    } else {
        for (int y = 0; y < h; y++) {
            png_read_row(png, ctx->raw, NULL);
            png_row_to_rgb(ctx->raw, ctx->img->rgb + (size_t)y * w * 3, w, ctype, depth, cpal);
        }
    }
    ctx->rows_done = 1;
    png_read_end(png, NULL);
    return VLM_OK;
}

static vlm_status decode_png(const uint8_t *data, size_t len, const char *name, uint64_t max_pixels,
                             vlm_image **out, vlm_err *err) {
    struct png_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.name = name;
    ctx.data = data;
    ctx.len = len;
    ctx.png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, &ctx, png_on_error, png_on_warning,
                                       &ctx, png_on_malloc, png_on_free);
    if (!ctx.png) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory starting libpng", name);
    ctx.info = png_create_info_struct(ctx.png);
    vlm_status s = ctx.info
                       ? png_run(&ctx, max_pixels, err)
                       : vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory starting libpng", name);
    png_destroy_read_struct(&ctx.png, ctx.info ? &ctx.info : NULL, NULL);
    vlm_free(ctx.raw);
    if (s) {
        vlm_image_free(ctx.img);
        return s;
    }
    *out = ctx.img;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * WebP */

static vlm_status decode_webp(const uint8_t *data, size_t len, const char *name,
                              uint64_t max_pixels, vlm_image **out, vlm_err *err) {
    WebPBitstreamFeatures f;
    VP8StatusCode st = WebPGetFeatures(data, len, &f);
    if (st != VP8_STATUS_OK)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: corrupt WebP header (libwebp status %d%s)",
                           name, (int)st,
                           st == VP8_STATUS_NOT_ENOUGH_DATA ? ": file is truncated" : "");
    if (f.has_animation)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: animated WebP is not supported", name);
    vlm_status s = check_pixels(name, "WebP", (uint64_t)(f.width < 0 ? 0 : f.width),
                                (uint64_t)(f.height < 0 ? 0 : f.height), max_pixels, err);
    if (s) return s;
    vlm_image *img;
    s = image_new(f.width, f.height, &img, err);
    if (s) return vlm_err_prefix(err, "%s", name);
    size_t stride = (size_t)f.width * 3;
    /* RGB straight from libwebp's default YUV->RGB path (fancy upsampling),
     * as Pillow's decoder; alpha, if any, is not written (dropped). */
    if (!WebPDecodeRGBInto(data, len, img->rgb, stride * (size_t)f.height, (int)stride)) {
        vlm_image_free(img);
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: corrupt or truncated WebP data", name);
    }
    *out = img;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * entry points */

vlm_status image_decode(const uint8_t *data, size_t len, const char *name, uint64_t max_pixels,
                        vlm_image **out, vlm_err *err) {
    *out = NULL;
    if (!name) name = "<image>";
    if (max_pixels == 0) max_pixels = VLM_IMAGE_DEFAULT_MAX_PIXELS;
    if (len == 0) return vlm_err_set(err, VLM_ERR_FORMAT, "%s: empty file (0 bytes)", name);
    switch (image_sniff(data, len)) {
    case IMAGE_FORMAT_JPEG:
        return decode_jpeg(data, len, name, max_pixels, out, err);
    case IMAGE_FORMAT_PNG:
        return decode_png(data, len, name, max_pixels, out, err);
    case IMAGE_FORMAT_WEBP:
        return decode_webp(data, len, name, max_pixels, out, err);
    default:
        break;
    }
    const char *other = sniff_other(data, len);
    if (other)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "%s: %s is not a supported image format (JPEG, PNG, WebP)", name, other);
    return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                       "%s: unknown image format (not JPEG, PNG or WebP by its first bytes)", name);
}

/* Encoded files larger than this are refused before reading: a legitimate
 * image within the pixel limit compresses far below it. */
#define IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

vlm_status vlm_image_load(const char *path, uint64_t max_pixels, vlm_image **out, vlm_err *err) {
    if (!out) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_image_load: out is NULL");
    *out = NULL;
    if (!path) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "vlm_image_load: path is NULL");
    char *buf;
    size_t len;
    vlm_status s = vlm_file_read_all(path, IMAGE_MAX_FILE_BYTES, VLM_MEM_IMAGE, &buf, &len, err);
    if (s) return s;
    s = image_decode((const uint8_t *)buf, len, path, max_pixels, out, err);
    vlm_free(buf);
    return s;
}
