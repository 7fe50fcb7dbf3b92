#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include "rv_replica.h"
#include "rv_hash.h"

#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_kafka.h"
#include "rv_log.h"
#include "rv_time.h"

#define LOG "replica"
#define DEFAULT_EF 64             /* the seed's ef_search */
#define METADATA_RETRY_MS 500     /* how often to look for a changelog topic that does not exist yet */
#define POLL_MS 100               /* bounds how long rv_replica_destroy waits for the applier */
#define LAG_REFRESH_MS 50

/* The last version applied for one id; kept after a delete so that a stale
 * upsert re-delivered later cannot resurrect the id. Never removed. */
typedef struct version {
  char *id; /* owned; NULL marks an empty table slot */
  uint64_t hash;
  int32_t partition;
  int64_t offset;
} version_t;

typedef struct versions {
  version_t *slots; /* linear probing, power-of-two size, load <= 1/2 */
  size_t cap;
  size_t n;
} versions_t;

struct rv_replica {
  rv_replica_conf_t conf;
  pthread_rwlock_t lock; /* write: apply; read: search, stats */
  rv_flat_t *flat;       /* under lock */
  versions_t versions;   /* under lock */
  uint64_t applied;      /* under lock */
  uint64_t generation;   /* under lock */
  atomic_uint_fast64_t skipped;
  atomic_int_fast64_t lag; /* written by the applier thread */
  atomic_bool stop;        /* set by rv_replica_destroy */
  int started;             /* caller's thread only */
  pthread_t thread;
  rd_kafka_t *rk;    /* the applier's consumer; created by start, destroyed by destroy */
  rv_codec_t *codec; /* used by the applier thread only */
};


static version_t *versions_find(versions_t *v, const char *id, uint64_t h) {
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
  v->n++;
  return &v->slots[i];
}

/* Makes room for one more entry. On failure the map is unchanged. */
static rv_err_t versions_reserve(versions_t *v) {
  if ((v->n + 1) * 2 <= v->cap) return RV_OK;
  size_t new_cap = v->cap ? v->cap * 2 : 64;
  version_t *slots = calloc(new_cap, sizeof *slots);
  if (!slots) return RV_ERR_NOMEM;
  versions_t grown = {slots, new_cap, 0};
  for (size_t i = 0; i < v->cap; i++) {
    if (!v->slots[i].id) continue;
    version_t *e = versions_put(&grown, v->slots[i].id, v->slots[i].hash);
    e->partition = v->slots[i].partition;
    e->offset = v->slots[i].offset;
  }
  free(v->slots);
  *v = grown;
  return RV_OK;
}

static void versions_close(versions_t *v) {
  for (size_t i = 0; i < v->cap; i++) free(v->slots[i].id);
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
  c->collection.name[sizeof c->collection.name - 1] = '\0';
  c->collection.changelog_topic[sizeof c->collection.changelog_topic - 1] = '\0';
  if (c->collection.name[0]) rv_collection_default_topics(&c->collection);
  if (c->ef_search <= 0) c->ef_search = DEFAULT_EF;
  atomic_init(&r->skipped, 0);
  atomic_init(&r->lag, -1);
  atomic_init(&r->stop, false);

  if (c->collection.dim < 1 || c->collection.dim > 65536) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "collection dim %d is not in 1..65536", c->collection.dim);
    goto fail;
  }
  if (c->brokers[0] && !c->collection.changelog_topic[0]) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "brokers given but no collection name or changelog topic");
    goto fail;
  }
  r->flat = rv_flat_new(c->collection.dim, c->collection.metric);
  if (!r->flat) {
    if (errno == ENOMEM) rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    else rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "unknown metric %d", (int)c->collection.metric);
    goto fail;
  }
  if (init_lock(&r->lock)) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "pthread_rwlock_init failed");
    rv_flat_destroy(r->flat);
    goto fail;
  }
  return r;
fail:
  free(r);
  return NULL;
}

rv_err_t rv_replica_apply(rv_replica_t *r, const rv_change_t *c) {
  if (!r || !c || !c->id || !c->id[0]) return RV_ERR_INVALID;
  if (c->op != RV_OP_UPSERT && c->op != RV_OP_DELETE) return RV_ERR_INVALID;
  if (c->op == RV_OP_UPSERT && !c->vector) return RV_ERR_INVALID;
  if (c->op == RV_OP_UPSERT && c->dim != r->conf.collection.dim) return RV_ERR_DIM;

  uint64_t h = rv__hash_id(c->id);
  char *id_copy = NULL;
  rv_err_t err = RV_OK;
  pthread_rwlock_wrlock(&r->lock);
  version_t *v = versions_find(&r->versions, c->id, h);
  /* Versions from different source partitions are not comparable (the source
   * topic was repartitioned, or the id moved): the one that arrives wins. */
  if (v && v->partition == c->src_partition && c->src_offset <= v->offset) {
    r->applied++;
    goto out;
  }
  if (!v) {
    /* Room and the key copy first, so a failure leaves index and map as they were. */
    err = versions_reserve(&r->versions);
    if (!err && !(id_copy = strdup(c->id))) err = RV_ERR_NOMEM;
    if (err) goto out;
  }
  if (c->op == RV_OP_UPSERT) err = rv_flat_upsert(r->flat, c->id, c->vector, c->dim, c->attributes);
  else err = rv_flat_delete(r->flat, c->id);
  int altered = err == RV_OK;
  if (err == RV_ERR_NOT_FOUND) err = RV_OK; /* deleting an unknown id still records its version */
  if (err) goto out;
  if (!v) {
    v = versions_put(&r->versions, id_copy, h);
    id_copy = NULL;
  }
  v->partition = c->src_partition;
  v->offset = c->src_offset;
  r->applied++;
  if (altered) r->generation++;
out:
  pthread_rwlock_unlock(&r->lock);
  free(id_copy);
  return err;
}

rv_err_t rv_replica_search(rv_replica_t *r, const float *q, int dim, int k, int ef, rv_hit_list_t *out) {
  if (!r) return RV_ERR_INVALID;
  (void)ef; /* the flat index is exact; ef matters once an HNSW engine sits here */
  pthread_rwlock_rdlock(&r->lock);
  rv_err_t err = rv_flat_search(r->flat, q, dim, k, out);
  pthread_rwlock_unlock(&r->lock);
  return err;
}

void rv_replica_stats(rv_replica_t *r, rv_replica_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (!r) return;
  pthread_rwlock_rdlock(&r->lock);
  out->count = rv_flat_count(r->flat);
  out->applied = r->applied;
  out->generation = r->generation;
  pthread_rwlock_unlock(&r->lock);
  out->lag = atomic_load(&r->lag);
  out->skipped = atomic_load(&r->skipped);
}

const rv_collection_conf_t *rv_replica_collection(const rv_replica_t *r) { return &r->conf.collection; }

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
static int64_t compute_lag(rd_kafka_t *rk, const char *topic, int n, const int64_t *next_off) {
  int64_t total = 0;
  for (int p = 0; p < n; p++) {
    int64_t lo = RD_KAFKA_OFFSET_INVALID, hi = RD_KAFKA_OFFSET_INVALID;
    if (rd_kafka_get_watermark_offsets(rk, topic, p, &lo, &hi) || hi < 0) return -1;
    if (next_off[p] < 0) {
      if (hi > 0) return -1; /* nothing read yet and the start offset is unknown */
      continue;
    }
    if (hi > next_off[p]) total += hi - next_off[p];
  }
  return total;
}

static void handle_message(rv_replica_t *r, const rd_kafka_message_t *m, int n, int64_t *next_off) {
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
  next_off[m->partition] = m->offset + 1;
}

static void *applier_main(void *arg) {
  rv_replica_t *r = arg;
  const char *topic = r->conf.collection.changelog_topic;
  int64_t *next_off = NULL;
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
    goto out;
  }
  for (int p = 0; p < n; p++) {
    next_off[p] = -1;
    rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_resp_err_t kerr = rd_kafka_assign(r->rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  if (kerr) {
    rv_error(LOG, "%s: assigning %s: %s", r->conf.region, topic, rd_kafka_err2str(kerr));
    goto out;
  }
  rv_info(LOG, "%s: applying %s (%d partitions) from the beginning", r->conf.region, topic, n);

  rd_kafka_resp_err_t last_err = RD_KAFKA_RESP_ERR_NO_ERROR;
  int64_t lag_at = 0;
  while (!atomic_load(&r->stop)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, POLL_MS);
    int idle = !m;
    if (m && m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (m->partition >= 0 && m->partition < n) next_off[m->partition] = m->offset;
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
  }
out:
  rd_kafka_consumer_close(r->rk);
  free(next_off);
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
  if (r->rk) rd_kafka_destroy(r->rk);
  rv_codec_destroy(r->codec);
  versions_close(&r->versions);
  rv_flat_destroy(r->flat);
  pthread_rwlock_destroy(&r->lock);
  free(r);
}
