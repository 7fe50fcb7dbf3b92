#ifndef RV_INGEST_H
#define RV_INGEST_H
/* Ingest: consumes <collection>.vectors (consumer group rv-ingest-<collection>),
 * decodes and validates each record, writes batches to the collection's
 * monthly-partitioned PostgreSQL table together with the consumed offsets in
 * one transaction, sends bad records to <collection>.dlq with the reason in
 * headers, and after each commit publishes the batch to <collection>.changelog. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"

typedef struct rv_ingest rv_ingest_t;

typedef struct rv_ingest_conf {
  char brokers[1024];               /* Kafka bootstrap list */
  char pg_conninfo[1024];           /* libpq connection string */
  int pgbouncer;                    /* 1: use no named prepared statements */
  rv_collection_conf_t collection;  /* one ingest per collection */
  int batch_rows;                   /* close a batch at this many rows (default 5000) */
  int batch_ms;                     /* ... or after this many ms (default 50) */
  int max_metadata_bytes;           /* default 65536 */
} rv_ingest_conf_t;

typedef struct rv_ingest_stats {
  uint64_t consumed;      /* records read from Kafka */
  uint64_t ingested;      /* records committed to PostgreSQL */
  uint64_t dead_lettered; /* records sent to the DLQ */
  uint64_t batches;       /* committed transactions */
  uint64_t retries;       /* retried PostgreSQL or Kafka operations */
  uint64_t lost;          /* source offsets deleted from the log before ingest read them */
} rv_ingest_stats_t;

/* Fills unset (zero) fields of conf with defaults. */
void rv_ingest_conf_defaults(rv_ingest_conf_t *conf);

/* Creates the collection's tables if missing (idempotent; safe to run from
 * several processes). Connects with conf->pg_conninfo. */
rv_err_t rv_ingest_migrate(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size);

/* Deletes the stored source offsets of conf's collection, for a source topic
 * whose log started over: the embedded broker (librdkafka's mock cluster)
 * keeps nothing across runs, so offsets stored by an earlier run point past
 * the new log's end. Call before rv_ingest_start; never against a durable
 * Kafka, where it would make ingest re-read the topic from the beginning
 * (harmless, since writes are idempotent, but slow). */
rv_err_t rv_ingest_forget_offsets(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size);

/* Copies conf. Connects to nothing yet. */
rv_ingest_t *rv_ingest_new(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size);

/* Starts the consumer thread. */
rv_err_t rv_ingest_start(rv_ingest_t *in, char *errstr, size_t errstr_size);

/* Finishes and commits the batch in progress, leaves the group, joins the
 * thread. Safe to call more than once. */
void rv_ingest_stop(rv_ingest_t *in);

/* Stops (if running) and frees. NULL is a no-op. */
void rv_ingest_destroy(rv_ingest_t *in);

/* Thread: any. */
void rv_ingest_stats(rv_ingest_t *in, rv_ingest_stats_t *out);

#endif
