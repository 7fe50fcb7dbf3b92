"""`ruvector pipeline validate`: every problem of a broken topology printed as
file:line:column with a reason, exit 78; the shipped topologies exit 0."""
import glob
import os
import re
import subprocess

from harness import check, log, main

BROKEN = """name: broken
kafka:
  brokers: ${RV_UNDEFINED_FOR_TEST}
collections:
  - name: fashion
    metric: l2
  - name: other
    dim: many
serve:
  listen: 127.0.0.1:8080
  colour: blue
"""
# line 3: undefined variable (column of the value), line 5: missing dim (the
# mapping starts at column 5), line 8: wrong type, line 11: unknown key.
EXPECT = [("3:12", "RV_UNDEFINED_FOR_TEST"), ("5:5", "dim"), ("8:10", "integer"), ("11:3", "colour")]


def run(env):
    path = env.path("broken.yaml")
    with open(path, "w") as f:
        f.write(BROKEN)
    environ = dict(os.environ)
    environ.pop("RV_UNDEFINED_FOR_TEST", None)
    r = subprocess.run([env.ruvector, "pipeline", "validate", path], capture_output=True, text=True, env=environ)
    check(r.returncode == 78, f"exit {r.returncode}, want 78\n{r.stderr}")
    lines = [l for l in r.stderr.splitlines() if re.match(re.escape(path) + r":\d+:\d+: ", l)]
    check(len(lines) == len(EXPECT), f"want {len(EXPECT)} problems, got:\n{r.stderr}")
    for (pos, word), line in zip(EXPECT, lines):
        check(line.startswith(f"{path}:{pos}: ") and word in line, f"want {pos} mentioning {word!r}: {line}")
    check(f"{path}: invalid topology (4 problems)" in r.stderr, f"summary line missing:\n{r.stderr}")
    log("broken topology: 4 problems with positions, exit 78")

    for topo in sorted(glob.glob(os.path.join(env.source_dir, "pipelines", "*.yaml"))):
        r = subprocess.run([env.ruvector, "pipeline", "validate", topo], capture_output=True, text=True)
        check(r.returncode == 0, f"{topo}: exit {r.returncode}\n{r.stderr}")
    log("shipped topologies are valid")

    r = subprocess.run([env.ruvector, "pipeline", "validate", env.path("missing.yaml")], capture_output=True,
                       text=True)
    check(r.returncode == 78 and "missing.yaml" in r.stderr, f"missing file: exit {r.returncode} {r.stderr}")


if __name__ == "__main__":
    main(run)
