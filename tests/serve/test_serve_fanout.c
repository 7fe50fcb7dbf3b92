/* Sharded regions end to end: a search fanned out to two shards holding
 * disjoint halves of a data set returns exactly (ids and scores) what one
 * replica holding all of it returns, for plain and filtered searches, with
 * the shards in-process and as remote serve instances over ws://127.0.0.1.
 * A shard that is stopped, or that accepts connections but never answers,
 * makes the reply partial and names it, within the deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rv_client_fixture.h"
#include "rv_replica.h"
#include "rv_serve.h"

#define DIM 8
#define N 300
#define N_QUERIES 12
#define SHARD_TIMEOUT_MS 400

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static float rnd(void) { /* xorshift64*, uniform in [-1, 1) */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (float)((rng_state * 2685821657736338717ull) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

static rv_replica_t *new_replica(void) {
  rv_replica_conf_t rc;
  memset(&rc, 0, sizeof rc);
  snprintf(rc.region, sizeof rc.region, "local");
  snprintf(rc.collection.name, sizeof rc.collection.name, "docs");
  rc.collection.dim = DIM;
  rc.collection.metric = RV_METRIC_L2;
  rc.collection.partitions = 1;
  rc.collection.schema_id = 1;
  snprintf(rc.collection.fields[0].name, RV_NAME_MAX, "cls");
  rc.collection.fields[0].type = RV_FIELD_KEYWORD;
  snprintf(rc.collection.fields[1].name, RV_NAME_MAX, "n");
  rc.collection.fields[1].type = RV_FIELD_NUMBER;
  rc.collection.n_fields = 2;
  rv_collection_default_topics(&rc.collection);
  rc.ef_search = 64;
  char err[256];
  rv_replica_t *r = rv_replica_new(&rc, err, sizeof err);
  if (!r) print_error("rv_replica_new: %s\n", err);
  assert_non_null(r);
  return r;
}

static void apply(rv_replica_t *r, int i, float *vec) {
  char id[16], meta[64];
  snprintf(id, sizeof id, "d%03d", i);
  snprintf(meta, sizeof meta, "{\"cls\":\"%s\",\"n\":%d}", i % 3 ? "a" : "b", i % 10);
  rv_change_t c;
  rv_change_init(&c);
  c.id = id;
  c.op = RV_OP_UPSERT;
  c.src_partition = 0;
  c.src_offset = i;
  c.vector = vec;
  c.dim = DIM;
  c.attributes = meta;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
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

/* A server over one replica, or (replica NULL) over n shards. */
static void server_start(server_t *sv, rv_replica_t *replica, const rv_serve_shard_t *shards, int n) {
  memset(sv, 0, sizeof *sv);
  snprintf(sv->region[0], RV_NAME_MAX, "local");
  snprintf(sv->col.name, sizeof sv->col.name, "docs");
  sv->col.regions = sv->region;
  sv->col.n_replicas = 1;
  sv->col.replicas = sv->replica;
  sv->replica[0] = replica;
  if (!replica) {
    memcpy(sv->shards, shards, (size_t)n * sizeof *shards);
    sv->shard_list[0] = sv->shards;
    sv->n_shards[0] = n;
    sv->col.shards = sv->shard_list;
    sv->col.n_shards = sv->n_shards;
    sv->col.dim = DIM;
  }
  rv_serve_conf_t conf;
  rv_serve_conf_init(&conf);
  conf.port = 0;
  conf.collections = &sv->col;
  conf.n_collections = 1;
  conf.l1_entries = 0; /* every answer computed */
  conf.shard_timeout_ms = SHARD_TIMEOUT_MS;
  char err[512];
  sv->s = rv_serve_new(&conf, err, sizeof err);
  if (!sv->s) print_error("rv_serve_new: %s\n", err);
  assert_non_null(sv->s);
  rv_err_t e = rv_serve_start(sv->s, err, sizeof err);
  if (e) print_error("rv_serve_start: %s\n", err);
  assert_int_equal(e, RV_OK);
  snprintf(sv->url, sizeof sv->url, "ws://127.0.0.1:%d/", rv_serve_port(sv->s));
}

static char *search_body(const float *q, const char *filter) {
  static char body[2048];
  int at = snprintf(body, sizeof body, "{\"type\":\"search\",\"collection\":\"docs\",\"k\":10,\"ef\":%d,\"vector\":[", N + 100);
  for (int d = 0; d < DIM; d++) at += snprintf(body + at, sizeof body - (size_t)at, "%s%.9g", d ? "," : "", (double)q[d]);
  snprintf(body + at, sizeof body - (size_t)at, "]%s%s}", filter ? ",\"filter\":" : "", filter ? filter : "");
  return body;
}

static json_t *ask(rv_remote_t *rm, int ep, const char *body) {
  char why[512];
  json_t *r = client_request(rm, ep, body, 5000, why, sizeof why);
  if (!r) print_error("no reply: %s\n", why);
  assert_non_null(r);
  return r;
}

static char *hits_text(json_t *reply) {
  const char *type = json_string_value(json_object_get(reply, "type"));
  if (!type || strcmp(type, "results")) {
    char *t = json_dumps(reply, JSON_COMPACT);
    print_error("not results: %s\n", t);
    free(t);
  }
  assert_string_equal(type, "results");
  return json_dumps(json_object_get(reply, "hits"), JSON_COMPACT | JSON_REAL_PRECISION(9));
}

/* A TCP listener that never accepts: connections hang in the backlog. */
static int silent_listener(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 16), 0);
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static void test_fanout(void **state) {
  (void)state;
  static float vecs[N][DIM];
  rv_replica_t *full = new_replica(), *half[2] = {new_replica(), new_replica()};
  for (int i = 0; i < N; i++) {
    for (int d = 0; d < DIM; d++) vecs[i][d] = rnd();
    apply(full, i, vecs[i]);
    apply(half[i % 2], i, vecs[i]); /* disjoint halves (ingest would split by changelog partition) */
  }
  server_t *sv = calloc(6, sizeof *sv); /* full, in-process fan, shard A, shard B, remote fan, stalled fan */
  assert_non_null(sv);
  server_start(&sv[0], full, NULL, 0);
  rv_serve_shard_t local[2] = {{.replica = half[0]}, {.replica = half[1]}};
  server_start(&sv[1], NULL, local, 2);
  server_start(&sv[2], half[0], NULL, 0);
  server_start(&sv[3], half[1], NULL, 0);
  rv_serve_shard_t remote[2];
  memset(remote, 0, sizeof remote);
  snprintf(remote[0].url, sizeof remote[0].url, "%s", sv[2].url);
  snprintf(remote[1].url, sizeof remote[1].url, "%s", sv[3].url);
  server_start(&sv[4], NULL, remote, 2);
  int stall_port;
  int stall_fd = silent_listener(&stall_port);
  rv_serve_shard_t stalled[2];
  memset(stalled, 0, sizeof stalled);
  snprintf(stalled[0].url, sizeof stalled[0].url, "%s", sv[2].url);
  snprintf(stalled[1].url, sizeof stalled[1].url, "ws://127.0.0.1:%d/", stall_port);
  server_start(&sv[5], NULL, stalled, 2);

  const char *urls[6];
  for (int i = 0; i < 6; i++) urls[i] = sv[i].url;
  char err[256];
  rv_remote_t *rm = rv_remote_new(urls, 6, err, sizeof err);
  assert_non_null(rm);

  const char *filters[3] = {NULL, "{\"cls\":\"b\"}", "{\"n\":{\"gte\":3,\"lt\":6},\"cls\":{\"in\":[\"a\"]}}"};
  for (int qi = 0; qi < N_QUERIES; qi++) {
    float q[DIM];
    for (int d = 0; d < DIM; d++) q[d] = rnd();
    const char *filter = filters[qi % 3];
    const char *body = search_body(q, filter);
    json_t *want = ask(rm, 0, body);
    char *want_hits = hits_text(want);
    assert_int_equal(json_array_size(json_object_get(want, "hits")), 10);
    for (int f = 1; f <= 4; f += 3) { /* in-process fan-out, remote fan-out */
      json_t *got = ask(rm, f, body);
      char *got_hits = hits_text(got);
      if (strcmp(want_hits, got_hits))
        print_error("query %d (filter %s) via server %d:\n want %s\n got  %s\n", qi, filter ? filter : "none", f,
                    want_hits, got_hits);
      assert_string_equal(want_hits, got_hits);
      assert_true(json_is_false(json_object_get(got, "partial")));
      assert_null(json_object_get(got, "missing_shards"));
      free(got_hits);
      json_decref(got);
    }
    free(want_hits);
    json_decref(want);
  }

  /* A filter error from the shards is the client's error, not a partial answer. */
  float q[DIM] = {0};
  for (int f = 1; f <= 4; f += 3) {
    json_t *r = ask(rm, f, search_body(q, "{\"nope\":1}"));
    assert_string_equal(json_string_value(json_object_get(r, "type")), "error");
    assert_string_equal(json_string_value(json_object_get(r, "code")), "bad_filter");
    json_decref(r);
    r = ask(rm, f, "{\"type\":\"search\",\"collection\":\"docs\",\"vector\":[1,2]}");
    assert_string_equal(json_string_value(json_object_get(r, "code")), "wrong_dim");
    json_decref(r);
  }

  /* A shard that accepts but never answers: partial after the deadline. */
  const char *body = search_body(q, NULL);
  json_t *only_a = ask(rm, 2, body);
  char *a_hits = hits_text(only_a);
  int64_t t0 = rv_mono_us();
  json_t *r = ask(rm, 5, body);
  int64_t took_ms = (rv_mono_us() - t0) / 1000;
  assert_true(json_is_true(json_object_get(r, "partial")));
  json_t *missing = json_object_get(r, "missing_shards");
  assert_int_equal(json_array_size(missing), 1);
  assert_int_equal(json_integer_value(json_array_get(missing, 0)), 1);
  assert_int_equal(json_array_size(json_object_get(r, "shard_errors")), 1);
  char *part_hits = hits_text(r);
  assert_string_equal(part_hits, a_hits); /* what shard 0 holds, nothing silently dropped */
  if (took_ms < SHARD_TIMEOUT_MS - 5 || took_ms > SHARD_TIMEOUT_MS + 1000)
    print_error("partial reply after %lld ms (deadline %d ms)\n", (long long)took_ms, SHARD_TIMEOUT_MS);
  assert_true(took_ms >= SHARD_TIMEOUT_MS - 5 && took_ms <= SHARD_TIMEOUT_MS + 1000);
  free(part_hits);
  json_decref(r);

  /* A shard that is stopped: partial, naming it, within the deadline. */
  rv_serve_destroy(sv[3].s);
  sv[3].s = NULL;
  for (int attempt = 0; attempt < 2; attempt++) { /* the open connection, then a refused reconnect */
    t0 = rv_mono_us();
    r = ask(rm, 4, body);
    took_ms = (rv_mono_us() - t0) / 1000;
    assert_true(json_is_true(json_object_get(r, "partial")));
    missing = json_object_get(r, "missing_shards");
    assert_int_equal(json_array_size(missing), 1);
    assert_int_equal(json_integer_value(json_array_get(missing, 0)), 1);
    part_hits = hits_text(r);
    assert_string_equal(part_hits, a_hits);
    assert_true(took_ms <= SHARD_TIMEOUT_MS + 200);
    free(part_hits);
    json_decref(r);
  }
  free(a_hits);
  json_decref(only_a);

  rv_remote_destroy(rm);
  for (int i = 0; i < 6; i++) rv_serve_destroy(sv[i].s);
  close(stall_fd);
  free(sv);
  rv_replica_destroy(full);
  rv_replica_destroy(half[0]);
  rv_replica_destroy(half[1]);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_fanout)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
