"""Quadrature rules over the path parameter alpha (Captum's names; the IPG paper uses the right
Riemann sum with q = 10)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.errors import IpgkitError

IntegrationRule = Literal[
    "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]
INTEGRATION_RULES = (
    "riemann_right",
    "riemann_left",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)


def integration_points(
    method: IntegrationRule, n_steps: int
) -> tuple[Float[Tensor, " n_steps"], Float[Tensor, " n_steps"]]:
    """Nodes alpha_k in [0, 1] and weights w_k with ``sum_k w_k f(alpha_k) ~ integral_0^1 f``.

    Example:
        >>> alphas, weights = integration_points("riemann_right", 4)
        >>> alphas.tolist(), weights.tolist()
        ([0.25, 0.5, 0.75, 1.0], [0.25, 0.25, 0.25, 0.25])
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise IpgkitError(f"n_steps must be a positive integer, got {n_steps!r}")
    steps = torch.arange(n_steps, dtype=torch.float64)
    if method == "riemann_right":
        return (steps + 1) / n_steps, torch.full((n_steps,), 1 / n_steps, dtype=torch.float64)
    if method == "riemann_left":
        return steps / n_steps, torch.full((n_steps,), 1 / n_steps, dtype=torch.float64)
    if method == "riemann_middle":
        return (steps + 0.5) / n_steps, torch.full((n_steps,), 1 / n_steps, dtype=torch.float64)
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise IpgkitError("riemann_trapezoid needs n_steps >= 2")
        weights = torch.full((n_steps,), 1 / (n_steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return steps / (n_steps - 1), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    raise IpgkitError(f"unknown integration method {method!r}; choose one of {INTEGRATION_RULES}")


def path_points(
    method: IntegrationRule, n_steps: int, path: tuple[float, float] = (0.0, 1.0)
) -> tuple[Float[Tensor, " n_steps"], Float[Tensor, " n_steps"]]:
    """:func:`integration_points` moved onto ``path = (start, end)``: nodes
    ``start + (end - start) alpha_k`` and weights ``(end - start) w_k``, so the sum approximates
    the integral from start to end (IPG's (0, 1); amplification's (1, gamma_max)).

    Example:
        >>> alphas, weights = path_points("riemann_right", 2, (1.0, 3.0))
        >>> alphas.tolist(), weights.tolist()
        ([2.0, 3.0], [1.0, 1.0])
    """
    start, end = path
    alphas, weights = integration_points(method, n_steps)
    return start + (end - start) * alphas, (end - start) * weights
