#ifndef RV_QUANT_H
#define RV_QUANT_H
/* Ingest's side of quantization: the collection's SQ8 quantizer, and the
 * codes of every batch written with it.
 *
 * Where the quantizer comes from, in order:
 *   1. rv_quantizers in PostgreSQL (the latest version of (collection, 'sq8'));
 *   2. the parameter file given in the configuration (rv_sq8_serialize
 *      format), stored as version 1;
 *   3. training from the first sq8_train vectors ingest sees, stored as
 *      version 1.
 * Storing is insert-if-absent and then read back, so ingest processes that
 * race agree on the one stored first, whatever they trained.
 *
 * Before a quantizer exists, a batch that holds upserts is not written: it
 * stays open past batch_rows and batch_ms (rv_quant_batch_ready says so)
 * until it holds sq8_train vectors to train from, another process has
 * stored a quantizer (looked up at most once per second), or it has been
 * open sq8_train_wait_ms: then it trains from the vectors it holds (a small
 * collection must not wait forever; rv_quantizers.trained_on says how many).
 * Nothing is dropped or written without a code: the records wait in the
 * batch (and, until they are committed, in Kafka). A batch of deletes only
 * needs no quantizer.
 *
 * Thread: the ingest thread (one rv_quant_t per ingest). */
#include <stddef.h>
#include <stdint.h>

#include "rv_batch.h"
#include "rv_err.h"
#include "rv_pgwriter.h"

typedef struct rv_quant rv_quant_t;

typedef struct rv_quant_conf {
  int dim;               /* the collection's vector length */
  int sq8_train;         /* vectors the quantizer is trained from; 0 = 1000 */
  int sq8_train_wait_ms; /* longest a first batch waits for them; 0 = 5000 */
  const char *sq8_params; /* path of a serialized SQ8 parameter file, or NULL/"" to train */
} rv_quant_conf_t;

/* Copies conf (and the path); reads nothing yet. NULL with errstr set on bad
 * values. */
rv_quant_t *rv_quant_new(const rv_quant_conf_t *conf, char *errstr, size_t errstr_size);
void rv_quant_destroy(rv_quant_t *q); /* NULL does nothing */

/* 1 when b may be written now: a quantizer is loaded, b holds no upsert,
 * b holds enough vectors to train from, or one was found in PostgreSQL
 * (through w; looked up at most once per second, errors count as "not yet").
 * 0: keep the batch open. */
int rv_quant_batch_ready(rv_quant_t *q, rv_pgwriter_t *w, const rv_batch_t *b);

/* Makes sure a quantizer is loaded (steps 1-3 above, through w's
 * connection, outside a transaction) and fills the SQ8 code of every upsert
 * row of b: row i's at b->sq8 + i * b->sq8_size, b->sq8_version, and
 * b->n_coded = b->n_rows (a batch of deletes only gets sq8_size 0).
 * RV_ERR_NOT_FOUND when none is stored and b has too few vectors to train
 * from; RV_ERR_CONFIG when the parameter file is unusable or its dim is not
 * the collection's; PostgreSQL errors as rv_pgwriter's. */
rv_err_t rv_quant_encode_batch(rv_quant_t *q, rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size);

/* The loaded quantizer's version, or 0 when none is loaded. */
int32_t rv_quant_version(const rv_quant_t *q);

#endif
