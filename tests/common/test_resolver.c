/* Unit tests of common/rv_record's writer-schema resolution
 * (rv_vector_resolver_*): records written with evolved schemas (fields added
 * with defaults, optional fields removed, reordered) decode into the reader's
 * record; incompatible writers are refused with a reason; the bounds check
 * runs against the writer schema, whatever types it uses. Writer-side bytes
 * are made with Avro-C's generic values of the writer schema. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <avro.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_record.h"
#include "rv_schemas.h"

/* v2: adds a string with a default in the middle, and a map and a fixed at the end. */
static const char V2[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"id\",\"type\":\"string\"},"
    "{\"name\":\"source\",\"type\":\"string\",\"default\":\"unknown\"},"
    "{\"name\":\"op\",\"type\":{\"type\":\"enum\",\"name\":\"Op\",\"symbols\":[\"UPSERT\",\"DELETE\"]},"
    "\"default\":\"UPSERT\"},"
    "{\"name\":\"vector\",\"type\":[\"null\",{\"type\":\"array\",\"items\":\"float\"}],\"default\":null},"
    "{\"name\":\"metadata\",\"type\":[\"null\",\"string\"],\"default\":null},"
    "{\"name\":\"event_time\",\"type\":[\"null\",{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}],"
    "\"default\":null},"
    "{\"name\":\"tags\",\"type\":{\"type\":\"map\",\"values\":\"int\"},\"default\":{}},"
    "{\"name\":\"digest\",\"type\":{\"type\":\"fixed\",\"name\":\"Digest\",\"size\":4},\"default\":\"abcd\"}]}";

/* v3: metadata and op removed, vector before id, a non-union event_time (resolves into the reader's union). */
static const char V3[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"vector\",\"type\":[\"null\",{\"type\":\"array\",\"items\":\"float\"}],\"default\":null},"
    "{\"name\":\"id\",\"type\":\"string\"},"
    "{\"name\":\"event_time\",\"type\":\"long\"}]}";

static const char NO_ID[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"key\",\"type\":\"string\"},"
    "{\"name\":\"vector\",\"type\":[\"null\",{\"type\":\"array\",\"items\":\"float\"}],\"default\":null}]}";

static const char STRING_VECTOR[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"id\",\"type\":\"string\"},"
    "{\"name\":\"vector\",\"type\":{\"type\":\"array\",\"items\":\"string\"}}]}";

static const char SWAPPED_OP[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"id\",\"type\":\"string\"},"
    "{\"name\":\"op\",\"type\":{\"type\":\"enum\",\"name\":\"Op\",\"symbols\":[\"DELETE\",\"UPSERT\"]}}]}";

/* A writer value of schema json, for building test bytes. */
typedef struct {
  avro_schema_t schema;
  avro_value_iface_t *iface;
  avro_value_t value;
} writer_t;

static void writer_open(writer_t *w, const char *json) {
  assert_int_equal(0, avro_schema_from_json_length(json, strlen(json), &w->schema));
  w->iface = avro_generic_class_from_schema(w->schema);
  assert_non_null(w->iface);
  assert_int_equal(0, avro_generic_value_new(w->iface, &w->value));
}

static void writer_close(writer_t *w) {
  avro_value_decref(&w->value);
  avro_value_iface_decref(w->iface);
  avro_schema_decref(w->schema);
}

static size_t writer_encode(writer_t *w, char *buf, size_t cap) {
  avro_writer_t out = avro_writer_memory(buf, (int64_t)cap);
  assert_int_equal(0, avro_value_write(out, &w->value));
  size_t n = (size_t)avro_writer_tell(out);
  avro_writer_free(out);
  return n;
}

static void set_floats(avro_value_t *rec, const char *field, const float *v, int n) {
  avro_value_t f, b, e;
  assert_int_equal(0, avro_value_get_by_name(rec, field, &f, NULL));
  assert_int_equal(0, avro_value_set_branch(&f, 1, &b));
  for (int i = 0; i < n; i++) {
    assert_int_equal(0, avro_value_append(&b, &e, NULL));
    assert_int_equal(0, avro_value_set_float(&e, v[i]));
  }
}

static rv_vector_resolver_t *resolver(const char *json) {
  rv_vector_resolver_t *r = NULL;
  char e[256];
  rv_err_t err = rv_vector_resolver_new(json, strlen(json), &r, e, sizeof e);
  if (err) fail_msg("resolver: %s", e);
  return r;
}

static void test_added_fields(void **state) {
  (void)state;
  writer_t w;
  writer_open(&w, V2);
  avro_value_t f, b, e;
  const float v[3] = {1.5f, -2, 3};
  avro_value_get_by_name(&w.value, "id", &f, NULL);
  avro_value_set_string(&f, "v2-1");
  avro_value_get_by_name(&w.value, "source", &f, NULL);
  avro_value_set_string(&f, "sensor-7");
  avro_value_get_by_name(&w.value, "op", &f, NULL);
  avro_value_set_enum(&f, 1);
  set_floats(&w.value, "vector", v, 3);
  avro_value_get_by_name(&w.value, "metadata", &f, NULL);
  avro_value_set_branch(&f, 1, &b);
  avro_value_set_string(&b, "{\"k\":1}");
  avro_value_get_by_name(&w.value, "event_time", &f, NULL);
  avro_value_set_branch(&f, 1, &b);
  avro_value_set_long(&b, 1700000000123);
  avro_value_get_by_name(&w.value, "tags", &f, NULL);
  avro_value_add(&f, "a", &e, NULL, NULL);
  avro_value_set_int(&e, 1);
  avro_value_add(&f, "b", &e, NULL, NULL);
  avro_value_set_int(&e, 2);
  avro_value_get_by_name(&w.value, "digest", &f, NULL);
  avro_value_set_fixed(&f, (void *)"abcd", 4);
  char buf[512];
  size_t n = writer_encode(&w, buf, sizeof buf);

  rv_vector_resolver_t *r = resolver(V2);
  rv_vector_record_t rec;
  char err[256];
  assert_int_equal(RV_OK, rv_vector_resolver_decode(r, buf, n, &rec, err, sizeof err));
  assert_string_equal("v2-1", rec.id);
  assert_int_equal(4, rec.id_len);
  assert_int_equal(RV_OP_DELETE, rec.op);
  assert_int_equal(3, rec.dim);
  assert_memory_equal(v, rec.vector, sizeof v);
  assert_string_equal("{\"k\":1}", rec.metadata);
  assert_int_equal(1, rec.has_event_time);
  assert_int_equal(1700000000123, rec.event_time_ms);
  rv_vector_record_close(&rec);

  /* The resolver is reusable: a second record, without the optional values. */
  avro_value_reset(&w.value);
  avro_value_get_by_name(&w.value, "id", &f, NULL);
  avro_value_set_string(&f, "v2-2");
  avro_value_get_by_name(&w.value, "source", &f, NULL);
  avro_value_set_string(&f, "");
  for (const char *const *u = (const char *const[]){"vector", "metadata", "event_time", NULL}; *u; u++) {
    avro_value_get_by_name(&w.value, *u, &f, NULL);
    avro_value_set_branch(&f, 0, &b);
    avro_value_set_null(&b);
  }
  avro_value_get_by_name(&w.value, "digest", &f, NULL);
  avro_value_set_fixed(&f, (void *)"wxyz", 4);
  n = writer_encode(&w, buf, sizeof buf);
  assert_int_equal(RV_OK, rv_vector_resolver_decode(r, buf, n, &rec, err, sizeof err));
  assert_string_equal("v2-2", rec.id);
  assert_int_equal(RV_OP_UPSERT, rec.op);
  assert_null(rec.vector);
  assert_null(rec.metadata);
  assert_int_equal(0, rec.has_event_time);
  rv_vector_record_close(&rec);

  /* Truncated anywhere: a clean error, record left empty. */
  for (size_t cut = 0; cut < n; cut++) {
    rv_err_t got = rv_vector_resolver_decode(r, buf, cut, &rec, err, sizeof err);
    if (got != RV_ERR_CORRUPT) fail_msg("cut at %zu of %zu: %d", cut, n, got);
    assert_null(rec.id);
  }
  /* Trailing bytes. */
  assert_int_equal(RV_ERR_CORRUPT, rv_vector_resolver_decode(r, buf, n + 1, &rec, err, sizeof err));
  rv_vector_resolver_destroy(r);
  writer_close(&w);
}

static void test_removed_fields(void **state) {
  (void)state;
  writer_t w;
  writer_open(&w, V3);
  avro_value_t f;
  const float v[2] = {0.25f, 4};
  set_floats(&w.value, "vector", v, 2);
  avro_value_get_by_name(&w.value, "id", &f, NULL);
  avro_value_set_string(&f, "v3-1");
  avro_value_get_by_name(&w.value, "event_time", &f, NULL);
  avro_value_set_long(&f, 1600000000000);
  char buf[256];
  size_t n = writer_encode(&w, buf, sizeof buf);

  rv_vector_resolver_t *r = resolver(V3);
  rv_vector_record_t rec;
  char err[256];
  assert_int_equal(RV_OK, rv_vector_resolver_decode(r, buf, n, &rec, err, sizeof err));
  assert_string_equal("v3-1", rec.id);
  assert_int_equal(RV_OP_UPSERT, rec.op); /* the reader's default */
  assert_int_equal(2, rec.dim);
  assert_memory_equal(v, rec.vector, sizeof v);
  assert_null(rec.metadata); /* the reader's default */
  assert_int_equal(1, rec.has_event_time);
  assert_int_equal(1600000000000, rec.event_time_ms);
  rv_vector_record_close(&rec);
  rv_vector_resolver_destroy(r);
  writer_close(&w);
}

/* The reader's own schema resolves to itself and agrees with the plain codec. */
static void test_identity(void **state) {
  (void)state;
  char e[256];
  rv_codec_t *c = rv_codec_new(e, sizeof e);
  assert_non_null(c);
  rv_vector_record_t in, out;
  rv_vector_record_init(&in);
  float v[4] = {1, 2, 3, 4};
  in.id = (char *)"same";
  in.id_len = 4;
  in.vector = v;
  in.dim = 4;
  in.metadata = (char *)"{}";
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(RV_OK, rv_codec_encode_vector(c, &in, &b, e, sizeof e));
  rv_vector_resolver_t *r = resolver(rv_schema_vector_record);
  assert_int_equal(RV_OK, rv_vector_resolver_decode(r, b.base, b.len, &out, e, sizeof e));
  assert_string_equal("same", out.id);
  assert_int_equal(4, out.dim);
  assert_memory_equal(v, out.vector, sizeof v);
  assert_string_equal("{}", out.metadata);
  rv_vector_record_close(&out);
  rv_buf_close(&b);
  rv_vector_resolver_destroy(r);
  rv_codec_destroy(c);
}

static void expect_refused(const char *json, const char *reason) {
  rv_vector_resolver_t *r = (rv_vector_resolver_t *)1;
  char e[256] = "";
  assert_int_equal(RV_ERR_INVALID, rv_vector_resolver_new(json, strlen(json), &r, e, sizeof e));
  assert_null(r);
  if (!strstr(e, reason)) fail_msg("expected '%s' in the reason, got '%s'", reason, e);
}

static void test_incompatible(void **state) {
  (void)state;
  expect_refused(NO_ID, "lacks field 'id'");
  expect_refused(STRING_VECTOR, "array items do not resolve");
  expect_refused(SWAPPED_OP, "symbol 'DELETE'");
  expect_refused("{\"type\":\"string\"}", "not a record");
  expect_refused("{\"type\":\"record\",\"name\":", "not an Avro schema");
  expect_refused("", "not an Avro schema");
}

/* A writer union whose branches resolve only in part: Avro-C accepts the
 * schema and resolves branch by branch; a record using the branch that does
 * not resolve must fail to decode, not crash, and the other branch works. */
static void test_union_branch_mismatch(void **state) {
  (void)state;
  static const char W[] =
      "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
      "{\"name\":\"id\",\"type\":\"string\"},"
      "{\"name\":\"event_time\",\"type\":[\"null\",\"string\",\"long\"]}]}";
  rv_vector_resolver_t *r = resolver(W);
  rv_vector_record_t rec;
  char e[256];
  const uint8_t as_long[] = {0x02, 'a', 0x04, 0x54}; /* id "a", branch 2 (long) 42 */
  assert_int_equal(RV_OK, rv_vector_resolver_decode(r, as_long, sizeof as_long, &rec, e, sizeof e));
  assert_int_equal(1, rec.has_event_time);
  assert_int_equal(42, rec.event_time_ms);
  rv_vector_record_close(&rec);
  const uint8_t as_string[] = {0x02, 'a', 0x02, 0x02, 'x'}; /* branch 1 (string) "x" */
  assert_int_equal(RV_ERR_CORRUPT, rv_vector_resolver_decode(r, as_string, sizeof as_string, &rec, e, sizeof e));
  assert_null(rec.id);
  rv_vector_resolver_destroy(r);
}

/* A hostile length prefix in a type only the writer has must not reach Avro-C's allocator. */
static void test_hostile_lengths(void **state) {
  (void)state;
  rv_vector_resolver_t *r = resolver(V2);
  rv_vector_record_t rec;
  char e[256];
  /* id "x", then "source" claims 2^62 bytes. */
  const uint8_t huge_string[] = {0x02, 'x', 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
  assert_int_equal(RV_ERR_CORRUPT, rv_vector_resolver_decode(r, huge_string, sizeof huge_string, &rec, e, sizeof e));
  /* id "x", source "", op 0, vector null, metadata null, event_time null, then a map block of 2^62 entries. */
  const uint8_t huge_map[] = {0x02, 'x', 0x00, 0x00, 0x00, 0x00, 0x00,
                              0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
  assert_int_equal(RV_ERR_CORRUPT, rv_vector_resolver_decode(r, huge_map, sizeof huge_map, &rec, e, sizeof e));
  assert_null(rec.id);
  rv_vector_resolver_destroy(r);
}

/* Fields missing from a writer read as rv_vector_record_init leaves them;
 * that is right only while vector_record.avsc's defaults are these. */
static void test_reader_defaults(void **state) {
  (void)state;
  json_error_t jerr;
  json_t *doc = json_loads(rv_schema_vector_record, 0, &jerr);
  assert_non_null(doc);
  json_t *fd;
  size_t i;
  int checked = 0;
  json_array_foreach(json_object_get(doc, "fields"), i, fd) {
    const char *name = json_string_value(json_object_get(fd, "name"));
    json_t *def = json_object_get(fd, "default");
    if (!strcmp(name, "id")) {
      assert_null(def);
    } else if (!strcmp(name, "op")) {
      assert_string_equal("UPSERT", json_string_value(def));
    } else {
      if (!json_is_null(def)) fail_msg("field %s: default is not null", name);
    }
    checked++;
  }
  assert_int_equal(5, checked);
  json_decref(doc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_added_fields),  cmocka_unit_test(test_removed_fields),
      cmocka_unit_test(test_identity),      cmocka_unit_test(test_incompatible),
      cmocka_unit_test(test_hostile_lengths), cmocka_unit_test(test_reader_defaults),
      cmocka_unit_test(test_union_branch_mismatch),
  };
  return cmocka_run_group_tests_name("resolver", tests, NULL, NULL);
}
