"""Reading activations through the teacher-forced pass: per-token chunks and per-group means.

The same forward as :func:`~ipgkit.rollouts.scoring.iter_scores` (steering hooks and the sequence
layout apply), no gradient. Baselines, analysis, SAE training and IPG's mean baseline stream these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ipgkit.components import ComponentSet, Positions, resolve_hook
from ipgkit.errors import IpgkitError
from ipgkit.memory import MemoryBudget
from ipgkit.models.policy import Policy
from ipgkit.positions import position_mask

from .data import Rollouts
from .scoring import iter_scores, right_padded
from .token_views import TokenActivations


@dataclass
class ActivationChunk:
    """Activations at one hook for the selected tokens of a chunk of rows.

    Attributes:
        rows: which input rows the chunk covers.
        activations: [tokens, width] the hook's values at the selected positions (row-major order).
        token_ids: [tokens] the input token at each selected position.
        row_index: [tokens] the input row (absolute) each selected position belongs to.
        position: [tokens] each token's index in its row's prompt + completion sequence.
    """

    rows: slice
    activations: Float[Tensor, "tokens width"]
    token_ids: Int[Tensor, " tokens"]
    row_index: Int[Tensor, " tokens"]
    position: Int[Tensor, " tokens"]


def iter_activations(
    policy: Policy,
    hook_name: str,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    positions: Positions = "generated",
    chunk_size: int = 64,
    memory_budget: MemoryBudget | float | None = None,
    progress: bool = False,
) -> Iterator[ActivationChunk]:
    """Activations at ``hook_name`` over prompt + completion rows, through the teacher-forced pass.

    The same forward as :func:`iter_scores` (so steering hooks and the sequence layout apply), no
    gradient. Baselines and IPG's mean baseline reduce these chunks as they stream past. With a
    ``memory_budget``, chunks are also split to fit it and attention is fused. ``progress`` shows
    a tqdm bar over rows.

    Example:
        >>> for chunk in iter_activations(policy, "blocks.2.hook_resid_post",
        ...                               rollouts.row_prompt_ids(),
        ...                               rollouts.row_completion_ids()):    # doctest: +SKIP
        ...     total += chunk.activations.abs().sum(0)
    """
    resolve_hook(policy.model, hook_name)
    captured: list[Tensor] = []

    def capture(activation: Tensor, hook) -> None:
        captured.append(activation.detach())

    with torch.no_grad(), policy.model.hooks(fwd_hooks=[(hook_name, capture)]):
        for rows, _ in iter_scores(
            policy,
            prompt_ids,
            completion_ids,
            chunk_size,
            False,
            memory_budget=memory_budget,
            progress=progress,
            description=f"activations {hook_name}",
        ):
            activation = captured.pop()
            prompt_lengths = torch.tensor([len(p) for p in prompt_ids[rows]])
            completion_lengths = torch.tensor([len(c) for c in completion_ids[rows]])
            width = activation.shape[1]
            mask = position_mask(prompt_lengths, completion_lengths, width, positions)
            tokens, _ = right_padded(prompt_ids[rows], completion_ids[rows], policy.pad_token_id)
            row_index = torch.arange(rows.start, rows.stop)[:, None].expand_as(mask)
            position = torch.arange(width)[None, :].expand_as(mask)
            yield ActivationChunk(
                rows,
                activation[mask.to(activation.device)].cpu(),
                tokens[mask],
                row_index[mask],
                position[mask],
            )


def mean_activations(
    policy: Policy,
    hook_name: str,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    row_groups: Int[Tensor, " rows"],
    positions: Positions = "generated",
    transform: Callable[[Tensor], Tensor] | None = None,
    chunk_size: int = 64,
    memory_budget: MemoryBudget | float | None = None,
    progress: bool = False,
) -> Float[Tensor, "groups width"]:
    """Mean of ``transform(activation)`` over the selected tokens of each group of rows (float64).

    ``row_groups[r]`` names row r's group (groups are ``0 .. max``); ``transform`` maps
    [tokens, width] activations to the values averaged (default: the activations themselves).

    Example:
        >>> per_prompt = mean_activations(policy, "blocks.2.hook_resid_post",
        ...                               rollouts.row_prompt_ids(), rollouts.row_completion_ids(),
        ...                               rollouts.group_ids, transform=torch.abs)  # doctest: +SKIP
    """
    row_groups = torch.as_tensor(row_groups, dtype=torch.long)
    sums, counts = None, torch.zeros(int(row_groups.max()) + 1, dtype=torch.float64)
    for chunk in iter_activations(
        policy,
        hook_name,
        prompt_ids,
        completion_ids,
        positions,
        chunk_size,
        memory_budget,
        progress,
    ):
        values = chunk.activations.double()
        values = transform(values) if transform is not None else values
        if sums is None:
            sums = torch.zeros(len(counts), values.shape[-1], dtype=torch.float64)
        token_groups = row_groups[chunk.row_index]
        sums.index_add_(0, token_groups, values)
        counts.index_add_(0, token_groups, torch.ones(len(values), dtype=torch.float64))
    if sums is None or (counts == 0).any():
        raise IpgkitError(f"some groups have no tokens at positions={positions!r}")
    return sums / counts[:, None]


def token_texts(policy: Policy, ids: Sequence[int]) -> list[str]:
    """Each token's own text (decoded alone, so ``" the"`` rather than ``"Ġthe"``)."""
    return [policy.tokenizer.decode([int(t)]) for t in ids]


def token_activations(
    policy: Policy,
    rollouts: Rollouts,
    components: ComponentSet,
    rows: Sequence[int] | None = None,
    units: Sequence[int] | None = None,
    internal_batch_size: int = 32,
    progress: bool = False,
) -> TokenActivations:
    """Activations of ``units`` (hook indices; all of ``components`` when None) at every position
    of the rollout ``rows`` (all when None), through the teacher-forced pass.

    Returns:
        :class:`TokenActivations`: per row a [positions, units] tensor, the tokens' texts, the
        prompt length and the reward.

    Example:
        >>> view = token_activations(policy, rollouts, mlp_neurons(2), rows=[0, 1], units=[7])
        >>> view.to_dataframe().head()                                         # doctest: +SKIP
    """
    components = components.resolved(policy.model)
    rows = list(range(len(rollouts))) if rows is None else [int(r) for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= len(rollouts):
        raise IpgkitError(f"rows must be indices into the {len(rollouts)} rollouts, got {rows}")
    columns = unit_columns(components, units)
    prompt_ids = [rollouts.row_prompt_ids()[r] for r in rows]
    completion_ids = [rollouts.row_completion_ids()[r] for r in rows]
    per_row: list[list[Tensor]] = [[] for _ in rows]
    for chunk in iter_activations(
        policy,
        components.hook_name,
        prompt_ids,
        completion_ids,
        "all",
        internal_batch_size,
        progress=progress,
    ):
        values = components.coordinates(chunk.activations.double())[:, columns]
        for slot in chunk.row_index.unique().tolist():
            per_row[slot].append(values[chunk.row_index == slot])
    rewards = rollouts.rewards
    return TokenActivations(
        components=replace(components, indices=tuple(components.indices[c] for c in columns)),
        rows=rows,
        activations=[torch.cat(parts) for parts in per_row],
        tokens=[
            token_texts(policy, [*p, *c]) for p, c in zip(prompt_ids, completion_ids, strict=True)
        ],
        prompt_lengths=[len(p) for p in prompt_ids],
        rewards=[float("nan") if rewards is None else float(rewards[r]) for r in rows],
    )


def unit_columns(components: ComponentSet, units: Sequence[int] | None) -> list[int]:
    """Positions of hook indices ``units`` among a resolved set's indices (all when None)."""
    if units is None:
        return list(range(len(components.indices)))
    where = {unit: column for column, unit in enumerate(components.indices)}
    missing = [int(u) for u in units if int(u) not in where]
    if missing:
        raise IpgkitError(f"units {missing} are not in the set at {components.hook_name}")
    return [where[int(u)] for u in units]
