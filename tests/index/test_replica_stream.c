/* rv_replica's applier against librdkafka's in-process mock cluster, for the
 * regional-replica features: position markers and read-your-writes, lag and
 * readiness, the on_applied hook, shards by the producer's partitioner, the
 * store bootstrap followed by catch-up from the marked end offsets, and a
 * re-bootstrap when the log no longer holds the replica's offsets. */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_record.h"
#include "rv_replica.h"
#include "rv_snapshot.h"
#include "rv_time.h"

#define DIM 8
#define DEADLINE_MS 30000

typedef struct cluster {
  rd_kafka_t *owner;
  rd_kafka_mock_cluster_t *mc;
  const char *bootstraps;
  rd_kafka_t *p;
  rv_codec_t *codec;
} cluster_t;

static void cluster_start(cluster_t *c, const char *topic, int partitions) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
  c->owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!c->owner) fail_msg("rd_kafka_new: %s", errstr);
  c->mc = rd_kafka_mock_cluster_new(c->owner, 1);
  assert_non_null(c->mc);
  c->bootstraps = rd_kafka_mock_cluster_bootstraps(c->mc);
  assert_int_equal(rd_kafka_mock_topic_create(c->mc, topic, partitions, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_conf_t *pc = rd_kafka_conf_new();
  const char *kv[][2] = {{"bootstrap.servers", c->bootstraps},
                         {"linger.ms", "1"},
                         {"partitioner", "murmur2_random"}, /* as ingest's changelog producer */
                         {"log_level", "3"}};
  for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
    assert_int_equal(rd_kafka_conf_set(pc, kv[i][0], kv[i][1], errstr, sizeof errstr), RD_KAFKA_CONF_OK);
  c->p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, errstr, sizeof errstr);
  if (!c->p) fail_msg("producer: %s", errstr);
  c->codec = rv_codec_new(errstr, sizeof errstr);
  assert_non_null(c->codec);
}

static void cluster_stop(cluster_t *c) {
  rv_codec_destroy(c->codec);
  rd_kafka_destroy(c->p);
  rd_kafka_mock_cluster_destroy(c->mc);
  rd_kafka_destroy(c->owner);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A change keyed by its id (partition by the producer's partitioner). */
static void produce_change(cluster_t *c, const char *topic, const char *id, rv_op_t op, int32_t src_p, int64_t src_o,
                           const float *vec) {
  char errstr[256];
  rv_change_t ch;
  rv_change_init(&ch);
  ch.id = (char *)id;
  ch.op = op;
  ch.src_partition = src_p;
  ch.src_offset = src_o;
  ch.vector = op == RV_OP_UPSERT ? (float *)vec : NULL;
  ch.dim = op == RV_OP_UPSERT ? DIM : 0;
  ch.created_at_ms = rv_wall_ms() - 5;
  rv_buf_t buf = {0};
  if (rv_codec_encode_change(c->codec, &ch, &buf, errstr, sizeof errstr)) fail_msg("encode: %s", errstr);
  rd_kafka_resp_err_t err = rd_kafka_producev(c->p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(id, strlen(id)),
                                              RD_KAFKA_V_VALUE(buf.base, buf.len),
                                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
  rv_buf_close(&buf);
}

static void produce_marker(cluster_t *c, const char *topic, int32_t partition, int32_t src_p, int64_t next) {
  char errstr[256];
  rv_source_position_t pos = {src_p, next};
  rv_marker_t m = {&pos, 1, rv_wall_ms()};
  rv_buf_t buf = {0};
  if (rv_codec_encode_marker(c->codec, &m, &buf, errstr, sizeof errstr)) fail_msg("encode marker: %s", errstr);
  rd_kafka_headers_t *h = rd_kafka_headers_new(1);
  rd_kafka_header_add(h, RV_KIND_HEADER, -1, RV_KIND_POSITION, -1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      c->p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(RV_MARKER_KEY, strlen(RV_MARKER_KEY)),
      RD_KAFKA_V_VALUE(buf.base, buf.len), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_END);
  if (err) fail_msg("produce marker: %s", rd_kafka_err2str(err));
  rv_buf_close(&buf);
}

static void flush(cluster_t *c) { assert_int_equal(rd_kafka_flush(c->p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR); }

static rv_replica_t *new_replica(const char *brokers, const char *name, int shard, int shards, const char *snapshot,
                                 rv_replica_store_t *store) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.brokers, sizeof conf.brokers, "%s", brokers);
  snprintf(conf.region, sizeof conf.region, "r%d", shard);
  snprintf(conf.collection.name, sizeof conf.collection.name, "%s", name);
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.shard_index = shard;
  conf.shard_count = shards;
  if (snapshot) snprintf(conf.snapshot_path, sizeof conf.snapshot_path, "%s", snapshot);
  if (store) conf.store = *store;
  char errstr[512] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  return r;
}

static void start(rv_replica_t *r) {
  char errstr[512] = "";
  if (rv_replica_start(r, errstr, sizeof errstr)) fail_msg("rv_replica_start: %s", errstr);
}

/* Waits until the replica has read everything there is and holds count vectors. */
static void wait_caught_up(rv_replica_t *r, uint64_t count) {
  rv_replica_stats_t st;
  for (int64_t t0 = rv_mono_ms();; sleep_ms(10)) {
    rv_replica_stats(r, &st);
    if (st.bootstrapped && st.lag == 0 && st.count == count) return;
    if (rv_mono_ms() - t0 > DEADLINE_MS)
      fail_msg("not caught up: count %llu of %llu, lag %lld, bootstrapped %d, boot %s", (unsigned long long)st.count,
               (unsigned long long)count, (long long)st.lag, st.bootstrapped, rv_replica_boot_name(st.boot));
  }
}

static void vec_of(int i, float *v) {
  uint64_t s = (uint64_t)i * 7919 + 1;
  tu_fill(&s, v, DIM);
}

static int has_exact(rv_replica_t *r, const char *id, const float *v) {
  rv_hit_list_t got = {0};
  assert_int_equal(rv_replica_search(r, v, DIM, 1, 0, &got), RV_OK);
  int ok = got.n == 1 && !strcmp(got.hits[0].id, id) && got.hits[0].score == 0;
  rv_hit_list_close(&got);
  return ok;
}

/* ---- markers, lag, readiness, on_applied ---------------------------------- */

typedef struct hook {
  pthread_mutex_t mu;
  int batches, changes;
  uint64_t last_generation;
  int out_of_order;
} hook_t;

static void on_applied(void *ctx, const rv_replica_applied_t *b) {
  hook_t *h = ctx;
  pthread_mutex_lock(&h->mu);
  h->batches++;
  h->changes += b->n;
  if (b->generation < h->last_generation || b->n < 1) h->out_of_order = 1;
  for (int i = 0; i < b->n; i++)
    if (!b->changes[i] || !b->changes[i]->id) h->out_of_order = 1;
  h->last_generation = b->generation;
  pthread_mutex_unlock(&h->mu);
}

static void test_markers_lag_hook(void **state) {
  const char *topic = "m.changelog";
  cluster_t c;
  cluster_start(&c, topic, 3);
  rv_replica_t *r = new_replica(c.bootstraps, "m", 0, 1, NULL, NULL);
  static hook_t h = {.mu = PTHREAD_MUTEX_INITIALIZER};
  rv_replica_set_on_applied(r, on_applied, &h);
  start(r);
  assert_false(rv_replica_ready(r));
  char id[32];
  float v[DIM];
  for (int i = 0; i < 150; i++) {
    snprintf(id, sizeof id, "m-%d", i);
    vec_of(i, v);
    produce_change(&c, topic, id, RV_OP_UPSERT, 0, i, v);
  }
  /* Source partition 0 is published through 150 on two changelog partitions
   * only: the third carried no marker, so the replica cannot claim it. */
  produce_marker(&c, topic, 0, 0, 150);
  produce_marker(&c, topic, 1, 0, 150);
  flush(&c);
  wait_caught_up(r, 150);
  assert_false(rv_replica_visible(r, 0, 0));
  assert_int_equal(rv_replica_wait_visible(r, 0, 0, 100), RV_ERR_TIMEOUT);
  produce_marker(&c, topic, 2, 0, 120); /* the minimum rules */
  flush(&c);
  assert_int_equal(rv_replica_wait_visible(r, 0, 119, DEADLINE_MS), RV_OK);
  assert_false(rv_replica_visible(r, 0, 120));
  produce_marker(&c, topic, 2, 0, 150);
  flush(&c);
  assert_int_equal(rv_replica_wait_visible(r, 0, 149, DEADLINE_MS), RV_OK);
  rv_source_position_t pos[4];
  assert_int_equal(rv_replica_positions(r, pos, 4), 1);
  assert_int_equal(pos[0].partition, 0);
  assert_int_equal(pos[0].next_offset, 150);

  wait_caught_up(r, 150);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.boot, RV_BOOT_REPLAY);
  assert_int_equal(st.rebootstraps, 0);
  assert_true(st.boot_ms >= 0);
  assert_int_equal(st.applied, 150); /* markers are not changes */
  assert_int_equal(st.skipped, 0);
  assert_int_equal(st.lag_ms, 0);
  assert_true(rv_replica_ready(r));
  rv_replica_part_stats_t ps[4];
  assert_int_equal(rv_replica_partition_stats(r, ps, 4), 3);
  int64_t records = 0;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(ps[i].partition, i);
    assert_int_equal(ps[i].lag_records, 0);
    assert_int_equal(ps[i].lag_ms, 0);
    assert_int_equal(ps[i].next_offset, ps[i].high_watermark);
    assert_true(ps[i].event_lag_ms >= 0 && ps[i].event_lag_ms < DEADLINE_MS);
    records += ps[i].high_watermark;
  }
  assert_int_equal(records, 150 + 4);
  pthread_mutex_lock(&h.mu);
  assert_int_equal(h.changes, 150);
  assert_int_equal(h.last_generation, st.generation);
  assert_false(h.out_of_order);
  assert_true(h.batches >= 1);
  pthread_mutex_unlock(&h.mu);
  rv_replica_destroy(r);
  cluster_stop(&c);
}

/* ---- shards ----------------------------------------------------------------- */

static void test_two_shards_split_ids(void **state) {
  const char *topic = "s.changelog";
  cluster_t c;
  cluster_start(&c, topic, 4);
  rv_replica_t *a = new_replica(c.bootstraps, "s", 0, 2, NULL, NULL);
  rv_replica_t *b = new_replica(c.bootstraps, "s", 1, 2, NULL, NULL);
  start(a);
  start(b);
  enum { N = 120 };
  char id[32];
  float v[DIM];
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof id, "s-%d", i);
    vec_of(i, v);
    produce_change(&c, topic, id, RV_OP_UPSERT, 0, i, v);
  }
  flush(&c);
  int in_a = 0;
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof id, "s-%d", i);
    int32_t p = rd_kafka_msg_partitioner_murmur2_random(NULL, id, strlen(id), 4, NULL, NULL);
    in_a += p % 2 == 0;
  }
  assert_true(in_a > 0 && in_a < N);
  wait_caught_up(a, (uint64_t)in_a);
  wait_caught_up(b, (uint64_t)(N - in_a));
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof id, "s-%d", i);
    vec_of(i, v);
    int oa = rv_replica_owns_id(a, id), ob = rv_replica_owns_id(b, id);
    assert_int_equal(oa + ob, 1);
    assert_int_equal(has_exact(oa ? a : b, id, v), 1);
  }
  rv_replica_part_stats_t ps[4];
  assert_int_equal(rv_replica_partition_stats(a, ps, 4), 2);
  assert_int_equal(ps[0].partition, 0);
  assert_int_equal(ps[1].partition, 2);
  assert_int_equal(rv_replica_partition_stats(b, ps, 4), 2);
  assert_int_equal(ps[0].partition, 1);
  assert_int_equal(ps[1].partition, 3);
  rv_replica_destroy(a);
  rv_replica_destroy(b);
  cluster_stop(&c);
}

/* ---- store bootstrap, then catch-up from the marked end offsets ------------ */

typedef struct pg {
  int n;
  int loads;
} pg_t;

static rv_err_t pg_load(void *ctx, rv_replica_load_t *l, char *errstr, size_t errstr_size) {
  pg_t *s = ctx;
  s->loads++;
  rv_err_t err = rv_replica_load_mark_end(l, errstr, errstr_size);
  if (err) return err;
  rv_source_position_t pos = {0, s->n};
  rv_replica_load_positions(l, &pos, 1);
  for (int i = 0; i < s->n; i++) {
    char id[32];
    float v[DIM];
    snprintf(id, sizeof id, "p-%d", i);
    vec_of(i, v);
    rv_change_t c;
    rv_change_init(&c);
    c.id = id;
    c.op = RV_OP_UPSERT;
    c.src_offset = i;
    c.vector = v;
    c.dim = DIM;
    c.attributes = "{\"from\":\"store\"}";
    if ((err = rv_replica_load_put(l, &c))) return err;
  }
  return RV_OK;
}

static void test_store_then_catch_up(void **state) {
  const char *topic = "p.changelog";
  cluster_t c;
  cluster_start(&c, topic, 2);
  char id[32];
  float v[DIM];
  for (int i = 0; i < 50; i++) { /* what the store also holds */
    snprintf(id, sizeof id, "p-%d", i);
    vec_of(i, v);
    produce_change(&c, topic, id, RV_OP_UPSERT, 0, i, v);
  }
  flush(&c);
  static pg_t pg = {.n = 50};
  rv_replica_store_t store = {.load = pg_load, .ctx = &pg};
  rv_replica_t *r = new_replica(c.bootstraps, "p", 0, 1, NULL, &store);
  start(r);
  wait_caught_up(r, 50);
  for (int i = 0; i < 10; i++) { /* after the end offsets marked: caught up */
    snprintf(id, sizeof id, "p-%d", i);
    vec_of(1000 + i, v);
    produce_change(&c, topic, id, RV_OP_UPSERT, 0, 100 + i, v);
  }
  flush(&c);
  for (int64_t t0 = rv_mono_ms();; sleep_ms(10)) {
    vec_of(1009, v);
    if (has_exact(r, "p-9", v)) break;
    if (rv_mono_ms() - t0 > DEADLINE_MS) fail_msg("catch-up did not apply p-9's update");
  }
  wait_caught_up(r, 50);
  rv_replica_stats_t st;
  /* p-9's update is in, the other nine may be on the other partition still. */
  for (int64_t t0 = rv_mono_ms();; sleep_ms(10)) {
    rv_replica_stats(r, &st);
    if (st.applied >= 60) break;
    if (rv_mono_ms() - t0 > DEADLINE_MS) fail_msg("catch-up applied %llu of 60", (unsigned long long)st.applied);
  }
  assert_int_equal(st.boot, RV_BOOT_STORE);
  assert_int_equal(st.rebootstraps, 0);
  assert_int_equal(pg.loads, 1);
  /* 50 rows put, then only the 10 changes after the marked end: the 50
   * older records were never read again. */
  assert_int_equal(st.applied, 60);
  for (int i = 0; i < 50; i++) {
    snprintf(id, sizeof id, "p-%d", i);
    vec_of(i < 10 ? 1000 + i : i, v);
    assert_int_equal(has_exact(r, id, v), 1);
  }
  assert_true(rv_replica_visible(r, 0, 49));
  rv_replica_destroy(r);
  cluster_stop(&c);
}

/* ---- a log that no longer holds the replica's offsets ----------------------- */

static void test_reset_rebootstraps(void **state) {
  char path[] = "/tmp/rv_test_replica_stream_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  unlink(path);
  const char *topic = "g.changelog";
  char id[32];
  float v[DIM];
  {
    cluster_t c;
    cluster_start(&c, topic, 1);
    rv_replica_t *r = new_replica(c.bootstraps, "g", 0, 1, path, NULL);
    start(r);
    for (int i = 0; i < 30; i++) {
      snprintf(id, sizeof id, "old-%d", i);
      vec_of(i, v);
      produce_change(&c, topic, id, RV_OP_UPSERT, 0, i, v);
    }
    flush(&c);
    wait_caught_up(r, 30);
    rv_replica_destroy(r); /* saves the snapshot: offset 30 */
    cluster_stop(&c);
  }
  /* The topic "recreated": a new log with fewer records than the offset. */
  cluster_t c;
  cluster_start(&c, topic, 1);
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "new-%d", i);
    vec_of(500 + i, v);
    produce_change(&c, topic, id, RV_OP_UPSERT, 0, i, v);
  }
  flush(&c);
  rv_replica_t *r = new_replica(c.bootstraps, "g", 0, 1, path, NULL);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.boot, RV_BOOT_SNAPSHOT);
  assert_int_equal(st.count, 30);
  start(r);
  for (int64_t t0 = rv_mono_ms();; sleep_ms(10)) {
    rv_replica_stats(r, &st);
    if (st.rebootstraps >= 1 && st.boot == RV_BOOT_REPLAY && st.count == 5 && st.lag == 0) break;
    if (rv_mono_ms() - t0 > DEADLINE_MS)
      fail_msg("no re-bootstrap: rebootstraps %llu, boot %s, count %llu", (unsigned long long)st.rebootstraps,
               rv_replica_boot_name(st.boot), (unsigned long long)st.count);
  }
  assert_int_equal(st.rebootstraps, 1);
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "new-%d", i);
    vec_of(500 + i, v);
    assert_int_equal(has_exact(r, id, v), 1);
  }
  vec_of(3, v);
  assert_int_equal(has_exact(r, "old-3", v), 0);
  rv_replica_destroy(r);
  cluster_stop(&c);
  unlink(path);
}

/* ---- periodic snapshots, written in the background ---------------------- */

static void test_background_snapshot(void **state) {
  char path[] = "/tmp/rv_test_replica_bg_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  unlink(path);
  const char *topic = "b.changelog";
  cluster_t c;
  cluster_start(&c, topic, 2);
  rv_replica_conf_t conf = {0};
  snprintf(conf.brokers, sizeof conf.brokers, "%s", c.bootstraps);
  snprintf(conf.collection.name, sizeof conf.collection.name, "b");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  snprintf(conf.snapshot_path, sizeof conf.snapshot_path, "%s", path);
  conf.snapshot_interval_s = 1;
  char errstr[512];
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  assert_non_null(r);
  start(r);
  char id[32];
  float v[DIM];
  for (int i = 0; i < 200; i++) {
    snprintf(id, sizeof id, "b-%d", i);
    vec_of(i, v);
    produce_change(&c, topic, id, RV_OP_UPSERT, 0, i, v);
  }
  flush(&c);
  wait_caught_up(r, 200);
  rv_replica_stats_t st;
  for (int64_t t0 = rv_mono_ms();; sleep_ms(20)) {
    rv_replica_stats(r, &st);
    if (st.snapshot_ms >= 0 && access(path, F_OK) == 0) break;
    if (rv_mono_ms() - t0 > DEADLINE_MS) fail_msg("no periodic snapshot written");
  }
  assert_true(st.snapshot_pause_ms >= 0 && st.snapshot_pause_ms <= st.snapshot_ms);
  print_message("snapshot: applies paused %lld ms of %lld ms\n", (long long)st.snapshot_pause_ms,
                (long long)st.snapshot_ms);
  /* The file written while the replica runs is a whole one. */
  rv_hnsw_t *h = NULL;
  rv_attrs_t *a = NULL;
  void *blob = NULL;
  size_t blob_len = 0;
  assert_int_equal(rv_snapshot_load(path, NULL, &h, &a, &blob, &blob_len, errstr, sizeof errstr), RV_OK);
  assert_true(rv_hnsw_count(h) > 0 && rv_hnsw_count(h) <= 200);
  assert_true(blob_len > 0);
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  free(blob);
  rv_replica_destroy(r);
  cluster_stop(&c);
  unlink(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_markers_lag_hook),
      cmocka_unit_test(test_two_shards_split_ids),
      cmocka_unit_test(test_store_then_catch_up),
      cmocka_unit_test(test_reset_rebootstraps),
      cmocka_unit_test(test_background_snapshot),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
