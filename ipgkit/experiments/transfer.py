"""Consistency and transfer across datasets (IPG paper, Table 2 and Fig. 8), transfer to a
distilled model (Table 3) and reasoning strength with a length reward (Fig. 3)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ipgkit.analysis import dice, random_dice
from ipgkit.attribution import random_baseline
from ipgkit.tasks.rewards import length_reward
from ipgkit.training.distill import check_rate

from .control import pool_outcomes
from .methods import SelectedSets
from .outcomes import condition_row
from .suite import Suite
from .validation import chosen


def dataset_sets(suite: Suite, resample: int = 0):
    """IPG on each ``config.datasets`` support set (``support`` prompts each, own rollouts).
    ``resample = r > 0`` draws the rollouts with seed ``seed + r``: the same prompts, another
    sample, to measure how much of a set is the estimator's noise."""
    config, units = suite.config, suite.neurons()
    seed = config.seed + resample
    results = {}
    for dataset in config.datasets:
        family, split = dataset.split("/")
        task = suite.task(family, split, config.support)
        settings = {
            "policy": suite.policy_key,
            "dataset": dataset,
            "n": config.n_rollouts,
            "problems": len(task),
            "seed": seed,
        }
        rollouts = suite.paper_rollouts(
            f"support_{family}_{split}", settings, task, suite.policy, seed
        )
        results[dataset] = suite.ipg(
            f"ipg_{family}_{split}", suite.policy, suite.policy_key, units, rollouts
        )
    return results


def dataset_consistency(suite: Suite) -> pd.DataFrame:
    """Dice overlap of the top-p IPG sets found on every pair of datasets, against two random
    p-subsets of the same units (exact: the expected Dice, its 95th percentile and the chance
    that random sets overlap as much). Rows with ``second = "<dataset> (resampled)"`` compare a
    dataset's set with the set from a second sample of rollouts on the same prompts: the ceiling
    that estimator noise puts on any cross-dataset overlap.

    Example:
        >>> dataset_consistency(suite).query("p == 10")                     # doctest: +SKIP
    """
    results = dataset_sets(suite)
    resampled = dataset_sets(suite, resample=1)
    width = len(suite.neurons().resolved(suite.policy.model))
    names = list(results)
    pairs = [(a, b, results[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs += [(a, f"{a} (resampled)", resampled[a]) for a in names]
    rows = []
    for first, second, other in pairs:
        for p in suite.config.dice_ps:
            if not (results[first].ranks_anything and other.ranks_anything):
                # a support set without signal ranks nothing: no overlap to measure
                rows.append(
                    {
                        "first": first,
                        "second": second,
                        "p": p,
                        "dice": math.nan,
                        "random_mean": random_dice(width, p)["mean"],
                        "random_p95": math.nan,
                        "p_value": math.nan,
                        "units": width,
                    }
                )
                continue
            value = dice(results[first].top(p), other.top(p))
            chance = random_dice(width, p, observed=value)
            rows.append(
                {
                    "first": first,
                    "second": second,
                    "p": p,
                    "dice": value,
                    "random_mean": chance["mean"],
                    "random_p95": chance["p95"],
                    "p_value": chance["p_value"],
                    "units": width,
                }
            )
    return pd.DataFrame(rows)


def dataset_transfer(suite: Suite) -> pd.DataFrame:
    """The IPG set found on one standard-split dataset steering every family's test problems:
    suppression (``suppress_p`` at gamma = 0) and enhancement (IPG's validation choice). A source
    whose support prompts all have rollouts that agree ranks no unit; its rows keep
    ``source_prompts_with_signal`` = 0 and no accuracies, instead of steering units 0..p-1.

    Example:
        >>> table = dataset_transfer(suite)                                   # doctest: +SKIP
        >>> table[["source", "target", "condition", "difference"]]            # doctest: +SKIP
    """
    config = suite.config
    results = {d: r for d, r in dataset_sets(suite).items() if d.endswith("/train")}
    p_enhance, gamma_enhance = chosen(suite, "IPG")
    rows = []
    for family in config.families:
        task = suite.task(family, "test", config.dose_problems)
        base = suite.evaluate(None, task)
        for source, result in results.items():
            sets = SelectedSets("IPG", "neuron", suite.policy, suite.policy_key, [result])
            for condition, (p, gamma) in (
                ("suppress", (config.suppress_p, 0.0)),
                ("enhance", (p_enhance, gamma_enhance)),
            ):
                row = {
                    "source": source,
                    "target": family,
                    "condition": condition,
                    "p": p,
                    "gamma": gamma,
                    "source_prompts_with_signal": round(
                        config.support * (1 - result.frac_reward_zero_std)
                    ),
                }
                if sets.picks(p):  # else no source prompt has signal: no set to steer with
                    row.update(condition_row(base, suite.evaluate(sets, task, p, gamma)))
                rows.append(row)
    return pd.DataFrame(rows)


# --- the distilled student ----------------------------------------------------------------------


def distilled_transfer(suite: Suite) -> pd.DataFrame:
    """The base model's sets, with no new attribution, steering the distilled student: IPG
    (enhance with the base model's validation choice, suppress ``suppress_p``), Random (three
    seeds) and Activation; plus the student's own IPG set for reference. Reports accuracy,
    mean length and the check rate on ``dose_problems`` test problems per family, pooled.

    Example:
        >>> distilled_transfer(suite).query("model == 'distilled'")         # doctest: +SKIP
    """
    config = suite.config
    model, key = suite.student
    tasks = suite.tasks("test", config.dose_problems)
    budget = config.distill.max_new_tokens
    units = suite.neurons()

    def run(sets, p, gamma, policy, policy_key):
        return pool_outcomes(
            [
                suite.evaluate(
                    sets,
                    task,
                    p,
                    gamma,
                    policy=policy,
                    policy_key=policy_key,
                    max_new_tokens=budget,
                )
                for task in tasks
            ]
        )

    rows = []
    teacher_base = run(None, 0, 1.0, suite.policy, suite.policy_key)
    student_base = run(None, 0, 1.0, model, key)
    for name, outcomes in (("base", teacher_base), ("distilled", student_base)):
        rows.append(_transfer_row(name, "none", "unsteered", 0, 1.0, outcomes, outcomes))
    own_rollouts = suite.support_rollouts(model, key, max_new_tokens=budget).select(
        range(suite.support_count)
    )
    own = suite.ipg("ipg_student", model, key, units, own_rollouts)
    p_enhance, gamma_enhance = chosen(suite, "IPG")
    candidates = _transferred_sets(suite, model, key, own)
    for name, sets in candidates.items():
        for condition, (p, gamma) in (
            ("enhance", (p_enhance, gamma_enhance)),
            ("suppress", (config.suppress_p, 0.0)),
        ):
            for model_name, policy, policy_key, base in (
                ("base", suite.policy, suite.policy_key, teacher_base),
                ("distilled", model, key, student_base),
            ):
                if name == "IPG (student's own)" and model_name == "base":
                    continue
                steered = run(sets, p, gamma, policy, policy_key)
                rows.append(_transfer_row(model_name, name, condition, p, gamma, base, steered))
    overlap = dice(
        suite.methods["IPG"].results[0].top(config.suppress_p), own.top(config.suppress_p)
    )
    frame = pd.DataFrame(rows)
    frame["dice_base_vs_student_ipg"] = overlap
    return frame


def _transfer_row(model, name, condition, p, gamma, base, steered) -> dict:
    return {
        "model": model,
        "set": name,
        "condition": condition,
        "p": p,
        "gamma": gamma,
        "check_rate": float(np.mean([check_rate(o.texts) for o in steered])),
        **condition_row(base, steered),
    }


def _transferred_sets(suite: Suite, model, key, own) -> dict[str, SelectedSets]:
    """The sets steered on both models: the base model's IPG and Activation sets, three random
    ones, and the student's own IPG set."""
    candidates = {"IPG (base model's)": suite.methods["IPG"]}
    if "Random" in suite.methods:
        candidates["Random"] = SelectedSets(
            "Random", "neuron", model, key, suite.methods["Random"].results[:3]
        )
    if "Activation" in suite.methods:
        candidates["Activation (base model's)"] = suite.methods["Activation"]
    candidates["IPG (student's own)"] = SelectedSets("IPG", "neuron", model, key, [own])
    return candidates


def reasoning_strength(suite: Suite) -> pd.DataFrame:
    """IPG with a length reward (completion tokens): the top ``strength_p`` units, scaled by each
    of ``strength_gammas``, on the base model and the distilled student (who chooses whether to
    check its steps), with a random set of the same size for contrast. Reports mean length,
    accuracy and check rate.

    Example:
        >>> reasoning_strength(suite).pivot_table(index="gamma", columns=["model", "set"],
        ...                                       values="mean_length")   # doctest: +SKIP
    """
    config = suite.config
    tasks = suite.tasks("test", config.dose_problems)
    units = suite.neurons()
    model, key = suite.student
    budget = config.distill.max_new_tokens
    rows = []
    for model_name, policy, policy_key in (
        ("base", suite.policy, suite.policy_key),
        ("distilled", model, key),
    ):
        rollouts = suite.support_rollouts(
            policy, policy_key, reward=length_reward, reward_name="length", max_new_tokens=budget
        )
        rollouts = rollouts.select(range(suite.support_count))
        result = suite.ipg(f"ipg_length_{model_name}", policy, policy_key, units, rollouts)
        sets = {"IPG (length)": [result], "Random": [random_baseline(policy, units, 0)]}
        if not result.ranks_anything:  # every support length tied: no IPG set, rows say so
            del sets["IPG (length)"]
            rows += [
                {
                    "model": model_name,
                    "set": "IPG (length)",
                    "p": config.strength_p,
                    "gamma": gamma,
                    "support_mean_length": float(rollouts.rewards.mean()),
                }
                for gamma in config.strength_gammas
            ]
        base = pool_outcomes(
            [
                suite.evaluate(
                    None, task, policy=policy, policy_key=policy_key, max_new_tokens=budget
                )
                for task in tasks
            ]
        )
        for name, results in sets.items():
            chosen = SelectedSets(name, "neuron", policy, policy_key, results)
            for gamma in config.strength_gammas:
                steered = pool_outcomes(
                    [
                        suite.evaluate(
                            chosen, task, config.strength_p, gamma, max_new_tokens=budget
                        )
                        for task in tasks
                    ]
                )
                row = condition_row(base, steered)
                lengths = steered[0].length - base[0].length
                rows.append(
                    {
                        "model": model_name,
                        "set": name,
                        "p": config.strength_p,
                        "gamma": gamma,
                        "check_rate": check_rate(steered[0].texts),
                        "length_change": float(lengths.mean()),
                        "length_change_se": float(lengths.std(ddof=1) / np.sqrt(lengths.size))
                        if lengths.size > 1
                        else float("nan"),
                        "support_mean_length": float(rollouts.rewards.mean()),
                        **row,
                    }
                )
    return pd.DataFrame(rows)


__all__ = [
    "dataset_consistency",
    "dataset_sets",
    "dataset_transfer",
    "distilled_transfer",
    "reasoning_strength",
]
