/* Fuzzes rv_snapshot_load (index/rv_snapshot.h): the input is a snapshot
 * file, written to a scratch file and loaded, first with a NULL
 * configuration and, when that loads, again with a configuration that
 * matches the stream (other run-time settings) and with one that does not.
 * The seeds are snapshots of small indexes written by rv_snapshot_save
 * (gen_index_seeds.c).
 *
 * Each input runs as it is and, if that differs, with its checksums
 * recomputed (the quantizer's inside the HNSW section, then the file's;
 * fuzz_index.h), so mutations reach the section readers.
 *
 * Checked: a refused file leaves every output NULL / 0 with a message and
 * leaks nothing; a loaded one passes fuzz_check_index (ids both ways,
 * vectors finite, searches return live, distinct, ordered results), its
 * attribute store fuzz_check_attrs and names no slot beyond the index, and
 * its positions blob is as long as it says. */
#define _GNU_SOURCE 1 /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_index.h"
#include "rv_snapshot.h"

#define HNSW_SECTION_OFF 16 /* rv_snapshot.h: the HNSW section comes first */

/* The scratch file rv_snapshot_load opens by path: a memfd through
 * /proc/self/fd/N (no disk, no cleanup), else a temporary file. Made by the
 * first input (libFuzzer gives a target no context). */
static struct {
  int fd;
  char path[64];
} scratch = {-1, ""};

static void remove_scratch(void) {
  if (strncmp(scratch.path, "/proc/", 6) != 0) unlink(scratch.path);
}

static void scratch_put(const uint8_t *data, size_t size) {
  if (scratch.fd < 0) {
#ifdef MFD_CLOEXEC
    scratch.fd = memfd_create("snapshot", MFD_CLOEXEC);
    if (scratch.fd >= 0) {
      snprintf(scratch.path, sizeof scratch.path, "/proc/self/fd/%d", scratch.fd);
      if (access(scratch.path, R_OK) != 0) {
        close(scratch.fd);
        scratch.fd = -1;
      }
    }
#endif
    if (scratch.fd < 0) {
      const char *dir = getenv("TMPDIR");
      snprintf(scratch.path, sizeof scratch.path, "%s/rv-fuzz-XXXXXX", dir && strlen(dir) < 40 ? dir : "/tmp");
      scratch.fd = mkstemp(scratch.path);
      FUZZ_CHECK(scratch.fd >= 0, "cannot create a scratch file %s: %s", scratch.path, strerror(errno));
    }
    atexit(remove_scratch);
  }
  FUZZ_CHECK(ftruncate(scratch.fd, 0) == 0, "ftruncate: %s", strerror(errno));
  for (size_t off = 0; off < size;) {
    ssize_t w = pwrite(scratch.fd, data + off, size - off, (off_t)off);
    FUZZ_CHECK(w > 0, "pwrite: %s", strerror(errno));
    off += (size_t)w;
  }
}

/* Loads the scratch file with conf; checks the outputs either way. Returns
 * the error, and on success leaves the three outputs for the caller. */
static rv_err_t load(const rv_hnsw_conf_t *conf, rv_hnsw_t **h, rv_attrs_t **a, void **pos, size_t *pos_len) {
  char err[512];
  err[0] = 'x';
  *h = (rv_hnsw_t *)(uintptr_t)1;
  *a = (rv_attrs_t *)(uintptr_t)1;
  *pos = (void *)(uintptr_t)1;
  *pos_len = 12345;
  rv_err_t e = rv_snapshot_load(scratch.path, conf, h, a, pos, pos_len, err, sizeof err);
  if (e != RV_OK) {
    FUZZ_CHECK(!*h && !*a && !*pos && !*pos_len, "load failed (%s: %s) but outputs are %p %p %p %zu",
               rv_err_str(e), err, (void *)*h, (void *)*a, *pos, *pos_len);
    FUZZ_CHECK(e == RV_ERR_CORRUPT || e == RV_ERR_CONFIG || e == RV_ERR_NOMEM, "load returned %s: %s",
               rv_err_str(e), err);
    FUZZ_CHECK(fuzz_terminated(err, sizeof err) && err[0], "load failed without a message");
    return e;
  }
  FUZZ_CHECK(*h != NULL, "load succeeded without an index");
  FUZZ_CHECK((*pos == NULL) == (*pos_len == 0), "positions %p with length %zu", *pos, *pos_len);
  if (*a) FUZZ_CHECK(rv_attrs_slot_bound(*a) <= rv_hnsw_id_bound(*h), "attributes name slot %u of %u",
                     rv_attrs_slot_bound(*a), rv_hnsw_id_bound(*h));
  return RV_OK;
}

/* The positions blob is a copy of the POSN section, as the file's section
 * table (which the load validated) places it. */
static void check_positions(const uint8_t *data, size_t size, const void *pos, size_t pos_len) {
  uint64_t table = rv__get_u64(data + size - 24);
  uint32_t ns = rv__get_u32(data + table);
  for (uint32_t i = 0; i < ns; i++) {
    const uint8_t *e = data + table + 4 + 24 * (size_t)i;
    if (rv__get_u32(e) != 0x4e534f50u) continue; /* "POSN" */
    uint64_t off = rv__get_u64(e + 8), len = rv__get_u64(e + 16);
    FUZZ_CHECK(len == pos_len && (!len || !memcmp(pos, data + off, len)),
               "positions: %zu bytes loaded, the section has %llu at %llu", pos_len, (unsigned long long)len,
               (unsigned long long)off);
    return;
  }
  FUZZ_CHECK(0, "loaded a snapshot without a POSN section");
}

static void run(const uint8_t *data, size_t size) {
  scratch_put(data, size);
  rv_hnsw_t *h;
  rv_attrs_t *a;
  void *pos;
  size_t pos_len;
  if (load(NULL, &h, &a, &pos, &pos_len) != RV_OK) return;
  check_positions(data, size, pos, pos_len);
  fuzz_check_index(h);
  if (a) fuzz_check_attrs(a);

  /* A matching configuration with other run-time settings loads the same
   * index; a mismatching one is refused as RV_ERR_CONFIG. */
  rv_hnsw_conf_t c = *rv_hnsw_conf(h);
  c.ef_search = 3;
  c.rerank = 2;
  c.initial_capacity = 1;
  rv_hnsw_t *h2;
  rv_attrs_t *a2;
  void *pos2;
  size_t pos_len2;
  rv_err_t e = load(&c, &h2, &a2, &pos2, &pos_len2);
  FUZZ_CHECK(e == RV_OK, "loads with a NULL conf, not with its own: %s", rv_err_str(e));
  FUZZ_CHECK(rv_hnsw_count(h2) == rv_hnsw_count(h) && pos_len2 == pos_len && (a2 == NULL) == (a == NULL),
             "the second load differs");
  FUZZ_CHECK(rv_hnsw_conf(h2)->ef_search == 3, "ef_search %d, conf said 3", rv_hnsw_conf(h2)->ef_search);
  fuzz_check_index(h2);
  rv_hnsw_destroy(h2);
  rv_attrs_destroy(a2);
  free(pos2);
  c.dim++;
  e = load(&c, &h2, &a2, &pos2, &pos_len2);
  FUZZ_CHECK(e == RV_ERR_CONFIG, "a conf with dim %d loaded a dim %d snapshot: %s", c.dim, c.dim - 1,
             rv_err_str(e));

  rv_hnsw_destroy(h);
  rv_attrs_destroy(a);
  free(pos);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(data, size);
  if (size < 24) return 0;
  uint8_t *fixed = malloc(size);
  FUZZ_CHECK(fixed != NULL, "out of memory");
  memcpy(fixed, data, size);
  fuzz_fix_hnsw_crc(fixed, size, HNSW_SECTION_OFF);
  rv__put_u32(fixed + size - 8, rv__crc32c(0, fixed, size - 8));
  if (memcmp(fixed, data, size)) run(fixed, size);
  free(fixed);
  return 0;
}
