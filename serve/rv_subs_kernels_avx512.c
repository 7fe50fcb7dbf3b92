/* AVX-512F versions of rv_subs_kernels.h (compiled with -mavx512f -mfma). Four
 * rows at a time, so each load of x serves four queries. */
#include <immintrin.h>

#include "rv_subs_kernels.h"

#define CHECK 128 /* floats between early-stop checks (a multiple of RV_SUBS_PAD) */

static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Each accumulator lane only grows (fma of a square onto it rounds to >= it)
 * and hsum is monotone in every lane, so a partial hsum never exceeds the
 * full one: stopping once it passes thr is safe. */
void rv__subs_l2_many_avx512(const float *x, const float *Q, size_t stride, size_t nq, size_t n, const float *thr,
                           float *out) {
  size_t j = 0;
  for (; j + 4 <= nq; j += 4) {
    const float *q0 = Q + j * stride, *q1 = q0 + stride, *q2 = q1 + stride, *q3 = q2 + stride;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    while (i < n) {
      size_t end = i + CHECK < n ? i + CHECK : n;
      for (; i < end; i += 16) {
        __m512 xv = _mm512_load_ps(x + i);
        __m512 d0 = _mm512_sub_ps(xv, _mm512_load_ps(q0 + i));
        __m512 d1 = _mm512_sub_ps(xv, _mm512_load_ps(q1 + i));
        __m512 d2 = _mm512_sub_ps(xv, _mm512_load_ps(q2 + i));
        __m512 d3 = _mm512_sub_ps(xv, _mm512_load_ps(q3 + i));
        a0 = _mm512_fmadd_ps(d0, d0, a0);
        a1 = _mm512_fmadd_ps(d1, d1, a1);
        a2 = _mm512_fmadd_ps(d2, d2, a2);
        a3 = _mm512_fmadd_ps(d3, d3, a3);
      }
      out[j] = hsum(a0);
      out[j + 1] = hsum(a1);
      out[j + 2] = hsum(a2);
      out[j + 3] = hsum(a3);
      if (out[j] > thr[j] && out[j + 1] > thr[j + 1] && out[j + 2] > thr[j + 2] && out[j + 3] > thr[j + 3]) break;
    }
  }
  for (; j < nq; j++) {
    const float *q = Q + j * stride;
    __m512 a = _mm512_setzero_ps();
    size_t i = 0;
    while (i < n) {
      size_t end = i + CHECK < n ? i + CHECK : n;
      for (; i < end; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_load_ps(x + i), _mm512_load_ps(q + i));
        a = _mm512_fmadd_ps(d, d, a);
      }
      out[j] = hsum(a);
      if (out[j] > thr[j]) break;
    }
    if (n == 0) out[j] = 0;
  }
}

void rv__subs_dot_many_avx512(const float *x, const float *Q, size_t stride, size_t nq, size_t n, float *out) {
  size_t j = 0;
  for (; j + 4 <= nq; j += 4) {
    const float *q0 = Q + j * stride, *q1 = q0 + stride, *q2 = q1 + stride, *q3 = q2 + stride;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 16) {
      __m512 xv = _mm512_load_ps(x + i);
      a0 = _mm512_fmadd_ps(xv, _mm512_load_ps(q0 + i), a0);
      a1 = _mm512_fmadd_ps(xv, _mm512_load_ps(q1 + i), a1);
      a2 = _mm512_fmadd_ps(xv, _mm512_load_ps(q2 + i), a2);
      a3 = _mm512_fmadd_ps(xv, _mm512_load_ps(q3 + i), a3);
    }
    out[j] = hsum(a0);
    out[j + 1] = hsum(a1);
    out[j + 2] = hsum(a2);
    out[j + 3] = hsum(a3);
  }
  for (; j < nq; j++) {
    const float *q = Q + j * stride;
    __m512 a = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) a = _mm512_fmadd_ps(_mm512_load_ps(x + i), _mm512_load_ps(q + i), a);
    out[j] = hsum(a);
  }
}
