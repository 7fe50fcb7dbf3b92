#include "rv_changelog.h"

#include <string.h>

/* Avro binary: ints and longs as zigzag varints. */
static uint8_t *put_long(uint8_t *p, int64_t v) {
  uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
  while (z > 0x7f) {
    *p++ = (uint8_t)(z | 0x80);
    z >>= 7;
  }
  *p++ = (uint8_t)z;
  return p;
}

static uint8_t *put_bytes(uint8_t *p, const void *s, size_t n) {
  p = put_long(p, (int64_t)n);
  if (n) memcpy(p, s, n);
  return p + n;
}

rv_err_t rv_changelog_encode_change(const rv_change_t *ch, rv_buf_t *out, char *errstr, size_t errstr_size) {
  if (!ch->id) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "change has no id");
  size_t id_len = strlen(ch->id), attr_len = ch->attributes ? strlen(ch->attributes) : 0;
  size_t tp_len = ch->traceparent ? strlen(ch->traceparent) : 0;
  int dim = ch->vector && ch->dim > 0 ? ch->dim : 0;
  size_t sq8_len = ch->sq8_code && ch->sq8_len > 0 ? (size_t)ch->sq8_len : 0;
  /* Every varint fits in 10 bytes; 12 of them at most, plus the payloads. */
  size_t max = 16 * 10 + id_len + attr_len + tp_len + (size_t)dim * 4 + sq8_len;
  if (rv_buf_reserve(out, max)) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  uint8_t *p = out->base + out->len;
  p = put_bytes(p, ch->id, id_len);
  p = put_long(p, (int64_t)ch->op);
  p = put_long(p, ch->src_partition);
  p = put_long(p, ch->src_offset);
  if (!ch->vector) {
    p = put_long(p, 0);
  } else {
    p = put_long(p, 1);
    if (dim) { /* one block of dim floats (little-endian), then the end marker */
      p = put_long(p, dim);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      memcpy(p, ch->vector, (size_t)dim * 4);
      p += (size_t)dim * 4;
#else
      for (int k = 0; k < dim; k++) {
        uint32_t u;
        memcpy(&u, &ch->vector[k], 4);
        *p++ = (uint8_t)u, *p++ = (uint8_t)(u >> 8), *p++ = (uint8_t)(u >> 16), *p++ = (uint8_t)(u >> 24);
      }
#endif
    }
    p = put_long(p, 0);
  }
  if (!ch->sq8_code) {
    p = put_long(p, 0);
  } else {
    p = put_long(p, 1);
    p = put_long(p, ch->sq8_version);
    p = put_bytes(p, ch->sq8_code, sq8_len);
  }
  p = put_long(p, ch->attributes ? 1 : 0);
  if (ch->attributes) p = put_bytes(p, ch->attributes, attr_len);
  p = put_long(p, ch->has_event_time ? 1 : 0);
  if (ch->has_event_time) p = put_long(p, ch->event_time_ms);
  p = put_long(p, ch->created_at_ms);
  p = put_long(p, ch->traceparent ? 1 : 0);
  if (ch->traceparent) p = put_bytes(p, ch->traceparent, tp_len);
  out->len = (size_t)(p - out->base);
  return RV_OK;
}

rv_err_t rv_changelog_encode(rv_codec_t *codec, const rv_batch_t *b, size_t i, rv_buf_t *out, char *errstr,
                             size_t errstr_size) {
  const rv_batch_row_t *row = &b->rows[i];
  const rv_vector_record_t *rec = &row->rec;
  int live = rec->op != RV_OP_DELETE && rec->vector;
  int coded = live && b->n_coded == b->n_rows && b->sq8_size > 0;
  /* Borrows the row's fields: never rv_change_close this one. */
  rv_change_t ch = {
      .id = rec->id,
      .op = rec->op,
      .src_partition = row->partition,
      .src_offset = row->offset,
      .vector = live ? rec->vector : NULL,
      .dim = live ? rec->dim : 0,
      .sq8_code = coded ? b->sq8 + i * b->sq8_size : NULL,
      .sq8_len = coded ? (int)b->sq8_size : 0,
      .sq8_version = coded ? b->sq8_version : 0,
      .attributes = rec->op == RV_OP_DELETE ? NULL : rec->metadata,
      .has_event_time = rec->has_event_time,
      .event_time_ms = rec->event_time_ms,
      .created_at_ms = row->created_at_ms,
      .traceparent = row->traceparent,
  };
  (void)codec; /* encoded directly: see rv_changelog_encode_change */
  return rv_changelog_encode_change(&ch, out, errstr, errstr_size);
}
