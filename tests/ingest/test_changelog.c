/* Unit tests of ingest/rv_changelog: the direct Avro encoder of a change
 * writes the very bytes Avro-C's generic encoder writes, and they decode back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_changelog.h"
#include "rv_record.h"

static void check_same(rv_codec_t *codec, const rv_change_t *ch) {
  rv_buf_t a, b;
  rv_buf_init(&a);
  rv_buf_init(&b);
  char e[256];
  assert_int_equal(RV_OK, rv_buf_append(&a, "x", 1)); /* appends after what is there */
  assert_int_equal(RV_OK, rv_buf_append(&b, "x", 1));
  assert_int_equal(RV_OK, rv_codec_encode_change(codec, ch, &a, e, sizeof e));
  assert_int_equal(RV_OK, rv_changelog_encode_change(ch, &b, e, sizeof e));
  if (a.len != b.len || memcmp(a.base, b.base, a.len))
    fail_msg("id %s: Avro-C wrote %zu bytes, the direct encoder %zu (or different bytes)", ch->id, a.len, b.len);
  rv_change_t back;
  rv_change_init(&back);
  assert_int_equal(RV_OK, rv_codec_decode_change(codec, b.base + 1, b.len - 1, &back, e, sizeof e));
  assert_string_equal(ch->id, back.id);
  assert_int_equal(ch->src_offset, back.src_offset);
  assert_int_equal(ch->created_at_ms, back.created_at_ms);
  rv_change_close(&back);
  rv_buf_close(&a);
  rv_buf_close(&b);
}

static void test_same_bytes_as_avro_c(void **state) {
  (void)state;
  char e[256];
  rv_codec_t *codec = rv_codec_new(e, sizeof e);
  assert_non_null(codec);
  float vec[784];
  uint8_t code[784];
  for (int i = 0; i < 784; i++) vec[i] = (float)i * 0.25f - 7.5f, code[i] = (uint8_t)(i * 7);
  char id[600];
  for (int round = 0; round < 64; round++) {
    snprintf(id, sizeof id, "id-%d-%0*d", round, round * 5, 0); /* lengths across the 1- and 2-byte varints */
    rv_change_t ch = {.id = id,
                      .op = (round & 1) ? RV_OP_DELETE : RV_OP_UPSERT,
                      .src_partition = round * 1000,
                      .src_offset = (int64_t)round << (round % 40),
                      .vector = (round % 3) ? vec : NULL,
                      .dim = (round % 3) ? (round * 13) % 785 : 0,
                      .sq8_code = (round % 4) ? code : NULL,
                      .sq8_len = (round % 4) ? 784 - round : 0,
                      .sq8_version = round - 3,
                      .attributes = (round % 5) ? "{\"v\": 3, \"tag\": \"a\\\"b\"}" : NULL,
                      .has_event_time = round % 2,
                      .event_time_ms = -1234567 + round * INT64_C(99999999),
                      .created_at_ms = INT64_C(1700000000000) - round,
                      .traceparent = (round % 6) ? "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" : NULL};
    check_same(codec, &ch);
  }
  rv_codec_destroy(codec);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_bytes_as_avro_c),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
