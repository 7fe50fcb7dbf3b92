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
/* The vectorized encoder gives exactly the codes of the plain formula,
 * including NaN (0), infinities, values far outside the range and values
 * that land on a half step; dims that are not a multiple of any vector width. */
static void test_encode_matches_formula(void **state) {
  (void)state;
  static const int dims[] = {1, 7, 16, 33, 784, 1001};
  for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
    int dim = dims[t];
    size_t n = 64;
    float *x = malloc(n * (size_t)dim * sizeof *x);
    uint8_t *code = malloc((size_t)dim);
    assert_non_null(x);
    assert_non_null(code);
    uint64_t s = 42 + (uint64_t)dim;
    for (size_t i = 0; i < n * (size_t)dim; i++) {
      s = s * 6364136223846793005u + 1442695040888963407u;
      x[i] = (float)((double)(s >> 11) / (double)(1ull << 53) * 10.0 - 5.0);
    }
    rv_sq8_t *q = train_ok(x, n, dim, 0.01, 0.99);
    const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q);
    float *v = malloc((size_t)dim * sizeof *v);
    assert_non_null(v);
    for (int round = 0; round < 8; round++) {
      for (int i = 0; i < dim; i++) {
        s = s * 6364136223846793005u + 1442695040888963407u;
        switch ((s >> 33) % 8) {
        case 0: v[i] = NAN; break;
        case 1: v[i] = (s >> 40) % 2 ? INFINITY : -INFINITY; break;
        case 2: v[i] = mn[i] + sc[i] * (float)((s >> 41) % 300) * 0.5f; break; /* on and past half steps */
        case 3: v[i] = (s >> 40) % 2 ? 3e38f : -3e38f; break;
        default: v[i] = (float)((double)(s >> 11) / (double)(1ull << 53) * 14.0 - 7.0);
        }
      }
      rv_sq8_encode(q, v, code);
      for (int i = 0; i < dim; i++) {
        double f = ((double)v[i] - mn[i]) / sc[i];
        uint8_t want = !(f > 0) ? 0 : f >= 255 ? 255 : (uint8_t)(f + 0.5);
        if (code[i] != want) fail_msg("dim %d, element %d: value %g gives code %u, formula %u", dim, i, (double)v[i],
                                      code[i], want);
      }
    }
    rv_sq8_destroy(q);
    free(v);
    free(x);
    free(code);
  }
}

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

/* ---- integer asymmetric distances ---- */

static rv_sq8_t *small_quantizer(int dim, uint64_t seed);

static const rv_isa_t all_isas[] = {RV_ISA_SCALAR, RV_ISA_AVX2, RV_ISA_AVX512, RV_ISA_AVX512_VNNI};
#define N_ALL_ISAS (sizeof all_isas / sizeof all_isas[0])

/* Fashion-MNIST-like rows: 28x28-ish pixels in 0..255, about half exactly 0,
 * drawn around one of ten class patterns. */
static void image_like(uint64_t *s, float *x, size_t n, int dim) {
  float *pat = malloc(sizeof(float) * 10 * (size_t)dim);
  assert_non_null(pat);
  for (size_t i = 0; i < 10 * (size_t)dim; i++) pat[i] = tu_float(s) < 0 ? 0 : 255 * (0.5f + 0.5f * tu_float(s));
  for (size_t r = 0; r < n; r++) {
    const float *p = pat + (tu_next(s) % 10) * (size_t)dim;
    float bright = 0.6f + 0.4f * fabsf(tu_float(s));
    for (int i = 0; i < dim; i++) {
      float v = p[i] == 0 ? 0 : p[i] * bright + 40 * tu_float(s);
      x[r * (size_t)dim + (size_t)i] = v < 0 ? 0 : v > 255 ? 255 : roundf(v);
    }
  }
  free(pat);
}

/* The exact distances to the decoded vector (min_i + c_i scale_i, in double)
 * and, in *mag, A + B + 2 |cross| (L2) or |K| + sum |v_i c_i| (ip): what the
 * float rounding of the final sum is relative to. */
static double exact_l2(const rv_sq8_t *q, const float *query, const uint8_t *code, double *mag) {
  const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q);
  double d = 0, a = 0, b = 0, x = 0;
  for (int i = 0; i < rv_sq8_dim(q); i++) {
    double t = (double)query[i] - mn[i], dec = (double)mn[i] + code[i] * (double)sc[i];
    d += ((double)query[i] - dec) * ((double)query[i] - dec);
    a += t * t;
    b += (double)sc[i] * sc[i] * code[i] * code[i];
    x += fabs(sc[i] * t * code[i]);
  }
  *mag = a + b + 2 * x;
  return d;
}

static double exact_ip(const rv_sq8_t *q, const float *query, const uint8_t *code, double *mag) {
  const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q);
  double d = 0, k = 0, x = 0;
  for (int i = 0; i < rv_sq8_dim(q); i++) {
    d += (double)query[i] * ((double)mn[i] + code[i] * (double)sc[i]);
    k += (double)query[i] * mn[i];
    x += fabs((double)query[i] * sc[i] * code[i]);
  }
  *mag = fabs(k) + x;
  return d;
}

/* The prepared query's invariants: the padding contract and the overflow
 * bound that makes the int32 sum exact. */
static void check_query(const rv_sq8_t *q, const rv_sq8_query_t *qy, const int16_t *buf) {
  int dim = rv_sq8_dim(q);
  assert_ptr_equal(qy->u, buf);
  assert_int_equal(qy->n, rv_sq8_code_size(dim));
  assert_int_equal(qy->n % 64, 0);
  assert_true(qy->n >= (size_t)dim && qy->n < (size_t)dim + 64);
  int64_t sum = 0;
  int umax = 0;
  for (size_t i = 0; i < qy->n; i++) {
    if (i >= (size_t)dim && buf[i] != 0) fail_msg("u[%zu] = %d past dim %d", i, buf[i], dim);
    int a = abs(buf[i]);
    sum += a;
    if (a > umax) umax = a;
  }
  assert_true(umax <= 32767);
  if (255 * sum > INT32_MAX) fail_msg("255 * sum |u| = %lld > INT32_MAX", (long long)(255 * sum));
  assert_true(qy->err >= 0 && isfinite(qy->err) && isfinite(qy->a) && qy->scale > 0);
}

/* rv_sq8_distance_l2 and rv_sq8_inner_product are within the stated bound
 * (err + 2^-21 * magnitude) of the exact distance to the decoded vector, for
 * data queries and out-of-range random ones; bit-identical across ISAs (the
 * integer sum is exact everywhere); the code's padding bytes do not matter;
 * and on image-like data the error is tiny next to the distances. */
static void test_integer_distances(void **state) {
  (void)state;
  enum { N = 600, D = 784 };
  size_t np = rv_sq8_code_size(D);
  assert_int_equal(np, 832);
  float *x = malloc(sizeof(float) * N * D), *qv = malloc(sizeof(float) * D), *qp = malloc(sizeof(float) * D);
  int16_t *buf = aligned_alloc(64, np * sizeof(int16_t));
  uint8_t *code = aligned_alloc(64, np), *code2 = aligned_alloc(64, np);
  assert_true(x && qv && qp && buf && code && code2);
  uint64_t s = 21;
  image_like(&s, x, N, D);
  rv_sq8_t *q = train_ok(x, N, D, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT);
  double worst_rel = 0, worst_err_rel = 0, worst_abs = 0, dsum = 0;
  int dcount = 0;
  for (int trial = 0; trial < 24; trial++) {
    if (trial % 2) memcpy(qv, x + (size_t)(trial + 300) * D, sizeof(float) * D);
    else
      for (int i = 0; i < D; i++) qv[i] = 150 * tu_float(&s) + 100; /* partly outside [0, 255] */
    rv_sq8_query_t ql, qi;
    assert_int_equal(rv_sq8_query_prepare_l2(q, qv, buf, &ql), RV_OK);
    check_query(q, &ql, buf);
    /* err is at most the per-element worst case 255 dim / s */
    assert_true(ql.err <= 255.0 * D * ql.scale / 2 * (1 + 1e-5));
    int16_t *bufi = aligned_alloc(64, np * sizeof(int16_t));
    assert_non_null(bufi);
    assert_int_equal(rv_sq8_query_prepare_ip(q, qv, bufi, &qi), RV_OK);
    check_query(q, &qi, bufi);
    for (int r = 0; r < N; r += 7) {
      rv_sq8_encode(q, x + (size_t)r * D, code);
      memset(code + D, 0, np - D);
      memcpy(code2, code, D);
      memset(code2 + D, 0xA5, np - D); /* garbage padding: multiplied by u = 0 */
      float norm = rv_sq8_code_norm(q, code);
      double ref_norm = 0;
      for (int i = 0; i < D; i++) ref_norm += (double)rv_sq8_l2_weights(q)[i] * code[i] * code[i];
      assert_near(norm, ref_norm, 1e-6 * ref_norm);
      double mag, mag_ip, l2 = exact_l2(q, qv, code, &mag), ip = exact_ip(q, qv, code, &mag_ip);
      double tol = ql.err + 0x1p-21 * mag, tol_ip = qi.err + 0x1p-21 * mag_ip;
      float first_l2 = 0, first_ip = 0;
      for (size_t k = 0; k < N_ALL_ISAS; k++) {
        const rv_kernels_t *kern = rv_kernels_get(all_isas[k]);
        if (!kern) continue;
        float d = rv_sq8_distance_l2(kern, &ql, code, norm), d2 = rv_sq8_distance_l2(kern, &ql, code2, norm);
        float p = rv_sq8_inner_product(kern, &qi, code), p2 = rv_sq8_inner_product(kern, &qi, code2);
        assert_true(d == d2 && p == p2);
        if (k == 0) {
          first_l2 = d;
          first_ip = p;
        } else if (d != first_l2 || p != first_ip) {
          fail_msg("%s differs from scalar: l2 %.9g vs %.9g, ip %.9g vs %.9g", kern->isa, d, first_l2, p, first_ip);
        }
        if (!(fabs(d - l2) <= tol))
          fail_msg("%s trial %d row %d: l2 %.9g, exact %.9g, bound %g (err %g)", kern->isa, trial, r, d, l2, tol,
                   ql.err);
        if (!(fabs(p - ip) <= tol_ip))
          fail_msg("%s trial %d row %d: ip %.9g, exact %.9g, bound %g (err %g)", kern->isa, trial, r, p, ip, tol_ip,
                   qi.err);
        /* and the float path agrees within its own rounding plus err */
        rv_sq8_prepare_l2(q, qv, qp);
        assert_near(d, kern->sq8_l2(qp, code, rv_sq8_l2_weights(q), D), tol + 1e-5 * l2);
      }
      if (trial % 2) {
        dsum += l2;
        dcount++;
        if (fabs(first_l2 - l2) > worst_abs) worst_abs = fabs(first_l2 - l2);
      }
    }
    if (trial % 2) {
      /* relative to the mean distance from this query to the data: a near
       * duplicate's own distance is tiny and says nothing about ranking */
      double mean = dsum / dcount;
      if (worst_abs / mean > worst_rel) worst_rel = worst_abs / mean;
      if (ql.err / mean > worst_err_rel) worst_err_rel = ql.err / mean;
      dsum = 0;
      dcount = 0;
      worst_abs = 0;
    }
    free(bufi);
  }
  print_message("image-like data, data queries, relative to the mean distance: worst |error| %.3g, worst bound "
                "err %.3g\n",
                worst_rel, worst_err_rel);
  /* what makes the integer path usable for search: errors far below the
   * distances being compared */
  assert_true(worst_rel < 1e-4 && worst_err_rel < 1e-2);
  rv_sq8_destroy(q);
  free(x);
  free(qv);
  free(qp);
  free(buf);
  free(code);
  free(code2);
}

/* Ranking: every code whose exact distance beats the 10th best by more than
 * twice the bound is in the integer top 10. */
static void test_integer_ranking(void **state) {
  (void)state;
  enum { N = 2000, D = 784, K = 10 };
  size_t np = rv_sq8_code_size(D);
  float *x = malloc(sizeof(float) * (N + 1) * D), *dint = malloc(sizeof(float) * N);
  double *dex = malloc(sizeof(double) * N), *sorted = malloc(sizeof(double) * N);
  uint8_t *codes = aligned_alloc(64, np * N);
  int16_t *buf = aligned_alloc(64, np * sizeof(int16_t));
  assert_true(x && dint && dex && sorted && codes && buf);
  uint64_t s = 5;
  image_like(&s, x, N + 1, D);
  rv_sq8_t *q = train_ok(x, N, D, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT);
  const float *qv = x + (size_t)N * D; /* not in the base */
  rv_sq8_query_t qy;
  assert_int_equal(rv_sq8_query_prepare_l2(q, qv, buf, &qy), RV_OK);
  const rv_kernels_t *k = rv_kernels_get(RV_ISA_BEST);
  double mag, maxtol = 0;
  for (int r = 0; r < N; r++) {
    uint8_t *c = codes + (size_t)r * np;
    rv_sq8_encode(q, x + (size_t)r * D, c);
    memset(c + D, 0, np - D);
    dint[r] = rv_sq8_distance_l2(k, &qy, c, rv_sq8_code_norm(q, c));
    sorted[r] = dex[r] = exact_l2(q, qv, c, &mag);
    double tol = qy.err + 0x1p-21 * mag;
    if (tol > maxtol) maxtol = tol;
  }
  for (int i = 0; i < K; i++) /* partial selection sort: sorted[0..K) ascending */
    for (int j = i + 1; j < N; j++)
      if (sorted[j] < sorted[i]) {
        double t = sorted[i];
        sorted[i] = sorted[j];
        sorted[j] = t;
      }
  float int_kth; /* the K-th smallest integer distance */
  {
    float *tmp = malloc(sizeof(float) * N);
    assert_non_null(tmp);
    memcpy(tmp, dint, sizeof(float) * N);
    for (int i = 0; i < K; i++)
      for (int j = i + 1; j < N; j++)
        if (tmp[j] < tmp[i]) {
          float t = tmp[i];
          tmp[i] = tmp[j];
          tmp[j] = t;
        }
    int_kth = tmp[K - 1];
    free(tmp);
  }
  int must = 0;
  for (int r = 0; r < N; r++)
    if (dex[r] + 2 * maxtol < sorted[K - 1]) {
      must++;
      if (!(dint[r] <= int_kth)) fail_msg("row %d (exact %.9g) missing from the integer top %d", r, dex[r], K);
    }
  print_message("top %d: %d of them separated by more than 2 x bound (%.3g) from the %d-th (%.6g)\n", K, must,
                maxtol, K, sorted[K - 1]);
  assert_true(must >= K / 2); /* the bound is tight enough to say something */
  rv_sq8_destroy(q);
  free(x);
  free(dint);
  free(dex);
  free(sorted);
  free(codes);
  free(buf);
}

/* dim 65536 with a far query: the budget forces |u| down to the per-element
 * limit 128 and sums to the edge of int32, codes all 255 and all 0; a query
 * at min (u = 0, err = 0); small dims and their padding; NaN rejected. */
static void test_integer_extremes(void **state) {
  (void)state;
  enum { D = 65536 };
  float *x = malloc(sizeof(float) * 2 * D), *qv = malloc(sizeof(float) * D);
  int16_t *buf = aligned_alloc(64, D * sizeof(int16_t));
  uint8_t *code = malloc(D);
  assert_true(x && qv && buf && code);
  for (int i = 0; i < D; i++) {
    x[i] = 0;
    x[D + i] = 1;
  }
  rv_sq8_t *q = train_ok(x, 2, D, 0, 1);
  assert_int_equal(rv_sq8_code_size(D), D);
  for (int pass = 0; pass < 3; pass++) {
    for (int i = 0; i < D; i++) qv[i] = pass == 0 ? 1000.0f : pass == 1 ? -1000.0f : (i & 1 ? 1000.0f : 0.0f);
    rv_sq8_query_t ql, qi;
    assert_int_equal(rv_sq8_query_prepare_l2(q, qv, buf, &ql), RV_OK);
    check_query(q, &ql, buf);
    int umax = 0;
    for (int i = 0; i < D; i++) umax = abs(buf[i]) > umax ? abs(buf[i]) : umax;
    if (pass < 2) assert_int_equal(umax, 128); /* uniform |v|: exactly the per-element limit */
    int16_t *bufi = aligned_alloc(64, D * sizeof(int16_t));
    assert_non_null(bufi);
    assert_int_equal(rv_sq8_query_prepare_ip(q, qv, bufi, &qi), RV_OK);
    check_query(q, &qi, bufi);
    for (int cv = 0; cv < 3; cv++) {
      for (int i = 0; i < D; i++) code[i] = cv == 0 ? 255 : cv == 1 ? 0 : (uint8_t)(i * 7);
      float norm = rv_sq8_code_norm(q, code);
      double mag, mag_ip, l2 = exact_l2(q, qv, code, &mag), ip = exact_ip(q, qv, code, &mag_ip);
      for (size_t k = 0; k < N_ALL_ISAS; k++) {
        const rv_kernels_t *kern = rv_kernels_get(all_isas[k]);
        if (!kern) continue;
        float d = rv_sq8_distance_l2(kern, &ql, code, norm), p = rv_sq8_inner_product(kern, &qi, code);
        if (!(fabs(d - l2) <= ql.err + 0x1p-21 * mag))
          fail_msg("%s pass %d codes %d: l2 %.9g exact %.9g err %g", kern->isa, pass, cv, d, l2, ql.err);
        if (!(fabs(p - ip) <= qi.err + 0x1p-21 * mag_ip))
          fail_msg("%s pass %d codes %d: ip %.9g exact %.9g err %g", kern->isa, pass, cv, p, ip, qi.err);
      }
    }
    free(bufi);
  }
  /* the query at min: v = 0, u = 0, no rounding error; distance = B(c) */
  memset(qv, 0, sizeof(float) * D);
  rv_sq8_query_t qz;
  assert_int_equal(rv_sq8_query_prepare_l2(q, qv, buf, &qz), RV_OK);
  assert_true(qz.err == 0 && qz.a == 0);
  for (int i = 0; i < D; i++) assert_int_equal(buf[i], 0);
  for (int i = 0; i < D; i++) code[i] = (uint8_t)i;
  float nz = rv_sq8_code_norm(q, code);
  assert_true(rv_sq8_distance_l2(rv_kernels_get(RV_ISA_BEST), &qz, code, nz) == nz);
  /* NaN or infinity: RV_ERR_INVALID, out untouched */
  rv_sq8_query_t keep = {NULL, 7, 1.5f, 2.5f, 3.5f}, o = keep;
  qv[D - 1] = NAN;
  assert_int_equal(rv_sq8_query_prepare_l2(q, qv, buf, &o), RV_ERR_INVALID);
  qv[D - 1] = INFINITY;
  assert_int_equal(rv_sq8_query_prepare_ip(q, qv, buf, &o), RV_ERR_INVALID);
  assert_true(o.u == keep.u && o.n == keep.n && o.a == keep.a && o.scale == keep.scale && o.err == keep.err);
  rv_sq8_destroy(q);
  /* small dims: padding to 64, 64, 128 */
  static const int dims[] = {1, 64, 65};
  for (size_t di = 0; di < 3; di++) {
    int dim = dims[di];
    rv_sq8_t *qs = small_quantizer(dim, 40 + di);
    assert_int_equal(rv_sq8_code_size(dim), dim <= 64 ? 64 : 128);
    uint8_t *c = calloc(128, 1);
    assert_non_null(c);
    for (int i = 0; i < dim; i++) qv[i] = 2.5f * (float)(i % 3) - 2;
    rv_sq8_encode(qs, qv, c);
    for (int i = 0; i < dim; i++) c[i] = (uint8_t)(c[i] ^ 0x5a); /* not the query's own code */
    rv_sq8_query_t ql;
    assert_int_equal(rv_sq8_query_prepare_l2(qs, qv, buf, &ql), RV_OK);
    check_query(qs, &ql, buf);
    double mag, l2 = exact_l2(qs, qv, c, &mag);
    for (size_t k = 0; k < N_ALL_ISAS; k++) {
      const rv_kernels_t *kern = rv_kernels_get(all_isas[k]);
      if (!kern) continue;
      assert_near(rv_sq8_distance_l2(kern, &ql, c, rv_sq8_code_norm(qs, c)), l2, ql.err + 0x1p-21 * mag);
    }
    free(c);
    rv_sq8_destroy(qs);
  }
  free(x);
  free(qv);
  free(buf);
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
  assert_int_equal(rv__crc32c_bytewise(0, "123456789", 9), 0xe3069283u);
}

/* rv__crc32c (the crc32 instruction where the CPU has it) equals the byte
 * table on random buffers of every length up to 300 and some long ones, at
 * every alignment mod 16, from random starting values, and when a buffer is
 * split into two calls at any point. */
static void test_crc32c_fast_matches_bytewise(void **state) {
  (void)state;
  enum { MAXLEN = 70000, PAD = 16 };
  uint8_t *mem = malloc(MAXLEN + PAD);
  assert_non_null(mem);
  uint64_t x = 0x9e3779b97f4a7c15u;
  for (size_t i = 0; i < MAXLEN + PAD; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    mem[i] = (uint8_t)x;
  }
  static const size_t longer[] = {511, 512, 513, 4095, 4096, 4097, 65536, 69999};
  size_t lens[300 + sizeof longer / sizeof longer[0]], nl = 0;
  for (size_t l = 0; l < 300; l++) lens[nl++] = l;
  for (size_t i = 0; i < sizeof longer / sizeof longer[0]; i++) lens[nl++] = longer[i];
  for (size_t li = 0; li < nl; li++) {
    for (size_t align = 0; align < PAD; align++) {
      const uint8_t *p = mem + align;
      size_t len = lens[li];
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      uint32_t init = align & 1 ? (uint32_t)x : 0;
      uint32_t want = rv__crc32c_bytewise(init, p, len), got = rv__crc32c(init, p, len);
      if (got != want)
        fail_msg("len %zu align %zu init 0x%08x: fast 0x%08x, bytewise 0x%08x", len, align, init, got, want);
      size_t cut = len ? (size_t)(x >> 32) % (len + 1) : 0;
      uint32_t split = rv__crc32c(rv__crc32c(init, p, cut), p + cut, len - cut);
      if (split != want)
        fail_msg("len %zu align %zu split at %zu: 0x%08x, want 0x%08x", len, align, cut, split, want);
    }
  }
  free(mem);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c_check_value),   cmocka_unit_test(test_crc32c_fast_matches_bytewise),   cmocka_unit_test(test_encode_decode_error_bound),
      cmocka_unit_test(test_encode_matches_formula),
      cmocka_unit_test(test_clipping),             cmocka_unit_test(test_constant_dims),
      cmocka_unit_test(test_prepared_distances),   cmocka_unit_test(test_serialize_round_trip),
      cmocka_unit_test(test_corruption_detected),  cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_integer_distances),    cmocka_unit_test(test_integer_ranking),
      cmocka_unit_test(test_integer_extremes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
