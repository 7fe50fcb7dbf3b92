"""Read your writes end to end: `ruvector produce --wait-visible` publishes
Fashion-MNIST records through a broker process, ingest (which publishes
position markers after each commit), the changelog and a replica, and for
each delivered record searches the serve with "after" = its partition and
offset; every record must become visible and be found by id, and the
latency line must be there. A search whose position is far ahead gets
not_yet_visible with the replica's positions."""
import os
import re

from harness import FASHION, WsClient, check, collection_count, log, main, wait_for

N = 30
WARM = 300  # ingest holds its first batches until SQ8 is trained (ingest.sq8_train_wait_ms): warm up first


def run(env):
    topo = os.path.join(env.source_dir, "tests", "integration", "e2e.yaml")
    broker, pipeline, ep = env.start_pipeline(topo, "fashion")
    endpoints_file = env.path("endpoints.json")
    train = os.path.join(FASHION, "train-images-idx3-ubyte.gz")
    r = env.run([env.ruvector, "produce", "--endpoints", endpoints_file, "--collection", "fashion", "--input", train,
                 "--count", str(WARM), "--quiet"], "produce (warm-up)")
    check(r.returncode == 0, f"warm-up produce exited {r.returncode}")
    wait_for(f"{WARM} searchable vectors", lambda: collection_count(ep["http"], "fashion") == WARM, 120, 0.25,
             alive=[pipeline])
    r = env.run([env.ruvector, "produce", "--endpoints", endpoints_file, "--collection", "fashion", "--input", train,
                 "--skip", str(WARM), "--count", str(N), "--id-prefix", "wv-", "--rate", "100", "--quiet",
                 "--wait-visible", ep["ws"], "--wait-timeout", "20000"], "produce --wait-visible", timeout=120)
    log(r.stdout.strip())
    check(r.returncode == 0, f"produce --wait-visible exited {r.returncode}: {r.stderr.strip()}")
    m = re.search(r"visible: (\d+) of (\d+) records searchable, (\d+) found by id; send -> searchable "
                  r"p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", r.stdout)
    check(m is not None, f"no visibility line in {r.stdout!r}")
    visible, delivered, found = int(m.group(1)), int(m.group(2)), int(m.group(3))
    p50, p99, mx = float(m.group(4)), float(m.group(5)), float(m.group(6))
    check(delivered == N and visible == N and found == N, f"visible {visible}, found {found} of {delivered}")
    check(0 < p50 <= p99 <= mx, f"latencies p50 {p50} p99 {p99} max {mx}")

    # A position far ahead of anything produced: not_yet_visible with positions, after the timeout (5 s default).
    ws = WsClient(ep["ws"])
    reply = ws.request({"type": "search", "id": "late", "collection": "fashion", "vector": [0.0] * 784, "k": 1,
                        "after": {"partition": 0, "offset": 10 ** 9}})
    check(reply.get("code") == "not_yet_visible", f"reply {reply}")
    check(isinstance(reply.get("positions"), dict) and len(reply["positions"]) >= 1, f"positions in {reply}")
    check(all(int(v) > 0 for v in reply["positions"].values()), f"positions {reply['positions']}")
    bad = ws.request({"type": "search", "id": "bad", "collection": "fashion", "vector": [0.0] * 784,
                      "after": "0:12"})
    check(bad.get("code") == "bad_request" and "after" in bad.get("message", ""), f"reply {bad}")
    ws.close()


if __name__ == "__main__":
    main(run)
