#ifndef RV_ERR_H
#define RV_ERR_H
#include <stddef.h>

/* One error type for the whole project: 0 is success, negative is failure. */
typedef int rv_err_t;

#define RV_OK 0
#define RV_ERR_INVALID -1     /* bad argument or bad input; not retriable */
#define RV_ERR_NOMEM -2       /* allocation failed */
#define RV_ERR_IO -3          /* file or socket error */
#define RV_ERR_NOT_FOUND -4   /* no such id, file, topic, ... */
#define RV_ERR_CONFIG -5      /* configuration is invalid */
#define RV_ERR_TIMEOUT -6     /* gave up waiting; retriable */
#define RV_ERR_UNAVAILABLE -7 /* a server is down or restarting; retriable */
#define RV_ERR_CORRUPT -8     /* data failed a format or checksum check */
#define RV_ERR_DIM -9         /* vector length does not match the collection */
#define RV_ERR_STATE -10      /* call not valid in the object's current state */
#define RV_ERR_FULL -11       /* a bounded queue or table is full; retriable */

/* Returns a static, human-readable name for err (never NULL). */
const char *rv_err_str(rv_err_t err);

/* Returns 1 if the same call may succeed when retried later, 0 otherwise. */
int rv_err_is_retriable(rv_err_t err);

/* Formats into errstr (always NUL-terminated when errstr_size > 0) and returns err,
 * so that failures read `return rv_errf(RV_ERR_IO, errstr, errstr_size, "...", ...);`. */
rv_err_t rv_errf(rv_err_t err, char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
