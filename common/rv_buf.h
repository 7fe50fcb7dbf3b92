#ifndef RV_BUF_H
#define RV_BUF_H
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

/* A growable byte buffer: {base, len} plus capacity. Zero-initialise or rv_buf_init. */
typedef struct rv_buf {
  uint8_t *base; /* owned; NULL until the first append */
  size_t len;    /* bytes in use */
  size_t cap;    /* bytes allocated */
} rv_buf_t;

void rv_buf_init(rv_buf_t *b);
/* Frees the storage; the buffer is empty and reusable afterwards. */
void rv_buf_close(rv_buf_t *b);
/* Makes room for at least `extra` more bytes. On failure the buffer is unchanged. */
rv_err_t rv_buf_reserve(rv_buf_t *b, size_t extra);
rv_err_t rv_buf_append(rv_buf_t *b, const void *data, size_t n);
/* Appends printf-formatted text (no NUL counted in len, but one is kept after it). */
rv_err_t rv_buf_appendf(rv_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Big-endian integer appends, for wire formats (PostgreSQL COPY BINARY, Confluent framing). */
rv_err_t rv_buf_put_be16(rv_buf_t *b, uint16_t v);
rv_err_t rv_buf_put_be32(rv_buf_t *b, uint32_t v);
rv_err_t rv_buf_put_be64(rv_buf_t *b, uint64_t v);
static inline void rv_buf_reset(rv_buf_t *b) { b->len = 0; }

#endif
