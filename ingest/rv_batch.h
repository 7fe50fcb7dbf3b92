#ifndef RV_BATCH_H
#define RV_BATCH_H
/* One ingest batch in memory: the latest accepted record per id (in first-seen
 * order), how many source messages it covers, and per source partition the
 * offset range it consumed. Owned and used by the ingest thread only. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"
#include "rv_record.h"

typedef struct rv_batch_row {
  rv_vector_record_t rec; /* validated record, owned */
  int32_t partition;      /* where the record was read */
  int64_t offset;
  int64_t pin_ms;         /* created_at if the id is new: event_time, else the message timestamp */
  int64_t created_at_ms;  /* the partition key the id is pinned to; set by the PostgreSQL writer */
  char *traceparent;      /* W3C traceparent header of the source message, owned; may be NULL */
  void *src;              /* the source message, owned (freed with the batch's free_src); may be NULL */
  int32_t older;          /* sources of earlier records of the id this row replaced: index into the
                             batch's older list, newest first; -1 when none */
} rv_batch_row_t;

typedef struct rv_batch_src {
  void *src;    /* owned like rv_batch_row_t.src; NULL once released */
  int32_t next; /* the one before it, or -1 */
} rv_batch_src_t;

typedef struct rv_batch_pos {
  int32_t partition;
  int64_t expected_next; /* next_offset stored in rv_offsets when the batch began (-1: no row) */
  int64_t next_offset;   /* last consumed offset + 1 */
} rv_batch_pos_t;

typedef struct rv_batch {
  rv_batch_row_t *rows; /* one per distinct id; a later record of an id replaces the earlier */
  size_t n_rows, cap_rows;
  rv_batch_pos_t *pos; /* one per source partition touched */
  size_t n_pos, cap_pos;
  uint64_t n_messages; /* source messages covered (accepted + rejected + superseded) */
  uint64_t n_accepted; /* accepted records, superseded ones included */
  uint64_t n_rejected; /* records sent to the DLQ */
  int64_t opened_ms;   /* monotonic time of the first message; 0 when empty */
  int32_t *slots;      /* open-addressing index id -> row, -1 empty; cap_slots is a power of 2 */
  size_t cap_slots;
  /* Quantized codes of the rows, filled by rv_quant_encode_batch just before
   * the write: row i's at sq8 + i * sq8_size (a delete's is unused). Valid
   * when n_coded == n_rows; rv_batch_clear invalidates them, keeps the memory. */
  uint8_t *sq8;        /* owned */
  size_t sq8_size;     /* bytes per code; 0 when the batch has no SQ8 codes */
  int32_t sq8_version; /* rv_quantizers version the codes were made with */
  uint8_t *pq;         /* owned; like sq8; NULL or room for cap_codes codes */
  size_t pq_size;      /* bytes per PQ code (pq_m); 0 when the rows go without PQ codes (pq_code NULL) */
  int32_t pq_version;  /* rv_quantizers version of the PQ codes */
  size_t cap_codes;    /* rows sq8 (and pq, unless NULL) have room for */
  size_t n_coded;      /* rows encoded */
  rv_batch_src_t *older; /* sources of replaced records (rv_batch_row_t.older) */
  size_t n_older, cap_older;
  void (*free_src)(void *src); /* frees a row's source; NULL: sources are not freed (kept by rv_batch_clear) */
} rv_batch_t;

void rv_batch_init(rv_batch_t *b);
/* Frees everything the batch owns. */
void rv_batch_close(rv_batch_t *b);
/* Empties the batch, keeping its allocations. */
void rv_batch_clear(rv_batch_t *b);

/* Adds an accepted record read at (partition, offset). Takes ownership of the
 * contents of *rec (re-initialised) and of traceparent, even on failure. If the
 * batch already holds the id, the newer record replaces it in place but keeps
 * the earlier pin_ms (an id is pinned by its first sight). Returns
 * RV_ERR_NOMEM with the batch unchanged otherwise. */
rv_err_t rv_batch_add(rv_batch_t *b, rv_vector_record_t *rec, int32_t partition, int64_t offset, int64_t pin_ms,
                      char *traceparent);

/* rv_batch_add that also keeps src, the record's source message (e.g. the
 * rd_kafka_message_t, for a dead letter after the write), owned by the batch
 * from now on even on failure: freed with b->free_src when the batch is
 * cleared or the row dropped. When the record replaces an earlier one of its
 * id, the earlier sources stay with the row (rv_batch_row_sources). */
rv_err_t rv_batch_add_src(rv_batch_t *b, rv_vector_record_t *rec, int32_t partition, int64_t offset,
                          int64_t pin_ms, char *traceparent, void *src);

/* Calls fn for each source message of row i, oldest first (the records
 * replaced in the batch, then the row's own); NULL sources are skipped.
 * Returns how many source records the row stands for (1 + replaced ones). */
size_t rv_batch_row_sources(const rv_batch_t *b, size_t i, void (*fn)(void *src, void *arg), void *arg);

/* Drops the rows i with drop[i] != 0 (a record the database refused): the
 * records they stand for move from n_accepted to n_rejected, their sources
 * are freed, the other rows keep their order, and the codes must be made
 * again (n_coded = 0). The positions (offsets) are unchanged. Returns
 * RV_ERR_NOMEM (batch unchanged) or RV_OK. */
rv_err_t rv_batch_drop_rows(rv_batch_t *b, const uint8_t *drop);

/* A view of rows [lo, lo + n) of b, sharing b's rows and codes, with an id
 * index of its own and no positions or sources: for writing part of a
 * batch. Close it with rv_batch_view_close (which frees only the index)
 * before b changes. RV_ERR_NOMEM or RV_OK. */
rv_err_t rv_batch_view(const rv_batch_t *b, size_t lo, size_t n, rv_batch_t *view);
void rv_batch_view_close(rv_batch_t *view);

/* Records that (partition, offset) was consumed; expected_next is the stored
 * next offset of the partition, used when the partition is new to the batch. */
rv_err_t rv_batch_consumed(rv_batch_t *b, int32_t partition, int64_t offset, int64_t expected_next);

/* The row holding id, or NULL. */
rv_batch_row_t *rv_batch_find(rv_batch_t *b, const char *id, size_t id_len);

#endif
