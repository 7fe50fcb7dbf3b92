/* Unit tests of ingest/rv_validate and ingest/rv_decode: every rule, accepted
 * and rejected, and every framing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_collection.h"
#include "rv_decode.h"
#include "rv_record.h"
#include "rv_validate.h"

#define DIM 4
#define NOW_MS INT64_C(1767225600000) /* 2026-01-01T00:00:00Z */

static const rv_validate_rules_t rules = {.dim = DIM, .max_metadata_bytes = 64, .now_ms = NOW_MS};

/* A fresh, valid UPSERT record; the caller closes it. */
static void make_upsert(rv_vector_record_t *r, const char *id) {
  rv_vector_record_init(r);
  r->id = strdup(id);
  r->id_len = strlen(id);
  r->op = RV_OP_UPSERT;
  r->dim = DIM;
  r->vector = malloc(DIM * sizeof(float));
  for (int i = 0; i < DIM; i++) r->vector[i] = (float)i * 0.5f;
}

static rv_reject_t check(rv_vector_record_t *r) {
  char msg[256];
  rv_reject_t rj = rv_validate_record(r, &rules, msg, sizeof msg);
  if (rj != RV_REJECT_NONE) assert_true(msg[0] != 0); /* a rejection always explains itself */
  return rj;
}

#define assert_reject(expected, got) assert_string_equal(rv_reject_code(expected), rv_reject_code(got))

static void test_reject_codes(void **state) {
  (void)state;
  assert_string_equal("ok", rv_reject_code(RV_REJECT_NONE));
  assert_string_equal("decode_error", rv_reject_code(RV_REJECT_DECODE));
  assert_string_equal("unknown_schema_id", rv_reject_code(RV_REJECT_UNKNOWN_SCHEMA));
  assert_string_equal("bad_id", rv_reject_code(RV_REJECT_BAD_ID));
  assert_string_equal("reserved_id", rv_reject_code(RV_REJECT_RESERVED_ID));
  assert_string_equal("wrong_dim", rv_reject_code(RV_REJECT_WRONG_DIM));
  assert_string_equal("non_finite", rv_reject_code(RV_REJECT_NON_FINITE));
  assert_string_equal("missing_vector", rv_reject_code(RV_REJECT_MISSING_VECTOR));
  assert_string_equal("bad_metadata", rv_reject_code(RV_REJECT_BAD_METADATA));
  assert_string_equal("metadata_too_large", rv_reject_code(RV_REJECT_METADATA_TOO_LARGE));
  assert_string_equal("bad_event_time", rv_reject_code(RV_REJECT_BAD_EVENT_TIME));
  assert_string_equal("incompatible_schema", rv_reject_code(RV_REJECT_INCOMPATIBLE_SCHEMA));
  assert_string_equal("key_id_mismatch", rv_reject_code(RV_REJECT_KEY_ID_MISMATCH));
  assert_string_equal("rejected_by_database", rv_reject_code(RV_REJECT_DB));
  assert_int_equal(RV_REJECT_COUNT - 1, RV_REJECT_DB); /* the last code */
  assert_string_equal("unknown", rv_reject_code(RV_REJECT_COUNT));
}

static void test_utf8(void **state) {
  (void)state;
  assert_int_equal(1, rv_utf8_valid("plain", 5));
  assert_int_equal(1, rv_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9)); /* é € 😀 */
  assert_int_equal(1, rv_utf8_valid("\xf4\x8f\xbf\xbf", 4));                     /* U+10FFFF */
  assert_int_equal(0, rv_utf8_valid("\x80", 1));                                 /* lone continuation */
  assert_int_equal(0, rv_utf8_valid("\xc0\x80", 2));                             /* overlong NUL */
  assert_int_equal(0, rv_utf8_valid("\xe0\x80\xaf", 3));                         /* overlong '/' */
  assert_int_equal(0, rv_utf8_valid("\xed\xa0\x80", 3));                         /* surrogate U+D800 */
  assert_int_equal(0, rv_utf8_valid("\xf4\x90\x80\x80", 4));                     /* above U+10FFFF */
  assert_int_equal(0, rv_utf8_valid("\xe2\x82", 2));                             /* truncated */
  assert_int_equal(0, rv_utf8_valid("\xff", 1));
}

static void test_valid_upsert(void **state) {
  (void)state;
  rv_vector_record_t r;
  make_upsert(&r, "vec-1");
  assert_reject(RV_REJECT_NONE, check(&r));
  assert_non_null(r.vector);
  assert_int_equal(DIM, r.dim);
  rv_vector_record_close(&r);
}

static void test_ids(void **state) {
  (void)state;
  rv_vector_record_t r;
  char id[RV_ID_MAX + 2];

  make_upsert(&r, "");
  assert_reject(RV_REJECT_BAD_ID, check(&r));
  rv_vector_record_close(&r);

  memset(id, 'a', RV_ID_MAX);
  id[RV_ID_MAX] = 0;
  make_upsert(&r, id); /* exactly 512 bytes */
  assert_reject(RV_REJECT_NONE, check(&r));
  rv_vector_record_close(&r);

  id[RV_ID_MAX] = 'a';
  id[RV_ID_MAX + 1] = 0;
  make_upsert(&r, id); /* 513 bytes */
  assert_int_equal(RV_ID_MAX + 1, r.id_len);
  assert_reject(RV_REJECT_BAD_ID, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "bad-\xc3\x28"); /* invalid 2-byte sequence */
  assert_reject(RV_REJECT_BAD_ID, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "caf\xc3\xa9"); /* valid UTF-8 */
  assert_reject(RV_REJECT_NONE, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "nul-in-id");
  r.id[3] = 0; /* id_len still covers the NUL */
  assert_reject(RV_REJECT_BAD_ID, check(&r));
  rv_vector_record_close(&r);

  /* The changelog's own keys (position markers) are reserved, deletes included. */
  char msg[256];
  make_upsert(&r, RV_MARKER_KEY);
  assert_reject(RV_REJECT_RESERVED_ID, rv_validate_record(&r, &rules, msg, sizeof msg));
  assert_non_null(strstr(msg, "reserved"));
  r.op = RV_OP_DELETE;
  assert_reject(RV_REJECT_RESERVED_ID, check(&r));
  rv_vector_record_close(&r);
  make_upsert(&r, "__rv"); /* not the whole prefix */
  assert_reject(RV_REJECT_NONE, check(&r));
  rv_vector_record_close(&r);
  make_upsert(&r, "_rv_x");
  assert_reject(RV_REJECT_NONE, check(&r));
  rv_vector_record_close(&r);
}

static void test_vectors(void **state) {
  (void)state;
  rv_vector_record_t r;

  make_upsert(&r, "v");
  free(r.vector);
  r.vector = NULL;
  r.dim = 0;
  assert_reject(RV_REJECT_MISSING_VECTOR, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "v");
  r.dim = DIM - 1;
  assert_reject(RV_REJECT_WRONG_DIM, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "v");
  r.vector[2] = NAN;
  assert_reject(RV_REJECT_NON_FINITE, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "v");
  r.vector[0] = INFINITY;
  assert_reject(RV_REJECT_NON_FINITE, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "v");
  r.vector[3] = -INFINITY;
  assert_reject(RV_REJECT_NON_FINITE, check(&r));
  rv_vector_record_close(&r);
}

static void test_delete_ignores_vector(void **state) {
  (void)state;
  rv_vector_record_t r;
  make_upsert(&r, "d");
  r.op = RV_OP_DELETE;
  r.dim = 1; /* wrong dim, and NaN: neither matters for a delete */
  r.vector[0] = NAN;
  assert_reject(RV_REJECT_NONE, check(&r));
  assert_null(r.vector); /* normalised away: a delete keeps the stored vector */
  assert_int_equal(0, r.dim);
  rv_vector_record_close(&r);

  make_upsert(&r, "d");
  r.op = RV_OP_DELETE;
  free(r.vector);
  r.vector = NULL;
  r.dim = 0;
  assert_reject(RV_REJECT_NONE, check(&r));
  rv_vector_record_close(&r);
}

static void test_metadata(void **state) {
  (void)state;
  rv_vector_record_t r;

  make_upsert(&r, "m");
  r.metadata = strdup("{ \"color\" : \"red\",\n \"n\": 3 }");
  assert_reject(RV_REJECT_NONE, check(&r));
  assert_string_equal("{\"color\":\"red\",\"n\":3}", r.metadata); /* compact after normalisation */
  rv_vector_record_close(&r);

  make_upsert(&r, "m");
  r.metadata = strdup("[1,2,3]");
  assert_reject(RV_REJECT_BAD_METADATA, check(&r));
  assert_string_equal("[1,2,3]", r.metadata); /* untouched on rejection */
  rv_vector_record_close(&r);

  make_upsert(&r, "m");
  r.metadata = strdup("\"just a string\"");
  assert_reject(RV_REJECT_BAD_METADATA, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "m");
  r.metadata = strdup("{\"unterminated\": ");
  assert_reject(RV_REJECT_BAD_METADATA, check(&r));
  rv_vector_record_close(&r);

  make_upsert(&r, "m");
  r.metadata = strdup("{\"nul\":\"a\\u0000b\"}"); /* PostgreSQL's jsonb refuses \u0000 */
  assert_reject(RV_REJECT_BAD_METADATA, check(&r));
  rv_vector_record_close(&r);

  /* Exactly the limit (64 bytes) passes; one more does not. */
  char big[80];
  snprintf(big, sizeof big, "{\"k\":\"%0*d\"}", 64 - 8, 0);
  assert_int_equal(64, strlen(big));
  make_upsert(&r, "m");
  r.metadata = strdup(big);
  assert_reject(RV_REJECT_NONE, check(&r));
  rv_vector_record_close(&r);
  snprintf(big, sizeof big, "{\"k\":\"%0*d\"}", 64 - 7, 0);
  assert_int_equal(65, strlen(big));
  make_upsert(&r, "m");
  r.metadata = strdup(big);
  assert_reject(RV_REJECT_METADATA_TOO_LARGE, check(&r));
  rv_vector_record_close(&r);
}

static void test_event_time(void **state) {
  (void)state;
  rv_vector_record_t r;
  const struct {
    int64_t t;
    rv_reject_t want;
  } cases[] = {
      {RV_EVENT_TIME_MIN_MS - 1, RV_REJECT_BAD_EVENT_TIME},
      {RV_EVENT_TIME_MIN_MS, RV_REJECT_NONE},
      {NOW_MS, RV_REJECT_NONE},
      {NOW_MS + RV_EVENT_TIME_MAX_AHEAD_MS, RV_REJECT_NONE},
      {NOW_MS + RV_EVENT_TIME_MAX_AHEAD_MS + 1, RV_REJECT_BAD_EVENT_TIME},
      {-1, RV_REJECT_BAD_EVENT_TIME},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    make_upsert(&r, "t");
    r.has_event_time = 1;
    r.event_time_ms = cases[i].t;
    rv_reject_t got = check(&r);
    if (got != cases[i].want)
      fail_msg("event_time %lld: expected %s, got %s", (long long)cases[i].t, rv_reject_code(cases[i].want),
               rv_reject_code(got));
    rv_vector_record_close(&r);
  }
}

/* ---- decoding ---- */

typedef struct {
  rv_codec_t *codec;
} fixture_t;

static int setup(void **state) {
  char e[256];
  static fixture_t f;
  f.codec = rv_codec_new(e, sizeof e);
  if (!f.codec) {
    print_error("rv_codec_new: %s\n", e);
    return -1;
  }
  *state = &f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  rv_codec_destroy(f->codec);
  return 0;
}

static void encode(rv_codec_t *c, const char *id, int dim, float first, rv_buf_t *out) {
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  r.id = (char *)id;
  r.id_len = strlen(id);
  r.dim = dim;
  float v[16] = {first, 2, 3, 4, 5, 6, 7, 8};
  r.vector = v;
  r.metadata = (char *)"{\"a\":1}";
  r.has_event_time = 1;
  r.event_time_ms = NOW_MS - 1000;
  char e[256];
  assert_int_equal(RV_OK, rv_codec_encode_vector(c, &r, out, e, sizeof e));
}

static void test_decode_tombstone(void **state) {
  fixture_t *f = *state;
  rv_vector_record_t r;
  char msg[256];
  assert_reject(RV_REJECT_NONE, rv_decode_message(f->codec, 1, "gone-1", 6, NULL, 0, &r, msg, sizeof msg));
  assert_int_equal(RV_OP_DELETE, r.op);
  assert_string_equal("gone-1", r.id);
  assert_int_equal(6, r.id_len);
  assert_null(r.vector);
  assert_reject(RV_REJECT_NONE, rv_validate_record(&r, &rules, msg, sizeof msg));
  rv_vector_record_close(&r);

  assert_reject(RV_REJECT_DECODE, rv_decode_message(f->codec, 1, NULL, 0, NULL, 0, &r, msg, sizeof msg));
  assert_null(r.id);
  assert_reject(RV_REJECT_DECODE, rv_decode_message(f->codec, 1, "k", 1, "", 0, &r, msg, sizeof msg));
}

/* The Kafka key against the decoded id: exact bytes; no key lets the id win; a tombstone's id is its key. */
static void test_key_id_cross_check(void **state) {
  fixture_t *f = *state;
  rv_vector_record_t r;
  char msg[256];
  make_upsert(&r, "item-7");
  assert_reject(RV_REJECT_NONE, rv_validate_key(&r, "item-7", 6, msg, sizeof msg));
  assert_reject(RV_REJECT_NONE, rv_validate_key(&r, NULL, 0, msg, sizeof msg));   /* no key: the id wins */
  assert_reject(RV_REJECT_NONE, rv_validate_key(&r, "item-8", 0, msg, sizeof msg)); /* empty key: as none */
  msg[0] = 0;
  assert_reject(RV_REJECT_KEY_ID_MISMATCH, rv_validate_key(&r, "item-8", 6, msg, sizeof msg));
  assert_non_null(strstr(msg, "'item-8'"));
  assert_non_null(strstr(msg, "'item-7'"));
  assert_reject(RV_REJECT_KEY_ID_MISMATCH, rv_validate_key(&r, "item-7 ", 7, msg, sizeof msg)); /* no trimming */
  assert_reject(RV_REJECT_KEY_ID_MISMATCH, rv_validate_key(&r, "item-", 5, msg, sizeof msg));   /* prefix */
  assert_reject(RV_REJECT_KEY_ID_MISMATCH, rv_validate_key(&r, "ITEM-7", 6, msg, sizeof msg));  /* no case folding */
  assert_reject(RV_REJECT_KEY_ID_MISMATCH, rv_validate_key(&r, "item-7\0", 7, msg, sizeof msg)); /* a NUL counts */
  /* An Avro-serialised key (length prefix 12 = zigzag 6, then the bytes) is not the id's plain bytes. */
  assert_reject(RV_REJECT_KEY_ID_MISMATCH, rv_validate_key(&r, "\x0citem-7", 7, msg, sizeof msg));
  assert_non_null(strstr(msg, "\\x0c"));
  rv_vector_record_close(&r);

  /* A tombstone: the decoder takes the id from the key, so they always agree. */
  assert_reject(RV_REJECT_NONE, rv_decode_message(f->codec, 1, "gone-1", 6, NULL, 0, &r, msg, sizeof msg));
  assert_reject(RV_REJECT_NONE, rv_validate_key(&r, "gone-1", 6, msg, sizeof msg));
  rv_vector_record_close(&r);
}

static void test_decode_avro(void **state) {
  fixture_t *f = *state;
  rv_buf_t b;
  rv_buf_init(&b);
  encode(f->codec, "avro-1", DIM, 1.5f, &b);
  rv_vector_record_t r;
  char msg[256];
  assert_reject(RV_REJECT_NONE, rv_decode_message(f->codec, 1, "avro-1", 6, b.base, b.len, &r, msg, sizeof msg));
  assert_string_equal("avro-1", r.id);
  assert_int_equal(DIM, r.dim);
  assert_true(r.vector[0] == 1.5f);
  assert_string_equal("{\"a\":1}", r.metadata);
  assert_int_equal(1, r.has_event_time);
  assert_int_equal(NOW_MS - 1000, r.event_time_ms);
  assert_reject(RV_REJECT_NONE, rv_validate_record(&r, &rules, msg, sizeof msg));
  rv_vector_record_close(&r);

  /* Truncated: decode_error, record left empty. */
  assert_reject(RV_REJECT_DECODE, rv_decode_message(f->codec, 1, NULL, 0, b.base, b.len - 3, &r, msg, sizeof msg));
  assert_null(r.id);
  assert_true(strlen(msg) > 0);

  /* Wrong dimension decodes fine and is caught by validation. */
  rv_buf_reset(&b);
  encode(f->codec, "avro-2", DIM + 1, 1.0f, &b);
  assert_reject(RV_REJECT_NONE, rv_decode_message(f->codec, 1, NULL, 0, b.base, b.len, &r, msg, sizeof msg));
  assert_reject(RV_REJECT_WRONG_DIM, rv_validate_record(&r, &rules, msg, sizeof msg));
  rv_vector_record_close(&r);

  /* NaN survives Avro and is caught by validation. */
  rv_buf_reset(&b);
  encode(f->codec, "avro-3", DIM, NAN, &b);
  assert_reject(RV_REJECT_NONE, rv_decode_message(f->codec, 1, NULL, 0, b.base, b.len, &r, msg, sizeof msg));
  assert_reject(RV_REJECT_NON_FINITE, rv_validate_record(&r, &rules, msg, sizeof msg));
  rv_vector_record_close(&r);
  rv_buf_close(&b);
}

static void test_decode_confluent(void **state) {
  fixture_t *f = *state;
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(RV_OK, rv_confluent_put_header(&b, 7));
  encode(f->codec, "conf-1", DIM, 1.0f, &b);
  rv_vector_record_t r;
  char msg[256];
  assert_reject(RV_REJECT_NONE, rv_decode_message(f->codec, 7, NULL, 0, b.base, b.len, &r, msg, sizeof msg));
  assert_string_equal("conf-1", r.id);
  rv_vector_record_close(&r);

  assert_reject(RV_REJECT_UNKNOWN_SCHEMA, rv_decode_message(f->codec, 1, NULL, 0, b.base, b.len, &r, msg, sizeof msg));
  assert_null(r.id);
  assert_non_null(strstr(msg, "7"));

  /* A header shorter than 5 bytes. */
  assert_reject(RV_REJECT_DECODE, rv_decode_message(f->codec, 7, NULL, 0, b.base, 3, &r, msg, sizeof msg));
  rv_buf_close(&b);
}

static rv_reject_t decode_json(fixture_t *f, const char *json, rv_vector_record_t *r) {
  char msg[256];
  rv_reject_t rj = rv_decode_message(f->codec, 1, NULL, 0, json, strlen(json), r, msg, sizeof msg);
  if (!rj) rj = rv_validate_record(r, &rules, msg, sizeof msg);
  return rj;
}

static void test_decode_json(void **state) {
  fixture_t *f = *state;
  rv_vector_record_t r;
  assert_reject(RV_REJECT_NONE,
                decode_json(f, "{\"id\":\"j1\",\"op\":\"upsert\",\"vector\":[1,2.5,-3,0],"
                               "\"metadata\":{\"tag\":\"x\"},\"event_time\":1767225500000}",
                            &r));
  assert_string_equal("j1", r.id);
  assert_int_equal(RV_OP_UPSERT, r.op);
  assert_int_equal(DIM, r.dim);
  assert_true(r.vector[1] == 2.5f && r.vector[2] == -3.0f);
  assert_string_equal("{\"tag\":\"x\"}", r.metadata);
  assert_int_equal(1, r.has_event_time);
  assert_int_equal(INT64_C(1767225500000), r.event_time_ms);
  rv_vector_record_close(&r);

  /* Metadata as a string holding an object. */
  assert_reject(RV_REJECT_NONE, decode_json(f, "{\"id\":\"j2\",\"vector\":[1,2,3,4],\"metadata\":\"{\\\"k\\\":2}\"}", &r));
  assert_string_equal("{\"k\":2}", r.metadata);
  rv_vector_record_close(&r);

  assert_reject(RV_REJECT_NONE, decode_json(f, "{\"id\":\"j3\",\"op\":\"DELETE\"}", &r));
  assert_int_equal(RV_OP_DELETE, r.op);
  rv_vector_record_close(&r);

  const struct {
    const char *json;
    rv_reject_t want;
  } bad[] = {
      {"{\"id\":\"x\",\"vector\":[1,2,3,4]", RV_REJECT_DECODE},                 /* not JSON */
      {"{\"id\":\"x\",\"op\":\"MERGE\",\"vector\":[1,2,3,4]}", RV_REJECT_DECODE}, /* unknown op */
      {"{\"id\":\"x\",\"vector\":[1,\"2\",3,4]}", RV_REJECT_DECODE},              /* non-number */
      {"{\"id\":\"x\",\"vector\":\"1,2,3,4\"}", RV_REJECT_DECODE},                /* not an array */
      {"{\"id\":\"x\",\"vector\":[1,2,3,4],\"event_time\":\"yesterday\"}", RV_REJECT_DECODE},
      {"{\"vector\":[1,2,3,4]}", RV_REJECT_BAD_ID},                               /* no id */
      {"{\"id\":7,\"vector\":[1,2,3,4]}", RV_REJECT_BAD_ID},                      /* id not a string */
      {"{\"id\":\"x\"}", RV_REJECT_MISSING_VECTOR},
      {"{\"id\":\"x\",\"vector\":[1,2,3]}", RV_REJECT_WRONG_DIM},
      {"{\"id\":\"x\",\"vector\":[1,2,3,1e39]}", RV_REJECT_NON_FINITE},           /* beyond float range */
      {"{\"id\":\"x\",\"vector\":[1,2,3,4],\"metadata\":[1,2]}", RV_REJECT_BAD_METADATA},
      {"{\"id\":\"x\",\"vector\":[1,2,3,4],\"metadata\":\"nope\"}", RV_REJECT_BAD_METADATA},
      {"{\"id\":\"x\",\"vector\":[1,2,3,4],\"event_time\":5}", RV_REJECT_BAD_EVENT_TIME},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rv_reject_t got = decode_json(f, bad[i].json, &r);
    if (got != bad[i].want)
      fail_msg("%s: expected %s, got %s", bad[i].json, rv_reject_code(bad[i].want), rv_reject_code(got));
    rv_vector_record_close(&r);
  }
}

int main(void) {
  const struct CMUnitTest rules_tests[] = {
      cmocka_unit_test(test_reject_codes), cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_valid_upsert), cmocka_unit_test(test_ids),
      cmocka_unit_test(test_vectors),      cmocka_unit_test(test_delete_ignores_vector),
      cmocka_unit_test(test_metadata),     cmocka_unit_test(test_event_time),
  };
  const struct CMUnitTest decode_tests[] = {
      cmocka_unit_test(test_decode_tombstone),
      cmocka_unit_test(test_key_id_cross_check),
      cmocka_unit_test(test_decode_avro),
      cmocka_unit_test(test_decode_confluent),
      cmocka_unit_test(test_decode_json),
  };
  int failed = cmocka_run_group_tests_name("validate", rules_tests, NULL, NULL);
  failed += cmocka_run_group_tests_name("decode", decode_tests, setup, teardown);
  return failed;
}
