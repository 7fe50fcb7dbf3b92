/* AVX-512 (F + BW + VL) kernels, and one AVX512_VNNI variant. This file is
 * compiled with -mavx512f -mavx512bw -mavx512vl -mfma (see
 * index/CMakeLists.txt) and reached only through rv_kernels_get after a CPU
 * check.
 *
 * Shape of every float kernel: four independent accumulators over 64 elements per
 * step (hides the 4-cycle FMA latency on two FMA ports), then single 16-wide
 * steps, then one masked step for the last n % 16 elements; masked loads do not
 * fault on the lanes they skip, so no scalar tail and no over-read. The
 * integer sq8_dot_i16 works 32 elements (one zmm of int16) per step. */
#include <immintrin.h>

#include "rv_distance_isa.h"


/* Sum of the 16 int32 lanes, wrapping like the lanes' own adds (the scalar
 * reference's uint32 arithmetic). GCC's _mm512_reduce_add_epi32 does its last
 * add in C int, which overflows (undefined behaviour, UBSan reports it) for
 * the extreme sums the kernel tests feed it. */
static inline int32_t hsum_epi32(__m512i v) {
  __m256i a = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i b = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  b = _mm_add_epi32(b, _mm_shuffle_epi32(b, _MM_SHUFFLE(1, 0, 3, 2)));
  b = _mm_add_epi32(b, _mm_shuffle_epi32(b, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(b);
}
static inline __mmask16 tail_mask(size_t rem) { return (__mmask16)((1u << rem) - 1u); }

static float l2sq_avx512(const float *a, const float *b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
    __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
    __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
    s0 = _mm512_fmadd_ps(d0, d0, s0);
    s1 = _mm512_fmadd_ps(d1, d1, s1);
    s2 = _mm512_fmadd_ps(d2, d2, s2);
    s3 = _mm512_fmadd_ps(d3, d3, s3);
  }
  for (; i + 16 <= n; i += 16) {
    __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    s1 = _mm512_fmadd_ps(d, d, s1);
  }
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i));
    s2 = _mm512_fmadd_ps(d, d, s2);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static float dot_avx512(const float *a, const float *b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s1);
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s2);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* 16 codes at c, widened to floats. */
static inline __m512 codes16(const uint8_t *c) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c)));
}

static inline __m512 codes16_masked(__mmask16 k, const uint8_t *c) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, c)));
}

/* w * d * d as fma(w * d, d, s): one multiply and one FMA per lane. */
#define SQ8_L2_STEP(s, off)                                                   \
  do {                                                                        \
    __m512 d_ = _mm512_sub_ps(_mm512_loadu_ps(q + i + (off)), codes16(c + i + (off))); \
    s = _mm512_fmadd_ps(_mm512_mul_ps(d_, _mm512_loadu_ps(w + i + (off))), d_, s); \
  } while (0)

static float sq8_l2_avx512(const float *q, const uint8_t *c, const float *w, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    SQ8_L2_STEP(s0, 0);
    SQ8_L2_STEP(s1, 16);
    SQ8_L2_STEP(s2, 32);
    SQ8_L2_STEP(s3, 48);
  }
  for (; i + 16 <= n; i += 16) SQ8_L2_STEP(s1, 0);
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, q + i), codes16_masked(k, c + i));
    s2 = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(k, w + i)), d, s2);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
#undef SQ8_L2_STEP

static float sq8_dot_avx512(const float *q, const uint8_t *c, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), codes16(c + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), codes16(c + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 32), codes16(c + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 48), codes16(c + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), codes16(c + i), s1);
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, q + i), codes16_masked(k, c + i), s2);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* table[j * 256 + code[j]] for 16 sub-quantizers at once with a gather; the
 * index of lane l is (j + l) * 256 + code[j + l]. m * 256 fits an int32 for any
 * m < 2^23, far beyond a real code length. */
static float pq_adc_avx512(const float *table, const uint8_t *code, size_t m) {
  const __m512i lane256 = _mm512_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072,
                                            3328, 3584, 3840);
  const __m512i step = _mm512_set1_epi32(16 * 256);
  __m512i base = lane256;
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t j = 0;
  for (; j + 32 <= m; j += 32) {
    __m512i i0 = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + j))));
    base = _mm512_add_epi32(base, step);
    __m512i i1 = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + j + 16))));
    base = _mm512_add_epi32(base, step);
    s0 = _mm512_add_ps(s0, _mm512_i32gather_ps(i0, table, 4));
    s1 = _mm512_add_ps(s1, _mm512_i32gather_ps(i1, table, 4));
  }
  for (; j + 16 <= m; j += 16) {
    __m512i i0 = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + j))));
    base = _mm512_add_epi32(base, step);
    s0 = _mm512_add_ps(s0, _mm512_i32gather_ps(i0, table, 4));
  }
  if (j < m) {
    __mmask16 k = tail_mask(m - j);
    __m512i i0 = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, code + j)));
    s1 = _mm512_add_ps(s1, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, i0, table, 4));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* 32 codes at c, zero-extended to int16 (vpmovzxbw). */
static inline __m512i codes32_i16(const uint8_t *c) {
  return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)c));
}

/* The last rem (1..31) query words and codes, zero beyond rem. */
static inline __mmask32 tail_mask32(size_t rem) { return (__mmask32)((1u << rem) - 1u); }

/* vpmaddwd + vpaddd: lane j of a madd is q[2j] c[2j] + q[2j+1] c[2j+1], at
 * most 2 * 32768 * 255 in magnitude, so it never saturates, and vpaddd wraps
 * like the scalar reference's uint32 sum. The add chain has 1-cycle latency;
 * the accumulators let the widenings (port 5) and madds (port 0) of
 * consecutive steps overlap. */
static int32_t sq8_dot_i16_avx512(const int16_t *q, const uint8_t *c, size_t n) {
#define STEP(s, off) \
  s = _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_loadu_si512(q + i + (off)), codes32_i16(c + i + (off))))
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  __m512i s2 = _mm512_setzero_si512(), s3 = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    STEP(s0, 0);
    STEP(s1, 32);
    STEP(s2, 64);
    STEP(s3, 96);
  }
  for (; i + 64 <= n; i += 64) {
    STEP(s0, 0);
    STEP(s1, 32);
  }
  for (; i + 32 <= n; i += 32) STEP(s2, 0);
  if (i < n) { /* never taken for the padded lengths of rv_sq8.h */
    __mmask32 k = tail_mask32(n - i);
    __m512i cq = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(k, c + i));
    s3 = _mm512_add_epi32(s3, _mm512_madd_epi16(_mm512_maskz_loadu_epi16(k, q + i), cq));
  }
#undef STEP
  return hsum_epi32(_mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3)));
}

/* The same with vpdpwssd (AVX512_VNNI: madd and add in one instruction, also
 * non-saturating). Its 4-5 cycle latency is the loop-carried one now, hence
 * four accumulators in the main loop. This one function is compiled for
 * VNNI through the target attribute (the file's flags stay F + BW + VL), and
 * reached only through rv__kernels_avx512_vnni, which rv_kernels_get hands
 * out after checking the CPU for avx512vnni. */
__attribute__((target("avx512vnni"))) static int32_t sq8_dot_i16_avx512_vnni(const int16_t *q, const uint8_t *c,
                                                                             size_t n) {
#define STEP(s, off) s = _mm512_dpwssd_epi32(s, _mm512_loadu_si512(q + i + (off)), codes32_i16(c + i + (off)))
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  __m512i s2 = _mm512_setzero_si512(), s3 = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    STEP(s0, 0);
    STEP(s1, 32);
    STEP(s2, 64);
    STEP(s3, 96);
  }
  for (; i + 64 <= n; i += 64) {
    STEP(s0, 0);
    STEP(s1, 32);
  }
  for (; i + 32 <= n; i += 32) STEP(s2, 0);
  if (i < n) {
    __mmask32 k = tail_mask32(n - i);
    __m512i cq = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(k, c + i));
    s3 = _mm512_dpwssd_epi32(s3, _mm512_maskz_loadu_epi16(k, q + i), cq);
  }
#undef STEP
  return hsum_epi32(_mm512_add_epi32(_mm512_add_epi32(s0, s1), _mm512_add_epi32(s2, s3)));
}

const rv_kernels_t rv__kernels_avx512 = {"avx512",       l2sq_avx512,   dot_avx512,        sq8_l2_avx512,
                                         sq8_dot_avx512, pq_adc_avx512, sq8_dot_i16_avx512};

/* Identical but for sq8_dot_i16: the float kernels gain nothing from VNNI. */
const rv_kernels_t rv__kernels_avx512_vnni = {"avx512vnni",   l2sq_avx512,   dot_avx512,             sq8_l2_avx512,
                                              sq8_dot_avx512, pq_adc_avx512, sq8_dot_i16_avx512_vnni};
