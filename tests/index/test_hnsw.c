/* rv_hnsw: exact results on small sets (every metric and storage mode),
 * upsert/delete/ids, growth, argument checks, recall, filters, batch search,
 * serialization and its validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_hnsw.h"

/* ---- a set of vectors with ids, the brute-force reference over its live part ---- */

typedef struct set {
  int n, dim;
  float *v;     /* n * dim */
  char (*id)[24];
  int *live;
} set_t;

static set_t set_new(int n, int dim, uint64_t seed, int clustered) {
  set_t s = {n, dim, malloc((size_t)n * dim * sizeof(float)), malloc((size_t)n * 24), calloc((size_t)n, sizeof(int))};
  assert_non_null(s.v);
  float *centers = malloc(32 * (size_t)dim * sizeof(float));
  tu_fill(&seed, centers, 32 * dim);
  for (int i = 0; i < n; i++) {
    float *x = s.v + (size_t)i * dim;
    tu_fill(&seed, x, dim);
    if (clustered) {
      const float *c = centers + (tu_next(&seed) % 32) * (size_t)dim;
      for (int j = 0; j < dim; j++) x[j] = c[j] + 0.15f * x[j];
    }
    snprintf(s.id[i], 24, "v%d", i);
  }
  free(centers);
  return s;
}

/* Takes the last nq vectors off s as queries from the same distribution (caller frees). */
static float *split_queries(set_t *s, int nq) {
  float *q = malloc((size_t)nq * s->dim * sizeof(float));
  s->n -= nq;
  memcpy(q, s->v + (size_t)s->n * s->dim, (size_t)nq * s->dim * sizeof(float));
  return q;
}

static void set_free(set_t *s) {
  free(s->v);
  free(s->id);
  free(s->live);
}

static int set_find(const set_t *s, const char *id) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->id[i], id)) return i;
  return -1;
}

static rv_hnsw_t *make(rv_metric_t m, rv_hnsw_storage_t st, int dim, const set_t *train) {
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = dim;
  c.metric = m;
  c.storage = st;
  c.initial_capacity = 64;
  if (st == RV_HNSW_PQ) c.pq_m = dim / 4;
  char err[256];
  rv_hnsw_t *h = rv_hnsw_new(&c, err, sizeof err);
  if (!h) fail_msg("rv_hnsw_new: %s", err);
  if (st != RV_HNSW_FLOAT) {
    rv_err_t e = rv_hnsw_train(h, train->v, (size_t)train->n, err, sizeof err);
    if (e) fail_msg("train: %s", err);
  }
  return h;
}

static void insert_all(rv_hnsw_t *h, set_t *s) {
  for (int i = 0; i < s->n; i++) {
    assert_int_equal(rv_hnsw_upsert(h, s->id[i], s->v + (size_t)i * s->dim, s->dim, NULL), RV_OK);
    s->live[i] = 1;
  }
}

typedef struct ref {
  double d;
  int i;
} ref_t;

static const set_t *cmp_set;
static int ref_cmp(const void *pa, const void *pb) {
  const ref_t *a = pa, *b = pb;
  if (a->d != b->d) return a->d < b->d ? -1 : 1;
  return strcmp(cmp_set->id[a->i], cmp_set->id[b->i]);
}

/* Brute force over the live part of s: fills ref, returns how many. */
static int brute(const set_t *s, rv_metric_t m, const float *q, ref_t *ref) {
  int n = 0;
  for (int i = 0; i < s->n; i++)
    if (s->live[i]) ref[n++] = (ref_t){tu_distance(m, q, s->v + (size_t)i * s->dim, s->dim), i};
  cmp_set = s;
  qsort(ref, (size_t)n, sizeof *ref, ref_cmp);
  return n;
}

/* Asserts that (res, nres) is exactly the top k of the live part of s. */
static void check_exact(const rv_hnsw_t *h, const set_t *s, rv_metric_t m, const float *q, int k,
                        const rv_hnsw_result_t *res, int nres) {
  ref_t *ref = malloc((size_t)s->n * sizeof *ref);
  int n = brute(s, m, q, ref);
  int want = k < n ? k : n;
  assert_int_equal(nres, want);
  for (int i = 0; i < want; i++) {
    char id[RV_ID_MAX + 1];
    assert_int_equal(rv_hnsw_result_external_id(h, &res[i], id, sizeof id), RV_OK);
    int idx = set_find(s, id);
    if (idx < 0 || !s->live[idx]) fail_msg("rank %d: id '%s' is not live", i, id);
    double tol = tu_tol(ref[i].d);
    assert_near(res[i].score, ref[i].d, tol);
    assert_near(res[i].score, tu_distance(m, q, s->v + (size_t)idx * s->dim, s->dim), tol);
    int isolated = (i == 0 || ref[i].d - ref[i - 1].d > 2 * tol) && (i + 1 >= n || ref[i + 1].d - ref[i].d > 2 * tol);
    if (isolated && idx != ref[i].i) fail_msg("rank %d: got '%s', want '%s'", i, id, s->id[ref[i].i]);
    if (i > 0 && res[i - 1].score > res[i].score) fail_msg("rank %d out of order", i);
  }
  free(ref);
}

static double recall_at(const rv_hnsw_t *h, const set_t *s, rv_metric_t m, const float *qs, int nq, int k, int ef) {
  ref_t *ref = malloc((size_t)s->n * sizeof *ref);
  rv_hnsw_result_t *res = malloc((size_t)k * sizeof *res);
  int hit = 0, total = 0;
  for (int qi = 0; qi < nq; qi++) {
    const float *q = qs + (size_t)qi * s->dim;
    int n = brute(s, m, q, ref), nres;
    assert_int_equal(rv_hnsw_search(h, q, s->dim, k, ef, NULL, res, &nres), RV_OK);
    int want = k < n ? k : n;
    for (int i = 0; i < want; i++) {
      char id[RV_ID_MAX + 1];
      for (int j = 0; j < nres; j++)
        if (!rv_hnsw_result_external_id(h, &res[j], id, sizeof id) && !strcmp(id, s->id[ref[i].i])) {
          hit++;
          break;
        }
    }
    total += want;
  }
  free(ref);
  free(res);
  return (double)hit / total;
}

static const char *storage_name(rv_hnsw_storage_t st) {
  return st == RV_HNSW_FLOAT ? "float" : st == RV_HNSW_SQ8 ? "sq8" : "pq";
}

/* ---- tests ------------------------------------------------------------------ */

/* With ef >= n every reachable node is scored and float re-ranking is exact,
 * so the graph must give the brute-force top k, for every metric and mode. */
static void test_exact_small(void **state) {
  (void)state;
  const int n = 300, dim = 16, k = 10;
  rv_metric_t metrics[] = {RV_METRIC_L2, RV_METRIC_COSINE, RV_METRIC_IP};
  rv_hnsw_storage_t modes[] = {RV_HNSW_FLOAT, RV_HNSW_SQ8, RV_HNSW_PQ};
  for (int mi = 0; mi < 3; mi++)
    for (int si = 0; si < 3; si++) {
      set_t s = set_new(n, dim, 100 + (uint64_t)mi * 3 + (uint64_t)si, 0);
      rv_hnsw_t *h = make(metrics[mi], modes[si], dim, &s);
      insert_all(h, &s);
      assert_int_equal(rv_hnsw_count(h), n);
      uint64_t seed = 7;
      for (int qi = 0; qi < 20; qi++) {
        float q[16];
        tu_fill(&seed, q, dim);
        rv_hnsw_result_t res[10];
        int nres = -1;
        print_message("metric %s storage %s query %d\n", rv_metric_name(metrics[mi]), storage_name(modes[si]), qi);
        assert_int_equal(rv_hnsw_search(h, q, dim, k, n, NULL, res, &nres), RV_OK);
        check_exact(h, &s, metrics[mi], q, k, res, nres);
        assert_int_equal(rv_hnsw_search_exact(h, q, dim, k, NULL, res, &nres), RV_OK);
        check_exact(h, &s, metrics[mi], q, k, res, nres);
      }
      rv_hnsw_destroy(h);
      set_free(&s);
    }
}

/* PQ without floats: scores are PQ approximations, results still live and sorted. */
static void test_pq_no_floats(void **state) {
  (void)state;
  const int n = 600, dim = 16;
  set_t s = set_new(n, dim, 5, 1);
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = dim;
  c.storage = RV_HNSW_PQ;
  c.pq_m = 8;
  c.pq_keep_floats = 0;
  char err[256];
  rv_hnsw_t *h = rv_hnsw_new(&c, err, sizeof err);
  assert_non_null(h);
  assert_int_equal(rv_hnsw_train(h, s.v, (size_t)n, err, sizeof err), RV_OK);
  insert_all(h, &s);
  assert_null(rv_hnsw_vector(h, 0));
  float out[16];
  assert_int_equal(rv_hnsw_get_vector(h, 0, out), RV_ERR_STATE);
  double r = recall_at(h, &s, RV_METRIC_L2, s.v, 50, 10, 64);
  print_message("pq (no floats) recall@10 on its own points: %.3f\n", r);
  assert_true(r >= 0.5);
  rv_hnsw_stats_t st;
  rv_hnsw_stats(h, &st);
  assert_int_equal(st.float_bytes, 0);
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_upsert_replaces(void **state) {
  (void)state;
  const int n = 200, dim = 8;
  set_t s = set_new(n, dim, 11, 0);
  rv_hnsw_t *h = make(RV_METRIC_L2, RV_HNSW_FLOAT, dim, &s);
  insert_all(h, &s);
  uint32_t before, after;
  assert_int_equal(rv_hnsw_internal_id(h, "v17", &before), RV_OK);
  float nv[8] = {5, 5, 5, 5, 5, 5, 5, 5}; /* far from every [-1,1) point */
  assert_int_equal(rv_hnsw_upsert(h, "v17", nv, dim, &after), RV_OK);
  memcpy(s.v + 17 * dim, nv, sizeof nv);
  assert_int_equal(rv_hnsw_count(h), n);
  assert_int_equal(rv_hnsw_internal_id(h, "v17", &before), RV_OK);
  assert_int_equal(before, after);
  float got[8];
  assert_int_equal(rv_hnsw_get_vector(h, after, got), RV_OK);
  assert_memory_equal(got, nv, sizeof nv);
  rv_hnsw_result_t res[5];
  int nres;
  assert_int_equal(rv_hnsw_search(h, nv, dim, 1, 0, NULL, res, &nres), RV_OK);
  assert_int_equal(nres, 1);
  assert_int_equal(res[0].id, after);
  assert_near(res[0].score, 0, 1e-6);
  uint64_t seed = 3;
  for (int qi = 0; qi < 10; qi++) {
    float q[8];
    tu_fill(&seed, q, dim);
    assert_int_equal(rv_hnsw_search(h, q, dim, 5, n, NULL, res, &nres), RV_OK);
    check_exact(h, &s, RV_METRIC_L2, q, 5, res, nres);
  }
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_delete_and_reuse(void **state) {
  (void)state;
  const int n = 400, dim = 12;
  set_t s = set_new(n, dim, 21, 0);
  rv_hnsw_t *h = make(RV_METRIC_L2, RV_HNSW_FLOAT, dim, &s);
  insert_all(h, &s);
  for (int i = 0; i < n; i += 2) {
    assert_int_equal(rv_hnsw_delete(h, s.id[i]), RV_OK);
    s.live[i] = 0;
  }
  assert_int_equal(rv_hnsw_delete(h, "v0"), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_hnsw_delete(h, "nope"), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_hnsw_count(h), n / 2);
  uint32_t iid;
  assert_int_equal(rv_hnsw_internal_id(h, "v2", &iid), RV_ERR_NOT_FOUND);
  uint64_t seed = 4;
  for (int qi = 0; qi < 20; qi++) {
    float q[12];
    tu_fill(&seed, q, dim);
    rv_hnsw_result_t res[10];
    int nres;
    assert_int_equal(rv_hnsw_search(h, q, dim, 10, n, NULL, res, &nres), RV_OK);
    check_exact(h, &s, RV_METRIC_L2, q, 10, res, nres);
  }
  /* new vectors take the deleted slots: the slot count does not grow */
  uint32_t bound = rv_hnsw_id_bound(h);
  set_t t = set_new(n / 2, dim, 22, 0);
  for (int i = 0; i < n / 2; i++) {
    snprintf(t.id[i], 24, "w%d", i);
    uint32_t slot;
    assert_int_equal(rv_hnsw_upsert(h, t.id[i], t.v + (size_t)i * dim, dim, &slot), RV_OK);
    assert_true(slot < bound);
    /* put w_i into the reference set in place of a deleted entry */
    int j = 2 * i;
    memcpy(s.v + (size_t)j * dim, t.v + (size_t)i * dim, (size_t)dim * sizeof(float));
    memcpy(s.id[j], t.id[i], 24);
    s.live[j] = 1;
  }
  assert_int_equal(rv_hnsw_id_bound(h), bound);
  assert_int_equal(rv_hnsw_count(h), n);
  rv_hnsw_stats_t st;
  rv_hnsw_stats(h, &st);
  assert_int_equal(st.deleted, 0);
  for (int qi = 0; qi < 20; qi++) {
    float q[12];
    tu_fill(&seed, q, dim);
    rv_hnsw_result_t res[10];
    int nres;
    assert_int_equal(rv_hnsw_search(h, q, dim, 10, n, NULL, res, &nres), RV_OK);
    check_exact(h, &s, RV_METRIC_L2, q, 10, res, nres);
  }
  /* delete everything: searches return nothing, then the index fills again */
  for (int i = 0; i < n; i++) assert_int_equal(rv_hnsw_delete(h, s.id[i]), RV_OK);
  assert_int_equal(rv_hnsw_count(h), 0);
  rv_hnsw_result_t res[10];
  int nres = -1;
  assert_int_equal(rv_hnsw_search(h, s.v, dim, 10, 0, NULL, res, &nres), RV_OK);
  assert_int_equal(nres, 0);
  assert_int_equal(rv_hnsw_upsert(h, "again", s.v, dim, NULL), RV_OK);
  assert_int_equal(rv_hnsw_search(h, s.v, dim, 10, 0, NULL, res, &nres), RV_OK);
  assert_int_equal(nres, 1);
  rv_hnsw_destroy(h);
  set_free(&s);
  set_free(&t);
}

static void test_ids_roundtrip(void **state) {
  (void)state;
  const int dim = 4;
  set_t s = set_new(50, dim, 31, 0);
  rv_hnsw_t *h = make(RV_METRIC_COSINE, RV_HNSW_FLOAT, dim, &s);
  for (int i = 0; i < 50; i++) {
    uint32_t iid, back;
    assert_int_equal(rv_hnsw_upsert(h, s.id[i], s.v + i * dim, dim, &iid), RV_OK);
    assert_int_equal(rv_hnsw_internal_id(h, s.id[i], &back), RV_OK);
    assert_int_equal(back, iid);
    char buf[RV_ID_MAX + 1];
    assert_int_equal(rv_hnsw_external_id(h, iid, buf, sizeof buf), RV_OK);
    assert_string_equal(buf, s.id[i]);
    assert_true(rv_hnsw_is_live(h, iid));
  }
  char small[2];
  uint32_t iid;
  assert_int_equal(rv_hnsw_internal_id(h, "v10", &iid), RV_OK);
  assert_int_equal(rv_hnsw_external_id(h, iid, small, sizeof small), RV_ERR_INVALID);
  assert_int_equal(rv_hnsw_external_id(h, 100000, small, sizeof small), RV_ERR_NOT_FOUND);
  /* 64-bit ids by their decimal form */
  uint64_t big = 18446744073709551615ull;
  uint32_t a, b;
  assert_int_equal(rv_hnsw_upsert_u64(h, big, s.v, dim, &a), RV_OK);
  assert_int_equal(rv_hnsw_internal_id_u64(h, big, &b), RV_OK);
  assert_int_equal(a, b);
  assert_int_equal(rv_hnsw_internal_id(h, "18446744073709551615", &b), RV_OK);
  assert_int_equal(a, b);
  char buf[RV_ID_MAX + 1];
  assert_int_equal(rv_hnsw_external_id(h, a, buf, sizeof buf), RV_OK);
  assert_string_equal(buf, "18446744073709551615");
  assert_int_equal(rv_hnsw_delete_u64(h, big), RV_OK);
  assert_false(rv_hnsw_is_live(h, a));
  assert_int_equal(rv_hnsw_external_id(h, a, buf, sizeof buf), RV_ERR_NOT_FOUND);
  /* a result whose slot was reused no longer maps to an id */
  rv_hnsw_result_t res[1];
  int nres;
  assert_int_equal(rv_hnsw_search(h, s.v + 3 * dim, dim, 1, 0, NULL, res, &nres), RV_OK);
  assert_int_equal(nres, 1);
  assert_int_equal(rv_hnsw_result_external_id(h, &res[0], buf, sizeof buf), RV_OK);
  assert_string_equal(buf, "v3");
  assert_int_equal(rv_hnsw_delete(h, "v3"), RV_OK);
  assert_int_equal(rv_hnsw_result_external_id(h, &res[0], buf, sizeof buf), RV_ERR_NOT_FOUND);
  uint32_t reused;
  assert_int_equal(rv_hnsw_upsert(h, "newcomer", s.v + 3 * dim, dim, &reused), RV_OK);
  int same_slot = reused == res[0].id;
  if (same_slot) assert_int_equal(rv_hnsw_result_external_id(h, &res[0], buf, sizeof buf), RV_ERR_NOT_FOUND);
  rv_hnsw_destroy(h);
  set_free(&s);
}

static int count_live(void *ctx, uint32_t iid) {
  (void)iid;
  (*(int *)ctx)++;
  return 0;
}

static void test_growth_from_tiny(void **state) {
  (void)state;
  const int n = 3000, dim = 8;
  set_t s = set_new(n, dim, 41, 1);
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = dim;
  c.initial_capacity = 1;
  char err[256];
  rv_hnsw_t *h = rv_hnsw_new(&c, err, sizeof err);
  assert_non_null(h);
  rv_hnsw_stats_t st;
  rv_hnsw_stats(h, &st);
  assert_true(st.capacity < 64);
  insert_all(h, &s);
  rv_hnsw_stats(h, &st);
  assert_true(st.capacity >= (size_t)n);
  assert_int_equal(st.count, n);
  for (int i = 0; i < n; i++) {
    uint32_t iid;
    float got[8];
    assert_int_equal(rv_hnsw_internal_id(h, s.id[i], &iid), RV_OK);
    assert_int_equal(rv_hnsw_get_vector(h, iid, got), RV_OK);
    assert_memory_equal(got, s.v + (size_t)i * dim, sizeof got);
    assert_memory_equal(rv_hnsw_vector(h, iid), s.v + (size_t)i * dim, sizeof got);
  }
  int live = 0;
  assert_int_equal(rv_hnsw_foreach_live(h, count_live, &live), 0);
  assert_int_equal(live, n);
  uint64_t seed = 9;
  for (int qi = 0; qi < 5; qi++) {
    float q[8];
    tu_fill(&seed, q, dim);
    rv_hnsw_result_t res[10];
    int nres;
    assert_int_equal(rv_hnsw_search(h, q, dim, 10, n, NULL, res, &nres), RV_OK);
    check_exact(h, &s, RV_METRIC_L2, q, 10, res, nres);
  }
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_bad_arguments(void **state) {
  (void)state;
  const int dim = 6;
  set_t s = set_new(100, dim, 51, 0);
  rv_hnsw_t *h = make(RV_METRIC_COSINE, RV_HNSW_FLOAT, dim, &s);
  insert_all(h, &s);
  rv_hnsw_result_t before[10], after[10];
  int nb, na;
  assert_int_equal(rv_hnsw_search(h, s.v, dim, 10, 0, NULL, before, &nb), RV_OK);
  uint32_t bound = rv_hnsw_id_bound(h);
  float bad[6] = {1, 2, 3, 4, 5, 6};
  assert_int_equal(rv_hnsw_upsert(h, "x", bad, dim + 1, NULL), RV_ERR_DIM);
  bad[2] = NAN;
  assert_int_equal(rv_hnsw_upsert(h, "x", bad, dim, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_hnsw_upsert(h, "v5", bad, dim, NULL), RV_ERR_INVALID); /* existing id keeps its vector */
  bad[2] = INFINITY;
  assert_int_equal(rv_hnsw_upsert(h, "x", bad, dim, NULL), RV_ERR_INVALID);
  float zero[6] = {0};
  assert_int_equal(rv_hnsw_upsert(h, "x", zero, dim, NULL), RV_ERR_INVALID); /* cosine of a zero vector */
  assert_int_equal(rv_hnsw_upsert(h, "", s.v, dim, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_hnsw_upsert(h, NULL, s.v, dim, NULL), RV_ERR_INVALID);
  char longid[RV_ID_MAX + 2];
  memset(longid, 'a', sizeof longid - 1);
  longid[sizeof longid - 1] = 0;
  assert_int_equal(rv_hnsw_upsert(h, longid, s.v, dim, NULL), RV_ERR_INVALID);
  assert_int_equal(rv_hnsw_count(h), 100);
  assert_int_equal(rv_hnsw_id_bound(h), bound);
  uint32_t iid;
  assert_int_equal(rv_hnsw_internal_id(h, "x", &iid), RV_ERR_NOT_FOUND);
  float got[6];
  assert_int_equal(rv_hnsw_internal_id(h, "v5", &iid), RV_OK);
  assert_int_equal(rv_hnsw_get_vector(h, iid, got), RV_OK);
  double nn = 0, dot = 0;
  for (int i = 0; i < dim; i++) {
    nn += (double)s.v[5 * dim + i] * s.v[5 * dim + i];
    dot += got[i] * (double)s.v[5 * dim + i];
  }
  assert_near(dot / sqrt(nn), 1.0, 1e-5); /* still v5's (normalised) vector */
  assert_int_equal(rv_hnsw_search(h, s.v, dim, 10, 0, NULL, after, &na), RV_OK);
  assert_int_equal(na, nb);
  assert_memory_equal(after, before, sizeof(rv_hnsw_result_t) * (size_t)nb);
  /* bad searches */
  assert_int_equal(rv_hnsw_search(h, s.v, dim + 1, 10, 0, NULL, after, &na), RV_ERR_DIM);
  assert_int_equal(rv_hnsw_search(h, s.v, dim, 0, 0, NULL, after, &na), RV_ERR_INVALID);
  assert_int_equal(rv_hnsw_search(h, bad, dim, 3, 0, NULL, after, &na), RV_ERR_INVALID);
  assert_int_equal(na, 0);
  rv_hnsw_destroy(h);
  /* bad configurations, and a quantized index without a quantizer */
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  char err[256];
  c.dim = 0;
  assert_null(rv_hnsw_new(&c, err, sizeof err));
  assert_true(strlen(err) > 0);
  c.dim = 10;
  c.M = 1;
  assert_null(rv_hnsw_new(&c, err, sizeof err));
  c.M = 16;
  c.storage = RV_HNSW_PQ;
  c.pq_m = 3;
  assert_null(rv_hnsw_new(&c, err, sizeof err));
  c.storage = RV_HNSW_SQ8;
  h = rv_hnsw_new(&c, err, sizeof err);
  assert_non_null(h);
  float v[10] = {1};
  assert_int_equal(rv_hnsw_upsert(h, "a", v, 10, NULL), RV_ERR_STATE);
  assert_false(rv_hnsw_ready(h));
  rv_hnsw_destroy(h);
  c.storage = RV_HNSW_FLOAT;
  h = rv_hnsw_new(&c, err, sizeof err);
  assert_int_equal(rv_hnsw_train(h, v, 1, err, sizeof err), RV_ERR_STATE);
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_recall_clustered(void **state) {
  (void)state;
  const int n = 4000, dim = 32, nq = 200;
  set_t s = set_new(n + nq, dim, 61, 1);
  float *qs = split_queries(&s, nq);
  rv_hnsw_storage_t modes[] = {RV_HNSW_FLOAT, RV_HNSW_SQ8, RV_HNSW_PQ};
  double want[] = {0.98, 0.97, 0.95};
  for (int si = 0; si < 3; si++) {
    rv_hnsw_t *h = make(RV_METRIC_L2, modes[si], dim, &s);
    insert_all(h, &s);
    double r = recall_at(h, &s, RV_METRIC_L2, qs, nq, 10, 64);
    print_message("%s recall@10 ef=64: %.4f (want >= %.2f)\n", storage_name(modes[si]), r, want[si]);
    assert_true(r >= want[si]);
    rv_hnsw_destroy(h);
  }
  set_free(&s);
  free(qs);
}

typedef struct modf {
  uint32_t mod;
} modf_t;
static int accept_mod(void *ctx, uint32_t iid) { return iid % ((modf_t *)ctx)->mod == 0; }
static int accept_few(void *ctx, uint32_t iid) {
  const uint32_t *few = ctx;
  return iid == few[0] || iid == few[1] || iid == few[2];
}

static void test_filter(void **state) {
  (void)state;
  const int n = 2000, dim = 16;
  set_t s = set_new(n, dim, 71, 1);
  rv_hnsw_t *h = make(RV_METRIC_L2, RV_HNSW_SQ8, dim, &s);
  insert_all(h, &s);
  modf_t mf = {7};
  rv_hnsw_filter_t f = {accept_mod, &mf};
  /* the reference: live entries whose slot passes the filter */
  set_t sub = s;
  sub.live = calloc((size_t)n, sizeof(int));
  for (int i = 0; i < n; i++) {
    uint32_t iid;
    assert_int_equal(rv_hnsw_internal_id(h, s.id[i], &iid), RV_OK);
    sub.live[i] = iid % 7 == 0;
  }
  uint64_t seed = 12;
  double hits = 0;
  for (int qi = 0; qi < 30; qi++) {
    float q[16];
    tu_fill(&seed, q, dim);
    rv_hnsw_result_t res[10];
    int nres;
    assert_int_equal(rv_hnsw_search(h, q, dim, 10, 20, &f, res, &nres), RV_OK);
    assert_int_equal(nres, 10);
    for (int i = 0; i < nres; i++) assert_int_equal(res[i].id % 7, 0);
    ref_t ref[2000];
    brute(&sub, RV_METRIC_L2, q, ref);
    for (int i = 0; i < 10; i++)
      for (int j = 0; j < nres; j++) {
        char id[32];
        rv_hnsw_result_external_id(h, &res[j], id, sizeof id);
        if (!strcmp(id, s.id[ref[i].i])) hits++;
      }
    assert_int_equal(rv_hnsw_search(h, q, dim, 10, n, &f, res, &nres), RV_OK);
    check_exact(h, &sub, RV_METRIC_L2, q, 10, res, nres);
    assert_int_equal(rv_hnsw_search_exact(h, q, dim, 10, &f, res, &nres), RV_OK);
    check_exact(h, &sub, RV_METRIC_L2, q, 10, res, nres);
  }
  print_message("filtered (1/7) recall@10 at ef=20: %.3f\n", hits / 300);
  assert_true(hits / 300 >= 0.9);
  /* only three nodes pass: all three come back, from anywhere in the graph */
  uint32_t few[3] = {5, 1000, 1999};
  rv_hnsw_filter_t f3 = {accept_few, few};
  rv_hnsw_result_t res[10];
  int nres;
  assert_int_equal(rv_hnsw_search(h, s.v, dim, 10, 10, &f3, res, &nres), RV_OK);
  assert_int_equal(nres, 3);
  free(sub.live);
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_batch_equals_single(void **state) {
  (void)state;
  const int n = 1500, dim = 24, nq = 64, k = 10;
  set_t s = set_new(n, dim, 81, 1);
  set_t qs = set_new(nq, dim, 82, 1);
  rv_hnsw_t *h = make(RV_METRIC_IP, RV_HNSW_SQ8, dim, &s);
  insert_all(h, &s);
  rv_hnsw_result_t *b = malloc(sizeof(rv_hnsw_result_t) * nq * k);
  int nb[64];
  for (int threads = 1; threads <= 3; threads += 2) {
    assert_int_equal(rv_hnsw_search_batch(h, qs.v, nq, dim, k, 40, NULL, threads, b, nb), RV_OK);
    for (int i = 0; i < nq; i++) {
      rv_hnsw_result_t r[10];
      int nr;
      assert_int_equal(rv_hnsw_search(h, qs.v + i * dim, dim, k, 40, NULL, r, &nr), RV_OK);
      assert_int_equal(nr, nb[i]);
      assert_memory_equal(r, b + i * k, sizeof(rv_hnsw_result_t) * (size_t)nr);
    }
  }
  free(b);
  rv_hnsw_destroy(h);
  set_free(&s);
  set_free(&qs);
}

/* ---- serialization ------------------------------------------------------------ */

typedef struct mem {
  unsigned char *p;
  size_t n, cap, pos;
} mem_t;

static int mem_write(void *ctx, const void *buf, size_t len) {
  mem_t *m = ctx;
  if (m->n + len > m->cap) {
    m->cap = (m->n + len) * 2;
    m->p = realloc(m->p, m->cap);
  }
  memcpy(m->p + m->n, buf, len);
  m->n += len;
  return 0;
}

static int mem_read(void *ctx, void *buf, size_t len) {
  mem_t *m = ctx;
  if (m->pos + len > m->n) return -1;
  memcpy(buf, m->p + m->pos, len);
  m->pos += len;
  return 0;
}

static void roundtrip(rv_hnsw_storage_t st, rv_metric_t metric) {
  const int n = 1200, dim = 16, k = 10;
  set_t s = set_new(n, dim, 91, 1);
  rv_hnsw_t *h = make(metric, st, dim, &s);
  insert_all(h, &s);
  for (int i = 0; i < n; i += 5) rv_hnsw_delete(h, s.id[i]); /* tombstones and a free list */
  for (int i = 0; i < n; i += 10) rv_hnsw_upsert(h, s.id[i], s.v + (size_t)(i + 1) * dim, dim, NULL);
  mem_t m = {0};
  assert_int_equal(rv_hnsw_write(h, mem_write, &m), RV_OK);
  char err[256] = "";
  rv_hnsw_t *g = NULL;
  rv_err_t e = rv_hnsw_read(rv_hnsw_conf(h), mem_read, &m, &g, err, sizeof err);
  if (e) fail_msg("read: %s", err);
  assert_int_equal(m.pos, m.n);
  rv_hnsw_stats_t a, b;
  rv_hnsw_stats(h, &a);
  rv_hnsw_stats(g, &b);
  assert_int_equal(a.count, b.count);
  assert_int_equal(a.deleted, b.deleted);
  assert_int_equal(a.slots, b.slots);
  assert_int_equal(a.max_level, b.max_level);
  uint64_t seed = 17;
  for (int qi = 0; qi < 50; qi++) {
    float q[16];
    tu_fill(&seed, q, dim);
    rv_hnsw_result_t r1[10], r2[10];
    int n1, n2;
    assert_int_equal(rv_hnsw_search(h, q, dim, k, 32, NULL, r1, &n1), RV_OK);
    assert_int_equal(rv_hnsw_search(g, q, dim, k, 32, NULL, r2, &n2), RV_OK);
    assert_int_equal(n1, n2);
    assert_memory_equal(r1, r2, sizeof(rv_hnsw_result_t) * (size_t)n1);
  }
  for (int i = 0; i < n; i++) {
    uint32_t x, y;
    rv_err_t ex = rv_hnsw_internal_id(h, s.id[i], &x), ey = rv_hnsw_internal_id(g, s.id[i], &y);
    assert_int_equal(ex, ey);
    if (!ex) assert_int_equal(x, y);
  }
  /* the copy keeps working: inserts reuse its free list */
  uint32_t bound = rv_hnsw_id_bound(g);
  assert_int_equal(rv_hnsw_upsert(g, "after-load", s.v, dim, NULL), RV_OK);
  assert_int_equal(rv_hnsw_id_bound(g), bound);
  rv_hnsw_destroy(g);
  /* a second write of the same index gives the same bytes */
  mem_t m2 = {0};
  assert_int_equal(rv_hnsw_write(h, mem_write, &m2), RV_OK);
  assert_int_equal(m2.n, m.n);
  assert_memory_equal(m2.p, m.p, m.n);
  free(m2.p);
  /* truncation anywhere is refused */
  for (size_t cut = 0; cut < m.n; cut += (cut < 200 ? 7 : m.n / 23 + 1)) {
    mem_t t = {m.p, cut, cut, 0};
    g = (rv_hnsw_t *)1;
    assert_int_equal(rv_hnsw_read(NULL, mem_read, &t, &g, err, sizeof err), RV_ERR_CORRUPT);
    assert_null(g);
  }
  /* a configuration that does not fit */
  rv_hnsw_conf_t other = *rv_hnsw_conf(h);
  other.M = 8;
  m.pos = 0;
  assert_int_equal(rv_hnsw_read(&other, mem_read, &m, &g, err, sizeof err), RV_ERR_CONFIG);
  free(m.p);
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_serialize_roundtrip(void **state) {
  (void)state;
  roundtrip(RV_HNSW_FLOAT, RV_METRIC_L2);
  roundtrip(RV_HNSW_SQ8, RV_METRIC_COSINE);
  roundtrip(RV_HNSW_PQ, RV_METRIC_IP);
}

/* Offsets in a FLOAT, M=16 stream: header 60 bytes, no quantizer, then slot 0. */
static void test_serialize_corrupt(void **state) {
  (void)state;
  const int n = 100, dim = 4;
  set_t s = set_new(n, dim, 95, 0);
  rv_hnsw_t *h = make(RV_METRIC_L2, RV_HNSW_FLOAT, dim, &s);
  insert_all(h, &s);
  mem_t m = {0};
  assert_int_equal(rv_hnsw_write(h, mem_write, &m), RV_OK);
  const size_t hdr = 8 + 4 + 8 * 4 + 8 + 8 + 4;
  const size_t slot0 = hdr + 16 + strlen("v0") + dim * 4; /* then u32 count, links */
  uint32_t cnt;
  memcpy(&cnt, m.p + slot0, 4);
  assert_true(cnt > 0 && cnt <= 32);
  char err[256];
  rv_hnsw_t *g = NULL;
  struct {
    size_t off;
    uint32_t val;
    const char *says;
  } cases[] = {
      {slot0 + 4, 100000, "names slot"},      /* neighbour out of range */
      {slot0 + 4, 0, "itself"},                /* self link */
      {slot0, 33, "links"},                    /* count above 2M */
      {hdr, 7, "state"},                       /* slot state */
      {hdr + 4, 99, "level"},                  /* slot level */
      {hdr + 12, 600, "id is"},                /* id length */
      {0, 0x12345678, "magic"},                /* magic */
      {8, 2, "version"},                       /* format version */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    unsigned char *copy = malloc(m.n);
    memcpy(copy, m.p, m.n);
    memcpy(copy + cases[i].off, &cases[i].val, 4);
    mem_t t = {copy, m.n, m.n, 0};
    err[0] = 0;
    assert_int_equal(rv_hnsw_read(NULL, mem_read, &t, &g, err, sizeof err), RV_ERR_CORRUPT);
    assert_null(g);
    if (!strstr(err, cases[i].says)) fail_msg("case %zu: '%s' does not mention '%s'", i, err, cases[i].says);
    free(copy);
  }
  /* a NaN in a stored vector */
  unsigned char *copy = malloc(m.n);
  memcpy(copy, m.p, m.n);
  float nan = NAN;
  memcpy(copy + hdr + 16 + 2, &nan, 4);
  mem_t t = {copy, m.n, m.n, 0};
  assert_int_equal(rv_hnsw_read(NULL, mem_read, &t, &g, err, sizeof err), RV_ERR_CORRUPT);
  assert_non_null(strstr(err, "finite"));
  free(copy);
  free(m.p);
  rv_hnsw_destroy(h);
  set_free(&s);
}

static void test_stats(void **state) {
  (void)state;
  const int n = 500, dim = 784;
  set_t s = set_new(n, dim, 99, 1);
  rv_hnsw_t *hf = make(RV_METRIC_L2, RV_HNSW_FLOAT, dim, &s), *hq = make(RV_METRIC_L2, RV_HNSW_SQ8, dim, &s);
  insert_all(hf, &s);
  memset(s.live, 0, (size_t)n * sizeof(int));
  insert_all(hq, &s);
  rv_hnsw_stats_t a, b;
  rv_hnsw_stats(hf, &a);
  rv_hnsw_stats(hq, &b);
  double fa = (double)a.graph_bytes / n, fb = (double)b.graph_bytes / n;
  print_message("bytes/vector at dim 784: float graph %.0f; sq8 graph %.0f + floats %.0f\n", fa, fb,
                (double)b.float_bytes / n);
  assert_int_equal(a.float_bytes, 0);
  assert_true(b.float_bytes >= (size_t)n * dim * 4);
  assert_true(fa >= dim * 4);
  assert_true(fb < 0.35 * 3300);
  rv_hnsw_destroy(hf);
  rv_hnsw_destroy(hq);
  set_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_small),       cmocka_unit_test(test_pq_no_floats),
      cmocka_unit_test(test_upsert_replaces),   cmocka_unit_test(test_delete_and_reuse),
      cmocka_unit_test(test_ids_roundtrip),     cmocka_unit_test(test_growth_from_tiny),
      cmocka_unit_test(test_bad_arguments),     cmocka_unit_test(test_recall_clustered),
      cmocka_unit_test(test_filter),            cmocka_unit_test(test_batch_equals_single),
      cmocka_unit_test(test_serialize_roundtrip), cmocka_unit_test(test_serialize_corrupt),
      cmocka_unit_test(test_stats),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
