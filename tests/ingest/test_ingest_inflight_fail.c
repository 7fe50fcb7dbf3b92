#define _GNU_SOURCE
/* The in-flight commit fails (rv_ingest.c finish_flight): a trigger on the
 * collection table raises for one id the first FAIL_TIMES times it is
 * inserted, so the final "COPY <new rows> FROM STDIN; COMMIT" of the batch
 * holding that id fails while ingest already reads the next batch. Ingest must
 * drop both, read them again from the stored offsets (with backoff) and end
 * with every record exactly once, rv_offsets at the log's end and an empty
 * changelog outbox, and stats.consumed counting each record once despite the
 * re-reads. Real PostgreSQL (rv_embedded), librdkafka mock cluster. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest_fixture.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_record.h"
#include "rv_time.h"

#define COLL "items"
#define DIM 8
#define N_IDS 3000
#define N_PARTS 3
#define FAIL_ID 1501   /* one version only: its row is inserted by the final COPY, never upserted */
#define FAIL_TIMES 2   /* the trigger raises this many times, then lets it through */

static struct {
  ingest_fixture_t f;
  rv_ingest_t *ingest;
  uint64_t produced;
  int version[N_IDS]; /* latest version produced of f-%04d */
} T;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk, (void)opaque;
  if (m->err) fprintf(stderr, "test producer: delivery failed: %s\n", rd_kafka_err2str(m->err));
}

static void fill_vector(float *v, int i, int version) {
  for (int k = 0; k < DIM; k++) v[k] = (float)i + (float)k * 0.125f + (float)version * 10000.0f;
}

static void produce_version(int i, int version) {
  char id[32], meta[64], e[256];
  float v[DIM];
  snprintf(id, sizeof id, "f-%04d", i);
  snprintf(meta, sizeof meta, "{\"v\": %d}", version);
  fill_vector(v, i, version);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  r.id = id;
  r.id_len = strlen(id);
  r.op = RV_OP_UPSERT;
  r.vector = v;
  r.dim = DIM;
  r.metadata = meta;
  rv_buf_t b;
  rv_buf_init(&b);
  if (rv_codec_encode_vector(T.f.codec, &r, &b, e, sizeof e)) fail_msg("encode %s: %s", id, e);
  rd_kafka_resp_err_t err;
  while ((err = rd_kafka_producev(T.f.producer, RD_KAFKA_V_TOPIC(COLL ".vectors"),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(id, strlen(id)),
                                  RD_KAFKA_V_VALUE(b.base, b.len), RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(T.f.producer, 10);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
  rv_buf_close(&b);
  T.version[i] = version;
  T.produced++;
}

static PGresult *query(const char *sql) {
  PGresult *r = PQexec(T.f.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(T.f.db));
  return r;
}

static long long query_int(const char *sql) {
  PGresult *r = query(sql);
  if (PQntuples(r) != 1) fail_msg("%s: %d rows, expected 1", sql, PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

static void wait_int(const char *sql, long long want, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  long long got;
  while ((got = query_int(sql)) != want) {
    if (rv_mono_ms() > deadline) fail_msg("after %d ms: %s = %lld, expected %lld", timeout_ms, sql, got, want);
    usleep(50 * 1000);
  }
}

static int setup(void **state) {
  (void)state;
  if (ingest_fixture_open(&T.f, "rv-inflight-", COLL, DIM, N_PARTS, 3, 1, on_delivery)) return -1;
  T.f.conf.batch_rows = 200;
  T.f.conf.sq8_train = 100;
  T.f.conf.batch_ms = 50;
  rv_ingest_conf_defaults(&T.f.conf);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rv_ingest_destroy(T.ingest);
  ingest_fixture_close(&T.f);
  return 0;
}

/* Attempts are counted by a sequence: nextval() survives the rollback of the
 * failed transaction, which a counter table's row would not (the exception
 * aborts the transaction that wrote it). The side table counts inserts that
 * committed. */
#define STR_(x) #x
#define STR(x) STR_(x)
#define FAIL_SQL                                                                                       \
  "CREATE SEQUENCE rv_test_attempts;"                                                                  \
  "CREATE TABLE rv_test_committed (id text NOT NULL, at timestamptz NOT NULL DEFAULT now());"          \
  "CREATE FUNCTION rv_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "                       \
  "  IF NEW.id = 'f-" STR(FAIL_ID) "' THEN "                                                           \
  "    IF nextval('rv_test_attempts') <= " STR(FAIL_TIMES) " THEN "                                    \
  "      RAISE EXCEPTION 'rv test: injected failure inserting %', NEW.id; "                            \
  "    END IF; "                                                                                       \
  "    INSERT INTO rv_test_committed (id) VALUES (NEW.id); "                                           \
  "  END IF; "                                                                                         \
  "  RETURN NEW; END $$;"                                                                              \
  /* On the partitioned parent: cloned onto every partition, those made later by ingest included. */ \
  "CREATE TRIGGER rv_test_fail BEFORE INSERT ON " COLL " FOR EACH ROW EXECUTE FUNCTION rv_test_fail();"

#define OUTBOX_ROWS "SELECT count(*) FROM " COLL "_outbox"

static void test_inflight_commit_failure_is_reread_exactly_once(void **state) {
  (void)state;
  char e[1024], sql[512];
  assert_int_equal(RV_OK, rv_ingest_migrate(&T.f.conf, e, sizeof e));
  PQclear(query(FAIL_SQL));
  /* The trigger fires for COPY into the parent (routed rows): checked by hand, rolled back. */
  PQclear(query("BEGIN"));
  PGresult *r = PQexec(T.f.db, "INSERT INTO " COLL " (id, created_at, updated_at) VALUES ('f-" STR(FAIL_ID) "', now(), now())");
  if (PQresultStatus(r) != PGRES_FATAL_ERROR || !strstr(PQerrorMessage(T.f.db), "injected failure"))
    fail_msg("the trigger did not fire: %s", PQerrorMessage(T.f.db));
  PQclear(r);
  PQclear(query("ROLLBACK"));
  PQclear(query("SELECT setval('rv_test_attempts', 1, false)")); /* forget the check's attempt */

  /* Every id once, then every 10th again and every 50th a third time (later batches: upserts). */
  for (int i = 0; i < N_IDS; i++) produce_version(i, 1);
  for (int i = 0; i < N_IDS; i += 10) produce_version(i, 2);
  for (int i = 0; i < N_IDS; i += 50) produce_version(i, 3);
  assert_int_equal(1, T.version[FAIL_ID]);
  rd_kafka_resp_err_t ferr = rd_kafka_flush(T.f.producer, 30000);
  if (ferr) fail_msg("flush: %s", rd_kafka_err2str(ferr));

  T.ingest = rv_ingest_new(&T.f.conf, e, sizeof e);
  if (!T.ingest || rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("ingest: %s", e);

  /* Done when every record is ingested and the stored offsets reached the log's end. */
  snprintf(sql, sizeof sql,
           "SELECT coalesce(sum(next_offset), 0) FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL
           "' AND topic = '" COLL ".vectors'");
  int64_t deadline = rv_mono_ms() + 120000;
  rv_ingest_stats_t s;
  for (;;) {
    rv_ingest_stats(T.ingest, &s);
    if (s.ingested >= T.produced && query_int(sql) >= (long long)T.produced) break;
    if (rv_mono_ms() > deadline)
      fail_msg("ingested %llu of %llu (consumed %llu, retries %llu), stored offsets sum %lld",
               (unsigned long long)s.ingested, (unsigned long long)T.produced, (unsigned long long)s.consumed,
               (unsigned long long)s.retries, query_int(sql));
    usleep(50 * 1000);
  }
  usleep(300 * 1000); /* a duplicate commit would show up here */
  rv_ingest_stats(T.ingest, &s);

  /* The trigger: FAIL_TIMES failed attempts, then one that committed. */
  assert_int_equal(FAIL_TIMES + 1, query_int("SELECT last_value FROM rv_test_attempts"));
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_test_committed"));

  /* Ingest: every record exactly once, retried, re-read. */
  assert_int_equal(T.produced, s.ingested);
  assert_int_equal(0, s.dead_lettered);
  assert_int_equal(0, s.lost);
  if (s.retries < FAIL_TIMES) fail_msg("retries %llu, expected >= %d", (unsigned long long)s.retries, FAIL_TIMES);
  /* The failed batches were read again (the trigger saw FAIL_TIMES + 1 attempts), yet each record counts once. */
  if (s.consumed != T.produced)
    fail_msg("consumed %llu, expected the %llu produced: a record read again after a failed commit counts once",
             (unsigned long long)s.consumed, (unsigned long long)T.produced);

  /* The table: each id once, its latest version. */
  assert_int_equal(N_IDS, query_int("SELECT count(*) FROM " COLL "_ids"));
  assert_int_equal(N_IDS, query_int("SELECT count(*) FROM " COLL));
  assert_int_equal(N_IDS, query_int("SELECT count(DISTINCT id) FROM " COLL " WHERE deleted_at IS NULL"));
  r = PQexecParams(T.f.db, "SELECT id, (metadata->>'v')::int, vector FROM " COLL, 0, NULL, NULL, NULL, NULL, 1);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("rows: %s", PQerrorMessage(T.f.db));
  assert_int_equal(N_IDS, PQntuples(r));
  static int seen[N_IDS];
  memset(seen, 0, sizeof seen);
  for (int row = 0; row < PQntuples(r); row++) {
    const char *rid = PQgetvalue(r, row, 0);
    if (strncmp(rid, "f-", 2)) fail_msg("unexpected id %s", rid);
    int i = atoi(rid + 2);
    if (i < 0 || i >= N_IDS || seen[i]++) fail_msg("%s: unexpected or twice", rid);
    uint32_t be;
    memcpy(&be, PQgetvalue(r, row, 1), 4);
    int v = (int)__builtin_bswap32(be);
    if (v != T.version[i]) fail_msg("%s: version %d, expected %d", rid, v, T.version[i]);
    float want[DIM], got[DIM];
    fill_vector(want, i, T.version[i]);
    if (PQgetisnull(r, row, 2) || PQgetlength(r, row, 2) != (int)sizeof got) fail_msg("%s: no vector", rid);
    memcpy(got, PQgetvalue(r, row, 2), sizeof got);
    if (memcmp(got, want, sizeof got)) fail_msg("%s: vector is not its latest version's", rid);
  }
  PQclear(r);

  /* rv_offsets: each partition's next offset is its high watermark. */
  int64_t total = 0;
  for (int p = 0; p < N_PARTS; p++) {
    int64_t low, high;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(T.f.producer, COLL ".vectors", p, &low, &high, 10000);
    if (err) fail_msg("watermarks [%d]: %s", p, rd_kafka_err2str(err));
    snprintf(sql, sizeof sql,
             "SELECT next_offset FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL "' AND topic = '" COLL
             ".vectors' AND partition = %d",
             p);
    long long stored = query_int(sql);
    if (stored != high) fail_msg("partition %d: stored next offset %lld, high watermark %lld", p, stored, (long long)high);
    total += high;
  }
  assert_int_equal(T.produced, total);

  /* The changelog: everything published, the outbox empties. */
  wait_int(OUTBOX_ROWS, 0, 60000);
  rv_ingest_stats(T.ingest, &s);
  if (s.published < (uint64_t)N_IDS)
    fail_msg("published %llu changes, expected >= %d", (unsigned long long)s.published, N_IDS);
  rv_ingest_stop(T.ingest);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_inflight_commit_failure_is_reread_exactly_once),
  };
  return cmocka_run_group_tests_name("ingest_inflight_fail", tests, setup, teardown);
}
