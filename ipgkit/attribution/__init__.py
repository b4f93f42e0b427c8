"""Attribution of reasoning outcomes to units: IPG and the IPG paper's baselines, one result type."""

from ipgkit.attribution.ipg import (
    INTEGRATION_RULES,
    IPGConfig,
    PathGradients,
    integration_points,
    ipg,
    path_gradients,
    scaled_sequence_logprobs,
)
from ipgkit.attribution.result import AttributionResult

__all__ = [
    "INTEGRATION_RULES",
    "AttributionResult",
    "IPGConfig",
    "PathGradients",
    "integration_points",
    "ipg",
    "path_gradients",
    "scaled_sequence_logprobs",
]
