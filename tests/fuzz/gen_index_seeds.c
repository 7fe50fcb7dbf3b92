/* Writes the seed corpora of fuzz_snapshot, fuzz_quantizer and
 * fuzz_hnsw_stream with the real writers (rv_snapshot_save, rv_hnsw_write,
 * rv_attrs_write, rv_sq8_serialize, rv_pq_serialize), so every seed is a
 * valid input that gets past the checksums and into the section parsers;
 * and those of fuzz_registry_response: writer schemas (the build's own, and
 * the evolved and incompatible ones of tests/common/test_resolver.c), each
 * followed by a NUL and a record written under it (rv_codec_encode_vector
 * for the build's schema, Avro binary spelled out below for the others).
 *
 *   fuzz_gen_index_seeds <tests/fuzz/corpus>
 *
 * Deterministic (fixed data and seeds): rerunning it rewrites the same
 * bytes, unless a format changed, which is when it should be rerun. The
 * indexes are tiny (dim 2..8, tens of vectors, M 2..4) so the corpus stays
 * small and each input runs in microseconds. Not a test; built on demand
 * (target fuzz_gen_index_seeds, default build only). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_attrs.h"
#include "rv_buf.h"
#include "rv_record.h"
#include "rv_schemas.h"
#include "rv_hnsw.h"
#include "rv_pq.h"
#include "rv_snapshot.h"
#include "rv_sq8.h"

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      fprintf(stderr, "gen_index_seeds:%d: %s: ", __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                               \
      fputc('\n', stderr);                                        \
      exit(1);                                                    \
    }                                                             \
  } while (0)

typedef struct mem {
  unsigned char *p; /* owned */
  size_t len, cap;
} mem_t;

static int mem_write(void *ctx, const void *buf, size_t len) {
  mem_t *m = ctx;
  if (m->len + len > m->cap) {
    size_t nc = m->cap ? m->cap : 4096;
    while (nc < m->len + len) nc *= 2;
    unsigned char *np = realloc(m->p, nc);
    if (!np) return -1;
    m->p = np;
    m->cap = nc;
  }
  memcpy(m->p + m->len, buf, len);
  m->len += len;
  return 0;
}

static void put_file(const char *dir, const char *sub, const char *name, const void *p, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
  FILE *f = fopen(path, "wb");
  CHECK(f != NULL, "cannot write %s", path);
  CHECK(fwrite(p, 1, len, f) == len && fclose(f) == 0, "writing %s", path);
  printf("%s (%zu bytes)\n", path, len);
}

/* x-th vector of a fixed, clustered data set (no two equal). */
static void vec(int i, int dim, float *out) {
  for (int d = 0; d < dim; d++) out[d] = (float)((i % 5) * 2 + sin(i * 0.7 + d * 1.3) + 0.01 * i);
}

static const rv_field_conf_t FIELDS[2] = {{"color", RV_FIELD_KEYWORD}, {"price", RV_FIELD_NUMBER}};
static const char *const COLORS[] = {"red", "green", "blue"};

typedef struct spec {
  const char *name;
  int dim, M, n, deletes, with_attrs;
  rv_metric_t metric;
  rv_hnsw_storage_t storage;
  int pq_m, keep_floats;
} spec_t;

static rv_hnsw_t *build(const spec_t *s, rv_attrs_t **attrs) {
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = s->dim;
  c.metric = s->metric;
  c.M = s->M;
  c.storage = s->storage;
  c.pq_m = s->pq_m;
  c.pq_keep_floats = s->keep_floats;
  c.initial_capacity = 16;
  char e[256];
  rv_hnsw_t *h = rv_hnsw_new(&c, e, sizeof e);
  CHECK(h != NULL, "%s: %s", s->name, e);
  float v[16];
  if (s->storage != RV_HNSW_FLOAT) { /* PQ needs 256 training vectors */
    size_t n = 300;
    float *sample = malloc(n * (size_t)s->dim * sizeof *sample);
    CHECK(sample != NULL, "memory");
    for (size_t i = 0; i < n; i++) vec((int)i + 1000, s->dim, sample + i * (size_t)s->dim);
    CHECK(rv_hnsw_train(h, sample, n, e, sizeof e) == RV_OK, "%s: train: %s", s->name, e);
    free(sample);
  }
  *attrs = NULL;
  if (s->with_attrs) {
    *attrs = rv_attrs_new(FIELDS, 2, e, sizeof e);
    CHECK(*attrs != NULL, "%s", e);
  }
  for (int i = 0; i < s->n; i++) {
    vec(i, s->dim, v);
    char id[32];
    snprintf(id, sizeof id, i % 3 ? "%d" : "doc-%d", i);
    uint32_t slot;
    CHECK(rv_hnsw_upsert(h, id, v, s->dim, &slot) == RV_OK, "%s: upsert %d", s->name, i);
    if (*attrs && i % 4) {
      rv_attr_value_t av[2] = {{"color", COLORS[i % 3], NAN}, {"price", NULL, i % 7 ? i * 1.5 : NAN}};
      CHECK(rv_attrs_set(*attrs, slot, av, 2, e, sizeof e) == RV_OK, "%s", e);
    }
  }
  /* Deletes leave tombstones and a free list; one re-insert reuses a slot. */
  for (int i = 0; i < s->deletes; i++) {
    char id[32];
    int k = i * 3 + 1;
    snprintf(id, sizeof id, k % 3 ? "%d" : "doc-%d", k);
    uint32_t slot;
    CHECK(rv_hnsw_internal_id(h, id, &slot) == RV_OK, "%s: %s", s->name, id);
    CHECK(rv_hnsw_delete(h, id) == RV_OK, "%s: delete %s", s->name, id);
    if (*attrs) rv_attrs_clear(*attrs, slot);
  }
  if (s->deletes > 1) {
    vec(999, s->dim, v);
    CHECK(rv_hnsw_upsert(h, "reused", v, s->dim, NULL) == RV_OK, "%s: reuse", s->name);
  }
  return h;
}

static const spec_t SPECS[] = {
    /* name              dim M  n  del attrs metric            storage        pq_m keep */
    {"float-l2-attrs", 4, 4, 40, 4, 1, RV_METRIC_L2, RV_HNSW_FLOAT, 0, 0},
    {"float-cosine", 3, 2, 12, 0, 0, RV_METRIC_COSINE, RV_HNSW_FLOAT, 0, 0},
    {"sq8-ip-attrs", 8, 3, 20, 2, 1, RV_METRIC_IP, RV_HNSW_SQ8, 0, 1},
    {"pq-l2-floats", 4, 2, 12, 1, 0, RV_METRIC_L2, RV_HNSW_PQ, 2, 1},
    {"pq-cosine-nofloats", 2, 2, 8, 0, 1, RV_METRIC_COSINE, RV_HNSW_PQ, 1, 0},
    {"empty", 2, 4, 0, 0, 1, RV_METRIC_L2, RV_HNSW_FLOAT, 0, 0},
};

/* ---- Avro binary, by the spec, for the writer schemas below ---- */

static void av_long(rv_buf_t *b, int64_t v) {
  uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
  do {
    uint8_t c = (uint8_t)(z & 0x7f);
    z >>= 7;
    if (z) c |= 0x80;
    rv_buf_append(b, &c, 1);
  } while (z);
}

static void av_str(rv_buf_t *b, const char *s) {
  av_long(b, (int64_t)strlen(s));
  rv_buf_append(b, s, strlen(s));
}

static void av_float(rv_buf_t *b, float f) {
  uint8_t p[4];
  uint32_t u;
  memcpy(&u, &f, 4);
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(u >> (8 * i));
  rv_buf_append(b, p, 4);
}

#define REC_HEAD "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
#define OP_ENUM "{\"type\":\"enum\",\"name\":\"Op\",\"symbols\":"
#define VEC_T(items) "[\"null\",{\"type\":\"array\",\"items\":\"" items "\"}]"

static void put_schema_seed(const char *dir, const char *name, const char *schema, const rv_buf_t *payload) {
  rv_buf_t b;
  rv_buf_init(&b);
  rv_buf_append(&b, schema, strlen(schema));
  if (payload) {
    rv_buf_append(&b, "", 1);
    rv_buf_append(&b, payload->base, payload->len);
  }
  put_file(dir, "fuzz_registry_response", name, b.base, b.len);
  rv_buf_close(&b);
}

static void registry_seeds(const char *dir) {
  char e[256];
  rv_buf_t p;
  rv_buf_init(&p);
  /* The build's own schema, with a record from the real encoder. */
  rv_codec_t *c = rv_codec_new(e, sizeof e);
  CHECK(c != NULL, "%s", e);
  float v[3] = {1, -2.5f, 0.125f};
  rv_vector_record_t r = {.id = (char *)"v1", .id_len = 2, .op = RV_OP_UPSERT, .vector = v, .dim = 3,
                          .metadata = (char *)"{\"color\":\"red\"}", .has_event_time = 1,
                          .event_time_ms = 1700000000000};
  CHECK(rv_codec_encode_vector(c, &r, &p, e, sizeof e) == RV_OK, "%s", e);
  put_schema_seed(dir, "own-schema", rv_schema_vector_record, &p);
  rv_codec_destroy(c);

  /* V2 of test_resolver.c: extra fields (string, map, fixed) the reader skips. */
  rv_buf_reset(&p);
  av_str(&p, "a");
  av_str(&p, "src");
  av_long(&p, 1); /* DELETE */
  av_long(&p, 1);
  av_long(&p, 2);
  av_float(&p, 0.5f);
  av_float(&p, -1);
  av_long(&p, 0);
  av_long(&p, 0); /* metadata null */
  av_long(&p, 1);
  av_long(&p, 1700000000123); /* event_time */
  av_long(&p, 1);
  av_str(&p, "x");
  av_long(&p, 3);
  av_long(&p, 0); /* tags {x: 3} */
  rv_buf_append(&p, "abcd", 4);
  put_schema_seed(dir, "evolved-extra-fields",
                  REC_HEAD "{\"name\":\"id\",\"type\":\"string\"},"
                           "{\"name\":\"source\",\"type\":\"string\",\"default\":\"unknown\"},"
                           "{\"name\":\"op\",\"type\":" OP_ENUM "[\"UPSERT\",\"DELETE\"]},\"default\":\"UPSERT\"},"
                           "{\"name\":\"vector\",\"type\":" VEC_T("float") ",\"default\":null},"
                           "{\"name\":\"metadata\",\"type\":[\"null\",\"string\"],\"default\":null},"
                           "{\"name\":\"event_time\",\"type\":[\"null\",{\"type\":\"long\",\"logicalType\":"
                           "\"timestamp-millis\"}],\"default\":null},"
                           "{\"name\":\"tags\",\"type\":{\"type\":\"map\",\"values\":\"int\"},\"default\":{}},"
                           "{\"name\":\"digest\",\"type\":{\"type\":\"fixed\",\"name\":\"Digest\",\"size\":4},"
                           "\"default\":\"abcd\"}]}",
                  &p);

  /* V3: reordered fields, no op, event_time a plain long (-> union). */
  rv_buf_reset(&p);
  av_long(&p, 1);
  av_long(&p, 1);
  av_float(&p, 7);
  av_long(&p, 0);
  av_str(&p, "b");
  av_long(&p, 1699999999999);
  put_schema_seed(dir, "evolved-reordered",
                  REC_HEAD "{\"name\":\"vector\",\"type\":" VEC_T("float") ",\"default\":null},"
                           "{\"name\":\"id\",\"type\":\"string\"},{\"name\":\"event_time\",\"type\":\"long\"}]}",
                  &p);

  /* int items promoted to float. */
  rv_buf_reset(&p);
  av_str(&p, "i");
  av_long(&p, 1);
  av_long(&p, 2);
  av_long(&p, 3);
  av_long(&p, -4);
  av_long(&p, 0);
  put_schema_seed(dir, "promoted-int-vector",
                  REC_HEAD "{\"name\":\"id\",\"type\":\"string\"},{\"name\":\"vector\",\"type\":" VEC_T("int") "}]}", &p);

  /* A recursive writer type (a linked list of itself). */
  rv_buf_reset(&p);
  av_str(&p, "x");
  av_long(&p, 1);
  av_str(&p, "y");
  av_long(&p, 0);
  put_schema_seed(dir, "recursive",
                  REC_HEAD "{\"name\":\"id\",\"type\":\"string\"},"
                           "{\"name\":\"next\",\"type\":[\"null\",\"io.ruvector.VectorRecord\"]}]}",
                  &p);

  /* A union the reader's event_time branch resolves from. */
  rv_buf_reset(&p);
  av_str(&p, "u");
  av_long(&p, 2);
  av_long(&p, 42);
  put_schema_seed(dir, "union-widened",
                  REC_HEAD "{\"name\":\"id\",\"type\":\"string\"},"
                           "{\"name\":\"event_time\",\"type\":[\"null\",\"string\",\"long\"]}]}",
                  &p);

  /* Incompatible ones: refused by the resolver, INCOMPATIBLE_SCHEMA in ingest. */
  rv_buf_reset(&p);
  av_str(&p, "k");
  av_long(&p, 0);
  put_schema_seed(dir, "incompatible-no-id",
                  REC_HEAD "{\"name\":\"key\",\"type\":\"string\"},{\"name\":\"vector\",\"type\":" VEC_T("float")
                           ",\"default\":null}]}",
                  &p);
  put_schema_seed(dir, "incompatible-string-vector",
                  REC_HEAD "{\"name\":\"id\",\"type\":\"string\"},{\"name\":\"vector\",\"type\":{\"type\":\"array\","
                           "\"items\":\"string\"}}]}",
                  NULL);
  put_schema_seed(dir, "incompatible-swapped-op",
                  REC_HEAD "{\"name\":\"id\",\"type\":\"string\"},{\"name\":\"op\",\"type\":" OP_ENUM
                           "[\"DELETE\",\"UPSERT\"]}}]}",
                  NULL);
  put_schema_seed(dir, "not-a-record", "{\"type\":\"string\"}", NULL);
  put_schema_seed(dir, "truncated-json", "{\"type\":\"record\",\"name\":", NULL);
  rv_buf_close(&p);
}

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: %s <tests/fuzz/corpus>", argv[0]);
  const char *dir = argv[1];
  char e[256], path[1024], name[128];
  for (size_t i = 0; i < sizeof SPECS / sizeof SPECS[0]; i++) {
    const spec_t *s = &SPECS[i];
    rv_attrs_t *a;
    rv_hnsw_t *h = build(s, &a);
    /* fuzz_snapshot: the file itself; positions are a small opaque blob. */
    snprintf(path, sizeof path, "%s/fuzz_snapshot/%s", dir, s->name);
    const char pos[] = "p0=17;p1=4";
    CHECK(rv_snapshot_save(path, h, a, i % 2 ? NULL : pos, i % 2 ? 0 : sizeof pos - 1, e, sizeof e) == RV_OK, "%s",
          e);
    printf("%s\n", path);
    /* fuzz_hnsw_stream: the hnsw stream, then (if any) the attribute stream. */
    mem_t m = {0};
    CHECK(rv_hnsw_write(h, mem_write, &m) == RV_OK, "hnsw_write");
    if (a) CHECK(rv_attrs_write(a, mem_write, &m) == RV_OK, "attrs_write");
    put_file(dir, "fuzz_hnsw_stream", s->name, m.p, m.len);
    free(m.p);
    rv_attrs_destroy(a);
    rv_hnsw_destroy(h);
  }

  /* fuzz_quantizer: serialized SQ8 and PQ parameters. */
  static const int sq8_dims[] = {1, 5, 16};
  for (size_t i = 0; i < sizeof sq8_dims / sizeof sq8_dims[0]; i++) {
    int dim = sq8_dims[i];
    float sample[64 * 16];
    for (int r = 0; r < 64; r++) vec(r, dim, sample + r * dim);
    if (dim == 5)
      for (int r = 0; r < 64; r++) sample[r * dim + 2] = 3.0f; /* a constant dimension */
    rv_sq8_t *q;
    CHECK(rv_sq8_train(sample, 64, dim, RV_SQ8_LO_Q_DEFAULT, RV_SQ8_HI_Q_DEFAULT, &q, e, sizeof e) == RV_OK, "%s", e);
    uint8_t *buf;
    size_t len;
    CHECK(rv_sq8_serialize(q, &buf, &len) == RV_OK, "sq8_serialize");
    snprintf(name, sizeof name, "sq8-dim%d", dim);
    put_file(dir, "fuzz_quantizer", name, buf, len);
    free(buf);
    rv_sq8_destroy(q);
  }
  static const int pq_shapes[][2] = {{4, 2}, {3, 3}, {2, 1}};
  for (size_t i = 0; i < sizeof pq_shapes / sizeof pq_shapes[0]; i++) {
    int dim = pq_shapes[i][0], mm = pq_shapes[i][1];
    float sample[300 * 4];
    for (int r = 0; r < 300; r++) vec(r, dim, sample + r * dim);
    rv_pq_params_t p = {.m = mm, .iters = 4, .seed = 7};
    rv_pq_t *q;
    CHECK(rv_pq_train(sample, 300, dim, &p, &q, e, sizeof e) == RV_OK, "%s", e);
    uint8_t *buf;
    size_t len;
    CHECK(rv_pq_serialize(q, &buf, &len) == RV_OK, "pq_serialize");
    snprintf(name, sizeof name, "pq-dim%d-m%d", dim, mm);
    put_file(dir, "fuzz_quantizer", name, buf, len);
    free(buf);
    rv_pq_destroy(q);
  }
  registry_seeds(dir);
  return 0;
}
