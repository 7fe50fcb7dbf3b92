#ifndef RV_BATCH_FIXTURE_H
#define RV_BATCH_FIXTURE_H
/* Batches built by hand for the writer tests that run without Kafka
 * (test_pg_partitions, test_pgwriter_flight). Include after <cmocka.h>. */
#include <stdlib.h>
#include <string.h>

#include "rv_batch.h"

/* Adds a record of id at (part, off) to b, the batch expecting the stored
 * next offset of part to be expected (-1: none). An upsert carries a dim-long
 * vector salt, salt + 1, ... and the metadata {"tag": "t"}; a delete carries
 * nothing. */
static inline void test_batch_add_row(rv_batch_t *b, int dim, const char *id, rv_op_t op, float salt,
                                      int64_t pin_ms, int32_t part, int64_t off, int64_t expected) {
  rv_vector_record_t rec;
  rv_vector_record_init(&rec);
  rec.id = strdup(id);
  rec.id_len = strlen(id);
  rec.op = op;
  if (op == RV_OP_UPSERT) {
    rec.vector = malloc((size_t)dim * sizeof(float));
    for (int k = 0; k < dim; k++) rec.vector[k] = salt + (float)k;
    rec.dim = dim;
    rec.metadata = strdup("{\"tag\": \"t\"}");
  }
  assert_int_equal(RV_OK, rv_batch_add(b, &rec, part, off, pin_ms, NULL));
  assert_int_equal(RV_OK, rv_batch_consumed(b, part, off, expected));
}

/* Gives every row of b a code_size-byte SQ8 code whose bytes are its salt
 * (first vector element; 0 for a delete). */
static inline void test_batch_add_codes(rv_batch_t *b, int32_t version, size_t code_size) {
  b->sq8 = realloc(b->sq8, b->n_rows * code_size);
  b->sq8_size = code_size;
  b->sq8_version = version;
  for (size_t i = 0; i < b->n_rows; i++)
    memset(b->sq8 + i * code_size, b->rows[i].rec.vector ? (int)b->rows[i].rec.vector[0] : 0, code_size);
  b->n_coded = b->n_rows;
}

#endif
