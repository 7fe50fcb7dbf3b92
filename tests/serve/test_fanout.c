/* rv_fanout: the merge of shard answers (score then id, duplicates, k) and
 * the one reply a fan-out sends: complete, partial with the missing shards,
 * or the client's error when a shard reports one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "rv_fanout.h"

static void test_merge(void **state) {
  (void)state;
  json_t *l[3] = {
      json_loads("[{\"id\":\"b\",\"score\":0.5},{\"id\":\"d\",\"score\":2,\"metadata\":{\"x\":1}}]", 0, NULL),
      json_loads("[{\"id\":\"a\",\"score\":0.5},{\"id\":\"c\",\"score\":1},{\"id\":\"b\",\"score\":3}]", 0, NULL),
      json_loads("[{\"id\":5,\"score\":0},{\"score\":0}]", 0, NULL), /* unusable hits are dropped */
  };
  size_t len = 0;
  char *t = rv_hits_merge(l, 3, 10, &len);
  assert_string_equal(t, "[{\"id\":\"a\",\"score\":0.5},{\"id\":\"b\",\"score\":0.5},{\"id\":\"c\",\"score\":1},"
                         "{\"id\":\"d\",\"score\":2,\"metadata\":{\"x\":1}}]");
  assert_int_equal(strlen(t), len);
  free(t);
  t = rv_hits_merge(l, 3, 2, &len);
  assert_string_equal(t, "[{\"id\":\"a\",\"score\":0.5},{\"id\":\"b\",\"score\":0.5}]");
  free(t);
  json_t *none[2] = {NULL, NULL};
  t = rv_hits_merge(none, 2, 5, &len);
  assert_string_equal(t, "[]");
  free(t);
  for (int i = 0; i < 3; i++) json_decref(l[i]);
}

static json_t *take_one(rv_completions_t *q) {
  rv_msg_t *m = rv_completions_take(q);
  assert_non_null(m);
  assert_null(m->next);
  assert_int_equal(m->conn, 7);
  json_t *j = json_loads((const char *)m->text, 0, NULL);
  assert_non_null(j);
  free(m);
  return j;
}

static void test_replies(void **state) {
  (void)state;
  rv_completions_t *q = rv_completions_new(NULL, NULL);
  /* complete */
  rv_fanout_t *f = rv_fanout_new(2, 1, "\"r1\"", 7, 0, q, 16);
  rv_fanout_hits(f, 1, "[{\"id\":\"x\",\"score\":2}]", 22, 5);
  assert_null(rv_completions_take(q)); /* nothing before the last shard */
  rv_fanout_hits(f, 0, "[{\"id\":\"y\",\"score\":1}]", 22, 4);
  json_t *r = take_one(q);
  assert_string_equal(json_string_value(json_object_get(r, "id")), "r1");
  assert_int_equal(json_array_size(json_object_get(r, "hits")), 1);
  assert_true(json_is_false(json_object_get(r, "partial")));
  assert_int_equal(json_integer_value(json_object_get(r, "as_of")), 9);
  json_decref(r);
  /* partial: a failed shard and a remote error that is not the client's */
  f = rv_fanout_new(3, 5, "2", 7, 0, q, 0);
  rv_fanout_error(f, 2, RV_PROTO_INTERNAL, "no answer within the deadline", NULL);
  json_t *remote = json_loads("{\"type\":\"error\",\"id\":9,\"code\":\"overloaded\",\"message\":\"busy\"}", 0, NULL);
  rv_fanout_reply(f, 0, remote);
  json_decref(remote);
  rv_fanout_hits(f, 1, "[{\"id\":\"x\",\"score\":2}]", 22, 1);
  r = take_one(q);
  assert_true(json_is_true(json_object_get(r, "partial")));
  json_t *missing = json_object_get(r, "missing_shards");
  assert_int_equal(json_array_size(missing), 2);
  assert_int_equal(json_integer_value(json_array_get(missing, 0)), 0);
  assert_int_equal(json_integer_value(json_array_get(missing, 1)), 2);
  assert_non_null(strstr(json_string_value(json_array_get(json_object_get(r, "shard_errors"), 1)), "deadline"));
  assert_int_equal(json_array_size(json_object_get(r, "hits")), 1);
  json_decref(r);
  /* a client error from any shard is the reply, positions included */
  f = rv_fanout_new(2, 5, "3", 7, 0, q, 0);
  remote = json_loads("{\"type\":\"error\",\"id\":1,\"code\":\"not_yet_visible\",\"message\":\"m\","
                      "\"positions\":{\"0\":4}}", 0, NULL);
  rv_fanout_reply(f, 1, remote);
  json_decref(remote);
  rv_fanout_hits(f, 0, "[]", 2, 1);
  r = take_one(q);
  assert_string_equal(json_string_value(json_object_get(r, "code")), "not_yet_visible");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "positions"), "0")), 4);
  json_decref(r);
  /* a reply that is neither results nor error marks the shard missing */
  f = rv_fanout_new(1, 5, NULL, 7, 0, q, 0);
  remote = json_loads("{\"type\":\"pong\"}", 0, NULL);
  rv_fanout_reply(f, 0, remote);
  json_decref(remote);
  r = take_one(q);
  assert_true(json_is_null(json_object_get(r, "id")));
  assert_true(json_is_true(json_object_get(r, "partial")));
  json_decref(r);
  rv_completions_destroy(q);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_merge), cmocka_unit_test(test_replies)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
