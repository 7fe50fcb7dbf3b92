#include "rv_index_cmd.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "rv_embedded.h"
#include "rv_fs.h"
#include "rv_log.h"
#include "rv_metrics_http.h"
#include "rv_pgload.h"
#include "rv_replica_metrics.h"
#include "rv_serve.h"
#include "rv_time.h"

#define LOG "index"
#define EX_CONFIG 78

void rv_replica_conf_from_topology(const rv_topology_t *t, int i, int g, const char *brokers, int shard_index,
                                   int shard_count, rv_replica_conf_t *rc) {
  memset(rc, 0, sizeof *rc);
  snprintf(rc->brokers, sizeof rc->brokers, "%s", brokers);
  snprintf(rc->region, sizeof rc->region, "%s", t->regions[g]);
  rc->collection = t->collections[i];
  rc->ef_search = t->region_conf[g].ef_search > 0 ? t->region_conf[g].ef_search : t->hnsw_ef_search;
  rc->hnsw_m = t->hnsw_m;
  rc->ef_construction = t->hnsw_ef_construction;
  rc->storage = t->hnsw_storage == 1 ? RV_HNSW_SQ8 : RV_HNSW_FLOAT;
  rc->sq8_train = t->hnsw_sq8_train;
  rc->snapshot_interval_s = t->snapshot_interval_s;
  rc->shard_index = shard_index;
  rc->shard_count = shard_count;
  rc->max_lag_ms = t->max_lag_ms;
  rc->tombstone_ms = t->tombstone_ms;
}

int rv_replica_snapshot_path(char *out, size_t cap, const char *dir, const char *collection, const char *region,
                             int shard_index, int shard_count) {
  int n = shard_count > 1 ? snprintf(out, cap, "%s/%s.%s.s%dof%d.rvsnap", dir, collection, region, shard_index,
                                     shard_count)
                          : snprintf(out, cap, "%s/%s.%s.rvsnap", dir, collection, region);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static void usage(FILE *f) {
  fputs("usage: ruvector index --topology FILE --region R [--collection C] [--shard I/N] [--store postgres|none]\n"
        "                      [--listen HOST:PORT] [--progress-ms N]\n"
        "Runs one region's index replica of each collection of a topology (or only C):\n"
        "bootstraps from its snapshot in the region's snapshot_dir, else from PostgreSQL\n"
        "(rows not deleted, with their stored codes), else by replaying the changelog;\n"
        "then applies the changelog and serves rv.v1 search (as `pipeline run` does) and\n"
        "GET /health, /ready, /startup, /metrics on the region's listen address (shard I\n"
        "listens on its port + I). kafka.brokers must be a bootstrap list (e.g. of a\n"
        "`ruvector broker` process): the embedded broker lives in another process.\n"
        "\n"
        "  -t, --topology FILE     the topology (required)\n"
        "  -r, --region R          the region (required)\n"
        "  -c, --collection C      only this collection (default: all of them)\n"
        "  -s, --shard I/N         read changelog partitions p with p mod N = I; N must be the\n"
        "                          region's shards (default 0/1)\n"
        "  -S, --store KIND        postgres (default): bootstrap from the topology's PostgreSQL\n"
        "                          when there is no snapshot; none: replay the changelog instead\n"
        "  -l, --listen HOST:PORT  override the region's listen address (port 0: a free one)\n"
        "  -p, --progress-ms N     progress line period on stdout (default 2000)\n"
        "  -h, --help              this text\n"
        "\n"
        "Prints \"listening: ws://HOST:PORT/\" and \"metrics: http://HOST:PORT/metrics\" once it\n"
        "listens. SIGTERM/SIGINT: stops serving, saves each replica's snapshot and exits 0.\n"
        "Exit status: 0 after a signal, 1 if a stage could not start, 2 bad usage,\n"
        "78 invalid topology.\n",
        f);
}

typedef struct cmd {
  rv_topology_t topo;
  int g;                  /* region index */
  int shard, shards;
  int use_store;
  char listen_host[256];
  int listen_port;
  rv_pg_server_t *pg;
  char pg_conninfo[1024];
  int idx[RV_MAX_COLLECTIONS];
  int n;
  rv_pgload_t *store[RV_MAX_COLLECTIONS];
  rv_replica_t *replica[RV_MAX_COLLECTIONS];
  rv_replica_metrics_t *rm[RV_MAX_COLLECTIONS];
  rv_serve_collection_t cols[RV_MAX_COLLECTIONS];
  char region_name[1][RV_NAME_MAX];
  rv_metrics_t *metrics;
  rv_serve_t *serve;
} cmd_t;

static int start(cmd_t *c, const char *only) {
  const rv_topology_t *t = &c->topo;
  const rv_region_conf_t *rg = &t->region_conf[c->g];
  char err[1024];
  for (int i = 0; i < t->n_collections; i++)
    if (!only || !strcmp(t->collections[i].name, only)) c->idx[c->n++] = i;
  if (!c->n) {
    rv_error(LOG, "the topology has no collection '%s'", only);
    return -1;
  }
  if (c->use_store) {
    if (!strcmp(t->postgres, "embedded")) {
      if (!(c->pg = rv_pg_server_start(t->data_dir, err, sizeof err))) {
        rv_error(LOG, "embedded PostgreSQL: %s", err);
        return -1;
      }
      snprintf(c->pg_conninfo, sizeof c->pg_conninfo, "%s", rv_pg_server_conninfo(c->pg));
    } else {
      snprintf(c->pg_conninfo, sizeof c->pg_conninfo, "%s", t->postgres);
    }
  }
  if (rg->snapshot_dir[0] && rv_mkdir_p(rg->snapshot_dir, 0755)) {
    rv_error(LOG, "cannot create snapshot_dir %s: %s", rg->snapshot_dir, strerror(errno));
    return -1;
  }
  if (!rg->snapshot_dir[0])
    rv_warn(LOG, "region %s has no snapshot_dir: every start bootstraps from %s", rg->name,
            c->use_store ? "PostgreSQL" : "the changelog");
  snprintf(c->region_name[0], sizeof c->region_name[0], "%s", rg->name);
  for (int k = 0; k < c->n; k++) {
    int i = c->idx[k];
    const rv_collection_conf_t *col = &t->collections[i];
    rv_replica_conf_t rc;
    rv_replica_conf_from_topology(t, i, c->g, t->brokers, c->shard, c->shards, &rc);
    if (rg->snapshot_dir[0] && rv_replica_snapshot_path(rc.snapshot_path, sizeof rc.snapshot_path, rg->snapshot_dir,
                                                        col->name, rg->name, c->shard, c->shards)) {
      rv_error(LOG, "snapshot_dir %s: path too long", rg->snapshot_dir);
      return -1;
    }
    if (c->use_store) {
      rv_pgload_conf_t pc;
      memset(&pc, 0, sizeof pc);
      snprintf(pc.conninfo, sizeof pc.conninfo, "%s", c->pg_conninfo);
      snprintf(pc.collection, sizeof pc.collection, "%s", col->name);
      snprintf(pc.source_topic, sizeof pc.source_topic, "%s", col->source_topic);
      if (!(c->store[k] = rv_pgload_new(&pc, err, sizeof err))) {
        rv_error(LOG, "%s: %s", col->name, err);
        return -1;
      }
      rc.store = rv_pgload_store(c->store[k]);
    }
    if (!(c->replica[k] = rv_replica_new(&rc, err, sizeof err)) || rv_replica_start(c->replica[k], err, sizeof err)) {
      rv_error(LOG, "replica %s/%s shard %d/%d: %s", col->name, rg->name, c->shard, c->shards, err);
      return -1;
    }
    c->rm[k] = rv_replica_metrics_new(c->metrics, c->replica[k], rg->name, col->name, c->shard, c->shards);
    rv_serve_collection_t *sc = &c->cols[k];
    snprintf(sc->name, sizeof sc->name, "%s", col->name);
    sc->replicas = &c->replica[k];
    sc->regions = c->region_name;
    sc->n_replicas = 1;
  }
  /* The same search path as `pipeline run`. L1 only: an L2 shared by shards would mix their answers. */
  rv_serve_conf_t sc;
  rv_serve_conf_init(&sc);
  snprintf(sc.host, sizeof sc.host, "%s", c->listen_host);
  sc.port = c->listen_port;
  sc.collections = c->cols;
  sc.n_collections = c->n;
  sc.l1_entries = t->cache_l1_entries;
  sc.workers = t->serve_workers;
  sc.metrics = c->metrics;
  snprintf(sc.cache_namespace, sizeof sc.cache_namespace, "%s", t->name);
  if (!(c->serve = rv_serve_new(&sc, err, sizeof err)) || rv_serve_start(c->serve, err, sizeof err)) {
    rv_error(LOG, "serve %s:%d: %s", c->listen_host, c->listen_port, err);
    return -1;
  }
  int port = rv_serve_port(c->serve);
  int v6 = strchr(c->listen_host, ':') != NULL;
  printf("index %s region %s shard %d/%d: %d collection%s, bootstrap from %s\n", t->name, rg->name, c->shard,
         c->shards, c->n, c->n == 1 ? "" : "s",
         rg->snapshot_dir[0] ? (c->use_store ? "snapshot, else PostgreSQL" : "snapshot, else changelog")
                             : (c->use_store ? "PostgreSQL" : "changelog"));
  printf("listening: ws://%s%s%s:%d/\n", v6 ? "[" : "", c->listen_host, v6 ? "]" : "", port);
  printf("metrics: http://%s%s%s:%d/metrics\n", v6 ? "[" : "", c->listen_host, v6 ? "]" : "", port);
  fflush(stdout);
  return 0;
}

static void progress(cmd_t *c, const char *what) {
  for (int k = 0; k < c->n; k++) {
    if (!c->replica[k]) continue;
    rv_replica_stats_t s;
    rv_replica_stats(c->replica[k], &s);
    printf("%s %s: vectors %llu applied %llu lag %lld lag_ms %lld boot %s boot_ms %lld ready %d\n", what,
           c->topo.collections[c->idx[k]].name, (unsigned long long)s.count, (unsigned long long)s.applied,
           (long long)s.lag, (long long)s.lag_ms, rv_replica_boot_name(s.boot), (long long)s.boot_ms,
           rv_replica_ready(c->replica[k]));
  }
  fflush(stdout);
}

static int parse_shard(const char *s, int *i, int *n) {
  char *end;
  long a = strtol(s, &end, 10);
  if (end == s || *end != '/') return -1;
  const char *p = end + 1;
  long b = strtol(p, &end, 10);
  if (end == p || *end || b < 1 || b > 64 || a < 0 || a >= b) return -1;
  *i = (int)a;
  *n = (int)b;
  return 0;
}

int rv_index_cmd_main(int argc, char **argv) {
  static const struct option longopts[] = {{"topology", required_argument, NULL, 't'},
                                           {"region", required_argument, NULL, 'r'},
                                           {"collection", required_argument, NULL, 'c'},
                                           {"shard", required_argument, NULL, 's'},
                                           {"store", required_argument, NULL, 'S'},
                                           {"listen", required_argument, NULL, 'l'},
                                           {"progress-ms", required_argument, NULL, 'p'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  const char *topo_path = NULL, *region = NULL, *only = NULL;
  int shard = 0, shards = 0, use_store = 1;
  long period = 2000;
  char listen_host[256] = "";
  int listen_port = -1;
  int ch;
  optind = 0;
  while ((ch = getopt_long(argc, argv, "t:r:c:s:S:l:p:h", longopts, NULL)) != -1) {
    char *end = NULL;
    switch (ch) {
    case 't': topo_path = optarg; break;
    case 'r': region = optarg; break;
    case 'c': only = optarg; break;
    case 's':
      if (parse_shard(optarg, &shard, &shards)) {
        fprintf(stderr, "index: --shard wants I/N with 0 <= I < N <= 64, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'S':
      if (!strcmp(optarg, "postgres")) use_store = 1;
      else if (!strcmp(optarg, "none")) use_store = 0;
      else {
        fprintf(stderr, "index: --store wants postgres or none, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'l': {
      char why[300];
      if (rv_metrics_http_parse_listen(optarg, listen_host, sizeof listen_host, &listen_port, why, sizeof why)) {
        fprintf(stderr, "index: --listen: %s\n", why);
        return 2;
      }
      break;
    }
    case 'p':
      period = strtol(optarg, &end, 10);
      if (*end || period < 10) {
        fprintf(stderr, "index: --progress-ms wants at least 10, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (!topo_path || !region || optind < argc) {
    usage(stderr);
    return 2;
  }
  cmd_t *c = calloc(1, sizeof *c);
  if (!c) return 1;
  int load_rc = rv_topology_load_report(topo_path, &c->topo);
  if (load_rc) {
    free(c);
    return load_rc;
  }
  const rv_topology_t *t = &c->topo;
  c->g = -1;
  for (int g = 0; g < t->n_regions; g++)
    if (!strcmp(t->regions[g], region)) c->g = g;
  int rc = 0;
  if (c->g < 0) {
    fprintf(stderr, "index: the topology has no region '%s'\n", region);
    rc = 2;
  } else if (shards == 0 && t->region_conf[c->g].shards > 1) {
    fprintf(stderr, "index: region '%s' has %d shards: give --shard I/%d\n", region, t->region_conf[c->g].shards,
            t->region_conf[c->g].shards);
    rc = 2;
  } else if (shards > 0 && shards != t->region_conf[c->g].shards) {
    fprintf(stderr, "index: --shard %d/%d, but region '%s' has %d shard%s (regions[].shards)\n", shard, shards,
            region, t->region_conf[c->g].shards, t->region_conf[c->g].shards == 1 ? "" : "s");
    rc = 2;
  } else if (!strcmp(t->brokers, "embedded")) {
    fprintf(stderr,
            "index: kafka.brokers is 'embedded', whose log lives inside another process (`pipeline run`);\n"
            "       run `ruvector broker --topology %s` and give its bootstrap list as kafka.brokers\n",
            topo_path);
    rc = 2;
  }
  if (rc) {
    free(c);
    return rc;
  }
  c->shard = shard;
  c->shards = shards > 0 ? shards : 1;
  c->use_store = use_store;
  const rv_region_conf_t *rg = &t->region_conf[c->g];
  if (listen_port >= 0) {
    snprintf(c->listen_host, sizeof c->listen_host, "%s", listen_host);
    c->listen_port = listen_port;
  } else {
    snprintf(c->listen_host, sizeof c->listen_host, "%s", rg->listen_host);
    c->listen_port = rg->listen_port > 0 ? rg->listen_port + c->shard : 0;
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by every thread started below */
  signal(SIGPIPE, SIG_IGN);

  if (!(c->metrics = rv_metrics_new())) rc = 1;
  if (rc == 0 && start(c, only) != 0) rc = 1;
  if (rc == 0) {
    int64_t last = rv_mono_ms();
    for (;;) {
      struct timespec ts = {0, 250 * 1000000};
      int sig = sigtimedwait(&set, NULL, &ts);
      for (int k = 0; k < c->n; k++) rv_replica_metrics_update(c->rm[k]);
      if (sig == SIGINT || sig == SIGTERM) {
        rv_info(LOG, "%s received: saving snapshots and stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
      }
      if (rv_mono_ms() - last >= period) {
        last = rv_mono_ms();
        progress(c, "progress");
      }
    }
    progress(c, "stopping");
  }
  rv_serve_destroy(c->serve);
  for (int k = 0; k < c->n; k++) {
    rv_replica_destroy(c->replica[k]); /* saves the snapshot */
    rv_replica_metrics_destroy(c->rm[k]);
    rv_pgload_destroy(c->store[k]);
  }
  if (rc == 0) {
    printf("stopped\n");
    fflush(stdout);
  }
  rv_metrics_destroy(c->metrics);
  rv_pg_server_stop(c->pg);
  free(c);
  return rc;
}
