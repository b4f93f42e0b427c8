"""Integrated Policy Gradient (arXiv 2602.02313): attribute an outcome to units at one hook.

For units i at a hook with activation h (every position), baseline h' and the path
h~(alpha) = h' + alpha (h - h'):

    IPG(i; x) = sum_t (h_ti - h'_ti) * integral_0^1 E_tau[ d/dh~_ti sum_s log pi(a_s | s_s) A(tau) ] d alpha

averaged over prompts x. The integral is a quadrature rule over alpha (Captum's names; the paper's
right Riemann sum with q = 10 by default). Every (rollout, alpha) pair is one row of a batch: the
scaling hook takes one alpha per row, so all alpha points and rollouts share forward/backward passes,
``internal_batch_size`` rows at a time, and one backward yields the gradient for every unit at the
hook. The backward stops at the hook (the scaled activation is a leaf) and computes no parameter
gradients.

:func:`path_gradients` is the engine: rows of (prompt, completion, alpha, weight) in, per-row
contributions ``(h - h') . d(weight * sum_s log pi)/dh~`` out. :func:`ipg` builds the rows from
rollouts (``mode="paper"``: sampled once from the unmodified model, re-scored at every alpha;
``mode="on_path"``: sampled afresh under each alpha's scaled model) and the raw-policy-gradient and
integrated-gradients baselines build theirs from the same engine.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from ipgkit import distributed
from ipgkit.components import ComponentSet, scaling_hook
from ipgkit.errors import IpgkitError, ZeroSignalWarning, no_signal_advice
from ipgkit.io import atomic_torch_save, load_torch_state
from ipgkit.memory import MemoryBudget, as_budget, gradient_block
from ipgkit.models.policy import Policy, require_policy
from ipgkit.rollouts import (
    AdvantageMode,
    Rollouts,
    iter_scores,
    mean_activations,
    position_mask,
    sample,
)
from ipgkit.saes import hooks_upstream_of_saes
from ipgkit.tasks.base import Problem, RewardFunction

from .result import AttributionResult

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
PathPositions = Literal["all", "generated"]


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


# --- the engine ---------------------------------------------------------------------------------


@dataclass
class PathGradients:
    """What :func:`path_gradients` returns, one row per input row.

    Attributes:
        contributions: [rows, units] ``sum_t (h - h')_ti * d(weight * sum_s log pi)/dh~_ti``.
        sequence_logprobs: [rows] ``sum_s log pi(a_s | s_s)`` under the row's scaled model.
        done: [rows] which rows are computed (all of them unless the run was interrupted).
        rows_per_second: scoring throughput of this call, for logs and benchmarks.
    """

    contributions: Float[Tensor, "rows units"]
    sequence_logprobs: Float[Tensor, " rows"]
    done: Bool[Tensor, " rows"]
    rows_per_second: float = 0.0


@contextlib.contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Switch off parameter gradients for the block (attribution needs activation gradients only)."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def packed_chunks(lengths: Sequence[int], internal_batch_size: int) -> list[list[int]]:
    """Row chunks of at most ``internal_batch_size``, rows sorted by length so chunks pad little."""
    if internal_batch_size < 1:
        raise IpgkitError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    return [order[i : i + internal_batch_size] for i in range(0, len(order), internal_batch_size)]


_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_IN_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def path_site(model, hook_name: str) -> tuple[str, int | None]:
    """Where to hook the path and from which block rows must run separately.

    Everything below the hook is the same at every alpha, so rows of the same rollout share it.
    ``blocks.L.hook_resid_post`` is the very tensor that enters block L+1 (``hook_resid_pre``), so
    it is hooked there and blocks 0..L are shared; any other hook inside block L shares blocks
    0..L-1. Hooks outside the blocks share nothing.
    """
    resid_post = _RESID_POST.match(hook_name)
    if resid_post and int(resid_post.group(1)) + 1 < model.cfg.n_layers:
        following = int(resid_post.group(1)) + 1
        return f"blocks.{following}.hook_resid_pre", following
    in_block = _IN_BLOCK.match(hook_name)
    return hook_name, (int(in_block.group(1)) if in_block else None)


def path_gradients(
    policy: Policy,
    components: ComponentSet,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    alphas: Float[Tensor, " rows"],
    weights: Float[Tensor, " rows"],
    positions: PathPositions = "all",
    baseline: Float[Tensor, " units"] | float | None = None,
    internal_batch_size: int = 32,
    chunks: Sequence[Sequence[int]] | None = None,
    progress: bool = False,
    share_prefix: bool = True,
    resume_from: PathGradients | None = None,
    on_progress: Callable[[PathGradients], None] | None = None,
    save_every: float = 30.0,
    memory_budget: MemoryBudget | float | None = None,
) -> PathGradients:
    """Per-row gradient contributions along the scaled-activation path (the IPG engine).

    Row r runs prompt + completion teacher-forced with the components scaled to
    ``h' + alphas[r] (h - h')`` at ``positions`` and returns
    ``sum_t (h - h')_ti * d/dh~_ti [weights[r] * sum_s log pi(a_s | s_s)]`` for each unit i, summed
    over the same positions. Rows are independent, so one backward of the weighted sum serves a
    whole chunk.

    Args:
        policy: the policy; whatever hooks are active on its model stay active.
        components: the units (one hook).
        prompt_ids, completion_ids: per row, the token ids (completion includes EOS if sampled).
        alphas: [rows] path position of each row.
        weights: [rows] the row's weight in the objective (advantage / n, quadrature weight, ...).
        positions: ``"all"`` (the path scales every position; completeness holds for this sum) or
            ``"generated"`` (only completion positions are scaled and summed).
        baseline: h' (zero when None), a scalar or one value per unit in ``components``.
        internal_batch_size: rows per forward/backward.
        chunks: explicit row chunks (overrides ``internal_batch_size``); each is one pass.
        progress: show a tqdm bar over rows.
        share_prefix: run the blocks below the hook once for rows of a chunk that are the same
            sequence (the q alpha points of a rollout); the result is the same either way.
        resume_from: a partial result of the same rows (e.g. from a checkpoint): rows it marks
            done are not computed again.
        on_progress: called with the partial result at most every ``save_every`` seconds (and
            after the last chunk), e.g. to write a checkpoint.
        memory_budget: a :class:`~ipgkit.memory.MemoryBudget` (or its size in MiB) for each
            pass: chunks are split to fit it at their padded length, attention is fused and the
            blocks above the hook are recomputed in the backward, so memory grows linearly
            with the completion length. None (default) chunks by ``internal_batch_size`` only.

    Returns:
        :class:`PathGradients` with [rows, units] contributions.

    Example:
        >>> grads = path_gradients(policy, resid_neurons(2), rollouts.row_prompt_ids(),
        ...                        rollouts.row_completion_ids(), alphas=torch.ones(len(rollouts)),
        ...                        weights=rollouts.advantages())                  # doctest: +SKIP
        >>> grads.contributions.shape                                            # doctest: +SKIP
        torch.Size([40, 128])
    """
    policy = require_policy(policy, "path_gradients")
    rows = len(prompt_ids)
    if rows == 0:
        raise IpgkitError("no rows to attribute (empty rollouts)")
    if not (len(completion_ids) == rows == len(alphas) == len(weights)):
        raise IpgkitError(
            f"rows disagree: {rows} prompts, {len(completion_ids)} completions, "
            f"{len(alphas)} alphas, {len(weights)} weights"
        )
    if positions not in ("all", "generated"):
        raise IpgkitError(f"path positions must be 'all' or 'generated', got {positions!r}")
    if not torch.isfinite(torch.as_tensor(weights)).all():
        raise IpgkitError("row weights must be finite (check the rewards and advantages)")
    components = components.resolved(policy.model)
    model = policy.model
    _warn_about_error_terms(policy, components.hook_name)
    hook_name, shared_layer = path_site(model, components.hook_name)
    if not share_prefix:
        hook_name, shared_layer = components.hook_name, None
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    if chunks is None:
        chunks = packed_chunks(lengths, internal_batch_size)
    memory_budget = as_budget(memory_budget)
    if memory_budget is not None:
        chunks = memory_budget.split(chunks, lengths, model.cfg, units=components.hook_width(model))
    if resume_from is not None:
        if resume_from.contributions.shape != (rows, len(components)):
            raise IpgkitError(
                f"cannot resume: the saved rows {tuple(resume_from.contributions.shape)} do not "
                f"match this run's {(rows, len(components))}"
            )
        contributions = resume_from.contributions.clone()
        sequence_logprobs = resume_from.sequence_logprobs.clone()
        done = resume_from.done.clone()
    else:
        contributions = torch.zeros(rows, len(components), dtype=torch.float64)
        sequence_logprobs = torch.zeros(rows, dtype=torch.float64)
        done = torch.zeros(rows, dtype=torch.bool)
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    baseline_tensor = None if baseline is None else torch.as_tensor(baseline, dtype=torch.float64)
    started = last_saved = time.perf_counter()
    computed = 0
    bar = tqdm(
        total=rows, initial=int(done.sum()), desc="ipg: scoring", unit="row", disable=not progress
    )
    with torch.enable_grad(), frozen_parameters(model):
        for chunk in chunks:
            if bool(done[chunk].all()):
                continue
            per_row, sequence = _chunk_contributions(
                policy,
                components,
                hook_name,
                shared_layer,
                [prompt_ids[r] for r in chunk],
                [completion_ids[r] for r in chunk],
                alphas[chunk],
                weights[chunk],
                positions,
                baseline_tensor,
                memory_budget,
            )
            contributions[chunk], sequence_logprobs[chunk] = per_row, sequence
            done[chunk] = True
            computed += len(chunk)
            bar.update(len(chunk))
            if on_progress is not None and time.perf_counter() - last_saved > save_every:
                on_progress(PathGradients(contributions, sequence_logprobs, done))
                last_saved = time.perf_counter()
    bar.close()
    rate = computed / max(time.perf_counter() - started, 1e-9)
    result = PathGradients(contributions, sequence_logprobs, done, rate)
    if on_progress is not None:
        on_progress(result)
    return result


def _warn_about_error_terms(policy: Policy, hook_name: str) -> None:
    upstream = hooks_upstream_of_saes(policy, hook_name)
    if upstream:
        warnings.warn(
            f"{hook_name} feeds the SAE(s) spliced at {upstream}, whose error term carries no "
            "gradient (sae-lens computes it under no_grad): the gradient follows the SAE "
            "reconstruction, not the model. Attribute on the plain model, or splice SAEs only at "
            "or below this hook's layer.",
            stacklevel=3,
        )


def _chunk_contributions(
    policy,
    components,
    hook_name,
    shared_layer,
    prompts,
    completions,
    alphas,
    weights,
    positions,
    baseline,
    memory=None,
):
    """One forward/backward: per-row contributions [rows, units] and sum log pi [rows]."""
    scale = scaling_hook(components, alphas, positions, baseline)
    captured: dict[str, Tensor] = {}

    def scale_and_capture(activation: Tensor, hook) -> Tensor:
        original = activation.detach()
        scaled = scale(original, hook)
        # a fresh leaf: the backward stops here, and its .grad is d objective / d h~
        scaled = (scaled.clone() if scaled is original else scaled).requires_grad_(True)
        captured["original"], captured["scaled"] = original, scaled
        return scaled

    # the backward runs inside the loop, under the memory budget's fused attention and
    # checkpointed blocks (a budgeted iter_scores holds them until it is resumed)
    with policy.model.hooks(fwd_hooks=[(hook_name, scale_and_capture)]):
        for _, scores in iter_scores(
            policy,
            prompts,
            completions,
            len(prompts),
            with_entropy=False,
            shared_prefix_layer=shared_layer,
            memory=memory,
            gradient_from_block=gradient_block(hook_name, policy.model.cfg.n_layers),
        ):
            if "scaled" not in captured:
                raise IpgkitError(f"hook {hook_name} did not run in the forward pass")
            sequence = scores.logprobs.sum(-1)
            objective = (weights.to(sequence.device, sequence.dtype) * sequence).sum()
            (gradient,) = torch.autograd.grad(objective, captured["scaled"])
    # reduce in at least float32, whatever the model's dtype
    precision = torch.promote_types(gradient.dtype, torch.float32)
    difference = components.coordinates(captured["original"].to(precision))
    if baseline is not None:
        difference = difference - baseline.to(difference.device, precision)
    mask = position_mask(
        torch.tensor([len(p) for p in prompts]),
        torch.tensor([len(c) for c in completions]),
        difference.shape[1],
        positions,
    ).to(difference.device, precision)
    gradient = components.coordinates(gradient.to(precision))
    per_row = torch.einsum("bpu,bpu,bp->bu", difference, gradient, mask)
    return per_row.detach().double().cpu(), sequence.detach().double().cpu()


def scaled_sequence_logprobs(
    policy: Policy,
    components: ComponentSet,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    alpha: float,
    positions: PathPositions = "all",
    baseline: Float[Tensor, " units"] | float | None = None,
    internal_batch_size: int = 32,
    memory_budget: MemoryBudget | float | None = None,
) -> Float[Tensor, " rows"]:
    """``sum_s log pi(a_s | s_s)`` per row with the components at path point ``alpha`` (no grad;
    with a ``memory_budget``, fused attention and rows per pass that fit it)."""
    memory = as_budget(memory_budget)
    hook = scaling_hook(components.resolved(policy.model), float(alpha), positions, baseline)
    values = torch.zeros(len(prompt_ids), dtype=torch.float64)
    with torch.no_grad(), policy.model.hooks(fwd_hooks=[(components.hook_name, hook)]):
        for rows, scores in iter_scores(
            policy,
            prompt_ids,
            completion_ids,
            internal_batch_size,
            with_entropy=False,
            memory=memory,
        ):
            values[rows] = scores.sequence_logprobs().double().cpu()
    return values


# --- IPG ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPGConfig:
    """Settings of an IPG run (defaults follow the IPG paper, arXiv 2602.02313).

    Attributes:
        n_rollouts: N rollouts per prompt, the group for advantages (paper: 3 to 5).
        n_steps: q, the number of alpha points (paper: 10).
        method: quadrature rule over alpha: ``riemann_right`` (paper), ``riemann_left``,
            ``riemann_middle``, ``riemann_trapezoid`` or ``gausslegendre`` (Captum's names).
        mode: ``paper``: sample once from the unmodified model and re-score those rollouts at every
            alpha; ``on_path``: sample fresh rollouts under each alpha's scaled model, which makes
            the estimate unbiased for J(1) - J(0) (with ``rloo`` advantages).
        advantage: group-relative advantage: ``mean_std`` (GRPO), ``mean``, ``rloo`` or ``none``.
            None picks ``mean_std`` in paper mode and ``rloo`` in on-path mode.
        baseline: h': ``"zero"`` (paper), ``"mean"`` (mean activation over the support set's
            rollouts at the summed positions), or a tensor with one value per unit.
        positions: ``"all"`` (the path scales every position, the paper's setting) or
            ``"generated"`` (completion tokens only). Attributions sum over the same positions.
        temperature, top_p: sampling settings (paper: 0.6 and 0.8).
        max_new_tokens: longest completion.
        seed: sampling seed (on-path mode uses ``seed + k`` at alpha point k).
        internal_batch_size: (rollout, alpha) rows per forward/backward pass. On a 2-core CPU,
            16 to 32 rows run fastest (larger batches spill the caches); raise it on a GPU.
        sampling_batch_size: rollouts per sampling batch.
        pack: put all alpha points of all prompts in the batch dimension (chunked by length); with
            False, one pass per (prompt, alpha), the slow reference path.
        seeding: the sampler's seeding (see :class:`ipgkit.rollouts.SamplingConfig`);
            ``"problem"`` makes each prompt's rollouts independent of the others', which lets a
            torchrun launch shard prompts and still equal the single-process result.
        memory_budget_mib: working memory of one scoring pass, in MiB (see
            :class:`ipgkit.memory.MemoryBudget`): rows per pass and logit positions per block
            follow it, attention is fused and blocks above the hook are recomputed, so long
            chains of thought fit. None (default): ``internal_batch_size`` rows per pass, TL's
            attention. Scores agree either way to float rounding (~1e-6 relative).
    """

    n_rollouts: int = 5
    n_steps: int = 10
    method: IntegrationRule = "riemann_right"
    mode: Literal["paper", "on_path"] = "paper"
    advantage: AdvantageMode | None = None
    baseline: Literal["zero", "mean"] | Tensor = "zero"
    positions: PathPositions = "all"
    temperature: float = 0.6
    top_p: float = 0.8
    max_new_tokens: int = 256
    seed: int = 0
    internal_batch_size: int = 32
    sampling_batch_size: int = 64
    pack: bool = True
    seeding: Literal["batch", "problem"] = "batch"
    memory_budget_mib: float | None = None

    def __post_init__(self) -> None:
        integration_points(self.method, self.n_steps)  # validates both
        as_budget(self.memory_budget_mib)  # validates it
        if self.mode not in ("paper", "on_path"):
            raise IpgkitError(f"mode must be 'paper' or 'on_path', got {self.mode!r}")
        if self.advantages not in ("mean_std", "mean", "rloo", "none"):
            raise IpgkitError(
                f"unknown advantage {self.advantage!r}; choose 'mean_std', 'mean', 'rloo' or 'none'"
            )
        if self.advantages != "none" and self.n_rollouts < 2:
            raise IpgkitError(
                f"group-relative advantages ({self.advantages!r}) need n_rollouts >= 2, got "
                f"{self.n_rollouts}; use advantage='none' for single rollouts"
            )
        if self.n_rollouts < 1:
            raise IpgkitError(f"n_rollouts must be >= 1, got {self.n_rollouts}")
        if isinstance(self.baseline, str) and self.baseline not in ("zero", "mean"):
            raise IpgkitError(f"baseline must be 'zero', 'mean' or a tensor, got {self.baseline!r}")
        if self.positions not in ("all", "generated"):
            raise IpgkitError(f"positions must be 'all' or 'generated', got {self.positions!r}")
        if self.internal_batch_size < 1 or self.sampling_batch_size < 1:
            raise IpgkitError("internal_batch_size and sampling_batch_size must be >= 1")

    @property
    def advantages(self) -> AdvantageMode:
        """The advantage mode in force (``advantage``, or the mode's default when None)."""
        if self.advantage is not None:
            return self.advantage
        return "mean_std" if self.mode == "paper" else "rloo"

    def describe(self) -> dict:
        """JSON-ready settings (a tensor baseline is recorded as ``"tensor"``)."""
        settings = asdict(replace(self, baseline="zero"))
        settings["baseline"] = self.baseline if isinstance(self.baseline, str) else "tensor"
        settings["advantage"] = self.advantages
        # defaults of options added later are left out, so earlier cache keys stay valid
        if self.seeding == "batch":
            del settings["seeding"]
        if self.memory_budget_mib is None:
            del settings["memory_budget_mib"]
        return settings


def ipg(
    policy: Policy,
    problems: Sequence[Problem] | None,
    components: ComponentSet,
    reward: RewardFunction | None = None,
    config: IPGConfig | None = None,
    rollouts: Rollouts | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    **settings,
) -> AttributionResult:
    """Integrated Policy Gradient scores for every unit in ``components``.

    Args:
        policy: the policy to attribute.
        problems: the support set (prompts); may be None when ``rollouts`` are given.
        components: the units at one hook, e.g. ``resid_neurons(layer=2)`` (all units cost the same
            as one: a single backward per chunk).
        reward: TRL-style reward (``task.correctness``, ``length_reward``, ``keyword_count(...)``);
            may be omitted when ``rollouts`` already carry rewards (paper mode).
        config: an :class:`IPGConfig`; keyword ``settings`` override its fields.
        rollouts: paper mode only: rollouts already sampled from the unmodified model (e.g. shared
            with the baselines), ``n_rollouts`` per problem.
        progress: tqdm bars for sampling and scoring.
        checkpoint: a file that keeps the sampled rollouts and the scored rows (written atomically
            every 30 s); rerunning the same call after an interruption resumes from it. A file
            from a different run (settings, problems, policy, units or reward) is refused.

    Returns:
        :class:`AttributionResult` with ``score`` (signed, averaged over prompts), ``stderr``
        across prompts, ``per_prompt`` values, the completeness ``delta`` and
        ``frac_reward_zero_std`` (on-path: averaged over the alpha points' samples). ``info``
        holds the settings, J(0) and J(1) (on-path) or S(0) and S(1) (paper), rows scored and
        timings.

    Example:
        >>> result = ipg(policy, task.problems[:50], resid_neurons(2), task.correctness,
        ...              n_rollouts=5, n_steps=10)                          # doctest: +SKIP
        >>> result.top(20)                                                  # doctest: +SKIP
    """
    policy = require_policy(policy, "ipg")
    config = replace(config or IPGConfig(), **settings)
    components = components.validate(policy.model)
    if rollouts is not None:
        if config.mode != "paper":
            raise IpgkitError("pre-sampled rollouts only apply to mode='paper'")
        if rollouts.n != config.n_rollouts:
            config = replace(config, n_rollouts=rollouts.n)
        problems = rollouts.problems if problems is None else list(problems)
        if [p.id for p in problems] != [p.id for p in rollouts.problems]:
            raise IpgkitError("rollouts were sampled for different problems than those given")
    if not problems:
        raise IpgkitError("IPG needs at least one problem (the problem list is empty)")
    if reward is None and (rollouts is None or rollouts.rewards is None):
        raise IpgkitError("IPG needs a reward function (or, in paper mode, rollouts with rewards)")
    problems = list(problems)
    if distributed.world()[1] > 1:
        result = _sharded_ipg(
            policy, problems, components, reward, config, rollouts, progress, checkpoint
        )
    else:
        result = _local_ipg(
            policy, problems, components, reward, config, rollouts, progress, checkpoint
        )
    if result.info["rows_scored"] == 0:
        warnings.warn(
            f"IPG of {result.info['reward']!r} at {components.hook_name} is zero for every unit: "
            + no_signal_advice(result.frac_reward_zero_std),
            ZeroSignalWarning,
            stacklevel=2,
        )
    return result


def _local_ipg(
    policy, problems, components, reward, config: IPGConfig, rollouts, progress, checkpoint
) -> AttributionResult:
    started = time.perf_counter()
    store = None
    if checkpoint is not None:
        identity = {
            "config": config.describe(),
            "policy": policy.name,
            "problem_ids": [p.id for p in problems],
            "hook": components.hook_name,
            "indices": components.resolved(policy.model).indices,
            "reward": _reward_name(reward, rollouts),
        }
        store = _Checkpoint(Path(checkpoint), identity)
    if config.mode == "paper":
        estimate = _paper_mode(
            policy, problems, components, reward, config, rollouts, progress, store
        )
    else:
        estimate = _on_path_mode(policy, problems, components, reward, config, progress, store)
    per_prompt = estimate.pop("per_prompt")
    info = {
        "config": config.describe(),
        "policy": policy.name,
        "reward": estimate.pop("reward_name"),
        "problem_ids": [p.id for p in problems],
        "seconds": time.perf_counter() - started,
        **estimate,
    }
    return AttributionResult.from_per_prompt(
        components.resolved(policy.model), per_prompt, method="ipg", info=info
    )


def _sharded_ipg(
    policy, problems, components, reward, config: IPGConfig, rollouts, progress, checkpoint
) -> AttributionResult:
    """IPG under torchrun: each rank attributes a contiguous block of prompts, the per-prompt
    sums and the surrogate's sums are gathered, and every rank returns the same result."""
    if config.mode != "paper" or not (
        isinstance(config.baseline, str) and config.baseline == "zero"
    ):
        raise IpgkitError(
            "under torchrun IPG shards paper mode with the zero baseline; run on_path mode or the "
            "mean baseline in one process"
        )
    if rollouts is None and config.seeding != "problem":
        raise IpgkitError(
            "under torchrun each rank samples its own prompts: use seeding='problem' (the same "
            "rollouts whatever the number of processes), or pass rollouts"
        )
    rank, size = distributed.world()
    block = distributed.shard(len(problems))
    mine = None if rollouts is None else rollouts.select(block)
    if checkpoint is not None:
        checkpoint = f"{checkpoint}.rank{rank}-of-{size}"
    with distributed.local():
        part = _local_ipg(
            policy,
            [problems[i] for i in block],
            components,
            reward,
            config,
            mine,
            progress and rank == 0,
            checkpoint,
        )
    pieces = distributed.gather({"per_prompt": part.per_prompt, "info": part.info})
    per_prompt = torch.cat([piece["per_prompt"] for piece in pieces])
    counts = [len(piece["info"]["problem_ids"]) for piece in pieces]

    def weighted(read) -> float:  # a mean over prompts, from each block's mean
        return sum(read(piece["info"]) * n for piece, n in zip(pieces, counts, strict=True)) / sum(
            counts
        )

    surrogate = {
        end: weighted(lambda info, end=end: info["surrogate"][end]) for end in ("S(0)", "S(1)")
    }
    info = {
        **part.info,
        "problem_ids": [p.id for p in problems],
        "surrogate": surrogate,
        "delta": float(per_prompt.sum(1).mean() - (surrogate["S(1)"] - surrogate["S(0)"])),
        "frac_reward_zero_std": weighted(lambda info: info["frac_reward_zero_std"]),
        "mean_reward": weighted(lambda info: info["mean_reward"]),
        "rows_scored": sum(piece["info"]["rows_scored"] for piece in pieces),
        "seconds": max(piece["info"]["seconds"] for piece in pieces),
        "processes": size,
    }
    return AttributionResult.from_per_prompt(part.components, per_prompt, method="ipg", info=info)


class _Checkpoint:
    """One file holding a run's sampled rollouts and scored rows, rewritten atomically."""

    def __init__(self, path: Path, identity: dict) -> None:
        self.path, self.identity, self.state = path, identity, {}
        if path.exists():
            saved = load_torch_state(path, "IPG checkpoint")
            if saved.get("identity") != identity:
                differing = sorted(
                    key for key in identity if saved.get("identity", {}).get(key) != identity[key]
                )
                raise IpgkitError(
                    f"checkpoint {path} belongs to a different IPG run (differs in {differing}); "
                    "pass another checkpoint path or delete the file"
                )
            self.state = saved["state"]

    def sampled(self, name: str, draw: Callable[[], Rollouts]) -> Rollouts:
        """Rollouts saved under ``name``, or drawn now and saved."""
        samples = self.state.setdefault("samples", {})
        if name in samples:
            return Rollouts.from_state_dict(samples[name])
        rollouts = draw()
        samples[name] = rollouts.state_dict()
        self.write()
        return rollouts

    def scoring(self) -> PathGradients | None:
        saved = self.state.get("scoring")
        return None if saved is None else PathGradients(**saved)

    def save_scoring(self, partial: PathGradients) -> None:
        self.state["scoring"] = asdict(partial)
        self.write()

    def write(self) -> None:
        atomic_torch_save({"identity": self.identity, "state": self.state}, self.path)


def _sampled(store: _Checkpoint | None, name: str, draw: Callable[[], Rollouts]) -> Rollouts:
    return draw() if store is None else store.sampled(name, draw)


#: seconds between checkpoint writes while scoring (IPGKIT_CHECKPOINT_SECONDS overrides it)
CHECKPOINT_EVERY_SECONDS = float(os.environ.get("IPGKIT_CHECKPOINT_SECONDS", "30"))


def _scoring_hooks(store: _Checkpoint | None) -> dict:
    if store is None:
        return {}
    return {
        "resume_from": store.scoring(),
        "on_progress": store.save_scoring,
        "save_every": CHECKPOINT_EVERY_SECONDS,
    }


def _reward_name(reward, rollouts: Rollouts | None = None) -> str:
    if reward is not None:
        return getattr(reward, "__name__", type(reward).__name__)
    return rollouts.reward_name or "reward"


def _support_baseline(policy, components, config: IPGConfig, rollouts: Rollouts):
    """h' as a per-unit tensor (None for zero)."""
    if isinstance(config.baseline, Tensor):
        baseline = config.baseline.detach().double().cpu()
        units = len(components.resolved(policy.model))
        if baseline.shape != (units,):
            raise IpgkitError(
                f"baseline tensor must have one value per unit ({units}), got {tuple(baseline.shape)}"
            )
        return baseline
    if config.baseline == "zero":
        return None
    mean = mean_activations(
        policy,
        components.hook_name,
        rollouts.row_prompt_ids(),
        rollouts.row_completion_ids(),
        torch.zeros(len(rollouts), dtype=torch.long),
        config.positions,
        components.resolved(policy.model).coordinates,
        config.internal_batch_size,
        as_budget(config.memory_budget_mib),
    )
    return mean[0]  # float64: h' keeps a float64 model's precision


def _sample(policy, problems, reward, config: IPGConfig, seed: int, progress: bool) -> Rollouts:
    return sample(
        policy,
        problems,
        n=config.n_rollouts,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
        batch_size=config.sampling_batch_size,
        reward=reward,
        progress=progress,
        seeding=config.seeding,
    )


@dataclass
class PathRows:
    """The (trajectory, alpha point) rows of a path-integral run and the prompt each belongs to.

    Every trajectory is added once per alpha point; :meth:`score` runs them through
    :func:`path_gradients` and sums contributions per prompt. IPG, the raw policy gradient and
    Integrated Gradients build their rows here.
    """

    groups: list[int] = field(default_factory=list)
    keys: list[tuple[int, int]] = field(default_factory=list)  # (prompt, alpha point)
    prompts: list[list[int]] = field(default_factory=list)
    completions: list[list[int]] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def add(self, group, k, prompt, completion, alpha, weight) -> None:
        self.groups.append(group)
        self.keys.append((group, k))
        self.prompts.append(prompt)
        self.completions.append(completion)
        self.alphas.append(alpha)
        self.weights.append(weight)

    def score(
        self,
        policy,
        components,
        n_groups: int,
        positions,
        baseline,
        internal_batch_size: int,
        pack: bool = True,
        progress: bool = False,
        store=None,
        memory_budget: MemoryBudget | float | None = None,
    ):
        """Per-prompt sums of the rows' contributions [prompts, units], and the engine's output
        (None when there are no rows). ``pack=False`` runs one pass per (prompt, alpha point)."""
        units = len(components.resolved(policy.model))
        per_prompt = torch.zeros(n_groups, units, dtype=torch.float64)
        if not self.groups:
            return per_prompt, None
        if pack:
            lengths = [len(p) + len(c) for p, c in zip(self.prompts, self.completions, strict=True)]
            chunks = packed_chunks(lengths, internal_batch_size)
        else:
            by_key: dict[tuple[int, int], list[int]] = {}
            for row, key in enumerate(self.keys):
                by_key.setdefault(key, []).append(row)
            chunks = list(by_key.values())
        grads = path_gradients(
            policy,
            components,
            self.prompts,
            self.completions,
            torch.tensor(self.alphas, dtype=torch.float64),
            torch.tensor(self.weights, dtype=torch.float64),
            positions=positions,
            baseline=baseline,
            chunks=chunks,
            progress=progress,
            memory_budget=memory_budget,
            **_scoring_hooks(store),
        )
        per_prompt.index_add_(0, torch.tensor(self.groups), grads.contributions)
        return per_prompt, grads

    def logprobs_at(
        self,
        end: float,
        alphas: Tensor,
        grads: PathGradients,
        policy,
        components,
        positions,
        baseline,
        internal_batch_size: int,
        memory_budget: MemoryBudget | float | None = None,
    ) -> Tensor:
        """``sum_s log pi`` of each trajectory (in the order added) at path point ``end``: taken
        from the scoring pass when ``end`` is one of ``alphas``, else one forward pass."""
        on_grid = next((k for k, a in enumerate(alphas.tolist()) if math.isclose(a, end)), None)
        index = [i for i, (_, k) in enumerate(self.keys) if k == (on_grid or 0)]
        if on_grid is not None:
            return grads.sequence_logprobs[index]
        return scaled_sequence_logprobs(
            policy,
            components,
            [self.prompts[i] for i in index],
            [self.completions[i] for i in index],
            end,
            positions,
            baseline,
            internal_batch_size,
            memory_budget,
        )


def _paper_mode(
    policy,
    problems,
    components,
    reward,
    config: IPGConfig,
    rollouts,
    progress,
    store: _Checkpoint | None,
):
    alphas, quadrature = integration_points(config.method, config.n_steps)
    sampling_started = time.perf_counter()
    if rollouts is None:
        rollouts = _sampled(
            store,
            "unmodified",
            lambda: _sample(policy, problems, reward, config, config.seed, progress),
        )
    elif reward is not None:
        rollouts = rollouts.with_rewards(reward)
    sampling_seconds = time.perf_counter() - sampling_started
    advantages = rollouts.advantages(config.advantages)
    baseline = _support_baseline(policy, components, config, rollouts)
    # rows with zero advantage contribute exactly zero: score only the others
    live = advantages.nonzero()[:, 0].tolist()
    prompt_ids, completion_ids = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    rows = PathRows()
    for r in live:
        for k, alpha in enumerate(alphas.tolist()):
            rows.add(
                int(rollouts.group_ids[r]),
                k,
                prompt_ids[r],
                completion_ids[r],
                alpha,
                float(quadrature[k] * advantages[r] / config.n_rollouts),
            )
    surrogate = {0.0: 0.0, 1.0: 0.0}  # with no live rows S is identically zero
    scoring_started = time.perf_counter()
    per_prompt, grads = rows.score(
        policy,
        components,
        len(problems),
        config.positions,
        baseline,
        config.internal_batch_size,
        config.pack,
        progress,
        store,
        config.memory_budget_mib,
    )
    if grads is not None:
        # completeness of the surrogate S(alpha) = mean_prompts sum_rows A/N sum_s log pi_alpha
        live_weights = advantages[live].double() / config.n_rollouts
        for end in (0.0, 1.0):
            values = rows.logprobs_at(
                end,
                alphas,
                grads,
                policy,
                components,
                config.positions,
                baseline,
                config.internal_batch_size,
                config.memory_budget_mib,
            )
            surrogate[end] = float((live_weights * values).sum() / len(problems))
    scoring_seconds = time.perf_counter() - scoring_started
    change = surrogate[1.0] - surrogate[0.0]
    delta = float(per_prompt.sum(1).mean() - change)
    if abs(delta) > 0.1 * abs(change) + 1e-6:
        warnings.warn(
            f"IPG completeness gap: the scores sum to {delta + change:+.4g} but the surrogate "
            f"changes by {change:+.4g} from alpha = 0 to 1 (delta {delta:+.4g}). The integrand "
            f"varies faster than {config.n_steps} {config.method} points resolve"
            + (
                "; with a zero baseline on a normalised residual stream most of the change happens "
                "at alpha < 0.01"
                if "resid" in components.hook_name
                else ""
            )
            + ". Rankings may still be useful; for completeness try baseline='mean' or more "
            "n_steps.",
            stacklevel=3,
        )
    return {
        "per_prompt": per_prompt,
        "reward_name": _reward_name(reward, rollouts),
        "delta": delta,
        "delta_of": "surrogate S(1) - S(0), S = mean over prompts of sum_rows A/N log pi",
        "surrogate": {"S(0)": surrogate[0.0], "S(1)": surrogate[1.0]},
        "frac_reward_zero_std": rollouts.frac_reward_zero_std,
        "mean_reward": float(rollouts.rewards.mean()),
        "rows_scored": len(rows.groups),
        "sampling_seconds": sampling_seconds,
        "scoring_seconds": scoring_seconds,
    }


def _on_path_mode(
    policy, problems, components, reward, config: IPGConfig, progress, store: _Checkpoint | None
):
    alphas, quadrature = integration_points(config.method, config.n_steps)
    resolved = components.resolved(policy.model)
    sampling_started = time.perf_counter()
    points = [float(a) for a in alphas]
    baseline, unmodified = None, None
    if isinstance(config.baseline, str) and config.baseline == "mean":
        # h' is a property of the unmodified model (alpha = 1 leaves h unchanged for any h')
        unmodified = _sampled(
            store,
            "unmodified",
            lambda: _sample(policy, problems, reward, config, config.seed + len(points), False),
        )
        baseline = _support_baseline(policy, components, config, unmodified)
    elif isinstance(config.baseline, Tensor):
        baseline = _support_baseline(policy, components, config, None)

    def sample_at(alpha: float, seed: int) -> Rollouts:
        def draw() -> Rollouts:
            hook = scaling_hook(resolved, alpha, config.positions, baseline)
            with policy.model.hooks(fwd_hooks=[(components.hook_name, hook)]):
                return _sample(policy, problems, reward, config, seed, False)

        return _sampled(store, f"alpha={alpha!r}, seed={seed}", draw)

    samples = [
        sample_at(alpha, config.seed + k)
        for k, alpha in enumerate(
            tqdm(points, desc="ipg: on-path sampling", unit="alpha", disable=not progress)
        )
    ]
    # J(1) - J(0) from samples at the end points: on the grid, or drawn for that purpose
    on_grid = {
        end: next((s for a, s in zip(points, samples, strict=True) if math.isclose(a, end)), None)
        for end in (0.0, 1.0)
    }
    at_start = on_grid[0.0]
    if at_start is None:
        at_start = sample_at(0.0, config.seed + len(points) + 1)
    at_end = on_grid[1.0] if on_grid[1.0] is not None else unmodified
    if at_end is None:
        at_end = sample_at(1.0, config.seed + len(points))
    sampling_seconds = time.perf_counter() - sampling_started
    rows = PathRows()
    for k, rollouts in enumerate(samples):
        advantages = rollouts.advantages(config.advantages)
        prompt_ids, completion_ids = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
        for r in advantages.nonzero()[:, 0].tolist():
            rows.add(
                int(rollouts.group_ids[r]),
                k,
                prompt_ids[r],
                completion_ids[r],
                points[k],
                float(quadrature[k] * advantages[r] / config.n_rollouts),
            )
    scoring_started = time.perf_counter()
    per_prompt, _ = rows.score(
        policy,
        components,
        len(problems),
        config.positions,
        baseline,
        config.internal_batch_size,
        config.pack,
        progress,
        store,
        config.memory_budget_mib,
    )
    scoring_seconds = time.perf_counter() - scoring_started
    j_start, j_end = float(at_start.rewards.mean()), float(at_end.rewards.mean())
    zero_std = [s.frac_reward_zero_std for s in samples]
    return {
        "per_prompt": per_prompt,
        "reward_name": _reward_name(reward),
        "delta": float(per_prompt.sum(1).mean() - (j_end - j_start)),
        "delta_of": "J(1) - J(0), J = mean reward of rollouts sampled at that alpha",
        "J(0)": j_start,
        "J(1)": j_end,
        "J_by_alpha": {
            f"{a:.6g}": float(s.rewards.mean()) for a, s in zip(points, samples, strict=True)
        },
        "frac_reward_zero_std": float(np.mean(zero_std)),
        "mean_reward": j_end,
        "rows_scored": len(rows.groups),
        "sampling_seconds": sampling_seconds,
        "scoring_seconds": scoring_seconds,
    }


__all__ = [
    "INTEGRATION_RULES",
    "IPGConfig",
    "PathGradients",
    "PathRows",
    "frozen_parameters",
    "integration_points",
    "ipg",
    "packed_chunks",
    "path_gradients",
    "scaled_sequence_logprobs",
]
