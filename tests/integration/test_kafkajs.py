"""kafkajs (with avsc, an independent Avro implementation) publishes to a
`ruvector broker`: the records are ingested like `ruvector produce`'s, and the
changelog kafkajs reads back decodes with the schema file and carries every
vector exactly."""
import json
import os
import subprocess

import numpy as np

from harness import WsClient, check, collection_count, log, main, psql, wait_for

DIM = 16
N = 50

TOPOLOGY = """
name: kafkajs
data_dir: ${RV_DATA_DIR}
kafka: {brokers: "${RV_BOOTSTRAP}"}
collections:
  - {name: kj, dim: 16, metric: l2, partitions: 3}
serve: {listen: "127.0.0.1:0"}
redis: {url: none}
endpoints_file: ${RV_ENDPOINTS}
"""


def vector_for(i):
    """The same vectors as kafkajs_client.js (all exact in float32)."""
    return np.array([((i * 31 + d * 7) % 97) / 8 - 6 for d in range(DIM)], dtype=np.float32)


def run(env):
    node_dir = os.path.join(env.source_dir, "tests", "integration", "node")
    check(os.path.isdir(os.path.join(node_dir, "node_modules", "kafkajs")),
          "kafkajs is not installed: run `npm ci` in tests/integration/node (deploy/dev.sh test does)")
    topo = env.path("kafkajs.yaml")
    with open(topo, "w") as f:
        f.write(TOPOLOGY)
    broker, pipeline, ep = env.start_pipeline(topo, "kj")
    bootstrap = ep["kafka"]["bootstrap"]

    r = subprocess.run(["node", os.path.join(node_dir, "kafkajs_client.js"), bootstrap, "kj",
                        os.path.join(env.source_dir, "schemas"), str(N), str(DIM)],
                       capture_output=True, text=True, timeout=180)
    lines = r.stdout.strip().splitlines()
    check(r.returncode == 0 and lines, f"kafkajs client exited {r.returncode}: {r.stdout} {r.stderr[-2000:]}")
    result = json.loads(lines[-1])
    check(result.get("changelog_ids") == N and not result.get("problems"), f"kafkajs client: {result}")
    log(f"kafkajs published {N} records; the changelog it read back has all of them, vectors exact "
        f"({result.get('markers')} position marker(s) told apart by their rv-kind header)")

    wait_for(f"{N} searchable", lambda: collection_count(ep["http"], "kj") == N, 60, 0.25, alive=[pipeline])
    ws = WsClient(ep["ws"])
    for i in (0, 17, N - 1):  # N - 1 was Confluent-framed
        reply = ws.search("kj", vector_for(i), k=1)
        check(reply["hits"][0]["id"] == f"kj-{i}" and reply["hits"][0]["score"] == 0.0, f"search kj-{i}: {reply}")
        check(reply["hits"][0]["metadata"] == {"client": "kafkajs", "i": i}, f"metadata kj-{i}: {reply}")
    ws.close()
    check(psql(ep["postgres"], "SELECT count(*) FROM kj WHERE deleted_at IS NULL") == str(N), "rows in PostgreSQL")

    check(env.stop(pipeline) == 0, "pipeline exit code")
    check(env.stop(broker) == 0, "broker exit code")


if __name__ == "__main__":
    main(run)
