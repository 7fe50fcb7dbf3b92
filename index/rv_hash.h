#ifndef RV_HASH_H
#define RV_HASH_H
/* Internal to index/: the hash of external ids for the engine's and the
 * replica's open-addressing tables. */
#include <stdint.h>

/* FNV-1a, finished with murmur3's fmix64: FNV's low bits avalanche poorly and
 * the tables index by them. */
static inline uint64_t rv__hash_id(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

#endif
