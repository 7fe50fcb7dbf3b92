#include "rv_changelog.h"

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
  size_t len = out->len;
  rv_err_t err = rv_codec_encode_change(codec, &ch, out, errstr, errstr_size);
  if (err) out->len = len;
  return err;
}
