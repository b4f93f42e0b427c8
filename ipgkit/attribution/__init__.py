"""Attribution of reasoning outcomes to units: IPG and the IPG paper's baselines, one result type.

Example:
    >>> result = ipgkit.ipg(policy, task.problems[:50], ipgkit.resid_neurons(2),
    ...                     task.correctness, n_rollouts=5, n_steps=10)        # doctest: +SKIP
    >>> activation = baselines.activation_magnitude(policy, rollouts, ipgkit.resid_neurons(2))
"""

from ipgkit.attribution import baselines
from ipgkit.attribution.baselines import (
    activation_magnitude,
    control_vector,
    random_baseline,
    random_baselines,
    reason_score,
    reasoning_neurons,
)
from ipgkit.attribution.gradient_baselines import integrated_gradients, policy_gradient
from ipgkit.attribution.ipg import (
    INTEGRATION_RULES,
    IPGConfig,
    PathGradients,
    PathRows,
    amplification_ipg,
    integration_points,
    ipg,
    path_gradients,
    scaled_sequence_logprobs,
)
from ipgkit.attribution.quadrature import path_points
from ipgkit.attribution.result import AttributionResult
from ipgkit.attribution.tokens import TokenAttribution, token_attribution

__all__ = [
    "INTEGRATION_RULES",
    "AttributionResult",
    "IPGConfig",
    "PathGradients",
    "PathRows",
    "TokenAttribution",
    "activation_magnitude",
    "amplification_ipg",
    "baselines",
    "control_vector",
    "integrated_gradients",
    "integration_points",
    "ipg",
    "path_gradients",
    "path_points",
    "policy_gradient",
    "random_baseline",
    "random_baselines",
    "reason_score",
    "reasoning_neurons",
    "scaled_sequence_logprobs",
    "token_attribution",
]
