/* rv_serve end to end: two replicas (regions "local" and "eu") fed directly,
 * two servers on ephemeral ports (one with L1 only, one with L2 only on a
 * private Redis), and a separate client process (ws_client_check.py) that
 * checks replies against its own brute force over the same vectors. Between
 * the client's phases this test changes the index and stops and restarts
 * Redis. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rv_embedded.h"
#include "rv_replica.h"
#include "rv_serve.h"

#ifndef RV_WS_CLIENT
#error "RV_WS_CLIENT must name ws_client_check.py"
#endif

#define DIM 16
#define N_LOCAL 300
#define N_EU 50
#define L2_TTL_S 120

extern char **environ;

typedef struct fixture {
  char dir[256];
  char data_path[300];
  rv_replica_t *replicas[2]; /* local, eu */
  char regions[2][RV_NAME_MAX];
  rv_serve_collection_t collection;
  rv_redis_server_t *redis;
  rv_serve_t *l1_server; /* L1 on, no Redis */
  rv_serve_t *l2_server; /* L1 off, Redis */
  float vecs[N_LOCAL][DIM];
  float query[DIM];
  float extra[DIM]; /* "zz_new", added to local between phases; equal to query */
  int has_extra;
} fixture_t;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float rnd(void) { /* xorshift64*, uniform in [-1, 1) */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (float)((rng_state * 2685821657736338717ull) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

static void apply(rv_replica_t *r, const char *id, float *vec, const char *meta, int64_t offset) {
  rv_change_t c;
  rv_change_init(&c);
  c.id = (char *)id; /* borrowed: rv_replica_apply copies what it keeps */
  c.op = RV_OP_UPSERT;
  c.src_partition = 0;
  c.src_offset = offset;
  c.vector = vec;
  c.dim = DIM;
  c.attributes = (char *)meta;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
}

/* The metadata of vector i; ws_client_check.py's expected_metadata mirrors it. */
static const char *metadata(int i, char *buf, size_t size) {
  if (i % 3 == 0) {
    snprintf(buf, size, "{\"i\":%d,\"tag\":\"t%d\"}", i, i);
    return buf;
  }
  return i % 3 == 1 ? "not json" : NULL;
}

static void put_floats(FILE *f, const float *v) {
  for (int d = 0; d < DIM; d++) fprintf(f, " %.9g", v[d]);
  fputc('\n', f);
}

static void write_data(fixture_t *fx) {
  FILE *f = fopen(fx->data_path, "w");
  assert_non_null(f);
  fprintf(f, "dim %d\nquery", DIM);
  put_floats(f, fx->query);
  for (int i = 0; i < N_LOCAL; i++) {
    fprintf(f, "v local v%03d", i);
    put_floats(f, fx->vecs[i]);
  }
  if (fx->has_extra) {
    fprintf(f, "v local zz_new");
    put_floats(f, fx->extra);
  }
  for (int i = 0; i < N_EU; i++) {
    fprintf(f, "v eu v%03d", i);
    put_floats(f, fx->vecs[i]);
  }
  assert_int_equal(fclose(f), 0);
}

static void run_client(fixture_t *fx, const char *phase) {
  char p1[16], p2[16];
  snprintf(p1, sizeof p1, "%d", rv_serve_port(fx->l1_server));
  snprintf(p2, sizeof p2, "%d", rv_serve_port(fx->l2_server));
  char *argv[] = {"/usr/bin/python3", RV_WS_CLIENT, (char *)phase, p1, p2, fx->data_path, NULL};
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, argv[0], NULL, NULL, argv, environ), 0);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    print_error("client phase %s failed (status 0x%x)\n", phase, status);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

static rv_serve_t *start_server(fixture_t *fx, const char *redis, int l1_entries) {
  rv_serve_conf_t conf;
  rv_serve_conf_init(&conf);
  conf.port = 0;
  conf.collections = &fx->collection;
  conf.n_collections = 1;
  conf.l1_entries = l1_entries;
  conf.l2_ttl_s = L2_TTL_S;
  conf.workers = 2;
  if (redis) snprintf(conf.redis, sizeof conf.redis, "%s", redis);
  snprintf(conf.cache_namespace, sizeof conf.cache_namespace, "ws-test");
  char err[512];
  rv_serve_t *s = rv_serve_new(&conf, err, sizeof err);
  if (!s) print_error("rv_serve_new: %s\n", err);
  assert_non_null(s);
  assert_int_equal(rv_serve_port(s), 0);
  rv_err_t e = rv_serve_start(s, err, sizeof err);
  if (e) print_error("rv_serve_start: %s\n", err);
  assert_int_equal(e, RV_OK);
  assert_true(rv_serve_port(s) > 0);
  assert_int_equal(rv_serve_start(s, err, sizeof err), RV_ERR_STATE); /* once only */
  return s;
}

/* Every L2 entry is under rv:<namespace>:q:<16 hex> with a TTL of at most l2_ttl_s. */
static void check_redis_keys(fixture_t *fx) {
  const char *addr = rv_redis_server_address(fx->redis);
  assert_true(!strncmp(addr, "unix:", 5));
  redisContext *rc = redisConnectUnix(addr + 5);
  assert_true(rc && !rc->err);
  redisReply *r = redisCommand(rc, "KEYS *");
  assert_non_null(r);
  assert_int_equal(r->type, REDIS_REPLY_ARRAY);
  assert_true(r->elements >= 1);
  for (size_t i = 0; i < r->elements; i++) {
    assert_int_equal(strncmp(r->element[i]->str, "rv:ws-test:q:", 13), 0);
    assert_int_equal(strlen(r->element[i]->str), 13 + 16);
    redisReply *t = redisCommand(rc, "TTL %s", r->element[i]->str);
    assert_int_equal(t->type, REDIS_REPLY_INTEGER);
    assert_true(t->integer > 0 && t->integer <= L2_TTL_S);
    freeReplyObject(t);
  }
  freeReplyObject(r);
  redisFree(rc);
}

static void test_serve_end_to_end(void **state) {
  (void)state;
  fixture_t *fx = calloc(1, sizeof *fx);
  assert_non_null(fx);
  snprintf(fx->dir, sizeof fx->dir, "/tmp/rv_serve_ws_XXXXXX");
  assert_non_null(mkdtemp(fx->dir));
  snprintf(fx->data_path, sizeof fx->data_path, "%s/vectors.txt", fx->dir);
  char err[512];

  /* replicas: local has every vector, eu the first N_EU */
  const char *names[2] = {"local", "eu"};
  for (int r = 0; r < 2; r++) {
    rv_replica_conf_t rc;
    memset(&rc, 0, sizeof rc);
    snprintf(rc.region, sizeof rc.region, "%s", names[r]);
    snprintf(rc.collection.name, sizeof rc.collection.name, "fashion");
    rc.collection.dim = DIM;
    rc.collection.metric = RV_METRIC_L2;
    rc.collection.partitions = 1;
    rc.collection.schema_id = 1;
    rv_collection_default_topics(&rc.collection);
    rc.ef_search = 64;
    fx->replicas[r] = rv_replica_new(&rc, err, sizeof err);
    if (!fx->replicas[r]) print_error("rv_replica_new: %s\n", err);
    assert_non_null(fx->replicas[r]);
    snprintf(fx->regions[r], RV_NAME_MAX, "%s", names[r]);
  }
  char meta[64], id[16];
  for (int i = 0; i < N_LOCAL; i++) {
    for (int d = 0; d < DIM; d++) fx->vecs[i][d] = rnd();
    snprintf(id, sizeof id, "v%03d", i);
    apply(fx->replicas[0], id, fx->vecs[i], metadata(i, meta, sizeof meta), i);
    if (i < N_EU) apply(fx->replicas[1], id, fx->vecs[i], metadata(i, meta, sizeof meta), i);
  }
  for (int d = 0; d < DIM; d++) fx->query[d] = rnd();
  write_data(fx);
  snprintf(fx->collection.name, sizeof fx->collection.name, "fashion");
  fx->collection.replicas = fx->replicas;
  fx->collection.regions = fx->regions;
  fx->collection.n_replicas = 2;

  fx->redis = rv_redis_server_start(fx->dir, err, sizeof err);
  if (!fx->redis) print_error("rv_redis_server_start: %s\n", err);
  assert_non_null(fx->redis);
  char redis_addr[512];
  snprintf(redis_addr, sizeof redis_addr, "%s", rv_redis_server_address(fx->redis));

  fx->l1_server = start_server(fx, NULL, 1000);
  fx->l2_server = start_server(fx, redis_addr, 0);

  run_client(fx, "main");
  check_redis_keys(fx);

  /* change the index: a vector equal to the query becomes every search's top hit */
  memcpy(fx->extra, fx->query, sizeof fx->extra);
  fx->has_extra = 1;
  rv_replica_stats_t before, after;
  rv_replica_stats(fx->replicas[0], &before);
  apply(fx->replicas[0], "zz_new", fx->extra, NULL, N_LOCAL);
  rv_replica_stats(fx->replicas[0], &after);
  assert_true(after.generation > before.generation);
  write_data(fx);
  run_client(fx, "after");

  /* Redis down: searches still work, uncached; then back: caching resumes */
  rv_redis_server_stop(fx->redis);
  fx->redis = NULL;
  run_client(fx, "noredis");
  fx->redis = rv_redis_server_start(fx->dir, err, sizeof err);
  if (!fx->redis) print_error("rv_redis_server_start (again): %s\n", err);
  assert_non_null(fx->redis);
  assert_string_equal(rv_redis_server_address(fx->redis), redis_addr);
  run_client(fx, "redisback");

  rv_serve_destroy(fx->l1_server);
  rv_serve_destroy(fx->l2_server);
  rv_serve_destroy(NULL);
  rv_redis_server_stop(fx->redis);
  for (int r = 0; r < 2; r++) rv_replica_destroy(fx->replicas[r]);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
  if (system(cmd) != 0) print_message("could not remove %s\n", fx->dir);
  free(fx);
}

static void test_conf_validation(void **state) {
  (void)state;
  char err[256];
  rv_serve_conf_t conf;
  rv_serve_conf_init(&conf);
  assert_int_equal(conf.l1_entries, 10000);
  assert_int_equal(conf.workers, 2);
  assert_null(rv_serve_new(&conf, err, sizeof err)); /* no collections */
  assert_true(strlen(err) > 0);

  rv_replica_t *replicas[1] = {NULL};
  char regions[1][RV_NAME_MAX] = {"local"};
  rv_serve_collection_t col = {
      .name = "c", .replicas = replicas, .regions = regions, .n_replicas = 1};
  conf.collections = &col;
  conf.n_collections = 1;
  assert_null(rv_serve_new(&conf, err, sizeof err)); /* a NULL replica */

  rv_replica_conf_t rc;
  memset(&rc, 0, sizeof rc);
  snprintf(rc.region, sizeof rc.region, "local");
  snprintf(rc.collection.name, sizeof rc.collection.name, "c");
  rc.collection.dim = 4;
  rc.collection.partitions = 1;
  rv_collection_default_topics(&rc.collection);
  replicas[0] = rv_replica_new(&rc, err, sizeof err);
  assert_non_null(replicas[0]);
  snprintf(conf.redis, sizeof conf.redis, "no-port-here");
  assert_null(rv_serve_new(&conf, err, sizeof err)); /* malformed Redis address */
  assert_non_null(strstr(err, "no-port-here"));
  conf.redis[0] = 0;

  /* a port already taken: start fails cleanly, destroy still works */
  conf.port = 0;
  rv_serve_t *a = rv_serve_new(&conf, err, sizeof err);
  assert_non_null(a);
  assert_int_equal(rv_serve_start(a, err, sizeof err), RV_OK);
  conf.port = rv_serve_port(a);
  rv_serve_t *b = rv_serve_new(&conf, err, sizeof err);
  assert_non_null(b);
  assert_int_equal(rv_serve_start(b, err, sizeof err), RV_ERR_IO);
  assert_int_equal(rv_serve_port(b), 0);
  rv_serve_destroy(b);
  rv_serve_destroy(a);
  rv_replica_destroy(replicas[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conf_validation),
      cmocka_unit_test(test_serve_end_to_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
