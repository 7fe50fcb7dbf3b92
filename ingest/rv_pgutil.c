#include "rv_pgutil.h"

#include <stdio.h>
#include <string.h>

#include "rv_log.h"

static void on_notice(void *arg, const char *message) {
  (void)arg;
  rv_debug("ingest", "postgres: %.*s", (int)strcspn(message, "\n"), message);
}

void rv_pg_quiet_notices(PGconn *c) {
  if (c) PQsetNoticeProcessor(c, on_notice, NULL);
}

const char *rv_pg_sqlstate(const PGresult *r) {
  const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  return s ? s : "";
}

rv_err_t rv_pg_classify(PGconn *c, const PGresult *r) {
  const char *st = rv_pg_sqlstate(r);
  if (!c || PQstatus(c) != CONNECTION_OK || !st[0] || !strncmp(st, "08", 2) || !strcmp(st, "57P01") ||
      !strcmp(st, "57P02") || !strcmp(st, "57P03"))
    return RV_ERR_UNAVAILABLE;
  if (!strcmp(st, "40001") || !strcmp(st, "40P01") || !strcmp(st, "55P03") || !strcmp(st, "57014") ||
      !strncmp(st, "53", 2))
    return RV_ERR_TIMEOUT;
  return RV_ERR_INVALID;
}

rv_err_t rv_pg_check(PGconn *c, const PGresult *r, const char *what, char *errstr, size_t errstr_size) {
  ExecStatusType s = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_COPY_IN) return RV_OK;
  const char *msg = r ? PQresultErrorMessage(r) : NULL;
  if (!msg || !msg[0]) msg = c ? PQerrorMessage(c) : "no connection";
  /* libpq messages end in a newline; keep errstr one line. */
  int n = (int)strcspn(msg, "\n");
  const char *st = rv_pg_sqlstate(r);
  return rv_errf(rv_pg_classify(c, r), errstr, errstr_size, "%s%s%.*s [%.80s]", st, st[0] ? " " : "", n, msg,
                 what);
}

rv_err_t rv_pg_exec(PGconn *c, const char *sql, PGresult **out, char *errstr, size_t errstr_size) {
  PGresult *r = PQexec(c, sql);
  rv_err_t err = rv_pg_check(c, r, sql, errstr, errstr_size);
  if (err || !out) PQclear(r);
  else *out = r;
  return err;
}

static int sqlstate_char(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'); }

void rv_pg_errstr_split(const char *errstr, char sqlstate[6], char *msg, size_t msg_size) {
  const char *p = errstr ? errstr : "";
  int has = 1;
  for (int i = 0; i < 5 && has; i++) has = sqlstate_char(p[i]);
  has = has && p[5] == ' ';
  if (sqlstate) {
    if (has) memcpy(sqlstate, p, 5);
    sqlstate[has ? 5 : 0] = 0;
  }
  if (!msg || !msg_size) return;
  if (has) p += 6;
  /* libpq's "ERROR:  " (or another severity) before the message. */
  const char *colon = strstr(p, ":  ");
  if (colon && colon - p <= 8) p = colon + 3;
  size_t n = strlen(p);
  const char *what = n ? strrchr(p, '[') : NULL;
  if (what && what > p && what[-1] == ' ' && p[n - 1] == ']') n = (size_t)(what - 1 - p);
  snprintf(msg, msg_size, "%.*s", (int)n, p);
}

int rv_pg_is_data_error(const char *sqlstate) {
  if (!sqlstate || strlen(sqlstate) != 5) return 0;
  return !strncmp(sqlstate, "22", 2) || !strncmp(sqlstate, "23", 2) || !strcmp(sqlstate, "P0001");
}
