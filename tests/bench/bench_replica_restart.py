"""Time to ready of a `ruvector index` process from its snapshot, from
PostgreSQL and from changelog replay, in one run over one data set:
60,000 Fashion-MNIST vectors (784 floats) published by `ruvector produce`
to a `ruvector broker` process, ingested by `ruvector ingest` into a private
PostgreSQL. Time to ready = process start to the first 200 from /ready
(polled every 5 ms). Target: snapshot >= 20x faster than the PostgreSQL
load, which must beat replay.

    /usr/bin/python3 tests/bench/bench_replica_restart.py --ruvector build/ruvector --source-dir . [--n 60000]

64 partitions per topic keep each partition of the mock broker under its
5 MiB (it silently drops older data past that). Run with /usr/bin/python3."""
import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import Env, check, log  # noqa: E402
from index_world import World, boot_source, stats_count, wait_ready  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def time_to_ready(w, snap, store, want_source, n):
    t0 = time.monotonic()
    p = w.index(snap, store=store)
    base = w.http_base(p, timeout=1200)
    wait_ready(base, p, 1800)
    secs = time.monotonic() - t0
    src = boot_source(base)
    count = stats_count(base)
    log(f"{want_source}: ready in {secs:.2f} s (bootstrap source {src}, {count} vectors)")
    check(src == want_source, f"bootstrapped from {src}, expected {want_source}")
    check(count == n, f"{count} vectors after bootstrap from {src}, expected {n}")
    check(w.env.stop(p, timeout=600) == 0, "index did not exit 0 on SIGTERM")
    return secs, p.command


def run(env, n):
    w = World(env, partitions=64, dim=784)
    ingest = w.ingest()
    t0 = time.monotonic()
    w.produce(["--input", DATA, "--count", str(n)])
    w.wait_ingested(ingest, n, 1200)
    log(f"ingested {n} vectors in {time.monotonic() - t0:.1f} s")
    check(env.stop(ingest) == 0, "ingest did not exit 0")
    snap_replay, snap_pg = env.path("snap-replay"), env.path("snap-pg")
    replay, _ = time_to_ready(w, snap_replay, "none", "replay", n)   # saves its snapshot on SIGTERM
    pg, _ = time_to_ready(w, snap_pg, "postgres", "postgres", n)
    shutil.rmtree(snap_pg, ignore_errors=True)
    snap, cmd = time_to_ready(w, snap_replay, "postgres", "snapshot", n)
    print()
    print(f"time to ready of `ruvector index` with {n} Fashion-MNIST vectors (dim 784, 64 changelog partitions)")
    print(f"  from snapshot:           {snap:8.2f} s")
    print(f"  from PostgreSQL:         {pg:8.2f} s")
    print(f"  from changelog replay:   {replay:8.2f} s")
    print(f"  PostgreSQL / snapshot:   {pg / snap:8.1f}x  (target >= 20x)")
    print(f"  replay / PostgreSQL:     {replay / pg:8.2f}x  (target > 1)")
    print(f"  index command: {cmd}")
    return snap, pg, replay


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ruvector", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--n", type=int, default=60000)
    a = ap.parse_args()
    env = Env(os.path.abspath(a.ruvector), os.path.abspath(a.source_dir))
    ok = False
    try:
        run(env, a.n)
        ok = True
    finally:
        env.close(keep_logs_on_failure=not ok)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
