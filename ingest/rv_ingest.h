#ifndef RV_INGEST_H
#define RV_INGEST_H
/* Ingest: consumes <collection>.vectors (consumer group rv-ingest-<collection>),
 * decodes and validates each record, writes batches to the collection's
 * monthly-partitioned PostgreSQL table together with the consumed offsets in
 * one transaction, sends bad records to <collection>.dlq with the reason in
 * headers, and after each commit publishes the batch's changes to
 * <collection>.changelog through a transactional outbox (rv_outbox.h): the
 * changes are written in the batch's transaction and published after its
 * COMMIT, so a change is never published for rows that were not committed,
 * and a crash after the COMMIT re-publishes them instead of losing them.
 * After each batch's changes are queued, and after the outbox of newly
 * assigned partitions was republished, one position marker (rv_record.h)
 * goes to every changelog partition on the same producer, listing the
 * published next offset of each owned source partition (read-your-writes).
 * A batch closes at batch_rows, at batch_ms, or as soon as the consumer has
 * nothing more waiting. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"
#include "rv_metrics.h"

typedef struct rv_ingest rv_ingest_t;

/* Rows PostgreSQL refuses. A batch whose write fails with a data error
 * (rv_pg_is_data_error: SQLSTATE class 22 or 23, or P0001 raised by a
 * trigger) this many times in a row is searched for the rows refused on
 * their own (rv_pgwriter_isolate: bisection under savepoints in a
 * transaction that is rolled back). Every source record such a row stands
 * for goes to the DLQ with reason rejected_by_database, rv.error.message
 * "SQLSTATE <state>: <primary message>" and rv.error.sqlstate; the rest of
 * the batch commits once, with all its offsets, in one transaction as
 * usual. Other errors (connection, serialization, deadlock, ...) are
 * retried as before, without limit. A COMMIT in flight that fails with a
 * data error makes ingest read the batch again and wait for each COMMIT
 * until one succeeds, so the failures of that batch count. */
#define RV_INGEST_DATA_RETRIES 3

typedef struct rv_ingest_conf {
  char brokers[1024];               /* Kafka bootstrap list */
  char pg_conninfo[1024];           /* libpq connection string */
  int pgbouncer;                    /* 1: use no named prepared statements */
  rv_collection_conf_t collection;  /* one ingest per collection */
  int batch_rows;                   /* close a batch at this many rows (default 5000) */
  int batch_ms;                     /* ... or after this many ms (default 50) */
  int max_metadata_bytes;           /* default 65536 */
  int session_timeout_ms;           /* consumer group session timeout: how soon a dead ingest's
                                       partitions move on (default 10000) */
  int max_unconfirmed;              /* committed batches whose changelog Kafka has not acknowledged yet
                                       before ingest pauses for it (default 8) */
  int sq8_train;                    /* SQ8 trained from the first this many vectors (default 1000; rv_quant.h) */
  int sq8_train_wait_ms;            /* ... or from fewer, once the first batch waited this long (default 5000) */
  char sq8_params[512];             /* or read from this SQ8 parameter file ("" = train) */
  int codes_only;                   /* 1: store the SQ8 code without the raw float32 vector (default 0) */
  int pq_m;                         /* PQ sub-quantizers, also written per row (pq_code); 0 = no PQ
                                       (default); must divide collection.dim (rv_quant.h) */
  int partman;                      /* rv_partman_mode_t for a new table: 0 auto (pg_partman if available), 1 off */
  int premake;                      /* monthly partitions made ahead (default 3) */
  char schema_registry[1024];       /* writer schemas of Confluent frames by id: an http(s):// Schema
                                       Registry URL or a directory of <id>.avsc ("" = none: only
                                       collection.schema_id is accepted); see rv_registry.h */
  int registry_timeout_ms;          /* one schema fetch (default 5000) */
  rv_metrics_t *metrics;            /* borrowed, must outlive the ingest; NULL = no metrics
                                       (the series are in rv_ingest_metrics.h) */
} rv_ingest_conf_t;

typedef struct rv_ingest_stats {
  uint64_t consumed;      /* source records read from Kafka, each once: a record read again (after a failed
                             commit, a fence or its partition coming back to this ingest) is not counted
                             again */
  uint64_t ingested;      /* records committed to PostgreSQL */
  uint64_t dead_lettered; /* records sent to the DLQ */
  uint64_t changes;       /* changes committed: rows written (a batch keeps one per id, so a record
                             replaced later in its batch is ingested but is no change of its own) */
  uint64_t batches;       /* committed transactions */
  uint64_t retries;       /* retried PostgreSQL or Kafka operations */
  uint64_t lost;          /* source offsets deleted from the log before ingest read them */
  uint64_t published;     /* changelog records confirmed by Kafka (drained ones included) */
  uint64_t drained;       /* of those, records found in the outbox (left by an earlier run or
                             another consumer between its COMMIT and its publication) */
  uint64_t markers;       /* position markers queued (each to every changelog partition) */
} rv_ingest_stats_t;

/* Fills unset (zero) fields of conf with defaults. */
void rv_ingest_conf_defaults(rv_ingest_conf_t *conf);

/* Creates the collection's tables if missing (idempotent; safe to run from
 * several processes). Connects with conf->pg_conninfo. */
rv_err_t rv_ingest_migrate(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size);

/* Deletes the stored source offsets of conf's collection (and the unpublished
 * changes in its outbox, whose versions are offsets of the old log), for a source topic
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

/* Finishes and commits the batch in progress, publishes its changes (if
 * Kafka stays away for 10 s they stay in the outbox for the next owner),
 * leaves the group, joins the thread. Safe to call more than once. */
void rv_ingest_stop(rv_ingest_t *in);

/* Stops (if running) and frees. NULL is a no-op. */
void rv_ingest_destroy(rv_ingest_t *in);

/* Thread: any. */
void rv_ingest_stats(rv_ingest_t *in, rv_ingest_stats_t *out);

#endif
