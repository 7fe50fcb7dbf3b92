#include "rv_changelog.h"

rv_err_t rv_changelog_send(rv_producer_t *p, rv_codec_t *codec, const char *topic, const rv_batch_t *b,
                           rv_buf_t *scratch, char *errstr, size_t errstr_size) {
  for (size_t i = 0; i < b->n_rows; i++) {
    const rv_batch_row_t *row = &b->rows[i];
    const rv_vector_record_t *rec = &row->rec;
    int del = rec->op == RV_OP_DELETE;
    /* Borrows the row's fields: never rv_change_close this one. */
    rv_change_t ch = {
        .id = rec->id,
        .op = rec->op,
        .src_partition = row->partition,
        .src_offset = row->offset,
        .vector = del ? NULL : rec->vector,
        .dim = del ? 0 : rec->dim,
        .attributes = del ? NULL : rec->metadata,
        .has_event_time = rec->has_event_time,
        .event_time_ms = rec->event_time_ms,
        .created_at_ms = row->created_at_ms,
        .traceparent = row->traceparent,
    };
    rv_buf_reset(scratch);
    rv_err_t err = rv_codec_encode_change(codec, &ch, scratch, errstr, errstr_size);
    if (!err)
      err = rv_producer_send(p, topic, rec->id, rec->id_len, scratch->base, scratch->len, NULL, 0, errstr,
                             errstr_size);
    if (err) return err;
  }
  return RV_OK;
}
