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

static void client_call_done(void *arg, int tag, json_t *reply, const char *why) {
  (void)tag;
  client_call_t *c = arg;
  pthread_mutex_lock(&c->lock);
  c->reply = reply ? json_incref(reply) : NULL;
  snprintf(c->why, sizeof c->why, "%s", why ? why : "");
  c->done = 1;
  pthread_cond_signal(&c->cond);
  pthread_mutex_unlock(&c->lock);
}

/* Sends body (a JSON object without "id") to endpoint ep of rm and waits up
 * to timeout_ms for the reply. Returns it (caller decrefs) or NULL with why. */
static json_t *client_request(rv_remote_t *rm, int ep, const char *body, int timeout_ms, char *why, size_t why_size) {
  client_call_t c = {.done = 0};
  pthread_mutex_init(&c.lock, NULL);
  pthread_cond_init(&c.cond, NULL);
  rv_err_t err = rv_remote_send(rm, ep, body, strlen(body), rv_mono_us() + (int64_t)timeout_ms * 1000,
                                client_call_done, &c, 0);
  if (err) {
    snprintf(why, why_size, "send failed: %d", (int)err);
    return NULL;
  }
  pthread_mutex_lock(&c.lock);
  while (!c.done) pthread_cond_wait(&c.cond, &c.lock); /* the deadline always reports */
  pthread_mutex_unlock(&c.lock);
  snprintf(why, why_size, "%s", c.why);
  pthread_cond_destroy(&c.cond);
  pthread_mutex_destroy(&c.lock);
  return c.reply;
}

#endif
