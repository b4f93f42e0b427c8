"""GRPO (DeepSeekMath; TRL's ``GRPOTrainer``) as a thin loop over ipgkit's sampler and scorer.

Each step samples ``num_generations`` completions for a few prompts (with whatever hooks are
active on the model: steering stays on during rollouts and updates), rewards them, turns rewards
into group-relative advantages, and takes a clipped-ratio policy-gradient step, optionally with a
KL penalty to a reference model. Option and metric names follow TRL (``num_generations``, ``beta``,
``epsilon``, ``loss_type``, ``scale_rewards``, ``max_completion_length``, ``temperature``;
``reward``, ``reward_std``, ``frac_reward_zero_std``, ``entropy``, ``kl``,
``completions/mean_length``, ``clip_ratio``).

Runs checkpoint the model, the optimiser, the log and (with ``beta > 0``) the reference weights
to ``output_dir``; sampling seeds and the prompt order are functions of the step, so a resumed
run reproduces the uninterrupted one.

Example:
    >>> config = GRPOConfig(num_generations=8, max_steps=30)              # doctest: +SKIP
    >>> run = grpo_train(policy, pool.problems, task.correctness, config,
    ...                  eval_task=held_out, output_dir="runs/grpo")        # doctest: +SKIP
    >>> run.log[["step", "reward", "frac_reward_zero_std"]]                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit import distributed
from ipgkit.determinism import deterministic_algorithms
from ipgkit.errors import IpgkitError
from ipgkit.evaluation import evaluate
from ipgkit.io import Checkpoint, atomic_write_text, config_record
from ipgkit.models.policy import Policy, require_policy
from ipgkit.progress import tqdm
from ipgkit.rollouts import (
    Rollouts,
    iter_scores,
    sample,
    scaled_advantages,
    token_logprobs,
    zero_std_groups,
)
from ipgkit.tasks.base import Problem, RewardFunction, Task, reward_name

from .grpo_config import GRPOConfig


def step_advantages(rollouts: Rollouts, scale_rewards: str = "group") -> Float[Tensor, " rows"]:
    """Group-relative advantages of a step's rollouts (rows grouped by prompt), in TRL's
    ``scale_rewards`` vocabulary (see :func:`ipgkit.rollouts.scaled_advantages`)."""
    return scaled_advantages(rollouts.rewards_by_group(), scale_rewards).flatten()


def grpo_objective(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    advantages: Float[Tensor, " rows"],
    old_logprobs: Float[Tensor, "rows completion"] | None,
    config: GRPOConfig,
    ref_logprobs: Float[Tensor, "rows completion"] | None = None,
) -> dict[str, float]:
    """Backpropagate the clipped-ratio GRPO loss of these rows into the model's ``.grad`` (chunk by
    chunk) and return the loss and the step metrics (entropy, clip ratio, KL).

    Per token: ``-min(r A, clip(r, 1 - eps, 1 + eps_high) A) + beta * KL`` with
    ``r = pi / pi_old`` and the k3 estimator ``KL = exp(ref - logp) - (ref - logp) - 1``. Rows with
    zero advantage contribute zero gradient (beta = 0).
    """
    lengths = torch.tensor([len(c) for c in completion_ids], dtype=torch.float64)
    rows = len(prompt_ids)
    # under torchrun each rank holds a share of the step's rows: normalise by the whole step's
    all_rows, all_tokens = distributed.all_sum(torch.stack([torch.tensor(rows), lengths.sum()]))
    all_rows, all_tokens = float(all_rows), float(all_tokens)
    if config.loss_type == "grpo":
        row_weight = 1.0 / (lengths * all_rows)  # per-token weight of each row
    elif config.loss_type in ("bnpo", "dapo"):
        row_weight = torch.full((rows,), 1.0 / all_tokens, dtype=torch.float64)
    else:
        row_weight = torch.full(
            (rows,), 1.0 / (all_rows * config.max_completion_length), dtype=torch.float64
        )
    low, high = (
        config.epsilon,
        config.epsilon if config.epsilon_high is None else config.epsilon_high,
    )
    totals = {"loss": 0.0, "entropy": 0.0, "clipped": 0.0, "kl": 0.0, "tokens": 0.0}
    for chunk, scores in iter_scores(
        policy,
        prompt_ids,
        completion_ids,
        config.chunk_size,
        memory_budget=config.memory_budget_mib,
    ):
        logprobs, mask = scores.logprobs, scores.mask.to(scores.logprobs.dtype)
        device = logprobs.device
        advantage = advantages[chunk].to(device, logprobs.dtype)[:, None]
        old = logprobs.detach() if old_logprobs is None else _fit(old_logprobs[chunk], logprobs)
        ratio = torch.exp(logprobs - old)
        clipped_ratio = ratio.clamp(1 - low, 1 + high)
        per_token = -torch.min(ratio * advantage, clipped_ratio * advantage)
        if ref_logprobs is not None and config.beta > 0:
            gap = _fit(ref_logprobs[chunk], logprobs) - logprobs
            kl = torch.exp(gap) - gap - 1
            per_token = per_token + config.beta * kl
            totals["kl"] += float((kl.detach() * mask).sum())
        weight = row_weight[chunk].to(device, logprobs.dtype)[:, None]
        loss = (per_token * mask * weight).sum()
        with deterministic_algorithms(loss.device):
            loss.backward()
        totals["loss"] += float(loss.detach())
        totals["entropy"] += float((scores.entropy.detach() * mask).sum())
        totals["clipped"] += float(
            ((ratio.detach() != clipped_ratio.detach()).to(mask.dtype) * mask).sum()
        )
        totals["tokens"] += float(mask.sum())
    names = sorted(totals)
    summed = distributed.all_sum(torch.tensor([totals[n] for n in names], dtype=torch.float64))
    totals = dict(zip(names, summed.tolist(), strict=True))
    tokens = max(totals["tokens"], 1.0)
    metrics = {
        "loss": totals["loss"],
        "entropy": totals["entropy"] / tokens,
        "clip_ratio": totals["clipped"] / tokens,
    }
    if ref_logprobs is not None and config.beta > 0:
        metrics["kl"] = totals["kl"] / tokens
    return metrics


def _fit(values: Tensor, like: Tensor) -> Tensor:
    """``values`` [rows, >= width] cut to ``like``'s width, on its device and dtype."""
    return values[:, : like.shape[1]].to(like.device, like.dtype)


@dataclass
class GRPORun:
    """What :func:`grpo_train` returns (and keeps in ``output_dir``).

    Attributes:
        log: one row per step: step, reward, reward_std, frac_reward_zero_std, entropy, kl (beta
            > 0), completions/mean_length, clip_ratio, loss, grad_norm, seconds.
        evals: held-out evaluation rows (:func:`ipgkit.evaluate`'s table plus the step).
    """

    log: pd.DataFrame
    evals: pd.DataFrame


def grpo_train(
    policy: Policy,
    problems: Sequence[Problem],
    reward: RewardFunction,
    config: GRPOConfig | None = None,
    eval_task: Task | None = None,
    output_dir: str | Path | None = None,
    ref_policy: Policy | None = None,
    progress: bool = True,
) -> GRPORun:
    """Train ``policy.model`` in place with GRPO on ``problems``.

    Args:
        policy: the policy to train (active hooks apply to sampling and to the loss).
        problems: the training prompts, cycled in a seeded order.
        reward: TRL-style reward (e.g. ``task.correctness``).
        config: the settings.
        eval_task: held-out problems evaluated at step 0, every ``eval_every`` steps and at the end.
        output_dir: checkpoint folder; a rerun with the same settings resumes from it, and one
            holding a run of other settings is refused.
        ref_policy: the KL reference (``beta > 0``); a frozen copy of the initial model if None.

    Returns:
        :class:`GRPORun` with the per-step log and the evaluations.
    """
    policy = require_policy(policy, "grpo_train")
    config = config or GRPOConfig()
    if not problems:
        raise IpgkitError("GRPO needs at least one training problem")
    if distributed.init_from_environment() and config.seeding != "problem":
        raise IpgkitError(
            "under torchrun GRPO needs seeding='problem' (each rank samples its share of a "
            "step's prompts; per-problem seeds make that the same as one process)"
        )
    model = policy.model
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    identity = {
        # seeding was added later: at its default it is left out, so older checkpoints resume
        "config": config_record(config, {"memory_budget_mib": None, "seeding": "batch"}),
        "problems": [p.id for p in problems],
        "reward": reward_name(reward),
        "policy": policy.name,
    }
    store = None
    if output_dir is not None:
        store = Checkpoint(Path(output_dir) / "checkpoint.pt", identity, "GRPO checkpoint")
    saved = store.load() if store is not None else None
    if not distributed.is_main():  # every rank holds the same model; rank 0 writes it
        store, progress = None, False
    start, log, evals = 0, [], []
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, log = saved["step"], saved["log"]
        evals = [pd.DataFrame(saved["evals"])] if saved["evals"] else []
    reference = _reference(policy, ref_policy, config, saved)
    own_reference = reference if ref_policy is None else None

    if start == 0:
        _evaluate_at(0, policy, eval_task, config, evals)
    bar = tqdm(
        total=config.max_steps, initial=start, desc="grpo", unit="step", disable=not progress
    )
    for step in range(start, config.max_steps):
        row = _train_step(policy, optimizer, problems, reward, config, reference, step)
        log.append(row)
        bar.update(1)
        bar.set_postfix(
            reward=f"{row['reward']:.3f}", zero_std=f"{row['frac_reward_zero_std']:.2f}"
        )
        if (step + 1) % config.eval_every == 0 or step + 1 == config.max_steps:
            _evaluate_at(step + 1, policy, eval_task, config, evals)
        if (step + 1) % config.save_steps == 0 or step + 1 == config.max_steps:
            _save(store, step + 1, model, optimizer, log, evals, own_reference)
    bar.close()
    _evaluate_at(config.max_steps, policy, eval_task, config, evals)
    frame = pd.concat(evals, ignore_index=True) if evals else pd.DataFrame()
    return GRPORun(pd.DataFrame(log), frame)


def _train_step(policy, optimizer, problems, reward, config: GRPOConfig, reference, step) -> dict:
    """Sample step ``step``'s rollouts (seed and prompts are functions of the step) and update."""
    started = time.perf_counter()
    chosen = step_problems(problems, config, step)
    mine = [chosen[i] for i in distributed.shard(len(chosen))]  # all of them outside torchrun
    rollouts = step_rollouts(policy, mine, reward, config, step)
    row = grpo_step(policy, optimizer, rollouts, config, reference)
    row.update(step=step + 1, seconds=time.perf_counter() - started)
    return row


def step_rollouts(
    policy: Policy, prompts: Sequence[Problem], reward, config: GRPOConfig, step: int
) -> Rollouts:
    """Step ``step``'s groups: ``num_generations`` completions per prompt with the step's seed
    (a function of the step, so a resumed run samples what the uninterrupted one did)."""
    return sample(
        policy,
        prompts,
        n=config.num_generations,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_completion_length,
        seed=config.seed * 100_003 + step,
        batch_size=config.per_device_train_batch_size,
        reward=reward,
        progress=False,
        seeding=config.seeding,
    )


def _save(store: Checkpoint | None, step, model, optimizer, log, evals, own_reference) -> None:
    """Checkpoint after ``step`` (the reference too when the run made its own) and the log."""
    if store is None:
        return
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "log": log,
        "evals": pd.concat(evals).to_dict("records") if evals else [],
    }
    if own_reference is not None:
        state["reference"] = own_reference.model.state_dict()
    store.save(state)
    atomic_write_text(store.path.with_name("log.csv"), pd.DataFrame(log).to_csv(index=False))


def _reference(
    policy: Policy, ref_policy: Policy | None, config: GRPOConfig, saved
) -> Policy | None:
    """The frozen KL reference (beta > 0): the one given, or a copy of the starting policy (the
    copy saved in the checkpoint when resuming)."""
    if config.beta <= 0:
        return None
    if ref_policy is not None:
        return ref_policy
    reference = policy.clone()
    if saved is not None and saved.get("reference") is not None:
        reference.model.load_state_dict(saved["reference"])
    reference.model.requires_grad_(False)
    return reference


def _evaluate_at(step: int, policy, eval_task, config: GRPOConfig, evals: list) -> None:
    """Append the held-out evaluation at ``step`` to ``evals`` (once per step)."""
    if eval_task is None or any((frame["step"] == step).any() for frame in evals):
        return
    table = evaluate(
        policy,
        eval_task,
        n_samples=config.eval_samples,
        ks=config.eval_ks,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_completion_length,
        seed=config.seed,
        progress=False,
        seeding=config.seeding,
    )
    evals.append(table.assign(step=step))


def step_problems(problems: Sequence[Problem], config: GRPOConfig, step: int) -> list[Problem]:
    """The prompts of ``step``: consecutive slices of one seeded permutation per pass."""
    count = config.prompts_per_step
    chosen = []
    for position in range(step * count, (step + 1) * count):
        epoch, index = divmod(position, len(problems))
        order = torch.randperm(
            len(problems), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)
        )
        chosen.append(problems[int(order[index])])
    return chosen


def grpo_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    config: GRPOConfig,
    reference: Policy | None = None,
) -> dict[str, float]:
    """One GRPO update on rewarded ``rollouts``: advantages, ``num_iterations`` clipped-ratio
    updates, and the step's metrics under TRL's names."""
    if rollouts.rewards is None:
        raise IpgkitError("GRPO needs rewarded rollouts (sample(..., reward=...))")
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    # under torchrun: the whole step's groups (for "batch" scaling and the metrics) and this
    # rank's share of the rows
    shares = distributed.gather((rollouts.rewards_by_group(), rollouts.completion_lengths))
    groups = torch.cat([share[0] for share in shares])
    first = sum(len(share[0]) for share in shares[: distributed.world()[0]])
    mine = slice(first, first + len(rollouts.problems))
    advantages = scaled_advantages(groups, config.scale_rewards)[mine].flatten()
    old = None
    if config.num_iterations > 1:
        old = token_logprobs(
            policy, prompts, completions, config.chunk_size, memory_budget=config.memory_budget_mib
        ).logprobs.float()
    ref = None
    if reference is not None and config.beta > 0:
        ref = token_logprobs(
            reference,
            prompts,
            completions,
            config.chunk_size,
            memory_budget=config.memory_budget_mib,
        ).logprobs.float()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    metrics: dict[str, float] = {}
    for iteration in range(config.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        result = grpo_objective(policy, prompts, completions, advantages, old, config, ref)
        distributed.sum_gradients(parameters)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            parameters, config.max_grad_norm if config.max_grad_norm else float("inf")
        )
        optimizer.step()
        if iteration == 0:
            metrics = {**result, "grad_norm": float(grad_norm)}
    lengths = torch.cat([share[1] for share in shares]).double()
    return {
        "reward": float(groups.mean()),
        "reward_std": float(groups.std(-1).mean()),
        "frac_reward_zero_std": float(zero_std_groups(groups).double().mean()),
        "completions/mean_length": float(lengths.mean()),
        **metrics,
    }


__all__ = [
    "GRPOConfig",
    "GRPORun",
    "grpo_objective",
    "grpo_step",
    "grpo_train",
    "step_advantages",
    "step_problems",
    "step_rollouts",
]
