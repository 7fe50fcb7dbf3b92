/* rv_hnsw under concurrency (also run under -DRV_SANITIZE=thread):
 *  - 4 search threads while 1 writer upserts new ids (reusing deleted slots),
 *    replaces vectors of live ids and deletes ids, for a bounded number of
 *    operations. What is guaranteed and asserted for every search result:
 *    the internal id is below the slot bound, no slot appears twice, scores
 *    are finite and sorted, the result is never a (slot, version) whose
 *    vector was deleted or replaced before the search started, and when the
 *    slot still holds that version its score is the exact distance to the
 *    vector stored there (no half-written vector was scored).
 *  - a parallel build on 2 threads keeps every vector and finds them.
 * The writer logs each retired (slot, version) with a sequence number that it
 * publishes (release) after the delete/replace call has returned; a searcher
 * reads the sequence (acquire) before it starts. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_hnsw.h"

#define DIM 16
#define N0 2000
#define OPS 1500
#define SEARCHERS 4
#define K 10

typedef struct retired {
  uint32_t slot, version;
} retired_t;

typedef struct shared {
  rv_hnsw_t *h;
  float *vecs;   /* vectors of every id the writer uses: id i at vecs[i * DIM] */
  int *live;     /* writer's own view */
  int n_ids;
  retired_t log[2 * OPS + 8];
  _Atomic int n_log; /* published prefix of log */
  _Atomic int done;
  _Atomic long searches;
  _Atomic int failures;
  char why[256];
  pthread_mutex_t why_mu;
} shared_t;

static void fail_once(shared_t *s, const char *msg, uint32_t a, uint32_t b) {
  if (atomic_fetch_add(&s->failures, 1) == 0) {
    pthread_mutex_lock(&s->why_mu);
    snprintf(s->why, sizeof s->why, "%s (%u, %u)", msg, a, b);
    pthread_mutex_unlock(&s->why_mu);
  }
}

static void retire(shared_t *s, int id_index) {
  char id[24];
  snprintf(id, sizeof id, "id%d", id_index);
  uint32_t slot;
  assert_int_equal(rv_hnsw_internal_id(s->h, id, &slot), RV_OK);
  int n = atomic_load_explicit(&s->n_log, memory_order_relaxed);
  s->log[n] = (retired_t){slot, rv_hnsw_version(s->h, slot)};
}

static void *writer(void *arg) {
  shared_t *s = arg;
  uint64_t seed = 99;
  char id[24];
  for (int op = 0; op < OPS; op++) {
    int kind = (int)(tu_next(&seed) % 3);
    int i = (int)(tu_next(&seed) % (uint64_t)s->n_ids);
    while (!s->live[i]) i = (i + 1) % s->n_ids;
    snprintf(id, sizeof id, "id%d", i);
    int n = atomic_load_explicit(&s->n_log, memory_order_relaxed);
    if (kind == 0) { /* delete */
      retire(s, i);
      assert_int_equal(rv_hnsw_delete(s->h, id), RV_OK);
      s->live[i] = 0;
      atomic_store_explicit(&s->n_log, n + 1, memory_order_release);
    } else if (kind == 1) { /* replace the vector of a live id */
      retire(s, i);
      float v[DIM];
      tu_fill(&seed, v, DIM);
      memcpy(s->vecs + (size_t)i * DIM, v, sizeof v); /* searchers never read vecs of ids they may race with */
      assert_int_equal(rv_hnsw_upsert(s->h, id, v, DIM, NULL), RV_OK);
      atomic_store_explicit(&s->n_log, n + 1, memory_order_release);
    } else { /* a new id, into a free slot when there is one */
      int j = s->n_ids++;
      float *v = s->vecs + (size_t)j * DIM;
      tu_fill(&seed, v, DIM);
      snprintf(id, sizeof id, "id%d", j);
      assert_int_equal(rv_hnsw_upsert(s->h, id, v, DIM, NULL), RV_OK);
      s->live[j] = 1;
    }
  }
  atomic_store(&s->done, 1);
  return NULL;
}

static void *searcher(void *arg) {
  shared_t *s = arg;
  uint64_t seed = (uint64_t)pthread_self();
  float q[DIM], v[DIM];
  rv_hnsw_result_t res[K];
  while (!atomic_load(&s->done) || atomic_load(&s->searches) < 200) {
    int before = atomic_load_explicit(&s->n_log, memory_order_acquire);
    tu_fill(&seed, q, DIM);
    int nres = 0;
    if (rv_hnsw_search(s->h, q, DIM, K, 32, NULL, res, &nres) != RV_OK) fail_once(s, "search failed", 0, 0);
    uint32_t bound = rv_hnsw_id_bound(s->h);
    for (int i = 0; i < nres; i++) {
      if (res[i].id >= bound) fail_once(s, "id beyond the slot bound", res[i].id, bound);
      if (!isfinite(res[i].score)) fail_once(s, "non-finite score", res[i].id, 0);
      if (i && res[i - 1].score > res[i].score) fail_once(s, "results out of order", res[i].id, 0);
      for (int j = 0; j < i; j++)
        if (res[j].id == res[i].id) fail_once(s, "slot returned twice", res[i].id, 0);
      for (int t = 0; t < before; t++)
        if (s->log[t].slot == res[i].id && s->log[t].version == res[i].version)
          fail_once(s, "returned a vector retired before the search started", res[i].id, res[i].version);
      /* the score is the distance to the vector the slot holds at that version */
      rv_hnsw_read_lock(s->h);
      const float *x = rv_hnsw_vector(s->h, res[i].id);
      int same = rv_hnsw_version(s->h, res[i].id) == res[i].version && x;
      if (same) memcpy(v, x, sizeof v);
      rv_hnsw_read_unlock(s->h);
      if (same) {
        double d = tu_distance(RV_METRIC_L2, q, v, DIM);
        if (fabs(d - res[i].score) > tu_tol(d)) fail_once(s, "score does not match the slot's vector", res[i].id, 0);
      }
    }
    if (nres < K) fail_once(s, "fewer than k results", (uint32_t)nres, K);
    atomic_fetch_add(&s->searches, 1);
  }
  return NULL;
}

static void test_search_while_writing(void **state) {
  (void)state;
  shared_t *s = calloc(1, sizeof *s);
  pthread_mutex_init(&s->why_mu, NULL);
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = DIM;
  c.initial_capacity = 256; /* the writer also grows the index while searches run */
  char err[256];
  s->h = rv_hnsw_new(&c, err, sizeof err);
  assert_non_null(s->h);
  int max_ids = N0 + OPS;
  s->vecs = malloc((size_t)max_ids * DIM * sizeof(float));
  s->live = calloc((size_t)max_ids, sizeof(int));
  uint64_t seed = 5;
  for (int i = 0; i < N0; i++) {
    char id[24];
    snprintf(id, sizeof id, "id%d", i);
    tu_fill(&seed, s->vecs + (size_t)i * DIM, DIM);
    assert_int_equal(rv_hnsw_upsert(s->h, id, s->vecs + (size_t)i * DIM, DIM, NULL), RV_OK);
    s->live[i] = 1;
  }
  s->n_ids = N0;
  pthread_t w, r[SEARCHERS];
  for (int i = 0; i < SEARCHERS; i++) assert_int_equal(pthread_create(&r[i], NULL, searcher, s), 0);
  assert_int_equal(pthread_create(&w, NULL, writer, s), 0);
  pthread_join(w, NULL);
  for (int i = 0; i < SEARCHERS; i++) pthread_join(r[i], NULL);
  print_message("%ld searches during %d writes, %d retired vectors\n", atomic_load(&s->searches), OPS,
                atomic_load(&s->n_log));
  if (atomic_load(&s->failures)) fail_msg("%d failures, first: %s", atomic_load(&s->failures), s->why);
  /* the final index matches the writer's view */
  int live = 0;
  for (int i = 0; i < s->n_ids; i++) {
    char id[24];
    uint32_t iid;
    snprintf(id, sizeof id, "id%d", i);
    rv_err_t e = rv_hnsw_internal_id(s->h, id, &iid);
    assert_int_equal(e, s->live[i] ? RV_OK : RV_ERR_NOT_FOUND);
    if (s->live[i]) {
      float v[DIM];
      assert_int_equal(rv_hnsw_get_vector(s->h, iid, v), RV_OK);
      assert_memory_equal(v, s->vecs + (size_t)i * DIM, sizeof v);
      live++;
    }
  }
  assert_int_equal(rv_hnsw_count(s->h), live);
  rv_hnsw_destroy(s->h);
  free(s->vecs);
  free(s->live);
  pthread_mutex_destroy(&s->why_mu);
  free(s);
}

/* ---- parallel build ----------------------------------------------------------- */

typedef struct build {
  rv_hnsw_t *h;
  const float *v;
  int from, to;
} build_t;

static void *build_part(void *arg) {
  build_t *b = arg;
  for (int i = b->from; i < b->to; i++) {
    char id[24];
    snprintf(id, sizeof id, "p%d", i);
    if (rv_hnsw_upsert(b->h, id, b->v + (size_t)i * DIM, DIM, NULL)) return (void *)1;
  }
  return NULL;
}

static void test_parallel_build(void **state) {
  (void)state;
  const int n = 4000;
  float *v = malloc((size_t)n * DIM * sizeof(float));
  uint64_t seed = 8;
  tu_fill(&seed, v, n * DIM);
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = DIM;
  c.initial_capacity = 100;
  char err[256];
  rv_hnsw_t *h = rv_hnsw_new(&c, err, sizeof err);
  assert_non_null(h);
  build_t parts[2] = {{h, v, 0, n / 2}, {h, v, n / 2, n}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, build_part, &parts[i]), 0);
  for (int i = 0; i < 2; i++) {
    void *ret;
    pthread_join(t[i], &ret);
    assert_null(ret);
  }
  assert_int_equal(rv_hnsw_count(h), n);
  int found = 0;
  for (int i = 0; i < n; i++) {
    rv_hnsw_result_t r[1];
    int nr;
    assert_int_equal(rv_hnsw_search(h, v + (size_t)i * DIM, DIM, 1, 64, NULL, r, &nr), RV_OK);
    char id[24], want[24];
    snprintf(want, sizeof want, "p%d", i);
    if (nr == 1 && !rv_hnsw_result_external_id(h, &r[0], id, sizeof id) && !strcmp(id, want)) found++;
  }
  print_message("parallel build: %d of %d vectors are their own nearest neighbour\n", found, n);
  assert_true(found >= n * 99 / 100);
  rv_hnsw_destroy(h);
  free(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_search_while_writing),
                                     cmocka_unit_test(test_parallel_build)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
