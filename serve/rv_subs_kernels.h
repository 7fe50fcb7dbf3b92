#ifndef RV_SUBS_KERNELS_H
#define RV_SUBS_KERNELS_H
/* One vector against many (serve/ internal, for rv_subs): a change's vector
 * x against the query vectors of every live subscription, laid out as rows
 * of Q, stride floats apart. A scalar reference and SIMD versions (AVX2,
 * AVX-512), picked at run time; tests/serve/test_subs.c holds the SIMD ones
 * to the scalar one. */
#include <stddef.h>

#include "rv_distance.h" /* rv_isa_t */

/* Rows of Q and x hold n floats; n is a multiple of RV_SUBS_PAD (pad with
 * zeros) and Q, x are 64-byte aligned, stride a multiple of RV_SUBS_PAD. */
#define RV_SUBS_PAD 16

typedef struct rv__subs_kernels {
  const char *isa; /* "scalar", "avx2", "avx512" */
  /* out[j] = sum_i (x[i] - Q[j*stride+i])^2, except that the kernel may stop
   * early on row j once a partial sum exceeds thr[j]; out[j] is then that
   * partial sum (> thr[j], and <= what the full sum would have been). So
   * out[j] <= thr[j] exactly when the full sum is <= thr[j], and then out[j]
   * is the full sum. */
  void (*l2_many)(const float *x, const float *Q, size_t stride, size_t nq, size_t n, const float *thr,
                  float *out);
  /* out[j] = sum_i x[i] * Q[j*stride+i] */
  void (*dot_many)(const float *x, const float *Q, size_t stride, size_t nq, size_t n, float *out);
} rv__subs_kernels_t;

/* The kernels for isa (RV_ISA_BEST: the best the CPU has), NULL if the CPU
 * or the build lacks it. Static tables. Thread: any. */
const rv__subs_kernels_t *rv__subs_kernels_get(rv_isa_t isa);

/* Per-ISA entry points (rv_subs_kernels_avx2.c / _avx512.c). */
void rv__subs_l2_many_avx2(const float *x, const float *Q, size_t stride, size_t nq, size_t n, const float *thr,
                           float *out);
void rv__subs_dot_many_avx2(const float *x, const float *Q, size_t stride, size_t nq, size_t n, float *out);
void rv__subs_l2_many_avx512(const float *x, const float *Q, size_t stride, size_t nq, size_t n, const float *thr,
                             float *out);
void rv__subs_dot_many_avx512(const float *x, const float *Q, size_t stride, size_t nq, size_t n, float *out);

#endif
