#ifndef RV_FUZZ_H
#define RV_FUZZ_H
/* What every fuzz target shares: the libFuzzer entry point and a check that
 * says what it expected before it aborts (abort() is what both libFuzzer and
 * fuzz_driver.c recognise as a finding, and what saves the input). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Runs one input. data is exactly size bytes (not NUL-terminated) and stays
 * the caller's. Returns 0; a finding aborts or trips a sanitizer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* FUZZ_CHECK(cond, "fmt", ...): on failure prints the location, the condition
 * and the formatted values, then aborts. */
#define FUZZ_CHECK(cond, ...)                                                \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                          \
      fputc('\n', stderr);                                                   \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* 1 if buf[0..cap) holds a NUL, i.e. an errstr/msg buffer was terminated. */
static inline int fuzz_terminated(const char *buf, size_t cap) {
  for (size_t i = 0; i < cap; i++)
    if (!buf[i]) return 1;
  return 0;
}

#endif
