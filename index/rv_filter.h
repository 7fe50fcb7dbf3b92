#ifndef RV_FILTER_H
#define RV_FILTER_H
/* A filter expression over the attributes of rv_attrs.h: a conjunction
 * (AND) of clauses, each one of
 *   keyword equality      color = "red"
 *   keyword membership    color IN ("red", "blue")
 *   numeric range         10 <= price < 20, either end inclusive, exclusive
 *                         or open; both ends open means "has a value".
 * A slot with the field missing fails every clause on that field. A filter
 * with no clauses matches every slot.
 *
 * Built programmatically (the serve stage translates its JSON into calls),
 * against the schema of a store: field names and types are checked as
 * clauses are added. Values are kept as strings and resolved against the
 * store's dictionaries at search time, so a filter may be built before the
 * values it names have been seen. A filter is immutable once built as far as
 * searches go: any number of threads may search with it at once, but adding
 * clauses needs no search in flight with it. libc and libm only. */
#include <stddef.h>
#include <stdint.h>

#include "rv_attrs.h"
#include "rv_err.h"

typedef struct rv_filter rv_filter_t;

#define RV_FILTER_MAX_CLAUSES 64
#define RV_FILTER_MAX_VALUES 4096 /* values of one IN clause */

typedef enum {
  RV_BOUND_OPEN = 0, /* no bound at this end */
  RV_BOUND_INCL = 1, /* value >= lo / value <= hi */
  RV_BOUND_EXCL = 2  /* value > lo / value < hi */
} rv_bound_t;

/* An empty filter (matches everything) for the fields of a (copied: the
 * filter does not refer to a afterwards). NULL on no memory. */
rv_filter_t *rv_filter_new(const rv_attrs_t *a);

/* Frees f. NULL does nothing. */
void rv_filter_destroy(rv_filter_t *f);

/* Adds `field = value`. RV_ERR_INVALID (errstr says which) for an unknown
 * field, a number field, a NULL value or one longer than RV_ATTR_VALUE_MAX,
 * more than RV_FILTER_MAX_CLAUSES clauses; RV_ERR_NOMEM. On failure f is
 * unchanged. */
rv_err_t rv_filter_eq(rv_filter_t *f, const char *field, const char *value, char *errstr, size_t errstr_size);

/* Adds `field IN (values[0..n))`. Errors as rv_filter_eq, and for n < 1 or
 * n > RV_FILTER_MAX_VALUES. Duplicate values are fine. */
rv_err_t rv_filter_in(rv_filter_t *f, const char *field, const char *const *values, int n, char *errstr,
                      size_t errstr_size);

/* Adds a range on number field `field`: lo (unless lo_kind is OPEN) and hi
 * (unless hi_kind is OPEN) bound the value. RV_ERR_INVALID for an unknown
 * field, a keyword field, an unknown bound kind or a NaN bound (infinities are
 * fine), too many clauses. lo > hi is accepted and matches nothing. */
rv_err_t rv_filter_range(rv_filter_t *f, const char *field, rv_bound_t lo_kind, double lo, rv_bound_t hi_kind,
                         double hi, char *errstr, size_t errstr_size);

/* Number of clauses. */
int rv_filter_n_clauses(const rv_filter_t *f);

/* 1 if slot iid of a satisfies f, 0 if not (or on no memory). Resolves the
 * filter each call: for tests and one-off checks, not for loops (the planner
 * compiles once per search). RV_ERR_INVALID-worthy mismatches (a has another
 * schema than the filter was built for) give 0. Thread: any. */
int rv_filter_matches(const rv_filter_t *f, const rv_attrs_t *a, uint32_t iid);

/* ---- compiled form, for rv_planner (index/ internal) ----------------------- */

typedef struct rv__fclause {
  int field;
  int is_range;
  /* keyword clauses: the resolved codes (unknown values dropped), and a
   * bitmap over codes when there are many */
  uint32_t *codes;
  uint32_t n_codes;
  uint64_t *bitmap; /* NULL unless n_codes > 8; bit c set for each code */
  uint32_t bitmap_bits;
  size_t count; /* slots holding one of the codes (sum of their posting lists) */
  /* range clauses */
  double lo, hi;
  rv_bound_t lo_kind, hi_kind;
} rv__fclause_t;

typedef struct rv__cfilter {
  const rv_attrs_t *a;
  rv__fclause_t *c; /* keyword clauses by increasing count, then ranges */
  int n;
  int never; /* some clause can match no slot (all its values unknown, or an empty range) */
} rv__cfilter_t;

/* Resolves f against a. The caller holds rv__attrs_rdlock(a). RV_ERR_INVALID
 * if a's fields differ from those f was built for, RV_ERR_NOMEM. On success
 * cf must be released with rv__cfilter_close; on failure it holds nothing. */
rv_err_t rv__filter_compile_locked(const rv_filter_t *f, const rv_attrs_t *a, rv__cfilter_t *cf, char *errstr,
                                   size_t errstr_size);
void rv__cfilter_close(rv__cfilter_t *cf);

/* rv_hnsw_filter_t callback: ctx is a const rv__cfilter_t *. Lock-free. */
int rv__cfilter_accept(void *ctx, uint32_t iid);

#endif
