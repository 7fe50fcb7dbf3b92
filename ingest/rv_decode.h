#ifndef RV_DECODE_H
#define RV_DECODE_H
/* Turns the key and value of one source message into a vector record,
 * whatever its framing:
 *   value NULL, key set   -> Kafka tombstone: DELETE of the key
 *   first byte 0x00       -> Confluent wire format (schema id must match)
 *   first byte '{'        -> JSON object {"id","op","vector","metadata","event_time"}
 *   anything else         -> plain Avro binary (schemas/vector_record.avsc)
 * Decoding does not validate (see rv_validate.h). Thread: the codec's. */
#include <stddef.h>
#include <stdint.h>

#include "rv_record.h"
#include "rv_validate.h"

/* Decodes one message. value == NULL means a null value (tombstone).
 * Returns RV_REJECT_NONE and fills out (caller closes it), or
 * RV_REJECT_DECODE / RV_REJECT_UNKNOWN_SCHEMA with out left empty and msg set. */
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
