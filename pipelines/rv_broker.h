#ifndef RV_BROKER_H
#define RV_BROKER_H
/* The embedded Kafka: librdkafka's mock cluster (real Kafka protocol on
 * loopback, in memory, not durable), and the `ruvector broker` command that
 * runs one as its own process and prints its bootstrap list.
 *
 * The mock brokers listen on ephemeral ports, so the bootstrap list must be
 * passed on to clients. Create topics here: the mock reports controller id 0,
 * so clients' admin CreateTopics fail against it. */
#include <stddef.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "rv_collection.h"
#include "rv_err.h"

typedef struct rv_broker rv_broker_t;

/* Starts a mock cluster of n_brokers (1..32) brokers, owned by an internal
 * producer handle. Returns NULL with errstr set on failure. Any thread. */
rv_broker_t *rv_broker_new(int n_brokers, char *errstr, size_t errstr_size);

/* Creates topic `name` with `partitions` partitions (replication 1).
 * Creating an existing topic again fails (RV_ERR_INVALID). */
rv_err_t rv_broker_create_topic(rv_broker_t *b, const char *name, int partitions, char *errstr,
                                size_t errstr_size);

/* "127.0.0.1:port,..." for bootstrap.servers; valid until rv_broker_destroy. */
const char *rv_broker_bootstraps(const rv_broker_t *b);

/* The mock cluster itself, for fault injection (rd_kafka_mock_broker_set_down,
 * rd_kafka_mock_push_request_errors); owned by b. */
rd_kafka_mock_cluster_t *rv_broker_mock(rv_broker_t *b);

/* Stops the brokers (clients see them disappear) and frees. NULL is a no-op. */
void rv_broker_destroy(rv_broker_t *b);

/* One topic for rv_broker_run. */
typedef struct rv_broker_topic {
  char name[RV_TOPIC_MAX];
  int partitions; /* 0 = opts->default_partitions */
} rv_broker_topic_t;

typedef struct rv_broker_opts {
  int n_brokers;                   /* default 3 */
  int default_partitions;          /* default 3 */
  const rv_broker_topic_t *topics; /* caller-owned array, created in order */
  int n_topics;
  const char *bootstrap_file;      /* if set, the bootstrap list + "\n" is written there (tmp + rename) */
} rv_broker_opts_t;

void rv_broker_opts_init(rv_broker_opts_t *o);

/* Runs a broker until SIGTERM or SIGINT: starts the cluster, creates the
 * topics, writes the bootstrap file, prints "bootstrap: <list>\n" on stdout
 * (flushed) once clients can connect, then waits in sigwait. SIGUSR1 takes
 * every broker down (rd_kafka_mock_broker_set_down: connections closed, new
 * ones refused, data kept) and prints "brokers down\n"; SIGUSR2 brings them
 * up and prints "brokers up\n". Blocks SIGTERM, SIGINT, SIGUSR1 and SIGUSR2
 * in the calling thread for its duration (call it before other threads
 * exist, so none of them takes the signal). Returns RV_OK after a
 * signal, or an error (errstr set) if the cluster, a topic or the file
 * could not be made. Removes the bootstrap file on the way out. */
rv_err_t rv_broker_run(const rv_broker_opts_t *opts, char *errstr, size_t errstr_size);

/* `ruvector broker [options]`; argv[0] is the command name. Returns the
 * process exit code: 0 after SIGTERM/SIGINT, 1 on failure, 2 on bad usage. */
int rv_broker_main(int argc, char **argv);

#endif
