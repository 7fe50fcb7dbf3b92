#ifndef RV_VALIDATE_H
#define RV_VALIDATE_H
/* The rules a decoded vector record must pass before ingest stores it, and
 * the reasons a record is rejected (the `rv.error.code` header of a DLQ
 * record). Pure functions: no I/O, any thread. */
#include <stddef.h>
#include <stdint.h>

#include "rv_record.h"

typedef enum {
  RV_REJECT_NONE = 0,           /* accepted */
  RV_REJECT_DECODE,             /* "decode_error": not Avro / JSON / a tombstone we understand */
  RV_REJECT_UNKNOWN_SCHEMA,     /* "unknown_schema_id": Confluent frame whose schema id is neither the
                                   collection's nor known to the schema registry */
  RV_REJECT_BAD_ID,             /* "bad_id": empty, too long, not UTF-8, or has a NUL */
  RV_REJECT_RESERVED_ID,        /* "reserved_id": starts with "__rv_", which the changelog keeps for its own
                                   records (position markers, RV_MARKER_KEY) */
  RV_REJECT_WRONG_DIM,          /* "wrong_dim": vector length != collection dim */
  RV_REJECT_NON_FINITE,         /* "non_finite": NaN or infinity in the vector */
  RV_REJECT_MISSING_VECTOR,     /* "missing_vector": UPSERT without a vector */
  RV_REJECT_BAD_METADATA,       /* "bad_metadata": not a JSON object */
  RV_REJECT_METADATA_TOO_LARGE, /* "metadata_too_large" */
  RV_REJECT_BAD_EVENT_TIME,     /* "bad_event_time": before 2000-01-01 or more than a day ahead */
  RV_REJECT_INCOMPATIBLE_SCHEMA, /* "incompatible_schema": the registry's writer schema for the frame's id
                                    does not resolve against vector_record.avsc */
  RV_REJECT_KEY_ID_MISMATCH,    /* "key_id_mismatch": the Kafka key is set and differs from the decoded id
                                   (rv_validate_key) */
  RV_REJECT_DB,                 /* "rejected_by_database": PostgreSQL refused the row itself (a constraint,
                                   a trigger, a data exception; rv.error.message holds its SQLSTATE and
                                   primary message); set by ingest after isolating the row, never here */
} rv_reject_t;

/* Ids starting with this are refused (RV_REJECT_RESERVED_ID): RV_MARKER_KEY is one. */
#define RV_RESERVED_ID_PREFIX "__rv_"

/* Number of rv_reject_t values (RV_REJECT_NONE included), for tables indexed by reason. */
#define RV_REJECT_COUNT (RV_REJECT_DB + 1)

/* Static snake_case code of r (e.g. "wrong_dim"); "ok" for RV_REJECT_NONE. */
const char *rv_reject_code(rv_reject_t r);

/* 2000-01-01T00:00:00Z in ms since the epoch: the earliest accepted event_time.
 * Why not 1970: a zero, or seconds mistaken for milliseconds (1.7e9 ms is
 * January 1970), are producer bugs, and such a record would create a partition
 * decades in the past. Why a day ahead: clock skew between producers is
 * seconds, time zones at most 14 h; more is a unit error (microseconds) or a
 * bad clock. */
#define RV_EVENT_TIME_MIN_MS INT64_C(946684800000)
/* How far ahead of now an event_time may be. */
#define RV_EVENT_TIME_MAX_AHEAD_MS INT64_C(86400000)

typedef struct rv_validate_rules {
  int dim;                /* required vector length */
  int max_metadata_bytes; /* limit on the metadata JSON text as received */
  int64_t now_ms;         /* wall clock the event_time bound is measured from */
} rv_validate_rules_t;

/* Returns 1 if s[0..len) is well-formed UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), 0 otherwise. */
int rv_utf8_valid(const void *s, size_t len);

/* Checks r against the rules. On RV_REJECT_NONE the record is also normalised:
 * metadata becomes compact JSON text produced by jansson (so PostgreSQL's
 * jsonb input accepts it), and a DELETE loses its vector (deletes keep the
 * stored one). On rejection r is unchanged and msg (if msg_size > 0) holds a
 * one-line explanation. */
rv_reject_t rv_validate_record(rv_vector_record_t *r, const rv_validate_rules_t *rules, char *msg,
                               size_t msg_size);

/* Cross-checks a source message's Kafka key with the id decoded from it.
 * The bytes compared: key[0..key_len) exactly as the message carries them
 * (no decoding, trimming or case folding) against the decoded id's bytes
 * (its UTF-8, as in r->id[0..r->id_len)); equal lengths and equal bytes
 * pass. No key (key NULL or key_len 0) passes: the id wins (such records
 * reach partitions by the producer's choice, so per-id order holds only if
 * the producer keeps an id on one partition itself). A tombstone's id is its
 * key, so it always passes. A key serialised in any other way than the id's
 * plain bytes (e.g. an Avro- or Confluent-framed key) is a mismatch.
 * Returns RV_REJECT_NONE, or RV_REJECT_KEY_ID_MISMATCH with a one-line
 * explanation in msg (if msg_size > 0). */
rv_reject_t rv_validate_key(const rv_vector_record_t *r, const void *key, size_t key_len, char *msg,
                            size_t msg_size);

#endif
