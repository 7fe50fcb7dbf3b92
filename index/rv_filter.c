#include "rv_filter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct clause {
  int field;
  int is_range;
  char **values; /* keyword clauses, owned */
  int n_values;
  double lo, hi;
  rv_bound_t lo_kind, hi_kind;
} clause_t;

struct rv_filter {
  rv_field_conf_t fields[RV_MAX_FIELDS]; /* the schema it was built for */
  int n_fields;
  clause_t c[RV_FILTER_MAX_CLAUSES];
  int n;
};

rv_filter_t *rv_filter_new(const rv_attrs_t *a) {
  rv_filter_t *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  int n;
  const rv_field_conf_t *fc = rv_attrs_fields(a, &n);
  memcpy(f->fields, fc, (size_t)n * sizeof *fc);
  f->n_fields = n;
  return f;
}

static void clause_free(clause_t *c) {
  for (int i = 0; i < c->n_values; i++) free(c->values[i]);
  free(c->values);
}

void rv_filter_destroy(rv_filter_t *f) {
  if (!f) return;
  for (int i = 0; i < f->n; i++) clause_free(&f->c[i]);
  free(f);
}

int rv_filter_n_clauses(const rv_filter_t *f) { return f->n; }

/* The index of field name, checked for type; -1 with errstr filled. */
static int field_of(const rv_filter_t *f, const char *name, rv_field_type_t want, char *errstr, size_t es) {
  if (f->n >= RV_FILTER_MAX_CLAUSES) {
    rv_errf(RV_ERR_INVALID, errstr, es, "filter: more than %d clauses", RV_FILTER_MAX_CLAUSES);
    return -1;
  }
  for (int i = 0; name && i < f->n_fields; i++) {
    if (strcmp(f->fields[i].name, name)) continue;
    if (f->fields[i].type != want) {
      rv_errf(RV_ERR_INVALID, errstr, es, "filter: field '%s' is a %s field; %s", name,
              f->fields[i].type == RV_FIELD_NUMBER ? "number" : "keyword",
              want == RV_FIELD_NUMBER ? "a range needs a number field" : "equality/IN needs a keyword field");
      return -1;
    }
    return i;
  }
  rv_errf(RV_ERR_INVALID, errstr, es, "filter: unknown field '%s'", name ? name : "(null)");
  return -1;
}

rv_err_t rv_filter_in(rv_filter_t *f, const char *field, const char *const *values, int n, char *errstr,
                      size_t errstr_size) {
  int fi = field_of(f, field, RV_FIELD_KEYWORD, errstr, errstr_size);
  if (fi < 0) return RV_ERR_INVALID;
  if (n < 1 || n > RV_FILTER_MAX_VALUES || !values)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter: '%s' IN needs 1..%d values, got %d", field,
                   RV_FILTER_MAX_VALUES, n);
  for (int i = 0; i < n; i++) {
    if (!values[i]) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter: '%s': NULL value", field);
    if (strnlen(values[i], RV_ATTR_VALUE_MAX + 1) > RV_ATTR_VALUE_MAX)
      return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter: '%s': value longer than %d bytes", field,
                     RV_ATTR_VALUE_MAX);
  }
  clause_t c = {.field = fi, .values = calloc((size_t)n, sizeof(char *)), .n_values = 0};
  if (!c.values) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "filter: out of memory");
  for (int i = 0; i < n; i++) {
    if (!(c.values[i] = strdup(values[i]))) {
      clause_free(&c);
      return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "filter: out of memory");
    }
    c.n_values++;
  }
  f->c[f->n++] = c;
  return RV_OK;
}

rv_err_t rv_filter_eq(rv_filter_t *f, const char *field, const char *value, char *errstr, size_t errstr_size) {
  return rv_filter_in(f, field, &value, 1, errstr, errstr_size);
}

rv_err_t rv_filter_range(rv_filter_t *f, const char *field, rv_bound_t lo_kind, double lo, rv_bound_t hi_kind,
                         double hi, char *errstr, size_t errstr_size) {
  int fi = field_of(f, field, RV_FIELD_NUMBER, errstr, errstr_size);
  if (fi < 0) return RV_ERR_INVALID;
  if ((unsigned)lo_kind > RV_BOUND_EXCL || (unsigned)hi_kind > RV_BOUND_EXCL)
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter: '%s': unknown bound kind", field);
  if ((lo_kind != RV_BOUND_OPEN && isnan(lo)) || (hi_kind != RV_BOUND_OPEN && isnan(hi)))
    return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter: '%s': NaN bound", field);
  f->c[f->n++] = (clause_t){.field = fi, .is_range = 1, .lo = lo, .hi = hi, .lo_kind = lo_kind, .hi_kind = hi_kind};
  return RV_OK;
}

/* ---- compiled form ------------------------------------------------------------ */

static int cmp_u32(const void *pa, const void *pb) {
  uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
  return a < b ? -1 : a > b;
}

static int cmp_clause(const void *pa, const void *pb) {
  const rv__fclause_t *a = pa, *b = pb;
  if (a->is_range != b->is_range) return a->is_range - b->is_range;
  if (a->is_range) return 0;
  return a->count < b->count ? -1 : a->count > b->count;
}

void rv__cfilter_close(rv__cfilter_t *cf) {
  for (int i = 0; i < cf->n; i++) {
    free(cf->c[i].codes);
    free(cf->c[i].bitmap);
  }
  free(cf->c);
  memset(cf, 0, sizeof *cf);
}

static int range_empty(const rv__fclause_t *c) {
  if (c->lo_kind == RV_BOUND_OPEN || c->hi_kind == RV_BOUND_OPEN) return 0;
  if (c->lo > c->hi) return 1;
  return c->lo == c->hi && (c->lo_kind == RV_BOUND_EXCL || c->hi_kind == RV_BOUND_EXCL);
}

rv_err_t rv__filter_compile_locked(const rv_filter_t *f, const rv_attrs_t *a, rv__cfilter_t *cf, char *errstr,
                                   size_t errstr_size) {
  memset(cf, 0, sizeof *cf);
  int n_fields;
  const rv_field_conf_t *fc = rv_attrs_fields(a, &n_fields);
  int same = n_fields == f->n_fields;
  for (int i = 0; same && i < n_fields; i++)
    same = fc[i].type == f->fields[i].type && !strcmp(fc[i].name, f->fields[i].name);
  if (!same) return rv_errf(RV_ERR_INVALID, errstr, errstr_size, "filter: built for other fields than the index has");
  cf->a = a;
  if (f->n == 0) return RV_OK;
  cf->c = calloc((size_t)f->n, sizeof *cf->c);
  if (!cf->c) return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "filter: out of memory");
  for (int i = 0; i < f->n; i++) {
    const clause_t *s = &f->c[i];
    rv__fclause_t *d = &cf->c[cf->n++];
    d->field = s->field;
    d->is_range = s->is_range;
    if (s->is_range) {
      d->lo = s->lo;
      d->hi = s->hi;
      d->lo_kind = s->lo_kind;
      d->hi_kind = s->hi_kind;
      if (range_empty(d)) cf->never = 1;
      continue;
    }
    d->codes = malloc((size_t)s->n_values * sizeof *d->codes);
    if (!d->codes) goto nomem;
    for (int j = 0; j < s->n_values; j++) {
      uint32_t code = rv__attrs_lookup_locked(a, s->field, s->values[j]);
      if (code) d->codes[d->n_codes++] = code;
    }
    qsort(d->codes, d->n_codes, sizeof *d->codes, cmp_u32);
    uint32_t u = 0; /* drop duplicates, so counts add up */
    for (uint32_t j = 0; j < d->n_codes; j++)
      if (!u || d->codes[u - 1] != d->codes[j]) d->codes[u++] = d->codes[j];
    d->n_codes = u;
    for (uint32_t j = 0; j < d->n_codes; j++) d->count += rv__attrs_posting_locked(a, s->field, d->codes[j], NULL);
    if (d->count == 0) cf->never = 1;
    if (d->n_codes > 8) {
      d->bitmap_bits = d->codes[d->n_codes - 1] + 1;
      d->bitmap = calloc(((size_t)d->bitmap_bits + 63) / 64, sizeof(uint64_t));
      if (!d->bitmap) goto nomem;
      for (uint32_t j = 0; j < d->n_codes; j++) d->bitmap[d->codes[j] >> 6] |= 1ull << (d->codes[j] & 63);
    }
  }
  qsort(cf->c, (size_t)cf->n, sizeof *cf->c, cmp_clause);
  return RV_OK;
nomem:
  rv__cfilter_close(cf);
  return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "filter: out of memory");
}

static int clause_ok(const rv_attrs_t *a, const rv__fclause_t *c, uint32_t iid) {
  if (c->is_range) {
    double x = rv__attrs_number(a, c->field, iid);
    if (isnan(x)) return 0;
    if (c->lo_kind == RV_BOUND_INCL ? x < c->lo : c->lo_kind == RV_BOUND_EXCL ? x <= c->lo : 0) return 0;
    if (c->hi_kind == RV_BOUND_INCL ? x > c->hi : c->hi_kind == RV_BOUND_EXCL ? x >= c->hi : 0) return 0;
    return 1;
  }
  uint32_t code = rv__attrs_code(a, c->field, iid);
  if (!code) return 0;
  if (c->bitmap) return code < c->bitmap_bits && (c->bitmap[code >> 6] >> (code & 63) & 1);
  for (uint32_t j = 0; j < c->n_codes; j++)
    if (c->codes[j] == code) return 1;
  return 0;
}

int rv__cfilter_accept(void *ctx, uint32_t iid) {
  const rv__cfilter_t *cf = ctx;
  if (cf->never) return 0;
  for (int i = 0; i < cf->n; i++)
    if (!clause_ok(cf->a, &cf->c[i], iid)) return 0;
  return 1;
}

int rv_filter_matches(const rv_filter_t *f, const rv_attrs_t *a, uint32_t iid) {
  rv__cfilter_t cf;
  rv__attrs_rdlock(a);
  rv_err_t err = rv__filter_compile_locked(f, a, &cf, NULL, 0);
  rv__attrs_unlock(a);
  if (err) return 0;
  int ok = rv__cfilter_accept(&cf, iid);
  rv__cfilter_close(&cf);
  return ok;
}
