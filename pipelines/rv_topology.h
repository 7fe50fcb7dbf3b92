#ifndef RV_TOPOLOGY_H
#define RV_TOPOLOGY_H
/* Pipeline topologies: YAML files under pipelines/ that describe collections,
 * topics, PostgreSQL, Redis, index parameters, regions, serve address and cache.
 * Scalars may use ${VAR} and ${VAR:-default} (environment variables).
 * See pipelines/README.md for every key. */
#include <stddef.h>

#include "rv_collection.h"
#include "rv_err.h"

#define RV_MAX_COLLECTIONS 16
#define RV_MAX_REGIONS 8

/* One region's own settings (regions[] written as a mapping); every field has
 * a default taken from the pipeline-wide keys. */
typedef struct rv_region_conf {
  char name[RV_NAME_MAX];
  char listen_host[256];    /* regions[].listen: where `ruvector index` for this region serves rv.v1 and
                               /health /ready /startup /metrics; shard i of N listens on listen_port + i.
                               Default 127.0.0.1 */
  int listen_port;          /* default 0: any free port (printed; fine for one process, not for fan-out) */
  int shards;               /* regions[].shards: index processes (shards) per collection, default 1 */
  int ef_search;            /* regions[].ef_search, default index.ef_search */
  char snapshot_dir[1024];  /* regions[].snapshot_dir, default index.snapshot_dir ("" = none) */
} rv_region_conf_t;

typedef struct rv_topology {
  char name[RV_NAME_MAX];           /* pipeline name */
  char data_dir[1024];              /* where embedded servers keep data; default var/<name> */
  char brokers[1024];               /* "embedded" or a bootstrap list */
  int kafka_partitions;             /* default partitions per topic, default 3 */
  char postgres[1024];              /* "embedded" or a libpq connection string */
  int pgbouncer;                    /* postgres.mode: direct (0) or pgbouncer (1) */
  char redis[512];                  /* "embedded", "none", "unix:/path" or "host:port" */
  rv_collection_conf_t collections[RV_MAX_COLLECTIONS];
  int n_collections;
  int batch_rows;                   /* ingest.batch_rows, default 5000 */
  int batch_ms;                     /* ingest.batch_ms, default 50 */
  int max_metadata_bytes;           /* ingest.max_metadata_bytes, default 65536 */
  int sq8_train;                    /* ingest.sq8_train: vectors SQ8 is trained from, default 1000 */
  int sq8_train_wait_ms;            /* ingest.sq8_train_wait_ms: ... or fewer after this wait, default 5000 */
  int pq_m;                         /* ingest.pq_m: PQ sub-quantizers, 0 (default) = no PQ; divides every dim */
  int store_vector;                 /* ingest.store_vector: raw float32 beside the codes, default 1 */
  int partman;                      /* ingest.partman: auto (0) or off (1), default auto */
  int premake;                      /* ingest.premake: months of partitions made ahead, default 3 */
  char schema_registry[1024];       /* ingest.schema_registry: writer schemas by id, an http(s):// Schema
                                       Registry URL or a directory of <id>.avsc; "" = none */
  char sq8_params[RV_MAX_COLLECTIONS][512]; /* collections[i].sq8_params: SQ8 parameter file, "" = train */
  int hnsw_m;                       /* index.m, default 16 */
  int hnsw_ef_construction;         /* index.ef_construction, default 100 */
  int hnsw_ef_search;               /* index.ef_search, default 64 */
  int hnsw_storage;                 /* index.storage: float (0, default) or sq8 (1), as rv_hnsw_storage_t */
  int hnsw_sq8_train;               /* index.sq8_train: live vectors a replica trains SQ8 from, default 1000 */
  char snapshot_dir[1024];          /* index.snapshot_dir: replica snapshots, "" = none (default) */
  int snapshot_interval_s;          /* index.snapshot_interval_s: also save every N s, 0 = on stop only */
  int max_lag_ms;                   /* index.max_lag_ms: /ready only while the replica lag is under this, default 5000 */
  int after_timeout_ms;             /* index.after_timeout_ms: longest a search with "after" waits, default 5000 */
  int tombstone_ms;                 /* index.tombstone_ms: deleted ids' versions kept this long, default 60000 */
  char regions[RV_MAX_REGIONS][RV_NAME_MAX]; /* default one region, "local" */
  rv_region_conf_t region_conf[RV_MAX_REGIONS]; /* the same regions with their own settings, defaults applied */
  int n_regions;
  char serve_host[256];             /* serve.listen host, default 127.0.0.1; IPv6 without brackets */
  int serve_port;                   /* serve.listen port, default 8080; 0 = ephemeral */
  int serve_workers;                /* serve.workers, default 2 */
  int cache_l1_entries;             /* cache.l1_entries, default 10000 */
  int cache_l2_ttl_s;               /* cache.l2_ttl_s, default 300 */
  char endpoints_file[1024];        /* default var/endpoints.json */
} rv_topology_t;

/* One problem found in a topology file. */
typedef struct rv_diag {
  char file[512];
  int line;    /* 1-based */
  int column;  /* 1-based */
  char message[256];
} rv_diag_t;

typedef struct rv_diags {
  rv_diag_t *items; /* owned */
  int n;
  int cap;
} rv_diags_t;

void rv_diags_init(rv_diags_t *d);
void rv_diags_close(rv_diags_t *d);
/* Formats each as "file:line:column: message\n" to the stream ("file: message\n"
 * for a diag at line 0, about the file as a whole). */
void rv_diags_print(const rv_diags_t *d, void *FILE_stream);

/* Parses, interpolates and validates the file at path. Every problem found
 * (not just the first) is appended to diags. Returns RV_OK and fills *out
 * (defaults applied) when there are none; RV_ERR_CONFIG otherwise, with *out
 * unspecified. RV_ERR_IO (and one diag at line 0) if the file cannot be read;
 * RV_ERR_NOMEM if memory ran out. Reads the environment for ${VAR} (getenv), so
 * no other thread may call setenv meanwhile. */
rv_err_t rv_topology_load(const char *path, rv_topology_t *out, rv_diags_t *diags);

/* rv_topology_load for a command: prints every problem to stderr as
 * file:line:column: reason, then "<path>: invalid topology (N problems)".
 * Returns 0, or 78 (EX_CONFIG) when the file is invalid or unreadable, or 1
 * when memory ran out. */
int rv_topology_load_report(const char *path, rv_topology_t *out);

/* The same from a string already in memory; `name` is used in diags. */
rv_err_t rv_topology_parse(const char *name, const char *text, size_t len, rv_topology_t *out,
                           rv_diags_t *diags);

#endif
