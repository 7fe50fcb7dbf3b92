#define _GNU_SOURCE
/* Ingest end to end against a real private PostgreSQL (rv_embedded) and an
 * in-process librdkafka mock cluster: good, bad, updated and deleted records
 * in; rows, partitions, offsets, dead letters and changes out; then a second
 * instance that must resume from the offsets stored in PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ingest_fixture.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_record.h"
#include "rv_time.h"

#define COLL "items"
#define DIM 8
#define N_ITEMS 1000
#define N_UPDATES 10
#define DAY_MS INT64_C(86400000)
#define OLD_MONTH_ITEM_EVERY 100 /* item-0000, item-0100, ...: event time 200 days ago */
#define BLOCKED_ITEM 5           /* event time in a month the default partition already holds */

typedef struct bad {
  char key[600];
  const char *code;
  rv_buf_t value; /* the original bytes */
  int seen;
} bad_t;

static struct {
  char dir[64];
  rv_pg_server_t *pg;
  rd_kafka_t *mock_rk;
  rd_kafka_mock_cluster_t *mock;
  char brokers[512];
  rd_kafka_t *producer;
  rv_codec_t *codec;
  rv_ingest_conf_t conf;
  rv_ingest_t *ingest;
  PGconn *db;
  uint64_t produced;
  int64_t now_ms;
  float vectors[N_ITEMS][DIM]; /* latest vector of item-%04d */
  float first[N_ITEMS][DIM];   /* first vector (kept by a delete) */
  bad_t bad[12];
  int n_bad;
} T;

/* ---- helpers ---- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static void item_id(char *out, size_t n, int i) { snprintf(out, n, "item-%04d", i); }

static void fill_vector(float *v, int i, float salt) {
  for (int k = 0; k < DIM; k++) v[k] = (float)i + (float)k * 0.125f + salt;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk, (void)opaque;
  if (m->err) fprintf(stderr, "test producer: delivery failed: %s\n", rd_kafka_err2str(m->err));
}

static void produce(const void *key, size_t key_len, const void *value, size_t value_len) {
  rd_kafka_resp_err_t err;
  while ((err = rd_kafka_producev(T.producer, RD_KAFKA_V_TOPIC(COLL ".vectors"),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
                                  RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_END)) ==
         RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(T.producer, 10);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
  T.produced++;
}

static void flush_producer(void) {
  rd_kafka_resp_err_t err = rd_kafka_flush(T.producer, 30000);
  if (err) fail_msg("flush: %s (%d still queued)", rd_kafka_err2str(err), rd_kafka_outq_len(T.producer));
}

/* Appends the encoding (optionally Confluent-framed) of one vector record to out. */
static void encode_record(const char *id, size_t id_len, rv_op_t op, const float *v, int dim, const char *meta,
                          int64_t event_time, int confluent_id, rv_buf_t *out) {
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  r.id = (char *)id;
  r.id_len = id_len;
  r.op = op;
  r.vector = (float *)v;
  r.dim = v ? dim : 0;
  r.metadata = (char *)meta;
  r.has_event_time = event_time > 0;
  r.event_time_ms = event_time;
  if (confluent_id) assert_int_equal(RV_OK, rv_confluent_put_header(out, (uint32_t)confluent_id));
  char e[256];
  if (rv_codec_encode_vector(T.codec, &r, out, e, sizeof e)) fail_msg("encode %.20s: %s", id, e);
}

/* Encodes and produces one vector record keyed by its id; keeps a copy of the value in keep if set. */
static void produce_record(const char *id, size_t id_len, rv_op_t op, const float *v, int dim, const char *meta,
                           int64_t event_time, int confluent_id, rv_buf_t *keep) {
  rv_buf_t b;
  rv_buf_init(&b);
  encode_record(id, id_len, op, v, dim, meta, event_time, confluent_id, &b);
  produce(id, id_len, b.base, b.len);
  if (keep) rv_buf_append(keep, b.base, b.len);
  rv_buf_close(&b);
}

static bad_t *add_bad(const char *key, const char *code) {
  bad_t *b = &T.bad[T.n_bad++];
  snprintf(b->key, sizeof b->key, "%s", key);
  b->code = code;
  rv_buf_init(&b->value);
  return b;
}

static void produce_bad_raw(bad_t *b) { produce(b->key, strlen(b->key), b->value.base, b->value.len); }

/* Waits (bounded) until ingest has accounted for `want` messages. */
static void wait_accounted(rv_ingest_t *in, uint64_t want, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  rv_ingest_stats_t s;
  for (;;) {
    rv_ingest_stats(in, &s);
    if (s.ingested + s.dead_lettered >= want) return;
    if (rv_mono_ms() > deadline)
      fail_msg("after %d ms: ingested %llu + dead-lettered %llu = %llu, expected %llu (consumed %llu, retries %llu)",
               timeout_ms, (unsigned long long)s.ingested, (unsigned long long)s.dead_lettered,
               (unsigned long long)(s.ingested + s.dead_lettered), (unsigned long long)want,
               (unsigned long long)s.consumed, (unsigned long long)s.retries);
    usleep(50 * 1000);
  }
}

static PGresult *query(const char *sql, int binary) {
  PGresult *r = PQexecParams(T.db, sql, 0, NULL, NULL, NULL, NULL, binary);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(T.db));
  return r;
}

static long long query_int(const char *sql) {
  PGresult *r = query(sql, 0);
  if (PQntuples(r) != 1) fail_msg("%s: %d rows, expected 1", sql, PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* Partition names: pg_partman's <c>_pYYYY_MM when it manages the table (it
 * is installed), ingest's own <c>_pYYYYMM otherwise. */
static int partman_named(void) {
  return query_int("SELECT count(*) FROM pg_inherits WHERE inhparent = '" COLL "'::regclass "
                   "AND inhrelid::regclass::text ~ '_p[0-9]{4}_[0-9]{2}$'") > 0;
}

static void month_name(char *out, size_t n, int64_t ms) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  snprintf(out, n, partman_named() ? COLL "_p%04d_%02d" : COLL "_p%04d%02d", tm.tm_year + 1900, tm.tm_mon + 1);
}

static rd_kafka_t *make_reader(void) {
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  char e[256];
  char group[64];
  snprintf(group, sizeof group, "test-reader-%d", (int)getpid());
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.brokers, e, sizeof e) ||
      rd_kafka_conf_set(c, "group.id", group, e, sizeof e) ||
      rd_kafka_conf_set(c, "enable.auto.commit", "false", e, sizeof e))
    fail_msg("reader conf: %s", e);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
  if (!rk) fail_msg("reader: %s", e);
  rd_kafka_poll_set_consumer(rk);
  return rk;
}

/* Calls fn on every message of topic's partitions [0, n_parts) up to their high watermarks. */
static void read_topic(const char *topic, int n_parts, void (*fn)(rd_kafka_message_t *, void *), void *arg) {
  rd_kafka_t *rk = make_reader();
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(n_parts);
  int64_t high[16], pos[16];
  for (int p = 0; p < n_parts; p++) {
    int64_t low;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, topic, p, &low, &high[p], 10000);
    if (err) fail_msg("watermarks %s [%d]: %s", topic, p, rd_kafka_err2str(err));
    pos[p] = 0;
    rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  int64_t deadline = rv_mono_ms() + 30000;
  for (;;) {
    int done = 1;
    for (int p = 0; p < n_parts; p++) done &= pos[p] >= high[p];
    if (done) break;
    if (rv_mono_ms() > deadline) fail_msg("reading %s timed out", topic);
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
    if (!m) continue;
    if (!m->err) {
      pos[m->partition] = m->offset + 1;
      fn(m, arg);
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
}

/* ---- fixture ---- */

static int setup(void **state) {
  (void)state;
  char e[1024];
  snprintf(T.dir, sizeof T.dir, "/tmp/rv-ingest-XXXXXX");
  if (!mkdtemp(T.dir) || chmod(T.dir, 0755)) return -1; /* the postgres user must reach it when we are root */
  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  if (!(T.db = PQconnectdb(rv_pg_server_conninfo(T.pg))) || PQstatus(T.db) != CONNECTION_OK) {
    print_error("connect: %s\n", PQerrorMessage(T.db));
    return -1;
  }

  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (!(T.mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) {
    print_error("mock handle: %s\n", e);
    return -1;
  }
  if (!(T.mock = rd_kafka_mock_cluster_new(T.mock_rk, 3))) {
    print_error("mock cluster failed\n");
    return -1;
  }
  snprintf(T.brokers, sizeof T.brokers, "%s", rd_kafka_mock_cluster_bootstraps(T.mock));
  if (rd_kafka_mock_topic_create(T.mock, COLL ".vectors", 3, 1) ||
      rd_kafka_mock_topic_create(T.mock, COLL ".changelog", 3, 1) ||
      rd_kafka_mock_topic_create(T.mock, COLL ".dlq", 1, 1)) {
    print_error("mock topics failed\n");
    return -1;
  }

  c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.brokers, e, sizeof e) ||
      rd_kafka_conf_set(c, "enable.idempotence", "true", e, sizeof e) ||
      rd_kafka_conf_set(c, "partitioner", "murmur2_random", e, sizeof e)) {
    print_error("producer conf: %s\n", e);
    return -1;
  }
  rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
  if (!(T.producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) {
    print_error("producer: %s\n", e);
    return -1;
  }
  if (!(T.codec = rv_codec_new(e, sizeof e))) {
    print_error("codec: %s\n", e);
    return -1;
  }

  memset(&T.conf, 0, sizeof T.conf);
  snprintf(T.conf.brokers, sizeof T.conf.brokers, "%s", T.brokers);
  snprintf(T.conf.pg_conninfo, sizeof T.conf.pg_conninfo, "%s", rv_pg_server_conninfo(T.pg));
  snprintf(T.conf.collection.name, sizeof T.conf.collection.name, COLL);
  T.conf.collection.dim = DIM;
  T.conf.collection.schema_id = 1;
  T.conf.batch_rows = 200;
  /* Until the SQ8 quantizer is trained the first batch grows past batch_rows;
   * training on 100 vectors keeps every batch within the 200 rows this test's
   * updates and deletes assume (an update in a later batch than its upsert). */
  T.conf.sq8_train = 100;
  T.conf.batch_ms = 50;
  rv_ingest_conf_defaults(&T.conf);
  T.now_ms = rv_wall_ms();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rv_ingest_destroy(T.ingest);
  T.ingest = NULL;
  if (T.producer) rd_kafka_destroy(T.producer);
  if (T.mock) rd_kafka_mock_cluster_destroy(T.mock);
  if (T.mock_rk) rd_kafka_destroy(T.mock_rk);
  rv_codec_destroy(T.codec);
  for (int i = 0; i < T.n_bad; i++) rv_buf_close(&T.bad[i].value);
  if (T.db) PQfinish(T.db);
  rv_pg_server_stop(T.pg);
  if (T.dir[0] && strncmp(T.dir, "/tmp/rv-ingest-", 15) == 0) nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* ---- tests ---- */

static void *migrate_thread(void *arg) {
  char e[512];
  rv_err_t err = rv_ingest_migrate(&T.conf, e, sizeof e);
  if (err) fprintf(stderr, "migrate: %s\n", e);
  *(rv_err_t *)arg = err;
  return NULL;
}

static void test_migrate_concurrent_and_idempotent(void **state) {
  (void)state;
  pthread_t th[4];
  rv_err_t rc[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, migrate_thread, &rc[i]);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 4; i++) assert_int_equal(RV_OK, rc[i]);
  char e[512];
  assert_int_equal(RV_OK, rv_ingest_migrate(&T.conf, e, sizeof e));
  char name[64], sql[256];
  for (int d = -1; d <= 3; d++) { /* previous month to +3 */
    time_t t = (time_t)(T.now_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    int m = tm.tm_year * 12 + tm.tm_mon + d;
    snprintf(name, sizeof name, partman_named() ? COLL "_p%04d_%02d" : COLL "_p%04d%02d", m / 12 + 1900, m % 12 + 1);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('%s')", name);
    if (query_int(sql) != 1) fail_msg("partition %s missing after migrate", name);
  }
  assert_int_equal(1, query_int("SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('" COLL
                                "_default')"));
  assert_int_equal(3, query_int("SELECT count(*) FROM pg_indexes WHERE tablename = '" COLL
                                "' AND (indexdef LIKE '%jsonb_path_ops%' OR indexdef LIKE '%WHERE (deleted_at IS NULL)%')"));
}

static void test_ingest_end_to_end(void **state) {
  (void)state;
  char id[64], meta[64], e[512];
  const int64_t old_event = T.now_ms - 200 * DAY_MS;
  const int64_t blocked_event = T.now_ms - 400 * DAY_MS;
  char old_part[64], blocked_part[64];
  month_name(old_part, sizeof old_part, old_event);
  month_name(blocked_part, sizeof blocked_part, blocked_event);

  /* A row already in the default partition for the blocked month: that month's
   * partition cannot be created any more, so its new rows must go to default. */
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO " COLL " (id, created_at, updated_at, deleted_at) "
           "VALUES ('preexisting', to_timestamp(%lld / 1000.0), now(), now())",
           (long long)blocked_event);
  PQclear(query(sql, 0));

  /* 1,000 good records. */
  for (int i = 0; i < N_ITEMS; i++) {
    item_id(id, sizeof id, i);
    fill_vector(T.vectors[i], i, 0);
    memcpy(T.first[i], T.vectors[i], sizeof T.first[i]);
    snprintf(meta, sizeof meta, "{\"n\": %d, \"tag\": \"t%d\"}", i, i % 7);
    int64_t et = i % OLD_MONTH_ITEM_EVERY == 0 ? old_event
                 : i == BLOCKED_ITEM          ? blocked_event
                 : i % OLD_MONTH_ITEM_EVERY == 1 ? 0 /* broker timestamp */
                                                 : T.now_ms - 1000 + i;
    produce_record(id, strlen(id), RV_OP_UPSERT, T.vectors[i], DIM, meta, et, 0, NULL);
  }
  /* Other framings. */
  const char *json = "{\"id\":\"json-1\",\"vector\":[1,2,3,4,5,6,7,8],\"metadata\":{\"src\":\"json\"}}";
  produce("json-1", 6, json, strlen(json));
  const float conf_vec[DIM] = {8, 7, 6, 5, 4, 3, 2, 1};
  produce_record("conf-1", 6, RV_OP_UPSERT, conf_vec, DIM, NULL, 0, 1, NULL);

  /* Bad records. */
  float v[DIM + 1];
  fill_vector(v, 1, 0);
  bad_t *b = add_bad("bad-trunc", "decode_error");
  encode_record(b->key, strlen(b->key), RV_OP_UPSERT, v, DIM, NULL, 0, 0, &b->value);
  b->value.len -= 5;
  produce_bad_raw(b);
  b = add_bad("bad-dim", "wrong_dim");
  produce_record(b->key, strlen(b->key), RV_OP_UPSERT, v, DIM - 1, NULL, 0, 0, &b->value);
  b = add_bad("bad-nan", "non_finite");
  v[3] = NAN;
  produce_record(b->key, strlen(b->key), RV_OP_UPSERT, v, DIM, NULL, 0, 0, &b->value);
  v[3] = 1;
  b = add_bad("bad-meta", "bad_metadata");
  produce_record(b->key, strlen(b->key), RV_OP_UPSERT, v, DIM, "[1,2]", 0, 0, &b->value);
  b = add_bad("bad-schema", "unknown_schema_id");
  produce_record(b->key, strlen(b->key), RV_OP_UPSERT, v, DIM, NULL, 0, 99, &b->value);
  b = add_bad("bad-novec", "missing_vector");
  produce_record(b->key, strlen(b->key), RV_OP_UPSERT, NULL, 0, NULL, 0, 0, &b->value);
  char long_id[RV_ID_MAX + 2];
  memset(long_id, 'x', RV_ID_MAX + 1);
  long_id[RV_ID_MAX + 1] = 0;
  b = add_bad(long_id, "bad_id");
  produce_record(long_id, RV_ID_MAX + 1, RV_OP_UPSERT, v, DIM, NULL, 0, 0, &b->value);
  /* A Kafka key that is not the record's id (the id must not be written under another's key). */
  b = add_bad("bad-key", "key_id_mismatch");
  encode_record("not-bad-key", 11, RV_OP_UPSERT, v, DIM, NULL, 0, 0, &b->value);
  produce_bad_raw(b);
  /* The changelog's own key: accepted, it would shadow the position markers in a compacted changelog. */
  b = add_bad(RV_MARKER_KEY, "reserved_id");
  produce_record(b->key, strlen(b->key), RV_OP_UPSERT, v, DIM, NULL, 0, 0, &b->value);

  /* Updates of existing ids, deletes (Avro, tombstone, never seen) and a revival. */
  for (int i = 1; i <= N_UPDATES; i++) {
    item_id(id, sizeof id, i);
    fill_vector(T.vectors[i], i, 1000.0f);
    produce_record(id, strlen(id), RV_OP_UPSERT, T.vectors[i], DIM, "{\"updated\":true}", 0, 0, NULL);
  }
  item_id(id, sizeof id, 20);
  produce_record(id, strlen(id), RV_OP_DELETE, NULL, 0, NULL, 0, 0, NULL);
  item_id(id, sizeof id, 21);
  produce(id, strlen(id), NULL, 0); /* tombstone */
  produce_record("ghost-1", 7, RV_OP_DELETE, NULL, 0, NULL, 0, 0, NULL);
  item_id(id, sizeof id, 30);
  produce_record(id, strlen(id), RV_OP_DELETE, NULL, 0, NULL, 0, 0, NULL);
  fill_vector(T.vectors[30], 30, 2000.0f);
  produce_record(id, strlen(id), RV_OP_UPSERT, T.vectors[30], DIM, NULL, 0, 0, NULL);
  flush_producer();

  const uint64_t produced = T.produced;

  T.ingest = rv_ingest_new(&T.conf, e, sizeof e);
  if (!T.ingest) fail_msg("rv_ingest_new: %s", e);
  if (rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("rv_ingest_start: %s", e);
  wait_accounted(T.ingest, produced, 90000);

  rv_ingest_stats_t s;
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(produced, s.consumed);
  assert_int_equal(T.n_bad, s.dead_lettered);
  assert_int_equal(produced - (uint64_t)T.n_bad, s.ingested);
  assert_true(s.batches >= 1);

  /* ---- PostgreSQL ---- */
  /* items + json-1 + conf-1 + ghost-1; preexisting was never pinned. */
  const long long n_ids = N_ITEMS + 3;
  assert_int_equal(n_ids, query_int("SELECT count(*) FROM " COLL "_ids"));
  assert_int_equal(n_ids + 1, query_int("SELECT count(*) FROM " COLL));
  assert_int_equal(0, query_int("SELECT count(*) FROM (SELECT id FROM " COLL " GROUP BY id HAVING count(*) > 1) d"));
  assert_int_equal(N_ITEMS - 2 + 2, query_int("SELECT count(*) FROM " COLL " WHERE deleted_at IS NULL"));

  PGresult *r = query("SELECT id, vector, deleted_at IS NOT NULL, metadata->>'n' FROM " COLL
                      " WHERE id LIKE 'item-%'",
                      1);
  assert_int_equal(N_ITEMS, PQntuples(r));
  for (int row = 0; row < PQntuples(r); row++) {
    const char *rid = PQgetvalue(r, row, 0);
    int i = atoi(rid + 5);
    int deleted = PQgetvalue(r, row, 2)[0] != 0;
    int want_deleted = i == 20 || i == 21;
    if (deleted != want_deleted) fail_msg("%s: deleted %d, expected %d", rid, deleted, want_deleted);
    /* Deletes keep the stored vector; everything else holds the latest. */
    const float *want = want_deleted ? T.first[i] : T.vectors[i];
    if (PQgetisnull(r, row, 1) || PQgetlength(r, row, 1) != DIM * 4)
      fail_msg("%s: vector is %d bytes, expected %d", rid, PQgetisnull(r, row, 1) ? -1 : PQgetlength(r, row, 1),
               DIM * 4);
    float got[DIM];
    memcpy(got, PQgetvalue(r, row, 1), sizeof got); /* float32 little-endian, as is this host */
    if (memcmp(got, want, sizeof got))
      fail_msg("%s: vector [%g %g ...], expected [%g %g ...]", rid, got[0], got[1], want[0], want[1]);
    if (i >= 1 && i <= N_UPDATES) {
      if (!PQgetisnull(r, row, 3)) fail_msg("%s: metadata of the update expected (no \"n\")", rid);
    } else if (!want_deleted && i != 30) {
      if (PQgetisnull(r, row, 3) || atoi(PQgetvalue(r, row, 3)) != i)
        fail_msg("%s: metadata n = %s, expected %d", rid, PQgetisnull(r, row, 3) ? "NULL" : PQgetvalue(r, row, 3), i);
    }
  }
  PQclear(r);

  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL " WHERE id = 'ghost-1' AND vector IS NULL "
                                "AND deleted_at IS NOT NULL"));
  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL " WHERE id = 'json-1' AND metadata = '{\"src\":\"json\"}'"
                                " AND length(vector) = 32"));
  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL " WHERE id = 'conf-1' AND metadata IS NULL"));

  /* Partitions: a month beyond the pre-made range was created for item-0000's
   * event time; the blocked month's row went to the default partition. */
  snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('%s')", old_part);
  if (query_int(sql) != 1) fail_msg("partition %s was not created", old_part);
  snprintf(sql, sizeof sql, "SELECT count(*) FROM " COLL " WHERE id = 'item-0000' AND tableoid = '%s'::regclass",
           old_part);
  if (query_int(sql) != 1) fail_msg("item-0000 is not in %s", old_part);
  snprintf(sql, sizeof sql,
           "SELECT (extract(epoch FROM created_at) * 1000)::bigint FROM " COLL "_ids WHERE id = 'item-0100'");
  assert_int_equal(old_event, query_int(sql));
  snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('%s')", blocked_part);
  assert_int_equal(0, query_int(sql));
  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL " WHERE id = 'item-0005' AND tableoid = '" COLL
                                "_default'::regclass"));

  snprintf(sql, sizeof sql,
           "SELECT sum(next_offset) FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL
           "' AND topic = '" COLL ".vectors'");
  assert_int_equal((long long)produced, query_int(sql));
}

static void on_dlq(rd_kafka_message_t *m, void *arg) {
  int *total = arg;
  (*total)++;
  bad_t *b = NULL;
  for (int i = 0; i < T.n_bad; i++)
    if (m->key_len == strlen(T.bad[i].key) && !memcmp(m->key, T.bad[i].key, m->key_len)) b = &T.bad[i];
  if (!b) fail_msg("unexpected dead letter with key '%.*s'", (int)m->key_len, (const char *)m->key);
  b->seen++;
  rd_kafka_headers_t *h = NULL;
  const void *v;
  size_t len;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, "rv.error.code", &v, &len))
    fail_msg("%s: no rv.error.code header", b->key);
  if (len != strlen(b->code) || memcmp(v, b->code, len))
    fail_msg("%.20s: rv.error.code '%.*s', expected '%s'", b->key, (int)len, (const char *)v, b->code);
  if (rd_kafka_header_get_last(h, "rv.source.topic", &v, &len) || len != strlen(COLL ".vectors") ||
      memcmp(v, COLL ".vectors", len))
    fail_msg("%.20s: bad rv.source.topic", b->key);
  if (rd_kafka_header_get_last(h, "rv.error.message", &v, &len) || len == 0)
    fail_msg("%.20s: no rv.error.message", b->key);
  if (rd_kafka_header_get_last(h, "rv.source.partition", &v, &len) ||
      rd_kafka_header_get_last(h, "rv.source.offset", &v, &len))
    fail_msg("%.20s: no rv.source.partition/offset", b->key);
  if (m->len != b->value.len || memcmp(m->payload, b->value.base, m->len))
    fail_msg("%.20s: value is %zu bytes, the original %zu (or differs)", b->key, m->len, b->value.len);
}

static void test_dlq_holds_bad_records(void **state) {
  (void)state;
  int total = 0;
  read_topic(COLL ".dlq", 1, on_dlq, &total);
  assert_int_equal(T.n_bad, total);
  for (int i = 0; i < T.n_bad; i++)
    if (T.bad[i].seen != 1) fail_msg("%.20s seen %d times in the DLQ, expected 1", T.bad[i].key, T.bad[i].seen);
}

typedef struct {
  int n_changes;
  int seen[N_ITEMS];
  int32_t part[N_ITEMS];
  int64_t off[N_ITEMS]; /* latest version seen */
  rv_change_t latest[N_ITEMS];
  int ghost, json, conf;
} changes_t;

static void on_change(rd_kafka_message_t *m, void *arg) {
  changes_t *c = arg;
  if (ingest_fixture_is_marker(m)) return; /* position markers: checked by test_markers_follow_changes */
  c->n_changes++;
  rv_change_t ch;
  char e[256];
  if (rv_codec_decode_change(T.codec, m->payload, m->len, &ch, e, sizeof e)) fail_msg("change: %s", e);
  if (m->key_len != strlen(ch.id) || memcmp(m->key, ch.id, m->key_len)) fail_msg("change key != id %s", ch.id);
  if (!strncmp(ch.id, "item-", 5)) {
    int i = atoi(ch.id + 5);
    if (!c->seen[i] || ch.src_offset > c->off[i]) {
      rv_change_close(&c->latest[i]);
      c->latest[i] = ch;
      c->off[i] = ch.src_offset;
      c->part[i] = ch.src_partition;
      c->seen[i]++;
      return;
    }
    c->seen[i]++;
  } else if (!strcmp(ch.id, "ghost-1")) {
    c->ghost += ch.op == RV_OP_DELETE && !ch.vector;
  } else if (!strcmp(ch.id, "json-1")) {
    c->json += ch.attributes && !strcmp(ch.attributes, "{\"src\":\"json\"}");
  } else if (!strcmp(ch.id, "conf-1")) {
    c->conf++;
  }
  rv_change_close(&ch);
}

static void test_changelog_has_every_id(void **state) {
  (void)state;
  /* Changes are counted at COMMIT and published after it: read the topic
   * only once Kafka confirmed every committed change (its high watermarks
   * then cover them). */
  int64_t deadline = rv_mono_ms() + 30000;
  rv_ingest_stats_t s;
  for (rv_ingest_stats(T.ingest, &s); s.published < s.changes; rv_ingest_stats(T.ingest, &s)) {
    if (rv_mono_ms() > deadline)
      fail_msg("published %llu of %llu committed changes after 30 s", (unsigned long long)s.published,
               (unsigned long long)s.changes);
    usleep(20 * 1000);
  }
  changes_t *c = calloc(1, sizeof *c);
  read_topic(COLL ".changelog", 3, on_change, c);
  for (int i = 0; i < N_ITEMS; i++) {
    if (!c->seen[i]) fail_msg("no change for item-%04d", i);
    const rv_change_t *ch = &c->latest[i];
    int deleted = i == 20 || i == 21;
    if ((ch->op == RV_OP_DELETE) != deleted) fail_msg("item-%04d: latest op %d", i, ch->op);
    if (!deleted) {
      if (ch->dim != DIM || memcmp(ch->vector, T.vectors[i], sizeof T.vectors[i]))
        fail_msg("item-%04d: latest change has not the latest vector", i);
    }
    if (i == 100 && ch->created_at_ms != T.now_ms - 200 * DAY_MS)
      fail_msg("item-0100: created_at %lld, expected %lld", (long long)ch->created_at_ms,
               (long long)(T.now_ms - 200 * DAY_MS));
  }
  assert_true(c->ghost >= 1);
  assert_true(c->json >= 1);
  assert_true(c->conf >= 1);
  for (int i = 0; i < N_ITEMS; i++) rv_change_close(&c->latest[i]);
  free(c);
}

/* The changelog read back in order, per partition: changes and decoded markers. */
typedef struct {
  int is_marker;
  int32_t src_partition; /* a change's version */
  int64_t src_offset;
  rv_marker_t marker;
} entry_t;

typedef struct {
  entry_t *e[3];
  int n[3], cap[3];
  int64_t t0, t1; /* committed_at must fall in [t0, t1] */
} log_t;

static void on_entry(rd_kafka_message_t *m, void *arg) {
  log_t *l = arg;
  int p = m->partition;
  if (l->n[p] == l->cap[p]) {
    l->cap[p] = l->cap[p] ? 2 * l->cap[p] : 256;
    l->e[p] = realloc(l->e[p], (size_t)l->cap[p] * sizeof *l->e[p]);
    assert_non_null(l->e[p]);
  }
  entry_t *x = &l->e[p][l->n[p]++];
  memset(x, 0, sizeof *x);
  char e[256];
  if (ingest_fixture_is_marker(m)) {
    x->is_marker = 1;
    if (m->key_len != strlen(RV_MARKER_KEY) || memcmp(m->key, RV_MARKER_KEY, m->key_len))
      fail_msg("marker at %d@%lld has key '%.*s'", p, (long long)m->offset, (int)m->key_len, (const char *)m->key);
    if (rv_codec_decode_marker(T.codec, m->payload, m->len, &x->marker, e, sizeof e))
      fail_msg("marker at %d@%lld: %s", p, (long long)m->offset, e);
    if (x->marker.committed_at_ms < l->t0 || x->marker.committed_at_ms > l->t1)
      fail_msg("marker committed_at %lld is outside the test's run [%lld, %lld]",
               (long long)x->marker.committed_at_ms, (long long)l->t0, (long long)l->t1);
  } else {
    rv_change_t ch;
    if (rv_codec_decode_change(T.codec, m->payload, m->len, &ch, e, sizeof e)) fail_msg("change: %s", e);
    x->src_partition = ch.src_partition;
    x->src_offset = ch.src_offset;
    rv_change_close(&ch);
  }
}

static int64_t marker_next(const rv_marker_t *m, int32_t src_partition) {
  for (int i = 0; i < m->n; i++)
    if (m->positions[i].partition == src_partition) return m->positions[i].next_offset;
  return -1;
}

/* After each commit a position marker goes to every changelog partition,
 * behind the changes it covers: on each changelog partition, no marker
 * claims a change that comes after it, every change is covered by a marker
 * after it, and the last marker lists every source partition at its stored
 * next offset. */
static void test_markers_follow_changes(void **state) {
  (void)state;
  rv_ingest_stats_t s;
  int64_t deadline = rv_mono_ms() + 30000;
  for (rv_ingest_stats(T.ingest, &s); s.published < s.changes || !s.markers; rv_ingest_stats(T.ingest, &s)) {
    if (rv_mono_ms() > deadline) fail_msg("published %llu of %llu changes, %llu markers after 30 s",
                                          (unsigned long long)s.published, (unsigned long long)s.changes,
                                          (unsigned long long)s.markers);
    usleep(20 * 1000);
  }
  /* The last marker is queued after the last change: wait until it is in too. */
  int64_t stored[3];
  for (int sp = 0; sp < 3; sp++) {
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT next_offset FROM rv_offsets WHERE topic = '%s' AND partition = %d",
             COLL ".vectors", sp);
    stored[sp] = query_int(sql);
  }
  log_t *l = calloc(1, sizeof *l);
  l->t0 = T.now_ms - 60000;
  l->t1 = rv_wall_ms() + 1000;
  for (int attempt = 0;; attempt++) {
    read_topic(COLL ".changelog", 3, on_entry, l);
    int complete = 1;
    for (int cp = 0; cp < 3; cp++) {
      const entry_t *last = NULL;
      for (int i = 0; i < l->n[cp]; i++)
        if (l->e[cp][i].is_marker) last = &l->e[cp][i];
      for (int sp = 0; sp < 3; sp++) complete &= last && marker_next(&last->marker, sp) == stored[sp];
    }
    if (complete) break;
    if (attempt == 50) fail_msg("the last marker of some changelog partition does not list the stored offsets");
    for (int cp = 0; cp < 3; cp++) {
      for (int i = 0; i < l->n[cp]; i++) rv_marker_close(&l->e[cp][i].marker);
      l->n[cp] = 0;
    }
    usleep(100 * 1000);
  }
  int markers = 0;
  for (int cp = 0; cp < 3; cp++) {
    int64_t seen[3] = {-1, -1, -1}; /* per source partition: the highest position a marker so far listed */
    int n_markers = 0;
    for (int i = 0; i < l->n[cp]; i++) {
      const entry_t *x = &l->e[cp][i];
      if (x->is_marker) {
        n_markers++;
        for (int k = 0; k < x->marker.n; k++) {
          int32_t sp = x->marker.positions[k].partition;
          if (sp < 0 || sp >= 3) fail_msg("marker lists source partition %d", (int)sp);
          if (x->marker.positions[k].next_offset < seen[sp])
            fail_msg("changelog %d: a marker moved source partition %d back to %lld", cp, (int)sp,
                     (long long)x->marker.positions[k].next_offset);
          seen[sp] = x->marker.positions[k].next_offset;
        }
        continue;
      }
      if (x->src_offset < seen[x->src_partition])
        fail_msg("changelog %d @%d: change %d@%lld comes after a marker that covered it (next_offset %lld)", cp, i,
                 (int)x->src_partition, (long long)x->src_offset, (long long)seen[x->src_partition]);
      /* ... and some marker after it covers it. */
      int covered = 0;
      for (int j = i + 1; j < l->n[cp] && !covered; j++)
        covered = l->e[cp][j].is_marker && marker_next(&l->e[cp][j].marker, x->src_partition) > x->src_offset;
      if (!covered)
        fail_msg("changelog %d @%d: change %d@%lld is covered by no marker after it", cp, i, (int)x->src_partition,
                 (long long)x->src_offset);
    }
    if (!n_markers) fail_msg("changelog partition %d holds no marker", cp);
    markers += n_markers;
  }
  print_message("%d markers on 3 changelog partitions, %llu queued rounds\n", markers,
                (unsigned long long)s.markers);
  for (int cp = 0; cp < 3; cp++) {
    for (int i = 0; i < l->n[cp]; i++) rv_marker_close(&l->e[cp][i].marker);
    free(l->e[cp]);
  }
  free(l);
}

static void test_restart_resumes_from_stored_offsets(void **state) {
  (void)state;
  char e[512];
  rv_ingest_stop(T.ingest);
  rv_ingest_stop(T.ingest); /* twice is fine */
  rv_ingest_destroy(T.ingest);
  /* The second instance (and the outage test after it) runs the PgBouncer
   * path: unnamed statements, a staging table per transaction. */
  rv_ingest_conf_t conf = T.conf;
  conf.pgbouncer = 1;
  T.ingest = rv_ingest_new(&conf, e, sizeof e);
  if (!T.ingest || rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("second ingest: %s", e);

  float v[DIM];
  fill_vector(v, 4242, 0);
  produce_record("late-1", 6, RV_OP_UPSERT, v, DIM, NULL, 0, 0, NULL);
  flush_producer();
  wait_accounted(T.ingest, 1, 90000);
  usleep(300 * 1000); /* a re-read would show up here */
  rv_ingest_stats_t s;
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(1, s.consumed);
  assert_int_equal(1, s.ingested);
  assert_int_equal(0, s.dead_lettered);
  assert_int_equal(1, query_int("SELECT count(*) FROM " COLL " WHERE id = 'late-1' AND deleted_at IS NULL"));
}

/* PostgreSQL goes away under a running ingest: batches are retried (and
 * counted) until it is back, then everything lands exactly once. */
static void test_postgres_outage_is_retried(void **state) {
  (void)state;
  char e[1024], id[32];
  assert_non_null(T.ingest);
  rv_ingest_stats_t before, s;
  rv_ingest_stats(T.ingest, &before);
  PQfinish(T.db);
  T.db = NULL;
  rv_pg_server_stop(T.pg);
  T.pg = NULL;

  float v[DIM];
  for (int i = 0; i < 50; i++) {
    snprintf(id, sizeof id, "outage-%02d", i);
    fill_vector(v, i, 0.5f);
    produce_record(id, strlen(id), RV_OP_UPSERT, v, DIM, NULL, 0, 0, NULL);
  }
  flush_producer();
  int64_t deadline = rv_mono_ms() + 30000;
  do {
    rv_ingest_stats(T.ingest, &s);
    if (rv_mono_ms() > deadline) fail_msg("no retry counted while PostgreSQL was down (retries %llu)",
                                          (unsigned long long)s.retries);
    usleep(50 * 1000);
  } while (s.retries < before.retries + 2);
  assert_int_equal(before.ingested, s.ingested); /* nothing can be committed now */

  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) fail_msg("restart postgres: %s", e);
  if (!(T.db = PQconnectdb(rv_pg_server_conninfo(T.pg))) || PQstatus(T.db) != CONNECTION_OK)
    fail_msg("reconnect: %s", PQerrorMessage(T.db));
  wait_accounted(T.ingest, before.ingested + before.dead_lettered + 50, 60000);
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(before.consumed + 50, s.consumed);
  assert_int_equal(before.ingested + 50, s.ingested);
  assert_int_equal(50, query_int("SELECT count(*) FROM " COLL " WHERE id LIKE 'outage-%' AND deleted_at IS NULL"));
  assert_int_equal(0, query_int("SELECT count(*) FROM (SELECT id FROM " COLL " GROUP BY id HAVING count(*) > 1) d"));
  snprintf(e, sizeof e,
           "SELECT sum(next_offset) FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL
           "' AND topic = '" COLL ".vectors'");
  assert_int_equal((long long)T.produced, query_int(e));
  rv_ingest_stop(T.ingest);
}

/* Records deleted from the log before ingest read them (here: the mock
 * broker's 5 MiB per partition, overrun while ingest is stopped) cannot be
 * recovered, but they must not vanish silently: ingest counts them, and every
 * record still in the log is ingested. */
static void test_records_deleted_upstream_are_counted(void **state) {
  (void)state;
  char e[512], id[32];
  rv_ingest_destroy(T.ingest);
  T.ingest = NULL;
  enum { N = 450 };
  static char meta[60016];
  memcpy(meta, "{\"pad\":\"", 8);
  memset(meta + 8, 'x', 60000);
  memcpy(meta + 60008, "\"}", 3);
  float v[DIM];
  for (int i = 0; i < N; i++) { /* ~27 MB over 3 partitions: about 9 MB each */
    snprintf(id, sizeof id, "gone-%03d", i);
    fill_vector(v, i, 0.25f);
    produce_record(id, strlen(id), RV_OP_UPSERT, v, DIM, meta, 0, 0, NULL);
  }
  flush_producer();
  T.ingest = rv_ingest_new(&T.conf, e, sizeof e);
  if (!T.ingest || rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("ingest: %s", e);
  rv_ingest_stats_t s;
  int64_t deadline = rv_mono_ms() + 90000;
  for (;;) {
    rv_ingest_stats(T.ingest, &s);
    if (s.consumed + s.lost >= N && s.ingested >= s.consumed) break;
    if (rv_mono_ms() > deadline)
      fail_msg("consumed %llu + lost %llu of %d, ingested %llu", (unsigned long long)s.consumed,
               (unsigned long long)s.lost, N, (unsigned long long)s.ingested);
    usleep(50 * 1000);
  }
  assert_true(s.lost > 0);
  assert_int_equal(N, s.consumed + s.lost);
  assert_int_equal(s.consumed, (uint64_t)query_int("SELECT count(*) FROM " COLL " WHERE id LIKE 'gone-%'"));
  rv_ingest_stop(T.ingest);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_migrate_concurrent_and_idempotent),
      cmocka_unit_test(test_ingest_end_to_end),
      cmocka_unit_test(test_dlq_holds_bad_records),
      cmocka_unit_test(test_changelog_has_every_id),
      cmocka_unit_test(test_markers_follow_changes),
      cmocka_unit_test(test_restart_resumes_from_stored_offsets),
      cmocka_unit_test(test_postgres_outage_is_retried),
      cmocka_unit_test(test_records_deleted_upstream_are_counted),
  };
  return cmocka_run_group_tests_name("ingest_pg", tests, setup, teardown);
}
