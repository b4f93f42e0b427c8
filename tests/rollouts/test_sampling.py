"""ipgkit.rollouts.sampling: KV-cached sampling under hooks, seeded, ordered, checked inputs."""

import dataclasses

import pytest
import torch

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.rollouts import score_rollouts

PROMPTS = [
    "Compute 1+2.",
    "Compute ((17+5)-3)*2.",
    "Ann has 4 pens. She finds 2 more. How many pens now?",
]


def test_rows_follow_problem_order_when_batches_are_length_sorted(policy):
    longest_first = PROMPTS[::-1]
    rollouts = ipgkit.sample(
        policy, longest_first, n=3, temperature=1.0, max_new_tokens=10, seed=2, batch_size=4
    )
    assert [rollouts.problems[g].question for g in rollouts.group_ids.tolist()] == [
        q for q in longest_first for _ in range(3)
    ]
    scores = score_rollouts(policy, rollouts)  # each row scored under its own problem's prompt
    torch.testing.assert_close(scores.logprobs, rollouts.sample_logprobs, atol=1e-5, rtol=0)
    greedy = ipgkit.sample(policy, longest_first, temperature=0.0, max_new_tokens=10, batch_size=2)
    alone = [
        ipgkit.sample(policy, [q], temperature=0.0, max_new_tokens=10).texts[0]
        for q in longest_first
    ]
    assert greedy.texts == alone


def test_greedy_kv_cache_sampler_matches_a_plain_argmax_loop(policy):
    rollouts = ipgkit.sample(policy, PROMPTS, temperature=0.0, max_new_tokens=10)
    for prompt_ids, completion in zip(
        rollouts.prompt_ids, rollouts.row_completion_ids(), strict=True
    ):
        tokens = torch.tensor([prompt_ids])
        for token in completion:
            next_token = policy.model(tokens)[0, -1].argmax().item()
            assert next_token == token
            tokens = torch.cat([tokens, torch.tensor([[next_token]])], dim=1)


def test_sampling_is_seeded_and_groups_are_ordered(policy):
    a = ipgkit.sample(policy, PROMPTS, n=4, temperature=1.0, max_new_tokens=8, seed=3)
    b = ipgkit.sample(policy, PROMPTS, n=4, temperature=1.0, max_new_tokens=8, seed=3)
    c = ipgkit.sample(policy, PROMPTS, n=4, temperature=1.0, max_new_tokens=8, seed=4)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert a.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert a.prompts[1].startswith("Q: Compute ((17")
    raw = ipgkit.sample(policy, ["Verify.\nx"], max_new_tokens=2, format_prompts=False)
    assert raw.prompts == ["Verify.\nx"]


def test_top_k_one_is_greedy(policy):
    greedy = ipgkit.sample(policy, PROMPTS, temperature=0.0, max_new_tokens=8)
    top1 = ipgkit.sample(policy, PROMPTS, temperature=1.3, top_k=1, max_new_tokens=8, seed=9)
    tiny_p = ipgkit.sample(policy, PROMPTS, temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=9)
    assert torch.equal(greedy.completion_ids, top1.completion_ids)
    assert torch.equal(greedy.completion_ids, tiny_p.completion_ids)


def test_stop_token_ends_completion_and_pads_after(policy):
    greedy = ipgkit.sample(policy, PROMPTS, temperature=0.0, max_new_tokens=12)
    stop = greedy.completion_ids[0, 3].item()  # make greedy's 4th token of prompt 0 a stop token
    stopping = dataclasses.replace(policy, stop_token_ids=(stop,))
    rollouts = ipgkit.sample(stopping, PROMPTS, temperature=0.0, max_new_tokens=12)
    for ids, mask, full in zip(
        rollouts.completion_ids, rollouts.completion_mask, greedy.completion_ids, strict=True
    ):
        real = ids[mask].tolist()
        expected = full.tolist()
        if stop in expected:
            expected = expected[: expected.index(stop) + 1]
        assert real == expected
        assert (ids[~mask] == policy.pad_token_id).all()
    assert rollouts.completion_lengths[0] <= 4


def test_steering_applies_during_sampling(policy):
    base = ipgkit.sample(policy, PROMPTS, temperature=0.0, max_new_tokens=8)
    with ipgkit.steer(policy, ipgkit.resid_neurons(1), gamma=1.0):
        same = ipgkit.sample(policy, PROMPTS, temperature=0.0, max_new_tokens=8)
    with ipgkit.steer(policy, ipgkit.resid_neurons(1), gamma=0.0):
        suppressed = ipgkit.sample(policy, PROMPTS, temperature=0.0, max_new_tokens=8)
    assert torch.equal(base.completion_ids, same.completion_ids)
    torch.testing.assert_close(base.sample_logprobs, same.sample_logprobs, rtol=0, atol=0)
    assert not torch.equal(base.sample_logprobs, suppressed.sample_logprobs)


def test_bad_inputs(policy):
    with pytest.raises(IpgkitError, match="empty list"):
        ipgkit.sample(policy, [], max_new_tokens=3)
    with pytest.raises(IpgkitError, match=r"exceeds the context .*\(n_ctx=128\).*lower max_new"):
        ipgkit.sample(policy, ["x" * 100], max_new_tokens=40)
    # a prompt that fills the context alone: a smaller completion budget cannot help
    with pytest.raises(IpgkitError, match=r"128 tokens .*fills the whole context") as raised:
        ipgkit.sample(policy, ["x" * 120], max_new_tokens=1)
    assert "max_new_tokens" not in str(raised.value)
    with pytest.raises(IpgkitError, match="top_p"):
        ipgkit.sample(policy, PROMPTS, top_p=0.0)
    with pytest.raises(IpgkitError, match="temperature"):
        ipgkit.sample(policy, PROMPTS, temperature=-1.0)
    with pytest.raises(IpgkitError, match="no rewards yet"):
        ipgkit.sample(policy, PROMPTS, max_new_tokens=2).advantages()
