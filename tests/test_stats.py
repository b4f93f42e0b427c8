"""ipgkit.stats against the libraries it wraps and against hand computations.

Every expected value here is computed in the test, either by formula or by enumeration, or by a
different entry point of scipy/statsmodels than the one ipgkit calls, so a wrong formula or a
wrong argument order fails.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar

from ipgkit.analysis import dice
from ipgkit.errors import IpgkitError
from ipgkit.experiments.outcomes import condition_row
from ipgkit.experiments.workspace import Outcome
from ipgkit.stats import (
    mcnemar_exact,
    mean_interval,
    paired_comparison,
    random_dice,
    wilson_interval,
)


def wilson_by_formula(successes, total, z=1.959963984540054):
    p = successes / total
    centre = (p + z**2 / (2 * total)) / (1 + z**2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / (1 + z**2 / total)
    return centre - half, centre + half


@pytest.mark.parametrize("successes, total", [(50, 100), (0, 10), (10, 10), (3, 40), (378, 600)])
def test_wilson_interval_equals_the_textbook_formula(successes, total):
    low, high = wilson_interval(successes, total)
    expected = wilson_by_formula(successes, total)
    assert (low, high) == pytest.approx((max(0, expected[0]), min(1, expected[1])), abs=1e-12)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    with pytest.raises(IpgkitError, match="successes"):
        wilson_interval(11, 10)


def test_mean_interval_is_student_t():
    values = [1.0, 2.0, 3.0, 7.0]
    mean, low, high = mean_interval(values)
    # by hand: mean 3.25, s = sqrt(((2.25^2 + 1.25^2 + 0.25^2 + 3.75^2) / 3), t_{0.975, 3} = 3.1824
    s = math.sqrt((2.25**2 + 1.25**2 + 0.25**2 + 3.75**2) / 3)
    assert mean == 3.25
    assert high - mean == pytest.approx(3.182446305284263 * s / 2, rel=1e-12)
    assert mean - low == pytest.approx(high - mean, rel=1e-12)
    assert mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert math.isnan(mean_interval([1.0])[1])


def test_mcnemar_exact_equals_the_enumerated_sign_test_and_statsmodels():
    for only_base, only_other in [(0, 5), (1, 4), (3, 3), (7, 2), (0, 0), (10, 1)]:
        n = only_base + only_other
        # every way the n discordant pairs could split under H0 (each side with chance 1/2)
        observed = abs(only_base - only_other)
        extreme = sum(
            1
            for signs in itertools.product((0, 1), repeat=n)
            if abs(2 * sum(signs) - n) >= observed
        )
        p = mcnemar_exact(only_base, only_other)
        assert p == pytest.approx(min(1.0, extreme / 2**n))
        table = [[5, only_base], [only_other, 5]]
        assert p == pytest.approx(statsmodels_mcnemar(table, exact=True).pvalue)
    assert mcnemar_exact(0, 5) == 0.0625 and mcnemar_exact(2, 9) == mcnemar_exact(9, 2)
    with pytest.raises(IpgkitError):
        mcnemar_exact(-1, 2)


def test_paired_comparison_of_binary_outcomes():
    base = [1, 1, 1, 0, 0, 1, 0, 1]
    other = [1, 0, 0, 0, 1, 1, 0, 0]
    result = paired_comparison(base, other)
    differences = np.array(other) - np.array(base)
    half = scipy.stats.t.ppf(0.975, 7) * differences.std(ddof=1) / math.sqrt(8)
    assert result["difference"] == -0.25
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((-0.25 - half, -0.25 + half))
    assert result["test"] == "mcnemar_exact"
    assert result["p_value"] == pytest.approx(
        2 * (1 + 4) / 16
    )  # 3 vs 1 discordant: 2 P(X <= 1), n = 4
    same = paired_comparison(base, base)
    assert (same["difference"], same["ci_low"], same["ci_high"], same["p_value"]) == (0, 0, 0, 1)


def test_paired_comparison_of_seed_averages_is_a_paired_t_test():
    base = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    other = [0.5, 0.0, 0.25, 1.0, 0.5, 0.75]
    result = paired_comparison(base, other)
    differences = np.array(other) - np.array(base)
    statistic = differences.mean() / (differences.std(ddof=1) / math.sqrt(6))
    assert result["test"] == "paired_t"
    assert result["p_value"] == pytest.approx(2 * scipy.stats.t.sf(abs(statistic), df=5))
    assert result["p_value"] == pytest.approx(scipy.stats.ttest_rel(other, base).pvalue)
    with pytest.raises(IpgkitError, match="equal-length"):
        paired_comparison([1, 0], [1, 0, 1])


def test_random_dice_is_the_exact_distribution_of_random_subsets():
    units, size = 7, 3
    subsets = list(itertools.combinations(range(units), size))
    values = [dice(a, b) for a in subsets for b in subsets]
    exact = random_dice(units, size, observed=2 / 3)
    assert exact["mean"] == pytest.approx(sum(values) / len(values)) == pytest.approx(size / units)
    assert exact["p_value"] == pytest.approx(sum(v >= 2 / 3 - 1e-12 for v in values) / len(values))
    cumulative = sum(v <= exact["p95"] for v in values) / len(values)
    below = sum(v < exact["p95"] for v in values) / len(values)
    assert below < 0.95 <= cumulative  # the smallest value with at least 95% of the mass below
    # the README's case: two random 10-sets of 512 neurons
    assert random_dice(512, 10)["mean"] == pytest.approx(10 / 512)
    assert random_dice(512, 10, observed=0.2)["p_value"] == pytest.approx(
        sum(math.comb(10, k) * math.comb(502, 10 - k) for k in range(2, 11)) / math.comb(512, 10)
    )
    with pytest.raises(IpgkitError):
        random_dice(3, 4)


# --- Table 1: the right test on the right pairs ---------------------------------------------------


def outcome(correct):
    correct = np.asarray(correct, dtype=float)
    return Outcome(
        [f"p{i}" for i in range(len(correct))], correct, np.ones(len(correct)), [""] * len(correct)
    )


def test_table_one_uses_exact_mcnemar_on_problem_pairs_for_one_set():
    base = outcome([0, 0, 0, 0, 0, 0, 1, 1])
    steered = outcome([1, 1, 1, 1, 1, 1, 1, 0])
    row = condition_row([base], [steered])
    # discordant pairs, problem by problem: base only at p7, steered only at p0..p5
    assert row["test"] == "mcnemar_exact"
    assert row["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)  # 2 P(X <= 1), X ~ Bin(7, 1/2)
    assert row["difference"] == pytest.approx(5 / 8)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_by_formula(7, 8))
    # the same accuracy paired with other problems: base only nowhere, steered only 5 times
    shuffled = condition_row([base], [outcome([1, 0, 1, 1, 1, 1, 1, 1])])
    assert shuffled["p_value"] == pytest.approx(2 / 2**5)


def test_table_one_uses_a_paired_t_test_for_seed_averages():
    base = outcome([1, 1, 0, 0, 1, 0])
    seeds = [outcome([1, 0, 1, 0, 1, 1]), outcome([0, 1, 1, 0, 1, 0])]
    row = condition_row([base], seeds)
    per_problem = np.array([0.5, 0.5, 1.0, 0.0, 1.0, 0.5])
    differences = per_problem - np.array([1, 1, 0, 0, 1, 0])
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(6))
    assert row["test"] == "paired_t" and row["seeds"] == 2
    assert row["p_value"] == pytest.approx(2 * scipy.stats.t.sf(abs(t), df=5))
    assert row["accuracy"] == pytest.approx(per_problem.mean())
    half = scipy.stats.t.ppf(0.975, 5) * per_problem.std(ddof=1) / math.sqrt(6)
    assert row["ci_high"] == pytest.approx(min(1.0, per_problem.mean() + half))
