"""SIGTERM of `ruvector ingest` mid-stream: it must finish the batch in
progress, commit it, publish its changes, leave the group and exit 0. Then
a second ingest resumes exactly at the stored offsets (it re-reads nothing)
and finishes the stream. Asserts: exit 0; every message the first process
consumed is committed (its consumed count equals the stored offsets); its
outbox is empty (the changes went out before exit); no batch was dropped;
the second process consumed exactly the rest; the exactly-once check."""
import time

from faultlib import Fault, check, log, main

N_RECORDS = 60_000
N_IDS = 50_000


def run(env):
    f = Fault(env)
    path = f.stream(N_RECORDS, N_IDS, seed=3)
    producer = f.produce(path, rate=15000)
    p1 = f.ingest()
    f.wait_progress(p1, "batches", 3, timeout=90, alive=[f.broker])
    t0 = time.monotonic()
    st1 = f.stop_ingest(p1, timeout=30)
    log(f"first ingest stopped in {time.monotonic() - t0:.2f}s: {st1}")
    committed = f.committed()
    check(committed == st1["consumed"],
          f"stopped ingest consumed {st1['consumed']} messages but PostgreSQL holds {committed} as committed")
    check(0 < committed < N_RECORDS, f"SIGTERM did not land mid-stream ({committed} of {N_RECORDS} committed)")
    check(f.outbox_empty(), "the stopped ingest left changes in the outbox")
    check(st1["published"] > 0 and st1["drained"] == 0, f"unexpected publication counts {st1}")
    with open(p1.log_path, errors="replace") as fh:
        text = fh.read()
    check("dropping uncommitted batch" not in text, "the first ingest dropped a batch on SIGTERM")

    p2 = f.ingest()
    (st2,) = f.finish(producer, [p2])
    check(st2["consumed"] == N_RECORDS - st1["consumed"],
          f"second ingest consumed {st2['consumed']}, expected exactly the {N_RECORDS - st1['consumed']} "
          f"messages after the stored offsets")


if __name__ == "__main__":
    main(run)
