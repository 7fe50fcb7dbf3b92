/* rv_flat: the exact index checked against an independent brute force. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_flat.h"

/* A model of what the index should hold: item i lives while live[i]. */
typedef struct model {
  int dim;
  size_t n;
  char (*ids)[32];
  float *vecs;
  char (*meta)[48];
  int *has_meta;
  int *live;
} model_t;

static void model_init(model_t *m, int dim, size_t n) {
  m->dim = dim;
  m->n = n;
  m->ids = calloc(n, sizeof *m->ids);
  m->vecs = calloc(n * (size_t)dim, sizeof *m->vecs);
  m->meta = calloc(n, sizeof *m->meta);
  m->has_meta = calloc(n, sizeof *m->has_meta);
  m->live = calloc(n, sizeof *m->live);
  assert_true(m->ids && m->vecs && m->meta && m->has_meta && m->live);
}

static void model_close(model_t *m) {
  free(m->ids);
  free(m->vecs);
  free(m->meta);
  free(m->has_meta);
  free(m->live);
}

/* The live items, for tu_check_hits. */
static size_t model_items(const model_t *m, tu_item_t *out) {
  size_t k = 0;
  for (size_t i = 0; i < m->n; i++)
    if (m->live[i]) out[k++] = (tu_item_t){m->ids[i], m->vecs + i * m->dim, m->has_meta[i] ? m->meta[i] : NULL};
  return k;
}

static void check_search(rv_flat_t *f, const model_t *m, rv_metric_t metric, const float *q, int k) {
  tu_item_t *items = malloc((m->n ? m->n : 1) * sizeof *items);
  assert_non_null(items);
  size_t live = model_items(m, items);
  assert_int_equal(rv_flat_count(f), live);
  rv_hit_list_t got = {0};
  rv_err_t err = rv_flat_search(f, q, m->dim, k, &got);
  assert_int_equal(err, RV_OK);
  tu_check_hits(&got, items, live, metric, q, m->dim, k);
  rv_hit_list_close(&got);
  assert_null(got.hits);
  assert_int_equal(got.n, 0);
  free(items);
}

/* Every live item must be found as its own nearest neighbour under l2. */
static void check_each_finds_itself(rv_flat_t *f, const model_t *m) {
  for (size_t i = 0; i < m->n; i++) {
    if (!m->live[i]) continue;
    rv_hit_list_t got = {0};
    assert_int_equal(rv_flat_search(f, m->vecs + i * m->dim, m->dim, 1, &got), RV_OK);
    assert_int_equal(got.n, 1);
    assert_string_equal(got.hits[0].id, m->ids[i]);
    assert_near(got.hits[0].score, 0.0, 0.0);
    rv_hit_list_close(&got);
  }
}

static void test_random_matches_brute_force(void **state) {
  static const int dims[] = {1, 3, 17, 784};
  static const rv_metric_t metrics[] = {RV_METRIC_L2, RV_METRIC_COSINE, RV_METRIC_IP};
  for (size_t mi = 0; mi < 3; mi++) {
    for (size_t di = 0; di < 4; di++) {
      int dim = dims[di];
      size_t n = dim == 784 ? 300 : 600;
      uint64_t seed = 42 + mi * 10 + di;
      rv_flat_t *f = rv_flat_new(dim, metrics[mi]);
      assert_non_null(f);
      model_t m;
      model_init(&m, dim, n);
      for (size_t i = 0; i < n; i++) {
        snprintf(m.ids[i], sizeof m.ids[i], "v%zu", (i * 7919) % n); /* ids not in slot order */
        tu_fill(&seed, m.vecs + i * dim, dim);
        m.has_meta[i] = i % 3 != 0;
        snprintf(m.meta[i], sizeof m.meta[i], "{\"i\":%zu}", i);
        assert_int_equal(rv_flat_upsert(f, m.ids[i], m.vecs + i * dim, dim, m.has_meta[i] ? m.meta[i] : NULL),
                         RV_OK);
        m.live[i] = 1;
      }
      float *q = malloc((size_t)dim * sizeof *q);
      for (int t = 0; t < 8; t++) {
        tu_fill(&seed, q, dim);
        check_search(f, &m, metrics[mi], q, 1);
        check_search(f, &m, metrics[mi], q, 10);
        check_search(f, &m, metrics[mi], q, (int)n + 5); /* k > count: every vector, in order */
      }
      free(q);
      model_close(&m);
      rv_flat_destroy(f);
    }
  }
}

static void test_k_zero_and_empty_index(void **state) {
  rv_flat_t *f = rv_flat_new(3, RV_METRIC_L2);
  float v[3] = {1, 2, 3};
  rv_hit_list_t got = {0};
  assert_int_equal(rv_flat_search(f, v, 3, 5, &got), RV_OK); /* empty index */
  assert_int_equal(got.n, 0);
  assert_int_equal(rv_flat_upsert(f, "a", v, 3, NULL), RV_OK);
  assert_int_equal(rv_flat_search(f, v, 3, 0, &got), RV_OK);
  assert_int_equal(got.n, 0);
  assert_int_equal(rv_flat_search(f, v, 3, -1, &got), RV_ERR_INVALID);
  assert_int_equal(rv_flat_search(f, v, 3, 100, &got), RV_OK);
  assert_int_equal(got.n, 1);
  rv_hit_list_t again = got; /* out must be empty */
  assert_int_equal(rv_flat_search(f, v, 3, 1, &again), RV_ERR_INVALID);
  assert_ptr_equal(again.hits, got.hits);
  rv_hit_list_close(&got);
  rv_hit_list_close(NULL);
  rv_flat_destroy(f);
  rv_flat_destroy(NULL);
}

static void test_upsert_replaces_vector_and_metadata(void **state) {
  rv_flat_t *f = rv_flat_new(2, RV_METRIC_L2);
  float a0[2] = {0, 0}, a1[2] = {10, 10}, b[2] = {1, 1};
  assert_int_equal(rv_flat_upsert(f, "a", a0, 2, "{\"v\":0}"), RV_OK);
  assert_int_equal(rv_flat_upsert(f, "b", b, 2, NULL), RV_OK);
  assert_int_equal(rv_flat_upsert(f, "a", a1, 2, "{\"v\":1}"), RV_OK);
  assert_int_equal(rv_flat_count(f), 2);

  rv_hit_list_t got = {0};
  assert_int_equal(rv_flat_search(f, a0, 2, 2, &got), RV_OK);
  assert_int_equal(got.n, 2);
  assert_string_equal(got.hits[0].id, "b");
  assert_near(got.hits[0].score, 2.0, 0.0);
  assert_string_equal(got.hits[1].id, "a");
  assert_near(got.hits[1].score, 200.0, 0.0); /* the new vector, not the old one */
  assert_string_equal(got.hits[1].metadata, "{\"v\":1}");
  rv_hit_list_close(&got);

  assert_int_equal(rv_flat_upsert(f, "a", a1, 2, NULL), RV_OK); /* metadata can be removed */
  assert_int_equal(rv_flat_search(f, a1, 2, 1, &got), RV_OK);
  assert_string_equal(got.hits[0].id, "a");
  assert_null(got.hits[0].metadata);
  rv_hit_list_close(&got);
  rv_flat_destroy(f);
}

static void test_delete_keeps_the_rest_findable(void **state) {
  const int dim = 5;
  const size_t n = 40;
  uint64_t seed = 7;
  rv_flat_t *f = rv_flat_new(dim, RV_METRIC_L2);
  model_t m;
  model_init(&m, dim, n);
  for (size_t i = 0; i < n; i++) {
    snprintf(m.ids[i], sizeof m.ids[i], "id-%zu", i);
    snprintf(m.meta[i], sizeof m.meta[i], "{\"i\":%zu}", i);
    m.has_meta[i] = 1;
    tu_fill(&seed, m.vecs + i * dim, dim);
    assert_int_equal(rv_flat_upsert(f, m.ids[i], m.vecs + i * dim, dim, m.meta[i]), RV_OK);
    m.live[i] = 1;
  }
  /* Insertion order is slot order: delete the last slot, a middle slot (whose
   * hole the last row fills), the first slot, then a run of others. */
  size_t order[] = {39, 17, 0, 38, 1, 20, 21, 22, 5, 30};
  float q[5];
  for (size_t d = 0; d < sizeof order / sizeof *order; d++) {
    size_t i = order[d];
    assert_int_equal(rv_flat_delete(f, m.ids[i]), RV_OK);
    m.live[i] = 0;
    assert_int_equal(rv_flat_delete(f, m.ids[i]), RV_ERR_NOT_FOUND);
    check_each_finds_itself(f, &m);
    tu_fill(&seed, q, dim);
    check_search(f, &m, RV_METRIC_L2, q, (int)n);
  }
  assert_int_equal(rv_flat_delete(f, "never-there"), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_flat_count(f), n - 10);

  /* Upserting the survivors must replace in place: the table entries of the
   * rows that moved point at their new slots. */
  for (size_t i = 0; i < n; i++) {
    if (!m.live[i]) continue;
    tu_fill(&seed, m.vecs + i * dim, dim);
    assert_int_equal(rv_flat_upsert(f, m.ids[i], m.vecs + i * dim, dim, m.meta[i]), RV_OK);
  }
  assert_int_equal(rv_flat_count(f), n - 10);
  check_each_finds_itself(f, &m);

  /* Deleted ids can come back; deleting everything leaves an empty index. */
  assert_int_equal(rv_flat_upsert(f, m.ids[17], m.vecs + 17 * dim, dim, m.meta[17]), RV_OK);
  m.live[17] = 1;
  check_each_finds_itself(f, &m);
  for (size_t i = 0; i < n; i++) {
    if (!m.live[i]) continue;
    assert_int_equal(rv_flat_delete(f, m.ids[i]), RV_OK);
    m.live[i] = 0;
  }
  assert_int_equal(rv_flat_count(f), 0);
  check_search(f, &m, RV_METRIC_L2, q, 3);
  model_close(&m);
  rv_flat_destroy(f);
}

static void test_growth_keeps_data(void **state) {
  const int dim = 8;
  const size_t n = 5000; /* many doublings past the initial capacity */
  uint64_t seed = 99;
  rv_flat_t *f = rv_flat_new(dim, RV_METRIC_L2);
  model_t m;
  model_init(&m, dim, n);
  for (size_t i = 0; i < n; i++) {
    snprintf(m.ids[i], sizeof m.ids[i], "g%zu", i);
    snprintf(m.meta[i], sizeof m.meta[i], "{\"g\":%zu}", i);
    m.has_meta[i] = 1;
    tu_fill(&seed, m.vecs + i * dim, dim);
    assert_int_equal(rv_flat_upsert(f, m.ids[i], m.vecs + i * dim, dim, m.meta[i]), RV_OK);
    m.live[i] = 1;
    assert_int_equal(rv_flat_count(f), i + 1);
  }
  check_each_finds_itself(f, &m);
  float q[8];
  tu_fill(&seed, q, dim);
  check_search(f, &m, RV_METRIC_L2, q, 50);
  model_close(&m);
  rv_flat_destroy(f);
}

static void test_ties_ordered_by_id_bytes(void **state) {
  /* Byte order, not locale or signed-char order: 0xC3 sorts after 'z'. */
  static const char *ids[] = {"z", "\xc3\xa9", "ab", "B", "b", "a", "Z", "a\x01", "aa"};
  static const char *sorted[] = {"B", "Z", "a", "a\x01", "aa", "ab", "b", "z", "\xc3\xa9"};
  const size_t n = sizeof ids / sizeof *ids;
  for (int metric = 0; metric < 3; metric++) {
    rv_flat_t *f = rv_flat_new(3, (rv_metric_t)metric);
    float v[3] = {0.5f, -1, 2}, far[3] = {-3, 3, -1};
    assert_int_equal(rv_flat_upsert(f, "far", far, 3, NULL), RV_OK);
    for (size_t i = 0; i < n; i++) assert_int_equal(rv_flat_upsert(f, ids[i], v, 3, NULL), RV_OK);
    for (int k = 1; k <= (int)n; k += 4) {
      rv_hit_list_t got = {0};
      assert_int_equal(rv_flat_search(f, v, 3, k, &got), RV_OK);
      assert_int_equal(got.n, k);
      for (int i = 0; i < k; i++) assert_string_equal(got.hits[i].id, sorted[i]);
      rv_hit_list_close(&got);
    }
    rv_flat_destroy(f);
  }
}

static void test_rejects_bad_input_unchanged(void **state) {
  rv_flat_t *f = rv_flat_new(3, RV_METRIC_L2);
  float good[3] = {1, 2, 3}, other[3] = {4, 5, 6};
  assert_int_equal(rv_flat_upsert(f, "a", good, 3, "{\"x\":1}"), RV_OK);
  float bad[3][3] = {{NAN, 0, 0}, {0, INFINITY, 0}, {0, 0, -INFINITY}};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(rv_flat_upsert(f, "a", bad[i], 3, "{\"x\":2}"), RV_ERR_INVALID); /* existing id */
    assert_int_equal(rv_flat_upsert(f, "new", bad[i], 3, NULL), RV_ERR_INVALID);
    rv_hit_list_t got = {0};
    assert_int_equal(rv_flat_search(f, bad[i], 3, 1, &got), RV_ERR_INVALID);
    assert_null(got.hits);
    assert_int_equal(got.n, 0);
  }
  assert_int_equal(rv_flat_upsert(f, "a", other, 2, NULL), RV_ERR_DIM);
  assert_int_equal(rv_flat_upsert(f, "a", other, 4, NULL), RV_ERR_DIM);
  assert_int_equal(rv_flat_upsert(f, "", other, 3, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_flat_upsert(f, NULL, other, 3, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_flat_upsert(f, "b", NULL, 3, NULL), RV_ERR_INVALID);
  rv_hit_list_t got = {0};
  assert_int_equal(rv_flat_search(f, good, 2, 1, &got), RV_ERR_DIM);
  assert_null(got.hits);

  /* Still exactly the one vector, unchanged, with its metadata. */
  assert_int_equal(rv_flat_count(f), 1);
  assert_int_equal(rv_flat_search(f, good, 3, 5, &got), RV_OK);
  assert_int_equal(got.n, 1);
  assert_string_equal(got.hits[0].id, "a");
  assert_near(got.hits[0].score, 0.0, 0.0);
  assert_string_equal(got.hits[0].metadata, "{\"x\":1}");
  rv_hit_list_close(&got);
  rv_flat_destroy(f);

  errno = 0;
  assert_null(rv_flat_new(0, RV_METRIC_L2));
  assert_int_equal(errno, EINVAL);
  assert_null(rv_flat_new(4, (rv_metric_t)7));
}

static void test_cosine_zero_vector_rejected(void **state) {
  rv_flat_t *f = rv_flat_new(4, RV_METRIC_COSINE);
  float zero[4] = {0, 0, 0, 0}, v[4] = {1, 0, 0, 0}, w[4] = {0, 3, 0, 0};
  assert_int_equal(rv_flat_upsert(f, "z", zero, 4, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_flat_upsert(f, "v", v, 4, NULL), RV_OK);
  assert_int_equal(rv_flat_upsert(f, "v", zero, 4, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_flat_upsert(f, "w", w, 4, NULL), RV_OK);
  assert_int_equal(rv_flat_count(f), 2);
  rv_hit_list_t got = {0};
  assert_int_equal(rv_flat_search(f, zero, 4, 1, &got), RV_ERR_INVALID);
  float q[4] = {2, 0, 0, 0}; /* scale does not matter for cosine */
  assert_int_equal(rv_flat_search(f, q, 4, 2, &got), RV_OK);
  assert_int_equal(got.n, 2);
  assert_string_equal(got.hits[0].id, "v");
  assert_near(got.hits[0].score, 0.0, 1e-7);
  assert_string_equal(got.hits[1].id, "w");
  assert_near(got.hits[1].score, 1.0, 1e-7);
  rv_hit_list_close(&got);
  rv_flat_destroy(f);
}

static void test_ip_score_is_negative_dot(void **state) {
  rv_flat_t *f = rv_flat_new(2, RV_METRIC_IP);
  float a[2] = {1, 2}, b[2] = {3, 4}, q[2] = {1, 1};
  assert_int_equal(rv_flat_upsert(f, "a", a, 2, NULL), RV_OK);
  assert_int_equal(rv_flat_upsert(f, "b", b, 2, NULL), RV_OK);
  rv_hit_list_t got = {0};
  assert_int_equal(rv_flat_search(f, q, 2, 2, &got), RV_OK);
  assert_string_equal(got.hits[0].id, "b");
  assert_near(got.hits[0].score, -7.0, 0.0);
  assert_string_equal(got.hits[1].id, "a");
  assert_near(got.hits[1].score, -3.0, 0.0);
  rv_hit_list_close(&got);
  rv_flat_destroy(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_matches_brute_force),
      cmocka_unit_test(test_k_zero_and_empty_index),
      cmocka_unit_test(test_upsert_replaces_vector_and_metadata),
      cmocka_unit_test(test_delete_keeps_the_rest_findable),
      cmocka_unit_test(test_growth_keeps_data),
      cmocka_unit_test(test_ties_ordered_by_id_bytes),
      cmocka_unit_test(test_rejects_bad_input_unchanged),
      cmocka_unit_test(test_cosine_zero_vector_rejected),
      cmocka_unit_test(test_ip_score_is_negative_dot),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
