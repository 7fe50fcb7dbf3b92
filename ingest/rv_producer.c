#include "rv_producer.h"

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_kafka.h"
#include "rv_log.h"
#include "rv_time.h"

enum { MSG_UNSENT, MSG_IN_FLIGHT, MSG_DELIVERED, MSG_FAILED };

typedef struct msg {
  char *topic;
  int32_t partition; /* RD_KAFKA_PARTITION_UA: by key */
  void *key;
  size_t key_len;
  void *value; /* NULL: null value */
  size_t value_len;
  rd_kafka_headers_t *headers; /* our copy; NULL when none */
  int state;
} msg_t;

struct rv_producer {
  rd_kafka_t *rk;
  char *brokers;
  char *client_id;
  msg_t *msgs; /* unconfirmed messages, in send order */
  size_t n_msgs, cap_msgs;
  uint64_t base_seq;       /* sequence number of msgs[0]; a delivery report carries its message's number */
  int ignore_reports;      /* set while a handle is torn down */
  char last_error[256];    /* last delivery error, for confirm's errstr */
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  rv_producer_t *p = opaque;
  if (p->ignore_reports) return;
  uint64_t seq = (uint64_t)(uintptr_t)m->_private;
  if (seq < p->base_seq || seq - p->base_seq >= p->n_msgs) return; /* from before a reset */
  msg_t *msg = &p->msgs[seq - p->base_seq];
  if (m->err) {
    msg->state = MSG_FAILED;
    snprintf(p->last_error, sizeof p->last_error, "%s [%d]: %s", msg->topic, (int)m->partition,
             rd_kafka_err2str(m->err));
  } else {
    msg->state = MSG_DELIVERED;
  }
}

static rd_kafka_t *make_handle(rv_producer_t *p, char *errstr, size_t errstr_size) {
  char e[512];
  const char *kv[][2] = {
      {"bootstrap.servers", p->brokers},
      {"client.id", p->client_id},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"partitioner", "murmur2_random"},
      {"linger.ms", "0"},
      {"message.timeout.ms", "30000"},
  };
  rd_kafka_conf_t *conf = rv_kafka_conf_new(RV_KAFKA_PROPS(kv), "producer", errstr, errstr_size);
  if (!conf) return NULL;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, p);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
  if (!rk) {
    rd_kafka_conf_destroy(conf); /* rd_kafka_new only takes conf on success */
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "producer: %s", e);
  }
  return rk;
}

rv_producer_t *rv_producer_new(const char *brokers, const char *client_id, char *errstr, size_t errstr_size) {
  rv_producer_t *p = calloc(1, sizeof *p);
  if (!p || !(p->brokers = strdup(brokers)) || !(p->client_id = strdup(client_id))) {
    rv_producer_destroy(p, 0);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  if (!(p->rk = make_handle(p, errstr, errstr_size))) {
    rv_producer_destroy(p, 0);
    return NULL;
  }
  return p;
}

static void msg_free(msg_t *m) {
  free(m->topic);
  free(m->key);
  free(m->value);
  if (m->headers) rd_kafka_headers_destroy(m->headers);
}

/* Forgets every message (all confirmed, or being abandoned). */
static void reset_msgs(rv_producer_t *p) {
  for (size_t i = 0; i < p->n_msgs; i++) msg_free(&p->msgs[i]);
  p->base_seq += p->n_msgs;
  p->n_msgs = 0;
}

static void destroy_handle(rv_producer_t *p, int linger_ms) {
  if (!p->rk) return;
  if (linger_ms > 0) rd_kafka_flush(p->rk, linger_ms);
  p->ignore_reports = 1;
  rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_destroy(p->rk);
  p->ignore_reports = 0;
  p->rk = NULL;
}

void rv_producer_destroy(rv_producer_t *p, int linger_ms) {
  if (!p) return;
  destroy_handle(p, linger_ms);
  reset_msgs(p);
  free(p->msgs);
  free(p->brokers);
  free(p->client_id);
  free(p);
}

size_t rv_producer_pending(const rv_producer_t *p) { return p->n_msgs; }

/* Hands message i to librdkafka; on a local refusal it stays MSG_FAILED.
 * Without RD_KAFKA_MSG_F_COPY: librdkafka points at our copy of the value,
 * which is freed only once its delivery report said DELIVERED, or after the
 * handle that held it was destroyed (a second copy of every 4 KB change cost
 * a quarter of the time it took to queue a batch's changelog). */
static void produce(rv_producer_t *p, size_t i) {
  msg_t *m = &p->msgs[i];
  rd_kafka_headers_t *h = m->headers ? rd_kafka_headers_copy(m->headers) : NULL;
  rd_kafka_resp_err_t err = rd_kafka_producev(
      p->rk, RD_KAFKA_V_TOPIC(m->topic), RD_KAFKA_V_PARTITION(m->partition), RD_KAFKA_V_MSGFLAGS(0),
      RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->value, m->value_len), RD_KAFKA_V_HEADERS(h),
      RD_KAFKA_V_OPAQUE((void *)(uintptr_t)(p->base_seq + i)), RD_KAFKA_V_END);
  if (err) {
    if (h) rd_kafka_headers_destroy(h); /* only taken on success */
    m->state = MSG_FAILED;
    snprintf(p->last_error, sizeof p->last_error, "%s: %s", m->topic, rd_kafka_err2str(err));
  } else {
    m->state = MSG_IN_FLIGHT;
  }
}

static void *dup_mem(const void *src, size_t n) {
  void *d = malloc(n ? n : 1);
  if (d && n) memcpy(d, src, n);
  return d;
}

rv_err_t rv_producer_send(rv_producer_t *p, const char *topic, const void *key, size_t key_len, const void *value,
                          size_t value_len, const rv_header_t *headers, size_t n_headers, char *errstr,
                          size_t errstr_size) {
  return rv_producer_send_to(p, topic, RD_KAFKA_PARTITION_UA, key, key_len, value, value_len, headers, n_headers,
                             errstr, errstr_size);
}

rv_err_t rv_producer_send_to(rv_producer_t *p, const char *topic, int32_t partition, const void *key, size_t key_len,
                             const void *value, size_t value_len, const rv_header_t *headers, size_t n_headers,
                             char *errstr, size_t errstr_size) {
  if (p->n_msgs == p->cap_msgs) {
    size_t cap = p->cap_msgs ? p->cap_msgs * 2 : 256;
    msg_t *msgs = realloc(p->msgs, cap * sizeof *msgs);
    if (!msgs) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    p->msgs = msgs;
    p->cap_msgs = cap;
  }
  msg_t m = {.partition = partition < 0 ? RD_KAFKA_PARTITION_UA : partition, .key_len = key_len,
             .value_len = value_len, .state = MSG_UNSENT};
  m.topic = strdup(topic);
  m.key = key ? dup_mem(key, key_len) : NULL;
  m.value = value ? dup_mem(value, value_len) : NULL;
  int ok = m.topic && (!key || m.key) && (!value || m.value);
  if (ok && n_headers) {
    m.headers = rd_kafka_headers_new(n_headers);
    for (size_t i = 0; i < n_headers && ok; i++)
      ok = rd_kafka_header_add(m.headers, headers[i].name, -1, headers[i].value, (ssize_t)headers[i].len) ==
           RD_KAFKA_RESP_ERR_NO_ERROR;
  }
  if (!ok) {
    msg_free(&m);
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  p->msgs[p->n_msgs++] = m;
  produce(p, p->n_msgs - 1);
  if (p->n_msgs % 64 == 0) rd_kafka_poll(p->rk, 0); /* serve delivery reports now and then */
  return RV_OK;
}

uint64_t rv_producer_mark(const rv_producer_t *p) { return p->base_seq + p->n_msgs; }

uint64_t rv_producer_confirmed(const rv_producer_t *p) { return p->base_seq; }

/* Forgets the delivered messages at the front (in send order). */
static void drop_delivered(rv_producer_t *p) {
  size_t k = 0;
  while (k < p->n_msgs && p->msgs[k].state == MSG_DELIVERED) msg_free(&p->msgs[k++]);
  if (!k) return;
  memmove(p->msgs, p->msgs + k, (p->n_msgs - k) * sizeof *p->msgs);
  p->n_msgs -= k;
  p->base_seq += k;
}

rv_err_t rv_producer_confirm(rv_producer_t *p, int timeout_ms, char *errstr, size_t errstr_size) {
  return rv_producer_confirm_to(p, rv_producer_mark(p), timeout_ms, errstr, errstr_size);
}

rv_err_t rv_producer_confirm_to(rv_producer_t *p, uint64_t mark, int timeout_ms, char *errstr, size_t errstr_size) {
  char fatal[256];
  if (rd_kafka_fatal_error(p->rk, fatal, sizeof fatal)) {
    /* An idempotent producer that lost its guarantees must be replaced;
     * whatever it had not confirmed is re-sent by the new one. */
    rv_warn("ingest", "producer %s: fatal error, rebuilding it: %s", p->client_id, fatal);
    destroy_handle(p, 0);
    for (size_t i = 0; i < p->n_msgs; i++)
      if (p->msgs[i].state != MSG_DELIVERED) p->msgs[i].state = MSG_FAILED;
    if (!(p->rk = make_handle(p, errstr, errstr_size))) return RV_ERR_UNAVAILABLE;
  }
  for (size_t i = 0; i < p->n_msgs; i++)
    if (p->msgs[i].state == MSG_FAILED || p->msgs[i].state == MSG_UNSENT) produce(p, i);
  int64_t deadline = rv_mono_ms() + timeout_ms;
  rd_kafka_poll(p->rk, 0); /* serve the reports already in */
  for (;;) {
    drop_delivered(p);
    if (p->base_seq >= mark) return RV_OK;
    size_t in_flight = 0, failed = 0, n = (size_t)(mark - p->base_seq);
    for (size_t i = 0; i < n && i < p->n_msgs; i++) {
      in_flight += p->msgs[i].state == MSG_IN_FLIGHT;
      failed += p->msgs[i].state == MSG_FAILED;
    }
    int64_t left = deadline - rv_mono_ms();
    if (!in_flight || left <= 0) {
      if (failed)
        return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "%zu of %zu message(s) not delivered: %s", failed,
                       n, p->last_error);
      return rv_errf(RV_ERR_TIMEOUT, errstr, errstr_size, "%zu of %zu message(s) still in flight after %d ms",
                     in_flight, n, timeout_ms);
    }
    /* Not rd_kafka_flush: it would wait for messages after the mark too. */
    rd_kafka_poll(p->rk, (int)(left < 100 ? left : 100));
  }
}

int rv_producer_partition_count(rv_producer_t *p, const char *topic, int timeout_ms, char *errstr,
                                size_t errstr_size) {
  rd_kafka_topic_t *t = rd_kafka_topic_new(p->rk, topic, NULL);
  if (!t) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "topic handle %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
    return -1;
  }
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t err = rd_kafka_metadata(p->rk, 0, t, &md, timeout_ms);
  int n = -1;
  if (err) rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "metadata of %s: %s", topic, rd_kafka_err2str(err));
  else if (md->topic_cnt != 1 || md->topics[0].err)
    rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "metadata of %s: %s", topic,
            md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "no such topic");
  else n = md->topics[0].partition_cnt;
  if (md) rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(t);
  return n;
}
