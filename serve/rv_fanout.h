#ifndef RV_FANOUT_H
#define RV_FANOUT_H
/* One search fanned out to the shards of a region: collects each shard's
 * answer (reported from a search worker, the remote client thread or the
 * service thread), and when the last shard has reported, merges the hits by
 * score then id into the top k and queues exactly one reply for the client
 * (schemas/protocol.md, "Sharded regions"). A shard that failed or did not
 * answer in time is named in the reply ("partial": true, "missing_shards"),
 * never dropped silently. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "rv_protocol.h"
#include "rv_workers.h"

typedef struct rv_fanout rv_fanout_t;

/* A fan-out over n_shards (>= 1) shards for the request id_json (copied; NULL
 * = null), answering connection conn on done (borrowed; must outlive every
 * fan-out) with headroom bytes before the text. received_us is the monotonic
 * arrival time, for took_us. NULL when memory runs out. */
rv_fanout_t *rv_fanout_new(int n_shards, int k, const char *id_json, uint64_t conn, int64_t received_us,
                           rv_completions_t *done, size_t headroom);

/* A request slot owned by f (initialised empty), freed with f: the caller
 * may move the request in so that the shards' jobs can borrow it until they
 * report. */
rv_request_t *rv_fanout_request(rv_fanout_t *f);

/* Each shard must be reported exactly once, by one of the three calls below;
 * the last report formats and queues the reply and frees f (so f must not be
 * touched by the caller after its last report). Thread: any; different
 * shards may be reported concurrently. */

/* Shard answered with hits_json (rv_hits_json text, copied) at generation as_of. */
void rv_fanout_hits(rv_fanout_t *f, int shard, const char *hits_json, size_t len, uint64_t as_of);

/* Shard failed with code and msg. A code the client caused (bad_request,
 * bad_filter, wrong_dim, not_yet_visible) makes the whole reply that error
 * (the lowest such shard's, with extra_member, JSON member text such as
 * "positions":{..}, copied; may be NULL); any other code marks the shard
 * missing with msg as the reason. */
void rv_fanout_error(rv_fanout_t *f, int shard, rv_proto_code_t code, const char *msg, const char *extra_member);

/* Shard's reply as received from a remote rv.v1 server (borrowed): a
 * "results" object is reported as hits, an "error" object as an error with
 * its code (unknown codes count as internal) and, for not_yet_visible, its
 * "positions"; anything else marks the shard missing. */
void rv_fanout_reply(rv_fanout_t *f, int shard, json_t *reply);

/* The merge itself (pure, for tests): the hits of n lists (JSON arrays of
 * {"id","score",..} objects, borrowed; a NULL list is skipped) ordered by
 * score (as float32, smaller first) then id (bytewise), an id kept only at its
 * best place, cut to k, as compact JSON text like rv_hits_json's. Hits
 * without a string id or a numeric score are dropped. NULL on no memory. */
char *rv_hits_merge(json_t *const *lists, int n, int k, size_t *len);

#endif
