#ifndef RV_HNSW_INTERNAL_H
#define RV_HNSW_INTERNAL_H
/* Internal to index/rv_hnsw*.c: the index's layout, shared by the core
 * (rv_hnsw.c), the graph algorithms (rv_hnsw_graph.c) and the stream format
 * (rv_hnsw_io.c).
 *
 * Memory. Slots live in chunks of geometrically growing size (chunk c holds
 * base << c slots), reached through small tables of atomic pointers that never
 * move: growing allocates a new chunk and publishes its pointer, so a search
 * never reads memory that is moved or freed under it. Each chunk has three
 * parallel arrays: the level-0 records (code first, 64-byte aligned, then the
 * level-0 link list), the per-slot state, and (SQ8, PQ with floats) the float
 * vectors kept for re-ranking.
 *
 * Publication. A slot's data (code, floats, level, upper links, id) is
 * written before any link to it is stored; links are stored with release and
 * loaded with acquire, so whoever reaches a slot through a link sees its data.
 * Link lists change under the slot's spin lock, readers take no lock and see
 * either the old or the new id in each position (all of them valid slots).
 * A deleted slot is rewritten only under the reuse rwlock held exclusively;
 * every reader of vectors (searches, inserts, repairs) holds it shared. */
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdint.h>

#include "rv_distance.h"
#include "rv_hnsw.h"
#include "rv_sq8.h"

#define RV__HNSW_MAX_LEVEL 24
#define RV__HNSW_MAX_CHUNKS 33
#define RV__HNSW_NONE UINT32_MAX
#define RV__HNSW_EP_EMPTY UINT64_MAX
#define RV__HNSW_MAX_SLOTS (UINT32_MAX - 1u)

enum { RV__SLOT_FREE = 0, RV__SLOT_INSERTING = 1, RV__SLOT_LIVE = 2, RV__SLOT_DELETED = 3 };

/* How a code is scored against a prepared query. */
enum { RV__D_FLOAT_L2, RV__D_FLOAT_DOT, RV__D_SQ8_L2, RV__D_SQ8_DOT, RV__D_PQ };

/* Per-slot state that traversal does not read. (The RV__SLOT_* state word sits
 * in the level-0 record, next to the code, where the traversal reads it.) */
typedef struct rv__hnsw_slot {
  _Atomic uint32_t version; /* bumped each time the slot is reused */
  _Atomic uint32_t *upper;  /* levels 1..level, (1 + M) words each: count, links; NULL at level 0 */
  char *ext_id;             /* owned; stable while the slot is not reused */
  uint32_t ext_hash;        /* low bits of rv__hash_id(ext_id), for the id map */
  int8_t level;             /* top level of this node */
  _Atomic uint8_t lock;     /* spin lock over this node's link lists (writers only) */
} rv__hnsw_slot_t;

typedef struct rv__cand {
  float d;
  uint32_t id;
} rv__cand_t;

typedef struct rv__heap {
  rv__cand_t *a;
  int n, cap;
} rv__heap_t;

/* Per-search scratch, pooled: the visited set and heaps, the prepared query. */
typedef struct rv__hnsw_ctx {
  uint16_t *visited; /* epoch tag per slot */
  uint32_t visited_n;
  uint16_t epoch;
  rv__heap_t cand, top;
  rv__cand_t *sel; /* heuristic scratch */
  int sel_cap;
  float *qf;      /* the query as floats (normalised for cosine), dim */
  float *qc;      /* PQ: the distance table, m * 256 */
  int16_t *qi;    /* SQ8: the integer query, rv_sq8_code_size(dim) */
  rv_sq8_query_t qy; /* SQ8: the prepared query (points into qi) */
  float *va, *vb; /* dim floats each: decoded vectors (PQ without floats) */
  float *vc;        /* dim floats: a decoded base vector */
  uint32_t *links;  /* snapshot of a link list, 2M words */
  uint32_t *xs;     /* snapshot of a deleted node's list, 2M words */
  rv__cand_t *un;   /* union of candidate links, 4M + 2 */
  rv__cand_t *plan; /* an insert's chosen neighbours, M per level */
  int plan_n[RV__HNSW_MAX_LEVEL + 1];
  int plan_top;     /* highest planned level, -1: none (s became the entry point) */
  int plan_maxl;    /* the graph's top level when planned */
} rv__hnsw_ctx_t;

struct rv_hnsw {
  rv_hnsw_conf_t conf;
  const rv_kernels_t *k;
  int dim;
  int maxM, maxM0;       /* links per list on levels >= 1, on level 0 */
  double level_mult;     /* 1 / ln(M) */
  size_t code_bytes;     /* bytes of code at the start of a record (SQ8: padded code, then its norm) */
  size_t sq8_norm_off;   /* SQ8: offset of the code's rv_sq8_code_norm (= rv_sq8_code_size(dim)) */
  size_t state_off;      /* offset of the RV__SLOT_* word in a record (after the code) */
  size_t links0_off;     /* offset of the level-0 list in a record (after the state) */
  size_t rec_size;       /* record stride, multiple of 64 */
  size_t float_stride;   /* floats per vector in the float arrays (multiple of 16); 0 if none */
  int keep_floats;       /* floats stored outside the records */
  int dist_kind;         /* RV__D_* for traversal */
  float dot_bias;        /* 1 for cosine, 0 for ip */
  unsigned chunk_shift;  /* chunk 0 holds 1 << chunk_shift slots */

  _Atomic(unsigned char *) recs[RV__HNSW_MAX_CHUNKS];
  _Atomic(rv__hnsw_slot_t *) slots[RV__HNSW_MAX_CHUNKS];
  _Atomic(float *) floats[RV__HNSW_MAX_CHUNKS];
  int n_chunks; /* under alloc_mu */

  pthread_mutex_t alloc_mu; /* slot allocation, chunk growth, the free list */
  _Atomic uint32_t n_slots; /* slots handed out so far */
  uint32_t *free_list;
  size_t n_free, free_cap;
  _Atomic size_t capacity;

  pthread_mutex_t ep_mu; /* changes of the entry point */
  _Atomic uint64_t ep;   /* (level << 32) | slot, or RV__HNSW_EP_EMPTY */

  pthread_rwlock_t reuse_lock; /* shared: anyone reading vectors; exclusive: rewriting a deleted slot */

  pthread_mutex_t map_mu; /* the id map and LIVE/DELETED flips of mapped slots */
  uint32_t *map;          /* slot + 1, 0 = empty; linear probing, backward-shift deletion */
  size_t map_cap, map_n;

  _Atomic size_t count;       /* live vectors */
  _Atomic size_t n_deleted;   /* tombstones */
  _Atomic uint64_t level_ctr; /* level generator counter */
  _Atomic size_t upper_bytes;
  _Atomic size_t id_bytes;

  /* quantizers */
  struct rv_sq8 *sq8;  /* owned; SQ8 storage */
  struct rv_pq *pq;    /* owned; PQ storage */
  const float *sq8_w;  /* rv_sq8_l2_weights(sq8) */
  int pq_m;            /* PQ code bytes */

  pthread_mutex_t pool_mu;
  rv__hnsw_ctx_t **pool;
  int n_pool, pool_cap;
};

/* ---- slot addressing --------------------------------------------------- */

static inline void rv__hnsw_locate(const rv_hnsw_t *h, uint32_t s, unsigned *c, size_t *off) {
  uint64_t t = (uint64_t)s + (1ull << h->chunk_shift);
  unsigned top = 63u - (unsigned)__builtin_clzll(t);
  *c = top - h->chunk_shift;
  *off = (size_t)(t - (1ull << top));
}

static inline unsigned char *rv__hnsw_rec(const rv_hnsw_t *h, uint32_t s) {
  unsigned c;
  size_t off;
  rv__hnsw_locate(h, s, &c, &off);
  return atomic_load_explicit(&((rv_hnsw_t *)h)->recs[c], memory_order_relaxed) + off * h->rec_size;
}

static inline rv__hnsw_slot_t *rv__hnsw_slot(const rv_hnsw_t *h, uint32_t s) {
  unsigned c;
  size_t off;
  rv__hnsw_locate(h, s, &c, &off);
  return atomic_load_explicit(&((rv_hnsw_t *)h)->slots[c], memory_order_relaxed) + off;
}

/* Floats kept beside the graph (SQ8, PQ with floats), else NULL. */
static inline float *rv__hnsw_floats(const rv_hnsw_t *h, uint32_t s) {
  if (!h->keep_floats) return NULL;
  unsigned c;
  size_t off;
  rv__hnsw_locate(h, s, &c, &off);
  return atomic_load_explicit(&((rv_hnsw_t *)h)->floats[c], memory_order_relaxed) + off * h->float_stride;
}

static inline _Atomic uint32_t *rv__hnsw_state(const rv_hnsw_t *h, uint32_t s) {
  return (_Atomic uint32_t *)(rv__hnsw_rec(h, s) + h->state_off);
}

/* The link list of slot s at level l: word 0 is the count. */
static inline _Atomic uint32_t *rv__hnsw_links(const rv_hnsw_t *h, uint32_t s, int l) {
  if (l == 0) return (_Atomic uint32_t *)(rv__hnsw_rec(h, s) + h->links0_off);
  return rv__hnsw_slot(h, s)->upper + (size_t)(l - 1) * (size_t)(h->maxM + 1);
}

static inline void rv__hnsw_lock(rv__hnsw_slot_t *sl) {
  for (int spins = 0;; spins++) {
    if (!atomic_exchange_explicit(&sl->lock, 1, memory_order_acquire)) return;
    while (atomic_load_explicit(&sl->lock, memory_order_relaxed))
      if (++spins > 64) sched_yield();
  }
}
static inline void rv__hnsw_unlock(rv__hnsw_slot_t *sl) { atomic_store_explicit(&sl->lock, 0, memory_order_release); }

/* ---- shared between the .c files ----------------------------------------- */

rv__hnsw_ctx_t *rv__hnsw_ctx_get(const rv_hnsw_t *h);
void rv__hnsw_ctx_put(const rv_hnsw_t *h, rv__hnsw_ctx_t *c);
void rv__hnsw_ctx_free(rv__hnsw_ctx_t *c);

/* The float vector of slot s (stored, or decoded into buf for PQ without floats). */
const float *rv__hnsw_vec(const rv_hnsw_t *h, uint32_t s, float *buf);
/* Exact distance between two float vectors under the metric (unit vectors for cosine). */
float rv__hnsw_fdist(const rv_hnsw_t *h, const float *a, const float *b);
/* SQ8: zeroes the code's padding and stores its norm after it. */
void rv__hnsw_encode_sq8_tail(const rv_hnsw_t *h, unsigned char *code);
/* Writes the code of v (already normalised) into code. */
void rv__hnsw_encode(const rv_hnsw_t *h, const float *v, unsigned char *code);
/* Copies query/vector v into out, normalised under cosine; RV_ERR_INVALID for
 * non-finite values or a zero vector under cosine. */
rv_err_t rv__hnsw_load_query(const rv_hnsw_t *h, const float *v, float *out);
/* Prepares c->qc/qi/qy for scoring codes against c->qf (already loaded).
 * RV_ERR_INVALID if the quantizer cannot represent the query. */
rv_err_t rv__hnsw_prepare_query(const rv_hnsw_t *h, rv__hnsw_ctx_t *c);

/* An insert in three phases (see rv_hnsw_graph.c); the caller holds the
 * reuse lock shared for plan and connect, and shared or exclusive for
 * write_own. plan returns RV_ERR_NOMEM. */
rv_err_t rv__hnsw_plan(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s, int level);
void rv__hnsw_write_own(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s);
void rv__hnsw_connect(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s);
/* Reconnects the neighbours of deleted slot s around it. Reuse lock shared. */
void rv__hnsw_repair(rv_hnsw_t *h, rv__hnsw_ctx_t *c, uint32_t s);

/* Slot allocation helpers for the stream reader. */
rv_err_t rv__hnsw_reserve(rv_hnsw_t *h, uint32_t n_slots);
rv_err_t rv__hnsw_map_insert_locked(rv_hnsw_t *h, uint32_t s);
uint32_t rv__hnsw_map_find_locked(const rv_hnsw_t *h, const char *id, uint32_t hash);

#endif
