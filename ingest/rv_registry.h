#ifndef RV_REGISTRY_H
#define RV_REGISTRY_H
/* Where the writer schemas of Confluent-framed records come from, by schema id:
 *   http://... or https://...  a Confluent Schema Registry:
 *                              GET {url}/schemas/ids/{id} -> {"schema": "<avsc text>", ...}
 *   file:///dir, or a path     a directory holding {id}.avsc (the schema's JSON text)
 * A registry only fetches; the decoder (rv_decode.h) caches what it resolved
 * per id, so each id is fetched once while it resolves.
 * Thread: one thread per registry (the HTTP connection is reused). */
#include <stddef.h>
#include <stdint.h>

#include "rv_err.h"

typedef struct rv_registry rv_registry_t;

/* Largest schema text accepted (bytes). */
#define RV_REGISTRY_MAX_SCHEMA (1 << 20)

/* source: a URL or a directory as above. timeout_ms bounds one fetch,
 * connecting included (<= 0: 5000). Connects to nothing yet. Returns NULL with
 * errstr set if source is empty, uses another URL scheme, or memory ran out. */
rv_registry_t *rv_registry_new(const char *source, int timeout_ms, char *errstr, size_t errstr_size);
/* NULL is a no-op. */
void rv_registry_destroy(rv_registry_t *r);

/* Fetches the schema text of id into *schema (NUL-terminated, malloc'd, the
 * caller frees it; *len without the NUL). Returns:
 *   RV_OK
 *   RV_ERR_NOT_FOUND    the registry answered 404 / there is no {id}.avsc: permanent
 *   RV_ERR_CORRUPT      the registry answered 200 with something that is not
 *                       {"schema": string}, or the schema is too large: permanent
 *   RV_ERR_UNAVAILABLE  could not connect, 5xx, 429, any other status (e.g. 401:
 *                       an operator has to fix it; records must not be dead-lettered
 *                       meanwhile), or the file could not be read: retriable
 *   RV_ERR_TIMEOUT      no complete answer within timeout_ms: retriable
 *   RV_ERR_NOMEM
 * On failure *schema is NULL and errstr says what happened. */
rv_err_t rv_registry_fetch(rv_registry_t *r, uint32_t id, char **schema, size_t *len, char *errstr,
                           size_t errstr_size);

/* The source as configured (for log lines). */
const char *rv_registry_source(const rv_registry_t *r);

#endif
