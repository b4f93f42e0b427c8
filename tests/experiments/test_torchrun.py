"""The experiment suite under torchrun (2 gloo processes): evaluations and attributions sharded
by rank, rank 0 writing the workspace, and the tables equal to one process's."""

import json

import pandas as pd

from ipgkit.experiments import Suite, run_experiments
from tests.experiments.test_suite import FAST
from tests.torchrun import run_two_processes

EXPERIMENTS = ("validation_grid", "control", "head_to_head")

WORKER = """
import sys
import torch
from ipgkit import distributed
from ipgkit.experiments import Suite, run_experiments
from tests.experiments.test_suite import FAST
from tests.torchrun import run_two_processes
from tests.experiments.test_torchrun import EXPERIMENTS

assert distributed.init_from_environment()
torch.set_num_threads(1)
suite = Suite(sys.argv[1], FAST, sae=False, progress=False)
run_experiments(suite, EXPERIMENTS, progress=False)
"""


def test_two_processes_give_the_tables_of_one(tmp_path):
    sharded_root = tmp_path / "sharded"
    run_two_processes(WORKER, tmp_path, sharded_root, timeout=600)

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
