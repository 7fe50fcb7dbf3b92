/* Fuzzes the stream readers of index/: rv_hnsw_read (index/rv_hnsw.h) and
 * rv_attrs_read (index/rv_attrs.h), fed from memory. The input is an HNSW
 * stream, optionally followed by an attribute stream, as rv_hnsw_write and
 * rv_attrs_write produce them one after the other (the seeds are exactly
 * that; gen_index_seeds.c). The attribute reader starts where the HNSW
 * reader stopped, or at byte 0 if the HNSW stream was refused.
 *
 * Each input runs as it is and, if that differs, with the CRC-32C of the
 * quantizer inside the HNSW header recomputed (fuzz_index.h), so mutated
 * codebooks get past their checksum.
 *
 * Checked: a refused stream leaves *out NULL with a message; an accepted
 * index passes fuzz_check_index (ids both ways, vectors finite, searches
 * return live, distinct, ordered results) and writes back to a stream that
 * reads and writes again to the same bytes; likewise the attribute store. */
#include "fuzz_index.h"

static void run(const uint8_t *data, size_t size) {
  fuzz_rd_t r = {data, size, 0};
  rv_hnsw_t *h = (rv_hnsw_t *)(uintptr_t)1; /* must come back NULL on failure */
  char err[512];
  err[0] = 'x';
  rv_err_t e = rv_hnsw_read(NULL, fuzz_rd, &r, &h, err, sizeof err);
  if (e != RV_OK) {
    FUZZ_CHECK(h == NULL, "rv_hnsw_read failed (%s) but *out is %p", rv_err_str(e), (void *)h);
    FUZZ_CHECK(e == RV_ERR_CORRUPT || e == RV_ERR_NOMEM, "rv_hnsw_read returned %s", rv_err_str(e));
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "rv_hnsw_read failed without a message");
    r.pos = 0;
  } else {
    FUZZ_CHECK(h != NULL, "rv_hnsw_read succeeded without an index");
    fuzz_check_index(h);
    fuzz_check_hnsw_round_trip(h);
  }

  rv_attrs_t *a = (rv_attrs_t *)(uintptr_t)1;
  e = rv_attrs_read(fuzz_rd, &r, &a, err, sizeof err);
  if (e != RV_OK) {
    FUZZ_CHECK(a == NULL, "rv_attrs_read failed (%s) but *out is %p", rv_err_str(e), (void *)a);
    FUZZ_CHECK(fuzz_terminated(err, sizeof err), "rv_attrs_read: errstr not terminated");
  } else {
    FUZZ_CHECK(a != NULL, "rv_attrs_read succeeded without a store");
    fuzz_check_attrs(a);
    fuzz_check_attrs_round_trip(a);
    rv_attrs_destroy(a);
  }
  rv_hnsw_destroy(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(data, size);
  if (size < FUZZ_HNSW_QUANT_OFF) return 0;
  uint8_t *fixed = malloc(size);
  FUZZ_CHECK(fixed != NULL, "out of memory");
  memcpy(fixed, data, size);
  fuzz_fix_hnsw_crc(fixed, size, 0);
  if (memcmp(fixed, data, size)) run(fixed, size);
  free(fixed);
  return 0;
}
