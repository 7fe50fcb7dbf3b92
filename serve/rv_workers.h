#ifndef RV_WORKERS_H
#define RV_WORKERS_H
/* Work off the network thread and back: a fixed pool of threads fed by a
 * bounded job queue, and a completion queue through which the threads hand
 * finished replies (rv_msg_t) back to the network thread, keyed by a
 * connection serial number rather than a connection pointer (the connection
 * may be gone by the time its reply is ready). */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

/* One outgoing message: text with `headroom` writable bytes in front of it
 * (libwebsockets needs LWS_PRE bytes there to build the frame header). */
typedef struct rv_msg {
  struct rv_msg *next;  /* queue link, owned by whichever queue holds the message */
  uint64_t conn;        /* serial number of the destination connection */
  size_t len;           /* bytes of text (a NUL follows them) */
  unsigned char *text;  /* points headroom bytes into the same allocation */
} rv_msg_t;

/* A copy of text[0..len) with headroom in front. One free() releases it.
 * NULL when memory runs out. */
rv_msg_t *rv_msg_new(uint64_t conn, size_t headroom, const char *text, size_t len);

/* A multi-producer, single-consumer list of finished messages. */
typedef struct rv_completions rv_completions_t;

/* notify(arg) is called, outside the queue's lock, after every push: it wakes
 * the consumer (lws_cancel_service). It must be safe from any thread. */
rv_completions_t *rv_completions_new(void (*notify)(void *arg), void *arg);
/* Frees the queue and every message still in it. NULL is a no-op. */
void rv_completions_destroy(rv_completions_t *q);
/* Appends m (ownership passes to the queue). Thread: any. */
void rv_completions_push(rv_completions_t *q, rv_msg_t *m);
/* Detaches and returns every queued message, oldest first (linked by next),
 * or NULL. The caller owns them. Thread: the consumer. */
rv_msg_t *rv_completions_take(rv_completions_t *q);

/* A pool of threads that run jobs (opaque pointers). */
typedef struct rv_workers rv_workers_t;

typedef struct rv_workers_conf {
  int threads;      /* >= 1 */
  size_t queue_max; /* jobs waiting (not counting running ones), >= 1 */
  /* Per-thread state, made on the thread before it takes jobs; may return NULL. */
  void *(*thread_init)(void *arg, int index);
  void (*thread_fini)(void *state); /* may be NULL */
  /* Runs one job on a pool thread; takes ownership of it. */
  void (*run)(void *state, void *job);
  /* Frees a job that was queued but never run (at destroy). */
  void (*drop)(void *job);
  void *arg; /* passed to thread_init */
} rv_workers_conf_t;

/* Starts the threads. conf is copied. NULL with errstr set on bad conf or
 * when a thread cannot be started (none is left running then). */
rv_workers_t *rv_workers_new(const rv_workers_conf_t *conf, char *errstr, size_t errstr_size);

/* Queues job. RV_ERR_FULL when queue_max jobs are already waiting (retriable);
 * on failure the caller still owns job. Thread: any. */
rv_err_t rv_workers_submit(rv_workers_t *w, void *job);

/* Stops taking jobs, drops the queued ones, waits for running jobs to finish,
 * joins the threads, frees. NULL is a no-op. */
void rv_workers_destroy(rv_workers_t *w);

#endif
