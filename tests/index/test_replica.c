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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_without_brokers),
      cmocka_unit_test(test_new_rejects_bad_conf),
      cmocka_unit_test(test_versions),
      cmocka_unit_test(test_invalid_change_changes_nothing),
      cmocka_unit_test(test_search_matches_brute_force),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
