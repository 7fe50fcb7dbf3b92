#ifndef RV_TEST_TMPDIR_H
#define RV_TEST_TMPDIR_H
/* A temporary directory for a test program, and paths inside it. */
#include <stdio.h>
#include <stdlib.h>

/* Creates /tmp/<prefix>.XXXXXX into dir; returns 0 or -1. */
static inline int tmpdir_make(char *dir, size_t size, const char *prefix) {
  snprintf(dir, size, "/tmp/%s.XXXXXX", prefix);
  return mkdtemp(dir) ? 0 : -1;
}

/* Removes dir and everything in it; returns 0 or -1. dir comes from
 * tmpdir_make, so it needs no quoting beyond the single quotes. */
static inline int tmpdir_remove(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* dir/name, in one of four rotating buffers (so a call can take two paths). */
static inline const char *tmpdir_path(const char *dir, const char *name) {
  static char p[4][512];
  static int i;
  i = (i + 1) % 4;
  snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
  return p[i];
}

#endif
