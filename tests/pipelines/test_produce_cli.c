/* `ruvector produce` without a broker: usage errors (exit 2), unreadable input
 * (exit 66), framing names, and the endpoints file a running pipeline writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rv_produce.h"

static char dir[256];
static char errstr[512];

static int setup(void **state) {
  snprintf(dir, sizeof dir, "/tmp/rv_test_produce_cli.XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char *write_text(const char *name, const char *text) {
  static char p[4][512];
  static int i;
  i = (i + 1) % 4;
  snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
  FILE *f = fopen(p[i], "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
  return p[i];
}

#define RUN(...)                                                     \
  do {                                                               \
    char *argv_[] = {"produce", __VA_ARGS__, NULL};                  \
    rc = rv_produce_main((int)(sizeof argv_ / sizeof argv_[0]) - 1, argv_); \
  } while (0)

static void test_usage(void **state) {
  int rc;
  RUN("--help");
  assert_int_equal(rc, 0);
  RUN("--topic", "t", "--input", "x.jsonl"); /* no brokers */
  assert_int_equal(rc, 2);
  RUN("--brokers", "h:1", "--input", "x.jsonl"); /* no topic */
  assert_int_equal(rc, 2);
  RUN("--brokers", "h:1", "--topic", "t"); /* no input */
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.jsonl", "--rate", "-5");
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.jsonl", "--rate", "fast");
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.jsonl", "--framing", "protobuf");
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.jsonl", "--format", "csv");
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.jsonl", "--count", "-1");
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.bin"); /* format unknown from the name */
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "-i", "x.jsonl", "extra");
  assert_int_equal(rc, 2);
  RUN("-b", "h:1", "-t", "t", "--bogus");
  assert_int_equal(rc, 2);
}

static void test_no_input(void **state) {
  int rc;
  char missing[300];
  snprintf(missing, sizeof missing, "%s/missing.jsonl", dir);
  RUN("-b", "127.0.0.1:1", "-t", "t", "-i", missing, "-q");
  assert_int_equal(rc, 66);
  const char *garbage = write_text("garbage-ubyte", "not idx");
  RUN("-b", "127.0.0.1:1", "-t", "t", "-i", (char *)garbage, "-q");
  assert_int_equal(rc, 66);
  RUN("-b", "127.0.0.1:1", "-t", "t", "-i", (char *)garbage, "-q", "--format", "idx");
  assert_int_equal(rc, 66);
  char eps[300];
  snprintf(eps, sizeof eps, "%s/no-endpoints.json", dir);
  RUN("-e", eps, "-i", missing);
  assert_int_equal(rc, 66);
}

static void test_framing_names(void **state) {
  rv_framing_t f;
  assert_int_equal(rv_framing_parse("confluent", &f), 0);
  assert_int_equal(f, RV_FRAMING_CONFLUENT);
  assert_string_equal(rv_framing_name(f), "confluent");
  assert_int_equal(rv_framing_parse("JSON", &f), 0);
  assert_int_equal(f, RV_FRAMING_JSON);
  assert_int_equal(rv_framing_parse("avro", &f), 0);
  assert_int_equal(f, RV_FRAMING_AVRO);
  assert_int_equal(rv_framing_parse("xml", &f), -1);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  assert_int_equal(o.count, -1);
  assert_int_equal(o.schema_id, 1);
  assert_int_equal(o.flush_timeout_ms, 60000);
  assert_true(o.rate == 0);
}

static void test_endpoints(void **state) {
  char bs[256], topic[256];
  const char *two = write_text(
      "two.json", "{\"kafka\":{\"bootstrap\":\"127.0.0.1:9092,127.0.0.1:9093\"},\"collections\":{"
                  "\"fashion\":{\"source_topic\":\"fashion.vectors\",\"dim\":784},"
                  "\"other\":{}}}");
  assert_int_equal(rv_endpoints_read(two, "fashion", bs, sizeof bs, topic, sizeof topic, errstr, sizeof errstr),
                   RV_OK);
  assert_string_equal(bs, "127.0.0.1:9092,127.0.0.1:9093");
  assert_string_equal(topic, "fashion.vectors");
  /* no source_topic: the default name */
  assert_int_equal(rv_endpoints_read(two, "other", NULL, 0, topic, sizeof topic, errstr, sizeof errstr), RV_OK);
  assert_string_equal(topic, "other.vectors");
  /* two collections and none chosen */
  assert_int_equal(rv_endpoints_read(two, NULL, bs, sizeof bs, topic, sizeof topic, errstr, sizeof errstr),
                   RV_ERR_CONFIG);
  assert_int_equal(rv_endpoints_read(two, "nope", bs, sizeof bs, topic, sizeof topic, errstr, sizeof errstr),
                   RV_ERR_CONFIG);
  assert_non_null(strstr(errstr, "nope"));
  /* one collection: chosen by default */
  const char *one = write_text("one.json", "{\"kafka\":{\"bootstrap\":\"b:1\"},"
                                           "\"collections\":{\"c\":{\"source_topic\":\"c.in\"}}}");
  assert_int_equal(rv_endpoints_read(one, NULL, bs, sizeof bs, topic, sizeof topic, errstr, sizeof errstr), RV_OK);
  assert_string_equal(bs, "b:1");
  assert_string_equal(topic, "c.in");
  /* bootstrap too long for the buffer */
  assert_int_equal(rv_endpoints_read(one, NULL, bs, 3, NULL, 0, errstr, sizeof errstr), RV_ERR_CONFIG);
  /* broken JSON, missing key, missing file */
  const char *bad = write_text("bad.json", "{\"kafka\":");
  assert_int_equal(rv_endpoints_read(bad, NULL, bs, sizeof bs, NULL, 0, errstr, sizeof errstr), RV_ERR_CONFIG);
  const char *nokafka = write_text("nokafka.json", "{\"collections\":{}}");
  assert_int_equal(rv_endpoints_read(nokafka, NULL, bs, sizeof bs, NULL, 0, errstr, sizeof errstr), RV_ERR_CONFIG);
  assert_non_null(strstr(errstr, "kafka.bootstrap"));
  char missing[300];
  snprintf(missing, sizeof missing, "%s/none.json", dir);
  assert_int_equal(rv_endpoints_read(missing, NULL, bs, sizeof bs, NULL, 0, errstr, sizeof errstr),
                   RV_ERR_NOT_FOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_usage),
      cmocka_unit_test(test_no_input),
      cmocka_unit_test(test_framing_names),
      cmocka_unit_test(test_endpoints),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
