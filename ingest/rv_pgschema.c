#include "rv_pgschema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_buf.h"
#include "rv_log.h"
#include "rv_pgutil.h"

/* First key of every advisory lock ingest takes ("RV" + 1); the second is 0
 * for objects shared by all collections, hashtext(<table>) for one collection. */
#define LOCK_CLASS "1381367809"

rv_month_t rv_month_of_ms(int64_t ms) {
  time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  return (rv_month_t)((tm.tm_year + 1900) * 12 + tm.tm_mon);
}

rv_err_t rv_pgschema_check_name(const char *name, char *errstr, size_t errstr_size) {
  size_t n = strlen(name);
  if (n == 0 || n > RV_PGSCHEMA_NAME_MAX || name[0] < 'a' || name[0] > 'z')
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                   "collection name '%s' must be [a-z][a-z0-9_]* and at most %d bytes", name,
                   RV_PGSCHEMA_NAME_MAX);
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_'))
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "collection name '%s' must be [a-z][a-z0-9_]*", name);
  }
  return RV_OK;
}

static int month_year(rv_month_t m) { return m / 12; }
static int month_num(rv_month_t m) { return m % 12 + 1; }

/* Inside a transaction that holds the collection's advisory lock. */
static rv_err_t create_months_locked(PGconn *c, const char *table, const rv_month_t *months, size_t n,
                                     char *errstr, size_t errstr_size) {
  char sql[512];
  for (size_t i = 0; i < n; i++) {
    rv_month_t m = months[i], next = m + 1;
    rv_err_t err = rv_pg_exec(c, "SAVEPOINT rv_month", NULL, errstr, errstr_size);
    if (err) return err;
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s_p%04d%02d PARTITION OF %s "
             "FOR VALUES FROM ('%04d-%02d-01 00:00:00+00') TO ('%04d-%02d-01 00:00:00+00')",
             table, month_year(m), month_num(m), table, month_year(m), month_num(m), month_year(next),
             month_num(next));
    char why[512];
    err = rv_pg_exec(c, sql, NULL, why, sizeof why);
    if (err == RV_ERR_UNAVAILABLE) return rv_errf(err, errstr, errstr_size, "%s", why);
    if (err) {
      rv_warn("ingest", "%s: partition %s_p%04d%02d not created, its rows go to %s_default: %s", table, table,
              month_year(m), month_num(m), table, why);
      err = rv_pg_exec(c, "ROLLBACK TO SAVEPOINT rv_month", NULL, errstr, errstr_size);
    } else {
      err = rv_pg_exec(c, "RELEASE SAVEPOINT rv_month", NULL, errstr, errstr_size);
    }
    if (err) return err;
  }
  return RV_OK;
}

static rv_err_t lock_collection(PGconn *c, const char *table, char *errstr, size_t errstr_size) {
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT pg_advisory_xact_lock(" LOCK_CLASS ", hashtext('%s'))", table);
  return rv_pg_exec(c, sql, NULL, errstr, errstr_size);
}

static void rollback(PGconn *c) {
  if (PQtransactionStatus(c) != PQTRANS_IDLE) PQclear(PQexec(c, "ROLLBACK"));
}

rv_err_t rv_pgschema_create_months(PGconn *c, const char *table, const rv_month_t *months, size_t n, char *errstr,
                                   size_t errstr_size) {
  rv_err_t err = rv_pg_exec(c, "BEGIN", NULL, errstr, errstr_size);
  if (!err) err = lock_collection(c, table, errstr, errstr_size);
  if (!err) err = create_months_locked(c, table, months, n, errstr, errstr_size);
  if (!err) err = rv_pg_exec(c, "COMMIT", NULL, errstr, errstr_size);
  if (err) rollback(c);
  return err;
}

rv_err_t rv_pgschema_migrate(PGconn *c, const char *table, int64_t now_ms, char *errstr, size_t errstr_size) {
  rv_err_t err = rv_pgschema_check_name(table, errstr, errstr_size);
  if (err) return err;
  rv_buf_t sql;
  rv_buf_init(&sql);
  /* Shared objects first under the global lock, then the collection's under its own:
   * the same order everywhere, so two migrations cannot deadlock. */
  err = rv_buf_appendf(
      &sql,
      "BEGIN;\n"
      "SELECT pg_advisory_xact_lock(" LOCK_CLASS ", 0);\n"
      "SELECT pg_advisory_xact_lock(" LOCK_CLASS ", hashtext('%1$s'));\n"
      "CREATE TABLE IF NOT EXISTS rv_offsets (\n"
      "  consumer_group text NOT NULL,\n"
      "  topic text NOT NULL,\n"
      "  partition int NOT NULL,\n"
      "  next_offset bigint NOT NULL,\n"
      "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, topic, partition));\n"
      "CREATE TABLE IF NOT EXISTS %1$s (\n"
      "  id text NOT NULL,\n"
      "  created_at timestamptz NOT NULL,\n"
      "  vector bytea,\n"
      "  code bytea,\n"
      "  metadata jsonb,\n"
      "  updated_at timestamptz NOT NULL,\n"
      "  deleted_at timestamptz,\n"
      "  src_partition int,\n"
      "  src_offset bigint,\n"
      "  PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);\n"
      "CREATE TABLE IF NOT EXISTS %1$s_default PARTITION OF %1$s DEFAULT;\n"
      "CREATE TABLE IF NOT EXISTS %1$s_ids (\n"
      "  id text PRIMARY KEY,\n"
      "  created_at timestamptz NOT NULL);\n"
      "CREATE INDEX IF NOT EXISTS %1$s_metadata_gin ON %1$s USING gin (metadata jsonb_path_ops);\n"
      "CREATE INDEX IF NOT EXISTS %1$s_live_updated ON %1$s (updated_at DESC) WHERE deleted_at IS NULL;\n",
      table);
  if (err) {
    rv_buf_close(&sql);
    return rv_errf(err, errstr, errstr_size, "out of memory");
  }
  err = rv_pg_exec(c, (const char *)sql.base, NULL, errstr, errstr_size);
  rv_buf_close(&sql);
  if (!err) {
    rv_month_t now = rv_month_of_ms(now_ms), months[5];
    for (int i = 0; i < 5; i++) months[i] = now - 1 + i;
    err = create_months_locked(c, table, months, 5, errstr, errstr_size);
  }
  if (!err) err = rv_pg_exec(c, "COMMIT", NULL, errstr, errstr_size);
  if (err) rollback(c);
  return err;
}

rv_err_t rv_pgschema_list_months(PGconn *c, const char *table, rv_month_t **months, size_t *n, char *errstr,
                                 size_t errstr_size) {
  char sql[320];
  PGresult *r;
  snprintf(sql, sizeof sql, "SELECT to_regclass('%s') IS NOT NULL AND to_regclass('%s_ids') IS NOT NULL",
           table, table);
  rv_err_t err = rv_pg_exec(c, sql, &r, errstr, errstr_size);
  if (err) return err;
  int exists = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (!exists)
    return rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "table %s or %s_ids does not exist (run the migration)",
                   table, table);
  snprintf(sql, sizeof sql,
           "SELECT k.relname FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid "
           "WHERE i.inhparent = '%s'::regclass",
           table);
  if ((err = rv_pg_exec(c, sql, &r, errstr, errstr_size))) return err;
  int rows = PQntuples(r);
  rv_month_t *out = realloc(*months, (*n + (size_t)rows + 1) * sizeof *out);
  if (!out) {
    PQclear(r);
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  *months = out;
  size_t tlen = strlen(table);
  for (int i = 0; i < rows; i++) {
    const char *name = PQgetvalue(r, i, 0);
    int y, mo;
    char tail;
    if (strncmp(name, table, tlen) || strncmp(name + tlen, "_p", 2) ||
        sscanf(name + tlen + 2, "%4d%2d%c", &y, &mo, &tail) != 2 || mo < 1 || mo > 12)
      continue;
    out[(*n)++] = (rv_month_t)(y * 12 + mo - 1);
  }
  PQclear(r);
  return RV_OK;
}
