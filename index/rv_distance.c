#include "rv_distance.h"

#include "rv_distance_isa.h"

/* Scalar reference kernels: the definition every SIMD version is tested
 * against, so they stay plain loops. The SIMD versions live in
 * rv_distance_avx2.c and rv_distance_avx512.c (each compiled with its own ISA
 * flags) and are picked here after a CPU check. */

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

/* Summed in uint32: wrap-around is then defined, and it is what the SIMD
 * integer adds do, so all ISAs agree bit for bit even past INT32_MAX. */
static int32_t sq8_dot_i16_scalar(const int16_t *q, const uint8_t *c, size_t n) {
  uint32_t s = 0;
  for (size_t i = 0; i < n; i++) s += (uint32_t)((int32_t)q[i] * (int32_t)c[i]);
  return (int32_t)s;
}

static const rv_kernels_t scalar = {"scalar",       l2sq_scalar,   dot_scalar,        sq8_l2_scalar,
                                    sq8_dot_scalar, pq_adc_scalar, sq8_dot_i16_scalar};

#if defined(RV_DISTANCE_X86)
/* __builtin_cpu_supports also checks that the OS saves the YMM/ZMM state
 * (XGETBV), so a CPU with AVX-512 under a kernel that disabled it reads as
 * unsupported. __builtin_cpu_init is idempotent and only needed when called
 * before constructors run, which a static library cannot rule out. */
static int have_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static int have_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}

static int have_avx512_vnni(void) { return have_avx512() && __builtin_cpu_supports("avx512vnni"); }
#endif

const rv_kernels_t *rv_kernels_get(rv_isa_t isa) {
  switch (isa) {
  case RV_ISA_SCALAR: return &scalar;
#if defined(RV_DISTANCE_X86)
  case RV_ISA_AVX2: return have_avx2() ? &rv__kernels_avx2 : NULL;
  case RV_ISA_AVX512: return have_avx512() ? &rv__kernels_avx512 : NULL;
  case RV_ISA_AVX512_VNNI: return have_avx512_vnni() ? &rv__kernels_avx512_vnni : NULL;
  case RV_ISA_BEST:
    if (have_avx512_vnni()) return &rv__kernels_avx512_vnni;
    if (have_avx512()) return &rv__kernels_avx512;
    if (have_avx2()) return &rv__kernels_avx2;
    return &scalar;
#else
  case RV_ISA_BEST: return &scalar;
#endif
  default: return NULL;
  }
}
