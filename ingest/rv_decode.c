#include "rv_decode.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static rv_reject_t fail(rv_vector_record_t *out, rv_reject_t r, char *msg, size_t msg_size, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static rv_reject_t fail(rv_vector_record_t *out, rv_reject_t r, char *msg, size_t msg_size, const char *fmt, ...) {
  rv_vector_record_close(out);
  if (msg_size > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msg_size, fmt, ap);
    va_end(ap);
  }
  return r;
}

static char *dup_bytes(const void *p, size_t n) {
  char *s = malloc(n + 1);
  if (!s) return NULL;
  if (n) memcpy(s, p, n);
  s[n] = 0;
  return s;
}

rv_reject_t rv_decode_json(const void *data, size_t len, rv_vector_record_t *out, char *msg, size_t msg_size) {
  rv_vector_record_init(out);
  json_error_t jerr;
  json_t *root = json_loadb(data, len, 0, &jerr);
  if (!root) return fail(out, RV_REJECT_DECODE, msg, msg_size, "JSON: %s (line %d)", jerr.text, jerr.line);
  rv_reject_t rj = RV_REJECT_NONE;
  if (!json_is_object(root)) {
    rj = fail(out, RV_REJECT_DECODE, msg, msg_size, "JSON record is not an object");
    goto done;
  }

  json_t *v = json_object_get(root, "id");
  if (json_is_string(v)) {
    out->id_len = json_string_length(v);
    if (!(out->id = dup_bytes(json_string_value(v), out->id_len))) goto nomem;
  }

  v = json_object_get(root, "op");
  if (v && !json_is_null(v)) {
    const char *op = json_string_value(v);
    if (op && !strcasecmp(op, "UPSERT")) out->op = RV_OP_UPSERT;
    else if (op && !strcasecmp(op, "DELETE")) out->op = RV_OP_DELETE;
    else {
      rj = fail(out, RV_REJECT_DECODE, msg, msg_size, "JSON \"op\" must be \"UPSERT\" or \"DELETE\"");
      goto done;
    }
  }

  v = json_object_get(root, "vector");
  if (v && !json_is_null(v)) {
    if (!json_is_array(v) || json_array_size(v) > (1u << 24)) {
      rj = fail(out, RV_REJECT_DECODE, msg, msg_size, "JSON \"vector\" must be an array of numbers");
      goto done;
    }
    size_t n = json_array_size(v);
    if (!(out->vector = malloc((n ? n : 1) * sizeof *out->vector))) goto nomem;
    out->dim = (int)n;
    for (size_t i = 0; i < n; i++) {
      json_t *e = json_array_get(v, i);
      if (!json_is_number(e)) {
        rj = fail(out, RV_REJECT_DECODE, msg, msg_size, "JSON \"vector\"[%zu] is not a number", i);
        goto done;
      }
      /* A double beyond float range becomes infinite and is rejected by validation as non_finite. */
      out->vector[i] = (float)json_number_value(e);
    }
  }

  v = json_object_get(root, "metadata");
  if (v && !json_is_null(v)) {
    if (json_is_string(v)) out->metadata = dup_bytes(json_string_value(v), json_string_length(v));
    else out->metadata = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!out->metadata) goto nomem;
  }

  v = json_object_get(root, "event_time");
  if (v && !json_is_null(v)) {
    if (!json_is_integer(v)) {
      rj = fail(out, RV_REJECT_DECODE, msg, msg_size, "JSON \"event_time\" must be integer milliseconds");
      goto done;
    }
    out->has_event_time = 1;
    out->event_time_ms = (int64_t)json_integer_value(v);
  }
  goto done;

nomem:
  rj = fail(out, RV_REJECT_DECODE, msg, msg_size, "out of memory decoding JSON");
done:
  json_decref(root);
  return rj;
}

rv_reject_t rv_decode_message(rv_codec_t *codec, uint32_t schema_id, const void *key, size_t key_len,
                              const void *value, size_t value_len, rv_vector_record_t *out, char *msg,
                              size_t msg_size) {
  rv_vector_record_init(out);
  if (!value) {
    if (!key) return fail(out, RV_REJECT_DECODE, msg, msg_size, "null value without a key");
    if (!(out->id = dup_bytes(key, key_len)))
      return fail(out, RV_REJECT_DECODE, msg, msg_size, "out of memory decoding tombstone");
    out->id_len = key_len;
    out->op = RV_OP_DELETE;
    return RV_REJECT_NONE;
  }
  if (value_len == 0) return fail(out, RV_REJECT_DECODE, msg, msg_size, "empty value");

  const uint8_t *p = value;
  size_t off = 0;
  uint32_t got;
  if (p[0] == 0x00) {
    if (!rv_confluent_parse(value, value_len, &got, &off))
      return fail(out, RV_REJECT_DECODE, msg, msg_size, "truncated Confluent header (%zu bytes)", value_len);
    if (got != schema_id)
      return fail(out, RV_REJECT_UNKNOWN_SCHEMA, msg, msg_size, "schema id %u, expected %u", got, schema_id);
  } else if (p[0] == '{') {
    return rv_decode_json(value, value_len, out, msg, msg_size);
  }
  char err[256];
  if (rv_codec_decode_vector(codec, p + off, value_len - off, out, err, sizeof err))
    return fail(out, RV_REJECT_DECODE, msg, msg_size, "%s", err);
  return RV_REJECT_NONE;
}
