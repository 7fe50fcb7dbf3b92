/* The body of the SIMD kernels of rv_subs_kernels.h, included by
 * rv_subs_kernels_avx2.c and rv_subs_kernels_avx512.c after they define
 * VEC, W (floats per VEC), ZERO(), LOAD(p), SUB(a, b), FMA(a, b, c) (a*b+c),
 * HSUM(v) and the entry point names L2_MANY, DOT_MANY. */
#include <math.h>

/* Sum over one block of (x - row)^2, four rows at a time: one load of x
 * serves four queries. */
static inline void l2_block4(const float *xb, const float *r0, const float *r1, const float *r2, const float *r3,
                             float *s) {
  VEC a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO();
  for (size_t i = 0; i < RV_SUBS_BLOCK; i += W) {
    VEC xv = LOAD(xb + i);
    VEC d0 = SUB(xv, LOAD(r0 + i)), d1 = SUB(xv, LOAD(r1 + i));
    VEC d2 = SUB(xv, LOAD(r2 + i)), d3 = SUB(xv, LOAD(r3 + i));
    a0 = FMA(d0, d0, a0);
    a1 = FMA(d1, d1, a1);
    a2 = FMA(d2, d2, a2);
    a3 = FMA(d3, d3, a3);
  }
  s[0] = HSUM(a0), s[1] = HSUM(a1), s[2] = HSUM(a2), s[3] = HSUM(a3);
}

static inline float l2_block1(const float *xb, const float *r) {
  VEC a = ZERO();
  for (size_t i = 0; i < RV_SUBS_BLOCK; i += W) {
    VEC d = SUB(LOAD(xb + i), LOAD(r + i));
    a = FMA(d, d, a);
  }
  return HSUM(a);
}

/* Block by block over the rows still possibly within their thresholds
 * (work holds their indices). Before each block a row is dropped when its
 * partial sum plus the bound (|row rest| - |x rest|)^2 on what the remaining
 * blocks add already passes its threshold, with margins for rounding in the
 * sums and in the rows themselves (see rv_subs_kernels.h). A
 * row's sum adds its block sums in block order whichever path computes
 * them, so results do not depend on the other rows. */
void L2_MANY(const float *x, const float *xn, const float *Q, const float *Qn, size_t cap, size_t nb, size_t nq,
             const float *thr, const float *first, float *out, uint32_t *work) {
  size_t n = nq;
  for (size_t j = 0; j < nq; j++) {
    out[j] = first ? first[j] : 0;
    work[j] = (uint32_t)j;
  }
  for (size_t b = first ? 1 : 0; b < nb && n; b++) {
    const float *Qb = Q + b * cap * RV_SUBS_BLOCK, *xb = x + b * RV_SUBS_BLOCK, *Nb = Qn + b * cap;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) { /* branch-free: which rows survive is unpredictable */
      uint32_t w = work[i];
      float gap = fabsf(Nb[w] - xn[b]) - 1e-6f * (Nb[w] + xn[b]);
      gap = gap > 0 ? gap : 0;
      float lb = (out[w] + gap * gap) * (1 - 1e-5f);
      float r = sqrtf(lb) - 2.4e-7f * (Qn[w] + xn[0]); /* rows off by up to 2^-22 of their norms */
      lb = r > 0 ? r * r : 0;
      work[kept] = w;
      kept += lb <= thr[w];
      out[w] = lb > thr[w] ? lb : out[w];
    }
    n = kept;
    size_t t = 0;
    for (; t + 4 <= n; t += 4) {
      float s[4];
      const uint32_t *w = work + t;
      l2_block4(xb, Qb + (size_t)w[0] * RV_SUBS_BLOCK, Qb + (size_t)w[1] * RV_SUBS_BLOCK,
                Qb + (size_t)w[2] * RV_SUBS_BLOCK, Qb + (size_t)w[3] * RV_SUBS_BLOCK, s);
      for (int u = 0; u < 4; u++) out[w[u]] += s[u];
    }
    for (; t < n; t++) out[work[t]] += l2_block1(xb, Qb + (size_t)work[t] * RV_SUBS_BLOCK);
  }
}

/* Four rows at a time against every X_c: the rows' first blocks stay in L1
 * while the changes go by. */
void BLOCK0_MANY(const float *X, size_t xstride, size_t nx, const float *Q, size_t nq, float *out) {
  size_t j = 0;
  for (; j + 4 <= nq; j += 4) {
    const float *r0 = Q + j * RV_SUBS_BLOCK;
    for (size_t c = 0; c < nx; c++) {
      float s[4];
      l2_block4(X + c * xstride, r0, r0 + RV_SUBS_BLOCK, r0 + 2 * RV_SUBS_BLOCK, r0 + 3 * RV_SUBS_BLOCK, s);
      float *o = out + c * nq + j;
      o[0] = 0 + s[0], o[1] = 0 + s[1], o[2] = 0 + s[2], o[3] = 0 + s[3];
    }
  }
  for (; j < nq; j++)
    for (size_t c = 0; c < nx; c++) out[c * nq + j] = 0 + l2_block1(X + c * xstride, Q + j * RV_SUBS_BLOCK);
}

void DOT_MANY(const float *x, const float *Q, size_t cap, size_t nb, size_t nq, float *out) {
  for (size_t j = 0; j < nq; j++) out[j] = 0;
  for (size_t b = 0; b < nb; b++) {
    const float *Qb = Q + b * cap * RV_SUBS_BLOCK, *xb = x + b * RV_SUBS_BLOCK;
    size_t j = 0;
    for (; j + 4 <= nq; j += 4) {
      const float *r0 = Qb + j * RV_SUBS_BLOCK, *r1 = r0 + RV_SUBS_BLOCK, *r2 = r1 + RV_SUBS_BLOCK,
                  *r3 = r2 + RV_SUBS_BLOCK;
      VEC a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO();
      for (size_t i = 0; i < RV_SUBS_BLOCK; i += W) {
        VEC xv = LOAD(xb + i);
        a0 = FMA(xv, LOAD(r0 + i), a0);
        a1 = FMA(xv, LOAD(r1 + i), a1);
        a2 = FMA(xv, LOAD(r2 + i), a2);
        a3 = FMA(xv, LOAD(r3 + i), a3);
      }
      out[j] += HSUM(a0), out[j + 1] += HSUM(a1), out[j + 2] += HSUM(a2), out[j + 3] += HSUM(a3);
    }
    for (; j < nq; j++) {
      const float *r = Qb + j * RV_SUBS_BLOCK;
      VEC a = ZERO();
      for (size_t i = 0; i < RV_SUBS_BLOCK; i += W) a = FMA(LOAD(xb + i), LOAD(r + i), a);
      out[j] += HSUM(a);
    }
  }
}
