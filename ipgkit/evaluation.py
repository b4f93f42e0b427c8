"""Evaluation: accuracy@1 (greedy), pass@k (unbiased), completion length, with confidence intervals.

Everything runs through :func:`ipgkit.sample`, so active steering hooks apply.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ipgkit import distributed
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, sample
from ipgkit.tasks.base import Task

Z95 = 1.959963984540054


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


def wilson_interval(successes: float, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1)."""
    if total <= 0:
        return (math.nan, math.nan)
    p = successes / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """Mean and normal-approximation interval (mean +- z * standard error)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(array.mean())
    if array.size < 2:
        return (mean, math.nan, math.nan)
    half = z * float(array.std(ddof=1)) / math.sqrt(array.size)
    return (mean, mean - half, mean + half)


def evaluation_table(
    policy_name: str, task: Task, greedy: Rollouts, sampled: Rollouts | None = None,
    ks: Sequence[int] = (1,),
) -> pd.DataFrame:  # fmt: skip
    """Metrics of already-sampled rollouts (rewards filled in with ``task.correctness``).

    ``greedy`` (one completion per problem) gives ``accuracy@1``, ``mean_length`` and
    ``frac_at_budget`` (completions that ran to ``max_new_tokens``); ``sampled``
    (n per problem) gives ``pass@k`` for each k in ``ks``, ``sample_accuracy``, ``frac_mixed``
    and ``frac_all_wrong``. Returns the tidy table :func:`evaluate` returns.
    """
    rows = []

    def add(metric, value, low, high):
        rows.append(dict(model=policy_name, task=task.name, split=task.split, metric=metric,
                         value=value, ci_low=low, ci_high=high, n=len(task)))  # fmt: skip

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
    progress: bool = False,
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
    task = task.subset(limit)
    if n_samples and max(ks) > n_samples:
        raise IpgkitError(f"pass@k needs k <= n_samples; got ks={tuple(ks)}, n_samples={n_samples}")
    greedy, sampled = evaluation_rollouts(policy, task, n_samples, temperature, top_p,
                                          max_new_tokens, batch_size, seed, progress,
                                          seeding, checkpoint_dir)  # fmt: skip
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
    progress: bool = False,
    seeding: Literal["batch", "problem"] = "batch",
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[Rollouts, Rollouts | None]:
    """The rollouts :func:`evaluate` scores, for callers that also want the completions: one greedy
    completion per problem (seed ``seed``) and, with ``n_samples > 0``, ``n_samples`` sampled ones
    (seed ``seed + 1``), rewarded with ``task.correctness``.

    Under torchrun each rank decodes a contiguous block of problems and the blocks are gathered,
    so every rank returns the whole task's rollouts (sampled ones need ``seeding="problem"``).
    ``checkpoint_dir`` keeps each sampler's finished batches (one file per rank) for a resume."""
    rank, size = distributed.world()
    if size > 1:
        if n_samples and seeding != "problem":
            raise IpgkitError("under torchrun, sampled evaluation needs seeding='problem'")
        block = distributed.shard(len(task))
        with distributed.local():
            mine = evaluation_rollouts(policy, replace(task, problems=task.problems[block.start : block.stop]),
                                       n_samples, temperature, top_p, max_new_tokens, batch_size,
                                       seed, progress and rank == 0, seeding,
                                       None if checkpoint_dir is None
                                       else Path(checkpoint_dir) / f"rank{rank}")  # fmt: skip
        parts = distributed.gather(mine)
        greedy = Rollouts.concat([part[0] for part in parts], policy.pad_token_id)
        sampled = None if not n_samples else Rollouts.concat([part[1] for part in parts],
                                                             policy.pad_token_id)  # fmt: skip
        return greedy, sampled
    settings = dict(max_new_tokens=max_new_tokens or task.max_new_tokens, batch_size=batch_size,
                    reward=task.correctness, progress=progress)  # fmt: skip

    def checkpoint(kind: str) -> Path | None:
        if checkpoint_dir is None:
            return None
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        return Path(checkpoint_dir) / f"{task.name}-{task.split}-{kind}.pt"

    greedy = sample(policy, task.problems, n=1, temperature=0.0, seed=seed,
                    checkpoint=checkpoint("greedy"), **settings)  # fmt: skip
    sampled = None
    if n_samples:
        sampled = sample(policy, task.problems, n=n_samples, temperature=temperature, top_p=top_p,
                         seed=seed + 1, seeding=seeding, checkpoint=checkpoint("sampled"),
                         **settings)  # fmt: skip
    return greedy, sampled


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
    tail = sum(math.comb(discordant, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def paired_comparison(
    base: Sequence[float], other: Sequence[float], z: float = Z95
) -> dict[str, float]:
    """Compare two conditions on the same problems: ``other - base`` per problem.

    Args:
        base: [problems] correctness (0/1), or a mean over seeds in [0, 1], of the reference
            condition (e.g. the unsteered model).
        other: [problems] the same for the compared condition, in the same problem order.

    Returns:
        ``difference`` (mean of other - base), ``ci_low``/``ci_high`` (95%, normal approximation
        over the per-problem differences), ``p_value`` and ``test``: the exact McNemar test when
        both inputs are 0/1, otherwise a two-sided z-test on the mean difference (values averaged
        over seeds are not binary).

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
    mean, low, high = mean_interval(differences.tolist(), z)
    binary = np.isin(first, (0.0, 1.0)).all() and np.isin(second, (0.0, 1.0)).all()
    if binary:
        only_base = int(((first == 1) & (second == 0)).sum())
        only_other = int(((first == 0) & (second == 1)).sum())
        p_value, test = mcnemar_exact(only_base, only_other), "mcnemar_exact"
    else:
        spread = float(differences.std(ddof=1)) if differences.size > 1 else 0.0
        if spread == 0.0:
            p_value = 1.0 if mean == 0.0 else 0.0
        else:
            statistic = abs(mean) / (spread / math.sqrt(differences.size))
            p_value = math.erfc(statistic / math.sqrt(2))
        test = "paired_z"
    if differences.size > 1 and float(differences.std(ddof=1)) == 0.0:
        low = high = mean
    return {"difference": mean, "ci_low": low, "ci_high": high, "p_value": p_value, "test": test,
            "n": int(differences.size)}  # fmt: skip
