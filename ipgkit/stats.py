"""Confidence intervals, paired tests and the Dice distribution, from scipy and statsmodels.

ipgkit reports every accuracy with an interval and every comparison with a p-value; the formulas
are the libraries', never hand-written, so a reader can check them against a textbook:

- a proportion (accuracy of one condition): Wilson's score interval
  (``statsmodels.stats.proportion.proportion_confint(method="wilson")``);
- a mean (lengths, seed-averaged accuracies, per-problem differences): Student's t interval
  (``scipy.stats.t``);
- two conditions on the same problems: the exact McNemar test when both are 0/1
  (``scipy.stats.binomtest`` on the discordant pairs), else the paired t-test
  (``scipy.stats.ttest_1samp`` on the per-problem differences, equal to ``ttest_rel``);
- the overlap of two random unit sets: the hypergeometric distribution (``scipy.stats.hypergeom``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from ipgkit.errors import IpgkitError

CONFIDENCE = 0.95


def wilson_interval(
    successes: float, total: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1).

    Example:
        >>> [round(x, 4) for x in wilson_interval(50, 100)]
        [0.4038, 0.5962]
    """
    if total <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= total:
        raise IpgkitError(f"need 0 <= successes <= total, got {successes} of {total}")
    low, high = proportion_confint(successes, total, alpha=1 - confidence, method="wilson")
    return (max(0.0, float(low)), min(1.0, float(high)))


def mean_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """Mean and its Student-t interval (mean +- t_{n-1} * standard error).

    Returns ``(mean, nan, nan)`` for a single value, and a zero-width interval when every value is
    the same (the sample has no spread to estimate).

    Example:
        >>> [round(x, 3) for x in mean_interval([1.0, 2.0, 3.0])]
        [2.0, -0.484, 4.484]
    """
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(array.mean())
    if array.size < 2:
        return (mean, math.nan, math.nan)
    spread = float(array.std(ddof=1))
    if spread == 0.0:
        return (mean, mean, mean)
    low, high = scipy_stats.t.interval(
        confidence, df=array.size - 1, loc=mean, scale=spread / math.sqrt(array.size)
    )
    return (mean, float(low), float(high))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: problems only the first
    condition gets right and problems only the second gets right (a binomial(b + c, 1/2) test).

    Example:
        >>> mcnemar_exact(0, 5)
        0.0625
    """
    if only_first < 0 or only_second < 0:
        raise IpgkitError(f"discordant counts must be >= 0, got {only_first}, {only_second}")
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    return float(scipy_stats.binomtest(only_first, discordant, 0.5).pvalue)


def paired_comparison(
    base: Sequence[float], other: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, float]:
    """Compare two conditions on the same problems: ``other - base`` per problem.

    Args:
        base: [problems] correctness (0/1), or a mean over seeds in [0, 1], of the reference
            condition (e.g. the unsteered model).
        other: [problems] the same for the compared condition, in the same problem order.

    Returns:
        ``difference`` (mean of other - base), ``ci_low``/``ci_high`` (Student-t interval over
        the per-problem differences), ``p_value`` and ``test``: ``"mcnemar_exact"`` when both
        inputs are 0/1, otherwise ``"paired_t"`` (values averaged over seeds are not binary),
        and ``n``.

    Example:
        >>> paired_comparison([1, 1, 0, 0], [1, 0, 0, 0])["difference"]
        -0.25
    """
    first, second = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if first.shape != second.shape or first.ndim != 1 or first.size == 0:
        raise IpgkitError(
            f"paired comparison needs two equal-length, non-empty 1-D sequences; got shapes "
            f"{first.shape} and {second.shape}"
        )
    differences = second - first
    mean, low, high = mean_interval(differences, confidence)
    binary = np.isin(first, (0.0, 1.0)).all() and np.isin(second, (0.0, 1.0)).all()
    if binary:
        only_base = int(((first == 1) & (second == 0)).sum())
        only_other = int(((first == 0) & (second == 1)).sum())
        p_value, test = mcnemar_exact(only_base, only_other), "mcnemar_exact"
    else:
        test = "paired_t"
        if differences.size < 2 or float(differences.std(ddof=1)) == 0.0:
            p_value = 1.0 if mean == 0.0 else 0.0  # no spread: the difference is exact
        else:
            p_value = float(scipy_stats.ttest_1samp(differences, 0.0).pvalue)
    return {
        "difference": mean,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "test": test,
        "n": int(differences.size),
    }


def random_dice(units: int, size: int, observed: float | None = None) -> dict[str, float]:
    """The Dice overlap of two independent, uniformly random ``size``-subsets of ``units`` units,
    exactly: the number of shared units is hypergeometric (population ``units``, ``size``
    marked, ``size`` drawn) and Dice is that number over ``size``. Returns its mean
    ``size / units``, its 95th percentile and, given an ``observed`` Dice, the chance that random
    sets overlap at least as much (a one-sided p-value).

    Example:
        >>> random_dice(4, 2)["mean"]
        0.5
    """
    if not 1 <= size <= units:
        raise IpgkitError(f"need 1 <= size <= units, got size={size}, units={units}")
    shared = scipy_stats.hypergeom(units, size, size)
    summary = {"mean": float(shared.mean()) / size, "p95": float(shared.ppf(0.95)) / size}
    if observed is not None:
        at_least = math.ceil(observed * size - 1e-9)  # shared units needed to reach ``observed``
        summary["p_value"] = float(shared.sf(at_least - 1))
    return summary


def fraction_of_oracle_gain(
    weak: np.ndarray, method: np.ndarray, oracle: np.ndarray, seed: int = 0
) -> tuple[float, float, float]:
    """(fraction, 95% low, 95% high): ``(acc_method - acc_weak) / (acc_oracle - acc_weak)`` on
    paired per-problem correctness, with a paired percentile bootstrap (scipy) over problems.
    Resamples in which the oracle gains nothing leave the ratio undefined; the interval is taken
    over the others (NaN when there are none).

    Example:
        >>> fraction_of_oracle_gain(np.array([0, 0]), np.array([1, 0]), np.array([1, 1]))[0]
        0.5
    """

    def ratio(w, m, o, axis=-1):
        gain = o.mean(axis=axis) - w.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (m.mean(axis=axis) - w.mean(axis=axis)) / gain

    value = float(ratio(weak, method, oracle))
    with warnings.catch_warnings():  # degenerate resamples are the undefined ones, dropped below
        warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)
        resampled = scipy_stats.bootstrap(
            (weak, method, oracle),
            ratio,
            paired=True,
            vectorized=True,
            n_resamples=2000,
            method="percentile",
            random_state=np.random.default_rng(seed),
        ).bootstrap_distribution
    defined = resampled[np.isfinite(resampled)]
    if not defined.size:
        return value, float("nan"), float("nan")
    low, high = np.percentile(defined, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return value, float(low), float(high)


__all__ = [
    "CONFIDENCE",
    "fraction_of_oracle_gain",
    "mcnemar_exact",
    "mean_interval",
    "paired_comparison",
    "random_dice",
    "wilson_interval",
]
