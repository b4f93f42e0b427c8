"""Continuing failed attempts: from the prefix before the first error, followed by nothing, the
original wrong step or the intervention, and the InT paper's table of how often each succeeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    interventions: InterventionSet
    | Mapping[str, InterventionSet]
    | Sequence[tuple[FailedAttempt, Intervention]],
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """The InT paper's intervention table: continuation accuracy (mean over samples, 95% CI) and
    coverage (share of attempts with at least one correct continuation) conditioned on (prefix),
    (prefix + original wrong step) and (prefix + intervention).

    From an :class:`InterventionSet` it uses every candidate *before* the correctness filter, so
    the table is not conditioned on the continuations having already succeeded once. From a
    mapping of named sets over the same attempts (e.g. ``{"checker": rule, "self-proposed":
    own}``) it keeps the attempts every set has a candidate for, takes the prefix and the original
    step at the first set's location, and adds one ``prefix + <name> intervention`` row per set.

    Example:
        >>> sets = {"checker": rule, "self-proposed": own}
        >>> continuation_table(policy, task, sets)                          # doctest: +SKIP
    """
    named = _named_candidates(interventions)
    if not named or not next(iter(named.values())):
        raise IpgkitError("no interventions to condition on")
    first = next(iter(named.values()))
    attempts = [a for a, _ in first]
    rows = []
    conditions = [("prefix", "prefix", first), ("original", "prefix + original step", first)]
    for name, pairs in named.items():
        label = "prefix + intervention" if len(named) == 1 else f"prefix + {name} intervention"
        conditions.append(("intervention", label, pairs))
    for condition, label, pairs in conditions:
        fixes = [i for _, i in pairs]
        results = continue_from(policy, task, attempts, fixes, condition, n, temperature, seed)
        rows.append({"condition": label, **_success(results, n)})
    return pd.DataFrame(rows)


def _success(results: list[tuple[list[str], list[float]]], n: int) -> dict:
    """Continuation accuracy (mean over attempts of each attempt's mean, 95% t-interval) and
    coverage (share of attempts with a correct continuation) of :func:`continue_from`'s results."""
    accuracy, low, high = mean_interval([sum(r) / len(r) for _, r in results])
    return {
        "accuracy": accuracy,
        "ci_low": low,
        "ci_high": high,
        "coverage": sum(any(r) for _, r in results) / len(results),
        "attempts": len(results),
        "samples": n,
    }


def _named_candidates(interventions) -> dict[str, list[tuple[FailedAttempt, Intervention]]]:
    """(attempt, candidate) pairs per named set, restricted to attempts every set answers."""
    if isinstance(interventions, InterventionSet):
        interventions = {"": interventions}
    elif not isinstance(interventions, Mapping):
        return {"": list(interventions)}
    sets = list(interventions.values())
    if len({len(s.attempts) for s in sets}) > 1:
        raise IpgkitError("the intervention sets must cover the same attempts, in the same order")
    shared = [
        index
        for index in range(len(sets[0].attempts))
        if all(s.candidates[index] is not None for s in sets)
    ]
    return {
        name: [(s.attempts[i], s.candidates[i]) for i in shared]
        for name, s in interventions.items()
    }


SHIFT_LABELS = {-1: "one step early", 0: "at the first error", 1: "one step late"}


def misplaced_table(
    policy: Policy,
    task: Task,
    interventions: InterventionSet,
    n: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Robustness to a misplaced intervention: each candidate's corrected step inserted one step
    early (replacing the step before the error), at its own location, and one step late (after the
    wrong step), on the attempts where all three exist (location 2 to the attempt's length).

    Returns continuation accuracy (95% CI over attempts) and coverage per placement.

    Example:
        >>> misplaced_table(policy, task, from_checker, n=4)                  # doctest: +SKIP
    """
    pairs = [
        (attempt, fix)
        for attempt, fix in zip(interventions.attempts, interventions.candidates, strict=True)
        if fix is not None and 2 <= fix.location <= len(attempt.steps)
    ]
    if not pairs:
        raise IpgkitError("no intervention can be moved one step either way")
    attempts = [a for a, _ in pairs]
    rows = []
    for shift, label in SHIFT_LABELS.items():
        moved = [Intervention(fix.location + shift, fix.content) for _, fix in pairs]
        results = continue_from(policy, task, attempts, moved, "intervention", n, temperature, seed)
        rows.append({"placement": label, "shift": shift, **_success(results, n)})
    return pd.DataFrame(rows)
