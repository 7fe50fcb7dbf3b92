/* Unit tests of ingest/rv_batch: latest record per id, offsets per partition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_batch.h"

static void rec(rv_vector_record_t *r, const char *id, float v0) {
  rv_vector_record_init(r);
  r->id = strdup(id);
  r->id_len = strlen(id);
  r->vector = malloc(sizeof(float));
  r->vector[0] = v0;
  r->dim = 1;
}

static void test_latest_per_id(void **state) {
  (void)state;
  rv_batch_t b;
  rv_batch_init(&b);
  rv_vector_record_t r;
  rec(&r, "a", 1);
  assert_int_equal(RV_OK, rv_batch_add(&b, &r, 0, 10, 1000, NULL));
  assert_null(r.id); /* ownership moved */
  rec(&r, "b", 2);
  assert_int_equal(RV_OK, rv_batch_add(&b, &r, 1, 5, 2000, strdup("00-trace-01")));
  rec(&r, "a", 3);
  assert_int_equal(RV_OK, rv_batch_add(&b, &r, 0, 11, 9000, NULL));

  assert_int_equal(2, b.n_rows);
  assert_int_equal(3, b.n_accepted);
  rv_batch_row_t *a = rv_batch_find(&b, "a", 1);
  assert_non_null(a);
  assert_true(a->rec.vector[0] == 3.0f); /* the later record wins */
  assert_int_equal(11, a->offset);
  assert_int_equal(1000, a->pin_ms); /* but the first sight pins */
  rv_batch_row_t *bb = rv_batch_find(&b, "b", 1);
  assert_non_null(bb);
  assert_string_equal("00-trace-01", bb->traceparent);
  assert_null(rv_batch_find(&b, "c", 1));
  assert_null(rv_batch_find(&b, "ab", 2));
  rv_batch_close(&b);
}

static void test_many_ids_grow(void **state) {
  (void)state;
  rv_batch_t b;
  rv_batch_init(&b);
  char id[32];
  for (int round = 0; round < 2; round++)
    for (int i = 0; i < 5000; i++) {
      rv_vector_record_t r;
      snprintf(id, sizeof id, "id-%d", i);
      rec(&r, id, (float)(round * 10000 + i));
      assert_int_equal(RV_OK, rv_batch_add(&b, &r, 0, round * 5000 + i, 0, NULL));
    }
  assert_int_equal(5000, b.n_rows);
  assert_int_equal(10000, b.n_accepted);
  for (int i = 0; i < 5000; i += 97) {
    snprintf(id, sizeof id, "id-%d", i);
    rv_batch_row_t *row = rv_batch_find(&b, id, strlen(id));
    assert_non_null(row);
    assert_int_equal(10000 + i, (int)row->rec.vector[0]);
  }
  rv_batch_clear(&b);
  assert_int_equal(0, b.n_rows);
  assert_null(rv_batch_find(&b, "id-1", 4));
  rv_batch_close(&b);
}

static void test_positions(void **state) {
  (void)state;
  rv_batch_t b;
  rv_batch_init(&b);
  assert_int_equal(RV_OK, rv_batch_consumed(&b, 2, 100, 100));
  assert_true(b.opened_ms > 0);
  assert_int_equal(RV_OK, rv_batch_consumed(&b, 0, 7, -1));
  assert_int_equal(RV_OK, rv_batch_consumed(&b, 2, 101, 55)); /* expected_next only taken the first time */
  assert_int_equal(3, b.n_messages);
  assert_int_equal(2, b.n_pos);
  assert_int_equal(2, b.pos[0].partition);
  assert_int_equal(100, b.pos[0].expected_next);
  assert_int_equal(102, b.pos[0].next_offset);
  assert_int_equal(0, b.pos[1].partition);
  assert_int_equal(-1, b.pos[1].expected_next);
  assert_int_equal(8, b.pos[1].next_offset);
  rv_batch_clear(&b);
  assert_int_equal(0, b.n_pos);
  assert_int_equal(0, b.n_messages);
  rv_batch_close(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_latest_per_id),
      cmocka_unit_test(test_many_ids_grow),
      cmocka_unit_test(test_positions),
  };
  return cmocka_run_group_tests_name("batch", tests, NULL, NULL);
}
