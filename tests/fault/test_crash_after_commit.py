"""A crash exactly between a batch's COMMIT and its changelog publication,
made deterministic: with a backlog in the source topic (ingest's consumer
holds prefetched records), every broker goes down (`ruvector broker` on
SIGUSR1), so ingest keeps committing the batch it holds but cannot publish
it: the changes wait in the outbox. Ingest is then killed with SIGKILL, the
brokers come back, and a new ingest must publish what the dead one left
("drain") before finishing the stream. Asserts: committed changes were in the
outbox at the kill; the new ingest drained at least that many; the
exactly-once check (nothing lost from the changelog, table exact)."""
import signal

from faultlib import COLLECTION, Fault, check, log, main, wait_for

N_RECORDS = 60_000
N_IDS = 50_000


def run(env):
    f = Fault(env)
    path = f.stream(N_RECORDS, N_IDS, seed=13)
    producer = f.produce(path)  # as fast as possible: a backlog for ingest's prefetch
    rc = producer.wait(timeout=120)
    check(rc == 0, f"ruvector produce exited {rc}")
    p1 = f.ingest()
    f.wait_progress(p1, "batches", 2, timeout=90, alive=[f.broker])
    broker_log = env.path("broker.log")
    f.broker.send_signal(signal.SIGUSR1)
    wait_for("'brokers down'", lambda: "brokers down" in open(broker_log).read(), 10, alive=[f.broker])

    def waiting():
        return f.pg.query(f"SELECT count(*) FROM {COLLECTION}_outbox")[0][0]
    left = wait_for("committed changes waiting in the outbox", waiting, 30, interval=0.1, alive=[p1])
    committed = f.committed()
    check(committed < N_RECORDS, "the whole stream was committed before the brokers went down")
    f.kill9(p1)
    left = waiting()  # final: nothing changes after the kill
    log(f"killed with {left} committed change(s) unpublished, {committed} of {N_RECORDS} records committed")

    f.broker.send_signal(signal.SIGUSR2)
    wait_for("'brokers up'", lambda: "brokers up" in open(broker_log).read(), 10, alive=[f.broker])
    p2 = f.ingest()
    (st,) = f.finish(producer, [p2])
    check(st["drained"] >= left, f"the new ingest drained {st['drained']} change(s), {left} were left in the outbox")


if __name__ == "__main__":
    main(run)
