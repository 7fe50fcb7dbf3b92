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

int rv_pgschema_has_lz4(PGconn *c) {
  PGresult *r = PQexec(c, "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'");
  int yes = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  return yes;
}

/* After a partition is made: it compresses vectors like its parent. pg_partman
 * copies a partition's columns with LIKE ... INCLUDING STORAGE, which leaves
 * the compression method at the server's default. */
#define FOLLOW_PARENT_COMPRESSION                                                                          \
  "DO $rv$ BEGIN IF (SELECT attcompression FROM pg_attribute WHERE attrelid = '%s'::regclass AND "        \
  "attname = 'vector') = 'l' AND (SELECT attcompression FROM pg_attribute WHERE attrelid = '%s'::regclass " \
  "AND attname = 'vector') <> 'l' THEN ALTER TABLE %s ALTER COLUMN vector SET COMPRESSION lz4; END IF; END $rv$"

static int month_year(rv_month_t m) { return m / 12; }
static int month_num(rv_month_t m) { return m % 12 + 1; }

static void rollback(PGconn *c) {
  if (PQtransactionStatus(c) != PQTRANS_IDLE) PQclear(PQexec(c, "ROLLBACK"));
}

/* Runs sql in a savepoint: a failure rolls back to it and is returned
 * (with its message in why) unless the connection itself is gone. */
static rv_err_t try_exec(PGconn *c, const char *sql, PGresult **out, char *why, size_t why_size, char *errstr,
                         size_t errstr_size) {
  rv_err_t err = rv_pg_exec(c, "SAVEPOINT rv_try", NULL, errstr, errstr_size);
  if (err) return err;
  rv_err_t failed = rv_pg_exec(c, sql, out, why, why_size);
  if (failed == RV_ERR_UNAVAILABLE) return rv_errf(failed, errstr, errstr_size, "%s", why);
  err = rv_pg_exec(c, failed ? "ROLLBACK TO SAVEPOINT rv_try" : "RELEASE SAVEPOINT rv_try", NULL, errstr,
                   errstr_size);
  return err ? err : failed;
}

/* Inside a transaction that holds the collection's advisory lock. */
static rv_err_t create_months_locked(PGconn *c, const char *table, const rv_partitioning_t *p,
                                     const rv_month_t *months, size_t n, char *errstr, size_t errstr_size) {
  char sql[640], why[512];
  if (p->partman) {
    rv_err_t err = rv_pg_exec(c, "SET LOCAL TimeZone = 'UTC'", NULL, errstr, errstr_size);
    if (err) return err;
  }
  for (size_t i = 0; i < n; i++) {
    rv_month_t m = months[i], next = m + 1;
    char part[96];
    snprintf(part, sizeof part, p->partman ? "%s_p%04d_%02d" : "%s_p%04d%02d", table, month_year(m), month_num(m));
    if (p->partman)
      snprintf(sql, sizeof sql,
               "SELECT %s.create_partition_time(current_schema() || '.%s', "
               "ARRAY['%04d-%02d-01 00:00:00+00']::timestamptz[], false)",
               p->partman_schema, table, month_year(m), month_num(m));
    else
      snprintf(sql, sizeof sql,
               "CREATE TABLE IF NOT EXISTS %s_p%04d%02d PARTITION OF %s "
               "FOR VALUES FROM ('%04d-%02d-01 00:00:00+00') TO ('%04d-%02d-01 00:00:00+00')",
               table, month_year(m), month_num(m), table, month_year(m), month_num(m), month_year(next),
               month_num(next));
    rv_err_t err = try_exec(c, sql, NULL, why, sizeof why, errstr, errstr_size);
    if (err == RV_ERR_UNAVAILABLE) return err;
    if (err && PQtransactionStatus(c) != PQTRANS_INTRANS) return err; /* the savepoint itself failed */
    if (err) {
      rv_warn("ingest", "%s: partition for %04d-%02d not created, its rows go to %s_default: %s", table,
              month_year(m), month_num(m), table, why);
      continue;
    }
    snprintf(sql, sizeof sql, FOLLOW_PARENT_COMPRESSION, table, part, part);
    if ((err = rv_pg_exec(c, sql, NULL, errstr, errstr_size))) return err;
  }
  return RV_OK;
}

static rv_err_t lock_collection(PGconn *c, const char *table, char *errstr, size_t errstr_size) {
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT pg_advisory_xact_lock(" LOCK_CLASS ", hashtext('%s'))", table);
  return rv_pg_exec(c, sql, NULL, errstr, errstr_size);
}

rv_err_t rv_pgschema_create_months(PGconn *c, const char *table, const rv_partitioning_t *p,
                                   const rv_month_t *months, size_t n, char *errstr, size_t errstr_size) {
  rv_err_t err = rv_pg_exec(c, "BEGIN", NULL, errstr, errstr_size);
  if (!err) err = lock_collection(c, table, errstr, errstr_size);
  if (!err) err = create_months_locked(c, table, p, months, n, errstr, errstr_size);
  if (!err) err = rv_pg_exec(c, "COMMIT", NULL, errstr, errstr_size);
  if (err) rollback(c);
  return err;
}

/* The schema pg_partman is installed in, or "" when it is not. */
static rv_err_t partman_schema(PGconn *c, char *out, size_t out_size, char *errstr, size_t errstr_size) {
  PGresult *r;
  rv_err_t err = rv_pg_exec(c,
                            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                            "WHERE e.extname = 'pg_partman'",
                            &r, errstr, errstr_size);
  if (err) return err;
  snprintf(out, out_size, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
  PQclear(r);
  return RV_OK;
}

rv_err_t rv_pgschema_partitioning(PGconn *c, const char *table, rv_partitioning_t *out, char *errstr,
                                  size_t errstr_size) {
  memset(out, 0, sizeof *out);
  char schema[64], sql[320];
  rv_err_t err = partman_schema(c, schema, sizeof schema, errstr, errstr_size);
  if (err || !schema[0]) return err;
  snprintf(sql, sizeof sql, "SELECT 1 FROM %s.part_config WHERE parent_table = current_schema() || '.%s'", schema,
           table);
  PGresult *r;
  if ((err = rv_pg_exec(c, sql, &r, errstr, errstr_size))) return err;
  out->partman = PQntuples(r) == 1;
  if (out->partman) snprintf(out->partman_schema, sizeof out->partman_schema, "%s", schema);
  PQclear(r);
  return RV_OK;
}

/* Inside the migration transaction: chooses and sets up the manager of a
 * table that has no partitions yet, or keeps the one it has. */
static rv_err_t setup_partitioning(PGconn *c, const char *table, const rv_pgschema_opts_t *o, rv_month_t first,
                                   rv_partitioning_t *p, char *errstr, size_t errstr_size) {
  char sql[1024], why[512];
  rv_err_t err = rv_pgschema_partitioning(c, table, p, errstr, errstr_size);
  if (err || p->partman) return err;
  PGresult *r;
  snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_inherits WHERE inhparent = '%s'::regclass", table);
  if ((err = rv_pg_exec(c, sql, &r, errstr, errstr_size))) return err;
  int fresh = atoi(PQgetvalue(r, 0, 0)) == 0;
  PQclear(r);
  if (!fresh || o->partman == RV_PARTMAN_OFF) return RV_OK;

  char schema[64];
  if ((err = partman_schema(c, schema, sizeof schema, errstr, errstr_size))) return err;
  if (!schema[0]) {
    if ((err = rv_pg_exec(c, "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_partman'", &r, errstr,
                          errstr_size)))
      return err;
    int available = PQntuples(r) == 1;
    PQclear(r);
    if (!available) return RV_OK;
    err = try_exec(c, "CREATE SCHEMA IF NOT EXISTS partman; CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman",
                   NULL, why, sizeof why, errstr, errstr_size);
    if (err == RV_ERR_UNAVAILABLE) return err;
    if (err) {
      rv_warn("ingest", "%s: pg_partman is available but cannot be installed (%s); ingest makes the partitions",
              table, why);
      return PQtransactionStatus(c) == PQTRANS_INTRANS ? RV_OK : err;
    }
    snprintf(schema, sizeof schema, "partman");
  }
  snprintf(sql, sizeof sql,
           "SET LOCAL TimeZone = 'UTC';"
           "SELECT %s.create_parent(p_parent_table => current_schema() || '.%s', p_control => 'created_at', "
           "p_type => 'native', p_interval => 'monthly', p_premake => %d, "
           "p_start_partition => '%04d-%02d-01 00:00:00+00', p_jobmon => false)",
           schema, table, o->premake, month_year(first), month_num(first));
  if ((err = rv_pg_exec(c, sql, NULL, errstr, errstr_size))) return err;
  p->partman = 1;
  snprintf(p->partman_schema, sizeof p->partman_schema, "%s", schema);
  rv_info("ingest", "%s: partitions managed by pg_partman (schema %s)", table, schema);
  return RV_OK;
}

rv_err_t rv_pgschema_migrate(PGconn *c, const char *table, int64_t now_ms, char *errstr, size_t errstr_size) {
  return rv_pgschema_migrate_opts(c, table, now_ms, NULL, errstr, errstr_size);
}

rv_err_t rv_pgschema_migrate_opts(PGconn *c, const char *table, int64_t now_ms, const rv_pgschema_opts_t *opts,
                                  char *errstr, size_t errstr_size) {
  rv_err_t err = rv_pgschema_check_name(table, errstr, errstr_size);
  if (err) return err;
  rv_pgschema_opts_t o = opts ? *opts : (rv_pgschema_opts_t){0};
  if (o.premake <= 0) o.premake = 3;
  if (o.premake > 120) o.premake = 120;
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
      "CREATE TABLE IF NOT EXISTS rv_quantizers (\n"
      "  collection text NOT NULL,\n"
      "  kind text NOT NULL CHECK (kind IN ('sq8', 'pq')),\n"
      "  version int NOT NULL CHECK (version > 0),\n"
      "  params bytea NOT NULL,\n"
      "  trained_on int NOT NULL,\n"
      "  created_at timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (collection, kind, version));\n"
      "CREATE TABLE IF NOT EXISTS %1$s (\n"
      "  id text NOT NULL,\n"
      "  created_at timestamptz NOT NULL,\n"
      "  vector bytea,\n"
      "  code bytea,\n"
      "  code_version int,\n"
      "  pq_code bytea,\n"
      "  pq_version int,\n"
      "  metadata jsonb,\n"
      "  updated_at timestamptz NOT NULL,\n"
      "  deleted_at timestamptz,\n"
      "  src_partition int,\n"
      "  src_offset bigint,\n"
      "  PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);\n"
      "ALTER TABLE %1$s ADD COLUMN IF NOT EXISTS code_version int, ADD COLUMN IF NOT EXISTS pq_code bytea,\n"
      "  ADD COLUMN IF NOT EXISTS pq_version int;\n"
      "CREATE TABLE IF NOT EXISTS %1$s_ids (\n"
      "  id text PRIMARY KEY,\n"
      "  created_at timestamptz NOT NULL);\n"
      "CREATE INDEX IF NOT EXISTS %1$s_metadata_gin ON %1$s USING gin (metadata jsonb_path_ops);\n"
      "CREATE INDEX IF NOT EXISTS %1$s_live_updated ON %1$s (updated_at DESC) WHERE deleted_at IS NULL;\n"
      "CREATE INDEX IF NOT EXISTS %1$s_live_code_version ON %1$s (code_version) WHERE deleted_at IS NULL;\n"
      /* The outbox names a batch's changes by version range (rv_outbox.h). */
      "CREATE INDEX IF NOT EXISTS %1$s_src_version ON %1$s (src_partition, src_offset);\n",
      table);
  if (err) {
    rv_buf_close(&sql);
    return rv_errf(err, errstr, errstr_size, "out of memory");
  }
  err = rv_pg_exec(c, (const char *)sql.base, NULL, errstr, errstr_size);
  rv_buf_close(&sql);
  if (!err && rv_pgschema_has_lz4(c)) {
    /* Recurses to the existing partitions (and the default); new ones follow
     * it in create_months_locked. Only when not so already: it locks the table. */
    char lz4[640];
    snprintf(lz4, sizeof lz4,
             "DO $rv$ BEGIN IF (SELECT attcompression FROM pg_attribute WHERE attrelid = '%1$s'::regclass AND "
             "attname = 'vector') <> 'l' THEN ALTER TABLE %1$s ALTER COLUMN vector SET COMPRESSION lz4; END IF; "
             "END $rv$",
             table);
    err = rv_pg_exec(c, lz4, NULL, errstr, errstr_size);
  }
  rv_month_t now = rv_month_of_ms(now_ms);
  rv_partitioning_t p;
  if (!err) err = setup_partitioning(c, table, &o, now - 1, &p, errstr, errstr_size);
  if (!err && !p.partman) {
    char dflt[160];
    snprintf(dflt, sizeof dflt, "CREATE TABLE IF NOT EXISTS %1$s_default PARTITION OF %1$s DEFAULT", table);
    err = rv_pg_exec(c, dflt, NULL, errstr, errstr_size);
  }
  if (!err) {
    char dflt[160], sql2[1024];
    snprintf(dflt, sizeof dflt, "%s_default", table);
    snprintf(sql2, sizeof sql2, FOLLOW_PARENT_COMPRESSION, table, dflt, dflt);
    err = rv_pg_exec(c, sql2, NULL, errstr, errstr_size);
  }
  if (!err) {
    /* Also for partman: a month it skipped (e.g. the migration runs again
     * months later) is made the same way as on demand. */
    rv_month_t months[122];
    int n = o.premake + 2;
    for (int i = 0; i < n; i++) months[i] = now - 1 + i;
    err = create_months_locked(c, table, &p, months, (size_t)n, errstr, errstr_size);
  }
  if (!err) err = rv_pg_exec(c, "COMMIT", NULL, errstr, errstr_size);
  if (err) rollback(c);
  return err;
}

/* ---- quantizers ---- */

static rv_err_t read_quantizer(PGconn *c, const char *collection, const char *kind, int32_t *version,
                               rv_buf_t *params, char *errstr, size_t errstr_size) {
  const char *pv[2] = {collection, kind};
  PGresult *r = PQexecParams(c,
                             "SELECT version, params FROM rv_quantizers WHERE collection = $1 AND kind = $2 "
                             "ORDER BY version DESC LIMIT 1",
                             2, NULL, pv, NULL, NULL, 1);
  rv_err_t err = rv_pg_check(c, r, "reading rv_quantizers", errstr, errstr_size);
  if (!err && PQntuples(r) == 0)
    err = rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "no %s quantizer for %s", kind, collection);
  if (!err && PQgetlength(r, 0, 0) != 4) err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "bad version field");
  if (!err) {
    const uint8_t *v = (const uint8_t *)PQgetvalue(r, 0, 0);
    *version = (int32_t)((uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3]);
    rv_buf_reset(params);
    if (rv_buf_append(params, PQgetvalue(r, 0, 1), (size_t)PQgetlength(r, 0, 1)))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  PQclear(r);
  return err;
}

rv_err_t rv_pgschema_get_quantizer(PGconn *c, const char *collection, const char *kind, int32_t *version,
                                   rv_buf_t *params, char *errstr, size_t errstr_size) {
  return read_quantizer(c, collection, kind, version, params, errstr, errstr_size);
}

rv_err_t rv_pgschema_put_quantizer(PGconn *c, const char *collection, const char *kind, int32_t version,
                                   const void *params, size_t len, int trained_on, int32_t *version_out,
                                   rv_buf_t *params_out, char *errstr, size_t errstr_size) {
  char vs[16], ts[16];
  snprintf(vs, sizeof vs, "%d", (int)version);
  snprintf(ts, sizeof ts, "%d", trained_on);
  const char *pv[5] = {collection, kind, vs, params, ts};
  const int lens[5] = {0, 0, 0, (int)len, 0};
  const int fmts[5] = {0, 0, 0, 1, 0};
  /* Autocommitted on its own (or part of the caller's transaction): once
   * stored, a version's parameters never change. */
  PGresult *r = PQexecParams(c,
                             "INSERT INTO rv_quantizers (collection, kind, version, params, trained_on) "
                             "VALUES ($1, $2, $3::int, $4, $5::int) ON CONFLICT DO NOTHING",
                             5, NULL, pv, lens, fmts, 0);
  rv_err_t err = rv_pg_check(c, r, "storing the quantizer", errstr, errstr_size);
  PQclear(r);
  return err ? err : read_quantizer(c, collection, kind, version_out, params_out, errstr, errstr_size);
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
    const char *suffix = name + tlen + 2; /* YYYYMM (ingest's own) or YYYY_MM (pg_partman) */
    if (strncmp(name, table, tlen) || strncmp(name + tlen, "_p", 2) || strspn(suffix, "0123456789_") != strlen(suffix) ||
        (sscanf(suffix, "%4d%2d%c", &y, &mo, &tail) != 2 && sscanf(suffix, "%4d_%2d%c", &y, &mo, &tail) != 2) ||
        mo < 1 || mo > 12)
      continue;
    out[(*n)++] = (rv_month_t)(y * 12 + mo - 1);
  }
  PQclear(r);
  return RV_OK;
}
