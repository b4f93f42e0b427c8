"""A plain HookedTransformer works wherever a Policy is expected: wrapped with its own tokenizer
and a documented default prompt format."""

import copy

import pytest
import torch

import ipgkit
from ipgkit.models.policy import chat_prompt_format, policy_from_hooked
from tests.conftest import tiny_policy


def test_a_plain_hooked_transformer_samples_and_scores_like_its_policy():
    policy = tiny_policy()
    plain = copy.deepcopy(policy.model)  # carries the tokenizer, as from_pretrained sets it
    wrapped = policy_from_hooked(plain)
    assert wrapped.name == plain.cfg.model_name and wrapped.prepend_bos
    assert wrapped.prompt_format("2+3") == chat_prompt_format(plain.tokenizer)("2+3")
    prompts = ["Question: 2+3\nAnswer:"]
    ours = ipgkit.sample(policy, prompts, max_new_tokens=6, format_prompts=False, seed=1)
    theirs = ipgkit.sample(plain, prompts, max_new_tokens=6, format_prompts=False, seed=1)
    assert theirs.texts == ours.texts
    assert torch.equal(theirs.completion_ids, ours.completion_ids)
    a = ipgkit.score_rollouts(policy, ours)
    b = ipgkit.score_rollouts(plain, theirs)
    assert torch.allclose(a.logprobs, b.logprobs)


def test_a_model_without_tokenizer_or_pad_token_is_refused_with_what_is_missing():
    bare = copy.deepcopy(tiny_policy().model)
    bare.tokenizer = None
    with pytest.raises(ipgkit.IpgkitError, match="no tokenizer"):
        ipgkit.sample(bare, ["1+1"], max_new_tokens=2)
    with pytest.raises(ipgkit.IpgkitError, match="takes an ipgkit Policy or a HookedTransformer"):
        ipgkit.sample("arith", ["1+1"], max_new_tokens=2)


def test_evaluate_takes_a_plain_hooked_transformer():
    policy = tiny_policy()
    plain = copy.deepcopy(policy.model)
    task = ipgkit.tasks.load("arith-chain", n=3)
    task = task.__class__(task.name, task.split, task.problems, task.grade, max_new_tokens=4)
    ours = ipgkit.evaluate(policy, task).value.tolist()
    wrapped = ipgkit.evaluate(plain, task)  # the Question/Answer prompt: other prompts, same shape
    assert len(wrapped) == len(ours) and wrapped.task.eq(task.name).all()
