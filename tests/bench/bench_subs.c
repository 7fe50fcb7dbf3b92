/* Live subscriptions' evaluation cost per applied change against the
 * replica's own apply cost per change (issue 11: 1,000 subscriptions may
 * slow the apply rate by at most 10%). Fashion-MNIST (dim 784) when
 * /usr/share/datasets/fashion-mnist/ is there, else random vectors.
 *
 *   bench_subs [--subs 1000] [--distinct N] [--base 5000] [--changes 3000] [--batch 64] [--filtered 10]
 *              [--random] [--scalar]
 * --distinct N: subscriber i asks query i % N (identical subscriptions share one evaluation).
 *
 * One replica, fed with rv_replica_apply in batches; after each batch the
 * batch goes to rv_subs_on_applied, as the applier's hook would. Both are
 * timed per batch on this thread, in thread CPU time (the machine is
 * shared). Re-searches made by the evaluation count as evaluation. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rv_replica.h"
#include "rv_subs.h"

#define DIM 784
#define FMNIST "/usr/share/datasets/fashion-mnist/"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: other processes share the cores */
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A fixed pseudo-random value per query (whether it is filtered). */
static uint64_t mix_index(int i) {
  uint64_t z = (uint64_t)i * 0x9e3779b97f4a7c15ULL + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  return z ^ (z >> 31);
}

static uint64_t next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Reads an idx file through gzip: n items of item_bytes after a header of
 * hdr bytes. NULL when missing. */
static unsigned char *read_idx(const char *path, size_t hdr, size_t item_bytes, size_t *n) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "gzip -dc '%s' 2>/dev/null", path);
  FILE *f = popen(cmd, "r");
  if (!f) return NULL;
  unsigned char h[16];
  if (fread(h, 1, hdr, f) != hdr) {
    pclose(f);
    return NULL;
  }
  size_t count = (size_t)h[4] << 24 | (size_t)h[5] << 16 | (size_t)h[6] << 8 | h[7];
  unsigned char *data = malloc(count * item_bytes + 1);
  size_t got = data ? fread(data, item_bytes, count, f) : 0;
  pclose(f);
  if (got != count) {
    free(data);
    return NULL;
  }
  *n = count;
  return data;
}

typedef struct data {
  float *train, *test; /* n_train / n_test rows of DIM */
  int *train_label, *test_label;
  size_t n_train, n_test;
  const char *source;
} data_t;

static void load(data_t *d, int random, size_t want_train, size_t want_test) {
  size_t ni = 0, nl = 0, ti = 0, tl = 0;
  unsigned char *img = NULL, *lab = NULL, *timg = NULL, *tlab = NULL;
  if (!random) {
    img = read_idx(FMNIST "train-images-idx3-ubyte.gz", 16, DIM, &ni);
    lab = read_idx(FMNIST "train-labels-idx1-ubyte.gz", 8, 1, &nl);
    timg = read_idx(FMNIST "t10k-images-idx3-ubyte.gz", 16, DIM, &ti);
    tlab = read_idx(FMNIST "t10k-labels-idx1-ubyte.gz", 8, 1, &tl);
  }
  int ok = img && lab && timg && tlab && ni == nl && ti == tl && ni >= want_train && ti >= want_test;
  d->n_train = want_train;
  d->n_test = want_test;
  d->train = malloc(want_train * DIM * sizeof(float));
  d->test = malloc(want_test * DIM * sizeof(float));
  d->train_label = malloc(want_train * sizeof(int));
  d->test_label = malloc(want_test * sizeof(int));
  uint64_t seed = 42;
  for (size_t i = 0; i < want_train; i++) {
    for (int j = 0; j < DIM; j++)
      d->train[i * DIM + j] = ok ? img[i * DIM + j] / 255.0f : (float)(next(&seed) % 1000) / 1000.0f;
    d->train_label[i] = ok ? lab[i] : (int)(next(&seed) % 10);
  }
  for (size_t i = 0; i < want_test; i++) {
    for (int j = 0; j < DIM; j++)
      d->test[i * DIM + j] = ok ? timg[i * DIM + j] / 255.0f : (float)(next(&seed) % 1000) / 1000.0f;
    d->test_label[i] = ok ? tlab[i] : (int)(next(&seed) % 10);
  }
  d->source = ok ? "fashion-mnist" : "random";
  free(img);
  free(lab);
  free(timg);
  free(tlab);
}

static rv_err_t search(void *ctx, const float *q, int dim, int k, int ef, const rv_filter_t *f, rv_hit_list_t *out,
                       uint64_t *as_of, char *errstr, size_t errstr_size) {
  rv_replica_t *r = ctx;
  rv_replica_stats_t st;
  rv_replica_stats(r, &st);
  *as_of = st.generation;
  return rv_replica_search_filtered(r, q, dim, k, ef, f, out, errstr, errstr_size);
}

static void deliver(void *ctx, uint64_t sub, void *user, const rv_subs_update_t *u) {
  (void)sub, (void)user, (void)u;
  (*(uint64_t *)ctx)++;
}

int main(int argc, char **argv) {
  int n_subs = 1000, distinct = 0, base = 5000, changes = 3000, batch = 64, filtered_pct = 10, random = 0, scalar = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--subs") && i + 1 < argc) n_subs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--distinct") && i + 1 < argc) distinct = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--base") && i + 1 < argc) base = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--changes") && i + 1 < argc) changes = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--filtered") && i + 1 < argc) filtered_pct = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--random")) random = 1;
    else if (!strcmp(argv[i], "--scalar")) scalar = 1;
    else {
      fprintf(stderr, "usage: %s [--subs N] [--distinct N] [--base N] [--changes N] [--batch N] [--filtered PCT] [--random] [--scalar]\n",
              argv[0]);
      return 2;
    }
  }
  if (distinct <= 0 || distinct > n_subs) distinct = n_subs;
  if (n_subs < 0 || base < 1 || changes < 1 || batch < 1 || batch > 512) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  data_t d;
  load(&d, random, (size_t)base + (size_t)changes, (size_t)(n_subs ? n_subs : 1));

  rv_replica_conf_t rc = {0};
  snprintf(rc.collection.name, sizeof rc.collection.name, "fmnist");
  rc.collection.dim = DIM;
  rc.collection.metric = RV_METRIC_L2;
  rc.collection.fields[0] = (rv_field_conf_t){"label", RV_FIELD_NUMBER};
  rc.collection.n_fields = 1;
  char errstr[256] = "";
  rv_replica_t *r = rv_replica_new(&rc, errstr, sizeof errstr);
  if (!r) {
    fprintf(stderr, "rv_replica_new: %s\n", errstr);
    return 1;
  }
  static char ids[1 << 16][16];
  static char meta[1 << 16][24];
  int total = base + changes;
  if (total > (1 << 16)) total = 1 << 16;
  for (int i = 0; i < total; i++) {
    snprintf(ids[i], sizeof ids[i], "f%05d", i);
    snprintf(meta[i], sizeof meta[i], "{\"label\":%d}", d.train_label[i]);
  }
  int64_t offset = 0;
  double t0 = now_s();
  for (int i = 0; i < base; i++) {
    rv_change_t c;
    rv_change_init(&c);
    c.id = ids[i], c.op = RV_OP_UPSERT, c.src_offset = offset++, c.vector = d.train + (size_t)i * DIM, c.dim = DIM;
    c.attributes = meta[i];
    if (rv_replica_apply(r, &c)) return 1;
  }
  double t_base = now_s() - t0;

  rv_subs_conf_t sc = {0};
  sc.collection = *rv_replica_collection(r);
  sc.search = search;
  sc.search_ctx = r;
  uint64_t delivered = 0;
  sc.deliver = deliver;
  sc.deliver_ctx = &delivered;
  sc.scalar = scalar;
  rv_subs_t *s = rv_subs_new(&sc, errstr, sizeof errstr);
  if (!s) {
    fprintf(stderr, "rv_subs_new: %s\n", errstr);
    return 1;
  }
  uint64_t seed = 7;
  t0 = now_s();
  for (int i = 0; i < n_subs; i++) {
    rv_filter_t *f = NULL;
    char key[64] = "";
    int qi = i % (distinct ? distinct : 1);
    if ((int)(mix_index(qi) % 100) < filtered_pct) {
      f = rv_replica_filter_new(r);
      double lab = d.test_label[qi];
      rv_filter_range(f, "label", RV_BOUND_INCL, lab, RV_BOUND_INCL, lab, errstr, sizeof errstr);
      snprintf(key, sizeof key, "{\"label\":{\"eq\":%d}}", d.test_label[qi]);
    }
    uint64_t id;
    rv_subs_snapshot_t snap;
    if (rv_subs_subscribe(s, d.test + (size_t)qi * DIM, 10, 64, f, key, NULL, &id, &snap, errstr, sizeof errstr)) {
      fprintf(stderr, "subscribe: %s\n", errstr);
      return 1;
    }
    rv_hit_list_close(&snap.hits);
  }
  double t_subscribe = now_s() - t0;

  /* The stream: 80% new vectors, 10% replacements, 10% deletes. */
  int next_new = base, *live = calloc((size_t)total, sizeof *live);
  for (int i = 0; i < base; i++) live[i] = 1;
  rv_change_t *chg = calloc((size_t)batch, sizeof *chg);
  const rv_change_t **ptrs = calloc((size_t)batch, sizeof *ptrs);
  double t_apply = 0, t_eval = 0;
  int done = 0, n_batches = 0;
  while (done < changes) {
    int n = changes - done < batch ? changes - done : batch;
    for (int j = 0; j < n; j++) {
      rv_change_init(&chg[j]);
      int r100 = (int)(next(&seed) % 100);
      int victim = (int)(next(&seed) % (uint64_t)next_new);
      if (r100 >= 80 && live[victim]) {
        chg[j].id = ids[victim];
        if (r100 < 90) { /* a replacement: another image under that id */
          int src = next_new < total ? next_new++ : (int)(next(&seed) % (uint64_t)total);
          chg[j].op = RV_OP_UPSERT;
          chg[j].vector = d.train + (size_t)src * DIM;
          chg[j].attributes = meta[src];
        } else {
          chg[j].op = RV_OP_DELETE;
          live[victim] = 0;
        }
      } else {
        int id = next_new < total ? next_new++ : victim;
        chg[j].id = ids[id];
        chg[j].op = RV_OP_UPSERT;
        chg[j].vector = d.train + (size_t)id * DIM;
        chg[j].attributes = meta[id];
        live[id] = 1;
      }
      chg[j].dim = chg[j].vector ? DIM : 0;
      chg[j].src_offset = offset++;
      ptrs[j] = &chg[j];
    }
    double a = now_s();
    for (int j = 0; j < n; j++)
      if (rv_replica_apply(r, &chg[j])) return 1;
    double a2 = now_s();
    rv_replica_stats_t st;
    rv_replica_stats(r, &st); /* not timed: the applier knows its generation */
    rv_replica_applied_t ab = {ptrs, n, st.generation};
    double b = now_s();
    rv_subs_on_applied(s, &ab);
    double e = now_s();
    t_apply += a2 - a;
    t_eval += e - b;
    done += n;
    n_batches++;
  }
  rv_subs_stats_t ss;
  rv_subs_stats(s, &ss);
  double apply_us = t_apply / changes * 1e6, eval_us = t_eval / changes * 1e6;
  printf("data %s, dim %d, base %d vectors (applied in %.2f s, %.0f us each), %d changes in batches of %d\n",
         d.source, DIM, base, t_base, t_base / base * 1e6, changes, batch);
  printf("subscriptions %d (%" PRIu64 " distinct, %d%% filtered, k 10), subscribed in %.2f s\n", n_subs, ss.queries,
         filtered_pct, t_subscribe);
  printf("apply   %.1f us/change (%.0f changes/s)\n", apply_us, 1e6 / apply_us);
  printf("eval    %.1f us/change (%.2f distances/change, %" PRIu64 " filter evals, %" PRIu64 " re-searches, %" PRIu64
         " updates, %" PRIu64 " delivered)\n",
         eval_us, (double)ss.distances / (double)(ss.changes ? ss.changes : 1), ss.filter_evals, ss.researches,
         ss.updates, delivered);
  printf("eval/apply %.1f%%; apply rate with evaluation on the applier thread: %.0f changes/s (%.1f%% slower)\n",
         100 * eval_us / apply_us, 1e6 / (apply_us + eval_us), 100 * eval_us / (apply_us + eval_us));
  rv_subs_destroy(s);
  rv_replica_destroy(r);
  free(live);
  free(chg);
  free(ptrs);
  return 0;
}
