#ifndef RV_PGUTIL_H
#define RV_PGUTIL_H
/* Small libpq helpers shared by the schema manager and the writer: running a
 * statement and turning a failure into an rv_err_t that says whether to
 * reconnect. Thread: the connection's. */
#include <libpq-fe.h>
#include <stddef.h>

#include "rv_err.h"

/* Classifies a failed result (r may be NULL):
 *   RV_ERR_UNAVAILABLE  the connection is gone or the server is going away
 *                       (class 08, 57P01..57P03, or the connection is bad): reconnect and retry;
 *   RV_ERR_TIMEOUT      serialization failure, deadlock, lock timeout, cancel: retry;
 *   RV_ERR_INVALID      anything else (a bug or a schema problem). */
rv_err_t rv_pg_classify(PGconn *c, const PGresult *r);

/* Returns RV_OK if r has status COMMAND_OK, TUPLES_OK or COPY_IN; otherwise
 * the classified error, with "<sqlstate> <message> [<what>]" in errstr. Does
 * not clear r. */
rv_err_t rv_pg_check(PGconn *c, const PGresult *r, const char *what, char *errstr, size_t errstr_size);

/* Runs sql (no parameters, text results). On success *out (if non-NULL)
 * receives the result, which the caller PQclears; on failure nothing is left
 * to free. */
rv_err_t rv_pg_exec(PGconn *c, const char *sql, PGresult **out, char *errstr, size_t errstr_size);

/* Sends the server's NOTICEs (e.g. "relation already exists, skipping") to
 * the debug log instead of stderr. */
void rv_pg_quiet_notices(PGconn *c);

/* The SQLSTATE of r, or "" when it has none. */
const char *rv_pg_sqlstate(const PGresult *r);

/* Splits an errstr written by rv_pg_check ("<sqlstate> <severity>:  <message> [<what>]")
 * into the SQLSTATE (5 characters and a NUL; "" when errstr has none) and the
 * primary message (severity and [what] dropped; at most msg_size - 1 bytes).
 * Either output may be NULL. */
void rv_pg_errstr_split(const char *errstr, char sqlstate[6], char *msg, size_t msg_size);

/* 1 when sqlstate names an error caused by the data of the rows written, which
 * the same rows repeat however often they are retried: class 22 (data
 * exception), class 23 (integrity constraint violation) and P0001
 * (raise_exception, e.g. RAISE EXCEPTION in a trigger). Connection,
 * serialization, deadlock, lock and resource errors are not. */
int rv_pg_is_data_error(const char *sqlstate);

#endif
