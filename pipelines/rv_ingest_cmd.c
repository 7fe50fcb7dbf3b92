#include "rv_ingest_cmd.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_broker.h"
#include "rv_embedded.h"
#include "rv_log.h"
#include "rv_metrics_http.h"
#include "rv_time.h"

#define LOG "ingest"
#define EX_CONFIG 78

void rv_ingest_conf_from_topology(const rv_topology_t *t, int i, const char *brokers, const char *pg_conninfo,
                                  rv_ingest_conf_t *ic) {
  memset(ic, 0, sizeof *ic);
  snprintf(ic->brokers, sizeof ic->brokers, "%s", brokers);
  snprintf(ic->pg_conninfo, sizeof ic->pg_conninfo, "%s", pg_conninfo);
  ic->pgbouncer = t->pgbouncer;
  ic->collection = t->collections[i];
  ic->batch_rows = t->batch_rows;
  ic->batch_ms = t->batch_ms;
  ic->max_metadata_bytes = t->max_metadata_bytes;
  ic->sq8_train = t->sq8_train;
  ic->sq8_train_wait_ms = t->sq8_train_wait_ms;
  snprintf(ic->sq8_params, sizeof ic->sq8_params, "%s", t->sq8_params[i]);
  ic->codes_only = !t->store_vector;
  ic->pq_m = t->pq_m;
  ic->partman = t->partman;
  ic->premake = t->premake;
  snprintf(ic->schema_registry, sizeof ic->schema_registry, "%s", t->schema_registry);
  rv_ingest_conf_defaults(ic);
}

static void usage(FILE *f) {
  fputs("usage: ruvector ingest --topology FILE [--collection NAME] [--session-timeout-ms N] [--progress-ms N]\n"
        "                       [--metrics-listen HOST:PORT]\n"
        "Runs only the ingest stage of a topology: consumes each collection's source\n"
        "topic (consumer group rv-ingest-<collection>), writes PostgreSQL, publishes the\n"
        "changelog after each commit. Kafka and PostgreSQL are the topology's; embedded\n"
        "servers are started only where it says `embedded`. Start several processes to\n"
        "share the partitions; a dead one's partitions move on after the session timeout.\n"
        "\n"
        "  -t, --topology FILE          the topology (required)\n"
        "  -c, --collection NAME        only this collection (default: all of them)\n"
        "  -s, --session-timeout-ms N   consumer group session timeout (default 10000)\n"
        "  -p, --progress-ms N          progress line period on stdout (default 2000)\n"
        "  -m, --metrics-listen HOST:PORT\n"
        "                               serve GET /metrics (Prometheus text 0.0.4: the\n"
        "                               rv_ingest_* series) and GET /health on this address,\n"
        "                               e.g. 127.0.0.1:9464 or [::1]:9464; port 0 picks a\n"
        "                               free one. Prints \"metrics: http://HOST:PORT/metrics\".\n"
        "                               Default: no listener\n"
        "  -h, --help                   this text\n"
        "\n"
        "SIGTERM/SIGINT: finishes and commits the batch in progress, publishes its\n"
        "changes, leaves the group, prints a final \"stopped:\" line and exits 0; the\n"
        "metrics listener answers until the ingest has stopped.\n"
        "Exit status: 0 after a signal, 1 if a stage could not start, 2 bad usage,\n"
        "78 invalid topology.\n",
        f);
}

static void print_stats(const char *what, const char *collection, rv_ingest_t *in) {
  rv_ingest_stats_t s;
  rv_ingest_stats(in, &s);
  printf("%s %s: consumed %llu ingested %llu dead_lettered %llu batches %llu published %llu drained %llu "
         "retries %llu lost %llu%s\n",
         what, collection, (unsigned long long)s.consumed, (unsigned long long)s.ingested,
         (unsigned long long)s.dead_lettered, (unsigned long long)s.batches, (unsigned long long)s.published,
         (unsigned long long)s.drained, (unsigned long long)s.retries, (unsigned long long)s.lost,
         s.lost ? " (RECORDS LOST UPSTREAM)" : "");
}

typedef struct cmd {
  rv_topology_t topo;
  rv_broker_t *broker;
  rv_pg_server_t *pg;
  char bootstrap[1024];
  char pg_conninfo[1024];
  int idx[RV_MAX_COLLECTIONS]; /* topology index of each running collection */
  rv_ingest_t *ingest[RV_MAX_COLLECTIONS];
  int n;
  rv_metrics_t *metrics;       /* NULL without --metrics-listen; outlives the ingests and the listener */
  rv_metrics_http_t *listener; /* serves metrics; NULL without --metrics-listen */
} cmd_t;

static int start(cmd_t *c, const char *only, int session_timeout_ms) {
  const rv_topology_t *t = &c->topo;
  char err[1024];
  for (int i = 0; i < t->n_collections; i++)
    if (!only || !strcmp(t->collections[i].name, only)) c->idx[c->n++] = i;
  if (!c->n) {
    rv_error(LOG, "the topology has no collection '%s'", only);
    return -1;
  }
  if (!strcmp(t->brokers, "embedded")) {
    if (!(c->broker = rv_broker_new(3, err, sizeof err))) {
      rv_error(LOG, "embedded Kafka: %s", err);
      return -1;
    }
    for (int k = 0; k < c->n; k++) {
      const rv_collection_conf_t *col = &t->collections[c->idx[k]];
      const char *topics[3] = {col->source_topic, col->changelog_topic, col->dlq_topic};
      for (int j = 0; j < 3; j++)
        if (rv_broker_create_topic(c->broker, topics[j], col->partitions, err, sizeof err)) {
          rv_error(LOG, "embedded Kafka: %s", err);
          return -1;
        }
    }
    snprintf(c->bootstrap, sizeof c->bootstrap, "%s", rv_broker_bootstraps(c->broker));
  } else {
    snprintf(c->bootstrap, sizeof c->bootstrap, "%s", t->brokers);
  }
  if (!strcmp(t->postgres, "embedded")) {
    if (!(c->pg = rv_pg_server_start(t->data_dir, err, sizeof err))) {
      rv_error(LOG, "embedded PostgreSQL: %s", err);
      return -1;
    }
    snprintf(c->pg_conninfo, sizeof c->pg_conninfo, "%s", rv_pg_server_conninfo(c->pg));
  } else {
    snprintf(c->pg_conninfo, sizeof c->pg_conninfo, "%s", t->postgres);
  }
  for (int k = 0; k < c->n; k++) {
    rv_ingest_conf_t ic;
    rv_ingest_conf_from_topology(t, c->idx[k], c->bootstrap, c->pg_conninfo, &ic);
    if (session_timeout_ms > 0) ic.session_timeout_ms = session_timeout_ms;
    ic.metrics = c->metrics; /* borrowed: destroyed after the ingest */
    /* Another ingest process may be migrating too: the migration serialises itself. */
    if (rv_ingest_migrate(&ic, err, sizeof err)) {
      rv_error(LOG, "%s: migrate: %s", ic.collection.name, err);
      return -1;
    }
    /* The embedded broker's log starts empty on every run (see rv_runner.c). */
    if (c->broker && rv_ingest_forget_offsets(&ic, err, sizeof err)) {
      rv_error(LOG, "%s: %s", ic.collection.name, err);
      return -1;
    }
    if (!(c->ingest[k] = rv_ingest_new(&ic, err, sizeof err)) || rv_ingest_start(c->ingest[k], err, sizeof err)) {
      rv_error(LOG, "%s: %s", ic.collection.name, err);
      return -1;
    }
    printf("ingest %s: consuming %s as rv-ingest-%s, changelog %s\n", ic.collection.name,
           ic.collection.source_topic, ic.collection.name, ic.collection.changelog_topic);
  }
  printf("ingest running (kafka %s)\n", c->bootstrap);
  fflush(stdout);
  return 0;
}

/* Creates the registry the ingests update and the listener that serves it. */
static int start_listener(cmd_t *c, const char *host, int port) {
  char err[512];
  if (!(c->metrics = rv_metrics_new())) {
    rv_error(LOG, "out of memory for the metrics registry");
    return -1;
  }
  if (!(c->listener = rv_metrics_http_new(c->metrics, host, port, err, sizeof err))) {
    rv_error(LOG, "%s", err);
    return -1;
  }
  printf("metrics: %s\n", rv_metrics_http_url(c->listener));
  fflush(stdout);
  return 0;
}

int rv_ingest_cmd_main(int argc, char **argv) {
  static const struct option longopts[] = {{"topology", required_argument, NULL, 't'},
                                           {"collection", required_argument, NULL, 'c'},
                                           {"session-timeout-ms", required_argument, NULL, 's'},
                                           {"progress-ms", required_argument, NULL, 'p'},
                                           {"metrics-listen", required_argument, NULL, 'm'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  const char *topo_path = NULL, *only = NULL;
  long session = 0, progress = 2000;
  char metrics_host[256] = "";
  int metrics_port = -1; /* -1: no listener */
  int ch;
  optind = 0;
  while ((ch = getopt_long(argc, argv, "t:c:s:p:m:h", longopts, NULL)) != -1) {
    char *end = NULL;
    switch (ch) {
    case 't': topo_path = optarg; break;
    case 'c': only = optarg; break;
    case 's':
      session = strtol(optarg, &end, 10);
      if (*end || session < 1000 || session > 3600000) {
        fprintf(stderr, "ingest: --session-timeout-ms wants 1000..3600000, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'p':
      progress = strtol(optarg, &end, 10);
      if (*end || progress < 10) {
        fprintf(stderr, "ingest: --progress-ms wants at least 10, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case 'm': {
      char why[300];
      if (rv_metrics_http_parse_listen(optarg, metrics_host, sizeof metrics_host, &metrics_port, why, sizeof why)) {
        fprintf(stderr, "ingest: --metrics-listen: %s\n", why);
        return 2;
      }
      break;
    }
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

  /* Every thread started below inherits the mask, so only sigtimedwait sees them. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  /* The listener goes first: a port in use fails before any Kafka or
   * PostgreSQL work, and /health answers while migrations run. */
  int rc = metrics_port >= 0 && start_listener(c, metrics_host, metrics_port) != 0 ? 1 : 0;
  if (rc == 0 && start(c, only, (int)session) != 0) rc = 1;
  if (rc == 0) {
    int64_t last = rv_mono_ms();
    for (;;) {
      struct timespec ts = {0, 100 * 1000000};
      int sig = sigtimedwait(&set, NULL, &ts);
      if (sig == SIGINT || sig == SIGTERM) {
        rv_info(LOG, "%s received: finishing the batch in progress", sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
      }
      if (rv_mono_ms() - last >= progress) {
        last = rv_mono_ms();
        for (int k = 0; k < c->n; k++) print_stats("progress", c->topo.collections[c->idx[k]].name, c->ingest[k]);
        fflush(stdout);
      }
    }
  }
  for (int k = 0; k < c->n; k++) {
    if (!c->ingest[k]) continue;
    rv_ingest_stop(c->ingest[k]); /* commits, publishes, leaves the group */
    print_stats("stopped", c->topo.collections[c->idx[k]].name, c->ingest[k]);
    rv_ingest_destroy(c->ingest[k]);
  }
  fflush(stdout);
  /* The listener stops after the ingests: a scrape during the final commit
   * still answers, and the registry outlives every reader and writer. */
  rv_metrics_http_destroy(c->listener);
  rv_metrics_destroy(c->metrics);
  rv_pg_server_stop(c->pg);
  rv_broker_destroy(c->broker);
  free(c);
  return rc;
}
