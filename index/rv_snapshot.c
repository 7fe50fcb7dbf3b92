#include "rv_snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rv_bytes.h"

static const uint8_t MAGIC[8] = {'R', 'V', 'S', 'N', 'A', 'P', 0x1a, '\n'};
#define ENDIAN_MARK 0x01020304u
#define ENDIAN_SWAPPED 0x04030201u
#define END_MAGIC 0x45535652u /* "RVSE" */
#define TAG_HNSW 0x57534e48u  /* "HNSW" */
#define TAG_ATTR 0x52545441u  /* "ATTR" */
#define TAG_POSN 0x4e534f50u  /* "POSN" */
#define HEADER_LEN 16u
#define TRAILER_LEN 24u
#define ENTRY_LEN 24u
#define MAX_SECTIONS 16u
#define IO_CHUNK ((size_t)4 << 20)

/* ---- writing ---------------------------------------------------------------- */

typedef struct writer {
  int fd;
  uint8_t *buf;
  size_t n;     /* bytes buffered */
  uint64_t off; /* bytes written so far (including buffered) */
  uint32_t crc; /* over every byte so far */
  int err_no;   /* errno of the first failed write, or -1 */
} writer_t;

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int flush(writer_t *w) {
  if (w->err_no) return -1;
  if (w->n && write_all(w->fd, w->buf, w->n)) {
    w->err_no = errno ? errno : EIO;
    return -1;
  }
  w->n = 0;
  return 0;
}

static int wcb(void *ctx, const void *data, size_t len) {
  writer_t *w = ctx;
  if (w->err_no) return -1;
  const uint8_t *p = data;
  w->crc = rv__crc32c(w->crc, p, len);
  w->off += len;
  while (len) {
    size_t room = IO_CHUNK - w->n;
    if (len >= IO_CHUNK && w->n == 0) { /* large: straight through */
      if (write_all(w->fd, p, len)) {
        w->err_no = errno ? errno : EIO;
        return -1;
      }
      return 0;
    }
    size_t c = len < room ? len : room;
    memcpy(w->buf + w->n, p, c);
    w->n += c;
    p += c;
    len -= c;
    if (w->n == IO_CHUNK && flush(w)) return -1;
  }
  return 0;
}

static int put_u32(writer_t *w, uint32_t v) {
  uint8_t b[4];
  rv__put_u32(b, v);
  return wcb(w, b, 4);
}

static int put_u64(writer_t *w, uint64_t v) {
  uint8_t b[8];
  rv__put_u64(b, v);
  return wcb(w, b, 8);
}

/* The directory holding path ("." if none), into buf. */
static void dir_of(const char *path, char *buf, size_t size) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(buf, size, ".");
  } else if (slash == path) {
    snprintf(buf, size, "/");
  } else {
    snprintf(buf, size, "%.*s", (int)(slash - path), path);
  }
}

typedef struct section {
  uint32_t tag;
  uint64_t off, len;
} section_t;

/* Streams one section's payload into the writer. */
typedef rv_err_t (*section_fn)(const void *src, writer_t *w);

static rv_err_t hnsw_section(const void *src, writer_t *w) { return rv_hnsw_write(src, wcb, w); }
static rv_err_t attrs_section(const void *src, writer_t *w) { return rv_attrs_write(src, wcb, w); }

typedef struct bytes {
  const void *p;
  size_t len;
} bytes_t;

static rv_err_t bytes_section(const void *src, writer_t *w) {
  const bytes_t *b = src;
  return wcb(w, b->p, b->len) ? RV_ERR_IO : RV_OK;
}

static rv_err_t save(const char *path, section_fn hnsw_fn, const void *hnsw, section_fn attr_fn, const void *attrs,
                     const void *positions, size_t positions_len, char *errstr, size_t errstr_size);

rv_err_t rv_snapshot_save(const char *path, const rv_hnsw_t *h, const rv_attrs_t *a, const void *positions,
                          size_t positions_len, char *errstr, size_t errstr_size) {
  if (!path || !*path || !h || (!positions && positions_len))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "snapshot: bad arguments");
  return save(path, hnsw_section, h, a ? attrs_section : NULL, a, positions, positions_len, errstr, errstr_size);
}

rv_err_t rv_snapshot_save_bytes(const char *path, const void *hnsw, size_t hnsw_len, const void *attrs,
                                size_t attrs_len, const void *positions, size_t positions_len, char *errstr,
                                size_t errstr_size) {
  if (!path || !*path || !hnsw || !hnsw_len || (!positions && positions_len))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "snapshot: bad arguments");
  bytes_t hb = {hnsw, hnsw_len}, ab = {attrs, attrs_len};
  return save(path, bytes_section, &hb, attrs ? bytes_section : NULL, &ab, positions, positions_len, errstr,
              errstr_size);
}

static rv_err_t save(const char *path, section_fn hnsw_fn, const void *hnsw, section_fn attr_fn, const void *attrs,
                     const void *positions, size_t positions_len, char *errstr, size_t errstr_size) {
  char tmp[PATH_MAX], dir[PATH_MAX];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "snapshot: path too long");
  dir_of(path, dir, sizeof dir);
  writer_t w = {.fd = -1, .err_no = 0};
  w.buf = malloc(IO_CHUNK);
  if (!w.buf) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "snapshot: out of memory");
  rv_err_t err = RV_OK;
  const char *step = "open";
  w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w.fd < 0) {
    int e = errno;
    free(w.buf);
    return rv_errf(RV_ERR_IO, errstr, errstr_size, "snapshot: open %s: %s", tmp, strerror(e));
  }
  section_t sec[3];
  int ns = 0;
  step = "write";
  wcb(&w, MAGIC, sizeof MAGIC);
  put_u32(&w, RV_SNAPSHOT_VERSION);
  put_u32(&w, ENDIAN_MARK);
  sec[ns] = (section_t){TAG_HNSW, w.off, 0};
  err = hnsw_fn(hnsw, &w);
  sec[ns].len = w.off - sec[ns].off;
  ns++;
  if (!err && attr_fn) {
    sec[ns] = (section_t){TAG_ATTR, w.off, 0};
    err = attr_fn(attrs, &w);
    sec[ns].len = w.off - sec[ns].off;
    ns++;
  }
  if (!err) {
    sec[ns] = (section_t){TAG_POSN, w.off, positions_len};
    wcb(&w, positions, positions_len);
    ns++;
    uint64_t table = w.off;
    put_u32(&w, (uint32_t)ns);
    for (int i = 0; i < ns; i++) {
      put_u32(&w, sec[i].tag);
      put_u32(&w, 0);
      put_u64(&w, sec[i].off);
      put_u64(&w, sec[i].len);
    }
    put_u64(&w, table);
    put_u64(&w, w.off + 16); /* the file's length once the last 16 bytes are in */
    uint8_t tail[8];
    rv__put_u32(tail, w.crc);
    rv__put_u32(tail + 4, END_MAGIC);
    wcb(&w, tail, sizeof tail);
  }
  if (!err && flush(&w)) err = RV_ERR_IO;
  if (!err && w.err_no) err = RV_ERR_IO;
  if (!err) {
    step = "fsync";
    if (fsync(w.fd)) {
      w.err_no = errno;
      err = RV_ERR_IO;
    }
  }
  if (close(w.fd) && !err) {
    step = "close";
    w.err_no = errno;
    err = RV_ERR_IO;
  }
  if (!err) {
    step = "rename";
    if (rename(tmp, path)) {
      w.err_no = errno;
      err = RV_ERR_IO;
    }
  }
  free(w.buf);
  if (err) {
    unlink(tmp);
    if (err == RV_ERR_IO && w.err_no > 0)
      return rv_errf(err, errstr, errstr_size, "snapshot: %s %s: %s", step, tmp, strerror(w.err_no));
    return rv_errf(err, errstr, errstr_size, "snapshot: %s %s: %s", step, tmp, rv_err_str(err));
  }
  /* The rename is durable only once the directory is. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd)) {
    int e = errno;
    if (dfd >= 0) close(dfd);
    return rv_errf(RV_ERR_IO, errstr, errstr_size, "snapshot: fsync of directory %s: %s (the file is in place)", dir,
                   strerror(e));
  }
  close(dfd);
  return RV_OK;
}

/* ---- reading ------------------------------------------------------------- */

static int pread_all(int fd, void *buf, size_t n, uint64_t off) {
  uint8_t *p = buf;
  while (n) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {
      errno = EIO; /* the file shrank under us */
      return -1;
    }
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* A buffered reader over [off, off + left) of the file. */
typedef struct reader {
  int fd;
  uint8_t *buf;
  size_t pos, n; /* unread bytes are buf[pos..n) */
  uint64_t off;  /* file offset of the next byte after the buffer */
  uint64_t left; /* section bytes not yet handed out (buffered ones included) */
  int io_error;
} reader_t;

static int rcb(void *ctx, void *data, size_t len) {
  reader_t *r = ctx;
  if (len > r->left) return -1; /* past the section's end: truncation to its reader */
  uint8_t *d = data;
  r->left -= len;
  while (len) {
    if (r->pos == r->n) {
      uint64_t unbuffered = r->left + len; /* bytes of the section beyond the buffer */
      if (len >= IO_CHUNK) {               /* large: straight into the caller's memory */
        if (pread_all(r->fd, d, len, r->off)) return r->io_error = 1, -1;
        r->off += len;
        return 0;
      }
      size_t c = unbuffered < IO_CHUNK ? (size_t)unbuffered : IO_CHUNK;
      if (pread_all(r->fd, r->buf, c, r->off)) return r->io_error = 1, -1;
      r->off += c;
      r->pos = 0;
      r->n = c;
    }
    size_t c = r->n - r->pos < len ? r->n - r->pos : len;
    memcpy(d, r->buf + r->pos, c);
    r->pos += c;
    d += c;
    len -= c;
  }
  return 0;
}

static void section_name(uint32_t tag, char out[5]) {
  for (int i = 0; i < 4; i++) {
    char c = (char)(tag >> (8 * i));
    out[i] = c >= 0x20 && c < 0x7f ? c : '?';
  }
  out[4] = 0;
}

/* The CRC-32C of the file's first len bytes, read in chunks of its own. */
typedef struct crc_job {
  int fd;
  uint64_t len;
  uint32_t crc;
  int err_no; /* errno of a failed read (ENOMEM: no buffer), 0 if none */
} crc_job_t;

static void *crc_main(void *arg) {
  crc_job_t *j = arg;
  uint8_t *buf = malloc(IO_CHUNK);
  if (!buf) {
    j->err_no = ENOMEM;
    return NULL;
  }
  uint32_t crc = 0;
  for (uint64_t off = 0; off < j->len;) {
    size_t c = j->len - off < IO_CHUNK ? (size_t)(j->len - off) : IO_CHUNK;
    if (pread_all(j->fd, buf, c, off)) {
      j->err_no = errno ? errno : EIO;
      break;
    }
    crc = rv__crc32c(crc, buf, c);
    off += c;
  }
  j->crc = crc;
  free(buf);
  return NULL;
}

/* The section table at offset table of a file of size bytes, then each
 * section into its reader. On failure the outputs are left NULL. */
static rv_err_t parse_sections(int fd, const char *path, uint64_t size, uint64_t table, const rv_hnsw_conf_t *conf,
                               rv_hnsw_t **hp, rv_attrs_t **ap, void **positions, size_t *positions_len,
                               char *errstr, size_t errstr_size) {
  rv_err_t err = RV_OK;
  uint8_t *buf = NULL, *blob = NULL;
  rv_hnsw_t *h = NULL;
  rv_attrs_t *a = NULL;
  char sub[512];
#define FAIL(code, ...)                                    \
  do {                                                     \
    err = rv_errf(code, errstr, errstr_size, __VA_ARGS__); \
    goto out;                                              \
  } while (0)
#define IOFAIL(what) FAIL(RV_ERR_IO, "snapshot: %s: reading %s: %s", path, what, strerror(errno))
  if (table < HEADER_LEN || table > size - TRAILER_LEN - 4)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: section table offset %llu out of range", path, (unsigned long long)table);
  uint8_t cnt[4];
  if (pread_all(fd, cnt, 4, table)) IOFAIL("the section table");
  uint32_t ns = rv__get_u32(cnt);
  if (ns < 2 || ns > 3 || table + 4 + (uint64_t)ns * ENTRY_LEN != size - TRAILER_LEN)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: section table has a bad count (%u)", path, ns);
  section_t sec[3];
  uint8_t ent[3 * ENTRY_LEN];
  if (pread_all(fd, ent, (size_t)ns * ENTRY_LEN, table + 4)) IOFAIL("the section table");
  uint64_t expect = HEADER_LEN;
  int have_h = 0, have_a = 0, have_p = 0;
  for (uint32_t i = 0; i < ns; i++) {
    const uint8_t *e = ent + i * ENTRY_LEN;
    sec[i] = (section_t){rv__get_u32(e), rv__get_u64(e + 8), rv__get_u64(e + 16)};
    char nm[5];
    section_name(sec[i].tag, nm);
    if (rv__get_u32(e + 4) != 0) FAIL(RV_ERR_CORRUPT, "snapshot: %s: section %s has reserved bits set", path, nm);
    if (sec[i].off != expect || sec[i].len > table - expect)
      FAIL(RV_ERR_CORRUPT, "snapshot: %s: section %s at %llu+%llu does not tile the file", path, nm,
           (unsigned long long)sec[i].off, (unsigned long long)sec[i].len);
    expect += sec[i].len;
    int *seen = sec[i].tag == TAG_HNSW   ? &have_h
                : sec[i].tag == TAG_ATTR ? &have_a
                : sec[i].tag == TAG_POSN ? &have_p
                                         : NULL;
    if (!seen) FAIL(RV_ERR_CORRUPT, "snapshot: %s: unknown section '%s'", path, nm);
    if ((*seen)++) FAIL(RV_ERR_CORRUPT, "snapshot: %s: section %s appears twice", path, nm);
  }
  if (expect != table)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: sections end at %llu, the table starts at %llu", path,
         (unsigned long long)expect, (unsigned long long)table);
  if (!have_h || !have_p) FAIL(RV_ERR_CORRUPT, "snapshot: %s: HNSW or POSN section missing", path);

  buf = malloc(IO_CHUNK);
  if (!buf) FAIL(RV_ERR_NOMEM, "snapshot: out of memory");
  for (uint32_t i = 0; i < ns; i++) {
    reader_t r = {fd, buf, 0, 0, sec[i].off, sec[i].len, 0};
    char nm[5];
    section_name(sec[i].tag, nm);
    sub[0] = 0;
    if (sec[i].tag == TAG_HNSW) {
      err = rv_hnsw_read(conf, rcb, &r, &h, sub, sizeof sub);
    } else if (sec[i].tag == TAG_ATTR) {
      err = rv_attrs_read(rcb, &r, &a, sub, sizeof sub);
    } else if (sec[i].len) {
      blob = malloc((size_t)sec[i].len);
      if (!blob) FAIL(RV_ERR_NOMEM, "snapshot: out of memory");
      err = rcb(&r, blob, (size_t)sec[i].len) ? RV_ERR_CORRUPT : RV_OK;
    }
    if (r.io_error) FAIL(RV_ERR_IO, "snapshot: %s: reading section %s: %s", path, nm, strerror(errno));
    if (err) FAIL(err, "snapshot: %s: section %s: %s", path, nm, sub[0] ? sub : rv_err_str(err));
    if (r.left)
      FAIL(RV_ERR_CORRUPT, "snapshot: %s: section %s has %llu bytes its reader did not use", path, nm,
           (unsigned long long)r.left);
  }
  if (a && rv_attrs_slot_bound(a) > rv_hnsw_id_bound(h))
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: attributes name slot %u, the index has %u slots", path,
         rv_attrs_slot_bound(a) - 1, rv_hnsw_id_bound(h));
  for (uint32_t i = 0; i < ns; i++)
    if (sec[i].tag == TAG_POSN) *positions_len = (size_t)sec[i].len;
  *hp = h;
  *ap = a;
  *positions = blob;
  h = NULL;
  a = NULL;
  blob = NULL;
out:
#undef FAIL
#undef IOFAIL
  free(buf);
  free(blob);
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  return err;
}

rv_err_t rv_snapshot_load(const char *path, const rv_hnsw_conf_t *conf, rv_hnsw_t **hp, rv_attrs_t **ap,
                          void **positions, size_t *positions_len, char *errstr, size_t errstr_size) {
  if (hp) *hp = NULL;
  if (ap) *ap = NULL;
  if (positions) *positions = NULL;
  if (positions_len) *positions_len = 0;
  if (!path || !hp || !ap || !positions || !positions_len)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "snapshot: bad arguments");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return rv_errf(e == ENOENT ? RV_ERR_NOT_FOUND : RV_ERR_IO, errstr, errstr_size, "snapshot: open %s: %s", path,
                   strerror(e));
  }
  rv_err_t err = RV_OK;
  struct stat st;
#define FAIL(code, ...)                                    \
  do {                                                     \
    err = rv_errf(code, errstr, errstr_size, __VA_ARGS__); \
    goto out;                                              \
  } while (0)
#define IOFAIL(what) FAIL(RV_ERR_IO, "snapshot: %s: reading %s: %s", path, what, strerror(errno))
  if (fstat(fd, &st)) IOFAIL("its size");
  uint64_t size = (uint64_t)st.st_size;
  uint8_t hdr[HEADER_LEN], tr[TRAILER_LEN];
  if (size < HEADER_LEN)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: truncated (%llu bytes, no header)", path, (unsigned long long)size);
  if (pread_all(fd, hdr, HEADER_LEN, 0)) IOFAIL("the header");
  if (memcmp(hdr, MAGIC, sizeof MAGIC)) FAIL(RV_ERR_CORRUPT, "snapshot: %s: bad magic (not a snapshot)", path);
  uint32_t version = rv__get_u32(hdr + 8), mark = rv__get_u32(hdr + 12);
  if (version > RV_SNAPSHOT_VERSION)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: format version %u is newer than this build reads (%u)", path, version,
         RV_SNAPSHOT_VERSION);
  if (version != RV_SNAPSHOT_VERSION) FAIL(RV_ERR_CORRUPT, "snapshot: %s: unknown format version %u", path, version);
  if (mark == ENDIAN_SWAPPED) FAIL(RV_ERR_CORRUPT, "snapshot: %s: endianness marker says the other byte order", path);
  if (mark != ENDIAN_MARK) FAIL(RV_ERR_CORRUPT, "snapshot: %s: bad endianness marker 0x%08x", path, mark);
  if (size < HEADER_LEN + 4 + TRAILER_LEN)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: truncated (%llu bytes, no trailer)", path, (unsigned long long)size);
  if (pread_all(fd, tr, TRAILER_LEN, size - TRAILER_LEN)) IOFAIL("the trailer");
  if (rv__get_u32(tr + 20) != END_MAGIC)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: truncated or damaged (no end marker in the last bytes)", path);
  uint64_t table = rv__get_u64(tr), flen = rv__get_u64(tr + 8);
  if (flen != size)
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: file is %llu bytes but its trailer says %llu (truncated?)", path,
         (unsigned long long)size, (unsigned long long)flen);

  /* The checksum covers everything before its own 8 bytes. It is computed
   * on a second thread while the sections are parsed (every reader
   * validates every field, so a damaged file cannot hurt them); a mismatch
   * then wins over whatever the parse made of it, which is thrown away.
   * Without a thread: first, on this one. */
  crc_job_t job = {fd, size - 8, 0, 0};
  pthread_t crc_thread;
  int threaded = pthread_create(&crc_thread, NULL, crc_main, &job) == 0;
  if (!threaded) crc_main(&job);
  uint32_t stored = rv__get_u32(tr + 16);
  if (threaded || (!job.err_no && job.crc == stored))
    err = parse_sections(fd, path, size, table, conf, hp, ap, positions, positions_len, errstr, errstr_size);
  if (threaded) pthread_join(crc_thread, NULL);
  if (job.err_no || job.crc != stored) {
    rv_hnsw_destroy(*hp);
    rv_attrs_destroy(*ap);
    free(*positions);
    *hp = NULL;
    *ap = NULL;
    *positions = NULL;
    *positions_len = 0;
    if (job.err_no == ENOMEM) FAIL(RV_ERR_NOMEM, "snapshot: out of memory");
    if (job.err_no)
      FAIL(RV_ERR_IO, "snapshot: %s: reading the contents: %s", path, strerror(job.err_no));
    FAIL(RV_ERR_CORRUPT, "snapshot: %s: checksum mismatch (stored 0x%08x, computed 0x%08x)", path, stored, job.crc);
  }
out:
#undef FAIL
#undef IOFAIL
  close(fd);
  return err;
}
