#define _GNU_SOURCE
/* The PostgreSQL store of record (index/rv_pgload.h) against a real private
 * PostgreSQL written by a real ingest (mock Kafka cluster):
 *   - a replica with no snapshot bootstraps from PostgreSQL: it holds exactly
 *     the ids PostgreSQL holds as not deleted, each at its stored version
 *     (a delete at the stored version is ignored, one at the next offset
 *     applies), with the stored SQ8 quantizer version installed and every
 *     code equal to the stored one byte for byte; its
 *     changelog topic is empty, so everything came from the load;
 *   - fresh_log loads every row as older than any change of a new log;
 *   - quantizer() returns the stored parameters byte for byte, NOT_FOUND
 *     for a version that does not exist;
 *   - a collection without a table replays the changelog instead. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <arpa/inet.h>
#include <time.h>

#include "../ingest/ingest_fixture.h"
#include "rv_pgload.h"
#include "rv_time.h"

#define COLL "pgl"
#define DIM 8
#define N_IDS 400
#define N_DELETED 37

static ingest_fixture_t F;

static void produce(const char *id, const float *v) {
  rv_buf_t b;
  rv_buf_init(&b);
  if (v) {
    rv_vector_record_t r;
    rv_vector_record_init(&r);
    r.id = (char *)id;
    r.id_len = strlen(id);
    r.vector = (float *)v;
    r.dim = DIM;
    r.metadata = "{\"label\":\"x\"}";
    char e[256];
    if (rv_codec_encode_vector(F.codec, &r, &b, e, sizeof e)) fail_msg("encode: %s", e);
  }
  while (rd_kafka_producev(F.producer, RD_KAFKA_V_TOPIC(COLL ".vectors"), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                           RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(b.base, b.len),
                           RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(F.producer, 10);
  rv_buf_close(&b);
}

static long long query_int(const char *sql) {
  PGresult *r = PQexec(F.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) fail_msg("%s: %s", sql, PQresultErrorMessage(r));
  long long v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Ingests N_IDS upserts, then an update of every 7th and a delete of N_DELETED ids. */
static int setup(void **state) {
  (void)state;
  if (ingest_fixture_open(&F, "rv-pgload-", COLL, DIM, 3, 3, 0, NULL)) return -1;
  if (rd_kafka_mock_topic_create(F.mock, "empty.changelog", 3, 1)) return -1;
  rv_ingest_conf_t ic = F.conf;
  ic.sq8_train = 100;
  ic.batch_rows = 64;
  rv_ingest_conf_defaults(&ic);
  char e[1024];
  if (rv_ingest_migrate(&ic, e, sizeof e)) {
    print_error("migrate: %s\n", e);
    return -1;
  }
  rv_ingest_t *in = rv_ingest_new(&ic, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) {
    print_error("ingest: %s\n", e);
    return -1;
  }
  float v[DIM];
  char id[32];
  for (int i = 0; i < N_IDS; i++) {
    for (int k = 0; k < DIM; k++) v[k] = (float)((i * 37 + k * 11) % 101) / 10.0f;
    snprintf(id, sizeof id, "id-%04d", i);
    produce(id, v);
  }
  for (int i = 0; i < N_IDS; i += 7) {
    for (int k = 0; k < DIM; k++) v[k] = (float)((i * 13 + k * 5) % 89) / 10.0f;
    snprintf(id, sizeof id, "id-%04d", i);
    produce(id, v);
  }
  for (int i = 1; i <= N_DELETED; i++) {
    snprintf(id, sizeof id, "id-%04d", i * 10 + 3);
    produce(id, NULL);
  }
  rd_kafka_flush(F.producer, 10000);
  int want = N_IDS + (N_IDS + 6) / 7 + N_DELETED;
  int64_t deadline = rv_mono_ms() + 60000;
  rv_ingest_stats_t st;
  do {
    sleep_ms(50);
    rv_ingest_stats(in, &st);
  } while ((int)(st.ingested + st.dead_lettered) < want && rv_mono_ms() < deadline);
  rv_ingest_stop(in);
  rv_ingest_destroy(in);
  if ((int)st.ingested != want) {
    print_error("ingested %llu of %d\n", (unsigned long long)st.ingested, want);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  ingest_fixture_close(&F);
  return 0;
}

static rv_pgload_t *new_store(const char *coll, int fresh_log) {
  rv_pgload_conf_t pc;
  memset(&pc, 0, sizeof pc);
  snprintf(pc.conninfo, sizeof pc.conninfo, "%s", rv_pg_server_conninfo(F.pg));
  snprintf(pc.collection, sizeof pc.collection, "%s", coll);
  snprintf(pc.source_topic, sizeof pc.source_topic, "%s.vectors", coll);
  pc.fresh_log = fresh_log;
  char e[256];
  rv_pgload_t *p = rv_pgload_new(&pc, e, sizeof e);
  if (!p) fail_msg("pgload: %s", e);
  return p;
}

/* A started replica of coll reading the empty changelog, with p as its store. */
static rv_replica_t *new_replica(const char *coll, rv_pgload_t *p) {
  rv_replica_conf_t rc;
  memset(&rc, 0, sizeof rc);
  snprintf(rc.brokers, sizeof rc.brokers, "%s", F.brokers);
  snprintf(rc.region, sizeof rc.region, "test");
  snprintf(rc.collection.name, sizeof rc.collection.name, "%s", coll);
  rc.collection.dim = DIM;
  rc.collection.partitions = 3;
  rv_collection_default_topics(&rc.collection);
  snprintf(rc.collection.changelog_topic, sizeof rc.collection.changelog_topic, "empty.changelog");
  rc.storage = RV_HNSW_SQ8;
  rc.sq8_train = 50;
  rc.store = rv_pgload_store(p);
  char e[512];
  rv_replica_t *r = rv_replica_new(&rc, e, sizeof e);
  if (!r || rv_replica_start(r, e, sizeof e)) fail_msg("replica: %s", e);
  return r;
}

static void wait_bootstrapped(rv_replica_t *r, rv_replica_stats_t *st) {
  int64_t deadline = rv_mono_ms() + 30000;
  do {
    rv_replica_stats(r, st);
    if (st->bootstrapped) return;
    sleep_ms(20);
  } while (rv_mono_ms() < deadline);
  fail_msg("replica not bootstrapped after 30 s");
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_load_holds_live_ids_at_stored_versions(void **state) {
  (void)state;
  long long live = query_int("SELECT count(*) FROM " COLL " WHERE deleted_at IS NULL");
  assert_int_equal(live, N_IDS - N_DELETED);
  rv_pgload_t *p = new_store(COLL, 0);
  rv_replica_t *r = new_replica(COLL, p);
  rv_replica_stats_t st;
  wait_bootstrapped(r, &st);
  assert_int_equal(st.boot, RV_BOOT_STORE);
  assert_int_equal(st.count, (uint64_t)live);
  assert_int_equal(st.quantizer_version, query_int("SELECT max(version) FROM rv_quantizers WHERE collection = '" COLL
                                                   "' AND kind = 'sq8'"));
  rv_pgload_stats_t ps;
  rv_pgload_stats(p, &ps);
  assert_int_equal(ps.loads, 1);
  assert_int_equal(ps.rows, (uint64_t)live);
  assert_int_equal(ps.skipped, 0);

  /* exactly the live ids: every vector, searched exhaustively */
  float q[DIM] = {0};
  rv_hit_list_t hits = {0};
  assert_int_equal(rv_replica_search(r, q, DIM, (int)live + 10, 4 * (int)live, &hits), RV_OK);
  PGresult *res = PQexec(F.db, "SELECT id, src_partition, src_offset FROM " COLL " WHERE deleted_at IS NULL ORDER BY id");
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  assert_int_equal(hits.n, PQntuples(res));
  char **ids = calloc((size_t)hits.n, sizeof *ids);
  for (int i = 0; i < hits.n; i++) ids[i] = hits.hits[i].id;
  qsort(ids, (size_t)hits.n, sizeof *ids, cmp_str);
  for (int i = 0; i < PQntuples(res); i++) assert_string_equal(ids[i], PQgetvalue(res, i, 0));
  free(ids);
  rv_hit_list_close(&hits);

  /* the stored SQ8 codes, byte for byte (no re-quantizing) */
  PGresult *codes = PQexecParams(F.db, "SELECT id, code FROM " COLL " WHERE deleted_at IS NULL", 0, NULL, NULL, NULL,
                                 NULL, 1);
  assert_int_equal(PQntuples(codes), (int)live);
  for (int i = 0; i < PQntuples(codes); i++) {
    uint8_t got[DIM];
    assert_int_equal(PQgetlength(codes, i, 1), DIM);
    assert_int_equal(rv__replica_get_code(r, PQgetvalue(codes, i, 0), got, sizeof got), RV_OK);
    if (memcmp(got, PQgetvalue(codes, i, 1), DIM)) fail_msg("%s: code differs from the stored one", PQgetvalue(codes, i, 0));
  }
  PQclear(codes);

  /* each at its stored version: a delete at it is ignored, one at the next offset applies */
  uint64_t count = st.count;
  for (int i = 0; i < PQntuples(res); i += 9) {
    rv_change_t c;
    rv_change_init(&c);
    c.id = PQgetvalue(res, i, 0);
    c.op = RV_OP_DELETE;
    c.src_partition = atoi(PQgetvalue(res, i, 1));
    c.src_offset = atoll(PQgetvalue(res, i, 2));
    assert_int_equal(rv_replica_apply(r, &c), RV_OK);
    rv_replica_stats(r, &st);
    if (st.count != count) fail_msg("%s: a delete at its stored version %d/%lld applied", c.id, c.src_partition,
                                    (long long)c.src_offset);
    c.src_offset++;
    assert_int_equal(rv_replica_apply(r, &c), RV_OK);
    rv_replica_stats(r, &st);
    if (st.count != count - 1) fail_msg("%s: a delete after its stored version did not apply", c.id);
    count--;
  }
  PQclear(res);
  rv_replica_destroy(r);
  rv_pgload_destroy(p);
}

static void test_fresh_log_loads_older_than_any_new_change(void **state) {
  (void)state;
  rv_pgload_t *p = new_store(COLL, 1);
  rv_replica_t *r = new_replica(COLL, p);
  rv_replica_stats_t st;
  wait_bootstrapped(r, &st);
  assert_int_equal(st.boot, RV_BOOT_STORE);
  uint64_t count = st.count;
  PGresult *res = PQexec(F.db, "SELECT id, src_partition FROM " COLL " WHERE deleted_at IS NULL AND src_offset > 5 LIMIT 3");
  assert_int_equal(PQntuples(res), 3);
  for (int i = 0; i < 3; i++) {
    rv_change_t c;
    rv_change_init(&c);
    c.id = PQgetvalue(res, i, 0);
    c.op = RV_OP_DELETE;
    c.src_partition = atoi(PQgetvalue(res, i, 1));
    c.src_offset = 0; /* the new log's first offset */
    assert_int_equal(rv_replica_apply(r, &c), RV_OK);
    rv_replica_stats(r, &st);
    assert_int_equal(st.count, count - 1 - i);
  }
  PQclear(res);
  rv_replica_destroy(r);
  rv_pgload_destroy(p);
}

static void test_quantizer_by_version(void **state) {
  (void)state;
  rv_pgload_t *p = new_store(COLL, 0);
  PGresult *res = PQexecParams(F.db, "SELECT version, params FROM rv_quantizers WHERE collection = '" COLL
                                     "' AND kind = 'sq8' ORDER BY version LIMIT 1",
                               0, NULL, NULL, NULL, NULL, 1);
  assert_int_equal(PQntuples(res), 1);
  int32_t version = (int32_t)ntohl(*(uint32_t *)PQgetvalue(res, 0, 0));
  void *params = NULL;
  size_t len = 0;
  char e[256];
  assert_int_equal(rv_pgload_quantizer(p, version, &params, &len, e, sizeof e), RV_OK);
  assert_int_equal(len, (size_t)PQgetlength(res, 0, 1));
  assert_memory_equal(params, PQgetvalue(res, 0, 1), len);
  free(params);
  PQclear(res);
  params = NULL;
  assert_int_equal(rv_pgload_quantizer(p, 9999, &params, &len, e, sizeof e), RV_ERR_NOT_FOUND);
  assert_null(params);
  rv_pgload_destroy(p);
}

static void test_missing_table_replays(void **state) {
  (void)state;
  rv_pgload_t *p = new_store("nothing_here", 0);
  rv_replica_t *r = new_replica("nothing_here", p);
  rv_replica_stats_t st;
  wait_bootstrapped(r, &st);
  assert_int_equal(st.boot, RV_BOOT_REPLAY);
  assert_int_equal(st.count, 0);
  rv_replica_destroy(r);
  rv_pgload_destroy(p);
  char e[256];
  rv_pgload_conf_t bad = {0};
  snprintf(bad.conninfo, sizeof bad.conninfo, "x");
  snprintf(bad.collection, sizeof bad.collection, "a;drop");
  assert_null(rv_pgload_new(&bad, e, sizeof e));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_holds_live_ids_at_stored_versions),
      cmocka_unit_test(test_fresh_log_loads_older_than_any_new_change),
      cmocka_unit_test(test_quantizer_by_version),
      cmocka_unit_test(test_missing_table_replays),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
