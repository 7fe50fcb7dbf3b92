#ifndef RV_INDEX_CMD_H
#define RV_INDEX_CMD_H
/* `ruvector index`: runs one region's replica (or one shard of it) of every
 * collection of a topology (or one), bootstrapped from its snapshot, else
 * PostgreSQL, else the changelog, and serves rv.v1 search plus /health,
 * /ready, /startup and /metrics on the region's listen address. */
#include <stddef.h>

#include "rv_replica.h"
#include "rv_topology.h"

/* Fills rc for collection i of t in region g (shard shard_index of
 * shard_count) reading from brokers, with the topology's index keys and the
 * region's ef_search. No snapshot path and no store: the caller adds them. */
void rv_replica_conf_from_topology(const rv_topology_t *t, int i, int g, const char *brokers, int shard_index,
                                   int shard_count, rv_replica_conf_t *rc);

/* The snapshot file of collection/region/shard under dir:
 * <dir>/<collection>.<region>.rvsnap, or <collection>.<region>.s<I>of<N>.rvsnap
 * when the region has N > 1 shards. Returns 0, or -1 if it does not fit. */
int rv_replica_snapshot_path(char *out, size_t cap, const char *dir, const char *collection, const char *region,
                             int shard_index, int shard_count);

/* main() of `ruvector index` (argv[0] = "index"). Returns the exit status:
 * 0 after SIGTERM/SIGINT (snapshots saved), 1 a stage could not start,
 * 2 bad usage, 78 invalid topology. */
int rv_index_cmd_main(int argc, char **argv);

#endif
