#ifndef RV_SNAPSHOT_H
#define RV_SNAPSHOT_H
/* A snapshot file: an HNSW index (graph, codes, quantizer, floats, ids, via
 * rv_hnsw_write), its attribute store (rv_attrs_write) and the changelog
 * positions it reflects (an opaque blob of the caller's: e.g. the replica's
 * per-partition offsets and per-id versions), so a replica restarts by
 * loading the file and resuming the changelog from the positions, with no
 * re-insertion.
 *
 * Format (version 1), every integer little-endian:
 *   0   magic "RVSNAP\x1a\n" (8 bytes)
 *   8   u32 format version (RV_SNAPSHOT_VERSION)
 *   12  u32 endianness marker 0x01020304 (bytes 04 03 02 01)
 *   16  section payloads, back to back
 *   T   section table: u32 count, then per section u32 tag ("HNSW", "ATTR",
 *       "POSN"), u32 reserved 0, u64 offset, u64 length
 *   end trailer (24 bytes): u64 T, u64 file length, u32 CRC-32C of every
 *       byte before it, u32 end magic "RVSE"
 * HNSW and POSN appear once, ATTR at most once; the sections tile [16, T).
 *
 * Saving writes <path>.tmp.<pid>, fsyncs it, renames it over path and fsyncs
 * the directory: a crash or failure leaves the old snapshot (or none), never
 * a torn one; a failed save removes its temporary file.
 * Loading checks the header, the trailer and the length, then streams each
 * section into its reader, which validates every field again, while a
 * second thread computes the checksum over the whole file (both read in
 * 4 MiB chunks); a checksum mismatch wins over any parse result or error,
 * which is discarded. */
#include <stddef.h>

#include "rv_attrs.h"
#include "rv_err.h"
#include "rv_hnsw.h"

#define RV_SNAPSHOT_VERSION 1u

/* Writes h, a (NULL: no attribute section) and positions[0..positions_len)
 * (NULL only with 0) to path, atomically as above. The index's and the
 * store's writers must be quiesced for the duration (rv_hnsw_write's rule);
 * searches may run. RV_ERR_INVALID for bad arguments, RV_ERR_IO (errstr
 * names the step and strerror) for any file error, RV_ERR_NOMEM. On failure
 * an existing file at path is untouched and no temporary file remains. */
rv_err_t rv_snapshot_save(const char *path, const rv_hnsw_t *h, const rv_attrs_t *a, const void *positions,
                          size_t positions_len, char *errstr, size_t errstr_size);

/* The same file from sections already serialized in memory: hnsw_len bytes
 * of rv_hnsw_write's stream, attrs_len bytes of rv_attrs_write's (attrs
 * NULL: no attribute section) and the positions blob. For a writer that
 * copies the state while its writers are quiesced, then writes the file
 * without holding them off (the bytes are not re-validated here). Same
 * errors and atomicity as rv_snapshot_save. */
rv_err_t rv_snapshot_save_bytes(const char *path, const void *hnsw, size_t hnsw_len, const void *attrs,
                                size_t attrs_len, const void *positions, size_t positions_len, char *errstr,
                                size_t errstr_size);

/* Reads a snapshot. conf (may be NULL) is passed to rv_hnsw_read: run-time
 * settings, and a check of dim/metric/storage/M (RV_ERR_CONFIG on mismatch).
 * On success *h owns the index, *a the attribute store (NULL if the file has
 * none), *positions a malloc'd copy of the blob (NULL when *positions_len is
 * 0), all the caller's to free (rv_hnsw_destroy, rv_attrs_destroy, free).
 * RV_ERR_NOT_FOUND / RV_ERR_IO if the file cannot be opened or read;
 * RV_ERR_CORRUPT for anything wrong with its contents: errstr says what
 * (bad magic, newer format version, other byte order, truncated, checksum
 * mismatch, bad section table, a section's own validation). On failure the
 * outputs are NULL / 0 and nothing leaks. Starts and joins one thread (runs
 * the checksum on the caller's thread if it cannot). */
rv_err_t rv_snapshot_load(const char *path, const rv_hnsw_conf_t *conf, rv_hnsw_t **h, rv_attrs_t **a, void **positions,
                          size_t *positions_len, char *errstr, size_t errstr_size);

#endif
