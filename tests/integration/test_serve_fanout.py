"""`ruvector serve` fanning out to `ruvector index` processes: 3,000 records
with metadata (a keyword and a number field) go through a broker process,
`ruvector ingest` and PostgreSQL; region "split" is served by two index
processes (--shard 0/2 and 1/2), region "whole" by one; one `ruvector serve`
serves both. For 30 plain and 30 filtered searches the fan-out answer of the
split region equals the whole region's exactly (ids, scores, order; both
through the same serve) with "partial": false, and matches exact neighbours
computed here. Then a shard is SIGKILLed: the reply is partial, names it,
holds exactly the surviving shard's hits and comes within the shard
deadline; /ready stays 200 while every region has a shard, and turns 503 when
a region has none. A region with listen port 0 is refused with exit 78."""
import os
import re
import signal
import socket
import time

import numpy as np

from harness import PgCtl, WsClient, check, log, main, start_broker, wait_for
from index_world import http_status, metrics

N = 3000
DIM = 16
K = 10
EF = 4000  # above the records of any replica: the beam covers the whole graph, so answers are exact
CLASSES = ["red", "green", "blue", "cyan", "plum"]
SHARD_TIMEOUT_MS = 1000


def free_port_run(n):
    """A port p with p..p+n-1 free on 127.0.0.1 (bound and released)."""
    for _ in range(200):
        base = 20000 + int.from_bytes(os.urandom(2), "little") % 40000
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


def logged(env, name, pattern, p, timeout=60):
    def find():
        with open(env.path(f"{name}.log"), errors="replace") as f:
            m = re.search(pattern, f.read(), re.M)
        return m and m.group(1)
    return wait_for(f"{name}: /{pattern}/", find, timeout, interval=0.02, alive=[p])


def hits_of(reply):
    return [(h["id"], h["score"]) for h in reply["hits"]]


def run(env):
    rng = np.random.default_rng(7)
    vecs = rng.integers(-64, 64, size=(N, DIM)).astype(np.float64) / 8.0  # exact in float32
    ids = [f"f{i:05d}" for i in range(N)]
    cls = [CLASSES[i % len(CLASSES)] for i in range(N)]
    num = [i % 100 for i in range(N)]
    data = env.path("data.jsonl")
    with open(data, "w") as f:
        for i in range(N):
            f.write('{"id":"%s","vector":[%s],"metadata":{"class":"%s","n":%d}}\n'
                    % (ids[i], ",".join(repr(float(x)) for x in vecs[i]), cls[i], num[i]))

    broker, bootstrap = start_broker(env, "fan", 4)
    pg = PgCtl(env).start()
    port = free_port_run(3)
    topo = os.path.join(env.source_dir, "tests", "integration", "serve.yaml")
    penv = {"RV_BOOTSTRAP": bootstrap, "RV_PG_DSN": pg.conninfo, "RV_DATA_DIR": env.path("data"),
            "RV_SPLIT_PORT": str(port), "RV_WHOLE_PORT": str(port + 2)}

    # A region without a fixed port cannot be fanned out to.
    r = env.run([env.ruvector, "serve", "--topology", os.path.join(env.source_dir, "tests", "integration",
                                                                     "index.yaml")], "serve-port0",
                env={"RV_BOOTSTRAP": bootstrap, "RV_PG_DSN": pg.conninfo, "RV_DATA_DIR": env.path("data"),
                     "RV_SNAP_DIR": env.path("snap")}, timeout=30)
    check(r.returncode == 78 and "listen port is 0" in r.stderr and "regions[0] (local)" in r.stderr,
          f"serve with a port-0 region: exit {r.returncode}, stderr {r.stderr!r}")

    ingest = env.start([env.ruvector, "ingest", "--topology", topo, "--progress-ms", "200"], "ingest", env=penv)
    r = env.run([env.ruvector, "produce", "--brokers", bootstrap, "--topic", "fan.vectors", "--input", data,
                 "--format", "jsonl", "-q"], "produce", timeout=120)
    check(r.returncode == 0, f"produce exited {r.returncode}")

    def ingested():
        with open(env.path("ingest.log"), errors="replace") as f:
            got = [int(m.group(1)) for m in re.finditer(r"ingested (\d+)", f.read())]
        return got and got[-1] >= N
    wait_for(f"{N} records ingested", ingested, 90, interval=0.2, alive=[ingest])

    idx = {}
    for name, args in (("split0", ["--region", "split", "--shard", "0/2"]),
                       ("split1", ["--region", "split", "--shard", "1/2"]),
                       ("whole", ["--region", "whole"])):
        idx[name] = env.start([env.ruvector, "index", "--topology", topo, "--progress-ms", "500"] + args, name,
                              env=penv)
    want_port = {"split0": port, "split1": port + 1, "whole": port + 2}
    for name, p in idx.items():
        url = logged(env, name, r"^listening: (ws://\S+)", p)
        check(url == f"ws://127.0.0.1:{want_port[name]}/", f"{name} listens at {url}")
    for name, p in idx.items():
        base = f"http://127.0.0.1:{want_port[name]}"
        wait_for(f"{name} ready", lambda: http_status(base + "/ready")[0] == 200, 90, interval=0.05, alive=[p])

    def counts():
        out = {}
        for name in idx:
            m = metrics(f"http://127.0.0.1:{want_port[name]}")
            out[name] = int(sum(v for k, v in m.items() if k.startswith("rv_replica_vectors{")))
        return out
    wait_for(f"every record in both regions", lambda: (lambda c: c["split0"] + c["split1"] == N and c["whole"] == N
                                                       and c["split0"] and c["split1"])(counts()), 90, interval=0.2)
    log(f"index processes hold {counts()}")

    serve = env.start([env.ruvector, "serve", "--topology", topo, "--shard-timeout-ms", str(SHARD_TIMEOUT_MS),
                       "--progress-ms", "500"], "serve", env=penv)
    ws_url = logged(env, "serve", r"^listening: (ws://\S+)", serve)
    http = ws_url.replace("ws://", "http://").rstrip("/")
    check(http_status(http + "/health")[0] == 200, "serve /health")
    wait_for("serve /ready", lambda: http_status(http + "/ready")[0] == 200, 30, interval=0.05, alive=[serve])
    check(http_status(http + "/startup")[0] == 200, "serve /startup")
    up = ('rv_serve_shard_up{region="split",shard="0/2"}', 'rv_serve_shard_up{region="split",shard="1/2"}',
          'rv_serve_shard_up{region="whole",shard="0/1"}', "rv_serve_ready")
    wait_for("every shard up in the serve metrics", lambda: all(metrics(http).get(k) == 1 for k in up), 5,
             interval=0.05, alive=[serve])

    ws = WsClient(ws_url)
    queries = rng.integers(-64, 64, size=(30, DIM)).astype(np.float64) / 8.0
    filters = [({"class": "blue"}, lambda i: cls[i] == "blue"),
               ({"class": {"in": ["red", "plum"]}, "n": {"lt": 50}}, lambda i: cls[i] in ("red", "plum") and num[i] < 50),
               ({"n": {"gte": 10, "lte": 12}}, lambda i: 10 <= num[i] <= 12)]

    def exact(q, match):
        sel = [i for i in range(N) if match(i)]
        d = ((vecs[sel] - q) ** 2).sum(axis=1)
        order = sorted(range(len(sel)), key=lambda j: (d[j], ids[sel[j]]))[:K]
        return [ids[sel[j]] for j in order], [float(d[j]) for j in order]

    def compare(q, flt, match, what):
        extra = {"ef": EF}
        if flt is not None:
            extra["filter"] = flt
        a = ws.search("fan", q, k=K, region="split", **extra)
        b = ws.search("fan", q, k=K, region="whole", **extra)
        check(a.get("type") == "results" and b.get("type") == "results", f"{what}: {a} / {b}")
        check(a.get("partial") is False and b.get("partial") is False, f"{what}: partial {a.get('partial')}, "
              f"{b.get('partial')}: {a} / {b}")
        check(hits_of(a) == hits_of(b), f"{what}: split {hits_of(a)} != whole {hits_of(b)}")
        want_ids, want_d = exact(q, match)
        check(len(a["hits"]) == K, f"{what}: {len(a['hits'])} hits")
        got_d = [float(h["score"]) for h in a["hits"]]
        check(all(abs(x - y) <= 1e-4 * max(1.0, y) for x, y in zip(got_d, want_d)),
              f"{what}: scores {got_d} != exact {want_d} (ids {want_ids})")
        check(all(match(ids.index(h["id"])) for h in a["hits"]), f"{what}: a hit outside the filter")

    for qi, q in enumerate(queries):
        compare(q, None, lambda i: True, f"plain search {qi}")
    for qi, q in enumerate(queries):
        flt, match = filters[qi % len(filters)]
        compare(q, flt, match, f"filtered search {qi} {flt}")
    log("30 plain and 30 filtered searches: split (2 shards) == whole, exact, partial false")

    # A shard dies: partial replies that name it, with the other shard's hits.
    direct0 = WsClient(f"ws://127.0.0.1:{port}/")
    idx["split1"].send_signal(signal.SIGKILL)
    idx["split1"].wait()
    log("shard 1/2 SIGKILLed")
    for qi, q in enumerate(queries[:10]):
        t0 = time.monotonic()
        a = ws.search("fan", q, k=K, region="split", ef=EF)
        took = time.monotonic() - t0
        check(a.get("type") == "results" and a.get("partial") is True and a.get("missing_shards") == [1],
              f"after the kill, search {qi}: {a}")
        check(took < SHARD_TIMEOUT_MS / 1000 + 1.0, f"partial reply took {took:.2f}s")
        d = direct0.search("fan", q, k=K, ef=EF)
        check(hits_of(a) == hits_of(d), f"partial hits {hits_of(a)} != shard 0's own {hits_of(d)}")
        b = ws.search("fan", q, k=K, region="whole", ef=EF)
        check(b.get("partial") is False and len(b["hits"]) == K, f"whole region after the kill: {b}")
    log(f"partial replies name shard 1 ({a.get('shard_errors')}) and hold shard 0's hits")
    wait_for("rv_serve_shard_up of shard 1 at 0",
             lambda: metrics(http).get('rv_serve_shard_up{region="split",shard="1/2"}') == 0, 10, interval=0.1)
    check(http_status(http + "/ready")[0] == 200, "/ready while each region still has a shard")
    env.stop(idx["whole"])
    wait_for("/ready 503 once region whole has no shard", lambda: http_status(http + "/ready")[0] == 503, 10,
             interval=0.1, alive=[serve])
    b = ws.search("fan", queries[0], k=K, region="whole")
    check(b.get("type") == "results" and b.get("partial") is True and b.get("missing_shards") == [0]
          and b["hits"] == [], f"whole region with its only shard gone: {b}")
    ws.close()
    direct0.close()
    check(env.stop(serve) == 0, "serve exit code after SIGTERM")
    for name in ("split0",):
        check(env.stop(idx[name]) == 0, f"{name} exit code after SIGTERM")
    check(env.stop(ingest) == 0, "ingest exit code after SIGTERM")
    check(env.stop(broker) == 0, "broker exit code after SIGTERM")


if __name__ == "__main__":
    main(run)
