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
} rv_reject_t;

/* Ids starting with this are refused (RV_REJECT_RESERVED_ID): RV_MARKER_KEY is one. */
#define RV_RESERVED_ID_PREFIX "__rv_"

/* Number of rv_reject_t values (RV_REJECT_NONE included), for tables indexed by reason. */
#define RV_REJECT_COUNT (RV_REJECT_INCOMPATIBLE_SCHEMA + 1)

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

#endif
