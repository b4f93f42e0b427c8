"""ipgkit.rollouts.scoring: teacher-forced log-probs agree with sampling, chunked or not."""

import pytest
import torch
import torch.nn.functional as F

import ipgkit
from ipgkit.rollouts import score_rollouts

PROMPTS = [
    "Compute 1+2.",
    "Compute ((17+5)-3)*2.",
    "Ann has 4 pens. She finds 2 more. How many pens now?",
]


def test_sampled_logprobs_equal_teacher_forced(policy):
    rollouts = ipgkit.sample(policy, PROMPTS, n=3, temperature=1.0, max_new_tokens=12, seed=1)
    scores = score_rollouts(policy, rollouts)
    assert torch.equal(scores.mask, rollouts.completion_mask)
    torch.testing.assert_close(scores.logprobs, rollouts.sample_logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", ["generated", "prompt", "all"])
def test_sampler_and_scorer_agree_on_positions_under_steering(policy, positions):
    # left-padded KV-cached sampling and right-padded teacher forcing must scale the same tokens
    with ipgkit.steer(policy, ipgkit.resid_neurons(0, [0, 3, 7]), gamma=0.2, positions=positions):
        rollouts = ipgkit.sample(
            policy, PROMPTS[::-1], n=2, temperature=1.0, max_new_tokens=10, seed=7
        )
        scores = score_rollouts(policy, rollouts)
    torch.testing.assert_close(scores.logprobs, rollouts.sample_logprobs, atol=1e-5, rtol=0)
    unsteered = score_rollouts(policy, rollouts)
    assert not torch.allclose(unsteered.logprobs, scores.logprobs)


def test_scoring_chunks_match_and_carry_gradient(policy):
    rollouts = ipgkit.sample(policy, PROMPTS, n=2, temperature=1.0, max_new_tokens=10, seed=5)
    whole = score_rollouts(policy, rollouts)
    chunked = score_rollouts(policy, rollouts, chunk_size=2)
    torch.testing.assert_close(whole.logprobs, chunked.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.entropy, chunked.entropy, atol=1e-5, rtol=0)
    loss = -whole.sequence_logprobs().sum()
    loss.backward()
    assert policy.model.W_E.grad is not None and policy.model.W_E.grad.abs().sum() > 0
    policy.model.zero_grad(set_to_none=True)


def test_entropy_is_the_entropy_of_the_next_token_distribution(policy):
    prompt = policy.encode(["Q: 7"])
    completion = [[10, 11]]
    scores = ipgkit.score_completions(policy, prompt, completion)
    tokens = torch.tensor([prompt[0] + completion[0]])
    log_probs = F.log_softmax(policy.model(tokens)[0, len(prompt[0]) - 1 : -1], -1)
    expected = -(log_probs.exp() * log_probs).sum(-1)
    torch.testing.assert_close(scores.entropy[0], expected, atol=1e-5, rtol=0)


def test_scoring_long_completions_in_position_blocks_changes_nothing(policy):
    from ipgkit.rollouts import iter_scores

    prompts = policy.encode(["Q: 1+2\nA:\n", "Q: 30*4\nA:\n"])
    completions = [
        policy.encode_completions(["1+2=3\n#### 3"])[0],
        policy.encode_completions(["30*4=120\n#### 120"])[0],
    ]
    unembed = policy.model.unembed.W_U
    results = []
    for block in (256, 3):
        unembed.grad = None
        ((_, scores),) = iter_scores(policy, prompts, completions, position_chunk_size=block)
        (scores.logprobs.sum() + scores.entropy.sum()).backward()
        results.append((scores.logprobs.detach(), scores.entropy.detach(), unembed.grad.clone()))
    unembed.grad = None
    for whole, blocked in zip(*results, strict=True):
        torch.testing.assert_close(whole, blocked, atol=1e-5, rtol=1e-5)
