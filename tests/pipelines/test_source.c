/* Record sources (pipelines/rv_source.c): IDX (gzipped and plain, with and
 * without labels), fvecs and JSONL read back exactly, and every kind of bad
 * input rejected with a message that says where. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "tmpdir.h"
#include "rv_source.h"

#ifndef RV_FASHION_DIR
#define RV_FASHION_DIR "/usr/share/datasets/fashion-mnist"
#endif

static char dir[256];
static char errstr[512];

static int setup(void **state) { return tmpdir_make(dir, sizeof dir, "rv_test_source"); }

static int teardown(void **state) { return tmpdir_remove(dir); }

static const char *path_of(const char *name) { return tmpdir_path(dir, name); }

/* Writes bytes to dir/name, gzipped when the name ends in .gz. */
static void write_file(const char *name, const void *data, size_t len) {
  const char *p = path_of(name);
  size_t n = strlen(name);
  if (n > 3 && strcmp(name + n - 3, ".gz") == 0) {
    gzFile gz = gzopen(p, "wb");
    assert_non_null(gz);
    assert_int_equal(gzwrite(gz, data, (unsigned)len), (int)len);
    assert_int_equal(gzclose(gz), Z_OK);
  } else {
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
  }
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* n images of rows x cols; pixel (i, k) = (i * 7 + k * 3) % 256. Returns the size. */
static size_t make_images(uint8_t *buf, uint32_t n, uint32_t rows, uint32_t cols) {
  put_be32(buf, 0x00000803);
  put_be32(buf + 4, n);
  put_be32(buf + 8, rows);
  put_be32(buf + 12, cols);
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t k = 0; k < rows * cols; k++) buf[16 + i * rows * cols + k] = (uint8_t)((i * 7 + k * 3) % 256);
  return 16 + (size_t)n * rows * cols;
}

static size_t make_labels(uint8_t *buf, uint32_t n, const uint8_t *labels) {
  put_be32(buf, 0x00000801);
  put_be32(buf + 4, n);
  memcpy(buf + 8, labels, n);
  return 8 + n;
}

static void check_image(const rv_vector_record_t *r, uint32_t i, int dim) {
  assert_int_equal(r->dim, dim);
  assert_int_equal(r->op, RV_OP_UPSERT);
  for (int k = 0; k < dim; k++) assert_true(r->vector[k] == (float)((i * 7 + (uint32_t)k * 3) % 256));
}

static void test_format_detect(void **state) {
  assert_int_equal(rv_source_format_detect("/x/train-images-idx3-ubyte.gz"), RV_SOURCE_IDX);
  assert_int_equal(rv_source_format_detect("a-ubyte"), RV_SOURCE_IDX);
  assert_int_equal(rv_source_format_detect("sift_base.fvecs"), RV_SOURCE_FVECS);
  assert_int_equal(rv_source_format_detect("v.jsonl.gz"), RV_SOURCE_JSONL);
  assert_int_equal(rv_source_format_detect("data.bin"), RV_SOURCE_AUTO);
  char p[256];
  assert_int_equal(rv_source_idx_labels_path("/nowhere/t10k-images-idx3-ubyte.gz", p, sizeof p), 0);
  assert_string_equal(p, "/nowhere/t10k-labels-idx1-ubyte.gz");
  assert_null(rv_source_open(path_of("data.bin"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "format"));
}

/* Gzipped images with the matching labels file found by name. */
static void test_idx_gz_with_labels(void **state) {
  static uint8_t img[16 + 5 * 12], lab[8 + 5];
  const uint8_t labels[5] = {0, 9, 3, 1, 7};
  write_file("train-images-idx3-ubyte.gz", img, make_images(img, 5, 3, 4));
  write_file("train-labels-idx1-ubyte.gz", lab, make_labels(lab, 5, labels));

  rv_source_t *s = rv_source_open(path_of("train-images-idx3-ubyte.gz"), RV_SOURCE_AUTO, NULL, errstr,
                                  sizeof errstr);
  assert_non_null(s);
  assert_int_equal(rv_source_format(s), RV_SOURCE_IDX);
  assert_int_equal(rv_source_size_hint(s), 5);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  static const char *const want_meta[5] = {
      "{\"label\":0,\"class\":\"T-shirt/top\"}", "{\"label\":9,\"class\":\"Ankle boot\"}",
      "{\"label\":3,\"class\":\"Dress\"}", "{\"label\":1,\"class\":\"Trouser\"}",
      "{\"label\":7,\"class\":\"Sneaker\"}"};
  for (uint32_t i = 0; i < 5; i++) {
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    char id[16];
    snprintf(id, sizeof id, "v%u", i);
    assert_string_equal(r.id, id);
    assert_int_equal(r.id_len, strlen(id));
    check_image(&r, i, 12);
    assert_string_equal(r.metadata, want_meta[i]);
    assert_int_equal(r.has_event_time, 0);
  }
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
  assert_null(r.id);
  rv_source_close(s);
}

/* Plain images, no labels beside them; skip and prefix apply; ids keep file indexes. */
static void test_idx_plain_skip_prefix(void **state) {
  static uint8_t img[16 + 6 * 4];
  write_file("plain-images-idx3-ubyte", img, make_images(img, 6, 2, 2));
  rv_source_opts_t o;
  rv_source_opts_init(&o);
  o.skip = 4;
  o.id_prefix = "img-";
  rv_source_t *s = rv_source_open(path_of("plain-images-idx3-ubyte"), RV_SOURCE_IDX, &o, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "img-4");
  check_image(&r, 4, 4);
  assert_null(r.metadata);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "img-5");
  check_image(&r, 5, 4);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
  rv_source_close(s);

  /* skipping past the end is an empty source, not an error */
  o.skip = 100;
  s = rv_source_open(path_of("plain-images-idx3-ubyte"), RV_SOURCE_IDX, &o, errstr, sizeof errstr);
  assert_non_null(s);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
  rv_source_close(s);
}

/* An explicit labels file, and labels whose count disagrees with the images. */
static void test_idx_explicit_labels(void **state) {
  static uint8_t img[16 + 3 * 4], lab[8 + 3];
  const uint8_t labels[3] = {2, 4, 12};
  write_file("x-images-idx3-ubyte", img, make_images(img, 3, 2, 2));
  write_file("mylabels.gz", lab, make_labels(lab, 3, labels));
  rv_source_opts_t o;
  rv_source_opts_init(&o);
  o.labels_path = path_of("mylabels.gz");
  o.skip = 1;
  rv_source_t *s = rv_source_open(path_of("x-images-idx3-ubyte"), RV_SOURCE_IDX, &o, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "v1");
  assert_string_equal(r.metadata, "{\"label\":4,\"class\":\"Coat\"}");
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.metadata, "{\"label\":12}"); /* not a Fashion-MNIST class */
  rv_vector_record_close(&r);
  rv_source_close(s);

  write_file("short-labels", lab, make_labels(lab, 2, labels));
  o.labels_path = path_of("short-labels");
  assert_null(rv_source_open(path_of("x-images-idx3-ubyte"), RV_SOURCE_IDX, &o, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "2 labels for 3 images"));

  o.labels_path = path_of("missing-labels");
  assert_null(rv_source_open(path_of("x-images-idx3-ubyte"), RV_SOURCE_IDX, &o, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "missing-labels"));
}

static void test_idx_bad(void **state) {
  static uint8_t img[16 + 4 * 9];
  size_t n = make_images(img, 4, 3, 3);
  rv_vector_record_t r;
  rv_vector_record_init(&r);

  /* missing file */
  assert_null(rv_source_open(path_of("none-images-idx3-ubyte"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "No such file"));

  /* garbage */
  const char junk[] = "this is not an IDX file at all";
  write_file("junk-ubyte", junk, sizeof junk);
  assert_null(rv_source_open(path_of("junk-ubyte"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "magic"));

  /* a labels file given as the images */
  static uint8_t lab[8 + 4];
  const uint8_t labels[4] = {1, 2, 3, 4};
  write_file("l-ubyte", lab, make_labels(lab, 4, labels));
  assert_null(rv_source_open(path_of("l-ubyte"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "labels"));

  /* truncated header */
  write_file("h-ubyte.gz", img, 10);
  assert_null(rv_source_open(path_of("h-ubyte.gz"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr));
  assert_non_null(strstr(errstr, "truncated IDX header"));

  /* truncated in the third image: two records, then an error that names it */
  write_file("t-ubyte", img, n - 9 - 4);
  rv_source_t *s = rv_source_open(path_of("t-ubyte"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT);
  assert_non_null(strstr(errstr, "truncated at image 2 of 4"));
  assert_null(r.id);
  errstr[0] = 0;
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT); /* sticky */
  assert_non_null(strstr(errstr, "truncated"));
  rv_source_close(s);

  /* a gzip stream cut short: the compressed bytes end mid-stream */
  write_file("full-ubyte.gz", img, n);
  FILE *f = fopen(path_of("full-ubyte.gz"), "rb");
  assert_non_null(f);
  static uint8_t gz[4096];
  size_t gzlen = fread(gz, 1, sizeof gz, f);
  fclose(f);
  assert_true(gzlen > 20);
  write_file("cut-ubyte", gz, gzlen - 12); /* no .gz: write the bytes as they are */
  s = rv_source_open(path_of("cut-ubyte"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  int rc = 1;
  if (s) {
    while ((rc = rv_source_next(s, &r, errstr, sizeof errstr)) == 1) {
    }
    rv_source_close(s);
  }
  assert_true(rc < 0);
  rv_vector_record_close(&r);
}

static void put_fvec(uint8_t **p, int32_t dim, const float *v) {
  memcpy(*p, &dim, 4); /* little-endian host assumed by the test */
  memcpy(*p + 4, v, sizeof(float) * (size_t)dim);
  *p += 4 + sizeof(float) * (size_t)dim;
}

static void test_fvecs(void **state) {
  static uint8_t buf[1024];
  uint8_t *p = buf;
  const float a[3] = {1.5f, -2.25f, 3e-7f}, b[3] = {0, 1, 2}, c[3] = {-1, -1, 1e30f};
  put_fvec(&p, 3, a);
  put_fvec(&p, 3, b);
  put_fvec(&p, 3, c);
  write_file("ok.fvecs", buf, (size_t)(p - buf));
  write_file("ok.fvecs.gz", buf, (size_t)(p - buf));
  const float *want[3] = {a, b, c};

  for (int gz = 0; gz < 2; gz++) {
    rv_source_opts_t o;
    rv_source_opts_init(&o);
    o.skip = 1;
    o.id_prefix = "";
    rv_source_t *s = rv_source_open(path_of(gz ? "ok.fvecs.gz" : "ok.fvecs"), RV_SOURCE_AUTO, &o, errstr,
                                    sizeof errstr);
    assert_non_null(s);
    assert_int_equal(rv_source_size_hint(s), -1);
    rv_vector_record_t r;
    rv_vector_record_init(&r);
    for (int i = 1; i < 3; i++) {
      assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
      char id[8];
      snprintf(id, sizeof id, "%d", i);
      assert_string_equal(r.id, id);
      assert_int_equal(r.dim, 3);
      assert_memory_equal(r.vector, want[i], sizeof a);
      assert_null(r.metadata);
    }
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
    rv_source_close(s);
  }

  /* inconsistent dim */
  p = buf;
  put_fvec(&p, 3, a);
  put_fvec(&p, 2, b);
  write_file("dims.fvecs", buf, (size_t)(p - buf));
  rv_source_t *s = rv_source_open(path_of("dims.fvecs"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT);
  assert_non_null(strstr(errstr, "vector 1 has dim 2, the first had 3"));
  rv_source_close(s);

  /* truncated inside a vector, and inside a dim */
  p = buf;
  put_fvec(&p, 3, a);
  put_fvec(&p, 3, b);
  for (int cut = 1; cut <= 2; cut++) {
    write_file("cut.fvecs", buf, (size_t)(p - buf) - (cut == 1 ? 5 : 14));
    s = rv_source_open(path_of("cut.fvecs"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
    assert_non_null(s);
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT);
    assert_non_null(strstr(errstr, "truncated"));
    assert_non_null(strstr(errstr, "vector 1"));
    rv_source_close(s);
  }

  /* a negative dim */
  int32_t bad = -4;
  write_file("neg.fvecs", &bad, 4);
  s = rv_source_open(path_of("neg.fvecs"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT);
  assert_non_null(strstr(errstr, "dim -4"));
  rv_source_close(s);
}

static void test_jsonl_good(void **state) {
  const char text[] =
      "{\"id\":\"a\",\"vector\":[1,2.5,-3],\"metadata\":{\"color\":\"red\",\"n\":2},\"event_time\":1700000000123}\n"
      "\n"
      "   \r\n"
      "{\"id\":\"b\",\"op\":\"DELETE\"}\r\n"
      "{\"id\":42,\"op\":\"upsert\",\"vector\":[0.125],\"metadata\":null,\"extra\":true}\n"
      "{\"id\":\"last\",\"vector\":[7]}"; /* no newline at the end */
  write_file("good.jsonl", text, sizeof text - 1);
  write_file("good.jsonl.gz", text, sizeof text - 1);
  for (int gz = 0; gz < 2; gz++) {
    rv_source_t *s = rv_source_open(path_of(gz ? "good.jsonl.gz" : "good.jsonl"), RV_SOURCE_AUTO, NULL, errstr,
                                    sizeof errstr);
    assert_non_null(s);
    rv_vector_record_t r;
    rv_vector_record_init(&r);
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    assert_string_equal(r.id, "a");
    assert_int_equal(r.id_len, 1);
    assert_int_equal(r.op, RV_OP_UPSERT);
    assert_int_equal(r.dim, 3);
    assert_true(r.vector[0] == 1.0f && r.vector[1] == 2.5f && r.vector[2] == -3.0f);
    assert_string_equal(r.metadata, "{\"color\":\"red\",\"n\":2}");
    assert_int_equal(r.has_event_time, 1);
    assert_int_equal(r.event_time_ms, 1700000000123LL);

    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    assert_string_equal(r.id, "b");
    assert_int_equal(r.op, RV_OP_DELETE);
    assert_null(r.vector);
    assert_int_equal(r.dim, 0);
    assert_null(r.metadata);
    assert_int_equal(r.has_event_time, 0);

    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    assert_string_equal(r.id, "42");
    assert_int_equal(r.op, RV_OP_UPSERT);
    assert_int_equal(r.dim, 1);
    assert_true(r.vector[0] == 0.125f);
    assert_null(r.metadata);

    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    assert_string_equal(r.id, "last");
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
    rv_source_close(s);
  }

  /* skip counts records, not blank lines */
  rv_source_opts_t o;
  rv_source_opts_init(&o);
  o.skip = 2;
  rv_source_t *s = rv_source_open(path_of("good.jsonl"), RV_SOURCE_JSONL, &o, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "42");
  rv_vector_record_close(&r);
  rv_source_close(s);
}

/* Each bad line is the 3rd line of its file, after a good one and a blank one. */
static void test_jsonl_bad(void **state) {
  static const struct {
    const char *line;
    const char *want;
  } cases[] = {
      {"{\"id\":\"x\",", "invalid JSON"},
      {"[1,2,3]", "expected a JSON object"},
      {"{\"vector\":[1]}", "\"id\" must be a non-empty string"},
      {"{\"id\":\"\"}", "\"id\" must be a non-empty string"},
      {"{\"id\":\"x\",\"op\":\"MERGE\"}", "\"op\" must be"},
      {"{\"id\":\"x\",\"vector\":[1,\"2\"]}", "vector[1] is not a number"},
      {"{\"id\":\"x\",\"vector\":[]}", "\"vector\" must be a non-empty array"},
      {"{\"id\":\"x\",\"vector\":{}}", "\"vector\" must be a non-empty array"},
      {"{\"id\":\"x\",\"metadata\":\"{}\"}", "\"metadata\" must be a JSON object"},
      {"{\"id\":\"x\",\"event_time\":\"2024-01-01\"}", "\"event_time\" must be an integer"},
      {"{\"id\":\"x\",\"id\":\"y\"}", "invalid JSON"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[512], name[32];
    snprintf(text, sizeof text, "{\"id\":\"ok\",\"vector\":[1]}\n\n%s\n{\"id\":\"after\"}\n", cases[i].line);
    snprintf(name, sizeof name, "bad%zu.jsonl", i);
    write_file(name, text, strlen(text));
    rv_source_t *s = rv_source_open(path_of(name), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
    assert_non_null(s);
    rv_vector_record_t r;
    rv_vector_record_init(&r);
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    int rc = rv_source_next(s, &r, errstr, sizeof errstr);
    char where[300];
    snprintf(where, sizeof where, "%s:3: ", path_of(name));
    if (rc != RV_ERR_CORRUPT || !strstr(errstr, where) || !strstr(errstr, cases[i].want))
      fail_msg("case %zu (%s): rc %d, errstr \"%s\", want \"%s\" and \"%s\"", i, cases[i].line, rc, errstr, where,
               cases[i].want);
    assert_null(r.id);
    assert_null(r.vector);
    rv_source_close(s);
  }

  /* an id longer than 512 bytes */
  static char text[1200];
  memset(text, 0, sizeof text);
  strcpy(text, "{\"id\":\"");
  memset(text + 7, 'x', 513);
  strcat(text, "\"}\n");
  write_file("longid.jsonl", text, strlen(text));
  rv_source_t *s = rv_source_open(path_of("longid.jsonl"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT);
  assert_non_null(strstr(errstr, "longid.jsonl:1: \"id\" is 513 bytes"));
  rv_source_close(s);
}

/* A NUL byte inside a line is an error at that line, not a silent cut that
 * glues the next line onto the rest. */
static void test_jsonl_nul_byte(void **state) {
  static const char text[] = "{\"id\":\"a\"}\0junk\n{\"id\":\"b\"}\n";
  write_file("nul.jsonl", text, sizeof text - 1);
  rv_source_t *s = rv_source_open(path_of("nul.jsonl"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), RV_ERR_CORRUPT);
  if (!strstr(errstr, "nul.jsonl:1: the line contains a NUL byte")) fail_msg("errstr \"%s\"", errstr);
  assert_null(r.id);
  rv_source_close(s);

  /* no newline at the end: the last line still counts */
  static const char nonl[] = "{\"id\":\"a\"}\n{\"id\":\"b\"}";
  write_file("nonl.jsonl", nonl, sizeof nonl - 1);
  s = rv_source_open(path_of("nonl.jsonl"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "a");
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "b");
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
  rv_vector_record_close(&r);
  rv_source_close(s);
}

/* Lines longer than the initial 64 KiB line buffer. */
static void test_jsonl_long_line(void **state) {
  const int dim = 20000;
  size_t cap = (size_t)dim * 12 + 64;
  char *text = malloc(cap);
  assert_non_null(text);
  size_t n = (size_t)sprintf(text, "{\"id\":\"big\",\"vector\":[");
  for (int i = 0; i < dim; i++) n += (size_t)sprintf(text + n, "%s%d.5", i ? "," : "", i);
  n += (size_t)sprintf(text + n, "]}\n{\"id\":\"next\"}\n");
  write_file("long.jsonl.gz", text, n);
  free(text);
  rv_source_t *s = rv_source_open(path_of("long.jsonl.gz"), RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_non_null(s);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_int_equal(r.dim, dim);
  assert_true(r.vector[dim - 1] == (float)(dim - 1) + 0.5f);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "next");
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 0);
  rv_source_close(s);
}

/* The real Fashion-MNIST training set: 60000 images of 28x28, labels 0..9. */
static void test_fashion_mnist(void **state) {
  const char *p = RV_FASHION_DIR "/train-images-idx3-ubyte.gz";
  if (access(p, R_OK) != 0) skip();
  rv_source_t *s = rv_source_open(p, RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  if (!s) fail_msg("%s", errstr);
  assert_int_equal(rv_source_size_hint(s), 60000);
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
    assert_int_equal(r.dim, 784);
    float max = 0;
    for (int k = 0; k < 784; k++) {
      assert_true(r.vector[k] >= 0 && r.vector[k] <= 255);
      if (r.vector[k] > max) max = r.vector[k];
    }
    assert_true(max > 1); /* raw 0..255 values, not scaled to 0..1 */
    assert_non_null(r.metadata);
    int label = -1, used = 0;
    assert_int_equal(sscanf(r.metadata, "{\"label\":%d,\"class\":\"%n", &label, &used), 1);
    assert_true(used > 0);
    assert_in_range(label, 0, 9);
  }
  /* The first training image is an ankle boot (label 9) in Fashion-MNIST. */
  rv_source_close(s);
  s = rv_source_open(p, RV_SOURCE_AUTO, NULL, errstr, sizeof errstr);
  assert_int_equal(rv_source_next(s, &r, errstr, sizeof errstr), 1);
  assert_string_equal(r.id, "v0");
  assert_string_equal(r.metadata, "{\"label\":9,\"class\":\"Ankle boot\"}");
  rv_vector_record_close(&r);
  rv_source_close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_format_detect),
      cmocka_unit_test(test_idx_gz_with_labels),
      cmocka_unit_test(test_idx_plain_skip_prefix),
      cmocka_unit_test(test_idx_explicit_labels),
      cmocka_unit_test(test_idx_bad),
      cmocka_unit_test(test_fvecs),
      cmocka_unit_test(test_jsonl_good),
      cmocka_unit_test(test_jsonl_bad),
      cmocka_unit_test(test_jsonl_long_line),
      cmocka_unit_test(test_jsonl_nul_byte),
      cmocka_unit_test(test_fashion_mnist),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
