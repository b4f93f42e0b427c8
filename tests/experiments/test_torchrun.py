"""The experiment suite under torchrun (2 gloo processes): evaluations and attributions sharded
by rank, rank 0 writing the workspace, and the tables equal to one process's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ipgkit.experiments import Suite, run_experiments
from tests.experiments.test_suite import FAST

EXPERIMENTS = ("validation_grid", "control", "head_to_head")

WORKER = """
import sys
import torch
from ipgkit import distributed
from ipgkit.experiments import Suite, run_experiments
from tests.experiments.test_suite import FAST
from tests.experiments.test_torchrun import EXPERIMENTS

assert distributed.init_from_environment()
torch.set_num_threads(1)
suite = Suite(sys.argv[1], FAST, sae=False, progress=False)
run_experiments(suite, EXPERIMENTS, progress=False)
"""


def test_two_processes_give_the_tables_of_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    sharded_root = tmp_path / "sharded"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(sharded_root)]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    single = Suite(tmp_path / "single", FAST, sae=False, progress=False)
    tables = run_experiments(single, EXPERIMENTS, progress=False)
    for name in EXPERIMENTS:
        sharded = pd.read_csv(sharded_root / f"{name}.csv")
        pd.testing.assert_frame_equal(sharded, tables[name], check_exact=False, rtol=1e-9)
    # rank 0 alone wrote the evaluations: each once, the same ones as one process
    lines = (sharded_root / "evaluations.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys))
    expected = [
        json.loads(line)["key"] for line in single.ws.evaluations_path.read_text().splitlines()
    ]
    assert sorted(keys) == sorted(expected)
