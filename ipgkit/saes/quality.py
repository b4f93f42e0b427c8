"""How good an SAE is: reconstruction (FVU, L0, dead latents) and accuracy with only the SAE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ipgkit.components import hook_layer
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import evaluation_rollouts
from ipgkit.models.policy import Policy
from ipgkit.rollouts import iter_activations
from ipgkit.stats import mean_interval
from ipgkit.tasks import load as load_task

from .splice import attach_saes, check_sae, spliced_saes
from .train import TRACE_SOURCES, reasoning_traces

# --- how good an SAE is ---------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_metrics(
    policy: Policy, sae, traces: Sequence[Sequence[int]], chunk_size: int = 64
) -> dict[str, float]:
    """Fraction of variance unexplained, L0 and dead-latent fraction of ``sae`` on ``traces``
    (held-out prompt + completion ids), over the positions it was trained on (no BOS, no padding).

    ``fvu = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``; ``l0`` = mean active latents per token;
    ``dead_fraction`` = latents that never fire on these tokens.
    """
    check_sae(policy, sae)
    site = sae.cfg.metadata.hook_name
    if site in spliced_saes(policy):
        site = f"{site}.hook_sae_input"
    bos = policy.tokenizer.bos_token_id
    squared_error = l0 = 0.0
    count = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    sums = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    squares = torch.zeros((), dtype=torch.float64)
    prompts, completions = [list(t[:1]) for t in traces], [list(t[1:]) for t in traces]
    for chunk in iter_activations(policy, site, prompts, completions, "all", chunk_size):
        keep = chunk.token_ids != bos if bos is not None else slice(None)
        x = chunk.activations[keep].to(sae.dtype)
        latents = sae.encode(x)
        reconstruction = sae.decode(latents)
        squared_error += float((x - reconstruction).double().pow(2).sum())
        sums += x.double().sum(0)
        squares += x.double().pow(2).sum()
        count += len(x)
        active = latents > 0
        l0 += float(active.sum())
        fired |= active.any(0).cpu()
    if count == 0:
        raise IpgkitError("no tokens to measure the SAE on")
    total = float(squares - sums.pow(2).sum() / count)
    return {
        "fvu": squared_error / total,
        "l0": l0 / count,
        "dead_fraction": float((~fired).double().mean()),
        "tokens": count,
    }


def spliced_accuracy(policy: Policy, sae, tasks: Sequence, batch_size: int = 64) -> dict[str, Any]:
    """Greedy accuracy with the SAE *replacing* the stream (no error term) against the plain model,
    on the same problems: the cost of reading the model through the SAE alone.

    Returns plain and spliced accuracy, their paired difference and its 95% interval.
    """

    if spliced_saes(policy):
        raise IpgkitError(
            "spliced_accuracy compares with the plain model: pass a policy without SAEs"
        )
    spliced = attach_saes(policy, [sae], use_error_term=False)  # a converted copy of the model
    plain, replaced = [], []
    for task in tasks:
        for scores, which in ((plain, policy), (replaced, spliced)):
            greedy, _ = evaluation_rollouts(which, task, batch_size=batch_size, progress=False)
            scores.extend(greedy.rewards.tolist())
    differences = [b - a for a, b in zip(plain, replaced, strict=True)]
    change, low, high = mean_interval(differences)
    return {
        "accuracy": sum(plain) / len(plain),
        "accuracy_spliced": sum(replaced) / len(replaced),
        "accuracy_change": change,
        "change_ci": [low, high],
        "problems": len(plain),
    }


EVALUATION_SOURCES = tuple((name, split.replace("train", "test")) for name, split in TRACE_SOURCES)


def evaluate_sae(
    policy: Policy, sae, n_traces: int = 800, n_problems: int = 200, seed: int = 1000
) -> dict[str, Any]:
    """The numbers saes/README.md reports for ``sae``: :func:`reconstruction_metrics` on
    ``n_traces`` held-out traces (test splits) and :func:`spliced_accuracy` on ``n_problems`` test
    problems of each arithmetic family."""
    traces = reasoning_traces(policy, EVALUATION_SOURCES, n_traces, seed=seed)
    tasks = [load_task(name, split="test", n=n_problems) for name in ("arith-word", "arith-chain")]
    return {
        "layer": hook_layer(sae.cfg.metadata.hook_name, policy.model.cfg.n_layers),
        "k": sae.cfg.k,
        "d_sae": sae.cfg.d_sae,
        **reconstruction_metrics(policy, sae, traces),
        **spliced_accuracy(policy, sae, tasks),
    }
