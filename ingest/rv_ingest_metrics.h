#ifndef RV_INGEST_METRICS_H
#define RV_INGEST_METRICS_H
/* The Prometheus series of one ingest (one collection), in the registry the
 * ingest was handed (rv_metrics.h); every series has a collection="<name>" label:
 *   rv_ingest_records_consumed_total                 records read from Kafka (a re-read counts once)
 *   rv_ingest_records_ingested_total                 records committed to PostgreSQL
 *   rv_ingest_records_dead_lettered_total{reason=}   records whose dead letter was confirmed, by rv_reject_code
 *   rv_ingest_batch_seconds                          histogram: writing one batch, retries included
 *   rv_ingest_consumer_lag{partition=}               high watermark minus the committed offset
 *   rv_ingest_retries_total{what="pg|kafka|registry"} operations retried after a failure
 * With no registry every series is NULL and every update a no-op.
 * Thread: the ingest thread updates; any thread may read the registry. */
#include <stdint.h>

#include "rv_collection.h"
#include "rv_metrics.h"
#include "rv_validate.h"

#define RV_INGEST_LAG_PARTITIONS 256 /* partitions with a lag series (topology limit) */

typedef struct rv_ingest_metrics {
  rv_metrics_t *reg; /* borrowed; NULL: no metrics */
  char collection[RV_NAME_MAX];
  rv_series_t *consumed, *ingested, *batch_seconds;
  rv_series_t *dead_lettered[RV_REJECT_COUNT];
  rv_series_t *retries_pg, *retries_kafka, *retries_registry;
  rv_series_t *lag[RV_INGEST_LAG_PARTITIONS]; /* made on first use */
  uint64_t pending[RV_REJECT_COUNT];          /* rejects of the batch in progress, counted when it commits */
} rv_ingest_metrics_t;

/* Registers the series (reg NULL: all stay NULL). */
void rv_ingest_metrics_init(rv_ingest_metrics_t *m, rv_metrics_t *reg, const char *collection);
/* A record of the batch in progress was dead-lettered for reason r. */
void rv_ingest_metrics_rejected(rv_ingest_metrics_t *m, rv_reject_t r);
/* The batch in progress committed: its records and dead letters count, and how long writing it took. */
void rv_ingest_metrics_committed(rv_ingest_metrics_t *m, uint64_t ingested, double seconds);
/* The batch in progress was dropped (it will be read again): its dead letters do not count yet. */
void rv_ingest_metrics_dropped(rv_ingest_metrics_t *m);
void rv_ingest_metrics_lag(rv_ingest_metrics_t *m, int32_t partition, int64_t lag);

#endif
