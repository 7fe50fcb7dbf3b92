/* Distance kernels: every kernel of every ISA the CPU supports, held to the
 * definitions in rv_distance.h.
 *
 * Three kinds of check:
 *  - exact: integer-valued inputs whose every partial sum is an exact float,
 *    so every ISA must return the very same number as a double reference;
 *  - one-hot: all terms zero but one, at each position in turn, which catches
 *    any lane, unroll or tail that is skipped or read twice;
 *  - random floats (including huge magnitudes), against a double reference
 *    with a tolerance relative to the sum of |terms|.
 * Plus a guard page right after the inputs, so a tail that over-reads faults.
 * The integer kernel sq8_dot_i16 is held to bit equality with an int64
 * reference (reduced mod 2^32) in every one of those, on any input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_distance.h"

static const size_t sizes[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 784, 4096};
#define NSIZES (sizeof sizes / sizeof sizes[0])
#define MAXN 4096

static const rv_isa_t isas[] = {RV_ISA_SCALAR, RV_ISA_AVX2, RV_ISA_AVX512, RV_ISA_AVX512_VNNI};
#define NISAS (sizeof isas / sizeof isas[0])

/* Double references written from the header's definitions, plus sum |term|. */
static double ref_l2sq(const float *a, const float *b, size_t n, double *mag) {
  double s = 0, m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    s += d * d;
    m += d * d;
  }
  *mag = m;
  return s;
}

static double ref_dot(const float *a, const float *b, size_t n, double *mag) {
  double s = 0, m = 0;
  for (size_t i = 0; i < n; i++) {
    s += (double)a[i] * b[i];
    m += fabs((double)a[i] * b[i]);
  }
  *mag = m;
  return s;
}

static double ref_sq8_l2(const float *q, const uint8_t *c, const float *w, size_t n, double *mag) {
  double s = 0, m = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)q[i] - c[i];
    s += w[i] * d * d;
    m += fabs(w[i] * d * d);
  }
  *mag = m;
  return s;
}

static double ref_sq8_dot(const float *q, const uint8_t *c, size_t n, double *mag) {
  double s = 0, m = 0;
  for (size_t i = 0; i < n; i++) {
    s += (double)q[i] * c[i];
    m += fabs((double)q[i] * c[i]);
  }
  *mag = m;
  return s;
}

static double ref_pq_adc(const float *t, const uint8_t *code, size_t m, double *mag) {
  double s = 0, g = 0;
  for (size_t j = 0; j < m; j++) {
    s += t[j * 256 + code[j]];
    g += fabs(t[j * 256 + code[j]]);
  }
  *mag = g;
  return s;
}

/* sum u[i] * c[i] exactly, then reduced mod 2^32: the definition of
 * sq8_dot_i16 on any input (the true sum when it fits an int32). */
static int32_t ref_dot_i16(const int16_t *u, const uint8_t *c, size_t n) {
  int64_t s = 0;
  for (size_t i = 0; i < n; i++) s += (int64_t)u[i] * c[i];
  return (int32_t)(uint32_t)(uint64_t)s;
}

/* Test inputs: a, b, w floats; u int16; c, code bytes; table m * 256 floats. */
typedef struct inputs {
  float *a, *b, *w, *table;
  int16_t *u;
  uint8_t *c, *code;
} inputs_t;

static void inputs_alloc(inputs_t *in) {
  /* +3: the kernels are also run at unaligned offsets */
  in->a = calloc(MAXN + 3, sizeof(float));
  in->b = calloc(MAXN + 3, sizeof(float));
  in->w = calloc(MAXN + 3, sizeof(float));
  in->table = calloc((size_t)MAXN * 256 + 3, sizeof(float));
  in->u = calloc(MAXN + 3, sizeof(int16_t));
  in->c = calloc(MAXN + 3, 1);
  in->code = calloc(MAXN + 3, 1);
  assert_true(in->a && in->b && in->w && in->table && in->u && in->c && in->code);
}

static void inputs_free(inputs_t *in) {
  free(in->a);
  free(in->b);
  free(in->w);
  free(in->table);
  free(in->u);
  free(in->c);
  free(in->code);
}

/* Runs every kernel of k at size n on in (offset by off elements) and checks
 * each against the double reference: exactly when exact, else within
 * rtol * sum|terms|; sq8_dot_i16 always exactly. */
static void check_all(const rv_kernels_t *k, const inputs_t *in, size_t off, size_t n, int exact, double rtol) {
  const float *a = in->a + off, *b = in->b + off, *w = in->w + off, *t = in->table + off;
  const uint8_t *c = in->c + off, *code = in->code + off;
  int32_t iwant = ref_dot_i16(in->u + off, c, n), igot = k->sq8_dot_i16(in->u + off, c, n);
  if (igot != iwant) fail_msg("%s sq8_dot_i16 n=%zu off=%zu: got %d want %d", k->isa, n, off, igot, iwant);
  double mag, want, got;
#define CHECK(name, expr_got, expr_want)                                                                         \
  do {                                                                                                          \
    want = (expr_want);                                                                                         \
    got = (expr_got);                                                                                           \
    double t_ = exact ? 0 : rtol * mag + 1e-30;                                                                 \
    if (!(fabs(got - want) <= t_))                                                                              \
      fail_msg("%s %s n=%zu off=%zu: got %.9g want %.9g (tolerance %g)", k->isa, name, n, off, got, want, t_); \
  } while (0)
  CHECK("l2sq", k->l2sq(a, b, n), ref_l2sq(a, b, n, &mag));
  CHECK("dot", k->dot(a, b, n), ref_dot(a, b, n, &mag));
  CHECK("sq8_l2", k->sq8_l2(a, c, w, n), ref_sq8_l2(a, c, w, n, &mag));
  CHECK("sq8_dot", k->sq8_dot(a, c, n), ref_sq8_dot(a, c, n, &mag));
  CHECK("pq_adc", k->pq_adc(t, code, n), ref_pq_adc(t, code, n, &mag));
#undef CHECK
}

static void fill_bytes(uint64_t *s, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(tu_next(s) >> 56);
}

/* Over the whole int16 range, -32768 included: sums over a few hundred
 * elements pass INT32_MAX, so the wrap-around is exercised too. */
static void fill_i16(uint64_t *s, int16_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (int16_t)(uint16_t)(tu_next(s) >> 48);
}

/* Small integers in [-r, r]. */
static void fill_ints(uint64_t *s, float *v, size_t n, int r) {
  for (size_t i = 0; i < n; i++) v[i] = (float)((int)(tu_next(s) % (uint64_t)(2 * r + 1)) - r);
}

static void test_isa_table(void **state) {
  (void)state;
  const rv_kernels_t *sc = rv_kernels_get(RV_ISA_SCALAR);
  assert_non_null(sc);
  assert_string_equal(sc->isa, "scalar");
  __builtin_cpu_init();
  int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && avx2;
  int vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  const rv_kernels_t *k2 = rv_kernels_get(RV_ISA_AVX2), *k512 = rv_kernels_get(RV_ISA_AVX512);
  const rv_kernels_t *kv = rv_kernels_get(RV_ISA_AVX512_VNNI);
  if (avx2) {
    assert_non_null(k2);
    assert_string_equal(k2->isa, "avx2");
  } else {
    assert_null(k2);
  }
  if (avx512) {
    assert_non_null(k512);
    assert_string_equal(k512->isa, "avx512");
  } else {
    assert_null(k512);
  }
  if (vnni) {
    assert_non_null(kv);
    assert_string_equal(kv->isa, "avx512vnni");
    /* the float kernels are the AVX-512 ones; only the integer one differs */
    assert_ptr_equal(kv->l2sq, k512->l2sq);
    assert_ptr_equal(kv->sq8_l2, k512->sq8_l2);
    assert_ptr_not_equal(kv->sq8_dot_i16, k512->sq8_dot_i16);
  } else {
    assert_null(kv);
  }
  const rv_kernels_t *best = rv_kernels_get(RV_ISA_BEST);
  assert_ptr_equal(best, vnni ? kv : avx512 ? k512 : avx2 ? k2 : sc);
  /* the values callers may have stored keep their meaning */
  assert_int_equal(RV_ISA_SCALAR, 0);
  assert_int_equal(RV_ISA_AVX2, 1);
  assert_int_equal(RV_ISA_AVX512, 2);
  assert_int_equal(RV_ISA_BEST, 3);
  assert_null(rv_kernels_get((rv_isa_t)5));
  assert_null(rv_kernels_get((rv_isa_t)-1));
  /* every slot filled */
  for (size_t i = 0; i < NISAS; i++) {
    const rv_kernels_t *k = rv_kernels_get(isas[i]);
    if (!k) continue;
    assert_true(k->l2sq && k->dot && k->sq8_l2 && k->sq8_dot && k->pq_adc && k->sq8_dot_i16);
  }
  print_message("best ISA here: %s\n", best->isa);
}

/* Integer-valued data: every partial sum is an integer below 2^24, so any
 * summation order gives the exact result. */
static void test_exact_integers(void **state) {
  (void)state;
  inputs_t in;
  inputs_alloc(&in);
  uint64_t s = 11;
  fill_ints(&s, in.a, MAXN + 3, 8);
  fill_ints(&s, in.b, MAXN + 3, 8);
  fill_ints(&s, in.table, (size_t)MAXN * 256 + 3, 100);
  fill_bytes(&s, in.c, MAXN + 3);
  fill_bytes(&s, in.code, MAXN + 3);
  fill_i16(&s, in.u, MAXN + 3);
  /* Keep sq8 sums below 2^24 too: w in {0, 1}, codes < 32, so w (q - c)^2
   * <= 39^2 and 4096 of them < 2^23. */
  for (size_t i = 0; i < MAXN + 3; i++) {
    in.w[i] = (float)(tu_next(&s) & 1);
    in.c[i] &= 31;
  }
  for (size_t ii = 0; ii < NISAS; ii++) {
    const rv_kernels_t *k = rv_kernels_get(isas[ii]);
    if (!k) continue;
    for (size_t si = 0; si < NSIZES; si++)
      for (size_t off = 0; off < 4; off += 3) check_all(k, &in, off, sizes[si], 1, 0);
  }
  inputs_free(&in);
}

/* All zero but one term, at every position: each kernel must return exactly
 * that term (adding zeros is exact). */
static void test_one_hot(void **state) {
  (void)state;
  static const size_t hot_sizes[] = {1, 3, 7, 15, 16, 17, 31, 33, 63, 65, 129, 784};
  inputs_t in;
  inputs_alloc(&in);
  for (size_t ii = 0; ii < NISAS; ii++) {
    const rv_kernels_t *k = rv_kernels_get(isas[ii]);
    if (!k) continue;
    for (size_t si = 0; si < sizeof hot_sizes / sizeof hot_sizes[0]; si++) {
      size_t n = hot_sizes[si];
      for (size_t p = 0; p < n; p++) {
        memset(in.a, 0, (MAXN + 3) * sizeof(float));
        memset(in.b, 0, (MAXN + 3) * sizeof(float));
        memset(in.w, 0, (MAXN + 3) * sizeof(float));
        memset(in.c, 0, MAXN + 3);
        memset(in.code, 0, MAXN + 3);
        memset(in.u, 0, (MAXN + 3) * sizeof(int16_t));
        for (size_t j = 0; j < n; j++) in.table[j * 256] = 0;
        in.a[p] = 3.5f;
        in.b[p] = -1.25f;
        in.w[p] = 0.5f;
        in.c[p] = 255;
        in.code[p] = 200;
        in.table[p * 256 + 200] = 7.25f;
        in.u[p] = -32768;
        float l2 = k->l2sq(in.a, in.b, n), dt = k->dot(in.a, in.b, n);
        float s8 = k->sq8_l2(in.a, in.c, in.w, n), s8d = k->sq8_dot(in.a, in.c, n);
        float pq = k->pq_adc(in.table, in.code, n);
        int32_t di = k->sq8_dot_i16(in.u, in.c, n);
        in.table[p * 256 + 200] = 0;
        if (l2 != 4.75f * 4.75f || dt != 3.5f * -1.25f || s8 != 0.5f * 251.5f * 251.5f || s8d != 3.5f * 255 ||
            pq != 7.25f || di != -32768 * 255)
          fail_msg("%s n=%zu hot=%zu: l2sq %g dot %g sq8_l2 %g sq8_dot %g pq_adc %g sq8_dot_i16 %d", k->isa, n, p, l2,
                   dt, s8, s8d, pq, di);
      }
    }
  }
  inputs_free(&in);
}

static void fill_random(inputs_t *in, uint64_t *s, float scale) {
  for (size_t i = 0; i < MAXN + 3; i++) {
    in->a[i] = scale * tu_float(s);
    in->b[i] = scale * tu_float(s);
    in->w[i] = fabsf(tu_float(s)); /* weights are scale^2 of SQ8: keep w (q - c)^2 finite */
  }
  for (size_t i = 0; i < (size_t)MAXN * 256 + 3; i++) in->table[i] = scale * tu_float(s);
  fill_i16(s, in->u, MAXN + 3);
  fill_bytes(s, in->c, MAXN + 3);
  fill_bytes(s, in->code, MAXN + 3);
}

/* Random floats of ordinary and of huge magnitude (squares near 1e30, sums
 * well inside float range), codes over the full 0..255. */
static void test_random_vs_reference(void **state) {
  (void)state;
  static const float scales[] = {1.0f, 1e-3f, 300.0f, 1e15f};
  inputs_t in;
  inputs_alloc(&in);
  uint64_t s = 7;
  for (size_t sc = 0; sc < sizeof scales / sizeof scales[0]; sc++) {
    fill_random(&in, &s, scales[sc]);
    for (size_t ii = 0; ii < NISAS; ii++) {
      const rv_kernels_t *k = rv_kernels_get(isas[ii]);
      if (!k) continue;
      for (size_t si = 0; si < NSIZES; si++)
        for (size_t off = 0; off < 4; off++) check_all(k, &in, off, sizes[si], 0, 2e-5);
    }
  }
  inputs_free(&in);
}

/* Zeros everywhere, codes all 0 and all 255, and codes alternating 0/255. */
static void test_code_extremes(void **state) {
  (void)state;
  inputs_t in;
  inputs_alloc(&in);
  uint64_t s = 3;
  for (int pattern = 0; pattern < 4; pattern++) {
    fill_random(&in, &s, 1.0f);
    for (size_t i = 0; i < MAXN + 3; i++) {
      uint8_t v = pattern == 0 ? 0 : pattern == 1 ? 255 : (i & 1) ? 255 : 0;
      in.c[i] = in.code[i] = v;
      if (pattern == 3) in.a[i] = in.b[i] = in.w[i] = 0;
    }
    for (size_t ii = 0; ii < NISAS; ii++) {
      const rv_kernels_t *k = rv_kernels_get(isas[ii]);
      if (!k) continue;
      for (size_t si = 0; si < NSIZES; si++) check_all(k, &in, 0, sizes[si], 0, 2e-5);
      if (pattern == 3) {
        assert_true(k->l2sq(in.a, in.b, 4096) == 0.0f);
        assert_true(k->dot(in.a, in.b, 4096) == 0.0f);
        assert_true(k->sq8_dot(in.a, in.c, 4096) == 0.0f);
      }
    }
  }
  inputs_free(&in);
}

/* Inputs that end exactly at a PROT_NONE page: a kernel whose tail reads one
 * element too far dies with SIGSEGV instead of passing by luck. */
static void test_no_overread(void **state) {
  (void)state;
  long pg = sysconf(_SC_PAGESIZE);
  assert_true(pg >= 4096);
  /* Seven buffers, each followed by a guard page; the table's holds 65 * 256
   * floats (the largest m below). */
  size_t span[7] = {(size_t)pg, (size_t)pg, (size_t)pg, (size_t)pg * 17, (size_t)pg, (size_t)pg, (size_t)pg};
  uint8_t *base[7];
  for (int b = 0; b < 7; b++) {
    base[b] = mmap(NULL, span[b] + (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(base[b] != MAP_FAILED);
    memset(base[b], 0, span[b]);
    assert_int_equal(mprotect(base[b] + span[b], (size_t)pg, PROT_NONE), 0);
  }
  static const size_t ns[] = {0, 1, 3, 7, 15, 17, 31, 33, 63, 65};
  for (size_t ii = 0; ii < NISAS; ii++) {
    const rv_kernels_t *k = rv_kernels_get(isas[ii]);
    if (!k) continue;
    for (size_t si = 0; si < sizeof ns / sizeof ns[0]; si++) {
      size_t n = ns[si];
      const float *a = (const float *)(base[0] + span[0]) - n;
      const float *b = (const float *)(base[1] + span[1]) - n;
      const float *w = (const float *)(base[2] + span[2]) - n;
      const float *t = (const float *)(base[3] + span[3]) - n * 256;
      const uint8_t *c = base[4] + span[4] - n;
      const uint8_t *code = base[5] + span[5] - n;
      const int16_t *u = (const int16_t *)(base[6] + span[6]) - n;
      assert_true(k->l2sq(a, b, n) == 0.0f);
      assert_true(k->dot(a, b, n) == 0.0f);
      assert_true(k->sq8_l2(a, c, w, n) == 0.0f);
      assert_true(k->sq8_dot(a, c, n) == 0.0f);
      assert_true(k->pq_adc(t, code, n) == 0.0f);
      assert_int_equal(k->sq8_dot_i16(u, c, n), 0);
    }
    /* past the AVX2 64-step and AVX-512 128-step loops into their tails */
    static const size_t ns_i16[] = {97, 129, 161, 785, 2047};
    for (size_t si = 0; si < sizeof ns_i16 / sizeof ns_i16[0]; si++) {
      size_t n = ns_i16[si];
      assert_int_equal(k->sq8_dot_i16((const int16_t *)(base[6] + span[6]) - n, base[4] + span[4] - n, n), 0);
    }
  }
  for (int b = 0; b < 7; b++) munmap(base[b], span[b] + (size_t)pg);
}

/* The largest |u| with 255 * n * |u| <= INT32_MAX: the per-element bound
 * under which no partial sum of n terms can overflow. */
static int16_t u_limit(size_t n) {
  int64_t l = INT32_MAX / (255 * (int64_t)n);
  return (int16_t)(l > 32767 ? 32767 : l);
}

/* Every ISA's sq8_dot_i16 against the reference at the padded lengths and
 * around every step boundary, unaligned too: random inputs, then the
 * extremes allowed by the bound (u = +-limit, codes 255), where the sums
 * reach +-INT32_MAX territory but must still be exact. */
static void test_dot_i16_exact(void **state) {
  (void)state;
  static const size_t ns[] = {0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 192, 784, 832, 4096};
  inputs_t in;
  inputs_alloc(&in);
  uint64_t s = 99;
  for (int pattern = 0; pattern < 6; pattern++) {
    fill_i16(&s, in.u, MAXN + 3);
    fill_bytes(&s, in.c, MAXN + 3);
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
      size_t n = ns[ni];
      int16_t lim = u_limit(n ? n : 1);
      if (pattern > 0) {
        for (size_t i = 0; i < MAXN + 3; i++) {
          in.c[i] = 255;
          in.u[i] = pattern == 1 ? lim : pattern == 2 ? (int16_t)-lim : pattern == 3 ? (int16_t)(i & 1 ? lim : -lim)
                                   : pattern == 4 ? (int16_t)(i % 3 == 0 ? lim : 0) : in.u[i];
        }
        if (pattern == 5)
          for (size_t i = 0; i < MAXN + 3; i++) in.c[i] = (uint8_t)(i & 1 ? 255 : 0); /* keeps random u */
      }
      int64_t exact = 0;
      for (size_t i = 0; i < n; i++) exact += (int64_t)in.u[i] * in.c[i];
      if (pattern >= 1 && pattern <= 4) /* within the bound: the true sum, no wrap */
        assert_true(exact >= -(int64_t)INT32_MAX && exact <= INT32_MAX);
      for (size_t ii = 0; ii < NISAS; ii++) {
        const rv_kernels_t *k = rv_kernels_get(isas[ii]);
        if (!k) continue;
        for (size_t off = 0; off < 4; off++) {
          int32_t got = k->sq8_dot_i16(in.u + off, in.c + off, n), want = ref_dot_i16(in.u + off, in.c + off, n);
          if (got != want)
            fail_msg("%s pattern %d n=%zu off=%zu: got %d want %d", k->isa, pattern, n, off, got, want);
          if (off == 0 && pattern >= 1 && pattern <= 4 && got != exact)
            fail_msg("%s pattern %d n=%zu: got %d, true sum %lld", k->isa, pattern, n, got, (long long)exact);
        }
      }
    }
  }
  inputs_free(&in);
}

/* At n = 65536 the bound allows |u| <= 128: 128 * 255 * 65536 =
 * 2139095040, 8 million short of INT32_MAX. Every ISA must return that exact
 * value (and its negation); one step past the bound the sum wraps, and every
 * ISA must still agree bit for bit with the reference. */
static void test_dot_i16_overflow_bound(void **state) {
  (void)state;
  enum { N = 65536 };
  int16_t *u = malloc(N * sizeof *u);
  uint8_t *c = malloc(N);
  assert_true(u && c);
  assert_int_equal(u_limit(N), 128);
  memset(c, 255, N);
  for (int pattern = 0; pattern < 4; pattern++) {
    int16_t v = pattern == 0 ? 128 : pattern == 1 ? -128 : pattern == 2 ? 129 : -32768;
    for (size_t i = 0; i < N; i++) u[i] = v;
    int64_t exact = (int64_t)v * 255 * N;
    for (size_t ii = 0; ii < NISAS; ii++) {
      const rv_kernels_t *k = rv_kernels_get(isas[ii]);
      if (!k) continue;
      int32_t got = k->sq8_dot_i16(u, c, N), want = ref_dot_i16(u, c, N);
      if (got != want) fail_msg("%s u=%d: got %d want %d", k->isa, v, got, want);
      if (pattern < 2 && got != exact) fail_msg("%s u=%d: got %d, true sum %lld", k->isa, v, got, (long long)exact);
    }
  }
  assert_int_equal(ref_dot_i16(u, c, N), (int32_t)(uint32_t)(uint64_t)((int64_t)-32768 * 255 * N));
  free(u);
  free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_isa_table),
      cmocka_unit_test(test_exact_integers),
      cmocka_unit_test(test_one_hot),
      cmocka_unit_test(test_random_vs_reference),
      cmocka_unit_test(test_code_extremes),
      cmocka_unit_test(test_no_overread),
      cmocka_unit_test(test_dot_i16_exact),
      cmocka_unit_test(test_dot_i16_overflow_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
