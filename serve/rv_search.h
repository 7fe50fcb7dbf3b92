#ifndef RV_SEARCH_H
#define RV_SEARCH_H
/* One search request carried out on a worker thread: cache lookup (L1, then
 * L2), else a replica search; the reply text is pushed onto the completion
 * queue for the connection that asked. Plugs into rv_workers_conf_t. */
#include <stddef.h>
#include <stdint.h>

#include "rv_cache.h"
#include "rv_fanout.h"
#include "rv_protocol.h"
#include "rv_replica.h"
#include "rv_workers.h"

/* What every worker shares; owned by the server, outlives the workers. */
typedef struct rv_search_shared {
  rv_lru_t *l1;           /* NULL: no L1 */
  const char *redis;      /* NULL or "": no L2; else an rv_l2_new address */
  int l2_ttl_s;
  const char *cache_namespace; /* L2 key namespace (rv_l2_new) */
  rv_completions_t *done; /* where replies go */
  size_t headroom;        /* rv_msg_new headroom for the transport */
} rv_search_shared_t;

typedef struct rv_search_job {
  const rv_search_shared_t *shared; /* borrowed */
  uint64_t conn;            /* destination connection serial */
  rv_request_t req;         /* a parsed RV_REQ_SEARCH, owned (empty for a fan-out part) */
  const rv_request_t *q;    /* the request to run: &req, or the fan-out's (borrowed until reported) */
  rv_fanout_t *fanout;      /* NULL; or the fan-out this job is shard `shard` of: the result goes
                               there (uncached) instead of to conn */
  int shard;
  rv_replica_t *replica;    /* resolved, borrowed; its dim equals req.dim */
  const char *collection;   /* resolved names, borrowed (server conf) */
  const char *region;
  int64_t received_us;      /* monotonic time the message arrived, for took_us */
} rv_search_job_t;

/* rv_workers_conf_t callbacks. thread_init's arg is the rv_search_shared_t;
 * the per-thread state it returns holds the thread's L2 connection (NULL
 * state: the thread searches without L2). */
void *rv_search_thread_init(void *arg, int index);
void rv_search_thread_fini(void *state);
void rv_search_run(void *state, void *job);  /* frees the job */
/* NULL is a no-op. A fan-out part never run reports its shard missing. */
void rv_search_job_free(void *job);

/* Answers the job with an error (to its connection through shared->done, or
 * to its fan-out) and frees it. extra_member: as rv_reply_error_extra. */
void rv_search_job_fail(rv_search_job_t *j, rv_proto_code_t code, const char *msg, const char *extra_member);

#endif
