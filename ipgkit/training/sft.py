"""Supervised fine-tuning on prompt -> completion pairs, the loss on completion tokens only.

The loss goes through :func:`ipgkit.rollouts.iter_scores`, the scorer IPG and GRPO use, which only
returns log-probabilities of completion tokens: the prompt is context, never a target. InT trains
on prompt -> prefix + intervention (no suffix, no EOS); reference-solution SFT on prompt ->
reference + EOS.

Example:
    >>> examples = reference_examples(policy, task.problems)             # doctest: +SKIP
    >>> log = train_sft(policy, examples, SFTConfig(num_train_epochs=2))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit import distributed
from ipgkit.determinism import deterministic_algorithms
from ipgkit.errors import IpgkitError
from ipgkit.memory import MemoryBudget
from ipgkit.models.policy import Policy, require_policy
from ipgkit.progress import tqdm
from ipgkit.rollouts import iter_scores, token_logprobs
from ipgkit.tasks.base import Problem


@dataclass(frozen=True)
class SFTExample:
    """One training pair: token ids of the prompt (BOS included) and of the completion.

    Attributes:
        prompt_ids: context, never a target.
        completion_ids: the targets.
        source: where the example came from (e.g. the problem id), for tables.
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.prompt_ids or not self.completion_ids:
            raise IpgkitError(f"SFT example {self.source!r} has an empty prompt or completion")


def text_example(policy: Policy, prompt: str, completion: str, eos: bool, source: str = ""):
    """An :class:`SFTExample` from texts: ``prompt`` as the policy encodes prompts, ``completion``
    with the stop token appended when ``eos``."""
    (prompt_ids,) = policy.encode([prompt])
    (completion_ids,) = policy.encode_completions([completion], add_eos=eos)
    return SFTExample(tuple(prompt_ids), tuple(completion_ids), source)


def reference_examples(policy: Policy, problems: Sequence[Problem]) -> list[SFTExample]:
    """prompt -> reference solution + EOS: the reference-solution SFT baseline of the InT paper."""
    return [
        text_example(policy, policy.prompt_format(p.statement), p.reference, eos=True, source=p.id)
        for p in problems
    ]


@dataclass(frozen=True)
class SFTConfig:
    """Settings of :func:`train_sft` (TRL's ``SFTConfig`` names).

    Attributes:
        learning_rate: peak AdamW learning rate.
        num_train_epochs: passes over the examples.
        per_device_train_batch_size: examples per optimiser step.
        max_grad_norm: gradient clipping norm (0 disables it).
        warmup_steps: linear warm-up from 0 to ``learning_rate``. A fresh Adam state moves every
            weight by about the learning rate per step at first, which small models feel.
        lr_scheduler_type: ``"constant"`` or ``"cosine"`` (to 10% of the peak) after warm-up.
        adam_beta2: Adam's second-moment decay (0.98 is what the embedded model was trained with).
        weight_decay: decoupled (AdamW) weight decay.
        seed: shuffles the examples each epoch.
        memory_budget_mib: bounds each teacher-forced pass (see
            :func:`ipgkit.rollouts.iter_scores`): a batch is split into passes that fit, each
            backpropagated before the next, so a long chain of thought fits; None: one pass per
            batch.
    """

    learning_rate: float = 3e-4
    num_train_epochs: int = 3
    per_device_train_batch_size: int = 16
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    seed: int = 0
    memory_budget_mib: float | None = None

    def __post_init__(self) -> None:
        if self.num_train_epochs < 1 or self.per_device_train_batch_size < 1:
            raise IpgkitError("SFTConfig needs num_train_epochs >= 1 and a batch size >= 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise IpgkitError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.lr_scheduler_type not in ("constant", "cosine"):
            raise IpgkitError(
                f"lr_scheduler_type must be 'constant' or 'cosine', got {self.lr_scheduler_type!r}"
            )
        if self.warmup_steps < 0 or not 0 <= self.adam_beta2 < 1:
            raise IpgkitError("SFTConfig needs warmup_steps >= 0 and 0 <= adam_beta2 < 1")

    def learning_rate_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``."""
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_scheduler_type == "cosine":
            progress = step / max(1, total_steps - 1)
            scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        return self.learning_rate * scale


def completion_nll(
    policy: Policy, examples: Sequence[SFTExample], chunk_size: int = 32
) -> tuple[Float[Tensor, " examples"], Float[Tensor, " examples"]]:
    """Per example: summed negative log-likelihood of the completion and its token count."""
    prompts = [list(e.prompt_ids) for e in examples]
    completions = [list(e.completion_ids) for e in examples]
    scores = token_logprobs(policy, prompts, completions, chunk_size)
    return -scores.logprobs.double().sum(-1), scores.mask.sum(-1).double()


def sft_loss(policy: Policy, examples: Sequence[SFTExample]) -> Float[Tensor, ""]:
    """Mean negative log-likelihood per completion token over ``examples`` (with gradient)."""
    prompts = [list(e.prompt_ids) for e in examples]
    completions = [list(e.completion_ids) for e in examples]
    ((_, scores),) = iter_scores(policy, prompts, completions, with_entropy=False)
    return -scores.logprobs.sum() / scores.mask.sum()


def sft_backward(
    policy: Policy,
    examples: Sequence[SFTExample],
    memory_budget: MemoryBudget | float | None = None,
) -> float:
    """Backpropagate :func:`sft_loss` pass by pass (``memory_budget`` splits the batch into
    passes that fit, each with its own backward); returns the loss's value.

    Example:
        >>> value = sft_backward(policy, examples[:16], memory_budget=512)  # doctest: +SKIP
    """
    prompts = [list(e.prompt_ids) for e in examples]
    completions = [list(e.completion_ids) for e in examples]
    # under torchrun ``examples`` are this rank's share: normalise by the whole batch's tokens
    tokens = float(distributed.all_sum(torch.tensor(float(sum(len(c) for c in completions)))))
    total = torch.zeros((), dtype=torch.float64)
    passes = (
        iter_scores(policy, prompts, completions, with_entropy=False, memory_budget=memory_budget)
        if examples
        else ()  # a rank with no share of a small last batch still joins the sums
    )
    for _, scores in passes:
        loss = -scores.logprobs.sum() / tokens
        with deterministic_algorithms(loss.device):
            loss.backward()
        total += float(loss.detach())
    return float(distributed.all_sum(total))


def train_sft(
    policy: Policy,
    examples: Sequence[SFTExample],
    config: SFTConfig | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Fine-tune ``policy.model`` in place on ``examples``; returns the per-step log (step, epoch,
    loss, tokens). Active hooks (steering) stay active, as in every ipgkit loop. Under ``torchrun``
    each rank scores its share of every batch and the gradients are summed before the step
    (the same update as one process, to float rounding).

    Example:
        >>> log = train_sft(policy, examples, SFTConfig(num_train_epochs=2))  # doctest: +SKIP
        >>> log.loss.iloc[-1] < log.loss.iloc[0]                            # doctest: +SKIP
    """
    policy = require_policy(policy, "train_sft")
    config = config or SFTConfig()
    if not examples:
        raise IpgkitError("no SFT examples to train on")
    parameters = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(0.9, config.adam_beta2),
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(config.seed)
    size = config.per_device_train_batch_size
    steps = config.num_train_epochs * math.ceil(len(examples) / size)
    bar = tqdm(total=steps, desc="sft", unit="step", disable=not progress)
    log = []
    for epoch in range(config.num_train_epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), size):
            batch = [examples[i] for i in order[start : start + size]]
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate_at(len(log), steps)
            optimizer.zero_grad(set_to_none=True)
            mine = _my_share(batch)
            loss = sft_backward(policy, mine, config.memory_budget_mib)
            distributed.sum_gradients(parameters)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            log.append(
                {
                    "step": len(log) + 1,
                    "epoch": epoch,
                    "loss": loss,
                    "learning_rate": optimizer.param_groups[0]["lr"],
                    "tokens": sum(len(e.completion_ids) for e in batch),
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    return pd.DataFrame(log)


def _my_share(batch: list[SFTExample]) -> list[SFTExample]:
    """This rank's block of ``batch`` under torchrun (the whole batch outside it; rank 0 takes a
    batch smaller than the number of processes)."""
    rank, size = distributed.world()
    if len(batch) < size:
        return batch if rank == 0 else []
    return [batch[i] for i in distributed.shard(len(batch))]


__all__ = [
    "SFTConfig",
    "SFTExample",
    "completion_nll",
    "reference_examples",
    "sft_backward",
    "sft_loss",
    "text_example",
    "train_sft",
]
