/* Fuzzes the record readers of pipelines/rv_source.h. The input is a file: it
 * is read to the end (or the first error) as jsonl, as fvecs and as idx, each
 * possibly gzip-compressed since zlib reads both. An input that starts with
 * the 8-byte header
 *     "RVLB" <skip: 1 byte> <labels length: 3 bytes, big-endian>
 * is instead an IDX labels file followed by an IDX images file (or a jsonl or
 * fvecs file), opened with that many records skipped.
 *
 * Checked: records carry an id of id_len bytes and a vector of the fixed (idx)
 * or first (fvecs) dim; no more idx records than the header announces; and an
 * error stays: the next call returns the same error with an empty record. */
#define _GNU_SOURCE 1 /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "rv_source.h"

/* A file the readers open by path. A memfd reached through /proc/self/fd/N
 * needs no disk and no cleanup; elsewhere, a temporary file. Created once per
 * process (libFuzzer gives a target no context). */
typedef struct scratch {
  int fd;
  char path[64];
} scratch_t;

static void scratch_open(scratch_t *s, const char *name) {
  s->fd = -1;
#ifdef MFD_CLOEXEC
  s->fd = memfd_create(name, MFD_CLOEXEC);
  if (s->fd >= 0) {
    snprintf(s->path, sizeof s->path, "/proc/self/fd/%d", s->fd);
    if (access(s->path, R_OK) == 0) return;
    close(s->fd);
  }
#endif
  const char *dir = getenv("TMPDIR");
  snprintf(s->path, sizeof s->path, "%s/rv-fuzz-XXXXXX", dir && strlen(dir) < 40 ? dir : "/tmp");
  s->fd = mkstemp(s->path);
  FUZZ_CHECK(s->fd >= 0, "cannot create a scratch file %s: %s", s->path, strerror(errno));
}

static void scratch_put(scratch_t *s, const uint8_t *data, size_t size) {
  FUZZ_CHECK(ftruncate(s->fd, 0) == 0, "ftruncate: %s", strerror(errno));
  size_t off = 0;
  while (off < size) {
    ssize_t w = pwrite(s->fd, data + off, size - off, (off_t)off);
    FUZZ_CHECK(w > 0, "pwrite: %s", strerror(errno));
    off += (size_t)w;
  }
}

static scratch_t files[2]; /* records, labels; made by the first input */

static void remove_scratch(void) {
  for (int i = 0; i < 2; i++)
    if (strncmp(files[i].path, "/proc/", 6) != 0) unlink(files[i].path);
}

static void read_all(rv_source_format_t format, const char *labels_path, int64_t skip) {
  rv_source_opts_t opts;
  rv_source_opts_init(&opts);
  opts.labels_path = labels_path;
  opts.id_prefix = "f";
  opts.skip = skip;
  char err[512];
  rv_source_t *src = rv_source_open(files[0].path, format, &opts, err, sizeof err);
  if (!src) {
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "open failed without a message");
    return;
  }
  FUZZ_CHECK(rv_source_format(src) == format, "format %d, want %d", (int)rv_source_format(src), (int)format);
  int64_t hint = rv_source_size_hint(src), count = 0;
  FUZZ_CHECK(format == RV_SOURCE_IDX ? hint >= 0 : hint == -1, "size hint %lld", (long long)hint);
  int first_dim = 0;
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  int rc;
  while ((rc = rv_source_next(src, &r, err, sizeof err)) == 1) {
    count++;
    FUZZ_CHECK(r.id && strlen(r.id) == r.id_len && r.id_len > 0, "record %lld: id_len %zu", (long long)count,
               r.id_len);
    FUZZ_CHECK(r.op == RV_OP_UPSERT || r.op == RV_OP_DELETE, "op %d", (int)r.op);
    FUZZ_CHECK(r.dim >= 0 && (r.dim == 0) == (r.vector == NULL), "dim %d, vector %p", r.dim, (void *)r.vector);
    if (format != RV_SOURCE_JSONL) {
      FUZZ_CHECK(r.vector && r.op == RV_OP_UPSERT && !r.has_event_time, "idx/fvecs record without a vector");
      if (!first_dim) first_dim = r.dim;
      FUZZ_CHECK(r.dim == first_dim, "dim %d after %d", r.dim, first_dim);
    }
    if (format == RV_SOURCE_IDX) FUZZ_CHECK(skip + count <= hint, "record %lld of %lld", (long long)count, (long long)hint);
  }
  if (rc < 0) {
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "error %d without a message", rc);
    FUZZ_CHECK(!r.id && !r.vector && !r.metadata, "record not empty after an error");
    char err2[512];
    int again = rv_source_next(src, &r, err2, sizeof err2);
    FUZZ_CHECK(again == rc && !strcmp(err, err2), "error not sticky: %d (%s) then %d (%s)", rc, err, again, err2);
  } else {
    FUZZ_CHECK(rc == 0, "rv_source_next returned %d", rc);
  }
  rv_vector_record_close(&r);
  rv_source_close(src);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (files[0].path[0] == 0) {
    scratch_open(&files[0], "records");
    scratch_open(&files[1], "labels");
    atexit(remove_scratch);
  }
  if (size >= 8 && !memcmp(data, "RVLB", 4)) {
    int64_t skip = data[4] % 8;
    size_t nlab = (size_t)data[5] << 16 | (size_t)data[6] << 8 | data[7];
    if (nlab > size - 8) nlab = size - 8;
    scratch_put(&files[1], data + 8, nlab);
    scratch_put(&files[0], data + 8 + nlab, size - 8 - nlab);
    read_all(RV_SOURCE_IDX, files[1].path, skip);
    read_all(RV_SOURCE_FVECS, NULL, skip);
    read_all(RV_SOURCE_JSONL, NULL, skip);
    return 0;
  }
  scratch_put(&files[0], data, size);
  read_all(RV_SOURCE_JSONL, NULL, 0);
  read_all(RV_SOURCE_FVECS, NULL, 0);
  read_all(RV_SOURCE_IDX, NULL, 0);
  return 0;
}
