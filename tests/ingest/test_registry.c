/* Unit tests of ingest/rv_registry (a directory, and HTTP against a small
 * Schema Registry stand-in on 127.0.0.1 in a thread of this test) and of the
 * decoder's use of it (ingest/rv_decode.h): evolved writer schemas decode,
 * each id is fetched once, unknown ids are permanent rejects, incompatible
 * schemas are permanent rejects with a reason, and an unreachable registry is
 * a retriable error that decides nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rv_decode.h"
#include "rv_registry.h"
#include "rv_time.h"

/* v2 adds a field with a default; v3 drops op and metadata (both optional). */
static const char V2[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"id\",\"type\":\"string\"},"
    "{\"name\":\"op\",\"type\":{\"type\":\"enum\",\"name\":\"Op\",\"symbols\":[\"UPSERT\",\"DELETE\"]},"
    "\"default\":\"UPSERT\"},"
    "{\"name\":\"vector\",\"type\":[\"null\",{\"type\":\"array\",\"items\":\"float\"}],\"default\":null},"
    "{\"name\":\"metadata\",\"type\":[\"null\",\"string\"],\"default\":null},"
    "{\"name\":\"event_time\",\"type\":[\"null\",\"long\"],\"default\":null},"
    "{\"name\":\"source\",\"type\":\"string\",\"default\":\"unknown\"}]}";
static const char V3[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"id\",\"type\":\"string\"},"
    "{\"name\":\"vector\",\"type\":[\"null\",{\"type\":\"array\",\"items\":\"float\"}],\"default\":null},"
    "{\"name\":\"event_time\",\"type\":[\"null\",\"long\"],\"default\":null}]}";
static const char INCOMPATIBLE[] =
    "{\"type\":\"record\",\"name\":\"VectorRecord\",\"namespace\":\"io.ruvector\",\"fields\":["
    "{\"name\":\"key\",\"type\":\"string\"}]}";

/* ---- hand-made Avro (the spec's binary encoding) ---- */

static void put_long(rv_buf_t *b, int64_t v) {
  uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
  do {
    uint8_t c = z & 0x7f;
    z >>= 7;
    if (z) c |= 0x80;
    rv_buf_append(b, &c, 1);
  } while (z);
}

static void put_string(rv_buf_t *b, const char *s) {
  put_long(b, (int64_t)strlen(s));
  rv_buf_append(b, s, strlen(s));
}

static void put_vector(rv_buf_t *b, const float *v, int n) {
  put_long(b, 1); /* union branch: array */
  put_long(b, n);
  rv_buf_append(b, v, (size_t)n * sizeof *v); /* little-endian floats on this machine */
  put_long(b, 0);
}

static const float VEC[4] = {1, 2, 3, 4};

/* Confluent frame of a v2 record: id, op DELETE?, vector, metadata, event_time, source. */
static void frame_v2(rv_buf_t *b, uint32_t schema_id, const char *id) {
  rv_buf_reset(b);
  rv_confluent_put_header(b, schema_id);
  put_string(b, id);
  put_long(b, 0); /* UPSERT */
  put_vector(b, VEC, 4);
  put_long(b, 1);
  put_string(b, "{\"v\":2}");
  put_long(b, 1);
  put_long(b, 1700000000000);
  put_string(b, "sensor");
}

static void frame_v3(rv_buf_t *b, uint32_t schema_id, const char *id) {
  rv_buf_reset(b);
  rv_confluent_put_header(b, schema_id);
  put_string(b, id);
  put_vector(b, VEC, 4);
  put_long(b, 0); /* event_time null */
}

/* ---- a Schema Registry stand-in ---- */

static struct {
  int fd;
  int port;
  pthread_t thread;
  int requests; /* served so far */
} S;

static void respond(int c, int status, const char *body) {
  char head[256];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                   status, strlen(body));
  /* The client may have given up (timeout test): no SIGPIPE. */
  if (send(c, head, (size_t)n, MSG_NOSIGNAL) < 0 || send(c, body, strlen(body), MSG_NOSIGNAL) < 0) return;
}

static void *serve_main(void *arg) {
  (void)arg;
  for (;;) {
    int c = accept(S.fd, NULL, NULL);
    if (c < 0) return NULL;
    char req[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof req - 1 && (n = read(c, req + got, sizeof req - 1 - got)) > 0) {
      got += (size_t)n;
      req[got] = 0;
      if (strstr(req, "\r\n\r\n")) break;
    }
    req[got] = 0;
    __atomic_add_fetch(&S.requests, 1, __ATOMIC_SEQ_CST);
    unsigned id = 0;
    if (sscanf(req, "GET /prefix/schemas/ids/%u ", &id) != 1) {
      respond(c, 400, "{}");
    } else if (id == 2 || id == 3) {
      json_t *doc = json_pack("{s:s, s:s}", "schema", id == 2 ? V2 : V3, "schemaType", "AVRO");
      char *text = json_dumps(doc, JSON_COMPACT);
      respond(c, 200, text);
      free(text);
      json_decref(doc);
    } else if (id == 500) {
      respond(c, 500, "{\"error_code\":50001,\"message\":\"store error\"}");
    } else if (id == 401) {
      respond(c, 401, "{\"error_code\":401,\"message\":\"unauthorized\"}");
    } else if (id == 7) {
      respond(c, 200, "<html>not the registry</html>");
    } else if (id == 8) {
      usleep(1500 * 1000); /* beyond the client's timeout */
      respond(c, 200, "{}");
    } else {
      respond(c, 404, "{\"error_code\":40403,\"message\":\"Schema not found\"}");
    }
    close(c);
  }
}

static int setup(void **state) {
  (void)state;
  S.fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (S.fd < 0 || bind(S.fd, (struct sockaddr *)&a, sizeof a) || listen(S.fd, 16) ||
      getsockname(S.fd, (struct sockaddr *)&a, &len))
    return -1;
  S.port = ntohs(a.sin_port);
  return pthread_create(&S.thread, NULL, serve_main, NULL) ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  shutdown(S.fd, SHUT_RDWR);
  close(S.fd);
  pthread_join(S.thread, NULL);
  return 0;
}

/* ---- registry ---- */

static rv_registry_t *http_registry(int timeout_ms) {
  char url[128], e[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/prefix/", S.port); /* trailing '/' is dropped */
  rv_registry_t *r = rv_registry_new(url, timeout_ms, e, sizeof e);
  if (!r) fail_msg("rv_registry_new: %s", e);
  return r;
}

static void test_http_fetch(void **state) {
  (void)state;
  rv_registry_t *r = http_registry(1000);
  char *schema, e[512];
  size_t len;
  assert_int_equal(RV_OK, rv_registry_fetch(r, 2, &schema, &len, e, sizeof e));
  assert_string_equal(V2, schema);
  assert_int_equal(strlen(V2), len);
  free(schema);

  const struct {
    uint32_t id;
    rv_err_t want;
    const char *says;
  } cases[] = {
      {404, RV_ERR_NOT_FOUND, "no schema id 404"},
      {12345, RV_ERR_NOT_FOUND, "HTTP 404"},
      {500, RV_ERR_UNAVAILABLE, "HTTP 500"},
      {401, RV_ERR_UNAVAILABLE, "HTTP 401"},
      {7, RV_ERR_CORRUPT, "not {\"schema\": string}"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    rv_err_t got = rv_registry_fetch(r, cases[i].id, &schema, &len, e, sizeof e);
    if (got != cases[i].want || !strstr(e, cases[i].says))
      fail_msg("id %u: want %s '%s', got %s '%s'", cases[i].id, rv_err_str(cases[i].want), cases[i].says,
               rv_err_str(got), e);
    assert_null(schema);
  }
  assert_true(rv_err_is_retriable(RV_ERR_UNAVAILABLE));
  rv_registry_destroy(r);

  /* A reply slower than the timeout. */
  r = http_registry(300);
  int64_t t0 = rv_mono_ms();
  assert_int_equal(RV_ERR_TIMEOUT, rv_registry_fetch(r, 8, &schema, &len, e, sizeof e));
  assert_true(rv_mono_ms() - t0 < 1400);
  rv_registry_destroy(r);
}

static void test_http_unreachable(void **state) {
  (void)state;
  /* A port nobody listens on: bind one, learn it, close it. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  assert_int_equal(0, bind(fd, (struct sockaddr *)&a, sizeof a));
  assert_int_equal(0, getsockname(fd, (struct sockaddr *)&a, &alen));
  close(fd);
  char url[64], e[512];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
  rv_registry_t *r = rv_registry_new(url, 1000, e, sizeof e);
  assert_non_null(r);
  char *schema;
  size_t len;
  rv_err_t err = rv_registry_fetch(r, 2, &schema, &len, e, sizeof e);
  assert_int_equal(RV_ERR_UNAVAILABLE, err);
  assert_true(rv_err_is_retriable(err));

  /* The decoder: retriable, nothing decided, nothing cached. */
  char ce[256];
  rv_codec_t *codec = rv_codec_new(ce, sizeof ce);
  rv_decoder_t *d = rv_decoder_new(codec, 1, r, ce, sizeof ce);
  rv_buf_t b;
  rv_buf_init(&b);
  frame_v2(&b, 2, "v2-a");
  rv_vector_record_t rec;
  rv_reject_t rj = RV_REJECT_DECODE;
  char msg[512];
  for (int i = 0; i < 2; i++) {
    err = rv_decoder_decode(d, NULL, 0, b.base, b.len, &rec, &rj, msg, sizeof msg);
    assert_true(rv_err_is_retriable(err));
    assert_int_equal(RV_REJECT_NONE, rj);
    assert_null(rec.id);
    assert_non_null(strstr(msg, "127.0.0.1"));
  }
  assert_int_equal(2, rv_decoder_fetches(d)); /* a failure is not cached */
  rv_buf_close(&b);
  rv_decoder_destroy(d);
  rv_codec_destroy(codec);
  rv_registry_destroy(r);
}

static void test_bad_sources(void **state) {
  (void)state;
  char e[256];
  assert_null(rv_registry_new("", 0, e, sizeof e));
  assert_null(rv_registry_new("ftp://x/y", 0, e, sizeof e));
  assert_non_null(strstr(e, "ftp://x/y"));
  rv_registry_t *r = rv_registry_new("file:///nonexistent-rv-dir", 0, e, sizeof e);
  assert_non_null(r);
  char *schema;
  size_t len;
  assert_int_equal(RV_ERR_NOT_FOUND, rv_registry_fetch(r, 1, &schema, &len, e, sizeof e));
  assert_non_null(strstr(e, "/nonexistent-rv-dir/1.avsc"));
  rv_registry_destroy(r);
  rv_registry_destroy(NULL);
}

/* ---- the decoder with a registry ---- */

static void expect(rv_decoder_t *d, const rv_buf_t *b, rv_reject_t want, const char *says, rv_vector_record_t *rec) {
  rv_reject_t rj;
  char msg[512] = "";
  rv_err_t err = rv_decoder_decode(d, NULL, 0, b->base, b->len, rec, &rj, msg, sizeof msg);
  if (err) fail_msg("decode: %s: %s", rv_err_str(err), msg);
  if (rj != want || (says && !strstr(msg, says)))
    fail_msg("want %s '%s', got %s '%s'", rv_reject_code(want), says ? says : "", rv_reject_code(rj), msg);
  if (rj) assert_null(rec->id);
}

static void decoder_cases(rv_registry_t *r) {
  char e[256];
  rv_codec_t *codec = rv_codec_new(e, sizeof e);
  assert_non_null(codec);
  rv_decoder_t *d = rv_decoder_new(codec, 1, r, e, sizeof e);
  assert_non_null(d);
  rv_buf_t b;
  rv_buf_init(&b);
  rv_vector_record_t rec;

  for (int i = 0; i < 3; i++) {
    frame_v2(&b, 2, "v2-a");
    expect(d, &b, RV_REJECT_NONE, NULL, &rec);
    assert_string_equal("v2-a", rec.id);
    assert_int_equal(4, rec.dim);
    assert_memory_equal(VEC, rec.vector, sizeof VEC);
    assert_string_equal("{\"v\":2}", rec.metadata);
    assert_int_equal(1700000000000, rec.event_time_ms);
    rv_vector_record_close(&rec);
  }
  frame_v3(&b, 3, "v3-a");
  expect(d, &b, RV_REJECT_NONE, NULL, &rec);
  assert_string_equal("v3-a", rec.id);
  assert_int_equal(RV_OP_UPSERT, rec.op);
  assert_null(rec.metadata);
  assert_int_equal(0, rec.has_event_time);
  rv_vector_record_close(&rec);
  assert_int_equal(2, rv_decoder_fetches(d)); /* once per id */

  /* The collection's own id never asks the registry. */
  rv_buf_reset(&b);
  rv_confluent_put_header(&b, 1);
  rv_vector_record_t in;
  rv_vector_record_init(&in);
  in.id = (char *)"own";
  in.id_len = 3;
  assert_int_equal(RV_OK, rv_codec_encode_vector(codec, &in, &b, e, sizeof e));
  expect(d, &b, RV_REJECT_NONE, NULL, &rec);
  assert_string_equal("own", rec.id);
  rv_vector_record_close(&rec);
  assert_int_equal(2, rv_decoder_fetches(d));

  /* Unknown ids: permanent, and asked again each time (a producer may register it later). */
  frame_v2(&b, 404, "v2-x");
  expect(d, &b, RV_REJECT_UNKNOWN_SCHEMA, "404", &rec);
  expect(d, &b, RV_REJECT_UNKNOWN_SCHEMA, "404", &rec);
  assert_int_equal(4, rv_decoder_fetches(d));

  /* Incompatible: permanent with the reason, and cached. */
  frame_v2(&b, 5, "v2-y");
  expect(d, &b, RV_REJECT_INCOMPATIBLE_SCHEMA, "writer schema id 5: writer schema lacks field 'id'", &rec);
  expect(d, &b, RV_REJECT_INCOMPATIBLE_SCHEMA, "lacks field 'id'", &rec);
  assert_int_equal(5, rv_decoder_fetches(d));

  /* Truncated under an evolved schema. */
  frame_v2(&b, 2, "v2-z");
  b.len -= 3;
  expect(d, &b, RV_REJECT_DECODE, "schema id 2", &rec);
  rv_buf_close(&b);
  rv_decoder_destroy(d);
  rv_codec_destroy(codec);
}

static void test_decoder_dir(void **state) {
  (void)state;
  char dir[] = "/tmp/rv-test-registry-XXXXXX";
  assert_non_null(mkdtemp(dir));
  const struct {
    int id;
    const char *text;
  } files[] = {{2, V2}, {3, V3}, {5, INCOMPATIBLE}};
  char path[128];
  for (size_t i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/%d.avsc", dir, files[i].id);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(files[i].text, f);
    fclose(f);
  }
  char e[256];
  rv_registry_t *r = rv_registry_new(dir, 0, e, sizeof e);
  assert_non_null(r);
  decoder_cases(r);
  rv_registry_destroy(r);
  for (size_t i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/%d.avsc", dir, files[i].id);
    unlink(path);
  }
  rmdir(dir);
}

static void test_decoder_http(void **state) {
  (void)state;
  rv_registry_t *r = http_registry(2000);
  int before = __atomic_load_n(&S.requests, __ATOMIC_SEQ_CST);
  char e[256];
  rv_codec_t *codec = rv_codec_new(e, sizeof e);
  rv_decoder_t *d = rv_decoder_new(codec, 1, r, e, sizeof e);
  rv_buf_t b;
  rv_buf_init(&b);
  rv_vector_record_t rec;
  for (int i = 0; i < 5; i++) {
    frame_v2(&b, 2, "h2");
    expect(d, &b, RV_REJECT_NONE, NULL, &rec);
    rv_vector_record_close(&rec);
    frame_v3(&b, 3, "h3");
    expect(d, &b, RV_REJECT_NONE, NULL, &rec);
    assert_string_equal("h3", rec.id);
    rv_vector_record_close(&rec);
  }
  assert_int_equal(2, __atomic_load_n(&S.requests, __ATOMIC_SEQ_CST) - before); /* cached per id */
  frame_v2(&b, 99, "h99");
  expect(d, &b, RV_REJECT_UNKNOWN_SCHEMA, "no schema id 99", &rec);
  frame_v2(&b, 7, "h7");
  expect(d, &b, RV_REJECT_UNKNOWN_SCHEMA, "not {\"schema\": string}", &rec);
  /* 5xx: retriable. */
  frame_v2(&b, 500, "h500");
  rv_reject_t rj;
  char msg[256];
  assert_int_equal(RV_ERR_UNAVAILABLE, rv_decoder_decode(d, NULL, 0, b.base, b.len, &rec, &rj, msg, sizeof msg));
  assert_int_equal(RV_REJECT_NONE, rj);
  rv_buf_close(&b);
  rv_decoder_destroy(d);
  rv_codec_destroy(codec);
  rv_registry_destroy(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_http_fetch),  cmocka_unit_test(test_http_unreachable),
      cmocka_unit_test(test_bad_sources), cmocka_unit_test(test_decoder_dir),
      cmocka_unit_test(test_decoder_http),
  };
  return cmocka_run_group_tests_name("registry", tests, setup, teardown);
}
