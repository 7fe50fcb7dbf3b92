/* rv_attrs: schema checks, set/get/clear, exact clearing on slot reuse,
 * posting lists and counts against a shadow model under random churn,
 * serialization round trip and its validation, and one writer racing
 * readers (meant for the TSan build too). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "index_testutil.h"
#include "rv_attrs.h"
#include "rv_filter.h"

static const rv_field_conf_t FIELDS[] = {
    {"color", RV_FIELD_KEYWORD}, {"price", RV_FIELD_NUMBER}, {"tag", RV_FIELD_KEYWORD}, {"rank", RV_FIELD_NUMBER}};
#define NF 4

static rv_attrs_t *make(void) {
  char e[256];
  rv_attrs_t *a = rv_attrs_new(FIELDS, NF, e, sizeof e);
  if (!a) fail_msg("rv_attrs_new: %s", e);
  return a;
}

static void test_schema_checks(void **state) {
  (void)state;
  char e[256];
  rv_field_conf_t f[RV_MAX_FIELDS + 1];
  memset(f, 0, sizeof f);
  for (int i = 0; i <= RV_MAX_FIELDS; i++) snprintf(f[i].name, sizeof f[i].name, "f%d", i);
  assert_null(rv_attrs_new(f, RV_MAX_FIELDS + 1, e, sizeof e));
  assert_non_null(strstr(e, "fields"));
  assert_null(rv_attrs_new(f, -1, e, sizeof e));
  rv_attrs_t *a = rv_attrs_new(f, RV_MAX_FIELDS, e, sizeof e);
  assert_non_null(a);
  rv_attrs_destroy(a);
  strcpy(f[1].name, "f0");
  assert_null(rv_attrs_new(f, 2, e, sizeof e));
  assert_non_null(strstr(e, "twice"));
  f[1].name[0] = 0;
  assert_null(rv_attrs_new(f, 2, e, sizeof e));
  strcpy(f[1].name, "x");
  f[1].type = (rv_field_type_t)7;
  assert_null(rv_attrs_new(f, 2, e, sizeof e));
  a = rv_attrs_new(NULL, 0, e, sizeof e); /* no fields is a valid store */
  assert_non_null(a);
  assert_int_equal(rv_attrs_set(a, 0, NULL, 0, e, sizeof e), RV_OK);
  assert_int_equal(rv_attrs_count(a), 0);
  rv_attrs_destroy(a);
  rv_attrs_destroy(NULL);
}

static void test_set_get_clear(void **state) {
  (void)state;
  char e[256], buf[RV_ATTR_VALUE_MAX + 1];
  rv_attrs_t *a = make();
  assert_int_equal(rv_attrs_field_index(a, "tag"), 2);
  assert_int_equal(rv_attrs_field_index(a, "nope"), -1);
  rv_attr_value_t v[] = {{"color", "red", NAN}, {"price", NULL, 9.5}, {"tag", "x", NAN}};
  assert_int_equal(rv_attrs_set(a, 5, v, 3, e, sizeof e), RV_OK);
  assert_int_equal(rv_attrs_set(a, 70000, v, 2, e, sizeof e), RV_OK); /* a later chunk */
  assert_int_equal(rv_attrs_get_keyword(a, 5, 0, buf, sizeof buf), RV_OK);
  assert_string_equal(buf, "red");
  assert_int_equal(rv_attrs_get_keyword(a, 5, 0, buf, 3), RV_ERR_INVALID);          /* too small */
  assert_int_equal(rv_attrs_get_keyword(a, 5, 1, buf, sizeof buf), RV_ERR_INVALID); /* number field */
  assert_int_equal(rv_attrs_get_keyword(a, 70000, 2, buf, sizeof buf), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_attrs_get_keyword(a, 4, 0, buf, sizeof buf), RV_ERR_NOT_FOUND);
  assert_int_equal(rv_attrs_get_keyword(a, 4000000, 0, buf, sizeof buf), RV_ERR_NOT_FOUND);
  assert_near(rv_attrs_get_number(a, 5, 1), 9.5, 0);
  assert_true(isnan(rv_attrs_get_number(a, 5, 3)));
  assert_true(isnan(rv_attrs_get_number(a, 5, 0))); /* keyword field */
  assert_int_equal(rv_attrs_count_keyword(a, 0, "red"), 2);
  assert_int_equal(rv_attrs_count_keyword(a, 2, "x"), 1);
  assert_int_equal(rv_attrs_count_keyword(a, 0, "blue"), 0);
  assert_int_equal(rv_attrs_count(a), 2);
  assert_int_equal(rv_attrs_slot_bound(a), 70001);

  /* A second set replaces everything: unnamed fields become missing. */
  rv_attr_value_t w[] = {{"color", "blue", NAN}, {"rank", NULL, -3}};
  assert_int_equal(rv_attrs_set(a, 5, w, 2, e, sizeof e), RV_OK);
  assert_int_equal(rv_attrs_count_keyword(a, 0, "red"), 1);
  assert_int_equal(rv_attrs_count_keyword(a, 0, "blue"), 1);
  assert_int_equal(rv_attrs_count_keyword(a, 2, "x"), 0);
  assert_true(isnan(rv_attrs_get_number(a, 5, 1)));
  assert_near(rv_attrs_get_number(a, 5, 3), -3, 0);
  assert_int_equal(rv_attrs_get_keyword(a, 5, 2, buf, sizeof buf), RV_ERR_NOT_FOUND);

  /* Slot reuse: clearing is exact, the next set starts from nothing. */
  rv_attrs_clear(a, 5);
  assert_int_equal(rv_attrs_count(a), 1);
  assert_int_equal(rv_attrs_count_keyword(a, 0, "blue"), 0);
  for (int f = 0; f < NF; f++) {
    if (FIELDS[f].type == RV_FIELD_KEYWORD)
      assert_int_equal(rv_attrs_get_keyword(a, 5, f, buf, sizeof buf), RV_ERR_NOT_FOUND);
    else
      assert_true(isnan(rv_attrs_get_number(a, 5, f)));
  }
  rv_attr_value_t z[] = {{"tag", "y", NAN}};
  assert_int_equal(rv_attrs_set(a, 5, z, 1, e, sizeof e), RV_OK);
  assert_int_equal(rv_attrs_get_keyword(a, 5, 0, buf, sizeof buf), RV_ERR_NOT_FOUND);
  assert_true(isnan(rv_attrs_get_number(a, 5, 3)));
  rv_filter_t *flt = rv_filter_new(a);
  assert_int_equal(rv_filter_eq(flt, "color", "blue", e, sizeof e), RV_OK);
  assert_false(rv_filter_matches(flt, a, 5));
  rv_filter_destroy(flt);
  rv_attrs_clear(a, 999999999); /* beyond anything allocated: a no-op */
  rv_attrs_clear(a, 70000);
  rv_attrs_clear(a, 70000);
  rv_attrs_clear(a, 5);
  assert_int_equal(rv_attrs_count(a), 0);
  assert_int_equal(rv_attrs_count_keyword(a, 0, "red"), 0);
  rv_attrs_destroy(a);
}

static void test_set_errors_leave_slot_unchanged(void **state) {
  (void)state;
  char e[256], buf[RV_ATTR_VALUE_MAX + 1];
  rv_attrs_t *a = make();
  rv_attr_value_t v[] = {{"color", "red", NAN}, {"price", NULL, 1}};
  assert_int_equal(rv_attrs_set(a, 3, v, 2, e, sizeof e), RV_OK);
  char *longv = malloc(RV_ATTR_VALUE_MAX + 2);
  memset(longv, 'a', RV_ATTR_VALUE_MAX + 1);
  longv[RV_ATTR_VALUE_MAX + 1] = 0;
  struct {
    rv_attr_value_t v[2];
    int n;
    const char *msg;
  } bad[] = {
      {{{"colour", "blue", NAN}}, 1, "unknown field"},
      {{{"color", NULL, 2.0}}, 1, "keyword field"},
      {{{"price", "7", NAN}}, 1, "number field"},
      {{{"color", longv, NAN}}, 1, "longer"},
      {{{"color", "blue", NAN}, {"color", "green", NAN}}, 2, "twice"},
      {{{NULL, "blue", NAN}}, 1, "unknown field"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    e[0] = 0;
    assert_int_equal(rv_attrs_set(a, 3, bad[i].v, bad[i].n, e, sizeof e), RV_ERR_INVALID);
    if (!strstr(e, bad[i].msg)) fail_msg("case %zu: errstr '%s' lacks '%s'", i, e, bad[i].msg);
    assert_int_equal(rv_attrs_get_keyword(a, 3, 0, buf, sizeof buf), RV_OK);
    assert_string_equal(buf, "red");
    assert_near(rv_attrs_get_number(a, 3, 1), 1, 0);
  }
  longv[RV_ATTR_VALUE_MAX] = 0; /* exactly the maximum is fine */
  rv_attr_value_t ok[] = {{"tag", longv, NAN}};
  assert_int_equal(rv_attrs_set(a, 3, ok, 1, e, sizeof e), RV_OK);
  assert_int_equal(rv_attrs_get_keyword(a, 3, 2, buf, sizeof buf), RV_OK);
  assert_int_equal(strlen(buf), RV_ATTR_VALUE_MAX);
  assert_int_equal(rv_attrs_set(a, UINT32_MAX, ok, 1, e, sizeof e), RV_ERR_INVALID);
  free(longv);
  rv_attrs_destroy(a);
}

/* ---- random churn against a shadow model ----------------------------------- */

#define NSLOT 3000
typedef struct model {
  int color[NSLOT], tag[NSLOT]; /* value index, -1 missing */
  double price[NSLOT], rank[NSLOT];
} model_t;

static void value_name(char *buf, int field, int v) { snprintf(buf, 32, "%s%d", field == 0 ? "c" : "t", v); }

static void model_apply(rv_attrs_t *a, model_t *m, uint64_t *seed, int s) {
  char e[256], cb[32], tb[32];
  if (tu_next(seed) % 4 == 0) {
    rv_attrs_clear(a, (uint32_t)s);
    m->color[s] = m->tag[s] = -1;
    m->price[s] = m->rank[s] = NAN;
    return;
  }
  rv_attr_value_t v[4];
  int n = 0;
  m->color[s] = m->tag[s] = -1;
  m->price[s] = m->rank[s] = NAN;
  if (tu_next(seed) % 5) {
    m->color[s] = (int)(tu_next(seed) % 12);
    value_name(cb, 0, m->color[s]);
    v[n++] = (rv_attr_value_t){"color", cb, NAN};
  }
  if (tu_next(seed) % 3) {
    m->tag[s] = (int)(tu_next(seed) % 400);
    value_name(tb, 2, m->tag[s]);
    v[n++] = (rv_attr_value_t){"tag", tb, NAN};
  }
  if (tu_next(seed) % 4) {
    m->price[s] = (double)(tu_next(seed) % 100000) / 100;
    v[n++] = (rv_attr_value_t){"price", NULL, m->price[s]};
  }
  if (tu_next(seed) % 2) {
    m->rank[s] = -(double)(tu_next(seed) % 50);
    v[n++] = (rv_attr_value_t){"rank", NULL, m->rank[s]};
  }
  /* random order of the values */
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(tu_next(seed) % (uint64_t)(i + 1));
    rv_attr_value_t t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
  assert_int_equal(rv_attrs_set(a, (uint32_t)s, v, n, e, sizeof e), RV_OK);
}

static void model_check(const rv_attrs_t *a, const model_t *m) {
  char buf[64], want[32];
  size_t n_set = 0;
  int ccount[12] = {0}, tcount[400] = {0};
  for (int s = 0; s < NSLOT; s++) {
    const int *kw[2] = {m->color, m->tag};
    const int fidx[2] = {0, 2};
    for (int j = 0; j < 2; j++) {
      rv_err_t err = rv_attrs_get_keyword(a, (uint32_t)s, fidx[j], buf, sizeof buf);
      if (kw[j][s] < 0) {
        if (err != RV_ERR_NOT_FOUND) fail_msg("slot %d field %d: expected missing, got %d '%s'", s, fidx[j], err, buf);
      } else {
        assert_int_equal(err, RV_OK);
        value_name(want, fidx[j], kw[j][s]);
        assert_string_equal(buf, want);
      }
    }
    double p = rv_attrs_get_number(a, (uint32_t)s, 1), r = rv_attrs_get_number(a, (uint32_t)s, 3);
    if (isnan(m->price[s]))
      assert_true(isnan(p));
    else
      assert_near(p, m->price[s], 0);
    if (isnan(m->rank[s]))
      assert_true(isnan(r));
    else
      assert_near(r, m->rank[s], 0);
    if (m->color[s] >= 0) ccount[m->color[s]]++;
    if (m->tag[s] >= 0) tcount[m->tag[s]]++;
    n_set += m->color[s] >= 0 || m->tag[s] >= 0 || !isnan(m->price[s]) || !isnan(m->rank[s]);
  }
  assert_int_equal(rv_attrs_count(a), n_set);
  for (int v = 0; v < 12; v++) {
    value_name(want, 0, v);
    assert_int_equal(rv_attrs_count_keyword(a, 0, want), ccount[v]);
    /* the posting list holds exactly the model's slots */
    rv__attrs_rdlock(a);
    const uint32_t *ids;
    size_t n = rv__attrs_posting_locked(a, 0, rv__attrs_lookup_locked(a, 0, want), &ids);
    assert_int_equal(n, ccount[v]);
    for (size_t i = 0; i < n; i++) {
      assert_true(ids[i] < NSLOT);
      assert_int_equal(m->color[ids[i]], v);
    }
    rv__attrs_unlock(a);
  }
  for (int v = 0; v < 400; v++) {
    value_name(want, 2, v);
    assert_int_equal(rv_attrs_count_keyword(a, 2, want), tcount[v]);
  }
}

static model_t *model_new(void) {
  model_t *m = malloc(sizeof *m);
  for (int s = 0; s < NSLOT; s++) {
    m->color[s] = m->tag[s] = -1;
    m->price[s] = m->rank[s] = NAN;
  }
  return m;
}

static void test_churn_matches_model(void **state) {
  (void)state;
  rv_attrs_t *a = make();
  model_t *m = model_new();
  uint64_t seed = 11;
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < 20000; i++) model_apply(a, m, &seed, (int)(tu_next(&seed) % NSLOT));
    model_check(a, m);
  }
  rv_attrs_destroy(a);
  free(m);
}

/* ---- serialization ------------------------------------------------------------ */

typedef struct mbuf {
  uint8_t *p;
  size_t n, cap, pos;
  size_t fail_at; /* write: fail once n would pass it */
} mbuf_t;

static int mwrite(void *ctx, const void *buf, size_t len) {
  mbuf_t *b = ctx;
  if (b->n + len > b->fail_at) return -1;
  if (b->n + len > b->cap) {
    b->cap = (b->n + len) * 2;
    b->p = realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, buf, len);
  b->n += len;
  return 0;
}

static int mread(void *ctx, void *buf, size_t len) {
  mbuf_t *b = ctx;
  if (b->pos + len > b->n) return -1;
  memcpy(buf, b->p + b->pos, len);
  b->pos += len;
  return 0;
}

static void test_serialization(void **state) {
  (void)state;
  char e[256];
  rv_attrs_t *a = make();
  model_t *m = model_new();
  uint64_t seed = 5;
  for (int i = 0; i < 8000; i++) model_apply(a, m, &seed, (int)(tu_next(&seed) % NSLOT));
  /* a value nobody holds any more: dropped from the dictionary on write */
  rv_attr_value_t v[] = {{"color", "ephemeral", NAN}};
  assert_int_equal(rv_attrs_set(a, NSLOT + 10, v, 1, e, sizeof e), RV_OK);
  rv_attrs_clear(a, NSLOT + 10);
  mbuf_t b = {.fail_at = SIZE_MAX};
  assert_int_equal(rv_attrs_write(a, mwrite, &b), RV_OK);
  rv_attrs_t *c = NULL;
  assert_int_equal(rv_attrs_read(mread, &b, &c, e, sizeof e), RV_OK);
  assert_int_equal(b.pos, b.n);
  model_check(c, m);
  rv__attrs_rdlock(c);
  assert_int_equal(rv__attrs_dict_size_locked(c, 0), 12);
  assert_int_equal(rv__attrs_lookup_locked(c, 0, "ephemeral"), 0);
  rv__attrs_unlock(c);
  assert_true(rv_attrs_slot_bound(c) <= NSLOT);
  /* the copy is a working store */
  model_apply(c, m, &seed, 17);
  model_check(c, m);

  /* A failing sink gives RV_ERR_IO. */
  mbuf_t f = {.fail_at = 100};
  assert_int_equal(rv_attrs_write(a, mwrite, &f), RV_ERR_IO);
  free(f.p);

  /* Every truncation is refused with RV_ERR_CORRUPT and a message. */
  for (size_t len = 0; len < b.n; len += (len < 400 ? 1 : 97)) {
    mbuf_t t = {b.p, len, len, 0, 0};
    rv_attrs_t *x = (rv_attrs_t *)&t;
    e[0] = 0;
    assert_int_equal(rv_attrs_read(mread, &t, &x, e, sizeof e), RV_ERR_CORRUPT);
    assert_null(x);
    assert_true(strlen(e) > 0);
  }
  /* Structural damage is refused. */
  struct {
    size_t off;
    uint8_t val;
    const char *msg;
  } dmg[] = {{0, 'X', "tag"}, {4, 99, "fields"}, {8, 5, "type"}, {12, 0, "name"}, {12, 200, "name"}};
  for (size_t i = 0; i < sizeof dmg / sizeof dmg[0]; i++) {
    uint8_t *p = malloc(b.n);
    memcpy(p, b.p, b.n);
    p[dmg[i].off] = dmg[i].val;
    mbuf_t t = {p, b.n, b.n, 0, 0};
    rv_attrs_t *x = NULL;
    assert_int_equal(rv_attrs_read(mread, &t, &x, e, sizeof e), RV_ERR_CORRUPT);
    if (!strstr(e, dmg[i].msg)) fail_msg("damage %zu: '%s' lacks '%s'", i, e, dmg[i].msg);
    free(p);
  }
  /* Random byte flips: refused or accepted, never a crash (numbers may take any value). */
  for (int i = 0; i < 300; i++) {
    uint8_t *p = malloc(b.n);
    memcpy(p, b.p, b.n);
    p[tu_next(&seed) % b.n] ^= (uint8_t)(1 + tu_next(&seed) % 255);
    mbuf_t t = {p, b.n, b.n, 0, 0};
    rv_attrs_t *x = NULL;
    rv_err_t err = rv_attrs_read(mread, &t, &x, e, sizeof e);
    assert_true(err == RV_OK || err == RV_ERR_CORRUPT);
    rv_attrs_destroy(x);
    free(p);
  }
  free(b.p);
  rv_attrs_destroy(a);
  rv_attrs_destroy(c);
  free(m);
}

/* ---- one writer, many readers ---------------------------------------------------- */

typedef struct race {
  rv_attrs_t *a;
  _Atomic int stop;
  _Atomic long reads;
} race_t;

/* Slot s only ever holds color "c<s % 7>" or "d<s % 5>" and price s or -s. */
static void *race_writer(void *arg) {
  race_t *r = arg;
  uint64_t seed = 3;
  char e[128], cb[32];
  for (int i = 0; i < 60000; i++) {
    uint32_t s = (uint32_t)(tu_next(&seed) % 5000);
    if (tu_next(&seed) % 3 == 0) {
      rv_attrs_clear(r->a, s);
      continue;
    }
    int alt = (int)(tu_next(&seed) & 1);
    snprintf(cb, sizeof cb, alt ? "c%u" : "d%u", alt ? s % 7 : s % 5);
    rv_attr_value_t v[] = {{"color", cb, NAN}, {"price", NULL, alt ? (double)s : -(double)s}};
    if (rv_attrs_set(r->a, s, v, 2, e, sizeof e)) abort();
  }
  atomic_store(&r->stop, 1);
  return NULL;
}

static void *race_reader(void *arg) {
  race_t *r = arg;
  uint64_t seed = (uint64_t)(uintptr_t)arg ^ 77;
  char buf[64], a1[32], a2[32];
  char e[128];
  rv_filter_t *f = rv_filter_new(r->a);
  const char *vals[] = {"c1", "c2", "d3"};
  if (rv_filter_in(f, "color", vals, 3, e, sizeof e)) abort();
  long n = 0;
  while (!atomic_load(&r->stop)) {
    uint32_t s = (uint32_t)(tu_next(&seed) % 5000);
    if (rv_attrs_get_keyword(r->a, s, 0, buf, sizeof buf) == RV_OK) {
      snprintf(a1, sizeof a1, "c%u", s % 7);
      snprintf(a2, sizeof a2, "d%u", s % 5);
      if (strcmp(buf, a1) && strcmp(buf, a2)) abort();
    }
    double p = rv_attrs_get_number(r->a, s, 1);
    if (!isnan(p) && fabs(p) != (double)s) abort();
    if (rv_attrs_count_keyword(r->a, 0, "c3") > 5000) abort();
    (void)rv_filter_matches(f, r->a, s);
    n++;
  }
  rv_filter_destroy(f);
  atomic_fetch_add(&r->reads, n);
  return NULL;
}

static void test_writer_races_readers(void **state) {
  (void)state;
  race_t r = {make(), 0, 0};
  pthread_t w, rd[3];
  for (int i = 0; i < 3; i++) assert_int_equal(pthread_create(&rd[i], NULL, race_reader, &r), 0);
  assert_int_equal(pthread_create(&w, NULL, race_writer, &r), 0);
  pthread_join(w, NULL);
  for (int i = 0; i < 3; i++) pthread_join(rd[i], NULL);
  assert_true(atomic_load(&r.reads) > 0);
  /* The posting counts agree with the slots after the race. */
  char buf[64], name[32];
  for (int v = 0; v < 7; v++) {
    snprintf(name, sizeof name, "c%d", v);
    size_t n = 0;
    for (uint32_t s = 0; s < 5000; s++)
      n += rv_attrs_get_keyword(r.a, s, 0, buf, sizeof buf) == RV_OK && !strcmp(buf, name);
    assert_int_equal(rv_attrs_count_keyword(r.a, 0, name), n);
  }
  rv_attrs_destroy(r.a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schema_checks),
      cmocka_unit_test(test_set_get_clear),
      cmocka_unit_test(test_set_errors_leave_slot_unchanged),
      cmocka_unit_test(test_churn_matches_model),
      cmocka_unit_test(test_serialization),
      cmocka_unit_test(test_writer_races_readers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
