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

/* ---- filters ---- */

static const char *search_with(const char *filter_json, char *buf, size_t size) {
  snprintf(buf, size, "{\"type\":\"search\",\"id\":\"f\",\"collection\":\"fashion\",\"vector\":[1,2],\"filter\":%s}",
           filter_json);
  return buf;
}

static void test_filter_parse(void **state) {
  (void)state;
  rv_request_t r;
  char msg[256], text[1024];
  assert_int_equal(parse(search_with("{\"class\":{\"in\":[\"Shirt\",\"Coat\"]},\"label\":3,"
                                     "\"price\":{\"gte\":1,\"lt\":5.5},\"brand\":{\"eq\":\"acme\"}}",
                                     text, sizeof text),
                         &r, msg, sizeof msg),
                   RV_PROTO_OK);
  assert_int_equal(r.n_filter, 4);
  int seen = 0;
  for (int i = 0; i < r.n_filter; i++) {
    const rv_filter_clause_t *c = &r.filter[i];
    if (!strcmp(c->field, "class")) {
      assert_int_equal(c->op, RV_FOP_IN);
      assert_int_equal(c->n_values, 2);
      assert_string_equal(c->values[0].string, "Shirt");
      assert_string_equal(c->values[1].string, "Coat");
      seen |= 1;
    } else if (!strcmp(c->field, "label")) {
      assert_int_equal(c->op, RV_FOP_EQ);
      assert_null(c->values[0].string);
      assert_true(c->values[0].number == 3.0);
      seen |= 2;
    } else if (!strcmp(c->field, "price")) {
      assert_int_equal(c->op, RV_FOP_RANGE);
      assert_int_equal(c->lo_kind, RV_BOUND_INCL);
      assert_int_equal(c->hi_kind, RV_BOUND_EXCL);
      assert_true(c->lo == 1.0 && c->hi == 5.5);
      seen |= 4;
    } else if (!strcmp(c->field, "brand")) {
      assert_int_equal(c->op, RV_FOP_EQ);
      assert_string_equal(c->values[0].string, "acme");
      seen |= 8;
    }
  }
  assert_int_equal(seen, 15);
  /* The cache key part is canonical: clause order does not matter, content does. */
  char *key = strdup(r.filter_key);
  rv_request_close(&r);
  assert_int_equal(parse(search_with("{\"brand\":{\"eq\":\"acme\"},\"price\":{\"lt\":5.5,\"gte\":1},\"label\":3,"
                                     "\"class\":{\"in\":[\"Shirt\",\"Coat\"]}}",
                                     text, sizeof text),
                         &r, msg, sizeof msg),
                   RV_PROTO_OK);
  assert_string_equal(r.filter_key, key);
  rv_request_close(&r);
  assert_int_equal(parse(search_with("{\"label\":4}", text, sizeof text), &r, msg, sizeof msg), RV_PROTO_OK);
  assert_string_not_equal(r.filter_key, key);
  rv_request_close(&r);
  free(key);
  /* No filter, null and {} all mean unfiltered. */
  const char *none[] = {"null", "{}"};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(parse(search_with(none[i], text, sizeof text), &r, msg, sizeof msg), RV_PROTO_OK);
    assert_int_equal(r.n_filter, 0);
    assert_null(r.filter_key);
    rv_request_close(&r);
  }
}

static void test_filter_syntax_errors(void **state) {
  (void)state;
  char text[1024];
  struct {
    const char *filter, *msg_part;
  } bad[] = {
      {"[1]", "must be an object"},
      {"\"label\"", "must be an object"},
      {"{\"label\":true}", "strings or numbers"},
      {"{\"label\":null}", "strings or numbers"},
      {"{\"label\":[1,2]}", "strings or numbers"},
      {"{\"label\":{}}", "empty condition"},
      {"{\"label\":{\"like\":\"x\"}}", "unknown operator \"like\""},
      {"{\"label\":{\"in\":[]}}", "array of 1.."},
      {"{\"label\":{\"in\":\"Coat\"}}", "array of 1.."},
      {"{\"label\":{\"in\":[\"a\",{}]}}", "strings or numbers"},
      {"{\"label\":{\"gte\":\"1\"}}", "takes a number"},
      {"{\"label\":{\"gte\":1,\"gt\":2}}", "more than one lower bound"},
      {"{\"label\":{\"lt\":1,\"lte\":2}}", "more than one upper bound"},
      {"{\"label\":{\"eq\":1,\"lt\":2}}", "cannot be combined"},
      {"{\"label\":{\"in\":[1],\"eq\":2}}", "cannot be combined"},
      {"{\"\":1}", "1..63 bytes"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_error(search_with(bad[i].filter, text, sizeof text), RV_PROTO_BAD_FILTER, "\"f\"", bad[i].msg_part);
  assert_string_equal(rv_proto_code_name(RV_PROTO_BAD_FILTER), "bad_filter");
}

/* Builds r's filter over fields label (number) and class (keyword); returns
 * the code, leaves the filter in *out (caller destroys) and msg. */
static rv_proto_code_t build(const char *filter_json, rv_attrs_t *a, rv_filter_t **out, char *msg, size_t size) {
  char text[1024];
  rv_request_t r;
  rv_proto_code_t code = parse(search_with(filter_json, text, sizeof text), &r, msg, size);
  assert_int_equal(code, RV_PROTO_OK);
  int n;
  const rv_field_conf_t *fields = rv_attrs_fields(a, &n);
  *out = rv_filter_new(a);
  assert_non_null(*out);
  code = rv_request_filter_build(&r, fields, n, *out, msg, size);
  rv_request_close(&r);
  return code;
}

static void test_filter_build(void **state) {
  (void)state;
  rv_field_conf_t fields[2] = {{"label", RV_FIELD_NUMBER}, {"class", RV_FIELD_KEYWORD}};
  char errstr[256];
  rv_attrs_t *a = rv_attrs_new(fields, 2, errstr, sizeof errstr);
  assert_non_null(a);
  /* slot i: label i, class "c<i % 3>" except slot 4 whose class is "7" */
  for (uint32_t i = 0; i < 6; i++) {
    char cls[8];
    snprintf(cls, sizeof cls, i == 4 ? "7" : "c%u", i % 3);
    rv_attr_value_t v[2] = {{"label", NULL, (double)i}, {"class", cls, NAN}};
    assert_int_equal(rv_attrs_set(a, i, v, 2, errstr, sizeof errstr), RV_OK);
  }
  struct {
    const char *filter;
    unsigned want; /* bit i: slot i matches */
  } good[] = {
      {"{\"label\":3}", 1u << 3},
      {"{\"label\":{\"eq\":2}}", 1u << 2},
      {"{\"label\":{\"gte\":1,\"lt\":4}}", 0xEu},
      {"{\"label\":{\"gt\":1}}", 0x3Cu},
      {"{\"class\":\"c1\"}", (1u << 1)},
      {"{\"class\":{\"in\":[\"c0\",\"c2\",\"nope\"]}}", (1u << 0) | (1u << 2) | (1u << 3) | (1u << 5)},
      {"{\"class\":7}", 1u << 4}, /* integers name keyword values by their decimal text */
      {"{\"class\":{\"in\":[\"c0\",7]},\"label\":{\"lte\":3}}", (1u << 0) | (1u << 3)},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    rv_filter_t *f;
    char msg[256];
    rv_proto_code_t code = build(good[i].filter, a, &f, msg, sizeof msg);
    if (code) print_error("%s: %s\n", good[i].filter, msg);
    assert_int_equal(code, RV_PROTO_OK);
    unsigned got = 0;
    for (uint32_t s = 0; s < 6; s++) got |= (unsigned)rv_filter_matches(f, a, s) << s;
    if (got != good[i].want) print_error("%s: matches 0x%x, want 0x%x\n", good[i].filter, got, good[i].want);
    assert_int_equal(got, good[i].want);
    rv_filter_destroy(f);
  }
  struct {
    const char *filter, *msg_part;
  } bad[] = {
      {"{\"colour\":\"red\"}", "unknown filter field \"colour\" (declared: label, class)"},
      {"{\"label\":\"three\"}", "number field takes numbers"},
      {"{\"label\":{\"in\":[1,2]}}", "\"in\" applies to keyword fields"},
      {"{\"class\":{\"gte\":1}}", "ranges apply to number fields"},
      {"{\"class\":2.5}", "keyword field takes strings (or integers)"},
      {"{\"class\":{\"in\":[\"a\",1e300]}}", "keyword field takes strings"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rv_filter_t *f;
    char msg[256] = "";
    rv_proto_code_t code = build(bad[i].filter, a, &f, msg, sizeof msg);
    if (code != RV_PROTO_BAD_FILTER || !strstr(msg, bad[i].msg_part))
      print_error("%s: %s \"%s\", want bad_filter \"%s\"\n", bad[i].filter, rv_proto_code_name(code), msg,
                  bad[i].msg_part);
    assert_int_equal(code, RV_PROTO_BAD_FILTER);
    assert_non_null(strstr(msg, bad[i].msg_part));
    rv_filter_destroy(f);
  }
  /* A collection without fields says so. */
  rv_attrs_t *none = rv_attrs_new(NULL, 0, errstr, sizeof errstr);
  assert_non_null(none);
  rv_filter_t *f;
  char msg[256];
  assert_int_equal(build("{\"label\":1}", none, &f, msg, sizeof msg), RV_PROTO_BAD_FILTER);
  assert_non_null(strstr(msg, "declares no fields"));
  rv_filter_destroy(f);
  rv_attrs_destroy(none);
  rv_attrs_destroy(a);
}

static void test_after_parse(void **state) {
  (void)state;
  rv_request_t r;
  char msg[256];
  const char *ok = "{\"type\":\"search\",\"id\":1,\"collection\":\"c\",\"vector\":[1],"
                   "\"after\":{\"partition\":3,\"offset\":9007199254740993}}";
  assert_int_equal(parse(ok, &r, msg, sizeof msg), RV_PROTO_OK);
  assert_int_equal(r.has_after, 1);
  assert_int_equal(r.after_partition, 3);
  assert_true(r.after_offset == 9007199254740993LL);
  rv_request_close(&r);
  assert_int_equal(parse("{\"type\":\"search\",\"id\":1,\"collection\":\"c\",\"vector\":[1],\"after\":null}", &r, msg,
                         sizeof msg),
                   RV_PROTO_OK);
  assert_int_equal(r.has_after, 0);
  rv_request_close(&r);
#define AFTER(x) "{\"type\":\"search\",\"id\":\"a\",\"collection\":\"c\",\"vector\":[1],\"after\":" x "}"
  expect_error(AFTER("5"), RV_PROTO_BAD_REQUEST, "\"a\"", "\"after\" must be an object");
  expect_error(AFTER("[0,1]"), RV_PROTO_BAD_REQUEST, "\"a\"", "\"after\" must be an object");
  expect_error(AFTER("{\"offset\":1}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.partition");
  expect_error(AFTER("{\"partition\":-1,\"offset\":1}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.partition");
  expect_error(AFTER("{\"partition\":2147483648,\"offset\":1}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.partition");
  expect_error(AFTER("{\"partition\":\"0\",\"offset\":1}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.partition");
  expect_error(AFTER("{\"partition\":0}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.offset");
  expect_error(AFTER("{\"partition\":0,\"offset\":-5}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.offset");
  expect_error(AFTER("{\"partition\":0,\"offset\":1.5}"), RV_PROTO_BAD_REQUEST, "\"a\"", "after.offset");
#undef AFTER
}

/* The request forwarded to a shard parses back to the same search. */
static void test_search_json_round_trip(void **state) {
  (void)state;
  rv_request_t a, b;
  char msg[256];
  const char *text = "{\"type\":\"search\",\"id\":\"x\",\"collection\":\"fa\\u00e9\",\"region\":\"eu\","
                     "\"vector\":[0.1,-3.4028234e38,1e-45,7],\"k\":17,\"ef\":99,"
                     "\"filter\":{\"b\":{\"in\":[\"x\",2]},\"a\":{\"gte\":0.1,\"lt\":5}},"
                     "\"after\":{\"partition\":2,\"offset\":41}}";
  assert_int_equal(parse(text, &a, msg, sizeof msg), RV_PROTO_OK);
  size_t len = 0;
  char *fwd = rv_request_search_json(&a, &len);
  assert_non_null(fwd);
  assert_int_equal(strlen(fwd), len);
  assert_null(strstr(fwd, "\"id\""));
  assert_null(strstr(fwd, "region"));
  /* add an id as the remote client does */
  char with_id[1024];
  snprintf(with_id, sizeof with_id, "{\"id\":5,%s", fwd + 1);
  assert_int_equal(parse(with_id, &b, msg, sizeof msg), RV_PROTO_OK);
  assert_string_equal(b.collection, a.collection);
  assert_int_equal(b.dim, a.dim);
  assert_memory_equal(b.vector, a.vector, sizeof(float) * (size_t)a.dim); /* float32 exact */
  assert_int_equal(b.k, 17);
  assert_int_equal(b.ef, 99);
  assert_string_equal(b.filter_key, a.filter_key);
  assert_int_equal(b.has_after, 1);
  assert_int_equal(b.after_partition, 2);
  assert_true(b.after_offset == 41);
  free(fwd);
  rv_request_close(&a);
  rv_request_close(&b);
  /* without ef, filter, after */
  assert_int_equal(parse("{\"type\":\"search\",\"id\":1,\"collection\":\"c\",\"vector\":[1]}", &a, msg, sizeof msg),
                   RV_PROTO_OK);
  fwd = rv_request_search_json(&a, &len);
  assert_string_equal(fwd, "{\"type\":\"search\",\"collection\":\"c\",\"vector\":[1],\"k\":10}");
  free(fwd);
  rv_request_close(&a);
}

static void test_not_yet_visible_reply(void **state) {
  (void)state;
  assert_string_equal(rv_proto_code_name(RV_PROTO_NOT_YET_VISIBLE), "not_yet_visible");
  assert_int_equal(rv_proto_code_parse("not_yet_visible"), RV_PROTO_NOT_YET_VISIBLE);
  assert_int_equal(rv_proto_code_parse("bad_filter"), RV_PROTO_BAD_FILTER);
  assert_int_equal(rv_proto_code_parse("no such code"), RV_PROTO_INTERNAL);
  assert_int_equal(rv_proto_code_parse(NULL), RV_PROTO_INTERNAL);
  size_t len = 0;
  char *t = rv_reply_error_extra("\"q\"", RV_PROTO_NOT_YET_VISIBLE, "late", "\"positions\":{\"0\":12}", &len);
  assert_string_equal(t, "{\"type\":\"error\",\"id\":\"q\",\"code\":\"not_yet_visible\",\"message\":\"late\","
                         "\"positions\":{\"0\":12}}");
  assert_int_equal(strlen(t), len);
  free(t);
  t = rv_reply_error_extra(NULL, RV_PROTO_OVERLOADED, "busy", NULL, &len);
  assert_string_equal(t, "{\"type\":\"error\",\"id\":null,\"code\":\"overloaded\",\"message\":\"busy\"}");
  free(t);
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
      cmocka_unit_test(test_filter_parse),
      cmocka_unit_test(test_filter_syntax_errors),
      cmocka_unit_test(test_filter_build),
      cmocka_unit_test(test_after_parse),
      cmocka_unit_test(test_search_json_round_trip),
      cmocka_unit_test(test_not_yet_visible_reply),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
