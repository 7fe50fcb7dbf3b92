#ifndef RV_CHANGELOG_H
#define RV_CHANGELOG_H
/* Publishing a written batch to <collection>.changelog: one change per id
 * (its latest record in the batch), key = id, value = the plain Avro
 * encoding of schemas/changelog_record.avsc (no Confluent header), version =
 * (source partition, source offset). Thread: the producer's and codec's. */
#include <stddef.h>

#include "rv_batch.h"
#include "rv_buf.h"
#include "rv_err.h"
#include "rv_producer.h"
#include "rv_record.h"

/* Queues the change of every row of b (rows must carry created_at_ms).
 * scratch is a reusable buffer. Confirm with rv_producer_confirm. */
rv_err_t rv_changelog_send(rv_producer_t *p, rv_codec_t *codec, const char *topic, const rv_batch_t *b,
                           rv_buf_t *scratch, char *errstr, size_t errstr_size);

#endif
