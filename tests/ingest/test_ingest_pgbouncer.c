#define _GNU_SOURCE
/* Ingest through a real PgBouncer (transaction pooling) in front of a real
 * private PostgreSQL, with an in-process Kafka mock cluster.
 *
 * The bouncer runs `DISCARD ALL` after every transaction and has two server
 * connections, so anything ingest left in a session (named prepared
 * statements, temporary tables) is gone by its next transaction: the test
 * first shows that the direct mode fails there, then that the pgbouncer mode
 * ingests every record exactly once, stores the offsets, and that a second
 * ingest resumes from them without re-reading. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rv_batch.h"
#include "rv_embedded.h"
#include "rv_ingest.h"
#include "rv_pgwriter.h"
#include "rv_record.h"
#include "rv_time.h"

#define COLL "bounced"
#define DIM 8
#define PGBOUNCER "/usr/sbin/pgbouncer"
#define BOUNCER_PORT 6432 /* only names the unix socket in our private directory */

static struct {
  char dir[64];
  char bouncer_dir[128];
  rv_pg_server_t *pg;
  pid_t bouncer;
  char bouncer_conninfo[256];
  rd_kafka_t *mock_rk;
  rd_kafka_mock_cluster_t *mock;
  char brokers[512];
  rd_kafka_t *producer;
  rv_codec_t *codec;
  rv_ingest_conf_t conf;
  PGconn *db; /* direct, for assertions */
  uint64_t produced;
} T;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static int write_file(const char *path, const char *text, const struct passwd *owner) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  int rc = fputs(text, f) < 0;
  rc |= fclose(f) != 0;
  if (owner && chown(path, owner->pw_uid, owner->pw_gid)) rc = 1;
  return rc ? -1 : 0;
}

/* Starts pgbouncer (as the postgres user when we are root: it refuses to run
 * as root) listening only on a unix socket in T.bouncer_dir; waits until it
 * answers. Returns 0, or -1 with the reason printed. */
static int bouncer_start(void) {
  const struct passwd *pw = geteuid() == 0 ? getpwnam("postgres") : NULL;
  if (geteuid() == 0 && !pw) {
    print_error("running as root and there is no postgres user for pgbouncer\n");
    return -1;
  }
  snprintf(T.bouncer_dir, sizeof T.bouncer_dir, "%s/bouncer", T.dir);
  if (mkdir(T.bouncer_dir, 0755) && errno != EEXIST) return -1;
  if (pw && chown(T.bouncer_dir, pw->pw_uid, pw->pw_gid)) return -1;
  /* The PostgreSQL socket directory, from its conninfo "host=<dir> port=...". */
  char pg_host[256];
  if (sscanf(rv_pg_server_conninfo(T.pg), "host=%255s", pg_host) != 1) return -1;
  char ini[4096], path[256], users[256];
  snprintf(users, sizeof users, "%s/userlist.txt", T.bouncer_dir);
  snprintf(ini, sizeof ini,
           "[databases]\n"
           "ruvector = host=%s port=5432 dbname=ruvector user=ruvector\n"
           "[pgbouncer]\n"
           "listen_addr =\n"
           "listen_port = %d\n"
           "unix_socket_dir = %s\n"
           "auth_type = trust\n"
           "auth_file = %s\n"
           "admin_users = ruvector\n"
           "pool_mode = transaction\n"
           "default_pool_size = 2\n"
           "max_client_conn = 100\n"
           /* Session state must not survive a transaction: */
           "server_reset_query = DISCARD ALL\n"
           "server_reset_query_always = 1\n"
           "logfile = %s/pgbouncer.log\n"
           "pidfile = %s/pgbouncer.pid\n",
           pg_host, BOUNCER_PORT, T.bouncer_dir, users, T.bouncer_dir, T.bouncer_dir);
  snprintf(path, sizeof path, "%s/pgbouncer.ini", T.bouncer_dir);
  if (write_file(path, ini, pw) || write_file(users, "\"ruvector\" \"\"\n", pw)) return -1;

  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) dup2(null, 0), dup2(null, 1), dup2(null, 2); /* it logs to its logfile */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    if (pw) execl(PGBOUNCER, PGBOUNCER, "-u", "postgres", path, (char *)NULL);
    else execl(PGBOUNCER, PGBOUNCER, path, (char *)NULL);
    _exit(127);
  }
  T.bouncer = pid;
  snprintf(T.bouncer_conninfo, sizeof T.bouncer_conninfo, "host=%s port=%d dbname=ruvector user=ruvector",
           T.bouncer_dir, BOUNCER_PORT);
  int64_t deadline = rv_mono_ms() + 15000;
  while (PQping(T.bouncer_conninfo) != PQPING_OK) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      T.bouncer = 0;
      print_error("pgbouncer exited (status %d); see %s/pgbouncer.log\n", st, T.bouncer_dir);
      return -1;
    }
    if (rv_mono_ms() > deadline) {
      print_error("pgbouncer did not answer within 15 s\n");
      return -1;
    }
    usleep(20 * 1000);
  }
  return 0;
}

static void bouncer_stop(void) {
  if (T.bouncer <= 0) return;
  kill(T.bouncer, SIGTERM);
  int64_t deadline = rv_mono_ms() + 10000;
  while (waitpid(T.bouncer, NULL, WNOHANG) != T.bouncer) {
    if (rv_mono_ms() > deadline) {
      kill(T.bouncer, SIGKILL);
      waitpid(T.bouncer, NULL, 0);
      break;
    }
    usleep(10 * 1000);
  }
  T.bouncer = 0;
}

static long long query_int(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
    fail_msg("%s: %s (%d rows)", sql, PQresultErrorMessage(r), PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* A column of one row of a pgbouncer admin console command. */
static long long admin_value(const char *command, const char *database, const char *column) {
  char ci[320];
  snprintf(ci, sizeof ci, "host=%s port=%d dbname=pgbouncer user=ruvector", T.bouncer_dir, BOUNCER_PORT);
  PGconn *c = PQconnectdb(ci);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("admin console: %s", PQerrorMessage(c));
  PGresult *r = PQexec(c, command);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", command, PQerrorMessage(c));
  int col = PQfnumber(r, column), dbcol = PQfnumber(r, "database");
  long long v = -1;
  for (int i = 0; i < PQntuples(r) && col >= 0 && dbcol >= 0; i++)
    if (!strcmp(PQgetvalue(r, i, dbcol), database)) v = atoll(PQgetvalue(r, i, col));
  PQclear(r);
  PQfinish(c);
  if (v < 0) fail_msg("%s: no %s for database %s", command, column, database);
  return v;
}

static void produce_vector(const char *id, rv_op_t op, float salt) {
  float v[DIM];
  for (int k = 0; k < DIM; k++) v[k] = salt + (float)k;
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  r.id = (char *)id;
  r.id_len = strlen(id);
  r.op = op;
  r.vector = op == RV_OP_UPSERT ? v : NULL;
  r.dim = op == RV_OP_UPSERT ? DIM : 0;
  rv_buf_t b;
  rv_buf_init(&b);
  char e[256];
  if (rv_codec_encode_vector(T.codec, &r, &b, e, sizeof e)) fail_msg("encode: %s", e);
  rd_kafka_resp_err_t err;
  while ((err = rd_kafka_producev(T.producer, RD_KAFKA_V_TOPIC(COLL ".vectors"), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(b.base, b.len), RD_KAFKA_V_END)) ==
         RD_KAFKA_RESP_ERR__QUEUE_FULL)
    rd_kafka_poll(T.producer, 10);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
  rv_buf_close(&b);
  T.produced++;
}

static void flush_producer(void) {
  if (rd_kafka_flush(T.producer, 30000)) fail_msg("flush timed out");
}

static void wait_accounted(rv_ingest_t *in, uint64_t want, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  rv_ingest_stats_t s;
  for (;;) {
    rv_ingest_stats(in, &s);
    if (s.ingested + s.dead_lettered >= want) return;
    if (rv_mono_ms() > deadline)
      fail_msg("after %d ms: ingested %llu + dlq %llu, expected %llu (consumed %llu, retries %llu)", timeout_ms,
               (unsigned long long)s.ingested, (unsigned long long)s.dead_lettered, (unsigned long long)want,
               (unsigned long long)s.consumed, (unsigned long long)s.retries);
    usleep(50 * 1000);
  }
}

static int setup(void **state) {
  (void)state;
  char e[1024];
  if (access(PGBOUNCER, X_OK) != 0) {
    print_error(PGBOUNCER " is missing: install pgbouncer (deploy/dev.sh deps)\n");
    return -1;
  }
  snprintf(T.dir, sizeof T.dir, "/tmp/rv-bounce-XXXXXX");
  if (!mkdtemp(T.dir) || chmod(T.dir, 0755)) return -1;
  if (!(T.pg = rv_pg_server_start(T.dir, e, sizeof e))) {
    print_error("postgres: %s\n", e);
    return -1;
  }
  if (!(T.db = PQconnectdb(rv_pg_server_conninfo(T.pg))) || PQstatus(T.db) != CONNECTION_OK) return -1;
  if (bouncer_start()) return -1;

  rd_kafka_conf_t *c = rd_kafka_conf_new();
  if (!(T.mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) return -1;
  if (!(T.mock = rd_kafka_mock_cluster_new(T.mock_rk, 1))) return -1;
  snprintf(T.brokers, sizeof T.brokers, "%s", rd_kafka_mock_cluster_bootstraps(T.mock));
  if (rd_kafka_mock_topic_create(T.mock, COLL ".vectors", 3, 1) ||
      rd_kafka_mock_topic_create(T.mock, COLL ".changelog", 3, 1) || rd_kafka_mock_topic_create(T.mock, COLL ".dlq", 1, 1))
    return -1;
  c = rd_kafka_conf_new();
  if (rd_kafka_conf_set(c, "bootstrap.servers", T.brokers, e, sizeof e) ||
      rd_kafka_conf_set(c, "enable.idempotence", "true", e, sizeof e))
    return -1;
  if (!(T.producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e))) return -1;
  if (!(T.codec = rv_codec_new(e, sizeof e))) return -1;

  memset(&T.conf, 0, sizeof T.conf);
  snprintf(T.conf.brokers, sizeof T.conf.brokers, "%s", T.brokers);
  snprintf(T.conf.pg_conninfo, sizeof T.conf.pg_conninfo, "%s", T.bouncer_conninfo);
  T.conf.pgbouncer = 1;
  snprintf(T.conf.collection.name, sizeof T.conf.collection.name, COLL);
  T.conf.collection.dim = DIM;
  T.conf.collection.schema_id = 1;
  T.conf.batch_rows = 250;
  T.conf.batch_ms = 30;
  rv_ingest_conf_defaults(&T.conf);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (T.producer) rd_kafka_destroy(T.producer);
  if (T.mock) rd_kafka_mock_cluster_destroy(T.mock);
  if (T.mock_rk) rd_kafka_destroy(T.mock_rk);
  rv_codec_destroy(T.codec);
  if (T.db) PQfinish(T.db);
  bouncer_stop();
  rv_pg_server_stop(T.pg);
  if (strncmp(T.dir, "/tmp/rv-bounce-", 15) == 0) nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

static void test_migrate_through_bouncer(void **state) {
  (void)state;
  char e[512];
  assert_int_equal(RV_OK, rv_ingest_migrate(&T.conf, e, sizeof e));
  assert_int_equal(RV_OK, rv_ingest_migrate(&T.conf, e, sizeof e));
  assert_int_equal(1, query_int(T.db, "SELECT count(*) FROM pg_class WHERE relname = '" COLL "_ids'"));
}

/* The control: the staging table and named prepared statements made on
 * connect do not survive to the batch transaction behind this bouncer, so
 * the direct mode fails here.
 * (If it did not, the next test would prove nothing about the pgbouncer mode.) */
static void test_direct_mode_breaks_behind_bouncer(void **state) {
  (void)state;
  char e[1024];
  rv_pgwriter_t *w = rv_pgwriter_new(T.bouncer_conninfo, 0, COLL, "control", "control.t", e, sizeof e);
  assert_non_null(w);
  rv_batch_t b;
  rv_batch_init(&b);
  assert_int_equal(RV_OK, rv_batch_consumed(&b, 0, 0, -1));
  rv_pgw_outcome_t out;
  rv_err_t err = rv_pgwriter_connect(w, e, sizeof e);
  if (!err) err = rv_pgwriter_apply(w, &b, &out, e, sizeof e);
  if (!err) fail_msg("direct mode worked behind a DISCARD ALL bouncer: the control is broken");
  /* Lost session state: the staging table (made on connect) or a named statement. */
  if (!strstr(e, "prepared statement") && !strstr(e, "rv_stage\" does not exist"))
    fail_msg("unexpected failure: %s", e);
  rv_batch_close(&b);
  rv_pgwriter_destroy(w);
}

static void test_ingest_exactly_once_and_resume(void **state) {
  (void)state;
  char e[1024], id[32];
  enum { N = 3000, N_UPDATED = 200, N_DELETED = 50, M = 400 };
  long long xact_before = admin_value("SHOW STATS", "ruvector", "total_xact_count");
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof id, "b-%05d", i);
    produce_vector(id, RV_OP_UPSERT, (float)i);
  }
  for (int i = 0; i < N_UPDATED; i++) {
    snprintf(id, sizeof id, "b-%05d", i);
    produce_vector(id, RV_OP_UPSERT, (float)i + 0.5f);
  }
  for (int i = N_UPDATED; i < N_UPDATED + N_DELETED; i++) {
    snprintf(id, sizeof id, "b-%05d", i);
    produce_vector(id, RV_OP_DELETE, 0);
  }
  flush_producer();

  rv_ingest_t *in = rv_ingest_new(&T.conf, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) fail_msg("ingest: %s", e);
  wait_accounted(in, T.produced, 90000);
  rv_ingest_stats_t s;
  rv_ingest_stats(in, &s);
  rv_ingest_destroy(in);
  assert_int_equal(T.produced, s.consumed);
  assert_int_equal(0, s.dead_lettered);
  assert_true(s.batches >= 2);

  assert_int_equal(N, query_int(T.db, "SELECT count(*) FROM " COLL));
  assert_int_equal(N, query_int(T.db, "SELECT count(DISTINCT id) FROM " COLL));
  assert_int_equal(N, query_int(T.db, "SELECT count(*) FROM " COLL "_ids"));
  assert_int_equal(N_DELETED, query_int(T.db, "SELECT count(*) FROM " COLL " WHERE deleted_at IS NOT NULL"));
  /* Updates won: b-00007's stored vector starts with 7.5f (0x40f00000, little-endian). */
  assert_int_equal(1, query_int(T.db, "SELECT count(*) FROM " COLL " WHERE id = 'b-00007' "
                                      "AND substring(vector FROM 1 FOR 4) = '\\x0000f040'"));
  assert_int_equal((long long)T.produced,
                   query_int(T.db, "SELECT sum(next_offset) FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL
                                   "' AND topic = '" COLL ".vectors'"));
  /* The transactions went through the bouncer. */
  long long xacts = admin_value("SHOW STATS", "ruvector", "total_xact_count") - xact_before;
  if (xacts < (long long)s.batches)
    fail_msg("pgbouncer counted %lld transactions for %llu batches", xacts, (unsigned long long)s.batches);

  /* A second ingest resumes from the stored offsets: it reads only the new records. */
  uint64_t before = T.produced;
  for (int i = 0; i < M; i++) {
    snprintf(id, sizeof id, "late-%04d", i);
    produce_vector(id, RV_OP_UPSERT, (float)i);
  }
  flush_producer();
  in = rv_ingest_new(&T.conf, e, sizeof e);
  if (!in || rv_ingest_start(in, e, sizeof e)) fail_msg("second ingest: %s", e);
  wait_accounted(in, M, 90000);
  rv_ingest_stop(in); /* commits anything in progress: a re-read would show in consumed */
  rv_ingest_stats(in, &s);
  rv_ingest_destroy(in);
  assert_int_equal(T.produced - before, s.consumed);
  assert_int_equal(M, s.ingested);
  assert_int_equal(N + M, query_int(T.db, "SELECT count(*) FROM " COLL));
  assert_int_equal(0, query_int(T.db, "SELECT count(*) FROM (SELECT id FROM " COLL " GROUP BY id HAVING count(*) > 1) d"));
  assert_int_equal((long long)T.produced,
                   query_int(T.db, "SELECT sum(next_offset) FROM rv_offsets WHERE consumer_group = 'rv-ingest-" COLL
                                   "' AND topic = '" COLL ".vectors'"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_migrate_through_bouncer),
      cmocka_unit_test(test_direct_mode_breaks_behind_bouncer),
      cmocka_unit_test(test_ingest_exactly_once_and_resume),
  };
  return cmocka_run_group_tests_name("ingest_pgbouncer", tests, setup, teardown);
}
