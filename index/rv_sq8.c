#include "rv_sq8.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rv_bytes.h"

struct rv_sq8 {
  int dim;
  double lo_q, hi_q;    /* the clipping quantiles it was trained with */
  uint32_t fingerprint; /* CRC-32C of the serialized parameters */
  float *min;           /* dim floats; min, scale and w share one 64-byte-aligned block */
  float *scale;         /* dim floats, > 0 */
  float *w;             /* dim floats, scale^2 */
};

#define HEADER_SIZE 32u
#define MAGIC "RVQ8"

static size_t body_size(int dim) { return HEADER_SIZE + 8u * (size_t)dim; }

/* Allocates a quantizer with room for dim dimensions, parameters unset. */
static rv_sq8_t *sq8_alloc(int dim) {
  rv_sq8_t *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  size_t stride = ((size_t)dim + 15) & ~(size_t)15; /* 64 bytes */
  float *block = aligned_alloc(64, 3 * stride * sizeof(float));
  if (!block) {
    free(q);
    return NULL;
  }
  memset(block, 0, 3 * stride * sizeof(float));
  q->dim = dim;
  q->min = block;
  q->scale = block + stride;
  q->w = block + 2 * stride;
  return q;
}

void rv_sq8_destroy(rv_sq8_t *q) {
  if (!q) return;
  free(q->min);
  free(q);
}

/* Header and parameters, without the checksum, into p (body_size bytes). */
static void write_body(const rv_sq8_t *q, uint8_t *p) {
  memcpy(p, MAGIC, 4);
  rv__put_u32(p + 4, RV_SQ8_FORMAT_VERSION);
  rv__put_u32(p + 8, (uint32_t)q->dim);
  rv__put_u32(p + 12, 0);
  rv__put_f64(p + 16, q->lo_q);
  rv__put_f64(p + 24, q->hi_q);
  uint8_t *v = p + HEADER_SIZE;
  for (int i = 0; i < q->dim; i++) rv__put_f32(v + 4 * (size_t)i, q->min[i]);
  v += 4 * (size_t)q->dim;
  for (int i = 0; i < q->dim; i++) rv__put_f32(v + 4 * (size_t)i, q->scale[i]);
}

/* Fills w and the fingerprint once min and scale are set. */
static rv_err_t finish(rv_sq8_t *q) {
  for (int i = 0; i < q->dim; i++) q->w[i] = q->scale[i] * q->scale[i];
  size_t len = body_size(q->dim);
  uint8_t *p = malloc(len);
  if (!p) return RV_ERR_NOMEM;
  write_body(q, p);
  /* after magic and version: the same parameters give the same fingerprint
   * whatever format version carries them */
  q->fingerprint = rv__crc32c(0, p + 8, len - 8);
  free(p);
  return RV_OK;
}

/* Sets min and scale of dimension i from a clipped range [lo, hi]. */
static void set_range(rv_sq8_t *q, int i, double lo, double hi) {
  if (!(hi > lo)) hi = lo + fmax(1.0, fabs(lo) / 256);
  float mn = (float)lo, sc = (float)((hi - lo) / 255);
  if (!(sc > 0)) sc = (float)fmax(1.0, fabs(lo) / 256) / 255; /* range below float resolution */
  q->min[i] = mn;
  q->scale[i] = sc;
}

/* Hoare-partition quickselect: afterwards a[k] holds the k-th smallest, all
 * before it are <= and all after it >=. Splits runs of equal values evenly,
 * which matters for image-like data full of zeros. */
static void select_kth(float *a, size_t n, size_t k) {
  size_t lo = 0, hi = n - 1;
  while (lo < hi) {
    float pivot = a[lo + (hi - lo) / 2];
    size_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        float t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        if (j == 0) break;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

/* The p-quantile of a[0..n) (reordered), interpolating linearly between the
 * order statistics at floor and ceil of p * (n - 1). */
static double quantile(float *a, size_t n, double p) {
  double pos = p * (double)(n - 1);
  size_t k = (size_t)floor(pos);
  if (k >= n - 1) k = n - 1;
  select_kth(a, n, k);
  double v = a[k], frac = pos - (double)k;
  if (frac > 0 && k + 1 < n) {
    float next = a[k + 1];
    for (size_t r = k + 2; r < n; r++)
      if (a[r] < next) next = a[r];
    v += frac * ((double)next - v);
  }
  return v;
}

rv_err_t rv_sq8_train(const float *sample, size_t n, int dim, double lo_q, double hi_q, rv_sq8_t **out,
                      char *errstr, size_t errstr_size) {
  if (!sample || !out) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "sq8: NULL sample or out");
  if (n < 1 || dim < 1)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "sq8: need n >= 1 and dim >= 1 (n=%zu dim=%d)", n, dim);
  if (!(lo_q >= 0 && lo_q < hi_q && hi_q <= 1))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "sq8: quantiles must satisfy 0 <= lo_q < hi_q <= 1 (%g, %g)",
                   lo_q, hi_q);
  if (n > SIZE_MAX / sizeof(float) / (size_t)dim)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "sq8: sample of %zu x %d is too large", n, dim);
  for (size_t r = 0; r < n * (size_t)dim; r++)
    if (!isfinite(sample[r]))
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "sq8: sample value %zu of vector %zu is not finite",
                     r % (size_t)dim, r / (size_t)dim);

  rv_sq8_t *q = sq8_alloc(dim);
  /* columns are gathered CHUNK at a time: one pass over the sample reads one
   * 64-byte line per row instead of one per value */
  enum { CHUNK = 16 };
  float *col = malloc(n * CHUNK * sizeof *col);
  if (!q || !col) {
    rv_sq8_destroy(q);
    free(col);
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "sq8: out of memory training %zu x %d", n, dim);
  }
  q->lo_q = lo_q;
  q->hi_q = hi_q;
  for (int c0 = 0; c0 < dim; c0 += CHUNK) {
    int w = dim - c0 < CHUNK ? dim - c0 : CHUNK;
    for (size_t r = 0; r < n; r++)
      for (int c = 0; c < w; c++) col[(size_t)c * n + r] = sample[r * (size_t)dim + (size_t)(c0 + c)];
    for (int c = 0; c < w; c++) {
      float *a = col + (size_t)c * n;
      double lo = quantile(a, n, lo_q), hi = quantile(a, n, hi_q);
      set_range(q, c0 + c, lo, hi);
    }
  }
  free(col);
  if (finish(q) != RV_OK) {
    rv_sq8_destroy(q);
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "sq8: out of memory");
  }
  *out = q;
  return RV_OK;
}

int rv_sq8_dim(const rv_sq8_t *q) { return q->dim; }
uint32_t rv_sq8_fingerprint(const rv_sq8_t *q) { return q->fingerprint; }
const float *rv_sq8_min(const rv_sq8_t *q) { return q->min; }
const float *rv_sq8_scale(const rv_sq8_t *q) { return q->scale; }
const float *rv_sq8_l2_weights(const rv_sq8_t *q) { return q->w; }

/* Branch-free, so the compiler vectorizes it (ingest encodes every row
 * with it), in AVX-512 / AVX2 copies picked at run time (not target_clones:
 * an ifunc resolver runs before ThreadSanitizer's runtime is up and crashed
 * every test linking it). The same codes as
 * !(v > 0) ? 0 : v >= 255 ? 255 : (uint8_t)(v + 0.5): NaN fails v > 0. */
#define SQ8_ENCODE_LOOP                                                  \
  for (int i = 0; i < dim; i++) {                                        \
    double v = ((double)in[i] - min[i]) / scale[i];                     \
    v = v > 0 ? v : 0;                                                   \
    v = v < 255 ? v : 255;                                               \
    out[i] = (uint8_t)(int)(v + 0.5);                                    \
  }
#define SQ8_ENCODE_ARGS \
  const float *restrict min, const float *restrict scale, const float *restrict in, uint8_t *restrict out, int dim

/* GCC vectorizes the loop only at O3 without trapping math; clang has no
 * per-function optimize attribute (and warns about it), so it gets none. */
#if defined(__clang__)
#define SQ8_ENCODE_OPT
#else
#define SQ8_ENCODE_OPT __attribute__((optimize("O3", "no-trapping-math")))
#endif

__attribute__((target("avx512f"))) SQ8_ENCODE_OPT static void sq8_encode_avx512(SQ8_ENCODE_ARGS) {
  SQ8_ENCODE_LOOP
}
__attribute__((target("avx2"))) SQ8_ENCODE_OPT static void sq8_encode_avx2(SQ8_ENCODE_ARGS) { SQ8_ENCODE_LOOP }
SQ8_ENCODE_OPT static void sq8_encode_base(SQ8_ENCODE_ARGS) { SQ8_ENCODE_LOOP }

void rv_sq8_encode(const rv_sq8_t *q, const float *x, uint8_t *code) {
  if (__builtin_cpu_supports("avx512f")) sq8_encode_avx512(q->min, q->scale, x, code, q->dim);
  else if (__builtin_cpu_supports("avx2")) sq8_encode_avx2(q->min, q->scale, x, code, q->dim);
  else sq8_encode_base(q->min, q->scale, x, code, q->dim);
}

void rv_sq8_decode(const rv_sq8_t *q, const uint8_t *code, float *x) {
  for (int i = 0; i < q->dim; i++) x[i] = q->min[i] + (float)code[i] * q->scale[i];
}

void rv_sq8_prepare_l2(const rv_sq8_t *q, const float *query, float *out) {
  for (int i = 0; i < q->dim; i++) out[i] = (query[i] - q->min[i]) / q->scale[i];
}

float rv_sq8_prepare_ip(const rv_sq8_t *q, const float *query, float *out) {
  double k = 0;
  for (int i = 0; i < q->dim; i++) {
    out[i] = query[i] * q->scale[i];
    k += (double)query[i] * q->min[i];
  }
  return (float)k;
}

float rv_sq8_code_norm(const rv_sq8_t *q, const uint8_t *code) {
  double b = 0;
  for (int i = 0; i < q->dim; i++) b += (double)q->w[i] * code[i] * code[i];
  return (float)b;
}

/* Largest sum |u_i| with 255 * sum |u_i| <= INT32_MAX. */
#define U_SUM_MAX (INT32_MAX / 255)

/* v_i of query for the L2 (ip = 0) or inner-product form; *t gets q_i - min_i
 * (L2) or q_i min_i (ip). Both passes of prepare call it, so they see the very
 * same doubles. */
static inline double cross_weight(const rv_sq8_t *q, const float *query, int i, int ip, double *t) {
  if (ip) {
    *t = (double)query[i] * q->min[i];
    return (double)query[i] * q->scale[i];
  }
  *t = (double)query[i] - q->min[i];
  return q->scale[i] * *t;
}

/* Shared by both prepares: A or K into a, u into buf. */
static rv_err_t prepare(const rv_sq8_t *q, const float *query, int16_t *buf, rv_sq8_query_t *out, int ip) {
  int dim = q->dim;
  double a = 0, vmax = 0, vsum = 0, t;
  for (int i = 0; i < dim; i++) {
    if (!isfinite(query[i])) return RV_ERR_INVALID;
    double v = fabs(cross_weight(q, query, i, ip, &t));
    a += ip ? t : t * t;
    vsum += v;
    if (v > vmax) vmax = v;
  }
  if (!isfinite((float)a)) return RV_ERR_INVALID;
  /* Rounding adds at most 1/2 per element to sum |s v_i|, and the sums above
   * carry relative error ~dim * 2^-53: keep dim / 2 + 1 in reserve. Past
   * dim ~16.8 million nothing is left. */
  double budget = (double)U_SUM_MAX - 0.5 * dim - 1;
  double s = 1;
  if (vmax > 0) {
    s = 32767.0 / vmax;
    if (budget <= 0) return RV_ERR_INVALID;
    if (budget / vsum < s) s = budget / vsum;
  }
  double rerr = 0;
  for (int i = 0; i < dim; i++) {
    double x = s * cross_weight(q, query, i, ip, &t), r = nearbyint(x);
    if (r > 32767) r = 32767;
    if (r < -32767) r = -32767;
    buf[i] = (int16_t)r;
    rerr += fabs(r - x);
  }
  size_t n = rv_sq8_code_size(dim);
  for (size_t i = (size_t)dim; i < n; i++) buf[i] = 0;
  out->u = buf;
  out->n = n;
  out->a = (float)a;
  out->scale = (float)((ip ? 1 : 2) / s);
  out->err = (float)((ip ? 255.0 : 510.0) / s * rerr * (1 + 1e-6));
  return RV_OK;
}

rv_err_t rv_sq8_query_prepare_l2(const rv_sq8_t *q, const float *query, int16_t *buf, rv_sq8_query_t *out) {
  return prepare(q, query, buf, out, 0);
}

rv_err_t rv_sq8_query_prepare_ip(const rv_sq8_t *q, const float *query, int16_t *buf, rv_sq8_query_t *out) {
  return prepare(q, query, buf, out, 1);
}

rv_err_t rv_sq8_serialize(const rv_sq8_t *q, uint8_t **buf, size_t *len) {
  size_t body = body_size(q->dim);
  uint8_t *p = malloc(body + 4);
  if (!p) return RV_ERR_NOMEM;
  write_body(q, p);
  rv__put_u32(p + body, rv__crc32c(0, p, body));
  *buf = p;
  *len = body + 4;
  return RV_OK;
}

rv_err_t rv_sq8_deserialize(const void *buf, size_t len, rv_sq8_t **out, char *errstr, size_t errstr_size) {
  const uint8_t *p = buf;
  if (!p && len) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "sq8: NULL buffer");
  if (len < HEADER_SIZE + 4)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: truncated: %zu bytes, the header alone is %u", len,
                   HEADER_SIZE + 4);
  if (memcmp(p, MAGIC, 4) != 0)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: not an SQ8 quantizer (bad magic)");
  uint32_t version = rv__get_u32(p + 4);
  if (version != RV_SQ8_FORMAT_VERSION)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: unsupported format version %u (this build reads %u)",
                   version, RV_SQ8_FORMAT_VERSION);
  uint32_t dim = rv__get_u32(p + 8);
  if (dim < 1 || dim > INT_MAX / 8)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: bad dimension %u", dim);
  size_t body = body_size((int)dim);
  if (len != body + 4)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: %s: %zu bytes, dim %u needs %zu",
                   len < body + 4 ? "truncated" : "trailing bytes", len, dim, body + 4);
  uint32_t stored = rv__get_u32(p + body), computed = rv__crc32c(0, p, body);
  if (stored != computed)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: checksum mismatch (stored %08x, computed %08x)",
                   stored, computed);
  double lo_q = rv__get_f64(p + 16), hi_q = rv__get_f64(p + 24);
  if (rv__get_u32(p + 12) != 0 || !(lo_q >= 0 && lo_q < hi_q && hi_q <= 1))
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: bad header fields");
  rv_sq8_t *q = sq8_alloc((int)dim);
  if (!q) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "sq8: out of memory");
  q->lo_q = lo_q;
  q->hi_q = hi_q;
  const uint8_t *v = p + HEADER_SIZE;
  for (uint32_t i = 0; i < dim; i++) {
    float mn = rv__get_f32(v + 4 * (size_t)i), sc = rv__get_f32(v + 4 * ((size_t)dim + i));
    if (!isfinite(mn) || !isfinite(sc) || !(sc > 0) || !isfinite(mn + 255 * sc)) {
      rv_sq8_destroy(q);
      return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "sq8: dimension %u has min %g scale %g", i, mn, sc);
    }
    q->min[i] = mn;
    q->scale[i] = sc;
  }
  if (finish(q) != RV_OK) {
    rv_sq8_destroy(q);
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "sq8: out of memory");
  }
  *out = q;
  return RV_OK;
}
