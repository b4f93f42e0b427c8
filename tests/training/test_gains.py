"""Learned per-unit gains against an exactly computable J (the enumeration world of the IPG
tests: a 6-token vocabulary, completions of at most 3 tokens), and their resume."""

import pytest
import torch

import ipgkit
from ipgkit.components import mlp_neurons
from ipgkit.errors import IpgkitError
from ipgkit.tasks.base import Problem
from ipgkit.training import gains as gains_module
from ipgkit.training.gains import GainConfig, learn_gains
from ipgkit.training.grpo_config import GRPOConfig
from tests.attribution.test_ipg import (
    HORIZON,
    PROMPT,
    all_completions,
    reference_logprobs,
    reward_of,
    tiny_vocab_policy,
    token_reward,
)

UNITS = [1, 4, 9, 17]


@pytest.fixture(scope="module")
def world():
    policy = tiny_vocab_policy()
    completions = all_completions()
    rewards = torch.tensor([reward_of(c) for c in completions], dtype=torch.float64)
    units = mlp_neurons(0, UNITS).resolved(policy.model)

    def exact_J(gains):  # raw TransformerLens, nothing from ipgkit
        logprobs = reference_logprobs(policy.model, units.hook_name, UNITS, gains, completions)
        return (logprobs.exp() * rewards).sum()

    return policy, units, exact_J


def config(steps=12, **grpo):
    settings = dict(
        num_generations=64,
        per_device_train_batch_size=512,
        max_steps=steps,
        learning_rate=0.1,
        temperature=1.0,  # sampling from pi itself, as the policy gradient assumes
        top_p=1.0,
        max_completion_length=HORIZON,
    )
    return GainConfig(grpo=GRPOConfig(**{**settings, **grpo}), penalty=0.0, patience=0)


PROBLEMS = [Problem(f"copy/{i}", PROMPT, "", "") for i in range(8)]


def test_learned_gains_move_towards_the_gains_that_maximise_J(world):
    policy, units, exact_J = world
    # the maximiser of the exact J over [0, 4]^4, by projected gradient ascent on the reference
    best = torch.ones(len(UNITS), dtype=torch.float64, requires_grad=True)
    for _ in range(300):
        (gradient,) = torch.autograd.grad(exact_J(best), best)
        with torch.no_grad():
            best += 0.2 * gradient
            best.clamp_(0.0, 4.0)
    start = torch.ones(len(UNITS), dtype=torch.float64)
    with torch.no_grad():
        gain_available = float(exact_J(best) - exact_J(start))
    assert gain_available > 0.05  # there is something to learn
    run = learn_gains(policy, PROBLEMS, units, token_reward, config(), progress=False)
    learned = torch.tensor(run.final.gains, dtype=torch.float64)
    with torch.no_grad():
        achieved = float(exact_J(learned) - exact_J(start))
    assert achieved > 0.3 * gain_available, (achieved, gain_available, learned, best)
    assert (learned - best.detach()).norm() < (start - best.detach()).norm()
    assert len(run.log) == 12 and run.log.reward.notna().all()
    assert all(p.requires_grad for p in policy.model.parameters())  # unfrozen afterwards
    with ipgkit.steer(policy, run.final, gamma=1.0):  # the result steers like any set
        assert policy.model(torch.tensor([[1, 4, 5]])).isfinite().all()


def test_an_interrupted_run_resumes_to_the_same_gains(world, tmp_path, monkeypatch):
    policy, units, _ = world
    short = config(steps=4, num_generations=8, per_device_train_batch_size=64)
    whole = learn_gains(policy, PROBLEMS, units, token_reward, short, None, tmp_path / "a", False)
    original = gains_module._gain_step

    def crash_on_third(*args):
        if args[-1] == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(gains_module, "_gain_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        learn_gains(policy, PROBLEMS, units, token_reward, short, None, tmp_path / "b", False)
    monkeypatch.setattr(gains_module, "_gain_step", original)
    resumed = learn_gains(policy, PROBLEMS, units, token_reward, short, None, tmp_path / "b", False)
    assert resumed.final.gains == pytest.approx(whole.final.gains, abs=1e-12)
    assert len(resumed.log) == 4
    other = config(steps=4, learning_rate=0.5)
    with pytest.raises(IpgkitError, match="learned-gains checkpoint"):
        learn_gains(policy, PROBLEMS, units, token_reward, other, None, tmp_path / "b", False)
