"""Error types that name the problem in ipgkit's terms, raised before torch sees bad input."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IpgkitError(ValueError):
    """Base class of every input error ipgkit raises on purpose."""


class DataFormatError(IpgkitError):
    """A data file is missing, unreadable or malformed (the message names file and line)."""


class HookNameError(IpgkitError, KeyError):
    """A hook point that the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise print the message inside quotes
        return self.args[0] if self.args else ""


class RewardError(IpgkitError):
    """A reward function returned something that is not one finite float per completion."""


class ZeroSignalWarning(UserWarning):
    """An attribution had nothing to attribute: every prompt's rollouts earned the same reward."""


def no_signal_advice(frac_reward_zero_std: float | None) -> str:
    """Why an outcome attribution ranks no unit, and what to change (for warnings and errors)."""
    why = (
        "every prompt's rollouts earned the same reward (frac_reward_zero_std = 1), so every "
        "group-relative advantage is zero and"
        if frac_reward_zero_std == 1.0
        else "the scores are all equal, so"
    )
    return (
        f"{why} no unit can be ranked above another: pick a reward that varies within a prompt's "
        "rollouts, sample more rollouts per prompt, or use a task that is harder (if every "
        "rollout is right) or easier (if every rollout is wrong)"
    )


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Human-readable list of the candidates closest to `name`, for error messages."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not matches:
        matches = sorted(candidates)[:n]
    return ", ".join(repr(m) for m in matches)
