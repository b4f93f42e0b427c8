"""ipgkit.rollouts.data: rewards on Rollouts, reward errors, selecting groups."""

import json

import pytest
import torch

import ipgkit
from ipgkit.errors import IpgkitError, RewardError
from ipgkit.rollouts import sample
from ipgkit.tasks import load

PROMPTS = [
    "Compute 1+2.",
    "Compute ((17+5)-3)*2.",
    "Ann has 4 pens. She finds 2 more. How many pens now?",
]


def test_rewards_and_zero_std_fraction(policy):
    task = load("arith-chain", split="test", n=3)
    rollouts = ipgkit.sample(
        policy,
        task.problems,
        n=2,
        temperature=1.0,
        max_new_tokens=6,
        reward=lambda prompts, completions, **kw: [1.0] * len(completions),
    )
    assert rollouts.frac_reward_zero_std == 1.0
    assert torch.equal(rollouts.advantages(), torch.zeros(6))
    frame = rollouts.to_dataframe()
    assert list(frame.columns) == ["problem_id", "sample", "completion", "length", "reward"]
    assert len(frame) == 6


@pytest.mark.parametrize(
    "reward, message",
    [
        (lambda p, c, **kw: [float("nan")] * len(c), "non-finite"),
        (lambda p, c, **kw: [1.0], "returned 1 values for 4 completions"),
        (lambda p, c, **kw: ["yes"] * len(c), "must return numbers"),
    ],
)
def test_bad_reward_functions_get_clear_errors(policy, reward, message):
    with pytest.raises(RewardError, match=message):
        ipgkit.sample(policy, PROMPTS[:2], n=2, max_new_tokens=3, reward=reward)


def test_select_keeps_whole_groups_in_the_order_asked(policy):
    task = load("arith-chain", n=4)
    rollouts = sample(
        policy,
        task.problems,
        n=3,
        temperature=1.0,
        max_new_tokens=6,
        reward=task.correctness,
        seed=3,
    )
    chosen = rollouts.select([2, 0])
    assert [p.id for p in chosen.problems] == [task.problems[2].id, task.problems[0].id]
    assert chosen.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert chosen.texts == rollouts.texts[6:9] + rollouts.texts[0:3]
    assert torch.equal(chosen.completion_ids, rollouts.completion_ids[[6, 7, 8, 0, 1, 2]])
    assert chosen.rewards.tolist() == rollouts.rewards[[6, 7, 8, 0, 1, 2]].tolist()
    with pytest.raises(IpgkitError, match="problem indices"):
        rollouts.select([4])


@pytest.mark.parametrize("rewarded", [True, False])
def test_save_and_load_round_trip_every_field(policy, tmp_path, rewarded):
    task = load("arith-chain", split="train", n=2)
    rollouts = sample(
        policy,
        task.problems,
        n=2,
        max_new_tokens=6,
        temperature=1.0,
        reward=task.correctness if rewarded else None,
        progress=False,
    )
    loaded = ipgkit.Rollouts.load(rollouts.save(tmp_path / "support.safetensors"))
    for name, value in rollouts.state_dict().items():
        again = loaded.state_dict()[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, again), name
        else:  # metadata goes through JSON: tuples in a problem's metadata come back as lists
            assert json.loads(json.dumps(value)) == again, name


def test_loading_something_else_names_the_problem(tmp_path):
    with pytest.raises(IpgkitError, match="no rollouts at"):
        ipgkit.Rollouts.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a file of tensors")
    with pytest.raises(IpgkitError, match="not a safetensors file"):
        ipgkit.Rollouts.load(tmp_path / "junk.safetensors")
