/* Sanitizer defaults for every fuzz target, read by the sanitizer runtimes at
 * start-up (ASAN_OPTIONS, UBSAN_OPTIONS and LSAN_OPTIONS still override them).
 * Linked in both builds (fuzz_driver.c and libFuzzer); unused without
 * sanitizers. */

const char *__ubsan_default_options(void);
const char *__lsan_default_options(void);

/* UBSan only prints by default, and a test would pass; a finding must stop
 * the run. fuzz_driver.c saves the input on abort() (gcc's UBSan runtime does
 * not call the death callback the driver registers with ASan's); libFuzzer
 * saves it from its death callback, and an abort() would save it twice. */
const char *__ubsan_default_options(void) {
#ifdef RV_FUZZ_LIBFUZZER
  return "halt_on_error=1:print_stacktrace=1";
#else
  return "halt_on_error=1:abort_on_error=1:print_stacktrace=1";
#endif
}

/* Avro-C keeps a union's branch (our vectors and strings) right after its int
 * discriminant, so the pointers to them are not 8-byte aligned. LeakSanitizer
 * follows only aligned pointers by default, and would report what the live
 * codec still holds from the last record as leaked. */
const char *__lsan_default_options(void) { return "use_unaligned=1"; }
