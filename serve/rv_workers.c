#include "rv_workers.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

rv_msg_t *rv_msg_new(uint64_t conn, size_t headroom, const char *text, size_t len) {
  rv_msg_t *m = malloc(sizeof *m + headroom + len + 1);
  if (!m) return NULL;
  m->next = NULL;
  m->conn = conn;
  m->len = len;
  m->text = (unsigned char *)(m + 1) + headroom;
  memcpy(m->text, text, len);
  m->text[len] = 0;
  return m;
}

struct rv_completions {
  pthread_mutex_t lock;
  rv_msg_t *head, *tail;
  void (*notify)(void *arg);
  void *arg;
};

rv_completions_t *rv_completions_new(void (*notify)(void *arg), void *arg) {
  rv_completions_t *q = calloc(1, sizeof *q);
  if (!q) return NULL;
  pthread_mutex_init(&q->lock, NULL);
  q->notify = notify;
  q->arg = arg;
  return q;
}

void rv_completions_destroy(rv_completions_t *q) {
  if (!q) return;
  for (rv_msg_t *m = q->head, *next; m; m = next) {
    next = m->next;
    free(m);
  }
  pthread_mutex_destroy(&q->lock);
  free(q);
}

void rv_completions_push(rv_completions_t *q, rv_msg_t *m) {
  m->next = NULL;
  pthread_mutex_lock(&q->lock);
  if (q->tail) q->tail->next = m;
  else q->head = m;
  q->tail = m;
  pthread_mutex_unlock(&q->lock);
  if (q->notify) q->notify(q->arg);
}

rv_msg_t *rv_completions_take(rv_completions_t *q) {
  pthread_mutex_lock(&q->lock);
  rv_msg_t *all = q->head;
  q->head = q->tail = NULL;
  pthread_mutex_unlock(&q->lock);
  return all;
}

struct rv_workers {
  rv_workers_conf_t conf;
  pthread_mutex_t lock;
  pthread_cond_t ready; /* signalled when a job is queued or stopping is set */
  void **ring;          /* queue_max slots */
  size_t head, n;       /* first queued job, jobs queued */
  int stopping;
  pthread_t *threads;
  int started; /* threads running */
};

typedef struct thread_arg {
  rv_workers_t *w;
  int index;
} thread_arg_t;

static void *worker_main(void *p) {
  thread_arg_t a = *(thread_arg_t *)p;
  free(p);
  rv_workers_t *w = a.w;
  void *state = w->conf.thread_init ? w->conf.thread_init(w->conf.arg, a.index) : NULL;
  for (;;) {
    pthread_mutex_lock(&w->lock);
    while (!w->n && !w->stopping) pthread_cond_wait(&w->ready, &w->lock);
    if (w->stopping) {
      pthread_mutex_unlock(&w->lock);
      break;
    }
    void *job = w->ring[w->head];
    w->head = (w->head + 1) % w->conf.queue_max;
    w->n--;
    pthread_mutex_unlock(&w->lock);
    w->conf.run(state, job);
  }
  if (w->conf.thread_fini) w->conf.thread_fini(state);
  return NULL;
}

/* Stops and joins the started threads, drops queued jobs, frees. */
static void shutdown_pool(rv_workers_t *w) {
  pthread_mutex_lock(&w->lock);
  w->stopping = 1;
  pthread_cond_broadcast(&w->ready);
  pthread_mutex_unlock(&w->lock);
  for (int i = 0; i < w->started; i++) pthread_join(w->threads[i], NULL);
  for (; w->n; w->n--) {
    w->conf.drop(w->ring[w->head]);
    w->head = (w->head + 1) % w->conf.queue_max;
  }
  pthread_cond_destroy(&w->ready);
  pthread_mutex_destroy(&w->lock);
  free(w->threads);
  free(w->ring);
  free(w);
}

rv_workers_t *rv_workers_new(const rv_workers_conf_t *conf, char *errstr, size_t errstr_size) {
  if (conf->threads < 1 || conf->queue_max < 1 || !conf->run || !conf->drop) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
            "workers: need threads >= 1, queue_max >= 1, run, drop");
    return NULL;
  }
  rv_workers_t *w = calloc(1, sizeof *w);
  if (!w) goto nomem;
  w->conf = *conf;
  w->ring = calloc(conf->queue_max, sizeof *w->ring);
  w->threads = calloc((size_t)conf->threads, sizeof *w->threads);
  if (!w->ring || !w->threads) {
    free(w->ring);
    free(w->threads);
    free(w);
    goto nomem;
  }
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->ready, NULL);
  for (int i = 0; i < conf->threads; i++) {
    thread_arg_t *a = malloc(sizeof *a);
    int rc = a ? 0 : -1;
    if (a) {
      a->w = w;
      a->index = i;
      rc = pthread_create(&w->threads[i], NULL, worker_main, a);
      if (rc) free(a);
    }
    if (rc) {
      shutdown_pool(w);
      rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "workers: cannot start thread %d", i);
      return NULL;
    }
    w->started++;
  }
  return w;
nomem:
  rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "workers: out of memory");
  return NULL;
}

rv_err_t rv_workers_submit(rv_workers_t *w, void *job) {
  rv_err_t err = RV_OK;
  pthread_mutex_lock(&w->lock);
  if (w->stopping) {
    err = RV_ERR_STATE;
  } else if (w->n == w->conf.queue_max) {
    err = RV_ERR_FULL;
  } else {
    w->ring[(w->head + w->n) % w->conf.queue_max] = job;
    w->n++;
    pthread_cond_signal(&w->ready);
  }
  pthread_mutex_unlock(&w->lock);
  return err;
}

void rv_workers_destroy(rv_workers_t *w) {
  if (w) shutdown_pool(w);
}
