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
#include "rv_pgutil.h"

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

/* Sources: a test "message" is a malloc'd int; freed counts the frees. */
static int freed;
static void free_int(void *p) {
  freed++;
  free(p);
}
static void *src_of(int v) {
  int *p = malloc(sizeof *p);
  *p = v;
  return p;
}
static void collect(void *src, void *arg) {
  int *out = arg;
  out[++out[0]] = *(int *)src;
}

/* Every record of a dropped row is accounted for and its sources (the replaced ones too) freed; the rest stay. */
static void test_sources_and_drop(void **state) {
  (void)state;
  rv_batch_t b;
  rv_batch_init(&b);
  b.free_src = free_int;
  freed = 0;
  rv_vector_record_t r;
  const char *ids[] = {"a", "b", "a", "c", "a", "d"};
  for (int i = 0; i < 6; i++) {
    rec(&r, ids[i], (float)i);
    assert_int_equal(RV_OK, rv_batch_add_src(&b, &r, 0, i, 1000, NULL, src_of(i)));
    assert_int_equal(RV_OK, rv_batch_consumed(&b, 0, i, 0));
  }
  assert_int_equal(4, b.n_rows);
  assert_int_equal(6, b.n_accepted);
  assert_int_equal(0, freed); /* replaced records keep their sources */
  int got[8] = {0};
  assert_int_equal(3, rv_batch_row_sources(&b, 0, collect, got)); /* "a": oldest first */
  assert_int_equal(3, got[0]);
  assert_int_equal(0, got[1]);
  assert_int_equal(2, got[2]);
  assert_int_equal(4, got[3]);
  assert_int_equal(1, rv_batch_row_sources(&b, 1, NULL, NULL));

  b.n_coded = b.n_rows; /* codes made: a drop must invalidate them */
  uint8_t drop[4] = {1, 0, 1, 0}; /* "a" (3 records) and "c" */
  assert_int_equal(RV_OK, rv_batch_drop_rows(&b, drop));
  assert_int_equal(4, freed);
  assert_int_equal(2, b.n_rows);
  assert_int_equal(0, b.n_coded);
  assert_int_equal(2, b.n_accepted);
  assert_int_equal(4, b.n_rejected);
  assert_int_equal(6, b.n_messages);
  assert_string_equal("b", b.rows[0].rec.id);
  assert_string_equal("d", b.rows[1].rec.id);
  assert_null(rv_batch_find(&b, "a", 1));
  assert_ptr_equal(&b.rows[1], rv_batch_find(&b, "d", 1));

  /* A view: rows shared, an index of its own. */
  rv_batch_t v;
  assert_int_equal(RV_OK, rv_batch_view(&b, 1, 1, &v));
  assert_int_equal(1, v.n_rows);
  assert_ptr_equal(&b.rows[1], rv_batch_find(&v, "d", 1));
  assert_null(rv_batch_find(&v, "b", 1));
  rv_batch_view_close(&v);
  assert_int_equal(RV_ERR_INVALID, rv_batch_view(&b, 1, 2, &v));

  rv_batch_clear(&b);
  assert_int_equal(6, freed);
  rv_batch_close(&b);
}

/* rv_pg_check's errstr split back into SQLSTATE and primary message; which SQLSTATEs are data errors. */
static void test_pg_errstr(void **state) {
  (void)state;
  char st[6], msg[128];
  rv_pg_errstr_split("P0001 ERROR:  rv test: id f-1 is refused [COPY new rows / COMMIT]", st, msg, sizeof msg);
  assert_string_equal("P0001", st);
  assert_string_equal("rv test: id f-1 is refused", msg);
  rv_pg_errstr_split("23505 ERROR:  duplicate key [x] in it [rv_upsert]", st, msg, sizeof msg);
  assert_string_equal("23505", st);
  assert_string_equal("duplicate key [x] in it", msg);
  rv_pg_errstr_split("connecting to PostgreSQL: no such file", st, msg, sizeof msg);
  assert_string_equal("", st);
  assert_string_equal("connecting to PostgreSQL: no such file", msg);
  assert_true(rv_pg_is_data_error("P0001"));
  assert_true(rv_pg_is_data_error("23514"));
  assert_true(rv_pg_is_data_error("22P02"));
  assert_false(rv_pg_is_data_error("40001")); /* serialization failure */
  assert_false(rv_pg_is_data_error("40P01")); /* deadlock */
  assert_false(rv_pg_is_data_error("08006")); /* connection failure */
  assert_false(rv_pg_is_data_error("P0002"));
  assert_false(rv_pg_is_data_error(""));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_latest_per_id),
      cmocka_unit_test(test_many_ids_grow),
      cmocka_unit_test(test_positions),
      cmocka_unit_test(test_sources_and_drop),
      cmocka_unit_test(test_pg_errstr),
  };
  return cmocka_run_group_tests_name("batch", tests, NULL, NULL);
}
