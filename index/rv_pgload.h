#ifndef RV_PGLOAD_H
#define RV_PGLOAD_H
/* A replica's store of record in PostgreSQL (rv_replica_store_t): bootstrap
 * from a collection's table and its SQ8 quantizer from rv_quantizers, as
 * ingest wrote them (ingest/rv_pgschema.c has the layout). Its own target
 * (rv_index_pgload, libpq): the engine and serve link no libpq.
 *
 * load(): rv_replica_load_mark_end, then one REPEATABLE READ READ ONLY
 * transaction reading the collection's latest SQ8 quantizer, the committed
 * source positions (rv_offsets of consumer group rv-ingest-<collection> on
 * the source topic) and every row with deleted_at IS NULL by a binary COPY,
 * passed with its stored version, metadata, float vector (if stored) and SQ8
 * code (as stored: no re-quantizing). RV_ERR_NOT_FOUND when the table does
 * not exist. A row the replica refuses (wrong dim, bad code) is skipped and
 * counted (logged once per load); running out of memory fails the load.
 *
 * fresh_log: the source log started over since the rows were written (the
 * embedded broker: its log is empty on every run and ingest forgets its
 * offsets). The stored versions then belong to the old log and would make
 * the new log's changes of the same ids look older, so every row is loaded
 * with version (its source partition, -1), older than any change of the new
 * log, and no positions are loaded.
 *
 * Threads: load and quantizer open a connection of their own per call, so
 * one rv_pgload_t may serve several replicas (shards) at once. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"
#include "rv_replica.h"

typedef struct rv_pgload rv_pgload_t;

typedef struct rv_pgload_conf {
  char conninfo[1024];                /* libpq connection string */
  char collection[RV_NAME_MAX];       /* the collection, which is also its table's name */
  char source_topic[RV_TOPIC_MAX];    /* the topic whose committed offsets rv_offsets keeps */
  int fresh_log;                      /* 1: see above */
} rv_pgload_conf_t;

typedef struct rv_pgload_stats {
  uint64_t loads;        /* load() calls that returned RV_OK */
  uint64_t rows;         /* rows passed to the replica by the last successful load */
  uint64_t skipped;      /* rows the replica refused, over every load */
  int64_t last_load_ms;  /* duration of the last successful load, -1 none */
} rv_pgload_stats_t;

/* Copies conf. Connects to nothing yet. NULL with errstr set on a bad conf
 * (empty conninfo or collection) or no memory. */
rv_pgload_t *rv_pgload_new(const rv_pgload_conf_t *conf, char *errstr, size_t errstr_size);

/* Frees. The replicas using it must be destroyed first. NULL is a no-op. */
void rv_pgload_destroy(rv_pgload_t *p);

/* The store callbacks over p, for rv_replica_conf_t.store (p must outlive
 * every replica it is given to). */
rv_replica_store_t rv_pgload_store(rv_pgload_t *p);

/* The rv_replica_store_t callbacks themselves (ctx = the rv_pgload_t). */
rv_err_t rv_pgload_load(void *ctx, rv_replica_load_t *load, char *errstr, size_t errstr_size);
rv_err_t rv_pgload_quantizer(void *ctx, int32_t version, void **params, size_t *len, char *errstr,
                             size_t errstr_size);

void rv_pgload_stats(rv_pgload_t *p, rv_pgload_stats_t *out); /* Thread: any */

#endif
