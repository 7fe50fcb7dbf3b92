#include "rv_embedded.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rv_fs.h"
#include "rv_log.h"
#include "rv_time.h"

#define START_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 30000

struct rv_pg_server {
  pid_t pid;
  char conninfo[PATH_MAX + 128];
};

struct rv_redis_server {
  pid_t pid;
  char address[PATH_MAX + 8];
};

/* The run-as identity for servers that refuse root (PostgreSQL). */
typedef struct run_as {
  int active;
  uid_t uid;
  gid_t gid;
} run_as_t;

static const char *pg_bindir(void) {
  const char *env = getenv("RV_PG_BINDIR");
  return env && *env ? env : "/usr/lib/postgresql/15/bin";
}

/* Spawns argv[0] with output appended to log_path. The child gets its own
 * process group (a terminal's Ctrl-C reaches only us; we stop children in
 * order) and a parent-death signal, so it does not outlive us. */
static pid_t spawn(char *const argv[], const char *log_path, const run_as_t *as, int death_signal) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  setpgid(0, 0);
  /* A blocked or ignored signal survives exec: the runner blocks SIGTERM and
   * ignores SIGPIPE, and redis-server would then never see our SIGTERM. */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || null < 0) _exit(127);
  if (as->active && fchown(fd, as->uid, as->gid) != 0) _exit(127);
  dup2(null, 0);
  dup2(fd, 1);
  dup2(fd, 2);
  if (as->active && (setgid(as->gid) || setuid(as->uid))) _exit(126);
  /* Set after the credential change, which would clear it. */
  prctl(PR_SET_PDEATHSIG, death_signal);
  if (getppid() != parent) _exit(0);
  execv(argv[0], argv);
  _exit(127);
}

/* Runs argv to completion; returns its exit status, or -1. */
static int run(char *const argv[], const char *log_path, const run_as_t *as) {
  pid_t pid = spawn(argv, log_path, as, SIGKILL);
  if (pid < 0) return -1;
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Waits up to timeout_ms for pid to exit; returns 1 if it did. */
static int wait_exit(pid_t pid, int timeout_ms) {
  int64_t deadline = rv_mono_ms() + timeout_ms;
  for (;;) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return 1;
    if (rv_mono_ms() >= deadline) return 0;
    struct timespec ts = {0, 20 * 1000000};
    nanosleep(&ts, NULL);
  }
}

static void stop_child(pid_t pid, int sig, int escalate_sig) {
  if (pid <= 0) return;
  kill(pid, sig);
  if (wait_exit(pid, STOP_TIMEOUT_MS)) return;
  kill(pid, escalate_sig);
  if (wait_exit(pid, 5000)) return;
  kill(pid, SIGKILL);
  wait_exit(pid, 5000);
}

/* Appends the last lines of a log to errstr, so a failed start says why. */
static void log_tail(const char *path, char *out, size_t out_size) {
  FILE *f = fopen(path, "r");
  if (!f || out_size < 2) {
    if (f) fclose(f);
    return;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  long from = size > 600 ? size - 600 : 0;
  fseek(f, from, SEEK_SET);
  char buf[601];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  for (size_t i = 0; i < n; i++)
    if (buf[i] == '\n') buf[i] = ' ';
  size_t used = strlen(out);
  if (used + 1 < out_size) snprintf(out + used, out_size - used, " [%s: ...%s]", path, buf);
}

static int abs_dir(const char *dir, char *out, size_t out_size, char *errstr, size_t errstr_size) {
  if (rv_mkdir_p(dir, 0755)) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot create %s: %s", dir, strerror(errno));
    return -1;
  }
  char real[PATH_MAX];
  if (!realpath(dir, real) || snprintf(out, out_size, "%s", real) >= (int)out_size) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot resolve %s: %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}

/* Polls ready(arg) until it answers, the child exits, or START_TIMEOUT_MS
 * passes (then the child is killed). Returns 0 when ready; otherwise -1 with
 * errstr naming the server and the tail of its log. */
static int wait_ready(pid_t pid, int (*ready)(const char *), const char *arg, const char *what,
                      const char *log_path, char *errstr, size_t errstr_size) {
  int64_t deadline = rv_mono_ms() + START_TIMEOUT_MS;
  while (!ready(arg)) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      rv_errf(RV_ERR_IO, errstr, errstr_size, "%s exited during start-up", what);
      log_tail(log_path, errstr, errstr_size);
      return -1;
    }
    if (rv_mono_ms() > deadline) {
      stop_child(pid, SIGKILL, SIGKILL);
      rv_errf(RV_ERR_TIMEOUT, errstr, errstr_size, "%s did not answer within %d s", what, START_TIMEOUT_MS / 1000);
      log_tail(log_path, errstr, errstr_size);
      return -1;
    }
    struct timespec ts = {0, 20 * 1000000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

/* ------------------------------------------------------------------ PostgreSQL */

static int pg_ready(const char *conninfo) { return PQping(conninfo) == PQPING_OK; }

static int pg_create_database(const char *sockdir, char *errstr, size_t errstr_size) {
  char ci[PATH_MAX + 64];
  snprintf(ci, sizeof ci, "host=%s port=5432 dbname=postgres user=ruvector", sockdir);
  PGconn *c = PQconnectdb(ci);
  int rc = -1;
  if (PQstatus(c) != CONNECTION_OK) {
    rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "connect to embedded postgres: %s", PQerrorMessage(c));
    goto out;
  }
  PGresult *r = PQexec(c, "SELECT 1 FROM pg_database WHERE datname = 'ruvector'");
  int exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  PQclear(r);
  if (!exists) {
    r = PQexec(c, "CREATE DATABASE ruvector");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      rv_errf(RV_ERR_IO, errstr, errstr_size, "create database: %s", PQerrorMessage(c));
      PQclear(r);
      goto out;
    }
    PQclear(r);
  }
  rc = 0;
out:
  PQfinish(c);
  return rc;
}

rv_pg_server_t *rv_pg_server_start(const char *dir, char *errstr, size_t errstr_size) {
  char base[PATH_MAX], data[PATH_MAX + 16], run_dir[PATH_MAX + 16], log_path[PATH_MAX + 32];
  char pgdir[PATH_MAX + 8];
  snprintf(pgdir, sizeof pgdir, "%s/pg", dir);
  if (abs_dir(pgdir, base, sizeof base, errstr, errstr_size)) return NULL;
  snprintf(data, sizeof data, "%s/data", base);
  snprintf(run_dir, sizeof run_dir, "%s/run", base);
  snprintf(log_path, sizeof log_path, "%s/postgres.log", base);
  if (strlen(run_dir) + sizeof("/.s.PGSQL.5432") > sizeof(((struct sockaddr_un *)0)->sun_path)) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "data directory path too long for a unix socket: %s", run_dir);
    return NULL;
  }
  run_as_t as = {0};
  if (geteuid() == 0) {
    struct passwd *pw = getpwnam("postgres");
    if (!pw) {
      rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
              "running as root and there is no 'postgres' user to run PostgreSQL as (install postgresql-15)");
      return NULL;
    }
    as = (run_as_t){1, pw->pw_uid, pw->pw_gid};
  }
  if (rv_mkdir_p(data, 0700) || rv_mkdir_p(run_dir, 0755)) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot create %s: %s", data, strerror(errno));
    return NULL;
  }
  if (as.active && (chown(base, as.uid, as.gid) || chown(data, as.uid, as.gid) || chown(run_dir, as.uid, as.gid))) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "cannot hand %s to the postgres user: %s", base, strerror(errno));
    return NULL;
  }
  chmod(data, 0700);

  char bin[PATH_MAX];
  char version[PATH_MAX + 32];
  snprintf(version, sizeof version, "%s/PG_VERSION", data);
  if (access(version, F_OK) != 0) {
    snprintf(bin, sizeof bin, "%s/initdb", pg_bindir());
    char *argv[] = {bin, "-D", data, "-U", "ruvector", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync", NULL};
    rv_info("embedded", "initialising PostgreSQL in %s", data);
    int rc = run(argv, log_path, &as);
    if (rc != 0) {
      rv_errf(RV_ERR_IO, errstr, errstr_size,
              "initdb failed (exit %d); if running as root, every directory above %s must be searchable by "
              "the postgres user",
              rc, data);
      log_tail(log_path, errstr, errstr_size);
      return NULL;
    }
  }

  snprintf(bin, sizeof bin, "%s/postgres", pg_bindir());
  char *argv[] = {bin, "-D", data, "-k", run_dir, "-c", "listen_addresses=", "-c", "max_connections=100",
                  "-c", "shared_buffers=128MB", NULL};
  /* SIGINT = fast shutdown: a parent that dies takes its database down cleanly. */
  pid_t pid = spawn(argv, log_path, &as, SIGINT);
  if (pid < 0) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "fork: %s", strerror(errno));
    return NULL;
  }
  char ping[PATH_MAX + 64];
  snprintf(ping, sizeof ping, "host=%s port=5432 dbname=postgres user=ruvector connect_timeout=2", run_dir);
  if (wait_ready(pid, pg_ready, ping, "postgres", log_path, errstr, errstr_size)) return NULL;
  if (pg_create_database(run_dir, errstr, errstr_size)) {
    stop_child(pid, SIGINT, SIGQUIT);
    return NULL;
  }
  rv_pg_server_t *s = calloc(1, sizeof *s);
  if (!s) {
    stop_child(pid, SIGINT, SIGQUIT);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  s->pid = pid;
  snprintf(s->conninfo, sizeof s->conninfo, "host=%s port=5432 dbname=ruvector user=ruvector", run_dir);
  rv_info("embedded", "PostgreSQL ready (pid %d): %s", (int)pid, s->conninfo);
  return s;
}

const char *rv_pg_server_conninfo(const rv_pg_server_t *s) { return s->conninfo; }

int rv_pg_server_pid(const rv_pg_server_t *s) { return (int)s->pid; }

void rv_pg_server_stop(rv_pg_server_t *s) {
  if (!s) return;
  stop_child(s->pid, SIGINT, SIGQUIT);
  rv_info("embedded", "PostgreSQL stopped");
  free(s);
}

/* ------------------------------------------------------------------ Redis */

/* 1 if redis answers PING on the socket. */
static int redis_ready(const char *sock_path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
  int ok = 0;
  char buf[16] = {0};
  struct timeval tv = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && write(fd, "PING\r\n", 6) == 6 &&
      read(fd, buf, sizeof buf - 1) > 0 && strncmp(buf, "+PONG", 5) == 0)
    ok = 1;
  close(fd);
  return ok;
}

rv_redis_server_t *rv_redis_server_start(const char *dir, char *errstr, size_t errstr_size) {
  char base[PATH_MAX], rdir[PATH_MAX + 8], sock[PATH_MAX + 16], log_path[PATH_MAX + 16];
  snprintf(rdir, sizeof rdir, "%s/redis", dir);
  if (abs_dir(rdir, base, sizeof base, errstr, errstr_size)) return NULL;
  snprintf(sock, sizeof sock, "%s/redis.sock", base);
  snprintf(log_path, sizeof log_path, "%s/redis.log", base);
  if (strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "data directory path too long for a unix socket: %s", sock);
    return NULL;
  }
  const char *bin = getenv("RV_REDIS_SERVER");
  if (!bin || !*bin) bin = "/usr/bin/redis-server";
  if (access(bin, X_OK) != 0) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s not found (install redis-server)", bin);
    return NULL;
  }
  /* Settings from the seed's Redis section, scaled to a private cache. */
  char *argv[] = {(char *)bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                  "--dir", base, "--dbfilename", "dump.rdb", "--save", "60 1000", "--appendonly", "no",
                  "--daemonize", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
                  "--maxmemory-samples", "10", "--lazyfree-lazy-eviction", "yes",
                  "--lazyfree-lazy-expire", "yes", "--timeout", "0", NULL};
  unlink(sock);
  run_as_t as = {0};
  pid_t pid = spawn(argv, log_path, &as, SIGTERM);
  if (pid < 0) {
    rv_errf(RV_ERR_IO, errstr, errstr_size, "fork: %s", strerror(errno));
    return NULL;
  }
  if (wait_ready(pid, redis_ready, sock, "redis-server", log_path, errstr, errstr_size)) return NULL;
  rv_redis_server_t *s = calloc(1, sizeof *s);
  if (!s) {
    stop_child(pid, SIGTERM, SIGKILL);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  s->pid = pid;
  snprintf(s->address, sizeof s->address, "unix:%s", sock);
  rv_info("embedded", "Redis ready (pid %d): %s", (int)pid, s->address);
  return s;
}

const char *rv_redis_server_address(const rv_redis_server_t *s) { return s->address; }

void rv_redis_server_stop(rv_redis_server_t *s) {
  if (!s) return;
  stop_child(s->pid, SIGTERM, SIGKILL); /* SIGTERM: redis saves its dump, then exits */
  rv_info("embedded", "Redis stopped");
  free(s);
}
