"""ReasonScore (Galichin et al. 2025), the SAE-feature baseline: how specifically a latent fires
in windows around reasoning words, times an entropy factor that prefers latents firing around many
of the words over one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ipgkit.components import ComponentSet, Positions
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, iter_activations

from .result import AttributionResult

#: reasoning moments in the embedded model's traces: operators, results, step breaks, answer mark
ARITHMETIC_REASONING_WORDS = ("+", "-", "*", "=", "\n", "####")
#: reasoning vocabulary for chat models, in the spirit of Galichin et al.'s list
REASONING_WORDS = (
    "wait",
    "but",
    "however",
    "alternatively",
    "perhaps",
    "maybe",
    "hmm",
    "check",
    "verify",
    "so",
    "therefore",
)


def reason_score(
    policy: Policy,
    rollouts: Rollouts,
    components: ComponentSet,
    words: Sequence[str] = ARITHMETIC_REASONING_WORDS,
    window: tuple[int, int] = (2, 2),
    alpha: float = 0.7,
    positions: Positions = "generated",
    internal_batch_size: int = 32,
) -> AttributionResult:
    """ReasonScore (Galichin et al. 2025): features that fire specifically around reasoning words.

    With mu(i, D) the mean activation of unit i over the tokens D, D_R the tokens within
    ``window`` = (before, after) tokens of an occurrence of any reasoning word, D_r those around
    word r and D_notR the rest::

        score_i = (mu(i, D_R) / sum_j mu(j, D_R) - mu(i, D_notR) / sum_j mu(j, D_notR))
                  * H_i ** alpha
        H_i = -sum_r p_ir log p_ir / log |R|,   p_ir = mu(i, D_r) / sum_r' mu(i, D_r')

    The entropy factor favours units that fire around many of the words over a detector of one
    word. Defined for SAE latents (non-negative); other units enter through |h|. Words that never
    occur in the support set are left out of R.

    Args:
        words: the reasoning vocabulary; :data:`ARITHMETIC_REASONING_WORDS` for the embedded model,
            :data:`REASONING_WORDS` ("wait", "however", ...) for chat models. A word matches its
            token sequence, with or without a leading space.
        window: tokens before and after an occurrence that count as around it.
        alpha: exponent of the entropy factor.

    Example:
        >>> features = sae_features(policy, layer=2)                     # doctest: +SKIP
        >>> reason_score(policy, rollouts, features).top(20)              # doctest: +SKIP
    """
    if alpha < 0 or min(window) < 0:
        raise IpgkitError(
            f"reason_score needs alpha >= 0 and a window of non-negative sizes, got "
            f"alpha={alpha}, window={window}"
        )
    components = components.resolved(policy.model)
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    table = _word_windows(policy, prompts, completions, words, window)
    n_words = len(words)
    sums, counts = _window_sums(
        policy, components, prompts, completions, table, positions, internal_batch_size
    )
    present = counts[:n_words] > 0
    outside = counts[n_words + 1] - counts[n_words]
    if not present.any() or outside == 0:
        raise IpgkitError(
            f"reason_score needs tokens both around and away from the reasoning words {list(words)}"
            f" at positions={positions!r}; found {int(counts[n_words])} around, {int(outside)} away"
        )
    around_mean = sums[n_words] / counts[n_words]
    outside_mean = (sums[n_words + 1] - sums[n_words]) / outside
    contrast = around_mean / around_mean.sum() - outside_mean / outside_mean.sum()
    per_word = sums[:n_words][present] / counts[:n_words][present, None]
    shares = per_word / per_word.sum(0).clamp_min(1e-30)
    entropy = -(shares * shares.clamp_min(1e-30).log()).sum(0)
    n_present = int(present.sum())
    entropy = entropy / math.log(n_present) if n_present > 1 else torch.ones_like(entropy)
    scores = contrast * entropy.clamp(0, 1) ** alpha
    info = {
        "words": [w for w, keep in zip(words, present.tolist(), strict=True) if keep],
        "window": list(window),
        "alpha": alpha,
        "positions": positions,
        "tokens_around": int(counts[n_words]),
        "tokens_away": int(outside),
        "policy": policy.name,
        "problem_ids": [p.id for p in rollouts.problems],
    }
    return AttributionResult(components, scores, method="reason_score", info=info)


def _word_windows(policy, prompts, completions, words, window) -> Tensor:
    """[rows, words, positions] True within ``window`` of an occurrence of each word."""
    patterns = [_token_patterns(policy, word) for word in words]
    sequences = [[*p, *c] for p, c in zip(prompts, completions, strict=True)]
    table = torch.zeros(len(sequences), len(words), max(map(len, sequences)), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        for w, variants in enumerate(patterns):
            for start, stop in _occurrences(sequence, variants):
                table[row, w, max(0, start - window[0]) : stop + window[1]] = True
    return table


def _window_sums(policy, components, prompts, completions, table, positions, chunk_size):
    """Activation sums and token counts per word window, around any word, and over all tokens."""
    n_words, units = table.shape[1], len(components)
    sums = torch.zeros(n_words + 2, units, dtype=torch.float64)
    counts = torch.zeros(n_words + 2, dtype=torch.float64)
    for chunk in iter_activations(
        policy, components.hook_name, prompts, completions, positions, chunk_size
    ):
        values = components.coordinates(chunk.activations.double())
        values = values if components.kind == "sae" else values.abs()
        member = table[chunk.row_index, :, chunk.position].double()  # [tokens, words]
        around = member.amax(1)
        sums[:n_words] += member.T @ values
        counts[:n_words] += member.sum(0)
        sums[n_words] += around @ values
        counts[n_words] += around.sum()
        sums[n_words + 1] += values.sum(0)
        counts[n_words + 1] += len(values)
    return sums, counts


def _token_patterns(policy: Policy, word: str) -> list[list[int]]:
    """Token id sequences of ``word`` as it may appear in text: bare and after a space."""
    variants = []
    for text in (word, f" {word}"):
        ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids and ids not in variants:
            variants.append([int(i) for i in ids])
    if not variants:
        raise IpgkitError(f"reasoning word {word!r} has no tokens")
    return variants


def _occurrences(sequence: Sequence[int], variants: Sequence[Sequence[int]]):
    """(start, stop) spans where any variant occurs in ``sequence``."""
    for variant in variants:
        width = len(variant)
        for start in range(len(sequence) - width + 1):
            if sequence[start : start + width] == list(variant):
                yield start, start + width
