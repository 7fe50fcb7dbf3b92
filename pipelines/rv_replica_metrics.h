#ifndef RV_REPLICA_METRICS_H
#define RV_REPLICA_METRICS_H
/* The rv_replica_* Prometheus series of one replica (labels region,
 * collection, shard; per-partition series add partition), brought up to date
 * from rv_replica_stats / rv_replica_partition_stats by rv_replica_metrics_update.
 * pipelines/README.md lists every series. */
#include "rv_metrics.h"
#include "rv_replica.h"

typedef struct rv_replica_metrics rv_replica_metrics_t;

/* Registers the series in reg (NULL: returns NULL, updates are no-ops).
 * shard is written "I/N" ("0/1" unsharded). r and reg are borrowed and must
 * outlive the returned handle. NULL on no memory. */
rv_replica_metrics_t *rv_replica_metrics_new(rv_metrics_t *reg, rv_replica_t *r, const char *region,
                                             const char *collection, int shard_index, int shard_count);

/* Reads the replica's stats into the series. One thread at a time per handle
 * (the caller's periodic loop). NULL is a no-op. */
void rv_replica_metrics_update(rv_replica_metrics_t *m);

void rv_replica_metrics_destroy(rv_replica_metrics_t *m);

#endif
