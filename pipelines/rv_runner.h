#ifndef RV_RUNNER_H
#define RV_RUNNER_H
/* Runs a whole pipeline from a topology in this process: the embedded servers
 * it asks for, one ingest per collection, one replica per region and
 * collection, and the serving stage; writes the endpoints file; optionally
 * loads a data set through Kafka; prints progress until SIGINT or SIGTERM,
 * then stops the stages in order (serve, ingest with a final commit,
 * replicas, Redis, PostgreSQL, broker). */
#include "rv_topology.h"

typedef struct rv_run_opts {
  const char *load_path;   /* NULL, or a data set to publish to the first collection (idx, fvecs, jsonl) */
  long load_count;         /* at most this many records from load_path (0 = all) */
  int progress_ms;         /* progress line period, default 2000 */
} rv_run_opts_t;

/* Blocks until a stop signal. Returns a process exit code: 0 after a clean
 * stop, 1 when a stage failed to start or stopped on an error. Must be called
 * from the main thread before any other thread exists (it blocks SIGINT and
 * SIGTERM for the threads it starts). */
int rv_pipeline_run(const rv_topology_t *topo, const rv_run_opts_t *opts);

/* Writes the endpoints JSON document atomically (temporary file + rename). */
int rv_endpoints_write(const char *path, const char *json_text, char *errstr, size_t errstr_size);

#endif
