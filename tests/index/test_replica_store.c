/* rv_replica without Kafka: the store bootstrap through the load sink
 * (rv_replica_load_*), the store's SQ8 quantizer and codes kept byte for
 * byte, shards skipping other shards' ids, the source positions of
 * read-your-writes (and their snapshot round trip), and the tombstone sweep. */
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
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

  /* Cosine: ingest's codes are of raw vectors, the engine's of unit ones:
   * the replica ignores the store's quantizer and trains its own. */
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_COSINE;
  conf.storage = RV_HNSW_SQ8;
  conf.sq8_train = 20;
  conf.store.quantizer = store_quantizer;
  conf.store.ctx = &s;
  r = rv_replica_new(&conf, errstr, sizeof errstr);
  assert_non_null(r);
  int calls = s.quantizer_calls;
  for (int i = 0; i < 20; i++) {
    rv_change_init(&c);
    c.id = s.ids[i];
    c.op = RV_OP_UPSERT;
    c.src_offset = i;
    c.vector = s.vecs[i];
    c.dim = DIM;
    c.sq8_code = s.codes[i];
    c.sq8_len = DIM;
    c.sq8_version = 1;
    assert_int_equal(rv_replica_apply(r, &c), RV_OK);
  }
  rv_replica_stats(r, &st);
  assert_int_equal(s.quantizer_calls, calls);
  assert_int_equal(st.quantized, 1);
  assert_int_equal(st.quantizer_version, 0);
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

/* Searches and a read-your-writes waiter on other threads while the state
 * is swapped by bootstraps and tombstones are swept (run under TSan too). */
typedef struct race {
  rv_replica_t *r;
  atomic_int stop;
  int failures;
  int searches;
  rv_err_t waited;
} race_t;

static void *searcher(void *arg) {
  race_t *x = arg;
  uint64_t seed = 99;
  while (!atomic_load(&x->stop)) {
    float q[DIM];
    tu_fill(&seed, q, DIM);
    rv_hit_list_t got = {0};
    if (rv_replica_search(x->r, q, DIM, 5, 0, &got)) x->failures++;
    for (int i = 0; i < got.n; i++)
      if (!got.hits[i].id || (strncmp(got.hits[i].id, "row-", 4) && strncmp(got.hits[i].id, "tmp-", 4)))
        x->failures++;
    rv_hit_list_close(&got);
    rv_replica_stats_t st;
    rv_replica_stats(x->r, &st);
    rv_source_position_t pos[4];
    rv_replica_positions(x->r, pos, 4);
    x->searches++;
  }
  return NULL;
}

static void *waiter(void *arg) {
  race_t *x = arg;
  x->waited = rv_replica_wait_visible(x->r, 0, 299, 20000);
  return NULL;
}

static void test_swaps_under_searches(void **state) {
  static store_t s;
  store_fill(&s, 60, 12);
  race_t x = {.r = new_replica(&s, RV_HNSW_FLOAT, NULL)};
  atomic_init(&x.stop, 0);
  pthread_t t[3];
  assert_int_equal(pthread_create(&t[0], NULL, searcher, &x), 0);
  assert_int_equal(pthread_create(&t[1], NULL, waiter, &x), 0);
  float v[DIM] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
  char id[16];
  for (int round = 0; round < 5; round++) {
    for (int i = 0; i < 30; i++) {
      snprintf(id, sizeof id, "tmp-%d", i);
      apply_one(x.r, id, RV_OP_UPSERT, round * 100 + 1, v);
      apply_one(x.r, id, RV_OP_DELETE, round * 100 + 2, NULL);
    }
    assert_int_equal(rv__replica_bootstrap(x.r), RV_OK);
    sleep_ms(60); /* past tombstone_ms: the next applies sweep */
  }
  assert_int_equal(pthread_join(t[1], NULL), 0);
  assert_int_equal(x.waited, RV_OK);
  atomic_store(&x.stop, 1);
  assert_int_equal(pthread_join(t[0], NULL), 0);
  assert_int_equal(x.failures, 0);
  assert_true(x.searches > 0);
  rv_replica_stats_t st;
  rv_replica_stats(x.r, &st);
  assert_int_equal(st.count, 60);
  rv_replica_destroy(x.r);
}

/* ---- a parallel load gives what a sequential one does ----------------------
 * A few thousand rows (small dim) through the sink with the insert threads
 * (load_threads 4, more than this machine's cores) and on the loader's
 * thread (load_threads 1): the same live ids and versions, the same codes
 * (the stored ones byte for byte), and exact k-NN results (ef = every row)
 * equal to a brute force over the rows, with their metadata, unfiltered and
 * filtered on an attribute. The load also repeats an id (newer, then older
 * version) and carries rows the replica refuses, reported by the put as a
 * sequential load does. Run under TSan too. */
#define BIG_ROWS 3000
#define BIG_QUERIES 40

typedef struct big_store {
  int n;
  char (*ids)[16];
  float (*vecs)[DIM];
  uint8_t (*codes)[DIM];
  char (*meta)[48];
  int with_codes;
  uint8_t *qparams;
  size_t qlen;
  float again[DIM]; /* row 5's newer vector */
  int bad_results[3];
} big_store_t;

static int big_code_only(int i) { return i % 10 == 7; }

static rv_err_t big_put(rv_replica_load_t *l, const big_store_t *b, int i, const char *id, const float *vec,
                        int64_t off, const char *meta) {
  rv_change_t c;
  rv_change_init(&c);
  c.id = (char *)id;
  c.op = RV_OP_UPSERT;
  c.src_partition = i % 3;
  c.src_offset = off;
  c.vector = (float *)vec;
  c.dim = vec ? DIM : 0;
  if (b->with_codes && i >= 0) {
    c.sq8_code = b->codes[i];
    c.sq8_len = DIM;
    c.sq8_version = 1;
  }
  c.attributes = (char *)meta;
  return rv_replica_load_put(l, &c);
}

static rv_err_t big_load(void *ctx, rv_replica_load_t *l, char *errstr, size_t errstr_size) {
  big_store_t *b = ctx;
  assert_int_equal(rv_replica_load_mark_end(l, errstr, errstr_size), RV_OK);
  if (b->with_codes) assert_int_equal(rv_replica_load_quantizer(l, 1, b->qparams, b->qlen, errstr, errstr_size), RV_OK);
  for (int i = 0; i < b->n; i++) {
    const float *vec = b->with_codes && big_code_only(i) ? NULL : b->vecs[i];
    assert_int_equal(big_put(l, b, i, b->ids[i], vec, 1000 + i, b->meta[i]), RV_OK);
    if (i == 2000) { /* row 5 again: a newer version replaces it, an older one is ignored */
      assert_int_equal(big_put(l, b, -1, b->ids[5], b->again, 5000, "{\"grp\":\"g3\",\"n\":-5}"), RV_OK);
      assert_int_equal(big_put(l, b, -1, b->ids[5], b->vecs[6], 10, "{\"grp\":\"g0\"}"), RV_OK);
    }
    if (i == 1500) { /* refused, as a sequential load refuses them */
      float nan_vec[DIM] = {0};
      nan_vec[2] = NAN;
      char long_id[RV_ID_MAX + 8];
      memset(long_id, 'x', sizeof long_id - 1);
      long_id[sizeof long_id - 1] = '\0';
      b->bad_results[0] = big_put(l, b, -1, "nan-row", nan_vec, 1, NULL);
      b->bad_results[1] = big_put(l, b, -1, long_id, b->vecs[0], 1, NULL);
      rv_change_t c;
      rv_change_init(&c);
      c.id = "short-row";
      c.op = RV_OP_UPSERT;
      c.vector = b->vecs[0];
      c.dim = DIM - 1;
      b->bad_results[2] = rv_replica_load_put(l, &c);
    }
  }
  return RV_OK;
}

static rv_replica_t *big_replica(big_store_t *b, int threads) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.region, sizeof conf.region, "test-region");
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.collection.fields[0] = (rv_field_conf_t){"grp", RV_FIELD_KEYWORD};
  conf.collection.fields[1] = (rv_field_conf_t){"n", RV_FIELD_NUMBER};
  conf.collection.n_fields = 2;
  conf.storage = b->with_codes ? RV_HNSW_SQ8 : RV_HNSW_FLOAT;
  conf.load_threads = threads;
  conf.store.load = big_load;
  conf.store.quantizer = b->with_codes ? store_quantizer : NULL; /* not called: the load gives the quantizer */
  conf.store.ctx = b;
  char errstr[256] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  assert_int_equal(rv__replica_bootstrap(r), RV_OK);
  assert_int_equal(b->bad_results[0], RV_ERR_INVALID);
  assert_int_equal(b->bad_results[1], RV_ERR_INVALID);
  assert_int_equal(b->bad_results[2], RV_ERR_DIM);
  return r;
}

typedef struct live_row {
  char id[16];
  int32_t partition;
  int64_t offset;
} live_row_t;

typedef struct live_list {
  live_row_t rows[BIG_ROWS + 8];
  int n;
} live_list_t;

static void collect_live(void *ctx, const char *id, int32_t partition, int64_t offset) {
  live_list_t *l = ctx;
  if (l->n >= BIG_ROWS + 8 || strlen(id) >= sizeof l->rows[0].id) fail_msg("unexpected live id '%.40s'", id);
  live_row_t *row = &l->rows[l->n++];
  snprintf(row->id, sizeof row->id, "%s", id);
  row->partition = partition;
  row->offset = offset;
}

static int live_cmp(const void *a, const void *b) { return strcmp(((const live_row_t *)a)->id, ((const live_row_t *)b)->id); }

static void search_both(rv_replica_t *seq, rv_replica_t *par, const tu_item_t *items, size_t n, const float *q,
                        const char *grp) {
  rv_hit_list_t a = {0}, b = {0};
  char errstr[256];
  rv_filter_t *fa = rv_replica_filter_new(seq), *fb = rv_replica_filter_new(par);
  assert_non_null(fa);
  assert_non_null(fb);
  if (grp) {
    assert_int_equal(rv_filter_eq(fa, "grp", grp, errstr, sizeof errstr), RV_OK);
    assert_int_equal(rv_filter_eq(fb, "grp", grp, errstr, sizeof errstr), RV_OK);
  }
  assert_int_equal(rv_replica_search_filtered(seq, q, DIM, 10, BIG_ROWS + 8, fa, &a, errstr, sizeof errstr), RV_OK);
  assert_int_equal(rv_replica_search_filtered(par, q, DIM, 10, BIG_ROWS + 8, fb, &b, errstr, sizeof errstr), RV_OK);
  tu_check_hits(&a, items, n, RV_METRIC_L2, q, DIM, 10);
  tu_check_hits(&b, items, n, RV_METRIC_L2, q, DIM, 10);
  assert_int_equal(a.n, b.n);
  for (int i = 0; i < a.n; i++) {
    assert_string_equal(a.hits[i].id, b.hits[i].id);
    assert_true(a.hits[i].score == b.hits[i].score);
  }
  rv_filter_destroy(fa);
  rv_filter_destroy(fb);
  rv_hit_list_close(&a);
  rv_hit_list_close(&b);
}

static void check_parallel_load(int with_codes) {
  static big_store_t b;
  memset(&b, 0, sizeof b);
  b.n = BIG_ROWS;
  b.ids = calloc(BIG_ROWS, sizeof *b.ids);
  b.vecs = calloc(BIG_ROWS, sizeof *b.vecs);
  b.codes = calloc(BIG_ROWS, sizeof *b.codes);
  b.meta = calloc(BIG_ROWS, sizeof *b.meta);
  assert_true(b.ids && b.vecs && b.codes && b.meta);
  uint64_t seed = 1234 + (uint64_t)with_codes;
  for (int i = 0; i < BIG_ROWS; i++) {
    snprintf(b.ids[i], sizeof b.ids[i], "big-%04d", i);
    tu_fill(&seed, b.vecs[i], DIM);
    snprintf(b.meta[i], sizeof b.meta[i], "{\"grp\":\"g%d\",\"n\":%d}", i % 7, i);
  }
  tu_fill(&seed, b.again, DIM);
  rv_sq8_t *q = NULL;
  char errstr[256];
  if (with_codes) {
    assert_int_equal(rv_sq8_train(&b.vecs[0][0], BIG_ROWS, DIM, 0, 1, &q, errstr, sizeof errstr), RV_OK);
    for (int i = 0; i < BIG_ROWS; i++) {
      rv_sq8_encode(q, b.vecs[i], b.codes[i]);
      if (i % 3 == 0) b.codes[i][1] ^= 0x33; /* unlike a re-encoding of the floats */
    }
    assert_int_equal(rv_sq8_serialize(q, &b.qparams, &b.qlen), RV_OK);
    b.with_codes = 1;
  }

  rv_replica_t *seq = big_replica(&b, 1);
  rv_replica_t *par = big_replica(&b, 4);

  /* The rows as they should be live: row 5 replaced, code-only rows decoded. */
  static float eff[BIG_ROWS][DIM];
  static tu_item_t items[BIG_ROWS];
  for (int i = 0; i < BIG_ROWS; i++) {
    if (with_codes && big_code_only(i)) rv_sq8_decode(q, b.codes[i], eff[i]);
    else memcpy(eff[i], b.vecs[i], sizeof eff[i]);
    items[i] = (tu_item_t){b.ids[i], eff[i], b.meta[i]};
  }
  memcpy(eff[5], b.again, sizeof eff[5]);
  items[5].meta = "{\"grp\":\"g3\",\"n\":-5}";

  rv_replica_stats_t ss, ps;
  rv_replica_stats(seq, &ss);
  rv_replica_stats(par, &ps);
  assert_int_equal(ss.count, BIG_ROWS);
  assert_int_equal(ps.count, BIG_ROWS);
  assert_int_equal(ps.quantized, ss.quantized);
  assert_int_equal(ps.quantizer_version, with_codes ? 1 : 0);
  assert_int_equal(ps.quantizer_version, ss.quantizer_version);
  assert_int_equal(ps.tombstones, 0);

  /* Live ids and their versions. */
  static live_list_t ls, lp;
  ls.n = lp.n = 0;
  assert_int_equal(rv_replica_foreach_live(seq, collect_live, &ls), BIG_ROWS);
  assert_int_equal(rv_replica_foreach_live(par, collect_live, &lp), BIG_ROWS);
  qsort(ls.rows, (size_t)ls.n, sizeof ls.rows[0], live_cmp);
  qsort(lp.rows, (size_t)lp.n, sizeof lp.rows[0], live_cmp);
  for (int i = 0; i < BIG_ROWS; i++) {
    assert_string_equal(lp.rows[i].id, b.ids[i]);
    assert_int_equal(lp.rows[i].partition, i == 5 ? -1 : i % 3);
    assert_int_equal(lp.rows[i].offset, i == 5 ? 5000 : 1000 + i);
    assert_string_equal(ls.rows[i].id, lp.rows[i].id);
    assert_int_equal(ls.rows[i].partition, lp.rows[i].partition);
    assert_int_equal(ls.rows[i].offset, lp.rows[i].offset);
  }

  /* Codes: the stored ones byte for byte; row 5's newer row had none, so
   * both encode its floats. */
  if (with_codes) {
    uint8_t cs[DIM], cp[DIM], want[DIM];
    for (int i = 0; i < BIG_ROWS; i++) {
      assert_int_equal(rv__replica_get_code(seq, b.ids[i], cs, sizeof cs), RV_OK);
      assert_int_equal(rv__replica_get_code(par, b.ids[i], cp, sizeof cp), RV_OK);
      assert_memory_equal(cs, cp, DIM);
      if (i != 5) assert_memory_equal(cp, b.codes[i], DIM);
    }
    rv_sq8_encode(q, b.again, want);
    assert_int_equal(rv__replica_get_code(par, b.ids[5], cp, sizeof cp), RV_OK);
    assert_memory_equal(cp, want, DIM);
  }

  /* Exact searches (ef = every row) against brute force and each other,
   * unfiltered and on the attribute (only the rows of that group). */
  static tu_item_t g3[BIG_ROWS];
  size_t n3 = 0;
  for (int i = 0; i < BIG_ROWS; i++)
    if (i == 5 || (i % 7 == 3)) g3[n3++] = items[i];
  uint64_t qs = 77;
  for (int t = 0; t < BIG_QUERIES; t++) {
    float qv[DIM];
    tu_fill(&qs, qv, DIM);
    if (t == 0) memcpy(qv, b.again, sizeof qv); /* row 5's new vector is its own nearest */
    search_both(seq, par, items, BIG_ROWS, qv, NULL);
    search_both(seq, par, g3, n3, qv, "g3");
  }
  rv_replica_destroy(seq);
  rv_replica_destroy(par);
  rv_sq8_destroy(q);
  free(b.qparams);
  free(b.ids);
  free(b.vecs);
  free(b.codes);
  free(b.meta);
}

static void test_parallel_load_float(void **state) { check_parallel_load(0); }
static void test_parallel_load_sq8_codes(void **state) { check_parallel_load(1); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_from_store),
      cmocka_unit_test(test_load_not_found_or_failing),
      cmocka_unit_test(test_stored_quantizer_codes),
      cmocka_unit_test(test_shard_skips_other_ids),
      cmocka_unit_test(test_tombstones_swept),
      cmocka_unit_test(test_positions_in_snapshot),
      cmocka_unit_test(test_swaps_under_searches),
      cmocka_unit_test(test_parallel_load_float),
      cmocka_unit_test(test_parallel_load_sq8_codes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
