#include "rv_source.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <zlib.h>

#include "rv_collection.h"

#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u
#define IDX_UBYTE 0x08
#define MAX_DIM (1 << 24) /* sanity bound on a vector read from a header */

static const char *const fashion_classes[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

struct rv_source {
  rv_source_format_t format;
  char *path;         /* owned, for messages */
  char *labels_path;  /* owned; NULL without labels */
  gzFile gz;          /* the records */
  gzFile labels;      /* idx labels; NULL without */
  char *prefix;       /* owned id prefix */
  int64_t index;      /* index in the file of the next record */
  int64_t n;          /* idx: records the header announces; -1 otherwise */
  int dim;            /* idx: fixed; fvecs: the first vector's dim (0 before it) */
  uint8_t *pixels;    /* idx: one image */
  char *line;         /* jsonl: the current line, owned */
  size_t line_cap;
  int64_t line_no;    /* jsonl: 1-based number of the line last read */
  rv_err_t err;       /* sticky error, 0 while healthy */
  char errmsg[512];
};

void rv_source_opts_init(rv_source_opts_t *o) { memset(o, 0, sizeof *o); }

int rv_source_format_parse(const char *s, rv_source_format_t *out) {
  static const struct {
    const char *name;
    rv_source_format_t f;
  } names[] = {{"auto", RV_SOURCE_AUTO}, {"idx", RV_SOURCE_IDX}, {"fvecs", RV_SOURCE_FVECS},
               {"jsonl", RV_SOURCE_JSONL}, {"ndjson", RV_SOURCE_JSONL}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcasecmp(s, names[i].name) == 0) {
      *out = names[i].f;
      return 0;
    }
  return -1;
}

const char *rv_source_format_name(rv_source_format_t f) {
  switch (f) {
  case RV_SOURCE_IDX: return "idx";
  case RV_SOURCE_FVECS: return "fvecs";
  case RV_SOURCE_JSONL: return "jsonl";
  default: return "auto";
  }
}

static int ends_with(const char *s, size_t len, const char *suffix) {
  size_t n = strlen(suffix);
  return len >= n && strncasecmp(s + len - n, suffix, n) == 0;
}

rv_source_format_t rv_source_format_detect(const char *path) {
  size_t len = strlen(path);
  if (ends_with(path, len, ".gz")) len -= 3;
  if (ends_with(path, len, "-ubyte") || ends_with(path, len, ".idx")) return RV_SOURCE_IDX;
  if (ends_with(path, len, ".fvecs")) return RV_SOURCE_FVECS;
  if (ends_with(path, len, ".jsonl") || ends_with(path, len, ".ndjson") || ends_with(path, len, ".json"))
    return RV_SOURCE_JSONL;
  return RV_SOURCE_AUTO;
}

int rv_source_idx_labels_path(const char *images_path, char *out, size_t out_size) {
  const char *base = strrchr(images_path, '/');
  base = base ? base + 1 : images_path;
  const char *at = strstr(base, "images-idx3");
  if (!at) return 0;
  int n = snprintf(out, out_size, "%.*slabels-idx1%s", (int)(at - images_path), images_path,
                   at + strlen("images-idx3"));
  if (n < 0 || (size_t)n >= out_size) return 0;
  return access(out, R_OK) == 0;
}

/* ---- helpers ---------------------------------------------------------- */

static rv_err_t fail(rv_source_t *s, rv_err_t err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static rv_err_t fail(rv_source_t *s, rv_err_t err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
  va_end(ap);
  s->err = err;
  return err;
}

/* Reads exactly n bytes. Returns the bytes read (short at end of file), or -1
 * on a read or decompression error, with *why set to zlib's message. */
static long read_full(gzFile gz, void *buf, size_t n, const char **why) {
  size_t got = 0;
  while (got < n) {
    size_t chunk = n - got > (1u << 30) ? (1u << 30) : n - got;
    int r = gzread(gz, (uint8_t *)buf + got, (unsigned)chunk);
    if (r < 0) {
      int zerr;
      *why = gzerror(gz, &zerr);
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  /* A truncated gzip stream reports its error only after the data ran out. */
  if (got < n) {
    int zerr;
    const char *msg = gzerror(gz, &zerr);
    if (zerr != Z_OK && zerr != Z_STREAM_END) {
      *why = msg;
      return -1;
    }
  }
  return (long)got;
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static gzFile open_gz(rv_source_t *s, const char *path) {
  errno = 0;
  gzFile gz = gzopen(path, "rb");
  if (!gz) {
    fail(s, errno == ENOENT ? RV_ERR_NOT_FOUND : RV_ERR_IO, "%s: %s", path,
         errno ? strerror(errno) : "cannot open");
    return NULL;
  }
  gzbuffer(gz, 1u << 17);
  return gz;
}

static char *make_id(const rv_source_t *s, int64_t index, size_t *len) {
  size_t plen = strlen(s->prefix);
  char *id = malloc(plen + 24);
  if (!id) return NULL;
  int n = snprintf(id, plen + 24, "%s%lld", s->prefix, (long long)index);
  *len = (size_t)n;
  return id;
}

/* ---- idx ---------------------------------------------------------------- */

static rv_err_t idx_open(rv_source_t *s) {
  uint8_t hdr[4 + 4 * 8];
  const char *why = NULL;
  long r = read_full(s->gz, hdr, 4, &why);
  if (r < 0) return fail(s, RV_ERR_IO, "%s: %s", s->path, why);
  if (r < 4) return fail(s, RV_ERR_CORRUPT, "%s: truncated IDX header", s->path);
  uint32_t magic = be32(hdr);
  if (hdr[0] != 0 || hdr[1] != 0 || hdr[2] != IDX_UBYTE || hdr[3] < 2 || hdr[3] > 8) {
    if (magic == IDX_LABELS_MAGIC)
      return fail(s, RV_ERR_INVALID, "%s: an IDX labels file, not images (give it with --labels)", s->path);
    return fail(s, RV_ERR_CORRUPT, "%s: not an unsigned-byte IDX image file (magic 0x%08x, want 0x%08x)",
                s->path, magic, IDX_IMAGES_MAGIC);
  }
  int ndims = hdr[3];
  r = read_full(s->gz, hdr + 4, 4 * (size_t)ndims, &why);
  if (r < 0) return fail(s, RV_ERR_IO, "%s: %s", s->path, why);
  if (r < 4 * ndims) return fail(s, RV_ERR_CORRUPT, "%s: truncated IDX header", s->path);
  s->n = be32(hdr + 4);
  uint64_t dim = 1;
  for (int i = 1; i < ndims; i++) {
    dim *= be32(hdr + 4 + 4 * i);
    if (dim == 0 || dim > MAX_DIM)
      return fail(s, RV_ERR_CORRUPT, "%s: IDX image size %llu out of range", s->path, (unsigned long long)dim);
  }
  s->dim = (int)dim;
  s->pixels = malloc(dim);
  if (!s->pixels) return fail(s, RV_ERR_NOMEM, "out of memory");

  if (!s->labels_path) return RV_OK;
  s->labels = open_gz(s, s->labels_path);
  if (!s->labels) return s->err;
  r = read_full(s->labels, hdr, 8, &why);
  if (r < 0) return fail(s, RV_ERR_IO, "%s: %s", s->labels_path, why);
  if (r < 8) return fail(s, RV_ERR_CORRUPT, "%s: truncated IDX header", s->labels_path);
  if (be32(hdr) != IDX_LABELS_MAGIC)
    return fail(s, RV_ERR_CORRUPT, "%s: not an IDX labels file (magic 0x%08x, want 0x%08x)", s->labels_path,
                be32(hdr), IDX_LABELS_MAGIC);
  if (be32(hdr + 4) != (uint32_t)s->n)
    return fail(s, RV_ERR_CORRUPT, "%s: %u labels for %lld images in %s", s->labels_path, be32(hdr + 4),
                (long long)s->n, s->path);
  return RV_OK;
}

/* Reads image (and label) number s->index into the buffers; label < 0 without labels. */
static rv_err_t idx_read(rv_source_t *s, int *label) {
  const char *why = NULL;
  long r = read_full(s->gz, s->pixels, (size_t)s->dim, &why);
  if (r < 0) return fail(s, RV_ERR_IO, "%s: image %lld: %s", s->path, (long long)s->index, why);
  if (r < s->dim)
    return fail(s, RV_ERR_CORRUPT, "%s: truncated at image %lld of %lld", s->path, (long long)s->index,
                (long long)s->n);
  *label = -1;
  if (s->labels) {
    uint8_t b;
    r = read_full(s->labels, &b, 1, &why);
    if (r < 0) return fail(s, RV_ERR_IO, "%s: label %lld: %s", s->labels_path, (long long)s->index, why);
    if (r < 1)
      return fail(s, RV_ERR_CORRUPT, "%s: truncated at label %lld of %lld", s->labels_path,
                  (long long)s->index, (long long)s->n);
    *label = b;
  }
  return RV_OK;
}

static int idx_next(rv_source_t *s, rv_vector_record_t *out) {
  if (s->index >= s->n) return 0;
  int label;
  rv_err_t err = idx_read(s, &label);
  if (err) return err;
  out->vector = malloc(sizeof(float) * (size_t)s->dim);
  out->id = make_id(s, s->index, &out->id_len);
  if (label >= 0) {
    char meta[96];
    if (label < 10)
      snprintf(meta, sizeof meta, "{\"label\":%d,\"class\":\"%s\"}", label, fashion_classes[label]);
    else
      snprintf(meta, sizeof meta, "{\"label\":%d}", label);
    out->metadata = strdup(meta);
  }
  if (!out->vector || !out->id || (label >= 0 && !out->metadata)) {
    rv_vector_record_close(out);
    return fail(s, RV_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < s->dim; i++) out->vector[i] = (float)s->pixels[i];
  out->dim = s->dim;
  out->op = RV_OP_UPSERT;
  s->index++;
  return 1;
}

/* ---- fvecs -------------------------------------------------------------- */

/* Reads vector s->index into out->vector (allocated) or returns 0 at a clean end. */
static int fvecs_read(rv_source_t *s, float **vec, int *dim_out) {
  uint8_t d4[4];
  const char *why = NULL;
  long r = read_full(s->gz, d4, 4, &why);
  if (r < 0) return fail(s, RV_ERR_IO, "%s: vector %lld: %s", s->path, (long long)s->index, why);
  if (r == 0) return 0;
  if (r < 4) return fail(s, RV_ERR_CORRUPT, "%s: truncated at vector %lld", s->path, (long long)s->index);
  int32_t dim = (int32_t)le32(d4);
  if (dim <= 0 || dim > MAX_DIM)
    return fail(s, RV_ERR_CORRUPT, "%s: vector %lld has dim %d", s->path, (long long)s->index, dim);
  if (s->dim && dim != s->dim)
    return fail(s, RV_ERR_CORRUPT, "%s: vector %lld has dim %d, the first had %d", s->path,
                (long long)s->index, dim, s->dim);
  s->dim = dim;
  float *v = malloc(sizeof(float) * (size_t)dim);
  if (!v) return fail(s, RV_ERR_NOMEM, "out of memory");
  r = read_full(s->gz, v, sizeof(float) * (size_t)dim, &why);
  if (r < 0 || r < (long)(sizeof(float) * (size_t)dim)) {
    free(v);
    if (r < 0) return fail(s, RV_ERR_IO, "%s: vector %lld: %s", s->path, (long long)s->index, why);
    return fail(s, RV_ERR_CORRUPT, "%s: truncated in vector %lld", s->path, (long long)s->index);
  }
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (int i = 0; i < dim; i++) {
    uint32_t u = le32((const uint8_t *)&v[i]);
    memcpy(&v[i], &u, 4);
  }
#endif
  *vec = v;
  *dim_out = dim;
  return 1;
}

static int fvecs_next(rv_source_t *s, rv_vector_record_t *out) {
  float *v = NULL;
  int dim = 0;
  int r = fvecs_read(s, &v, &dim);
  if (r <= 0) return r;
  out->vector = v;
  out->dim = dim;
  out->op = RV_OP_UPSERT;
  out->id = make_id(s, s->index, &out->id_len);
  if (!out->id) {
    rv_vector_record_close(out);
    return fail(s, RV_ERR_NOMEM, "out of memory");
  }
  s->index++;
  return 1;
}

/* ---- jsonl -------------------------------------------------------------- */

/* Reads one line (without its line ending) into s->line. Returns its length,
 * -1 at the end of the file, or -2 on error (s->err set). */
/* Reads one line into s->line (without its end of line). Returns its length,
 * -1 at the end of the input, -2 on error (s failed). Byte by byte through
 * zlib's buffer: gzgets cannot report a NUL inside a line, which would cut the
 * line short and glue the next one onto it. */
static long read_line(rv_source_t *s) {
  size_t len = 0;
  int nul = 0, any = 0;
  for (;;) {
    int c = gzgetc(s->gz);
    if (c == -1) {
      int zerr;
      const char *msg = gzerror(s->gz, &zerr);
      if (zerr != Z_OK && zerr != Z_STREAM_END) {
        fail(s, RV_ERR_IO, "%s:%lld: %s", s->path, (long long)s->line_no + 1, msg);
        return -2;
      }
      if (!any) return -1;
      break;
    }
    any = 1;
    if (c == '\n') break;
    if (s->line_cap - len < 2) {
      size_t cap = s->line_cap ? s->line_cap * 2 : 1u << 16;
      char *p = realloc(s->line, cap);
      if (!p) {
        fail(s, RV_ERR_NOMEM, "out of memory");
        return -2;
      }
      s->line = p;
      s->line_cap = cap;
    }
    if (c == 0) nul = 1;
    s->line[len++] = (char)c;
  }
  s->line_no++;
  if (nul) {
    fail(s, RV_ERR_CORRUPT, "%s:%lld: the line contains a NUL byte", s->path, (long long)s->line_no);
    return -2;
  }
  if (!s->line) { /* an empty last line before any allocation */
    if (!(s->line = malloc(1))) {
      fail(s, RV_ERR_NOMEM, "out of memory");
      return -2;
    }
    s->line_cap = 1;
  }
  while (len > 0 && s->line[len - 1] == '\r') len--;
  s->line[len] = '\0';
  return (long)len;
}

static int blank(const char *p) {
  for (; *p; p++)
    if (*p != ' ' && *p != '\t') return 0;
  return 1;
}

static rv_err_t jsonl_parse(rv_source_t *s, const char *text, size_t len, rv_vector_record_t *out) {
  const char *f = s->path;
  long long ln = (long long)s->line_no;
  json_error_t jerr;
  json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!o) return fail(s, RV_ERR_CORRUPT, "%s:%lld: invalid JSON at column %d: %s", f, ln, jerr.column, jerr.text);
  rv_err_t err = RV_OK;
  if (!json_is_object(o)) {
    err = fail(s, RV_ERR_CORRUPT, "%s:%lld: expected a JSON object", f, ln);
    goto done;
  }

  json_t *v = json_object_get(o, "id");
  if (json_is_string(v) && json_string_length(v) > 0) {
    if (strlen(json_string_value(v)) != json_string_length(v)) {
      err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"id\" contains a NUL character", f, ln);
      goto done;
    }
    out->id = strdup(json_string_value(v));
  } else if (json_is_integer(v)) {
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
    out->id = strdup(tmp);
  } else {
    err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"id\" must be a non-empty string", f, ln);
    goto done;
  }
  if (!out->id) {
    err = fail(s, RV_ERR_NOMEM, "out of memory");
    goto done;
  }
  out->id_len = strlen(out->id);
  if (out->id_len > RV_ID_MAX) {
    err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"id\" is %zu bytes, at most %d allowed", f, ln, out->id_len,
               RV_ID_MAX);
    goto done;
  }

  v = json_object_get(o, "op");
  out->op = RV_OP_UPSERT;
  if (v && !json_is_null(v)) {
    const char *op = json_string_value(v);
    if (op && strcasecmp(op, "UPSERT") == 0) {
      out->op = RV_OP_UPSERT;
    } else if (op && strcasecmp(op, "DELETE") == 0) {
      out->op = RV_OP_DELETE;
    } else {
      err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"op\" must be \"UPSERT\" or \"DELETE\"", f, ln);
      goto done;
    }
  }

  v = json_object_get(o, "vector");
  if (v && !json_is_null(v)) {
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > MAX_DIM) {
      err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"vector\" must be a non-empty array of numbers", f, ln);
      goto done;
    }
    size_t dim = json_array_size(v);
    out->vector = malloc(sizeof(float) * dim);
    if (!out->vector) {
      err = fail(s, RV_ERR_NOMEM, "out of memory");
      goto done;
    }
    for (size_t i = 0; i < dim; i++) {
      json_t *x = json_array_get(v, i);
      if (!json_is_number(x)) {
        err = fail(s, RV_ERR_CORRUPT, "%s:%lld: vector[%zu] is not a number", f, ln, i);
        goto done;
      }
      out->vector[i] = (float)json_number_value(x);
    }
    out->dim = (int)dim;
  }

  v = json_object_get(o, "metadata");
  if (v && !json_is_null(v)) {
    if (!json_is_object(v)) {
      err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"metadata\" must be a JSON object", f, ln);
      goto done;
    }
    out->metadata = json_dumps(v, JSON_COMPACT);
    if (!out->metadata) {
      err = fail(s, RV_ERR_NOMEM, "out of memory");
      goto done;
    }
  }

  v = json_object_get(o, "event_time");
  if (v && !json_is_null(v)) {
    if (!json_is_integer(v)) {
      err = fail(s, RV_ERR_CORRUPT, "%s:%lld: \"event_time\" must be an integer (milliseconds)", f, ln);
      goto done;
    }
    out->has_event_time = 1;
    out->event_time_ms = (int64_t)json_integer_value(v);
  }

done:
  json_decref(o);
  if (err) rv_vector_record_close(out);
  return err;
}

static int jsonl_next(rv_source_t *s, rv_vector_record_t *out) {
  for (;;) {
    long len = read_line(s);
    if (len == -1) return 0;
    if (len < 0) return s->err;
    if (blank(s->line)) continue;
    rv_err_t err = jsonl_parse(s, s->line, (size_t)len, out);
    if (err) return err;
    s->index++;
    return 1;
  }
}

/* ---- public ------------------------------------------------------------- */

/* Reads and drops the first n records. Skipped jsonl lines are not parsed. */
static rv_err_t do_skip(rv_source_t *s, int64_t n) {
  if (n <= 0) return RV_OK;
  if (s->format == RV_SOURCE_IDX) {
    int label;
    for (; n > 0 && s->index < s->n; n--, s->index++)
      if (idx_read(s, &label)) return s->err;
  } else if (s->format == RV_SOURCE_FVECS) {
    for (; n > 0; n--) {
      float *v = NULL;
      int dim, r = fvecs_read(s, &v, &dim);
      if (r < 0) return s->err;
      if (r == 0) break;
      free(v);
      s->index++;
    }
  } else {
    while (n > 0) {
      long len = read_line(s);
      if (len == -1) break;
      if (len < 0) return s->err;
      if (blank(s->line)) continue;
      s->index++;
      n--;
    }
  }
  return RV_OK;
}

rv_source_t *rv_source_open(const char *path, rv_source_format_t format, const rv_source_opts_t *opts,
                            char *errstr, size_t errstr_size) {
  rv_source_opts_t defaults;
  if (!opts) {
    rv_source_opts_init(&defaults);
    opts = &defaults;
  }
  if (format == RV_SOURCE_AUTO) format = rv_source_format_detect(path);
  if (format == RV_SOURCE_AUTO) {
    rv_errf(RV_ERR_INVALID, errstr, errstr_size,
            "%s: cannot tell the format from the name; give one (idx, fvecs, jsonl)", path);
    return NULL;
  }
  rv_source_t *s = calloc(1, sizeof *s);
  if (!s) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  s->format = format;
  s->n = -1;
  s->path = strdup(path);
  s->prefix = strdup(opts->id_prefix ? opts->id_prefix : "v");
  if (!s->path || !s->prefix) {
    fail(s, RV_ERR_NOMEM, "out of memory");
    goto fail;
  }
  if (format == RV_SOURCE_IDX) {
    char guess[4096];
    if (opts->labels_path)
      s->labels_path = strdup(opts->labels_path);
    else if (rv_source_idx_labels_path(path, guess, sizeof guess))
      s->labels_path = strdup(guess);
    if ((opts->labels_path || s->labels_path) && !s->labels_path) {
      fail(s, RV_ERR_NOMEM, "out of memory");
      goto fail;
    }
  }
  s->gz = open_gz(s, path);
  if (!s->gz) goto fail;
  if (format == RV_SOURCE_IDX && idx_open(s)) goto fail;
  if (do_skip(s, opts->skip)) goto fail;
  return s;
fail:
  rv_errf(s->err ? s->err : RV_ERR_IO, errstr, errstr_size, "%s", s->errmsg);
  rv_source_close(s);
  return NULL;
}

int rv_source_next(rv_source_t *src, rv_vector_record_t *out, char *errstr, size_t errstr_size) {
  rv_vector_record_close(out);
  if (!src->err) {
    int r;
    switch (src->format) {
    case RV_SOURCE_IDX: r = idx_next(src, out); break;
    case RV_SOURCE_FVECS: r = fvecs_next(src, out); break;
    default: r = jsonl_next(src, out); break;
    }
    if (r >= 0) return r;
  }
  rv_vector_record_close(out);
  return rv_errf(src->err, errstr, errstr_size, "%s", src->errmsg);
}

int64_t rv_source_size_hint(const rv_source_t *src) { return src->n; }

rv_source_format_t rv_source_format(const rv_source_t *src) { return src->format; }

void rv_source_close(rv_source_t *src) {
  if (!src) return;
  if (src->gz) gzclose(src->gz);
  if (src->labels) gzclose(src->labels);
  free(src->path);
  free(src->labels_path);
  free(src->prefix);
  free(src->pixels);
  free(src->line);
  free(src);
}
