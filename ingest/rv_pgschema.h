#ifndef RV_PGSCHEMA_H
#define RV_PGSCHEMA_H
/* The PostgreSQL schema of a collection and its monthly partition manager.
 *
 *   <c>        PARTITION BY RANGE (created_at): id, created_at, vector (float32
 *              LE, NULL when the raw vector is not stored), code (SQ8) and
 *              code_version, pq_code and pq_version, metadata jsonb,
 *              updated_at, deleted_at, src_partition, src_offset;
 *              PRIMARY KEY (id, created_at); GIN (metadata jsonb_path_ops);
 *              (updated_at DESC) and (code_version) WHERE deleted_at IS NULL
 *   partitions one per UTC month plus <c>_default for the rest. Made by
 *              pg_partman 4.7 (<c>_pYYYY_MM) when the extension is installed or
 *              can be, when the table is created; by ingest itself otherwise
 *              (<c>_pYYYYMM). The manager chosen at creation stays the table's.
 *              vector is compressed with lz4 when the server has it (every
 *              partition, also those pg_partman makes): the default pglz
 *              costs more than the rest of the write on sparse vectors.
 *   <c>_ids    id -> created_at: pins an id to the partition of its first sight
 *   rv_offsets (consumer_group, topic, partition) -> next_offset, shared by all collections
 *   rv_quantizers (collection, kind, version) -> serialized parameters, shared
 *
 * DDL runs under transaction-scoped advisory locks (one global, one per
 * collection), so concurrent migrations and partition creation serialise.
 * Partition bounds are UTC months: partman calls run with TimeZone = UTC.
 * Thread: the connection's. */
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "rv_buf.h"
#include "rv_err.h"

/* Longest collection name the schema accepts (room for the longest suffix
 * within PostgreSQL's 63-byte identifiers). */
#define RV_PGSCHEMA_NAME_MAX 48

/* A month as year * 12 + (month - 1), UTC. */
typedef int32_t rv_month_t;

rv_month_t rv_month_of_ms(int64_t ms_since_epoch);

/* Returns RV_OK if name is [a-z][a-z0-9_]* and at most RV_PGSCHEMA_NAME_MAX bytes. */
rv_err_t rv_pgschema_check_name(const char *name, char *errstr, size_t errstr_size);

typedef enum {
  RV_PARTMAN_AUTO = 0, /* pg_partman for a new table if the extension is (or can be) installed */
  RV_PARTMAN_OFF = 1,  /* ingest's own partition manager for a new table */
} rv_partman_mode_t;

typedef struct rv_pgschema_opts {
  rv_partman_mode_t partman;
  int premake; /* months made ahead of the current one; 0 = 3 */
} rv_pgschema_opts_t;

/* Who makes a table's partitions. */
typedef struct rv_partitioning {
  int partman;             /* 1: pg_partman (create_partition_time), 0: CREATE TABLE ... PARTITION OF */
  char partman_schema[64]; /* the extension's schema when partman */
} rv_partitioning_t;

/* 1 when the server can compress with lz4 (built --with-lz4), 0 otherwise or on error. */
int rv_pgschema_has_lz4(PGconn *c);

/* rv_pgschema_migrate_opts with default options. */
rv_err_t rv_pgschema_migrate(PGconn *c, const char *table, int64_t now_ms, char *errstr, size_t errstr_size);

/* Creates every table and index if missing and the partitions from the month
 * before now_ms's to opts->premake months after it, in one transaction
 * (committed on success, rolled back on failure). Idempotent; safe to run
 * from several processes at once. Adds the columns of newer versions to a
 * table made by an older one. opts may be NULL (defaults). */
rv_err_t rv_pgschema_migrate_opts(PGconn *c, const char *table, int64_t now_ms, const rv_pgschema_opts_t *opts,
                                  char *errstr, size_t errstr_size);

/* Tells who makes table's partitions (read from pg_partman's part_config). */
rv_err_t rv_pgschema_partitioning(PGconn *c, const char *table, rv_partitioning_t *out, char *errstr,
                                  size_t errstr_size);

/* Appends to *months (a malloc'd array the caller frees; *n updated) the
 * months that have a partition (either naming). RV_ERR_NOT_FOUND if the
 * table does not exist (not migrated). */
rv_err_t rv_pgschema_list_months(PGconn *c, const char *table, rv_month_t **months, size_t *n, char *errstr,
                                 size_t errstr_size);

/* Creates the partitions of months[0..n) in one transaction of their own,
 * with the table's manager p. A month whose partition cannot be made
 * (typically: the default partition already holds rows of that month) is
 * logged and skipped, its rows keep going to the default partition. Returns
 * an error only when the transaction itself fails (then nothing may have
 * been created). */
rv_err_t rv_pgschema_create_months(PGconn *c, const char *table, const rv_partitioning_t *p,
                                   const rv_month_t *months, size_t n, char *errstr, size_t errstr_size);

/* ---- quantizer parameters (rv_quantizers) ---- */

/* Stores params as (collection, kind, version) unless that key exists
 * already, then reads back the latest version of (collection, kind): two
 * processes racing with different params agree on the one stored first.
 * *version_out and *params_out (reset, then filled) get what is stored.
 * trained_on: vectors in the training sample (0 when given as a file). */
rv_err_t rv_pgschema_put_quantizer(PGconn *c, const char *collection, const char *kind, int32_t version,
                                   const void *params, size_t len, int trained_on, int32_t *version_out,
                                   rv_buf_t *params_out, char *errstr, size_t errstr_size);

/* The latest version of (collection, kind): *version and *params (reset, then
 * filled). RV_ERR_NOT_FOUND when there is none. */
rv_err_t rv_pgschema_get_quantizer(PGconn *c, const char *collection, const char *kind, int32_t *version,
                                   rv_buf_t *params, char *errstr, size_t errstr_size);

#endif
