#include "rv_fanout.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"
#include "rv_log.h"
#include "rv_time.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(9))

typedef enum { PART_HITS = 1, PART_MISSING = 2, PART_CLIENT_ERROR = 3 } part_state_t;

typedef struct part {
  part_state_t state;
  json_t *hits;          /* PART_HITS: the shard's hits array */
  uint64_t as_of;
  rv_proto_code_t code;  /* PART_CLIENT_ERROR */
  char *msg;             /* PART_MISSING / PART_CLIENT_ERROR: the reason, owned */
  char *extra;           /* PART_CLIENT_ERROR: member text for the error reply, owned */
} part_t;

struct rv_fanout {
  atomic_int left; /* shards not reported yet; whoever takes it to 0 finishes */
  int n, k;
  char *id_json;
  uint64_t conn;
  int64_t received_us;
  rv_completions_t *done;
  size_t headroom;
  rv_request_t req;
  part_t parts[];
};

rv_fanout_t *rv_fanout_new(int n_shards, int k, const char *id_json, uint64_t conn, int64_t received_us,
                           rv_completions_t *done, size_t headroom) {
  if (n_shards < 1) return NULL;
  rv_fanout_t *f = calloc(1, sizeof *f + (size_t)n_shards * sizeof(part_t));
  if (!f) return NULL;
  if (id_json && !(f->id_json = strdup(id_json))) {
    free(f);
    return NULL;
  }
  atomic_init(&f->left, n_shards);
  f->n = n_shards;
  f->k = k;
  f->conn = conn;
  f->received_us = received_us;
  f->done = done;
  f->headroom = headroom;
  rv_request_init(&f->req);
  return f;
}

static void fanout_free(rv_fanout_t *f) {
  for (int i = 0; i < f->n; i++) {
    json_decref(f->parts[i].hits);
    free(f->parts[i].msg);
    free(f->parts[i].extra);
  }
  free(f->id_json);
  rv_request_close(&f->req);
  free(f);
}

rv_request_t *rv_fanout_request(rv_fanout_t *f) { return &f->req; }

/* ---- the merge ---- */

typedef struct cand {
  json_t *hit;
  const char *id;
  float score;
} cand_t;

static int cand_cmp(const void *pa, const void *pb) {
  const cand_t *a = pa, *b = pb;
  if (a->score < b->score) return -1;
  if (a->score > b->score) return 1;
  return strcmp(a->id, b->id);
}

char *rv_hits_merge(json_t *const *lists, int n, int k, size_t *len) {
  size_t total = 0;
  for (int i = 0; i < n; i++)
    if (json_is_array(lists[i])) total += json_array_size(lists[i]);
  cand_t *c = malloc((total ? total : 1) * sizeof *c);
  json_t *out = json_array();
  char *text = NULL;
  if (!c || !out) goto done;
  size_t m = 0;
  for (int i = 0; i < n; i++) {
    if (!json_is_array(lists[i])) continue;
    for (size_t j = 0; j < json_array_size(lists[i]); j++) {
      json_t *h = json_array_get(lists[i], j);
      json_t *id = json_object_get(h, "id"), *score = json_object_get(h, "score");
      if (!json_is_string(id) || !json_is_number(score)) continue;
      /* Scores were written from float32 with 9 digits: back to the same float. */
      c[m++] = (cand_t){h, json_string_value(id), (float)json_number_value(score)};
    }
  }
  qsort(c, m, sizeof *c, cand_cmp);
  size_t kept = 0;
  for (size_t i = 0; i < m && kept < (size_t)k; i++) {
    int dup = 0; /* shards are disjoint by id; a duplicate (e.g. while resharding) keeps its best place */
    for (size_t j = 0; j < json_array_size(out) && !dup; j++)
      dup = !strcmp(json_string_value(json_object_get(json_array_get(out, j), "id")), c[i].id);
    if (dup) continue;
    if (json_array_append(out, c[i].hit)) goto done;
    kept++;
  }
  text = json_dumps(out, DUMP_FLAGS);
  if (text) *len = strlen(text);
done:
  free(c);
  json_decref(out);
  return text;
}

/* ---- finishing ---- */

static void push(rv_fanout_t *f, char *text, size_t len) {
  rv_msg_t *m = text ? rv_msg_new(f->conn, f->headroom, text, len) : NULL;
  free(text);
  if (!m) {
    rv_error("serve", "out of memory queueing a fan-out reply for connection %llu", (unsigned long long)f->conn);
    return;
  }
  rv_completions_push(f->done, m);
}

static char *results_text(rv_fanout_t *f, size_t *len) {
  json_t *lists[f->n > 0 ? f->n : 1];
  uint64_t as_of = 0;
  for (int i = 0; i < f->n; i++) {
    lists[i] = f->parts[i].state == PART_HITS ? f->parts[i].hits : NULL;
    if (lists[i]) as_of += f->parts[i].as_of;
  }
  size_t hits_len = 0;
  char *hits = rv_hits_merge(lists, f->n, f->k, &hits_len);
  if (!hits) return NULL;
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_appendf(&b, "{\"type\":\"results\",\"id\":%s,\"hits\":", f->id_json ? f->id_json : "null");
  if (!err) err = rv_buf_append(&b, hits, hits_len);
  free(hits);
  int missing = 0;
  for (int i = 0; i < f->n; i++) missing += f->parts[i].state == PART_MISSING;
  if (!err)
    err = rv_buf_appendf(&b, ",\"took_us\":%lld,\"cached\":false,\"as_of\":%llu,\"partial\":%s",
                         (long long)(rv_mono_us() - f->received_us), (unsigned long long)as_of,
                         missing ? "true" : "false");
  if (!err && missing) {
    err = rv_buf_appendf(&b, ",\"missing_shards\":[");
    for (int i = 0, first = 1; i < f->n && !err; i++)
      if (f->parts[i].state == PART_MISSING) {
        err = rv_buf_appendf(&b, "%s%d", first ? "" : ",", i);
        first = 0;
      }
    json_t *why = json_array();
    for (int i = 0; i < f->n && why; i++)
      if (f->parts[i].state == PART_MISSING) json_array_append_new(why, json_string(f->parts[i].msg ? f->parts[i].msg : ""));
    char *why_text = why ? json_dumps(why, DUMP_FLAGS) : NULL;
    json_decref(why);
    if (!err) err = why_text ? rv_buf_appendf(&b, "],\"shard_errors\":%s", why_text) : RV_ERR_NOMEM;
    free(why_text);
  }
  if (!err) err = rv_buf_append(&b, "}", 1);
  if (err) {
    rv_buf_close(&b);
    return NULL;
  }
  *len = b.len;
  return (char *)b.base;
}

static void finish(rv_fanout_t *f) {
  size_t len = 0;
  char *text = NULL;
  for (int i = 0; i < f->n && !text; i++)
    if (f->parts[i].state == PART_CLIENT_ERROR)
      text = rv_reply_error_extra(f->id_json, f->parts[i].code, f->parts[i].msg, f->parts[i].extra, &len);
  if (!text) text = results_text(f, &len);
  if (!text) text = rv_reply_error(f->id_json, RV_PROTO_INTERNAL, "out of memory", &len);
  push(f, text, len);
  fanout_free(f);
}

static void reported(rv_fanout_t *f) {
  if (atomic_fetch_sub_explicit(&f->left, 1, memory_order_acq_rel) == 1) finish(f);
}

static int client_caused(rv_proto_code_t code) {
  return code == RV_PROTO_BAD_REQUEST || code == RV_PROTO_BAD_FILTER || code == RV_PROTO_WRONG_DIM ||
         code == RV_PROTO_NOT_YET_VISIBLE;
}

void rv_fanout_hits(rv_fanout_t *f, int shard, const char *hits_json, size_t len, uint64_t as_of) {
  part_t *p = &f->parts[shard];
  json_error_t jerr;
  p->hits = json_loadb(hits_json, len, 0, &jerr);
  if (json_is_array(p->hits)) {
    p->state = PART_HITS;
    p->as_of = as_of;
  } else {
    json_decref(p->hits);
    p->hits = NULL;
    p->state = PART_MISSING;
    p->msg = strdup("unreadable hits");
  }
  reported(f);
}

void rv_fanout_error(rv_fanout_t *f, int shard, rv_proto_code_t code, const char *msg, const char *extra_member) {
  part_t *p = &f->parts[shard];
  p->state = client_caused(code) ? PART_CLIENT_ERROR : PART_MISSING;
  p->code = code;
  p->msg = strdup(msg ? msg : "");
  if (p->state == PART_CLIENT_ERROR && extra_member && extra_member[0]) p->extra = strdup(extra_member);
  reported(f);
}

void rv_fanout_reply(rv_fanout_t *f, int shard, json_t *reply) {
  const char *type = json_string_value(json_object_get(reply, "type"));
  part_t *p = &f->parts[shard];
  if (type && !strcmp(type, "results") && json_is_array(json_object_get(reply, "hits"))) {
    p->state = PART_HITS;
    p->hits = json_incref(json_object_get(reply, "hits"));
    json_t *as_of = json_object_get(reply, "as_of");
    p->as_of = json_is_integer(as_of) ? (uint64_t)json_integer_value(as_of) : 0;
    if (json_is_true(json_object_get(reply, "partial"))) { /* a shard that fans out itself and missed some */
      p->state = PART_MISSING;
      p->msg = strdup("the shard's own answer was partial");
    }
    reported(f);
    return;
  }
  if (type && !strcmp(type, "error")) {
    const char *message = json_string_value(json_object_get(reply, "message"));
    rv_proto_code_t code = rv_proto_code_parse(json_string_value(json_object_get(reply, "code")));
    char *extra = NULL;
    json_t *pos = json_object_get(reply, "positions");
    if (code == RV_PROTO_NOT_YET_VISIBLE && json_is_object(pos)) {
      char *t = json_dumps(pos, JSON_COMPACT);
      if (t && (extra = malloc(strlen(t) + 16))) sprintf(extra, "\"positions\":%s", t);
      free(t);
    }
    char msg[512];
    snprintf(msg, sizeof msg, "shard %d: %s: %s", shard, rv_proto_code_name(code), message ? message : "");
    rv_fanout_error(f, shard, code, msg, extra);
    free(extra);
    return;
  }
  rv_fanout_error(f, shard, RV_PROTO_INTERNAL, "the shard sent something other than results or error", NULL);
}
