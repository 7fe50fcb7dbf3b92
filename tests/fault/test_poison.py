"""Poison records among good ones: a broker process (`ruvector broker`) and
`ruvector pipeline run` on a test topology (embedded PostgreSQL). kcat
publishes 3000 good Avro records and 35 poison records (about 1%) of seven
kinds, interleaved: truncated Avro, a wrong magic byte, an unknown Confluent
schema id, a wrong dimension, a NaN, oversized metadata and non-object
metadata. Asserts that every poison record, and nothing else, is in the DLQ
once with the expected rv.error.code and its source topic/partition/offset;
that every good record, and nothing else, is in the PostgreSQL table with its
exact vector; and that GET /metrics counts both."""
import math
import os
import re
import struct
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

from harness import check, log, main, psql, wait_for  # noqa: E402
from harness import encode_vector_record as encode  # noqa: E402

DIM = 8
N_GOOD = 3000
COLLECTION = "poison"

TOPOLOGY = """
name: poison
data_dir: ${RV_DATA_DIR}
kafka: {brokers: "${RV_BOOTSTRAP}"}
postgres: {dsn: embedded}
redis: {url: none}
collections:
  - {name: poison, dim: 8, metric: l2, partitions: 3}
ingest: {batch_rows: 500, batch_ms: 50, max_metadata_bytes: 1024}
serve: {listen: "127.0.0.1:0"}
endpoints_file: ${RV_ENDPOINTS}
"""





def vector_of(i):
    return [float(i % 97) + k * 0.25 for k in range(DIM)]


# (kind, expected rv.error.code, value maker)
POISON_KINDS = [
    ("truncated", "decode_error", lambda n: encode(f"p-{n}", vector_of(n), "{}")[:-6]),
    ("wrong_magic", "decode_error", lambda n: b"\x01" + struct.pack(">I", 1) + encode(f"p-{n}", vector_of(n), "{}")),
    ("unknown_schema", "unknown_schema_id",
     lambda n: b"\x00" + struct.pack(">I", 999) + encode(f"p-{n}", vector_of(n), "{}")),
    ("wrong_dim", "wrong_dim", lambda n: encode(f"p-{n}", vector_of(n)[:DIM - 1], "{}")),
    ("nan", "non_finite", lambda n: encode(f"p-{n}", vector_of(n)[:3] + [math.nan] + vector_of(n)[4:], "{}")),
    ("big_metadata", "metadata_too_large", lambda n: encode(f"p-{n}", vector_of(n), '{"pad":"%s"}' % ("x" * 2000))),
    ("array_metadata", "bad_metadata", lambda n: encode(f"p-{n}", vector_of(n), "[1,2,3]")),
]
N_POISON = 35  # five of each kind, about 1% of the stream


def kcat(args, input_bytes=None):
    r = subprocess.run(["kcat"] + args, input=input_bytes, capture_output=True, timeout=120)
    check(r.returncode == 0, f"kcat {' '.join(args[:6])}... failed: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="replace")


def read_dlq(bootstrap):
    """[(headers dict)] of every DLQ message, from kcat's %h (name=value,...)."""
    out = kcat(["-b", bootstrap, "-C", "-t", f"{COLLECTION}.dlq", "-o", "beginning", "-e", "-q", "-f", "%h\n"])
    msgs = []
    for line in out.splitlines():
        if not line.strip():
            continue
        h = {}
        for name in ("test.poison", "rv.error.code", "rv.source.topic", "rv.source.partition", "rv.source.offset"):
            m = re.search(r"(?:^|,)" + re.escape(name) + r"=([^,]*)", line)
            h[name] = m.group(1) if m else None
        msgs.append(h)
    return msgs


def metrics(http_url):
    with urllib.request.urlopen(http_url.rstrip("/") + "/metrics", timeout=5) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def metric_value(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def run(env):
    topo = env.path("poison.yaml")
    with open(topo, "w") as f:
        f.write(TOPOLOGY)
    broker, pipeline, ep = env.start_pipeline(topo, COLLECTION, partitions=3)
    bootstrap = ep["kafka"]["bootstrap"]

    # Files: each one is one message for `kcat -P file...`.
    good = {}
    files = []
    for i in range(N_GOOD):
        rid = f"g-{i:05d}"
        vec = vector_of(i)
        good[rid] = struct.pack(f"<{DIM}f", *vec).hex()
        path = env.path(f"g{i}.avro")
        with open(path, "wb") as f:
            f.write(encode(rid, vec, '{"n":%d}' % i))
        files.append(path)
    chunk = N_GOOD // N_POISON + 1
    expected = {}
    for n in range(N_POISON):
        kind, code, make = POISON_KINDS[n % len(POISON_KINDS)]
        kcat(["-b", bootstrap, "-P", "-t", f"{COLLECTION}.vectors"] + files[n * chunk:(n + 1) * chunk])
        path = env.path(f"p{n}.bin")
        with open(path, "wb") as f:
            f.write(make(n))
        kcat(["-b", bootstrap, "-P", "-t", f"{COLLECTION}.vectors", "-k", f"p-{n}", "-H", f"test.poison={n}", path])
        expected[str(n)] = (kind, code)
    if N_POISON * chunk < N_GOOD:
        kcat(["-b", bootstrap, "-P", "-t", f"{COLLECTION}.vectors"] + files[N_POISON * chunk:])
    log(f"published {N_GOOD} good and {N_POISON} poison records")

    def table_count():
        return int(psql(ep["postgres"], f"SELECT count(*) FROM {COLLECTION}"))

    wait_for(f"{N_GOOD} rows", lambda: table_count() >= N_GOOD, 180, 0.5, alive=[pipeline, broker])
    wait_for(f"{N_POISON} dead letters", lambda: len(read_dlq(bootstrap)) >= N_POISON, 120, 0.5,
             alive=[pipeline, broker])

    # Every poison record, once, with its reason and source; nothing else.
    dlq = read_dlq(bootstrap)
    seen = {}
    for h in dlq:
        check(h["test.poison"] is not None, f"a DLQ message that is not a poison record: {h}")
        check(h["test.poison"] not in seen, f"poison record {h['test.poison']} dead-lettered twice")
        seen[h["test.poison"]] = h
        kind, code = expected[h["test.poison"]]
        check(h["rv.error.code"] == code, f"poison {h['test.poison']} ({kind}): code {h['rv.error.code']}, want {code}")
        check(h["rv.source.topic"] == f"{COLLECTION}.vectors", f"source topic: {h}")
        check(h["rv.source.partition"] in ("0", "1", "2") and h["rv.source.offset"].isdigit(), f"source: {h}")
    check(set(seen) == set(expected), f"missing from the DLQ: {set(expected) - set(seen)}")
    positions = {(h["rv.source.partition"], h["rv.source.offset"]) for h in dlq}
    check(len(positions) == N_POISON, "two dead letters name the same source offset")
    log(f"DLQ: all {N_POISON} poison records, each once, with the expected reason")

    # Every good record, exactly, and nothing else.
    rows = psql(ep["postgres"], f"SELECT id, encode(vector, 'hex') FROM {COLLECTION} ORDER BY id")
    stored = dict(line.split("|") for line in rows.splitlines())
    check(set(stored) == set(good), f"table ids differ: extra {sorted(set(stored) - set(good))[:5]}, "
                                    f"missing {sorted(set(good) - set(stored))[:5]}")
    bad = [rid for rid in good if stored[rid] != good[rid]]
    check(not bad, f"stored vectors differ for {bad[:5]}")
    log(f"PostgreSQL: exactly the {N_GOOD} good records, bit-exact")

    # The metrics endpoint counts both (its counters follow the commits, so poll).
    series = f'rv_ingest_records_ingested_total{{collection="{COLLECTION}"}}'
    wait_for("/metrics ingested count", lambda: metric_value(metrics(ep["http"])[1], series) == N_GOOD, 30, 0.2,
             alive=[pipeline])
    ctype, text = metrics(ep["http"])
    check(ctype.startswith("text/plain; version=0.0.4"), f"/metrics content type {ctype}")
    by_code = {}
    for kind, code in expected.values():
        by_code[code] = by_code.get(code, 0) + 1
    for code, n in by_code.items():
        s = f'rv_ingest_records_dead_lettered_total{{collection="{COLLECTION}",reason="{code}"}}'
        check(metric_value(text, s) == n, f"{s} = {metric_value(text, s)}, want {n}\n{text}")
    consumed = metric_value(text, f'rv_ingest_records_consumed_total{{collection="{COLLECTION}"}}')
    check(consumed == N_GOOD + N_POISON, f"consumed {consumed}, want {N_GOOD + N_POISON}")
    check(f'rv_ingest_batch_seconds_count{{collection="{COLLECTION}"}}' in text, "no batch histogram")
    check(re.search(r'rv_ingest_consumer_lag\{collection="poison",partition="[012]"\} ', text), "no lag gauge")
    log("/metrics: ingested, dead-lettered by reason, consumed, batch histogram, lag")

    check(env.stop(pipeline) == 0, "pipeline exit code")
    check(env.stop(broker) == 0, "broker exit code")


if __name__ == "__main__":
    main(run)
