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

#include "rv_attrs.h"
#include "rv_buf.h"
#include "rv_bytes.h"
#include "rv_kafka.h"
#include "rv_log.h"
#include "rv_planner.h"
#include "rv_snapshot.h"
#include "rv_time.h"

#define LOG "replica"
#define DEFAULT_EF 64             /* the seed's ef_search */
#define DEFAULT_M 16
#define DEFAULT_EF_CONSTRUCTION 100
#define DEFAULT_SQ8_TRAIN 1000
#define METADATA_RETRY_MS 500     /* how often to look for a changelog topic that does not exist yet */
#define POLL_MS 100               /* bounds how long rv_replica_destroy waits for the applier */
#define LAG_REFRESH_MS 50

#define NO_SLOT UINT32_MAX

/* The last version applied for one id, the graph slot holding its vector and
 * the id's metadata while it is live; kept after a delete so that a stale
 * upsert re-delivered later cannot resurrect the id. Never removed.
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
  uint32_t slot;         /* the live vector's internal id; NO_SLOT when deleted */
  uint32_t slot_version; /* rv_hnsw_version of slot when the vector was inserted */
} version_t;

typedef struct versions {
  version_t *slots; /* linear probing, power-of-two size, load <= 1/2 */
  size_t cap;
  size_t n;
} versions_t;

/* Locks (see rv_replica.h, "Locking"), always taken in this order:
 *   apply_mu   serialises the writers of the replica's own state: applies,
 *              the SQ8 rebuild, snapshots (which must see no apply half done)
 *              and the publication of next_off. Searches never take it.
 *   lock       guards which engine (hnsw, attrs) is current. Searches, stats
 *              and filter_new hold it shared; only the SQ8 swap takes it
 *              exclusively. Applies do not take it at all: the applier is the
 *              only thread that swaps, and the engine allows writers
 *              concurrently with searches.
 *   meta_lock  guards the versions map against the applier's publication of
 *              a change (and the map's growth): written for a few pointer
 *              stores, read while a search copies its hits' ids and metadata.
 *              Never held across a call into rv_hnsw or rv_attrs. */
struct rv_replica {
  rv_replica_conf_t conf;
  pthread_mutex_t apply_mu;
  pthread_rwlock_t lock;
  pthread_rwlock_t meta_lock;
  rv_hnsw_t *hnsw;       /* written under apply_mu + lock exclusive (the SQ8 swap); read under either */
  rv_attrs_t *attrs;     /* as hnsw; slots are hnsw's internal ids */
  versions_t versions;   /* written under apply_mu + meta_lock exclusive; read under either */
  atomic_uint_fast64_t applied;    /* bumped by applies (under apply_mu) */
  atomic_uint_fast64_t generation; /* bumped (release) after a change is published */
  int sq8_pending;       /* under apply_mu: SQ8 wanted, the index is still float */
  int restored;          /* set by new only */
  void (*apply_hook)(void *ctx, const char *stage); /* tests: rv__replica_set_apply_hook */
  void *apply_hook_ctx;
  int64_t *start_off;    /* offsets loaded from the snapshot (-1: beginning); immutable after new */
  int n_start;
  _Atomic int64_t *next_off; /* the applier's next offset per partition (-1: none read); the pointer is
                                published under apply_mu, entries stored by the applier only */
  int n_parts;               /* under apply_mu, with next_off */
  atomic_uint_fast64_t skipped;
  atomic_int_fast64_t lag; /* written by the applier thread */
  atomic_bool stop;        /* set by rv_replica_destroy */
  int started;             /* caller's thread only */
  pthread_t thread;
  rd_kafka_t *rk;    /* the applier's consumer; created by start, destroyed by destroy */
  rv_codec_t *codec; /* used by the applier thread only */
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

/* If v has no room for one more entry, builds in *grown a table twice the
 * size holding v's entries (sharing their strings: v stays valid until it is
 * replaced by *grown, then only its slots array is freed); otherwise sets
 * grown->slots to NULL. v is not changed, so readers may use it meanwhile. */
static rv_err_t versions_grow(const versions_t *v, versions_t *grown) {
  memset(grown, 0, sizeof *grown);
  if ((v->n + 1) * 2 <= v->cap) return RV_OK;
  size_t new_cap = v->cap ? v->cap * 2 : 64;
  version_t *slots = calloc(new_cap, sizeof *slots);
  if (!slots) return RV_ERR_NOMEM;
  *grown = (versions_t){slots, new_cap, 0};
  for (size_t i = 0; i < v->cap; i++) {
    if (!v->slots[i].id) continue;
    version_t *e = versions_put(grown, v->slots[i].id, v->slots[i].hash);
    *e = v->slots[i];
  }
  return RV_OK;
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

static void versions_close(versions_t *v) {
  for (size_t i = 0; i < v->cap; i++) {
    free(v->slots[i].id);
    free(v->slots[i].metadata);
  }
  free(v->slots);
  memset(v, 0, sizeof *v);
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

/* A new empty float index and attribute store into *h and *a. */
static rv_err_t new_engine(const rv_replica_conf_t *c, rv_hnsw_t **h, rv_attrs_t **a, char *errstr,
                           size_t errstr_size) {
  rv_hnsw_conf_t hc;
  make_hnsw_conf(c, RV_HNSW_FLOAT, &hc);
  *h = rv_hnsw_new(&hc, errstr, errstr_size);
  if (!*h) return RV_ERR_CONFIG;
  *a = rv_attrs_new(c->collection.fields, c->collection.n_fields, errstr, errstr_size);
  if (!*a) {
    rv_hnsw_destroy(*h);
    *h = NULL;
    if (!errstr[0]) rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return RV_ERR_CONFIG;
  }
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
  atomic_init(&r->skipped, 0);
  atomic_init(&r->applied, 0);
  atomic_init(&r->generation, 0);
  atomic_init(&r->lag, -1);
  atomic_init(&r->stop, false);

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
  if (c->brokers[0] && !c->collection.changelog_topic[0]) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "brokers given but no collection name or changelog topic");
    goto fail;
  }
  if (new_engine(c, &r->hnsw, &r->attrs, errstr, errstr_size)) goto fail;
  r->sq8_pending = c->storage == RV_HNSW_SQ8;
  if (pthread_mutex_init(&r->apply_mu, NULL)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_mutex_init failed");
    goto fail;
  }
  if (init_lock(&r->lock)) {
    pthread_mutex_destroy(&r->apply_mu);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_rwlock_init failed");
    goto fail;
  }
  if (init_lock(&r->meta_lock)) {
    pthread_rwlock_destroy(&r->lock);
    pthread_mutex_destroy(&r->apply_mu);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_rwlock_init failed");
    goto fail;
  }
  if (c->snapshot_path[0]) {
    char why[512] = "";
    rv_err_t err = load_snapshot(r, why, sizeof why);
    if (err == RV_ERR_NOT_FOUND)
      rv_info(LOG, "%s/%s: no snapshot at %s; building from the changelog", c->collection.name, c->region,
              c->snapshot_path);
    else if (err == RV_ERR_NOMEM) {
      rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "loading snapshot %s: out of memory", c->snapshot_path);
      pthread_rwlock_destroy(&r->meta_lock);
      pthread_rwlock_destroy(&r->lock);
      pthread_mutex_destroy(&r->apply_mu);
      goto fail;
    } else if (err)
      rv_error(LOG, "%s/%s: snapshot %s not used, rebuilding from the changelog: %s", c->collection.name, c->region,
               c->snapshot_path, why);
  }
  return r;
fail:
  rv_hnsw_destroy(r->hnsw);
  rv_attrs_destroy(r->attrs);
  versions_close(&r->versions);
  free(r->start_off);
  free(r);
  return NULL;
}

/* ---- SQ8: train once enough vectors are live, rebuild the graph ------------ */

static void call_hook(rv_replica_t *r, const char *stage) {
  if (r->apply_hook) r->apply_hook(r->apply_hook_ctx, stage);
}

/* Under apply_mu (so nothing writes the float index or the versions map
 * meanwhile). Trains from every live vector and re-inserts them into a new SQ8
 * index (attributes re-derived from the stored metadata) while searches go on
 * against the float one; then, under the exclusive lock, swaps the new engine
 * in and points every id's version entry at its new slot: that section is a
 * pointer store per live id, and it is the only time searches wait for the
 * applier. On failure logs and keeps the float index for good. */
static void quantize(rv_replica_t *r) {
  r->sq8_pending = 0;
  const rv_replica_conf_t *c = &r->conf;
  int dim = c->collection.dim;
  uint32_t bound = rv_hnsw_id_bound(r->hnsw);
  size_t n = rv_hnsw_count(r->hnsw);
  char errstr[256] = "", id[RV_ID_MAX + 1];
  uint32_t *iids = malloc((n ? n : 1) * sizeof *iids);
  uint32_t *nslot = malloc((n ? n : 1) * sizeof *nslot);
  uint32_t *nver = malloc((n ? n : 1) * sizeof *nver);
  version_t **entry = malloc((n ? n : 1) * sizeof *entry);
  float *sample = malloc((n ? n : 1) * (size_t)dim * sizeof *sample);
  rv_hnsw_t *nh = NULL;
  rv_attrs_t *na = NULL;
  int64_t t0 = rv_mono_ms();
  if (!iids || !nslot || !nver || !entry || !sample) {
    snprintf(errstr, sizeof errstr, "out of memory");
    goto fail;
  }
  size_t m = 0;
  for (uint32_t i = 0; i < bound && m < n; i++)
    if (rv_hnsw_is_live(r->hnsw, i) && rv_hnsw_get_vector(r->hnsw, i, sample + m * (size_t)dim) == RV_OK)
      iids[m++] = i;
  rv_hnsw_conf_t hc;
  make_hnsw_conf(c, RV_HNSW_SQ8, &hc);
  if (!(nh = rv_hnsw_new(&hc, errstr, sizeof errstr))) goto fail;
  if (rv_hnsw_train(nh, sample, m, errstr, sizeof errstr)) goto fail;
  if (!(na = rv_attrs_new(c->collection.fields, c->collection.n_fields, errstr, sizeof errstr))) goto fail;
  for (size_t j = 0; j < m; j++) {
    if (rv_hnsw_external_id(r->hnsw, iids[j], id, sizeof id) ||
        rv_hnsw_upsert(nh, id, sample + j * (size_t)dim, dim, &nslot[j])) {
      snprintf(errstr, sizeof errstr, "re-inserting id '%.200s' failed", id);
      goto fail;
    }
    nver[j] = rv_hnsw_version(nh, nslot[j]);
    entry[j] = versions_find(&r->versions, id, rv__hash_id(id));
    parsed_attrs_t pa;
    parse_attrs(&c->collection, entry[j] ? entry[j]->metadata : NULL, &pa);
    set_attrs(r, na, nslot[j], id, &pa);
    parsed_attrs_close(&pa);
  }
  call_hook(r, "rebuilt");
  int64_t t1 = rv_mono_ms();
  rv_hnsw_t *oh = r->hnsw;
  rv_attrs_t *oa = r->attrs;
  pthread_rwlock_wrlock(&r->lock);
  pthread_rwlock_wrlock(&r->meta_lock);
  r->hnsw = nh;
  r->attrs = na;
  for (size_t j = 0; j < m; j++) {
    if (!entry[j]) continue; /* cannot happen: every live id has an entry */
    entry[j]->slot = nslot[j];
    entry[j]->slot_version = nver[j];
  }
  pthread_rwlock_unlock(&r->meta_lock);
  pthread_rwlock_unlock(&r->lock);
  int64_t t2 = rv_mono_ms();
  rv_hnsw_destroy(oh); /* no search holds it: they all ran under the lock we just held */
  rv_attrs_destroy(oa);
  rv_info(LOG, "%s/%s: SQ8 quantizer trained from %zu vectors; graph rebuilt in %lld ms (searches paused %lld ms)",
          c->collection.name, c->region, m, (long long)(t1 - t0), (long long)(t2 - t1));
  free(iids);
  free(nslot);
  free(nver);
  free(entry);
  free(sample);
  return;
fail:
  rv_warn(LOG, "%s/%s: SQ8 training failed, keeping float vectors: %s", c->collection.name, c->region, errstr);
  rv_hnsw_destroy(nh);
  rv_attrs_destroy(na);
  free(iids);
  free(nslot);
  free(nver);
  free(entry);
  free(sample);
}

/* ---- applying changes ------------------------------------------------------ */

rv_err_t rv_replica_apply(rv_replica_t *r, const rv_change_t *c) {
  if (!r || !c || !c->id || !c->id[0]) return RV_ERR_INVALID;
  if (c->op != RV_OP_UPSERT && c->op != RV_OP_DELETE) return RV_ERR_INVALID;
  int upsert = c->op == RV_OP_UPSERT;
  if (upsert && !c->vector) return RV_ERR_INVALID;
  if (upsert && c->dim != r->conf.collection.dim) return RV_ERR_DIM;

  parsed_attrs_t pa;
  parse_attrs(&r->conf.collection, upsert ? c->attributes : NULL, &pa);
  char *meta_copy = NULL, *id_copy = NULL;
  if (upsert && c->attributes && !(meta_copy = strdup(c->attributes))) {
    parsed_attrs_close(&pa);
    return RV_ERR_NOMEM;
  }
  uint64_t h = rv__hash_id(c->id);
  rv_err_t err = RV_OK;
  versions_t grown = {0};
  pthread_mutex_lock(&r->apply_mu);
  /* We are the map's only writer: reading it needs no meta_lock. */
  version_t *v = versions_find(&r->versions, c->id, h);
  /* Versions from different source partitions are not comparable (the source
   * topic was repartitioned, or the id moved): the one that arrives wins. */
  if (v && v->partition == c->src_partition && c->src_offset <= v->offset) {
    atomic_fetch_add(&r->applied, 1);
    goto out;
  }
  if (!v) {
    /* Room and the key copy first, so a failure leaves index and map as they
     * were; a bigger table is built here, outside meta_lock, and swapped in
     * with the publication below. */
    err = versions_grow(&r->versions, &grown);
    if (!err && !(id_copy = strdup(c->id))) err = RV_ERR_NOMEM;
    if (err) goto out;
  }

  /* The engine work, with searches running: a search sees the graph before
   * or after the change (rv_hnsw.h), and the new vector's hits are dropped
   * by collect() until the change is published below. */
  int altered = 0;
  uint32_t old = 0, iid = NO_SLOT, iid_version = 0;
  int had = rv_hnsw_internal_id(r->hnsw, c->id, &old) == RV_OK;
  if (upsert) {
    /* rv_attrs.h's order: upsert, set the new slot, clear the replaced one. */
    err = rv_hnsw_upsert(r->hnsw, c->id, c->vector, c->dim, &iid);
    if (err) goto out;
    iid_version = rv_hnsw_version(r->hnsw, iid); /* stable: only we reuse slots */
    set_attrs(r, r->attrs, iid, c->id, &pa);
    if (had) rv_attrs_clear(r->attrs, old);
    altered = 1;
  } else if (had) {
    err = rv_hnsw_delete(r->hnsw, c->id);
    if (err) goto out;
    rv_attrs_clear(r->attrs, old);
    altered = 1;
  } /* deleting an unknown id still records its version */
  call_hook(r, "applied");

  /* Publication: a few stores under meta_lock. From here on collect() pairs
   * the new slot with this metadata, and no longer returns the old one. */
  version_t *old_slots = NULL;
  char *old_meta;
  pthread_rwlock_wrlock(&r->meta_lock);
  if (grown.slots) {
    old_slots = r->versions.slots;
    r->versions = grown;
    grown.slots = NULL;
  }
  if (!v) {
    v = versions_put(&r->versions, id_copy, h);
    id_copy = NULL;
  }
  v->partition = c->src_partition;
  v->offset = c->src_offset;
  old_meta = v->metadata;
  v->metadata = meta_copy; /* NULL for deletes */
  meta_copy = NULL;
  v->slot = iid;
  v->slot_version = iid_version;
  pthread_rwlock_unlock(&r->meta_lock);
  free(old_meta); /* readers copy metadata under meta_lock: nobody holds it now */
  free(old_slots);
  atomic_fetch_add(&r->applied, 1);
  /* After the publication: a reader that sees the new generation finds the change. */
  if (altered) atomic_fetch_add_explicit(&r->generation, 1, memory_order_release);
  if (upsert && r->sq8_pending && rv_hnsw_count(r->hnsw) >= (size_t)r->conf.sq8_train) quantize(r);
out:
  pthread_mutex_unlock(&r->apply_mu);
  free(grown.slots); /* unused: shares its strings with the map, so only the array */
  parsed_attrs_close(&pa);
  free(id_copy);
  free(meta_copy);
  return err;
}

void rv__replica_set_apply_hook(rv_replica_t *r, void (*fn)(void *ctx, const char *stage), void *ctx) {
  r->apply_hook = fn;
  r->apply_hook_ctx = ctx;
}

/* ---- searching -------------------------------------------------------------- */

static int hit_cmp(const void *pa, const void *pb) {
  const rv_hit_t *a = pa, *b = pb;
  if (a->score != b->score) return a->score < b->score ? -1 : 1;
  return strcmp(a->id, b->id);
}

/* Copies results into out with ids and metadata. Under lock (shared), so
 * r->hnsw is the index res came from. A hit is kept only if its (slot,
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
    if (rv_hnsw_result_external_id(r->hnsw, &res[i], id, RV_ID_MAX + 1)) id[0] = '\0'; /* slot reused since */
  }
  rv_err_t err = RV_OK;
  pthread_rwlock_rdlock(&r->meta_lock);
  for (int i = 0; i < n && !err; i++) {
    const char *id = ids + (size_t)i * (RV_ID_MAX + 1);
    if (!id[0]) continue;
    const version_t *v = versions_find(&r->versions, id, rv__hash_id(id));
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
  /* Under the lock: the SQ8 swap replaces the store (with one of the same fields). */
  pthread_rwlock_rdlock(&r->lock);
  rv_filter_t *f = rv_filter_new(r->attrs);
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
   * only keeps the SQ8 swap from freeing the engine under us. */
  pthread_rwlock_rdlock(&r->lock);
  if (f && rv_filter_n_clauses(f) > 0) {
    err = rv_planner_search(r->hnsw, r->attrs, f, q, dim, k, ef, RV_PLAN_AUTO, res, &n, NULL, errstr, errstr_size);
  } else {
    err = rv_hnsw_search(r->hnsw, q, dim, k, ef, NULL, res, &n);
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

void rv_replica_stats(rv_replica_t *r, rv_replica_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (!r) return;
  out->generation = atomic_load_explicit(&r->generation, memory_order_acquire);
  out->applied = atomic_load(&r->applied);
  pthread_rwlock_rdlock(&r->lock);
  out->count = rv_hnsw_count(r->hnsw);
  out->quantized = rv_hnsw_conf(r->hnsw)->storage == RV_HNSW_SQ8;
  pthread_rwlock_unlock(&r->lock);
  out->restored = r->restored;
  out->lag = atomic_load(&r->lag);
  out->skipped = atomic_load(&r->skipped);
}

const rv_collection_conf_t *rv_replica_collection(const rv_replica_t *r) { return &r->conf.collection; }

/* ---- snapshot positions ------------------------------------------------------
 * The POSN blob of the snapshot file (rv_snapshot.h frames and checksums it),
 * every integer little-endian:
 *   "RVRP" u32 version (1)
 *   u32 topic length, topic bytes          the changelog topic the offsets are for
 *   u64 applied, u64 generation            the stats, so they continue
 *   u32 partitions, then i64 next offset each (-1: nothing read yet)
 *   u64 ids, then per id: u32 id length, id bytes, i32 partition, i64 offset,
 *       u32 metadata length + 1 (0: none), metadata bytes
 * The metadata lives here rather than in the attribute store: the store keeps
 * only the declared fields, while hits return the whole text. */

#define POSN_MAGIC "RVRP"
#define POSN_VERSION 1u

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
 * which its version makes harmless). */
static rv_err_t positions_write_locked(const rv_replica_t *r, rv_buf_t *b) {
  const char *topic = r->conf.collection.changelog_topic;
  rv_err_t err = rv_buf_append(b, POSN_MAGIC, 4);
  if (!err) err = put32(b, POSN_VERSION);
  if (!err) err = put32(b, (uint32_t)strlen(topic));
  if (!err) err = rv_buf_append(b, topic, strlen(topic));
  if (!err) err = put64(b, atomic_load(&r->applied));
  if (!err) err = put64(b, atomic_load(&r->generation));
  int n = r->next_off ? r->n_parts : r->n_start;
  if (!err) err = put32(b, (uint32_t)n);
  for (int p = 0; !err && p < n; p++)
    err = put64(b, (uint64_t)(r->next_off ? atomic_load(&r->next_off[p]) : r->start_off[p]));
  if (!err) err = put64(b, r->versions.n);
  for (size_t i = 0; !err && i < r->versions.cap; i++) {
    const version_t *v = &r->versions.slots[i];
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
  uint32_t u = 0, n = 0;
  uint64_t applied, generation, n_ids;
#define BAD(...) return rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "positions: " __VA_ARGS__)
  if (take(&c, 4, &p) || memcmp(p, POSN_MAGIC, 4)) BAD("bad magic");
  if (get32(&c, &u) || u != POSN_VERSION) BAD("unknown version %u", (unsigned)u);
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
  for (uint64_t i = 0; i < n_ids; i++) {
    uint32_t idl, ml;
    uint64_t off;
    char *id = NULL, *meta = NULL;
    if (get32(&c, &idl) || idl < 1 || idl > RV_ID_MAX) BAD("entry %llu: bad id length", (unsigned long long)i);
    rv_err_t err = get_str(&c, idl, &id);
    if (!err && (get32(&c, &u) || get64(&c, &off) || get32(&c, &ml))) err = RV_ERR_CORRUPT;
    if (!err && ml) err = get_str(&c, ml - 1, &meta);
    uint64_t h = id ? rv__hash_id(id) : 0;
    if (!err && versions_find(&r->versions, id, h)) err = RV_ERR_CORRUPT;
    if (!err) err = versions_reserve(&r->versions);
    if (err) {
      free(id);
      free(meta);
      if (err == RV_ERR_NOMEM) return rv_errf(err, errstr, errstr_size, "out of memory");
      BAD("entry %llu: truncated, malformed or a duplicate id", (unsigned long long)i);
    }
    version_t *v = versions_put(&r->versions, id, h);
    v->partition = (int32_t)u;
    v->offset = (int64_t)off;
    v->metadata = meta;
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
  /* Every live vector must have its version (and metadata) entry, which
   * learns the vector's slot (not saved: the graph knows it). */
  uint32_t bound = rv_hnsw_id_bound(h);
  for (uint32_t i = 0; i < bound; i++) {
    if (!rv_hnsw_is_live(h, i)) continue;
    version_t *v = NULL;
    if (rv_hnsw_external_id(h, i, id, sizeof id) || !(v = versions_find(&r->versions, id, rv__hash_id(id)))) {
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "live slot %u ('%s') has no version entry", (unsigned)i, id);
      goto fail;
    }
    v->slot = i;
    v->slot_version = rv_hnsw_version(h, i);
  }
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
      parse_attrs(&c->collection, versions_find(&r->versions, id, rv__hash_id(id))->metadata, &pa);
      set_attrs(r, a, i, id, &pa);
      parsed_attrs_close(&pa);
    }
    rv_info(LOG, "%s/%s: declared fields changed since the snapshot: filter attributes re-derived",
            c->collection.name, c->region);
  }
  rv_hnsw_destroy(r->hnsw);
  rv_attrs_destroy(r->attrs);
  r->hnsw = h;
  r->attrs = a;
  r->sq8_pending = c->storage == RV_HNSW_SQ8 && hc->storage == RV_HNSW_FLOAT;
  r->restored = 1;
  free(blob);
  rv_info(LOG, "%s/%s: loaded snapshot %s in %lld ms: %zu vectors, %zu ids, offsets of %d partitions",
          c->collection.name, c->region, c->snapshot_path, (long long)(rv_mono_ms() - t0), rv_hnsw_count(h),
          r->versions.n, r->n_start);
  return RV_OK;
fail:
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  free(blob);
  versions_close(&r->versions);
  free(r->start_off);
  r->start_off = NULL;
  r->n_start = 0;
  atomic_store(&r->applied, 0);
  atomic_store(&r->generation, 0);
  return err;
}

rv_err_t rv_replica_snapshot(rv_replica_t *r, char *errstr, size_t errstr_size) {
  if (!r) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "no replica");
  if (!r->conf.snapshot_path[0]) return rv_errf(RV_ERR_STATE, errstr, errstr_size, "no snapshot path configured");
  rv_buf_t b;
  rv_buf_init(&b);
  /* apply_mu quiesces the applier (rv_snapshot_save's rule: no writer in
   * flight, and no change half published); searches go on. */
  pthread_mutex_lock(&r->apply_mu);
  rv_err_t err = positions_write_locked(r, &b);
  if (err) rv_errf(err, errstr, errstr_size, "encoding positions: %s", rv_err_str(err));
  else err = rv_snapshot_save(r->conf.snapshot_path, r->hnsw, r->attrs, b.base, b.len, errstr, errstr_size);
  pthread_mutex_unlock(&r->apply_mu);
  rv_buf_close(&b);
  return err;
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

/* Records that exist (high watermark) but are not yet applied (next_off),
 * summed over partitions; -1 while any partition's numbers are unknown. */
static int64_t compute_lag(rd_kafka_t *rk, const char *topic, int n, _Atomic int64_t *next_off) {
  int64_t total = 0;
  for (int p = 0; p < n; p++) {
    int64_t lo = RD_KAFKA_OFFSET_INVALID, hi = RD_KAFKA_OFFSET_INVALID, next = atomic_load(&next_off[p]);
    if (rd_kafka_get_watermark_offsets(rk, topic, p, &lo, &hi) || hi < 0) return -1;
    if (next < 0) {
      if (hi > 0) return -1; /* nothing read yet and the start offset is unknown */
      continue;
    }
    if (hi > next) total += hi - next;
  }
  return total;
}

static void handle_message(rv_replica_t *r, const rd_kafka_message_t *m, int n, _Atomic int64_t *next_off) {
  char errstr[256];
  const char *topic = rd_kafka_topic_name(m->rkt);
  if (m->partition < 0 || m->partition >= n) return; /* not assigned by us */
  rv_change_t c;
  rv_err_t err = m->payload ? rv_codec_decode_change(r->codec, m->payload, m->len, &c, errstr, sizeof errstr)
                            : rv_errf(RV_ERR_CORRUPT, errstr, sizeof errstr, "null value");
  if (err) {
    rv_warn(LOG, "%s: skipping undecodable record %s[%" PRId32 "]@%" PRId64 ": %s", r->conf.region, topic,
            m->partition, m->offset, errstr);
    atomic_fetch_add(&r->skipped, 1);
  } else {
    err = rv_replica_apply(r, &c);
    if (err) {
      rv_warn(LOG, "%s: skipping change for id '%s' at %s[%" PRId32 "]@%" PRId64 ": %s", r->conf.region, c.id,
              topic, m->partition, m->offset, rv_err_str(err));
      atomic_fetch_add(&r->skipped, 1);
    }
    rv_change_close(&c);
  }
  /* After the apply: a snapshot never records an offset past what it holds. */
  atomic_store(&next_off[m->partition], m->offset + 1);
}

/* Every snapshot_interval_s, if anything was applied since the last save. */
static void maybe_snapshot(rv_replica_t *r, int64_t *saved_at, uint64_t *saved_applied) {
  if (r->conf.snapshot_interval_s <= 0 || !r->conf.snapshot_path[0]) return;
  int64_t now = rv_mono_ms();
  if (now - *saved_at < (int64_t)r->conf.snapshot_interval_s * 1000) return;
  *saved_at = now;
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  if (st.applied == *saved_applied) return;
  char errstr[512];
  if (rv_replica_snapshot(r, errstr, sizeof errstr))
    rv_error(LOG, "%s: periodic snapshot failed: %s", r->conf.region, errstr);
  else
    *saved_applied = st.applied; /* what the save held at least */
}

static void *applier_main(void *arg) {
  rv_replica_t *r = arg;
  const char *topic = r->conf.collection.changelog_topic;
  _Atomic int64_t *next_off = NULL;
  int n = 0;
  while (!atomic_load(&r->stop)) {
    int64_t t0 = rv_mono_ms();
    n = topic_partitions(r->rk, topic);
    if (n > 0) break;
    rv_debug(LOG, "%s: changelog topic %s %s; retrying", r->conf.region, topic,
             n == 0 ? "does not exist yet" : "metadata unavailable");
    while (!atomic_load(&r->stop) && rv_mono_ms() - t0 < METADATA_RETRY_MS) sleep_ms(20);
  }
  if (n <= 0) goto out; /* stopped */

  next_off = malloc((size_t)n * sizeof *next_off);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(n);
  if (!next_off || !parts) {
    rv_error(LOG, "%s: out of memory starting the applier", r->conf.region);
    if (parts) rd_kafka_topic_partition_list_destroy(parts);
    free(next_off);
    goto out;
  }
  int resumed = 0;
  for (int p = 0; p < n; p++) {
    int64_t start = p < r->n_start ? r->start_off[p] : -1;
    resumed += start >= 0;
    atomic_init(&next_off[p], start);
    /* An offset the log no longer holds (compaction, retention) resets to
     * the earliest: changes applied again are ignored by their versions. */
    rd_kafka_topic_partition_list_add(parts, topic, p)->offset = start >= 0 ? start : RD_KAFKA_OFFSET_BEGINNING;
  }
  if (r->n_start > n)
    rv_warn(LOG, "%s: the snapshot has offsets of %d partitions, %s has %d", r->conf.region, r->n_start, topic, n);
  pthread_mutex_lock(&r->apply_mu); /* publish for snapshots; the array lives until destroy */
  r->next_off = next_off;
  r->n_parts = n;
  pthread_mutex_unlock(&r->apply_mu);
  rd_kafka_resp_err_t kerr = rd_kafka_assign(r->rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  if (kerr) {
    rv_error(LOG, "%s: assigning %s: %s", r->conf.region, topic, rd_kafka_err2str(kerr));
    goto out;
  }
  if (resumed)
    rv_info(LOG, "%s: applying %s (%d partitions) from the snapshot's offsets (%d of them saved)", r->conf.region,
            topic, n, resumed);
  else
    rv_info(LOG, "%s: applying %s (%d partitions) from the beginning", r->conf.region, topic, n);

  rd_kafka_resp_err_t last_err = RD_KAFKA_RESP_ERR_NO_ERROR;
  int64_t lag_at = 0, saved_at = rv_mono_ms();
  uint64_t saved_applied = 0;
  while (!atomic_load(&r->stop)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, POLL_MS);
    int idle = !m;
    if (m && m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (m->partition >= 0 && m->partition < n) atomic_store(&next_off[m->partition], m->offset);
      idle = 1;
    } else if (m && m->err) {
      if (m->err != last_err) /* transient broker errors repeat every poll: log each kind once in a row */
        rv_warn(LOG, "%s: consumer: %s", r->conf.region, rd_kafka_message_errstr(m));
      last_err = m->err;
    } else if (m) {
      handle_message(r, m, n, next_off);
      last_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    }
    if (m) rd_kafka_message_destroy(m);
    int64_t now = rv_mono_ms();
    if (idle || now - lag_at >= LAG_REFRESH_MS) {
      atomic_store(&r->lag, compute_lag(r->rk, topic, n, next_off));
      lag_at = now;
    }
    maybe_snapshot(r, &saved_at, &saved_applied);
  }
out:
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
   * keep their own positions. */
  char group[RV_NAME_MAX * 2 + 32];
  snprintf(group, sizeof group, "rv-replica-%s-%s", r->conf.region[0] ? r->conf.region : "default",
           r->conf.collection.name);
  const char *props[][2] = {
      {"bootstrap.servers", r->conf.brokers}, {"group.id", group},
      {"client.id", group},                   {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},  {"enable.partition.eof", "true"},
      {"auto.offset.reset", "earliest"},
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
  if (r->conf.snapshot_path[0]) {
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
  versions_close(&r->versions);
  rv_hnsw_destroy(r->hnsw);
  rv_attrs_destroy(r->attrs);
  free((void *)r->next_off);
  free(r->start_off);
  pthread_rwlock_destroy(&r->meta_lock);
  pthread_rwlock_destroy(&r->lock);
  pthread_mutex_destroy(&r->apply_mu);
  free(r);
}
