#ifndef RV_FUZZ_INDEX_H
#define RV_FUZZ_INDEX_H
/* What the index fuzz targets (fuzz_snapshot, fuzz_hnsw_stream,
 * fuzz_quantizer) share: memory streams for rv_hnsw_read/_write and
 * rv_attrs_read/_write, checksum repair, and the checks every index that
 * loaded must pass.
 *
 * Checksum repair: a mutated input almost never carries a valid CRC-32C, so
 * without help the fuzzer would only ever exercise "checksum mismatch". The
 * targets run each input as it is AND with its checksums recomputed (the
 * quantizer's inside an HNSW stream, then the snapshot's), so mutations reach
 * the field validation behind them. */
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "rv_attrs.h"
#include "rv_bytes.h"
#include "rv_hnsw.h"

/* ---- memory streams --------------------------------------------------------- */

typedef struct fuzz_rd {
  const uint8_t *p;
  size_t len, pos;
} fuzz_rd_t;

/* rv_hnsw_read / rv_attrs_read callback: exactly len bytes or -1. */
static inline int fuzz_rd(void *ctx, void *buf, size_t len) {
  fuzz_rd_t *r = ctx;
  if (len > r->len - r->pos) return -1;
  memcpy(buf, r->p + r->pos, len);
  r->pos += len;
  return 0;
}

typedef struct fuzz_wr {
  uint8_t *p; /* owned; free() */
  size_t len, cap;
} fuzz_wr_t;

static inline int fuzz_wr(void *ctx, const void *buf, size_t len) {
  fuzz_wr_t *w = ctx;
  if (len > w->cap - w->len) {
    size_t nc = w->cap ? w->cap : 4096;
    while (nc - w->len < len) nc *= 2;
    uint8_t *np = realloc(w->p, nc);
    FUZZ_CHECK(np != NULL, "out of memory growing a %zu-byte stream", w->len);
    w->p = np;
    w->cap = nc;
  }
  if (len) memcpy(w->p + w->len, buf, len);
  w->len += len;
  return 0;
}

/* ---- checksum repair ------------------------------------------------------------ */

/* The offsets of rv_hnsw_write's header (rv_hnsw_io.c): storage, quantizer length, quantizer. */
#define FUZZ_HNSW_STORAGE_OFF 20
#define FUZZ_HNSW_QLEN_OFF 60
#define FUZZ_HNSW_QUANT_OFF 64

/* Rewrites the trailing CRC-32C of the len-byte quantizer blob at q (rv_sq8 and
 * rv_pq serialize the same way: the CRC of every byte before it, last). */
static inline void fuzz_fix_blob_crc(uint8_t *q, size_t len) {
  if (len >= 4) rv__put_u32(q + len - 4, rv__crc32c(0, q, len - 4));
}

/* Repairs the quantizer CRC inside an HNSW stream starting at buf + off. */
static inline void fuzz_fix_hnsw_crc(uint8_t *buf, size_t size, size_t off) {
  if (size < off + FUZZ_HNSW_QUANT_OFF || rv__get_u32(buf + off + FUZZ_HNSW_STORAGE_OFF) == 0) return;
  uint32_t qlen = rv__get_u32(buf + off + FUZZ_HNSW_QLEN_OFF);
  if (qlen <= size - off - FUZZ_HNSW_QUANT_OFF) fuzz_fix_blob_crc(buf + off + FUZZ_HNSW_QUANT_OFF, qlen);
}

/* ---- checks of a loaded index ------------------------------------------------------ */

typedef struct live_walk {
  const rv_hnsw_t *h;
  uint32_t bound;
  size_t n;
  float *vec; /* dim floats */
} live_walk_t;

static inline int fuzz_check_live(void *ctx, uint32_t iid) {
  live_walk_t *w = ctx;
  char id[RV_ID_MAX + 1];
  FUZZ_CHECK(iid < w->bound, "live slot %u, id bound %u", iid, w->bound);
  FUZZ_CHECK(rv_hnsw_is_live(w->h, iid), "foreach_live gave slot %u, which is not live", iid);
  rv_err_t e = rv_hnsw_external_id(w->h, iid, id, sizeof id);
  FUZZ_CHECK(e == RV_OK && id[0], "external_id of live slot %u: %s", iid, rv_err_str(e));
  uint32_t back = UINT32_MAX;
  e = rv_hnsw_internal_id(w->h, id, &back);
  FUZZ_CHECK(e == RV_OK && back == iid, "id '%s' of slot %u maps back to %u (%s)", id, iid, back, rv_err_str(e));
  const rv_hnsw_conf_t *c = rv_hnsw_conf(w->h);
  e = rv_hnsw_get_vector(w->h, iid, w->vec);
  if (c->storage == RV_HNSW_PQ && !c->pq_keep_floats) {
    FUZZ_CHECK(e == RV_ERR_STATE, "get_vector of PQ without floats: %s", rv_err_str(e));
  } else {
    FUZZ_CHECK(e == RV_OK, "get_vector of live slot %u: %s", iid, rv_err_str(e));
    for (int i = 0; i < c->dim; i++) FUZZ_CHECK(isfinite(w->vec[i]), "slot %u component %d is %g", iid, i, w->vec[i]);
  }
  w->n++;
  return 0;
}

static inline int fuzz_accept_even(void *ctx, uint32_t iid) {
  (void)ctx;
  return (iid & 1) == 0;
}

/* Results of a search: live slots, mapped to ids, best first. */
static inline void fuzz_check_results(const rv_hnsw_t *h, const rv_hnsw_result_t *res, int n, int k, int even_only,
                                      const char *what) {
  FUZZ_CHECK(n >= 0 && n <= k && (size_t)n <= rv_hnsw_count(h), "%s: %d results for k %d, %zu live", what, n, k,
             rv_hnsw_count(h));
  for (int i = 0; i < n; i++) {
    char id[RV_ID_MAX + 1];
    FUZZ_CHECK(rv_hnsw_is_live(h, res[i].id), "%s: result %d is slot %u, not live", what, i, res[i].id);
    FUZZ_CHECK(!even_only || (res[i].id & 1) == 0, "%s: the filter rejected slot %u", what, res[i].id);
    rv_err_t e = rv_hnsw_result_external_id(h, &res[i], id, sizeof id);
    FUZZ_CHECK(e == RV_OK, "%s: result %d (slot %u version %u): %s", what, i, res[i].id, res[i].version,
               rv_err_str(e));
    for (int j = 0; j < i; j++) FUZZ_CHECK(res[j].id != res[i].id, "%s: slot %u returned twice", what, res[i].id);
    if (i && !isnan(res[i].score) && !isnan(res[i - 1].score))
      FUZZ_CHECK(res[i - 1].score <= res[i].score, "%s: result %d scores %g after %g", what, i, res[i].score,
                 res[i - 1].score);
  }
}

/* Everything a reader of a loaded index does: iterate the ids, map them both
 * ways, read the vectors, search (graph, filtered, exact). */
static inline void fuzz_check_index(const rv_hnsw_t *h) {
  const rv_hnsw_conf_t *c = rv_hnsw_conf(h);
  FUZZ_CHECK(c->dim >= 1 && c->dim <= (1 << 16), "dim %d", c->dim);
  size_t dim = (size_t)c->dim;
  float *q = malloc(dim * sizeof *q), *vec = malloc(dim * sizeof *vec);
  FUZZ_CHECK(q && vec, "out of memory (dim %zu)", dim);
  live_walk_t w = {h, rv_hnsw_id_bound(h), 0, vec};
  FUZZ_CHECK(rv_hnsw_foreach_live(h, fuzz_check_live, &w) == 0, "foreach_live stopped early");
  FUZZ_CHECK(w.n == rv_hnsw_count(h), "foreach_live saw %zu slots, count says %zu", w.n, rv_hnsw_count(h));
  rv_hnsw_stats_t st;
  rv_hnsw_stats(h, &st);
  FUZZ_CHECK(st.count == w.n && st.slots == w.bound && st.count + st.deleted <= st.slots,
             "stats: count %zu deleted %zu slots %zu; walked %zu, bound %u", st.count, st.deleted, st.slots, w.n,
             w.bound);

  for (size_t i = 0; i < dim; i++) q[i] = 0.25f + 0.5f * (float)(i % 7); /* non-zero, for cosine */
  enum { K = 5 };
  rv_hnsw_result_t res[K];
  int n = -1;
  rv_err_t e = rv_hnsw_search(h, q, c->dim, K, 0, NULL, res, &n);
  FUZZ_CHECK(e == RV_OK, "search: %s", rv_err_str(e));
  fuzz_check_results(h, res, n, K, 0, "search");
  rv_hnsw_filter_t even = {fuzz_accept_even, NULL};
  e = rv_hnsw_search(h, q, c->dim, K, 8, &even, res, &n);
  FUZZ_CHECK(e == RV_OK, "filtered search: %s", rv_err_str(e));
  fuzz_check_results(h, res, n, K, 1, "filtered search");
  e = rv_hnsw_search_exact(h, q, c->dim, K, NULL, res, &n);
  FUZZ_CHECK(e == RV_OK, "exact search: %s", rv_err_str(e));
  fuzz_check_results(h, res, n, K, 0, "exact search");
  size_t want = rv_hnsw_count(h) < K ? rv_hnsw_count(h) : K;
  FUZZ_CHECK((size_t)n == want, "exact search returned %d of %zu live (k %d)", n, rv_hnsw_count(h), K);
  free(q);
  free(vec);
}

/* Attribute reads over every slot below the bound (NaN/missing are fine). */
static inline void fuzz_check_attrs(const rv_attrs_t *a) {
  int nf = -1;
  const rv_field_conf_t *f = rv_attrs_fields(a, &nf);
  FUZZ_CHECK(nf >= 0 && nf <= RV_MAX_FIELDS && (nf == 0 || f), "%d fields", nf);
  uint32_t bound = rv_attrs_slot_bound(a);
  FUZZ_CHECK(rv_attrs_count(a) <= bound, "count %zu above the slot bound %u", rv_attrs_count(a), bound);
  char buf[RV_ATTR_VALUE_MAX + 1];
  for (int i = 0; i < nf; i++) {
    FUZZ_CHECK(rv_attrs_field_index(a, f[i].name) == i, "field '%s' is not found at %d", f[i].name, i);
    for (uint32_t s = 0; s < bound && s < 256; s++) {
      if (f[i].type == RV_FIELD_KEYWORD) {
        rv_err_t e = rv_attrs_get_keyword(a, s, i, buf, sizeof buf);
        FUZZ_CHECK(e == RV_OK || e == RV_ERR_NOT_FOUND, "get_keyword(%u, %d): %s", s, i, rv_err_str(e));
        if (e == RV_OK)
          FUZZ_CHECK(rv_attrs_count_keyword(a, i, buf) >= 1, "slot %u holds '%s' of field %d, counted 0 times", s,
                     buf, i);
      } else {
        (void)rv_attrs_get_number(a, s, i);
      }
    }
  }
}

/* rv_hnsw_write -> rv_hnsw_read -> rv_hnsw_write gives the same bytes, and
 * the copy passes the same checks: what a reader accepted it can save and
 * load again. Returns nothing; aborts on a difference. */
static inline void fuzz_check_hnsw_round_trip(const rv_hnsw_t *h) {
  fuzz_wr_t w1 = {0}, w2 = {0};
  rv_err_t e = rv_hnsw_write(h, fuzz_wr, &w1);
  FUZZ_CHECK(e == RV_OK, "hnsw_write: %s", rv_err_str(e));
  fuzz_rd_t r = {w1.p, w1.len, 0};
  rv_hnsw_t *h2 = NULL;
  char err[512] = "";
  e = rv_hnsw_read(NULL, fuzz_rd, &r, &h2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK && h2, "reading back what hnsw_write wrote (%zu bytes): %s", w1.len, err);
  FUZZ_CHECK(r.pos == w1.len, "read back %zu of %zu bytes", r.pos, w1.len);
  e = rv_hnsw_write(h2, fuzz_wr, &w2);
  FUZZ_CHECK(e == RV_OK, "second hnsw_write: %s", rv_err_str(e));
  size_t at = 0;
  while (at < w1.len && at < w2.len && w1.p[at] == w2.p[at]) at++;
  FUZZ_CHECK(w1.len == w2.len && at == w1.len, "write/read/write differs: %zu vs %zu bytes, first at %zu", w1.len,
             w2.len, at);
  FUZZ_CHECK(rv_hnsw_count(h2) == rv_hnsw_count(h), "count %zu after the round trip, was %zu", rv_hnsw_count(h2),
             rv_hnsw_count(h));
  rv_hnsw_destroy(h2);
  free(w1.p);
  free(w2.p);
}

static inline void fuzz_check_attrs_round_trip(const rv_attrs_t *a) {
  fuzz_wr_t w1 = {0}, w2 = {0};
  rv_err_t e = rv_attrs_write(a, fuzz_wr, &w1);
  FUZZ_CHECK(e == RV_OK, "attrs_write: %s", rv_err_str(e));
  fuzz_rd_t r = {w1.p, w1.len, 0};
  rv_attrs_t *a2 = NULL;
  char err[512] = "";
  e = rv_attrs_read(fuzz_rd, &r, &a2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK && a2, "reading back what attrs_write wrote (%zu bytes): %s", w1.len, err);
  FUZZ_CHECK(r.pos == w1.len, "read back %zu of %zu bytes", r.pos, w1.len);
  e = rv_attrs_write(a2, fuzz_wr, &w2);
  FUZZ_CHECK(e == RV_OK, "second attrs_write: %s", rv_err_str(e));
  FUZZ_CHECK(w1.len == w2.len && !memcmp(w1.p, w2.p, w1.len), "attrs write/read/write differs: %zu vs %zu bytes",
             w1.len, w2.len);
  FUZZ_CHECK(rv_attrs_count(a2) == rv_attrs_count(a), "attrs count %zu after the round trip, was %zu",
             rv_attrs_count(a2), rv_attrs_count(a));
  rv_attrs_destroy(a2);
  free(w1.p);
  free(w2.p);
}

#endif
