#include "rv_broker.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rv_log.h"

#define MAX_BROKERS 32
#define MAX_PARTITIONS 1024
#define MAX_CLI_TOPICS 256

struct rv_broker {
  rd_kafka_t *rk;                   /* owns the mock cluster's threads */
  rd_kafka_mock_cluster_t *mcluster;
  char *bootstraps;                 /* owned copy */
};

rv_broker_t *rv_broker_new(int n_brokers, char *errstr, size_t errstr_size) {
  if (n_brokers < 1 || n_brokers > MAX_BROKERS) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size, "broker count %d out of range 1..%d", n_brokers, MAX_BROKERS);
    return NULL;
  }
  rv_broker_t *b = calloc(1, sizeof *b);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char kerr[256];
  if (!b || !conf) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    goto fail;
  }
  /* The handle only hosts the cluster; it never connects anywhere. */
  if (rd_kafka_conf_set(conf, "log_level", "3", kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s", kerr);
    goto fail;
  }
  b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof kerr);
  if (!b->rk) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "rd_kafka_new: %s", kerr);
    goto fail;
  }
  conf = NULL; /* now owned by rk */
  b->mcluster = rd_kafka_mock_cluster_new(b->rk, n_brokers);
  if (!b->mcluster) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot start a mock cluster of %d brokers", n_brokers);
    goto fail;
  }
  b->bootstraps = strdup(rd_kafka_mock_cluster_bootstraps(b->mcluster));
  if (!b->bootstraps) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    goto fail;
  }
  return b;
fail:
  if (conf) rd_kafka_conf_destroy(conf);
  rv_broker_destroy(b);
  return NULL;
}

rv_err_t rv_broker_create_topic(rv_broker_t *b, const char *name, int partitions, char *errstr,
                                size_t errstr_size) {
  if (!name || !*name || strlen(name) >= RV_TOPIC_MAX)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "bad topic name");
  if (partitions < 1 || partitions > MAX_PARTITIONS)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "topic %s: partitions %d out of range 1..%d", name,
                   partitions, MAX_PARTITIONS);
  rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(b->mcluster, name, partitions, 1);
  if (e)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "create topic %s: %s", name, rd_kafka_err2str(e));
  return RV_OK;
}

const char *rv_broker_bootstraps(const rv_broker_t *b) { return b->bootstraps; }

rd_kafka_mock_cluster_t *rv_broker_mock(rv_broker_t *b) { return b->mcluster; }

void rv_broker_destroy(rv_broker_t *b) {
  if (!b) return;
  if (b->mcluster) rd_kafka_mock_cluster_destroy(b->mcluster);
  if (b->rk) rd_kafka_destroy(b->rk);
  free(b->bootstraps);
  free(b);
}

/* ---- rv_broker_run -------------------------------------------------------- */

void rv_broker_opts_init(rv_broker_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->n_brokers = 3;
  o->default_partitions = 3;
}

/* Writes text to path through path.tmp and rename, so readers never see half a file. */
static rv_err_t write_atomic(const char *path, const char *text, char *errstr, size_t errstr_size) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "%s: path too long", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return rv_errf(RV_ERR_IO, errstr, errstr_size, "%s: %s", tmp, strerror(errno));
  int bad = fputs(text, f) < 0;
  bad |= fflush(f) != 0;
  bad |= fsync(fileno(f)) != 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return rv_errf(RV_ERR_IO, errstr, errstr_size, "%s: %s", path, strerror(e));
  }
  return RV_OK;
}

rv_err_t rv_broker_run(const rv_broker_opts_t *opts, char *errstr, size_t errstr_size) {
  /* Block the signals before librdkafka starts threads, so they inherit the
   * mask and only sigwait below receives them. */
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &set, &old);

  rv_err_t err = RV_OK;
  int wrote_file = 0;
  rv_broker_t *b = rv_broker_new(opts->n_brokers > 0 ? opts->n_brokers : 3, errstr, errstr_size);
  if (!b) {
    err = RV_ERR_IO;
    goto out;
  }
  for (int i = 0; i < opts->n_topics; i++) {
    const rv_broker_topic_t *t = &opts->topics[i];
    int parts = t->partitions > 0 ? t->partitions : opts->default_partitions > 0 ? opts->default_partitions : 3;
    err = rv_broker_create_topic(b, t->name, parts, errstr, errstr_size);
    if (err) goto out;
  }
  if (opts->bootstrap_file) {
    char line[4096];
    snprintf(line, sizeof line, "%s\n", rv_broker_bootstraps(b));
    err = write_atomic(opts->bootstrap_file, line, errstr, errstr_size);
    if (err) goto out;
    wrote_file = 1;
  }
  rv_info("broker", "%d brokers, %d topics, bootstrap %s", opts->n_brokers > 0 ? opts->n_brokers : 3,
          opts->n_topics, rv_broker_bootstraps(b));
  printf("bootstrap: %s\n", rv_broker_bootstraps(b));
  fflush(stdout);

  /* SIGUSR1 takes every broker down (connections closed, new ones refused;
   * the data stays), SIGUSR2 brings them back: fault injection for tests. */
  int sig = 0, n_brokers = opts->n_brokers > 0 ? opts->n_brokers : 3;
  for (;;) {
    if (sigwait(&set, &sig) != 0) continue;
    if (sig != SIGUSR1 && sig != SIGUSR2) break;
    for (int id = 1; id <= n_brokers; id++) {
      rd_kafka_resp_err_t e = sig == SIGUSR1 ? rd_kafka_mock_broker_set_down(rv_broker_mock(b), id)
                                             : rd_kafka_mock_broker_set_up(rv_broker_mock(b), id);
      if (e) rv_warn("broker", "broker %d: set %s: %s", id, sig == SIGUSR1 ? "down" : "up", rd_kafka_err2str(e));
    }
    rv_info("broker", "%s", sig == SIGUSR1 ? "SIGUSR1: all brokers down" : "SIGUSR2: all brokers up");
    printf("brokers %s\n", sig == SIGUSR1 ? "down" : "up");
    fflush(stdout);
  }
  rv_info("broker", "signal %d, stopping", sig);

out:
  if (wrote_file) unlink(opts->bootstrap_file);
  rv_broker_destroy(b);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return err;
}

/* ---- rv_broker_main --------------------------------------------------------- */

static void usage(FILE *f, const char *prog) {
  fprintf(f,
          "usage: %s [options]\n"
          "Runs an in-memory Kafka cluster (librdkafka mock brokers on loopback) until\n"
          "SIGTERM or SIGINT. Not durable: for development, demos and tests.\n"
          "Once clients can connect it prints \"bootstrap: HOST:PORT,...\" on stdout.\n"
          "SIGUSR1 takes every broker down (connections dropped and refused, data kept),\n"
          "SIGUSR2 brings them back; each prints \"brokers down\" / \"brokers up\".\n"
          "\n"
          "  -b, --brokers N                number of brokers (default 3)\n"
          "  -t, --topic NAME[:PARTITIONS]  create a topic (repeatable)\n"
          "  -c, --collection NAME[:PARTITIONS]\n"
          "                                 create NAME.vectors, NAME.changelog and NAME.dlq\n"
          "                                 (repeatable)\n"
          "  -p, --partitions N             partitions when none is given (default 3)\n"
          "  -f, --bootstrap-file PATH      also write the bootstrap list (and a newline)\n"
          "                                 to PATH, atomically; removed on exit\n"
          "  -h, --help                     this text\n"
          "\n"
          "Topics not created here are auto-created by the mock on first use.\n"
          "Exit status: 0 after SIGTERM/SIGINT, 1 on failure, 2 on bad usage.\n",
          prog);
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

/* Parses NAME[:PARTITIONS] and appends the topic(s): one, or the three of a
 * collection. Returns 0, or -1 with a message on stderr. */
static int add_topics(const char *arg, int collection, rv_broker_topic_t *topics, int *n) {
  static const char *const suffixes[] = {".vectors", ".changelog", ".dlq"};
  const char *colon = strrchr(arg, ':');
  size_t name_len = colon ? (size_t)(colon - arg) : strlen(arg);
  int parts = 0;
  if (colon && parse_int(colon + 1, 1, MAX_PARTITIONS, &parts)) {
    fprintf(stderr, "broker: bad partition count in \"%s\"\n", arg);
    return -1;
  }
  if (name_len == 0) {
    fprintf(stderr, "broker: empty name in \"%s\"\n", arg);
    return -1;
  }
  int count = collection ? 3 : 1;
  if (*n + count > MAX_CLI_TOPICS) {
    fprintf(stderr, "broker: too many topics (at most %d)\n", MAX_CLI_TOPICS);
    return -1;
  }
  for (int i = 0; i < count; i++) {
    rv_broker_topic_t *t = &topics[*n];
    int len = snprintf(t->name, sizeof t->name, "%.*s%s", (int)name_len, arg, collection ? suffixes[i] : "");
    if (len < 0 || (size_t)len >= sizeof t->name) {
      fprintf(stderr, "broker: name too long: \"%s\"\n", arg);
      return -1;
    }
    t->partitions = parts;
    (*n)++;
  }
  return 0;
}

int rv_broker_main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"brokers", required_argument, NULL, 'b'},        {"topic", required_argument, NULL, 't'},
      {"collection", required_argument, NULL, 'c'},     {"partitions", required_argument, NULL, 'p'},
      {"bootstrap-file", required_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *prog = argc > 0 ? argv[0] : "broker";
  rv_broker_topic_t *topics = calloc(MAX_CLI_TOPICS, sizeof *topics);
  if (!topics) {
    fprintf(stderr, "broker: out of memory\n");
    return 1;
  }
  rv_broker_opts_t opts;
  rv_broker_opts_init(&opts);
  opts.topics = topics;
  int rc = -1, c;
  optind = 0; /* glibc: rescan from argv[1] even if getopt ran before */
  while (rc < 0 && (c = getopt_long(argc, argv, "b:t:c:p:f:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'b':
      if (parse_int(optarg, 1, MAX_BROKERS, &opts.n_brokers)) {
        fprintf(stderr, "broker: --brokers wants 1..%d, not \"%s\"\n", MAX_BROKERS, optarg);
        rc = 2;
      }
      break;
    case 't':
    case 'c':
      if (add_topics(optarg, c == 'c', topics, &opts.n_topics)) rc = 2;
      break;
    case 'p':
      if (parse_int(optarg, 1, MAX_PARTITIONS, &opts.default_partitions)) {
        fprintf(stderr, "broker: --partitions wants 1..%d, not \"%s\"\n", MAX_PARTITIONS, optarg);
        rc = 2;
      }
      break;
    case 'f': opts.bootstrap_file = optarg; break;
    case 'h':
      usage(stdout, prog);
      rc = 0;
      break;
    default:
      usage(stderr, prog);
      rc = 2;
      break;
    }
  }
  if (rc < 0 && optind < argc) {
    fprintf(stderr, "broker: unexpected argument \"%s\"\n", argv[optind]);
    usage(stderr, prog);
    rc = 2;
  }
  if (rc < 0) {
    char errstr[512];
    rv_err_t err = rv_broker_run(&opts, errstr, sizeof errstr);
    if (err) fprintf(stderr, "broker: %s\n", errstr);
    rc = err ? 1 : 0;
  }
  free(topics);
  return rc;
}
