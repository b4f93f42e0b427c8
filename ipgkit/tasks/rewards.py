"""Reward functions: TRL reward functions, called as TRL calls them,
``reward(prompts=..., completions=..., completion_ids=..., **columns)``
(:func:`ipgkit.tasks.base.call_reward`), so one written as in TRL's documentation,
``def reward(completions, **kwargs)``, works unchanged.

Columns ipgkit passes: ``answer``, ``reference``, ``question``, ``problem_id`` (one entry per
completion) and ``completion_ids`` (token ids). A task's ``task.correctness`` is its 0/1 reward;
:func:`step_progress` is a process reward for step-aligned tasks (the arithmetic families).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import first_divergence


def length_reward(
    prompts: Sequence[str], completions: Sequence[str], **columns: Any
) -> list[float]:
    """Completion length in tokens (characters when token ids are not given): reasoning strength."""
    ids = columns.get("completion_ids")
    if ids is not None:
        return [float(len(row)) for row in ids]
    return [float(len(text)) for text in completions]


def keyword_count(keywords: Sequence[str], case_sensitive: bool = False):
    """A reward counting occurrences of whole-word ``keywords`` (e.g. reflection words).

    Example:
        >>> reward = keyword_count(["wait", "check"])
        >>> reward(["q"], ["Wait, let me check. wait"])
        [3.0]
    """
    if not keywords:
        raise ValueError("keyword_count needs at least one keyword")
    flags = 0 if case_sensitive else re.IGNORECASE
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")\b", flags)

    def reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
        return [float(len(pattern.findall(text))) for text in completions]

    reward.__name__ = f"keyword_count({', '.join(keywords)})"
    return reward


def step_progress(
    prompts: Sequence[str], completions: Sequence[str], reference: Sequence[str], **_: Any
) -> list[float]:
    """Process reward (IPG paper, open question 3): the fraction of the reference solution's
    steps that a completion gets right before its first error, by the rule-based first-error
    checker (:func:`~ipgkit.tasks.verification.first_divergence`); 1.0 for a chain that matches
    the reference step for step, the ``####`` answer line included. Meant for step-aligned
    solutions (the arithmetic families), where each line is one step.

    Example:
        >>> reference = ["3+4=7\\n7*2=14\\n#### 14"]
        >>> step_progress(["q"], ["3+4=7\\n7*2=15\\n#### 15"], reference=reference)
        [0.3333333333333333]
    """
    values = []
    for completion, solution in zip(completions, reference, strict=True):
        steps = split_lines(solution)
        error = first_divergence(steps, split_lines(completion))
        values.append(1.0 if error is None else (error.location - 1) / len(steps))
    return values
