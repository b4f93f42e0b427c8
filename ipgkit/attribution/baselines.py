"""The IPG paper's baselines (its Table 1 set) plus Integrated Gradients, as AttributionResults.

Every baseline returns the same :class:`AttributionResult` as :func:`ipgkit.ipg`, so
``result.top(p)`` feeds :func:`ipgkit.steer` and the evaluation code whatever the method:

- :func:`random_baseline` / :func:`random_baselines`: seeded random scores (several seeds);
- :func:`activation_magnitude`: mean |h| over the support set's generated tokens;
- :func:`reasoning_neurons`: how much more a unit fires on concept tokens (digits and operators,
  or words like "add" and "total") than on other tokens;
- :func:`reason_score`: ReasonScore (Galichin et al. 2025), for SAE features: how specifically a
  latent fires in windows around reasoning words, times an entropy factor that prefers latents
  firing around many of the words over one;
- :func:`control_vector`: the top principal direction of (reasoning - contrast) activations, a
  direction component that steering scales like a unit;
- :func:`policy_gradient`: IPG's integrand at alpha = 1 only, times h (no path integral);
- :func:`integrated_gradients`: Integrated Gradients of the reference solution's log-likelihood,
  what a Captum user would try first (not in the paper).

Activation statistics stream through :func:`ipgkit.rollouts.iter_activations`, the same
teacher-forced pass that scoring uses; the gradient baselines use IPG's own engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from ipgkit.components import ComponentSet, Positions
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, iter_activations, mean_activations
from ipgkit.tasks.base import Problem, RewardFunction

from .config import IPGConfig
from .engine import PathPositions, PathRows
from .ipg import ipg
from .quadrature import IntegrationRule, integration_points
from .result import AttributionResult

#: concept tokens for arithmetic chains of thought (single characters or whole tokens)
ARITHMETIC_CONCEPTS = tuple("0123456789+-*/=")
#: concept words for GSM8K-style word problems
WORD_PROBLEM_CONCEPTS = (
    "add",
    "added",
    "plus",
    "sum",
    "total",
    "altogether",
    "subtract",
    "minus",
    "left",
    "remaining",
    "difference",
    "times",
    "multiply",
    "product",
    "each",
    "per",
    "divide",
    "divided",
    "half",
    "twice",
    "double",
    "more",
    "less",
    "fewer",
)


def random_baseline(policy: Policy, components: ComponentSet, seed: int = 0) -> AttributionResult:
    """Seeded standard-normal scores: ``top(p)`` is a uniformly random p-subset.

    Example:
        >>> results = random_baselines(policy, resid_neurons(2), seeds=range(5))  # doctest: +SKIP
    """
    components = components.resolved(policy.model)
    generator = torch.Generator().manual_seed(int(seed))
    scores = torch.randn(len(components), generator=generator, dtype=torch.float64)
    return AttributionResult(components, scores, method="random", info={"seed": int(seed)})


def random_baselines(
    policy: Policy, components: ComponentSet, seeds: Sequence[int] = (0, 1, 2, 3, 4)
) -> list[AttributionResult]:
    """One :func:`random_baseline` per seed (the paper averages random controls over seeds)."""
    return [random_baseline(policy, components, seed) for seed in seeds]


def activation_magnitude(
    policy: Policy,
    rollouts: Rollouts,
    components: ComponentSet,
    positions: Positions = "generated",
    internal_batch_size: int = 32,
) -> AttributionResult:
    """Mean |h| per unit over the support set's tokens, averaged within then across prompts.

    Args:
        policy: the policy.
        rollouts: the support set (e.g. the rollouts IPG used), teacher-forced again.
        components: the units.
        positions: which tokens count (``"generated"``: the completions, as in the paper).
        internal_batch_size: rows per forward pass.

    Example:
        >>> rollouts = ipgkit.sample(policy, task.problems[:50], n=5, temperature=0.6, top_p=0.8)
        >>> activation_magnitude(policy, rollouts, resid_neurons(2)).top(20)   # doctest: +SKIP
    """
    components = components.resolved(policy.model)
    per_prompt = mean_activations(
        policy,
        components.hook_name,
        rollouts.row_prompt_ids(),
        rollouts.row_completion_ids(),
        rollouts.group_ids,
        positions,
        lambda values: components.coordinates(values).abs(),
        internal_batch_size,
    )
    info = {
        "positions": positions,
        "policy": policy.name,
        "problem_ids": [p.id for p in rollouts.problems],
    }
    return AttributionResult.from_per_prompt(components, per_prompt, "activation", info)


def concept_token_ids(policy: Policy, concepts: Sequence[str]) -> list[int]:
    """Vocabulary ids whose text (stripped, lower-cased, word-piece markers removed) is a concept."""
    wanted = {c.strip().lower() for c in concepts}
    ids = []
    for token_id in range(policy.model.cfg.d_vocab):
        text = policy.tokenizer.decode([token_id]).strip().lower().lstrip("Ġ▁")
        if text and text in wanted:
            ids.append(token_id)
    if not ids:
        raise IpgkitError(f"no token of {policy.name!r} matches the concepts {list(concepts)[:8]}")
    return ids


def reasoning_neurons(
    policy: Policy,
    rollouts: Rollouts,
    components: ComponentSet,
    concepts: Sequence[str] = ARITHMETIC_CONCEPTS,
    positions: Positions = "generated",
    internal_batch_size: int = 32,
) -> AttributionResult:
    """Units that fire more on concept tokens than elsewhere: a standardised mean difference
    ``(mean on concept tokens - mean on other tokens) / pooled std`` over the support set.

    Args:
        concepts: concept token texts: :data:`ARITHMETIC_CONCEPTS` (digits and operators) or
            :data:`WORD_PROBLEM_CONCEPTS` (``"add"``, ``"total"``, ...), or your own.
    """
    components = components.resolved(policy.model)
    concept_ids = torch.tensor(concept_token_ids(policy, concepts))
    moments = torch.zeros(2, 3, len(components), dtype=torch.float64)  # [other/concept, n/sum/sq]
    for chunk in iter_activations(
        policy,
        components.hook_name,
        rollouts.row_prompt_ids(),
        rollouts.row_completion_ids(),
        positions,
        internal_batch_size,
    ):
        values = components.coordinates(chunk.activations.double())
        is_concept = torch.isin(chunk.token_ids, concept_ids)
        for which in (0, 1):
            selected = values[is_concept == bool(which)]
            moments[which, 0] += len(selected)
            moments[which, 1] += selected.sum(0)
            moments[which, 2] += (selected**2).sum(0)
    counts = moments[:, 0, 0]
    if (counts < 2).any():
        raise IpgkitError(
            f"need at least 2 concept and 2 other tokens, got {int(counts[1])} and {int(counts[0])}"
        )
    means = moments[:, 1] / counts[:, None]
    variances = (moments[:, 2] - counts[:, None] * means**2) / (counts[:, None] - 1)
    pooled = ((counts[:, None] - 1) * variances).sum(0) / (counts.sum() - 2)
    scores = (means[1] - means[0]) / pooled.clamp_min(1e-12).sqrt()
    info = {
        "concepts": list(concepts),
        "concept_tokens": int(counts[1]),
        "other_tokens": int(counts[0]),
        "positions": positions,
        "policy": policy.name,
    }
    return AttributionResult(components, scores, method="reasoning_neuron", info=info)


#: reasoning moments in the embedded model's traces: operators, results, step breaks, the answer mark
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

        score_i = (mu(i, D_R) / sum_j mu(j, D_R) - mu(i, D_notR) / sum_j mu(j, D_notR)) * H_i ** alpha
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
    patterns = [_token_patterns(policy, word) for word in words]
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    sequences = [[*p, *c] for p, c in zip(prompts, completions, strict=True)]
    table = torch.zeros(len(sequences), len(words), max(map(len, sequences)), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        for w, variants in enumerate(patterns):
            for start, stop in _occurrences(sequence, variants):
                table[row, w, max(0, start - window[0]) : stop + window[1]] = True
    n_words, units = len(words), len(components)
    sums = torch.zeros(n_words + 2, units, dtype=torch.float64)  # per word, any word, all tokens
    counts = torch.zeros(n_words + 2, dtype=torch.float64)
    for chunk in iter_activations(
        policy, components.hook_name, prompts, completions, positions, internal_batch_size
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


def _reference_rows(policy: Policy, problems: Sequence[Problem], text: Callable[[Problem], str]):
    prompts = policy.encode([policy.prompt_format(p.statement) for p in problems])
    return prompts, policy.encode_completions([text(p) for p in problems])


def control_vector(
    policy: Policy,
    problems: Sequence[Problem],
    components: ComponentSet,
    reasoning: Callable[[Problem], str] = lambda p: p.reference,
    contrast: Callable[[Problem], str] = lambda p: f"#### {p.answer}",
    internal_batch_size: int = 32,
) -> AttributionResult:
    """A control vector: the top principal direction of paired (reasoning - contrast) activations.

    For each problem, the mean activation over the completion tokens of a reasoned answer (the
    reference solution) minus that over a contrast answer (the bare final answer) gives one
    difference; the top right-singular vector of the stacked, uncentred differences (so the
    shared direction is kept, as in representation engineering with pair sign flips) is the
    direction, oriented so that reasoning projects higher. The result is a one-direction
    ComponentSet: steering by gamma scales the activation's coordinate along it.

    Example:
        >>> vector = control_vector(policy, task.problems[:50], resid_neurons(2))  # doctest: +SKIP
        >>> with ipgkit.steer(policy, vector.top(1), gamma=2.0): ...           # doctest: +SKIP
    """
    if not problems:
        raise IpgkitError("control_vector needs at least one problem")
    components.validate(policy.model)
    means = []
    for text in (reasoning, contrast):
        prompts, completions = _reference_rows(policy, problems, text)
        means.append(
            mean_activations(
                policy,
                components.hook_name,
                prompts,
                completions,
                torch.arange(len(problems)),
                "generated",
                chunk_size=internal_batch_size,
            )
        )
    differences = means[0] - means[1]
    _, singular_values, right = torch.linalg.svd(differences, full_matrices=False)
    direction = right[0]
    if float(differences.mean(0) @ direction) < 0:
        direction = -direction
    explained = float(singular_values[0] ** 2 / (singular_values**2).sum())
    vector = ComponentSet(components.hook_name, (0,), "direction", direction[None].float())
    projections = differences @ direction
    info = {
        "explained_second_moment": explained,
        "policy": policy.name,
        "mean_projection_gap": float(projections.mean()),
        "problem_ids": [p.id for p in problems],
    }
    return AttributionResult(
        vector,
        torch.tensor([explained]),
        per_prompt=projections[:, None],
        method="control_vector",
        info=info,
    )


def policy_gradient(
    policy: Policy,
    problems: Sequence[Problem] | None,
    components: ComponentSet,
    reward: RewardFunction | None = None,
    config: IPGConfig | None = None,
    rollouts: Rollouts | None = None,
    progress: bool = True,
    **settings,
) -> AttributionResult:
    """The raw policy gradient times h: IPG's integrand at alpha = 1 only (no path integral).

    Same arguments as :func:`ipgkit.ipg` (``n_steps`` and ``method`` are fixed).
    """
    settings.update(n_steps=1, method="riemann_right")
    result = ipg(policy, problems, components, reward, config, rollouts, progress, **settings)
    return replace(result, method="policy_gradient")


def integrated_gradients(
    policy: Policy,
    problems: Sequence[Problem],
    components: ComponentSet,
    n_steps: int = 10,
    method: IntegrationRule = "riemann_right",
    positions: PathPositions = "all",
    baseline: Tensor | None = None,
    internal_batch_size: int = 32,
    progress: bool = True,
) -> AttributionResult:
    """Integrated Gradients of ``log pi(reference solution | prompt)`` along the same path as IPG.

    No sampling and no reward: the objective is the likelihood of the worked reference (plus EOS),
    so this asks "which units make the model produce the textbook solution". ``delta`` is the
    completeness gap against the log-likelihood change from alpha = 0 to 1 (mean over prompts).
    """
    if not problems:
        raise IpgkitError("integrated_gradients needs at least one problem")
    started = time.perf_counter()
    components = components.resolved(policy.model)
    alphas, weights = integration_points(method, n_steps)
    prompts, completions = _reference_rows(policy, problems, lambda p: p.reference)
    rows = PathRows()
    for g in range(len(problems)):
        for k in range(n_steps):
            rows.add(g, k, prompts[g], completions[g], float(alphas[k]), float(weights[k]))
    per_prompt, grads = rows.score(
        policy,
        components,
        len(problems),
        positions,
        baseline,
        internal_batch_size,
        progress=progress,
    )
    ends = [
        rows.logprobs_at(
            end, alphas, grads, policy, components, positions, baseline, internal_batch_size
        ).mean()
        for end in (0.0, 1.0)
    ]
    info = {
        "n_steps": n_steps,
        "method": method,
        "positions": positions,
        "policy": policy.name,
        "baseline": "zero" if baseline is None else "tensor",
        "delta": float(per_prompt.sum(1).mean() - (ends[1] - ends[0])),
        "delta_of": "mean over prompts of log pi(reference) at alpha = 1 minus at alpha = 0",
        "logprob(0)": float(ends[0]),
        "logprob(1)": float(ends[1]),
        "problem_ids": [p.id for p in problems],
        "seconds": time.perf_counter() - started,
    }
    return AttributionResult.from_per_prompt(components, per_prompt, "integrated_gradients", info)


__all__ = [
    "ARITHMETIC_CONCEPTS",
    "WORD_PROBLEM_CONCEPTS",
    "activation_magnitude",
    "concept_token_ids",
    "control_vector",
    "integrated_gradients",
    "policy_gradient",
    "random_baseline",
    "random_baselines",
    "reasoning_neurons",
]
