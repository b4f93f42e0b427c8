import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import ipgkit
from ipgkit.errors import IpgkitError, RewardError
from ipgkit.rollouts import group_advantages, sample, score_rollouts
from ipgkit.tasks import load

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
