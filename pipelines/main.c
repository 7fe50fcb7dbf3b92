/* ruvector: the one executable. Subcommands:
 *   pipeline validate FILE    check a topology; exit 0 if valid, 78 (EX_CONFIG) if not
 *   pipeline run FILE [...]   run every stage of a topology in this process
 *   ingest --topology FILE    run only the ingest stage of a topology
 *   index --topology FILE --region R   run one region's index replica (a shard of it) and serve it
 *   serve --topology FILE     serve every region by fanning searches out to its `ruvector index` processes
 *   broker [...]              run the embedded Kafka (librdkafka mock cluster) as its own process
 *   produce [...]             publish vectors to Kafka
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_broker.h"
#include "rv_index_bench.h"
#include "rv_index_cmd.h"
#include "rv_malloc.h"
#include "rv_ingest_cmd.h"
#include "rv_produce.h"
#include "rv_runner.h"
#include "rv_serve_cmd.h"
#include "rv_topology.h"

#define EX_USAGE 64
#define EX_CONFIG 78

static void usage(FILE *out) {
  fputs("usage: ruvector <command> [options]\n"
        "\n"
        "commands:\n"
        "  pipeline validate FILE          check a topology file; prints every problem as\n"
        "                                  file:line:column: reason; exit 0 valid, 78 invalid\n"
        "  pipeline run FILE [--load PATH] [--count N] [--endpoints PATH]\n"
        "                                  run a topology (embedded Kafka/PostgreSQL/Redis where it\n"
        "                                  says so); --load publishes a data set (IDX, .fvecs, JSON\n"
        "                                  lines) to the first collection; --endpoints overrides the\n"
        "                                  topology's endpoints_file; stops on SIGINT/SIGTERM\n"
        "  ingest --topology FILE [--collection NAME]\n"
        "                                  run only the ingest stage (Kafka -> PostgreSQL ->\n"
        "                                  changelog); SIGINT/SIGTERM commit the batch in\n"
        "                                  progress and exit 0 (see ingest --help)\n"
        "  index --topology FILE --region R [--collection C] [--shard I/N]\n"
        "                                  run one region's index replica (shard I of N) of each\n"
        "                                  collection: bootstrap from snapshot, PostgreSQL or the\n"
        "                                  changelog, serve rv.v1 search and /health /ready\n"
        "                                  /startup /metrics; SIGTERM saves snapshots, exit 0\n"
        "                                  (see index --help)\n"
        "  serve --topology FILE [--listen HOST:PORT] [--collection C]\n"
        "                                  serve rv.v1 search for every region, holding no replica:\n"
        "                                  each search fans out to the region's `ruvector index`\n"
        "                                  processes (shard I at its listen port + I) and their\n"
        "                                  hits are merged; /health /ready /metrics (see serve --help)\n"
        "  broker [--topology FILE] [...]  run the embedded Kafka as its own process (see broker --help)\n"
        "  produce [...]                   publish vectors to Kafka (see produce --help)\n"
        "  index-bench [...]               build the HNSW engine over a base set and time searches\n"
        "                                  of a query set (see index-bench --help)\n"
        "  version                         print the version\n",
        out);
}


static int cmd_pipeline(int argc, char **argv) {
  if (argc < 3) {
    usage(stderr);
    return EX_USAGE;
  }
  const char *verb = argv[1], *path = argv[2];
  rv_topology_t *t = calloc(1, sizeof *t);
  if (!t) return 1;
  int rc = rv_topology_load_report(path, t);
  if (rc == 0 && !strcmp(verb, "validate")) {
    printf("%s: valid (pipeline '%s', %d collection%s, %d region%s)\n", path, t->name, t->n_collections,
           t->n_collections == 1 ? "" : "s", t->n_regions, t->n_regions == 1 ? "" : "s");
  } else if (rc == 0 && !strcmp(verb, "run")) {
    rv_run_opts_t opts = {0};
    static const struct option longopts[] = {
        {"load", required_argument, NULL, 'l'},
        {"count", required_argument, NULL, 'n'},
        {"endpoints", required_argument, NULL, 'e'},
        {NULL, 0, NULL, 0}};
    optind = 3;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
      if (c == 'l') opts.load_path = optarg;
      else if (c == 'n') opts.load_count = strtol(optarg, NULL, 10);
      else if (c == 'e' && strlen(optarg) < sizeof t->endpoints_file)
        snprintf(t->endpoints_file, sizeof t->endpoints_file, "%s", optarg);
      else {
        free(t);
        return EX_USAGE;
      }
    }
    rc = rv_pipeline_run(t, &opts);
  } else if (rc == 0) {
    fprintf(stderr, "ruvector pipeline: unknown verb '%s' (validate, run)\n", verb);
    rc = EX_USAGE;
  }
  free(t);
  return rc;
}

/* `broker --topology FILE` becomes --topic flags for every topic of the topology. */
static int cmd_broker(int argc, char **argv) {
  const char *topo_path = NULL;
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "--topology")) topo_path = argv[i + 1];
  if (!topo_path) return rv_broker_main(argc, argv);

  rv_topology_t *t = calloc(1, sizeof *t);
  if (!t) return 1;
  int rc = rv_topology_load_report(topo_path, t);
  if (rc) {
    free(t);
    return rc;
  }
  char **args = calloc((size_t)argc + 6 * RV_MAX_COLLECTIONS + 1, sizeof *args);
  char(*specs)[RV_TOPIC_MAX + 16] = calloc(3 * RV_MAX_COLLECTIONS, sizeof *specs);
  int n = 0, s = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--topology")) {
      i++;
      continue;
    }
    args[n++] = argv[i];
  }
  for (int i = 0; i < t->n_collections; i++) {
    const rv_collection_conf_t *c = &t->collections[i];
    const char *topics[3] = {c->source_topic, c->changelog_topic, c->dlq_topic};
    for (int k = 0; k < 3; k++) {
      snprintf(specs[s], sizeof specs[s], "%s:%d", topics[k], c->partitions);
      args[n++] = "--topic";
      args[n++] = specs[s++];
    }
  }
  args[n] = NULL;
  rc = rv_broker_main(n, args);
  free(specs);
  free(args);
  free(t);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? EX_USAGE : 0;
  }
  const char *cmd = argv[1];
  /* The streaming commands churn through tens of megabytes per batch (rv_malloc.h). */
  if (!strcmp(cmd, "pipeline") || !strcmp(cmd, "broker") || !strcmp(cmd, "ingest") ||
      !strcmp(cmd, "index"))
    rv_malloc_tune();
  if (!strcmp(cmd, "pipeline")) return cmd_pipeline(argc - 1, argv + 1);
  if (!strcmp(cmd, "broker")) return cmd_broker(argc - 1, argv + 1);
  if (!strcmp(cmd, "ingest")) return rv_ingest_cmd_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "index")) return rv_index_cmd_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "serve")) return rv_serve_cmd_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "produce")) return rv_produce_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "index-bench")) return rv_index_bench_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("ruvector %s\n", RV_VERSION);
    return 0;
  }
  fprintf(stderr, "ruvector: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return EX_USAGE;
}
