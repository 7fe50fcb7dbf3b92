#include "rv_err.h"

#include <stdarg.h>
#include <stdio.h>

const char *rv_err_str(rv_err_t err) {
  switch (err) {
  case RV_OK: return "ok";
  case RV_ERR_INVALID: return "invalid argument";
  case RV_ERR_NOMEM: return "out of memory";
  case RV_ERR_IO: return "i/o error";
  case RV_ERR_NOT_FOUND: return "not found";
  case RV_ERR_CONFIG: return "configuration error";
  case RV_ERR_TIMEOUT: return "timed out";
  case RV_ERR_UNAVAILABLE: return "unavailable";
  case RV_ERR_CORRUPT: return "corrupt data";
  case RV_ERR_DIM: return "dimension mismatch";
  case RV_ERR_STATE: return "invalid state";
  case RV_ERR_FULL: return "full";
  default: return "unknown error";
  }
}

int rv_err_is_retriable(rv_err_t err) {
  return err == RV_ERR_TIMEOUT || err == RV_ERR_UNAVAILABLE || err == RV_ERR_FULL;
}

rv_err_t rv_errf(rv_err_t err, char *errstr, size_t errstr_size, const char *fmt, ...) {
  if (errstr && errstr_size > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
  }
  return err;
}
