"""Per-token IPG: each position's share of a unit's score, for chosen rollouts and units.

IPG's engine sums ``(h - h')_t * d objective / d h~_t`` over positions t (``"bpu,bpu,bp->bu"``);
here the same rows are scored with the terms kept per position, so a rollout's positions sum to
its share of the unit's score, and the shares of all rollouts to the unit's IPG (paper mode, the
rollouts the result was computed on).

Example:
    >>> rollouts = ipgkit.sample(policy, task.problems[:8], n=5, reward=task.correctness)
    >>> result = ipgkit.ipg(policy, task.problems[:8], mlp_neurons(2), rollouts=rollouts)
    >>> top = result.top(5).indices
    >>> view = token_attribution(policy, rollouts, result.components, rows=[0, 1], units=top)
    >>> view.to_dataframe().head()                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy, require_policy
from ipgkit.rollouts import Rollouts, TokenActivations, token_texts
from ipgkit.rollouts.activations import unit_columns

from .config import IPGConfig
from .engine import path_gradients
from .estimators import _support_baseline, path_row_weight
from .quadrature import integration_points


@dataclass
class TokenAttribution(TokenActivations):
    """Per-token IPG of some units over some rollouts (and their activations, as in
    :class:`~ipgkit.rollouts.TokenActivations`).

    Attributes:
        contributions: per shown rollout, [positions, units]: that position's share of the
            unit's IPG (summing over positions gives the rollout's share; over rollouts, the
            unit's score when every rollout of the support set is shown).
        advantages: per shown rollout, its group-relative advantage.

    ``values``, ``show`` and ``to_html`` show the contributions unless ``quantity="activation"``.
    """

    contributions: list[Float[Tensor, "positions units"]] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)

    default_quantity = "contribution"

    def _tables(self) -> dict[str, list[Tensor]]:
        return {"contribution": self.contributions, "activation": self.activations}

    def _row_columns(self, slot: int) -> dict[str, float]:
        return {"reward": self.rewards[slot], "advantage": self.advantages[slot]}

    def totals(self) -> Float[Tensor, "rollouts units"]:
        """Each shown rollout's share of each unit's score (the sum over its positions)."""
        return torch.stack([values.sum(0) for values in self.contributions])


def token_attribution(
    policy: Policy,
    rollouts: Rollouts,
    components: ComponentSet,
    config: IPGConfig | None = None,
    rows: Sequence[int] | None = None,
    units: Sequence[int] | None = None,
    progress: bool = False,
) -> TokenAttribution:
    """Per-token IPG (paper mode) over the rollout ``rows`` (all when None), for the ``units``
    (indices into the hook, e.g. ``result.top(5).indices``; all of ``components`` when None).

    ``components`` is the set IPG scaled (the result's ``components``): a unit's IPG depends on
    which units are scaled along the path with it, so the view scales the same set and then
    keeps the columns of ``units``.

    ``rollouts`` must carry rewards (those IPG was computed on) and ``config`` the IPG settings
    (quadrature rule, q, advantages, baseline, positions): each rollout is scored at the same
    alpha points with the same weights ``w_k A_r / N`` (then divided by the number of prompts),
    so the contributions of every rollout add up to ``ipg(..., rollouts=rollouts).scores``.

    Returns:
        :class:`TokenAttribution` with per-position contributions and activations.

    Example:
        >>> view = token_attribution(policy, rollouts, result.components, rows=[0])
        >>> view.contributions[0].sum(0)  # rollout 0's share of each unit's IPG
    """
    policy = require_policy(policy, "token_attribution")
    config = config or IPGConfig()
    _check_rollouts(rollouts, config)
    rows = list(range(len(rollouts))) if rows is None else [int(r) for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= len(rollouts):
        raise IpgkitError(f"rows must be indices into the {len(rollouts)} rollouts, got {rows}")
    scaled = components.resolved(policy.model)
    columns = unit_columns(scaled, units)
    baseline = _support_baseline(policy, scaled, config, rollouts)
    advantages = rollouts.advantages(config.advantages)
    alphas, quadrature = integration_points(config.method, config.n_steps)
    prompt_ids, completion_ids = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    path_rows = [(r, k) for r in rows for k in range(len(alphas))]
    grads = path_gradients(
        policy,
        scaled,
        [prompt_ids[r] for r, _ in path_rows],
        [completion_ids[r] for r, _ in path_rows],
        torch.tensor([float(alphas[k]) for _, k in path_rows], dtype=torch.float64),
        torch.tensor(
            [
                path_row_weight(quadrature[k], advantages[r], config.n_rollouts)
                for r, k in path_rows
            ],
            dtype=torch.float64,
        ),
        positions=config.positions,
        baseline=baseline,
        internal_batch_size=config.internal_batch_size,
        progress=progress,
        per_position=True,
    )
    steps = len(alphas)
    prompts = len(rollouts.problems)  # IPG's score is the mean over prompts
    contributions = [
        torch.stack(grads.per_position[i * steps : (i + 1) * steps]).sum(0)[:, columns] / prompts
        for i in range(len(rows))
    ]
    return TokenAttribution(
        components=replace(scaled, indices=tuple(scaled.indices[c] for c in columns)),
        rows=rows,
        contributions=contributions,
        activations=[grads.activations[i * steps][:, columns] for i in range(len(rows))],
        tokens=[token_texts(policy, [*prompt_ids[r], *completion_ids[r]]) for r in rows],
        prompt_lengths=[len(prompt_ids[r]) for r in rows],
        rewards=[float(rollouts.rewards[r]) for r in rows],
        advantages=[float(advantages[r]) for r in rows],
    )


def _check_rollouts(rollouts: Rollouts, config: IPGConfig) -> None:
    if rollouts.rewards is None:
        raise IpgkitError("token_attribution needs rollouts with rewards (sample(..., reward=))")
    if rollouts.n != config.n_rollouts:
        raise IpgkitError(
            f"the rollouts have {rollouts.n} per prompt but config.n_rollouts is "
            f"{config.n_rollouts}: pass the IPGConfig the result was computed with"
        )


__all__ = ["TokenAttribution", "token_attribution"]
