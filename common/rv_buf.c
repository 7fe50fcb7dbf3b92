#include "rv_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rv_buf_init(rv_buf_t *b) { memset(b, 0, sizeof *b); }

void rv_buf_close(rv_buf_t *b) {
  free(b->base);
  memset(b, 0, sizeof *b);
}

rv_err_t rv_buf_reserve(rv_buf_t *b, size_t extra) {
  if (b->cap - b->len > extra) return RV_OK; /* keep one spare byte for a NUL */
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len <= extra) cap *= 2;
  uint8_t *p = realloc(b->base, cap);
  if (!p) return RV_ERR_NOMEM;
  b->base = p;
  b->cap = cap;
  return RV_OK;
}

rv_err_t rv_buf_append(rv_buf_t *b, const void *data, size_t n) {
  rv_err_t err = rv_buf_reserve(b, n);
  if (err) return err;
  if (n) memcpy(b->base + b->len, data, n);
  b->len += n;
  b->base[b->len] = 0;
  return RV_OK;
}

rv_err_t rv_buf_appendf(rv_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return RV_ERR_INVALID;
  rv_err_t err = rv_buf_reserve(b, (size_t)n + 1);
  if (err) return err;
  va_start(ap, fmt);
  vsnprintf((char *)b->base + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return RV_OK;
}

rv_err_t rv_buf_put_be16(rv_buf_t *b, uint16_t v) {
  uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  return rv_buf_append(b, x, 2);
}

rv_err_t rv_buf_put_be32(rv_buf_t *b, uint32_t v) {
  uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  return rv_buf_append(b, x, 4);
}

rv_err_t rv_buf_put_be64(rv_buf_t *b, uint64_t v) {
  rv_err_t err = rv_buf_put_be32(b, (uint32_t)(v >> 32));
  return err ? err : rv_buf_put_be32(b, (uint32_t)v);
}
