"""Pieces shared by the `ruvector index` tests and the restart benchmark: a
broker process, a PostgreSQL under pg_ctl, `ruvector ingest` and `ruvector
index` processes over tests/integration/index.yaml, and reading an index
process's endpoints. Run with /usr/bin/python3."""
import json
import os
import re
import urllib.error
import urllib.request

from harness import PgCtl, check, start_broker, wait_for  # noqa: F401

COLLECTION = "idx"


class World:
    def __init__(self, env, partitions=4, dim=16):
        self.env = env
        self.dim = dim
        self.broker, self.bootstrap = start_broker(env, COLLECTION, partitions)
        self.pg = PgCtl(env).start()
        self.topology = os.path.join(env.source_dir, "tests", "integration", "index.yaml")
        self.base_env = {"RV_BOOTSTRAP": self.bootstrap, "RV_PG_DSN": self.pg.conninfo,
                         "RV_DATA_DIR": env.path("data"), "RV_PARTITIONS": str(partitions), "RV_DIM": str(dim)}
        self.n = 0

    def proc_env(self, snap_dir, interval=0):
        e = dict(self.base_env)
        e["RV_SNAP_DIR"] = snap_dir
        e["RV_SNAP_INTERVAL"] = str(interval)
        return e

    def produce(self, args):
        r = self.env.run([self.env.ruvector, "produce", "--brokers", self.bootstrap, "--topic",
                          f"{COLLECTION}.vectors", "-q"] + args, "produce", timeout=600)
        check(r.returncode == 0, f"produce failed: {r.stderr}")

    def ingest(self):
        return self.env.start([self.env.ruvector, "ingest", "--topology", self.topology, "--progress-ms", "200"],
                              "ingest", env=self.proc_env(self.env.path("unused-snap")))

    def wait_ingested(self, ingest, n, timeout):
        def done():
            with open(self.env.path("ingest.log"), errors="replace") as f:
                got = [int(m.group(1)) for m in re.finditer(r"ingested (\d+)", f.read())]
            return got and got[-1] >= n
        wait_for(f"{n} records ingested", done, timeout, interval=0.2, alive=[ingest])

    def index(self, snap_dir, store="postgres", interval=0):
        """Starts `ruvector index`; returns (process, log name, the exact command)."""
        self.n += 1
        name = f"index{self.n}"
        args = [self.env.ruvector, "index", "--topology", self.topology, "--region", "local", "--store", store,
                "--progress-ms", "1000"]
        p = self.env.start(args, name, env=self.proc_env(snap_dir, interval))
        p.log_name = name
        p.command = " ".join(f"{k}={v}" for k, v in self.proc_env(snap_dir, interval).items()) + " " + " ".join(args)
        return p

    def http_base(self, p, timeout=60):
        def url():
            with open(self.env.path(f"{p.log_name}.log"), errors="replace") as f:
                m = re.search(r"^metrics: (http://[^/\s]+)/metrics", f.read(), re.M)
            return m and m.group(1)
        return wait_for(f"{p.log_name} listening", url, timeout, interval=0.005, alive=[p])


def http_status(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(base, p, timeout):
    wait_for(f"{base}/ready", lambda: http_status(base + "/ready")[0] == 200, timeout, interval=0.005, alive=[p])


def metrics(base):
    status, body = http_status(base + "/metrics")
    check(status == 200, f"/metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def boot_source(base, timeout=5):
    """The bootstrap source the metrics report (they are refreshed every 250 ms)."""
    def source():
        for k, v in metrics(base).items():
            if k.startswith("rv_replica_bootstrap_source{") and v == 1 and 'source="none"' not in k:
                return re.search(r'source="([a-z]+)"', k).group(1)
        return None
    return wait_for("rv_replica_bootstrap_source", source, timeout, interval=0.05)


def stats_count(base):
    status, body = http_status(base + "/api/stats")
    check(status == 200, f"/api/stats answered {status}")
    regions = json.loads(body)["collections"][COLLECTION]
    return next(iter(regions.values()))["count"]
