#define _GNU_SOURCE
/* Quantization in ingest, against a real private PostgreSQL and an
 * in-process Kafka mock cluster:
 *   - before sq8_train vectors have arrived nothing is written (and nothing
 *     dropped); the batch that reaches sq8_train trains the quantizer, which
 *     is stored as version 1, and every row carries its code and version in
 *     PostgreSQL and on the changelog;
 *   - two ingests that train on different samples agree on one version: the
 *     loser encodes with the winner's parameters;
 *   - a parameter file given in the configuration is stored instead of
 *     training; one of the wrong dim is refused;
 *   - a collection smaller than sq8_train trains after sq8_train_wait_ms;
 *   - with pq_m, every row also carries the stored PQ's code of its vector
 *     and its version; racing trainers agree on one PQ; the first batch is
 *     held for max(256, sq8_train) vectors; with fewer than 256 after the
 *     wait rows go with pq_code NULL until the first vectors, gathered across
 *     batches (a retried batch counted once), reach 256; a pq_m that does not
 *     divide dim, or differs from the stored PQ's, is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rv_batch.h"
#include "ingest_fixture.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_pgschema.h"
#include "rv_pgwriter.h"
#include "rv_pq.h"
#include "rv_quant.h"
#include "rv_record.h"
#include "rv_sq8.h"
#include "rv_time.h"

#define COLL "quant"
#define DIM 16
#define TRAIN 300

static struct {
  char dir[64];
  rv_pg_server_t *pg;
  PGconn *db;
  rd_kafka_t *mock_rk;
  rd_kafka_mock_cluster_t *mock;
  char brokers[512];
  rd_kafka_t *producer;
  rv_codec_t *codec;
} T;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static long long query_int(const char *sql) {
  PGresult *r = PQexec(T.db, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
    fail_msg("%s: %s (%d rows)", sql, PQresultErrorMessage(r), PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* A vector whose values spread over a range that depends on seed. */
static void fill(float *v, int i, float scale) {
  for (int k = 0; k < DIM; k++) v[k] = scale * (float)((i * 31 + k * 17) % 97) / 97.0f - (float)k;
}

static void produce_to(const char *topic, int i) {
  char id[32];
  snprintf(id, sizeof id, "q-%05d", i);
  float v[DIM];
  fill(v, i, 10.0f);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  r.id = id;
  r.id_len = strlen(id);
  r.vector = v;
  r.dim = DIM;
  rv_buf_t b;
  rv_buf_init(&b);
  char e[256];
  if (rv_codec_encode_vector(T.codec, &r, &b, e, sizeof e)) fail_msg("encode: %s", e);
  while (rd_kafka_producev(T.producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                           RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(b.base, b.len),
                           RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(T.producer, 10);
  rv_buf_close(&b);
}

static void produce_vector(int i) { produce_to(COLL ".vectors", i); }

static int setup(void **state) {
  (void)state;
  char e[1024];
  snprintf(T.dir, sizeof T.dir, "/tmp/rv-quant-XXXXXX");
  if (!mkdtemp(T.dir) || chmod(T.dir, 0755)) return -1;
  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  if (!(T.db = PQconnectdb(rv_pg_server_conninfo(T.pg))) || PQstatus(T.db) != CONNECTION_OK) return -1;
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (!(T.mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) return -1;
  if (!(T.mock = rd_kafka_mock_cluster_new(T.mock_rk, 1))) return -1;
  snprintf(T.brokers, sizeof T.brokers, "%s", rd_kafka_mock_cluster_bootstraps(T.mock));
  if (rd_kafka_mock_topic_create(T.mock, COLL ".vectors", 2, 1) ||
      rd_kafka_mock_topic_create(T.mock, COLL ".changelog", 2, 1) || rd_kafka_mock_topic_create(T.mock, COLL ".dlq", 1, 1) ||
      rd_kafka_mock_topic_create(T.mock, "small.vectors", 1, 1) ||
      rd_kafka_mock_topic_create(T.mock, "small.changelog", 1, 1) || rd_kafka_mock_topic_create(T.mock, "small.dlq", 1, 1))
    return -1;
  static const char *const more[] = {"pqc", "pqsmall"};
  for (int i = 0; i < 2; i++) {
    char topic[64];
    static const char *const kinds[] = {"vectors", "changelog", "dlq"};
    for (int k = 0; k < 3; k++) {
      snprintf(topic, sizeof topic, "%s.%s", more[i], kinds[k]);
      if (rd_kafka_mock_topic_create(T.mock, topic, k == 2 ? 1 : 2, 1)) return -1;
    }
  }
  c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.brokers, e, sizeof e)) return -1;
  if (!(T.producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) return -1;
  if (!(T.codec = rv_codec_new(e, sizeof e))) return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (T.producer) rd_kafka_destroy(T.producer);
  if (T.mock) rd_kafka_mock_cluster_destroy(T.mock);
  if (T.mock_rk) rd_kafka_destroy(T.mock_rk);
  rv_codec_destroy(T.codec);
  if (T.db) PQfinish(T.db);
  rv_pg_server_stop(T.pg);
  if (strncmp(T.dir, "/tmp/rv-quant-", 14) == 0) nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* The stored quantizer of collection. */
static rv_sq8_t *stored_sq8(const char *collection, int32_t *version) {
  char e[512];
  rv_buf_t p;
  rv_buf_init(&p);
  rv_sq8_t *q = NULL;
  if (rv_pgschema_get_quantizer(T.db, collection, "sq8", version, &p, e, sizeof e) ||
      rv_sq8_deserialize(p.base, p.len, &q, e, sizeof e))
    fail_msg("stored quantizer of %s: %s", collection, e);
  rv_buf_close(&p);
  return q;
}

/* Every live row's stored code is encode(q, stored vector), with version v. */
static void check_codes(const char *table, const rv_sq8_t *q, int32_t v, long long want_rows) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT vector, code, code_version FROM %s WHERE deleted_at IS NULL", table);
  PGresult *r = PQexecParams(T.db, sql, 0, NULL, NULL, NULL, NULL, 1);
  assert_int_equal(PGRES_TUPLES_OK, PQresultStatus(r));
  assert_int_equal(want_rows, PQntuples(r));
  for (int i = 0; i < PQntuples(r); i++) {
    if (PQgetisnull(r, i, 1) || PQgetlength(r, i, 1) != DIM) fail_msg("row %d: no %d-byte code", i, DIM);
    const uint8_t *ver = (const uint8_t *)PQgetvalue(r, i, 2);
    assert_int_equal(v, (int32_t)((uint32_t)ver[0] << 24 | (uint32_t)ver[1] << 16 | (uint32_t)ver[2] << 8 | ver[3]));
    float x[DIM];
    uint8_t want[DIM];
    assert_int_equal(DIM * 4, PQgetlength(r, i, 0));
    memcpy(x, PQgetvalue(r, i, 0), sizeof x); /* little-endian host */
    rv_sq8_encode(q, x, want);
    assert_memory_equal(want, PQgetvalue(r, i, 1), DIM);
  }
  PQclear(r);
}

typedef struct {
  int changes, coded;
  const rv_sq8_t *q;
} seen_t;

static void read_changelog(seen_t *seen) {
  char e[256];
  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.brokers, e, sizeof e) ||
      rd_kafka_conf_set(c, "group.id", "quant-reader", e, sizeof e))
    fail_msg("%s", e);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
  rd_kafka_poll_set_consumer(rk);
  int64_t high[2], pos[2] = {0, 0}, low;
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(2);
  for (int p = 0; p < 2; p++) {
    if (rd_kafka_query_watermark_offsets(rk, COLL ".changelog", p, &low, &high[p], 10000)) fail_msg("watermarks");
    rd_kafka_topic_partition_list_add(parts, COLL ".changelog", p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  int64_t deadline = rv_mono_ms() + 30000;
  while (pos[0] < high[0] || pos[1] < high[1]) {
    if (rv_mono_ms() > deadline) fail_msg("reading the changelog timed out");
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
    if (!m) continue;
    if (!m->err && ingest_fixture_is_marker(m)) {
      pos[m->partition] = m->offset + 1;
    } else if (!m->err) {
      pos[m->partition] = m->offset + 1;
      rv_change_t ch;
      if (rv_codec_decode_change(T.codec, m->payload, m->len, &ch, e, sizeof e)) fail_msg("change: %s", e);
      seen->changes++;
      if (ch.sq8_code && ch.sq8_len == DIM && ch.sq8_version == 1 && ch.dim == DIM) {
        uint8_t want[DIM];
        rv_sq8_encode(seen->q, ch.vector, want);
        seen->coded += !memcmp(want, ch.sq8_code, DIM);
      }
      rv_change_close(&ch);
    }
    rd_kafka_message_destroy(m);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
}

static void test_trains_on_first_vectors_and_codes_every_row(void **state) {
  (void)state;
  char e[1024];
  rv_ingest_conf_t conf;
  memset(&conf, 0, sizeof conf);
  snprintf(conf.brokers, sizeof conf.brokers, "%s", T.brokers);
  snprintf(conf.pg_conninfo, sizeof conf.pg_conninfo, "%s", rv_pg_server_conninfo(T.pg));
  snprintf(conf.collection.name, sizeof conf.collection.name, COLL);
  conf.collection.dim = DIM;
  conf.collection.schema_id = 1;
  conf.batch_rows = 50; /* far below TRAIN: the first batch must grow past it */
  conf.batch_ms = 10;
  conf.sq8_train = TRAIN;
  conf.sq8_train_wait_ms = 600000; /* only the count may close the first batch here */
  rv_ingest_conf_defaults(&conf);
  assert_int_equal(RV_OK, rv_ingest_migrate(&conf, e, sizeof e));
  rv_ingest_t *in = rv_ingest_new(&conf, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) fail_msg("ingest: %s", e);

  for (int i = 0; i < TRAIN - 1; i++) produce_vector(i);
  rd_kafka_flush(T.producer, 10000);
  rv_ingest_stats_t s;
  int64_t deadline = rv_mono_ms() + 60000;
  do {
    rv_ingest_stats(in, &s);
    if (rv_mono_ms() > deadline) fail_msg("consumed %llu of %d", (unsigned long long)s.consumed, TRAIN - 1);
    usleep(20 * 1000);
  } while (s.consumed < TRAIN - 1);
  /* All read; many batch_ms later still nothing written and no quantizer. */
  int64_t until = rv_mono_ms() + 50 * conf.batch_ms;
  while (rv_mono_ms() < until) {
    rv_ingest_stats(in, &s);
    assert_int_equal(0, s.batches);
    usleep(20 * 1000);
  }
  assert_int_equal(0, query_int("SELECT count(*) FROM " COLL));
  assert_int_equal(0, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = '" COLL "'"));

  /* The TRAIN-th vector: the batch trains, and everything is written with codes. */
  for (int i = TRAIN - 1; i < TRAIN + 200; i++) produce_vector(i);
  rd_kafka_flush(T.producer, 10000);
  deadline = rv_mono_ms() + 60000;
  do {
    rv_ingest_stats(in, &s);
    if (rv_mono_ms() > deadline) fail_msg("ingested %llu of %d", (unsigned long long)s.ingested, TRAIN + 200);
    usleep(20 * 1000);
  } while (s.ingested < TRAIN + 200);
  rv_ingest_destroy(in);
  assert_true(s.batches >= 2); /* the training batch, then ordinary ones */
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = '" COLL "' AND kind = 'sq8' "
                                "AND version = 1 AND trained_on = " "300"));
  int32_t v;
  rv_sq8_t *q = stored_sq8(COLL, &v);
  assert_int_equal(1, v);
  check_codes(COLL, q, 1, TRAIN + 200);
  seen_t seen = {0, 0, q};
  read_changelog(&seen);
  assert_int_equal(TRAIN + 200, seen.changes);
  assert_int_equal(TRAIN + 200, seen.coded);
  rv_sq8_destroy(q);
}

/* A collection that never reaches sq8_train vectors is not held back: after
 * sq8_train_wait_ms the first batch trains from what it holds. */
static void test_small_collection_trains_after_the_wait(void **state) {
  (void)state;
  char e[1024];
  rv_ingest_conf_t conf;
  memset(&conf, 0, sizeof conf);
  snprintf(conf.brokers, sizeof conf.brokers, "%s", T.brokers);
  snprintf(conf.pg_conninfo, sizeof conf.pg_conninfo, "%s", rv_pg_server_conninfo(T.pg));
  snprintf(conf.collection.name, sizeof conf.collection.name, "small");
  conf.collection.dim = DIM;
  conf.collection.schema_id = 1;
  conf.batch_ms = 10;
  conf.sq8_train = 1000;
  conf.sq8_train_wait_ms = 300;
  rv_ingest_conf_defaults(&conf);
  assert_int_equal(RV_OK, rv_ingest_migrate(&conf, e, sizeof e));
  for (int i = 0; i < 40; i++) produce_to("small.vectors", i);
  rd_kafka_flush(T.producer, 10000);
  rv_ingest_t *in = rv_ingest_new(&conf, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) fail_msg("ingest: %s", e);
  rv_ingest_stats_t s;
  int64_t deadline = rv_mono_ms() + 60000;
  do {
    rv_ingest_stats(in, &s);
    if (rv_mono_ms() > deadline) fail_msg("ingested %llu of 40", (unsigned long long)s.ingested);
    usleep(20 * 1000);
  } while (s.ingested < 40);
  rv_ingest_destroy(in);
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'small' AND version = 1 "
                                "AND trained_on = 40"));
  int32_t v;
  rv_sq8_t *q = stored_sq8("small", &v);
  check_codes("small", q, 1, 40);
  rv_sq8_destroy(q);
}

static void add_row(rv_batch_t *b, int i, float scale, int64_t off) {
  char id[32];
  snprintf(id, sizeof id, "c-%05d", i);
  rv_vector_record_t rec;
  rv_vector_record_init(&rec);
  rec.id = strdup(id);
  rec.id_len = strlen(id);
  rec.vector = malloc(DIM * sizeof(float));
  fill(rec.vector, i, scale);
  rec.dim = DIM;
  assert_int_equal(RV_OK, rv_batch_add(b, &rec, 0, off, rv_wall_ms(), NULL));
  assert_int_equal(RV_OK, rv_batch_consumed(b, 0, off, off == 0 ? -1 : 0));
}

typedef struct {
  rv_quant_t *q;
  rv_pgwriter_t *w;
  rv_batch_t *b;
  pthread_barrier_t *go;
  rv_err_t err;
  char e[512];
} racer_t;

static void *race(void *arg) {
  racer_t *r = arg;
  pthread_barrier_wait(r->go);
  r->err = rv_quant_encode_batch(r->q, r->w, r->b, r->e, sizeof r->e);
  return NULL;
}

static void assert_coded_with(const rv_batch_t *b, const rv_sq8_t *q) {
  assert_int_equal(b->n_rows, b->n_coded);
  assert_int_equal(1, b->sq8_version);
  for (size_t i = 0; i < b->n_rows; i++) {
    uint8_t want[DIM];
    rv_sq8_encode(q, b->rows[i].rec.vector, want);
    assert_memory_equal(want, b->sq8 + i * b->sq8_size, DIM);
  }
}

/* Two ingests train on different samples at the same time (threads released
 * together, so either may store first); both end up with the one stored. */
static void test_racing_ingests_agree_on_one_version(void **state) {
  (void)state;
  char e[1024];
  assert_int_equal(RV_OK, rv_pgschema_migrate(T.db, "race", rv_wall_ms(), e, sizeof e));
  rv_quant_conf_t qc = {DIM, 100, 0, NULL, 0};
  rv_quant_t *qa = rv_quant_new(&qc, e, sizeof e), *qb = rv_quant_new(&qc, e, sizeof e);
  rv_pgwriter_t *wa = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 0, "race", "g", "t", e, sizeof e);
  rv_pgwriter_t *wb = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 1, "race", "g", "t", e, sizeof e);
  assert_true(qa && qb && wa && wb);
  assert_int_equal(RV_OK, rv_pgwriter_connect(wa, e, sizeof e));
  assert_int_equal(RV_OK, rv_pgwriter_connect(wb, e, sizeof e));
  rv_batch_t a, b;
  rv_batch_init(&a);
  rv_batch_init(&b);
  for (int i = 0; i < 99; i++) add_row(&a, i, 10.0f, i);
  assert_int_equal(0, rv_quant_batch_ready(qa, wa, &a)); /* 99 < 100, nothing stored */
  add_row(&a, 99, 10.0f, 99);
  assert_int_equal(1, rv_quant_batch_ready(qa, wa, &a));
  for (int i = 0; i < 100; i++) add_row(&b, 1000 + i, 1000.0f, i); /* a very different range */
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, 2);
  racer_t ra = {qa, wa, &a, &go, 0, ""}, rb = {qb, wb, &b, &go, 0, ""};
  pthread_t ta, tb;
  pthread_create(&ta, NULL, race, &ra);
  pthread_create(&tb, NULL, race, &rb);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  pthread_barrier_destroy(&go);
  if (ra.err || rb.err) fail_msg("encode: %s / %s", ra.e, rb.e);
  assert_int_equal(1, rv_quant_version(qa));
  assert_int_equal(1, rv_quant_version(qb));
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'race'"));
  int32_t v;
  rv_sq8_t *stored = stored_sq8("race", &v);
  assert_coded_with(&a, stored); /* whichever trained the stored one, both encode with it */
  assert_coded_with(&b, stored);
  rv_sq8_destroy(stored);
  rv_batch_close(&a);
  rv_batch_close(&b);
  rv_pgwriter_destroy(wa);
  rv_pgwriter_destroy(wb);
  rv_quant_destroy(qa);
  rv_quant_destroy(qb);
}

static void write_params_file(const char *path, int dim) {
  float *sample = malloc((size_t)dim * 10 * sizeof *sample);
  for (int i = 0; i < dim * 10; i++) sample[i] = (float)(i % 13);
  rv_sq8_t *q = NULL;
  char e[256];
  assert_int_equal(RV_OK, rv_sq8_train(sample, 10, dim, 0, 1, &q, e, sizeof e));
  uint8_t *buf;
  size_t len;
  assert_int_equal(RV_OK, rv_sq8_serialize(q, &buf, &len));
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(len, fwrite(buf, 1, len, f));
  fclose(f);
  free(buf);
  rv_sq8_destroy(q);
  free(sample);
}

static void test_parameter_file_is_stored_not_trained(void **state) {
  (void)state;
  char e[1024], path[128], bad[128];
  snprintf(path, sizeof path, "%s/sq8.params", T.dir);
  snprintf(bad, sizeof bad, "%s/sq8-wrong-dim.params", T.dir);
  write_params_file(path, DIM);
  write_params_file(bad, DIM + 1);
  assert_int_equal(RV_OK, rv_pgschema_migrate(T.db, "given", rv_wall_ms(), e, sizeof e));
  rv_pgwriter_t *w = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 0, "given", "g", "t", e, sizeof e);
  assert_int_equal(RV_OK, rv_pgwriter_connect(w, e, sizeof e));
  rv_batch_t b;
  rv_batch_init(&b);
  add_row(&b, 1, 10.0f, 0); /* one vector: far fewer than sq8_train, but a file needs none */

  rv_quant_conf_t qc = {DIM, 1000, 0, bad, 0};
  rv_quant_t *q = rv_quant_new(&qc, e, sizeof e);
  assert_int_equal(1, rv_quant_batch_ready(q, w, &b));
  assert_int_equal(RV_ERR_CONFIG, rv_quant_encode_batch(q, w, &b, e, sizeof e));
  assert_non_null(strstr(e, "dim"));
  rv_quant_destroy(q);
  assert_int_equal(0, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'given'"));

  qc.sq8_params = path;
  q = rv_quant_new(&qc, e, sizeof e);
  assert_int_equal(RV_OK, rv_quant_encode_batch(q, w, &b, e, sizeof e));
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'given' AND version = 1 "
                                "AND trained_on = 0"));
  /* The stored bytes are the file's. */
  FILE *f = fopen(path, "rb");
  uint8_t file[4096];
  size_t len = fread(file, 1, sizeof file, f);
  fclose(f);
  rv_buf_t got;
  rv_buf_init(&got);
  int32_t v;
  assert_int_equal(RV_OK, rv_pgschema_get_quantizer(T.db, "given", "sq8", &v, &got, e, sizeof e));
  assert_int_equal(len, got.len);
  assert_memory_equal(file, got.base, len);
  rv_buf_close(&got);
  rv_quant_destroy(q);
  rv_batch_close(&b);
  rv_pgwriter_destroy(w);
}


/* ---- PQ ------------------------------------------------------------------ */

/* The stored PQ of collection. */
static rv_pq_t *stored_pq(const char *collection, int32_t *version) {
  char e[512];
  rv_buf_t p;
  rv_buf_init(&p);
  rv_pq_t *q = NULL;
  if (rv_pgschema_get_quantizer(T.db, collection, "pq", version, &p, e, sizeof e) ||
      rv_pq_deserialize(p.base, p.len, &q, e, sizeof e))
    fail_msg("stored PQ of %s: %s", collection, e);
  rv_buf_close(&p);
  return q;
}

static int32_t be32(const char *p) {
  const uint8_t *v = (const uint8_t *)p;
  return (int32_t)((uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3]);
}

/* Every live row's pq_code is NULL (with pq_version NULL) or rv_pq_encode(q,
 * its stored vector) with pq_version v; every row has its SQ8 code. Returns
 * how many have no PQ code; null_ids (may be NULL) gets 1 per id "q-NNNNN" of
 * those, by NNNNN (below n_ids). */
static int check_pq_codes(const char *table, const rv_pq_t *q, int32_t v, long long want_rows, char *null_ids,
                          int n_ids) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT id, vector, pq_code, pq_version, code FROM %s WHERE deleted_at IS NULL ORDER BY id", table);
  PGresult *r = PQexecParams(T.db, sql, 0, NULL, NULL, NULL, NULL, 1);
  assert_int_equal(PGRES_TUPLES_OK, PQresultStatus(r));
  assert_int_equal(want_rows, PQntuples(r));
  int m = q ? rv_pq_m(q) : 0, nulls = 0;
  for (int i = 0; i < PQntuples(r); i++) {
    const char *id = PQgetvalue(r, i, 0);
    if (PQgetisnull(r, i, 4)) fail_msg("row %s: no SQ8 code", id);
    if (PQgetisnull(r, i, 2)) {
      if (!PQgetisnull(r, i, 3)) fail_msg("row %s: pq_version without pq_code", id);
      nulls++;
      int k = atoi(id + 2);
      if (null_ids && k >= 0 && k < n_ids) null_ids[k] = 1;
      continue;
    }
    if (!q) fail_msg("row %s has a PQ code, but no PQ is stored", id);
    if (PQgetlength(r, i, 2) != m) fail_msg("row %s: pq_code of %d bytes, want %d", id, PQgetlength(r, i, 2), m);
    assert_int_equal(v, be32(PQgetvalue(r, i, 3)));
    float x[DIM];
    uint8_t want[DIM];
    assert_int_equal(DIM * 4, PQgetlength(r, i, 1));
    memcpy(x, PQgetvalue(r, i, 1), sizeof x); /* little-endian host */
    rv_pq_encode(q, x, want);
    if (memcmp(want, PQgetvalue(r, i, 2), (size_t)m)) fail_msg("row %s: pq_code is not the stored PQ's", id);
  }
  PQclear(r);
  return nulls;
}

static void pq_conf(rv_ingest_conf_t *conf, const char *name, int pq_m) {
  memset(conf, 0, sizeof *conf);
  snprintf(conf->brokers, sizeof conf->brokers, "%s", T.brokers);
  snprintf(conf->pg_conninfo, sizeof conf->pg_conninfo, "%s", rv_pg_server_conninfo(T.pg));
  snprintf(conf->collection.name, sizeof conf->collection.name, "%s", name);
  conf->collection.dim = DIM;
  conf->collection.schema_id = 1;
  conf->batch_ms = 10;
  conf->pq_m = pq_m;
}

static void wait_ingested(rv_ingest_t *in, unsigned long long want) {
  rv_ingest_stats_t s;
  int64_t deadline = rv_mono_ms() + 60000;
  do {
    rv_ingest_stats(in, &s);
    if (rv_mono_ms() > deadline) fail_msg("ingested %llu of %llu", (unsigned long long)s.ingested, want);
    usleep(20 * 1000);
  } while (s.ingested < want);
}

/* Through Kafka and PostgreSQL: PQ trained from the first sq8_train (>= 256)
 * vectors, stored as version 1, and every row written with its code. */
static void test_pq_codes_every_row(void **state) {
  (void)state;
  char e[1024];
  rv_ingest_conf_t conf;
  pq_conf(&conf, "pqc", 4);
  conf.batch_rows = 50; /* the first batch must grow to TRAIN */
  conf.sq8_train = TRAIN;
  conf.sq8_train_wait_ms = 600000;
  rv_ingest_conf_defaults(&conf);
  assert_int_equal(RV_OK, rv_ingest_migrate(&conf, e, sizeof e));
  for (int i = 0; i < TRAIN + 200; i++) produce_to("pqc.vectors", i);
  rd_kafka_flush(T.producer, 10000);
  rv_ingest_t *in = rv_ingest_new(&conf, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) fail_msg("ingest: %s", e);
  wait_ingested(in, TRAIN + 200);
  rv_ingest_destroy(in);
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'pqc' AND kind = 'pq' "
                                "AND version = 1 AND trained_on = 300"));
  int32_t v;
  rv_pq_t *q = stored_pq("pqc", &v);
  assert_int_equal(1, v);
  assert_int_equal(4, rv_pq_m(q));
  assert_int_equal(0, check_pq_codes("pqc", q, 1, TRAIN + 200, NULL, 0));
  rv_pq_destroy(q);
  rv_sq8_t *sq = stored_sq8("pqc", &v);
  check_codes("pqc", sq, 1, TRAIN + 200);
  rv_sq8_destroy(sq);
}

/* Through Kafka and PostgreSQL: 40 vectors, and the wait ends: they are
 * written with SQ8 codes and pq_code NULL. Once 256 have been seen PQ is
 * trained and the rows from then on have PQ codes; the first 40 keep NULL. */
static void test_pq_null_until_256_vectors(void **state) {
  (void)state;
  char e[1024];
  rv_ingest_conf_t conf;
  pq_conf(&conf, "pqsmall", 8);
  conf.sq8_train = 1000;
  conf.sq8_train_wait_ms = 300;
  rv_ingest_conf_defaults(&conf);
  assert_int_equal(RV_OK, rv_ingest_migrate(&conf, e, sizeof e));
  for (int i = 0; i < 40; i++) produce_to("pqsmall.vectors", i);
  rd_kafka_flush(T.producer, 10000);
  rv_ingest_t *in = rv_ingest_new(&conf, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) fail_msg("ingest: %s", e);
  wait_ingested(in, 40);
  assert_int_equal(0, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'pqsmall' AND kind = 'pq'"));
  assert_int_equal(40, check_pq_codes("pqsmall", NULL, 0, 40, NULL, 0));

  for (int i = 40; i < 300; i++) produce_to("pqsmall.vectors", i);
  rd_kafka_flush(T.producer, 10000);
  wait_ingested(in, 300);
  rv_ingest_destroy(in);
  long long trained_on =
      query_int("SELECT trained_on FROM rv_quantizers WHERE collection = 'pqsmall' AND kind = 'pq' AND version = 1");
  if (trained_on < 256 || trained_on > 300) fail_msg("PQ trained on %lld vectors, want 256..300", trained_on);
  int32_t v;
  rv_pq_t *q = stored_pq("pqsmall", &v);
  char null_ids[300] = {0};
  int nulls = check_pq_codes("pqsmall", q, 1, 300, null_ids, 300);
  for (int i = 0; i < 40; i++) assert_int_equal(1, null_ids[i]); /* written before PQ; not re-coded */
  /* Rows of the batches before the one that reached 256 have none; that one and later have codes. */
  if (nulls < 40 || nulls >= 256) fail_msg("%d rows without a PQ code, want 40..255", nulls);
  rv_pq_destroy(q);
}

static void assert_pq_coded_with(const rv_batch_t *b, const rv_pq_t *q, int32_t v) {
  assert_int_equal(b->n_rows, b->n_coded);
  assert_int_equal(rv_pq_m(q), b->pq_size);
  assert_int_equal(v, b->pq_version);
  for (size_t i = 0; i < b->n_rows; i++) {
    uint8_t want[DIM];
    rv_pq_encode(q, b->rows[i].rec.vector, want);
    assert_memory_equal(want, b->pq + i * b->pq_size, b->pq_size);
  }
}

/* The first batch is held until it has 256 vectors for PQ (sq8_train is
 * fewer); two ingests then train PQ on different samples at the same time and
 * both end up encoding with the one stored. */
static void test_pq_racing_trainers_agree(void **state) {
  (void)state;
  char e[1024];
  assert_int_equal(RV_OK, rv_pgschema_migrate(T.db, "pqrace", rv_wall_ms(), e, sizeof e));
  rv_quant_conf_t qc = {DIM, 100, 0, NULL, 4};
  rv_quant_t *qa = rv_quant_new(&qc, e, sizeof e), *qb = rv_quant_new(&qc, e, sizeof e);
  rv_pgwriter_t *wa = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 0, "pqrace", "g", "t", e, sizeof e);
  rv_pgwriter_t *wb = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 1, "pqrace", "g", "t", e, sizeof e);
  assert_true(qa && qb && wa && wb);
  assert_int_equal(RV_OK, rv_pgwriter_connect(wa, e, sizeof e));
  assert_int_equal(RV_OK, rv_pgwriter_connect(wb, e, sizeof e));
  assert_int_equal(1, rv_quant_holding(qa));
  rv_batch_t a, b;
  rv_batch_init(&a);
  rv_batch_init(&b);
  for (int i = 0; i < 255; i++) add_row(&a, i, 10.0f, i);
  assert_int_equal(0, rv_quant_batch_ready(qa, wa, &a)); /* enough for SQ8 (100), not for PQ (256) */
  add_row(&a, 255, 10.0f, 255);
  assert_int_equal(1, rv_quant_batch_ready(qa, wa, &a));
  for (int i = 0; i < 256; i++) add_row(&b, 1000 + i, 1000.0f, i); /* a very different range */
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, 2);
  racer_t ra = {qa, wa, &a, &go, 0, ""}, rb = {qb, wb, &b, &go, 0, ""};
  pthread_t ta, tb;
  pthread_create(&ta, NULL, race, &ra);
  pthread_create(&tb, NULL, race, &rb);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  pthread_barrier_destroy(&go);
  if (ra.err || rb.err) fail_msg("encode: %s / %s", ra.e, rb.e);
  assert_int_equal(1, rv_quant_pq_version(qa));
  assert_int_equal(1, rv_quant_pq_version(qb));
  assert_int_equal(0, rv_quant_holding(qa));
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'pqrace' AND kind = 'pq'"));
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'pqrace' AND kind = 'pq' "
                                "AND version = 1 AND trained_on = 256"));
  int32_t v;
  rv_pq_t *stored = stored_pq("pqrace", &v);
  assert_int_equal(1, v);
  assert_pq_coded_with(&a, stored, 1); /* whichever trained the stored one, both encode with it */
  assert_pq_coded_with(&b, stored, 1);
  /* The samples differ enough that the two would train different PQs: agreeing is not a coincidence. */
  uint32_t fp[2];
  const rv_batch_t *both[2] = {&a, &b};
  for (int k = 0; k < 2; k++) {
    static float sample[256 * DIM];
    for (int i = 0; i < 256; i++) memcpy(sample + i * DIM, both[k]->rows[i].rec.vector, sizeof(float) * DIM);
    rv_pq_params_t pp = {.m = 4, .seed = 7};
    rv_pq_t *own = NULL;
    assert_int_equal(RV_OK, rv_pq_train(sample, 256, DIM, &pp, &own, e, sizeof e));
    fp[k] = rv_pq_fingerprint(own);
    rv_pq_destroy(own);
  }
  assert_int_not_equal(fp[0], fp[1]);
  rv_pq_destroy(stored);
  rv_batch_close(&a);
  rv_batch_close(&b);

  /* A stored PQ of another m is refused, not silently mixed. */
  rv_quant_conf_t other = {DIM, 100, 0, NULL, 8};
  rv_quant_t *qc8 = rv_quant_new(&other, e, sizeof e);
  assert_non_null(qc8);
  rv_batch_t c;
  rv_batch_init(&c);
  add_row(&c, 5000, 10.0f, 0);
  assert_int_equal(RV_ERR_CONFIG, rv_quant_encode_batch(qc8, wa, &c, e, sizeof e));
  if (!strstr(e, "m 4") || !strstr(e, "pq_m 8")) fail_msg("unexpected error: %s", e);
  rv_batch_close(&c);
  rv_quant_destroy(qc8);
  rv_pgwriter_destroy(wa);
  rv_pgwriter_destroy(wb);
  rv_quant_destroy(qa);
  rv_quant_destroy(qb);
}

/* After the wait with fewer than 256 vectors rows go without PQ codes; the
 * sample grows across batches, a retried batch counts once, and PQ is trained
 * in the batch that brings it to 256. */
static void test_pq_sample_spans_batches(void **state) {
  (void)state;
  char e[1024];
  assert_int_equal(RV_OK, rv_pgschema_migrate(T.db, "pqacc", rv_wall_ms(), e, sizeof e));
  rv_quant_conf_t qc = {DIM, 1000, 1, NULL, 4}; /* PQ would wait for 1000; the wait is 1 ms */
  rv_quant_t *q = rv_quant_new(&qc, e, sizeof e);
  rv_pgwriter_t *w = rv_pgwriter_new(rv_pg_server_conninfo(T.pg), 0, "pqacc", "g", "t", e, sizeof e);
  assert_true(q && w);
  assert_int_equal(RV_OK, rv_pgwriter_connect(w, e, sizeof e));
  rv_batch_t b;
  rv_batch_init(&b);
  for (int i = 0; i < 40; i++) add_row(&b, i, 10.0f, i);
  usleep(5 * 1000);
  assert_int_equal(1, rv_quant_batch_ready(q, w, &b)); /* waited */
  for (int attempt = 0; attempt < 2; attempt++) {      /* the write is retried: its vectors count once */
    assert_int_equal(RV_OK, rv_quant_encode_batch(q, w, &b, e, sizeof e));
    assert_int_equal(b.n_rows, b.n_coded);
    assert_int_equal(DIM, b.sq8_size);
    assert_int_equal(0, b.pq_size); /* pq_code NULL */
  }
  assert_int_equal(0, rv_quant_pq_version(q));
  assert_int_equal(0, rv_quant_holding(q)); /* no longer held for PQ */
  rv_batch_clear(&b);
  for (int i = 40; i < 140; i++) add_row(&b, i, 10.0f, i);
  assert_int_equal(1, rv_quant_batch_ready(q, w, &b)); /* not held although PQ is missing */
  assert_int_equal(RV_OK, rv_quant_encode_batch(q, w, &b, e, sizeof e));
  assert_int_equal(0, b.pq_size);
  rv_batch_clear(&b);
  for (int i = 140; i < 290; i++) add_row(&b, i, 10.0f, i);
  assert_int_equal(RV_OK, rv_quant_encode_batch(q, w, &b, e, sizeof e));
  assert_int_equal(1, rv_quant_pq_version(q));
  /* 40 + 100 + 150: the retried batch once (twice would be 330). */
  assert_int_equal(1, query_int("SELECT count(*) FROM rv_quantizers WHERE collection = 'pqacc' AND kind = 'pq' "
                                "AND version = 1 AND trained_on = 290"));
  int32_t v;
  rv_pq_t *stored = stored_pq("pqacc", &v);
  assert_pq_coded_with(&b, stored, 1);
  rv_pq_destroy(stored);
  rv_batch_close(&b);
  rv_pgwriter_destroy(w);
  rv_quant_destroy(q);
}

/* pq_m must divide dim: refused when the quantizer is made and when ingest starts. */
static void test_pq_m_not_dividing_dim_is_refused(void **state) {
  (void)state;
  char e[1024] = "";
  rv_quant_conf_t qc = {DIM, 0, 0, NULL, 5};
  assert_null(rv_quant_new(&qc, e, sizeof e));
  if (!strstr(e, "pq_m 5 does not divide dim 16")) fail_msg("unexpected error: %s", e);
  qc.pq_m = -1;
  assert_null(rv_quant_new(&qc, e, sizeof e));
  qc.pq_m = DIM; /* one float per sub-vector: allowed */
  rv_quant_t *q = rv_quant_new(&qc, e, sizeof e);
  assert_non_null(q);
  rv_quant_destroy(q);
  rv_ingest_conf_t conf;
  pq_conf(&conf, "pqbad", 3);
  rv_ingest_conf_defaults(&conf);
  rv_ingest_t *in = rv_ingest_new(&conf, e, sizeof e);
  assert_non_null(in);
  assert_int_equal(RV_ERR_CONFIG, rv_ingest_start(in, e, sizeof e));
  if (!strstr(e, "pq_m 3")) fail_msg("unexpected error: %s", e);
  rv_ingest_destroy(in);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_trains_on_first_vectors_and_codes_every_row),
      cmocka_unit_test(test_small_collection_trains_after_the_wait),
      cmocka_unit_test(test_racing_ingests_agree_on_one_version),
      cmocka_unit_test(test_parameter_file_is_stored_not_trained),
      cmocka_unit_test(test_pq_codes_every_row),
      cmocka_unit_test(test_pq_null_until_256_vectors),
      cmocka_unit_test(test_pq_racing_trainers_agree),
      cmocka_unit_test(test_pq_sample_spans_batches),
      cmocka_unit_test(test_pq_m_not_dividing_dim_is_refused),
  };
  return cmocka_run_group_tests_name("ingest_quant", tests, setup, teardown);
}
