#include "rv_remote.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_log.h"
#include "rv_time.h"

#define OUTSTANDING_MAX 4096     /* requests queued or awaiting a reply, per endpoint */
#define REPLY_MAX (64u << 20)    /* a larger reply closes the connection */
#define TICK_US 2000             /* how often deadlines are checked */

typedef struct req {
  struct req *next;
  uint64_t id;
  int sent;
  int64_t deadline_us;
  rv_remote_done_fn fn;
  void *arg;
  int tag;
  int ep;
  size_t len;
  unsigned char *text; /* LWS_PRE bytes into the same allocation */
} req_t;

/* Touched only on the client thread (after rv_remote_new). */
typedef struct endpoint {
  char url[RV_REMOTE_URL_MAX];
  char host[RV_REMOTE_URL_MAX];
  char path[RV_REMOTE_URL_MAX];
  int port;
  struct lws *wsi;  /* NULL: not connected */
  int open;         /* the WebSocket is established */
  req_t *head;      /* requests in send order: the unsent ones wait for WRITEABLE */
  rv_buf_t rx;      /* the reply being reassembled */
  int rx_too_big;
} endpoint_t;

struct rv_remote {
  endpoint_t *eps;
  int n_eps;
  struct lws_protocols protocols[2];
  struct lws_context *ctx;
  pthread_t thread;
  int running;
  atomic_int stop;
  atomic_int outstanding;
  pthread_mutex_t lock; /* guards inbox and next_id */
  req_t *inbox_head, *inbox_tail;
  uint64_t next_id;
  lws_sorted_usec_list_t tick;
};

static rv_err_t parse_url(endpoint_t *ep, const char *url, char *errstr, size_t errstr_size) {
  size_t n = strlen(url);
  if (n >= RV_REMOTE_URL_MAX)
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard URL longer than %d bytes", RV_REMOTE_URL_MAX - 1);
  memcpy(ep->url, url, n + 1);
  if (strncmp(url, "ws://", 5))
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard URL \"%s\": must start with ws://", url);
  const char *h = url + 5, *end;
  if (*h == '[') {
    end = strchr(h, ']');
    if (!end) return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard URL \"%s\": unclosed [", url);
    memcpy(ep->host, h + 1, (size_t)(end - h - 1));
    ep->host[end - h - 1] = 0;
    end++;
  } else {
    end = h + strcspn(h, ":/");
    memcpy(ep->host, h, (size_t)(end - h));
    ep->host[end - h] = 0;
  }
  if (!ep->host[0]) return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard URL \"%s\": no host", url);
  ep->port = 80;
  if (*end == ':') {
    char *stop;
    long p = strtol(end + 1, &stop, 10);
    if (stop == end + 1 || p < 1 || p > 65535 || (*stop && *stop != '/'))
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard URL \"%s\": bad port", url);
    ep->port = (int)p;
    end = stop;
  } else if (*end && *end != '/') {
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard URL \"%s\": bad host", url);
  }
  snprintf(ep->path, sizeof ep->path, "%s", *end ? end : "/");
  return RV_OK;
}

/* ---- client thread ---- */

static void report(rv_remote_t *rm, req_t *r, json_t *reply, const char *why) {
  r->fn(r->arg, r->tag, reply, why);
  free(r);
  atomic_fetch_sub(&rm->outstanding, 1);
}

static void fail_all(rv_remote_t *rm, endpoint_t *ep, const char *why) {
  req_t *r = ep->head;
  ep->head = NULL;
  ep->wsi = NULL;
  ep->open = 0;
  rv_buf_reset(&ep->rx);
  while (r) {
    req_t *next = r->next;
    report(rm, r, NULL, why);
    r = next;
  }
}

static void ep_connect(rv_remote_t *rm, endpoint_t *ep) {
  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = rm->ctx;
  ci.address = ep->host;
  ci.port = ep->port;
  ci.path = ep->path;
  ci.host = ep->host;
  ci.origin = ep->host;
  ci.protocol = "rv.v1";
  ci.opaque_user_data = ep;
  ci.pwsi = &ep->wsi;
  if (!lws_client_connect_via_info(&ci)) {
    char why[RV_REMOTE_URL_MAX + 32];
    snprintf(why, sizeof why, "cannot connect to %s", ep->url);
    fail_all(rm, ep, why);
  }
}

static void take_inbox(rv_remote_t *rm) {
  pthread_mutex_lock(&rm->lock);
  req_t *r = rm->inbox_head;
  rm->inbox_head = rm->inbox_tail = NULL;
  pthread_mutex_unlock(&rm->lock);
  while (r) {
    req_t *next = r->next;
    endpoint_t *ep = &rm->eps[r->ep];
    r->next = NULL;
    req_t **p = &ep->head;
    while (*p) p = &(*p)->next;
    *p = r;
    if (!ep->wsi) ep_connect(rm, ep);
    else if (ep->open) lws_callback_on_writable(ep->wsi);
    r = next;
  }
}

static void on_tick(lws_sorted_usec_list_t *sul) {
  rv_remote_t *rm = (rv_remote_t *)((char *)sul - offsetof(rv_remote_t, tick));
  int64_t now = rv_mono_us();
  for (int i = 0; i < rm->n_eps; i++) {
    endpoint_t *ep = &rm->eps[i];
    for (req_t **p = &ep->head; *p;) {
      req_t *r = *p;
      if (r->deadline_us > now) {
        p = &r->next;
        continue;
      }
      *p = r->next;
      char why[RV_REMOTE_URL_MAX + 64];
      snprintf(why, sizeof why, "no answer from %s within the deadline", ep->url);
      report(rm, r, NULL, why);
    }
  }
  lws_sul_schedule(rm->ctx, 0, &rm->tick, on_tick, TICK_US);
}

static int ep_write(endpoint_t *ep, struct lws *wsi) {
  req_t *r = ep->head;
  while (r && r->sent) r = r->next;
  if (!r) return 0;
  int n = lws_write(wsi, r->text, r->len, LWS_WRITE_TEXT);
  if (n < 0 || (size_t)n < r->len) return -1;
  r->sent = 1;
  for (r = r->next; r && r->sent; r = r->next) {}
  if (r) lws_callback_on_writable(wsi);
  return 0;
}

static void ep_reply(rv_remote_t *rm, endpoint_t *ep) {
  json_error_t jerr;
  json_t *reply = json_loadb(ep->rx.base ? (const char *)ep->rx.base : "", ep->rx.len, 0, &jerr);
  json_t *id = json_object_get(reply, "id");
  req_t **p = &ep->head;
  if (json_is_integer(id))
    while (*p && !((*p)->sent && (*p)->id == (uint64_t)json_integer_value(id))) p = &(*p)->next;
  if (json_is_integer(id) && *p) {
    req_t *r = *p;
    *p = r->next;
    report(rm, r, reply, NULL);
  } else if (!json_is_integer(id)) { /* an integer matching nothing: a request that already timed out */
    rv_warn("serve", "shard %s sent a reply matching no request (%.80s)", ep->url,
            ep->rx.base ? (const char *)ep->rx.base : "");
  }
  json_decref(reply);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  (void)user;
  if (!wsi) return 0;
  rv_remote_t *rm = lws_context_user(lws_get_context(wsi));
  endpoint_t *ep = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  char why[RV_REMOTE_URL_MAX + 160];
  switch (reason) {
  case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
    if (rm && !atomic_load(&rm->stop)) take_inbox(rm);
    return 0;
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (!ep) return -1;
    ep->open = 1;
    lws_callback_on_writable(wsi);
    return 0;
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    return ep && ep->wsi == wsi ? ep_write(ep, wsi) : -1;
  case LWS_CALLBACK_CLIENT_RECEIVE:
    if (!ep || ep->wsi != wsi) return -1;
    if (ep->rx_too_big || ep->rx.len + len > REPLY_MAX || rv_buf_append(&ep->rx, in, len)) ep->rx_too_big = 1;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi)) return 0;
    if (ep->rx_too_big) {
      rv_warn("serve", "shard %s: a reply over %u bytes; closing", ep->url, REPLY_MAX);
      return -1;
    }
    ep_reply(rm, ep);
    rv_buf_reset(&ep->rx);
    return 0;
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    if (ep && (ep->wsi == wsi || !ep->wsi)) {
      snprintf(why, sizeof why, "cannot connect to %s: %.120s", ep->url, in ? (const char *)in : "error");
      fail_all(rm, ep, why);
    }
    return 0;
  case LWS_CALLBACK_CLIENT_CLOSED:
  case LWS_CALLBACK_WSI_DESTROY:
    if (ep && ep->wsi == wsi) {
      snprintf(why, sizeof why, "connection to %s closed", ep->url);
      ep->rx_too_big = 0;
      fail_all(rm, ep, why);
    }
    return 0;
  default:
    break;
  }
  return 0;
}

static void *client_main(void *arg) {
  rv_remote_t *rm = arg;
  lws_sul_schedule(rm->ctx, 0, &rm->tick, on_tick, TICK_US);
  while (!atomic_load(&rm->stop))
    if (lws_service(rm->ctx, 0) < 0) break;
  return NULL;
}

/* ---- API ---- */

rv_remote_t *rv_remote_new(const char *const *urls, int n, char *errstr, size_t errstr_size) {
  if (n < 1) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "remote: no endpoints");
    return NULL;
  }
  rv_remote_t *rm = calloc(1, sizeof *rm);
  if (!rm || !(rm->eps = calloc((size_t)n, sizeof *rm->eps))) {
    free(rm);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "remote: out of memory");
    return NULL;
  }
  rm->n_eps = n;
  for (int i = 0; i < n; i++)
    if (parse_url(&rm->eps[i], urls[i], errstr, errstr_size)) {
      free(rm->eps);
      free(rm);
      return NULL;
    }
  pthread_mutex_init(&rm->lock, NULL);
  atomic_init(&rm->stop, 0);
  atomic_init(&rm->outstanding, 0);
  rm->next_id = 1;
  /* lws logging is process-wide: warnings and errors only (the handler a
   * serve installed, if any, stays: NULL keeps it). */
  lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
  rm->protocols[0] = (struct lws_protocols){.name = "rv.v1", .callback = callback, .rx_buffer_size = 65536};
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = rm->protocols;
  info.user = rm;
  info.gid = -1;
  info.uid = -1;
  rm->ctx = lws_create_context(&info);
  if (!rm->ctx) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "remote: lws_create_context failed");
    rv_remote_destroy(rm);
    return NULL;
  }
  if (pthread_create(&rm->thread, NULL, client_main, rm)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "remote: cannot start the client thread");
    rv_remote_destroy(rm);
    return NULL;
  }
  rm->running = 1;
  return rm;
}

int rv_remote_find(const rv_remote_t *rm, const char *url) {
  for (int i = 0; rm && i < rm->n_eps; i++)
    if (!strcmp(rm->eps[i].url, url)) return i;
  return -1;
}

rv_err_t rv_remote_send(rv_remote_t *rm, int ep, const char *body, size_t len, int64_t deadline_us,
                        rv_remote_done_fn fn, void *arg, int tag) {
  if (ep < 0 || ep >= rm->n_eps || len < 2 || body[0] != '{') return RV_ERR_INVALID;
  if (atomic_load(&rm->stop)) return RV_ERR_STATE;
  if (atomic_fetch_add(&rm->outstanding, 1) >= OUTSTANDING_MAX * rm->n_eps) {
    atomic_fetch_sub(&rm->outstanding, 1);
    return RV_ERR_FULL;
  }
  req_t *r = malloc(sizeof *r + LWS_PRE + len + 32);
  if (!r) {
    atomic_fetch_sub(&rm->outstanding, 1);
    return RV_ERR_NOMEM;
  }
  *r = (req_t){.deadline_us = deadline_us, .fn = fn, .arg = arg, .tag = tag, .ep = ep};
  r->text = (unsigned char *)(r + 1) + LWS_PRE;
  pthread_mutex_lock(&rm->lock);
  r->id = rm->next_id++;
  int head = snprintf((char *)r->text, 32, "{\"id\":%llu%s", (unsigned long long)r->id, len > 2 ? "," : "");
  memcpy(r->text + head, body + 1, len - 1);
  r->len = (size_t)head + len - 1;
  if (rm->inbox_tail) rm->inbox_tail->next = r;
  else rm->inbox_head = r;
  rm->inbox_tail = r;
  pthread_mutex_unlock(&rm->lock);
  lws_cancel_service(rm->ctx);
  return RV_OK;
}

void rv_remote_destroy(rv_remote_t *rm) {
  if (!rm) return;
  atomic_store(&rm->stop, 1);
  if (rm->running) {
    lws_cancel_service(rm->ctx);
    pthread_join(rm->thread, NULL);
  }
  if (rm->ctx) lws_context_destroy(rm->ctx); /* closes connections: their requests fail */
  for (int i = 0; i < rm->n_eps; i++) {
    fail_all(rm, &rm->eps[i], "shutting down");
    rv_buf_close(&rm->eps[i].rx);
  }
  req_t *r = rm->inbox_head;
  rm->inbox_head = rm->inbox_tail = NULL;
  while (r) {
    req_t *next = r->next;
    report(rm, r, NULL, "shutting down");
    r = next;
  }
  pthread_mutex_destroy(&rm->lock);
  free(rm->eps);
  free(rm);
}
