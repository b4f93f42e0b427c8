"""ipgkit.rollouts.advantages: group-relative advantages by hand on enumerable groups."""

import math

import pytest
import torch

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.rollouts import group_advantages
from ipgkit.tasks import load


def test_group_advantages_exact_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    mean = group_advantages(rewards, "mean")
    torch.testing.assert_close(
        mean, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [1.0, -1.0, 0.0, 0.0]])
    )
    scaled = group_advantages(rewards, "mean_std", eps=0.0)
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(scaled[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(scaled[1], torch.zeros(4))
    torch.testing.assert_close(group_advantages(rewards, "none"), rewards)
    with pytest.raises(IpgkitError, match="at least 2 rollouts"):
        group_advantages(torch.ones(3, 1), "mean_std")


def test_rloo_and_mean_std_advantages_by_hand_on_mixed_groups():
    groups = [
        [1.0, 0.0, 0.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
        [3.0, 1.0, 2.0, 2.0],
        [0.0, 0.0, 0.0, 5.0],
    ]
    rewards = torch.tensor(groups)
    # rloo: each reward minus the mean of the *other* three, written out
    rloo = [[r - (sum(g) - r) / 3 for r in g] for g in groups]
    assert rloo[2] == [3 - 5 / 3, 1 - 7 / 3, 0.0, 0.0]
    torch.testing.assert_close(group_advantages(rewards, "rloo"), torch.tensor(rloo))
    # mean_std (GRPO): (r - mean) / (unbiased std + 1e-4), exactly 0 for the constant group
    expected = []
    for g in groups:
        mean = sum(g) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in g) / 3)
        expected.append([0.0 if std == 0 else (r - mean) / (std + 1e-4) for r in g])
    assert expected[2][0] == pytest.approx(1 / (math.sqrt(2 / 3) + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, "mean_std"), torch.tensor(expected))


def test_zero_std_fraction_on_mixed_groups(policy):
    problems = load("arith-chain", split="test", n=3).problems
    rollouts = ipgkit.sample(policy, problems, n=2, temperature=1.0, max_new_tokens=4, seed=1)
    assert rollouts.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    given = [1.0, 1.0, 0.0, 1.0, 2.0, 2.0]  # group 0 constant, group 1 mixed, group 2 constant
    scored = rollouts.with_rewards(lambda prompts, completions, **_: given)
    assert scored.frac_reward_zero_std == pytest.approx(2 / 3)
    advantages = scored.advantages("mean_std")
    torch.testing.assert_close(advantages[[0, 1, 4, 5]], torch.zeros(4))
    half_std = 0.5 / (math.sqrt(0.5) + 1e-4)  # (0 - 0.5) / (std(0, 1) + eps), std = sqrt(1/2)
    torch.testing.assert_close(advantages[[2, 3]], torch.tensor([-half_std, half_std]))
    all_mixed = rollouts.with_rewards(lambda prompts, completions, **_: [0.0, 1.0] * 3)
    assert all_mixed.frac_reward_zero_std == 0.0
