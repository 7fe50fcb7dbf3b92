/* rv_replica snapshots: a saved replica loads back with the same search
 * results, versions, metadata and filter attributes; a corrupt, truncated or
 * mismatched snapshot is refused and the replica starts empty; and an applier
 * started from a snapshot resumes the changelog at the saved offsets
 * (librdkafka's in-process mock cluster), not at the beginning. */
#include <dirent.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "index_testutil.h"
#include "rv_buf.h"
#include "rv_record.h"
#include "rv_replica.h"
#include "rv_time.h"

#define DIM 12
#define N_IDS 300
#define DEADLINE_MS 60000

static char g_dir[256];
static char g_path[320];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/rv_test_replica_snapshot.XXXXXX");
  assert_non_null(mkdtemp(g_dir));
  snprintf(g_path, sizeof g_path, "%s/docs.local.rvsnap", g_dir);
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
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(g_dir);
  return 0;
}

static rv_replica_conf_t base_conf(const char *brokers) {
  rv_replica_conf_t conf = {0};
  if (brokers) snprintf(conf.brokers, sizeof conf.brokers, "%s", brokers);
  snprintf(conf.region, sizeof conf.region, "local");
  snprintf(conf.collection.name, sizeof conf.collection.name, "docs");
  conf.collection.dim = DIM;
  conf.collection.metric = RV_METRIC_L2;
  conf.collection.fields[0] = (rv_field_conf_t){"label", RV_FIELD_NUMBER};
  conf.collection.fields[1] = (rv_field_conf_t){"class", RV_FIELD_KEYWORD};
  conf.collection.n_fields = 2;
  snprintf(conf.snapshot_path, sizeof conf.snapshot_path, "%s", g_path);
  return conf;
}

static rv_replica_t *new_replica(const rv_replica_conf_t *conf) {
  char errstr[512] = "";
  rv_replica_t *r = rv_replica_new(conf, errstr, sizeof errstr);
  if (!r) fail_msg("rv_replica_new: %s", errstr);
  return r;
}

/* Version n of id i: a vector and metadata that depend on both. */
static void version_of(int i, int n, float *vec, char *meta, size_t meta_size) {
  uint64_t s = (uint64_t)i * 1000003u + (uint64_t)n;
  tu_fill(&s, vec, DIM);
  snprintf(meta, meta_size, "{\"label\":%d,\"class\":\"c%d\",\"n\":%d}", (i + n) % 10, (i * 7 + n) % 4, n);
}

static void apply_version(rv_replica_t *r, int i, int n, int del, int32_t partition, int64_t offset) {
  char id[16], meta[96];
  float vec[DIM];
  snprintf(id, sizeof id, "doc-%03d", i);
  version_of(i, n, vec, meta, sizeof meta);
  rv_change_t c;
  rv_change_init(&c);
  c.id = id;
  c.op = del ? RV_OP_DELETE : RV_OP_UPSERT;
  c.src_partition = partition;
  c.src_offset = offset;
  c.vector = del ? NULL : vec;
  c.dim = del ? 0 : DIM;
  c.attributes = del ? NULL : meta;
  assert_int_equal(rv_replica_apply(r, &c), RV_OK);
}

/* Filtered and unfiltered searches for a few seeded queries, as one text. */
static void results_text(rv_replica_t *r, rv_buf_t *out) {
  uint64_t seed = 99;
  char errstr[256];
  for (int t = 0; t < 8; t++) {
    float q[DIM];
    tu_fill(&seed, q, DIM);
    rv_filter_t *f = NULL;
    if (t % 2) {
      f = rv_replica_filter_new(r);
      assert_non_null(f);
      assert_int_equal(rv_filter_eq(f, "class", t % 4 == 1 ? "c1" : "c2", errstr, sizeof errstr), RV_OK);
      assert_int_equal(rv_filter_range(f, "label", RV_BOUND_INCL, 2, RV_BOUND_EXCL, 8, errstr, sizeof errstr), RV_OK);
    }
    rv_hit_list_t got = {0};
    assert_int_equal(rv_replica_search_filtered(r, q, DIM, 10, 0, f, &got, errstr, sizeof errstr), RV_OK);
    assert_true(got.n > 0);
    for (int h = 0; h < got.n; h++)
      rv_buf_appendf(out, "%d %s %.9g %s\n", t, got.hits[h].id, got.hits[h].score,
                     got.hits[h].metadata ? got.hits[h].metadata : "-");
    rv_hit_list_close(&got);
    rv_filter_destroy(f);
  }
}

static void expect_same_text(const rv_buf_t *a, const rv_buf_t *b) {
  if (a->len != b->len || memcmp(a->base, b->base, a->len))
    fail_msg("results differ:\n--- before\n%.*s--- after\n%.*s", (int)a->len, (const char *)a->base, (int)b->len,
             (const char *)b->base);
}

/* A replica with churn: inserts, replaces, deletes, an id deleted before it
 * was ever inserted. */
static rv_replica_t *build_churned(void) {
  unlink(g_path); /* from scratch, not on top of an earlier test's snapshot */
  rv_replica_conf_t conf = base_conf(NULL);
  rv_replica_t *r = new_replica(&conf);
  int64_t off = 0;
  for (int i = 0; i < N_IDS; i++) apply_version(r, i, 0, 0, 0, off++);
  for (int i = 0; i < N_IDS; i += 3) apply_version(r, i, 1, 0, 0, off++);
  for (int i = 0; i < N_IDS; i += 11) apply_version(r, i, 2, 1, 0, off++);
  apply_version(r, N_IDS + 5, 0, 1, 1, 40); /* unknown id: only its version is kept */
  return r;
}

static void test_save_load_same_results(void **state) {
  (void)state;
  rv_replica_t *r = build_churned();
  rv_replica_stats_t before;
  rv_replica_stats(r, &before);
  assert_int_equal(before.restored, 0);
  rv_buf_t want = {0}, got = {0};
  results_text(r, &want);
  rv_replica_destroy(r); /* saves */
  struct stat sb;
  assert_int_equal(stat(g_path, &sb), 0);

  rv_replica_conf_t conf = base_conf(NULL);
  r = new_replica(&conf);
  rv_replica_stats_t after;
  rv_replica_stats(r, &after);
  assert_int_equal(after.restored, 1);
  assert_int_equal(after.count, before.count);
  assert_int_equal(after.applied, before.applied);
  assert_int_equal(after.generation, before.generation);
  results_text(r, &got);
  expect_same_text(&want, &got);

  /* The version map came back: stale re-deliveries change nothing ... */
  apply_version(r, 3, 0, 0, 0, 5);               /* older than doc-003's replace */
  apply_version(r, N_IDS + 5, 9, 0, 1, 39);      /* older than the pinned delete */
  rv_replica_stats(r, &after);
  assert_int_equal(after.generation, before.generation);
  assert_int_equal(after.count, before.count);
  rv_buf_reset(&got);
  results_text(r, &got);
  expect_same_text(&want, &got);
  /* ... and newer ones apply, attributes included. */
  apply_version(r, N_IDS + 5, 9, 0, 1, 41);
  rv_replica_stats(r, &after);
  assert_int_equal(after.count, before.count + 1);
  char meta[96];
  float vec[DIM];
  version_of(N_IDS + 5, 9, vec, meta, sizeof meta);
  rv_hit_list_t hits = {0};
  assert_int_equal(rv_replica_search(r, vec, DIM, 1, 0, &hits), RV_OK);
  assert_string_equal(hits.hits[0].id, "doc-305");
  assert_string_equal(hits.hits[0].metadata, meta);
  rv_hit_list_close(&hits);
  rv_replica_destroy(r);
  rv_buf_close(&want);
  rv_buf_close(&got);
}

/* Rewrites byte at (from the start, or from the end when negative) or
 * truncates the file to len (when len >= 0). */
static void damage(long at, long truncate_to) {
  FILE *f = fopen(g_path, "r+b");
  assert_non_null(f);
  if (truncate_to >= 0) {
    fclose(f);
    assert_int_equal(truncate(g_path, truncate_to), 0);
    return;
  }
  fseek(f, at, at < 0 ? SEEK_END : SEEK_SET);
  int c = fgetc(f);
  fseek(f, -1, SEEK_CUR);
  fputc(c ^ 0x5a, f);
  fclose(f);
}

static void expect_fresh(const rv_replica_conf_t *conf) {
  rv_replica_t *r = new_replica(conf);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.restored, 0);
  assert_int_equal(st.count, 0);
  assert_int_equal(st.applied, 0);
  assert_int_equal(st.generation, 0);
  float q[DIM] = {0};
  rv_hit_list_t hits = {0};
  assert_int_equal(rv_replica_search(r, q, DIM, 5, 0, &hits), RV_OK);
  assert_int_equal(hits.n, 0); /* never serves what it could not verify */
  /* ... and it works: the changelog would rebuild it. */
  apply_version(r, 1, 0, 0, 0, 0);
  rv_replica_stats(r, &st);
  assert_int_equal(st.count, 1);
  rv_replica_destroy(r); /* overwrites the bad file with a good one */
}

static void test_unusable_snapshot_is_ignored(void **state) {
  (void)state;
  rv_replica_conf_t conf = base_conf(NULL);
  struct {
    long at, truncate_to;
  } cases[] = {{0, -1}, {100, -1}, {-30, -1}, {-1, -1}, {0, 10}, {0, 2000}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    rv_replica_destroy(build_churned()); /* a good snapshot */
    damage(cases[i].at, cases[i].truncate_to);
    print_message("damaged at %ld / truncated to %ld\n", cases[i].at, cases[i].truncate_to);
    expect_fresh(&conf);
  }
  /* Good file, but for another index shape or another changelog: not used. */
  rv_replica_destroy(build_churned());
  rv_replica_conf_t other = conf;
  other.hnsw_m = 8;
  expect_fresh(&other);
  rv_replica_destroy(build_churned());
  other = conf;
  snprintf(other.collection.changelog_topic, sizeof other.collection.changelog_topic, "elsewhere.changelog");
  expect_fresh(&other);
  /* Declared fields changed: the snapshot is used and the attributes re-derived. */
  rv_replica_destroy(build_churned());
  other = conf;
  other.collection.fields[1] = (rv_field_conf_t){"n", RV_FIELD_NUMBER};
  rv_replica_t *r = new_replica(&other);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.restored, 1);
  rv_filter_t *f = rv_replica_filter_new(r);
  char errstr[256];
  assert_int_equal(rv_filter_range(f, "n", RV_BOUND_INCL, 1, RV_BOUND_INCL, 1, errstr, sizeof errstr), RV_OK);
  float q[DIM] = {0};
  rv_hit_list_t hits = {0};
  assert_int_equal(rv_replica_search_filtered(r, q, DIM, 1000, 0, f, &hits, errstr, sizeof errstr), RV_OK);
  int want = 0; /* ids replaced once (n = 1) and not deleted afterwards */
  for (int i = 0; i < N_IDS; i += 3) want += i % 11 != 0;
  assert_int_equal(hits.n, want);
  rv_hit_list_close(&hits);
  rv_filter_destroy(f);
  rv_replica_destroy(r);
}

/* ---- resuming from the saved offsets (mock cluster) ------------------------- */

typedef struct cluster {
  rd_kafka_t *owner;
  rd_kafka_mock_cluster_t *mc;
  const char *bootstraps;
  rd_kafka_t *producer;
  rv_codec_t *codec;
} cluster_t;

static void cluster_start(cluster_t *c) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
  c->owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!c->owner) fail_msg("rd_kafka_new: %s", errstr);
  c->mc = rd_kafka_mock_cluster_new(c->owner, 3);
  assert_non_null(c->mc);
  c->bootstraps = rd_kafka_mock_cluster_bootstraps(c->mc);
  assert_int_equal(rd_kafka_mock_topic_create(c->mc, "docs.changelog", 3, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_conf_t *pconf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(pconf, "bootstrap.servers", c->bootstraps, errstr, sizeof errstr),
                   RD_KAFKA_CONF_OK);
  assert_int_equal(rd_kafka_conf_set(pconf, "linger.ms", "5", errstr, sizeof errstr), RD_KAFKA_CONF_OK);
  c->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, sizeof errstr);
  if (!c->producer) fail_msg("producer: %s", errstr);
  c->codec = rv_codec_new(errstr, sizeof errstr);
  if (!c->codec) fail_msg("rv_codec_new: %s", errstr);
}

static void cluster_stop(cluster_t *c) {
  rv_codec_destroy(c->codec);
  rd_kafka_destroy(c->producer);
  rd_kafka_mock_cluster_destroy(c->mc);
  rd_kafka_destroy(c->owner);
}

/* Produces version n of id i (keyed by id, so an id stays in one partition)
 * with source position (i % 3, *src). */
static void produce_version(cluster_t *c, int i, int n, int del, int64_t src) {
  char id[16], meta[96], errstr[256];
  float vec[DIM];
  snprintf(id, sizeof id, "doc-%03d", i);
  version_of(i, n, vec, meta, sizeof meta);
  rv_change_t ch;
  rv_change_init(&ch);
  ch.id = id;
  ch.op = del ? RV_OP_DELETE : RV_OP_UPSERT;
  ch.src_partition = i % 3;
  ch.src_offset = src;
  ch.vector = del ? NULL : vec;
  ch.dim = del ? 0 : DIM;
  ch.attributes = del ? NULL : meta;
  ch.created_at_ms = 1700000000000;
  rv_buf_t buf = {0};
  if (rv_codec_encode_change(c->codec, &ch, &buf, errstr, sizeof errstr)) fail_msg("encode: %s", errstr);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      c->producer, RD_KAFKA_V_TOPIC("docs.changelog"), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
      RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(buf.base, buf.len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_END);
  if (err) fail_msg("produce: %s", rd_kafka_err2str(err));
  rv_buf_close(&buf);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void wait_applied(rv_replica_t *r, uint64_t applied) {
  rv_replica_stats_t st;
  int64_t t0 = rv_mono_ms();
  for (;;) {
    rv_replica_stats(r, &st);
    if (st.applied >= applied && st.lag == 0) break;
    if (rv_mono_ms() - t0 > DEADLINE_MS)
      fail_msg("after %d ms: applied %llu of %llu, lag %lld", DEADLINE_MS, (unsigned long long)st.applied,
               (unsigned long long)applied, (long long)st.lag);
    sleep_ms(20);
  }
}

static void test_applier_resumes_at_saved_offsets(void **state) {
  (void)state;
  cluster_t c;
  cluster_start(&c);
  enum { FIRST = 200, SECOND = 90 };
  int64_t src = 0;
  /* want: the latest version (or -1: deleted) of each id */
  int latest[N_IDS];
  for (int i = 0; i < N_IDS; i++) latest[i] = -2; /* never written */
  int n = 0;
  for (; n < FIRST; n++) {
    int i = n % 150;
    produce_version(&c, i, n, 0, src++);
    latest[i] = n;
  }
  assert_int_equal(rd_kafka_flush(c.producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);

  rv_replica_conf_t conf = base_conf(c.bootstraps);
  char errstr[512];
  rv_replica_t *r = new_replica(&conf);
  assert_int_equal(rv_replica_start(r, errstr, sizeof errstr), RV_OK);
  wait_applied(r, FIRST);
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  assert_int_equal(st.applied, FIRST);
  assert_int_equal(st.restored, 0);
  rv_replica_destroy(r); /* saves with the offsets it reached */

  /* More changes while the replica is down: updates, deletes, new ids. */
  for (int j = 0; j < SECOND; j++, n++) {
    int i = (j * 7) % 200, del = j % 5 == 0 && latest[i] >= 0;
    produce_version(&c, i, n, del, src++);
    latest[i] = del ? -1 : n;
  }
  assert_int_equal(rd_kafka_flush(c.producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);

  r = new_replica(&conf);
  rv_replica_stats(r, &st);
  assert_int_equal(st.restored, 1);
  assert_int_equal(st.applied, FIRST);
  assert_int_equal(rv_replica_start(r, errstr, sizeof errstr), RV_OK);
  wait_applied(r, FIRST + SECOND);
  /* lag 0: every record in the log has been consumed. Had the applier
   * started at the beginning, it would have applied (and counted, as ignored
   * duplicates) the first FIRST records again by now. */
  rv_replica_stats(r, &st);
  assert_int_equal(st.lag, 0);
  if (st.applied != FIRST + SECOND)
    fail_msg("applied %llu, want %d: the applier did not resume at the saved offsets",
             (unsigned long long)st.applied, FIRST + SECOND);

  /* And the state is the latest version of every id. */
  static tu_item_t items[N_IDS];
  static char ids[N_IDS][16], metas[N_IDS][96];
  static float vecs[N_IDS][DIM];
  size_t live = 0;
  for (int i = 0; i < N_IDS; i++) {
    if (latest[i] < 0) continue;
    snprintf(ids[i], sizeof ids[i], "doc-%03d", i);
    version_of(i, latest[i], vecs[i], metas[i], sizeof metas[i]);
    items[live++] = (tu_item_t){ids[i], vecs[i], metas[i]};
  }
  assert_int_equal(st.count, live);
  uint64_t seed = 5;
  for (int t = 0; t < 5; t++) {
    float q[DIM];
    tu_fill(&seed, q, DIM);
    rv_hit_list_t got = {0};
    assert_int_equal(rv_replica_search(r, q, DIM, 10, 0, &got), RV_OK);
    tu_check_hits(&got, items, live, RV_METRIC_L2, q, DIM, 10);
    rv_hit_list_close(&got);
  }
  rv_replica_destroy(r); /* saves again, at the log's end */

  /* Restarted on an idle log: the end offsets are known by the time the
   * replica says it is bootstrapped, so it is ready at once, not when the
   * first fetch of each partition answers (an idle log holds that for
   * fetch.wait.max.ms). */
  r = new_replica(&conf);
  assert_int_equal(rv_replica_start(r, errstr, sizeof errstr), RV_OK);
  for (int64_t t0 = rv_mono_ms(); !(rv_replica_stats(r, &st), st.bootstrapped);) {
    if (rv_mono_ms() - t0 > 10000) fail_msg("not bootstrapped from the snapshot within 10 s");
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  rv_replica_part_stats_t ps[8];
  int np = rv_replica_partition_stats(r, ps, 8);
  assert_int_equal(np, 3);
  for (int i = 0; i < np; i++)
    if (ps[i].high_watermark != ps[i].next_offset || ps[i].lag_records != 0)
      fail_msg("partition %d: high watermark %lld, next offset %lld, lag %lld when bootstrapped: the end offsets "
               "were not asked before the assignment", (int)ps[i].partition, (long long)ps[i].high_watermark,
               (long long)ps[i].next_offset, (long long)ps[i].lag_records);
  assert_true(rv_replica_ready(r));
  rv_replica_destroy(r);
  cluster_stop(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_save_load_same_results, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unusable_snapshot_is_ignored, setup, teardown),
      cmocka_unit_test_setup_teardown(test_applier_resumes_at_saved_offsets, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
