"""Learned per-unit gains (IPG paper, open question 2: "component-specific scaling").

Steering scales every unit of a set by one gamma. Here each unit gets its own gain g_i, learned
with the model frozen: rollouts are sampled with the gains in place (the one scaling hook, with
one factor per unit), scored teacher-forced with gradient reaching only the gains, and the gains
follow GRPO's group-relative policy gradient of the reward (:func:`~ipgkit.training.grpo_objective`,
the same loss as GRPO's), pulled towards 1 by ``penalty * sum_i (g_i - 1)^2``. A validation
evaluation every ``eval_every`` steps keeps the best gains and stops after ``patience``
evaluations without improvement. The result is a :class:`~ipgkit.components.ComponentSet` with
``gains``, which ``steer`` and ``evaluate`` take like any set (gamma = 1 applies the gains).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from ipgkit.components import ComponentSet, Positions, scaling_hook
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import evaluate
from ipgkit.io import Checkpoint, atomic_write_text, config_record
from ipgkit.models.policy import Policy, require_policy
from ipgkit.progress import tqdm
from ipgkit.tasks.base import Problem, RewardFunction, Task, reward_name

from .grpo import grpo_objective, step_advantages, step_problems, step_rollouts
from .grpo_config import GRPOConfig


@dataclass(frozen=True)
class GainConfig:
    """Settings of :func:`learn_gains`.

    Attributes:
        grpo: sampling and loss settings, GRPO's (group size, completions per step, steps,
            temperature, loss type, reward scaling, seed); ``learning_rate`` is Adam's on the
            gains, which start at 1, so it is about how far a gain moves per step.
        penalty: weight of ``sum_i (g_i - 1)^2``, which keeps gains near 1 where the reward says
            nothing (0: none).
        positions: where the gains apply: ``"all"``, ``"prompt"`` or ``"generated"`` tokens.
        eval_every: steps between validation evaluations (greedy accuracy; also at step 0).
        patience: validation evaluations without improvement before stopping (0: never stop
            early).
        max_gain: gains are clamped to [0, max_gain] after each step.
    """

    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            num_generations=8, per_device_train_batch_size=64, max_steps=40, learning_rate=0.05
        )
    )
    penalty: float = 0.01
    positions: Positions = "all"
    eval_every: int = 5
    patience: int = 3
    max_gain: float = 4.0

    def __post_init__(self) -> None:
        if self.penalty < 0 or self.max_gain <= 0 or self.eval_every < 1 or self.patience < 0:
            raise IpgkitError(
                "penalty and patience must be >= 0, max_gain > 0 and eval_every >= 1, got "
                f"{self.penalty}, {self.patience}, {self.max_gain}, {self.eval_every}"
            )


@dataclass
class GainRun:
    """What :func:`learn_gains` returns.

    Attributes:
        best: the set with the gains that scored best on validation (the last ones without a
            validation task).
        final: the set with the gains after the last step.
        log: one row per step (``reward``, ``reward_std``, ``frac_reward_zero_std``, ``entropy``,
            ``completions/mean_length``, ``gain_mean``, ``gain_min``, ``gain_max``) and
            ``validation_accuracy`` where evaluated.
    """

    best: ComponentSet
    final: ComponentSet
    log: pd.DataFrame


def learn_gains(
    policy: Policy,
    problems: Sequence[Problem],
    components: ComponentSet,
    reward: RewardFunction,
    config: GainConfig | None = None,
    validation: Task | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> GainRun:
    """Learn one gain per unit of ``components`` by the policy gradient of ``reward``.

    Args:
        policy: the policy; its weights are not changed (they are frozen during the run).
        problems: the training prompts (cycled through in a seeded order).
        components: the units (the top units of any method, or a whole site).
        reward: a TRL-style reward, e.g. ``task.correctness``.
        config: a :class:`GainConfig`.
        validation: a task whose greedy accuracy picks the best gains and stops early.
        output_dir: a folder for the checkpoint (after every step) and ``log.csv``; a rerun
            resumes from it, and one from another run is refused.
        progress: a tqdm bar over steps.

    Returns:
        a :class:`GainRun`; ``run.best`` steers like any ComponentSet.

    Example:
        >>> run = learn_gains(policy, train.problems, result.top(10), train.correctness,
        ...                   GainConfig(), validation=validation)            # doctest: +SKIP
        >>> with ipgkit.steer(policy, run.best, gamma=1.0):                      # doctest: +SKIP
        ...     ipgkit.evaluate(policy, test)
    """
    policy = require_policy(policy, "learn_gains")
    config = config or GainConfig()
    units = components.resolved(policy.model)
    if units.gains is not None:
        raise IpgkitError("components already carry gains; pass the plain set to learn new ones")
    gains = torch.nn.Parameter(torch.ones(len(units), dtype=torch.float64))
    optimizer = torch.optim.Adam([gains], lr=config.grpo.learning_rate)
    store = _store(output_dir, policy, problems, units, reward, config)
    state = store.load() if store is not None else None
    step, log, best = 0, [], (float("-inf"), gains.detach().clone(), 0)
    if state is not None:
        with torch.no_grad():
            gains.copy_(state["gains"])
        optimizer.load_state_dict(state["optimizer"])
        step, log, best = state["step"], state["log"], tuple(state["best"])
    hook = (units.hook_name, scaling_hook(units, 1.0, config.positions, None, gains))
    bar = tqdm(total=config.grpo.max_steps, initial=step, desc="learn_gains", disable=not progress)
    with _frozen(policy), policy.model.hooks(fwd_hooks=[hook]):
        while step < config.grpo.max_steps and not _stopped(best, step, config):
            if validation is not None and step % config.eval_every == 0 and not _seen(log, step):
                best = _validate(policy, validation, gains, step, best, log)
            log.append(_gain_step(policy, optimizer, gains, problems, reward, config, step))
            step += 1
            bar.update(1)
            if store is not None:
                store.save(
                    {
                        "step": step,
                        "gains": gains.detach(),
                        "optimizer": optimizer.state_dict(),
                        "log": log,
                        "best": list(best),
                    }
                )
                atomic_write_text(store.path.with_name("log.csv"), pd.DataFrame(log).to_csv())
        if validation is not None and not _stopped(best, step, config) and not _seen(log, step):
            best = _validate(policy, validation, gains, step, best, log)
    bar.close()
    final = replace(units, gains=tuple(gains.detach().tolist()))
    chosen = final if validation is None else replace(units, gains=tuple(best[1].tolist()))
    return GainRun(chosen, final, pd.DataFrame(log))


def _gain_step(policy, optimizer, gains, problems, reward, config: GainConfig, step) -> dict:
    """Sample step ``step``'s groups with the current gains, then one update of the gains."""
    started = time.perf_counter()
    grpo = config.grpo
    rollouts = step_rollouts(policy, step_problems(problems, grpo, step), reward, grpo, step)
    optimizer.zero_grad(set_to_none=True)
    advantages = step_advantages(rollouts, grpo.scale_rewards)
    metrics = grpo_objective(
        policy, rollouts.row_prompt_ids(), rollouts.row_completion_ids(), advantages, None, grpo
    )
    if gains.grad is None:  # no group had signal: only the penalty moves the gains
        gains.grad = torch.zeros_like(gains)
    gains.grad += 2 * config.penalty * (gains.detach() - 1)
    if grpo.max_grad_norm:
        torch.nn.utils.clip_grad_norm_([gains], grpo.max_grad_norm)
    optimizer.step()
    with torch.no_grad():
        gains.clamp_(0.0, config.max_gain)
    groups, learned = rollouts.rewards_by_group(), gains.detach()
    return {
        "step": step + 1,
        "reward": float(groups.mean()),
        "reward_std": float(groups.std(-1).mean()),
        "frac_reward_zero_std": rollouts.frac_reward_zero_std,
        "entropy": metrics["entropy"],
        "completions/mean_length": float(rollouts.completion_lengths.double().mean()),
        "gain_mean": float(learned.mean()),
        "gain_min": float(learned.min()),
        "gain_max": float(learned.max()),
        "seconds": time.perf_counter() - started,
    }


def _validate(policy, validation: Task, gains, step: int, best: tuple, log: list) -> tuple:
    """Greedy validation accuracy with the current gains (the hook is in place); returns the
    updated (best accuracy, its gains, its step)."""
    table = evaluate(policy, validation, progress=False)
    accuracy = float(table.set_index("metric").loc["accuracy@1", "value"])
    log.append({"step": step, "validation_accuracy": accuracy})
    if accuracy > best[0]:
        return accuracy, gains.detach().clone(), step
    return best


def _seen(log: list, step: int) -> bool:
    return any(row["step"] == step and "validation_accuracy" in row for row in log)


def _stopped(best: tuple, step: int, config: GainConfig) -> bool:
    """Early stopping: ``patience`` evaluations since the best one."""
    return config.patience > 0 and step - best[2] >= config.patience * config.eval_every


@contextlib.contextmanager
def _frozen(policy: Policy):
    """The model's parameters take no gradient while the gains learn (restored afterwards)."""
    flags = [p.requires_grad for p in policy.model.parameters()]
    policy.model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(policy.model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


def _store(output_dir, policy, problems, units: ComponentSet, reward, config: GainConfig):
    if output_dir is None:
        return None
    os.makedirs(output_dir, exist_ok=True)
    identity = {
        "config": config_record(config),
        "policy": policy.name,
        "problems": [p.id for p in problems],
        "units": [units.hook_name, list(units.indices)],
        "reward": reward_name(reward),
    }
    return Checkpoint(
        os.path.join(output_dir, "checkpoint.pt"), identity, "learned-gains checkpoint"
    )


__all__ = ["GainConfig", "GainRun", "learn_gains"]
