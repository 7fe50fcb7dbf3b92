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
 * SQ8 storage with conf.store.quantizer, metric l2 or ip (one quantizer per
 * collection; under cosine ingest's codes are of the raw vectors, the
 * engine's of unit ones, so a cosine replica trains its own as below): the
 * replica installs the quantizer version that changes (or the store load)
 * carry, fetched once through store.quantizer, and stores each change's own
 * code byte for byte (rv_hnsw_upsert_sq8; the float vector is kept for
 * re-ranking, a code-only row is decoded for it). Until a code arrives the
 * index is float; a change carrying a newer version makes the replica
 * install it and re-insert the live vectors (from their floats); a code of
 * an older or unknown version is ignored and the float vector encoded.
 * Without store.quantizer the replica trains its own: it indexes float
 * vectors until it holds sq8_train live vectors, then trains the quantizer
 * from all of them and rebuilds the graph in SQ8, once, inside the apply
 * that reached the count. Either way searches go on against the old graph
 * during the rebuild (applies wait: they are serialised with it); only the
 * swap of the new graph in, and the re-pointing of each id's entry at its
 * new slot, takes an exclusive lock that waits for the searches in flight
 * and holds new ones off (O(live ids) stores).
 *
 * Bootstrap (the applier thread, before catch-up): the newest usable local
 * snapshot (loaded by rv_replica_new; catch-up from its offsets); else
 * conf.store.load into a fresh state swapped in whole (catch-up from the end
 * offsets it marked); else a replay of the changelog from the beginning.
 * Searches meanwhile see the empty (or, on a re-bootstrap, the old) index.
 * The applier reads with auto.offset.reset=error: a partition whose next
 * offset the log no longer holds (retention, compaction, a recreated topic),
 * or whose high watermark stays below it, makes the replica bootstrap again
 * (store, else a replay into a fresh state swapped in once it reached the
 * end offsets of its start) rather than reset silently (stats.rebootstraps).
 * Partitions added to the topic later are found by a metadata refresh every
 * 2 s and read from the beginning.
 *
 * Snapshots: with snapshot_path set, rv_replica_new loads the file if it
 * exists (rv_snapshot_load) and the applier resumes the changelog from the
 * partition offsets saved in it instead of bootstrapping; rv_replica_destroy
 * (and every snapshot_interval_s seconds, the applier) saves one. A snapshot
 * that cannot be used (corrupt, truncated, another dim/metric/M/storage,
 * changelog topic or shard) is logged as an error and ignored. Its POSN
 * section (see rv_replica.c, "snapshot positions"; version 2, version 1
 * still read) holds the per-partition next offsets, the per-id version map
 * and each id's metadata, the quantizer version, the shard and the source
 * positions. Deleted ids' entries (tombstones) are dropped tombstone_ms after
 * the delete was applied (swept lazily by the applier). Offsets are only
 * meaningful against the same log: a snapshot from another log is detected
 * as a reset when its offsets are past the log's end. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"
#include "rv_filter.h"
#include "rv_flat.h" /* rv_hit_t, rv_hit_list_t */
#include "rv_hnsw.h"
#include "rv_record.h"

typedef struct rv_replica rv_replica_t;

/* ---- a store of record (PostgreSQL), for bootstrap and the quantizer ------
 * The replica core knows no PostgreSQL: the index stage hands it these
 * callbacks (index/applier's PostgreSQL loader implements them). */

typedef struct rv_replica_load rv_replica_load_t; /* a bootstrap in progress, handed to load() */

typedef struct rv_replica_store {
  /* Fills a fresh, empty replica state. Called on the applier thread when no
   * usable snapshot was loaded (before catch-up starts), and again when the
   * applier finds a gap or reset in the changelog (into a fresh state that
   * replaces the old one when complete; searches go on against the old one
   * meanwhile). It must call rv_replica_load_mark_end first, then read the
   * store in one consistent snapshot begun after that call (PostgreSQL:
   * one REPEATABLE READ transaction), passing the quantizer
   * (rv_replica_load_quantizer), the committed source positions
   * (rv_replica_load_positions) and every live row (rv_replica_load_put).
   * Returns RV_OK; RV_ERR_NOT_FOUND when the store holds nothing for the
   * collection; anything else is a failure (logged). In both of the latter
   * cases the replica replays the changelog from the beginning instead.
   * NULL: always replay. */
  rv_err_t (*load)(void *ctx, rv_replica_load_t *load, char *errstr, size_t errstr_size);
  /* SQ8 storage: the parameters of quantizer version `version` of the
   * collection (rv_sq8_serialize bytes; *params malloc'd, the replica frees
   * it), from rv_quantizers. RV_ERR_NOT_FOUND if there is no such version;
   * other errors are retried. Called on the applier thread when a change
   * carries a code of a version the replica has not installed. NULL: the
   * replica trains its own quantizer from sq8_train live vectors (tests
   * without PostgreSQL). */
  rv_err_t (*quantizer)(void *ctx, int32_t version, void **params, size_t *len, char *errstr, size_t errstr_size);
  void *ctx; /* passed to both; must outlive the replica */
} rv_replica_store_t;

/* Records the end offsets (high watermarks) of the changelog partitions the
 * replica reads as the positions its catch-up starts from. Call before the
 * store's snapshot begins: every change published before these offsets was
 * committed before it, so the load plus the catch-up miss nothing (and
 * versions make the overlap harmless). RV_ERR_IO when Kafka cannot say. */
rv_err_t rv_replica_load_mark_end(rv_replica_load_t *l, char *errstr, size_t errstr_size);

/* Installs the collection's SQ8 quantizer (rv_sq8_serialize bytes) before
 * the first put, so the loaded codes are used as stored (no re-quantizing).
 * Ignored (RV_OK) when the replica's storage is float, or the metric cosine. */
rv_err_t rv_replica_load_quantizer(rv_replica_load_t *l, int32_t version, const void *params, size_t len,
                                   char *errstr, size_t errstr_size);

/* The source positions committed in the store's snapshot (rv_offsets: the
 * next source offset per source partition), as if a position marker had
 * carried them. */
rv_err_t rv_replica_load_positions(rv_replica_load_t *l, const rv_source_position_t *pos, int n);

/* Adds one live row: an RV_OP_UPSERT change with its version, attributes,
 * and the float vector and/or the SQ8 code (a row with only a code is
 * decoded with the loaded quantizer for re-ranking). A row whose id belongs
 * to another shard is skipped (RV_OK). RV_ERR_INVALID, RV_ERR_DIM,
 * RV_ERR_NOMEM as rv_replica_apply. c is copied: valid for the call only.
 * With conf.load_threads > 1 the row is checked here and queued to the
 * insert threads (a bounded queue: blocks while it is full), which build the
 * fresh graph in parallel; the result is that of a sequential load (ids,
 * versions, stored codes, metadata, attributes), all inserts finish before
 * the state is swapped in, and an insert that runs out of memory fails the
 * load (this or a later put returns RV_ERR_NOMEM, or the bootstrap fails). */
rv_err_t rv_replica_load_put(rv_replica_load_t *l, const rv_change_t *c);

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
  int shard_index;                   /* this replica reads changelog partitions p with */
  int shard_count;                   /*   p % shard_count == shard_index; shard_count <= 1: all of them */
  int max_lag_ms;                    /* rv_replica_ready: lag must be under this; <= 0: 5000 */
  int tombstone_ms;                  /* a deleted id's version entry is dropped this long after the delete
                                        was applied; <= 0: 60000 */
  rv_replica_store_t store;          /* bootstrap and quantizer source; zeroed: replay, own training */
  int load_threads;                  /* bootstrap from the store: threads inserting the loaded rows into the
                                        fresh state's graph in parallel; <= 0: the online CPUs, at most 8;
                                        1: on the loader's thread (see rv_replica_load_put) */
} rv_replica_conf_t;

/* Where a replica's state came from. */
typedef enum rv_replica_boot {
  RV_BOOT_NONE = 0,     /* not bootstrapped yet */
  RV_BOOT_SNAPSHOT = 1, /* a local snapshot, then catch-up from its positions */
  RV_BOOT_STORE = 2,    /* the store of record (PostgreSQL), then catch-up from the end offsets */
  RV_BOOT_REPLAY = 3    /* the whole changelog from the beginning */
} rv_replica_boot_t;

const char *rv_replica_boot_name(rv_replica_boot_t b); /* "none", "snapshot", "postgres", "replay" */

typedef struct rv_replica_stats {
  uint64_t count;      /* live vectors */
  uint64_t applied;    /* changes applied (including ignored duplicates) */
  uint64_t generation; /* bumped on every change that altered the index; a cache key part */
  int64_t lag;         /* changelog records known to exist but not yet applied, -1 unknown */
  uint64_t skipped;    /* changelog records the applier could not decode or apply (logged) */
  int restored;        /* 1 if the state was loaded from a snapshot by rv_replica_new */
  int quantized;       /* 1 once the index stores SQ8 codes */
  int32_t quantizer_version; /* SQ8 quantizer version in use (from the store), 0 = own training or none */
  rv_replica_boot_t boot;    /* where the current state came from */
  int64_t boot_ms;           /* how long that bootstrap took, -1 while it runs */
  int bootstrapped;          /* 1 once the state is loaded and catch-up has started: the replica can serve */
  int64_t lag_ms;            /* max over partitions of rv_replica_part_stats_t.lag_ms, -1 unknown */
  uint64_t rebootstraps;     /* gaps or resets of the changelog that made the replica bootstrap again */
  uint64_t tombstones;       /* version entries of deleted ids still kept */
  int64_t snapshot_pause_ms; /* how long the last snapshot held applies off (its copy-on-write window) */
  int64_t snapshot_ms;       /* how long the last snapshot took to write, in the background */
} rv_replica_stats_t;

/* Per changelog partition the replica reads. */
typedef struct rv_replica_part_stats {
  int32_t partition;      /* changelog partition */
  int64_t next_offset;    /* next offset to apply, -1 none read yet */
  int64_t high_watermark; /* -1 unknown */
  int64_t lag_records;    /* high_watermark - next_offset (>= 0), -1 unknown */
  int64_t lag_ms;         /* 0 when caught up; else now minus the changelog timestamp of the oldest record
                             not yet applied (approximated by the last applied one's), -1 unknown */
  int64_t event_lag_ms;   /* when the last change was applied: that moment minus its source event time
                             (event_time, else created_at), -1 none yet */
  double applied_per_s;   /* changes applied per second over the last few seconds */
} rv_replica_part_stats_t;

/* Fills out[0..max) with the partitions the replica reads, in partition
 * order; returns how many there are (may exceed max). Thread: any. */
int rv_replica_partition_stats(rv_replica_t *r, rv_replica_part_stats_t *out, int max);

/* 1 when the replica is bootstrapped and its lag_ms is known and under
 * max_lag_ms (Kubernetes readiness); 0 otherwise. Thread: any. */
int rv_replica_ready(rv_replica_t *r);

/* ---- read-your-writes --------------------------------------------------------
 * Ingest publishes a position marker (rv_record.h) to every changelog
 * partition after each commit. For a source partition P, the replica's
 * position is the smallest next_offset for P over the markers last applied on
 * each changelog partition it reads: every source record of P below it is
 * applied (or was deleted/replaced later). Bootstrap from the store sets the
 * positions it committed; a snapshot saves and restores them. */

/* Copies the current positions (source partitions in increasing order) into
 * out[0..max); returns how many are known (may exceed max). Thread: any. */
int rv_replica_positions(rv_replica_t *r, rv_source_position_t *out, int max);

/* 1 if every change of source partition src_partition with a source offset
 * <= src_offset is applied (position > src_offset), else 0. Thread: any. */
int rv_replica_visible(rv_replica_t *r, int32_t src_partition, int64_t src_offset);

/* Blocks until rv_replica_visible holds or timeout_ms passes (<= 0: does not
 * wait). RV_OK, or RV_ERR_TIMEOUT. Thread: any but the applier's. */
rv_err_t rv_replica_wait_visible(rv_replica_t *r, int32_t src_partition, int64_t src_offset, int timeout_ms);

/* The changes of one applied batch (one applier poll's worth), for live
 * subscriptions: called on the applier thread after they are published
 * (visible to searches), with no replica lock held. changes[i] are valid for
 * the call only. Set before rv_replica_start; NULL removes it. */
typedef struct rv_replica_applied {
  const rv_change_t *const *changes; /* the changes that altered the index, in apply order */
  int n;
  uint64_t generation;               /* the generation after the last of them */
} rv_replica_applied_t;
void rv_replica_set_on_applied(rv_replica_t *r, void (*fn)(void *ctx, const rv_replica_applied_t *batch),
                               void *ctx);

/* Calls fn(ctx, id, src_partition, src_offset) for every live (not deleted)
 * id with the version of the change that put it there, in no particular
 * order; returns how many. Holds the version map's read lock throughout: the
 * applier's publications wait meanwhile, so fn must be quick and must not
 * call into the replica. For consistency checks (GET /api/replica/versions).
 * Thread: any. */
size_t rv_replica_foreach_live(rv_replica_t *r, void (*fn)(void *ctx, const char *id, int32_t partition,
                                                           int64_t offset),
                               void *ctx);

/* 1 if id belongs to this replica's shard (its changelog partition, by the
 * producer's partitioner, is one it reads), always 1 without shards. Needs
 * the changelog partition count: 0 until the applier knows it. Thread: any. */
int rv_replica_owns_id(rv_replica_t *r, const char *id);

/* Copies conf; loads the snapshot when one is configured and usable (an
 * unusable one is logged and ignored). Returns NULL with errstr set on bad
 * conf or no memory. */
rv_replica_t *rv_replica_new(const rv_replica_conf_t *conf, char *errstr, size_t errstr_size);

/* Starts the applier thread: finds the changelog topic (waiting for it to
 * exist), then reads the partitions of this shard (assign, no consumer
 * group) from the snapshot's offsets when one was loaded, else bootstraps
 * (see "Bootstrap" at the top) and catches up, and applies each change.
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
 * applier's current positions. Applies are held off (the apply mutex) only
 * while the state is copied into memory (stats.snapshot_pause_ms; the copy
 * costs about the index's size in memory until the file is written); the
 * file is then written from the copy with applies and searches going on
 * (stats.snapshot_ms, copy included). The applier's periodic snapshots
 * (snapshot_interval_s) write their copy on a background thread.
 * RV_ERR_STATE if no path is configured or a re-bootstrap is replaying;
 * otherwise rv_snapshot_save's errors. Thread: any. */
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

/* Without an applier (no brokers): runs the store bootstrap (conf.store.load
 * into a fresh state, swapped in) on the caller's thread, as the applier
 * would at start; rv_replica_load_mark_end then marks no partitions.
 * RV_ERR_STATE without store.load or once started; else the load's result. */
rv_err_t rv__replica_bootstrap(rv_replica_t *r);

/* Without an applier: the changelog partition count rv_replica_owns_id uses. */
void rv__replica_set_partition_count(rv_replica_t *r, int n);

/* SQ8: copies the code the index stores for live id into out (len >= dim).
 * RV_ERR_NOT_FOUND, RV_ERR_STATE (float index). Thread: any. */
rv_err_t rv__replica_get_code(rv_replica_t *r, const char *id, uint8_t *out, size_t len);

#endif
