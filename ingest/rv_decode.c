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

/* ---- the decoder: registry lookups, cached per schema id ---- */

typedef struct cached {
  uint32_t id;
  rv_vector_resolver_t *resolver; /* NULL when the schema is incompatible */
  char *why;                      /* why it is incompatible; NULL otherwise */
} cached_t;

struct rv_decoder {
  rv_codec_t *codec;        /* borrowed */
  uint32_t schema_id;
  rv_registry_t *registry;  /* borrowed; may be NULL */
  cached_t *cache;
  size_t n_cache;
  uint64_t fetches;
};

rv_decoder_t *rv_decoder_new(rv_codec_t *codec, uint32_t schema_id, rv_registry_t *registry, char *errstr,
                             size_t errstr_size) {
  rv_decoder_t *d = calloc(1, sizeof *d);
  if (!d || !(d->cache = calloc(RV_DECODER_MAX_SCHEMAS, sizeof *d->cache))) {
    free(d);
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  d->codec = codec;
  d->schema_id = schema_id;
  d->registry = registry;
  return d;
}

void rv_decoder_destroy(rv_decoder_t *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n_cache; i++) {
    rv_vector_resolver_destroy(d->cache[i].resolver);
    free(d->cache[i].why);
  }
  free(d->cache);
  free(d);
}

uint64_t rv_decoder_fetches(const rv_decoder_t *d) { return d->fetches; }

/* Finds or fetches and resolves the writer schema of id. Returns RV_OK with
 * *entry set (its resolver NULL when incompatible), RV_ERR_NOT_FOUND or
 * RV_ERR_CORRUPT (permanent: msg set), or a retriable error. With a full
 * cache, *entry points at scratch, which the caller must clear with clear_scratch. */
static rv_err_t lookup(rv_decoder_t *d, uint32_t id, cached_t **entry, cached_t *scratch, char *msg,
                       size_t msg_size) {
  for (size_t i = 0; i < d->n_cache; i++) {
    if (d->cache[i].id == id) {
      *entry = &d->cache[i];
      return RV_OK;
    }
  }
  char *text = NULL;
  size_t len = 0;
  d->fetches++;
  rv_err_t err = rv_registry_fetch(d->registry, id, &text, &len, msg, msg_size);
  if (err) return err;
  cached_t c = {.id = id};
  char why[512];
  rv_err_t rerr = rv_vector_resolver_new(text, len, &c.resolver, why, sizeof why);
  free(text);
  if (rerr == RV_ERR_NOMEM) return rv_errf(RV_ERR_NOMEM, msg, msg_size, "out of memory resolving schema id %u", id);
  if (rerr && !(c.why = strdup(why))) {
    return rv_errf(RV_ERR_NOMEM, msg, msg_size, "out of memory");
  }
  if (d->n_cache < RV_DECODER_MAX_SCHEMAS) {
    d->cache[d->n_cache] = c;
    *entry = &d->cache[d->n_cache++];
  } else {
    *scratch = c;
    *entry = scratch;
  }
  return RV_OK;
}

rv_err_t rv_decoder_decode(rv_decoder_t *d, const void *key, size_t key_len, const void *value, size_t value_len,
                           rv_vector_record_t *out, rv_reject_t *reject, char *msg, size_t msg_size) {
  uint32_t id;
  size_t off;
  if (!d->registry || !value || !rv_confluent_parse(value, value_len, &id, &off) || id == d->schema_id) {
    *reject = rv_decode_message(d->codec, d->schema_id, key, key_len, value, value_len, out, msg, msg_size);
    return RV_OK;
  }
  rv_vector_record_init(out);
  cached_t scratch = {0}, *c = NULL;
  rv_err_t err = lookup(d, id, &c, &scratch, msg, msg_size);
  if (err == RV_ERR_NOT_FOUND || err == RV_ERR_CORRUPT) {
    *reject = RV_REJECT_UNKNOWN_SCHEMA;
    return RV_OK;
  }
  if (err) {
    *reject = RV_REJECT_NONE;
    return err;
  }
  if (!c->resolver) {
    *reject = fail(out, RV_REJECT_INCOMPATIBLE_SCHEMA, msg, msg_size, "writer schema id %u: %s", id, c->why);
  } else {
    char e[256];
    *reject = rv_vector_resolver_decode(c->resolver, (const uint8_t *)value + off, value_len - off, out, e, sizeof e)
                  ? fail(out, RV_REJECT_DECODE, msg, msg_size, "schema id %u: %s", id, e)
                  : RV_REJECT_NONE;
  }
  if (c == &scratch) {
    rv_vector_resolver_destroy(scratch.resolver);
    free(scratch.why);
  }
  return RV_OK;
}
