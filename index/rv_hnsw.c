/* HNSW core: configuration, slot storage, the id map, writes (upsert,
 * delete, slot reuse), id and vector access, stats. The graph algorithms are
 * in rv_hnsw_graph.c, the stream format in rv_hnsw_io.c. */
#include "rv_hnsw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "rv_hash.h"
#include "rv_hnsw_internal.h"
#include "rv_pq.h"
#include "rv_sq8.h"

#define MAX_DIM (1 << 16)

void rv_hnsw_conf_defaults(rv_hnsw_conf_t *conf) {
  memset(conf, 0, sizeof *conf);
  conf->metric = RV_METRIC_L2;
  conf->M = 16;
  conf->ef_construction = 100;
  conf->ef_search = 64;
  conf->storage = RV_HNSW_FLOAT;
  conf->pq_keep_floats = 1;
  conf->initial_capacity = 1024;
  conf->seed = 42;
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static int default_pq_m(int dim) {
  int m = dim / 8 > 0 ? dim / 8 : 1;
  while (dim % m) m--;
  return m;
}

/* ---- chunks and slots ------------------------------------------------- */

#define HUGE_PAGE ((size_t)2 << 20)

/* bytes of chunk memory, 64-byte aligned, zeroed if zero; freed with free().
 * From 2 MiB up it is aligned and rounded to 2 MiB and asks for transparent
 * huge pages: first touch then faults once per 2 MiB instead of once per
 * 4 KiB, which dominates filling a large chunk (loading a snapshot of
 * 60,000 x 784 floats: 0.6 s of page faults, a tenth of that with huge
 * pages on a VM with shadow paging). Where the kernel says no, it is the
 * same memory with small pages. */
static void *arena_alloc(size_t bytes, int zero) {
  if (bytes < HUGE_PAGE) return zero ? calloc(1, bytes ? bytes : 1) : aligned_alloc(64, round_up(bytes ? bytes : 1, 64));
  size_t len = round_up(bytes, HUGE_PAGE);
  void *p = aligned_alloc(HUGE_PAGE, len);
  if (!p) return NULL;
#ifdef MADV_HUGEPAGE
  (void)madvise(p, len, MADV_HUGEPAGE); /* advice only: no huge pages is no error */
#endif
  if (zero) memset(p, 0, bytes);
  return p;
}

/* Allocates chunk c. Caller holds alloc_mu (or owns h exclusively). */
static rv_err_t add_chunk(rv_hnsw_t *h, int c) {
  size_t n = (size_t)1 << (h->chunk_shift + (unsigned)c);
  unsigned char *recs = arena_alloc(n * h->rec_size, 0);
  rv__hnsw_slot_t *slots = arena_alloc(n * sizeof *slots, 1);
  float *floats = h->keep_floats ? arena_alloc(n * h->float_stride * sizeof(float), 0) : NULL;
  if (!recs || !slots || (h->keep_floats && !floats)) {
    free(recs);
    free(slots);
    free(floats);
    return RV_ERR_NOMEM;
  }
  atomic_store_explicit(&h->recs[c], recs, memory_order_release);
  atomic_store_explicit(&h->slots[c], slots, memory_order_release);
  atomic_store_explicit(&h->floats[c], floats, memory_order_release);
  h->n_chunks = c + 1;
  atomic_fetch_add_explicit(&h->capacity, n, memory_order_relaxed);
  return RV_OK;
}

/* Hands out a slot: a deleted one from the free list (*reused = 1) or a
 * fresh one, growing by a chunk when needed. */
static rv_err_t alloc_slot(rv_hnsw_t *h, uint32_t *out, int *reused) {
  rv_err_t err = RV_OK;
  pthread_mutex_lock(&h->alloc_mu);
  if (h->n_free) {
    *out = h->free_list[--h->n_free];
    *reused = 1;
  } else {
    uint32_t s = atomic_load_explicit(&h->n_slots, memory_order_relaxed);
    unsigned c;
    size_t off;
    if (s >= RV__HNSW_MAX_SLOTS) {
      err = RV_ERR_FULL;
    } else {
      rv__hnsw_locate(h, s, &c, &off);
      if ((int)c >= h->n_chunks) err = add_chunk(h, (int)c);
    }
    if (!err) {
      atomic_store_explicit(rv__hnsw_state(h, s), RV__SLOT_FREE, memory_order_relaxed);
      atomic_store_explicit(&h->n_slots, s + 1, memory_order_release);
      *out = s;
      *reused = 0;
    }
  }
  pthread_mutex_unlock(&h->alloc_mu);
  return err;
}

static void free_slot(rv_hnsw_t *h, uint32_t s) {
  pthread_mutex_lock(&h->alloc_mu);
  if (h->n_free == h->free_cap) {
    size_t nc = h->free_cap ? h->free_cap * 2 : 64;
    uint32_t *fl = realloc(h->free_list, nc * sizeof *fl);
    if (fl) {
      h->free_list = fl;
      h->free_cap = nc;
    }
  }
  if (h->n_free < h->free_cap) h->free_list[h->n_free++] = s; /* else the slot is just not reused */
  pthread_mutex_unlock(&h->alloc_mu);
}

rv_err_t rv__hnsw_reserve(rv_hnsw_t *h, uint32_t n_slots) {
  while (n_slots && h->n_chunks < RV__HNSW_MAX_CHUNKS) {
    unsigned c;
    size_t off;
    rv__hnsw_locate(h, n_slots - 1, &c, &off);
    if ((int)c < h->n_chunks) break;
    rv_err_t err = add_chunk(h, h->n_chunks);
    if (err) return err;
  }
  return RV_OK;
}

/* ---- the id map (under map_mu) ---------------------------------------- */

static size_t map_pos(const rv_hnsw_t *h, const char *id, uint32_t hash) {
  size_t mask = h->map_cap - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    uint32_t e = h->map[i];
    if (!e) return SIZE_MAX;
    rv__hnsw_slot_t *sl = rv__hnsw_slot(h, e - 1);
    if (sl->ext_hash == hash && !strcmp(sl->ext_id, id)) return i;
  }
}

uint32_t rv__hnsw_map_find_locked(const rv_hnsw_t *h, const char *id, uint32_t hash) {
  size_t i = map_pos(h, id, hash);
  return i == SIZE_MAX ? RV__HNSW_NONE : h->map[i] - 1;
}

static void map_put(uint32_t *map, size_t cap, uint32_t hash, uint32_t s) {
  size_t mask = cap - 1, i = hash & mask;
  while (map[i]) i = (i + 1) & mask;
  map[i] = s + 1;
}

static rv_err_t map_reserve(rv_hnsw_t *h, size_t n) {
  if (n * 2 <= h->map_cap) return RV_OK;
  size_t nc = h->map_cap ? h->map_cap : 64;
  while (n * 2 > nc) nc *= 2;
  uint32_t *m = calloc(nc, sizeof *m);
  if (!m) return RV_ERR_NOMEM;
  for (size_t i = 0; i < h->map_cap; i++)
    if (h->map[i]) map_put(m, nc, rv__hnsw_slot(h, h->map[i] - 1)->ext_hash, h->map[i] - 1);
  free(h->map);
  h->map = m;
  h->map_cap = nc;
  return RV_OK;
}

rv_err_t rv__hnsw_map_insert_locked(rv_hnsw_t *h, uint32_t s) {
  rv_err_t err = map_reserve(h, h->map_n + 1);
  if (err) return err;
  map_put(h->map, h->map_cap, rv__hnsw_slot(h, s)->ext_hash, s);
  h->map_n++;
  return RV_OK;
}

/* Empties position i by backward shift, so probes never need tombstones. */
static void map_remove_at(rv_hnsw_t *h, size_t i) {
  size_t mask = h->map_cap - 1, j = i;
  for (;;) {
    j = (j + 1) & mask;
    uint32_t e = h->map[j];
    if (!e) break;
    size_t home = rv__hnsw_slot(h, e - 1)->ext_hash & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) {
      h->map[i] = e;
      i = j;
    }
  }
  h->map[i] = 0;
  h->map_n--;
}

/* ---- search contexts --------------------------------------------------- */

void rv__hnsw_ctx_free(rv__hnsw_ctx_t *c) {
  if (!c) return;
  free(c->visited);
  free(c->cand.a);
  free(c->top.a);
  free(c->sel);
  free(c->qf);
  free(c->qc);
  free(c->qi);
  free(c->va);
  free(c->vb);
  free(c->vc);
  free(c->links);
  free(c->xs);
  free(c->un);
  free(c->plan);
  free(c);
}

static float *falloc(size_t n) { return aligned_alloc(64, round_up(n * sizeof(float), 64)); }

static rv__hnsw_ctx_t *ctx_new(const rv_hnsw_t *h) {
  rv__hnsw_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  size_t d = (size_t)h->dim;
  size_t qc = h->conf.storage == RV_HNSW_PQ ? (size_t)h->pq_m * RV_PQ_KSUB : 16;
  c->cand.cap = c->top.cap = 256;
  c->cand.a = malloc(256 * sizeof(rv__cand_t));
  c->top.a = malloc(256 * sizeof(rv__cand_t));
  c->sel_cap = 256;
  c->sel = malloc(256 * sizeof(rv__cand_t));
  c->qf = falloc(d);
  c->qc = falloc(qc);
  c->qi = aligned_alloc(64, round_up(rv_sq8_code_size(h->dim) * sizeof(int16_t), 64));
  c->va = falloc(d);
  c->vb = falloc(d);
  c->vc = falloc(d);
  c->links = malloc((size_t)h->maxM0 * sizeof(uint32_t));
  c->xs = malloc((size_t)h->maxM0 * sizeof(uint32_t));
  c->un = malloc((size_t)(2 * h->maxM0 + 2) * sizeof(rv__cand_t));
  c->plan = malloc((size_t)(RV__HNSW_MAX_LEVEL + 1) * (size_t)h->maxM * sizeof(rv__cand_t));
  if (!c->cand.a || !c->top.a || !c->sel || !c->qf || !c->qc || !c->qi || !c->va || !c->vb || !c->vc || !c->links ||
      !c->xs || !c->un || !c->plan) {
    rv__hnsw_ctx_free(c);
    return NULL;
  }
  return c;
}

rv__hnsw_ctx_t *rv__hnsw_ctx_get(const rv_hnsw_t *hc) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  rv__hnsw_ctx_t *c = NULL;
  pthread_mutex_lock(&h->pool_mu);
  if (h->n_pool) c = h->pool[--h->n_pool];
  pthread_mutex_unlock(&h->pool_mu);
  if (!c && !(c = ctx_new(h))) return NULL;
  uint32_t bound = atomic_load_explicit(&h->n_slots, memory_order_acquire);
  if (c->visited_n < bound) {
    size_t cap = atomic_load_explicit(&h->capacity, memory_order_relaxed);
    if (cap < bound) cap = bound;
    if (cap > RV__HNSW_MAX_SLOTS) cap = RV__HNSW_MAX_SLOTS;
    uint16_t *v = calloc(cap, sizeof *v);
    if (!v) {
      rv__hnsw_ctx_put(h, c);
      return NULL;
    }
    free(c->visited);
    c->visited = v;
    c->visited_n = (uint32_t)cap;
    c->epoch = 0;
  }
  return c;
}

void rv__hnsw_ctx_put(const rv_hnsw_t *hc, rv__hnsw_ctx_t *c) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  if (!c) return;
  pthread_mutex_lock(&h->pool_mu);
  if (h->n_pool == h->pool_cap) {
    int nc = h->pool_cap ? h->pool_cap * 2 : 8;
    rv__hnsw_ctx_t **p = realloc(h->pool, (size_t)nc * sizeof *p);
    if (p) {
      h->pool = p;
      h->pool_cap = nc;
    }
  }
  if (h->n_pool < h->pool_cap) {
    h->pool[h->n_pool++] = c;
    c = NULL;
  }
  pthread_mutex_unlock(&h->pool_mu);
  rv__hnsw_ctx_free(c);
}

/* ---- vectors, codes, distances ----------------------------------------- */

const float *rv__hnsw_vec(const rv_hnsw_t *h, uint32_t s, float *buf) {
  if (h->conf.storage == RV_HNSW_FLOAT) return (const float *)rv__hnsw_rec(h, s);
  if (h->keep_floats) return rv__hnsw_floats(h, s);
  rv_pq_decode(h->pq, rv__hnsw_rec(h, s), buf);
  return buf;
}

float rv__hnsw_fdist(const rv_hnsw_t *h, const float *a, const float *b) {
  if (h->conf.metric == RV_METRIC_L2) return h->k->l2sq(a, b, (size_t)h->dim);
  return h->dot_bias - h->k->dot(a, b, (size_t)h->dim);
}

void rv__hnsw_encode_sq8_tail(const rv_hnsw_t *h, unsigned char *code) {
  /* the padding is zeroed (the integer kernel reads it, times zero), then the norm */
  size_t n = h->sq8_norm_off;
  memset(code + h->dim, 0, n - (size_t)h->dim);
  float norm = rv_sq8_code_norm(h->sq8, code);
  memcpy(code + n, &norm, sizeof norm);
}

void rv__hnsw_encode(const rv_hnsw_t *h, const float *v, unsigned char *code) {
  switch (h->conf.storage) {
  case RV_HNSW_FLOAT: memcpy(code, v, (size_t)h->dim * sizeof(float)); break;
  case RV_HNSW_SQ8:
    rv_sq8_encode(h->sq8, v, code);
    rv__hnsw_encode_sq8_tail(h, code);
    break;
  case RV_HNSW_PQ: rv_pq_encode(h->pq, v, code); break;
  }
}

rv_err_t rv__hnsw_prepare_query(const rv_hnsw_t *h, rv__hnsw_ctx_t *c) {
  switch (h->dist_kind) {
  case RV__D_SQ8_L2: return rv_sq8_query_prepare_l2(h->sq8, c->qf, c->qi, &c->qy) ? RV_ERR_INVALID : RV_OK;
  case RV__D_SQ8_DOT: return rv_sq8_query_prepare_ip(h->sq8, c->qf, c->qi, &c->qy) ? RV_ERR_INVALID : RV_OK;
  case RV__D_PQ:
    if (h->conf.metric == RV_METRIC_L2) {
      rv_pq_adc_table_l2(h->pq, c->qf, c->qc);
    } else {
      size_t n = (size_t)h->pq_m * RV_PQ_KSUB;
      rv_pq_adc_table_ip(h->pq, c->qf, c->qc);
      for (size_t i = 0; i < n; i++) c->qc[i] = -c->qc[i]; /* adc then sums -dot */
    }
    return RV_OK;
  default: return RV_OK;
  }
}

/* Copies v into out, normalised under cosine. RV_ERR_INVALID for a
 * non-finite component or a zero cosine vector. */
static rv_err_t load_vector(const rv_hnsw_t *h, const float *v, float *out) {
  double nn = 0;
  for (int i = 0; i < h->dim; i++) {
    if (!isfinite(v[i])) return RV_ERR_INVALID;
    nn += (double)v[i] * v[i];
  }
  if (h->conf.metric != RV_METRIC_COSINE) {
    memcpy(out, v, (size_t)h->dim * sizeof(float));
    return RV_OK;
  }
  if (!(nn > 0) || !isfinite(nn)) return RV_ERR_INVALID;
  double inv = 1.0 / sqrt(nn);
  for (int i = 0; i < h->dim; i++) out[i] = (float)(v[i] * inv);
  return RV_OK;
}

rv_err_t rv__hnsw_load_query(const rv_hnsw_t *h, const float *q, float *out) { return load_vector(h, q, out); }

/* ---- lifecycle ---------------------------------------------------------- */

static rv_err_t check_conf(const rv_hnsw_conf_t *c, char *errstr, size_t es) {
  if (c->dim < 1 || c->dim > MAX_DIM) return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: dim %d out of 1..%d", c->dim, MAX_DIM);
  if (c->metric != RV_METRIC_L2 && c->metric != RV_METRIC_COSINE && c->metric != RV_METRIC_IP)
    return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: unknown metric %d", (int)c->metric);
  if (c->M < 2 || c->M > 256) return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: M %d out of 2..256", c->M);
  if (c->ef_construction < 1 || c->ef_search < 1)
    return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: ef_construction and ef_search must be >= 1");
  if (c->storage != RV_HNSW_FLOAT && c->storage != RV_HNSW_SQ8 && c->storage != RV_HNSW_PQ)
    return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: unknown storage %d", (int)c->storage);
  if (c->rerank < 0) return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: rerank must be >= 0");
  if (c->storage == RV_HNSW_PQ && c->pq_m && (c->pq_m < 1 || c->pq_m > c->dim || c->dim % c->pq_m))
    return rv_errf(RV_ERR_CONFIG, errstr, es, "hnsw: pq_m %d does not divide dim %d", c->pq_m, c->dim);
  return RV_OK;
}

rv_hnsw_t *rv_hnsw_new(const rv_hnsw_conf_t *conf, char *errstr, size_t errstr_size) {
  if (!conf) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "hnsw: no configuration");
    return NULL;
  }
  if (check_conf(conf, errstr, errstr_size)) return NULL;
  const rv_kernels_t *k = rv_kernels_get(RV_ISA_BEST);
  if (!k) k = rv_kernels_get(RV_ISA_SCALAR);
  rv_hnsw_t *h = calloc(1, sizeof *h);
  if (!h) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
    return NULL;
  }
  h->conf = *conf;
  if (h->conf.storage == RV_HNSW_PQ && !h->conf.pq_m) h->conf.pq_m = default_pq_m(conf->dim);
  if (h->conf.storage != RV_HNSW_PQ) h->conf.pq_m = 0;
  if (!h->conf.initial_capacity) h->conf.initial_capacity = 1024;
  h->k = k;
  h->dim = conf->dim;
  h->maxM = conf->M;
  h->maxM0 = 2 * conf->M;
  h->level_mult = 1.0 / log((double)conf->M);
  h->pq_m = h->conf.pq_m;
  h->sq8_norm_off = rv_sq8_code_size(conf->dim);
  h->code_bytes = conf->storage == RV_HNSW_FLOAT ? (size_t)conf->dim * sizeof(float)
                  : conf->storage == RV_HNSW_SQ8 ? h->sq8_norm_off + sizeof(float)
                                                 : (size_t)h->pq_m;
  h->state_off = round_up(h->code_bytes, 4);
  h->links0_off = h->state_off + 4;
  h->rec_size = round_up(h->links0_off + sizeof(uint32_t) * (size_t)(1 + h->maxM0), 64);
  h->keep_floats = conf->storage == RV_HNSW_SQ8 || (conf->storage == RV_HNSW_PQ && conf->pq_keep_floats);
  h->float_stride = h->keep_floats ? round_up((size_t)conf->dim, 16) : 0;
  int dot = conf->metric != RV_METRIC_L2;
  h->dot_bias = conf->metric == RV_METRIC_COSINE ? 1.0f : 0.0f;
  h->dist_kind = conf->storage == RV_HNSW_FLOAT ? (dot ? RV__D_FLOAT_DOT : RV__D_FLOAT_L2)
                 : conf->storage == RV_HNSW_SQ8 ? (dot ? RV__D_SQ8_DOT : RV__D_SQ8_L2)
                                                : RV__D_PQ;
  unsigned shift = 4;
  while (shift < 30 && ((size_t)1 << shift) < h->conf.initial_capacity) shift++;
  h->chunk_shift = shift;
  atomic_init(&h->ep, RV__HNSW_EP_EMPTY);
  pthread_mutex_init(&h->alloc_mu, NULL);
  pthread_mutex_init(&h->ep_mu, NULL);
  pthread_mutex_init(&h->map_mu, NULL);
  pthread_mutex_init(&h->pool_mu, NULL);
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  /* Writer-preferring, so that a stream of searches cannot starve slot reuse. */
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&h->reuse_lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  if (add_chunk(h, 0) || map_reserve(h, 16)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory for %zu slots", h->conf.initial_capacity);
    rv_hnsw_destroy(h);
    return NULL;
  }
  return h;
}

void rv_hnsw_destroy(rv_hnsw_t *h) {
  if (!h) return;
  uint32_t n = atomic_load(&h->n_slots);
  for (uint32_t s = 0; s < n; s++) {
    rv__hnsw_slot_t *sl = rv__hnsw_slot(h, s);
    free(sl->upper);
    free(sl->ext_id);
  }
  for (int c = 0; c < h->n_chunks; c++) {
    free(atomic_load(&h->recs[c]));
    free(atomic_load(&h->slots[c]));
    free(atomic_load(&h->floats[c]));
  }
  for (int i = 0; i < h->n_pool; i++) rv__hnsw_ctx_free(h->pool[i]);
  free(h->pool);
  free(h->free_list);
  free(h->map);
  rv_sq8_destroy(h->sq8);
  rv_pq_destroy(h->pq);
  pthread_mutex_destroy(&h->alloc_mu);
  pthread_mutex_destroy(&h->ep_mu);
  pthread_mutex_destroy(&h->map_mu);
  pthread_mutex_destroy(&h->pool_mu);
  pthread_rwlock_destroy(&h->reuse_lock);
  free(h);
}

const rv_hnsw_conf_t *rv_hnsw_conf(const rv_hnsw_t *h) { return &h->conf; }

/* ---- quantizers ------------------------------------------------------- */

int rv_hnsw_ready(const rv_hnsw_t *h) {
  return h->conf.storage == RV_HNSW_FLOAT || (h->conf.storage == RV_HNSW_SQ8 ? h->sq8 != NULL : h->pq != NULL);
}

static rv_err_t install_check(rv_hnsw_t *h, rv_hnsw_storage_t want, char *errstr, size_t es) {
  if (h->conf.storage != want)
    return rv_errf(RV_ERR_STATE, errstr, es, "hnsw: index storage is not %s", want == RV_HNSW_SQ8 ? "sq8" : "pq");
  if (atomic_load(&h->n_slots))
    return rv_errf(RV_ERR_STATE, errstr, es, "hnsw: the quantizer cannot change once vectors are stored");
  return RV_OK;
}

rv_err_t rv_hnsw_set_sq8(rv_hnsw_t *h, struct rv_sq8 *q, char *errstr, size_t errstr_size) {
  rv_err_t err;
  if (!h || !q) {
    rv_sq8_destroy(q);
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "hnsw: NULL argument");
  }
  if ((err = install_check(h, RV_HNSW_SQ8, errstr, errstr_size))) {
    rv_sq8_destroy(q);
    return err;
  }
  if (rv_sq8_dim(q) != h->dim) {
    int d = rv_sq8_dim(q);
    rv_sq8_destroy(q);
    return rv_errf(RV_ERR_DIM, errstr, errstr_size, "hnsw: sq8 dim %d, index dim %d", d, h->dim);
  }
  rv_sq8_destroy(h->sq8);
  h->sq8 = q;
  h->sq8_w = rv_sq8_l2_weights(q);
  return RV_OK;
}

rv_err_t rv_hnsw_set_pq(rv_hnsw_t *h, struct rv_pq *q, char *errstr, size_t errstr_size) {
  rv_err_t err;
  if (!h || !q) {
    rv_pq_destroy(q);
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "hnsw: NULL argument");
  }
  if ((err = install_check(h, RV_HNSW_PQ, errstr, errstr_size))) {
    rv_pq_destroy(q);
    return err;
  }
  if (rv_pq_dim(q) != h->dim || rv_pq_m(q) != h->pq_m) {
    int d = rv_pq_dim(q), m = rv_pq_m(q);
    rv_pq_destroy(q);
    return rv_errf(RV_ERR_DIM, errstr, errstr_size, "hnsw: pq dim %d m %d, index dim %d pq_m %d", d, m, h->dim,
                   h->pq_m);
  }
  rv_pq_destroy(h->pq);
  h->pq = q;
  return RV_OK;
}

rv_err_t rv_hnsw_train(rv_hnsw_t *h, const float *sample, size_t n, char *errstr, size_t errstr_size) {
  if (!h || !sample || n < 1) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "hnsw: train needs a sample");
  if (h->conf.storage == RV_HNSW_FLOAT)
    return rv_errf(RV_ERR_STATE, errstr, errstr_size, "hnsw: float storage has no quantizer to train");
  rv_err_t err = install_check(h, h->conf.storage, errstr, errstr_size);
  if (err) return err;
  size_t d = (size_t)h->dim;
  float *norm = NULL;
  if (h->conf.metric == RV_METRIC_COSINE) {
    if (!(norm = malloc(n * d * sizeof(float)))) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
    for (size_t i = 0; i < n; i++)
      if (load_vector(h, sample + i * d, norm + i * d)) {
        free(norm);
        return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "hnsw: sample row %zu is non-finite or zero", i);
      }
    sample = norm;
  }
  if (h->conf.storage == RV_HNSW_SQ8) {
    rv_sq8_t *q = NULL;
    err = rv_sq8_train(sample, n, h->dim, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT, &q, errstr, errstr_size);
    if (!err) err = rv_hnsw_set_sq8(h, q, errstr, errstr_size);
  } else {
    rv_pq_params_t p = {.m = h->pq_m, .iters = 0, .seed = h->conf.seed, .max_train = 0};
    rv_pq_t *q = NULL;
    err = rv_pq_train(sample, n, h->dim, &p, &q, errstr, errstr_size);
    if (!err) err = rv_hnsw_set_pq(h, q, errstr, errstr_size);
  }
  free(norm);
  return err;
}

/* ---- writes -------------------------------------------------------------- */

static int random_level(rv_hnsw_t *h) {
  uint64_t z = h->conf.seed + 0x9e3779b97f4a7c15ULL * (atomic_fetch_add(&h->level_ctr, 1) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  double u = ((double)(z >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
  double l = -log(u) * h->level_mult;
  return l >= RV__HNSW_MAX_LEVEL ? RV__HNSW_MAX_LEVEL : (int)l;
}

/* Moves the entry point off slot s (just deleted): to the live node of the
 * highest level, or empty. */
static void ep_move_off(rv_hnsw_t *h, uint32_t s) {
  pthread_mutex_lock(&h->ep_mu);
  uint64_t e = atomic_load(&h->ep);
  if (e != RV__HNSW_EP_EMPTY && (uint32_t)e == s) {
    uint32_t n = atomic_load_explicit(&h->n_slots, memory_order_acquire), best = RV__HNSW_NONE;
    int best_l = -1;
    for (uint32_t i = 0; i < n; i++) {
      if (i == s || atomic_load_explicit(rv__hnsw_state(h, i), memory_order_acquire) != RV__SLOT_LIVE) continue;
      int l = rv__hnsw_slot(h, i)->level;
      if (l > best_l) {
        best_l = l;
        best = i;
      }
    }
    atomic_store_explicit(&h->ep, best == RV__HNSW_NONE ? RV__HNSW_EP_EMPTY : ((uint64_t)best_l << 32) | best,
                          memory_order_release);
  }
  pthread_mutex_unlock(&h->ep_mu);
}

/* After s turned DELETED: entry point, link repair, free list. */
static void retire(rv_hnsw_t *h, uint32_t s, rv__hnsw_ctx_t *c) {
  ep_move_off(h, s);
  pthread_rwlock_rdlock(&h->reuse_lock);
  rv__hnsw_repair(h, c, s);
  pthread_rwlock_unlock(&h->reuse_lock);
  free_slot(h, s);
}

static rv_err_t check_id(const char *id) {
  if (!id || !*id) return RV_ERR_INVALID;
  if (strnlen(id, RV_ID_MAX + 1) > RV_ID_MAX) return RV_ERR_INVALID;
  return RV_OK;
}

/* Writes slot s for a new vector (c->qf). A reused slot gives up its old
 * level, links, id and version (the caller holds the reuse lock exclusively). */
static void write_slot(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s, int level, _Atomic uint32_t *upper, char *idc,
                       int reused, const uint8_t *code) {
  rv__hnsw_slot_t *sl = rv__hnsw_slot(h, s);
  size_t upper_n = (size_t)level * (size_t)(h->maxM + 1);
  if (reused) {
    if (sl->upper)
      atomic_fetch_sub(&h->upper_bytes, (size_t)sl->level * (size_t)(h->maxM + 1) * sizeof(uint32_t));
    if (sl->ext_id) atomic_fetch_sub(&h->id_bytes, strlen(sl->ext_id) + 1);
    free(sl->upper);
    free(sl->ext_id);
    atomic_fetch_add_explicit(&sl->version, 1, memory_order_relaxed);
    atomic_fetch_sub(&h->n_deleted, 1);
  }
  sl->upper = upper;
  sl->level = (int8_t)level;
  sl->ext_id = idc;
  sl->ext_hash = (uint32_t)rv__hash_id(idc);
  atomic_fetch_add(&h->upper_bytes, upper_n * sizeof(uint32_t));
  atomic_fetch_add(&h->id_bytes, strlen(idc) + 1);
  unsigned char *rec = rv__hnsw_rec(h, s);
  if (code) { /* SQ8 with the caller's code, byte for byte */
    memcpy(rec, code, (size_t)h->dim);
    rv__hnsw_encode_sq8_tail(h, rec);
  } else {
    rv__hnsw_encode(h, c->qf, rec);
  }
  if (h->keep_floats) {
    float *f = rv__hnsw_floats(h, s);
    memcpy(f, c->qf, (size_t)h->dim * sizeof(float));
    memset(f + h->dim, 0, (h->float_stride - (size_t)h->dim) * sizeof(float));
  }
  atomic_store_explicit((_Atomic uint32_t *)(rec + h->links0_off), 0, memory_order_relaxed);
  atomic_store_explicit(rv__hnsw_state(h, s), RV__SLOT_INSERTING, memory_order_release);
}

static rv_err_t upsert(rv_hnsw_t *h, const char *id, const float *vec, int dim, const uint8_t *code,
                       uint32_t *internal_id) {
  if (!h || (!vec && !code)) return RV_ERR_INVALID;
  if (dim != h->dim) return RV_ERR_DIM;
  if (check_id(id)) return RV_ERR_INVALID;
  if (!rv_hnsw_ready(h)) return RV_ERR_STATE;
  rv__hnsw_ctx_t *c = rv__hnsw_ctx_get(h);
  if (!c) return RV_ERR_NOMEM;
  rv_err_t err;
  if (vec) {
    err = load_vector(h, vec, c->qf);
  } else { /* only a code: its decoded vector is the float one (graph and re-rank) */
    rv_sq8_decode(h->sq8, code, c->vc);
    err = load_vector(h, c->vc, c->qf);
  }
  if (!err) err = rv__hnsw_prepare_query(h, c);
  if (err) {
    rv__hnsw_ctx_put(h, c);
    return err;
  }
  int level = random_level(h);
  char *idc = strdup(id);
  size_t upper_n = (size_t)level * (size_t)(h->maxM + 1);
  _Atomic uint32_t *upper = level ? calloc(upper_n, sizeof *upper) : NULL;
  uint32_t s = 0;
  int reused = 0;
  if (!idc || (level && !upper)) err = RV_ERR_NOMEM;
  if (!err) err = alloc_slot(h, &s, &reused);
  if (err) {
    free(idc);
    free(upper);
    rv__hnsw_ctx_put(h, c);
    return err;
  }

  /* A fresh slot is unreachable until linked: write it, plan, write its own
   * lists. A reused slot may still be reached through stale links, so the
   * plan runs first (it reads only other slots) and the rewrite, own lists
   * included, happens with searches shut out. */
  rv__hnsw_slot_t *sl = rv__hnsw_slot(h, s);
  if (!reused) {
    write_slot(h, c, s, level, upper, idc, 0, code);
    pthread_rwlock_rdlock(&h->reuse_lock);
    err = rv__hnsw_plan(h, c, s, level);
    if (!err) rv__hnsw_write_own(h, c, s);
  } else {
    pthread_rwlock_rdlock(&h->reuse_lock);
    err = rv__hnsw_plan(h, c, s, level);
    pthread_rwlock_unlock(&h->reuse_lock);
    pthread_rwlock_wrlock(&h->reuse_lock);
    write_slot(h, c, s, level, upper, idc, 1, code);
    if (!err) rv__hnsw_write_own(h, c, s);
    pthread_rwlock_unlock(&h->reuse_lock);
    pthread_rwlock_rdlock(&h->reuse_lock);
  }
  if (!err) rv__hnsw_connect(h, c, s);
  pthread_rwlock_unlock(&h->reuse_lock);

  uint32_t old = RV__HNSW_NONE;
  if (!err) {
    pthread_mutex_lock(&h->map_mu);
    size_t pos = map_pos(h, id, sl->ext_hash);
    if (pos != SIZE_MAX) {
      old = h->map[pos] - 1;
      h->map[pos] = s + 1;
      atomic_store_explicit(rv__hnsw_state(h, old), RV__SLOT_DELETED, memory_order_release);
    } else {
      err = rv__hnsw_map_insert_locked(h, s);
      if (!err) atomic_fetch_add(&h->count, 1);
    }
    if (!err) atomic_store_explicit(rv__hnsw_state(h, s), RV__SLOT_LIVE, memory_order_release);
    pthread_mutex_unlock(&h->map_mu);
  }
  if (err) { /* linked but unmapped: take it out again */
    atomic_store_explicit(rv__hnsw_state(h, s), RV__SLOT_DELETED, memory_order_release);
    atomic_fetch_add(&h->n_deleted, 1);
    retire(h, s, c);
  } else {
    if (internal_id) *internal_id = s;
    if (old != RV__HNSW_NONE) {
      atomic_fetch_add(&h->n_deleted, 1);
      retire(h, old, c);
    }
  }
  rv__hnsw_ctx_put(h, c);
  return err;
}

rv_err_t rv_hnsw_upsert(rv_hnsw_t *h, const char *id, const float *vec, int dim, uint32_t *internal_id) {
  if (!vec) return RV_ERR_INVALID;
  return upsert(h, id, vec, dim, NULL, internal_id);
}

rv_err_t rv_hnsw_upsert_sq8(rv_hnsw_t *h, const char *id, const float *vec, int dim, const uint8_t *code,
                            size_t code_len, uint32_t *internal_id) {
  if (!h || !code) return RV_ERR_INVALID;
  if (h->conf.storage != RV_HNSW_SQ8) return RV_ERR_STATE;
  if (code_len != (size_t)h->dim) return RV_ERR_DIM;
  return upsert(h, id, vec, dim, code, internal_id);
}

rv_err_t rv_hnsw_get_sq8_code(const rv_hnsw_t *hc, uint32_t iid, uint8_t *out, size_t len) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  if (!h || !out) return RV_ERR_INVALID;
  if (h->conf.storage != RV_HNSW_SQ8) return RV_ERR_STATE;
  if (len < (size_t)h->dim) return RV_ERR_INVALID;
  if (iid >= rv_hnsw_id_bound(h)) return RV_ERR_NOT_FOUND;
  rv_err_t err = RV_OK;
  pthread_rwlock_rdlock(&h->reuse_lock);
  if (atomic_load_explicit(rv__hnsw_state(h, iid), memory_order_acquire) != RV__SLOT_LIVE) err = RV_ERR_NOT_FOUND;
  else memcpy(out, rv__hnsw_rec(h, iid), (size_t)h->dim);
  pthread_rwlock_unlock(&h->reuse_lock);
  return err;
}

rv_err_t rv_hnsw_delete(rv_hnsw_t *h, const char *id) {
  if (!h || check_id(id)) return RV_ERR_INVALID;
  uint32_t hash = (uint32_t)rv__hash_id(id);
  pthread_mutex_lock(&h->map_mu);
  size_t pos = map_pos(h, id, hash);
  if (pos == SIZE_MAX) {
    pthread_mutex_unlock(&h->map_mu);
    return RV_ERR_NOT_FOUND;
  }
  uint32_t s = h->map[pos] - 1;
  map_remove_at(h, pos);
  atomic_store_explicit(rv__hnsw_state(h, s), RV__SLOT_DELETED, memory_order_release);
  atomic_fetch_sub(&h->count, 1);
  atomic_fetch_add(&h->n_deleted, 1);
  pthread_mutex_unlock(&h->map_mu);
  rv__hnsw_ctx_t *c = rv__hnsw_ctx_get(h);
  if (c) {
    retire(h, s, c);
    rv__hnsw_ctx_put(h, c);
  } else { /* no memory to repair: leave the tombstone navigable, never reuse it */
    ep_move_off(h, s);
  }
  return RV_OK;
}

static void u64_id(uint64_t id, char buf[24]) { snprintf(buf, 24, "%llu", (unsigned long long)id); }

rv_err_t rv_hnsw_upsert_u64(rv_hnsw_t *h, uint64_t id, const float *vec, int dim, uint32_t *internal_id) {
  char b[24];
  u64_id(id, b);
  return rv_hnsw_upsert(h, b, vec, dim, internal_id);
}

rv_err_t rv_hnsw_delete_u64(rv_hnsw_t *h, uint64_t id) {
  char b[24];
  u64_id(id, b);
  return rv_hnsw_delete(h, b);
}

/* ---- ids and vectors ----------------------------------------------------- */

size_t rv_hnsw_count(const rv_hnsw_t *h) { return atomic_load(&h->count); }

uint32_t rv_hnsw_id_bound(const rv_hnsw_t *h) {
  return atomic_load_explicit(&((rv_hnsw_t *)h)->n_slots, memory_order_acquire);
}

int rv_hnsw_is_live(const rv_hnsw_t *h, uint32_t iid) {
  if (iid >= rv_hnsw_id_bound(h)) return 0;
  return atomic_load_explicit(rv__hnsw_state(h, iid), memory_order_acquire) == RV__SLOT_LIVE;
}

uint32_t rv_hnsw_version(const rv_hnsw_t *h, uint32_t iid) {
  if (!h || iid >= rv_hnsw_id_bound(h)) return 0;
  return atomic_load_explicit(&rv__hnsw_slot(h, iid)->version, memory_order_relaxed);
}

rv_err_t rv_hnsw_internal_id(const rv_hnsw_t *hc, const char *id, uint32_t *iid) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  if (!h || !iid || check_id(id)) return RV_ERR_INVALID;
  pthread_mutex_lock(&h->map_mu);
  uint32_t s = rv__hnsw_map_find_locked(h, id, (uint32_t)rv__hash_id(id));
  pthread_mutex_unlock(&h->map_mu);
  if (s == RV__HNSW_NONE) return RV_ERR_NOT_FOUND;
  *iid = s;
  return RV_OK;
}

rv_err_t rv_hnsw_internal_id_u64(const rv_hnsw_t *h, uint64_t id, uint32_t *iid) {
  char b[24];
  u64_id(id, b);
  return rv_hnsw_internal_id(h, b, iid);
}

/* Copies the id of slot iid if live (and, when version != NONE, of that version). */
static rv_err_t copy_ext_id(const rv_hnsw_t *hc, uint32_t iid, uint32_t version, char *buf, size_t size) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  if (!h || !buf) return RV_ERR_INVALID;
  if (iid >= rv_hnsw_id_bound(h)) return RV_ERR_NOT_FOUND;
  rv_err_t err = RV_OK;
  pthread_rwlock_rdlock(&h->reuse_lock);
  rv__hnsw_slot_t *sl = rv__hnsw_slot(h, iid);
  if (atomic_load_explicit(rv__hnsw_state(h, iid), memory_order_acquire) != RV__SLOT_LIVE ||
      (version != RV__HNSW_NONE && atomic_load_explicit(&sl->version, memory_order_relaxed) != version)) {
    err = RV_ERR_NOT_FOUND;
  } else {
    size_t n = strlen(sl->ext_id);
    if (n + 1 > size) err = RV_ERR_INVALID;
    else memcpy(buf, sl->ext_id, n + 1);
  }
  pthread_rwlock_unlock(&h->reuse_lock);
  return err;
}

rv_err_t rv_hnsw_external_id(const rv_hnsw_t *h, uint32_t iid, char *buf, size_t size) {
  return copy_ext_id(h, iid, RV__HNSW_NONE, buf, size);
}

rv_err_t rv_hnsw_result_external_id(const rv_hnsw_t *h, const rv_hnsw_result_t *r, char *buf, size_t size) {
  if (!r) return RV_ERR_INVALID;
  return copy_ext_id(h, r->id, r->version, buf, size);
}

rv_err_t rv_hnsw_get_vector(const rv_hnsw_t *hc, uint32_t iid, float *out) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  if (!h || !out) return RV_ERR_INVALID;
  if (h->conf.storage == RV_HNSW_PQ && !h->keep_floats) return RV_ERR_STATE;
  if (iid >= rv_hnsw_id_bound(h)) return RV_ERR_NOT_FOUND;
  rv_err_t err = RV_OK;
  pthread_rwlock_rdlock(&h->reuse_lock);
  if (atomic_load_explicit(rv__hnsw_state(h, iid), memory_order_acquire) != RV__SLOT_LIVE) err = RV_ERR_NOT_FOUND;
  else memcpy(out, rv__hnsw_vec(h, iid, NULL), (size_t)h->dim * sizeof(float));
  pthread_rwlock_unlock(&h->reuse_lock);
  return err;
}

const float *rv_hnsw_vector(const rv_hnsw_t *h, uint32_t iid) {
  if (!h || iid >= rv_hnsw_id_bound(h)) return NULL;
  if (h->conf.storage == RV_HNSW_PQ && !h->keep_floats) return NULL;
  if (atomic_load_explicit(rv__hnsw_state(h, iid), memory_order_acquire) == RV__SLOT_FREE) return NULL;
  return rv__hnsw_vec(h, iid, NULL);
}

int rv_hnsw_foreach_live(const rv_hnsw_t *h, int (*fn)(void *ctx, uint32_t iid), void *ctx) {
  uint32_t n = rv_hnsw_id_bound(h);
  for (uint32_t s = 0; s < n; s++) {
    if (atomic_load_explicit(rv__hnsw_state(h, s), memory_order_acquire) != RV__SLOT_LIVE) continue;
    int r = fn(ctx, s);
    if (r) return r;
  }
  return 0;
}

void rv_hnsw_read_lock(const rv_hnsw_t *h) { pthread_rwlock_rdlock(&((rv_hnsw_t *)h)->reuse_lock); }
void rv_hnsw_read_unlock(const rv_hnsw_t *h) { pthread_rwlock_unlock(&((rv_hnsw_t *)h)->reuse_lock); }

/* ---- stats ------------------------------------------------------------------- */

void rv_hnsw_stats(const rv_hnsw_t *hc, rv_hnsw_stats_t *st) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  memset(st, 0, sizeof *st);
  st->count = atomic_load(&h->count);
  st->deleted = atomic_load(&h->n_deleted);
  st->slots = rv_hnsw_id_bound(h);
  st->capacity = atomic_load(&h->capacity);
  uint64_t e = atomic_load(&h->ep);
  st->max_level = e == RV__HNSW_EP_EMPTY ? -1 : (int)(e >> 32);
  pthread_mutex_lock(&h->map_mu);
  size_t map_bytes = h->map_cap * sizeof(uint32_t);
  pthread_mutex_unlock(&h->map_mu);
  size_t q = 0;
  if (h->sq8) q = 3 * (size_t)h->dim * sizeof(float);
  if (h->pq) q = (size_t)h->pq_m * RV_PQ_KSUB * (size_t)(h->dim / h->pq_m) * sizeof(float);
  st->graph_bytes = st->slots * (h->rec_size + sizeof(rv__hnsw_slot_t)) + atomic_load(&h->upper_bytes) + map_bytes + q;
  st->float_bytes = st->slots * h->float_stride * sizeof(float);
  st->id_bytes = atomic_load(&h->id_bytes);
}
