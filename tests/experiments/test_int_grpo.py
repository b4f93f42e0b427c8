"""The InT experiment end to end at a tiny size: every table, resume without recomputation, refusal
of a folder holding another configuration."""

from dataclasses import replace

import pandas as pd
import pytest

from ipgkit.errors import IpgkitError
from ipgkit.experiments.int_grpo import (
    ARMS,
    plot_int_experiment,
    run_int_experiment,
    small_config,
)
from ipgkit.training.grpo import GRPOConfig


@pytest.fixture(scope="module")
def arith():
    import ipgkit

    return ipgkit.load_model("arith")


def tiny_config():
    return replace(
        small_config(pool_candidates=10, k=2, held_out=4, n_continuations=2, table_samples=1),
        grpo=GRPOConfig(
            num_generations=2,
            per_device_train_batch_size=4,
            max_steps=1,
            eval_every=1,
            eval_samples=2,
            eval_ks=(1, 2),
            max_completion_length=100,
        ),
    )


def test_the_experiment_writes_every_table_and_resumes(arith, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    tables = run_int_experiment(arith, tiny_config(), tmp_path, progress=False)
    assert set(tables) == {
        "yields",
        "verifier",
        "interventions",
        "misplaced",
        "ablations",
        "on_policy",
        "steps",
        "per_problem",
        "arms",
        "paired",
    }
    arms = set(tables["arms"].arm)
    assert {"base", "grpo", "int-checker+grpo", "ref-sft+grpo"} <= arms <= set(ARMS)
    assert set(tables["yields"].proposer) == {
        "reference-checker",
        "self",
        "self, no reference",
    }
    assert {"frac_reward_zero_std", "reward", "entropy", "seed"} <= set(tables["steps"].columns)
    assert set(tables["misplaced"].placement) == {
        "one step early",
        "at the first error",
        "one step late",
    }
    conditions = set(tables["interventions"].condition)
    assert {"prefix", "prefix + original step", "prefix + checker intervention"} <= conditions
    # every pair of arms that ran is tested once per metric
    n_arms, n_metrics = len(arms), tables["arms"].metric.nunique()
    assert len(tables["paired"]) == n_metrics * n_arms * (n_arms - 1) // 2
    assert plot_int_experiment(tables, tmp_path / "plot.png") is not None

    import ipgkit.experiments.int_grpo as experiment
    import ipgkit.experiments.int_stages as stages

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(experiment, "hard_pool", no_sampling)
    monkeypatch.setattr(experiment, "propose_interventions", no_sampling)
    monkeypatch.setattr(stages, "train_sft", no_sampling)
    again = run_int_experiment(arith, tiny_config(), tmp_path, progress=False)
    assert again["arms"].equals(tables["arms"])
    with pytest.raises(IpgkitError, match="other settings"):
        run_int_experiment(arith, replace(tiny_config(), k=3), tmp_path, progress=False)


KILLED_RUN = """
import sys
import ipgkit
from ipgkit.experiments.int_grpo import run_int_experiment
from tests.experiments.test_int_grpo import tiny_config
run_int_experiment(ipgkit.load_model("arith"), tiny_config(), sys.argv[1], progress=False)
"""


def test_a_killed_experiment_resumes_without_redoing_finished_stages(arith, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ipgkit.experiments.int_grpo as experiment
    import ipgkit.experiments.int_stages as stages

    reference = run_int_experiment(arith, tiny_config(), tmp_path / "whole", progress=False)
    out = tmp_path / "killed"
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(out)],
        cwd=root,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (out / "sft_int-checker_s0.pt").exists() and child.poll() is None:
        assert time.monotonic() < deadline, "the run finished no SFT stage in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    finished = {path.name for path in out.iterdir()}
    assert {"pool.json", "interventions_rule.json", "sft_int-checker_s0.pt"} <= finished
    assert "arms.csv" not in finished

    calls = []

    def counted(module, name):
        original = getattr(module, name)

        def run(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, run)

    for module, name in (
        (experiment, "hard_pool"),
        (experiment, "propose_interventions"),
        (stages, "train_sft"),
    ):
        counted(module, name)
    resumed = run_int_experiment(arith, tiny_config(), out, progress=False)
    every_sft = {path.name for path in (tmp_path / "whole").glob("sft_*.pt")}
    sft_left = len(every_sft) - sum(name.startswith("sft_") for name in finished)
    assert calls == ["train_sft"] * sft_left  # the pool and interventions are not redone
    for name, table in reference.items():  # equal to the last bit, wall-clock times aside
        pd.testing.assert_frame_equal(
            resumed[name].drop(columns="seconds", errors="ignore"),
            table.drop(columns="seconds", errors="ignore"),
            check_exact=True,
            obj=name,
        )
