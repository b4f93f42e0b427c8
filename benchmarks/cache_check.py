"""After a refactor: rederive every experiment table from a workspace's cache, counting model calls.

Copies the workspace, deletes its tables and reruns ``ipgkit experiments --all`` on the copy while
counting generation batches and IPG scoring passes. With the cache keys unchanged both stay at 0
and every table comes back byte-identical.

    python benchmarks/cache_check.py runs/experiments /tmp/workspace-copy
"""

import shutil
import sys
import time
from pathlib import Path

import ipgkit.attribution.path_rows as path_rows
import ipgkit.rollouts.sampling as sampling
from ipgkit.cli import main


def counted(calls: dict, name: str, function):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)

    return wrapper


def run(source: Path, copy: Path) -> None:
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    tables = sorted(p.name for p in source.glob("*.csv") if p.name != "timings.csv")
    for name in tables:
        (copy / name).unlink()
    calls = {"generate": 0, "path_gradients": 0}
    sampling.generate = counted(calls, "generate", sampling.generate)
    path_rows.path_gradients = counted(calls, "path_gradients", path_rows.path_gradients)
    started = time.perf_counter()
    code = main(["experiments", "--all", "--out", str(copy)])
    print(f"exit {code}, {time.perf_counter() - started:.1f} s, model calls {calls}")
    for name in tables:
        same = (source / name).read_bytes() == (copy / name).read_bytes()
        print(f"{name}: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python benchmarks/cache_check.py WORKSPACE SCRATCH_COPY")
    run(Path(sys.argv[1]), Path(sys.argv[2]))
