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
 * decoded vector.
 *
 * A trained rv_sq8_t is immutable: every function taking a const rv_sq8_t *
 * may be called from any number of threads at once. */
#include <stddef.h>
#include <stdint.h>

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
