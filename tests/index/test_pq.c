/* rv_pq: product quantization — training quality, ADC tables against the
 * kernels, determinism, file format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_bytes.h"
#include "rv_distance.h"
#include "rv_pq.h"

/* n points around nc random centres in [-1, 1]^dim (drawn from seed), noise
 * +-sigma (drawn from seed + draw: same centres, other points). */
static float *clustered_draw(size_t n, int dim, int nc, float sigma, uint64_t seed, uint64_t draw) {
  uint64_t s = seed;
  float *centres = malloc(sizeof(float) * (size_t)nc * (size_t)dim), *x = malloc(sizeof(float) * n * (size_t)dim);
  assert_true(centres && x);
  tu_fill(&s, centres, nc * dim);
  s += draw * 0x51ed2701ULL;
  for (size_t i = 0; i < n; i++) {
    const float *c = centres + (tu_next(&s) % (uint64_t)nc) * (size_t)dim;
    for (int d = 0; d < dim; d++) x[i * (size_t)dim + (size_t)d] = c[d] + sigma * tu_float(&s);
  }
  free(centres);
  return x;
}

static float *clustered(size_t n, int dim, int nc, float sigma, uint64_t seed) {
  return clustered_draw(n, dim, nc, sigma, seed, 0);
}

static rv_pq_t *train_ok(const float *x, size_t n, int dim, int m, int iters, uint64_t seed) {
  rv_pq_params_t p = {.m = m, .iters = iters, .seed = seed};
  rv_pq_t *pq = NULL;
  char err[256] = "";
  rv_err_t e = rv_pq_train(x, n, dim, &p, &pq, err, sizeof err);
  if (e != RV_OK) fail_msg("rv_pq_train: %s (%s)", rv_err_str(e), err);
  assert_non_null(pq);
  assert_int_equal(rv_pq_dim(pq), dim);
  assert_int_equal(rv_pq_m(pq), m);
  assert_int_equal(rv_pq_dsub(pq), dim / m);
  return pq;
}

static double dist2(const float *a, const float *b, int n) {
  double s = 0;
  for (int i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  return s;
}

/* Mean squared reconstruction error of x under pq. */
static double mse(const rv_pq_t *pq, const float *x, size_t n) {
  int dim = rv_pq_dim(pq);
  uint8_t *code = malloc((size_t)rv_pq_m(pq));
  float *y = malloc(sizeof(float) * (size_t)dim);
  assert_true(code && y);
  double s = 0;
  for (size_t i = 0; i < n; i++) {
    rv_pq_encode(pq, x + i * (size_t)dim, code);
    rv_pq_decode(pq, code, y);
    s += dist2(x + i * (size_t)dim, y, dim);
  }
  free(code);
  free(y);
  return s / (double)n;
}

typedef struct scored {
  double d;
  int i;
} scored_t;

static int scored_cmp(const void *pa, const void *pb) {
  const scored_t *a = pa, *b = pb;
  if (a->d != b->d) return a->d < b->d ? -1 : 1;
  return a->i - b->i;
}

/* On clustered data, ranking a database by ADC distance finds most of the
 * exact 10 nearest neighbours; and training (Lloyd) improves on its seeding. */
static void test_adc_recall(void **state) {
  (void)state;
  enum { DIM = 32, M = 16, NT = 4000, NB = 2000, NQ = 50, K = 10 };
  float *train = clustered(NT, DIM, 64, 0.15f, 1);
  float *base = clustered_draw(NB, DIM, 64, 0.15f, 1, 1); /* same centres, other points */
  float *queries = clustered_draw(NQ, DIM, 64, 0.15f, 1, 2);
  rv_pq_t *pq = train_ok(train, NT, DIM, M, 25, 42);
  rv_pq_t *one = train_ok(train, NT, DIM, M, 1, 42);
  double e25 = mse(pq, train, NT), e1 = mse(one, train, NT);
  print_message("PQ training mse: 1 iteration %.5f, 25 iterations %.5f\n", e1, e25);
  assert_true(e25 < e1 * 0.95); /* measured 16% lower */

  uint8_t *codes = malloc((size_t)NB * M);
  float *table = malloc(sizeof(float) * M * 256);
  scored_t *exact = malloc(sizeof(scored_t) * NB), *approx = malloc(sizeof(scored_t) * NB);
  assert_true(codes && table && exact && approx);
  for (int i = 0; i < NB; i++) rv_pq_encode(pq, base + (size_t)i * DIM, codes + (size_t)i * M);
  const rv_kernels_t *k = rv_kernels_get(RV_ISA_BEST);
  int hits = 0;
  for (int qi = 0; qi < NQ; qi++) {
    const float *q = queries + (size_t)qi * DIM;
    rv_pq_adc_table_l2(pq, q, table);
    for (int i = 0; i < NB; i++) {
      exact[i] = (scored_t){dist2(q, base + (size_t)i * DIM, DIM), i};
      approx[i] = (scored_t){k->pq_adc(table, codes + (size_t)i * M, M), i};
    }
    qsort(exact, NB, sizeof *exact, scored_cmp);
    qsort(approx, NB, sizeof *approx, scored_cmp);
    for (int a = 0; a < K; a++)
      for (int b = 0; b < K; b++) hits += exact[a].i == approx[b].i;
  }
  double recall = (double)hits / (NQ * K);
  print_message("PQ recall@10 (m=%d, dim=%d): %.3f\n", M, DIM, recall);
  assert_true(recall >= 0.65); /* measured 0.78; random codes give ~0.005 */
  free(codes);
  free(table);
  free(exact);
  free(approx);
  rv_pq_destroy(one);
  rv_pq_destroy(pq);
  free(train);
  free(base);
  free(queries);
}

/* Encode picks, per sub-vector, a centroid no farther than any other; the ADC
 * sums (every ISA) equal the distance / inner product to the decoded vector;
 * the k-means left no centroid unused on the data it was trained on. */
static void test_encode_and_adc_exact(void **state) {
  (void)state;
  enum { DIM = 48, M = 6, DSUB = DIM / M, NT = 3000 };
  float *x = clustered(NT, DIM, 100, 0.2f, 3);
  rv_pq_t *pq = train_ok(x, NT, DIM, M, 15, 9);
  const float *cent = rv_pq_centroids(pq);
  uint8_t code[M];
  float y[DIM], q[DIM], table_l2[M * 256], table_ip[M * 256];
  static int used[M][256];
  memset(used, 0, sizeof used);
  for (int i = 0; i < NT; i++) {
    const float *v = x + (size_t)i * DIM;
    rv_pq_encode(pq, v, code);
    for (int j = 0; j < M; j++) {
      used[j][code[j]] = 1;
      if (i % 10) continue;
      double mine = dist2(v + j * DSUB, cent + ((size_t)j * 256 + code[j]) * DSUB, DSUB);
      for (int c = 0; c < 256; c++) {
        double other = dist2(v + j * DSUB, cent + ((size_t)j * 256 + c) * DSUB, DSUB);
        if (other < mine * (1 - 1e-6))
          fail_msg("vector %d sub %d: code %u at %.9g but centroid %d at %.9g", i, j, code[j], mine, c, other);
      }
    }
  }
  for (int j = 0; j < M; j++)
    for (int c = 0; c < 256; c++)
      if (!used[j][c]) fail_msg("sub-quantizer %d: centroid %d unused by its own training data", j, c);

  const rv_isa_t isas[] = {RV_ISA_SCALAR, RV_ISA_AVX2, RV_ISA_AVX512};
  uint64_t s = 5;
  for (int t = 0; t < 30; t++) {
    tu_fill(&s, q, DIM);
    rv_pq_encode(pq, x + (size_t)(t * 7) * DIM, code);
    rv_pq_decode(pq, code, y);
    for (int j = 0; j < M; j++) /* decode is the concatenated centroids */
      assert_memory_equal(y + j * DSUB, cent + ((size_t)j * 256 + code[j]) * DSUB, sizeof(float) * DSUB);
    rv_pq_adc_table_l2(pq, q, table_l2);
    rv_pq_adc_table_ip(pq, q, table_ip);
    double l2 = dist2(q, y, DIM), ip = 0, ipmag = 0;
    for (int d = 0; d < DIM; d++) {
      ip += (double)q[d] * y[d];
      ipmag += fabs((double)q[d] * y[d]);
    }
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
      const rv_kernels_t *k = rv_kernels_get(isas[ii]);
      if (!k) continue;
      assert_near(k->pq_adc(table_l2, code, M), l2, 1e-5 * l2 + 1e-6);
      assert_near(k->pq_adc(table_ip, code, M), ip, 1e-5 * ipmag + 1e-6);
    }
  }
  rv_pq_destroy(pq);
  free(x);
}

/* Same sample, parameters and seed: bit-identical codebooks; another seed:
 * a different one. A subsampled training (max_train) is deterministic too. */
static void test_deterministic(void **state) {
  (void)state;
  enum { DIM = 16, M = 4, NT = 1500 };
  float *x = clustered(NT, DIM, 40, 0.1f, 4);
  rv_pq_t *a = train_ok(x, NT, DIM, M, 10, 123), *b = train_ok(x, NT, DIM, M, 10, 123);
  rv_pq_t *c = train_ok(x, NT, DIM, M, 10, 124);
  assert_memory_equal(rv_pq_centroids(a), rv_pq_centroids(b), sizeof(float) * 256 * DIM);
  assert_int_equal(rv_pq_fingerprint(a), rv_pq_fingerprint(b));
  assert_true(memcmp(rv_pq_centroids(a), rv_pq_centroids(c), sizeof(float) * 256 * DIM) != 0);
  assert_int_not_equal(rv_pq_fingerprint(a), rv_pq_fingerprint(c));
  rv_pq_params_t p = {.m = M, .iters = 10, .seed = 5, .max_train = 600};
  rv_pq_t *d = NULL, *e = NULL;
  char err[256];
  assert_int_equal(rv_pq_train(x, NT, DIM, &p, &d, err, sizeof err), RV_OK);
  assert_int_equal(rv_pq_train(x, NT, DIM, &p, &e, err, sizeof err), RV_OK);
  assert_memory_equal(rv_pq_centroids(d), rv_pq_centroids(e), sizeof(float) * 256 * DIM);
  assert_true(memcmp(rv_pq_centroids(d), rv_pq_centroids(a), sizeof(float) * 256 * DIM) != 0);
  rv_pq_destroy(a);
  rv_pq_destroy(b);
  rv_pq_destroy(c);
  rv_pq_destroy(d);
  rv_pq_destroy(e);
  free(x);
}

static rv_pq_t *small_pq(void) {
  float *x = clustered(300, 8, 20, 0.1f, 6);
  rv_pq_t *pq = train_ok(x, 300, 8, 2, 5, 1);
  free(x);
  return pq;
}

static void test_serialize_round_trip(void **state) {
  (void)state;
  rv_pq_t *pq = small_pq();
  uint8_t *buf = NULL, *buf2 = NULL;
  size_t len = 0, len2 = 0;
  assert_int_equal(rv_pq_serialize(pq, &buf, &len), RV_OK);
  assert_int_equal(len, 24 + 4 * 256 * 8 + 4);
  assert_memory_equal(buf, "RVPQ", 4);
  assert_int_equal(rv__get_u32(buf + 4), 1);
  assert_int_equal(rv__get_u32(buf + 8), 8);
  assert_int_equal(rv__get_u32(buf + 12), 2);
  assert_int_equal(rv__get_u32(buf + 16), 256);
  assert_true(rv__get_f32(buf + 24) == rv_pq_centroids(pq)[0]);
  assert_int_equal(rv__get_u32(buf + len - 4), rv__crc32c(0, buf, len - 4));
  rv_pq_t *r = NULL;
  char err[256] = "";
  assert_int_equal(rv_pq_deserialize(buf, len, &r, err, sizeof err), RV_OK);
  assert_int_equal(rv_pq_m(r), 2);
  assert_memory_equal(rv_pq_centroids(r), rv_pq_centroids(pq), sizeof(float) * 256 * 8);
  assert_int_equal(rv_pq_fingerprint(r), rv_pq_fingerprint(pq));
  assert_int_equal(rv_pq_serialize(r, &buf2, &len2), RV_OK);
  assert_int_equal(len2, len);
  assert_memory_equal(buf2, buf, len);
  float v[8], t1[512], t2[512];
  uint8_t c1[2], c2[2];
  uint64_t s = 3;
  tu_fill(&s, v, 8);
  rv_pq_encode(pq, v, c1);
  rv_pq_encode(r, v, c2);
  assert_memory_equal(c1, c2, 2);
  rv_pq_adc_table_l2(pq, v, t1);
  rv_pq_adc_table_l2(r, v, t2);
  assert_memory_equal(t1, t2, sizeof t1);
  free(buf);
  free(buf2);
  rv_pq_destroy(r);
  rv_pq_destroy(pq);
}

static void test_corruption_detected(void **state) {
  (void)state;
  rv_pq_t *pq = small_pq();
  uint8_t *buf = NULL;
  size_t len = 0;
  assert_int_equal(rv_pq_serialize(pq, &buf, &len), RV_OK);
  uint8_t *copy = malloc(len + 1);
  assert_non_null(copy);
  memcpy(copy, buf, len);
  static const uint8_t flips[] = {0x01, 0x80, 0xff};
  rv_pq_t *sentinel = (rv_pq_t *)(uintptr_t)0x1;
  for (size_t pos = 0; pos < len; pos++)
    for (size_t f = 0; f < sizeof flips; f++) {
      copy[pos] ^= flips[f];
      rv_pq_t *out = sentinel;
      char err[256] = "";
      rv_err_t e = rv_pq_deserialize(copy, len, &out, err, sizeof err);
      copy[pos] ^= flips[f];
      if (e != RV_ERR_CORRUPT) fail_msg("byte %zu ^ 0x%02x: got %d (%s), not RV_ERR_CORRUPT", pos, flips[f], e, err);
      assert_ptr_equal(out, sentinel);
      assert_true(strlen(err) > 0);
    }
  for (size_t l = 0; l < len; l++) {
    rv_pq_t *out = sentinel;
    char err[256] = "";
    assert_int_equal(rv_pq_deserialize(buf, l, &out, err, sizeof err), RV_ERR_CORRUPT);
    assert_ptr_equal(out, sentinel);
    if (!strstr(err, "truncated")) fail_msg("truncation to %zu bytes reported as: %s", l, err);
  }
  rv_pq_t *out = sentinel;
  char err[256] = "";
  copy[len] = 0;
  assert_int_equal(rv_pq_deserialize(copy, len + 1, &out, err, sizeof err), RV_ERR_CORRUPT);
  assert_non_null(strstr(err, "trailing"));
  /* a NaN centroid behind a valid checksum */
  rv__put_f32(copy + 24, NAN);
  rv__put_u32(copy + len - 4, rv__crc32c(0, copy, len - 4));
  assert_int_equal(rv_pq_deserialize(copy, len, &out, err, sizeof err), RV_ERR_CORRUPT);
  assert_ptr_equal(out, sentinel);
  free(copy);
  free(buf);
  rv_pq_destroy(pq);
}

static void test_bad_arguments(void **state) {
  (void)state;
  float *x = clustered(300, 12, 10, 0.1f, 8);
  rv_pq_t *sentinel = (rv_pq_t *)(uintptr_t)0x1, *out = sentinel;
  char err[256];
  rv_pq_params_t p = {.m = 5, .iters = 3, .seed = 1};
  assert_int_equal(rv_pq_train(x, 300, 12, &p, &out, err, sizeof err), RV_ERR_INVALID); /* 12 % 5 */
  assert_non_null(strstr(err, "multiple"));
  p.m = 0;
  assert_int_equal(rv_pq_train(x, 300, 12, &p, &out, err, sizeof err), RV_ERR_INVALID);
  p.m = 24;
  assert_int_equal(rv_pq_train(x, 300, 12, &p, &out, err, sizeof err), RV_ERR_INVALID); /* m > dim */
  p.m = 4;
  assert_int_equal(rv_pq_train(x, 255, 12, &p, &out, err, sizeof err), RV_ERR_INVALID); /* fewer than 256 */
  assert_non_null(strstr(err, "256"));
  assert_int_equal(rv_pq_train(x, 300, 0, &p, &out, err, sizeof err), RV_ERR_INVALID);
  assert_int_equal(rv_pq_train(x, 300, 12, NULL, &out, err, sizeof err), RV_ERR_INVALID);
  x[100] = NAN;
  assert_int_equal(rv_pq_train(x, 300, 12, &p, &out, err, sizeof err), RV_ERR_INVALID);
  assert_ptr_equal(out, sentinel);
  x[100] = 0;
  /* exactly 256 vectors, many duplicates: trains, every code decodes finite */
  for (int i = 128; i < 256; i++) memcpy(x + i * 12, x + (i - 128) * 12, sizeof(float) * 12);
  assert_int_equal(rv_pq_train(x, 256, 12, &p, &out, err, sizeof err), RV_OK);
  assert_true(out != sentinel);
  for (int i = 0; i < 256 * 12; i++) assert_true(isfinite(rv_pq_centroids(out)[i]));
  rv_pq_destroy(out);
  rv_pq_destroy(NULL);
  free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_adc_recall),           cmocka_unit_test(test_encode_and_adc_exact),
      cmocka_unit_test(test_deterministic),        cmocka_unit_test(test_serialize_round_trip),
      cmocka_unit_test(test_corruption_detected),  cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
