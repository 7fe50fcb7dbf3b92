#ifndef RV_PGSCHEMA_H
#define RV_PGSCHEMA_H
/* The PostgreSQL schema of a collection and its monthly partition manager.
 *
 *   <c>        PARTITION BY RANGE (created_at): id, created_at, vector (float32
 *              LE), code (SQ8), metadata jsonb, updated_at, deleted_at,
 *              src_partition, src_offset; PRIMARY KEY (id, created_at);
 *              GIN (metadata jsonb_path_ops); (updated_at DESC) WHERE deleted_at IS NULL
 *   <c>_pYYYYMM  one partition per UTC month; <c>_default catches the rest
 *   <c>_ids    id -> created_at: pins an id to the partition of its first sight
 *   rv_offsets (consumer_group, topic, partition) -> next_offset, shared by all collections
 *
 * DDL runs under transaction-scoped advisory locks (one global, one per
 * collection), so concurrent migrations and partition creation serialise.
 * Thread: the connection's. */
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

/* Longest collection name the schema accepts (room for the longest suffix
 * within PostgreSQL's 63-byte identifiers). */
#define RV_PGSCHEMA_NAME_MAX 48

/* A month as year * 12 + (month - 1), UTC. */
typedef int32_t rv_month_t;

rv_month_t rv_month_of_ms(int64_t ms_since_epoch);

/* Returns RV_OK if name is [a-z][a-z0-9_]* and at most RV_PGSCHEMA_NAME_MAX bytes. */
rv_err_t rv_pgschema_check_name(const char *name, char *errstr, size_t errstr_size);

/* Creates every table, index and the partitions from the month before
 * now_ms's to three months after, in one transaction (committed on success,
 * rolled back on failure). Idempotent. */
rv_err_t rv_pgschema_migrate(PGconn *c, const char *table, int64_t now_ms, char *errstr, size_t errstr_size);

/* Appends to *months (a malloc'd array the caller frees; *n updated) the
 * months that have a <table>_pYYYYMM partition. RV_ERR_NOT_FOUND if the
 * table does not exist (not migrated). */
rv_err_t rv_pgschema_list_months(PGconn *c, const char *table, rv_month_t **months, size_t *n, char *errstr,
                                 size_t errstr_size);

/* Creates the partitions of months[0..n) in one transaction of their own.
 * A month whose partition cannot be made (typically: the default partition
 * already holds rows of that month) is logged and skipped, its rows keep
 * going to the default partition. Returns an error only when the transaction
 * itself fails (then nothing may have been created). */
rv_err_t rv_pgschema_create_months(PGconn *c, const char *table, const rv_month_t *months, size_t n, char *errstr,
                                   size_t errstr_size);

#endif
