"""GRPO's settings, named as TRL's ``GRPOConfig`` names them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ipgkit.errors import IpgkitError

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings; names follow TRL's ``GRPOConfig`` where TRL has the option.

    Attributes:
        num_generations: completions per prompt, the group (G in DeepSeekMath).
        per_device_train_batch_size: completions per step; a multiple of ``num_generations``
            (the step's prompts = this / num_generations).
        max_steps: optimiser steps (each on freshly sampled completions).
        learning_rate: Adam learning rate (constant).
        beta: KL coefficient to the reference model (TRL's default 0.0: no reference needed).
        epsilon: lower clipping bound of the ratio, 1 - epsilon.
        epsilon_high: upper bound 1 + epsilon_high (DAPO's clip-higher); None uses ``epsilon``.
        loss_type: token aggregation. ``"grpo"``: mean over each completion's tokens, then over
            completions (DeepSeekMath); ``"bnpo"``/``"dapo"``: mean over all tokens of the step;
            ``"dr_grpo"``: sum over tokens / (completions x max_completion_length) (Dr. GRPO).
        scale_rewards: ``"group"`` divides centred rewards by the group std (GRPO), ``"batch"`` by
            the step's std, ``"none"`` leaves them centred (Dr. GRPO).
        num_iterations: updates per batch of samples (mu in the GRPO paper); the ratio is taken
            against the log-probabilities before the first of them.
        max_completion_length: longest sampled completion, in tokens.
        temperature, top_p: sampling settings (the loss scores at temperature 1).
        max_grad_norm: gradient clipping (0 disables it).
        eval_every: steps between held-out evaluations (also at step 0 and at the end).
        eval_samples: samples per held-out problem for pass@k (0: greedy accuracy only).
        eval_ks: the k of pass@k.
        save_steps: steps between checkpoints (also at the end).
        chunk_size: completions per forward/backward (memory).
        memory_budget_mib: bounds every teacher-forced pass of a step (the loss, and the old and
            reference log-probabilities; see :func:`ipgkit.rollouts.iter_scores`); None: passes
            of ``chunk_size`` rows. A resource setting: not part of the checkpoint's identity.
        seed: sampling and prompt order.
        seeding: ``"batch"`` draws a step's samples from one generator; ``"problem"`` seeds each
            prompt's samples by (seed, problem id, index), so a step gives the same samples
            however its prompts are batched or sharded (required under ``torchrun``, where each
            rank samples and scores its share of every step and gradients are summed).
    """

    num_generations: int = 8
    per_device_train_batch_size: int = 64
    max_steps: int = 30
    learning_rate: float = 1e-4
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: LossType = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = 1
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    max_grad_norm: float = 1.0
    eval_every: int = 10
    eval_samples: int = 8
    eval_ks: tuple[int, ...] = (1, 8)
    save_steps: int = 5
    chunk_size: int = 32
    seed: int = 0
    seeding: Literal["batch", "problem"] = "batch"
    memory_budget_mib: float | None = None

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise IpgkitError(
                f"num_generations must be >= 2 for group advantages, got {self.num_generations}"
            )
        if self.per_device_train_batch_size % self.num_generations:
            raise IpgkitError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a "
                f"multiple of num_generations ({self.num_generations})"
            )
        if self.loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo"):
            raise IpgkitError(
                f"unknown loss_type {self.loss_type!r}; choose grpo, bnpo, dr_grpo or dapo"
            )
        if self.seeding not in ("batch", "problem"):
            raise IpgkitError(f"seeding must be 'batch' or 'problem', got {self.seeding!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise IpgkitError(
                f"scale_rewards must be 'group', 'batch' or 'none', got {self.scale_rewards!r}"
            )
        for name in (
            "max_steps",
            "num_iterations",
            "max_completion_length",
            "eval_every",
            "save_steps",
            "chunk_size",
        ):
            if getattr(self, name) < 1:
                raise IpgkitError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.epsilon < 0 or not math.isfinite(self.learning_rate):
            raise IpgkitError("beta and epsilon must be >= 0 and learning_rate finite")

    @property
    def prompts_per_step(self) -> int:
        return self.per_device_train_batch_size // self.num_generations
