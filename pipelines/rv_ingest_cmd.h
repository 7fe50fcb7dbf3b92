#ifndef RV_INGEST_CMD_H
#define RV_INGEST_CMD_H
/* `ruvector ingest`: runs only the ingest stage of a topology (one consumer
 * per collection, or the one named), against the Kafka and PostgreSQL the
 * topology names; embedded servers only where it says `embedded`. Several
 * such processes share a collection's consumer group, so ingest scales out
 * (and fails over) by starting more of them. */
#include "rv_ingest.h"
#include "rv_topology.h"

/* Fills *out (zeroed first, defaults applied) with collection i's ingest
 * settings from topo, the given bootstrap list and PostgreSQL conninfo. */
void rv_ingest_conf_from_topology(const rv_topology_t *topo, int i, const char *brokers, const char *pg_conninfo,
                                  rv_ingest_conf_t *out);

/* `ruvector ingest --topology FILE [--collection NAME] [--session-timeout-ms N]
 * [--progress-ms N] [--metrics-listen HOST:PORT]`; argv[0] is the command name. Blocks until SIGTERM or
 * SIGINT, then finishes and commits the batch in progress, publishes its
 * changes, leaves the consumer group and returns 0. Returns 1 when a stage
 * failed to start, 2 on bad usage, 78 (EX_CONFIG) for an invalid topology.
 * Must be called from the main thread before any other thread exists (it
 * blocks SIGINT and SIGTERM for the threads it starts). */
int rv_ingest_cmd_main(int argc, char **argv);

#endif
