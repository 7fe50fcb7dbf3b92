#ifndef RV_PROTOCOL_H
#define RV_PROTOCOL_H
/* The rv.v1 message codec (schemas/protocol.md): parses one JSON text message
 * into a request and formats replies as JSON text. Pure (no I/O, no shared
 * state), so any thread may call any function here. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_filter.h"
#include "rv_flat.h"

#define RV_PROTO_K_DEFAULT 10
#define RV_PROTO_K_MAX 1000
#define RV_PROTO_EF_MAX 10000
#define RV_PROTO_DIM_MAX 65536 /* the largest collection dim */
#define RV_PROTO_ID_MAX 256    /* bytes of a request id's JSON text */

/* The error codes of `error` replies. RV_PROTO_OK is not one: it means success. */
typedef enum rv_proto_code {
  RV_PROTO_OK = 0,
  RV_PROTO_BAD_REQUEST,
  RV_PROTO_UNKNOWN_COLLECTION,
  RV_PROTO_UNKNOWN_REGION,
  RV_PROTO_WRONG_DIM,
  RV_PROTO_UNSUPPORTED,
  RV_PROTO_OVERLOADED,
  RV_PROTO_INTERNAL,
  RV_PROTO_BAD_FILTER,
  RV_PROTO_NOT_YET_VISIBLE, /* "after" not reached within the server's after_timeout_ms */
} rv_proto_code_t;

/* The code named name ("bad_filter", ...), or RV_PROTO_INTERNAL when unknown
 * (e.g. an error relayed from a remote shard). */
rv_proto_code_t rv_proto_code_parse(const char *name);

/* The wire name of a code ("bad_request", ...); "ok" for RV_PROTO_OK. Static. */
const char *rv_proto_code_name(rv_proto_code_t code);

typedef enum rv_request_type { RV_REQ_SEARCH = 1, RV_REQ_PING = 2 } rv_request_type_t;

/* One clause of a search's "filter" (schemas/protocol.md, "Filters"), as
 * written: field names and value types are checked against a collection's
 * declared fields only by rv_request_filter_build. */
typedef enum rv_filter_op { RV_FOP_EQ = 1, RV_FOP_IN = 2, RV_FOP_RANGE = 3 } rv_filter_op_t;

typedef struct rv_filter_value {
  char *string;  /* owned; NULL when the value is a number */
  double number; /* when string is NULL; finite */
} rv_filter_value_t;

typedef struct rv_filter_clause {
  char field[RV_NAME_MAX];
  rv_filter_op_t op;
  rv_filter_value_t *values; /* owned; EQ: 1, IN: 1..RV_FILTER_MAX_VALUES */
  int n_values;
  rv_bound_t lo_kind, hi_kind; /* RANGE: gt/gte and lt/lte (OPEN when not given) */
  double lo, hi;
} rv_filter_clause_t;

typedef struct rv_request {
  rv_request_type_t type;
  char *id_json;                 /* the client's id re-encoded as compact JSON (a string or a
                                    number), owned; NULL if the message had no usable id */
  char collection[RV_NAME_MAX];  /* search: collection name */
  char region[RV_NAME_MAX];      /* search: region name; "" = the collection's first replica */
  float *vector;                 /* search: owned, dim floats, all finite */
  int dim;
  int k;                         /* search: 1..RV_PROTO_K_MAX, default RV_PROTO_K_DEFAULT */
  int ef;                        /* search: 1..RV_PROTO_EF_MAX, or 0 when not given */
  rv_filter_clause_t *filter;    /* search: owned, a conjunction; NULL when no (or an empty) filter */
  int n_filter;
  char *filter_key;              /* search: the filter as canonical JSON (keys sorted), owned; NULL when
                                    none. Part of the cache key */
  int has_after;                 /* search: 1 when "after" was given (read-your-writes) */
  int32_t after_partition;       /* search: source partition, 0..INT32_MAX */
  int64_t after_offset;          /* search: source offset, >= 0: answer once it is applied */
} rv_request_t;

void rv_request_init(rv_request_t *r);
/* Frees what r owns and re-initialises it. */
void rv_request_close(rv_request_t *r);

/* Parses one text message of len bytes (it need not be NUL-terminated).
 * Returns RV_PROTO_OK and fills out (initialised by the caller) on success.
 * On failure returns the error code to reply with (BAD_REQUEST for invalid
 * JSON or fields, BAD_FILTER for a malformed "filter", UNSUPPORTED for an
 * unknown type), writes a human-readable
 * reason into msg, and leaves out empty except for out->id_json, which is set
 * whenever the message carried a usable id so the error reply can echo it. */
rv_proto_code_t rv_request_parse(const char *text, size_t len, rv_request_t *out, char *msg,
                                 size_t msg_size);

/* The search r as a request to forward to a shard: compact JSON text with
 * every field but "id" and "region" ({"type":"search","collection":..,
 * "vector":[..],"k":..,"ef"?:..,"filter"?:..,"after"?:{..}}), the vector
 * written to round-trip float32 exactly and the filter as its canonical
 * text. The caller adds the id. NULL when memory runs out; free it. */
char *rv_request_search_json(const rv_request_t *r, size_t *len);

/* Adds r's filter clauses to f, an empty filter over the collection's
 * declared fields (the same fields and order as f was made for: e.g.
 * rv_replica_filter_new and rv_replica_collection(..)->fields). Types:
 * keyword fields take strings, and integers as their decimal text (the
 * replica indexes integer metadata values of keyword fields that way), with
 * equality or "in"; number fields take numbers, with equality or ranges.
 * Returns RV_PROTO_OK, or RV_PROTO_BAD_FILTER with the reason in msg for an
 * unknown field or a value or operator of the wrong type (f then holds part
 * of the clauses: destroy it), RV_PROTO_INTERNAL when memory runs out. */
rv_proto_code_t rv_request_filter_build(const rv_request_t *r, const rv_field_conf_t *fields, int n_fields,
                                        rv_filter_t *f, char *msg, size_t msg_size);

/* The formatters return malloc'd, NUL-terminated compact JSON text and its
 * length in *len, or NULL when memory runs out. id_json NULL is written as
 * null. The caller frees the text. */

/* {"type":"error","id":..,"code":..,"message":..} */
char *rv_reply_error(const char *id_json, rv_proto_code_t code, const char *message, size_t *len);

/* As rv_reply_error with one more member: {...,"message":..,<extra_member>}
 * where extra_member is JSON member text such as "positions":{"0":12}
 * (copied verbatim; NULL or "" adds nothing). */
char *rv_reply_error_extra(const char *id_json, rv_proto_code_t code, const char *message,
                           const char *extra_member, size_t *len);

/* {"type":"pong","id":..,"timestamp":ts_ms} */
char *rv_reply_pong(const char *id_json, int64_t ts_ms, size_t *len);

/* The "hits" array of a results reply: [{"id":..,"score":..,"metadata":..}, ...]
 * in list order. Stored metadata that parses as JSON is embedded as that value;
 * other metadata is embedded as a string; NULL metadata is left out. Strings
 * that are not valid UTF-8 have the bad bytes replaced by U+FFFD. This is the
 * text the caches keep. */
char *rv_hits_json(const rv_hit_list_t *hits, size_t *len);

/* {"type":"results","id":..,"hits":<hits_json>,"took_us":..,"cached":..,"as_of":..}
 * hits_json must be the output of rv_hits_json (it is copied verbatim). */
char *rv_reply_results(const char *id_json, const char *hits_json, size_t hits_len, int64_t took_us,
                       int cached, uint64_t as_of, size_t *len);

#endif
