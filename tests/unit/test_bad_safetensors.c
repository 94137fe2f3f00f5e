/* The committed corpus of broken safetensors files (tests/data/bad/
 * safetensors, made by reference/make_bad_safetensors.py): each is refused
 * with the status MANIFEST.tsv gives and a message naming the file and the
 * part at fault, whether opened from disk, from memory or as a tensor set.
 * Under ASan this also proves no overread and no leak on every path. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "io/safetensors.h"

static void test_bad_corpus(void **state) {
    (void)state;
    const char *dir = tu_src("tests/data/bad/safetensors");
    char manifest[4200];
    snprintf(manifest, sizeof manifest, "%s/MANIFEST.tsv", dir);
    char *text = tu_read_file(manifest, NULL);
    assert_non_null(text);
    int cases = 0;
    vlm_mem_stats s0, s1;
    vlm_alloc_get_stats(&s0);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *name = line, *status = strchr(name, '\t');
        assert_non_null(status);
        *status++ = '\0';
        char *needle = strchr(status, '\t');
        assert_non_null(needle);
        *needle++ = '\0';
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, name);

        vlm_st_file *f = NULL;
        vlm_err err = {0};
        vlm_status st = vlm_st_open(path, &f, &err);
        if (strcmp(vlm_status_name(st), status) || !strstr(err.msg, path) ||
            !strstr(err.msg, needle))
            fail_msg("%s: got %s \"%s\", want %s with \"%s\"", name, vlm_status_name(st), err.msg,
                     status, needle);
        assert_null(f);

        /* The same bytes from memory: same verdict. */
        size_t len = 0;
        void *bytes = tu_read_file(path, &len);
        assert_non_null(bytes);
        st = vlm_st_open_memory(bytes, len, name, &f, &err);
        if (strcmp(vlm_status_name(st), status) || !strstr(err.msg, needle))
            fail_msg("%s (memory): got %s \"%s\"", name, vlm_status_name(st), err.msg);
        free(bytes);

        vlm_tensor_set *s = NULL;
        st = vlm_tensor_set_open(path, &s, &err);
        if (strcmp(vlm_status_name(st), status) || !strstr(err.msg, path))
            fail_msg("%s (set): got %s \"%s\"", name, vlm_status_name(st), err.msg);
        assert_null(s);
        cases++;
    }
    free(text);
    vlm_alloc_get_stats(&s1);
    assert_int_equal(s1.live_blocks, s0.live_blocks);
    assert_int_equal(s1.mapped_current, s0.mapped_current);
    assert_true(cases >= 50);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
