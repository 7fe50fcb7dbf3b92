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
  case RV_PROTO_BAD_FILTER: return "bad_filter";
  case RV_PROTO_NOT_YET_VISIBLE: return "not_yet_visible";
  }
  return "internal";
}

rv_proto_code_t rv_proto_code_parse(const char *name) {
  for (int c = RV_PROTO_BAD_REQUEST; c <= RV_PROTO_NOT_YET_VISIBLE; c++)
    if (name && !strcmp(name, rv_proto_code_name((rv_proto_code_t)c))) return (rv_proto_code_t)c;
  return RV_PROTO_INTERNAL;
}

void rv_request_init(rv_request_t *r) { memset(r, 0, sizeof *r); }

void rv_request_close(rv_request_t *r) {
  free(r->id_json);
  free(r->vector);
  for (int i = 0; i < r->n_filter; i++) {
    for (int j = 0; j < r->filter[i].n_values; j++) free(r->filter[i].values[j].string);
    free(r->filter[i].values);
  }
  free(r->filter);
  free(r->filter_key);
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

/* ---- filters ---- */

/* Largest integer a double holds exactly: integers beyond it would not
 * round-trip to the decimal text a keyword field compares with. */
#define EXACT_INT_MAX 9007199254740992.0

/* One value of an eq/in condition: a string or a finite number. */
static rv_proto_code_t filter_value(json_t *v, const char *field, rv_filter_value_t *out, char *msg,
                                    size_t msg_size) {
  if (json_is_string(v)) {
    size_t n = json_string_length(v);
    if (n > RV_ATTR_VALUE_MAX || strlen(json_string_value(v)) != n)
      return fail(RV_PROTO_BAD_FILTER, msg, msg_size,
                  "filter \"%s\": string values are at most %d bytes, with no NUL", field, RV_ATTR_VALUE_MAX);
    if (!(out->string = strdup(json_string_value(v)))) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
    return RV_PROTO_OK;
  }
  if (json_is_number(v) && isfinite(json_number_value(v))) {
    out->number = json_number_value(v);
    return RV_PROTO_OK;
  }
  return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": values must be strings or numbers", field);
}

/* A range bound: a finite number. */
static rv_proto_code_t filter_bound(json_t *v, const char *field, const char *op, double *out, char *msg,
                                    size_t msg_size) {
  if (!json_is_number(v) || !isfinite(json_number_value(v)))
    return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": \"%s\" takes a number", field, op);
  *out = json_number_value(v);
  return RV_PROTO_OK;
}

/* One field's condition: a bare value (equality) or an object of operators. */
static rv_proto_code_t filter_clause(const char *field, json_t *cond, rv_filter_clause_t *c, char *msg,
                                     size_t msg_size) {
  size_t flen = strlen(field);
  if (flen == 0 || flen >= RV_NAME_MAX)
    return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter field names are 1..63 bytes");
  memcpy(c->field, field, flen + 1);
  c->lo_kind = c->hi_kind = RV_BOUND_OPEN;
  if (!json_is_object(cond)) {
    c->op = RV_FOP_EQ;
    if (!(c->values = calloc(1, sizeof *c->values))) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
    c->n_values = 1;
    return filter_value(cond, field, &c->values[0], msg, msg_size);
  }
  if (json_object_size(cond) == 0)
    return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": empty condition", field);
  const char *op;
  json_t *arg;
  rv_proto_code_t code;
  json_object_foreach(cond, op, arg) {
    int is_lo = !strcmp(op, "gt") || !strcmp(op, "gte"), is_hi = !strcmp(op, "lt") || !strcmp(op, "lte");
    if (is_lo || is_hi) {
      if (c->op && c->op != RV_FOP_RANGE)
        return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": a range cannot be combined with eq or in", field);
      if ((is_lo && c->lo_kind != RV_BOUND_OPEN) || (is_hi && c->hi_kind != RV_BOUND_OPEN))
        return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": more than one %s bound", field,
                    is_lo ? "lower" : "upper");
      c->op = RV_FOP_RANGE;
      int incl = !strcmp(op, "gte") || !strcmp(op, "lte");
      if ((code = filter_bound(arg, field, op, is_lo ? &c->lo : &c->hi, msg, msg_size))) return code;
      if (is_lo) c->lo_kind = incl ? RV_BOUND_INCL : RV_BOUND_EXCL;
      else c->hi_kind = incl ? RV_BOUND_INCL : RV_BOUND_EXCL;
    } else if (!strcmp(op, "eq") || !strcmp(op, "in")) {
      if (c->op)
        return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": \"%s\" cannot be combined with another operator",
                    field, op);
      int in = op[0] == 'i';
      size_t n = in ? (json_is_array(arg) ? json_array_size(arg) : 0) : 1;
      if (in && (n < 1 || n > RV_FILTER_MAX_VALUES))
        return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": \"in\" takes an array of 1..%d values",
                    field, RV_FILTER_MAX_VALUES);
      c->op = in ? RV_FOP_IN : RV_FOP_EQ;
      if (!(c->values = calloc(n, sizeof *c->values))) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
      for (size_t i = 0; i < n; i++) {
        c->n_values++;
        if ((code = filter_value(in ? json_array_get(arg, i) : arg, field, &c->values[i], msg, msg_size))) return code;
      }
    } else {
      return fail(RV_PROTO_BAD_FILTER, msg, msg_size,
                  "filter \"%s\": unknown operator \"%.32s\" (expected eq, in, gt, gte, lt or lte)", field, op);
    }
  }
  return RV_PROTO_OK;
}

/* "filter": {field: condition, ...}, a conjunction. Absent, null or {}: none. */
static rv_proto_code_t parse_filter(json_t *obj, rv_request_t *out, char *msg, size_t msg_size) {
  json_t *flt = json_object_get(obj, "filter");
  if (!flt || json_is_null(flt)) return RV_PROTO_OK;
  if (!json_is_object(flt))
    return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "\"filter\" must be an object of field: condition");
  size_t n = json_object_size(flt);
  if (n == 0) return RV_PROTO_OK;
  if (n > RV_FILTER_MAX_CLAUSES)
    return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "a filter has at most %d fields", RV_FILTER_MAX_CLAUSES);
  if (!(out->filter = calloc(n, sizeof *out->filter))) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
  const char *field;
  json_t *cond;
  json_object_foreach(flt, field, cond) {
    rv_filter_clause_t *c = &out->filter[out->n_filter++]; /* counted first: close frees what it holds */
    rv_proto_code_t code = filter_clause(field, cond, c, msg, msg_size);
    if (code) return code;
  }
  /* Canonical text for the cache key: sorted keys, so the order a client
   * writes its clauses in does not matter. */
  out->filter_key = json_dumps(flt, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
  if (!out->filter_key) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
  return RV_PROTO_OK;
}

static rv_proto_code_t filter_err(rv_err_t err, const char *errstr, char *msg, size_t msg_size) {
  if (err == RV_ERR_NOMEM) return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
  return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "%s", errstr);
}

rv_proto_code_t rv_request_filter_build(const rv_request_t *r, const rv_field_conf_t *fields, int n_fields,
                                        rv_filter_t *f, char *msg, size_t msg_size) {
  char errstr[256];
  for (int i = 0; i < r->n_filter; i++) {
    const rv_filter_clause_t *c = &r->filter[i];
    const rv_field_conf_t *fc = NULL;
    for (int j = 0; j < n_fields && !fc; j++)
      if (!strcmp(fields[j].name, c->field)) fc = &fields[j];
    if (!fc) {
      char names[RV_MAX_FIELDS * RV_NAME_MAX] = "";
      size_t at = 0;
      for (int j = 0; j < n_fields && at < sizeof names; j++)
        at += (size_t)snprintf(names + at, sizeof names - at, "%s%s", j ? ", " : "", fields[j].name);
      if (n_fields) return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "unknown filter field \"%s\" (declared: %s)", c->field, names);
      return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "unknown filter field \"%s\": the collection declares no fields",
                  c->field);
    }
    rv_err_t err = RV_OK;
    if (fc->type == RV_FIELD_NUMBER) {
      if (c->op == RV_FOP_IN)
        return fail(RV_PROTO_BAD_FILTER, msg, msg_size,
                    "filter \"%s\": \"in\" applies to keyword fields; \"%s\" is a number field", c->field, c->field);
      if (c->op == RV_FOP_EQ) {
        if (c->values[0].string)
          return fail(RV_PROTO_BAD_FILTER, msg, msg_size, "filter \"%s\": a number field takes numbers, not \"%.64s\"",
                      c->field, c->values[0].string);
        double v = c->values[0].number;
        err = rv_filter_range(f, c->field, RV_BOUND_INCL, v, RV_BOUND_INCL, v, errstr, sizeof errstr);
      } else {
        err = rv_filter_range(f, c->field, c->lo_kind, c->lo, c->hi_kind, c->hi, errstr, sizeof errstr);
      }
      if (err) return filter_err(err, errstr, msg, msg_size);
      continue;
    }
    if (c->op == RV_FOP_RANGE)
      return fail(RV_PROTO_BAD_FILTER, msg, msg_size,
                  "filter \"%s\": ranges apply to number fields; \"%s\" is a keyword field", c->field, c->field);
    /* Keyword: strings, and integers as their decimal text. */
    const char **vals = calloc((size_t)c->n_values, sizeof *vals);
    char(*ints)[24] = calloc((size_t)c->n_values, sizeof *ints);
    if (!vals || !ints) {
      free(vals);
      free(ints);
      return fail(RV_PROTO_INTERNAL, msg, msg_size, "out of memory");
    }
    for (int j = 0; j < c->n_values; j++) {
      const rv_filter_value_t *v = &c->values[j];
      if (v->string) {
        vals[j] = v->string;
      } else if (v->number == floor(v->number) && fabs(v->number) <= EXACT_INT_MAX) {
        snprintf(ints[j], sizeof ints[j], "%lld", (long long)v->number);
        vals[j] = ints[j];
      } else {
        free(vals);
        free(ints);
        return fail(RV_PROTO_BAD_FILTER, msg, msg_size,
                    "filter \"%s\": a keyword field takes strings (or integers), not %g", c->field, v->number);
      }
    }
    if (c->op == RV_FOP_EQ) err = rv_filter_eq(f, c->field, vals[0], errstr, sizeof errstr);
    else err = rv_filter_in(f, c->field, vals, c->n_values, errstr, sizeof errstr);
    free(vals);
    free(ints);
    if (err) return filter_err(err, errstr, msg, msg_size);
  }
  return RV_PROTO_OK;
}

/* "after": {"partition": P, "offset": O}; absent or null: none. */
static rv_proto_code_t parse_after(json_t *obj, rv_request_t *out, char *msg, size_t msg_size) {
  json_t *a = json_object_get(obj, "after");
  if (!a || json_is_null(a)) return RV_PROTO_OK;
  if (!json_is_object(a))
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size,
                "\"after\" must be an object {\"partition\": P, \"offset\": O}");
  json_t *p = json_object_get(a, "partition"), *o = json_object_get(a, "offset");
  if (!p || !json_is_integer(p) || json_integer_value(p) < 0 || json_integer_value(p) > INT32_MAX)
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size,
                "\"after.partition\" must be an integer in 0..2147483647 (a source partition)");
  if (!o || !json_is_integer(o) || json_integer_value(o) < 0)
    return fail(RV_PROTO_BAD_REQUEST, msg, msg_size,
                "\"after.offset\" must be an integer >= 0 (a source offset)");
  out->has_after = 1;
  out->after_partition = (int32_t)json_integer_value(p);
  out->after_offset = (int64_t)json_integer_value(o);
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
  if ((code = parse_after(obj, out, msg, msg_size))) return code;
  return parse_filter(obj, out, msg, msg_size);
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

char *rv_reply_error_extra(const char *id_json, rv_proto_code_t code, const char *message,
                           const char *extra_member, size_t *len) {
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_appendf(&b, "{\"type\":\"error\",\"id\":%s,\"code\":\"%s\",\"message\":",
                                id_json ? id_json : "null", rv_proto_code_name(code));
  if (!err) err = append_string(&b, message ? message : "");
  if (!err && extra_member && extra_member[0]) err = rv_buf_appendf(&b, ",%s", extra_member);
  if (!err) err = rv_buf_append(&b, "}", 1);
  return finish(&b, err, len);
}

char *rv_request_search_json(const rv_request_t *r, size_t *len) {
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = rv_buf_reserve(&b, 128 + (size_t)r->dim * 16 + (r->filter_key ? strlen(r->filter_key) : 0));
  if (!err) err = rv_buf_appendf(&b, "{\"type\":\"search\",\"collection\":");
  if (!err) err = append_string(&b, r->collection);
  if (!err) err = rv_buf_appendf(&b, ",\"vector\":[");
  for (int i = 0; i < r->dim && !err; i++) /* 9 significant digits round-trip a float32 */
    err = rv_buf_appendf(&b, "%s%.9g", i ? "," : "", (double)r->vector[i]);
  if (!err) err = rv_buf_appendf(&b, "],\"k\":%d", r->k);
  if (!err && r->ef > 0) err = rv_buf_appendf(&b, ",\"ef\":%d", r->ef);
  if (!err && r->filter_key) err = rv_buf_appendf(&b, ",\"filter\":%s", r->filter_key);
  if (!err && r->has_after)
    err = rv_buf_appendf(&b, ",\"after\":{\"partition\":%d,\"offset\":%lld}", (int)r->after_partition,
                         (long long)r->after_offset);
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
