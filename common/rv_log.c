#include "rv_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static pthread_once_t threshold_once = PTHREAD_ONCE_INIT;
static rv_log_level_t threshold = RV_LOG_INFO; /* written once, under threshold_once */

static void read_threshold(void) {
  const char *v = getenv("RV_LOG");
  if (!v) return;
  if (!strcasecmp(v, "debug")) threshold = RV_LOG_DEBUG;
  else if (!strcasecmp(v, "warn")) threshold = RV_LOG_WARN;
  else if (!strcasecmp(v, "error")) threshold = RV_LOG_ERROR;
}

void rv_log(rv_log_level_t level, const char *component, const char *fmt, ...) {
  static const char *names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
  pthread_once(&threshold_once, read_threshold);
  if (level < threshold) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "%s.%03ldZ %s %s: %s\n", when, ts.tv_nsec / 1000000L, names[level], component, msg);
}
