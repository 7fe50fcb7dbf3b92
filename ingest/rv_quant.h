#ifndef RV_QUANT_H
#define RV_QUANT_H
/* Ingest's side of quantization: the collection's SQ8 quantizer, optionally
 * its PQ quantizer, and the codes of every batch written with them.
 *
 * Where the SQ8 quantizer comes from, in order:
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
 * PQ (pq_m > 0: pq_m sub-quantizers of 256 centroids, rv_pq.h) comes from
 * rv_quantizers (collection, 'pq') or is trained from the first
 * pq_train = max(256, min(sq8_train, 65536)) vectors ingest sees (the SQ8
 * sample, grown to what k-means needs, capped where rv_pq_train would
 * subsample) and stored as version 1, insert-if-absent and read
 * back like SQ8. A stored PQ whose dim or m differs from the configuration is
 * refused (RV_ERR_CONFIG). The first batch is held for PQ as for SQ8: until
 * it holds pq_train vectors, PQ is found stored, or sq8_train_wait_ms has
 * passed. k-means cannot train from fewer than 256 vectors, so if the wait
 * ends with fewer, that batch and the next ones are written with pq_code
 * NULL (their SQ8 codes are there) while ingest keeps collecting the first
 * vectors it sees, across batches, and trains PQ from the batch at which it
 * has 256; rows written before are not re-coded, they keep pq_code NULL.
 * A collection that never sees 256 vectors has no PQ. Every row written once
 * PQ is loaded has its pq_code and pq_version.
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
  int pq_m;              /* PQ sub-quantizers (code bytes); 0 = no PQ; must divide dim */
} rv_quant_conf_t;

/* Copies conf (and the path); reads nothing yet. NULL with errstr set on bad
 * values (RV_ERR_CONFIG, e.g. a pq_m that does not divide dim). */
rv_quant_t *rv_quant_new(const rv_quant_conf_t *conf, char *errstr, size_t errstr_size);
void rv_quant_destroy(rv_quant_t *q); /* NULL does nothing */

/* 1 when b may be written now: b holds no upsert, b has been open
 * sq8_train_wait_ms, or for SQ8 and (when on) PQ each: it is loaded, given as
 * a file (SQ8), b holds enough vectors to train it from, it was found in
 * PostgreSQL (through w; looked up at most once per second, errors count as
 * "not yet"), or (PQ) a batch was already written without PQ codes.
 * 0: keep the batch open. */
int rv_quant_batch_ready(rv_quant_t *q, rv_pgwriter_t *w, const rv_batch_t *b);

/* Makes sure a quantizer is loaded (steps 1-3 above, through w's
 * connection, outside a transaction) and fills the SQ8 code of every upsert
 * row of b: row i's at b->sq8 + i * b->sq8_size, b->sq8_version, and
 * b->n_coded = b->n_rows (a batch of deletes only gets sq8_size 0).
 * With PQ on, adds b's vectors to the PQ sample, loads or trains PQ when it
 * can (see above) and fills the PQ codes the same way (b->pq, b->pq_size =
 * pq_m, b->pq_version); while there is no PQ, b->pq_size is 0 and the rows
 * are written with pq_code NULL. Calling it again for the same batch (a
 * retried write) does not add b's vectors to the sample twice.
 * RV_ERR_NOT_FOUND when no SQ8 is stored and b has too few vectors to train
 * from; RV_ERR_CONFIG when the parameter file is unusable or its dim is not
 * the collection's, or a stored quantizer does not fit the configuration;
 * PostgreSQL errors as rv_pgwriter's. */
rv_err_t rv_quant_encode_batch(rv_quant_t *q, rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size);

/* 1 when every quantizer the batches need is loaded: rv_quant_encode_batch
 * then uses no connection (w may be busy) and encodes a batch once, however
 * often it is called for it. */
int rv_quant_loaded(const rv_quant_t *q);

/* The loaded SQ8 quantizer's version, or 0 when none is loaded. */
int32_t rv_quant_version(const rv_quant_t *q);

/* The loaded PQ quantizer's version, or 0 when none is loaded (or PQ is off). */
int32_t rv_quant_pq_version(const rv_quant_t *q);

/* 1 while rv_quant_batch_ready may hold a batch with upserts open for
 * vectors to train from (a quantizer is missing and its hold has not ended),
 * so the caller should poll again soon rather than wait for messages. */
int rv_quant_holding(const rv_quant_t *q);

#endif
