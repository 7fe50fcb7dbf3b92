#include "rv_quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_log.h"
#include "rv_pq.h"
#include "rv_sq8.h"
#include "rv_time.h"

#define LOG "ingest"
#define DEFAULT_TRAIN 1000
#define DEFAULT_TRAIN_WAIT_MS 5000
#define LOOKUP_EVERY_MS 1000
#define PARAMS_FILE_MAX (64u << 20)
#define PQ_SEED 0x5256505155414e54ull /* fixed: the same sample trains the same PQ in every process */
#define PQ_TRAIN_MAX 65536           /* rv_pq_train's default max_train: it would subsample a larger sample */

struct rv_quant {
  int dim;
  int train_n;
  int train_wait_ms;
  char *params_path;  /* NULL: train */
  rv_sq8_t *sq8;      /* NULL until loaded */
  int32_t version;    /* of sq8; 0 when none */
  int64_t looked_up;  /* monotonic ms of the last lookup in PostgreSQL */
  float *sample;      /* train_n * dim scratch */
  /* PQ; pq_m == 0: off, and nothing below is used. */
  int pq_m;
  int pq_train;          /* max(RV_PQ_KSUB, min(train_n, PQ_TRAIN_MAX)): the sample PQ waits for */
  rv_pq_t *pq;           /* NULL until loaded */
  int32_t pq_version;    /* of pq; 0 when none */
  int64_t pq_looked_up;  /* monotonic ms of the last PQ lookup while rows go without PQ codes */
  float *pq_sample;      /* pq_train * dim: the first vectors seen, across batches; freed once loaded */
  int pq_have;           /* vectors in pq_sample */
  int pq_kept;           /* of those, from batches before the latest one */
  int pq_key_set;        /* pq_key_* names the latest batch that added to pq_sample */
  int32_t pq_key_partition;
  int64_t pq_key_offset;
  int pq_unheld;         /* 1 once a batch went without PQ codes: batches are no longer held for PQ */
};

rv_quant_t *rv_quant_new(const rv_quant_conf_t *conf, char *errstr, size_t errstr_size) {
  if (conf->dim < 1 || conf->dim > 65536) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "dim %d is outside 1..65536", conf->dim);
    return NULL;
  }
  if (conf->sq8_train < 0 || conf->sq8_train > 1000000) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "sq8_train %d is outside 1..1000000", conf->sq8_train);
    return NULL;
  }
  if (conf->pq_m < 0 || (conf->pq_m > 0 && conf->dim % conf->pq_m)) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "pq_m %d does not divide dim %d (0 turns PQ off)", conf->pq_m,
            conf->dim);
    return NULL;
  }
  rv_quant_t *q = calloc(1, sizeof *q);
  if (!q) goto nomem;
  q->dim = conf->dim;
  q->train_n = conf->sq8_train ? conf->sq8_train : DEFAULT_TRAIN;
  q->train_wait_ms = conf->sq8_train_wait_ms > 0 ? conf->sq8_train_wait_ms : DEFAULT_TRAIN_WAIT_MS;
  if (conf->sq8_params && conf->sq8_params[0] && !(q->params_path = strdup(conf->sq8_params))) goto nomem;
  q->looked_up = INT64_MIN / 2;
  q->pq_m = conf->pq_m;
  q->pq_train = q->train_n < RV_PQ_KSUB ? RV_PQ_KSUB : q->train_n > PQ_TRAIN_MAX ? PQ_TRAIN_MAX : q->train_n;
  q->pq_looked_up = INT64_MIN / 2;
  return q;
nomem:
  rv_quant_destroy(q);
  rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return NULL;
}

void rv_quant_destroy(rv_quant_t *q) {
  if (!q) return;
  rv_sq8_destroy(q->sq8);
  rv_pq_destroy(q->pq);
  free(q->params_path);
  free(q->sample);
  free(q->pq_sample);
  free(q);
}

int32_t rv_quant_version(const rv_quant_t *q) { return q->sq8 ? q->version : 0; }

int32_t rv_quant_pq_version(const rv_quant_t *q) { return q->pq ? q->pq_version : 0; }

int rv_quant_holding(const rv_quant_t *q) {
  return (!q->sq8 && !q->params_path) || (q->pq_m && !q->pq && !q->pq_unheld);
}

static int is_live(const rv_batch_row_t *row) { return row->rec.op == RV_OP_UPSERT && row->rec.vector; }

/* The batch has waited long enough to train from fewer than train_n vectors. */
static int waited(const rv_quant_t *q, const rv_batch_t *b) {
  return b->opened_ms && rv_mono_ms() - b->opened_ms >= q->train_wait_ms;
}

static size_t live_rows(const rv_batch_t *b) {
  size_t n = 0;
  for (size_t i = 0; i < b->n_rows; i++) n += is_live(&b->rows[i]);
  return n;
}

/* Takes the parameters as stored (they may be another process's). */
static rv_err_t adopt(rv_quant_t *q, int32_t version, const rv_buf_t *params, char *errstr, size_t errstr_size) {
  rv_sq8_t *s = NULL;
  char why[256];
  rv_err_t err = rv_sq8_deserialize(params->base, params->len, &s, why, sizeof why);
  if (err) return rv_errf(err, errstr, errstr_size, "rv_quantizers sq8 version %d: %s", (int)version, why);
  if (rv_sq8_dim(s) != q->dim) {
    int d = rv_sq8_dim(s);
    rv_sq8_destroy(s);
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                   "rv_quantizers sq8 version %d has dim %d, the collection %d", (int)version, d, q->dim);
  }
  rv_sq8_destroy(q->sq8);
  q->sq8 = s;
  q->version = version;
  free(q->sample);
  q->sample = NULL;
  return RV_OK;
}

/* Step 1: what PostgreSQL holds. RV_ERR_NOT_FOUND when nothing. */
static rv_err_t lookup(rv_quant_t *q, rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  rv_buf_t params;
  rv_buf_init(&params);
  int32_t version = 0;
  q->looked_up = rv_mono_ms();
  rv_err_t err = rv_pgwriter_get_quantizer(w, "sq8", &version, &params, errstr, errstr_size);
  if (!err) err = adopt(q, version, &params, errstr, errstr_size);
  rv_buf_close(&params);
  if (!err) rv_info(LOG, "SQ8 quantizer version %d loaded from PostgreSQL", (int)version);
  return err;
}

static rv_err_t read_file(const char *path, rv_buf_t *out, char *errstr, size_t errstr_size) {
  FILE *f = fopen(path, "rb");
  if (!f) return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "cannot open SQ8 parameter file %s", path);
  char chunk[65536];
  size_t n;
  rv_err_t err = RV_OK;
  while (!err && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (out->len + n > PARAMS_FILE_MAX)
      err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "SQ8 parameter file %s is too large", path);
    else if (rv_buf_append(out, chunk, n))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  if (!err && ferror(f)) err = rv_errf(RV_ERR_IO, errstr, errstr_size, "reading %s failed", path);
  fclose(f);
  return err;
}

/* Steps 2 and 3: makes parameters, stores them if absent, adopts what is stored. */
static rv_err_t create(rv_quant_t *q, rv_pgwriter_t *w, const rv_batch_t *b, char *errstr, size_t errstr_size) {
  rv_buf_t mine, stored;
  rv_buf_init(&mine);
  rv_buf_init(&stored);
  uint8_t *ser = NULL;
  size_t ser_len = 0;
  int trained_on = 0;
  rv_sq8_t *s = NULL;
  rv_err_t err;
  if (q->params_path) {
    if (!(err = read_file(q->params_path, &mine, errstr, errstr_size))) {
      char why[256];
      if ((err = rv_sq8_deserialize(mine.base, mine.len, &s, why, sizeof why)))
        err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "SQ8 parameter file %s: %s", q->params_path, why);
      else if (rv_sq8_dim(s) != q->dim)
        err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "SQ8 parameter file %s has dim %d, the collection %d",
                      q->params_path, rv_sq8_dim(s), q->dim);
    }
    if (!err) {
      ser = mine.base;
      ser_len = mine.len;
    }
  } else {
    /* The first train_n vectors of the batch, in the order ingest first saw their ids. */
    size_t d = (size_t)q->dim;
    if (!q->sample && !(q->sample = malloc((size_t)q->train_n * d * sizeof *q->sample)))
      return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    for (size_t i = 0; i < b->n_rows && trained_on < q->train_n; i++)
      if (is_live(&b->rows[i])) memcpy(q->sample + (size_t)trained_on++ * d, b->rows[i].rec.vector, d * sizeof(float));
    if (trained_on < q->train_n && (trained_on == 0 || !waited(q, b)))
      return rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size,
                     "no SQ8 quantizer stored yet and %d of the %d vectors to train one", trained_on, q->train_n);
    err = rv_sq8_train(q->sample, (size_t)trained_on, q->dim, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT, &s, errstr,
                       errstr_size);
    if (!err && rv_sq8_serialize(s, &ser, &ser_len)) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  int32_t version = 0;
  if (!err)
    err = rv_pgwriter_put_quantizer(w, "sq8", 1, ser, ser_len, trained_on, &version, &stored, errstr, errstr_size);
  if (!err) {
    int same = stored.len == ser_len && !memcmp(stored.base, ser, ser_len);
    err = adopt(q, version, &stored, errstr, errstr_size);
    if (!err)
      rv_info(LOG, "SQ8 quantizer version %d %s (%s, %d vectors)", (int)version,
              same ? "stored" : "found stored by another ingest",
              q->params_path ? q->params_path : "trained on the first vectors", trained_on);
  }
  if (ser != mine.base) free(ser);
  rv_sq8_destroy(s);
  rv_buf_close(&mine);
  rv_buf_close(&stored);
  return err;
}

/* ---- PQ ---- */

/* Takes the PQ as stored (it may be another process's). */
static rv_err_t pq_adopt(rv_quant_t *q, int32_t version, const rv_buf_t *params, char *errstr, size_t errstr_size) {
  rv_pq_t *p = NULL;
  char why[256];
  rv_err_t err = rv_pq_deserialize(params->base, params->len, &p, why, sizeof why);
  if (err) return rv_errf(err, errstr, errstr_size, "rv_quantizers pq version %d: %s", (int)version, why);
  if (rv_pq_dim(p) != q->dim || rv_pq_m(p) != q->pq_m) {
    int d = rv_pq_dim(p), m = rv_pq_m(p);
    rv_pq_destroy(p);
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                   "rv_quantizers pq version %d has dim %d and m %d, the collection dim %d and pq_m %d", (int)version,
                   d, m, q->dim, q->pq_m);
  }
  rv_pq_destroy(q->pq);
  q->pq = p;
  q->pq_version = version;
  free(q->pq_sample);
  q->pq_sample = NULL;
  q->pq_have = q->pq_kept = 0;
  return RV_OK;
}

/* What PostgreSQL holds. RV_ERR_NOT_FOUND when nothing. */
static rv_err_t pq_lookup(rv_quant_t *q, rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  rv_buf_t params;
  rv_buf_init(&params);
  int32_t version = 0;
  q->pq_looked_up = rv_mono_ms();
  rv_err_t err = rv_pgwriter_get_quantizer(w, "pq", &version, &params, errstr, errstr_size);
  if (!err) err = pq_adopt(q, version, &params, errstr, errstr_size);
  rv_buf_close(&params);
  if (!err) rv_info(LOG, "PQ quantizer version %d (m %d) loaded from PostgreSQL", (int)version, q->pq_m);
  return err;
}

/* b is the batch that last added to the sample: a write being retried (or the
 * same records read again after a dropped batch). Rows do not move within a
 * batch, and a later batch starts at another record. */
static int pq_same_batch(const rv_quant_t *q, const rv_batch_t *b) {
  return q->pq_key_set && b->n_rows && b->rows[0].partition == q->pq_key_partition &&
         b->rows[0].offset == q->pq_key_offset;
}

/* The vectors the sample would hold once b's are added. */
static int pq_available(const rv_quant_t *q, const rv_batch_t *b) {
  size_t n = (size_t)(pq_same_batch(q, b) ? q->pq_kept : q->pq_have) + live_rows(b);
  return n < (size_t)q->pq_train ? (int)n : q->pq_train;
}

/* Adds b's vectors to the sample, up to pq_train; b's replace what b added
 * before, so a retried write does not count them twice. */
static rv_err_t pq_collect(rv_quant_t *q, const rv_batch_t *b, char *errstr, size_t errstr_size) {
  if (!b->n_rows) return RV_OK;
  size_t d = (size_t)q->dim;
  if (!q->pq_sample && !(q->pq_sample = malloc((size_t)q->pq_train * d * sizeof *q->pq_sample)))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  if (!pq_same_batch(q, b)) {
    q->pq_kept = q->pq_have;
    q->pq_key_set = 1;
    q->pq_key_partition = b->rows[0].partition;
    q->pq_key_offset = b->rows[0].offset;
  }
  q->pq_have = q->pq_kept;
  for (size_t i = 0; i < b->n_rows && q->pq_have < q->pq_train; i++)
    if (is_live(&b->rows[i]) && b->rows[i].rec.dim == q->dim)
      memcpy(q->pq_sample + (size_t)q->pq_have++ * d, b->rows[i].rec.vector, d * sizeof(float));
  return RV_OK;
}

/* Trains PQ from the sample, stores it if absent, adopts what is stored. */
static rv_err_t pq_create(rv_quant_t *q, rv_pgwriter_t *w, char *errstr, size_t errstr_size) {
  rv_pq_params_t params = {.m = q->pq_m, .iters = 0, .seed = PQ_SEED, .max_train = 0};
  rv_pq_t *p = NULL;
  uint8_t *ser = NULL;
  size_t ser_len = 0;
  rv_buf_t stored;
  rv_buf_init(&stored);
  int32_t version = 0;
  int trained_on = q->pq_have;
  int64_t started = rv_mono_ms();
  rv_err_t err = rv_pq_train(q->pq_sample, (size_t)trained_on, q->dim, &params, &p, errstr, errstr_size);
  if (!err && rv_pq_serialize(p, &ser, &ser_len)) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  if (!err)
    err = rv_pgwriter_put_quantizer(w, "pq", 1, ser, ser_len, trained_on, &version, &stored, errstr, errstr_size);
  if (!err) {
    int same = stored.len == ser_len && !memcmp(stored.base, ser, ser_len);
    err = pq_adopt(q, version, &stored, errstr, errstr_size);
    if (!err)
      rv_info(LOG, "PQ quantizer version %d (m %d) %s (trained on the first %d vectors in %lld ms)", (int)version,
              q->pq_m, same ? "stored" : "found stored by another ingest", trained_on,
              (long long)(rv_mono_ms() - started));
  }
  free(ser);
  rv_pq_destroy(p);
  rv_buf_close(&stored);
  return err;
}

/* Loads PQ, or trains it once the sample allows (rv_quant.h). RV_OK with
 * q->pq still NULL: b goes without PQ codes. */
static rv_err_t pq_make(rv_quant_t *q, rv_pgwriter_t *w, const rv_batch_t *b, char *errstr, size_t errstr_size) {
  rv_err_t err = pq_collect(q, b, errstr, errstr_size);
  if (err) return err;
  int enough = q->pq_have >= q->pq_train || (q->pq_have >= RV_PQ_KSUB && (q->pq_unheld || waited(q, b)));
  if (enough || rv_mono_ms() - q->pq_looked_up >= LOOKUP_EVERY_MS) {
    err = pq_lookup(q, w, errstr, errstr_size);
    if (err == RV_ERR_NOT_FOUND && enough) err = pq_create(q, w, errstr, errstr_size);
    if (err && err != RV_ERR_NOT_FOUND) return err;
  }
  if (!q->pq && !q->pq_unheld) {
    q->pq_unheld = 1;
    rv_warn(LOG, "no PQ quantizer yet (%d of the %d vectors to train one; at least %d after the wait): rows are "
            "written with pq_code NULL until it is trained",
            q->pq_have, q->pq_train, RV_PQ_KSUB);
  }
  return RV_OK;
}

/* Makes room for the codes of b's rows. cap_codes counts rows of both sq8
 * and pq; pq is NULL or as long, so a grown sq8 without pq drops pq. */
static rv_err_t reserve_codes(rv_batch_t *b, size_t sq8_size, size_t pq_size, char *errstr, size_t errstr_size) {
  size_t rows = b->n_rows ? b->n_rows : 1;
  if (b->cap_codes >= rows && b->sq8 && (!pq_size || b->pq)) return RV_OK;
  if (rows < b->cap_codes) rows = b->cap_codes;
  uint8_t *codes = realloc(b->sq8, rows * sq8_size);
  if (!codes) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  b->sq8 = codes;
  if (pq_size) {
    if (!(codes = realloc(b->pq, rows * pq_size))) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    b->pq = codes;
  } else {
    free(b->pq);
    b->pq = NULL;
  }
  b->cap_codes = rows;
  return RV_OK;
}

int rv_quant_batch_ready(rv_quant_t *q, rv_pgwriter_t *w, const rv_batch_t *b) {
  size_t live = live_rows(b);
  if (live == 0 || waited(q, b)) return 1;
  int need_sq8 = !q->sq8 && !q->params_path && live < (size_t)q->train_n;
  int need_pq = q->pq_m && !q->pq && !q->pq_unheld && pq_available(q, b) < q->pq_train;
  if (!need_sq8 && !need_pq) return 1;
  if (rv_mono_ms() - q->looked_up < LOOKUP_EVERY_MS) return 0;
  q->looked_up = rv_mono_ms();
  char e[256];
  rv_err_t err = rv_pgwriter_connect(w, e, sizeof e);
  if (!err && need_sq8) need_sq8 = (err = lookup(q, w, e, sizeof e)) != RV_OK;
  if ((!err || err == RV_ERR_NOT_FOUND) && need_pq) {
    rv_err_t pq_err = pq_lookup(q, w, e, sizeof e);
    need_pq = pq_err != RV_OK;
    if (pq_err != RV_ERR_NOT_FOUND) err = pq_err;
  }
  if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w);
  return !need_sq8 && !need_pq;
}

int rv_quant_loaded(const rv_quant_t *q) { return q->sq8 && (!q->pq_m || q->pq); }

rv_err_t rv_quant_encode_batch(rv_quant_t *q, rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size) {
  /* Already encoded with the loaded quantizers (ahead of time, while the batch before it was being written). */
  if (b->n_rows && b->n_coded == b->n_rows && rv_quant_loaded(q) && b->sq8_size == (size_t)q->dim &&
      b->sq8_version == q->version && b->pq_size == (q->pq ? (size_t)q->pq_m : 0) &&
      (!q->pq || b->pq_version == q->pq_version))
    return RV_OK;
  b->n_coded = 0;
  b->sq8_size = 0;
  b->pq_size = 0;
  int live = live_rows(b) > 0;
  rv_err_t err;
  if (!q->sq8 && live) {
    err = lookup(q, w, errstr, errstr_size);
    if (err == RV_ERR_NOT_FOUND) err = create(q, w, b, errstr, errstr_size);
    if (err) return err;
  }
  if (q->pq_m && !q->pq && live && (err = pq_make(q, w, b, errstr, errstr_size))) return err;
  if (!q->sq8) return RV_OK; /* deletes only */
  size_t d = (size_t)q->dim, m = q->pq ? (size_t)q->pq_m : 0;
  if ((err = reserve_codes(b, d, m, errstr, errstr_size))) return err;
  b->sq8_size = d;
  b->sq8_version = q->version;
  b->pq_size = m;
  b->pq_version = q->pq ? q->pq_version : 0;
  for (size_t i = 0; i < b->n_rows; i++) {
    rv_batch_row_t *row = &b->rows[i];
    if (!is_live(row)) continue;
    if (row->rec.dim != q->dim)
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "row %s has dim %d, the quantizer %d", row->rec.id,
                     row->rec.dim, q->dim);
    rv_sq8_encode(q->sq8, row->rec.vector, b->sq8 + i * d);
    if (m) rv_pq_encode(q->pq, row->rec.vector, b->pq + i * m);
  }
  b->n_coded = b->n_rows;
  return RV_OK;
}
