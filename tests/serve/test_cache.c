/* rv_cache: cache keys and the L1 LRU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_cache.h"

static void put(rv_lru_t *c, uint64_t key, const char *v) {
  assert_int_equal(rv_lru_put(c, key, v, strlen(v)), RV_OK);
}

/* Asserts key is present with value want (NULL: absent). Counts as a use. */
static void expect(rv_lru_t *c, uint64_t key, const char *want) {
  char *v = NULL;
  size_t len = 0;
  int hit = rv_lru_get(c, key, &v, &len);
  if (!want) {
    if (hit) print_error("key %llu: want a miss, got \"%s\"\n", (unsigned long long)key, v);
    assert_false(hit);
    return;
  }
  if (!hit) print_error("key %llu: want \"%s\", got a miss\n", (unsigned long long)key, want);
  assert_true(hit);
  assert_int_equal(len, strlen(want));
  assert_string_equal(v, want);
  free(v);
}

static void test_lru_eviction_order(void **state) {
  (void)state;
  rv_lru_t *c = rv_lru_new(3, 1 << 20);
  assert_non_null(c);
  put(c, 1, "one");
  put(c, 2, "two");
  put(c, 3, "three");
  expect(c, 1, "one"); /* 1 becomes the most recent; 2 is now the oldest */
  put(c, 4, "four");
  expect(c, 2, NULL);
  expect(c, 1, "one");
  expect(c, 3, "three");
  expect(c, 4, "four");
  /* recency now (old -> new): 1, 3, 4; two more puts evict 1 then 3 */
  put(c, 5, "five");
  expect(c, 1, NULL);
  put(c, 6, "six");
  expect(c, 3, NULL);
  expect(c, 4, "four");
  expect(c, 5, "five");
  expect(c, 6, "six");
  assert_int_equal(rv_lru_count(c), 3);
  rv_lru_destroy(c);
}

static void test_lru_capacity_and_replace(void **state) {
  (void)state;
  rv_lru_t *c = rv_lru_new(10, 1 << 20);
  char v[32];
  for (uint64_t k = 0; k < 100; k++) {
    snprintf(v, sizeof v, "v%llu", (unsigned long long)k);
    put(c, k * 0x10000, v); /* keys that share hash buckets */
    assert_true(rv_lru_count(c) <= 10);
  }
  assert_int_equal(rv_lru_count(c), 10);
  for (uint64_t k = 0; k < 100; k++) {
    snprintf(v, sizeof v, "v%llu", (unsigned long long)k);
    expect(c, k * 0x10000, k >= 90 ? v : NULL);
  }
  /* replacing keeps one entry per key and returns the new value */
  put(c, 95 * 0x10000, "replaced");
  assert_int_equal(rv_lru_count(c), 10);
  expect(c, 95 * 0x10000, "replaced");
  rv_lru_destroy(c);

  /* a capacity-1 cache holds only the latest */
  c = rv_lru_new(1, 100);
  put(c, 7, "a");
  put(c, 8, "b");
  expect(c, 7, NULL);
  expect(c, 8, "b");
  rv_lru_destroy(c);
  assert_null(rv_lru_new(0, 100));
  assert_null(rv_lru_new(1, 0));
  rv_lru_destroy(NULL);
}

static void test_lru_byte_bound(void **state) {
  (void)state;
  rv_lru_t *c = rv_lru_new(100, 10);
  put(c, 1, "123456");
  put(c, 2, "abcdef"); /* 12 bytes > 10: the oldest goes */
  expect(c, 1, NULL);
  expect(c, 2, "abcdef");
  assert_int_equal(rv_lru_put(c, 3, "0123456789A", 11), RV_ERR_FULL); /* larger than the cache */
  expect(c, 3, NULL);
  expect(c, 2, "abcdef"); /* and nothing was evicted for it */
  put(c, 4, "1234");      /* 6 + 4 fits exactly */
  expect(c, 2, "abcdef");
  expect(c, 4, "1234");
  rv_lru_destroy(c);
}

static void test_get_returns_a_copy(void **state) {
  (void)state;
  rv_lru_t *c = rv_lru_new(4, 1024);
  put(c, 9, "hits");
  char *v;
  size_t len;
  assert_true(rv_lru_get(c, 9, &v, &len));
  v[0] = 'X';
  free(v);
  expect(c, 9, "hits");
  rv_lru_destroy(c);
}

typedef struct stress_arg {
  rv_lru_t *c;
  int seed;
} stress_arg_t;

static void *stress(void *p) {
  stress_arg_t *a = p;
  unsigned s = (unsigned)a->seed;
  char v[32];
  for (int i = 0; i < 20000; i++) {
    uint64_t k = rand_r(&s) % 64;
    if (rand_r(&s) & 1) {
      snprintf(v, sizeof v, "%llu", (unsigned long long)k);
      rv_lru_put(a->c, k, v, strlen(v));
    } else {
      char *got;
      size_t len;
      if (rv_lru_get(a->c, k, &got, &len)) {
        /* every value stored under k is k's decimal text */
        if ((uint64_t)strtoull(got, NULL, 10) != k) abort();
        free(got);
      }
    }
  }
  return NULL;
}

static void test_lru_threads(void **state) {
  (void)state;
  rv_lru_t *c = rv_lru_new(16, 1 << 20);
  pthread_t t[4];
  stress_arg_t a[4];
  for (int i = 0; i < 4; i++) {
    a[i] = (stress_arg_t){c, i + 1};
    assert_int_equal(pthread_create(&t[i], NULL, stress, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  assert_true(rv_lru_count(c) <= 16);
  rv_lru_destroy(c);
}

static void test_key_sensitivity(void **state) {
  (void)state;
  float v[8] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
  float w[8];
  memcpy(w, v, sizeof v);
  uint64_t base = rv_cache_key("fashion", "local", 10, 0, v, 8, NULL, 5);
  assert_true(rv_cache_key("fashion", "local", 10, 0, w, 8, NULL, 5) == base); /* deterministic */

  uint64_t other[12];
  int n = 0;
  other[n++] = rv_cache_key("fashion", "local", 10, 0, v, 8, NULL, 6);  /* generation */
  other[n++] = rv_cache_key("fashion", "local", 11, 0, v, 8, NULL, 5);  /* k */
  other[n++] = rv_cache_key("fashion", "local", 10, 64, v, 8, NULL, 5); /* ef */
  other[n++] = rv_cache_key("fashion", "eu", 10, 0, v, 8, NULL, 5);     /* region */
  other[n++] = rv_cache_key("books", "local", 10, 0, v, 8, NULL, 5);    /* collection */
  other[n++] = rv_cache_key("fashion", "local", 10, 0, v, 7, NULL, 5);  /* dim (a prefix of the vector) */
  w[7] = nextafterf(w[7], 1.0f);                                  /* one ulp in one element */
  other[n++] = rv_cache_key("fashion", "local", 10, 0, w, 8, NULL, 5);
  /* name boundaries are part of the key: ("fashio","nlocal") != ("fashion","local") */
  other[n++] = rv_cache_key("fashio", "nlocal", 10, 0, v, 8, NULL, 5);
  other[n++] = rv_cache_key("fashion", "local", 10, 0, v, 8, NULL, 0);
  /* the filter: present or not, and its text */
  other[n++] = rv_cache_key("fashion", "local", 10, 0, v, 8, "{\"label\":3}", 5);
  other[n++] = rv_cache_key("fashion", "local", 10, 0, v, 8, "{\"label\":4}", 5);
  other[n++] = rv_cache_key("fashion", "local", 10, 0, v, 8, "", 5);
  for (int i = 0; i < n; i++) {
    if (other[i] == base) print_error("variant %d collides with the base key\n", i);
    assert_true(other[i] != base);
    for (int j = 0; j < i; j++) assert_true(other[i] != other[j]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lru_eviction_order), cmocka_unit_test(test_lru_capacity_and_replace),
      cmocka_unit_test(test_lru_byte_bound),     cmocka_unit_test(test_get_returns_a_copy),
      cmocka_unit_test(test_lru_threads),        cmocka_unit_test(test_key_sensitivity),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
