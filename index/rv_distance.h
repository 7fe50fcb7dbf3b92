#ifndef RV_DISTANCE_H
#define RV_DISTANCE_H
/* Distance kernels: a scalar reference and SIMD versions (AVX2, AVX-512),
 * chosen at run time from what the CPU has. libc only.
 *
 * Every kernel of an ISA computes the same quantity as the scalar one, up to
 * float rounding (summation order differs), and the integer one (sq8_dot_i16)
 * bit for bit; tests/index/test_distance.c holds them to that. Pointers need no alignment; n may be any value >= 0. */
#include <stddef.h>
#include <stdint.h>

/* The values are stable (callers may store them): a new level is appended,
 * never inserted, so RV_ISA_AVX512_VNNI comes after RV_ISA_BEST. */
typedef enum {
  RV_ISA_SCALAR = 0,
  RV_ISA_AVX2 = 1,       /* AVX2 + FMA */
  RV_ISA_AVX512 = 2,     /* AVX-512 F + BW + VL */
  RV_ISA_BEST = 3,       /* the best the running CPU supports */
  RV_ISA_AVX512_VNNI = 4 /* RV_ISA_AVX512 + AVX512_VNNI: only sq8_dot_i16 differs */
} rv_isa_t;

typedef struct rv_kernels {
  const char *isa; /* "scalar", "avx2", "avx512" */
  /* sum (a[i] - b[i])^2 */
  float (*l2sq)(const float *a, const float *b, size_t n);
  /* sum a[i] * b[i] */
  float (*dot)(const float *a, const float *b, size_t n);
  /* SQ8, asymmetric (float query against a code):
   * sum w[i] * (q[i] - c[i])^2, with q already in code units (see rv_sq8.h). */
  float (*sq8_l2)(const float *q, const uint8_t *c, const float *w, size_t n);
  /* sum q[i] * c[i] */
  float (*sq8_dot)(const float *q, const uint8_t *c, size_t n);
  /* PQ asymmetric distance: sum over j < m of table[j * 256 + code[j]]. */
  float (*pq_adc)(const float *table, const uint8_t *code, size_t m);
  /* SQ8, integer cross term: sum q[i] * c[i], summed in int32 with wrap-around
   * (two's complement, any order gives the same bits), so every ISA returns
   * exactly the scalar result. It is the true sum whenever
   * 255 * sum |q[i]| <= INT32_MAX, which rv_sq8_query_prepare_l2/_ip
   * guarantee. Fastest when n is a multiple of 64 (rv_sq8.h pads to that);
   * any n works. */
  int32_t (*sq8_dot_i16)(const int16_t *q, const uint8_t *c, size_t n);
} rv_kernels_t;

/* The kernel table for isa; RV_ISA_BEST picks from CPUID (AVX512_VNNI, then
 * AVX512, then AVX2, then scalar). Returns NULL if the running CPU (or this
 * build) lacks the ISA. The tables are static constants:
 * the pointer stays valid for the life of the process. Thread: any. */
const rv_kernels_t *rv_kernels_get(rv_isa_t isa);

#endif
