"""Evaluation: accuracy@1 (greedy), pass@k (unbiased), completion length, with confidence intervals.

Everything runs through :func:`ipgkit.sample`, so active steering hooks apply.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ipgkit import distributed
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy, require_policy
from ipgkit.rollouts import Rollouts, sample
from ipgkit.stats import mcnemar_exact, mean_interval, paired_comparison, wilson_interval
from ipgkit.tasks.base import Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k)
    (Chen et al. 2021).

    Example:
        >>> pass_at_k(5, 2, 2)
        0.7
    """
    if not 0 <= c <= n:
        raise IpgkitError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise IpgkitError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # product form of 1 - C(n-c, k)/C(n, k), stable for large n
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluation_table(
    policy_name: str,
    task: Task,
    greedy: Rollouts,
    sampled: Rollouts | None = None,
    ks: Sequence[int] = (1,),
) -> pd.DataFrame:
    """Metrics of already-sampled rollouts (rewards filled in with ``task.correctness``).

    ``greedy`` (one completion per problem) gives ``accuracy@1``, ``mean_length`` and
    ``frac_at_budget`` (completions that ran to ``max_new_tokens``); ``sampled``
    (n per problem) gives ``pass@k`` for each k in ``ks``, ``sample_accuracy``, ``frac_mixed``
    and ``frac_all_wrong``. Returns the tidy table :func:`evaluate` returns.
    """
    rows = []

    def add(metric, value, low, high):
        rows.append(
            dict(
                model=policy_name,
                task=task.name,
                split=task.split,
                metric=metric,
                value=value,
                ci_low=low,
                ci_high=high,
                n=len(task),
            )
        )

    correct = float(greedy.rewards_by_group()[:, 0].sum())
    add("accuracy@1", correct / len(task), *wilson_interval(correct, len(task)))
    add("mean_length", *mean_interval(greedy.completion_lengths.float().tolist()))
    # completions that used the whole token budget: cut off (or stopping on its very last token)
    at_budget = float((greedy.completion_lengths >= greedy.config.max_new_tokens).sum())
    add("frac_at_budget", at_budget / len(task), *wilson_interval(at_budget, len(task)))
    if sampled is not None:
        if max(ks) > sampled.n:
            raise IpgkitError(
                f"pass@k needs k <= samples per problem; got ks={tuple(ks)}, n={sampled.n}"
            )
        per_problem = sampled.rewards_by_group()
        counts = per_problem.sum(-1).round().long().tolist()
        for k in ks:
            add(f"pass@{k}", *mean_interval([pass_at_k(sampled.n, c, k) for c in counts]))
        add("sample_accuracy", *mean_interval(per_problem.mean(-1).tolist()))
        mixed = sum(0 < c < sampled.n for c in counts)
        all_wrong = sum(c == 0 for c in counts)
        add("frac_mixed", mixed / len(task), *wilson_interval(mixed, len(task)))
        add("frac_all_wrong", all_wrong / len(task), *wilson_interval(all_wrong, len(task)))
    return pd.DataFrame(rows)


def evaluate(
    policy: Policy,
    task: Task,
    limit: int | None = None,
    n_samples: int = 0,
    ks: Sequence[int] = (1,),
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    seeding: Literal["batch", "problem"] = "batch",
    checkpoint_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Evaluate ``policy`` on ``task`` (the first ``limit`` problems).

    Greedy decoding gives ``accuracy@1`` and ``mean_length`` (tokens). With ``n_samples > 0``,
    ``n_samples`` completions per problem at ``temperature`` give ``pass@k`` for each k in ``ks``,
    ``sample_accuracy``, ``frac_mixed`` (problems with some right and some wrong samples) and
    ``frac_all_wrong`` (pass@n = 0). Under torchrun, problems are sharded by rank (see
    :func:`evaluation_rollouts`); ``seeding="problem"`` makes the samples independent of sharding.
    With ``checkpoint_dir`` finished sampling batches are saved there and a rerun continues
    after them (see :func:`ipgkit.rollouts.sample`).

    Returns:
        A tidy DataFrame: model, task, split, metric, value, ci_low, ci_high (95%), n (problems).

    Example:
        >>> evaluate(policy, task, limit=200, n_samples=8, ks=(1, 8))   # doctest: +SKIP
    """
    policy = require_policy(policy, "evaluate")
    task = task.subset(limit)
    if n_samples and max(ks) > n_samples:
        raise IpgkitError(f"pass@k needs k <= n_samples; got ks={tuple(ks)}, n_samples={n_samples}")
    greedy, sampled = evaluation_rollouts(
        policy,
        task,
        n_samples,
        temperature,
        top_p,
        max_new_tokens,
        batch_size,
        seed,
        progress,
        seeding,
        checkpoint_dir,
    )
    return evaluation_table(policy.name, task, greedy, sampled, ks)


def evaluation_rollouts(
    policy: Policy,
    task: Task,
    n_samples: int = 0,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    seeding: Literal["batch", "problem"] = "batch",
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[Rollouts, Rollouts | None]:
    """The rollouts :func:`evaluate` scores, for callers that also want the completions: one greedy
    completion per problem (seed ``seed``) and, with ``n_samples > 0``, ``n_samples`` sampled ones
    (seed ``seed + 1``), rewarded with ``task.correctness``.

    Under torchrun each rank decodes a contiguous block of problems and the blocks are gathered,
    so every rank returns the whole task's rollouts (sampled ones need ``seeding="problem"``).
    ``checkpoint_dir`` keeps each sampler's finished batches (one file per rank) for a resume."""
    policy = require_policy(policy, "evaluation_rollouts")
    if distributed.world()[1] > 1:
        settings = {
            "n_samples": n_samples,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "seed": seed,
            "seeding": seeding,
        }
        return _sharded_evaluation_rollouts(policy, task, settings, progress, checkpoint_dir)
    settings = dict(
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        batch_size=batch_size,
        reward=task.correctness,
        progress=progress,
    )

    def checkpoint(kind: str) -> Path | None:
        if checkpoint_dir is None:
            return None
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        return Path(checkpoint_dir) / f"{task.name}-{task.split}-{kind}.pt"

    greedy = sample(
        policy,
        task.problems,
        n=1,
        temperature=0.0,
        seed=seed,
        checkpoint=checkpoint("greedy"),
        **settings,
    )
    sampled = None
    if n_samples:
        sampled = sample(
            policy,
            task.problems,
            n=n_samples,
            temperature=temperature,
            top_p=top_p,
            seed=seed + 1,
            seeding=seeding,
            checkpoint=checkpoint("sampled"),
            **settings,
        )
    return greedy, sampled


def _sharded_evaluation_rollouts(policy, task, settings: dict, progress, checkpoint_dir):
    """Each rank decodes a contiguous block of problems; every rank gets all blocks back."""
    if settings["n_samples"] and settings["seeding"] != "problem":
        raise IpgkitError("under torchrun, sampled evaluation needs seeding='problem'")
    rank, _ = distributed.world()
    block = distributed.shard(len(task))
    with distributed.local():
        mine = evaluation_rollouts(
            policy,
            replace(task, problems=task.problems[block.start : block.stop]),
            progress=progress and rank == 0,
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"rank{rank}",
            **settings,
        )
    parts = distributed.gather(mine)
    greedy = Rollouts.concat([part[0] for part in parts], policy.pad_token_id)
    if not settings["n_samples"]:
        return greedy, None
    return greedy, Rollouts.concat([part[1] for part in parts], policy.pad_token_id)


__all__ = [
    "evaluate",
    "evaluation_rollouts",
    "evaluation_table",
    "mcnemar_exact",  # the statistics live in ipgkit.stats; re-exported for existing imports
    "mean_interval",
    "paired_comparison",
    "pass_at_k",
    "wilson_interval",
]
