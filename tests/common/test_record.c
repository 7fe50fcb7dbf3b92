/* The Avro codec: round trips, the exact wire bytes of a small record, and
 * rejection of malformed input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_record.h"

static char errstr[256];

static int setup(void **state) {
  *state = rv_codec_new(errstr, sizeof errstr);
  return *state ? 0 : -1;
}

static int teardown(void **state) {
  rv_codec_destroy(*state);
  return 0;
}

static void test_vector_round_trip(void **state) {
  rv_codec_t *c = *state;
  float v[5] = {1.5f, -2.0f, 0.0f, 1e-30f, 3.25f};
  rv_vector_record_t r = {.id = "vec-1", .id_len = 5, .op = RV_OP_UPSERT, .vector = v, .dim = 5,
                          .metadata = "{\"label\":3}", .has_event_time = 1, .event_time_ms = 1732400000123};
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(rv_codec_encode_vector(c, &r, &b, errstr, sizeof errstr), RV_OK);
  rv_vector_record_t out;
  assert_int_equal(rv_codec_decode_vector(c, b.base, b.len, &out, errstr, sizeof errstr), RV_OK);
  assert_string_equal(out.id, "vec-1");
  assert_int_equal(out.id_len, 5);
  assert_int_equal(out.op, RV_OP_UPSERT);
  assert_int_equal(out.dim, 5);
  assert_memory_equal(out.vector, v, sizeof v);
  assert_string_equal(out.metadata, "{\"label\":3}");
  assert_int_equal(out.has_event_time, 1);
  assert_int_equal(out.event_time_ms, 1732400000123);
  rv_vector_record_close(&out);
  rv_buf_close(&b);
}

/* The bytes any Avro implementation must produce for this record, written out
 * by hand from the spec: zig-zag varints, unions as branch index + value. */
static void test_vector_wire_bytes(void **state) {
  rv_codec_t *c = *state;
  rv_vector_record_t r = {.id = "a", .id_len = 1, .op = RV_OP_DELETE};
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(rv_codec_encode_vector(c, &r, &b, errstr, sizeof errstr), RV_OK);
  const uint8_t want[] = {0x02, 'a', 0x02 /* DELETE */, 0x00 /* vector null */, 0x00 /* metadata null */,
                          0x00 /* event_time null */};
  assert_int_equal(b.len, sizeof want);
  assert_memory_equal(b.base, want, sizeof want);

  float one = 1.0f;
  rv_buf_reset(&b);
  r.op = RV_OP_UPSERT;
  r.vector = &one;
  r.dim = 1;
  assert_int_equal(rv_codec_encode_vector(c, &r, &b, errstr, sizeof errstr), RV_OK);
  const uint8_t want2[] = {0x02, 'a', 0x00, 0x02 /* branch 1 */, 0x02 /* 1 item */, 0x00, 0x00, 0x80, 0x3f,
                           0x00 /* end of array */, 0x00, 0x00};
  assert_int_equal(b.len, sizeof want2);
  assert_memory_equal(b.base, want2, sizeof want2);
  rv_buf_close(&b);
}

static void test_vector_rejects_malformed(void **state) {
  rv_codec_t *c = *state;
  float v[3] = {1, 2, 3};
  rv_vector_record_t r = {.id = "abc", .id_len = 3, .vector = v, .dim = 3};
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(rv_codec_encode_vector(c, &r, &b, errstr, sizeof errstr), RV_OK);
  rv_vector_record_t out;
  for (size_t cut = 0; cut < b.len; cut++) {
    rv_err_t err = rv_codec_decode_vector(c, b.base, cut, &out, errstr, sizeof errstr);
    if (err == RV_OK) fail_msg("truncated at %zu of %zu decoded", cut, b.len);
    assert_null(out.id);
  }
  uint8_t extra[64];
  memcpy(extra, b.base, b.len);
  extra[b.len] = 0x00;
  assert_int_equal(rv_codec_decode_vector(c, extra, b.len + 1, &out, errstr, sizeof errstr), RV_ERR_CORRUPT);
  assert_non_null(strstr(errstr, "trailing"));
  const uint8_t bad_union[] = {0x02, 'a', 0x00, 0x08 /* branch 4 */};
  assert_int_equal(rv_codec_decode_vector(c, bad_union, sizeof bad_union, &out, errstr, sizeof errstr),
                   RV_ERR_CORRUPT);
  const uint8_t bad_enum[] = {0x02, 'a', 0x0a /* symbol 5 */, 0x00, 0x00, 0x00};
  assert_int_equal(rv_codec_decode_vector(c, bad_enum, sizeof bad_enum, &out, errstr, sizeof errstr),
                   RV_ERR_CORRUPT);
  rv_buf_close(&b);
}

static void test_change_round_trip(void **state) {
  rv_codec_t *c = *state;
  float v[2] = {0.5f, NAN};
  uint8_t code[3] = {1, 2, 255};
  rv_change_t ch = {.id = "x", .op = RV_OP_UPSERT, .src_partition = 2, .src_offset = 123456789012LL,
                    .vector = v, .dim = 2, .sq8_code = code, .sq8_len = 3, .sq8_version = 7,
                    .attributes = "{}", .has_event_time = 0, .created_at_ms = 42,
                    .traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(rv_codec_encode_change(c, &ch, &b, errstr, sizeof errstr), RV_OK);
  rv_change_t out;
  assert_int_equal(rv_codec_decode_change(c, b.base, b.len, &out, errstr, sizeof errstr), RV_OK);
  assert_string_equal(out.id, "x");
  assert_int_equal(out.src_partition, 2);
  assert_int_equal(out.src_offset, 123456789012LL);
  assert_int_equal(out.dim, 2);
  assert_true(out.vector[0] == 0.5f && isnan(out.vector[1]));
  assert_int_equal(out.sq8_len, 3);
  assert_memory_equal(out.sq8_code, code, 3);
  assert_int_equal(out.sq8_version, 7);
  assert_string_equal(out.attributes, "{}");
  assert_int_equal(out.has_event_time, 0);
  assert_int_equal(out.created_at_ms, 42);
  assert_string_equal(out.traceparent, ch.traceparent);
  rv_change_close(&out);

  /* A delete carries no vector and no code. */
  rv_change_t del = {.id = "x", .op = RV_OP_DELETE, .src_partition = 0, .src_offset = 9, .created_at_ms = 1};
  rv_buf_reset(&b);
  assert_int_equal(rv_codec_encode_change(c, &del, &b, errstr, sizeof errstr), RV_OK);
  assert_int_equal(rv_codec_decode_change(c, b.base, b.len, &out, errstr, sizeof errstr), RV_OK);
  assert_int_equal(out.op, RV_OP_DELETE);
  assert_null(out.vector);
  assert_null(out.sq8_code);
  assert_null(out.attributes);
  rv_change_close(&out);
  rv_buf_close(&b);
}

static void test_confluent_framing(void **state) {
  (void)state;
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(rv_confluent_put_header(&b, 0x01020304), RV_OK);
  const uint8_t want[] = {0, 1, 2, 3, 4};
  assert_memory_equal(b.base, want, 5);
  uint32_t id = 0;
  size_t off = 0;
  assert_int_equal(rv_confluent_parse(b.base, b.len, &id, &off), 1);
  assert_int_equal(id, 0x01020304);
  assert_int_equal(off, 5);
  const uint8_t plain[] = {0x02, 'a', 0, 0, 0, 0};
  assert_int_equal(rv_confluent_parse(plain, sizeof plain, &id, &off), 0);
  assert_int_equal(rv_confluent_parse(want, 4, &id, &off), 0); /* too short */
  rv_buf_close(&b);
}

/* Length prefixes larger than the input must be refused before anything is
 * allocated for them; random bytes must never crash the decoder. */
static void test_hostile_lengths(void **state) {
  rv_codec_t *c = *state;
  rv_vector_record_t out;
  rv_change_t ch;
  /* id claims 2^40 bytes */
  const uint8_t huge_id[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 'a'};
  assert_int_equal(rv_codec_decode_vector(c, huge_id, sizeof huge_id, &out, errstr, sizeof errstr),
                   RV_ERR_CORRUPT);
  /* array claims 2^30 floats */
  const uint8_t huge_array[] = {0x02, 'a', 0x00, 0x02, 0x80, 0x80, 0x80, 0x80, 0x08, 0, 0, 0, 0};
  assert_int_equal(rv_codec_decode_vector(c, huge_array, sizeof huge_array, &out, errstr, sizeof errstr),
                   RV_ERR_CORRUPT);
  /* an endless varint */
  uint8_t endless[32];
  memset(endless, 0xff, sizeof endless);
  assert_int_equal(rv_codec_decode_vector(c, endless, sizeof endless, &out, errstr, sizeof errstr),
                   RV_ERR_CORRUPT);
  srand(12345);
  uint8_t buf[96];
  for (int i = 0; i < 20000; i++) {
    size_t n = (size_t)(rand() % (int)sizeof buf);
    for (size_t j = 0; j < n; j++) buf[j] = (uint8_t)rand();
    if (rv_codec_decode_vector(c, buf, n, &out, errstr, sizeof errstr) == RV_OK) rv_vector_record_close(&out);
    if (rv_codec_decode_change(c, buf, n, &ch, errstr, sizeof errstr) == RV_OK) rv_change_close(&ch);
  }
}


/* ---- the direct reader against Avro-C's generic one ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void) { /* xorshift64*: the same cases every run */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1du;
}

/* Both readers decode bytes alike: both refuse (RV_ERR_CORRUPT, record left
 * empty), or both give the same record, floats bit for bit. */
static void assert_same_decoding(rv_codec_t *c, const uint8_t *p, size_t n) {
  rv_vector_record_t a, b;
  char ea[256], eb[256];
  rv_err_t ra = rv_codec_decode_vector(c, p, n, &a, ea, sizeof ea);
  rv_err_t rb = rv_codec_decode_vector_avro(c, p, n, &b, eb, sizeof eb);
  if (ra != rb) fail_msg("direct %d (%s) vs Avro-C %d (%s) on %zu bytes", ra, ra ? ea : "ok", rb, rb ? eb : "ok", n);
  if (ra) {
    assert_int_equal(ra, RV_ERR_CORRUPT);
    assert_null(a.id);
    assert_null(a.vector);
    assert_null(a.metadata);
    return;
  }
  assert_int_equal(a.id_len, b.id_len);
  assert_memory_equal(a.id, b.id, a.id_len + 1);
  assert_int_equal(a.op, b.op);
  assert_int_equal(a.dim, b.dim);
  assert_int_equal(a.vector == NULL, b.vector == NULL);
  if (a.dim) assert_memory_equal(a.vector, b.vector, (size_t)a.dim * sizeof(float));
  assert_int_equal(a.metadata == NULL, b.metadata == NULL);
  if (a.metadata) assert_string_equal(a.metadata, b.metadata);
  assert_int_equal(a.has_event_time, b.has_event_time);
  assert_int_equal(a.event_time_ms, b.event_time_ms);
  rv_vector_record_close(&a);
  rv_vector_record_close(&b);
}

/* Random records encoded by Avro-C, then every truncation of a few of them
 * and random byte changes: the direct reader must agree with Avro-C's. */
/* Position markers: a round trip, the exact bytes of a small one (Avro spec:
 * zigzag varints, an array as a counted block then 0), and every truncation
 * refused. */
static void test_marker_round_trip(void **state) {
  rv_codec_t *c = *state;
  rv_source_position_t pos[3] = {{0, 0}, {5, 1234567}, {11, -1}};
  rv_marker_t m = {.positions = pos, .n = 3, .committed_at_ms = 1795556619052};
  rv_buf_t b;
  rv_buf_init(&b);
  assert_int_equal(rv_codec_encode_marker(c, &m, &b, errstr, sizeof errstr), RV_OK);
  rv_marker_t out;
  assert_int_equal(rv_codec_decode_marker(c, b.base, b.len, &out, errstr, sizeof errstr), RV_OK);
  assert_int_equal(out.n, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(out.positions[i].partition, pos[i].partition);
    assert_int_equal(out.positions[i].next_offset, pos[i].next_offset);
  }
  assert_int_equal(out.committed_at_ms, 1795556619052);
  rv_marker_close(&out);
  for (size_t cut = 0; cut < b.len; cut++) {
    assert_int_not_equal(rv_codec_decode_marker(c, b.base, cut, &out, errstr, sizeof errstr), RV_OK);
    assert_int_equal(out.n, 0);
    assert_null(out.positions);
  }
  rv_buf_close(&b);

  rv_source_position_t one = {2, 10};
  rv_marker_t small = {.positions = &one, .n = 1, .committed_at_ms = 1};
  rv_buf_init(&b);
  assert_int_equal(rv_codec_encode_marker(c, &small, &b, errstr, sizeof errstr), RV_OK);
  const uint8_t want[] = {0x02, 0x04, 0x14, 0x00, 0x02}; /* count 1, partition 2, offset 10, end, time 1 */
  assert_int_equal(b.len, sizeof want);
  assert_memory_equal(b.base, want, sizeof want);
  rv_buf_close(&b);
}

static void test_direct_reader_matches_avro_c(void **state) {
  rv_codec_t *c = *state;
  rv_buf_t b;
  rv_buf_init(&b);
  static const int64_t times[] = {0, 1, -1, INT64_MAX, INT64_MIN, 1732400000123};
  size_t decoded = 0;
  for (int i = 0; i < 400; i++) {
    char id[80], meta[64];
    size_t id_len = rnd() % 70;
    for (size_t k = 0; k < id_len; k++) id[k] = (char)(' ' + rnd() % 95);
    id[id_len] = 0;
    int dim = (int)(rnd() % 4 == 0 ? 0 : rnd() % 800);
    float *v = calloc((size_t)dim + 1, sizeof *v);
    for (int k = 0; k < dim; k++) {
      uint32_t u = (uint32_t)rnd();
      memcpy(&v[k], &u, sizeof u); /* any bits: NaNs, infinities, denormals */
    }
    snprintf(meta, sizeof meta, "{\"k\":%u}", (unsigned)(rnd() % 1000));
    rv_vector_record_t r = {.id = id, .id_len = id_len, .op = rnd() % 2 ? RV_OP_DELETE : RV_OP_UPSERT,
                            .vector = rnd() % 5 ? v : NULL, .dim = dim, .metadata = rnd() % 2 ? meta : NULL,
                            .has_event_time = (int)(rnd() % 2), .event_time_ms = times[rnd() % 6]};
    if (!r.vector) r.dim = 0;
    rv_buf_reset(&b);
    assert_int_equal(rv_codec_encode_vector(c, &r, &b, errstr, sizeof errstr), RV_OK);
    assert_same_decoding(c, b.base, b.len);
    rv_vector_record_t out;
    assert_int_equal(rv_codec_decode_vector(c, b.base, b.len, &out, errstr, sizeof errstr), RV_OK);
    assert_int_equal(out.dim, r.dim);
    rv_vector_record_close(&out);
    decoded++;
    if (i < 20) /* every truncation */
      for (size_t cut = 0; cut < b.len; cut += (b.len > 400 ? 7 : 1)) assert_same_decoding(c, b.base, cut);
    for (int m = 0; m < 20; m++) { /* one to three bytes changed */
      uint8_t *copy = malloc(b.len);
      memcpy(copy, b.base, b.len);
      for (int k = 0, nk = 1 + (int)(rnd() % 3); k < nk; k++) copy[rnd() % b.len] = (uint8_t)rnd();
      assert_same_decoding(c, copy, b.len);
      free(copy);
    }
    free(v);
  }
  assert_int_equal(decoded, 400);
  /* Encodings Avro-C does not write but the spec allows: an array in several
   * blocks, a negative count followed by the block's size in bytes. */
  const uint8_t blocks[] = {0x02, 'x', 0x00, 0x02, /* 2 floats */ 0x04, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40,
                            /* -1 float, 4 bytes */ 0x01, 0x08, 0, 0, 0x40, 0x40, 0x00, 0x00, 0x00};
  assert_same_decoding(c, blocks, sizeof blocks);
  rv_vector_record_t out;
  assert_int_equal(rv_codec_decode_vector(c, blocks, sizeof blocks, &out, errstr, sizeof errstr), RV_OK);
  assert_int_equal(out.dim, 3);
  assert_true(out.vector[0] == 1.0f && out.vector[1] == 2.0f && out.vector[2] == 3.0f);
  rv_vector_record_close(&out);
  /* A NUL inside the id, an op past the enum, a union branch 2, trailing bytes. */
  const uint8_t nul_id[] = {0x04, 'a', 0, 0x00, 0x00, 0x00, 0x00};
  const uint8_t bad_op[] = {0x02, 'a', 0x04, 0x00, 0x00, 0x00};
  const uint8_t bad_branch[] = {0x02, 'a', 0x00, 0x04, 0x00, 0x00};
  const uint8_t trailing[] = {0x02, 'a', 0x00, 0x00, 0x00, 0x00, 0x00};
  const uint8_t *bad[] = {nul_id, bad_op, bad_branch, trailing};
  const size_t bad_len[] = {sizeof nul_id, sizeof bad_op, sizeof bad_branch, sizeof trailing};
  for (int i = 0; i < 4; i++) {
    assert_same_decoding(c, bad[i], bad_len[i]);
    assert_int_equal(rv_codec_decode_vector(c, bad[i], bad_len[i], &out, errstr, sizeof errstr), RV_ERR_CORRUPT);
  }
  rv_buf_close(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vector_round_trip),
      cmocka_unit_test(test_vector_wire_bytes),
      cmocka_unit_test(test_vector_rejects_malformed),
      cmocka_unit_test(test_change_round_trip),
      cmocka_unit_test(test_confluent_framing),
      cmocka_unit_test(test_hostile_lengths),
      cmocka_unit_test(test_direct_reader_matches_avro_c),
      cmocka_unit_test(test_marker_round_trip),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
