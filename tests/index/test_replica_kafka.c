/* rv_replica's applier against librdkafka's in-process mock cluster: it finds
 * the changelog topic once it exists, applies every partition from the
 * beginning, ignores re-delivered versions, skips garbage, and ends up equal
 * to a brute force over the expected final set. */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_record.h"
#include "rv_replica.h"
#include "rv_time.h"

#define DIM 16
#define N_IDS 150
#define N_RECORDS 500
#define DEADLINE_MS 60000

typedef struct cluster {
  rd_kafka_t *owner; /* the handle the mock cluster lives in */
  rd_kafka_mock_cluster_t *mc;
  const char *bootstraps;
} cluster_t;

static void cluster_start(cluster_t *c) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr); /* it has no bootstrap.servers, on purpose */
  c->owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!c->owner) fail_msg("rd_kafka_new: %s", errstr);
  c->mc = rd_kafka_mock_cluster_new(c->owner, 3);
  assert_non_null(c->mc);
  c->bootstraps = rd_kafka_mock_cluster_bootstraps(c->mc);
}

static void cluster_stop(cluster_t *c) {
  rd_kafka_mock_cluster_destroy(c->mc);
  rd_kafka_destroy(c->owner);
}

static rv_replica_t *start_replica(const char *brokers, const char *name) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.brokers, sizeof conf.brokers, "%s", brokers);
  snprintf(conf.region, sizeof conf.region, "test-region");
  snprintf(conf.collection.name, sizeof conf.collection.name, "%s", name);
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  char errstr[512] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  if (rv_replica_start(r, errstr, sizeof errstr)) fail_msg("rv_replica_start: %s", errstr);
  assert_int_equal(rv_replica_start(r, errstr, sizeof errstr), RV_ERR_STATE); /* once only */
  return r;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Destroy must not wait for anything but the current poll. */
static void destroy_promptly(rv_replica_t *r) {
  int64_t t0 = rv_mono_ms();
  rv_replica_destroy(r);
  int64_t took = rv_mono_ms() - t0;
  if (took > 3000) fail_msg("rv_replica_destroy took %lld ms", (long long)took);
  print_message("rv_replica_destroy took %lld ms\n", (long long)took);
}

static void test_destroy_while_topic_missing(void **state) {
  cluster_t c;
  cluster_start(&c);
  rv_replica_t *r = start_replica(c.bootstraps, "missing");
  for (int64_t t0 = rv_mono_ms(); rv_mono_ms() - t0 < 700; sleep_ms(20)) {
    rv_replica_stats_t st;
    rv_replica_stats(r, &st);
    assert_int_equal(st.applied, 0);
    assert_int_equal(st.lag, -1);
  }
  destroy_promptly(r);
  cluster_stop(&c);
}

/* What the replica should end up holding. */
typedef struct expected {
  char ids[N_IDS][16];
  float vecs[N_IDS][DIM];
  char meta[N_IDS][32];
  int has_meta[N_IDS];
  int live[N_IDS];
} expected_t;

static void produce(rd_kafka_t *p, const char *topic, int32_t partition, const char *key, const void *value,
                    size_t len) {
  rd_kafka_resp_err_t err = rd_kafka_producev(
      p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(key, strlen(key)),
      RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
}

static void test_applies_changelog(void **state) {
  cluster_t c;
  cluster_start(&c);
  const char *topic = "docs.changelog";

  /* The replica starts before its topic exists and must keep looking. */
  rv_replica_t *r = start_replica(c.bootstraps, "docs");
  for (int64_t t0 = rv_mono_ms(); rv_mono_ms() - t0 < 700; sleep_ms(20)) {
    rv_replica_stats_t st;
    rv_replica_stats(r, &st);
    assert_int_equal(st.applied, 0);
    assert_int_equal(st.lag, -1);
  }
  assert_int_equal(rd_kafka_mock_topic_create(c.mc, topic, 3, 1), RD_KAFKA_RESP_ERR_NO_ERROR);

  char errstr[512];
  rd_kafka_conf_t *pconf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(pconf, "bootstrap.servers", c.bootstraps, errstr, sizeof errstr),
                   RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(pconf, "enable.idempotence", "true", errstr, sizeof errstr), RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(pconf, "linger.ms", "5", errstr, sizeof errstr), RD_KAFKA_CONF_OK);
  rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, sizeof errstr);
  if (!p) fail_msg("producer: %s", errstr);
  pconf = NULL; /* now owned by p */
  rv_codec_t *codec = rv_codec_new(errstr, sizeof errstr);
  if (!codec) fail_msg("rv_codec_new: %s", errstr);

  static expected_t want;
  memset(&want, 0, sizeof want);
  for (int i = 0; i < N_IDS; i++) snprintf(want.ids[i], sizeof want.ids[i], "doc-%03d", i);
  int64_t src_off[3] = {0};
  uint64_t seed = 2024, generation = 0;
  rv_buf_t redelivered = {0}, last = {0};
  const char *last_key = NULL;
  for (int n = 0; n < N_RECORDS; n++) {
    int i = (int)(tu_next(&seed) % N_IDS);
    int del = tu_next(&seed) % 6 == 0;
    float vec[DIM];
    tu_fill(&seed, vec, DIM);
    char meta[32];
    snprintf(meta, sizeof meta, "{\"n\":%d}", n);
    rv_change_t ch;
    rv_change_init(&ch);
    ch.id = want.ids[i];
    ch.op = del ? RV_OP_DELETE : RV_OP_UPSERT;
    ch.src_partition = i % 3; /* as ingest would see it: source partition by key */
    ch.src_offset = src_off[i % 3]++;
    ch.vector = del ? NULL : vec;
    ch.dim = del ? 0 : DIM;
    ch.attributes = del || n % 4 == 0 ? NULL : meta;
    ch.created_at_ms = 1700000000000;
    rv_buf_t buf = {0};
    if (rv_codec_encode_change(codec, &ch, &buf, errstr, sizeof errstr)) fail_msg("encode: %s", errstr);
    /* Garbage midway: a record cut short, in a partition with more to come.
     * (Not random bytes: Avro-C trusts a string's length prefix and would
     * try to allocate whatever it says.) */
    if (n == N_RECORDS / 2) produce(p, topic, 0, "garbage", buf.base, buf.len / 2);
    /* Unassigned partition: the key picks it, so an id's changes stay in order. */
    produce(p, topic, RD_KAFKA_PARTITION_UA, want.ids[i], buf.base, buf.len);

    if (del ? want.live[i] : 1) generation++;
    want.live[i] = !del;
    if (!del) {
      memcpy(want.vecs[i], vec, sizeof vec);
      want.has_meta[i] = ch.attributes != NULL;
      snprintf(want.meta[i], sizeof want.meta[i], "%s", meta);
    }
    if (n == 100) rv_buf_append(&redelivered, buf.base, buf.len);
    if (n == N_RECORDS - 1) {
      rv_buf_append(&last, buf.base, buf.len);
      last_key = want.ids[i];
    }
    rv_buf_close(&buf);
  }
  /* Re-deliveries, as after a producer retry or an ingest crash: an older
   * version (record 100's id has likely moved on) and an equal one. */
  rv_change_t old;
  assert_int_equal(rv_codec_decode_change(codec, redelivered.base, redelivered.len, &old, errstr, sizeof errstr),
                   RV_OK);
  produce(p, topic, RD_KAFKA_PARTITION_UA, old.id, redelivered.base, redelivered.len);
  produce(p, topic, RD_KAFKA_PARTITION_UA, last_key, last.base, last.len);
  const uint64_t total = N_RECORDS + 2;
  rv_change_close(&old);
  rv_buf_close(&redelivered);
  rv_buf_close(&last);
  assert_int_equal(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);

  rv_replica_stats_t st = {0};
  int64_t t0 = rv_mono_ms();
  for (;;) {
    rv_replica_stats(r, &st);
    if (st.applied >= total && st.skipped >= 1 && st.lag == 0) break;
    if (rv_mono_ms() - t0 > DEADLINE_MS)
      fail_msg("after %d ms: applied %llu of %llu, skipped %llu, lag %lld", DEADLINE_MS,
               (unsigned long long)st.applied, (unsigned long long)total, (unsigned long long)st.skipped,
               (long long)st.lag);
    sleep_ms(20);
  }
  print_message("caught up in %lld ms\n", (long long)(rv_mono_ms() - t0));
  assert_int_equal(st.applied, total);
  assert_int_equal(st.skipped, 1);
  assert_int_equal(st.generation, generation);

  tu_item_t items[N_IDS];
  size_t n_live = 0;
  for (int i = 0; i < N_IDS; i++)
    if (want.live[i]) items[n_live++] = (tu_item_t){want.ids[i], want.vecs[i], want.has_meta[i] ? want.meta[i] : NULL};
  assert_int_equal(st.count, n_live);
  for (int t = 0; t < 5; t++) {
    float q[DIM];
    tu_fill(&seed, q, DIM);
    int ks[] = {1, 10, (int)n_live + 5};
    for (int j = 0; j < 3; j++) {
      rv_hit_list_t got = {0};
      assert_int_equal(rv_replica_search(r, q, DIM, ks[j], 0, &got), RV_OK);
      tu_check_hits(&got, items, n_live, RV_METRIC_L2, q, DIM, ks[j]);
      rv_hit_list_close(&got);
    }
  }

  destroy_promptly(r);
  rv_codec_destroy(codec);
  rd_kafka_destroy(p);
  cluster_stop(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_destroy_while_topic_missing),
      cmocka_unit_test(test_applies_changelog),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
