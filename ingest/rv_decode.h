#ifndef RV_DECODE_H
#define RV_DECODE_H
/* Turns the key and value of one source message into a vector record,
 * whatever its framing:
 *   value NULL, key set   -> Kafka tombstone: DELETE of the key
 *   first byte 0x00       -> Confluent wire format: the collection's schema id
 *                            is vector_record.avsc itself; with a decoder that
 *                            has a schema registry, any other id is the writer
 *                            schema registered under it, resolved against
 *                            vector_record.avsc (Avro schema evolution)
 *   first byte '{'        -> JSON object {"id","op","vector","metadata","event_time"}
 *   anything else         -> plain Avro binary (schemas/vector_record.avsc)
 * Decoding does not validate (see rv_validate.h). Thread: the codec's. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"
#include "rv_record.h"
#include "rv_registry.h"
#include "rv_validate.h"

/* A decoder: the codec, the collection's schema id, and the writer schemas
 * fetched from a registry, resolved and cached per id. Thread: the codec's. */
typedef struct rv_decoder rv_decoder_t;

/* At most this many schema ids are cached; others are fetched every time. */
#define RV_DECODER_MAX_SCHEMAS 1024

/* codec and registry are borrowed and must outlive the decoder; registry NULL
 * means no lookups (only schema_id is accepted in Confluent frames). Returns
 * NULL with errstr set when out of memory. */
rv_decoder_t *rv_decoder_new(rv_codec_t *codec, uint32_t schema_id, rv_registry_t *registry, char *errstr,
                             size_t errstr_size);
/* NULL is a no-op. */
void rv_decoder_destroy(rv_decoder_t *d);

/* Decodes one message. Returns RV_OK when the message is decided: *reject is
 * RV_REJECT_NONE and out is filled (the caller closes it), or the reason it
 * is permanently bad (out empty, msg set): RV_REJECT_DECODE,
 * RV_REJECT_UNKNOWN_SCHEMA (the registry does not know the id),
 * RV_REJECT_INCOMPATIBLE_SCHEMA (its schema does not resolve). Returns a
 * retriable error (rv_err_is_retriable: the registry could not be reached or
 * answered 5xx) when nothing could be decided: out is empty, msg says why, and
 * the same message must be decoded again later, not dead-lettered. Ids whose
 * schema resolved, or was found incompatible, are cached: the registry is
 * asked once per id (ids it does not know are asked again each time). */
rv_err_t rv_decoder_decode(rv_decoder_t *d, const void *key, size_t key_len, const void *value, size_t value_len,
                           rv_vector_record_t *out, rv_reject_t *reject, char *msg, size_t msg_size);

/* Fetches from the registry so far (cache misses), for tests and metrics. */
uint64_t rv_decoder_fetches(const rv_decoder_t *d);

/* Decodes one message without a registry (as rv_decoder_decode with none).
 * value == NULL means a null value (tombstone). Returns RV_REJECT_NONE and
 * fills out (caller closes it), or RV_REJECT_DECODE / RV_REJECT_UNKNOWN_SCHEMA
 * with out left empty and msg set. */
rv_reject_t rv_decode_message(rv_codec_t *codec, uint32_t schema_id, const void *key, size_t key_len,
                              const void *value, size_t value_len, rv_vector_record_t *out, char *msg,
                              size_t msg_size);

/* Decodes the JSON convenience framing. "op" is "UPSERT" or "DELETE" (any
 * case, default UPSERT); "vector" an array of numbers or null; "metadata" a
 * string (kept as is), null, or any other JSON value (kept as compact text, so
 * a non-object is rejected later as bad_metadata); "event_time" integer ms or
 * null. A missing or non-string "id" decodes to an empty id
 * (rejected later as bad_id). Same contract as rv_decode_message. */
rv_reject_t rv_decode_json(const void *data, size_t len, rv_vector_record_t *out, char *msg, size_t msg_size);

#endif
