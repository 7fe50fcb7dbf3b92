#include "rv_batch.h"

#include <stdlib.h>
#include <string.h>

#include "rv_time.h"

void rv_batch_init(rv_batch_t *b) { memset(b, 0, sizeof *b); }

static void free_src(const rv_batch_t *b, void *src) {
  if (src && b->free_src) b->free_src(src);
}

/* Frees the row's record, traceparent and sources (its own and the replaced ones). */
static void row_close(rv_batch_t *b, rv_batch_row_t *r) {
  rv_vector_record_close(&r->rec);
  free(r->traceparent);
  r->traceparent = NULL;
  free_src(b, r->src);
  r->src = NULL;
  for (int32_t k = r->older; k >= 0; k = b->older[k].next) {
    free_src(b, b->older[k].src);
    b->older[k].src = NULL;
  }
  r->older = -1;
}

void rv_batch_clear(rv_batch_t *b) {
  for (size_t i = 0; i < b->n_rows; i++) row_close(b, &b->rows[i]);
  b->n_older = 0;
  b->n_rows = 0;
  b->n_pos = 0;
  b->n_messages = b->n_accepted = b->n_rejected = 0;
  b->opened_ms = 0;
  b->n_coded = 0;
  b->sq8_size = b->pq_size = 0;
  if (b->slots) memset(b->slots, 0xff, b->cap_slots * sizeof *b->slots);
}

void rv_batch_close(rv_batch_t *b) {
  rv_batch_clear(b);
  free(b->rows);
  free(b->pos);
  free(b->slots);
  free(b->sq8);
  free(b->pq);
  free(b->older);
  void (*fn)(void *) = b->free_src;
  rv_batch_init(b);
  b->free_src = fn;
}

/* FNV-1a */
static uint64_t hash_id(const char *id, size_t len) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)id[i]) * 1099511628211ull;
  return h;
}

static size_t find_slot(const rv_batch_t *b, const char *id, size_t len) {
  size_t mask = b->cap_slots - 1;
  for (size_t i = hash_id(id, len) & mask;; i = (i + 1) & mask) {
    int32_t r = b->slots[i];
    if (r < 0) return i;
    const rv_vector_record_t *rec = &b->rows[r].rec;
    if (rec->id_len == len && !memcmp(rec->id, id, len)) return i;
  }
}

/* Keeps the load factor at or below 1/2. */
static rv_err_t grow_slots(rv_batch_t *b, size_t want_rows) {
  if (want_rows * 2 <= b->cap_slots) return RV_OK;
  size_t cap = b->cap_slots ? b->cap_slots * 2 : 1024;
  while (want_rows * 2 > cap) cap *= 2;
  int32_t *s = malloc(cap * sizeof *s);
  if (!s) return RV_ERR_NOMEM;
  memset(s, 0xff, cap * sizeof *s);
  free(b->slots);
  b->slots = s;
  b->cap_slots = cap;
  for (size_t r = 0; r < b->n_rows; r++) {
    const rv_vector_record_t *rec = &b->rows[r].rec;
    b->slots[find_slot(b, rec->id, rec->id_len)] = (int32_t)r;
  }
  return RV_OK;
}

rv_batch_row_t *rv_batch_find(rv_batch_t *b, const char *id, size_t id_len) {
  if (!b->cap_slots) return NULL;
  int32_t r = b->slots[find_slot(b, id, id_len)];
  return r < 0 ? NULL : &b->rows[r];
}

rv_err_t rv_batch_add(rv_batch_t *b, rv_vector_record_t *rec, int32_t partition, int64_t offset, int64_t pin_ms,
                      char *traceparent) {
  return rv_batch_add_src(b, rec, partition, offset, pin_ms, traceparent, NULL);
}

rv_err_t rv_batch_add_src(rv_batch_t *b, rv_vector_record_t *rec, int32_t partition, int64_t offset,
                          int64_t pin_ms, char *traceparent, void *src) {
  rv_batch_row_t fresh = {.rec = *rec, .partition = partition, .offset = offset, .pin_ms = pin_ms,
                          .traceparent = traceparent, .src = src, .older = -1};
  rv_vector_record_init(rec); /* ownership moved into fresh */
  if (b->n_rows >= INT32_MAX || grow_slots(b, b->n_rows + 1)) goto nomem;
  size_t slot = find_slot(b, fresh.rec.id, fresh.rec.id_len);
  if (b->slots[slot] >= 0) {
    rv_batch_row_t *old = &b->rows[b->slots[slot]];
    fresh.pin_ms = old->pin_ms; /* an id is pinned by its first sight */
    fresh.older = old->older;
    if (old->src) { /* kept with the row: a dead letter of the id covers every record of it */
      if (b->n_older == b->cap_older) {
        size_t cap = b->cap_older ? b->cap_older * 2 : 64;
        rv_batch_src_t *o = b->n_older >= INT32_MAX ? NULL : realloc(b->older, cap * sizeof *o);
        if (!o) goto nomem;
        b->older = o;
        b->cap_older = cap;
      }
      b->older[b->n_older] = (rv_batch_src_t){old->src, old->older};
      fresh.older = (int32_t)b->n_older++;
      old->src = NULL;
    }
    old->older = -1;
    row_close(b, old);
    *old = fresh;
  } else {
    if (b->n_rows == b->cap_rows) {
      size_t cap = b->cap_rows ? b->cap_rows * 2 : 256;
      rv_batch_row_t *rows = realloc(b->rows, cap * sizeof *rows);
      if (!rows) goto nomem;
      b->rows = rows;
      b->cap_rows = cap;
    }
    b->rows[b->n_rows] = fresh;
    b->slots[slot] = (int32_t)b->n_rows++;
  }
  b->n_accepted++;
  return RV_OK;
nomem:
  fresh.older = -1;
  row_close(b, &fresh);
  return RV_ERR_NOMEM;
}

static size_t older_sources(const rv_batch_t *b, int32_t k, void (*fn)(void *, void *), void *arg) {
  if (k < 0) return 0;
  size_t n = older_sources(b, b->older[k].next, fn, arg) + 1;
  if (fn && b->older[k].src) fn(b->older[k].src, arg);
  return n;
}

size_t rv_batch_row_sources(const rv_batch_t *b, size_t i, void (*fn)(void *src, void *arg), void *arg) {
  const rv_batch_row_t *r = &b->rows[i];
  size_t n = older_sources(b, r->older, fn, arg) + 1;
  if (fn && r->src) fn(r->src, arg);
  return n;
}

rv_err_t rv_batch_drop_rows(rv_batch_t *b, const uint8_t *drop) {
  size_t kept = 0;
  for (size_t i = 0; i < b->n_rows; i++) {
    if (drop[i]) {
      uint64_t n = rv_batch_row_sources(b, i, NULL, NULL);
      b->n_accepted -= n < b->n_accepted ? n : b->n_accepted;
      b->n_rejected += n;
      row_close(b, &b->rows[i]);
      continue;
    }
    b->rows[kept++] = b->rows[i];
  }
  b->n_rows = kept;
  b->n_coded = 0;
  /* The index: rebuilt for the rows that stay. */
  if (b->slots) memset(b->slots, 0xff, b->cap_slots * sizeof *b->slots);
  for (size_t r = 0; r < b->n_rows; r++) {
    const rv_vector_record_t *rec = &b->rows[r].rec;
    b->slots[find_slot(b, rec->id, rec->id_len)] = (int32_t)r;
  }
  return RV_OK;
}

rv_err_t rv_batch_view(const rv_batch_t *b, size_t lo, size_t n, rv_batch_t *view) {
  rv_batch_init(view);
  if (lo > b->n_rows || n > b->n_rows - lo) return RV_ERR_INVALID;
  view->rows = b->rows + lo;
  view->n_rows = view->cap_rows = n;
  view->n_accepted = n;
  int coded = b->n_coded == b->n_rows;
  view->sq8_size = b->sq8_size;
  view->sq8_version = b->sq8_version;
  view->sq8 = coded && b->sq8 ? b->sq8 + lo * b->sq8_size : NULL;
  view->pq_size = b->pq_size;
  view->pq_version = b->pq_version;
  view->pq = coded && b->pq ? b->pq + lo * b->pq_size : NULL;
  view->n_coded = coded ? n : 0;
  if (grow_slots(view, n ? n : 1)) {
    rv_batch_init(view);
    return RV_ERR_NOMEM;
  }
  for (size_t r = 0; r < n; r++) {
    const rv_vector_record_t *rec = &view->rows[r].rec;
    view->slots[find_slot(view, rec->id, rec->id_len)] = (int32_t)r;
  }
  return RV_OK;
}

void rv_batch_view_close(rv_batch_t *view) {
  free(view->slots);
  rv_batch_init(view);
}

rv_err_t rv_batch_consumed(rv_batch_t *b, int32_t partition, int64_t offset, int64_t expected_next) {
  rv_batch_pos_t *p = NULL;
  for (size_t i = 0; i < b->n_pos; i++)
    if (b->pos[i].partition == partition) p = &b->pos[i];
  if (!p) {
    if (b->n_pos == b->cap_pos) {
      size_t cap = b->cap_pos ? b->cap_pos * 2 : 16;
      rv_batch_pos_t *pos = realloc(b->pos, cap * sizeof *pos);
      if (!pos) return RV_ERR_NOMEM;
      b->pos = pos;
      b->cap_pos = cap;
    }
    p = &b->pos[b->n_pos++];
    p->partition = partition;
    p->expected_next = expected_next;
  }
  p->next_offset = offset + 1;
  if (!b->n_messages++) b->opened_ms = rv_mono_ms();
  return RV_OK;
}
