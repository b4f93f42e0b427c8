"""Continuing failed attempts: from the prefix before the first error, followed by nothing, the
original wrong step or the intervention, and the InT paper's table of how often each succeeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd

from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample
from ipgkit.stats import mean_interval
from ipgkit.tasks.base import Task
from ipgkit.tasks.verification import Intervention

from .int_records import FailedAttempt, InterventionSet

Condition = Literal["prefix", "original", "intervention"]


def continue_from(
    policy: Policy,
    task: Task,
    attempts: Sequence[FailedAttempt],
    interventions: Sequence[Intervention],
    condition: Condition,
    n: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[tuple[list[str], list[float]]]:
    """Sample ``n`` continuations per attempt from the prompt plus the attempt's prefix before
    the intervention's step, followed by nothing (``"prefix"``), the attempt's own step there
    (``"original"``) or the intervention (``"intervention"``). Returns per attempt the full
    completion texts (prefix included) and their rewards under ``task.correctness``."""
    heads = []
    for attempt, fix in zip(attempts, interventions, strict=True):
        head = attempt.prefix(fix.location)
        if condition == "original" and fix.location <= len(attempt.steps):
            head += attempt.steps[fix.location - 1] + "\n"
        elif condition == "intervention":
            head += fix.content + "\n"
        heads.append(head)
    prompts = [
        policy.prompt_format(a.problem.statement) + head
        for a, head in zip(attempts, heads, strict=True)
    ]
    rollouts = sample(
        policy,
        prompts,
        n=n,
        temperature=temperature,
        seed=seed,
        max_new_tokens=task.max_new_tokens,
        format_prompts=False,
        progress=progress,
    )
    results = []
    for index, (attempt, head) in enumerate(zip(attempts, heads, strict=True)):
        texts = [head + t for t in rollouts.texts[index * n : (index + 1) * n]]
        rewards = [float(task.grade(t, attempt.problem.answer)) for t in texts]
        results.append((texts, rewards))
    return results


def continuation_table(
    policy: Policy,
    task: Task,
    interventions: InterventionSet | Sequence[tuple[FailedAttempt, Intervention]],
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The InT paper's intervention table: continuation accuracy (mean over samples, 95% CI) and
    coverage (share of attempts with at least one correct continuation) conditioned on (prefix),
    (prefix + original wrong step) and (prefix + intervention).

    From an :class:`InterventionSet` it uses every candidate *before* the correctness filter, so
    the table is not conditioned on the continuations having already succeeded once.
    """
    if isinstance(interventions, InterventionSet):
        pairs = [
            (a, i)
            for a, i in zip(interventions.attempts, interventions.candidates, strict=True)
            if i is not None
        ]
    else:
        pairs = list(interventions)
    if not pairs:
        raise IpgkitError("no interventions to condition on")
    attempts, fixes = [a for a, _ in pairs], [i for _, i in pairs]
    rows = []
    for condition in ("prefix", "original", "intervention"):
        results = continue_from(policy, task, attempts, fixes, condition, n, temperature, seed)
        per_attempt = [sum(r) / len(r) for _, r in results]
        accuracy, low, high = mean_interval(per_attempt)
        coverage = [float(any(r)) for _, r in results]
        rows.append(
            {
                "condition": {
                    "prefix": "prefix",
                    "original": "prefix + original step",
                    "intervention": "prefix + intervention",
                }[condition],
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
                "coverage": sum(coverage) / len(coverage),
                "attempts": len(pairs),
                "samples": n,
            }
        )
    return pd.DataFrame(rows)
