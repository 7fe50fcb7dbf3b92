#ifndef RV_INDEX_TESTUTIL_H
#define RV_INDEX_TESTUTIL_H
/* Shared by the index tests: a seeded generator, an independent brute-force
 * reference (written from the score definitions in rv_flat.h, not from
 * rv_flat.c), and the check that compares a hit list against it.
 * Include after <cmocka.h>. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_flat.h"

/* fail_msg with both values, for doubles. */
#define assert_near(a, b, tol)                                                                          \
  do {                                                                                                  \
    double a_ = (a), b_ = (b), t_ = (tol);                                                              \
    if (!(fabs(a_ - b_) <= t_)) fail_msg("%s = %.9g but %s = %.9g (tolerance %g)", #a, a_, #b, b_, t_); \
  } while (0)

static inline uint64_t tu_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float tu_float(uint64_t *s) { return (float)((double)(tu_next(s) >> 11) / 9007199254740992.0 * 2 - 1); }

static inline void tu_fill(uint64_t *s, float *v, int dim) {
  for (int i = 0; i < dim; i++) v[i] = tu_float(s);
}

/* The score of rv_flat.h computed directly: l2 squared Euclidean, cosine
 * 1 - a.b / (|a||b|), ip -a.b. */
static inline double tu_distance(rv_metric_t m, const float *a, const float *b, int dim) {
  double s = 0, na = 0, nb = 0;
  for (int i = 0; i < dim; i++) {
    if (m == RV_METRIC_L2) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    else s += (double)a[i] * b[i];
    na += (double)a[i] * a[i];
    nb += (double)b[i] * b[i];
  }
  if (m == RV_METRIC_L2) return s;
  if (m == RV_METRIC_IP) return -s;
  return 1.0 - s / (sqrt(na) * sqrt(nb));
}

typedef struct tu_item {
  const char *id;
  const float *vec;
  const char *meta; /* NULL when none */
} tu_item_t;

typedef struct tu_ref {
  double d;
  const tu_item_t *item;
} tu_ref_t;

static inline int tu_ref_cmp(const void *pa, const void *pb) {
  const tu_ref_t *a = pa, *b = pb;
  if (a->d != b->d) return a->d < b->d ? -1 : 1;
  return strcmp(a->item->id, b->item->id);
}

static inline double tu_tol(double d) { return 1e-5 * (1 + fabs(d)); }

/* Asserts that got is the min(k, n) nearest of items to q, best first: the
 * same count, each score equal (within float rounding) to the reference's
 * score at that rank and to the hit's own recomputed distance, the reference's
 * id wherever its distance is not a near-tie, equal scores ordered by id, and
 * the stored metadata. */
static inline void tu_check_hits(const rv_hit_list_t *got, const tu_item_t *items, size_t n, rv_metric_t m,
                                 const float *q, int dim, int k) {
  tu_ref_t *ref = malloc((n ? n : 1) * sizeof *ref);
  assert_non_null(ref);
  for (size_t i = 0; i < n; i++) ref[i] = (tu_ref_t){tu_distance(m, q, items[i].vec, dim), &items[i]};
  qsort(ref, n, sizeof *ref, tu_ref_cmp);
  size_t want = (size_t)k < n ? (size_t)k : n;
  assert_int_equal(got->n, want);
  for (size_t i = 0; i < want; i++) {
    const rv_hit_t *h = &got->hits[i];
    double tol = tu_tol(ref[i].d);
    assert_near(h->score, ref[i].d, tol);
    const tu_item_t *it = NULL;
    for (size_t j = 0; j < n && !it; j++)
      if (!strcmp(items[j].id, h->id)) it = &items[j];
    if (!it) fail_msg("hit %zu: id '%s' is not in the index", i, h->id);
    assert_near(h->score, tu_distance(m, q, it->vec, dim), tol);
    int isolated = (i == 0 || ref[i].d - ref[i - 1].d > 2 * tol) && (i + 1 >= n || ref[i + 1].d - ref[i].d > 2 * tol);
    if (isolated) assert_string_equal(h->id, ref[i].item->id);
    if (it->meta) assert_string_equal(h->metadata, it->meta);
    else assert_null(h->metadata);
    if (i > 0) {
      const rv_hit_t *p = &got->hits[i - 1];
      if (p->score > h->score) fail_msg("hit %zu score %.9g before hit %zu score %.9g", i - 1, p->score, i, h->score);
      if (strcmp(p->id, h->id) == 0) fail_msg("id '%s' returned twice", h->id);
      if (p->score == h->score && strcmp(p->id, h->id) > 0)
        fail_msg("equal scores %.9g not ordered by id: '%s' before '%s'", h->score, p->id, h->id);
    }
  }
  free(ref);
}

#endif
