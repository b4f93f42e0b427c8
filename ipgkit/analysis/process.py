"""Process-level analysis: how often units fire along the chain of thought (IPG paper, appendix
B.3.2), step by step as the task segments it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch

from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, iter_activations
from ipgkit.tasks.base import split_lines


def step_of_tokens(
    policy: Policy, completion_ids: Sequence[int], split_steps: Callable[[str], list[str]]
) -> tuple[list[int], int]:
    """Which reasoning step each completion token belongs to, and the number of steps.

    Steps come from ``split_steps`` on the completion text (the task's segmentation); a token
    belongs to the last step that starts at or before its first character, so separators go with
    the step they close.
    """
    pieces = [policy.tokenizer.decode([int(t)]) for t in completion_ids]
    text = "".join(pieces)
    starts, cursor = [], 0
    for step in split_steps(text):
        found = text.find(step, cursor)
        if found < 0:
            continue
        starts.append(found)
        cursor = found + len(step)
    if not starts:
        return [0] * len(pieces), 1
    token_steps, offset, step = [], 0, 0
    for piece in pieces:
        while step + 1 < len(starts) and starts[step + 1] <= offset:
            step += 1
        token_steps.append(step)
        offset += len(piece)
    return token_steps, len(starts)


def activation_by_progress(
    policy: Policy,
    sets: Mapping[str, ComponentSet],
    rollouts: Rollouts,
    split_steps: Callable[[str], list[str]] = split_lines,
    n_bins: int = 5,
    threshold: float = 0.0,
    internal_batch_size: int = 32,
) -> pd.DataFrame:
    """How often chosen units fire along the chain of thought (IPG paper, appendix B.3.2).

    Each completion is split into steps; step s of S has normalised progress (s + 0.5) / S, which
    falls in one of ``n_bins`` equal bins. For each named set, the frequency in a bin is the
    fraction of (token, unit) pairs of that bin where the unit's activation exceeds ``threshold``.

    Args:
        sets: name -> ComponentSet, e.g. ``{"IPG top 20": ..., "random 20": ...}``.
        split_steps: the task's step segmentation (``task.split_steps``).

    Returns:
        A tidy DataFrame: set, bin, progress (bin centre), frequency, tokens.
    """
    if n_bins < 1:
        raise IpgkitError(f"n_bins must be >= 1, got {n_bins}")
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    width = max(map(len, completions))
    bins = torch.full((len(completions), width), -1, dtype=torch.long)
    for row, completion in enumerate(completions):
        token_steps, n_steps = step_of_tokens(policy, completion, split_steps)
        progress = (torch.tensor(token_steps, dtype=torch.float64) + 0.5) / n_steps
        bins[row, : len(completion)] = (progress * n_bins).long().clamp(max=n_bins - 1)
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    records = []
    for name, components in sets.items():
        components = components.resolved(policy.model)
        active = torch.zeros(n_bins, dtype=torch.float64)
        tokens = torch.zeros(n_bins, dtype=torch.float64)
        for chunk in iter_activations(
            policy, components.hook_name, prompts, completions, "generated", internal_batch_size
        ):
            token_bins = bins[chunk.row_index, chunk.position - prompt_lengths[chunk.row_index]]
            fired = (components.coordinates(chunk.activations) > threshold).double().mean(1)
            active.index_add_(0, token_bins, fired)
            tokens.index_add_(0, token_bins, torch.ones_like(fired))
        for b in range(n_bins):
            records.append(
                {
                    "set": name,
                    "bin": b,
                    "progress": (b + 0.5) / n_bins,
                    "frequency": float(active[b] / tokens[b]) if tokens[b] else float("nan"),
                    "tokens": int(tokens[b]),
                }
            )
    return pd.DataFrame.from_records(records)


def plot_activation_by_progress(frame: pd.DataFrame, ax=None):
    """Line plot of :func:`activation_by_progress`'s frequencies, one line per set."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for name, group in frame.groupby("set", sort=False):
        ax.plot(group.progress, group.frequency, marker="o", label=name)
    ax.set_xlabel("normalised progress through the chain of thought (steps)")
    ax.set_ylabel("activation frequency")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return ax
