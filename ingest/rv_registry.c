#include "rv_registry.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_buf.h"

struct rv_registry {
  char *source;   /* as configured */
  char *base_url; /* http(s) URL without a trailing '/'; NULL for a directory */
  char *dir;      /* directory; NULL for a URL */
  int timeout_ms;
  CURL *curl;     /* created on the first fetch, reused (keep-alive) */
  int curl_global; /* 1 once curl_global_init succeeded (balanced in destroy) */
};

static int has_prefix(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

rv_registry_t *rv_registry_new(const char *source, int timeout_ms, char *errstr, size_t errstr_size) {
  if (!source || !*source) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "schema registry: empty source");
    return NULL;
  }
  int url = has_prefix(source, "http://") || has_prefix(source, "https://");
  if (!url && strstr(source, "://") && !has_prefix(source, "file://")) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
            "schema registry '%s': expected an http(s):// URL, file:///dir or a directory", source);
    return NULL;
  }
  rv_registry_t *r = calloc(1, sizeof *r);
  if (!r || !(r->source = strdup(source))) goto nomem;
  r->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
  if (url) {
    if (!(r->base_url = strdup(source))) goto nomem;
    for (size_t n = strlen(r->base_url); n > 0 && r->base_url[n - 1] == '/'; n--) r->base_url[n - 1] = 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
      rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "schema registry: libcurl failed to initialise");
      rv_registry_destroy(r);
      return NULL;
    }
    r->curl_global = 1;
  } else {
    if (!(r->dir = strdup(has_prefix(source, "file://") ? source + 7 : source))) goto nomem;
  }
  return r;
nomem:
  rv_registry_destroy(r);
  rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  return NULL;
}

void rv_registry_destroy(rv_registry_t *r) {
  if (!r) return;
  if (r->curl) curl_easy_cleanup(r->curl);
  if (r->curl_global) curl_global_cleanup();
  free(r->source);
  free(r->base_url);
  free(r->dir);
  free(r);
}

const char *rv_registry_source(const rv_registry_t *r) { return r->source; }

/* ---- directory ---- */

static rv_err_t fetch_file(rv_registry_t *r, uint32_t id, char **schema, size_t *len, char *errstr,
                           size_t errstr_size) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%u.avsc", r->dir, id);
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT)
      return rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "schema id %u: no %s", id, path);
    return rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "schema id %u: %s: %s", id, path, strerror(errno));
  }
  rv_buf_t b;
  rv_buf_init(&b);
  rv_err_t err = RV_OK;
  char chunk[8192];
  size_t n;
  while (!err && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (b.len + n > RV_REGISTRY_MAX_SCHEMA)
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "schema id %u: %s is larger than %d bytes", id, path,
                    RV_REGISTRY_MAX_SCHEMA);
    else if (rv_buf_append(&b, chunk, n))
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  }
  if (!err && ferror(f))
    err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "schema id %u: reading %s failed", id, path);
  fclose(f);
  if (!err && rv_buf_append(&b, "", 1)) err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
  if (err) {
    rv_buf_close(&b);
    return err;
  }
  *schema = (char *)b.base;
  *len = b.len - 1;
  return RV_OK;
}

/* ---- HTTP ---- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata) {
  rv_buf_t *b = userdata;
  size_t n = size * nmemb;
  if (b->len + n > RV_REGISTRY_MAX_SCHEMA * 2 + 4096) return 0; /* the schema JSON-escaped, plus the envelope */
  return rv_buf_append(b, data, n) ? 0 : n;
}

static rv_err_t fetch_http(rv_registry_t *r, uint32_t id, char **schema, size_t *len, char *errstr,
                           size_t errstr_size) {
  if (!r->curl && !(r->curl = curl_easy_init()))
    return rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "libcurl: cannot create a handle");
  char url[4200];
  snprintf(url, sizeof url, "%s/schemas/ids/%u", r->base_url, id);
  rv_buf_t body;
  rv_buf_init(&body);
  char curl_err[CURL_ERROR_SIZE] = "";
  struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/vnd.schemaregistry.v1+json, application/json");
  CURL *c = r->curl;
  curl_easy_reset(c); /* keeps the connection cache */
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* we run in a worker thread */
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)r->timeout_ms);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "ruvector-ingest");
  CURLcode cc = curl_easy_perform(c);
  curl_slist_free_all(hdrs);
  rv_err_t err = RV_OK;
  long status = 0;
  if (cc == CURLE_OPERATION_TIMEDOUT) {
    err = rv_errf(RV_ERR_TIMEOUT, errstr, errstr_size, "schema registry %s: %s", url,
                  curl_err[0] ? curl_err : curl_easy_strerror(cc));
  } else if (cc == CURLE_WRITE_ERROR && body.len > RV_REGISTRY_MAX_SCHEMA) {
    err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "schema registry %s: reply too large", url);
  } else if (cc != CURLE_OK) {
    err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "schema registry %s: %s", url,
                  curl_err[0] ? curl_err : curl_easy_strerror(cc));
  } else if (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status), status == 404) {
    err = rv_errf(RV_ERR_NOT_FOUND, errstr, errstr_size, "schema registry has no schema id %u (HTTP 404)", id);
  } else if (status != 200) {
    err = rv_errf(RV_ERR_UNAVAILABLE, errstr, errstr_size, "schema registry %s: HTTP %ld", url, status);
  } else {
    json_error_t jerr;
    json_t *doc = json_loadb((const char *)body.base, body.len, 0, &jerr);
    json_t *s = json_object_get(doc, "schema");
    if (!json_is_string(s)) {
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "schema registry %s: reply is not {\"schema\": string}",
                    url);
    } else if (json_string_length(s) > RV_REGISTRY_MAX_SCHEMA) {
      err = rv_errf(RV_ERR_CORRUPT, errstr, errstr_size, "schema id %u: larger than %d bytes", id,
                    RV_REGISTRY_MAX_SCHEMA);
    } else if (!(*schema = malloc(json_string_length(s) + 1))) {
      err = rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    } else {
      *len = json_string_length(s);
      memcpy(*schema, json_string_value(s), *len + 1);
    }
    json_decref(doc);
  }
  rv_buf_close(&body);
  return err;
}

rv_err_t rv_registry_fetch(rv_registry_t *r, uint32_t id, char **schema, size_t *len, char *errstr,
                           size_t errstr_size) {
  *schema = NULL;
  *len = 0;
  return r->dir ? fetch_file(r, id, schema, len, errstr, errstr_size)
                : fetch_http(r, id, schema, len, errstr, errstr_size);
}
