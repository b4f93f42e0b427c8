"""Same seed, same machine: rollouts, attribution scores and evaluations are identical bit for bit
on CPU (two runs in one process, and the model rebuilt in between)."""

import pandas as pd
import torch

import ipgkit
from ipgkit.components import mlp_neurons
from ipgkit.tasks import length_reward
from tests.conftest import tiny_policy


def run_everything():
    policy = tiny_policy(seed=3, n_ctx=256)
    task = ipgkit.tasks.load("arith-word", split="test", n=6)
    rollouts = ipgkit.sample(
        policy,
        task.problems,
        n=3,
        temperature=0.9,
        top_p=0.9,
        max_new_tokens=12,
        seed=7,
        reward=length_reward,
    )
    result = ipgkit.ipg(
        policy, None, mlp_neurons(1), rollouts=rollouts, n_rollouts=3, n_steps=3, progress=False
    )
    table = ipgkit.evaluate(policy, task, n_samples=2, max_new_tokens=12, seed=5)
    return rollouts, result, table


def test_same_seed_gives_identical_rollouts_scores_and_evaluations():
    first, second = run_everything(), run_everything()
    for name in ("completion_ids", "completion_mask", "sample_logprobs", "rewards"):
        assert torch.equal(getattr(first[0], name), getattr(second[0], name)), name
    assert first[0].texts == second[0].texts
    assert torch.equal(first[1].scores, second[1].scores)
    assert torch.equal(first[1].per_prompt, second[1].per_prompt)
    assert first[1].scores.abs().sum() > 0  # a real attribution, not a vacuous zero
    pd.testing.assert_frame_equal(first[2], second[2], check_exact=True)
