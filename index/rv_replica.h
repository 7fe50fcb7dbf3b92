#ifndef RV_REPLICA_H
#define RV_REPLICA_H
/* A region's replica of one collection's index, kept current by applying the
 * collection's changelog topic (separate target from the engine: it needs
 * librdkafka and Avro-C). Searches run on any thread while one applier thread
 * writes; a search never sees a half-applied change. */
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"
#include "rv_flat.h"
#include "rv_record.h"

typedef struct rv_replica rv_replica_t;

typedef struct rv_replica_conf {
  char brokers[1024];                /* Kafka bootstrap list; empty: no applier (tests feed rv_replica_apply) */
  char region[RV_NAME_MAX];          /* region name, for logs and metrics */
  rv_collection_conf_t collection;   /* copied */
  int ef_search;                     /* default ef for searches that give none */
} rv_replica_conf_t;

typedef struct rv_replica_stats {
  uint64_t count;      /* live vectors */
  uint64_t applied;    /* changes applied (including ignored duplicates) */
  uint64_t generation; /* bumped on every change that altered the index; a cache key part */
  int64_t lag;         /* changelog records known to exist but not yet applied, -1 unknown */
  uint64_t skipped;    /* changelog records the applier could not decode or apply (logged) */
} rv_replica_stats_t;

/* Copies conf. Returns NULL with errstr set on bad conf or no memory. */
rv_replica_t *rv_replica_new(const rv_replica_conf_t *conf, char *errstr, size_t errstr_size);

/* Starts the applier thread: reads every partition of the changelog topic from
 * the beginning (assign, no consumer group) and applies each change.
 * Call once. RV_ERR_STATE if already started or no brokers are configured. */
rv_err_t rv_replica_start(rv_replica_t *r, char *errstr, size_t errstr_size);

/* Stops the applier thread (if started) and frees everything. NULL is a no-op. */
void rv_replica_destroy(rv_replica_t *r);

/* Applies one change. A change whose version (src_partition, src_offset) is not
 * newer than the last one applied for that id is ignored (returns RV_OK), so
 * re-delivered changelog records are harmless. Thread: any, serialised with the
 * applier by the replica's write lock. */
rv_err_t rv_replica_apply(rv_replica_t *r, const rv_change_t *c);

/* k nearest neighbours of q (dim must match). ef <= 0 uses the default.
 * out must be empty. Thread: any. */
rv_err_t rv_replica_search(rv_replica_t *r, const float *q, int dim, int k, int ef, rv_hit_list_t *out);

void rv_replica_stats(rv_replica_t *r, rv_replica_stats_t *out);
const rv_collection_conf_t *rv_replica_collection(const rv_replica_t *r);

#endif
