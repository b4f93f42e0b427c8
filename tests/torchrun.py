"""Launching a worker script under torchrun with 2 gloo processes, as the multi-process tests do."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_two_processes(worker: str, folder: Path, *arguments, timeout: int = 300) -> None:
    """Write ``worker`` (Python source) to ``folder`` and run it under ``torchrun --standalone``
    with 2 processes of one thread each, with ``arguments`` after the script; fail with the
    workers' stderr when they fail."""
    script = folder / "worker.py"
    script.write_text(worker)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), *map(str, arguments)]
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
