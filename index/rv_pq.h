#ifndef RV_PQ_H
#define RV_PQ_H
/* PQ: product quantization. libc and libm only.
 *
 * A vector of dim floats is cut into m sub-vectors of dsub = dim / m floats
 * (dim must be a multiple of m: no padding). Sub-quantizer j has 256
 * centroids, trained by k-means on sub-vector j of a sample; the code of a
 * vector is m bytes, byte j the nearest centroid of sub-vector j (the lowest
 * index on a tie).
 *
 * Distances go through the kernels of rv_distance.h: rv_pq_adc_table_l2 / _ip
 * fill table[j * 256 + c] for one query, and kernels->pq_adc(table, code, m)
 * sums the m entries a code picks, which is the squared L2 distance (or the
 * inner product) between the query and the decoded code.
 *
 * Training is deterministic: the same sample, parameters and seed give
 * bit-identical centroids on any x86-64 build (its arithmetic is plain
 * element-wise float, no ISA-dependent reductions).
 *
 * A trained rv_pq_t is immutable: every function taking a const rv_pq_t * may
 * be called from any number of threads at once. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

#define RV_PQ_KSUB 256 /* centroids per sub-quantizer: one byte per code entry */

typedef struct rv_pq rv_pq_t;

typedef struct rv_pq_params {
  int m;            /* sub-quantizers; 1 <= m <= dim and dim % m == 0 */
  int iters;        /* Lloyd iterations at most (stops early when nothing moves); <= 0: 25 */
  uint64_t seed;    /* k-means++ seeding and subsampling */
  size_t max_train; /* at most this many sample vectors are used (a seeded
                       subset); 0: 65536. Training costs
                       O(max_train * 256 * dim * iters). */
} rv_pq_params_t;

/* Trains from n vectors of dim floats (row-major). Per sub-quantizer:
 * k-means++ seeding, then Lloyd iterations; an emptied cluster is re-seeded
 * with the point farthest from its centroid. On success *out owns a new
 * quantizer (free with rv_pq_destroy). RV_ERR_INVALID if dim < 1, m does not
 * divide dim, n < 256 (fewer vectors than centroids) or the sample holds NaN
 * or infinity; RV_ERR_NOMEM. On failure *out is untouched. */
rv_err_t rv_pq_train(const float *sample, size_t n, int dim, const rv_pq_params_t *params, rv_pq_t **out,
                     char *errstr, size_t errstr_size);

void rv_pq_destroy(rv_pq_t *pq); /* NULL does nothing */

int rv_pq_dim(const rv_pq_t *pq);
int rv_pq_m(const rv_pq_t *pq);    /* code length in bytes */
int rv_pq_dsub(const rv_pq_t *pq); /* dim / m */

/* The CRC-32C of the serialized centroids and shape: two quantizers with the
 * same fingerprint produce the same codes. Survives a serialize round trip. */
uint32_t rv_pq_fingerprint(const rv_pq_t *pq);

/* Centroid c of sub-quantizer j is the dsub floats at
 * rv_pq_centroids(pq) + (j * 256 + c) * dsub. Owned by pq. */
const float *rv_pq_centroids(const rv_pq_t *pq);

/* x (dim floats) -> code (m bytes). */
void rv_pq_encode(const rv_pq_t *pq, const float *x, uint8_t *code);

/* code (m bytes) -> x (dim floats): the concatenated centroids. */
void rv_pq_decode(const rv_pq_t *pq, const uint8_t *code, float *x);

/* Fills table (m * 256 floats) for query (dim floats):
 *   l2: table[j * 256 + c] = |query_j - centroid_jc|^2
 *   ip: table[j * 256 + c] = query_j . centroid_jc
 * so kernels->pq_adc(table, code, m) is |query - decode(code)|^2, or
 * query . decode(code) (not negated), up to float rounding. */
void rv_pq_adc_table_l2(const rv_pq_t *pq, const float *query, float *table);
void rv_pq_adc_table_ip(const rv_pq_t *pq, const float *query, float *table);

/* Serialized form, all little-endian:
 *   0  magic "RVPQ"
 *   4  u32 format version (RV_PQ_FORMAT_VERSION)
 *   8  u32 dim, u32 m, u32 ksub (256), u32 reserved (0)
 *   24 f32 centroids[m * 256 * dsub], in rv_pq_centroids order
 *   .. u32 CRC-32C of every byte before it
 * Writing it to a file (temporary name, then rename) is the caller's job. */
#define RV_PQ_FORMAT_VERSION 1u

/* On success *buf is a new malloc'd buffer of *len bytes; the caller frees it
 * with free(). RV_ERR_NOMEM (then *buf and *len are untouched). */
rv_err_t rv_pq_serialize(const rv_pq_t *pq, uint8_t **buf, size_t *len);

/* Parses len bytes at buf. RV_ERR_CORRUPT, with what was wrong in errstr, if
 * the buffer is truncated or too long, has the wrong magic, an unknown
 * version, a bad checksum, an impossible shape or non-finite centroids;
 * RV_ERR_NOMEM. On failure *out is untouched. */
rv_err_t rv_pq_deserialize(const void *buf, size_t len, rv_pq_t **out, char *errstr, size_t errstr_size);

#endif
