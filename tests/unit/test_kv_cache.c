/* runtime/kv_cache: sizes, the host part, the split between host and GPU
 * layers, out-of-memory at every allocation. The device half needs a GPU:
 * in a build without CUDA a cache with GPU layers is refused
 * (VLM_ERR_UNSUPPORTED); in a CUDA build it is allocated on the card, or
 * refused with VLM_ERR_NOMEM where there is none (tests/gpu/ checks it on
 * a real card). */
#include "testutil.h"

#include <string.h>

#include "base/alloc.h"
#include "runtime/kv_cache.h"

static uint64_t kv_bytes_now(void) {
    vlm_mem_stats st;
    vlm_alloc_get_stats(&st);
    return st.current[VLM_MEM_KV_CACHE];
}

static vlm_model_info info_of(int n_layers, int gpu_layers) {
    vlm_model_info i = {0};
    i.arch = "test";
    i.n_layers = n_layers;
    i.gpu_layers = gpu_layers;
    i.kv_dim = 96;
    return i;
}

static void test_sizes(void **state) {
    (void)state;
    vlm_model_info cpu = info_of(4, 0), half = info_of(4, 1), all = info_of(4, 4);
    /* 2 (K, V) x layers x 100 tokens x 96 x 2 bytes */
    assert_int_equal(kv_cache_bytes(&cpu, 100, VLM_DTYPE_BF16), 2 * 4 * 100 * 96 * 2);
    assert_int_equal(kv_cache_device_bytes(&cpu, 100, VLM_DTYPE_BF16), 0);
    assert_int_equal(kv_cache_bytes(&half, 100, VLM_DTYPE_F32), 2 * 3 * 100 * 96 * 4);
    assert_int_equal(kv_cache_device_bytes(&half, 100, VLM_DTYPE_F32), 2 * 1 * 100 * 96 * 4);
    assert_int_equal(kv_cache_bytes(&all, 100, VLM_DTYPE_F32), 0);
    assert_int_equal(kv_cache_device_bytes(&all, 100, VLM_DTYPE_F32), 2 * 4 * 100 * 96 * 4);
    assert_int_equal(kv_cache_bytes(&cpu, 0, VLM_DTYPE_F32), 0);
    assert_int_equal(kv_cache_bytes(&cpu, 100, VLM_DTYPE_Q8_0), 0);
}

static void test_host(void **state) {
    (void)state;
    vlm_model_info cpu = info_of(3, 0);
    uint64_t before = kv_bytes_now();
    kv_cache *c = NULL;
    vlm_err err;
    assert_int_equal(kv_cache_create(&cpu, 50, VLM_DTYPE_BF16, &c, &err), VLM_OK);
    assert_non_null(c->kv.k);
    assert_non_null(c->kv.v);
    assert_null(c->kv.dev_k);
    assert_int_equal(c->kv.gpu_layers, 0);
    assert_int_equal(c->bytes, 2 * 3 * 50 * 96 * 2);
    assert_int_equal(c->device_bytes, 0);
    assert_true(kv_bytes_now() >= before + (uint64_t)c->bytes);
    kv_cache_free(c);
    assert_int_equal(kv_bytes_now(), before);
    assert_int_equal(kv_cache_create(&cpu, -1, VLM_DTYPE_BF16, &c, &err), VLM_ERR_INVALID_ARG);
    assert_null(c);
}

static void test_gpu_layers(void **state) {
    (void)state;
    vlm_model_info half = info_of(4, 1);
    kv_cache *c = NULL;
    vlm_err err;
    uint64_t before = kv_bytes_now();
    vlm_status st = kv_cache_create(&half, 20, VLM_DTYPE_F32, &c, &err);
#ifdef VLM_HAVE_CUDA
    if (st == VLM_OK) { /* a card: the host holds 3 layers, the card 1 */
        assert_non_null(c->kv.dev_k);
        assert_non_null(c->kv.dev_v);
        assert_int_equal(c->bytes, 2 * 3 * 20 * 96 * 4);
        assert_int_equal(c->device_bytes, 2 * 1 * 20 * 96 * 4);
        kv_cache_free(c);
    } else {
        assert_int_equal(st, VLM_ERR_NOMEM);
        assert_non_null(strstr(err.msg, "GPU memory"));
    }
#else
    assert_int_equal(st, VLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "GPU"));
#endif
    if (st != VLM_OK) assert_null(c);
    assert_int_equal(kv_bytes_now(), before);
}

/* Every host allocation of a create fails once in turn: VLM_ERR_NOMEM,
 * nothing left behind. */
static void test_nomem_walk(void **state) {
    (void)state;
    vlm_model_info cpu = info_of(2, 0);
    uint64_t before = kv_bytes_now();
    for (uint64_t n = 1;; n++) {
        kv_cache *c = NULL;
        vlm_err err;
        vlm_alloc_fail_at(vlm_alloc_count() + n, false);
        vlm_status st = kv_cache_create(&cpu, 10, VLM_DTYPE_F32, &c, &err);
        vlm_alloc_fail_at(0, false);
        if (st == VLM_OK) {
            assert_true(n > 3); /* the struct, K and V all had to fail first */
            kv_cache_free(c);
            break;
        }
        assert_int_equal(st, VLM_ERR_NOMEM);
        assert_null(c);
        assert_int_equal(kv_bytes_now(), before);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_gpu_layers),
        cmocka_unit_test(test_nomem_walk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
