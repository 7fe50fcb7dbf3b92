#ifndef RV_SERVE_CMD_H
#define RV_SERVE_CMD_H
/* `ruvector serve`: the serving stage as a process of its own, holding no
 * replica. Every collection x region of a topology is served by fanning each
 * search out over rv.v1 to that region's `ruvector index` processes (region
 * listen host, port + I for shard I); /ready follows probes of their /ready. */
#include <stddef.h>

#include "rv_topology.h"

/* The rv.v1 URL of shard `shard` of region g of t ("ws://HOST:PORT/", an
 * IPv6 host in brackets, PORT = the region's listen port + shard) into out.
 * Returns 0, or -1 when it does not fit or the region's listen port is 0 (no
 * fixed address to fan out to). */
int rv_region_shard_url(const rv_topology_t *t, int g, int shard, char *out, size_t cap);

/* main() of `ruvector serve` (argv[0] = "serve"). Returns the exit status:
 * 0 after SIGTERM/SIGINT, 1 a stage could not start, 2 bad usage,
 * 78 invalid topology (or a region without a fixed listen port). */
int rv_serve_cmd_main(int argc, char **argv);

#endif
