#ifndef RV_FLAT_H
#define RV_FLAT_H
/* An exact (brute-force) vector index: the reference every approximate index is
 * checked against, and the engine of the walking skeleton. Depends on libc only.
 *
 * Not thread-safe: callers serialise writers against readers (rv_replica does
 * this with a rwlock). Concurrent rv_flat_search calls with no writer are safe. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"

typedef struct rv_flat rv_flat_t;

/* One search result. Strings are owned by the hit list that holds it. */
typedef struct rv_hit {
  char *id;       /* external id */
  char *metadata; /* JSON object text, or NULL */
  float score;    /* a distance: smaller is closer. l2: squared Euclidean;
                     cosine: 1 - cos(a, b); ip: -dot(a, b) */
} rv_hit_t;

typedef struct rv_hit_list {
  rv_hit_t *hits; /* owned; best first */
  int n;
} rv_hit_list_t;

void rv_hit_list_close(rv_hit_list_t *l); /* frees hits and their strings; l is empty after */

/* Returns NULL (errno = EINVAL or ENOMEM) if dim < 1 or memory runs out. */
rv_flat_t *rv_flat_new(int dim, rv_metric_t metric);
void rv_flat_destroy(rv_flat_t *f);

/* Inserts or replaces the vector and metadata stored under id (copied).
 * RV_ERR_DIM if dim differs; RV_ERR_INVALID for NaN/Inf or an empty id.
 * On failure the index is unchanged. */
rv_err_t rv_flat_upsert(rv_flat_t *f, const char *id, const float *vec, int dim, const char *metadata);

/* Removes id. RV_ERR_NOT_FOUND if absent (the index is unchanged). */
rv_err_t rv_flat_delete(rv_flat_t *f, const char *id);

/* Number of live vectors. */
size_t rv_flat_count(const rv_flat_t *f);

/* Fills out with the min(k, count) nearest vectors, best first; ties are broken
 * by id (byte order) so results are deterministic. out must be empty; on
 * failure it stays empty. */
rv_err_t rv_flat_search(const rv_flat_t *f, const float *q, int dim, int k, rv_hit_list_t *out);

#endif
