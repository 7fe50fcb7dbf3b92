#ifndef RV_INTERP_H
#define RV_INTERP_H
/* Environment-variable interpolation of topology scalars (internal to rv_topology).
 *   ${VAR}          value of VAR; an error if VAR is unset (set but empty gives "")
 *   ${VAR:-default} value of VAR, or `default` when VAR is unset or empty
 *   $$              a literal '$'
 * Any other '$' is kept as it is. VAR is [A-Za-z_][A-Za-z0-9_]*. The default is
 * taken literally up to the first '}' and may not contain "${" (no nesting). */
#include <stddef.h>

#include "rv_err.h"

/* Interpolates the len bytes at in, reading variables with getenv (so it must
 * not race with setenv in another thread). On RV_OK *out is a new NUL-terminated
 * string the caller frees. On RV_ERR_CONFIG (an undefined variable, an unterminated
 * "${", a bad name, a NUL byte) errstr says why and *out is NULL; on RV_ERR_NOMEM
 * *out is NULL. */
rv_err_t rv__interp(const char *in, size_t len, char **out, char *errstr, size_t errstr_size);

#endif
