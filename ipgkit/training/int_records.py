"""The records InT hands from stage to stage: failed attempts, the hard pool and the intervention
set (saved as JSON records, see :mod:`ipgkit.io`)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ipgkit.tasks.base import Problem
from ipgkit.tasks.verification import Intervention


@dataclass(frozen=True)
class FailedAttempt:
    """A wrong sampled solution of a problem, split into reasoning steps.

    Attributes:
        problem: the problem (with its reference solution and answer).
        completion: the attempt's text.
        steps: the attempt's steps (``task.split_steps``).
    """

    problem: Problem
    completion: str
    steps: tuple[str, ...]

    def prefix(self, location: int) -> str:
        """The attempt's text before step ``location`` (1-based), ending in a step break."""
        return "".join(f"{step}\n" for step in self.steps[: location - 1])


@dataclass
class HardPool:
    """Problems the model never solves in ``k`` samples, with one failed attempt each.

    Attributes:
        problems: the hard problems.
        attempts: one failed attempt per hard problem (the first sampled one).
        k: samples per problem.
        candidates: how many problems were tried.
    """

    problems: list[Problem]
    attempts: list[FailedAttempt]
    k: int
    candidates: int

    @property
    def fraction(self) -> float:
        return len(self.problems) / self.candidates


@dataclass
class InterventionSet:
    """Interventions that survived the filters, with what each filter kept.

    Attributes:
        attempts: the failed attempts, in order.
        interventions: per attempt, the kept intervention (None if none survived).
        continuations: per attempt, a correct continuation from prefix + intervention (or None).
        yields: a table with, per stage, how many proposals (or attempts) remain.
        parse_status: counts of the parser's outcomes (ok, repaired, no_block, bad_json, ...).
        candidates: per attempt, the intervention before the correctness filter (None if no
            proposal survived parsing, range and leak checks).
    """

    attempts: list[FailedAttempt]
    interventions: list[Intervention | None]
    continuations: list[str | None]
    yields: pd.DataFrame
    parse_status: dict[str, int]
    candidates: list[Intervention | None]

    def kept(self) -> list[tuple[FailedAttempt, Intervention, str | None]]:
        return [
            (a, i, c)
            for a, i, c in zip(self.attempts, self.interventions, self.continuations, strict=True)
            if i is not None
        ]
