#ifndef RV_HTTP_PROBE_H
#define RV_HTTP_PROBE_H
/* A minimal blocking HTTP/1.1 client for health probes: one GET, the status
 * line read, the connection closed. For asking a stage process's /ready or
 * /health, not for reading bodies. */

/* GETs http://host:port<path> (host: an IP address or a name; path starts
 * with '/'). Returns the status code of the reply (e.g. 200, 503), or -1
 * when the host cannot be resolved or connected to, or no status line
 * arrived within timeout_ms (the whole exchange is bounded by it).
 * Thread: any; blocks the caller up to timeout_ms (plus name resolution for a
 * name that is not an address). */
int rv_http_probe(const char *host, int port, const char *path, int timeout_ms);

#endif
