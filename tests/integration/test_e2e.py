"""End to end: 2,000 Fashion-MNIST vectors go through a broker process, ingest,
PostgreSQL, the changelog and a replica; 20 test images are searched over
WebSocket from this separate process and the hits must be the exact
neighbours computed here (the HNSW replica is searched with a wide ef, which at
this size finds the exact ones), filtered searches must return the exact
neighbours among the matching vectors, and a bad filter gets a bad_filter
error; then 100 vectors are deleted and must vanish from results and be
soft-deleted in PostgreSQL."""
import json
import os

from harness import (FASHION, WsClient, check, collection_count, exact_knn, http_json, load_idx_images,
                     load_idx_labels, log, main, psql, same_neighbours, wait_for)

N = 2000
Q = 20
K = 10
EF = 400  # at N = 2000 a beam this wide returns the exact neighbours
PREFIX = "fm-"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Filters (e2e.yaml: label is a number field, class a keyword field) and the
# label sets they select.
FILTERS = [
    ({"class": {"in": ["Shirt", "Coat"]}}, {6, 4}),
    ({"label": {"gte": 1, "lt": 5}}, {1, 2, 3, 4}),
    ({"label": 3}, {3}),
    ({"class": "Bag", "label": {"lte": 8}}, {8}),
]


def run(env):
    topo = os.path.join(env.source_dir, "tests", "integration", "e2e.yaml")
    broker, pipeline, ep = env.start_pipeline(topo, "fashion")
    endpoints_file = env.path("endpoints.json")
    check(ep["collections"]["fashion"]["source_topic"] == "fashion.vectors", "source topic in endpoints")
    check(ep["ws"].startswith("ws://127.0.0.1:"), f"ws url {ep['ws']}")
    check(http_json(ep["http"] + "health")["status"] == "ok", "/health")

    train = os.path.join(FASHION, "train-images-idx3-ubyte.gz")
    r = env.run([env.ruvector, "produce", "--endpoints", endpoints_file, "--collection", "fashion", "--input", train,
                 "--count", str(N), "--id-prefix", PREFIX], "produce")
    check(r.returncode == 0, f"produce exited {r.returncode}")

    wait_for(f"{N} searchable vectors", lambda: collection_count(ep["http"], "fashion") == N, 180, 0.25,
        alive=[pipeline])
    log("all vectors searchable")

    base = load_idx_images(train, N)
    labels = load_idx_labels(os.path.join(FASHION, "train-labels-idx1-ubyte.gz"), N)
    ids = [f"{PREFIX}{i}" for i in range(N)]
    queries = load_idx_images(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"), Q)

    ws = WsClient(ep["ws"])

    def check_searches(live):
        live_ids = [ids[i] for i in live]
        want = exact_knn(base[live], live_ids, queries, K)
        index_of = {s: i for i, s in enumerate(ids)}
        for qi, q in enumerate(queries):
            reply = ws.search("fashion", q, k=K, ef=EF)
            check(reply.get("type") == "results", f"query {qi}: {reply}")
            got = [h["id"] for h in reply["hits"]]

            def dist(i):
                return float(((base[index_of[i]] - q) ** 2).sum())
            check(same_neighbours(got, want[qi][0], want[qi][1], dist),
                  f"query {qi}: got {got}, exact {want[qi][0]}")
            for h in reply["hits"]:  # metadata travels with the vector
                check(h["metadata"]["label"] == int(labels[index_of[h["id"]]]), f"label of {h['id']}: {h}")
        return want

    want = check_searches(list(range(N)))
    log(f"{Q} searches match the exact neighbours")

    def check_filtered(live):
        index_of = {s: i for i, s in enumerate(ids)}
        for flt, wanted in FILTERS:
            sub = [i for i in live if int(labels[i]) in wanted]
            check(len(sub) > K, f"filter {flt}: only {len(sub)} matching vectors")
            exact = exact_knn(base[sub], [ids[i] for i in sub], queries[:5], K)
            for qi, q in enumerate(queries[:5]):
                reply = ws.search("fashion", q, k=K, filter=flt)
                check(reply.get("type") == "results", f"filter {flt}, query {qi}: {reply}")
                got = [h["id"] for h in reply["hits"]]

                def dist(i):
                    return float(((base[index_of[i]] - q) ** 2).sum())
                check(same_neighbours(got, exact[qi][0], exact[qi][1], dist),
                      f"filter {flt}, query {qi}: got {got}, exact {exact[qi][0]}")
                for h in reply["hits"]:
                    lab = int(labels[index_of[h["id"]]])
                    check(lab in wanted and h["metadata"]["class"] == CLASSES[lab], f"filter {flt}: hit {h}")

    check_filtered(list(range(N)))
    log(f"{len(FILTERS)} filters x 5 searches match the exact neighbours among the matching vectors")
    for flt, code in [({"colour": "red"}, "bad_filter"), ({"label": "three"}, "bad_filter"),
                      ({"class": {"gte": 2}}, "bad_filter"), ({"label": {"near": 2}}, "bad_filter")]:
        reply = ws.search("fashion", queries[0], k=K, filter=flt)
        check(reply.get("type") == "error" and reply.get("code") == code, f"filter {flt}: {reply}")
    check(ws.search("fashion", queries[0], k=K).get("type") == "results", "connection open after bad filters")
    log("bad filters answered with bad_filter")

    # Delete 100 ids, most of them current top hits so their absence shows.
    doomed = []
    for got, _ in want:
        for i in got:
            if i not in doomed and len(doomed) < 100:
                doomed.append(i)
    i = 0
    while len(doomed) < 100:
        if ids[i] not in doomed:
            doomed.append(ids[i])
        i += 1
    deletes = env.path("deletes.jsonl")
    with open(deletes, "w") as f:
        for d in doomed:
            f.write(json.dumps({"id": d, "op": "DELETE"}) + "\n")
    r = env.run([env.ruvector, "produce", "--endpoints", endpoints_file, "--collection", "fashion", "--input",
                 deletes, "--format", "jsonl"], "produce-deletes")
    check(r.returncode == 0, f"produce --delete exited {r.returncode}")
    wait_for(f"{N - 100} searchable vectors", lambda: collection_count(ep["http"], "fashion") == N - 100, 120, 0.25,
        alive=[pipeline])

    doomed_set = set(doomed)
    live = [i for i in range(N) if ids[i] not in doomed_set]
    check_searches(live)
    check_filtered(live)
    log("after deletes: results exact (filtered too) and no deleted id returned")

    pg = ep["postgres"]
    deleted = psql(pg, "SELECT id FROM fashion WHERE deleted_at IS NOT NULL ORDER BY id").split()
    check(sorted(deleted) == sorted(doomed), f"soft-deleted rows: {len(deleted)} (want 100 specific ids)")
    check(psql(pg, "SELECT count(*) FROM fashion WHERE deleted_at IS NULL") == str(N - 100), "live rows")
    check(psql(pg, "SELECT count(*) - count(DISTINCT id) FROM fashion") == "0", "duplicate rows")
    ws.close()

    check(env.stop(pipeline) == 0, "pipeline exit code after SIGTERM")
    check(not os.path.exists(endpoints_file), "endpoints file removed on clean stop")
    check(env.stop(broker) == 0, "broker exit code after SIGTERM")


if __name__ == "__main__":
    main(run)
