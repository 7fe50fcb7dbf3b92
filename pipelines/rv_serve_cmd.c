#include "rv_serve_cmd.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_http_probe.h"
#include "rv_log.h"
#include "rv_metrics.h"
#include "rv_metrics_http.h"
#include "rv_serve.h"
#include "rv_time.h"

#define LOG "serve"
#define EX_CONFIG 78
#define MAX_SHARDS 64          /* regions[].shards is 1..64 */
#define PROBE_PERIOD_MS 500    /* each shard's /ready is asked this often */
#define PROBE_TIMEOUT_MS 400   /* ... and counts as down when it does not answer within this */

int rv_region_shard_url(const rv_topology_t *t, int g, int shard, char *out, size_t cap) {
  const rv_region_conf_t *rg = &t->region_conf[g];
  if (rg->listen_port <= 0 || rg->listen_port + shard > 65535) return -1;
  int v6 = strchr(rg->listen_host, ':') != NULL;
  int n = snprintf(out, cap, "ws://%s%s%s:%d/", v6 ? "[" : "", rg->listen_host, v6 ? "]" : "", rg->listen_port + shard);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* One shard process of one region, probed for /ready. */
typedef struct probe {
  int region, shard;
  atomic_int up;           /* the last probe got 200 from /ready */
  rv_series_t *up_gauge;   /* rv_serve_shard_up */
} probe_t;

typedef struct cmd {
  rv_topology_t topo;
  int idx[RV_MAX_COLLECTIONS];
  int n;
  rv_serve_shard_t shards[RV_MAX_REGIONS][MAX_SHARDS];
  const rv_serve_shard_t *shard_ptr[RV_MAX_COLLECTIONS][RV_MAX_REGIONS];
  int n_shards[RV_MAX_COLLECTIONS][RV_MAX_REGIONS];
  rv_replica_t *no_replica[RV_MAX_REGIONS]; /* all NULL: every region is fanned out */
  rv_serve_collection_t cols[RV_MAX_COLLECTIONS];
  probe_t *probes;
  int n_probes;
  rv_series_t *ready_gauge;  /* rv_serve_ready */
  rv_series_t *regions_up;   /* rv_serve_regions_ready */
  pthread_t prober;
  int prober_started;
  atomic_int stop;
  rv_metrics_t *metrics;
  rv_serve_t *serve;
} cmd_t;

/* Regions (of the g index) with at least one shard up. */
static int regions_ready(cmd_t *c) {
  int n = 0;
  for (int g = 0; g < c->topo.n_regions; g++) {
    int any = 0;
    for (int p = 0; p < c->n_probes && !any; p++)
      any = c->probes[p].region == g && atomic_load(&c->probes[p].up);
    n += any;
  }
  return n;
}

/* conf.ready (service thread): /startup once listening (this process holds
 * no replica); /ready while every region has a shard whose /ready answers. */
static int ready_hook(void *arg, int startup) {
  cmd_t *c = arg;
  return startup ? 1 : regions_ready(c) == c->topo.n_regions;
}

static void *prober_main(void *arg) {
  cmd_t *c = arg;
  while (!atomic_load(&c->stop)) {
    int64_t round = rv_mono_ms();
    for (int p = 0; p < c->n_probes && !atomic_load(&c->stop); p++) {
      probe_t *pr = &c->probes[p];
      const rv_region_conf_t *rg = &c->topo.region_conf[pr->region];
      int status = rv_http_probe(rg->listen_host, rg->listen_port + pr->shard, "/ready", PROBE_TIMEOUT_MS);
      int up = status == 200;
      if (up != atomic_load(&pr->up))
        rv_info(LOG, "region %s shard %d/%d (port %d): %s (/ready %d)", rg->name, pr->shard, rg->shards,
                rg->listen_port + pr->shard, up ? "ready" : "not ready", status);
      atomic_store(&pr->up, up);
      rv_gauge_set(pr->up_gauge, up);
    }
    int ready = regions_ready(c);
    rv_gauge_set(c->regions_up, ready);
    rv_gauge_set(c->ready_gauge, ready == c->topo.n_regions);
    while (!atomic_load(&c->stop) && rv_mono_ms() - round < PROBE_PERIOD_MS) {
      struct timespec ts = {0, 20 * 1000000};
      nanosleep(&ts, NULL);
    }
  }
  return NULL;
}

static void usage(FILE *f) {
  fputs("usage: ruvector serve --topology FILE [--collection C] [--listen HOST:PORT]\n"
        "                      [--shard-timeout-ms N] [--progress-ms N]\n"
        "Serves rv.v1 search for every collection and region of a topology (or only C),\n"
        "holding no replica: a search of region R is fanned out to R's `ruvector index`\n"
        "processes (shard I at the region's listen host, port + I; a one-shard region is a\n"
        "fan-out of one), and their hits are merged into one reply (\"partial\": true and\n"
        "\"missing_shards\" when a shard does not answer in time). HTTP on the same port:\n"
        "/health, /ready (200 while every region has a shard whose /ready answers 200),\n"
        "/startup, /api/stats, /metrics. Every region needs a fixed listen port.\n"
        "\n"
        "  -t, --topology FILE        the topology (required)\n"
        "  -c, --collection C         only this collection (default: all of them)\n"
        "  -l, --listen HOST:PORT     override serve.listen (port 0: a free one)\n"
        "  -T, --shard-timeout-ms N   a shard that has not answered within N ms is reported\n"
        "                             missing (default 1000; plus index.after_timeout_ms for\n"
        "                             a search with \"after\")\n"
        "  -p, --progress-ms N        progress line period on stdout (default 2000)\n"
        "  -h, --help                 this text\n"
        "\n"
        "Prints \"listening: ws://HOST:PORT/\" once it listens. The cache keys follow the\n"
        "topology (redis.url: embedded starts no Redis here: L1 only), but fan-out replies\n"
        "are not cached (schemas/protocol.md, \"Sharded regions\").\n"
        "Exit status: 0 after SIGTERM/SIGINT, 1 if it could not start, 2 bad usage,\n"
        "78 invalid topology or a region whose listen port is 0.\n",
        f);
}

static int start(cmd_t *c, const char *topo_path, const char *only, const char *host, int port, int shard_timeout_ms) {
  const rv_topology_t *t = &c->topo;
  char err[1024];
  for (int i = 0; i < t->n_collections; i++)
    if (!only || !strcmp(t->collections[i].name, only)) c->idx[c->n++] = i;
  if (!c->n) {
    fprintf(stderr, "serve: the topology has no collection '%s'\n", only);
    return 2;
  }
  int bad = 0, total = 0;
  for (int g = 0; g < t->n_regions; g++) {
    const rv_region_conf_t *rg = &t->region_conf[g];
    if (rg->listen_port <= 0) {
      fprintf(stderr,
              "%s: regions[%d] (%s): listen port is 0; `ruvector serve` fans out to fixed addresses: give the "
              "region a listen HOST:PORT (shard I listens on PORT + I)\n",
              topo_path, g, rg->name);
      bad = 1;
      continue;
    }
    for (int s = 0; s < rg->shards; s++)
      if (rv_region_shard_url(t, g, s, c->shards[g][s].url, sizeof c->shards[g][s].url)) {
        fprintf(stderr, "%s: regions[%d] (%s): shard %d's address does not fit\n", topo_path, g, rg->name, s);
        bad = 1;
      }
    total += rg->shards;
  }
  if (bad) return EX_CONFIG;

  if (!(c->probes = calloc((size_t)total, sizeof *c->probes))) return 1;
  for (int g = 0; g < t->n_regions; g++) {
    const rv_region_conf_t *rg = &t->region_conf[g];
    for (int s = 0; s < rg->shards; s++) {
      probe_t *p = &c->probes[c->n_probes++];
      p->region = g;
      p->shard = s;
      atomic_init(&p->up, 0);
      char shard[32];
      snprintf(shard, sizeof shard, "%d/%d", s, rg->shards);
      const char *labels[] = {"region", rg->name, "shard", shard, NULL};
      p->up_gauge = rv_metrics_gauge(c->metrics, "rv_serve_shard_up",
                                     "1 while the shard process answers /ready with 200", labels);
    }
  }
  c->ready_gauge = rv_metrics_gauge(c->metrics, "rv_serve_ready", "1 while /ready answers 200", NULL);
  c->regions_up = rv_metrics_gauge(c->metrics, "rv_serve_regions_ready",
                                   "regions with at least one shard answering /ready with 200", NULL);
  rv_gauge_set(rv_metrics_gauge(c->metrics, "rv_serve_regions", "regions served", NULL), t->n_regions);

  for (int k = 0; k < c->n; k++) {
    const rv_collection_conf_t *col = &t->collections[c->idx[k]];
    rv_serve_collection_t *sc = &c->cols[k];
    snprintf(sc->name, sizeof sc->name, "%s", col->name);
    for (int g = 0; g < t->n_regions; g++) {
      c->shard_ptr[k][g] = c->shards[g];
      c->n_shards[k][g] = t->region_conf[g].shards;
    }
    sc->replicas = c->no_replica;
    sc->regions = (char(*)[RV_NAME_MAX])t->regions;
    sc->n_replicas = t->n_regions;
    sc->shards = c->shard_ptr[k];
    sc->n_shards = c->n_shards[k];
    sc->dim = col->dim;
  }

  rv_serve_conf_t sc;
  rv_serve_conf_init(&sc);
  snprintf(sc.host, sizeof sc.host, "%s", host);
  sc.port = port;
  sc.collections = c->cols;
  sc.n_collections = c->n;
  if (!strcmp(t->redis, "embedded"))
    rv_warn(LOG, "redis.url is 'embedded': `ruvector serve` starts no Redis of its own; L1 cache only");
  else if (strcmp(t->redis, "none") != 0)
    snprintf(sc.redis, sizeof sc.redis, "%s", t->redis);
  sc.l1_entries = t->cache_l1_entries;
  sc.l2_ttl_s = t->cache_l2_ttl_s;
  sc.workers = t->serve_workers;
  sc.after_timeout_ms = t->after_timeout_ms;
  if (shard_timeout_ms > 0) sc.shard_timeout_ms = shard_timeout_ms;
  sc.metrics = c->metrics;
  sc.ready = ready_hook;
  sc.ready_arg = c;
  snprintf(sc.cache_namespace, sizeof sc.cache_namespace, "%s", t->name);
  if (!(c->serve = rv_serve_new(&sc, err, sizeof err)) || rv_serve_start(c->serve, err, sizeof err)) {
    rv_error(LOG, "%s:%d: %s", host, port, err);
    return 1;
  }
  atomic_init(&c->stop, 0);
  if (pthread_create(&c->prober, NULL, prober_main, c)) {
    rv_error(LOG, "cannot start the probe thread");
    return 1;
  }
  c->prober_started = 1;
  int bound = rv_serve_port(c->serve);
  int v6 = strchr(host, ':') != NULL;
  printf("serve %s: %d collection%s x %d region%s, fanned out to %d shard process%s\n", t->name, c->n,
         c->n == 1 ? "" : "s", t->n_regions, t->n_regions == 1 ? "" : "s", total, total == 1 ? "" : "es");
  for (int g = 0; g < t->n_regions; g++) {
    const rv_region_conf_t *rg = &t->region_conf[g];
    printf("region %s: %d shard%s:", rg->name, rg->shards, rg->shards == 1 ? "" : "s");
    for (int s = 0; s < rg->shards; s++) printf(" %s", c->shards[g][s].url);
    printf("\n");
  }
  printf("listening: ws://%s%s%s:%d/\n", v6 ? "[" : "", host, v6 ? "]" : "", bound);
  printf("metrics: http://%s%s%s:%d/metrics\n", v6 ? "[" : "", host, v6 ? "]" : "", bound);
  fflush(stdout);
  return 0;
}

static void progress(cmd_t *c, const char *what) {
  const rv_topology_t *t = &c->topo;
  for (int g = 0; g < t->n_regions; g++) {
    int up = 0;
    for (int p = 0; p < c->n_probes; p++) up += c->probes[p].region == g && atomic_load(&c->probes[p].up);
    printf("%s region %s: shards ready %d/%d\n", what, t->regions[g], up, t->region_conf[g].shards);
  }
  fflush(stdout);
}

int rv_serve_cmd_main(int argc, char **argv) {
  static const struct option longopts[] = {{"topology", required_argument, NULL, 't'},
                                           {"collection", required_argument, NULL, 'c'},
                                           {"listen", required_argument, NULL, 'l'},
                                           {"shard-timeout-ms", required_argument, NULL, 'T'},
                                           {"progress-ms", required_argument, NULL, 'p'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  const char *topo_path = NULL, *only = NULL;
  long period = 2000, shard_timeout = 0;
  char listen_host[256] = "";
  int listen_port = -1;
  int ch;
  optind = 0;
  while ((ch = getopt_long(argc, argv, "t:c:l:T:p:h", longopts, NULL)) != -1) {
    char *end = NULL;
    switch (ch) {
    case 't': topo_path = optarg; break;
    case 'c': only = optarg; break;
    case 'l': {
      char why[300];
      if (rv_metrics_http_parse_listen(optarg, listen_host, sizeof listen_host, &listen_port, why, sizeof why)) {
        fprintf(stderr, "serve: --listen: %s\n", why);
        return 2;
      }
      break;
    }
    case 'T':
      shard_timeout = strtol(optarg, &end, 10);
      if (*end || shard_timeout < 1 || shard_timeout > 600000) {
        fprintf(stderr, "serve: --shard-timeout-ms wants 1..600000, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'p':
      period = strtol(optarg, &end, 10);
      if (*end || period < 10) {
        fprintf(stderr, "serve: --progress-ms wants at least 10, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (!topo_path || optind < argc) {
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
  if (listen_port < 0) {
    snprintf(listen_host, sizeof listen_host, "%s", c->topo.serve_host);
    listen_port = c->topo.serve_port;
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by every thread started below */
  signal(SIGPIPE, SIG_IGN);

  int rc = (c->metrics = rv_metrics_new()) ? start(c, topo_path, only, listen_host, listen_port, (int)shard_timeout)
                                           : 1;
  if (rc == 0) {
    int64_t last = rv_mono_ms();
    for (;;) {
      struct timespec ts = {0, 250 * 1000000};
      int sig = sigtimedwait(&set, NULL, &ts);
      if (sig == SIGINT || sig == SIGTERM) {
        rv_info(LOG, "%s received: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
      }
      if (rv_mono_ms() - last >= period) {
        last = rv_mono_ms();
        progress(c, "progress");
      }
    }
  }
  atomic_store(&c->stop, 1);
  if (c->prober_started) pthread_join(c->prober, NULL);
  rv_serve_destroy(c->serve);
  if (rc == 0) {
    printf("stopped\n");
    fflush(stdout);
  }
  rv_metrics_destroy(c->metrics);
  free(c->probes);
  free(c);
  return rc;
}
