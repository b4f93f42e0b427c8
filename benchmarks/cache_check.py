"""After a refactor: re-run `ipgkit experiments --all` on a copy of the workspace whose tables were deleted, counting
every generation batch and every IPG scoring pass: with the cache keys unchanged both stay at 0
and every table comes back byte-identical.

    python benchmarks/cache_check.py runs/experiments /tmp/workspace-copy
"""

import shutil
import sys
import time
from pathlib import Path

if len(sys.argv) != 3:
    raise SystemExit("usage: python benchmarks/cache_check.py WORKSPACE SCRATCH_COPY")
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
for table in dst.glob("*.csv"):
    if table.name != "timings.csv":
        table.unlink()

import ipgkit.attribution.engine as engine
import ipgkit.rollouts.sampling as sampling

calls = {"generate": 0, "path_gradients": 0}
real_generate, real_pg = sampling.generate, engine.path_gradients


def generate(*a, **k):
    calls["generate"] += 1
    return real_generate(*a, **k)


def path_gradients(*a, **k):
    calls["path_gradients"] += 1
    return real_pg(*a, **k)


sampling.generate = generate
engine.path_gradients = path_gradients
import ipgkit.attribution.path_rows as path_rows

path_rows.path_gradients = path_gradients
from ipgkit.cli import main

started = time.perf_counter()
code = main(["experiments", "--all", "--out", str(dst)])
print("exit", code, "seconds", round(time.perf_counter() - started, 1), calls)
for name in sorted(p.name for p in src.glob("*.csv")):
    if name == "timings.csv":
        continue
    a, b = (src / name).read_text(), (dst / name).read_text()
    print(name, "identical" if a == b else "DIFFERENT")
