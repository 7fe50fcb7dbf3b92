/* rv_protocol: request parsing and validation, reply formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_protocol.h"

/* Parses text; returns the code, fills *r (caller closes) and msg. */
static rv_proto_code_t parse(const char *text, rv_request_t *r, char *msg, size_t msg_size) {
  rv_request_init(r);
  return rv_request_parse(text, strlen(text), r, msg, msg_size);
}

/* Expects the parse of text to fail with code, echoing id_json (NULL: no id)
 * and explaining itself with a message that contains msg_part. */
static void expect_error(const char *text, rv_proto_code_t code, const char *id_json,
                         const char *msg_part) {
  rv_request_t r;
  char msg[256];
  rv_proto_code_t got = parse(text, &r, msg, sizeof msg);
  if (got != code)
    print_error("message %s: got %s (%s), want %s\n", text, rv_proto_code_name(got), msg,
                rv_proto_code_name(code));
  assert_int_equal(got, code);
  if (id_json) {
    assert_non_null(r.id_json);
    assert_string_equal(r.id_json, id_json);
  } else {
    assert_null(r.id_json);
  }
  assert_null(r.vector); /* nothing but the id survives a failure */
  assert_true(strlen(msg) > 0);
  if (msg_part && !strstr(msg, msg_part))
    print_error("message \"%s\" lacks \"%s\"\n", msg, msg_part);
  if (msg_part) assert_non_null(strstr(msg, msg_part));
  rv_request_close(&r);
}

static void test_valid_search(void **state) {
  (void)state;
  rv_request_t r;
  char msg[256];
  const char *text = "{\"type\":\"search\",\"id\":\"q1\",\"collection\":\"fashion\","
                     "\"vector\":[1, -2.5, 0.125, 3e2],\"k\":7,\"ef\":64,\"region\":\"local\"}";
  assert_int_equal(parse(text, &r, msg, sizeof msg), RV_PROTO_OK);
  assert_int_equal(r.type, RV_REQ_SEARCH);
  assert_string_equal(r.id_json, "\"q1\"");
  assert_string_equal(r.collection, "fashion");
  assert_string_equal(r.region, "local");
  assert_int_equal(r.k, 7);
  assert_int_equal(r.ef, 64);
  assert_int_equal(r.dim, 4);
  assert_true(r.vector[0] == 1.0f && r.vector[1] == -2.5f && r.vector[2] == 0.125f &&
              r.vector[3] == 300.0f);
  rv_request_close(&r);
  assert_null(r.vector);
  assert_null(r.id_json);
}

static void test_search_defaults_and_numeric_id(void **state) {
  (void)state;
  rv_request_t r;
  char msg[256];
  assert_int_equal(parse("{\"type\":\"search\",\"id\":42,\"collection\":\"c\",\"vector\":[0.5]}",
                         &r, msg, sizeof msg),
                   RV_PROTO_OK);
  assert_string_equal(r.id_json, "42");
  assert_int_equal(r.k, RV_PROTO_K_DEFAULT);
  assert_int_equal(r.ef, 0);
  assert_string_equal(r.region, "");
  rv_request_close(&r);

  /* the k range ends are accepted */
  assert_int_equal(
      parse("{\"type\":\"search\",\"id\":\"a\",\"collection\":\"c\",\"vector\":[1],\"k\":1}", &r,
            msg, sizeof msg),
      RV_PROTO_OK);
  assert_int_equal(r.k, 1);
  rv_request_close(&r);
  assert_int_equal(
      parse("{\"type\":\"search\",\"id\":\"a\",\"collection\":\"c\",\"vector\":[1],\"k\":1000}", &r,
            msg, sizeof msg),
      RV_PROTO_OK);
  assert_int_equal(r.k, 1000);
  rv_request_close(&r);
}

static void test_ping(void **state) {
  (void)state;
  rv_request_t r;
  char msg[256];
  assert_int_equal(parse("{\"type\":\"ping\",\"id\":\"p\"}", &r, msg, sizeof msg), RV_PROTO_OK);
  assert_int_equal(r.type, RV_REQ_PING);
  assert_string_equal(r.id_json, "\"p\"");
  rv_request_close(&r);
}

static void test_length_is_respected(void **state) {
  (void)state;
  /* only the first len bytes are the message; what follows must be ignored */
  const char *buf = "{\"type\":\"ping\",\"id\":1}GARBAGE";
  rv_request_t r;
  rv_request_init(&r);
  char msg[256];
  assert_int_equal(rv_request_parse(buf, strlen(buf) - 7, &r, msg, sizeof msg), RV_PROTO_OK);
  rv_request_close(&r);
  assert_int_equal(rv_request_parse(buf, strlen(buf), &r, msg, sizeof msg), RV_PROTO_BAD_REQUEST);
  rv_request_close(&r);
}

static void test_invalid_json_and_shape(void **state) {
  (void)state;
  expect_error("{\"type\":\"ping\",", RV_PROTO_BAD_REQUEST, NULL, "invalid JSON");
  expect_error("", RV_PROTO_BAD_REQUEST, NULL, "invalid JSON");
  expect_error("[1,2]", RV_PROTO_BAD_REQUEST, NULL, "object");
  expect_error("{\"type\":\"ping\"}", RV_PROTO_BAD_REQUEST, NULL, "id");
  expect_error("{\"type\":\"ping\",\"id\":null}", RV_PROTO_BAD_REQUEST, NULL, "id");
  expect_error("{\"type\":\"ping\",\"id\":{\"a\":1}}", RV_PROTO_BAD_REQUEST, NULL, "id");
  expect_error("{\"id\":\"x\"}", RV_PROTO_BAD_REQUEST, "\"x\"", "type");
  expect_error("{\"id\":\"x\",\"type\":3}", RV_PROTO_BAD_REQUEST, "\"x\"", "type");
}

static void test_unknown_type(void **state) {
  (void)state;
  expect_error("{\"type\":\"subscribe\",\"id\":\"s1\"}", RV_PROTO_UNSUPPORTED, "\"s1\"",
               "subscribe");
}

static void test_missing_and_invalid_fields(void **state) {
  (void)state;
  expect_error("{\"type\":\"search\",\"id\":\"q\",\"vector\":[1]}", RV_PROTO_BAD_REQUEST, "\"q\"",
               "collection");
  expect_error("{\"type\":\"search\",\"id\":\"q\",\"collection\":\"\",\"vector\":[1]}",
               RV_PROTO_BAD_REQUEST, "\"q\"", "collection");
  expect_error(
      "{\"type\":\"search\",\"id\":\"q\",\"collection\":"
      "\"0123456789012345678901234567890123456789012345678901234567890123\",\"vector\":[1]}",
      RV_PROTO_BAD_REQUEST, "\"q\"", "collection");
  expect_error("{\"type\":\"search\",\"id\":\"q\",\"collection\":5,\"vector\":[1]}",
               RV_PROTO_BAD_REQUEST, "\"q\"", "collection");
  expect_error("{\"type\":\"search\",\"id\":\"q\",\"collection\":\"c\"}", RV_PROTO_BAD_REQUEST,
               "\"q\"", "vector");
  expect_error(
      "{\"type\":\"search\",\"id\":\"q\",\"collection\":\"c\",\"vector\":[1],\"region\":7}",
      RV_PROTO_BAD_REQUEST, "\"q\"", "region");
  expect_error("{\"type\":\"search\",\"id\":\"q\",\"collection\":\"c\",\"vector\":[1],\"ef\":0}",
               RV_PROTO_BAD_REQUEST, "\"q\"", "ef");
}

static void test_k_range(void **state) {
  (void)state;
  const char *bad[] = {"0", "1001", "-3", "\"5\"", "2.5", "null", "true"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char text[256];
    snprintf(text, sizeof text,
             "{\"type\":\"search\",\"id\":\"k\",\"collection\":\"c\",\"vector\":[1],\"k\":%s}",
             bad[i]);
    expect_error(text, RV_PROTO_BAD_REQUEST, "\"k\"", "\"k\"");
  }
}

static void test_vector_elements(void **state) {
  (void)state;
  const char *bad[] = {"[1,\"2\",3]", "[1,null]", "[true]", "[]", "\"1,2\"", "{}", "[[1]]",
                       "[1e39]" /* overflows float */};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char text[256];
    snprintf(text, sizeof text,
             "{\"type\":\"search\",\"id\":\"v\",\"collection\":\"c\",\"vector\":%s}", bad[i]);
    expect_error(text, RV_PROTO_BAD_REQUEST, "\"v\"", "vector");
  }
}

/* Loads text that must be a JSON object. */
static json_t *load(const char *text, size_t len) {
  json_error_t e;
  json_t *v = json_loadb(text, len, 0, &e);
  if (!v) print_error("not JSON (%s): %.*s\n", e.text, (int)len, text);
  assert_non_null(v);
  assert_true(json_is_object(v));
  return v;
}

static void test_error_and_pong_replies(void **state) {
  (void)state;
  size_t len;
  char *t = rv_reply_error(NULL, RV_PROTO_WRONG_DIM, "quote \" and\nnewline", &len);
  assert_non_null(t);
  assert_int_equal(len, strlen(t));
  json_t *o = load(t, len);
  assert_string_equal(json_string_value(json_object_get(o, "type")), "error");
  assert_true(json_is_null(json_object_get(o, "id")));
  assert_string_equal(json_string_value(json_object_get(o, "code")), "wrong_dim");
  assert_string_equal(json_string_value(json_object_get(o, "message")), "quote \" and\nnewline");
  json_decref(o);
  free(t);

  /* a message cut in the middle of a UTF-8 sequence still gives valid JSON */
  t = rv_reply_error("\"e1\"", RV_PROTO_OVERLOADED, "caf\xC3", &len);
  o = load(t, len);
  assert_string_equal(json_string_value(json_object_get(o, "id")), "e1");
  assert_string_equal(json_string_value(json_object_get(o, "code")), "overloaded");
  assert_string_equal(json_string_value(json_object_get(o, "message")), "caf\xEF\xBF\xBD");
  json_decref(o);
  free(t);

  t = rv_reply_pong("17", 1700000000123LL, &len);
  o = load(t, len);
  assert_string_equal(json_string_value(json_object_get(o, "type")), "pong");
  assert_int_equal(json_integer_value(json_object_get(o, "id")), 17);
  assert_int_equal(json_integer_value(json_object_get(o, "timestamp")), 1700000000123LL);
  json_decref(o);
  free(t);

  for (int c = RV_PROTO_BAD_REQUEST; c <= RV_PROTO_INTERNAL; c++)
    assert_string_not_equal(rv_proto_code_name((rv_proto_code_t)c), "ok");
  assert_string_equal(rv_proto_code_name(RV_PROTO_UNKNOWN_COLLECTION), "unknown_collection");
  assert_string_equal(rv_proto_code_name(RV_PROTO_UNKNOWN_REGION), "unknown_region");
}

static void test_results_round_trip(void **state) {
  (void)state;
  rv_hit_t hits[4] = {
      {.id = "a", .metadata = "{\"color\":\"red\",\"n\":[1,2]}", .score = 1.5f},
      {.id = "b", .metadata = "not json {", .score = 0.1f},
      {.id = "c", .metadata = NULL, .score = 0.0f},
      {.id = "bad\xFF", .metadata = "42", .score = 123456.789f},
  };
  rv_hit_list_t list = {.hits = hits, .n = 4};
  size_t hl;
  char *h = rv_hits_json(&list, &hl);
  assert_non_null(h);
  assert_int_equal(hl, strlen(h));
  size_t len;
  char *t = rv_reply_results("\"q1\"", h, hl, 321, 1, (uint64_t)1 << 40, &len);
  free(h);
  json_t *o = load(t, len);
  free(t);
  assert_string_equal(json_string_value(json_object_get(o, "type")), "results");
  assert_string_equal(json_string_value(json_object_get(o, "id")), "q1");
  assert_int_equal(json_integer_value(json_object_get(o, "took_us")), 321);
  assert_true(json_is_true(json_object_get(o, "cached")));
  assert_int_equal(json_integer_value(json_object_get(o, "as_of")), (json_int_t)1 << 40);
  json_t *arr = json_object_get(o, "hits");
  assert_int_equal(json_array_size(arr), 4);

  json_t *a = json_array_get(arr, 0);
  assert_string_equal(json_string_value(json_object_get(a, "id")), "a");
  assert_true(json_real_value(json_object_get(a, "score")) == 1.5);
  json_t *meta = json_object_get(a, "metadata");
  assert_true(json_is_object(meta)); /* embedded, not a string */
  assert_string_equal(json_string_value(json_object_get(meta, "color")), "red");
  assert_int_equal(json_array_size(json_object_get(meta, "n")), 2);

  json_t *b = json_array_get(arr, 1);
  assert_true((float)json_number_value(json_object_get(b, "score")) ==
              0.1f); /* float round-trips */
  assert_string_equal(json_string_value(json_object_get(b, "metadata")), "not json {");

  json_t *c = json_array_get(arr, 2);
  assert_null(json_object_get(c, "metadata"));
  assert_true(json_number_value(json_object_get(c, "score")) == 0.0);

  json_t *d = json_array_get(arr, 3);
  assert_string_equal(json_string_value(json_object_get(d, "id")), "bad\xEF\xBF\xBD");
  assert_int_equal(json_integer_value(json_object_get(d, "metadata")), 42);
  assert_true((float)json_number_value(json_object_get(d, "score")) == 123456.789f);
  json_decref(o);

  /* empty hit list, not cached, id null */
  rv_hit_list_t empty = {0};
  h = rv_hits_json(&empty, &hl);
  assert_string_equal(h, "[]");
  t = rv_reply_results(NULL, h, hl, 0, 0, 0, &len);
  free(h);
  o = load(t, len);
  free(t);
  assert_true(json_is_null(json_object_get(o, "id")));
  assert_true(json_is_false(json_object_get(o, "cached")));
  assert_int_equal(json_array_size(json_object_get(o, "hits")), 0);
  json_decref(o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_search),
      cmocka_unit_test(test_search_defaults_and_numeric_id),
      cmocka_unit_test(test_ping),
      cmocka_unit_test(test_length_is_respected),
      cmocka_unit_test(test_invalid_json_and_shape),
      cmocka_unit_test(test_unknown_type),
      cmocka_unit_test(test_missing_and_invalid_fields),
      cmocka_unit_test(test_k_range),
      cmocka_unit_test(test_vector_elements),
      cmocka_unit_test(test_error_and_pong_replies),
      cmocka_unit_test(test_results_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
