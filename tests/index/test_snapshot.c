/* rv_snapshot: round trips (every storage mode; graph, attributes and
 * positions preserved, identical search results, filtered too), every
 * truncation and byte flip of a small file and a sample of a large one,
 * wrong magic / newer version / other byte order / bad section table with a
 * valid checksum, failed saves leaving the old file and no temporary, and the
 * load time against the build time (printed, not asserted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "index_testutil.h"
#include "rv_attrs.h"
#include "rv_bytes.h"
#include "rv_filter.h"
#include "rv_hnsw.h"
#include "rv_planner.h"
#include "rv_snapshot.h"

static const rv_field_conf_t FIELDS[] = {{"color", RV_FIELD_KEYWORD}, {"price", RV_FIELD_NUMBER}};

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/rv_test_snapshot.XXXXXX");
  assert_non_null(mkdtemp(g_dir));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  DIR *d = opendir(g_dir);
  struct dirent *e;
  char p[600];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
    if (rmdir(p)) unlink(p);
  }
  if (d) closedir(d);
  rmdir(g_dir);
  return 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct world {
  rv_hnsw_t *h;
  rv_attrs_t *a;
  int n, dim;
  float *v;
} world_t;

/* n vectors, every 7th deleted (tombstones, free list), attributes on the live ones. */
static world_t build(int n, int dim, rv_metric_t metric, rv_hnsw_storage_t st, int keep_floats, uint64_t seed) {
  world_t w = {.n = n, .dim = dim};
  char e[256], id[32], color[32];
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = dim;
  c.metric = metric;
  c.M = 8;
  c.ef_construction = 60;
  c.storage = st;
  c.pq_keep_floats = keep_floats;
  c.pq_m = st == RV_HNSW_PQ ? dim / 4 : 0;
  w.h = rv_hnsw_new(&c, e, sizeof e);
  if (!w.h) fail_msg("rv_hnsw_new: %s", e);
  w.v = malloc((size_t)n * dim * sizeof(float));
  tu_fill(&seed, w.v, n * dim);
  if (st != RV_HNSW_FLOAT) assert_int_equal(rv_hnsw_train(w.h, w.v, (size_t)n, e, sizeof e), RV_OK);
  w.a = rv_attrs_new(FIELDS, 2, e, sizeof e);
  for (int i = 0; i < n; i++) {
    uint32_t slot;
    snprintf(id, sizeof id, "id-%d", i);
    assert_int_equal(rv_hnsw_upsert(w.h, id, w.v + (size_t)i * dim, dim, &slot), RV_OK);
    snprintf(color, sizeof color, "c%d", (int)(tu_next(&seed) % 13));
    rv_attr_value_t av[] = {{"color", color, NAN}, {"price", NULL, i % 3 ? (double)(tu_next(&seed) % 1000) : NAN}};
    assert_int_equal(rv_attrs_set(w.a, slot, av, 2, e, sizeof e), RV_OK);
  }
  for (int i = 0; i < n; i += 7) {
    uint32_t slot;
    snprintf(id, sizeof id, "id-%d", i);
    assert_int_equal(rv_hnsw_internal_id(w.h, id, &slot), RV_OK);
    assert_int_equal(rv_hnsw_delete(w.h, id), RV_OK);
    rv_attrs_clear(w.a, slot);
  }
  return w;
}

static void world_free(world_t *w) {
  rv_hnsw_destroy(w->h);
  rv_attrs_destroy(w->a);
  free(w->v);
}

static void path_of(char *buf, size_t size, const char *name) { snprintf(buf, size, "%s/%s", g_dir, name); }

/* Searches (plain and filtered) give the same hits, scores and ids on both. */
static void same_results(const rv_hnsw_t *h1, const rv_attrs_t *a1, const rv_hnsw_t *h2, const rv_attrs_t *a2, int dim,
                         uint64_t seed) {
  char e[256], i1[64], i2[64];
  float *q = malloc((size_t)dim * sizeof(float));
  rv_hnsw_result_t r1[10], r2[10];
  for (int t = 0; t < 40; t++) {
    tu_fill(&seed, q, dim);
    int n1, n2;
    if (t % 2 == 0) {
      assert_int_equal(rv_hnsw_search(h1, q, dim, 10, 0, NULL, r1, &n1), RV_OK);
      assert_int_equal(rv_hnsw_search(h2, q, dim, 10, 0, NULL, r2, &n2), RV_OK);
    } else {
      char color[16];
      snprintf(color, sizeof color, "c%d", t % 13);
      rv_filter_t *f1 = rv_filter_new(a1), *f2 = rv_filter_new(a2);
      assert_int_equal(rv_filter_eq(f1, "color", color, e, sizeof e), RV_OK);
      assert_int_equal(rv_filter_eq(f2, "color", color, e, sizeof e), RV_OK);
      assert_int_equal(rv_filter_range(f1, "price", RV_BOUND_INCL, 100, RV_BOUND_OPEN, 0, e, sizeof e), RV_OK);
      assert_int_equal(rv_filter_range(f2, "price", RV_BOUND_INCL, 100, RV_BOUND_OPEN, 0, e, sizeof e), RV_OK);
      rv_plan_mode_t mode = t % 4 == 1 ? RV_PLAN_GRAPH : RV_PLAN_EXACT;
      assert_int_equal(rv_planner_search(h1, a1, f1, q, dim, 10, 0, mode, r1, &n1, NULL, e, sizeof e), RV_OK);
      assert_int_equal(rv_planner_search(h2, a2, f2, q, dim, 10, 0, mode, r2, &n2, NULL, e, sizeof e), RV_OK);
      assert_true(n1 > 0);
      rv_filter_destroy(f1);
      rv_filter_destroy(f2);
    }
    assert_int_equal(n1, n2);
    for (int i = 0; i < n1; i++) {
      assert_int_equal(r1[i].id, r2[i].id);
      assert_true(r1[i].score == r2[i].score);
      assert_int_equal(rv_hnsw_result_external_id(h1, &r1[i], i1, sizeof i1), RV_OK);
      assert_int_equal(rv_hnsw_result_external_id(h2, &r2[i], i2, sizeof i2), RV_OK);
      assert_string_equal(i1, i2);
    }
  }
  free(q);
}

static void same_attrs(const rv_attrs_t *a, const rv_attrs_t *b, uint32_t bound) {
  char x[64], y[64];
  assert_int_equal(rv_attrs_count(a), rv_attrs_count(b));
  for (uint32_t s = 0; s < bound; s++) {
    rv_err_t ea = rv_attrs_get_keyword(a, s, 0, x, sizeof x), eb = rv_attrs_get_keyword(b, s, 0, y, sizeof y);
    assert_int_equal(ea, eb);
    if (!ea) assert_string_equal(x, y);
    double pa = rv_attrs_get_number(a, s, 1), pb = rv_attrs_get_number(b, s, 1);
    assert_int_equal(isnan(pa), isnan(pb));
    if (!isnan(pa)) assert_true(pa == pb);
  }
  for (int c = 0; c < 13; c++) {
    snprintf(x, sizeof x, "c%d", c);
    assert_int_equal(rv_attrs_count_keyword(a, 0, x), rv_attrs_count_keyword(b, 0, x));
  }
}

static void round_trip(rv_metric_t metric, rv_hnsw_storage_t st, int keep) {
  char e[256], path[512];
  world_t w = build(1500, 16, metric, st, keep, 42 + (uint64_t)st * 3 + (uint64_t)keep);
  uint8_t pos[777];
  for (size_t i = 0; i < sizeof pos; i++) pos[i] = (uint8_t)(i * 31 + 7);
  path_of(path, sizeof path, "rt.snap");
  assert_int_equal(rv_snapshot_save(path, w.h, w.a, pos, sizeof pos, e, sizeof e), RV_OK);
  rv_hnsw_t *h = NULL;
  rv_attrs_t *a = NULL;
  void *p = NULL;
  size_t plen = 0;
  if (rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e)) fail_msg("load: %s", e);
  assert_int_equal(plen, sizeof pos);
  assert_memory_equal(p, pos, sizeof pos);
  assert_int_equal(rv_hnsw_count(h), rv_hnsw_count(w.h));
  assert_int_equal(rv_hnsw_id_bound(h), rv_hnsw_id_bound(w.h));
  for (uint32_t s = 0; s < rv_hnsw_id_bound(h); s++) assert_int_equal(rv_hnsw_is_live(h, s), rv_hnsw_is_live(w.h, s));
  same_attrs(w.a, a, rv_hnsw_id_bound(h));
  same_results(w.h, w.a, h, a, w.dim, 9);
  /* the loaded index takes writes: a reused slot, then the same searches on both */
  char id[32];
  for (int i = 0; i < 20; i++) {
    snprintf(id, sizeof id, "new-%d", i);
    uint32_t s1, s2;
    assert_int_equal(rv_hnsw_upsert(w.h, id, w.v + (size_t)(i + 1) * w.dim, w.dim, &s1), RV_OK);
    assert_int_equal(rv_hnsw_upsert(h, id, w.v + (size_t)(i + 1) * w.dim, w.dim, &s2), RV_OK);
    assert_int_equal(s1, s2); /* the free list came through */
  }
  free(p);
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  world_free(&w);
  unlink(path);
}

static void test_round_trip_all_modes(void **state) {
  (void)state;
  round_trip(RV_METRIC_L2, RV_HNSW_FLOAT, 1);
  round_trip(RV_METRIC_COSINE, RV_HNSW_FLOAT, 1);
  round_trip(RV_METRIC_IP, RV_HNSW_SQ8, 1);
  round_trip(RV_METRIC_L2, RV_HNSW_SQ8, 1);
  round_trip(RV_METRIC_L2, RV_HNSW_PQ, 1);
  round_trip(RV_METRIC_COSINE, RV_HNSW_PQ, 0);
}

static void test_optional_parts(void **state) {
  (void)state;
  char e[256], path[512];
  world_t w = build(50, 4, RV_METRIC_L2, RV_HNSW_FLOAT, 1, 1);
  path_of(path, sizeof path, "opt.snap");
  assert_int_equal(rv_snapshot_save(path, w.h, NULL, NULL, 0, e, sizeof e), RV_OK);
  rv_hnsw_t *h = (rv_hnsw_t *)1;
  rv_attrs_t *a = (rv_attrs_t *)1;
  void *p = (void *)1;
  size_t plen = 99;
  assert_int_equal(rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e), RV_OK);
  assert_non_null(h);
  assert_null(a);
  assert_null(p);
  assert_int_equal(plen, 0);
  assert_int_equal(rv_hnsw_count(h), rv_hnsw_count(w.h));
  rv_hnsw_destroy(h);
  /* a conf that contradicts the file */
  rv_hnsw_conf_t c;
  rv_hnsw_conf_defaults(&c);
  c.dim = 5;
  assert_int_equal(rv_snapshot_load(path, &c, &h, &a, &p, &plen, e, sizeof e), RV_ERR_CONFIG);
  assert_null(h);
  /* missing file, bad arguments */
  path_of(path, sizeof path, "absent.snap");
  assert_int_equal(rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_snapshot_save(path, w.h, NULL, NULL, 5, e, sizeof e), RV_ERR_INVALID);
  assert_int_equal(rv_snapshot_save(path, NULL, NULL, NULL, 0, e, sizeof e), RV_ERR_INVALID);
  world_free(&w);
}

/* ---- damage ----------------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

static void spit(const char *path, const uint8_t *b, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, len, f), len);
  fclose(f);
}

/* Loading path must fail with RV_ERR_CORRUPT, outputs cleared, errstr
 * containing want (if given). */
static void expect_corrupt(const char *path, const char *want, const char *what) {
  char e[512] = "";
  rv_hnsw_t *h = (rv_hnsw_t *)1;
  rv_attrs_t *a = (rv_attrs_t *)1;
  void *p = (void *)1;
  size_t plen = 1;
  rv_err_t err = rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e);
  if (err != RV_ERR_CORRUPT) {
    if (!err) {
      rv_hnsw_destroy(h);
      rv_attrs_destroy(a);
      free(p);
    }
    fail_msg("%s: load gave %d (%s), wanted RV_ERR_CORRUPT", what, err, e);
  }
  assert_null(h);
  assert_null(a);
  assert_null(p);
  assert_int_equal(plen, 0);
  if (!*e) fail_msg("%s: no message", what);
  if (want && !strstr(e, want)) fail_msg("%s: message '%s' lacks '%s'", what, e, want);
}

/* Rewrites the trailer checksum so that only the targeted check can object. */
static void fix_crc(uint8_t *b, size_t len) { rv__put_u32(b + len - 8, rv__crc32c(0, b, len - 8)); }

static void damage_all(const char *path, const uint8_t *good, size_t len, size_t flips, size_t truncs, uint64_t seed) {
  char dpath[600], what[64];
  snprintf(dpath, sizeof dpath, "%s.damaged", path);
  uint8_t *b = malloc(len + 1);
  /* truncations: all of them for a small file, a sample otherwise */
  for (size_t i = 0; i < truncs && i < len; i++) {
    size_t cut = truncs >= len ? i : (size_t)(tu_next(&seed) % len);
    if (i < 40 && truncs < len) cut = len - 1 - i; /* always the tail, where the trailer is */
    spit(dpath, good, cut);
    snprintf(what, sizeof what, "truncated to %zu of %zu", cut, len);
    expect_corrupt(dpath, NULL, what);
  }
  /* byte flips */
  for (size_t i = 0; i < flips && i < len; i++) {
    size_t at = flips >= len ? i : (size_t)(tu_next(&seed) % len);
    memcpy(b, good, len);
    b[at] ^= (uint8_t)(1u << (tu_next(&seed) % 8));
    spit(dpath, b, len);
    snprintf(what, sizeof what, "byte %zu of %zu flipped", at, len);
    expect_corrupt(dpath, NULL, what);
  }
  /* one byte too many */
  memcpy(b, good, len);
  b[len] = 0;
  spit(dpath, b, len + 1);
  expect_corrupt(dpath, NULL, "one byte appended");
  free(b);
  unlink(dpath);
}

static void test_damage_small_file_exhaustive(void **state) {
  (void)state;
  char e[256], path[512];
  world_t w = build(12, 4, RV_METRIC_L2, RV_HNSW_FLOAT, 1, 3);
  uint8_t pos[] = "partition offsets";
  path_of(path, sizeof path, "small.snap");
  assert_int_equal(rv_snapshot_save(path, w.h, w.a, pos, sizeof pos, e, sizeof e), RV_OK);
  size_t len;
  uint8_t *good = slurp(path, &len);
  print_message("small snapshot: %zu bytes, every truncation and every byte flipped\n", len);
  damage_all(path, good, len, len, len, 1);

  /* each header/table check, with a valid checksum so that it is the one that objects */
  char dpath[600];
  snprintf(dpath, sizeof dpath, "%s.x", path);
  uint8_t *b = malloc(len);
  memcpy(b, good, len);
  b[0] = 'X';
  spit(dpath, b, len);
  expect_corrupt(dpath, "magic", "wrong magic");
  memcpy(b, good, len);
  rv__put_u32(b + 8, RV_SNAPSHOT_VERSION + 1);
  fix_crc(b, len);
  spit(dpath, b, len);
  expect_corrupt(dpath, "newer", "future version");
  memcpy(b, good, len);
  rv__put_u32(b + 12, 0x04030201u);
  fix_crc(b, len);
  spit(dpath, b, len);
  expect_corrupt(dpath, "byte order", "other endianness");
  memcpy(b, good, len);
  b[len / 2] ^= 0x10;
  spit(dpath, b, len);
  expect_corrupt(dpath, "checksum", "a flipped payload byte");
  uint64_t table = rv__get_u64(good + len - 24);
  /* The checksum runs beside the parse: a byte every reader accepts (the
   * positions blob is opaque) must still fail the load, and a mismatch wins
   * over the error the parse meets (here a bad section count). */
  memcpy(b, good, len);
  assert_int_equal(rv__get_u32(b + table + 4 + 2 * 24), 0x4e534f50u); /* POSN */
  b[rv__get_u64(b + table + 4 + 2 * 24 + 8)] ^= 0x01;
  spit(dpath, b, len);
  expect_corrupt(dpath, "checksum", "a flipped byte of the positions blob");
  memcpy(b, good, len);
  rv__put_u32(b + table, 7);
  spit(dpath, b, len);
  expect_corrupt(dpath, "checksum", "a bad section count and no fixed checksum");
  /* section table: the first section one byte longer (valid checksum) */
  memcpy(b, good, len);
  rv__put_u64(b + table + 4 + 16, rv__get_u64(b + table + 4 + 16) + 1);
  fix_crc(b, len);
  spit(dpath, b, len);
  expect_corrupt(dpath, "tile", "section length");
  /* unknown section tag */
  memcpy(b, good, len);
  rv__put_u32(b + table + 4, 0x5a5a5a5au);
  fix_crc(b, len);
  spit(dpath, b, len);
  expect_corrupt(dpath, "unknown section", "section tag");
  /* a section count that does not fit the table */
  memcpy(b, good, len);
  rv__put_u32(b + table, 1);
  fix_crc(b, len);
  spit(dpath, b, len);
  expect_corrupt(dpath, NULL, "section count");
  /* a damaged attribute section with a valid checksum: its reader objects */
  memcpy(b, good, len);
  uint64_t aoff = rv__get_u64(b + table + 4 + 24 + 8);
  assert_int_equal(rv__get_u32(b + table + 4 + 24), 0x52545441u); /* ATTR */
  b[aoff + 4] = 200;                                              /* field count */
  fix_crc(b, len);
  spit(dpath, b, len);
  expect_corrupt(dpath, "fields", "attribute field count");
  /* a damaged graph section with a valid checksum: rv_hnsw_read objects */
  memcpy(b, good, len);
  for (size_t i = 16; i < 48; i++) b[i] = 0xff;
  fix_crc(b, len);
  spit(dpath, b, len);
  char e2[512];
  rv_hnsw_t *h;
  rv_attrs_t *a;
  void *p;
  size_t plen;
  rv_err_t err = rv_snapshot_load(dpath, NULL, &h, &a, &p, &plen, e2, sizeof e2);
  assert_true(err == RV_ERR_CORRUPT || err == RV_ERR_CONFIG || err == RV_ERR_NOMEM);
  assert_non_null(strstr(e2, "HNSW"));
  unlink(dpath);
  free(b);
  free(good);
  world_free(&w);
}

static void test_damage_large_file_sampled(void **state) {
  (void)state;
  char e[256], path[512];
  world_t w = build(3000, 24, RV_METRIC_COSINE, RV_HNSW_SQ8, 1, 8);
  uint8_t *pos = malloc(100000);
  for (int i = 0; i < 100000; i++) pos[i] = (uint8_t)i;
  path_of(path, sizeof path, "large.snap");
  assert_int_equal(rv_snapshot_save(path, w.h, w.a, pos, 100000, e, sizeof e), RV_OK);
  size_t len;
  uint8_t *good = slurp(path, &len);
  print_message("large snapshot: %zu bytes, 300 flips, 200 truncations\n", len);
  damage_all(path, good, len, 300, 200, 2);
  free(good);
  free(pos);
  world_free(&w);
}

/* ---- failed saves --------------------------------------------------------------- */

static int count_entries(void) {
  DIR *d = opendir(g_dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static void test_failed_save_keeps_old(void **state) {
  (void)state;
  char e[256], path[512], tmp[600];
  world_t w1 = build(100, 8, RV_METRIC_L2, RV_HNSW_FLOAT, 1, 10),
          w2 = build(3000, 8, RV_METRIC_L2, RV_HNSW_FLOAT, 1, 11);
  path_of(path, sizeof path, "keep.snap");
  assert_int_equal(rv_snapshot_save(path, w1.h, w1.a, "v1", 2, e, sizeof e), RV_OK);
  int before = count_entries();

  /* 1: the temporary cannot be created (a directory sits on its name; works as root too) */
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  assert_int_equal(mkdir(tmp, 0700), 0);
  assert_int_equal(rv_snapshot_save(path, w2.h, w2.a, "v2", 2, e, sizeof e), RV_ERR_IO);
  assert_non_null(strstr(e, "open"));
  rmdir(tmp);

  /* 2: the write fails half way (file size limit: EFBIG) */
  struct rlimit old, lim;
  getrlimit(RLIMIT_FSIZE, &old);
  lim = old;
  lim.rlim_cur = 4096;
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
  rv_err_t err = rv_snapshot_save(path, w2.h, w2.a, "v2", 2, e, sizeof e);
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, prev);
  assert_int_equal(err, RV_ERR_IO);
  print_message("failed save says: %s\n", e);

  /* 3: the directory does not exist */
  char nowhere[600];
  snprintf(nowhere, sizeof nowhere, "%s/no/such/dir/x.snap", g_dir);
  assert_int_equal(rv_snapshot_save(nowhere, w2.h, w2.a, NULL, 0, e, sizeof e), RV_ERR_IO);

  /* the old snapshot is intact and nothing was left behind */
  assert_int_equal(count_entries(), before);
  assert_int_equal(access(tmp, F_OK), -1);
  rv_hnsw_t *h;
  rv_attrs_t *a;
  void *p;
  size_t plen;
  assert_int_equal(rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e), RV_OK);
  assert_int_equal(rv_hnsw_count(h), rv_hnsw_count(w1.h));
  assert_int_equal(plen, 2);
  assert_memory_equal(p, "v1", 2);
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  free(p);
  /* and a good save replaces it */
  assert_int_equal(rv_snapshot_save(path, w2.h, w2.a, "v2", 2, e, sizeof e), RV_OK);
  assert_int_equal(rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e), RV_OK);
  assert_int_equal(rv_hnsw_count(h), rv_hnsw_count(w2.h));
  assert_memory_equal(p, "v2", 2);
  assert_int_equal(count_entries(), before);
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  free(p);
  world_free(&w1);
  world_free(&w2);
}

/* ---- load time against build time (printed only) ---------------------------------- */

static void test_load_speed(void **state) {
  (void)state;
  char e[256], path[512];
  double t0 = now();
  world_t w = build(20000, 64, RV_METRIC_L2, RV_HNSW_FLOAT, 1, 12);
  double t_build = now() - t0;
  path_of(path, sizeof path, "speed.snap");
  t0 = now();
  assert_int_equal(rv_snapshot_save(path, w.h, w.a, NULL, 0, e, sizeof e), RV_OK);
  double t_save = now() - t0;
  rv_hnsw_t *h;
  rv_attrs_t *a;
  void *p;
  size_t plen;
  t0 = now();
  assert_int_equal(rv_snapshot_load(path, NULL, &h, &a, &p, &plen, e, sizeof e), RV_OK);
  double t_load = now() - t0;
  struct stat st;
  stat(path, &st);
  print_message("20000 x 64 floats: build %.3f s, save %.3f s, load %.3f s (%.1f MiB, %.0fx faster than building)\n",
                t_build, t_save, t_load, st.st_size / 1048576.0, t_build / (t_load > 0 ? t_load : 1e-9));
  assert_int_equal(rv_hnsw_count(h), rv_hnsw_count(w.h));
  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  unlink(path);
  world_free(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_all_modes),         cmocka_unit_test(test_optional_parts),
      cmocka_unit_test(test_damage_small_file_exhaustive), cmocka_unit_test(test_damage_large_file_sampled),
      cmocka_unit_test(test_failed_save_keeps_old),        cmocka_unit_test(test_load_speed),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
