#define _GNU_SOURCE
/* Private PostgreSQL and Redis: start in a temporary directory, use, stop,
 * start again on the same directory and find the data still there. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "rv_embedded.h"

static char dir[] = "/tmp/rv-embedded-XXXXXX";

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

static int setup(void **state) {
  (void)state;
  if (!mkdtemp(dir)) return -1;
  return chmod(dir, 0755); /* the postgres user must reach it when we run as root */
}

static int teardown(void **state) {
  (void)state;
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

static PGresult *exec_ok(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(c));
  return r;
}

static void test_postgres_persists_across_restarts(void **state) {
  (void)state;
  char err[1024];
  rv_pg_server_t *pg = rv_pg_server_start(dir, err, sizeof err);
  if (!pg) fail_msg("start: %s", err);
  int pid = rv_pg_server_pid(pg);
  assert_true(pid > 0);
  assert_non_null(strstr(rv_pg_server_conninfo(pg), "dbname=ruvector"));
  PGconn *c = PQconnectdb(rv_pg_server_conninfo(pg));
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  PQclear(exec_ok(c, "CREATE TABLE kept (v int)"));
  PQclear(exec_ok(c, "INSERT INTO kept VALUES (42)"));
  PQfinish(c);
  rv_pg_server_stop(pg);
  assert_int_equal(kill(pid, 0), -1); /* really gone */
  assert_int_equal(errno, ESRCH);

  pg = rv_pg_server_start(dir, err, sizeof err);
  if (!pg) fail_msg("restart: %s", err);
  c = PQconnectdb(rv_pg_server_conninfo(pg));
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  PGresult *r = exec_ok(c, "SELECT v FROM kept");
  assert_int_equal(PQntuples(r), 1);
  assert_string_equal(PQgetvalue(r, 0, 0), "42");
  PQclear(r);
  PQfinish(c);
  rv_pg_server_stop(pg);
}

/* Sends one inline command and returns the first reply line in buf. */
static void redis_cmd(const char *addr, const char *cmd, char *buf, size_t size) {
  assert_true(strncmp(addr, "unix:", 5) == 0);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", addr + 5);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(write(fd, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
  ssize_t n = read(fd, buf, size - 1);
  assert_true(n > 0);
  buf[n] = 0;
  close(fd);
}

static void test_redis_persists_across_restarts(void **state) {
  (void)state;
  char err[1024], reply[256];
  /* As in the pipeline runner: SIGTERM blocked, SIGPIPE ignored. The server
   * must still get our SIGTERM (and so save its dump) - a blocked mask is
   * inherited across exec. */
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigprocmask(SIG_BLOCK, &term, &old);
  signal(SIGPIPE, SIG_IGN);
  rv_redis_server_t *r = rv_redis_server_start(dir, err, sizeof err);
  if (!r) fail_msg("start: %s", err);
  redis_cmd(rv_redis_server_address(r), "SET rv:test kept\r\n", reply, sizeof reply);
  assert_string_equal(reply, "+OK\r\n");
  rv_redis_server_stop(r);

  r = rv_redis_server_start(dir, err, sizeof err);
  if (!r) fail_msg("restart: %s", err);
  redis_cmd(rv_redis_server_address(r), "GET rv:test\r\n", reply, sizeof reply);
  assert_string_equal(reply, "$4\r\nkept\r\n");
  rv_redis_server_stop(r);
  sigprocmask(SIG_SETMASK, &old, NULL);
  signal(SIGPIPE, SIG_DFL);
}

static void test_bad_directory_is_a_clear_error(void **state) {
  (void)state;
  char err[1024] = "";
  assert_null(rv_pg_server_start("/proc/rv-cannot-exist", err, sizeof err));
  assert_non_null(strstr(err, "/proc/rv-cannot-exist"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_postgres_persists_across_restarts),
      cmocka_unit_test(test_redis_persists_across_restarts),
      cmocka_unit_test(test_bad_directory_is_a_clear_error),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
