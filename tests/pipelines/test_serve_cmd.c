/* Pieces of `ruvector serve` (pipelines/rv_serve_cmd.c, rv_http_probe.c) and
 * the serve readiness they rely on: a region's shard URLs from the topology
 * (port + I, IPv6 in brackets, port 0 refused); the HTTP probe's status, and
 * -1 for a refused port or a listener that never answers (within its
 * timeout); /ready and /startup of a serve whose region has in-process shards
 * (each shard counts, where the region's NULL replica used to be read), and of
 * a serve asking a conf.ready hook. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rv_http_probe.h"
#include "rv_replica.h"
#include "rv_serve.h"
#include "rv_serve_cmd.h"
#include "rv_time.h"
#include "rv_topology.h"

static const char *TOPO = "name: t\n"
                          "kafka: {brokers: '127.0.0.1:9092'}\n"
                          "postgres: {dsn: 'host=/tmp'}\n"
                          "collections:\n"
                          "  - name: c\n"
                          "    dim: 4\n"
                          "regions:\n"
                          "  - name: a\n"
                          "    listen: 127.0.0.1:9100\n"
                          "    shards: 3\n"
                          "  - name: b\n"
                          "    listen: '[::1]:9200'\n"
                          "  - name: z\n";

static void test_shard_urls(void **state) {
  (void)state;
  rv_topology_t *t = calloc(1, sizeof *t);
  assert_non_null(t);
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_parse("t.yaml", TOPO, strlen(TOPO), t, &d);
  if (err) rv_diags_print(&d, stderr);
  rv_diags_close(&d);
  assert_int_equal(err, RV_OK);
  char url[64];
  assert_int_equal(rv_region_shard_url(t, 0, 0, url, sizeof url), 0);
  assert_string_equal(url, "ws://127.0.0.1:9100/");
  assert_int_equal(rv_region_shard_url(t, 0, 2, url, sizeof url), 0);
  assert_string_equal(url, "ws://127.0.0.1:9102/");
  assert_int_equal(rv_region_shard_url(t, 1, 0, url, sizeof url), 0);
  assert_string_equal(url, "ws://[::1]:9200/");
  assert_int_equal(rv_region_shard_url(t, 2, 0, url, sizeof url), -1); /* region z: port 0 */
  assert_int_equal(rv_region_shard_url(t, 0, 0, url, 8), -1);          /* does not fit */
  free(t);
}

/* With brokers, a replica is not bootstrapped until started (never, here);
 * without, it is at once (changes are applied by hand), but never ready (no
 * lag known). */
static rv_replica_t *new_replica(int shard, int shards, const char *brokers) {
  rv_replica_conf_t rc;
  memset(&rc, 0, sizeof rc);
  snprintf(rc.brokers, sizeof rc.brokers, "%s", brokers);
  snprintf(rc.region, sizeof rc.region, "a");
  snprintf(rc.collection.name, sizeof rc.collection.name, "c");
  rc.collection.dim = 4;
  rc.collection.metric = RV_METRIC_L2;
  rc.collection.partitions = 2;
  rc.collection.schema_id = 1;
  rv_collection_default_topics(&rc.collection);
  rc.shard_index = shard;
  rc.shard_count = shards;
  char err[256];
  rv_replica_t *r = rv_replica_new(&rc, err, sizeof err);
  if (!r) print_error("rv_replica_new: %s\n", err);
  assert_non_null(r);
  return r;
}

typedef struct hook {
  atomic_int ready;
  atomic_int calls, startup_calls;
} hook_t;

static int ready_hook(void *arg, int startup) {
  hook_t *h = arg;
  atomic_fetch_add(&h->calls, 1);
  if (startup) {
    atomic_fetch_add(&h->startup_calls, 1);
    return 1;
  }
  return atomic_load(&h->ready);
}

static rv_serve_t *serve_start(rv_serve_collection_t *col, hook_t *h) {
  rv_serve_conf_t conf;
  rv_serve_conf_init(&conf);
  conf.port = 0;
  conf.collections = col;
  conf.n_collections = 1;
  if (h) {
    conf.ready = ready_hook;
    conf.ready_arg = h;
  }
  char err[512];
  rv_serve_t *s = rv_serve_new(&conf, err, sizeof err);
  if (!s) print_error("rv_serve_new: %s\n", err);
  assert_non_null(s);
  rv_err_t e = rv_serve_start(s, err, sizeof err);
  if (e) print_error("rv_serve_start: %s\n", err);
  assert_int_equal(e, RV_OK);
  return s;
}

static void test_ready(void **state) {
  (void)state;
  /* One region in two in-process shards; shard 1 is not bootstrapped. */
  rv_replica_t *r0 = new_replica(0, 2, ""), *r1 = new_replica(1, 2, "127.0.0.1:9"), *r1b = new_replica(1, 2, "");
  char regions[1][RV_NAME_MAX] = {"a"};
  rv_replica_t *none[1] = {NULL};
  rv_serve_shard_t shards[2] = {{.replica = r0}, {.replica = r1}};
  const rv_serve_shard_t *shard_list[1] = {shards};
  int n_shards[1] = {2};
  rv_serve_collection_t col;
  memset(&col, 0, sizeof col);
  snprintf(col.name, sizeof col.name, "c");
  col.replicas = none;
  col.regions = regions;
  col.n_replicas = 1;
  col.shards = shard_list;
  col.n_shards = n_shards;

  rv_serve_t *s = serve_start(&col, NULL);
  int port = rv_serve_port(s);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/health", 2000), 200);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/ready", 2000), 503);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/startup", 2000), 503);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/api/stats", 2000), 200);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/nope", 2000), 404);
  rv_serve_destroy(s);
  shards[1].replica = r1b; /* both bootstrapped: /startup 200; neither ready */
  s = serve_start(&col, NULL);
  port = rv_serve_port(s);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/startup", 2000), 200);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/ready", 2000), 503);
  rv_serve_destroy(s);

  /* The hook decides, /startup asked with startup = 1. */
  hook_t h;
  atomic_init(&h.ready, 0);
  atomic_init(&h.calls, 0);
  atomic_init(&h.startup_calls, 0);
  s = serve_start(&col, &h);
  port = rv_serve_port(s);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/ready", 2000), 503);
  atomic_store(&h.ready, 1);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/ready", 2000), 200);
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/startup", 2000), 200);
  assert_int_equal(atomic_load(&h.calls), 3);
  assert_int_equal(atomic_load(&h.startup_calls), 1);
  rv_serve_destroy(s);

  /* Nothing listens there any more: refused, at once. */
  int64_t t0 = rv_mono_ms();
  assert_int_equal(rv_http_probe("127.0.0.1", port, "/ready", 2000), -1);
  assert_true(rv_mono_ms() - t0 < 1000);
  rv_replica_destroy(r0);
  rv_replica_destroy(r1);
  rv_replica_destroy(r1b);
}

/* A listener that accepts (through the backlog) but never answers: -1 after the timeout. */
static void test_probe_silent(void **state) {
  (void)state;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 4), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  int64_t t0 = rv_mono_ms();
  assert_int_equal(rv_http_probe("127.0.0.1", ntohs(a.sin_port), "/ready", 300), -1);
  int64_t took = rv_mono_ms() - t0;
  if (took < 280 || took > 1500) print_error("silent probe took %lld ms (timeout 300)\n", (long long)took);
  assert_true(took >= 280 && took <= 1500);
  close(fd);
  /* Bad arguments never connect. */
  assert_int_equal(rv_http_probe("", 80, "/", 100), -1);
  assert_int_equal(rv_http_probe("127.0.0.1", 0, "/", 100), -1);
  assert_int_equal(rv_http_probe("127.0.0.1", 80, "ready", 100), -1);
  assert_int_equal(rv_http_probe("no such host.invalid", 80, "/", 100), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_shard_urls), cmocka_unit_test(test_ready),
                                     cmocka_unit_test(test_probe_silent)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
