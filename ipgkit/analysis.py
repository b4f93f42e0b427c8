"""Looking at units: feature pages (top-activating contexts and output tokens) and process-level
activation frequency along the chain of thought (IPG paper, appendix B.3.2).

Everything reads activations through :func:`ipgkit.rollouts.iter_activations`, the teacher-forced
pass that scoring uses, so any steering active on the model applies here too.

Example:
    >>> pages = feature_pages(policy, result.top(5), rollouts)            # doctest: +SKIP
    >>> print(pages.page(pages.units[0]))                                 # doctest: +SKIP
    >>> sets = {"IPG": result.top(20), "random": random.top(20)}          # doctest: +SKIP
    >>> frame = activation_by_progress(policy, sets, rollouts)           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ipgkit.components import ComponentSet, Positions
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, iter_activations
from ipgkit.saes import decoder_directions
from ipgkit.stats import random_dice
from ipgkit.tasks.base import split_lines

# --- feature pages --------------------------------------------------------------------------------


def top_activations(
    policy: Policy,
    components: ComponentSet,
    rollouts: Rollouts,
    n: int = 10,
    positions: Positions = "all",
    context: int = 24,
    internal_batch_size: int = 32,
) -> pd.DataFrame:
    """Each unit's ``n`` largest activations over the rollouts' tokens, with their contexts.

    Rows of a group share their prompt (and often a completion prefix), and equal prefixes give
    equal activations, so each context is reported once: the text up to the token identifies it.

    Returns:
        A tidy DataFrame: index (the unit), rank, activation, row, position, token (its text),
        before (up to ``context`` tokens of text before it) and after (a few tokens after).

    Example:
        >>> top_activations(policy, sae_features(policy, 2, [17]), rollouts, n=5)  # doctest: +SKIP
    """
    if n < 1:
        raise IpgkitError(f"n must be >= 1, got {n}")
    components = components.resolved(policy.model)
    units = len(components)
    # a prefix repeats at most once per row of its group: keep enough candidates to drop repeats
    pool = n * (rollouts.n + 1)
    best = torch.full((units, 0), float("-inf"), dtype=torch.float64)
    where = torch.zeros((units, 0, 2), dtype=torch.long)
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    for chunk in iter_activations(
        policy, components.hook_name, prompts, completions, positions, internal_batch_size
    ):
        values = components.coordinates(chunk.activations.double()).T  # [units, tokens]
        located = torch.stack([chunk.row_index, chunk.position], -1)  # [tokens, 2]
        candidates = torch.cat([best, values], dim=1)
        places = torch.cat([where, located[None].expand(units, -1, -1)], dim=1)
        best, order = candidates.topk(min(pool, candidates.shape[1]), dim=1)
        where = places.gather(1, order[..., None].expand(-1, -1, 2))
    sequences = [[*p, *c] for p, c in zip(prompts, completions, strict=True)]
    records = []
    for u, index in enumerate(components.indices):
        seen: set[tuple[int, ...]] = set()
        for value, (row, position) in zip(best[u].tolist(), where[u].tolist(), strict=True):
            sequence = sequences[row]
            prefix = tuple(sequence[: position + 1])
            if prefix in seen:
                continue
            seen.add(prefix)
            records.append(
                {
                    "index": index,
                    "rank": len(seen) - 1,
                    "activation": value,
                    "row": row,
                    "position": position,
                    "token": policy.tokenizer.decode([sequence[position]]),
                    "before": policy.tokenizer.decode(
                        sequence[max(0, position - context) : position]
                    ),
                    "after": policy.tokenizer.decode(
                        sequence[position + 1 : position + 1 + context // 4]
                    ),
                }
            )
            if len(seen) == n:
                break
    return pd.DataFrame.from_records(records)


def output_tokens(policy: Policy, components: ComponentSet, n: int = 10) -> pd.DataFrame:
    """The tokens each unit's output direction promotes and suppresses most: ``direction @ W_U``
    (a logit-lens read that skips the final LayerNorm's scale; SAE latents read their decoder row).

    Returns:
        A tidy DataFrame: index, effect (``"promotes"``/``"suppresses"``), rank, token, logit.
    """
    components = components.resolved(policy.model)
    directions = decoder_directions(policy, components).to(policy.model.W_U.dtype)
    logits = (directions @ policy.model.W_U.detach()).double()  # [units, vocab]
    count = min(n, logits.shape[1])
    records = []
    for effect, sign in (("promotes", 1.0), ("suppresses", -1.0)):
        values, ids = (sign * logits).topk(count, dim=1)
        for u, index in enumerate(components.indices):
            for rank in range(count):
                records.append(
                    {
                        "index": index,
                        "effect": effect,
                        "rank": rank,
                        "token": policy.tokenizer.decode([int(ids[u, rank])]),
                        "logit": sign * float(values[u, rank]),
                    }
                )
    return pd.DataFrame.from_records(records)


@dataclass
class FeaturePages:
    """What a researcher looks at for each unit: top-activating contexts and output tokens.

    Attributes:
        components: the units the pages describe.
        contexts: :func:`top_activations`'s table.
        logits: :func:`output_tokens`'s table.
    """

    components: ComponentSet
    contexts: pd.DataFrame
    logits: pd.DataFrame

    @property
    def units(self) -> list[int]:
        return list(self.components.indices)

    def page(self, index: int) -> str:
        """A plain-text page for unit ``index``: contexts with the token in [[ ]], output tokens."""
        if index not in self.units:
            raise IpgkitError(f"unit {index} has no page; pages exist for {self.units}")
        contexts = self.contexts[self.contexts["index"] == index]
        logits = self.logits[self.logits["index"] == index]
        lines = [
            f"{self.components.kind} {index} at {self.components.hook_name}",
            "top activations:",
        ]
        for item in contexts.itertuples():
            text = f"{item.before}[[{item.token}]]{item.after}".replace("\n", "⏎")
            lines.append(f"  {item.activation:8.3f}  {text}")
        for effect in ("promotes", "suppresses"):
            chosen = logits[logits["effect"] == effect]
            tokens = ", ".join(
                f"{t!r} {v:+.2f}" for t, v in zip(chosen.token, chosen.logit, strict=True)
            )
            lines.append(f"{effect}: {tokens}")
        return "\n".join(lines)

    def plot(self, index: int, ax=None):
        """Top output-token logits (bars) with the top contexts as text; returns the axes."""
        import matplotlib.pyplot as plt

        self.page(index)  # validates index
        logits = self.logits[self.logits["index"] == index].sort_values("logit")
        contexts = self.contexts[self.contexts["index"] == index].head(6)
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4.5))
        labels = [repr(t)[1:-1] for t in logits.token]
        ax.barh(
            range(len(logits)),
            logits.logit,
            color=["tab:red" if v < 0 else "tab:blue" for v in logits.logit],
        )
        ax.set_yticks(range(len(logits)), labels, fontsize=8)
        ax.set_xlabel("direct logit effect per unit of activation")
        ax.set_title(f"{self.components.kind} {index} ({self.components.hook_name})", fontsize=9)
        rows = zip(
            contexts.activation, contexts.before, contexts.token, contexts.after, strict=True
        )
        text = "\n".join(f"{a:6.2f}  {b[-18:]}[{t}]{c}".replace("\n", "⏎") for a, b, t, c in rows)
        ax.text(
            1.02,
            1.0,
            "top contexts\n" + text,
            transform=ax.transAxes,
            va="top",
            family="monospace",
            fontsize=7,
        )
        return ax


def feature_pages(
    policy: Policy,
    components: ComponentSet,
    rollouts: Rollouts,
    n_contexts: int = 8,
    n_tokens: int = 8,
    positions: Positions = "all",
) -> FeaturePages:
    """Pages for a few units (SAE features, neurons or directions) from the rollouts' tokens.

    Example:
        >>> pages = feature_pages(policy, result.top(3), rollouts)        # doctest: +SKIP
        >>> print(pages.page(pages.units[0]))                             # doctest: +SKIP
    """
    components = components.resolved(policy.model)
    contexts = top_activations(policy, components, rollouts, n_contexts, positions)
    return FeaturePages(components, contexts, output_tokens(policy, components, n_tokens))


# --- process-level analysis -----------------------------------------------------------------------


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


# --- agreement between component sets (IPG paper, Table 2) --------------------------------------


def dice(first: Collection[int] | ComponentSet, second: Collection[int] | ComponentSet) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two sets of unit indices (or ComponentSets of
    units at the same hook).

    Example:
        >>> dice({1, 2, 3, 4}, {3, 4, 5, 6})
        0.5
    """
    sets = []
    for item in (first, second):
        if isinstance(item, ComponentSet):
            if item.indices is None or item.kind == "direction":
                raise IpgkitError("dice needs explicit unit indices, not all units or directions")
            item = item.indices
        sets.append(set(int(i) for i in item))
    both_sets = isinstance(first, ComponentSet) and isinstance(second, ComponentSet)
    if both_sets and first.hook_name != second.hook_name:
        raise IpgkitError(
            f"dice of sets at different hooks: {first.hook_name} vs {second.hook_name}"
        )
    if not sets[0] and not sets[1]:
        raise IpgkitError("dice of two empty sets is undefined")
    return 2 * len(sets[0] & sets[1]) / (len(sets[0]) + len(sets[1]))


__all__ = [
    "FeaturePages",
    "activation_by_progress",
    "dice",
    "feature_pages",
    "output_tokens",
    "plot_activation_by_progress",
    "random_dice",
    "step_of_tokens",
    "top_activations",
]
