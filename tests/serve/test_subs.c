/* rv_subs: live top-k subscriptions against an exact reference, over random
 * streams of upserts, updates and deletes; resume; the SIMD kernels against
 * the scalar one. Vectors are on a small integer grid, so every distance is
 * an exact integer whatever the summation order: scores compare exactly and
 * ties (many) must be ordered by id (except against the replica's search,
 * see test_stream_replica). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_attrs.h"
#include "rv_replica.h"
#include "rv_subs.h"
#include "rv_subs_kernels.h"

#define DIM 8
#define NIDS 60
#define NSUBS 14
#define MAXK 5

static uint64_t next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* ---- the data: a model of what is live -------------------------------------- */

typedef struct model {
  rv_metric_t metric;
  char ids[NIDS][8];
  float vec[NIDS][DIM];
  char meta[NIDS][48];
  int cls[NIDS], num[NIDS], live[NIDS];
  rv_attrs_t *attrs; /* slot i = item i, for the owner's search's filter */
  rv_replica_t *replica; /* NULL: the owner's search is a brute force over the model */
  uint64_t gen;
} model_t;

static double score(const model_t *m, const float *q, const float *v) {
  double s = 0;
  for (int i = 0; i < DIM; i++) s += m->metric == RV_METRIC_L2 ? ((double)q[i] - v[i]) * ((double)q[i] - v[i]) : (double)q[i] * v[i];
  return m->metric == RV_METRIC_L2 ? s : -s;
}

/* A subscription's filter as the test knows it (independent of rv_filter). */
typedef struct fdesc {
  int kind; /* 0 none, 1 class == c0, 2 lo <= num < hi, 3 class in (c0, c1) */
  int c0, c1, lo, hi;
} fdesc_t;

static int fmatch(const fdesc_t *d, int cls, int num) {
  switch (d->kind) {
  case 1: return cls == d->c0;
  case 2: return num >= d->lo && num < d->hi;
  case 3: return cls == d->c0 || cls == d->c1;
  default: return 1;
  }
}

typedef struct ref {
  double d;
  int i;
} ref_t;

static const model_t *g_cmp_model;
static int ref_cmp(const void *a, const void *b) {
  const ref_t *x = a, *y = b;
  if (x->d != y->d) return x->d < y->d ? -1 : 1;
  return strcmp(g_cmp_model->ids[x->i], g_cmp_model->ids[y->i]);
}

/* The exact top-k of q among live matching items; returns how many. */
static int exact(const model_t *m, const float *q, int k, const fdesc_t *d, ref_t *out) {
  ref_t all[NIDS];
  int n = 0;
  for (int i = 0; i < NIDS; i++)
    if (m->live[i] && fmatch(d, m->cls[i], m->num[i])) all[n++] = (ref_t){score(m, q, m->vec[i]), i};
  g_cmp_model = m;
  qsort(all, (size_t)n, sizeof *all, ref_cmp);
  if (n > k) n = k;
  memcpy(out, all, (size_t)n * sizeof *out);
  return n;
}

/* The owner's search: rv_replica_search_filtered, or a brute force over the
 * model judged by rv_filter_matches on its attribute store. */
static rv_err_t search(void *ctx, const float *q, int dim, int k, int ef, const rv_filter_t *f, rv_hit_list_t *out,
                       uint64_t *as_of, char *errstr, size_t errstr_size) {
  model_t *m = ctx;
  *as_of = m->gen;
  (void)ef;
  if (m->replica) {
    rv_err_t err = rv_replica_search_filtered(m->replica, q, dim, k, 500, f, out, errstr, errstr_size);
    return err;
  }
  ref_t all[NIDS];
  int n = 0;
  for (int i = 0; i < NIDS; i++)
    if (m->live[i] && (!f || rv_filter_matches(f, m->attrs, (uint32_t)i))) all[n++] = (ref_t){score(m, q, m->vec[i]), i};
  g_cmp_model = m;
  qsort(all, (size_t)n, sizeof *all, ref_cmp);
  if (n > k) n = k;
  out->hits = calloc((size_t)n + 1, sizeof *out->hits);
  out->n = n;
  for (int j = 0; j < n; j++) {
    out->hits[j].id = strdup(m->ids[all[j].i]);
    out->hits[j].metadata = strdup(m->meta[all[j].i]);
    out->hits[j].score = (float)all[j].d;
  }
  return RV_OK;
}

/* ---- subscribers: the client's view, built from snapshot + updates ----------- */

typedef struct client {
  int used;
  uint64_t sub;
  int qi;            /* which query (vector, k, filter) */
  rv_hit_t hits[64];
  int n;
  uint64_t seq;
  int offline;       /* updates while offline are lost (a dropped connection) */
} client_t;

static void client_clear(client_t *c) {
  for (int i = 0; i < c->n; i++) {
    free(c->hits[i].id);
    free(c->hits[i].metadata);
  }
  c->n = 0;
}

static int hit_cmp(const void *a, const void *b) {
  const rv_hit_t *x = a, *y = b;
  if (x->score != y->score) return x->score < y->score ? -1 : 1;
  return strcmp(x->id, y->id);
}

static void client_snapshot(client_t *c, const rv_subs_snapshot_t *snap) {
  client_clear(c);
  for (int i = 0; i < snap->hits.n; i++) {
    c->hits[c->n].id = strdup(snap->hits.hits[i].id);
    c->hits[c->n].metadata = snap->hits.hits[i].metadata ? strdup(snap->hits.hits[i].metadata) : NULL;
    c->hits[c->n++].score = snap->hits.hits[i].score;
  }
  c->seq = snap->seq;
}

static int client_find(const client_t *c, const char *id) {
  for (int i = 0; i < c->n; i++)
    if (!strcmp(c->hits[i].id, id)) return i;
  return -1;
}

/* Applies u to c's view; NULL, or what is wrong (a gap, an impossible edit). */
static const char *client_apply_err(client_t *c, const rv_subs_update_t *u) {
  static __thread char why[160];
  if (u->seq != c->seq + 1) {
    snprintf(why, sizeof why, "sub %llu: update seq %llu after %llu (a gap)", (unsigned long long)c->sub,
             (unsigned long long)u->seq, (unsigned long long)c->seq);
    return why;
  }
  c->seq = u->seq;
  if (u->n_enter + u->n_leave + u->n_moved == 0) return "an empty update"; /* only when something changed */
  for (int i = 0; i < u->n_leave; i++) {
    int at = client_find(c, u->leave[i]);
    if (at < 0) return "a leave of an id not in the top-k";
    free(c->hits[at].id);
    free(c->hits[at].metadata);
    c->hits[at] = c->hits[--c->n];
  }
  for (int i = 0; i < u->n_moved; i++) {
    int at = client_find(c, u->moved[i].id);
    if (at < 0) return "a move of an id not in the top-k";
    free(c->hits[at].metadata);
    c->hits[at].metadata = u->moved[i].metadata ? strdup(u->moved[i].metadata) : NULL;
    c->hits[at].score = u->moved[i].score;
  }
  for (int i = 0; i < u->n_enter; i++) {
    if (client_find(c, u->enter[i].id) >= 0) return "an enter of an id already in";
    if (c->n >= 64) return "more than 64 hits";
    c->hits[c->n].id = strdup(u->enter[i].id);
    c->hits[c->n].metadata = u->enter[i].metadata ? strdup(u->enter[i].metadata) : NULL;
    c->hits[c->n++].score = u->enter[i].score;
  }
  qsort(c->hits, (size_t)c->n, sizeof *c->hits, hit_cmp);
  return NULL;
}

static void client_apply(client_t *c, const rv_subs_update_t *u) {
  const char *why = client_apply_err(c, u);
  if (why) fail_msg("%s", why);
}

typedef struct world {
  client_t clients[NSUBS * 2];
  int n_clients;
  uint64_t delivered;
} world_t;

static void deliver(void *ctx, uint64_t sub, void *user, const rv_subs_update_t *u) {
  world_t *w = ctx;
  client_t *c = user;
  assert_int_equal(c->sub, sub);
  w->delivered++;
  if (!c->offline) client_apply(c, u);
}

static void replay(void *ctx, const rv_subs_update_t *u) { client_apply(ctx, u); }

/* ---- the stream ------------------------------------------------------------------ */

/* Grid points (exact integer distances, many ties) or, with g_jitter, grid
 * points moved by up to 1/2 (no ties, scores compared within rounding). */
static int g_jitter;
static void random_vec(uint64_t *seed, float *v) {
  for (int i = 0; i < DIM; i++)
    v[i] = (float)((int)(next(seed) % 5) - 2) + (g_jitter ? (float)(next(seed) % 1000) / 2000.0f : 0.0f);
}

static void set_item(model_t *m, int i, uint64_t *seed, int keep_vec) {
  if (!keep_vec) random_vec(seed, m->vec[i]);
  m->cls[i] = (int)(next(seed) % 3);
  m->num[i] = (int)(next(seed) % 10);
  snprintf(m->meta[i], sizeof m->meta[i], "{\"c\":\"c%d\",\"n\":%d}", m->cls[i], m->num[i]);
  char cv[8];
  snprintf(cv, sizeof cv, "c%d", m->cls[i]);
  rv_attr_value_t vals[2] = {{"c", cv, NAN}, {"n", NULL, m->num[i]}};
  char errstr[128];
  assert_int_equal(rv_attrs_set(m->attrs, (uint32_t)i, vals, 2, errstr, sizeof errstr), RV_OK);
}

typedef struct qdesc {
  float vec[DIM];
  int k, ef;
  fdesc_t f;
} qdesc_t;

static rv_filter_t *make_filter(const rv_collection_conf_t *col, const fdesc_t *d, char *key, size_t key_size) {
  key[0] = '\0';
  if (!d->kind) return NULL;
  char errstr[128], a[8], b[8];
  rv_attrs_t *schema = rv_attrs_new(col->fields, col->n_fields, errstr, sizeof errstr);
  rv_filter_t *f = rv_filter_new(schema);
  rv_attrs_destroy(schema);
  snprintf(a, sizeof a, "c%d", d->c0);
  snprintf(b, sizeof b, "c%d", d->c1);
  const char *in[2] = {a, b};
  if (d->kind == 1) assert_int_equal(rv_filter_eq(f, "c", a, errstr, sizeof errstr), RV_OK);
  if (d->kind == 2)
    assert_int_equal(rv_filter_range(f, "n", RV_BOUND_INCL, d->lo, RV_BOUND_EXCL, d->hi, errstr, sizeof errstr), RV_OK);
  if (d->kind == 3) assert_int_equal(rv_filter_in(f, "c", in, 2, errstr, sizeof errstr), RV_OK);
  snprintf(key, key_size, "{\"kind\":%d,\"c0\":%d,\"c1\":%d,\"lo\":%d,\"hi\":%d}", d->kind, d->c0, d->c1, d->lo, d->hi);
  return f;
}

static void subscribe(rv_subs_t *s, const rv_collection_conf_t *col, world_t *w, const qdesc_t *qd, int qi) {
  client_t *c = &w->clients[w->n_clients++];
  memset(c, 0, sizeof *c);
  c->used = 1;
  c->qi = qi;
  char key[128], errstr[256] = "";
  rv_filter_t *f = make_filter(col, &qd->f, key, sizeof key);
  rv_subs_snapshot_t snap;
  assert_int_equal(rv_subs_subscribe(s, qd->vec, qd->k, qd->ef, f, key, c, &c->sub, &snap, errstr, sizeof errstr),
                   RV_OK);
  assert_int_equal(snap.seq, 0);
  client_snapshot(c, &snap);
  rv_hit_list_close(&snap.hits);
}

static void check_client(const model_t *m, const client_t *c, const qdesc_t *qd) {
  ref_t want[64];
  int n = exact(m, qd->vec, qd->k, &qd->f, want);
  if (c->n != n) fail_msg("sub %llu: %d hits, exact top-%d has %d", (unsigned long long)c->sub, c->n, qd->k, n);
  for (int i = 0; i < n; i++) {
    const char *wid = m->ids[want[i].i];
    double tol = g_jitter ? 1e-4 * (1 + fabs(want[i].d)) : 0;
    if (strcmp(c->hits[i].id, wid) || fabs(c->hits[i].score - want[i].d) > tol)
      fail_msg("sub %llu rank %d: got %s (%g), exact %s (%g)", (unsigned long long)c->sub, i, c->hits[i].id,
               c->hits[i].score, wid, want[i].d);
    assert_non_null(c->hits[i].metadata);
    assert_string_equal(c->hits[i].metadata, m->meta[want[i].i]);
  }
}

/* One random stream against subscriptions; with_replica feeds an rv_replica
 * through rv_replica_apply and searches it, else the brute force. */
static void run_stream(rv_metric_t metric, int with_replica, uint64_t seed0, int scalar) {
  static model_t m;
  memset(&m, 0, sizeof m);
  m.metric = metric;
  rv_collection_conf_t col = {0};
  snprintf(col.name, sizeof col.name, "docs");
  col.dim = DIM;
  col.metric = metric;
  col.fields[0] = (rv_field_conf_t){"c", RV_FIELD_KEYWORD};
  col.fields[1] = (rv_field_conf_t){"n", RV_FIELD_NUMBER};
  col.n_fields = 2;
  char errstr[256] = "";
  m.attrs = rv_attrs_new(col.fields, col.n_fields, errstr, sizeof errstr);
  assert_non_null(m.attrs);
  if (with_replica) {
    rv_replica_conf_t rc = {0};
    rc.collection = col;
    rc.ef_search = 500;
    m.replica = rv_replica_new(&rc, errstr, sizeof errstr);
    assert_non_null(m.replica);
  }
  for (int i = 0; i < NIDS; i++) snprintf(m.ids[i], sizeof m.ids[i], "v%02d", i);

  uint64_t seed = seed0;
  int64_t offset = 0;
  rv_change_t chg[8];
  const rv_change_t *ptrs[8];
  /* Initial data: half the ids. */
  for (int i = 0; i < NIDS; i += 2) {
    set_item(&m, i, &seed, 0);
    m.live[i] = 1;
    if (m.replica) {
      rv_change_t c;
      rv_change_init(&c);
      c.id = m.ids[i], c.op = RV_OP_UPSERT, c.src_offset = offset++, c.vector = m.vec[i], c.dim = DIM;
      c.attributes = m.meta[i];
      assert_int_equal(rv_replica_apply(m.replica, &c), RV_OK);
    }
  }

  rv_subs_conf_t sc = {0};
  sc.collection = col;
  sc.search = search;
  sc.search_ctx = &m;
  static world_t w;
  memset(&w, 0, sizeof w);
  sc.deliver = deliver;
  sc.deliver_ctx = &w;
  sc.extra = 2; /* few extras: re-searches happen */
  sc.history = 2;
  sc.scalar = scalar;
  rv_subs_t *s = rv_subs_new(&sc, errstr, sizeof errstr);
  if (!s) fail_msg("rv_subs_new: %s", errstr);

  qdesc_t qd[NSUBS];
  for (int q = 0; q < NSUBS; q++) {
    random_vec(&seed, qd[q].vec);
    qd[q].k = 1 + (int)(next(&seed) % MAXK);
    qd[q].ef = 0;
    qd[q].f = (fdesc_t){(int)(next(&seed) % 4), (int)(next(&seed) % 3), (int)(next(&seed) % 3),
                        (int)(next(&seed) % 5), 5 + (int)(next(&seed) % 5)};
  }
  qd[NSUBS - 1] = qd[0]; /* identical to 0 and 1: they share one evaluation */
  qd[NSUBS - 2] = qd[1];
  for (int q = 0; q < NSUBS - 2; q++) subscribe(s, &col, &w, &qd[q], q);
  rv_subs_stats_t st;
  rv_subs_stats(s, &st);
  assert_int_equal(st.queries, NSUBS - 2);

  int resets = 0, replays = 0;
  for (int b = 0; b < 300; b++) {
    if (b == 40) { /* late identical subscribers: their seq starts at 0 while the query's is far on */
      subscribe(s, &col, &w, &qd[NSUBS - 1], 0);
      subscribe(s, &col, &w, &qd[NSUBS - 2], 1);
      rv_subs_stats(s, &st);
      assert_int_equal(st.queries, NSUBS - 2);
      assert_int_equal(st.subscribers, NSUBS);
    }
    /* drop and resume clients now and then */
    if (b % 7 == 3) w.clients[next(&seed) % (uint64_t)w.n_clients].offline = 1;
    if (b % 7 == 0) {
      for (int i = 0; i < w.n_clients; i++) {
        client_t *c = &w.clients[i];
        if (!c->offline) continue;
        c->offline = 0;
        int reset = 0;
        rv_subs_snapshot_t snap;
        assert_int_equal(rv_subs_resume(s, c->sub, c->seq, replay, c, &reset, &snap), RV_OK);
        if (reset) {
          client_snapshot(c, &snap);
          rv_hit_list_close(&snap.hits);
          resets++;
        } else {
          replays++;
        }
      }
    }
    int n = 1 + (int)(next(&seed) % 8);
    for (int j = 0; j < n; j++) {
      int i = (int)(next(&seed) % NIDS);
      rv_change_init(&chg[j]);
      chg[j].id = m.ids[i];
      chg[j].src_offset = offset++;
      int r = (int)(next(&seed) % 10);
      if (m.live[i] && r < 3) {
        chg[j].op = RV_OP_DELETE;
        m.live[i] = 0;
        rv_attrs_clear(m.attrs, (uint32_t)i);
      } else {
        int keep_vec = m.live[i] && r < 5; /* metadata-only update */
        set_item(&m, i, &seed, keep_vec);
        m.live[i] = 1;
        chg[j].op = RV_OP_UPSERT;
        chg[j].vector = malloc(DIM * sizeof(float));
        memcpy(chg[j].vector, m.vec[i], sizeof m.vec[i]);
        chg[j].dim = DIM;
        chg[j].attributes = strdup(m.meta[i]);
      }
      if (m.replica) assert_int_equal(rv_replica_apply(m.replica, &chg[j]), RV_OK);
      ptrs[j] = &chg[j];
    }
    m.gen++;
    rv_replica_applied_t batch = {ptrs, n, m.gen};
    rv_subs_on_applied(s, &batch);
    for (int j = 0; j < n; j++) {
      free(chg[j].vector);
      free(chg[j].attributes);
    }
    for (int i = 0; i < w.n_clients; i++)
      if (!w.clients[i].offline) check_client(&m, &w.clients[i], &qd[w.clients[i].qi]);
  }
  rv_subs_stats(s, &st);
  print_message("metric %s%s: %llu changes, %llu distances, %llu filter evals, %llu re-searches, %llu updates, "
                "%llu delivered, %d resets, %d replays\n",
                rv_metric_name(metric), with_replica ? " (replica)" : "", (unsigned long long)st.changes,
                (unsigned long long)st.distances, (unsigned long long)st.filter_evals,
                (unsigned long long)st.researches, (unsigned long long)st.updates, (unsigned long long)st.delivered,
                resets, replays);
  assert_true(resets > 0);
  assert_true(replays > 0);
  assert_true(st.updates > 50);
  assert_true(st.delivered > st.updates); /* shared queries fan out */
  /* Upserts cost one distance per distinct query, plus one per query the id
   * was a candidate of: never more than two per query. */
  assert_true(st.distances <= 2 * st.changes * (NSUBS - 2));
  assert_true(st.researches < st.changes / 2);

  /* Unsubscribing the last subscriber of a query frees it; unknown ids fail. */
  assert_int_equal(rv_subs_unsubscribe(s, w.clients[0].sub), RV_OK);
  assert_int_equal(rv_subs_unsubscribe(s, w.clients[0].sub), RV_ERR_NOT_FOUND);
  rv_subs_stats(s, &st);
  assert_int_equal(st.queries, NSUBS - 2); /* query 0 is still shared */
  for (int i = 0; i < w.n_clients; i++)
    if (w.clients[i].qi == 0 && i != 0) assert_int_equal(rv_subs_unsubscribe(s, w.clients[i].sub), RV_OK);
  rv_subs_stats(s, &st);
  assert_int_equal(st.queries, NSUBS - 3);
  int reset;
  rv_subs_snapshot_t snap;
  assert_int_equal(rv_subs_resume(s, w.clients[0].sub, 0, replay, NULL, &reset, &snap), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_subs_resume(s, w.clients[1].sub, w.clients[1].seq + 1, replay, NULL, &reset, &snap),
                   RV_ERR_INVALID);

  for (int i = 0; i < w.n_clients; i++) client_clear(&w.clients[i]);
  rv_subs_destroy(s);
  rv_replica_destroy(m.replica);
  rv_attrs_destroy(m.attrs);
}

static void test_stream_l2(void **state) {
  (void)state;
  run_stream(RV_METRIC_L2, 0, 1, 0);
  run_stream(RV_METRIC_L2, 0, 2, 0);
}
static void test_stream_l2_scalar(void **state) {
  (void)state;
  run_stream(RV_METRIC_L2, 0, 3, 1);
}
static void test_stream_ip(void **state) {
  (void)state;
  run_stream(RV_METRIC_IP, 0, 4, 0);
}
static void test_stream_replica(void **state) {
  (void)state;
  /* The replica's search orders equal scores by id, but among equal scores
   * at the k-th place it may keep another id than the smallest: no ties here. */
  g_jitter = 1;
  run_stream(RV_METRIC_L2, 1, 5, 0);
  g_jitter = 0;
}

/* ---- subscribing while batches are evaluated --------------------------------- */

/* A client subscribed from another thread: updates may come (on the applier
 * thread) before its subscribe call has returned the snapshot, so they wait
 * in a deep-copied queue until it is there, as serve's connections must. */
typedef struct pend {
  rv_subs_update_t u;
  rv_hit_t hits[64];
  const char *leave[64];
} pend_t;

typedef struct tclient {
  client_t c;
  qdesc_t qd;
  pthread_mutex_t mu;
  int ready, live;
  int pended; /* updates that came before the snapshot */
  pend_t *pend;
  int n_pend;
  const char *err;
} tclient_t;

#define NT 24

typedef struct conc {
  rv_subs_t *s;
  const rv_collection_conf_t *col;
  tclient_t tc[NT];
  qdesc_t *shared; /* queries of the main thread's subscribers: some new ones copy them */
  const char *err;
  _Atomic int done;
} conc_t;

static void deliver_t(void *ctx, uint64_t sub, void *user, const rv_subs_update_t *u) {
  (void)ctx, (void)sub;
  tclient_t *t = user;
  pthread_mutex_lock(&t->mu);
  if (t->ready) {
    if (!t->err) t->err = client_apply_err(&t->c, u);
  } else if (t->n_pend < 256) {
    pend_t *p = &t->pend[t->n_pend++];
    p->u = *u;
    int n = 0;
    for (int i = 0; i < u->n_enter; i++, n++)
      p->hits[n] = (rv_hit_t){strdup(u->enter[i].id), u->enter[i].metadata ? strdup(u->enter[i].metadata) : NULL,
                              u->enter[i].score};
    for (int i = 0; i < u->n_moved; i++, n++)
      p->hits[n] = (rv_hit_t){strdup(u->moved[i].id), u->moved[i].metadata ? strdup(u->moved[i].metadata) : NULL,
                              u->moved[i].score};
    for (int i = 0; i < u->n_leave; i++) p->leave[i] = strdup(u->leave[i]);
    p->u.enter = p->hits;
    p->u.moved = p->hits + u->n_enter;
    p->u.leave = p->leave;
  } else {
    t->err = "too many updates before the snapshot";
  }
  pthread_mutex_unlock(&t->mu);
}

static void pend_free(pend_t *p) {
  for (int i = 0; i < p->u.n_enter + p->u.n_moved; i++) {
    free(p->hits[i].id);
    free(p->hits[i].metadata);
  }
  for (int i = 0; i < p->u.n_leave; i++) free((char *)p->leave[i]);
}

static void *subscriber_thread(void *arg) {
  conc_t *cc = arg;
  uint64_t seed = 99;
  for (int i = 0; i < NT; i++) {
    tclient_t *t = &cc->tc[i];
    if (i % 3 == 0) {
      t->qd = cc->shared[next(&seed) % 4]; /* joins a query the evaluation already runs */
    } else {
      random_vec(&seed, t->qd.vec);
      t->qd.k = 1 + (int)(next(&seed) % MAXK);
      t->qd.f = (fdesc_t){(int)(next(&seed) % 4), (int)(next(&seed) % 3), (int)(next(&seed) % 3), 0, 5};
    }
    char key[128], errstr[256];
    rv_filter_t *f = make_filter(cc->col, &t->qd.f, key, sizeof key);
    rv_subs_snapshot_t snap;
    uint64_t id;
    if (rv_subs_subscribe(cc->s, t->qd.vec, t->qd.k, 0, f, key, t, &id, &snap, errstr, sizeof errstr)) {
      cc->err = "subscribe failed";
      return NULL;
    }
    if (i % 2) { /* slow to take its snapshot: updates queue up meanwhile */
      struct timespec ts = {0, 3000000};
      nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&t->mu);
    t->c.sub = id;
    client_snapshot(&t->c, &snap);
    t->pended = t->n_pend;
    for (int p = 0; p < t->n_pend && !t->err; p++) t->err = client_apply_err(&t->c, &t->pend[p].u);
    for (int p = 0; p < t->n_pend; p++) pend_free(&t->pend[p]);
    t->n_pend = 0;
    t->ready = t->live = 1;
    pthread_mutex_unlock(&t->mu);
    rv_hit_list_close(&snap.hits);
    if (i % 5 == 4) { /* and an earlier one leaves */
      tclient_t *o = &cc->tc[i - 2];
      if (rv_subs_unsubscribe(cc->s, o->c.sub) != RV_OK) cc->err = "unsubscribe failed";
      o->live = 0;
    }
    struct timespec ts = {0, 2000000}; /* pacing, so subscribes land between and during batches */
    nanosleep(&ts, NULL);
  }
  cc->done = 1;
  return NULL;
}

static void test_concurrent_subscribe(void **state) {
  (void)state;
  g_jitter = 1; /* the replica's search: no ties */
  static model_t m;
  memset(&m, 0, sizeof m);
  m.metric = RV_METRIC_L2;
  rv_collection_conf_t col = {0};
  snprintf(col.name, sizeof col.name, "docs");
  col.dim = DIM;
  col.fields[0] = (rv_field_conf_t){"c", RV_FIELD_KEYWORD};
  col.fields[1] = (rv_field_conf_t){"n", RV_FIELD_NUMBER};
  col.n_fields = 2;
  char errstr[256];
  m.attrs = rv_attrs_new(col.fields, col.n_fields, errstr, sizeof errstr);
  rv_replica_conf_t rc = {0};
  rc.collection = col;
  rc.ef_search = 500;
  m.replica = rv_replica_new(&rc, errstr, sizeof errstr);
  assert_non_null(m.replica);
  for (int i = 0; i < NIDS; i++) snprintf(m.ids[i], sizeof m.ids[i], "v%02d", i);

  rv_subs_conf_t sc = {0};
  sc.collection = col;
  sc.search = search;
  sc.search_ctx = &m;
  sc.deliver = deliver_t;
  sc.extra = 2;
  static conc_t cc;
  memset(&cc, 0, sizeof cc);
  cc.s = rv_subs_new(&sc, errstr, sizeof errstr);
  assert_non_null(cc.s);
  cc.col = &col;
  uint64_t seed = 11;
  qdesc_t shared[4];
  for (int q = 0; q < 4; q++) {
    random_vec(&seed, shared[q].vec);
    shared[q].k = 3;
    shared[q].f = (fdesc_t){q % 2, 1, 2, 0, 5};
  }
  cc.shared = shared;
  static tclient_t mains[4];
  for (int i = 0; i < NT; i++) {
    pthread_mutex_init(&cc.tc[i].mu, NULL);
    cc.tc[i].pend = calloc(256, sizeof *cc.tc[i].pend);
  }
  for (int q = 0; q < 4; q++) { /* subscribed up front, so the new ones have something to join */
    tclient_t *t = &mains[q];
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    t->qd = shared[q];
    char key[128];
    rv_filter_t *f = make_filter(&col, &t->qd.f, key, sizeof key);
    rv_subs_snapshot_t snap;
    assert_int_equal(rv_subs_subscribe(cc.s, t->qd.vec, t->qd.k, 0, f, key, t, &t->c.sub, &snap, errstr, sizeof errstr),
                     RV_OK);
    client_snapshot(&t->c, &snap);
    rv_hit_list_close(&snap.hits);
    t->ready = t->live = 1;
  }

  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, subscriber_thread, &cc), 0);
  int64_t offset = 0;
  rv_change_t chg[8];
  const rv_change_t *ptrs[8];
  for (int b = 0; b < 5000 && (b < 200 || !cc.done); b++) { /* bounded: ~1 s at most */
    int n = 1 + (int)(next(&seed) % 8);
    for (int j = 0; j < n; j++) {
      int i = (int)(next(&seed) % NIDS);
      rv_change_init(&chg[j]);
      chg[j].id = m.ids[i];
      chg[j].src_offset = offset++;
      if (m.live[i] && next(&seed) % 10 < 3) {
        chg[j].op = RV_OP_DELETE;
        m.live[i] = 0;
      } else {
        set_item(&m, i, &seed, 0);
        m.live[i] = 1;
        chg[j].op = RV_OP_UPSERT;
        chg[j].vector = m.vec[i];
        chg[j].dim = DIM;
        chg[j].attributes = m.meta[i];
      }
      assert_int_equal(rv_replica_apply(m.replica, &chg[j]), RV_OK);
      ptrs[j] = &chg[j];
    }
    rv_replica_applied_t batch = {ptrs, n, (uint64_t)b + 1};
    rv_subs_on_applied(cc.s, &batch);
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  pthread_join(th, NULL);
  if (cc.err) fail_msg("%s", cc.err);
  int checked = 0, pended = 0;
  for (int i = 0; i < NT + 4; i++) {
    tclient_t *t = i < NT ? &cc.tc[i] : &mains[i - NT];
    pended += t->pended;
    if (t->err) fail_msg("client %d: %s", i, t->err);
    if (t->live) {
      assert_true(t->ready);
      check_client(&m, &t->c, &t->qd);
      checked++;
    }
    client_clear(&t->c);
    free(t->pend);
    pthread_mutex_destroy(&t->mu);
  }
  rv_subs_stats_t st;
  rv_subs_stats(cc.s, &st);
  print_message("concurrent: %d clients checked (%d updates came before their snapshot), %llu queries, %llu updates, "
                "%llu delivered\n", checked, pended,
                (unsigned long long)st.queries, (unsigned long long)st.updates, (unsigned long long)st.delivered);
  assert_true(checked >= NT / 2);
  rv_subs_destroy(cc.s);
  rv_replica_destroy(m.replica);
  rv_attrs_destroy(m.attrs);
  g_jitter = 0;
}

static void test_bad_arguments(void **state) {
  (void)state;
  model_t m = {0};
  rv_subs_conf_t sc = {0};
  sc.collection.dim = DIM;
  char errstr[256] = "";
  assert_null(rv_subs_new(&sc, errstr, sizeof errstr)); /* no search */
  assert_true(errstr[0]);
  sc.search = search;
  sc.search_ctx = &m;
  sc.collection.dim = 0;
  assert_null(rv_subs_new(&sc, errstr, sizeof errstr));
  sc.collection.dim = DIM;
  rv_subs_t *s = rv_subs_new(&sc, errstr, sizeof errstr);
  assert_non_null(s);
  float q[DIM] = {0};
  uint64_t id;
  rv_subs_snapshot_t snap;
  assert_int_equal(rv_subs_subscribe(s, q, 0, 0, NULL, NULL, NULL, &id, &snap, errstr, sizeof errstr), RV_ERR_INVALID);
  assert_int_equal(rv_subs_subscribe(s, q, 5, 0, NULL, "{\"x\":1}", NULL, &id, &snap, errstr, sizeof errstr),
                   RV_ERR_INVALID);
  q[3] = NAN;
  assert_int_equal(rv_subs_subscribe(s, q, 5, 0, NULL, NULL, NULL, &id, &snap, errstr, sizeof errstr), RV_ERR_INVALID);
  q[3] = 0;
  assert_int_equal(rv_subs_subscribe(s, q, 5, 0, NULL, NULL, NULL, &id, &snap, errstr, sizeof errstr), RV_OK);
  assert_int_equal(snap.hits.n, 0);
  rv_hit_list_close(&snap.hits);
  /* A change of another dim is ignored, not a crash. */
  float v[DIM + 1] = {0};
  rv_change_t c;
  rv_change_init(&c);
  c.id = "x", c.op = RV_OP_UPSERT, c.vector = v, c.dim = DIM + 1;
  const rv_change_t *p = &c;
  rv_replica_applied_t b = {&p, 1, 1};
  rv_subs_on_applied(s, &b);
  rv_subs_stats_t st;
  rv_subs_stats(s, &st);
  assert_int_equal(st.changes, 0);
  assert_int_equal(rv_subs_unsubscribe(s, id), RV_OK);
  rv_subs_destroy(s);
  rv_subs_destroy(NULL);
}

/* Every SIMD kernel against the scalar one: equal up to float rounding when
 * it runs to the end, and stopping early only when the true sum is beyond
 * the threshold. */
static void test_kernels(void **state) {
  (void)state;
  const rv__subs_kernels_t *ref = rv__subs_kernels_get(RV_ISA_SCALAR);
  rv_isa_t isas[] = {RV_ISA_AVX2, RV_ISA_AVX512};
  uint64_t seed = 9;
  int tested = 0;
  for (int t = 0; t < 2; t++) {
    const rv__subs_kernels_t *k = rv__subs_kernels_get(isas[t]);
    if (!k) continue;
    tested++;
    for (size_t nb = 1; nb <= 13; nb += 3) {
      for (size_t nq = 0; nq <= 13; nq++) {
        size_t cap = nq + 3 * (nb % 2), n = nb * RV_SUBS_BLOCK;
        float *Q = aligned_alloc(64, (cap + 1) * n * sizeof(float)), *x = aligned_alloc(64, n * sizeof(float));
        float thr[16], got[16], want[16];
        uint32_t work[16];
        for (size_t i = 0; i < (cap + 1) * n; i++) Q[i] = (float)((double)(next(&seed) >> 11) / 9007199254740992.0 * 2 - 1);
        for (size_t i = 0; i < n; i++) x[i] = (float)((double)(next(&seed) >> 11) / 9007199254740992.0 * 2 - 1);
        float xn[16], Qn[16 * 16];
        for (size_t b = nb; b-- > 0;) { /* tail norms, as rv_subs keeps them */
          for (size_t j = 0; j <= cap; j++) {
            double a = b + 1 < nb ? (double)Qn[(b + 1) * (cap + 1) + j] * Qn[(b + 1) * (cap + 1) + j] : 0;
            for (size_t i = 0; i < RV_SUBS_BLOCK; i++) a += (double)Q[(b * (cap + 1) + j) * RV_SUBS_BLOCK + i] * Q[(b * (cap + 1) + j) * RV_SUBS_BLOCK + i];
            Qn[b * (cap + 1) + j] = (float)sqrt(a);
          }
          double a = b + 1 < nb ? (double)xn[b + 1] * xn[b + 1] : 0;
          for (size_t i = 0; i < RV_SUBS_BLOCK; i++) a += (double)x[b * RV_SUBS_BLOCK + i] * x[b * RV_SUBS_BLOCK + i];
          xn[b] = (float)sqrt(a);
        }
        ref->l2_many(x, xn, Q, Qn, cap + 1, nb, nq, NULL, NULL, want, NULL);
        for (size_t j = 0; j < nq; j++) { /* thresholds around the true value: some stop, some do not */
          int r = (int)(next(&seed) % 4);
          thr[j] = r == 0 ? INFINITY : r == 1 ? 0 : (float)(want[j] * (0.5 + (double)(next(&seed) % 100) / 100));
        }
        k->l2_many(x, xn, Q, Qn, cap + 1, nb, nq, thr, NULL, got, work);
        for (size_t j = 0; j < nq; j++) {
          double tol = 1e-4 * (1 + want[j]);
          if (got[j] <= thr[j]) {
            if (fabs(got[j] - want[j]) > tol) fail_msg("%s l2 nb %zu row %zu: %g, scalar %g", k->isa, nb, j, got[j], want[j]);
          } else {
            if (!(want[j] > thr[j] - tol) || got[j] > want[j] + tol)
              fail_msg("%s l2 nb %zu row %zu stopped at %g (thr %g), scalar %g", k->isa, nb, j, got[j], thr[j], want[j]);
          }
          /* one row alone (as rv_subs scores a candidate) gives the same bits as among many */
          float one, inf = INFINITY;
          uint32_t w1;
          if (got[j] <= thr[j]) {
            k->l2_many(x, xn, Q + j * RV_SUBS_BLOCK, Qn + j, cap + 1, nb, 1, &inf, NULL, &one, &w1);
            assert_true(one == got[j]);
          }
        }
        /* First blocks made for several vectors at once: the scalar sums, and
         * bit for bit what l2_many adds itself. */
        if (nq) {
          float f[2 * 16], fr[2 * 16], again[16];
          k->block0_many(x, 0, 2, Q, nq, f); /* x twice: stride 0 */
          ref->block0_many(x, 0, 2, Q, nq, fr);
          k->l2_many(x, xn, Q, Qn, cap + 1, nb, nq, thr, f + nq, again, work);
          for (size_t j = 0; j < nq; j++) {
            assert_true(f[j] == f[nq + j]);
            if (fabs(f[j] - fr[j]) > 1e-4 * (1 + fr[j])) fail_msg("%s block0 row %zu: %g, scalar %g", k->isa, j, f[j], fr[j]);
            if ((got[j] <= thr[j]) != (again[j] <= thr[j]) || (got[j] <= thr[j] && got[j] != again[j]))
              fail_msg("%s l2 from first blocks row %zu: %g, else %g (thr %g)", k->isa, j, again[j], got[j], thr[j]);
          }
        }
        ref->dot_many(x, Q, cap + 1, nb, nq, want);
        k->dot_many(x, Q, cap + 1, nb, nq, got);
        for (size_t j = 0; j < nq; j++)
          if (fabs(got[j] - want[j]) > 1e-4 * (1 + fabs(want[j])))
            fail_msg("%s dot nb %zu row %zu: %g, scalar %g", k->isa, nb, j, got[j], want[j]);
        free(Q);
        free(x);
      }
    }
  }
  print_message("SIMD kernels tested: %d (best: %s)\n", tested, rv__subs_kernels_get(RV_ISA_BEST)->isa);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kernels),
      cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_stream_l2),
      cmocka_unit_test(test_stream_l2_scalar),
      cmocka_unit_test(test_stream_ip),
      cmocka_unit_test(test_stream_replica),
      cmocka_unit_test(test_concurrent_subscribe),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
