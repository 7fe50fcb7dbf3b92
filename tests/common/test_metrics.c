/* Unit tests of common/rv_metrics: the exact text exposition (names, labels,
 * escaping, histogram buckets, _sum and _count), misuse, NULL safety, and
 * counting from several threads at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "rv_metrics.h"

/* Writes m into a NUL-terminated string (rv_buf keeps a NUL after appendf text). */
static char *expose(rv_metrics_t *m, rv_buf_t *b) {
  rv_buf_reset(b);
  assert_int_equal(RV_OK, rv_metrics_write(m, b));
  assert_int_equal(RV_OK, rv_buf_append(b, "", 1));
  return (char *)b->base;
}

static void test_exposition_exact(void **state) {
  (void)state;
  rv_metrics_t *m = rv_metrics_new();
  assert_non_null(m);
  rv_series_t *consumed = rv_metrics_counter(m, "rv_ingest_records_consumed_total", "Records read from Kafka.",
                                             (const char *const[]){"collection", "items", NULL});
  rv_series_t *dl_dim = rv_metrics_counter(m, "rv_ingest_records_dead_lettered_total", "Records sent to the DLQ.",
                                           (const char *const[]){"collection", "items", "reason", "wrong_dim", NULL});
  rv_series_t *dl_nan = rv_metrics_counter(m, "rv_ingest_records_dead_lettered_total", "ignored: family exists",
                                           (const char *const[]){"collection", "items", "reason", "non_finite", NULL});
  rv_series_t *lag = rv_metrics_gauge(m, "rv_ingest_consumer_lag", "Messages behind.\nSecond line \\ here",
                                      (const char *const[]){"partition", "0", NULL});
  rv_series_t *weird = rv_metrics_gauge(m, "rv_test_gauge", "", (const char *const[]){"v", "a\"b\\c\nd", NULL});
  rv_series_t *plain = rv_metrics_counter(m, "rv_plain_total", "No labels.", NULL);
  static const double bounds[] = {0.005, 0.1, 1, 2.5};
  rv_series_t *h = rv_metrics_histogram(m, "rv_ingest_batch_seconds", "Batch write time.", bounds, 4,
                                        (const char *const[]){"collection", "items", NULL});
  rv_series_t *h2 = rv_metrics_histogram(m, "rv_unlabelled_seconds", "h", bounds, 1, NULL);
  assert_true(consumed && dl_dim && dl_nan && lag && weird && plain && h && h2);
  assert_ptr_not_equal(dl_dim, dl_nan);
  /* The same name and labels give the same series. */
  assert_ptr_equal(dl_dim, rv_metrics_counter(m, "rv_ingest_records_dead_lettered_total", "x",
                                              (const char *const[]){"collection", "items", "reason", "wrong_dim",
                                                                    NULL}));

  rv_counter_add(consumed, 41);
  rv_counter_add(consumed, 1);
  rv_counter_add(dl_dim, 3);
  rv_gauge_set(lag, 17);
  rv_gauge_add(lag, -0.5);
  rv_gauge_set(weird, -INFINITY);
  rv_histogram_observe(h, 0.001);  /* <= 0.005 */
  rv_histogram_observe(h, 0.005);  /* on a bound: counts in it */
  rv_histogram_observe(h, 0.25);   /* <= 1 */
  rv_histogram_observe(h, 100);    /* only +Inf */
  rv_histogram_observe(h2, 0.5);

  rv_buf_t b;
  rv_buf_init(&b);
  const char *want =
      "# HELP rv_ingest_records_consumed_total Records read from Kafka.\n"
      "# TYPE rv_ingest_records_consumed_total counter\n"
      "rv_ingest_records_consumed_total{collection=\"items\"} 42\n"
      "# HELP rv_ingest_records_dead_lettered_total Records sent to the DLQ.\n"
      "# TYPE rv_ingest_records_dead_lettered_total counter\n"
      "rv_ingest_records_dead_lettered_total{collection=\"items\",reason=\"wrong_dim\"} 3\n"
      "rv_ingest_records_dead_lettered_total{collection=\"items\",reason=\"non_finite\"} 0\n"
      "# HELP rv_ingest_consumer_lag Messages behind.\\nSecond line \\\\ here\n"
      "# TYPE rv_ingest_consumer_lag gauge\n"
      "rv_ingest_consumer_lag{partition=\"0\"} 16.5\n"
      "# HELP rv_test_gauge \n"
      "# TYPE rv_test_gauge gauge\n"
      "rv_test_gauge{v=\"a\\\"b\\\\c\\nd\"} -Inf\n"
      "# HELP rv_plain_total No labels.\n"
      "# TYPE rv_plain_total counter\n"
      "rv_plain_total 0\n"
      "# HELP rv_ingest_batch_seconds Batch write time.\n"
      "# TYPE rv_ingest_batch_seconds histogram\n"
      "rv_ingest_batch_seconds_bucket{collection=\"items\",le=\"0.005\"} 2\n"
      "rv_ingest_batch_seconds_bucket{collection=\"items\",le=\"0.1\"} 2\n"
      "rv_ingest_batch_seconds_bucket{collection=\"items\",le=\"1\"} 3\n"
      "rv_ingest_batch_seconds_bucket{collection=\"items\",le=\"2.5\"} 3\n"
      "rv_ingest_batch_seconds_bucket{collection=\"items\",le=\"+Inf\"} 4\n"
      "rv_ingest_batch_seconds_sum{collection=\"items\"} 100.256\n"
      "rv_ingest_batch_seconds_count{collection=\"items\"} 4\n"
      "# HELP rv_unlabelled_seconds h\n"
      "# TYPE rv_unlabelled_seconds histogram\n"
      "rv_unlabelled_seconds_bucket{le=\"0.005\"} 0\n"
      "rv_unlabelled_seconds_bucket{le=\"+Inf\"} 1\n"
      "rv_unlabelled_seconds_sum 0.5\n"
      "rv_unlabelled_seconds_count 1\n";
  assert_string_equal(want, expose(m, &b));
  assert_int_equal(42, rv_counter_value(consumed));
  assert_true(rv_gauge_value(lag) == 16.5);
  assert_int_equal(4, rv_histogram_count(h));
  assert_true(fabs(rv_histogram_sum(h) - 100.256) < 1e-12);
  rv_buf_close(&b);
  rv_metrics_destroy(m);
}

static void test_misuse(void **state) {
  (void)state;
  rv_metrics_t *m = rv_metrics_new();
  static const double bounds[] = {1, 2};
  static const double unsorted[] = {2, 1};
  assert_non_null(rv_metrics_counter(m, "a_total", "", (const char *const[]){"k", "v", NULL}));
  /* Another type, other label names, bad names, the reserved "le", a dangling label name. */
  assert_null(rv_metrics_gauge(m, "a_total", "", (const char *const[]){"k", "v", NULL}));
  assert_null(rv_metrics_counter(m, "a_total", "", (const char *const[]){"other", "v", NULL}));
  assert_null(rv_metrics_counter(m, "a_total", "", NULL));
  assert_null(rv_metrics_counter(m, "9starts_with_digit", "", NULL));
  assert_null(rv_metrics_counter(m, "has-dash", "", NULL));
  assert_null(rv_metrics_counter(m, "", "", NULL));
  assert_null(rv_metrics_counter(m, "b_total", "", (const char *const[]){"bad:label", "v", NULL}));
  assert_null(rv_metrics_histogram(m, "h", "", bounds, 2, (const char *const[]){"le", "1", NULL}));
  assert_null(rv_metrics_counter(m, "c_total", "", (const char *const[]){"k", NULL}));
  assert_null(rv_metrics_histogram(m, "h", "", unsorted, 2, NULL));
  assert_non_null(rv_metrics_histogram(m, "h", "", bounds, 2, NULL));
  assert_null(rv_metrics_histogram(m, "h", "", bounds, 1, NULL)); /* other buckets */
  assert_non_null(rv_metrics_counter(m, "ns:with_colon_total", "", NULL));
  /* None of the refused calls left a family behind. */
  rv_buf_t b;
  rv_buf_init(&b);
  const char *text = expose(m, &b);
  assert_null(strstr(text, "b_total"));
  assert_null(strstr(text, "c_total"));
  assert_null(strstr(text, "has-dash"));
  rv_buf_close(&b);
  rv_metrics_destroy(m);

  /* No registry: NULL series, and updating them is harmless. */
  assert_null(rv_metrics_counter(NULL, "a_total", "", NULL));
  rv_counter_add(NULL, 1);
  rv_gauge_set(NULL, 1);
  rv_gauge_add(NULL, 1);
  rv_histogram_observe(NULL, 1);
  assert_int_equal(0, rv_counter_value(NULL));
  rv_metrics_destroy(NULL);
}

#define THREADS 4
#define PER_THREAD 100000

static void *hammer(void *arg) {
  rv_series_t **s = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    rv_counter_add(s[0], 1);
    rv_gauge_add(s[1], 1);
    rv_histogram_observe(s[2], (i & 1) ? 0.5 : 2.0);
  }
  return NULL;
}

static void test_concurrent_updates(void **state) {
  (void)state;
  rv_metrics_t *m = rv_metrics_new();
  static const double bounds[] = {1};
  rv_series_t *s[3] = {rv_metrics_counter(m, "n_total", "", NULL), rv_metrics_gauge(m, "g", "", NULL),
                       rv_metrics_histogram(m, "h", "", bounds, 1, NULL)};
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) assert_int_equal(0, pthread_create(&t[i], NULL, hammer, s));
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  assert_int_equal((uint64_t)THREADS * PER_THREAD, rv_counter_value(s[0]));
  assert_true(rv_gauge_value(s[1]) == (double)THREADS * PER_THREAD);
  assert_int_equal((uint64_t)THREADS * PER_THREAD, rv_histogram_count(s[2]));
  assert_true(rv_histogram_sum(s[2]) == (double)THREADS * PER_THREAD / 2 * 2.5);
  rv_buf_t b;
  rv_buf_init(&b);
  char want[256];
  snprintf(want, sizeof want, "h_bucket{le=\"1\"} %d\nh_bucket{le=\"+Inf\"} %d\n", THREADS * PER_THREAD / 2,
           THREADS * PER_THREAD);
  const char *text = expose(m, &b);
  if (!strstr(text, want)) fail_msg("expected\n%s\nin\n%s", want, text);
  rv_buf_close(&b);
  rv_metrics_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exposition_exact),
      cmocka_unit_test(test_misuse),
      cmocka_unit_test(test_concurrent_updates),
  };
  return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
