#define _GNU_SOURCE
/* Ingest closes a batch as soon as its consumer has nothing more waiting,
 * not only at batch_rows or batch_ms: with batch_ms at 30 s, each probe
 * record, sent one at a time while idle and under a steady background load,
 * must reach a changelog reader (fetch.wait.max.ms 5) within BATCH_WAIT_MAX_MS,
 * far below the 30 s a batch held to batch_ms would take. The send ->
 * changelog latencies are printed (README, "Ingest freshness"); speed itself
 * is judged by tests/bench/bench_freshness.py, not here.
 * Real private PostgreSQL, librdkafka's mock cluster. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest_fixture.h"
#include "rv_ingest.h"
#include "rv_time.h"

#define COLL "fresh"
#define DIM 8
#define PARTS 3
#define N_PROBES 40
#define LOAD_RATE 2000 /* background records per second */
#define BATCH_MS 30000          /* the batch cap: a batch held to it would take this long */
#define BATCH_WAIT_MAX_MS 10000 /* each probe must arrive well before that */

static struct {
  ingest_fixture_t f;
  rv_ingest_t *ingest;
  rd_kafka_t *probe;  /* linger.ms 0: the probe's own send is not what is measured */
  rd_kafka_t *reader; /* the changelog, from its end, fetch.wait.max.ms 5 */
  atomic_int load_stop;
  atomic_long load_sent;
} T;

static void encode(rv_codec_t *codec, const char *id, int i, rv_buf_t *b) {
  char e[256];
  float v[DIM];
  for (int k = 0; k < DIM; k++) v[k] = (float)(i % 1000) + (float)k * 0.25f;
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  r.id = (char *)id;
  r.id_len = strlen(id);
  r.vector = v;
  r.dim = DIM;
  b->len = 0;
  if (rv_codec_encode_vector(codec, &r, b, e, sizeof e)) fail_msg("encode: %s", e);
}

/* codec: one per thread (rv_codec_t is not thread-safe). */
static void send_one(rd_kafka_t *rk, rv_codec_t *codec, const char *id, int i, rv_buf_t *b) {
  encode(codec, id, i, b);
  rd_kafka_resp_err_t err;
  while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(COLL ".vectors"), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(b->base, b->len),
                                  RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(rk, 10);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
  rd_kafka_poll(rk, 0);
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *const kv[][2], size_t n) {
  char e[512];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.f.brokers, e, sizeof e)) fail_msg("%s", e);
  for (size_t i = 0; i < n; i++)
    if (rd_kafka_conf_set(c, kv[i][0], kv[i][1], e, sizeof e)) fail_msg("%s: %s", kv[i][0], e);
  rd_kafka_t *rk = rd_kafka_new(type, c, e, sizeof e);
  if (!rk) fail_msg("client: %s", e);
  return rk;
}

/* Waits (bounded) until the changelog reader returns the change keyed id. */
static void await_change(const char *id, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  size_t len = strlen(id);
  for (;;) {
    if (rv_mono_ms() > deadline) fail_msg("%s not on the changelog after %d ms", id, timeout_ms);
    rd_kafka_message_t *m = rd_kafka_consumer_poll(T.reader, 5);
    if (!m) continue;
    int hit = !m->err && !ingest_fixture_is_marker(m) && m->key_len == len && !memcmp(m->key, id, len);
    rd_kafka_message_destroy(m);
    if (hit) return;
  }
}

static void *load_thread(void *arg) {
  (void)arg;
  char e[256];
  rv_codec_t *codec = rv_codec_new(e, sizeof e);
  if (!codec) abort();
  rv_buf_t b;
  rv_buf_init(&b);
  char id[64];
  int64_t t0 = rv_mono_us();
  for (long i = 0; !atomic_load(&T.load_stop); i++) {
    int64_t due = t0 + i * 1000000 / LOAD_RATE;
    int64_t now = rv_mono_us();
    if (due > now) usleep((useconds_t)(due - now));
    snprintf(id, sizeof id, "bg-%07ld", i);
    send_one(T.f.producer, codec, id, (int)i, &b);
    atomic_store(&T.load_sent, i + 1);
  }
  rv_buf_close(&b);
  rv_codec_destroy(codec);
  return NULL;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* N_PROBES probes, one at a time 20 ms apart: returns p50 and p99 in ms via out. */
static void probe_run(const char *prefix, double out[2]) {
  int64_t lat[N_PROBES];
  rv_buf_t b;
  rv_buf_init(&b);
  char id[64];
  for (int i = 0; i < N_PROBES; i++) {
    snprintf(id, sizeof id, "%s-%03d", prefix, i);
    int64_t t0 = rv_mono_us();
    send_one(T.probe, T.f.codec, id, i, &b);
    await_change(id, BATCH_WAIT_MAX_MS);
    lat[i] = rv_mono_us() - t0;
    usleep(20 * 1000);
  }
  rv_buf_close(&b);
  qsort(lat, N_PROBES, sizeof lat[0], cmp_i64);
  out[0] = (double)lat[N_PROBES / 2] / 1000.0;
  out[1] = (double)lat[N_PROBES * 99 / 100] / 1000.0;
}

static int setup(void **state) {
  (void)state;
  char e[1024];
  if (ingest_fixture_open(&T.f, "rv-fresh-", COLL, DIM, PARTS, PARTS, 1, NULL)) return -1;
  T.f.conf.sq8_train = 20; /* the rest: defaults (batch_rows), but a batch_ms far above any wait */
  rv_ingest_conf_defaults(&T.f.conf);
  T.f.conf.batch_ms = BATCH_MS;
  if (rv_ingest_migrate(&T.f.conf, e, sizeof e)) {
    print_error("migrate: %s\n", e);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  rv_ingest_destroy(T.ingest);
  if (T.probe) rd_kafka_destroy(T.probe);
  if (T.reader) {
    rd_kafka_consumer_close(T.reader);
    rd_kafka_destroy(T.reader);
  }
  ingest_fixture_close(&T.f);
  return 0;
}

static void test_batch_closes_when_nothing_waits(void **state) {
  (void)state;
  char e[512];
  T.ingest = rv_ingest_new(&T.f.conf, e, sizeof e);
  if (!T.ingest || rv_ingest_start(T.ingest, e, sizeof e)) fail_msg("ingest: %s", e);
  static const char *const pkv[][2] = {{"linger.ms", "0"}, {"enable.idempotence", "true"},
                                       {"partitioner", "murmur2_random"}};
  T.probe = client(RD_KAFKA_PRODUCER, pkv, 3);
  static const char *const ckv[][2] = {{"group.id", "fresh-reader"}, {"fetch.wait.max.ms", "5"},
                                       {"enable.auto.commit", "false"}};
  T.reader = client(RD_KAFKA_CONSUMER, ckv, 3);
  rd_kafka_poll_set_consumer(T.reader);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(PARTS);
  for (int p = 0; p < PARTS; p++) rd_kafka_topic_partition_list_add(parts, COLL ".changelog", p)->offset = 0;
  rd_kafka_assign(T.reader, parts);
  rd_kafka_topic_partition_list_destroy(parts);

  /* Warm up: the SQ8 training vectors, the group join, the first fetches. */
  rv_buf_t b;
  rv_buf_init(&b);
  char id[64];
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "warm-%03d", i);
    send_one(T.probe, T.f.codec, id, i, &b);
  }
  rv_buf_close(&b);
  await_change("warm-039", 60000);

  double idle[2], load[2];
  probe_run("idle", idle);
  pthread_t th;
  atomic_store(&T.load_stop, 0);
  pthread_create(&th, NULL, load_thread, NULL);
  usleep(500 * 1000); /* the load reaches its pace */
  probe_run("load", load);
  atomic_store(&T.load_stop, 1);
  pthread_join(th, NULL);
  rv_ingest_stats_t s;
  rv_ingest_stats(T.ingest, &s);
  print_message("send -> changelog (batch_rows %d, batch_ms %d): idle p50 %.1f ms p99 %.1f ms; "
                "under %d records/s p50 %.1f ms p99 %.1f ms (%ld background records, %llu batches)\n",
                T.f.conf.batch_rows, T.f.conf.batch_ms, idle[0], idle[1], LOAD_RATE, load[0], load[1],
                (long)atomic_load(&T.load_sent), (unsigned long long)s.batches);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_batch_closes_when_nothing_waits)};
  return cmocka_run_group_tests_name("ingest_freshness", tests, setup, teardown);
}
