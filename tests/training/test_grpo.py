"""GRPO: the direction of one step, zero-advantage groups, the loss variants, and exact resume."""

import copy

import pytest
import torch

from ipgkit.errors import IpgkitError
from ipgkit.rollouts import sample, score_rollouts
from ipgkit.tasks.base import Problem
from ipgkit.training.grpo import (
    GRPOConfig,
    grpo_objective,
    grpo_step,
    grpo_train,
    step_advantages,
)


def digit_count(prompts, completions, **_):
    return [float(sum(ch.isdigit() for ch in text)) for text in completions]


def problems(n=2):
    return [Problem(f"p{i}", f"{i}+{i}", f"{i}+{i}={2 * i}", str(2 * i)) for i in range(n)]


def test_one_step_raises_high_advantage_and_lowers_low_advantage_completions(policy):
    model = copy.deepcopy(policy)
    rollouts = sample(
        model, problems(1), n=4, temperature=1.0, max_new_tokens=8, seed=5, reward=digit_count
    )
    advantages = step_advantages(rollouts)
    assert advantages.abs().max() > 0
    best, worst = int(advantages.argmax()), int(advantages.argmin())
    with torch.no_grad():
        before = score_rollouts(model, rollouts).sequence_logprobs()
    config = GRPOConfig(num_generations=4, per_device_train_batch_size=4, learning_rate=1e-3)
    optimizer = torch.optim.SGD(model.model.parameters(), lr=0.05)
    metrics = grpo_step(model, optimizer, rollouts, config)
    with torch.no_grad():
        after = score_rollouts(model, rollouts).sequence_logprobs()
    assert after[best] > before[best] and after[worst] < before[worst]
    assert metrics["frac_reward_zero_std"] == 0.0 and metrics["clip_ratio"] == 0.0
    assert metrics["reward"] == pytest.approx(float(rollouts.rewards.mean()))


def test_a_group_with_equal_rewards_gives_zero_gradient_and_is_counted(policy):
    model = copy.deepcopy(policy)
    rollouts = sample(
        model,
        problems(2),
        n=3,
        temperature=1.0,
        max_new_tokens=6,
        seed=1,
        reward=lambda prompts, completions, **_: [1.0, 1.0, 1.0, 0.0, 1.0, 0.0],
    )
    advantages = step_advantages(rollouts)
    assert torch.equal(advantages[:3], torch.zeros(3)) and advantages[3:].abs().min() > 0
    config = GRPOConfig(num_generations=3, per_device_train_batch_size=6)
    equal_rows = slice(0, 3)
    model.model.zero_grad(set_to_none=False)
    grpo_objective(
        model,
        rollouts.row_prompt_ids()[equal_rows],
        rollouts.row_completion_ids()[equal_rows],
        advantages[equal_rows],
        None,
        config,
    )
    assert all(
        float(p.grad.abs().max()) == 0.0 for p in model.model.parameters() if p.grad is not None
    )
    optimizer = torch.optim.Adam(model.model.parameters(), lr=1e-3)
    metrics = grpo_step(model, optimizer, rollouts, config)
    assert metrics["frac_reward_zero_std"] == 0.5


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_loss_types_weight_tokens_as_documented(policy, loss_type):
    rollouts = sample(
        policy, problems(1), n=3, temperature=1.0, max_new_tokens=7, seed=2, reward=digit_count
    )
    advantages = torch.tensor([1.0, -0.5, 2.0])
    config = GRPOConfig(
        num_generations=3,
        per_device_train_batch_size=3,
        loss_type=loss_type,
        max_completion_length=7,
    )
    model = copy.deepcopy(policy)
    metrics = grpo_objective(
        model, rollouts.row_prompt_ids(), rollouts.row_completion_ids(), advantages, None, config
    )
    lengths = rollouts.completion_lengths.double()
    # with ratio 1 the loss is -sum_rows A_i * (tokens_i x weight_i)
    weights = {
        "grpo": 1 / (lengths * 3),
        "bnpo": 1 / lengths.sum().expand(3),
        "dr_grpo": torch.full((3,), 1 / (3 * 7.0)),
    }[loss_type]
    expected = -(advantages.double() * lengths * weights).sum()
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-6)


def test_kl_to_the_reference_is_zero_at_the_start_and_reported(policy):
    model = copy.deepcopy(policy)
    config = GRPOConfig(
        num_generations=2,
        per_device_train_batch_size=4,
        max_steps=2,
        beta=0.1,
        max_completion_length=6,
        learning_rate=1e-2,
    )
    run = grpo_train(model, problems(2), digit_count, config, progress=False)
    assert run.log.kl.iloc[0] == pytest.approx(0.0, abs=1e-7)
    assert run.log.kl.iloc[1] > 0


def test_resume_after_interruption_reproduces_the_uninterrupted_run(policy, tmp_path, monkeypatch):
    from ipgkit.tasks import load

    held_out = load("arith-chain", split="test", n=4)
    config = GRPOConfig(
        num_generations=2,
        per_device_train_batch_size=4,
        max_steps=4,
        save_steps=2,
        eval_every=2,
        eval_samples=2,
        eval_ks=(1, 2),
        max_completion_length=8,
        learning_rate=1e-3,
    )
    whole = copy.deepcopy(policy)
    full = grpo_train(
        whole, problems(3), digit_count, config, held_out, tmp_path / "a", progress=False
    )

    from ipgkit.io import Checkpoint

    real_save = Checkpoint.save
    calls = []

    def save_then_crash(self, state):
        real_save(self, state)
        calls.append(state["step"])
        if state["step"] == 2:
            raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")

    monkeypatch.setattr(Checkpoint, "save", save_then_crash)
    interrupted = copy.deepcopy(policy)
    with pytest.raises(KeyboardInterrupt):
        grpo_train(
            interrupted, problems(3), digit_count, config, held_out, tmp_path / "b", progress=False
        )
    monkeypatch.setattr(Checkpoint, "save", real_save)
    fresh = copy.deepcopy(policy)  # a new process would start from the initial weights
    resumed = grpo_train(
        fresh, problems(3), digit_count, config, held_out, tmp_path / "b", progress=False
    )
    assert calls == [2]
    columns = [
        "step",
        "reward",
        "frac_reward_zero_std",
        "loss",
        "entropy",
        "completions/mean_length",
    ]
    assert resumed.log[columns].equals(full.log[columns])
    assert resumed.evals.equals(full.evals)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(fresh.model.state_dict()[name], value, rtol=0, atol=0)
    other = GRPOConfig(num_generations=2, per_device_train_batch_size=4, max_steps=5)
    with pytest.raises(
        IpgkitError, match=r"GRPO checkpoint of another run \(differs in \['config'\]"
    ):
        grpo_train(
            copy.deepcopy(policy),
            problems(3),
            digit_count,
            other,
            None,
            tmp_path / "b",
            progress=False,
        )


def test_bad_config_is_refused():
    with pytest.raises(IpgkitError, match="multiple of num_generations"):
        GRPOConfig(num_generations=3, per_device_train_batch_size=8)
    with pytest.raises(IpgkitError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=1, per_device_train_batch_size=4)
    with pytest.raises(IpgkitError, match="unknown loss_type"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(IpgkitError, match="scale_rewards"):
        GRPOConfig(scale_rewards="global")
