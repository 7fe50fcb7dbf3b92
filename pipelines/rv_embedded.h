#ifndef RV_EMBEDDED_H
#define RV_EMBEDDED_H
/* Private PostgreSQL 15 and Redis 7 servers for the `embedded` default and for
 * tests: started from the installed Debian binaries under a data directory,
 * listening on unix sockets only, stopped on rv_*_stop. Each server gets a
 * parent-death signal, so it also stops if this process dies.
 * Target rv_embedded: depends on libpq and libc only. */
#include <stddef.h>

#include "rv_err.h"

typedef struct rv_pg_server rv_pg_server_t;
typedef struct rv_redis_server rv_redis_server_t;

/* Initialises <dir>/pg/data on first use (superuser "ruvector", database
 * "ruvector", trust auth on the socket only) and starts postgres with its
 * socket in <dir>/pg/run. When running as root the server runs as the
 * "postgres" system user, which must be able to reach <dir>. A second start
 * on the same dir reuses the data. Waits until it accepts connections. */
rv_pg_server_t *rv_pg_server_start(const char *dir, char *errstr, size_t errstr_size);

/* libpq connection string for the server, valid until stop. */
const char *rv_pg_server_conninfo(const rv_pg_server_t *s);

/* Process id of the postmaster (for fault tests). */
int rv_pg_server_pid(const rv_pg_server_t *s);

/* Fast shutdown, waits for exit, frees. NULL is a no-op. */
void rv_pg_server_stop(rv_pg_server_t *s);

/* Starts redis-server with its socket at <dir>/redis/redis.sock and its
 * dump in <dir>/redis (reused by a second start). Waits until it answers. */
rv_redis_server_t *rv_redis_server_start(const char *dir, char *errstr, size_t errstr_size);

/* "unix:/abs/path/redis.sock", valid until stop. */
const char *rv_redis_server_address(const rv_redis_server_t *s);

void rv_redis_server_stop(rv_redis_server_t *s);

#endif
