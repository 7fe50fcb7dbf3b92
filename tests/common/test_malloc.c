/* Unit tests of common/rv_malloc: after rv_malloc_tune a big block
 * allocated by another thread comes from the main arena's heap (not an
 * arena of that thread's own, not an mmap of its own), and the heap keeps
 * it after it is freed, so the next batch's buffers reuse those pages
 * instead of faulting in zeroed ones. An operator's GLIBC_TUNABLES wins. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rv_malloc.h"

#define BIG (24u << 20)

typedef struct {
  size_t hblks_live;    /* mmapped blocks while the big block is allocated */
  size_t uord_live;     /* main arena bytes in use while it is allocated */
  size_t arena_after;   /* arena bytes obtained from the system after it was freed */
  int arenas;           /* arenas malloc_info reports */
} seen_t;

/* How many arenas ("<heap nr=") malloc_info describes. */
static int count_arenas(void) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) return -1;
  malloc_info(0, f);
  fclose(f);
  int n = 0;
  for (const char *p = text; (p = strstr(p, "<heap nr=")) != NULL; p++) n++;
  free(text);
  return n;
}

/* AddressSanitizer brings its own allocator: mallopt does nothing there and
 * rv_malloc_tune reports that (returns 0), so there is nothing to check. */
#if defined(__SANITIZE_ADDRESS__)
#define SKIP_UNDER_ASAN() skip()
#else
#define SKIP_UNDER_ASAN() ((void)0)
#endif

static void *alloc_in_thread(void *arg) {
  seen_t *s = arg;
  char *p = malloc(BIG);
  if (!p) return NULL;
  memset(p, 1, BIG);
  struct mallinfo2 mi = mallinfo2(); /* summed over the arenas */
  s->arenas = count_arenas();
  s->hblks_live = mi.hblks;
  s->uord_live = mi.uordblks;
  free(p);
  s->arena_after = mallinfo2().arena;
  return NULL;
}

static void test_operator_tunables_win(void **state) {
  (void)state;
  SKIP_UNDER_ASAN();
  assert_int_equal(0, setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4", 1));
  assert_int_equal(0, rv_malloc_tune());
  assert_int_equal(0, setenv("GLIBC_TUNABLES", "glibc.rtld.nns=4", 1)); /* not a malloc tunable */
  assert_int_equal(1, rv_malloc_tune());
  unsetenv("GLIBC_TUNABLES");
}

static void test_big_blocks_stay_in_the_heap(void **state) {
  (void)state;
  SKIP_UNDER_ASAN();
  unsetenv("GLIBC_TUNABLES");
  assert_int_equal(1, rv_malloc_tune());
  seen_t s = {0};
  pthread_t t;
  assert_int_equal(0, pthread_create(&t, NULL, alloc_in_thread, &s));
  assert_int_equal(0, pthread_join(t, NULL));
  assert_int_equal(0, s.hblks_live);        /* not mmapped on its own */
  assert_true(s.uord_live >= BIG);
  assert_int_equal(1, s.arenas);            /* the thread allocated from the one arena */
  assert_true(s.arena_after >= BIG);        /* kept after free, not trimmed back */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_operator_tunables_win),
      cmocka_unit_test(test_big_blocks_stay_in_the_heap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
