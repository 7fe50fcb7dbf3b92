"""The Kafka brokers go down mid-stream (`ruvector broker` on SIGUSR1: every
connection dropped and refused) for several seconds, longer than ingest's
session timeout, then come back (SIGUSR2). Ingest cannot read, cannot publish
its changelog and loses its group membership meanwhile; it must retry, rejoin,
resume from the offsets stored in PostgreSQL and publish every committed change.
The producer keeps its records queued through the outage. Asserts: ingest
survives, counts retries or rejoins, and the exactly-once check."""
import signal
import time

from faultlib import Fault, check, log, main, wait_for

N_RECORDS = 80_000
N_IDS = 60_000
DOWN_S = 6


def run(env):
    f = Fault(env)
    path = f.stream(N_RECORDS, N_IDS, seed=7)
    producer = f.produce(path, rate=8000)
    p = f.ingest()
    f.wait_progress(p, "batches", 5, timeout=120, alive=[f.broker])
    before = f.committed()
    broker_log = env.path("broker.log")
    f.broker.send_signal(signal.SIGUSR1)
    wait_for("'brokers down'", lambda: "brokers down" in open(broker_log).read(), 10, alive=[f.broker])
    log(f"brokers down with {before} of {N_RECORDS} committed")
    time.sleep(DOWN_S)  # the outage itself: its length is the fault, not a wait for a result
    during = f.committed()
    check(p.poll() is None, f"ingest exited {p.returncode} while the brokers were down")
    f.broker.send_signal(signal.SIGUSR2)
    wait_for("'brokers up'", lambda: "brokers up" in open(broker_log).read(), 10, alive=[f.broker])
    log(f"brokers up; {during} committed during the outage")
    check(during < N_RECORDS, "the stream was fully ingested before the outage ended")
    (st,) = f.finish(producer, [p], timeout=300)
    log(f"ingest: {st}")


if __name__ == "__main__":
    main(run)
