#ifndef RV_L2_H
#define RV_L2_H
/* Search result caching, level 2: a Redis connection (hiredis, synchronous)
 * holding reply text under "rv:<namespace>:q:<16 hex digits of the rv_cache_key>" with a
 * TTL. A Redis that is down never fails a search: lookups miss, stores are
 * skipped, the outage is logged once, and a reconnect is tried at most once
 * per second.
 *
 * Not thread-safe: each search worker owns one. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

typedef struct rv_l2 rv_l2_t;

/* address is "unix:/path" or "host:port" (IPv6 hosts in brackets); ttl_s >= 1;
 * ns names the key namespace (NULL or "" = "default"; at most 63 bytes);
 * name labels log lines (e.g. "worker 1"). Connects lazily, on first use.
 * Returns NULL with errstr set if the address is malformed or memory runs out. */
rv_l2_t *rv_l2_new(const char *address, int ttl_s, const char *ns, const char *name, char *errstr,
                   size_t errstr_size);
void rv_l2_destroy(rv_l2_t *l2); /* NULL is a no-op */

/* GET. Returns 1 on a hit with *value a malloc'd NUL-terminated copy (the
 * caller frees it) and *len its length; 0 on a miss or when Redis is unavailable. */
int rv_l2_get(rv_l2_t *l2, uint64_t key, char **value, size_t *len);

/* SET ... EX ttl_s. Returns RV_OK, or RV_ERR_UNAVAILABLE when it was skipped
 * or failed (already logged). */
rv_err_t rv_l2_set(rv_l2_t *l2, uint64_t key, const char *value, size_t len);

/* 1 if the connection is currently up (for tests and stats). */
int rv_l2_connected(const rv_l2_t *l2);

#endif
