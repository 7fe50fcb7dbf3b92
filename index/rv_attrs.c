#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include "rv_attrs.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "rv_bytes.h"
#include "rv_hash.h"

/* Per-slot columns live in chunks: chunk c holds CHUNK0 << c slots, so a
 * slot's chunk and offset are a clz away and chunks never move once
 * published (readers take no lock). 23 chunks cover 2^32 slots. */
#define CHUNK_SHIFT 10u
#define MAX_CHUNKS 23
#define CANON_NAN 0x7ff8000000000000ull /* missing number */
#define TAG_ATTRS 0x31525441u           /* "ATR1" */
#define TAG_END 0x45525441u             /* "ATRE" */

typedef struct posting {
  uint32_t *ids; /* slots holding this code, unordered */
  uint32_t n, cap;
} posting_t;

typedef struct field {
  rv_field_type_t type;
  /* KEYWORD: _Atomic uint32_t codes; NUMBER: _Atomic uint64_t double bits. */
  _Atomic(void *) col[MAX_CHUNKS];
  uint32_t *pos[MAX_CHUNKS]; /* KEYWORD: index of the slot in its posting list (writers only) */
  /* KEYWORD dictionary: vals[code - 1]; never shrinks (codes stay valid). */
  char **vals;
  posting_t *post; /* post[code - 1] */
  uint32_t n_vals, cap_vals;
  uint32_t *hmap; /* code or 0; linear probing; power-of-two size */
  size_t hcap;
} field_t;

struct rv_attrs {
  rv_field_conf_t conf[RV_MAX_FIELDS];
  field_t f[RV_MAX_FIELDS];
  int n_fields;
  pthread_rwlock_t lock;    /* exclusive: writers; shared: dictionary and posting readers */
  int n_chunks;             /* chunks allocated (writers) */
  _Atomic uint32_t covered; /* slots with memory behind them, published after the chunk pointers */
  _Atomic uint32_t bound;   /* 1 + highest slot ever given an attribute */
  _Atomic size_t n_set;     /* slots with at least one attribute */
};

static void locate(uint32_t s, unsigned *c, size_t *off) {
  uint64_t t = (uint64_t)s + (1ull << CHUNK_SHIFT);
  unsigned top = 63u - (unsigned)__builtin_clzll(t);
  *c = top - CHUNK_SHIFT;
  *off = (size_t)(t - (1ull << top));
}

static size_t chunk_slots(int c) { return (size_t)1 << (CHUNK_SHIFT + (unsigned)c); }

static _Atomic uint32_t *code_ref(const field_t *f, uint32_t s) {
  unsigned c;
  size_t off;
  locate(s, &c, &off);
  return (_Atomic uint32_t *)atomic_load_explicit(&((field_t *)f)->col[c], memory_order_acquire) + off;
}

static _Atomic uint64_t *num_ref(const field_t *f, uint32_t s) {
  unsigned c;
  size_t off;
  locate(s, &c, &off);
  return (_Atomic uint64_t *)atomic_load_explicit(&((field_t *)f)->col[c], memory_order_acquire) + off;
}

static uint32_t *pos_ref(field_t *f, uint32_t s) {
  unsigned c;
  size_t off;
  locate(s, &c, &off);
  return f->pos[c] + off;
}

uint32_t rv__attrs_code(const rv_attrs_t *a, int f, uint32_t iid) {
  if (iid >= atomic_load_explicit(&a->covered, memory_order_acquire)) return 0;
  return atomic_load_explicit(code_ref(&a->f[f], iid), memory_order_relaxed);
}

double rv__attrs_number(const rv_attrs_t *a, int f, uint32_t iid) {
  if (iid >= atomic_load_explicit(&a->covered, memory_order_acquire)) return NAN;
  uint64_t u = atomic_load_explicit(num_ref(&a->f[f], iid), memory_order_relaxed);
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

void rv__attrs_rdlock(const rv_attrs_t *a) { pthread_rwlock_rdlock(&((rv_attrs_t *)a)->lock); }
void rv__attrs_unlock(const rv_attrs_t *a) { pthread_rwlock_unlock(&((rv_attrs_t *)a)->lock); }

/* ---- lifecycle ------------------------------------------------------------ */

rv_attrs_t *rv_attrs_new(const rv_field_conf_t *fields, int n_fields, char *errstr, size_t errstr_size) {
  if (n_fields < 0 || n_fields > RV_MAX_FIELDS || (n_fields > 0 && !fields)) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: %d fields (0..%d allowed)", n_fields, RV_MAX_FIELDS);
    return NULL;
  }
  for (int i = 0; i < n_fields; i++) {
    size_t len = strnlen(fields[i].name, RV_NAME_MAX);
    if (len == 0 || len >= RV_NAME_MAX) {
      rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: field %d has an empty or too long name", i);
      return NULL;
    }
    if (fields[i].type != RV_FIELD_KEYWORD && fields[i].type != RV_FIELD_NUMBER) {
      rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: field '%s' has unknown type %d", fields[i].name,
              (int)fields[i].type);
      return NULL;
    }
    for (int j = 0; j < i; j++)
      if (!strcmp(fields[i].name, fields[j].name)) {
        rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: field '%s' declared twice", fields[i].name);
        return NULL;
      }
  }
  rv_attrs_t *a = calloc(1, sizeof *a);
  if (!a) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "attrs: out of memory");
    return NULL;
  }
  pthread_rwlockattr_t at;
  pthread_rwlockattr_init(&at);
#ifdef __GLIBC__
  /* Readers hold the lock only briefly, but under a stream of them a
   * reader-preferring lock could starve the applier. */
  pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
  pthread_rwlock_init(&a->lock, &at);
  pthread_rwlockattr_destroy(&at);
  a->n_fields = n_fields;
  for (int i = 0; i < n_fields; i++) {
    a->conf[i] = fields[i];
    a->conf[i].name[RV_NAME_MAX - 1] = 0;
    a->f[i].type = fields[i].type;
  }
  return a;
}

void rv_attrs_destroy(rv_attrs_t *a) {
  if (!a) return;
  for (int i = 0; i < a->n_fields; i++) {
    field_t *f = &a->f[i];
    for (int c = 0; c < MAX_CHUNKS; c++) {
      free(atomic_load(&f->col[c]));
      free(f->pos[c]);
    }
    for (uint32_t v = 0; v < f->n_vals; v++) {
      free(f->vals[v]);
      free(f->post[v].ids);
    }
    free(f->vals);
    free(f->post);
    free(f->hmap);
  }
  pthread_rwlock_destroy(&a->lock);
  free(a);
}

const rv_field_conf_t *rv_attrs_fields(const rv_attrs_t *a, int *n_fields) {
  if (n_fields) *n_fields = a->n_fields;
  return a->conf;
}

int rv_attrs_field_index(const rv_attrs_t *a, const char *name) {
  if (!name) return -1;
  for (int i = 0; i < a->n_fields; i++)
    if (!strcmp(a->conf[i].name, name)) return i;
  return -1;
}

size_t rv_attrs_count(const rv_attrs_t *a) { return atomic_load(&a->n_set); }
uint32_t rv_attrs_slot_bound(const rv_attrs_t *a) { return atomic_load(&a->bound); }

/* ---- writer helpers (lock held exclusively) ------------------------------- */

/* Makes slot s addressable in every column. */
static rv_err_t ensure_slot(rv_attrs_t *a, uint32_t s) {
  unsigned need;
  size_t off;
  locate(s, &need, &off);
  while (a->n_chunks <= (int)need) {
    int c = a->n_chunks;
    size_t n = chunk_slots(c);
    void *cols[RV_MAX_FIELDS] = {0};
    uint32_t *poss[RV_MAX_FIELDS] = {0};
    int ok = 1;
    for (int i = 0; i < a->n_fields && ok; i++) {
      if (a->f[i].type == RV_FIELD_KEYWORD) {
        cols[i] = calloc(n, sizeof(uint32_t));
        poss[i] = malloc(n * sizeof(uint32_t));
        ok = cols[i] && poss[i];
      } else {
        uint64_t *p = malloc(n * sizeof(uint64_t));
        if (p)
          for (size_t j = 0; j < n; j++) p[j] = CANON_NAN;
        cols[i] = p;
        ok = p != NULL;
      }
    }
    if (!ok) {
      for (int i = 0; i < a->n_fields; i++) {
        free(cols[i]);
        free(poss[i]);
      }
      return RV_ERR_NOMEM;
    }
    for (int i = 0; i < a->n_fields; i++) {
      a->f[i].pos[c] = poss[i];
      atomic_store_explicit(&a->f[i].col[c], cols[i], memory_order_release);
    }
    a->n_chunks++;
    uint64_t covered = ((uint64_t)1 << (CHUNK_SHIFT + (unsigned)a->n_chunks)) - (1ull << CHUNK_SHIFT);
    atomic_store_explicit(&a->covered, covered > UINT32_MAX ? UINT32_MAX : (uint32_t)covered, memory_order_release);
  }
  return RV_OK;
}

static size_t hslot(const field_t *f, const char *v) { return (size_t)rv__hash_id(v) & (f->hcap - 1); }

static uint32_t dict_find(const field_t *f, const char *v) {
  if (!f->hcap) return 0;
  for (size_t i = hslot(f, v);; i = (i + 1) & (f->hcap - 1)) {
    uint32_t c = f->hmap[i];
    if (!c) return 0;
    if (!strcmp(f->vals[c - 1], v)) return c;
  }
}

/* Adds v to the dictionary; returns its new code, 0 on no memory. */
static uint32_t dict_add(field_t *f, const char *v) {
  if (f->n_vals == UINT32_MAX - 1) return 0;
  if (f->n_vals == f->cap_vals) {
    uint32_t cap = f->cap_vals ? f->cap_vals * 2 : 8;
    if (cap < f->cap_vals) cap = UINT32_MAX - 1;
    char **nv = realloc(f->vals, (size_t)cap * sizeof *nv);
    if (!nv) return 0;
    f->vals = nv;
    posting_t *np = realloc(f->post, (size_t)cap * sizeof *np);
    if (!np) return 0;
    f->post = np;
    f->cap_vals = cap;
  }
  if ((size_t)(f->n_vals + 1) * 2 > f->hcap) {
    size_t cap = f->hcap ? f->hcap * 2 : 16;
    uint32_t *m = calloc(cap, sizeof *m);
    if (!m) return 0;
    for (size_t i = 0; i < f->hcap; i++) {
      uint32_t c = f->hmap[i];
      if (!c) continue;
      size_t j = (size_t)rv__hash_id(f->vals[c - 1]) & (cap - 1);
      while (m[j]) j = (j + 1) & (cap - 1);
      m[j] = c;
    }
    free(f->hmap);
    f->hmap = m;
    f->hcap = cap;
  }
  char *copy = strdup(v);
  if (!copy) return 0;
  uint32_t code = ++f->n_vals;
  f->vals[code - 1] = copy;
  f->post[code - 1] = (posting_t){0};
  size_t i = hslot(f, v);
  while (f->hmap[i]) i = (i + 1) & (f->hcap - 1);
  f->hmap[i] = code;
  return code;
}

static rv_err_t posting_reserve(posting_t *p, uint32_t extra) {
  if (p->n + extra <= p->cap) return RV_OK;
  uint64_t cap = p->cap ? (uint64_t)p->cap * 2 : 4;
  while (cap < (uint64_t)p->n + extra) cap *= 2;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  uint32_t *ids = realloc(p->ids, (size_t)cap * sizeof *ids);
  if (!ids) return RV_ERR_NOMEM;
  p->ids = ids;
  p->cap = (uint32_t)cap;
  return RV_OK;
}

static void posting_remove(field_t *f, uint32_t code, uint32_t s) {
  posting_t *p = &f->post[code - 1];
  uint32_t i = *pos_ref(f, s);
  uint32_t last = p->ids[--p->n];
  p->ids[i] = last;
  *pos_ref(f, last) = i;
}

/* Capacity reserved beforehand. */
static void posting_append(field_t *f, uint32_t code, uint32_t s) {
  posting_t *p = &f->post[code - 1];
  *pos_ref(f, s) = p->n;
  p->ids[p->n++] = s;
}

static int slot_has_any(const rv_attrs_t *a, uint32_t s) {
  if (s >= atomic_load_explicit(&a->covered, memory_order_relaxed)) return 0;
  for (int i = 0; i < a->n_fields; i++) {
    if (a->f[i].type == RV_FIELD_KEYWORD) {
      if (atomic_load_explicit(code_ref(&a->f[i], s), memory_order_relaxed)) return 1;
    } else if (atomic_load_explicit(num_ref(&a->f[i], s), memory_order_relaxed) != CANON_NAN) {
      return 1;
    }
  }
  return 0;
}

/* Writes the new per-slot values (codes[i] for keyword fields, nums[i] for
 * number fields); posting capacity for every new code is reserved. */
static void apply_slot(rv_attrs_t *a, uint32_t s, const uint32_t *codes, const uint64_t *nums) {
  int had = slot_has_any(a, s), has = 0;
  for (int i = 0; i < a->n_fields; i++) {
    field_t *f = &a->f[i];
    if (f->type == RV_FIELD_KEYWORD) {
      _Atomic uint32_t *r = code_ref(f, s);
      uint32_t old = atomic_load_explicit(r, memory_order_relaxed);
      if (old != codes[i]) {
        if (old) posting_remove(f, old, s);
        if (codes[i]) posting_append(f, codes[i], s);
        atomic_store_explicit(r, codes[i], memory_order_relaxed);
      }
      has |= codes[i] != 0;
    } else {
      atomic_store_explicit(num_ref(f, s), nums[i], memory_order_relaxed);
      has |= nums[i] != CANON_NAN;
    }
  }
  if (had && !has) atomic_fetch_sub(&a->n_set, 1);
  if (!had && has) atomic_fetch_add(&a->n_set, 1);
  if (has && s + 1 > atomic_load_explicit(&a->bound, memory_order_relaxed)) atomic_store(&a->bound, s + 1);
}

static uint64_t num_bits(double d) {
  if (isnan(d)) return CANON_NAN;
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

/* ---- public writers --------------------------------------------------------- */

rv_err_t rv_attrs_set(rv_attrs_t *a, uint32_t iid, const rv_attr_value_t *vals, int n_vals, char *errstr,
                      size_t errstr_size) {
  if (iid == UINT32_MAX) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: slot %u out of range", iid);
  if (n_vals < 0 || (n_vals > 0 && !vals)) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: bad value list");
  const char *kw[RV_MAX_FIELDS] = {0};
  uint64_t nums[RV_MAX_FIELDS];
  uint32_t codes[RV_MAX_FIELDS] = {0};
  int seen[RV_MAX_FIELDS] = {0};
  for (int i = 0; i < RV_MAX_FIELDS; i++) nums[i] = CANON_NAN;
  for (int i = 0; i < n_vals; i++) {
    int fi = rv_attrs_field_index(a, vals[i].field);
    if (fi < 0)
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: unknown field '%s'",
                     vals[i].field ? vals[i].field : "(null)");
    if (seen[fi]) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: field '%s' given twice", vals[i].field);
    seen[fi] = 1;
    if (a->f[fi].type == RV_FIELD_KEYWORD) {
      if (!isnan(vals[i].number))
        return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: field '%s' is a keyword field, got a number",
                       vals[i].field);
      if (vals[i].keyword && strnlen(vals[i].keyword, RV_ATTR_VALUE_MAX + 1) > RV_ATTR_VALUE_MAX)
        return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: value of '%s' longer than %d bytes", vals[i].field,
                       RV_ATTR_VALUE_MAX);
      kw[fi] = vals[i].keyword;
    } else {
      if (vals[i].keyword)
        return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "attrs: field '%s' is a number field, got a keyword",
                       vals[i].field);
      nums[fi] = num_bits(vals[i].number);
    }
  }
  pthread_rwlock_wrlock(&a->lock);
  rv_err_t err = ensure_slot(a, iid);
  /* Everything that allocates happens before anything changes. A value added
   * to a dictionary and then not used is harmless (no slot holds it). */
  for (int i = 0; i < a->n_fields && !err; i++) {
    if (!kw[i]) continue;
    field_t *f = &a->f[i];
    codes[i] = dict_find(f, kw[i]);
    if (!codes[i] && !(codes[i] = dict_add(f, kw[i]))) err = RV_ERR_NOMEM;
    if (!err) err = posting_reserve(&f->post[codes[i] - 1], 1);
  }
  if (!err) apply_slot(a, iid, codes, nums);
  pthread_rwlock_unlock(&a->lock);
  if (err) return rv_errf(err, errstr, errstr_size, "attrs: out of memory");
  return RV_OK;
}

void rv_attrs_clear(rv_attrs_t *a, uint32_t iid) {
  uint32_t codes[RV_MAX_FIELDS] = {0};
  uint64_t nums[RV_MAX_FIELDS];
  for (int i = 0; i < RV_MAX_FIELDS; i++) nums[i] = CANON_NAN;
  pthread_rwlock_wrlock(&a->lock);
  if (iid < atomic_load_explicit(&a->covered, memory_order_relaxed)) apply_slot(a, iid, codes, nums);
  pthread_rwlock_unlock(&a->lock);
}

/* ---- readers ---------------------------------------------------------------- */

rv_err_t rv_attrs_get_keyword(const rv_attrs_t *a, uint32_t iid, int field, char *buf, size_t size) {
  if (field < 0 || field >= a->n_fields || a->f[field].type != RV_FIELD_KEYWORD) return RV_ERR_INVALID;
  rv_err_t err = RV_ERR_NOT_FOUND;
  rv__attrs_rdlock(a);
  uint32_t c = rv__attrs_code(a, field, iid);
  if (c) {
    const char *v = a->f[field].vals[c - 1];
    size_t len = strlen(v);
    if (len + 1 > size) {
      err = RV_ERR_INVALID;
    } else {
      memcpy(buf, v, len + 1);
      err = RV_OK;
    }
  }
  rv__attrs_unlock(a);
  return err;
}

double rv_attrs_get_number(const rv_attrs_t *a, uint32_t iid, int field) {
  if (field < 0 || field >= a->n_fields || a->f[field].type != RV_FIELD_NUMBER) return NAN;
  return rv__attrs_number(a, field, iid);
}

uint32_t rv__attrs_lookup_locked(const rv_attrs_t *a, int f, const char *value) { return dict_find(&a->f[f], value); }

size_t rv__attrs_posting_locked(const rv_attrs_t *a, int f, uint32_t code, const uint32_t **ids) {
  const field_t *fl = &a->f[f];
  if (code == 0 || code > fl->n_vals) {
    if (ids) *ids = NULL;
    return 0;
  }
  if (ids) *ids = fl->post[code - 1].ids;
  return fl->post[code - 1].n;
}

uint32_t rv__attrs_dict_size_locked(const rv_attrs_t *a, int f) { return a->f[f].n_vals; }

size_t rv_attrs_count_keyword(const rv_attrs_t *a, int field, const char *value) {
  if (field < 0 || field >= a->n_fields || a->f[field].type != RV_FIELD_KEYWORD || !value) return 0;
  rv__attrs_rdlock(a);
  size_t n = rv__attrs_posting_locked(a, field, rv__attrs_lookup_locked(a, field, value), NULL);
  rv__attrs_unlock(a);
  return n;
}

/* ---- serialization ------------------------------------------------------- */

#define IO_BATCH 4096

typedef struct wr {
  int (*fn)(void *ctx, const void *buf, size_t len);
  void *ctx;
  int failed;
} wr_t;

static void put(wr_t *w, const void *p, size_t n) {
  if (!w->failed && n && w->fn(w->ctx, p, n)) w->failed = 1;
}

static void put_u32(wr_t *w, uint32_t v) {
  uint8_t b[4];
  rv__put_u32(b, v);
  put(w, b, 4);
}

rv_err_t rv_attrs_write(const rv_attrs_t *a, int (*write)(void *ctx, const void *buf, size_t len), void *ctx) {
  wr_t w = {write, ctx, 0};
  uint8_t *buf = malloc(IO_BATCH * 8);
  if (!buf) return RV_ERR_NOMEM;
  rv_err_t err = RV_OK;
  rv__attrs_rdlock(a);
  uint32_t bound = atomic_load(&a->bound);
  put_u32(&w, TAG_ATTRS);
  put_u32(&w, (uint32_t)a->n_fields);
  for (int i = 0; i < a->n_fields; i++) {
    size_t len = strlen(a->conf[i].name);
    put_u32(&w, (uint32_t)a->conf[i].type);
    put_u32(&w, (uint32_t)len);
    put(&w, a->conf[i].name, len);
  }
  put_u32(&w, bound);
  for (int i = 0; i < a->n_fields && !w.failed && !err; i++) {
    const field_t *f = &a->f[i];
    if (f->type == RV_FIELD_KEYWORD) {
      /* Renumber: only values some slot holds survive. */
      uint32_t *remap = calloc((size_t)f->n_vals + 1, sizeof *remap);
      if (!remap) {
        err = RV_ERR_NOMEM;
        break;
      }
      uint32_t used = 0;
      for (uint32_t c = 1; c <= f->n_vals; c++)
        if (f->post[c - 1].n) remap[c] = ++used;
      put_u32(&w, used);
      for (uint32_t c = 1; c <= f->n_vals; c++) {
        if (!remap[c]) continue;
        size_t len = strlen(f->vals[c - 1]);
        put_u32(&w, (uint32_t)len);
        put(&w, f->vals[c - 1], len);
      }
      for (uint32_t s = 0; s < bound && !w.failed;) {
        uint32_t n = bound - s < IO_BATCH ? bound - s : IO_BATCH;
        for (uint32_t j = 0; j < n; j++) rv__put_u32(buf + 4 * j, remap[rv__attrs_code(a, i, s + j)]);
        put(&w, buf, (size_t)n * 4);
        s += n;
      }
      free(remap);
    } else {
      for (uint32_t s = 0; s < bound && !w.failed;) {
        uint32_t n = bound - s < IO_BATCH ? bound - s : IO_BATCH;
        for (uint32_t j = 0; j < n; j++) rv__put_u64(buf + 8 * j, num_bits(rv__attrs_number(a, i, s + j)));
        put(&w, buf, (size_t)n * 8);
        s += n;
      }
    }
  }
  put_u32(&w, TAG_END);
  rv__attrs_unlock(a);
  free(buf);
  if (err) return err;
  return w.failed ? RV_ERR_IO : RV_OK;
}

typedef struct rd {
  int (*fn)(void *ctx, void *buf, size_t len);
  void *ctx;
} rd_t;

static int get(rd_t *r, void *p, size_t n) { return n ? r->fn(r->ctx, p, n) : 0; }

static int get_u32(rd_t *r, uint32_t *v) {
  uint8_t b[4];
  if (get(r, b, 4)) return -1;
  *v = rv__get_u32(b);
  return 0;
}

#define CORRUPT(...)                                                 \
  do {                                                               \
    err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, __VA_ARGS__); \
    goto fail;                                                       \
  } while (0)
#define TRUNC(what) CORRUPT("attrs: truncated in %s", what)

rv_err_t rv_attrs_read(int (*read)(void *ctx, void *buf, size_t len), void *ctx, rv_attrs_t **out, char *errstr,
                       size_t errstr_size) {
  rd_t r = {read, ctx};
  rv_err_t err = RV_OK;
  rv_attrs_t *a = NULL;
  uint8_t *buf = NULL;
  char *sval = NULL;
  *out = NULL;
  uint32_t tag, nf, bound;
  if (get_u32(&r, &tag)) TRUNC("the tag");
  if (tag != TAG_ATTRS) CORRUPT("attrs: bad tag 0x%08x", tag);
  if (get_u32(&r, &nf)) TRUNC("the field count");
  if (nf > RV_MAX_FIELDS) CORRUPT("attrs: %u fields (at most %d)", nf, RV_MAX_FIELDS);
  rv_field_conf_t fields[RV_MAX_FIELDS];
  memset(fields, 0, sizeof fields);
  for (uint32_t i = 0; i < nf; i++) {
    uint32_t type, len;
    if (get_u32(&r, &type) || get_u32(&r, &len)) TRUNC("a field");
    if (type > RV_FIELD_NUMBER) CORRUPT("attrs: field %u has unknown type %u", i, type);
    if (len == 0 || len >= RV_NAME_MAX) CORRUPT("attrs: field %u has a name of %u bytes", i, len);
    if (get(&r, fields[i].name, len)) TRUNC("a field name");
    if (memchr(fields[i].name, 0, len)) CORRUPT("attrs: field %u name has a NUL byte", i);
    fields[i].type = (rv_field_type_t)type;
  }
  char msg[256];
  a = rv_attrs_new(fields, (int)nf, msg, sizeof msg);
  if (!a) CORRUPT("%s", msg);
  if (get_u32(&r, &bound)) TRUNC("the slot bound");
  if (bound == UINT32_MAX) CORRUPT("attrs: slot bound %u out of range", bound);
  buf = malloc(IO_BATCH * 8);
  sval = malloc(RV_ATTR_VALUE_MAX + 1);
  if (!buf || !sval) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "attrs: out of memory");
    goto fail;
  }
  /* The store is private until returned: no locking needed, but the helpers
   * expect the writer's view, which this is. */
  for (uint32_t i = 0; i < nf; i++) {
    field_t *f = &a->f[i];
    if (f->type == RV_FIELD_KEYWORD) {
      uint32_t nv;
      if (get_u32(&r, &nv)) TRUNC("a dictionary size");
      if (nv > bound) CORRUPT("attrs: field '%s' has %u values for %u slots", fields[i].name, nv, bound);
      for (uint32_t v = 0; v < nv; v++) {
        uint32_t len;
        if (get_u32(&r, &len)) TRUNC("a dictionary value");
        if (len > RV_ATTR_VALUE_MAX) CORRUPT("attrs: field '%s' value %u has %u bytes", fields[i].name, v, len);
        if (get(&r, sval, len)) TRUNC("a dictionary value");
        sval[len] = 0;
        if (memchr(sval, 0, len)) CORRUPT("attrs: field '%s' value %u has a NUL byte", fields[i].name, v);
        if (dict_find(f, sval)) CORRUPT("attrs: field '%s' value '%s' appears twice", fields[i].name, sval);
        if (!dict_add(f, sval)) {
          err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "attrs: out of memory");
          goto fail;
        }
      }
      for (uint32_t s = 0; s < bound;) {
        uint32_t n = bound - s < IO_BATCH ? bound - s : IO_BATCH;
        if (get(&r, buf, (size_t)n * 4)) TRUNC("slot codes");
        if (ensure_slot(a, s + n - 1)) {
          err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "attrs: out of memory");
          goto fail;
        }
        for (uint32_t j = 0; j < n; j++) {
          uint32_t c = rv__get_u32(buf + 4 * j);
          if (c > nv) CORRUPT("attrs: field '%s' slot %u has code %u of %u", fields[i].name, s + j, c, nv);
          if (!c) continue;
          if (posting_reserve(&f->post[c - 1], 1)) {
            err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "attrs: out of memory");
            goto fail;
          }
          posting_append(f, c, s + j);
          atomic_store_explicit(code_ref(f, s + j), c, memory_order_relaxed);
        }
        s += n;
      }
      for (uint32_t c = 1; c <= nv; c++)
        if (!f->post[c - 1].n) CORRUPT("attrs: field '%s' value %u is held by no slot", fields[i].name, c);
    } else {
      for (uint32_t s = 0; s < bound;) {
        uint32_t n = bound - s < IO_BATCH ? bound - s : IO_BATCH;
        if (get(&r, buf, (size_t)n * 8)) TRUNC("slot numbers");
        if (ensure_slot(a, s + n - 1)) {
          err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "attrs: out of memory");
          goto fail;
        }
        for (uint32_t j = 0; j < n; j++)
          atomic_store_explicit(num_ref(f, s + j), num_bits(rv__get_f64(buf + 8 * j)), memory_order_relaxed);
        s += n;
      }
    }
  }
  if (get_u32(&r, &tag)) TRUNC("the end tag");
  if (tag != TAG_END) CORRUPT("attrs: bad end tag 0x%08x", tag);
  size_t n_set = 0;
  uint32_t hi = 0;
  for (uint32_t s = 0; s < bound; s++)
    if (slot_has_any(a, s)) {
      n_set++;
      hi = s + 1;
    }
  atomic_store(&a->n_set, n_set);
  atomic_store(&a->bound, hi);
  free(buf);
  free(sval);
  *out = a;
  return RV_OK;
fail:
  free(buf);
  free(sval);
  rv_attrs_destroy(a);
  return err;
}
