#ifndef RV_PRODUCER_H
#define RV_PRODUCER_H
/* A Kafka producer whose messages are confirmed, not fired and forgotten:
 * every message sent is kept (copied) until rv_producer_confirm has seen its
 * delivery report; a failed delivery is re-sent by the next confirm, and a
 * producer that hit a fatal (idempotence) error is rebuilt and everything
 * unconfirmed is re-sent. Idempotent (enable.idempotence=true), keys
 * partitioned with murmur2 like the Java client.
 * Thread: one thread uses a producer; delivery reports run in that thread,
 * inside send and confirm. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

typedef struct rv_producer rv_producer_t;

typedef struct rv_header {
  const char *name;  /* NUL-terminated */
  const void *value; /* may be NULL (null header value) */
  size_t len;
} rv_header_t;

/* Creates the producer (connects lazily). client_id names it in broker logs. */
rv_producer_t *rv_producer_new(const char *brokers, const char *client_id, char *errstr, size_t errstr_size);

/* Destroys the producer after waiting at most linger_ms for deliveries in
 * flight; unconfirmed messages are dropped (the caller did not commit them).
 * NULL is a no-op. */
void rv_producer_destroy(rv_producer_t *p, int linger_ms);

/* Queues one message; copies topic, key, value and headers. value NULL sends a
 * null value (a tombstone). Returns RV_ERR_NOMEM only; a message librdkafka
 * refuses now (queue full, ...) is kept and re-sent by confirm. */
rv_err_t rv_producer_send(rv_producer_t *p, const char *topic, const void *key, size_t key_len, const void *value,
                          size_t value_len, const rv_header_t *headers, size_t n_headers, char *errstr,
                          size_t errstr_size);

/* rv_producer_send to one partition of topic (a negative partition: by key). */
rv_err_t rv_producer_send_to(rv_producer_t *p, const char *topic, int32_t partition, const void *key, size_t key_len,
                             const void *value, size_t value_len, const rv_header_t *headers, size_t n_headers,
                             char *errstr, size_t errstr_size);

/* Asks a broker how many partitions topic has (blocks up to timeout_ms).
 * Returns the count, or -1 with errstr set (unreachable, unknown topic). */
int rv_producer_partition_count(rv_producer_t *p, const char *topic, int timeout_ms, char *errstr,
                                size_t errstr_size);

/* Re-sends failed messages, then waits up to timeout_ms for every message
 * sent since the last successful confirm. RV_OK: all delivered, and forgotten.
 * RV_ERR_UNAVAILABLE: some delivery failed (errstr says why; they will be
 * re-sent by the next call). RV_ERR_TIMEOUT: some are still in flight. */
rv_err_t rv_producer_confirm(rv_producer_t *p, int timeout_ms, char *errstr, size_t errstr_size);

/* Messages are numbered in send order. The mark is the number the next
 * message sent will get: once rv_producer_confirmed(p) >= a mark taken after
 * some sends, all of them (and every earlier message) are delivered. */
uint64_t rv_producer_mark(const rv_producer_t *p);
/* Every message numbered below this is delivered (and forgotten). */
uint64_t rv_producer_confirmed(const rv_producer_t *p);

/* rv_producer_confirm for the messages numbered below mark only: re-sends
 * failed messages (all of them), then waits up to timeout_ms (0: only serves
 * the delivery reports already in) until those are delivered, forgetting
 * the delivered front of the queue as it goes. Later messages stay in flight
 * meanwhile: one idempotent producer keeps them in order per partition. */
rv_err_t rv_producer_confirm_to(rv_producer_t *p, uint64_t mark, int timeout_ms, char *errstr, size_t errstr_size);

/* Messages sent and not yet confirmed. */
size_t rv_producer_pending(const rv_producer_t *p);

#endif
