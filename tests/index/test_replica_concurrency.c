/* rv_replica under concurrent searches and applies: every hit a search returns
 * must be a whole, consistent change (vector and metadata from the same
 * version), and the applier must not starve behind the readers. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_replica.h"
#include "rv_time.h"

#define DIM 64
#define N_IDS 200
/* ThreadSanitizer slows every apply (graph insert and repair under the write
 * lock) about fifteenfold; fewer applies there keep the starvation deadline a
 * test of fairness, not of the sanitizer's speed. */
#if defined(__SANITIZE_THREAD__)
#define N_APPLIES 4000
#else
#define N_APPLIES 20000
#endif
#define N_SEARCHERS 3
#define DEADLINE_MS 60000

typedef struct shared {
  rv_replica_t *r;
  atomic_bool done;
  atomic_int failures;
  atomic_long searches;
  char failure[512]; /* first failure, written by whoever sets failures to 1 */
} shared_t;

/* The vector of id i at version v: both are readable from it, and every
 * component depends on them, so a vector torn between versions (or paired
 * with another version's metadata) scores differently. */
static void expected_vec(int i, int v, float *out) {
  out[0] = (float)i;
  out[1] = (float)v;
  for (int j = 2; j < DIM; j++) out[j] = (float)((i * 31 + v * 7 + j * 13) % 17) - 8.0f;
}

static void fail_once(shared_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
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

static void test_searches_see_whole_changes(void **state) {
  rv_replica_conf_t conf = {0};
  snprintf(conf.collection.name, sizeof conf.collection.name, "conc");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  char errstr[256];
  shared_t s = {.r = rv_replica_new(&conf, errstr, sizeof errstr)};
  assert_non_null(s.r);
  atomic_init(&s.done, false);
  atomic_init(&s.failures, 0);
  atomic_init(&s.searches, 0);

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
  print_message("%d applies and %ld searches in %lld ms\n", applied, atomic_load(&s.searches), (long long)took);
  assert_true(atomic_load(&s.searches) > 0);

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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_searches_see_whole_changes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
