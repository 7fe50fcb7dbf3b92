#include "rv_ingest_metrics.h"

#include <stdio.h>
#include <string.h>

static const double batch_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

void rv_ingest_metrics_init(rv_ingest_metrics_t *m, rv_metrics_t *reg, const char *collection) {
  memset(m, 0, sizeof *m);
  m->reg = reg;
  snprintf(m->collection, sizeof m->collection, "%s", collection);
  if (!reg) return;
  const char *const col[] = {"collection", m->collection, NULL};
  m->consumed = rv_metrics_counter(reg, "rv_ingest_records_consumed_total", "Records read from the source topic.", col);
  m->ingested = rv_metrics_counter(reg, "rv_ingest_records_ingested_total",
                                   "Records committed to PostgreSQL (with their source offsets).", col);
  for (int r = RV_REJECT_NONE + 1; r < RV_REJECT_COUNT; r++)
    m->dead_lettered[r] = rv_metrics_counter(
        reg, "rv_ingest_records_dead_lettered_total", "Records sent to the DLQ topic and confirmed, by reason.",
        (const char *const[]){"collection", m->collection, "reason", rv_reject_code((rv_reject_t)r), NULL});
  m->batch_seconds = rv_metrics_histogram(reg, "rv_ingest_batch_seconds",
                                          "Time to write one batch to PostgreSQL, retries included.", batch_bounds,
                                          sizeof batch_bounds / sizeof batch_bounds[0], col);
  static const char *const help = "Operations retried after a failure (pg: PostgreSQL; kafka: DLQ or changelog "
                                  "delivery; registry: schema registry unreachable).";
  m->retries_pg = rv_metrics_counter(reg, "rv_ingest_retries_total", help,
                                     (const char *const[]){"collection", m->collection, "what", "pg", NULL});
  m->retries_kafka = rv_metrics_counter(reg, "rv_ingest_retries_total", help,
                                        (const char *const[]){"collection", m->collection, "what", "kafka", NULL});
  m->retries_registry = rv_metrics_counter(
      reg, "rv_ingest_retries_total", help, (const char *const[]){"collection", m->collection, "what", "registry", NULL});
}

void rv_ingest_metrics_rejected(rv_ingest_metrics_t *m, rv_reject_t r) {
  if ((int)r > 0 && (int)r < RV_REJECT_COUNT) m->pending[r]++;
}

void rv_ingest_metrics_committed(rv_ingest_metrics_t *m, uint64_t ingested, double seconds) {
  rv_counter_add(m->ingested, ingested);
  for (int r = 0; r < RV_REJECT_COUNT; r++) {
    if (m->pending[r]) rv_counter_add(m->dead_lettered[r], m->pending[r]);
    m->pending[r] = 0;
  }
  rv_histogram_observe(m->batch_seconds, seconds);
}

void rv_ingest_metrics_dropped(rv_ingest_metrics_t *m) { memset(m->pending, 0, sizeof m->pending); }

void rv_ingest_metrics_lag(rv_ingest_metrics_t *m, int32_t partition, int64_t lag) {
  if (!m->reg || partition < 0 || partition >= RV_INGEST_LAG_PARTITIONS) return;
  if (!m->lag[partition]) {
    char p[16];
    snprintf(p, sizeof p, "%d", (int)partition);
    m->lag[partition] = rv_metrics_gauge(m->reg, "rv_ingest_consumer_lag",
                                         "Messages in the partition after the last committed offset.",
                                         (const char *const[]){"collection", m->collection, "partition", p, NULL});
  }
  rv_gauge_set(m->lag[partition], (double)(lag < 0 ? 0 : lag));
}
