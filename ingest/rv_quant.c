#include "rv_quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_log.h"
#include "rv_sq8.h"
#include "rv_time.h"

#define LOG "ingest"
#define DEFAULT_TRAIN 1000
#define DEFAULT_TRAIN_WAIT_MS 5000
#define LOOKUP_EVERY_MS 1000
#define PARAMS_FILE_MAX (64u << 20)

struct rv_quant {
  int dim;
  int train_n;
  int train_wait_ms;
  char *params_path;  /* NULL: train */
  rv_sq8_t *sq8;      /* NULL until loaded */
  int32_t version;    /* of sq8; 0 when none */
  int64_t looked_up;  /* monotonic ms of the last lookup in PostgreSQL */
  float *sample;      /* train_n * dim scratch */
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
  rv_quant_t *q = calloc(1, sizeof *q);
  if (!q) goto nomem;
  q->dim = conf->dim;
  q->train_n = conf->sq8_train ? conf->sq8_train : DEFAULT_TRAIN;
  q->train_wait_ms = conf->sq8_train_wait_ms > 0 ? conf->sq8_train_wait_ms : DEFAULT_TRAIN_WAIT_MS;
  if (conf->sq8_params && conf->sq8_params[0] && !(q->params_path = strdup(conf->sq8_params))) goto nomem;
  q->looked_up = INT64_MIN / 2;
  return q;
nomem:
  rv_quant_destroy(q);
  rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return NULL;
}

void rv_quant_destroy(rv_quant_t *q) {
  if (!q) return;
  rv_sq8_destroy(q->sq8);
  free(q->params_path);
  free(q->sample);
  free(q);
}

int32_t rv_quant_version(const rv_quant_t *q) { return q->sq8 ? q->version : 0; }

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

int rv_quant_batch_ready(rv_quant_t *q, rv_pgwriter_t *w, const rv_batch_t *b) {
  if (q->sq8 || q->params_path) return 1;
  size_t live = live_rows(b);
  if (live == 0 || live >= (size_t)q->train_n || waited(q, b)) return 1;
  if (rv_mono_ms() - q->looked_up < LOOKUP_EVERY_MS) return 0;
  char e[256];
  rv_err_t err = rv_pgwriter_connect(w, e, sizeof e);
  if (!err) err = lookup(q, w, e, sizeof e);
  if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w);
  return err == RV_OK;
}

rv_err_t rv_quant_encode_batch(rv_quant_t *q, rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size) {
  b->n_coded = 0;
  b->sq8_size = 0;
  if (!q->sq8 && live_rows(b) > 0) {
    rv_err_t err = lookup(q, w, errstr, errstr_size);
    if (err == RV_ERR_NOT_FOUND) err = create(q, w, b, errstr, errstr_size);
    if (err) return err;
  }
  if (!q->sq8) return RV_OK; /* deletes only */
  size_t d = (size_t)q->dim;
  if (b->cap_codes < b->n_rows || !b->sq8) {
    uint8_t *codes = realloc(b->sq8, (b->n_rows ? b->n_rows : 1) * d);
    if (!codes) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    b->sq8 = codes;
    b->cap_codes = b->n_rows;
  }
  b->sq8_size = d;
  b->sq8_version = q->version;
  for (size_t i = 0; i < b->n_rows; i++) {
    rv_batch_row_t *row = &b->rows[i];
    if (!is_live(row)) continue;
    if (row->rec.dim != q->dim)
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "row %s has dim %d, the quantizer %d", row->rec.id,
                     row->rec.dim, q->dim);
    rv_sq8_encode(q->sq8, row->rec.vector, b->sq8 + i * d);
  }
  b->n_coded = b->n_rows;
  return RV_OK;
}
