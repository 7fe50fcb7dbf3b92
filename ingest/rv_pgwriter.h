#ifndef RV_PGWRITER_H
#define RV_PGWRITER_H
/* Writes ingest batches to PostgreSQL, together with the consumed offsets,
 * in one transaction per batch:
 *
 *   rv_pgwriter_apply_rows:
 *   BEGIN
 *   pin the batch's ids in <c>_ids (ON CONFLICT DO NOTHING RETURNING: the
 *     ids returned are new; an id another open transaction pinned waits for it)
 *   only for ids seen before: COPY their rows into a temporary staging table
 *     and upsert them into <c> (ON CONFLICT (id, created_at))
 *   encode the COPY data of the new ids' rows (in memory)
 *   rv_pgwriter_apply_offsets:
 *   lock the batch's rv_offsets rows and compare them with what the batch
 *     expects (fencing: a consumer that lost its partitions cannot commit)
 *   upsert rv_offsets (next offset per partition; compare-and-set on the
 *     offsets the batch expects, so a concurrent first insert is fenced too)
 *   ... the caller adds the batch's changelog records to the outbox ...
 *   one simple query, sent without waiting (rv_pgwriter_send_commit):
 *     COPY (FORMAT binary) the rows of new ids (with their SQ8/PQ codes, if
 *     the batch has them, and the raw vector unless disabled) straight into
 *     <c>, which routes them to their partitions; updated_at = the
 *     transaction's now(); then COMMIT. A failed COPY skips the COMMIT.
 *   read the results (rv_pgwriter_finish): only then is the batch committed.
 *
 * Every check that can fence the batch off runs before the final query, so
 * that query can only fail as a whole (COPY error, lost connection), never
 * commit a fenced batch.
 *
 * The rows part takes no lock the transaction before it (on another writer)
 * still needs once its final query is in flight, and the fence comes after
 * it: so ingest runs apply_rows of batch N+1 on a second writer while batch
 * N's COPY and COMMIT are in flight on the first, and the fence of N+1 once
 * N's outcome is known. PostgreSQL then goes from N's COMMIT to N+1's COPY
 * after three short statements, instead of after N+1's whole preparation.
 *
 * Named prepared statements on direct connections, unnamed ones only in
 * pgbouncer mode (PgBouncer's transaction pooling cannot keep prepared
 * statements or temporary tables across transactions).
 * Threads: one writer is used by one thread at a time; it runs the end of
 * each transaction (send_commit .. finish) on a thread of its own. */
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "rv_batch.h"
#include "rv_buf.h"
#include "rv_err.h"

typedef struct rv_pgwriter rv_pgwriter_t;

/* Copies its arguments; connects to nothing yet. table must pass
 * rv_pgschema_check_name. NULL with errstr set on failure. */
rv_pgwriter_t *rv_pgwriter_new(const char *conninfo, int pgbouncer, const char *table, const char *consumer_group,
                               const char *topic, char *errstr, size_t errstr_size);
/* Closes the connection (rolling back an open transaction) and frees. NULL is a no-op. */
void rv_pgwriter_destroy(rv_pgwriter_t *w);

/* Connects if not connected: sets up the session (staging table, prepared
 * statements) and loads the known partitions. RV_ERR_UNAVAILABLE when the
 * server cannot be reached, RV_ERR_NOT_FOUND when the collection is not migrated. */
rv_err_t rv_pgwriter_connect(rv_pgwriter_t *w, char *errstr, size_t errstr_size);
/* Whether the raw float32 vector is stored beside its codes (default 1).
 * Call before the first apply. */
void rv_pgwriter_set_store_vector(rv_pgwriter_t *w, int on);

/* rv_pgschema_get_quantizer / rv_pgschema_put_quantizer for the writer's
 * collection, on its connection (outside a batch transaction). */
rv_err_t rv_pgwriter_get_quantizer(rv_pgwriter_t *w, const char *kind, int32_t *version, rv_buf_t *params,
                                   char *errstr, size_t errstr_size);
rv_err_t rv_pgwriter_put_quantizer(rv_pgwriter_t *w, const char *kind, int32_t version, const void *params,
                                   size_t len, int trained_on, int32_t *version_out, rv_buf_t *params_out,
                                   char *errstr, size_t errstr_size);

/* Drops the connection (after a connection-level error). */
void rv_pgwriter_disconnect(rv_pgwriter_t *w);

/* Reads the stored next offsets of partitions[0..n): next[i] = -1 when none. */
rv_err_t rv_pgwriter_read_offsets(rv_pgwriter_t *w, const int32_t *partitions, int64_t *next, size_t n,
                                  char *errstr, size_t errstr_size);

/* Creates the monthly partitions the batch's new ids may need and that are
 * not known yet, in a short transaction of its own (so the batch transaction
 * never takes the parent's ACCESS EXCLUSIVE lock). */
rv_err_t rv_pgwriter_prepare_partitions(rv_pgwriter_t *w, const rv_batch_t *b, char *errstr, size_t errstr_size);

typedef enum {
  RV_PGW_APPLIED = 0,  /* transaction open with the batch applied: publish, then commit or roll back */
  RV_PGW_ALREADY = 1,  /* the stored offsets already equal the batch's end: it was committed before
                          (e.g. a COMMIT whose reply was lost); no transaction is open */
} rv_pgw_outcome_t;

/* Runs the batch transaction up to (not including) the final query, sets
 * every row's created_at_ms and encodes the new rows' COPY data (b may be
 * cleared or refilled after it returns). On RV_ERR_STATE the stored offsets match neither the
 * batch's start nor its end, or another consumer stored a partition's first
 * offset while this transaction ran: another consumer owns the partitions
 * now; the transaction is rolled back. On other errors it is rolled back too (classify
 * with rv_err_is_retriable; RV_ERR_UNAVAILABLE means reconnect). */
rv_err_t rv_pgwriter_apply(rv_pgwriter_t *w, rv_batch_t *b, rv_pgw_outcome_t *outcome, char *errstr,
                           size_t errstr_size);
/* rv_pgwriter_apply in two parts (see the top): apply_rows opens the
 * transaction and writes the rows (errors roll it back; nothing is fenced
 * yet), apply_offsets fences and stores the offsets as apply does (same
 * outcomes and errors). Between them the connection is inside the batch
 * transaction: use it for nothing else. */
rv_err_t rv_pgwriter_apply_rows(rv_pgwriter_t *w, rv_batch_t *b, char *errstr, size_t errstr_size);
rv_err_t rv_pgwriter_apply_offsets(rv_pgwriter_t *w, rv_batch_t *b, rv_pgw_outcome_t *outcome, char *errstr,
                                   size_t errstr_size);
/* 1 when connected, nothing in flight and no transaction open: free for
 * statements of its own (autocommit). */
int rv_pgwriter_idle(const rv_pgwriter_t *w);

/* Commits the transaction apply left open: rv_pgwriter_send_commit, then
 * rv_pgwriter_finish. On failure the outcome is unknown when the error is
 * RV_ERR_UNAVAILABLE (apply of the same batch tells: it reports
 * RV_PGW_ALREADY if the commit went through). */
rv_err_t rv_pgwriter_commit(rv_pgwriter_t *w, char *errstr, size_t errstr_size);

/* Hands the end of the transaction apply left open (the COPY of the batch's
 * new rows, encoded by apply, and COMMIT) to the writer's own thread, which
 * sends it with blocking I/O, and returns at once. On RV_OK a commit is in
 * flight: until rv_pgwriter_finish the connection belongs to that thread,
 * and the writer refuses every other call that uses it (RV_ERR_INVALID;
 * connect too, so callers that connect first leave it alone) except
 * rv_pgwriter_poll, rv_pgwriter_disconnect and rv_pgwriter_rollback (which
 * cut the connection, wait for the thread to let go and close it). On
 * failure nothing is in flight and the transaction must be rolled back. */
rv_err_t rv_pgwriter_send_commit(rv_pgwriter_t *w, char *errstr, size_t errstr_size);
/* 1 while a commit sent by rv_pgwriter_send_commit has not been finished. */
int rv_pgwriter_in_flight(const rv_pgwriter_t *w);
/* Never blocks: 1 when rv_pgwriter_finish will not wait (or nothing is in flight). */
int rv_pgwriter_poll(rv_pgwriter_t *w);
/* Waits for the in-flight commit's results. RV_OK: committed. Otherwise
 * nothing is in flight any more and, as for rv_pgwriter_commit, the outcome
 * is unknown when the error is RV_ERR_UNAVAILABLE; on other errors the
 * transaction is open and failed: roll it back. */
rv_err_t rv_pgwriter_finish(rv_pgwriter_t *w, char *errstr, size_t errstr_size);

/* Rolls back the transaction apply left open, if any (disconnects when a
 * commit is in flight: its results were never read). */
void rv_pgwriter_rollback(rv_pgwriter_t *w);

/* Finds the rows of b that PostgreSQL refuses on their own, after the
 * batch's write failed with a data error (rv_pg_is_data_error) again and
 * again: in one transaction that is always rolled back (nothing is kept,
 * offsets are not touched), writes the rows as the batch transaction would
 * (pin, upsert of known ids, COPY of new ones), bisecting: a range is
 * written under a savepoint; if it fails with a data error, the savepoint
 * is rolled back and each half is tried in turn, down to single rows. Each
 * single row that fails is reported to on_reject (row index in b, SQLSTATE,
 * the server's primary message); rows that pass stay written for the ranges
 * after them, so a row refused only because of an earlier row of the batch
 * is found too. Costs about 2 log2(n) writes per refused row. On RV_OK
 * *n_rejected rows were reported (0: no single row fails, e.g. the error
 * arises only at COMMIT). Other errors (connection, serialization, ...)
 * abort the search: as apply's, classify with rv_err_is_retriable. Needs
 * the writer connected, idle and b coded as for apply; b's rows get
 * created_at_ms set, nothing else changes. */
rv_err_t rv_pgwriter_isolate(rv_pgwriter_t *w, rv_batch_t *b,
                             void (*on_reject)(void *arg, size_t row, const char *sqlstate, const char *message),
                             void *arg, size_t *n_rejected, char *errstr, size_t errstr_size);

/* The writer's connection (NULL when disconnected), for statements that must
 * run inside the transaction apply left open (the changelog outbox) or on
 * the same session; never while a commit is in flight. Owned by the writer. */
PGconn *rv_pgwriter_conn(rv_pgwriter_t *w);

#endif
