"""ipgkit: mechanistic interpretability of LLM reasoning on TransformerLens models.

Example:
    >>> import ipgkit
    >>> policy = ipgkit.load_model("arith")
    >>> task = ipgkit.tasks.load("arith-word", split="test", n=32)
    >>> rollouts = ipgkit.sample(policy, task.problems, n=8, temperature=0.7,
    ...                          reward=task.correctness)                     # doctest: +SKIP
"""

# isort: off
# first: keeps tqdm.auto's import-time notebook warning out of every output (see progress.py)
from ipgkit import progress  # noqa: F401

# isort: on
from ipgkit import analysis, attribution, experiments, saes, tasks
from ipgkit.attribution import AttributionResult, IPGConfig, ipg, token_attribution
from ipgkit.components import ComponentSet, mlp_neurons, resid_neurons, scaling_hook
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import (
    evaluate,
    evaluation_rollouts,
    evaluation_table,
    paired_comparison,
    pass_at_k,
)
from ipgkit.loading import load_model
from ipgkit.models import Policy
from ipgkit.models.export import save_policy
from ipgkit.rollouts import (
    Rollouts,
    SamplingConfig,
    TokenScores,
    group_advantages,
    iter_scores,
    sample,
    score_completions,
    score_rollouts,
    token_activations,
)
from ipgkit.saes import attach_saes, load_sae, sae_features
from ipgkit.steering import steer

__version__ = "0.1.0"

__all__ = [
    "AttributionResult",
    "ComponentSet",
    "IPGConfig",
    "IpgkitError",
    "Policy",
    "Rollouts",
    "SamplingConfig",
    "TokenScores",
    "analysis",
    "attach_saes",
    "attribution",
    "evaluate",
    "evaluation_rollouts",
    "evaluation_table",
    "experiments",
    "group_advantages",
    "ipg",
    "iter_scores",
    "load_model",
    "load_sae",
    "mlp_neurons",
    "paired_comparison",
    "pass_at_k",
    "resid_neurons",
    "sae_features",
    "saes",
    "sample",
    "save_policy",
    "scaling_hook",
    "score_completions",
    "score_rollouts",
    "steer",
    "tasks",
    "token_activations",
    "token_attribution",
]
