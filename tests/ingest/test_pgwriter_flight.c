#define _GNU_SOURCE
/* The writer's in-flight commit (rv_pgwriter_send_commit / poll / finish,
 * run on the writer's flight thread) against a real private PostgreSQL:
 * a plain commit; a commit whose COPY is blocked by another session's
 * ACCESS EXCLUSIVE lock on the collection (poll stays 0, calls that need the
 * connection are refused, finish returns once the lock goes); such a blocked
 * commit abandoned by rollback and by destroy (both return at once, nothing
 * of the batch is stored, the same batch commits afterwards exactly once);
 * the next batch's rows written on a second writer while a commit is in
 * flight, then fenced and committed after it.
 * Every wait is on an observable condition with a deadline. No Kafka (no
 * librdkafka client at all: this test also runs under ThreadSanitizer):
 * batches are built directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rv_batch.h"
#include "batch_fixture.h"
#include "rv_embedded.h"
#include "rv_pgschema.h"
#include "rv_pgwriter.h"
#include "rv_time.h"

#define DIM 4
#define CODE 4
#define CODE_VERSION 7
#define N_ROWS 6          /* rows per batch: partition i % 2, offset i / 2 */
#define NEXT_OFFSET 3     /* the batch's next offset on both partitions */
#define WAIT_MS 20000     /* deadline of every wait on a condition */
#define QUICK_MS 5000     /* abandoning a blocked commit must take less */
#define LOCKER_IDLE_MS 30000 /* the server ends a locker left idle this long: a hang becomes a failure */
#define TOPIC "t"

static struct {
  char dir[64];
  rv_pg_server_t *pg;
  PGconn *db; /* the observer: a second connection, autocommit */
  int64_t now_ms;
} T;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static void exec_on(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(c));
  PQclear(r);
}

static long long query_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long query_int(const char *fmt, ...) {
  char sql[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  PGresult *r = PQexec(T.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(T.db));
  if (PQntuples(r) != 1) fail_msg("%s: %d rows, expected 1", sql, PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static int setup(void **state) {
  (void)state;
  char e[1024];
  snprintf(T.dir, sizeof T.dir, "/tmp/rv-pgflight-XXXXXX");
  if (!mkdtemp(T.dir) || chmod(T.dir, 0755)) return -1;
  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  if (!(T.db = PQconnectdb(rv_pg_server_conninfo(T.pg))) || PQstatus(T.db) != CONNECTION_OK) {
    print_error("connect: %s\n", PQerrorMessage(T.db));
    return -1;
  }
  /* A read of a locked table fails rather than hangs. */
  PGresult *r = PQexec(T.db, "SET lock_timeout = '10s'");
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) return -1;
  T.now_ms = rv_wall_ms();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (T.db) PQfinish(T.db);
  rv_pg_server_stop(T.pg);
  if (strncmp(T.dir, "/tmp/rv-pgflight-", 17) == 0) nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* ---- batches ---- */

static float salt_of(int i) { return (float)(10 + i); }

/* N_ROWS new ids <prefix>-<i> on partitions 0 and 1 at offsets base + i / 2,
 * expecting the stored next offsets to be base (-1: none stored yet). */
static void make_batch_at(rv_batch_t *b, const char *prefix, int64_t base) {
  char id[64];
  for (int i = 0; i < N_ROWS; i++) {
    snprintf(id, sizeof id, "%s-%d", prefix, i);
    test_batch_add_row(b, DIM, id, RV_OP_UPSERT, salt_of(i), T.now_ms - i, i % 2, (base < 0 ? 0 : base) + i / 2,
                       base);
  }
  test_batch_add_codes(b, CODE_VERSION, CODE);
}

/* The first batch of both partitions (no stored offsets). */
static void make_batch(rv_batch_t *b, const char *prefix) { make_batch_at(b, prefix, -1); }

/* ---- what PostgreSQL holds, read on the observer connection ---- */

static long long rows_stored(const char *table, const char *prefix) {
  return query_int("SELECT count(*) FROM %s WHERE id LIKE '%s-%%'", table, prefix);
}

static long long ids_pinned(const char *table, const char *prefix) {
  return query_int("SELECT count(*) FROM %s_ids WHERE id LIKE '%s-%%'", table, prefix);
}

static long long offsets_stored(const char *group) {
  return query_int("SELECT count(*) FROM rv_offsets WHERE consumer_group = '%s' AND topic = '" TOPIC "'", group);
}

/* The batch's rows exactly once each, with their vector (float32 LE bytes),
 * code, metadata and source position, and the batch's offsets. */
static void assert_batch_stored(const char *table, const char *prefix, const char *group) {
  assert_int_equal(N_ROWS, rows_stored(table, prefix));
  assert_int_equal(N_ROWS, ids_pinned(table, prefix));
  assert_int_equal(0, query_int("SELECT count(*) FROM (SELECT id FROM %s GROUP BY id HAVING count(*) > 1) d", table));
  for (int i = 0; i < N_ROWS; i++) {
    char vec[2 * DIM * 4 + 1], code[2 * CODE + 1];
    for (int k = 0; k < DIM; k++) {
      float f = salt_of(i) + (float)k;
      uint32_t u;
      memcpy(&u, &f, 4);
      snprintf(vec + 8 * k, 9, "%02x%02x%02x%02x", u & 0xff, (u >> 8) & 0xff, (u >> 16) & 0xff, u >> 24);
    }
    for (int k = 0; k < CODE; k++) snprintf(code + 2 * k, 3, "%02x", (unsigned)salt_of(i));
    if (query_int("SELECT count(*) FROM %s WHERE id = '%s-%d' AND vector = '\\x%s' AND code = '\\x%s' "
                  "AND code_version = %d AND pq_code IS NULL AND metadata @> '{\"tag\": \"t\"}' "
                  "AND src_partition = %d AND src_offset = %d AND deleted_at IS NULL "
                  "AND (extract(epoch FROM created_at) * 1000)::bigint = %lld AND updated_at IS NOT NULL",
                  table, prefix, i, vec, code, CODE_VERSION, i % 2, i / 2, (long long)(T.now_ms - i)) != 1)
      fail_msg("%s: row %s-%d missing or wrong", table, prefix, i);
  }
  for (int p = 0; p < 2; p++)
    assert_int_equal(NEXT_OFFSET, query_int("SELECT next_offset FROM rv_offsets WHERE consumer_group = '%s' "
                                            "AND topic = '" TOPIC "' AND partition = %d",
                                            group, p));
  assert_int_equal(2, offsets_stored(group));
}

static void assert_nothing_stored(const char *table, const char *prefix, const char *group) {
  assert_int_equal(0, rows_stored(table, prefix));
  assert_int_equal(0, ids_pinned(table, prefix));
  assert_int_equal(0, offsets_stored(group));
}

/* ---- sessions ---- */

static void migrate(const char *table) {
  char e[1024];
  if (rv_pgschema_migrate(T.db, table, T.now_ms, e, sizeof e)) fail_msg("migrating %s: %s", table, e);
}

/* A connected writer for table, its partitions made for b (so the batch transaction needs no lock on the parent). */
static rv_pgwriter_t *writer_for(const char *table, const char *group, rv_batch_t *b) {
  char e[1024];
  rv_pgwriter_t *w = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 0, table, group, TOPIC, e, sizeof e);
  if (!w) fail_msg("rv_pgwriter_new: %s", e);
  if (rv_pgwriter_connect(w, e, sizeof e)) fail_msg("connect: %s", e);
  if (rv_pgwriter_prepare_partitions(w, b, e, sizeof e)) fail_msg("prepare_partitions: %s", e);
  return w;
}

static void apply_new(rv_pgwriter_t *w, rv_batch_t *b) {
  char e[1024];
  rv_pgw_outcome_t out = RV_PGW_ALREADY;
  if (rv_pgwriter_apply(w, b, &out, e, sizeof e)) fail_msg("apply: %s", e);
  assert_int_equal(RV_PGW_APPLIED, out);
}

/* A second session holding ACCESS EXCLUSIVE on the collection's parent table, in an open transaction. */
static PGconn *lock_table(const char *table) {
  char sql[256];
  PGconn *c = PQconnectdb(rv_pg_server_conninfo(T.pg));
  if (PQstatus(c) != CONNECTION_OK) fail_msg("locker: %s", PQerrorMessage(c));
  /* Should the writer block the test's own thread (a broken send_commit,
   * rollback or destroy waiting for the lock), the server ends the locker
   * after a while: the test then fails (the call took too long, the
   * locker's COMMIT fails) instead of hanging. */
  snprintf(sql, sizeof sql, "SET idle_in_transaction_session_timeout = %d", LOCKER_IDLE_MS);
  exec_on(c, sql);
  exec_on(c, "BEGIN");
  snprintf(sql, sizeof sql, "LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", table);
  exec_on(c, sql);
  assert_int_equal(1, query_int("SELECT count(*) FROM pg_locks WHERE pid = %d AND locktype = 'relation' AND "
                                "relation = '%s'::regclass AND mode = 'AccessExclusiveLock' AND granted",
                                PQbackendPID(c), table));
  return c;
}

static void unlock_table(PGconn *c) {
  exec_on(c, "COMMIT");
  PQfinish(c);
}

/* Whether backend pid is waiting (wait_event_type Lock) for a lock on table that locker holds. */
static int waits_for_lock(int pid, const char *table, int locker) {
  return query_int("SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                   "WHERE a.pid = %d AND a.wait_event_type = 'Lock' AND l.locktype = 'relation' "
                   "AND l.relation = '%s'::regclass AND NOT l.granted AND %d = ANY(pg_blocking_pids(a.pid))",
                   pid, table, locker) == 1;
}

static void await_lock_wait(int pid, const char *table, int locker) {
  int64_t deadline = rv_mono_ms() + WAIT_MS;
  while (!waits_for_lock(pid, table, locker)) {
    if (rv_mono_ms() > deadline)
      fail_msg("the writer's backend %d never waited for the lock on %s (its COPY was not sent?)", pid, table);
    sleep_ms(5);
  }
}

static void await_backend_gone(int pid) {
  int64_t deadline = rv_mono_ms() + WAIT_MS;
  while (query_int("SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid) != 0) {
    if (rv_mono_ms() > deadline) fail_msg("backend %d of the abandoned commit is still there", pid);
    sleep_ms(5);
  }
}

/* Polls (never blocking) until the in-flight commit's result is in. */
static void await_poll(rv_pgwriter_t *w) {
  int64_t deadline = rv_mono_ms() + WAIT_MS;
  while (!rv_pgwriter_poll(w)) {
    if (rv_mono_ms() > deadline) fail_msg("rv_pgwriter_poll still 0 after %d ms", WAIT_MS);
    sleep_ms(1);
  }
}

/* Applies b on w and sends its commit while a second session holds the
 * collection's parent table: returns that session once the writer's COPY
 * waits for its lock (in flight, poll 0). */
static PGconn *send_blocked_commit(rv_pgwriter_t *w, rv_batch_t *b, const char *table) {
  char e[1024];
  int pid = PQbackendPID(rv_pgwriter_conn(w));
  PGconn *locker = lock_table(table);
  apply_new(w, b); /* touches rv_offsets and <c>_ids only: not blocked */
  if (rv_pgwriter_send_commit(w, e, sizeof e)) fail_msg("send_commit: %s", e);
  assert_int_equal(1, rv_pgwriter_in_flight(w));
  await_lock_wait(pid, table, PQbackendPID(locker));
  /* The server has not answered the COPY: the result cannot be in. */
  assert_int_equal(0, rv_pgwriter_poll(w));
  return locker;
}

/* ---- cases ---- */

/* apply -> send_commit -> poll -> finish, then the connection is the writer's again. */
static void test_commit_in_flight(void **state) {
  (void)state;
  const char *table = "fl_plain", *group = "g-plain";
  char e[1024];
  migrate(table);
  rv_batch_t b;
  rv_batch_init(&b);
  make_batch(&b, "plain");
  rv_pgwriter_t *w = writer_for(table, group, &b);

  assert_int_equal(0, rv_pgwriter_in_flight(w));
  assert_int_equal(1, rv_pgwriter_poll(w)); /* nothing in flight */
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_finish(w, e, sizeof e));
  apply_new(w, &b);
  if (rv_pgwriter_send_commit(w, e, sizeof e)) fail_msg("send_commit: %s", e);
  assert_int_equal(1, rv_pgwriter_in_flight(w));
  rv_batch_clear(&b); /* apply encoded the rows: the batch may change now */
  await_poll(w);
  assert_int_equal(1, rv_pgwriter_in_flight(w)); /* until finish takes the result */
  rv_err_t err = rv_pgwriter_finish(w, e, sizeof e);
  if (err) fail_msg("finish: %s", e);
  assert_int_equal(0, rv_pgwriter_in_flight(w));
  assert_int_equal(1, rv_pgwriter_poll(w));
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_finish(w, e, sizeof e)); /* nothing in flight any more */

  assert_batch_stored(table, "plain", group);
  /* The connection is the writer's again: idle, and it reads the new offsets. */
  assert_non_null(rv_pgwriter_conn(w));
  assert_int_equal(PQTRANS_IDLE, PQtransactionStatus(rv_pgwriter_conn(w)));
  const int32_t parts[3] = {0, 1, 2};
  int64_t next[3] = {0, 0, 0};
  if (rv_pgwriter_read_offsets(w, parts, next, 3, e, sizeof e)) fail_msg("read_offsets: %s", e);
  assert_int_equal(NEXT_OFFSET, next[0]);
  assert_int_equal(NEXT_OFFSET, next[1]);
  assert_int_equal(-1, next[2]);
  /* The same batch again: already committed. */
  make_batch(&b, "plain");
  rv_pgw_outcome_t out = RV_PGW_APPLIED;
  if (rv_pgwriter_apply(w, &b, &out, e, sizeof e)) fail_msg("apply again: %s", e);
  assert_int_equal(RV_PGW_ALREADY, out);
  assert_int_equal(0, rv_pgwriter_in_flight(w));
  rv_pgwriter_destroy(w);
  rv_batch_close(&b);
}

/* The COPY waits for a lock: poll stays 0, the connection's users are refused, finish returns once it goes. */
static void test_commit_blocked_by_lock(void **state) {
  (void)state;
  const char *table = "fl_locked", *group = "g-locked";
  char e[1024];
  migrate(table);
  rv_batch_t b, other;
  rv_batch_init(&b);
  rv_batch_init(&other);
  make_batch(&b, "locked");
  make_batch(&other, "other");
  rv_pgwriter_t *w = writer_for(table, group, &b);
  int pid = PQbackendPID(rv_pgwriter_conn(w));
  PGconn *locker = send_blocked_commit(w, &b, table);

  /* Everything that would use the connection is refused while the commit is in flight. */
  rv_pgw_outcome_t out = RV_PGW_ALREADY;
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_apply(w, &other, &out, e, sizeof e));
  const int32_t parts[2] = {0, 1};
  int64_t next[2] = {7, 7};
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_read_offsets(w, parts, next, 2, e, sizeof e));
  assert_int_equal(7, next[0]); /* untouched */
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_connect(w, e, sizeof e));
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_prepare_partitions(w, &other, e, sizeof e));
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_send_commit(w, e, sizeof e));
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_commit(w, e, sizeof e));
  rv_buf_t params;
  rv_buf_init(&params);
  int32_t version = 0;
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_get_quantizer(w, "sq8", &version, &params, e, sizeof e));
  assert_int_equal(RV_ERR_INVALID,
                   rv_pgwriter_put_quantizer(w, "sq8", 1, "AAAA", 4, 1, &version, &params, e, sizeof e));
  rv_buf_close(&params);
  /* ... and none of that disturbed the commit: still in flight, still waiting, nothing visible. */
  assert_int_equal(1, rv_pgwriter_in_flight(w));
  assert_int_equal(0, rv_pgwriter_poll(w));
  assert_true(waits_for_lock(pid, table, PQbackendPID(locker)));
  assert_int_equal(0, rv_pgwriter_poll(w));
  /* (the table itself cannot be read while locked; its ids and the offsets can) */
  assert_int_equal(0, ids_pinned(table, "locked"));
  assert_int_equal(0, offsets_stored(group));

  unlock_table(locker);
  await_poll(w);
  rv_err_t err = rv_pgwriter_finish(w, e, sizeof e);
  if (err) fail_msg("finish: %s", e);
  assert_int_equal(0, rv_pgwriter_in_flight(w));
  assert_batch_stored(table, "locked", group);
  assert_int_equal(0, rows_stored(table, "other"));
  rv_pgwriter_destroy(w);
  rv_batch_close(&b);
  rv_batch_close(&other);
}

/* How ingest overlaps two batches on two writers: batch 2's rows are written
 * (apply_rows) while batch 1's commit is in flight and held up by a lock;
 * batch 2 is fenced (apply_offsets) once batch 1 committed, then commits
 * itself. Both end up stored once, with batch 2's offsets. Fencing batch 2
 * before batch 1 is finished would block on its offset rows: apply_rows
 * must not (it touches neither rv_offsets nor the locked parent table). */
static void test_next_batch_rows_while_commit_in_flight(void **state) {
  (void)state;
  const char *table = "fl_overlap", *group = "g-overlap";
  char e[1024];
  migrate(table);
  rv_batch_t b1, b2;
  rv_batch_init(&b1);
  rv_batch_init(&b2);
  make_batch(&b1, "ov1");
  make_batch_at(&b2, "ov2", NEXT_OFFSET);
  rv_pgwriter_t *w1 = writer_for(table, group, &b1), *w2 = writer_for(table, group, &b2);
  PGconn *locker = send_blocked_commit(w1, &b1, table);
  /* Batch 2's rows, while batch 1 waits: returns, batch 1 still in flight. */
  if (rv_pgwriter_apply_rows(w2, &b2, e, sizeof e)) fail_msg("apply_rows 2: %s", e);
  assert_int_equal(0, rv_pgwriter_idle(w2)); /* inside its transaction */
  assert_int_equal(1, rv_pgwriter_in_flight(w1));
  assert_int_equal(0, rv_pgwriter_poll(w1));
  for (size_t i = 0; i < b2.n_rows; i++) assert_int_equal(b2.rows[i].pin_ms, b2.rows[i].created_at_ms); /* all new */
  assert_int_equal(0, ids_pinned(table, "ov2")); /* not visible before its commit */

  unlock_table(locker);
  await_poll(w1);
  if (rv_pgwriter_finish(w1, e, sizeof e)) fail_msg("finish 1: %s", e);
  assert_batch_stored(table, "ov1", group);
  assert_int_equal(1, rv_pgwriter_idle(w1));
  rv_pgw_outcome_t out = RV_PGW_ALREADY;
  if (rv_pgwriter_apply_offsets(w2, &b2, &out, e, sizeof e)) fail_msg("apply_offsets 2: %s", e);
  assert_int_equal(RV_PGW_APPLIED, out);
  rv_batch_clear(&b2);
  if (rv_pgwriter_commit(w2, e, sizeof e)) fail_msg("commit 2: %s", e);
  assert_int_equal(1, rv_pgwriter_idle(w2));
  assert_int_equal(N_ROWS, rows_stored(table, "ov2"));
  assert_int_equal(N_ROWS, ids_pinned(table, "ov2"));
  assert_int_equal(N_ROWS, rows_stored(table, "ov1"));
  for (int p = 0; p < 2; p++)
    assert_int_equal(2 * NEXT_OFFSET, query_int("SELECT next_offset FROM rv_offsets WHERE consumer_group = '%s' "
                                                "AND topic = '" TOPIC "' AND partition = %d",
                                                group, p));
  /* apply_offsets without apply_rows is refused; the same batch 2 again is found committed. */
  make_batch_at(&b2, "ov2", NEXT_OFFSET);
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_apply_offsets(w1, &b2, &out, e, sizeof e));
  out = RV_PGW_APPLIED;
  if (rv_pgwriter_apply(w1, &b2, &out, e, sizeof e)) fail_msg("apply 2 again: %s", e);
  assert_int_equal(RV_PGW_ALREADY, out);
  assert_int_equal(1, rv_pgwriter_idle(w1));
  rv_pgwriter_destroy(w1);
  rv_pgwriter_destroy(w2);
  rv_batch_close(&b1);
  rv_batch_close(&b2);
}

/* A blocked commit abandoned by rollback: returns at once, nothing stored, the batch then commits exactly once. */
static void test_rollback_blocked_commit(void **state) {
  (void)state;
  const char *table = "fl_abandon", *group = "g-abandon";
  char e[1024];
  migrate(table);
  rv_batch_t b;
  rv_batch_init(&b);
  make_batch(&b, "aband");
  rv_pgwriter_t *w = writer_for(table, group, &b);
  int pid = PQbackendPID(rv_pgwriter_conn(w));
  PGconn *locker = send_blocked_commit(w, &b, table);

  int64_t t0 = rv_mono_ms();
  rv_pgwriter_rollback(w);
  int64_t took = rv_mono_ms() - t0;
  if (took >= QUICK_MS) fail_msg("rollback of a blocked commit took %lld ms", (long long)took);
  assert_int_equal(0, rv_pgwriter_in_flight(w));
  assert_int_equal(1, rv_pgwriter_poll(w));
  assert_null(rv_pgwriter_conn(w)); /* disconnected: the session's state was unknown */
  rv_pgw_outcome_t out;
  assert_int_equal(RV_ERR_UNAVAILABLE, rv_pgwriter_apply(w, &b, &out, e, sizeof e));
  assert_int_equal(RV_ERR_INVALID, rv_pgwriter_finish(w, e, sizeof e));
  /* The lock was held all along: the abandoned COPY cannot have run. */
  assert_true(waits_for_lock(pid, table, PQbackendPID(locker)));

  unlock_table(locker);
  /* The server rolls back the transaction of a client that vanished. */
  await_backend_gone(pid);
  assert_nothing_stored(table, "aband", group);

  /* The same batch, from the start: applied (not ALREADY), committed, stored once. */
  if (rv_pgwriter_connect(w, e, sizeof e)) fail_msg("reconnect: %s", e);
  assert_int_not_equal(pid, PQbackendPID(rv_pgwriter_conn(w)));
  if (rv_pgwriter_prepare_partitions(w, &b, e, sizeof e)) fail_msg("prepare_partitions: %s", e);
  apply_new(w, &b);
  if (rv_pgwriter_commit(w, e, sizeof e)) fail_msg("commit: %s", e);
  assert_int_equal(0, rv_pgwriter_in_flight(w));
  assert_batch_stored(table, "aband", group);
  rv_pgwriter_destroy(w);
  rv_batch_close(&b);
}

/* destroy with a blocked commit in flight: returns at once (through disconnect), nothing stored. */
static void test_destroy_blocked_commit(void **state) {
  (void)state;
  const char *table = "fl_destroy", *group = "g-destroy";
  migrate(table);
  rv_batch_t b;
  rv_batch_init(&b);
  make_batch(&b, "destr");
  rv_pgwriter_t *w = writer_for(table, group, &b);
  int pid = PQbackendPID(rv_pgwriter_conn(w));
  PGconn *locker = send_blocked_commit(w, &b, table);

  int64_t t0 = rv_mono_ms();
  rv_pgwriter_destroy(w);
  int64_t took = rv_mono_ms() - t0;
  if (took >= QUICK_MS) fail_msg("destroy with a blocked commit took %lld ms", (long long)took);
  assert_true(waits_for_lock(pid, table, PQbackendPID(locker)));

  unlock_table(locker);
  await_backend_gone(pid);
  assert_nothing_stored(table, "destr", group);
  rv_batch_close(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commit_in_flight),
      cmocka_unit_test(test_commit_blocked_by_lock),
      cmocka_unit_test(test_next_batch_rows_while_commit_in_flight),
      cmocka_unit_test(test_rollback_blocked_commit),
      cmocka_unit_test(test_destroy_blocked_commit),
  };
  return cmocka_run_group_tests_name("pgwriter_flight", tests, setup, teardown);
}
