#ifndef RV_RECORD_H
#define RV_RECORD_H
/* The two records that cross Kafka, and their Avro codec (Avro-C generic values).
 *
 * A vector record (schemas/vector_record.avsc) is what producers publish to
 * <collection>.vectors; a change (schemas/changelog_record.avsc) is what ingest
 * publishes to <collection>.changelog after a commit and replicas apply. */
#include <stddef.h>
#include <stdint.h>

#include "rv_buf.h"
#include "rv_err.h"

typedef enum { RV_OP_UPSERT = 0, RV_OP_DELETE = 1 } rv_op_t;

typedef struct rv_vector_record {
  char *id;              /* NUL-terminated UTF-8, owned */
  size_t id_len;         /* bytes, without the NUL */
  rv_op_t op;
  float *vector;         /* owned; NULL when the record has none */
  int dim;               /* floats in vector; 0 when none */
  char *metadata;        /* JSON text, owned; NULL when none */
  int has_event_time;    /* 1 if event_time_ms is set */
  int64_t event_time_ms; /* milliseconds since the epoch */
} rv_vector_record_t;

typedef struct rv_change {
  char *id;              /* owned */
  rv_op_t op;
  int32_t src_partition; /* version: where ingest read the source record */
  int64_t src_offset;
  float *vector;         /* owned; NULL for deletes */
  int dim;
  uint8_t *sq8_code;     /* owned; NULL when ingest stored no SQ8 code */
  int sq8_len;
  int32_t sq8_version;   /* quantizer version the code was made with */
  char *attributes;      /* metadata JSON text, owned; may be NULL */
  int has_event_time;
  int64_t event_time_ms;
  int64_t created_at_ms; /* partition key the row is pinned to */
  char *traceparent;     /* W3C traceparent of the source, owned; may be NULL */
} rv_change_t;

/* A position marker (schemas/position_marker.avsc): ingest publishes one to
 * every changelog partition after each commit. On the changelog partition
 * that carries it, every change of each listed source partition with a source
 * offset below next_offset was published before it, so a replica that has
 * applied the marker has applied those changes (read-your-writes). Markers
 * carry key RV_MARKER_KEY and the Kafka header RV_KIND_HEADER = RV_KIND_POSITION,
 * which is how readers of the changelog tell them from changes. */
#define RV_MARKER_KEY "__rv_position__"
#define RV_KIND_HEADER "rv-kind"
#define RV_KIND_POSITION "position"

typedef struct rv_source_position {
  int32_t partition;   /* source topic partition */
  int64_t next_offset; /* every source record below this offset is committed and published */
} rv_source_position_t;

typedef struct rv_marker {
  rv_source_position_t *positions; /* owned */
  int n;
  int64_t committed_at_ms; /* wall clock of the COMMIT that made these positions durable */
} rv_marker_t;

void rv_marker_close(rv_marker_t *m); /* frees positions and zeroes m */

void rv_vector_record_init(rv_vector_record_t *r);
/* Frees what the record owns and re-initialises it. */
void rv_vector_record_close(rv_vector_record_t *r);
void rv_change_init(rv_change_t *c);
void rv_change_close(rv_change_t *c);

/* An encoder/decoder for both records. Not thread-safe: one per thread. */
typedef struct rv_codec rv_codec_t;

/* Returns NULL with errstr set if the embedded schemas fail to load. */
rv_codec_t *rv_codec_new(char *errstr, size_t errstr_size);
void rv_codec_destroy(rv_codec_t *c);

/* Appends the Avro binary encoding of r (no framing) to out.
 * Returns RV_ERR_INVALID if r cannot be encoded (e.g. id NULL); out is then unchanged. */
rv_err_t rv_codec_encode_vector(rv_codec_t *c, const rv_vector_record_t *r, rv_buf_t *out,
                                char *errstr, size_t errstr_size);

/* Decodes one plain Avro vector record that must span exactly len bytes,
 * written with schemas/vector_record.avsc (read directly, not through
 * Avro-C's generic values: see rv_record.c).
 * On success out owns fresh copies (call rv_vector_record_close on it); on
 * failure (RV_ERR_CORRUPT: truncated, trailing bytes, bad union or enum) out is
 * left initialised and empty. */
rv_err_t rv_codec_decode_vector(rv_codec_t *c, const void *data, size_t len, rv_vector_record_t *out,
                                char *errstr, size_t errstr_size);
/* The same through Avro-C's generic reader (slower): the reference the
 * direct reader above is tested against. */
rv_err_t rv_codec_decode_vector_avro(rv_codec_t *c, const void *data, size_t len, rv_vector_record_t *out,
                                     char *errstr, size_t errstr_size);

/* A writer schema (the schema a producer wrote a vector record with, e.g. as
 * registered in a Schema Registry) resolved against the vector record schema
 * this build reads (schemas/vector_record.avsc), by Avro's schema resolution
 * rules as Avro-C implements them (avro_resolved_writer_new): fields the
 * writer has and the reader does not are skipped; fields the reader has and
 * the writer does not take the reader's default (Avro-C cannot fill defaults,
 * so they are left out of the resolution and read as absent; every such field
 * of the reader schema defaults to null, or UPSERT for op); types are promoted
 * where Avro allows (int -> long, float -> double, T -> [null, T], ...).
 * Not thread-safe: one per thread, like the codec. */
typedef struct rv_vector_resolver rv_vector_resolver_t;

/* Parses writer_json[0..len) and resolves it. Returns RV_OK and *out (the
 * caller destroys it); RV_ERR_INVALID when the text is not an Avro schema or
 * is incompatible (not a record, lacks a reader field that has no default such
 * as id, a field whose type does not resolve, op symbols in another order),
 * with errstr saying which; RV_ERR_NOMEM. *out is NULL on failure. */
rv_err_t rv_vector_resolver_new(const char *writer_json, size_t len, rv_vector_resolver_t **out, char *errstr,
                                size_t errstr_size);
void rv_vector_resolver_destroy(rv_vector_resolver_t *r);

/* Decodes one vector record written with r's writer schema, spanning exactly
 * len bytes. Same contract as rv_codec_decode_vector; the same bounds check
 * runs first, against the writer schema. */
rv_err_t rv_vector_resolver_decode(rv_vector_resolver_t *r, const void *data, size_t len, rv_vector_record_t *out,
                                   char *errstr, size_t errstr_size);

rv_err_t rv_codec_encode_change(rv_codec_t *c, const rv_change_t *ch, rv_buf_t *out, char *errstr,
                                size_t errstr_size);
rv_err_t rv_codec_decode_change(rv_codec_t *c, const void *data, size_t len, rv_change_t *out,
                                char *errstr, size_t errstr_size);

/* Appends the Avro encoding of m (no framing) to out; out keeps its length on
 * failure. Decoding fills *out (the caller closes it); RV_ERR_CORRUPT on a
 * malformed record, *out then empty. */
rv_err_t rv_codec_encode_marker(rv_codec_t *c, const rv_marker_t *m, rv_buf_t *out, char *errstr,
                                size_t errstr_size);
rv_err_t rv_codec_decode_marker(rv_codec_t *c, const void *data, size_t len, rv_marker_t *out, char *errstr,
                                size_t errstr_size);

/* Confluent wire format: byte 0 = 0, then a 4-byte big-endian schema id, then Avro. */
#define RV_CONFLUENT_HEADER 5
/* Appends the 5-byte header to out. */
rv_err_t rv_confluent_put_header(rv_buf_t *out, uint32_t schema_id);
/* Returns 1 and sets *schema_id and *payload_off if data starts with a Confluent
 * header, 0 otherwise. A plain Avro vector record never starts with 0x00 (its id
 * is a non-empty string), so the two framings can be told apart. */
int rv_confluent_parse(const void *data, size_t len, uint32_t *schema_id, size_t *payload_off);

#endif
