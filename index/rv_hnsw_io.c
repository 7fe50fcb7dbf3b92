/* The index as a byte stream, for snapshots: dumped and restored without
 * re-inserting, every field checked on the way in.
 *
 * Layout (host byte order, which is little-endian on every target we build):
 *   "RVHNSW\0\0" u32 format version (1)
 *   u32 dim, metric, storage, M, pq_m, keep_floats, n_slots, reserved (0)
 *   u64 entry point ((level << 32) | slot, or all ones), u64 level counter
 *   u32 quantizer length, then rv_sq8_serialize / rv_pq_serialize bytes
 *   per slot: u32 state, u32 level, u32 version, u32 id length, id bytes,
 *             code bytes, u32 count + count links (level 0),
 *             [dim floats], then per level 1..level: u32 count + count links
 *   u64 free-list length, u32 slots
 *   "RVHNSEND"
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rv_hash.h"
#include "rv_hnsw.h"
#include "rv_hnsw_internal.h"
#include "rv_pq.h"
#include "rv_sq8.h"

#define READ_RESERVE_STEP 65536u /* slots reserved at a time while reading */
/* The largest parameter block a valid quantizer has: PQ at dim 65536, 256
 * float centroids per dimension, plus headers. */
#define MAX_QUANTIZER_BYTES ((256u * 65536u * 4u) + 65536u)
#define FORMAT_VERSION 1u
static const char MAGIC[8] = {'R', 'V', 'H', 'N', 'S', 'W', 0, 0};
static const char TRAILER[8] = {'R', 'V', 'H', 'N', 'S', 'E', 'N', 'D'};

typedef struct wbuf {
  unsigned char *p;
  size_t n, cap;
  int oom;
} wbuf_t;

static void put(wbuf_t *b, const void *src, size_t len) {
  if (b->oom) return;
  if (b->n + len > b->cap) {
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->n + len) nc *= 2;
    unsigned char *p = realloc(b->p, nc);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = nc;
  }
  if (len) memcpy(b->p + b->n, src, len); /* src may be NULL when len is 0 */
  b->n += len;
}
static void put32(wbuf_t *b, uint32_t v) { put(b, &v, 4); }
static void put64(wbuf_t *b, uint64_t v) { put(b, &v, 8); }

/* Sends b and empties it. */
static rv_err_t flush(wbuf_t *b, int (*write)(void *, const void *, size_t), void *ctx) {
  if (b->oom) return RV_ERR_NOMEM;
  if (b->n && write(ctx, b->p, b->n)) return RV_ERR_IO;
  b->n = 0;
  return RV_OK;
}

static void put_list(wbuf_t *b, const rv_hnsw_t *h, uint32_t s, int l) {
  _Atomic uint32_t *ll = rv__hnsw_links(h, s, l);
  uint32_t n = atomic_load_explicit(&ll[0], memory_order_acquire);
  uint32_t mx = (uint32_t)(l ? h->maxM : h->maxM0);
  if (n > mx) n = mx;
  uint32_t ids[2 * 256], m = 0;
  for (uint32_t j = 0; j < n; j++) {
    uint32_t id = atomic_load_explicit(&ll[1 + j], memory_order_acquire);
    /* links above level 0 to slots reused at a lower level are dead (the
     * traversal skips them); they are not written */
    if (l == 0 || rv__hnsw_slot(h, id)->level >= l) ids[m++] = id;
  }
  put32(b, m);
  put(b, ids, m * sizeof(uint32_t));
}

rv_err_t rv_hnsw_write(const rv_hnsw_t *hc, int (*write)(void *ctx, const void *buf, size_t len), void *ctx) {
  rv_hnsw_t *h = (rv_hnsw_t *)hc;
  if (!h || !write) return RV_ERR_INVALID;
  wbuf_t b = {0};
  rv_err_t err = RV_OK;
  pthread_rwlock_rdlock(&h->reuse_lock);
  uint32_t n = atomic_load_explicit(&h->n_slots, memory_order_acquire);
  put(&b, MAGIC, 8);
  put32(&b, FORMAT_VERSION);
  put32(&b, (uint32_t)h->dim);
  put32(&b, (uint32_t)h->conf.metric);
  put32(&b, (uint32_t)h->conf.storage);
  put32(&b, (uint32_t)h->conf.M);
  put32(&b, (uint32_t)h->pq_m);
  put32(&b, (uint32_t)h->keep_floats);
  put32(&b, n);
  put32(&b, 0);
  put64(&b, atomic_load(&h->ep));
  put64(&b, atomic_load(&h->level_ctr));
  uint8_t *q = NULL;
  size_t qlen = 0;
  if (h->sq8 && rv_sq8_serialize(h->sq8, &q, &qlen)) err = RV_ERR_NOMEM;
  if (h->pq && rv_pq_serialize(h->pq, &q, &qlen)) err = RV_ERR_NOMEM;
  put32(&b, (uint32_t)qlen);
  if (qlen) put(&b, q, qlen);
  free(q);
  if (!err) err = flush(&b, write, ctx);
  for (uint32_t s = 0; s < n && !err; s++) {
    rv__hnsw_slot_t *sl = rv__hnsw_slot(h, s);
    uint32_t st = atomic_load_explicit(rv__hnsw_state(h, s), memory_order_acquire);
    if (st != RV__SLOT_LIVE && st != RV__SLOT_DELETED) { /* allocated, never completed: write as an empty tombstone */
      put32(&b, RV__SLOT_DELETED);
      put32(&b, 0);
      put32(&b, atomic_load(&sl->version));
      put32(&b, 0);
      unsigned char zero[64] = {0};
      for (size_t i = 0; i < h->code_bytes; i += sizeof zero)
        put(&b, zero, h->code_bytes - i < sizeof zero ? h->code_bytes - i : sizeof zero);
      put32(&b, 0);
      for (size_t i = 0; h->keep_floats && i < (size_t)h->dim; i++) put(&b, &(float){0}, 4);
    } else {
      size_t idl = sl->ext_id ? strlen(sl->ext_id) : 0;
      put32(&b, st);
      put32(&b, (uint32_t)sl->level);
      put32(&b, atomic_load(&sl->version));
      put32(&b, (uint32_t)idl);
      put(&b, sl->ext_id, idl);
      put(&b, rv__hnsw_rec(h, s), h->code_bytes);
      rv__hnsw_lock(sl);
      put_list(&b, h, s, 0);
      if (h->keep_floats) put(&b, rv__hnsw_floats(h, s), (size_t)h->dim * sizeof(float));
      for (int l = 1; l <= sl->level; l++) put_list(&b, h, s, l);
      rv__hnsw_unlock(sl);
    }
    if (b.n >= 1 << 16) err = flush(&b, write, ctx);
  }
  if (!err) {
    pthread_mutex_lock(&h->alloc_mu);
    put64(&b, h->n_free);
    put(&b, h->free_list, h->n_free * sizeof(uint32_t));
    pthread_mutex_unlock(&h->alloc_mu);
    put(&b, TRAILER, 8);
    err = flush(&b, write, ctx);
  }
  pthread_rwlock_unlock(&h->reuse_lock);
  free(b.p);
  return err;
}

/* ---- reading --------------------------------------------------------------- */

typedef struct reader {
  int (*read)(void *ctx, void *buf, size_t len);
  void *ctx;
  int failed;
} reader_t;

static int get(reader_t *r, void *dst, size_t len) {
  if (r->failed) return -1;
  if (len && r->read(r->ctx, dst, len)) r->failed = 1;
  return r->failed ? -1 : 0;
}
static int get32(reader_t *r, uint32_t *v) { return get(r, v, 4); }
static int get64(reader_t *r, uint64_t *v) { return get(r, v, 8); }

#define CORRUPT(...) rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "hnsw stream: " __VA_ARGS__)
#define TRUNC(what) rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "hnsw stream: truncated in %s", what)

/* Reads one link list of slot s at level l (not yet validated against other slots). */
static rv_err_t get_list(reader_t *r, rv_hnsw_t *h, uint32_t s, int l, uint32_t n_slots, char *errstr,
                         size_t errstr_size) {
  uint32_t n, mx = (uint32_t)(l ? h->maxM : h->maxM0);
  if (get32(r, &n)) return TRUNC("a link list");
  if (n > mx) return CORRUPT("slot %u level %d has %u links, at most %u allowed", s, l, n, mx);
  _Atomic uint32_t *ll = rv__hnsw_links(h, s, l);
  for (uint32_t j = 0; j < n; j++) {
    uint32_t id;
    if (get32(r, &id)) return TRUNC("a link list");
    if (id >= n_slots) return CORRUPT("slot %u level %d link %u names slot %u, only %u slots", s, l, j, id, n_slots);
    if (id == s) return CORRUPT("slot %u level %d links to itself", s, l);
    for (uint32_t t = 0; t < j; t++)
      if (atomic_load_explicit(&ll[1 + t], memory_order_relaxed) == id)
        return CORRUPT("slot %u level %d links twice to slot %u", s, l, id);
    atomic_store_explicit(&ll[1 + j], id, memory_order_relaxed);
  }
  atomic_store_explicit(&ll[0], n, memory_order_relaxed);
  return RV_OK;
}

static rv_err_t read_body(reader_t *r, rv_hnsw_t *h, uint32_t n_slots, uint64_t ep, char *errstr,
                          size_t errstr_size) {
  rv_err_t err;
  char idbuf[RV_ID_MAX + 1];
  size_t live = 0, dead = 0;
  for (uint32_t s = 0; s < n_slots; s++) {
    if (s % READ_RESERVE_STEP == 0) {
      uint32_t want = n_slots - s < READ_RESERVE_STEP ? n_slots : s + READ_RESERVE_STEP;
      if ((err = rv__hnsw_reserve(h, want))) return rv_errf(err, errstr, errstr_size, "hnsw: out of memory");
    }
    rv__hnsw_slot_t *sl = rv__hnsw_slot(h, s);
    uint32_t st, level, version, idl;
    /* raised as we go: accessors and rv_hnsw_destroy then see the slot */
    atomic_store_explicit(rv__hnsw_state(h, s), RV__SLOT_FREE, memory_order_relaxed);
    atomic_store_explicit(&h->n_slots, s + 1, memory_order_relaxed);
    if (get32(r, &st) || get32(r, &level) || get32(r, &version) || get32(r, &idl)) return TRUNC("a slot header");
    if (st != RV__SLOT_LIVE && st != RV__SLOT_DELETED) return CORRUPT("slot %u has state %u", s, st);
    if (level > RV__HNSW_MAX_LEVEL) return CORRUPT("slot %u has level %u, at most %d", s, level, RV__HNSW_MAX_LEVEL);
    if (idl > RV_ID_MAX) return CORRUPT("slot %u id is %u bytes, at most %d", s, idl, RV_ID_MAX);
    if (st == RV__SLOT_LIVE && idl == 0) return CORRUPT("live slot %u has an empty id", s);
    if (get(r, idbuf, idl)) return TRUNC("an id");
    idbuf[idl] = 0;
    if (strlen(idbuf) != idl) return CORRUPT("slot %u id holds a NUL byte", s);
    atomic_store_explicit(rv__hnsw_state(h, s), st, memory_order_relaxed);
    sl->level = (int8_t)level;
    atomic_store_explicit(&sl->version, version, memory_order_relaxed);
    if (idl) {
      if (!(sl->ext_id = strdup(idbuf))) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
      sl->ext_hash = (uint32_t)rv__hash_id(idbuf);
      atomic_fetch_add(&h->id_bytes, idl + 1);
    }
    if (level) {
      size_t un = (size_t)level * (size_t)(h->maxM + 1);
      if (!(sl->upper = calloc(un, sizeof *sl->upper)))
        return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
      atomic_fetch_add(&h->upper_bytes, un * sizeof(uint32_t));
    }
    unsigned char *rec = rv__hnsw_rec(h, s);
    if (get(r, rec, h->code_bytes)) return TRUNC("a code");
    if (h->conf.storage == RV_HNSW_SQ8) /* the padding and norm are derived, not trusted */
      rv__hnsw_encode_sq8_tail(h, rec);
    if (h->conf.storage == RV_HNSW_FLOAT)
      for (int i = 0; i < h->dim; i++)
        if (!isfinite(((float *)rec)[i])) return CORRUPT("slot %u vector component %d is not finite", s, i);
    if ((err = get_list(r, h, s, 0, n_slots, errstr, errstr_size))) return err;
    if (h->keep_floats) {
      float *f = rv__hnsw_floats(h, s);
      if (get(r, f, (size_t)h->dim * sizeof(float))) return TRUNC("a float vector");
      for (int i = 0; i < h->dim; i++)
        if (!isfinite(f[i])) return CORRUPT("slot %u float component %d is not finite", s, i);
      memset(f + h->dim, 0, (h->float_stride - (size_t)h->dim) * sizeof(float));
    }
    for (uint32_t l = 1; l <= level; l++)
      if ((err = get_list(r, h, s, (int)l, n_slots, errstr, errstr_size))) return err;
    if (st == RV__SLOT_LIVE) {
      if (rv__hnsw_map_find_locked(h, idbuf, sl->ext_hash) != RV__HNSW_NONE)
        return CORRUPT("id '%s' is live in two slots (second: %u)", idbuf, s);
      if (rv__hnsw_map_insert_locked(h, s)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
      live++;
    } else {
      dead++;
    }
  }
  /* links at level l must name nodes that have level l */
  for (uint32_t s = 0; s < n_slots; s++) {
    int level = rv__hnsw_slot(h, s)->level;
    for (int l = 1; l <= level; l++) {
      _Atomic uint32_t *ll = rv__hnsw_links(h, s, l);
      uint32_t n = atomic_load_explicit(&ll[0], memory_order_relaxed);
      for (uint32_t j = 0; j < n; j++) {
        uint32_t id = atomic_load_explicit(&ll[1 + j], memory_order_relaxed);
        if (rv__hnsw_slot(h, id)->level < l)
          return CORRUPT("slot %u level %d links to slot %u, whose top level is %d", s, l, id,
                         rv__hnsw_slot(h, id)->level);
      }
    }
  }
  if (ep == RV__HNSW_EP_EMPTY) {
    if (live) return CORRUPT("no entry point but %zu live vectors", live);
  } else {
    uint32_t e = (uint32_t)ep;
    if (e >= n_slots) return CORRUPT("entry point %u, only %u slots", e, n_slots);
    if ((uint64_t)rv__hnsw_slot(h, e)->level != ep >> 32)
      return CORRUPT("entry point %u has level %d, stream says %llu", e, rv__hnsw_slot(h, e)->level,
                     (unsigned long long)(ep >> 32));
  }
  atomic_store(&h->ep, ep);
  atomic_store(&h->count, live);
  atomic_store(&h->n_deleted, dead);
  uint64_t nf;
  if (get64(r, &nf)) return TRUNC("the free list");
  if (nf > dead) return CORRUPT("free list of %llu slots, only %zu deleted", (unsigned long long)nf, dead);
  if (nf) {
    if (!(h->free_list = malloc(nf * sizeof(uint32_t))))
      return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
    h->free_cap = nf;
    if (get(r, h->free_list, nf * sizeof(uint32_t))) return TRUNC("the free list");
    h->n_free = nf;
    for (size_t i = 0; i < nf; i++) {
      uint32_t s = h->free_list[i];
      if (s >= n_slots || atomic_load(rv__hnsw_state(h, s)) != RV__SLOT_DELETED)
        return CORRUPT("free list entry %zu names slot %u, which is not a deleted slot", i, s);
      if (s == (uint32_t)ep && ep != RV__HNSW_EP_EMPTY) return CORRUPT("the entry point %u is on the free list", s);
      /* FREE marks "seen" for the duplicate check below; nobody else sees this index yet */
      atomic_store(rv__hnsw_state(h, s), RV__SLOT_FREE);
    }
    for (size_t i = 0; i < nf; i++) {
      uint32_t s = h->free_list[i];
      if (atomic_load(rv__hnsw_state(h, s)) != RV__SLOT_FREE)
        return CORRUPT("slot %u is on the free list twice", s);
      atomic_store(rv__hnsw_state(h, s), RV__SLOT_DELETED);
    }
  }
  char tr[8];
  if (get(r, tr, 8)) return TRUNC("the trailer");
  if (memcmp(tr, TRAILER, 8)) return CORRUPT("bad trailer");
  return RV_OK;
}

rv_err_t rv_hnsw_read(const rv_hnsw_conf_t *conf, int (*read)(void *ctx, void *buf, size_t len), void *ctx,
                      rv_hnsw_t **out, char *errstr, size_t errstr_size) {
  if (out) *out = NULL;
  if (!read || !out) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "hnsw: NULL argument");
  reader_t r = {read, ctx, 0};
  char magic[8];
  uint32_t v, dim, metric, storage, M, pq_m, keep, n_slots, resv, qlen;
  uint64_t ep, lctr;
  if (get(&r, magic, 8) || get32(&r, &v)) return TRUNC("the header");
  if (memcmp(magic, MAGIC, 8)) return CORRUPT("bad magic");
  if (v != FORMAT_VERSION) return CORRUPT("format version %u, this build reads %u", v, FORMAT_VERSION);
  if (get32(&r, &dim) || get32(&r, &metric) || get32(&r, &storage) || get32(&r, &M) || get32(&r, &pq_m) ||
      get32(&r, &keep) || get32(&r, &n_slots) || get32(&r, &resv) || get64(&r, &ep) || get64(&r, &lctr) ||
      get32(&r, &qlen))
    return TRUNC("the header");
  rv_hnsw_conf_t c;
  if (conf) c = *conf;
  else rv_hnsw_conf_defaults(&c);
  if (conf && ((uint32_t)conf->dim != dim || (uint32_t)conf->metric != metric || (uint32_t)conf->storage != storage ||
               (uint32_t)conf->M != M))
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                   "hnsw stream: dim %u metric %u storage %u M %u, configuration says %d %d %d %d", dim, metric,
                   storage, M, conf->dim, (int)conf->metric, (int)conf->storage, conf->M);
  if (dim > (1u << 16) || M > 256 || storage > 2 || metric > 2 || keep > 1)
    return CORRUPT("impossible shape (dim %u M %u storage %u metric %u)", dim, M, storage, metric);
  if (n_slots > RV__HNSW_MAX_SLOTS) return CORRUPT("%u slots", n_slots);
  if (ep != RV__HNSW_EP_EMPTY && (ep >> 32) > RV__HNSW_MAX_LEVEL) return CORRUPT("entry point level %llu", (unsigned long long)(ep >> 32));
  c.dim = (int)dim;
  c.metric = (rv_metric_t)metric;
  c.storage = (rv_hnsw_storage_t)storage;
  c.M = (int)M;
  c.pq_m = (int)pq_m;
  c.pq_keep_floats = (int)keep;
  if (storage != RV_HNSW_PQ) c.pq_m = 0;
  /* Memory follows the slots actually read, not the count the header claims:
   * a small corrupt stream must not reserve gigabytes before it fails. */
  if (c.initial_capacity < n_slots) c.initial_capacity = n_slots < READ_RESERVE_STEP ? n_slots : READ_RESERVE_STEP;
  rv_hnsw_t *h = rv_hnsw_new(&c, errstr, errstr_size);
  if (!h) return RV_ERR_CORRUPT;
  if ((size_t)h->keep_floats != keep) {
    rv_hnsw_destroy(h);
    return CORRUPT("keep_floats %u does not fit storage %u", keep, storage);
  }
  rv_err_t err = RV_OK;
  if (storage == RV_HNSW_FLOAT && qlen) err = CORRUPT("float storage with a quantizer");
  if (!err && storage != RV_HNSW_FLOAT) {
    if (!qlen || qlen > MAX_QUANTIZER_BYTES) {
      err = CORRUPT("quantizer length %u", qlen);
    } else {
      uint8_t *qb = malloc(qlen);
      if (!qb) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "hnsw: out of memory");
      else if (get(&r, qb, qlen)) err = TRUNC("the quantizer");
      else if (storage == RV_HNSW_SQ8) {
        rv_sq8_t *q = NULL;
        err = rv_sq8_deserialize(qb, qlen, &q, errstr, errstr_size);
        if (!err && (err = rv_hnsw_set_sq8(h, q, errstr, errstr_size))) err = RV_ERR_CORRUPT;
      } else {
        rv_pq_t *q = NULL;
        err = rv_pq_deserialize(qb, qlen, &q, errstr, errstr_size);
        if (!err && (err = rv_hnsw_set_pq(h, q, errstr, errstr_size))) err = RV_ERR_CORRUPT;
      }
      free(qb);
    }
  }
  if (!err) err = read_body(&r, h, n_slots, ep, errstr, errstr_size);
  if (err) {
    rv_hnsw_destroy(h);
    return err;
  }
  atomic_store(&h->level_ctr, lctr);
  *out = h;
  return RV_OK;
}
