"""Steering: scale component sets by gamma while a block of code runs (sampling, scoring, training).

gamma > 1 enhances, 0 < gamma < 1 dampens, gamma = 0 suppresses, gamma = 1 changes nothing (bit for
bit). It is the same scaling hook IPG uses for its path, installed with TransformerLens's hook
context, which removes only the hooks it added.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet, Positions, scaling_hook
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy, require_policy


@contextlib.contextmanager
def steer(
    policy: Policy,
    components: ComponentSet | Sequence[ComponentSet],
    gamma: float,
    positions: Positions = "all",
    baseline: Float[Tensor, " units"] | float | None = None,
) -> Iterator[Policy]:
    """Scale ``components`` by ``gamma`` inside the ``with`` block.

    Args:
        policy: the policy whose model gets the hooks.
        components: one ComponentSet or several (at different hooks); a set with ``gains``
            moves unit i by ``gamma * gains[i]``.
        gamma: the factor; must be finite and >= 0.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` tokens.
        baseline: h', the point scaling moves towards (zero by default): units become
            ``h' + gamma (h - h')``. A scalar, or one value per unit of a single ComponentSet (IPG
            installs its path points this way).

    Example:
        >>> with steer(policy, result.top(20), gamma=1.5):               # doctest: +SKIP
        ...     print(evaluate(policy, task, limit=200))
    """
    policy = require_policy(policy, "steer")
    if not (isinstance(gamma, int | float) and math.isfinite(gamma) and gamma >= 0):
        raise IpgkitError(f"gamma must be a finite number >= 0, got {gamma!r}")
    sets = [components] if isinstance(components, ComponentSet) else list(components)
    if not sets:
        raise IpgkitError("steer needs at least one ComponentSet")
    if baseline is not None and len(sets) > 1 and torch.as_tensor(baseline).ndim > 0:
        raise IpgkitError("a per-unit baseline applies to one ComponentSet; steer the sets apart")
    hooks = []
    for component_set in sets:
        component_set.validate(policy.model)
        hooks.append(
            (
                component_set.hook_name,
                scaling_hook(
                    component_set, float(gamma), positions, baseline, component_set.gains_tensor()
                ),
            )
        )
    with policy.model.hooks(fwd_hooks=hooks):
        yield policy
