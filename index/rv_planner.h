#ifndef RV_PLANNER_H
#define RV_PLANNER_H
/* Filtered k-NN search over an HNSW index and its attribute store: estimates
 * how many live vectors match the filter and picks a path.
 *
 *   EXACT  score only the matching vectors. When the filter has a keyword
 *          clause, the matching slots come from the posting lists of its
 *          most selective keyword clause (cost O(matches)); otherwise from
 *          rv_hnsw_search_exact with the filter (one cheap check per live
 *          slot, a distance per match). Results are exact.
 *   GRAPH  rv_hnsw_search with the filter: non-matching nodes are traversed
 *          but not returned, and the search goes on until k matches have
 *          converged.
 *
 * The rule (why): a filtered graph search needs about ef accepted candidates
 * in its beam; with m of N live vectors matching it scores about
 * ef * 2M * (N / m) vectors (2M = level-0 links per expansion), while the
 * exact path scores m. The two cost the same at m* = sqrt(ef * 2M * N), so
 * EXACT is taken when m <= max(50 * k, sqrt(ef * 2M * N)) (ef after raising
 * it to k). The 50 * k floor covers small indexes, where a scan of a few
 * hundred vectors beats any graph walk, and very selective filters, where the
 * graph walk also loses recall (the matching nodes are sparse in the graph).
 * E.g. N = 1M, ef = 64, M = 16: EXACT below ~45k matches (4.5%); N = 4000:
 * below ~2.9k (the scan is cheap there anyway).
 *
 * The count: exact when the filter has a keyword clause whose posting lists
 * are small enough to walk (<= 4 * threshold + 4096 slots: each is checked
 * against the other clauses and for liveness) or the index has at most 16384
 * slots (all checked); otherwise estimated from 1024 evenly spaced samples of
 * the most selective keyword clause's postings, or of all slots.
 *
 * Guarantee: a search returns min(k, matching live vectors) hits. If the graph
 * path comes back with fewer than k (part of the matching set unreachable
 * through the graph), an exact scan finishes the job (plan.fallback).
 *
 * Threads: any, concurrently with the index's and the store's writers (see
 * rv_hnsw.h, rv_attrs.h). A vector inserted or deleted during a search may
 * or may not be in its results. The store's lock is held shared only while
 * the filter is resolved and posting lists copied, the index's reuse lock
 * while vectors are scored; never both. libc, libm, pthreads. */
#include <stddef.h>
#include <stdint.h>

#include "rv_attrs.h"
#include "rv_err.h"
#include "rv_filter.h"
#include "rv_hnsw.h"

typedef enum {
  RV_PLAN_AUTO = 0,  /* the planner's rule above */
  RV_PLAN_EXACT = 1, /* force the exact path */
  RV_PLAN_GRAPH = 2  /* force the graph path (still falls back to exact when < k) */
} rv_plan_mode_t;

typedef struct rv_plan {
  rv_plan_mode_t path; /* RV_PLAN_EXACT or RV_PLAN_GRAPH: the path chosen */
  size_t live;         /* live vectors when planned */
  size_t matches;      /* matching live vectors (see matches_exact) */
  int matches_exact;   /* 1: `matches` was counted; 0: estimated by sampling */
  double threshold;    /* EXACT when matches <= threshold (AUTO) */
  int via_postings;    /* EXACT scored only slots from posting lists */
  int fallback;        /* GRAPH returned < k hits; an exact scan replaced its results */
} rv_plan_t;

/* Plans without searching: fills *plan for filter f (NULL or no clauses =
 * unfiltered) with k results and beam ef (<= 0: the index's default).
 * RV_ERR_INVALID (errstr) for k < 1 or a filter built for other fields;
 * RV_ERR_NOMEM. Thread: any. */
rv_err_t rv_planner_plan(const rv_hnsw_t *h, const rv_attrs_t *a, const rv_filter_t *f, int k, int ef,
                         rv_plan_mode_t mode, rv_plan_t *plan, char *errstr, size_t errstr_size);

/* The k nearest live vectors to q that match f (NULL = all), best first,
 * ties by smaller internal id, into out[0..*n_out) (room for k). a may be
 * NULL when f is NULL or has no clauses. The result
 * contract is rv_hnsw_search's (scores: rv_hnsw.h; ids and versions usable
 * with rv_hnsw_result_external_id). plan (may be NULL) receives what was
 * done. Errors: RV_ERR_INVALID (k < 1, NaN in q, cosine zero query, a filter
 * for other fields), RV_ERR_DIM, RV_ERR_NOMEM; errstr says which.
 * Thread: any. */
rv_err_t rv_planner_search(const rv_hnsw_t *h, const rv_attrs_t *a, const rv_filter_t *f, const float *q, int dim,
                           int k, int ef, rv_plan_mode_t mode, rv_hnsw_result_t *out, int *n_out, rv_plan_t *plan,
                           char *errstr, size_t errstr_size);

#endif
