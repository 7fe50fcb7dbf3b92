/* Micro-benchmark of the distance kernels: ns per call of each kernel of each
 * ISA the CPU supports, at dim 784 (Fashion-MNIST) by default. Built, not run
 * by ctest:
 *   cmake --build build --target bench_kernels && ./build/tests/bench/bench_kernels [dim] [pq_m]
 * The inputs are small enough to stay in L1/L2, so this measures the kernel's
 * compute, not the memory traffic of a graph walk.
 *
 * sq8_i16 is the bare integer kernel on a padded query; sq8_l2i is the whole
 * integer L2 path a graph pays per code, rv_sq8_distance_l2 (kernel plus the
 * per-query and per-code constants), to compare with sq8_l2 and l2sq. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_distance.h"
#include "rv_sq8.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Keeps results live so the calls are not optimized away. */
static volatile float sink;

#define BENCH(label, call)                                                        \
  do {                                                                            \
    float acc_ = 0;                                                               \
    for (long r_ = 0; r_ < warm; r_++) acc_ += (call);                            \
    double best_ = 1e300;                                                         \
    for (int rep_ = 0; rep_ < 5; rep_++) {                                        \
      double t0_ = now_ns();                                                      \
      for (long r_ = 0; r_ < iters; r_++) acc_ += (call);                         \
      double ns_ = (now_ns() - t0_) / (double)iters;                              \
      if (ns_ < best_) best_ = ns_;                                               \
    }                                                                             \
    sink = acc_;                                                                  \
    printf("%-10s %-8s %9.1f ns/call\n", k->isa, label, best_);                    \
  } while (0)

int main(int argc, char **argv) {
  size_t dim = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 784;
  size_t m = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 98; /* 784 / 8: 8 dims per PQ byte */
  if (dim < 1 || m < 1) {
    fprintf(stderr, "usage: %s [dim] [pq_m]\n", argv[0]);
    return 2;
  }
  float *a = aligned_alloc(64, ((dim * 4) + 63) & ~(size_t)63), *b = aligned_alloc(64, ((dim * 4) + 63) & ~(size_t)63);
  float *w = aligned_alloc(64, ((dim * 4) + 63) & ~(size_t)63), *table = malloc(m * 256 * sizeof(float));
  uint8_t *c = malloc(dim), *code = malloc(m);
  if (!a || !b || !w || !table || !c || !code) return 1;
  uint64_t s = 1;
  for (size_t i = 0; i < dim; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    a[i] = (float)(s >> 40) / (float)(1 << 24);
    b[i] = (float)((s >> 20) & 0xffff) / 65536.0f;
    w[i] = 0.5f;
    c[i] = (uint8_t)(s >> 56);
  }
  for (size_t i = 0; i < m * 256; i++) table[i] = (float)(i % 97);
  for (size_t j = 0; j < m; j++) code[j] = (uint8_t)(j * 37);
  /* An SQ8 quantizer over [0, 1) per dimension for the integer path; the
   * code is padded to rv_sq8_code_size(dim) bytes as a graph would store it. */
  size_t np = rv_sq8_code_size((int)dim);
  float *sample = malloc(2 * dim * sizeof(float));
  int16_t *u = aligned_alloc(64, np * sizeof(int16_t));
  uint8_t *cp = aligned_alloc(64, np);
  rv_sq8_t *sq = NULL;
  if (!sample || !u || !cp) return 1;
  for (size_t i = 0; i < dim; i++) {
    sample[i] = 0;
    sample[dim + i] = 1;
  }
  if (rv_sq8_train(sample, 2, (int)dim, 0, 1, &sq, NULL, 0) != 0) return 1;
  memset(cp, 0, np);
  memcpy(cp, c, dim);
  rv_sq8_query_t qy;
  if (rv_sq8_query_prepare_l2(sq, a, u, &qy) != 0) return 1;
  float cnorm = rv_sq8_code_norm(sq, cp);
  long iters = (long)(2e8 / (double)(dim + 64)), warm = iters / 10;
  printf("dim %zu, pq m %zu, %ld calls per timing, best of 5\n", dim, m, iters);
  const rv_isa_t isas[] = {RV_ISA_SCALAR, RV_ISA_AVX2, RV_ISA_AVX512, RV_ISA_AVX512_VNNI};
  for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
    const rv_kernels_t *k = rv_kernels_get(isas[i]);
    if (!k) {
      printf("isa %d: not supported here\n", (int)isas[i]);
      continue;
    }
    BENCH("l2sq", k->l2sq(a, b, dim));
    BENCH("dot", k->dot(a, b, dim));
    BENCH("sq8_l2", k->sq8_l2(a, c, w, dim));
    BENCH("sq8_dot", k->sq8_dot(a, c, dim));
    BENCH("pq_adc", k->pq_adc(table, code, m));
    BENCH("sq8_i16", (float)k->sq8_dot_i16(u, cp, np));
    BENCH("sq8_l2i", rv_sq8_distance_l2(k, &qy, cp, cnorm));
  }
  printf("best: %s\n", rv_kernels_get(RV_ISA_BEST)->isa);
  free(a);
  free(b);
  free(w);
  free(table);
  free(c);
  free(code);
  free(sample);
  free(u);
  free(cp);
  rv_sq8_destroy(sq);
  return 0;
}
