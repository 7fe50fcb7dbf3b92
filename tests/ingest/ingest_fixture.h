#ifndef RV_INGEST_FIXTURE_H
#define RV_INGEST_FIXTURE_H
/* Shared by the ingest integration tests: a private PostgreSQL in a temporary
 * directory, librdkafka's mock cluster with the collection's topics, a test
 * producer, an Avro codec and an ingest configuration pointing at them.
 * Include after <cmocka.h>. */
#include <ftw.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_record.h"

typedef struct ingest_fixture {
  char dir[64]; /* the temporary directory, removed by ingest_fixture_close */
  rv_pg_server_t *pg;
  PGconn *db; /* the test's own connection */
  rd_kafka_t *mock_rk;
  rd_kafka_mock_cluster_t *mock;
  char brokers[512];
  rd_kafka_t *producer;
  rv_codec_t *codec;
  rv_ingest_conf_t conf; /* connection, collection name, dim and schema id 1 filled in; no defaults applied */
} ingest_fixture_t;

static inline int ingest_fixture_rm(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

/* Starts everything for collection coll (dim) with vector_parts source and
 * changelog_parts changelog partitions (the DLQ has one) under
 * /tmp/<prefix>XXXXXX. The producer is idempotent when idempotent is set and
 * calls dr_cb (may be NULL) for each delivery. Returns 0, or -1 with the
 * reason printed; ingest_fixture_close cleans up either way. */
static inline int ingest_fixture_open(ingest_fixture_t *f, const char *prefix, const char *coll, int dim,
                                      int vector_parts, int changelog_parts, int idempotent,
                                      void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *)) {
  char e[1024], topic[RV_TOPIC_MAX];
  memset(f, 0, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/%sXXXXXX", prefix);
  if (!mkdtemp(f->dir) || chmod(f->dir, 0755)) {
    f->dir[0] = 0;
    print_error("temporary directory failed\n");
    return -1;
  }
  if (!(f->pg = rv_pg_server_start(f->dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  if (!(f->db = PQconnectdb(rv_pg_server_conninfo(f->pg))) || PQstatus(f->db) != CONNECTION_OK) {
    print_error("connect: %s\n", PQerrorMessage(f->db));
    return -1;
  }
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (!(f->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e)) ||
      !(f->mock = rd_kafka_mock_cluster_new(f->mock_rk, 3))) {
    print_error("mock cluster failed\n");
    return -1;
  }
  snprintf(f->brokers, sizeof f->brokers, "%s", rd_kafka_mock_cluster_bootstraps(f->mock));
  const char *suffix[3] = {".vectors", ".changelog", ".dlq"};
  int parts[3] = {vector_parts, changelog_parts, 1};
  for (int i = 0; i < 3; i++) {
    snprintf(topic, sizeof topic, "%s%s", coll, suffix[i]);
    if (rd_kafka_mock_topic_create(f->mock, topic, parts[i], 1)) {
      print_error("mock topic %s failed\n", topic);
      return -1;
    }
  }
  c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", f->brokers, e, sizeof e) ||
      (idempotent && rd_kafka_conf_set(c, "enable.idempotence", "true", e, sizeof e)) ||
      rd_kafka_conf_set(c, "partitioner", "murmur2_random", e, sizeof e)) {
    print_error("producer conf: %s\n", e);
    rd_kafka_conf_destroy(c);
    return -1;
  }
  if (dr_cb) rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
  if (!(f->producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) {
    print_error("producer: %s\n", e);
    return -1;
  }
  if (!(f->codec = rv_codec_new(e, sizeof e))) {
    print_error("codec: %s\n", e);
    return -1;
  }
  snprintf(f->conf.brokers, sizeof f->conf.brokers, "%s", f->brokers);
  snprintf(f->conf.pg_conninfo, sizeof f->conf.pg_conninfo, "%s", rv_pg_server_conninfo(f->pg));
  snprintf(f->conf.collection.name, sizeof f->conf.collection.name, "%s", coll);
  f->conf.collection.dim = dim;
  f->conf.collection.schema_id = 1;
  return 0;
}

/* 1 when m is one of ingest's position markers (told by its rv-kind header,
 * as any reader of the changelog must), 0 when it is a change. */
static inline int ingest_fixture_is_marker(const rd_kafka_message_t *m) {
  rd_kafka_headers_t *h = NULL;
  const void *v;
  size_t len;
  return !rd_kafka_message_headers(m, &h) && h && !rd_kafka_header_get_last(h, RV_KIND_HEADER, &v, &len) && v &&
         len == sizeof RV_KIND_POSITION - 1 && !memcmp(v, RV_KIND_POSITION, len);
}

/* Stops and frees what ingest_fixture_open started and removes the directory. */
static inline void ingest_fixture_close(ingest_fixture_t *f) {
  if (f->producer) rd_kafka_destroy(f->producer);
  if (f->mock) rd_kafka_mock_cluster_destroy(f->mock);
  if (f->mock_rk) rd_kafka_destroy(f->mock_rk);
  rv_codec_destroy(f->codec);
  if (f->db) PQfinish(f->db);
  rv_pg_server_stop(f->pg);
  if (!strncmp(f->dir, "/tmp/", 5)) nftw(f->dir, ingest_fixture_rm, 16, FTW_DEPTH | FTW_PHYS);
  memset(f, 0, sizeof *f);
}

#endif
