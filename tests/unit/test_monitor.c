/* mem/monitor: the parsers on fixture copies of /proc and cgroup files
 * (tests/data/proc/: v2, v1, v1 without limits or mountinfo, a v2 container,
 * missing files, garbage), pressure levels, the snapshot and its JSON, the
 * cleanup registry. Expected numbers are the fixture files' own contents. */
#include "testutil.h"

#include "base/alloc.h"
#include "base/arena.h"
#include "base/json.h"
#include "mem/monitor.h"

#include <stdlib.h>
#include <string.h>

#define KB 1024ULL

static const char *fx(const char *name) {
    static char buf[4][1024];
    static int next;
    char *b = buf[next++ & 3];
    snprintf(b, sizeof buf[0], "%s", tu_src(name));
    return b;
}

static void test_v2(void **state) {
    (void)state;
    const char *root = fx("tests/data/proc/v2");
    vlm_proc_mem p;
    assert_true(vlm_mem_read_proc(root, &p));
    assert_int_equal(p.rss_bytes, 524288 * KB);
    assert_int_equal(p.hwm_bytes, 1048576 * KB);
    vlm_sys_mem m;
    assert_true(vlm_mem_read_sys(root, &m));
    assert_int_equal(m.total_bytes, 16384000 * KB);
    assert_int_equal(m.available_bytes, 8192000 * KB);
    assert_int_equal(m.swap_total_bytes, 2097152 * KB);
    assert_int_equal(m.swap_used_bytes, (2097152 - 1048576) * KB);
    vlm_cgroup_mem c;
    assert_true(vlm_mem_read_cgroup(root, &c));
    assert_int_equal(c.version, 2);
    /* the group says 16 GiB, its parent user.slice 8 GiB: the parent binds */
    assert_int_equal(c.limit_bytes, 8589934592ULL);
    assert_true(c.have_current);
    assert_int_equal(c.current_bytes, 1073741824ULL);
    assert_int_equal(c.oom_kills, 3);
    const char *tail = "/sys/fs/cgroup/user.slice/app.scope";
    assert_string_equal(c.dir + strlen(c.dir) - strlen(tail), tail);
    vlm_psi psi;
    assert_true(vlm_mem_read_psi(root, &psi));
    assert_float_equal(psi.some_avg10, 12.5, 1e-9);
    assert_float_equal(psi.full_avg10, 0.5, 1e-9);
    assert_int_equal(vlm_mem_pressure_level(&psi), VLM_PRESSURE_ELEVATED);
}

static void test_v1(void **state) {
    (void)state;
    const char *root = fx("tests/data/proc/v1");
    vlm_cgroup_mem c;
    assert_true(vlm_mem_read_cgroup(root, &c));
    assert_int_equal(c.version, 1);
    assert_int_equal(c.limit_bytes, 2147483648ULL);
    assert_int_equal(c.current_bytes, 1500000000ULL);
    assert_int_equal(c.oom_kills, 1);
    const char *tail = "/sys/fs/cgroup/memory/docker/abc";
    assert_string_equal(c.dir + strlen(c.dir) - strlen(tail), tail);
    vlm_sys_mem m;
    assert_true(vlm_mem_read_sys(root, &m));
    assert_int_equal(m.available_bytes, 2000000 * KB);
    assert_int_equal(m.swap_used_bytes, 0);
    vlm_psi psi;
    assert_true(vlm_mem_read_psi(root, &psi));
    assert_int_equal(vlm_mem_pressure_level(&psi), VLM_PRESSURE_CRITICAL);
    vlm_mem_snapshot s;
    vlm_mem_snapshot_take(root, &s);
    /* headroom: the cgroup's 2147483648 - 1500000000 is tighter than
     * MemAvailable's 2048000000 */
    assert_int_equal(s.headroom_bytes, 2147483648ULL - 1500000000ULL);
}

static void test_v1_nolimit(void **state) {
    (void)state;
    const char *root = fx("tests/data/proc/v1_nolimit");
    vlm_cgroup_mem c;
    assert_true(vlm_mem_read_cgroup(root, &c));
    assert_int_equal(c.version, 1);
    assert_int_equal(c.limit_bytes, VLM_MEM_NO_LIMIT);
    assert_int_equal(c.current_bytes, 300000000ULL);
    assert_int_equal(c.oom_kills, 0);
    /* no MemAvailable: MemFree stands in */
    vlm_sys_mem m;
    assert_true(vlm_mem_read_sys(root, &m));
    assert_int_equal(m.available_bytes, 3000000 * KB);
    /* PSI with only a "some" line */
    vlm_psi psi;
    assert_true(vlm_mem_read_psi(root, &psi));
    assert_float_equal(psi.full_avg10, 0, 0);
    assert_int_equal(vlm_mem_pressure_level(&psi), VLM_PRESSURE_NORMAL);
    vlm_mem_snapshot s;
    vlm_mem_snapshot_take(root, &s);
    assert_int_equal(s.headroom_bytes, 3000000 * KB);
}

static void test_v2_container(void **state) {
    (void)state;
    const char *root = fx("tests/data/proc/v2_container");
    vlm_cgroup_mem c;
    assert_true(vlm_mem_read_cgroup(root, &c));
    assert_int_equal(c.version, 2);
    assert_int_equal(c.limit_bytes, 4294967296ULL);
    assert_int_equal(c.current_bytes, 4300000000ULL);
    vlm_mem_snapshot s;
    vlm_mem_snapshot_take(root, &s);
    /* over its limit (page cache counts): no headroom, and no meminfo */
    assert_false(s.sys.have);
    assert_int_equal(s.headroom_bytes, 0);
}

static void test_missing(void **state) {
    (void)state;
    const char *root = fx("tests/data/proc/missing");
    vlm_proc_mem p;
    vlm_sys_mem m;
    vlm_cgroup_mem c;
    vlm_psi psi;
    assert_false(vlm_mem_read_proc(root, &p));
    assert_false(p.have);
    assert_false(vlm_mem_read_sys(root, &m));
    assert_false(m.have);
    assert_false(vlm_mem_read_cgroup(root, &c));
    assert_int_equal(c.version, 0);
    assert_int_equal(c.limit_bytes, VLM_MEM_NO_LIMIT);
    assert_false(vlm_mem_read_psi(root, &psi));
    assert_int_equal(vlm_mem_pressure_level(&psi), VLM_PRESSURE_UNKNOWN);
    /* a root that does not exist at all reads the same */
    assert_false(vlm_mem_read_cgroup("/nonexistent/vlmtest", &c));
}

static void test_garbage(void **state) {
    (void)state;
    const char *root = fx("tests/data/proc/garbage");
    vlm_proc_mem p;
    vlm_sys_mem m;
    vlm_cgroup_mem c;
    vlm_psi psi;
    assert_false(vlm_mem_read_proc(root, &p));
    assert_false(vlm_mem_read_sys(root, &m));
    assert_false(vlm_mem_read_psi(root, &psi));
    /* the group is found; every value in it is garbage */
    assert_true(vlm_mem_read_cgroup(root, &c));
    assert_int_equal(c.version, 2);
    assert_int_equal(c.limit_bytes, VLM_MEM_NO_LIMIT);
    assert_false(c.have_current);
    assert_int_equal(c.oom_kills, 0);
    vlm_mem_snapshot s;
    vlm_mem_snapshot_take(root, &s);
    assert_int_equal(s.level, VLM_PRESSURE_UNKNOWN);
    cJSON *j = vlm_mem_snapshot_to_json(&s);
    assert_non_null(j);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "cgroup_current_bytes")));
    assert_int_equal(cJSON_GetObjectItem(j, "cgroup_version")->valuedouble, 2);
    cJSON_Delete(j);
    assert_int_equal(s.headroom_bytes, 0);
}

static void test_parsers_direct(void **state) {
    (void)state;
    uint64_t v;
    assert_true(vlm_mem_parse_cgroup_value("max\n", &v));
    assert_int_equal(v, VLM_MEM_NO_LIMIT);
    assert_true(vlm_mem_parse_cgroup_value("  123\n", &v));
    assert_int_equal(v, 123);
    assert_true(vlm_mem_parse_cgroup_value("9223372036854771712\n", &v));
    assert_int_equal(v, VLM_MEM_NO_LIMIT);
    assert_true(vlm_mem_parse_cgroup_value("4611686018427387903", &v)); /* 2^62 - 1 */
    assert_int_equal(v, 4611686018427387903ULL);
    assert_false(vlm_mem_parse_cgroup_value("", &v));
    assert_false(vlm_mem_parse_cgroup_value("12 34", &v));
    assert_false(vlm_mem_parse_cgroup_value("-1", &v));
    assert_false(vlm_mem_parse_cgroup_value("99999999999999999999999", &v));

    vlm_proc_mem p;
    assert_true(vlm_mem_parse_proc_status("VmHWM:\t 10 kB\nVmRSS:\t 5 kB\n", &p));
    assert_int_equal(p.rss_bytes, 5 * KB);
    assert_int_equal(p.hwm_bytes, 10 * KB);
    assert_false(vlm_mem_parse_proc_status("VmHWM: 10 kB\nVmRSS: 5 MB\n", &p));
    assert_false(vlm_mem_parse_proc_status("VmRSS: 5 kB\n", &p));
    assert_false(vlm_mem_parse_proc_status("", &p));
    /* a key must start its line */
    assert_false(vlm_mem_parse_proc_status("xVmHWM: 1 kB\nxVmRSS: 1 kB\n", &p));
    assert_false(vlm_mem_parse_proc_status("VmHWM: 99999999999999999999 kB\nVmRSS: 1 kB\n", &p));

    vlm_sys_mem m;
    assert_false(vlm_mem_parse_meminfo("MemTotal: 10 kB\nMemAvailable: 20 kB\n", &m));
    assert_true(vlm_mem_parse_meminfo("MemTotal: 20 kB\nMemAvailable: 10 kB\n", &m));
    assert_int_equal(m.swap_used_bytes, 0);

    vlm_psi psi;
    assert_true(vlm_mem_parse_psi("some avg10=1.5 avg60=0 avg300=0 total=1\n"
                                  "full avg10=0.25 avg60=0 avg300=0 total=1\n",
                                  &psi));
    assert_float_equal(psi.some_avg10, 1.5, 1e-9);
    assert_float_equal(psi.full_avg10, 0.25, 1e-9);
    assert_false(vlm_mem_parse_psi("some avg10=101 avg60=0\n", &psi));
    assert_false(vlm_mem_parse_psi("some avg60=1\n", &psi));
    assert_false(vlm_mem_parse_psi("some avg10=1\nfull avg10=x\n", &psi));

    assert_true(vlm_mem_parse_size("12G", &v));
    assert_int_equal(v, 12ULL << 30);
    assert_true(vlm_mem_parse_size("512MiB", &v));
    assert_int_equal(v, 512ULL << 20);
    assert_true(vlm_mem_parse_size("4096", &v));
    assert_int_equal(v, 4096);
    assert_false(vlm_mem_parse_size("12Q", &v));
    assert_false(vlm_mem_parse_size("99999999999T", &v));
}

static void test_levels(void **state) {
    (void)state;
    struct {
        double some, full;
        vlm_pressure_level want;
    } cases[] = {
        {0, 0, VLM_PRESSURE_NORMAL},          {9.99, 0.99, VLM_PRESSURE_NORMAL},
        {10, 0, VLM_PRESSURE_ELEVATED},       {0, 1, VLM_PRESSURE_ELEVATED},
        {39.99, 9.99, VLM_PRESSURE_ELEVATED}, {40, 0, VLM_PRESSURE_CRITICAL},
        {5, 10, VLM_PRESSURE_CRITICAL},       {100, 100, VLM_PRESSURE_CRITICAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        vlm_psi psi = {true, cases[i].some, cases[i].full};
        assert_int_equal(vlm_mem_pressure_level(&psi), cases[i].want);
    }
    assert_string_equal(vlm_pressure_level_name(VLM_PRESSURE_CRITICAL), "critical");
    assert_string_equal(vlm_pressure_level_name(VLM_PRESSURE_UNKNOWN), "unknown");
}

static void test_snapshot_json(void **state) {
    (void)state;
    vlm_mem_set_threshold(256ULL << 20); /* the v2 fixture's RSS is 512 MiB */
    vlm_mem_snapshot s;
    vlm_mem_snapshot_take(fx("tests/data/proc/v2"), &s);
    assert_true(s.over_threshold);
    cJSON *j = vlm_mem_snapshot_to_json(&s);
    assert_non_null(j);
    assert_int_equal(cJSON_GetObjectItem(j, "rss_bytes")->valuedouble, 524288.0 * 1024);
    assert_int_equal(cJSON_GetObjectItem(j, "cgroup_limit_bytes")->valuedouble, 8589934592.0);
    assert_int_equal(cJSON_GetObjectItem(j, "oom_kills")->valuedouble, 3);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "over_threshold")));
    cJSON *pr = cJSON_GetObjectItem(j, "pressure");
    assert_string_equal(cJSON_GetObjectItem(pr, "level")->valuestring, "elevated");
    cJSON *acc = cJSON_GetObjectItem(j, "accounted");
    for (int c = 0; c < VLM_MEM_CAT_COUNT; c++)
        assert_non_null(cJSON_GetObjectItem(acc, vlm_mem_cat_name((vlm_mem_cat)c)));
    assert_non_null(cJSON_GetObjectItem(acc, "total"));
    cJSON_Delete(j);

    /* missing sources are nulls, not zeros */
    vlm_mem_set_threshold(VLM_MEM_DEFAULT_THRESHOLD);
    vlm_mem_snapshot_take(fx("tests/data/proc/missing"), &s);
    j = vlm_mem_snapshot_to_json(&s);
    assert_non_null(j);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "rss_bytes")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "mem_available_bytes")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "cgroup_limit_bytes")));
    pr = cJSON_GetObjectItem(j, "pressure");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(pr, "some_avg10")));
    assert_string_equal(cJSON_GetObjectItem(pr, "level")->valuestring, "unknown");
    cJSON_Delete(j);

    /* allocation failure anywhere in building the JSON: NULL, no leak */
    vlm_mem_stats a, b;
    vlm_alloc_get_stats(&a);
    int failures = 0;
    for (uint64_t n = 1; n < 200; n++) {
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        j = vlm_mem_snapshot_to_json(&s);
        vlm_alloc_fail_at(0, false);
        if (!j) failures++;
        cJSON_Delete(j);
        if (j) break;
    }
    vlm_alloc_get_stats(&b);
    assert_true(failures > 10);
    assert_int_equal(b.total_current, a.total_current);
}

static void test_real_machine(void **state) {
    (void)state;
    vlm_mem_snapshot s;
    vlm_mem_snapshot_take(NULL, &s);
    assert_true(s.proc.have);
    assert_true(s.proc.rss_bytes > 0);
    assert_true(s.proc.hwm_bytes >= s.proc.rss_bytes);
    assert_true(s.sys.have);
    assert_true(s.sys.total_bytes >= s.sys.available_bytes);
    assert_true(s.sys.available_bytes > 0);
    assert_true(s.threads >= 1);
    uint64_t rss = vlm_mem_rss_now();
    /* statm and status agree to within a few pages moved meanwhile */
    assert_true(rss > 0);
    assert_true(rss < s.proc.rss_bytes + (4 << 20) && rss + (4 << 20) > s.proc.rss_bytes);
}

static size_t count_cb(void *ctx) {
    (*(int *)ctx)++;
    return 100;
}

static void test_cleanup_registry(void **state) {
    (void)state;
    vlm_arena *a;
    assert_int_equal(vlm_arena_create(&a, "cleanup", VLM_MEM_SCRATCH, 4096, NULL), VLM_OK);
    for (int i = 0; i < 8; i++) assert_non_null(vlm_arena_push(a, 4000));
    vlm_arena_reset(a);
    assert_int_equal(vlm_mem_register_arena(a, NULL), VLM_OK);
    int calls = 0;
    assert_int_equal(vlm_mem_register_cleanup(count_cb, &calls, NULL), VLM_OK);
    vlm_mem_cleanup_result r;
    vlm_mem_cleanup(true, &r);
    assert_int_equal(calls, 1);
    assert_int_equal(r.callbacks_run, 2);
    assert_int_equal(r.callback_bytes, 7 * (4096 + 64) + 100);
    assert_int_equal(vlm_arena_chunk_count(a), 1);
    assert_true(r.rss_before > 0 && r.rss_after > 0);
    assert_int_equal(r.released_bytes, (int64_t)r.rss_before - (int64_t)r.rss_after);
#ifdef __GLIBC__
    assert_true(r.malloc_trimmed);
#endif
    /* without the registered callbacks */
    vlm_mem_cleanup(false, &r);
    assert_int_equal(calls, 1);
    assert_int_equal(r.callbacks_run, 0);
    vlm_mem_unregister_arena(a);
    vlm_mem_unregister_cleanup(count_cb, &calls);
    vlm_mem_cleanup(true, &r);
    assert_int_equal(calls, 1);
    vlm_arena_destroy(a);
    /* the registry is bounded */
    int dummy[VLM_MEM_CLEANUP_SLOTS + 1];
    for (int i = 0; i < VLM_MEM_CLEANUP_SLOTS; i++)
        assert_int_equal(vlm_mem_register_cleanup(count_cb, &dummy[i], NULL), VLM_OK);
    vlm_err err;
    assert_int_equal(vlm_mem_register_cleanup(count_cb, &dummy[VLM_MEM_CLEANUP_SLOTS], &err),
                     VLM_ERR_LIMIT);
    for (int i = 0; i < VLM_MEM_CLEANUP_SLOTS; i++) vlm_mem_unregister_cleanup(count_cb, &dummy[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v2),
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v1_nolimit),
        cmocka_unit_test(test_v2_container),
        cmocka_unit_test(test_missing),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_parsers_direct),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_snapshot_json),
        cmocka_unit_test(test_real_machine),
        cmocka_unit_test(test_cleanup_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
