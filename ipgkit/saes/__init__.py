"""SAE features: train TopK SAEs with sae-lens on the model's own reasoning traces (``train.py``),
splice them into the model with the error term kept so every latent is a component
(``splice.py``), measure how good they are (``quality.py``), and build the SAEs shipped in
``saes/`` (``shipped.py``).

Example:
    >>> policy = ipgkit.load_model("arith", saes=[2])                  # doctest: +SKIP
    >>> features = sae_features(policy, layer=2)                        # doctest: +SKIP
    >>> result = ipgkit.ipg(policy, problems, features, task.correctness)  # doctest: +SKIP
"""

from .quality import EVALUATION_SOURCES, evaluate_sae, reconstruction_metrics, spliced_accuracy
from .shipped import metrics_markdown, train_saes
from .splice import (
    FEATURE_HOOK,
    SAES_DIR,
    as_sae_policy,
    attach_saes,
    check_sae,
    decoder_directions,
    feature_hook,
    hooks_upstream_of_saes,
    load_sae,
    sae_features,
    sae_site,
    save_sae,
    shipped_sae_dir,
    spliced_saes,
)
from .train import TRACE_SOURCES, SAETrainingConfig, reasoning_traces, train_sae

__all__ = [
    "EVALUATION_SOURCES",
    "FEATURE_HOOK",
    "SAES_DIR",
    "TRACE_SOURCES",
    "SAETrainingConfig",
    "as_sae_policy",
    "attach_saes",
    "check_sae",
    "decoder_directions",
    "evaluate_sae",
    "feature_hook",
    "hooks_upstream_of_saes",
    "load_sae",
    "metrics_markdown",
    "reasoning_traces",
    "reconstruction_metrics",
    "sae_features",
    "sae_site",
    "save_sae",
    "shipped_sae_dir",
    "spliced_accuracy",
    "spliced_saes",
    "train_sae",
    "train_saes",
]
