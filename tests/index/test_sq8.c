/* rv_sq8: the scalar quantizer, its prepared-query distances and its file
 * format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_bytes.h"
#include "rv_distance.h"
#include "rv_sq8.h"

static int cmp_float(const void *pa, const void *pb) {
  float a = *(const float *)pa, b = *(const float *)pb;
  return (a > b) - (a < b);
}

/* The p-quantile of column c by sorting: linear interpolation between the
 * order statistics at floor and ceil of p * (n - 1). */
static double ref_quantile(const float *x, size_t n, int dim, int c, double p) {
  float *col = malloc(n * sizeof *col);
  assert_non_null(col);
  for (size_t r = 0; r < n; r++) col[r] = x[r * (size_t)dim + (size_t)c];
  qsort(col, n, sizeof *col, cmp_float);
  double pos = p * (double)(n - 1);
  size_t k = (size_t)floor(pos);
  double v = col[k];
  if (k + 1 < n) v += (pos - (double)k) * ((double)col[k + 1] - col[k]);
  free(col);
  return v;
}

static rv_sq8_t *train_ok(const float *x, size_t n, int dim, double lo, double hi) {
  rv_sq8_t *q = NULL;
  char err[256] = "";
  rv_err_t e = rv_sq8_train(x, n, dim, lo, hi, &q, err, sizeof err);
  if (e != RV_OK) fail_msg("rv_sq8_train: %s (%s)", rv_err_str(e), err);
  assert_non_null(q);
  assert_int_equal(rv_sq8_dim(q), dim);
  return q;
}

/* Ranges are the exact min and max with quantiles 0 and 1; every value inside
 * decodes within scale/2 of itself and stays inside the range. */
static void test_encode_decode_error_bound(void **state) {
  (void)state;
  enum { N = 500, D = 37 };
  float *x = malloc(sizeof(float) * N * D), *y = malloc(sizeof(float) * D);
  uint8_t code[D];
  assert_true(x && y);
  uint64_t s = 1;
  for (size_t i = 0; i < N * D; i++) x[i] = tu_float(&s) * (float)(1 + i % D) + (float)(i % 5); /* ranges differ */
  rv_sq8_t *q = train_ok(x, N, D, 0, 1);
  const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q), *w = rv_sq8_l2_weights(q);
  assert_int_equal((uintptr_t)mn % 64, 0);
  for (int c = 0; c < D; c++) {
    double lo = ref_quantile(x, N, D, c, 0), hi = ref_quantile(x, N, D, c, 1);
    assert_true(mn[c] == (float)lo);
    assert_near(sc[c], (hi - lo) / 255, 1e-6 * (hi - lo));
    assert_true(w[c] == sc[c] * sc[c]);
  }
  int seen0 = 0, seen255 = 0;
  for (size_t r = 0; r < N; r++) {
    rv_sq8_encode(q, x + r * D, code);
    rv_sq8_decode(q, code, y);
    for (int c = 0; c < D; c++) {
      double v = x[r * D + c], err = fabs(v - y[c]);
      if (!(err <= sc[c] / 2 * (1 + 1e-5) + 1e-6 * fabs(v)))
        fail_msg("row %zu dim %d: %.9g decodes to %.9g (code %u), error %g > scale/2 = %g", r, c, v, y[c], code[c],
                 err, sc[c] / 2);
      assert_true(y[c] >= mn[c] && y[c] <= mn[c] + 255 * sc[c] * (1 + 1e-6));
      seen0 |= code[c] == 0;
      seen255 |= code[c] == 255;
    }
  }
  assert_true(seen0 && seen255); /* the column min and max map to the end codes */
  rv_sq8_destroy(q);
  free(x);
  free(y);
}

/* With the default quantiles, outliers do not stretch the range: min/max are
 * the 0.001/0.999 quantiles, and values beyond them clamp to codes 0/255. */
static void test_clipping(void **state) {
  (void)state;
  enum { N = 5000, D = 3 };
  float *x = malloc(sizeof(float) * N * D);
  assert_non_null(x);
  uint64_t s = 2;
  for (size_t r = 0; r < N; r++)
    for (int c = 0; c < D; c++) x[r * D + c] = tu_float(&s) * 10;
  x[17 * D + 0] = 1e6f;  /* outliers in dim 0 */
  x[99 * D + 0] = -1e6f;
  x[5 * D + 1] = 3e4f;
  rv_sq8_t *q = train_ok(x, N, D, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT);
  const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q);
  for (int c = 0; c < D; c++) {
    double lo = ref_quantile(x, N, D, c, RV_SQ8_LO_Q_DEFAULT), hi = ref_quantile(x, N, D, c, RV_SQ8_HI_Q_DEFAULT);
    assert_near(mn[c], lo, 1e-6 * fabs(lo));
    assert_near(mn[c] + 255.0 * sc[c], hi, 1e-5 * (hi - lo));
    assert_true(lo > -10 && hi < 10); /* the outliers were clipped away */
  }
  float v[D] = {1e6f, -1e6f, 20}, y[D];
  uint8_t code[D];
  rv_sq8_encode(q, v, code);
  assert_int_equal(code[0], 255);
  assert_int_equal(code[1], 0);
  assert_int_equal(code[2], 255);
  rv_sq8_decode(q, code, y);
  assert_true(y[1] == mn[1]);
  assert_near(y[0], mn[0] + 255.0 * sc[0], 1e-5);
  v[0] = NAN;
  rv_sq8_encode(q, v, code);
  assert_int_equal(code[0], 0);
  /* custom quantiles are honoured */
  rv_sq8_t *q2 = train_ok(x, N, D, 0.25, 0.75);
  assert_near(rv_sq8_min(q2)[2], ref_quantile(x, N, D, 2, 0.25), 1e-5);
  assert_near(rv_sq8_min(q2)[2] + 255.0 * rv_sq8_scale(q2)[2], ref_quantile(x, N, D, 2, 0.75), 1e-4);
  rv_sq8_destroy(q2);
  rv_sq8_destroy(q);
  free(x);
}

/* A dimension constant in the sample keeps a positive scale, its constant
 * encodes to 0 and decodes exactly; other dimensions are unaffected. Also a
 * column that is mostly one value (quantile select over long equal runs). */
static void test_constant_dims(void **state) {
  (void)state;
  enum { N = 1000, D = 4 };
  float *x = malloc(sizeof(float) * N * D);
  assert_non_null(x);
  uint64_t s = 3;
  for (size_t r = 0; r < N; r++) {
    x[r * D + 0] = 5.0f;
    x[r * D + 1] = 0.0f;
    x[r * D + 2] = tu_float(&s);
    x[r * D + 3] = r % 100 == 0 ? 1.0f : -3e9f; /* huge constant with a few others */
  }
  rv_sq8_t *q = train_ok(x, N, D, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT);
  const float *sc = rv_sq8_scale(q), *mn = rv_sq8_min(q);
  for (int c = 0; c < D; c++) assert_true(sc[c] > 0 && isfinite(sc[c]));
  assert_true(mn[0] == 5.0f && mn[1] == 0.0f);
  uint8_t code[D];
  float y[D];
  rv_sq8_encode(q, x, code);
  rv_sq8_decode(q, code, y);
  assert_int_equal(code[0], 0);
  assert_int_equal(code[1], 0);
  assert_true(y[0] == 5.0f && y[1] == 0.0f);
  /* dim 3: 0.001 quantile is -3e9 and 0.999 quantile is 1: a real range */
  assert_true(mn[3] == -3e9f);
  /* all columns constant, n = 1 */
  float one[D] = {1, 2, 3, 4};
  rv_sq8_t *q1 = train_ok(one, 1, D, 0, 1);
  rv_sq8_encode(q1, one, code);
  rv_sq8_decode(q1, code, y);
  for (int c = 0; c < D; c++) {
    assert_int_equal(code[c], 0);
    assert_true(y[c] == one[c]);
  }
  rv_sq8_destroy(q1);
  rv_sq8_destroy(q);
  free(x);
}

/* The prepared-query forms equal the float distance from the query to the
 * decoded vector, for every ISA's kernels. */
static void test_prepared_distances(void **state) {
  (void)state;
  enum { N = 400, D = 784 };
  float *x = malloc(sizeof(float) * N * D), *dec = malloc(sizeof(float) * D), *qv = malloc(sizeof(float) * D);
  float *qp = malloc(sizeof(float) * D);
  uint8_t *code = malloc(D);
  assert_true(x && dec && qv && qp && code);
  uint64_t s = 4;
  for (size_t i = 0; i < (size_t)N * D; i++) x[i] = tu_float(&s) * 100 + (float)(i % D) * 0.5f;
  rv_sq8_t *q = train_ok(x, N, D, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT);
  const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q);
  const rv_isa_t isas[] = {RV_ISA_SCALAR, RV_ISA_AVX2, RV_ISA_AVX512};
  for (int trial = 0; trial < 20; trial++) {
    /* half the queries are data vectors, half random and partly out of range */
    if (trial % 2) memcpy(qv, x + (size_t)trial * D, sizeof(float) * D);
    else
      for (int i = 0; i < D; i++) qv[i] = tu_float(&s) * 150 + (float)i * 0.5f;
    rv_sq8_encode(q, x + (size_t)(trial + 100) * D, code);
    rv_sq8_decode(q, code, dec);
    double l2 = 0, ip = 0, l2tol = 0, iptol = 0;
    for (int i = 0; i < D; i++) {
      double d = (double)qv[i] - dec[i], span = fabs((double)qv[i] - mn[i]) + 255.0 * sc[i];
      l2 += d * d;
      ip += (double)qv[i] * dec[i];
      l2tol += span * span;
      iptol += fabs(qv[i]) * (fabs(mn[i]) + 255.0 * sc[i]);
    }
    l2tol = 1e-6 * l2tol + 1e-5 * l2;
    iptol *= 1e-5;
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++) {
      const rv_kernels_t *kern = rv_kernels_get(isas[k]);
      if (!kern) continue;
      rv_sq8_prepare_l2(q, qv, qp);
      double got = kern->sq8_l2(qp, code, rv_sq8_l2_weights(q), D);
      assert_near(got, l2, l2tol);
      float kc = rv_sq8_prepare_ip(q, qv, qp);
      got = (double)kc + kern->sq8_dot(qp, code, D);
      assert_near(got, ip, iptol);
    }
  }
  rv_sq8_destroy(q);
  free(x);
  free(dec);
  free(qv);
  free(qp);
  free(code);
}

static rv_sq8_t *small_quantizer(int dim, uint64_t seed) {
  enum { N = 64 };
  float *x = malloc(sizeof(float) * N * (size_t)dim);
  assert_non_null(x);
  uint64_t s = seed;
  for (size_t i = 0; i < (size_t)N * (size_t)dim; i++) x[i] = tu_float(&s) * 3;
  rv_sq8_t *q = train_ok(x, N, dim, 0.01, 0.99);
  free(x);
  return q;
}

/* Serialize -> deserialize -> serialize is bit-exact; the copy has the same
 * parameters, fingerprint and codes. The bytes are the documented layout. */
static void test_serialize_round_trip(void **state) {
  (void)state;
  enum { D = 17 };
  rv_sq8_t *q = small_quantizer(D, 5);
  uint8_t *buf = NULL, *buf2 = NULL;
  size_t len = 0, len2 = 0;
  assert_int_equal(rv_sq8_serialize(q, &buf, &len), RV_OK);
  assert_int_equal(len, 32 + 8 * D + 4);
  /* explicit little-endian layout */
  assert_memory_equal(buf, "RVQ8", 4);
  assert_int_equal(buf[4], 1);
  assert_int_equal(buf[5] | buf[6] | buf[7], 0);
  assert_int_equal(buf[8], D);
  assert_int_equal(buf[9] | buf[10] | buf[11], 0);
  uint32_t bits;
  memcpy(&bits, &rv_sq8_min(q)[0], 4);
  assert_int_equal(buf[32] | buf[33] << 8 | buf[34] << 16 | (uint32_t)buf[35] << 24, bits);
  uint32_t crc = rv__crc32c(0, buf, len - 4);
  assert_int_equal(buf[len - 4] | buf[len - 3] << 8 | buf[len - 2] << 16 | (uint32_t)buf[len - 1] << 24, crc);

  rv_sq8_t *r = NULL;
  char err[256] = "";
  assert_int_equal(rv_sq8_deserialize(buf, len, &r, err, sizeof err), RV_OK);
  assert_non_null(r);
  assert_int_equal(rv_sq8_dim(r), D);
  assert_memory_equal(rv_sq8_min(r), rv_sq8_min(q), sizeof(float) * D);
  assert_memory_equal(rv_sq8_scale(r), rv_sq8_scale(q), sizeof(float) * D);
  assert_memory_equal(rv_sq8_l2_weights(r), rv_sq8_l2_weights(q), sizeof(float) * D);
  assert_int_equal(rv_sq8_fingerprint(r), rv_sq8_fingerprint(q));
  assert_int_equal(rv_sq8_serialize(r, &buf2, &len2), RV_OK);
  assert_int_equal(len2, len);
  assert_memory_equal(buf2, buf, len);
  float v[D];
  uint8_t c1[D], c2[D];
  uint64_t s = 9;
  tu_fill(&s, v, D);
  rv_sq8_encode(q, v, c1);
  rv_sq8_encode(r, v, c2);
  assert_memory_equal(c1, c2, D);

  /* the fingerprint tells different parameters apart */
  rv_sq8_t *other = small_quantizer(D, 6);
  assert_int_not_equal(rv_sq8_fingerprint(other), rv_sq8_fingerprint(q));
  rv_sq8_t *same = small_quantizer(D, 5);
  assert_int_equal(rv_sq8_fingerprint(same), rv_sq8_fingerprint(q));
  rv_sq8_destroy(other);
  rv_sq8_destroy(same);
  free(buf);
  free(buf2);
  rv_sq8_destroy(r);
  rv_sq8_destroy(q);
}

/* Every single-byte change and every truncation is refused as corrupt with a
 * message, and leaves *out untouched. */
static void test_corruption_detected(void **state) {
  (void)state;
  enum { D = 9 };
  rv_sq8_t *q = small_quantizer(D, 7);
  uint8_t *buf = NULL;
  size_t len = 0;
  assert_int_equal(rv_sq8_serialize(q, &buf, &len), RV_OK);
  uint8_t *copy = malloc(len + 1);
  assert_non_null(copy);
  static const uint8_t flips[] = {0x01, 0x02, 0x10, 0x80, 0xff, 0x5a};
  rv_sq8_t *sentinel = (rv_sq8_t *)(uintptr_t)0x1;
  for (size_t pos = 0; pos < len; pos++)
    for (size_t f = 0; f < sizeof flips; f++) {
      memcpy(copy, buf, len);
      copy[pos] ^= flips[f];
      rv_sq8_t *out = sentinel;
      char err[256] = "";
      rv_err_t e = rv_sq8_deserialize(copy, len, &out, err, sizeof err);
      if (e != RV_ERR_CORRUPT) fail_msg("byte %zu ^ 0x%02x: got %d (%s), not RV_ERR_CORRUPT", pos, flips[f], e, err);
      assert_ptr_equal(out, sentinel);
      assert_true(strlen(err) > 0);
    }
  for (size_t l = 0; l < len; l++) {
    rv_sq8_t *out = sentinel;
    char err[256] = "";
    assert_int_equal(rv_sq8_deserialize(buf, l, &out, err, sizeof err), RV_ERR_CORRUPT);
    assert_ptr_equal(out, sentinel);
    if (!strstr(err, "truncated")) fail_msg("truncation to %zu bytes reported as: %s", l, err);
  }
  memcpy(copy, buf, len);
  copy[len] = 0;
  rv_sq8_t *out = sentinel;
  char err[256] = "";
  assert_int_equal(rv_sq8_deserialize(copy, len + 1, &out, err, sizeof err), RV_ERR_CORRUPT);
  assert_non_null(strstr(err, "trailing"));
  /* a future version is refused even with a valid checksum */
  memcpy(copy, buf, len);
  copy[4] = 2;
  rv__put_u32(copy + len - 4, rv__crc32c(0, copy, len - 4));
  assert_int_equal(rv_sq8_deserialize(copy, len, &out, err, sizeof err), RV_ERR_CORRUPT);
  assert_non_null(strstr(err, "version"));
  /* a zero scale with a valid checksum is refused too */
  memcpy(copy, buf, len);
  rv__put_f32(copy + 32 + 4 * D, 0.0f);
  rv__put_u32(copy + len - 4, rv__crc32c(0, copy, len - 4));
  assert_int_equal(rv_sq8_deserialize(copy, len, &out, err, sizeof err), RV_ERR_CORRUPT);
  assert_ptr_equal(out, sentinel);
  free(copy);
  free(buf);
  rv_sq8_destroy(q);
}

static void test_bad_arguments(void **state) {
  (void)state;
  float x[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  rv_sq8_t *sentinel = (rv_sq8_t *)(uintptr_t)0x1, *out = sentinel;
  char err[256];
  assert_int_equal(rv_sq8_train(x, 0, 2, 0, 1, &out, err, sizeof err), RV_ERR_INVALID);
  assert_int_equal(rv_sq8_train(x, 4, 0, 0, 1, &out, err, sizeof err), RV_ERR_INVALID);
  assert_int_equal(rv_sq8_train(x, 4, 2, 0.5, 0.5, &out, err, sizeof err), RV_ERR_INVALID);
  assert_int_equal(rv_sq8_train(x, 4, 2, -0.1, 0.5, &out, err, sizeof err), RV_ERR_INVALID);
  assert_int_equal(rv_sq8_train(x, 4, 2, 0.1, 1.5, &out, err, sizeof err), RV_ERR_INVALID);
  x[5] = NAN;
  assert_int_equal(rv_sq8_train(x, 4, 2, 0, 1, &out, err, sizeof err), RV_ERR_INVALID);
  x[5] = INFINITY;
  assert_int_equal(rv_sq8_train(x, 4, 2, 0, 1, &out, err, sizeof err), RV_ERR_INVALID);
  assert_non_null(strstr(err, "not finite"));
  assert_ptr_equal(out, sentinel);
  rv_sq8_destroy(NULL);
}

/* The checksum is CRC-32C: its standard check value. */
static void test_crc32c_check_value(void **state) {
  (void)state;
  assert_int_equal(rv__crc32c(0, "123456789", 9), 0xe3069283u);
  assert_int_equal(rv__crc32c(rv__crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
  assert_int_equal(rv__crc32c(0, "", 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c_check_value),   cmocka_unit_test(test_encode_decode_error_bound),
      cmocka_unit_test(test_clipping),             cmocka_unit_test(test_constant_dims),
      cmocka_unit_test(test_prepared_distances),   cmocka_unit_test(test_serialize_round_trip),
      cmocka_unit_test(test_corruption_detected),  cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
