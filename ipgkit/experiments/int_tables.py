"""The InT comparison's per-problem results and what is computed from them: held-out accuracy@1
and pass@k per arm over seeds, paired tests between arms, the verifier's agreement with the
rule-based checker, and the figure (zero-advantage ratio and entropy per seed, final accuracy).

Every test pairs arms on the same held-out problems: per problem, the mean over seeds of greedy
correctness (or of pass@k), compared with :func:`ipgkit.stats.paired_comparison`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ipgkit.evaluation import evaluation_rollouts, pass_at_k
from ipgkit.models.policy import Policy
from ipgkit.stats import mean_interval, paired_comparison, wilson_interval
from ipgkit.tasks.base import Task
from ipgkit.training.int_records import InterventionSet


def per_problem_results(
    policy: Policy,
    task: Task,
    n_samples: int,
    ks: Sequence[int],
    seed: int,
    max_new_tokens: int | None = None,
) -> pd.DataFrame:
    """One row per problem: greedy correctness (``accuracy@1``) and unbiased ``pass@k`` from
    ``n_samples`` samples at T = 0.7, the same rollouts :func:`ipgkit.evaluate` scores.

    Example:
        >>> per_problem_results(policy, held_out, n_samples=8, ks=(8,), seed=0)  # doctest: +SKIP
    """
    greedy, sampled = evaluation_rollouts(
        policy, task, n_samples, seed=seed, max_new_tokens=max_new_tokens, progress=False
    )
    rows = []
    counts = sampled.rewards_by_group().gt(0).sum(-1).tolist() if sampled is not None else None
    for index, problem in enumerate(task.problems):
        row = {"problem": problem.id, "accuracy@1": float(greedy.rewards[index] > 0)}
        for k in ks:
            if counts is not None and k <= n_samples:
                row[f"pass@{k}"] = pass_at_k(n_samples, int(counts[index]), k)
        rows.append(row)
    return pd.DataFrame(rows)


def _by_problem(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """[problem x arm] means over seeds of ``metric``."""
    return results.pivot_table(index="problem", columns="arm", values=metric, aggfunc="mean")


def metrics_of(results: pd.DataFrame) -> list[str]:
    return [c for c in results.columns if c == "accuracy@1" or c.startswith("pass@")]


def arms_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per arm and metric: the mean over problems of the per-problem mean over seeds, its 95%
    t-interval over problems, and each seed's own mean (``per_seed``, in seed order)."""
    rows = []
    for metric in metrics_of(results):
        table = _by_problem(results, metric)
        for arm in dict.fromkeys(results.arm):
            mean, low, high = mean_interval(table[arm].to_numpy())
            seeds = results[results.arm == arm].groupby("seed")[metric].mean()
            rows.append(
                {
                    "arm": arm,
                    "metric": metric,
                    "value": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "per_seed": " / ".join(f"{v:.3f}" for v in seeds),
                    "seeds": len(seeds),
                    "problems": len(table),
                }
            )
    return pd.DataFrame(rows)


def paired_arms(results: pd.DataFrame) -> pd.DataFrame:
    """Every pair of arms on every metric: the difference (second minus first) of per-problem
    means over seeds, its 95% interval, the paired test and whether the interval excludes 0."""
    rows = []
    arms = list(dict.fromkeys(results.arm))
    for metric in metrics_of(results):
        table = _by_problem(results, metric)
        for first, second in combinations(arms, 2):
            test = paired_comparison(table[first].to_numpy(), table[second].to_numpy())
            outside = bool(test["ci_low"] > 0 or test["ci_high"] < 0)
            rows.append({"metric": metric, "arm": second, "versus": first, **test})
            rows[-1]["interval_excludes_0"] = outside
    return pd.DataFrame(rows)


def verifier_agreement(
    proposals: Mapping[str, InterventionSet], checker: InterventionSet
) -> pd.DataFrame:
    """How often each proposer's candidate (before the correctness filter) has the checker's
    location and the checker's exact step, over all attempts (no candidate counts as wrong),
    with Wilson intervals.

    Example:
        >>> verifier_agreement({"self": own}, rule)                          # doctest: +SKIP
    """
    rows = []
    for name, proposed in proposals.items():
        pairs = list(zip(proposed.candidates, checker.candidates, strict=True))
        pairs = [(p, c) for p, c in pairs if c is not None]
        n = len(pairs)
        for measure, hits in (
            ("has a candidate", sum(p is not None for p, _ in pairs)),
            ("right location", sum(p is not None and p.location == c.location for p, c in pairs)),
            ("exact fix", sum(p == c for p, c in pairs)),
        ):
            low, high = wilson_interval(hits, n) if n else (np.nan, np.nan)
            rate = hits / n if n else np.nan
            rows.append(
                {
                    "proposer": name,
                    "measure": measure,
                    "rate": rate,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                }
            )
    return pd.DataFrame(rows)


def plot_int_experiment(tables: dict[str, pd.DataFrame], path: str | Path | None = None):
    """Zero-advantage ratio and token entropy per GRPO step for each arm and seed, and held-out
    accuracy@1 and pass@k per arm with 95% intervals over problems. Returns the figure."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    steps = tables["steps"]
    for index, (arm, log) in enumerate(steps.groupby("arm", sort=False)):
        for seed_index, (_, run) in enumerate(log.groupby("seed")):
            style = dict(color=colours[index % len(colours)], alpha=0.8, lw=1.2)
            label = arm if seed_index == 0 else None
            axes[0].plot(run.step, run.frac_reward_zero_std, label=label, **style)
            axes[1].plot(run.step, run.entropy, label=label, **style)
    axes[0].set(xlabel="GRPO step", ylabel="frac_reward_zero_std", ylim=(-0.02, 1.02))
    axes[0].set_title("zero-advantage ratio (hard pool), one line per seed", fontsize=9)
    axes[1].set(xlabel="GRPO step", ylabel="mean token entropy (nats)")
    axes[1].set_title("entropy of the sampled completions", fontsize=9)
    axes[0].legend(fontsize=7)
    summary = tables["arms"]
    metrics = list(dict.fromkeys(summary.metric))
    arms = list(dict.fromkeys(summary.arm))
    width = 0.8 / max(len(metrics), 1)
    for position, metric in enumerate(metrics):
        rows = summary[summary.metric == metric].set_index("arm").loc[arms]
        x = [i + position * width for i in range(len(arms))]
        error = [
            (rows.value - rows.ci_low).clip(lower=0).fillna(0),
            (rows.ci_high - rows.value).clip(lower=0).fillna(0),
        ]
        axes[2].bar(x, rows.value, width, yerr=error, label=metric, capsize=3)
    ticks = [i + width * (len(metrics) - 1) / 2 for i in range(len(arms))]
    axes[2].set_xticks(ticks, arms, fontsize=7, rotation=20)
    axes[2].set(ylabel="held-out (hard-test)")
    axes[2].set_title("after GRPO, mean over seeds", fontsize=9)
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=130, bbox_inches="tight")
    return figure


__all__ = [
    "arms_summary",
    "paired_arms",
    "per_problem_results",
    "plot_int_experiment",
    "verifier_agreement",
]
