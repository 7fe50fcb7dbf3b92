"""Pieces shared by the fault tests (tests/fault): a broker process, a
PostgreSQL under pg_ctl, a versioned stream published by `ruvector produce`,
`ruvector ingest` processes, and the final exactly-once check. Builds on
tests/integration/harness.py. Run with /usr/bin/python3."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

from harness import (PgCtl, check, check_exactly_once, last_stats, log, main, start_broker,  # noqa: E402,F401
                     wait_for, write_versioned_stream)

COLLECTION = "fault"
DIM = 16
GROUP = f"rv-ingest-{COLLECTION}"
SOURCE = f"{COLLECTION}.vectors"
CHANGELOG = f"{COLLECTION}.changelog"
# A dead ingest's partitions move on after this (the mock's rejoin delay is about this minus 1 s).
SESSION_TIMEOUT_MS = 3000


class Fault:
    """One fault scenario's world: broker, PostgreSQL, stream, ingest processes."""

    def __init__(self, env, partitions=16):
        self.env = env
        self.partitions = partitions
        self.broker, self.bootstrap = start_broker(env, COLLECTION, partitions)
        self.pg = PgCtl(env).start()
        self.topology = os.path.join(env.source_dir, "tests", "fault", "fault.yaml")
        self.proc_env = {"RV_BOOTSTRAP": self.bootstrap, "RV_PG_DSN": self.pg.conninfo,
                         "RV_DATA_DIR": env.path("data"), "RV_PARTITIONS": str(partitions)}
        self.n_ingest = 0
        self.latest = {}
        self.produced = 0

    def stream(self, n_records, n_ids, seed=1):
        path = self.env.path("stream.jsonl")
        self.latest = write_versioned_stream(path, n_records, n_ids, DIM, seed=seed)
        self.produced = n_records
        log(f"stream: {n_records} records over {n_ids} ids")
        return path

    def produce(self, path, rate=0):
        args = [self.env.ruvector, "produce", "--brokers", self.bootstrap, "--topic", SOURCE, "--input", path,
                "--format", "jsonl", "-q"]
        if rate:
            args += ["--rate", str(rate)]
        return self.env.start(args, "produce")

    def ingest(self):
        """Starts one `ruvector ingest` process (its own log: ingestN.log)."""
        self.n_ingest += 1
        name = f"ingest{self.n_ingest}"
        p = self.env.start([self.env.ruvector, "ingest", "--topology", self.topology, "--session-timeout-ms",
                            str(SESSION_TIMEOUT_MS), "--progress-ms", "100"], name, env=self.proc_env)
        p.log_path = self.env.path(f"{name}.log")
        return p

    def stats(self, p, kind="progress"):
        return last_stats(p.log_path, kind)

    def committed(self):
        """Source messages whose offsets PostgreSQL holds as consumed (offsets start at 0)."""
        rows = self.pg.query("SELECT coalesce(sum(next_offset), 0) FROM rv_offsets WHERE consumer_group = %s "
                             "AND topic = %s", (GROUP, SOURCE))
        return int(rows[0][0])

    def wait_committed(self, want, timeout, alive=()):
        def done():
            try:
                return self.committed() >= want
            except Exception:  # PostgreSQL restarting or not migrated yet
                return False
        wait_for(f"{want} source records committed", done, timeout, interval=0.2, alive=alive)

    def wait_progress(self, p, key="batches", at_least=1, timeout=60, alive=()):
        """Waits until p's progress line shows `key` >= at_least."""
        wait_for(f"{p.rv_name}: {key} >= {at_least}",
                 lambda: (self.stats(p) or {}).get(key, 0) >= at_least, timeout, interval=0.05,
                 alive=list(alive) + [p])

    def outbox_empty(self):
        try:
            return self.pg.query(f"SELECT count(*) FROM {COLLECTION}_outbox")[0][0] == 0
        except Exception:
            return False

    def stop_ingest(self, p, timeout=60):
        """SIGTERM; the process must exit 0 and print its final stats."""
        rc = self.env.stop(p, timeout)
        check(rc == 0, f"{p.rv_name} exited {rc} after SIGTERM")
        st = self.stats(p, "stopped")
        check(st is not None, f"{p.rv_name} printed no 'stopped' line")
        return st

    def kill9(self, p):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log(f"killed {p.rv_name} with SIGKILL")

    def check_no_loss_upstream(self):
        """No ingest log reports source records deleted before they were read."""
        for name in os.listdir(self.env.dir):
            if name.startswith("ingest") and name.endswith(".log"):
                with open(self.env.path(name), errors="replace") as f:
                    text = f.read()
                check("lost upstream" not in text and "RECORDS LOST UPSTREAM" not in text,
                      f"{name}: records were deleted from the log before ingest read them")

    def finish(self, producer, ingest_procs, timeout=240):
        """Waits for the producer and for ingest to commit everything, stops the
        ingest processes with SIGTERM (exit 0 each) and runs the exactly-once check."""
        rc = producer.wait(timeout=timeout)
        check(rc == 0, f"ruvector produce exited {rc}")
        alive = [p for p in ingest_procs if p.poll() is None]
        self.wait_committed(self.produced, timeout, alive=alive + [self.broker])
        wait_for("the outbox to empty", self.outbox_empty, 60, interval=0.2, alive=alive)
        stats = [self.stop_ingest(p) for p in alive]
        self.check_no_loss_upstream()
        for st in stats:
            check(st["lost"] == 0, f"ingest reports {st['lost']} record(s) lost upstream")
        check_exactly_once(self.pg, COLLECTION, self.latest, self.bootstrap, CHANGELOG)
        return stats
