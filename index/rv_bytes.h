#ifndef RV_BYTES_H
#define RV_BYTES_H
/* Internal to index/: explicit little-endian encoding and the checksum of the
 * index's file formats (rv_sq8, rv_pq). Every field is written byte by byte,
 * so files are the same on any host. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* CRC-32C of len bytes at data, continuing from crc (0 to start). data needs
 * no alignment. Uses the SSE4.2 crc32 instruction when the CPU has it. */
uint32_t rv__crc32c(uint32_t crc, const void *data, size_t len);

/* The same, one table lookup per byte on any CPU: the reference the fast
 * path is tested against. */
uint32_t rv__crc32c_bytewise(uint32_t crc, const void *data, size_t len);

static inline void rv__put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t rv__get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void rv__put_u64(uint8_t *p, uint64_t v) {
  rv__put_u32(p, (uint32_t)v);
  rv__put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline uint64_t rv__get_u64(const uint8_t *p) { return (uint64_t)rv__get_u32(p) | (uint64_t)rv__get_u32(p + 4) << 32; }

/* IEEE-754 binary32/binary64 bit patterns, little-endian. */
static inline void rv__put_f32(uint8_t *p, float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  rv__put_u32(p, u);
}

static inline float rv__get_f32(const uint8_t *p) {
  uint32_t u = rv__get_u32(p);
  float v;
  memcpy(&v, &u, sizeof v);
  return v;
}

static inline void rv__put_f64(uint8_t *p, double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  rv__put_u64(p, u);
}

static inline double rv__get_f64(const uint8_t *p) {
  uint64_t u = rv__get_u64(p);
  double v;
  memcpy(&v, &u, sizeof v);
  return v;
}

#endif
