"""Training TopK SAEs with sae-lens on the model's own reasoning traces."""

from __future__ import annotations

import contextlib
import math
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample
from ipgkit.tasks import load as load_task

from .splice import sae_site, save_sae

#: the traces the shipped SAEs were trained on: both families, standard and hard difficulty
TRACE_SOURCES = (
    ("arith-word", "train"),
    ("arith-chain", "train"),
    ("arith-word", "hard-train"),
    ("arith-chain", "hard-train"),
)


@dataclass(frozen=True)
class SAETrainingConfig:
    """How ``train_sae`` trains a TopK SAE on a residual stream (defaults: the shipped SAEs).

    Attributes:
        layer: residual stream after this block (``blocks.L.hook_resid_post``).
        k: active latents per token: 32, the IPG paper's value. A 128-dimensional stream invites a
            smaller k, but on the embedded model k = 8 and 16 reconstruct worse, leave more
            latents dead, and the SAE alone keeps far less of the model's accuracy (saes/README.md
            has the sweep).
        expansion: d_sae / d_model (16, as in the paper).
        training_tokens: activations seen in training (the traces are reused across epochs).
        n_traces: sampled chains of thought, spread evenly over ``sources``.
        sources: (task, split) pairs the traces come from.
        temperature, top_p: the sampling settings of the traces (IPG's: 0.6 and 0.8), so the SAE
            sees the distribution attribution scores.
        max_new_tokens: completion budget of a trace.
        lr: Adam learning rate (warm-up, then sae-lens's constant schedule with a final decay).
        lr_warm_up_steps: steps of linear warm-up.
        train_batch_size_tokens: activations per optimiser step.
        dead_feature_window: steps without firing after which a latent counts as dead and the
            TopK auxiliary loss starts pulling it back (sae-lens's default, 1000, is longer than
            this whole run).
        seed: seeds the trace sampler and sae-lens.
    """

    layer: int = 2
    k: int = 32
    expansion: int = 16
    training_tokens: int = 3_000_000
    n_traces: int = 8000
    sources: tuple[tuple[str, str], ...] = TRACE_SOURCES
    temperature: float = 0.6
    top_p: float = 0.8
    max_new_tokens: int = 192
    lr: float = 1e-3
    lr_warm_up_steps: int = 50
    train_batch_size_tokens: int = 4096
    dead_feature_window: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "expansion", "training_tokens", "n_traces", "train_batch_size_tokens"):
            if getattr(self, name) < 1:
                raise IpgkitError(
                    f"SAETrainingConfig.{name} must be >= 1, got {getattr(self, name)}"
                )
        if self.layer < 0:
            raise IpgkitError(f"SAETrainingConfig.layer must be >= 0, got {self.layer}")
        if not self.sources:
            raise IpgkitError("SAETrainingConfig.sources needs at least one (task, split) pair")


def reasoning_traces(
    policy: Policy,
    sources: Sequence[tuple[str, str]] = TRACE_SOURCES,
    n_traces: int = 8000,
    temperature: float = 0.6,
    top_p: float = 0.8,
    max_new_tokens: int = 192,
    seed: int = 0,
    progress: bool = False,
) -> list[list[int]]:
    """The model's own chains of thought: prompt + completion token ids (BOS included), one per
    problem, ``n_traces`` spread evenly over ``sources`` (generated arithmetic tasks).

    Example:
        >>> traces = reasoning_traces(policy, n_traces=400)               # doctest: +SKIP
        >>> policy.tokenizer.decode(traces[0])                             # doctest: +SKIP
        '<bos>Q: Mia has 82 pens. ...'
    """
    per_source = math.ceil(n_traces / len(sources))
    traces: list[list[int]] = []
    for index, (name, split) in enumerate(sources):
        task = load_task(name, split=split, n=per_source, seed=seed + index)
        rollouts = sample(
            policy,
            task.problems,
            n=1,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed + index,
            batch_size=128,
            progress=progress,
        )
        for prompt, completion in zip(
            rollouts.row_prompt_ids(), rollouts.row_completion_ids(), strict=True
        ):
            traces.append([*prompt, *completion])
    return traces[:n_traces]


def training_traces(policy: Policy, config: SAETrainingConfig, progress: bool = True):
    """The traces ``config`` trains on: :func:`reasoning_traces` with its sources and settings."""
    return reasoning_traces(
        policy,
        config.sources,
        config.n_traces,
        config.temperature,
        config.top_p,
        config.max_new_tokens,
        config.seed,
        progress,
    )


def train_sae(
    policy: Policy,
    config: SAETrainingConfig | None = None,
    traces: Sequence[Sequence[int]] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
):
    """Train a TopK SAE on ``blocks.{layer}.hook_resid_post`` with sae-lens's training runner.

    The runner reads activations of ``policy.model`` on ``traces`` (sampled with
    :func:`reasoning_traces` when not given), right-padded to one length; padding and BOS
    positions are excluded from training (BOS is an attention sink whose outsized norm would
    dominate the loss; the error term carries it exactly anyway).

    Args:
        policy: the model whose stream is decomposed (a plain HookedTransformer).
        config: the settings; :class:`SAETrainingConfig` defaults reproduce ``saes/``.
        traces: token ids to train on; sampled from the model when None.
        out_dir: where to save the SAE in sae-lens format (``SAE.load_from_disk`` reads it), with
            ``ipgkit_training.json`` describing the run. Written atomically (a temporary folder
            renamed at the end).

    Returns:
        The inference ``TopKSAE`` (decoder rows of unit norm, hook in ``cfg.metadata.hook_name``).

    Example:
        >>> sae = train_sae(policy, SAETrainingConfig(layer=2), out_dir="saes/arith-L2")
        ... # doctest: +SKIP
    """
    from datasets import Dataset
    from sae_lens import SAE, LanguageModelSAETrainingRunner

    config = config or SAETrainingConfig()
    model = policy.model
    if config.layer >= model.cfg.n_layers:
        raise IpgkitError(
            f"layer {config.layer} is out of range: {policy.name} has layers "
            f"0..{model.cfg.n_layers - 1}"
        )
    if traces is None:
        traces = training_traces(policy, config, progress)
    if not traces:
        raise IpgkitError("no traces to train the SAE on")
    context_size = max(len(t) for t in traces)
    if context_size > model.cfg.n_ctx:
        raise IpgkitError(f"a trace of {context_size} tokens exceeds n_ctx = {model.cfg.n_ctx}")
    pad = policy.pad_token_id
    rows = [[*map(int, t), *[pad] * (context_size - len(t))] for t in traces]
    excluded = [pad] + (
        [policy.tokenizer.bos_token_id] if policy.tokenizer.bos_token_id is not None else []
    )
    steps = config.training_tokens // config.train_batch_size_tokens
    with tempfile.TemporaryDirectory(prefix="ipgkit-sae-") as scratch:
        runner_config = _runner_config(
            policy, config, context_size, excluded, steps, scratch, progress
        )
        with _quiet_sae_lens():
            LanguageModelSAETrainingRunner(
                runner_config,
                override_dataset=Dataset.from_dict({"tokens": rows}),
                override_model=model,
            ).run()
            sae = SAE.load_from_disk(Path(scratch) / "runner", device="cpu")
    sae = _plain_decoder(sae)
    sae.cfg.metadata.model_name = policy.name
    sae.cfg.metadata.context_size = context_size
    if out_dir is not None:
        save_sae(
            sae,
            out_dir,
            {"config": asdict(config), "n_traces": len(traces), "context_size": context_size},
        )
    return sae


def _runner_config(policy, config, context_size, excluded, steps, scratch, progress):
    """sae-lens's training-runner settings for a TopK SAE on ``config.layer``'s residual stream."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig

    model = policy.model
    return LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=model.cfg.d_model,
            d_sae=config.expansion * model.cfg.d_model,
            k=config.k,
            dtype="float32",
        ),
        model_name=policy.name,
        hook_name=sae_site(config.layer),
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        prepend_bos=False,
        training_tokens=config.training_tokens,
        train_batch_size_tokens=config.train_batch_size_tokens,
        store_batch_size_prompts=64,
        # the mixing buffer must hold at least one training batch (sae-lens checks it)
        n_batches_in_buffer=max(8, 2 * math.ceil(config.train_batch_size_tokens / context_size)),
        device="cpu",
        lr=config.lr,
        lr_warm_up_steps=config.lr_warm_up_steps,
        lr_decay_steps=steps // 5,
        dead_feature_window=config.dead_feature_window,
        feature_sampling_window=2 * config.dead_feature_window,
        exclude_special_tokens=excluded,
        seed=config.seed,
        verbose=progress,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(Path(scratch) / "runner"),
        checkpoint_path=str(Path(scratch) / "checkpoints"),
        model_from_pretrained_kwargs={},
    )


def _plain_decoder(sae):
    """sae-lens saves TopK SAEs with unit-norm decoder rows and ``rescale_acts_by_decoder_norm``;
    with unit norms the rescaling multiplies by 1, so turn it off: decode is then the plain
    ``f @ W_dec + b_dec`` whose steering effect is ``(gamma - 1) f_i W_dec[i]``."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        norms = sae.W_dec.detach().norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
            raise IpgkitError("expected unit-norm decoder rows from sae-lens's TopK export")
        with torch.no_grad():
            sae.W_dec.div_(norms[:, None])
        sae.cfg.rescale_acts_by_decoder_norm = False
    return sae


@contextlib.contextmanager
def _quiet_sae_lens() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in (
            "You just passed in",
            "All samples in the training dataset",
            "The training dataset contains fewer samples",
            "pretokenized dataset has context_size",
            "To copy construct",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield
