"""Regional replicas converge under SIGKILL: three regions fed one stream.

Regions a and b run one `ruvector index` process each; region c is sharded
into two processes (shard 0/2 and 1/2). One `ruvector ingest` consumes a
100,000-record stream of upserts, updates and deletes (dim 8, random vectors)
published by `ruvector produce` at a steady rate, while every index process
is killed with SIGKILL at random moments (at least 5 times each) and started
again at once (from its snapshot, or PostgreSQL, whichever it finds).

At the end every region holds exactly the ids PostgreSQL holds as not
deleted, each at the stored version (GET /api/replica/versions of each
process; a sharded region is the union of its shards, which must be
disjoint), and recall@10 of 200 searches against exact ground truth over the
final live set is at least 0.95 in each region (the sharded one merged by the
fan-out rule: score, then id). Run with /usr/bin/python3."""
import json
import os
import random
import signal
import socket
import struct
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

from harness import PgCtl, WsClient, check, log, main, start_broker, wait_for  # noqa: E402

COLLECTION = "conv"
DIM = 8
N_RECORDS = 100_000
N_IDS = 30_000
DELETE_SHARE = 0.08
RATE = 2_500           # records/s: the stream lasts ~40 s
KILLS_EACH = 5
PARTITIONS = 8
K = 10
QUERIES = 200


def free_port_block(n):
    """A base port with n consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def write_stream(path, rng):
    """Upserts (new ids, updates of existing ones) and deletes; returns the final {id: vector}."""
    live = {}
    ids = [f"c{i:06d}" for i in range(N_IDS)]
    with open(path, "w") as f:
        for n in range(N_RECORDS):
            rid = ids[n] if n < N_IDS // 2 else rng.choice(ids)
            if rid in live and rng.random() < DELETE_SHARE:
                f.write(json.dumps({"id": rid, "op": "DELETE"}) + "\n")
                del live[rid]
                continue
            vec = [rng.uniform(-1.0, 1.0) for _ in range(DIM)]
            vec = list(struct.unpack(f"<{DIM}f", struct.pack(f"<{DIM}f", *vec)))  # as float32
            f.write(json.dumps({"id": rid, "vector": vec, "metadata": {"n": n, "tag": rid[-1]}}) + "\n")
            live[rid] = vec
    return live


def topology(path, ports):
    with open(path, "w") as f:
        f.write(f"""name: conv
data_dir: ${{RV_DATA_DIR}}
kafka:
  brokers: ${{RV_BOOTSTRAP}}
  partitions: {PARTITIONS}
postgres:
  dsn: ${{RV_PG_DSN}}
redis:
  url: none
collections:
  - name: {COLLECTION}
    dim: {DIM}
    fields:
      - name: tag
ingest:
  batch_rows: 2000
  batch_ms: 20
index:
  snapshot_dir: ${{RV_DATA_DIR}}/snap
  snapshot_interval_s: 1
  max_lag_ms: 3000
regions:
  - name: a
    listen: 127.0.0.1:{ports['a']}
  - name: b
    listen: 127.0.0.1:{ports['b']}
  - name: c
    listen: 127.0.0.1:{ports['c']}
    shards: 2
""")


class Replica:
    def __init__(self, env, topo, proc_env, region, shard, port):
        self.env, self.topo, self.proc_env = env, topo, proc_env
        self.region, self.shard, self.port = region, shard, port
        self.lives = 0
        self.kills = 0
        self.p = None

    @property
    def name(self):
        return f"index-{self.region}{self.shard}"

    def start(self):
        self.lives += 1
        args = [self.env.ruvector, "index", "--topology", self.topo, "--region", self.region,
                "--progress-ms", "1000"]
        if self.region == "c":
            args += ["--shard", f"{self.shard}/2"]
        self.p = self.env.start(args, f"{self.name}-{self.lives}", env=self.proc_env)

    def kill(self):
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()
        self.kills += 1

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, timeout=10):
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return r.status, r.read()

    def versions(self):
        status, body = self.get(f"/api/replica/versions?collection={COLLECTION}", timeout=30)
        check(status == 200, f"{self.name}: /api/replica/versions answered {status}")
        doc = json.loads(body)
        return {rid: (p, o) for rid, p, o in doc["ids"]}

    def ready(self):
        try:
            return self.get("/ready", timeout=2)[0] == 200
        except Exception:
            return False


def stored_versions(pg):
    rows = pg.query(f"SELECT id, src_partition, src_offset FROM {COLLECTION} WHERE deleted_at IS NULL")
    return {rid: (int(p), int(o)) for rid, p, o in rows}


def exact_topk(live_ids, live_vecs, q, k):
    import numpy as np
    d = ((live_vecs - q) ** 2).sum(axis=1)
    order = np.lexsort((live_ids, d))[:k]
    return [live_ids[i] for i in order]


def run(env):
    import numpy as np
    rng = random.Random(20261204)
    broker, bootstrap = start_broker(env, COLLECTION, PARTITIONS)
    pg = PgCtl(env).start()
    ports = {"a": free_port_block(1), "b": free_port_block(1), "c": free_port_block(2)}
    topo = env.path("conv.yaml")
    topology(topo, ports)
    proc_env = {"RV_BOOTSTRAP": bootstrap, "RV_PG_DSN": pg.conninfo, "RV_DATA_DIR": env.path("data")}
    stream = env.path("stream.jsonl")
    live = write_stream(stream, rng)
    log(f"stream: {N_RECORDS} records, {len(live)} ids live at the end")

    ingest = env.start([env.ruvector, "ingest", "--topology", topo, "--progress-ms", "500"], "ingest", env=proc_env)
    replicas = [Replica(env, topo, proc_env, "a", 0, ports["a"]), Replica(env, topo, proc_env, "b", 0, ports["b"]),
                Replica(env, topo, proc_env, "c", 0, ports["c"]), Replica(env, topo, proc_env, "c", 1, ports["c"] + 1)]
    for r in replicas:
        r.start()
    producer = env.start([env.ruvector, "produce", "--brokers", bootstrap, "--topic", f"{COLLECTION}.vectors",
                          "--input", stream, "--format", "jsonl", "--rate", str(RATE), "-q"], "produce")

    # Kill each replica at random moments while the stream flows; restart at once.
    next_kill = {r.name: time.monotonic() + rng.uniform(1.0, 6.0) for r in replicas}
    deadline = time.monotonic() + 240
    while any(r.kills < KILLS_EACH for r in replicas) or producer.poll() is None:
        check(time.monotonic() < deadline, "kills and stream did not finish in 240 s")
        check(ingest.poll() is None and broker.poll() is None, "ingest or broker exited")
        now = time.monotonic()
        for r in replicas:
            if r.kills < KILLS_EACH and now >= next_kill[r.name]:
                r.kill()
                log(f"killed {r.name} (kill {r.kills}, stream {'running' if producer.poll() is None else 'done'})")
                r.start()
                next_kill[r.name] = now + rng.uniform(2.0, 7.0)
        time.sleep(0.05)
    check(producer.wait() == 0, "ruvector produce failed")
    log("stream published; every replica killed %s times" % [r.kills for r in replicas])

    # Everything committed: PostgreSQL's live set equals the stream's.
    def pg_done():
        try:
            return set(stored_versions(pg)) == set(live)
        except Exception:
            return False
    wait_for("PostgreSQL to hold the stream's live ids", pg_done, 180, interval=0.5, alive=[ingest])
    want = stored_versions(pg)

    for region, members in (("a", replicas[0:1]), ("b", replicas[1:2]), ("c", replicas[2:4])):
        def region_versions():
            got = {}
            for m in members:
                v = m.versions()
                overlap = set(v) & set(got)
                check(not overlap, f"region {region}: shards overlap on {len(overlap)} ids, e.g. {sorted(overlap)[:3]}")
                got.update(v)
            return got

        def converged():
            try:
                return region_versions() == want
            except Exception:
                return False
        wait_for(f"region {region} to hold PostgreSQL's live ids at their stored versions", converged, 120,
                 interval=1.0, alive=[m.p for m in members])
        log(f"region {region}: {len(want)} ids at their stored versions")

    # recall@10 against exact ground truth over the final live set
    live_ids = np.array(sorted(live))
    live_vecs = np.array([live[i] for i in live_ids], dtype=np.float32)
    qrng = np.random.default_rng(7)
    queries = qrng.uniform(-1, 1, size=(QUERIES, DIM)).astype(np.float32)
    truth = [exact_topk(live_ids, live_vecs, q, K) for q in queries]
    for region, members in (("a", replicas[0:1]), ("b", replicas[1:2]), ("c", replicas[2:4])):
        clients = [WsClient(f"ws://127.0.0.1:{m.port}/") for m in members]
        hit = 0
        for q, t in zip(queries, truth):
            merged = []
            for c in clients:
                merged += c.search(COLLECTION, [float(x) for x in q], k=K, ef=64)["hits"]
            merged.sort(key=lambda h: (h["score"], h["id"]))
            hit += len({h["id"] for h in merged[:K]} & set(t))
        for c in clients:
            c.close()
        recall = hit / (K * QUERIES)
        log(f"region {region}: recall@{K} = {recall:.4f}")
        check(recall >= 0.95, f"region {region}: recall@{K} {recall:.4f} < 0.95")

    for r in replicas:
        check(env.stop(r.p) == 0, f"{r.name} did not exit 0 on SIGTERM")
    check(env.stop(ingest) == 0, "ingest did not exit 0 on SIGTERM")


if __name__ == "__main__":
    main(run)
