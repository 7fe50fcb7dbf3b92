#ifndef RV_SUBS_H
#define RV_SUBS_H
/* Live top-k subscriptions: keeps each subscription's top-k current from the
 * changes a replica applies, and says what changed (an update: enter, leave,
 * moved) when, and only when, the top-k did. No transport: serve turns the
 * updates into rv.v1 `update` messages (issue 11).
 *
 * Model. A subscription is (query vector, k, ef, filter) over one collection
 * (one rv_subs per collection; its sharded replicas may all feed it).
 * Identical subscriptions (same vector bytes, k, ef and canonical filter text)
 * share one evaluation (a "query"), reference counted by its subscribers, and
 * each subscriber numbers its own updates 1, 2, ... (seq 0 is its snapshot).
 * A query keeps the exact top (k + extra) candidates, best first (score, then
 * id in byte order), and whether no other matching vector exists. For each
 * applied change, in order:
 *   - an upsert costs one distance per distinct query (a SIMD kernel over the
 *     queries' rows, one change vector against many queries; under l2 the
 *     rows are Haar transforms, coarse coefficients first, so a lower bound
 *     from the first block rules most queries out, and the few that pass get
 *     the exact distance between the original vectors); only when it is
 *     within the last candidate's distance (or the id is a candidate) is the
 *     query's filter evaluated on the change's metadata and the candidate
 *     list edited;
 *   - a delete, or an upsert that moves a candidate out (farther, or no
 *     longer matching the filter), removes it; only when fewer than k
 *     candidates remain and more matching vectors may exist does the query
 *     re-search (conf.search, once, at the end of the batch).
 * After the batch each query whose top-k changed gets an update, kept in a
 * bounded history (conf.history per query) for rv_subs_resume, and handed to
 * each of its subscribers through conf.deliver.
 *
 * Applying a change the state already reflects changes nothing in the end (a
 * change sets its id's whole state), so a batch evaluated after a search that
 * already saw it is harmless; that is what makes the snapshot of
 * rv_subs_subscribe and the updates that follow it meet without a gap.
 *
 * Threads and locks. One mutex (the engine's) guards everything:
 *   - rv_subs_on_applied (the replica's applier thread, via
 *     rv_replica_set_on_applied) holds it for the whole batch, including the
 *     re-searches (conf.search) and the deliveries (conf.deliver) it makes;
 *   - rv_subs_subscribe, rv_subs_unsubscribe, rv_subs_resume, rv_subs_stats
 *     (any other thread) hold it briefly. rv_subs_subscribe of a new query
 *     runs its first search without the lock and retries (then holds the
 *     lock for it) if a batch was evaluated meanwhile.
 * conf.deliver and conf.search run with the mutex held: they must be quick
 * (deliver: queue the update, e.g. coalesce per connection; never block on
 * a socket) and must not call back into this rv_subs. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"
#include "rv_filter.h"
#include "rv_flat.h" /* rv_hit_t, rv_hit_list_t */
#include "rv_replica.h" /* rv_replica_applied_t */

typedef struct rv_subs rv_subs_t;

/* One update of one subscriber. Everything it points to is valid for the
 * call to conf.deliver (or the resume callback) only: copy what you keep. */
typedef struct rv_subs_update {
  uint64_t seq;              /* the subscriber's: 1 more than its previous update (or snapshot) */
  uint64_t as_of;            /* replica generation the new top-k is exact for */
  const rv_hit_t *enter;     /* hits new in the top-k, best first */
  int n_enter;
  const char *const *leave;  /* ids no longer in the top-k */
  int n_leave;
  const rv_hit_t *moved;     /* hits still in the top-k whose score or metadata changed, best first */
  int n_moved;
} rv_subs_update_t;

/* A subscriber's current top-k. */
typedef struct rv_subs_snapshot {
  rv_hit_list_t hits; /* owned by the caller (rv_hit_list_close), best first */
  uint64_t seq;       /* the subscriber's seq it stands at: its next update is seq + 1 */
  uint64_t as_of;     /* generation the hits are exact for (as far as conf.search is exact) */
} rv_subs_snapshot_t;

/* The search the owner provides (e.g. rv_replica_search_filtered over the
 * collection's shards): the k nearest of q matching f (NULL: no filter),
 * best first, equal scores by id; *as_of is a generation read before
 * searching (every change up to it is visible to the search). out is empty
 * on entry; RV_OK or an error (then out stays empty). */
typedef rv_err_t (*rv_subs_search_fn)(void *ctx, const float *q, int dim, int k, int ef, const rv_filter_t *f,
                                      rv_hit_list_t *out, uint64_t *as_of, char *errstr, size_t errstr_size);

/* Called with an update for subscriber sub (user is what it subscribed
 * with). Thread: the applier's (rv_subs_on_applied), mutex held. */
typedef void (*rv_subs_deliver_fn)(void *ctx, uint64_t sub, void *user, const rv_subs_update_t *u);

typedef struct rv_subs_conf {
  rv_collection_conf_t collection; /* dim, metric, and the fields filters and metadata use (copied) */
  rv_subs_search_fn search;        /* required */
  void *search_ctx;
  rv_subs_deliver_fn deliver;      /* NULL: updates are only kept in the history */
  void *deliver_ctx;
  int extra;                       /* candidates kept beyond k; <= 0: 8 */
  int history;                     /* updates kept per query for resume; <= 0: 64 */
  int scalar;                      /* 1: scalar kernels only (tests); 0: the best the CPU has */
} rv_subs_conf_t;

typedef struct rv_subs_stats {
  uint64_t subscribers;    /* live subscriptions */
  uint64_t queries;        /* distinct evaluations they share */
  uint64_t batches;        /* batches evaluated */
  uint64_t changes;        /* changes evaluated */
  uint64_t distances;      /* query-change distances computed (abandoned ones included) */
  uint64_t filter_evals;   /* filter evaluations on change metadata */
  uint64_t researches;     /* re-searches (conf.search) made by evaluation */
  uint64_t updates;        /* query updates made (before fan-out) */
  uint64_t delivered;      /* updates handed to subscribers */
  uint64_t eval_ns;        /* time spent in rv_subs_on_applied */
} rv_subs_stats_t;

/* Copies conf. NULL with errstr set when conf is invalid (no search, bad
 * dim, metric or fields) or memory runs out. */
rv_subs_t *rv_subs_new(const rv_subs_conf_t *conf, char *errstr, size_t errstr_size);

/* Frees everything (subscriptions included). NULL does nothing. No other
 * call may be in flight (unhook it from the replica first). */
void rv_subs_destroy(rv_subs_t *s);

/* Subscribes to the top-k of q (collection dim floats, finite), k 1..1000,
 * ef >= 0 (0 = the search's default), filter f (NULL: none; ownership passes
 * to the rv_subs on every return, even a failure: it is destroyed when no
 * query uses it) whose canonical text is filter_key (NULL or "" exactly when
 * f is NULL or has no clauses; it is how identical filters are recognised).
 * On RV_OK: *sub is the new subscription's id (never 0), snap its current
 * top-k at seq 0. conf.deliver may be called for the new subscription as
 * soon as the mutex is released, which can be before this returns: be ready
 * to queue its updates (seq 1, ...) behind the snapshot before calling. RV_ERR_INVALID for bad arguments, RV_ERR_NOMEM, or the
 * search's error (errstr says). Thread: any but the applier's. */
rv_err_t rv_subs_subscribe(rv_subs_t *s, const float *q, int k, int ef, rv_filter_t *f, const char *filter_key,
                           void *user, uint64_t *sub, rv_subs_snapshot_t *snap, char *errstr, size_t errstr_size);

/* Ends subscription sub: no deliver call for it starts after this returns.
 * RV_ERR_NOT_FOUND if unknown. Thread: any but the applier's. */
rv_err_t rv_subs_unsubscribe(rv_subs_t *s, uint64_t sub);

/* After a reconnect: the subscriber last saw seq. When the history still
 * holds every update after seq, calls replay(ctx, u) for each of them in
 * order (under the mutex, so no live update comes between or before them)
 * and sets *reset = 0; otherwise sets *reset = 1 and fills snap with the
 * current top-k and the seq it stands at (the caller sends it as a reset
 * snapshot; later updates follow it). RV_ERR_NOT_FOUND for an unknown sub,
 * RV_ERR_INVALID for a seq beyond the subscriber's latest, RV_ERR_NOMEM.
 * Thread: any but the applier's. */
rv_err_t rv_subs_resume(rv_subs_t *s, uint64_t sub, uint64_t seq,
                        void (*replay)(void *ctx, const rv_subs_update_t *u), void *ctx, int *reset,
                        rv_subs_snapshot_t *snap);

/* Evaluates one applied batch (see the top). Matches the signature of
 * rv_replica_set_on_applied: pass it with the rv_subs as ctx. Changes of
 * another dim are ignored (logged). Thread: an applier's; batches from
 * several replicas (shards) are serialised by the mutex. */
void rv_subs_on_applied(void *ctx, const rv_replica_applied_t *batch);

void rv_subs_stats(rv_subs_t *s, rv_subs_stats_t *out);

#endif
