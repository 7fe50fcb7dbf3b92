"""Schema evolution through a Schema Registry: a small HTTP server in this test
(127.0.0.1, the Confluent REST shape GET /schemas/ids/{id} -> {"schema": ...})
holds two writer schemas besides the collection's own (id 1): v2 (id 2) adds
a field with a default, v3 (id 3) removes an optional field. kcat publishes
Confluent-framed records under ids 1, 2 and 3 and one under an id the
registry does not know. Asserts: every record of each version is in
PostgreSQL with its vector and metadata (none for v3), each id was fetched
once, the unknown id is dead-lettered as unknown_schema_id; then, with the
registry down, records under a new id are neither dead-lettered nor stored
while ingest retries (rv_ingest_retries_total{what="registry"} grows), and
are stored once the registry is back."""
import json
import struct
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

from harness import avro_string, check, log, main, psql, wait_for, zigzag

DIM = 4
BASE_FIELDS = [
    {"name": "id", "type": "string"},
    {"name": "op", "type": {"type": "enum", "name": "Op", "symbols": ["UPSERT", "DELETE"]}, "default": "UPSERT"},
    {"name": "vector", "type": ["null", {"type": "array", "items": "float"}], "default": None},
    {"name": "metadata", "type": ["null", "string"], "default": None},
    {"name": "event_time", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
]


def schema(fields):
    return json.dumps({"type": "record", "name": "VectorRecord", "namespace": "io.ruvector", "fields": fields})


SCHEMAS = {
    2: schema(BASE_FIELDS + [{"name": "source", "type": "string", "default": "unknown"}]),
    3: schema([f for f in BASE_FIELDS if f["name"] != "metadata"]),
    4: schema(BASE_FIELDS + [{"name": "shard", "type": "int", "default": 0}]),
}


class Registry:
    """The Confluent REST shape on 127.0.0.1; counts requests per id; can be stopped and restarted on its port."""

    def __init__(self):
        self.requests = {}
        self.port = 0
        self.server = None

    def start(self):
        reg = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.strip("/").split("/")
                sid = int(parts[2]) if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit() else -1
                reg.requests[sid] = reg.requests.get(sid, 0) + 1
                if sid in SCHEMAS:
                    status, body = 200, json.dumps({"schema": SCHEMAS[sid]})
                else:
                    status, body = 404, json.dumps({"error_code": 40403, "message": "Schema not found"})
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()




def encode(version, rid, vec, metadata):
    """The record in writer schema `version` (1: vector_record.avsc), from the Avro spec."""
    out = avro_string(rid) + zigzag(0)  # id, op UPSERT
    out += zigzag(1) + zigzag(len(vec)) + struct.pack(f"<{len(vec)}f", *vec) + zigzag(0)
    if version != 3:
        out += zigzag(1) + avro_string(metadata)
    out += zigzag(0)  # event_time null
    if version == 2:
        out += avro_string("sensor-9")
    if version == 4:
        out += zigzag(7)
    return out


def framed(schema_id, body):
    return b"\x00" + struct.pack(">I", schema_id) + body


def kcat(args):
    r = subprocess.run(["kcat"] + args, capture_output=True, timeout=60)
    check(r.returncode == 0, f"kcat failed: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode(errors="replace")


def metrics_text(http):
    with urllib.request.urlopen(http.rstrip("/") + "/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def run(env):
    reg = Registry().start()
    topo = env.path("registry.yaml")
    with open(topo, "w") as f:
        f.write(f"""
name: registry
data_dir: ${{RV_DATA_DIR}}
kafka: {{brokers: "${{RV_BOOTSTRAP}}"}}
collections:
  - {{name: evo, dim: {DIM}, metric: l2, partitions: 2}}
ingest: {{schema_registry: "http://127.0.0.1:{reg.port}", sq8_train: 1}}
serve: {{listen: "127.0.0.1:0"}}
redis: {{url: none}}
endpoints_file: ${{RV_ENDPOINTS}}
""")
    broker, pipeline, ep = env.start_pipeline(topo, "evo", partitions=2)
    bootstrap = ep["kafka"]["bootstrap"]

    want = {}
    files = []
    for version in (1, 2, 3):
        for i in range(10):
            rid = f"v{version}-{i}"
            vec = [float(version), float(i), 0.5, -1.0]
            path = env.path(f"{rid}.bin")
            with open(path, "wb") as f:
                f.write(framed(version, encode(version, rid, vec, '{"v":%d}' % version)))
            files.append(path)
            want[rid] = (struct.pack(f"<{DIM}f", *vec).hex(), None if version == 3 else {"v": version})
    with open(env.path("unknown.bin"), "wb") as f:
        f.write(framed(77, encode(1, "unknown-1", [1.0] * DIM, "{}")))
    files.append(env.path("unknown.bin"))
    kcat(["-b", bootstrap, "-P", "-t", "evo.vectors"] + files)

    def stored():
        rows = psql(ep["postgres"], "SELECT id, encode(vector, 'hex'), coalesce(metadata::text, '') FROM evo")
        return {r.split("|")[0]: r.split("|")[1:] for r in rows.splitlines()}

    wait_for("30 rows", lambda: len(stored()) >= 30, 120, 0.25, alive=[pipeline])
    rows = stored()
    check(set(rows) == set(want), f"stored ids {sorted(rows)}")
    for rid, (hexvec, meta) in want.items():
        check(rows[rid][0] == hexvec, f"{rid}: vector {rows[rid][0]} != {hexvec}")
        got_meta = json.loads(rows[rid][1]) if rows[rid][1] else None
        check(got_meta == meta, f"{rid}: metadata {got_meta!r}, want {meta!r}")
    check(reg.requests.get(1) is None, "the collection's own id 1 was looked up")
    check(reg.requests.get(2) == 1 and reg.requests.get(3) == 1, f"fetches per id {reg.requests}")
    log("v1, v2 (added field) and v3 (removed field) records stored; each id fetched once")

    dlq = wait_for("the unknown id dead-lettered",
                   lambda: kcat(["-b", bootstrap, "-C", "-t", "evo.dlq", "-o", "beginning", "-e", "-q", "-f",
                                 "%h\n"]).strip(), 60, 0.25, alive=[pipeline])
    check(len(dlq.splitlines()) == 1, f"DLQ: {dlq!r}")
    check("rv.error.code=unknown_schema_id" in dlq and "no schema id 77" in dlq, f"DLQ: {dlq!r}")
    log("the unknown schema id is dead-lettered as unknown_schema_id")

    # Registry down: records under a new id wait, they are not dead-lettered.
    reg.stop()
    late = []
    for i in range(3):
        rid = f"v4-{i}"
        path = env.path(f"{rid}.bin")
        with open(path, "wb") as f:
            f.write(framed(4, encode(4, rid, [4.0, float(i), 0.0, 0.0], '{"v":4}')))
        late.append(path)
    kcat(["-b", bootstrap, "-P", "-t", "evo.vectors"] + late)
    retries = 'rv_ingest_retries_total{collection="evo",what="registry"}'
    wait_for("registry retries", lambda: metric(metrics_text(ep["http"]), retries) >= 3, 60, 0.25, alive=[pipeline])
    check(not any(r.startswith("v4-") for r in stored()), "a v4 record was stored without its schema")
    dlq_now = kcat(["-b", bootstrap, "-C", "-t", "evo.dlq", "-o", "beginning", "-e", "-q", "-f", "%o\n"])
    check(len(dlq_now.split()) == 1, f"records were dead-lettered while the registry was down: {dlq_now!r}")
    log("registry down: v4 records wait (retried, not dead-lettered)")

    reg.start()  # same port
    wait_for("v4 records stored", lambda: sum(r.startswith("v4-") for r in stored()) == 3, 60, 0.25,
             alive=[pipeline])
    text = metrics_text(ep["http"])
    check(metric(text, 'rv_ingest_records_ingested_total{collection="evo"}') == 33, f"ingested:\n{text}")
    check(metric(text, 'rv_ingest_records_dead_lettered_total{collection="evo",reason="unknown_schema_id"}') == 1,
          f"dead-lettered:\n{text}")
    log("registry back: v4 records stored; /metrics agrees")

    check(env.stop(pipeline) == 0, "pipeline exit code")
    check(env.stop(broker) == 0, "broker exit code")
    reg.stop()


if __name__ == "__main__":
    main(run)
