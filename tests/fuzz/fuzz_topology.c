/* Fuzzes rv_topology_parse (pipelines/rv_topology.h): the input is the YAML
 * text of a topology. It must never crash; success must mean no diags and a
 * topology inside its documented ranges; failure must come with diags, each a
 * single line, in file order. The diags are printed (to /dev/null) and freed. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rv_topology.h"

#define TERMINATED(arr) FUZZ_CHECK(memchr((arr), 0, sizeof(arr)) != NULL, "%s not terminated", #arr)

static void check_topology(const rv_topology_t *t) {
  TERMINATED(t->name);
  TERMINATED(t->data_dir);
  TERMINATED(t->brokers);
  TERMINATED(t->postgres);
  TERMINATED(t->redis);
  TERMINATED(t->serve_host);
  TERMINATED(t->endpoints_file);
  FUZZ_CHECK(t->name[0] != 0, "accepted without a name");
  FUZZ_CHECK(t->n_collections >= 1 && t->n_collections <= RV_MAX_COLLECTIONS, "n_collections %d", t->n_collections);
  for (int i = 0; i < t->n_collections; i++) {
    const rv_collection_conf_t *col = &t->collections[i];
    TERMINATED(col->name);
    TERMINATED(col->source_topic);
    TERMINATED(col->changelog_topic);
    TERMINATED(col->dlq_topic);
    FUZZ_CHECK(col->name[0] && col->dim >= 1 && col->dim <= 65536, "collection %d: name '%s' dim %d", i, col->name,
               col->dim);
    FUZZ_CHECK(col->n_fields >= 0 && col->n_fields <= RV_MAX_FIELDS, "collection %d: n_fields %d", i, col->n_fields);
    for (int k = 0; k < col->n_fields; k++) TERMINATED(col->fields[k].name);
  }
  FUZZ_CHECK(t->n_regions >= 1 && t->n_regions <= RV_MAX_REGIONS, "n_regions %d", t->n_regions);
  for (int i = 0; i < t->n_regions; i++) {
    TERMINATED(t->regions[i]);
    FUZZ_CHECK(t->regions[i][0] != 0, "region %d is empty", i);
  }
  FUZZ_CHECK(t->serve_port >= 0 && t->serve_port <= 65535, "serve_port %d", t->serve_port);
}

static void check_diags(const rv_diags_t *d) {
  FUZZ_CHECK(d->n >= 0 && d->n <= d->cap && (d->n == 0 || d->items), "diags n %d cap %d", d->n, d->cap);
  for (int i = 0; i < d->n; i++) {
    const rv_diag_t *g = &d->items[i];
    TERMINATED(g->file);
    TERMINATED(g->message);
    FUZZ_CHECK(g->line >= 0 && g->column >= 0, "diag %d at %d:%d", i, g->line, g->column);
    for (const char *p = g->message; *p; p++)
      FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f, "diag %d has control byte 0x%02x", i, (unsigned char)*p);
    if (i > 0) {
      const rv_diag_t *h = &d->items[i - 1];
      FUZZ_CHECK(h->line < g->line || (h->line == g->line && h->column <= g->column),
                 "diags out of order: %d:%d before %d:%d", h->line, h->column, g->line, g->column);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* ${VAR} interpolation reads the environment: give the dictionary's
   * variables fixed values so runs are reproducible. */
  static FILE *devnull;
  if (!devnull) {
    setenv("RV_FUZZ_SET", "fuzz-value", 1);
    setenv("RV_FUZZ_EMPTY", "", 1);
    unsetenv("RV_FUZZ_UNSET");
    devnull = fopen("/dev/null", "w");
    FUZZ_CHECK(devnull != NULL, "cannot open /dev/null");
  }
  rv_topology_t *t = malloc(sizeof *t);
  FUZZ_CHECK(t != NULL, "out of memory");
  rv_diags_t d;
  rv_diags_init(&d);
  rv_err_t err = rv_topology_parse("fuzz.yaml", (const char *)data, size, t, &d);
  check_diags(&d);
  if (err == RV_OK) {
    FUZZ_CHECK(d.n == 0, "RV_OK with %d diags", d.n);
    check_topology(t);
  } else {
    FUZZ_CHECK(err == RV_ERR_CONFIG || err == RV_ERR_NOMEM, "returned %d (%s)", err, rv_err_str(err));
    FUZZ_CHECK(err != RV_ERR_CONFIG || d.n > 0, "RV_ERR_CONFIG without a diag");
  }
  rv_diags_print(&d, devnull);
  rv_diags_close(&d);
  free(t);
  return 0;
}
