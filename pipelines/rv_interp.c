#include "rv_interp.h"

#include <stdlib.h>
#include <string.h>

/* A growable output string; `failed` latches an allocation failure. */
typedef struct sbuf {
  char *base;
  size_t len;
  size_t cap;
  int failed;
} sbuf_t;

static void put(sbuf_t *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (b->len + n + 1 > cap) cap *= 2;
    char *p = realloc(b->base, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->base = p;
    b->cap = cap;
  }
  memcpy(b->base + b->len, s, n);
  b->len += n;
  b->base[b->len] = '\0';
}

static int is_name_start(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '_';
}

static int is_name_char(char ch) { return is_name_start(ch) || (ch >= '0' && ch <= '9'); }

rv_err_t rv__interp(const char *in, size_t len, char **out, char *errstr, size_t errstr_size) {
  *out = NULL;
  if (memchr(in, '\0', len))
    return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "value contains a NUL character");
  sbuf_t b = {0};
  put(&b, "", 0); /* so that an empty result is "" rather than NULL */
  const char *end = in + len;
  const char *p = in;
  while (p < end) {
    const char *dollar = memchr(p, '$', (size_t)(end - p));
    if (!dollar) {
      put(&b, p, (size_t)(end - p));
      break;
    }
    put(&b, p, (size_t)(dollar - p));
    p = dollar + 1;
    if (p < end && *p == '$') { /* "$$" */
      put(&b, "$", 1);
      p++;
      continue;
    }
    if (p >= end || *p != '{') { /* a lone '$' stays as it is */
      put(&b, "$", 1);
      continue;
    }
    const char *name = ++p;
    const char *close = memchr(p, '}', (size_t)(end - p));
    if (!close) {
      free(b.base);
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "unterminated '${' (expected '}')");
    }
    while (p < close && is_name_char(*p)) p++;
    size_t name_len = (size_t)(p - name);
    if (name_len == 0 || !is_name_start(*name) || (p < close && *p != ':')) {
      free(b.base);
      if (name_len > 0 && is_name_start(*name) && p < close)
        return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                       "expected '}' or ':-' after '${%.*s' (only ${VAR} and ${VAR:-default} are supported)",
                       (int)(name_len > 64 ? 64 : name_len), name);
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                     "invalid variable name '%.*s' (expected [A-Za-z_][A-Za-z0-9_]*)",
                     (int)((size_t)(close - name) > 64 ? 64 : (size_t)(close - name)), name);
    }
    const char *deflt = NULL;
    size_t deflt_len = 0;
    if (p < close) { /* ':' */
      if (p + 1 >= close || p[1] != '-') {
        free(b.base);
        return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                       "expected '}' or ':-' after '${%.*s' (only ${VAR} and ${VAR:-default} are supported)",
                       (int)(name_len > 64 ? 64 : name_len), name);
      }
      deflt = p + 2;
      deflt_len = (size_t)(close - deflt);
      for (size_t i = 0; i + 1 < deflt_len; i++) {
        if (deflt[i] == '$' && deflt[i + 1] == '{') {
          free(b.base);
          return rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
                         "nested '${' in the default of '${%.*s:-...}' is not supported",
                         (int)(name_len > 64 ? 64 : name_len), name);
        }
      }
    }
    char var[256];
    if (name_len >= sizeof var) {
      free(b.base);
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "variable name too long (%zu bytes, at most %zu)",
                     name_len, sizeof var - 1);
    }
    memcpy(var, name, name_len);
    var[name_len] = '\0';
    const char *val = getenv(var);
    if (deflt) {
      if (val && *val) put(&b, val, strlen(val));
      else put(&b, deflt, deflt_len);
    } else if (val) {
      put(&b, val, strlen(val));
    } else {
      free(b.base);
      return rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "undefined variable '%s' (use ${%s:-default})", var,
                     var);
    }
    p = close + 1;
  }
  if (b.failed) {
    free(b.base);
    return RV_ERR_NOMEM;
  }
  *out = b.base;
  return RV_OK;
}
