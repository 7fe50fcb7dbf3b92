/* Read-your-writes on search ("after"): replicas applying a changelog on the
 * in-process mock Kafka cluster, serve in front of them (one unsharded
 * replica, and a region of two shards fanned out to). A search with "after"
 * is held (no worker parked) until the replica applied the position marker
 * that covers it, then answered with the record found; one whose position
 * never arrives gets not_yet_visible with the replica's positions after
 * after_timeout_ms; waiting searches beyond max_waiting get overloaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_client_fixture.h"
#include "rv_record.h"
#include "rv_replica.h"
#include "rv_serve.h"

#define DIM 4
#define N_RECORDS 6
#define PARTS 2
#define SHORT_AFTER_MS 300

static rv_replica_t *start_replica(const char *brokers, int shard, int shards) {
  rv_replica_conf_t conf;
  memset(&conf, 0, sizeof conf);
  snprintf(conf.brokers, sizeof conf.brokers, "%s", brokers);
  snprintf(conf.region, sizeof conf.region, "local");
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.collection.partitions = PARTS;
  rv_collection_default_topics(&conf.collection);
  conf.shard_index = shard;
  conf.shard_count = shards;
  char errstr[512] = "";
  rv_replica_t *r = rv_replica_new(&conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  if (rv_replica_start(r, errstr, sizeof errstr)) fail_msg("rv_replica_start: %s", errstr);
  return r;
}

typedef struct server {
  char region[1][RV_NAME_MAX];
  rv_replica_t *replica[1];
  rv_serve_shard_t shards[2];
  const rv_serve_shard_t *shard_list[1];
  int n_shards[1];
  rv_serve_collection_t col;
  rv_serve_t *s;
  char url[64];
} server_t;

static void server_start(server_t *sv, rv_replica_t *replica, rv_replica_t *const *shards, int n, int after_ms,
                         int max_waiting) {
  memset(sv, 0, sizeof *sv);
  snprintf(sv->region[0], RV_NAME_MAX, "local");
  snprintf(sv->col.name, sizeof sv->col.name, "docs");
  sv->col.regions = sv->region;
  sv->col.n_replicas = 1;
  sv->col.replicas = sv->replica;
  sv->replica[0] = replica;
  if (!replica) {
    for (int i = 0; i < n; i++) sv->shards[i].replica = shards[i];
    sv->shard_list[0] = sv->shards;
    sv->n_shards[0] = n;
    sv->col.shards = sv->shard_list;
    sv->col.n_shards = sv->n_shards;
  }
  rv_serve_conf_t conf;
  rv_serve_conf_init(&conf);
  conf.port = 0;
  conf.collections = &sv->col;
  conf.n_collections = 1;
  conf.after_timeout_ms = after_ms;
  conf.max_waiting = max_waiting;
  char err[512];
  sv->s = rv_serve_new(&conf, err, sizeof err);
  if (!sv->s) fail_msg("rv_serve_new: %s", err);
  if (rv_serve_start(sv->s, err, sizeof err)) fail_msg("rv_serve_start: %s", err);
  snprintf(sv->url, sizeof sv->url, "ws://127.0.0.1:%d/", rv_serve_port(sv->s));
}

static void produce(rd_kafka_t *p, const char *topic, int32_t partition, const char *key, const rv_buf_t *v,
                    int marker) {
  rd_kafka_headers_t *h = NULL;
  if (marker) {
    h = rd_kafka_headers_new(1);
    rd_kafka_header_add(h, RV_KIND_HEADER, -1, RV_KIND_POSITION, -1);
  }
  rd_kafka_resp_err_t err = rd_kafka_producev(
      p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(key, strlen(key)),
      RD_KAFKA_V_VALUE(v->base, v->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
}

static void vec_of(int i, float *v) {
  for (int d = 0; d < DIM; d++) v[d] = (float)(i * 10 + d);
}

static const char *search_after(int i, int32_t part, int64_t off) {
  static char body[512];
  float v[DIM];
  vec_of(i, v);
  snprintf(body, sizeof body,
           "{\"type\":\"search\",\"collection\":\"docs\",\"k\":3,\"vector\":[%g,%g,%g,%g],"
           "\"after\":{\"partition\":%d,\"offset\":%lld}}",
           v[0], v[1], v[2], v[3], (int)part, (long long)off);
  return body;
}

static json_t *wait_reply(client_call_t *c) {
  char why[512];
  json_t *r = client_wait(c, why, sizeof why);
  if (!r) fail_msg("no reply: %s", why);
  return r;
}

static void expect_first_hit(json_t *r, const char *id) {
  const char *type = json_string_value(json_object_get(r, "type"));
  if (!type || strcmp(type, "results")) {
    char *t = json_dumps(r, JSON_COMPACT);
    fail_msg("want results, got %s", t);
  }
  json_t *hit = json_array_get(json_object_get(r, "hits"), 0);
  assert_string_equal(json_string_value(json_object_get(hit, "id")), id);
  assert_true(json_number_value(json_object_get(hit, "score")) == 0.0);
}

static void test_after(void **state) {
  (void)state;
  char errstr[512];
  rd_kafka_conf_t *oc = rd_kafka_conf_new();
  rd_kafka_conf_set(oc, "log_level", "3", errstr, sizeof errstr);
  rd_kafka_t *owner = rd_kafka_new(RD_KAFKA_PRODUCER, oc, errstr, sizeof errstr);
  assert_non_null(owner);
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(owner, 1);
  assert_non_null(mc);
  const char *brokers = rd_kafka_mock_cluster_bootstraps(mc);
  const char *topic = "docs.changelog";
  assert_int_equal(rd_kafka_mock_topic_create(mc, topic, PARTS, 1), RD_KAFKA_RESP_ERR_NO_ERROR);

  rv_replica_t *full = start_replica(brokers, 0, 0);
  rv_replica_t *shard[2] = {start_replica(brokers, 0, 2), start_replica(brokers, 1, 2)};
  server_t *sv = calloc(3, sizeof *sv);
  assert_non_null(sv);
  server_start(&sv[0], full, NULL, 0, 10000, 0);
  server_start(&sv[1], NULL, shard, 2, 10000, 0);
  server_start(&sv[2], full, NULL, 0, SHORT_AFTER_MS, 1);
  const char *urls[3] = {sv[0].url, sv[1].url, sv[2].url};
  rv_remote_t *rm = rv_remote_new(urls, 3, errstr, sizeof errstr);
  assert_non_null(rm);

  /* Searches for the last record, before anything is published: they wait. */
  client_call_t c_full, c_fan;
  assert_int_equal(client_send(&c_full, rm, 0, search_after(N_RECORDS - 1, 0, N_RECORDS - 1), 15000), 0);
  assert_int_equal(client_send(&c_fan, rm, 1, search_after(N_RECORDS - 1, 0, N_RECORDS - 1), 15000), 0);

  rd_kafka_conf_t *pc = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(pc, "bootstrap.servers", brokers, errstr, sizeof errstr), RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(pc, "linger.ms", "1", errstr, sizeof errstr), RD_KAFKA_CONF_OK);
  rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, errstr, sizeof errstr);
  assert_non_null(p);
  rv_codec_t *codec = rv_codec_new(errstr, sizeof errstr);
  assert_non_null(codec);
  rv_buf_t buf = {0};
  char id[16];
  for (int i = 0; i < N_RECORDS; i++) {
    float v[DIM];
    vec_of(i, v);
    snprintf(id, sizeof id, "d%d", i);
    rv_change_t ch;
    rv_change_init(&ch);
    ch.id = id;
    ch.op = RV_OP_UPSERT;
    ch.src_partition = 0;
    ch.src_offset = i;
    ch.vector = v;
    ch.dim = DIM;
    ch.created_at_ms = 1700000000000;
    rv_buf_reset(&buf);
    if (rv_codec_encode_change(codec, &ch, &buf, errstr, sizeof errstr)) fail_msg("encode: %s", errstr);
    produce(p, topic, RD_KAFKA_PARTITION_UA, id, &buf, 0);
  }
  assert_int_equal(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);

  /* The changes alone do not make "after" hold: only a marker does. Wait
   * until the replica applied them, then check the searches still wait. */
  for (int64_t t0 = rv_mono_ms();; ) {
    rv_replica_stats_t st;
    rv_replica_stats(full, &st);
    if (st.count == N_RECORDS) break;
    if (rv_mono_ms() - t0 > 20000) fail_msg("the replica applied %llu of %d", (unsigned long long)st.count, N_RECORDS);
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  assert_false(client_done(&c_full));
  assert_false(client_done(&c_fan));

  rv_source_position_t pos = {.partition = 0, .next_offset = N_RECORDS};
  rv_marker_t mk = {.positions = &pos, .n = 1, .committed_at_ms = 1700000000000};
  rv_buf_reset(&buf);
  if (rv_codec_encode_marker(codec, &mk, &buf, errstr, sizeof errstr)) fail_msg("encode marker: %s", errstr);
  for (int part = 0; part < PARTS; part++) produce(p, topic, part, RV_MARKER_KEY, &buf, 1);
  assert_int_equal(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);

  snprintf(id, sizeof id, "d%d", N_RECORDS - 1);
  json_t *r = wait_reply(&c_full);
  expect_first_hit(r, id);
  json_decref(r);
  r = wait_reply(&c_fan);
  expect_first_hit(r, id);
  assert_true(json_is_false(json_object_get(r, "partial")));
  json_decref(r);

  /* Already visible: answered at once, found. */
  client_call_t c;
  client_send(&c, rm, 0, search_after(2, 0, 2), 5000);
  r = wait_reply(&c);
  expect_first_hit(r, "d2");
  json_decref(r);

  /* A position never reached: not_yet_visible after after_timeout_ms, with the
   * replica's positions; a second waiting search beyond max_waiting (1):
   * overloaded at once. */
  client_call_t c_late, c_over;
  int64_t t0 = rv_mono_us();
  client_send(&c_late, rm, 2, search_after(0, 0, 1000), 5000);
  r = NULL;
  for (int tries = 0; tries < 500 && !r; tries++) { /* the first must be waiting before the second arrives */
    client_send(&c_over, rm, 2, search_after(0, 0, 1000 + tries), 5000);
    json_t *o = wait_reply(&c_over);
    if (!strcmp(json_string_value(json_object_get(o, "code")) ? json_string_value(json_object_get(o, "code")) : "", "overloaded"))
      r = o;
    else
      json_decref(o);
  }
  assert_non_null(r);
  json_decref(r);
  r = wait_reply(&c_late);
  int64_t took_ms = (rv_mono_us() - t0) / 1000;
  assert_string_equal(json_string_value(json_object_get(r, "code")), "not_yet_visible");
  assert_true(took_ms >= SHORT_AFTER_MS - 5 && took_ms < SHORT_AFTER_MS + 2000);
  json_t *positions = json_object_get(r, "positions");
  assert_true(json_is_object(positions));
  assert_int_equal(json_integer_value(json_object_get(positions, "0")), N_RECORDS);
  assert_non_null(strstr(json_string_value(json_object_get(r, "message")), "offset 1000"));
  json_decref(r);

  /* Bad "after" is the client's error, whatever the region. */
  for (int ep = 0; ep < 2; ep++) {
    client_send(&c, rm, ep, "{\"type\":\"search\",\"collection\":\"docs\",\"vector\":[0,0,0,0],\"after\":{\"partition\":0,\"offset\":-1}}", 5000);
    r = wait_reply(&c);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "bad_request");
    assert_non_null(strstr(json_string_value(json_object_get(r, "message")), "after.offset"));
    json_decref(r);
  }

  rv_remote_destroy(rm);
  for (int i = 0; i < 3; i++) rv_serve_destroy(sv[i].s);
  free(sv);
  rv_replica_destroy(full);
  rv_replica_destroy(shard[0]);
  rv_replica_destroy(shard[1]);
  rv_buf_close(&buf);
  rv_codec_destroy(codec);
  rd_kafka_destroy(p);
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(owner);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_after)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
