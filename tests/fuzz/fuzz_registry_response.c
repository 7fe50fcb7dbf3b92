/* Fuzzes what ingest does with a writer schema from an untrusted Schema
 * Registry. rv_registry (ingest/rv_registry.h) exposes no parser of its own:
 * the HTTP reply is unwrapped with one jansson call inside rv_registry_fetch
 * ({"schema": "<text>"}, behind libcurl), and the text then goes to
 * rv_vector_resolver_new (common/rv_record.h), which is where the untrusted
 * input is parsed (Avro-C's schema parser and resolver) and what this target
 * exercises, twice:
 *   1. directly: rv_vector_resolver_new(text), then rv_vector_resolver_decode
 *      of a payload;
 *   2. end to end through ingest: the text is served by a directory registry
 *      (file://dir/7.avsc) and a Confluent-framed message with schema id 7
 *      goes through rv_decoder_decode (ingest/rv_decode.h), as the consumer
 *      does it.
 *
 * Input: the schema text, then optionally a NUL byte and the Avro payload
 * (the seeds: schemas of tests/common/test_resolver.c and the build's own,
 * each with a record written under it).
 *
 * Checked: a refused schema leaves *out NULL with a message; a decoded
 * record is well formed and re-encodes with the reader schema to the same
 * record; a failed decode leaves the record empty; and the decoder agrees
 * with the direct path (incompatible schema <-> resolver refused, decode
 * error <-> decode failed, same record otherwise). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "rv_decode.h"
#include "rv_record.h"
#include "rv_registry.h"

#define WRITER_ID 7u

static struct {
  rv_codec_t *codec;
  rv_registry_t *registry;
  char dir[64], file[96];
} g; /* per process: libFuzzer gives a target no context */

static void cleanup(void) {
  unlink(g.file);
  rmdir(g.dir);
}

static void setup(void) {
  char err[256];
  g.codec = rv_codec_new(err, sizeof err);
  FUZZ_CHECK(g.codec != NULL, "rv_codec_new: %s", err);
  /* The schema file is rewritten for every input: on a tmpfs that costs
   * microseconds, on a busy disk milliseconds. */
  const char *tmp = getenv("TMPDIR");
  if (!tmp || strlen(tmp) >= 30) tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(g.dir, sizeof g.dir, "%s/rv-fuzz-registry-XXXXXX", tmp);
  FUZZ_CHECK(mkdtemp(g.dir) != NULL, "mkdtemp %s: %s", g.dir, strerror(errno));
  snprintf(g.file, sizeof g.file, "%s/%u.avsc", g.dir, WRITER_ID);
  atexit(cleanup);
  char src[96];
  snprintf(src, sizeof src, "file://%s", g.dir);
  g.registry = rv_registry_new(src, 1000, err, sizeof err);
  FUZZ_CHECK(g.registry != NULL, "rv_registry_new(%s): %s", src, err);
}

static int record_empty(const rv_vector_record_t *r) {
  return !r->id && !r->id_len && !r->vector && !r->dim && !r->metadata && !r->has_event_time;
}

static int same_record(const rv_vector_record_t *a, const rv_vector_record_t *b) {
  return a->id_len == b->id_len && !memcmp(a->id, b->id, a->id_len) && a->op == b->op && a->dim == b->dim &&
         (a->dim == 0 || !memcmp(a->vector, b->vector, (size_t)a->dim * sizeof(float))) &&
         ((!a->metadata && !b->metadata) || (a->metadata && b->metadata && !strcmp(a->metadata, b->metadata))) &&
         a->has_event_time == b->has_event_time && (!a->has_event_time || a->event_time_ms == b->event_time_ms);
}

static void check_record(const rv_vector_record_t *r) {
  FUZZ_CHECK(r->id && strlen(r->id) == r->id_len, "id length %zu, strlen %zu", r->id_len, r->id ? strlen(r->id) : 0);
  FUZZ_CHECK(r->op == RV_OP_UPSERT || r->op == RV_OP_DELETE, "op %d", (int)r->op);
  FUZZ_CHECK(r->dim >= 0 && (r->dim == 0) == (r->vector == NULL), "dim %d vector %p", r->dim, (void *)r->vector);
  /* What the resolver produced is a reader-schema record: it encodes, and
   * decodes back to itself. */
  rv_buf_t b;
  rv_buf_init(&b);
  char err[256];
  rv_err_t e = rv_codec_encode_vector(g.codec, r, &b, err, sizeof err);
  FUZZ_CHECK(e == RV_OK, "a resolved record does not encode: %s", err);
  rv_vector_record_t r2;
  e = rv_codec_decode_vector(g.codec, b.base, b.len, &r2, err, sizeof err);
  FUZZ_CHECK(e == RV_OK && same_record(r, &r2), "a resolved record does not round-trip: %s",
             e ? err : "different record");
  rv_vector_record_close(&r2);
  rv_buf_close(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g.codec) setup();
  const uint8_t *nul = memchr(data, 0, size);
  size_t slen = nul ? (size_t)(nul - data) : size;
  const uint8_t *payload = nul ? nul + 1 : data + size;
  size_t plen = (size_t)(data + size - payload);

  /* 1. Directly. */
  rv_vector_resolver_t *r = (rv_vector_resolver_t *)(uintptr_t)1;
  char err[512];
  err[0] = 'x';
  rv_err_t re = rv_vector_resolver_new((const char *)data, slen, &r, err, sizeof err);
  rv_vector_record_t direct;
  rv_vector_record_init(&direct);
  rv_err_t de = RV_ERR_INVALID;
  if (re != RV_OK) {
    FUZZ_CHECK(r == NULL, "resolver_new failed (%s) but *out is %p", rv_err_str(re), (void *)r);
    FUZZ_CHECK(re == RV_ERR_INVALID || re == RV_ERR_NOMEM, "resolver_new returned %s", rv_err_str(re));
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "resolver_new failed without a message");
  } else {
    FUZZ_CHECK(r != NULL, "resolver_new succeeded without a resolver");
    de = rv_vector_resolver_decode(r, payload, plen, &direct, err, sizeof err);
    if (de == RV_OK) check_record(&direct);
    else FUZZ_CHECK(record_empty(&direct) && fuzz_terminated(err, sizeof err), "failed decode left a record");
    rv_vector_resolver_destroy(r);
  }

  /* 2. Through ingest's decoder, served by the directory registry. */
  FILE *f = fopen(g.file, "wb");
  FUZZ_CHECK(f && fwrite(data, 1, slen, f) == slen && fclose(f) == 0, "writing %s", g.file);
  rv_decoder_t *d = rv_decoder_new(g.codec, 1, g.registry, err, sizeof err);
  FUZZ_CHECK(d != NULL, "rv_decoder_new: %s", err);
  rv_buf_t msg;
  rv_buf_init(&msg);
  FUZZ_CHECK(rv_confluent_put_header(&msg, WRITER_ID) == RV_OK && rv_buf_append(&msg, payload, plen) == RV_OK,
             "framing");
  rv_vector_record_t out;
  rv_reject_t reject = RV_REJECT_NONE;
  rv_err_t e = rv_decoder_decode(d, "k", 1, msg.base, msg.len, &out, &reject, err, sizeof err);
  if (re == RV_ERR_NOMEM || de == RV_ERR_NOMEM) {
    /* allocation failures are not reproducible across the two paths */
  } else if (re != RV_OK) {
    FUZZ_CHECK(e == RV_OK && reject == RV_REJECT_INCOMPATIBLE_SCHEMA,
               "the resolver refused the schema, the decoder says %s / reject %d: %s", rv_err_str(e), (int)reject,
               err);
  } else if (de != RV_OK) {
    FUZZ_CHECK(e == RV_OK && reject == RV_REJECT_DECODE, "direct decode failed, the decoder says %s / reject %d: %s",
               rv_err_str(e), (int)reject, err);
  } else {
    FUZZ_CHECK(e == RV_OK && reject == RV_REJECT_NONE && same_record(&direct, &out),
               "direct decode succeeded, the decoder says %s / reject %d: %s", rv_err_str(e), (int)reject, err);
  }
  if (e != RV_OK || reject != RV_REJECT_NONE) FUZZ_CHECK(record_empty(&out), "rejected message left a record");
  FUZZ_CHECK(rv_decoder_fetches(d) == 1, "%llu registry fetches for one message",
             (unsigned long long)rv_decoder_fetches(d));
  rv_vector_record_close(&out);
  rv_vector_record_close(&direct);
  rv_buf_close(&msg);
  rv_decoder_destroy(d);
  return 0;
}
