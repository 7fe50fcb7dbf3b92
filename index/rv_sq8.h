#ifndef RV_SQ8_H
#define RV_SQ8_H
/* SQ8: scalar quantization of each dimension to one byte. libc and libm only.
 *
 * Dimension i keeps a range [min_i, max_i] trained from a sample, clipped at
 * quantiles so that a few outliers do not waste the 256 levels, and
 *   scale_i = (max_i - min_i) / 255
 *   code_i  = round((x_i - min_i) / scale_i), clamped to [0, 255]
 *   x'_i    = min_i + code_i * scale_i            (decode)
 * A dimension whose clipped range is empty (constant in the sample) gets
 * max_i = min_i + max(1, |min_i| / 256), so scale_i > 0 always and the
 * constant itself encodes to 0 and decodes exactly.
 *
 * Distances against codes go through the kernels of rv_distance.h with a
 * prepared query, so the float query is never quantized:
 *   L2: q'_i = (q_i - min_i) / scale_i, w_i = scale_i^2;
 *       kernels->sq8_l2(q', code, w, dim) = sum (q_i - x'_i)^2
 *   IP: q''_i = q_i * scale_i, k = sum q_i * min_i;
 *       k + kernels->sq8_dot(q'', code, dim) = sum q_i * x'_i
 * both equal, up to float rounding, to the float distance from q to the
 * decoded vector. The integer forms further down (rv_sq8_query_t) compute the
 * same quantities about three times as fast as sq8_l2 (bench_kernels), with a
 * stated, small extra error; they are meant for graph traversal.
 *
 * A trained rv_sq8_t is immutable: every function taking a const rv_sq8_t *
 * may be called from any number of threads at once. */
#include <stddef.h>
#include <stdint.h>

#include "rv_distance.h"
#include "rv_err.h"

#define RV_SQ8_LO_Q_DEFAULT 0.001 /* lower clipping quantile */
#define RV_SQ8_HI_Q_DEFAULT 0.999 /* upper clipping quantile */

typedef struct rv_sq8 rv_sq8_t;

/* Trains from n vectors of dim floats (row-major, sample[r * dim + i]).
 * min_i/max_i are the lo_q/hi_q quantiles of column i (linear interpolation
 * between order statistics; lo_q = 0, hi_q = 1 gives the exact min and max).
 * On success *out owns a new quantizer (free with rv_sq8_destroy).
 * RV_ERR_INVALID if n < 1, dim < 1, !(0 <= lo_q < hi_q <= 1) or the sample
 * holds NaN or infinity; RV_ERR_NOMEM. On failure *out is untouched. */
rv_err_t rv_sq8_train(const float *sample, size_t n, int dim, double lo_q, double hi_q, rv_sq8_t **out,
                      char *errstr, size_t errstr_size);

void rv_sq8_destroy(rv_sq8_t *q); /* NULL does nothing */

int rv_sq8_dim(const rv_sq8_t *q);

/* A fingerprint of the parameters (dim, quantiles, every min and scale): two
 * quantizers with the same fingerprint produce the same codes. It is the
 * CRC-32C of the serialized parameters, so it survives a serialize round
 * trip. Store it next to codes to know which quantizer made them. */
uint32_t rv_sq8_fingerprint(const rv_sq8_t *q);

/* Per-dimension parameters, dim floats each, owned by q (valid until
 * rv_sq8_destroy), 64-byte aligned. */
const float *rv_sq8_min(const rv_sq8_t *q);
const float *rv_sq8_scale(const rv_sq8_t *q);
/* The L2 weights w_i = scale_i^2 for kernels->sq8_l2. */
const float *rv_sq8_l2_weights(const rv_sq8_t *q);

/* x (dim floats) -> code (dim bytes). Values outside [min_i, max_i] clamp to
 * 0 or 255; NaN encodes as 0. */
void rv_sq8_encode(const rv_sq8_t *q, const float *x, uint8_t *code);

/* code (dim bytes) -> x (dim floats): min_i + code_i * scale_i. */
void rv_sq8_decode(const rv_sq8_t *q, const uint8_t *code, float *x);

/* Writes q'_i = (q_i - min_i) / scale_i into out (dim floats; may not alias
 * query). Use with rv_sq8_l2_weights and kernels->sq8_l2. */
void rv_sq8_prepare_l2(const rv_sq8_t *q, const float *query, float *out);

/* Writes q''_i = q_i * scale_i into out (dim floats; may not alias query) and
 * returns the constant k = sum q_i * min_i, so that the inner product of query
 * and the decoded code is k + kernels->sq8_dot(out, code, dim). */
float rv_sq8_prepare_ip(const rv_sq8_t *q, const float *query, float *out);

/* ---- Integer asymmetric distances ---------------------------------------
 *
 * With v_i = w_i q'_i = scale_i (q_i - min_i), the L2 form splits as
 *   sum w_i (q'_i - c_i)^2 = A + B(c) - 2 sum v_i c_i
 *   A    = sum (q_i - min_i)^2   once per query
 *   B(c) = sum w_i c_i^2         once per code: rv_sq8_code_norm, stored
 *                                beside the code
 * and the cross term runs in integers: the query keeps u_i = round(s v_i) as
 * int16 with one scale s per query, and kernels->sq8_dot_i16(u, code, n)
 * gives sum u_i c_i exactly (vpmaddwd / vpdpwssd). s is as large as
 *   |u_i| <= 32767  and  255 * sum |u_i| <= INT32_MAX
 * allow, so no partial sum can overflow whatever the codes and the summation
 * order. (The per-element bound |u_i| <= INT32_MAX / (255 n) implies the
 * second condition; the sum form gives more bits when |v_i| is uneven, as in
 * images with many zero pixels.)
 * Inner product: sum q_i x'_i = K + sum v_i c_i with v_i = q_i scale_i and
 * K = sum q_i min_i, the same integer cross term.
 *
 * Error. Rounding u moves the cross term by sum (u_i / s - v_i) c_i, so
 *   |rv_sq8_distance_l2 - exact| <= err = (2 * 255 / s) sum |u_i - s v_i|
 *   |rv_sq8_inner_product - exact| <= err = (255 / s) sum |u_i - s v_i|
 * where exact is the distance (inner product) in real numbers between the
 * query and the decoded vector, min_i + c_i scale_i, plus float rounding of
 * the final sum, below 2^-21 (A + B(c) + 2 |cross term|). err is computed
 * per query (the field below); it is at most 255 dim / s (L2). On the
 * image-like data of tests/index/test_sq8.c (dim 784) err is under 1e-4 of
 * the mean distance and the actual error about 1e-5. The L2 result is
 * clamped at 0 (the exact value is >= 0, so clamping only shrinks the error).
 *
 * Padding. The kernel reads n = rv_sq8_code_size(dim) elements, dim rounded
 * up to a multiple of RV_SQ8_PAD, of both u and the code, so its loops have
 * no tail. u is zero past dim; so the code's bytes past dim are multiplied by
 * zero and may hold anything, but they must be readable: a code handed to
 * rv_sq8_distance_l2 / rv_sq8_inner_product must start a block of at least
 * rv_sq8_code_size(dim) readable bytes (a graph storing codes at a stride of
 * rv_sq8_code_size(dim), 64-byte aligned, keeps every code on whole cache
 * lines). rv_sq8_encode and rv_sq8_code_norm read and write only dim bytes. */
#define RV_SQ8_PAD 64 /* elements; a multiple of every kernel's step */

/* dim rounded up to a multiple of RV_SQ8_PAD: the length of a prepared
 * query's u and the readable bytes each code needs. */
static inline size_t rv_sq8_code_size(int dim) {
  return ((size_t)dim + (RV_SQ8_PAD - 1)) & ~(size_t)(RV_SQ8_PAD - 1);
}

/* A prepared integer query. Plain data: no destroy; the buffer u points into
 * belongs to the caller. Read-only after prepare, so any number of threads may
 * score codes against one query at once. */
typedef struct rv_sq8_query {
  int16_t *u;  /* n int16: round(s v_i), 0 past dim; the caller's buffer */
  size_t n;    /* rv_sq8_code_size(dim) */
  float a;     /* L2: A = sum (q_i - min_i)^2; inner product: K = sum q_i min_i */
  float scale; /* multiplies the integer dot: 2 / s (L2), 1 / s (inner product) */
  float err;   /* bound on the error from rounding u (see above), >= 0 */
} rv_sq8_query_t;

/* B(c) = sum w_i c_i^2 of a code (dim bytes), the per-code constant of
 * rv_sq8_distance_l2. Computed in double, so it is the same number on every
 * machine; store it with the code (4 bytes per code). */
float rv_sq8_code_norm(const rv_sq8_t *q, const uint8_t *code);

/* Prepares query (dim floats) for rv_sq8_distance_l2: fills buf, which must
 * hold rv_sq8_code_size(dim) int16 (64-byte alignment helps; none is needed),
 * and *out, which then points at buf. Returns RV_ERR_INVALID if the query
 * holds NaN or infinity, A is not a finite float, or dim > 16.8 million (no
 * int32 headroom left); then *out is untouched and buf unspecified.
 * Allocates nothing; costs two passes over dim. */
rv_err_t rv_sq8_query_prepare_l2(const rv_sq8_t *q, const float *query, int16_t *buf, rv_sq8_query_t *out);

/* The same for rv_sq8_inner_product. */
rv_err_t rv_sq8_query_prepare_ip(const rv_sq8_t *q, const float *query, int16_t *buf, rv_sq8_query_t *out);

/* The L2 distance from the query of rv_sq8_query_prepare_l2 to code, whose
 * rv_sq8_code_norm is code_norm: about sum (query_i - x'_i)^2 with x' the
 * decoded code, within qy->err plus float rounding. code must have
 * rv_sq8_code_size(dim) readable bytes (see Padding). */
static inline float rv_sq8_distance_l2(const rv_kernels_t *k, const rv_sq8_query_t *qy, const uint8_t *code,
                                       float code_norm) {
  float d = qy->a + code_norm - qy->scale * (float)k->sq8_dot_i16(qy->u, code, qy->n);
  return d > 0 ? d : 0;
}

/* The inner product of the query of rv_sq8_query_prepare_ip with the decoded
 * code: about sum query_i x'_i, within qy->err plus float rounding. No
 * per-code constant. Same padding rule. */
static inline float rv_sq8_inner_product(const rv_kernels_t *k, const rv_sq8_query_t *qy, const uint8_t *code) {
  return qy->a + qy->scale * (float)k->sq8_dot_i16(qy->u, code, qy->n);
}

/* Serialized form, all little-endian:
 *   0  magic "RVQ8"
 *   4  u32 format version (RV_SQ8_FORMAT_VERSION)
 *   8  u32 dim
 *   12 u32 reserved, 0
 *   16 f64 lo_q, f64 hi_q
 *   32 f32 min[dim], then f32 scale[dim]
 *   .. u32 CRC-32C of every byte before it
 * Writing it to a file (temporary name, then rename) is the caller's job. */
#define RV_SQ8_FORMAT_VERSION 1u

/* On success *buf is a new malloc'd buffer of *len bytes that the caller
 * frees with free(). RV_ERR_NOMEM (then *buf and *len are untouched). */
rv_err_t rv_sq8_serialize(const rv_sq8_t *q, uint8_t **buf, size_t *len);

/* Parses len bytes at buf. RV_ERR_CORRUPT, with what was wrong in errstr, if
 * the buffer is truncated or too long, has the wrong magic, an unknown
 * version, a bad checksum or parameters no trainer produces (non-finite,
 * scale <= 0); RV_ERR_NOMEM. On success *out owns a new quantizer; on failure
 * *out is untouched. */
rv_err_t rv_sq8_deserialize(const void *buf, size_t len, rv_sq8_t **out, char *errstr, size_t errstr_size);

#endif
