/* A small stand-in for libFuzzer's main, so that every fuzz target runs in
 * ctest with any compiler: it replays the seed corpus, then runs a bounded,
 * deterministic mutation loop (fixed seed; no coverage feedback).
 *
 *   fuzz_x [-runs=N] [-seed=S] [-max_len=N] [-dict=FILE] [-timeout=S]
 *          [-artifact_prefix=P] DIR|FILE...
 *
 * Directories are corpora: every regular file in them is a seed, in name
 * order, and N mutated inputs follow (default 20000). When only files are
 * given they are replayed and nothing else runs, as with libFuzzer, so a
 * saved crash reproduces with `fuzz_x crash-file`. Other -flags of libFuzzer
 * are accepted and ignored.
 *
 * Each input is passed in a heap block of exactly its size, so that the
 * sanitizers catch reads past its end. When an input crashes (abort, a fatal
 * signal, or a sanitizer report that halts), a mutated input is written to
 * <artifact_prefix>crash-<target>-<execution> first; a seed is named instead.
 * An input that runs longer than -timeout seconds (default 1200, as in
 * libFuzzer) is saved as timeout-<target>-<execution> and the run exits 70. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fuzz.h"

#define MAX_LEN_CAP (1u << 20) /* no mutated input grows beyond 1 MiB */

typedef struct unit {
  uint8_t *data; /* owned */
  size_t size;
  char *name; /* owned; file path for seeds */
} unit_t;

typedef struct units {
  unit_t *v; /* owned */
  size_t n, cap;
} units_t;

typedef struct opts {
  long long runs;        /* mutated inputs; -1 = not given */
  uint64_t seed;
  size_t max_len;        /* 0 = from the corpus */
  const char *dict;      /* AFL/libFuzzer dictionary file, or NULL */
  const char *prefix;    /* where crash files go */
  long timeout;          /* seconds one input may run; 0 = no limit */
} opts_t;

typedef struct rng {
  uint64_t s;
} rng_t;

/* ---- crash capture ---------------------------------------------------------
 * A signal handler and a sanitizer death callback get no context argument, so
 * the input being run is published here. This is the one mutable global of
 * the driver; nothing else reads it. */
static struct {
  const uint8_t *volatile data; /* NULL between inputs */
  size_t size;
  const char *seed_name;        /* non-NULL while a seed runs */
  unsigned long long exec_no;
  const char *prefix, *target;  /* of the saved file's name */
  long timeout;                 /* seconds; 0 = none */
  volatile time_t started;      /* CLOCK_MONOTONIC seconds the input started at */
  volatile sig_atomic_t saved;
} current;

static void put_str(const char *s) {
  ssize_t r = write(2, s, strlen(s));
  (void)r;
}

/* Appends s to buf[cap] (NUL-terminated); async-signal-safe, unlike snprintf. */
static void cat_str(char *buf, size_t cap, const char *s) {
  size_t n = strlen(buf);
  while (*s && n + 1 < cap) buf[n++] = *s++;
  buf[n] = 0;
}

static void cat_ull(char *buf, size_t cap, unsigned long long v) {
  char digits[24];
  size_t n = sizeof digits - 1;
  digits[n] = 0;
  do digits[--n] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  cat_str(buf, cap, digits + n);
}

/* Async-signal-safe: only open, write, close. kind is "crash" or "timeout". */
static void save_current(const char *kind) {
  if (current.saved || !current.data) return;
  current.saved = 1;
  if (current.seed_name) {
    put_str("\nfuzz_driver: ");
    put_str(kind);
    put_str(" on seed ");
    put_str(current.seed_name);
    put_str("\n");
    return;
  }
  char path[1024] = "";
  cat_str(path, sizeof path, current.prefix);
  cat_str(path, sizeof path, kind);
  cat_str(path, sizeof path, "-");
  cat_str(path, sizeof path, current.target);
  cat_str(path, sizeof path, "-");
  cat_ull(path, sizeof path, current.exec_no);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    put_str("\nfuzz_driver: could not save the input\n");
    return;
  }
  size_t off = 0;
  while (off < current.size) {
    ssize_t w = write(fd, current.data + off, current.size - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  close(fd);
  put_str("\nfuzz_driver: ");
  put_str(kind);
  put_str("; input saved to ");
  put_str(path);
  put_str("\n");
}

static void save_crash(void) { save_current("crash"); }

static void on_fatal_signal(int sig) {
  save_crash();
  signal(sig, SIG_DFL);
  raise(sig);
}

static time_t mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
  return ts.tv_sec;
}

/* Ticks every second; an input older than the timeout is saved and ends the run. */
static void on_alarm(int sig) {
  (void)sig;
  if (!current.timeout || !current.data || mono_s() - current.started <= current.timeout) return;
  put_str("\nfuzz_driver: an input ran longer than the -timeout\n");
  save_current("timeout");
  _exit(70);
}

/* Present when a sanitizer runtime is linked (gcc and clang). */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

/* abort() (FUZZ_CHECK, and sanitizers with abort_on_error=1, see
 * sanitizer_options.c) always reaches the SIGABRT handler. With a sanitizer,
 * its report ends in the death callback, and its own SEGV handler must stay
 * (it prints the stack); without one, the fatal signals are caught here. */
static void install_crash_capture(long timeout) {
  signal(SIGABRT, on_fatal_signal);
  current.timeout = timeout;
  if (timeout > 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART; /* the targets read files: no EINTR from the tick */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval tick = {{1, 0}, {1, 0}};
    setitimer(ITIMER_REAL, &tick, NULL);
  }
  if (__sanitizer_set_death_callback) {
    __sanitizer_set_death_callback(save_crash);
    return;
  }
  static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], on_fatal_signal);
}

/* ---- corpus ---------------------------------------------------------------- */

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "fuzz_driver: out of memory\n");
    exit(2);
  }
  return q;
}

static void units_add(units_t *u, uint8_t *data, size_t size, char *name) {
  if (u->n == u->cap) {
    u->cap = u->cap ? u->cap * 2 : 16;
    u->v = xrealloc(u->v, u->cap * sizeof *u->v);
  }
  u->v[u->n++] = (unit_t){data, size, name};
}

static void units_free(units_t *u) {
  for (size_t i = 0; i < u->n; i++) {
    free(u->v[i].data);
    free(u->v[i].name);
  }
  free(u->v);
  memset(u, 0, sizeof *u);
}

/* Reads the whole file; returns 0, or -1 with a message printed. */
static int read_file(const char *path, uint8_t **data, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "fuzz_driver: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t cap = 4096, len = 0;
  uint8_t *buf = xrealloc(NULL, cap);
  for (;;) {
    if (len == cap) buf = xrealloc(buf, cap *= 2);
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    fprintf(stderr, "fuzz_driver: %s: read error\n", path);
    free(buf);
    return -1;
  }
  *data = buf;
  *size = len;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds every regular file of dir, in name order (readdir order is not stable). */
static int load_dir(const char *dir, units_t *out) {
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "fuzz_driver: %s: %s\n", dir, strerror(errno));
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    size_t len = strlen(dir) + strlen(e->d_name) + 2;
    char *path = xrealloc(NULL, len);
    snprintf(path, len, "%s/%s", dir, e->d_name);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
      free(path);
      continue;
    }
    if (n == cap) names = xrealloc(names, (cap = cap ? cap * 2 : 32) * sizeof *names);
    names[n++] = path;
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_names);
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t *data;
    size_t size;
    if (rc == 0 && read_file(names[i], &data, &size) == 0) units_add(out, data, size, names[i]);
    else {
      rc = -1;
      free(names[i]);
    }
  }
  free(names);
  return rc;
}

/* ---- dictionary (the AFL format libFuzzer reads: [name=]"value" per line) ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int load_dict(const char *path, units_t *out) {
  uint8_t *text;
  size_t size;
  if (read_file(path, &text, &size)) return -1;
  size_t i = 0;
  int line = 0;
  while (i < size) {
    size_t end = i;
    while (end < size && text[end] != '\n') end++;
    line++;
    size_t p = i;
    while (p < end && (text[p] == ' ' || text[p] == '\t')) p++;
    if (p < end && text[p] != '#') {
      const uint8_t *q = memchr(text + p, '"', end - p);
      size_t last = end;
      while (last > p && text[last - 1] != '"') last--;
      if (!q || last == 0 || (size_t)(q - text) + 1 >= last) {
        fprintf(stderr, "fuzz_driver: %s:%d: expected [name=]\"value\"\n", path, line);
        free(text);
        return -1;
      }
      size_t from = (size_t)(q - text) + 1, to = last - 1;
      uint8_t *tok = xrealloc(NULL, to - from + 1);
      size_t n = 0;
      for (size_t k = from; k < to; k++) {
        if (text[k] == '\\' && k + 1 < to) {
          k++;
          if (text[k] == 'x' && k + 2 < to && hexval((char)text[k + 1]) >= 0 &&
              hexval((char)text[k + 2]) >= 0) {
            tok[n++] = (uint8_t)(hexval((char)text[k + 1]) << 4 | hexval((char)text[k + 2]));
            k += 2;
          } else {
            tok[n++] = text[k];
          }
        } else {
          tok[n++] = text[k];
        }
      }
      char name[32];
      snprintf(name, sizeof name, "dict:%d", line);
      char *nm = xrealloc(NULL, strlen(name) + 1);
      memcpy(nm, name, strlen(name) + 1);
      units_add(out, tok, n, nm);
    }
    i = end + 1;
  }
  free(text);
  return 0;
}

/* ---- mutation --------------------------------------------------------------- */

static uint64_t next_u64(rng_t *r) { /* splitmix64 */
  uint64_t z = (r->s += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* Uniform-enough in [0, n); n > 0. */
static size_t below(rng_t *r, size_t n) { return (size_t)(next_u64(r) % n); }

/* Values that tend to sit on boundaries: lengths, counts, varints, magic bytes. */
static const uint64_t interesting[] = {0,    1,    2,          0x7f,       0x80,       0xff,
                                       0x100, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000,
                                       0xffffffff, UINT64_MAX, 0x10000,  64,         63};
/* Bytes that are syntax in the formats under test (JSON, YAML, varints, IDX). */
static const char special[] = "{}[]\":,-.0123456789eE\\ \n\t#&*!|>'$~\x00\x01\x03\x08\x7f\x80\xff";

typedef struct mbuf {
  uint8_t *b; /* max_len bytes */
  size_t len;
  size_t max;
} mbuf_t;

static void insert_bytes(mbuf_t *m, size_t at, const uint8_t *src, size_t n) {
  if (m->len + n > m->max) n = m->max - m->len;
  if (n == 0) return;
  memmove(m->b + at + n, m->b + at, m->len - at);
  memcpy(m->b + at, src, n);
  m->len += n;
}

static void mutate_once(rng_t *r, mbuf_t *m, const units_t *seeds, const units_t *dict) {
  uint8_t tmp[16];
  switch (below(r, 11)) {
  case 0: /* flip a bit */
    if (m->len) m->b[below(r, m->len)] ^= (uint8_t)(1u << below(r, 8));
    break;
  case 1: /* set a random byte */
    if (m->len) m->b[below(r, m->len)] = (uint8_t)next_u64(r);
    break;
  case 2: /* add or subtract a little */
    if (m->len) m->b[below(r, m->len)] += (uint8_t)(below(r, 35) - 17);
    break;
  case 3: { /* overwrite with an interesting 1/2/4/8-byte value, either endianness */
    if (!m->len) break;
    uint64_t v = interesting[below(r, sizeof interesting / sizeof interesting[0])];
    size_t w = (size_t)1 << below(r, 4);
    if (w > m->len) w = m->len;
    size_t at = below(r, m->len - w + 1);
    int big = (int)below(r, 2);
    for (size_t i = 0; i < w; i++) m->b[at + i] = (uint8_t)(v >> (8 * (big ? w - 1 - i : i)));
    break;
  }
  case 4: { /* insert random bytes, or one repeated byte */
    size_t n = 1 + below(r, sizeof tmp);
    int same = (int)below(r, 2);
    uint8_t c = (uint8_t)next_u64(r);
    for (size_t i = 0; i < n; i++) tmp[i] = same ? c : (uint8_t)next_u64(r);
    insert_bytes(m, below(r, m->len + 1), tmp, n);
    break;
  }
  case 5: { /* delete a range */
    if (!m->len) break;
    size_t at = below(r, m->len), n = 1 + below(r, m->len - at < 16 ? m->len - at : 16);
    memmove(m->b + at, m->b + at + n, m->len - at - n);
    m->len -= n;
    break;
  }
  case 6: { /* copy a range of the input over or into another place of it */
    if (m->len < 2) break;
    size_t from = below(r, m->len), n = 1 + below(r, m->len - from < 64 ? m->len - from : 64);
    uint8_t chunk[64];
    memcpy(chunk, m->b + from, n);
    if (below(r, 2)) insert_bytes(m, below(r, m->len + 1), chunk, n);
    else {
      size_t to = below(r, m->len - n + 1);
      memcpy(m->b + to, chunk, n);
    }
    break;
  }
  case 7: /* truncate */
    if (m->len) m->len = below(r, m->len);
    break;
  case 8: { /* splice: our prefix, another seed's suffix */
    const unit_t *o = &seeds->v[below(r, seeds->n)];
    size_t keep = below(r, m->len + 1), from = below(r, o->size + 1), n = o->size - from;
    if (keep + n > m->max) n = m->max - keep;
    memcpy(m->b + keep, o->data + from, n);
    m->len = keep + n;
    break;
  }
  case 9: { /* insert or overwrite a dictionary token (or a syntax byte) */
    if (dict->n) {
      const unit_t *t = &dict->v[below(r, dict->n)];
      if (below(r, 2) || t->size > m->len) insert_bytes(m, below(r, m->len + 1), t->data, t->size);
      else memcpy(m->b + below(r, m->len - t->size + 1), t->data, t->size);
      break;
    }
    __attribute__((fallthrough)); /* without a dictionary, a syntax byte */
  }
  default: { /* a byte that is syntax somewhere */
    uint8_t c = (uint8_t)special[below(r, sizeof special - 1)];
    if (m->len && below(r, 2)) m->b[below(r, m->len)] = c;
    else insert_bytes(m, below(r, m->len + 1), &c, 1);
    break;
  }
  }
}

/* ---- running ------------------------------------------------------------------ */

static void run_one(const uint8_t *data, size_t size, const char *seed_name, unsigned long long exec_no) {
  uint8_t *copy = xrealloc(NULL, size); /* exactly size bytes: overreads are caught */
  if (size) memcpy(copy, data, size);
  current.size = size;
  current.seed_name = seed_name;
  current.exec_no = exec_no;
  current.started = mono_s();
  current.data = copy;
  LLVMFuzzerTestOneInput(copy, size);
  current.data = NULL;
  free(copy);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_flag(const char *arg, opts_t *o) {
  if (!strncmp(arg, "-runs=", 6)) o->runs = strtoll(arg + 6, NULL, 10);
  else if (!strncmp(arg, "-seed=", 6)) o->seed = strtoull(arg + 6, NULL, 10);
  else if (!strncmp(arg, "-max_len=", 9)) o->max_len = strtoull(arg + 9, NULL, 10);
  else if (!strncmp(arg, "-dict=", 6)) o->dict = arg + 6;
  else if (!strncmp(arg, "-artifact_prefix=", 17)) o->prefix = arg + 17;
  else if (!strncmp(arg, "-timeout=", 9)) o->timeout = strtol(arg + 9, NULL, 10);
  else fprintf(stderr, "fuzz_driver: ignoring %s (a libFuzzer flag)\n", arg);
  return 0;
}

int main(int argc, char **argv) {
  opts_t o = {.runs = -1, .seed = 1, .prefix = "", .timeout = 1200};
  units_t seeds = {0}, dict = {0};
  int any_dir = 0, rc = 0;
  const char *target = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];

  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-') {
      parse_flag(argv[i], &o);
      continue;
    }
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "fuzz_driver: %s: %s\n", argv[i], strerror(errno));
      rc = 2;
    } else if (S_ISDIR(st.st_mode)) {
      any_dir = 1;
      if (load_dir(argv[i], &seeds)) rc = 2;
    } else {
      uint8_t *data;
      size_t size;
      if (read_file(argv[i], &data, &size)) rc = 2;
      else {
        char *name = xrealloc(NULL, strlen(argv[i]) + 1);
        memcpy(name, argv[i], strlen(argv[i]) + 1);
        units_add(&seeds, data, size, name);
      }
    }
  }
  if (o.dict && load_dict(o.dict, &dict)) rc = 2;
  if (rc) {
    units_free(&seeds);
    units_free(&dict);
    return rc;
  }
  if (o.runs < 0) o.runs = any_dir ? 20000 : 0;

  current.prefix = o.prefix;
  current.target = target;
  install_crash_capture(o.timeout);
  double t0 = now_s();
  unsigned long long execs = 0;
  size_t n_seeds = seeds.n;
  for (size_t i = 0; i < seeds.n; i++, execs++)
    run_one(seeds.v[i].data, seeds.v[i].size, seeds.v[i].name, execs);

  if (o.runs > 0) {
    if (seeds.n == 0) { /* an empty corpus starts from the empty input */
      uint8_t *e = xrealloc(NULL, 1);
      char *nm = xrealloc(NULL, 8);
      memcpy(nm, "(empty)", 8);
      units_add(&seeds, e, 0, nm);
    }
    size_t largest = 0;
    for (size_t i = 0; i < seeds.n; i++)
      if (seeds.v[i].size > largest) largest = seeds.v[i].size;
    size_t max = o.max_len ? o.max_len : (largest + 1024 > 4096 ? largest + 1024 : 4096);
    if (max > MAX_LEN_CAP) max = MAX_LEN_CAP;
    mbuf_t m = {xrealloc(NULL, max), 0, max};
    rng_t r = {o.seed};
    for (long long k = 0; k < o.runs; k++, execs++) {
      /* Mostly start again from a seed; sometimes keep stacking on the last
       * input, which reaches states a few mutations from a seed cannot. */
      if (k == 0 || below(&r, 4) != 0) {
        const unit_t *s = &seeds.v[below(&r, seeds.n)];
        m.len = s->size < max ? s->size : max;
        memcpy(m.b, s->data, m.len);
      }
      for (size_t n = 1 + below(&r, 4); n > 0; n--) mutate_once(&r, &m, &seeds, &dict);
      run_one(m.b, m.len, NULL, execs);
    }
    free(m.b);
  }
  double dt = now_s() - t0;
  printf("%s: %zu seed inputs, %lld mutated, %llu executions in %.2f s (%.0f exec/s), seed %llu\n", target,
         n_seeds, o.runs, execs, dt, dt > 0 ? execs / dt : 0.0, (unsigned long long)o.seed);
  units_free(&seeds);
  units_free(&dict);
  return 0;
}
