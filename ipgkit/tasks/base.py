"""Problems, tasks and the reward-function contract shared by every task family."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ipgkit.errors import IpgkitError, RewardError


@dataclass(frozen=True)
class Problem:
    """One problem: what is asked, a worked reference solution and the gold final answer.

    Attributes:
        id: stable identifier, unique within its task (e.g. ``"arith-word/test/17"``).
        question: the problem statement, without any prompt formatting (the policy adds that).
        reference: a worked solution in the task's step format (one step per line for arithmetic).
        answer: the gold final answer as a string (``"62"``, ``"\\frac{1}{2}"``).
        metadata: anything else (number of steps, level, subject, ...).
        instruction: the task's answer-format instruction, appended to the question when the
            model is prompted (GSM8K and MATH500: reason step by step, answer in ``\\boxed{}``);
            empty for tasks whose model needs none.
    """

    id: str
    question: str
    reference: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    instruction: str = ""

    @property
    def statement(self) -> str:
        """What the model is asked: the question, then the instruction (if any) on a new line.
        Policies format this into a prompt; verifiers and rewards see the bare question."""
        return f"{self.question}\n{self.instruction}" if self.instruction else self.question


class RewardFunction(Protocol):
    """TRL-style reward: one float per completion; extra dataset columns arrive as keywords."""

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> Sequence[float]: ...


def split_lines(text: str) -> list[str]:
    """Default step segmentation: one step per non-empty line."""
    return [line.strip() for line in text.split("\n") if line.strip()]


@dataclass
class Task:
    """A named list of problems with a grader, a correctness reward and a step splitter.

    Attributes:
        name: the task's name (``"arith-word"``, ``"gsm8k"``, ...).
        split: which split the problems come from.
        problems: the problems, in a fixed order.
        grade: ``grade(completion, answer) -> bool``: is the completion's final answer right?
        split_steps: ``split_steps(text) -> list[str]``: reasoning steps, for process-level analysis
            and for InT's numbered attempts.
        max_new_tokens: a completion budget that fits every reference solution of the task.
    """

    name: str
    split: str
    problems: list[Problem]
    grade: Callable[[str, str], bool]
    split_steps: Callable[[str], list[str]] = split_lines
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        if not self.problems:
            raise IpgkitError(f"task {self.name!r} (split {self.split!r}) has no problems")

    def __len__(self) -> int:
        return len(self.problems)

    def correctness(
        self, prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any
    ) -> list[float]:
        """Reward 1.0 when a completion's final answer matches the ``answer`` column, else 0.0."""
        return [float(self.grade(c, a)) for c, a in zip(completions, answer, strict=True)]

    def subset(self, limit: int | None) -> Task:
        """The first ``limit`` problems (all of them when ``limit`` is None)."""
        if limit is None:
            return self
        if limit <= 0:
            raise IpgkitError(f"limit must be positive, got {limit}")
        return replace(self, problems=self.problems[:limit])


def mix_tasks(tasks: Sequence[Task], name: str | None = None) -> Task:
    """One task holding the problems of several tasks that grade alike (e.g. both arithmetic
    families), interleaved so that any prefix is balanced across them."""
    if not tasks:
        raise IpgkitError("mix_tasks needs at least one task")
    grades = {task.grade for task in tasks}
    if len(grades) > 1:
        raise IpgkitError(f"tasks {[t.name for t in tasks]} grade differently; cannot mix them")
    problems: list[Problem] = []
    for i in range(max(len(task) for task in tasks)):
        problems.extend(task.problems[i] for task in tasks if i < len(task))
    return Task(
        name or "+".join(t.name for t in tasks),
        tasks[0].split,
        problems,
        grade=tasks[0].grade,
        max_new_tokens=max(t.max_new_tokens for t in tasks),
    )


def reward_columns(problems: Sequence[Problem], repeats: int = 1) -> dict[str, list[Any]]:
    """Dataset columns handed to reward functions, one entry per completion (TRL's convention)."""
    columns: dict[str, list[Any]] = {
        "answer": [],
        "reference": [],
        "question": [],
        "problem_id": [],
    }
    for problem in problems:
        for _ in range(repeats):
            columns["answer"].append(problem.answer)
            columns["reference"].append(problem.reference)
            columns["question"].append(problem.question)
            columns["problem_id"].append(problem.id)
    return columns


def reward_name(reward: RewardFunction) -> str:
    """The name results and checkpoints record for a reward function (its ``__name__``, or its
    class name for a callable object).

    Example:
        >>> reward_name(length_reward)                                    # doctest: +SKIP
        'length_reward'
    """
    return getattr(reward, "__name__", type(reward).__name__)


def _takes_trl_keywords(reward: RewardFunction) -> bool:
    """Whether ``reward`` can be called with ``prompts=`` and ``completions=`` keywords."""
    try:
        parameters = inspect.signature(reward).parameters
    except (TypeError, ValueError):  # a builtin or C callable: keep the positional call
        return False
    keywords = {
        name
        for name, parameter in parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return "completions" in keywords and ("prompts" in keywords or takes_any)


def call_reward(
    reward: RewardFunction,
    prompts: Sequence[str],
    completions: Sequence[str],
    **columns: Any,
) -> list[float]:
    """Call a reward function as TRL does, ``reward(prompts=..., completions=...,
    completion_ids=..., **columns)``, so that a reward written for TRL (``def reward(completions,
    **kwargs)``) works unchanged; a function whose parameters are not named ``prompts`` and
    ``completions`` (``lambda p, c, **_: ...``) gets those two positionally. Then check the
    output: one finite float per completion.

    Example:
        >>> def short(completions, **kwargs):  # TRL's documented form
        ...     return [-float(len(c)) for c in completions]
        >>> call_reward(short, ["Q"], ["abc"], answer=["1"])
        [-3.0]
    """
    name = reward_name(reward)
    try:
        if _takes_trl_keywords(reward):
            values = reward(prompts=prompts, completions=completions, **columns)
        else:
            values = reward(prompts, completions, **columns)
    except Exception as exc:  # the user's code: say which reward failed, keep its traceback
        raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc}") from exc
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward {name!r} must return numbers, got {values!r:.200}") from exc
    if len(values) != len(completions):
        raise RewardError(
            f"reward {name!r} returned {len(values)} values for {len(completions)} completions"
        )
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise RewardError(
            f"reward {name!r} returned non-finite values at completions {bad[:10]} "
            f"(e.g. {values[bad[0]]!r})"
        )
    return values
