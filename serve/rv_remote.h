#ifndef RV_REMOTE_H
#define RV_REMOTE_H
/* The client side of rv.v1, for fanning searches out to remote shards: a
 * libwebsockets client context with its own service thread, holding one
 * WebSocket connection per remote endpoint (opened on first use, reopened
 * after a failure), over which requests are pipelined and matched to their
 * replies by an id this module assigns. Nothing here blocks the caller. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

typedef struct rv_remote rv_remote_t;

#define RV_REMOTE_URL_MAX 256

/* Called exactly once per accepted rv_remote_send, on the client thread (or
 * the destroying thread): reply is the remote's reply object (borrowed for
 * the call), or NULL with why saying what failed (connection refused or
 * lost, deadline passed, shutting down). */
typedef void (*rv_remote_done_fn)(void *arg, int tag, json_t *reply, const char *why);

/* Checks each of urls[0..n) ("ws://host:port[/path]"; host a name, an IPv4
 * address or a bracketed IPv6 one) and starts the client thread. No
 * connection is made yet. NULL with errstr set on a bad URL (which one and
 * why), n < 1, or no memory. */
rv_remote_t *rv_remote_new(const char *const *urls, int n, char *errstr, size_t errstr_size);

/* The index of url among those given to rv_remote_new, or -1. Thread: any. */
int rv_remote_find(const rv_remote_t *rm, const char *url);

/* Sends body, a JSON object text without an "id" member (copied; the module
 * adds its own id), to endpoint ep. fn(arg, tag, ..) reports the reply, or a
 * failure at the latest at deadline_us (rv_mono_us clock). RV_ERR_FULL when
 * too many requests are outstanding, RV_ERR_STATE when stopping, RV_ERR_NOMEM:
 * fn is then never called. Thread: any. */
rv_err_t rv_remote_send(rv_remote_t *rm, int ep, const char *body, size_t len, int64_t deadline_us,
                        rv_remote_done_fn fn, void *arg, int tag);

/* Stops the thread, closes the connections and reports every outstanding
 * request as failed ("shutting down"). NULL is a no-op. */
void rv_remote_destroy(rv_remote_t *rm);

#endif
