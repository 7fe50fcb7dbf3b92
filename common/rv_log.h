#ifndef RV_LOG_H
#define RV_LOG_H

/* Line-oriented logging to stderr: "2026-11-24T21:30:00.123Z INFO  ingest: message".
 * Thread-safe (one fprintf per line). The threshold comes from the RV_LOG
 * environment variable (debug, info, warn, error; default info), read once. */
typedef enum { RV_LOG_DEBUG = 0, RV_LOG_INFO = 1, RV_LOG_WARN = 2, RV_LOG_ERROR = 3 } rv_log_level_t;

void rv_log(rv_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define rv_debug(c, ...) rv_log(RV_LOG_DEBUG, c, __VA_ARGS__)
#define rv_info(c, ...) rv_log(RV_LOG_INFO, c, __VA_ARGS__)
#define rv_warn(c, ...) rv_log(RV_LOG_WARN, c, __VA_ARGS__)
#define rv_error(c, ...) rv_log(RV_LOG_ERROR, c, __VA_ARGS__)

#endif
