"""The gradient baselines, built on IPG's own engine: the raw policy gradient (IPG's integrand at
alpha = 1 only, times h) and Integrated Gradients of the reference solution's log-likelihood
(what a Captum user would try first; not in the IPG paper)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from torch import Tensor

from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts
from ipgkit.tasks.base import Problem, RewardFunction

from .config import IPGConfig
from .engine import PathPositions
from .ipg import ipg
from .path_rows import PathRows
from .quadrature import IntegrationRule, integration_points
from .result import AttributionResult


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
    prompts, completions = reference_rows(policy, problems, lambda p: p.reference)
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


def reference_rows(policy: Policy, problems: Sequence[Problem], text: Callable[[Problem], str]):
    """Prompt ids and ``text(problem)`` as completion ids, one row per problem."""
    prompts = policy.encode([policy.prompt_format(p.statement) for p in problems])
    return prompts, policy.encode_completions([text(p) for p in problems])


__all__ = ["integrated_gradients", "policy_gradient", "reference_rows"]
