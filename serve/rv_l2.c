#include "rv_l2.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "rv_log.h"
#include "rv_time.h"

#define RECONNECT_INTERVAL_MS 1000
#define CONNECT_TIMEOUT_MS 250
#define COMMAND_TIMEOUT_MS 500

struct rv_l2 {
  char unix_path[512]; /* set for "unix:" addresses */
  char host[256];      /* else host and port */
  int port;
  int ttl_s;
  char name[64];           /* for log lines */
  char ns[64];             /* key namespace */
  redisContext *rc;        /* NULL while disconnected */
  int64_t next_attempt_ms; /* monotonic time before which no reconnect is tried */
  int down;                /* an outage has been logged and has not ended yet */
};

rv_l2_t *rv_l2_new(const char *address, int ttl_s, const char *ns, const char *name, char *errstr,
                   size_t errstr_size) {
  if (ttl_s < 1) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "redis cache TTL must be >= 1 s");
    return NULL;
  }
  rv_l2_t *l2 = calloc(1, sizeof *l2);
  if (!l2) {
    rv_errf(RV_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return NULL;
  }
  l2->ttl_s = ttl_s;
  if (!ns || !ns[0]) ns = "default";
  if (strlen(ns) >= sizeof l2->ns || strpbrk(ns, " \r\n")) {
    rv_errf(RV_ERR_CONFIG, errstr, errstr_size, "cache namespace \"%s\": at most 63 bytes, no spaces", ns);
    free(l2);
    return NULL;
  }
  snprintf(l2->ns, sizeof l2->ns, "%s", ns);
  snprintf(l2->name, sizeof l2->name, "%s", name ? name : "l2");
  if (!strncmp(address, "unix:", 5)) {
    if (address[5] == 0 || strlen(address + 5) >= sizeof l2->unix_path) goto bad;
    strcpy(l2->unix_path, address + 5);
    return l2;
  }
  const char *colon = strrchr(address, ':');
  if (!colon || colon == address) goto bad;
  const char *h = address;
  size_t hlen = (size_t)(colon - address);
  if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') h++, hlen -= 2;
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (hlen == 0 || hlen >= sizeof l2->host || *end || end == colon + 1 || port < 1 || port > 65535)
    goto bad;
  memcpy(l2->host, h, hlen);
  l2->host[hlen] = 0;
  l2->port = (int)port;
  return l2;
bad:
  rv_errf(RV_ERR_CONFIG, errstr, errstr_size,
          "redis address \"%s\": expected \"unix:/path\" or \"host:port\"", address);
  free(l2);
  return NULL;
}

void rv_l2_destroy(rv_l2_t *l2) {
  if (!l2) return;
  if (l2->rc) redisFree(l2->rc);
  free(l2);
}

int rv_l2_connected(const rv_l2_t *l2) { return l2->rc != NULL; }

static struct timeval ms_tv(int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  return tv;
}

/* Drops the connection after a failure; logs only the first failure of an outage. */
static void lose(rv_l2_t *l2, const char *what) {
  if (!l2->down)
    rv_warn("serve", "%s: redis %s unavailable (%s); serving without L2 until it is back", l2->name,
            l2->unix_path[0] ? l2->unix_path : l2->host, what);
  l2->down = 1;
  if (l2->rc) redisFree(l2->rc);
  l2->rc = NULL;
  l2->next_attempt_ms = rv_mono_ms() + RECONNECT_INTERVAL_MS;
}

/* Returns 1 when connected, connecting first if due. */
static int ensure(rv_l2_t *l2) {
  if (l2->rc) return 1;
  if (rv_mono_ms() < l2->next_attempt_ms) return 0;
  redisContext *rc = l2->unix_path[0]
                         ? redisConnectUnixWithTimeout(l2->unix_path, ms_tv(CONNECT_TIMEOUT_MS))
                         : redisConnectWithTimeout(l2->host, l2->port, ms_tv(CONNECT_TIMEOUT_MS));
  if (!rc || rc->err) {
    char why[128];
    snprintf(why, sizeof why, "%s", rc ? rc->errstr : "out of memory");
    if (rc) redisFree(rc);
    lose(l2, why);
    return 0;
  }
  if (redisSetTimeout(rc, ms_tv(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
    redisFree(rc);
    lose(l2, "cannot set the command timeout");
    return 0;
  }
  if (l2->down) rv_info("serve", "%s: redis is back; L2 cache on again", l2->name);
  l2->down = 0;
  l2->rc = rc;
  return 1;
}

#define KEY_TEXT_MAX 96

static void key_text(const rv_l2_t *l2, uint64_t key, char out[KEY_TEXT_MAX]) {
  snprintf(out, KEY_TEXT_MAX, "rv:%s:q:%016" PRIx64, l2->ns, key);
}

int rv_l2_get(rv_l2_t *l2, uint64_t key, char **value, size_t *len) {
  if (!ensure(l2)) return 0;
  char k[KEY_TEXT_MAX];
  key_text(l2, key, k);
  redisReply *r = redisCommand(l2->rc, "GET %s", k);
  if (!r) {
    lose(l2, l2->rc->errstr);
    return 0;
  }
  int hit = 0;
  if (r->type == REDIS_REPLY_STRING) {
    char *copy = malloc(r->len + 1);
    if (copy) {
      memcpy(copy, r->str, r->len);
      copy[r->len] = 0;
      *value = copy;
      *len = r->len;
      hit = 1;
    }
  } else if (r->type == REDIS_REPLY_ERROR) {
    rv_debug("serve", "%s: redis GET: %s", l2->name, r->str);
  }
  freeReplyObject(r);
  return hit;
}

rv_err_t rv_l2_set(rv_l2_t *l2, uint64_t key, const char *value, size_t len) {
  if (!ensure(l2)) return RV_ERR_UNAVAILABLE;
  char k[KEY_TEXT_MAX];
  key_text(l2, key, k);
  redisReply *r = redisCommand(l2->rc, "SET %s %b EX %d", k, value, len, l2->ttl_s);
  if (!r) {
    lose(l2, l2->rc->errstr);
    return RV_ERR_UNAVAILABLE;
  }
  rv_err_t err = RV_OK;
  if (r->type == REDIS_REPLY_ERROR) {
    rv_debug("serve", "%s: redis SET: %s", l2->name, r->str);
    err = RV_ERR_UNAVAILABLE;
  }
  freeReplyObject(r);
  return err;
}
