"""The IPG engine: per-row gradient contributions along the scaled-activation path.

:func:`path_gradients` takes rows of (prompt, completion, alpha, weight) and returns, per row and
unit, ``(h - h') . d(weight * sum_s log pi)/dh~`` with the units at ``h' + alpha (h - h')``. Every
(rollout, alpha) pair is one row of a batch: the scaling hook takes one alpha per row, so all
alpha points and rollouts share forward/backward passes, and one backward yields the gradient for
every unit at the hook. The backward stops at the hook (the scaled activation is a leaf) and
computes no parameter gradients. IPG, the raw policy gradient and Integrated Gradients build their
rows with :class:`PathRows`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ipgkit.components import (
    ComponentSet,
    hook_layer,
    position_mask,
    resid_post_layer,
    scaling_hook,
)
from ipgkit.errors import IpgkitError
from ipgkit.memory import MemoryBudget, as_budget, gradient_block
from ipgkit.models.policy import Policy, require_policy
from ipgkit.progress import tqdm
from ipgkit.rollouts import iter_scores
from ipgkit.saes import hooks_upstream_of_saes

PathPositions = Literal["all", "generated"]


@dataclass
class PathGradients:
    """What :func:`path_gradients` returns, one row per input row.

    Attributes:
        contributions: [rows, units] ``sum_t (h - h')_ti * d(weight * sum_s log pi)/dh~_ti``.
        sequence_logprobs: [rows] ``sum_s log pi(a_s | s_s)`` under the row's scaled model.
        done: [rows] which rows are computed (all of them unless the run was interrupted).
        rows_per_second: scoring throughput of this call, for logs and benchmarks.
        per_position: with ``per_position=True``, per row the [sequence positions, units] terms
            whose sum over positions is that row's ``contributions`` (positions outside
            ``positions`` are zero).
        activations: with ``per_position=True``, per row the unscaled activations h
            [sequence positions, units] (in the set's coordinates).
    """

    contributions: Float[Tensor, "rows units"]
    sequence_logprobs: Float[Tensor, " rows"]
    done: Bool[Tensor, " rows"]
    rows_per_second: float = 0.0
    per_position: list[Tensor] | None = None
    activations: list[Tensor] | None = None


@contextlib.contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Switch off parameter gradients (attribution needs activation gradients only)."""
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


def path_site(model, hook_name: str) -> tuple[str, int | None]:
    """Where to hook the path and from which block rows must run separately.

    Everything below the hook is the same at every alpha, so rows of the same rollout share it.
    ``blocks.L.hook_resid_post`` is the very tensor that enters block L+1 (``hook_resid_pre``), so
    it is hooked there and blocks 0..L are shared; any other hook inside block L shares blocks
    0..L-1. Hooks outside the blocks share nothing.
    """
    n_layers = model.cfg.n_layers
    resid_post = resid_post_layer(hook_name)
    if resid_post is not None and resid_post + 1 < n_layers:
        return f"blocks.{resid_post + 1}.hook_resid_pre", resid_post + 1
    layer = hook_layer(hook_name, n_layers)
    return hook_name, (layer if 0 <= layer < n_layers else None)


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
    per_position: bool = False,
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
        per_position: also keep each row's terms per sequence position (before the sum over
            positions) and its activations, for per-token views; memory grows with rows x
            positions x units, so use it on a few rollouts.

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
    _check_rows(prompt_ids, completion_ids, alphas, weights, positions)
    components = components.resolved(policy.model)
    model = policy.model
    _warn_about_error_terms(policy, components.hook_name)
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    rows = (prompt_ids, completion_ids, alphas, weights)
    chunking = (chunks, internal_batch_size, memory_budget)
    scorer, chunks = _plan(policy, components, rows, positions, baseline, share_prefix, chunking)
    state = _starting_state(resume_from, len(prompt_ids), len(components), per_position)
    scorer.per_position = per_position
    with torch.enable_grad(), frozen_parameters(model):
        scorer.score_chunks(state, chunks, rows, progress, on_progress, save_every)
    if on_progress is not None:
        on_progress(state)
    return state


def _plan(policy, components, rows, positions, baseline, share_prefix, chunking):
    """Where the path is hooked and which rows share a pass: the chunk scorer and the chunks."""
    model, (prompt_ids, completion_ids, _, _) = policy.model, rows
    chunks, internal_batch_size, memory_budget = chunking
    hook_name, shared_layer = path_site(model, components.hook_name)
    if not share_prefix:
        hook_name, shared_layer = components.hook_name, None
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    if chunks is None:
        chunks = packed_chunks(lengths, internal_batch_size)
    memory_budget = as_budget(memory_budget)
    if memory_budget is not None:
        width = components.hook_width(model)
        chunks = memory_budget.split(chunks, lengths, model.cfg, units=width)
    scorer = _ChunkScorer(policy, components, hook_name, shared_layer, positions, memory_budget)
    if baseline is not None:
        scorer.baseline = torch.as_tensor(baseline, dtype=torch.float64)
    return scorer, chunks


def _check_rows(prompt_ids, completion_ids, alphas, weights, positions) -> None:
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


def _starting_state(resume_from, rows: int, units: int, per_position: bool) -> PathGradients:
    """Nothing computed yet, or a copy of a saved partial result of the same rows."""
    if per_position and resume_from is not None:
        raise IpgkitError("per_position=True keeps its terms in memory only; it cannot resume")
    if resume_from is None:
        state = PathGradients(
            torch.zeros(rows, units, dtype=torch.float64),
            torch.zeros(rows, dtype=torch.float64),
            torch.zeros(rows, dtype=torch.bool),
        )
        if per_position:
            state.per_position, state.activations = [None] * rows, [None] * rows
        return state
    if resume_from.contributions.shape != (rows, units):
        raise IpgkitError(
            f"cannot resume: the saved rows {tuple(resume_from.contributions.shape)} do not "
            f"match this run's {(rows, units)}"
        )
    return PathGradients(
        resume_from.contributions.clone(),
        resume_from.sequence_logprobs.clone(),
        resume_from.done.clone(),
    )


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


@dataclass
class _ChunkScorer:
    """What every chunk of one :func:`path_gradients` call shares."""

    policy: Policy
    components: ComponentSet
    hook_name: str
    shared_layer: int | None
    positions: PathPositions
    memory_budget: MemoryBudget | None
    baseline: Tensor | None = None
    per_position: bool = False

    def score_chunks(self, state, chunks, rows, progress, on_progress, save_every) -> None:
        """Fill ``state`` chunk by chunk (skipping chunks already done), reporting progress."""
        prompt_ids, completion_ids, alphas, weights = rows
        started = last_saved = time.perf_counter()
        computed = 0
        bar = tqdm(
            total=len(prompt_ids),
            initial=int(state.done.sum()),
            desc="ipg: scoring",
            unit="row",
            disable=not progress,
        )
        for chunk in chunks:
            if bool(state.done[chunk].all()):
                continue
            prompts = [prompt_ids[r] for r in chunk]
            completions = [completion_ids[r] for r in chunk]
            per_row, sequence, *terms = self(prompts, completions, alphas[chunk], weights[chunk])
            state.contributions[chunk], state.sequence_logprobs[chunk] = per_row, sequence
            if terms:
                _keep_positions(state, chunk, prompts, completions, *terms)
            state.done[chunk] = True
            computed += len(chunk)
            bar.update(len(chunk))
            if on_progress is not None and time.perf_counter() - last_saved > save_every:
                on_progress(state)
                last_saved = time.perf_counter()
        bar.close()
        state.rows_per_second = computed / max(time.perf_counter() - started, 1e-9)

    def __call__(self, prompts, completions, alphas, weights) -> tuple[Tensor, ...]:
        """One forward/backward: per-row contributions [rows, units] and sum log pi [rows]
        (with ``per_position``, also the per-position terms and activations [rows, pos, units])."""
        policy, components, hook_name = self.policy, self.components, self.hook_name
        baseline = self.baseline
        scale = scaling_hook(components, alphas, self.positions, baseline)
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
                shared_prefix_layer=self.shared_layer,
                memory_budget=self.memory_budget,
                gradient_from_block=gradient_block(hook_name, policy.model.cfg.n_layers),
            ):
                if "scaled" not in captured:
                    raise IpgkitError(f"hook {hook_name} did not run in the forward pass")
                sequence = scores.logprobs.sum(-1)
                objective = (weights.to(sequence.device, sequence.dtype) * sequence).sum()
                (gradient,) = torch.autograd.grad(objective, captured["scaled"])
        # reduce in at least float32, whatever the model's dtype
        precision = torch.promote_types(gradient.dtype, torch.float32)
        activation = components.coordinates(captured["original"].to(precision))
        difference = activation
        if baseline is not None:
            difference = activation - baseline.to(activation.device, precision)
        mask = position_mask(
            torch.tensor([len(p) for p in prompts]),
            torch.tensor([len(c) for c in completions]),
            difference.shape[1],
            self.positions,
        ).to(difference.device, precision)
        gradient = components.coordinates(gradient.to(precision))
        if self.per_position:
            terms = (difference * gradient * mask[..., None]).detach()
            per_row = terms.sum(1)
            extra = (terms.double().cpu(), activation.detach().double().cpu())
        else:
            per_row, extra = torch.einsum("bpu,bpu,bp->bu", difference, gradient, mask), ()
        return per_row.detach().double().cpu(), sequence.detach().double().cpu(), *extra


def _keep_positions(state: PathGradients, chunk, prompts, completions, terms, activation) -> None:
    """Each row's unpadded [prompt + completion positions, units] slices of a chunk's terms."""
    for slot, (row, prompt, completion) in enumerate(zip(chunk, prompts, completions, strict=True)):
        length = len(prompt) + len(completion)  # every fed position (the last has no gradient)
        state.per_position[row] = terms[slot, :length].clone()
        state.activations[row] = activation[slot, :length].clone()
