#include "rv_pq.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rv_bytes.h"

struct rv_pq {
  int dim, m, dsub;
  uint32_t fingerprint; /* CRC-32C of the serialized shape and centroids */
  float *cent;          /* m * 256 * dsub: centroid c of sub-quantizer j at (j * 256 + c) * dsub */
  float *cent_t;        /* the same, transposed per sub-quantizer: [j][d][c], so distances
                           to all 256 centroids are one element-wise loop over c */
};

#define HEADER_SIZE 24u
#define MAGIC "RVPQ"
#define KSUB RV_PQ_KSUB

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; } /* [0, 1) */

static rv_pq_t *pq_alloc(int dim, int m) {
  rv_pq_t *pq = calloc(1, sizeof *pq);
  if (!pq) return NULL;
  size_t nf = (size_t)KSUB * (size_t)dim;
  pq->cent = aligned_alloc(64, ((nf * sizeof(float)) + 63) & ~(size_t)63);
  pq->cent_t = aligned_alloc(64, ((nf * sizeof(float)) + 63) & ~(size_t)63);
  if (!pq->cent || !pq->cent_t) {
    free(pq->cent);
    free(pq->cent_t);
    free(pq);
    return NULL;
  }
  pq->dim = dim;
  pq->m = m;
  pq->dsub = dim / m;
  return pq;
}

void rv_pq_destroy(rv_pq_t *pq) {
  if (!pq) return;
  free(pq->cent);
  free(pq->cent_t);
  free(pq);
}

int rv_pq_dim(const rv_pq_t *pq) { return pq->dim; }
int rv_pq_m(const rv_pq_t *pq) { return pq->m; }
int rv_pq_dsub(const rv_pq_t *pq) { return pq->dsub; }
uint32_t rv_pq_fingerprint(const rv_pq_t *pq) { return pq->fingerprint; }
const float *rv_pq_centroids(const rv_pq_t *pq) { return pq->cent; }

/* Transposes the centroids of sub-quantizer j into cent_t. */
static void transpose_sub(rv_pq_t *pq, int j) {
  const float *c = pq->cent + (size_t)j * KSUB * (size_t)pq->dsub;
  float *t = pq->cent_t + (size_t)j * KSUB * (size_t)pq->dsub;
  for (int k = 0; k < KSUB; k++)
    for (int d = 0; d < pq->dsub; d++) t[(size_t)d * KSUB + (size_t)k] = c[(size_t)k * (size_t)pq->dsub + (size_t)d];
}

/* out[c] = |x - centroid c|^2 for the 256 centroids of a transposed block t.
 * The loop over c is element-wise (each out[c] summed over d in order), so
 * the compiler vectorizes it without changing any result. */
static void dists_l2(const float *restrict t, const float *restrict x, int dsub, float *restrict out) {
  for (int c = 0; c < KSUB; c++) out[c] = 0;
  for (int d = 0; d < dsub; d++) {
    const float *restrict row = t + (size_t)d * KSUB;
    float xd = x[d];
    for (int c = 0; c < KSUB; c++) {
      float diff = xd - row[c];
      out[c] += diff * diff;
    }
  }
}

static void dists_ip(const float *restrict t, const float *restrict x, int dsub, float *restrict out) {
  for (int c = 0; c < KSUB; c++) out[c] = 0;
  for (int d = 0; d < dsub; d++) {
    const float *restrict row = t + (size_t)d * KSUB;
    float xd = x[d];
    for (int c = 0; c < KSUB; c++) out[c] += xd * row[c];
  }
}

/* Index of the smallest of the 256 values (the lowest index on a tie). */
static int argmin256(const float *v, float *best) {
  int b = 0;
  for (int c = 1; c < KSUB; c++)
    if (v[c] < v[b]) b = c;
  *best = v[b];
  return b;
}

static float sub_l2(const float *a, const float *b, int dsub) {
  float s = 0;
  for (int d = 0; d < dsub; d++) {
    float diff = a[d] - b[d];
    s += diff * diff;
  }
  return s;
}

/* k-means of the nt sub-vectors x (nt * dsub, contiguous) into the 256
 * centroids of sub-quantizer j. Scratch: assign (nt ints), dist (nt floats). */
static void kmeans_sub(rv_pq_t *pq, int j, const float *x, size_t nt, int iters, uint64_t seed, int *assign,
                       float *dist) {
  const int dsub = pq->dsub;
  float *cent = pq->cent + (size_t)j * KSUB * (size_t)dsub;
  const float *cent_t = pq->cent_t + (size_t)j * KSUB * (size_t)dsub;
  uint64_t rng = seed ^ (0x632be59bd9b4e019ULL * (uint64_t)(j + 1));
  float d256[KSUB];
  size_t counts[KSUB];
  double *sums = malloc(sizeof(double) * KSUB * (size_t)dsub);

  /* k-means++: each next centroid is a sample point drawn with probability
   * proportional to its squared distance to the nearest centroid so far. */
  size_t first = rng_next(&rng) % nt;
  memcpy(cent, x + first * (size_t)dsub, sizeof(float) * (size_t)dsub);
  for (size_t i = 0; i < nt; i++) dist[i] = sub_l2(x + i * (size_t)dsub, cent, dsub);
  for (int k = 1; k < KSUB; k++) {
    double total = 0;
    for (size_t i = 0; i < nt; i++) total += dist[i];
    size_t pick = nt - 1;
    if (total > 0) {
      double r = rng_unit(&rng) * total, acc = 0;
      for (size_t i = 0; i < nt; i++) {
        acc += dist[i];
        if (acc > r) {
          pick = i;
          break;
        }
      }
    } else {
      pick = rng_next(&rng) % nt; /* fewer distinct points than centroids: duplicates, fixed below */
    }
    float *ck = cent + (size_t)k * (size_t)dsub;
    memcpy(ck, x + pick * (size_t)dsub, sizeof(float) * (size_t)dsub);
    for (size_t i = 0; i < nt; i++) {
      float d = sub_l2(x + i * (size_t)dsub, ck, dsub);
      if (d < dist[i]) dist[i] = d;
    }
  }
  transpose_sub(pq, j);
  if (!sums) return; /* out of memory: keep the k-means++ centroids (still a valid codebook) */

  for (int it = 0; it < iters; it++) {
    size_t changed = 0;
    memset(counts, 0, sizeof counts);
    for (size_t i = 0; i < nt; i++) {
      dists_l2(cent_t, x + i * (size_t)dsub, dsub, d256);
      int a = argmin256(d256, &dist[i]);
      if (it == 0 || a != assign[i]) changed++;
      assign[i] = a;
      counts[a]++;
    }
    if (it > 0 && changed == 0) break; /* converged: the centroids are the means of this assignment */
    memset(sums, 0, sizeof(double) * KSUB * (size_t)dsub);
    for (size_t i = 0; i < nt; i++)
      for (int d = 0; d < dsub; d++) sums[(size_t)assign[i] * (size_t)dsub + (size_t)d] += x[i * (size_t)dsub + (size_t)d];
    for (int k = 0; k < KSUB; k++)
      if (counts[k])
        for (int d = 0; d < dsub; d++)
          cent[(size_t)k * (size_t)dsub + (size_t)d] = (float)(sums[(size_t)k * (size_t)dsub + (size_t)d] / (double)counts[k]);
    /* Empty clusters: take over the point farthest from its centroid among
     * clusters that keep at least one other point. */
    for (int k = 0; k < KSUB; k++) {
      if (counts[k]) continue;
      size_t far = nt;
      for (size_t i = 0; i < nt; i++)
        if (counts[assign[i]] > 1 && (far == nt || dist[i] > dist[far])) far = i;
      if (far == nt) break; /* every point is alone in its cluster: nothing to split */
      counts[assign[far]]--;
      assign[far] = k;
      counts[k] = 1;
      dist[far] = 0;
      memcpy(cent + (size_t)k * (size_t)dsub, x + far * (size_t)dsub, sizeof(float) * (size_t)dsub);
    }
    transpose_sub(pq, j);
  }
  free(sums);
}

/* Header and centroids, without the checksum, into p. */
static size_t body_size(const rv_pq_t *pq) { return HEADER_SIZE + 4u * (size_t)KSUB * (size_t)pq->dim; }

static void write_body(const rv_pq_t *pq, uint8_t *p) {
  memcpy(p, MAGIC, 4);
  rv__put_u32(p + 4, RV_PQ_FORMAT_VERSION);
  rv__put_u32(p + 8, (uint32_t)pq->dim);
  rv__put_u32(p + 12, (uint32_t)pq->m);
  rv__put_u32(p + 16, KSUB);
  rv__put_u32(p + 20, 0);
  size_t nf = (size_t)KSUB * (size_t)pq->dim;
  for (size_t i = 0; i < nf; i++) rv__put_f32(p + HEADER_SIZE + 4 * i, pq->cent[i]);
}

static rv_err_t finish(rv_pq_t *pq) {
  for (int j = 0; j < pq->m; j++) transpose_sub(pq, j);
  size_t len = body_size(pq);
  uint8_t *p = malloc(len);
  if (!p) return RV_ERR_NOMEM;
  write_body(pq, p);
  pq->fingerprint = rv__crc32c(0, p + 8, len - 8); /* after magic and version */
  free(p);
  return RV_OK;
}

rv_err_t rv_pq_train(const float *sample, size_t n, int dim, const rv_pq_params_t *params, rv_pq_t **out,
                     char *errstr, size_t errstr_size) {
  if (!sample || !params || !out) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: NULL argument");
  int m = params->m;
  if (dim < 1 || m < 1 || m > dim || dim % m != 0)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: dim %d must be a positive multiple of m %d", dim, m);
  if (dim > INT_MAX / KSUB / 4)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: dim %d too large", dim);
  if (n < KSUB)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: need at least %d training vectors, got %zu", KSUB, n);
  if (n > SIZE_MAX / sizeof(float) / (size_t)dim)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: sample of %zu x %d is too large", n, dim);
  for (size_t r = 0; r < n * (size_t)dim; r++)
    if (!isfinite(sample[r]))
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: sample value %zu of vector %zu is not finite",
                     r % (size_t)dim, r / (size_t)dim);
  int iters = params->iters > 0 ? params->iters : 25;
  size_t max_train = params->max_train ? params->max_train : 65536;
  if (max_train < KSUB) max_train = KSUB;
  size_t nt = n < max_train ? n : max_train;

  rv_pq_t *pq = pq_alloc(dim, m);
  size_t *rows = malloc(sizeof(size_t) * n);
  float *x = malloc(sizeof(float) * nt * (size_t)(dim / m));
  int *assign = malloc(sizeof(int) * nt);
  float *dist = malloc(sizeof(float) * nt);
  rv_err_t err = RV_OK;
  if (!pq || !rows || !x || !assign || !dist) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pq: out of memory training %zu x %d", nt, dim);
    goto done;
  }
  /* the training rows: all of them, or a seeded subset (partial Fisher-Yates) */
  uint64_t rng = params->seed;
  for (size_t i = 0; i < n; i++) rows[i] = i;
  if (nt < n)
    for (size_t i = 0; i < nt; i++) {
      size_t k = i + (size_t)(rng_next(&rng) % (n - i)), t = rows[i];
      rows[i] = rows[k];
      rows[k] = t;
    }
  int dsub = pq->dsub;
  for (int j = 0; j < m; j++) {
    for (size_t i = 0; i < nt; i++)
      memcpy(x + i * (size_t)dsub, sample + rows[i] * (size_t)dim + (size_t)j * (size_t)dsub, sizeof(float) * (size_t)dsub);
    kmeans_sub(pq, j, x, nt, iters, params->seed, assign, dist);
  }
  if (finish(pq) != RV_OK) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pq: out of memory");
done:
  free(rows);
  free(x);
  free(assign);
  free(dist);
  if (err != RV_OK) {
    rv_pq_destroy(pq);
    return err;
  }
  *out = pq;
  return RV_OK;
}

void rv_pq_encode(const rv_pq_t *pq, const float *x, uint8_t *code) {
  float d256[KSUB], best;
  for (int j = 0; j < pq->m; j++) {
    dists_l2(pq->cent_t + (size_t)j * KSUB * (size_t)pq->dsub, x + (size_t)j * (size_t)pq->dsub, pq->dsub, d256);
    code[j] = (uint8_t)argmin256(d256, &best);
  }
}

void rv_pq_decode(const rv_pq_t *pq, const uint8_t *code, float *x) {
  for (int j = 0; j < pq->m; j++)
    memcpy(x + (size_t)j * (size_t)pq->dsub, pq->cent + ((size_t)j * KSUB + code[j]) * (size_t)pq->dsub,
           sizeof(float) * (size_t)pq->dsub);
}

void rv_pq_adc_table_l2(const rv_pq_t *pq, const float *query, float *table) {
  for (int j = 0; j < pq->m; j++)
    dists_l2(pq->cent_t + (size_t)j * KSUB * (size_t)pq->dsub, query + (size_t)j * (size_t)pq->dsub, pq->dsub,
             table + (size_t)j * KSUB);
}

void rv_pq_adc_table_ip(const rv_pq_t *pq, const float *query, float *table) {
  for (int j = 0; j < pq->m; j++)
    dists_ip(pq->cent_t + (size_t)j * KSUB * (size_t)pq->dsub, query + (size_t)j * (size_t)pq->dsub, pq->dsub,
             table + (size_t)j * KSUB);
}

rv_err_t rv_pq_serialize(const rv_pq_t *pq, uint8_t **buf, size_t *len) {
  size_t body = body_size(pq);
  uint8_t *p = malloc(body + 4);
  if (!p) return RV_ERR_NOMEM;
  write_body(pq, p);
  rv__put_u32(p + body, rv__crc32c(0, p, body));
  *buf = p;
  *len = body + 4;
  return RV_OK;
}

rv_err_t rv_pq_deserialize(const void *buf, size_t len, rv_pq_t **out, char *errstr, size_t errstr_size) {
  const uint8_t *p = buf;
  if (!p && len) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "pq: NULL buffer");
  if (len < HEADER_SIZE + 4)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: truncated: %zu bytes, the header alone is %u", len,
                   HEADER_SIZE + 4);
  if (memcmp(p, MAGIC, 4) != 0) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: not a PQ codebook (bad magic)");
  uint32_t version = rv__get_u32(p + 4);
  if (version != RV_PQ_FORMAT_VERSION)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: unsupported format version %u (this build reads %u)",
                   version, RV_PQ_FORMAT_VERSION);
  uint32_t dim = rv__get_u32(p + 8), m = rv__get_u32(p + 12), ksub = rv__get_u32(p + 16);
  if (dim < 1 || dim > INT_MAX / KSUB / 4 || m < 1 || m > dim || dim % m != 0 || ksub != KSUB)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: impossible shape dim %u m %u ksub %u", dim, m, ksub);
  size_t want = HEADER_SIZE + 4u * (size_t)KSUB * dim + 4;
  if (len != want)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: %s: %zu bytes, dim %u needs %zu",
                   len < want ? "truncated" : "trailing bytes", len, dim, want);
  uint32_t stored = rv__get_u32(p + want - 4), computed = rv__crc32c(0, p, want - 4);
  if (stored != computed)
    return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: checksum mismatch (stored %08x, computed %08x)", stored,
                   computed);
  if (rv__get_u32(p + 20) != 0) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: bad header fields");
  rv_pq_t *pq = pq_alloc((int)dim, (int)m);
  if (!pq) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pq: out of memory");
  size_t nf = (size_t)KSUB * dim;
  for (size_t i = 0; i < nf; i++) {
    pq->cent[i] = rv__get_f32(p + HEADER_SIZE + 4 * i);
    if (!isfinite(pq->cent[i])) {
      rv_pq_destroy(pq);
      return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "pq: centroid value %zu is not finite", i);
    }
  }
  if (finish(pq) != RV_OK) {
    rv_pq_destroy(pq);
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pq: out of memory");
  }
  *out = pq;
  return RV_OK;
}
