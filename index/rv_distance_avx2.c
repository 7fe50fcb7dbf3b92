/* AVX2 + FMA kernels. This file is compiled with -mavx2 -mfma (see
 * index/CMakeLists.txt) and reached only through rv_kernels_get after a CPU
 * check.
 *
 * Shape of every kernel: four independent accumulators over 32 elements per
 * step, then single 8-wide steps, then one step over the last n % 8 elements
 * read with vmaskmov (no fault, no over-read) or, for bytes, copied into a
 * zeroed 8-byte buffer. The integer sq8_dot_i16 is the exception: 16 elements
 * (one ymm of int16) per step and a scalar tail, exact like every step. */
#include <immintrin.h>
#include <string.h>

#include "rv_distance_isa.h"

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* Lanes < rem set (rem in 1..7). */
static inline __m256i tail_mask(size_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static float l2sq_avx2(const float *a, const float *b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
    s2 = _mm256_fmadd_ps(d2, d2, s2);
    s3 = _mm256_fmadd_ps(d3, d3, s3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    s1 = _mm256_fmadd_ps(d, d, s1);
  }
  if (i < n) {
    __m256i k = tail_mask(n - i);
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, k), _mm256_maskload_ps(b + i, k));
    s2 = _mm256_fmadd_ps(d, d, s2);
  }
  return hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

static float dot_avx2(const float *a, const float *b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s1);
  if (i < n) {
    __m256i k = tail_mask(n - i);
    s2 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, k), _mm256_maskload_ps(b + i, k), s2);
  }
  return hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* 8 codes at c, widened to floats. */
static inline __m256 codes8(const uint8_t *c) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c)));
}

/* The last rem (< 8) codes, zero-padded. */
static inline __m256 codes8_tail(const uint8_t *c, size_t rem) {
  uint8_t buf[8] = {0};
  memcpy(buf, c, rem);
  return codes8(buf);
}

#define SQ8_L2_STEP(s, off)                                                               \
  do {                                                                                    \
    __m256 d_ = _mm256_sub_ps(_mm256_loadu_ps(q + i + (off)), codes8(c + i + (off)));     \
    s = _mm256_fmadd_ps(_mm256_mul_ps(d_, _mm256_loadu_ps(w + i + (off))), d_, s);        \
  } while (0)

static float sq8_l2_avx2(const float *q, const uint8_t *c, const float *w, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    SQ8_L2_STEP(s0, 0);
    SQ8_L2_STEP(s1, 8);
    SQ8_L2_STEP(s2, 16);
    SQ8_L2_STEP(s3, 24);
  }
  for (; i + 8 <= n; i += 8) SQ8_L2_STEP(s1, 0);
  if (i < n) {
    __m256i k = tail_mask(n - i);
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(q + i, k), codes8_tail(c + i, n - i));
    s2 = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_maskload_ps(w + i, k)), d, s2);
  }
  return hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}
#undef SQ8_L2_STEP

static float sq8_dot_avx2(const float *q, const uint8_t *c, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), codes8(c + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), codes8(c + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16), codes8(c + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24), codes8(c + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), codes8(c + i), s1);
  if (i < n) {
    __m256i k = tail_mask(n - i);
    s2 = _mm256_fmadd_ps(_mm256_maskload_ps(q + i, k), codes8_tail(c + i, n - i), s2);
  }
  return hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* Eight sub-quantizers per gather; lane l reads table[(j + l) * 256 + code[j + l]]. */
static float pq_adc_avx2(const float *table, const uint8_t *code, size_t m) {
  const __m256i step = _mm256_set1_epi32(8 * 256);
  __m256i base = _mm256_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536, 1792);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t j = 0;
  for (; j + 16 <= m; j += 16) {
    __m256i i0 = _mm256_add_epi32(base, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(code + j))));
    base = _mm256_add_epi32(base, step);
    __m256i i1 = _mm256_add_epi32(base, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(code + j + 8))));
    base = _mm256_add_epi32(base, step);
    s0 = _mm256_add_ps(s0, _mm256_i32gather_ps(table, i0, 4));
    s1 = _mm256_add_ps(s1, _mm256_i32gather_ps(table, i1, 4));
  }
  for (; j + 8 <= m; j += 8) {
    __m256i i0 = _mm256_add_epi32(base, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(code + j))));
    base = _mm256_add_epi32(base, step);
    s0 = _mm256_add_ps(s0, _mm256_i32gather_ps(table, i0, 4));
  }
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; j < m; j++) s += table[j * 256 + code[j]];
  return s;
}

/* 16 codes at c, zero-extended to int16. */
static inline __m256i codes16_i16(const uint8_t *c) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)c));
}

/* vpmaddwd: lane j of the result is q[2j] c[2j] + q[2j+1] c[2j+1], at most
 * 2 * 32768 * 255 in magnitude, so it never saturates; the int32 adds wrap
 * like the scalar reference. Four accumulators are more than the 1-cycle add
 * chain needs; they let the loads and widenings of four steps overlap. */
#define DOT_I16_STEP(s, off) \
  s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(q + i + (off))), codes16_i16(c + i + (off))))

static int32_t sq8_dot_i16_avx2(const int16_t *q, const uint8_t *c, size_t n) {
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  __m256i s2 = _mm256_setzero_si256(), s3 = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    DOT_I16_STEP(s0, 0);
    DOT_I16_STEP(s1, 16);
    DOT_I16_STEP(s2, 32);
    DOT_I16_STEP(s3, 48);
  }
  for (; i + 16 <= n; i += 16) DOT_I16_STEP(s1, 0);
  __m256i v = _mm256_add_epi32(_mm256_add_epi32(s0, s1), _mm256_add_epi32(s2, s3));
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  uint32_t s = (uint32_t)_mm_cvtsi128_si32(h);
  /* under 16 left: never taken for the padded lengths of rv_sq8.h */
  for (; i < n; i++) s += (uint32_t)((int32_t)q[i] * (int32_t)c[i]);
  return (int32_t)s;
}
#undef DOT_I16_STEP

const rv_kernels_t rv__kernels_avx2 = {"avx2",       l2sq_avx2,   dot_avx2,        sq8_l2_avx2,
                                       sq8_dot_avx2, pq_adc_avx2, sq8_dot_i16_avx2};
