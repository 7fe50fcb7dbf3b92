#include "rv_outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_changelog.h"
#include "rv_pgschema.h"
#include "rv_pgutil.h"

/* The collection's advisory lock, as rv_pgschema takes it ("RV" + 1, hashtext(table)). */
#define LOCK_CLASS "1381367809"
#define COPY_CHUNK (1u << 20)

typedef struct rec {
  size_t key_off, key_len; /* in data */
  size_t val_off, val_len;
} rec_t;

typedef struct pair {
  int64_t batch_id;
  int32_t partition;
} pair_t;

typedef struct pairs {
  pair_t *v;
  size_t n, cap;
} pairs_t;

/* A publication handed to the producer, not confirmed yet. */
typedef struct sent {
  uint64_t mark;   /* the producer's mark after its records */
  size_t n_recs;
  pairs_t pairs;   /* its (batch, partition) rows, owned */
} sent_t;

struct rv_outbox {
  char table[RV_PGSCHEMA_NAME_MAX + 1];
  rv_buf_t data;  /* the current publication's bytes: the COPY payload when staged, keys and values when loaded */
  rec_t *recs;    /* the current publication's records, in publishing order */
  size_t n_recs, cap_recs;
  pairs_t cur;    /* (batch, partition) rows of the current publication */
  pairs_t staged; /* rows rv_outbox_stage_rows inserted, whose records rv_outbox_encode adds to the current
                     publication (until then the current one can still be sent) */
  pairs_t done;   /* confirmed, not deleted yet */
  sent_t *sent;   /* sent publications, oldest first */
  size_t n_sent, cap_sent;
  rv_buf_t text;  /* scratch for SQL and array literals */
  rv_buf_t text2;
  rv_buf_t text3;
  rv_buf_t text4;
  int ranges;     /* 1: stage ranges; 0: stage records */
  int unencoded;  /* rv_outbox_stage_rows staged ranges whose records rv_outbox_encode has not encoded yet */
};

rv_err_t rv_outbox_migrate(PGconn *c, const char *table, char *errstr, size_t errstr_size) {
  rv_err_t err = rv_pgschema_check_name(table, errstr, errstr_size);
  if (err) return err;
  char sql[2048];
  /* Records (codes-only collections) are written once and read at most once:
   * lz4, when the server has it, instead of the slow default pglz. */
  int lz4 = rv_pgschema_has_lz4(c);
  snprintf(sql, sizeof sql,
           "BEGIN;\n"
           "SELECT pg_advisory_xact_lock(" LOCK_CLASS ", hashtext('%1$s'));\n"
           "CREATE TABLE IF NOT EXISTS %1$s_outbox (\n"
           "  batch_id bigint NOT NULL,\n"
           "  seq int NOT NULL,\n"
           "  src_partition int NOT NULL,\n"
           "  key bytea,\n"
           "  value bytea%2$s,\n"
           "  from_offset bigint,\n"
           "  to_offset bigint,\n"
           "  written_at timestamptz,\n"
           "  extras bytea,\n"
           "  PRIMARY KEY (batch_id, seq));\n"
           "DO $rv$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '%1$s_outbox'::regclass "
           "AND attname = 'to_offset') THEN ALTER TABLE %1$s_outbox ALTER COLUMN key DROP NOT NULL, "
           "ALTER COLUMN value DROP NOT NULL, ADD COLUMN from_offset bigint, ADD COLUMN to_offset bigint, "
           "ADD COLUMN written_at timestamptz, ADD COLUMN extras bytea; END IF; END $rv$;\n"
           "CREATE SEQUENCE IF NOT EXISTS %1$s_outbox_batch;\n"
           "COMMIT;",
           table, lz4 ? " COMPRESSION lz4" : "");
  err = rv_pg_exec(c, sql, NULL, errstr, errstr_size);
  if (err && PQtransactionStatus(c) != PQTRANS_IDLE) PQclear(PQexec(c, "ROLLBACK"));
  return err;
}

rv_err_t rv_outbox_discard_all(PGconn *c, const char *table, long long *n_deleted, char *errstr,
                               size_t errstr_size) {
  *n_deleted = 0;
  rv_err_t err = rv_pgschema_check_name(table, errstr, errstr_size);
  if (err) return err;
  char sql[256];
  PGresult *r;
  snprintf(sql, sizeof sql, "SELECT to_regclass('%s_outbox') IS NOT NULL", table);
  if ((err = rv_pg_exec(c, sql, &r, errstr, errstr_size))) return err;
  int exists = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (!exists) return RV_OK;
  snprintf(sql, sizeof sql, "DELETE FROM %s_outbox", table);
  if ((err = rv_pg_exec(c, sql, &r, errstr, errstr_size))) return err;
  *n_deleted = atoll(PQcmdTuples(r));
  PQclear(r);
  return RV_OK;
}

rv_outbox_t *rv_outbox_new(const char *table, char *errstr, size_t errstr_size) {
  if (rv_pgschema_check_name(table, errstr, errstr_size)) return NULL;
  rv_outbox_t *o = calloc(1, sizeof *o);
  if (!o) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  snprintf(o->table, sizeof o->table, "%s", table);
  rv_buf_init(&o->data);
  rv_buf_init(&o->text);
  rv_buf_init(&o->text2);
  rv_buf_init(&o->text3);
  rv_buf_init(&o->text4);
  o->ranges = 1;
  return o;
}

void rv_outbox_destroy(rv_outbox_t *o) {
  if (!o) return;
  rv_buf_close(&o->data);
  rv_buf_close(&o->text);
  rv_buf_close(&o->text2);
  rv_buf_close(&o->text3);
  rv_buf_close(&o->text4);
  free(o->recs);
  free(o->cur.v);
  free(o->staged.v);
  free(o->done.v);
  rv_outbox_forget_sent(o);
  free(o->sent);
  free(o);
}

size_t rv_outbox_count(const rv_outbox_t *o) { return o->n_recs; }

void rv_outbox_set_ranges(rv_outbox_t *o, int on) { o->ranges = on != 0; }

static void clear_current(rv_outbox_t *o) {
  rv_buf_reset(&o->data);
  o->n_recs = 0;
  o->cur.n = 0;
}

void rv_outbox_clear(rv_outbox_t *o) {
  clear_current(o);
  o->unencoded = 0;
  o->staged.n = 0;
}

static rv_err_t add_rec(rv_outbox_t *o, rec_t r) {
  if (o->n_recs == o->cap_recs) {
    size_t cap = o->cap_recs ? o->cap_recs * 2 : 1024;
    rec_t *v = realloc(o->recs, cap * sizeof *v);
    if (!v) return RV_ERR_NOMEM;
    o->recs = v;
    o->cap_recs = cap;
  }
  o->recs[o->n_recs++] = r;
  return RV_OK;
}

/* Adds (batch_id, partition) unless present. */
static rv_err_t add_pair(pairs_t *s, int64_t batch_id, int32_t partition) {
  for (size_t i = s->n; i-- > 0;)
    if (s->v[i].batch_id == batch_id && s->v[i].partition == partition) return RV_OK;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    pair_t *v = realloc(s->v, cap * sizeof *v);
    if (!v) return RV_ERR_NOMEM;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = (pair_t){batch_id, partition};
  return RV_OK;
}

/* ---- staging, in the batch transaction ---- */

static rv_err_t next_batch_id(rv_outbox_t *o, PGconn *c, int64_t *id, char *errstr, size_t errstr_size) {
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT nextval('%s_outbox_batch')", o->table);
  PGresult *r;
  rv_err_t err = rv_pg_exec(c, sql, &r, errstr, errstr_size);
  if (err) return err;
  *id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return RV_OK;
}

/* Appends one COPY row to o->data and records where its key and value are. */
static rv_err_t put_row(rv_outbox_t *o, rv_codec_t *codec, const rv_batch_t *b, size_t i, int64_t batch_id,
                        char *errstr, size_t errstr_size) {
  rv_buf_t *d = &o->data;
  const rv_batch_row_t *row = &b->rows[i];
  rec_t r;
  if (rv_buf_put_be16(d, 5) || rv_buf_put_be32(d, 8) || rv_buf_put_be64(d, (uint64_t)batch_id) ||
      rv_buf_put_be32(d, 4) || rv_buf_put_be32(d, (uint32_t)i) || rv_buf_put_be32(d, 4) ||
      rv_buf_put_be32(d, (uint32_t)row->partition) || rv_buf_put_be32(d, (uint32_t)row->rec.id_len))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  r.key_off = d->len;
  r.key_len = row->rec.id_len;
  if (rv_buf_append(d, row->rec.id, row->rec.id_len) || rv_buf_put_be32(d, 0))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  size_t len_at = d->len - 4;
  r.val_off = d->len;
  rv_err_t err = rv_changelog_encode(codec, b, i, d, errstr, errstr_size);
  if (err) return err;
  r.val_len = d->len - r.val_off;
  uint8_t *p = d->base + len_at; /* the value's length, now known */
  p[0] = (uint8_t)(r.val_len >> 24), p[1] = (uint8_t)(r.val_len >> 16), p[2] = (uint8_t)(r.val_len >> 8);
  p[3] = (uint8_t)r.val_len;
  if (add_rec(o, r) || add_pair(&o->cur, batch_id, row->partition))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return RV_OK;
}

static rv_err_t copy_in(rv_outbox_t *o, PGconn *c, char *errstr, size_t errstr_size) {
  char sql[160];
  snprintf(sql, sizeof sql, "COPY %s_outbox (batch_id, seq, src_partition, key, value) FROM STDIN (FORMAT binary)",
           o->table);
  PGresult *r = PQexec(c, sql);
  rv_err_t err = rv_pg_check(c, r, "COPY outbox", errstr, errstr_size);
  PQclear(r);
  if (err) return err;
  int ok = 1;
  for (size_t off = 0; off < o->data.len && ok; off += COPY_CHUNK) {
    size_t n = o->data.len - off < COPY_CHUNK ? o->data.len - off : COPY_CHUNK;
    ok = PQputCopyData(c, (const char *)o->data.base + off, (int)n) == 1;
  }
  if (PQputCopyEnd(c, ok ? NULL : "client failed to send COPY data") != 1) ok = 0;
  while ((r = PQgetResult(c)) != NULL) {
    if (!err) err = rv_pg_check(c, r, "COPY outbox data", errstr, errstr_size);
    PQclear(r);
  }
  if (!err && !ok) err = rv_errf(rv_pg_classify(c, NULL), errstr, errstr_size, "COPY outbox: %s", PQerrorMessage(c));
  return err;
}

static rv_err_t stage_records(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                              size_t errstr_size) {
  static const char sig[11] = "PGCOPY\n\377\r\n\0";
  int64_t batch_id;
  rv_err_t err = next_batch_id(o, c, &batch_id, errstr, errstr_size);
  if (err) return err;
  if (rv_buf_append(&o->data, sig, sizeof sig) || rv_buf_put_be32(&o->data, 0) || rv_buf_put_be32(&o->data, 0))
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  for (size_t i = 0; i < b->n_rows && !err; i++) err = put_row(o, codec, b, i, batch_id, errstr, errstr_size);
  if (!err && rv_buf_put_be16(&o->data, UINT16_MAX)) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  if (!err) err = copy_in(o, c, errstr, errstr_size);
  return err;
}

static const char hexdig[] = "0123456789abcdef";

static rv_err_t put_hex(rv_buf_t *out, const uint8_t *p, size_t n) {
  if (rv_buf_reserve(out, n * 2)) return RV_ERR_NOMEM;
  for (size_t i = 0; i < n; i++) {
    out->base[out->len++] = (uint8_t)hexdig[p[i] >> 4];
    out->base[out->len++] = (uint8_t)hexdig[p[i] & 15];
  }
  return RV_OK;
}

/* The extras of one message: offset (8), flags (1: event time, 2:
 * traceparent), [event_time_ms (8)], [traceparent length (2), bytes]. */
#define EXTRA_EVENT_TIME 1
#define EXTRA_TRACEPARENT 2

static rv_err_t put_extra(rv_buf_t *x, const rv_batch_row_t *row) {
  const rv_vector_record_t *rec = &row->rec;
  size_t tp_len = row->traceparent ? strlen(row->traceparent) : 0;
  if (tp_len > UINT16_MAX) tp_len = 0;
  uint8_t flags = (uint8_t)((rec->has_event_time ? EXTRA_EVENT_TIME : 0) | (tp_len ? EXTRA_TRACEPARENT : 0));
  if (rv_buf_put_be64(x, (uint64_t)row->offset) || rv_buf_append(x, &flags, 1)) return RV_ERR_NOMEM;
  if ((flags & EXTRA_EVENT_TIME) && rv_buf_put_be64(x, (uint64_t)rec->event_time_ms)) return RV_ERR_NOMEM;
  if ((flags & EXTRA_TRACEPARENT) &&
      (rv_buf_put_be16(x, (uint16_t)tp_len) || rv_buf_append(x, row->traceparent, tp_len)))
    return RV_ERR_NOMEM;
  return RV_OK;
}

/* One outbox row per source partition of b: the offset range its rows came
 * from and their extras. The records are encoded in memory only, for the
 * publication after COMMIT. */
static rv_err_t encode_ranges(rv_outbox_t *o, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                              size_t errstr_size) {
  rv_buf_t *d = &o->data;
  for (size_t i = 0; i < b->n_rows; i++) {
    const rv_batch_row_t *row = &b->rows[i];
    rec_t r = {.key_off = d->len, .key_len = row->rec.id_len};
    if (rv_buf_append(d, row->rec.id, row->rec.id_len)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    r.val_off = d->len;
    rv_err_t err = rv_changelog_encode(codec, b, i, d, errstr, errstr_size);
    if (err) return err;
    r.val_len = d->len - r.val_off;
    if (add_rec(o, r)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  return RV_OK;
}

static rv_err_t stage_ranges(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, int encode,
                             pairs_t *into, char *errstr, size_t errstr_size) {
  if (encode) {
    rv_err_t err = encode_ranges(o, codec, b, errstr, errstr_size);
    if (err) return err;
  }
  /* {p,...} {from,...} {to,...} {extras hex or NULL,...}, one element per partition with rows. */
  rv_buf_t *ps = &o->text, *fs = &o->text2, *ts = &o->text3, *xs = &o->text4, x;
  rv_buf_init(&x);
  rv_buf_reset(ps), rv_buf_reset(fs), rv_buf_reset(ts), rv_buf_reset(xs);
  rv_err_t err = rv_buf_append(ps, "{", 1) || rv_buf_append(fs, "{", 1) || rv_buf_append(ts, "{", 1) ||
                 rv_buf_append(xs, "{", 1);
  size_t n_parts = 0;
  for (size_t k = 0; k < b->n_pos && !err; k++) {
    int32_t part = b->pos[k].partition;
    int64_t from = INT64_MAX;
    rv_buf_reset(&x);
    for (size_t i = 0; i < b->n_rows && !err; i++) {
      const rv_batch_row_t *row = &b->rows[i];
      if (row->partition != part) continue;
      if (row->offset < from) from = row->offset;
      if (row->rec.has_event_time || row->traceparent) err = put_extra(&x, row);
    }
    if (err || from == INT64_MAX) continue; /* no rows from this partition (all dead letters) */
    const char *sep = n_parts++ ? "," : "";
    err = rv_buf_appendf(ps, "%s%d", sep, (int)part) || rv_buf_appendf(fs, "%s%lld", sep, (long long)from) ||
          rv_buf_appendf(ts, "%s%lld", sep, (long long)b->pos[k].next_offset) || rv_buf_appendf(xs, "%s", sep);
    if (!err) err = x.len ? rv_buf_append(xs, "\"", 1) || put_hex(xs, x.base, x.len) || rv_buf_append(xs, "\"", 1)
                          : rv_buf_append(xs, "NULL", 4);
  }
  rv_buf_close(&x);
  if (!err) err = rv_buf_append(ps, "}", 2) || rv_buf_append(fs, "}", 2) || rv_buf_append(ts, "}", 2) ||
                  rv_buf_append(xs, "}", 2);
  if (err) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  if (!n_parts) return RV_OK;
  char sql[640];
  snprintf(sql, sizeof sql,
           "WITH b AS MATERIALIZED (SELECT nextval('%1$s_outbox_batch') AS id) "
           "INSERT INTO %1$s_outbox (batch_id, seq, src_partition, from_offset, to_offset, written_at, extras) "
           "SELECT b.id, u.ord::int, u.p, u.f, u.t, now(), decode(u.x, 'hex') FROM b, "
           "unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[]) WITH ORDINALITY AS u(p, f, t, x, ord) "
           "RETURNING batch_id, src_partition",
           o->table);
  const char *params[4] = {(const char *)ps->base, (const char *)fs->base, (const char *)ts->base,
                           (const char *)xs->base};
  PGresult *r = PQexecParams(c, sql, 4, NULL, params, NULL, NULL, 0);
  err = rv_pg_check(c, r, "outbox ranges", errstr, errstr_size);
  for (int i = 0; !err && i < PQntuples(r); i++)
    if (add_pair(into, strtoll(PQgetvalue(r, i, 0), NULL, 10), (int32_t)atoi(PQgetvalue(r, i, 1))))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  PQclear(r);
  return err;
}

/* Stages b as the current publication, replacing any earlier one. */
static rv_err_t stage(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                      size_t errstr_size) {
  rv_outbox_clear(o);
  if (!b->n_rows) return RV_OK;
  rv_err_t err = o->ranges ? stage_ranges(o, c, codec, b, 1, &o->cur, errstr, errstr_size)
                           : stage_records(o, c, codec, b, errstr, errstr_size);
  if (err) rv_outbox_clear(o);
  return err;
}

rv_err_t rv_outbox_stage(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                         size_t errstr_size) {
  return stage(o, c, codec, b, errstr, errstr_size);
}

int rv_outbox_stage_keeps_current(const rv_outbox_t *o) { return o->ranges; }

rv_err_t rv_outbox_stage_rows(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                              size_t errstr_size) {
  if (!o->ranges) return stage(o, c, codec, b, errstr, errstr_size);
  o->staged.n = 0;
  o->unencoded = 0;
  if (!b->n_rows) return RV_OK;
  rv_err_t err = stage_ranges(o, c, codec, b, 0, &o->staged, errstr, errstr_size);
  if (err) o->staged.n = 0;
  else o->unencoded = 1;
  return err;
}

rv_err_t rv_outbox_encode(rv_outbox_t *o, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                          size_t errstr_size) {
  if (!o->unencoded) return RV_OK;
  o->unencoded = 0;
  size_t data_len = o->data.len, n_recs = o->n_recs, n_pairs = o->cur.n;
  rv_err_t err = encode_ranges(o, codec, b, errstr, errstr_size);
  for (size_t i = 0; i < o->staged.n && !err; i++)
    if (add_pair(&o->cur, o->staged.v[i].batch_id, o->staged.v[i].partition))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  o->staged.n = 0;
  if (err) { /* this batch's records only: what was current before stays */
    o->data.len = data_len;
    o->n_recs = n_recs;
    o->cur.n = n_pairs;
  }
  return err;
}

/* ---- loading (drain) ---- */

static rv_err_t int_list(rv_buf_t *out, const int32_t *v, size_t n) {
  rv_buf_reset(out);
  rv_err_t err = rv_buf_append(out, "{", 1);
  for (size_t i = 0; i < n && !err; i++) err = rv_buf_appendf(out, "%s%d", i ? "," : "", (int)v[i]);
  return err ? err : rv_buf_append(out, "}", 2); /* with the NUL */
}

static uint64_t get_be(const char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | (uint8_t)p[i];
  return v;
}

typedef struct extra {
  int64_t offset;
  int has_event_time;
  int64_t event_time_ms;
  const char *tp; /* in the outbox result; not NUL-terminated */
  size_t tp_len;
} extra_t;

static int extra_cmp(const void *a, const void *b) {
  int64_t x = ((const extra_t *)a)->offset, y = ((const extra_t *)b)->offset;
  return x < y ? -1 : x > y;
}

/* Parses an extras blob into *out (sorted by offset; caller frees). */
static rv_err_t parse_extras(const char *p, size_t len, extra_t **out, size_t *n_out) {
  *out = NULL;
  *n_out = 0;
  size_t cap = 0, n = 0, at = 0;
  extra_t *v = NULL;
  while (at < len) {
    if (len - at < 9) goto corrupt;
    extra_t x = {.offset = (int64_t)get_be(p + at, 8)};
    uint8_t flags = (uint8_t)p[at + 8];
    at += 9;
    if (flags & EXTRA_EVENT_TIME) {
      if (len - at < 8) goto corrupt;
      x.has_event_time = 1;
      x.event_time_ms = (int64_t)get_be(p + at, 8);
      at += 8;
    }
    if (flags & EXTRA_TRACEPARENT) {
      if (len - at < 2) goto corrupt;
      x.tp_len = (size_t)get_be(p + at, 2);
      at += 2;
      if (len - at < x.tp_len) goto corrupt;
      x.tp = p + at;
      at += x.tp_len;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      extra_t *nv = realloc(v, cap * sizeof *nv);
      if (!nv) {
        free(v);
        return RV_ERR_NOMEM;
      }
      v = nv;
    }
    v[n++] = x;
  }
  if (n) qsort(v, n, sizeof *v, extra_cmp);
  *out = v;
  *n_out = n;
  return RV_OK;
corrupt:
  free(v);
  return RV_ERR_CORRUPT;
}

/* Appends the changes of one range row (the collection table's rows it
 * names, in source offset order) to the publication. */
static rv_err_t load_range(rv_outbox_t *o, PGconn *c, const PGresult *ob, int row,
                           char *errstr, size_t errstr_size) {
  int32_t part = (int32_t)get_be(PQgetvalue(ob, row, 1), 4);
  int64_t batch_id = (int64_t)get_be(PQgetvalue(ob, row, 0), 8);
  for (int k = 4; k <= 6; k++)
    if (PQgetisnull(ob, row, k) || PQgetlength(ob, row, k) != 8)
      return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "outbox batch %lld: neither a record nor a range",
                     (long long)batch_id);
  extra_t *ex = NULL;
  size_t n_ex = 0;
  rv_err_t err = parse_extras(PQgetvalue(ob, row, 7), (size_t)PQgetlength(ob, row, 7), &ex, &n_ex);
  if (err) return rv_errf(err, errstr, errstr_size, "outbox batch %lld: bad extras", (long long)batch_id);
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT id, deleted_at IS NOT NULL, vector, code, code_version, metadata::text, "
           "(extract(epoch FROM created_at) * 1000)::bigint, src_offset FROM %s "
           "WHERE src_partition = $1 AND src_offset >= $2 AND src_offset < $3 AND updated_at = $4 "
           "ORDER BY src_offset",
           o->table);
  const Oid types[4] = {23, 20, 20, 1184}; /* int4, int8, int8, timestamptz */
  const char *pv[4] = {PQgetvalue(ob, row, 1), PQgetvalue(ob, row, 4), PQgetvalue(ob, row, 5), PQgetvalue(ob, row, 6)};
  const int lens[4] = {4, 8, 8, 8}, fmts[4] = {1, 1, 1, 1};
  PGresult *r = PQexecParams(c, sql, 4, types, pv, lens, fmts, 1);
  err = rv_pg_check(c, r, "reading a range of the outbox", errstr, errstr_size);
  float *vec = NULL;
  size_t vec_cap = 0;
  for (int i = 0; !err && i < PQntuples(r); i++) {
    rv_change_t ch = {0};
    rec_t rec = {.key_off = o->data.len, .key_len = (size_t)PQgetlength(r, i, 0)};
    if (rv_buf_append(&o->data, PQgetvalue(r, i, 0), rec.key_len)) {
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
      break;
    }
    ch.id = PQgetvalue(r, i, 0); /* borrowed (NUL-terminated by libpq), like every field of ch */
    int deleted = PQgetvalue(r, i, 1)[0] != 0;
    ch.op = deleted ? RV_OP_DELETE : RV_OP_UPSERT;
    ch.src_partition = part;
    ch.src_offset = (int64_t)get_be(PQgetvalue(r, i, 7), 8);
    ch.created_at_ms = (int64_t)get_be(PQgetvalue(r, i, 6), 8);
    if (!deleted && !PQgetisnull(r, i, 2)) {
      size_t dim = (size_t)PQgetlength(r, i, 2) / 4;
      if (dim > vec_cap) {
        float *nv = realloc(vec, dim * sizeof *nv);
        if (!nv) {
          err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
          break;
        }
        vec = nv;
        vec_cap = dim;
      }
      const uint8_t *src = (const uint8_t *)PQgetvalue(r, i, 2);
      for (size_t k = 0; k < dim; k++) { /* stored little-endian, whatever the host */
        uint32_t u = (uint32_t)src[4 * k] | (uint32_t)src[4 * k + 1] << 8 | (uint32_t)src[4 * k + 2] << 16 |
                     (uint32_t)src[4 * k + 3] << 24;
        memcpy(&vec[k], &u, 4);
      }
      ch.vector = vec;
      ch.dim = (int)dim;
    }
    if (!deleted && !PQgetisnull(r, i, 3) && !PQgetisnull(r, i, 4) && PQgetlength(r, i, 4) == 4) {
      ch.sq8_code = (uint8_t *)PQgetvalue(r, i, 3);
      ch.sq8_len = PQgetlength(r, i, 3);
      ch.sq8_version = (int32_t)get_be(PQgetvalue(r, i, 4), 4);
    }
    if (!deleted && !PQgetisnull(r, i, 5)) ch.attributes = PQgetvalue(r, i, 5);
    extra_t key = {.offset = ch.src_offset};
    const extra_t *x = n_ex ? bsearch(&key, ex, n_ex, sizeof *ex, extra_cmp) : NULL;
    char tp[UINT16_MAX + 1];
    if (x) {
      ch.has_event_time = x->has_event_time;
      ch.event_time_ms = x->event_time_ms;
      if (x->tp) {
        memcpy(tp, x->tp, x->tp_len);
        tp[x->tp_len] = 0;
        ch.traceparent = tp;
      }
    }
    rec.val_off = o->data.len;
    err = rv_changelog_encode_change(&ch, &o->data, errstr, errstr_size);
    if (err) break;
    rec.val_len = o->data.len - rec.val_off;
    if (add_rec(o, rec)) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  PQclear(r);
  free(vec);
  free(ex);
  /* A range whose rows were all overwritten since holds no change: it is still deleted once confirmed. */
  if (!err && add_pair(&o->cur, batch_id, part)) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return err;
}

rv_err_t rv_outbox_load(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const int32_t *partitions, size_t n,
                        char *errstr, size_t errstr_size) {
  (void)codec; /* kept for encoders that need one; the change is encoded directly */
  rv_outbox_clear(o);
  if (!n) return RV_OK;
  if (int_list(&o->text2, partitions, n)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  char sql[320];
  snprintf(sql, sizeof sql,
           "SELECT batch_id, src_partition, key, value, from_offset, to_offset, written_at, extras FROM %s_outbox "
           "WHERE src_partition = ANY($1::int[]) ORDER BY batch_id, seq",
           o->table);
  const char *params[1] = {(const char *)o->text2.base};
  PGresult *r = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 1);
  rv_err_t err = rv_pg_check(c, r, "reading the outbox", errstr, errstr_size);
  for (int i = 0; !err && i < PQntuples(r); i++) {
    if (PQgetlength(r, i, 0) != 8 || PQgetlength(r, i, 1) != 4) {
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "outbox row %d: unexpected column sizes", i);
      break;
    }
    if (PQgetisnull(r, i, 2) || PQgetisnull(r, i, 3)) {
      err = load_range(o, c, r, i, errstr, errstr_size);
      continue;
    }
    int64_t batch_id = (int64_t)get_be(PQgetvalue(r, i, 0), 8);
    int32_t part = (int32_t)get_be(PQgetvalue(r, i, 1), 4);
    rec_t rec = {.key_off = o->data.len, .key_len = (size_t)PQgetlength(r, i, 2)};
    rec.val_off = rec.key_off + rec.key_len;
    rec.val_len = (size_t)PQgetlength(r, i, 3);
    if (rv_buf_append(&o->data, PQgetvalue(r, i, 2), rec.key_len) ||
        rv_buf_append(&o->data, PQgetvalue(r, i, 3), rec.val_len) || add_rec(o, rec) ||
        add_pair(&o->cur, batch_id, part))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  PQclear(r);
  if (err) rv_outbox_clear(o);
  return err;
}

/* ---- publishing ---- */

rv_err_t rv_outbox_send(rv_outbox_t *o, rv_producer_t *p, const char *topic, char *errstr, size_t errstr_size) {
  if (!o->n_recs && !o->cur.n) return RV_OK;
  if (o->n_sent == o->cap_sent) {
    size_t cap = o->cap_sent ? o->cap_sent * 2 : 8;
    sent_t *v = realloc(o->sent, cap * sizeof *v);
    if (!v) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    o->sent = v;
    o->cap_sent = cap;
  }
  for (size_t i = 0; i < o->n_recs; i++) {
    const rec_t *r = &o->recs[i];
    rv_err_t err = rv_producer_send(p, topic, o->data.base + r->key_off, r->key_len, o->data.base + r->val_off,
                                    r->val_len, NULL, 0, errstr, errstr_size);
    if (err) return err;
  }
  /* The pairs move to the sent publication; cur starts afresh (a staged batch stays staged). */
  o->sent[o->n_sent++] = (sent_t){rv_producer_mark(p), o->n_recs, o->cur};
  o->cur = (pairs_t){0};
  clear_current(o);
  return RV_OK;
}

size_t rv_outbox_unconfirmed(const rv_outbox_t *o) { return o->n_sent; }

uint64_t rv_outbox_mark(const rv_outbox_t *o, size_t i) { return i < o->n_sent ? o->sent[i].mark : 0; }

void rv_outbox_forget_sent(rv_outbox_t *o) {
  for (size_t i = 0; i < o->n_sent; i++) free(o->sent[i].pairs.v);
  o->n_sent = 0;
}

rv_err_t rv_outbox_forget(rv_outbox_t *o, PGconn *c, char *errstr, size_t errstr_size) {
  if (!o->done.n) return RV_OK;
  if (!c) return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "not connected");
  rv_buf_t *ids = &o->text, *parts = &o->text2;
  rv_buf_reset(ids);
  rv_buf_reset(parts);
  rv_err_t err = rv_buf_append(ids, "{", 1) || rv_buf_append(parts, "{", 1);
  for (size_t i = 0; i < o->done.n && !err; i++)
    err = rv_buf_appendf(ids, "%s%lld", i ? "," : "", (long long)o->done.v[i].batch_id) ||
          rv_buf_appendf(parts, "%s%d", i ? "," : "", (int)o->done.v[i].partition);
  if (!err) err = rv_buf_append(ids, "}", 2) || rv_buf_append(parts, "}", 2);
  if (err) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  char sql[256];
  snprintf(sql, sizeof sql,
           "DELETE FROM %s_outbox o USING unnest($1::bigint[], $2::int[]) AS d(b, p) "
           "WHERE o.batch_id = d.b AND o.src_partition = d.p",
           o->table);
  const char *params[2] = {(const char *)ids->base, (const char *)parts->base};
  PGresult *r = PQexecParams(c, sql, 2, NULL, params, NULL, NULL, 0);
  err = rv_pg_check(c, r, "deleting from the outbox", errstr, errstr_size);
  PQclear(r);
  if (!err) o->done.n = 0;
  return err;
}

rv_err_t rv_outbox_confirmed(rv_outbox_t *o, uint64_t confirmed, PGconn *c, size_t *n_recs, char *errstr,
                             size_t errstr_size) {
  rv_err_t err = RV_OK;
  size_t k = 0;
  *n_recs = 0;
  for (; k < o->n_sent && o->sent[k].mark <= confirmed; k++) {
    const pairs_t *ps = &o->sent[k].pairs;
    for (size_t i = 0; i < ps->n && !err; i++) err = add_pair(&o->done, ps->v[i].batch_id, ps->v[i].partition);
    *n_recs += o->sent[k].n_recs;
    free(ps->v);
  }
  if (k) memmove(o->sent, o->sent + k, (o->n_sent - k) * sizeof *o->sent);
  o->n_sent -= k;
  if (err) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory"); /* a drain publishes them again */
  if (!k) return RV_OK;
  return rv_outbox_forget(o, c, errstr, errstr_size);
}
