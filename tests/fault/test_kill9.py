"""kill -9 of the ingest process at random moments, at least 10 times, during
a 200,000-record stream (dim 16, 150,000 ids, some with several versions).
Each life of the ingest is killed only after it committed at least one batch,
then after a random delay, so kills land mid-batch, mid-COMMIT, between a
COMMIT and its changelog publication, and mid-rebalance. Afterwards one last
ingest finishes the stream and stops with SIGTERM. Asserts: the table holds
exactly the produced ids with each id's latest version, no duplicates, the
outbox is empty, the changelog holds every id with the stored version as its
newest, and nothing was lost upstream."""
import random
import time

from faultlib import Fault, check, log, main

N_RECORDS = 200_000
N_IDS = 150_000
KILLS = 10
RATE = 2500  # records/s: the stream lasts ~80 s; ten lives (group join, first commit, a random moment) take ~65 s


def run(env):
    f = Fault(env)
    path = f.stream(N_RECORDS, N_IDS, seed=9)
    producer = f.produce(path, rate=RATE)
    rng = random.Random(99)
    kills = 0
    while kills < KILLS:
        p = f.ingest()
        f.wait_progress(p, "batches", 1, timeout=90, alive=[f.broker])
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)  # a random moment in this life, after its first commit
        check(p.poll() is None, f"{p.rv_name} exited {p.returncode} on its own")
        done = f.committed()
        check(done < N_RECORDS, f"the stream was fully ingested after only {kills} kill(s)")
        f.kill9(p)
        kills += 1
        st = f.stats(p) or {}
        log(f"kill {kills}: {done} of {N_RECORDS} committed; that life: batches {st.get('batches')} "
            f"published {st.get('published')} drained {st.get('drained')}")
    last = f.ingest()
    stats = f.finish(producer, [last], timeout=300)
    log(f"final ingest: {stats[0]}")


if __name__ == "__main__":
    main(run)
