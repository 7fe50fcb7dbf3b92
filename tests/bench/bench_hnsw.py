#!/usr/bin/python3
"""HNSW benchmark: this engine (float, SQ8+rerank, PQ) against hnswlib on
Fashion-MNIST (60k train as base, 10k test as queries, L2), in one run.

  /usr/bin/python3 tests/bench/bench_hnsw.py --ruvector build/ruvector [--out build/bench]

Exact ground truth is computed here with numpy (float64). Both engines use
M=16, ef_construction=100, build on one thread (and this engine also on two,
for the scaling figure), and answer the queries on one thread while ef_search
sweeps 10..512. Prints a table of recall@10 / QPS / build seconds / bytes per
vector, the QPS ratios against hnswlib at recall 0.95 and 0.99 (interpolated
along each curve), the churn figure (recall after three rounds of deleting
30% and inserting as many, against a fresh build of the same final set), and
writes recall-vs-QPS as a PNG with gnuplot.

Absolute times drift between runs on shared machines: read the ratios.
"""
import argparse
import gzip
import math
import os
import platform
import shlex
import struct
import subprocess
import sys
import time

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"
EFS = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
K = 10
M = 16
EFC = 100


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 0x803:
            raise SystemExit(f"{path}: not an IDX image file")
        return np.frombuffer(f.read(n * rows * cols), dtype=np.uint8).reshape(n, rows * cols).astype(np.float32)


def ground_truth(base, queries, k):
    b64 = base.astype(np.float64)
    bn = (b64 * b64).sum(axis=1)
    gt = np.empty((len(queries), k), dtype=np.int32)
    for s in range(0, len(queries), 500):
        q = queries[s:s + 500].astype(np.float64)
        d = bn[None, :] - 2.0 * q @ b64.T  # + |q|^2, the same for every row
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
        gt[s:s + 500] = np.take_along_axis(part, order, axis=1)
    return gt


def write_ivecs(path, a):
    with open(path, "wb") as f:
        for row in a:
            f.write(struct.pack("<i", len(row)))
            f.write(row.astype("<i4").tobytes())


def recall_of(labels, gt):
    hit = 0
    for got, want in zip(labels, gt):
        hit += len(set(int(x) for x in got) & set(int(x) for x in want))
    return hit / (gt.shape[0] * gt.shape[1])


def bench_hnswlib(base, queries, gt, workdir):
    import hnswlib
    out = {"name": "hnswlib", "points": []}
    builds = {}
    for threads in (1, 2):
        idx = hnswlib.Index(space="l2", dim=base.shape[1])
        idx.init_index(max_elements=len(base), M=M, ef_construction=EFC, random_seed=100)
        t0 = time.perf_counter()
        idx.add_items(base, np.arange(len(base)), num_threads=threads)
        builds[threads] = time.perf_counter() - t0
    out["build"] = builds[1]
    out["build2"] = builds[2]
    path = os.path.join(workdir, "hnswlib.bin")
    idx.save_index(path)
    out["bytes"] = os.path.getsize(path) / len(base)
    os.unlink(path)
    for ef in EFS:
        idx.set_ef(ef)
        t0 = time.perf_counter()
        labels, _ = idx.knn_query(queries, k=K, num_threads=1)
        secs = time.perf_counter() - t0
        out["points"].append((ef, recall_of(labels, gt), len(queries) / secs))
    return out


def parse_kv(line):
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def bench_ruvector(exe, mode, train, test, gt_path, threads, efs):
    cmd = [exe, "index-bench", "--base", train, "--queries", test, "--mode", mode, "--M", str(M),
           "--ef-construction", str(EFC), "--threads", str(threads), "--k", str(K),
           "--ef", ",".join(str(e) for e in efs), "--gt", gt_path]
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"index-bench failed ({p.returncode}):\n{p.stderr}")
    out = {"name": f"ruvector-{mode}", "points": [], "cmd": cmd}
    for line in p.stdout.splitlines():
        kv = parse_kv(line)
        if line.startswith("build "):
            out["build"] = float(kv["build_seconds"])
            out["bytes"] = float(kv["bytes_per_vector"])
            out["float_bytes"] = float(kv["float_bytes_per_vector"])
        elif line.startswith("search "):
            out["points"].append((int(kv["ef"]), float(kv["recall"]), float(kv["qps"])))
    return out


def qps_at(points, target):
    """QPS at a recall, interpolated (linearly in log QPS) between the sweep
    points that bracket it; None if the curve never reaches it."""
    pts = sorted(points, key=lambda p: p[1])
    for (e0, r0, q0), (e1, r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            if r1 == r0:
                return max(q0, q1)
            t = (target - r0) / (r1 - r0)
            return math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0)))
    if pts and pts[0][1] >= target:
        return pts[0][2]  # even the smallest ef reaches it
    return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def plot(results, workdir, png):
    dat = []
    for r in results:
        path = os.path.join(workdir, r["name"] + ".dat")
        with open(path, "w") as f:
            for ef, rec, qps in sorted(r["points"], key=lambda p: p[1]):
                f.write(f"{rec} {qps}\n")
        dat.append((path, r["name"]))
    script = [
        "set terminal png size 900,600 noenhanced",
        f"set output '{png}'",
        "set title 'Fashion-MNIST 60k, L2, k=10, M=16, efC=100, one query thread'",
        "set xlabel 'recall@10'", "set ylabel 'queries per second'", "set logscale y",
        "set key bottom left", "set grid", "set xrange [0.9:1]",
        "plot " + ", ".join(f"'{p}' using 1:2 with linespoints title '{n}'" for p, n in dat),
    ]
    try:
        subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)
        print(f"plot: {png}")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"plot: gnuplot failed ({e}); the table above has the same figures")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ruvector", required=True)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--modes", default="float,sq8,pq")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train = os.path.join(DATA, "train-images-idx3-ubyte.gz")
    test = os.path.join(DATA, "t10k-images-idx3-ubyte.gz")
    base, queries = read_idx_images(train), read_idx_images(test)

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}")
    print(f"command: /usr/bin/python3 {' '.join(shlex.quote(a) for a in sys.argv)}", flush=True)
    t0 = time.perf_counter()
    gt = ground_truth(base, queries, K)
    gt_path = os.path.join(args.out, "fashion-mnist-gt10.ivecs")
    write_ivecs(gt_path, gt)
    print(f"ground truth: {time.perf_counter() - t0:.1f} s (numpy, float64)", flush=True)

    results = [bench_hnswlib(base, queries, gt, args.out)]
    for mode in args.modes.split(","):
        results.append(bench_ruvector(args.ruvector, mode, train, test, gt_path, 1, EFS))
    scale = {m: bench_ruvector(args.ruvector, m, train, test, gt_path, 2, [64])
             for m in ("float", "sq8") if m in args.modes.split(",")}

    print()
    print(f"{'engine':<16} {'ef':>4} {'recall@10':>9} {'QPS':>9} {'build s':>8} {'bytes/vec':>9}")
    for r in results:
        for ef, rec, qps in r["points"]:
            print(f"{r['name']:<16} {ef:>4} {rec:>9.4f} {qps:>9.0f} {r['build']:>8.1f} {r['bytes']:>9.0f}")
    href = results[0]
    print()
    print("QPS ratio against hnswlib at equal recall@10 (interpolated):")
    for target in (0.95, 0.99):
        ref = qps_at(href["points"], target)
        cells = []
        for r in results[1:]:
            q = qps_at(r["points"], target)
            cells.append(f"{r['name']} {q / ref:.2f}x" if q and ref else f"{r['name']} n/a")
        print(f"  recall {target:.2f}: hnswlib {ref:.0f} QPS; " + "; ".join(cells) if ref else
              f"  recall {target:.2f}: hnswlib does not reach it")
    print()
    print(f"build, one thread: hnswlib {href['build']:.1f} s; " +
          "; ".join(f"{r['name']} {r['build']:.1f} s ({href['build'] / r['build']:.2f}x hnswlib's speed)"
                    for r in results[1:]))
    one = {r["name"]: r["build"] for r in results}
    print(f"build, two threads: hnswlib {href['build2']:.1f} s ({href['build'] / href['build2']:.2f}x its one-thread)" +
          "".join(f"; ruvector-{m} {r['build']:.1f} s ({one['ruvector-' + m] / r['build']:.2f}x its one-thread)"
                  for m, r in scale.items()))
    print("bytes per vector (graph + codes; SQ8/PQ re-rank floats kept beside): " +
          "; ".join(f"{r['name']} {r['bytes']:.0f} ({r['bytes'] / href['bytes']:.2f}x hnswlib)" for r in results))
    for mode in ("float", "sq8"):
        cmd = [args.ruvector, "index-bench", "--base", train, "--queries", test, "--mode", mode, "--churn", "3",
               "--ef", "64", "--k", str(K)]
        print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith("churn ")), None)
        if p.returncode != 0 or not line:
            raise SystemExit(f"index-bench --churn failed ({p.returncode}):\n{p.stderr}")
        c = parse_kv(line)
        print(f"churn ({mode}, 30k live of the training set, 3 rounds of deleting 30% and inserting as many, "
              f"ef=64, {c['queries']} queries): recall@10 {c['recall_churned']} vs fresh build "
              f"{c['recall_fresh']} (delta {float(c['delta']):+.4f})", flush=True)
    plot(results, args.out, os.path.join(args.out, "recall_qps.png"))


if __name__ == "__main__":
    main()
