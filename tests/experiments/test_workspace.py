"""The experiment workspace: every evaluation runs once, gamma = 1 is the unsteered model, and a
kill mid-write loses only the evaluation that was running."""

import json
from dataclasses import replace

import numpy as np
import pytest

import ipgkit
from ipgkit.components import mlp_neurons
from ipgkit.errors import IpgkitError
from ipgkit.experiments import workspace as workspace_module
from ipgkit.experiments.workspace import Workspace, set_signature
from ipgkit.tasks import load
from tests.conftest import tiny_policy


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(seed=2, n_ctx=320)


@pytest.fixture()
def task():
    return load("arith-chain", split="validation", n=3)


def forbid_evaluation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an evaluation ran although its result was cached")

    monkeypatch.setattr(workspace_module, "evaluation_rollouts", fail)


def test_a_steered_evaluation_equals_steering_by_hand_and_is_cached(
    policy, task, tmp_path, monkeypatch
):
    units = mlp_neurons(0, [1, 5, 9])
    ws = Workspace(tmp_path)
    outcome = ws.evaluate(policy, "tiny", task, units, gamma=0.0)
    with ipgkit.steer(policy, units, gamma=0.0):
        greedy, _ = ipgkit.evaluation.evaluation_rollouts(policy, task)
    assert outcome.texts == greedy.texts
    assert outcome.correct.tolist() == greedy.rewards.tolist()
    assert ws.computed == 1
    forbid_evaluation(monkeypatch)
    again = Workspace(tmp_path).evaluate(policy, "tiny", task, units, gamma=0.0)
    assert again.texts == outcome.texts and np.array_equal(again.length, outcome.length)


def test_gamma_one_shares_the_unsteered_entry_and_keys_tell_conditions_apart(
    policy, task, tmp_path
):
    ws = Workspace(tmp_path)
    base = ws.evaluate(policy, "tiny", task)
    assert ws.evaluate(policy, "tiny", task, mlp_neurons(0, [1]), gamma=1.0).texts == base.texts
    assert ws.computed == 1
    ws.evaluate(policy, "tiny", task, mlp_neurons(0, [1]), gamma=2.0)
    ws.evaluate(policy, "tiny", task, mlp_neurons(0, [2]), gamma=2.0)
    ws.evaluate(policy, "other-weights", task)
    assert ws.computed == 4
    assert set_signature(mlp_neurons(0, [1, 2])) != set_signature(mlp_neurons(0, [2, 1]))


def test_a_set_with_gains_steers_at_gamma_one(policy, task, tmp_path):
    # learned gains are applied at gamma = 1: the unsteered shortcut must not swallow them
    gained = replace(mlp_neurons(0, [1, 5, 9]), gains=(0.0, 0.0, 0.0))
    ws = Workspace(tmp_path)
    outcome = ws.evaluate(policy, "tiny", task, gained, gamma=1.0)
    with ipgkit.steer(policy, mlp_neurons(0, [1, 5, 9]), gamma=0.0):
        greedy, _ = ipgkit.evaluation.evaluation_rollouts(policy, task)
    assert outcome.texts == greedy.texts
    assert ws.computed == 1
    ws.evaluate(policy, "tiny", task)  # the unsteered model is another entry
    assert ws.computed == 2


def test_a_line_cut_short_by_a_kill_is_recomputed_not_fatal(policy, task, tmp_path):
    ws = Workspace(tmp_path)
    ws.evaluate(policy, "tiny", task)
    ws.evaluate(policy, "tiny", task, mlp_neurons(0, [3]), gamma=0.0)
    lines = ws.evaluations_path.read_text().splitlines()
    ws.evaluations_path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    resumed = Workspace(tmp_path)
    resumed.evaluate(policy, "tiny", task)
    assert resumed.computed == 0
    resumed.evaluate(policy, "tiny", task, mlp_neurons(0, [3]), gamma=0.0)
    assert resumed.computed == 1
    keys = [
        json.loads(line)["key"]
        for line in resumed.evaluations_path.read_text().splitlines()
        if line.endswith("}")
    ]
    assert len(keys) == 2


def test_tables_are_recomputed_only_when_settings_change(tmp_path):
    import pandas as pd

    ws, calls = Workspace(tmp_path), []

    def compute():
        calls.append(1)
        return pd.DataFrame({"x": [len(calls)]})

    assert ws.table("t", {"a": 1}, compute).x.tolist() == [1]
    assert ws.table("t", {"a": 1}, compute).x.tolist() == [1]
    assert ws.table("t", {"a": 2}, compute).x.tolist() == [2]
    assert len(calls) == 2


def test_other_settings_are_refused_and_overwrite_moves_the_old_results_aside(tmp_path):
    root = tmp_path / "run"
    Workspace(root, {"layer": 2, "p": 5})
    (root / "evaluations.jsonl").write_text('{"key": "k"}\n')
    Workspace(root, {"p": 5, "layer": 2})  # the same settings: resumes
    with pytest.raises(IpgkitError, match=r"differing: layer"):
        Workspace(root, {"layer": 3, "p": 5})
    Workspace(root, {"layer": 3, "p": 5}, overwrite=True)
    (aside,) = tmp_path.glob("run.replaced-*")
    assert (aside / "evaluations.jsonl").read_text() == '{"key": "k"}\n'
    assert json.loads((root / "settings.json").read_text()) == {"layer": 3, "p": 5}
    assert not (root / "evaluations.jsonl").exists()
