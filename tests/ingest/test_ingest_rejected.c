#define _GNU_SOURCE
/* Rows PostgreSQL refuses for good (rv_ingest.h, RV_INGEST_DATA_RETRIES): a
 * BEFORE INSERT OR UPDATE trigger on the collection's table raises for
 *   f-1501, every version (RAISE EXCEPTION, SQLSTATE P0001): produced twice,
 *     a new id each time, so it fails in the COPY of new rows that is in
 *     flight (the COMMIT's path);
 *   f-0710 version 2 only (SQLSTATE 23514 check_violation): an id seen
 *     before, so it fails in the upsert, before the COMMIT is sent.
 * Ingest must not retry forever: each refused record goes to the DLQ once
 * per occurrence (rejected_by_database, the trigger's message, the original
 * value), everything else is committed exactly once at its latest accepted
 * version, the changelog carries it, the offsets reach the log's end and the
 * trigger stops firing. Real PostgreSQL (rv_embedded), librdkafka mock cluster. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest_fixture.h"
#include "rv_buf.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_record.h"
#include "rv_time.h"

#define COLL "items"
#define DIM 8
#define N_IDS 3000
#define N_PARTS 3
#define REFUSED_ID 1501 /* every version refused */
#define REFUSED_V2 710  /* version 2 refused (an update) */

typedef struct dead {
  int id, version;
  rv_buf_t value; /* as produced */
  int seen;
} dead_t;

static struct {
  ingest_fixture_t f;
  rv_ingest_t *ingest;
  uint64_t produced;
  int version[N_IDS]; /* latest version produced of f-%04d */
  int stored[N_IDS];  /* latest version that PostgreSQL accepts (0: none) */
  dead_t dead[4];
  int n_dead;
} T;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk, (void)opaque;
  if (m->err) fprintf(stderr, "test producer: delivery failed: %s\n", rd_kafka_err2str(m->err));
}

static void fill_vector(float *v, int i, int version) {
  for (int k = 0; k < DIM; k++) v[k] = (float)i + (float)k * 0.125f + (float)version * 10000.0f;
}

static int refused(int i, int version) { return i == REFUSED_ID || (i == REFUSED_V2 && version == 2); }

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
  T.version[i] = version;
  if (refused(i, version)) {
    dead_t *d = &T.dead[T.n_dead++];
    d->id = i;
    d->version = version;
    d->value = b;
  } else {
    T.stored[i] = version;
    rv_buf_close(&b);
  }
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

/* Calls fn on every message of topic's partitions [0, n_parts) up to their high watermarks. */
static void read_topic(const char *topic, int n_parts, void (*fn)(rd_kafka_message_t *, void *), void *arg) {
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  char e[256];
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.f.brokers, e, sizeof e) ||
      rd_kafka_conf_set(c, "group.id", "test-reader", e, sizeof e) ||
      rd_kafka_conf_set(c, "enable.auto.commit", "false", e, sizeof e))
    fail_msg("reader conf: %s", e);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
  if (!rk) fail_msg("reader: %s", e);
  rd_kafka_poll_set_consumer(rk);
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

static int setup(void **state) {
  (void)state;
  if (ingest_fixture_open(&T.f, "rv-refused-", COLL, DIM, N_PARTS, 3, 1, on_delivery)) return -1;
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
  for (int i = 0; i < T.n_dead; i++) rv_buf_close(&T.dead[i].value);
  return 0;
}

/* Refusals are counted by a sequence: nextval() survives the rollback of the failed transaction. */
#define STR_(x) #x
#define STR(x) STR_(x)
#define REFUSE_SQL                                                                                         \
  "CREATE SEQUENCE rv_test_refusals;"                                                                      \
  "CREATE FUNCTION rv_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "                         \
  "  IF NEW.id = 'f-" STR(REFUSED_ID) "' THEN "                                                            \
  "    PERFORM nextval('rv_test_refusals'); "                                                              \
  "    RAISE EXCEPTION 'rv test: id % is refused', NEW.id; "                                               \
  "  END IF; "                                                                                             \
  "  IF NEW.id = 'f-0" STR(REFUSED_V2) "' AND NEW.metadata->>'v' = '2' THEN "                              \
  "    PERFORM nextval('rv_test_refusals'); "                                                              \
  "    RAISE EXCEPTION 'rv test: version 2 of % is refused', NEW.id USING ERRCODE = 'check_violation'; "   \
  "  END IF; "                                                                                             \
  "  RETURN NEW; END $$;"                                                                                  \
  "CREATE TRIGGER rv_test_refuse BEFORE INSERT OR UPDATE ON " COLL                                         \
  " FOR EACH ROW EXECUTE FUNCTION rv_test_refuse();"

static const char *header(rd_kafka_message_t *m, const char *name, size_t *len) {
  rd_kafka_headers_t *h = NULL;
  const void *v = NULL;
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, len) || !v)
    fail_msg("dead letter @%lld: no %s header", (long long)m->offset, name);
  return v;
}

static void on_dead(rd_kafka_message_t *m, void *arg) {
  int *total = arg;
  (*total)++;
  size_t len;
  const char *code = header(m, "rv.error.code", &len);
  if (len != strlen("rejected_by_database") || memcmp(code, "rejected_by_database", len))
    fail_msg("rv.error.code '%.*s'", (int)len, code);
  char msg[512];
  const char *v = header(m, "rv.error.message", &len);
  snprintf(msg, sizeof msg, "%.*s", (int)len, v);
  const char *state = header(m, "rv.error.sqlstate", &len);
  char key[32];
  snprintf(key, sizeof key, "%.*s", (int)m->key_len, (const char *)m->key);
  dead_t *d = NULL;
  for (int i = 0; i < T.n_dead && !d; i++)
    if (m->len == T.dead[i].value.len && !memcmp(m->payload, T.dead[i].value.base, m->len)) d = &T.dead[i];
  if (!d) fail_msg("unexpected dead letter key %s (%s)", key, msg);
  d->seen++;
  char want_key[32];
  snprintf(want_key, sizeof want_key, "f-%04d", d->id);
  assert_string_equal(want_key, key);
  if (d->id == REFUSED_ID) {
    if (len != 5 || memcmp(state, "P0001", 5)) fail_msg("%s: sqlstate %.*s, expected P0001", key, (int)len, state);
    if (!strstr(msg, "SQLSTATE P0001: rv test: id f-1501 is refused")) fail_msg("%s: message '%s'", key, msg);
  } else {
    if (len != 5 || memcmp(state, "23514", 5)) fail_msg("%s: sqlstate %.*s, expected 23514", key, (int)len, state);
    if (!strstr(msg, "SQLSTATE 23514: rv test: version 2 of f-0710 is refused")) fail_msg("%s: message '%s'", key, msg);
  }
  header(m, "rv.source.partition", &len);
  header(m, "rv.source.offset", &len);
}

typedef struct changes {
  int seen[N_IDS];
  int64_t off[N_IDS];
  int version[N_IDS]; /* of the latest change (highest source offset) */
  int bad;
} changes_t;

static void on_change(rd_kafka_message_t *m, void *arg) {
  changes_t *c = arg;
  if (ingest_fixture_is_marker(m)) return;
  rv_change_t ch;
  char e[256];
  if (rv_codec_decode_change(T.f.codec, m->payload, m->len, &ch, e, sizeof e)) fail_msg("change: %s", e);
  int i = atoi(ch.id + 2);
  if (strncmp(ch.id, "f-", 2) || i < 0 || i >= N_IDS) fail_msg("change of unexpected id %s", ch.id);
  const char *v = ch.attributes ? strstr(ch.attributes, "\"v\":") : NULL;
  int version = v ? atoi(v + 4) : -1;
  if (refused(i, version)) c->bad++;
  if (!c->seen[i]++ || ch.src_offset > c->off[i]) c->off[i] = ch.src_offset, c->version[i] = version;
  rv_change_close(&ch);
}

static void test_refused_rows_are_dead_lettered_and_the_rest_committed_once(void **state) {
  (void)state;
  char e[1024], sql[512];
  assert_int_equal(RV_OK, rv_ingest_migrate(&T.f.conf, e, sizeof e));
  PQclear(query(REFUSE_SQL));

  /* Every id once, every 10th again (updates), every 50th a third time, then the always-refused id again. */
  for (int i = 0; i < N_IDS; i++) produce_version(i, 1);
  for (int i = 0; i < N_IDS; i += 10) produce_version(i, 2);
  for (int i = 0; i < N_IDS; i += 50) produce_version(i, 3);
  produce_version(REFUSED_ID, 2);
  assert_int_equal(3, T.n_dead);
  assert_int_equal(1, T.stored[REFUSED_V2]);
  rd_kafka_resp_err_t ferr = rd_kafka_flush(T.f.producer, 30000);
  if (ferr) fail_msg("flush: %s", rd_kafka_err2str(ferr));

  T.ingest = rv_ingest_new(&T.f.conf, e, sizeof e);
  if (!T.ingest || rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("ingest: %s", e);

  /* Done when every record is accounted for and the stored offsets reached the log's end. */
  snprintf(sql, sizeof sql,
           "SELECT coalesce(sum(next_offset), 0) FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL
           "' AND topic = '" COLL ".vectors'");
  int64_t deadline = rv_mono_ms() + 90000;
  rv_ingest_stats_t s;
  for (;;) {
    rv_ingest_stats(T.ingest, &s);
    if (s.ingested + s.dead_lettered >= T.produced && query_int(sql) >= (long long)T.produced) break;
    if (rv_mono_ms() > deadline)
      fail_msg("ingested %llu + dead-lettered %llu of %llu (consumed %llu, retries %llu), stored offsets sum %lld",
               (unsigned long long)s.ingested, (unsigned long long)s.dead_lettered, (unsigned long long)T.produced,
               (unsigned long long)s.consumed, (unsigned long long)s.retries, query_int(sql));
    usleep(50 * 1000);
  }
  /* Settled: no more refusals, nothing more committed (a loop or a duplicate commit would show here). */
  long long refusals = query_int("SELECT last_value FROM rv_test_refusals");
  uint64_t batches = s.batches;
  usleep(500 * 1000);
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(refusals, query_int("SELECT last_value FROM rv_test_refusals"));
  assert_int_equal(batches, s.batches);
  /* Bounded work: per refused record, RV_INGEST_DATA_RETRIES failed writes and a bisection of a 200-row batch
   * (at most ~2 log2(200) + 2 writes that include it). */
  if (refusals > 3 * (RV_INGEST_DATA_RETRIES + 20))
    fail_msg("the trigger refused %lld times: ingest retried too much", refusals);

  /* Ingest: every record once, the refused ones dead-lettered. */
  assert_int_equal(T.produced, s.consumed);
  assert_int_equal(T.produced - (uint64_t)T.n_dead, s.ingested);
  assert_int_equal(T.n_dead, s.dead_lettered);
  assert_int_equal(0, s.lost);

  /* The table: every other id once at its latest accepted version; f-1501 never. */
  assert_int_equal(N_IDS - 1, query_int("SELECT count(*) FROM " COLL "_ids"));
  assert_int_equal(N_IDS - 1, query_int("SELECT count(*) FROM " COLL));
  assert_int_equal(0, query_int("SELECT count(*) FROM " COLL " WHERE id = 'f-" STR(REFUSED_ID) "'"));
  PGresult *r = PQexecParams(T.f.db, "SELECT id, (metadata->>'v')::int, vector FROM " COLL, 0, NULL, NULL, NULL, NULL, 1);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("rows: %s", PQerrorMessage(T.f.db));
  static int seen[N_IDS];
  memset(seen, 0, sizeof seen);
  for (int row = 0; row < PQntuples(r); row++) {
    const char *rid = PQgetvalue(r, row, 0);
    int i = atoi(rid + 2);
    if (strncmp(rid, "f-", 2) || i < 0 || i >= N_IDS || seen[i]++) fail_msg("%s: unexpected or twice", rid);
    uint32_t be;
    memcpy(&be, PQgetvalue(r, row, 1), 4);
    int v = (int)__builtin_bswap32(be);
    if (v != T.stored[i]) fail_msg("%s: version %d, expected %d", rid, v, T.stored[i]);
    float want[DIM], got[DIM];
    fill_vector(want, i, T.stored[i]);
    if (PQgetisnull(r, row, 2) || PQgetlength(r, row, 2) != (int)sizeof got) fail_msg("%s: no vector", rid);
    memcpy(got, PQgetvalue(r, row, 2), sizeof got);
    if (memcmp(got, want, sizeof got)) fail_msg("%s: vector is not its version %d's", rid, T.stored[i]);
  }
  PQclear(r);

  /* rv_offsets: every partition at its high watermark. */
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

  /* The DLQ: each refused record once, with its original value, reason and the trigger's message. */
  int n_dead = 0;
  read_topic(COLL ".dlq", 1, on_dead, &n_dead);
  assert_int_equal(T.n_dead, n_dead);
  for (int i = 0; i < T.n_dead; i++)
    if (T.dead[i].seen != 1)
      fail_msg("f-%04d version %d: %d dead letter(s), expected 1", T.dead[i].id, T.dead[i].version, T.dead[i].seen);

  /* The changelog: every other id at its latest accepted version, no refused version. */
  wait_int("SELECT count(*) FROM " COLL "_outbox", 0, 60000);
  static changes_t c;
  memset(&c, 0, sizeof c);
  read_topic(COLL ".changelog", 3, on_change, &c);
  assert_int_equal(0, c.bad);
  for (int i = 0; i < N_IDS; i++) {
    if (i == REFUSED_ID) {
      assert_int_equal(0, c.seen[i]);
      continue;
    }
    if (!c.seen[i]) fail_msg("f-%04d: no change in the changelog", i);
    if (c.version[i] != T.stored[i]) fail_msg("f-%04d: latest change is version %d, expected %d", i, c.version[i], T.stored[i]);
  }
  rv_ingest_stop(T.ingest);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_refused_rows_are_dead_lettered_and_the_rest_committed_once),
  };
  return cmocka_run_group_tests_name("ingest_rejected", tests, setup, teardown);
}
