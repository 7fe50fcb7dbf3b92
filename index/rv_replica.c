#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include "rv_replica.h"
#include "rv_hash.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rv_attrs.h"
#include "rv_buf.h"
#include "rv_bytes.h"
#include "rv_kafka.h"
#include "rv_log.h"
#include "rv_planner.h"
#include "rv_snapshot.h"
#include "rv_sq8.h"
#include "rv_time.h"

#define LOG "replica"
#define DEFAULT_EF 64             /* the seed's ef_search */
#define DEFAULT_M 16
#define DEFAULT_EF_CONSTRUCTION 100
#define DEFAULT_SQ8_TRAIN 1000
#define DEFAULT_MAX_LAG_MS 5000
#define DEFAULT_TOMBSTONE_MS 60000
#define METADATA_RETRY_MS 500     /* how often to look for a changelog topic that does not exist yet */
#define METADATA_REFRESH_MS 2000  /* how often to look for partitions added to the changelog */
#define POLL_MS 100               /* bounds how long rv_replica_destroy waits for the applier */
#define LAG_REFRESH_MS 50
#define RATE_WINDOW_MS 2000       /* applied_per_s is measured over windows this long */
#define BATCH_MAX 512             /* changes per applier batch (rv_replica_set_on_applied) */
#define WATERMARK_TIMEOUT_MS 5000 /* asking the brokers for a partition's end offset */
#define QUANTIZER_RETRY_MS 1000   /* after a failed store.quantizer call */
#define GAP_CONFIRM_MS 2000       /* a high watermark below the next offset this long is a reset */
#define LOAD_THREADS_MAX 8        /* store bootstrap: insert threads at most (conf.load_threads <= 0: online CPUs) */
#define LOAD_QUEUE_PER_THREAD 32  /* store bootstrap: rows queued per insert thread before load_put blocks */

#define NO_SLOT UINT32_MAX

/* The last version applied for one id, the graph slot holding its vector and
 * the id's metadata while it is live; kept after a delete (a tombstone) so
 * that a stale upsert re-delivered later cannot resurrect the id, until
 * conf.tombstone_ms after the delete (then swept).
 * (slot, slot_version) names exactly one insert into the graph (rv_hnsw.h:
 * a replaced vector gets a new slot, a reused slot a new version), so a search
 * hit whose (id, version) equals them was scored on the vector this metadata
 * came with. */
typedef struct version {
  char *id; /* owned; NULL marks an empty table slot */
  uint64_t hash;
  int32_t partition;
  int64_t offset;
  char *metadata;        /* owned JSON text; NULL when the id has none or is deleted */
  uint32_t slot;         /* the live vector's internal id; NO_SLOT when deleted (a tombstone) */
  uint32_t slot_version; /* rv_hnsw_version of slot when the vector was inserted */
  int64_t deleted_at;    /* tombstones: monotonic ms of the delete's apply */
} version_t;

typedef struct versions {
  version_t *slots; /* linear probing, power-of-two size, load <= 1/2 */
  size_t cap;
  size_t n;
} versions_t;

/* One replica state: the engine, the attribute store and the version map.
 * The live one (rv_replica.st) is what searches see; a bootstrap builds a
 * fresh one and swaps it in whole. */
typedef struct state {
  rv_hnsw_t *hnsw;
  rv_attrs_t *attrs;
  versions_t versions;
  int sq8_pending;       /* own SQ8 training wanted, the index is still float */
  int32_t qver;          /* stored quantizer version installed (0: none) */
  int32_t q_missing;     /* a version the store said it does not have (not asked again) */
  int64_t q_retry_at;    /* after a failed store.quantizer call: not before this (mono ms) */
  size_t n_tomb;         /* tombstones in versions */
  int64_t tomb_next;     /* mono ms when the oldest tombstone expires; INT64_MAX: none */
  int64_t swept_at;
} state_t;

/* One changelog partition the replica reads. The atomics are stored by the
 * applier and read by stats on any thread; marks/pend under part_mu. */
typedef struct part {
  int32_t partition;
  _Atomic int64_t next_off;   /* next offset to apply, -1: none read yet */
  _Atomic int64_t hw;         /* high watermark, -1 unknown */
  _Atomic int64_t last_ts;    /* changelog timestamp (wall ms) of the last applied record, -1 none */
  _Atomic int64_t event_lag;  /* event lag of the last applied change, -1 none */
  _Atomic uint64_t n_applied; /* records applied */
  _Atomic int64_t rate_milli; /* applied per second * 1000 over the last window */
  uint64_t rate_base;         /* applier only: n_applied at rate_at */
  int64_t rate_at;
  int fetched;                /* applier only: a record or EOF arrived since the last assignment */
  int64_t gap_since;          /* applier only: since when the high watermark is below next_off, 0 not */
  int64_t target;             /* applier only, replaying: the end offset to reach */
  rv_source_position_t *marks; /* position markers applied: per source partition, the last next_offset */
  int n_marks, cap_marks;
  rv_source_position_t *pend;  /* the same for a replay in progress (installed when it is swapped in) */
  int n_pend, cap_pend;
} part_t;

/* Locks (see rv_replica.h, "Threads and locks"), always taken in this order:
 *   apply_mu   serialises the writers of the replica's own state: applies,
 *              the SQ8 rebuild, bootstrap swaps, sweeps, snapshots (which
 *              must see no apply half done). Searches never take it.
 *   lock       guards which state (engine, attrs) is current. Searches, stats
 *              and filter_new hold it shared; only swaps (SQ8 rebuild,
 *              bootstrap) take it exclusively.
 *   meta_lock  guards the live versions map against the applier's
 *              publication of a change (and the map's growth and sweeps).
 *              Never held across a call into rv_hnsw or rv_attrs.
 *   part_mu    the partition array (pointer and count), position markers and
 *              base positions; pos_cv signals a change of positions. A leaf:
 *              nothing else is taken while it is held. */
struct rv_replica {
  rv_replica_conf_t conf;
  pthread_mutex_t apply_mu;
  pthread_rwlock_t lock;
  pthread_rwlock_t meta_lock;
  state_t st;                      /* the live state; see the locks above */
  atomic_uint_fast64_t applied;    /* bumped by applies (under apply_mu) */
  atomic_uint_fast64_t generation; /* bumped (release) after a change is published */
  atomic_uint_fast64_t tombstones; /* st.n_tomb, for stats */
  int restored;                    /* set by new only */
  void (*apply_hook)(void *ctx, const char *stage); /* tests: rv__replica_set_apply_hook */
  void *apply_hook_ctx;
  void (*on_applied)(void *ctx, const rv_replica_applied_t *batch);
  void *on_applied_ctx;
  int64_t *start_off;    /* offsets loaded from the snapshot, by partition (-1: beginning); immutable after new */
  int n_start;

  pthread_mutex_t part_mu;
  pthread_cond_t pos_cv;
  part_t **parts;        /* under part_mu (written by the applier, also holding apply_mu) */
  int n_parts;
  rv_source_position_t *base; /* positions from the store or a snapshot, under part_mu */
  int n_base, cap_base;
  atomic_int n_topic;         /* changelog partition count, 0 unknown */

  atomic_int boot;            /* rv_replica_boot_t */
  _Atomic int64_t boot_ms;
  atomic_int bootstrapped;
  atomic_uint_fast64_t rebootstraps;
  _Atomic int64_t snapshot_pause_ms;
  _Atomic int64_t snapshot_ms;
  int replaying;              /* under apply_mu (written by the applier): a replay into fresh is running */
  state_t fresh;              /* the applier's state being built by a replay */

  pthread_mutex_t snap_mu;    /* orders snapshot file writers */
  pthread_t snap_thread;      /* the background snapshot writer (applier thread starts and joins it) */
  int snap_started;           /* applier only (and destroy, after the applier): snap_thread to join */
  atomic_int snap_busy;       /* the background writer is running */
  atomic_int unsaved;         /* a state swap (bootstrap) happened since the last periodic snapshot */

  atomic_uint_fast64_t skipped;
  atomic_int_fast64_t lag; /* written by the applier thread */
  atomic_bool stop;        /* set by rv_replica_destroy */
  int started;             /* caller's thread only */
  pthread_t thread;
  rd_kafka_t *rk;    /* the applier's consumer; created by start, destroyed by destroy */
  rv_codec_t *codec; /* used by the applier thread only */
};

/* One row handed to the insert threads. id and metadata are its version
 * entry's strings (freed only when the state or the load is); vec and code
 * point into the pool's arenas. */
typedef struct load_job {
  const char *id;
  uint64_t hash;
  const char *metadata;
  const float *vec;    /* NULL: a code-only row */
  const uint8_t *code; /* NULL: insert from vec (no stored code) */
} load_job_t;

/* The insert threads of a store bootstrap (see rv_replica_load_put). The
 * caller (the loader, on the applier thread) makes each row's version entry
 * (slot NO_SLOT) and queues the row; a thread inserts it into the graph and
 * the attribute store, in parallel with the others (rv_hnsw.h: parallel
 * build = several threads calling upsert), then fills in the entry's slot
 * under map_mu. Every other use of the fresh state (a duplicate id, a
 * quantizer install, own SQ8 training) first waits for the queue to drain
 * and runs on the caller's thread, as a sequential load would. */
typedef struct load_pool {
  int n_threads;         /* wanted; 1: no pool, rows are applied on the caller's thread */
  int started;           /* threads running */
  int used;              /* threads the load started (for the log) */
  pthread_t threads[LOAD_THREADS_MAX];
  pthread_mutex_t mu;    /* everything below but map_mu's charge */
  pthread_cond_t work_cv, room_cv, idle_cv;
  int cap;               /* job slots */
  load_job_t *jobs;
  float *vecs;           /* cap * dim */
  uint8_t *codes;        /* cap * dim */
  int *queue, q_head, q_n; /* ring of job indexes to insert */
  int *free_ix, n_free;  /* stack of idle job indexes */
  int busy;              /* jobs being inserted */
  int stop;
  rv_err_t err;          /* RV_ERR_NOMEM once an insert ran out of memory: the load fails */
  uint64_t refused;      /* rows an insert thread refused (their entries are dropped) */
  char first_refused[160];
  pthread_mutex_t map_mu; /* the fresh state's versions map, while threads run */
} load_pool_t;

struct rv_replica_load {
  rv_replica_t *r;
  state_t st;              /* the fresh state being filled */
  int64_t *end;            /* per r->parts index: the end offset marked */
  int n_end;
  int marked;
  rv_source_position_t *pos;
  int n_pos;
  uint64_t puts, skipped;
  load_pool_t pool;
};

static version_t *versions_find(const versions_t *v, const char *id, uint64_t h) {
  if (!v->cap) return NULL;
  size_t mask = v->cap - 1;
  for (size_t i = h & mask; v->slots[i].id; i = (i + 1) & mask)
    if (v->slots[i].hash == h && !strcmp(v->slots[i].id, id)) return &v->slots[i];
  return NULL;
}

/* Inserts an entry known to be absent; the caller has made room. */
static version_t *versions_put(versions_t *v, char *id, uint64_t h) {
  size_t mask = v->cap - 1, i = h & mask;
  while (v->slots[i].id) i = (i + 1) & mask;
  v->slots[i].id = id;
  v->slots[i].hash = h;
  v->slots[i].slot = NO_SLOT;
  v->n++;
  return &v->slots[i];
}

/* A table of cap slots holding v's entries for which keep(e) (all: keep
 * NULL), sharing their strings. */
static rv_err_t versions_copy(const versions_t *v, size_t cap, int (*keep)(void *ctx, const version_t *e), void *ctx,
                              versions_t *out) {
  version_t *slots = calloc(cap, sizeof *slots);
  if (!slots) return RV_ERR_NOMEM;
  *out = (versions_t){slots, cap, 0};
  for (size_t i = 0; i < v->cap; i++) {
    if (!v->slots[i].id || (keep && !keep(ctx, &v->slots[i]))) continue;
    version_t *e = versions_put(out, v->slots[i].id, v->slots[i].hash);
    *e = v->slots[i];
  }
  return RV_OK;
}

/* If v has no room for one more entry, builds in *grown a table twice the
 * size holding v's entries (sharing their strings: v stays valid until it is
 * replaced by *grown, then only its slots array is freed); otherwise sets
 * grown->slots to NULL. v is not changed, so readers may use it meanwhile. */
static rv_err_t versions_grow(const versions_t *v, versions_t *grown) {
  memset(grown, 0, sizeof *grown);
  if ((v->n + 1) * 2 <= v->cap) return RV_OK;
  return versions_copy(v, v->cap ? v->cap * 2 : 64, NULL, NULL, grown);
}

/* Makes room for one more entry, in place (no concurrent readers: loading).
 * On failure the map is unchanged. */
static rv_err_t versions_reserve(versions_t *v) {
  versions_t grown;
  if (versions_grow(v, &grown)) return RV_ERR_NOMEM;
  if (!grown.slots) return RV_OK;
  free(v->slots);
  *v = grown;
  return RV_OK;
}

/* Sizes an empty table for n entries at once (load <= 1/2), instead of the
 * doublings and rehashes of n versions_reserve calls. No-op unless empty. */
static rv_err_t versions_presize(versions_t *v, size_t n) {
  if (v->cap || v->n) return RV_OK;
  size_t cap = 64;
  while (cap < 2 * (n + 1)) cap *= 2;
  version_t *slots = calloc(cap, sizeof *slots);
  if (!slots) return RV_ERR_NOMEM;
  *v = (versions_t){slots, cap, 0};
  return RV_OK;
}

static void versions_close(versions_t *v) {
  for (size_t i = 0; i < v->cap; i++) {
    free(v->slots[i].id);
    free(v->slots[i].metadata);
  }
  free(v->slots);
  memset(v, 0, sizeof *v);
}

static void state_close(state_t *s) {
  rv_hnsw_destroy(s->hnsw);
  rv_attrs_destroy(s->attrs);
  versions_close(&s->versions);
  memset(s, 0, sizeof *s);
}

/* glibc's default rwlock prefers readers: with searches arriving back to back
 * the applier would never get in. Prefer the writer (we never nest read locks,
 * which is what makes that kind deadlock-prone). */
static int init_lock(pthread_rwlock_t *lock) {
  pthread_rwlockattr_t attr;
  if (pthread_rwlockattr_init(&attr)) return -1;
#ifdef __GLIBC__
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
  int rc = pthread_rwlock_init(lock, &attr);
  pthread_rwlockattr_destroy(&attr);
  return rc;
}

/* ---- attributes from metadata ------------------------------------------ */

/* The declared fields' values found in one metadata text. */
typedef struct parsed_attrs {
  json_t *root; /* owns the keyword strings vals point into */
  rv_attr_value_t vals[RV_MAX_FIELDS];
  char ints[RV_MAX_FIELDS][24]; /* integers given for keyword fields, as decimal text */
  int n;
} parsed_attrs_t;

/* Fills p from metadata (NULL, not JSON or not an object: no values). A
 * value of the wrong type leaves its field missing: metadata is the
 * producer's, and one odd record must not stop the applier. */
static void parse_attrs(const rv_collection_conf_t *col, const char *metadata, parsed_attrs_t *p) {
  memset(p, 0, sizeof *p);
  if (!metadata || col->n_fields == 0) return;
  p->root = json_loads(metadata, 0, NULL);
  if (!p->root) return;
  if (!json_is_object(p->root)) {
    json_decref(p->root);
    p->root = NULL;
    return;
  }
  for (int f = 0; f < col->n_fields; f++) {
    const rv_field_conf_t *fc = &col->fields[f];
    json_t *v = json_object_get(p->root, fc->name);
    if (!v) continue;
    rv_attr_value_t *out = &p->vals[p->n];
    out->field = fc->name;
    out->keyword = NULL;
    out->number = NAN;
    if (fc->type == RV_FIELD_KEYWORD) {
      if (json_is_string(v) && json_string_length(v) <= RV_ATTR_VALUE_MAX &&
          strlen(json_string_value(v)) == json_string_length(v)) {
        out->keyword = json_string_value(v);
      } else if (json_is_integer(v)) {
        snprintf(p->ints[p->n], sizeof p->ints[p->n], "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        out->keyword = p->ints[p->n];
      } else {
        continue;
      }
    } else {
      if (!json_is_number(v) || !isfinite(json_number_value(v))) continue;
      out->number = json_number_value(v);
    }
    p->n++;
  }
}

static void parsed_attrs_close(parsed_attrs_t *p) {
  json_decref(p->root);
  p->root = NULL;
}

/* Sets slot iid's attributes from metadata. By the applying thread. */
static void set_attrs(rv_replica_t *r, rv_attrs_t *a, uint32_t iid, const char *id, const parsed_attrs_t *p) {
  if (!p->n) return; /* a fresh or cleared slot has none */
  char errstr[256];
  if (rv_attrs_set(a, iid, p->vals, p->n, errstr, sizeof errstr))
    rv_warn(LOG, "%s: id '%s': filter attributes not stored: %s", r->conf.region, id, errstr);
}

/* ---- construction --------------------------------------------------------- */

static void make_hnsw_conf(const rv_replica_conf_t *c, rv_hnsw_storage_t storage, rv_hnsw_conf_t *hc) {
  rv_hnsw_conf_defaults(hc);
  hc->dim = c->collection.dim;
  hc->metric = c->collection.metric;
  hc->M = c->hnsw_m;
  hc->ef_construction = c->ef_construction;
  hc->ef_search = c->ef_search;
  hc->storage = storage;
}

/* SQ8 with the store's quantizer and codes. Not under cosine: ingest trains
 * and encodes the raw vectors, while the engine scores codes of unit vectors
 * against unit queries there (rv_hnsw.h), so the replica trains its own. */
static int stored_quantizer(const rv_replica_conf_t *c) {
  return c->storage == RV_HNSW_SQ8 && c->store.quantizer && c->collection.metric != RV_METRIC_COSINE;
}

/* SQ8 storage trained by the replica itself. */
static int own_training(const rv_replica_conf_t *c) { return c->storage == RV_HNSW_SQ8 && !stored_quantizer(c); }

/* A new empty state (float index) into *s. */
static rv_err_t state_init(const rv_replica_conf_t *c, state_t *s, char *errstr, size_t errstr_size) {
  memset(s, 0, sizeof *s);
  s->tomb_next = INT64_MAX;
  rv_hnsw_conf_t hc;
  make_hnsw_conf(c, RV_HNSW_FLOAT, &hc);
  s->hnsw = rv_hnsw_new(&hc, errstr, errstr_size);
  if (!s->hnsw) return RV_ERR_CONFIG;
  s->attrs = rv_attrs_new(c->collection.fields, c->collection.n_fields, errstr, errstr_size);
  if (!s->attrs) {
    rv_hnsw_destroy(s->hnsw);
    s->hnsw = NULL;
    if (!errstr[0]) rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return RV_ERR_CONFIG;
  }
  s->sq8_pending = own_training(c);
  return RV_OK;
}

static rv_err_t load_snapshot(rv_replica_t *r, char *errstr, size_t errstr_size);

rv_replica_t *rv_replica_new(const rv_replica_conf_t *conf, char *errstr, size_t errstr_size) {
  if (!conf) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no configuration");
    return NULL;
  }
  rv_replica_t *r = calloc(1, sizeof *r);
  if (!r) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  int inited = 0;
  r->conf = *conf;
  rv_replica_conf_t *c = &r->conf;
  c->brokers[sizeof c->brokers - 1] = '\0';
  c->region[sizeof c->region - 1] = '\0';
  c->snapshot_path[sizeof c->snapshot_path - 1] = '\0';
  c->collection.name[sizeof c->collection.name - 1] = '\0';
  c->collection.changelog_topic[sizeof c->collection.changelog_topic - 1] = '\0';
  if (c->collection.name[0]) rv_collection_default_topics(&c->collection);
  if (c->ef_search <= 0) c->ef_search = DEFAULT_EF;
  if (c->hnsw_m <= 0) c->hnsw_m = DEFAULT_M;
  if (c->ef_construction <= 0) c->ef_construction = DEFAULT_EF_CONSTRUCTION;
  if (c->sq8_train <= 0) c->sq8_train = DEFAULT_SQ8_TRAIN;
  if (c->max_lag_ms <= 0) c->max_lag_ms = DEFAULT_MAX_LAG_MS;
  if (c->tombstone_ms <= 0) c->tombstone_ms = DEFAULT_TOMBSTONE_MS;
  if (c->shard_count <= 1) {
    c->shard_count = 1;
    c->shard_index = 0;
  }
  atomic_init(&r->skipped, 0);
  atomic_init(&r->applied, 0);
  atomic_init(&r->generation, 0);
  atomic_init(&r->tombstones, 0);
  atomic_init(&r->lag, -1);
  atomic_init(&r->stop, false);
  atomic_init(&r->n_topic, 0);
  atomic_init(&r->boot, RV_BOOT_NONE);
  atomic_init(&r->boot_ms, -1);
  atomic_init(&r->bootstrapped, 0);
  atomic_init(&r->rebootstraps, 0);
  atomic_init(&r->snapshot_pause_ms, -1);
  atomic_init(&r->snapshot_ms, -1);

  if (c->collection.dim < 1 || c->collection.dim > 65536) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "collection dim %d is not in 1..65536", c->collection.dim);
    goto fail;
  }
  if (c->collection.metric != RV_METRIC_L2 && c->collection.metric != RV_METRIC_COSINE &&
      c->collection.metric != RV_METRIC_IP) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "unknown metric %d", (int)c->collection.metric);
    goto fail;
  }
  if (c->storage != RV_HNSW_FLOAT && c->storage != RV_HNSW_SQ8) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "storage %d: the replica keeps float or sq8", (int)c->storage);
    goto fail;
  }
  if (c->shard_index < 0 || c->shard_index >= c->shard_count) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "shard %d/%d: the index must be in 0..%d", c->shard_index,
            c->shard_count, c->shard_count - 1);
    goto fail;
  }
  if (c->brokers[0] && !c->collection.changelog_topic[0]) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "brokers given but no collection name or changelog topic");
    goto fail;
  }
  if (state_init(c, &r->st, errstr, errstr_size)) goto fail;
  if (pthread_mutex_init(&r->apply_mu, NULL)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_mutex_init failed");
    goto fail;
  }
  inited = 1;
  if (init_lock(&r->lock)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_rwlock_init failed");
    goto fail;
  }
  inited = 2;
  if (init_lock(&r->meta_lock)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_rwlock_init failed");
    goto fail;
  }
  inited = 3;
  pthread_condattr_t ca;
  if (pthread_mutex_init(&r->part_mu, NULL)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_mutex_init failed");
    goto fail;
  }
  inited = 4;
  if (pthread_condattr_init(&ca) || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) ||
      pthread_cond_init(&r->pos_cv, &ca)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_cond_init failed");
    goto fail;
  }
  pthread_condattr_destroy(&ca);
  inited = 5;
  if (pthread_mutex_init(&r->snap_mu, NULL)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_mutex_init failed");
    goto fail;
  }
  inited = 6;
  atomic_init(&r->snap_busy, 0);
  atomic_init(&r->unsaved, 0);
  if (c->snapshot_path[0]) {
    char why[512] = "";
    int64_t t0 = rv_mono_ms();
    rv_err_t err = load_snapshot(r, why, sizeof why);
    if (err == RV_ERR_NOT_FOUND)
      rv_info(LOG, "%s/%s: no snapshot at %s; bootstrapping from the store or the changelog", c->collection.name,
              c->region, c->snapshot_path);
    else if (err == RV_ERR_NOMEM) {
      rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "loading snapshot %s: out of memory", c->snapshot_path);
      goto fail;
    } else if (err)
      rv_error(LOG, "%s/%s: snapshot %s not used, bootstrapping from the store or the changelog: %s",
               c->collection.name, c->region, c->snapshot_path, why);
    else {
      atomic_store(&r->boot, RV_BOOT_SNAPSHOT);
      atomic_store(&r->boot_ms, rv_mono_ms() - t0);
    }
  }
  /* Without an applier the caller's applies are all there is: ready to serve. */
  if (!c->brokers[0]) atomic_store(&r->bootstrapped, 1);
  return r;
fail:
  if (inited >= 6) pthread_mutex_destroy(&r->snap_mu);
  if (inited >= 5) pthread_cond_destroy(&r->pos_cv);
  if (inited >= 4) pthread_mutex_destroy(&r->part_mu);
  if (inited >= 3) pthread_rwlock_destroy(&r->meta_lock);
  if (inited >= 2) pthread_rwlock_destroy(&r->lock);
  if (inited >= 1) pthread_mutex_destroy(&r->apply_mu);
  state_close(&r->st);
  free(r->start_off);
  free(r->base);
  free(r);
  return NULL;
}

/* ---- SQ8: own training, or the store's quantizer; rebuilding the graph ----- */

static void call_hook(rv_replica_t *r, const char *stage) {
  if (r->apply_hook) r->apply_hook(r->apply_hook_ctx, stage);
}

/* Under apply_mu (so nothing writes s meanwhile). Moves s to an SQ8 index:
 * with q (owned, installed as quantizer version qver) or, q NULL, a quantizer
 * trained from every live vector; every live vector is re-inserted into the
 * new index (attributes re-derived from the stored metadata) while searches
 * go on against the old one; then, for the live state (under the exclusive
 * locks), the new engine is swapped in and every id's version entry pointed
 * at its new slot: a pointer store per live id, the only time searches wait
 * for the applier. On failure logs and keeps the old index. */
static rv_err_t quantize(rv_replica_t *r, state_t *s, int live, rv_sq8_t *q, int32_t qver) {
  if (!q) s->sq8_pending = 0;
  const rv_replica_conf_t *c = &r->conf;
  int dim = c->collection.dim;
  uint32_t bound = rv_hnsw_id_bound(s->hnsw);
  size_t n = rv_hnsw_count(s->hnsw);
  char errstr[256] = "", id[RV_ID_MAX + 1];
  uint32_t *iids = malloc((n ? n : 1) * sizeof *iids);
  uint32_t *nslot = malloc((n ? n : 1) * sizeof *nslot);
  uint32_t *nver = malloc((n ? n : 1) * sizeof *nver);
  version_t **entry = malloc((n ? n : 1) * sizeof *entry);
  float *sample = malloc((n ? n : 1) * (size_t)dim * sizeof *sample);
  rv_hnsw_t *nh = NULL;
  rv_attrs_t *na = NULL;
  rv_err_t err = RV_ERR_NOMEM;
  int64_t t0 = rv_mono_ms();
  if (!iids || !nslot || !nver || !entry || !sample) {
    snprintf(errstr, sizeof errstr, "out of memory");
    goto fail;
  }
  size_t m = 0;
  for (uint32_t i = 0; i < bound && m < n; i++)
    if (rv_hnsw_is_live(s->hnsw, i) && rv_hnsw_get_vector(s->hnsw, i, sample + m * (size_t)dim) == RV_OK)
      iids[m++] = i;
  rv_hnsw_conf_t hc;
  make_hnsw_conf(c, RV_HNSW_SQ8, &hc);
  err = RV_ERR_CONFIG;
  if (!(nh = rv_hnsw_new(&hc, errstr, sizeof errstr))) goto fail;
  if (q) {
    err = rv_hnsw_set_sq8(nh, q, errstr, sizeof errstr);
    q = NULL; /* taken either way */
    if (err) goto fail;
  } else if ((err = rv_hnsw_train(nh, sample, m, errstr, sizeof errstr))) {
    goto fail;
  }
  err = RV_ERR_NOMEM;
  if (!(na = rv_attrs_new(c->collection.fields, c->collection.n_fields, errstr, sizeof errstr))) goto fail;
  for (size_t j = 0; j < m; j++) {
    if (rv_hnsw_external_id(s->hnsw, iids[j], id, sizeof id) ||
        (err = rv_hnsw_upsert(nh, id, sample + j * (size_t)dim, dim, &nslot[j]))) {
      snprintf(errstr, sizeof errstr, "re-inserting id '%.200s' failed", id);
      if (!err) err = RV_ERR_CORRUPT;
      goto fail;
    }
    nver[j] = rv_hnsw_version(nh, nslot[j]);
    entry[j] = versions_find(&s->versions, id, rv__hash_id(id));
    parsed_attrs_t pa;
    parse_attrs(&c->collection, entry[j] ? entry[j]->metadata : NULL, &pa);
    set_attrs(r, na, nslot[j], id, &pa);
    parsed_attrs_close(&pa);
  }
  call_hook(r, "rebuilt");
  int64_t t1 = rv_mono_ms();
  rv_hnsw_t *oh = s->hnsw;
  rv_attrs_t *oa = s->attrs;
  if (live) {
    pthread_rwlock_wrlock(&r->lock);
    pthread_rwlock_wrlock(&r->meta_lock);
  }
  s->hnsw = nh;
  s->attrs = na;
  s->qver = qver;
  for (size_t j = 0; j < m; j++) {
    if (!entry[j]) continue; /* cannot happen: every live id has an entry */
    entry[j]->slot = nslot[j];
    entry[j]->slot_version = nver[j];
  }
  if (live) {
    pthread_rwlock_unlock(&r->meta_lock);
    pthread_rwlock_unlock(&r->lock);
  }
  int64_t t2 = rv_mono_ms();
  rv_hnsw_destroy(oh); /* no search holds it: they all ran under the lock we just held */
  rv_attrs_destroy(oa);
  if (qver)
    rv_info(LOG, "%s/%s: SQ8 quantizer version %d installed; %zu vectors re-inserted in %lld ms (searches paused %lld ms)",
            c->collection.name, c->region, (int)qver, m, (long long)(t1 - t0), (long long)(t2 - t1));
  else
    rv_info(LOG, "%s/%s: SQ8 quantizer trained from %zu vectors; graph rebuilt in %lld ms (searches paused %lld ms)",
            c->collection.name, c->region, m, (long long)(t1 - t0), (long long)(t2 - t1));
  free(iids);
  free(nslot);
  free(nver);
  free(entry);
  free(sample);
  return RV_OK;
fail:
  rv_warn(LOG, "%s/%s: SQ8 %s failed, keeping the current index: %s", c->collection.name, c->region,
          qver ? "quantizer install" : "training", errstr);
  rv_sq8_destroy(q);
  rv_hnsw_destroy(nh);
  rv_attrs_destroy(na);
  free(iids);
  free(nslot);
  free(nver);
  free(entry);
  free(sample);
  return err;
}

/* Installs quantizer version qver from serialized params into s. */
static rv_err_t install_params(rv_replica_t *r, state_t *s, int live, int32_t qver, const void *params, size_t len,
                               char *errstr, size_t errstr_size) {
  rv_sq8_t *q = NULL;
  rv_err_t err = rv_sq8_deserialize(params, len, &q, errstr, errstr_size);
  if (err) return err;
  if (rv_sq8_dim(q) != r->conf.collection.dim) {
    int d = rv_sq8_dim(q);
    rv_sq8_destroy(q);
    return rv_errf(RV_ERR_DIM, errstr, errstr_size, "quantizer version %d has dim %d, the collection %d", (int)qver,
                   d, r->conf.collection.dim);
  }
  err = quantize(r, s, live, q, qver);
  if (err) rv_errf(err, errstr, errstr_size, "installing quantizer version %d: %s", (int)qver, rv_err_str(err));
  return err;
}

/* A change carries a code of quantizer version qver that s has not installed:
 * fetch it from the store (newer versions only; one quantizer per collection,
 * so this is the first code seen, or ingest retrained). Failures are logged
 * and the change is applied from its float vector. */
static int wants_quantizer(const state_t *s, int32_t qver) {
  return qver > 0 && qver > s->qver && qver != s->q_missing && rv_mono_ms() >= s->q_retry_at;
}

static void maybe_install_stored(rv_replica_t *r, state_t *s, int live, int32_t qver) {
  if (!wants_quantizer(s, qver)) return;
  void *params = NULL;
  size_t len = 0;
  char errstr[256] = "";
  rv_err_t err = r->conf.store.quantizer(r->conf.store.ctx, qver, &params, &len, errstr, sizeof errstr);
  if (err == RV_ERR_NOT_FOUND) {
    rv_warn(LOG, "%s/%s: the store has no quantizer version %d: its codes are not used", r->conf.collection.name,
            r->conf.region, (int)qver);
    s->q_missing = qver;
  } else if (err) {
    rv_warn(LOG, "%s/%s: fetching quantizer version %d failed (retried): %s", r->conf.collection.name,
            r->conf.region, (int)qver, errstr);
    s->q_retry_at = rv_mono_ms() + QUANTIZER_RETRY_MS;
  } else if ((err = install_params(r, s, live, qver, params, len, errstr, sizeof errstr))) {
    rv_warn(LOG, "%s/%s: %s", r->conf.collection.name, r->conf.region, errstr);
    s->q_missing = qver;
  }
  free(params);
}

/* ---- tombstones ----------------------------------------------------------- */

typedef struct sweep_ctx {
  int64_t now, ttl;
} sweep_ctx_t;

static int keep_entry(void *ctx, const version_t *e) {
  const sweep_ctx_t *sc = ctx;
  return e->slot != NO_SLOT || e->deleted_at + sc->ttl > sc->now;
}

/* Under apply_mu: drops the tombstones older than tombstone_ms, by building
 * a smaller table (sharing the kept entries' strings) and swapping it in. At
 * most once per min(tombstone_ms, 1 s), and only when one has expired. */
static void sweep(rv_replica_t *r, state_t *s, int live) {
  int64_t now = rv_mono_ms(), ttl = r->conf.tombstone_ms;
  if (!s->n_tomb || now < s->tomb_next || now - s->swept_at < (ttl < 1000 ? ttl : 1000)) return;
  s->swept_at = now;
  sweep_ctx_t sc = {now, ttl};
  size_t keep = 0;
  int64_t next = INT64_MAX;
  for (size_t i = 0; i < s->versions.cap; i++) {
    const version_t *e = &s->versions.slots[i];
    if (!e->id) continue;
    if (keep_entry(&sc, e)) {
      keep++;
      if (e->slot == NO_SLOT && e->deleted_at + ttl < next) next = e->deleted_at + ttl;
    }
  }
  size_t cap = 64;
  while ((keep + 1) * 2 > cap) cap *= 2;
  versions_t nv;
  if (versions_copy(&s->versions, cap, keep_entry, &sc, &nv)) return; /* no memory: later */
  versions_t old = s->versions;
  if (live) pthread_rwlock_wrlock(&r->meta_lock);
  s->versions = nv;
  if (live) pthread_rwlock_unlock(&r->meta_lock);
  size_t dropped = 0;
  for (size_t i = 0; i < old.cap; i++) {
    version_t *e = &old.slots[i];
    if (!e->id || keep_entry(&sc, e)) continue;
    free(e->id);
    free(e->metadata);
    dropped++;
  }
  free(old.slots);
  s->n_tomb -= dropped;
  s->tomb_next = next;
  if (live) atomic_store(&r->tombstones, s->n_tomb);
  rv_debug(LOG, "%s/%s: %zu tombstones older than %lld ms dropped, %zu kept", r->conf.collection.name,
           r->conf.region, dropped, (long long)ttl, s->n_tomb);
}

/* ---- applying changes ------------------------------------------------------ */

static rv_err_t check_change(const rv_replica_t *r, const rv_change_t *c) {
  if (!c || !c->id || !c->id[0]) return RV_ERR_INVALID;
  if (c->op != RV_OP_UPSERT && c->op != RV_OP_DELETE) return RV_ERR_INVALID;
  if (c->op == RV_OP_DELETE) return RV_OK;
  if (!c->vector && !c->sq8_code) return RV_ERR_INVALID;
  if (c->vector && c->dim != r->conf.collection.dim) return RV_ERR_DIM;
  if (!c->vector && c->sq8_len != r->conf.collection.dim) return RV_ERR_DIM;
  return RV_OK;
}

/* Applies c to s (the live state when live, else a fresh one no reader
 * sees). Under apply_mu. *altered: the change altered the index. */
static rv_err_t apply_locked(rv_replica_t *r, state_t *s, const rv_change_t *c, int live, int *altered_out) {
  int upsert = c->op == RV_OP_UPSERT;
  int dim = r->conf.collection.dim;
  *altered_out = 0;
  int has_code = upsert && c->sq8_code && c->sq8_len == dim && c->sq8_version > 0;
  uint64_t h = rv__hash_id(c->id);
  version_t *v = versions_find(&s->versions, c->id, h);
  /* Versions from different source partitions are not comparable (the source
   * topic was repartitioned, or the id moved): the one that arrives wins. */
  if (v && v->partition == c->src_partition && c->src_offset <= v->offset) {
    atomic_fetch_add(&r->applied, 1);
    return RV_OK;
  }
  if (has_code && stored_quantizer(&r->conf)) maybe_install_stored(r, s, live, c->sq8_version);
  int use_code = has_code && s->qver && c->sq8_version == s->qver;
  if (upsert && !c->vector && !use_code) return RV_ERR_INVALID; /* a code without its quantizer */

  parsed_attrs_t pa;
  parse_attrs(&r->conf.collection, upsert ? c->attributes : NULL, &pa);
  char *meta_copy = NULL, *id_copy = NULL;
  rv_err_t err = RV_OK;
  versions_t grown = {0};
  if (upsert && c->attributes && !(meta_copy = strdup(c->attributes))) {
    err = RV_ERR_NOMEM;
    goto out;
  }
  if (!v) {
    /* Room and the key copy first, so a failure leaves index and map as they
     * were; a bigger table is built here, outside meta_lock, and swapped in
     * with the publication below. */
    err = versions_grow(&s->versions, &grown);
    if (!err && !(id_copy = strdup(c->id))) err = RV_ERR_NOMEM;
    if (err) goto out;
  }

  /* The engine work, with searches running: a search sees the graph before
   * or after the change (rv_hnsw.h), and the new vector's hits are dropped
   * by collect() until the change is published below. */
  int altered = 0;
  uint32_t old = 0, iid = NO_SLOT, iid_version = 0;
  int had = rv_hnsw_internal_id(s->hnsw, c->id, &old) == RV_OK;
  if (upsert) {
    /* rv_attrs.h's order: upsert, set the new slot, clear the replaced one. */
    if (use_code)
      err = rv_hnsw_upsert_sq8(s->hnsw, c->id, c->vector, dim, c->sq8_code, (size_t)c->sq8_len, &iid);
    else
      err = rv_hnsw_upsert(s->hnsw, c->id, c->vector, c->dim, &iid);
    if (err) goto out;
    iid_version = rv_hnsw_version(s->hnsw, iid); /* stable: only we reuse slots */
    set_attrs(r, s->attrs, iid, c->id, &pa);
    if (had) rv_attrs_clear(s->attrs, old);
    altered = 1;
  } else if (had) {
    err = rv_hnsw_delete(s->hnsw, c->id);
    if (err) goto out;
    rv_attrs_clear(s->attrs, old);
    altered = 1;
  } /* deleting an unknown id still records its version */
  if (live) call_hook(r, "applied");

  /* Publication: a few stores under meta_lock. From here on collect() pairs
   * the new slot with this metadata, and no longer returns the old one. */
  version_t *old_slots = NULL;
  char *old_meta;
  int was_tomb = v && v->slot == NO_SLOT;
  if (live) pthread_rwlock_wrlock(&r->meta_lock);
  if (grown.slots) {
    old_slots = s->versions.slots;
    s->versions = grown;
    grown.slots = NULL;
    v = NULL;
  }
  if (!id_copy && !v) v = versions_find(&s->versions, c->id, h); /* moved by the growth */
  if (!v) {
    v = versions_put(&s->versions, id_copy, h);
    id_copy = NULL;
  }
  v->partition = c->src_partition;
  v->offset = c->src_offset;
  old_meta = v->metadata;
  v->metadata = meta_copy; /* NULL for deletes */
  meta_copy = NULL;
  v->slot = iid;
  v->slot_version = iid_version;
  v->deleted_at = upsert ? 0 : rv_mono_ms();
  if (live) pthread_rwlock_unlock(&r->meta_lock);
  free(old_meta); /* readers copy metadata under meta_lock: nobody holds it now */
  free(old_slots);
  if (!upsert) {
    if (!was_tomb) s->n_tomb++;
    if (v->deleted_at + r->conf.tombstone_ms < s->tomb_next) s->tomb_next = v->deleted_at + r->conf.tombstone_ms;
  } else if (was_tomb) {
    s->n_tomb--;
  }
  atomic_fetch_add(&r->applied, 1);
  if (live) {
    atomic_store(&r->tombstones, s->n_tomb);
    /* After the publication: a reader that sees the new generation finds the change. */
    if (altered) atomic_fetch_add_explicit(&r->generation, 1, memory_order_release);
  }
  *altered_out = altered;
  if (upsert && s->sq8_pending && rv_hnsw_count(s->hnsw) >= (size_t)r->conf.sq8_train) quantize(r, s, live, NULL, 0);
out:
  sweep(r, s, live);
  free(grown.slots); /* unused: shares its strings with the map, so only the array */
  parsed_attrs_close(&pa);
  free(id_copy);
  free(meta_copy);
  return err;
}

static rv_err_t apply_to(rv_replica_t *r, state_t *s, const rv_change_t *c, int live, int *altered) {
  int dummy;
  if (!altered) altered = &dummy;
  *altered = 0;
  rv_err_t err = check_change(r, c);
  if (err) return err;
  pthread_mutex_lock(&r->apply_mu);
  err = apply_locked(r, s, c, live, altered);
  pthread_mutex_unlock(&r->apply_mu);
  return err;
}

rv_err_t rv_replica_apply(rv_replica_t *r, const rv_change_t *c) {
  if (!r) return RV_ERR_INVALID;
  return apply_to(r, &r->st, c, 1, NULL);
}

void rv__replica_set_apply_hook(rv_replica_t *r, void (*fn)(void *ctx, const char *stage), void *ctx) {
  r->apply_hook = fn;
  r->apply_hook_ctx = ctx;
}

void rv_replica_set_on_applied(rv_replica_t *r, void (*fn)(void *ctx, const rv_replica_applied_t *batch),
                               void *ctx) {
  if (!r) return;
  r->on_applied = fn;
  r->on_applied_ctx = ctx;
}

/* Replaces the live state by fresh (taken; fresh is zeroed). Under apply_mu. */
static void swap_state(rv_replica_t *r, state_t *fresh) {
  state_t old = r->st;
  pthread_rwlock_wrlock(&r->lock);
  pthread_rwlock_wrlock(&r->meta_lock);
  r->st = *fresh;
  pthread_rwlock_unlock(&r->meta_lock);
  pthread_rwlock_unlock(&r->lock);
  memset(fresh, 0, sizeof *fresh);
  atomic_store(&r->unsaved, 1); /* a loaded state is worth a snapshot even if nothing is applied after it */
  atomic_store(&r->tombstones, r->st.n_tomb);
  atomic_fetch_add_explicit(&r->generation, 1, memory_order_release);
  state_close(&old); /* no search holds it: they all ran under the lock we just held */
}
size_t rv_replica_foreach_live(rv_replica_t *r, void (*fn)(void *ctx, const char *id, int32_t partition,
                                                           int64_t offset),
                               void *ctx) {
  if (!r || !fn) return 0;
  size_t n = 0;
  pthread_rwlock_rdlock(&r->meta_lock); /* a swap of the state takes it exclusively too */
  const versions_t *v = &r->st.versions;
  for (size_t i = 0; i < v->cap; i++) {
    const version_t *e = &v->slots[i];
    if (!e->id || e->slot == NO_SLOT) continue;
    fn(ctx, e->id, e->partition, e->offset);
    n++;
  }
  pthread_rwlock_unlock(&r->meta_lock);
  return n;
}

/* ---- searching -------------------------------------------------------------- */

static int hit_cmp(const void *pa, const void *pb) {
  const rv_hit_t *a = pa, *b = pb;
  if (a->score != b->score) return a->score < b->score ? -1 : 1;
  return strcmp(a->id, b->id);
}

/* Copies results into out with ids and metadata. Under lock (shared), so
 * r->st is the state res came from. A hit is kept only if its (slot,
 * version) is its id's published one: that drops the vector of a change not
 * yet published (the graph has it, the versions map not yet) and the old slot
 * of an id replaced or deleted since the search scored it, so every hit's id,
 * score and metadata are of one version, and an id appears at most once. */
static rv_err_t collect_locked(rv_replica_t *r, const rv_hnsw_result_t *res, int n, rv_hit_list_t *out) {
  if (n == 0) return RV_OK;
  rv_hit_list_t l = {calloc((size_t)n, sizeof(rv_hit_t)), 0};
  char *ids = malloc((size_t)n * (RV_ID_MAX + 1));
  if (!l.hits || !ids) {
    free(l.hits);
    free(ids);
    return RV_ERR_NOMEM;
  }
  /* The ids first, outside meta_lock (rv_hnsw takes its own locks). */
  for (int i = 0; i < n; i++) {
    char *id = ids + (size_t)i * (RV_ID_MAX + 1);
    if (rv_hnsw_result_external_id(r->st.hnsw, &res[i], id, RV_ID_MAX + 1)) id[0] = '\0'; /* slot reused since */
  }
  rv_err_t err = RV_OK;
  pthread_rwlock_rdlock(&r->meta_lock);
  for (int i = 0; i < n && !err; i++) {
    const char *id = ids + (size_t)i * (RV_ID_MAX + 1);
    if (!id[0]) continue;
    const version_t *v = versions_find(&r->st.versions, id, rv__hash_id(id));
    if (!v || v->slot != res[i].id || v->slot_version != res[i].version) continue;
    rv_hit_t *hit = &l.hits[l.n++];
    hit->score = res[i].score;
    hit->id = strdup(id);
    hit->metadata = v->metadata ? strdup(v->metadata) : NULL;
    if (!hit->id || (v->metadata && !hit->metadata)) err = RV_ERR_NOMEM;
  }
  pthread_rwlock_unlock(&r->meta_lock);
  free(ids);
  if (err) {
    rv_hit_list_close(&l);
    return err;
  }
  if (l.n == 0) free(l.hits);
  else *out = l;
  return RV_OK;
}

rv_filter_t *rv_replica_filter_new(rv_replica_t *r) {
  if (!r) return NULL;
  /* Under the lock: a swap replaces the store (with one of the same fields). */
  pthread_rwlock_rdlock(&r->lock);
  rv_filter_t *f = rv_filter_new(r->st.attrs);
  pthread_rwlock_unlock(&r->lock);
  return f;
}

rv_err_t rv_replica_search_filtered(rv_replica_t *r, const float *q, int dim, int k, int ef, const rv_filter_t *f,
                                    rv_hit_list_t *out, char *errstr, size_t errstr_size) {
  if (!r || !q || !out || k < 1) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "bad search arguments");
  if (dim != r->conf.collection.dim)
    return rv_errf(RV_ERR_DIM, errstr, errstr_size, "query dim %d, collection dim %d", dim, r->conf.collection.dim);
  if (ef <= 0) ef = r->conf.ef_search;
  rv_hnsw_result_t *res = malloc((size_t)k * sizeof *res);
  if (!res) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  int n = 0;
  rv_err_t err;
  /* Shared, with other searches and with applies (which do not take it): it
   * only keeps a swap from freeing the engine under us. */
  pthread_rwlock_rdlock(&r->lock);
  if (f && rv_filter_n_clauses(f) > 0) {
    err = rv_planner_search(r->st.hnsw, r->st.attrs, f, q, dim, k, ef, RV_PLAN_AUTO, res, &n, NULL, errstr,
                            errstr_size);
  } else {
    err = rv_hnsw_search(r->st.hnsw, q, dim, k, ef, NULL, res, &n);
    if (err) rv_errf(err, errstr, errstr_size, "search: %s", rv_err_str(err));
  }
  if (!err && (err = collect_locked(r, res, n, out))) rv_errf(err, errstr, errstr_size, "out of memory");
  pthread_rwlock_unlock(&r->lock);
  free(res);
  /* The graph breaks ties by internal id; the protocol promises ids. */
  if (!err && out->n > 1) qsort(out->hits, (size_t)out->n, sizeof *out->hits, hit_cmp);
  return err;
}

rv_err_t rv_replica_search(rv_replica_t *r, const float *q, int dim, int k, int ef, rv_hit_list_t *out) {
  char errstr[256];
  return rv_replica_search_filtered(r, q, dim, k, ef, NULL, out, errstr, sizeof errstr);
}

rv_err_t rv__replica_get_code(rv_replica_t *r, const char *id, uint8_t *out, size_t len) {
  if (!r || !id || !out) return RV_ERR_INVALID;
  pthread_rwlock_rdlock(&r->lock);
  uint32_t iid;
  rv_err_t err = rv_hnsw_internal_id(r->st.hnsw, id, &iid);
  if (!err) err = rv_hnsw_get_sq8_code(r->st.hnsw, iid, out, len);
  pthread_rwlock_unlock(&r->lock);
  return err;
}

/* ---- partitions, lag, positions ---------------------------------------------- */

const char *rv_replica_boot_name(rv_replica_boot_t b) {
  switch (b) {
  case RV_BOOT_SNAPSHOT: return "snapshot";
  case RV_BOOT_STORE: return "postgres";
  case RV_BOOT_REPLAY: return "replay";
  default: return "none";
  }
}

static int64_t part_lag_records(const part_t *p) {
  int64_t hw = atomic_load(&p->hw), next = atomic_load(&p->next_off);
  if (hw < 0) return -1;
  if (next < 0) return hw == 0 ? 0 : -1;
  return hw > next ? hw - next : 0;
}

static int64_t part_lag_ms(const part_t *p, int64_t now_wall) {
  int64_t lr = part_lag_records(p);
  if (lr < 0) return -1;
  if (lr == 0) return 0;
  int64_t ts = atomic_load(&p->last_ts);
  if (ts < 0) return -1;
  return now_wall > ts ? now_wall - ts : 0;
}

int rv_replica_partition_stats(rv_replica_t *r, rv_replica_part_stats_t *out, int max) {
  if (!r) return 0;
  int64_t now = rv_wall_ms();
  pthread_mutex_lock(&r->part_mu);
  int n = r->n_parts;
  for (int i = 0; i < n && i < max && out; i++) {
    const part_t *p = r->parts[i];
    out[i] = (rv_replica_part_stats_t){
        .partition = p->partition,
        .next_offset = atomic_load(&p->next_off),
        .high_watermark = atomic_load(&p->hw),
        .lag_records = part_lag_records(p),
        .lag_ms = part_lag_ms(p, now),
        .event_lag_ms = atomic_load(&p->event_lag),
        .applied_per_s = (double)atomic_load(&p->rate_milli) / 1000.0,
    };
  }
  pthread_mutex_unlock(&r->part_mu);
  return n;
}

/* max over the partitions, -1 if any is unknown or none is known. */
static int64_t lag_ms(rv_replica_t *r) {
  int64_t now = rv_wall_ms(), worst = -1;
  pthread_mutex_lock(&r->part_mu);
  for (int i = 0; i < r->n_parts; i++) {
    int64_t l = part_lag_ms(r->parts[i], now);
    if (l < 0) {
      worst = -1;
      break;
    }
    if (l > worst) worst = l;
  }
  pthread_mutex_unlock(&r->part_mu);
  return worst;
}

int rv_replica_ready(rv_replica_t *r) {
  if (!r || !atomic_load(&r->bootstrapped)) return 0;
  int64_t l = lag_ms(r);
  return l >= 0 && l < r->conf.max_lag_ms;
}

void rv_replica_stats(rv_replica_t *r, rv_replica_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (!r) return;
  out->generation = atomic_load_explicit(&r->generation, memory_order_acquire);
  out->applied = atomic_load(&r->applied);
  pthread_rwlock_rdlock(&r->lock);
  out->count = rv_hnsw_count(r->st.hnsw);
  out->quantized = rv_hnsw_conf(r->st.hnsw)->storage == RV_HNSW_SQ8;
  out->quantizer_version = r->st.qver;
  pthread_rwlock_unlock(&r->lock);
  out->restored = r->restored;
  out->lag = atomic_load(&r->lag);
  out->skipped = atomic_load(&r->skipped);
  out->boot = (rv_replica_boot_t)atomic_load(&r->boot);
  out->boot_ms = atomic_load(&r->boot_ms);
  out->bootstrapped = atomic_load(&r->bootstrapped);
  out->lag_ms = lag_ms(r);
  out->rebootstraps = atomic_load(&r->rebootstraps);
  out->tombstones = atomic_load(&r->tombstones);
  out->snapshot_pause_ms = atomic_load(&r->snapshot_pause_ms);
  out->snapshot_ms = atomic_load(&r->snapshot_ms);
}

const rv_collection_conf_t *rv_replica_collection(const rv_replica_t *r) { return &r->conf.collection; }

int rv_replica_owns_id(rv_replica_t *r, const char *id) {
  if (!r || !id) return 0;
  if (r->conf.shard_count <= 1) return 1;
  int n = atomic_load(&r->n_topic);
  if (n <= 0) return 0;
  /* The changelog producer's partitioner (ingest/rv_producer.c: murmur2_random,
   * keyed by id); with a key it does not look at the topic handle. */
  int32_t p = rd_kafka_msg_partitioner_murmur2_random(NULL, id, strlen(id), n, NULL, NULL);
  return p % r->conf.shard_count == r->conf.shard_index;
}

void rv__replica_set_partition_count(rv_replica_t *r, int n) { atomic_store(&r->n_topic, n); }

/* Sets (*arr)[src] = max(it, next). Under part_mu (or on a private array). */
static rv_err_t pos_raise(rv_source_position_t **arr, int *n, int *cap, int32_t src, int64_t next) {
  int i = 0;
  while (i < *n && (*arr)[i].partition < src) i++;
  if (i < *n && (*arr)[i].partition == src) {
    if (next > (*arr)[i].next_offset) (*arr)[i].next_offset = next;
    return RV_OK;
  }
  if (*n == *cap) {
    int nc = *cap ? *cap * 2 : 8;
    rv_source_position_t *na = realloc(*arr, (size_t)nc * sizeof *na);
    if (!na) return RV_ERR_NOMEM;
    *arr = na;
    *cap = nc;
  }
  memmove(*arr + i + 1, *arr + i, (size_t)(*n - i) * sizeof **arr);
  (*arr)[i] = (rv_source_position_t){src, next};
  (*n)++;
  return RV_OK;
}

static int64_t pos_get(const rv_source_position_t *a, int n, int32_t src) {
  for (int i = 0; i < n; i++)
    if (a[i].partition == src) return a[i].next_offset;
  return 0;
}

/* Position of src under part_mu: min over the partitions read of max(base,
 * the partition's marker); base alone when no partition is known. */
static int64_t position_locked(const rv_replica_t *r, int32_t src) {
  int64_t b = pos_get(r->base, r->n_base, src);
  if (!r->n_parts) return b;
  int64_t m = INT64_MAX;
  for (int i = 0; i < r->n_parts; i++) {
    int64_t v = pos_get(r->parts[i]->marks, r->parts[i]->n_marks, src);
    if (v < b) v = b;
    if (v < m) m = v;
  }
  return m;
}

int rv_replica_positions(rv_replica_t *r, rv_source_position_t *out, int max) {
  if (!r) return 0;
  pthread_mutex_lock(&r->part_mu);
  /* The source partitions known anywhere, in increasing order. */
  rv_source_position_t *keys = NULL;
  int n = 0, cap = 0;
  for (int i = 0; i < r->n_base; i++) pos_raise(&keys, &n, &cap, r->base[i].partition, 0);
  for (int p = 0; p < r->n_parts; p++)
    for (int i = 0; i < r->parts[p]->n_marks; i++) pos_raise(&keys, &n, &cap, r->parts[p]->marks[i].partition, 0);
  for (int i = 0; i < n && i < max && out; i++)
    out[i] = (rv_source_position_t){keys[i].partition, position_locked(r, keys[i].partition)};
  pthread_mutex_unlock(&r->part_mu);
  free(keys);
  return n;
}

int rv_replica_visible(rv_replica_t *r, int32_t src_partition, int64_t src_offset) {
  if (!r) return 0;
  pthread_mutex_lock(&r->part_mu);
  int ok = position_locked(r, src_partition) > src_offset;
  pthread_mutex_unlock(&r->part_mu);
  return ok;
}

rv_err_t rv_replica_wait_visible(rv_replica_t *r, int32_t src_partition, int64_t src_offset, int timeout_ms) {
  if (!r) return RV_ERR_INVALID;
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  if (timeout_ms > 0) {
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000L;
    }
  }
  pthread_mutex_lock(&r->part_mu);
  int ok;
  while (!(ok = position_locked(r, src_partition) > src_offset) && timeout_ms > 0)
    if (pthread_cond_timedwait(&r->pos_cv, &r->part_mu, &dl) == ETIMEDOUT) {
      ok = position_locked(r, src_partition) > src_offset;
      break;
    }
  pthread_mutex_unlock(&r->part_mu);
  return ok ? RV_OK : RV_ERR_TIMEOUT;
}

/* Replaces the base positions (store load, snapshot) and, with clear_marks,
 * forgets the markers (a new state: they described the old one). */
static rv_err_t set_base(rv_replica_t *r, const rv_source_position_t *pos, int n, int clear_marks) {
  rv_source_position_t *b = NULL;
  int nb = 0, cap = 0;
  for (int i = 0; i < n; i++)
    if (pos_raise(&b, &nb, &cap, pos[i].partition, pos[i].next_offset)) {
      free(b);
      return RV_ERR_NOMEM;
    }
  pthread_mutex_lock(&r->part_mu);
  free(r->base);
  r->base = b;
  r->n_base = nb;
  r->cap_base = cap;
  if (clear_marks)
    for (int i = 0; i < r->n_parts; i++) r->parts[i]->n_marks = 0;
  pthread_cond_broadcast(&r->pos_cv);
  pthread_mutex_unlock(&r->part_mu);
  return RV_OK;
}

/* ---- the load sink (store bootstrap) ------------------------------------------ */

rv_err_t rv_replica_load_mark_end(rv_replica_load_t *l, char *errstr, size_t errstr_size) {
  if (!l) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no load");
  rv_replica_t *r = l->r;
  /* Only the applier thread changes the partition array: no lock to read it here. */
  int n = r->n_parts;
  free(l->end);
  l->end = n ? calloc((size_t)n, sizeof *l->end) : NULL;
  if (n && !l->end) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  l->n_end = n;
  for (int i = 0; i < n; i++) {
    int64_t lo = -1, hi = -1;
    rd_kafka_resp_err_t kerr = rd_kafka_query_watermark_offsets(
        r->rk, r->conf.collection.changelog_topic, r->parts[i]->partition, &lo, &hi, WATERMARK_TIMEOUT_MS);
    if (kerr)
      return rv_errf(RV_ERR_IO, errstr, errstr_size, "end offset of %s[%d]: %s", r->conf.collection.changelog_topic,
                     (int)r->parts[i]->partition, rd_kafka_err2str(kerr));
    l->end[i] = hi;
  }
  l->marked = 1;
  return RV_OK;
}

/* ---- the insert threads of a store load (load_pool_t) ---------------------- */

/* conf.load_threads resolved: <= 0 is the online CPUs; at most LOAD_THREADS_MAX. */
static int load_threads_wanted(const rv_replica_conf_t *c) {
  long n = c->load_threads;
  if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n > LOAD_THREADS_MAX ? LOAD_THREADS_MAX : (int)n;
}

/* Inserts one queued row into the fresh state. An insert thread. */
static void load_insert(rv_replica_load_t *l, const load_job_t *j) {
  rv_replica_t *r = l->r;
  state_t *s = &l->st;
  load_pool_t *p = &l->pool;
  int dim = r->conf.collection.dim;
  uint32_t iid = NO_SLOT;
  rv_err_t err = j->code ? rv_hnsw_upsert_sq8(s->hnsw, j->id, j->vec, dim, j->code, (size_t)dim, &iid)
                         : rv_hnsw_upsert(s->hnsw, j->id, j->vec, dim, &iid);
  if (!err) {
    uint32_t iid_version = rv_hnsw_version(s->hnsw, iid); /* stable: no slot is reused while threads insert */
    parsed_attrs_t pa;
    parse_attrs(&r->conf.collection, j->metadata, &pa);
    set_attrs(r, s->attrs, iid, j->id, &pa);
    parsed_attrs_close(&pa);
    pthread_mutex_lock(&p->map_mu);
    version_t *v = versions_find(&s->versions, j->id, j->hash); /* made by load_queue; only it adds entries */
    if (v) {
      v->slot = iid;
      v->slot_version = iid_version;
    }
    pthread_mutex_unlock(&p->map_mu);
    atomic_fetch_add(&r->applied, 1);
    return;
  }
  /* The entry keeps slot NO_SLOT: pool_drain drops it, as if never put. */
  pthread_mutex_lock(&p->mu);
  if (err == RV_ERR_NOMEM) {
    p->err = RV_ERR_NOMEM;
  } else if (!p->refused++) {
    snprintf(p->first_refused, sizeof p->first_refused, "id %.100s: %s", j->id, rv_err_str(err));
  }
  pthread_mutex_unlock(&p->mu);
}

static void *load_main(void *arg) {
  rv_replica_load_t *l = arg;
  load_pool_t *p = &l->pool;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->q_n && !p->stop) pthread_cond_wait(&p->work_cv, &p->mu);
    if (p->stop) break; /* pool_stop: after pool_drain, or the load is abandoned */
    int ix = p->queue[p->q_head];
    p->q_head = (p->q_head + 1) % p->cap;
    p->q_n--;
    p->busy++;
    pthread_mutex_unlock(&p->mu);
    load_insert(l, &p->jobs[ix]);
    pthread_mutex_lock(&p->mu);
    p->busy--;
    p->free_ix[p->n_free++] = ix;
    pthread_cond_signal(&p->room_cv);
    if (!p->q_n && !p->busy) pthread_cond_broadcast(&p->idle_cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* Starts the insert threads (first put). RV_ERR_NOMEM; if no thread can be
 * started the load goes on on the caller's thread (p->started 0). */
static rv_err_t pool_start(rv_replica_load_t *l) {
  load_pool_t *p = &l->pool;
  size_t dim = (size_t)l->r->conf.collection.dim;
  int cap = LOAD_QUEUE_PER_THREAD * p->n_threads;
  p->jobs = calloc((size_t)cap, sizeof *p->jobs);
  p->vecs = malloc((size_t)cap * dim * sizeof *p->vecs);
  p->codes = malloc((size_t)cap * dim);
  p->queue = malloc((size_t)cap * sizeof *p->queue);
  p->free_ix = malloc((size_t)cap * sizeof *p->free_ix);
  if (!p->jobs || !p->vecs || !p->codes || !p->queue || !p->free_ix) {
    free(p->jobs);
    free(p->vecs);
    free(p->codes);
    free(p->queue);
    free(p->free_ix);
    p->jobs = NULL;
    p->vecs = NULL;
    p->codes = NULL;
    p->queue = NULL;
    p->free_ix = NULL;
    return RV_ERR_NOMEM;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->map_mu, NULL);
  pthread_cond_init(&p->work_cv, NULL);
  pthread_cond_init(&p->room_cv, NULL);
  pthread_cond_init(&p->idle_cv, NULL);
  p->cap = cap;
  for (int i = 0; i < cap; i++) p->free_ix[i] = cap - 1 - i;
  p->n_free = cap;
  for (int i = 0; i < p->n_threads; i++) {
    if (pthread_create(&p->threads[i], NULL, load_main, l)) break;
    p->started++;
  }
  p->used = p->started;
  if (!p->started)
    rv_warn(LOG, "%s/%s: no insert thread could be started: loading on one thread", l->r->conf.collection.name,
            l->r->conf.region);
  return RV_OK;
}

static int pending_entry(const version_t *e) { return e->slot == NO_SLOT && e->deleted_at == 0; }
static int not_pending(void *ctx, const version_t *e) {
  (void)ctx;
  return !pending_entry(e);
}

/* Waits until every queued row is inserted, then drops the version entries
 * of rows the threads could not insert. Afterwards the fresh state is the
 * caller's alone until it queues again. Returns RV_ERR_NOMEM if an insert
 * (or this) ran out of memory: the load fails. Caller's thread. */
static rv_err_t pool_drain(rv_replica_load_t *l) {
  load_pool_t *p = &l->pool;
  if (!p->started) return RV_OK;
  pthread_mutex_lock(&p->mu);
  while (p->q_n || p->busy) pthread_cond_wait(&p->idle_cv, &p->mu);
  rv_err_t err = p->err;
  int failed = p->err || p->refused;
  pthread_mutex_unlock(&p->mu);
  if (!failed) return RV_OK;
  /* A load makes no tombstones, so every entry with no slot is a row that failed. */
  versions_t *v = &l->st.versions, kept;
  size_t n_pending = 0;
  for (size_t i = 0; i < v->cap; i++)
    if (v->slots[i].id && pending_entry(&v->slots[i])) n_pending++;
  if (!n_pending) return err;
  if (versions_copy(v, v->cap, not_pending, NULL, &kept)) return RV_ERR_NOMEM;
  for (size_t i = 0; i < v->cap; i++) {
    if (!v->slots[i].id || !pending_entry(&v->slots[i])) continue;
    free(v->slots[i].id);
    free(v->slots[i].metadata);
  }
  free(v->slots);
  *v = kept;
  l->puts -= n_pending;
  return err;
}

/* Stops and joins the insert threads (queued rows are abandoned: call
 * pool_drain first to finish them) and frees the pool. Idempotent. */
static void pool_stop(rv_replica_load_t *l) {
  load_pool_t *p = &l->pool;
  if (!p->cap) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
  p->started = 0;
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->map_mu);
  pthread_cond_destroy(&p->work_cv);
  pthread_cond_destroy(&p->room_cv);
  pthread_cond_destroy(&p->idle_cv);
  free(p->jobs);
  free(p->vecs);
  free(p->codes);
  free(p->queue);
  free(p->free_ix);
  p->jobs = NULL;
  p->vecs = NULL;
  p->codes = NULL;
  p->queue = NULL;
  p->free_ix = NULL;
  p->cap = 0;
}

/* rv_hnsw_upsert's refusals of a float vector (non-finite, zero under
 * cosine), checked here so that they are reported by load_put as before. */
static int loadable_vector(const float *v, int dim, rv_metric_t metric) {
  double nn = 0;
  for (int i = 0; i < dim; i++) {
    if (!isfinite(v[i])) return 0;
    nn += (double)v[i] * v[i];
  }
  return metric != RV_METRIC_COSINE || (nn > 0 && isfinite(nn));
}

/* Hands c to the insert threads (*queued 1), blocking while the queue is
 * full; or leaves it to the caller's thread (*queued 0) when it needs what a
 * sequential load does there: a repeated id, a quantizer to install, own
 * SQ8 training pending. Caller's thread, after check_change. */
static rv_err_t load_queue(rv_replica_load_t *l, const rv_change_t *c, int *queued) {
  rv_replica_t *r = l->r;
  state_t *s = &l->st;
  load_pool_t *p = &l->pool;
  int dim = r->conf.collection.dim;
  *queued = 0;
  pthread_mutex_lock(&p->mu);
  rv_err_t err = p->err;
  pthread_mutex_unlock(&p->mu);
  if (err) return err;
  int has_code = c->sq8_code && c->sq8_len == dim && c->sq8_version > 0;
  if (s->sq8_pending || (has_code && stored_quantizer(&r->conf) && wants_quantizer(s, c->sq8_version)))
    return RV_OK;
  int use_code = has_code && s->qver && c->sq8_version == s->qver;
  if (!c->vector && !use_code) return RV_ERR_INVALID; /* a code without its quantizer */
  if (strnlen(c->id, RV_ID_MAX + 1) > RV_ID_MAX) return RV_ERR_INVALID;
  if (c->vector && !loadable_vector(c->vector, dim, r->conf.collection.metric)) return RV_ERR_INVALID;
  uint64_t h = rv__hash_id(c->id);
  pthread_mutex_lock(&p->map_mu);
  version_t *v = versions_find(&s->versions, c->id, h);
  pthread_mutex_unlock(&p->map_mu);
  if (v) return RV_OK; /* the id again: its version decides, after the queued rows */

  char *id_copy = strdup(c->id), *meta_copy = c->attributes ? strdup(c->attributes) : NULL;
  if (!id_copy || (c->attributes && !meta_copy)) {
    free(id_copy);
    free(meta_copy);
    return RV_ERR_NOMEM;
  }
  pthread_mutex_lock(&p->mu);
  while (!p->n_free) pthread_cond_wait(&p->room_cv, &p->mu);
  int ix = p->free_ix[--p->n_free];
  pthread_mutex_unlock(&p->mu);
  pthread_mutex_lock(&p->map_mu);
  err = versions_reserve(&s->versions);
  if (!err) {
    v = versions_put(&s->versions, id_copy, h); /* slot NO_SLOT until the insert fills it in */
    v->partition = c->src_partition;
    v->offset = c->src_offset;
    v->metadata = meta_copy;
    v->deleted_at = 0;
  }
  pthread_mutex_unlock(&p->map_mu);
  if (err) {
    free(id_copy);
    free(meta_copy);
    pthread_mutex_lock(&p->mu);
    p->free_ix[p->n_free++] = ix;
    pthread_mutex_unlock(&p->mu);
    return err;
  }
  load_job_t *j = &p->jobs[ix];
  *j = (load_job_t){.id = id_copy, .hash = h, .metadata = meta_copy};
  if (c->vector) {
    float *vec = p->vecs + (size_t)ix * (size_t)dim;
    memcpy(vec, c->vector, (size_t)dim * sizeof *vec);
    j->vec = vec;
  }
  if (use_code) {
    uint8_t *code = p->codes + (size_t)ix * (size_t)dim;
    memcpy(code, c->sq8_code, (size_t)dim);
    j->code = code;
  }
  pthread_mutex_lock(&p->mu);
  p->queue[(p->q_head + p->q_n) % p->cap] = ix;
  p->q_n++;
  pthread_cond_signal(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
  *queued = 1;
  return RV_OK;
}

rv_err_t rv_replica_load_quantizer(rv_replica_load_t *l, int32_t version, const void *params, size_t len,
                                   char *errstr, size_t errstr_size) {
  if (!l || !params || version <= 0)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "load_quantizer: bad arguments");
  if (!stored_quantizer(&l->r->conf)) return RV_OK; /* float storage, or cosine (see stored_quantizer) */
  if (version == l->st.qver) return RV_OK;
  rv_err_t err = pool_drain(l); /* the rebuild reads every row put so far */
  if (err) return rv_errf(err, errstr, errstr_size, "inserting the loaded rows: %s", rv_err_str(err));
  return install_params(l->r, &l->st, 0, version, params, len, errstr, errstr_size);
}

rv_err_t rv_replica_load_positions(rv_replica_load_t *l, const rv_source_position_t *pos, int n) {
  if (!l || (n && !pos) || n < 0) return RV_ERR_INVALID;
  rv_source_position_t *np = realloc(l->pos, (size_t)(l->n_pos + n + 1) * sizeof *np);
  if (!np) return RV_ERR_NOMEM;
  l->pos = np;
  memcpy(l->pos + l->n_pos, pos, (size_t)n * sizeof *pos);
  l->n_pos += n;
  return RV_OK;
}

rv_err_t rv_replica_load_put(rv_replica_load_t *l, const rv_change_t *c) {
  if (!l || !c || c->op != RV_OP_UPSERT) return RV_ERR_INVALID;
  rv_err_t err = check_change(l->r, c);
  if (err) return err;
  if (!rv_replica_owns_id(l->r, c->id)) {
    l->skipped++;
    return RV_OK;
  }
  if (l->pool.n_threads > 1 && !l->pool.cap && (err = pool_start(l))) return err;
  if (l->pool.started) {
    int queued = 0;
    err = load_queue(l, c, &queued);
    if (err || queued) {
      if (!err) l->puts++;
      return err;
    }
    if ((err = pool_drain(l))) return err; /* then as a sequential load does */
  }
  err = apply_to(l->r, &l->st, c, 0, NULL);
  if (!err) l->puts++;
  return err;
}

static void load_close(rv_replica_load_t *l) {
  pool_stop(l);
  state_close(&l->st);
  free(l->end);
  free(l->pos);
  memset(l, 0, sizeof *l);
}

/* Runs conf.store.load into a fresh state and, when it succeeds, swaps it in
 * and sets the parts' next offsets to the end offsets it marked. Applier
 * thread (or, without brokers, a test's). RV_OK, RV_ERR_NOT_FOUND or the
 * failure, logged here. */
static rv_err_t boot_from_store(rv_replica_t *r) {
  const rv_replica_conf_t *c = &r->conf;
  char errstr[512] = "";
  int64_t t0 = rv_mono_ms();
  rv_replica_load_t l = {.r = r, .pool = {.n_threads = load_threads_wanted(c)}};
  rv_err_t err = state_init(c, &l.st, errstr, sizeof errstr);
  if (!err) err = c->store.load(c->store.ctx, &l, errstr, sizeof errstr);
  if (!err && (err = pool_drain(&l))) /* every insert finished before the swap */
    rv_errf(err, errstr, sizeof errstr, "inserting the loaded rows: %s", rv_err_str(err));
  pool_stop(&l);
  if (l.pool.refused)
    rv_warn(LOG, "%s/%s: %llu loaded rows refused by the index (first: %s)", c->collection.name, c->region,
            (unsigned long long)l.pool.refused, l.pool.first_refused);
  if (!err && !l.marked && r->rk)
    err = rv_errf(RV_ERR_STATE, errstr, sizeof errstr, "the loader did not mark the changelog end offsets");
  if (err == RV_ERR_NOT_FOUND) {
    rv_info(LOG, "%s/%s: the store holds nothing for the collection%s%s", c->collection.name, c->region,
            errstr[0] ? ": " : "", errstr);
  } else if (err) {
    rv_error(LOG, "%s/%s: loading from the store failed: %s", c->collection.name, c->region,
             errstr[0] ? errstr : rv_err_str(err));
  } else {
    pthread_mutex_lock(&r->apply_mu);
    swap_state(r, &l.st);
    for (int i = 0; i < l.n_end && i < r->n_parts; i++) atomic_store(&r->parts[i]->next_off, l.end[i]);
    pthread_mutex_unlock(&r->apply_mu);
    set_base(r, l.pos, l.n_pos, 1);
    atomic_store(&r->boot, RV_BOOT_STORE);
    atomic_store(&r->boot_ms, rv_mono_ms() - t0);
    rv_info(LOG, "%s/%s: loaded %llu rows from the store in %lld ms on %d insert thread%s (%llu of other shards "
            "skipped)%s",
            c->collection.name, c->region, (unsigned long long)l.puts, (long long)(rv_mono_ms() - t0),
            l.pool.used > 1 ? l.pool.used : 1, l.pool.used > 1 ? "s" : "",
            (unsigned long long)l.skipped, r->rk ? "; catching up from the end offsets marked" : "");
  }
  load_close(&l);
  return err;
}

rv_err_t rv__replica_bootstrap(rv_replica_t *r) {
  if (!r || !r->conf.store.load || r->started) return RV_ERR_STATE;
  return boot_from_store(r);
}
/* ---- snapshot positions ------------------------------------------------------
 * The POSN blob of the snapshot file (rv_snapshot.h frames and checksums it),
 * every integer little-endian:
 *   "RVRP" u32 version (2; version 1 files are still read)
 *   u32 topic length, topic bytes          the changelog topic the offsets are for
 *   u64 applied, u64 generation            the stats, so they continue
 *   u32 partitions, then i64 next offset each (-1: nothing read yet, or
 *       a partition of another shard)
 *   u64 ids, then per id: u32 id length, id bytes, i32 partition, i64 offset,
 *       u32 metadata length + 1 (0: none), metadata bytes
 *   version 2 only:
 *   i32 SQ8 quantizer version installed (0: none or own training)
 *   i32 shard index, i32 shard count (1: unsharded)
 *   u32 source positions, then per source partition: i32 partition,
 *       i64 next offset (read-your-writes: everything below it is applied)
 * The metadata lives here rather than in the attribute store: the store keeps
 * only the declared fields, while hits return the whole text. An entry with
 * no live vector is a deleted id's tombstone. */

#define POSN_MAGIC "RVRP"
#define POSN_VERSION 2u

static rv_err_t put32(rv_buf_t *b, uint32_t v) {
  uint8_t p[4];
  rv__put_u32(p, v);
  return rv_buf_append(b, p, 4);
}

static rv_err_t put64(rv_buf_t *b, uint64_t v) {
  uint8_t p[8];
  rv__put_u64(p, v);
  return rv_buf_append(b, p, 8);
}

/* Under apply_mu (the applier's offsets are atomics it may store meanwhile:
 * an offset is stored only after its change is applied, so the saved offsets
 * are never ahead of the saved state; at worst a change is applied again,
 * which its version makes harmless). Positions are taken after the offsets
 * and the state (under part_mu): a marker is applied after every change
 * before it, so they never claim more than the state holds. */
static rv_err_t positions_write_locked(rv_replica_t *r, rv_buf_t *b) {
  const char *topic = r->conf.collection.changelog_topic;
  rv_err_t err = rv_buf_append(b, POSN_MAGIC, 4);
  if (!err) err = put32(b, POSN_VERSION);
  if (!err) err = put32(b, (uint32_t)strlen(topic));
  if (!err) err = rv_buf_append(b, topic, strlen(topic));
  if (!err) err = put64(b, atomic_load(&r->applied));
  if (!err) err = put64(b, atomic_load(&r->generation));
  /* Offsets by partition number. r->parts changes under apply_mu only. */
  int n = r->n_start;
  for (int i = 0; i < r->n_parts; i++)
    if (r->parts[i]->partition + 1 > n) n = r->parts[i]->partition + 1;
  int nt = atomic_load(&r->n_topic);
  if (nt > n) n = nt;
  int64_t *offs = malloc((size_t)(n ? n : 1) * sizeof *offs);
  if (!offs) return RV_ERR_NOMEM;
  for (int p = 0; p < n; p++) offs[p] = r->n_parts ? -1 : p < r->n_start ? r->start_off[p] : -1;
  for (int i = 0; i < r->n_parts; i++) offs[r->parts[i]->partition] = atomic_load(&r->parts[i]->next_off);
  if (!err) err = put32(b, (uint32_t)n);
  for (int p = 0; !err && p < n; p++) err = put64(b, (uint64_t)offs[p]);
  free(offs);
  const versions_t *vs = &r->st.versions;
  if (!err) err = put64(b, vs->n);
  for (size_t i = 0; !err && i < vs->cap; i++) {
    const version_t *v = &vs->slots[i];
    if (!v->id) continue;
    size_t idl = strlen(v->id), ml = v->metadata ? strlen(v->metadata) : 0;
    if (ml >= UINT32_MAX) return RV_ERR_INVALID;
    err = put32(b, (uint32_t)idl);
    if (!err) err = rv_buf_append(b, v->id, idl);
    if (!err) err = put32(b, (uint32_t)v->partition);
    if (!err) err = put64(b, (uint64_t)v->offset);
    if (!err) err = put32(b, v->metadata ? (uint32_t)ml + 1 : 0);
    if (!err && ml) err = rv_buf_append(b, v->metadata, ml);
  }
  if (!err) err = put32(b, (uint32_t)r->st.qver);
  if (!err) err = put32(b, (uint32_t)r->conf.shard_index);
  if (!err) err = put32(b, (uint32_t)r->conf.shard_count);
  int np = err ? 0 : rv_replica_positions(r, NULL, 0);
  rv_source_position_t *pos = np ? malloc((size_t)np * sizeof *pos) : NULL;
  if (np && !pos) return RV_ERR_NOMEM;
  if (np) {
    int got = rv_replica_positions(r, pos, np);
    if (got < np) np = got;
  }
  if (!err) err = put32(b, (uint32_t)np);
  for (int i = 0; !err && i < np; i++) {
    err = put32(b, (uint32_t)pos[i].partition);
    if (!err) err = put64(b, (uint64_t)pos[i].next_offset);
  }
  free(pos);
  return err;
}

typedef struct cursor {
  const uint8_t *p, *end;
} cursor_t;

static int take(cursor_t *c, size_t n, const uint8_t **out) {
  if ((size_t)(c->end - c->p) < n) return -1;
  *out = c->p;
  c->p += n;
  return 0;
}

static int get32(cursor_t *c, uint32_t *v) {
  const uint8_t *p;
  if (take(c, 4, &p)) return -1;
  *v = rv__get_u32(p);
  return 0;
}

static int get64(cursor_t *c, uint64_t *v) {
  const uint8_t *p;
  if (take(c, 8, &p)) return -1;
  *v = rv__get_u64(p);
  return 0;
}

/* A malloc'd NUL-terminated copy of the next len bytes, which must hold no NUL. */
static rv_err_t get_str(cursor_t *c, uint32_t len, char **out) {
  const uint8_t *p;
  *out = NULL;
  if (take(c, len, &p) || memchr(p, 0, len)) return RV_ERR_CORRUPT;
  if (!(*out = malloc((size_t)len + 1))) return RV_ERR_NOMEM;
  memcpy(*out, p, len);
  (*out)[len] = 0;
  return RV_OK;
}

/* Parses a POSN blob into r (an empty replica: no versions yet). On failure r
 * may hold part of it; the caller resets. */
static rv_err_t positions_read(rv_replica_t *r, const void *blob, size_t len, char *errstr, size_t errstr_size) {
  cursor_t c = {blob, (const uint8_t *)blob + len};
  const uint8_t *p;
  uint32_t u = 0, n = 0, version = 0;
  uint64_t applied, generation, n_ids;
  versions_t *vs = &r->st.versions;
#define BAD(...) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "positions: " __VA_ARGS__)
  if (take(&c, 4, &p) || memcmp(p, POSN_MAGIC, 4)) BAD("bad magic");
  if (get32(&c, &version) || version < 1 || version > POSN_VERSION) BAD("unknown version %u", (unsigned)version);
  if (get32(&c, &u) || take(&c, u, &p)) BAD("truncated topic");
  const char *topic = r->conf.collection.changelog_topic;
  if (u != strlen(topic) || memcmp(p, topic, u))
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "the snapshot is of changelog topic '%.*s', not '%s'",
                   (int)(u < 200 ? u : 200), (const char *)p, topic);
  if (get64(&c, &applied) || get64(&c, &generation) || get32(&c, &n)) BAD("truncated header");
  if (n > 1000000 || (size_t)(c.end - c.p) / 8 < n) BAD("%u partitions in %zu bytes", (unsigned)n, (size_t)(c.end - c.p));
  if (n && !(r->start_off = malloc(n * sizeof *r->start_off)))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  r->n_start = (int)n;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t o = 0;
    if (get64(&c, &o) || (int64_t)o < -1) BAD("partition %u: offset %lld", (unsigned)i, (long long)(int64_t)o);
    r->start_off[i] = (int64_t)o;
  }
  if (get64(&c, &n_ids) || n_ids > (size_t)(c.end - c.p) / 20) BAD("bad id count");
  if (versions_presize(vs, (size_t)n_ids)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  int64_t now = rv_mono_ms();
  for (uint64_t i = 0; i < n_ids; i++) {
    uint32_t idl, ml;
    uint64_t off;
    char *id = NULL, *meta = NULL;
    if (get32(&c, &idl) || idl < 1 || idl > RV_ID_MAX) BAD("entry %llu: bad id length", (unsigned long long)i);
    rv_err_t err = get_str(&c, idl, &id);
    if (!err && (get32(&c, &u) || get64(&c, &off) || get32(&c, &ml))) err = RV_ERR_CORRUPT;
    if (!err && ml) err = get_str(&c, ml - 1, &meta);
    uint64_t h = id ? rv__hash_id(id) : 0;
    if (!err && versions_find(vs, id, h)) err = RV_ERR_CORRUPT;
    if (!err) err = versions_reserve(vs);
    if (err) {
      free(id);
      free(meta);
      if (err == RV_ERR_NOMEM) return rv_errf(err, errstr, errstr_size, "out of memory");
      BAD("entry %llu: truncated, malformed or a duplicate id", (unsigned long long)i);
    }
    version_t *v = versions_put(vs, id, h);
    v->partition = (int32_t)u;
    v->offset = (int64_t)off;
    v->metadata = meta;
    v->deleted_at = now; /* a tombstone unless the graph holds the id (see load_snapshot) */
  }
  if (version >= 2) {
    uint32_t qv, si, sc, np;
    if (get32(&c, &qv) || get32(&c, &si) || get32(&c, &sc) || get32(&c, &np)) BAD("truncated version 2 fields");
    if ((int32_t)qv < 0) BAD("quantizer version %d", (int)(int32_t)qv);
    if ((int)sc != r->conf.shard_count || (int)si != r->conf.shard_index)
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "the snapshot is of shard %u/%u, the replica is shard %d/%d",
                     (unsigned)si, (unsigned)sc, r->conf.shard_index, r->conf.shard_count);
    if (np > 1000000 || (size_t)(c.end - c.p) / 12 < np) BAD("%u source positions in %zu bytes", (unsigned)np,
                                                              (size_t)(c.end - c.p));
    rv_source_position_t *pos = np ? malloc(np * sizeof *pos) : NULL;
    if (np && !pos) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    for (uint32_t i = 0; i < np; i++) {
      uint32_t sp;
      uint64_t so;
      get32(&c, &sp);
      get64(&c, &so);
      pos[i] = (rv_source_position_t){(int32_t)sp, (int64_t)so};
    }
    rv_err_t err = set_base(r, pos, (int)np, 1);
    free(pos);
    if (err) return rv_errf(err, errstr, errstr_size, "out of memory");
    r->st.qver = (int32_t)qv;
  }
  if (c.p != c.end) BAD("%zu bytes after the last entry", (size_t)(c.end - c.p));
#undef BAD
  atomic_store(&r->applied, applied);
  atomic_store(&r->generation, generation);
  return RV_OK;
}

static int same_fields(const rv_attrs_t *a, const rv_collection_conf_t *col) {
  int n;
  const rv_field_conf_t *f = rv_attrs_fields(a, &n);
  if (n != col->n_fields) return 0;
  for (int i = 0; i < n; i++)
    if (strcmp(f[i].name, col->fields[i].name) || f[i].type != col->fields[i].type) return 0;
  return 1;
}

/* Called by new, before any other thread knows r. On any failure r is left
 * as it was (empty) and errstr says why; RV_ERR_NOT_FOUND if there is no file. */
static rv_err_t load_snapshot(rv_replica_t *r, char *errstr, size_t errstr_size) {
  const rv_replica_conf_t *c = &r->conf;
  rv_hnsw_t *h = NULL;
  rv_attrs_t *a = NULL;
  void *blob = NULL;
  size_t blob_len = 0;
  int64_t t0 = rv_mono_ms();
  rv_err_t err = rv_snapshot_load(c->snapshot_path, NULL, &h, &a, &blob, &blob_len, errstr, errstr_size);
  if (err) return err;
  const rv_hnsw_conf_t *hc = rv_hnsw_conf(h);
  char id[RV_ID_MAX + 1];
  if (hc->dim != c->collection.dim || hc->metric != c->collection.metric || hc->M != c->hnsw_m ||
      (hc->storage != c->storage && !(hc->storage == RV_HNSW_FLOAT && c->storage == RV_HNSW_SQ8))) {
    err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                  "it holds dim %d, metric %s, M %d, storage %d; the replica wants dim %d, metric %s, M %d, storage %d",
                  hc->dim, rv_metric_name(hc->metric), hc->M, (int)hc->storage, c->collection.dim,
                  rv_metric_name(c->collection.metric), c->hnsw_m, (int)c->storage);
    goto fail;
  }
  if ((err = positions_read(r, blob, blob_len, errstr, errstr_size))) goto fail;
  versions_t *vs = &r->st.versions;
  /* Every live vector must have its version (and metadata) entry, which
   * learns the vector's slot (not saved: the graph knows it). */
  uint32_t bound = rv_hnsw_id_bound(h);
  for (uint32_t i = 0; i < bound; i++) {
    if (!rv_hnsw_is_live(h, i)) continue;
    version_t *v = NULL;
    if (rv_hnsw_external_id(h, i, id, sizeof id) || !(v = versions_find(vs, id, rv__hash_id(id)))) {
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "live slot %u ('%s') has no version entry", (unsigned)i, id);
      goto fail;
    }
    v->slot = i;
    v->slot_version = rv_hnsw_version(h, i);
    v->deleted_at = 0;
  }
  r->st.n_tomb = 0;
  r->st.tomb_next = INT64_MAX;
  for (size_t i = 0; i < vs->cap; i++)
    if (vs->slots[i].id && vs->slots[i].slot == NO_SLOT) {
      r->st.n_tomb++;
      r->st.tomb_next = vs->slots[i].deleted_at + c->tombstone_ms;
    }
  atomic_store(&r->tombstones, r->st.n_tomb);
  if (!a || !same_fields(a, &c->collection)) {
    /* The declared fields changed since the save: derive the store again from the metadata. */
    rv_attrs_destroy(a);
    if (!(a = rv_attrs_new(c->collection.fields, c->collection.n_fields, errstr, errstr_size))) {
      err = RV_ERR_NOMEM;
      goto fail;
    }
    for (uint32_t i = 0; i < bound; i++) {
      if (!rv_hnsw_is_live(h, i) || rv_hnsw_external_id(h, i, id, sizeof id)) continue;
      parsed_attrs_t pa;
      parse_attrs(&c->collection, versions_find(vs, id, rv__hash_id(id))->metadata, &pa);
      set_attrs(r, a, i, id, &pa);
      parsed_attrs_close(&pa);
    }
    rv_info(LOG, "%s/%s: declared fields changed since the snapshot: filter attributes re-derived",
            c->collection.name, c->region);
  }
  rv_hnsw_destroy(r->st.hnsw);
  rv_attrs_destroy(r->st.attrs);
  r->st.hnsw = h;
  r->st.attrs = a;
  r->st.sq8_pending = own_training(c) && hc->storage == RV_HNSW_FLOAT;
  if (hc->storage == RV_HNSW_FLOAT) r->st.qver = 0;
  r->restored = 1;
  free(blob);
  rv_info(LOG, "%s/%s: loaded snapshot %s in %lld ms: %zu vectors, %zu ids, offsets of %d partitions",
          c->collection.name, c->region, c->snapshot_path, (long long)(rv_mono_ms() - t0), rv_hnsw_count(h),
          vs->n, r->n_start);
  return RV_OK;
fail:
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  free(blob);
  versions_close(&r->st.versions);
  r->st.qver = 0;
  free(r->start_off);
  r->start_off = NULL;
  r->n_start = 0;
  set_base(r, NULL, 0, 1);
  atomic_store(&r->applied, 0);
  atomic_store(&r->generation, 0);
  return err;
}

/* A copy of the state to save, made while applies are held off. */
typedef struct snap_copy {
  rv_replica_t *r;
  rv_buf_t hnsw, attrs, posn;
  int64_t t0;       /* when the copy began */
  int64_t pause_ms; /* how long it held applies off */
} snap_copy_t;

static int buf_write(void *ctx, const void *p, size_t len) { return rv_buf_append(ctx, p, len) ? -1 : 0; }

static void snap_free(snap_copy_t *sc) {
  if (!sc) return;
  rv_buf_close(&sc->hnsw);
  rv_buf_close(&sc->attrs);
  rv_buf_close(&sc->posn);
  free(sc);
}

/* The copy-on-write window: under apply_mu (no apply, swap or sweep in
 * flight), the state is serialized into memory; searches go on. */
static rv_err_t snap_copy(rv_replica_t *r, snap_copy_t **out, char *errstr, size_t errstr_size) {
  snap_copy_t *sc = calloc(1, sizeof *sc);
  if (!sc) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  sc->r = r;
  rv_buf_init(&sc->hnsw);
  rv_buf_init(&sc->attrs);
  rv_buf_init(&sc->posn);
  sc->t0 = rv_mono_ms();
  pthread_mutex_lock(&r->apply_mu);
  rv_err_t err;
  if (r->replaying) {
    err = rv_errf(RV_ERR_STATE, errstr, errstr_size, "a bootstrap is in progress: the state has no positions to save");
  } else if ((err = positions_write_locked(r, &sc->posn))) {
    rv_errf(err, errstr, errstr_size, "encoding positions: %s", rv_err_str(err));
  } else if ((err = rv_hnsw_write(r->st.hnsw, buf_write, &sc->hnsw)) ||
             (err = rv_attrs_write(r->st.attrs, buf_write, &sc->attrs))) {
    rv_errf(err, errstr, errstr_size, "copying the index: %s", rv_err_str(err));
  }
  pthread_mutex_unlock(&r->apply_mu);
  sc->pause_ms = rv_mono_ms() - sc->t0;
  if (err) {
    snap_free(sc);
    return err;
  }
  *out = sc;
  return RV_OK;
}

/* Writes the copy to the file (no replica lock but snap_mu, which orders
 * file writers). */
static rv_err_t snap_write(snap_copy_t *sc, char *errstr, size_t errstr_size) {
  rv_replica_t *r = sc->r;
  pthread_mutex_lock(&r->snap_mu);
  rv_err_t err = rv_snapshot_save_bytes(r->conf.snapshot_path, sc->hnsw.base, sc->hnsw.len, sc->attrs.base,
                                        sc->attrs.len, sc->posn.base, sc->posn.len, errstr, errstr_size);
  pthread_mutex_unlock(&r->snap_mu);
  if (!err) {
    atomic_store(&r->snapshot_pause_ms, sc->pause_ms);
    atomic_store(&r->snapshot_ms, rv_mono_ms() - sc->t0);
  }
  return err;
}

rv_err_t rv_replica_snapshot(rv_replica_t *r, char *errstr, size_t errstr_size) {
  if (!r) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no replica");
  if (!r->conf.snapshot_path[0]) return rv_errf(RV_ERR_STATE, errstr, errstr_size, "no snapshot path configured");
  snap_copy_t *sc = NULL;
  rv_err_t err = snap_copy(r, &sc, errstr, errstr_size);
  if (!err) err = snap_write(sc, errstr, errstr_size);
  snap_free(sc);
  return err;
}

static void *snap_main(void *arg) {
  snap_copy_t *sc = arg;
  rv_replica_t *r = sc->r;
  char errstr[512];
  if (snap_write(sc, errstr, sizeof errstr))
    rv_error(LOG, "%s/%s: periodic snapshot failed: %s", r->conf.collection.name, r->conf.region, errstr);
  else
    rv_debug(LOG, "%s/%s: snapshot saved: applies paused %lld ms, %lld ms in all", r->conf.collection.name,
             r->conf.region, (long long)sc->pause_ms, (long long)(rv_mono_ms() - sc->t0));
  snap_free(sc);
  atomic_store(&r->snap_busy, 0);
  return NULL;
}

/* ---- applier thread ---------------------------------------------------- */

/* librdkafka's internal threads call this. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  rv_log_level_t l = level <= 3 ? RV_LOG_ERROR : level == 4 ? RV_LOG_WARN : level <= 6 ? RV_LOG_INFO : RV_LOG_DEBUG;
  rv_log(l, LOG, "rdkafka %s: %s", fac, buf);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Partition count of topic: > 0 when known, 0 if the topic does not exist
 * (yet), -1 on a metadata error. Asks for all topics: a request naming the
 * topic would make a broker with auto.create.topics.enable (and the mock
 * cluster) create it, with whatever defaults it has, rather than wait for
 * ingest to create it compacted. */
static int topic_partitions(rd_kafka_t *rk, const char *topic) {
  const struct rd_kafka_metadata *md = NULL;
  if (rd_kafka_metadata(rk, 1, NULL, &md, METADATA_RETRY_MS)) return -1;
  int n = 0;
  for (int i = 0; i < md->topic_cnt; i++) {
    const rd_kafka_metadata_topic_t *t = &md->topics[i];
    if (strcmp(t->topic, topic)) continue;
    n = t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? 0 : t->err ? -1 : t->partition_cnt;
  }
  rd_kafka_metadata_destroy(md);
  return n;
}

/* The applier thread's own state. */
typedef struct applier {
  rv_replica_t *r;
  const char *topic;
  int *pidx;           /* changelog partition -> index in r->parts, -1: another shard's */
  int n_pidx;
  rv_change_t *batch;  /* the batch's changes that altered the live index (for on_applied) */
  const rv_change_t **batch_ptrs;
  int n_batch;
  int booting;         /* a replay runs until every part reaches its target */
  int need_reboot;     /* a gap or reset was seen */
  int64_t boot_t0;
  rd_kafka_resp_err_t last_err;
} applier_t;

static void part_free(part_t *p) {
  if (!p) return;
  free(p->marks);
  free(p->pend);
  free(p);
}

/* Adds the partitions of [from, n) this shard reads, starting at the
 * snapshot's offsets (or the beginning). Applier thread. */
static rv_err_t add_parts(applier_t *a, int from, int n) {
  rv_replica_t *r = a->r;
  int add = 0;
  for (int p = from; p < n; p++) add += p % r->conf.shard_count == r->conf.shard_index;
  part_t **np = malloc((size_t)(r->n_parts + add + 1) * sizeof *np);
  int *pidx = malloc((size_t)n * sizeof *pidx);
  if (!np || !pidx) {
    free(np);
    free(pidx);
    return RV_ERR_NOMEM;
  }
  if (r->n_parts) memcpy(np, r->parts, (size_t)r->n_parts * sizeof *np); /* parts is NULL before the first */
  for (int p = 0; p < n; p++) pidx[p] = p < a->n_pidx ? a->pidx[p] : -1;
  int m = r->n_parts;
  for (int p = from; p < n; p++) {
    if (p % r->conf.shard_count != r->conf.shard_index) continue;
    part_t *pt = calloc(1, sizeof *pt);
    if (!pt) {
      for (int i = r->n_parts; i < m; i++) part_free(np[i]);
      free(np);
      free(pidx);
      return RV_ERR_NOMEM;
    }
    pt->partition = p;
    atomic_init(&pt->next_off, p < r->n_start ? r->start_off[p] : -1);
    atomic_init(&pt->hw, -1);
    atomic_init(&pt->last_ts, -1);
    atomic_init(&pt->event_lag, -1);
    atomic_init(&pt->n_applied, 0);
    atomic_init(&pt->rate_milli, 0);
    pt->rate_at = rv_mono_ms();
    pidx[p] = m;
    np[m++] = pt;
  }
  pthread_mutex_lock(&r->apply_mu); /* snapshots read the array under it */
  pthread_mutex_lock(&r->part_mu);
  part_t **old = r->parts;
  r->parts = np;
  r->n_parts = m;
  pthread_mutex_unlock(&r->part_mu);
  pthread_mutex_unlock(&r->apply_mu);
  free(old);
  free(a->pidx);
  a->pidx = pidx;
  a->n_pidx = n;
  atomic_store(&r->n_topic, n);
  return RV_OK;
}

/* (Re)assigns every part at its next offset, or the beginning. */
static void assign_all(applier_t *a) {
  rv_replica_t *r = a->r;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(r->n_parts ? r->n_parts : 1);
  if (!l) {
    rv_error(LOG, "%s: out of memory assigning partitions", r->conf.region);
    return;
  }
  for (int i = 0; i < r->n_parts; i++) {
    int64_t next = atomic_load(&r->parts[i]->next_off);
    rd_kafka_topic_partition_list_add(l, a->topic, r->parts[i]->partition)->offset =
        next >= 0 ? next : RD_KAFKA_OFFSET_BEGINNING;
    r->parts[i]->fetched = 0;
  }
  rd_kafka_resp_err_t kerr = rd_kafka_assign(r->rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (kerr) rv_error(LOG, "%s: assigning %s: %s", r->conf.region, a->topic, rd_kafka_err2str(kerr));
}

/* Raises every part's high watermark to its end offset, asked for all
 * parts at once (rd_kafka_offsets_for_times with the timestamp
 * RD_KAFKA_OFFSET_END is a ListOffsets for "latest", one request per
 * leader). Called just before an assignment: the lag is then known at once
 * (0 for a part already at its end) instead of when each part's first fetch
 * answers, which an idle log holds for fetch.wait.max.ms (and, as a broker
 * answers a connection's requests in order, a ListOffsets sent after that
 * fetch waits as long). On failure the fetches tell, as before. Applier
 * thread (the only writer of hw). */
static void learn_end_offsets(applier_t *a) {
  rv_replica_t *r = a->r;
  if (!r->n_parts) return;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(r->n_parts);
  if (!l) return;
  for (int i = 0; i < r->n_parts; i++)
    rd_kafka_topic_partition_list_add(l, a->topic, r->parts[i]->partition)->offset = RD_KAFKA_OFFSET_END;
  rd_kafka_resp_err_t kerr = rd_kafka_offsets_for_times(r->rk, l, WATERMARK_TIMEOUT_MS);
  if (kerr) {
    rv_debug(LOG, "%s: end offsets of %s: %s (the fetches will tell)", r->conf.region, a->topic,
             rd_kafka_err2str(kerr));
  } else {
    for (int i = 0; i < l->cnt; i++) {
      const rd_kafka_topic_partition_t *e = &l->elems[i];
      if (e->err || e->offset < 0 || e->partition < 0 || e->partition >= a->n_pidx || a->pidx[e->partition] < 0)
        continue;
      part_t *p = r->parts[a->pidx[e->partition]];
      if (atomic_load(&p->hw) < e->offset) atomic_store(&p->hw, e->offset);
    }
  }
  rd_kafka_topic_partition_list_destroy(l);
}

static void finish_boot(applier_t *a, rv_replica_boot_t how) {
  rv_replica_t *r = a->r;
  atomic_store(&r->boot, how);
  atomic_store(&r->boot_ms, rv_mono_ms() - a->boot_t0);
  atomic_store(&r->bootstrapped, 1);
  a->booting = 0;
}

/* A replay reached the end offsets it started with: a fresh state is
 * swapped in (its markers with it); the initial replay went live all along. */
static void maybe_finish_replay(applier_t *a) {
  rv_replica_t *r = a->r;
  if (!a->booting) return;
  for (int i = 0; i < r->n_parts; i++)
    if (atomic_load(&r->parts[i]->next_off) < r->parts[i]->target) return;
  if (r->replaying) {
    pthread_mutex_lock(&r->apply_mu);
    swap_state(r, &r->fresh);
    r->replaying = 0;
    pthread_mutex_unlock(&r->apply_mu);
    pthread_mutex_lock(&r->part_mu);
    for (int i = 0; i < r->n_parts; i++) {
      part_t *p = r->parts[i];
      rv_source_position_t *t = p->marks;
      int tc = p->cap_marks;
      p->marks = p->pend;
      p->n_marks = p->n_pend;
      p->cap_marks = p->cap_pend;
      p->pend = t;
      p->cap_pend = tc;
      p->n_pend = 0;
    }
    r->n_base = 0;
    pthread_cond_broadcast(&r->pos_cv);
    pthread_mutex_unlock(&r->part_mu);
  }
  finish_boot(a, RV_BOOT_REPLAY);
  rv_info(LOG, "%s/%s: replay reached the end offsets in %lld ms: %zu vectors", r->conf.collection.name,
          r->conf.region, (long long)atomic_load(&r->boot_ms), rv_hnsw_count(r->st.hnsw));
}

/* Bootstrap (again: after a gap or reset): the store, else a replay from the
 * beginning (the first one applied live, a later one into a fresh state
 * that replaces the old one when it has caught up). */
static void start_bootstrap(applier_t *a, int again) {
  rv_replica_t *r = a->r;
  a->need_reboot = 0;
  a->boot_t0 = rv_mono_ms();
  atomic_store(&r->boot_ms, -1);
  if (again) atomic_fetch_add(&r->rebootstraps, 1);
  if (r->replaying) { /* a replay that met a gap itself: start over */
    pthread_mutex_lock(&r->apply_mu);
    r->replaying = 0;
    pthread_mutex_unlock(&r->apply_mu);
    state_close(&r->fresh);
  }
  if (r->conf.store.load && boot_from_store(r) == RV_OK) {
    learn_end_offsets(a);
    assign_all(a);
    a->booting = 0;
    finish_boot(a, RV_BOOT_STORE);
    return;
  }
  int fresh = 0;
  if (again) {
    char errstr[256] = "";
    if (state_init(&r->conf, &r->fresh, errstr, sizeof errstr))
      rv_error(LOG, "%s/%s: no fresh state for the replay (%s): replaying into the current one", r->conf.collection.name,
               r->conf.region, errstr);
    else
      fresh = 1;
  }
  for (int i = 0; i < r->n_parts; i++) {
    part_t *p = r->parts[i];
    int64_t lo = -1, hi = -1;
    if (rd_kafka_query_watermark_offsets(r->rk, a->topic, p->partition, &lo, &hi, WATERMARK_TIMEOUT_MS) || hi < 0)
      hi = 0; /* unknown: the replay counts as done at once, the catch-up goes on */
    p->target = hi;
    atomic_store(&p->next_off, -1);
    p->n_pend = 0;
  }
  pthread_mutex_lock(&r->apply_mu);
  r->replaying = fresh;
  pthread_mutex_unlock(&r->apply_mu);
  a->booting = 1;
  assign_all(a);
  rv_info(LOG, "%s/%s: replaying %s (%d partitions) from the beginning%s", r->conf.collection.name, r->conf.region,
          a->topic, r->n_parts, fresh ? " into a fresh state (searches keep the current one until it caught up)" : "");
  maybe_finish_replay(a);
}

static int is_marker(const rd_kafka_message_t *m) {
  rd_kafka_headers_t *hdrs = NULL;
  const void *val = NULL;
  size_t size = 0;
  if (rd_kafka_message_headers(m, &hdrs) || !hdrs) return 0;
  if (rd_kafka_header_get_last(hdrs, RV_KIND_HEADER, &val, &size) || !val) return 0;
  return size == strlen(RV_KIND_POSITION) && !memcmp(val, RV_KIND_POSITION, size);
}

static void handle_marker(applier_t *a, part_t *pt, const rd_kafka_message_t *m) {
  rv_replica_t *r = a->r;
  char errstr[256];
  rv_marker_t mk = {0};
  if (!m->payload || rv_codec_decode_marker(r->codec, m->payload, m->len, &mk, errstr, sizeof errstr)) {
    rv_warn(LOG, "%s: skipping undecodable position marker %s[%" PRId32 "]@%" PRId64 ": %s", r->conf.region,
            a->topic, m->partition, m->offset, m->payload ? errstr : "null value");
    atomic_fetch_add(&r->skipped, 1);
    return;
  }
  int live = !r->replaying;
  pthread_mutex_lock(&r->part_mu);
  for (int i = 0; i < mk.n; i++) {
    if (mk.positions[i].partition < 0 || mk.positions[i].next_offset < 0) continue;
    if (live)
      pos_raise(&pt->marks, &pt->n_marks, &pt->cap_marks, mk.positions[i].partition, mk.positions[i].next_offset);
    else
      pos_raise(&pt->pend, &pt->n_pend, &pt->cap_pend, mk.positions[i].partition, mk.positions[i].next_offset);
  }
  if (live) pthread_cond_broadcast(&r->pos_cv);
  pthread_mutex_unlock(&r->part_mu);
  rv_marker_close(&mk);
}

static void handle_message(applier_t *a, const rd_kafka_message_t *m) {
  rv_replica_t *r = a->r;
  char errstr[256];
  if (m->partition < 0 || m->partition >= a->n_pidx || a->pidx[m->partition] < 0) return; /* not assigned by us */
  part_t *pt = r->parts[a->pidx[m->partition]];
  pt->fetched = 1;
  if (is_marker(m)) {
    /* The offset first: a reader woken by the marker's positions sees the
     * partition past it (a snapshot taken in between saves positions lower
     * than the offset implies, which the next marker raises again). */
    atomic_store(&pt->next_off, m->offset + 1);
    if (atomic_load(&pt->hw) < m->offset + 1) atomic_store(&pt->hw, m->offset + 1);
    handle_marker(a, pt, m);
    return;
  }
  int live = !r->replaying;
  rv_change_t c;
  rv_err_t err = m->payload ? rv_codec_decode_change(r->codec, m->payload, m->len, &c, errstr, sizeof errstr)
                            : rv_errf(RV_ERR_CORRUPT, errstr, sizeof errstr, "null value");
  if (err) {
    rv_warn(LOG, "%s: skipping undecodable record %s[%" PRId32 "]@%" PRId64 ": %s", r->conf.region, a->topic,
            m->partition, m->offset, errstr);
    atomic_fetch_add(&r->skipped, 1);
  } else {
    int altered = 0;
    err = apply_to(r, live ? &r->st : &r->fresh, &c, live, &altered);
    if (err) {
      rv_warn(LOG, "%s: skipping change for id '%s' at %s[%" PRId32 "]@%" PRId64 ": %s", r->conf.region, c.id,
              a->topic, m->partition, m->offset, rv_err_str(err));
      atomic_fetch_add(&r->skipped, 1);
    }
    int64_t now = rv_wall_ms();
    int64_t ev = c.has_event_time ? c.event_time_ms : c.created_at_ms > 0 ? c.created_at_ms : -1;
    if (ev >= 0) atomic_store(&pt->event_lag, now > ev ? now - ev : 0);
    if (live && altered && r->on_applied && a->n_batch < BATCH_MAX) a->batch[a->n_batch++] = c; /* kept for the hook */
    else rv_change_close(&c);
  }
  int64_t ts = rd_kafka_message_timestamp(m, NULL);
  if (ts >= 0) atomic_store(&pt->last_ts, ts);
  atomic_fetch_add(&pt->n_applied, 1);
  /* After the apply: a snapshot never records an offset past what it holds. */
  atomic_store(&pt->next_off, m->offset + 1);
  if (atomic_load(&pt->hw) < m->offset + 1) atomic_store(&pt->hw, m->offset + 1); /* the log holds it at least */
}

/* The batch's changes, published: hand them to on_applied, off any lock. */
static void deliver_batch(applier_t *a) {
  rv_replica_t *r = a->r;
  if (!a->n_batch) return;
  if (r->on_applied) {
    for (int i = 0; i < a->n_batch; i++) a->batch_ptrs[i] = &a->batch[i];
    rv_replica_applied_t b = {a->batch_ptrs, a->n_batch,
                              atomic_load_explicit(&r->generation, memory_order_acquire)};
    r->on_applied(r->on_applied_ctx, &b);
  }
  for (int i = 0; i < a->n_batch; i++) rv_change_close(&a->batch[i]);
  a->n_batch = 0;
}

static void handle_event(applier_t *a, rd_kafka_message_t *m) {
  rv_replica_t *r = a->r;
  if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
    if (m->partition >= 0 && m->partition < a->n_pidx && a->pidx[m->partition] >= 0) {
      part_t *pt = r->parts[a->pidx[m->partition]];
      pt->fetched = 1;
      atomic_store(&pt->next_off, m->offset);
      if (atomic_load(&pt->hw) < m->offset) atomic_store(&pt->hw, m->offset); /* the end, when the fetch answered */
    }
  } else if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
    /* auto.offset.reset=error: the log no longer holds our next offset
     * (retention, compaction, the topic recreated). Resetting silently could
     * skip changes or keep ids the new log deleted: bootstrap again. */
    rv_error(LOG, "%s/%s: gap in the changelog: %s[%" PRId32 "]: %s; bootstrapping again", r->conf.collection.name,
             r->conf.region, a->topic, m->partition, rd_kafka_message_errstr(m));
    a->need_reboot = 1;
  } else if (m->err) {
    if (m->err != a->last_err) /* transient broker errors repeat every poll: log each kind once in a row */
      rv_warn(LOG, "%s: consumer: %s", r->conf.region, rd_kafka_message_errstr(m));
    a->last_err = m->err;
    return;
  }
  a->last_err = RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* Watermarks, lag, rates; a high watermark below the next offset is a reset. */
static void refresh_lag(applier_t *a) {
  rv_replica_t *r = a->r;
  int64_t total = 0, now = rv_mono_ms();
  for (int i = 0; i < r->n_parts; i++) {
    part_t *p = r->parts[i];
    int64_t lo = RD_KAFKA_OFFSET_INVALID, hi = RD_KAFKA_OFFSET_INVALID, next = atomic_load(&p->next_off);
    if (!rd_kafka_get_watermark_offsets(r->rk, a->topic, p->partition, &lo, &hi) && hi >= 0) {
      /* The cached watermark can trail what was just consumed: a high
       * watermark below the next offset counts only once it has stayed so
       * for GAP_CONFIRM_MS (fetch responses refresh it twice a second even
       * when idle); the fetch's offset-out-of-range error is the main signal. */
      atomic_store(&p->hw, hi > next ? hi : next);
      if (!p->fetched || next <= hi) {
        p->gap_since = 0;
      } else if (!p->gap_since) {
        p->gap_since = now;
      } else if (now - p->gap_since >= GAP_CONFIRM_MS && !a->need_reboot) {
        rv_error(LOG, "%s/%s: %s[%d]: high watermark %lld is below the next offset %lld (topic recreated?); "
                 "bootstrapping again", r->conf.collection.name, r->conf.region, a->topic, (int)p->partition,
                 (long long)hi, (long long)next);
        a->need_reboot = 1;
        p->gap_since = 0;
      }
    }
    int64_t lr = part_lag_records(p);
    if (lr < 0 || total < 0) total = -1;
    else total += lr;
    if (now - p->rate_at >= RATE_WINDOW_MS) {
      uint64_t n = atomic_load(&p->n_applied);
      atomic_store(&p->rate_milli, (int64_t)((n - p->rate_base) * 1000000ull / (uint64_t)(now - p->rate_at)));
      p->rate_base = n;
      p->rate_at = now;
    }
  }
  atomic_store(&r->lag, r->n_parts ? total : -1);
}

/* Partitions added to the changelog since: read them from the beginning. */
static void refresh_partitions(applier_t *a) {
  rv_replica_t *r = a->r;
  int n = topic_partitions(r->rk, a->topic);
  if (n <= a->n_pidx) {
    if (n > 0 && n < a->n_pidx)
      rv_warn(LOG, "%s/%s: %s now has %d partitions, had %d", r->conf.collection.name, r->conf.region, a->topic, n,
              a->n_pidx);
    return;
  }
  int before = r->n_parts, had = a->n_pidx;
  if (add_parts(a, a->n_pidx, n)) {
    rv_error(LOG, "%s: out of memory adding partitions", r->conf.region);
    return;
  }
  for (int i = before; i < r->n_parts; i++) r->parts[i]->target = 0;
  rv_info(LOG, "%s/%s: %s grew from %d to %d partitions: %d more to read from the beginning",
          r->conf.collection.name, r->conf.region, a->topic, had, n, r->n_parts - before);
  if (r->n_parts > before) assign_all(a);
}

/* Every snapshot_interval_s, if anything was applied since the last save:
 * the state is copied here (applies wait for the copy only) and written by a
 * background thread; while one is still writing, the next waits. */
static void maybe_snapshot(rv_replica_t *r, int64_t *saved_at, uint64_t *saved_applied) {
  if (r->conf.snapshot_interval_s <= 0 || !r->conf.snapshot_path[0] || r->replaying) return;
  int64_t now = rv_mono_ms();
  if (now - *saved_at < (int64_t)r->conf.snapshot_interval_s * 1000 || atomic_load(&r->snap_busy)) return;
  *saved_at = now;
  uint64_t applied = atomic_load(&r->applied);
  if (applied == *saved_applied && !atomic_load(&r->unsaved)) return;
  atomic_store(&r->unsaved, 0);
  if (r->snap_started) { /* finished: snap_busy is 0 */
    pthread_join(r->snap_thread, NULL);
    r->snap_started = 0;
  }
  char errstr[512];
  snap_copy_t *sc = NULL;
  if (snap_copy(r, &sc, errstr, sizeof errstr)) {
    rv_error(LOG, "%s: periodic snapshot failed: %s", r->conf.region, errstr);
    return;
  }
  atomic_store(&r->snap_busy, 1);
  if (pthread_create(&r->snap_thread, NULL, snap_main, sc)) {
    atomic_store(&r->snap_busy, 0);
    rv_warn(LOG, "%s: no thread for the snapshot: writing it on the applier", r->conf.region);
    if (snap_write(sc, errstr, sizeof errstr)) rv_error(LOG, "%s: periodic snapshot failed: %s", r->conf.region, errstr);
    snap_free(sc);
  } else {
    r->snap_started = 1;
  }
  *saved_applied = applied; /* what the copy held at least */
}

static void *applier_main(void *arg) {
  rv_replica_t *r = arg;
  applier_t a = {.r = r, .topic = r->conf.collection.changelog_topic};
  a.batch = malloc(BATCH_MAX * sizeof *a.batch);
  a.batch_ptrs = malloc(BATCH_MAX * sizeof *a.batch_ptrs);
  if (!a.batch || !a.batch_ptrs) {
    rv_error(LOG, "%s: out of memory starting the applier", r->conf.region);
    goto out;
  }
  int n = 0;
  while (!atomic_load(&r->stop)) {
    int64_t t0 = rv_mono_ms();
    n = topic_partitions(r->rk, a.topic);
    if (n > 0) break;
    rv_debug(LOG, "%s: changelog topic %s %s; retrying", r->conf.region, a.topic,
             n == 0 ? "does not exist yet" : "metadata unavailable");
    while (!atomic_load(&r->stop) && rv_mono_ms() - t0 < METADATA_RETRY_MS) sleep_ms(20);
  }
  if (n <= 0) goto out; /* stopped */
  if (add_parts(&a, 0, n)) {
    rv_error(LOG, "%s: out of memory starting the applier", r->conf.region);
    goto out;
  }
  if (r->n_start > n)
    rv_warn(LOG, "%s: the snapshot has offsets of %d partitions, %s has %d", r->conf.region, r->n_start, a.topic, n);
  if (r->restored) {
    learn_end_offsets(&a);
    assign_all(&a);
    atomic_store(&r->bootstrapped, 1);
    rv_info(LOG, "%s/%s: applying %s (%d of %d partitions) from the snapshot's offsets", r->conf.collection.name,
            r->conf.region, a.topic, r->n_parts, n);
  } else {
    start_bootstrap(&a, 0);
  }

  int64_t lag_at = 0, meta_at = rv_mono_ms(), saved_at = rv_mono_ms();
  uint64_t saved_applied = atomic_load(&r->applied);
  while (!atomic_load(&r->stop)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, POLL_MS);
    int idle = !m, polled = 0;
    while (m) {
      if (m->err) {
        handle_event(&a, m);
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) idle = 1;
      } else {
        handle_message(&a, m);
        a.last_err = RD_KAFKA_RESP_ERR_NO_ERROR;
      }
      rd_kafka_message_destroy(m);
      if (++polled >= BATCH_MAX || a.n_batch >= BATCH_MAX || a.need_reboot) break;
      m = rd_kafka_consumer_poll(r->rk, 0);
    }
    deliver_batch(&a);
    int64_t now = rv_mono_ms();
    if (idle || now - lag_at >= LAG_REFRESH_MS) {
      refresh_lag(&a);
      lag_at = now;
    }
    if (now - meta_at >= METADATA_REFRESH_MS) {
      refresh_partitions(&a);
      meta_at = rv_mono_ms();
    }
    if (a.booting) maybe_finish_replay(&a);
    if (a.need_reboot) start_bootstrap(&a, 1);
    if (idle) {
      pthread_mutex_lock(&r->apply_mu);
      sweep(r, &r->st, 1);
      pthread_mutex_unlock(&r->apply_mu);
    }
    maybe_snapshot(r, &saved_at, &saved_applied);
  }
out:
  deliver_batch(&a);
  free(a.batch);
  free(a.batch_ptrs);
  free(a.pidx);
  rd_kafka_consumer_close(r->rk);
  return NULL;
}

rv_err_t rv_replica_start(rv_replica_t *r, char *errstr, size_t errstr_size) {
  if (!r) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no replica");
  if (r->started) return rv_errf(RV_ERR_STATE, errstr, errstr_size, "applier already started");
  if (!r->conf.brokers[0]) return rv_errf(RV_ERR_STATE, errstr, errstr_size, "no brokers configured");

  /* rd_kafka_assign and rd_kafka_consumer_poll need a group.id in librdkafka
   * 2.0 (otherwise "Local: Unknown group"), but an assign-only consumer never
   * joins the group and, with auto commit off, never commits to it: replicas
   * keep their own positions. auto.offset.reset=error: an offset the log no
   * longer holds is reported (and re-bootstrapped), never skipped silently. */
  char group[RV_NAME_MAX * 2 + 48];
  snprintf(group, sizeof group, "rv-replica-%s-%s-%d", r->conf.region[0] ? r->conf.region : "default",
           r->conf.collection.name, r->conf.shard_index);
  const char *props[][2] = {
      {"bootstrap.servers", r->conf.brokers}, {"group.id", group},
      {"client.id", group},                   {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},  {"enable.partition.eof", "true"},
      {"auto.offset.reset", "error"},
      /* Freshness, as for ingest's consumer: librdkafka's default 500 ms fetch
       * wait held each change that arrived on an idle partition for up to half
       * a second (end-to-end p50 ~440 ms at 500 records/s). */
      {"fetch.wait.max.ms", "10"},
      {"fetch.min.bytes", "1"},
  };
  rd_kafka_conf_t *kc = rv_kafka_conf_new(RV_KAFKA_PROPS(props), "changelog consumer", errstr, errstr_size);
  if (!kc) return RV_ERR_CONFIG;
  rv_err_t err;
  rd_kafka_conf_set_log_cb(kc, kafka_log);

  r->codec = rv_codec_new(errstr, errstr_size);
  if (!r->codec) {
    rd_kafka_conf_destroy(kc);
    return RV_ERR_CONFIG;
  }
  r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, errstr_size);
  if (!r->rk) {
    rd_kafka_conf_destroy(kc); /* not taken on failure */
    err = RV_ERR_CONFIG;
    goto fail;
  }
  kc = NULL; /* now owned by r->rk */
  rd_kafka_poll_set_consumer(r->rk); /* client errors arrive through rd_kafka_consumer_poll */
  if (pthread_create(&r->thread, NULL, applier_main, r)) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "cannot create the applier thread");
    goto fail;
  }
  r->started = 1;
  return RV_OK;
fail:
  if (r->rk) rd_kafka_destroy(r->rk);
  r->rk = NULL;
  rv_codec_destroy(r->codec);
  r->codec = NULL;
  return err;
}

void rv_replica_destroy(rv_replica_t *r) {
  if (!r) return;
  if (r->started) {
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
  }
  if (r->snap_started) pthread_join(r->snap_thread, NULL);
  if (r->conf.snapshot_path[0] && !r->replaying) {
    char errstr[512];
    int64_t t0 = rv_mono_ms();
    if (rv_replica_snapshot(r, errstr, sizeof errstr))
      rv_error(LOG, "%s/%s: saving the snapshot failed: %s", r->conf.collection.name, r->conf.region, errstr);
    else
      rv_info(LOG, "%s/%s: snapshot saved to %s in %lld ms", r->conf.collection.name, r->conf.region,
              r->conf.snapshot_path, (long long)(rv_mono_ms() - t0));
  }
  if (r->rk) rd_kafka_destroy(r->rk);
  rv_codec_destroy(r->codec);
  state_close(&r->st);
  state_close(&r->fresh);
  for (int i = 0; i < r->n_parts; i++) part_free(r->parts[i]);
  free(r->parts);
  free(r->base);
  free(r->start_off);
  pthread_mutex_destroy(&r->snap_mu);
  pthread_cond_destroy(&r->pos_cv);
  pthread_mutex_destroy(&r->part_mu);
  pthread_rwlock_destroy(&r->meta_lock);
  pthread_rwlock_destroy(&r->lock);
  pthread_mutex_destroy(&r->apply_mu);
  free(r);
}
