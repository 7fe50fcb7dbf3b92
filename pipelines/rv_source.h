#ifndef RV_SOURCE_H
#define RV_SOURCE_H
/* A record source: reads vector records one at a time from a local file, for
 * `ruvector produce` and tests. Every format may be gzip-compressed or plain
 * (zlib reads both transparently).
 *
 *   idx    IDX files (MNIST / Fashion-MNIST): an unsigned-byte image file
 *          (magic 0x00000803: n, rows, cols, big-endian) gives one vector of
 *          rows*cols floats per image with the raw values 0..255 (no scaling).
 *          With a labels file (magic 0x00000801, same count) each record gets
 *          metadata {"label":N,"class":"<Fashion-MNIST class name>"}.
 *   fvecs  per vector: int32 little-endian dim, then dim float32 little-endian;
 *          every vector must have the first one's dim.
 *   jsonl  one JSON object per line: {"id", "op" ("UPSERT"|"DELETE"),
 *          "vector" [numbers], "metadata" {object}, "event_time" (ms)}; only
 *          "id" is required. Blank lines are ignored; unknown keys too.
 *
 * idx and fvecs records get ids <prefix><index>, index counted from 0 in the
 * file (skipped records count), op UPSERT, no event_time.
 * Not thread-safe: one thread uses a source at a time. */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"
#include "rv_record.h"

typedef enum {
  RV_SOURCE_AUTO = 0, /* detect from the file name (rv_source_format_detect) */
  RV_SOURCE_IDX,
  RV_SOURCE_FVECS,
  RV_SOURCE_JSONL,
} rv_source_format_t;

typedef struct rv_source_opts {
  const char *labels_path; /* idx: labels file; NULL = the matching file beside the images, if any */
  const char *id_prefix;   /* idx/fvecs: id prefix; NULL = "v" */
  int64_t skip;            /* records to skip at the start (they are read, not returned) */
} rv_source_opts_t;

typedef struct rv_source rv_source_t;

/* Zero options: auto labels, prefix "v", no skip. */
void rv_source_opts_init(rv_source_opts_t *o);

/* "idx", "fvecs", "jsonl" (and "auto"); returns 0, or -1 if unknown. */
int rv_source_format_parse(const char *s, rv_source_format_t *out);
const char *rv_source_format_name(rv_source_format_t f);

/* Guesses the format from the file name, ignoring a trailing ".gz":
 * "*-ubyte" or "*.idx" -> idx, "*.fvecs" -> fvecs, "*.jsonl"/"*.ndjson"/"*.json"
 * -> jsonl; RV_SOURCE_AUTO when none matches. */
rv_source_format_t rv_source_format_detect(const char *path);

/* The labels file that goes with an IDX image file by Fashion-MNIST naming
 * ("...-images-idx3-ubyte[.gz]" -> "...-labels-idx1-ubyte[.gz]"), written to
 * out. Returns 1 if that file exists and is readable, 0 otherwise. */
int rv_source_idx_labels_path(const char *images_path, char *out, size_t out_size);

/* Opens path (opts may be NULL), checks its header and performs the skip.
 * Returns NULL with errstr set if the file cannot be opened or read, the
 * format is unknown or the header is invalid. The source copies what it needs
 * from path and opts. */
rv_source_t *rv_source_open(const char *path, rv_source_format_t format, const rv_source_opts_t *opts,
                            char *errstr, size_t errstr_size);

/* Reads the next record into out, which must be initialised
 * (rv_vector_record_init); whatever out held before is freed first.
 * Returns 1 with a record, 0 at the end, or a negative rv_err_t (RV_ERR_IO,
 * RV_ERR_CORRUPT for truncation or bad data, RV_ERR_NOMEM) with errstr set
 * ("file:line: ..." for jsonl) and out empty. After an error the source
 * stays in error: further calls return the same error. */
int rv_source_next(rv_source_t *src, rv_vector_record_t *out, char *errstr, size_t errstr_size);

/* The number of records the header announces (idx), or -1 when unknown. */
int64_t rv_source_size_hint(const rv_source_t *src);

/* The format being read (never RV_SOURCE_AUTO). */
rv_source_format_t rv_source_format(const rv_source_t *src);

/* Closes the files and frees. NULL is a no-op. */
void rv_source_close(rv_source_t *src);

#endif
