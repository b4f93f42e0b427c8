import itertools
import math

import pytest

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import (
    mcnemar_exact,
    mean_interval,
    paired_comparison,
    pass_at_k,
    wilson_interval,
)
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


def test_intervals():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(1.96 * 1 / math.sqrt(3), rel=1e-3)


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


def test_mcnemar_exact_equals_the_enumerated_sign_test():
    for only_base, only_other in [(0, 5), (1, 4), (3, 3), (7, 2), (0, 0), (10, 1)]:
        n = only_base + only_other
        # every way the n discordant pairs could split under H0 (each side with chance 1/2)
        observed = abs(only_base - only_other)
        extreme = sum(
            1
            for signs in itertools.product((0, 1), repeat=n)
            if abs(2 * sum(signs) - n) >= observed
        )
        assert mcnemar_exact(only_base, only_other) == pytest.approx(min(1.0, extreme / 2**n))
    assert mcnemar_exact(0, 5) == 0.0625 and mcnemar_exact(2, 9) == mcnemar_exact(9, 2)
    with pytest.raises(IpgkitError):
        mcnemar_exact(-1, 2)


def test_paired_comparison_of_binary_outcomes():
    base = [1, 1, 1, 0, 0, 1, 0, 1]
    other = [1, 0, 0, 0, 1, 1, 0, 0]
    result = paired_comparison(base, other)
    differences = [o - b for b, o in zip(base, other, strict=True)]
    mean, low, high = mean_interval(differences)
    assert result["difference"] == pytest.approx(-2 / 8) == pytest.approx(mean)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    assert result["test"] == "mcnemar_exact"
    assert result["p_value"] == pytest.approx(mcnemar_exact(3, 1))
    same = paired_comparison(base, base)
    assert (same["difference"], same["ci_low"], same["ci_high"], same["p_value"]) == (0, 0, 0, 1)


def test_paired_comparison_of_seed_averages_uses_a_z_test():
    base = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    other = [0.5, 0.0, 0.25, 1.0, 0.5, 0.75]
    result = paired_comparison(base, other)
    differences = [o - b for b, o in zip(base, other, strict=True)]
    mean, low, _ = mean_interval(differences)
    se = (mean - low) / 1.959963984540054
    assert result["test"] == "paired_z"
    assert result["p_value"] == pytest.approx(math.erfc(abs(mean) / se / math.sqrt(2)))
    with pytest.raises(IpgkitError, match="equal-length"):
        paired_comparison([1, 0], [1, 0, 1])
