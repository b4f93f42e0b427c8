"""A distilled student in another reasoning style, for the IPG paper's transfer test (its Table 3).

The paper applies components found on a base model to a model distilled from it (for example
Qwen2.5-Math-1.5B -> DeepSeek-R1-Distill-Qwen-1.5B, which starts from the base weights and is
fine-tuned on a stronger model's long traces). The analogue here: the student starts from the
embedded model's weights (so d_model and the residual basis are shared) and is fine-tuned on the
embedded model's *own* correct traces rewritten in a longer style, where a share of the traces
verify every step with its inverse operation::

    48-14=34            48-14=34
    34*5=170     ->     check 34+14=48, so 34
    #### 170            34*5=170
                        check 170/5=34, so 170
                        #### 170

A check line ends by restating the step's result, so "the next step starts from the number that
ends the previous line" stays true. A first format without it (``check 34+14=48``) left the student
continuing from the checked operand, and it checked only 22% of its answers.

The student is much weaker than its teacher (about 0.25 against 0.6 held-out accuracy with the
defaults). Fine-tuning this 0.8M-parameter model with a fresh Adam state damages it: the same
recipe on the teacher's own traces *without* checks already takes accuracy to 0.45, and lower
learning rates (1e-4, or 3e-4 with warm-up and a cosine decay) leave the style half-learned (under
3% of answers check) and accuracy lower still. The transfer experiment reports this student as it
is.

Whether a trace checks is drawn per trace (``check_fraction``), so the student *chooses* how long
to reason: a length reward then has something to attribute (the reasoning-strength experiment).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample
from ipgkit.tasks.base import Task, split_lines

from .sft import SFTConfig, SFTExample, text_example, train_sft

CHECK_PREFIX = "check "
_STEP = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")
_INVERSE = {"+": "-", "-": "+", "*": "/"}


def step_is_right(line: str) -> bool | None:
    """True/False for an ``a op b = c`` line whose arithmetic is right/wrong; else None."""
    match = _STEP.match(line.strip())
    if match is None:
        return None
    a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
    return {"+": a + b, "-": a - b, "*": a * b}[op] == c


def add_checks(solution: str) -> str:
    """Follow every step line ``a op b=c`` with ``check c inv b=a, so c`` (the inverse operation,
    then the result again).

    Only for solutions whose steps are all right (a check line states a true equation).

    Example:
        >>> print(add_checks("48-14=34\\n34*5=170\\n#### 170"))
        48-14=34
        check 34+14=48, so 34
        34*5=170
        check 170/5=34, so 170
        #### 170
    """
    lines = []
    for line in split_lines(solution):
        lines.append(line)
        match = _STEP.match(line.strip())
        if match is None:
            continue
        if not step_is_right(line):
            raise IpgkitError(f"cannot add a check to a wrong step: {line!r}")
        a, op, b, c = match[1], match[2], match[3], match[4]
        lines.append(f"{CHECK_PREFIX}{c}{_INVERSE[op]}{b}={a}, so {c}")
    return "\n".join(lines)


def check_rate(texts: Sequence[str]) -> float:
    """Fraction of completions with at least one check line."""
    if not texts:
        raise IpgkitError("check_rate of no completions")
    return sum(CHECK_PREFIX in text for text in texts) / len(texts)


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill`.

    Attributes:
        samples: teacher completions per problem (temperature ``temperature``); the first correct
            one whose every step is right is kept.
        temperature: teacher sampling temperature.
        check_fraction: share of kept traces rewritten with check lines (the rest stay as they are).
        max_new_tokens: the student's longest completion (check traces are about twice as long).
        sft: fine-tuning settings (the student starts from the teacher's weights).
        seed: sampling seed and the check draw.
    """

    samples: int = 2
    temperature: float = 0.7
    check_fraction: float = 0.5
    max_new_tokens: int = 256
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(
            learning_rate=5e-4, num_train_epochs=3, per_device_train_batch_size=32
        )
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.check_fraction <= 1.0:
            raise IpgkitError(f"check_fraction must be in [0, 1], got {self.check_fraction}")
        if self.samples < 1:
            raise IpgkitError(f"samples must be >= 1, got {self.samples}")


def distillation_examples(
    teacher: Policy, task: Task, config: DistillConfig, progress: bool = False
) -> tuple[list[SFTExample], dict]:
    """The teacher's own correct traces on ``task`` (one per problem), a ``check_fraction`` of them
    rewritten with :func:`add_checks`. Returns the examples and counts (problems, kept, checked)."""
    rollouts = sample(
        teacher,
        task.problems,
        n=config.samples,
        temperature=config.temperature,
        max_new_tokens=task.max_new_tokens,
        seed=config.seed,
        reward=task.correctness,
        progress=progress,
    )
    rng = random.Random(config.seed)
    examples, checked = [], 0
    rewards = rollouts.rewards_by_group()
    for g, problem in enumerate(task.problems):
        trace = _first_clean_trace(
            rollouts.texts[g * config.samples : (g + 1) * config.samples], rewards[g].tolist()
        )
        if trace is None:
            continue
        if rng.random() < config.check_fraction:
            trace, checked = add_checks(trace), checked + 1
        examples.append(
            text_example(
                teacher,
                teacher.prompt_format(problem.statement),
                trace,
                eos=True,
                source=problem.id,
            )
        )
    if not examples:
        raise IpgkitError(f"the teacher solved none of the {len(task)} problems; nothing to distil")
    return examples, {"problems": len(task), "kept": len(examples), "checked": checked}


def _first_clean_trace(texts: Sequence[str], rewards: Sequence[float]) -> str | None:
    for text, reward in zip(texts, rewards, strict=True):
        lines = split_lines(text)
        if reward == 1.0 and all(step_is_right(line) is not False for line in lines):
            return text.strip()
    return None


def distill(
    teacher: Policy, task: Task, config: DistillConfig | None = None, progress: bool = True
) -> tuple[Policy, pd.DataFrame, dict]:
    """Train a student from ``teacher``'s weights on its own traces in the check style.

    Returns the student (a new Policy named ``<teacher>-distilled``; the teacher is untouched),
    the SFT log and the example counts.

    Example:
        >>> train = ipgkit.tasks.load("arith-word", split="train", n=1000)       # doctest: +SKIP
        >>> student, log, counts = distill(policy, train)                       # doctest: +SKIP
    """
    config = config or DistillConfig()
    examples, counts = distillation_examples(teacher, task, config, progress)
    student = teacher.clone()
    student.name = f"{teacher.name}-distilled"
    log = train_sft(student, examples, config.sft, progress=progress)
    student.model.eval()
    return student, log, counts


__all__ = [
    "CHECK_PREFIX",
    "DistillConfig",
    "add_checks",
    "check_rate",
    "distill",
    "distillation_examples",
    "step_is_right",
]
