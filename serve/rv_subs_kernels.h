#ifndef RV_SUBS_KERNELS_H
#define RV_SUBS_KERNELS_H
/* One vector against many (serve/ internal, for rv_subs): a change's vector
 * x against the query vectors of every live subscription. A scalar
 * reference and SIMD versions (AVX2, AVX-512), picked at run time;
 * tests/serve/test_subs.c holds the SIMD ones to the scalar one.
 *
 * Layout: rows of nb * RV_SUBS_BLOCK floats, stored block-major: block b of
 * row j at Q[(b * cap + j) * RV_SUBS_BLOCK] (cap rows per block), so the
 * first block of every query is one contiguous run: the l2 kernel goes
 * through all queries' first blocks, then the next block of only those
 * whose partial sum is still within their threshold, and so on. x holds
 * nb * RV_SUBS_BLOCK floats. Q and x are 64-byte aligned. rv_subs stores
 * l2 rows Haar-transformed (coarse coefficients first), so the first block
 * already bounds most far queries out. */
#include <stddef.h>
#include <stdint.h>

#include "rv_distance.h" /* rv_isa_t */

#define RV_SUBS_BLOCK 128

typedef struct rv__subs_kernels {
  const char *isa; /* "scalar", "avx2", "avx512" */
  /* out[j] = sum over blocks b, in order, of sum_i (x[i] - row_j[i])^2 within
   * block b; except that row j may be given up once a lower bound exceeds
   * thr[j]: out[j] is then that bound (> thr[j]). The bound holds for the
   * exact vectors the rows stand for even when each row (and x) is off by up
   * to 2^-22 of its norm (e.g. rounded from an orthonormal transform made in
   * double): such a vector pair is within thr[j] only if out[j] <= thr[j],
   * and then out[j] is the full sum of the rows. It needs the norms of the
   * rows' tails: Qn[b * cap + j] = |row j from block b on|, xn[b] = |x from
   * block b on| (nb each). work: nq slots. first: NULL, or block 0's sums
   * as block0_many made them (the kernel then starts at block 1). */
  void (*l2_many)(const float *x, const float *xn, const float *Q, const float *Qn, size_t cap, size_t nb,
                  size_t nq, const float *thr, const float *first, float *out, uint32_t *work);
  /* out[c * nq + j] = block 0's sum of (X_c - row_j)^2 for the nx vectors
   * X_c = X + c * xstride, bit for bit what l2_many adds for block 0: one
   * pass over the rows' first blocks serves several changes. */
  void (*block0_many)(const float *X, size_t xstride, size_t nx, const float *Q, size_t nq, float *out);
  /* out[j] = sum_i x[i] * row_j[i] */
  void (*dot_many)(const float *x, const float *Q, size_t cap, size_t nb, size_t nq, float *out);
} rv__subs_kernels_t;

/* The kernels for isa (RV_ISA_BEST: the best the CPU has), NULL if the CPU
 * or the build lacks it. Static tables. Thread: any. */
const rv__subs_kernels_t *rv__subs_kernels_get(rv_isa_t isa);

/* Per-ISA entry points (rv_subs_kernels_avx2.c / _avx512.c). */
void rv__subs_l2_many_avx2(const float *x, const float *xn, const float *Q, const float *Qn, size_t cap, size_t nb,
                           size_t nq, const float *thr, const float *first, float *out, uint32_t *work);
void rv__subs_block0_many_avx2(const float *X, size_t xstride, size_t nx, const float *Q, size_t nq, float *out);
void rv__subs_dot_many_avx2(const float *x, const float *Q, size_t cap, size_t nb, size_t nq, float *out);
void rv__subs_l2_many_avx512(const float *x, const float *xn, const float *Q, const float *Qn, size_t cap,
                             size_t nb, size_t nq, const float *thr, const float *first, float *out, uint32_t *work);
void rv__subs_block0_many_avx512(const float *X, size_t xstride, size_t nx, const float *Q, size_t nq, float *out);
void rv__subs_dot_many_avx512(const float *x, const float *Q, size_t cap, size_t nb, size_t nq, float *out);

#endif
