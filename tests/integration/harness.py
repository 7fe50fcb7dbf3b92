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
        self.cleanups = []  # callables close() runs after stopping the processes, last added first

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
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep cleaning up
                print(f"cleanup failed: {e}", file=sys.stderr)
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


# ---- fault tests: PostgreSQL under pg_ctl, streams with versions, the changelog read back ----

PG_BIN = os.environ.get("RV_PG_BINDIR", "/usr/lib/postgresql/15/bin")


class PgCtl:
    """A private PostgreSQL 15 in env.dir/pg driven with pg_ctl, the way an
    operator would (so a test can `pg_ctl restart -m immediate` it). Unix
    socket only; run as the 'postgres' user when we are root (PostgreSQL
    refuses root). env.close() stops it."""

    def __init__(self, env):
        import pwd
        self.env = env
        self.base = env.path("pg")
        self.data = os.path.join(self.base, "data")
        self.sock = os.path.join(self.base, "run")
        self.logfile = env.path("postgres.log")
        self.as_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        for d in (self.base, self.sock):
            os.makedirs(d, exist_ok=True)
        open(self.logfile, "a").close()
        if self.as_user:
            for p in (self.base, self.sock, self.logfile):
                os.chown(p, self.as_user.pw_uid, self.as_user.pw_gid)
        self.conninfo = f"host={self.sock} port=5432 dbname=ruvector user=ruvector"
        env.cleanups.append(self.stop)

    def _demote(self):
        if self.as_user:
            os.setgid(self.as_user.pw_gid)
            os.setuid(self.as_user.pw_uid)

    def ctl(self, *args, timeout=120):
        r = subprocess.run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data] + list(args), capture_output=True,
                           text=True, timeout=timeout, preexec_fn=self._demote, cwd=self.base)
        log(f"pg_ctl {' '.join(args)}: exit {r.returncode}")
        check(r.returncode == 0, f"pg_ctl {' '.join(args)} failed: {r.stdout} {r.stderr}")

    def start(self):
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            r = subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "ruvector", "--auth=trust",
                                "-E", "UTF8", "--no-locale", "--no-sync"], capture_output=True, text=True,
                               timeout=120, preexec_fn=self._demote, cwd=self.base)
            check(r.returncode == 0, f"initdb failed: {r.stdout} {r.stderr}")
        # fsync off: these tests crash processes, not the machine, so the page cache survives them.
        self.ctl("start", "-w", "-t", "60", "-l", self.logfile, "-o",
                 f"-k {self.sock} -c listen_addresses='' -c fsync=off -c max_connections=60")
        if psql(self.conninfo.replace("dbname=ruvector", "dbname=postgres"),
                "SELECT count(*) FROM pg_database WHERE datname = 'ruvector'") == "0":
            psql(self.conninfo.replace("dbname=ruvector", "dbname=postgres"), "CREATE DATABASE ruvector")
        return self

    def restart_immediate(self):
        """Crash-stops the server (no checkpoint, clients cut off) and starts it again: crash recovery."""
        self.ctl("restart", "-m", "immediate", "-w", "-t", "60", "-l", self.logfile, "-o",
                 f"-k {self.sock} -c listen_addresses='' -c fsync=off -c max_connections=60")

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self.ctl("stop", "-m", "fast", "-w", "-t", "60")

    def query(self, sql, params=None):
        import psycopg2
        with psycopg2.connect(self.conninfo) as c, c.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else None
        c.close()
        return rows


def start_broker(env, collection, partitions, name="broker"):
    """`ruvector broker` with collection's three topics; returns (process, bootstrap)."""
    bootstrap_file = env.path(f"{name}.bootstrap")
    broker = env.start([env.ruvector, "broker", "--collection", f"{collection}:{partitions}",
                        "--bootstrap-file", bootstrap_file], name)
    bootstrap = wait_for("broker bootstrap file", lambda: open(bootstrap_file).read().strip(), 30, alive=[broker])
    return broker, bootstrap


def write_versioned_stream(path, n_records, n_ids, dim, seed=1, prefix="r"):
    """Writes n_records JSON lines over n_ids ids (each id at least once): every
    id's k-th record has metadata {"v": k} and a vector that depends on (id, k);
    the versions of an id are interleaved with everything else. Returns
    {id: (latest k, latest vector bytes as float32 LE)}."""
    import random
    rng = random.Random(seed)
    seq = list(range(n_ids)) + [rng.randrange(n_ids) for _ in range(n_records - n_ids)]
    rng.shuffle(seq)
    count = [0] * n_ids
    with open(path, "w") as f:
        for i in seq:
            count[i] += 1
            k = count[i]
            vec = [float(i % 1000) + k * 0.5 + j * 0.25 for j in range(dim)]  # exact in float32
            f.write(json.dumps({"id": f"{prefix}{i:07d}", "vector": vec, "metadata": {"v": k}}) + "\n")
    latest = {}
    for i in range(n_ids):
        k = count[i]
        vec = [float(i % 1000) + k * 0.5 + j * 0.25 for j in range(dim)]
        latest[f"{prefix}{i:07d}"] = (k, struct.pack(f"<{dim}f", *vec))
    return latest


def _avro_long(b, pos):
    shift = n = 0
    while True:
        byte = b[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (n >> 1) ^ -(n & 1), pos


def _avro_bytes(b, pos):
    n, pos = _avro_long(b, pos)
    return b[pos:pos + n], pos + n


def decode_change(b):
    """Decodes one changelog record (schemas/changelog_record.avsc, plain Avro)."""
    c = {}
    raw, pos = _avro_bytes(b, 0)
    c["id"] = raw.decode()
    op, pos = _avro_long(b, pos)
    c["op"] = ("UPSERT", "DELETE")[op]
    c["partition"], pos = _avro_long(b, pos)
    c["offset"], pos = _avro_long(b, pos)
    branch, pos = _avro_long(b, pos)
    c["vector"] = None
    if branch == 1:
        vec = bytearray()
        while True:
            n, pos = _avro_long(b, pos)
            if n == 0:
                break
            if n < 0:
                n = -n
                _, pos = _avro_long(b, pos)  # block size in bytes
            vec += b[pos:pos + 4 * n]
            pos += 4 * n
        c["vector"] = bytes(vec)
    branch, pos = _avro_long(b, pos)
    c["sq8"] = None
    if branch == 1:
        version, pos = _avro_long(b, pos)
        code, pos = _avro_bytes(b, pos)
        c["sq8"] = (version, code)
    branch, pos = _avro_long(b, pos)
    c["attributes"] = None
    if branch == 1:
        raw, pos = _avro_bytes(b, pos)
        c["attributes"] = raw.decode()
    branch, pos = _avro_long(b, pos)
    c["event_time"] = None
    if branch == 1:
        c["event_time"], pos = _avro_long(b, pos)
    c["created_at"], pos = _avro_long(b, pos)
    branch, pos = _avro_long(b, pos)
    c["traceparent"] = None
    if branch == 1:
        raw, pos = _avro_bytes(b, pos)
        c["traceparent"] = raw.decode()
    check(pos == len(b), f"changelog record of {c['id']}: {len(b) - pos} trailing byte(s)")
    return c


# Ingest's position markers on the changelog carry this Kafka header
# (common/rv_record.h RV_KIND_HEADER = RV_KIND_POSITION): readers of changes skip them.
MARKER_HEADER = b"rv-kind=position"


def kcat_read(bootstrap, topic, timeout=180, markers=False):
    """Every message of every partition of topic, from the beginning to the
    end: [(partition, offset, key bytes or None, value bytes or None)], read
    with kcat (an independent client). Position markers (told by their
    rv-kind header) are left out unless markers is set; then each tuple has a
    fifth item, 1 for a marker and 0 for anything else."""
    r = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-f", "%p %o %K %S\t%h\n%k%s"], capture_output=True, timeout=timeout)
    check(r.returncode == 0, f"kcat -C {topic} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    out, pos, msgs = r.stdout, 0, []
    while pos < len(out):
        nl = out.index(b"\n", pos)
        head, _, hdrs = out[pos:nl].partition(b"\t")
        p, o, klen, vlen = (int(x) for x in head.split())
        marker = MARKER_HEADER in hdrs.split(b",")
        pos = nl + 1
        key = out[pos:pos + klen] if klen >= 0 else None
        pos += max(klen, 0)
        val = out[pos:pos + vlen] if vlen >= 0 else None
        pos += max(vlen, 0)
        if markers:
            msgs.append((p, o, key, val, int(marker)))
        elif not marker:
            msgs.append((p, o, key, val))
    return msgs


def check_exactly_once(pg, table, latest, bootstrap, changelog_topic):
    """The final state after a fault test: the table holds exactly the
    produced ids, once each, each with its latest version (metadata v and
    vector); the outbox is empty; the changelog holds every id, and each id's
    newest change there is the very version stored in PostgreSQL (so nothing
    was published that was not committed later overwritten, and nothing
    committed is missing). Returns the number of changelog messages."""
    rows = pg.query(f"SELECT id, (metadata->>'v')::int, vector, src_partition, src_offset, deleted_at IS NULL "
                    f"FROM {table}")
    check(len(rows) == len(latest), f"{table} holds {len(rows)} rows, {len(latest)} ids were produced")
    stored = {}
    for rid, v, vec, part, off, live in rows:
        check(rid not in stored, f"{rid} is stored twice")
        check(rid in latest, f"{rid} is stored but was never produced")
        want_v, want_vec = latest[rid]
        check(live, f"{rid} is deleted")
        check(v == want_v, f"{rid}: stored version v={v}, the latest produced is v={want_v}")
        check(bytes(vec) == want_vec, f"{rid}: stored vector is not the latest produced")
        stored[rid] = (part, off)
    n_outbox = pg.query(f"SELECT count(*) FROM {table}_outbox")[0][0]
    check(n_outbox == 0, f"{n_outbox} change(s) left in {table}_outbox")
    newest = {}
    msgs = kcat_read(bootstrap, changelog_topic)
    for _, _, key, val in msgs:
        check(val is not None, f"changelog message with key {key!r} has no value")
        c = decode_change(val)
        check(key == c["id"].encode(), f"changelog key {key!r} != id {c['id']}")
        ver = (c["partition"], c["offset"])
        if c["id"] not in newest or ver > newest[c["id"]][0]:
            newest[c["id"]] = (ver, c)
    missing = [rid for rid in latest if rid not in newest]
    check(not missing, f"{len(missing)} id(s) never reached the changelog, e.g. {missing[:5]}")
    extra = [rid for rid in newest if rid not in latest]
    check(not extra, f"changelog has ids never produced: {extra[:5]}")
    for rid, (ver, c) in newest.items():
        check(ver == stored[rid], f"{rid}: newest changelog version {ver}, PostgreSQL holds {stored[rid]}")
        want_v, want_vec = latest[rid]
        check(c["op"] == "UPSERT" and c["vector"] == want_vec and json.loads(c["attributes"])["v"] == want_v,
              f"{rid}: newest change is not the latest version (v={want_v})")
    log(f"exactly-once check passed: {len(rows)} rows, {len(msgs)} changelog messages for {len(newest)} ids")
    return len(msgs)


def parse_stats(line):
    """{'consumed': n, ...} from an ingest progress/stopped line."""
    words = line.split(":", 1)[1].split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2) if words[i + 1].isdigit()}


def last_stats(path, kind="progress"):
    """The stats of the last `kind` line ("progress" or "stopped") in an ingest log, or None."""
    try:
        with open(path, errors="replace") as f:
            lines = [l for l in f if l.startswith(kind + " ")]
    except OSError:
        return None
    return parse_stats(lines[-1]) if lines else None


# ---- Avro binary encoding, written from the Avro specification (not from
# Avro-C), so tests check the decoder against an independent encoder.

def zigzag(n):
    """An Avro long: zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def avro_string(s):
    b = s.encode()
    return zigzag(len(b)) + b


def encode_vector_record(rid, vec, metadata):
    """io.ruvector.VectorRecord per schemas/vector_record.avsc: id, op UPSERT,
    the vector (union branch 1: array of float), metadata (branch 1: string),
    event_time null."""
    out = avro_string(rid) + zigzag(0)  # op = UPSERT (enum index 0)
    out += zigzag(1) + zigzag(len(vec)) + struct.pack(f"<{len(vec)}f", *vec) + zigzag(0)
    out += zigzag(1) + avro_string(metadata)
    out += zigzag(0)
    return out
