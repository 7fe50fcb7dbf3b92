#include "rv_serve.h"

#include <jansson.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_cache.h"
#include "rv_l2.h"
#include "rv_log.h"
#include "rv_fanout.h"
#include "rv_protocol.h"
#include "rv_remote.h"
#include "rv_search.h"
#include "rv_time.h"
#include "rv_workers.h"

#define MSG_MAX (4u << 20)         /* largest request message; larger closes with 1009 */
#define OUT_MAX_MSGS 1024          /* per-connection outgoing queue bounds; beyond them */
#define OUT_MAX_BYTES (16u << 20)  /* the client is not reading: close with 1008 */
#define JOB_QUEUE_MAX 1024         /* searches waiting for a worker; beyond: "overloaded" */
#define L1_MAX_BYTES (256u << 20)  /* bytes of cached reply text */
#define RX_BUFFER 65536            /* lws receive chunk */
#define RX_KEEP 65536              /* a reassembly buffer above this is released after use */
#define WAIT_TICK_US 1000          /* how often searches waiting for "after" are re-checked */
#define POSITIONS_MAX 256          /* source partitions listed in a not_yet_visible error */

/* A WebSocket connection. Lives in the lws per-session data; touched only on
 * the service thread. */
typedef struct conn {
  struct lws *wsi;
  uint64_t serial;    /* completions address connections by this, never by pointer */
  struct conn *chain; /* next in the same bucket of the connection table */
  int active;         /* established and in the table */
  rv_buf_t rx;        /* the text message being reassembled */
  size_t rx_len;      /* bytes of the current message so far (binary ones are not kept) */
  int rx_in_msg;      /* a message has started and not yet ended */
  int rx_binary;      /* the current message is binary */
  rv_msg_t *out_head, *out_tail; /* replies waiting to be written */
  size_t out_n, out_bytes;
  int closing;        /* the outgoing queue overflowed: close with 1008 when writable */
} conn_t;

/* A search (or a fan-out part) waiting for its replica to reach "after". */
typedef struct waiter {
  rv_search_job_t *job; /* owned */
  int32_t partition;
  int64_t offset;
  int64_t since_us, deadline_us;
} waiter_t;

/* An HTTP response waiting for HTTP_WRITEABLE. */
typedef struct http_reply {
  unsigned char *buf; /* LWS_PRE + len bytes of body, owned; NULL when none waits */
  size_t len;
  unsigned status;    /* HTTP status code */
  const char *content_type; /* static string */
  int await_body;     /* headers go out when the request body has arrived */
} http_reply_t;

/* lws per-session data for both protocols. A WebSocket upgrade without a
 * subprotocol stays on protocol 0, so one callback serves both and the session
 * holds both parts (lws zeroes it). */
typedef struct session {
  conn_t ws;
  http_reply_t http;
} session_t;

struct rv_serve {
  rv_serve_conf_t conf;        /* copy; collections borrowed */
  struct lws_protocols protocols[3];
  struct lws_context *ctx;
  struct lws_vhost *vhost;
  int port;                    /* bound port, 0 before start */
  int started;                 /* rv_serve_start was called */
  pthread_t service;
  int service_running;
  atomic_int stop;             /* tells the service thread to return */
  rv_lru_t *l1;                /* NULL: L1 off */
  rv_completions_t *done;
  rv_search_shared_t shared;
  rv_workers_t *workers;
  /* connection table: serial -> conn, service thread only */
  conn_t **buckets;
  size_t mask;                 /* buckets - 1 */
  size_t n_conns;
  uint64_t next_serial;
  rv_remote_t *remote;         /* NULL: no region has remote shards */
  waiter_t *waiting;           /* searches waiting for "after", service thread only */
  int n_waiting, cap_waiting;
  lws_sorted_usec_list_t wait_tick; /* scheduled while n_waiting > 0 */
  int tick_armed;
};

void rv_serve_conf_init(rv_serve_conf_t *conf) {
  memset(conf, 0, sizeof *conf);
  snprintf(conf->host, sizeof conf->host, "127.0.0.1");
  conf->port = 8080;
  conf->l1_entries = 10000;
  conf->l2_ttl_s = 300;
  conf->workers = 2;
  conf->shard_timeout_ms = 1000;
  conf->after_timeout_ms = 5000;
  conf->max_waiting = 1024;
}

/* ---- connection table ---- */

static rv_err_t table_grow(rv_serve_t *s) {
  size_t n = s->buckets ? (s->mask + 1) * 2 : 64;
  conn_t **b = calloc(n, sizeof *b);
  if (!b) return RV_ERR_NOMEM;
  if (s->buckets) {
    for (size_t i = 0; i <= s->mask; i++) {
      for (conn_t *c = s->buckets[i], *next; c; c = next) {
        next = c->chain;
        c->chain = b[c->serial & (n - 1)];
        b[c->serial & (n - 1)] = c;
      }
    }
    free(s->buckets);
  }
  s->buckets = b;
  s->mask = n - 1;
  return RV_OK;
}

static rv_err_t table_add(rv_serve_t *s, conn_t *c) {
  if ((!s->buckets || s->n_conns >= s->mask + 1) && table_grow(s) && !s->buckets)
    return RV_ERR_NOMEM;
  c->chain = s->buckets[c->serial & s->mask];
  s->buckets[c->serial & s->mask] = c;
  s->n_conns++;
  return RV_OK;
}

static conn_t *table_find(rv_serve_t *s, uint64_t serial) {
  if (!s->buckets) return NULL;
  conn_t *c = s->buckets[serial & s->mask];
  while (c && c->serial != serial) c = c->chain;
  return c;
}

static void table_remove(rv_serve_t *s, conn_t *c) {
  conn_t **p = &s->buckets[c->serial & s->mask];
  while (*p && *p != c) p = &(*p)->chain;
  if (*p) {
    *p = c->chain;
    s->n_conns--;
  }
  c->chain = NULL;
}

/* ---- WebSocket connections ---- */

/* Returns -1 (refusing the connection) when it cannot be registered. */
static int conn_open(rv_serve_t *s, conn_t *c, struct lws *wsi) {
  memset(c, 0, sizeof *c);
  c->wsi = wsi;
  c->serial = ++s->next_serial;
  if (table_add(s, c) != RV_OK) {
    rv_error("serve", "connection %llu: out of memory; refusing it", (unsigned long long)c->serial);
    return -1;
  }
  c->active = 1;
  return 0;
}

static void conn_close(rv_serve_t *s, conn_t *c) {
  if (c->active) table_remove(s, c);
  c->active = 0;
  for (rv_msg_t *m = c->out_head, *next; m; m = next) {
    next = m->next;
    free(m);
  }
  c->out_head = c->out_tail = NULL;
  c->out_n = c->out_bytes = 0;
  rv_buf_close(&c->rx);
}

/* Queues m for c (ownership passes) and asks for a writable callback. */
static void conn_enqueue(conn_t *c, rv_msg_t *m) {
  if (c->closing) {
    free(m);
    return;
  }
  /* One reply larger than the byte bound still goes out when nothing else waits. */
  if (c->out_n + 1 > OUT_MAX_MSGS || (c->out_n && c->out_bytes + m->len > OUT_MAX_BYTES)) {
    rv_warn("serve", "connection %llu: outgoing queue over its bounds (%zu messages, %zu bytes): "
            "the client is not reading; closing with 1008", (unsigned long long)c->serial, c->out_n,
            c->out_bytes);
    c->closing = 1;
    free(m);
  } else {
    m->next = NULL;
    if (c->out_tail) c->out_tail->next = m;
    else c->out_head = m;
    c->out_tail = m;
    c->out_n++;
    c->out_bytes += m->len;
  }
  lws_callback_on_writable(c->wsi);
}

/* Queues a reply made on the service thread (text is freed). len is read
 * only after text was made: pass the formatter's length pointer. */
static void conn_send(conn_t *c, char *text, const size_t *len) {
  rv_msg_t *m = text ? rv_msg_new(c->serial, LWS_PRE, text, *len) : NULL;
  free(text);
  if (!m) {
    rv_error("serve", "connection %llu: out of memory for a reply", (unsigned long long)c->serial);
    return;
  }
  conn_enqueue(c, m);
}

static void send_error(conn_t *c, const char *id_json, rv_proto_code_t code, const char *message) {
  size_t len = 0;
  conn_send(c, rv_reply_error(id_json, code, message, &len), &len);
}

/* ---- read-your-writes: searches waiting for "after" ---- */

/* "positions":{"<partition>":<next offset>,...} of r, into buf. */
static void positions_member(rv_replica_t *r, char *buf, size_t size) {
  rv_source_position_t pos[POSITIONS_MAX];
  int n = rv_replica_positions(r, pos, POSITIONS_MAX);
  if (n > POSITIONS_MAX) n = POSITIONS_MAX;
  size_t at = (size_t)snprintf(buf, size, "\"positions\":{");
  for (int i = 0; i < n && at < size; i++)
    at += (size_t)snprintf(buf + at, size - at, "%s\"%d\":%lld", i ? "," : "", (int)pos[i].partition,
                           (long long)pos[i].next_offset);
  if (at + 2 > size) snprintf(buf, size, "\"positions\":{}"); /* cannot happen at this size; stay valid */
  else snprintf(buf + at, size - at, "}");
}

static void submit(rv_serve_t *s, rv_search_job_t *job) {
  if (rv_workers_submit(s->workers, job))
    rv_search_job_fail(job, RV_PROTO_OVERLOADED, "too many searches waiting; retry later", NULL);
}

static void wait_tick(lws_sorted_usec_list_t *sul);

static void arm_wait_tick(rv_serve_t *s) {
  if (s->tick_armed || !s->n_waiting) return;
  s->tick_armed = 1;
  lws_sul_schedule(s->ctx, 0, &s->wait_tick, wait_tick, WAIT_TICK_US);
}

/* Runs the waiting searches whose position arrived, fails those past their
 * deadline (service thread). stopping: fail them all. */
static void check_waiting(rv_serve_t *s, int stopping) {
  int64_t now = rv_mono_us();
  int kept = 0;
  for (int i = 0; i < s->n_waiting; i++) {
    waiter_t *w = &s->waiting[i];
    if (stopping) {
      rv_search_job_fail(w->job, RV_PROTO_INTERNAL, "shutting down", NULL);
    } else if (rv_replica_visible(w->job->replica, w->partition, w->offset)) {
      submit(s, w->job);
    } else if (now >= w->deadline_us) {
      char extra[POSITIONS_MAX * 32], msg[256];
      positions_member(w->job->replica, extra, sizeof extra);
      snprintf(msg, sizeof msg,
               "source partition %d offset %lld is not applied by the replica after %lld ms (its positions: "
               "next source offset per source partition)",
               (int)w->partition, (long long)w->offset, (long long)((now - w->since_us) / 1000));
      rv_search_job_fail(w->job, RV_PROTO_NOT_YET_VISIBLE, msg, extra);
    } else {
      s->waiting[kept++] = *w;
    }
  }
  s->n_waiting = kept;
}

static void wait_tick(lws_sorted_usec_list_t *sul) {
  rv_serve_t *s = (rv_serve_t *)((char *)sul - offsetof(rv_serve_t, wait_tick));
  s->tick_armed = 0;
  check_waiting(s, 0);
  arm_wait_tick(s);
}

/* Runs job on a worker now, or once its replica has applied "after"
 * (service thread). Takes ownership of job. */
static void dispatch(rv_serve_t *s, rv_search_job_t *job, int64_t received_us) {
  const rv_request_t *q = job->q;
  if (!q->has_after || rv_replica_visible(job->replica, q->after_partition, q->after_offset)) {
    submit(s, job);
    return;
  }
  if (s->n_waiting >= s->conf.max_waiting) {
    char msg[128];
    snprintf(msg, sizeof msg, "too many searches (%d) waiting for \"after\"; retry later", s->conf.max_waiting);
    rv_search_job_fail(job, RV_PROTO_OVERLOADED, msg, NULL);
    return;
  }
  if (s->n_waiting == s->cap_waiting) {
    int cap = s->cap_waiting ? s->cap_waiting * 2 : 16;
    waiter_t *w = realloc(s->waiting, (size_t)cap * sizeof *w);
    if (!w) {
      rv_search_job_fail(job, RV_PROTO_INTERNAL, "out of memory", NULL);
      return;
    }
    s->waiting = w;
    s->cap_waiting = cap;
  }
  s->waiting[s->n_waiting++] = (waiter_t){.job = job,
                                          .partition = q->after_partition,
                                          .offset = q->after_offset,
                                          .since_us = received_us,
                                          .deadline_us = received_us + (int64_t)s->conf.after_timeout_ms * 1000};
  arm_wait_tick(s);
}

/* ---- searches ---- */

static rv_search_job_t *new_job(rv_serve_t *s, uint64_t conn, rv_replica_t *replica,
                                const rv_serve_collection_t *col, int region, int64_t received_us) {
  rv_search_job_t *job = calloc(1, sizeof *job);
  if (!job) return NULL;
  job->shared = &s->shared;
  job->conn = conn;
  job->q = &job->req;
  job->replica = replica;
  job->collection = col->name;
  job->region = col->regions[region];
  job->received_us = received_us;
  return job;
}

static const rv_serve_shard_t *region_shards(const rv_serve_collection_t *col, int r, int *n) {
  if (!col->shards || !col->shards[r]) return NULL;
  *n = col->n_shards[r];
  return col->shards[r];
}

/* The region's vector dimension (validated by rv_serve_new). */
static int region_dim(const rv_serve_collection_t *col, int r) {
  int n = 0;
  const rv_serve_shard_t *sh = region_shards(col, r, &n);
  if (!sh) return rv_replica_collection(col->replicas[r])->dim;
  if (col->dim > 0) return col->dim;
  for (int i = 0; i < n; i++)
    if (sh[i].replica) return rv_replica_collection(sh[i].replica)->dim;
  return 0;
}

/* rv_remote_done_fn: a remote shard's answer (client thread). */
static void remote_done(void *arg, int shard, json_t *reply, const char *why) {
  rv_fanout_t *f = arg;
  if (reply) rv_fanout_reply(f, shard, reply);
  else rv_fanout_error(f, shard, RV_PROTO_INTERNAL, why, NULL);
}

/* Sends a search to every shard of a region (service thread). Takes
 * ownership of req's contents. */
static void start_fanout(rv_serve_t *s, conn_t *c, rv_request_t *req, const rv_serve_collection_t *col, int r,
                         int64_t received_us) {
  int n = 0;
  const rv_serve_shard_t *sh = region_shards(col, r, &n);
  rv_fanout_t *f = rv_fanout_new(n, req->k, req->id_json, c->serial, received_us, s->done, LWS_PRE);
  char *body = NULL;
  size_t body_len = 0;
  int any_remote = 0;
  for (int i = 0; i < n; i++) any_remote |= !sh[i].replica;
  if (f && any_remote) body = rv_request_search_json(req, &body_len);
  if (!f || (any_remote && !body)) {
    free(body);
    if (f) rv_fanout_error(f, 0, RV_PROTO_INTERNAL, "out of memory", NULL); /* n == 1 frees it */
    for (int i = 1; f && i < n; i++) rv_fanout_error(f, i, RV_PROTO_INTERNAL, "out of memory", NULL);
    rv_request_close(req);
    return;
  }
  rv_request_t *q = rv_fanout_request(f);
  *q = *req;
  rv_request_init(req); /* now owned by the fan-out */
  int64_t deadline = received_us + (int64_t)s->conf.shard_timeout_ms * 1000 +
                     (q->has_after ? (int64_t)s->conf.after_timeout_ms * 1000 : 0);
  /* Shards are reported in any order, possibly before this loop ends: after
   * the last one f and q may be gone, so nothing here reads them after it. */
  for (int i = 0; i < n; i++) {
    if (sh[i].replica) {
      rv_search_job_t *job = new_job(s, c->serial, sh[i].replica, col, r, received_us);
      if (!job) {
        rv_fanout_error(f, i, RV_PROTO_INTERNAL, "out of memory", NULL);
        continue;
      }
      job->q = q;
      job->fanout = f;
      job->shard = i;
      dispatch(s, job, received_us);
    } else {
      int ep = rv_remote_find(s->remote, sh[i].url);
      rv_err_t err = ep < 0 ? RV_ERR_STATE : rv_remote_send(s->remote, ep, body, body_len, deadline, remote_done, f, i);
      if (err) {
        char msg[320];
        snprintf(msg, sizeof msg, "shard %s: %s", sh[i].url,
                 err == RV_ERR_FULL ? "too many requests outstanding" : rv_err_str(err));
        rv_fanout_error(f, i, RV_PROTO_INTERNAL, msg, NULL);
      }
    }
  }
  free(body);
}

/* Resolves and queues a parsed search; answers at once when it cannot run.
 * Takes ownership of req's contents. */
static void start_search(rv_serve_t *s, conn_t *c, rv_request_t *req, int64_t received_us) {
  const rv_serve_collection_t *col = NULL;
  for (int i = 0; i < s->conf.n_collections && !col; i++)
    if (!strcmp(s->conf.collections[i].name, req->collection)) col = &s->conf.collections[i];
  char msg[256];
  if (!col) {
    snprintf(msg, sizeof msg, "no collection \"%s\"", req->collection);
    send_error(c, req->id_json, RV_PROTO_UNKNOWN_COLLECTION, msg);
    rv_request_close(req);
    return;
  }
  int r = req->region[0] ? -1 : 0;
  for (int i = 0; i < col->n_replicas && r < 0; i++)
    if (!strcmp(col->regions[i], req->region)) r = i;
  if (r < 0) {
    snprintf(msg, sizeof msg, "collection \"%s\" has no region \"%s\"", col->name, req->region);
    send_error(c, req->id_json, RV_PROTO_UNKNOWN_REGION, msg);
    rv_request_close(req);
    return;
  }
  int dim = region_dim(col, r);
  if (req->dim != dim) {
    snprintf(msg, sizeof msg, "collection \"%s\" has dim %d; the vector has %d", col->name, dim,
             req->dim);
    send_error(c, req->id_json, RV_PROTO_WRONG_DIM, msg);
    rv_request_close(req);
    return;
  }
  int n_shards = 0;
  if (region_shards(col, r, &n_shards)) {
    start_fanout(s, c, req, col, r, received_us);
    return;
  }
  rv_search_job_t *job = new_job(s, c->serial, col->replicas[r], col, r, received_us);
  if (!job) {
    send_error(c, req->id_json, RV_PROTO_INTERNAL, "out of memory");
    rv_request_close(req);
    return;
  }
  job->req = *req;
  rv_request_init(req); /* now owned by the job */
  dispatch(s, job, received_us);
}

static void handle_message(rv_serve_t *s, conn_t *c, const char *text, size_t len, int binary) {
  int64_t received_us = rv_mono_us();
  if (binary) {
    send_error(c, NULL, RV_PROTO_UNSUPPORTED,
               "binary frames are not supported yet; send JSON text");
    return;
  }
  rv_request_t req;
  rv_request_init(&req);
  char msg[256];
  rv_proto_code_t code = rv_request_parse(text, len, &req, msg, sizeof msg);
  if (code != RV_PROTO_OK) {
    send_error(c, req.id_json, code, msg);
  } else if (req.type == RV_REQ_PING) {
    size_t n = 0;
    conn_send(c, rv_reply_pong(req.id_json, rv_wall_ms(), &n), &n);
  } else {
    start_search(s, c, &req, received_us);
  }
  rv_request_close(&req);
}

/* Closes the connection with a status and reason; the callback returns -1. */
static int close_with(struct lws *wsi, enum lws_close_status status, const char *why) {
  lws_close_reason(wsi, status, (unsigned char *)why, strlen(why));
  return -1;
}

static int conn_receive(rv_serve_t *s, conn_t *c, struct lws *wsi, const void *in, size_t len) {
  if (!c->rx_in_msg) {
    c->rx_in_msg = 1;
    c->rx_binary = lws_frame_is_binary(wsi);
    c->rx_len = 0;
    rv_buf_reset(&c->rx);
  }
  if (c->rx_len + len + lws_remaining_packet_payload(wsi) > MSG_MAX) {
    rv_warn("serve", "connection %llu: message over %u bytes; closing with 1009",
            (unsigned long long)c->serial, MSG_MAX);
    return close_with(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message too large (max 4 MiB)");
  }
  c->rx_len += len;
  if (!c->rx_binary && rv_buf_append(&c->rx, in, len))
    return close_with(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
  if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi)) return 0;
  c->rx_in_msg = 0;
  handle_message(s, c, c->rx.base ? (const char *)c->rx.base : "", c->rx.len, c->rx_binary);
  if (c->rx.cap > RX_KEEP) rv_buf_close(&c->rx);
  return 0;
}

static int conn_write(conn_t *c, struct lws *wsi) {
  if (c->closing) return close_with(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, "client too slow");
  rv_msg_t *m = c->out_head;
  if (!m) return 0;
  c->out_head = m->next;
  if (!c->out_head) c->out_tail = NULL;
  c->out_n--;
  c->out_bytes -= m->len;
  int n = lws_write(wsi, m->text, m->len, LWS_WRITE_TEXT);
  size_t len = m->len;
  free(m);
  if (n < 0 || (size_t)n < len) {
    rv_warn("serve", "connection %llu: write failed; closing", (unsigned long long)c->serial);
    return -1;
  }
  if (c->out_head) lws_callback_on_writable(wsi);
  return 0;
}

/* Moves finished replies to their connections (service thread). */
static void deliver_completions(rv_serve_t *s) {
  rv_msg_t *m = rv_completions_take(s->done);
  while (m) {
    rv_msg_t *next = m->next;
    conn_t *c = table_find(s, m->conn);
    if (c) conn_enqueue(c, m);
    else free(m); /* the connection closed while its search ran */
    m = next;
  }
}

/* ---- HTTP ---- */

static json_t *replica_stats_json(rv_replica_t *r) {
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  return json_pack("{s:I,s:I,s:I,s:I}", "count", (json_int_t)st.count, "applied", (json_int_t)st.applied,
                   "generation", (json_int_t)st.generation, "lag", (json_int_t)st.lag);
}

static char *stats_json(rv_serve_t *s, size_t *len) {
  json_t *root = json_object(), *cols = json_object();
  int bad = !root || !cols || json_object_set(root, "collections", cols);
  for (int i = 0; i < s->conf.n_collections && !bad; i++) {
    const rv_serve_collection_t *col = &s->conf.collections[i];
    json_t *regions = json_object();
    bad = !regions || json_object_set_new(cols, col->name, regions);
    for (int r = 0; r < col->n_replicas && !bad; r++) {
      int n = 0;
      const rv_serve_shard_t *sh = region_shards(col, r, &n);
      json_t *o = NULL;
      if (sh) { /* {"shards":[{stats} or {"url":..}, ...]} */
        json_t *arr = json_array();
        for (int j = 0; j < n && arr; j++)
          if (json_array_append_new(arr, sh[j].replica ? replica_stats_json(sh[j].replica)
                                                       : json_pack("{s:s}", "url", sh[j].url))) {
            json_decref(arr);
            arr = NULL;
          }
        o = arr ? json_pack("{s:o}", "shards", arr) : NULL;
        /* all in-process: the region's totals too, as an unsharded region has them */
        uint64_t count = 0, applied = 0;
        int all_local = 1;
        for (int j = 0; j < n; j++) {
          rv_replica_stats_t st;
          if (!sh[j].replica) {
            all_local = 0;
            break;
          }
          rv_replica_stats(sh[j].replica, &st);
          count += st.count;
          applied += st.applied;
        }
        if (o && all_local &&
            (json_object_set_new(o, "count", json_integer((json_int_t)count)) ||
             json_object_set_new(o, "applied", json_integer((json_int_t)applied)))) {
          json_decref(o);
          o = NULL;
        }
      } else {
        o = replica_stats_json(col->replicas[r]);
      }
      bad = !o || json_object_set_new(regions, col->regions[r], o);
    }
  }
  char *text = bad ? NULL : json_dumps(root, JSON_COMPACT);
  json_decref(cols);
  json_decref(root);
  if (text) *len = strlen(text);
  return text;
}

static char *not_found_json(const char *path, size_t *len) {
  json_t *o = json_pack("{s:s,s:s}", "code", "not_found", "message", "no such endpoint");
  if (o && path) json_object_set_new(o, "path", json_string(path)); /* left out if not UTF-8 */
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (text) *len = strlen(text);
  return text;
}

/* Sends the prepared reply's headers and asks for HTTP_WRITEABLE for the body. */
static int http_send_headers(session_t *ss, struct lws *wsi) {
  unsigned char head[LWS_PRE + 512];
  unsigned char *start = head + LWS_PRE, *p = start, *end = head + sizeof head - 1;
  if (lws_add_http_common_headers(wsi, ss->http.status, ss->http.content_type, ss->http.len, &p, end) ||
      lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                   (const unsigned char *)"no-store", 8, &p, end) ||
      lws_finalize_write_http_header(wsi, start, &p, end))
    return -1;
  lws_callback_on_writable(wsi);
  return 0;
}

/* 1 when r is ready (want_ready) or, for /startup, bootstrapped. */
static int replica_ok(rv_replica_t *r, int want_ready) {
  if (!r) return 1; /* a remote shard: its own process answers for it */
  if (want_ready) return rv_replica_ready(r);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  return st.bootstrapped;
}

/* /ready (want_ready) and /startup without a conf.ready hook: 1 when every
 * in-process replica served, shards included, is ready or bootstrapped. */
static int replicas_all(const rv_serve_t *s, int want_ready) {
  for (int i = 0; i < s->conf.n_collections; i++) {
    const rv_serve_collection_t *c = &s->conf.collections[i];
    for (int j = 0; j < c->n_replicas; j++) {
      int n = 0;
      const rv_serve_shard_t *sh = region_shards(c, j, &n);
      if (!sh && !replica_ok(c->replicas[j], want_ready)) return 0;
      for (int k = 0; sh && k < n; k++)
        if (sh[k].replica && !replica_ok(sh[k].replica, want_ready)) return 0;
    }
  }
  return 1;
}

static void add_version(void *ctx, const char *id, int32_t partition, int64_t offset) {
  json_t *ids = ctx;
  json_array_append_new(ids, json_pack("[s,i,I]", id, (int)partition, (json_int_t)offset));
}

/* GET /api/replica/versions?collection=C[&region=R]: every live id of the
 * region's in-process replica (or the union of its in-process shards) with
 * the version it holds, for consistency checks against PostgreSQL. */
static char *versions_json(rv_serve_t *s, struct lws *wsi, unsigned *status, size_t *len) {
  char col_name[RV_NAME_MAX + 16], region[RV_NAME_MAX + 16];
  /* lws copies "name=value" into the buffer and returns the value, or NULL */
  const char *cn = lws_get_urlarg_by_name(wsi, "collection=", col_name, (int)sizeof col_name);
  const char *rn = lws_get_urlarg_by_name(wsi, "region=", region, (int)sizeof region);
  if (!cn) cn = "";
  if (!rn) rn = "";
  const rv_serve_collection_t *col = NULL;
  for (int i = 0; i < s->conf.n_collections && !col; i++)
    if (!cn[0] ? s->conf.n_collections == 1 : !strcmp(s->conf.collections[i].name, cn)) col = &s->conf.collections[i];
  int r = -1;
  for (int j = 0; col && j < col->n_replicas && r < 0; j++)
    if (!rn[0] || !strcmp(col->regions[j], rn)) r = j;
  rv_replica_t *held[64];
  int n = 0;
  if (r >= 0 && col->shards && col->shards[r]) {
    for (int k = 0; k < col->n_shards[r] && n < 64; k++)
      if (col->shards[r][k].replica) held[n++] = col->shards[r][k].replica;
  } else if (r >= 0 && col->replicas && col->replicas[r]) {
    held[n++] = col->replicas[r];
  }
  json_t *o;
  if (!n) {
    *status = HTTP_STATUS_NOT_FOUND;
    o = json_pack("{s:s,s:s}", "code", "not_found", "message",
                  "no replica of that collection and region is held in this process (give ?collection=C&region=R)");
  } else {
    json_t *ids = json_array();
    size_t count = 0;
    for (int k = 0; k < n && ids; k++) count += rv_replica_foreach_live(held[k], add_version, ids);
    o = ids ? json_pack("{s:s,s:s,s:I,s:o}", "collection", col->name, "region", col->regions[r], "count",
                        (json_int_t)count, "ids", ids)
            : NULL;
  }
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (text) *len = strlen(text);
  return text;
}

static int http_request(rv_serve_t *s, session_t *ss, struct lws *wsi, const char *path) {
  int get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
  unsigned status = HTTP_STATUS_OK;
  const char *content_type = "application/json";
  size_t len = 0;
  char *body;
  if (get && !strcmp(path, "/metrics") && s->conf.metrics) {
    rv_buf_t text;
    rv_buf_init(&text);
    if (rv_metrics_write(s->conf.metrics, &text)) rv_buf_close(&text);
    body = text.base ? (char *)text.base : strdup(""); /* an empty registry writes nothing */
    len = text.len;
    content_type = RV_METRICS_CONTENT_TYPE;
  } else if (get && !strcmp(path, "/health")) {
    body = strdup("{\"status\":\"ok\"}");
    len = body ? strlen(body) : 0;
  } else if (get && (!strcmp(path, "/ready") || !strcmp(path, "/startup"))) {
    int ok = s->conf.ready ? s->conf.ready(s->conf.ready_arg, path[1] != 'r') : replicas_all(s, path[1] == 'r');
    status = ok ? HTTP_STATUS_OK : HTTP_STATUS_SERVICE_UNAVAILABLE;
    body = strdup(ok ? "{\"status\":\"ok\"}" : path[1] == 'r' ? "{\"status\":\"not ready\"}" : "{\"status\":\"starting\"}");
    len = body ? strlen(body) : 0;
  } else if (get && !strcmp(path, "/api/stats")) {
    body = stats_json(s, &len);
  } else if (get && !strcmp(path, "/api/replica/versions")) {
    body = versions_json(s, wsi, &status, &len);
  } else {
    status = HTTP_STATUS_NOT_FOUND;
    body = not_found_json(path, &len);
  }
  if (!body) {
    rv_error("serve", "out of memory answering %s", path);
    return -1;
  }
  free(ss->http.buf);
  ss->http.buf = malloc(LWS_PRE + len);
  if (!ss->http.buf) {
    free(body);
    return -1;
  }
  memcpy(ss->http.buf + LWS_PRE, body, len);
  ss->http.len = len;
  ss->http.status = status;
  ss->http.content_type = content_type;
  free(body);
  /* lws holds back HTTP_WRITEABLE while a request body is arriving: answer
   * once it is complete (its bytes are discarded). */
  ss->http.await_body = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 ||
                        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;
  return ss->http.await_body ? 0 : http_send_headers(ss, wsi);
}

static int http_write(session_t *ss, struct lws *wsi) {
  if (!ss->http.buf || ss->http.await_body) return 0;
  int n = lws_write(wsi, ss->http.buf + LWS_PRE, ss->http.len, LWS_WRITE_HTTP_FINAL);
  size_t len = ss->http.len;
  free(ss->http.buf);
  ss->http.buf = NULL;
  if (n < 0 || (size_t)n < len) return -1;
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* ---- the lws callback (service thread, or the destroying thread during
 * lws_context_destroy) ---- */

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len) {
  if (!wsi) return 0;
  rv_serve_t *s = lws_context_user(lws_get_context(wsi));
  session_t *ss = user;
  switch (reason) {
  case LWS_CALLBACK_HTTP:
    return http_request(s, ss, wsi, in ? (const char *)in : "");
  case LWS_CALLBACK_HTTP_WRITEABLE:
    return http_write(ss, wsi);
  case LWS_CALLBACK_HTTP_BODY:
    return 0; /* no endpoint takes a body yet */
  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    if (!ss->http.buf || !ss->http.await_body) return -1;
    ss->http.await_body = 0;
    return http_send_headers(ss, wsi);
  case LWS_CALLBACK_CLOSED_HTTP:
    if (ss) {
      free(ss->http.buf);
      ss->http.buf = NULL;
    }
    break;
  case LWS_CALLBACK_ESTABLISHED:
    return conn_open(s, &ss->ws, wsi);
  case LWS_CALLBACK_RECEIVE:
    return conn_receive(s, &ss->ws, wsi, in, len);
  case LWS_CALLBACK_SERVER_WRITEABLE:
    return conn_write(&ss->ws, wsi);
  case LWS_CALLBACK_CLOSED:
    conn_close(s, &ss->ws);
    return 0;
  case LWS_CALLBACK_WSI_DESTROY:
    if (ss) { /* whatever a dropped connection still holds */
      if (ss->ws.wsi == wsi) conn_close(s, &ss->ws);
      free(ss->http.buf);
      ss->http.buf = NULL;
    }
    break;
  case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
    /* sent to each protocol; the second call finds the queue empty */
    if (s && s->done) deliver_completions(s);
    return 0;
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void lws_log_line(int level, const char *line) {
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
  rv_log(level == LLL_ERR ? RV_LOG_ERROR : RV_LOG_WARN, "lws", "%.*s", (int)n, line);
}

static void wake_service(void *arg) {
  rv_serve_t *s = arg;
  lws_cancel_service(s->ctx);
}

static void *service_main(void *arg) {
  rv_serve_t *s = arg;
  while (!atomic_load(&s->stop))
    if (lws_service(s->ctx, 0) < 0) break;
  return NULL;
}

/* ---- lifecycle ---- */

/* A sharded region: n >= 1 shards, each a replica or a ws:// URL, one dim. */
static rv_err_t check_shards(const rv_serve_collection_t *c, int r, const rv_serve_shard_t *sh, int n,
                             char *errstr, size_t errstr_size) {
  if (n < 1)
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "serve: collection \"%s\" region \"%s\": no shards",
                   c->name, c->regions[r]);
  int dim = c->dim;
  for (int i = 0; i < n; i++) {
    if (sh[i].replica) {
      int d = rv_replica_collection(sh[i].replica)->dim;
      if (dim > 0 && d != dim)
        return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                       "serve: collection \"%s\" region \"%s\": shard %d has dim %d, not %d", c->name,
                       c->regions[r], i, d, dim);
      dim = d;
    } else if (!memchr(sh[i].url, 0, sizeof sh[i].url) || strncmp(sh[i].url, "ws://", 5) || !sh[i].url[5]) {
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                     "serve: collection \"%s\" region \"%s\": shard %d needs a replica or a ws://host:port URL",
                     c->name, c->regions[r], i);
    }
  }
  if (dim <= 0)
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                   "serve: collection \"%s\" region \"%s\": only remote shards; give the collection's dim",
                   c->name, c->regions[r]);
  return RV_OK;
}

/* The distinct remote shard URLs of conf, into urls[0..max) (each borrowed),
 * returning how many; with urls NULL, how many remote shards there are (an
 * upper bound of the former). */
static int remote_urls(const rv_serve_conf_t *conf, const char **urls, int max) {
  int n = 0;
  for (int i = 0; i < conf->n_collections; i++) {
    const rv_serve_collection_t *c = &conf->collections[i];
    for (int r = 0; r < c->n_replicas; r++) {
      int ns = 0;
      const rv_serve_shard_t *sh = region_shards(c, r, &ns);
      for (int j = 0; sh && j < ns; j++) {
        if (sh[j].replica) continue;
        int seen = 0;
        for (int k = 0; urls && k < n && !seen; k++) seen = !strcmp(urls[k], sh[j].url);
        if (!urls) n++;
        else if (!seen && n < max) urls[n++] = sh[j].url;
      }
    }
  }
  return n;
}

rv_serve_t *rv_serve_new(const rv_serve_conf_t *conf, char *errstr, size_t errstr_size) {
  if (conf->n_collections < 1 || !conf->collections) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "serve: no collections");
    return NULL;
  }
  if (conf->port < 0 || conf->port > 65535 || !memchr(conf->host, 0, sizeof conf->host) ||
      !memchr(conf->redis, 0, sizeof conf->redis)) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "serve: bad port or unterminated host/redis");
    return NULL;
  }
  for (int i = 0; i < conf->n_collections; i++) {
    const rv_serve_collection_t *c = &conf->collections[i];
    if (!memchr(c->name, 0, sizeof c->name) || !c->name[0] || c->n_replicas < 1 || !c->replicas ||
        !c->regions) {
      rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "serve: collection %d needs a name and replicas",
              i);
      return NULL;
    }
    for (int j = 0; j < i; j++)
      if (!strcmp(conf->collections[j].name, c->name)) {
        rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "serve: collection \"%s\" listed twice",
                c->name);
        return NULL;
      }
    for (int r = 0; r < c->n_replicas; r++) {
      int n = 0;
      const rv_serve_shard_t *sh = region_shards(c, r, &n);
      if ((!sh && !c->replicas[r]) || !memchr(c->regions[r], 0, RV_NAME_MAX) || !c->regions[r][0]) {
        rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                "serve: collection \"%s\": replica %d has no replica or region name", c->name, r);
        return NULL;
      }
      if (sh && check_shards(c, r, sh, n, errstr, errstr_size)) return NULL;
    }
  }
  if (conf->redis[0]) { /* validate the address now; workers connect later */
    rv_l2_t *probe = rv_l2_new(conf->redis, 1, NULL, "serve", errstr, errstr_size);
    if (!probe) return NULL;
    rv_l2_destroy(probe);
  }

  rv_serve_t *s = calloc(1, sizeof *s);
  if (!s) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "serve: out of memory");
    return NULL;
  }
  s->conf = *conf;
  if (s->conf.l1_entries < 0) s->conf.l1_entries = 10000;
  if (s->conf.l2_ttl_s <= 0) s->conf.l2_ttl_s = 300;
  if (s->conf.workers <= 0) s->conf.workers = 2;
  if (s->conf.shard_timeout_ms <= 0) s->conf.shard_timeout_ms = 1000;
  if (s->conf.after_timeout_ms <= 0) s->conf.after_timeout_ms = 5000;
  if (s->conf.max_waiting <= 0) s->conf.max_waiting = 1024;
  atomic_init(&s->stop, 0);
  if (s->conf.l1_entries > 0) {
    s->l1 = rv_lru_new((size_t)s->conf.l1_entries, L1_MAX_BYTES);
    if (!s->l1) {
      free(s);
      rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "serve: out of memory for the L1 cache");
      return NULL;
    }
  }
  s->protocols[0] = (struct lws_protocols){.name = "http", .callback = callback,
                                           .per_session_data_size = sizeof(session_t),
                                           .rx_buffer_size = RX_BUFFER};
  s->protocols[1] = (struct lws_protocols){.name = "rv.v1", .callback = callback,
                                           .per_session_data_size = sizeof(session_t),
                                           .rx_buffer_size = RX_BUFFER};
  /* protocols[2] stays zero: the terminator */
  return s;
}

rv_err_t rv_serve_start(rv_serve_t *s, char *errstr, size_t errstr_size) {
  if (s->started) return rv_errf(RV_ERR_STATE, errstr, errstr_size, "serve: already started");
  s->started = 1;
  /* lws logging is process-wide; route warnings and errors to rv_log */
  lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_line);

  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  info.user = s;
  info.gid = -1;
  info.uid = -1;
  s->ctx = lws_create_context(&info);
  if (!s->ctx) return rv_errf(RV_ERR_IO, errstr, errstr_size, "serve: lws_create_context failed");

  memset(&info, 0, sizeof info);
  info.port = s->conf.port;
  info.iface = s->conf.host[0] ? s->conf.host : NULL;
  info.protocols = s->protocols;
  info.vhost_name = "rv";
  s->vhost = lws_create_vhost(s->ctx, &info);
  if (!s->vhost) {
    lws_context_destroy(s->ctx);
    s->ctx = NULL;
    return rv_errf(RV_ERR_IO, errstr, errstr_size, "serve: cannot listen on %s:%d",
                   s->conf.host[0] ? s->conf.host : "*", s->conf.port);
  }
  int port = lws_get_vhost_listen_port(s->vhost);

  rv_err_t err;
  s->done = rv_completions_new(wake_service, s);
  if (!s->done) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "serve: out of memory");
    goto fail;
  }
  s->shared = (rv_search_shared_t){.l1 = s->l1,
                                   .redis = s->conf.redis,
                                   .l2_ttl_s = s->conf.l2_ttl_s,
                                   .cache_namespace = s->conf.cache_namespace,
                                   .done = s->done,
                                   .headroom = LWS_PRE};
  rv_workers_conf_t wc = {.threads = s->conf.workers,
                          .queue_max = JOB_QUEUE_MAX,
                          .thread_init = rv_search_thread_init,
                          .thread_fini = rv_search_thread_fini,
                          .run = rv_search_run,
                          .drop = rv_search_job_free,
                          .arg = &s->shared};
  s->workers = rv_workers_new(&wc, errstr, errstr_size);
  if (!s->workers) {
    err = RV_ERR_NOMEM;
    goto fail;
  }
  int n_urls = remote_urls(&s->conf, NULL, 0);
  if (n_urls > 0) {
    const char **urls = calloc((size_t)n_urls, sizeof *urls);
    if (urls) n_urls = remote_urls(&s->conf, urls, n_urls);
    s->remote = urls ? rv_remote_new(urls, n_urls, errstr, errstr_size) : NULL;
    if (!urls) rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "serve: out of memory");
    free(urls);
    if (!s->remote) {
      err = RV_ERR_CONFIG;
      goto fail;
    }
  }
  if (pthread_create(&s->service, NULL, service_main, s)) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "serve: cannot start the service thread");
    goto fail;
  }
  s->service_running = 1;
  s->port = port;
  rv_info("serve", "listening on %s:%d (ws rv.v1, http); %d workers, L1 %d entries, L2 %s",
          s->conf.host[0] ? s->conf.host : "*", port, s->conf.workers, s->conf.l1_entries,
          s->conf.redis[0] ? s->conf.redis : "off");
  return RV_OK;

fail: /* remote and workers first: they may call lws_cancel_service on the context */
  rv_remote_destroy(s->remote);
  s->remote = NULL;
  rv_workers_destroy(s->workers);
  s->workers = NULL;
  lws_context_destroy(s->ctx);
  s->ctx = NULL;
  rv_completions_destroy(s->done);
  s->done = NULL;
  return err;
}

int rv_serve_port(const rv_serve_t *s) { return s->port; }

void rv_serve_destroy(rv_serve_t *s) {
  if (!s) return;
  if (s->service_running) {
    atomic_store(&s->stop, 1);
    lws_cancel_service(s->ctx);
    pthread_join(s->service, NULL);
  }
  /* The remote client, the workers and the waiting searches go before the
   * context: their answers call lws_cancel_service on it. Each reports what
   * it still holds (fan-outs must hear from every shard to be freed). */
  rv_remote_destroy(s->remote);
  rv_workers_destroy(s->workers);
  if (s->n_waiting) check_waiting(s, 1);
  free(s->waiting);
  if (s->ctx) lws_context_destroy(s->ctx); /* closes connections through the callback */
  rv_completions_destroy(s->done);
  rv_lru_destroy(s->l1);
  free(s->buckets);
  free(s);
}
