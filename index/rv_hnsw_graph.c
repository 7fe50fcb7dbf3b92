/* HNSW graph algorithms: the layer search, insertion (neighbour selection by
 * hnswlib's heuristic, mutual connection), link repair after a delete, and
 * the public searches. See rv_hnsw_internal.h for the memory discipline. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "rv_hnsw.h"
#include "rv_hnsw_internal.h"

/* ---- heaps of (distance, id): ordered by distance, then id --------------- */

static inline int cand_lt(rv__cand_t a, rv__cand_t b) { return a.d < b.d || (a.d == b.d && a.id < b.id); }

static int heap_grow(rv__heap_t *hp) {
  int nc = hp->cap * 2;
  rv__cand_t *a = realloc(hp->a, (size_t)nc * sizeof *a);
  if (!a) return -1;
  hp->a = a;
  hp->cap = nc;
  return 0;
}

/* min-heap: a[0] is the closest */
static inline int minh_push(rv__heap_t *hp, float d, uint32_t id) {
  if (hp->n == hp->cap && heap_grow(hp)) return -1;
  rv__cand_t x = {d, id};
  int i = hp->n++;
  while (i > 0) {
    int p = (i - 1) >> 1;
    if (!cand_lt(x, hp->a[p])) break;
    hp->a[i] = hp->a[p];
    i = p;
  }
  hp->a[i] = x;
  return 0;
}

static inline void minh_pop(rv__heap_t *hp) {
  rv__cand_t x = hp->a[--hp->n];
  int i = 0, n = hp->n;
  for (;;) {
    int l = 2 * i + 1;
    if (l >= n) break;
    int m = l + 1 < n && cand_lt(hp->a[l + 1], hp->a[l]) ? l + 1 : l;
    if (!cand_lt(hp->a[m], x)) break;
    hp->a[i] = hp->a[m];
    i = m;
  }
  hp->a[i] = x;
}

/* max-heap: a[0] is the farthest */
static inline int maxh_push(rv__heap_t *hp, float d, uint32_t id) {
  if (hp->n == hp->cap && heap_grow(hp)) return -1;
  rv__cand_t x = {d, id};
  int i = hp->n++;
  while (i > 0) {
    int p = (i - 1) >> 1;
    if (!cand_lt(hp->a[p], x)) break;
    hp->a[i] = hp->a[p];
    i = p;
  }
  hp->a[i] = x;
  return 0;
}

static inline void maxh_pop(rv__heap_t *hp) {
  rv__cand_t x = hp->a[--hp->n];
  int i = 0, n = hp->n;
  for (;;) {
    int l = 2 * i + 1;
    if (l >= n) break;
    int m = l + 1 < n && cand_lt(hp->a[l], hp->a[l + 1]) ? l + 1 : l;
    if (!cand_lt(x, hp->a[m])) break;
    hp->a[i] = hp->a[m];
    i = m;
  }
  hp->a[i] = x;
}

static int cand_cmp(const void *pa, const void *pb) {
  rv__cand_t a = *(const rv__cand_t *)pa, b = *(const rv__cand_t *)pb;
  return cand_lt(a, b) ? -1 : cand_lt(b, a) ? 1 : 0;
}

/* ---- distances ------------------------------------------------------------ */

/* The traversal distance from the prepared query to a code. */
static inline float code_dist(const rv_hnsw_t *h, const rv__hnsw_ctx_t *c, const unsigned char *code) {
  size_t d = (size_t)h->dim;
  switch (h->dist_kind) {
  case RV__D_FLOAT_L2: return h->k->l2sq(c->qf, (const float *)code, d);
  case RV__D_FLOAT_DOT: return h->dot_bias - h->k->dot(c->qf, (const float *)code, d);
  case RV__D_SQ8_L2: {
    float norm;
    memcpy(&norm, code + h->sq8_norm_off, sizeof norm);
    return rv_sq8_distance_l2(h->k, &c->qy, code, norm);
  }
  case RV__D_SQ8_DOT: return h->dot_bias - rv_sq8_inner_product(h->k, &c->qy, code);
  default: return h->dot_bias + h->k->pq_adc(c->qc, code, (size_t)h->pq_m);
  }
}

static inline void prefetch_rec(const rv_hnsw_t *h, uint32_t s) {
  const char *p = (const char *)rv__hnsw_rec(h, s);
  __builtin_prefetch(p);
  __builtin_prefetch(p + 64);
  __builtin_prefetch(p + 128);
  __builtin_prefetch(p + 192);
}

static inline uint32_t state_of(const rv_hnsw_t *h, uint32_t s) {
  return atomic_load_explicit(rv__hnsw_state(h, s), memory_order_acquire);
}

static inline int max_links(const rv_hnsw_t *h, int l) { return l ? h->maxM : h->maxM0; }

/* Copies the list of s at level l into out; returns its length. Above level
 * 0, links to slots that no longer reach level l are dropped: the slot was
 * deleted and reused with a lower level after the link was made (the repair
 * only reaches the in-links held by the deleted node's own neighbours). */
static inline int read_links(const rv_hnsw_t *h, uint32_t s, int l, uint32_t *out) {
  if (l > 0 && rv__hnsw_slot(h, s)->level < l) return 0;
  _Atomic uint32_t *ll = rv__hnsw_links(h, s, l);
  int n = (int)atomic_load_explicit(&ll[0], memory_order_acquire);
  int mx = max_links(h, l);
  if (n > mx) n = mx;
  if (l == 0) {
    for (int j = 0; j < n; j++) out[j] = atomic_load_explicit(&ll[1 + j], memory_order_acquire);
    return n;
  }
  int m = 0;
  for (int j = 0; j < n; j++) {
    uint32_t id = atomic_load_explicit(&ll[1 + j], memory_order_acquire);
    if (rv__hnsw_slot(h, id)->level >= l) out[m++] = id;
  }
  return m;
}

/* ---- layer search ---------------------------------------------------------- */

enum { ACCEPT_BUILD, ACCEPT_SEARCH };

typedef struct accept {
  int mode;
  uint32_t self;                  /* BUILD: the node being inserted */
  const rv_hnsw_filter_t *filter; /* SEARCH: optional */
} accept_t;

static inline int accepts(const rv_hnsw_t *h, const accept_t *a, uint32_t s) {
  uint32_t st = state_of(h, s);
  if (a->mode == ACCEPT_BUILD) return s != a->self && st != RV__SLOT_DELETED;
  if (st != RV__SLOT_LIVE) return 0;
  return !a->filter || !a->filter->accept || a->filter->accept(a->filter->ctx, s);
}

static inline uint16_t next_epoch(rv__hnsw_ctx_t *c) {
  if (++c->epoch == 0) {
    memset(c->visited, 0, (size_t)c->visited_n * sizeof *c->visited);
    c->epoch = 1;
  }
  return c->epoch;
}

/* Greedy descent on level l from *cur (distance *curd). */
static void greedy(const rv_hnsw_t *h, rv__hnsw_ctx_t *c, int l, uint32_t *cur, float *curd) {
  for (int changed = 1; changed;) {
    changed = 0;
    int n = read_links(h, *cur, l, c->links);
    for (int j = 0; j < n; j++) {
      uint32_t id = c->links[j];
      float d = code_dist(h, c, rv__hnsw_rec(h, id));
      if (d < *curd) {
        *curd = d;
        *cur = id;
        changed = 1;
      }
    }
  }
}

/* hnswlib's searchBaseLayer: beam search on level l from ep. c->top receives
 * up to ef accepted nodes (max-heap). Rejected nodes are traversed; while
 * fewer than ef are accepted every reached node is expanded, so a selective
 * filter widens the search until ef matches or the reachable graph is done.
 * Returns -1 if a heap could not grow. */
static int search_layer(const rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t ep, float epd, int l, int ef,
                        const accept_t *acc) {
  uint16_t tag = next_epoch(c);
  uint16_t *vis = c->visited;
  uint32_t vis_n = c->visited_n;
  rv__heap_t *cand = &c->cand, *top = &c->top;
  cand->n = top->n = 0;
  float lower = INFINITY;
  if (ep < vis_n) vis[ep] = tag;
  if (acc->mode == ACCEPT_BUILD && acc->self < vis_n) vis[acc->self] = tag;
  if (accepts(h, acc, ep)) {
    if (maxh_push(top, epd, ep)) return -1;
    lower = epd;
  }
  if (minh_push(cand, epd, ep)) return -1;
  uint32_t *links = c->links;
  while (cand->n) {
    rv__cand_t cur = cand->a[0];
    if (cur.d > lower && top->n >= ef) break;
    minh_pop(cand);
    int n = read_links(h, cur.id, l, links);
    if (n) {
      if (links[0] < vis_n) __builtin_prefetch(vis + links[0]);
      prefetch_rec(h, links[0]);
    }
    for (int j = 0; j < n; j++) {
      uint32_t id = links[j];
      if (j + 1 < n) {
        uint32_t nx = links[j + 1];
        if (nx < vis_n) __builtin_prefetch(vis + nx);
        prefetch_rec(h, nx);
      }
      if (id >= vis_n || vis[id] == tag) continue;
      vis[id] = tag;
      float d = code_dist(h, c, rv__hnsw_rec(h, id));
      if (top->n < ef || d < lower) {
        if (minh_push(cand, d, id)) return -1;
        if (accepts(h, acc, id)) {
          if (maxh_push(top, d, id)) return -1;
          if (top->n > ef) maxh_pop(top);
          lower = top->a[0].d;
        }
      }
    }
  }
  return 0;
}

/* ---- neighbour selection ------------------------------------------------------ */

static int sel_reserve(rv__hnsw_ctx_t *c, int n) {
  if (n <= c->sel_cap) return 0;
  rv__cand_t *s = realloc(c->sel, (size_t)n * sizeof *s);
  if (!s) return -1;
  c->sel = s;
  c->sel_cap = n;
  return 0;
}

/* hnswlib's getNeighborsByHeuristic2: a[0..n) sorted by distance to the base;
 * keeps a candidate only if it is closer to the base than to every one kept
 * so far, up to m. In place; returns the count kept. */
static int heuristic(const rv_hnsw_t *h, rv__hnsw_ctx_t *c, rv__cand_t *a, int n, int m) {
  if (n <= m) return n;
  int kept = 0;
  for (int i = 0; i < n && kept < m; i++) {
    const float *vi = rv__hnsw_vec(h, a[i].id, c->va);
    int good = 1;
    for (int j = 0; j < kept && good; j++)
      if (rv__hnsw_fdist(h, vi, rv__hnsw_vec(h, a[j].id, c->vb)) < a[i].d) good = 0;
    if (good) a[kept++] = a[i];
  }
  return kept;
}

/* Under s's lock: adds add[0..nadd) (distances from s) to s's list at level
 * l; when the list would overflow, re-selects from the union (minus deleted
 * nodes) with the heuristic. Ids already present are skipped. */
static void merge_links_locked(const rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s, int l, const rv__cand_t *add,
                               int nadd) {
  _Atomic uint32_t *ll = rv__hnsw_links(h, s, l);
  int mx = max_links(h, l);
  int n = (int)atomic_load_explicit(&ll[0], memory_order_relaxed);
  if (n > mx) n = mx;
  int fresh = 0;
  rv__cand_t *un = c->un;
  for (int i = 0; i < nadd; i++) {
    int dup = add[i].id == s;
    for (int j = 0; j < n && !dup; j++) dup = atomic_load_explicit(&ll[1 + j], memory_order_relaxed) == add[i].id;
    for (int j = 0; j < fresh && !dup; j++) dup = un[j].id == add[i].id;
    if (!dup) un[fresh++] = add[i];
  }
  if (!fresh) return;
  if (n + fresh <= mx) {
    for (int i = 0; i < fresh; i++) atomic_store_explicit(&ll[1 + n + i], un[i].id, memory_order_release);
    atomic_store_explicit(&ll[0], (uint32_t)(n + fresh), memory_order_release);
    return;
  }
  const float *vs = rv__hnsw_vec(h, s, c->vc);
  int u = fresh;
  for (int j = 0; j < n; j++) {
    uint32_t id = atomic_load_explicit(&ll[1 + j], memory_order_relaxed);
    if (state_of(h, id) == RV__SLOT_DELETED) continue;
    un[u].id = id;
    un[u].d = rv__hnsw_fdist(h, vs, rv__hnsw_vec(h, id, c->va));
    u++;
  }
  qsort(un, (size_t)u, sizeof *un, cand_cmp);
  int kept = heuristic(h, c, un, u, mx);
  for (int i = 0; i < kept; i++) atomic_store_explicit(&ll[1 + i], un[i].id, memory_order_release);
  atomic_store_explicit(&ll[0], (uint32_t)kept, memory_order_release);
}

/* ---- insertion ---------------------------------------------------------------- */

/* Phase 1 of an insert: the neighbours of slot s (level `level`, vector in
 * c->qf, query prepared) on each level it shares with the graph, chosen by
 * the heuristic, into c->plan (M per level). Reads only other slots, so for a
 * reused slot it runs before the slot is rewritten. An empty index makes s
 * the entry point (c->plan_top = -1). */
rv_err_t rv__hnsw_plan(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s, int level) {
  c->plan_top = -1;
  pthread_mutex_lock(&h->ep_mu);
  uint64_t e = atomic_load_explicit(&h->ep, memory_order_acquire);
  if (e == RV__HNSW_EP_EMPTY) {
    atomic_store_explicit(&h->ep, ((uint64_t)level << 32) | s, memory_order_release);
    pthread_mutex_unlock(&h->ep_mu);
    c->plan_maxl = level;
    return RV_OK;
  }
  pthread_mutex_unlock(&h->ep_mu);
  uint32_t cur = (uint32_t)e;
  int maxl = (int)(e >> 32);
  c->plan_maxl = maxl;
  float curd = code_dist(h, c, rv__hnsw_rec(h, cur));
  for (int l = maxl; l > level; l--) greedy(h, c, l, &cur, &curd);
  accept_t acc = {ACCEPT_BUILD, s, NULL};
  int exact = h->dist_kind == RV__D_FLOAT_L2 || h->dist_kind == RV__D_FLOAT_DOT;
  int top = level < maxl ? level : maxl;
  for (int l = top; l >= 0; l--) {
    c->plan_n[l] = 0;
    if (search_layer(h, c, cur, curd, l, h->conf.ef_construction, &acc)) return RV_ERR_NOMEM;
    int n = c->top.n;
    if (!n) continue;
    if (sel_reserve(c, n)) return RV_ERR_NOMEM;
    memcpy(c->sel, c->top.a, (size_t)n * sizeof *c->sel);
    if (!exact) /* the graph is built on exact distances */
      for (int i = 0; i < n; i++) c->sel[i].d = rv__hnsw_fdist(h, c->qf, rv__hnsw_vec(h, c->sel[i].id, c->va));
    qsort(c->sel, (size_t)n, sizeof *c->sel, cand_cmp);
    cur = c->sel[0].id;
    curd = exact ? c->sel[0].d : code_dist(h, c, rv__hnsw_rec(h, cur));
    int kept = heuristic(h, c, c->sel, n, h->maxM);
    memcpy(c->plan + (size_t)l * (size_t)h->maxM, c->sel, (size_t)kept * sizeof *c->sel);
    c->plan_n[l] = kept;
  }
  c->plan_top = top;
  return RV_OK;
}

/* Phase 2: s's own lists from the plan (s not yet reachable, or reachable
 * only through stale links and then under the exclusive reuse lock). */
void rv__hnsw_write_own(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s) {
  rv__hnsw_slot_t *sl = rv__hnsw_slot(h, s);
  rv__hnsw_lock(sl);
  for (int l = 0; l <= c->plan_top; l++)
    merge_links_locked(h, c, s, l, c->plan + (size_t)l * (size_t)h->maxM, c->plan_n[l]);
  rv__hnsw_unlock(sl);
}

/* Phase 3: links from the neighbours to s, level 0 first, so that s is
 * reachable on a level only once it is on every level below (a search that
 * lands on s never meets a level without links), then the entry point. */
void rv__hnsw_connect(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s) {
  int level = rv__hnsw_slot(h, s)->level;
  for (int l = 0; l <= c->plan_top; l++) {
    const rv__cand_t *p = c->plan + (size_t)l * (size_t)h->maxM;
    for (int i = 0; i < c->plan_n[l]; i++) {
      uint32_t nb = p[i].id;
      rv__hnsw_slot_t *nsl = rv__hnsw_slot(h, nb);
      rv__cand_t me = {p[i].d, s};
      rv__hnsw_lock(nsl);
      if (nsl->level >= l && state_of(h, nb) != RV__SLOT_DELETED) merge_links_locked(h, c, nb, l, &me, 1);
      rv__hnsw_unlock(nsl);
    }
  }
  if (level > c->plan_maxl) {
    pthread_mutex_lock(&h->ep_mu);
    uint64_t e2 = atomic_load_explicit(&h->ep, memory_order_acquire);
    if (e2 == RV__HNSW_EP_EMPTY || level > (int)(e2 >> 32))
      atomic_store_explicit(&h->ep, ((uint64_t)level << 32) | s, memory_order_release);
    pthread_mutex_unlock(&h->ep_mu);
  }
}

/* ---- repair after delete ------------------------------------------------------- */

/* Reconnects the nodes that linked to deleted x, as hnswlib's
 * repairConnectionsForUpdate does: each neighbour n of x (that links back to
 * x) re-selects its list with the heuristic from its own links, x's links and
 * the links of x's neighbours (two hops), the closest ef_construction of them
 * scored exactly. */
void rv__hnsw_repair(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t x) {
  rv__hnsw_slot_t *xsl = rv__hnsw_slot(h, x);
  int lx = xsl->level;
  for (int l = 0; l <= lx; l++) {
    int mx = max_links(h, l);
    rv__hnsw_lock(xsl);
    int nx = read_links(h, x, l, c->xs);
    rv__hnsw_unlock(xsl);
    if (!nx) continue;
    /* the two-hop pool, deduplicated by a visited epoch */
    if (sel_reserve(c, nx * (mx + 1) + mx + 1)) return; /* no memory: links to x stay, x stays navigable */
    uint16_t tag = next_epoch(c);
    int np = 0;
    for (int i = 0; i < nx; i++) {
      uint32_t y = c->xs[i];
      int ny = read_links(h, y, l, c->links);
      for (int j = -1; j < ny; j++) {
        uint32_t id = j < 0 ? y : c->links[j];
        if (id == x || id >= c->visited_n || c->visited[id] == tag) continue;
        c->visited[id] = tag;
        if (state_of(h, id) == RV__SLOT_DELETED) continue;
        c->sel[np++].id = id;
      }
    }
    for (int i = 0; i < nx; i++) {
      uint32_t n = c->xs[i];
      if (n == x || state_of(h, n) == RV__SLOT_DELETED) continue;
      rv__hnsw_slot_t *nsl = rv__hnsw_slot(h, n);
      rv__hnsw_lock(nsl);
      if (nsl->level < l) {
        rv__hnsw_unlock(nsl);
        continue;
      }
      _Atomic uint32_t *ll = rv__hnsw_links(h, n, l);
      int cnt = (int)atomic_load_explicit(&ll[0], memory_order_relaxed);
      if (cnt > mx) cnt = mx;
      int has_x = 0;
      for (int j = 0; j < cnt && !has_x; j++) has_x = atomic_load_explicit(&ll[1 + j], memory_order_relaxed) == x;
      if (!has_x) {
        rv__hnsw_unlock(nsl);
        continue;
      }
      /* candidates: the pool plus n's own links not in it, minus n */
      const float *vn = rv__hnsw_vec(h, n, c->vc);
      rv__cand_t *cand = c->sel + np;
      int u = 0;
      for (int j = 0; j < cnt; j++) {
        uint32_t id = atomic_load_explicit(&ll[1 + j], memory_order_relaxed);
        if (id == x || (id < c->visited_n && c->visited[id] == tag) || state_of(h, id) == RV__SLOT_DELETED) continue;
        cand[u++].id = id;
      }
      rv__heap_t *top = &c->top;
      top->n = 0;
      int ef = h->conf.ef_construction > mx ? h->conf.ef_construction : mx;
      for (int j = 0; j < np + u; j++) {
        uint32_t id = j < np ? c->sel[j].id : cand[j - np].id;
        if (id == n) continue;
        float d = rv__hnsw_fdist(h, vn, rv__hnsw_vec(h, id, c->va));
        if (top->n < ef) {
          if (maxh_push(top, d, id)) break;
        } else if (cand_lt((rv__cand_t){d, id}, top->a[0])) {
          maxh_pop(top);
          maxh_push(top, d, id);
        }
      }
      int m = top->n;
      if (m > 2 * h->maxM0 + 2) m = 2 * h->maxM0 + 2; /* what c->un holds: the closest */
      qsort(top->a, (size_t)top->n, sizeof *top->a, cand_cmp);
      memcpy(c->un, top->a, (size_t)m * sizeof *c->un);
      int kept = heuristic(h, c, c->un, m, mx);
      for (int j = 0; j < kept; j++) atomic_store_explicit(&ll[1 + j], c->un[j].id, memory_order_release);
      atomic_store_explicit(&ll[0], (uint32_t)kept, memory_order_release);
      rv__hnsw_unlock(nsl);
    }
  }
}

/* ---- searches ------------------------------------------------------------------- */


/* Fills out from c->sel[0..n) (sorted), with slot versions. */
static void emit(const rv_hnsw_t *h, const rv__hnsw_ctx_t *c, int n, int k, rv_hnsw_result_t *out, int *n_out) {
  int m = n < k ? n : k;
  for (int i = 0; i < m; i++) {
    out[i].id = c->sel[i].id;
    out[i].score = c->sel[i].d;
    out[i].version = atomic_load_explicit(&rv__hnsw_slot(h, c->sel[i].id)->version, memory_order_relaxed);
  }
  *n_out = m;
}

/* One search; the caller holds the reuse lock shared and has loaded c->qf. */
static rv_err_t search_one(const rv_hnsw_t *h, rv__hnsw_ctx_t *c, int k, int ef, const rv_hnsw_filter_t *filter,
                           rv_hnsw_result_t *out, int *n_out) {
  *n_out = 0;
  uint64_t e = atomic_load_explicit(&((rv_hnsw_t *)h)->ep, memory_order_acquire);
  if (e == RV__HNSW_EP_EMPTY) return RV_OK;
  if (rv__hnsw_prepare_query(h, c)) return RV_ERR_INVALID;
  if (ef <= 0) ef = h->conf.ef_search;
  if (ef < k) ef = k;
  uint32_t cur = (uint32_t)e;
  float curd = code_dist(h, c, rv__hnsw_rec(h, cur));
  for (int l = (int)(e >> 32); l > 0; l--) greedy(h, c, l, &cur, &curd);
  accept_t acc = {ACCEPT_SEARCH, RV__HNSW_NONE, filter};
  if (search_layer(h, c, cur, curd, 0, ef, &acc)) return RV_ERR_NOMEM;
  int n = c->top.n;
  if (sel_reserve(c, n > 0 ? n : 1)) return RV_ERR_NOMEM;
  memcpy(c->sel, c->top.a, (size_t)n * sizeof *c->sel);
  qsort(c->sel, (size_t)n, sizeof *c->sel, cand_cmp);
  if (h->keep_floats) { /* re-rank the best approximations with exact distances */
    int r = h->conf.rerank > 0 ? h->conf.rerank : ef;
    if (r < k) r = k;
    if (r < n) n = r;
    for (int i = 0; i < n; i++) c->sel[i].d = rv__hnsw_fdist(h, c->qf, rv__hnsw_floats(h, c->sel[i].id));
    qsort(c->sel, (size_t)n, sizeof *c->sel, cand_cmp);
  }
  emit(h, c, n, k, out, n_out);
  return RV_OK;
}

static rv_err_t check_search(const rv_hnsw_t *h, const float *q, int dim, int k, const void *out, const int *n_out) {
  if (!h || !q || !out || !n_out || k < 1) return RV_ERR_INVALID;
  if (dim != h->dim) return RV_ERR_DIM;
  return RV_OK;
}

rv_err_t rv_hnsw_search(const rv_hnsw_t *h, const float *q, int dim, int k, int ef, const rv_hnsw_filter_t *filter,
                        rv_hnsw_result_t *out, int *n_out) {
  rv_err_t err = check_search(h, q, dim, k, out, n_out);
  if (n_out) *n_out = 0;
  if (err) return err;
  rv__hnsw_ctx_t *c = rv__hnsw_ctx_get(h);
  if (!c) return RV_ERR_NOMEM;
  err = rv__hnsw_load_query(h, q, c->qf);
  if (!err) {
    pthread_rwlock_rdlock(&((rv_hnsw_t *)h)->reuse_lock);
    err = search_one(h, c, k, ef, filter, out, n_out);
    pthread_rwlock_unlock(&((rv_hnsw_t *)h)->reuse_lock);
  }
  rv__hnsw_ctx_put(h, c);
  return err;
}

typedef struct batch {
  const rv_hnsw_t *h;
  const float *q;
  size_t n;
  int k, ef;
  const rv_hnsw_filter_t *filter;
  rv_hnsw_result_t *out;
  int *n_out;
  _Atomic size_t next;
  _Atomic int err;
} batch_t;

static void *batch_run(void *arg) {
  batch_t *b = arg;
  const rv_hnsw_t *h = b->h;
  rv__hnsw_ctx_t *c = rv__hnsw_ctx_get(h);
  if (!c) {
    int z = 0;
    atomic_compare_exchange_strong(&b->err, &z, RV_ERR_NOMEM);
    return NULL;
  }
  for (;;) {
    size_t i = atomic_fetch_add(&b->next, 1);
    if (i >= b->n) break;
    rv_hnsw_result_t *out = b->out + i * (size_t)b->k;
    b->n_out[i] = 0;
    rv_err_t err = rv__hnsw_load_query(h, b->q + i * (size_t)h->dim, c->qf);
    if (!err) {
      pthread_rwlock_rdlock(&((rv_hnsw_t *)h)->reuse_lock);
      err = search_one(h, c, b->k, b->ef, b->filter, out, &b->n_out[i]);
      pthread_rwlock_unlock(&((rv_hnsw_t *)h)->reuse_lock);
    }
    if (err) {
      int z = 0;
      atomic_compare_exchange_strong(&b->err, &z, err);
    }
  }
  rv__hnsw_ctx_put(h, c);
  return NULL;
}

rv_err_t rv_hnsw_search_batch(const rv_hnsw_t *h, const float *q, size_t n, int dim, int k, int ef,
                              const rv_hnsw_filter_t *filter, int threads, rv_hnsw_result_t *out, int *n_out) {
  rv_err_t err = check_search(h, q, dim, k, out, n_out);
  if (err) return err;
  batch_t b = {.h = h, .q = q, .n = n, .k = k, .ef = ef, .filter = filter, .out = out, .n_out = n_out};
  atomic_init(&b.next, 0);
  atomic_init(&b.err, 0);
  if (threads > 64) threads = 64;
  if ((size_t)threads > n) threads = (int)n;
  pthread_t tid[64];
  int started = 0;
  for (int t = 1; t < threads; t++) {
    if (pthread_create(&tid[started], NULL, batch_run, &b)) break;
    started++;
  }
  batch_run(&b);
  for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
  return atomic_load(&b.err);
}

rv_err_t rv_hnsw_search_exact(const rv_hnsw_t *h, const float *q, int dim, int k, const rv_hnsw_filter_t *filter,
                              rv_hnsw_result_t *out, int *n_out) {
  rv_err_t err = check_search(h, q, dim, k, out, n_out);
  if (n_out) *n_out = 0;
  if (err) return err;
  rv__hnsw_ctx_t *c = rv__hnsw_ctx_get(h);
  if (!c) return RV_ERR_NOMEM;
  err = rv__hnsw_load_query(h, q, c->qf);
  if (err) {
    rv__hnsw_ctx_put(h, c);
    return err;
  }
  if (rv__hnsw_prepare_query(h, c)) {
    rv__hnsw_ctx_put(h, c);
    return RV_ERR_INVALID;
  }
  pthread_rwlock_rdlock(&((rv_hnsw_t *)h)->reuse_lock);
  uint32_t bound = rv_hnsw_id_bound(h);
  int floats = h->conf.storage == RV_HNSW_FLOAT || h->keep_floats;
  rv__heap_t *top = &c->top;
  top->n = 0;
  for (uint32_t s = 0; s < bound && !err; s++) {
    if (state_of(h, s) != RV__SLOT_LIVE) continue;
    if (filter && filter->accept && !filter->accept(filter->ctx, s)) continue;
    float d = floats ? rv__hnsw_fdist(h, c->qf, rv__hnsw_vec(h, s, NULL)) : code_dist(h, c, rv__hnsw_rec(h, s));
    if (top->n < k) {
      if (maxh_push(top, d, s)) err = RV_ERR_NOMEM;
    } else if (cand_lt((rv__cand_t){d, s}, top->a[0])) {
      maxh_pop(top);
      maxh_push(top, d, s);
    }
  }
  if (!err && sel_reserve(c, top->n > 0 ? top->n : 1)) err = RV_ERR_NOMEM;
  if (!err) {
    int n = top->n;
    memcpy(c->sel, top->a, (size_t)n * sizeof *c->sel);
    qsort(c->sel, (size_t)n, sizeof *c->sel, cand_cmp);
    emit(h, c, n, k, out, n_out);
  }
  pthread_rwlock_unlock(&((rv_hnsw_t *)h)->reuse_lock);
  rv__hnsw_ctx_put(h, c);
  return err;
}
