"""Shared pieces of the integration tests: a temporary directory, child
processes that are always stopped (even when a test fails), polling with
deadlines, and the independent clients (HTTP, WebSocket, Fashion-MNIST reader).

Run with /usr/bin/python3: it sees Debian's numpy and websocket-client."""
import ctypes
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist"

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """Runs in the child before exec: if this test process is killed (a ctest
    timeout sends SIGKILL), the child gets SIGTERM instead of living on."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what, fn, timeout, interval=0.1, alive=()):
    """Polls fn until it returns a truthy value; fails with `what` after timeout
    seconds, or at once when one of the processes in `alive` has exited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in alive:
            if p.poll() is not None:
                raise TestFailure(f"{p.rv_name} exited with {p.returncode} while waiting for {what}")
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError) as e:  # server not up yet
            last = e
        time.sleep(interval)
    raise TestFailure(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Env:
    """A temporary directory plus the processes started in it; close() stops them all."""

    def __init__(self, ruvector, source_dir):
        self.ruvector = ruvector
        self.source_dir = source_dir
        self.dir = tempfile.mkdtemp(prefix="rv-it-")
        os.chmod(self.dir, 0o755)  # the embedded PostgreSQL runs as 'postgres' when we are root
        self.procs = []

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def start(self, args, name, env=None):
        out = open(self.path(f"{name}.log"), "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                             cwd=self.dir, start_new_session=True, preexec_fn=_die_with_parent)
        p.rv_name = name
        self.procs.append(p)
        log(f"started {name} (pid {p.pid}): {' '.join(args)}")
        return p

    def run(self, args, name, timeout=300, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=self.dir)
        log(f"{name} exited {r.returncode}")
        if r.returncode != 0:
            print(r.stdout, r.stderr, sep="\n", file=sys.stderr)
        return r

    def stop(self, p, timeout=60):
        """SIGTERM and wait; returns the exit code (fails the test if it hangs)."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise TestFailure(f"{p.rv_name} did not stop within {timeout}s of SIGTERM")
        return p.returncode

    def start_pipeline(self, topology, collection, partitions=3, extra_args=(), endpoints_env=None):
        """Starts `ruvector broker` (collection's topics) and `ruvector pipeline
        run topology` with RV_BOOTSTRAP, RV_DATA_DIR and RV_ENDPOINTS set, and
        waits for the endpoints file. Returns (broker, pipeline, endpoints dict)."""
        bootstrap_file = self.path("bootstrap")
        broker = self.start([self.ruvector, "broker", "--collection", f"{collection}:{partitions}",
                             "--bootstrap-file", bootstrap_file], "broker")
        bootstrap = wait_for("broker bootstrap file", lambda: open(bootstrap_file).read().strip(), 30,
                             alive=[broker])
        endpoints_file = self.path("endpoints.json")
        env = {"RV_BOOTSTRAP": bootstrap, "RV_DATA_DIR": self.path("data"),
               "RV_ENDPOINTS": endpoints_env or endpoints_file}
        pipeline = self.start([self.ruvector, "pipeline", "run", topology] + list(extra_args), "pipeline", env=env)
        ep = wait_for("endpoints file", lambda: os.path.exists(endpoints_file) and read_endpoints(endpoints_file),
                      90, alive=[pipeline, broker])
        check(ep["kafka"]["bootstrap"] == bootstrap, f"endpoints bootstrap {ep['kafka']['bootstrap']} != {bootstrap}")
        return broker, pipeline, ep

    def close(self, keep_logs_on_failure=False):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        # Servers die with their parent (parent-death signal); make sure of it.
        for pidfile in (self.path("data", "pg", "data", "postmaster.pid"),):
            try:
                pid = int(open(pidfile).readline())
                os.kill(pid, signal.SIGQUIT)
            except (OSError, ValueError):
                pass
        if keep_logs_on_failure:
            for name in sorted(os.listdir(self.dir)):
                if name.endswith(".log"):
                    print(f"----- {name} (last 60 lines)", file=sys.stderr)
                    with open(self.path(name), errors="replace") as f:
                        print("".join(f.readlines()[-60:]), file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def read_endpoints(path):
    with open(path) as f:
        return json.load(f)


def collection_count(http_url, collection, region="local"):
    stats = http_json(http_url.rstrip("/") + "/api/stats")
    return stats["collections"][collection][region]["count"]


def load_idx_images(path, n=None):
    """Reads an IDX image file (gzipped) with nothing but the format's definition."""
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        check(magic == 0x803, f"bad IDX magic {magic:#x}")
        n = count if n is None else min(n, count)
        data = np.frombuffer(f.read(n * rows * cols), dtype=np.uint8)
    return data.reshape(n, rows * cols).astype(np.float64)


def load_idx_labels(path, n=None):
    with gzip.open(path, "rb") as f:
        magic, count = struct.unpack(">II", f.read(8))
        check(magic == 0x801, f"bad IDX magic {magic:#x}")
        n = count if n is None else min(n, count)
        return np.frombuffer(f.read(n), dtype=np.uint8)


def exact_knn(base, ids, queries, k):
    """Exact k nearest by squared L2 in float64; returns [(ids, distances)] per query."""
    out = []
    for q in queries:
        d = ((base - q) ** 2).sum(axis=1)
        order = sorted(range(len(ids)), key=lambda i: (d[i], ids[i]))[:k]
        out.append(([ids[i] for i in order], [d[i] for i in order]))
    return out


def same_neighbours(got_ids, want_ids, want_dist, dist_of):
    """True when the id lists are identical, allowing only swaps between exactly tied distances."""
    if got_ids == want_ids:
        return True
    if len(got_ids) != len(want_ids):
        return False
    got_d = [dist_of(i) for i in got_ids]
    return all(abs(a - b) <= 1e-6 * max(1.0, b) for a, b in zip(got_d, want_dist))


class WsClient:
    def __init__(self, url):
        import websocket  # python3-websocket (websocket-client)
        self.ws = websocket.create_connection(url, subprotocols=["rv.v1"], timeout=30)
        self.n = 0

    def request(self, msg):
        self.n += 1
        msg = dict(msg)
        msg.setdefault("id", f"r{self.n}")
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg["id"] or reply.get("type") == "error" and reply.get("id") is None:
                return reply

    def search(self, collection, vector, k=10, **extra):
        req = {"type": "search", "collection": collection, "vector": [float(x) for x in vector], "k": k}
        req.update(extra)
        return self.request(req)

    def close(self):
        self.ws.close()


def psql(conninfo, sql):
    r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, f"psql failed: {r.stderr}")
    return r.stdout.strip()


def main(test_fn):
    """Runs test_fn(env) with argv --ruvector PATH --source-dir DIR; exit 1 on failure."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--ruvector", required=True)
    ap.add_argument("--source-dir", required=True)
    a = ap.parse_args()
    env = Env(os.path.abspath(a.ruvector), os.path.abspath(a.source_dir))
    ok = False
    try:
        test_fn(env)
        ok = True
    except Exception as e:  # report, show logs, fail
        import traceback
        traceback.print_exc()
        print(f"FAILED: {e}", file=sys.stderr)
    finally:
        env.close(keep_logs_on_failure=not ok)
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
    sys.exit(0 if ok else 1)
