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

from collections.abc import Callable, Sequence

import torch

from ipgkit.components import ComponentSet, Positions
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, iter_activations, mean_activations
from ipgkit.tasks.base import Problem

from .gradient_baselines import integrated_gradients, policy_gradient, reference_rows
from .reason_score import ARITHMETIC_REASONING_WORDS, REASONING_WORDS, reason_score
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
    progress: bool = True,
) -> AttributionResult:
    """Mean |h| per unit over the support set's tokens, averaged within then across prompts.

    Args:
        policy: the policy.
        rollouts: the support set (e.g. the rollouts IPG used), teacher-forced again.
        components: the units.
        positions: which tokens count (``"generated"``: the completions, as in the paper).
        internal_batch_size: rows per forward pass.
        progress: a tqdm bar over the rows (``False`` silences it).

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
        progress=progress,
    )
    info = {
        "positions": positions,
        "policy": policy.name,
        "problem_ids": [p.id for p in rollouts.problems],
    }
    return AttributionResult.from_per_prompt(components, per_prompt, "activation", info)


def concept_token_ids(policy: Policy, concepts: Sequence[str]) -> list[int]:
    """Vocabulary ids whose text (stripped, lower-cased, word pieces unmarked) is a concept."""
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
    progress: bool = True,
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
        progress=progress,
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


def control_vector(
    policy: Policy,
    problems: Sequence[Problem],
    components: ComponentSet,
    reasoning: Callable[[Problem], str] = lambda p: p.reference,
    contrast: Callable[[Problem], str] = lambda p: f"#### {p.answer}",
    internal_batch_size: int = 32,
    progress: bool = True,
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
        prompts, completions = reference_rows(policy, problems, text)
        means.append(
            mean_activations(
                policy,
                components.hook_name,
                prompts,
                completions,
                torch.arange(len(problems)),
                "generated",
                chunk_size=internal_batch_size,
                progress=progress,
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


__all__ = [
    "ARITHMETIC_CONCEPTS",
    "ARITHMETIC_REASONING_WORDS",
    "REASONING_WORDS",
    "WORD_PROBLEM_CONCEPTS",
    "activation_magnitude",
    "concept_token_ids",
    "control_vector",
    "integrated_gradients",
    "policy_gradient",
    "random_baseline",
    "random_baselines",
    "reason_score",
    "reasoning_neurons",
]
