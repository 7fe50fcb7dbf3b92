/* rv_replica without Kafka: the store bootstrap through the load sink
 * (rv_replica_load_*), the store's SQ8 quantizer and codes kept byte for
 * byte, shards skipping other shards' ids, the source positions of
 * read-your-writes (and their snapshot round trip), and the tombstone sweep. */
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_replica.h"
#include "rv_sq8.h"
#include "rv_time.h"

#define DIM 8
#define N_ROWS 200

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* What the fake store holds. */
typedef struct store {
  rv_err_t result;     /* what load returns (after filling when RV_OK) */
  int n_rows;
  char ids[N_ROWS][16];
  float vecs[N_ROWS][DIM];
  uint8_t codes[N_ROWS][DIM];
  int code_only[N_ROWS]; /* the row carries no float vector */
  int with_codes;
  uint8_t *qparams;      /* rv_sq8_serialize of the store's quantizer */
  size_t qlen;
  int quantizer_calls;
  int loads;
  rv_source_position_t pos[2];
} store_t;

static rv_err_t store_load(void *ctx, rv_replica_load_t *l, char *errstr, size_t errstr_size) {
  store_t *s = ctx;
  s->loads++;
  if (s->result != RV_OK) return s->result;
  assert_int_equal(rv_replica_load_mark_end(l, errstr, errstr_size), RV_OK);
  if (s->with_codes) assert_int_equal(rv_replica_load_quantizer(l, 1, s->qparams, s->qlen, errstr, errstr_size), RV_OK);
  assert_int_equal(rv_replica_load_positions(l, s->pos, 2), RV_OK);
  for (int i = 0; i < s->n_rows; i++) {
    rv_change_t c;
    rv_change_init(&c);
    c.id = s->ids[i];
    c.op = RV_OP_UPSERT;
    c.src_partition = 0;
    c.src_offset = 100 + i;
    c.vector = s->code_only[i] ? NULL : s->vecs[i];
    c.dim = s->code_only[i] ? 0 : DIM;
    if (s->with_codes) {
      c.sq8_code = s->codes[i];
      c.sq8_len = DIM;
      c.sq8_version = 1;
    }
    c.attributes = "{\"src\":\"store\"}";
    rv_err_t err = rv_replica_load_put(l, &c);
    if (err) return rv_errf(err, errstr, errstr_size, "put %s: %s", c.id, rv_err_str(err));
  }
  return RV_OK;
}

static rv_err_t store_quantizer(void *ctx, int32_t version, void **params, size_t *len, char *errstr,
                                size_t errstr_size) {
  store_t *s = ctx;
  s->quantizer_calls++;
  if (version != 1 || !s->qparams) return rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "no version %d", version);
  *params = malloc(s->qlen);
  memcpy(*params, s->qparams, s->qlen);
  *len = s->qlen;
  return RV_OK;
}

static void store_fill(store_t *s, int n, uint64_t seed) {
  memset(s, 0, sizeof *s);
  s->n_rows = n;
  for (int i = 0; i < n; i++) {
    snprintf(s->ids[i], sizeof s->ids[i], "row-%03d", i);
    tu_fill(&seed, s->vecs[i], DIM);
  }
  s->pos[0] = (rv_source_position_t){0, 300};
  s->pos[1] = (rv_source_position_t){2, 17};
}

/* Trains the store's quantizer from its rows and encodes every row. */
static void store_quantize(store_t *s) {
  rv_sq8_t *q = NULL;
  char errstr[256];
  assert_int_equal(rv_sq8_train(&s->vecs[0][0], (size_t)s->n_rows, DIM, 0, 1, &q, errstr, sizeof errstr), RV_OK);
  for (int i = 0; i < s->n_rows; i++) rv_sq8_encode(q, s->vecs[i], s->codes[i]);
  assert_int_equal(rv_sq8_serialize(q, &s->qparams, &s->qlen), RV_OK);
  rv_sq8_destroy(q);
  s->with_codes = 1;
}

static rv_replica_t *new_replica(store_t *s, rv_hnsw_storage_t storage, const char *snapshot) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.region, sizeof conf.region, "test-region");
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.storage = storage;
  conf.tombstone_ms = 50;
  if (snapshot) snprintf(conf.snapshot_path, sizeof conf.snapshot_path, "%s", snapshot);
  if (s) {
    conf.store.load = store_load;
    conf.store.quantizer = storage == RV_HNSW_SQ8 ? store_quantizer : NULL;
    conf.store.ctx = s;
  }
  char errstr[256] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  return r;
}

static void expect_nearest(rv_replica_t *r, const char *id, const float *q) {
  rv_hit_list_t got = {0};
  assert_int_equal(rv_replica_search(r, q, DIM, 1, 0, &got), RV_OK);
  assert_int_equal(got.n, 1);
  assert_string_equal(got.hits[0].id, id);
  rv_hit_list_close(&got);
}

static void test_load_from_store(void **state) {
  static store_t s;
  store_fill(&s, 50, 7);
  rv_replica_t *r = new_replica(&s, RV_HNSW_FLOAT, NULL);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 0);
  assert_int_equal(st.boot, RV_BOOT_NONE);
  assert_int_equal(rv__replica_bootstrap(r), RV_OK);
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 50);
  assert_int_equal(st.boot, RV_BOOT_STORE);
  assert_string_equal(rv_replica_boot_name(st.boot), "postgres");
  assert_true(st.boot_ms >= 0);
  assert_int_equal(st.bootstrapped, 1);
  for (int i = 0; i < 50; i += 7) expect_nearest(r, s.ids[i], s.vecs[i]);

  /* The versions came along: an older change is ignored, a newer one applies. */
  float v[DIM] = {9, 9, 9, 9, 9, 9, 9, 9};
  rv_change_t c;
  rv_change_init(&c);
  c.id = s.ids[3];
  c.op = RV_OP_UPSERT;
  c.src_partition = 0;
  c.src_offset = 103; /* the stored version itself */
  c.vector = v;
  c.dim = DIM;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  expect_nearest(r, s.ids[3], s.vecs[3]);
  c.src_offset = 104 + 1000;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  expect_nearest(r, s.ids[3], v);

  /* The committed positions, as a marker would carry them. */
  rv_source_position_t pos[4];
  assert_int_equal(rv_replica_positions(r, pos, 4), 2);
  assert_int_equal(pos[0].partition, 0);
  assert_int_equal(pos[0].next_offset, 300);
  assert_int_equal(pos[1].partition, 2);
  assert_int_equal(pos[1].next_offset, 17);
  assert_true(rv_replica_visible(r, 0, 299));
  assert_false(rv_replica_visible(r, 0, 300));
  assert_false(rv_replica_visible(r, 1, 0)); /* never heard of */
  assert_int_equal(rv_replica_wait_visible(r, 2, 16, 1000), RV_OK);
  int64_t t0 = rv_mono_ms();
  assert_int_equal(rv_replica_wait_visible(r, 2, 17, 150), RV_ERR_TIMEOUT);
  int64_t took = rv_mono_ms() - t0;
  assert_true(took >= 140 && took < 2000);
  assert_int_equal(rv_replica_wait_visible(r, 2, 17, 0), RV_ERR_TIMEOUT);
  rv_replica_destroy(r);
}

static void test_load_not_found_or_failing(void **state) {
  static store_t s;
  store_fill(&s, 10, 8);
  rv_replica_t *r = new_replica(&s, RV_HNSW_FLOAT, NULL);
  float v[DIM] = {1, 2, 3, 4, 5, 6, 7, 8};
  rv_change_t c;
  rv_change_init(&c);
  c.id = "kept";
  c.op = RV_OP_UPSERT;
  c.vector = v;
  c.dim = DIM;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  s.result = RV_ERR_NOT_FOUND;
  assert_int_equal(rv__replica_bootstrap(r), RV_ERR_NOT_FOUND);
  s.result = RV_ERR_IO;
  assert_int_equal(rv__replica_bootstrap(r), RV_ERR_IO);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 1); /* untouched: nothing was swapped in */
  assert_int_equal(st.boot, RV_BOOT_NONE);
  expect_nearest(r, "kept", v);
  rv_replica_destroy(r);

  /* No store.load at all. */
  r = new_replica(NULL, RV_HNSW_FLOAT, NULL);
  assert_int_equal(rv__replica_bootstrap(r), RV_ERR_STATE);
  rv_replica_destroy(r);
}

static void expect_code(rv_replica_t *r, const char *id, const uint8_t *want) {
  uint8_t got[DIM];
  assert_int_equal(rv__replica_get_code(r, id, got, sizeof got), RV_OK);
  assert_memory_equal(got, want, DIM);
}

/* The store's quantizer, not the replica's own training; codes byte for
 * byte, from the load and from changes; code-only rows decoded. */
static void test_stored_quantizer_codes(void **state) {
  static store_t s;
  store_fill(&s, N_ROWS, 9);
  /* Codes deliberately unlike what encoding the floats would give: a replica
   * that re-quantized could not match them. */
  store_quantize(&s);
  for (int i = 0; i < N_ROWS; i += 3) s.codes[i][0] ^= 0x5a;
  for (int i = 0; i < N_ROWS; i += 10) s.code_only[i] = 1;
  rv_replica_t *r = new_replica(&s, RV_HNSW_SQ8, NULL);
  assert_int_equal(rv__replica_bootstrap(r), RV_OK);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, N_ROWS);
  assert_int_equal(st.quantized, 1);
  assert_int_equal(st.quantizer_version, 1);
  for (int i = 0; i < N_ROWS; i++) expect_code(r, s.ids[i], s.codes[i]);
  /* A code-only row is searchable: its decoded vector stands for it. */
  rv_sq8_t *q = NULL;
  char errstr[256];
  assert_int_equal(rv_sq8_deserialize(s.qparams, s.qlen, &q, errstr, sizeof errstr), RV_OK);
  float dec[DIM];
  rv_sq8_decode(q, s.codes[10], dec);
  expect_nearest(r, s.ids[10], dec);

  /* A change with its code of the installed version: stored as given. */
  uint8_t code[DIM];
  float v[DIM] = {0.5f, -0.5f, 0.25f, 0, 0.1f, 0.2f, 0.3f, 0.4f};
  rv_sq8_encode(q, v, code);
  code[DIM - 1] ^= 1;
  rv_change_t c;
  rv_change_init(&c);
  c.id = "fresh";
  c.op = RV_OP_UPSERT;
  c.src_offset = 1;
  c.vector = v;
  c.dim = DIM;
  c.sq8_code = code;
  c.sq8_len = DIM;
  c.sq8_version = 1;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  expect_code(r, "fresh", code);
  assert_int_equal(s.quantizer_calls, 0); /* the load gave it */
  rv_replica_destroy(r);

  /* No load: the first change's code makes the replica fetch version 1. */
  r = new_replica(&s, RV_HNSW_SQ8, NULL);
  for (int i = 0; i < 20; i++) {
    rv_change_init(&c);
    c.id = s.ids[i];
    c.op = RV_OP_UPSERT;
    c.src_offset = i;
    c.vector = s.code_only[i] ? NULL : s.vecs[i];
    c.dim = s.code_only[i] ? 0 : DIM;
    c.sq8_code = s.codes[i];
    c.sq8_len = DIM;
    c.sq8_version = 1;
    assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  }
  assert_int_equal(s.quantizer_calls, 1);
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 20);
  assert_int_equal(st.quantizer_version, 1);
  for (int i = 0; i < 20; i++) expect_code(r, s.ids[i], s.codes[i]);
  /* A version the store does not have: asked once, the floats are used. */
  c.id = "v2";
  c.sq8_version = 2;
  c.vector = v;
  c.dim = DIM;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  c.id = "v2b";
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  assert_int_equal(s.quantizer_calls, 2);
  uint8_t want[DIM];
  rv_sq8_encode(q, v, want);
  expect_code(r, "v2", want);
  /* A code-only change of an unknown version cannot be applied. */
  c.id = "v2c";
  c.vector = NULL;
  c.dim = 0;
  assert_int_equal(rv_replica_apply(r, &c), RV_ERR_INVALID);
  rv_sq8_destroy(q);
  rv_replica_destroy(r);
  free(s.qparams);
}

/* Shard 1 of 3 over 6 partitions keeps exactly the ids the producer's
 * partitioner sends to partitions 1 and 4. */
static void test_shard_skips_other_ids(void **state) {
  static store_t s;
  store_fill(&s, N_ROWS, 10);
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.shard_index = 1;
  conf.shard_count = 3;
  conf.store.load = store_load;
  conf.store.ctx = &s;
  char errstr[256] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  assert_non_null(r);
  assert_false(rv_replica_owns_id(r, "x")); /* partition count unknown */
  rv__replica_set_partition_count(r, 6);
  assert_int_equal(rv__replica_bootstrap(r), RV_OK);
  int mine = 0;
  for (int i = 0; i < N_ROWS; i++) {
    int32_t p = rd_kafka_msg_partitioner_murmur2_random(NULL, s.ids[i], strlen(s.ids[i]), 6, NULL, NULL);
    int want = p == 1 || p == 4;
    assert_int_equal(rv_replica_owns_id(r, s.ids[i]), want);
    mine += want;
    if (want) expect_nearest(r, s.ids[i], s.vecs[i]);
  }
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, (uint64_t)mine);
  assert_true(mine > N_ROWS / 6 && mine < N_ROWS / 2);
  rv_replica_destroy(r);

  conf.shard_index = 3; /* out of range */
  assert_null(rv_replica_new(&conf, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "shard"));
}

static void apply_one(rv_replica_t *r, const char *id, rv_op_t op, int64_t off, float *v) {
  rv_change_t c;
  rv_change_init(&c);
  c.id = (char *)id;
  c.op = op;
  c.src_offset = off;
  c.vector = op == RV_OP_UPSERT ? v : NULL;
  c.dim = op == RV_OP_UPSERT ? DIM : 0;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
}

/* A deleted id's version entry shields it from stale upserts for
 * tombstone_ms (50 here), then goes. */
static void test_tombstones_swept(void **state) {
  rv_replica_t *r = new_replica(NULL, RV_HNSW_FLOAT, NULL);
  float v[DIM] = {1, 1, 1, 1, 1, 1, 1, 1}, w[DIM] = {2, 2, 2, 2, 2, 2, 2, 2};
  char id[16];
  for (int i = 0; i < 100; i++) {
    snprintf(id, sizeof id, "id-%d", i);
    apply_one(r, id, RV_OP_UPSERT, 10, v);
  }
  for (int i = 0; i < 60; i++) {
    snprintf(id, sizeof id, "id-%d", i);
    apply_one(r, id, RV_OP_DELETE, 20, NULL);
  }
  apply_one(r, "never-seen", RV_OP_DELETE, 5, NULL);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 40);
  assert_int_equal(st.tombstones, 61);
  apply_one(r, "id-0", RV_OP_UPSERT, 15, w); /* stale: the tombstone wins */
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 40);
  apply_one(r, "id-1", RV_OP_UPSERT, 25, w); /* newer: back to life, no longer a tombstone */
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 41);
  assert_int_equal(st.tombstones, 60);
  /* Expiry: the next apply sweeps (bounded wait, not a fixed sleep). */
  int64_t t0 = rv_mono_ms();
  for (int i = 0;; i++) {
    apply_one(r, "id-99", RV_OP_UPSERT, 100 + i, v);
    rv_replica_stats(r, &st);
    if (st.tombstones == 0) break;
    if (rv_mono_ms() - t0 > 5000) fail_msg("tombstones still %llu after 5 s", (unsigned long long)st.tombstones);
    sleep_ms(10);
  }
  assert_true(rv_mono_ms() - t0 >= 40);
  assert_int_equal(st.count, 41);
  expect_nearest(r, "id-1", w);
  /* After the sweep a re-delivered old upsert is applied again: the window
   * tombstone_ms buys is the whole protection, by design. */
  apply_one(r, "id-2", RV_OP_UPSERT, 15, v);
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 42);
  rv_replica_destroy(r);
}

/* Positions and the quantizer version survive a snapshot (POSN version 2). */
static void test_positions_in_snapshot(void **state) {
  char path[] = "/tmp/rv_test_replica_store_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  unlink(path);
  static store_t s;
  store_fill(&s, 40, 11);
  store_quantize(&s);
  rv_replica_t *r = new_replica(&s, RV_HNSW_SQ8, path);
  assert_int_equal(rv__replica_bootstrap(r), RV_OK);
  apply_one(r, s.ids[5], RV_OP_DELETE, 1000, NULL);
  char errstr[512];
  assert_int_equal(rv_replica_snapshot(r, errstr, sizeof errstr), RV_OK);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_true(st.snapshot_ms >= 0 && st.snapshot_pause_ms >= 0);
  rv_replica_destroy(r);

  r = new_replica(&s, RV_HNSW_SQ8, path);
  rv_replica_stats(r, &st);
  assert_int_equal(st.boot, RV_BOOT_SNAPSHOT);
  assert_int_equal(st.restored, 1);
  assert_int_equal(st.count, 39);
  assert_int_equal(st.quantizer_version, 1);
  assert_int_equal(st.tombstones, 1);
  for (int i = 0; i < 40; i++)
    if (i != 5) expect_code(r, s.ids[i], s.codes[i]);
  rv_source_position_t pos[4];
  assert_int_equal(rv_replica_positions(r, pos, 4), 2);
  assert_int_equal(pos[0].next_offset, 300);
  assert_int_equal(pos[1].next_offset, 17);
  rv_replica_destroy(r);
  unlink(path);

  /* Another shard's snapshot is refused (and the replica starts empty). */
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  snprintf(conf.snapshot_path, sizeof conf.snapshot_path, "%s", path);
  r = rv_replica_new(&conf, errstr, sizeof errstr);
  apply_one(r, "a", RV_OP_UPSERT, 1, (float[DIM]){1});
  assert_int_equal(rv_replica_snapshot(r, errstr, sizeof errstr), RV_OK);
  rv_replica_destroy(r);
  conf.shard_count = 2;
  r = rv_replica_new(&conf, errstr, sizeof errstr);
  rv_replica_stats(r, &st);
  assert_int_equal(st.restored, 0);
  assert_int_equal(st.count, 0);
  conf.snapshot_path[0] = '\0';
  rv_replica_destroy(r);
  unlink(path);
  free(s.qparams);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_from_store),
      cmocka_unit_test(test_load_not_found_or_failing),
      cmocka_unit_test(test_stored_quantizer_codes),
      cmocka_unit_test(test_shard_skips_other_ids),
      cmocka_unit_test(test_tombstones_swept),
      cmocka_unit_test(test_positions_in_snapshot),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
