"""Two ingest processes in one consumer group share the 16 partitions; one is
killed with SIGKILL mid-stream. After the session timeout the survivor is
assigned the dead one's partitions, seeks to the offsets stored in
PostgreSQL, publishes what the dead one left in the outbox, and finishes the
stream. Asserts: both had committed batches before the kill (the partitions
really were shared), the survivor ends up owning everything, and the
exactly-once check."""
import random
import time

from faultlib import Fault, check, log, main

N_RECORDS = 100_000
N_IDS = 80_000


def run(env):
    f = Fault(env)
    path = f.stream(N_RECORDS, N_IDS, seed=11)
    producer = f.produce(path, rate=6000)
    a = f.ingest()
    b = f.ingest()
    for p in (a, b):
        f.wait_progress(p, "batches", 3, timeout=120, alive=[f.broker, a, b])
    time.sleep(random.Random(4).uniform(0.0, 0.5))  # a random moment mid-batch
    before = f.stats(b)
    f.kill9(a)
    check(f.committed() < N_RECORDS, "the stream was fully ingested before the kill")
    log(f"survivor before the kill: {before}")
    (st,) = f.finish(producer, [b], timeout=240)
    log(f"survivor at the end: {st}")
    check(st["consumed"] - before["consumed"] > 0, "the survivor consumed nothing after the kill")


if __name__ == "__main__":
    main(run)
