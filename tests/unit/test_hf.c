/* io/hf: model references resolved in a fake Hugging Face cache: refs/main,
 * @revision, a commit hash, the order of the cache variables, and the
 * not-found message listing every place looked at. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/alloc.h"
#include "io/hf.h"

#define COMMIT_MAIN "0123456789abcdef0123456789abcdef01234567"
#define COMMIT_DEV  "fedcba9876543210fedcba9876543210fedcba98"

static void mkdirs(const char *path) {
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    assert_int_equal(system(cmd), 0);
}

static void put(const char *path, const char *text) {
    assert_true(tu_write_file(path, text, strlen(text)));
}

/* <root>/hub/models--org--name with refs main, dev, a broken ref and two
 * snapshots. */
static void make_cache(const char *root) {
    char p[4200];
    snprintf(p, sizeof p, "%s/hub/models--org--name/refs/refs/pr", root);
    mkdirs(p);
    snprintf(p, sizeof p, "%s/hub/models--org--name/snapshots/" COMMIT_MAIN, root);
    mkdirs(p);
    snprintf(p, sizeof p, "%s/hub/models--org--name/snapshots/" COMMIT_DEV, root);
    mkdirs(p);
    snprintf(p, sizeof p, "%s/hub/models--org--name/refs/main", root);
    put(p, COMMIT_MAIN "\n");
    snprintf(p, sizeof p, "%s/hub/models--org--name/refs/dev", root);
    put(p, COMMIT_DEV);
    snprintf(p, sizeof p, "%s/hub/models--org--name/refs/refs/pr/1", root);
    put(p, COMMIT_DEV);
    snprintf(p, sizeof p, "%s/hub/models--org--name/refs/broken", root);
    put(p, "not a commit");
}

static void expect(const char *ref, const char *suffix) {
    char *out = NULL;
    vlm_err err = {0};
    if (vlm_hf_resolve(ref, &out, &err)) fail_msg("%s: %s", ref, err.msg);
    size_t a = strlen(out), b = strlen(suffix);
    if (a < b || strcmp(out + a - b, suffix)) fail_msg("%s resolved to %s", ref, out);
    vlm_free(out);
}

static void test_cache_resolution(void **state) {
    (void)state;
    char *root = tu_mkdtemp();
    make_cache(root);
    char hub[4200];
    snprintf(hub, sizeof hub, "%s/hub", root);
    unsetenv("HF_HOME");
    unsetenv("XDG_CACHE_HOME");
    setenv("HF_HUB_CACHE", hub, 1);
    expect("org/name", "/models--org--name/snapshots/" COMMIT_MAIN);
    expect("org/name@main", "/snapshots/" COMMIT_MAIN);
    expect("org/name@dev", "/snapshots/" COMMIT_DEV);
    expect("org/name@refs/pr/1", "/snapshots/" COMMIT_DEV);
    expect("org/name@" COMMIT_DEV, "/snapshots/" COMMIT_DEV);
    /* HF_HOME/hub when HF_HUB_CACHE is unset. */
    unsetenv("HF_HUB_CACHE");
    setenv("HF_HOME", root, 1);
    expect("org/name", "/snapshots/" COMMIT_MAIN);
    /* HOME/.cache/huggingface/hub last. */
    unsetenv("HF_HOME");
    char home[4200], cache[4300];
    snprintf(home, sizeof home, "%s/home", root);
    snprintf(cache, sizeof cache, "%s/.cache/huggingface", home);
    mkdirs(cache);
    char mv[9000];
    snprintf(mv, sizeof mv, "mv '%s/hub' '%s/.cache/huggingface/'", root, home);
    assert_int_equal(system(mv), 0);
    char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    setenv("HOME", home, 1);
    expect("org/name@dev", "/.cache/huggingface/hub/models--org--name/snapshots/" COMMIT_DEV);
    if (old_home) setenv("HOME", old_home, 1);
    free(old_home);
    tu_rmtree(root);
    free(root);
}

static void test_paths_win(void **state) {
    (void)state;
    char *root = tu_mkdtemp();
    expect(root, root);
    char f[4200];
    snprintf(f, sizeof f, "%s/model.safetensors", root);
    put(f, "x");
    expect(f, "/model.safetensors");
    tu_rmtree(root);
    free(root);
}

static void test_not_found_lists_places(void **state) {
    (void)state;
    char *root = tu_mkdtemp();
    make_cache(root);
    char hub[4200];
    snprintf(hub, sizeof hub, "%s/hub", root);
    setenv("HF_HUB_CACHE", hub, 1);
    setenv("HF_HOME", root, 1); /* the same folder: listed once */
    unsetenv("XDG_CACHE_HOME");
    char *out = NULL;
    vlm_err err = {0};
    assert_int_equal(vlm_hf_resolve("org/other", &out, &err), VLM_ERR_NOT_FOUND);
    assert_null(out);
    /* The path tried as is, then the refs file in every cache folder. */
    assert_non_null(strstr(err.msg, "org/other (no such file or folder)"));
    char want[4300];
    snprintf(want, sizeof want, "%s/models--org--other/refs/main (missing)", hub);
    assert_non_null(strstr(err.msg, want));
    assert_non_null(strstr(err.msg, "/.cache/huggingface/hub/models--org--other/refs/main"));
    assert_null(strstr(strstr(err.msg, want) + 1, want)); /* no repeat */

    /* A ref whose snapshot is gone, a broken ref, a commit not present. */
    assert_int_equal(vlm_hf_resolve("org/name@broken", &out, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "does not hold a commit hash"));
    assert_int_equal(
        vlm_hf_resolve("org/name@1111111111111111111111111111111111111111", &out, &err),
        VLM_ERR_NOT_FOUND);
    assert_non_null(
        strstr(err.msg, "snapshots/1111111111111111111111111111111111111111 (missing)"));
    /* Not a path, not a repo id. */
    assert_int_equal(vlm_hf_resolve("/no/such/model", &out, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "/no/such/model"));
    assert_int_equal(vlm_hf_resolve("org/../x", &out, &err), VLM_ERR_NOT_FOUND);
    assert_int_equal(vlm_hf_resolve("org/name@../../etc", &out, &err), VLM_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "not an org/name[@revision]"));
    assert_int_equal(vlm_hf_resolve("", &out, &err), VLM_ERR_INVALID_ARG);
    tu_rmtree(root);
    free(root);
}

static void test_repo_id_shape(void **state) {
    (void)state;
    assert_true(vlm_hf_is_repo_id("microsoft/Phi-3.5-vision-instruct"));
    assert_true(vlm_hf_is_repo_id("a/b@v1.0"));
    assert_true(vlm_hf_is_repo_id("a/b@refs/pr/3"));
    assert_false(vlm_hf_is_repo_id("a"));
    assert_false(vlm_hf_is_repo_id("a/b/c"));
    assert_false(vlm_hf_is_repo_id("/a/b"));
    assert_false(vlm_hf_is_repo_id("a/"));
    assert_false(vlm_hf_is_repo_id("../b"));
    assert_false(vlm_hf_is_repo_id("a/b@"));
    assert_false(vlm_hf_is_repo_id("a/b@x/../../y"));
    assert_false(vlm_hf_is_repo_id("a b/c"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_resolution),
        cmocka_unit_test(test_paths_win),
        cmocka_unit_test(test_not_found_lists_places),
        cmocka_unit_test(test_repo_id_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
