/* A blocking rv.v1 client for serve tests, over serve's own remote client
 * (rv_remote.h): one request at a time, the reply as parsed JSON. */
#ifndef RV_CLIENT_FIXTURE_H
#define RV_CLIENT_FIXTURE_H
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "rv_remote.h"
#include "rv_time.h"

typedef struct client_call {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int done;
  json_t *reply; /* owned by the caller once done */
  char why[512];
} client_call_t;

static inline void client_call_done(void *arg, int tag, json_t *reply, const char *why) {
  (void)tag;
  client_call_t *c = arg;
  pthread_mutex_lock(&c->lock);
  c->reply = reply ? json_incref(reply) : NULL;
  snprintf(c->why, sizeof c->why, "%s", why ? why : "");
  c->done = 1;
  pthread_cond_signal(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

/* Starts a request: body (a JSON object without "id") to endpoint ep of rm,
 * answered (or failed) within timeout_ms. 0, or -1 if it could not be sent. */
static inline int client_send(client_call_t *c, rv_remote_t *rm, int ep, const char *body, int timeout_ms) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->cond, NULL);
  rv_err_t err = rv_remote_send(rm, ep, body, strlen(body), rv_mono_us() + (int64_t)timeout_ms * 1000,
                                client_call_done, c, 0);
  if (err) { /* otherwise the reply may already be in: c belongs to the callback */
    snprintf(c->why, sizeof c->why, "send failed: %d", (int)err);
    c->done = 1;
  }
  return err ? -1 : 0;
}

/* 1 if c has been answered (or failed). */
static inline int client_done(client_call_t *c) {
  pthread_mutex_lock(&c->lock);
  int d = c->done;
  pthread_mutex_unlock(&c->lock);
  return d;
}

/* Waits for c (its deadline always reports) and returns the reply (caller
 * decrefs) or NULL with why. */
static inline json_t *client_wait(client_call_t *c, char *why, size_t why_size) {
  pthread_mutex_lock(&c->lock);
  while (!c->done) pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  snprintf(why, why_size, "%s", c->why);
  pthread_cond_destroy(&c->cond);
  pthread_mutex_destroy(&c->lock);
  return c->reply;
}

/* client_send then client_wait. */
static inline json_t *client_request(rv_remote_t *rm, int ep, const char *body, int timeout_ms, char *why, size_t why_size) {
  client_call_t c;
  client_send(&c, rm, ep, body, timeout_ms);
  return client_wait(&c, why, why_size);
}

#endif
