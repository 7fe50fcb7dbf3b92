/* Fuzzes the rv.v1 request parser of the serve stage (serve/rv_protocol.h):
 * the input is one WebSocket text message. A parsed request must be inside
 * the documented limits; a rejected one must leave only its id behind; and
 * every reply built from what the parser produced (error, pong, results with
 * the input as a stored id and metadata) must itself be valid JSON. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rv_protocol.h"

/* Parses a reply and checks it is a JSON object whose "type" is want. */
static void check_reply(const char *text, size_t len, const char *want) {
  FUZZ_CHECK(text != NULL, "formatting a %s reply failed", want);
  FUZZ_CHECK(strlen(text) == len, "%s reply: len %zu, strlen %zu", want, len, strlen(text));
  json_error_t jerr;
  json_t *j = json_loadb(text, len, 0, &jerr);
  FUZZ_CHECK(j != NULL, "%s reply is not valid JSON (%s): %s", want, jerr.text, text);
  const char *type = json_string_value(json_object_get(j, "type"));
  FUZZ_CHECK(type && !strcmp(type, want), "reply type %s, want %s", type ? type : "(none)", want);
  json_decref(j);
}

/* The stored-data path: the input as a hit's id and metadata must still make
 * a parseable hits array and results reply (invalid UTF-8 is replaced). */
static void fuzz_hits(const uint8_t *data, size_t size, const char *id_json) {
  char *s = malloc(size + 1);
  FUZZ_CHECK(s != NULL, "out of memory");
  if (size) memcpy(s, data, size);
  s[size] = 0;
  float score;
  memcpy(&score, size >= 4 ? data : (const uint8_t *)"\0\0\0\0", 4); /* NaN and inf become null */
  rv_hit_t hits[2] = {{.id = s, .metadata = s, .score = score}, {.id = s, .metadata = NULL, .score = 0.5f}};
  rv_hit_list_t list = {.hits = hits, .n = 2};
  size_t hlen = 0;
  char *hj = rv_hits_json(&list, &hlen);
  FUZZ_CHECK(hj != NULL && strlen(hj) == hlen, "rv_hits_json failed");
  json_error_t jerr;
  json_t *arr = json_loadb(hj, hlen, 0, &jerr);
  FUZZ_CHECK(arr && json_is_array(arr) && json_array_size(arr) == 2, "hits are not a 2-array (%s): %s", jerr.text, hj);
  FUZZ_CHECK(json_object_get(json_array_get(arr, 1), "metadata") == NULL, "NULL metadata was not left out");
  json_decref(arr);
  size_t rlen = 0;
  char *reply = rv_reply_results(id_json, hj, hlen, 7, 0, 42, &rlen);
  check_reply(reply, rlen, "results");
  free(reply);
  free(hj);
  free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  rv_request_t req;
  rv_request_init(&req);
  char msg[256];
  rv_proto_code_t code = rv_request_parse((const char *)data, size, &req, msg, sizeof msg);
  FUZZ_CHECK(fuzz_terminated(msg, sizeof msg), "msg not terminated");
  if (req.id_json) {
    json_error_t jerr;
    json_t *id = json_loads(req.id_json, JSON_DECODE_ANY, &jerr);
    FUZZ_CHECK(id && (json_is_string(id) || json_is_number(id)), "id_json is not a JSON string or number: %s",
               req.id_json);
    FUZZ_CHECK(strlen(req.id_json) <= RV_PROTO_ID_MAX, "id_json is %zu bytes", strlen(req.id_json));
    json_decref(id);
  }
  size_t len = 0;
  char *reply;
  if (code == RV_PROTO_OK) {
    FUZZ_CHECK(req.id_json != NULL, "accepted without an id");
    FUZZ_CHECK(req.type == RV_REQ_PING || req.type == RV_REQ_SEARCH, "type %d", (int)req.type);
    if (req.type == RV_REQ_SEARCH) {
      size_t cl = strnlen(req.collection, sizeof req.collection);
      FUZZ_CHECK(cl > 0 && cl < sizeof req.collection, "collection length %zu", cl);
      FUZZ_CHECK(strnlen(req.region, sizeof req.region) < sizeof req.region, "region not terminated");
      FUZZ_CHECK(req.k >= 1 && req.k <= RV_PROTO_K_MAX, "k %d", req.k);
      FUZZ_CHECK(req.ef >= 0 && req.ef <= RV_PROTO_EF_MAX, "ef %d", req.ef);
      FUZZ_CHECK(req.dim >= 1 && req.dim <= RV_PROTO_DIM_MAX && req.vector, "dim %d", req.dim);
      for (int i = 0; i < req.dim; i++) FUZZ_CHECK(isfinite(req.vector[i]), "vector[%d] = %g", i, req.vector[i]);
    }
    reply = rv_reply_pong(req.id_json, 1700000000000, &len);
    check_reply(reply, len, "pong");
  } else {
    FUZZ_CHECK(code == RV_PROTO_BAD_REQUEST || code == RV_PROTO_UNSUPPORTED || code == RV_PROTO_INTERNAL,
               "parse returned code %d", (int)code);
    FUZZ_CHECK(msg[0] != 0, "rejected (%s) without a reason", rv_proto_code_name(code));
    FUZZ_CHECK(!req.vector && !req.dim && !req.collection[0], "rejected request not left empty");
    reply = rv_reply_error(req.id_json, code, msg, &len);
    check_reply(reply, len, "error");
  }
  free(reply);
  fuzz_hits(data, size, req.id_json);
  rv_request_close(&req);
  FUZZ_CHECK(!req.id_json && !req.vector, "close did not re-initialise");
  return 0;
}
