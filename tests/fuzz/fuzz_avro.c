/* Fuzzes the Avro codec of common/rv_record.h: the input is decoded both as a
 * vector record (by the direct reader and by Avro-C's, which must agree) and
 * as a change and as a position marker (plainly, and after a Confluent header if it
 * has one). Whatever decodes must survive encode -> decode unchanged, and
 * re-encoding must give the same bytes; whatever fails must leave the record
 * empty, as the header promises. */
#include <string.h>

#include "fuzz.h"
#include "rv_record.h"

/* libFuzzer gives a target no context, so the codec (not thread-safe, and
 * this is one thread) lives for the process. It stays reachable, so
 * LeakSanitizer does not count it. */
static rv_codec_t *codec(void) {
  static rv_codec_t *c;
  if (!c) {
    char err[256];
    c = rv_codec_new(err, sizeof err);
    FUZZ_CHECK(c != NULL, "rv_codec_new: %s", err);
  }
  return c;
}

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

/* Compares floats bit for bit, so NaN payloads and -0 must survive too. */
static int same_floats(const float *a, const float *b, int n) {
  return (!a && !b) || (a && b && (n == 0 || !memcmp(a, b, (size_t)n * sizeof *a)));
}

static int vector_empty(const rv_vector_record_t *r) {
  return !r->id && !r->id_len && !r->vector && !r->dim && !r->metadata && !r->has_event_time &&
         !r->event_time_ms && r->op == RV_OP_UPSERT;
}

static void check_same_vector(const rv_vector_record_t *a, const rv_vector_record_t *b) {
  FUZZ_CHECK(a->id_len == b->id_len && !memcmp(a->id, b->id, a->id_len + 1), "id \"%s\" (%zu) vs \"%s\" (%zu)",
             a->id, a->id_len, b->id, b->id_len);
  FUZZ_CHECK(a->op == b->op, "op %d vs %d", (int)a->op, (int)b->op);
  FUZZ_CHECK(a->dim == b->dim, "dim %d vs %d", a->dim, b->dim);
  FUZZ_CHECK(same_floats(a->vector, b->vector, a->dim), "vector %p vs %p differ", (void *)a->vector,
             (void *)b->vector);
  FUZZ_CHECK(same_str(a->metadata, b->metadata), "metadata \"%s\" vs \"%s\"", a->metadata ? a->metadata : "(null)",
             b->metadata ? b->metadata : "(null)");
  FUZZ_CHECK(a->has_event_time == b->has_event_time && (!a->has_event_time || a->event_time_ms == b->event_time_ms),
             "event_time %d/%lld vs %d/%lld", a->has_event_time, (long long)a->event_time_ms, b->has_event_time,
             (long long)b->event_time_ms);
}

static void fuzz_vector(const uint8_t *data, size_t size) {
  rv_codec_t *c = codec();
  char err[256];
  rv_vector_record_t r, r2, r3;
  rv_err_t e = rv_codec_decode_vector(c, data, size, &r, err, sizeof err);
  /* The direct reader and Avro-C's generic one agree on every input. */
  char err2[256];
  rv_err_t e2 = rv_codec_decode_vector_avro(c, data, size, &r2, err2, sizeof err2);
  FUZZ_CHECK(e == e2, "direct reader %d (%s) vs Avro-C %d (%s)", e, e ? err : "ok", e2, e2 ? err2 : "ok");
  if (!e) check_same_vector(&r, &r2);
  rv_vector_record_close(&r2);
  if (e) {
    FUZZ_CHECK(e == RV_ERR_CORRUPT, "decode_vector returned %d (%s)", e, rv_err_str(e));
    FUZZ_CHECK(fuzz_terminated(err, sizeof err), "errstr not terminated");
    FUZZ_CHECK(vector_empty(&r), "record not left empty after a failed decode");
    return;
  }
  FUZZ_CHECK(r.id && strlen(r.id) == r.id_len, "decoded id length %zu vs strlen %zu", r.id_len,
             r.id ? strlen(r.id) : 0);
  FUZZ_CHECK(r.op == RV_OP_UPSERT || r.op == RV_OP_DELETE, "op %d", (int)r.op);
  FUZZ_CHECK(r.dim >= 0 && (r.dim == 0 || r.vector), "dim %d with vector %p", r.dim, (void *)r.vector);

  rv_buf_t b1, b2;
  rv_buf_init(&b1);
  rv_buf_init(&b2);
  e = rv_codec_encode_vector(c, &r, &b1, err, sizeof err);
  FUZZ_CHECK(e == RV_OK, "re-encoding a decoded vector record: %s", err);
  e = rv_codec_decode_vector(c, b1.base, b1.len, &r2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK, "decoding a re-encoded vector record (%zu bytes): %s", b1.len, err);
  check_same_vector(&r, &r2);
  e = rv_codec_encode_vector(c, &r2, &b2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK && b1.len == b2.len && !memcmp(b1.base, b2.base, b1.len),
             "encoding is not stable: %zu vs %zu bytes", b1.len, b2.len);
  /* The canonical bytes decode the same way when they arrive Confluent-framed. */
  rv_buf_reset(&b2);
  FUZZ_CHECK(rv_confluent_put_header(&b2, 42) == RV_OK && rv_buf_append(&b2, b1.base, b1.len) == RV_OK, "append");
  uint32_t sid = 0;
  size_t off = 0;
  FUZZ_CHECK(rv_confluent_parse(b2.base, b2.len, &sid, &off) == 1 && sid == 42 && off == RV_CONFLUENT_HEADER,
             "confluent header: id %u, off %zu", sid, off);
  e = rv_codec_decode_vector(c, b2.base + off, b2.len - off, &r3, err, sizeof err);
  FUZZ_CHECK(e == RV_OK, "decoding the framed record: %s", err);
  check_same_vector(&r, &r3);
  rv_vector_record_close(&r3);
  rv_buf_close(&b1);
  rv_buf_close(&b2);
  rv_vector_record_close(&r2);
  rv_vector_record_close(&r);
  FUZZ_CHECK(vector_empty(&r), "close did not re-initialise");
}

static int change_empty(const rv_change_t *ch) {
  static const rv_change_t zero;
  return !memcmp(ch, &zero, sizeof zero);
}

static void check_same_change(const rv_change_t *a, const rv_change_t *b) {
  FUZZ_CHECK(same_str(a->id, b->id), "id \"%s\" vs \"%s\"", a->id, b->id);
  FUZZ_CHECK(a->op == b->op, "op %d vs %d", (int)a->op, (int)b->op);
  FUZZ_CHECK(a->src_partition == b->src_partition && a->src_offset == b->src_offset, "version %d/%lld vs %d/%lld",
             (int)a->src_partition, (long long)a->src_offset, (int)b->src_partition, (long long)b->src_offset);
  FUZZ_CHECK(a->dim == b->dim && same_floats(a->vector, b->vector, a->dim), "vector dim %d vs %d", a->dim, b->dim);
  FUZZ_CHECK((!a->sq8_code && !b->sq8_code) ||
                 (a->sq8_code && b->sq8_code && a->sq8_len == b->sq8_len && a->sq8_version == b->sq8_version &&
                  (a->sq8_len == 0 || !memcmp(a->sq8_code, b->sq8_code, (size_t)a->sq8_len))),
             "sq8 %d bytes v%d vs %d bytes v%d", a->sq8_len, (int)a->sq8_version, b->sq8_len, (int)b->sq8_version);
  FUZZ_CHECK(same_str(a->attributes, b->attributes), "attributes differ");
  FUZZ_CHECK(a->has_event_time == b->has_event_time && (!a->has_event_time || a->event_time_ms == b->event_time_ms),
             "event_time %d/%lld vs %d/%lld", a->has_event_time, (long long)a->event_time_ms, b->has_event_time,
             (long long)b->event_time_ms);
  FUZZ_CHECK(a->created_at_ms == b->created_at_ms, "created_at %lld vs %lld", (long long)a->created_at_ms,
             (long long)b->created_at_ms);
  FUZZ_CHECK(same_str(a->traceparent, b->traceparent), "traceparent differs");
}

static void fuzz_change(const uint8_t *data, size_t size) {
  rv_codec_t *c = codec();
  char err[256];
  rv_change_t ch, ch2;
  rv_err_t e = rv_codec_decode_change(c, data, size, &ch, err, sizeof err);
  if (e) {
    FUZZ_CHECK(e == RV_ERR_CORRUPT, "decode_change returned %d (%s)", e, rv_err_str(e));
    FUZZ_CHECK(fuzz_terminated(err, sizeof err), "errstr not terminated");
    FUZZ_CHECK(change_empty(&ch), "change not left empty after a failed decode");
    return;
  }
  FUZZ_CHECK(ch.id != NULL, "decoded change without id");
  FUZZ_CHECK(ch.dim >= 0 && (ch.dim == 0 || ch.vector), "dim %d with vector %p", ch.dim, (void *)ch.vector);
  FUZZ_CHECK(ch.sq8_len >= 0 && (ch.sq8_len == 0 || ch.sq8_code), "sq8_len %d", ch.sq8_len);

  rv_buf_t b1, b2;
  rv_buf_init(&b1);
  rv_buf_init(&b2);
  e = rv_codec_encode_change(c, &ch, &b1, err, sizeof err);
  FUZZ_CHECK(e == RV_OK, "re-encoding a decoded change: %s", err);
  e = rv_codec_decode_change(c, b1.base, b1.len, &ch2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK, "decoding a re-encoded change (%zu bytes): %s", b1.len, err);
  check_same_change(&ch, &ch2);
  e = rv_codec_encode_change(c, &ch2, &b2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK && b1.len == b2.len && !memcmp(b1.base, b2.base, b1.len),
             "encoding is not stable: %zu vs %zu bytes", b1.len, b2.len);
  rv_buf_close(&b1);
  rv_buf_close(&b2);
  rv_change_close(&ch2);
  rv_change_close(&ch);
}

/* A position marker: what decodes re-encodes to the same bytes (Avro has one
 * encoding per value, given the one-block arrays our encoder writes, so
 * compare decoded values after a second round instead); a failure leaves it empty. */
static void fuzz_marker(const uint8_t *data, size_t size) {
  rv_codec_t *c = codec();
  char err[256];
  rv_marker_t m, m2;
  rv_err_t e = rv_codec_decode_marker(c, data, size, &m, err, sizeof err);
  if (e) {
    FUZZ_CHECK(!m.positions && !m.n && !m.committed_at_ms, "a failed marker decode left n=%d", m.n);
    return;
  }
  rv_buf_t b;
  rv_buf_init(&b);
  FUZZ_CHECK(rv_codec_encode_marker(c, &m, &b, err, sizeof err) == RV_OK, "re-encode: %s", err);
  FUZZ_CHECK(rv_codec_decode_marker(c, b.base, b.len, &m2, err, sizeof err) == RV_OK, "decode again: %s", err);
  FUZZ_CHECK(m.n == m2.n && m.committed_at_ms == m2.committed_at_ms, "n %d/%d time %lld/%lld", m.n, m2.n,
             (long long)m.committed_at_ms, (long long)m2.committed_at_ms);
  for (int i = 0; i < m.n; i++)
    FUZZ_CHECK(m.positions[i].partition == m2.positions[i].partition &&
                   m.positions[i].next_offset == m2.positions[i].next_offset,
               "position %d differs", i);
  rv_marker_close(&m);
  rv_marker_close(&m2);
  rv_buf_close(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_vector(data, size);
  fuzz_change(data, size);
  fuzz_marker(data, size);
  uint32_t schema_id;
  size_t off;
  if (rv_confluent_parse(data, size, &schema_id, &off)) {
    FUZZ_CHECK(off == RV_CONFLUENT_HEADER && off <= size, "payload offset %zu of %zu", off, size);
    fuzz_vector(data + off, size - off);
  }
  return 0;
}
