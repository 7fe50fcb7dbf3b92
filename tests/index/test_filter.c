/* rv_filter + rv_planner over rv_hnsw: filtered results against brute force
 * over many random filters (keyword =, IN, numeric ranges, conjunctions;
 * selectivities from a single vector to everything), the exact path equal to
 * brute force, the graph path's recall and its "k hits whenever >= k match",
 * the planner's choice and counts, slot reuse, quantized storage, and
 * refused filters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "index_testutil.h"
#include "rv_attrs.h"
#include "rv_filter.h"
#include "rv_hnsw.h"
#include "rv_planner.h"

enum { F_COLOR, F_TAG, F_UID, F_CL, F_PRICE, F_RANK, NFIELDS };
static const rv_field_conf_t FIELDS[NFIELDS] = {{"color", RV_FIELD_KEYWORD}, {"tag", RV_FIELD_KEYWORD},
                                                {"uid", RV_FIELD_KEYWORD},   {"cl", RV_FIELD_KEYWORD},
                                                {"price", RV_FIELD_NUMBER},  {"rank", RV_FIELD_NUMBER}};
#define N_COLOR 8
#define N_TAG 500
#define N_CL 32

/* ---- a data set: vectors, their attributes (test-side truth), the index ---- */

typedef struct item {
  int color, tag, cl; /* uid = index */
  double price, rank; /* rank NaN = missing */
  uint32_t slot;
  int live;
} item_t;

typedef struct ds {
  int n, dim, nq;
  float *v, *q;
  item_t *it;
  int *by_slot; /* slot -> item index, -1 */
  uint32_t slots;
  rv_hnsw_t *h;
  rv_attrs_t *a;
} ds_t;

static void kw_name(char *b, int field, int v) {
  static const char *pre[] = {"c", "t", "u", "k"};
  snprintf(b, 32, "%s%d", pre[field], v);
}

static void set_attrs(ds_t *d, int i) {
  char e[256], b[4][32];
  item_t *x = &d->it[i];
  kw_name(b[0], F_COLOR, x->color);
  kw_name(b[1], F_TAG, x->tag);
  kw_name(b[2], F_UID, i);
  kw_name(b[3], F_CL, x->cl);
  rv_attr_value_t v[6] = {{"color", b[0], NAN}, {"tag", b[1], NAN},        {"uid", b[2], NAN},
                          {"cl", b[3], NAN},    {"price", NULL, x->price}, {"rank", NULL, x->rank}};
  if (rv_attrs_set(d->a, x->slot, v, 6, e, sizeof e)) fail_msg("rv_attrs_set: %s", e);
}

static ds_t ds_build(int n, int dim, int nq, int M, rv_hnsw_storage_t st, int keep_floats, uint64_t seed) {
  ds_t d = {.n = n, .dim = dim, .nq = nq};
  d.v = malloc((size_t)n * dim * sizeof(float));
  d.q = malloc((size_t)nq * dim * sizeof(float));
  d.it = calloc((size_t)n, sizeof *d.it);
  float *centers = malloc((size_t)N_CL * dim * sizeof(float));
  tu_fill(&seed, centers, N_CL * dim);
  for (int i = 0; i < n + nq; i++) {
    float *x = i < n ? d.v + (size_t)i * dim : d.q + (size_t)(i - n) * dim;
    int cl = (int)(tu_next(&seed) % N_CL);
    tu_fill(&seed, x, dim);
    for (int j = 0; j < dim; j++) x[j] = centers[cl * dim + j] + 0.25f * x[j];
    if (i >= n) continue;
    item_t *it = &d.it[i];
    it->cl = cl;
    int c = 0; /* color: c0 50%, c1 25%, ... */
    while (c < N_COLOR - 1 && (tu_next(&seed) & 1)) c++;
    it->color = c;
    it->tag = (int)(tu_next(&seed) % N_TAG);
    it->price = (double)(tu_next(&seed) % 1000000) / 1000.0;
    it->rank = tu_next(&seed) % 5 == 0 ? NAN : (double)(tu_next(&seed) % 100);
  }
  free(centers);
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = dim;
  c.M = M;
  c.ef_construction = 100;
  c.storage = st;
  c.pq_keep_floats = keep_floats;
  c.pq_m = st == RV_HNSW_PQ ? dim / 2 : 0;
  char e[256];
  d.h = rv_hnsw_new(&c, e, sizeof e);
  if (!d.h) fail_msg("rv_hnsw_new: %s", e);
  if (st != RV_HNSW_FLOAT) assert_int_equal(rv_hnsw_train(d.h, d.v, (size_t)n, e, sizeof e), RV_OK);
  d.a = rv_attrs_new(FIELDS, NFIELDS, e, sizeof e);
  assert_non_null(d.a);
  for (int i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "v%d", i);
    assert_int_equal(rv_hnsw_upsert(d.h, id, d.v + (size_t)i * dim, dim, &d.it[i].slot), RV_OK);
    d.it[i].live = 1;
    set_attrs(&d, i);
  }
  d.slots = rv_hnsw_id_bound(d.h);
  d.by_slot = malloc(d.slots * sizeof(int));
  for (uint32_t s = 0; s < d.slots; s++) d.by_slot[s] = -1;
  for (int i = 0; i < n; i++) d.by_slot[d.it[i].slot] = i;
  return d;
}

static void ds_delete(ds_t *d, int i) {
  char id[32];
  snprintf(id, sizeof id, "v%d", i);
  assert_int_equal(rv_hnsw_delete(d->h, id), RV_OK);
  rv_attrs_clear(d->a, d->it[i].slot);
  d->it[i].live = 0;
}

static void ds_free(ds_t *d) {
  rv_hnsw_destroy(d->h);
  rv_attrs_destroy(d->a);
  free(d->v);
  free(d->q);
  free(d->it);
  free(d->by_slot);
}

/* ---- a random filter and its test-side evaluation --------------------------- */

typedef struct tclause {
  int field;
  int vals[32], nv; /* keyword: value indexes (uid: item index; -1 = a value no item has) */
  double lo, hi;
  rv_bound_t lok, hik;
} tclause_t;

typedef struct tfilter {
  tclause_t c[3];
  int n;
} tfilter_t;

static int tclause_ok(const item_t *x, int idx, const tclause_t *c) {
  if (c->field == F_PRICE || c->field == F_RANK) {
    double v = c->field == F_PRICE ? x->price : x->rank;
    if (isnan(v)) return 0;
    if (c->lok == RV_BOUND_INCL && v < c->lo) return 0;
    if (c->lok == RV_BOUND_EXCL && v <= c->lo) return 0;
    if (c->hik == RV_BOUND_INCL && v > c->hi) return 0;
    if (c->hik == RV_BOUND_EXCL && v >= c->hi) return 0;
    return 1;
  }
  int have = c->field == F_COLOR ? x->color : c->field == F_TAG ? x->tag : c->field == F_CL ? x->cl : idx;
  for (int j = 0; j < c->nv; j++)
    if (c->vals[j] == have) return 1;
  return 0;
}

static int tfilter_ok(const ds_t *d, int i, const tfilter_t *f) {
  if (!d->it[i].live) return 0;
  for (int j = 0; j < f->n; j++)
    if (!tclause_ok(&d->it[i], i, &f->c[j])) return 0;
  return 1;
}

static double log_uniform(uint64_t *s, double lo, double hi) {
  return exp(log(lo) + (log(hi) - log(lo)) * ((double)(tu_next(s) >> 11) / 9007199254740992.0));
}

static rv_bound_t rand_bound(uint64_t *s) { return (rv_bound_t)(tu_next(s) % 3); }

static void random_clause(const ds_t *d, uint64_t *s, tclause_t *c) {
  memset(c, 0, sizeof *c);
  int kind = (int)(tu_next(s) % 7);
  switch (kind) {
  case 0: /* color = / IN (50% .. 0.8%) */
    c->field = F_COLOR;
    c->nv = 1 + (int)(tu_next(s) % 3);
    for (int j = 0; j < c->nv; j++) c->vals[j] = (int)(tu_next(s) % N_COLOR);
    break;
  case 1: /* tag IN (0.2% .. 6%) */
    c->field = F_TAG;
    c->nv = 1 + (int)(tu_next(s) % 30);
    for (int j = 0; j < c->nv; j++) c->vals[j] = (int)(tu_next(s) % N_TAG);
    break;
  case 2: /* uid IN: a handful of vectors, sometimes one unknown value */
    c->field = F_UID;
    c->nv = 1 + (int)(tu_next(s) % 20);
    for (int j = 0; j < c->nv; j++) c->vals[j] = tu_next(s) % 10 == 0 ? -1 : (int)(tu_next(s) % (uint64_t)d->n);
    break;
  case 3: /* cluster IN: correlated with the vectors */
    c->field = F_CL;
    c->nv = 1 + (int)(tu_next(s) % 4);
    for (int j = 0; j < c->nv; j++) c->vals[j] = (int)(tu_next(s) % N_CL);
    break;
  case 4:
  case 5: { /* price range, width 0.05 .. 1000 of [0, 1000) */
    c->field = F_PRICE;
    double w = log_uniform(s, 0.05, 1000);
    c->lo = (double)(tu_next(s) % 1000000) / 1000.0 * (1 - w / 1000);
    c->hi = c->lo + w;
    c->lok = rand_bound(s);
    c->hik = rand_bound(s);
    break;
  }
  default: /* rank range on integers (ends hit exactly), 20% missing */
    c->field = F_RANK;
    c->lo = (double)(tu_next(s) % 100);
    c->hi = c->lo + (double)(tu_next(s) % 40);
    c->lok = rand_bound(s);
    c->hik = rand_bound(s);
    break;
  }
}

static rv_filter_t *to_filter(const ds_t *d, const tfilter_t *t) {
  char e[256], names[32][32];
  const char *vals[32];
  rv_filter_t *f = rv_filter_new(d->a);
  assert_non_null(f);
  for (int j = 0; j < t->n; j++) {
    const tclause_t *c = &t->c[j];
    rv_err_t err;
    if (c->field == F_PRICE || c->field == F_RANK) {
      err = rv_filter_range(f, FIELDS[c->field].name, c->lok, c->lo, c->hik, c->hi, e, sizeof e);
    } else {
      for (int k = 0; k < c->nv; k++) {
        if (c->vals[k] < 0)
          snprintf(names[k], 32, "no-such-value");
        else
          kw_name(names[k], c->field, c->vals[k]);
        vals[k] = names[k];
      }
      err = c->nv == 1 && (j & 1) ? rv_filter_eq(f, FIELDS[c->field].name, vals[0], e, sizeof e)
                                  : rv_filter_in(f, FIELDS[c->field].name, vals, c->nv, e, sizeof e);
    }
    if (err) fail_msg("building filter clause %d: %s", j, e);
  }
  assert_int_equal(rv_filter_n_clauses(f), t->n);
  return f;
}

/* ---- brute force ------------------------------------------------------------ */

typedef struct bf {
  double d;
  uint32_t slot;
} bf_t;

static int bf_cmp(const void *pa, const void *pb) {
  const bf_t *a = pa, *b = pb;
  if (a->d != b->d) return a->d < b->d ? -1 : 1;
  return a->slot < b->slot ? -1 : a->slot > b->slot;
}

/* The matching live items sorted by distance; returns how many match. */
static int brute(const ds_t *d, const tfilter_t *t, const float *q, bf_t *out) {
  int m = 0;
  for (int i = 0; i < d->n; i++)
    if (tfilter_ok(d, i, t))
      out[m++] = (bf_t){tu_distance(RV_METRIC_L2, q, d->v + (size_t)i * d->dim, d->dim), d->it[i].slot};
  qsort(out, (size_t)m, sizeof *out, bf_cmp);
  return m;
}

typedef struct tctx {
  const ds_t *d;
  const tfilter_t *t;
} tctx_t;

static int t_accept(void *ctx, uint32_t s) {
  const tctx_t *c = ctx;
  return s < c->d->slots && c->d->by_slot[s] >= 0 && tfilter_ok(c->d, c->d->by_slot[s], c->t);
}

/* got == brute force: count, scores, and ids except among near-ties. */
static void check_exact(const ds_t *d, const tfilter_t *t, const rv_hnsw_result_t *got, int n, const bf_t *bf, int m,
                        int k) {
  int want = m < k ? m : k;
  assert_int_equal(n, want);
  for (int i = 0; i < n; i++) {
    double tol = tu_tol(bf[i].d);
    assert_near(got[i].score, bf[i].d, tol);
    int isolated = (i == 0 || bf[i].d - bf[i - 1].d > 2 * tol) && (i + 1 >= m || bf[i + 1].d - bf[i].d > 2 * tol);
    if (isolated) assert_int_equal(got[i].id, bf[i].slot);
    int idx = got[i].id < d->slots ? d->by_slot[got[i].id] : -1;
    if (idx < 0 || !tfilter_ok(d, idx, t)) fail_msg("hit %d: slot %u does not match the filter", i, got[i].id);
  }
}

/* Hits are distinct, live, matching, sorted, and map to their external ids. */
static void check_valid(const ds_t *d, const tfilter_t *t, const rv_hnsw_result_t *got, int n) {
  char id[64], want[32];
  for (int i = 0; i < n; i++) {
    int idx = got[i].id < d->slots ? d->by_slot[got[i].id] : -1;
    if (idx < 0 || !tfilter_ok(d, idx, t)) fail_msg("hit %d: slot %u does not match the filter", i, got[i].id);
    assert_int_equal(rv_hnsw_result_external_id(d->h, &got[i], id, sizeof id), RV_OK);
    snprintf(want, sizeof want, "v%d", idx);
    assert_string_equal(id, want);
    if (i > 0) {
      assert_true(got[i - 1].score <= got[i].score);
      assert_true(got[i - 1].id != got[i].id);
    }
  }
}

static double recall(const rv_hnsw_result_t *got, int n, const bf_t *bf, int m, int k) {
  int want = m < k ? m : k;
  if (!want) return 1;
  int hit = 0;
  double kth = bf[want - 1].d;
  for (int i = 0; i < n; i++) /* a hit at the k-th distance (a tie) counts */
    if (got[i].score <= kth + tu_tol(kth)) hit++;
  return (double)(hit > want ? want : hit) / want;
}

/* ---- the main test -------------------------------------------------------------- */

static void test_random_filters_vs_brute_force(void **state) {
  (void)state;
  const int k = 10, nf = 400, qpf = 2;
  ds_t d = ds_build(4000, 16, 32, 16, RV_HNSW_FLOAT, 1, 1234);
  for (int i = 0; i < d.n; i += 19) ds_delete(&d, i); /* tombstones must never come back */
  uint64_t s = 99;
  bf_t *bf = malloc((size_t)d.n * sizeof *bf);
  rv_hnsw_result_t ex[10], gr[10], au[10], ref[10];
  char e[256];
  double g_rec[3] = {0}, a_rec = 0;
  int g_cnt[3] = {0}, a_cnt = 0, n_zero = 0, n_few = 0, n_tiny = 0, n_half = 0, n_exact = 0, n_graph = 0;
  for (int fi = 0; fi < nf; fi++) {
    tfilter_t t = {.n = 1 + (int)(tu_next(&s) % 3)};
    for (int j = 0; j < t.n; j++) random_clause(&d, &s, &t.c[j]);
    if (fi % 40 == 0) t.n = 1, t.c[0] = (tclause_t){.field = F_PRICE}; /* open range: all with a price */
    rv_filter_t *f = to_filter(&d, &t);
    tctx_t tc = {&d, &t};
    rv_hnsw_filter_t hf = {t_accept, &tc};
    for (int qi = 0; qi < qpf; qi++) {
      const float *q = d.q + (size_t)((fi * qpf + qi) % d.nq) * d.dim;
      int m = brute(&d, &t, q, bf), n;
      n_zero += m == 0;
      n_few += m > 0 && m < k;
      n_tiny += m > 0 && m <= d.n / 1000;
      n_half += m >= (int)rv_hnsw_count(d.h) / 2;
      rv_plan_t plan;

      /* EXACT: equal to brute force, and the same triples as rv_hnsw_search_exact */
      assert_int_equal(rv_planner_search(d.h, d.a, f, q, d.dim, k, 0, RV_PLAN_EXACT, ex, &n, &plan, e, sizeof e),
                       RV_OK);
      assert_int_equal(plan.path, RV_PLAN_EXACT);
      check_exact(&d, &t, ex, n, bf, m, k);
      check_valid(&d, &t, ex, n);
      int nr;
      assert_int_equal(rv_hnsw_search_exact(d.h, q, d.dim, k, &hf, ref, &nr), RV_OK);
      assert_int_equal(nr, n);
      for (int i = 0; i < n; i++) {
        assert_int_equal(ex[i].id, ref[i].id);
        assert_true(ex[i].score == ref[i].score);
        assert_int_equal(ex[i].version, ref[i].version);
      }

      /* GRAPH: k hits whenever >= k match; recall by selectivity */
      assert_int_equal(rv_planner_search(d.h, d.a, f, q, d.dim, k, 0, RV_PLAN_GRAPH, gr, &n, &plan, e, sizeof e),
                       RV_OK);
      assert_int_equal(plan.path, RV_PLAN_GRAPH);
      if (n != (m < k ? m : k)) fail_msg("filter %d: graph path gave %d hits, %d match", fi, n, m);
      check_valid(&d, &t, gr, n);
      if (m >= k) {
        int b = m >= (int)rv_hnsw_count(d.h) / 10 ? 0 : m >= (int)rv_hnsw_count(d.h) / 100 ? 1 : 2;
        g_rec[b] += recall(gr, n, bf, m, k);
        g_cnt[b]++;
      }

      /* AUTO: the planner's count is exact here (<= 16384 slots), its choice follows the rule */
      assert_int_equal(rv_planner_search(d.h, d.a, f, q, d.dim, k, 0, RV_PLAN_AUTO, au, &n, &plan, e, sizeof e), RV_OK);
      assert_int_equal(plan.matches_exact, 1);
      assert_int_equal(plan.matches, m);
      assert_int_equal(plan.live, rv_hnsw_count(d.h));
      assert_int_equal(plan.path, (double)m <= plan.threshold ? RV_PLAN_EXACT : RV_PLAN_GRAPH);
      int has_kw = 0;
      for (int j = 0; j < t.n; j++) has_kw |= t.c[j].field <= F_CL;
      if (plan.path == RV_PLAN_EXACT) {
        n_exact++;
        check_exact(&d, &t, au, n, bf, m, k);
        if (m > 0) assert_int_equal(plan.via_postings, has_kw);
      } else {
        n_graph++;
        assert_int_equal(n, k);
        check_valid(&d, &t, au, n);
      }
      a_rec += recall(au, n, bf, m, k);
      a_cnt++;
    }
    rv_filter_destroy(f);
  }
  for (int b = 0; b < 3; b++) g_rec[b] /= g_cnt[b] ? g_cnt[b] : 1;
  a_rec /= a_cnt;
  print_message("filters: %d queries; 0 matches %d, 1..k-1 %d, <=0.1%% %d, >=50%% %d; auto exact %d graph %d\n", a_cnt,
                n_zero, n_few, n_tiny, n_half, n_exact, n_graph);
  print_message("graph-path recall@10: >=10%% %.4f (%d), 1-10%% %.4f (%d), <1%% %.4f (%d); auto %.4f\n", g_rec[0],
                g_cnt[0], g_rec[1], g_cnt[1], g_rec[2], g_cnt[2], a_rec);
  /* the random filters did span the selectivities */
  assert_true(n_zero > 0 && n_few > 0 && n_tiny > 0 && n_half > 0 && n_exact > 0 && n_graph > 0);
  assert_true(g_cnt[0] > 20 && g_cnt[1] > 20 && g_cnt[2] > 20);
  if (g_rec[0] < 0.95) fail_msg("graph recall@10 at >= 10%% selectivity %.4f < 0.95", g_rec[0]);
  if (g_rec[1] < 0.90) fail_msg("graph recall@10 at 1-10%% selectivity %.4f < 0.90", g_rec[1]);
  if (g_rec[2] < 0.80) fail_msg("graph recall@10 below 1%% selectivity %.4f < 0.80", g_rec[2]);
  if (a_rec < 0.98) fail_msg("planner recall@10 %.4f < 0.98", a_rec);
  free(bf);
  ds_free(&d);
}

/* ---- the planner at its extremes, on an index too big for exact counting ---- */

static void test_planner_extremes(void **state) {
  (void)state;
  char e[256];
  ds_t d = ds_build(20000, 8, 8, 8, RV_HNSW_FLOAT, 1, 77);
  rv_plan_t p;
  rv_hnsw_result_t out[10];
  int n;
  size_t live = rv_hnsw_count(d.h);

  /* unfiltered: graph, everything matches */
  assert_int_equal(rv_planner_plan(d.h, d.a, NULL, 10, 0, RV_PLAN_AUTO, &p, e, sizeof e), RV_OK);
  assert_int_equal(p.path, RV_PLAN_GRAPH);
  assert_int_equal(p.matches, live);
  assert_int_equal(rv_planner_search(d.h, NULL, NULL, d.q, d.dim, 10, 0, RV_PLAN_AUTO, out, &n, &p, e, sizeof e),
                   RV_OK);
  assert_int_equal(n, 10);

  /* one vector: exact, from the posting list, counted */
  tfilter_t one = {.n = 1, .c = {{.field = F_UID, .vals = {4242}, .nv = 1}}};
  rv_filter_t *f = to_filter(&d, &one);
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, d.dim, 10, 0, RV_PLAN_AUTO, out, &n, &p, e, sizeof e), RV_OK);
  assert_int_equal(p.path, RV_PLAN_EXACT);
  assert_int_equal(p.via_postings, 1);
  assert_int_equal(p.matches_exact, 1);
  assert_int_equal(p.matches, 1);
  assert_int_equal(n, 1);
  assert_int_equal(out[0].id, d.it[4242].slot);
  rv_filter_destroy(f);

  /* no vector: exact, nothing */
  tfilter_t none = {.n = 1, .c = {{.field = F_UID, .vals = {-1}, .nv = 1}}};
  f = to_filter(&d, &none);
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, d.dim, 10, 0, RV_PLAN_AUTO, out, &n, &p, e, sizeof e), RV_OK);
  assert_int_equal(p.path, RV_PLAN_EXACT);
  assert_int_equal(p.matches, 0);
  assert_int_equal(n, 0);
  rv_filter_destroy(f);

  /* ranges only, > 16384 slots: estimated by sampling */
  bf_t *bf = malloc((size_t)d.n * sizeof *bf);
  tfilter_t all = {.n = 1, .c = {{.field = F_PRICE, .lok = RV_BOUND_INCL, .lo = 0}}};
  f = to_filter(&d, &all);
  assert_int_equal(rv_planner_plan(d.h, d.a, f, 10, 0, RV_PLAN_AUTO, &p, e, sizeof e), RV_OK);
  assert_int_equal(p.matches_exact, 0);
  assert_int_equal(p.path, RV_PLAN_GRAPH);
  assert_near((double)p.matches, (double)live, 0.01 * live);
  rv_filter_destroy(f);
  tfilter_t narrow = {.n = 1,
                      .c = {{.field = F_PRICE, .lok = RV_BOUND_INCL, .lo = 500, .hik = RV_BOUND_EXCL, .hi = 501}}};
  f = to_filter(&d, &narrow);
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, d.dim, 10, 0, RV_PLAN_AUTO, out, &n, &p, e, sizeof e), RV_OK);
  assert_int_equal(p.path, RV_PLAN_EXACT);
  assert_int_equal(p.via_postings, 0); /* no keyword clause: rv_hnsw_search_exact with the filter */
  int m = brute(&d, &narrow, d.q, bf);
  assert_true(m >= 10);
  assert_true((double)p.matches < 0.02 * live);
  check_exact(&d, &narrow, out, n, bf, m, 10);
  rv_filter_destroy(f);
  tfilter_t mid = {.n = 1, .c = {{.field = F_PRICE, .lok = RV_BOUND_INCL, .lo = 0, .hik = RV_BOUND_EXCL, .hi = 300}}};
  f = to_filter(&d, &mid);
  assert_int_equal(rv_planner_plan(d.h, d.a, f, 10, 0, RV_PLAN_AUTO, &p, e, sizeof e), RV_OK);
  m = brute(&d, &mid, d.q, bf);
  assert_near((double)p.matches, (double)m, 0.08 * live); /* 1024 samples: sd ~ 1.4% of live */
  rv_filter_destroy(f);

  /* a keyword clause too big to walk (k = 1, ef = 1: threshold 50..) -> sampled from its postings */
  tfilter_t big = {.n = 2,
                   .c = {{.field = F_COLOR, .vals = {0}, .nv = 1},
                         {.field = F_PRICE, .lok = RV_BOUND_OPEN, .hik = RV_BOUND_EXCL, .hi = 500}}};
  f = to_filter(&d, &big);
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, d.dim, 1, 1, RV_PLAN_AUTO, out, &n, &p, e, sizeof e), RV_OK);
  assert_int_equal(p.matches_exact, 0);
  m = brute(&d, &big, d.q, bf);
  assert_near((double)p.matches, (double)m, 0.08 * live);
  assert_int_equal(p.path, RV_PLAN_GRAPH);
  assert_int_equal(n, 1);
  check_valid(&d, &big, out, n);
  rv_filter_destroy(f);
  free(bf);
  ds_free(&d);
}

/* ---- slots reused after deletes carry only their new attributes ----------------- */

static void test_slot_reuse(void **state) {
  (void)state;
  char e[256], id[32];
  ds_t d = ds_build(300, 8, 4, 8, RV_HNSW_FLOAT, 1, 5);
  for (int i = 0; i < 100; i++) ds_delete(&d, i);
  /* new vectors take the freed slots; the applier sets their attributes */
  int reused = 0;
  uint64_t s = 8;
  float v[8];
  for (int i = 0; i < 100; i++) {
    uint32_t slot;
    tu_fill(&s, v, 8);
    snprintf(id, sizeof id, "w%d", i);
    assert_int_equal(rv_hnsw_upsert(d.h, id, v, 8, &slot), RV_OK);
    reused += slot < 300;
    rv_attr_value_t a[] = {{"color", "fresh", NAN}};
    assert_int_equal(rv_attrs_set(d.a, slot, a, 1, e, sizeof e), RV_OK);
  }
  assert_true(reused >= 50);
  assert_int_equal(rv_attrs_count_keyword(d.a, 0, "fresh"), 100);
  /* an old value that only deleted vectors held */
  assert_int_equal(rv_attrs_count_keyword(d.a, 2, "u5"), 0);
  rv_filter_t *f = rv_filter_new(d.a);
  assert_int_equal(rv_filter_eq(f, "color", "fresh", e, sizeof e), RV_OK);
  rv_hnsw_result_t out[200];
  int n;
  for (int mode = RV_PLAN_EXACT; mode <= RV_PLAN_GRAPH; mode++) {
    assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, 8, 200, 200, mode, out, &n, NULL, e, sizeof e), RV_OK);
    assert_int_equal(n, 100);
    for (int i = 0; i < n; i++) {
      assert_int_equal(rv_hnsw_result_external_id(d.h, &out[i], id, sizeof id), RV_OK);
      assert_int_equal(id[0], 'w');
    }
  }
  rv_filter_destroy(f);
  /* filters on old attributes find only surviving old vectors */
  f = rv_filter_new(d.a);
  assert_int_equal(rv_filter_range(f, "price", RV_BOUND_OPEN, 0, RV_BOUND_OPEN, 0, e, sizeof e), RV_OK);
  for (int mode = RV_PLAN_EXACT; mode <= RV_PLAN_GRAPH; mode++) {
    assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, 8, 200, 200, mode, out, &n, NULL, e, sizeof e), RV_OK);
    assert_int_equal(n, 200);
    for (int i = 0; i < n; i++) {
      assert_int_equal(rv_hnsw_result_external_id(d.h, &out[i], id, sizeof id), RV_OK);
      assert_int_equal(id[0], 'v');
      assert_true(atoi(id + 1) >= 100);
    }
  }
  rv_filter_destroy(f);
  ds_free(&d);
}

/* ---- quantized storage: the exact path scores like rv_hnsw_search_exact ---- */

static void check_storage(rv_hnsw_storage_t st, int keep) {
  char e[256];
  ds_t d = ds_build(1200, 16, 8, 8, st, keep, 31);
  uint64_t s = 4;
  for (int fi = 0; fi < 30; fi++) {
    tfilter_t t = {.n = 1 + (int)(tu_next(&s) % 2)};
    for (int j = 0; j < t.n; j++) random_clause(&d, &s, &t.c[j]);
    rv_filter_t *f = to_filter(&d, &t);
    tctx_t tc = {&d, &t};
    rv_hnsw_filter_t hf = {t_accept, &tc};
    rv_hnsw_result_t a[10], b[10];
    int na, nb;
    rv_plan_t p;
    const float *q = d.q + (size_t)(fi % d.nq) * d.dim;
    assert_int_equal(rv_planner_search(d.h, d.a, f, q, d.dim, 10, 0, RV_PLAN_EXACT, a, &na, &p, e, sizeof e), RV_OK);
    assert_int_equal(rv_hnsw_search_exact(d.h, q, d.dim, 10, &hf, b, &nb), RV_OK);
    assert_int_equal(na, nb);
    for (int i = 0; i < na; i++) {
      assert_int_equal(a[i].id, b[i].id);
      assert_true(a[i].score == b[i].score);
    }
    assert_int_equal(rv_planner_search(d.h, d.a, f, q, d.dim, 10, 0, RV_PLAN_GRAPH, a, &na, &p, e, sizeof e), RV_OK);
    assert_int_equal(na, nb);
    rv_filter_destroy(f);
  }
  ds_free(&d);
}

static void test_quantized_storage(void **state) {
  (void)state;
  check_storage(RV_HNSW_SQ8, 1);
  check_storage(RV_HNSW_PQ, 1);
  check_storage(RV_HNSW_PQ, 0); /* no floats: the exact path is rv_hnsw_search_exact's */
}

/* ---- refused filters and arguments ------------------------------------------ */

static void expect_refusal(rv_err_t got, rv_filter_t *f, int before, const char *e, const char *msg) {
  assert_int_equal(got, RV_ERR_INVALID);
  assert_int_equal(rv_filter_n_clauses(f), before);
  if (!strstr(e, msg)) fail_msg("errstr '%s' lacks '%s'", e, msg);
}

static void test_bad_filters(void **state) {
  (void)state;
  char e[256];
  ds_t d = ds_build(200, 4, 2, 8, RV_HNSW_FLOAT, 1, 3);
  rv_filter_t *f = rv_filter_new(d.a);
  assert_int_equal(rv_filter_eq(f, "color", "c1", e, sizeof e), RV_OK);
  const char *vals[] = {"a", NULL};
  expect_refusal(rv_filter_eq(f, "colour", "c1", e, sizeof e), f, 1, e, "unknown field 'colour'");
  expect_refusal(rv_filter_eq(f, NULL, "c1", e, sizeof e), f, 1, e, "unknown field");
  expect_refusal(rv_filter_eq(f, "price", "3", e, sizeof e), f, 1, e, "number field");
  expect_refusal(rv_filter_range(f, "color", RV_BOUND_INCL, 0, RV_BOUND_OPEN, 0, e, sizeof e), f, 1, e,
                 "keyword field");
  expect_refusal(rv_filter_range(f, "price", RV_BOUND_INCL, NAN, RV_BOUND_OPEN, 0, e, sizeof e), f, 1, e, "NaN");
  expect_refusal(rv_filter_range(f, "price", RV_BOUND_OPEN, 0, RV_BOUND_EXCL, NAN, e, sizeof e), f, 1, e, "NaN");
  expect_refusal(rv_filter_range(f, "price", (rv_bound_t)9, 0, RV_BOUND_OPEN, 0, e, sizeof e), f, 1, e, "bound kind");
  expect_refusal(rv_filter_in(f, "color", vals, 0, e, sizeof e), f, 1, e, "values");
  expect_refusal(rv_filter_in(f, "color", vals, 2, e, sizeof e), f, 1, e, "NULL value");
  expect_refusal(rv_filter_in(f, "color", vals, RV_FILTER_MAX_VALUES + 1, e, sizeof e), f, 1, e, "values");
  char *longv = malloc(RV_ATTR_VALUE_MAX + 2);
  memset(longv, 'x', RV_ATTR_VALUE_MAX + 1);
  longv[RV_ATTR_VALUE_MAX + 1] = 0;
  expect_refusal(rv_filter_eq(f, "color", longv, e, sizeof e), f, 1, e, "longer");
  free(longv);
  /* a NaN-free empty range is a valid filter matching nothing */
  assert_int_equal(rv_filter_range(f, "price", RV_BOUND_INCL, 5, RV_BOUND_EXCL, 5, e, sizeof e), RV_OK);
  rv_hnsw_result_t out[10];
  int n = -1;
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, 4, 10, 0, RV_PLAN_AUTO, out, &n, NULL, e, sizeof e), RV_OK);
  assert_int_equal(n, 0);
  for (int i = 2; i < RV_FILTER_MAX_CLAUSES; i++)
    assert_int_equal(rv_filter_range(f, "rank", RV_BOUND_OPEN, 0, RV_BOUND_OPEN, 0, e, sizeof e), RV_OK);
  expect_refusal(rv_filter_eq(f, "color", "c1", e, sizeof e), f, RV_FILTER_MAX_CLAUSES, e, "clauses");
  rv_filter_destroy(f);

  /* a filter built for another schema, bad queries and k */
  rv_field_conf_t other[] = {{"color", RV_FIELD_KEYWORD}};
  rv_attrs_t *oa = rv_attrs_new(other, 1, e, sizeof e);
  f = rv_filter_new(oa);
  assert_int_equal(rv_filter_eq(f, "color", "c1", e, sizeof e), RV_OK);
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, 4, 10, 0, RV_PLAN_AUTO, out, &n, NULL, e, sizeof e),
                   RV_ERR_INVALID);
  assert_non_null(strstr(e, "other fields"));
  assert_int_equal(rv_planner_search(d.h, NULL, f, d.q, 4, 10, 0, RV_PLAN_AUTO, out, &n, NULL, e, sizeof e),
                   RV_ERR_INVALID);
  rv_filter_destroy(f);
  rv_attrs_destroy(oa);
  f = rv_filter_new(d.a);
  assert_int_equal(rv_filter_eq(f, "color", "c0", e, sizeof e), RV_OK);
  float nanq[4] = {0, NAN, 0, 0};
  for (int mode = RV_PLAN_AUTO; mode <= RV_PLAN_GRAPH; mode++) {
    assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, 4, 0, 0, mode, out, &n, NULL, e, sizeof e), RV_ERR_INVALID);
    assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, 5, 10, 0, mode, out, &n, NULL, e, sizeof e), RV_ERR_DIM);
    assert_int_equal(rv_planner_search(d.h, d.a, f, nanq, 4, 10, 0, mode, out, &n, NULL, e, sizeof e), RV_ERR_INVALID);
    assert_int_equal(n, 0);
  }
  rv_filter_destroy(f);
  ds_free(&d);
}

/* ---- an applier racing filtered searches (run under TSan too) -------------- */

typedef struct race {
  ds_t *d;
  _Atomic int stop;
  _Atomic long searches;
} race_t;

static void *applier(void *arg) {
  race_t *r = arg;
  ds_t *d = r->d;
  uint64_t s = 21;
  char e[256], id[32], color[32];
  float v[16];
  for (int i = 0; i < 3000; i++) {
    int x = (int)(tu_next(&s) % 600);
    snprintf(id, sizeof id, "r%d", x);
    uint32_t old;
    int had = rv_hnsw_internal_id(d->h, id, &old) == RV_OK;
    if (had && tu_next(&s) % 3 == 0) { /* delete */
      if (rv_hnsw_delete(d->h, id)) abort();
      rv_attrs_clear(d->a, old);
      continue;
    }
    tu_fill(&s, v, d->dim);
    uint32_t slot;
    if (rv_hnsw_upsert(d->h, id, v, d->dim, &slot)) abort();
    if (had) rv_attrs_clear(d->a, old); /* replaced: the old slot was deleted by the upsert */
    snprintf(color, sizeof color, "c%d", (int)(tu_next(&s) % 3));
    rv_attr_value_t av[] = {{"color", color, NAN}, {"price", NULL, (double)(tu_next(&s) % 1000)}};
    if (rv_attrs_set(d->a, slot, av, 2, e, sizeof e)) abort();
  }
  atomic_store(&r->stop, 1);
  return NULL;
}

static void *searcher(void *arg) {
  race_t *r = arg;
  ds_t *d = r->d;
  uint64_t s = (uint64_t)(uintptr_t)&s;
  char e[256], id[64];
  rv_hnsw_result_t out[10];
  long n_done = 0;
  while (!atomic_load(&r->stop)) {
    rv_filter_t *f = rv_filter_new(d->a);
    char color[16];
    snprintf(color, sizeof color, "c%d", (int)(tu_next(&s) % 3));
    if (rv_filter_eq(f, "color", color, e, sizeof e)) abort();
    if (tu_next(&s) & 1 &&
        rv_filter_range(f, "price", RV_BOUND_INCL, (double)(tu_next(&s) % 900), RV_BOUND_OPEN, 0, e, sizeof e))
      abort();
    int n;
    rv_plan_mode_t mode = (rv_plan_mode_t)(tu_next(&s) % 3);
    const float *q = d->q + (size_t)(tu_next(&s) % (uint64_t)d->nq) * d->dim;
    if (rv_planner_search(d->h, d->a, f, q, d->dim, 10, 0, mode, out, &n, NULL, e, sizeof e)) abort();
    if (n < 0 || n > 10) abort();
    for (int i = 0; i < n; i++) {
      if (i && out[i - 1].score > out[i].score) abort();
      rv_err_t err = rv_hnsw_result_external_id(d->h, &out[i], id, sizeof id);
      if (err != RV_OK && err != RV_ERR_NOT_FOUND) abort();
    }
    rv_filter_destroy(f);
    n_done++;
  }
  atomic_fetch_add(&r->searches, n_done);
  return NULL;
}

static void test_applier_races_searches(void **state) {
  (void)state;
  char e[256];
  ds_t d = ds_build(500, 16, 16, 8, RV_HNSW_FLOAT, 1, 61);
  race_t r = {&d, 0, 0};
  pthread_t w, rd[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&rd[i], NULL, searcher, &r), 0);
  assert_int_equal(pthread_create(&w, NULL, applier, &r), 0);
  pthread_join(w, NULL);
  for (int i = 0; i < 2; i++) pthread_join(rd[i], NULL);
  assert_true(atomic_load(&r.searches) > 0);
  /* quiescent again: attributes exactly on the live r* vectors, filtered exact == brute force */
  size_t live_r = 0, c0 = 0;
  char id[64], buf[64];
  for (uint32_t s = 0; s < rv_hnsw_id_bound(d.h); s++) {
    int live = rv_hnsw_is_live(d.h, s);
    int has = rv_attrs_get_keyword(d.a, s, F_COLOR, buf, sizeof buf) == RV_OK;
    assert_int_equal(live, has);
    if (!live) continue;
    assert_int_equal(rv_hnsw_external_id(d.h, s, id, sizeof id), RV_OK);
    live_r += id[0] == 'r';
    c0 += !strcmp(buf, "c0");
  }
  assert_int_equal(rv_attrs_count_keyword(d.a, F_COLOR, "c0"), c0);
  rv_filter_t *f = rv_filter_new(d.a);
  assert_int_equal(rv_filter_eq(f, "color", "c0", e, sizeof e), RV_OK);
  rv_hnsw_result_t out[1000];
  int n;
  assert_int_equal(rv_planner_search(d.h, d.a, f, d.q, d.dim, 1000, 0, RV_PLAN_GRAPH, out, &n, NULL, e, sizeof e),
                   RV_OK);
  assert_int_equal(n, c0);
  rv_filter_destroy(f);
  print_message("race: %ld searches, %zu live r* vectors at the end\n", atomic_load(&r.searches), live_r);
  ds_free(&d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_filters),
      cmocka_unit_test(test_slot_reuse),
      cmocka_unit_test(test_quantized_storage),
      cmocka_unit_test(test_planner_extremes),
      cmocka_unit_test(test_random_filters_vs_brute_force),
      cmocka_unit_test(test_applier_races_searches),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
