/* rv_workers: the bounded job queue ("overloaded"), shutdown, and the
 * completion queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "rv_workers.h"

typedef struct gate {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int open;        /* jobs may finish */
  int running;     /* jobs inside run() */
  atomic_int ran;  /* jobs run to the end */
  atomic_int dropped;
} gate_t;

static gate_t g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};

static void run(void *state, void *job) {
  (void)state;
  pthread_mutex_lock(&g.lock);
  g.running++;
  pthread_cond_broadcast(&g.cond);
  while (!g.open) pthread_cond_wait(&g.cond, &g.lock);
  pthread_mutex_unlock(&g.lock);
  free(job);
  atomic_fetch_add(&g.ran, 1);
}

static void drop(void *job) {
  free(job);
  atomic_fetch_add(&g.dropped, 1);
}

static void test_queue_bound_and_shutdown(void **state) {
  (void)state;
  rv_workers_conf_t conf = {.threads = 1, .queue_max = 3, .run = run, .drop = drop};
  char err[128];
  rv_workers_t *w = rv_workers_new(&conf, err, sizeof err);
  assert_non_null(w);
  assert_int_equal(rv_workers_submit(w, malloc(1)), RV_OK);
  /* wait until the only thread holds that job, so the queue is empty */
  pthread_mutex_lock(&g.lock);
  while (g.running < 1) pthread_cond_wait(&g.cond, &g.lock);
  pthread_mutex_unlock(&g.lock);
  for (int i = 0; i < 3; i++) assert_int_equal(rv_workers_submit(w, malloc(1)), RV_OK);
  void *extra = malloc(1);
  assert_int_equal(rv_workers_submit(w, extra), RV_ERR_FULL); /* the caller keeps it */
  free(extra);
  /* let the running job end; destroy must drop what it has not started */
  pthread_mutex_lock(&g.lock);
  g.open = 1;
  pthread_cond_broadcast(&g.cond);
  pthread_mutex_unlock(&g.lock);
  rv_workers_destroy(w);
  assert_int_equal(atomic_load(&g.ran) + atomic_load(&g.dropped), 4);
  assert_true(atomic_load(&g.ran) >= 1);
  rv_workers_destroy(NULL);

  conf.threads = 0;
  assert_null(rv_workers_new(&conf, err, sizeof err));
}

static atomic_int notified;
static void notify(void *arg) {
  (void)arg;
  atomic_fetch_add(&notified, 1);
}

static void test_completions(void **state) {
  (void)state;
  rv_completions_t *q = rv_completions_new(notify, NULL);
  assert_null(rv_completions_take(q));
  for (uint64_t i = 1; i <= 3; i++) {
    char t[8] = {(char)('a' + i - 1), 0};
    rv_msg_t *m = rv_msg_new(i, 16, t, 1);
    assert_non_null(m);
    assert_true(m->text == (unsigned char *)(m + 1) + 16); /* headroom in front */
    assert_int_equal(m->text[1], 0);
    rv_completions_push(q, m);
  }
  assert_int_equal(atomic_load(&notified), 3);
  rv_msg_t *all = rv_completions_take(q);
  uint64_t want = 1;
  for (rv_msg_t *m = all, *next; m; m = next, want++) { /* oldest first */
    next = m->next;
    assert_int_equal(m->conn, want);
    assert_int_equal(m->text[0], 'a' + want - 1);
    free(m);
  }
  assert_int_equal(want, 4);
  assert_null(rv_completions_take(q));
  rv_completions_push(q, rv_msg_new(9, 0, "x", 1)); /* freed by destroy */
  rv_completions_destroy(q);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_bound_and_shutdown),
      cmocka_unit_test(test_completions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
