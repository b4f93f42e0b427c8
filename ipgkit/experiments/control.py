"""Capability control (IPG paper, Table 1), dose-response, support-set size and the site search.

Every experiment steers with :func:`ipgkit.steer` and evaluates greedy accuracy per problem
through the workspace, so each (policy, set, gamma, problems) condition runs once, whichever
experiment asks for it first.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ipgkit.analysis import dice
from ipgkit.attribution import activation_magnitude, random_baseline
from ipgkit.attribution.ipg import IPGConfig, ipg
from ipgkit.stats import paired_comparison

from .methods import SelectedSets
from .outcomes import condition_row
from .suite import Suite
from .validation import chosen
from .workspace import Outcome, digest


def capability_control(suite: Suite) -> pd.DataFrame:
    """Table 1: every method's set enhanced (p and gamma chosen on validation) and suppressed
    (``suppress_p`` components at gamma = 0) on held-out test problems of every family, and on
    the families pooled.

    Returns:
        One row per (method, condition, family): p, gamma, accuracy [95% CI], the unsteered
        accuracy on the same problems, the paired difference [95% CI] and its p-value (exact
        McNemar; a paired t-test for seed averages), the number of seeds and their range.

    Example:
        >>> table = capability_control(Suite("runs/experiments"))             # doctest: +SKIP
        >>> table[table.family == "pooled"].pivot(index="method", columns="condition",
        ...                                        values="accuracy")        # doctest: +SKIP
    """
    config = suite.config
    tasks = suite.tasks("test", config.test)
    rows = []
    for name, sets in suite.methods.items():
        enhance = chosen(suite, name)
        conditions = {"enhance": enhance, "suppress": (config.suppress_p, 0.0)}
        for condition, (p, gamma) in conditions.items():
            if not sets.picks(p):  # a row that says so, instead of steering units 0..p-1
                rows.append(_unranked_row(sets, condition, p, gamma))
                continue
            bases, steered = [], []
            for task in tasks:
                base = suite.evaluate(None, task, policy=sets.policy, policy_key=sets.policy_key)
                outcomes = suite.evaluate(sets, task, p, gamma)
                bases.append(base)
                steered.append(outcomes)
                rows.append(
                    {
                        "method": name,
                        "level": sets.level,
                        "condition": condition,
                        "family": task.name,
                        "p": sets.fixed_p or p,
                        "gamma": gamma,
                        **condition_row(base, outcomes),
                    }
                )
            rows.append(
                {
                    "method": name,
                    "level": sets.level,
                    "condition": condition,
                    "family": "pooled",
                    "p": sets.fixed_p or p,
                    "gamma": gamma,
                    **condition_row(pool_outcomes(bases), pool_outcomes(steered)),
                }
            )
    return pd.DataFrame(rows)


def _unranked_row(sets: SelectedSets, condition: str, p: int, gamma: float) -> dict:
    return {
        "method": sets.method,
        "level": sets.level,
        "condition": condition,
        "family": "pooled",
        "p": p,
        "gamma": gamma,
        "accuracy": np.nan,
        "note": f"no top {p}: every {sets.method} score is equal",
    }


def pool_outcomes(per_task: list[list[Outcome]]) -> list[Outcome]:
    """Outcomes of several tasks concatenated, seed by seed ([tasks][seeds] -> [seeds])."""
    seeds = len(per_task[0])
    return [
        Outcome(
            [i for outcomes in per_task for i in outcomes[s].problem_ids],
            np.concatenate([outcomes[s].correct for outcomes in per_task]),
            np.concatenate([outcomes[s].length for outcomes in per_task]),
            [t for outcomes in per_task for t in outcomes[s].texts],
        )
        for s in range(seeds)
    ]


HEAD_TO_HEAD = (
    ("IPG", "Random"),
    ("IPG", "Activation"),
    ("IPG-SAE", "Random-SAE"),
    ("IPG-SAE", "ReasonScore-SAE"),
    # the methods built for enhancement, each against IPG and Random (issue 19)
    ("IPG amplify", "IPG"),
    ("IPG amplify", "Random"),
    ("IPG process", "IPG"),
    ("IPG process", "Random"),
    ("Learned gains", "IPG"),
    ("Learned gains", "Random"),
)


def head_to_head(suite: Suite, pairs=HEAD_TO_HEAD) -> pd.DataFrame:
    """A method against a baseline (IPG against Random, ...) on the same test problems (pooled
    over families), per condition: the paired difference method - baseline with its 95% CI and
    p-value. Enhancement uses each
    method's own validation choice; suppression the common ``suppress_p``. Reuses Table 1's
    evaluations (run :func:`capability_control` first, or this runs them).

    Example:
        >>> head_to_head(suite).query("condition == 'suppress'")          # doctest: +SKIP
    """
    config = suite.config
    tasks = suite.tasks("test", config.test)
    rows = []
    for first, second in pairs:
        if first not in suite.methods or second not in suite.methods:
            continue
        for condition in ("enhance", "suppress"):
            per_method = []
            for name in (first, second):
                sets = suite.methods[name]
                p, gamma = (
                    chosen(suite, name) if condition == "enhance" else (config.suppress_p, 0.0)
                )
                if not sets.picks(p):
                    break
                outcomes = pool_outcomes([suite.evaluate(sets, task, p, gamma) for task in tasks])
                per_method.append(np.mean([o.correct for o in outcomes], axis=0))
            if len(per_method) < 2:  # a method without a ranking has no set to compare
                continue
            comparison = paired_comparison(per_method[1], per_method[0])
            rows.append(
                {
                    "method": first,
                    "baseline": second,
                    "condition": condition,
                    "accuracy": float(per_method[0].mean()),
                    "baseline_accuracy": float(per_method[1].mean()),
                    "difference": comparison["difference"],
                    "ci_low": comparison["ci_low"],
                    "ci_high": comparison["ci_high"],
                    "p_value": comparison["p_value"],
                    "test": comparison["test"],
                    "n": comparison["n"],
                }
            )
    return pd.DataFrame(rows)


def dose_response(suite: Suite, methods=("IPG", "Activation", "Random")) -> pd.DataFrame:
    """Accuracy vs gamma (p = ``dose_p``) and vs p (gamma = 0 and IPG's enhancement gamma) on
    ``dose_problems`` test problems per family, pooled. Random uses two seeds.

    Example:
        >>> curves = dose_response(suite)                                   # doctest: +SKIP
        >>> curves[curves.axis == "gamma"].pivot(index="gamma", columns="method",
        ...                                      values="accuracy")         # doctest: +SKIP
    """
    config = suite.config
    tasks = suite.tasks("test", config.dose_problems)
    _, enhance_gamma = chosen(suite, "IPG")
    grid = [("gamma", config.dose_p, g) for g in config.dose_gammas]
    grid += [("p", p, g) for g in (0.0, enhance_gamma) for p in config.dose_ps]
    rows = []
    for name in [m for m in methods if m in suite.methods]:
        sets = suite.methods[name]
        sets = SelectedSets(
            sets.method, sets.level, sets.policy, sets.policy_key, sets.results[:2], sets.fixed_p
        )
        base = pool_outcomes(
            [
                suite.evaluate(None, task, policy=sets.policy, policy_key=sets.policy_key)
                for task in tasks
            ]
        )
        for axis, p, gamma in grid:
            steered = pool_outcomes([suite.evaluate(sets, task, p, gamma) for task in tasks])
            rows.append(
                {
                    "method": name,
                    "axis": axis,
                    "p": p,
                    "gamma": gamma,
                    **condition_row(base, steered),
                }
            )
    return pd.DataFrame(rows)


def support_size(suite: Suite) -> pd.DataFrame:
    """IPG from M support prompts (families interleaved) with baseline h' = zero or mean: the
    accuracy after suppressing (gamma = 0) and enhancing (IPG's validation gamma) its top
    ``dose_p`` units, and the Dice overlap of that set with the largest M's set.

    Example:
        >>> support_size(suite)[["baseline", "M", "condition", "difference"]]  # doctest: +SKIP
    """
    config = suite.config
    tasks = suite.tasks("test", config.dose_problems)
    pool = suite.support_rollouts()
    units = suite.neurons()
    _, enhance_gamma = chosen(suite, "IPG")
    base = pool_outcomes([suite.evaluate(None, task) for task in tasks])
    largest = min(max(config.support_sizes), len(pool.problems))
    rows = []
    for baseline in ("zero", "mean"):
        results = {}
        for m in sorted({min(m, len(pool.problems)) for m in config.support_sizes}):
            results[m] = suite.ipg(
                f"ipg_m{m}_{baseline}",
                suite.policy,
                suite.policy_key,
                units,
                pool.select(range(m)),
                baseline=baseline,
            )
        ranked = results[largest].ranks_anything
        reference = results[largest].top(config.dose_p) if ranked else None
        for m, result in results.items():
            sets = SelectedSets("IPG", "neuron", suite.policy, suite.policy_key, [result])
            for condition, gamma in (("suppress", 0.0), ("enhance", enhance_gamma)):
                row = {
                    "baseline": baseline,
                    "M": m,
                    "condition": condition,
                    "p": config.dose_p,
                    "gamma": gamma,
                    "dice_with_largest": math.nan,
                    "prompts_with_signal": round(m * (1 - result.frac_reward_zero_std)),
                    "delta": result.delta,
                }
                if result.ranks_anything:  # else no prompt has signal: no set to steer with
                    steered = pool_outcomes(
                        [suite.evaluate(sets, task, config.dose_p, gamma) for task in tasks]
                    )
                    if reference is not None:
                        row["dice_with_largest"] = dice(result.top(config.dose_p), reference)
                    row.update(condition_row(base, steered))
                rows.append(row)
    return pd.DataFrame(rows)


def site_search(suite: Suite, ps=(10,), gammas=(0.0, 1.5)) -> pd.DataFrame:
    """What was tried before settling on a site: IPG at each ``config.sites`` entry (and, at the
    configured site, on-path mode), its validation accuracy when its top p units are scaled, next
    to Random (seed 0) and Activation at the same site. Validation split only.

    Example:
        >>> site_search(suite).pivot_table(index=["site", "layer"], columns="method",
        ...                                values="accuracy")               # doctest: +SKIP
    """
    config = suite.config
    tasks = suite.tasks("validation", config.validation)
    rollouts = suite.support_rollouts().select(range(suite.support_count))
    rows = []
    trials = [(kind, layer, "paper") for kind, layer in config.sites]
    trials.append((config.site, config.layer, "on_path"))
    for kind, layer, mode in trials:
        units = suite.neurons(kind, layer)
        if mode == "paper":
            ipg_result = suite.ipg(
                f"ipg_{kind}{layer}", suite.policy, suite.policy_key, units, rollouts
            )
        else:
            ipg_result = _on_path(suite, units, rollouts)
        compared = {
            "IPG": ipg_result,
            "Random": random_baseline(suite.policy, units, 0),
            "Activation": suite.ws.attribution(
                f"activation_{kind}{layer}",
                {
                    "policy": suite.policy_key,
                    "units": units.hook_name,
                    "rollouts": digest(rollouts.texts),
                },
                lambda units=units: activation_magnitude(
                    suite.policy, rollouts, units, progress=False
                ),
            ),
        }
        if mode == "on_path":
            compared = {"IPG": ipg_result}
        for method, result in compared.items():
            sets = SelectedSets(method, "neuron", suite.policy, suite.policy_key, [result])
            for p in ps:
                for gamma in gammas:
                    accuracy = np.mean(
                        [suite.evaluate(sets, task, p, gamma)[0].accuracy for task in tasks]
                    )
                    rows.append(
                        {
                            "site": kind,
                            "layer": layer,
                            "mode": mode,
                            "method": method,
                            "p": p,
                            "gamma": gamma,
                            "accuracy": float(accuracy),
                            "delta": result.delta if method == "IPG" else None,
                        }
                    )
    return pd.DataFrame(rows)


def _on_path(suite: Suite, units, rollouts):
    config = IPGConfig(
        n_rollouts=suite.config.n_rollouts,
        n_steps=suite.config.n_steps,
        mode="on_path",
        seed=suite.config.seed,
    )
    task = suite.support_task
    problems = rollouts.problems
    key = {
        "policy": suite.policy_key,
        "units": units.hook_name,
        "config": config.describe(),
        "problems": [p.id for p in problems],
    }
    return suite.ws.attribution(
        "ipg_on_path",
        key,
        lambda: ipg(
            suite.policy, problems, units, task.correctness, config=config, progress=suite.progress
        ),
    )
