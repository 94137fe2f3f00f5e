/* models/phi3v_image - Phi-3(.5)-vision preprocessing; see phi3v_image.h
 * and docs/preprocessing.md. The sections follow the data: geometry, Pillow
 * resample, pad + transpose back, normalisation, global bicubic, crops. */
#include "models/phi3v_image.h"

#include <math.h>
#include <string.h>

#include "base/alloc.h"

/* ---------------------------------------------------------------------------
 * geometry (§3.2, §3.4, §3.8) */

int phi3v_num_image_tokens(int hc, int wc) {
    return (hc * wc + 1) * 144 + 1 + (hc + 1) * 12;
}

vlm_status phi3v_image_geometry(int width, int height, int num_crops, phi3v_geometry *g,
                                vlm_err *err) {
    memset(g, 0, sizeof *g);
    if (width <= 0 || height <= 0)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "image size %dx%d: both must be > 0", width,
                           height);
    if (num_crops < 1 || num_crops > PHI3V_MAX_NUM_CROPS)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG, "num_crops %d: must be in 1..%d", num_crops,
                           PHI3V_MAX_NUM_CROPS);
    g->width = width;
    g->height = height;
    g->num_crops = num_crops;
    g->transposed = width < height; /* strictly: squares stay */
    int w = g->transposed ? height : width;
    int h = g->transposed ? width : height;
    /* The reference computes in Python floats (IEEE double): ratio, the
     * ceil of scale/ratio, and new_h = int(new_w / ratio). Integer shortcuts
     * differ (e.g. 21x19, N=4: new_h 607, not 608). */
    double ratio = (double)w / (double)h;
    int scale = 1;
    while ((double)scale * ceil((double)scale / ratio) <= (double)num_crops) scale++;
    scale--;
    g->new_w = scale * PHI3V_CROP_SIZE;
    double nh = (double)g->new_w / ratio; /* >= 0, truncated like Python's int() */
    g->new_h = (int)nh;
    if (g->new_h <= 0)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED,
                           "image %dx%d: aspect ratio %.1f:1 is too extreme for num_crops %d "
                           "(the resized side would be 0 pixels)",
                           width, height, ratio, num_crops);
    int tar = (g->new_h + PHI3V_CROP_SIZE - 1) / PHI3V_CROP_SIZE * PHI3V_CROP_SIZE;
    g->pad_top = (tar - g->new_h) / 2;
    g->hd_w = g->transposed ? tar : g->new_w;
    g->hd_h = g->transposed ? g->new_w : tar;
    g->hc = g->hd_h / PHI3V_CROP_SIZE;
    g->wc = g->hd_w / PHI3V_CROP_SIZE;
    g->num_img_tokens = phi3v_num_image_tokens(g->hc, g->wc);
    return VLM_OK;
}

/* ---------------------------------------------------------------------------
 * Pillow's bilinear resample (Resample.c), 8 bits per channel (§3.3).
 *
 * Coefficients are computed in double, normalised, then turned into fixed
 * point with 22 fractional bits; a pass accumulates in int32 from a rounding
 * offset of 2^21 and clips. A pass is skipped when its size is unchanged (it
 * would be the identity). */

#define RS_PRECISION_BITS 22

typedef struct rs_coeffs {
    int ksize;   /* taps per output sample (max) */
    int *bounds; /* [out][2]: first input index, taps used */
    int32_t *kk; /* [out][ksize]: fixed-point weights */
} rs_coeffs;

static double rs_bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static vlm_status rs_coeffs_make(int in_size, int out_size, rs_coeffs *c, vlm_err *err) {
    /* Pillow takes the box as floats (0, in_size); exact for these sizes. */
    double scale = (double)(float)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale; /* the bilinear filter's support is 1 */
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = vlm_alloc((size_t)out_size * 2 * sizeof(int), VLM_MEM_SCRATCH);
    c->kk = vlm_calloc((size_t)out_size * (size_t)ksize, sizeof(int32_t), VLM_MEM_SCRATCH);
    double *w = vlm_alloc((size_t)ksize * sizeof(double), VLM_MEM_SCRATCH);
    if (!c->bounds || !c->kk || !w) {
        vlm_free(c->bounds);
        vlm_free(c->kk);
        vlm_free(w);
        c->bounds = NULL;
        c->kk = NULL;
        return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory for resize coefficients (%d -> %d)",
                           in_size, out_size);
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = rs_bilinear((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            if (ww != 0.0) w[x] /= ww;
            int32_t *k = &c->kk[(size_t)xx * ksize + x];
            *k = w[x] < 0 ? (int32_t)(-0.5 + w[x] * (1 << RS_PRECISION_BITS))
                          : (int32_t)(0.5 + w[x] * (1 << RS_PRECISION_BITS));
        }
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    vlm_free(w);
    return VLM_OK;
}

static void rs_coeffs_free(rs_coeffs *c) {
    vlm_free(c->bounds);
    vlm_free(c->kk);
}

static inline uint8_t rs_clip8(int32_t in) {
    if (in >= (1 << RS_PRECISION_BITS << 8)) return 255;
    if (in <= 0) return 0;
    return (uint8_t)(in >> RS_PRECISION_BITS);
}

/* A strided view of an RGB8 image in the landscape frame: pixel (x, y)
 * starts at p + x*sx + y*sy (bytes). */
typedef struct rgb_view {
    const uint8_t *p;
    ptrdiff_t sx, sy;
} rgb_view;

/* One pass along one axis: for each of n_across lines, out_size samples from
 * the input samples along the line. `along`/`across` are the strides of the
 * source and destination (bytes). */
static void rs_pass(const uint8_t *src, ptrdiff_t s_along, ptrdiff_t s_across, int n_across,
                    const rs_coeffs *c, int out_size, uint8_t *dst, ptrdiff_t d_along,
                    ptrdiff_t d_across) {
    for (int a = 0; a < n_across; a++) {
        const uint8_t *line = src + a * s_across;
        uint8_t *out = dst + a * d_across;
        for (int i = 0; i < out_size; i++) {
            int xmin = c->bounds[2 * i], xmax = c->bounds[2 * i + 1];
            const int32_t *k = &c->kk[(size_t)i * c->ksize];
            int32_t s0 = 1 << (RS_PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < xmax; x++) {
                const uint8_t *px = line + (xmin + x) * s_along;
                s0 += px[0] * k[x];
                s1 += px[1] * k[x];
                s2 += px[2] * k[x];
            }
            uint8_t *o = out + i * d_along;
            o[0] = rs_clip8(s0);
            o[1] = rs_clip8(s1);
            o[2] = rs_clip8(s2);
        }
    }
}

/* ---------------------------------------------------------------------------
 * HD image: transpose (as a view), resize, pad white, transpose back */

vlm_status phi3v_hd_image(const vlm_image *img, const phi3v_geometry *g, uint8_t **out,
                          vlm_err *err) {
    *out = NULL;
    if (img->width != g->width || img->height != g->height)
        return vlm_err_set(err, VLM_ERR_INVALID_ARG,
                           "phi3v_hd_image: geometry is for %dx%d, image is %dx%d", g->width,
                           g->height, img->width, img->height);
    /* Landscape frame: PIL's TRANSPOSE is an axis swap, out(x, y) = in(y, x). */
    int lw = g->transposed ? img->height : img->width;
    int lh = g->transposed ? img->width : img->height;
    ptrdiff_t row = (ptrdiff_t)img->width * 3;
    rgb_view v = {img->rgb, g->transposed ? row : 3, g->transposed ? 3 : row};

    uint8_t *tmp = NULL, *res = NULL;
    rs_coeffs ch = {0}, cv = {0};
    vlm_status s = VLM_OK;
    bool need_h = g->new_w != lw, need_v = g->new_h != lh;
    if (need_h) {
        /* Horizontal pass first (in the landscape frame), stored as uint8. */
        s = rs_coeffs_make(lw, g->new_w, &ch, err);
        if (s) goto done;
        tmp = vlm_alloc((size_t)lh * g->new_w * 3, VLM_MEM_IMAGE);
        if (!tmp) {
            s = vlm_err_set(err, VLM_ERR_NOMEM, "out of memory resizing to %dx%d", g->new_w, lh);
            goto done;
        }
        rs_pass(v.p, v.sx, v.sy, lh, &ch, g->new_w, tmp, 3, (ptrdiff_t)g->new_w * 3);
        v = (rgb_view){tmp, 3, (ptrdiff_t)g->new_w * 3};
    }
    if (need_v) {
        s = rs_coeffs_make(lh, g->new_h, &cv, err);
        if (s) goto done;
        res = vlm_alloc((size_t)g->new_h * g->new_w * 3, VLM_MEM_IMAGE);
        if (!res) {
            s = vlm_err_set(err, VLM_ERR_NOMEM, "out of memory resizing to %dx%d", g->new_w,
                            g->new_h);
            goto done;
        }
        rs_pass(v.p, v.sy, v.sx, g->new_w, &cv, g->new_h, res, (ptrdiff_t)g->new_w * 3, 3);
        v = (rgb_view){res, 3, (ptrdiff_t)g->new_w * 3};
    }

    /* Pad to the HD size with white (uint8, before normalisation) and write
     * in the original orientation. */
    uint8_t *hd = vlm_alloc((size_t)g->hd_h * g->hd_w * 3, VLM_MEM_IMAGE);
    if (!hd) {
        s = vlm_err_set(err, VLM_ERR_NOMEM, "out of memory for the %dx%d HD image", g->hd_w,
                        g->hd_h);
        goto done;
    }
    memset(hd, 255, (size_t)g->hd_h * g->hd_w * 3);
    ptrdiff_t hx = g->transposed ? (ptrdiff_t)g->hd_w * 3 : 3; /* landscape x step in hd */
    ptrdiff_t hy = g->transposed ? 3 : (ptrdiff_t)g->hd_w * 3; /* landscape y step in hd */
    for (int y = 0; y < g->new_h; y++) {
        uint8_t *d = hd + (y + g->pad_top) * hy;
        const uint8_t *sp = v.p + y * v.sy;
        for (int x = 0; x < g->new_w; x++) memcpy(d + x * hx, sp + x * v.sx, 3);
    }
    *out = hd;
done:
    rs_coeffs_free(&ch);
    rs_coeffs_free(&cv);
    vlm_free(tmp);
    vlm_free(res);
    return s;
}

/* ---------------------------------------------------------------------------
 * normalisation (§3.5)
 *
 * torchvision's ToTensor + Normalize: two float32 operations with rounding
 * after each, x = v/255 then (x - mean)/std. The build uses -march=native, so
 * the compiler must not contract anything here into an FMA; the attribute
 * and pragma forbid it (there is no multiply-add in the expression either, but
 * the guarantee should not depend on that). The constants go double -> float
 * as torch.as_tensor(mean, dtype=float32) converts the Python floats. */

static const double phi3v_mean[3] = {0.48145466, 0.4578275, 0.40821073};
static const double phi3v_std[3] = {0.26862954, 0.26130258, 0.27577711};

#if defined(__clang__)
#define PHI3V_NO_CONTRACT
#elif defined(__GNUC__)
#define PHI3V_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define PHI3V_NO_CONTRACT
#endif

PHI3V_NO_CONTRACT float phi3v_normalize(int c, uint8_t v) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    float mean = (float)phi3v_mean[c], stdv = (float)phi3v_std[c];
    float x = (float)v / 255.0f;
    return (x - mean) / stdv;
}

/* lut[c][v] = phi3v_normalize(c, v): the normalised HD image is a pure
 * function of its uint8 value, so it never needs to exist as floats. */
static void phi3v_norm_lut(float lut[3][256]) {
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = phi3v_normalize(c, (uint8_t)v);
}

/* ---------------------------------------------------------------------------
 * global image: torch.nn.functional.interpolate(size=(336,336), mode='bicubic',
 * align_corners=False) on the normalised HD image (§3.6).
 *
 * Per axis, in float32: scale = in/336, real = scale*(o + 0.5) - 0.5 (not
 * clamped), i0 = floor(real), t = real - i0, taps clamp(i0-1+k, 0, in-1).
 *
 * torch 1.13's CPU kernel is built with FMA contraction, and the compiler
 * fused its 4-term sums t0*w0 + t1*w1 + t2*w2 + t3*w3 as
 *     fma(t3, w3, fma(t2, w2, fma(t0, w0, t1*w1)))
 * (the *second* product is the one rounded alone), at both levels: first
 * along x for each of the 4 source rows, then along y over the row results.
 * Written that way with explicit fmaf the result is bit-identical to torch
 * 1.13 on every golden global image (measured: 0 of 338,688 values differ);
 * the spec's plain sequential order differs by 1 ulp in ~20%.
 *
 * The HD sides are multiples of 336, so scale is an integer k and t is 0
 * (k odd) or 0.5 (k even): the weights are exact dyadic numbers and how they
 * are evaluated does not matter here. */

#define BICUBIC_A (-0.75f)

static float cubic1(float x) { /* |x| <= 1: ((A+2)x - (A+3)) x x + 1 */
    return fmaf(fmaf(BICUBIC_A + 2.0f, x, -(BICUBIC_A + 3.0f)) * x, x, 1.0f);
}

static float cubic2(float x) { /* 1 < |x| < 2: ((A x - 5A) x + 8A) x - 4A */
    return fmaf(fmaf(fmaf(BICUBIC_A, x, -5.0f * BICUBIC_A), x, 8.0f * BICUBIC_A), x,
                -4.0f * BICUBIC_A);
}

typedef struct cubic_axis {
    int idx[PHI3V_CROP_SIZE][4];
    float w[PHI3V_CROP_SIZE][4];
} cubic_axis;

static void cubic_axis_make(int in, cubic_axis *a) {
    float scale = (float)in / (float)PHI3V_CROP_SIZE;
    for (int o = 0; o < PHI3V_CROP_SIZE; o++) {
        float real = fmaf(scale, (float)o + 0.5f, -0.5f);
        int i0 = (int)floorf(real);
        float t = real - (float)i0;
        a->w[o][0] = cubic2(t + 1.0f);
        a->w[o][1] = cubic1(t);
        a->w[o][2] = cubic1(1.0f - t);
        a->w[o][3] = cubic2((1.0f - t) + 1.0f);
        for (int k = 0; k < 4; k++) {
            int i = i0 - 1 + k;
            a->idx[o][k] = i < 0 ? 0 : i > in - 1 ? in - 1 : i;
        }
    }
}

void phi3v_global_image(const uint8_t *hd, int h, int w, float *out) {
    float lut[3][256];
    phi3v_norm_lut(lut);
    /* 2 x 336 x 4 x (int + float): small enough for the stack. */
    cubic_axis ax, ay;
    cubic_axis_make(w, &ax);
    cubic_axis_make(h, &ay);
    const int n = PHI3V_CROP_SIZE;
    for (int c = 0; c < 3; c++) {
        const float *l = lut[c];
        for (int oy = 0; oy < n; oy++) {
            const uint8_t *rows[4];
            for (int k = 0; k < 4; k++) rows[k] = hd + (size_t)ay.idx[oy][k] * w * 3 + c;
            float *o = out + ((size_t)c * n + oy) * n;
            for (int ox = 0; ox < n; ox++) {
                const int *xi = ax.idx[ox];
                const float *xw = ax.w[ox];
                float r[4];
                for (int k = 0; k < 4; k++) {
                    const uint8_t *p = rows[k];
                    float acc = fmaf(l[p[3 * xi[0]]], xw[0], l[p[3 * xi[1]]] * xw[1]);
                    acc = fmaf(l[p[3 * xi[2]]], xw[2], acc);
                    r[k] = fmaf(l[p[3 * xi[3]]], xw[3], acc);
                }
                const float *yw = ay.w[oy];
                float acc = fmaf(r[0], yw[0], r[1] * yw[1]);
                acc = fmaf(r[2], yw[2], acc);
                o[ox] = fmaf(r[3], yw[3], acc);
            }
        }
    }
}

/* ---------------------------------------------------------------------------
 * crops and the whole pipeline (§3.7) */

vlm_status phi3v_pixels_from_hd(const uint8_t *hd, const phi3v_geometry *g, bool pad_entries,
                                phi3v_pixels *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    int n_real = 1 + g->hc * g->wc;
    int n_entries = pad_entries ? g->num_crops + 1 : n_real;
    float *vals = vlm_calloc((size_t)n_entries * PHI3V_CROP_FLOATS, sizeof(float), VLM_MEM_IMAGE);
    if (!vals)
        return vlm_err_set(err, VLM_ERR_NOMEM, "out of memory for %d crops of pixel values",
                           n_entries);
    phi3v_global_image(hd, g->hd_h, g->hd_w, vals);

    float lut[3][256];
    phi3v_norm_lut(lut);
    const int n = PHI3V_CROP_SIZE;
    for (int r = 0; r < g->hc; r++) {
        for (int cc = 0; cc < g->wc; cc++) {
            float *tile = vals + (size_t)(1 + r * g->wc + cc) * PHI3V_CROP_FLOATS;
            for (int c = 0; c < 3; c++) {
                for (int y = 0; y < n; y++) {
                    const uint8_t *p =
                        hd + ((size_t)(r * n + y) * g->hd_w + (size_t)cc * n) * 3 + c;
                    float *o = tile + ((size_t)c * n + y) * n;
                    for (int x = 0; x < n; x++) o[x] = lut[c][p[3 * x]];
                }
            }
        }
    }
    out->geo = *g;
    out->n_real = n_real;
    out->n_entries = n_entries;
    out->values = vals;
    return VLM_OK;
}

vlm_status phi3v_preprocess(const vlm_image *img, int num_crops, bool pad_entries,
                            phi3v_pixels *out, vlm_err *err) {
    memset(out, 0, sizeof *out);
    if (!img) return vlm_err_set(err, VLM_ERR_INVALID_ARG, "phi3v_preprocess: image is NULL");
    phi3v_geometry g;
    vlm_status s = phi3v_image_geometry(img->width, img->height, num_crops, &g, err);
    if (s) return s;
    uint8_t *hd;
    s = phi3v_hd_image(img, &g, &hd, err);
    if (s) return s;
    s = phi3v_pixels_from_hd(hd, &g, pad_entries, out, err);
    vlm_free(hd);
    return s;
}

void phi3v_pixels_free(phi3v_pixels *p) {
    if (!p) return;
    vlm_free(p->values);
    p->values = NULL;
}
