#include "rv_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct family family_t;

struct rv_series {
  family_t *fam;
  char *label_values[RV_METRICS_MAX_LABELS];
  rv_series_t *next;               /* next series of the family, in creation order */
  _Atomic uint64_t value;          /* counter: the count; gauge: the bits of a double */
  _Atomic uint64_t *buckets;       /* histogram: n_bounds + 1 non-cumulative counts (the last: above every bound) */
  _Atomic uint64_t sum_bits;       /* histogram: the bits of the double sum */
};

struct family {
  char *name;
  char *help;
  rv_series_type_t type;
  int n_labels;
  char *label_names[RV_METRICS_MAX_LABELS];
  double bounds[RV_METRICS_MAX_BUCKETS];
  size_t n_bounds;
  rv_series_t *first, *last;
  family_t *next;
};

struct rv_metrics {
  pthread_mutex_t lock; /* guards the family and series lists (not the values) */
  family_t *first, *last;
};

static uint64_t bits_of(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double double_of(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

rv_metrics_t *rv_metrics_new(void) {
  rv_metrics_t *m = calloc(1, sizeof *m);
  if (m) pthread_mutex_init(&m->lock, NULL);
  return m;
}

static void series_free(rv_series_t *s) {
  for (int i = 0; i < RV_METRICS_MAX_LABELS; i++) free(s->label_values[i]);
  free((void *)s->buckets);
  free(s);
}

static void family_free(family_t *f) {
  for (rv_series_t *s = f->first, *next; s; s = next) {
    next = s->next;
    series_free(s);
  }
  for (int i = 0; i < f->n_labels; i++) free(f->label_names[i]);
  free(f->name);
  free(f->help);
  free(f);
}

void rv_metrics_destroy(rv_metrics_t *m) {
  if (!m) return;
  for (family_t *f = m->first, *next; f; f = next) {
    next = f->next;
    family_free(f);
  }
  pthread_mutex_destroy(&m->lock);
  free(m);
}

/* Prometheus: metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names the same without ':'. */
static int valid_name(const char *s, int colon) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
             (p != s && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static int count_labels(const char *const *labels) {
  int n = 0;
  if (!labels) return 0;
  while (labels[2 * n]) {
    if (!labels[2 * n + 1]) return -1; /* a name without a value */
    if (++n > RV_METRICS_MAX_LABELS) return -1;
  }
  return n;
}

static family_t *find_family(rv_metrics_t *m, const char *name) {
  for (family_t *f = m->first; f; f = f->next)
    if (!strcmp(f->name, name)) return f;
  return NULL;
}

/* Checks that an existing family matches what this call asks for. */
static int family_matches(const family_t *f, rv_series_type_t type, const char *const *labels, int n_labels,
                          const double *bounds, size_t n_bounds) {
  if (f->type != type || f->n_labels != n_labels) return 0;
  for (int i = 0; i < n_labels; i++)
    if (strcmp(f->label_names[i], labels[2 * i])) return 0;
  if (type == RV_SERIES_HISTOGRAM) {
    if (f->n_bounds != n_bounds) return 0;
    for (size_t i = 0; i < n_bounds; i++)
      if (f->bounds[i] != bounds[i]) return 0;
  }
  return 1;
}

static family_t *new_family(rv_metrics_t *m, rv_series_type_t type, const char *name, const char *help,
                            const char *const *labels, int n_labels, const double *bounds, size_t n_bounds) {
  family_t *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->type = type;
  f->name = strdup(name);
  f->help = strdup(help ? help : "");
  int ok = f->name && f->help;
  for (int i = 0; ok && i < n_labels; i++) ok = (f->label_names[f->n_labels++] = strdup(labels[2 * i])) != NULL;
  if (!ok) {
    family_free(f);
    return NULL;
  }
  if (n_bounds) memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
  f->n_bounds = n_bounds;
  if (m->last) m->last->next = f;
  else m->first = f;
  m->last = f;
  return f;
}

static rv_series_t *find_series(family_t *f, const char *const *labels) {
  for (rv_series_t *s = f->first; s; s = s->next) {
    int same = 1;
    for (int i = 0; same && i < f->n_labels; i++) same = !strcmp(s->label_values[i], labels[2 * i + 1]);
    if (same) return s;
  }
  return NULL;
}

static rv_series_t *new_series(family_t *f, const char *const *labels) {
  rv_series_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->fam = f;
  int ok = 1;
  for (int i = 0; ok && i < f->n_labels; i++) ok = (s->label_values[i] = strdup(labels[2 * i + 1])) != NULL;
  if (ok && f->type == RV_SERIES_HISTOGRAM) {
    s->buckets = calloc(f->n_bounds + 1, sizeof *s->buckets);
    ok = s->buckets != NULL;
  }
  if (!ok) {
    series_free(s);
    return NULL;
  }
  atomic_init(&s->value, f->type == RV_SERIES_GAUGE ? bits_of(0.0) : 0);
  atomic_init(&s->sum_bits, bits_of(0.0));
  if (f->last) f->last->next = s;
  else f->first = s;
  f->last = s;
  return s;
}

static rv_series_t *get_series(rv_metrics_t *m, rv_series_type_t type, const char *name, const char *help,
                               const double *bounds, size_t n_bounds, const char *const *labels) {
  if (!m || !valid_name(name, 1)) return NULL;
  int n_labels = count_labels(labels);
  if (n_labels < 0) return NULL;
  for (int i = 0; i < n_labels; i++)
    if (!valid_name(labels[2 * i], 0) || !strcmp(labels[2 * i], "le")) return NULL;
  if (type == RV_SERIES_HISTOGRAM) {
    if (n_bounds > RV_METRICS_MAX_BUCKETS || (n_bounds && !bounds)) return NULL;
    for (size_t i = 0; i < n_bounds; i++)
      if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) return NULL;
  }
  pthread_mutex_lock(&m->lock);
  rv_series_t *s = NULL;
  family_t *f = find_family(m, name);
  if (f) {
    if (family_matches(f, type, labels, n_labels, bounds, n_bounds)) s = find_series(f, labels);
    else f = NULL; /* misuse: leave s NULL */
  } else {
    f = new_family(m, type, name, help, labels, n_labels, bounds, n_bounds);
  }
  if (f && !s) s = new_series(f, labels);
  pthread_mutex_unlock(&m->lock);
  return s;
}

rv_series_t *rv_metrics_counter(rv_metrics_t *m, const char *name, const char *help, const char *const *labels) {
  return get_series(m, RV_SERIES_COUNTER, name, help, NULL, 0, labels);
}

rv_series_t *rv_metrics_gauge(rv_metrics_t *m, const char *name, const char *help, const char *const *labels) {
  return get_series(m, RV_SERIES_GAUGE, name, help, NULL, 0, labels);
}

rv_series_t *rv_metrics_histogram(rv_metrics_t *m, const char *name, const char *help, const double *bounds,
                                  size_t n_bounds, const char *const *labels) {
  return get_series(m, RV_SERIES_HISTOGRAM, name, help, bounds, n_bounds, labels);
}

/* ---- updates ---- */

static void add_double(_Atomic uint64_t *bits, double delta) {
  uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(bits, &old, bits_of(double_of(old) + delta), memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

void rv_counter_add(rv_series_t *c, uint64_t n) {
  if (c && c->fam->type == RV_SERIES_COUNTER) atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

void rv_gauge_set(rv_series_t *g, double v) {
  if (g && g->fam->type == RV_SERIES_GAUGE) atomic_store_explicit(&g->value, bits_of(v), memory_order_relaxed);
}

void rv_gauge_add(rv_series_t *g, double delta) {
  if (g && g->fam->type == RV_SERIES_GAUGE) add_double(&g->value, delta);
}

void rv_histogram_observe(rv_series_t *h, double v) {
  if (!h || h->fam->type != RV_SERIES_HISTOGRAM) return;
  size_t i = 0;
  while (i < h->fam->n_bounds && !(v <= h->fam->bounds[i])) i++; /* NaN lands above every bound */
  atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
  add_double(&h->sum_bits, v);
}

uint64_t rv_counter_value(const rv_series_t *c) {
  return c && c->fam->type == RV_SERIES_COUNTER ? atomic_load(&((rv_series_t *)c)->value) : 0;
}

double rv_gauge_value(const rv_series_t *g) {
  return g && g->fam->type == RV_SERIES_GAUGE ? double_of(atomic_load(&((rv_series_t *)g)->value)) : 0.0;
}

uint64_t rv_histogram_count(const rv_series_t *h) {
  if (!h || h->fam->type != RV_SERIES_HISTOGRAM) return 0;
  uint64_t n = 0;
  for (size_t i = 0; i <= h->fam->n_bounds; i++) n += atomic_load(&h->buckets[i]);
  return n;
}

double rv_histogram_sum(const rv_series_t *h) {
  return h && h->fam->type == RV_SERIES_HISTOGRAM ? double_of(atomic_load(&((rv_series_t *)h)->sum_bits)) : 0.0;
}

/* ---- exposition ---- */

/* The shortest text that reads back as d; Prometheus spellings for the rest. */
static void format_double(char *out, size_t n, double d) {
  if (isnan(d)) {
    snprintf(out, n, "NaN");
    return;
  }
  if (isinf(d)) {
    snprintf(out, n, d > 0 ? "+Inf" : "-Inf");
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(out, n, "%.*g", prec, d);
    if (strtod(out, NULL) == d) return;
  }
}

/* Appends s with the escapes of `what`: help text escapes \ and newline; label values also ". */
static rv_err_t append_escaped(rv_buf_t *out, const char *s, int quote) {
  rv_err_t err = RV_OK;
  for (const char *p = s; *p && !err; p++) {
    if (*p == '\\') err = rv_buf_append(out, "\\\\", 2);
    else if (*p == '\n') err = rv_buf_append(out, "\\n", 2);
    else if (quote && *p == '"') err = rv_buf_append(out, "\\\"", 2);
    else err = rv_buf_append(out, p, 1);
  }
  return err;
}

/* Appends name{labels[,le="..."]} (no braces when there is nothing in them). */
static rv_err_t append_series_name(rv_buf_t *out, const family_t *f, const rv_series_t *s, const char *suffix,
                                   const char *le) {
  rv_err_t err = rv_buf_appendf(out, "%s%s", f->name, suffix);
  if (err || (!f->n_labels && !le)) return err;
  err = rv_buf_append(out, "{", 1);
  for (int i = 0; !err && i < f->n_labels; i++) {
    err = rv_buf_appendf(out, "%s%s=\"", i ? "," : "", f->label_names[i]);
    if (!err) err = append_escaped(out, s->label_values[i], 1);
    if (!err) err = rv_buf_append(out, "\"", 1);
  }
  if (!err && le) err = rv_buf_appendf(out, "%sle=\"%s\"", f->n_labels ? "," : "", le);
  return err ? err : rv_buf_append(out, "}", 1);
}

static rv_err_t write_series(rv_buf_t *out, const family_t *f, rv_series_t *s) {
  char num[64];
  rv_err_t err;
  if (f->type == RV_SERIES_COUNTER) {
    if ((err = append_series_name(out, f, s, "", NULL))) return err;
    return rv_buf_appendf(out, " %llu\n", (unsigned long long)atomic_load(&s->value));
  }
  if (f->type == RV_SERIES_GAUGE) {
    if ((err = append_series_name(out, f, s, "", NULL))) return err;
    format_double(num, sizeof num, double_of(atomic_load(&s->value)));
    return rv_buf_appendf(out, " %s\n", num);
  }
  /* _count is the +Inf bucket, so the two always agree even while observations arrive. */
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= f->n_bounds; i++) {
    cumulative += atomic_load(&s->buckets[i]);
    if (i < f->n_bounds) format_double(num, sizeof num, f->bounds[i]);
    else snprintf(num, sizeof num, "+Inf");
    if ((err = append_series_name(out, f, s, "_bucket", num)) ||
        (err = rv_buf_appendf(out, " %llu\n", (unsigned long long)cumulative)))
      return err;
  }
  format_double(num, sizeof num, double_of(atomic_load(&s->sum_bits)));
  if ((err = append_series_name(out, f, s, "_sum", NULL)) || (err = rv_buf_appendf(out, " %s\n", num)) ||
      (err = append_series_name(out, f, s, "_count", NULL)))
    return err;
  return rv_buf_appendf(out, " %llu\n", (unsigned long long)cumulative);
}

rv_err_t rv_metrics_write(rv_metrics_t *m, rv_buf_t *out) {
  static const char *const type_names[] = {"counter", "gauge", "histogram"};
  rv_err_t err = RV_OK;
  pthread_mutex_lock(&m->lock);
  for (family_t *f = m->first; f && !err; f = f->next) {
    err = rv_buf_appendf(out, "# HELP %s ", f->name);
    if (!err) err = append_escaped(out, f->help, 0);
    if (!err) err = rv_buf_appendf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
    for (rv_series_t *s = f->first; s && !err; s = s->next) err = write_series(out, f, s);
  }
  pthread_mutex_unlock(&m->lock);
  return err;
}
