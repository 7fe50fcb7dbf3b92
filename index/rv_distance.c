#include "rv_distance.h"

/* Scalar reference kernels. The SIMD versions live in rv_distance_avx2.c and
 * rv_distance_avx512.c (compiled with target attributes, picked here). */

static float l2sq_scalar(const float *a, const float *b, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; i++) {
    float d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

static float dot_scalar(const float *a, const float *b, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static float sq8_l2_scalar(const float *q, const uint8_t *c, const float *w, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; i++) {
    float d = q[i] - (float)c[i];
    s += w[i] * d * d;
  }
  return s;
}

static float sq8_dot_scalar(const float *q, const uint8_t *c, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; i++) s += q[i] * (float)c[i];
  return s;
}

static float pq_adc_scalar(const float *table, const uint8_t *code, size_t m) {
  float s = 0;
  for (size_t j = 0; j < m; j++) s += table[j * 256 + code[j]];
  return s;
}

static const rv_kernels_t scalar = {"scalar", l2sq_scalar, dot_scalar, sq8_l2_scalar, sq8_dot_scalar, pq_adc_scalar};

const rv_kernels_t *rv_kernels_get(rv_isa_t isa) {
  switch (isa) {
  case RV_ISA_SCALAR:
  case RV_ISA_BEST: return &scalar;
  default: return NULL;
  }
}
