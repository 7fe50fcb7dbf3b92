/* Fuzzes ingest's message decoding and validation (ingest/rv_decode.h,
 * ingest/rv_validate.h): the input is a Kafka message value with a fixed key
 * (size 0 is a null value, i.e. a tombstone), then the key of a tombstone,
 * then a JSON record on its own. Checked on the way:
 *   - a failed decode leaves the record empty;
 *   - a rejected record is left unchanged by validation;
 *   - an accepted record obeys every rule, its metadata is a compact JSON
 *     object, and validating it again accepts it unchanged. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rv_collection.h"
#include "rv_decode.h"
#include "rv_validate.h"

#define SCHEMA_ID 7 /* the Confluent schema id the seeds are framed with */
#define DIM 4       /* the collection dim the seeds are made for */
#define NOW_MS INT64_C(1700000000000)
#define KEY "fuzz-key"

/* libFuzzer gives a target no context, so the codec lives for the process
 * (reachable, so LeakSanitizer does not count it). One thread. */
static rv_codec_t *codec(void) {
  static rv_codec_t *c;
  if (!c) {
    char err[256];
    c = rv_codec_new(err, sizeof err);
    FUZZ_CHECK(c != NULL, "rv_codec_new: %s", err);
  }
  return c;
}

static int record_empty(const rv_vector_record_t *r) {
  static const rv_vector_record_t zero;
  return !memcmp(r, &zero, sizeof zero);
}

/* A deep copy, to tell whether validation changed a record. */
static void copy_record(const rv_vector_record_t *r, rv_vector_record_t *out) {
  *out = *r;
  out->id = NULL;
  if (r->id) { /* a tombstone key may hold NULs: copy id_len bytes, not a C string */
    out->id = malloc(r->id_len + 1);
    FUZZ_CHECK(out->id != NULL, "out of memory");
    memcpy(out->id, r->id, r->id_len + 1);
  }
  out->metadata = r->metadata ? strdup(r->metadata) : NULL;
  out->vector = NULL;
  if (r->vector) {
    out->vector = malloc(r->dim ? (size_t)r->dim * sizeof(float) : 1);
    FUZZ_CHECK(out->vector != NULL, "out of memory");
    if (r->dim) memcpy(out->vector, r->vector, (size_t)r->dim * sizeof(float));
  }
  FUZZ_CHECK(!r->metadata || out->metadata, "out of memory");
}

static int same_record(const rv_vector_record_t *a, const rv_vector_record_t *b) {
  if (a->id_len != b->id_len || a->op != b->op || a->dim != b->dim || a->has_event_time != b->has_event_time ||
      a->event_time_ms != b->event_time_ms)
    return 0;
  if (!a->id != !b->id || (a->id && memcmp(a->id, b->id, a->id_len + 1))) return 0;
  if (!a->metadata != !b->metadata || (a->metadata && strcmp(a->metadata, b->metadata))) return 0;
  if (!a->vector != !b->vector || (a->vector && a->dim && memcmp(a->vector, b->vector, (size_t)a->dim * 4)))
    return 0;
  return 1;
}

static void check_accepted(const rv_vector_record_t *r, const rv_validate_rules_t *rules) {
  FUZZ_CHECK(r->id && r->id_len > 0 && r->id_len <= RV_ID_MAX, "accepted id of %zu bytes", r->id_len);
  FUZZ_CHECK(!memchr(r->id, 0, r->id_len) && rv_utf8_valid(r->id, r->id_len), "accepted a bad id");
  if (r->op == RV_OP_DELETE) {
    FUZZ_CHECK(!r->vector && r->dim == 0, "accepted DELETE kept a vector of %d", r->dim);
  } else {
    FUZZ_CHECK(r->op == RV_OP_UPSERT && r->vector && r->dim == rules->dim, "accepted UPSERT with dim %d", r->dim);
    for (int i = 0; i < r->dim; i++) FUZZ_CHECK(isfinite(r->vector[i]), "accepted vector[%d] = %g", i, r->vector[i]);
  }
  if (r->has_event_time)
    FUZZ_CHECK(r->event_time_ms >= RV_EVENT_TIME_MIN_MS &&
                   r->event_time_ms <= rules->now_ms + RV_EVENT_TIME_MAX_AHEAD_MS,
               "accepted event_time %lld", (long long)r->event_time_ms);
  if (r->metadata) {
    json_error_t jerr;
    json_t *j = json_loads(r->metadata, 0, &jerr);
    FUZZ_CHECK(j && json_is_object(j), "normalised metadata is not a JSON object: %s", r->metadata);
    char *compact = json_dumps(j, JSON_COMPACT);
    FUZZ_CHECK(compact && !strcmp(compact, r->metadata), "metadata is not compact: %s", r->metadata);
    free(compact);
    json_decref(j);
  }
}

/* Validates r (which the caller still closes) and checks the contract. */
static void validate(rv_vector_record_t *r) {
  rv_validate_rules_t rules = {.dim = DIM, .max_metadata_bytes = 1024, .now_ms = NOW_MS};
  rv_vector_record_t before;
  copy_record(r, &before);
  char msg[256];
  rv_reject_t rj = rv_validate_record(r, &rules, msg, sizeof msg);
  FUZZ_CHECK(fuzz_terminated(msg, sizeof msg), "msg not terminated");
  FUZZ_CHECK(strcmp(rv_reject_code(rj), "unknown") != 0, "reject %d has no code", (int)rj);
  if (rj != RV_REJECT_NONE) {
    FUZZ_CHECK(rj >= RV_REJECT_BAD_ID && rj <= RV_REJECT_BAD_EVENT_TIME, "validation returned %s", rv_reject_code(rj));
    FUZZ_CHECK(same_record(r, &before), "a rejected (%s) record was changed", rv_reject_code(rj));
  } else {
    check_accepted(r, &rules);
    /* Normalising is idempotent. (No size limit the second time: the limit is
     * on the text as received, and compact text can be longer, e.g. 1E2 -> 100.0.) */
    rv_vector_record_t again;
    copy_record(r, &again);
    rules.max_metadata_bytes = 0;
    rj = rv_validate_record(&again, &rules, msg, sizeof msg);
    FUZZ_CHECK(rj == RV_REJECT_NONE, "an accepted record is rejected the second time: %s (%s)", rv_reject_code(rj),
               msg);
    FUZZ_CHECK(same_record(r, &again), "validating twice changed the record");
    rv_vector_record_close(&again);
  }
  rv_vector_record_close(&before);
}

static void decoded(rv_reject_t rj, rv_vector_record_t *r, const char *msg, size_t msg_size) {
  FUZZ_CHECK(fuzz_terminated(msg, msg_size), "msg not terminated");
  if (rj != RV_REJECT_NONE) {
    FUZZ_CHECK(rj == RV_REJECT_DECODE || rj == RV_REJECT_UNKNOWN_SCHEMA, "decode returned %s", rv_reject_code(rj));
    FUZZ_CHECK(record_empty(r), "record not left empty after %s", rv_reject_code(rj));
    return;
  }
  FUZZ_CHECK(!r->id || strlen(r->id) <= r->id_len, "id_len %zu, strlen %zu", r->id_len, strlen(r->id));
  FUZZ_CHECK(!r->id || r->id[r->id_len] == 0, "id not terminated at id_len");
  FUZZ_CHECK(r->dim >= 0 && (r->dim == 0 || r->vector), "dim %d with vector %p", r->dim, (void *)r->vector);
  validate(r);
  rv_vector_record_close(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  rv_codec_t *c = codec();
  rv_vector_record_t r;
  char msg[256];
  /* The value, with a fixed key; an empty input is a null value (tombstone). */
  rv_reject_t rj = rv_decode_message(c, SCHEMA_ID, KEY, strlen(KEY), size ? data : NULL, size, &r, msg, sizeof msg);
  if (size == 0) {
    FUZZ_CHECK(rj == RV_REJECT_NONE && r.op == RV_OP_DELETE && r.id_len == strlen(KEY) && !strcmp(r.id, KEY),
               "tombstone decoded as %s", rv_reject_code(rj));
  }
  decoded(rj, &r, msg, sizeof msg);

  /* The input as the key of a tombstone. */
  rj = rv_decode_message(c, SCHEMA_ID, data, size, NULL, 0, &r, msg, sizeof msg);
  FUZZ_CHECK(rj == RV_REJECT_NONE && r.op == RV_OP_DELETE && r.id_len == size && (!size || !memcmp(r.id, data, size)),
             "tombstone with a %zu-byte key decoded as %s", size, rv_reject_code(rj));
  decoded(rj, &r, msg, sizeof msg);

  /* The JSON framing directly (rv_decode_message only takes it after '{'). */
  rj = rv_decode_json(data, size, &r, msg, sizeof msg);
  decoded(rj, &r, msg, sizeof msg);
  return 0;
}
