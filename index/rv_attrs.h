#ifndef RV_ATTRS_H
#define RV_ATTRS_H
/* Filter attributes: the values of a collection's declared metadata fields
 * (rv_field_conf_t), stored per HNSW internal id ("slot"), column by column.
 *
 *   keyword field  a dictionary of distinct strings -> uint32 codes (1, 2, ..;
 *                  0 = missing), a code per slot, and per code a posting list
 *                  of the slots holding it, so "how many slots have
 *                  color=red" is O(1) and "which" is O(matches).
 *   number field   a double per slot, NaN = missing.
 *
 * The store knows nothing of the graph: it is indexed by the slot numbers
 * rv_hnsw hands out. Whoever applies changes keeps it in step:
 *   insert/replace:  rv_hnsw_upsert -> slot s, then rv_attrs_set(s, ...);
 *                    a replaced vector's old slot is deleted by the upsert,
 *                    so also rv_attrs_clear(old slot) (rv_hnsw_internal_id
 *                    before the upsert tells which);
 *   delete:          rv_hnsw_delete, then rv_attrs_clear(s).
 * Slots are reused after deletes: a slot that was not cleared would show the
 * old vector's attributes to the new one until it is set. Between the upsert
 * and the set, the new vector has no attributes, so filtered searches skip
 * it for that moment (unfiltered ones see it).
 *
 * Threads and locks. The replica's applier is the one writer in practice,
 * but writers (rv_attrs_set, rv_attrs_clear) are serialised by the store's
 * rwlock held exclusively (O(fields) work each), so several are safe too.
 * Readers of per-slot values (rv_attrs_get_number, and the filter evaluation
 * that runs inside rv_hnsw searches as the accept callback) take no lock:
 * per-slot values are atomics in chunks that never move, so a search never
 * blocks the applier. Readers of dictionaries and posting lists
 * (rv_attrs_get_keyword, rv_attrs_count_keyword, filter compilation in the
 * planner, rv_attrs_write) hold the rwlock shared, briefly, and never call
 * into rv_hnsw while holding it. A reader racing a rv_attrs_set of the same
 * slot sees each field either old or new. rv_attrs_destroy needs no other
 * call in flight. libc, libm and pthreads only. */
#include <stddef.h>
#include <stdint.h>

#include "rv_collection.h"
#include "rv_err.h"

typedef struct rv_attrs rv_attrs_t;

/* Longest keyword value, in bytes. */
#define RV_ATTR_VALUE_MAX 1024

/* One field value for rv_attrs_set. */
typedef struct rv_attr_value {
  const char *field;   /* declared field name */
  const char *keyword; /* KEYWORD fields: the value (NUL-terminated, copied); NULL = missing */
  double number;       /* NUMBER fields: the value; NaN = missing */
} rv_attr_value_t;

/* A store for the n_fields declared fields (copied). RV_ERR_INVALID via NULL
 * + errstr for n_fields outside 0..RV_MAX_FIELDS, empty or duplicate names,
 * names of RV_NAME_MAX bytes or more, unknown types; NULL on no memory. */
rv_attrs_t *rv_attrs_new(const rv_field_conf_t *fields, int n_fields, char *errstr, size_t errstr_size);

/* Frees everything. NULL does nothing. No other call may be in flight. */
void rv_attrs_destroy(rv_attrs_t *a);

/* The declared fields (the store's copy, valid for its life) and their count. */
const rv_field_conf_t *rv_attrs_fields(const rv_attrs_t *a, int *n_fields);

/* Index of field name in rv_attrs_fields, or -1. */
int rv_attrs_field_index(const rv_attrs_t *a, const char *name);

/* Replaces every attribute of slot iid: the fields named in vals get those
 * values, all other fields become missing. RV_ERR_INVALID (message in errstr)
 * for an unknown field, a field named twice, a keyword value given for a
 * number field or vice versa (a number field with keyword != NULL, a keyword
 * field with a non-NaN number), a keyword longer than RV_ATTR_VALUE_MAX or
 * iid == UINT32_MAX; RV_ERR_NOMEM. On failure the slot's attributes are
 * unchanged. Thread: any (serialised with the other writers). */
rv_err_t rv_attrs_set(rv_attrs_t *a, uint32_t iid, const rv_attr_value_t *vals, int n_vals, char *errstr,
                      size_t errstr_size);

/* Makes every attribute of slot iid missing (a slot never set is fine).
 * Thread: any (serialised with the other writers). */
void rv_attrs_clear(rv_attrs_t *a, uint32_t iid);

/* Copies slot iid's value of keyword field `field` (an index) into buf.
 * RV_ERR_NOT_FOUND if missing, RV_ERR_INVALID if field is not a keyword
 * field or buf is too small (RV_ATTR_VALUE_MAX + 1 suffices). Thread: any. */
rv_err_t rv_attrs_get_keyword(const rv_attrs_t *a, uint32_t iid, int field, char *buf, size_t size);

/* Slot iid's value of number field `field` (an index); NaN if missing or if
 * field is not a number field. Thread: any, no lock. */
double rv_attrs_get_number(const rv_attrs_t *a, uint32_t iid, int field);

/* Number of slots whose keyword field `field` holds value (0 for unknown
 * values or non-keyword fields). O(1) after the dictionary lookup. */
size_t rv_attrs_count_keyword(const rv_attrs_t *a, int field, const char *value);

/* Number of slots with at least one attribute set; 1 + the highest such
 * slot (0 if none). Thread: any. */
size_t rv_attrs_count(const rv_attrs_t *a);
uint32_t rv_attrs_slot_bound(const rv_attrs_t *a);

/* Serialization, in the style of rv_hnsw_write/rv_hnsw_read (no framing of
 * its own beyond a tag and lengths; rv_snapshot adds magic and checksum):
 * the fields, per keyword field the dictionary (values held by no slot are
 * dropped and codes renumbered) and the per-slot codes, per number field the
 * values. Posting lists are rebuilt on read. All little-endian.
 * rv_attrs_write holds the lock shared while it runs (writers wait);
 * RV_ERR_IO if write fails (returns nonzero), RV_ERR_NOMEM. */
rv_err_t rv_attrs_write(const rv_attrs_t *a, int (*write)(void *ctx, const void *buf, size_t len), void *ctx);

/* Builds a new store from rv_attrs_write's stream. read fills exactly len
 * bytes and returns 0, or returns nonzero (treated as truncation). Everything
 * is validated (field count, names, types, dictionary sizes and duplicate
 * values, codes within the dictionary, slot bound) -> RV_ERR_CORRUPT with
 * errstr saying what; RV_ERR_NOMEM. On success *out owns a new store; on
 * failure *out is NULL. */
rv_err_t rv_attrs_read(int (*read)(void *ctx, void *buf, size_t len), void *ctx, rv_attrs_t **out, char *errstr,
                       size_t errstr_size);

/* ---- for rv_filter / rv_planner (index/ internal) ------------------------ */

/* The code of slot iid in keyword field f (0 = missing), and the number
 * value of number field f (NaN = missing). No lock; f must be of the type. */
uint32_t rv__attrs_code(const rv_attrs_t *a, int f, uint32_t iid);
double rv__attrs_number(const rv_attrs_t *a, int f, uint32_t iid);

/* Shared lock over dictionaries and posting lists (not over per-slot
 * values, which need none). Not recursive: call nothing above that locks
 * while holding it. */
void rv__attrs_rdlock(const rv_attrs_t *a);
void rv__attrs_unlock(const rv_attrs_t *a);

/* Under rv__attrs_rdlock: the code of value in keyword field f (0 if
 * unknown), the size of code's posting list, and the list itself (slots in
 * no particular order; valid until the lock is released). */
uint32_t rv__attrs_lookup_locked(const rv_attrs_t *a, int f, const char *value);
size_t rv__attrs_posting_locked(const rv_attrs_t *a, int f, uint32_t code, const uint32_t **ids);
/* Under rv__attrs_rdlock: number of codes in field f's dictionary (codes are 1..n). */
uint32_t rv__attrs_dict_size_locked(const rv_attrs_t *a, int f);

#endif
