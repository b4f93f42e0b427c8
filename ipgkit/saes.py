"""SAE features: train TopK SAEs with sae-lens on the model's own reasoning traces, load them, and
splice them into the model with the error term kept, so every latent is a component.

Splicing follows SAELens: the model becomes a ``HookedSAETransformer`` and the SAE sits at its hook
(``blocks.L.hook_resid_post``), which then exposes ``blocks.L.hook_resid_post.hook_sae_acts_post``
(the latents, [batch, pos, d_sae]). With the error term, the SAE's output is
``decode(f) + (x - decode(encode(x)))``: the model computes what it computed before, up to one
float rounding, and scaling latent i by gamma adds ``(gamma - 1) * f_i * W_dec[i]`` to the stream.
Feature IPG and feature steering are then the same :class:`ComponentSet` and scaling hook as for
neurons (kind ``"sae"``).

Caveat, from sae-lens: the error term is computed under ``no_grad``. Gradients with respect to the
latents are exact (everything downstream of them is differentiable), but a hook *upstream* of a
spliced SAE only receives gradient through the SAE's reconstruction path. Attribute neurons on the
plain model (or with SAEs spliced only at or below their layer); ipgkit warns when it sees this.

Example:
    >>> policy = ipgkit.load_model("arith", saes=[2])                  # doctest: +SKIP
    >>> features = sae_features(policy, layer=2)                        # doctest: +SKIP
    >>> result = ipgkit.ipg(policy, problems, features, task.correctness)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet, resolve_hook, site_width
from ipgkit.errors import DataFormatError, IpgkitError
from ipgkit.io import atomic_write_text
from ipgkit.models.policy import Policy
from ipgkit.rollouts import iter_activations, sample
from ipgkit.tasks import load as load_task

#: where the SAEs shipped for the embedded model live (``saes/<model>-L<layer>`` in sae-lens format)
SAES_DIR = Path(__file__).resolve().parent.parent / "saes"
FEATURE_HOOK = "hook_sae_acts_post"
_SITE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_LAYER = re.compile(r"^blocks\.(\d+)\.")

#: the traces the shipped SAEs were trained on: both families, standard and hard difficulty
TRACE_SOURCES = (
    ("arith-word", "train"),
    ("arith-chain", "train"),
    ("arith-word", "hard-train"),
    ("arith-chain", "hard-train"),
)


def sae_site(layer: int) -> str:
    """The hook an SAE of ``layer`` reads and replaces: ``blocks.{layer}.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


def feature_hook(layer: int) -> str:
    """The latents' hook once spliced: ``blocks.{layer}.hook_resid_post.hook_sae_acts_post``."""
    return f"{sae_site(layer)}.{FEATURE_HOOK}"


# --- training -----------------------------------------------------------------------------------


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
        >>> sae = train_sae(policy, SAETrainingConfig(layer=2), out_dir="saes/arith-L2")  # doctest: +SKIP
    """
    from datasets import Dataset
    from sae_lens import (
        SAE,
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )

    config = config or SAETrainingConfig()
    model = policy.model
    if config.layer >= model.cfg.n_layers:
        raise IpgkitError(
            f"layer {config.layer} is out of range: {policy.name} has layers 0..{model.cfg.n_layers - 1}"
        )
    if traces is None:
        traces = reasoning_traces(
            policy,
            config.sources,
            config.n_traces,
            config.temperature,
            config.top_p,
            config.max_new_tokens,
            config.seed,
            progress,
        )
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
        runner_config = LanguageModelSAERunnerConfig(
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
            n_batches_in_buffer=max(
                8, 2 * math.ceil(config.train_batch_size_tokens / context_size)
            ),
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


def save_sae(sae, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save ``sae`` in sae-lens format (``cfg.json`` + ``sae_weights.safetensors``) plus
    ``ipgkit_training.json`` holding ``extra``; the folder appears whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        sae.save_model(str(staging))
        if extra is not None:
            (staging / "ipgkit_training.json").write_text(json.dumps(extra, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# --- loading and splicing -----------------------------------------------------------------------


def shipped_sae_dir(model_name: str, layer: int) -> Path:
    """``saes/<model>-L<layer>``: where the SAE shipped for ``model_name`` at ``layer`` lives."""
    return SAES_DIR / f"{model_name}-L{int(layer)}"


def load_sae(source, policy: Policy | None = None, device: str | None = None):
    """Load an SAE: a layer number (the SAE shipped for ``policy``), a directory in sae-lens format,
    or an SAE object (returned as is). With ``policy`` it is checked against the model.

    Example:
        >>> sae = load_sae(2, policy)                                     # doctest: +SKIP
        >>> sae.cfg.metadata.hook_name, sae.cfg.d_sae                     # doctest: +SKIP
        ('blocks.2.hook_resid_post', 2048)
    """
    from sae_lens import SAE

    if isinstance(source, SAE):
        sae = source
    else:
        if isinstance(source, int):
            if policy is None:
                raise IpgkitError("loading a shipped SAE by layer needs the policy it belongs to")
            path = shipped_sae_dir(policy.name, source)
            if not (path / "cfg.json").exists():
                available = sorted(
                    p.name for p in SAES_DIR.glob("*-L*") if (p / "cfg.json").exists()
                )
                raise IpgkitError(
                    f"no shipped SAE for model {policy.name!r} at layer {source} ({path}); "
                    f"available: {available or 'none'}; train one with `ipgkit train-sae`"
                )
        else:
            path = Path(source)
            if not (path / "cfg.json").exists():
                raise IpgkitError(f"{path} is not an SAE directory (no cfg.json); see load_sae")
        sae = _load_sae_folder(path, device or "cpu")
    if policy is not None:
        check_sae(policy, sae)
    return sae


def _load_sae_folder(path: Path, device: str):
    """sae-lens's loader, with its errors on a damaged folder turned into one that names it."""
    from sae_lens import SAE

    try:
        json.loads((path / "cfg.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path / 'cfg.json'} is not valid JSON ({error})") from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This SAE has non-empty")
            return SAE.load_from_disk(str(path), device=device)
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as error:
        raise DataFormatError(
            f"{path} is not an SAE folder sae-lens can load ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); check cfg.json and "
            "sae_weights.safetensors"
        ) from None


def check_sae(policy: Policy, sae) -> None:
    """Raise a clear error when ``sae`` cannot read ``policy``'s activations: its hook is missing
    from the model, or its d_in is not the hook's width. Warn when it was trained on another
    model of the same width."""
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise IpgkitError("the SAE has no hook name (cfg.metadata.hook_name is empty)")
    model = policy.model
    sites = getattr(model, "acts_to_saes", {})
    if hook_name not in sites:
        resolve_hook(model, hook_name)
    width = site_width(model, hook_name)
    if sae.cfg.d_in != width:
        raise IpgkitError(
            f"SAE for {hook_name} has d_in = {sae.cfg.d_in}, but {policy.name!r} has width {width} "
            "there: it was trained on another model"
        )
    trained_on = getattr(sae.cfg.metadata, "model_name", None)
    if trained_on and trained_on != policy.name:
        warnings.warn(
            f"SAE was trained on {trained_on!r}, attached to {policy.name!r} (same width {width})",
            stacklevel=3,
        )


def as_sae_policy(policy: Policy) -> Policy:
    """The same policy on a ``HookedSAETransformer`` (weights copied), ready for ``add_sae``; a
    policy that already is one is returned unchanged."""
    from sae_lens import HookedSAETransformer

    if isinstance(policy.model, HookedSAETransformer):
        return policy
    model = policy.model
    cfg = model.cfg
    # a config that names a tokenizer would make TransformerLens fetch it from the hub
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None
    try:
        sae_model = HookedSAETransformer(cfg)
    finally:
        cfg.tokenizer_name = tokenizer_name
    sae_model.load_state_dict(model.state_dict())
    sae_model.to(next(model.parameters()).device, print_details=False)
    sae_model.train(model.training)
    return replace(policy, model=sae_model)


def attach_saes(policy: Policy, saes: Sequence, use_error_term: bool = True) -> Policy:
    """Splice SAEs into ``policy``'s model at their hooks, the error term kept by default.

    Args:
        policy: a policy on a HookedTransformer (converted) or a HookedSAETransformer (mutated).
        saes: SAE objects, SAE directories, or layer numbers of shipped SAEs.
        use_error_term: keep the reconstruction error, so the spliced model computes what the
            plain one does; False replaces the stream by the SAE's reconstruction.

    Returns:
        The policy whose model has the SAEs (a new Policy when the model had to be converted).

    Example:
        >>> policy = attach_saes(ipgkit.load_model("arith"), [2])         # doctest: +SKIP
        >>> list(policy.model.acts_to_saes)                               # doctest: +SKIP
        ['blocks.2.hook_resid_post']
    """
    policy = as_sae_policy(policy)
    loaded = [load_sae(sae, policy) for sae in saes]
    sites = [sae.cfg.metadata.hook_name for sae in loaded]
    if len(set(sites)) != len(sites):
        raise IpgkitError(f"two SAEs for the same hook: {sites}")
    taken = sorted(set(sites) & set(spliced_saes(policy)))
    if taken:
        raise IpgkitError(
            f"an SAE is already spliced at {taken}; remove it first with policy.model.reset_saes()"
        )
    for sae in loaded:
        sae.to(device=next(policy.model.parameters()).device, dtype=policy.model.cfg.dtype)
        policy.model.add_sae(sae, use_error_term=use_error_term)
    return policy


def spliced_saes(policy: Policy) -> dict[str, Any]:
    """Hook name -> SAE for every SAE spliced into ``policy``'s model."""
    return dict(getattr(policy.model, "acts_to_saes", {}))


def sae_features(
    policy: Policy,
    layer: int | None = None,
    indices: Sequence[int] | None = None,
    hook_name: str | None = None,
) -> ComponentSet:
    """A :class:`ComponentSet` over latents of the SAE spliced at ``layer`` (or at ``hook_name``,
    the site the SAE reads); every latent when ``indices`` is None.

    Example:
        >>> features = sae_features(policy, layer=2)                      # doctest: +SKIP
        >>> features.hook_name
        'blocks.2.hook_resid_post.hook_sae_acts_post'
    """
    sites = spliced_saes(policy)
    if (layer is None) == (hook_name is None):
        raise IpgkitError("give exactly one of layer= or hook_name= to sae_features")
    site = sae_site(layer) if layer is not None else hook_name
    if site not in sites:
        raise IpgkitError(
            f"no SAE is spliced at {site}; spliced: {sorted(sites) or 'none'} "
            "(load_model(name, saes=[layer]) or attach_saes(policy, [...]) splices one)"
        )
    components = ComponentSet(
        f"{site}.{FEATURE_HOOK}", None if indices is None else tuple(indices), kind="sae"
    )
    return components.validate(policy.model)


def decoder_directions(policy: Policy, components: ComponentSet) -> Float[Tensor, "n d_model"]:
    """What each unit writes into the residual stream, per unit of activation: SAE decoder rows,
    MLP output weights, residual basis vectors or direction rows (for logit-lens style reads)."""
    model = policy.model
    components = components.resolved(model)
    index = list(components.indices)
    if components.kind == "sae":
        site = components.hook_name.rsplit(".hook_sae_", 1)[0]
        return spliced_saes(policy)[site].W_dec.detach()[index]
    if components.kind == "mlp":
        layer = int(_LAYER.match(components.hook_name).group(1))
        return model.blocks[layer].mlp.W_out.detach()[index]
    if components.kind == "direction":
        return components.basis()
    return torch.eye(model.cfg.d_model, dtype=model.cfg.dtype)[index]


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
    from ipgkit.evaluation import evaluation_rollouts
    from ipgkit.stats import mean_interval

    if spliced_saes(policy):
        raise IpgkitError(
            "spliced_accuracy compares with the plain model: pass a policy without SAEs"
        )
    spliced = attach_saes(policy, [sae], use_error_term=False)  # a converted copy of the model
    plain, replaced = [], []
    for task in tasks:
        for scores, which in ((plain, policy), (replaced, spliced)):
            greedy, _ = evaluation_rollouts(which, task, batch_size=batch_size)
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
        "layer": int(_LAYER.match(sae.cfg.metadata.hook_name).group(1)),
        "k": sae.cfg.k,
        "d_sae": sae.cfg.d_sae,
        **reconstruction_metrics(policy, sae, traces),
        **spliced_accuracy(policy, sae, tasks),
    }


def train_saes(
    policy: Policy,
    layers: Sequence[int],
    out_dir: str | Path = SAES_DIR,
    config: SAETrainingConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (and evaluate) one SAE per layer into ``out_dir/<model>-L<layer>``, as ``ipgkit
    train-sae`` does. Layers whose folder already holds an SAE are skipped unless ``overwrite``,
    so an interrupted run resumes with the next layer. The traces are sampled once.

    Returns:
        One row of :func:`evaluate_sae` metrics per layer (also saved as each folder's
        ``metrics.json``).
    """
    config = config or SAETrainingConfig()
    out_dir = Path(out_dir)
    traces = None
    rows = []
    for layer in layers:
        target = out_dir / f"{policy.name}-L{layer}"
        if (target / "cfg.json").exists() and (target / "metrics.json").exists() and not overwrite:
            rows.append(json.loads((target / "metrics.json").read_text()))
            continue
        if traces is None:
            traces = reasoning_traces(
                policy,
                config.sources,
                config.n_traces,
                config.temperature,
                config.top_p,
                config.max_new_tokens,
                config.seed,
                progress,
            )
        started = time.perf_counter()
        sae = train_sae(policy, replace(config, layer=layer), traces, target, progress)
        metrics = {**evaluate_sae(policy, sae), "train_seconds": time.perf_counter() - started}
        atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2))
        rows.append(metrics)
    return pd.DataFrame(rows)


def metrics_markdown(table: pd.DataFrame) -> str:
    """The saes/README.md table from :func:`train_saes`'s rows."""
    lines = [
        "| layer | d_sae | k | FVU | L0 | dead latents | accuracy plain -> SAE only (change, 95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        low, high = row["change_ci"]
        lines.append(
            f"| {row['layer']} | {row['d_sae']} | {row['k']} | {row['fvu']:.3f} | {row['l0']:.1f} "
            f"| {row['dead_fraction']:.1%} | {row['accuracy']:.3f} -> {row['accuracy_spliced']:.3f} "
            f"({row['accuracy_change']:+.3f}, [{low:+.3f}, {high:+.3f}]) |"
        )
    return "\n".join(lines)


def hooks_upstream_of_saes(policy: Policy, hook_name: str) -> list[str]:
    """Sites of spliced SAEs (with error term) whose input depends on ``hook_name``: gradients
    reaching ``hook_name`` through them miss the error term (computed under no_grad)."""
    own_site = hook_name.rsplit(".hook_sae_", 1)[0] if ".hook_sae_" in hook_name else None
    if own_site is not None and not hook_name.endswith(".hook_sae_input"):
        hook_layer = _layer_of(policy, own_site)
    else:
        hook_layer = _layer_of(policy, hook_name)
    wrappers = getattr(policy.model, "_acts_to_saes", {})
    upstream = []
    for site, wrapper in wrappers.items():
        if site == own_site and not hook_name.endswith(".hook_sae_input"):
            continue
        if wrapper.use_error_term and hook_layer <= _layer_of(policy, site):
            upstream.append(site)
    return upstream


def _layer_of(policy: Policy, hook_name: str) -> float:
    match = _LAYER.match(hook_name)
    if match:
        return int(match.group(1))
    if hook_name.startswith(("hook_embed", "hook_pos_embed")):
        return -1
    return policy.model.cfg.n_layers


__all__ = [
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
