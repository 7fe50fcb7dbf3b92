#include "rv_protocol.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"

/* float scores need 9 significant digits to round-trip */
#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(9))

const char *rv_proto_code_name(rv_proto_code_t code) {
  switch (code) {
  case RV_PROTO_OK: return "ok";
  case RV_PROTO_BAD_REQUEST: return "bad_request";
  case RV_PROTO_UNKNOWN_COLLECTION: return "unknown_collection";
  case RV_PROTO_UNKNOWN_REGION: return "unknown_region";
  case RV_PROTO_WRONG_DIM: return "wrong_dim";
  case RV_PROTO_UNSUPPORTED: return "unsupported";
  case RV_PROTO_OVERLOADED: return "overloaded";
  case RV_PROTO_INTERNAL: return "internal";
  }
  return "internal";
}

void rv_request_init(rv_request_t *r) { memset(r, 0, sizeof *r); }

void rv_request_close(rv_request_t *r) {
  free(r->id_json);
  free(r->vector);
  rv_request_init(r);
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are invalid, as
 * jansson requires). */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}

/* A JSON string for s, with invalid UTF-8 bytes replaced by U+FFFD so that one
 * bad stored id cannot make a whole reply unparseable. NULL on no memory. */
static json_t *string_value(const char *s) {
  json_t *v = json_string(s);
  if (v) return v;
  size_t n = strlen(s);
  rv_buf_t b;
  rv_buf_init(&b);
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    size_t l = utf8_seq_len(p + i, n - i);
    rv_err_t err = l ? rv_buf_append(&b, p + i, l) : rv_buf_append(&b, "\xEF\xBF\xBD", 3);
    if (err) {
      rv_buf_close(&b);
      return NULL;
    }
    i += l ? l : 1;
  }
  v = json_stringn(b.base ? (const char *)b.base : "", b.len);
  rv_buf_close(&b);
  return v;
}

/* Appends s as a JSON string literal. */
static rv_err_t append_string(rv_buf_t *b, const char *s) {
  json_t *v = string_value(s);
  if (!v) return RV_ERR_NOMEM;
  char *text = json_dumps(v, DUMP_FLAGS);
  json_decref(v);
  if (!text) return RV_ERR_NOMEM;
  rv_err_t err = rv_buf_append(b, text, strlen(text));
  free(text);
  return err;
}

static char *finish(rv_buf_t *b, rv_err_t err, size_t *len) {
  if (err) {
    rv_buf_close(b);
    return NULL;
  }
  *len = b->len;
  return (char *)b->base; /* ownership passes to the caller */
}

/* ---- parsing ---- */

static rv_proto_code_t fail(rv_proto_code_t code, char *msg, size_t msg_size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes the reason into msg and returns code. */
static rv_proto_code_t fail(rv_proto_code_t code, char *msg, size_t msg_size, const char *fmt,
                            ...) {
  if (msg_size) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msg_size, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* Reads an optional integer field into *out (unchanged when absent). */
static rv_proto_code_t int_field(json_t *obj, const char *name, int lo, int hi, int *out, char *msg,
                                 size_t msg_size) {
  json_t *v = json_object_get(obj, name);
  if (!v) return RV_PROTO_OK;
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "\"%s\" must be an integer in %d..%d", name,
                lo, hi);
  }
  *out = (int)json_integer_value(v);
  return RV_PROTO_OK;
}

/* Copies a string field into dst[RV_NAME_MAX]; "" when absent and !required. */
static rv_proto_code_t name_field(json_t *obj, const char *name, int required, char *dst, char *msg,
                                  size_t msg_size) {
  json_t *v = json_object_get(obj, name);
  dst[0] = 0;
  if (!v) {
    if (!required) return RV_PROTO_OK;
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "missing \"%s\"", name);
  }
  if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= RV_NAME_MAX ||
      strlen(json_string_value(v)) != json_string_length(v))
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size,
                "\"%s\" must be a non-empty string of at most 63 bytes", name);
  memcpy(dst, json_string_value(v), json_string_length(v) + 1);
  return RV_PROTO_OK;
}

static rv_proto_code_t parse_search(json_t *obj, rv_request_t *out, char *msg, size_t msg_size) {
  rv_proto_code_t code;
  if ((code = name_field(obj, "collection", 1, out->collection, msg, msg_size))) return code;
  if ((code = name_field(obj, "region", 0, out->region, msg, msg_size))) return code;
  out->k = RV_PROTO_K_DEFAULT;
  if ((code = int_field(obj, "k", 1, RV_PROTO_K_MAX, &out->k, msg, msg_size))) return code;
  out->ef = 0;
  if ((code = int_field(obj, "ef", 1, RV_PROTO_EF_MAX, &out->ef, msg, msg_size))) return code;

  json_t *vec = json_object_get(obj, "vector");
  if (!vec) return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "missing \"%s\"", "vector");
  size_t n = json_is_array(vec) ? json_array_size(vec) : 0;
  if (n == 0 || n > RV_PROTO_DIM_MAX)
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size,
                "\"vector\" must be an array of 1..65536 numbers");
  out->vector = malloc(n * sizeof(float));
  if (!out->vector) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
  out->dim = (int)n;
  for (size_t i = 0; i < n; i++) {
    json_t *x = json_array_get(vec, i);
    float f = json_is_number(x) ? (float)json_number_value(x) : NAN;
    if (!isfinite(f))
      return fail(RV_PROTO_BAD_REQUEST, msg, msg_size,
                  "vector[%zu] is not a number in the float range", i);
    out->vector[i] = f;
  }
  return RV_PROTO_OK;
}

static rv_proto_code_t parse_object(json_t *obj, rv_request_t *out, char *msg, size_t msg_size) {
  json_t *id = json_object_get(obj, "id");
  if (!id) return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "missing \"%s\"", "id");
  if (!json_is_string(id) && !json_is_number(id))
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "\"id\" must be a string or a number");
  char *id_json = json_dumps(id, DUMP_FLAGS);
  if (!id_json) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
  if (strlen(id_json) > RV_PROTO_ID_MAX) {
    free(id_json);
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "\"id\" is longer than 256 bytes");
  }
  out->id_json = id_json;

  json_t *type = json_object_get(obj, "type");
  if (!type || !json_is_string(type))
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "\"type\" must be a string");
  const char *t = json_string_value(type);
  if (!strcmp(t, "ping")) {
    out->type = RV_REQ_PING;
    return RV_PROTO_OK;
  }
  if (!strcmp(t, "search")) {
    out->type = RV_REQ_SEARCH;
    return parse_search(obj, out, msg, msg_size);
  }
  return fail(RV_PROTO_UNSUPPORTED, msg, msg_size, "unsupported message type \"%.64s\"", t);
}

rv_proto_code_t rv_request_parse(const char *text, size_t len, rv_request_t *out, char *msg,
                                 size_t msg_size) {
  json_error_t jerr;
  if (msg_size) msg[0] = 0;
  json_t *root = json_loadb(text, len, 0, &jerr);
  if (!root) return fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "invalid JSON: %s", jerr.text);
  rv_proto_code_t code;
  if (!json_is_object(root))
    code = fail(RV_PROTO_BAD_REQUEST, msg, msg_size, "a message must be a JSON object");
  else
    code = parse_object(root, out, msg, msg_size);
  json_decref(root);
  if (code != RV_PROTO_OK) {
    /* keep only the id, for the error reply */
    char *id_json = out->id_json;
    out->id_json = NULL;
    rv_request_close(out);
    out->id_json = id_json;
  }
  return code;
}

/* ---- formatting ---- */

char *rv_reply_error(const char *id_json, rv_proto_code_t code, const char *message, size_t *len) {
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_appendf(&b, "{\"type\":\"error\",\"id\":%s,\"code\":\"%s\",\"message\":",
                                id_json ? id_json : "null", rv_proto_code_name(code));
  if (!err) err = append_string(&b, message ? message : "");
  if (!err) err = rv_buf_append(&b, "}", 1);
  return finish(&b, err, len);
}

char *rv_reply_pong(const char *id_json, int64_t ts_ms, size_t *len) {
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_appendf(&b, "{\"type\":\"pong\",\"id\":%s,\"timestamp\":%lld}",
                                id_json ? id_json : "null", (long long)ts_ms);
  return finish(&b, err, len);
}

static json_t *hit_value(const rv_hit_t *h) {
  json_t *o = json_object();
  if (!o) return NULL;
  json_t *id = string_value(h->id ? h->id : "");
  json_t *score = isfinite(h->score) ? json_real((double)h->score) : json_null();
  int bad = json_object_set_new(o, "id", id) || json_object_set_new(o, "score", score);
  if (!bad && h->metadata) {
    json_t *meta = json_loads(h->metadata, JSON_DECODE_ANY, NULL);
    if (!meta) meta = string_value(h->metadata);
    bad = json_object_set_new(o, "metadata", meta);
  }
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

char *rv_hits_json(const rv_hit_list_t *hits, size_t *len) {
  json_t *arr = json_array();
  if (!arr) return NULL;
  for (int i = 0; i < hits->n; i++) {
    if (json_array_append_new(arr, hit_value(&hits->hits[i]))) {
      json_decref(arr);
      return NULL;
    }
  }
  char *text = json_dumps(arr, DUMP_FLAGS);
  json_decref(arr);
  if (text) *len = strlen(text);
  return text;
}

char *rv_reply_results(const char *id_json, const char *hits_json, size_t hits_len, int64_t took_us,
                       int cached, uint64_t as_of, size_t *len) {
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_reserve(&b, hits_len + 160 + (id_json ? strlen(id_json) : 4));
  if (!err)
    err =
        rv_buf_appendf(&b, "{\"type\":\"results\",\"id\":%s,\"hits\":", id_json ? id_json : "null");
  if (!err) err = rv_buf_append(&b, hits_json, hits_len);
  if (!err)
    err = rv_buf_appendf(&b, ",\"took_us\":%lld,\"cached\":%s,\"as_of\":%llu}", (long long)took_us,
                         cached ? "true" : "false", (unsigned long long)as_of);
  return finish(&b, err, len);
}
