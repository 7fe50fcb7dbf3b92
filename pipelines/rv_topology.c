#include "rv_topology.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "rv_interp.h"

/* A topology is a few kilobytes; anything this large is a mistake. */
#define MAX_TEXT_BYTES ((size_t)1 << 20)
/* libyaml takes time quadratic in the nesting of flow collections ("[[[[..."):
 * 40 KB of brackets take over a second (yaml/libyaml#286). No topology needs
 * more than a few levels. */
#define MAX_FLOW_DEPTH 64

/* ---- diagnostics ---------------------------------------------------------- */

void rv_diags_init(rv_diags_t *d) { memset(d, 0, sizeof *d); }

void rv_diags_close(rv_diags_t *d) {
  if (!d) return;
  free(d->items);
  memset(d, 0, sizeof *d);
}

void rv_diags_print(const rv_diags_t *d, void *FILE_stream) {
  FILE *f = FILE_stream;
  for (int i = 0; i < d->n; i++) {
    const rv_diag_t *g = &d->items[i];
    if (g->line > 0) fprintf(f, "%s:%d:%d: %s\n", g->file, g->line, g->column, g->message);
    else fprintf(f, "%s: %s\n", g->file, g->message);
  }
}

/* Appends one diag; returns -1 (diags unchanged) if out of memory. */
static int diags_add(rv_diags_t *d, const char *file, int line, int column, const char *message) {
  if (d->n == d->cap) {
    int cap = d->cap ? d->cap * 2 : 8;
    rv_diag_t *items = realloc(d->items, (size_t)cap * sizeof *items);
    if (!items) return -1;
    d->items = items;
    d->cap = cap;
  }
  rv_diag_t *g = &d->items[d->n++];
  snprintf(g->file, sizeof g->file, "%s", file);
  g->line = line;
  g->column = column;
  snprintf(g->message, sizeof g->message, "%s", message);
  for (char *p = g->message; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?'; /* one line per diag */
  return 0;
}

static int diag_before(const rv_diag_t *a, const rv_diag_t *b) {
  return a->line < b->line || (a->line == b->line && a->column < b->column);
}

/* Stable insertion sort by position: problems are found section by section
 * (and "missing key" after the keys present), but read best in file order. */
static void diags_sort(rv_diags_t *d, int from) {
  for (int i = from + 1; i < d->n; i++) {
    rv_diag_t tmp = d->items[i];
    int j = i;
    while (j > from && diag_before(&tmp, &d->items[j - 1])) {
      d->items[j] = d->items[j - 1];
      j--;
    }
    d->items[j] = tmp;
  }
}

/* ---- walking the document ------------------------------------------------- */

typedef struct ctx {
  yaml_document_t *doc;
  rv_diags_t *diags;
  const char *file;
  char **vals;         /* interpolated text of each scalar node, by node index; NULL if it failed */
  unsigned char *done; /* 1 once vals[i] has been computed, so that its diag is reported once */
  size_t n_nodes;
  int nomem;
} ctx_t;

static void problem_at(ctx_t *c, yaml_mark_t m, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void problem_at(ctx_t *c, yaml_mark_t m, const char *path, const char *fmt, ...) {
  char msg[512];
  size_t off = 0;
  if (path && *path) off = (size_t)snprintf(msg, sizeof msg, "%s: ", path);
  if (off >= sizeof msg) off = sizeof msg - 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + off, sizeof msg - off, fmt, ap);
  va_end(ap);
  if (diags_add(c->diags, c->file, (int)m.line + 1, (int)m.column + 1, msg) != 0) c->nomem = 1;
}

#define problem(c, node, path, ...) problem_at((c), (node)->start_mark, (path), __VA_ARGS__)

/* A printable, shortened copy of s for quoting in a message. */
static const char *shown(char *buf, size_t cap, const char *s) {
  size_t n = strlen(s), keep = cap - 4; /* room for "..." */
  if (n < cap) {
    memcpy(buf, s, n + 1);
  } else {
    memcpy(buf, s, keep);
    memcpy(buf + keep, "...", 4);
  }
  return buf;
}

#define SHOWN(s) shown((char[48]){0}, 48, (s))

static const char *kind(const yaml_node_t *n) {
  switch (n->type) {
  case YAML_MAPPING_NODE: return "a mapping";
  case YAML_SEQUENCE_NODE: return "a list";
  default: return "a scalar";
  }
}

static yaml_node_t *node_at(ctx_t *c, int index) { return yaml_document_get_node(c->doc, index); }

/* A plain "", "~" or "null": a key written with no value. Treated as absent. */
static int is_null(const yaml_node_t *n) {
  if (!n || n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
  const char *s = (const char *)n->data.scalar.value;
  return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* The interpolated text of a scalar, or NULL after reporting why there is none. */
static const char *text_of(ctx_t *c, yaml_node_t *n, const char *path) {
  if (n->type != YAML_SCALAR_NODE) {
    problem(c, n, path, "expected a scalar, got %s", kind(n));
    return NULL;
  }
  size_t i = (size_t)(n - c->doc->nodes.start);
  if (!c->done[i]) {
    c->done[i] = 1;
    char err[256];
    rv_err_t e = rv__interp((const char *)n->data.scalar.value, n->data.scalar.length, &c->vals[i], err,
                            sizeof err);
    if (e == RV_ERR_NOMEM) c->nomem = 1;
    else if (e != RV_OK) problem(c, n, path, "%s", err);
  }
  return c->vals[i];
}

static int get_int(ctx_t *c, yaml_node_t *n, const char *path, long lo, long hi, int *out) {
  const char *s = text_of(c, n, path);
  if (!s) return 0;
  const char *digits = (*s == '-' || *s == '+') ? s + 1 : s;
  if (!*digits || strspn(digits, "0123456789") != strlen(digits)) {
    problem(c, n, path, "expected an integer, got '%s'", SHOWN(s));
    return 0;
  }
  errno = 0;
  long long v = strtoll(s, NULL, 10);
  if (errno == ERANGE || v < lo || v > hi) {
    problem(c, n, path, "value %s out of range %ld..%ld", SHOWN(s), lo, hi);
    return 0;
  }
  *out = (int)v;
  return 1;
}

/* Copies a non-empty string that fits in dst (cap bytes with the NUL). */
static int get_str(ctx_t *c, yaml_node_t *n, const char *path, char *dst, size_t cap) {
  const char *s = text_of(c, n, path);
  if (!s) return 0;
  size_t len = strlen(s);
  if (len == 0) {
    problem(c, n, path, "must not be empty");
    return 0;
  }
  if (len >= cap) {
    problem(c, n, path, "string too long (%zu bytes, at most %zu)", len, cap - 1);
    return 0;
  }
  memcpy(dst, s, len + 1);
  return 1;
}

static int get_enum(ctx_t *c, yaml_node_t *n, const char *path, const char *const *names, int count,
                    int *out) {
  const char *s = text_of(c, n, path);
  if (!s) return 0;
  for (int i = 0; i < count; i++) {
    if (!strcmp(s, names[i])) {
      *out = i;
      return 1;
    }
  }
  char allowed[128] = "";
  for (int i = 0; i < count; i++) {
    size_t off = strlen(allowed);
    snprintf(allowed + off, sizeof allowed - off, "%s%s", i ? ", " : "", names[i]);
  }
  problem(c, n, path, "expected one of %s, got '%s'", allowed, SHOWN(s));
  return 0;
}

/* Whether s is 1..max characters, first from `first` (if not NULL), the rest from `rest`. */
static int matches(const char *s, const char *first, const char *rest, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return 0;
  if (first && !strchr(first, s[0])) return 0;
  for (size_t i = 0; i < n; i++)
    if (!strchr(rest, s[i])) return 0;
  return 1;
}

#define LOWER "abcdefghijklmnopqrstuvwxyz"
#define UPPER "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define DIGIT "0123456789"

/* ---- mappings with a fixed set of keys ------------------------------------ */

#define MAX_KEYS 12

typedef struct keyed {
  yaml_node_t *key[MAX_KEYS]; /* the key node of each schema key found, NULL if absent */
  yaml_node_t *val[MAX_KEYS]; /* its value */
} keyed_t;

static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return (size_t)-1;
  size_t row[64];
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t cost = (a[i - 1] | 0x20) == (b[j - 1] | 0x20) ? 0 : 1;
      size_t best = diag + cost;
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

static void unknown_key(ctx_t *c, yaml_node_t *k, const char *path, const char *name,
                        const char *const *keys, int nkeys) {
  const char *best = NULL;
  size_t best_d = 3; /* suggest only close matches */
  for (int i = 0; i < nkeys; i++) {
    size_t d = edit_distance(name, keys[i]);
    if (d < best_d && d < strlen(keys[i])) {
      best_d = d;
      best = keys[i];
    }
  }
  if (best) {
    problem(c, k, path, "unknown key '%s' (did you mean '%s'?)", SHOWN(name), best);
    return;
  }
  char allowed[200] = "";
  for (int i = 0; i < nkeys; i++) {
    size_t off = strlen(allowed);
    snprintf(allowed + off, sizeof allowed - off, "%s%s", i ? ", " : "", keys[i]);
  }
  problem(c, k, path, "unknown key '%s' (expected one of %s)", SHOWN(name), allowed);
}

/* Sorts the pairs of mapping n into f by schema key. Reports unknown and
 * duplicate keys (the first occurrence wins). A null node reads as an empty
 * mapping. Returns 0 (after a diag) if n is not a mapping. */
static int keyed_map(ctx_t *c, yaml_node_t *n, const char *path, const char *const *keys, int nkeys,
                     keyed_t *f) {
  memset(f, 0, sizeof *f);
  if (is_null(n)) return 1;
  if (n->type != YAML_MAPPING_NODE) {
    if (n->type == YAML_SCALAR_NODE)
      problem(c, n, path, "expected a mapping, got a scalar '%s'", SHOWN((const char *)n->data.scalar.value));
    else problem(c, n, path, "expected a mapping, got %s", kind(n));
    return 0;
  }
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
    if (!k || !v) continue;
    if (k->type != YAML_SCALAR_NODE) {
      problem(c, k, path, "expected a key, got %s", kind(k));
      continue;
    }
    const char *name = (const char *)k->data.scalar.value;
    int i = 0;
    while (i < nkeys && strcmp(name, keys[i])) i++;
    if (i == nkeys) {
      unknown_key(c, k, path, name, keys, nkeys);
    } else if (f->key[i]) {
      problem(c, k, path, "duplicate key '%s' (first at line %zu)", keys[i], f->key[i]->start_mark.line + 1);
    } else {
      f->key[i] = k;
      f->val[i] = v;
    }
  }
  return 1;
}

/* The value of schema key i, or NULL if absent or written without a value.
 * For a required key, reports which (at the mapping, or at the bare key). */
static yaml_node_t *field(ctx_t *c, yaml_node_t *map, const char *path, const keyed_t *f, int i,
                          const char *const *keys, int required) {
  if (f->val[i] && !is_null(f->val[i])) return f->val[i];
  if (required) {
    if (f->key[i]) problem(c, f->key[i], path, "missing value for required key '%s'", keys[i]);
    else problem(c, map, path, "missing required key '%s'", keys[i]);
  }
  return NULL;
}

/* path + "." + key (or path[i] when key is NULL) into buf; paths are short,
 * and one cut off would only shorten a message. */
static const char *sub(char *buf, size_t cap, const char *path, const char *key, int index) {
  if (key) snprintf(buf, cap, "%s%s%s", path, *path ? "." : "", key);
  else snprintf(buf, cap, "%s[%d]", path, index);
  return buf;
}

#define SUB(path, key) sub((char[160]){0}, 160, (path), (key), 0)
#define ITEM(path, i) sub((char[160]){0}, 160, (path), NULL, (i))

/* ---- addresses ------------------------------------------------------------ */

/* Splits "host:port" or "[v6]:port" into host (brackets dropped) and port.
 * Returns NULL, or what is wrong. */
static const char *split_hostport(const char *s, char *host, size_t host_cap, int *port, int min_port) {
  const char *colon;
  const char *h = s;
  size_t hlen;
  if (*s == '[') {
    const char *rb = strchr(s, ']');
    if (!rb) return "missing ']' after an IPv6 address";
    h = s + 1;
    hlen = (size_t)(rb - h);
    if (rb[1] != ':') return "expected ':port' after ']'";
    colon = rb + 1;
    for (size_t i = 0; i < hlen; i++)
      if (!strchr(DIGIT "abcdefABCDEF:.%" LOWER UPPER "_-", h[i])) return "invalid character in IPv6 address";
  } else {
    colon = strrchr(s, ':');
    if (!colon) return "expected host:port";
    hlen = (size_t)(colon - s);
    if (memchr(s, ':', hlen)) return "write an IPv6 address in brackets, e.g. [::1]:8080";
    for (size_t i = 0; i < hlen; i++)
      if (!strchr(LOWER UPPER DIGIT ".-_", s[i])) return "invalid character in host";
  }
  if (hlen == 0) return "empty host";
  if (hlen >= host_cap) return "host too long";
  const char *ps = colon + 1;
  size_t plen = strlen(ps);
  if (plen == 0 || plen > 5 || strspn(ps, DIGIT) != plen) return "port must be a number";
  int p = atoi(ps);
  if (p < min_port || p > 65535) return min_port ? "port out of range 1..65535" : "port out of range 0..65535";
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = p;
  return NULL;
}

/* ---- sections -------------------------------------------------------------- */

static const char *const kafka_keys[] = {"brokers", "partitions"};
static const char *const postgres_keys[] = {"dsn", "mode"};
static const char *const redis_keys[] = {"url"};
static const char *const ingest_keys[] = {"batch_rows", "batch_ms",     "max_metadata_bytes", "sq8_train",
                                          "store_vector", "partman", "premake", "schema_registry",
                                          "sq8_train_wait_ms", "pq_m"};
static const char *const index_keys[] = {"m",           "ef_construction", "ef_search",
                                         "storage",     "sq8_train",       "snapshot_dir",
                                         "snapshot_interval_s", "max_lag_ms",    "after_timeout_ms",
                                         "tombstone_ms"};
static const char *const serve_keys[] = {"listen", "workers"};
static const char *const cache_keys[] = {"l1_entries", "l2_ttl_s"};
static const char *const collection_keys[] = {"name",      "dim",    "metric", "partitions",
                                              "schema_id", "topics", "fields", "sq8_params"};
static const char *const topic_keys[] = {"source", "changelog", "dlq"};
static const char *const field_keys[] = {"name", "type"};
static const char *const region_keys[] = {"name", "listen", "shards", "ef_search", "snapshot_dir"};

#define NKEYS(a) ((int)(sizeof(a) / sizeof(a)[0]))

/* Checks a bootstrap list host:port[,host:port]; reports and returns what is
 * wrong with the first bad entry, or returns NULL. */
static const char *check_brokers(ctx_t *c, yaml_node_t *v, const char *list) {
  const char *p = list;
  for (;;) {
    size_t n = strcspn(p, ",");
    char entry[sizeof ((rv_topology_t *)0)->brokers], host[256];
    int port;
    memcpy(entry, p, n);
    entry[n] = '\0';
    const char *why = n ? split_hostport(entry, host, sizeof host, &port, 1) : "empty entry";
    if (why) {
      problem(c, v, "kafka.brokers", "invalid broker '%s': %s (expected 'embedded' or host:port[,host:port])",
              SHOWN(entry), why);
      return why;
    }
    if (!p[n]) return NULL;
    p += n + 1;
  }
}

static void load_kafka(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "kafka", kafka_keys, NKEYS(kafka_keys), &f)) return;
  yaml_node_t *v;
  if ((v = field(c, n, "kafka", &f, 0, kafka_keys, 0))) {
    char buf[sizeof t->brokers];
    if (get_str(c, v, "kafka.brokers", buf, sizeof buf)) {
      const char *why = strcmp(buf, "embedded") ? check_brokers(c, v, buf) : NULL;
      if (!why) memcpy(t->brokers, buf, sizeof buf);
    }
  }
  if ((v = field(c, n, "kafka", &f, 1, kafka_keys, 0)))
    get_int(c, v, "kafka.partitions", 1, 256, &t->kafka_partitions);
}

static void load_postgres(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "postgres", postgres_keys, NKEYS(postgres_keys), &f)) return;
  yaml_node_t *v;
  if ((v = field(c, n, "postgres", &f, 0, postgres_keys, 0))) {
    char buf[sizeof t->postgres];
    if (get_str(c, v, "postgres.dsn", buf, sizeof buf)) {
      if (strcmp(buf, "embedded") && !strchr(buf, '=') && strncmp(buf, "postgresql://", 13) &&
          strncmp(buf, "postgres://", 11))
        problem(c, v, "postgres.dsn",
                "expected 'embedded' or a libpq connection string (key=value ... or postgresql://...), got '%s'",
                SHOWN(buf));
      else memcpy(t->postgres, buf, sizeof buf);
    }
  }
  static const char *const modes[] = {"direct", "pgbouncer"};
  if ((v = field(c, n, "postgres", &f, 1, postgres_keys, 0))) get_enum(c, v, "postgres.mode", modes, 2, &t->pgbouncer);
}

static void load_redis(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "redis", redis_keys, NKEYS(redis_keys), &f)) return;
  yaml_node_t *v = field(c, n, "redis", &f, 0, redis_keys, 0);
  char buf[sizeof t->redis];
  if (!v || !get_str(c, v, "redis.url", buf, sizeof buf)) return;
  if (!strcmp(buf, "embedded") || !strcmp(buf, "none")) {
    memcpy(t->redis, buf, sizeof buf);
  } else if (!strncmp(buf, "unix:", 5)) {
    if (buf[5] != '/') problem(c, v, "redis.url", "expected an absolute path after 'unix:', got '%s'", SHOWN(buf));
    else memcpy(t->redis, buf, sizeof buf);
  } else {
    char host[256];
    int port;
    const char *why = split_hostport(buf, host, sizeof host, &port, 1);
    if (why)
      problem(c, v, "redis.url", "invalid address '%s': %s (expected embedded, none, unix:/abs/path or host:port)",
              SHOWN(buf), why);
    else memcpy(t->redis, buf, sizeof buf);
  }
}

static void load_ingest(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "ingest", ingest_keys, NKEYS(ingest_keys), &f)) return;
  yaml_node_t *v;
  if ((v = field(c, n, "ingest", &f, 0, ingest_keys, 0))) get_int(c, v, "ingest.batch_rows", 1, 1000000, &t->batch_rows);
  if ((v = field(c, n, "ingest", &f, 1, ingest_keys, 0))) get_int(c, v, "ingest.batch_ms", 1, 60000, &t->batch_ms);
  if ((v = field(c, n, "ingest", &f, 2, ingest_keys, 0)))
    get_int(c, v, "ingest.max_metadata_bytes", 16, 16777216, &t->max_metadata_bytes);
  if ((v = field(c, n, "ingest", &f, 3, ingest_keys, 0))) get_int(c, v, "ingest.sq8_train", 1, 1000000, &t->sq8_train);
  static const char *const bools[] = {"false", "true"};
  if ((v = field(c, n, "ingest", &f, 4, ingest_keys, 0))) get_enum(c, v, "ingest.store_vector", bools, 2, &t->store_vector);
  static const char *const partman_modes[] = {"auto", "off"}; /* same order as rv_partman_mode_t */
  if ((v = field(c, n, "ingest", &f, 5, ingest_keys, 0))) get_enum(c, v, "ingest.partman", partman_modes, 2, &t->partman);
  if ((v = field(c, n, "ingest", &f, 6, ingest_keys, 0))) get_int(c, v, "ingest.premake", 1, 120, &t->premake);
  if ((v = field(c, n, "ingest", &f, 8, ingest_keys, 0)))
    get_int(c, v, "ingest.sq8_train_wait_ms", 1, 3600000, &t->sq8_train_wait_ms);
  int pq_m;
  if ((v = field(c, n, "ingest", &f, 9, ingest_keys, 0)) && get_int(c, v, "ingest.pq_m", 0, 65536, &pq_m)) {
    /* Collections are loaded first. PQ cuts a vector into pq_m equal parts, no padding. */
    int bad = 0;
    for (int i = 0; pq_m && i < t->n_collections; i++) {
      if (t->collections[i].dim > 0 && t->collections[i].dim % pq_m) {
        problem(c, v, "ingest.pq_m", "%d does not divide the dim %d of collection '%s' (0 turns PQ off)", pq_m,
                t->collections[i].dim, t->collections[i].name);
        bad = 1;
      }
    }
    if (!bad) t->pq_m = pq_m;
  }
  if ((v = field(c, n, "ingest", &f, 7, ingest_keys, 0))) {
    char buf[sizeof t->schema_registry];
    if (get_str(c, v, "ingest.schema_registry", buf, sizeof buf)) {
      /* The same rule as rv_registry_new: a URL of another scheme would otherwise be taken for a directory. */
      size_t scheme = !strncmp(buf, "http://", 7) ? 7 : !strncmp(buf, "https://", 8) ? 8 : 0;
      if ((scheme && !buf[scheme]) || (!scheme && strstr(buf, "://") && strncmp(buf, "file://", 7)))
        problem(c, v, "ingest.schema_registry",
                "expected an http(s):// Schema Registry URL, file:///dir or a directory of <id>.avsc, got '%s'",
                SHOWN(buf));
      else memcpy(t->schema_registry, buf, sizeof buf);
    }
  }
}

static void load_index(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "index", index_keys, NKEYS(index_keys), &f)) return;
  yaml_node_t *v;
  if ((v = field(c, n, "index", &f, 0, index_keys, 0))) get_int(c, v, "index.m", 2, 128, &t->hnsw_m);
  if ((v = field(c, n, "index", &f, 1, index_keys, 0)))
    get_int(c, v, "index.ef_construction", 1, 10000, &t->hnsw_ef_construction);
  if ((v = field(c, n, "index", &f, 2, index_keys, 0))) get_int(c, v, "index.ef_search", 1, 10000, &t->hnsw_ef_search);
  static const char *const storages[] = {"float", "sq8"}; /* same order as rv_hnsw_storage_t */
  if ((v = field(c, n, "index", &f, 3, index_keys, 0))) get_enum(c, v, "index.storage", storages, 2, &t->hnsw_storage);
  if ((v = field(c, n, "index", &f, 4, index_keys, 0)))
    get_int(c, v, "index.sq8_train", 1, 1000000, &t->hnsw_sq8_train);
  if ((v = field(c, n, "index", &f, 5, index_keys, 0)))
    get_str(c, v, "index.snapshot_dir", t->snapshot_dir, sizeof t->snapshot_dir);
  if ((v = field(c, n, "index", &f, 6, index_keys, 0)))
    get_int(c, v, "index.snapshot_interval_s", 0, 86400, &t->snapshot_interval_s);
  if ((v = field(c, n, "index", &f, 7, index_keys, 0))) get_int(c, v, "index.max_lag_ms", 1, 3600000, &t->max_lag_ms);
  if ((v = field(c, n, "index", &f, 8, index_keys, 0)))
    get_int(c, v, "index.after_timeout_ms", 0, 600000, &t->after_timeout_ms);
  if ((v = field(c, n, "index", &f, 9, index_keys, 0)))
    get_int(c, v, "index.tombstone_ms", 1, 86400000, &t->tombstone_ms);
}

static void load_serve(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "serve", serve_keys, NKEYS(serve_keys), &f)) return;
  yaml_node_t *v;
  if ((v = field(c, n, "serve", &f, 0, serve_keys, 0))) {
    const char *s = text_of(c, v, "serve.listen");
    char host[sizeof t->serve_host];
    int port;
    const char *why = NULL;
    if (s && (why = split_hostport(s, host, sizeof host, &port, 0)))
      problem(c, v, "serve.listen", "invalid address '%s': %s", SHOWN(s), why);
    else if (s) {
      memcpy(t->serve_host, host, sizeof host);
      t->serve_port = port;
    }
  }
  if ((v = field(c, n, "serve", &f, 1, serve_keys, 0))) get_int(c, v, "serve.workers", 1, 64, &t->serve_workers);
}

static void load_cache(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  keyed_t f;
  if (!keyed_map(c, n, "cache", cache_keys, NKEYS(cache_keys), &f)) return;
  yaml_node_t *v;
  if ((v = field(c, n, "cache", &f, 0, cache_keys, 0)))
    get_int(c, v, "cache.l1_entries", 0, 10000000, &t->cache_l1_entries);
  if ((v = field(c, n, "cache", &f, 1, cache_keys, 0))) get_int(c, v, "cache.l2_ttl_s", 1, 604800, &t->cache_l2_ttl_s);
}

/* A sequence (a null node reads as absent: returns 0 without a diag). */
static int is_list(ctx_t *c, yaml_node_t *n, const char *path) {
  if (is_null(n)) return 0;
  if (n->type == YAML_SEQUENCE_NODE) return 1;
  if (n->type == YAML_SCALAR_NODE)
    problem(c, n, path, "expected a list, got a scalar '%s'", SHOWN((const char *)n->data.scalar.value));
  else problem(c, n, path, "expected a list, got %s", kind(n));
  return 0;
}

static int list_len(const yaml_node_t *n) {
  return (int)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static void load_fields(ctx_t *c, yaml_node_t *n, const char *path, rv_collection_conf_t *col) {
  if (!is_list(c, n, path)) return;
  yaml_node_t *first[RV_MAX_FIELDS] = {0};
  for (int i = 0; i < list_len(n); i++) {
    yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
    if (!item) continue;
    if (i == RV_MAX_FIELDS) {
      problem(c, item, path, "too many fields (at most %d)", RV_MAX_FIELDS);
      break;
    }
    const char *ip = ITEM(path, i);
    keyed_t f;
    if (!keyed_map(c, item, ip, field_keys, NKEYS(field_keys), &f)) continue;
    rv_field_conf_t fc = {.type = RV_FIELD_KEYWORD};
    yaml_node_t *v;
    int ok = 1;
    if ((v = field(c, item, ip, &f, 0, field_keys, 1))) {
      const char *np = SUB(ip, "name");
      if (get_str(c, v, np, fc.name, sizeof fc.name)) {
        if (!matches(fc.name, LOWER UPPER "_", LOWER UPPER DIGIT "_.-", RV_NAME_MAX - 1)) {
          problem(c, v, np, "invalid field name '%s' (expected [A-Za-z_][A-Za-z0-9_.-]{0,62})", SHOWN(fc.name));
          ok = 0;
        }
        for (int j = 0; ok && j < col->n_fields; j++) {
          if (!strcmp(col->fields[j].name, fc.name)) {
            problem(c, v, np, "duplicate field '%s' (first at line %zu)", fc.name, first[j]->start_mark.line + 1);
            ok = 0;
          }
        }
      } else ok = 0;
    } else ok = 0;
    static const char *const types[] = {"keyword", "number"};
    int type = 0;
    if ((v = field(c, item, ip, &f, 1, field_keys, 0))) {
      if (get_enum(c, v, SUB(ip, "type"), types, 2, &type)) fc.type = type ? RV_FIELD_NUMBER : RV_FIELD_KEYWORD;
      else ok = 0;
    }
    if (ok) {
      first[col->n_fields] = f.val[0];
      col->fields[col->n_fields++] = fc;
    }
  }
}

static const char *const topic_role[] = {"source", "changelog", "dlq"};

/* Where each collection's topics came from, for reporting a clash. */
typedef struct topic_origin {
  yaml_node_t *node[3]; /* the explicit topic scalar, NULL for a default */
} topic_origin_t;

static const char *topic_of(const rv_collection_conf_t *col, int role) {
  return role == 0 ? col->source_topic : role == 1 ? col->changelog_topic : col->dlq_topic;
}

static void load_topics(ctx_t *c, yaml_node_t *n, const char *path, rv_collection_conf_t *col,
                        topic_origin_t *o) {
  keyed_t f;
  if (!keyed_map(c, n, path, topic_keys, NKEYS(topic_keys), &f)) return;
  char *dst[3] = {col->source_topic, col->changelog_topic, col->dlq_topic};
  for (int i = 0; i < 3; i++) {
    yaml_node_t *v = field(c, n, path, &f, i, topic_keys, 0);
    if (!v) continue;
    const char *tp = SUB(path, topic_keys[i]);
    char buf[RV_TOPIC_MAX];
    if (!get_str(c, v, tp, buf, sizeof buf)) continue;
    if (!matches(buf, NULL, LOWER UPPER DIGIT "._-", RV_TOPIC_MAX - 1) || !strcmp(buf, ".") || !strcmp(buf, "..")) {
      problem(c, v, tp, "invalid topic name '%s' (expected [A-Za-z0-9._-], at most %d characters)", SHOWN(buf),
              RV_TOPIC_MAX - 1);
      continue;
    }
    memcpy(dst[i], buf, sizeof buf);
    o->node[i] = v;
  }
}

static void load_collections(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  if (!is_list(c, n, "collections")) return;
  if (list_len(n) == 0) {
    problem(c, n, "collections", "must list at least one collection");
    return;
  }
  yaml_node_t *name_node[RV_MAX_COLLECTIONS] = {0};
  topic_origin_t origin[RV_MAX_COLLECTIONS] = {0};
  for (int i = 0; i < list_len(n); i++) {
    yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
    if (!item) continue;
    if (i == RV_MAX_COLLECTIONS) {
      problem(c, item, "collections", "too many collections (at most %d)", RV_MAX_COLLECTIONS);
      break;
    }
    const char *ip = ITEM("collections", i);
    keyed_t f;
    if (!keyed_map(c, item, ip, collection_keys, NKEYS(collection_keys), &f)) continue;
    rv_collection_conf_t *col = &t->collections[t->n_collections];
    memset(col, 0, sizeof *col);
    yaml_node_t *v;
    if ((v = field(c, item, ip, &f, 0, collection_keys, 1))) {
      const char *np = SUB(ip, "name");
      if (get_str(c, v, np, col->name, sizeof col->name)) {
        if (!matches(col->name, LOWER, LOWER DIGIT "_", 48)) {
          problem(c, v, np, "invalid collection name '%s' (expected [a-z][a-z0-9_]{0,47})", SHOWN(col->name));
          col->name[0] = '\0';
        }
        for (int j = 0; col->name[0] && j < t->n_collections; j++) {
          if (name_node[j] && !strcmp(t->collections[j].name, col->name)) {
            problem(c, v, np, "duplicate collection name '%s' (first at line %zu)", col->name,
                    name_node[j]->start_mark.line + 1);
            col->name[0] = '\0';
          }
        }
      }
    }
    if ((v = field(c, item, ip, &f, 1, collection_keys, 1))) get_int(c, v, SUB(ip, "dim"), 1, 65536, &col->dim);
    static const char *const metrics[] = {"l2", "cosine", "ip"}; /* same order as rv_metric_t */
    int metric = RV_METRIC_L2;
    if ((v = field(c, item, ip, &f, 2, collection_keys, 0)) && get_enum(c, v, SUB(ip, "metric"), metrics, 3, &metric))
      col->metric = (rv_metric_t)metric;
    if ((v = field(c, item, ip, &f, 3, collection_keys, 0)))
      get_int(c, v, SUB(ip, "partitions"), 1, 256, &col->partitions);
    if ((v = field(c, item, ip, &f, 4, collection_keys, 0)))
      get_int(c, v, SUB(ip, "schema_id"), 1, 2147483647, &col->schema_id);
    topic_origin_t *o = &origin[t->n_collections];
    memset(o, 0, sizeof *o); /* the slot of a dropped collection is reused */
    if ((v = field(c, item, ip, &f, 5, collection_keys, 0))) load_topics(c, v, SUB(ip, "topics"), col, o);
    if ((v = field(c, item, ip, &f, 6, collection_keys, 0))) load_fields(c, v, SUB(ip, "fields"), col);
    char *params = t->sq8_params[t->n_collections];
    params[0] = '\0'; /* the slot of a dropped collection is reused */
    if ((v = field(c, item, ip, &f, 7, collection_keys, 0)))
      get_str(c, v, SUB(ip, "sq8_params"), params, sizeof t->sq8_params[0]);
    if (!col->name[0]) continue; /* reported; not kept, so later checks do not cascade */
    name_node[t->n_collections] = f.val[0];
    if (col->partitions <= 0) col->partitions = t->kafka_partitions; /* kafka is loaded first */
    rv_collection_default_topics(col);
    t->n_collections++;
  }

  /* Two roles sharing a topic would feed one stage's output into another's
   * input. Defaults never clash (names are unique and contain no '.'), so each
   * clash involves an explicit topic, and is reported there. */
  for (int i = 0; i < t->n_collections; i++) {
    for (int r = 0; r < 3; r++) {
      for (int j = 0; j <= i; j++) {
        int clash = -1;
        for (int s = 0; s < 3 && clash < 0 && !(j == i && s >= r); s++)
          if (!strcmp(topic_of(&t->collections[i], r), topic_of(&t->collections[j], s))) clash = s;
        if (clash < 0) continue;
        int at_i = origin[i].node[r] != NULL;
        yaml_node_t *at = at_i ? origin[i].node[r] : origin[j].node[clash];
        const rv_collection_conf_t *other = at_i ? &t->collections[j] : &t->collections[i];
        char path[160];
        snprintf(path, sizeof path, "collections[%d].topics.%s", at_i ? i : j, topic_role[at_i ? r : clash]);
        problem(c, at, path, "topic '%s' is also the %s topic of collection '%s'", SHOWN(topic_of(other, at_i ? clash : r)),
                topic_role[at_i ? clash : r], other->name);
        j = i; /* one report per topic */
      }
    }
  }
}

/* A region's settings before its own keys: the pipeline-wide ones (index is
 * loaded before regions). */
static void region_defaults(const rv_topology_t *t, rv_region_conf_t *rc, const char *name) {
  memset(rc, 0, sizeof *rc);
  snprintf(rc->name, sizeof rc->name, "%s", name);
  strcpy(rc->listen_host, "127.0.0.1");
  rc->shards = 1;
  rc->ef_search = t->hnsw_ef_search;
  memcpy(rc->snapshot_dir, t->snapshot_dir, sizeof rc->snapshot_dir);
}

/* The keys of a region written as a mapping, into rc (defaults already in it). */
static void load_region_keys(ctx_t *c, const char *ip, const keyed_t *f, yaml_node_t *item, rv_region_conf_t *rc,
                             yaml_node_t **listen_node) {
  yaml_node_t *v;
  if ((v = field(c, item, ip, f, 1, region_keys, 0))) {
    const char *lp = SUB(ip, "listen");
    const char *s = text_of(c, v, lp);
    char host[sizeof rc->listen_host];
    int port;
    const char *why = NULL;
    if (s && (why = split_hostport(s, host, sizeof host, &port, 0))) {
      problem(c, v, lp, "invalid address '%s': %s", SHOWN(s), why);
    } else if (s) {
      memcpy(rc->listen_host, host, sizeof host);
      rc->listen_port = port;
      *listen_node = v;
    }
  }
  if ((v = field(c, item, ip, f, 2, region_keys, 0))) get_int(c, v, SUB(ip, "shards"), 1, 64, &rc->shards);
  if ((v = field(c, item, ip, f, 3, region_keys, 0))) get_int(c, v, SUB(ip, "ef_search"), 1, 10000, &rc->ef_search);
  if ((v = field(c, item, ip, f, 4, region_keys, 0)))
    get_str(c, v, SUB(ip, "snapshot_dir"), rc->snapshot_dir, sizeof rc->snapshot_dir);
  /* Shard i listens on listen_port + i. */
  if (*listen_node && rc->listen_port > 0 && rc->listen_port + rc->shards - 1 > 65535)
    problem(c, *listen_node, SUB(ip, "listen"), "port %d + %d shards runs past 65535", rc->listen_port, rc->shards);
}

static void load_regions(ctx_t *c, yaml_node_t *n, rv_topology_t *t) {
  if (!is_list(c, n, "regions")) return;
  if (list_len(n) == 0) {
    problem(c, n, "regions", "must list at least one region (or leave 'regions' out for [local])");
    return;
  }
  yaml_node_t *first[RV_MAX_REGIONS] = {0};
  yaml_node_t *listen_at[RV_MAX_REGIONS] = {0};
  t->n_regions = 0;
  for (int i = 0; i < list_len(n); i++) {
    yaml_node_t *item = node_at(c, n->data.sequence.items.start[i]);
    if (!item) continue;
    if (i == RV_MAX_REGIONS) {
      problem(c, item, "regions", "too many regions (at most %d)", RV_MAX_REGIONS);
      break;
    }
    char ip[160], base[160];
    sub(ip, sizeof ip, "regions", NULL, i);
    memcpy(base, ip, sizeof base);
    yaml_node_t *v = item;
    keyed_t f;
    int mapping = item->type == YAML_MAPPING_NODE;
    if (mapping) {
      keyed_map(c, item, ip, region_keys, NKEYS(region_keys), &f);
      if (!(v = field(c, item, ip, &f, 0, region_keys, 1))) continue;
      snprintf(ip, sizeof ip, "regions[%d].name", i);
    }
    char name[RV_NAME_MAX];
    if (!get_str(c, v, ip, name, sizeof name)) continue;
    if (!matches(name, NULL, LOWER DIGIT "-", RV_NAME_MAX - 1)) {
      problem(c, v, ip, "invalid region name '%s' (expected [a-z0-9-]{1,63})", SHOWN(name));
      continue;
    }
    int dup = 0;
    for (int j = 0; j < t->n_regions && !dup; j++) {
      if (!strcmp(t->regions[j], name)) {
        problem(c, v, ip, "duplicate region '%s' (first at line %zu)", name, first[j]->start_mark.line + 1);
        dup = 1;
      }
    }
    if (dup) continue;
    rv_region_conf_t *rc = &t->region_conf[t->n_regions];
    region_defaults(t, rc, name);
    yaml_node_t *listen = NULL;
    if (mapping) load_region_keys(c, base, &f, item, rc, &listen);
    /* Two regions' shards on one host must not share a port (port 0 picks a free one). */
    for (int j = 0; listen && rc->listen_port > 0 && j < t->n_regions; j++) {
      const rv_region_conf_t *o = &t->region_conf[j];
      if (!listen_at[j] || o->listen_port <= 0 || strcmp(o->listen_host, rc->listen_host)) continue;
      if (rc->listen_port < o->listen_port + o->shards && o->listen_port < rc->listen_port + rc->shards) {
        problem(c, listen, SUB(base, "listen"), "ports %d..%d overlap those of region '%s' (line %zu)",
                rc->listen_port, rc->listen_port + rc->shards - 1, o->name, listen_at[j]->start_mark.line + 1);
        break;
      }
    }
    listen_at[t->n_regions] = listen;
    first[t->n_regions] = v;
    memcpy(t->regions[t->n_regions++], name, sizeof name);
  }
}

static const char *const top_keys[] = {"name",        "data_dir", "kafka",   "postgres", "redis", "collections",
                                       "ingest",      "index",    "regions", "serve",    "cache", "endpoints_file"};
enum { K_NAME, K_DATA_DIR, K_KAFKA, K_POSTGRES, K_REDIS, K_COLLECTIONS, K_INGEST, K_INDEX, K_REGIONS, K_SERVE,
       K_CACHE, K_ENDPOINTS_FILE };

static void set_defaults(rv_topology_t *t) {
  memset(t, 0, sizeof *t);
  strcpy(t->brokers, "embedded");
  t->kafka_partitions = 3;
  strcpy(t->postgres, "embedded");
  strcpy(t->redis, "embedded");
  t->batch_rows = 5000;
  t->batch_ms = 50;
  t->max_metadata_bytes = 65536;
  t->sq8_train = 1000;
  t->sq8_train_wait_ms = 5000;
  t->store_vector = 1;
  t->partman = 0;
  t->premake = 3;
  t->hnsw_m = 16;
  t->hnsw_ef_construction = 100;
  t->hnsw_ef_search = 64;
  t->hnsw_sq8_train = 1000;
  t->max_lag_ms = 5000;
  t->after_timeout_ms = 5000;
  t->tombstone_ms = 60000;
  strcpy(t->regions[0], "local");
  t->n_regions = 1;
  strcpy(t->serve_host, "127.0.0.1");
  t->serve_port = 8080;
  t->serve_workers = 2;
  t->cache_l1_entries = 10000;
  t->cache_l2_ttl_s = 300;
  strcpy(t->endpoints_file, "var/endpoints.json");
}

static void load_root(ctx_t *c, yaml_node_t *root, rv_topology_t *t) {
  keyed_t f;
  if (root->type != YAML_MAPPING_NODE) {
    problem(c, root, "", "expected a mapping at the top level, got %s", kind(root));
    return;
  }
  keyed_map(c, root, "", top_keys, NKEYS(top_keys), &f);
  yaml_node_t *v;
  if ((v = field(c, root, "", &f, K_NAME, top_keys, 1)) && get_str(c, v, "name", t->name, sizeof t->name) &&
      !matches(t->name, NULL, LOWER DIGIT "_-", RV_NAME_MAX - 1)) {
    problem(c, v, "name", "invalid name '%s' (expected [a-z0-9_-]{1,63})", SHOWN(t->name));
  }
  if ((v = field(c, root, "", &f, K_DATA_DIR, top_keys, 0))) get_str(c, v, "data_dir", t->data_dir, sizeof t->data_dir);
  else snprintf(t->data_dir, sizeof t->data_dir, "var/%s", t->name);
  if ((v = field(c, root, "", &f, K_KAFKA, top_keys, 0))) load_kafka(c, v, t);
  if ((v = field(c, root, "", &f, K_POSTGRES, top_keys, 0))) load_postgres(c, v, t);
  if ((v = field(c, root, "", &f, K_REDIS, top_keys, 0))) load_redis(c, v, t);
  if ((v = field(c, root, "", &f, K_COLLECTIONS, top_keys, 1))) load_collections(c, v, t); /* after kafka */
  if ((v = field(c, root, "", &f, K_INGEST, top_keys, 0))) load_ingest(c, v, t);
  if ((v = field(c, root, "", &f, K_INDEX, top_keys, 0))) load_index(c, v, t);
  if ((v = field(c, root, "", &f, K_REGIONS, top_keys, 0))) load_regions(c, v, t);
  else region_defaults(t, &t->region_conf[0], t->regions[0]); /* the default [local], after index */
  if ((v = field(c, root, "", &f, K_SERVE, top_keys, 0))) load_serve(c, v, t);
  if ((v = field(c, root, "", &f, K_CACHE, top_keys, 0))) load_cache(c, v, t);
  if ((v = field(c, root, "", &f, K_ENDPOINTS_FILE, top_keys, 0)))
    get_str(c, v, "endpoints_file", t->endpoints_file, sizeof t->endpoints_file);
}

/* ---- entry points ---------------------------------------------------------- */

/* Line and column (1-based, in characters) of a byte offset, for reader errors
 * that libyaml reports by offset only. */
static void offset_mark(const char *text, size_t len, size_t off, int *line, int *column) {
  *line = 1;
  *column = 1;
  for (size_t i = 0; i < off && i < len; i++) {
    if (text[i] == '\n') {
      (*line)++;
      *column = 1;
    } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
      (*column)++;
    }
  }
}

static void syntax_error(ctx_t *c, const yaml_parser_t *p, const char *text, size_t len) {
  char msg[400];
  const char *problem_text = p->problem ? p->problem : "unknown problem";
  int line, column;
  if (p->error == YAML_READER_ERROR) {
    offset_mark(text, len, p->problem_offset, &line, &column);
  } else {
    line = (int)p->problem_mark.line + 1;
    column = (int)p->problem_mark.column + 1;
  }
  if (p->error == YAML_MEMORY_ERROR) {
    c->nomem = 1;
    return;
  }
  if (p->context)
    snprintf(msg, sizeof msg, "YAML syntax error: %s (%s at line %zu, column %zu)", problem_text, p->context,
             p->context_mark.line + 1, p->context_mark.column + 1);
  else snprintf(msg, sizeof msg, "YAML syntax error: %s", problem_text);
  if (diags_add(c->diags, c->file, line, column, msg) != 0) c->nomem = 1;
}

/* Finds collections nested deeper than MAX_FLOW_DEPTH before the document is
 * loaded, with libyaml's own event parser, which stops there: its scanner
 * keeps a stack of possible keys as deep as the nesting, and that is where the
 * quadratic time comes from, so stopping at the limit keeps this pass linear.
 * Syntax errors are left to the real load. Returns 1 and sets *line and
 * *column (1-based) at the collection that crosses the limit. */
static int too_deep(const char *text, size_t len, int *line, int *column) {
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return 0;
  yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
  int depth = 0, found = 0;
  for (;;) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) break;
    yaml_event_type_t type = ev.type;
    if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) {
      if (++depth > MAX_FLOW_DEPTH) {
        *line = (int)ev.start_mark.line + 1;
        *column = (int)ev.start_mark.column + 1;
        found = 1;
      }
    } else if (type == YAML_SEQUENCE_END_EVENT || type == YAML_MAPPING_END_EVENT) {
      depth--;
    }
    yaml_event_delete(&ev);
    if (found || type == YAML_STREAM_END_EVENT) break;
  }
  yaml_parser_delete(&p);
  return found;
}

rv_err_t rv_topology_parse(const char *name, const char *text, size_t len, rv_topology_t *out,
                           rv_diags_t *diags) {
  int before = diags->n;
  ctx_t c = {.diags = diags, .file = name};
  set_defaults(out);
  if (len > MAX_TEXT_BYTES) {
    char msg[128];
    snprintf(msg, sizeof msg, "file too large (%zu bytes, at most %zu)", len, MAX_TEXT_BYTES);
    return diags_add(diags, name, 0, 0, msg) ? RV_ERR_NOMEM : RV_ERR_CONFIG;
  }
  int deep_line, deep_column;
  if (too_deep(text, len, &deep_line, &deep_column)) {
    char msg[128];
    snprintf(msg, sizeof msg, "collections nested deeper than %d levels", MAX_FLOW_DEPTH);
    return diags_add(diags, name, deep_line, deep_column, msg) ? RV_ERR_NOMEM : RV_ERR_CONFIG;
  }

  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) return RV_ERR_NOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  yaml_document_t doc;
  if (!yaml_parser_load(&parser, &doc)) { /* libyaml has already freed doc */
    syntax_error(&c, &parser, text, len);
  } else {
    c.doc = &doc;
    c.n_nodes = (size_t)(doc.nodes.top - doc.nodes.start);
    c.vals = calloc(c.n_nodes + 1, sizeof *c.vals);
    c.done = calloc(c.n_nodes + 1, 1);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!c.vals || !c.done) {
      c.nomem = 1;
    } else if (!root) {
      yaml_mark_t start = {0};
      problem_at(&c, start, "", "empty topology (expected a mapping with at least 'name' and 'collections')");
    } else {
      load_root(&c, root, out);
      yaml_document_t next;
      if (!yaml_parser_load(&parser, &next)) {
        syntax_error(&c, &parser, text, len);
      } else {
        yaml_node_t *extra = yaml_document_get_root_node(&next);
        if (extra) problem(&c, extra, "", "more than one YAML document (a topology is exactly one)");
        yaml_document_delete(&next);
      }
    }
    for (size_t i = 0; c.vals && i < c.n_nodes; i++) free(c.vals[i]);
    free(c.vals);
    free(c.done);
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);

  diags_sort(diags, before);
  if (c.nomem) return RV_ERR_NOMEM;
  return diags->n > before ? RV_ERR_CONFIG : RV_OK;
}

rv_err_t rv_topology_load(const char *path, rv_topology_t *out, rv_diags_t *diags) {
  FILE *f = fopen(path, "rb");
  char msg[300];
  if (!f) {
    snprintf(msg, sizeof msg, "cannot open: %s", strerror(errno));
    return diags_add(diags, path, 0, 0, msg) ? RV_ERR_NOMEM : RV_ERR_IO;
  }
  size_t cap = 4096, len = 0;
  char *text = malloc(cap);
  while (text) {
    if (len == cap) {
      if (cap > MAX_TEXT_BYTES) break; /* parse reports it as too large */
      char *grown = realloc(text, cap * 2);
      if (!grown) {
        free(text);
        text = NULL;
        break;
      }
      text = grown;
      cap *= 2;
    }
    size_t got = fread(text + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  int read_error = ferror(f);
  int saved_errno = errno;
  fclose(f);
  if (!text) return RV_ERR_NOMEM;
  if (read_error) {
    free(text);
    snprintf(msg, sizeof msg, "cannot read: %s", strerror(saved_errno));
    return diags_add(diags, path, 0, 0, msg) ? RV_ERR_NOMEM : RV_ERR_IO;
  }
  rv_err_t err = rv_topology_parse(path, text, len, out, diags);
  free(text);
  return err;
}

int rv_topology_load_report(const char *path, rv_topology_t *out) {
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_load(path, out, &d);
  rv_diags_print(&d, stderr);
  int n = d.n;
  rv_diags_close(&d);
  if (err == RV_ERR_NOMEM) {
    fprintf(stderr, "%s: out of memory\n", path);
    return 1;
  }
  if (err) {
    fprintf(stderr, "%s: invalid topology (%d problem%s)\n", path, n, n == 1 ? "" : "s");
    return 78; /* EX_CONFIG */
  }
  return 0;
}
