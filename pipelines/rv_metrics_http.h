#ifndef RV_METRICS_HTTP_H
#define RV_METRICS_HTTP_H
/* A small HTTP listener that exposes one metrics registry, for processes that
 * run no serve stage (`ruvector ingest --metrics-listen`):
 *   GET /metrics  200, the registry in the text exposition format 0.0.4
 *   GET /health   200, "ok" (the process is up and its listener answers)
 *   other paths   404
 *   other methods on /metrics or /health  405 with "Allow: GET"
 * The path is matched without its query string. Request bodies are read and
 * discarded. WebSocket upgrades are refused.
 *
 * libwebsockets does the HTTP: one lws context with one service thread, which
 * runs every callback; the registry is read there with rv_metrics_write (safe
 * while other threads update it). */
#include <stddef.h>

#include "rv_err.h"
#include "rv_metrics.h"

typedef struct rv_metrics_http rv_metrics_http_t;

/* Splits "HOST:PORT" or "[IPV6]:PORT" into host (brackets dropped, NUL-ended)
 * and port (0..65535; 0 = any free port). HOST is an IP address or interface
 * name; it may not be empty. Returns 0, or RV_ERR_INVALID with the reason in
 * errstr; host and port are unchanged on failure. */
rv_err_t rv_metrics_http_parse_listen(const char *addr, char *host, size_t host_cap, int *port, char *errstr,
                                      size_t errstr_size);

/* Listens on host:port and starts the service thread. reg is borrowed: it must
 * outlive the listener (destroy this first). The new thread inherits the
 * caller's signal mask: block the signals the process waits for before
 * calling. Returns NULL with the reason in errstr when the address cannot be
 * bound or on out of memory. */
rv_metrics_http_t *rv_metrics_http_new(rv_metrics_t *reg, const char *host, int port, char *errstr,
                                       size_t errstr_size);

/* The bound port (the chosen one when port 0 was asked for). */
int rv_metrics_http_port(const rv_metrics_http_t *h);

/* "http://HOST:PORT/metrics" (an IPv6 host in brackets); valid until destroy. */
const char *rv_metrics_http_url(const rv_metrics_http_t *h);

/* Stops the service thread, closes the listener and any open connection (a
 * response being written is cut short) and frees h. The registry is not
 * touched. Must not be called from the service thread. NULL is a no-op. */
void rv_metrics_http_destroy(rv_metrics_http_t *h);

#endif
