/* When the DLQ cannot be written, ingest stops rather than drop anything: a
 * real private PostgreSQL and an in-process mock cluster whose DLQ partition
 * is made leaderless (rd_kafka_mock_partition_set_leader -1). A rejected
 * record and the good records after it are then not committed (no rows, no
 * stored offsets) while ingest retries (rv_ingest_retries_total{what="kafka"}
 * grows); once the partition has a leader again, the dead letter is confirmed
 * and every good record is stored. Also checks the ingest metrics. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_metrics.h"
#include "rv_time.h"

#define COLL "dlqt"

static struct {
  char dir[64];
  rv_pg_server_t *pg;
  PGconn *db;
  rd_kafka_t *mock_rk, *producer;
  rd_kafka_mock_cluster_t *mock;
  rv_metrics_t *metrics;
  rv_ingest_t *ingest;
} T;

static void produce_json(const char *json) {
  if (rd_kafka_producev(T.producer, RD_KAFKA_V_TOPIC(COLL ".vectors"), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_VALUE((void *)json, strlen(json)), RD_KAFKA_V_END))
    fail_msg("produce failed");
  if (rd_kafka_flush(T.producer, 10000)) fail_msg("flush failed");
}

static long long query_int(const char *sql) {
  PGresult *r = PQexec(T.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(T.db));
  long long v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

static uint64_t counter(const char *name, const char *label, const char *value) {
  rv_series_t *s = rv_metrics_counter(T.metrics, name, "", (const char *const[]){"collection", COLL, label, value, NULL});
  return rv_counter_value(s);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Polls until ingest has ingested and dead-lettered at least these many, or fails after timeout_ms. */
static void wait_stats(uint64_t ingested, uint64_t dead, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  rv_ingest_stats_t s;
  for (;;) {
    rv_ingest_stats(T.ingest, &s);
    if (s.ingested >= ingested && s.dead_lettered >= dead) return;
    if (rv_mono_ms() > deadline)
      fail_msg("timed out: ingested %llu (want %llu), dead-lettered %llu (want %llu)", (unsigned long long)s.ingested,
               (unsigned long long)ingested, (unsigned long long)s.dead_lettered, (unsigned long long)dead);
    sleep_ms(50);
  }
}

static int setup(void **state) {
  (void)state;
  char e[1024];
  snprintf(T.dir, sizeof T.dir, "/tmp/rv-dlq-XXXXXX");
  if (!mkdtemp(T.dir) || chmod(T.dir, 0755)) return -1;
  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  T.db = PQconnectdb(rv_pg_server_conninfo(T.pg));
  if (PQstatus(T.db) != CONNECTION_OK) return -1;
  if (!(T.mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, rd_kafka_conf_new(), e, sizeof e)) ||
      !(T.mock = rd_kafka_mock_cluster_new(T.mock_rk, 3)) ||
      rd_kafka_mock_topic_create(T.mock, COLL ".vectors", 1, 1) ||
      rd_kafka_mock_topic_create(T.mock, COLL ".changelog", 1, 1) || rd_kafka_mock_topic_create(T.mock, COLL ".dlq", 1, 1))
    return -1;
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(T.mock), e, sizeof e) ||
      !(T.producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e)))
    return -1;
  if (!(T.metrics = rv_metrics_new())) return -1;

  rv_ingest_conf_t conf;
  memset(&conf, 0, sizeof conf);
  snprintf(conf.brokers, sizeof conf.brokers, "%s", rd_kafka_mock_cluster_bootstraps(T.mock));
  snprintf(conf.pg_conninfo, sizeof conf.pg_conninfo, "%s", rv_pg_server_conninfo(T.pg));
  snprintf(conf.collection.name, sizeof conf.collection.name, COLL);
  conf.collection.dim = 4;
  conf.collection.partitions = 1;
  conf.batch_rows = 100;
  conf.batch_ms = 20;
  conf.sq8_train = 1;
  conf.metrics = T.metrics;
  rv_ingest_conf_defaults(&conf);
  if (rv_ingest_migrate(&conf, e, sizeof e) || !(T.ingest = rv_ingest_new(&conf, e, sizeof e)) ||
      rv_ingest_start(T.ingest, e, sizeof e)) {
    print_error("ingest: %s\n", e);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rv_ingest_destroy(T.ingest);
  rv_metrics_destroy(T.metrics);
  if (T.producer) rd_kafka_destroy(T.producer);
  if (T.mock) rd_kafka_mock_cluster_destroy(T.mock);
  if (T.mock_rk) rd_kafka_destroy(T.mock_rk);
  PQfinish(T.db);
  rv_pg_server_stop(T.pg);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", T.dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_dlq_down_stops_consuming(void **state) {
  (void)state;
  produce_json("{\"id\":\"good-0\",\"vector\":[1,2,3,4]}");
  wait_stats(1, 0, 60000); /* the group is joined and a batch committed */
  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL));
  long long offsets_before = query_int("SELECT coalesce(sum(next_offset), 0) FROM rv_offsets");
  assert_int_equal(1, offsets_before);

  /* The DLQ partition loses its leader: dead letters cannot be delivered. */
  assert_int_equal(0, rd_kafka_mock_partition_set_leader(T.mock, COLL ".dlq", 0, -1));
  produce_json("{\"id\":\"bad-1\",\"vector\":[1,2,3]}"); /* wrong_dim */
  for (int i = 1; i <= 5; i++) {
    char j[96];
    snprintf(j, sizeof j, "{\"id\":\"good-%d\",\"vector\":[%d,2,3,4]}", i, i);
    produce_json(j);
  }
  /* Wait until ingest has failed to confirm the dead letter at least twice... */
  int64_t deadline = rv_mono_ms() + 90000;
  while (counter("rv_ingest_retries_total", "what", "kafka") < 2) {
    if (rv_mono_ms() > deadline) fail_msg("ingest never retried the DLQ");
    sleep_ms(100);
  }
  /* ...and meanwhile committed nothing after it: no rows, no offsets, no counts. */
  rv_ingest_stats_t s;
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(1, s.ingested);
  assert_int_equal(0, s.dead_lettered);
  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL));
  assert_int_equal(offsets_before, query_int("SELECT coalesce(sum(next_offset), 0) FROM rv_offsets"));
  assert_int_equal(0, counter("rv_ingest_records_dead_lettered_total", "reason", "wrong_dim"));

  /* The DLQ comes back: the dead letter is confirmed, the good records stored. */
  assert_int_equal(0, rd_kafka_mock_partition_set_leader(T.mock, COLL ".dlq", 0, 1));
  wait_stats(6, 1, 90000);
  assert_int_equal(6, query_int("SELECT count(*) FROM " COLL));
  assert_int_equal(0, query_int("SELECT count(*) FROM " COLL " WHERE id = 'bad-1'"));
  assert_int_equal(7, query_int("SELECT coalesce(sum(next_offset), 0) FROM rv_offsets"));
  assert_int_equal(1, counter("rv_ingest_records_dead_lettered_total", "reason", "wrong_dim"));
  assert_int_equal(6, rv_counter_value(rv_metrics_counter(T.metrics, "rv_ingest_records_ingested_total", "",
                                                          (const char *const[]){"collection", COLL, NULL})));

  /* The dead letter is in the DLQ topic with its reason. */
  char e[512];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  rd_kafka_conf_set(c, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(T.mock), e, sizeof e);
  rd_kafka_conf_set(c, "group.id", "test-dlq-reader", e, sizeof e);
  rd_kafka_conf_set(c, "auto.offset.reset", "earliest", e, sizeof e);
  rd_kafka_t *consumer = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
  assert_non_null(consumer);
  rd_kafka_poll_set_consumer(consumer);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, COLL ".dlq", 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(0, rd_kafka_assign(consumer, parts));
  rd_kafka_topic_partition_list_destroy(parts);
  int found = 0;
  deadline = rv_mono_ms() + 30000;
  while (!found && rv_mono_ms() < deadline) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 200);
    if (!m) continue;
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;
    if (!m->err && !rd_kafka_message_headers(m, &h) && !rd_kafka_header_get_last(h, "rv.error.code", &v, &len)) {
      assert_int_equal(9, len);
      assert_memory_equal("wrong_dim", v, 9);
      found = 1;
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(consumer);
  rd_kafka_destroy(consumer);
  assert_true(found);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_dlq_down_stops_consuming)};
  return cmocka_run_group_tests_name("dlq", tests, setup, teardown);
}
