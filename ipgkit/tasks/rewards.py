"""Reward functions: TRL reward functions, called as TRL calls them,
``reward(prompts=..., completions=..., completion_ids=..., **columns)``
(:func:`ipgkit.tasks.base.call_reward`), so one written as in TRL's documentation,
``def reward(completions, **kwargs)``, works unchanged.

Columns ipgkit passes: ``answer``, ``reference``, ``question``, ``problem_id`` (one entry per
completion) and ``completion_ids`` (token ids). A task's ``task.correctness`` is its 0/1 reward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


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
