#include "rv_subs_kernels.h"

/* Scalar reference: plain loops, never stopping early. */
static void l2_many_scalar(const float *x, const float *xn, const float *Q, const float *Qn, size_t cap, size_t nb,
                           size_t nq, const float *thr, const float *first, float *out, uint32_t *work) {
  (void)xn, (void)Qn, (void)thr, (void)work;
  for (size_t j = 0; j < nq; j++) {
    float s = first ? first[j] : 0;
    for (size_t b = first ? 1 : 0; b < nb; b++) {
      const float *q = Q + (b * cap + j) * RV_SUBS_BLOCK, *xb = x + b * RV_SUBS_BLOCK;
      float t = 0;
      for (size_t i = 0; i < RV_SUBS_BLOCK; i++) {
        float d = xb[i] - q[i];
        t += d * d;
      }
      s += t;
    }
    out[j] = s;
  }
}

static void block0_many_scalar(const float *X, size_t xstride, size_t nx, const float *Q, size_t nq, float *out) {
  for (size_t c = 0; c < nx; c++) {
    for (size_t j = 0; j < nq; j++) {
      const float *q = Q + j * RV_SUBS_BLOCK, *x = X + c * xstride;
      float t = 0;
      for (size_t i = 0; i < RV_SUBS_BLOCK; i++) {
        float d = x[i] - q[i];
        t += d * d;
      }
      out[c * nq + j] = 0 + t;
    }
  }
}

static void dot_many_scalar(const float *x, const float *Q, size_t cap, size_t nb, size_t nq, float *out) {
  for (size_t j = 0; j < nq; j++) {
    float s = 0;
    for (size_t b = 0; b < nb; b++) {
      const float *q = Q + (b * cap + j) * RV_SUBS_BLOCK, *xb = x + b * RV_SUBS_BLOCK;
      for (size_t i = 0; i < RV_SUBS_BLOCK; i++) s += xb[i] * q[i];
    }
    out[j] = s;
  }
}

static const rv__subs_kernels_t scalar = {
    .isa = "scalar", .l2_many = l2_many_scalar, .dot_many = dot_many_scalar, .block0_many = block0_many_scalar};

#if defined(RV_SUBS_X86)
static const rv__subs_kernels_t avx2 = {
    .isa = "avx2", .l2_many = rv__subs_l2_many_avx2, .dot_many = rv__subs_dot_many_avx2,
    .block0_many = rv__subs_block0_many_avx2};
static const rv__subs_kernels_t avx512 = {
    .isa = "avx512", .l2_many = rv__subs_l2_many_avx512, .dot_many = rv__subs_dot_many_avx512,
    .block0_many = rv__subs_block0_many_avx512};
#endif

/* rv_kernels_get does the CPU check (CPUID and the OS's XSAVE state). */
const rv__subs_kernels_t *rv__subs_kernels_get(rv_isa_t isa) {
  switch (isa) {
  case RV_ISA_SCALAR: return &scalar;
#if defined(RV_SUBS_X86)
  case RV_ISA_AVX2: return rv_kernels_get(RV_ISA_AVX2) ? &avx2 : NULL;
  case RV_ISA_AVX512: return rv_kernels_get(RV_ISA_AVX512) ? &avx512 : NULL;
  case RV_ISA_BEST:
    if (rv_kernels_get(RV_ISA_AVX512)) return &avx512;
    if (rv_kernels_get(RV_ISA_AVX2)) return &avx2;
    return &scalar;
#else
  case RV_ISA_BEST: return &scalar;
#endif
  default: return NULL;
  }
}
