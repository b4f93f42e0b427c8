"""One steered condition against the unsteered model on the same problems, as one table row."""

from __future__ import annotations

import numpy as np

from ipgkit.stats import mean_interval, paired_comparison, wilson_interval

from .workspace import Outcome


def condition_row(base: list[Outcome], steered: list[Outcome]) -> dict:
    """Accuracy of a steered condition (averaged over seeds) against the unsteered model on the
    same problems: accuracy with its 95% CI, the paired difference with its CI and p-value."""
    per_problem = np.mean([o.correct for o in steered], axis=0)
    if len(steered) == 1:
        accuracy = float(per_problem.mean())
        low, high = wilson_interval(per_problem.sum(), per_problem.size)
    else:
        accuracy, low, high = mean_interval(per_problem.tolist())
        low, high = max(0.0, low), min(1.0, high)
    comparison = paired_comparison(base[0].correct, per_problem)
    return {
        "accuracy": accuracy,
        "ci_low": low,
        "ci_high": high,
        "base_accuracy": float(base[0].correct.mean()),
        "difference": comparison["difference"],
        "diff_ci_low": comparison["ci_low"],
        "diff_ci_high": comparison["ci_high"],
        "p_value": comparison["p_value"],
        "test": comparison["test"],
        "n": per_problem.size,
        "seeds": len(steered),
        "seed_min": min(o.accuracy for o in steered),
        "seed_max": max(o.accuracy for o in steered),
        "mean_length": float(np.mean([o.length.mean() for o in steered])),
    }
