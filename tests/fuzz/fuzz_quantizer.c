/* Fuzzes the quantizer parsers of index/: rv_sq8_deserialize (rv_sq8.h) and
 * rv_pq_deserialize (rv_pq.h). Every input goes to both (the magic picks
 * the one that can accept it), as it is and, if that differs, with its
 * trailing CRC-32C recomputed, so mutated parameters get past the checksum.
 * The seeds are rv_sq8_serialize / rv_pq_serialize output (gen_index_seeds.c).
 *
 * Checked: a refusal leaves *out untouched with a message; what is accepted
 * serializes back to exactly the input (the format has one encoding per
 * quantizer) and then, for SQ8: encode clamps (+inf -> 255, -inf and NaN -> 0),
 * decode -> encode -> decode is stable, the float and integer query
 * preparations either refuse or give finite values with zero padding and a
 * distance >= 0; for PQ: the shape adds up (m * dsub == dim), and a decoded
 * code is at ADC distance 0 from itself and from its re-encoding. */
#include "fuzz_index.h"
#include "rv_distance.h"
#include "rv_pq.h"
#include "rv_sq8.h"

static const rv_kernels_t *kernels(void) {
  static const rv_kernels_t *k;
  if (!k) k = rv_kernels_get(RV_ISA_BEST);
  FUZZ_CHECK(k != NULL, "no kernels");
  return k;
}

static void check_reserialize(const uint8_t *in, size_t size, const uint8_t *out, size_t len, const char *what) {
  size_t at = 0;
  while (at < size && at < len && in[at] == out[at]) at++;
  FUZZ_CHECK(len == size && at == size, "%s: serialize(deserialize(x)) is %zu bytes, x %zu, first difference at %zu",
             what, len, size, at);
}

static void sq8(const uint8_t *data, size_t size) {
  rv_sq8_t *sentinel = (rv_sq8_t *)(uintptr_t)1, *q = sentinel;
  char err[256];
  err[0] = 'x';
  rv_err_t e = rv_sq8_deserialize(data, size, &q, err, sizeof err);
  if (e != RV_OK) {
    FUZZ_CHECK(q == sentinel, "sq8: failed (%s) but *out changed", rv_err_str(e));
    FUZZ_CHECK(e == RV_ERR_CORRUPT || e == RV_ERR_NOMEM, "sq8: returned %s", rv_err_str(e));
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "sq8: failed without a message");
    return;
  }
  int dim = rv_sq8_dim(q);
  FUZZ_CHECK(dim >= 1, "sq8: dim %d", dim);
  uint8_t *buf = NULL;
  size_t len = 0;
  FUZZ_CHECK(rv_sq8_serialize(q, &buf, &len) == RV_OK, "sq8: serialize");
  check_reserialize(data, size, buf, len, "sq8");
  free(buf);

  size_t n = (size_t)dim, padded = rv_sq8_code_size(dim);
  float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *prep = malloc(n * sizeof *prep);
  uint8_t *code = calloc(padded, 1), *code2 = calloc(padded, 1);
  int16_t *u = malloc(padded * sizeof *u);
  FUZZ_CHECK(x && y && prep && code && code2 && u, "out of memory (dim %d)", dim);
  const float *mn = rv_sq8_min(q), *sc = rv_sq8_scale(q);
  for (size_t i = 0; i < n; i++) {
    FUZZ_CHECK(isfinite(mn[i]) && isfinite(sc[i]) && sc[i] > 0, "sq8: dim %zu min %g scale %g accepted", i, mn[i],
               sc[i]);
    x[i] = i % 3 == 0 ? INFINITY : i % 3 == 1 ? -INFINITY : NAN;
  }
  rv_sq8_encode(q, x, code);
  for (size_t i = 0; i < n; i++)
    FUZZ_CHECK(code[i] == (i % 3 == 0 ? 255 : 0), "sq8: %g encodes to %u", x[i], code[i]);

  for (size_t i = 0; i < n; i++) code[i] = (uint8_t)(i * 37 + size);
  rv_sq8_decode(q, code, x);
  rv_sq8_encode(q, x, code2);
  rv_sq8_decode(q, code2, y);
  rv_sq8_encode(q, y, code);
  FUZZ_CHECK(!memcmp(code, code2, n), "sq8: decode/encode is not stable");

  /* Queries: the decoded vector when it is finite, else zeros. */
  int finite = 1;
  for (size_t i = 0; i < n; i++) finite &= isfinite(x[i]) != 0;
  if (!finite) memset(x, 0, n * sizeof *x);
  rv_sq8_prepare_l2(q, x, prep);
  (void)rv_sq8_prepare_ip(q, x, prep);
  rv_sq8_query_t qy;
  if (rv_sq8_query_prepare_l2(q, x, u, &qy) == RV_OK) {
    FUZZ_CHECK(qy.u == u && qy.n == padded && qy.err >= 0 && isfinite(qy.a), "sq8: l2 query n %zu err %g a %g",
               qy.n, qy.err, qy.a);
    for (size_t i = n; i < padded; i++) FUZZ_CHECK(u[i] == 0, "sq8: padding u[%zu] = %d", i, u[i]);
    float d = rv_sq8_distance_l2(kernels(), &qy, code2, rv_sq8_code_norm(q, code2));
    FUZZ_CHECK(d >= 0 || isnan(d), "sq8: l2 distance %g", d);
  }
  if (rv_sq8_query_prepare_ip(q, x, u, &qy) == RV_OK) {
    FUZZ_CHECK(qy.u == u && qy.n == padded && qy.err >= 0, "sq8: ip query n %zu err %g", qy.n, qy.err);
    for (size_t i = n; i < padded; i++) FUZZ_CHECK(u[i] == 0, "sq8: padding u[%zu] = %d", i, u[i]);
    (void)rv_sq8_inner_product(kernels(), &qy, code2);
  }
  FUZZ_CHECK(rv_sq8_fingerprint(q) == rv__crc32c(0, data + 8, size - 12), "sq8: fingerprint is not the CRC of the body");
  free(x);
  free(y);
  free(prep);
  free(code);
  free(code2);
  free(u);
  rv_sq8_destroy(q);
}

static void pq(const uint8_t *data, size_t size) {
  rv_pq_t *sentinel = (rv_pq_t *)(uintptr_t)1, *q = sentinel;
  char err[256];
  err[0] = 'x';
  rv_err_t e = rv_pq_deserialize(data, size, &q, err, sizeof err);
  if (e != RV_OK) {
    FUZZ_CHECK(q == sentinel, "pq: failed (%s) but *out changed", rv_err_str(e));
    FUZZ_CHECK(e == RV_ERR_CORRUPT || e == RV_ERR_NOMEM, "pq: returned %s", rv_err_str(e));
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "pq: failed without a message");
    return;
  }
  int dim = rv_pq_dim(q), m = rv_pq_m(q), dsub = rv_pq_dsub(q);
  FUZZ_CHECK(dim >= 1 && m >= 1 && dsub >= 1 && (long)m * dsub == dim, "pq: dim %d m %d dsub %d", dim, m, dsub);
  uint8_t *buf = NULL;
  size_t len = 0;
  FUZZ_CHECK(rv_pq_serialize(q, &buf, &len) == RV_OK, "pq: serialize");
  check_reserialize(data, size, buf, len, "pq");
  free(buf);

  float *x = malloc((size_t)dim * sizeof *x), *table = malloc((size_t)m * RV_PQ_KSUB * sizeof *table);
  uint8_t *code = malloc((size_t)m), *code2 = malloc((size_t)m);
  FUZZ_CHECK(x && table && code && code2, "out of memory (dim %d m %d)", dim, m);
  for (int j = 0; j < m; j++) code[j] = (uint8_t)(j * 101 + size);
  rv_pq_decode(q, code, x);
  const float *cent = rv_pq_centroids(q);
  for (int j = 0; j < m; j++)
    FUZZ_CHECK(!memcmp(x + (size_t)j * dsub, cent + ((size_t)j * RV_PQ_KSUB + code[j]) * dsub, (size_t)dsub * 4),
               "pq: decode of sub-quantizer %d is not centroid %u", j, code[j]);
  rv_pq_adc_table_l2(q, x, table);
  float d = kernels()->pq_adc(table, code, (size_t)m);
  FUZZ_CHECK(d == 0, "pq: a decoded code is at distance %g from itself", d);
  rv_pq_encode(q, x, code2);
  d = kernels()->pq_adc(table, code2, (size_t)m);
  FUZZ_CHECK(d == 0, "pq: re-encoding a decoded vector moved it by %g", d);
  rv_pq_adc_table_ip(q, x, table);
  (void)kernels()->pq_adc(table, code, (size_t)m);
  FUZZ_CHECK(rv_pq_fingerprint(q) == rv__crc32c(0, data + 8, size - 12), "pq: fingerprint is not the CRC of the body");
  free(x);
  free(table);
  free(code);
  free(code2);
  rv_pq_destroy(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sq8(data, size);
  pq(data, size);
  if (size < 4) return 0;
  uint8_t *fixed = malloc(size);
  FUZZ_CHECK(fixed != NULL, "out of memory");
  memcpy(fixed, data, size);
  fuzz_fix_blob_crc(fixed, size);
  if (memcmp(fixed, data, size)) {
    sq8(fixed, size);
    pq(fixed, size);
  }
  free(fixed);
  return 0;
}
