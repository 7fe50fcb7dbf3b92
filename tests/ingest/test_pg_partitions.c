#define _GNU_SOURCE
/* The schema manager and the batch writer against a real private PostgreSQL,
 * on both partition paths: pg_partman 4.7 (installed by the migration) and
 * ingest's own manager. Same assertions on both: premade and on-demand
 * monthly partitions, a default partition for a month that cannot get one,
 * an id pinned to its first partition (updates never make a second row),
 * soft deletes that keep the vector and codes, codes and offsets written in
 * the batch's transaction. No Kafka: batches are built directly. */
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
#define DAY_MS INT64_C(86400000)
#define PARTMAN_CONTROL "/usr/share/postgresql/15/extension/pg_partman.control"

static struct {
  char dir[64];
  rv_pg_server_t *pg;
  PGconn *db;
  int64_t now_ms;
} T;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static PGresult *query(const char *sql) {
  PGresult *r = PQexec(T.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(T.db));
  return r;
}

static long long query_int(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long query_int(const char *fmt, ...) {
  char sql[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  PGresult *r = query(sql);
  if (PQntuples(r) != 1) fail_msg("%s: %d rows, expected 1", sql, PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

static int setup(void **state) {
  (void)state;
  char e[1024];
  snprintf(T.dir, sizeof T.dir, "/tmp/rv-pgpart-XXXXXX");
  if (!mkdtemp(T.dir) || chmod(T.dir, 0755)) return -1;
  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  if (!(T.db = PQconnectdb(rv_pg_server_conninfo(T.pg))) || PQstatus(T.db) != CONNECTION_OK) {
    print_error("connect: %s\n", PQerrorMessage(T.db));
    return -1;
  }
  T.now_ms = rv_wall_ms();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (T.db) PQfinish(T.db);
  rv_pg_server_stop(T.pg);
  if (strncmp(T.dir, "/tmp/rv-pgpart-", 15) == 0) nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* The partition name of month m under either naming. */
static void month_part(char *out, size_t n, const char *table, int partman, rv_month_t m) {
  snprintf(out, n, partman ? "%s_p%04d_%02d" : "%s_p%04d%02d", table, m / 12, m % 12 + 1);
}

static void part_name(char *out, size_t n, const char *table, int partman, int64_t ms) {
  month_part(out, n, table, partman, rv_month_of_ms(ms));
}

static void write_batch(rv_pgwriter_t *w, rv_batch_t *b) {
  char e[1024];
  rv_pgw_outcome_t out;
  rv_err_t err = rv_pgwriter_connect(w, e, sizeof e);
  if (!err) err = rv_pgwriter_prepare_partitions(w, b, e, sizeof e);
  if (!err) err = rv_pgwriter_apply(w, b, &out, e, sizeof e);
  if (!err) assert_int_equal(RV_PGW_APPLIED, out);
  if (!err) err = rv_pgwriter_commit(w, e, sizeof e);
  if (err) fail_msg("writing the batch: %s", e);
  rv_batch_clear(b);
}

/* Everything both partition paths must do alike. */
static void exercise(const char *table, int partman) {
  char e[1024], name[128];
  const int64_t now = T.now_ms, old = now - 200 * DAY_MS, blocked = now - 400 * DAY_MS;
  rv_pgschema_opts_t opts = {partman ? RV_PARTMAN_AUTO : RV_PARTMAN_OFF, 3};
  assert_int_equal(RV_OK, rv_pgschema_migrate_opts(T.db, table, now, &opts, e, sizeof e));
  assert_int_equal(RV_OK, rv_pgschema_migrate_opts(T.db, table, now, &opts, e, sizeof e)); /* idempotent */

  rv_partitioning_t p;
  assert_int_equal(RV_OK, rv_pgschema_partitioning(T.db, table, &p, e, sizeof e));
  assert_int_equal(partman, p.partman);
  if (partman)
    assert_int_equal(1, query_int("SELECT count(*) FROM partman.part_config WHERE parent_table = 'public.%s' "
                                  "AND partition_interval = '1 mon' AND control = 'created_at'",
                                  table));
  /* Premade: the previous month to three ahead, plus the default. */
  for (int d = -1; d <= 3; d++) {
    month_part(name, sizeof name, table, partman, rv_month_of_ms(now) + d);
    if (query_int("SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('%s') "
                  "AND inhparent = '%s'::regclass",
                  name, table) != 1)
      fail_msg("%s: premade partition %s missing", table, name);
  }
  assert_int_equal(1, query_int("SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('%s_default')", table));
  assert_int_equal(3, query_int("SELECT count(*) FROM pg_indexes WHERE tablename = '%s' AND (indexdef LIKE "
                                "'%%jsonb_path_ops%%' OR indexdef LIKE '%%WHERE (deleted_at IS NULL)%%')",
                                table));

  /* Vectors compress with lz4 (not the slow default pglz) in every partition, premade or not. */
  if (rv_pgschema_has_lz4(T.db))
    assert_int_equal(0, query_int("SELECT count(*) FROM pg_inherits i JOIN pg_attribute a ON a.attrelid = i.inhrelid "
                                  "WHERE i.inhparent = '%s'::regclass AND a.attname = 'vector' "
                                  "AND a.attcompression <> 'l'",
                                  table));
  /* A row already in the default partition for the blocked month. */
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO %s (id, created_at, updated_at) VALUES ('preexisting', to_timestamp(%lld / 1000.0), now())",
           table, (long long)blocked);
  PQclear(query(sql));

  rv_pgwriter_t *w = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 0, table, "g", "t", e, sizeof e);
  assert_non_null(w);
  rv_batch_t b;
  rv_batch_init(&b);
  test_batch_add_row(&b, DIM, "now-1", RV_OP_UPSERT, 10, now, 0, 0, -1);
  test_batch_add_row(&b, DIM, "old-1", RV_OP_UPSERT, 20, old, 0, 1, -1);
  test_batch_add_row(&b, DIM, "blocked-1", RV_OP_UPSERT, 30, blocked, 1, 0, -1);
  test_batch_add_codes(&b, 7, CODE);
  write_batch(w, &b);

  /* The old month got its partition on demand, by the table's manager; the blocked one could not. */
  part_name(name, sizeof name, table, partman, old);
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'old-1' AND tableoid = '%s'::regclass", table,
                                name));
  if (partman)
    assert_int_equal(1, query_int("SELECT count(*) FROM partman.show_partitions('public.%s') "
                                  "WHERE partition_tablename = '%s'",
                                  table, name));
  part_name(name, sizeof name, table, partman, blocked);
  assert_int_equal(0, query_int("SELECT count(*) FROM pg_class WHERE relname = '%s'", name));
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'blocked-1' AND tableoid = '%s_default'::regclass",
                                table, table));
  part_name(name, sizeof name, table, partman, now);
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'now-1' AND tableoid = '%s'::regclass", table,
                                name));
  if (rv_pgschema_has_lz4(T.db)) /* the partition made on demand too */
    assert_int_equal(0, query_int("SELECT count(*) FROM pg_inherits i JOIN pg_attribute a ON a.attrelid = i.inhrelid "
                                  "WHERE i.inhparent = '%s'::regclass AND a.attname = 'vector' "
                                  "AND a.attcompression <> 'l'",
                                  table));
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'old-1' AND code = '\\x14141414' "
                                "AND code_version = 7 AND length(vector) = %d",
                                table, DIM * 4));

  /* Second batch: old-1 updated with a pin in the current month (it must
   * stay in its first partition), now-1 deleted, raw vectors off. */
  rv_pgwriter_set_store_vector(w, 0);
  test_batch_add_row(&b, DIM, "old-1", RV_OP_UPSERT, 21, now, 0, 2, 2);
  test_batch_add_row(&b, DIM, "now-1", RV_OP_DELETE, 0, now, 0, 3, 2);
  test_batch_add_row(&b, DIM, "fresh-1", RV_OP_UPSERT, 40, now, 1, 1, 1);
  test_batch_add_codes(&b, 8, CODE);
  write_batch(w, &b);
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'old-1'", table));
  part_name(name, sizeof name, table, partman, old);
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'old-1' AND tableoid = '%s'::regclass "
                                "AND code = '\\x15151515' AND code_version = 8 AND vector IS NULL",
                                table, name));
  /* A soft delete keeps the row, its vector and its code. */
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'now-1' AND deleted_at IS NOT NULL "
                                "AND length(vector) = %d AND code = '\\x0a0a0a0a' AND code_version = 7",
                                table, DIM * 4));
  assert_int_equal(1, query_int("SELECT count(*) FROM %s WHERE id = 'fresh-1' AND vector IS NULL AND code_version = 8",
                                table));
  assert_int_equal(0, query_int("SELECT count(*) FROM (SELECT id FROM %s GROUP BY id HAVING count(*) > 1) d", table));
  assert_int_equal(5, query_int("SELECT count(*) FROM %s", table));
  /* The offsets went in with the rows. */
  assert_int_equal(4, query_int("SELECT next_offset FROM rv_offsets WHERE consumer_group = 'g' AND topic = 't' "
                                "AND partition = 0"));
  assert_int_equal(2, query_int("SELECT next_offset FROM rv_offsets WHERE consumer_group = 'g' AND topic = 't' "
                                "AND partition = 1"));
  /* ... and the metadata GIN index answers containment. */
  assert_int_equal(3, query_int("SELECT count(*) FROM %s WHERE metadata @> '{\"tag\": \"t\"}' AND id <> 'now-1'",
                                table));
  rv_batch_close(&b);
  rv_pgwriter_destroy(w);
  PQclear(query("DELETE FROM rv_offsets"));
}

static void test_partman_path(void **state) {
  (void)state;
  if (access(PARTMAN_CONTROL, R_OK) != 0) {
    print_message("pg_partman is not installed (deploy/dev.sh deps installs postgresql-15-partman): skipped\n");
    skip();
  }
  exercise("pm_items", 1);
  assert_int_equal(1, query_int("SELECT count(*) FROM pg_extension WHERE extname = 'pg_partman' "
                                "AND extversion LIKE '4.7%%'"));
}

static void test_own_manager_path(void **state) {
  (void)state;
  exercise("own_items", 0);
  /* The own manager's table is not pg_partman's, even with the extension installed. */
  if (access(PARTMAN_CONTROL, R_OK) == 0)
    assert_int_equal(0, query_int("SELECT count(*) FROM partman.part_config WHERE parent_table = 'public.own_items'"));
}

/* A table made by an older version (no code_version/pq columns) gains them. */
static void test_migrate_adds_new_columns(void **state) {
  (void)state;
  char e[512];
  PQclear(query("CREATE TABLE legacy (id text NOT NULL, created_at timestamptz NOT NULL, vector bytea, code bytea, "
                "metadata jsonb, updated_at timestamptz NOT NULL, deleted_at timestamptz, src_partition int, "
                "src_offset bigint, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)"));
  PQclear(query("CREATE TABLE legacy_default PARTITION OF legacy DEFAULT"));
  rv_pgschema_opts_t opts = {RV_PARTMAN_AUTO, 0};
  assert_int_equal(RV_OK, rv_pgschema_migrate_opts(T.db, "legacy", T.now_ms, &opts, e, sizeof e));
  assert_int_equal(3, query_int("SELECT count(*) FROM information_schema.columns WHERE table_name = 'legacy' "
                                "AND column_name IN ('code_version', 'pq_code', 'pq_version')"));
  /* It had partitions already, so it keeps ingest's own manager. */
  rv_partitioning_t p;
  assert_int_equal(RV_OK, rv_pgschema_partitioning(T.db, "legacy", &p, e, sizeof e));
  assert_int_equal(0, p.partman);
}

/* Two processes storing different parameters agree on the first one stored. */
static void test_quantizer_insert_if_absent(void **state) {
  (void)state;
  char e[512];
  rv_buf_t got;
  rv_buf_init(&got);
  int32_t v = 0;
  PGconn *other = PQconnectdb(rv_pg_server_conninfo(T.pg));
  assert_int_equal(CONNECTION_OK, PQstatus(other));
  assert_int_equal(RV_ERR_NOT_FOUND, rv_pgschema_get_quantizer(T.db, "own_items", "sq8", &v, &got, e, sizeof e));
  assert_int_equal(RV_OK, rv_pgschema_put_quantizer(T.db, "own_items", "sq8", 1, "AAAA", 4, 100, &v, &got, e,
                                                    sizeof e));
  assert_int_equal(1, v);
  assert_int_equal(RV_OK, rv_pgschema_put_quantizer(other, "own_items", "sq8", 1, "BBBBBB", 6, 100, &v, &got, e,
                                                    sizeof e));
  assert_int_equal(1, v);
  assert_int_equal(4, got.len);
  assert_memory_equal("AAAA", got.base, 4);
  assert_int_equal(RV_OK, rv_pgschema_get_quantizer(other, "own_items", "sq8", &v, &got, e, sizeof e));
  assert_memory_equal("AAAA", got.base, 4);
  assert_int_equal(RV_ERR_NOT_FOUND, rv_pgschema_get_quantizer(other, "own_items", "pq", &v, &got, e, sizeof e));
  PQfinish(other);
  rv_buf_close(&got);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_partman_path),
      cmocka_unit_test(test_own_manager_path),
      cmocka_unit_test(test_migrate_adds_new_columns),
      cmocka_unit_test(test_quantizer_insert_if_absent),
  };
  return cmocka_run_group_tests_name("pg_partitions", tests, setup, teardown);
}
