"""`pipeline run` with regions[].shards: 2 (everything embedded): 600 records
go in through the embedded Kafka; region "split" holds them in two
in-process shards that serve fans each search out to, region "whole" in one
replica. Plain and filtered searches of both regions return the exact
neighbours computed here by brute force, the split region's reply equal to the
whole region's (ids, scores, order) with "partial": false; /api/stats and the
metrics show both shards, which together hold every record."""
import json
import os

import numpy as np

from harness import WsClient, check, http_json, log, main, read_endpoints, wait_for
from index_world import http_status, metrics

N = 600
DIM = 8
K = 10
CLASSES = ["a", "b", "c"]


def run(env):
    rng = np.random.default_rng(11)
    vecs = rng.integers(-32, 32, size=(N, DIM)).astype(np.float64) / 4.0  # exact in float32
    ids = [f"s{i:04d}" for i in range(N)]
    cls = [CLASSES[i % 3] for i in range(N)]
    data = env.path("data.jsonl")
    with open(data, "w") as f:
        for i in range(N):
            f.write(json.dumps({"id": ids[i], "vector": [float(x) for x in vecs[i]],
                                "metadata": {"class": cls[i]}}) + "\n")

    topo = os.path.join(env.source_dir, "tests", "integration", "sharded_run.yaml")
    endpoints = env.path("endpoints.json")
    pipeline = env.start([env.ruvector, "pipeline", "run", topo], "pipeline",
                         env={"RV_DATA_DIR": env.path("data"), "RV_ENDPOINTS": endpoints})
    ep = wait_for("endpoints file", lambda: os.path.exists(endpoints) and read_endpoints(endpoints), 90,
                  alive=[pipeline])
    r = env.run([env.ruvector, "produce", "--endpoints", endpoints, "--collection", "shr", "--input", data,
                 "--format", "jsonl", "-q"], "produce", timeout=120)
    check(r.returncode == 0, f"produce exited {r.returncode}")

    def stats():
        return http_json(ep["http"] + "api/stats")["collections"]["shr"]
    wait_for(f"{N} records in both regions", lambda: stats()["split"].get("count") == N and
             stats()["whole"]["count"] == N, 90, 0.2, alive=[pipeline])
    st = stats()
    shard_counts = [s["count"] for s in st["split"]["shards"]]
    check(len(shard_counts) == 2 and all(shard_counts) and sum(shard_counts) == N, f"split shards: {st['split']}")
    log(f"split region: shards hold {shard_counts}; whole: {st['whole']['count']}")
    wait_for("/ready", lambda: http_status(ep["http"] + "ready")[0] == 200, 30, 0.1, alive=[pipeline])

    def per_shard():  # the gauges are refreshed every 200 ms
        m = metrics(ep["http"].rstrip("/"))
        return {s: m.get(f'rv_replica_vectors{{region="split",collection="shr",shard="{s}"}}') for s in ("0/2", "1/2")}
    wait_for("rv_replica_vectors per shard", lambda: per_shard() == {"0/2": shard_counts[0], "1/2": shard_counts[1]},
             10, 0.1, alive=[pipeline])

    ws = WsClient(ep["ws"])
    queries = rng.integers(-32, 32, size=(20, DIM)).astype(np.float64) / 4.0
    for qi, q in enumerate(queries):
        flt = {"class": CLASSES[qi % 3]} if qi >= 10 else None
        sel = [i for i in range(N) if flt is None or cls[i] == flt["class"]]
        d = ((vecs[sel] - q) ** 2).sum(axis=1)
        order = sorted(range(len(sel)), key=lambda j: (d[j], ids[sel[j]]))[:K]
        want_d = [float(d[j]) for j in order]
        extra = {"ef": 2000}
        if flt:
            extra["filter"] = flt
        replies = {}
        for region in ("split", "whole"):
            a = ws.search("shr", q, k=K, region=region, **extra)
            check(a.get("type") == "results" and len(a["hits"]) == K, f"{region} query {qi}: {a}")
            got_d = [float(h["score"]) for h in a["hits"]]
            check(all(abs(x - y) <= 1e-4 * max(1.0, y) for x, y in zip(got_d, want_d)),
                  f"{region} query {qi} ({flt}): scores {got_d}, exact {want_d}")
            check(all(flt is None or cls[ids.index(h["id"])] == flt["class"] for h in a["hits"]),
                  f"{region} query {qi}: a hit outside the filter")
            replies[region] = a
        check(replies["split"].get("partial") is False, f"split query {qi}: {replies['split']}")
        check([(h["id"], h["score"]) for h in replies["split"]["hits"]] ==
              [(h["id"], h["score"]) for h in replies["whole"]["hits"]],
              f"query {qi}: split {replies['split']['hits']} != whole {replies['whole']['hits']}")
    ws.close()
    log("10 plain and 10 filtered searches: both regions exact, split == whole, partial false")
    check(env.stop(pipeline) == 0, "pipeline exit code after SIGTERM")


if __name__ == "__main__":
    main(run)
