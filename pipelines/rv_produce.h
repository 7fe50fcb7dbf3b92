#ifndef RV_PRODUCE_H
#define RV_PRODUCE_H
/* `ruvector produce`: publishes the records of a local file (rv_source) to a
 * Kafka topic, key = id, with an idempotent librdkafka producer. Also callable
 * in-process (rv_produce_run), e.g. by the pipeline runner or tests. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"
#include "rv_source.h"

typedef enum {
  RV_FRAMING_AVRO = 0,  /* plain Avro binary of schemas/vector_record.avsc */
  RV_FRAMING_CONFLUENT, /* byte 0, 4-byte big-endian schema id, then Avro */
  RV_FRAMING_JSON,      /* a JSON object {"id","op","vector","metadata","event_time"} */
} rv_framing_t;

/* "avro", "confluent", "json"; returns 0, or -1 if unknown. */
int rv_framing_parse(const char *s, rv_framing_t *out);
const char *rv_framing_name(rv_framing_t f);

typedef struct rv_produce_opts {
  const char *brokers;       /* bootstrap.servers; required */
  const char *topic;         /* required */
  const char *input;         /* file to read; required */
  rv_source_format_t format; /* RV_SOURCE_AUTO = from the file name */
  rv_source_opts_t source;   /* labels file, id prefix, skip */
  int64_t count;             /* at most this many records; < 0 = all (default) */
  double rate;               /* records per second; 0 = unlimited (default) */
  rv_framing_t framing;      /* default RV_FRAMING_AVRO */
  uint32_t schema_id;        /* for RV_FRAMING_CONFLUENT; default 1 */
  int delete_ops;            /* publish DELETE records (no vector, no metadata) for the ids read */
  int progress;              /* print progress to stderr every second (default 0) */
  int flush_timeout_ms;      /* bound on the final flush; default 60000 */
  const char *wait_visible;  /* NULL; or the ws:// URL of a serve: after each delivery, search there with
                                "after" = the record's partition and offset and its vector, and measure
                                producer send -> searchable (rv_produce_result_t.visible...) */
  const char *collection;    /* the collection searched by wait_visible; required with it */
  int wait_timeout_ms;       /* wait_visible: longest wait for one record's answer; default 10000 */
  int wait_every;            /* wait_visible: probe every this many-th record (1, 2, ...); default 1 = all */
} rv_produce_opts_t;

typedef struct rv_produce_result {
  int64_t read;       /* records read from the input */
  int64_t sent;       /* records accepted by the producer */
  int64_t delivered;  /* records acknowledged by the brokers */
  int64_t failed;     /* read - delivered, once finished */
  int64_t elapsed_ms; /* from the first record to the end of the flush */
  int input_error;    /* 1 if the run failed because of the input: it could not be opened
                       * (RV_ERR_IO returned) or held bad data later (the source's error) */
  /* With opts.wait_visible: */
  int64_t probed;     /* delivered records searched for (every opts.wait_every-th) */
  int64_t visible;    /* probed records the serve answered for (their position reached) */
  int64_t found;      /* of those, records whose id was among the hits */
  int64_t not_visible; /* probed records answered with an error (e.g. not_yet_visible) or not at all */
  int64_t latency_p50_us, latency_p99_us, latency_max_us; /* producer send -> answered, over the visible */
  char first_visible_error[256]; /* the first such error, "" when none */
} rv_produce_result_t;

/* Defaults as documented on each field. */
void rv_produce_opts_init(rv_produce_opts_t *o);

/* Publishes the records of opts->input to opts->topic and waits (at most
 * opts->flush_timeout_ms) for every delivery report. With opts->wait_visible,
 * each delivered record is then searched for at that serve (its vector, k 10,
 * "after" its partition and offset) and the run also waits (each at most
 * opts->wait_timeout_ms) for those answers; a record not visible, or visible
 * but not found, makes the run fail (RV_ERR_UNAVAILABLE). Blocks the calling
 * thread; delivery reports are counted on it too (no callback runs elsewhere).
 * stop (may be NULL) is read between records: at 1 no further record is read
 * but what was sent is still flushed; at 2 or more the flush is abandoned too
 * (unacknowledged records count as failed). Fills *res in all cases.
 * Returns RV_OK when every record read was delivered; otherwise an error with
 * errstr set: an input error (res->input_error = 1) stops reading but what
 * was sent is flushed, RV_ERR_CONFIG for a bad producer configuration,
 * RV_ERR_UNAVAILABLE when some records were not delivered. */
rv_err_t rv_produce_run(const rv_produce_opts_t *opts, volatile int *stop, rv_produce_result_t *res,
                        char *errstr, size_t errstr_size);

/* Reads the endpoints file a running pipeline writes:
 *   {"kafka":{"bootstrap":"..."},"collections":{"<name>":{"source_topic":"..."}}}
 * into bootstrap and topic (either may be NULL to skip it). collection may be
 * NULL when the file names exactly one. Returns RV_ERR_NOT_FOUND/RV_ERR_IO if
 * the file cannot be read, RV_ERR_CONFIG if a key is missing or ambiguous. */
rv_err_t rv_endpoints_read(const char *path, const char *collection, char *bootstrap, size_t bootstrap_size,
                           char *topic, size_t topic_size, char *errstr, size_t errstr_size);

/* `ruvector produce [options]`; argv[0] is the command name. Returns the
 * process exit code: 0 when every record was delivered, 1 on delivery or
 * Kafka failures, 2 on bad usage, 66 (EX_NOINPUT) if the input cannot be
 * opened or read, 65 (EX_DATAERR) if a record past the header is malformed
 * or truncated (the records before it are still published). SIGINT/SIGTERM stop
 * reading and flush what was sent. */
int rv_produce_main(int argc, char **argv);

#endif
