#include "rv_malloc.h"

#include <stdlib.h>
#include <string.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

int rv_malloc_tune(void) {
#if defined(__GLIBC__)
  const char *t = getenv("GLIBC_TUNABLES");
  if (t && strstr(t, "glibc.malloc.")) return 0;
  int ok = mallopt(M_ARENA_MAX, 1) == 1;
  ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && ok; /* glibc's upper bound for it */
  ok = mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1 && ok;
  return ok;
#else
  return 0;
#endif
}
