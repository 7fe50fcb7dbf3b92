"""Independent Kafka clients against a running `ruvector broker`: kcat lists its
topics; records kcat publishes in the schema's Avro encoding (written here from
the Avro spec, plain and Confluent-framed) are ingested like `ruvector
produce`'s; a kcat tombstone deletes; a garbage record lands in the DLQ with
its reason; the changelog holds every id."""
import os
import struct
import subprocess

import numpy as np

from harness import WsClient, check, collection_count, encode_vector_record, log, main, psql, wait_for

DIM = 8
N_PLAIN = 20
N_CONFLUENT = 10

TOPOLOGY = """
name: kcat
data_dir: ${RV_DATA_DIR}
kafka: {brokers: "${RV_BOOTSTRAP}"}
collections:
  - {name: tiny, dim: 8, metric: l2, partitions: 3}
serve: {listen: "127.0.0.1:0"}
redis: {url: none}
endpoints_file: ${RV_ENDPOINTS}
"""





def kcat(args, input_bytes=None):
    r = subprocess.run(["kcat"] + args, input=input_bytes, capture_output=True, timeout=60)
    check(r.returncode == 0, f"kcat {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="replace")


def run(env):
    topo = env.path("kcat.yaml")
    with open(topo, "w") as f:
        f.write(TOPOLOGY)
    # --endpoints overrides the topology's endpoints_file (RV_ENDPOINTS here).
    broker, pipeline, ep = env.start_pipeline(topo, "tiny", extra_args=["--endpoints", env.path("endpoints.json")],
                                              endpoints_env=env.path("not-here.json"))
    check(not os.path.exists(env.path("not-here.json")), "endpoints written to the topology's path, not --endpoints")
    bootstrap = ep["kafka"]["bootstrap"]

    listing = kcat(["-b", bootstrap, "-L"])
    check(" 3 brokers:" in listing, f"kcat -L does not show 3 brokers:\n{listing}")
    for t in ("tiny.vectors", "tiny.changelog", "tiny.dlq"):
        check(f'topic "{t}" with 3 partitions' in listing, f"kcat -L lacks {t}:\n{listing}")
    log("kcat -L lists the broker's topics")

    rng = np.random.default_rng(7)
    vectors = {}
    files_plain, files_confluent = [], []
    for i in range(N_PLAIN + N_CONFLUENT):
        rid = f"kc-{i}"
        vec = rng.standard_normal(DIM).astype(np.float32)
        vectors[rid] = vec
        body = encode_vector_record(rid, [float(x) for x in vec], '{"source":"kcat","n":%d}' % i)
        path = env.path(f"rec{i}.avro")
        with open(path, "wb") as f:
            if i < N_PLAIN:
                f.write(body)
                files_plain.append(path)
            else:
                f.write(b"\x00" + struct.pack(">I", 1) + body)  # Confluent framing, schema id 1
                files_confluent.append(path)
    # -P with file arguments: each file is one message.
    kcat(["-b", bootstrap, "-P", "-t", "tiny.vectors"] + files_plain)
    kcat(["-b", bootstrap, "-P", "-t", "tiny.vectors"] + files_confluent)
    with open(env.path("garbage.bin"), "wb") as f:
        f.write(b"\x02zz\x00\x02\x99")  # truncated Avro
    kcat(["-b", bootstrap, "-P", "-t", "tiny.vectors", env.path("garbage.bin")])

    total = N_PLAIN + N_CONFLUENT
    wait_for(f"{total} searchable", lambda: collection_count(ep["http"], "tiny") == total, 120, 0.25,
        alive=[pipeline])

    rows = psql(ep["postgres"], "SELECT id, encode(vector, 'hex') FROM tiny WHERE deleted_at IS NULL ORDER BY id")
    stored = dict(line.split("|") for line in rows.splitlines())
    check(set(stored) == set(vectors), f"stored ids {sorted(stored)}")
    for rid, vec in vectors.items():
        check(stored[rid] == vec.astype("<f4").tobytes().hex(), f"{rid}: stored vector differs")
    log("kcat's Avro records (plain and Confluent) ingested bit-exact")

    ws = WsClient(ep["ws"])
    reply = ws.search("tiny", vectors["kc-25"], k=3)
    check(reply["hits"][0]["id"] == "kc-25" and reply["hits"][0]["score"] == 0.0, f"self search: {reply}")
    check(reply["hits"][0]["metadata"] == {"source": "kcat", "n": 25}, f"metadata: {reply['hits'][0]}")

    # A Kafka tombstone (key, NULL value) deletes.
    kcat(["-b", bootstrap, "-P", "-t", "tiny.vectors", "-K", ":", "-Z"], b"kc-3:\n")
    wait_for("tombstone applied", lambda: collection_count(ep["http"], "tiny") == total - 1, 60, 0.25,
        alive=[pipeline])
    reply = ws.search("tiny", vectors["kc-3"], k=3)
    check(all(h["id"] != "kc-3" for h in reply["hits"]), f"deleted id still returned: {reply}")
    check(psql(ep["postgres"], "SELECT deleted_at IS NOT NULL FROM tiny WHERE id = 'kc-3'") == "t", "soft delete")
    ws.close()

    dlq = kcat(["-b", bootstrap, "-C", "-t", "tiny.dlq", "-o", "beginning", "-e", "-f", "%h\n"])
    check("rv.error.code=decode_error" in dlq, f"DLQ headers: {dlq!r}")
    changelog_keys = set(kcat(["-b", bootstrap, "-C", "-t", "tiny.changelog", "-o", "beginning", "-e",
                               "-f", "%k\n"]).split())
    check(set(vectors) <= changelog_keys, f"changelog lacks {set(vectors) - changelog_keys}")
    log("DLQ has the garbage record with its reason; changelog has every id")

    check(env.stop(pipeline) == 0, "pipeline exit code")
    check(env.stop(broker) == 0, "broker exit code after SIGTERM")


if __name__ == "__main__":
    main(run)
