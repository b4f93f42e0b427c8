"""The two IPG estimators, each building the path rows for the engine and checking completeness.

``paper`` (the IPG paper): sample once from the unmodified model, re-score those rollouts at every
alpha, and compare the sum of scores with the surrogate S(1) - S(0). ``on_path``: sample afresh
under each alpha's scaled model, which makes the estimate unbiased for J(1) - J(0) with ``rloo``
advantages.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import Tensor

from ipgkit.errors import IpgkitError
from ipgkit.memory import as_budget
from ipgkit.progress import tqdm
from ipgkit.rollouts import Rollouts, mean_activations, sample
from ipgkit.steering import steer
from ipgkit.tasks.base import reward_name

from .checkpoint import IPGCheckpoint, sampled
from .config import IPGConfig
from .path_rows import PathRows
from .quadrature import path_points


def _reward_name(reward, rollouts: Rollouts | None = None) -> str:
    if reward is not None:
        return reward_name(reward)
    return rollouts.reward_name or "reward"


def _support_baseline(policy, components, config: IPGConfig, rollouts: Rollouts):
    """h' as a per-unit tensor (None for zero)."""
    if isinstance(config.baseline, Tensor):
        baseline = config.baseline.detach().double().cpu()
        units = len(components.resolved(policy.model))
        if baseline.shape != (units,):
            raise IpgkitError(
                f"baseline tensor must have one value per unit ({units}), "
                f"got {tuple(baseline.shape)}"
            )
        return baseline
    if config.baseline == "zero":
        return None
    mean = mean_activations(
        policy,
        components.hook_name,
        rollouts.row_prompt_ids(),
        rollouts.row_completion_ids(),
        torch.zeros(len(rollouts), dtype=torch.long),
        config.positions,
        components.resolved(policy.model).coordinates,
        config.internal_batch_size,
        as_budget(config.memory_budget_mib),
    )
    return mean[0]  # float64: h' keeps a float64 model's precision


def _sample(policy, problems, reward, config: IPGConfig, seed: int, progress: bool) -> Rollouts:
    return sample(
        policy,
        problems,
        n=config.n_rollouts,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
        batch_size=config.sampling_batch_size,
        reward=reward,
        progress=progress,
        seeding=config.seeding,
    )


def paper_mode(
    policy,
    problems,
    components,
    reward,
    config: IPGConfig,
    rollouts,
    progress,
    store: IPGCheckpoint | None,
) -> dict:
    """Sample once from the unmodified model, score those rollouts at every alpha point."""
    alphas, quadrature = path_points(config.method, config.n_steps, config.alpha_range)
    sampling_started = time.perf_counter()
    if rollouts is None:
        rollouts = sampled(
            store,
            "unmodified",
            lambda: _sample(policy, problems, reward, config, config.seed, progress),
        )
    elif reward is not None:
        rollouts = rollouts.with_rewards(reward)
    sampling_seconds = time.perf_counter() - sampling_started
    advantages = rollouts.advantages(config.advantages)
    baseline = _support_baseline(policy, components, config, rollouts)
    # rows with zero advantage contribute exactly zero: score only the others
    live = advantages.nonzero()[:, 0].tolist()
    rows = PathRows()
    grid = [(k, alpha, quadrature[k]) for k, alpha in enumerate(alphas.tolist())]
    ids = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    for r in live:
        _add_row(rows, rollouts, ids, advantages, r, grid, config)
    surrogate = dict.fromkeys(config.alpha_range, 0.0)  # with no live rows S is identically zero
    scoring_started = time.perf_counter()
    per_prompt, grads = _score(
        rows, policy, components, problems, baseline, config, progress, store
    )
    if grads is not None:
        # completeness of the surrogate S(alpha) = mean_prompts sum_rows A/N sum_s log pi_alpha
        live_weights = advantages[live].double() / config.n_rollouts
        for end in config.alpha_range:
            values = rows.logprobs_at(
                end,
                alphas,
                grads,
                policy,
                components,
                config.positions,
                baseline,
                config.internal_batch_size,
                config.memory_budget_mib,
            )
            surrogate[end] = float((live_weights * values).sum() / len(problems))
    scoring_seconds = time.perf_counter() - scoring_started
    start, end = config.alpha_range
    change = surrogate[end] - surrogate[start]
    delta = float(per_prompt.sum(1).mean() - change)
    _warn_on_completeness_gap(delta, change, config, components.hook_name)
    return {
        "per_prompt": per_prompt,
        "rollouts": rollouts,
        "reward_name": _reward_name(reward, rollouts),
        "delta": delta,
        "delta_of": f"surrogate S({end:g}) - S({start:g}), S = mean over prompts of sum_rows A/N "
        "log pi",
        "surrogate": {f"S({a:g})": surrogate[a] for a in config.alpha_range},
        "frac_reward_zero_std": rollouts.frac_reward_zero_std,
        "mean_reward": float(rollouts.rewards.mean()),
        "rows_scored": len(rows.groups),
        "sampling_seconds": sampling_seconds,
        "scoring_seconds": scoring_seconds,
    }


def _add_row(rows: PathRows, rollouts: Rollouts, ids, advantages, r: int, grid, config) -> None:
    """Rollout ``r`` at each (k, alpha, quadrature weight) of ``grid``, weighted by A_r / N;
    ``ids`` are the rollouts' (row prompt ids, row completion ids)."""
    prompt, completion = ids[0][r], ids[1][r]
    for k, alpha, weight in grid:
        row_weight = path_row_weight(weight, advantages[r], config.n_rollouts)
        rows.add(int(rollouts.group_ids[r]), k, prompt, completion, alpha, row_weight)


def path_row_weight(quadrature_weight, advantage, n_rollouts: int) -> float:
    """The weight of one (rollout, alpha point) row in IPG's objective: w_k A_r / N."""
    return float(quadrature_weight * advantage / n_rollouts)


def _score(rows: PathRows, policy, components, problems, baseline, config, progress, store):
    return rows.score(
        policy,
        components,
        len(problems),
        config.positions,
        baseline,
        config.internal_batch_size,
        config.pack,
        progress,
        store,
        config.memory_budget_mib,
    )


def completeness_holds(delta: float, change: float) -> bool:
    """Whether the scores add up to the change they explain: ``|delta| <= 10% of |change|``
    (Captum's convergence delta, with a tolerance relative to the change)."""
    return abs(delta) <= 0.1 * abs(change) + 1e-6


def _warn_on_completeness_gap(delta: float, change: float, config, hook_name: str) -> None:
    if completeness_holds(delta, change):
        return
    residual_hint = (
        "; with a zero baseline on a normalised residual stream most of the change happens "
        "at alpha < 0.01"
    )
    start, end = config.alpha_range
    warnings.warn(
        f"IPG completeness gap: the scores sum to {delta + change:+.4g} but the surrogate "
        f"changes by {change:+.4g} from alpha = {start:g} to {end:g} (delta {delta:+.4g}). The "
        "integrand "
        f"varies faster than {config.n_steps} {config.method} points resolve"
        + (residual_hint if "resid" in hook_name else "")
        + ". Rankings may still be useful; for completeness try baseline='mean' or more "
        "n_steps.",
        stacklevel=4,
    )


def on_path_mode(
    policy, problems, components, reward, config: IPGConfig, progress, store: IPGCheckpoint | None
) -> dict:
    """Sample afresh under every alpha point's scaled model and score those rollouts there."""
    alphas, quadrature = path_points(config.method, config.n_steps, config.alpha_range)
    resolved = components.resolved(policy.model)
    sampling_started = time.perf_counter()
    points = [float(a) for a in alphas]
    baseline, unmodified = None, None
    if isinstance(config.baseline, str) and config.baseline == "mean":
        # h' is a property of the unmodified model (alpha = 1 leaves h unchanged for any h')
        unmodified = sampled(
            store,
            "unmodified",
            lambda: _sample(policy, problems, reward, config, config.seed + len(points), False),
        )
        baseline = _support_baseline(policy, components, config, unmodified)
    elif isinstance(config.baseline, Tensor):
        baseline = _support_baseline(policy, components, config, None)

    def sample_at(alpha: float, seed: int) -> Rollouts:
        def draw() -> Rollouts:
            with steer(policy, resolved, alpha, config.positions, baseline):
                return _sample(policy, problems, reward, config, seed, False)

        return sampled(store, f"alpha={alpha!r}, seed={seed}", draw)

    bar = tqdm(points, desc="ipg: on-path sampling", unit="alpha", disable=not progress)
    samples = [sample_at(alpha, config.seed + k) for k, alpha in enumerate(bar)]
    # J(end) - J(start) from samples at the end points: on the grid, the unmodified model's
    # (alpha = 1, drawn for the mean baseline), or drawn for that purpose
    start, end = config.alpha_range
    on_grid = {
        a: next((s for p, s in zip(points, samples, strict=True) if math.isclose(p, a)), None)
        for a in config.alpha_range
    }
    if unmodified is not None:
        on_grid = {a: unmodified if s is None and a == 1.0 else s for a, s in on_grid.items()}
    at_start = on_grid[start]
    if at_start is None:
        at_start = sample_at(start, config.seed + len(points) + 1)
    at_end = on_grid[end]
    if at_end is None:
        at_end = sample_at(end, config.seed + len(points))
    sampling_seconds = time.perf_counter() - sampling_started
    rows = PathRows()
    for k, rollouts in enumerate(samples):
        advantages = rollouts.advantages(config.advantages)
        ids = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
        for r in advantages.nonzero()[:, 0].tolist():
            _add_row(rows, rollouts, ids, advantages, r, [(k, points[k], quadrature[k])], config)
    scoring_started = time.perf_counter()
    per_prompt, _ = _score(rows, policy, components, problems, baseline, config, progress, store)
    scoring_seconds = time.perf_counter() - scoring_started
    j_start, j_end = float(at_start.rewards.mean()), float(at_end.rewards.mean())
    return {
        "per_prompt": per_prompt,
        "reward_name": _reward_name(reward),
        "delta": float(per_prompt.sum(1).mean() - (j_end - j_start)),
        "delta_of": f"J({end:g}) - J({start:g}), J = mean reward of rollouts sampled at that alpha",
        f"J({start:g})": j_start,
        f"J({end:g})": j_end,
        "J_by_alpha": {
            f"{a:.6g}": float(s.rewards.mean()) for a, s in zip(points, samples, strict=True)
        },
        "frac_reward_zero_std": float(np.mean([s.frac_reward_zero_std for s in samples])),
        "mean_reward": j_start if start == 1.0 else j_end,  # the unmodified model's, if sampled
        "rows_scored": len(rows.groups),
        "sampling_seconds": sampling_seconds,
        "scoring_seconds": scoring_seconds,
    }
