/* rv_replica without Kafka: versioned apply, stats, configuration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_replica.h"

#define DIM 4

static rv_replica_t *new_replica(void) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.region, sizeof conf.region, "test-region");
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  char errstr[256] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  return r;
}

/* A change borrowing id, vec and attributes (do not rv_change_close it). */
static rv_change_t change(const char *id, rv_op_t op, int32_t partition, int64_t offset, float *vec,
                          const char *attributes) {
  rv_change_t c;
  rv_change_init(&c);
  c.id = (char *)id;
  c.op = op;
  c.src_partition = partition;
  c.src_offset = offset;
  c.vector = op == RV_OP_UPSERT ? vec : NULL;
  c.dim = op == RV_OP_UPSERT ? DIM : 0;
  c.attributes = (char *)attributes;
  return c;
}

static rv_err_t apply(rv_replica_t *r, const char *id, rv_op_t op, int32_t partition, int64_t offset, float *vec,
                      const char *attributes) {
  rv_change_t c = change(id, op, partition, offset, vec, attributes);
  return rv_replica_apply(r, &c);
}

static void expect_stats(rv_replica_t *r, uint64_t count, uint64_t applied, uint64_t generation) {
  rv_replica_stats_t s;
  rv_replica_stats(r, &s);
  assert_int_equal(s.count, count);
  assert_int_equal(s.applied, applied);
  assert_int_equal(s.generation, generation);
  assert_int_equal(s.skipped, 0);
  assert_int_equal(s.lag, -1); /* no applier: nothing is known about the changelog */
}

/* The nearest hit to q must be id at distance 0 with the given metadata. */
static void expect_stored(rv_replica_t *r, const char *id, float *vec, const char *meta) {
  rv_hit_list_t got = {0};
  assert_int_equal(rv_replica_search(r, vec, DIM, 1, 0, &got), RV_OK);
  assert_int_equal(got.n, 1);
  assert_string_equal(got.hits[0].id, id);
  assert_near(got.hits[0].score, 0.0, 0.0);
  if (meta) assert_string_equal(got.hits[0].metadata, meta);
  else assert_null(got.hits[0].metadata);
  rv_hit_list_close(&got);
}

static void test_new_without_brokers(void **state) {
  rv_replica_t *r = new_replica();
  const rv_collection_conf_t *c = rv_replica_collection(r);
  assert_int_equal(c->dim, DIM);
  assert_string_equal(c->changelog_topic, "docs.changelog"); /* defaults filled in the copy */
  char errstr[256] = "";
  assert_int_equal(rv_replica_start(r, errstr, sizeof errstr), RV_ERR_STATE);
  assert_true(errstr[0] != '\0');
  expect_stats(r, 0, 0, 0);
  rv_replica_destroy(r);
  rv_replica_destroy(NULL);
}

static void test_new_rejects_bad_conf(void **state) {
  rv_replica_conf_t conf = {0};
  conf.collection.dim = 0;
  char errstr[256] = "";
  assert_null(rv_replica_new(&conf, errstr, sizeof errstr));
  assert_true(errstr[0] != '\0');

  conf.collection.dim = 8;
  conf.collection.metric = (rv_metric_t)9;
  errstr[0] = '\0';
  assert_null(rv_replica_new(&conf, errstr, sizeof errstr));
  assert_true(errstr[0] != '\0');

  conf.collection.metric = RV_METRIC_IP;
  snprintf(conf.brokers, sizeof conf.brokers, "localhost:9092"); /* brokers but no topic to read */
  errstr[0] = '\0';
  assert_null(rv_replica_new(&conf, errstr, sizeof errstr));
  assert_true(errstr[0] != '\0');
}

static void test_versions(void **state) {
  rv_replica_t *r = new_replica();
  float v1[DIM] = {1, 0, 0, 0}, v2[DIM] = {0, 2, 0, 0}, v3[DIM] = {0, 0, 3, 0}, v4[DIM] = {0, 0, 0, 4};

  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 5, v1, "{\"v\":1}"), RV_OK);
  expect_stats(r, 1, 1, 1);
  expect_stored(r, "a", v1, "{\"v\":1}");

  /* Older and equal versions are ignored: counted as applied, nothing changes. */
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 4, v2, "{\"v\":2}"), RV_OK);
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 5, v2, "{\"v\":2}"), RV_OK);
  expect_stats(r, 1, 3, 1);
  expect_stored(r, "a", v1, "{\"v\":1}");

  /* A newer one replaces vector and metadata. */
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 6, v2, NULL), RV_OK);
  expect_stats(r, 1, 4, 2);
  expect_stored(r, "a", v2, NULL);

  /* Delete, then a stale upsert re-delivered: the id stays deleted. */
  assert_int_equal(apply(r, "a", RV_OP_DELETE, 0, 10, NULL, NULL), RV_OK);
  expect_stats(r, 0, 5, 3);
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 8, v3, NULL), RV_OK);
  assert_int_equal(apply(r, "a", RV_OP_DELETE, 0, 10, NULL, NULL), RV_OK); /* duplicate delete */
  expect_stats(r, 0, 7, 3);
  /* ... until a newer upsert. */
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 11, v3, NULL), RV_OK);
  expect_stats(r, 1, 8, 4);
  expect_stored(r, "a", v3, NULL);

  /* Deleting an id never seen changes nothing but still pins its version. */
  assert_int_equal(apply(r, "b", RV_OP_DELETE, 1, 100, NULL, NULL), RV_OK);
  expect_stats(r, 1, 9, 4);
  assert_int_equal(apply(r, "b", RV_OP_UPSERT, 1, 99, v4, NULL), RV_OK);
  expect_stats(r, 1, 10, 4);

  /* A version from another source partition is not comparable: it applies. */
  assert_int_equal(apply(r, "b", RV_OP_UPSERT, 2, 3, v4, "{\"p\":2}"), RV_OK);
  expect_stats(r, 2, 11, 5);
  expect_stored(r, "b", v4, "{\"p\":2}");
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 1, 0, v1, NULL), RV_OK);
  expect_stats(r, 2, 12, 6);
  expect_stored(r, "a", v1, NULL);
  /* ... and then is the version that later ones in that partition compare with. */
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 1, 0, v3, NULL), RV_OK);
  expect_stats(r, 2, 13, 6);
  expect_stored(r, "a", v1, NULL);

  rv_replica_destroy(r);
}

static void test_invalid_change_changes_nothing(void **state) {
  rv_replica_t *r = new_replica();
  float v[DIM] = {1, 1, 1, 1}, nan[DIM] = {1, NAN, 1, 1};
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 1, v, NULL), RV_OK);

  rv_change_t c = change("a", RV_OP_UPSERT, 0, 2, v, NULL);
  c.dim = DIM + 1;
  assert_int_equal(rv_replica_apply(r, &c), RV_ERR_DIM);
  c = change("a", RV_OP_UPSERT, 0, 3, NULL, NULL);
  assert_int_equal(rv_replica_apply(r, &c), RV_ERR_INVALID);
  c = change("", RV_OP_UPSERT, 0, 4, v, NULL);
  assert_int_equal(rv_replica_apply(r, &c), RV_ERR_INVALID);
  assert_int_equal(apply(r, "a", RV_OP_UPSERT, 0, 5, nan, NULL), RV_ERR_INVALID);
  assert_int_equal(apply(r, "n", RV_OP_UPSERT, 0, 5, nan, NULL), RV_ERR_INVALID);
  expect_stats(r, 1, 1, 1);
  expect_stored(r, "a", v, NULL);

  /* A rejected change does not record its version: an older valid one still applies. */
  float w[DIM] = {2, 2, 2, 2};
  assert_int_equal(apply(r, "n", RV_OP_UPSERT, 0, 4, w, NULL), RV_OK);
  expect_stats(r, 2, 2, 2);
  rv_replica_destroy(r);
}

static void test_search_matches_brute_force(void **state) {
  rv_replica_t *r = new_replica();
  enum { N = 50 };
  char ids[N][16];
  float vecs[N][DIM];
  tu_item_t items[N];
  uint64_t seed = 5;
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof ids[i], "r%d", i);
    tu_fill(&seed, vecs[i], DIM);
    assert_int_equal(apply(r, ids[i], RV_OP_UPSERT, i % 3, i, vecs[i], NULL), RV_OK);
    items[i] = (tu_item_t){ids[i], vecs[i], NULL};
  }
  float q[DIM];
  tu_fill(&seed, q, DIM);
  rv_hit_list_t got = {0};
  assert_int_equal(rv_replica_search(r, q, DIM, 7, 0, &got), RV_OK);
  tu_check_hits(&got, items, N, RV_METRIC_L2, q, DIM, 7);
  rv_hit_list_close(&got);
  assert_int_equal(rv_replica_search(r, q, DIM + 1, 7, 0, &got), RV_ERR_DIM);
  rv_replica_destroy(r);
}

/* Filtered searches against a brute force over the matching live vectors,
 * with replaces (the old slot's attributes must not linger) and deletes, in
 * float and SQ8 storage (the latter trained from the first 150 vectors). */
static void filtered_matches_brute_force(rv_hnsw_storage_t storage) {
  enum { N = 600, D = 8 };
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "filt");
  conf.collection.dim = D;
  conf.collection.metric = RV_METRIC_L2;
  conf.collection.fields[0] = (rv_field_conf_t){"label", RV_FIELD_NUMBER};
  conf.collection.fields[1] = (rv_field_conf_t){"class", RV_FIELD_KEYWORD};
  conf.collection.n_fields = 2;
  conf.storage = storage;
  conf.sq8_train = 150;
  char errstr[256] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);

  static char ids[N][16], metas[N][64];
  static float vecs[N][D];
  static int label[N], cls[N], live[N];
  uint64_t seed = 77;
  int64_t off = 0;
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < N; i++) {
      if (round == 1 && i % 3) continue; /* round 2 replaces every third id with a new vector and class */
      snprintf(ids[i], sizeof ids[i], "f%03d", i);
      tu_fill(&seed, vecs[i], D);
      label[i] = (int)(tu_next(&seed) % 10);
      cls[i] = (int)(tu_next(&seed) % 4);
      /* class 3 is written as an integer: keyword fields index integers as text */
      if (cls[i] == 3) snprintf(metas[i], sizeof metas[i], "{\"label\":%d,\"class\":3,\"x\":[1]}", label[i]);
      else snprintf(metas[i], sizeof metas[i], "{\"label\":%d,\"class\":\"c%d\"}", label[i], cls[i]);
      rv_change_t c = change(ids[i], RV_OP_UPSERT, 0, off++, vecs[i], metas[i]);
      c.dim = D;
      assert_int_equal(rv_replica_apply(r, &c), RV_OK);
      live[i] = 1;
    }
  }
  for (int i = 0; i < N; i += 7) {
    assert_int_equal(apply(r, ids[i], RV_OP_DELETE, 0, off++, NULL, NULL), RV_OK);
    live[i] = 0;
  }
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.quantized, storage == RV_HNSW_SQ8);

  for (int t = 0; t < 12; t++) {
    rv_filter_t *f = rv_replica_filter_new(r);
    assert_non_null(f);
    int lo = t % 10, hi = lo + 3;
    const char *in[2] = {"c1", "3"};
    if (t % 3 == 0) assert_int_equal(rv_filter_range(f, "label", RV_BOUND_INCL, lo, RV_BOUND_EXCL, hi, errstr, sizeof errstr), RV_OK);
    if (t % 3 == 1) assert_int_equal(rv_filter_in(f, "class", in, 2, errstr, sizeof errstr), RV_OK);
    if (t % 3 == 2) {
      assert_int_equal(rv_filter_eq(f, "class", "c0", errstr, sizeof errstr), RV_OK);
      assert_int_equal(rv_filter_range(f, "label", RV_BOUND_INCL, lo, RV_BOUND_OPEN, 0, errstr, sizeof errstr), RV_OK);
    }
    static tu_item_t items[N];
    size_t n = 0;
    for (int i = 0; i < N; i++) {
      if (!live[i]) continue;
      int ok = t % 3 == 0 ? label[i] >= lo && label[i] < hi
             : t % 3 == 1 ? cls[i] == 1 || cls[i] == 3
                          : cls[i] == 0 && label[i] >= lo;
      if (ok) items[n++] = (tu_item_t){ids[i], vecs[i], metas[i]};
    }
    float q[D];
    tu_fill(&seed, q, D);
    int ks[] = {1, 10, (int)n + 3};
    for (int j = 0; j < 3; j++) {
      rv_hit_list_t got = {0};
      assert_int_equal(rv_replica_search_filtered(r, q, D, ks[j], 0, f, &got, errstr, sizeof errstr), RV_OK);
      tu_check_hits(&got, items, n, RV_METRIC_L2, q, D, ks[j]);
      rv_hit_list_close(&got);
    }
    rv_filter_destroy(f);
  }
  /* A filter for another schema is refused, not misapplied. */
  rv_field_conf_t other = {"label", RV_FIELD_KEYWORD};
  rv_attrs_t *oa = rv_attrs_new(&other, 1, errstr, sizeof errstr);
  rv_filter_t *bad = rv_filter_new(oa);
  assert_int_equal(rv_filter_eq(bad, "label", "x", errstr, sizeof errstr), RV_OK);
  rv_hit_list_t got = {0};
  float q[D] = {0};
  assert_int_not_equal(rv_replica_search_filtered(r, q, D, 5, 0, bad, &got, errstr, sizeof errstr), RV_OK);
  assert_int_equal(got.n, 0);
  rv_filter_destroy(bad);
  rv_attrs_destroy(oa);
  rv_replica_destroy(r);
}

static void test_filtered_search_float(void **state) { filtered_matches_brute_force(RV_HNSW_FLOAT); }
static void test_filtered_search_sq8(void **state) { filtered_matches_brute_force(RV_HNSW_SQ8); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_without_brokers),
      cmocka_unit_test(test_new_rejects_bad_conf),
      cmocka_unit_test(test_versions),
      cmocka_unit_test(test_invalid_change_changes_nothing),
      cmocka_unit_test(test_search_matches_brute_force),
      cmocka_unit_test(test_filtered_search_float),
      cmocka_unit_test(test_filtered_search_sq8),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
