#include "rv_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

uint64_t rv_cache_key(const char *collection, const char *region, int k, int ef, const float *vec,
                      int dim, const char *filter, uint64_t generation) {
  /* Fixed-width fields after NUL-terminated names, the vector (its length is
   * in nums), then a marker byte and the filter text: no two distinct inputs
   * share a byte stream. */
  int32_t nums[3] = {k, ef, dim};
  XXH3_state_t *st = XXH3_createState();
  if (!st) /* no memory: a one-shot hash of the parts still gives a usable key */
    return XXH3_64bits_withSeed(vec, (size_t)dim * sizeof(float),
                                generation ^ XXH3_64bits(collection, strlen(collection)) ^
                                    XXH3_64bits(region, strlen(region)) ^
                                    XXH3_64bits(nums, sizeof nums) ^
                                    (filter ? XXH3_64bits(filter, strlen(filter)) + 1 : 0));
  XXH3_64bits_reset_withSeed(st, generation);
  XXH3_64bits_update(st, collection, strlen(collection) + 1);
  XXH3_64bits_update(st, region, strlen(region) + 1);
  XXH3_64bits_update(st, nums, sizeof nums);
  XXH3_64bits_update(st, vec, (size_t)dim * sizeof(float));
  XXH3_64bits_update(st, filter ? "F" : "-", 1);
  if (filter) XXH3_64bits_update(st, filter, strlen(filter));
  uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return h;
}

typedef struct entry {
  uint64_t key;
  struct entry *prev, *next; /* recency list: head is the most recently used */
  struct entry *chain;       /* next entry in the same hash bucket */
  size_t len;
  char value[]; /* len bytes + NUL */
} entry_t;

struct rv_lru {
  pthread_mutex_t lock;
  entry_t **buckets; /* nbuckets chains */
  size_t mask;       /* nbuckets - 1 (a power of two) */
  entry_t *head, *tail;
  size_t count, bytes;
  size_t max_entries, max_bytes;
};

rv_lru_t *rv_lru_new(size_t max_entries, size_t max_bytes) {
  if (max_entries < 1 || max_bytes < 1) return NULL;
  rv_lru_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  size_t n = 16;
  while (n < max_entries && n < ((size_t)1 << 24)) n <<= 1;
  c->buckets = calloc(n, sizeof *c->buckets);
  if (!c->buckets) {
    free(c);
    return NULL;
  }
  c->mask = n - 1;
  c->max_entries = max_entries;
  c->max_bytes = max_bytes;
  pthread_mutex_init(&c->lock, NULL);
  return c;
}

void rv_lru_destroy(rv_lru_t *c) {
  if (!c) return;
  for (entry_t *e = c->head, *next; e; e = next) {
    next = e->next;
    free(e);
  }
  free(c->buckets);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

static entry_t **find_slot(rv_lru_t *c, uint64_t key) {
  entry_t **slot = &c->buckets[key & c->mask];
  while (*slot && (*slot)->key != key) slot = &(*slot)->chain;
  return slot;
}

static void list_unlink(rv_lru_t *c, entry_t *e) {
  if (e->prev) e->prev->next = e->next;
  else c->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void list_push_front(rv_lru_t *c, entry_t *e) {
  e->prev = NULL;
  e->next = c->head;
  if (c->head) c->head->prev = e;
  c->head = e;
  if (!c->tail) c->tail = e;
}

/* Removes e from the map and frees it. */
static void remove_entry(rv_lru_t *c, entry_t *e) {
  entry_t **slot = find_slot(c, e->key);
  *slot = e->chain;
  list_unlink(c, e);
  c->count--;
  c->bytes -= e->len;
  free(e);
}

int rv_lru_get(rv_lru_t *c, uint64_t key, char **value, size_t *len) {
  int hit = 0;
  pthread_mutex_lock(&c->lock);
  entry_t *e = *find_slot(c, key);
  if (e) {
    char *copy = malloc(e->len + 1);
    if (copy) {
      memcpy(copy, e->value, e->len + 1);
      *value = copy;
      *len = e->len;
      list_unlink(c, e);
      list_push_front(c, e);
      hit = 1;
    }
  }
  pthread_mutex_unlock(&c->lock);
  return hit;
}

rv_err_t rv_lru_put(rv_lru_t *c, uint64_t key, const char *value, size_t len) {
  if (len > c->max_bytes) return RV_ERR_FULL;
  entry_t *n = malloc(sizeof *n + len + 1);
  if (!n) return RV_ERR_NOMEM;
  n->key = key;
  n->len = len;
  memcpy(n->value, value, len);
  n->value[len] = 0;
  n->prev = n->next = n->chain = NULL;

  pthread_mutex_lock(&c->lock);
  entry_t *old = *find_slot(c, key);
  if (old) remove_entry(c, old);
  while (c->tail && (c->count + 1 > c->max_entries || c->bytes + len > c->max_bytes))
    remove_entry(c, c->tail);
  entry_t **slot = find_slot(c, key); /* NULL slot at the end of the chain */
  *slot = n;
  list_push_front(c, n);
  c->count++;
  c->bytes += len;
  pthread_mutex_unlock(&c->lock);
  return RV_OK;
}

size_t rv_lru_count(rv_lru_t *c) {
  pthread_mutex_lock(&c->lock);
  size_t n = c->count;
  pthread_mutex_unlock(&c->lock);
  return n;
}
