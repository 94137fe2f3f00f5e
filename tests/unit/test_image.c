/* io/image + models/phi3v_image on real files: every image of
 * tests/data/images decoded and preprocessed with num_crops 1, 4 and 16, and
 * compared with tests/data/preprocess/cases.json (written by
 * reference/preprocess_ref.py with Pillow 9.4 / torch 1.13 / torchvision 0.14).
 * Then the corrupt-image corpus, the pixel limit and allocation failures. */
#include "testutil.h"

#include "sha256.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/json.h"
#include "io/image.h"
#include "models/phi3v_image.h"

static const cJSON *jget(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v) fail_msg("fixture: missing key %s", k);
    return v;
}

static int jint(const cJSON *o, const char *k) {
    return jget(o, k)->valueint;
}

static const char *jstr(const cJSON *o, const char *k) {
    return jget(o, k)->valuestring;
}

static void sha_hex(const void *p, size_t n, char hex[65]) {
    tu_sha256_of(p, n, hex);
}

static double g_worst_global; /* largest |diff| over all global subsamples */
static int g_cases;

static void check_case(const cJSON *c, vlm_image *img) {
    const char *name = jstr(c, "image");
    int nc = jint(c, "num_crops");
    char hex[65];
    vlm_err err;

    phi3v_geometry g;
    assert_int_equal(phi3v_image_geometry(img->width, img->height, nc, &g, &err), VLM_OK);
    uint8_t *hd;
    assert_int_equal(phi3v_hd_image(img, &g, &hd, &err), VLM_OK);
    sha_hex(hd, (size_t)g.hd_h * g.hd_w * 3, hex);
    if (strcmp(hex, jstr(c, "hd_rgb_u8_sha256")) != 0)
        fail_msg("%s N=%d: HD uint8 image differs from the reference", name, nc);

    phi3v_pixels px;
    assert_int_equal(phi3v_pixels_from_hd(hd, &g, true, &px, &err), VLM_OK);
    const cJSON *shape = jget(c, "shape");
    assert_int_equal(px.n_entries, cJSON_GetArrayItem(shape, 0)->valueint);
    const cJSON *sizes = jget(c, "image_sizes");
    assert_int_equal(px.geo.hd_h, cJSON_GetArrayItem(sizes, 0)->valueint);
    assert_int_equal(px.geo.hd_w, cJSON_GetArrayItem(sizes, 1)->valueint);
    const cJSON *grid = jget(c, "crop_grid");
    assert_int_equal(px.geo.hc, cJSON_GetArrayItem(grid, 0)->valueint);
    assert_int_equal(px.geo.wc, cJSON_GetArrayItem(grid, 1)->valueint);
    if (px.geo.num_img_tokens != jint(c, "num_img_tokens"))
        fail_msg("%s N=%d: %d image tokens, reference %d", name, nc, px.geo.num_img_tokens,
                 jint(c, "num_img_tokens"));

    sha_hex(px.values + PHI3V_CROP_FLOATS,
            (size_t)(px.n_real - 1) * PHI3V_CROP_FLOATS * sizeof(float), hex);
    if (strcmp(hex, jstr(c, "crops_f32le_sha256")) != 0)
        fail_msg("%s N=%d: normalised crops differ from the reference", name, nc);
    for (size_t i = (size_t)px.n_real * PHI3V_CROP_FLOATS;
         i < (size_t)px.n_entries * PHI3V_CROP_FLOATS; i++)
        assert_true(px.values[i] == 0.0f);

    /* Global image: the acceptance is 1e-5 max abs on the stored subsample;
     * we also require the exact bytes (we reproduce torch's arithmetic). */
    int stride = jint(c, "global_stride");
    const cJSON *sub = jget(c, "global_subsample");
    int i = 0;
    double md = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, sub) {
        double d = fabs((double)px.values[(size_t)i * stride] - v->valuedouble);
        if (d > md) md = d;
        i++;
    }
    assert_int_equal(i, (PHI3V_CROP_FLOATS + stride - 1) / stride);
    if (md > g_worst_global) g_worst_global = md;
    if (md > 1e-5) fail_msg("%s N=%d: global image differs by %.3g", name, nc, md);
    sha_hex(px.values, PHI3V_CROP_FLOATS * sizeof(float), hex);
    if (strcmp(hex, jstr(c, "global_f32le_sha256")) != 0)
        fail_msg("%s N=%d: global image not bit-identical (max subsample diff %.3g)", name, nc, md);

    /* Without the zero padding entries: the same data, n_real entries. */
    if (nc == 16) {
        float *padded = px.values;
        int n_real = px.n_real;
        px.values = NULL;
        assert_int_equal(phi3v_pixels_from_hd(hd, &g, false, &px, &err), VLM_OK);
        assert_int_equal(px.n_entries, n_real);
        assert_memory_equal(px.values, padded, (size_t)n_real * PHI3V_CROP_FLOATS * sizeof(float));
        phi3v_pixels_free(&px);
        px.values = padded;
    }
    phi3v_pixels_free(&px);
    vlm_free(hd);
    g_cases++;
}

static void test_reference_cases(void **state) {
    (void)state;
    cJSON *root;
    vlm_err err;
    assert_int_equal(vlm_json_parse_file(tu_src("tests/data/preprocess/cases.json"), &root, &err),
                     VLM_OK);
    const cJSON *cases = jget(root, "cases");
    assert_true(cJSON_GetArraySize(cases) >= 13 * 3);
    const char *loaded_name = NULL;
    vlm_image *img = NULL;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *name = jstr(c, "image");
        if (!loaded_name || strcmp(name, loaded_name) != 0) {
            vlm_image_free(img);
            char rel[512];
            snprintf(rel, sizeof rel, "tests/data/images/%s", name);
            if (vlm_image_load(tu_src(rel), 0, &img, &err) != VLM_OK)
                fail_msg("%s: %s", name, err.msg);
            loaded_name = name;
            assert_int_equal(img->width, jint(c, "width"));
            assert_int_equal(img->height, jint(c, "height"));
            /* Decoding: the same bytes as Pillow's convert('RGB'). */
            char hex[65];
            sha_hex(img->rgb, (size_t)img->width * img->height * 3, hex);
            if (strcmp(hex, jstr(c, "rgb_u8_sha256")) != 0)
                fail_msg("%s (Pillow mode %s): decoded RGB differs from Pillow's", name,
                         jstr(c, "mode"));
        }
        check_case(c, img);
    }
    vlm_image_free(img);
    print_message("%d cases; worst global |diff| on the subsamples: %.3g\n", g_cases,
                  g_worst_global);
    cJSON_Delete(root);
}

/* Every file of the corrupt corpus: a clear error that names the file, and
 * nothing left allocated. */
static void test_bad_images(void **state) {
    (void)state;
    const char *dir = tu_src("tests/data/bad/images");
    char dirbuf[4096];
    snprintf(dirbuf, sizeof dirbuf, "%s", dir);
    DIR *d = opendir(dirbuf);
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "README.md") == 0) continue;
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", dirbuf, e->d_name);
        vlm_mem_stats a, b;
        vlm_alloc_get_stats(&a);
        vlm_image *img = (vlm_image *)1;
        vlm_err err = {0};
        vlm_status s = vlm_image_load(path, 0, &img, &err);
        print_message("%-28s %s\n", e->d_name, err.msg);
        if (s == VLM_OK) fail_msg("%s: decoded, expected an error", e->d_name);
        assert_null(img);
        assert_true(s == VLM_ERR_FORMAT || s == VLM_ERR_UNSUPPORTED || s == VLM_ERR_LIMIT);
        if (!strstr(err.msg, e->d_name))
            fail_msg("%s: message does not name it: %s", e->d_name, err.msg);
        /* The corpus names say which error each one must give. */
        if (strncmp(e->d_name, "bomb", 4) == 0) assert_int_equal(s, VLM_ERR_LIMIT);
        if (strncmp(e->d_name, "unsupported", 11) == 0) assert_int_equal(s, VLM_ERR_UNSUPPORTED);
        if (strstr(e->d_name, "trunc")) assert_int_equal(s, VLM_ERR_FORMAT);
        vlm_alloc_get_stats(&b);
        assert_int_equal(b.total_current, a.total_current);
        n++;
    }
    closedir(d);
    assert_true(n >= 15);
}

/* The limit is checked from the header: refusing a 12-megapixel JPEG must not
 * allocate anything near its pixel buffer (36 MB). */
static void test_pixel_limit(void **state) {
    (void)state;
    const char *path = tu_src("tests/data/images/4000x3000.jpg");
    size_t flen;
    void *file = tu_read_file(path, &flen);
    assert_non_null(file);
    free(file);
    vlm_alloc_reset_peaks();
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    vlm_image *img;
    vlm_err err;
    assert_int_equal(vlm_image_load(path, 11999999, &img, &err), VLM_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "4000x3000"));
    assert_non_null(strstr(err.msg, "11999999"));
    vlm_alloc_get_stats(&b);
    assert_true(b.peak[VLM_MEM_IMAGE] - a.current[VLM_MEM_IMAGE] < flen + 65536);
    assert_int_equal(vlm_image_load(path, 12000000, &img, &err), VLM_OK);
    vlm_image_free(img);
    /* PNG and WebP the same way. */
    assert_int_equal(
        vlm_image_load(tu_src("tests/data/images/square.png"), 256 * 256 - 1, &img, &err),
        VLM_ERR_LIMIT);
    assert_int_equal(vlm_image_load(tu_src("tests/data/images/lossy.webp"), 1000, &img, &err),
                     VLM_ERR_LIMIT);
}

/* The format comes from the bytes: a PNG named .jpg loads. */
static void test_magic_not_extension(void **state) {
    (void)state;
    size_t len;
    void *png = tu_read_file(tu_src("tests/data/images/square.png"), &len);
    assert_non_null(png);
    char *dir = tu_mkdtemp();
    char path[512];
    snprintf(path, sizeof path, "%s/really_a_png.jpg", dir);
    assert_true(tu_write_file(path, png, len));
    vlm_image *img;
    vlm_err err;
    assert_int_equal(vlm_image_load(path, 0, &img, &err), VLM_OK);
    assert_int_equal(img->width, 256);
    vlm_image_free(img);
    assert_int_equal(vlm_image_load(tu_src("tests/data/no_such.png"), 0, &img, &err),
                     VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "no_such.png"));
    free(png);
    tu_rmtree(dir);
    free(dir);
}

static void test_from_rgb_args(void **state) {
    (void)state;
    uint8_t px[6] = {1, 2, 3, 4, 5, 6};
    vlm_image *img;
    vlm_err err;
    assert_int_equal(vlm_image_from_rgb(px, 0, 1, &img, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_image_from_rgb(NULL, 1, 1, &img, &err), VLM_ERR_INVALID_ARG);
    assert_int_equal(vlm_image_from_rgb(px, 2, 1, &img, &err), VLM_OK);
    assert_int_equal(vlm_image_width(img), 2);
    assert_int_equal(vlm_image_height(img), 1);
    assert_memory_equal(img->rgb, px, 6);
    vlm_image_free(img);
    vlm_image_free(NULL);
}

/* Decoding with each allocation failing in turn: VLM_ERR_NOMEM or success,
 * never a leak (libpng's own allocations are accounted too). */
static void walk_failures(const char *rel) {
    size_t len;
    uint8_t *data = tu_read_file(tu_src(rel), &len);
    assert_non_null(data);
    int fails = 0;
    for (uint64_t n = 1;; n++) {
        vlm_mem_stats a, b;
        vlm_alloc_get_stats(&a);
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        vlm_image *img;
        vlm_err err;
        vlm_status s = image_decode(data, len, rel, 0, &img, &err);
        vlm_alloc_fail_at(0, false);
        if (s == VLM_OK) {
            vlm_image_free(img);
            vlm_alloc_get_stats(&b);
            assert_int_equal(b.total_current, a.total_current);
            break;
        }
        if (s != VLM_ERR_NOMEM)
            fail_msg("%s: allocation %llu failed: %s", rel, (unsigned long long)n, err.msg);
        vlm_alloc_get_stats(&b);
        assert_int_equal(b.total_current, a.total_current);
        fails++;
    }
    assert_true(fails >= 2);
    free(data);
}

static void test_alloc_failures(void **state) {
    (void)state;
    walk_failures("tests/data/images/palette.png");
    walk_failures("tests/data/images/interlaced.png");
    walk_failures("tests/data/images/cmyk.jpg");
    walk_failures("tests/data/images/lossy.webp");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_cases), cmocka_unit_test(test_bad_images),
        cmocka_unit_test(test_pixel_limit),     cmocka_unit_test(test_magic_not_extension),
        cmocka_unit_test(test_from_rgb_args),   cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
