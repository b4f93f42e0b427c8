import itertools
import math

import pytest

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import pass_at_k
from ipgkit.tasks import load


def test_pass_at_k_hand_case_and_closed_form():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    for n, c, k in [(5, 2, 2), (6, 3, 2), (8, 1, 3), (10, 4, 5)]:
        closed = 1 - math.comb(n - c, k) / math.comb(n, k)
        # brute force: fraction of k-subsets of the n samples holding a correct one
        samples = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(closed) == pytest.approx(brute)
    with pytest.raises(IpgkitError):
        pass_at_k(3, 4, 1)


def test_evaluate_returns_tidy_metrics(policy):
    task = load("arith-chain", split="test", n=6)
    table = ipgkit.evaluate(policy, task, n_samples=3, ks=(1, 3), max_new_tokens=8)
    assert list(table.columns) == [
        "model",
        "task",
        "split",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n",
    ]
    metrics = dict(zip(table.metric, table.value, strict=True))
    assert set(metrics) == {
        "accuracy@1",
        "mean_length",
        "frac_at_budget",
        "pass@1",
        "pass@3",
        "sample_accuracy",
        "frac_mixed",
        "frac_all_wrong",
    }
    assert metrics["pass@1"] == pytest.approx(metrics["sample_accuracy"])
    assert 0 < metrics["mean_length"] <= 8
    greedy, _ = ipgkit.evaluation_rollouts(policy, task, max_new_tokens=8)
    at_budget = (greedy.completion_lengths == 8).float().mean().item()
    assert metrics["frac_at_budget"] == pytest.approx(at_budget)
    with pytest.raises(IpgkitError, match="k <= n_samples"):
        ipgkit.evaluate(policy, task, n_samples=2, ks=(4,), max_new_tokens=4)
