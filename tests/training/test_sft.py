"""SFT: the loss is the mean NLL of exactly the completion tokens."""

import copy

import pytest
import torch

from ipgkit.errors import IpgkitError
from ipgkit.tasks.base import Problem
from ipgkit.training.sft import (
    SFTConfig,
    SFTExample,
    completion_nll,
    reference_examples,
    sft_loss,
    text_example,
    train_sft,
)


def manual_loss(policy, examples):
    """Cross-entropy over the full sequences with the prompt positions labelled -100."""
    total, count = 0.0, 0
    for example in examples:
        tokens = torch.tensor([[*example.prompt_ids, *example.completion_ids]])
        logits = policy.model(tokens)[0, :-1].double()
        labels = tokens[0, 1:].clone()
        labels[: len(example.prompt_ids) - 1] = -100
        total = total + torch.nn.functional.cross_entropy(
            logits, labels, ignore_index=-100, reduction="sum"
        )
        count += len(example.completion_ids)
    return total / count


def test_sft_loss_masks_exactly_the_completion_tokens(policy):
    examples = [
        text_example(policy, "Q: 1+2?\nA:\n", "1+2=3\n", eos=False),
        text_example(policy, "Q: 40*2?\nA:\n", "40*2=80\n#### 80", eos=True),
    ]
    assert examples[1].completion_ids[-1] == policy.tokenizer.eos_token_id
    assert examples[0].completion_ids[-1] != policy.tokenizer.eos_token_id
    loss = sft_loss(policy, examples)
    torch.testing.assert_close(loss.double(), manual_loss(policy, examples), rtol=1e-5, atol=1e-6)
    total, count = completion_nll(policy, examples)
    assert count.tolist() == [len(e.completion_ids) for e in examples]
    assert float(total.sum() / count.sum()) == pytest.approx(loss.item(), rel=1e-5)


def test_train_sft_lowers_the_loss_and_leaves_other_models_alone(policy):
    model = copy.deepcopy(policy)
    problems = [
        Problem(f"p{i}", f"{i}+{i}", f"{i}+{i}={2 * i}\n#### {2 * i}", str(2 * i)) for i in range(6)
    ]
    examples = reference_examples(model, problems)
    before = sft_loss(model, examples).item()
    log = train_sft(
        model,
        examples,
        SFTConfig(learning_rate=3e-3, num_train_epochs=4, per_device_train_batch_size=3),
        progress=False,
    )
    assert (
        list(log.columns) == ["step", "epoch", "loss", "learning_rate", "tokens"] and len(log) == 8
    )
    assert sft_loss(model, examples).item() < 0.8 * before
    assert sft_loss(policy, examples).item() == pytest.approx(before)  # the fixture is untouched


def test_bad_sft_input_is_refused(policy):
    with pytest.raises(IpgkitError, match="empty prompt or completion"):
        SFTExample((1, 2), ())
    with pytest.raises(IpgkitError, match="no SFT examples"):
        train_sft(policy, [], progress=False)
    with pytest.raises(IpgkitError, match="num_train_epochs"):
        SFTConfig(num_train_epochs=0)


def test_learning_rate_schedule_warms_up_then_follows_a_cosine():
    import math

    from ipgkit.training.sft import SFTConfig

    constant = SFTConfig(learning_rate=1e-3)
    assert [constant.learning_rate_at(s, 10) for s in range(3)] == [1e-3] * 3
    config = SFTConfig(learning_rate=1e-3, warmup_steps=4, lr_scheduler_type="cosine")
    assert config.learning_rate_at(0, 9) == pytest.approx(0.25e-3 * 1.0)
    assert config.learning_rate_at(4, 9) == pytest.approx(
        1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    )
    assert config.learning_rate_at(8, 9) == pytest.approx(1e-4)
    with pytest.raises(IpgkitError, match="lr_scheduler_type"):
        SFTConfig(lr_scheduler_type="linear")
