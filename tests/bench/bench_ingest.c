#define _GNU_SOURCE
/* bench_ingest: end-to-end ingest throughput (Kafka topic -> decode ->
 * validate -> SQ8 -> PostgreSQL COPY + upsert + offsets, one transaction per
 * batch) against a raw COPY BINARY of the same rows into the same table
 * layout, in the same run, on a private PostgreSQL and an in-process mock
 * Kafka cluster. Not a ctest: run it by hand (see README.md).
 *
 *   bench_ingest [--n N] [--batch-rows R] [--batch-ms MS] [--partitions P]
 *                [--timeout S] [--rounds R] [--images PATH]
 *
 * Runs R rounds (default 5), each an ingest into a fresh collection then a
 * raw COPY into a fresh twin table, and prints every round's rates and ratio,
 * the medians (the ratio's target is >= 0.8), the machine and the command. PostgreSQL runs with its defaults: fsync and synchronous_commit
 * stay on, since ingest's exactly-once effect rests on a durable commit. */
#include <errno.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rv_buf.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_log.h"
#include "rv_malloc.h"
#include "rv_pgschema.h"
#include "rv_record.h"
#include "rv_source.h"
#include "rv_sq8.h"
#include "rv_time.h"

#define DIM 784
#define PG_EPOCH_MS INT64_C(946684800000)

typedef struct {
  rv_vector_record_t *recs;
  size_t n;
} rows_t;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static _Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_ingest: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static void cpu_model(char *out, size_t n) {
  snprintf(out, n, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "model name", 10)) {
      char *v = strchr(line, ':');
      if (v) {
        v += 1 + strspn(v + 1, " \t");
        v[strcspn(v, "\n")] = 0;
        snprintf(out, n, "%s", v);
      }
      break;
    }
  }
  fclose(f);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  if (m->err) {
    fprintf(stderr, "bench_ingest: delivery failed: %s\n", rd_kafka_err2str(m->err));
    ++*(int *)opaque;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Of n sorted values. */
static double median(const double *v, long n) { return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2; }

/* ---- the raw COPY baseline ---- */

static void put_be16(rv_buf_t *b, uint16_t v) {
  if (rv_buf_put_be16(b, v)) die("%s", "out of memory");
}
static void put_be32(rv_buf_t *b, uint32_t v) {
  if (rv_buf_put_be32(b, v)) die("%s", "out of memory");
}
static void put_be64(rv_buf_t *b, uint64_t v) {
  if (rv_buf_put_be64(b, v)) die("%s", "out of memory");
}
static void put_bytes(rv_buf_t *b, const void *p, size_t n) {
  put_be32(b, (uint32_t)n);
  if (rv_buf_append(b, p, n)) die("%s", "out of memory");
}

static int exec_ok(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok) fprintf(stderr, "bench_ingest: %s: %s", sql, PQerrorMessage(c));
  PQclear(r);
  return ok;
}

/* COPY BINARY of rows (id, created_at, vector, code, code_version, metadata,
 * updated_at, src_partition, src_offset) into table, one transaction,
 * encoding included in the time. Returns seconds, or -1. */
static double raw_copy(PGconn *c, const char *table, const rows_t *rows, const rv_sq8_t *sq8, int32_t version) {
  static const char sig[11] = "PGCOPY\n\377\r\n\0";
  char sql[512];
  snprintf(sql, sizeof sql,
           "COPY %s (id, created_at, vector, code, code_version, metadata, updated_at, src_partition, src_offset) "
           "FROM STDIN (FORMAT binary)",
           table);
  rv_buf_t b;
  rv_buf_init(&b);
  uint8_t code[DIM];
  int64_t t0 = rv_mono_ms();
  int64_t now_us = (rv_wall_ms() - PG_EPOCH_MS) * 1000;
  if (!exec_ok(c, "BEGIN")) return -1;
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COPY_IN) {
    fprintf(stderr, "bench_ingest: %s", PQerrorMessage(c));
    return -1;
  }
  PQclear(r);
  if (rv_buf_append(&b, sig, sizeof sig)) die("%s", "out of memory");
  put_be32(&b, 0);
  put_be32(&b, 0);
  for (size_t i = 0; i < rows->n; i++) {
    const rv_vector_record_t *rec = &rows->recs[i];
    rv_sq8_encode(sq8, rec->vector, code);
    put_be16(&b, 9);
    put_bytes(&b, rec->id, rec->id_len);
    put_be32(&b, 8);
    put_be64(&b, (uint64_t)now_us);
    put_bytes(&b, rec->vector, (size_t)rec->dim * 4); /* little-endian hosts, like ingest */
    put_bytes(&b, code, DIM);
    put_be32(&b, 4);
    put_be32(&b, (uint32_t)version);
    size_t mlen = rec->metadata ? strlen(rec->metadata) : 0;
    put_be32(&b, (uint32_t)mlen + 1);
    uint8_t one = 1;
    if (rv_buf_append(&b, &one, 1) || rv_buf_append(&b, rec->metadata, mlen)) die("%s", "out of memory");
    put_be32(&b, 8);
    put_be64(&b, (uint64_t)now_us);
    put_be32(&b, 4);
    put_be32(&b, 0);
    put_be32(&b, 8);
    put_be64(&b, (uint64_t)i);
    if (b.len >= (1u << 20) || i + 1 == rows->n) {
      if (i + 1 == rows->n) put_be16(&b, UINT16_MAX);
      if (PQputCopyData(c, (const char *)b.base, (int)b.len) != 1) return -1;
      rv_buf_reset(&b);
    }
  }
  if (PQputCopyEnd(c, NULL) != 1) return -1;
  int ok = 1;
  while ((r = PQgetResult(c))) {
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      fprintf(stderr, "bench_ingest: COPY: %s", PQresultErrorMessage(r));
      ok = 0;
    }
    PQclear(r);
  }
  if (!ok || !exec_ok(c, "COMMIT")) return -1;
  double secs = (double)(rv_mono_ms() - t0) / 1000.0;
  rv_buf_close(&b);
  return secs;
}

int main(int argc, char **argv) {
  /* As `ruvector ingest` and `ruvector pipeline run` do (rv_malloc.h); the raw COPY's client is not affected. */
  int tuned = rv_malloc_tune();
  long n_want = 60000, batch_rows = 5000, batch_ms = 50, timeout_s = 300, partitions = 0, rounds = 5;
  const char *images = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) die("missing value after %s", a);
    if (!strcmp(a, "--n")) n_want = atol(v);
    else if (!strcmp(a, "--batch-rows")) batch_rows = atol(v);
    else if (!strcmp(a, "--batch-ms")) batch_ms = atol(v);
    else if (!strcmp(a, "--partitions")) partitions = atol(v);
    else if (!strcmp(a, "--timeout")) timeout_s = atol(v);
    else if (!strcmp(a, "--rounds")) rounds = atol(v);
    else if (!strcmp(a, "--images")) images = v;
    else die("unknown option %s (see the comment at the top of bench_ingest.c)", a);
    i++;
  }
  if (n_want < 1000 || n_want > 1000000) die("%s", "--n must be 1000..1000000");
  if (rounds < 1 || rounds > 64) die("%s", "--rounds must be 1..64");
  /* The mock broker keeps about 5 MiB per partition: spread the log so nothing is deleted before it is read. */
  if (partitions <= 0) partitions = (n_want * 3400) / (4 << 20) + 1;
  if (partitions < 4) partitions = 4;
  setenv("RV_LOG", "warn", 0); /* read once, at the first log line */

  char e[1024];
  /* 1. The rows. */
  rv_source_t *src = rv_source_open(images, RV_SOURCE_AUTO, NULL, e, sizeof e);
  if (!src) die("%s", e);
  rows_t rows = {calloc((size_t)n_want, sizeof(rv_vector_record_t)), 0};
  while (rows.n < (size_t)n_want) {
    rv_vector_record_init(&rows.recs[rows.n]);
    int rc = rv_source_next(src, &rows.recs[rows.n], e, sizeof e);
    if (rc < 0) die("%s", e);
    if (rc == 0) break;
    rows.n++;
  }
  rv_source_close(src);
  if (rows.n < 1000) die("%s", "fewer than 1000 images");

  /* 2. PostgreSQL and Kafka. */
  char dir[64] = "/tmp/rv-bench-XXXXXX";
  if (!mkdtemp(dir) || chmod(dir, 0755)) die("%s", "mkdtemp");
  rv_pg_server_t *pg = rv_pg_server_start(dir, e, sizeof e);
  if (!pg) die("%s", e);
  PGconn *db = PQconnectdb(rv_pg_server_conninfo(pg));
  if (PQstatus(db) != CONNECTION_OK) die("%s", PQerrorMessage(db));
  rd_kafka_conf_t *kc = rd_kafka_conf_new();
  rd_kafka_t *mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, e, sizeof e);
  rd_kafka_mock_cluster_t *mock = mock_rk ? rd_kafka_mock_cluster_new(mock_rk, 1) : NULL;
  if (!mock) die("%s", "mock cluster");
  const char *brokers = rd_kafka_mock_cluster_bootstraps(mock);
  if (rd_kafka_mock_topic_create(mock, "bench.vectors", (int)partitions, 1) ||
      rd_kafka_mock_topic_create(mock, "bench.changelog", (int)partitions, 1) ||
      rd_kafka_mock_topic_create(mock, "bench.dlq", 1, 1))
    die("%s", "mock topics");

  /* 3. Produce (not timed). */
  int failed = 0;
  kc = rd_kafka_conf_new();
  if (rd_kafka_conf_set(kc, "bootstrap.servers", brokers, e, sizeof e) ||
      rd_kafka_conf_set(kc, "linger.ms", "5", e, sizeof e) ||
      rd_kafka_conf_set(kc, "queue.buffering.max.kbytes", "1048576", e, sizeof e))
    die("%s", e);
  rd_kafka_conf_set_dr_msg_cb(kc, on_delivery);
  rd_kafka_conf_set_opaque(kc, &failed);
  rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, kc, e, sizeof e);
  if (!prod) die("%s", e);
  rv_codec_t *codec = rv_codec_new(e, sizeof e);
  rv_buf_t enc;
  rv_buf_init(&enc);
  for (size_t i = 0; i < rows.n; i++) {
    rv_buf_reset(&enc);
    if (rv_codec_encode_vector(codec, &rows.recs[i], &enc, e, sizeof e)) die("%s", e);
    while (rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("bench.vectors"), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_PARTITION((int32_t)(i % (size_t)partitions)),
                             RD_KAFKA_V_KEY(rows.recs[i].id, rows.recs[i].id_len), RD_KAFKA_V_VALUE(enc.base, enc.len),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(prod, 10);
  }
  if (rd_kafka_flush(prod, 120000) || failed) die("%s", "producing the rows failed");
  rd_kafka_destroy(prod);

  /* 4. A warm-up, not timed: a raw COPY of the same rows into a third twin
   * table, then a checkpoint. A fresh cluster has to create (zero-fill) every
   * WAL segment the first phase writes, while a checkpoint lets later phases
   * recycle them: without this, whichever phase ran first paid some 10% more
   * PostgreSQL CPU for it. Ingest trains the quantizer itself, so this COPY
   * uses one trained the same way on the same first vectors. */
  {
    rv_sq8_t *warm_q = NULL;
    size_t n_train = rows.n < 1000 ? rows.n : 1000;
    float *train = malloc(n_train * DIM * sizeof *train);
    if (!train) die("%s", "out of memory");
    for (size_t i = 0; i < n_train; i++) memcpy(train + i * DIM, rows.recs[i].vector, DIM * sizeof *train);
    if (rv_sq8_train(train, n_train, DIM, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT, &warm_q, e, sizeof e))
      die("%s", e);
    free(train);
    if (rv_pgschema_migrate(db, "bench_warm", rv_wall_ms(), e, sizeof e)) die("%s", e);
    if (raw_copy(db, "bench_warm", &rows, warm_q, 1) < 0 || !exec_ok(db, "CHECKPOINT")) return 1;
    rv_sq8_destroy(warm_q);
  }

  if (getenv("RV_BENCH_KEEP")) { /* RV_BENCH_KEEP=MS: log statements taking MS or more (default 20) */
    char sql[96];
    int log_ms = atoi(getenv("RV_BENCH_KEEP"));
    snprintf(sql, sizeof sql, "ALTER DATABASE ruvector SET log_min_duration_statement = %d",
             log_ms > 0 || !strcmp(getenv("RV_BENCH_KEEP"), "0") ? log_ms : 20);
    if (!exec_ok(db, sql)) return 1;
  }

  /* 5. Rounds: ingest into a fresh collection (its own table and consumer
   * group, so it reads the topic from the start), then a raw COPY of the same
   * rows into a fresh twin table; each after a checkpoint. Single runs on a
   * shared 2-CPU machine vary by +-10%, so the median of the rounds' ratios
   * is the figure. */
  char model[256];
  cpu_model(model, sizeof model);
  printf("bench_ingest: %zu Fashion-MNIST vectors (dim %d), SQ8 codes + raw float32 + metadata jsonb\n", rows.n, DIM);
  printf("  machine:        %ld CPUs (nproc), %s\n", sysconf(_SC_NPROCESSORS_ONLN), model);
  printf("  command:       ");
  for (int i = 0; i < argc; i++) printf(" %s", argv[i]);
  PGresult *r = PQexec(db, "SELECT current_setting('synchronous_commit'), current_setting('fsync')");
  printf("\n  settings:       batch_rows %ld, batch_ms %ld, %ld topic partitions, synchronous_commit=%s, fsync=%s, "
         "%ld rounds, malloc %s\n",
         batch_rows, batch_ms, partitions, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), rounds,
         tuned ? "tuned (rv_malloc_tune)" : "as GLIBC_TUNABLES sets it");
  PQclear(r);
  double ratios[64], ingest_rates[64], raw_rates[64];
  for (long round = 0; round < rounds; round++) {
    char table[32], raw_table[32];
    snprintf(table, sizeof table, "bench_r%ld", round + 1);
    snprintf(raw_table, sizeof raw_table, "bench_raw_r%ld", round + 1);
    /* Ingest, timed from the first record consumed to the last committed. */
    rv_ingest_conf_t conf;
    memset(&conf, 0, sizeof conf);
    snprintf(conf.brokers, sizeof conf.brokers, "%s", brokers);
    snprintf(conf.pg_conninfo, sizeof conf.pg_conninfo, "%s", rv_pg_server_conninfo(pg));
    snprintf(conf.collection.name, sizeof conf.collection.name, "%s", table);
    snprintf(conf.collection.source_topic, sizeof conf.collection.source_topic, "bench.vectors");
    snprintf(conf.collection.changelog_topic, sizeof conf.collection.changelog_topic, "bench.changelog");
    snprintf(conf.collection.dlq_topic, sizeof conf.collection.dlq_topic, "bench.dlq");
    conf.collection.dim = DIM;
    conf.collection.schema_id = 1;
    conf.batch_rows = (int)batch_rows;
    conf.batch_ms = (int)batch_ms;
    conf.sq8_train = 1000;
    rv_ingest_conf_defaults(&conf);
    if (rv_ingest_migrate(&conf, e, sizeof e)) die("%s", e);
    if (!exec_ok(db, "CHECKPOINT")) return 1;
    rv_ingest_t *in = rv_ingest_new(&conf, e, sizeof e);
    if (!in || rv_ingest_start(in, e, sizeof e)) die("%s", e);
    int64_t started = rv_mono_ms(), first = 0, deadline = started + timeout_s * 1000;
    rv_ingest_stats_t s;
    for (;;) {
      rv_ingest_stats(in, &s);
      if (!first && s.consumed > 0) first = rv_mono_ms();
      if (s.ingested + s.dead_lettered >= rows.n) break;
      if (rv_mono_ms() > deadline) {
        fprintf(stderr, "bench_ingest: timed out: ingested %llu of %zu\n", (unsigned long long)s.ingested, rows.n);
        return 1;
      }
      struct timespec ts = {0, 2 * 1000000};
      nanosleep(&ts, NULL);
    }
    int64_t done = rv_mono_ms();
    rv_ingest_destroy(in);
    if (s.dead_lettered) die("%llu dead letters", (unsigned long long)s.dead_lettered);
    double ingest_s = (double)(done - first) / 1000.0;

    /* Raw COPY of the same rows, with the quantizer this ingest stored, into a twin table. */
    rv_buf_t params;
    rv_buf_init(&params);
    int32_t version = 0;
    rv_sq8_t *sq8 = NULL;
    if (rv_pgschema_get_quantizer(db, table, "sq8", &version, &params, e, sizeof e) ||
        rv_sq8_deserialize(params.base, params.len, &sq8, e, sizeof e))
      die("%s", e);
    if (rv_pgschema_migrate(db, raw_table, rv_wall_ms(), e, sizeof e)) die("%s", e);
    if (!exec_ok(db, "CHECKPOINT")) return 1; /* both start from a clean checkpoint */
    int64_t raw_t0 = rv_mono_ms();
    double raw_s = raw_copy(db, raw_table, &rows, sq8, version);
    if (raw_s < 0) return 1;
    rv_sq8_destroy(sq8);
    rv_buf_close(&params);

    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT (SELECT count(*) FROM %s WHERE code_version IS NOT NULL), (SELECT count(*) FROM %s), "
             "(SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits "
             "WHERE inhparent = '%s'::regclass)",
             table, raw_table, table);
    r = PQexec(db, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) die("%s", PQerrorMessage(db));
    if (strtoull(PQgetvalue(r, 0, 0), NULL, 10) != rows.n || strtoull(PQgetvalue(r, 0, 1), NULL, 10) != rows.n)
      die("round %ld: %s rows with codes in %s, %s in %s; expected %zu each", round + 1, PQgetvalue(r, 0, 0), table,
          PQgetvalue(r, 0, 1), raw_table, rows.n);
    ingest_rates[round] = (double)rows.n / ingest_s;
    raw_rates[round] = (double)rows.n / raw_s;
    ratios[round] = ingest_rates[round] / raw_rates[round];
    printf("  round %ld:        ingest %6.0f vectors/s (%.2f s, %llu batches, group join %.2f s before, table %s)  "
           "raw COPY %6.0f vectors/s (%.2f s)  ratio %.2f\n",
           round + 1, ingest_rates[round], ingest_s, (unsigned long long)s.batches, (double)(first - started) / 1000.0,
           PQgetvalue(r, 0, 2), raw_rates[round], raw_s, ratios[round]);
    if (getenv("RV_BENCH_KEEP"))
      printf("    windows:      ingest %.3f..%.3f s, raw COPY %.3f..%.3f s (CLOCK_MONOTONIC, as perf record -k mono)\n",
             (double)first / 1000.0, (double)done / 1000.0, (double)raw_t0 / 1000.0, (double)raw_t0 / 1000.0 + raw_s);
    PQclear(r);
  }
  qsort(ratios, (size_t)rounds, sizeof ratios[0], cmp_double);
  qsort(ingest_rates, (size_t)rounds, sizeof ingest_rates[0], cmp_double);
  qsort(raw_rates, (size_t)rounds, sizeof raw_rates[0], cmp_double);
  printf("  ingest:         %.0f vectors/s median (%.0f..%.0f)\n", median(ingest_rates, rounds), ingest_rates[0],
         ingest_rates[rounds - 1]);
  printf("  raw COPY:       %.0f vectors/s median (%.0f..%.0f), one COPY BINARY in one transaction\n",
         median(raw_rates, rounds), raw_rates[0], raw_rates[rounds - 1]);
  printf("  ratio:          %.3f median of the rounds' ratios (%.2f..%.2f; target >= 0.80)\n", median(ratios, rounds),
         ratios[0], ratios[rounds - 1]);

  rv_buf_close(&enc);
  rv_codec_destroy(codec);
  PQfinish(db);
  rd_kafka_mock_cluster_destroy(mock);
  rd_kafka_destroy(mock_rk);
  rv_pg_server_stop(pg);
  for (size_t i = 0; i < rows.n; i++) rv_vector_record_close(&rows.recs[i]);
  free(rows.recs);
  if (getenv("RV_BENCH_KEEP")) printf("  kept:           %s (postgres.log under pg/)\n", dir);
  else if (!strncmp(dir, "/tmp/rv-bench-", 14)) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}
