#include "rv_record.h"

#include <avro.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rv_schemas.h"

struct rv_codec {
  avro_schema_t vec_schema;
  avro_value_iface_t *vec_iface;
  avro_value_t vec_value;
  avro_schema_t chg_schema;
  avro_value_iface_t *chg_iface;
  avro_value_t chg_value;
  avro_schema_t mrk_schema;
  avro_value_iface_t *mrk_iface;
  avro_value_t mrk_value;
  avro_reader_t reader;
  avro_writer_t writer;
};

/* Field positions, as in the .avsc files under schemas/. */
enum { VF_ID, VF_OP, VF_VECTOR, VF_METADATA, VF_EVENT_TIME }; /* encoding; decoding goes by name */
enum { CF_ID, CF_OP, CF_VERSION, CF_VECTOR, CF_SQ8, CF_ATTRIBUTES, CF_EVENT_TIME, CF_CREATED_AT,
       CF_TRACEPARENT };

void rv_vector_record_init(rv_vector_record_t *r) { memset(r, 0, sizeof *r); }

void rv_vector_record_close(rv_vector_record_t *r) {
  free(r->id);
  free(r->vector);
  free(r->metadata);
  rv_vector_record_init(r);
}

void rv_change_init(rv_change_t *c) { memset(c, 0, sizeof *c); }

void rv_change_close(rv_change_t *c) {
  free(c->id);
  free(c->vector);
  free(c->sq8_code);
  free(c->attributes);
  free(c->traceparent);
  rv_change_init(c);
}

void rv_codec_destroy(rv_codec_t *c) {
  if (!c) return;
  if (c->vec_iface) {
    avro_value_decref(&c->vec_value);
    avro_value_iface_decref(c->vec_iface);
  }
  if (c->chg_iface) {
    avro_value_decref(&c->chg_value);
    avro_value_iface_decref(c->chg_iface);
  }
  if (c->mrk_iface) {
    avro_value_decref(&c->mrk_value);
    avro_value_iface_decref(c->mrk_iface);
  }
  if (c->mrk_schema) avro_schema_decref(c->mrk_schema);
  if (c->vec_schema) avro_schema_decref(c->vec_schema);
  if (c->chg_schema) avro_schema_decref(c->chg_schema);
  if (c->reader) avro_reader_free(c->reader);
  if (c->writer) avro_writer_free(c->writer);
  free(c);
}

static int load(const char *json, avro_schema_t *schema, avro_value_iface_t **iface, avro_value_t *value) {
  if (avro_schema_from_json_length(json, strlen(json), schema)) return -1;
  *iface = avro_generic_class_from_schema(*schema);
  if (!*iface) return -1;
  if (avro_generic_value_new(*iface, value)) {
    avro_value_iface_decref(*iface);
    *iface = NULL;
    return -1;
  }
  return 0;
}

rv_codec_t *rv_codec_new(char *errstr, size_t errstr_size) {
  rv_codec_t *c = calloc(1, sizeof *c);
  if (!c) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  static const char empty[1];
  if (load(rv_schema_vector_record, &c->vec_schema, &c->vec_iface, &c->vec_value) ||
      load(rv_schema_changelog_record, &c->chg_schema, &c->chg_iface, &c->chg_value) ||
      load(rv_schema_position_marker, &c->mrk_schema, &c->mrk_iface, &c->mrk_value) ||
      !(c->reader = avro_reader_memory(empty, 0)) || !(c->writer = avro_writer_memory(empty, 0))) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "loading embedded Avro schemas: %s", avro_strerror());
    rv_codec_destroy(c);
    return NULL;
  }
  return c;
}

/* ---- encoding helpers ---- */

static int set_opt_string(avro_value_t *u, const char *s) {
  avro_value_t b;
  if (!s) return avro_value_set_branch(u, 0, &b) || avro_value_set_null(&b);
  return avro_value_set_branch(u, 1, &b) || avro_value_set_string(&b, s);
}

static int set_opt_long(avro_value_t *u, int has, int64_t v) {
  avro_value_t b;
  if (!has) return avro_value_set_branch(u, 0, &b) || avro_value_set_null(&b);
  return avro_value_set_branch(u, 1, &b) || avro_value_set_long(&b, v);
}

static int set_opt_floats(avro_value_t *u, const float *v, int n) {
  avro_value_t b, e;
  if (!v) return avro_value_set_branch(u, 0, &b) || avro_value_set_null(&b);
  if (avro_value_set_branch(u, 1, &b)) return -1;
  for (int i = 0; i < n; i++)
    if (avro_value_append(&b, &e, NULL) || avro_value_set_float(&e, v[i])) return -1;
  return 0;
}

static rv_err_t write_value(rv_codec_t *c, avro_value_t *v, rv_buf_t *out, char *errstr, size_t errstr_size) {
  size_t size;
  if (avro_value_sizeof(v, &size))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "avro sizeof: %s", avro_strerror());
  if (rv_buf_reserve(out, size)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  avro_writer_memory_set_dest(c->writer, (const char *)out->base + out->len, (int64_t)size);
  if (avro_value_write(c->writer, v))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "avro write: %s", avro_strerror());
  out->len += size;
  return RV_OK;
}

rv_err_t rv_codec_encode_vector(rv_codec_t *c, const rv_vector_record_t *r, rv_buf_t *out,
                                char *errstr, size_t errstr_size) {
  if (!r->id) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "record has no id");
  avro_value_t *v = &c->vec_value, f;
  avro_value_reset(v);
  if (avro_value_get_by_index(v, VF_ID, &f, NULL) || avro_value_set_string_len(&f, r->id, r->id_len + 1) ||
      avro_value_get_by_index(v, VF_OP, &f, NULL) || avro_value_set_enum(&f, (int)r->op) ||
      avro_value_get_by_index(v, VF_VECTOR, &f, NULL) || set_opt_floats(&f, r->vector, r->dim) ||
      avro_value_get_by_index(v, VF_METADATA, &f, NULL) || set_opt_string(&f, r->metadata) ||
      avro_value_get_by_index(v, VF_EVENT_TIME, &f, NULL) ||
      set_opt_long(&f, r->has_event_time, r->event_time_ms))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "avro encode: %s", avro_strerror());
  return write_value(c, v, out, errstr, errstr_size);
}

rv_err_t rv_codec_encode_change(rv_codec_t *c, const rv_change_t *ch, rv_buf_t *out, char *errstr,
                                size_t errstr_size) {
  if (!ch->id) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "change has no id");
  avro_value_t *v = &c->chg_value, f, g, b;
  avro_value_reset(v);
  int bad = avro_value_get_by_index(v, CF_ID, &f, NULL) || avro_value_set_string(&f, ch->id) ||
            avro_value_get_by_index(v, CF_OP, &f, NULL) || avro_value_set_enum(&f, (int)ch->op) ||
            avro_value_get_by_index(v, CF_VERSION, &f, NULL) ||
            avro_value_get_by_index(&f, 0, &g, NULL) || avro_value_set_int(&g, ch->src_partition) ||
            avro_value_get_by_index(&f, 1, &g, NULL) || avro_value_set_long(&g, ch->src_offset) ||
            avro_value_get_by_index(v, CF_VECTOR, &f, NULL) || set_opt_floats(&f, ch->vector, ch->dim) ||
            avro_value_get_by_index(v, CF_SQ8, &f, NULL);
  if (!bad) {
    if (!ch->sq8_code) {
      bad = avro_value_set_branch(&f, 0, &b) || avro_value_set_null(&b);
    } else {
      bad = avro_value_set_branch(&f, 1, &b) || avro_value_get_by_index(&b, 0, &g, NULL) ||
            avro_value_set_int(&g, ch->sq8_version) || avro_value_get_by_index(&b, 1, &g, NULL) ||
            avro_value_set_bytes(&g, ch->sq8_code, (size_t)ch->sq8_len);
    }
  }
  bad = bad || avro_value_get_by_index(v, CF_ATTRIBUTES, &f, NULL) || set_opt_string(&f, ch->attributes) ||
        avro_value_get_by_index(v, CF_EVENT_TIME, &f, NULL) ||
        set_opt_long(&f, ch->has_event_time, ch->event_time_ms) ||
        avro_value_get_by_index(v, CF_CREATED_AT, &f, NULL) || avro_value_set_long(&f, ch->created_at_ms) ||
        avro_value_get_by_index(v, CF_TRACEPARENT, &f, NULL) || set_opt_string(&f, ch->traceparent);
  if (bad) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "avro encode: %s", avro_strerror());
  return write_value(c, v, out, errstr, errstr_size);
}

/* ---- decoding helpers ---- */

/* Avro-C allocates whatever a length prefix asks for before it finds the input
 * too short, so a hostile record could make it allocate gigabytes. This walk
 * checks the encoding against the schema first: every length and count must
 * fit in the bytes that remain, every union branch and enum index must exist.
 * Returns the bytes consumed, or -1. */
static int read_varint(const uint8_t *p, size_t len, size_t *pos, int64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= len) return -1;
    uint8_t b = p[(*pos)++];
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
      return 0;
    }
  }
  return -1;
}

static int prescan_string(const uint8_t *p, size_t len, size_t *pos) {
  int64_t n;
  if (read_varint(p, len, pos, &n) || n < 0 || (uint64_t)n > len - *pos) return -1;
  *pos += (size_t)n;
  return 0;
}

/* Works for any writer schema: every Avro type, named types by link. */
static int prescan(avro_schema_t s, const uint8_t *p, size_t len, size_t *pos, int depth) {
  int64_t n;
  if (depth > 32) return -1;
  switch (avro_typeof(s)) {
  case AVRO_NULL: return 0;
  case AVRO_BOOLEAN: return *pos < len ? (int)(++*pos, 0) : -1;
  case AVRO_INT32:
  case AVRO_INT64: return read_varint(p, len, pos, &n);
  case AVRO_FLOAT: return len - *pos >= 4 ? (*pos += 4, 0) : -1;
  case AVRO_DOUBLE: return len - *pos >= 8 ? (*pos += 8, 0) : -1;
  case AVRO_STRING:
  case AVRO_BYTES: return prescan_string(p, len, pos);
  case AVRO_ENUM:
    return read_varint(p, len, pos, &n) || n < 0 || n >= avro_schema_enum_number_of_symbols(s) ? -1 : 0;
  case AVRO_RECORD:
    for (size_t i = 0; i < avro_schema_record_size(s); i++)
      if (prescan(avro_schema_record_field_get_by_index(s, (int)i), p, len, pos, depth + 1)) return -1;
    return 0;
  case AVRO_UNION:
    if (read_varint(p, len, pos, &n) || n < 0 || (size_t)n >= avro_schema_union_size(s)) return -1;
    return prescan(avro_schema_union_branch(s, (int)n), p, len, pos, depth + 1);
  case AVRO_FIXED:
    n = avro_schema_fixed_size(s);
    return n >= 0 && (uint64_t)n <= len - *pos ? (*pos += (size_t)n, 0) : -1;
  case AVRO_LINK: return prescan(avro_schema_link_target(s), p, len, pos, depth + 1);
  case AVRO_ARRAY:
  case AVRO_MAP:
    for (;;) {
      if (read_varint(p, len, pos, &n)) return -1;
      if (n == 0) return 0;
      if (n < 0) { /* a negative count is followed by the block's size in bytes */
        int64_t bytes;
        if (n == INT64_MIN || read_varint(p, len, pos, &bytes) || bytes < 0) return -1;
        n = -n;
      }
      /* Items of zero bytes (null, empty records) would let a tiny input claim
       * a huge count; no sane schema has them, so every item must take a byte. */
      if ((uint64_t)n > len - *pos) return -1;
      for (int64_t i = 0; i < n; i++) {
        if (avro_typeof(s) == AVRO_MAP) {
          if (prescan_string(p, len, pos) || prescan(avro_schema_map_values(s), p, len, pos, depth + 1)) return -1;
        } else if (prescan(avro_schema_array_items(s), p, len, pos, depth + 1)) {
          return -1;
        }
      }
    }
  default: return -1; /* not an Avro type */
  }
}

static int read_value(rv_codec_t *c, avro_schema_t schema, avro_value_t *v, const void *data, size_t len) {
  size_t pos = 0;
  if (prescan(schema, data, len, &pos, 0)) return -3;
  if (pos != len) return -2;
  avro_value_reset(v);
  avro_reader_memory_set_source(c->reader, (const char *)data, (int64_t)len);
  return avro_value_read(c->reader, v) ? -1 : 0;
}

static int get_string(avro_value_t *f, char **out, size_t *out_len) {
  const char *s;
  size_t size; /* includes the NUL */
  if (avro_value_get_string(f, &s, &size) || size == 0) return -1;
  if (memchr(s, 0, size - 1)) return -1; /* embedded NUL: reject rather than truncate */
  *out = malloc(size);
  if (!*out) return -1;
  memcpy(*out, s, size);
  if (out_len) *out_len = size - 1;
  return 0;
}

/* Returns 1 if the union in f holds its non-null branch (copied to *b), 0 if null. */
static int branch(avro_value_t *f, avro_value_t *b) {
  int disc = 0;
  if (avro_value_get_discriminant(f, &disc) || disc == 0) return 0;
  return avro_value_get_current_branch(f, b) == 0;
}

static int get_opt_string(avro_value_t *f, char **out) {
  avro_value_t b;
  if (!branch(f, &b)) return 0;
  return get_string(&b, out, NULL);
}

static int get_opt_long(avro_value_t *f, int *has, int64_t *out) {
  avro_value_t b;
  if (!branch(f, &b)) return 0;
  *has = 1;
  return avro_value_get_long(&b, out);
}

static int get_opt_floats(avro_value_t *f, float **out, int *n_out) {
  avro_value_t b, e;
  if (!branch(f, &b)) return 0;
  size_t n;
  if (avro_value_get_size(&b, &n) || n > (1u << 24)) return -1;
  float *v = malloc((n ? n : 1) * sizeof *v);
  if (!v) return -1;
  for (size_t i = 0; i < n; i++) {
    if (avro_value_get_by_index(&b, i, &e, NULL) || avro_value_get_float(&e, &v[i])) {
      free(v);
      return -1;
    }
  }
  *out = v;
  *n_out = (int)n;
  return 0;
}

/* Copies the fields of a vector record value out. Fields are found by name:
 * a value resolved from a writer schema lacks the optional fields the writer
 * did not have, and those keep the defaults of vector_record.avsc (op UPSERT,
 * the rest null), which are what rv_vector_record_init leaves. */
static int extract_vector(avro_value_t *v, rv_vector_record_t *out) {
  avro_value_t f;
  int op = 0;
  if (avro_value_get_by_name(v, "id", &f, NULL) || get_string(&f, &out->id, &out->id_len)) return -1;
  if (!avro_value_get_by_name(v, "op", &f, NULL) && avro_value_get_enum(&f, &op)) return -1;
  /* Avro-C does not range-check enum indexes on read: op 5 must not pass as UPSERT. */
  if (op != 0 && op != 1) return -1;
  out->op = op == 1 ? RV_OP_DELETE : RV_OP_UPSERT;
  if (!avro_value_get_by_name(v, "vector", &f, NULL) && get_opt_floats(&f, &out->vector, &out->dim)) return -1;
  if (!avro_value_get_by_name(v, "metadata", &f, NULL) && get_opt_string(&f, &out->metadata)) return -1;
  if (!avro_value_get_by_name(v, "event_time", &f, NULL) &&
      get_opt_long(&f, &out->has_event_time, &out->event_time_ms))
    return -1;
  return 0;
}

static rv_err_t read_error(int rc, char *errstr, size_t errstr_size) {
  if (rc == -3) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: truncated or malformed record");
  if (rc == -2) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: trailing bytes after record");
  return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: %s", avro_strerror());
}

/* ---- the vector record read directly ----
 *
 * Records written with vector_record.avsc itself (plain Avro, or Confluent
 * frames of the configured schema id) are the ingest hot path. Avro-C's
 * generic reader builds a value tree and appends a 784-float array one
 * element at a time through its value interface: about 15 us of CPU per
 * Fashion-MNIST record, 40% of ingest's CPU. This reads the same binary
 * encoding for this one schema (Avro spec, "Binary Encoding") in one pass,
 * with the same checks (bounds before allocation, union branches and enum
 * indexes in range, no NUL inside a string, nothing after the record).
 * Avro-C still parses every schema, resolves writer schemas, encodes, and
 * decodes everything else; rv_codec_decode_vector_avro keeps its reading of
 * this schema, and tests and the fuzzer hold the two to the same results. */

typedef struct {
  const uint8_t *p;
  size_t len, pos;
} cursor_t;

static int cur_long(cursor_t *c, int64_t *out) { return read_varint(c->p, c->len, &c->pos, out); }

/* A union index that must be 0 (null) or 1. Returns the index, or -1. */
static int cur_nullable(cursor_t *c) {
  int64_t b;
  return cur_long(c, &b) || (b != 0 && b != 1) ? -1 : (int)b;
}

/* A string, copied and NUL-terminated. -3: truncated or malformed; -4: it
 * holds a NUL (refused rather than cut short) or memory ran out. */
static int cur_string(cursor_t *c, char **out, size_t *out_len) {
  int64_t n;
  if (cur_long(c, &n) || n < 0 || (uint64_t)n > c->len - c->pos) return -3;
  const uint8_t *s = c->p + c->pos;
  if (memchr(s, 0, (size_t)n) || !(*out = malloc((size_t)n + 1))) return -4;
  memcpy(*out, s, (size_t)n);
  (*out)[n] = 0;
  if (out_len) *out_len = (size_t)n;
  c->pos += (size_t)n;
  return 0;
}

static void floats_from_le(float *dst, const uint8_t *src, size_t n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(dst, src, n * sizeof *dst);
#else
  for (size_t i = 0; i < n; i++) {
    uint32_t u = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 | (uint32_t)src[4 * i + 2] << 16 |
                 (uint32_t)src[4 * i + 3] << 24;
    memcpy(&dst[i], &u, sizeof u);
  }
#endif
}

/* An array of floats: blocks of (count, [byte size if count < 0], items), a
 * count of 0 ends it. At most 1 << 24 items, as the generic path allows.
 * 0, or -3 / -4 as cur_string. */
static int cur_floats(cursor_t *c, float **out, int *n_out) {
  size_t n = 0, cap = 0;
  float *v = NULL;
  int rc = -3;
  for (;;) {
    int64_t k;
    if (cur_long(c, &k)) goto bad;
    if (k == 0) break;
    if (k < 0) {
      int64_t bytes;
      if (k == INT64_MIN || cur_long(c, &bytes) || bytes < 0) goto bad;
      k = -k;
    }
    if ((uint64_t)k > (c->len - c->pos) / 4) goto bad;
    rc = -4;
    if (n + (size_t)k > (1u << 24)) goto bad;
    if (n + (size_t)k > cap) {
      size_t want = n + (size_t)k;
      float *nv = realloc(v, want * sizeof *v);
      if (!nv) goto bad;
      v = nv;
      cap = want;
    }
    rc = -3;
    floats_from_le(v + n, c->p + c->pos, (size_t)k);
    c->pos += (size_t)k * 4;
    n += (size_t)k;
  }
  if (!v && !(v = malloc(sizeof *v))) return -4; /* an empty array is a vector of dim 0, as in the generic path */
  *out = v;
  *n_out = (int)n;
  return 0;
bad:
  free(v);
  return rc;
}

/* 0, or -3 truncated or malformed, -2 trailing bytes, -4 a string with a
 * NUL, too many floats or out of memory (the generic path's "malformed
 * vector record"). */
static int read_vector_direct(const void *data, size_t len, rv_vector_record_t *out) {
  cursor_t c = {data, len, 0};
  int64_t op;
  int b, rc;
  if ((rc = cur_string(&c, &out->id, &out->id_len))) return rc;
  if (cur_long(&c, &op) || (op != 0 && op != 1)) return -3;
  out->op = op == 1 ? RV_OP_DELETE : RV_OP_UPSERT;
  if ((b = cur_nullable(&c)) < 0) return -3;
  if (b == 1 && (rc = cur_floats(&c, &out->vector, &out->dim))) return rc;
  if ((b = cur_nullable(&c)) < 0) return -3;
  if (b == 1 && (rc = cur_string(&c, &out->metadata, NULL))) return rc;
  if ((b = cur_nullable(&c)) < 0 || (b == 1 && cur_long(&c, &out->event_time_ms))) return -3;
  out->has_event_time = b == 1;
  return c.pos == len ? 0 : -2;
}

rv_err_t rv_codec_decode_vector(rv_codec_t *c, const void *data, size_t len, rv_vector_record_t *out,
                                char *errstr, size_t errstr_size) {
  (void)c;
  rv_vector_record_init(out);
  int rc = read_vector_direct(data, len, out);
  if (!rc) return RV_OK;
  rv_vector_record_close(out);
  if (rc == -4) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: malformed vector record");
  return read_error(rc, errstr, errstr_size);
}

rv_err_t rv_codec_decode_vector_avro(rv_codec_t *c, const void *data, size_t len, rv_vector_record_t *out,
                                     char *errstr, size_t errstr_size) {
  rv_vector_record_init(out);
  int rc = read_value(c, c->vec_schema, &c->vec_value, data, len);
  if (rc) return read_error(rc, errstr, errstr_size);
  if (extract_vector(&c->vec_value, out)) {
    rv_vector_record_close(out);
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: malformed vector record");
  }
  return RV_OK;
}

/* ---- writer schemas resolved against the vector record schema ---- */

struct rv_vector_resolver {
  avro_schema_t writer;           /* as the producer wrote */
  avro_schema_t reader;           /* vector_record.avsc without the fields the writer lacks */
  avro_value_iface_t *reader_iface;
  avro_value_t reader_value;      /* what a record is decoded into */
  avro_value_iface_t *resolved_iface;
  avro_value_t resolved;          /* reads writer-encoded bytes into reader_value */
  avro_reader_t in;
};

void rv_vector_resolver_destroy(rv_vector_resolver_t *r) {
  if (!r) return;
  if (r->resolved_iface) {
    avro_value_decref(&r->resolved);
    avro_value_iface_decref(r->resolved_iface);
  }
  if (r->reader_iface) {
    avro_value_decref(&r->reader_value);
    avro_value_iface_decref(r->reader_iface);
  }
  if (r->reader) avro_schema_decref(r->reader);
  if (r->writer) avro_schema_decref(r->writer);
  if (r->in) avro_reader_free(r->in);
  free(r);
}

/* Returns 1 if the field `name` of the reader schema declares a default. */
static int reader_field_has_default(json_t *reader_doc, const char *name) {
  json_t *fields = json_object_get(reader_doc, "fields"), *fd;
  size_t i;
  json_array_foreach(fields, i, fd) {
    if (json_is_string(json_object_get(fd, "name")) && !strcmp(json_string_value(json_object_get(fd, "name")), name))
      return json_object_get(fd, "default") != NULL;
  }
  return 0;
}

/* The reader record keeping only the fields the writer has (in the reader's
 * order); a missing field without a default is an incompatibility. */
static rv_err_t effective_reader(avro_schema_t full, avro_schema_t writer, avro_schema_t *out, char *errstr,
                                 size_t errstr_size) {
  json_error_t jerr;
  json_t *doc = json_loads(rv_schema_vector_record, 0, &jerr);
  if (!doc) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "embedded schema: %s", jerr.text);
  rv_err_t err = RV_OK;
  avro_schema_t r = avro_schema_record(avro_schema_name(full), avro_schema_namespace(full));
  if (!r) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  for (size_t i = 0; !err && i < avro_schema_record_size(full); i++) {
    const char *name = avro_schema_record_field_name(full, (int)i);
    if (avro_schema_record_field_get_index(writer, name) >= 0) {
      if (avro_schema_record_field_append(r, name, avro_schema_record_field_get_by_index(full, (int)i)))
        err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "building the reader schema: %s", avro_strerror());
    } else if (!reader_field_has_default(doc, name)) {
      err = rv_errf(RV_ERR_INVALID, errstr, errstr_size, "writer schema lacks field '%s', which has no default",
                    name);
    }
  }
  json_decref(doc);
  if (err && r) avro_schema_decref(r);
  *out = err ? NULL : r;
  return err;
}

/* Avro-C resolves enums by index, not by symbol: accept a writer Op only if
 * its symbols start with the reader's, in the same order. */
static rv_err_t check_op_symbols(avro_schema_t full, avro_schema_t writer, char *errstr, size_t errstr_size) {
  /* By index: avro_schema_record_field_get reads garbage for an absent name. */
  int wi = avro_schema_record_field_get_index(writer, "op"), ri = avro_schema_record_field_get_index(full, "op");
  if (wi < 0 || ri < 0) return RV_OK;
  avro_schema_t w = avro_schema_record_field_get_by_index(writer, wi);
  avro_schema_t r = avro_schema_record_field_get_by_index(full, ri);
  if (is_avro_link(w)) w = avro_schema_link_target(w);
  if (avro_typeof(w) != AVRO_ENUM || avro_typeof(r) != AVRO_ENUM) return RV_OK; /* resolution decides */
  int n = avro_schema_enum_number_of_symbols(w), nr = avro_schema_enum_number_of_symbols(r);
  for (int i = 0; i < n && i < nr; i++)
    if (strcmp(avro_schema_enum_get(w, i), avro_schema_enum_get(r, i)))
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "writer enum op has symbol '%s' where the reader has '%s'",
                     avro_schema_enum_get(w, i), avro_schema_enum_get(r, i));
  return RV_OK;
}

static avro_schema_t deref(avro_schema_t s) { return is_avro_link(s) ? avro_schema_link_target(s) : s; }

/* Avro-C 1.11 crashes in avro_resolved_writer_new when it resolves an array
 * or map whose items do not resolve (it reports other mismatches). This walks
 * every array/map pair the resolution would try, innermost first, and tries
 * their items alone. Returns 1 if all resolve, 0 (errstr set) otherwise. */
static int items_resolvable(avro_schema_t w, avro_schema_t r, int depth, char *errstr, size_t errstr_size) {
  w = deref(w);
  r = deref(r);
  if (depth > 32) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "writer schema nests too deep");
    return 0;
  }
  avro_type_t wt = avro_typeof(w), rt = avro_typeof(r);
  if (wt == AVRO_UNION) {
    for (size_t i = 0; i < avro_schema_union_size(w); i++)
      if (!items_resolvable(avro_schema_union_branch(w, (int)i), r, depth + 1, errstr, errstr_size)) return 0;
    return 1;
  }
  if (rt == AVRO_UNION) {
    for (size_t i = 0; i < avro_schema_union_size(r); i++)
      if (!items_resolvable(w, avro_schema_union_branch(r, (int)i), depth + 1, errstr, errstr_size)) return 0;
    return 1;
  }
  if (wt == AVRO_RECORD && rt == AVRO_RECORD) {
    for (size_t i = 0; i < avro_schema_record_size(r); i++) {
      int wi = avro_schema_record_field_get_index(w, avro_schema_record_field_name(r, (int)i));
      if (wi >= 0 && !items_resolvable(avro_schema_record_field_get_by_index(w, wi),
                                       avro_schema_record_field_get_by_index(r, (int)i), depth + 1, errstr,
                                       errstr_size))
        return 0;
    }
    return 1;
  }
  avro_schema_t wi, ri;
  if (wt == AVRO_ARRAY && rt == AVRO_ARRAY) wi = avro_schema_array_items(w), ri = avro_schema_array_items(r);
  else if (wt == AVRO_MAP && rt == AVRO_MAP) wi = avro_schema_map_values(w), ri = avro_schema_map_values(r);
  else return 1;
  if (!items_resolvable(wi, ri, depth + 1, errstr, errstr_size)) return 0;
  avro_value_iface_t *probe = avro_resolved_writer_new(wi, ri);
  if (!probe) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "%s items do not resolve: %s", wt == AVRO_ARRAY ? "array" : "map",
            avro_strerror());
    return 0;
  }
  avro_value_iface_decref(probe);
  return 1;
}

rv_err_t rv_vector_resolver_new(const char *writer_json, size_t len, rv_vector_resolver_t **out, char *errstr,
                                size_t errstr_size) {
  *out = NULL;
  rv_vector_resolver_t *r = calloc(1, sizeof *r);
  if (!r) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  static const char empty[1];
  avro_schema_t full = NULL;
  rv_err_t err = RV_OK;
  if (avro_schema_from_json_length(rv_schema_vector_record, strlen(rv_schema_vector_record), &full)) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "embedded schema: %s", avro_strerror());
  } else if (avro_schema_from_json_length(writer_json, len, &r->writer)) {
    r->writer = NULL;
    err = rv_errf(RV_ERR_INVALID, errstr, errstr_size, "not an Avro schema: %s", avro_strerror());
  } else if (avro_typeof(r->writer) != AVRO_RECORD) {
    err = rv_errf(RV_ERR_INVALID, errstr, errstr_size, "writer schema is not a record");
  } else if (!(err = check_op_symbols(full, r->writer, errstr, errstr_size)) &&
             !(err = effective_reader(full, r->writer, &r->reader, errstr, errstr_size))) {
    char why[256];
    if (!items_resolvable(r->writer, r->reader, 0, why, sizeof why)) {
      err = rv_errf(RV_ERR_INVALID, errstr, errstr_size, "incompatible with %s: %s", avro_schema_name(full), why);
    } else if (!(r->resolved_iface = avro_resolved_writer_new(r->writer, r->reader))) {
      err = rv_errf(RV_ERR_INVALID, errstr, errstr_size, "incompatible with %s: %s", avro_schema_name(full),
                    avro_strerror());
    } else if (!(r->reader_iface = avro_generic_class_from_schema(r->reader)) ||
               avro_generic_value_new(r->reader_iface, &r->reader_value)) {
      if (r->reader_iface) avro_value_iface_decref(r->reader_iface);
      avro_value_iface_decref(r->resolved_iface); /* no values made from either yet */
      r->reader_iface = r->resolved_iface = NULL;
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    } else if (avro_resolved_writer_new_value(r->resolved_iface, &r->resolved)) {
      avro_value_iface_decref(r->resolved_iface);
      r->resolved_iface = NULL;
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    } else if (!(r->in = avro_reader_memory(empty, 0))) {
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    } else {
      avro_resolved_writer_set_dest(&r->resolved, &r->reader_value);
    }
  }
  if (full) avro_schema_decref(full);
  if (err) {
    rv_vector_resolver_destroy(r);
    return err;
  }
  *out = r;
  return RV_OK;
}

rv_err_t rv_vector_resolver_decode(rv_vector_resolver_t *r, const void *data, size_t len, rv_vector_record_t *out,
                                   char *errstr, size_t errstr_size) {
  rv_vector_record_init(out);
  size_t pos = 0;
  if (prescan(r->writer, data, len, &pos, 0)) return read_error(-3, errstr, errstr_size);
  if (pos != len) return read_error(-2, errstr, errstr_size);
  avro_value_reset(&r->reader_value);
  avro_reader_memory_set_source(r->in, (const char *)data, (int64_t)len);
  if (avro_value_read(r->in, &r->resolved)) return read_error(-1, errstr, errstr_size);
  if (extract_vector(&r->reader_value, out)) {
    rv_vector_record_close(out);
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: malformed vector record");
  }
  return RV_OK;
}

rv_err_t rv_codec_decode_change(rv_codec_t *c, const void *data, size_t len, rv_change_t *out,
                                char *errstr, size_t errstr_size) {
  rv_change_init(out);
  avro_value_t *v = &c->chg_value, f, g, b;
  int rc = read_value(c, c->chg_schema, v, data, len);
  if (rc == -3) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: truncated or malformed change");
  if (rc == -1) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: %s", avro_strerror());
  if (rc == -2) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: trailing bytes after change");
  int op = 0;
  int bad = avro_value_get_by_index(v, CF_ID, &f, NULL) || get_string(&f, &out->id, NULL) ||
            avro_value_get_by_index(v, CF_OP, &f, NULL) || avro_value_get_enum(&f, &op) ||
            avro_value_get_by_index(v, CF_VERSION, &f, NULL) || avro_value_get_by_index(&f, 0, &g, NULL) ||
            avro_value_get_int(&g, &out->src_partition) || avro_value_get_by_index(&f, 1, &g, NULL) ||
            avro_value_get_long(&g, &out->src_offset) ||
            avro_value_get_by_index(v, CF_VECTOR, &f, NULL) || get_opt_floats(&f, &out->vector, &out->dim) ||
            avro_value_get_by_index(v, CF_SQ8, &f, NULL);
  if (!bad && branch(&f, &b)) {
    const void *bytes;
    size_t n;
    bad = avro_value_get_by_index(&b, 0, &g, NULL) || avro_value_get_int(&g, &out->sq8_version) ||
          avro_value_get_by_index(&b, 1, &g, NULL) || avro_value_get_bytes(&g, &bytes, &n);
    if (!bad && (out->sq8_code = malloc(n ? n : 1)) != NULL) {
      memcpy(out->sq8_code, bytes, n);
      out->sq8_len = (int)n;
    } else {
      bad = 1;
    }
  }
  bad = bad || avro_value_get_by_index(v, CF_ATTRIBUTES, &f, NULL) || get_opt_string(&f, &out->attributes) ||
        avro_value_get_by_index(v, CF_EVENT_TIME, &f, NULL) ||
        get_opt_long(&f, &out->has_event_time, &out->event_time_ms) ||
        avro_value_get_by_index(v, CF_CREATED_AT, &f, NULL) || avro_value_get_long(&f, &out->created_at_ms) ||
        avro_value_get_by_index(v, CF_TRACEPARENT, &f, NULL) || get_opt_string(&f, &out->traceparent) ||
        (op != 0 && op != 1);
  if (bad) {
    rv_change_close(out);
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: malformed change record");
  }
  out->op = op == 1 ? RV_OP_DELETE : RV_OP_UPSERT;
  return RV_OK;
}

void rv_marker_close(rv_marker_t *m) {
  free(m->positions);
  memset(m, 0, sizeof *m);
}

rv_err_t rv_codec_encode_marker(rv_codec_t *c, const rv_marker_t *m, rv_buf_t *out, char *errstr,
                                size_t errstr_size) {
  avro_value_t *v = &c->mrk_value, f, e, g;
  avro_value_reset(v);
  int bad = avro_value_get_by_index(v, 0, &f, NULL);
  for (int i = 0; !bad && i < m->n; i++)
    bad = avro_value_append(&f, &e, NULL) || avro_value_get_by_index(&e, 0, &g, NULL) ||
          avro_value_set_int(&g, m->positions[i].partition) || avro_value_get_by_index(&e, 1, &g, NULL) ||
          avro_value_set_long(&g, m->positions[i].next_offset);
  bad = bad || avro_value_get_by_index(v, 1, &f, NULL) || avro_value_set_long(&f, m->committed_at_ms);
  if (bad) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "avro encode: %s", avro_strerror());
  return write_value(c, v, out, errstr, errstr_size);
}

rv_err_t rv_codec_decode_marker(rv_codec_t *c, const void *data, size_t len, rv_marker_t *out, char *errstr,
                                size_t errstr_size) {
  memset(out, 0, sizeof *out);
  avro_value_t *v = &c->mrk_value, f, e, g;
  int rc = read_value(c, c->mrk_schema, v, data, len);
  if (rc == -3) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: truncated or malformed marker");
  if (rc == -1) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: %s", avro_strerror());
  if (rc == -2) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: trailing bytes after marker");
  size_t n = 0;
  int bad = avro_value_get_by_index(v, 0, &f, NULL) || avro_value_get_size(&f, &n) || n > (size_t)INT32_MAX;
  if (!bad && n && !(out->positions = calloc(n, sizeof *out->positions)))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  for (size_t i = 0; !bad && i < n; i++)
    bad = avro_value_get_by_index(&f, i, &e, NULL) || avro_value_get_by_index(&e, 0, &g, NULL) ||
          avro_value_get_int(&g, &out->positions[i].partition) || avro_value_get_by_index(&e, 1, &g, NULL) ||
          avro_value_get_long(&g, &out->positions[i].next_offset);
  out->n = (int)n;
  bad = bad || avro_value_get_by_index(v, 1, &f, NULL) || avro_value_get_long(&f, &out->committed_at_ms);
  if (bad) {
    rv_marker_close(out);
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "avro decode: malformed position marker");
  }
  return RV_OK;
}

rv_err_t rv_confluent_put_header(rv_buf_t *out, uint32_t schema_id) {
  uint8_t zero = 0;
  rv_err_t err = rv_buf_append(out, &zero, 1);
  return err ? err : rv_buf_put_be32(out, schema_id);
}

int rv_confluent_parse(const void *data, size_t len, uint32_t *schema_id, size_t *payload_off) {
  const uint8_t *p = data;
  if (len < RV_CONFLUENT_HEADER || p[0] != 0) return 0;
  *schema_id = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
  *payload_off = RV_CONFLUENT_HEADER;
  return 1;
}
