#define _GNU_SOURCE
/* Topology files: the shipped demo, defaults, every key, interpolation, and
 * each kind of problem with its exact line:column and message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_interp.h"
#include "rv_topology.h"

#define TESTDATA RV_TOPOLOGY_TESTDATA

/* ---- helpers --------------------------------------------------------------- */

static void dump(const rv_diags_t *d) {
  for (int i = 0; i < d->n; i++)
    print_message("  diag %d: %s:%d:%d: %s\n", i, d->items[i].file, d->items[i].line, d->items[i].column,
                  d->items[i].message);
}

/* Fails, printing both sides and every diag, unless diag i is at line:column and mentions want. */
static void check_diag(const rv_diags_t *d, int i, int line, int column, const char *want, const char *where,
                       int at) {
  if (i >= d->n) {
    dump(d);
    print_error("%s:%d: want diag %d (%d:%d '%s'), have only %d\n", where, at, i, line, column, want, d->n);
    fail();
  }
  const rv_diag_t *g = &d->items[i];
  if (g->line != line || g->column != column || !strstr(g->message, want)) {
    dump(d);
    print_error("%s:%d: diag %d: want %d:%d containing '%s', got %d:%d '%s'\n", where, at, i, line, column, want,
                g->line, g->column, g->message);
    fail();
  }
}

#define assert_diag(d, i, line, column, want) check_diag((d), (i), (line), (column), (want), __FILE__, __LINE__)

static void check_n(const rv_diags_t *d, int n, const char *where, int at) {
  if (d->n != n) {
    dump(d);
    print_error("%s:%d: want %d diags, got %d\n", where, at, n, d->n);
    fail();
  }
}

#define assert_n_diags(d, n) check_n((d), (n), __FILE__, __LINE__)

/* Parses text; expects RV_ERR_CONFIG and exactly one diag at line:column mentioning want. */
static void check_one(const char *text, int line, int column, const char *want, const char *where, int at) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_parse("t.yaml", text, strlen(text), &t, &d);
  if (err != RV_ERR_CONFIG) {
    dump(&d);
    print_error("%s:%d: want RV_ERR_CONFIG, got %d for:\n%s\n", where, at, err, text);
    fail();
  }
  check_n(&d, 1, where, at);
  check_diag(&d, 0, line, column, want, where, at);
  assert_string_equal(d.items[0].file, "t.yaml");
  rv_diags_close(&d);
}

#define assert_one_problem(text, line, column, want) check_one((text), (line), (column), (want), __FILE__, __LINE__)

/* Parses text that must be valid. */
static void parse_ok(const char *text, rv_topology_t *t) {
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_parse("t.yaml", text, strlen(text), t, &d);
  if (err != RV_OK) dump(&d);
  assert_int_equal(err, RV_OK);
  assert_int_equal(d.n, 0);
  rv_diags_close(&d);
}

#define MINIMAL "name: m\ncollections:\n  - name: c\n    dim: 4\n"

/* ---- valid files ------------------------------------------------------------ */

static void test_demo_loads_with_defaults(void **state) {
  unsetenv("RV_LISTEN");
  unsetenv("RV_DATA_DIR");
  unsetenv("RV_ENDPOINTS");
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_load(RV_DEMO_YAML, &t, &d);
  if (err) dump(&d);
  assert_int_equal(err, RV_OK);
  assert_int_equal(d.n, 0);
  assert_string_equal(t.name, "demo");
  assert_string_equal(t.data_dir, "var/demo");
  assert_string_equal(t.brokers, "embedded");
  assert_int_equal(t.kafka_partitions, 12);
  assert_string_equal(t.postgres, "embedded");
  assert_int_equal(t.pgbouncer, 0);
  assert_string_equal(t.redis, "embedded");
  assert_int_equal(t.n_collections, 1);
  const rv_collection_conf_t *c = &t.collections[0];
  assert_string_equal(c->name, "fashion");
  assert_int_equal(c->dim, 784);
  assert_int_equal(c->metric, RV_METRIC_L2);
  assert_int_equal(c->partitions, 12); /* inherited from kafka.partitions */
  assert_int_equal(c->schema_id, 1);
  assert_string_equal(c->source_topic, "fashion.vectors");
  assert_string_equal(c->changelog_topic, "fashion.changelog");
  assert_string_equal(c->dlq_topic, "fashion.dlq");
  assert_int_equal(c->n_fields, 1);
  assert_string_equal(c->fields[0].name, "label");
  assert_int_equal(c->fields[0].type, RV_FIELD_KEYWORD);
  assert_int_equal(t.batch_rows, 1000);
  assert_int_equal(t.batch_ms, 50);
  assert_int_equal(t.max_metadata_bytes, 65536);
  assert_int_equal(t.hnsw_m, 16);
  assert_int_equal(t.hnsw_ef_construction, 100);
  assert_int_equal(t.hnsw_ef_search, 64);
  assert_int_equal(t.hnsw_storage, 0); /* float */
  assert_int_equal(t.hnsw_sq8_train, 1000);
  assert_string_equal(t.snapshot_dir, "");
  assert_int_equal(t.snapshot_interval_s, 0);
  assert_int_equal(t.n_regions, 1);
  assert_string_equal(t.regions[0], "local");
  assert_string_equal(t.serve_host, "127.0.0.1");
  assert_int_equal(t.serve_port, 8080);
  assert_int_equal(t.serve_workers, 2);
  assert_int_equal(t.cache_l1_entries, 10000);
  assert_int_equal(t.cache_l2_ttl_s, 300);
  assert_string_equal(t.endpoints_file, "var/endpoints.json");
  rv_diags_close(&d);
}

static void test_demo_takes_environment(void **state) {
  setenv("RV_LISTEN", "[::1]:0", 1);
  setenv("RV_DATA_DIR", "/tmp/rv-demo", 1);
  setenv("RV_ENDPOINTS", "", 1); /* empty: the default applies */
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(RV_DEMO_YAML, &t, &d), RV_OK);
  assert_string_equal(t.serve_host, "::1");
  assert_int_equal(t.serve_port, 0);
  assert_string_equal(t.data_dir, "/tmp/rv-demo");
  assert_string_equal(t.endpoints_file, "var/endpoints.json");
  rv_diags_close(&d);
  unsetenv("RV_LISTEN");
  unsetenv("RV_DATA_DIR");
  unsetenv("RV_ENDPOINTS");
}

static void test_minimal_gets_every_default(void **state) {
  rv_topology_t t;
  parse_ok("name: tiny\nkafka:\n  partitions: 5\ncollections:\n  - name: c\n    dim: 4\n", &t);
  assert_string_equal(t.data_dir, "var/tiny");
  assert_string_equal(t.brokers, "embedded");
  assert_int_equal(t.collections[0].partitions, 5); /* from kafka.partitions */
  assert_int_equal(t.collections[0].metric, RV_METRIC_L2);
  assert_int_equal(t.collections[0].n_fields, 0);
  assert_string_equal(t.collections[0].dlq_topic, "c.dlq");
  assert_int_equal(t.n_regions, 1);
  assert_string_equal(t.regions[0], "local");
  assert_string_equal(t.endpoints_file, "var/endpoints.json");
}

static void test_every_key(void **state) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_load(TESTDATA "/full.yaml", &t, &d);
  if (err) dump(&d);
  assert_int_equal(err, RV_OK);
  assert_string_equal(t.name, "full-1");
  assert_string_equal(t.data_dir, "/srv/ruvector/full");
  assert_string_equal(t.brokers, "kafka-0.kafka:9092,kafka-1.kafka:9092,[fd00::1]:9093");
  assert_int_equal(t.kafka_partitions, 12);
  assert_string_equal(t.postgres, "host=db.internal port=6432 dbname=vectors user=ruvector");
  assert_int_equal(t.pgbouncer, 1);
  assert_string_equal(t.redis, "unix:/run/redis/redis.sock");
  assert_int_equal(t.n_collections, 2);
  const rv_collection_conf_t *p = &t.collections[0], *i = &t.collections[1];
  assert_string_equal(p->name, "products");
  assert_int_equal(p->dim, 384);
  assert_int_equal(p->metric, RV_METRIC_COSINE);
  assert_int_equal(p->partitions, 24);
  assert_int_equal(p->schema_id, 7);
  assert_string_equal(p->source_topic, "shop.products.v2");
  assert_string_equal(p->changelog_topic, "shop.products.changes");
  assert_string_equal(p->dlq_topic, "shop.products.dead");
  assert_int_equal(p->n_fields, 2);
  assert_string_equal(p->fields[1].name, "price");
  assert_int_equal(p->fields[1].type, RV_FIELD_NUMBER);
  assert_string_equal(i->name, "images");
  assert_int_equal(i->metric, RV_METRIC_IP);
  assert_int_equal(i->partitions, 12);
  assert_string_equal(i->source_topic, "images.vectors");
  assert_int_equal(t.batch_rows, 20000);
  assert_int_equal(t.batch_ms, 200);
  assert_int_equal(t.max_metadata_bytes, 4096);
  assert_int_equal(t.hnsw_m, 32);
  assert_int_equal(t.hnsw_ef_construction, 400);
  assert_int_equal(t.hnsw_ef_search, 128);
  assert_int_equal(t.hnsw_storage, 1); /* sq8 */
  assert_int_equal(t.hnsw_sq8_train, 5000);
  assert_string_equal(t.snapshot_dir, "/srv/ruvector/snapshots");
  assert_int_equal(t.snapshot_interval_s, 300);
  assert_int_equal(t.n_regions, 3);
  assert_string_equal(t.regions[0], "us-central1");
  assert_string_equal(t.regions[2], "asia-east1");
  assert_string_equal(t.serve_host, "0.0.0.0");
  assert_int_equal(t.serve_port, 9090);
  assert_int_equal(t.serve_workers, 8);
  assert_int_equal(t.cache_l1_entries, 0);
  assert_int_equal(t.cache_l2_ttl_s, 3600);
  assert_string_equal(t.endpoints_file, "/srv/ruvector/endpoints.json");
  rv_diags_close(&d);
}

static void test_empty_sections_mean_defaults(void **state) {
  rv_topology_t t;
  parse_ok(MINIMAL "kafka:\ncache: ~\nregions:\n", &t);
  assert_int_equal(t.kafka_partitions, 3);
  assert_int_equal(t.cache_l2_ttl_s, 300);
  assert_string_equal(t.regions[0], "local");
}

/* ---- interpolation -------------------------------------------------------- */

static void test_interpolation(void **state) {
  setenv("RV_T_DIM", "16", 1);
  setenv("RV_T_EMPTY", "", 1);
  setenv("RV_T_HOST", "10.0.0.7", 1);
  unsetenv("RV_T_UNSET");
  rv_topology_t t;
  parse_ok("name: n${RV_T_EMPTY}x\n"                       /* set but empty: "" */
           "data_dir: \"/cost/$$5/${RV_T_UNSET:-d}$\"\n"   /* $$, default, lone $ */
           "serve:\n  listen: ${RV_T_HOST}:${RV_T_UNSET:-81}\n"
           "collections:\n"
           "  - name: c\n"
           "    dim: ${RV_T_DIM}\n"                        /* an int after interpolation */
           "    partitions: ${RV_T_EMPTY:-7}\n"            /* empty: the default */
           "    schema_id: '${RV_T_UNSET:-9}'\n",          /* quoted scalars too */
           &t);
  assert_string_equal(t.name, "nx");
  assert_string_equal(t.data_dir, "/cost/$5/d$");
  assert_string_equal(t.serve_host, "10.0.0.7");
  assert_int_equal(t.serve_port, 81);
  assert_int_equal(t.collections[0].dim, 16);
  assert_int_equal(t.collections[0].partitions, 7);
  assert_int_equal(t.collections[0].schema_id, 9);

  /* A variable set but empty, without a default, is "" and fails the type check. */
  assert_one_problem(MINIMAL "index:\n  m: ${RV_T_EMPTY}\n", 6, 6, "expected an integer, got ''");
  assert_one_problem(MINIMAL "data_dir: \"${RV_T_EMPTY}\"\n", 5, 11, "data_dir: must not be empty");
  unsetenv("RV_T_DIM");
  unsetenv("RV_T_EMPTY");
  unsetenv("RV_T_HOST");
}

static void test_interpolation_errors(void **state) {
  unsetenv("RV_T_UNSET");
  assert_one_problem(MINIMAL "data_dir: a/${RV_T_UNSET}/b\n", 5, 11,
                     "data_dir: undefined variable 'RV_T_UNSET' (use ${RV_T_UNSET:-default})");
  assert_one_problem(MINIMAL "data_dir: a/${RV_T_UNSET\n", 5, 11, "unterminated '${'");
  assert_one_problem(MINIMAL "data_dir: a/${9X}\n", 5, 11, "invalid variable name '9X'");
  assert_one_problem(MINIMAL "data_dir: ${}\n", 5, 11, "invalid variable name ''");
  assert_one_problem(MINIMAL "data_dir: ${A:?x}\n", 5, 11, "expected '}' or ':-'");
  assert_one_problem(MINIMAL "data_dir: ${A:-${B}}\n", 5, 11, "nested '${'");
}

static void test_interp_function(void **state) {
  char err[128] = "", *out = NULL;
  setenv("RV_T_V", "val", 1);
  assert_int_equal(rv__interp("a${RV_T_V}b$$c$", 15, &out, err, sizeof err), RV_OK);
  assert_string_equal(out, "avalb$c$");
  free(out);
  assert_int_equal(rv__interp("", 0, &out, err, sizeof err), RV_OK);
  assert_string_equal(out, "");
  free(out);
  /* len bounds the input: the '}' past it does not close the reference */
  assert_int_equal(rv__interp("${RV_T_V}", 8, &out, err, sizeof err), RV_ERR_CONFIG);
  assert_null(out);
  assert_non_null(strstr(err, "unterminated"));
  assert_int_equal(rv__interp("a\0b", 3, &out, err, sizeof err), RV_ERR_CONFIG);
  assert_non_null(strstr(err, "NUL"));
  unsetenv("RV_T_V");
}

/* ---- one problem of each kind ---------------------------------------------- */

static void test_type_errors(void **state) {
  assert_one_problem(MINIMAL "index:\n  m: abc\n", 6, 6, "index.m: expected an integer, got 'abc'");
  assert_one_problem(MINIMAL "index:\n  m: 1.5\n", 6, 6, "expected an integer, got '1.5'");
  assert_one_problem(MINIMAL "index: 16\n", 5, 8, "index: expected a mapping, got a scalar '16'");
  assert_one_problem(MINIMAL "serve: [a]\n", 5, 8, "serve: expected a mapping, got a list");
  assert_one_problem(MINIMAL "regions: local\n", 5, 10, "regions: expected a list, got a scalar 'local'");
  assert_one_problem("name: n\ncollections:\n  name: c\n", 3, 3, "collections: expected a list, got a mapping");
  assert_one_problem(MINIMAL "index:\n  m: [1]\n", 6, 6, "index.m: expected a scalar, got a list");
  assert_one_problem("name: n\ncollections: [7]\n", 2, 15, "collections[0]: expected a mapping, got a scalar '7'");
}

static void test_range_and_enum_errors(void **state) {
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim: 0\n", 4, 10,
                     "collections[0].dim: value 0 out of range 1..65536");
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim: 65537\n", 4, 10, "out of range 1..65536");
  assert_one_problem(MINIMAL "ingest: {batch_rows: 99999999999999999999999}\n", 5, 22,
                     "value 99999999999999999999999 out of range 1..1000000");
  assert_one_problem(MINIMAL "serve:\n  workers: -1\n", 6, 12, "value -1 out of range 1..64");
  assert_one_problem(MINIMAL "cache:\n  l2_ttl_s: 604801\n", 6, 13, "out of range 1..604800");
  assert_one_problem(MINIMAL "kafka:\n  partitions: 257\n", 6, 15, "out of range 1..256");
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim: 4\n    metric: cos\n", 5, 13,
                     "collections[0].metric: expected one of l2, cosine, ip, got 'cos'");
  assert_one_problem(MINIMAL "postgres:\n  mode: bouncer\n", 6, 9, "expected one of direct, pgbouncer, got 'bouncer'");
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim: 4\n    fields:\n      - {name: f, type: text}\n", 6,
                     25, "collections[0].fields[0].type: expected one of keyword, number, got 'text'");
}

static void test_schema_registry(void **state) {
  rv_topology_t t;
  parse_ok(MINIMAL, &t);
  assert_string_equal("", t.schema_registry); /* default: none */
  parse_ok(MINIMAL "ingest:\n  schema_registry: http://127.0.0.1:8081/\n", &t);
  assert_string_equal("http://127.0.0.1:8081/", t.schema_registry);
  parse_ok(MINIMAL "ingest: {schema_registry: https://registry.example:443}\n", &t);
  assert_string_equal("https://registry.example:443", t.schema_registry);
  parse_ok(MINIMAL "ingest: {schema_registry: /etc/ruvector/schemas}\n", &t);
  assert_string_equal("/etc/ruvector/schemas", t.schema_registry);
  parse_ok(MINIMAL "ingest: {schema_registry: 'file:///srv/schemas'}\n", &t);
  assert_string_equal("file:///srv/schemas", t.schema_registry);
  assert_one_problem(MINIMAL "ingest:\n  schema_registry: ftp://host/schemas\n", 6, 20,
                     "ingest.schema_registry: expected an http(s):// Schema Registry URL, file:///dir or a "
                     "directory of <id>.avsc, got 'ftp://host/schemas'");
  assert_one_problem(MINIMAL "ingest:\n  schema_registry: http://\n", 6, 20, "got 'http://'");
  assert_one_problem(MINIMAL "ingest:\n  schema_registry: ''\n", 6, 20, "ingest.schema_registry: must not be empty");
}

/* Quantization and partitioning keys of ingest (rv_quant.h, rv_pgschema.h). */
static void test_quantization_and_partition_keys(void **state) {
  (void)state;
  rv_topology_t t;
  parse_ok(MINIMAL, &t);
  assert_int_equal(1000, t.sq8_train);
  assert_int_equal(5000, t.sq8_train_wait_ms);
  assert_int_equal(1, t.store_vector);
  assert_int_equal(0, t.partman);
  assert_int_equal(3, t.premake);
  assert_string_equal("", t.sq8_params[0]);
  parse_ok("name: m\ncollections:\n  - name: c\n    dim: 4\n    sq8_params: /srv/c.sq8\n"
           "ingest: {sq8_train: 20, sq8_train_wait_ms: 100, store_vector: false, partman: 'off', premake: 12}\n",
           &t);
  assert_int_equal(20, t.sq8_train);
  assert_int_equal(100, t.sq8_train_wait_ms);
  assert_int_equal(0, t.store_vector);
  assert_int_equal(1, t.partman);
  assert_int_equal(12, t.premake);
  assert_string_equal("/srv/c.sq8", t.sq8_params[0]);
  assert_one_problem(MINIMAL "ingest:\n  sq8_train: 0\n", 6, 14, "ingest.sq8_train: value 0 out of range 1..1000000");
  assert_one_problem(MINIMAL "ingest:\n  partman: maybe\n", 6, 12,
                     "ingest.partman: expected one of auto, off, got 'maybe'");
  assert_one_problem(MINIMAL "ingest:\n  store_vector: yes\n", 6, 17,
                     "ingest.store_vector: expected one of false, true, got 'yes'");
  assert_one_problem(MINIMAL "ingest:\n  premake: 121\n", 6, 12, "ingest.premake: value 121 out of range 1..120");
  assert_one_problem(MINIMAL "    sq8_params: ''\n", 5, 17, "collections[0].sq8_params: must not be empty");
}

/* ingest.pq_m: off by default; when set it must divide every collection's dim. */
static void test_pq_m(void **state) {
  (void)state;
  rv_topology_t t;
  parse_ok(MINIMAL, &t);
  assert_int_equal(0, t.pq_m);
  parse_ok(MINIMAL "ingest:\n  pq_m: 2\n", &t);
  assert_int_equal(2, t.pq_m);
  parse_ok(MINIMAL "ingest:\n  pq_m: 4\n", &t); /* m == dim: one float per sub-quantizer */
  assert_int_equal(4, t.pq_m);
  parse_ok(MINIMAL "ingest:\n  pq_m: 0\n", &t);
  assert_int_equal(0, t.pq_m);
  assert_one_problem(MINIMAL "ingest:\n  pq_m: 3\n", 6, 9,
                     "ingest.pq_m: 3 does not divide the dim 4 of collection 'c' (0 turns PQ off)");
  assert_one_problem(MINIMAL "ingest:\n  pq_m: 8\n", 6, 9, "ingest.pq_m: 8 does not divide the dim 4 of collection 'c'");
  assert_one_problem(MINIMAL "ingest:\n  pq_m: -1\n", 6, 9, "ingest.pq_m: value -1 out of range 0..65536");
  assert_one_problem(MINIMAL "ingest:\n  pq_m: many\n", 6, 9, "ingest.pq_m: expected an integer, got 'many'");
  /* Every collection is checked, each reported at the key. */
  rv_diags_t d;
  rv_diags_init(&d);
  const char *two = "name: m\ncollections:\n  - name: a\n    dim: 8\n  - name: b\n    dim: 12\n  - name: x\n"
                    "    dim: 6\ningest: {batch_ms: 5, pq_m: 4}\n";
  assert_int_equal(RV_ERR_CONFIG, rv_topology_parse("t.yaml", two, strlen(two), &t, &d));
  assert_int_equal(1, d.n);
  assert_diag(&d, 0, 9, 29, "ingest.pq_m: 4 does not divide the dim 6 of collection 'x'");
  rv_diags_close(&d);
}

static void test_missing_required(void **state) {
  /* at the mapping that lacks the key */
  assert_one_problem("collections:\n  - name: c\n    dim: 4\n", 1, 1, "missing required key 'name'");
  assert_one_problem("name: n\n", 1, 1, "missing required key 'collections'");
  assert_one_problem("name: n\ncollections:\n  - dim: 3\n", 3, 5, "collections[0]: missing required key 'name'");
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim: 4\n    fields:\n      - type: number\n", 6, 9,
                     "collections[0].fields[0]: missing required key 'name'");
  /* a key written without a value: at the key */
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim:\n", 4, 5, "missing value for required key 'dim'");
  assert_one_problem("name: n\ncollections:\n", 2, 1, "missing value for required key 'collections'");
  assert_one_problem("name: n\ncollections: []\n", 2, 14, "must list at least one collection");
}

static void test_unknown_and_duplicate_keys(void **state) {
  assert_one_problem(MINIMAL "indx:\n  m: 8\n", 5, 1, "unknown key 'indx' (did you mean 'index'?)");
  assert_one_problem(MINIMAL "serve:\n  colour: blue\n", 6, 3, "serve: unknown key 'colour' (expected one of listen, workers)");
  assert_one_problem(MINIMAL "index:\n  efsearch: 8\n", 6, 3, "(did you mean 'ef_search'?)");
  assert_one_problem(MINIMAL "index:\n  storage: pq\n", 6, 12, "index.storage: expected one of float, sq8, got 'pq'");
  assert_one_problem(MINIMAL "index:\n  snapshot_interval_s: -1\n", 6, 24, "out of range 0..86400");
  assert_one_problem(MINIMAL "index:\n  m: 8\n  m: 9\n", 7, 3, "index: duplicate key 'm' (first at line 6)");
  assert_one_problem(MINIMAL "name: again\n", 5, 1, "duplicate key 'name' (first at line 1)");
}

static void test_duplicate_names(void **state) {
  assert_one_problem("name: n\ncollections:\n  - {name: a, dim: 1}\n  - {name: b, dim: 1}\n  - {name: a, dim: 1}\n", 5,
                     12, "collections[2].name: duplicate collection name 'a' (first at line 3)");
  assert_one_problem(MINIMAL "regions: [eu, us, eu]\n", 5, 19, "regions[2]: duplicate region 'eu' (first at line 5)");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n  - name: eu\n", 7, 11,
                     "regions[1].name: duplicate region 'eu' (first at line 6)");
  assert_one_problem("name: n\ncollections:\n  - name: c\n    dim: 4\n    fields: [{name: f}, {name: f}]\n", 5, 32,
                     "duplicate field 'f' (first at line 5)");
  /* an explicit topic that is another collection's default */
  assert_one_problem("name: n\ncollections:\n  - name: a\n    dim: 1\n    topics: {dlq: b.vectors}\n"
                     "  - name: b\n    dim: 1\n",
                     5, 19, "collections[0].topics.dlq: topic 'b.vectors' is also the source topic of collection 'b'");
}

static void test_invalid_values(void **state) {
  assert_one_problem("name: Demo\ncollections:\n  - {name: c, dim: 1}\n", 1, 7, "invalid name 'Demo'");
  assert_one_problem("name: n\ncollections:\n  - {name: 9c, dim: 1}\n", 3, 12,
                     "invalid collection name '9c' (expected [a-z][a-z0-9_]{0,47})");
  assert_one_problem(MINIMAL "regions: [EU]\n", 5, 11, "invalid region name 'EU'");
  assert_one_problem(MINIMAL "serve: {listen: 8080}\n", 5, 17, "invalid address '8080': expected host:port");
  assert_one_problem(MINIMAL "serve: {listen: '::1:80'}\n", 5, 17, "write an IPv6 address in brackets");
  assert_one_problem(MINIMAL "serve: {listen: 'h:65536'}\n", 5, 17, "port out of range 0..65535");
  assert_one_problem(MINIMAL "kafka: {brokers: 'a:1,b'}\n", 5, 18, "invalid broker 'b': expected host:port");
  assert_one_problem(MINIMAL "kafka: {brokers: 'a:1,'}\n", 5, 18, "invalid broker '': empty entry");
  assert_one_problem(MINIMAL "kafka: {brokers: 'a:0'}\n", 5, 18, "port out of range 1..65535");
  assert_one_problem(MINIMAL "redis: {url: 'unix:run/r.sock'}\n", 5, 14, "expected an absolute path after 'unix:'");
  assert_one_problem(MINIMAL "redis: {url: 'redis'}\n", 5, 14, "invalid address 'redis'");
  assert_one_problem(MINIMAL "postgres: {dsn: mydb}\n", 5, 17, "expected 'embedded' or a libpq connection string");
  assert_one_problem("name: n\ncollections:\n  - {name: c, dim: 1, topics: {source: 'a b'}}\n", 3, 40,
                     "invalid topic name 'a b'");
  assert_one_problem(MINIMAL "endpoints_file: ''\n", 5, 17, "endpoints_file: must not be empty");
}

static void test_too_many(void **state) {
  char text[4096] = "name: n\ncollections:\n";
  for (int i = 0; i < RV_MAX_COLLECTIONS + 1; i++) {
    size_t off = strlen(text);
    snprintf(text + off, sizeof text - off, "  - {name: c%d, dim: 1}\n", i);
  }
  assert_one_problem(text, 3 + RV_MAX_COLLECTIONS, 5, "too many collections (at most 16)");
  assert_one_problem(MINIMAL "regions: [a, b, c, d, e, f, g, h, i]\n", 5, 35, "too many regions (at most 8)");
}

static void test_long_strings_rejected(void **state) {
  char text[4096];
  char long_dir[1101];
  memset(long_dir, 'd', 1100);
  long_dir[1100] = '\0';
  snprintf(text, sizeof text, MINIMAL "data_dir: %s\n", long_dir);
  assert_one_problem(text, 5, 11, "data_dir: string too long (1100 bytes, at most 1023)");

  /* exactly the largest that fits */
  rv_topology_t t;
  long_dir[1023] = '\0';
  snprintf(text, sizeof text, MINIMAL "data_dir: %s\n", long_dir);
  parse_ok(text, &t);
  assert_int_equal(strlen(t.data_dir), 1023);

  /* 64 characters match the name pattern, but the struct holds 63 */
  snprintf(text, sizeof text, "name: %.64s\ncollections:\n  - {name: c, dim: 1}\n", long_dir);
  assert_one_problem(text, 1, 7, "name: string too long (64 bytes, at most 63)");
  snprintf(text, sizeof text, "name: n\ncollections:\n  - {name: c, dim: 1, topics: {dlq: %.200s}}\n", long_dir);
  assert_one_problem(text, 3, 37, "string too long (200 bytes, at most 191)");

  /* the length that counts is after interpolation */
  setenv("RV_T_LONG", long_dir, 1); /* 1023 bytes */
  assert_one_problem(MINIMAL "endpoints_file: x/${RV_T_LONG}\n", 5, 17, "string too long (1025 bytes, at most 1023)");
  unsetenv("RV_T_LONG");
}

/* ---- whole documents ------------------------------------------------------- */

static void test_four_problems(void **state) {
  unsetenv("RV_TEST_UNSET_LISTEN");
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  const char *path = TESTDATA "/four_problems.yaml";
  assert_int_equal(rv_topology_load(path, &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 4);
  assert_diag(&d, 0, 4, 15, "kafka.partitions: expected an integer, got 'three'");
  assert_diag(&d, 1, 8, 5, "collections[0]: unknown key 'metirc' (did you mean 'metric'?)");
  assert_diag(&d, 2, 9, 5, "collections[1]: missing required key 'dim'");
  assert_diag(&d, 3, 12, 11, "serve.listen: undefined variable 'RV_TEST_UNSET_LISTEN'");
  for (int i = 0; i < d.n; i++) assert_string_equal(d.items[i].file, path);

  /* printed one per line as file:line:column: message */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  rv_diags_print(&d, f);
  fclose(f);
  char want[512];
  snprintf(want, sizeof want, "%s:4:15: kafka.partitions: expected an integer, got 'three'\n%s:8:5: ", path, path);
  assert_true(strncmp(buf, want, strlen(want)) == 0);
  int lines = 0;
  for (char *p = buf; *p; p++) lines += *p == '\n';
  assert_int_equal(lines, 4);
  free(buf);
  rv_diags_close(&d);
}

static void test_diags_append(void **state) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  const char *bad = "name: n\ncollections: 1\n";
  assert_int_equal(rv_topology_parse("a.yaml", bad, strlen(bad), &t, &d), RV_ERR_CONFIG);
  assert_int_equal(rv_topology_parse("b.yaml", MINIMAL, strlen(MINIMAL), &t, &d), RV_OK); /* adds none */
  assert_int_equal(rv_topology_parse("c.yaml", bad, strlen(bad), &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 2);
  assert_string_equal(d.items[0].file, "a.yaml");
  assert_string_equal(d.items[1].file, "c.yaml");
  rv_diags_close(&d);
  rv_diags_close(&d); /* closing twice is harmless */
}

static void test_not_a_mapping(void **state) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(TESTDATA "/top_list.yaml", &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 1);
  assert_diag(&d, 0, 1, 1, "expected a mapping at the top level, got a list");
  rv_diags_close(&d);
  assert_one_problem("just a string\n", 1, 1, "expected a mapping at the top level, got a scalar");
}

static void test_empty_file(void **state) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(TESTDATA "/empty.yaml", &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 1);
  assert_diag(&d, 0, 1, 1, "empty topology");
  rv_diags_close(&d);
  assert_one_problem("# only a comment\n\n", 1, 1, "empty topology");
}

static void test_syntax_errors(void **state) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(TESTDATA "/syntax_error.yaml", &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 1);
  assert_diag(&d, 0, 5, 8,
              "YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at line 4, column 10)");
  rv_diags_close(&d);
  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(TESTDATA "/bad_indent.yaml", &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 1);
  assert_diag(&d, 0, 4, 9, "YAML syntax error: mapping values are not allowed in this context");
  rv_diags_close(&d);
  assert_one_problem("a: *nowhere\n", 1, 4, "YAML syntax error: found undefined alias");
  /* invalid UTF-8 is found by libyaml's reader, which reports a byte offset */
  assert_one_problem("name: n\nx: \"\xff\"\n", 2, 5, "YAML syntax error: invalid leading UTF-8 octet");
  assert_one_problem(MINIMAL "---\nname: second\n", 6, 1, "more than one YAML document");
}

static void test_unreadable_file(void **state) {
  rv_topology_t t;
  rv_diags_t d;
  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(TESTDATA "/no-such-file.yaml", &t, &d), RV_ERR_IO);
  assert_n_diags(&d, 1);
  assert_int_equal(d.items[0].line, 0);
  assert_non_null(strstr(d.items[0].message, "cannot open"));
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  rv_diags_print(&d, f);
  fclose(f);
  assert_string_equal(buf, TESTDATA "/no-such-file.yaml: cannot open: No such file or directory\n");
  free(buf);
  rv_diags_close(&d);

  rv_diags_init(&d);
  assert_int_equal(rv_topology_load(TESTDATA, &t, &d), RV_ERR_IO); /* a directory */
  assert_n_diags(&d, 1);
  rv_diags_close(&d);
}

/* libyaml is quadratic in flow nesting: deep "[[[[" is refused before the document is loaded,
 * at the bracket that crosses the limit; brackets in quotes and comments do not count. */
static void test_deep_flow_nesting_is_refused(void **state) {
  (void)state;
  char text[512];
  memset(text, 0, sizeof text);
  strcpy(text, "name: m\nregions: ");
  size_t at = strlen(text);
  memset(text + at, '[', 70);
  /* the top-level mapping is level 1, so the 64th bracket is level 65 */
  assert_one_problem(text, 2, (int)(strlen("regions: ") + 64), "nested deeper than 64 levels");
  /* a quote inside a plain scalar opens no quoted scalar: the brackets after it still count */
  memset(text, 0, sizeof text);
  strcpy(text, "name: m\nregions: [a', ");
  at = strlen(text);
  memset(text + at, '[', 70);
  assert_one_problem(text, 2, (int)(strlen("regions: [a', ") + 63), "nested deeper than 64 levels");

  char quoted[1024];
  char brackets[201];
  memset(brackets, '[', 200);
  brackets[200] = 0;
  snprintf(quoted, sizeof quoted,
           "name: m # %s\ndata_dir: \"%s\"\nendpoints_file: '%s'\ncollections:\n  - {name: c, dim: 4}\n",
           brackets, brackets, brackets);
  rv_topology_t t;
  parse_ok(quoted, &t);
  assert_int_equal(strlen(t.data_dir), 200);
}

static void test_aliases_resolve(void **state) {
  rv_topology_t t;
  parse_ok("name: n\ncollections:\n  - {name: a, dim: &d 8}\n  - {name: b, dim: *d}\n", &t);
  assert_int_equal(t.collections[1].dim, 8);
  /* a bad value shared through an alias is reported once, where it is written */
  unsetenv("RV_T_UNSET");
  const char *text = "name: n\ndata_dir: &v ${RV_T_UNSET}\ncollections:\n  - {name: a, dim: 4}\nendpoints_file: *v\n";
  rv_diags_t d;
  rv_diags_init(&d);
  assert_int_equal(rv_topology_parse("t.yaml", text, strlen(text), &t, &d), RV_ERR_CONFIG);
  assert_n_diags(&d, 1);
  assert_diag(&d, 0, 2, 11, "data_dir: undefined variable 'RV_T_UNSET'");
  rv_diags_close(&d);
}

/* ---- regions with their own settings, and the replica keys of index ------- */

static void test_region_settings(void **state) {
  (void)state;
  rv_topology_t t;
  /* defaults: the pipeline-wide keys, for the implicit [local] and a plain list */
  parse_ok(MINIMAL "index: {ef_search: 99, snapshot_dir: /tmp/s}\n", &t);
  assert_int_equal(t.max_lag_ms, 5000);
  assert_int_equal(t.after_timeout_ms, 5000);
  assert_int_equal(t.tombstone_ms, 60000);
  assert_int_equal(t.n_regions, 1);
  assert_string_equal(t.region_conf[0].name, "local");
  assert_string_equal(t.region_conf[0].listen_host, "127.0.0.1");
  assert_int_equal(t.region_conf[0].listen_port, 0);
  assert_int_equal(t.region_conf[0].shards, 1);
  assert_int_equal(t.region_conf[0].ef_search, 99);
  assert_string_equal(t.region_conf[0].snapshot_dir, "/tmp/s");
  parse_ok(MINIMAL "index: {ef_search: 77}\nregions: [a, b]\n", &t);
  assert_int_equal(t.n_regions, 2);
  assert_string_equal(t.regions[1], "b");
  assert_string_equal(t.region_conf[1].name, "b");
  assert_int_equal(t.region_conf[1].ef_search, 77);
  assert_int_equal(t.region_conf[1].shards, 1);
  /* every key, mixed with plain names */
  parse_ok(MINIMAL "index:\n  max_lag_ms: 250\n  after_timeout_ms: 0\n  tombstone_ms: 1000\n"
                   "regions:\n  - eu\n  - name: us\n    listen: \"[::1]:9100\"\n    shards: 2\n"
                   "    ef_search: 40\n    snapshot_dir: /var/snap/us\n  - {name: asia, listen: '0.0.0.0:9100'}\n",
           &t);
  assert_int_equal(t.max_lag_ms, 250);
  assert_int_equal(t.after_timeout_ms, 0);
  assert_int_equal(t.tombstone_ms, 1000);
  assert_int_equal(t.n_regions, 3);
  assert_string_equal(t.regions[0], "eu");
  assert_string_equal(t.regions[1], "us");
  assert_string_equal(t.regions[2], "asia");
  const rv_region_conf_t *us = &t.region_conf[1];
  assert_string_equal(us->name, "us");
  assert_string_equal(us->listen_host, "::1");
  assert_int_equal(us->listen_port, 9100);
  assert_int_equal(us->shards, 2);
  assert_int_equal(us->ef_search, 40);
  assert_string_equal(us->snapshot_dir, "/var/snap/us");
  assert_string_equal(t.region_conf[2].listen_host, "0.0.0.0");
  assert_int_equal(t.region_conf[2].listen_port, 9100); /* another host: no clash */
  assert_int_equal(t.region_conf[0].ef_search, 64);
}

static void test_region_errors(void **state) {
  (void)state;
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    shards: 0\n", 7, 13,
                     "regions[0].shards: value 0 out of range 1..64");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    shards: 65\n", 7, 13, "value 65 out of range 1..64");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    listen: nowhere\n", 7, 13,
                     "regions[0].listen: invalid address 'nowhere': expected host:port");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    listen: 'h:70000'\n", 7, 13, "port out of range 0..65535");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    ef_search: x\n", 7, 16,
                     "regions[0].ef_search: expected an integer, got 'x'");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    snapshot_dir: ''\n", 7, 19,
                     "regions[0].snapshot_dir: must not be empty");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    shard: 2\n", 7, 5,
                     "regions[0]: unknown key 'shard' (did you mean 'shards'?)");
  assert_one_problem(MINIMAL "regions:\n  - listen: 'h:1'\n", 6, 5, "regions[0]: missing required key 'name'");
  assert_one_problem(MINIMAL "regions:\n  - name: eu\n    listen: 'h:65535'\n    shards: 2\n", 7, 13,
                     "port 65535 + 2 shards runs past 65535");
  assert_one_problem(MINIMAL "regions:\n  - {name: eu, listen: 'h:9000', shards: 3}\n"
                             "  - {name: us, listen: 'h:9002'}\n",
                     7, 24, "regions[1].listen: ports 9002..9002 overlap those of region 'eu' (line 6)");
  assert_one_problem(MINIMAL "index:\n  max_lag_ms: 0\n", 6, 15, "index.max_lag_ms: value 0 out of range 1..3600000");
  assert_one_problem(MINIMAL "index:\n  after_timeout_ms: -1\n", 6, 21, "index.after_timeout_ms: value -1 out of range");
  assert_one_problem(MINIMAL "index:\n  tombstone_ms: soon\n", 6, 17, "index.tombstone_ms: expected an integer");
  assert_one_problem(MINIMAL "index:\n  max_lag_s: 5\n", 6, 3, "unknown key 'max_lag_s' (did you mean 'max_lag_ms'?)");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_demo_loads_with_defaults),
      cmocka_unit_test(test_demo_takes_environment),
      cmocka_unit_test(test_minimal_gets_every_default),
      cmocka_unit_test(test_every_key),
      cmocka_unit_test(test_empty_sections_mean_defaults),
      cmocka_unit_test(test_interpolation),
      cmocka_unit_test(test_interpolation_errors),
      cmocka_unit_test(test_interp_function),
      cmocka_unit_test(test_type_errors),
      cmocka_unit_test(test_range_and_enum_errors),
      cmocka_unit_test(test_missing_required),
      cmocka_unit_test(test_unknown_and_duplicate_keys),
      cmocka_unit_test(test_duplicate_names),
      cmocka_unit_test(test_invalid_values),
      cmocka_unit_test(test_too_many),
      cmocka_unit_test(test_long_strings_rejected),
      cmocka_unit_test(test_four_problems),
      cmocka_unit_test(test_diags_append),
      cmocka_unit_test(test_not_a_mapping),
      cmocka_unit_test(test_empty_file),
      cmocka_unit_test(test_syntax_errors),
      cmocka_unit_test(test_unreadable_file),
      cmocka_unit_test(test_aliases_resolve),
      cmocka_unit_test(test_deep_flow_nesting_is_refused),
      cmocka_unit_test(test_schema_registry),
      cmocka_unit_test(test_quantization_and_partition_keys),
      cmocka_unit_test(test_pq_m),
      cmocka_unit_test(test_region_settings),
      cmocka_unit_test(test_region_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
