#ifndef RV_HNSW_H
#define RV_HNSW_H
/* HNSW: an approximate k-NN graph index (Malkov & Yashunin), in the layout of
 * hnswlib: dense uint32 internal ids, one contiguous fixed-size level-0 record
 * per node (links + the code the traversal reads), visited sets cleared in
 * O(1) by an epoch tag. libc, libm and pthreads only.
 *
 * Scores follow rv_flat.h: smaller is closer. l2: squared Euclidean;
 * cosine: 1 - cos(a, b) (vectors and queries are normalised, the graph uses
 * dot products); ip: -dot(a, b).
 *
 * Storage modes (rv_hnsw_storage_t):
 *   FLOAT  the level-0 record holds the float vector; exact distances.
 *   SQ8    the record holds one byte per dimension (padded to
 *          rv_sq8_code_size) and the code's norm; traversal uses rv_sq8.h's
 *          integer asymmetric distance (query prepared once per search),
 *          then the best `rerank` candidates are re-scored with float vectors
 *          kept in a separate array (not in the graph block). Scores returned
 *          are exact. The graph itself is built on exact float distances.
 *   PQ     the record holds conf.pq_m bytes; traversal uses PQ asymmetric
 *          distance tables. Floats are kept (and candidates re-ranked) only if
 *          conf.pq_keep_floats; otherwise scores are PQ approximations.
 *
 * Ids: callers name vectors by external string ids (at most RV_ID_MAX bytes,
 * non-empty). Each live vector has a dense internal id (a "slot", < 2^32-1).
 * Slots of deleted vectors are reused by later inserts, so an internal id
 * alone can name a different vector later: each slot carries a version that
 * is bumped on reuse, and results carry it (rv_hnsw_result_external_id).
 * 64-bit integer ids are stored as their decimal string form
 * (rv_hnsw_upsert_u64 and friends).
 *
 * Threads and locks (summary; each call says more):
 *   - Writers (upsert, delete, train/set quantizer excepted) may run on any
 *     number of threads at once, concurrently with any number of searches:
 *     link lists have per-node locks, the entry point its own lock, the id
 *     map a mutex. Parallel build = several threads calling upsert.
 *   - Searches never see a half-written node: a node's data is written before
 *     it is published (release) and linked; replacing a vector gives it a new
 *     slot; reusing a deleted slot takes the index's "reuse" rwlock
 *     exclusively, which every search holds shared.
 *   - rv_hnsw_destroy, rv_hnsw_train, rv_hnsw_set_sq8/pq need no other call in
 *     flight on the index.
 */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"

typedef struct rv_hnsw rv_hnsw_t;

/* Quantizers, defined in rv_sq8.h and rv_pq.h. */
struct rv_sq8;
struct rv_pq;

typedef enum {
  RV_HNSW_FLOAT = 0, /* float vectors in the graph records */
  RV_HNSW_SQ8 = 1,   /* 8-bit scalar codes in the records, floats beside for rerank */
  RV_HNSW_PQ = 2     /* product-quantization codes in the records; floats optional */
} rv_hnsw_storage_t;

typedef struct rv_hnsw_conf {
  int dim;                   /* vector length, >= 1 */
  rv_metric_t metric;        /* l2, cosine or ip */
  int M;                     /* links per node on levels >= 1; level 0 gets 2*M. Default 16, range 2..256 */
  int ef_construction;       /* beam width while inserting. Default 100 */
  int ef_search;             /* default beam width of a search (when ef <= 0 is passed). Default 64 */
  rv_hnsw_storage_t storage; /* default RV_HNSW_FLOAT */
  int rerank;                /* SQ8/PQ+floats: best candidates re-scored with floats, at least k;
                                0 = all ef of the search (Fashion-MNIST: 20 keeps the same recall, ~20% faster) */
  int pq_m;                  /* PQ: sub-quantizers (code bytes per vector); must divide dim. Default 0 = dim/8 rounded to a divisor */
  int pq_keep_floats;        /* PQ: keep floats (and re-rank). Default 1 */
  size_t initial_capacity;   /* slots allocated up front; grows in chunks without moving. Default 1024 */
  uint64_t seed;             /* level generator seed. Default 42 */
} rv_hnsw_conf_t;

/* Fills conf with the defaults above; dim 0 and metric l2 (the caller sets dim). */
void rv_hnsw_conf_defaults(rv_hnsw_conf_t *conf);

/* Creates an empty index; conf is copied. Returns NULL with errstr filled if
 * conf is invalid or memory runs out. SQ8/PQ indexes need a quantizer
 * (rv_hnsw_train or rv_hnsw_set_sq8/pq) before the first insert. */
rv_hnsw_t *rv_hnsw_new(const rv_hnsw_conf_t *conf, char *errstr, size_t errstr_size);

/* Frees everything. NULL does nothing. No other call may be in flight. */
void rv_hnsw_destroy(rv_hnsw_t *h);

/* The configuration in force (a copy of what rv_hnsw_new got, defaults resolved). */
const rv_hnsw_conf_t *rv_hnsw_conf(const rv_hnsw_t *h);

/* ---- Quantizers (SQ8 / PQ storage only) -------------------------------- */

/* Trains the index's quantizer (SQ8: rv_sq8_train with the default clipping
 * quantiles; PQ: rv_pq_train with m = conf.pq_m) from n sample vectors
 * (n * dim floats, row-major; under cosine they are normalised first, as the
 * stored vectors are). RV_ERR_STATE if the index is FLOAT or already holds
 * vectors, RV_ERR_INVALID for n < 1 (PQ: n < 256) or non-finite values. On
 * failure the index is unchanged. No other call may be in flight. */
rv_err_t rv_hnsw_train(rv_hnsw_t *h, const float *sample, size_t n, char *errstr, size_t errstr_size);

/* Installs pre-trained parameters (e.g. those the ingest trained and ships
 * codes with). Takes ownership of q on success AND on failure (it is freed
 * then); the caller must not touch it after the call. RV_ERR_STATE if the
 * storage mode differs or the index already holds vectors; RV_ERR_DIM if q's
 * dimension differs. No other call may be in flight. */
rv_err_t rv_hnsw_set_sq8(rv_hnsw_t *h, struct rv_sq8 *q, char *errstr, size_t errstr_size);
rv_err_t rv_hnsw_set_pq(rv_hnsw_t *h, struct rv_pq *q, char *errstr, size_t errstr_size);

/* 1 if the index can take vectors (FLOAT, or a quantizer is installed). */
int rv_hnsw_ready(const rv_hnsw_t *h);

/* ---- Writes -------------------------------------------------------------- */

/* Inserts vec under id (copied), or replaces the vector stored under id: the
 * new vector gets a fresh slot, the old slot is then deleted (as by
 * rv_hnsw_delete), so a concurrent search sees the old or the new vector,
 * never a mix (a search running across the replace may return the old, the
 * new, both or, briefly, neither). *internal_id (if not NULL) receives the
 * new slot.
 * RV_ERR_DIM if dim != conf.dim; RV_ERR_INVALID for a NULL/empty/too long id
 * or a NaN/Inf component (or a zero vector under cosine); RV_ERR_STATE if a
 * quantizer is missing; RV_ERR_NOMEM, RV_ERR_FULL (2^32-2 slots). On failure
 * the index is unchanged.
 * Thread: any; concurrent writers and searches allowed (see the top). */
rv_err_t rv_hnsw_upsert(rv_hnsw_t *h, const char *id, const float *vec, int dim, uint32_t *internal_id);

/* As rv_hnsw_upsert, for SQ8 storage, storing code (code_len == dim bytes,
 * made by the installed quantizer, e.g. by ingest with the same parameters)
 * byte for byte instead of encoding vec. vec (the float vector, kept for
 * re-ranking and used to build the graph) may be NULL: the decoded code then
 * stands for it. RV_ERR_STATE if the storage is not SQ8 or no quantizer is
 * installed; RV_ERR_DIM if code_len != dim; otherwise as rv_hnsw_upsert.
 * Thread: as rv_hnsw_upsert. */
rv_err_t rv_hnsw_upsert_sq8(rv_hnsw_t *h, const char *id, const float *vec, int dim, const uint8_t *code,
                            size_t code_len, uint32_t *internal_id);

/* Removes id: its slot becomes a tombstone (skipped in results, still
 * navigable), the in-links of its neighbours are repaired with the selection
 * heuristic, and the slot goes on the free list for reuse by a later insert.
 * RV_ERR_NOT_FOUND if absent (index unchanged). Thread: as rv_hnsw_upsert. */
rv_err_t rv_hnsw_delete(rv_hnsw_t *h, const char *id);

/* 64-bit ids, stored as their decimal string form ("42"). */
rv_err_t rv_hnsw_upsert_u64(rv_hnsw_t *h, uint64_t id, const float *vec, int dim, uint32_t *internal_id);
rv_err_t rv_hnsw_delete_u64(rv_hnsw_t *h, uint64_t id);

/* ---- Ids and vectors ---------------------------------------------------- */

/* Number of live vectors. Thread: any (a snapshot under concurrent writes). */
size_t rv_hnsw_count(const rv_hnsw_t *h);

/* One past the highest slot ever allocated: every internal id is below it.
 * Thread: any. */
uint32_t rv_hnsw_id_bound(const rv_hnsw_t *h);

/* 1 if slot iid holds a live (inserted, not deleted) vector. Thread: any. */
int rv_hnsw_is_live(const rv_hnsw_t *h, uint32_t iid);

/* The version of slot iid (see rv_hnsw_result_t.version); 0 if out of range.
 * Thread: any. */
uint32_t rv_hnsw_version(const rv_hnsw_t *h, uint32_t iid);

/* Internal id of external id; RV_ERR_NOT_FOUND if absent. Thread: any. */
rv_err_t rv_hnsw_internal_id(const rv_hnsw_t *h, const char *id, uint32_t *iid);
rv_err_t rv_hnsw_internal_id_u64(const rv_hnsw_t *h, uint64_t id, uint32_t *iid);

/* Copies the external id of live slot iid into buf (NUL-terminated).
 * RV_ERR_NOT_FOUND if iid is not live, RV_ERR_INVALID if buf is too small
 * (RV_ID_MAX + 1 always suffices). Thread: any. */
rv_err_t rv_hnsw_external_id(const rv_hnsw_t *h, uint32_t iid, char *buf, size_t size);

/* Copies the float vector of live slot iid into out (dim floats; unit length
 * under cosine). RV_ERR_NOT_FOUND if not live; RV_ERR_STATE for PQ without
 * floats. Thread: any (holds the reuse lock shared while copying). */
rv_err_t rv_hnsw_get_vector(const rv_hnsw_t *h, uint32_t iid, float *out);

/* SQ8 storage: copies the dim code bytes of live slot iid into out (len >=
 * dim). RV_ERR_NOT_FOUND if not live, RV_ERR_STATE if the storage is not
 * SQ8, RV_ERR_INVALID if len < dim. Thread: any. */
rv_err_t rv_hnsw_get_sq8_code(const rv_hnsw_t *h, uint32_t iid, uint8_t *out, size_t len);

/* Pointer to slot iid's float vector (dim floats, unit length under cosine),
 * or NULL (out of range, never written, PQ without floats). No copy, no lock:
 * the data is stable until the slot is reused, so use it only where no
 * insert can reuse a slot meanwhile (single writer that is you, or while
 * holding rv_hnsw_read_lock). */
const float *rv_hnsw_vector(const rv_hnsw_t *h, uint32_t iid);

/* Calls fn(ctx, iid) for every live slot in increasing order; stops early
 * and returns fn's value when fn returns nonzero; 0 otherwise. Writers may run
 * concurrently (a slot inserted or deleted meanwhile may or may not be seen).
 * Thread: any. Do not call rv_hnsw_read_lock'ed functions' lock inside fn. */
int rv_hnsw_foreach_live(const rv_hnsw_t *h, int (*fn)(void *ctx, uint32_t iid), void *ctx);

/* Holds the reuse lock shared: no slot is reused (no vector rewritten, no
 * version bumped) until rv_hnsw_read_unlock. For callers that scan vectors
 * through rv_hnsw_vector or map many results to ids. Do not call search,
 * get_vector or upsert while holding it (non-recursive; writer-preferring). */
void rv_hnsw_read_lock(const rv_hnsw_t *h);
void rv_hnsw_read_unlock(const rv_hnsw_t *h);

/* ---- Search ---------------------------------------------------------------- */

/* Restricts results. accept returns nonzero for internal ids that may be
 * returned. It is called from the searching thread, possibly many times per
 * search, with the reuse lock held shared: it must not call back into
 * writers or rv_hnsw_read_lock. */
typedef struct rv_hnsw_filter {
  int (*accept)(void *ctx, uint32_t internal_id);
  void *ctx;
} rv_hnsw_filter_t;

typedef struct rv_hnsw_result {
  uint32_t id;      /* internal id */
  float score;      /* distance, smaller is closer (see the top) */
  uint32_t version; /* the slot's version when it was scored */
} rv_hnsw_result_t;

/* The k nearest live vectors to q, best first (ties: smaller internal id
 * first), into out[0..*n_out). ef: beam width, <= 0 means conf.ef_search;
 * it is raised to k if smaller. With a filter, rejected nodes are traversed
 * but not returned and the search goes on (beyond ef) until it has k
 * accepted results whose beam has converged, or the reachable graph is
 * exhausted. *n_out < k only if fewer acceptable live vectors are reachable.
 * RV_ERR_DIM, RV_ERR_INVALID (k < 1, NaN in q, cosine zero query), RV_ERR_NOMEM.
 * Thread: any, concurrently with writers. */
rv_err_t rv_hnsw_search(const rv_hnsw_t *h, const float *q, int dim, int k, int ef, const rv_hnsw_filter_t *filter,
                        rv_hnsw_result_t *out, int *n_out);

/* n queries (row-major n * dim), results into out[i * k ..] with n_out[i]
 * each. threads <= 1 runs on the caller's thread; otherwise up to `threads`
 * threads (caller included) split the queries. Returns the first failure. */
rv_err_t rv_hnsw_search_batch(const rv_hnsw_t *h, const float *q, size_t n, int dim, int k, int ef,
                              const rv_hnsw_filter_t *filter, int threads, rv_hnsw_result_t *out, int *n_out);

/* Exact scan over live vectors (the planner's choice for very selective
 * filters), same result contract as rv_hnsw_search. Uses floats (PQ without
 * floats: PQ distances). Thread: any. */
rv_err_t rv_hnsw_search_exact(const rv_hnsw_t *h, const float *q, int dim, int k, const rv_hnsw_filter_t *filter,
                              rv_hnsw_result_t *out, int *n_out);

/* External id of a search result: RV_ERR_NOT_FOUND if the vector was deleted
 * or its slot reused (version changed) since the search scored it. */
rv_err_t rv_hnsw_result_external_id(const rv_hnsw_t *h, const rv_hnsw_result_t *r, char *buf, size_t size);

/* ---- Serialization ------------------------------------------------------- */

/* Streams the whole index (conf, quantizer parameters, graph records, upper
 * links, floats, external ids, tombstones and free list) through write,
 * which returns 0 on success. No framing (magic/checksum) beyond a format
 * tag and lengths: the snapshot file adds that. Writers must be quiesced
 * (no upsert/delete in flight); searches may run. RV_ERR_IO if write fails. */
rv_err_t rv_hnsw_write(const rv_hnsw_t *h, int (*write)(void *ctx, const void *buf, size_t len), void *ctx);

/* Rebuilds an index from rv_hnsw_write's stream without re-inserting. read
 * must fill exactly len bytes and return 0, or return nonzero (treated as
 * truncation). conf supplies run-time settings (ef_search, rerank,
 * initial_capacity); dim, metric, storage and M must match the stream or it
 * is refused (RV_ERR_CONFIG); conf may be NULL to take the stream's.
 * Every field is validated: neighbour ids out of range or naming free slots,
 * counts above the level's maximum, levels, duplicate or malformed ids,
 * non-finite floats -> RV_ERR_CORRUPT with errstr saying what and where.
 * On success *out owns a new index; on failure *out is NULL. */
rv_err_t rv_hnsw_read(const rv_hnsw_conf_t *conf, int (*read)(void *ctx, void *buf, size_t len), void *ctx,
                      rv_hnsw_t **out, char *errstr, size_t errstr_size);

/* ---- Stats ------------------------------------------------------------- */

typedef struct rv_hnsw_stats {
  size_t count;       /* live vectors */
  size_t deleted;     /* tombstoned slots awaiting reuse */
  size_t slots;       /* slots ever allocated (rv_hnsw_id_bound) */
  size_t capacity;    /* slots with memory behind them */
  int max_level;      /* top level of the graph, -1 if empty */
  size_t graph_bytes; /* level-0 records (links + codes), upper links, per-slot state,
                         id map, quantizer parameters: everything but floats kept
                         beside the graph for rerank */
  size_t float_bytes; /* float vectors outside the records (SQ8; PQ with floats) */
  size_t id_bytes;    /* external id strings (included in neither above) */
} rv_hnsw_stats_t;

/* A snapshot of the counters; graph_bytes/count is bytes per vector.
 * Thread: any. */
void rv_hnsw_stats(const rv_hnsw_t *h, rv_hnsw_stats_t *st);

#endif
