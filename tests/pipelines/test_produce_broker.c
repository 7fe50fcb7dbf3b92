/* `ruvector broker` and `ruvector produce` end to end: an in-process mock
 * cluster (rv_broker), rv_produce_run in each framing, and a plain librdkafka
 * consumer reading the topic back. The first test runs `broker` as a child
 * process (before this process has any threads) and stops it with SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tmpdir.h"
#include "rv_broker.h"
#include "rv_produce.h"
#include "rv_record.h"
#include "rv_source.h"
#include "rv_time.h"

#ifndef RV_FASHION_DIR
#define RV_FASHION_DIR "/usr/share/datasets/fashion-mnist"
#endif

static char dir[256];
static char errstr[1024];
static pid_t child = -1;

static int group_setup(void **state) { return tmpdir_make(dir, sizeof dir, "rv_test_produce"); }

static int group_teardown(void **state) { return tmpdir_remove(dir); }

static const char *path_of(const char *name) { return tmpdir_path(dir, name); }

/* ---- inputs ------------------------------------------------------------- */

/* n JSONL records j0..j(n-1): dim-4 vectors, metadata on even ones, event_time
 * on multiples of 3, and record 5 a DELETE without a vector. */
static const char *write_jsonl(const char *name, int n) {
  const char *p = path_of(name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  for (int i = 0; i < n; i++) {
    if (i == 5) {
      fprintf(f, "{\"id\":\"j%d\",\"op\":\"DELETE\"}\n", i);
      continue;
    }
    fprintf(f, "{\"id\":\"j%d\",\"vector\":[%d.5,-1.25,%d,0.1]", i, i, i * 3);
    if (i % 2 == 0) fprintf(f, ",\"metadata\":{\"i\":%d,\"tag\":\"t\\\"q\"}", i);
    if (i % 3 == 0) fprintf(f, ",\"event_time\":%lld", 1700000000000LL + i);
    fprintf(f, "}\n");
  }
  assert_int_equal(fclose(f), 0);
  return p;
}

/* n fvecs of dim 8 with value i + k / 8. */
static const char *write_fvecs(const char *name, int n) {
  const char *p = path_of(name);
  FILE *f = fopen(p, "wb");
  assert_non_null(f);
  for (int i = 0; i < n; i++) {
    int32_t dim = 8;
    float v[8];
    for (int k = 0; k < 8; k++) v[k] = (float)i + (float)k / 8;
    assert_int_equal(fwrite(&dim, 4, 1, f), 1);
    assert_int_equal(fwrite(v, 4, 8, f), 8);
  }
  assert_int_equal(fclose(f), 0);
  return p;
}

/* All records of a file, as rv_source reads them. */
typedef struct expected {
  rv_vector_record_t *r;
  int n;
  int *seen;
} expected_t;

static void expected_load(expected_t *e, const char *path, const rv_source_opts_t *o, int max) {
  memset(e, 0, sizeof *e);
  e->r = calloc((size_t)max + 1, sizeof *e->r); /* +1: the slot the end was read into */
  e->seen = calloc((size_t)max, sizeof *e->seen);
  rv_source_t *s = rv_source_open(path, RV_SOURCE_AUTO, o, errstr, sizeof errstr);
  if (!s) fail_msg("%s", errstr);
  while (e->n < max) {
    rv_vector_record_init(&e->r[e->n]);
    int rc = rv_source_next(s, &e->r[e->n], errstr, sizeof errstr);
    assert_true(rc >= 0);
    if (rc == 0) break;
    e->n++;
  }
  rv_source_close(s);
}

static void expected_free(expected_t *e) {
  for (int i = 0; i <= e->n && e->r; i++) rv_vector_record_close(&e->r[i]);
  free(e->r);
  free(e->seen);
}

static const rv_vector_record_t *expected_find(expected_t *e, const char *id) {
  for (int i = 0; i < e->n; i++)
    if (strcmp(e->r[i].id, id) == 0) {
      assert_int_equal(e->seen[i], 0); /* delivered once */
      e->seen[i] = 1;
      return &e->r[i];
    }
  fail_msg("unexpected id %s", id);
  return NULL;
}

/* ---- a plain consumer ---------------------------------------------------- */

typedef struct msg {
  char *key;
  size_t key_len;
  uint8_t *val;
  size_t len;
} msg_t;

/* Reads topic from the beginning of every partition until `want` messages
 * arrived (then 300 ms more, to catch extras) or 30 s passed. Returns the count. */
static int consume(const char *brokers, const char *topic, int want, msg_t *out, int cap) {
  char kerr[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", brokers, kerr, sizeof kerr), RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(conf, "group.id", "rv-test-reader", kerr, sizeof kerr), RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(conf, "enable.auto.commit", "false", kerr, sizeof kerr), RD_KAFKA_CONF_OK);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof kerr);
  assert_non_null(rk);
  rd_kafka_poll_set_consumer(rk);

  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  assert_int_equal(rd_kafka_metadata(rk, 0, rkt, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  assert_int_equal(md->topic_cnt, 1);
  int parts = md->topics[0].partition_cnt;
  assert_true(parts > 0);
  rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);

  rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(parts);
  for (int p = 0; p < parts; p++) rd_kafka_topic_partition_list_add(tp, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(rk, tp), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_topic_partition_list_destroy(tp);

  int n = 0;
  int64_t deadline = rv_mono_ms() + 30000, extra_until = 0;
  while (rv_mono_ms() < (extra_until ? extra_until : deadline)) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (!m) continue;
    if (!m->err) {
      assert_true(n < cap);
      out[n].key = malloc(m->key_len + 1);
      memcpy(out[n].key, m->key, m->key_len);
      out[n].key[m->key_len] = 0;
      out[n].key_len = m->key_len;
      out[n].val = malloc(m->len ? m->len : 1);
      memcpy(out[n].val, m->payload, m->len);
      out[n].len = m->len;
      n++;
      if (n == want) extra_until = rv_mono_ms() + 300;
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return n;
}

static void msgs_free(msg_t *m, int n) {
  for (int i = 0; i < n; i++) {
    free(m[i].key);
    free(m[i].val);
  }
}

static void check_same(const rv_vector_record_t *got, const rv_vector_record_t *want) {
  assert_string_equal(got->id, want->id);
  assert_int_equal(got->op, want->op);
  assert_int_equal(got->dim, want->dim);
  if (want->dim) assert_memory_equal(got->vector, want->vector, sizeof(float) * (size_t)want->dim);
  if (want->metadata) assert_string_equal(got->metadata, want->metadata);
  else assert_null(got->metadata);
  assert_int_equal(got->has_event_time, want->has_event_time);
  if (want->has_event_time) assert_int_equal(got->event_time_ms, want->event_time_ms);
}

/* Decodes every message (Avro or Confluent) and checks it against the input. */
static void check_avro(msg_t *m, int n, expected_t *e, int confluent, uint32_t schema_id) {
  rv_codec_t *codec = rv_codec_new(errstr, sizeof errstr);
  assert_non_null(codec);
  assert_int_equal(n, e->n);
  for (int i = 0; i < n; i++) {
    size_t off = 0;
    uint32_t sid = 0;
    if (confluent) {
      const uint8_t hdr[5] = {0, (uint8_t)(schema_id >> 24), (uint8_t)(schema_id >> 16), (uint8_t)(schema_id >> 8),
                              (uint8_t)schema_id};
      assert_true(m[i].len > 5);
      assert_memory_equal(m[i].val, hdr, 5);
      assert_int_equal(rv_confluent_parse(m[i].val, m[i].len, &sid, &off), 1);
      assert_int_equal(sid, schema_id);
      assert_int_equal(off, RV_CONFLUENT_HEADER);
    } else {
      assert_int_equal(rv_confluent_parse(m[i].val, m[i].len, &sid, &off), 0);
    }
    rv_vector_record_t got;
    rv_vector_record_init(&got);
    rv_err_t err = rv_codec_decode_vector(codec, m[i].val + off, m[i].len - off, &got, errstr, sizeof errstr);
    if (err) fail_msg("message %d: %s", i, errstr);
    assert_string_equal(m[i].key, got.id); /* key = id */
    check_same(&got, expected_find(e, got.id));
    rv_vector_record_close(&got);
  }
  rv_codec_destroy(codec);
}

static rv_broker_t *start_broker(const char *topic, int partitions) {
  rv_broker_t *b = rv_broker_new(3, errstr, sizeof errstr);
  if (!b) fail_msg("%s", errstr);
  if (rv_broker_create_topic(b, topic, partitions, errstr, sizeof errstr)) fail_msg("%s", errstr);
  return b;
}

static void run_ok(rv_produce_opts_t *o, rv_produce_result_t *res, int64_t want) {
  rv_err_t err = rv_produce_run(o, NULL, res, errstr, sizeof errstr);
  if (err) fail_msg("rv_produce_run: %s", errstr);
  assert_int_equal(res->read, want);
  assert_int_equal(res->sent, want);
  assert_int_equal(res->delivered, want);
  assert_int_equal(res->failed, 0);
  assert_int_equal(res->input_error, 0);
}

/* ---- tests -------------------------------------------------------------- */

static int kill_child(void **state) {
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    child = -1;
  }
  return 0;
}

/* Reads one line from fd within timeout_ms. */
static int read_line_fd(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t n = 0;
  int64_t deadline = rv_mono_ms() + timeout_ms;
  while (n + 1 < cap) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int left = (int)(deadline - rv_mono_ms());
    if (left <= 0 || poll(&p, 1, left) <= 0) return -1;
    if (read(fd, buf + n, 1) != 1) return -1;
    if (buf[n] == '\n') break;
    n++;
  }
  buf[n] = 0;
  return (int)n;
}

static void test_broker_cli(void **state) {
  const char *bsfile = path_of("bootstrap.txt");
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  child = fork();
  assert_true(child >= 0);
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    char *argv[] = {"broker", "--brokers", "2", "--collection", "demo:2", "-t", "extra",
                    "--topic", "five:5", "--bootstrap-file", (char *)bsfile, NULL};
    _exit(rv_broker_main(11, argv));
  }
  close(fds[1]);
  char line[1024];
  assert_true(read_line_fd(fds[0], line, sizeof line, 15000) > 0);
  close(fds[0]);
  assert_true(strncmp(line, "bootstrap: 127.0.0.1:", 21) == 0 || strncmp(line, "bootstrap: ", 11) == 0);
  const char *bootstrap = line + strlen("bootstrap: ");
  assert_non_null(strchr(bootstrap, ',')); /* two brokers */

  char filebuf[1024] = {0};
  FILE *f = fopen(bsfile, "r");
  assert_non_null(f);
  assert_non_null(fgets(filebuf, sizeof filebuf, f));
  fclose(f);
  char want[1100];
  snprintf(want, sizeof want, "%s\n", bootstrap);
  assert_string_equal(filebuf, want);

  /* the topics exist with their partition counts */
  char kerr[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, kerr, sizeof kerr), RD_KAFKA_CONF_OK);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof kerr);
  assert_non_null(rk);
  const struct rd_kafka_metadata *md = NULL;
  assert_int_equal(rd_kafka_metadata(rk, 1, NULL, &md, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  static const struct {
    const char *name;
    int parts;
  } topics[] = {{"demo.vectors", 2}, {"demo.changelog", 2}, {"demo.dlq", 2}, {"extra", 3}, {"five", 5}};
  for (size_t t = 0; t < sizeof topics / sizeof topics[0]; t++) {
    int found = -1;
    for (int i = 0; i < md->topic_cnt; i++)
      if (strcmp(md->topics[i].topic, topics[t].name) == 0) found = md->topics[i].partition_cnt;
    if (found != topics[t].parts) fail_msg("topic %s: %d partitions, want %d", topics[t].name, found, topics[t].parts);
  }
  rd_kafka_metadata_destroy(md);
  rd_kafka_destroy(rk);

  /* `produce` against it, through the command line */
  const char *in = write_jsonl("cli.jsonl", 12);
  char *pargv[] = {"produce", "--brokers", (char *)bootstrap, "--collection", "demo", "--input", (char *)in,
                   "--quiet", NULL};
  assert_int_equal(rv_produce_main(8, pargv), 0);
  msg_t m[32];
  int n = consume(bootstrap, "demo.vectors", 12, m, 32);
  assert_int_equal(n, 12);
  msgs_free(m, n);

  /* a bad line after good ones: those are published, exit 65 */
  const char *bad = path_of("bad.jsonl");
  f = fopen(bad, "w");
  fprintf(f, "{\"id\":\"g1\",\"vector\":[1]}\n{\"id\":\"g2\",\"vector\":[2]}\n{\"id\":\n");
  fclose(f);
  char *bargv[] = {"produce", "-b", (char *)bootstrap, "-t", "extra", "-i", (char *)bad, "-q", NULL};
  assert_int_equal(rv_produce_main(8, bargv), 65);
  n = consume(bootstrap, "extra", 2, m, 32);
  assert_int_equal(n, 2);
  msgs_free(m, n);

  assert_int_equal(kill(child, SIGTERM), 0);
  int status = 0;
  assert_int_equal(waitpid(child, &status, 0), child);
  child = -1;
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_int_equal(access(bsfile, F_OK), -1); /* removed on exit */
}

static void test_broker_api(void **state) {
  assert_null(rv_broker_new(0, errstr, sizeof errstr));
  rv_broker_t *b = rv_broker_new(1, errstr, sizeof errstr);
  assert_non_null(b);
  assert_non_null(rv_broker_mock(b));
  assert_non_null(strstr(rv_broker_bootstraps(b), ":"));
  assert_int_equal(rv_broker_create_topic(b, "t", 0, errstr, sizeof errstr), RV_ERR_INVALID);
  assert_int_equal(rv_broker_create_topic(b, "t", 2, errstr, sizeof errstr), RV_OK);
  rv_broker_destroy(b);
  rv_broker_destroy(NULL);
}

static void test_produce_avro_jsonl(void **state) {
  rv_broker_t *b = start_broker("jv", 3);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "jv";
  o.input = write_jsonl("in.jsonl", 40);
  rv_produce_result_t res;
  run_ok(&o, &res, 40);

  expected_t e;
  expected_load(&e, o.input, NULL, 64);
  assert_int_equal(e.n, 40);
  msg_t m[64];
  int n = consume(o.brokers, "jv", 40, m, 64);
  check_avro(m, n, &e, 0, 0);
  msgs_free(m, n);
  expected_free(&e);
  rv_broker_destroy(b);
}

static void test_produce_confluent_fvecs(void **state) {
  rv_broker_t *b = start_broker("fc", 2);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "fc";
  o.input = write_fvecs("in.fvecs", 30);
  o.framing = RV_FRAMING_CONFLUENT;
  o.schema_id = 0x01020304;
  o.source.id_prefix = "f-";
  o.source.skip = 4;
  o.count = 20;
  rv_produce_result_t res;
  run_ok(&o, &res, 20);

  expected_t e;
  expected_load(&e, o.input, &o.source, 20);
  assert_string_equal(e.r[0].id, "f-4");
  msg_t m[64];
  int n = consume(o.brokers, "fc", 20, m, 64);
  check_avro(m, n, &e, 1, 0x01020304);
  msgs_free(m, n);
  expected_free(&e);
  rv_broker_destroy(b);
}

static void test_produce_json(void **state) {
  rv_broker_t *b = start_broker("js", 1);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "js";
  o.input = write_jsonl("json.jsonl", 10);
  o.framing = RV_FRAMING_JSON;
  rv_produce_result_t res;
  run_ok(&o, &res, 10);

  expected_t e;
  expected_load(&e, o.input, NULL, 16);
  msg_t m[16];
  int n = consume(o.brokers, "js", 10, m, 16);
  assert_int_equal(n, 10);
  for (int i = 0; i < n; i++) {
    json_error_t jerr;
    json_t *j = json_loadb((const char *)m[i].val, m[i].len, 0, &jerr);
    if (!j) fail_msg("message %d is not JSON: %s", i, jerr.text);
    const char *id = json_string_value(json_object_get(j, "id"));
    assert_non_null(id);
    assert_string_equal(m[i].key, id);
    const rv_vector_record_t *w = expected_find(&e, id);
    assert_string_equal(json_string_value(json_object_get(j, "op")), w->op == RV_OP_DELETE ? "DELETE" : "UPSERT");
    json_t *vec = json_object_get(j, "vector");
    if (w->vector) {
      assert_int_equal(json_array_size(vec), w->dim);
      for (int k = 0; k < w->dim; k++) assert_true((float)json_number_value(json_array_get(vec, (size_t)k)) == w->vector[k]);
    } else {
      assert_null(vec);
    }
    json_t *meta = json_object_get(j, "metadata");
    if (w->metadata) {
      assert_true(json_is_object(meta));
      char *text = json_dumps(meta, JSON_COMPACT);
      assert_string_equal(text, w->metadata);
      free(text);
    } else {
      assert_null(meta);
    }
    if (w->has_event_time) assert_int_equal(json_integer_value(json_object_get(j, "event_time")), w->event_time_ms);
    json_decref(j);
  }
  msgs_free(m, n);
  expected_free(&e);
  rv_broker_destroy(b);
}

static void test_produce_delete(void **state) {
  rv_broker_t *b = start_broker("del", 3);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "del";
  o.input = write_fvecs("del.fvecs", 15);
  o.delete_ops = 1;
  rv_produce_result_t res;
  run_ok(&o, &res, 15);

  rv_codec_t *codec = rv_codec_new(errstr, sizeof errstr);
  msg_t m[32];
  int n = consume(o.brokers, "del", 15, m, 32);
  assert_int_equal(n, 15);
  int seen[15] = {0};
  for (int i = 0; i < n; i++) {
    rv_vector_record_t got;
    rv_vector_record_init(&got);
    assert_int_equal(rv_codec_decode_vector(codec, m[i].val, m[i].len, &got, errstr, sizeof errstr), RV_OK);
    assert_int_equal(got.op, RV_OP_DELETE);
    assert_null(got.vector);
    assert_int_equal(got.dim, 0);
    assert_null(got.metadata);
    int idx = -1;
    assert_int_equal(sscanf(got.id, "v%d", &idx), 1);
    assert_in_range(idx, 0, 14);
    seen[idx]++;
    assert_string_equal(m[i].key, got.id);
    rv_vector_record_close(&got);
  }
  for (int i = 0; i < 15; i++) assert_int_equal(seen[i], 1);
  msgs_free(m, n);
  rv_codec_destroy(codec);
  rv_broker_destroy(b);
}

static void test_produce_rate(void **state) {
  rv_broker_t *b = start_broker("rate", 3);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "rate";
  o.input = write_fvecs("rate.fvecs", 200);
  o.rate = 1000;
  int64_t t0 = rv_mono_ms();
  rv_produce_result_t res;
  run_ok(&o, &res, 200);
  int64_t took = rv_mono_ms() - t0;
  if (res.elapsed_ms < 150 || took < 150)
    fail_msg("200 records at 1000/s took %lld ms (run %lld ms), want >= 150", (long long)res.elapsed_ms,
             (long long)took);
  rv_broker_destroy(b);
}

/* Real Fashion-MNIST test images with their labels, from an offset. */
static void test_produce_fashion_mnist(void **state) {
  const char *p = RV_FASHION_DIR "/t10k-images-idx3-ubyte.gz";
  if (access(p, R_OK) != 0) skip();
  rv_broker_t *b = start_broker("fm", 3);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "fm";
  o.input = p;
  o.source.skip = 100;
  o.count = 25;
  rv_produce_result_t res;
  run_ok(&o, &res, 25);
  expected_t e;
  expected_load(&e, p, &o.source, 25);
  assert_string_equal(e.r[0].id, "v100");
  assert_int_equal(e.r[0].dim, 784);
  assert_non_null(e.r[0].metadata);
  msg_t m[32];
  int n = consume(o.brokers, "fm", 25, m, 32);
  check_avro(m, n, &e, 0, 0);
  msgs_free(m, n);
  expected_free(&e);
  rv_broker_destroy(b);
}

/* Nobody listening: every record fails within the flush bound; exit code 1. */
static void test_produce_unreachable(void **state) {
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = "127.0.0.1:1";
  o.topic = "nowhere";
  o.input = write_fvecs("u.fvecs", 5);
  o.flush_timeout_ms = 1500;
  rv_produce_result_t res;
  int64_t t0 = rv_mono_ms();
  assert_int_equal(rv_produce_run(&o, NULL, &res, errstr, sizeof errstr), RV_ERR_UNAVAILABLE);
  assert_true(rv_mono_ms() - t0 < 20000);
  assert_int_equal(res.read, 5);
  assert_int_equal(res.delivered, 0);
  assert_int_equal(res.failed, 5);
  assert_non_null(strstr(errstr, "5 of 5 records not delivered"));

  char *argv[] = {"produce", "-b", "127.0.0.1:1", "-t", "nowhere", "-i", (char *)o.input, "-q",
                  "--flush-timeout", "1000", NULL};
  assert_int_equal(rv_produce_main(10, argv), 1);
}

/* A stop flag already set: nothing is read, and that is not a failure. */
static void test_produce_stop(void **state) {
  rv_broker_t *b = start_broker("st", 1);
  rv_produce_opts_t o;
  rv_produce_opts_init(&o);
  o.brokers = rv_broker_bootstraps(b);
  o.topic = "st";
  o.input = write_fvecs("st.fvecs", 5);
  volatile int stop = 1;
  rv_produce_result_t res;
  assert_int_equal(rv_produce_run(&o, &stop, &res, errstr, sizeof errstr), RV_OK);
  assert_int_equal(res.read, 0);
  rv_broker_destroy(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_broker_cli, kill_child), /* first: forks */
      cmocka_unit_test(test_broker_api),
      cmocka_unit_test(test_produce_avro_jsonl),
      cmocka_unit_test(test_produce_confluent_fvecs),
      cmocka_unit_test(test_produce_json),
      cmocka_unit_test(test_produce_delete),
      cmocka_unit_test(test_produce_rate),
      cmocka_unit_test(test_produce_fashion_mnist),
      cmocka_unit_test(test_produce_unreachable),
      cmocka_unit_test(test_produce_stop),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
