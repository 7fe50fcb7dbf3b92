#include "rv_flat.h"
#include "rv_hash.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows are padded to a multiple of 16 floats so each starts on a 64-byte
 * boundary (one cache line, one AVX-512 load); the padding is kept zero. */
#define ROW_ALIGN 64
#define ROW_FLOATS (ROW_ALIGN / sizeof(float))
#define INITIAL_ROWS 16
#define NO_POS SIZE_MAX

struct rv_flat {
  int dim;
  rv_metric_t metric;
  size_t stride;     /* floats per row: dim rounded up to ROW_FLOATS */
  size_t count;      /* live rows; slots 0..count-1 are dense */
  size_t cap;        /* rows allocated */
  float *vecs;       /* cap * stride floats, 64-byte aligned; unit length for cosine */
  char **ids;        /* per slot, owned */
  char **meta;       /* per slot, owned, NULL when none */
  uint64_t *hashes;  /* per slot: rv__hash_id(ids[slot]), kept to probe and rehash cheaply */
  uint32_t *table;   /* id -> slot + 1 (0 = empty); linear probing, no tombstones */
  size_t table_cap;  /* power of two, at least 2 * count */
};

/* One candidate in the search heap. Ranked by the score the caller sees (the
 * double distance rounded to float), so equal reported scores are always in id
 * order. */
typedef struct cand {
  float d;
  uint32_t slot;
} cand_t;


static float *row(const rv_flat_t *f, size_t slot) { return f->vecs + slot * f->stride; }

/* Table position holding id, or NO_POS. */
static size_t find_pos(const rv_flat_t *f, const char *id, uint64_t h) {
  size_t mask = f->table_cap - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    uint32_t e = f->table[i];
    if (!e) return NO_POS;
    if (f->hashes[e - 1] == h && !strcmp(f->ids[e - 1], id)) return i;
  }
}

static void table_put(uint32_t *table, size_t table_cap, uint64_t h, uint32_t slot) {
  size_t mask = table_cap - 1, i = h & mask;
  while (table[i]) i = (i + 1) & mask;
  table[i] = slot + 1;
}

/* Empties position i by backward shift, so probes never need tombstones. */
static void table_remove_at(rv_flat_t *f, size_t i) {
  size_t mask = f->table_cap - 1, j = i;
  for (;;) {
    j = (j + 1) & mask;
    uint32_t e = f->table[j];
    if (!e) break;
    size_t home = f->hashes[e - 1] & mask;
    /* The entry at j may move into the hole unless its home lies in (i, j]. */
    if (((j - home) & mask) >= ((j - i) & mask)) {
      f->table[i] = e;
      i = j;
    }
  }
  f->table[i] = 0;
}

static rv_err_t table_resize(rv_flat_t *f, size_t new_cap) {
  uint32_t *t = calloc(new_cap, sizeof *t);
  if (!t) return RV_ERR_NOMEM;
  for (size_t s = 0; s < f->count; s++) table_put(t, new_cap, f->hashes[s], (uint32_t)s);
  free(f->table);
  f->table = t;
  f->table_cap = new_cap;
  return RV_OK;
}

/* Doubles the row arrays. On failure cap and every row are unchanged (an
 * array that did grow is merely larger than needed). */
static rv_err_t grow_rows(rv_flat_t *f) {
  size_t row_bytes = f->stride * sizeof(float);
  if (f->cap > SIZE_MAX / 2 / row_bytes || f->cap * 2 > UINT32_MAX - 1) return RV_ERR_NOMEM;
  size_t new_cap = f->cap * 2;
  char **ids = realloc(f->ids, new_cap * sizeof *ids);
  if (!ids) return RV_ERR_NOMEM;
  f->ids = ids;
  char **meta = realloc(f->meta, new_cap * sizeof *meta);
  if (!meta) return RV_ERR_NOMEM;
  f->meta = meta;
  uint64_t *hashes = realloc(f->hashes, new_cap * sizeof *hashes);
  if (!hashes) return RV_ERR_NOMEM;
  f->hashes = hashes;
  float *vecs = aligned_alloc(ROW_ALIGN, new_cap * row_bytes); /* size is a multiple of 64 */
  if (!vecs) return RV_ERR_NOMEM;
  memcpy(vecs, f->vecs, f->count * row_bytes);
  free(f->vecs);
  f->vecs = vecs;
  f->cap = new_cap;
  return RV_OK;
}

rv_flat_t *rv_flat_new(int dim, rv_metric_t metric) {
  if (dim < 1 || (metric != RV_METRIC_L2 && metric != RV_METRIC_COSINE && metric != RV_METRIC_IP)) {
    errno = EINVAL;
    return NULL;
  }
  rv_flat_t *f = calloc(1, sizeof *f);
  if (!f) goto nomem;
  f->dim = dim;
  f->metric = metric;
  f->stride = ((size_t)dim + ROW_FLOATS - 1) / ROW_FLOATS * ROW_FLOATS;
  f->cap = INITIAL_ROWS;
  f->table_cap = 2 * INITIAL_ROWS;
  if (f->stride > SIZE_MAX / sizeof(float) / INITIAL_ROWS) goto nomem;
  f->vecs = aligned_alloc(ROW_ALIGN, f->cap * f->stride * sizeof(float));
  f->ids = malloc(f->cap * sizeof *f->ids);
  f->meta = malloc(f->cap * sizeof *f->meta);
  f->hashes = malloc(f->cap * sizeof *f->hashes);
  f->table = calloc(f->table_cap, sizeof *f->table);
  if (!f->vecs || !f->ids || !f->meta || !f->hashes || !f->table) goto nomem;
  return f;
nomem:
  rv_flat_destroy(f);
  errno = ENOMEM;
  return NULL;
}

void rv_flat_destroy(rv_flat_t *f) {
  if (!f) return;
  for (size_t s = 0; s < f->count; s++) {
    free(f->ids[s]);
    free(f->meta[s]);
  }
  free(f->vecs);
  free(f->ids);
  free(f->meta);
  free(f->hashes);
  free(f->table);
  free(f);
}

/* Validates vec; for cosine also returns its norm (0 is rejected). */
static rv_err_t check_vec(const rv_flat_t *f, const float *vec, double *norm) {
  double ss = 0;
  for (int i = 0; i < f->dim; i++) {
    if (!isfinite(vec[i])) return RV_ERR_INVALID;
    ss += (double)vec[i] * vec[i];
  }
  *norm = sqrt(ss);
  if (f->metric == RV_METRIC_COSINE && *norm == 0) return RV_ERR_INVALID;
  return RV_OK;
}

static void write_row(rv_flat_t *f, size_t slot, const float *vec, double norm) {
  float *dst = row(f, slot);
  if (f->metric == RV_METRIC_COSINE) {
    for (int i = 0; i < f->dim; i++) dst[i] = (float)(vec[i] / norm);
  } else {
    memcpy(dst, vec, (size_t)f->dim * sizeof(float));
  }
  memset(dst + f->dim, 0, (f->stride - (size_t)f->dim) * sizeof(float));
}

rv_err_t rv_flat_upsert(rv_flat_t *f, const char *id, const float *vec, int dim, const char *metadata) {
  if (!f || !id || !*id || !vec) return RV_ERR_INVALID;
  if (dim != f->dim) return RV_ERR_DIM;
  double norm;
  rv_err_t err = check_vec(f, vec, &norm);
  if (err) return err;

  char *meta_copy = NULL;
  if (metadata && !(meta_copy = strdup(metadata))) return RV_ERR_NOMEM;
  uint64_t h = rv__hash_id(id);
  size_t pos = find_pos(f, id, h);
  if (pos != NO_POS) {
    size_t slot = f->table[pos] - 1;
    write_row(f, slot, vec, norm);
    free(f->meta[slot]);
    f->meta[slot] = meta_copy;
    return RV_OK;
  }

  char *id_copy = strdup(id);
  if (!id_copy) err = RV_ERR_NOMEM;
  if (!err && f->count == f->cap) err = grow_rows(f);
  if (!err && (f->count + 1) * 2 > f->table_cap) err = table_resize(f, f->table_cap * 2);
  if (err) {
    free(id_copy);
    free(meta_copy);
    return err;
  }
  size_t slot = f->count++;
  write_row(f, slot, vec, norm);
  f->ids[slot] = id_copy;
  f->meta[slot] = meta_copy;
  f->hashes[slot] = h;
  table_put(f->table, f->table_cap, h, (uint32_t)slot);
  return RV_OK;
}

rv_err_t rv_flat_delete(rv_flat_t *f, const char *id) {
  if (!f || !id) return RV_ERR_INVALID;
  size_t pos = find_pos(f, id, rv__hash_id(id));
  if (pos == NO_POS) return RV_ERR_NOT_FOUND;
  size_t slot = f->table[pos] - 1, last = f->count - 1;
  table_remove_at(f, pos);
  free(f->ids[slot]);
  free(f->meta[slot]);
  if (slot != last) {
    /* Keep slots dense: the last row moves into the hole and its table entry follows. */
    memcpy(row(f, slot), row(f, last), f->stride * sizeof(float));
    f->ids[slot] = f->ids[last];
    f->meta[slot] = f->meta[last];
    f->hashes[slot] = f->hashes[last];
    size_t mask = f->table_cap - 1, i = f->hashes[slot] & mask;
    while (f->table[i] != last + 1) i = (i + 1) & mask;
    f->table[i] = (uint32_t)slot + 1;
  }
  f->ids[last] = NULL;
  f->meta[last] = NULL;
  f->count--;
  return RV_OK;
}

size_t rv_flat_count(const rv_flat_t *f) { return f ? f->count : 0; }

void rv_hit_list_close(rv_hit_list_t *l) {
  if (!l) return;
  for (int i = 0; i < l->n; i++) {
    free(l->hits[i].id);
    free(l->hits[i].metadata);
  }
  free(l->hits);
  l->hits = NULL;
  l->n = 0;
}

/* The query is widened to double once, so every kernel accumulates in double. */
static double distance(rv_metric_t metric, const double *q, const float *x, int dim) {
  double s = 0;
  if (metric == RV_METRIC_L2) {
    for (int i = 0; i < dim; i++) {
      double d = q[i] - x[i];
      s += d * d;
    }
    return s;
  }
  for (int i = 0; i < dim; i++) s += q[i] * x[i];
  return metric == RV_METRIC_IP ? -s : 1.0 - s;
}

/* 1 if a ranks after b: farther, or equally far with a larger id. */
static int worse(const rv_flat_t *f, cand_t a, cand_t b) {
  if (a.d != b.d) return a.d > b.d;
  return strcmp(f->ids[a.slot], f->ids[b.slot]) > 0;
}

/* Max-heap on `worse`: the worst kept candidate sits at the root. */
static void sift_down(const rv_flat_t *f, cand_t *h, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && worse(f, h[l], h[m])) m = l;
    if (r < n && worse(f, h[r], h[m])) m = r;
    if (m == i) return;
    cand_t t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

static void sift_up(const rv_flat_t *f, cand_t *h, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!worse(f, h[i], h[p])) return;
    cand_t t = h[i];
    h[i] = h[p];
    h[p] = t;
    i = p;
  }
}

rv_err_t rv_flat_search(const rv_flat_t *f, const float *q, int dim, int k, rv_hit_list_t *out) {
  if (!f || !q || !out || out->hits || out->n || k < 0) return RV_ERR_INVALID;
  if (dim != f->dim) return RV_ERR_DIM;
  double norm;
  rv_err_t err = check_vec(f, q, &norm);
  if (err) return err;
  size_t n = (size_t)k < f->count ? (size_t)k : f->count;
  if (n == 0) return RV_OK;

  double *qd = malloc((size_t)dim * sizeof *qd);
  cand_t *heap = malloc(n * sizeof *heap);
  rv_hit_t *hits = calloc(n, sizeof *hits);
  if (!qd || !heap || !hits) {
    err = RV_ERR_NOMEM;
    goto done;
  }
  for (int i = 0; i < dim; i++) qd[i] = f->metric == RV_METRIC_COSINE ? q[i] / norm : q[i];

  size_t len = 0;
  for (size_t s = 0; s < f->count; s++) {
    cand_t c = {(float)distance(f->metric, qd, row(f, s), dim), (uint32_t)s};
    if (len < n) {
      heap[len] = c;
      sift_up(f, heap, len++);
    } else if (worse(f, heap[0], c)) {
      heap[0] = c;
      sift_down(f, heap, n, 0);
    }
  }
  /* Popping the worst each time fills the hits from the back: best first. */
  for (size_t i = n; i-- > 0;) {
    cand_t c = heap[0];
    heap[0] = heap[i];
    sift_down(f, heap, i, 0);
    hits[i].score = c.d;
    hits[i].id = strdup(f->ids[c.slot]);
    if (f->meta[c.slot]) hits[i].metadata = strdup(f->meta[c.slot]);
    if (!hits[i].id || (f->meta[c.slot] && !hits[i].metadata)) err = RV_ERR_NOMEM;
  }
  if (!err) {
    out->hits = hits;
    out->n = (int)n;
    hits = NULL;
  }
done:
  if (hits) {
    rv_hit_list_t tmp = {hits, (int)n};
    rv_hit_list_close(&tmp);
  }
  free(heap);
  free(qd);
  return err;
}
