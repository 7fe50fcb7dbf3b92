#include "rv_metrics_http.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_log.h"

#define LOG "metrics-http"

/* The response of one request, from LWS_CALLBACK_HTTP until it is written. */
typedef struct session {
  unsigned char *buf;       /* LWS_PRE + len bytes, the body after LWS_PRE; owned; NULL: none waits */
  size_t len;               /* body bytes */
  unsigned status;          /* HTTP status code */
  const char *content_type; /* static string */
  int allow_get;            /* a 405: send "Allow: GET" */
  int await_body;           /* the request has a body: answer once it has been read */
} session_t;

struct rv_metrics_http {
  rv_metrics_t *reg;               /* borrowed */
  struct lws_protocols protocols[2];
  struct lws_context *ctx;
  struct lws_vhost *vhost;
  int port;                        /* bound port */
  char url[320];                   /* http://host:port/metrics */
  pthread_t service;
  int service_running;
  atomic_int stop;                 /* tells the service thread to return */
};

rv_err_t rv_metrics_http_parse_listen(const char *addr, char *host, size_t host_cap, int *port, char *errstr,
                                      size_t errstr_size) {
  const char *h = addr, *colon;
  size_t hlen;
  if (*addr == '[') {
    const char *rb = strchr(addr, ']');
    if (!rb || rb[1] != ':')
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "\"%s\": write an IPv6 address as [ADDR]:PORT", addr);
    h = addr + 1;
    hlen = (size_t)(rb - h);
    colon = rb + 1;
  } else {
    colon = strrchr(addr, ':');
    if (!colon) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "\"%s\": expected HOST:PORT", addr);
    hlen = (size_t)(colon - addr);
    if (memchr(addr, ':', hlen))
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "\"%s\": write an IPv6 address as [ADDR]:PORT", addr);
  }
  if (hlen == 0) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "\"%s\": empty host", addr);
  if (hlen >= host_cap) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "\"%s\": host too long", addr);
  const char *ps = colon + 1;
  size_t plen = strlen(ps);
  if (plen == 0 || plen > 5 || strspn(ps, "0123456789") != plen || atoi(ps) > 65535)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "\"%s\": port must be 0..65535", addr);
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = atoi(ps);
  return RV_OK;
}

/* ---- HTTP (service thread, or the destroying thread during lws_context_destroy) ---- */

/* Sends the prepared response's headers and asks for HTTP_WRITEABLE for the body. */
static int send_headers(session_t *ss, struct lws *wsi) {
  unsigned char head[LWS_PRE + 512];
  unsigned char *start = head + LWS_PRE, *p = start, *end = head + sizeof head - 1;
  if (lws_add_http_common_headers(wsi, ss->status, ss->content_type, ss->len, &p, end) ||
      lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL, (const unsigned char *)"no-store", 8, &p,
                                   end) ||
      (ss->allow_get &&
       lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_ALLOW, (const unsigned char *)"GET", 3, &p, end)) ||
      lws_finalize_write_http_header(wsi, start, &p, end))
    return -1;
  lws_callback_on_writable(wsi);
  return 0;
}

/* Prepares the response to a request for path; returns -1 (closing the
 * connection) when out of memory. */
static int request(rv_metrics_http_t *h, session_t *ss, struct lws *wsi, const char *path) {
  int get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
  int head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
  int known = !strcmp(path, "/metrics") || !strcmp(path, "/health");
  rv_buf_t body; /* LWS_PRE bytes of room, then the body */
  rv_buf_init(&body);
  rv_err_t err = rv_buf_reserve(&body, LWS_PRE + 64);
  if (!err) body.len = LWS_PRE;
  ss->content_type = "text/plain; charset=utf-8";
  ss->allow_get = 0;
  if (!known) {
    ss->status = HTTP_STATUS_NOT_FOUND;
    if (!err) err = rv_buf_appendf(&body, "not found: GET /metrics or /health\n");
  } else if (!get) {
    ss->status = HTTP_STATUS_METHOD_NOT_ALLOWED;
    ss->allow_get = 1;
    if (!err) err = rv_buf_appendf(&body, "method not allowed: GET only\n");
  } else if (!strcmp(path, "/metrics")) {
    ss->status = HTTP_STATUS_OK;
    ss->content_type = RV_METRICS_CONTENT_TYPE;
    if (!err) err = rv_metrics_write(h->reg, &body);
  } else {
    ss->status = HTTP_STATUS_OK;
    if (!err) err = rv_buf_appendf(&body, "ok\n");
  }
  if (err) {
    rv_error(LOG, "out of memory answering %s", path);
    rv_buf_close(&body);
    return -1;
  }
  if (head) body.len = LWS_PRE; /* a HEAD response has no body (the 405 still says why in its status) */
  free(ss->buf);
  ss->buf = body.base; /* now owned by the session */
  ss->len = body.len - LWS_PRE;
  /* lws holds back HTTP_WRITEABLE while a request body arrives: answer once it is complete. */
  ss->await_body = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 ||
                   lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;
  return ss->await_body ? 0 : send_headers(ss, wsi);
}

static int write_body(session_t *ss, struct lws *wsi) {
  if (!ss->buf || ss->await_body) return 0;
  size_t len = ss->len;
  int n = lws_write(wsi, ss->buf + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
  free(ss->buf);
  ss->buf = NULL;
  if (n < 0 || (size_t)n < len) return -1;
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  if (!wsi) return 0;
  rv_metrics_http_t *h = lws_context_user(lws_get_context(wsi));
  session_t *ss = user;
  switch (reason) {
  case LWS_CALLBACK_HTTP:
    return request(h, ss, wsi, in ? (const char *)in : "");
  case LWS_CALLBACK_HTTP_WRITEABLE:
    return write_body(ss, wsi);
  case LWS_CALLBACK_HTTP_BODY:
    return 0; /* discarded */
  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    if (!ss->buf || !ss->await_body) return -1;
    ss->await_body = 0;
    return send_headers(ss, wsi);
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
    return 1; /* no WebSocket here */
  case LWS_CALLBACK_CLOSED_HTTP:
  case LWS_CALLBACK_WSI_DESTROY:
    if (ss) {
      free(ss->buf);
      ss->buf = NULL;
    }
    break;
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

static void *service_main(void *arg) {
  rv_metrics_http_t *h = arg;
  while (!atomic_load(&h->stop))
    if (lws_service(h->ctx, 0) < 0) break;
  return NULL;
}

/* ---- lifecycle ---- */

rv_metrics_http_t *rv_metrics_http_new(rv_metrics_t *reg, const char *host, int port, char *errstr,
                                       size_t errstr_size) {
  if (!reg || !host || !host[0] || port < 0 || port > 65535) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "metrics listener: needs a registry, a host and a port");
    return NULL;
  }
  rv_metrics_http_t *h = calloc(1, sizeof *h);
  if (!h) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "metrics listener: out of memory");
    return NULL;
  }
  h->reg = reg;
  atomic_init(&h->stop, 0);
  h->protocols[0] = (struct lws_protocols){.name = "http", .callback = callback,
                                           .per_session_data_size = sizeof(session_t)};
  /* protocols[1] stays zero: the terminator */

  /* lws logging is process-wide; route warnings and errors to rv_log */
  lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_line);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  info.user = h;
  info.gid = -1;
  info.uid = -1;
  h->ctx = lws_create_context(&info);
  if (!h->ctx) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "metrics listener: lws_create_context failed");
    free(h);
    return NULL;
  }
  memset(&info, 0, sizeof info);
  info.port = port;
  info.iface = host;
  info.protocols = h->protocols;
  info.vhost_name = "rv-metrics";
  h->vhost = lws_create_vhost(h->ctx, &info);
  if (!h->vhost) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "metrics listener: cannot listen on %s:%d", host, port);
    lws_context_destroy(h->ctx);
    free(h);
    return NULL;
  }
  h->port = lws_get_vhost_listen_port(h->vhost);
  int v6 = strchr(host, ':') != NULL;
  snprintf(h->url, sizeof h->url, "http://%s%s%s:%d/metrics", v6 ? "[" : "", host, v6 ? "]" : "", h->port);
  if (pthread_create(&h->service, NULL, service_main, h)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "metrics listener: cannot start the service thread");
    lws_context_destroy(h->ctx);
    free(h);
    return NULL;
  }
  h->service_running = 1;
  rv_info(LOG, "listening on %s", h->url);
  return h;
}

int rv_metrics_http_port(const rv_metrics_http_t *h) { return h->port; }

const char *rv_metrics_http_url(const rv_metrics_http_t *h) { return h->url; }

void rv_metrics_http_destroy(rv_metrics_http_t *h) {
  if (!h) return;
  if (h->service_running) {
    atomic_store(&h->stop, 1);
    lws_cancel_service(h->ctx); /* wakes lws_service, which then sees stop */
    pthread_join(h->service, NULL);
  }
  lws_context_destroy(h->ctx); /* closes connections through the callback, on this thread */
  free(h);
}
