#ifndef RV_CACHE_H
#define RV_CACHE_H
/* Search result caching, level 1: the cache key of a search and an in-process
 * LRU map from key to reply text (the hits JSON of rv_hits_json). Level 2
 * (Redis) is rv_l2.h and uses the same keys. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

/* XXH3-64 of (collection, region, k, ef, dim, vector bytes, filter), seeded
 * with the replica generation read before the lookup: a new generation gives
 * new keys, so a cached result is never older than the replica state it was
 * computed for. region is the resolved region name (not ""); ef is the value
 * the request gave (0 = the replica default); filter is the request's
 * canonical filter text (rv_request_t.filter_key), NULL when unfiltered. A
 * 64-bit key can collide; at the sizes cached here the chance is negligible
 * (~n^2 / 2^65). */
uint64_t rv_cache_key(const char *collection, const char *region, int k, int ef, const float *vec,
                      int dim, const char *filter, uint64_t generation);

/* A bounded least-recently-used map uint64 -> bytes. Thread-safe (one mutex). */
typedef struct rv_lru rv_lru_t;

/* At most max_entries entries and max_bytes bytes of values (both >= 1).
 * Returns NULL on bad arguments or no memory. */
rv_lru_t *rv_lru_new(size_t max_entries, size_t max_bytes);
void rv_lru_destroy(rv_lru_t *c); /* NULL is a no-op */

/* On a hit returns 1, sets *value to a malloc'd NUL-terminated copy (the caller
 * frees it) and *len to its length, and makes the entry the most recently
 * used. Returns 0 on a miss or when the copy cannot be allocated. */
int rv_lru_get(rv_lru_t *c, uint64_t key, char **value, size_t *len);

/* Stores a copy of value under key (replacing an entry with the same key) as
 * the most recently used entry, evicting least recently used entries while
 * either bound is exceeded. A value larger than max_bytes is not stored
 * (RV_ERR_FULL). RV_ERR_NOMEM leaves the map unchanged. */
rv_err_t rv_lru_put(rv_lru_t *c, uint64_t key, const char *value, size_t len);

size_t rv_lru_count(rv_lru_t *c);

#endif
