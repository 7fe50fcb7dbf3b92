#define _GNU_SOURCE
/* The changelog's transactional outbox (ingest/rv_outbox.c) and the stored
 * offsets' compare-and-set (ingest/rv_pgwriter.c), against a real private
 * PostgreSQL and an in-process librdkafka mock cluster:
 *   - with the changelog unavailable (its partitions have no leader), batches
 *     still commit: rows and offsets in PostgreSQL, their changes in the
 *     outbox, nothing in the changelog; once it is back the outbox empties
 *     into the changelog (the publication comes strictly after the COMMIT);
 *   - an ingest stopped while the changelog is away leaves its committed
 *     changes in the outbox, and the next ingest publishes them ("drain");
 *   - two writers that both believe a partition has no stored offset yet:
 *     the second to commit is fenced (RV_ERR_STATE), not silently rewound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rv_batch.h"
#include "ingest_fixture.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_pgwriter.h"
#include "rv_record.h"
#include "rv_time.h"

#define COLL "obx"
#define DIM 4
#define PARTS 3

static struct {
  ingest_fixture_t f;
  rv_ingest_t *ingest;
} T;

static void produce_n(const char *prefix, int n) {
  char id[64], e[256];
  float v[DIM];
  for (int i = 0; i < n; i++) {
    snprintf(id, sizeof id, "%s-%04d", prefix, i);
    for (int k = 0; k < DIM; k++) v[k] = (float)i + (float)k * 0.25f;
    rv_vector_record_t r;
    rv_vector_record_init(&r);
    r.id = id;
    r.id_len = strlen(id);
    r.vector = v;
    r.dim = DIM;
    rv_buf_t b;
    rv_buf_init(&b);
    if (rv_codec_encode_vector(T.f.codec, &r, &b, e, sizeof e)) fail_msg("encode: %s", e);
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(T.f.producer, RD_KAFKA_V_TOPIC(COLL ".vectors"),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(id, strlen(id)),
                                    RD_KAFKA_V_VALUE(b.base, b.len), RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(T.f.producer, 10);
    if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
    rv_buf_close(&b);
  }
  if (rd_kafka_flush(T.f.producer, 30000)) fail_msg("flush timed out");
}

static long long query_int(const char *sql) {
  PGresult *r = PQexec(T.f.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) fail_msg("%s: %s", sql, PQerrorMessage(T.f.db));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* Polls sql until it returns want; fails with both values after timeout_ms. */
static void wait_int(const char *sql, long long want, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  long long got;
  while ((got = query_int(sql)) != want) {
    if (rv_mono_ms() > deadline) fail_msg("after %d ms: %s = %lld, expected %lld", timeout_ms, sql, got, want);
    usleep(50 * 1000);
  }
}

static void set_changelog_leaders(int32_t broker) {
  for (int p = 0; p < PARTS; p++)
    if (rd_kafka_mock_partition_set_leader(T.f.mock, COLL ".changelog", p, broker)) fail_msg("set_leader");
}

/* Messages in the changelog (sum of its high watermarks; its partitions must have a leader). */
static long long changelog_count(void) {
  long long n = 0;
  for (int p = 0; p < PARTS; p++) {
    int64_t lo, hi;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(T.f.producer, COLL ".changelog", p, &lo, &hi, 10000);
    if (err) fail_msg("watermarks [%d]: %s", p, rd_kafka_err2str(err));
    n += hi;
  }
  return n;
}

/* ---- fixture ---- */

static int setup(void **state) {
  (void)state;
  char e[1024];
  if (ingest_fixture_open(&T.f, "rv-outbox-", COLL, DIM, PARTS, PARTS, 0, NULL)) return -1;
  T.f.conf.batch_rows = 50;
  T.f.conf.batch_ms = 20;
  T.f.conf.session_timeout_ms = 3000;
  T.f.conf.max_unconfirmed = 3; /* pauses after a few batches of 50 while the changelog is down */
  T.f.conf.sq8_train = 10; /* batches wait for the SQ8 quantizer's training vectors */
  rv_ingest_conf_defaults(&T.f.conf);
  if (rv_ingest_migrate(&T.f.conf, e, sizeof e)) {
    print_error("migrate: %s\n", e);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rv_ingest_destroy(T.ingest);
  ingest_fixture_close(&T.f);
  return 0;
}

/* ---- tests ---- */

static void start_ingest(void) {
  char e[512];
  rv_ingest_destroy(T.ingest);
  T.ingest = rv_ingest_new(&T.f.conf, e, sizeof e);
  if (!T.ingest || rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("ingest: %s", e);
}

/* Polls sql until it returns more than zero; returns the value. */
static long long wait_some(const char *sql, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  long long got;
  while ((got = query_int(sql)) <= 0) {
    if (rv_mono_ms() > deadline) fail_msg("after %d ms: %s = %lld, expected > 0", timeout_ms, sql, got);
    usleep(50 * 1000);
  }
  return got;
}

#define ROWS_A "SELECT count(*) FROM " COLL " WHERE id LIKE 'a-%'"
#define ROWS_B "SELECT count(*) FROM " COLL " WHERE id LIKE 'b-%'"
/* Changes waiting in the outbox: whole records, plus the table rows a range names (rv_outbox.h). */
#define OUTBOX                                                                                              \
  "SELECT (SELECT count(*) FROM " COLL "_outbox WHERE key IS NOT NULL) + (SELECT count(*) FROM " COLL " t " \
  "JOIN " COLL "_outbox o ON o.key IS NULL AND t.src_partition = o.src_partition AND "                      \
  "t.src_offset >= o.from_offset AND t.src_offset < o.to_offset AND t.updated_at = o.written_at)"
#define OUTBOX_ROWS "SELECT count(*) FROM " COLL "_outbox"

static void test_commit_does_not_wait_for_the_changelog(void **state) {
  (void)state;
  set_changelog_leaders(-1); /* producing to the changelog now stalls */
  start_ingest();
  produce_n("a", 300);
  /* A batch commits although none of its changes can be published: they wait
   * in the outbox. Ingest then pauses (no newer change may overtake them). */
  long long rows = wait_some(ROWS_A, 60000);
  /* One change per id, committed with its row (one statement: one snapshot, while batches keep committing). */
  assert_int_equal(1, query_int("SELECT ((" ROWS_A ") = (" OUTBOX "))::int"));
  rv_ingest_stats_t s;
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(0, s.published);
  assert_true(rows < 300);

  set_changelog_leaders(1);
  wait_int(ROWS_A, 300, 60000);
  wait_int(OUTBOX_ROWS, 0, 60000);
  long long n = changelog_count();
  if (n < 300) fail_msg("changelog holds %lld messages after the outbox emptied, expected >= 300", n);
  rv_ingest_stats(T.ingest, &s);
  assert_true(s.published >= 300);
  assert_int_equal(0, s.drained);
}

static void test_stopped_ingest_leaves_changes_for_the_next(void **state) {
  (void)state;
  rv_ingest_stats_t s;
  rv_ingest_stats(T.ingest, &s);
  uint64_t published_before = s.published;
  long long before = changelog_count();
  set_changelog_leaders(-1);
  produce_n("b", 100);
  long long committed = wait_some(ROWS_B, 60000);
  /* Stop gives up on the publication after its grace period: the changes stay in the outbox. */
  int64_t t0 = rv_mono_ms();
  rv_ingest_stop(T.ingest);
  print_message("stop took %lld ms with the changelog unavailable\n", (long long)(rv_mono_ms() - t0));
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(published_before, s.published);
  committed = query_int(ROWS_B); /* the final batch of the stop may have committed more */
  assert_int_equal(committed, query_int(OUTBOX));

  set_changelog_leaders(1);
  start_ingest(); /* drains the outbox of its partitions when they are assigned */
  wait_int(ROWS_B, 100, 60000);
  wait_int(OUTBOX_ROWS, 0, 60000);
  rv_ingest_stats(T.ingest, &s);
  assert_int_equal(committed, s.drained);
  assert_int_equal(100 - committed, s.consumed); /* what was committed is not read again */
  long long n = changelog_count();
  if (n < before + 100) fail_msg("changelog holds %lld messages, expected >= %lld", n, before + 100);
  rv_ingest_stop(T.ingest);
}

typedef struct {
  rv_pgwriter_t *w;
  rv_batch_t *b;
  rv_err_t err;
  char e[512];
} apply_arg_t;

static void *apply_thread(void *arg) {
  apply_arg_t *a = arg;
  rv_pgw_outcome_t outcome;
  a->err = rv_pgwriter_apply(a->w, a->b, &outcome, a->e, sizeof a->e);
  if (!a->err) a->err = rv_pgwriter_commit(a->w, a->e, sizeof a->e);
  return NULL;
}

/* Partition 7 of a topic nobody stored offsets for: both writers expect
 * "no row". The first commits; the second, whose fence ran before that
 * commit, must be refused instead of overwriting the stored offset. */
static void test_offsets_compare_and_set(void **state) {
  (void)state;
  char e[512];
  rv_pgwriter_t *w1 = rv_pgwriter_new(rv_pg_server_conninfo(T.f.pg), 0, COLL, "cas-group", "cas.topic", e, sizeof e);
  rv_pgwriter_t *w2 = rv_pgwriter_new(rv_pg_server_conninfo(T.f.pg), 0, COLL, "cas-group", "cas.topic", e, sizeof e);
  assert_non_null(w1);
  assert_non_null(w2);
  if (rv_pgwriter_connect(w1, e, sizeof e) || rv_pgwriter_connect(w2, e, sizeof e)) fail_msg("connect: %s", e);
  rv_batch_t b1, b2;
  rv_batch_init(&b1);
  rv_batch_init(&b2);
  for (int64_t off = 0; off < 10; off++) assert_int_equal(RV_OK, rv_batch_consumed(&b1, 7, off, -1));
  for (int64_t off = 0; off < 5; off++) assert_int_equal(RV_OK, rv_batch_consumed(&b2, 7, off, -1));
  rv_pgw_outcome_t outcome;
  if (rv_pgwriter_apply(w1, &b1, &outcome, e, sizeof e)) fail_msg("apply 1: %s", e);
  assert_int_equal(RV_PGW_APPLIED, outcome);
  apply_arg_t a = {w2, &b2, RV_OK, ""};
  pthread_t th;
  pthread_create(&th, NULL, apply_thread, &a);
  /* The second passes its fence (no row to lock yet) and then waits on the first's uncommitted row. */
  wait_int("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
           1, 30000);
  if (rv_pgwriter_commit(w1, e, sizeof e)) fail_msg("commit 1: %s", e);
  pthread_join(th, NULL);
  if (a.err != RV_ERR_STATE) fail_msg("second writer: %s (%s), expected RV_ERR_STATE", rv_err_str(a.err), a.e);
  rv_pgwriter_rollback(w2);
  assert_int_equal(10, query_int("SELECT next_offset FROM rv_offsets WHERE consumer_group = 'cas-group' "
                                 "AND topic = 'cas.topic' AND partition = 7"));
  rv_batch_close(&b1);
  rv_batch_close(&b2);
  rv_pgwriter_destroy(w1);
  rv_pgwriter_destroy(w2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commit_does_not_wait_for_the_changelog),
      cmocka_unit_test(test_stopped_ingest_leaves_changes_for_the_next),
      cmocka_unit_test(test_offsets_compare_and_set),
  };
  return cmocka_run_group_tests_name("outbox", tests, setup, teardown);
}
