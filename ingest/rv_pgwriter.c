#include "rv_pgwriter.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rv_buf.h"
#include "rv_log.h"
#include "rv_pgschema.h"
#include "rv_pgutil.h"

/* Microseconds between the Unix epoch and PostgreSQL's (2000-01-01). */
#define PG_EPOCH_MS INT64_C(946684800000)
#define COPY_CHUNK (1u << 20)

enum { ST_LOCK, ST_READ, ST_PIN, ST_UPSERT, ST_OFFSETS, ST_COUNT };

static const char *const stmt_names[ST_COUNT] = {"rv_lock_offsets", "rv_read_offsets", "rv_pin", "rv_upsert",
                                                 "rv_write_offsets"};
static const int stmt_nparams[ST_COUNT] = {3, 3, 2, 0, 5};

struct rv_pgwriter {
  char *conninfo;
  int pgbouncer;
  char table[RV_PGSCHEMA_NAME_MAX + 1];
  char *group;
  char *topic;
  char app_name[96];
  PGconn *conn;            /* NULL when disconnected */
  char *sql[ST_COUNT];     /* statement texts, fixed at construction */
  char *stage_sql;         /* CREATE TEMP TABLE for the staging table */
  int store_vector;        /* 1: the raw float32 vector is stored with its codes */
  rv_partitioning_t parts; /* who makes the table's partitions (read on connect) */
  rv_month_t *months;      /* months known to have a partition (or known not to get one) */
  size_t n_months;
  rv_buf_t copy;           /* COPY BINARY payload of the current batch */
  rv_buf_t text;           /* scratch for array literals */
  rv_buf_t text2;
  uint8_t *is_new;         /* per batch row: 1 when its id was pinned by this batch */
  size_t cap_new;
  size_t n_new;            /* rows of the applied batch whose ids it pinned (COPYed by send_commit) */
  char now_be[8];          /* the applied transaction's now(), binary, when n_new > 0 */
  int in_flight;           /* send_commit handed the COPY and COMMIT to the flight thread; finish has not
                              taken the connection back (consumer thread only) */
  /* The flight thread runs the end of a batch transaction (send_commit to
   * finish) while the consumer thread reads the next batch; the connection
   * and copy are its own meanwhile. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int thread_started;
  int job;                 /* under mu: 1 from send_commit until the thread has the result */
  int quit;                /* under mu: destroy asks the thread to exit */
  atomic_int flight_done;  /* the result is in (poll reads it without the lock) */
  rv_err_t flight_err;     /* under mu, read once job is 0 */
  int flight_fd;           /* a dup of the connection's socket while in flight (-1 otherwise): abandoning a
                              commit shuts it down, and libpq closing its own fd meanwhile cannot hand the
                              number to another socket */
  char flight_errstr[512];
};

static char *fmt_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *fmt_alloc(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = n < 0 ? NULL : malloc((size_t)n + 1);
  if (!s) return NULL;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

void rv_pgwriter_destroy(rv_pgwriter_t *w) {
  if (!w) return;
  rv_pgwriter_disconnect(w);
  pthread_mutex_lock(&w->mu);
  w->quit = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  if (w->thread_started) pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  free(w->conninfo);
  free(w->group);
  free(w->topic);
  for (int i = 0; i < ST_COUNT; i++) free(w->sql[i]);
  free(w->stage_sql);
  free(w->months);
  rv_buf_close(&w->copy);
  rv_buf_close(&w->text);
  rv_buf_close(&w->text2);
  free(w->is_new);
  free(w);
}

/* The staging table. Its vectors are written and read once: lz4 (when the
 * server has it) costs a fraction of the default pglz, which compresses
 * Fashion-MNIST-like sparse vectors slowly. */
static char *stage_sql(int pgbouncer, int lz4) {
  return fmt_alloc("CREATE TEMP TABLE %s rv_stage (id text NOT NULL, is_delete bool NOT NULL, "
                   "vector bytea%s, metadata jsonb, pin_at timestamptz NOT NULL, src_partition int NOT NULL, "
                   "src_offset bigint NOT NULL, code bytea, code_version int, pq_code bytea, "
                   "pq_version int) ON COMMIT %s",
                   pgbouncer ? "" : "IF NOT EXISTS", lz4 ? " COMPRESSION lz4" : "", pgbouncer ? "DROP" : "DELETE ROWS");
}

rv_pgwriter_t *rv_pgwriter_new(const char *conninfo, int pgbouncer, const char *table, const char *consumer_group,
                               const char *topic, char *errstr, size_t errstr_size) {
  if (rv_pgschema_check_name(table, errstr, errstr_size)) return NULL;
  rv_pgwriter_t *w = calloc(1, sizeof *w);
  if (!w) goto nomem;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->flight_fd = -1;
  w->pgbouncer = pgbouncer;
  w->store_vector = 1;
  snprintf(w->table, sizeof w->table, "%s", table);
  snprintf(w->app_name, sizeof w->app_name, "rv-ingest-%s", table);
  w->conninfo = strdup(conninfo);
  w->group = strdup(consumer_group);
  w->topic = strdup(topic);
  const char *t = table;
  w->sql[ST_LOCK] = fmt_alloc("SELECT partition, next_offset FROM rv_offsets WHERE consumer_group = $1 "
                              "AND topic = $2 AND partition = ANY($3::int[]) FOR UPDATE");
  w->sql[ST_READ] = fmt_alloc("SELECT partition, next_offset FROM rv_offsets WHERE consumer_group = $1 "
                              "AND topic = $2 AND partition = ANY($3::int[])");
  /* Pins the batch's ids; the ones returned are new, and their rows are
   * COPYed straight into the table (the COPY routes them to their
   * partitions): only rows of ids seen before go through the staging table
   * and the upsert. now() is the transaction's, written as updated_at. */
  w->sql[ST_PIN] = fmt_alloc("INSERT INTO %s_ids (id, created_at) SELECT u.id, timestamptz 'epoch' + u.us * "
                             "interval '1 microsecond' FROM unnest($1::text[], $2::bigint[]) AS u(id, us) "
                             "ON CONFLICT (id) DO NOTHING RETURNING id, now()",
                             t);
  /* A DELETE keeps the stored vector, code and metadata; an UPSERT replaces
   * them (the SQ8 code of the old vector is stale) and revives the row. The
   * pinned created_at is a correlated lookup (one primary-key probe per
   * staged row) rather than a join: the staging table has no statistics, and
   * a join planned as a hash of the whole <c>_ids grows with the collection. */
  w->sql[ST_UPSERT] = fmt_alloc(
      "INSERT INTO %1$s AS t (id, created_at, vector, code, code_version, pq_code, pq_version, metadata, "
      "updated_at, deleted_at, src_partition, src_offset) "
      "SELECT s.id, (SELECT i.created_at FROM %1$s_ids i WHERE i.id = s.id), s.vector, s.code, s.code_version, s.pq_code, s.pq_version, s.metadata, now(), "
      "CASE WHEN s.is_delete THEN now() END, "
      "s.src_partition, s.src_offset FROM pg_temp.rv_stage s "
      "ON CONFLICT (id, created_at) DO UPDATE SET "
      "vector = CASE WHEN excluded.deleted_at IS NULL THEN excluded.vector ELSE t.vector END, "
      "code = CASE WHEN excluded.deleted_at IS NULL THEN excluded.code ELSE t.code END, "
      "code_version = CASE WHEN excluded.deleted_at IS NULL THEN excluded.code_version ELSE t.code_version END, "
      "pq_code = CASE WHEN excluded.deleted_at IS NULL THEN excluded.pq_code ELSE t.pq_code END, "
      "pq_version = CASE WHEN excluded.deleted_at IS NULL THEN excluded.pq_version ELSE t.pq_version END, "
      "metadata = CASE WHEN excluded.deleted_at IS NULL THEN excluded.metadata ELSE t.metadata END, "
      "updated_at = excluded.updated_at, deleted_at = excluded.deleted_at, "
      "src_partition = excluded.src_partition, src_offset = excluded.src_offset "
      "RETURNING id, (extract(epoch FROM created_at) * 1000)::bigint",
      t);
  w->sql[ST_OFFSETS] = fmt_alloc(
      "INSERT INTO rv_offsets (consumer_group, topic, partition, next_offset, updated_at) "
      "SELECT $1, $2, u.p, u.n, now() FROM unnest($3::int[], $4::bigint[]) AS u(p, n) "
      "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
      "next_offset = excluded.next_offset, updated_at = excluded.updated_at "
      /* Compare-and-set: the fence's FOR UPDATE cannot lock a row that does not
       * exist yet, so a row another consumer inserted meanwhile is caught here. */
      "WHERE rv_offsets.next_offset = (SELECT e.x FROM unnest($3::int[], $5::bigint[]) AS e(p, x) "
      "WHERE e.p = rv_offsets.partition)");
  /* Through PgBouncer a transaction may land on any server connection, so the
   * staging table lives for one transaction there; on a direct connection it
   * is made once and emptied by every commit. */
  w->stage_sql = stage_sql(pgbouncer, 0);
  int ok = w->conninfo && w->group && w->topic && w->stage_sql;
  for (int i = 0; i < ST_COUNT; i++) ok = ok && w->sql[i];
  if (ok) return w;
  rv_pgwriter_destroy(w);
nomem:
  rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return NULL;
}

static void await_flight(rv_pgwriter_t *w);

void rv_pgwriter_disconnect(rv_pgwriter_t *w) {
  if (w->in_flight) { /* abandoned: cut the socket under the flight thread, then close once it let go */
    if (w->flight_fd >= 0) shutdown(w->flight_fd, SHUT_RDWR);
    await_flight(w);
    w->in_flight = 0;
  }
  if (w->flight_fd >= 0) close(w->flight_fd);
  w->flight_fd = -1;
  if (w->conn) PQfinish(w->conn);
  w->conn = NULL;
  w->in_flight = 0;
}

rv_err_t rv_pgwriter_connect(rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (w->conn && PQstatus(w->conn) == CONNECTION_OK) return RV_OK;
  rv_pgwriter_disconnect(w);
  const char *kw[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
  const char *val[] = {w->conninfo, w->app_name, "UTF8", NULL};
  w->conn = PQconnectdbParams(kw, val, 1);
  rv_err_t err;
  if (!w->conn || PQstatus(w->conn) != CONNECTION_OK) {
    const char *m = w->conn ? PQerrorMessage(w->conn) : "out of memory";
    err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "connecting to PostgreSQL: %.*s",
                  (int)strcspn(m, "\n"), m);
    goto fail;
  }
  rv_pg_quiet_notices(w->conn);
  if ((err = rv_pgschema_partitioning(w->conn, w->table, &w->parts, errstr, errstr_size))) goto fail;
  char *sql = stage_sql(w->pgbouncer, rv_pgschema_has_lz4(w->conn));
  if (!sql) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    goto fail;
  }
  free(w->stage_sql);
  w->stage_sql = sql;
  w->n_months = 0;
  if ((err = rv_pgschema_list_months(w->conn, w->table, &w->months, &w->n_months, errstr, errstr_size))) goto fail;
  if (!w->pgbouncer) {
    /* Room for a whole batch in local buffers (the default 8 MB spills a
     * 5,000-row batch of 784-dim vectors to disk); only settable before the
     * session's first temporary table. */
    if ((err = rv_pg_exec(w->conn, "SET temp_buffers = '128MB'", NULL, errstr, errstr_size)) ||
        (err = rv_pg_exec(w->conn, w->stage_sql, NULL, errstr, errstr_size)))
      goto fail;
    for (int i = 0; i < ST_COUNT; i++) {
      PGresult *r = PQprepare(w->conn, stmt_names[i], w->sql[i], stmt_nparams[i], NULL);
      err = rv_pg_check(w->conn, r, stmt_names[i], errstr, errstr_size);
      PQclear(r);
      if (err) goto fail;
    }
  }
  return RV_OK;
fail:
  rv_pgwriter_disconnect(w);
  return err;
}

/* Runs statement st with text parameters. Never returns NULL-free garbage: the result may be NULL (check it). */
static PGresult *run(rv_pgwriter_t *w, int st, const char *const *params, int result_format) {
  if (w->pgbouncer)
    return PQexecParams(w->conn, w->sql[st], stmt_nparams[st], NULL, params, NULL, NULL, result_format);
  return PQexecPrepared(w->conn, stmt_names[st], stmt_nparams[st], params, NULL, NULL, result_format);
}

enum { ARR_PARTITION, ARR_NEXT, ARR_EXPECTED };

/* "{p0,p1,...}" from the batch positions (partition, next offset or expected next offset). */
static rv_err_t int_array(rv_buf_t *out, const rv_batch_pos_t *pos, size_t n, int which) {
  rv_buf_reset(out);
  rv_err_t err = rv_buf_append(out, "{", 1);
  for (size_t i = 0; i < n && !err; i++)
    err = rv_buf_appendf(out, "%s%lld", i ? "," : "",
                         which == ARR_NEXT       ? (long long)pos[i].next_offset
                         : which == ARR_EXPECTED ? (long long)pos[i].expected_next
                                                 : (long long)pos[i].partition);
  if (!err) err = rv_buf_append(out, "}", 1);
  return err;
}

static rv_err_t query_offsets(rv_pgwriter_t *w, int st, const char *parts_literal, PGresult **out, char *errstr,
                              size_t errstr_size) {
  const char *params[3] = {w->group, w->topic, parts_literal};
  PGresult *r = run(w, st, params, 0);
  rv_err_t err = rv_pg_check(w->conn, r, stmt_names[st], errstr, errstr_size);
  if (err) PQclear(r);
  else *out = r;
  return err;
}

static int64_t stored_offset(const PGresult *r, int32_t partition) {
  for (int i = 0; i < PQntuples(r); i++)
    if (atoi(PQgetvalue(r, i, 0)) == partition) return strtoll(PQgetvalue(r, i, 1), NULL, 10);
  return -1;
}

rv_err_t rv_pgwriter_read_offsets(rv_pgwriter_t *w, const int32_t *partitions, int64_t *next, size_t n,
                                  char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  rv_buf_reset(&w->text);
  rv_err_t err = rv_buf_append(&w->text, "{", 1);
  for (size_t i = 0; i < n && !err; i++) err = rv_buf_appendf(&w->text, "%s%d", i ? "," : "", (int)partitions[i]);
  if (!err) err = rv_buf_append(&w->text, "}", 1);
  if (err) return rv_errf(err, errstr, errstr_size, "out of memory");
  PGresult *r;
  if ((err = query_offsets(w, ST_READ, (const char *)w->text.base, &r, errstr, errstr_size))) return err;
  for (size_t i = 0; i < n; i++) next[i] = stored_offset(r, partitions[i]);
  PQclear(r);
  return RV_OK;
}

static int month_known(const rv_pgwriter_t *w, rv_month_t m) {
  for (size_t i = 0; i < w->n_months; i++)
    if (w->months[i] == m) return 1;
  return 0;
}

/* Appends s as one element of a text[] literal: "..." with " and \ escaped. */
static rv_err_t array_elem(rv_buf_t *b, const char *s, size_t len, int first) {
  rv_err_t err = rv_buf_append(b, first ? "\"" : ",\"", first ? 1 : 2);
  for (size_t i = 0; i < len && !err; i++) {
    if (s[i] == '"' || s[i] == '\\') err = rv_buf_append(b, "\\", 1);
    if (!err) err = rv_buf_append(b, &s[i], 1);
  }
  return err ? err : rv_buf_append(b, "\"", 1);
}

rv_err_t rv_pgwriter_prepare_partitions(rv_pgwriter_t *w, const rv_batch_t *b, char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  /* Only rows whose month has no known partition matter, and of those only
   * ids not pinned yet (a pinned id keeps its partition). */
  rv_buf_reset(&w->text);
  rv_err_t err = rv_buf_append(&w->text, "{", 1);
  size_t n_unknown = 0;
  for (size_t i = 0; i < b->n_rows && !err; i++) {
    const rv_batch_row_t *row = &b->rows[i];
    if (month_known(w, rv_month_of_ms(row->pin_ms))) continue;
    err = array_elem(&w->text, row->rec.id, row->rec.id_len, n_unknown++ == 0);
  }
  if (!err) err = rv_buf_append(&w->text, "}", 1);
  if (err) return rv_errf(err, errstr, errstr_size, "out of memory");
  if (!n_unknown) return RV_OK;

  char sql[200];
  snprintf(sql, sizeof sql, "SELECT id FROM %s_ids WHERE id = ANY($1::text[])", w->table);
  const char *params[1] = {(const char *)w->text.base};
  PGresult *r = PQexecParams(w->conn, sql, 1, NULL, params, NULL, NULL, 0);
  if ((err = rv_pg_check(w->conn, r, "pinned ids", errstr, errstr_size))) {
    PQclear(r);
    return err;
  }
  /* More than 64 new months in one batch: the rest wait for the next batch
   * (their rows meanwhile land in the default partition). */
  rv_month_t want[64];
  size_t n_want = 0;
  for (size_t i = 0; i < b->n_rows && n_want < 64; i++) {
    const rv_batch_row_t *row = &b->rows[i];
    rv_month_t m = rv_month_of_ms(row->pin_ms);
    if (month_known(w, m)) continue;
    int pinned = 0;
    for (int k = 0; k < PQntuples(r) && !pinned; k++)
      pinned = (size_t)PQgetlength(r, k, 0) == row->rec.id_len &&
               !memcmp(PQgetvalue(r, k, 0), row->rec.id, row->rec.id_len);
    int dup = 0;
    for (size_t k = 0; k < n_want && !dup; k++) dup = want[k] == m;
    if (!pinned && !dup) want[n_want++] = m;
  }
  PQclear(r);
  if (!n_want) return RV_OK;
  if ((err = rv_pgschema_create_months(w->conn, w->table, &w->parts, want, n_want, errstr, errstr_size))) return err;
  /* Created, or known to be impossible (rows stay in the default partition): either way, done. */
  rv_month_t *m = realloc(w->months, (w->n_months + n_want) * sizeof *m);
  if (!m) return RV_OK; /* only the cache is lost; the months are retried next batch */
  w->months = m;
  for (size_t i = 0; i < n_want; i++) w->months[w->n_months++] = want[i];
  rv_info("ingest", "%s: partitions ensured for %zu new month(s)", w->table, n_want);
  return RV_OK;
}

/* ---- the batch transaction ---- */

static rv_err_t put_field(rv_buf_t *b, const void *data, int32_t len) {
  rv_err_t err = rv_buf_put_be32(b, (uint32_t)len);
  return err || len <= 0 ? err : rv_buf_append(b, data, (size_t)len);
}

/* Appends a field holding n float32 in little-endian order, whatever the host. */
static rv_err_t put_floats_le(rv_buf_t *b, const float *v, int n) {
  size_t bytes = (size_t)n * 4;
  if (rv_buf_put_be32(b, (uint32_t)bytes) || rv_buf_reserve(b, bytes)) return RV_ERR_NOMEM;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(b->base + b->len, v, bytes);
#else
  for (int k = 0; k < n; k++) {
    uint32_t u;
    memcpy(&u, &v[k], 4);
    uint8_t *o = b->base + b->len + (size_t)k * 4;
    o[0] = (uint8_t)u, o[1] = (uint8_t)(u >> 8), o[2] = (uint8_t)(u >> 16), o[3] = (uint8_t)(u >> 24);
  }
#endif
  b->len += bytes;
  return RV_OK;
}

static rv_err_t put_null(rv_buf_t *b) { return rv_buf_put_be32(b, UINT32_MAX); }

/* A jsonb field (binary format: version 1, then the text), or NULL. */
static rv_err_t put_metadata(rv_buf_t *b, const char *json) {
  if (!json) return put_null(b);
  size_t n = strlen(json);
  uint8_t version = 1;
  return rv_buf_put_be32(b, (uint32_t)n + 1) || rv_buf_append(b, &version, 1) || rv_buf_append(b, json, n)
             ? RV_ERR_NOMEM
             : RV_OK;
}

/* A code field and its version field, or two NULLs. */
static rv_err_t put_code(rv_buf_t *b, const uint8_t *code, size_t size, int32_t version) {
  if (!code) return put_null(b) || put_null(b) ? RV_ERR_NOMEM : RV_OK;
  return put_field(b, code, (int32_t)size) || rv_buf_put_be32(b, 4) || rv_buf_put_be32(b, (uint32_t)version)
             ? RV_ERR_NOMEM
             : RV_OK;
}

/* The staging table's columns, in COPY order. */
#define STAGE_COLUMNS \
  "id, is_delete, vector, metadata, pin_at, src_partition, src_offset, code, code_version, pq_code, pq_version"
#define STAGE_NCOLUMNS 11

static rv_err_t copy_header(rv_buf_t *out) {
  static const char sig[11] = "PGCOPY\n\377\r\n\0";
  rv_buf_reset(out);
  rv_err_t err = rv_buf_append(out, sig, sizeof sig);
  if (!err) err = rv_buf_put_be32(out, 0); /* flags */
  if (!err) err = rv_buf_put_be32(out, 0); /* header extension length */
  return err;
}

/* The staging rows: those of ids seen before (is_new[i] == 0). */
static rv_err_t encode_copy(rv_buf_t *out, const rv_batch_t *b, const uint8_t *is_new, int store_vector) {
  rv_err_t err = copy_header(out);
  int coded = b->n_coded == b->n_rows;
  for (size_t i = 0; i < b->n_rows && !err; i++) {
    if (is_new[i]) continue;
    const rv_batch_row_t *row = &b->rows[i];
    const rv_vector_record_t *rec = &row->rec;
    uint8_t is_delete = rec->op == RV_OP_DELETE;
    int live = !is_delete && rec->vector;
    err = rv_buf_put_be16(out, STAGE_NCOLUMNS);
    if (!err) err = put_field(out, rec->id, (int32_t)rec->id_len);
    if (!err) err = put_field(out, &is_delete, 1);
    if (!err) err = live && store_vector ? put_floats_le(out, rec->vector, rec->dim) : put_null(out);
    if (!err) err = put_metadata(out, rec->metadata);
    if (!err) err = rv_buf_put_be32(out, 8) || rv_buf_put_be64(out, (uint64_t)((row->pin_ms - PG_EPOCH_MS) * 1000));
    if (!err) err = rv_buf_put_be32(out, 4) || rv_buf_put_be32(out, (uint32_t)row->partition);
    if (!err) err = rv_buf_put_be32(out, 8) || rv_buf_put_be64(out, (uint64_t)row->offset);
    if (!err)
      err = put_code(out, live && coded && b->sq8_size ? b->sq8 + i * b->sq8_size : NULL, b->sq8_size,
                     b->sq8_version);
    if (!err)
      err = put_code(out, live && coded && b->pq_size ? b->pq + i * b->pq_size : NULL, b->pq_size, b->pq_version);
  }
  if (!err) err = rv_buf_put_be16(out, UINT16_MAX); /* trailer: -1 */
  return err ? RV_ERR_NOMEM : RV_OK;
}

/* The table's columns, in COPY order, for the rows of new ids. */
#define TABLE_COLUMNS                                                                                      \
  "id, created_at, vector, code, code_version, pq_code, pq_version, metadata, updated_at, deleted_at, " \
  "src_partition, src_offset"
#define TABLE_NCOLUMNS 12

/* The rows of new ids (is_new[i] == 1) as the table stores them, like the
 * upsert would insert them: updated_at (and deleted_at of a delete) = now_be,
 * the transaction's now() in COPY's binary form. */
static rv_err_t encode_new(rv_buf_t *out, const rv_batch_t *b, const uint8_t *is_new, int store_vector,
                           const char *now_be) {
  rv_err_t err = copy_header(out);
  int coded = b->n_coded == b->n_rows;
  for (size_t i = 0; i < b->n_rows && !err; i++) {
    if (!is_new[i]) continue;
    const rv_batch_row_t *row = &b->rows[i];
    const rv_vector_record_t *rec = &row->rec;
    int is_delete = rec->op == RV_OP_DELETE;
    int live = !is_delete && rec->vector;
    err = rv_buf_put_be16(out, TABLE_NCOLUMNS);
    if (!err) err = put_field(out, rec->id, (int32_t)rec->id_len);
    if (!err) err = rv_buf_put_be32(out, 8) || rv_buf_put_be64(out, (uint64_t)((row->pin_ms - PG_EPOCH_MS) * 1000));
    if (!err) err = live && store_vector ? put_floats_le(out, rec->vector, rec->dim) : put_null(out);
    if (!err)
      err = put_code(out, live && coded && b->sq8_size ? b->sq8 + i * b->sq8_size : NULL, b->sq8_size,
                     b->sq8_version);
    if (!err)
      err = put_code(out, live && coded && b->pq_size ? b->pq + i * b->pq_size : NULL, b->pq_size, b->pq_version);
    if (!err) err = put_metadata(out, rec->metadata);
    if (!err) err = put_field(out, now_be, 8);
    if (!err) err = is_delete ? put_field(out, now_be, 8) : put_null(out);
    if (!err) err = rv_buf_put_be32(out, 4) || rv_buf_put_be32(out, (uint32_t)row->partition);
    if (!err) err = rv_buf_put_be32(out, 8) || rv_buf_put_be64(out, (uint64_t)row->offset);
  }
  if (!err) err = rv_buf_put_be16(out, UINT16_MAX);
  return err ? RV_ERR_NOMEM : RV_OK;
}

/* Sends w->copy to a COPY ... FROM STDIN (FORMAT binary). */
static rv_err_t copy_in(rv_pgwriter_t *w, const char *sql, const char *what, char *errstr, size_t errstr_size) {
  PGresult *r = PQexec(w->conn, sql);
  rv_err_t err = rv_pg_check(w->conn, r, what, errstr, errstr_size);
  PQclear(r);
  if (err) return err;
  int ok = 1;
  for (size_t off = 0; off < w->copy.len && ok; off += COPY_CHUNK) {
    size_t n = w->copy.len - off < COPY_CHUNK ? w->copy.len - off : COPY_CHUNK;
    ok = PQputCopyData(w->conn, (const char *)w->copy.base + off, (int)n) == 1;
  }
  if (PQputCopyEnd(w->conn, ok ? NULL : "client failed to send COPY data") != 1) ok = 0;
  err = RV_OK;
  while ((r = PQgetResult(w->conn)) != NULL) {
    if (!err) err = rv_pg_check(w->conn, r, "COPY data", errstr, errstr_size);
    PQclear(r);
  }
  if (!err && !ok) err = rv_errf(rv_pg_classify(w->conn, NULL), errstr, errstr_size, "%s: %s", what,
                                 PQerrorMessage(w->conn));
  return err;
}

static rv_err_t copy_rows(rv_pgwriter_t *w, const rv_batch_t *b, char *errstr, size_t errstr_size) {
  if (encode_copy(&w->copy, b, w->is_new, w->store_vector))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return copy_in(w, "COPY pg_temp.rv_stage (" STAGE_COLUMNS ") FROM STDIN (FORMAT binary)", "COPY", errstr,
                 errstr_size);
}

static rv_err_t run_checked(rv_pgwriter_t *w, int st, const char *const *params, PGresult **out, char *errstr,
                            size_t errstr_size) {
  PGresult *r = run(w, st, params, 0);
  rv_err_t err = rv_pg_check(w->conn, r, stmt_names[st], errstr, errstr_size);
  if (err || !out) PQclear(r);
  else *out = r;
  return err;
}

/* Checks the stored offsets against the batch (under row locks). */
static rv_err_t fence(rv_pgwriter_t *w, rv_batch_t *b, rv_pgw_outcome_t *outcome, char *errstr,
                      size_t errstr_size) {
  if (int_array(&w->text, b->pos, b->n_pos, ARR_PARTITION))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  PGresult *r;
  rv_err_t err = query_offsets(w, ST_LOCK, (const char *)w->text.base, &r, errstr, errstr_size);
  if (err) return err;
  size_t at_start = 0, at_end = 0;
  const rv_batch_pos_t *odd = NULL; /* first partition not at the batch's start */
  int64_t odd_stored = 0;
  for (size_t i = 0; i < b->n_pos; i++) {
    int64_t stored = stored_offset(r, b->pos[i].partition);
    if (stored == b->pos[i].expected_next) {
      at_start++;
      continue;
    }
    if (stored == b->pos[i].next_offset) at_end++;
    if (!odd) odd = &b->pos[i], odd_stored = stored;
  }
  PQclear(r);
  if (at_start == b->n_pos) return RV_OK;
  if (at_end == b->n_pos) {
    *outcome = RV_PGW_ALREADY;
    return RV_OK;
  }
  return rv_errf(RV_ERR_STATE, errstr, errstr_size,
                 "partition %d: stored next offset %lld, batch expected %lld (another consumer owns it now)",
                 (int)odd->partition, (long long)odd_stored, (long long)odd->expected_next);
}

/* Pins the batch's new ids, marks them in w->is_new and sets their rows'
 * created_at_ms (the pin); *n_new, and now_be (8 bytes) = the transaction's
 * now() in binary when *n_new > 0. Every other row is marked INT64_MIN. */
static rv_err_t pin_rows(rv_pgwriter_t *w, rv_batch_t *b, size_t *n_new, char *now_be, char *errstr,
                         size_t errstr_size) {
  *n_new = 0;
  if (w->cap_new < b->n_rows) {
    uint8_t *v = realloc(w->is_new, b->n_rows);
    if (!v) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    w->is_new = v;
    w->cap_new = b->n_rows;
  }
  memset(w->is_new, 0, b->n_rows);
  rv_buf_reset(&w->text);
  rv_buf_reset(&w->text2);
  rv_err_t err = rv_buf_append(&w->text, "{", 1) || rv_buf_append(&w->text2, "{", 1) ? RV_ERR_NOMEM : RV_OK;
  for (size_t i = 0; i < b->n_rows && !err; i++) {
    const rv_batch_row_t *row = &b->rows[i];
    b->rows[i].created_at_ms = INT64_MIN;
    err = array_elem(&w->text, row->rec.id, row->rec.id_len, i == 0);
    if (!err) err = rv_buf_appendf(&w->text2, "%s%lld", i ? "," : "", (long long)row->pin_ms * 1000);
  }
  if (!err) err = rv_buf_append(&w->text, "}", 2) || rv_buf_append(&w->text2, "}", 2) ? RV_ERR_NOMEM : RV_OK;
  if (err) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  const char *params[2] = {(const char *)w->text.base, (const char *)w->text2.base};
  PGresult *r = run(w, ST_PIN, params, 1);
  if ((err = rv_pg_check(w->conn, r, stmt_names[ST_PIN], errstr, errstr_size))) {
    PQclear(r);
    return err;
  }
  for (int i = 0; i < PQntuples(r); i++) {
    rv_batch_row_t *row = rv_batch_find(b, PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0));
    if (!row || PQgetlength(r, i, 1) != 8) continue;
    size_t k = (size_t)(row - b->rows);
    if (w->is_new[k]) continue;
    w->is_new[k] = 1;
    row->created_at_ms = row->pin_ms;
    memcpy(now_be, PQgetvalue(r, i, 1), 8);
    ++*n_new;
  }
  PQclear(r);
  return RV_OK;
}

/* The rows of ids seen before: staged, then upserted. */
static rv_err_t upsert_rows(rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size) {
  PGresult *r;
  rv_err_t err = run_checked(w, ST_UPSERT, NULL, &r, errstr, errstr_size);
  if (err) return err;
  for (int i = 0; i < PQntuples(r); i++) {
    rv_batch_row_t *row = rv_batch_find(b, PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0));
    if (row) row->created_at_ms = strtoll(PQgetvalue(r, i, 1), NULL, 10);
  }
  PQclear(r);
  for (size_t i = 0; i < b->n_rows; i++)
    if (b->rows[i].created_at_ms == INT64_MIN)
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "upsert returned no row for id '%s'", b->rows[i].rec.id);
  return RV_OK;
}

static rv_err_t write_offsets(rv_pgwriter_t *w, const rv_batch_t *b, char *errstr, size_t errstr_size) {
  rv_buf_t parts, expected;
  rv_buf_init(&parts);
  rv_buf_init(&expected);
  rv_err_t err = int_array(&parts, b->pos, b->n_pos, ARR_PARTITION);
  if (!err) err = int_array(&w->text, b->pos, b->n_pos, ARR_NEXT);
  if (!err) err = int_array(&expected, b->pos, b->n_pos, ARR_EXPECTED);
  PGresult *r = NULL;
  if (err) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  } else {
    const char *params[5] = {w->group, w->topic, (const char *)parts.base, (const char *)w->text.base,
                             (const char *)expected.base};
    err = run_checked(w, ST_OFFSETS, params, &r, errstr, errstr_size);
  }
  /* Every partition's row inserted or updated, or another consumer got there first. */
  if (!err && strtoull(PQcmdTuples(r), NULL, 10) != b->n_pos)
    err = rv_errf(RV_ERR_STATE, errstr, errstr_size,
                  "stored offsets changed under the batch (%s of %zu updated; another consumer owns a partition now)",
                  PQcmdTuples(r), b->n_pos);
  PQclear(r);
  rv_buf_close(&parts);
  rv_buf_close(&expected);
  return err;
}

rv_err_t rv_pgwriter_apply_rows(rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  if (!b->n_pos) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "empty batch");
  rv_err_t err = rv_pg_exec(w->conn, "BEGIN", NULL, errstr, errstr_size);
  if (!err && w->pgbouncer) err = rv_pg_exec(w->conn, w->stage_sql, NULL, errstr, errstr_size);
  w->n_new = 0;
  if (!err && b->n_rows) {
    err = pin_rows(w, b, &w->n_new, w->now_be, errstr, errstr_size);
    if (!err && w->n_new < b->n_rows) err = copy_rows(w, b, errstr, errstr_size);
    if (!err && w->n_new < b->n_rows) err = upsert_rows(w, b, errstr, errstr_size);
    /* The new ids' rows are encoded now (b may change before send_commit) and sent by it. */
    if (!err && w->n_new && encode_new(&w->copy, b, w->is_new, w->store_vector, w->now_be))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  if (err) rv_pgwriter_rollback(w);
  return err;
}

rv_err_t rv_pgwriter_apply_offsets(rv_pgwriter_t *w, rv_batch_t *b, rv_pgw_outcome_t *outcome, char *errstr,
                                   size_t errstr_size) {
  *outcome = RV_PGW_APPLIED;
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn || PQtransactionStatus(w->conn) != PQTRANS_INTRANS)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no batch transaction open (apply_rows first)");
  rv_err_t err = fence(w, b, outcome, errstr, errstr_size);
  if (!err && *outcome == RV_PGW_ALREADY) {
    rv_pgwriter_rollback(w);
    return RV_OK;
  }
  if (!err) err = write_offsets(w, b, errstr, errstr_size);
  if (err) rv_pgwriter_rollback(w);
  return err;
}

rv_err_t rv_pgwriter_apply(rv_pgwriter_t *w, rv_batch_t *b, rv_pgw_outcome_t *outcome, char *errstr,
                           size_t errstr_size) {
  *outcome = RV_PGW_APPLIED;
  rv_err_t err = rv_pgwriter_apply_rows(w, b, errstr, errstr_size);
  return err ? err : rv_pgwriter_apply_offsets(w, b, outcome, errstr, errstr_size);
}

/* ---- finding the rows PostgreSQL refuses ---- */

/* Writes rows [lo, lo + n) of b inside the open transaction, as apply_rows
 * and the final COPY would. */
static rv_err_t write_range(rv_pgwriter_t *w, rv_batch_t *b, size_t lo, size_t n, char *errstr,
                            size_t errstr_size) {
  rv_batch_t v;
  if (rv_batch_view(b, lo, n, &v)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  char sql[320];
  size_t n_new = 0;
  char now_be[8] = {0};
  rv_err_t err = rv_pg_exec(w->conn, "DELETE FROM pg_temp.rv_stage", NULL, errstr, errstr_size);
  if (!err) err = pin_rows(w, &v, &n_new, now_be, errstr, errstr_size);
  if (!err && n_new < v.n_rows) err = copy_rows(w, &v, errstr, errstr_size);
  if (!err && n_new < v.n_rows) err = upsert_rows(w, &v, errstr, errstr_size);
  if (!err && n_new) {
    if (encode_new(&w->copy, &v, w->is_new, w->store_vector, now_be)) {
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    } else {
      snprintf(sql, sizeof sql, "COPY %s (" TABLE_COLUMNS ") FROM STDIN (FORMAT binary)", w->table);
      err = copy_in(w, sql, "COPY new rows", errstr, errstr_size);
    }
  }
  rv_batch_view_close(&v);
  return err;
}

typedef struct isolate {
  rv_pgwriter_t *w;
  rv_batch_t *b;
  void (*on_reject)(void *, size_t, const char *, const char *);
  void *arg;
  size_t n_rejected;
} isolate_t;

static rv_err_t isolate_range(isolate_t *s, size_t lo, size_t n, char *errstr, size_t errstr_size) {
  if (!n) return RV_OK;
  PGconn *c = s->w->conn;
  rv_err_t err = rv_pg_exec(c, "SAVEPOINT rv_isolate", NULL, errstr, errstr_size);
  if (err) return err;
  char e[1024];
  err = write_range(s->w, s->b, lo, n, e, sizeof e);
  if (!err) return rv_pg_exec(c, "RELEASE SAVEPOINT rv_isolate", NULL, errstr, errstr_size);
  char state[6], msg[512];
  rv_pg_errstr_split(e, state, msg, sizeof msg);
  if (!rv_pg_is_data_error(state)) return rv_errf(err, errstr, errstr_size, "%s", e);
  if ((err = rv_pg_exec(c, "ROLLBACK TO SAVEPOINT rv_isolate", NULL, errstr, errstr_size)) ||
      (err = rv_pg_exec(c, "RELEASE SAVEPOINT rv_isolate", NULL, errstr, errstr_size)))
    return err;
  if (n == 1) {
    s->n_rejected++;
    if (s->on_reject) s->on_reject(s->arg, lo, state, msg);
    return RV_OK;
  }
  err = isolate_range(s, lo, n / 2, errstr, errstr_size);
  return err ? err : isolate_range(s, lo + n / 2, n - n / 2, errstr, errstr_size);
}

rv_err_t rv_pgwriter_isolate(rv_pgwriter_t *w, rv_batch_t *b,
                             void (*on_reject)(void *arg, size_t row, const char *sqlstate, const char *message),
                             void *arg, size_t *n_rejected, char *errstr, size_t errstr_size) {
  *n_rejected = 0;
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  if (PQtransactionStatus(w->conn) != PQTRANS_IDLE)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a transaction is open");
  isolate_t s = {w, b, on_reject, arg, 0};
  rv_err_t err = rv_pg_exec(w->conn, "BEGIN", NULL, errstr, errstr_size);
  if (!err && w->pgbouncer) err = rv_pg_exec(w->conn, w->stage_sql, NULL, errstr, errstr_size);
  if (!err) err = isolate_range(&s, 0, b->n_rows, errstr, errstr_size);
  rv_pgwriter_rollback(w); /* a search only: the batch is written afterwards without the refused rows */
  w->n_new = 0;
  *n_rejected = s.n_rejected;
  return err;
}

int rv_pgwriter_idle(const rv_pgwriter_t *w) {
  return !w->in_flight && w->conn && PQstatus(w->conn) == CONNECTION_OK &&
         PQtransactionStatus(w->conn) == PQTRANS_IDLE;
}

/* The end of the batch transaction, as one simple query: the new ids' rows
 * (if any) are the last data statement, then COMMIT. A failed COPY skips the
 * rest of the query string (the COMMIT too): the transaction stays open and
 * failed. Runs on the writer's flight thread, with blocking I/O. */
static rv_err_t run_flight(rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  char sql[320];
  if (w->n_new)
    snprintf(sql, sizeof sql, "COPY %s (" TABLE_COLUMNS ") FROM STDIN (FORMAT binary); COMMIT", w->table);
  else
    snprintf(sql, sizeof sql, "COMMIT");
  if (!PQsendQuery(w->conn, sql))
    return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "sending COMMIT: %s", PQerrorMessage(w->conn));
  rv_err_t err = RV_OK;
  int committed = 0, copied = 0;
  PGresult *r;
  while ((r = PQgetResult(w->conn)) != NULL) {
    if (PQresultStatus(r) == PGRES_COPY_IN) {
      PQclear(r);
      if (copied++) { /* COPY data could not be delivered: the session's state is unknown */
        if (!err) err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "sending COPY data: %s",
                                PQerrorMessage(w->conn));
        break;
      }
      int ok = 1;
      for (size_t off = 0; off < w->copy.len && ok; off += COPY_CHUNK) {
        size_t n = w->copy.len - off < COPY_CHUNK ? w->copy.len - off : COPY_CHUNK;
        ok = PQputCopyData(w->conn, (const char *)w->copy.base + off, (int)n) == 1;
      }
      if (PQputCopyEnd(w->conn, ok ? NULL : "client failed to send COPY data") != 1) ok = 0;
      if (!ok && !err)
        err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "sending COPY data: %s", PQerrorMessage(w->conn));
      continue;
    }
    if (!err) err = rv_pg_check(w->conn, r, w->n_new ? "COPY new rows / COMMIT" : "COMMIT", errstr, errstr_size);
    if (!err && !strcmp(PQcmdStatus(r), "COMMIT")) committed = 1;
    else if (!err && !strcmp(PQcmdStatus(r), "ROLLBACK")) /* COMMIT of a failed transaction */
      err = rv_errf(RV_ERR_INVALID, errstr, errstr_size, "COMMIT rolled back (ROLLBACK)");
    PQclear(r);
  }
  if (!err && !committed)
    err = rv_errf(PQstatus(w->conn) == CONNECTION_OK ? RV_ERR_INVALID : RV_ERR_UNAVAILABLE, errstr, errstr_size,
                  "COMMIT: no reply: %s", PQerrorMessage(w->conn));
  if (err && PQstatus(w->conn) != CONNECTION_OK) err = RV_ERR_UNAVAILABLE;
  return err;
}

/* The flight thread: runs one in-flight commit at a time for the consumer
 * thread, which owns the connection again once it has seen the result. */
static void *flight_main(void *arg) {
  rv_pgwriter_t *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->job && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
    if (!w->job) break;
    pthread_mutex_unlock(&w->mu);
    char e[sizeof w->flight_errstr];
    e[0] = 0;
    rv_err_t err = run_flight(w, e, sizeof e);
    pthread_mutex_lock(&w->mu);
    w->flight_err = err;
    memcpy(w->flight_errstr, e, sizeof e);
    w->job = 0;
    atomic_store(&w->flight_done, 1);
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* Waits until the flight thread has finished the commit in flight. */
static void await_flight(rv_pgwriter_t *w) {
  pthread_mutex_lock(&w->mu);
  while (w->job) pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

/* Hands the end of the transaction to the flight thread. PostgreSQL takes
 * COPY data at some 150 MB/s: a socket buffer of it lasts about a
 * millisecond, so COPY data fed from the consumer loop between Kafka polls
 * left the server waiting for it most of the time. */
rv_err_t rv_pgwriter_send_commit(rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  pthread_mutex_lock(&w->mu);
  if (!w->thread_started) {
    int rc = pthread_create(&w->thread, NULL, flight_main, w);
    if (rc) {
      pthread_mutex_unlock(&w->mu);
      return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "starting the commit thread: %s", strerror(rc));
    }
    w->thread_started = 1;
  }
  w->flight_fd = PQsocket(w->conn) >= 0 ? dup(PQsocket(w->conn)) : -1;
  atomic_store(&w->flight_done, 0);
  w->job = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  w->in_flight = 1;
  return RV_OK;
}

int rv_pgwriter_in_flight(const rv_pgwriter_t *w) { return w->in_flight; }

int rv_pgwriter_poll(rv_pgwriter_t *w) { return !w->in_flight || atomic_load(&w->flight_done); }

rv_err_t rv_pgwriter_finish(rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  if (!w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no commit in flight");
  await_flight(w);
  w->in_flight = 0;
  if (w->flight_fd >= 0) close(w->flight_fd);
  w->flight_fd = -1;
  if (w->flight_err) snprintf(errstr, errstr_size, "%s", w->flight_errstr);
  return w->flight_err;
}

rv_err_t rv_pgwriter_commit(rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  rv_err_t err = rv_pgwriter_send_commit(w, errstr, errstr_size);
  return err ? err : rv_pgwriter_finish(w, errstr, errstr_size);
}

PGconn *rv_pgwriter_conn(rv_pgwriter_t *w) { return w->conn; }

void rv_pgwriter_rollback(rv_pgwriter_t *w) {
  if (w->in_flight) { /* results not read: the session's state is unknown */
    rv_pgwriter_disconnect(w);
    return;
  }
  if (!w->conn || PQtransactionStatus(w->conn) == PQTRANS_IDLE) return;
  PGresult *r = PQexec(w->conn, "ROLLBACK");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) rv_pgwriter_disconnect(w);
  PQclear(r);
}

void rv_pgwriter_set_store_vector(rv_pgwriter_t *w, int on) { w->store_vector = on != 0; }

rv_err_t rv_pgwriter_get_quantizer(rv_pgwriter_t *w, const char *kind, int32_t *version, rv_buf_t *params,
                                   char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  return rv_pgschema_get_quantizer(w->conn, w->table, kind, version, params, errstr, errstr_size);
}

rv_err_t rv_pgwriter_put_quantizer(rv_pgwriter_t *w, const char *kind, int32_t version, const void *params,
                                   size_t len, int trained_on, int32_t *version_out, rv_buf_t *params_out,
                                   char *errstr, size_t errstr_size) {
  if (w->in_flight) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "a commit is in flight");
  if (!w->conn) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  return rv_pgschema_put_quantizer(w->conn, w->table, kind, version, params, len, trained_on, version_out,
                                   params_out, errstr, errstr_size);
}
