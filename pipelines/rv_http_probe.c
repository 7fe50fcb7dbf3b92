#include "rv_http_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rv_time.h"

/* Milliseconds left until deadline (rv_mono_ms clock), at least 0. */
static int left_ms(int64_t deadline) {
  int64_t n = deadline - rv_mono_ms();
  return n > 0 ? (int)n : 0;
}

/* Waits for events on fd until deadline; 1 when they came. */
static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, left_ms(deadline));
    if (n > 0) return 1;
    if (n == 0 || errno != EINTR) return 0;
  }
}

/* A connected non-blocking socket to ai, or -1. */
static int connect_to(const struct addrinfo *ai, int64_t deadline) {
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd < 0) return -1;
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
  int err = 0;
  socklen_t len = sizeof err;
  if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) &&
      !err)
    return fd;
  close(fd);
  return -1;
}

int rv_http_probe(const char *host, int port, const char *path, int timeout_ms) {
  if (!host || !host[0] || port < 1 || port > 65535 || !path || path[0] != '/' || strlen(path) > 512) return -1;
  int64_t deadline = rv_mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);
  char service[16];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, service, &hints, &res) || !res) return -1;
  int fd = -1;
  for (const struct addrinfo *ai = res; ai && fd < 0 && left_ms(deadline) > 0; ai = ai->ai_next)
    fd = connect_to(ai, deadline);
  freeaddrinfo(res);
  if (fd < 0) return -1;

  char req[1024];
  int v6 = strchr(host, ':') != NULL;
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nConnection: close\r\n\r\n", path,
                   v6 ? "[" : "", host, v6 ? "]" : "", port);
  int status = -1;
  size_t sent = 0;
  while (n > 0 && sent < (size_t)n) {
    ssize_t w = send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);
    if (w > 0) sent += (size_t)w;
    else if (w < 0 && errno == EINTR) continue;
    else if (w < 0 && errno == EAGAIN && wait_fd(fd, POLLOUT, deadline)) continue;
    else break;
  }
  /* "HTTP/1.x NNN" is all we need: read until a line ends, or 256 bytes. */
  char line[257];
  size_t got = 0;
  while (sent == (size_t)n && got < sizeof line - 1 && !memchr(line, '\n', got)) {
    ssize_t r = recv(fd, line + got, sizeof line - 1 - got, 0);
    if (r > 0) got += (size_t)r;
    else if (r < 0 && errno == EINTR) continue;
    else if (r < 0 && errno == EAGAIN && wait_fd(fd, POLLIN, deadline)) continue;
    else break;
  }
  close(fd);
  line[got] = 0;
  if (got >= 12 && !strncmp(line, "HTTP/1.", 7) && line[8] == ' ' && line[9] >= '1' && line[9] <= '5' &&
      line[10] >= '0' && line[10] <= '9' && line[11] >= '0' && line[11] <= '9')
    status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  return status;
}
