#include "rv_search.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_l2.h"
#include "rv_log.h"
#include "rv_time.h"

typedef struct worker {
  rv_l2_t *l2; /* NULL: no L2 */
} worker_t;

void *rv_search_thread_init(void *arg, int index) {
  const rv_search_shared_t *sh = arg;
  if (!sh->redis || !sh->redis[0]) return NULL;
  worker_t *w = calloc(1, sizeof *w);
  if (!w) {
    rv_warn("serve", "search worker %d: out of memory; no L2 cache", index);
    return NULL;
  }
  char name[32], err[256];
  snprintf(name, sizeof name, "search worker %d", index);
  w->l2 = rv_l2_new(sh->redis, sh->l2_ttl_s, sh->cache_namespace, name, err, sizeof err);
  if (!w->l2) rv_warn("serve", "%s: no L2 cache: %s", name, err);
  return w;
}

void rv_search_thread_fini(void *state) {
  worker_t *w = state;
  if (!w) return;
  rv_l2_destroy(w->l2);
  free(w);
}

void rv_search_job_free(void *job) {
  rv_search_job_t *j = job;
  if (!j) return;
  if (j->fanout) rv_fanout_error(j->fanout, j->shard, RV_PROTO_INTERNAL, "search dropped: shutting down", NULL);
  rv_request_close(&j->req);
  free(j);
}

/* Queues text (freed here) for conn. len is read only after text was made:
 * pass the formatter's length pointer, so argument order cannot matter. */
static void deliver(const rv_search_shared_t *sh, uint64_t conn, char *text, const size_t *len) {
  if (!text) {
    rv_error("serve", "out of memory formatting a reply for connection %llu",
             (unsigned long long)conn);
    return;
  }
  rv_msg_t *m = rv_msg_new(conn, sh->headroom, text, *len);
  free(text);
  if (!m) {
    rv_error("serve", "out of memory queueing a reply for connection %llu",
             (unsigned long long)conn);
    return;
  }
  rv_completions_push(sh->done, m);
}

void rv_search_job_fail(rv_search_job_t *j, rv_proto_code_t code, const char *msg, const char *extra_member) {
  if (j->fanout) {
    rv_fanout_error(j->fanout, j->shard, code, msg, extra_member);
    j->fanout = NULL;
  } else {
    size_t len = 0;
    deliver(j->shared, j->conn, rv_reply_error_extra(j->q->id_json, code, msg, extra_member, &len), &len);
  }
  rv_search_job_free(j);
}

/* A cached value is hits JSON written by rv_hits_json; reject anything else
 * (e.g. a foreign value under our key in a shared Redis). */
static int plausible_hits(const char *v, size_t len) {
  return len >= 2 && v[0] == '[' && v[len - 1] == ']';
}

void rv_search_run(void *state, void *job) {
  worker_t *w = state;
  rv_search_job_t *j = job;
  rv_l2_t *l2 = w ? w->l2 : NULL;
  const rv_search_shared_t *sh = j->shared;
  const rv_request_t *q = j->q;
  size_t len = 0;

  /* The filter is checked against the collection's fields before any cache
   * lookup: a bad filter gets its error, never a cached answer. */
  rv_filter_t *filter = NULL;
  if (q->n_filter > 0) {
    char msg[512];
    const rv_collection_conf_t *col = rv_replica_collection(j->replica);
    filter = rv_replica_filter_new(j->replica);
    rv_proto_code_t code = filter ? rv_request_filter_build(q, col->fields, col->n_fields, filter, msg, sizeof msg)
                                  : (snprintf(msg, sizeof msg, "out of memory"), RV_PROTO_INTERNAL);
    if (code != RV_PROTO_OK) {
      rv_filter_destroy(filter);
      rv_search_job_fail(j, code, msg, NULL);
      return;
    }
  }

  rv_replica_stats_t st;
  rv_replica_stats(j->replica, &st);
  uint64_t key = rv_cache_key(j->collection, j->region, q->k, q->ef, q->vector, q->dim, q->filter_key,
                              st.generation);

  char *hits = NULL;
  size_t hits_len = 0;
  int cached = 0;
  /* A fan-out part is not cached: the merged reply is what a client sees. */
  if (j->fanout) {
    l2 = NULL;
  } else if (sh->l1 && rv_lru_get(sh->l1, key, &hits, &hits_len)) {
    cached = 1;
  } else if (l2 && rv_l2_get(l2, key, &hits, &hits_len)) {
    if (plausible_hits(hits, hits_len)) {
      cached = 1;
      if (sh->l1) rv_lru_put(sh->l1, key, hits, hits_len);
    } else {
      free(hits);
      hits = NULL;
    }
  }

  if (!cached) {
    rv_hit_list_t list = {0};
    char why[256] = "";
    rv_err_t err = rv_replica_search_filtered(j->replica, q->vector, q->dim, q->k, q->ef, filter, &list, why,
                                              sizeof why);
    rv_filter_destroy(filter);
    filter = NULL;
    if (err) {
      char msg[320];
      snprintf(msg, sizeof msg, "search failed: %s", why[0] ? why : rv_err_str(err));
      rv_proto_code_t code = err == RV_ERR_DIM ? RV_PROTO_WRONG_DIM : RV_PROTO_INTERNAL;
      rv_search_job_fail(j, code, msg, NULL);
      return;
    }
    hits = rv_hits_json(&list, &hits_len);
    rv_hit_list_close(&list);
    if (!hits) {
      rv_search_job_fail(j, RV_PROTO_INTERNAL, "out of memory", NULL);
      return;
    }
    if (j->fanout) {
      rv_fanout_hits(j->fanout, j->shard, hits, hits_len, st.generation);
      j->fanout = NULL; /* reported: q may be gone now */
      free(hits);
      rv_search_job_free(j);
      return;
    }
    /* Stored under the generation read before the search: the result is at
     * least that fresh, and a later generation never finds it. */
    if (sh->l1) rv_lru_put(sh->l1, key, hits, hits_len);
    if (l2) rv_l2_set(l2, key, hits, hits_len);
  }
  rv_filter_destroy(filter); /* a cache hit did not use it */

  int64_t took = rv_mono_us() - j->received_us;
  char *reply = rv_reply_results(q->id_json, hits, hits_len, took, cached, st.generation, &len);
  free(hits);
  deliver(sh, j->conn, reply, &len);
  rv_search_job_free(j);
}
