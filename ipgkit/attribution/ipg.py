"""Integrated Policy Gradient (arXiv 2602.02313): attribute an outcome to units at one hook.

For units i at a hook with activation h (every position), baseline h' and the path
h~(alpha) = h' + alpha (h - h'):

    IPG(i; x) = sum_t (h_ti - h'_ti) * int_0^1 E_tau[ d/dh~_ti sum_s log pi(a_s | s_s) A(tau) ] da

averaged over prompts x. The pipeline, one module each: ``quadrature.py`` picks the alpha points,
``estimators.py`` builds (rollout, alpha) rows (paper or on-path mode), ``engine.py`` scores them
in shared forward/backward passes, ``checkpoint.py`` keeps progress; this module validates the
call, shards it under torchrun and returns an :class:`AttributionResult`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace

import torch

from ipgkit import distributed
from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError, ZeroSignalWarning, no_signal_advice
from ipgkit.models.policy import Policy, require_policy
from ipgkit.rollouts import Rollouts
from ipgkit.tasks.base import Problem, RewardFunction

from .checkpoint import IPGCheckpoint
from .config import IPGConfig
from .engine import PathGradients, frozen_parameters, packed_chunks, path_gradients
from .estimators import _reward_name, on_path_mode, paper_mode
from .path_rows import PathRows, scaled_sequence_logprobs
from .quadrature import INTEGRATION_RULES, integration_points
from .result import AttributionResult


def ipg(
    policy: Policy,
    problems: Sequence[Problem] | None,
    components: ComponentSet,
    reward: RewardFunction | None = None,
    config: IPGConfig | None = None,
    rollouts: Rollouts | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    **settings,
) -> AttributionResult:
    """Integrated Policy Gradient scores for every unit in ``components``.

    Args:
        policy: the policy to attribute.
        problems: the support set (prompts); may be None when ``rollouts`` are given.
        components: the units at one hook, e.g. ``resid_neurons(layer=2)`` (all units cost the same
            as one: a single backward per chunk).
        reward: TRL-style reward (``task.correctness``, ``length_reward``, ``keyword_count(...)``);
            may be omitted when ``rollouts`` already carry rewards (paper mode).
        config: an :class:`IPGConfig`; keyword ``settings`` override its fields.
        rollouts: paper mode only: rollouts already sampled from the unmodified model (e.g. shared
            with the baselines), ``n_rollouts`` per problem.
        progress: tqdm bars for sampling and scoring.
        checkpoint: a file that keeps the sampled rollouts and the scored rows (written atomically
            every 30 s); rerunning the same call after an interruption resumes from it. A file
            from a different run (settings, problems, policy, units or reward) is refused.

    Returns:
        :class:`AttributionResult` with ``score`` (signed, averaged over prompts), ``stderr``
        across prompts, ``per_prompt`` values, the completeness ``delta`` and
        ``frac_reward_zero_std`` (on-path: averaged over the alpha points' samples). ``info``
        holds the settings, J and S at the path's ends (``J(0)``, ``J(1)`` on-path, ``S(0)``,
        ``S(1)`` in paper mode, for the default path), rows scored and
        timings.

    Example:
        >>> result = ipg(policy, task.problems[:50], resid_neurons(2), task.correctness,
        ...              n_rollouts=5, n_steps=10)                          # doctest: +SKIP
        >>> result.top(20)                                                  # doctest: +SKIP
    """
    policy = require_policy(policy, "ipg")
    config = replace(config or IPGConfig(), **settings)
    components = components.validate(policy.model)
    if rollouts is not None:
        if config.mode != "paper":
            raise IpgkitError("pre-sampled rollouts only apply to mode='paper'")
        if rollouts.n != config.n_rollouts:
            config = replace(config, n_rollouts=rollouts.n)
        problems = rollouts.problems if problems is None else list(problems)
        if [p.id for p in problems] != [p.id for p in rollouts.problems]:
            raise IpgkitError("rollouts were sampled for different problems than those given")
    if not problems:
        raise IpgkitError("IPG needs at least one problem (the problem list is empty)")
    if reward is None and (rollouts is None or rollouts.rewards is None):
        raise IpgkitError("IPG needs a reward function (or, in paper mode, rollouts with rewards)")
    problems = list(problems)
    if distributed.world()[1] > 1:
        result = _sharded_ipg(
            policy, problems, components, reward, config, rollouts, progress, checkpoint
        )
    else:
        result = _local_ipg(
            policy, problems, components, reward, config, rollouts, progress, checkpoint
        )
    if result.info["rows_scored"] == 0:
        warnings.warn(
            f"IPG of {result.info['reward']!r} at {components.hook_name} is zero for every unit: "
            + no_signal_advice(result.frac_reward_zero_std),
            ZeroSignalWarning,
            stacklevel=2,
        )
    return result


def amplification_ipg(
    policy: Policy,
    problems: Sequence[Problem] | None,
    components: ComponentSet,
    reward: RewardFunction | None = None,
    gamma_max: float = 2.0,
    config: IPGConfig | None = None,
    **settings,
) -> AttributionResult:
    """IPG along the path that amplifies the units, alpha from 1 to ``gamma_max``.

    Plain IPG's path shrinks units towards the baseline, so a score says what a unit contributes
    now; here each score estimates the unit's share of J(gamma_max) - J(1), what amplifying it
    adds, which is the question enhancement asks. The settings, modes and result are
    :func:`ipg`'s (``alpha_range=(1, gamma_max)``); on-path mode stays unbiased and its ``delta`` is
    checked against J(gamma_max) - J(1) sampled there.

    Example:
        >>> result = amplification_ipg(policy, task.problems[:50], mlp_neurons(2),
        ...                            task.correctness, gamma_max=2.0)  # doctest: +SKIP
        >>> result.top(10)                                               # doctest: +SKIP
    """
    if not (isinstance(gamma_max, int | float) and gamma_max > 1):
        raise IpgkitError(f"gamma_max must be a number > 1, got {gamma_max!r}")
    settings["alpha_range"] = (1.0, float(gamma_max))
    return ipg(policy, problems, components, reward, config, **settings)


def _local_ipg(
    policy, problems, components, reward, config: IPGConfig, rollouts, progress, checkpoint
) -> AttributionResult:
    started = time.perf_counter()
    store = None
    if checkpoint is not None:
        identity = {
            "config": config.describe(),
            "policy": policy.name,
            "problem_ids": [p.id for p in problems],
            "hook": components.hook_name,
            "indices": components.resolved(policy.model).indices,
            "reward": _reward_name(reward, rollouts),
        }
        store = IPGCheckpoint(checkpoint, identity)
    if config.mode == "paper":
        estimate = paper_mode(
            policy, problems, components, reward, config, rollouts, progress, store
        )
    else:
        estimate = on_path_mode(policy, problems, components, reward, config, progress, store)
    per_prompt = estimate.pop("per_prompt")
    support = estimate.pop("rollouts", None)  # paper mode's one support set
    info = {
        "config": config.describe(),
        "policy": policy.name,
        "reward": estimate.pop("reward_name"),
        "problem_ids": [p.id for p in problems],
        "seconds": time.perf_counter() - started,
        **estimate,
    }
    result = AttributionResult.from_per_prompt(
        components.resolved(policy.model), per_prompt, method=_method(config), info=info
    )
    result.rollouts = support
    return result


def _method(config: IPGConfig) -> str:
    """``"ipg"``, or ``"ipg-amplify"`` for a path that starts at the real activations or above."""
    return "ipg-amplify" if config.alpha_range[0] >= 1 else "ipg"


def _sharded_ipg(
    policy, problems, components, reward, config: IPGConfig, rollouts, progress, checkpoint
) -> AttributionResult:
    """IPG under torchrun: each rank attributes a contiguous block of prompts, the per-prompt
    sums and the surrogate's sums are gathered, and every rank returns the same result."""
    if config.mode != "paper" or not (
        isinstance(config.baseline, str) and config.baseline == "zero"
    ):
        raise IpgkitError(
            "under torchrun IPG shards paper mode with the zero baseline; run on_path mode or the "
            "mean baseline in one process"
        )
    if rollouts is None and config.seeding != "problem":
        raise IpgkitError(
            "under torchrun each rank samples its own prompts: use seeding='problem' (the same "
            "rollouts whatever the number of processes), or pass rollouts"
        )
    rank, size = distributed.world()
    block = distributed.shard(len(problems))
    mine = None if rollouts is None else rollouts.select(block)
    if checkpoint is not None:
        checkpoint = f"{checkpoint}.rank{rank}-of-{size}"
    with distributed.local():
        part = _local_ipg(
            policy,
            [problems[i] for i in block],
            components,
            reward,
            config,
            mine,
            progress and rank == 0,
            checkpoint,
        )
    pieces = distributed.gather(
        {"per_prompt": part.per_prompt, "info": part.info, "rollouts": part.rollouts}
    )
    per_prompt = torch.cat([piece["per_prompt"] for piece in pieces])
    counts = [len(piece["info"]["problem_ids"]) for piece in pieces]

    def weighted(read) -> float:  # a mean over prompts, from each block's mean
        return sum(read(piece["info"]) * n for piece, n in zip(pieces, counts, strict=True)) / sum(
            counts
        )

    start, end = (f"S({a:g})" for a in config.alpha_range)
    surrogate = {k: weighted(lambda info, k=k: info["surrogate"][k]) for k in (start, end)}
    info = {
        **part.info,
        "problem_ids": [p.id for p in problems],
        "surrogate": surrogate,
        "delta": float(per_prompt.sum(1).mean() - (surrogate[end] - surrogate[start])),
        "frac_reward_zero_std": weighted(lambda info: info["frac_reward_zero_std"]),
        "mean_reward": weighted(lambda info: info["mean_reward"]),
        "rows_scored": sum(piece["info"]["rows_scored"] for piece in pieces),
        "seconds": max(piece["info"]["seconds"] for piece in pieces),
        "processes": size,
    }
    result = AttributionResult.from_per_prompt(
        part.components, per_prompt, _method(config), info=info
    )
    result.rollouts = Rollouts.concat([piece["rollouts"] for piece in pieces], policy.pad_token_id)
    return result


__all__ = [
    "INTEGRATION_RULES",
    "IPGConfig",
    "PathGradients",
    "PathRows",
    "amplification_ipg",
    "frozen_parameters",
    "integration_points",
    "ipg",
    "packed_chunks",
    "path_gradients",
    "scaled_sequence_logprobs",
]
