"""`ruvector ingest --metrics-listen`: the ingest-only process serves its own
registry. A broker process and a PostgreSQL under pg_ctl (faultlib); one
ingest listening on 127.0.0.1:0. Asserts: it prints the chosen URL; GET
/health is 200 "ok"; GET /metrics is text/plain 0.0.4 and its
rv_ingest_records_ingested_total reaches the produced count while
rv_ingest_records_dead_lettered_total{reason=} counts the bad records by
reason, with consumed = good + bad; an unknown path is 404 and another
method is 405 with "Allow: GET"; a malformed address is a usage error (2)
and a port in use fails the start (1); SIGTERM still exits 0 with the
final stats, and the listener is closed afterwards."""
import http.client
import re
import subprocess
import urllib.parse

from faultlib import COLLECTION, DIM, SESSION_TIMEOUT_MS, SOURCE, Fault, check, log, main, wait_for
from harness import encode_vector_record as encode

N_GOOD = 3000
# (expected reason, Avro value) of each bad record
BAD = [("wrong_dim", encode("bad-dim-1", [1.0] * (DIM - 1), "{}")),
       ("wrong_dim", encode("bad-dim-2", [1.0] * (DIM + 3), "{}")),
       ("wrong_dim", encode("bad-dim-3", [1.0], "{}")),
       ("bad_metadata", encode("bad-meta-1", [0.5] * DIM, "[1,2,3]")),
       ("bad_metadata", encode("bad-meta-2", [0.5] * DIM, '"a string"'))]


def start_ingest(f, name, listen):
    p = f.env.start([f.env.ruvector, "ingest", "--topology", f.topology, "--session-timeout-ms",
                     str(SESSION_TIMEOUT_MS), "--progress-ms", "100", "--metrics-listen", listen], name,
                    env=f.proc_env)
    p.log_path = f.env.path(f"{name}.log")
    return p


def metrics_url(p, timeout=60):
    def find():
        with open(p.log_path, errors="replace") as fh:
            m = re.search(r"^metrics: (http://\S+)$", fh.read(), re.M)
        return m.group(1) if m else None
    return wait_for(f"{p.rv_name}: the metrics line", find, timeout, interval=0.05, alive=[p])


def request(base, method, path, body=None):
    """(status, headers dict with lower-case names, body text) of one request on a new connection."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
    finally:
        conn.close()


def metric_value(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def scrape(base):
    status, headers, text = request(base, "GET", "/metrics")
    check(status == 200, f"GET /metrics: status {status}, want 200")
    return headers, text


def run(env):
    # Bad addresses are usage errors, before anything starts.
    for bad in ("127.0.0.1", "127.0.0.1:70000", ":9464", "[::1:9464"):
        r = subprocess.run([env.ruvector, "ingest", "--topology", "x.yaml", "--metrics-listen", bad],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 2, f"--metrics-listen {bad!r}: exit {r.returncode}, want 2 ({r.stderr.strip()})")
        check("--metrics-listen" in r.stderr, f"--metrics-listen {bad!r}: stderr does not say why: {r.stderr!r}")
    help_text = subprocess.run([env.ruvector, "ingest", "--help"], capture_output=True, text=True, timeout=30).stdout
    check("--metrics-listen HOST:PORT" in help_text, "ingest --help does not document --metrics-listen")

    f = Fault(env, partitions=4)
    p = start_ingest(f, "ingest1", "127.0.0.1:0")
    base = metrics_url(p)
    u = urllib.parse.urlsplit(base)
    check(u.hostname == "127.0.0.1" and u.port and u.port > 0 and u.path == "/metrics", f"metrics URL {base}")
    log(f"metrics at {base}")

    status, _, body = request(base, "GET", "/health")
    check((status, body.strip()) == (200, "ok"), f"GET /health: {status} {body!r}, want 200 'ok'")
    for method, path, body in (("GET", "/", None), ("GET", "/metricsx", None), ("GET", "/api/stats", None),
                               ("POST", "/nope", "x=1")):
        status, _, _ = request(base, method, path, body)
        check(status == 404, f"{method} {path}: status {status}, want 404")
    for method, path, body in (("POST", "/metrics", "x=1"), ("PUT", "/health", "{}"), ("DELETE", "/metrics", None)):
        status, headers, _ = request(base, method, path, body)
        check(status == 405, f"{method} {path}: status {status}, want 405")
        check(headers.get("allow") == "GET", f"{method} {path}: Allow {headers.get('allow')!r}, want 'GET'")
    status, _, _ = request(base, "GET", "/metrics?name=x")
    check(status == 200, f"GET /metrics?name=x: status {status}, want 200 (the query is not part of the path)")
    log("/health 200, unknown paths 404, other methods 405")

    # A second ingest on the same port cannot start: exit 1, before any Kafka or PostgreSQL work.
    p2 = start_ingest(f, "ingest2", f"127.0.0.1:{u.port}")
    try:
        rc = p2.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 1, f"a second ingest on port {u.port} exited {rc}, want 1")

    # Good records through `ruvector produce`, bad ones through kcat.
    producer = f.produce(f.stream(N_GOOD, N_GOOD, seed=5))
    files = []
    for i, (_, value) in enumerate(BAD):
        path = env.path(f"bad{i}.avro")
        with open(path, "wb") as fh:
            fh.write(value)
        files.append(path)
    r = subprocess.run(["kcat", "-b", f.bootstrap, "-P", "-t", SOURCE] + files, capture_output=True, timeout=120)
    check(r.returncode == 0, f"kcat failed: {r.stderr.decode(errors='replace')}")
    check(producer.wait(timeout=120) == 0, "ruvector produce failed")
    log(f"published {N_GOOD} good and {len(BAD)} bad records")

    labels = f'collection="{COLLECTION}"'
    ingested = f"rv_ingest_records_ingested_total{{{labels}}}"
    wait_for(f"{ingested} = {N_GOOD}", lambda: metric_value(scrape(base)[1], ingested) == N_GOOD, 120, 0.2,
             alive=[p, f.broker])
    by_reason = {}
    for reason, _ in BAD:
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def dead_lettered():
        text = scrape(base)[1]
        return {reason: metric_value(text, f'rv_ingest_records_dead_lettered_total{{{labels},reason="{reason}"}}')
                for reason in by_reason}
    wait_for(f"dead letters by reason {by_reason}", lambda: dead_lettered() == by_reason, 60, 0.2,
             alive=[p, f.broker])
    headers, text = scrape(base)
    ctype = headers.get("content-type", "")
    check(ctype.startswith("text/plain; version=0.0.4"), f"/metrics content type {ctype!r}")
    check(metric_value(text, ingested) == N_GOOD, f"{ingested} = {metric_value(text, ingested)}, want {N_GOOD}")
    consumed = metric_value(text, f"rv_ingest_records_consumed_total{{{labels}}}")
    check(consumed == N_GOOD + len(BAD), f"consumed {consumed}, want {N_GOOD + len(BAD)}")
    check("# TYPE rv_ingest_batch_seconds histogram" in text, "no batch histogram in /metrics")
    log(f"/metrics: ingested {N_GOOD}, dead-lettered {by_reason}, consumed {consumed:.0f}")

    st = f.stop_ingest(p, timeout=30)  # exit 0 and a "stopped" line
    check(st["ingested"] == N_GOOD and st["dead_lettered"] == len(BAD),
          f"stopped stats {st}, want ingested {N_GOOD} dead_lettered {len(BAD)}")
    try:
        request(base, "GET", "/health")
        check(False, "the metrics listener still answers after the ingest exited")
    except OSError:
        pass
    log("SIGTERM: exit 0, final stats, listener closed")


if __name__ == "__main__":
    main(run)
