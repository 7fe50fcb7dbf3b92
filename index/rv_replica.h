#ifndef RV_REPLICA_H
#define RV_REPLICA_H
/* A region's replica of one collection's index, kept current by applying the
 * collection's changelog topic (separate target from the engine: it needs
 * librdkafka, Avro-C and jansson). The index is an HNSW graph (rv_hnsw.h)
 * with an attribute store (rv_attrs.h) for the collection's declared fields,
 * filled from each change's metadata JSON; filtered searches go through the
 * planner (rv_planner.h).
 *
 * Threads and locks. Applies are serialised among themselves (a mutex; one
 * applier thread in practice) and run concurrently with any number of
 * searches, which never wait for the engine work of an apply:
 *   - The graph insert/delete (with its neighbour repair) and the attribute
 *     updates run with no replica lock held: the engine and the attribute
 *     store allow writers concurrently with searches (rv_hnsw.h, rv_attrs.h).
 *   - Then the change is published: the id's entry in the version map gets
 *     the new version, metadata and the graph slot (internal id and slot
 *     version) its vector now lives in, under a small rwlock held
 *     exclusively for a few stores.
 *   - A search walks the graph, then copies its hits' ids and metadata under
 *     that rwlock held shared, keeping only the hits whose (slot, version) is
 *     their id's published one. So a hit's id, score and metadata are always
 *     from one version, an id appears at most once, and a change shows up
 *     whole at its publication; a vector the graph holds but whose change is
 *     not yet published is left out (as is, from then on, the slot a replace
 *     or delete retired). A search running across an apply may therefore
 *     return fewer than k hits, briefly, as a search across rv_hnsw_upsert
 *     can.
 *   - stats.generation is bumped after the publication: a caller that reads
 *     generation g and then searches sees every change up to g.
 * Both rwlocks prefer the writer, so back-to-back searches cannot starve the
 * applier.
 *
 * SQ8 storage: the replica indexes float vectors until it holds sq8_train
 * live vectors, then trains the quantizer from all of them and rebuilds the
 * graph in SQ8, once, inside the apply that reached the count. Searches go on
 * against the float graph during the rebuild (applies wait: they are
 * serialised with it); only the swap of the new graph in, and the re-pointing
 * of each id's entry at its new slot, takes an exclusive lock that waits for
 * the searches in flight and holds new ones off (O(live ids) stores).
 * Simple and correct: no change is ever buffered or unsearchable.
 *
 * Snapshots: with snapshot_path set, rv_replica_new loads the file if it
 * exists (rv_snapshot_load) and the applier resumes the changelog from the
 * partition offsets saved in it instead of the beginning; rv_replica_destroy
 * (and every snapshot_interval_s seconds, the applier) saves one. A snapshot
 * that cannot be used (corrupt, truncated, another dim/metric/M/storage or
 * changelog topic) is logged as an error and ignored: the replica rebuilds
 * from the changelog. Its POSN section (see rv_replica.c, "snapshot
 * positions") holds the per-partition next offsets, the per-id version map
 * and each id's metadata. Offsets are only meaningful against the same log:
 * do not give a snapshot path when the broker starts empty on every run
 * (the embedded broker; the pipeline runner never does). */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"
#include "rv_filter.h"
#include "rv_flat.h" /* rv_hit_t, rv_hit_list_t */
#include "rv_hnsw.h"
#include "rv_record.h"

typedef struct rv_replica rv_replica_t;

typedef struct rv_replica_conf {
  char brokers[1024];                /* Kafka bootstrap list; empty: no applier (tests feed rv_replica_apply) */
  char region[RV_NAME_MAX];          /* region name, for logs and metrics */
  rv_collection_conf_t collection;   /* copied; fields become filter attributes */
  int ef_search;                     /* default ef for searches that give none; <= 0: 64 */
  int hnsw_m;                        /* HNSW M; <= 0: 16 */
  int ef_construction;               /* <= 0: 100 */
  rv_hnsw_storage_t storage;         /* RV_HNSW_FLOAT (default) or RV_HNSW_SQ8 (PQ is refused) */
  int sq8_train;                     /* SQ8: live vectors to train from; <= 0: 1000 */
  char snapshot_path[1024];          /* snapshot file; "" = no snapshots */
  int snapshot_interval_s;           /* > 0: the applier also saves every this many seconds (if changed) */
} rv_replica_conf_t;

typedef struct rv_replica_stats {
  uint64_t count;      /* live vectors */
  uint64_t applied;    /* changes applied (including ignored duplicates) */
  uint64_t generation; /* bumped on every change that altered the index; a cache key part */
  int64_t lag;         /* changelog records known to exist but not yet applied, -1 unknown */
  uint64_t skipped;    /* changelog records the applier could not decode or apply (logged) */
  int restored;        /* 1 if the state was loaded from a snapshot by rv_replica_new */
  int quantized;       /* 1 once the index stores SQ8 codes */
} rv_replica_stats_t;

/* Copies conf; loads the snapshot when one is configured and usable (an
 * unusable one is logged and ignored). Returns NULL with errstr set on bad
 * conf or no memory. */
rv_replica_t *rv_replica_new(const rv_replica_conf_t *conf, char *errstr, size_t errstr_size);

/* Starts the applier thread: reads every partition of the changelog topic
 * (assign, no consumer group) from the snapshot's offsets when one was
 * loaded, else from the beginning, and applies each change.
 * Call once. RV_ERR_STATE if already started or no brokers are configured. */
rv_err_t rv_replica_start(rv_replica_t *r, char *errstr, size_t errstr_size);

/* Stops the applier thread (if started), saves a snapshot if a path is
 * configured (a failure is logged) and frees everything. NULL is a no-op. */
void rv_replica_destroy(rv_replica_t *r);

/* Applies one change. A change whose version (src_partition, src_offset) is not
 * newer than the last one applied for that id is ignored (returns RV_OK), so
 * re-delivered changelog records are harmless. Metadata (c->attributes) that
 * is a JSON object sets the declared fields it names: keyword fields take
 * strings (and integers, as their decimal text), number fields take numbers;
 * anything else leaves the field missing. Thread: any; applies (and
 * snapshots) are serialised with the applier by the replica's apply mutex,
 * searches run concurrently (see "Threads and locks" at the top). */
rv_err_t rv_replica_apply(rv_replica_t *r, const rv_change_t *c);

/* k nearest neighbours of q (dim must match), best first, equal scores by
 * id, each with its metadata. ef <= 0 uses the default. out must be empty;
 * on failure it stays empty. Thread: any. */
rv_err_t rv_replica_search(rv_replica_t *r, const float *q, int dim, int k, int ef, rv_hit_list_t *out);

/* An empty filter (rv_filter.h) over the collection's declared fields, for
 * rv_replica_search_filtered; the caller adds clauses and destroys it
 * (rv_filter_destroy). NULL on no memory. Thread: any. */
rv_filter_t *rv_replica_filter_new(rv_replica_t *r);

/* As rv_replica_search, restricted to vectors matching f (NULL or no clauses:
 * unfiltered), through rv_planner_search. errstr says what failed. */
rv_err_t rv_replica_search_filtered(rv_replica_t *r, const float *q, int dim, int k, int ef, const rv_filter_t *f,
                                    rv_hit_list_t *out, char *errstr, size_t errstr_size);

/* Saves a snapshot now (to conf.snapshot_path): the applied state with the
 * applier's current positions. It holds the apply mutex, so the applier is
 * quiesced between two whole changes while the file is written (applies wait
 * meanwhile); searches continue.
 * RV_ERR_STATE if no path is configured; otherwise rv_snapshot_save's errors.
 * Thread: any. */
rv_err_t rv_replica_snapshot(rv_replica_t *r, char *errstr, size_t errstr_size);

void rv_replica_stats(rv_replica_t *r, rv_replica_stats_t *out);
const rv_collection_conf_t *rv_replica_collection(const rv_replica_t *r);

/* ---- for tests (index/ internal) ------------------------------------------ */

/* fn(ctx, stage) is called by the applying thread, holding the apply mutex
 * and no lock searches take: stage "applied" after an apply's engine work,
 * before its publication; "rebuilt" after the SQ8 graph is built, before it
 * is swapped in. Tests block there to check that searches go on. Set it
 * before the first apply; NULL removes it. */
void rv__replica_set_apply_hook(rv_replica_t *r, void (*fn)(void *ctx, const char *stage), void *ctx);

#endif
