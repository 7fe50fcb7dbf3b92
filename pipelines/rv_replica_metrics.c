#include "rv_replica_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARTS 256

enum { S_APPLIED, S_LAG_RECORDS, S_LAG_SECONDS, S_EVENT_LAG, S_RATE, S_BOOT_SECONDS, S_READY, S_STARTED,
       S_REBOOTS, S_TOMBSTONES, S_SNAP_PAUSE, S_SNAP_SECONDS, S_COUNT, S_SKIPPED, N_SERIES };

struct rv_replica_metrics {
  rv_metrics_t *reg;
  rv_replica_t *r;
  char region[RV_NAME_MAX], collection[RV_NAME_MAX], shard[32];
  rv_series_t *s[N_SERIES];
  rv_series_t *boot[4];              /* rv_replica_bootstrap_source{source=none|snapshot|postgres|replay} */
  rv_series_t *part_lag[MAX_PARTS];  /* per changelog partition, created on first sight */
  rv_series_t *part_lag_s[MAX_PARTS];
  uint64_t applied, rebootstraps, skipped; /* last values added to the counters */
};

rv_replica_metrics_t *rv_replica_metrics_new(rv_metrics_t *reg, rv_replica_t *r, const char *region,
                                             const char *collection, int shard_index, int shard_count) {
  if (!reg) return NULL;
  rv_replica_metrics_t *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->reg = reg;
  m->r = r;
  snprintf(m->region, sizeof m->region, "%s", region);
  snprintf(m->collection, sizeof m->collection, "%s", collection);
  snprintf(m->shard, sizeof m->shard, "%d/%d", shard_index, shard_count > 0 ? shard_count : 1);
  const char *l[] = {"region", m->region, "collection", m->collection, "shard", m->shard, NULL};
  static const struct {
    const char *name, *help;
    int counter;
  } def[N_SERIES] = {
      [S_APPLIED] = {"rv_replica_applied_total", "Changelog changes applied (including ignored duplicates)", 1},
      [S_LAG_RECORDS] = {"rv_replica_lag_records", "Changelog records known to exist but not yet applied (-1 unknown)", 0},
      [S_LAG_SECONDS] = {"rv_replica_lag_seconds",
                         "Now minus the changelog timestamp of the oldest record not applied, max over partitions "
                         "(0 caught up, -1 unknown)", 0},
      [S_EVENT_LAG] = {"rv_replica_event_lag_seconds",
                       "When the last change was applied, minus its source event time; max over partitions (-1 none)", 0},
      [S_RATE] = {"rv_replica_applied_per_second", "Changes applied per second over the last few seconds", 0},
      [S_BOOT_SECONDS] = {"rv_replica_bootstrap_seconds", "How long the current state's bootstrap took (-1 running)", 0},
      [S_READY] = {"rv_replica_ready", "1 when bootstrapped and lag under index.max_lag_ms (as /ready)", 0},
      [S_STARTED] = {"rv_replica_bootstrapped", "1 once the state is loaded and catch-up started (as /startup)", 0},
      [S_REBOOTS] = {"rv_replica_rebootstraps_total", "Gaps or resets of the changelog that made the replica bootstrap again", 1},
      [S_TOMBSTONES] = {"rv_replica_tombstones", "Version entries of deleted ids still kept", 0},
      [S_SNAP_PAUSE] = {"rv_replica_snapshot_pause_seconds", "How long the last snapshot held applies off", 0},
      [S_SNAP_SECONDS] = {"rv_replica_snapshot_seconds", "How long the last snapshot took to write", 0},
      [S_COUNT] = {"rv_replica_vectors", "Live vectors in the replica", 0},
      [S_SKIPPED] = {"rv_replica_skipped_total", "Changelog records the replica could not decode or apply", 1},
  };
  for (int i = 0; i < N_SERIES; i++)
    m->s[i] = def[i].counter ? rv_metrics_counter(reg, def[i].name, def[i].help, l)
                             : rv_metrics_gauge(reg, def[i].name, def[i].help, l);
  for (int b = 0; b < 4; b++) {
    const char *lb[] = {"region", m->region, "collection", m->collection, "shard", m->shard,
                        "source", rv_replica_boot_name((rv_replica_boot_t)b), NULL};
    m->boot[b] = rv_metrics_gauge(reg, "rv_replica_bootstrap_source",
                                  "1 for where the current state came from: none, snapshot, postgres or replay", lb);
  }
  return m;
}

void rv_replica_metrics_update(rv_replica_metrics_t *m) {
  if (!m) return;
  rv_replica_stats_t st;
  rv_replica_stats(m->r, &st);
  rv_counter_add(m->s[S_APPLIED], st.applied - m->applied);
  m->applied = st.applied;
  rv_counter_add(m->s[S_REBOOTS], st.rebootstraps - m->rebootstraps);
  m->rebootstraps = st.rebootstraps;
  rv_counter_add(m->s[S_SKIPPED], st.skipped - m->skipped);
  m->skipped = st.skipped;
  rv_gauge_set(m->s[S_LAG_RECORDS], (double)st.lag);
  rv_gauge_set(m->s[S_LAG_SECONDS], st.lag_ms < 0 ? -1.0 : (double)st.lag_ms / 1000.0);
  rv_gauge_set(m->s[S_BOOT_SECONDS], st.boot_ms < 0 ? -1.0 : (double)st.boot_ms / 1000.0);
  rv_gauge_set(m->s[S_READY], rv_replica_ready(m->r));
  rv_gauge_set(m->s[S_STARTED], st.bootstrapped);
  rv_gauge_set(m->s[S_TOMBSTONES], (double)st.tombstones);
  rv_gauge_set(m->s[S_SNAP_PAUSE], (double)st.snapshot_pause_ms / 1000.0);
  rv_gauge_set(m->s[S_SNAP_SECONDS], (double)st.snapshot_ms / 1000.0);
  rv_gauge_set(m->s[S_COUNT], (double)st.count);
  for (int b = 0; b < 4; b++) rv_gauge_set(m->boot[b], (int)st.boot == b);

  rv_replica_part_stats_t ps[MAX_PARTS];
  int n = rv_replica_partition_stats(m->r, ps, MAX_PARTS);
  if (n > MAX_PARTS) n = MAX_PARTS;
  double rate = 0;
  int64_t event_lag = -1;
  for (int i = 0; i < n; i++) {
    rate += ps[i].applied_per_s;
    if (ps[i].event_lag_ms > event_lag) event_lag = ps[i].event_lag_ms;
    int p = ps[i].partition;
    if (p < 0 || p >= MAX_PARTS) continue;
    if (!m->part_lag[p]) {
      char part[16];
      snprintf(part, sizeof part, "%d", p);
      const char *lp[] = {"region", m->region, "collection", m->collection, "shard", m->shard, "partition", part, NULL};
      m->part_lag[p] = rv_metrics_gauge(m->reg, "rv_replica_partition_lag_records",
                                        "Changelog records of this partition not yet applied (-1 unknown)", lp);
      m->part_lag_s[p] = rv_metrics_gauge(m->reg, "rv_replica_partition_lag_seconds",
                                          "Lag of this changelog partition in seconds (0 caught up, -1 unknown)", lp);
    }
    rv_gauge_set(m->part_lag[p], (double)ps[i].lag_records);
    rv_gauge_set(m->part_lag_s[p], ps[i].lag_ms < 0 ? -1.0 : (double)ps[i].lag_ms / 1000.0);
  }
  rv_gauge_set(m->s[S_RATE], rate);
  rv_gauge_set(m->s[S_EVENT_LAG], event_lag < 0 ? -1.0 : (double)event_lag / 1000.0);
}

void rv_replica_metrics_destroy(rv_replica_metrics_t *m) { free(m); }
