#include "rv_index_bench.h"

#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_hnsw.h"
#include "rv_source.h"
#include "rv_time.h"

#define EX_USAGE 64
#define MAX_EFS 64
#define TRAIN_SAMPLE 20000 /* vectors the SQ8/PQ quantizer is trained from */

typedef struct dataset {
  float *v; /* n * dim, row-major */
  size_t n;
  int dim;
} dataset_t;

typedef struct opts {
  const char *base, *queries, *out, *gt;
  rv_hnsw_conf_t conf;
  int threads, k;
  long limit;
  int efs[MAX_EFS];
  int n_efs;
  int churn; /* rounds of the churn experiment, 0 = off */
} opts_t;

static void usage(FILE *f) {
  fputs("usage: ruvector index-bench --base FILE --queries FILE [options]\n"
        "  --mode float|sq8|pq     storage of the graph records (default float)\n"
        "  --metric l2|cosine|ip   (default l2)\n"
        "  --M N                   links per node (default 16)\n"
        "  --ef-construction N     (default 100)\n"
        "  --threads N             build threads (default 1); searches use one thread\n"
        "  --ef N[,N...]           search beam widths (default 64)\n"
        "  --k N                   neighbours per query (default 10)\n"
        "  --limit N               use only the first N base vectors\n"
        "  --pq-m N                PQ sub-quantizers (default dim/8, a divisor of dim)\n"
        "  --rerank N              SQ8/PQ: candidates re-scored with floats (default max(k, ef))\n"
        "  --out FILE.ivecs        write result row ids (FILE.ef<EF>.ivecs for several --ef)\n"
        "  --gt FILE.ivecs         true neighbours: report recall@k\n"
        "  --churn ROUNDS          instead: build over the first half of the base set, then\n"
        "                          ROUNDS times delete 30%% of the live vectors and insert as many\n"
        "                          from the second half; report recall@k at the first --ef of the\n"
        "                          churned index and of a fresh build over the same final set\n"
        "                          (exact neighbours by brute force, first 2,000 queries)\n",
        f);
}

/* Reads every vector of path into d. Returns 0, or -1 with a message printed. */
static int load(const char *path, long limit, dataset_t *d) {
  char err[512];
  rv_source_opts_t so;
  rv_source_opts_init(&so);
  rv_source_t *src = rv_source_open(path, RV_SOURCE_AUTO, &so, err, sizeof err);
  if (!src) {
    fprintf(stderr, "index-bench: %s\n", err);
    return -1;
  }
  size_t cap = 0;
  rv_vector_record_t r;
  rv_vector_record_init(&r);
  int rc;
  memset(d, 0, sizeof *d);
  while ((limit < 0 || (long)d->n < limit) && (rc = rv_source_next(src, &r, err, sizeof err)) == 1) {
    if (!r.vector || (d->dim && r.dim != d->dim)) {
      fprintf(stderr, "index-bench: %s: record %zu has no vector or another dimension\n", path, d->n);
      rc = -1;
      break;
    }
    d->dim = r.dim;
    if (d->n == cap) {
      cap = cap ? cap * 2 : 4096;
      float *nv = realloc(d->v, cap * (size_t)d->dim * sizeof *nv);
      if (!nv) {
        fprintf(stderr, "index-bench: out of memory reading %s\n", path);
        rc = -1;
        break;
      }
      d->v = nv;
    }
    memcpy(d->v + d->n * (size_t)d->dim, r.vector, (size_t)d->dim * sizeof(float));
    d->n++;
  }
  if (rc < 0 && rc != -1) fprintf(stderr, "index-bench: %s\n", err);
  rv_vector_record_close(&r);
  rv_source_close(src);
  if (rc < 0) return -1;
  if (!d->n) {
    fprintf(stderr, "index-bench: %s holds no vectors\n", path);
    return -1;
  }
  return 0;
}

/* Ground truth .ivecs: per row int32 count then count int32 ids. */
static int32_t *load_ivecs(const char *path, size_t rows, int k) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return NULL;
  }
  int32_t *gt = malloc(rows * (size_t)k * sizeof *gt);
  int32_t *row = NULL;
  size_t r = 0;
  for (; gt && r < rows; r++) {
    int32_t c;
    if (fread(&c, 4, 1, f) != 1 || c < k || c > 1 << 20) break;
    int32_t *nr = realloc(row, (size_t)c * sizeof *nr);
    if (!nr) break;
    row = nr;
    if (fread(row, 4, (size_t)c, f) != (size_t)c) break;
    memcpy(gt + r * (size_t)k, row, (size_t)k * sizeof *gt);
  }
  free(row);
  fclose(f);
  if (r < rows) {
    fprintf(stderr, "index-bench: %s: needs %zu rows of at least %d ids, read %zu\n", path, rows, k, r);
    free(gt);
    return NULL;
  }
  return gt;
}

typedef struct build_ctx {
  rv_hnsw_t *h;
  const dataset_t *base;
  uint32_t *row_of; /* internal id -> row */
  atomic_size_t next;
  atomic_int failed;
} build_ctx_t;

static void *build_worker(void *arg) {
  build_ctx_t *b = arg;
  for (;;) {
    size_t i = atomic_fetch_add(&b->next, 1);
    if (i >= b->base->n || atomic_load(&b->failed)) return NULL;
    uint32_t iid;
    rv_err_t err = rv_hnsw_upsert_u64(b->h, i, b->base->v + i * (size_t)b->base->dim, b->base->dim, &iid);
    if (err) {
      fprintf(stderr, "index-bench: insert of row %zu: %s\n", i, rv_err_str(err));
      atomic_store(&b->failed, 1);
      return NULL;
    }
    b->row_of[iid] = (uint32_t)i; /* slots are fresh and distinct: no two threads write one */
  }
}

static int parse_efs(const char *s, opts_t *o) {
  o->n_efs = 0;
  while (*s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || v < 1 || v > 100000 || o->n_efs == MAX_EFS) return -1;
    o->efs[o->n_efs++] = (int)v;
    s = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return -1;
  }
  return o->n_efs ? 0 : -1;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_args(int argc, char **argv, opts_t *o) {
  static const struct option longopts[] = {
      {"base", required_argument, 0, 'b'},   {"queries", required_argument, 0, 'q'},
      {"mode", required_argument, 0, 'm'},   {"metric", required_argument, 0, 'D'},
      {"M", required_argument, 0, 'M'},      {"ef-construction", required_argument, 0, 'c'},
      {"threads", required_argument, 0, 't'}, {"ef", required_argument, 0, 'e'},
      {"k", required_argument, 0, 'k'},      {"limit", required_argument, 0, 'l'},
      {"pq-m", required_argument, 0, 'p'},   {"rerank", required_argument, 0, 'r'},
      {"out", required_argument, 0, 'o'},    {"gt", required_argument, 0, 'g'},
      {"churn", required_argument, 0, 'C'},  {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  memset(o, 0, sizeof *o);
  rv_hnsw_conf_defaults(&o->conf);
  o->threads = 1;
  o->k = 10;
  o->limit = -1;
  o->efs[0] = 64;
  o->n_efs = 1;
  optind = 1;
  int c;
  long v;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'b': o->base = optarg; break;
    case 'q': o->queries = optarg; break;
    case 'o': o->out = optarg; break;
    case 'g': o->gt = optarg; break;
    case 'm':
      if (!strcmp(optarg, "float")) o->conf.storage = RV_HNSW_FLOAT;
      else if (!strcmp(optarg, "sq8")) o->conf.storage = RV_HNSW_SQ8;
      else if (!strcmp(optarg, "pq")) o->conf.storage = RV_HNSW_PQ;
      else goto bad;
      break;
    case 'D':
      if (rv_metric_parse(optarg, &o->conf.metric)) goto bad;
      break;
    case 'M':
      if (parse_int(optarg, 2, 256, &v)) goto bad;
      o->conf.M = (int)v;
      break;
    case 'c':
      if (parse_int(optarg, 1, 100000, &v)) goto bad;
      o->conf.ef_construction = (int)v;
      break;
    case 't':
      if (parse_int(optarg, 1, 256, &v)) goto bad;
      o->threads = (int)v;
      break;
    case 'e':
      if (parse_efs(optarg, o)) goto bad;
      break;
    case 'k':
      if (parse_int(optarg, 1, 100000, &v)) goto bad;
      o->k = (int)v;
      break;
    case 'l':
      if (parse_int(optarg, 1, 1L << 31, &v)) goto bad;
      o->limit = v;
      break;
    case 'p':
      if (parse_int(optarg, 1, 65536, &v)) goto bad;
      o->conf.pq_m = (int)v;
      break;
    case 'r':
      if (parse_int(optarg, 0, 100000, &v)) goto bad;
      o->conf.rerank = (int)v;
      break;
    case 'C':
      if (parse_int(optarg, 1, 10, &v)) goto bad;
      o->churn = (int)v;
      break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); return -1;
    }
    continue;
  bad:
    for (const struct option *lo = longopts; lo->name; lo++)
      if (lo->val == c) fprintf(stderr, "index-bench: bad value for --%s: %s\n", lo->name, optarg);
    return -1;
  }
  if (!o->base || !o->queries || optind != argc) {
    usage(stderr);
    return -1;
  }
  return 0;
}

static int write_ivecs(const char *path, const int32_t *ids, size_t rows, int k) {
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    return -1;
  }
  int ok = 1;
  int32_t kk = k;
  for (size_t r = 0; ok && r < rows; r++)
    ok = fwrite(&kk, 4, 1, f) == 1 && fwrite(ids + r * (size_t)k, 4, (size_t)k, f) == (size_t)k;
  if (fclose(f) || !ok) {
    fprintf(stderr, "index-bench: writing %s failed\n", path);
    return -1;
  }
  return 0;
}

static double recall(const int32_t *got, const int32_t *gt, size_t rows, int k) {
  size_t hit = 0;
  for (size_t r = 0; r < rows; r++)
    for (int i = 0; i < k; i++)
      for (int j = 0; j < k; j++)
        if (got[r * k + i] >= 0 && got[r * k + i] == gt[r * k + j]) {
          hit++;
          break;
        }
  return (double)hit / ((double)rows * k);
}

static int build(const opts_t *o, const dataset_t *base, rv_hnsw_t **out, uint32_t **row_of_out) {
  char err[512];
  rv_hnsw_conf_t conf = o->conf;
  conf.dim = base->dim;
  conf.initial_capacity = base->n;
  rv_hnsw_t *h = rv_hnsw_new(&conf, err, sizeof err);
  if (!h) {
    fprintf(stderr, "index-bench: %s\n", err);
    return -1;
  }
  int64_t t0 = rv_mono_us();
  if (conf.storage != RV_HNSW_FLOAT) {
    size_t n = base->n < TRAIN_SAMPLE ? base->n : TRAIN_SAMPLE;
    if (rv_hnsw_train(h, base->v, n, err, sizeof err)) {
      fprintf(stderr, "index-bench: training the quantizer: %s\n", err);
      rv_hnsw_destroy(h);
      return -1;
    }
  }
  build_ctx_t b = {.h = h, .base = base, .row_of = calloc(base->n, sizeof(uint32_t))};
  atomic_init(&b.next, 0);
  atomic_init(&b.failed, !b.row_of);
  pthread_t th[256];
  int started = 0;
  for (int i = 1; i < o->threads; i++)
    if (!pthread_create(&th[started], NULL, build_worker, &b)) started++;
  build_worker(&b);
  for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
  double secs = (double)(rv_mono_us() - t0) / 1e6;
  if (atomic_load(&b.failed)) {
    free(b.row_of);
    rv_hnsw_destroy(h);
    return -1;
  }
  rv_hnsw_stats_t st;
  rv_hnsw_stats(h, &st);
  printf("build mode=%s n=%zu dim=%d M=%d ef_construction=%d threads=%d build_seconds=%.3f "
         "bytes_per_vector=%.1f float_bytes_per_vector=%.1f\n",
         conf.storage == RV_HNSW_SQ8 ? "sq8" : conf.storage == RV_HNSW_PQ ? "pq" : "float", base->n, base->dim,
         conf.M, conf.ef_construction, o->threads, secs, (double)st.graph_bytes / (double)st.count,
         (double)st.float_bytes / (double)st.count);
  *out = h;
  *row_of_out = b.row_of;
  return 0;
}

#define CHURN_FRACTION 0.3
#define CHURN_QUERIES 2000

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* recall@k of h at ef against exact neighbours (row ids) in gt. */
static int churn_recall(rv_hnsw_t *h, const dataset_t *qs, size_t nq, int k, int ef, const int32_t *gt,
                        double *out) {
  rv_hnsw_result_t *res = malloc((size_t)k * sizeof *res);
  int32_t *got = malloc(nq * (size_t)k * sizeof *got);
  char idb[RV_ID_MAX + 1];
  int rc = -1;
  if (!res || !got) goto done;
  for (size_t i = 0; i < nq; i++) {
    int n = 0;
    if (rv_hnsw_search(h, qs->v + i * (size_t)qs->dim, qs->dim, k, ef, NULL, res, &n)) goto done;
    for (int j = 0; j < k; j++) {
      got[i * (size_t)k + j] = -1;
      if (j < n && !rv_hnsw_result_external_id(h, &res[j], idb, sizeof idb)) got[i * (size_t)k + j] = atoi(idb);
    }
  }
  *out = recall(got, gt, nq, k);
  rc = 0;
done:
  free(res);
  free(got);
  return rc;
}

/* The churn experiment (see --churn in the usage). */
static int run_churn(const opts_t *o, const dataset_t *base, const dataset_t *qs) {
  char err[512];
  size_t half = base->n / 2, nq = qs->n < CHURN_QUERIES ? qs->n : CHURN_QUERIES;
  int k = o->k, ef = o->efs[0];
  rv_hnsw_conf_t conf = o->conf;
  conf.dim = base->dim;
  conf.initial_capacity = half;
  uint32_t *live = malloc(half * sizeof *live); /* rows live in the churned index */
  int32_t *gt = malloc(nq * (size_t)k * sizeof *gt);
  rv_hnsw_result_t *res = malloc((size_t)k * sizeof *res);
  rv_hnsw_t *h = rv_hnsw_new(&conf, err, sizeof err), *fresh = NULL;
  int rc = 1;
  if (!live || !gt || !res || !h) {
    fprintf(stderr, "index-bench: %s\n", h ? "out of memory" : err);
    goto done;
  }
  if (conf.storage != RV_HNSW_FLOAT && rv_hnsw_train(h, base->v, half < TRAIN_SAMPLE ? half : TRAIN_SAMPLE, err,
                                                      sizeof err)) {
    fprintf(stderr, "index-bench: training the quantizer: %s\n", err);
    goto done;
  }
  for (size_t i = 0; i < half; i++) {
    live[i] = (uint32_t)i;
    if (rv_hnsw_upsert_u64(h, i, base->v + i * (size_t)base->dim, base->dim, NULL)) goto fail;
  }
  uint64_t seed = 42;
  size_t next = half, n_live = half;
  for (int r = 0; r < o->churn; r++) {
    size_t del = (size_t)(CHURN_FRACTION * (double)n_live);
    if (next + del > base->n) {
      fprintf(stderr, "index-bench: the base set is too small for %d churn rounds\n", o->churn);
      goto done;
    }
    for (size_t i = 0; i < del; i++) { /* a random 30%: partial Fisher-Yates to the end */
      size_t j = i + splitmix(&seed) % (n_live - i), t = live[i];
      live[i] = live[j];
      live[j] = (uint32_t)t;
      if (rv_hnsw_delete_u64(h, live[i])) goto fail;
    }
    for (size_t i = 0; i < del; i++, next++) {
      live[i] = (uint32_t)next;
      if (rv_hnsw_upsert_u64(h, next, base->v + next * (size_t)base->dim, base->dim, NULL)) goto fail;
    }
  }
  /* A fresh build over the same final set, in the same order of rows. */
  conf.initial_capacity = n_live;
  if (!(fresh = rv_hnsw_new(&conf, err, sizeof err))) goto fail;
  if (conf.storage != RV_HNSW_FLOAT && rv_hnsw_train(fresh, base->v, half < TRAIN_SAMPLE ? half : TRAIN_SAMPLE, err,
                                                      sizeof err))
    goto fail;
  for (size_t i = 0; i < n_live; i++)
    if (rv_hnsw_upsert_u64(fresh, live[i], base->v + live[i] * (size_t)base->dim, base->dim, NULL)) goto fail;
  /* Exact neighbours of the final set: brute force over the fresh index. */
  char idb[RV_ID_MAX + 1];
  for (size_t i = 0; i < nq; i++) {
    int n = 0;
    if (rv_hnsw_search_exact(fresh, qs->v + i * (size_t)qs->dim, qs->dim, k, NULL, res, &n)) goto fail;
    for (int j = 0; j < k; j++)
      gt[i * (size_t)k + j] = j < n && !rv_hnsw_result_external_id(fresh, &res[j], idb, sizeof idb) ? atoi(idb) : -1;
  }
  double rc_churn, rc_fresh;
  if (churn_recall(h, qs, nq, k, ef, gt, &rc_churn) || churn_recall(fresh, qs, nq, k, ef, gt, &rc_fresh)) goto fail;
  printf("churn rounds=%d fraction=%.2f live=%zu queries=%zu ef=%d recall_churned=%.4f recall_fresh=%.4f "
         "delta=%.4f\n",
         o->churn, CHURN_FRACTION, n_live, nq, ef, rc_churn, rc_fresh, rc_churn - rc_fresh);
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "index-bench: churn experiment failed\n");
done:
  rv_hnsw_destroy(h);
  rv_hnsw_destroy(fresh);
  free(live);
  free(gt);
  free(res);
  return rc;
}

int rv_index_bench_main(int argc, char **argv) {
  opts_t o;
  if (parse_args(argc, argv, &o)) return EX_USAGE;
  dataset_t base, qs;
  if (load(o.base, o.limit, &base)) return 1;
  if (load(o.queries, -1, &qs)) {
    free(base.v);
    return 1;
  }
  int rc = 1;
  rv_hnsw_t *h = NULL;
  uint32_t *row_of = NULL;
  int32_t *gt = NULL, *ids = NULL;
  rv_hnsw_result_t *res = malloc((size_t)o.k * sizeof *res);
  if (qs.dim != base.dim) {
    fprintf(stderr, "index-bench: queries have dim %d, base %d\n", qs.dim, base.dim);
    goto done;
  }
  if (o.churn) {
    rc = run_churn(&o, &base, &qs);
    goto done;
  }
  if (o.gt && !(gt = load_ivecs(o.gt, qs.n, o.k))) goto done;
  ids = malloc(qs.n * (size_t)o.k * sizeof *ids);
  if (!ids || !res || build(&o, &base, &h, &row_of)) goto done;
  for (int e = 0; e < o.n_efs; e++) {
    int ef = o.efs[e];
    int64_t t0 = rv_mono_us();
    for (size_t i = 0; i < qs.n; i++) {
      int n = 0;
      rv_err_t err = rv_hnsw_search(h, qs.v + i * (size_t)qs.dim, qs.dim, o.k, ef, NULL, res, &n);
      if (err) {
        fprintf(stderr, "index-bench: query %zu: %s\n", i, rv_err_str(err));
        goto done;
      }
      for (int j = 0; j < o.k; j++) ids[i * (size_t)o.k + j] = j < n ? (int32_t)row_of[res[j].id] : -1;
    }
    double secs = (double)(rv_mono_us() - t0) / 1e6;
    printf("search ef=%d k=%d queries=%zu query_seconds=%.4f qps=%.1f", ef, o.k, qs.n, secs, (double)qs.n / secs);
    if (gt) printf(" recall=%.4f", recall(ids, gt, qs.n, o.k));
    printf("\n");
    fflush(stdout);
    if (o.out) {
      char path[4096];
      size_t len = strlen(o.out);
      if (o.n_efs == 1) snprintf(path, sizeof path, "%s", o.out);
      else if (len > 6 && !strcmp(o.out + len - 6, ".ivecs"))
        snprintf(path, sizeof path, "%.*s.ef%d.ivecs", (int)(len - 6), o.out, ef);
      else snprintf(path, sizeof path, "%s.ef%d.ivecs", o.out, ef);
      if (write_ivecs(path, ids, qs.n, o.k)) goto done;
    }
  }
  rc = 0;
done:
  rv_hnsw_destroy(h);
  free(row_of);
  free(gt);
  free(ids);
  free(res);
  free(base.v);
  free(qs.v);
  return rc;
}
