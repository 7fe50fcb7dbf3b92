#ifndef RV_CHANGELOG_H
#define RV_CHANGELOG_H
/* The change a written batch row makes, as published to <collection>.changelog:
 * key = id, value = the plain Avro encoding of schemas/changelog_record.avsc
 * (no Confluent header), version = (source partition, source offset). Ingest
 * does not send these directly: they go through the transactional outbox
 * (rv_outbox.h), written in the batch's PostgreSQL transaction and published
 * after its COMMIT. Thread: the codec's. */
#include <stddef.h>

#include "rv_batch.h"
#include "rv_buf.h"
#include "rv_err.h"
#include "rv_record.h"

/* Appends the encoded change of b->rows[i] (which must carry created_at_ms)
 * to out, with the row's SQ8 code when the batch has codes. A delete carries
 * no vector, code or attributes. On failure out keeps its length
 * (RV_ERR_INVALID: not encodable; RV_ERR_NOMEM). */
rv_err_t rv_changelog_encode(rv_codec_t *codec, const rv_batch_t *b, size_t i, rv_buf_t *out, char *errstr,
                             size_t errstr_size);

/* Appends the plain Avro encoding of ch to out: the same bytes as
 * rv_codec_encode_change, written directly (Avro-C's generic values cost
 * more than the rest of the ingest client for 784-dim vectors). On failure
 * out keeps its length (RV_ERR_INVALID: no id; RV_ERR_NOMEM). */
rv_err_t rv_changelog_encode_change(const rv_change_t *ch, rv_buf_t *out, char *errstr, size_t errstr_size);

#endif
