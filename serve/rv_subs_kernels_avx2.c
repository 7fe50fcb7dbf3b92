/* AVX2 + FMA kernels of rv_subs_kernels.h (compiled with -mavx2 -mfma). */
#include <immintrin.h>

#include "rv_subs_kernels.h"

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

#define VEC __m256
#define W 8
#define ZERO() _mm256_setzero_ps()
#define LOAD(p) _mm256_load_ps(p)
#define SUB(a, b) _mm256_sub_ps(a, b)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define HSUM(v) hsum256(v)
#define L2_MANY rv__subs_l2_many_avx2
#define DOT_MANY rv__subs_dot_many_avx2
#define BLOCK0_MANY rv__subs_block0_many_avx2
#include "rv_subs_kernels_body.h"
