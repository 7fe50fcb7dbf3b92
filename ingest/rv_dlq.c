#include "rv_dlq.h"

#include <stdio.h>
#include <string.h>

/* Original headers beyond this many are not carried over. */
#define MAX_HEADERS 64

#define MAX_EXTRA 8

rv_err_t rv_dlq_send(rv_producer_t *dlq, const char *dlq_topic, rd_kafka_message_t *m, rv_reject_t reason,
                     const char *message, char *errstr, size_t errstr_size) {
  return rv_dlq_send_ex(dlq, dlq_topic, m, reason, message, NULL, 0, errstr, errstr_size);
}

rv_err_t rv_dlq_send_ex(rv_producer_t *dlq, const char *dlq_topic, rd_kafka_message_t *m, rv_reject_t reason,
                        const char *message, const rv_header_t *extra, size_t n_extra, char *errstr,
                        size_t errstr_size) {
  rv_header_t h[MAX_HEADERS + 5 + MAX_EXTRA];
  size_t n = 0;
  rd_kafka_headers_t *orig = NULL;
  if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR && orig) {
    const char *name;
    const void *value;
    size_t len;
    for (size_t i = 0; n < MAX_HEADERS && rd_kafka_header_get_all(orig, i, &name, &value, &len) == 0; i++)
      if (strncmp(name, "rv.", 3)) /* a re-dead-lettered message gets fresh rv.* headers */
        h[n++] = (rv_header_t){name, value, len};
  }
  char part[16], off[24];
  snprintf(part, sizeof part, "%d", (int)m->partition);
  snprintf(off, sizeof off, "%lld", (long long)m->offset);
  const char *code = rv_reject_code(reason);
  const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
  h[n++] = (rv_header_t){"rv.error.code", code, strlen(code)};
  h[n++] = (rv_header_t){"rv.error.message", message, strlen(message)};
  h[n++] = (rv_header_t){"rv.source.topic", topic, strlen(topic)};
  h[n++] = (rv_header_t){"rv.source.partition", part, strlen(part)};
  h[n++] = (rv_header_t){"rv.source.offset", off, strlen(off)};
  for (size_t i = 0; i < n_extra && i < MAX_EXTRA; i++) h[n++] = extra[i];
  return rv_producer_send(dlq, dlq_topic, m->key, m->key_len, m->payload, m->len, h, n, errstr, errstr_size);
}
