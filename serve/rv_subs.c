#include "rv_subs.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_attrs.h"
#include "rv_log.h"
#include "rv_subs_kernels.h"

#define LOG "subs"
#define SCRATCH_RESETS 4096 /* metadata sets before the scratch attribute store is renewed */
#define SUBSCRIBE_TRIES 3   /* lock-free first searches before one under the mutex */
#define CHUNK 8             /* upserts whose first-block sums are made in one pass over the queries */

/* A candidate: immutable once made, shared (reference counted, under the
 * mutex) by a query's candidate list, its top-k saved at the start of a batch
 * and the updates in its history. */
typedef struct entry {
  char *id;
  char *meta;
  float score;
  int refs;
} entry_t;

/* An update as kept in a query's history: hits and ids point into entries. */
typedef struct update {
  uint64_t qseq; /* the query's seq */
  uint64_t as_of;
  rv_hit_t *enter, *moved;
  const char **leave;
  int n_enter, n_moved, n_leave;
  entry_t **held; /* the entries the above point into */
  int n_held;
} update_t;

typedef struct sub sub_t;

typedef struct query {
  int slot;             /* row in the rv_subs's Q, thr, dist and qs arrays */
  uint64_t hash;        /* of vector bytes, k, ef, filter key */
  int k, ef, cap;       /* cap = k + extra candidates */
  rv_filter_t *filter;  /* owned; NULL: none */
  char *filter_key;     /* owned; NULL: none */
  float *vec;           /* owned: the query as given (dim floats) */
  entry_t **cand;       /* cap slots: the exact top n_cand, best first */
  int n_cand;
  int exhausted;        /* no matching vector outside cand */
  int dirty;            /* fewer than k candidates and maybe more exist: re-search */
  int touched;          /* prev holds the top-k as of the last update */
  entry_t **prev;       /* k slots */
  int n_prev;
  uint64_t stamp;       /* change number that last handled this query */
  uint64_t seq, as_of;
  update_t **hist;      /* ring of the last n_hist updates (seq - n_hist + 1 .. seq) */
  int hist_head, n_hist;
  sub_t *subs;          /* its subscribers */
  int refs;
} query_t;

struct sub {
  uint64_t id;
  query_t *q;
  uint64_t base; /* q->seq when it subscribed: its seq = q->seq - base */
  void *user;
  sub_t *next_id;           /* hash chain by id */
  sub_t *next_q, *prev_q;   /* q's subscribers */
};

/* The queries an id is a candidate of. */
typedef struct member {
  char *id;
  uint64_t h;
  query_t **qs;
  int n, cap;
  struct member *next;
} member_t;

struct rv_subs {
  rv_subs_conf_t conf;
  const rv__subs_kernels_t *kern;
  int dim;
  size_t nb;         /* RV_SUBS_BLOCK-float blocks per row */
  const rv_kernels_t *dk; /* exact distances between original vectors */
  int haar;          /* l2: rows are Haar transforms of the vectors (n_haar long) */
  size_t n_haar;     /* a power of two >= dim */
  size_t dpad;       /* dim rounded up to 16: rows of O */
  double *hbuf;      /* 2 * n_haar: the transform's work space */
  pthread_mutex_t mu;

  /* queries, dense by slot */
  query_t **qs;
  float *Q;          /* cap_q rows, block-major (rv_subs_kernels.h): l2 Haar rows, else the vectors (unit under
                        cosine) */
  float *O;          /* l2: cap_q original query vectors, dpad apart, for exact distances */
  float *thr;        /* per slot: the score a change must not exceed to matter */
  float *dist;       /* per slot: the current change's kernel output */
  float *Qn;         /* nb * cap_q, block-major: |row from block b on| (rv_subs_kernels.h) */
  uint32_t *work;    /* per slot: the kernel's scratch */
  int n_q, cap_q;

  sub_t **sub_tab;   /* by id */
  size_t sub_buckets, n_subs;
  uint64_t next_sub;

  member_t **mem_tab;
  size_t mem_buckets, n_mem;

  float *X;          /* CHUNK changes' vectors as rows (as Q's), nb * RV_SUBS_BLOCK apart */
  float *XO;         /* l2: CHUNK changes' vectors, dpad apart */
  float *F;          /* l2: CHUNK * cap_q first-block sums (block0_many) */
  float *XN;         /* CHUNK * nb: |X_c from block b on| */
  float *row;        /* a query's row before it is spread over the blocks */
  float *rown;       /* nb: its tail norms */
  rv_attrs_t *scratch; /* slot 0 holds the current change's attributes */
  int scratch_uses;
  uint64_t change_no;  /* changes evaluated, numbers them */
  uint64_t evals;      /* batches evaluated (subscribe checks it for a race) */
  uint64_t as_of;
  rv_subs_stats_t st;
};

/* ---- small helpers --------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

static uint64_t hash_str(const char *s) { return fnv(0xcbf29ce484222325ULL, s, strlen(s)); }

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Rank order: score, then id. */
static int rank_cmp(float sa, const char *ia, float sb, const char *ib) {
  if (sa < sb) return -1;
  if (sa > sb) return 1;
  return strcmp(ia, ib);
}

static entry_t *entry_new(const char *id, const char *meta, float score) {
  entry_t *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->id = strdup(id);
  e->meta = meta ? strdup(meta) : NULL;
  if (!e->id || (meta && !e->meta)) {
    free(e->id);
    free(e->meta);
    free(e);
    return NULL;
  }
  e->score = score;
  e->refs = 1;
  return e;
}

static void entry_unref(entry_t *e) {
  if (e && --e->refs == 0) {
    free(e->id);
    free(e->meta);
    free(e);
  }
}

static void update_free(update_t *u) {
  if (!u) return;
  for (int i = 0; i < u->n_held; i++) entry_unref(u->held[i]);
  free(u->held);
  free(u->enter);
  free(u->moved);
  free(u->leave);
  free(u);
}

static int hits_copy(entry_t *const *es, int n, rv_hit_list_t *out) {
  out->hits = calloc(n ? (size_t)n : 1, sizeof *out->hits);
  out->n = 0;
  if (!out->hits) return -1;
  for (int i = 0; i < n; i++) {
    rv_hit_t *h = &out->hits[out->n++];
    h->id = strdup(es[i]->id);
    h->metadata = es[i]->meta ? strdup(es[i]->meta) : NULL;
    h->score = es[i]->score;
    if (!h->id || (es[i]->meta && !h->metadata)) {
      rv_hit_list_close(out);
      return -1;
    }
  }
  return 0;
}

/* ---- the member map: id -> queries it is a candidate of -------------------- */

static member_t **mem_slot(rv_subs_t *s, const char *id, uint64_t h) {
  member_t **p = &s->mem_tab[h & (s->mem_buckets - 1)];
  while (*p && ((*p)->h != h || strcmp((*p)->id, id))) p = &(*p)->next;
  return p;
}

static member_t *mem_find(rv_subs_t *s, const char *id) {
  return *mem_slot(s, id, hash_str(id));
}

static void mem_grow(rv_subs_t *s) {
  size_t nb = s->mem_buckets * 2;
  member_t **t = calloc(nb, sizeof *t);
  if (!t) return; /* stays correct, only slower */
  for (size_t b = 0; b < s->mem_buckets; b++) {
    for (member_t *m = s->mem_tab[b], *next; m; m = next) {
      next = m->next;
      m->next = t[m->h & (nb - 1)];
      t[m->h & (nb - 1)] = m;
    }
  }
  free(s->mem_tab);
  s->mem_tab = t;
  s->mem_buckets = nb;
}

static int mem_add(rv_subs_t *s, const char *id, query_t *q) {
  uint64_t h = hash_str(id);
  member_t **p = mem_slot(s, id, h);
  member_t *m = *p;
  if (!m) {
    m = calloc(1, sizeof *m);
    if (!m || !(m->id = strdup(id))) {
      free(m);
      return -1;
    }
    m->h = h;
    *p = m;
    if (++s->n_mem > s->mem_buckets) mem_grow(s);
  }
  if (m->n == m->cap) {
    int nc = m->cap ? m->cap * 2 : 2;
    query_t **nq = realloc(m->qs, (size_t)nc * sizeof *nq);
    if (!nq) return -1;
    m->qs = nq;
    m->cap = nc;
  }
  m->qs[m->n++] = q;
  return 0;
}

static void mem_remove(rv_subs_t *s, const char *id, query_t *q) {
  member_t **p = mem_slot(s, id, hash_str(id));
  member_t *m = *p;
  if (!m) return;
  for (int i = 0; i < m->n; i++) {
    if (m->qs[i] == q) {
      m->qs[i] = m->qs[--m->n];
      break;
    }
  }
  if (m->n == 0) {
    *p = m->next;
    free(m->id);
    free(m->qs);
    free(m);
    s->n_mem--;
  }
}

/* ---- candidate lists -------------------------------------------------------- */

/* The score a change must not exceed for q to look at it (ties are then
 * settled by id): the last candidate's, unbounded while q holds every
 * matching vector and has room, and never when q awaits a re-search. */
static void update_thr(rv_subs_t *s, query_t *q) {
  float t;
  if (q->dirty) t = -INFINITY;
  else if (q->exhausted && q->n_cand < q->cap) t = INFINITY;
  else if (q->n_cand == 0) t = -INFINITY;
  else t = q->cand[q->n_cand - 1]->score;
  s->thr[q->slot] = t;
}

/* Saves q's top-k before its first edit since its last update. */
static void touch(query_t *q) {
  if (q->touched) return;
  q->touched = 1;
  q->n_prev = q->n_cand < q->k ? q->n_cand : q->k;
  for (int i = 0; i < q->n_prev; i++) {
    q->prev[i] = q->cand[i];
    q->prev[i]->refs++;
  }
}

static void cand_remove_at(rv_subs_t *s, query_t *q, int i) {
  entry_t *e = q->cand[i];
  mem_remove(s, e->id, q);
  memmove(&q->cand[i], &q->cand[i + 1], (size_t)(q->n_cand - i - 1) * sizeof *q->cand);
  q->n_cand--;
  entry_unref(e);
}

static int cand_find(const query_t *q, const char *id) {
  for (int i = 0; i < q->n_cand; i++)
    if (!strcmp(q->cand[i]->id, id)) return i;
  return -1;
}

/* Where (score, id) would go in q's list; n_cand when after every candidate. */
static int cand_pos(const query_t *q, float score, const char *id) {
  int lo = 0, hi = q->n_cand;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (rank_cmp(q->cand[mid]->score, q->cand[mid]->id, score, id) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* 1 if a matching vector (score, id) not in q's list belongs in it. */
static int qualifies(const query_t *q, float score, const char *id) {
  if (q->dirty) return 0;
  int pos = cand_pos(q, score, id);
  if (pos < q->n_cand) return 1;
  return q->n_cand < q->cap && q->exhausted;
}

/* Inserts a qualifying vector; the last candidate falls off a full list. */
static int cand_insert(rv_subs_t *s, query_t *q, const char *id, const char *meta, float score) {
  entry_t *e = entry_new(id, meta, score);
  if (!e) return -1;
  if (mem_add(s, id, q)) {
    entry_unref(e);
    return -1;
  }
  touch(q);
  if (q->n_cand == q->cap) {
    cand_remove_at(s, q, q->n_cand - 1);
    q->exhausted = 0;
  }
  int pos = cand_pos(q, score, id);
  memmove(&q->cand[pos + 1], &q->cand[pos], (size_t)(q->n_cand - pos) * sizeof *q->cand);
  q->cand[pos] = e;
  q->n_cand++;
  return 0;
}

/* Marks q for a re-search when its list no longer covers k. */
static void check_dirty(rv_subs_t *s, query_t *q) {
  if (!q->dirty && q->n_cand < q->k && !q->exhausted) {
    touch(q);
    q->dirty = 1;
  }
  update_thr(s, q);
}

/* Replaces q's candidates with a search's hits. */
static int cand_set(rv_subs_t *s, query_t *q, const rv_hit_list_t *hits) {
  while (q->n_cand) cand_remove_at(s, q, q->n_cand - 1);
  int n = hits->n < q->cap ? hits->n : q->cap;
  for (int i = 0; i < n; i++) {
    entry_t *e = entry_new(hits->hits[i].id, hits->hits[i].metadata, hits->hits[i].score);
    if (!e || mem_add(s, e->id, q)) {
      entry_unref(e);
      return -1;
    }
    q->cand[q->n_cand++] = e;
  }
  q->exhausted = hits->n < q->cap;
  return 0;
}

/* ---- metadata -> attributes (the replica's rules, rv_replica.h) ------------ */

/* Sets scratch slot 0 from a change's metadata: keyword fields take strings
 * (and integers as decimal text), number fields finite numbers; anything
 * else leaves the field missing. Mirrors the replica's reading of metadata
 * so a filter judges a change as a filtered search would. */
static void scratch_set(rv_subs_t *s, const char *metadata) {
  const rv_collection_conf_t *col = &s->conf.collection;
  if (++s->scratch_uses > SCRATCH_RESETS) { /* its dictionaries only grow */
    rv_attrs_t *fresh = rv_attrs_new(col->fields, col->n_fields, NULL, 0);
    if (fresh) {
      rv_attrs_destroy(s->scratch);
      s->scratch = fresh;
      s->scratch_uses = 0;
    }
  }
  rv_attr_value_t vals[RV_MAX_FIELDS];
  char ints[RV_MAX_FIELDS][24];
  int n = 0;
  json_t *root = metadata ? json_loads(metadata, 0, NULL) : NULL;
  if (json_is_object(root)) {
    for (int f = 0; f < col->n_fields; f++) {
      const rv_field_conf_t *fc = &col->fields[f];
      json_t *v = json_object_get(root, fc->name);
      if (!v) continue;
      rv_attr_value_t *out = &vals[n];
      out->field = fc->name;
      out->keyword = NULL;
      out->number = NAN;
      if (fc->type == RV_FIELD_KEYWORD) {
        if (json_is_string(v) && json_string_length(v) <= RV_ATTR_VALUE_MAX &&
            strlen(json_string_value(v)) == json_string_length(v)) {
          out->keyword = json_string_value(v);
        } else if (json_is_integer(v)) {
          snprintf(ints[n], sizeof ints[n], "%" JSON_INTEGER_FORMAT, json_integer_value(v));
          out->keyword = ints[n];
        } else {
          continue;
        }
      } else {
        if (!json_is_number(v) || !isfinite(json_number_value(v))) continue;
        out->number = json_number_value(v);
      }
      n++;
    }
  }
  rv_attrs_clear(s->scratch, 0);
  if (n) rv_attrs_set(s->scratch, 0, vals, n, NULL, 0);
  json_decref(root);
}

/* ---- construction --------------------------------------------------------- */

rv_subs_t *rv_subs_new(const rv_subs_conf_t *conf, char *errstr, size_t errstr_size) {
  const rv_collection_conf_t *col = &conf->collection;
  if (!conf->search) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "subscriptions need a search callback");
    return NULL;
  }
  if (col->dim < 1 || col->dim > 65536) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "dim %d out of range 1..65536", col->dim);
    return NULL;
  }
  if (col->metric != RV_METRIC_L2 && col->metric != RV_METRIC_COSINE && col->metric != RV_METRIC_IP) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "unknown metric %d", (int)col->metric);
    return NULL;
  }
  rv_subs_t *s = calloc(1, sizeof *s);
  if (!s) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  s->conf = *conf;
  if (s->conf.extra <= 0) s->conf.extra = 8;
  if (s->conf.history <= 0) s->conf.history = 64;
  s->kern = rv__subs_kernels_get(conf->scalar ? RV_ISA_SCALAR : RV_ISA_BEST);
  s->dim = col->dim;
  s->dk = rv_kernels_get(conf->scalar ? RV_ISA_SCALAR : RV_ISA_BEST);
  s->haar = col->metric == RV_METRIC_L2;
  s->n_haar = 1;
  while (s->n_haar < (size_t)col->dim) s->n_haar *= 2;
  s->dpad = ((size_t)col->dim + 15) / 16 * 16;
  size_t len = s->haar ? s->n_haar : (size_t)col->dim;
  s->nb = (len + RV_SUBS_BLOCK - 1) / RV_SUBS_BLOCK;
  s->sub_buckets = 64;
  s->mem_buckets = 256;
  s->next_sub = 1;
  s->sub_tab = calloc(s->sub_buckets, sizeof *s->sub_tab);
  s->mem_tab = calloc(s->mem_buckets, sizeof *s->mem_tab);
  size_t n = s->nb * RV_SUBS_BLOCK;
  s->X = aligned_alloc(64, CHUNK * n * sizeof(float));
  s->XO = aligned_alloc(64, CHUNK * s->dpad * sizeof(float));
  s->hbuf = malloc(2 * s->n_haar * sizeof(double));
  s->row = malloc(n * sizeof(float));
  s->XN = malloc(CHUNK * s->nb * sizeof(float));
  s->rown = malloc(s->nb * sizeof(float));
  s->scratch = rv_attrs_new(col->fields, col->n_fields, errstr, errstr_size);
  if (!s->scratch) {
    rv_subs_destroy(s);
    return NULL;
  }
  if (!s->sub_tab || !s->mem_tab || !s->X || !s->row || !s->XO || !s->hbuf || !s->XN || !s->rown || pthread_mutex_init(&s->mu, NULL)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    rv_attrs_destroy(s->scratch);
    free(s->sub_tab);
    free(s->mem_tab);
    free(s->X);
    free(s->row);
    free(s->XO);
    free(s->hbuf);
    free(s->XN);
    free(s->rown);
    free(s);
    return NULL;
  }
  return s;
}

static void query_free(rv_subs_t *s, query_t *q) {
  while (q->n_cand) cand_remove_at(s, q, q->n_cand - 1);
  if (q->touched)
    for (int i = 0; i < q->n_prev; i++) entry_unref(q->prev[i]);
  for (int i = 0; i < q->n_hist; i++) update_free(q->hist[(q->hist_head + i) % s->conf.history]);
  rv_filter_destroy(q->filter);
  free(q->filter_key);
  free(q->vec);
  free(q->cand);
  free(q->prev);
  free(q->hist);
  free(q);
}

void rv_subs_destroy(rv_subs_t *s) {
  if (!s) return;
  for (size_t b = 0; s->sub_tab && b < s->sub_buckets; b++) {
    for (sub_t *u = s->sub_tab[b], *next; u; u = next) {
      next = u->next_id;
      free(u);
    }
  }
  for (int i = 0; i < s->n_q; i++) query_free(s, s->qs[i]);
  free(s->sub_tab);
  free(s->mem_tab);
  free(s->qs);
  free(s->Q);
  free(s->thr);
  free(s->dist);
  free(s->X);
  free(s->F);
  free(s->row);
  free(s->XO);
  free(s->hbuf);
  free(s->O);
  free(s->work);
  free(s->XN);
  free(s->rown);
  free(s->Qn);
  rv_attrs_destroy(s->scratch);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ---- queries ----------------------------------------------------------------- */

static uint64_t query_hash(const float *q, int dim, int k, int ef, const char *fkey) {
  uint64_t h = fnv(0xcbf29ce484222325ULL, q, (size_t)dim * sizeof *q);
  int ke[2] = {k, ef};
  h = fnv(h, ke, sizeof ke);
  return fkey ? fnv(h, fkey, strlen(fkey) + 1) : h;
}

static query_t *query_find(rv_subs_t *s, uint64_t h, const float *vec, int k, int ef, const char *fkey) {
  for (int i = 0; i < s->n_q; i++) {
    query_t *q = s->qs[i];
    if (q->hash == h && q->k == k && q->ef == ef && !memcmp(q->vec, vec, (size_t)s->dim * sizeof *vec) &&
        (fkey ? q->filter_key && !strcmp(q->filter_key, fkey) : !q->filter_key))
      return q;
  }
  return NULL;
}

static int grow_slots(rv_subs_t *s) {
  if (s->n_q < s->cap_q) return 0;
  size_t nc = s->cap_q ? (size_t)s->cap_q * 2 : 16;
  float *Q = aligned_alloc(64, nc * s->nb * RV_SUBS_BLOCK * sizeof(float));
  float *thr = malloc(nc * sizeof *thr), *dist = malloc(nc * sizeof *dist);
  uint32_t *work = malloc(nc * sizeof *work);
  float *Qn = malloc(nc * s->nb * sizeof *Qn);
  float *O = s->haar ? aligned_alloc(64, nc * s->dpad * sizeof(float)) : NULL;
  float *F = s->haar ? malloc(CHUNK * nc * sizeof(float)) : NULL;
  query_t **qs = malloc(nc * sizeof *qs);
  if (!Q || !thr || !dist || !work || !qs || !Qn || (s->haar && (!O || !F))) {
    free(F);
    free(O);
    free(Qn);
    free(Q);
    free(thr);
    free(dist);
    free(work);
    free(qs);
    return -1;
  }
  for (size_t b = 0; b < s->nb && s->n_q; b++) { /* each block's rows move to the new block start */
    memcpy(Q + b * nc * RV_SUBS_BLOCK, s->Q + b * (size_t)s->cap_q * RV_SUBS_BLOCK,
           (size_t)s->n_q * RV_SUBS_BLOCK * sizeof(float));
    memcpy(Qn + b * nc, s->Qn + b * (size_t)s->cap_q, (size_t)s->n_q * sizeof *Qn);
  }
  if (s->n_q) {
    if (O) memcpy(O, s->O, (size_t)s->n_q * s->dpad * sizeof(float));
    memcpy(thr, s->thr, (size_t)s->n_q * sizeof *thr);
    memcpy(qs, s->qs, (size_t)s->n_q * sizeof *qs);
  }
  free(s->Q);
  free(s->thr);
  free(s->dist);
  free(s->work);
  free(s->Qn);
  free(s->O);
  free(s->F);
  free(s->qs);
  s->O = O;
  s->F = F;
  s->Q = Q;
  s->Qn = Qn;
  s->thr = thr;
  s->dist = dist;
  s->work = work;
  s->qs = qs;
  s->cap_q = (int)nc;
  return 0;
}

/* v as a row: under l2 its orthonormal Haar transform (made in double, so
 * each coefficient is off by at most a rounding: well within the kernel's
 * 2^-22 of the norm), coarse coefficients first; else v itself, normalised
 * under cosine; zero-padded. The transform keeps distances, and puts most
 * of a smooth vector's energy (images, say) in the first block. */
static void make_row(const rv_subs_t *s, float *dst, const float *v) {
  size_t n = s->nb * RV_SUBS_BLOCK;
  if (s->haar) {
    double *a = s->hbuf, *t = s->hbuf + s->n_haar;
    for (size_t i = 0; i < s->n_haar; i++) a[i] = i < (size_t)s->dim ? v[i] : 0;
    for (size_t len = s->n_haar; len > 1; len /= 2) {
      for (size_t i = 0; i < len / 2; i++) {
        t[i] = (a[2 * i] + a[2 * i + 1]) * 0.70710678118654752440;
        t[len / 2 + i] = (a[2 * i] - a[2 * i + 1]) * 0.70710678118654752440;
      }
      memcpy(a, t, len * sizeof *a);
    }
    for (size_t i = 0; i < n; i++) dst[i] = i < s->n_haar ? (float)a[i] : 0.0f;
    return;
  }
  double norm = 1;
  if (s->conf.collection.metric == RV_METRIC_COSINE) {
    double n2 = 0;
    for (int i = 0; i < s->dim; i++) n2 += (double)v[i] * v[i];
    norm = n2 > 0 ? sqrt(n2) : 1;
  }
  for (size_t i = 0; i < n; i++) dst[i] = i < (size_t)s->dim ? (float)(v[i] / norm) : 0.0f;
}

/* v zero-padded to dpad floats (l2's exact distances). */
static void make_orig(const rv_subs_t *s, float *dst, const float *v) {
  memcpy(dst, v, (size_t)s->dim * sizeof *v);
  for (size_t i = (size_t)s->dim; i < s->dpad; i++) dst[i] = 0;
}

/* The norms of row's tails: tn[b] = |row from block b on|. */
static void tail_norms(const rv_subs_t *s, const float *row, float *tn) {
  double acc = 0;
  for (size_t b = s->nb; b-- > 0;) {
    const float *r = row + b * RV_SUBS_BLOCK;
    double a[4] = {0, 0, 0, 0}; /* four chains: a single one is bound by add latency */
    for (size_t i = 0; i < RV_SUBS_BLOCK; i += 4)
      for (int u = 0; u < 4; u++) a[u] += (double)r[i + u] * r[i + u];
    acc += (a[0] + a[1]) + (a[2] + a[3]);
    tn[b] = (float)sqrt(acc);
  }
}

static float *block_row(const rv_subs_t *s, size_t b, int slot) {
  return s->Q + (b * (size_t)s->cap_q + (size_t)slot) * RV_SUBS_BLOCK;
}

/* Spreads row (nb blocks) into slot's place in each block. */
static void put_row(rv_subs_t *s, int slot, const float *row) {
  tail_norms(s, row, s->rown);
  for (size_t b = 0; b < s->nb; b++) {
    memcpy(block_row(s, b, slot), row + b * RV_SUBS_BLOCK, RV_SUBS_BLOCK * sizeof(float));
    s->Qn[b * (size_t)s->cap_q + (size_t)slot] = s->rown[b];
  }
}

/* A new query from a search's hits; takes f. NULL on no memory (f freed). */
static query_t *query_add(rv_subs_t *s, uint64_t h, const float *vec, int k, int ef, rv_filter_t *f,
                          const char *fkey, const rv_hit_list_t *hits, uint64_t as_of) {
  query_t *q = calloc(1, sizeof *q);
  if (!q || grow_slots(s)) {
    free(q);
    rv_filter_destroy(f);
    return NULL;
  }
  q->hash = h;
  q->k = k;
  q->ef = ef;
  q->cap = k + s->conf.extra;
  q->filter = f;
  q->filter_key = fkey ? strdup(fkey) : NULL;
  q->vec = malloc((size_t)s->dim * sizeof *vec);
  q->cand = calloc((size_t)q->cap, sizeof *q->cand);
  q->prev = calloc((size_t)k, sizeof *q->prev);
  q->hist = calloc((size_t)s->conf.history, sizeof *q->hist);
  q->as_of = as_of;
  q->slot = s->n_q;
  if (!q->vec || !q->cand || !q->prev || !q->hist || (fkey && !q->filter_key) || cand_set(s, q, hits)) {
    query_free(s, q);
    return NULL;
  }
  memcpy(q->vec, vec, (size_t)s->dim * sizeof *vec);
  make_row(s, s->row, vec);
  put_row(s, q->slot, s->row);
  if (s->haar) make_orig(s, s->O + (size_t)q->slot * s->dpad, vec);
  s->qs[s->n_q++] = q;
  update_thr(s, q);
  return q;
}

static void query_remove(rv_subs_t *s, query_t *q) {
  int last = s->n_q - 1;
  if (q->slot != last) {
    query_t *m = s->qs[last];
    for (size_t b = 0; b < s->nb; b++) {
      memcpy(block_row(s, b, q->slot), block_row(s, b, last), RV_SUBS_BLOCK * sizeof(float));
      s->Qn[b * (size_t)s->cap_q + (size_t)q->slot] = s->Qn[b * (size_t)s->cap_q + (size_t)last];
    }
    if (s->haar) memcpy(s->O + (size_t)q->slot * s->dpad, s->O + (size_t)last * s->dpad, s->dpad * sizeof(float));
    s->thr[q->slot] = s->thr[last];
    s->qs[q->slot] = m;
    m->slot = q->slot;
  }
  s->n_q--;
  query_free(s, q);
}

static int snapshot_locked(rv_subs_t *s, const query_t *q, uint64_t base, rv_subs_snapshot_t *snap) {
  int n = q->n_cand < q->k ? q->n_cand : q->k;
  if (hits_copy(q->cand, n, &snap->hits)) return -1;
  snap->seq = q->seq - base;
  snap->as_of = q->as_of > s->as_of ? q->as_of : s->as_of;
  return 0;
}

/* ---- subscribers --------------------------------------------------------------- */

static sub_t **sub_slot(rv_subs_t *s, uint64_t id) {
  sub_t **p = &s->sub_tab[mix(id) & (s->sub_buckets - 1)];
  while (*p && (*p)->id != id) p = &(*p)->next_id;
  return p;
}

static void sub_grow(rv_subs_t *s) {
  size_t nb = s->sub_buckets * 2;
  sub_t **t = calloc(nb, sizeof *t);
  if (!t) return;
  for (size_t b = 0; b < s->sub_buckets; b++) {
    for (sub_t *u = s->sub_tab[b], *next; u; u = next) {
      next = u->next_id;
      size_t i = mix(u->id) & (nb - 1);
      u->next_id = t[i];
      t[i] = u;
    }
  }
  free(s->sub_tab);
  s->sub_tab = t;
  s->sub_buckets = nb;
}

/* Adds a subscriber of q and its snapshot. */
static rv_err_t join_locked(rv_subs_t *s, query_t *q, void *user, uint64_t *id, rv_subs_snapshot_t *snap) {
  sub_t *u = calloc(1, sizeof *u);
  if (!u) return RV_ERR_NOMEM;
  if (snapshot_locked(s, q, q->seq, snap)) {
    free(u);
    return RV_ERR_NOMEM;
  }
  u->id = s->next_sub++;
  u->q = q;
  u->base = q->seq;
  u->user = user;
  sub_t **p = sub_slot(s, u->id);
  *p = u;
  u->next_q = q->subs;
  if (q->subs) q->subs->prev_q = u;
  q->subs = u;
  q->refs++;
  if (++s->n_subs > s->sub_buckets) sub_grow(s);
  *id = u->id;
  return RV_OK;
}

rv_err_t rv_subs_subscribe(rv_subs_t *s, const float *vec, int k, int ef, rv_filter_t *f, const char *filter_key,
                           void *user, uint64_t *sub, rv_subs_snapshot_t *snap, char *errstr, size_t errstr_size) {
  memset(snap, 0, sizeof *snap);
  *sub = 0;
  if (!vec || k < 1 || k > 1000 || ef < 0) {
    rv_filter_destroy(f);
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "bad subscription (k %d, ef %d)", k, ef);
  }
  for (int i = 0; i < s->dim; i++) {
    if (!isfinite(vec[i])) {
      rv_filter_destroy(f);
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "vector element %d is not finite", i);
    }
  }
  if (filter_key && !*filter_key) filter_key = NULL;
  if ((f && rv_filter_n_clauses(f) > 0) != (filter_key != NULL)) {
    rv_filter_destroy(f);
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter and filter key disagree");
  }
  if (f && rv_filter_n_clauses(f) == 0) {
    rv_filter_destroy(f);
    f = NULL;
  }
  uint64_t h = query_hash(vec, s->dim, k, ef, filter_key);
  rv_err_t err = RV_OK;
  rv_hit_list_t hits = {0};
  pthread_mutex_lock(&s->mu);
  for (int attempt = 0;; attempt++) {
    query_t *q = query_find(s, h, vec, k, ef, filter_key);
    if (q) {
      err = q->dirty ? rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "subscription is being re-searched")
                     : join_locked(s, q, user, sub, snap);
      rv_filter_destroy(f);
      break;
    }
    /* A new query: its first search runs without the mutex, and counts only
     * if no batch was evaluated meanwhile (else that batch's changes might be
     * in neither the search nor the updates). After a few lost races it holds
     * the mutex instead, stalling the applier for one search. */
    uint64_t evals = s->evals, gen = 0;
    int locked = attempt >= SUBSCRIBE_TRIES;
    if (!locked) pthread_mutex_unlock(&s->mu);
    err = s->conf.search(s->conf.search_ctx, vec, s->dim, k + s->conf.extra, ef, f, &hits, &gen, errstr,
                         errstr_size);
    if (!locked) pthread_mutex_lock(&s->mu);
    if (err) {
      rv_filter_destroy(f);
      break;
    }
    if (s->evals != evals) {
      rv_hit_list_close(&hits);
      continue;
    }
    if (query_find(s, h, vec, k, ef, filter_key)) { /* another subscribe made it meanwhile: join that */
      rv_hit_list_close(&hits);
      continue;
    }
    q = query_add(s, h, vec, k, ef, f, filter_key, &hits, gen);
    f = NULL; /* now the query's (or freed) */
    err = q ? join_locked(s, q, user, sub, snap) : RV_ERR_NOMEM;
    if (err) {
      rv_errf(err, errstr, errstr_size, "out of memory");
      if (q) query_remove(s, q);
    }
    break;
  }
  pthread_mutex_unlock(&s->mu);
  rv_hit_list_close(&hits);
  return err;
}

rv_err_t rv_subs_unsubscribe(rv_subs_t *s, uint64_t id) {
  pthread_mutex_lock(&s->mu);
  sub_t **p = sub_slot(s, id);
  sub_t *u = *p;
  if (!u) {
    pthread_mutex_unlock(&s->mu);
    return RV_ERR_NOT_FOUND;
  }
  *p = u->next_id;
  s->n_subs--;
  query_t *q = u->q;
  if (u->prev_q) u->prev_q->next_q = u->next_q;
  else q->subs = u->next_q;
  if (u->next_q) u->next_q->prev_q = u->prev_q;
  if (--q->refs == 0) query_remove(s, q);
  free(u);
  pthread_mutex_unlock(&s->mu);
  return RV_OK;
}

static void view(const update_t *u, uint64_t base, rv_subs_update_t *out) {
  *out = (rv_subs_update_t){u->qseq - base, u->as_of, u->enter, u->n_enter, u->leave, u->n_leave,
                            u->moved, u->n_moved};
}

rv_err_t rv_subs_resume(rv_subs_t *s, uint64_t id, uint64_t seq, void (*replay)(void *ctx, const rv_subs_update_t *u),
                        void *ctx, int *reset, rv_subs_snapshot_t *snap) {
  memset(snap, 0, sizeof *snap);
  *reset = 0;
  pthread_mutex_lock(&s->mu);
  sub_t *u = *sub_slot(s, id);
  rv_err_t err = RV_OK;
  if (!u) {
    err = RV_ERR_NOT_FOUND;
  } else if (seq > u->q->seq - u->base) {
    err = RV_ERR_INVALID;
  } else {
    query_t *q = u->q;
    uint64_t from = u->base + seq + 1; /* first query seq to replay */
    uint64_t oldest = q->seq - (uint64_t)q->n_hist + 1;
    if (from > q->seq || from >= oldest) {
      for (uint64_t qs = from; qs <= q->seq; qs++) {
        rv_subs_update_t v;
        view(q->hist[(q->hist_head + (int)(qs - oldest)) % s->conf.history], u->base, &v);
        replay(ctx, &v);
      }
    } else if (q->dirty) {
      err = RV_ERR_UNAVAILABLE;
    } else {
      *reset = 1;
      if (snapshot_locked(s, q, u->base, snap)) err = RV_ERR_NOMEM;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return err;
}

/* ---- evaluation ---------------------------------------------------------------- */

/* q's top-k against the one saved by touch(): an update, or NULL when equal
 * (or on no memory: logged; the next update then carries the difference). */
typedef struct ranked {
  entry_t *e;
  int rank;
} ranked_t;

static int ranked_cmp(const void *a, const void *b) {
  return strcmp(((const ranked_t *)a)->e->id, ((const ranked_t *)b)->e->id);
}

static int same_meta(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

static update_t *diff(query_t *q) {
  int n_new = q->n_cand < q->k ? q->n_cand : q->k, n_old = q->n_prev;
  ranked_t *A = malloc(((size_t)n_old + 1) * sizeof *A), *B = malloc(((size_t)n_new + 1) * sizeof *B);
  char *in_old = calloc((size_t)n_old + 1, 1), *st_new = calloc((size_t)n_new + 1, 1); /* 0 enter, 1 same, 2 moved */
  update_t *u = calloc(1, sizeof *u);
  if (!A || !B || !in_old || !st_new || !u) goto fail;
  for (int i = 0; i < n_old; i++) A[i] = (ranked_t){q->prev[i], i};
  for (int i = 0; i < n_new; i++) B[i] = (ranked_t){q->cand[i], i};
  qsort(A, (size_t)n_old, sizeof *A, ranked_cmp);
  qsort(B, (size_t)n_new, sizeof *B, ranked_cmp);
  for (int i = 0, j = 0; i < n_old && j < n_new;) {
    int c = strcmp(A[i].e->id, B[j].e->id);
    if (c < 0) i++;
    else if (c > 0) j++;
    else {
      in_old[A[i].rank] = 1;
      const entry_t *o = A[i].e, *n = B[j].e;
      st_new[B[j].rank] = o == n || (o->score == n->score && same_meta(o->meta, n->meta)) ? 1 : 2;
      i++, j++;
    }
  }
  for (int i = 0; i < n_new; i++) u->n_enter += st_new[i] == 0, u->n_moved += st_new[i] == 2;
  for (int i = 0; i < n_old; i++) u->n_leave += !in_old[i];
  if (!u->n_enter && !u->n_moved && !u->n_leave) {
    free(u);
    u = NULL;
    goto done;
  }
  u->enter = calloc((size_t)u->n_enter + 1, sizeof *u->enter);
  u->moved = calloc((size_t)u->n_moved + 1, sizeof *u->moved);
  u->leave = calloc((size_t)u->n_leave + 1, sizeof *u->leave);
  u->held = calloc((size_t)(n_new + n_old) + 1, sizeof *u->held);
  if (!u->enter || !u->moved || !u->leave || !u->held) goto fail;
  int ne = 0, nm = 0, nl = 0;
  for (int i = 0; i < n_new; i++) {
    entry_t *e = q->cand[i];
    if (st_new[i] == 1) continue;
    rv_hit_t *h = st_new[i] == 0 ? &u->enter[ne++] : &u->moved[nm++];
    *h = (rv_hit_t){e->id, e->meta, e->score};
    e->refs++;
    u->held[u->n_held++] = e;
  }
  for (int i = 0; i < n_old; i++) {
    if (in_old[i]) continue;
    u->leave[nl++] = q->prev[i]->id;
    q->prev[i]->refs++;
    u->held[u->n_held++] = q->prev[i];
  }
  goto done;
fail:
  rv_warn(LOG, "out of memory computing a subscription update");
  update_free(u);
  u = NULL;
done:
  free(A);
  free(B);
  free(in_old);
  free(st_new);
  return u;
}

/* Closes q's batch: an update when its top-k changed, into the history and
 * to every subscriber. */
static void finish(rv_subs_t *s, query_t *q, uint64_t as_of) {
  update_t *u = diff(q);
  for (int i = 0; i < q->n_prev; i++) entry_unref(q->prev[i]);
  q->touched = 0;
  q->n_prev = 0;
  if (as_of > q->as_of) q->as_of = as_of;
  if (!u) return;
  u->qseq = ++q->seq;
  u->as_of = q->as_of;
  int H = s->conf.history;
  if (q->n_hist == H) {
    update_free(q->hist[q->hist_head]);
    q->hist[q->hist_head] = u;
    q->hist_head = (q->hist_head + 1) % H;
  } else {
    q->hist[(q->hist_head + q->n_hist++) % H] = u;
  }
  s->st.updates++;
  if (!s->conf.deliver) return;
  for (sub_t *b = q->subs; b; b = b->next_q) {
    rv_subs_update_t v;
    view(u, b->base, &v);
    s->conf.deliver(s->conf.deliver_ctx, b->id, b->user, &v);
    s->st.delivered++;
  }
}

static void research(rv_subs_t *s, query_t *q) {
  rv_hit_list_t hits = {0};
  uint64_t gen = 0;
  char errstr[256] = "";
  s->st.researches++;
  rv_err_t err = s->conf.search(s->conf.search_ctx, q->vec, s->dim, q->cap, q->ef, q->filter, &hits, &gen, errstr,
                                sizeof errstr);
  if (err == RV_OK && cand_set(s, q, &hits) == RV_OK) {
    q->dirty = 0;
    if (gen > q->as_of) q->as_of = gen;
  } else {
    /* stays dirty: retried after the next batch, updates held back till then */
    rv_warn(LOG, "re-search for a subscription failed: %s", err ? errstr : "out of memory");
    while (q->n_cand) cand_remove_at(s, q, q->n_cand - 1);
  }
  rv_hit_list_close(&hits);
}

/* 1 if change c's metadata passes q's filter (scratch filled once per change). */
static int passes(rv_subs_t *s, query_t *q, const rv_change_t *c, int *scratch_done) {
  if (!q->filter) return 1;
  if (!*scratch_done) {
    scratch_set(s, c->attributes);
    *scratch_done = 1;
  }
  s->st.filter_evals++;
  return rv_filter_matches(q->filter, s->scratch, 0);
}

static float score_of(const rv_subs_t *s, float kern_out) {
  switch (s->conf.collection.metric) {
  case RV_METRIC_IP: return -kern_out;
  case RV_METRIC_COSINE: return 1.0f - kern_out;
  default: return kern_out;
  }
}

/* The exact score of the current change for query q: l2 from the original
 * vectors, ip and cosine from the rows (which are the vectors). */
static float exact_score(rv_subs_t *s, query_t *q, int m) {
  s->st.distances++;
  if (s->haar) return s->dk->l2sq(s->XO + (size_t)m * s->dpad, s->O + (size_t)q->slot * s->dpad, (size_t)s->dim);
  float out;
  s->kern->dot_many(s->X + (size_t)m * s->nb * RV_SUBS_BLOCK, block_row(s, 0, q->slot), (size_t)s->cap_q, s->nb, 1,
                    &out);
  return score_of(s, out);
}

/* 1 if c is an upsert rv_subs can evaluate (logs the ones it cannot). */
static int usable_upsert(const rv_subs_t *s, const rv_change_t *c) {
  if (!c->id || c->op != RV_OP_UPSERT) return 0;
  if (!c->vector || c->dim != s->dim) {
    rv_warn(LOG, "change for id '%s' ignored: dim %d, subscriptions have %d", c->id, c->dim, s->dim);
    return 0;
  }
  return 1;
}

/* Evaluates change c against every query. An upsert's vector is in chunk
 * slot m (X, XN, XO), with its first-block sums in F when have_first. */
static void eval_change(rv_subs_t *s, const rv_change_t *c, int m, int have_first) {
  uint64_t no = ++s->change_no;
  int scratch_done = 0;
  int upsert = c->op == RV_OP_UPSERT;
  if (!c->id || (upsert && m < 0)) return;
  s->st.changes++;
  /* The queries c->id is a candidate of: out, then back in if it still qualifies. */
  member_t *mem = mem_find(s, c->id);
  if (mem) {
    int n = mem->n;
    query_t *stack[16], **qs = n <= 16 ? stack : malloc((size_t)n * sizeof *qs);
    if (!qs) {
      rv_warn(LOG, "out of memory evaluating a change");
      return;
    }
    memcpy(qs, mem->qs, (size_t)n * sizeof *qs); /* mem changes under the edits below */
    for (int i = 0; i < n; i++) {
      query_t *q = qs[i];
      q->stamp = no;
      if (q->dirty) continue;
      int at = cand_find(q, c->id);
      if (at < 0) continue;
      touch(q);
      cand_remove_at(s, q, at);
      if (upsert) {
        float sc = exact_score(s, q, m);
        if (qualifies(q, sc, c->id) && passes(s, q, c, &scratch_done) &&
            cand_insert(s, q, c->id, c->attributes, sc)) {
          q->dirty = 1; /* no memory: a re-search will rebuild it */
        }
      }
      check_dirty(s, q);
    }
    if (qs != stack) free(qs);
  }
  if (!upsert || !s->n_q) return;
  /* Every other query: one distance each, SIMD over the query rows. */
  if (s->conf.collection.metric == RV_METRIC_L2)
    s->kern->l2_many(s->X + (size_t)m * s->nb * RV_SUBS_BLOCK, s->XN + (size_t)m * s->nb, s->Q, s->Qn,
                     (size_t)s->cap_q, s->nb, (size_t)s->n_q, s->thr,
                     have_first ? s->F + (size_t)m * (size_t)s->n_q : NULL, s->dist, s->work);
  else
    s->kern->dot_many(s->X + (size_t)m * s->nb * RV_SUBS_BLOCK, s->Q, (size_t)s->cap_q, s->nb, (size_t)s->n_q,
                      s->dist);
  s->st.distances += (uint64_t)s->n_q;
  for (int j = 0; j < s->n_q; j++) {
    float sc = score_of(s, s->dist[j]);
    if (!(sc <= s->thr[j])) continue;
    query_t *q = s->qs[j];
    if (q->stamp == no || q->dirty) continue;
    if (s->haar && !((sc = exact_score(s, q, m)) <= s->thr[j])) continue; /* the kernel's pass is a bound */
    if (!qualifies(q, sc, c->id) || !passes(s, q, c, &scratch_done)) continue;
    if (cand_insert(s, q, c->id, c->attributes, sc)) {
      touch(q);
      q->dirty = 1;
    }
    check_dirty(s, q);
  }
}

void rv_subs_on_applied(void *ctx, const rv_replica_applied_t *batch) {
  rv_subs_t *s = ctx;
  int64_t t0 = now_ns();
  pthread_mutex_lock(&s->mu);
  s->evals++;
  s->st.batches++;
  /* In chunks of up to CHUNK upserts (and the deletes between them): their
   * vectors are prepared, and under l2 their first-block sums against every
   * query made in one pass over the queries (the threshold-free part); then
   * each change is evaluated in order against the thresholds as they stand. */
  size_t len = s->nb * RV_SUBS_BLOCK;
  for (int i = 0; i < batch->n && s->n_q;) { /* no query: nothing to do */
    int slot[CHUNK * 4], m = 0, end = i;
    for (; end < batch->n && m < CHUNK && end - i < CHUNK * 4; end++) {
      const rv_change_t *c = batch->changes[end];
      slot[end - i] = -1;
      if (!usable_upsert(s, c)) continue;
      make_row(s, s->X + (size_t)m * len, c->vector);
      tail_norms(s, s->X + (size_t)m * len, s->XN + (size_t)m * s->nb);
      if (s->haar) make_orig(s, s->XO + (size_t)m * s->dpad, c->vector);
      slot[end - i] = m++;
    }
    int have_first = s->haar && m > 0 && s->n_q > 0;
    if (have_first) s->kern->block0_many(s->X, len, (size_t)m, s->Q, (size_t)s->n_q, s->F);
    for (int t = i; t < end; t++) eval_change(s, batch->changes[t], slot[t - i], have_first);
    i = end;
  }
  if (batch->generation > s->as_of) s->as_of = batch->generation;
  for (int j = 0; j < s->n_q; j++) {
    query_t *q = s->qs[j];
    if (q->dirty) research(s, q);
    if (q->touched && !q->dirty) finish(s, q, s->as_of);
    else if (!q->dirty && s->as_of > q->as_of) q->as_of = s->as_of;
    update_thr(s, q);
  }
  s->st.eval_ns += (uint64_t)(now_ns() - t0);
  pthread_mutex_unlock(&s->mu);
}

void rv_subs_stats(rv_subs_t *s, rv_subs_stats_t *out) {
  pthread_mutex_lock(&s->mu);
  *out = s->st;
  out->subscribers = s->n_subs;
  out->queries = (uint64_t)s->n_q;
  pthread_mutex_unlock(&s->mu);
}
