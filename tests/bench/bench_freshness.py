"""Freshness: producer send -> searchable, through the whole pipeline.

Runs `ruvector pipeline run pipelines/demo.yaml` (the default topology:
embedded Kafka, PostgreSQL and Redis; ingest batch_rows 1000 / batch_ms 50,
closing early when the consumer has nothing more waiting), warms it up, then
publishes Fashion-MNIST training images at a steady rate with `ruvector
produce --wait-visible`: for every N-th record, once Kafka acknowledged it,
a search with "after" = its source partition and offset (read-your-writes)
and its own vector is sent to the serve stage; the latency is from the
producer's send to that search's answer, which comes only once the replica
has applied the record (its position marker) and must contain the id.

    /usr/bin/python3 tests/bench/bench_freshness.py --ruvector build/ruvector

Prints p50/p99/max per region (the demo has one, "local") and the exact
commands it ran. Target (issue 10): p99 under 50 ms at 5,000 records/s.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TRAIN = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def wait_for(what, fn, timeout, interval=0.1):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def produce(ruvector, endpoints, ws, skip, count, rate, every, log):
    cmd = [ruvector, "produce", "--endpoints", endpoints, "--collection", "fashion", "--input", TRAIN,
           "--skip", str(skip), "--count", str(count), "--rate", str(rate), "--wait-visible", ws,
           "--wait-every", str(every), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log.write(" ".join(cmd) + "\n" + r.stdout + r.stderr)
    m = re.search(r"visible: (\d+) of (\d+) records searchable, (\d+) found by id; send -> searchable "
                  r"p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", r.stdout)
    if not m:  # produce exits 1 when a probe was not visible or not found: the figures still count
        raise SystemExit(f"produce failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    v = [float(x) for x in m.groups()]
    return {"visible": int(v[0]), "probed": int(v[1]), "found": int(v[2]), "p50": v[3], "p99": v[4], "max": v[5],
            "cmd": " ".join(cmd)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ruvector", default="build/ruvector")
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--count", type=int, default=40000)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5000)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    ruvector = os.path.abspath(a.ruvector)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    work = tempfile.mkdtemp(prefix="rv-fresh-")
    os.chmod(work, 0o755)  # the embedded PostgreSQL runs as the postgres user when we are root
    env = dict(os.environ, RV_DATA_DIR=os.path.join(work, "data"), RV_LISTEN="127.0.0.1:0",
               RV_ENDPOINTS=os.path.join(work, "endpoints.json"))
    pipe_cmd = [ruvector, "pipeline", "run", os.path.join(src, "pipelines", "demo.yaml")]
    log = open(os.path.join(work, "bench.log"), "w")
    pipe = subprocess.Popen(pipe_cmd, env=env, stdout=open(os.path.join(work, "pipeline.log"), "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def endpoints():
            if pipe.poll() is not None:
                raise SystemExit(f"the pipeline exited {pipe.returncode}: see {work}/pipeline.log (--keep)")
            return os.path.exists(env["RV_ENDPOINTS"]) and json.load(open(env["RV_ENDPOINTS"]))
        doc = wait_for("the pipeline's endpoints", endpoints, 120)
        ws = doc["ws"].rstrip("/")
        warm = produce(ruvector, env["RV_ENDPOINTS"], ws, 0, a.warmup, a.rate, 50, log)
        print(f"warm-up: {a.warmup} records (quantizer trained, replica current): p99 {warm['p99']} ms")
        res = produce(ruvector, env["RV_ENDPOINTS"], ws, a.warmup, a.count, a.rate, a.every, log)
        cpu = open("/proc/cpuinfo").read()
        model = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
        print(f"machine: {os.cpu_count()} vCPU, {model}; load average {os.getloadavg()[0]:.2f}")
        print(f"pipeline: RV_DATA_DIR=... RV_LISTEN=127.0.0.1:0 {' '.join(pipe_cmd)}")
        print(f"probe:    {res['cmd']}")
        print(f"{'region':8} {'rate/s':>7} {'records':>8} {'probed':>7} {'visible':>7} {'found':>6} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'max ms':>7}")
        print(f"{'local':8} {a.rate:7d} {a.count:8d} {res['probed']:7d} {res['visible']:7d} {res['found']:6d} "
              f"{res['p50']:7.1f} {res['p99']:7.1f} {res['max']:7.1f}")
        if res["visible"] != res["probed"]:
            print(f"NOT SUSTAINED: {res['probed'] - res['visible']} of {res['probed']} probes not visible within "
                  f"the wait timeout (or refused as overloaded); the percentiles are of the visible ones")
        if res["found"] != res["visible"]:
            print(f"{res['visible'] - res['found']} visible probe(s) not among the 10 nearest of their own vector "
                  f"(approximate search at ef 64)")
    finally:
        pipe.send_signal(signal.SIGTERM)
        try:
            pipe.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(pipe.pid, signal.SIGKILL)
        log.close()
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
