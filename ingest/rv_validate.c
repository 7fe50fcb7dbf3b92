#include "rv_validate.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_collection.h"

const char *rv_reject_code(rv_reject_t r) {
  switch (r) {
  case RV_REJECT_NONE: return "ok";
  case RV_REJECT_DECODE: return "decode_error";
  case RV_REJECT_UNKNOWN_SCHEMA: return "unknown_schema_id";
  case RV_REJECT_BAD_ID: return "bad_id";
  case RV_REJECT_RESERVED_ID: return "reserved_id";
  case RV_REJECT_WRONG_DIM: return "wrong_dim";
  case RV_REJECT_NON_FINITE: return "non_finite";
  case RV_REJECT_MISSING_VECTOR: return "missing_vector";
  case RV_REJECT_BAD_METADATA: return "bad_metadata";
  case RV_REJECT_METADATA_TOO_LARGE: return "metadata_too_large";
  case RV_REJECT_BAD_EVENT_TIME: return "bad_event_time";
  case RV_REJECT_INCOMPATIBLE_SCHEMA: return "incompatible_schema";
  case RV_REJECT_KEY_ID_MISMATCH: return "key_id_mismatch";
  case RV_REJECT_DB: return "rejected_by_database";
  }
  return "unknown";
}

int rv_utf8_valid(const void *s, size_t len) {
  const uint8_t *p = s, *end = p + len;
  while (p < end) {
    uint8_t c = *p;
    if (c < 0x80) {
      p++;
      continue;
    }
    size_t n;
    uint32_t min, cp;
    if ((c & 0xE0) == 0xC0) n = 2, min = 0x80, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) n = 3, min = 0x800, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) n = 4, min = 0x10000, cp = c & 0x07;
    else return 0; /* continuation byte or 0xF8..0xFF as a lead */
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
      if ((p[i] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    p += n;
  }
  return 1;
}

static rv_reject_t reject(rv_reject_t r, char *msg, size_t msg_size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static rv_reject_t reject(rv_reject_t r, char *msg, size_t msg_size, const char *fmt, ...) {
  if (msg_size > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msg_size, fmt, ap);
    va_end(ap);
  }
  return r;
}

static rv_reject_t check_id(const rv_vector_record_t *r, char *msg, size_t msg_size) {
  if (!r->id || r->id_len == 0) return reject(RV_REJECT_BAD_ID, msg, msg_size, "id is empty");
  if (r->id_len > RV_ID_MAX)
    return reject(RV_REJECT_BAD_ID, msg, msg_size, "id is %zu bytes, at most %d allowed", r->id_len, RV_ID_MAX);
  if (memchr(r->id, 0, r->id_len)) return reject(RV_REJECT_BAD_ID, msg, msg_size, "id contains a NUL byte");
  if (!rv_utf8_valid(r->id, r->id_len)) return reject(RV_REJECT_BAD_ID, msg, msg_size, "id is not valid UTF-8");
  /* The changelog is keyed by id, and its own records (position markers) use keys under this prefix. */
  if (r->id_len >= sizeof RV_RESERVED_ID_PREFIX - 1 &&
      !memcmp(r->id, RV_RESERVED_ID_PREFIX, sizeof RV_RESERVED_ID_PREFIX - 1))
    return reject(RV_REJECT_RESERVED_ID, msg, msg_size,
                  "id %.40s starts with \"" RV_RESERVED_ID_PREFIX "\", which is reserved for the changelog's own "
                  "records (position markers)", r->id);
  return RV_REJECT_NONE;
}

static rv_reject_t check_vector(const rv_vector_record_t *r, int dim, char *msg, size_t msg_size) {
  if (r->op == RV_OP_DELETE) return RV_REJECT_NONE;
  if (!r->vector) return reject(RV_REJECT_MISSING_VECTOR, msg, msg_size, "UPSERT without a vector");
  if (r->dim != dim)
    return reject(RV_REJECT_WRONG_DIM, msg, msg_size, "vector has %d floats, collection dim is %d", r->dim, dim);
  for (int i = 0; i < r->dim; i++)
    if (!isfinite(r->vector[i]))
      return reject(RV_REJECT_NON_FINITE, msg, msg_size, "vector[%d] is %s", i,
                    isnan(r->vector[i]) ? "NaN" : "infinite");
  return RV_REJECT_NONE;
}

/* On success *normalised is the compact form of the metadata (or NULL when the record has none). */
static rv_reject_t check_metadata(const rv_vector_record_t *r, int max_bytes, char **normalised, char *msg,
                                  size_t msg_size) {
  *normalised = NULL;
  if (!r->metadata) return RV_REJECT_NONE;
  size_t len = strlen(r->metadata);
  if (max_bytes > 0 && len > (size_t)max_bytes)
    return reject(RV_REJECT_METADATA_TOO_LARGE, msg, msg_size, "metadata is %zu bytes, at most %d allowed", len,
                  max_bytes);
  json_error_t jerr;
  json_t *j = json_loadb(r->metadata, len, 0, &jerr);
  if (!j) return reject(RV_REJECT_BAD_METADATA, msg, msg_size, "metadata is not JSON: %s", jerr.text);
  if (!json_is_object(j)) {
    json_decref(j);
    return reject(RV_REJECT_BAD_METADATA, msg, msg_size, "metadata is JSON but not an object");
  }
  *normalised = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!*normalised) return reject(RV_REJECT_BAD_METADATA, msg, msg_size, "metadata could not be re-encoded");
  return RV_REJECT_NONE;
}

static rv_reject_t check_event_time(const rv_vector_record_t *r, int64_t now_ms, char *msg, size_t msg_size) {
  if (!r->has_event_time) return RV_REJECT_NONE;
  if (r->event_time_ms < RV_EVENT_TIME_MIN_MS)
    return reject(RV_REJECT_BAD_EVENT_TIME, msg, msg_size, "event_time %lld ms is before 2000-01-01",
                  (long long)r->event_time_ms);
  if (r->event_time_ms > now_ms + RV_EVENT_TIME_MAX_AHEAD_MS)
    return reject(RV_REJECT_BAD_EVENT_TIME, msg, msg_size, "event_time %lld ms is more than a day ahead",
                  (long long)r->event_time_ms);
  return RV_REJECT_NONE;
}

rv_reject_t rv_validate_record(rv_vector_record_t *r, const rv_validate_rules_t *rules, char *msg,
                               size_t msg_size) {
  rv_reject_t rj;
  if ((rj = check_id(r, msg, msg_size)) || (rj = check_vector(r, rules->dim, msg, msg_size)) ||
      (rj = check_event_time(r, rules->now_ms, msg, msg_size)))
    return rj;
  char *meta = NULL;
  if ((rj = check_metadata(r, rules->max_metadata_bytes, &meta, msg, msg_size))) return rj;
  /* Accepted: normalise. */
  free(r->metadata);
  r->metadata = meta;
  if (r->op == RV_OP_DELETE) {
    free(r->vector);
    r->vector = NULL;
    r->dim = 0;
  }
  if (msg_size > 0) msg[0] = 0;
  return RV_REJECT_NONE;
}

/* Appends up to 64 bytes of s to out as printable ASCII (others as \xNN). */
static void printable(char *out, size_t out_size, const void *s, size_t len) {
  const uint8_t *p = s;
  size_t o = 0;
  for (size_t i = 0; i < len && i < 64 && o + 5 < out_size; i++)
    o += (size_t)snprintf(out + o, out_size - o, p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' ? "%c" : "\\x%02x",
                          p[i]);
  if (len > 64 && o + 4 < out_size) o += (size_t)snprintf(out + o, out_size - o, "...");
  if (out_size) out[o < out_size ? o : out_size - 1] = 0;
}

rv_reject_t rv_validate_key(const rv_vector_record_t *r, const void *key, size_t key_len, char *msg,
                            size_t msg_size) {
  if (!key || key_len == 0) return RV_REJECT_NONE;
  if (key_len == r->id_len && r->id && !memcmp(key, r->id, key_len)) return RV_REJECT_NONE;
  char k[320], id[320];
  printable(k, sizeof k, key, key_len);
  printable(id, sizeof id, r->id ? r->id : "", r->id ? r->id_len : 0);
  return reject(RV_REJECT_KEY_ID_MISMATCH, msg, msg_size, "Kafka key '%s' (%zu bytes) differs from the id '%s' (%zu bytes)",
                k, key_len, id, r->id_len);
}
