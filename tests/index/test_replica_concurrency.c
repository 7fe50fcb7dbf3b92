/* rv_replica under concurrent searches and applies: every hit a search returns
 * must be a whole, consistent change (vector and metadata from the same
 * version, each id at most once), the applier must not starve behind the
 * readers, and searches must not wait for applies: with the applier held in
 * the middle of an apply (rv__replica_set_apply_hook; the SQ8 rebuild
 * included), searches keep completing. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_replica.h"
#include "rv_time.h"

#define DIM 64
#define N_IDS 200
/* ThreadSanitizer slows every apply (graph insert and repair under the write
 * lock) about fifteenfold; fewer applies there keep the starvation deadline a
 * test of fairness, not of the sanitizer's speed. */
#ifndef N_APPLIES /* -DN_APPLIES=... to time other sizes by hand */
#if defined(__SANITIZE_THREAD__)
#define N_APPLIES 4000
#else
#define N_APPLIES 20000
#endif
#endif
#ifndef N_SEARCHERS
#define N_SEARCHERS 3
#endif
/* SQ8 replicas train once this many vectors are live, then rebuild the graph. */
#if defined(__SANITIZE_THREAD__)
#define N_SQ8_TRAIN 1000
#else
#define N_SQ8_TRAIN 3000
#endif
/* The concurrency test holds every PAUSE_EVERY-th apply mid-way until
 * searches complete; one that cannot complete within PAUSE_DEADLINE_MS fails. */
#ifndef PAUSE_EVERY
#define PAUSE_EVERY 50
#endif
#define PAUSE_DEADLINE_MS 10000
#define DEADLINE_MS 60000

typedef struct shared {
  rv_replica_t *r;
  atomic_bool done;
  atomic_int failures;
  atomic_long searches;
  const char *pause_at; /* the hook's stage to pause at */
  int pause_every;      /* pause at every this many-th call of that stage */
  int hook_calls;       /* the applier's only */
  int pauses;           /* the applier's only: pauses where searches went on */
  char failure[512];    /* first failure, written by whoever sets failures to 1 */
} shared_t;

static void shared_init(shared_t *s, rv_replica_t *r) {
  s->r = r;
  atomic_init(&s->done, false);
  atomic_init(&s->failures, 0);
  atomic_init(&s->searches, 0);
  s->pause_at = NULL;
  s->pause_every = 1;
  s->hook_calls = 0;
  s->pauses = 0;
  s->failure[0] = '\0';
}

/* The vector of id i at version v: both are readable from it, and every
 * component depends on them, so a vector torn between versions (or paired
 * with another version's metadata) scores differently. */
static void expected_vec(int i, int v, float *out) {
  out[0] = (float)i;
  out[1] = (float)v;
  for (int j = 2; j < DIM; j++) out[j] = (float)((i * 31 + v * 7 + j * 13) % 17) - 8.0f;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void fail_once(shared_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void *searcher(void *arg);
static void fail_once(shared_t *s, const char *fmt, ...) {
  if (atomic_fetch_add(&s->failures, 1) != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->failure, sizeof s->failure, fmt, ap);
  va_end(ap);
}

static void *searcher(void *arg) {
  shared_t *s = arg;
  uint64_t seed = (uint64_t)(uintptr_t)&seed;
  uint64_t last_gen = 0;
  float q[DIM], want[DIM];
  while (!atomic_load(&s->done) && !atomic_load(&s->failures)) {
    q[0] = (float)(tu_next(&seed) % N_IDS) + 0.25f;
    q[1] = (float)(tu_next(&seed) % N_APPLIES) + 0.375f; /* never halfway between two versions */
    for (int j = 2; j < DIM; j++) q[j] = tu_float(&seed) * 8;
    int k = 1 + (int)(tu_next(&seed) % 20);
    rv_hit_list_t got = {0};
    rv_err_t err = rv_replica_search(s->r, q, DIM, k, 0, &got);
    if (err) fail_once(s, "search: %s", rv_err_str(err));
    if (got.n > k) fail_once(s, "%d hits for k = %d", got.n, k);
    for (int h = 0; h < got.n; h++) {
      int i = -1, v = -1;
      if (sscanf(got.hits[h].id, "c%d", &i) != 1 || !got.hits[h].metadata ||
          sscanf(got.hits[h].metadata, "{\"v\":%d}", &v) != 1) {
        fail_once(s, "hit '%s' has metadata '%s'", got.hits[h].id,
                  got.hits[h].metadata ? got.hits[h].metadata : "(null)");
        break;
      }
      expected_vec(i, v, want);
      double d = tu_distance(RV_METRIC_L2, q, want, DIM);
      if (fabs(got.hits[h].score - d) > tu_tol(d))
        fail_once(s, "hit '%s' v%d: score %.9g but its vector is at %.9g", got.hits[h].id, v, got.hits[h].score, d);
      if (h > 0 && got.hits[h].score < got.hits[h - 1].score)
        fail_once(s, "hits out of order: %.9g after %.9g", got.hits[h].score, got.hits[h - 1].score);
      for (int e = 0; e < h; e++) /* an old and a new version of one id are never both returned */
        if (!strcmp(got.hits[e].id, got.hits[h].id)) fail_once(s, "id '%s' twice in one result", got.hits[h].id);
    }
    rv_hit_list_close(&got);
    rv_replica_stats_t st;
    rv_replica_stats(s->r, &st);
    if (st.generation < last_gen) fail_once(s, "generation went back from %llu to %llu",
                                            (unsigned long long)last_gen, (unsigned long long)st.generation);
    last_gen = st.generation;
    atomic_fetch_add(&s->searches, 1);
  }
  return NULL;
}

/* The apply hook: at the chosen stage, holds the applier (mid-apply: the
 * change is in the graph, not yet published; or the SQ8 graph is built, not
 * yet swapped in) until the searchers have completed more searches. A
 * replica that held a lock across the apply would keep them waiting, and the
 * deadline would pass. */
static void pause_hook(void *ctx, const char *stage) {
  shared_t *s = ctx;
  if (!s->pause_at || strcmp(stage, s->pause_at) || ++s->hook_calls % s->pause_every) return;
  long want = atomic_load(&s->searches) + 2 * N_SEARCHERS;
  int64_t t0 = rv_mono_ms();
  while (atomic_load(&s->searches) < want && !atomic_load(&s->failures) && !atomic_load(&s->done)) {
    if (rv_mono_ms() - t0 > PAUSE_DEADLINE_MS) {
      fail_once(s, "searches stalled for %d ms while an apply was held at '%s'", PAUSE_DEADLINE_MS, stage);
      return;
    }
    sleep_ms(1);
  }
  if (atomic_load(&s->searches) >= want) s->pauses++;
}

static void test_searches_see_whole_changes(void **state) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "conc");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  char errstr[256];
  shared_t s;
  shared_init(&s, rv_replica_new(&conf, errstr, sizeof errstr));
  assert_non_null(s.r);
  s.pause_at = "applied";
  s.pause_every = PAUSE_EVERY;
  rv__replica_set_apply_hook(s.r, pause_hook, &s);

  pthread_t th[N_SEARCHERS];
  for (int t = 0; t < N_SEARCHERS; t++) assert_int_equal(pthread_create(&th[t], NULL, searcher, &s), 0);

  /* This thread is the applier. The model: the live flag and last version per id. */
  int live[N_IDS] = {0}, ver[N_IDS] = {0};
  uint64_t seed = 1234, generation = 0;
  int64_t start = rv_mono_ms();
  int applied = 0;
  for (; applied < N_APPLIES && !atomic_load(&s.failures); applied++) {
    if (rv_mono_ms() - start > DEADLINE_MS) break;
    int i = (int)(tu_next(&seed) % N_IDS);
    char id[16];
    snprintf(id, sizeof id, "c%03d", i);
    char meta[32];
    snprintf(meta, sizeof meta, "{\"v\":%d}", applied);
    float vec[DIM];
    expected_vec(i, applied, vec);
    rv_change_t c;
    rv_change_init(&c);
    c.id = id;
    c.src_partition = 0;
    c.src_offset = applied;
    int del = tu_next(&seed) % 5 == 0;
    c.op = del ? RV_OP_DELETE : RV_OP_UPSERT;
    c.vector = del ? NULL : vec;
    c.dim = del ? 0 : DIM;
    c.attributes = del ? NULL : meta;
    assert_int_equal(rv_replica_apply(s.r, &c), RV_OK);
    if (del ? live[i] : 1) generation++;
    live[i] = !del;
    if (!del) ver[i] = applied;
    if (applied % 7 == 3) { /* a stale re-delivery now and then: must change nothing */
      c.src_offset = applied - 1;
      assert_int_equal(rv_replica_apply(s.r, &c), RV_OK);
    }
  }
  int64_t took = rv_mono_ms() - start;
  atomic_store(&s.done, true);
  for (int t = 0; t < N_SEARCHERS; t++) pthread_join(th[t], NULL);
  if (atomic_load(&s.failures)) fail_msg("%d failures; first: %s", atomic_load(&s.failures), s.failure);
  if (applied != N_APPLIES) fail_msg("applier starved: %d of %d applies in %lld ms", applied, N_APPLIES, (long long)took);
  long searches = atomic_load(&s.searches);
  print_message("%d applies and %ld searches in %lld ms; %d applies held mid-way while searches went on\n", applied,
                searches, (long long)took, s.pauses);
  assert_true(searches > 0);
  /* Every pause saw searches complete (a stalled one failed above); the
   * stale re-deliveries do not reach the hook. */
  assert_true(s.pauses >= N_APPLIES / PAUSE_EVERY / 2);

  /* The final state is exactly the model's. */
  uint64_t want_count = 0;
  for (int i = 0; i < N_IDS; i++) want_count += (uint64_t)live[i];
  rv_replica_stats_t st;
  rv_replica_stats(s.r, &st);
  assert_int_equal(st.count, want_count);
  assert_int_equal(st.generation, generation);
  assert_int_equal(st.applied, N_APPLIES + (N_APPLIES + 3) / 7);
  for (int i = 0; i < N_IDS; i++) {
    if (!live[i]) continue;
    float vec[DIM];
    expected_vec(i, ver[i], vec);
    rv_hit_list_t got = {0};
    assert_int_equal(rv_replica_search(s.r, vec, DIM, 1, 0, &got), RV_OK);
    char id[16], meta[32];
    snprintf(id, sizeof id, "c%03d", i);
    snprintf(meta, sizeof meta, "{\"v\":%d}", ver[i]);
    assert_string_equal(got.hits[0].id, id);
    assert_string_equal(got.hits[0].metadata, meta);
    assert_near(got.hits[0].score, 0.0, 0.0);
    rv_hit_list_close(&got);
  }
  rv_replica_destroy(s.r);
}

/* The change that brings an SQ8 replica to sq8_train live vectors trains the
 * quantizer and rebuilds the graph: the longest apply there is. Searches go
 * on during it (on the float graph), every hit stays whole, and afterwards
 * every id is found in the SQ8 graph with its metadata. */
static void test_searches_continue_during_sq8_rebuild(void **state) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "conc-sq8");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.storage = RV_HNSW_SQ8;
  conf.sq8_train = N_SQ8_TRAIN;
  char errstr[256];
  shared_t s;
  shared_init(&s, rv_replica_new(&conf, errstr, sizeof errstr));
  assert_non_null(s.r);
  s.pause_at = "rebuilt";
  rv__replica_set_apply_hook(s.r, pause_hook, &s);
  /* Id c<n> at version n, for n = 0 .. N_SQ8_TRAIN - 1; the last one trains. */
  char id[16], meta[32];
  float vec[DIM];
  rv_change_t c;
  long before = 0;
  int64_t took = 0;
  pthread_t th[N_SEARCHERS];
  for (int n = 0; n < N_SQ8_TRAIN; n++) {
    snprintf(id, sizeof id, "c%03d", n);
    snprintf(meta, sizeof meta, "{\"v\":%d}", n);
    expected_vec(n, n, vec);
    rv_change_init(&c);
    c.id = id;
    c.src_offset = n;
    c.op = RV_OP_UPSERT;
    c.vector = vec;
    c.dim = DIM;
    c.attributes = meta;
    if (n < N_SQ8_TRAIN - 1) {
      assert_int_equal(rv_replica_apply(s.r, &c), RV_OK);
      continue;
    }
    rv_replica_stats_t st;
    rv_replica_stats(s.r, &st);
    assert_int_equal(st.quantized, 0);
    for (int t = 0; t < N_SEARCHERS; t++) assert_int_equal(pthread_create(&th[t], NULL, searcher, &s), 0);
    while (atomic_load(&s.searches) < 10 * N_SEARCHERS) sleep_ms(1); /* the searchers are running */
    before = atomic_load(&s.searches);
    int64_t t0 = rv_mono_ms();
    assert_int_equal(rv_replica_apply(s.r, &c), RV_OK); /* the sq8_train-th live vector: train and rebuild */
    took = rv_mono_ms() - t0;
  }
  long during = atomic_load(&s.searches) - before;
  sleep_ms(50); /* a few searches on the SQ8 graph too */
  atomic_store(&s.done, true);
  for (int t = 0; t < N_SEARCHERS; t++) pthread_join(th[t], NULL);
  if (atomic_load(&s.failures)) fail_msg("%d failures; first: %s", atomic_load(&s.failures), s.failure);
  print_message("SQ8 train and rebuild of %d vectors: %lld ms, %ld searches meanwhile\n", N_SQ8_TRAIN,
                (long long)took, during);
  rv_replica_stats_t st;
  rv_replica_stats(s.r, &st);
  assert_int_equal(st.quantized, 1);
  assert_int_equal(st.count, N_SQ8_TRAIN);
  assert_int_equal(s.pauses, 1); /* searches went on with the rebuilt graph waiting to be swapped in */

  /* Every id, found in the rebuilt graph with its own metadata. */
  for (int n = 0; n < N_SQ8_TRAIN; n++) {
    expected_vec(n, n, vec);
    rv_hit_list_t got = {0};
    assert_int_equal(rv_replica_search(s.r, vec, DIM, 1, 0, &got), RV_OK);
    assert_int_equal(got.n, 1);
    snprintf(id, sizeof id, "c%03d", n);
    snprintf(meta, sizeof meta, "{\"v\":%d}", n);
    assert_string_equal(got.hits[0].id, id);
    assert_string_equal(got.hits[0].metadata, meta);
    rv_hit_list_close(&got);
  }
  rv_replica_destroy(s.r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_searches_see_whole_changes),
      cmocka_unit_test(test_searches_continue_during_sq8_rebuild),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
