#include "rv_pgload.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_log.h"
#include "rv_time.h"

#define LOG "pgload"

struct rv_pgload {
  rv_pgload_conf_t conf;
  pthread_mutex_t lock; /* guards stats */
  rv_pgload_stats_t stats;
};

rv_pgload_t *rv_pgload_new(const rv_pgload_conf_t *conf, char *errstr, size_t errstr_size) {
  if (!conf->conninfo[0] || !conf->collection[0]) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "pgload: conninfo and collection are required");
    return NULL;
  }
  for (const char *s = conf->collection; *s; s++) /* it is spliced into SQL as the table name */
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) {
      rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "pgload: invalid collection name '%s'", conf->collection);
      return NULL;
    }
  rv_pgload_t *p = calloc(1, sizeof *p);
  if (!p) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  p->conf = *conf;
  p->stats.last_load_ms = -1;
  pthread_mutex_init(&p->lock, NULL);
  return p;
}

void rv_pgload_destroy(rv_pgload_t *p) {
  if (!p) return;
  pthread_mutex_destroy(&p->lock);
  free(p);
}

rv_replica_store_t rv_pgload_store(rv_pgload_t *p) {
  rv_replica_store_t s = {.load = rv_pgload_load, .quantizer = rv_pgload_quantizer, .ctx = p};
  return s;
}

void rv_pgload_stats(rv_pgload_t *p, rv_pgload_stats_t *out) {
  pthread_mutex_lock(&p->lock);
  *out = p->stats;
  pthread_mutex_unlock(&p->lock);
}

/* ---- helpers ---- */

static PGconn *connect_db(const rv_pgload_t *p, char *errstr, size_t errstr_size) {
  PGconn *c = PQconnectdb(p->conf.conninfo);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "cannot connect to PostgreSQL: %s",
            c ? PQerrorMessage(c) : "out of memory");
    PQfinish(c);
    return NULL;
  }
  return c;
}

/* Checks a result; on failure sets errstr (RV_ERR_UNAVAILABLE if the connection is gone, else RV_ERR_IO). */
static rv_err_t check(PGconn *c, const PGresult *r, ExecStatusType want, const char *what, char *errstr,
                      size_t errstr_size) {
  if (r && PQresultStatus(r) == want) return RV_OK;
  return rv_errf(PQstatus(c) == CONNECTION_OK ? RV_ERR_IO : RV_ERR_UNAVAILABLE, errstr, errstr_size, "%s: %s", what,
                 r ? PQresultErrorMessage(r) : PQerrorMessage(c));
}

static uint64_t get_be(const char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | (uint8_t)p[i];
  return v;
}

/* ---- quantizer ---- */

/* Reads the params of (collection, 'sq8', version) on c; version <= 0: the latest. */
static rv_err_t read_quantizer(const rv_pgload_t *p, PGconn *c, int32_t version, int32_t *got, void **params,
                               size_t *len, char *errstr, size_t errstr_size) {
  char v[16];
  snprintf(v, sizeof v, "%d", (int)version);
  const char *pv[2] = {p->conf.collection, v};
  PGresult *r = PQexecParams(c,
                             version > 0
                                 ? "SELECT version, params FROM rv_quantizers WHERE collection = $1 AND kind = 'sq8' "
                                   "AND version = $2::int"
                                 : "SELECT version, params FROM rv_quantizers WHERE collection = $1 AND kind = 'sq8' "
                                   "AND $2::int <= 0 ORDER BY version DESC LIMIT 1",
                             2, NULL, pv, NULL, NULL, 1);
  rv_err_t err = check(c, r, PGRES_TUPLES_OK, "reading rv_quantizers", errstr, errstr_size);
  if (!err && PQntuples(r) == 0)
    err = rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "no sq8 quantizer%s%s for collection %s",
                  version > 0 ? " version " : "", version > 0 ? v : "", p->conf.collection);
  if (!err && PQgetlength(r, 0, 0) != 4) err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "rv_quantizers: bad row");
  if (!err) {
    *got = (int32_t)get_be(PQgetvalue(r, 0, 0), 4);
    *len = (size_t)PQgetlength(r, 0, 1);
    *params = malloc(*len ? *len : 1);
    if (!*params) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    else memcpy(*params, PQgetvalue(r, 0, 1), *len);
  }
  PQclear(r);
  return err;
}

rv_err_t rv_pgload_quantizer(void *ctx, int32_t version, void **params, size_t *len, char *errstr,
                             size_t errstr_size) {
  rv_pgload_t *p = ctx;
  if (version <= 0) return rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "no quantizer version %d", (int)version);
  PGconn *c = connect_db(p, errstr, errstr_size);
  if (!c) return RV_ERR_UNAVAILABLE;
  int32_t got;
  *params = NULL;
  rv_err_t err = read_quantizer(p, c, version, &got, params, len, errstr, errstr_size);
  PQfinish(c);
  return err;
}

/* ---- load ---- */

/* The rows of a load, as binary COPY fields. */
enum { F_ID, F_PART, F_OFFSET, F_VECTOR, F_CODE, F_CODE_VERSION, F_METADATA, F_CREATED, N_FIELDS };

typedef struct loader {
  const rv_pgload_t *p;
  rv_replica_load_t *load;
  float *vec; /* decode buffer */
  size_t vec_cap;
  char *id, *meta; /* NUL-terminated copies */
  size_t id_cap, meta_cap;
  uint64_t rows, skipped;
  char first_skip[256];
} loader_t;

static int copy_str(char **dst, size_t *cap, const char *src, size_t n) {
  if (n + 1 > *cap) {
    char *d = realloc(*dst, n + 1);
    if (!d) return -1;
    *dst = d;
    *cap = n + 1;
  }
  memcpy(*dst, src, n);
  (*dst)[n] = 0;
  return 0;
}

/* One tuple's fields (pointers into the COPY buffer; len -1 = NULL) to a change for the replica. */
static rv_err_t put_row(loader_t *L, const char *f[N_FIELDS], const int32_t n[N_FIELDS], char *errstr,
                        size_t errstr_size) {
  if (n[F_ID] < 0 || n[F_PART] != 4 || n[F_OFFSET] != 8 || n[F_CREATED] != 8)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY row without id, version or created_at");
  rv_change_t ch;
  memset(&ch, 0, sizeof ch);
  if (copy_str(&L->id, &L->id_cap, f[F_ID], (size_t)n[F_ID]))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  ch.id = L->id; /* every field of ch is borrowed: nothing is closed */
  ch.op = RV_OP_UPSERT;
  ch.src_partition = (int32_t)get_be(f[F_PART], 4);
  ch.src_offset = L->p->conf.fresh_log ? -1 : (int64_t)get_be(f[F_OFFSET], 8);
  ch.created_at_ms = (int64_t)get_be(f[F_CREATED], 8);
  if (n[F_VECTOR] > 0 && n[F_VECTOR] % 4 == 0) {
    size_t dim = (size_t)n[F_VECTOR] / 4;
    if (dim > L->vec_cap) {
      float *v = realloc(L->vec, dim * sizeof *v);
      if (!v) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
      L->vec = v;
      L->vec_cap = dim;
    }
    const uint8_t *s = (const uint8_t *)f[F_VECTOR];
    for (size_t k = 0; k < dim; k++) { /* stored little-endian, whatever the host */
      uint32_t u = (uint32_t)s[4 * k] | (uint32_t)s[4 * k + 1] << 8 | (uint32_t)s[4 * k + 2] << 16 |
                   (uint32_t)s[4 * k + 3] << 24;
      memcpy(&L->vec[k], &u, 4);
    }
    ch.vector = L->vec;
    ch.dim = (int)dim;
  }
  if (n[F_CODE] >= 0 && n[F_CODE_VERSION] == 4) {
    ch.sq8_code = (uint8_t *)f[F_CODE];
    ch.sq8_len = n[F_CODE];
    ch.sq8_version = (int32_t)get_be(f[F_CODE_VERSION], 4);
  }
  if (n[F_METADATA] >= 0) {
    if (copy_str(&L->meta, &L->meta_cap, f[F_METADATA], (size_t)n[F_METADATA]))
      return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    ch.attributes = L->meta;
  }
  rv_err_t err = rv_replica_load_put(L->load, &ch);
  if (err == RV_ERR_NOMEM) return rv_errf(err, errstr, errstr_size, "out of memory loading id %s", L->id);
  if (err) {
    if (!L->skipped++)
      snprintf(L->first_skip, sizeof L->first_skip, "id %.100s: %s", L->id, rv_err_str(err));
    return RV_OK;
  }
  L->rows++;
  return RV_OK;
}

/* Parses one CopyData message: the file header on the first, then whole
 * tuples, or the trailer. Sets *done at the trailer. */
static rv_err_t parse_copy(loader_t *L, const char *buf, int len, int *first, int *done, char *errstr,
                           size_t errstr_size) {
  static const char sig[11] = "PGCOPY\n\377\r\n\0";
  int off = 0;
  if (*first) {
    if (len < 19 || memcmp(buf, sig, 11))
      return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: not a binary COPY header");
    int32_t ext = (int32_t)get_be(buf + 15, 4);
    if (ext < 0 || 19 + ext > len) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: bad header");
    off = 19 + ext;
    *first = 0;
  }
  while (off < len) {
    if (len - off < 2) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: truncated tuple");
    int16_t nf = (int16_t)get_be(buf + off, 2);
    off += 2;
    if (nf == -1) {
      *done = 1;
      return RV_OK;
    }
    if (nf != N_FIELDS) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: %d fields, want %d", nf, N_FIELDS);
    const char *f[N_FIELDS];
    int32_t n[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
      if (len - off < 4) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: truncated field");
      n[i] = (int32_t)get_be(buf + off, 4);
      off += 4;
      f[i] = buf + off;
      if (n[i] > 0) {
        if (n[i] > len - off) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: truncated field");
        off += n[i];
      }
    }
    rv_err_t err = put_row(L, f, n, errstr, errstr_size);
    if (err) return err;
  }
  return RV_OK;
}

/* Inside the transaction: COPY every live row to the replica. */
static rv_err_t copy_rows(loader_t *L, PGconn *c, char *errstr, size_t errstr_size) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "COPY (SELECT id, src_partition, src_offset, vector, code, code_version, metadata::text, "
           "(extract(epoch FROM created_at) * 1000)::bigint FROM %s WHERE deleted_at IS NULL) "
           "TO STDOUT (FORMAT binary)",
           L->p->conf.collection);
  PGresult *r = PQexec(c, sql);
  rv_err_t err = check(c, r, PGRES_COPY_OUT, "COPY out", errstr, errstr_size);
  PQclear(r);
  if (err) return err;
  int first = 1, done = 0;
  for (;;) {
    char *buf = NULL;
    int n = PQgetCopyData(c, &buf, 0);
    if (n == -1) break; /* COPY finished */
    if (n < 0) {
      err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "COPY out: %s", PQerrorMessage(c));
      break;
    }
    if (!err && !done) err = parse_copy(L, buf, n, &first, &done, errstr, errstr_size);
    PQfreemem(buf);
    /* After an error the rest is drained, so the connection stays in step (it is closed anyway). */
  }
  r = PQgetResult(c);
  rv_err_t end = check(c, r, PGRES_COMMAND_OK, "COPY out", errstr, errstr_size);
  PQclear(r);
  while ((r = PQgetResult(c))) PQclear(r);
  if (!err && !done && !end) err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "COPY: no trailer");
  return err ? err : end;
}

/* Inside the transaction: the committed source offsets of the collection's ingest group. */
static rv_err_t load_positions(loader_t *L, PGconn *c, char *errstr, size_t errstr_size) {
  char group[RV_NAME_MAX + 16];
  snprintf(group, sizeof group, "rv-ingest-%s", L->p->conf.collection);
  const char *pv[2] = {group, L->p->conf.source_topic};
  PGresult *r = PQexecParams(c,
                             "SELECT partition, next_offset FROM rv_offsets WHERE consumer_group = $1 AND topic = $2 "
                             "ORDER BY partition",
                             2, NULL, pv, NULL, NULL, 1);
  rv_err_t err = check(c, r, PGRES_TUPLES_OK, "reading rv_offsets", errstr, errstr_size);
  int n = err ? 0 : PQntuples(r);
  rv_source_position_t *pos = n ? calloc((size_t)n, sizeof *pos) : NULL;
  if (n && !pos) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  for (int i = 0; !err && i < n; i++) {
    if (PQgetlength(r, i, 0) != 4 || PQgetlength(r, i, 1) != 8) {
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "rv_offsets: bad row");
      break;
    }
    pos[i].partition = (int32_t)get_be(PQgetvalue(r, i, 0), 4);
    pos[i].next_offset = (int64_t)get_be(PQgetvalue(r, i, 1), 8);
  }
  PQclear(r);
  if (!err && n) err = rv_replica_load_positions(L->load, pos, n);
  if (err && !errstr[0]) rv_errf(err, errstr, errstr_size, "loading positions: %s", rv_err_str(err));
  free(pos);
  return err;
}

static rv_err_t exec_ok(PGconn *c, const char *sql, char *errstr, size_t errstr_size) {
  PGresult *r = PQexec(c, sql);
  rv_err_t err = check(c, r, PGRES_COMMAND_OK, sql, errstr, errstr_size);
  PQclear(r);
  return err;
}

static rv_err_t load_in_tx(loader_t *L, PGconn *c, char *errstr, size_t errstr_size) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT to_regclass('%s') IS NOT NULL AND to_regclass('rv_quantizers') IS NOT NULL",
           L->p->conf.collection);
  PGresult *r = PQexec(c, sql); /* the transaction's snapshot is taken here, after mark_end */
  rv_err_t err = check(c, r, PGRES_TUPLES_OK, "looking for the table", errstr, errstr_size);
  int exists = !err && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (err) return err;
  if (!exists)
    return rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "PostgreSQL has no table %s", L->p->conf.collection);
  int32_t version;
  void *params = NULL;
  size_t len = 0;
  err = read_quantizer(L->p, c, 0, &version, &params, &len, errstr, errstr_size);
  if (err == RV_ERR_NOT_FOUND) err = RV_OK; /* not trained yet (or float only): rows carry no code */
  else if (!err) err = rv_replica_load_quantizer(L->load, version, params, len, errstr, errstr_size);
  free(params);
  if (!err && !L->p->conf.fresh_log) err = load_positions(L, c, errstr, errstr_size);
  if (!err) err = copy_rows(L, c, errstr, errstr_size);
  return err;
}

rv_err_t rv_pgload_load(void *ctx, rv_replica_load_t *load, char *errstr, size_t errstr_size) {
  rv_pgload_t *p = ctx;
  int64_t t0 = rv_mono_ms();
  if (errstr_size) errstr[0] = 0;
  /* First, as the contract says: every change published before these end
   * offsets was committed before the transaction below begins. */
  rv_err_t err = rv_replica_load_mark_end(load, errstr, errstr_size);
  if (err) return err;
  PGconn *c = connect_db(p, errstr, errstr_size);
  if (!c) return RV_ERR_UNAVAILABLE;
  loader_t L = {.p = p, .load = load};
  err = exec_ok(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", errstr, errstr_size);
  if (!err) err = load_in_tx(&L, c, errstr, errstr_size);
  if (!err) err = exec_ok(c, "COMMIT", errstr, errstr_size);
  PQfinish(c); /* a failed transaction ends with the connection */
  if (L.skipped)
    rv_warn(LOG, "%s: %llu row(s) refused by the replica and skipped (first: %s)", p->conf.collection,
            (unsigned long long)L.skipped, L.first_skip);
  pthread_mutex_lock(&p->lock);
  p->stats.skipped += L.skipped;
  if (!err) {
    p->stats.loads++;
    p->stats.rows = L.rows;
    p->stats.last_load_ms = rv_mono_ms() - t0;
  }
  pthread_mutex_unlock(&p->lock);
  if (!err)
    rv_info(LOG, "%s: loaded %llu row(s) from PostgreSQL in %lld ms", p->conf.collection, (unsigned long long)L.rows,
            (long long)(rv_mono_ms() - t0));
  free(L.vec);
  free(L.id);
  free(L.meta);
  return err;
}
