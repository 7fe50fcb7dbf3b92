#ifndef RV_SERVE_H
#define RV_SERVE_H
/* The serving stage: one libwebsockets context on one port carrying the
 * WebSocket protocol rv.v1 (schemas/protocol.md) and HTTP endpoints
 * (/health, /api/stats, and /metrics: Prometheus text format 0.0.4). Searches run on a worker pool; results are cached
 * in an L1 LRU and, when configured, an L2 Redis. */
#include <stddef.h>

#include "rv_err.h"
#include "rv_metrics.h"
#include "rv_replica.h"

typedef struct rv_serve rv_serve_t;

/* One shard of a sharded region: an in-process replica, or a remote process
 * (`ruvector index`, or another serve) speaking rv.v1. */
typedef struct rv_serve_shard {
  rv_replica_t *replica;  /* in-process shard, borrowed (must outlive the server); NULL: remote */
  char url[256];          /* remote: "ws://host:port[/path]"; ignored when replica is set */
} rv_serve_shard_t;

typedef struct rv_serve_collection {
  char name[RV_NAME_MAX];
  rv_replica_t **replicas;      /* one per region, borrowed: must outlive the server; may be NULL for
                                   a region that has shards */
  char (*regions)[RV_NAME_MAX]; /* region name of each replica, borrowed */
  int n_replicas;               /* regions */
  /* Sharded regions. NULL: none. Else shards[r] is NULL (replicas[r] serves region r) or the
   * n_shards[r] (>= 1) shards a search of region r fans out to (schemas/protocol.md, "Sharded
   * regions"). Both arrays have n_replicas entries, borrowed. */
  const rv_serve_shard_t *const *shards;
  const int *n_shards;
  int dim;                      /* vector dimension; required (> 0) when a region has only remote
                                   shards, else 0 takes it from the replicas */
} rv_serve_collection_t;

typedef struct rv_serve_conf {
  char host[256];                          /* listen address, e.g. 127.0.0.1 */
  int port;                                /* 0: an ephemeral port (see rv_serve_port) */
  const rv_serve_collection_t *collections; /* borrowed for the server's lifetime */
  int n_collections;
  char redis[512];                         /* "" for L1 only; "unix:/path" or "host:port" */
  int l1_entries;                          /* default 10000; 0 disables L1; < 0: the default */
  int l2_ttl_s;                            /* default 300 (also when <= 0) */
  int workers;                             /* search threads, default 2 (also when <= 0) */
  char cache_namespace[RV_NAME_MAX];       /* L2 keys are rv:<namespace>:q:<hex>, so pipelines sharing
                                              one Redis never see each other's entries; "" = "default" */
  rv_metrics_t *metrics;                   /* served at GET /metrics; borrowed, must outlive the server;
                                              NULL: /metrics answers 404 */
  int shard_timeout_ms;                    /* a fan-out shard that has not answered within this (plus
                                              after_timeout_ms for a search with "after") is reported
                                              missing; <= 0: 1000 */
  int after_timeout_ms;                    /* longest a search with "after" waits for its position
                                              before not_yet_visible; <= 0: 5000 */
  int max_waiting;                         /* searches waiting for "after" at once; beyond: overloaded;
                                              <= 0: 1024 */
  /* GET /ready (startup 0) and GET /startup (startup 1) answer 200 when this returns 1, else 503.
   * Called on the service thread; must not block. NULL: from the in-process replicas served (a
   * region's replica, or every in-process shard of it; remote shards are not asked, so a region with
   * only remote shards counts as ready). ready_arg is passed back, borrowed. */
  int (*ready)(void *ready_arg, int startup);
  void *ready_arg;
} rv_serve_conf_t;

/* Fills conf with the defaults: host 127.0.0.1, port 8080, no collections, no
 * Redis, l1_entries 10000, l2_ttl_s 300, workers 2, shard_timeout_ms 1000,
 * after_timeout_ms 5000, max_waiting 1024. A zeroed conf, by contrast,
 * has the L1 cache disabled (l1_entries 0). */
void rv_serve_conf_init(rv_serve_conf_t *conf);

/* Validates and copies conf (the collections it points to stay borrowed):
 * at least one collection, each with at least one region, each region with a
 * replica or shards (in-process, or ws:// URLs), unique names, a known dim, a
 * well-formed redis address. Binds nothing yet. Returns NULL with errstr set
 * on a bad conf or no memory. */
rv_serve_t *rv_serve_new(const rv_serve_conf_t *conf, char *errstr, size_t errstr_size);

/* Binds and starts the service thread, the workers, and (when a region has
 * remote shards) the client thread that talks to them. After success
 * rv_serve_port gives the bound port. Call once: RV_ERR_STATE otherwise;
 * RV_ERR_IO if the address cannot be bound. On failure nothing is left
 * running and the only valid call is rv_serve_destroy. */
rv_err_t rv_serve_start(rv_serve_t *s, char *errstr, size_t errstr_size);
int rv_serve_port(const rv_serve_t *s); /* 0 before a successful start */

/* Stops the service thread and the workers (queued searches are dropped),
 * closes connections, frees. NULL is a no-op. Not from a server callback. */
void rv_serve_destroy(rv_serve_t *s);

#endif
