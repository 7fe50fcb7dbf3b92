#include "rv_runner.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rv_broker.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_index_cmd.h"
#include "rv_ingest_cmd.h"
#include "rv_fs.h"
#include "rv_log.h"
#include "rv_pgload.h"
#include "rv_produce.h"
#include "rv_replica.h"
#include "rv_replica_metrics.h"
#include "rv_serve.h"
#include "rv_time.h"

#define LOG "pipeline"

/* Everything a running pipeline holds; torn down in reverse order of start. */
typedef struct runner {
  const rv_topology_t *topo;
  rv_broker_t *broker;
  rv_pg_server_t *pg;
  rv_redis_server_t *redis;
  char bootstrap[1024];
  char pg_conninfo[1024];
  char redis_addr[512];
  rv_ingest_t *ingest[RV_MAX_COLLECTIONS];
  rv_replica_t *replicas[RV_MAX_COLLECTIONS][RV_MAX_REGIONS]; /* NULL for a region with shards > 1 */
  rv_replica_metrics_t *replica_metrics[RV_MAX_COLLECTIONS][RV_MAX_REGIONS];
  /* A region with shards > 1: that many in-process replicas (shard s reads the changelog partitions
   * p with p mod n = s), each an in-process shard serve fans a search out to. */
  rv_serve_shard_t *shards[RV_MAX_COLLECTIONS][RV_MAX_REGIONS];             /* owned, n_shards entries */
  rv_replica_metrics_t **shard_metrics[RV_MAX_COLLECTIONS][RV_MAX_REGIONS]; /* owned, n_shards entries */
  const rv_serve_shard_t *shard_ptr[RV_MAX_COLLECTIONS][RV_MAX_REGIONS];    /* = shards, for serve */
  int n_shards[RV_MAX_COLLECTIONS][RV_MAX_REGIONS];                         /* 0: unsharded */
  rv_pgload_t *stores[RV_MAX_COLLECTIONS]; /* each collection's PostgreSQL store, shared by its replicas */
  rv_serve_collection_t serve_cols[RV_MAX_COLLECTIONS];
  rv_serve_t *serve;
  rv_metrics_t *metrics; /* one registry: ingest updates it, serve exposes it at /metrics */
  char ws_url[320];
  char http_url[320];
  /* loader */
  pthread_t loader;
  int loader_started;
  volatile int loader_stop;
  rv_produce_opts_t load_opts;
  int64_t load_limit;       /* records to publish, < 0 = all */
  int64_t load_delivered;   /* written by the loader, read by the main thread (atomic builtins) */
  int64_t load_failed;
  rv_err_t load_err;
  char load_errstr[512];
  int loader_done;          /* atomic builtins */
} runner_t;

int rv_endpoints_write(const char *path, const char *json_text, char *errstr, size_t errstr_size) {
  char dir[PATH_MAX], tmp[PATH_MAX + 16];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = 0;
    if (rv_mkdir_p(dir, 0755)) return rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot create %s: %s", dir, strerror(errno));
  }
  snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) return rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot write %s: %s", tmp, strerror(errno));
  int bad = fputs(json_text, f) < 0 || fputc('\n', f) == EOF;
  bad = fclose(f) != 0 || bad;
  if (bad || rename(tmp, path) != 0) {
    unlink(tmp);
    return rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot write %s: %s", path, strerror(errno));
  }
  return RV_OK;
}

static char *endpoints_json(const runner_t *r) {
  const rv_topology_t *t = r->topo;
  json_t *cols = json_object();
  for (int i = 0; i < t->n_collections; i++) {
    const rv_collection_conf_t *c = &t->collections[i];
    json_object_set_new(cols, c->name,
                        json_pack("{s:s, s:s, s:s, s:i, s:s, s:i, s:i}", "source_topic", c->source_topic,
                                  "changelog_topic", c->changelog_topic, "dlq_topic", c->dlq_topic, "dim", c->dim,
                                  "metric", rv_metric_name(c->metric), "partitions", c->partitions, "schema_id",
                                  c->schema_id));
  }
  json_t *regions = json_array();
  for (int i = 0; i < t->n_regions; i++) json_array_append_new(regions, json_string(t->regions[i]));
  json_t *doc = json_pack("{s:s, s:i, s:{s:s, s:b}, s:o, s:o, s:s, s:s, s:s, s:s?}", "pipeline", t->name, "pid",
                          (int)getpid(), "kafka", "bootstrap", r->bootstrap, "embedded",
                          !strcmp(t->brokers, "embedded"), "collections", cols, "regions", regions, "ws", r->ws_url,
                          "http", r->http_url, "postgres", r->pg_conninfo, "redis",
                          r->redis_addr[0] ? r->redis_addr : NULL);
  char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  json_decref(doc);
  return text;
}

static int64_t ingest_done(rv_ingest_t *in) {
  rv_ingest_stats_t st;
  rv_ingest_stats(in, &st);
  return (int64_t)(st.ingested + st.dead_lettered);
}

/* Publishes the data set in chunks and lets ingest catch up after each one.
 * The embedded broker (librdkafka's mock cluster) keeps only 5 MiB per
 * partition and silently drops older data, with no setting to change it: a
 * producer that runs ahead of ingest by more than that loses records. The
 * chunk keeps about 1 MiB per partition outstanding. */
static void *loader_main(void *arg) {
  runner_t *r = arg;
  const rv_collection_conf_t *c = &r->topo->collections[0];
  int64_t chunk = 1000000;
  if (r->broker) {
    chunk = (int64_t)c->partitions * (1 << 20) / ((int64_t)c->dim * 4 + 64);
    if (chunk < 64) chunk = 64;
  }
  int64_t base = ingest_done(r->ingest[0]), sent = 0;
  rv_err_t err = RV_OK;
  while (!r->loader_stop) {
    int64_t want = chunk;
    if (r->load_limit >= 0 && r->load_limit - sent < want) want = r->load_limit - sent;
    if (want <= 0) break;
    rv_produce_opts_t o = r->load_opts;
    o.source.skip = sent;
    o.count = want;
    rv_produce_result_t res;
    err = rv_produce_run(&o, &r->loader_stop, &res, r->load_errstr, sizeof r->load_errstr);
    sent += res.read;
    __atomic_add_fetch(&r->load_delivered, res.delivered, __ATOMIC_RELAXED);
    __atomic_add_fetch(&r->load_failed, res.failed, __ATOMIC_RELAXED);
    if (err || res.read < want) break; /* failed, or the end of the input */
    while (!r->loader_stop && ingest_done(r->ingest[0]) - base < sent) {
      struct timespec ts = {0, 20 * 1000000};
      nanosleep(&ts, NULL);
    }
  }
  r->load_err = err;
  __atomic_store_n(&r->loader_done, 1, __ATOMIC_RELEASE);
  return NULL;
}

static int start_stages(runner_t *r, const rv_run_opts_t *opts) {
  const rv_topology_t *t = r->topo;
  char err[1024];

  if (rv_mkdir_p(t->data_dir, 0755)) {
    rv_error(LOG, "cannot create data_dir %s: %s", t->data_dir, strerror(errno));
    return -1;
  }
  /* Kafka */
  if (!strcmp(t->brokers, "embedded")) {
    r->broker = rv_broker_new(3, err, sizeof err);
    if (!r->broker) {
      rv_error(LOG, "embedded Kafka: %s", err);
      return -1;
    }
    for (int i = 0; i < t->n_collections; i++) {
      const rv_collection_conf_t *c = &t->collections[i];
      const char *topics[3] = {c->source_topic, c->changelog_topic, c->dlq_topic};
      for (int k = 0; k < 3; k++) {
        if (rv_broker_create_topic(r->broker, topics[k], c->partitions, err, sizeof err)) {
          rv_error(LOG, "embedded Kafka: topic %s: %s", topics[k], err);
          return -1;
        }
      }
    }
    snprintf(r->bootstrap, sizeof r->bootstrap, "%s", rv_broker_bootstraps(r->broker));
    rv_info(LOG, "embedded Kafka (3 brokers): %s", r->bootstrap);
  } else {
    snprintf(r->bootstrap, sizeof r->bootstrap, "%s", t->brokers);
  }
  /* PostgreSQL */
  if (!strcmp(t->postgres, "embedded")) {
    r->pg = rv_pg_server_start(t->data_dir, err, sizeof err);
    if (!r->pg) {
      rv_error(LOG, "embedded PostgreSQL: %s", err);
      return -1;
    }
    snprintf(r->pg_conninfo, sizeof r->pg_conninfo, "%s", rv_pg_server_conninfo(r->pg));
  } else {
    snprintf(r->pg_conninfo, sizeof r->pg_conninfo, "%s", t->postgres);
  }
  /* Redis */
  if (!strcmp(t->redis, "embedded")) {
    r->redis = rv_redis_server_start(t->data_dir, err, sizeof err);
    if (!r->redis) {
      rv_error(LOG, "embedded Redis: %s", err);
      return -1;
    }
    snprintf(r->redis_addr, sizeof r->redis_addr, "%s", rv_redis_server_address(r->redis));
  } else if (strcmp(t->redis, "none") != 0) {
    snprintf(r->redis_addr, sizeof r->redis_addr, "%s", t->redis);
  }
  /* Schemas, and with the embedded broker the stored offsets forgotten,
   * before any replica loads from PostgreSQL: its load must not see offsets
   * of a log that is gone. */
  rv_ingest_conf_t ics[RV_MAX_COLLECTIONS];
  for (int i = 0; i < t->n_collections; i++) {
    rv_ingest_conf_t *ic = &ics[i];
    rv_ingest_conf_from_topology(t, i, r->bootstrap, r->pg_conninfo, ic);
    ic->metrics = r->metrics;
    if (rv_ingest_migrate(ic, err, sizeof err)) {
      rv_error(LOG, "ingest %s: migrate: %s", ic->collection.name, err);
      return -1;
    }
    /* The embedded broker's log starts empty on every run; offsets stored by
     * an earlier run would point past its end. */
    if (r->broker && rv_ingest_forget_offsets(ic, err, sizeof err)) {
      rv_error(LOG, "ingest %s: %s", ic->collection.name, err);
      return -1;
    }
  }
  /* Replicas next, so that serve can answer as soon as it listens. Each
   * bootstraps from its snapshot, else PostgreSQL, else the changelog.
   * Snapshot offsets are positions in one broker's log: the embedded broker
   * starts empty on every run, so its replicas neither load nor save
   * snapshots, and load from PostgreSQL with the stored versions marked as
   * older than the new log's (rv_pgload.h, fresh_log): the re-ingested
   * records of this run then replace them. */
  for (int g = 0; g < t->n_regions; g++) {
    const rv_region_conf_t *rg = &t->region_conf[g];
    if (rg->snapshot_dir[0] && r->broker)
      rv_warn(LOG, "region %s: snapshot_dir ignored: the embedded Kafka log starts over on every run", rg->name);
    if (rg->snapshot_dir[0] && !r->broker && rv_mkdir_p(rg->snapshot_dir, 0755)) {
      rv_error(LOG, "cannot create snapshot_dir %s: %s", rg->snapshot_dir, strerror(errno));
      return -1;
    }
  }
  for (int i = 0; i < t->n_collections; i++) {
    const rv_collection_conf_t *col = &t->collections[i];
    rv_pgload_conf_t pc;
    memset(&pc, 0, sizeof pc);
    snprintf(pc.conninfo, sizeof pc.conninfo, "%s", r->pg_conninfo);
    snprintf(pc.collection, sizeof pc.collection, "%s", col->name);
    snprintf(pc.source_topic, sizeof pc.source_topic, "%s", col->source_topic);
    pc.fresh_log = r->broker != NULL;
    if (!(r->stores[i] = rv_pgload_new(&pc, err, sizeof err))) {
      rv_error(LOG, "replica %s: %s", col->name, err);
      return -1;
    }
    for (int g = 0; g < t->n_regions; g++) {
      const rv_region_conf_t *rg = &t->region_conf[g];
      int n = rg->shards > 1 ? rg->shards : 1;
      if (n > 1) {
        r->shards[i][g] = calloc((size_t)n, sizeof *r->shards[i][g]);
        r->shard_metrics[i][g] = calloc((size_t)n, sizeof *r->shard_metrics[i][g]);
        if (!r->shards[i][g] || !r->shard_metrics[i][g]) {
          rv_error(LOG, "replica %s/%s: out of memory", col->name, rg->name);
          return -1;
        }
        r->shard_ptr[i][g] = r->shards[i][g];
        r->n_shards[i][g] = n;
      }
      for (int s = 0; s < n; s++) {
        rv_replica_conf_t rc;
        rv_replica_conf_from_topology(t, i, g, r->bootstrap, n > 1 ? s : 0, n, &rc);
        rc.store = rv_pgload_store(r->stores[i]); /* one store serves every shard */
        if (rg->snapshot_dir[0] && !r->broker &&
            rv_replica_snapshot_path(rc.snapshot_path, sizeof rc.snapshot_path, rg->snapshot_dir, col->name,
                                     rg->name, s, n)) {
          rv_error(LOG, "snapshot_dir %s: path too long", rg->snapshot_dir);
          return -1;
        }
        rv_replica_t *rep = rv_replica_new(&rc, err, sizeof err);
        rv_replica_metrics_t *rm = rep ? rv_replica_metrics_new(r->metrics, rep, rg->name, col->name, s, n) : NULL;
        if (n > 1) { /* owned by the arrays from here on, whatever happens next */
          r->shards[i][g][s].replica = rep;
          r->shard_metrics[i][g][s] = rm;
        } else {
          r->replicas[i][g] = rep;
          r->replica_metrics[i][g] = rm;
        }
        if (!rep || rv_replica_start(rep, err, sizeof err)) {
          rv_error(LOG, "replica %s/%s shard %d/%d: %s", col->name, t->regions[g], s, n, err);
          return -1;
        }
      }
      if (n > 1)
        rv_info(LOG, "region %s: collection %s in %d in-process shards (fan-out)", rg->name, col->name, n);
    }
  }
  /* Ingest */
  for (int i = 0; i < t->n_collections; i++) {
    rv_ingest_conf_t *ic = &ics[i];
    r->ingest[i] = rv_ingest_new(ic, err, sizeof err);
    if (!r->ingest[i] || rv_ingest_start(r->ingest[i], err, sizeof err)) {
      rv_error(LOG, "ingest %s: %s", ic->collection.name, err);
      return -1;
    }
  }
  /* Serve */
  rv_serve_conf_t sc;
  rv_serve_conf_init(&sc);
  snprintf(sc.host, sizeof sc.host, "%s", t->serve_host);
  sc.port = t->serve_port;
  for (int i = 0; i < t->n_collections; i++) {
    rv_serve_collection_t *col = &r->serve_cols[i];
    snprintf(col->name, sizeof col->name, "%s", t->collections[i].name);
    col->replicas = r->replicas[i];
    col->regions = (char(*)[RV_NAME_MAX])t->regions;
    col->n_replicas = t->n_regions;
    for (int g = 0; g < t->n_regions; g++)
      if (r->n_shards[i][g]) { /* NULL entries of shards: the region's replica serves it */
        col->shards = r->shard_ptr[i];
        col->n_shards = r->n_shards[i];
      }
  }
  sc.collections = r->serve_cols;
  sc.n_collections = t->n_collections;
  snprintf(sc.redis, sizeof sc.redis, "%s", r->redis_addr);
  sc.l1_entries = t->cache_l1_entries;
  sc.l2_ttl_s = t->cache_l2_ttl_s;
  sc.workers = t->serve_workers;
  sc.after_timeout_ms = t->after_timeout_ms; /* <= 0 (not parsed yet): serve's default */
  sc.metrics = r->metrics;
  snprintf(sc.cache_namespace, sizeof sc.cache_namespace, "%s", t->name);
  r->serve = rv_serve_new(&sc, err, sizeof err);
  if (!r->serve || rv_serve_start(r->serve, err, sizeof err)) {
    rv_error(LOG, "serve %s:%d: %s", t->serve_host, t->serve_port, err);
    return -1;
  }
  int port = rv_serve_port(r->serve);
  const char *host = t->serve_host;
  int v6 = strchr(host, ':') != NULL;
  snprintf(r->ws_url, sizeof r->ws_url, "ws://%s%s%s:%d/", v6 ? "[" : "", host, v6 ? "]" : "", port);
  snprintf(r->http_url, sizeof r->http_url, "http://%s%s%s:%d/", v6 ? "[" : "", host, v6 ? "]" : "", port);

  char *doc = endpoints_json(r);
  if (!doc || rv_endpoints_write(t->endpoints_file, doc, err, sizeof err)) {
    rv_error(LOG, "endpoints: %s", doc ? err : "out of memory");
    free(doc);
    return -1;
  }
  free(doc);
  printf("RuVector Stream pipeline '%s' is running\n", t->name);
  printf("  kafka bootstrap: %s\n", r->bootstrap);
  for (int i = 0; i < t->n_collections; i++)
    printf("  collection %s: publish to topic %s (dim %d, %s)\n", t->collections[i].name,
           t->collections[i].source_topic, t->collections[i].dim, rv_metric_name(t->collections[i].metric));
  printf("  postgres: %s\n", r->pg_conninfo);
  printf("  redis: %s\n", r->redis_addr[0] ? r->redis_addr : "none (L1 cache only)");
  printf("  serving search at %s (subprotocol rv.v1), HTTP at %s\n", r->ws_url, r->http_url);
  printf("  endpoints written to %s\n", t->endpoints_file);
  fflush(stdout);

  if (opts->load_path) {
    rv_produce_opts_init(&r->load_opts);
    r->load_opts.brokers = r->bootstrap;
    r->load_opts.topic = t->collections[0].source_topic;
    r->load_opts.input = opts->load_path;
    r->load_limit = opts->load_count > 0 ? opts->load_count : -1;
    if (pthread_create(&r->loader, NULL, loader_main, r)) {
      rv_error(LOG, "cannot start the loader thread");
      return -1;
    }
    r->loader_started = 1;
    printf("loading %s into collection %s ...\n", opts->load_path, t->collections[0].name);
    fflush(stdout);
  }
  return 0;
}

static void stop_stages(runner_t *r) {
  const rv_topology_t *t = r->topo;
  if (r->loader_started) {
    r->loader_stop = 2; /* stop reading and do not wait on the flush: the broker may be going too */
    pthread_join(r->loader, NULL);
  }
  rv_serve_destroy(r->serve);
  for (int i = 0; i < t->n_collections; i++) rv_ingest_destroy(r->ingest[i]);
  for (int i = 0; i < t->n_collections; i++) {
    for (int g = 0; g < t->n_regions; g++) {
      rv_replica_destroy(r->replicas[i][g]);
      rv_replica_metrics_destroy(r->replica_metrics[i][g]);
      for (int s = 0; s < r->n_shards[i][g]; s++) {
        if (r->shards[i][g]) rv_replica_destroy(r->shards[i][g][s].replica);
        if (r->shard_metrics[i][g]) rv_replica_metrics_destroy(r->shard_metrics[i][g][s]);
      }
      free(r->shards[i][g]);
      free(r->shard_metrics[i][g]);
    }
    rv_pgload_destroy(r->stores[i]); /* after its replicas */
  }
  rv_redis_server_stop(r->redis);
  rv_pg_server_stop(r->pg);
  if (r->broker) rv_broker_destroy(r->broker);
  if (r->serve) unlink(t->endpoints_file); /* a stopped pipeline has no endpoints */
  rv_metrics_destroy(r->metrics); /* after every stage that used it */
}

/* A region's live vectors and lag: summed over its shards (lag: the largest,
 * -1 when one is unknown). */
static void region_stats(const runner_t *r, int i, int g, uint64_t *count, int64_t *lag) {
  rv_replica_stats_t rs;
  *count = 0;
  *lag = 0;
  int n = r->n_shards[i][g] ? r->n_shards[i][g] : 1;
  for (int s = 0; s < n; s++) {
    rv_replica_t *rep = r->n_shards[i][g] ? r->shards[i][g][s].replica : r->replicas[i][g];
    rv_replica_stats(rep, &rs);
    *count += rs.count;
    if (*lag >= 0) *lag = rs.lag < 0 ? -1 : rs.lag > *lag ? rs.lag : *lag;
  }
}

/* Refreshes every replica's (and shard's) metrics. */
static void update_metrics(runner_t *r) {
  for (int i = 0; i < r->topo->n_collections; i++)
    for (int g = 0; g < r->topo->n_regions; g++) {
      rv_replica_metrics_update(r->replica_metrics[i][g]);
      for (int s = 0; s < r->n_shards[i][g]; s++) rv_replica_metrics_update(r->shard_metrics[i][g][s]);
    }
}

static void print_progress(runner_t *r, int64_t started_ms) {
  const rv_topology_t *t = r->topo;
  double secs = (double)(rv_mono_ms() - started_ms) / 1000.0;
  for (int i = 0; i < t->n_collections; i++) {
    rv_ingest_stats_t is;
    rv_ingest_stats(r->ingest[i], &is);
    uint64_t count;
    int64_t lag;
    region_stats(r, i, 0, &count, &lag);
    char shards[32] = "";
    if (r->n_shards[i][0]) snprintf(shards, sizeof shards, ", %d shards", r->n_shards[i][0]);
    char load[160] = "";
    if (i == 0 && r->loader_started)
      snprintf(load, sizeof load, "published %lld%s, ",
               (long long)__atomic_load_n(&r->load_delivered, __ATOMIC_RELAXED),
               __atomic_load_n(&r->loader_done, __ATOMIC_ACQUIRE) ? " (done)" : "");
    char lost[64] = "";
    if (is.lost) snprintf(lost, sizeof lost, ", LOST UPSTREAM %llu", (unsigned long long)is.lost);
    printf("[%6.1fs] %s: %singested %llu, dead-lettered %llu%s, searchable %llu (region %s%s, lag %lld)\n", secs,
           t->collections[i].name, load, (unsigned long long)is.ingested, (unsigned long long)is.dead_lettered, lost,
           (unsigned long long)count, t->regions[0], shards, (long long)lag);
  }
  fflush(stdout);
}

int rv_pipeline_run(const rv_topology_t *topo, const rv_run_opts_t *opts) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by every thread started below */
  signal(SIGPIPE, SIG_IGN);

  runner_t *r = calloc(1, sizeof *r);
  if (!r) return 1;
  r->topo = topo;
  int rc = 0;
  if (!(r->metrics = rv_metrics_new()) || start_stages(r, opts) != 0) {
    rc = 1;
  } else {
    int period = opts->progress_ms > 0 ? opts->progress_ms : 2000;
    int64_t started = rv_mono_ms(), last = started;
    int load_reported = 0;
    for (;;) {
      struct timespec ts = {0, 200 * 1000000};
      int sig = sigtimedwait(&set, NULL, &ts);
      if (sig == SIGINT || sig == SIGTERM) {
        rv_info(LOG, "%s received: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
      }
      if (r->loader_started && __atomic_load_n(&r->loader_done, __ATOMIC_ACQUIRE) && !load_reported) {
        load_reported = 1;
        if (r->load_err)
          rv_error(LOG, "loading %s failed: %s", opts->load_path, r->load_errstr);
        else
          printf("published %lld records from %s (%lld failed)\n", (long long)r->load_delivered,
                 opts->load_path, (long long)r->load_failed);
      }
      update_metrics(r);
      if (rv_mono_ms() - last >= period) {
        last = rv_mono_ms();
        print_progress(r, started);
      }
    }
  }
  stop_stages(r);
  free(r);
  return rc;
}
