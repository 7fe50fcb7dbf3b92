"""`ruvector index` killed with SIGKILL comes back from its snapshot and
catches up with nothing lost: after ingest, a replica process bootstraps
(from PostgreSQL), saves periodic snapshots, is killed -9; more updates and
new ids are ingested meanwhile; the restarted process bootstraps from its
snapshot (rv_replica_bootstrap_source) and then holds exactly PostgreSQL's
live ids, each at its stored version (the metadata "v" of every id's hit
when searching its stored vector). Run with /usr/bin/python3."""
import json
import os
import signal
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import WsClient, check, log, main, wait_for, write_versioned_stream  # noqa: E402
from index_world import COLLECTION, World, boot_source, stats_count, wait_ready  # noqa: E402

DIM = 16
IDS = 1000  # write_versioned_stream repeats vectors every 1000 ids


def stored(world):
    rows = world.pg.query(f"SELECT id, (metadata->>'v')::int, vector FROM {COLLECTION} WHERE deleted_at IS NULL")
    return {rid: (v, bytes(vec)) for rid, v, vec in rows}


def meta_v(hit):
    m = hit.get("metadata")
    if isinstance(m, str):
        m = json.loads(m)
    return (m or {}).get("v")


def check_replica(base, want):
    """Every stored id is found by its stored vector (score 0), with the stored version's metadata."""
    ws_url = base.replace("http://", "ws://") + "/"
    c = WsClient(ws_url)
    try:
        wrong = []
        for rid, (v, vec) in want.items():
            q = list(struct.unpack(f"<{DIM}f", vec))
            # the stream's vectors repeat across ids (id i at version k is id i+2 at k-1), so look
            # for this id among the exact matches
            hits = [h for h in c.search(COLLECTION, q, k=30).get("hits") or [] if h["id"] == rid]
            if not hits or hits[0]["score"] != 0 or meta_v(hits[0]) != v:
                wrong.append((rid, v, hits[:1]))
        if wrong:
            log(f"{len(wrong)} id(s) not at their stored version, e.g. {wrong[:3]}")
        return wrong
    finally:
        c.close()


def run(env):
    w = World(env, partitions=4, dim=DIM)
    snap = env.path("snap")
    ingest = w.ingest()
    s1 = env.path("s1.jsonl")
    write_versioned_stream(s1, 3 * IDS, IDS, DIM, seed=1)
    w.produce(["--input", s1, "--format", "jsonl"])
    w.wait_ingested(ingest, 3 * IDS, 120)

    idx = w.index(snap, interval=1)
    base = w.http_base(idx)
    wait_ready(base, idx, 60)
    check(boot_source(base) == "postgres", f"first start bootstrapped from {boot_source(base)}, not postgres")
    snap_file = os.path.join(snap, f"{COLLECTION}.local.rvsnap")
    wait_for("a periodic snapshot", lambda: os.path.exists(snap_file), 30, alive=[idx])
    os.kill(idx.pid, signal.SIGKILL)
    idx.wait()
    log("index killed with SIGKILL")

    # more while it is down: new versions of a third of the ids, and new ids
    s2 = env.path("s2.jsonl")
    with open(s2, "w") as f:
        for i in range(0, IDS, 3):
            vec = [2000.0 + i + 0.25 * k for k in range(DIM)]
            f.write(json.dumps({"id": f"r{i:07d}", "vector": vec, "metadata": {"v": 1000}}) + "\n")
        for i in range(IDS, IDS + 300):
            vec = [float(i) * 0.01 + k for k in range(DIM)]
            f.write(json.dumps({"id": f"n{i:07d}", "vector": vec, "metadata": {"v": 7}}) + "\n")
    w.produce(["--input", s2, "--format", "jsonl"])
    w.wait_ingested(ingest, 3 * IDS + (IDS + 2) // 3 + 300, 120)

    idx2 = w.index(snap)
    base2 = w.http_base(idx2)
    wait_ready(base2, idx2, 60)
    check(boot_source(base2) == "snapshot", f"restart bootstrapped from {boot_source(base2)}, not the snapshot")
    want = stored(w)
    wait_for("the replica to hold PostgreSQL's live count", lambda: stats_count(base2) == len(want), 60,
             alive=[idx2])
    wait_for("every id at its stored version", lambda: not check_replica(base2, want), 60, interval=1,
             alive=[idx2])
    log(f"restart from snapshot: {len(want)} ids, each at its stored version")
    check(env.stop(idx2) == 0, "index did not exit 0 on SIGTERM")


if __name__ == "__main__":
    main(run)
