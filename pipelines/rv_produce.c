#include "rv_produce.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "rv_buf.h"
#include "rv_collection.h"
#include "rv_kafka.h"
#include "rv_record.h"
#include "rv_remote.h"
#include "rv_time.h"

#define EX_DATAERR 65
#define EX_NOINPUT 66

int rv_framing_parse(const char *s, rv_framing_t *out) {
  if (strcasecmp(s, "avro") == 0) *out = RV_FRAMING_AVRO;
  else if (strcasecmp(s, "confluent") == 0) *out = RV_FRAMING_CONFLUENT;
  else if (strcasecmp(s, "json") == 0) *out = RV_FRAMING_JSON;
  else return -1;
  return 0;
}

const char *rv_framing_name(rv_framing_t f) {
  switch (f) {
  case RV_FRAMING_CONFLUENT: return "confluent";
  case RV_FRAMING_JSON: return "json";
  default: return "avro";
  }
}

void rv_produce_opts_init(rv_produce_opts_t *o) {
  memset(o, 0, sizeof *o);
  rv_source_opts_init(&o->source);
  o->count = -1;
  o->schema_id = 1;
  o->flush_timeout_ms = 60000;
  o->wait_timeout_ms = 10000;
  o->wait_every = 1;
}

/* ---- --wait-visible: producer send -> searchable ------------------------------ */

#define VISIBLE_K 10

/* A record on its way to the broker: what its search needs (msg opaque). */
typedef struct probe {
  int64_t sent_us;
  char *id;
  char *vector_json; /* "[..]" */
} probe_t;

/* The searches in flight and what their answers said. The rv_remote thread
 * reports answers; the run's thread sends and waits. */
typedef struct visibility {
  rv_remote_t *rm;
  const char *collection;
  int timeout_ms;
  pthread_mutex_t lock; /* guards everything below */
  pthread_cond_t cond;  /* signalled when outstanding drops */
  int64_t outstanding;
  int64_t *lat_us;
  size_t n_lat, cap_lat;
  int64_t probed, visible, found, failed;
  char first_err[256];
} visibility_t;

typedef struct check {
  visibility_t *v;
  char *id;
  int64_t sent_us;
} check_t;

static void probe_free(probe_t *p) {
  if (!p) return;
  free(p->id);
  free(p->vector_json);
  free(p);
}

static probe_t *probe_new(const rv_vector_record_t *rec) {
  probe_t *p = calloc(1, sizeof *p);
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_append(&b, "[", 1);
  for (int i = 0; i < rec->dim && !err; i++) err = rv_buf_appendf(&b, "%s%.9g", i ? "," : "", (double)rec->vector[i]);
  if (!err) err = rv_buf_append(&b, "]", 1);
  json_t *id = json_stringn(rec->id, rec->id_len);
  if (!p || err || !id || !(p->id = json_dumps(id, JSON_ENCODE_ANY))) {
    json_decref(id);
    rv_buf_close(&b);
    probe_free(p);
    return NULL;
  }
  json_decref(id);
  p->vector_json = (char *)b.base;
  return p;
}

static void visibility_fail(visibility_t *v, const char *why) {
  v->failed++;
  if (!v->first_err[0]) snprintf(v->first_err, sizeof v->first_err, "%s", why);
}

/* rv_remote_done_fn (client thread). */
static void check_done(void *arg, int tag, json_t *reply, const char *why) {
  (void)tag;
  check_t *c = arg;
  visibility_t *v = c->v;
  int64_t now = rv_mono_us();
  pthread_mutex_lock(&v->lock);
  const char *type = json_string_value(json_object_get(reply, "type"));
  if (type && !strcmp(type, "results")) {
    v->visible++;
    if (v->n_lat == v->cap_lat) {
      size_t cap = v->cap_lat ? v->cap_lat * 2 : 1024;
      int64_t *l = realloc(v->lat_us, cap * sizeof *l);
      if (l) {
        v->lat_us = l;
        v->cap_lat = cap;
      }
    }
    if (v->n_lat < v->cap_lat) v->lat_us[v->n_lat++] = now - c->sent_us;
    json_t *hits = json_object_get(reply, "hits"), *want = json_loads(c->id, JSON_DECODE_ANY, NULL);
    int found = 0;
    for (size_t i = 0; want && i < json_array_size(hits) && !found; i++)
      found = json_equal(json_object_get(json_array_get(hits, i), "id"), want);
    json_decref(want);
    if (found) v->found++;
    else if (!v->first_err[0]) snprintf(v->first_err, sizeof v->first_err, "%s visible but not among the hits", c->id);
  } else if (reply) {
    char msg[256];
    const char *code = json_string_value(json_object_get(reply, "code"));
    const char *message = json_string_value(json_object_get(reply, "message"));
    snprintf(msg, sizeof msg, "%s: %s: %s", c->id, code ? code : "?", message ? message : "");
    visibility_fail(v, msg);
  } else {
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", c->id, why ? why : "no answer");
    visibility_fail(v, msg);
  }
  v->outstanding--;
  pthread_cond_broadcast(&v->cond);
  pthread_mutex_unlock(&v->lock);
  free(c->id);
  free(c);
}

/* Sends the search for a delivered record (the run's thread). */
static void visibility_send(visibility_t *v, const probe_t *p, int32_t partition, int64_t offset) {
  check_t *c = calloc(1, sizeof *c);
  char *body = NULL;
  int n = -1;
  if (c && (c->id = strdup(p->id))) {
    c->v = v;
    c->sent_us = p->sent_us;
    size_t size = strlen(v->collection) + strlen(p->vector_json) + 160;
    if ((body = malloc(size)))
      n = snprintf(body, size,
                   "{\"type\":\"search\",\"collection\":\"%s\",\"k\":%d,\"vector\":%s,"
                   "\"after\":{\"partition\":%d,\"offset\":%lld}}",
                   v->collection, VISIBLE_K, p->vector_json, (int)partition, (long long)offset);
  }
  pthread_mutex_lock(&v->lock);
  if (n < 0) {
    visibility_fail(v, "out of memory");
    pthread_mutex_unlock(&v->lock);
    if (c) free(c->id);
    free(c);
    free(body);
    return;
  }
  v->outstanding++;
  v->probed++;
  pthread_mutex_unlock(&v->lock);
  int64_t deadline = rv_mono_us() + (int64_t)v->timeout_ms * 1000;
  rv_err_t err;
  /* Too many in flight: wait for answers (this is the producing thread, so it paces the run). */
  while ((err = rv_remote_send(v->rm, 0, body, (size_t)n, deadline, check_done, c, 0)) == RV_ERR_FULL &&
         rv_mono_us() < deadline) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  free(body);
  if (err) {
    pthread_mutex_lock(&v->lock);
    v->outstanding--;
    visibility_fail(v, "cannot send the search");
    pthread_mutex_unlock(&v->lock);
    free(c->id);
    free(c);
  }
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* Waits for every search sent (each reports by its deadline), then fills res. */
static void visibility_finish(visibility_t *v, rv_produce_result_t *res) {
  pthread_mutex_lock(&v->lock);
  while (v->outstanding > 0) pthread_cond_wait(&v->cond, &v->lock);
  pthread_mutex_unlock(&v->lock);
  rv_remote_destroy(v->rm); /* no callback runs after this */
  v->rm = NULL;
  res->visible = v->visible;
  res->found = v->found;
  res->probed = v->probed;
  res->not_visible = v->probed - v->visible;
  snprintf(res->first_visible_error, sizeof res->first_visible_error, "%s", v->first_err);
  if (v->n_lat) {
    qsort(v->lat_us, v->n_lat, sizeof *v->lat_us, cmp_i64);
    res->latency_p50_us = v->lat_us[(v->n_lat - 1) / 2];
    res->latency_p99_us = v->lat_us[(size_t)((double)(v->n_lat - 1) * 0.99)];
    res->latency_max_us = v->lat_us[v->n_lat - 1];
  }
}

/* ---- a run -------------------------------------------------------------- */

/* State of one run; the delivery report callback updates it on the thread
 * that calls rd_kafka_poll/flush, which is the run's own thread. */
typedef struct run {
  const rv_produce_opts_t *opts;
  rv_produce_result_t *res;
  int64_t dr_failed;      /* delivery reports with an error */
  int64_t produce_failed; /* records rd_kafka_producev refused */
  char first_err[256];    /* the first Kafka error, for the message */
  visibility_t *vis;      /* --wait-visible, else NULL */
  int64_t t0_us;
  int64_t last_report_us;
  int64_t last_report_sent;
} run_t;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  (void)rk;
  run_t *r = opaque;
  probe_t *p = m->_private; /* the message's opaque */
  if (p && !m->err) visibility_send(r->vis, p, m->partition, m->offset);
  probe_free(p);
  if (m->err) {
    r->dr_failed++;
    if (!r->first_err[0]) snprintf(r->first_err, sizeof r->first_err, "delivery: %s", rd_kafka_err2str(m->err));
  } else {
    r->res->delivered++;
  }
}

static void report(run_t *r, int final) {
  if (!r->opts->progress) return;
  int64_t now = rv_mono_us();
  if (!final && now - r->last_report_us < 1000000) return;
  /* Progress lines show the last second's rate, the final one the whole run's. */
  int64_t since = final ? r->t0_us : r->last_report_us;
  double secs = (double)(now - since) / 1e6;
  double rate = secs > 0 ? (double)(r->res->sent - (final ? 0 : r->last_report_sent)) / secs : 0;
  fprintf(stderr, "produce: %lld sent, %lld delivered, %lld failed, %.0f records/s%s\n", (long long)r->res->sent,
          (long long)r->res->delivered, (long long)(r->dr_failed + r->produce_failed), rate,
          final ? " overall" : "");
  r->last_report_us = now;
  r->last_report_sent = r->res->sent;
}

/* A token bucket holding at most 10 ms of records (at least one), so the rate
 * holds over any window longer than that. */
typedef struct bucket {
  double rate;   /* tokens per second; 0 = unlimited */
  double burst;  /* capacity */
  double tokens;
  int64_t last_us;
} bucket_t;

static void bucket_init(bucket_t *b, double rate) {
  b->rate = rate;
  b->burst = rate / 100 > 1 ? rate / 100 : 1;
  b->tokens = b->burst;
  b->last_us = rv_mono_us();
}

/* Takes a token and returns 0, or returns how many microseconds to wait first. */
static int64_t bucket_take(bucket_t *b) {
  if (b->rate <= 0) return 0;
  int64_t now = rv_mono_us();
  b->tokens += (double)(now - b->last_us) * b->rate / 1e6;
  if (b->tokens > b->burst) b->tokens = b->burst;
  b->last_us = now;
  if (b->tokens >= 1) {
    b->tokens -= 1;
    return 0;
  }
  int64_t wait = (int64_t)ceil((1 - b->tokens) * 1e6 / b->rate);
  return wait > 0 ? wait : 1;
}

static int stopped(volatile int *stop, int level) { return stop && *stop >= level; }

static rv_err_t encode_json(const rv_vector_record_t *rec, rv_buf_t *out, char *errstr, size_t errstr_size) {
  json_t *o = json_object();
  if (!o) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  rv_err_t err = RV_OK;
  json_object_set_new(o, "id", json_stringn(rec->id, rec->id_len));
  json_object_set_new(o, "op", json_string(rec->op == RV_OP_DELETE ? "DELETE" : "UPSERT"));
  if (rec->vector) {
    json_t *a = json_array();
    for (int i = 0; a && i < rec->dim; i++) {
      json_t *x = json_real(rec->vector[i]); /* NULL for NaN and infinities */
      if (!x) {
        err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "%s: vector[%d] is not finite", rec->id, i);
        break;
      }
      json_array_append_new(a, x);
    }
    json_object_set_new(o, "vector", a);
  }
  if (rec->metadata) {
    json_t *m = json_loads(rec->metadata, 0, NULL);
    json_object_set_new(o, "metadata", m ? m : json_string(rec->metadata));
  }
  if (rec->has_event_time) json_object_set_new(o, "event_time", json_integer(rec->event_time_ms));
  if (!err) {
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (!text || rv_buf_append(out, text, strlen(text)))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    free(text);
  }
  json_decref(o);
  return err;
}

static rv_err_t encode(rv_codec_t *codec, const rv_produce_opts_t *opts, const rv_vector_record_t *rec,
                       rv_buf_t *out, char *errstr, size_t errstr_size) {
  rv_buf_reset(out);
  switch (opts->framing) {
  case RV_FRAMING_JSON: return encode_json(rec, out, errstr, errstr_size);
  case RV_FRAMING_CONFLUENT: {
    rv_err_t err = rv_confluent_put_header(out, opts->schema_id);
    if (err) return rv_errf(err, errstr, errstr_size, "out of memory");
  } /* fall through */
  default: return rv_codec_encode_vector(codec, rec, out, errstr, errstr_size);
  }
}

static rd_kafka_t *make_producer(const rv_produce_opts_t *opts, run_t *r, char *errstr, size_t errstr_size) {
  const char *props[][2] = {
      {"bootstrap.servers", opts->brokers},
      {"client.id", "ruvector-produce"},
      {"enable.idempotence", "true"},
      {"linger.ms", "5"},
      {"batch.num.messages", "10000"},
      {"batch.size", "1000000"},
      {"queue.buffering.max.messages", "100000"},
      {"queue.buffering.max.kbytes", "262144"}, /* bounds memory; QUEUE_FULL is handled */
  };
  char kerr[512];
  rd_kafka_conf_t *conf = rv_kafka_conf_new(RV_KAFKA_PROPS(props), "producer", errstr, errstr_size);
  if (!conf) return NULL;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, r);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof kerr);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "producer: %s", kerr);
    return NULL;
  }
  return rk; /* conf now owned by rk */
}

/* Sends one encoded record, waiting while the local queue is full.
 * Returns 0, or the error that refused it. */
static rd_kafka_resp_err_t send_one(rd_kafka_t *rk, rd_kafka_topic_t *rkt, const rv_vector_record_t *rec,
                                    const rv_buf_t *value, probe_t *probe, volatile int *stop) {
  for (;;) {
    if (probe) probe->sent_us = rv_mono_us();
    rd_kafka_resp_err_t e =
        rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_KEY(rec->id, rec->id_len),
                          RD_KAFKA_V_VALUE(value->base, value->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_OPAQUE(probe), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || stopped(stop, 2)) return e;
    rd_kafka_poll(rk, 100); /* deliveries free queue space */
  }
}

rv_err_t rv_produce_run(const rv_produce_opts_t *opts, volatile int *stop, rv_produce_result_t *res,
                        char *errstr, size_t errstr_size) {
  memset(res, 0, sizeof *res);
  if (!opts->brokers || !*opts->brokers || !opts->topic || !*opts->topic || !opts->input)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "brokers, topic and input are required");
  if (opts->rate < 0 || !isfinite(opts->rate))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "rate must be >= 0");
  if (opts->wait_visible && (!opts->collection || !*opts->collection || opts->delete_ops))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size,
                   "wait_visible needs a collection and upserts (deleted records are not searchable)");
  visibility_t vis = {.collection = opts->collection,
                      .timeout_ms = opts->wait_timeout_ms > 0 ? opts->wait_timeout_ms : 10000};
  if (opts->wait_visible) {
    const char *url = opts->wait_visible;
    if (!(vis.rm = rv_remote_new(&url, 1, errstr, errstr_size))) return RV_ERR_INVALID;
    pthread_mutex_init(&vis.lock, NULL);
    pthread_cond_init(&vis.cond, NULL);
  }

  run_t r = {.opts = opts, .res = res, .vis = opts->wait_visible ? &vis : NULL};
  rv_err_t err = RV_OK;
  rv_codec_t *codec = NULL;
  rd_kafka_t *rk = NULL;
  rd_kafka_topic_t *rkt = NULL;
  rv_buf_t value;
  rv_buf_init(&value);
  rv_vector_record_t rec;
  rv_vector_record_init(&rec);

  rv_source_t *src = rv_source_open(opts->input, opts->format, &opts->source, errstr, errstr_size);
  if (!src) {
    res->input_error = 1;
    if (vis.rm) {
      rv_remote_destroy(vis.rm);
      pthread_cond_destroy(&vis.cond);
      pthread_mutex_destroy(&vis.lock);
    }
    return RV_ERR_IO;
  }
  codec = rv_codec_new(errstr, errstr_size);
  if (!codec) {
    err = RV_ERR_CONFIG;
    goto out;
  }
  rk = make_producer(opts, &r, errstr, errstr_size);
  if (!rk) {
    err = RV_ERR_CONFIG;
    goto out;
  }
  rkt = rd_kafka_topic_new(rk, opts->topic, NULL);
  if (!rkt) {
    err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "topic %s: %s", opts->topic,
                  rd_kafka_err2str(rd_kafka_last_error()));
    goto out;
  }

  bucket_t bucket;
  bucket_init(&bucket, opts->rate);
  r.t0_us = r.last_report_us = rv_mono_us();
  while (!stopped(stop, 1) && (opts->count < 0 || res->read < opts->count)) {
    int got = rv_source_next(src, &rec, errstr, errstr_size);
    if (got == 0) break;
    if (got < 0) {
      err = got;
      res->input_error = 1;
      break;
    }
    res->read++;
    if (opts->delete_ops) {
      free(rec.vector);
      free(rec.metadata);
      rec.vector = NULL;
      rec.metadata = NULL;
      rec.dim = 0;
      rec.op = RV_OP_DELETE;
    }
    err = encode(codec, opts, &rec, &value, errstr, errstr_size);
    if (err) {
      res->input_error = err == RV_ERR_CORRUPT;
      break;
    }
    int64_t wait;
    while ((wait = bucket_take(&bucket)) > 0 && !stopped(stop, 2)) {
      if (wait < 1000) wait = 1000; /* the bucket holds >= 10 ms, so 1 ms naps keep the rate */
      rd_kafka_poll(rk, (int)(wait / 1000));
    }
    probe_t *probe = NULL;
    int every = opts->wait_every > 0 ? opts->wait_every : 1;
    if (r.vis && res->sent % every == 0 && !(probe = probe_new(&rec))) {
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
      break;
    }
    rd_kafka_resp_err_t e = send_one(rk, rkt, &rec, &value, probe, stop);
    if (e) {
      probe_free(probe);
      r.produce_failed++;
      if (!r.first_err[0]) snprintf(r.first_err, sizeof r.first_err, "produce: %s", rd_kafka_err2str(e));
    } else {
      res->sent++;
    }
    char fatal[256];
    if (rd_kafka_fatal_error(rk, fatal, sizeof fatal)) {
      err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "producer fatal error: %s", fatal);
      break;
    }
    rd_kafka_poll(rk, 0);
    report(&r, 0);
  }

  /* Flush what was sent, in slices so progress keeps printing. */
  int64_t deadline = rv_mono_ms() + (opts->flush_timeout_ms > 0 ? opts->flush_timeout_ms : 60000);
  while (res->delivered + r.dr_failed < res->sent && !stopped(stop, 2)) {
    int64_t left = deadline - rv_mono_ms();
    if (left <= 0) break;
    rd_kafka_flush(rk, (int)(left < 1000 ? left : 1000));
    report(&r, 0);
  }
  if (res->delivered + r.dr_failed < res->sent) {
    /* Give up on the rest: purged messages get failed delivery reports. */
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(rk, 0);
    if (!r.first_err[0])
      snprintf(r.first_err, sizeof r.first_err, "not acknowledged within %d ms", opts->flush_timeout_ms);
  }
  report(&r, 1);

out:
  res->elapsed_ms = r.t0_us ? (rv_mono_us() - r.t0_us) / 1000 : 0;
  res->failed = res->read - res->delivered;
  if (!err && res->failed > 0)
    err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "%lld of %lld records not delivered (%s)",
                  (long long)res->failed, (long long)res->read, r.first_err[0] ? r.first_err : "stopped");
  if (rkt) rd_kafka_topic_destroy(rkt);
  if (rk) rd_kafka_destroy(rk); /* purges: the last delivery reports (and their searches) come first */
  if (vis.rm) {
    visibility_finish(&vis, res);
    if (!err && (res->not_visible > 0 || res->found < res->visible))
      err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "%lld of %lld probed records not visible, %lld not found (%s)",
                    (long long)res->not_visible, (long long)res->probed, (long long)(res->visible - res->found),
                    res->first_visible_error);
    free(vis.lat_us);
    pthread_cond_destroy(&vis.cond);
    pthread_mutex_destroy(&vis.lock);
  }
  rv_vector_record_close(&rec);
  rv_buf_close(&value);
  rv_codec_destroy(codec);
  rv_source_close(src);
  return err;
}

/* ---- endpoints file --------------------------------------------------------- */

static rv_err_t copy_out(char *dst, size_t size, const char *src, const char *what, char *errstr,
                         size_t errstr_size) {
  if (!dst) return RV_OK;
  if (strlen(src) >= size) return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s too long", what);
  memcpy(dst, src, strlen(src) + 1);
  return RV_OK;
}

rv_err_t rv_endpoints_read(const char *path, const char *collection, char *bootstrap, size_t bootstrap_size,
                           char *topic, size_t topic_size, char *errstr, size_t errstr_size) {
  FILE *f = fopen(path, "r");
  if (!f)
    return rv_errf(errno == ENOENT ? RV_ERR_NOT_FOUND : RV_ERR_IO, errstr, errstr_size, "%s: %s", path,
                   strerror(errno));
  json_error_t jerr;
  json_t *root = json_loadf(f, 0, &jerr);
  fclose(f);
  if (!root)
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s:%d: %s", path, jerr.line, jerr.text);
  rv_err_t err = RV_OK;
  if (bootstrap) {
    const char *bs = json_string_value(json_object_get(json_object_get(root, "kafka"), "bootstrap"));
    err = bs ? copy_out(bootstrap, bootstrap_size, bs, "kafka.bootstrap", errstr, errstr_size)
             : rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s: no kafka.bootstrap", path);
  }
  if (!err && topic) {
    json_t *cols = json_object_get(root, "collections");
    json_t *col = NULL;
    char name[RV_TOPIC_MAX];
    if (collection) {
      col = json_object_get(cols, collection);
      if (!json_is_object(col))
        err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s: no collection \"%s\"", path, collection);
      else
        snprintf(name, sizeof name, "%s", collection);
    } else if (json_is_object(cols) && json_object_size(cols) == 1) {
      const char *key;
      json_t *val;
      json_object_foreach(cols, key, val) {
        col = val;
        snprintf(name, sizeof name, "%s", key);
      }
    } else {
      err = rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "%s: names %zu collections; choose one", path,
                    json_object_size(cols));
    }
    if (!err) {
      const char *t = json_string_value(json_object_get(col, "source_topic"));
      char deflt[RV_TOPIC_MAX + 16];
      if (!t) {
        snprintf(deflt, sizeof deflt, "%s.vectors", name);
        t = deflt;
      }
      err = copy_out(topic, topic_size, t, "source_topic", errstr, errstr_size);
    }
  }
  json_decref(root);
  return err;
}

/* ---- rv_produce_main ---------------------------------------------------------- */

static void usage(FILE *f, const char *prog) {
  fprintf(f,
          "usage: %s --input PATH (--brokers LIST | --endpoints FILE) (--topic T | --collection C) [options]\n"
          "Publishes the vectors of a local file to Kafka, key = vector id, with an\n"
          "idempotent producer, and waits until the brokers acknowledged them.\n"
          "\n"
          "Where to:\n"
          "  -b, --brokers LIST        bootstrap servers (host:port,...)\n"
          "  -e, --endpoints FILE      endpoints JSON written by a running pipeline; supplies\n"
          "                            kafka.bootstrap and collections.<C>.source_topic\n"
          "  -t, --topic T             topic to publish to\n"
          "  -c, --collection C        publish to C's source topic (from --endpoints; without\n"
          "                            it, C.vectors); may be left out if the endpoints\n"
          "                            file names one collection\n"
          "What:\n"
          "  -i, --input PATH          input file, gzip-compressed or not\n"
          "  -F, --format FMT          idx | fvecs | jsonl (default: from the file name:\n"
          "                            *-ubyte[.gz], *.fvecs, *.jsonl/*.ndjson/*.json)\n"
          "                              idx:   IDX unsigned-byte images (MNIST/Fashion-MNIST),\n"
          "                                     raw pixel values 0..255 as floats\n"
          "                              fvecs: int32 LE dim + dim float32 LE per vector\n"
          "                              jsonl: {\"id\",\"op\",\"vector\",\"metadata\",\"event_time\"}\n"
          "                                     per line\n"
          "  -l, --labels PATH         idx labels file; by default the matching\n"
          "                            *-labels-idx1-ubyte[.gz] beside the images, if any;\n"
          "                            records then carry {\"label\":N,\"class\":\"...\"}\n"
          "  -p, --id-prefix P         idx/fvecs ids are P<index> (default \"v\"; index from 0)\n"
          "  -s, --skip N              skip the first N records\n"
          "  -n, --count N             publish at most N records\n"
          "  -d, --delete              publish DELETE records for the ids read (no vectors)\n"
          "How:\n"
          "  -r, --rate N              at most N records per second (0 = unlimited, default)\n"
          "  -f, --framing F           avro (default) | confluent | json\n"
          "                              confluent: 0x00 + 4-byte schema id + Avro\n"
          "  -S, --schema-id N         schema id for confluent framing (default 1)\n"
          "      --flush-timeout MS    wait at most MS for acknowledgements at the end\n"
          "                            (default 60000)\n"
          "Read your writes:\n"
          "  -w, --wait-visible URL    after each delivery, search the serve at URL\n"
          "                            (ws://host:port) for the record's vector with\n"
          "                            \"after\" = its partition and offset, and report\n"
          "                            producer send -> searchable latency (p50/p99/max)\n"
          "                            and whether each id was among the hits (k 10);\n"
          "                            the collection is --collection, else the topic\n"
          "                            without \".vectors\"\n"
          "      --wait-timeout MS     longest wait for one record's answer (default 10000)\n"
          "      --wait-every N        search for every N-th record only (default 1: each),\n"
          "                            so probing does not load the serve at high rates\n"
          "  -q, --quiet               no progress lines on stderr\n"
          "  -h, --help                this text\n"
          "\n"
          "Progress goes to stderr every second; at the end stdout gets\n"
          "\"produced N records to TOPIC (M failed)\", and with --wait-visible a line\n"
          "\"visible: V of N records searchable, F found by id; send -> searchable\n"
          "p50 X ms, p99 Y ms, max Z ms\". SIGINT/SIGTERM stop reading and\n"
          "flush what was sent; a second one gives up on the flush.\n"
          "Exit status: 0 every record delivered (and, with --wait-visible, visible and\n"
          "found), 1 delivery, Kafka or visibility failure, 2 bad usage,\n"
          "65 malformed or truncated input (records before it are published),\n"
          "66 input cannot be opened or read.\n",
          prog);
}

static int parse_i64(const char *s, int64_t lo, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo) return -1;
  *out = v;
  return 0;
}

typedef struct signal_waiter {
  sigset_t set;
  volatile int *stop;
} signal_waiter_t;

/* Turns SIGINT/SIGTERM into stop levels 1, 2, ... (no work in a handler). */
static void *wait_signals(void *arg) {
  signal_waiter_t *w = arg;
  for (;;) {
    int sig;
    if (sigwait(&w->set, &sig) == 0) __atomic_add_fetch(w->stop, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

int rv_produce_main(int argc, char **argv) {
  enum { OPT_FLUSH_TIMEOUT = 1000, OPT_WAIT_TIMEOUT, OPT_WAIT_EVERY };
  static const struct option longopts[] = {
      {"brokers", required_argument, NULL, 'b'},   {"endpoints", required_argument, NULL, 'e'},
      {"topic", required_argument, NULL, 't'},     {"collection", required_argument, NULL, 'c'},
      {"input", required_argument, NULL, 'i'},     {"format", required_argument, NULL, 'F'},
      {"labels", required_argument, NULL, 'l'},    {"id-prefix", required_argument, NULL, 'p'},
      {"skip", required_argument, NULL, 's'},      {"count", required_argument, NULL, 'n'},
      {"rate", required_argument, NULL, 'r'},      {"framing", required_argument, NULL, 'f'},
      {"schema-id", required_argument, NULL, 'S'}, {"delete", no_argument, NULL, 'd'},
      {"quiet", no_argument, NULL, 'q'},           {"flush-timeout", required_argument, NULL, OPT_FLUSH_TIMEOUT},
      {"wait-visible", required_argument, NULL, 'w'}, {"wait-timeout", required_argument, NULL, OPT_WAIT_TIMEOUT},
      {"wait-every", required_argument, NULL, OPT_WAIT_EVERY},
      {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0}};
  const char *prog = argc > 0 ? argv[0] : "produce";
  rv_produce_opts_t opts;
  rv_produce_opts_init(&opts);
  opts.progress = 1;
  const char *endpoints = NULL, *collection = NULL;
  int c;
  int64_t v;
  char *end;
  optind = 0; /* glibc: rescan from argv[1] even if getopt ran before */
  while ((c = getopt_long(argc, argv, "b:e:t:c:i:F:l:p:s:n:r:f:S:w:dqh", longopts, NULL)) != -1) {
    switch (c) {
    case 'b': opts.brokers = optarg; break;
    case 'e': endpoints = optarg; break;
    case 't': opts.topic = optarg; break;
    case 'c': collection = optarg; break;
    case 'i': opts.input = optarg; break;
    case 'l': opts.source.labels_path = optarg; break;
    case 'p': opts.source.id_prefix = optarg; break;
    case 'd': opts.delete_ops = 1; break;
    case 'w':
      if (strncmp(optarg, "ws://", 5) || !optarg[5]) {
        fprintf(stderr, "produce: --wait-visible wants the ws://host:port URL of a serve, not \"%s\"\n", optarg);
        return 2;
      }
      opts.wait_visible = optarg;
      break;
    case OPT_WAIT_TIMEOUT:
      if (parse_i64(optarg, 1, &v) || v > 3600 * 1000) {
        fprintf(stderr, "produce: bad --wait-timeout \"%s\" (1..3600000 ms)\n", optarg);
        return 2;
      }
      opts.wait_timeout_ms = (int)v;
      break;
    case OPT_WAIT_EVERY:
      if (parse_i64(optarg, 1, &v) || v > 1000000) {
        fprintf(stderr, "produce: bad --wait-every \"%s\" (1..1000000)\n", optarg);
        return 2;
      }
      opts.wait_every = (int)v;
      break;
    case 'q': opts.progress = 0; break;
    case 'F':
      if (rv_source_format_parse(optarg, &opts.format)) {
        fprintf(stderr, "produce: unknown format \"%s\" (idx, fvecs, jsonl)\n", optarg);
        return 2;
      }
      break;
    case 'f':
      if (rv_framing_parse(optarg, &opts.framing)) {
        fprintf(stderr, "produce: unknown framing \"%s\" (avro, confluent, json)\n", optarg);
        return 2;
      }
      break;
    case 's':
    case 'n':
      if (parse_i64(optarg, 0, &v)) {
        fprintf(stderr, "produce: --%s wants a count >= 0, not \"%s\"\n", c == 's' ? "skip" : "count", optarg);
        return 2;
      }
      if (c == 's') opts.source.skip = v;
      else opts.count = v;
      break;
    case 'S':
      if (parse_i64(optarg, 0, &v) || v > UINT32_MAX) {
        fprintf(stderr, "produce: --schema-id wants 0..%u, not \"%s\"\n", UINT32_MAX, optarg);
        return 2;
      }
      opts.schema_id = (uint32_t)v;
      break;
    case 'r':
      errno = 0;
      opts.rate = strtod(optarg, &end);
      if (errno || end == optarg || *end || !(opts.rate >= 0) || !isfinite(opts.rate)) {
        fprintf(stderr, "produce: --rate wants records per second >= 0, not \"%s\"\n", optarg);
        return 2;
      }
      break;
    case OPT_FLUSH_TIMEOUT:
      if (parse_i64(optarg, 1, &v) || v > 24 * 3600 * 1000) {
        fprintf(stderr, "produce: bad --flush-timeout \"%s\"\n", optarg);
        return 2;
      }
      opts.flush_timeout_ms = (int)v;
      break;
    case 'h': usage(stdout, prog); return 0;
    default: usage(stderr, prog); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "produce: unexpected argument \"%s\"\n", argv[optind]);
    return 2;
  }

  char errstr[1024];
  char bootstrap[2048], topic[RV_TOPIC_MAX + 16];
  if (endpoints) {
    rv_err_t err = rv_endpoints_read(endpoints, collection, opts.brokers ? NULL : bootstrap, sizeof bootstrap,
                                     opts.topic ? NULL : topic, sizeof topic, errstr, sizeof errstr);
    if (err) {
      fprintf(stderr, "produce: %s\n", errstr);
      return err == RV_ERR_CONFIG ? 2 : EX_NOINPUT;
    }
    if (!opts.brokers) opts.brokers = bootstrap;
    if (!opts.topic) opts.topic = topic;
  } else if (!opts.topic && collection) {
    snprintf(topic, sizeof topic, "%s.vectors", collection);
    opts.topic = topic;
  }
  if (!opts.input || !opts.brokers || !opts.topic) {
    fprintf(stderr, "produce: %s is required\n",
            !opts.input ? "--input" : !opts.brokers ? "--brokers or --endpoints" : "--topic or --collection");
    usage(stderr, prog);
    return 2;
  }
  char visible_collection[RV_TOPIC_MAX + 16];
  if (opts.wait_visible) {
    size_t tl = strlen(opts.topic);
    if (collection) snprintf(visible_collection, sizeof visible_collection, "%s", collection);
    else if (tl > 8 && tl - 8 < sizeof visible_collection && !strcmp(opts.topic + tl - 8, ".vectors"))
      snprintf(visible_collection, sizeof visible_collection, "%.*s", (int)(tl - 8), opts.topic);
    else {
      fprintf(stderr, "produce: --wait-visible needs --collection (topic %s does not end in .vectors)\n", opts.topic);
      return 2;
    }
    if (opts.delete_ops) {
      fprintf(stderr, "produce: --wait-visible searches for the records: it does not go with --delete\n");
      return 2;
    }
    opts.collection = visible_collection;
  }
  if (opts.format == RV_SOURCE_AUTO && rv_source_format_detect(opts.input) == RV_SOURCE_AUTO) {
    fprintf(stderr, "produce: cannot tell the format of %s from its name; give --format\n", opts.input);
    return 2;
  }

  /* Signals go to a waiter thread; block them first so librdkafka's threads
   * inherit the mask. */
  volatile int stop = 0;
  signal_waiter_t waiter = {.stop = &stop};
  sigemptyset(&waiter.set);
  sigaddset(&waiter.set, SIGINT);
  sigaddset(&waiter.set, SIGTERM);
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &waiter.set, &old);
  pthread_t thr;
  int have_thr = pthread_create(&thr, NULL, wait_signals, &waiter) == 0;

  rv_produce_result_t res;
  rv_err_t err = rv_produce_run(&opts, &stop, &res, errstr, sizeof errstr);

  if (have_thr) {
    pthread_cancel(thr); /* sigwait is a cancellation point */
    pthread_join(thr, NULL);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);

  if (err) fprintf(stderr, "produce: %s\n", errstr);
  if (res.input_error && res.read == 0) return err == RV_ERR_CORRUPT ? EX_DATAERR : EX_NOINPUT;
  printf("produced %lld records to %s (%lld failed)\n", (long long)res.delivered, opts.topic,
         (long long)res.failed);
  if (opts.wait_visible)
    printf("visible: %lld of %lld records searchable, %lld found by id; send -> searchable p50 %.1f ms, "
           "p99 %.1f ms, max %.1f ms\n",
           (long long)res.visible, (long long)res.probed, (long long)res.found, res.latency_p50_us / 1000.0,
           res.latency_p99_us / 1000.0, res.latency_max_us / 1000.0);
  fflush(stdout);
  if (res.input_error) return err == RV_ERR_CORRUPT ? EX_DATAERR : EX_NOINPUT;
  return err ? 1 : 0;
}
