#ifndef RV_DLQ_H
#define RV_DLQ_H
/* Dead-letter queue: a rejected source message goes to <collection>.dlq with
 * its original key, value and headers, plus the reason:
 *   rv.error.code       rv_reject_code(), e.g. "wrong_dim"
 *   rv.error.message    one line of detail
 *   rv.source.topic     where it was read
 *   rv.source.partition decimal
 *   rv.source.offset    decimal
 * and, for rv_dlq_send_ex, extra headers of the reason's own (e.g.
 * rv.error.sqlstate of rejected_by_database).
 * Thread: the producer's. */
#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "rv_err.h"
#include "rv_producer.h"
#include "rv_validate.h"

/* Queues the dead letter for m on dlq (confirmed later with rv_producer_confirm).
 * Returns RV_ERR_NOMEM only. m is not modified (its headers are read, not detached). */
rv_err_t rv_dlq_send(rv_producer_t *dlq, const char *dlq_topic, rd_kafka_message_t *m, rv_reject_t reason,
                     const char *message, char *errstr, size_t errstr_size);

/* rv_dlq_send with extra[0..n_extra) appended to the rv.* headers (at most 8). */
rv_err_t rv_dlq_send_ex(rv_producer_t *dlq, const char *dlq_topic, rd_kafka_message_t *m, rv_reject_t reason,
                        const char *message, const rv_header_t *extra, size_t n_extra, char *errstr,
                        size_t errstr_size);

#endif
