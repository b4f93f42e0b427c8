"""The (trajectory, alpha point) rows of a path integral, built by IPG and the gradient baselines
and scored by the engine, and the no-grad log-probabilities at one path point."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet
from ipgkit.memory import MemoryBudget
from ipgkit.models.policy import Policy
from ipgkit.rollouts import token_logprobs
from ipgkit.steering import steer

from .engine import PathGradients, PathPositions, packed_chunks, path_gradients


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
    resolved = components.resolved(policy.model)
    with steer(policy, resolved, float(alpha), positions, baseline):
        scores = token_logprobs(
            policy, prompt_ids, completion_ids, internal_batch_size, memory_budget=memory_budget
        )
    return scores.sequence_logprobs().double()


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
            **({} if store is None else store.engine_hooks()),
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
