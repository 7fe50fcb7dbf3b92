#include "rv_planner.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The exact path over posting lists scores vectors itself and must return
 * the same (score, id, version) triples as rv_hnsw_search_exact: it uses the
 * index's own query loading and distance (rv__hnsw_load_query,
 * rv__hnsw_fdist) and reads slot versions, which rv_hnsw.h does not expose. */
#include "rv_hnsw_internal.h"

#define SAMPLES 1024
#define SCAN_ALL_SLOTS 16384

typedef struct prep {
  rv__cfilter_t cf;
  int filtered;  /* f has clauses */
  uint32_t *ids; /* EXACT candidates (matching live slots when counted), or NULL */
  size_t n_ids;
  rv_plan_t plan;
} prep_t;

static void prep_close(prep_t *p) {
  if (p->filtered) rv__cfilter_close(&p->cf);
  free(p->ids);
  p->ids = NULL;
}

static int is_match(const rv_hnsw_t *h, const rv__cfilter_t *cf, uint32_t s) {
  return rv_hnsw_is_live(h, s) && rv__cfilter_accept((void *)cf, s);
}

/* Resolves f, counts or estimates its matches and picks the path. */
static rv_err_t prepare(const rv_hnsw_t *h, const rv_attrs_t *a, const rv_filter_t *f, int k, int ef,
                        rv_plan_mode_t mode, prep_t *p, char *errstr, size_t es) {
  memset(p, 0, sizeof *p);
  if (k < 1) return rv_errf(RV_ERR_INVALID, errstr, es, "planner: k = %d", k);
  if ((unsigned)mode > RV_PLAN_GRAPH) return rv_errf(RV_ERR_INVALID, errstr, es, "planner: unknown mode %d", mode);
  const rv_hnsw_conf_t *conf = rv_hnsw_conf(h);
  size_t live = rv_hnsw_count(h);
  int ef_eff = ef > 0 ? ef : conf->ef_search;
  if (ef_eff < k) ef_eff = k;
  double thr = sqrt((double)ef_eff * 2.0 * conf->M * (double)live);
  if (thr < 50.0 * k) thr = 50.0 * k;
  p->plan.live = live;
  p->plan.threshold = thr;
  p->filtered = f && rv_filter_n_clauses(f) > 0;
  if (!p->filtered) {
    p->plan.matches = live;
    p->plan.matches_exact = 1;
    p->plan.path = mode == RV_PLAN_EXACT ? RV_PLAN_EXACT : RV_PLAN_GRAPH;
    return RV_OK;
  }
  if (!a) return rv_errf(RV_ERR_INVALID, errstr, es, "planner: a filter needs the attribute store");

  size_t copy_cap = (size_t)(4 * thr) + 4096;
  rv_err_t err = RV_OK;
  int sampled = 0;
  size_t n_sample = 0, sample_hits = 0, driver_count = 0;
  uint32_t sample[SAMPLES];

  rv__attrs_rdlock(a);
  err = rv__filter_compile_locked(f, a, &p->cf, errstr, es);
  if (err) {
    rv__attrs_unlock(a);
    p->filtered = 0;
    return err;
  }
  const rv__fclause_t *drv = p->cf.n > 0 && !p->cf.c[0].is_range ? &p->cf.c[0] : NULL;
  if (!p->cf.never && drv) {
    driver_count = drv->count;
    if (driver_count <= copy_cap) {
      p->ids = malloc((driver_count ? driver_count : 1) * sizeof *p->ids);
      if (!p->ids) err = RV_ERR_NOMEM;
      for (uint32_t j = 0; !err && j < drv->n_codes; j++) {
        const uint32_t *ids;
        size_t n = rv__attrs_posting_locked(a, drv->field, drv->codes[j], &ids);
        memcpy(p->ids + p->n_ids, ids, n * sizeof *ids);
        p->n_ids += n;
      }
    } else {
      /* Evenly spaced positions in the concatenation of the driver's lists. */
      size_t step = driver_count / SAMPLES, base = 0;
      for (uint32_t j = 0; j < drv->n_codes && n_sample < SAMPLES; j++) {
        const uint32_t *ids;
        size_t n = rv__attrs_posting_locked(a, drv->field, drv->codes[j], &ids);
        for (size_t pos = n_sample * step; pos < base + n && n_sample < SAMPLES; pos = n_sample * step)
          sample[n_sample++] = ids[pos - base];
        base += n;
      }
      sampled = 1;
    }
  }
  rv__attrs_unlock(a);
  if (err) {
    prep_close(p);
    return rv_errf(err, errstr, es, "planner: out of memory");
  }

  if (p->cf.never) {
    p->plan.matches_exact = 1;
  } else if (p->ids) {
    size_t m = 0; /* keep the matching live ones: the candidates of the exact path */
    for (size_t i = 0; i < p->n_ids; i++)
      if (is_match(h, &p->cf, p->ids[i])) p->ids[m++] = p->ids[i];
    p->n_ids = m;
    p->plan.matches = m;
    p->plan.matches_exact = 1;
  } else if (sampled) {
    for (size_t i = 0; i < n_sample; i++) sample_hits += is_match(h, &p->cf, sample[i]);
    p->plan.matches = (size_t)((double)driver_count * sample_hits / (n_sample ? n_sample : 1));
  } else {
    uint32_t bound = rv_hnsw_id_bound(h);
    if (bound <= SCAN_ALL_SLOTS) {
      size_t m = 0;
      for (uint32_t s = 0; s < bound; s++) m += is_match(h, &p->cf, s);
      p->plan.matches = m;
      p->plan.matches_exact = 1;
    } else {
      for (uint32_t i = 0; i < SAMPLES; i++)
        sample_hits += is_match(h, &p->cf, (uint32_t)((uint64_t)bound * i / SAMPLES));
      p->plan.matches = (size_t)((double)bound * sample_hits / SAMPLES);
    }
  }
  if (p->plan.matches > live) p->plan.matches = live;
  if (mode == RV_PLAN_AUTO) mode = (double)p->plan.matches <= thr ? RV_PLAN_EXACT : RV_PLAN_GRAPH;
  p->plan.path = mode;
  p->plan.via_postings = mode == RV_PLAN_EXACT && p->ids != NULL;
  return RV_OK;
}

rv_err_t rv_planner_plan(const rv_hnsw_t *h, const rv_attrs_t *a, const rv_filter_t *f, int k, int ef,
                         rv_plan_mode_t mode, rv_plan_t *plan, char *errstr, size_t errstr_size) {
  prep_t p;
  rv_err_t err = prepare(h, a, f, k, ef, mode, &p, errstr, errstr_size);
  if (err) return err;
  *plan = p.plan;
  prep_close(&p);
  return RV_OK;
}

/* (score, id) order: the contract's "ties by smaller internal id". */
static int res_lt(const rv_hnsw_result_t *x, const rv_hnsw_result_t *y) {
  return x->score < y->score || (x->score == y->score && x->id < y->id);
}

static int res_cmp(const void *pa, const void *pb) {
  const rv_hnsw_result_t *x = pa, *y = pb;
  return res_lt(x, y) ? -1 : res_lt(y, x) ? 1 : 0;
}

/* Max-heap on (score, id) of size n in out[]. */
static void sift_down(rv_hnsw_result_t *a, int n, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && res_lt(&a[m], &a[l])) m = l;
    if (r < n && res_lt(&a[m], &a[r])) m = r;
    if (m == i) return;
    rv_hnsw_result_t t = a[i];
    a[i] = a[m];
    a[m] = t;
    i = m;
  }
}

static void sift_up(rv_hnsw_result_t *a, int i) {
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (!res_lt(&a[parent], &a[i])) return;
    rv_hnsw_result_t t = a[i];
    a[i] = a[parent];
    a[parent] = t;
    i = parent;
  }
}

/* Scores the candidate slots (re-checked: live, still matching) with the
 * index's float vectors. */
static rv_err_t exact_postings(const rv_hnsw_t *h, const prep_t *p, const float *q, int k, rv_hnsw_result_t *out,
                               int *n_out) {
  float *qf = malloc((size_t)h->dim * sizeof *qf);
  if (!qf) return RV_ERR_NOMEM;
  rv_err_t err = rv__hnsw_load_query(h, q, qf);
  if (err) {
    free(qf);
    return err;
  }
  int n = 0;
  rv_hnsw_read_lock(h);
  for (size_t i = 0; i < p->n_ids; i++) {
    uint32_t s = p->ids[i];
    if (!is_match(h, &p->cf, s)) continue;
    const float *v = rv_hnsw_vector(h, s);
    if (!v) continue;
    rv_hnsw_result_t r = {s, rv__hnsw_fdist(h, qf, v),
                          atomic_load_explicit(&rv__hnsw_slot(h, s)->version, memory_order_relaxed)};
    if (n < k) {
      out[n] = r;
      sift_up(out, n++);
    } else if (res_lt(&r, &out[0])) {
      out[0] = r;
      sift_down(out, n, 0);
    }
  }
  rv_hnsw_read_unlock(h);
  free(qf);
  qsort(out, (size_t)n, sizeof *out, res_cmp);
  *n_out = n;
  return RV_OK;
}

rv_err_t rv_planner_search(const rv_hnsw_t *h, const rv_attrs_t *a, const rv_filter_t *f, const float *q, int dim,
                           int k, int ef, rv_plan_mode_t mode, rv_hnsw_result_t *out, int *n_out, rv_plan_t *plan,
                           char *errstr, size_t errstr_size) {
  if (n_out) *n_out = 0;
  if (!h || !q || !out || !n_out) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "planner: NULL argument");
  if (dim != h->dim)
    return rv_errf(RV_ERR_DIM, errstr, errstr_size, "planner: query has %d dimensions, the index %d", dim, h->dim);
  prep_t p;
  rv_err_t err = prepare(h, a, f, k, ef, mode, &p, errstr, errstr_size);
  if (err) return err;
  rv_hnsw_filter_t hf = {rv__cfilter_accept, &p.cf};
  const rv_hnsw_filter_t *filt = p.filtered ? &hf : NULL;
  if (p.filtered && p.cf.never) {
    /* Nothing can match; still validate the query like a search would. */
    float *qf = malloc((size_t)h->dim * sizeof *qf);
    err = qf ? rv__hnsw_load_query(h, q, qf) : RV_ERR_NOMEM;
    free(qf);
  } else if (p.plan.path == RV_PLAN_EXACT) {
    if (p.plan.via_postings && (h->conf.storage == RV_HNSW_FLOAT || h->keep_floats))
      err = exact_postings(h, &p, q, k, out, n_out);
    else {
      p.plan.via_postings = 0;
      err = rv_hnsw_search_exact(h, q, dim, k, filt, out, n_out);
    }
  } else {
    err = rv_hnsw_search(h, q, dim, k, ef, filt, out, n_out);
    if (!err && filt && *n_out < k) {
      p.plan.fallback = 1;
      err = rv_hnsw_search_exact(h, q, dim, k, filt, out, n_out);
    }
  }
  if (plan) *plan = p.plan;
  prep_close(&p);
  if (err == RV_ERR_INVALID)
    return rv_errf(err, errstr, errstr_size, "planner: invalid query (NaN, or zero under cosine)");
  if (err) return rv_errf(err, errstr, errstr_size, "planner: search failed: %s", rv_err_str(err));
  return RV_OK;
}
