"""`pg_ctl restart -m immediate` (a PostgreSQL crash and recovery) twice
during a 100,000-record stream, while ingest is writing. Ingest must pause,
retry with backoff, reconnect and resume without loss or duplicates.
Asserts: the ingest process survives both restarts and counts retries; the
exactly-once check (table = latest version of every produced id, outbox
empty, changelog complete and consistent with the table)."""
import time

from faultlib import Fault, check, log, main

N_RECORDS = 100_000
N_IDS = 80_000


def run(env):
    f = Fault(env)
    path = f.stream(N_RECORDS, N_IDS, seed=5)
    producer = f.produce(path, rate=8000)
    p = f.ingest()
    for i, at_least in enumerate((5, 20)):
        f.wait_progress(p, "batches", at_least, timeout=120, alive=[f.broker])
        before = f.stats(p)
        t0 = time.monotonic()
        f.pg.restart_immediate()
        log(f"restart {i + 1}: PostgreSQL back after {time.monotonic() - t0:.2f}s; ingest had {before}")
        check(p.poll() is None, f"ingest exited {p.returncode} when PostgreSQL restarted")
        check(f.committed() < N_RECORDS, "the stream was already fully ingested at the restart")
        # It must commit again after the restart.
        f.wait_progress(p, "batches", before["batches"] + 2, timeout=120, alive=[f.broker])
    (st,) = f.finish(producer, [p])
    check(st["retries"] >= 2, f"ingest counted {st['retries']} retries over two PostgreSQL crashes")


if __name__ == "__main__":
    main(run)
