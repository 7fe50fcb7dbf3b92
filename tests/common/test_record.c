/* The Avro codec: round trips, the exact wire bytes of a small record, and
 * rejection of malformed input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vector_round_trip),
      cmocka_unit_test(test_vector_wire_bytes),
      cmocka_unit_test(test_vector_rejects_malformed),
      cmocka_unit_test(test_change_round_trip),
      cmocka_unit_test(test_confluent_framing),
      cmocka_unit_test(test_hostile_lengths),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
