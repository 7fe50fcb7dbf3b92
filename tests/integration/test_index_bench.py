#!/usr/bin/python3
"""`ruvector index-bench` end to end: a small generated base and query set in
.fvecs, the result .ivecs checked against exact neighbours computed here with
numpy, --gt recall reporting, the churn experiment, and bad arguments."""
import os
import struct
import subprocess

import numpy as np

from harness import check, log, main

DIM, N, NQ, K = 16, 3000, 60, 10


def write_fvecs(path, a):
    with open(path, "wb") as f:
        for row in a:
            f.write(struct.pack("<i", len(row)) + row.astype("<f4").tobytes())


def write_ivecs(path, a):
    with open(path, "wb") as f:
        for row in a:
            f.write(struct.pack("<i", len(row)) + row.astype("<i4").tobytes())


def read_ivecs(path):
    out = []
    with open(path, "rb") as f:
        while True:
            h = f.read(4)
            if not h:
                return np.array(out)
            (n,) = struct.unpack("<i", h)
            out.append(np.frombuffer(f.read(4 * n), dtype="<i4"))


def kv(line):
    return dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)


def run(env):
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(30, DIM)) * 4
    base = (centers[rng.integers(0, 30, N)] + rng.normal(size=(N, DIM))).astype(np.float32)
    queries = (centers[rng.integers(0, 30, NQ)] + rng.normal(size=(NQ, DIM))).astype(np.float32)
    bpath, qpath, gpath, opath = (env.path(n) for n in ("base.fvecs", "q.fvecs", "gt.ivecs", "out.ivecs"))
    write_fvecs(bpath, base)
    write_fvecs(qpath, queries)
    d = ((queries[:, None, :].astype(np.float64) - base[None, :, :]) ** 2).sum(axis=2)
    gt = np.argsort(d, axis=1, kind="stable")[:, :K]
    write_ivecs(gpath, gt)

    for mode in ("float", "sq8", "pq"):
        cmd = [env.ruvector, "index-bench", "--base", bpath, "--queries", qpath, "--mode", mode, "--threads", "2",
               "--ef", "16,400", "--k", str(K), "--out", opath, "--gt", gpath]
        if mode == "pq":
            cmd += ["--pq-m", "8"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        check(r.returncode == 0, f"{mode}: exit {r.returncode}: {r.stderr}")
        lines = r.stdout.splitlines()
        build = [kv(l) for l in lines if l.startswith("build ")]
        search = {int(kv(l)["ef"]): kv(l) for l in lines if l.startswith("search ")}
        check(len(build) == 1 and int(build[0]["n"]) == N, f"{mode}: build line {build}")
        check(float(build[0]["bytes_per_vector"]) > 0, f"{mode}: bytes per vector {build[0]}")
        check(set(search) == {16, 400}, f"{mode}: search lines {search}")
        got = read_ivecs(env.path("out.ef400.ivecs"))
        check(got.shape == (NQ, K), f"{mode}: ivecs shape {got.shape}")
        hits = sum(len(set(g) & set(t)) for g, t in zip(got.tolist(), gt.tolist()))
        # ef 400 over 3,000 clustered vectors: the graph finds the exact
        # neighbours (PQ and SQ8 re-rank with floats).
        check(hits == NQ * K, f"{mode}: ef=400 found {hits} of {NQ * K} exact neighbours")
        check(abs(float(search[400]["recall"]) - hits / (NQ * K)) < 1e-9,
              f"{mode}: printed recall {search[400]['recall']} != {hits / (NQ * K)}")
        check(os.path.exists(env.path("out.ef16.ivecs")), f"{mode}: no ivecs for ef 16")
        log(f"{mode}: ok ({search[16]['recall']} at ef 16)")

    r = subprocess.run([env.ruvector, "index-bench", "--base", bpath, "--queries", qpath, "--churn", "3",
                        "--ef", "64"], capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, f"churn: exit {r.returncode}: {r.stderr}")
    churn = [kv(l) for l in r.stdout.splitlines() if l.startswith("churn ")]
    check(len(churn) == 1, f"churn: output {r.stdout!r}")
    c = churn[0]
    check(int(c["live"]) == N // 2, f"churn: live {c['live']}")
    check(float(c["recall_churned"]) >= float(c["recall_fresh"]) - 0.02,
          f"churn: recall {c['recall_churned']} vs fresh {c['recall_fresh']}")

    for bad in (["--base", bpath], ["--base", bpath, "--queries", qpath, "--mode", "nope"],
                ["--base", bpath, "--queries", qpath, "--ef", "0"], ["--base", bpath, "--queries", qpath, "--M", "1"]):
        r = subprocess.run([env.ruvector, "index-bench"] + bad, capture_output=True, text=True, timeout=60)
        check(r.returncode == 64, f"{bad}: exit {r.returncode}, want 64")
    r = subprocess.run([env.ruvector, "index-bench", "--base", env.path("missing.fvecs"), "--queries", qpath],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and "missing.fvecs" in r.stderr, f"missing file: {r.returncode} {r.stderr!r}")


if __name__ == "__main__":
    main(run)
