#ifndef RV_METRICS_H
#define RV_METRICS_H
/* A small Prometheus metrics registry: counters, gauges and histograms with
 * fixed buckets, each a family of series told apart by label values, written
 * out in the text exposition format 0.0.4.
 *
 * No globals: a stage is handed a registry (or NULL for none) and looks up the
 * series it updates once, at start; updating a series is lock-free (atomics),
 * so any thread may update any series. Every update function accepts NULL and
 * does nothing, so code can update unconditionally whether or not it was given
 * a registry.
 *
 * Families and series are written in the order they were first created, which
 * makes the output deterministic. Series live as long as the registry. */
#include <stddef.h>
#include <stdint.h>

#include "rv_buf.h"
#include "rv_err.h"

typedef struct rv_metrics rv_metrics_t; /* the registry */
typedef struct rv_series rv_series_t;   /* one series: a counter, gauge or histogram */

typedef enum { RV_SERIES_COUNTER = 0, RV_SERIES_GAUGE = 1, RV_SERIES_HISTOGRAM = 2 } rv_series_type_t;

/* The content type of rv_metrics_write's output, for an HTTP response. */
#define RV_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* At most this many labels per series and buckets per histogram. */
#define RV_METRICS_MAX_LABELS 4
#define RV_METRICS_MAX_BUCKETS 32

/* Returns an empty registry, or NULL when out of memory. */
rv_metrics_t *rv_metrics_new(void);
/* Frees the registry and every series; pointers to its series become invalid.
 * No other thread may use it meanwhile. NULL is a no-op. */
void rv_metrics_destroy(rv_metrics_t *m);

/* Returns the series of family `name` with the given labels, creating the
 * family (with `help`) and the series on first use; later calls with the same
 * name and label values return the same series. labels is NULL (no labels) or
 * a NULL-terminated list of name, value pairs: {"reason", "wrong_dim", NULL}.
 * Label names must be the same, in the same order, for every series of a
 * family. Histograms take their bucket upper bounds (strictly increasing,
 * finite; +Inf is implied) on creation; later calls must pass the same ones.
 * Returns NULL when m is NULL, out of memory, or on a misuse: an invalid metric
 * or label name (Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*, labels without ':'), a
 * name already registered with another type, other label names or other
 * buckets, or too many labels or buckets. Thread: any (takes the registry lock). */
rv_series_t *rv_metrics_counter(rv_metrics_t *m, const char *name, const char *help, const char *const *labels);
rv_series_t *rv_metrics_gauge(rv_metrics_t *m, const char *name, const char *help, const char *const *labels);
rv_series_t *rv_metrics_histogram(rv_metrics_t *m, const char *name, const char *help, const double *bounds,
                                  size_t n_bounds, const char *const *labels);

/* Updates (lock-free; any thread; NULL: no-op). A counter only goes up. */
void rv_counter_add(rv_series_t *c, uint64_t n);
void rv_gauge_set(rv_series_t *g, double v);
void rv_gauge_add(rv_series_t *g, double delta);
void rv_histogram_observe(rv_series_t *h, double v);

/* Reads (any thread; for tests and progress lines). 0 for NULL or another type. */
uint64_t rv_counter_value(const rv_series_t *c);
double rv_gauge_value(const rv_series_t *g);
/* Observations so far, and their sum. */
uint64_t rv_histogram_count(const rv_series_t *h);
double rv_histogram_sum(const rv_series_t *h);

/* Appends every family in the text exposition format 0.0.4 to out: "# HELP"
 * and "# TYPE" lines, then one line per series (a histogram: its cumulative
 * _bucket lines with le="...", then _sum and _count). Label values are escaped
 * (\\, \" and \n), help text too (\\ and \n). Values read while other threads
 * update are each current, not a snapshot of all at one instant.
 * Returns RV_ERR_NOMEM (out may hold part of the text). Thread: any. */
rv_err_t rv_metrics_write(rv_metrics_t *m, rv_buf_t *out);

#endif
