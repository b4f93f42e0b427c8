"""The distilled student: check-style rewriting (exact text) and distillation from the embedded
model."""

import re

import pytest
import torch

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.training.distill import (
    CHECK_PREFIX,
    DistillConfig,
    add_checks,
    check_rate,
    distill,
    distillation_examples,
    step_is_right,
)
from ipgkit.training.sft import SFTConfig


def test_add_checks_inverts_every_step_exactly():
    solution = "48-14=34\n34*5=170\n170+71=241\n#### 241"
    assert add_checks(solution) == (
        "48-14=34\ncheck 34+14=48, so 34\n34*5=170\ncheck 170/5=34, so 170\n170+71=241\n"
        "check 241-71=170, so 241\n#### 241"
    )
    lines = add_checks(solution).splitlines()
    for previous, line, following in zip(lines, lines[1:], lines[2:], strict=False):
        if line.startswith(CHECK_PREFIX):  # a true equation, then the result the next step uses
            a, op, b, value, result = re.fullmatch(
                r"check (\d+)([-+/])(\d+)=(\d+), so (\d+)", line
            ).groups()
            computed = {"+": int(a) + int(b), "-": int(a) - int(b), "/": int(a) / int(b)}[op]
            assert computed == int(value) and previous.endswith(f"={result}")
            assert following.startswith(result) or following == "#### 241"
    assert add_checks("#### 5") == "#### 5"


def test_wrong_steps_are_detected_and_never_checked():
    assert step_is_right("12+30=42") is True
    assert step_is_right("231-50=171") is False
    assert step_is_right("#### 42") is None
    with pytest.raises(IpgkitError, match="wrong step"):
        add_checks("231-50=171\n#### 171")


def test_check_rate_counts_completions_with_a_check():
    assert check_rate(["1+1=2\ncheck 2-1=1\n#### 2", "1+1=2\n#### 2"]) == 0.5
    with pytest.raises(IpgkitError):
        check_rate([])
    with pytest.raises(IpgkitError, match="check_fraction"):
        DistillConfig(check_fraction=1.5)


def test_distillation_uses_the_teachers_correct_traces_and_leaves_it_untouched():
    teacher = ipgkit.load_model("arith")
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    task = ipgkit.tasks.load("arith-word", split="train", n=8)
    config = DistillConfig(
        samples=2,
        check_fraction=1.0,
        sft=SFTConfig(learning_rate=1e-4, num_train_epochs=1, per_device_train_batch_size=4),
    )
    examples, counts = distillation_examples(teacher, task, config)
    assert counts["kept"] == len(examples) == counts["checked"] > 0
    for example in examples:
        text = teacher.tokenizer.decode(list(example.completion_ids), skip_special_tokens=True)
        assert CHECK_PREFIX in text and text.rstrip().splitlines()[-1].startswith("####")
        problem = next(p for p in task.problems if p.id == example.source)
        assert task.grade(text, problem.answer)
    student, log, _ = distill(teacher, task, config, progress=False)
    assert student.name == "arith-distilled" and len(log) == -(-len(examples) // 4)
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in student.model.state_dict().items())
