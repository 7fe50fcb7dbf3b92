#ifndef RV_OUTBOX_H
#define RV_OUTBOX_H
/* The transactional outbox of a collection's changelog.
 *
 *   <c>_outbox        (batch_id, seq) -> src_partition and either
 *                       a range: [from_offset, to_offset) of the source
 *                       partition, the batch transaction's time (written_at)
 *                       and the per-message extras the table does not hold
 *                       (event_time, traceparent); key and value NULL; or
 *                       a record: key, value = an encoded changelog record
 *   <c>_outbox_batch  sequence of batch ids
 *
 * A batch's changes are recorded in <c>_outbox inside the batch's own
 * transaction, next to its rows and source offsets, so they commit or vanish
 * together. By default ("ranges") that is one small row per source partition
 * of the batch: the changes themselves are the collection table's rows whose
 * version (src_partition, src_offset) falls in the range and whose updated_at
 * is the batch transaction's time, so nothing is written twice. A row a later
 * batch overwrote is that batch's change (newer), not this one's. When the
 * table does not store the float vectors (codes only), every change is
 * COPYed whole instead ("records"): the changelog carries the vector.
 *
 * Only after COMMIT are the changes published (key = id), from memory; once
 * Kafka confirmed them, their outbox rows are deleted by (batch id, source
 * partition). A crash between COMMIT and the delete leaves them in the
 * table, and the next owner of their source partitions publishes them again
 * before anything newer of those partitions ("drain"), re-encoding ranges
 * from the table: a change is never lost, at worst published twice (replicas
 * ignore versions they applied), and a drained change is the row's latest.
 *
 * Rows are drained per source partition, and only by the consumer that owns
 * the partition, so a live consumer's changes are never re-published by
 * another behind its newer ones.
 *
 * An rv_outbox_t holds one publication in memory: the records of a staged
 * batch or of a drain, and the (batch id, partition) pairs to delete once
 * they are confirmed; plus pairs confirmed whose delete failed, retried by
 * the next rv_outbox_forget. Unnamed statements only (PgBouncer-safe).
 * Thread: one thread uses an outbox; the connection is the caller's. */
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "rv_batch.h"
#include "rv_err.h"
#include "rv_producer.h"
#include "rv_record.h"

typedef struct rv_outbox rv_outbox_t;

/* Creates <table>_outbox and its sequence if missing (or adds the range
 * columns to an older one), in a transaction of its own under the
 * collection's advisory lock (like rv_pgschema_migrate). */
rv_err_t rv_outbox_migrate(PGconn *c, const char *table, char *errstr, size_t errstr_size);

/* Deletes every row of <table>_outbox (no-op when the table does not exist)
 * and sets *n_deleted: for a source log that started over (the embedded
 * broker), whose offsets, and so the versions of these changes, mean nothing
 * any more. Autocommit. */
rv_err_t rv_outbox_discard_all(PGconn *c, const char *table, long long *n_deleted, char *errstr,
                               size_t errstr_size);

/* table must pass rv_pgschema_check_name. NULL with errstr set on failure. */
rv_outbox_t *rv_outbox_new(const char *table, char *errstr, size_t errstr_size);
/* Frees. Unpublished records are dropped (they stay in the table). NULL is a no-op. */
void rv_outbox_destroy(rv_outbox_t *o);

/* 1 (default): stage ranges, the collection table stores the float vectors;
 * 0: stage whole records (the table stores codes only). Drains read both. */
void rv_outbox_set_ranges(rv_outbox_t *o, int on);

/* Inside the open batch transaction on c, after the rows were written: takes
 * a new batch id, encodes the change of every row of b (rows must carry
 * created_at_ms) and records the batch in the outbox (ranges or records). The records become the current publication, replacing
 * any earlier one. On failure the transaction must be rolled back (the
 * current publication is empty then); classify with rv_pg_classify rules. */
rv_err_t rv_outbox_stage(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                         size_t errstr_size);

/* rv_outbox_stage without encoding the records of a ranges stage (records
 * mode: the same as rv_outbox_stage): the outbox rows are inserted, and the
 * current publication is left as it is (it may still be sent) until
 * rv_outbox_encode adds the batch's records to it. The encoding needs no
 * connection, so it can run while the transaction's end is in flight, and
 * the batch before can be published after this one's COMMIT was sent. */
rv_err_t rv_outbox_stage_rows(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                              size_t errstr_size);
/* 1 when rv_outbox_stage_rows leaves the current publication alone (ranges
 * mode); 0 when it replaces it (records mode: send the current one first). */
int rv_outbox_stage_keeps_current(const rv_outbox_t *o);
/* Encodes the records of the batch b staged by rv_outbox_stage_rows (b's
 * rows and created_at_ms unchanged since) and adds them to the current
 * publication; no-op when there is nothing left to encode. On failure only
 * b's records are left out: they are only in the table then (a drain
 * publishes them). */
rv_err_t rv_outbox_encode(rv_outbox_t *o, rv_codec_t *codec, const rv_batch_t *b, char *errstr,
                          size_t errstr_size);

/* Outside a transaction: loads every outbox row whose source partition is
 * one of partitions[0..n), in batch and sequence order (a range's changes in
 * source offset order, encoded from the collection table), as the current
 * publication. RV_OK with nothing loaded when there are none. */
rv_err_t rv_outbox_load(rv_outbox_t *o, PGconn *c, rv_codec_t *codec, const int32_t *partitions, size_t n,
                        char *errstr, size_t errstr_size);

/* Records in the current publication. */
size_t rv_outbox_count(const rv_outbox_t *o);

/* Queues the current publication on p to topic (key = id; copies) without
 * waiting: it becomes the newest sent publication, tagged with p's mark
 * after its records (rv_producer_mark), and the current publication is
 * empty again. Confirm with rv_producer_confirm_to, then call
 * rv_outbox_confirmed. Returns RV_ERR_NOMEM only. */
rv_err_t rv_outbox_send(rv_outbox_t *o, rv_producer_t *p, const char *topic, char *errstr, size_t errstr_size);

/* Sent publications not confirmed yet, and the mark of the i-th (0 = oldest). */
size_t rv_outbox_unconfirmed(const rv_outbox_t *o);
uint64_t rv_outbox_mark(const rv_outbox_t *o, size_t i);

/* The sent publications whose mark is <= confirmed (rv_producer_confirmed)
 * were delivered: forgets them, adds their record count to *n_recs (set),
 * and deletes their rows (autocommit; c NULL = not connected now, the delete
 * is left for later), with any left over from an earlier failed delete. On
 * failure the rows to delete are kept for the next call (or for a drain,
 * which publishes them once more); the publications are forgotten either way. */
rv_err_t rv_outbox_confirmed(rv_outbox_t *o, uint64_t confirmed, PGconn *c, size_t *n_recs, char *errstr,
                             size_t errstr_size);

/* Forgets the sent publications without deleting anything (stopping with
 * them unconfirmed: their rows stay in the table for a later drain). */
void rv_outbox_forget_sent(rv_outbox_t *o);

/* Retries the deletes a failed rv_outbox_confirmed left (no-op when none;
 * RV_ERR_UNAVAILABLE when there are some and c is NULL). */
rv_err_t rv_outbox_forget(rv_outbox_t *o, PGconn *c, char *errstr, size_t errstr_size);

/* Forgets the current publication and a staged batch not encoded yet,
 * without deleting anything (their rows stay in the table for a later drain). */
void rv_outbox_clear(rv_outbox_t *o);

#endif
