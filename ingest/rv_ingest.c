/* The ingest stage: one consumer thread per collection.
 *
 * Order of effects for a batch (the invariant: source offsets are committed
 * only after everything the batch caused is durable, and a change is
 * published only after the rows it describes are committed):
 *   1. bad records were queued to the DLQ as they were read: confirm them;
 *   2. one PostgreSQL transaction: rows + pins + next offsets + the batch's
 *      changelog records in the outbox (rv_outbox.h); COMMIT. Its last part
 *      (the new rows' COPY and the COMMIT) is sent without waiting: the next
 *      batch is read while PostgreSQL writes it, and its result is read
 *      (finish_flight) before anything else depends on the stored offsets;
 *      3 waits for it. Two connections take turns: the next batch's rows are
 *      written (rv_pgwriter_apply_rows) on the other one while this COMMIT
 *      is in flight, and its fence, offsets and outbox rows follow once this
 *      one's outcome is in, so PostgreSQL goes from one COMMIT to the next
 *      COPY after three short statements;
 *   3. an async Kafka offset commit (informational: lag tools); send the
 *      outbox records to Kafka without waiting (when the next batch is ready
 *      by then, right after its COMMIT was sent): their confirmation arrives
 *      while the next batch is read and written, and their outbox rows are
 *      deleted once it has. At most conf.max_unconfirmed batches wait for it
 *      (more pause ingest: a changelog outage stops it there); a drain, a
 *      revocation and stop wait for all of them. One idempotent producer
 *      keeps a later batch's records behind an earlier one's per partition.
 * A crash before the COMMIT re-reads the batch from the stored offsets and
 * repeats 1-2. A crash after it leaves the records in the outbox: whoever
 * is assigned their source partitions next publishes them before anything
 * newer ("drain"); duplicates are harmless, every change carries its version.
 * A batch PostgreSQL keeps refusing with a data error is searched for the
 * refused rows after RV_INGEST_DATA_RETRIES failures (isolate_refused): they
 * go to the DLQ and are dropped from the batch, which then goes through 1-3
 * as any other. */
#include "rv_ingest.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_batch.h"
#include "rv_changelog.h"
#include "rv_decode.h"
#include "rv_dlq.h"
#include "rv_ingest_metrics.h"
#include "rv_kafka.h"
#include "rv_log.h"
#include "rv_outbox.h"
#include "rv_pgschema.h"
#include "rv_pgutil.h"
#include "rv_pgwriter.h"
#include "rv_quant.h"
#include "rv_producer.h"
#include "rv_record.h"
#include "rv_registry.h"
#include "rv_time.h"
#include "rv_validate.h"

#define LOG "ingest"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONFIRM_TIMEOUT_MS 10000
#define STOP_GRACE_MS 10000   /* how long stop keeps retrying a failing batch before leaving it unread */
#define PROGRESS_EVERY_MS 5000
#define MARKER_PARTS_REFRESH_MS 30000 /* how often the changelog's partition count is asked for again */

typedef struct assigned {
  int32_t partition;
  int64_t committed; /* next offset stored in rv_offsets (or being stored by the commit in flight); -1 when none */
  int64_t next_seen; /* offset the next message should have; -1 when unknown */
  int64_t owed;      /* next offset committed whose changes wait for publish_committed; -1 when none */
  int64_t published; /* every change below this offset is queued on the changelog producer (the position
                        markers list it); -1 when unknown (not drained yet) */
} assigned_t;

struct rv_ingest {
  rv_ingest_conf_t conf; /* copied, defaults applied */
  char group[RV_NAME_MAX + 16];

  pthread_mutex_t lock; /* guards started/joined (start and stop may race) */
  pthread_t thread;
  int started, joined;
  atomic_int stop;

  _Atomic uint64_t consumed, ingested, changes, dead_lettered, batches, retries, lost, published, drained, markers;

  /* Owned by the consumer thread once started. */
  rd_kafka_t *consumer;
  rv_producer_t *dlq, *changelog;
  /* Two writers (connections): a batch's rows are written on one while the
   * batch before it commits on the other (write_batch_once); at most one is
   * in flight, and outside write_batch_once neither holds an open transaction. */
  rv_pgwriter_t *pg[2];
  int pg_turn;             /* the writer the next batch uses (never the one in flight) */
  rv_outbox_t *outbox;
  rv_quant_t *quant; /* the SQ8 quantizer and the batch codes */
  rv_codec_t *codec;
  rv_registry_t *registry; /* writer schemas by id; NULL without conf.schema_registry */
  rv_decoder_t *decoder;   /* the framings, with registry lookups cached per schema id */
  int registry_backoff;    /* ms to pause after the registry was unreachable; 0 after a decided record */
  rv_ingest_metrics_t metrics;
  int64_t lag_at;          /* when the lag gauges were last set (mono ms) */
  int64_t polled_at;       /* when the changelog's confirmations were last served (mono ms) */
  rv_batch_t batch;        /* being read */
  rv_batch_t flight;       /* sent, its COMMIT in flight (rv_pgwriter_in_flight); empty otherwise */
  int64_t flight_started_us; /* when the write of flight began (mono us) */
  int finish_backoff;      /* ms to pause after a failed in-flight commit; 0 after a good one */
  int data_fails;          /* writes failed in a row with a data error (rv_pg_is_data_error); at
                              RV_INGEST_DATA_RETRIES the batch's refused rows are isolated */
  int careful;             /* a COMMIT in flight failed with a data error: until a batch commits, each
                              batch's COMMIT is waited for, and a failed one is retried in place rather
                              than read again, so its failures count towards RV_INGEST_DATA_RETRIES */
  rv_buf_t scratch;
  assigned_t *assigned;
  size_t n_assigned, cap_assigned;
  /* Per source partition ever read: every offset below next was counted in consumed already (kept
   * across rewinds and revocations, so a record read again counts once). */
  struct counted { int32_t partition; int64_t next; } *counted;
  size_t n_counted, cap_counted;
  int reseek; /* the batch was dropped: rewind the assignment to the stored offsets */
  int drain;  /* publish what the outbox holds for the assigned partitions before anything newer */
  int gave_up; /* stopping, and Kafka stayed away: publish no more, leave it all in the outbox */
  int publish_owed; /* a committed batch's changes wait in the outbox's current publication until the next
                       batch's COMMIT is sent (write_batch_once) */
  int64_t owed_at;         /* wall clock of the COMMIT of the newest batch whose positions are owed (ms) */
  int changelog_parts;     /* partitions of the changelog topic (markers go to each); 0 until known */
  int64_t parts_at;        /* when changelog_parts was last asked for (mono ms) */
  rv_buf_t marker;         /* an encoded position marker */
  int64_t progress_at;
  uint64_t progress_consumed, progress_ingested, progress_dead;
};

void rv_ingest_conf_defaults(rv_ingest_conf_t *conf) {
  if (conf->batch_rows <= 0) conf->batch_rows = 5000;
  if (conf->batch_ms <= 0) conf->batch_ms = 50;
  if (conf->max_metadata_bytes <= 0) conf->max_metadata_bytes = 65536;
  if (conf->session_timeout_ms <= 0) conf->session_timeout_ms = 10000;
  /* A busy broker acknowledges in bursts (the in-process mock paused ingest for up to 380 ms behind 3). */
  if (conf->max_unconfirmed <= 0) conf->max_unconfirmed = 8;
  rv_collection_default_topics(&conf->collection);
}

static PGconn *connect_pg(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size) {
  PGconn *c = PQconnectdb(conf->pg_conninfo);
  if (!c || PQstatus(c) != CONNECTION_OK) {
    const char *m = c ? PQerrorMessage(c) : "out of memory";
    rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "connecting to PostgreSQL: %.*s", (int)strcspn(m, "\n"), m);
    PQfinish(c);
    return NULL;
  }
  rv_pg_quiet_notices(c);
  return c;
}

rv_err_t rv_ingest_migrate(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size) {
  PGconn *c = connect_pg(conf, errstr, errstr_size);
  if (!c) return RV_ERR_UNAVAILABLE;
  rv_pgschema_opts_t opts = {(rv_partman_mode_t)conf->partman, conf->premake};
  rv_err_t err = rv_pgschema_migrate_opts(c, conf->collection.name, rv_wall_ms(), &opts, errstr, errstr_size);
  if (!err) err = rv_outbox_migrate(c, conf->collection.name, errstr, errstr_size);
  PQfinish(c);
  if (!err) rv_info(LOG, "%s: schema ready", conf->collection.name);
  return err;
}

rv_err_t rv_ingest_forget_offsets(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size) {
  PGconn *c = connect_pg(conf, errstr, errstr_size);
  if (!c) return RV_ERR_UNAVAILABLE;
  char group[RV_NAME_MAX + 16];
  snprintf(group, sizeof group, "rv-ingest-%s", conf->collection.name);
  const char *params[2] = {group, conf->collection.source_topic};
  PGresult *r = PQexecParams(c, "DELETE FROM rv_offsets WHERE consumer_group = $1 AND topic = $2", 2, NULL, params,
                             NULL, NULL, 0);
  rv_err_t err = rv_pg_check(c, r, "forgetting stored offsets", errstr, errstr_size);
  if (!err && atoi(PQcmdTuples(r)) > 0)
    rv_info(LOG, "%s: forgot the stored offsets of %s (its log started over)", conf->collection.name,
            conf->collection.source_topic);
  PQclear(r);
  /* Unpublished changes carry versions (source offsets) of the old log: a
   * replica of the new one would take them for newer than its records. */
  long long n = 0;
  if (!err) err = rv_outbox_discard_all(c, conf->collection.name, &n, errstr, errstr_size);
  if (!err && n > 0)
    rv_warn(LOG, "%s: discarded %lld unpublished change(s) of the earlier log from the outbox",
            conf->collection.name, n);
  PQfinish(c);
  return err;
}

/* ---- small helpers ---- */

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Sleeps ms, waking early when stop is requested. */
static void nap(rv_ingest_t *in, int ms) {
  for (int slept = 0; slept < ms && !atomic_load(&in->stop); slept += 50) sleep_ms(ms - slept < 50 ? ms - slept : 50);
}

static int next_backoff(int ms) { return ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2; }

static assigned_t *find_assigned(rv_ingest_t *in, int32_t partition) {
  for (size_t i = 0; i < in->n_assigned; i++)
    if (in->assigned[i].partition == partition) return &in->assigned[i];
  return NULL;
}

/* The writer whose COMMIT is in flight, or NULL. */
static rv_pgwriter_t *flight_pg(rv_ingest_t *in) {
  for (int i = 0; i < 2; i++)
    if (rv_pgwriter_in_flight(in->pg[i])) return in->pg[i];
  return NULL;
}

/* A writer free for statements of its own: not in flight and not inside a
 * batch transaction (connected or not); NULL when there is none (inside
 * write_batch_once, one is in flight and the other in the next batch's
 * transaction). */
static rv_pgwriter_t *free_pg(rv_ingest_t *in) {
  for (int i = 0; i < 2; i++)
    if (rv_pgwriter_idle(in->pg[i])) return in->pg[i];
  for (int i = 0; i < 2; i++) {
    PGconn *c = rv_pgwriter_conn(in->pg[i]);
    if (!rv_pgwriter_in_flight(in->pg[i]) && (!c || PQtransactionStatus(c) == PQTRANS_IDLE ||
                                              PQstatus(c) != CONNECTION_OK))
      return in->pg[i];
  }
  return NULL;
}

static _Noreturn void fatal_nomem(const char *what) {
  /* Nothing was committed, so the records are re-read after a restart. */
  rv_error(LOG, "out of memory (%s); aborting", what);
  abort();
}

static int finish_flight(rv_ingest_t *in);
static int count_data_error(rv_ingest_t *in, const char *e);
static int finish_flight_ex(rv_ingest_t *in, int defer_publish);
static void publish_committed(rv_ingest_t *in);
static void send_marker(rv_ingest_t *in, int64_t committed_at_ms);

/* Connects to PostgreSQL and reads the stored offsets of partitions[0..n),
 * retrying with backoff. Returns 0, or -1 if stop was requested first. */
static int read_offsets(rv_ingest_t *in, const int32_t *partitions, int64_t *next, size_t n) {
  char e[512];
  finish_flight(in);
  rv_pgwriter_t *w = free_pg(in); /* both are, once nothing is in flight */
  for (int backoff = BACKOFF_MIN_MS;; backoff = next_backoff(backoff)) {
    rv_err_t err = rv_pgwriter_connect(w, e, sizeof e);
    if (!err) err = rv_pgwriter_read_offsets(w, partitions, next, n, e, sizeof e);
    if (!err) return 0;
    if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w);
    atomic_fetch_add(&in->retries, 1);
    rv_counter_add(in->metrics.retries_pg, 1);
    rv_warn(LOG, "%s: reading stored offsets: %s (retrying in %d ms)", in->conf.collection.name, e, backoff);
    if (atomic_load(&in->stop)) return -1;
    nap(in, backoff);
  }
}

/* Sets the offset of every element of parts to the stored next offset (or
 * the beginning) and records them as assigned. Returns 0, or -1 on stop. */
static int load_offsets(rv_ingest_t *in, rd_kafka_topic_partition_list_t *parts) {
  int n = parts->cnt;
  int32_t *ids = calloc((size_t)n + 1, sizeof *ids);
  int64_t *next = calloc((size_t)n + 1, sizeof *next);
  if (!ids || !next) fatal_nomem("assignment");
  for (int i = 0; i < n; i++) ids[i] = parts->elems[i].partition;
  int rc = read_offsets(in, ids, next, (size_t)n);
  for (int i = 0; rc == 0 && i < n; i++) {
    /* Nothing stored: offset 0, not the logical BEGINNING, which librdkafka
     * resolves with an offset lookup per partition before fetching it (against
     * the embedded broker, 49 partitions started up to 0.7 s apart, and the
     * first ones ran dry meanwhile). A log that no longer starts at 0 answers
     * out of range, and auto.offset.reset=earliest moves to its start. */
    parts->elems[i].offset = next[i] >= 0 ? next[i] : 0;
    assigned_t *a = find_assigned(in, ids[i]);
    if (!a) {
      if (in->n_assigned == in->cap_assigned) {
        size_t cap = in->cap_assigned ? in->cap_assigned * 2 : 16;
        assigned_t *arr = realloc(in->assigned, cap * sizeof *arr);
        if (!arr) fatal_nomem("assignment");
        in->assigned = arr;
        in->cap_assigned = cap;
      }
      a = &in->assigned[in->n_assigned++];
      a->partition = ids[i];
      a->owed = a->published = -1; /* known once drained */
    }
    a->committed = next[i];
    a->next_seen = next[i];
    rv_info(LOG, "%s: partition %d starts at %s%lld", in->conf.collection.name, (int)ids[i],
            next[i] >= 0 ? "" : "the beginning ", (long long)(next[i] >= 0 ? next[i] : 0));
  }
  free(ids);
  free(next);
  return rc;
}

static void drop_batch_of(rv_ingest_t *in, rv_batch_t *b, const char *why) {
  if (!b->n_messages) return;
  rv_warn(LOG, "%s: dropping uncommitted batch of %llu message(s) (%s); they will be read again",
          in->conf.collection.name, (unsigned long long)b->n_messages, why);
  rv_batch_clear(b);
  rv_ingest_metrics_dropped(&in->metrics);
  in->reseek = 1;
}

static void drop_batch(rv_ingest_t *in, const char *why) { drop_batch_of(in, &in->batch, why); }

static int await_published(rv_ingest_t *in, size_t keep);

/* ---- rebalancing (runs inside rd_kafka_consumer_poll/close, in the ingest thread) ---- */

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
  rv_ingest_t *in = opaque;
  int cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
  rd_kafka_error_t *kerr = NULL;
  finish_flight(in); /* the batch sent before: committed (and published) or dropped, before anything moves */
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (load_offsets(in, parts) != 0) {
      rv_warn(LOG, "%s: stopping before the assignment could be taken", in->conf.collection.name);
      if (!cooperative) rd_kafka_assign(rk, NULL);
      return;
    }
    if (cooperative) kerr = rd_kafka_incremental_assign(rk, parts);
    else rd_kafka_assign(rk, parts);
    in->drain = 1; /* a previous owner may have died between a COMMIT and its publication */
  } else {
    /* The batch's offsets were not committed; the next owner re-reads it. */
    drop_batch(in, err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS ? "partitions revoked" : "partitions lost");
    /* Committed changes still in flight go out before the next owner's (or
     * stay in the outbox for its drain, when stopping with Kafka away). */
    await_published(in, 0);
    for (int i = 0; i < parts->cnt; i++) {
      assigned_t *a = find_assigned(in, parts->elems[i].partition);
      if (a) *a = in->assigned[--in->n_assigned];
    }
    if (cooperative) kerr = rd_kafka_incremental_unassign(rk, parts);
    else rd_kafka_assign(rk, NULL);
    rv_info(LOG, "%s: %d partition(s) revoked", in->conf.collection.name, parts->cnt);
  }
  if (kerr) {
    rv_error(LOG, "%s: rebalance: %s", in->conf.collection.name, rd_kafka_error_string(kerr));
    rd_kafka_error_destroy(kerr);
  }
}

/* After a dropped batch: seek every assigned partition back to its stored offset. */
static void rewind_assignment(rv_ingest_t *in) {
  finish_flight(in); /* its outcome decides the stored offsets */
  in->reseek = 0;
  if (!in->n_assigned) return;
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new((int)in->n_assigned);
  for (size_t i = 0; i < in->n_assigned; i++)
    rd_kafka_topic_partition_list_add(parts, in->conf.collection.source_topic, in->assigned[i].partition);
  if (load_offsets(in, parts) == 0) {
    rd_kafka_error_t *kerr = rd_kafka_seek_partitions(in->consumer, parts, 5000);
    if (kerr) {
      rv_error(LOG, "%s: seek: %s", in->conf.collection.name, rd_kafka_error_string(kerr));
      rd_kafka_error_destroy(kerr);
      in->reseek = 1;
    }
  }
  rd_kafka_topic_partition_list_destroy(parts);
}

/* ---- reading ---- */

static char *header_string(rd_kafka_message_t *m, const char *name) {
  rd_kafka_headers_t *h = NULL;
  const void *v;
  size_t len;
  if (rd_kafka_message_headers(m, &h) || !h || rd_kafka_header_get_last(h, name, &v, &len) || !v || len > 256)
    return NULL;
  char *s = malloc(len + 1);
  if (!s) fatal_nomem("header");
  memcpy(s, v, len);
  s[len] = 0;
  return s;
}

/* Offsets that vanished between the last one read (or stored) and this
 * message were deleted from the log before ingest read them: retention (the
 * embedded mock broker keeps 5 MiB per partition) or an operator. They cannot
 * be recovered here, so they are counted and reported loudly. A gap of one
 * is a transaction marker of a transactional producer, not a loss. */
static void check_gap(rv_ingest_t *in, assigned_t *a, const rd_kafka_message_t *m) {
  if (a->next_seen >= 0 && m->offset > a->next_seen + 1) {
    atomic_fetch_add(&in->lost, (uint64_t)(m->offset - a->next_seen));
    rv_error(LOG, "%s: %s [%d]: offsets %lld..%lld were deleted from the log before ingest read them; "
             "continuing at %lld (%lld record(s) lost upstream)",
             in->conf.collection.name, in->conf.collection.source_topic, (int)m->partition,
             (long long)a->next_seen, (long long)m->offset - 1, (long long)m->offset,
             (long long)(m->offset - a->next_seen));
  }
  a->next_seen = m->offset + 1;
}

static void write_batch(rv_ingest_t *in);

/* The counted-below mark of m's partition (made at -1 if new). */
static int64_t *counted_mark(rv_ingest_t *in, int32_t partition) {
  for (size_t i = 0; i < in->n_counted; i++)
    if (in->counted[i].partition == partition) return &in->counted[i].next;
  if (in->n_counted == in->cap_counted) {
    size_t cap = in->cap_counted ? in->cap_counted * 2 : 16;
    struct counted *c = realloc(in->counted, cap * sizeof *c);
    if (!c) fatal_nomem("consumed marks");
    in->counted = c;
    in->cap_counted = cap;
  }
  in->counted[in->n_counted] = (struct counted){partition, -1};
  return &in->counted[in->n_counted++].next;
}

/* Counts m in consumed unless an earlier read of it (before a rewind after a
 * failed commit, a fence or a revocation) was counted. Returns 1 when m
 * counted now. */
static int count_consumed(rv_ingest_t *in, const rd_kafka_message_t *m) {
  int64_t *next = counted_mark(in, m->partition);
  if (m->offset < *next) return 0;
  *next = m->offset + 1;
  atomic_fetch_add(&in->consumed, 1);
  return 1;
}

/* The writer schema of m could not be fetched (the schema registry is
 * unreachable): m is neither ingested nor dead-lettered. The batch so far is
 * written and the assignment rewound to the stored offsets, so m is read
 * again after a pause that grows while the registry stays away. */
static void retry_later(rv_ingest_t *in, rd_kafka_message_t *m, int counted, const char *why) {
  if (counted) { /* counted when it is read again */
    atomic_fetch_sub(&in->consumed, 1);
    *counted_mark(in, m->partition) = m->offset;
  }
  atomic_fetch_add(&in->retries, 1);
  rv_counter_add(in->metrics.retries_registry, 1);
  in->registry_backoff = in->registry_backoff ? next_backoff(in->registry_backoff) : BACKOFF_MIN_MS;
  rv_warn(LOG, "%s: %s [%d] @%lld: %s (pausing %d ms; the record is read again, not dead-lettered)",
          in->conf.collection.name, in->conf.collection.source_topic, (int)m->partition, (long long)m->offset, why,
          in->registry_backoff);
  if (rv_quant_batch_ready(in->quant, in->pg[in->pg_turn], &in->batch)) write_batch(in);
  else drop_batch(in, "the schema registry is unreachable");
  in->reseek = 1;
  nap(in, in->registry_backoff);
}

/* Returns 1 when the batch keeps m (its source of an accepted record), 0 when the caller destroys it. */
static int on_message(rv_ingest_t *in, rd_kafka_message_t *m) {
  int counted = count_consumed(in, m);
  assigned_t *a = find_assigned(in, m->partition);
  if (a) check_gap(in, a, m);
  int64_t expected = a ? a->committed : -1;
  int64_t now = rv_wall_ms();
  rv_validate_rules_t rules = {in->conf.collection.dim, in->conf.max_metadata_bytes, now};
  rv_vector_record_t rec;
  char why[512];
  rv_reject_t rj = RV_REJECT_NONE;
  if (rv_decoder_decode(in->decoder, m->key, m->key_len, m->payload, m->len, &rec, &rj, why, sizeof why)) {
    retry_later(in, m, counted, why);
    return 0;
  }
  in->registry_backoff = 0;
  if (counted) rv_counter_add(in->metrics.consumed, 1);
  if (!rj) rj = rv_validate_record(&rec, &rules, why, sizeof why);
  if (!rj) rj = rv_validate_key(&rec, m->key, m->key_len, why, sizeof why);
  char e[256];
  if (rj) {
    rv_vector_record_close(&rec);
    rv_debug(LOG, "%s: %s [%d] @%lld rejected: %s: %s", in->conf.collection.name, in->conf.collection.source_topic,
             (int)m->partition, (long long)m->offset, rv_reject_code(rj), why);
    if (rv_dlq_send(in->dlq, in->conf.collection.dlq_topic, m, rj, why, e, sizeof e)) fatal_nomem("dlq");
    in->batch.n_rejected++;
    rv_ingest_metrics_rejected(&in->metrics, rj);
  } else {
    /* A new id is pinned to the month of its event time, else of the broker timestamp. */
    int64_t pin = rec.has_event_time ? rec.event_time_ms : rd_kafka_message_timestamp(m, NULL);
    if (pin < RV_EVENT_TIME_MIN_MS || pin > now + RV_EVENT_TIME_MAX_AHEAD_MS) pin = now;
    if (rv_batch_consumed(&in->batch, m->partition, m->offset, expected)) fatal_nomem("batch");
    if (rv_batch_add_src(&in->batch, &rec, m->partition, m->offset, pin, header_string(m, "traceparent"), m))
      fatal_nomem("batch");
    return 1;
  }
  if (rv_batch_consumed(&in->batch, m->partition, m->offset, expected)) fatal_nomem("batch");
  return 0;
}

/* ---- writing a batch ---- */

static void commit_kafka_offsets(rv_ingest_t *in, const rv_batch_t *b) {
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new((int)b->n_pos);
  for (size_t i = 0; i < b->n_pos; i++)
    rd_kafka_topic_partition_list_add(parts, in->conf.collection.source_topic, b->pos[i].partition)->offset =
        b->pos[i].next_offset;
  rd_kafka_commit(in->consumer, parts, 1); /* async; PostgreSQL holds the truth */
  rd_kafka_topic_partition_list_destroy(parts);
}

/* Deletes from the outbox the rows of every sent publication Kafka has
 * confirmed so far, and counts their records as published. */
static void forget_confirmed(rv_ingest_t *in) {
  char e[1024];
  size_t n = rv_outbox_unconfirmed(in->outbox);
  if (!n || rv_outbox_mark(in->outbox, 0) > rv_producer_confirmed(in->changelog)) return;
  /* A failed delete is retried before the next drain; until then a drain would publish them once more.
   * When no writer is free (one in flight, the other in a batch transaction) the delete waits for the
   * next confirmation. */
  rv_pgwriter_t *w = free_pg(in);
  int busy = !w;
  PGconn *c = busy || rv_pgwriter_connect(w, e, sizeof e) ? NULL : rv_pgwriter_conn(w);
  size_t n_recs = 0;
  rv_err_t err = rv_outbox_confirmed(in->outbox, rv_producer_confirmed(in->changelog), c, &n_recs, e, sizeof e);
  atomic_fetch_add(&in->published, n_recs);
  if (err && !(busy && err == RV_ERR_UNAVAILABLE)) {
    if (err == RV_ERR_UNAVAILABLE && w) rv_pgwriter_disconnect(w);
    rv_warn(LOG, "%s: deleting published changes from the outbox: %s (retried later)", in->conf.collection.name, e);
  }
}

/* Serves the changelog's delivery reports without waiting (re-sending
 * failed messages) and forgets what is confirmed. */
static void poll_published(rv_ingest_t *in) {
  if (!rv_outbox_unconfirmed(in->outbox)) return;
  char e[1024];
  rv_producer_confirm_to(in->changelog, rv_outbox_mark(in->outbox, rv_outbox_unconfirmed(in->outbox) - 1), 0, e,
                         sizeof e);
  forget_confirmed(in);
}

/* Waits until at most keep sent publications are unconfirmed, retrying
 * with backoff while Kafka is away: this is where ingest pauses when the
 * changelog cannot be published. Returns 0, or -1 when stop was requested
 * and Kafka stayed away for STOP_GRACE_MS: the unconfirmed records then
 * stay in the outbox for the next owner's drain. */
static int await_published(rv_ingest_t *in, size_t keep) {
  char e[1024];
  int64_t stop_seen = 0;
  for (int backoff = BACKOFF_MIN_MS; rv_outbox_unconfirmed(in->outbox) > keep;) {
    size_t n = rv_outbox_unconfirmed(in->outbox);
    rv_err_t err = rv_producer_confirm_to(in->changelog, rv_outbox_mark(in->outbox, n - keep - 1),
                                          CONFIRM_TIMEOUT_MS, e, sizeof e);
    forget_confirmed(in);
    if (!err) {
      backoff = BACKOFF_MIN_MS;
      continue;
    }
    atomic_fetch_add(&in->retries, 1);
    rv_counter_add(in->metrics.retries_kafka, 1);
    rv_warn(LOG, "%s: publishing %zu batch(es) of committed changes: %s: %s (retrying in %d ms)",
            in->conf.collection.name, rv_outbox_unconfirmed(in->outbox), rv_err_str(err), e, backoff);
    if (atomic_load(&in->stop)) {
      if (!stop_seen) stop_seen = rv_mono_ms();
      if (rv_mono_ms() - stop_seen > STOP_GRACE_MS) {
        rv_warn(LOG, "%s: stopping with %zu batch(es) of committed changes unpublished; they stay in the outbox",
                in->conf.collection.name, rv_outbox_unconfirmed(in->outbox));
        rv_outbox_forget_sent(in->outbox);
        rv_outbox_clear(in->outbox);
        in->gave_up = 1;
        return -1;
      }
      sleep_ms(backoff < 500 ? backoff : 500);
    } else {
      nap(in, backoff);
    }
    backoff = next_backoff(backoff);
  }
  return 0;
}

/* Sends the outbox's current publication without waiting for Kafka: its
 * confirmation arrives while the next batch is read and written, and only
 * the delete of its outbox rows waits for it. At most conf.max_unconfirmed
 * publications stay unconfirmed (await_published). Returns 0, or -1 as
 * await_published. */
static int publish(rv_ingest_t *in) {
  if (in->gave_up) { /* one grace period per stop, not one per publication */
    rv_outbox_clear(in->outbox);
    return -1;
  }
  char e[1024];
  if (rv_outbox_count(in->outbox) &&
      rv_outbox_send(in->outbox, in->changelog, in->conf.collection.changelog_topic, e, sizeof e))
    fatal_nomem("changelog");
  poll_published(in);
  return await_published(in, (size_t)in->conf.max_unconfirmed);
}

static int cmp_position(const void *a, const void *b) {
  const rv_source_position_t *x = a, *y = b;
  return (x->partition > y->partition) - (x->partition < y->partition);
}

/* Queues one position marker (rv_record.h) to every partition of the
 * changelog, after everything queued so far on the same producer: it lists
 * the published position of every assigned source partition that has one.
 * Not in the outbox: a marker lost with a crash is superseded by the next
 * one. The partition count is asked for now and then (partitions added to
 * the changelog get markers too); without it, no marker is sent. */
static void send_marker(rv_ingest_t *in, int64_t committed_at_ms) {
  if (in->gave_up) return;
  char e[512];
  int64_t now = rv_mono_ms();
  if (in->changelog_parts <= 0 || now - in->parts_at >= MARKER_PARTS_REFRESH_MS) {
    in->parts_at = now;
    int n = rv_producer_partition_count(in->changelog, in->conf.collection.changelog_topic, 2000, e, sizeof e);
    if (n > 0) in->changelog_parts = n;
    else if (in->changelog_parts <= 0)
      rv_warn(LOG, "%s: no position markers until the changelog's partitions are known: %s",
              in->conf.collection.name, e);
  }
  if (in->changelog_parts <= 0) return;
  rv_source_position_t *pos = calloc(in->n_assigned + 1, sizeof *pos);
  if (!pos) fatal_nomem("marker");
  rv_marker_t m = {pos, 0, committed_at_ms};
  for (size_t i = 0; i < in->n_assigned; i++)
    if (in->assigned[i].published >= 0) pos[m.n++] = (rv_source_position_t){in->assigned[i].partition,
                                                                           in->assigned[i].published};
  qsort(pos, (size_t)m.n, sizeof *pos, cmp_position);
  in->marker.len = 0;
  rv_err_t err = m.n ? rv_codec_encode_marker(in->codec, &m, &in->marker, e, sizeof e) : RV_OK;
  free(pos);
  if (!m.n) return;
  if (err) {
    rv_warn(LOG, "%s: encoding a position marker: %s", in->conf.collection.name, e);
    return;
  }
  const rv_header_t kind = {RV_KIND_HEADER, RV_KIND_POSITION, sizeof RV_KIND_POSITION - 1};
  for (int p = 0; p < in->changelog_parts; p++)
    if (rv_producer_send_to(in->changelog, in->conf.collection.changelog_topic, p, RV_MARKER_KEY,
                            sizeof RV_MARKER_KEY - 1, in->marker.base, in->marker.len, &kind, 1, e, sizeof e))
      fatal_nomem("marker");
  atomic_fetch_add(&in->markers, 1);
}

/* Publishes what the outbox holds for the assigned partitions (left by a
 * consumer that died between a COMMIT and its publication, possibly this
 * one in an earlier life). Retries PostgreSQL with backoff; leaves
 * in->drain set if stop was requested before it could finish. */
static void drain_outbox(rv_ingest_t *in) {
  char e[1024];
  finish_flight(in); /* the batch in flight is older than anything read after it */
  /* Our own publications in flight first: their rows would be loaded again. */
  if (await_published(in, 0)) return;
  int32_t *parts = calloc(in->n_assigned + 1, sizeof *parts);
  if (!parts) fatal_nomem("drain");
  for (size_t i = 0; i < in->n_assigned; i++) parts[i] = in->assigned[i].partition;
  rv_pgwriter_t *w = free_pg(in); /* nothing is in flight */
  for (int backoff = BACKOFF_MIN_MS;; backoff = next_backoff(backoff)) {
    /* Deletes owed by earlier publications first, so nothing already confirmed is published again. */
    rv_err_t err = rv_pgwriter_connect(w, e, sizeof e);
    if (!err) err = rv_outbox_forget(in->outbox, rv_pgwriter_conn(w), e, sizeof e);
    if (!err) err = rv_outbox_load(in->outbox, rv_pgwriter_conn(w), in->codec, parts, in->n_assigned, e, sizeof e);
    if (!err) break;
    if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w);
    atomic_fetch_add(&in->retries, 1);
    rv_counter_add(in->metrics.retries_pg, 1);
    rv_warn(LOG, "%s: reading the outbox: %s (retrying in %d ms)", in->conf.collection.name, e, backoff);
    if (atomic_load(&in->stop)) {
      free(parts);
      return;
    }
    nap(in, backoff);
  }
  free(parts);
  in->drain = 0;
  size_t n = rv_outbox_count(in->outbox);
  if (n) {
    rv_info(LOG, "%s: publishing %zu committed change(s) left in the outbox", in->conf.collection.name, n);
    if (publish(in) || await_published(in, 0)) {
      in->drain = 1;
      return;
    }
    atomic_fetch_add(&in->drained, n);
  }
  /* Every change below the stored offsets is in the changelog or queued now (nothing is in flight): the
   * positions are known without new traffic. */
  for (size_t i = 0; i < in->n_assigned; i++) {
    assigned_t *a = &in->assigned[i];
    if (a->committed > a->published) a->published = a->committed;
    a->owed = -1;
  }
  send_marker(in, rv_wall_ms());
}

/* write_batch_once's result when the batch before this one failed to commit:
 * both were dropped (finish_flight), nothing is left to write. */
#define DROPPED 1

/* One attempt, on the writer whose turn it is. If the batch before is still
 * in flight on the other writer, this batch's rows are written (its
 * transaction open, not fenced yet) while PostgreSQL commits that one; then
 * its outcome is read (finish_flight: bookkeeping and changelog), and only
 * then are this batch's offsets fenced and stored, so a fence always sees
 * the batch before it committed or failed. Returns RV_OK when the batch's
 * COMMIT is sent (in flight: finish_flight reads its outcome) or the batch is
 * known to have been committed, DROPPED as above, RV_ERR_STATE when it was
 * fenced off, another error to retry. On RV_OK the outbox's current
 * publication holds the batch's changes (empty when an earlier attempt's
 * COMMIT is the one that went through: in->drain is set then, and the drain
 * publishes them from the table). */
static rv_err_t write_batch_once(rv_ingest_t *in, char *e, size_t es) {
  rv_batch_t *b = &in->batch;
  rv_pgwriter_t *w = in->pg[in->pg_turn];
  rv_err_t err = rv_producer_confirm(in->dlq, CONFIRM_TIMEOUT_MS, e, es);
  if (err) return err;
  rv_pgw_outcome_t outcome = RV_PGW_APPLIED;
  if ((err = rv_pgwriter_connect(w, e, es)) || (err = rv_pgwriter_prepare_partitions(w, b, e, es)) ||
      (err = rv_quant_encode_batch(in->quant, w, b, e, es)) || (err = rv_pgwriter_apply_rows(w, b, e, es)))
    goto pg_failed;
  /* Its changes are published once this batch's COMMIT is on its way, when
   * staging this batch leaves them alone (ranges mode). */
  if (flight_pg(in) && finish_flight_ex(in, rv_outbox_stage_keeps_current(in->outbox))) {
    rv_pgwriter_rollback(w); /* dropped this batch too */
    return DROPPED;
  }
  err = rv_pgwriter_apply_offsets(w, b, &outcome, e, es);
  if (!err && outcome == RV_PGW_ALREADY) {
    if (in->publish_owed) publish_committed(in);
    rv_info(LOG, "%s: batch found committed by an earlier attempt; its changes are in the outbox",
            in->conf.collection.name);
    rv_outbox_clear(in->outbox);
    in->drain = 1;
    return RV_OK;
  }
  if (!err) err = rv_outbox_stage_rows(in->outbox, rv_pgwriter_conn(w), in->codec, b, e, es);
  if (!err) err = rv_pgwriter_send_commit(w, e, es);
  if (in->publish_owed) publish_committed(in); /* the batch before, whatever became of this one */
  if (err) {
    rv_outbox_clear(in->outbox);
    goto pg_failed;
  }
  in->pg_turn ^= 1; /* the next batch's rows go to the other writer while this one commits */
  /* While PostgreSQL takes the COPY: the changes to publish once it commits. */
  if (rv_outbox_encode(in->outbox, in->codec, b, e, es)) {
    rv_warn(LOG, "%s: encoding the batch's changes: %s (the drain publishes them from the table)",
            in->conf.collection.name, e);
    in->drain = 1;
  }
  return RV_OK;
pg_failed:
  if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w); /* reconnect on the next attempt */
  else rv_pgwriter_rollback(w);
  return err;
}

/* The changes of the batch committed last go out now (strictly after its
 * COMMIT). An unfinished drain means older changes are still in the outbox:
 * these wait there too, so they go out in order. */
static void publish_committed(rv_ingest_t *in) {
  in->publish_owed = 0;
  if (in->drain) {
    rv_outbox_clear(in->outbox); /* the drain publishes them, and the marker after them */
    return;
  }
  if (publish(in)) return; /* stopping with Kafka away: everything stays in the outbox */
  for (size_t i = 0; i < in->n_assigned; i++) {
    assigned_t *a = &in->assigned[i];
    if (a->owed > a->published) a->published = a->owed;
    a->owed = -1;
  }
  send_marker(in, in->owed_at);
}

/* Bookkeeping once b's COMMIT is confirmed: counters, the informational
 * Kafka commit, then b's changelog, unless defer_publish leaves that to the
 * caller (publish_committed). Clears b. */
static void batch_committed(rv_ingest_t *in, rv_batch_t *b, int64_t started_us, int defer_publish) {
  in->owed_at = rv_wall_ms(); /* the COMMIT's outcome just arrived */
  in->data_fails = 0;
  in->careful = 0;
  for (size_t i = 0; i < b->n_pos; i++) {
    assigned_t *a = find_assigned(in, b->pos[i].partition);
    if (a && b->pos[i].next_offset > a->owed) a->owed = b->pos[i].next_offset;
  }
  atomic_fetch_add(&in->ingested, b->n_accepted);
  atomic_fetch_add(&in->changes, b->n_rows);
  atomic_fetch_add(&in->dead_lettered, b->n_rejected);
  rv_ingest_metrics_committed(&in->metrics, b->n_accepted, (double)(rv_mono_us() - started_us) / 1e6);
  atomic_fetch_add(&in->batches, 1);
  commit_kafka_offsets(in, b);
  rv_batch_clear(b);
  if (defer_publish) in->publish_owed = 1;
  else publish_committed(in);
}

/* Reads the outcome of the batch whose COMMIT is in flight, if any, waiting
 * for it. Committed: its bookkeeping and changelog follow. Failed or
 * connection lost (fencing was checked before it was sent): as a failed write, the batch is read again from the
 * stored offsets, and so is the batch being read after it (its expected
 * offsets assumed this one's), after a pause that grows while PostgreSQL
 * keeps failing; a drain follows, in case a COMMIT whose reply was lost went
 * through. Returns 0 when committed or nothing was in flight, -1 otherwise. */
static int finish_flight(rv_ingest_t *in) { return finish_flight_ex(in, 0); }

/* finish_flight; with defer_publish, a committed batch's changes are left
 * for publish_committed. */
static int finish_flight_ex(rv_ingest_t *in, int defer_publish) {
  rv_pgwriter_t *w = flight_pg(in);
  if (!w) return 0;
  char e[1024];
  rv_err_t err = rv_pgwriter_finish(w, e, sizeof e);
  if (!err) {
    in->finish_backoff = 0;
    batch_committed(in, &in->flight, in->flight_started_us, defer_publish);
    return 0;
  }
  if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w);
  else rv_pgwriter_rollback(w);
  rv_outbox_clear(in->outbox);
  in->drain = 1;
  if (count_data_error(in, e)) in->careful = 1; /* the batch read again is retried in place */
  atomic_fetch_add(&in->retries, 1);
  rv_counter_add(in->metrics.retries_pg, 1);
  in->finish_backoff = in->finish_backoff ? next_backoff(in->finish_backoff) : BACKOFF_MIN_MS;
  rv_warn(LOG, "%s: committing batch of %llu message(s): %s: %s (reading it again in %d ms)",
          in->conf.collection.name, (unsigned long long)in->flight.n_messages, rv_err_str(err), e,
          in->finish_backoff);
  drop_batch_of(in, &in->flight, "its commit failed");
  drop_batch(in, "the batch before it failed to commit");
  nap(in, in->finish_backoff);
  return -1;
}

/* Counts a failed write whose error (errstr of rv_pg_check) is a data error.
 * Returns 1 when it was one. */
static int count_data_error(rv_ingest_t *in, const char *e) {
  char state[6];
  rv_pg_errstr_split(e, state, NULL, 0);
  if (!rv_pg_is_data_error(state)) return 0;
  in->data_fails++;
  return 1;
}

/* In careful mode: waits for the COMMIT write_batch_once just sent for
 * in->batch. On failure the transaction is gone and the batch stays in
 * in->batch, to be written again in place (a lost connection's unknown
 * outcome shows then: apply finds the offsets stored, RV_PGW_ALREADY). */
static rv_err_t settle(rv_ingest_t *in, char *e, size_t es) {
  rv_pgwriter_t *w = flight_pg(in);
  rv_err_t err = rv_pgwriter_finish(w, e, es);
  if (!err) return RV_OK;
  if (err == RV_ERR_UNAVAILABLE) {
    rv_pgwriter_disconnect(w);
    in->drain = 1; /* in case the COMMIT went through */
  } else {
    rv_pgwriter_rollback(w);
  }
  rv_outbox_clear(in->outbox);
  return err;
}

typedef struct refused {
  size_t row;
  char sqlstate[6];
  char *message;
} refused_t;

typedef struct refusals {
  refused_t *v;
  size_t n, cap;
} refusals_t;

static void on_refused(void *arg, size_t row, const char *sqlstate, const char *message) {
  refusals_t *r = arg;
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 8;
    refused_t *v = realloc(r->v, cap * sizeof *v);
    if (!v) fatal_nomem("refused rows");
    r->v = v;
    r->cap = cap;
  }
  refused_t *f = &r->v[r->n++];
  f->row = row;
  snprintf(f->sqlstate, sizeof f->sqlstate, "%s", sqlstate);
  if (!(f->message = strdup(message))) fatal_nomem("refused rows");
}

typedef struct dead_letter {
  rv_ingest_t *in;
  const refused_t *why;
  char text[600];
} dead_letter_t;

static void send_refused(void *src, void *arg) {
  dead_letter_t *d = arg;
  rv_ingest_t *in = d->in;
  rd_kafka_message_t *m = src;
  char e[256];
  const rv_header_t state = {"rv.error.sqlstate", d->why->sqlstate, strlen(d->why->sqlstate)};
  if (rv_dlq_send_ex(in->dlq, in->conf.collection.dlq_topic, m, RV_REJECT_DB, d->text, &state, 1, e, sizeof e))
    fatal_nomem("dlq");
  rv_ingest_metrics_rejected(&in->metrics, RV_REJECT_DB);
}

/* After RV_INGEST_DATA_RETRIES writes of the batch failed with a data error:
 * finds the rows PostgreSQL refuses (rv_pgwriter_isolate, on one writer,
 * with nothing in flight), queues every record they stand for to the DLQ
 * (rejected_by_database, the SQLSTATE and the server's message) and drops
 * them from the batch, whose other rows and offsets write_batch_once then
 * commits as usual, in one transaction. Returns RV_OK (also when no single
 * row is refused: the batch is then retried as it is, and searched again
 * after as many failures), DROPPED when the batch in flight failed to
 * commit, or the error that stopped the search. */
static rv_err_t isolate_refused(rv_ingest_t *in, char *e, size_t es) {
  if (flight_pg(in) && finish_flight(in)) return DROPPED;
  rv_batch_t *b = &in->batch;
  rv_pgwriter_t *w = in->pg[in->pg_turn]; /* nothing is in flight: both are free */
  refusals_t r = {0};
  rv_err_t err;
  if ((err = rv_pgwriter_connect(w, e, es)) || (err = rv_pgwriter_prepare_partitions(w, b, e, es)) ||
      (err = rv_quant_encode_batch(in->quant, w, b, e, es)) ||
      (err = rv_pgwriter_isolate(w, b, on_refused, &r, &r.n, e, es))) {
    if (err == RV_ERR_UNAVAILABLE) rv_pgwriter_disconnect(w);
    goto out;
  }
  in->data_fails = 0; /* searched: RV_INGEST_DATA_RETRIES more failures before the next search */
  if (!r.n) {
    rv_warn(LOG, "%s: the batch of %llu message(s) keeps failing with a data error, but no single record of it "
            "is refused on its own; retrying it as it is", in->conf.collection.name,
            (unsigned long long)b->n_messages);
    goto out;
  }
  uint8_t *drop = calloc(b->n_rows ? b->n_rows : 1, 1);
  if (!drop) fatal_nomem("refused rows");
  size_t n_records = 0;
  for (size_t i = 0; i < r.n; i++) {
    const refused_t *f = &r.v[i];
    const rv_batch_row_t *row = &b->rows[f->row];
    dead_letter_t d = {in, f, {0}};
    snprintf(d.text, sizeof d.text, "SQLSTATE %s: %s", f->sqlstate, f->message);
    size_t n = rv_batch_row_sources(b, f->row, send_refused, &d);
    n_records += n;
    rv_warn(LOG, "%s: PostgreSQL refuses id '%.64s' (%s [%d] @%lld, %zu record(s)): %s; dead-lettered as %s",
            in->conf.collection.name, row->rec.id, in->conf.collection.source_topic, (int)row->partition,
            (long long)row->offset, n, d.text, rv_reject_code(RV_REJECT_DB));
    drop[f->row] = 1;
  }
  if (rv_batch_drop_rows(b, drop)) fatal_nomem("refused rows");
  free(drop);
  rv_info(LOG, "%s: %zu row(s) (%zu record(s)) of the batch dead-lettered as %s; writing the other %zu",
          in->conf.collection.name, r.n, n_records, rv_reject_code(RV_REJECT_DB), b->n_rows);
out:
  for (size_t i = 0; i < r.n; i++) free(r.v[i].message);
  free(r.v);
  return err;
}

static void write_batch(rv_ingest_t *in) {
  rv_batch_t *b = &in->batch;
  if (!b->n_messages) return;
  if (flight_pg(in) && rv_quant_loaded(in->quant)) {
    /* While PostgreSQL still writes the batch before it: the codes (a failure
     * here shows again in write_batch_once, which handles it). */
    char e[256];
    (void)rv_quant_encode_batch(in->quant, in->pg[in->pg_turn], b, e, sizeof e);
  }
  if (in->drain) { /* older changes of these partitions go out first */
    if (finish_flight(in)) return; /* dropped with the batch before it */
    drain_outbox(in);
  }
  char e[1024];
  int64_t stop_seen = 0, started_us = rv_mono_us();
  for (int backoff = BACKOFF_MIN_MS;; backoff = next_backoff(backoff)) {
    rv_err_t err = in->data_fails >= RV_INGEST_DATA_RETRIES ? isolate_refused(in, e, sizeof e) : RV_OK;
    if (!err) err = write_batch_once(in, e, sizeof e);
    if (!err && in->careful && flight_pg(in)) err = settle(in, e, sizeof e);
    if (!err) break;
    if (err == DROPPED) return;
    count_data_error(in, e);
    if (err == RV_ERR_STATE) {
      rv_warn(LOG, "%s: batch fenced off: %s", in->conf.collection.name, e);
      drop_batch(in, "fenced");
      return;
    }
    atomic_fetch_add(&in->retries, 1);
    /* Dead letters unconfirmed: the DLQ failed (they go first); otherwise PostgreSQL did. */
    rv_counter_add(rv_producer_pending(in->dlq) ? in->metrics.retries_kafka : in->metrics.retries_pg, 1);
    rv_warn(LOG, "%s: writing batch of %llu message(s): %s: %s (retrying in %d ms)", in->conf.collection.name,
            (unsigned long long)b->n_messages, rv_err_str(err), e, backoff);
    if (atomic_load(&in->stop)) {
      if (!stop_seen) stop_seen = rv_mono_ms();
      if (rv_mono_ms() - stop_seen > STOP_GRACE_MS) {
        drop_batch(in, "stopping while the batch cannot be written");
        return;
      }
      sleep_ms(backoff < 500 ? backoff : 500); /* nap would not wait any more */
    } else {
      nap(in, backoff);
    }
  }
  /* The next batch's fence expects these (a failed commit rewinds them to what is stored). */
  for (size_t i = 0; i < b->n_pos; i++) {
    assigned_t *a = find_assigned(in, b->pos[i].partition);
    if (a) a->committed = b->pos[i].next_offset;
  }
  if (!flight_pg(in)) { /* found committed by an earlier attempt */
    batch_committed(in, b, started_us, 0);
    return;
  }
  /* In flight: PostgreSQL writes it while the next batch is read. */
  rv_batch_t t = in->flight;
  in->flight = *b;
  *b = t;
  in->flight_started_us = started_us;
}

static void log_progress(rv_ingest_t *in, int64_t now) {
  double secs = (double)(now - in->progress_at) / 1000.0;
  if (secs < 0.001) secs = 0.001;
  uint64_t c = atomic_load(&in->consumed), i = atomic_load(&in->ingested), d = atomic_load(&in->dead_lettered);
  if (c != in->progress_consumed || i != in->progress_ingested || d != in->progress_dead)
    rv_info(LOG, "%s: consumed %llu (%.0f/s) ingested %llu (%.0f/s) dlq %llu (%.0f/s) batches %llu retries %llu",
            in->conf.collection.name, (unsigned long long)c, (double)(c - in->progress_consumed) / secs,
            (unsigned long long)i, (double)(i - in->progress_ingested) / secs, (unsigned long long)d,
            (double)(d - in->progress_dead) / secs, (unsigned long long)atomic_load(&in->batches),
            (unsigned long long)atomic_load(&in->retries));
  in->progress_at = now;
  in->progress_consumed = c;
  in->progress_ingested = i;
  in->progress_dead = d;
}

/* Sets the lag gauge of every assigned partition: the high watermark
 * librdkafka last saw (no broker round trip) minus the committed offset. */
static void update_lag(rv_ingest_t *in, int64_t now) {
  in->lag_at = now;
  for (size_t i = 0; in->metrics.reg && i < in->n_assigned; i++) {
    int64_t lo = -1, hi = -1;
    if (rd_kafka_get_watermark_offsets(in->consumer, in->conf.collection.source_topic, in->assigned[i].partition, &lo,
                                       &hi) ||
        hi < 0)
      continue;
    int64_t at = in->assigned[i].committed >= 0 ? in->assigned[i].committed : lo;
    rv_ingest_metrics_lag(&in->metrics, in->assigned[i].partition, at >= 0 ? hi - at : hi);
  }
}

static void *run(void *arg) {
  rv_ingest_t *in = arg;
  in->progress_at = rv_mono_ms();
  while (!atomic_load(&in->stop)) {
    int64_t now = rv_mono_ms();
    int timeout = 100;
    if (in->batch.n_messages) {
      /* A batch closes as soon as nothing more is waiting (below): poll without waiting. */
      timeout = 0;
      if (rv_quant_holding(in->quant)) timeout = 20; /* waiting for vectors to train on */
    }
    rv_pgwriter_t *fw = flight_pg(in);
    if (fw && timeout > 5) timeout = 5; /* notice its end soon */
    rd_kafka_message_t *m = rd_kafka_consumer_poll(in->consumer, timeout);
    int dry = !m; /* nothing was waiting */
    if (m) {
      int kept = 0; /* by the batch, for a dead letter should PostgreSQL refuse the record */
      if (!m->err) kept = on_message(in, m);
      else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        rv_warn(LOG, "%s: consumer: %s", in->conf.collection.name, rd_kafka_message_errstr(m));
      if (!kept) rd_kafka_message_destroy(m);
    }
    /* After the message: a failed commit drops it with the batch it joined (the rewind below re-reads it). */
    if ((fw = flight_pg(in)) && rv_pgwriter_poll(fw)) finish_flight(in);
    if (in->drain) drain_outbox(in);
    now = rv_mono_ms();
    if (now - in->polled_at >= 10) { /* not per message: it scans the unconfirmed ones */
      in->polled_at = now;
      poll_published(in);
    }
    /* Closed at the caps, or as soon as the consumer has nothing more waiting: low load gets small
     * prompt batches, high load (a full fetch queue) big ones. */
    if (in->batch.n_messages &&
        (dry || (int64_t)in->batch.n_messages >= in->conf.batch_rows ||
         now - in->batch.opened_ms >= in->conf.batch_ms) &&
        rv_quant_batch_ready(in->quant, in->pg[in->pg_turn], &in->batch)) /* no quantizer yet: the batch grows until one can be trained */
      write_batch(in);
    if (in->reseek) rewind_assignment(in);
    if (now - in->progress_at >= PROGRESS_EVERY_MS) log_progress(in, now);
    if (now - in->lag_at >= 1000) update_lag(in, now);
  }
  if (rv_quant_batch_ready(in->quant, in->pg[in->pg_turn], &in->batch)) write_batch(in); /* the batch in progress */
  else drop_batch(in, "too few vectors yet to train the SQ8 quantizer");
  finish_flight(in);
  if (in->drain) drain_outbox(in);
  await_published(in, 0);
  rd_kafka_consumer_close(in->consumer); /* leaves the group; the revoke arrives with an empty batch */
  log_progress(in, rv_mono_ms());
  rv_info(LOG, "%s: stopped", in->conf.collection.name);
  return NULL;
}

/* ---- lifecycle ---- */

static void free_message(void *m) { rd_kafka_message_destroy(m); }

rv_ingest_t *rv_ingest_new(const rv_ingest_conf_t *conf, char *errstr, size_t errstr_size) {
  rv_ingest_conf_t c = *conf;
  rv_ingest_conf_defaults(&c);
  if (rv_pgschema_check_name(c.collection.name, errstr, errstr_size)) return NULL;
  if (c.collection.dim < 1 || c.collection.dim > 65536) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "collection dim %d is outside 1..65536", c.collection.dim);
    return NULL;
  }
  if (!c.brokers[0]) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "no Kafka brokers configured");
    return NULL;
  }
  rv_ingest_t *in = calloc(1, sizeof *in);
  if (!in) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  in->conf = c;
  rv_ingest_metrics_init(&in->metrics, c.metrics, c.collection.name);
  snprintf(in->group, sizeof in->group, "rv-ingest-%s", c.collection.name);
  pthread_mutex_init(&in->lock, NULL);
  rv_batch_init(&in->batch);
  rv_batch_init(&in->flight);
  in->batch.free_src = in->flight.free_src = free_message;
  rv_buf_init(&in->scratch);
  rv_buf_init(&in->marker);
  return in;
}

static rd_kafka_t *make_consumer(rv_ingest_t *in, char *errstr, size_t errstr_size) {
  char e[512], session[16], heartbeat[16];
  snprintf(session, sizeof session, "%d", in->conf.session_timeout_ms);
  snprintf(heartbeat, sizeof heartbeat, "%d", in->conf.session_timeout_ms / 3 < 3000 ? in->conf.session_timeout_ms / 3 : 3000);
  const char *kv[][2] = {
      {"bootstrap.servers", in->conf.brokers},
      {"group.id", in->group},
      {"client.id", in->group},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", "earliest"},
      {"enable.partition.eof", "false"},
      /* A crashed ingest's partitions move on after the session timeout (default 10 s rather
       * than Kafka's 45 s); heartbeats come from librdkafka's own thread, so a slow batch
       * does not count against it. */
      {"session.timeout.ms", session},
      {"heartbeat.interval.ms", heartbeat},
      /* Freshness: a broker holds an empty fetch for up to fetch.wait.max.ms (librdkafka's default 500 ms
       * was a fixed half second per record at low load); answering as soon as one byte is there (fetch.min.bytes 1)
       * within 10 ms costs idle fetches, not latency. Under load the fetch queue stays full regardless
       * (queued.min.messages), so batches still reach batch_rows. */
      {"fetch.wait.max.ms", "10"},
      {"fetch.min.bytes", "1"},
      {"fetch.error.backoff.ms", "50"},
  };
  rd_kafka_conf_t *kc = rv_kafka_conf_new(RV_KAFKA_PROPS(kv), "consumer", errstr, errstr_size);
  if (!kc) return NULL;
  rd_kafka_conf_set_rebalance_cb(kc, on_rebalance);
  rd_kafka_conf_set_opaque(kc, in);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, e, sizeof e);
  if (!rk) {
    rd_kafka_conf_destroy(kc);
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "consumer: %s", e);
    return NULL;
  }
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, in->conf.collection.source_topic, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t kerr = rd_kafka_subscribe(rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (kerr) {
    rd_kafka_destroy(rk);
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "subscribe %s: %s", in->conf.collection.source_topic,
            rd_kafka_err2str(kerr));
    return NULL;
  }
  return rk;
}

/* Frees the thread-owned resources (after the thread ended, or if it never started). */
static void release(rv_ingest_t *in) {
  rv_batch_clear(&in->batch); /* their source messages go before the consumer */
  rv_batch_clear(&in->flight);
  if (in->consumer) rd_kafka_destroy(in->consumer);
  in->consumer = NULL;
  rv_producer_destroy(in->dlq, 1000);
  rv_producer_destroy(in->changelog, 1000);
  in->dlq = in->changelog = NULL;
  for (int i = 0; i < 2; i++) {
    rv_pgwriter_destroy(in->pg[i]);
    in->pg[i] = NULL;
  }
  rv_outbox_destroy(in->outbox);
  in->outbox = NULL;
  rv_quant_destroy(in->quant);
  in->quant = NULL;
  rv_decoder_destroy(in->decoder);
  in->decoder = NULL;
  rv_registry_destroy(in->registry);
  in->registry = NULL;
  rv_codec_destroy(in->codec);
  in->codec = NULL;
}

rv_err_t rv_ingest_start(rv_ingest_t *in, char *errstr, size_t errstr_size) {
  pthread_mutex_lock(&in->lock);
  rv_err_t err = RV_OK;
  if (in->started) {
    err = rv_errf(RV_ERR_STATE, errstr, errstr_size, "ingest already started");
    goto out;
  }
  char id[RV_NAME_MAX + 32];
  const rv_collection_conf_t *col = &in->conf.collection;
  if (!(in->codec = rv_codec_new(errstr, errstr_size)) ||
      (in->conf.schema_registry[0] &&
       !(in->registry = rv_registry_new(in->conf.schema_registry, in->conf.registry_timeout_ms, errstr,
                                        errstr_size))) ||
      !(in->decoder = rv_decoder_new(in->codec, (uint32_t)col->schema_id, in->registry, errstr, errstr_size)) ||
      !(in->pg[0] = rv_pgwriter_new(in->conf.pg_conninfo, in->conf.pgbouncer, col->name, in->group,
                                    col->source_topic, errstr, errstr_size)) ||
      !(in->pg[1] = rv_pgwriter_new(in->conf.pg_conninfo, in->conf.pgbouncer, col->name, in->group,
                                    col->source_topic, errstr, errstr_size)) ||
      !(in->outbox = rv_outbox_new(col->name, errstr, errstr_size)) ||
      !(in->quant = rv_quant_new(&(rv_quant_conf_t){col->dim, in->conf.sq8_train, in->conf.sq8_train_wait_ms,
                                                    in->conf.sq8_params, in->conf.pq_m},
                                 errstr,
                                 errstr_size)) ||
      (snprintf(id, sizeof id, "rv-ingest-%s-dlq", col->name),
       !(in->dlq = rv_producer_new(in->conf.brokers, id, errstr, errstr_size))) ||
      (snprintf(id, sizeof id, "rv-ingest-%s-changelog", col->name),
       !(in->changelog = rv_producer_new(in->conf.brokers, id, errstr, errstr_size))) ||
      !(in->consumer = make_consumer(in, errstr, errstr_size))) {
    err = RV_ERR_CONFIG;
    release(in);
    goto out;
  }
  for (int i = 0; i < 2; i++) rv_pgwriter_set_store_vector(in->pg[i], !in->conf.codes_only);
  rv_outbox_set_ranges(in->outbox, !in->conf.codes_only); /* ranges re-encode the vector from the table */
  atomic_store(&in->stop, 0);
  if (pthread_create(&in->thread, NULL, run, in)) {
    err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "cannot create the ingest thread");
    release(in);
    goto out;
  }
  in->started = 1;
  rv_info(LOG, "%s: consuming %s as %s (batch %d rows / %d ms)", col->name, col->source_topic, in->group,
          in->conf.batch_rows, in->conf.batch_ms);
out:
  pthread_mutex_unlock(&in->lock);
  return err;
}

void rv_ingest_stop(rv_ingest_t *in) {
  pthread_mutex_lock(&in->lock);
  if (in->started && !in->joined) {
    atomic_store(&in->stop, 1);
    pthread_join(in->thread, NULL);
    in->joined = 1;
    release(in);
  }
  pthread_mutex_unlock(&in->lock);
}

void rv_ingest_destroy(rv_ingest_t *in) {
  if (!in) return;
  rv_ingest_stop(in);
  release(in);
  rv_batch_close(&in->batch);
  rv_batch_close(&in->flight);
  rv_buf_close(&in->scratch);
  rv_buf_close(&in->marker);
  free(in->assigned);
  free(in->counted);
  pthread_mutex_destroy(&in->lock);
  free(in);
}

void rv_ingest_stats(rv_ingest_t *in, rv_ingest_stats_t *out) {
  out->consumed = atomic_load(&in->consumed);
  out->ingested = atomic_load(&in->ingested);
  out->changes = atomic_load(&in->changes);
  out->dead_lettered = atomic_load(&in->dead_lettered);
  out->batches = atomic_load(&in->batches);
  out->retries = atomic_load(&in->retries);
  out->lost = atomic_load(&in->lost);
  out->published = atomic_load(&in->published);
  out->drained = atomic_load(&in->drained);
  out->markers = atomic_load(&in->markers);
}
