"""Synthetic multi-step arithmetic chain-of-thought tasks, generated deterministically from a seed.

Two families share one step format (``23+15=38`` per line, then ``#### 38``) but ask differently:

- ``arith-word``: a short word problem (``Ann has 23 apples. She buys 15 more. ...``);
- ``arith-chain``: a bare, fully parenthesised expression (``((23+15)-7)*2``).

Each problem is a start value and a list of operations (add n, subtract n, multiply by k), with
every
intermediate value in [0, 999]. Which split a problem belongs to is a hash of its content, so the
train, validation and test splits are disjoint by construction whatever seeds are used.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ipgkit.errors import IpgkitError
from ipgkit.tasks.base import Problem, Task

FAMILIES = ("arith-word", "arith-chain")
MAX_VALUE = 999

_NAMES = (
    ("Ann", "She"),
    ("Ben", "He"),
    ("Cal", "He"),
    ("Dee", "She"),
    ("Eve", "She"),
    ("Gus", "He"),
    ("Ivy", "She"),
    ("Joe", "He"),
    ("Kim", "She"),
    ("Leo", "He"),
    ("Mia", "She"),
    ("Ned", "He"),
)
_OBJECTS = ("apples", "coins", "cards", "books", "shells", "stamps", "pens", "marbles", "beads")
_ADD = ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.", "{p} wins {n} more.")
_SUB = ("{p} gives away {n}.", "{p} loses {n}.", "{p} sells {n}.", "{p} uses {n}.")
_MUL = {2: "{p} doubles them.", 3: "{p} triples them."}
_MUL_ANY = "{p} ends with {k} times as many."


@dataclass(frozen=True)
class Operation:
    """One reasoning step: apply ``symbol`` (``+``, ``-`` or ``*``) with ``operand``."""

    symbol: str
    operand: int

    def apply(self, value: int) -> int:
        if self.symbol == "+":
            return value + self.operand
        if self.symbol == "-":
            return value - self.operand
        return value * self.operand

    def equation(self, value: int) -> str:
        return f"{value}{self.symbol}{self.operand}={self.apply(value)}"


@dataclass(frozen=True)
class Difficulty:
    """How hard generated problems are.

    Attributes:
        min_steps: fewest operations in a problem.
        max_steps: most operations in a problem.
        max_operand: largest start value and add/subtract operand (multipliers are 2 to 5).
    """

    min_steps: int
    max_steps: int
    max_operand: int


STANDARD = Difficulty(min_steps=2, max_steps=5, max_operand=99)
HARD = Difficulty(min_steps=6, max_steps=7, max_operand=199)
TRAINING = (Difficulty(1, 7, 99), Difficulty(1, 7, 199))  # the model's training mix (3:1)

# split name -> (hash bucket the problems must fall in, difficulty)
SPLITS = {
    "train": ("train", STANDARD),
    "validation": ("validation", STANDARD),
    "test": ("test", STANDARD),
    "hard-train": ("train", HARD),
    "hard-validation": ("validation", HARD),
    "hard-test": ("test", HARD),
}


def _bucket(start: int, ops: tuple[Operation, ...]) -> str:
    key = f"{start}" + "".join(f"{op.symbol}{op.operand}" for op in ops)
    digit = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "test" if digit == 0 else "validation" if digit == 1 else "train"


def sample_chain(rng: random.Random, difficulty: Difficulty) -> tuple[int, tuple[Operation, ...]]:
    """Draw a start value and a feasible list of operations (all values stay in [0, 999])."""
    n_steps = rng.randint(difficulty.min_steps, difficulty.max_steps)
    value = rng.randint(2, difficulty.max_operand)
    start, ops = value, []
    for _ in range(n_steps):
        choices = ["-"] if value > MAX_VALUE - 1 else ["+", "-"]
        if value >= 2 and value * 2 <= MAX_VALUE:
            choices.append("*")
        if value < 1:
            choices.remove("-")
        symbol = rng.choice(choices)
        if symbol == "+":
            operand = rng.randint(1, min(difficulty.max_operand, MAX_VALUE - value))
        elif symbol == "-":
            operand = rng.randint(1, min(difficulty.max_operand, value))
        else:
            operand = rng.randint(2, min(5, MAX_VALUE // value))
        op = Operation(symbol, operand)
        ops.append(op)
        value = op.apply(value)
    return start, tuple(ops)


def solution_text(start: int, ops: tuple[Operation, ...]) -> str:
    """The chain of thought: one equation per line, then ``#### answer``."""
    lines, value = [], start
    for op in ops:
        lines.append(op.equation(value))
        value = op.apply(value)
    return "\n".join([*lines, f"#### {value}"])


def final_value(start: int, ops: tuple[Operation, ...]) -> int:
    value = start
    for op in ops:
        value = op.apply(value)
    return value


def word_question(rng: random.Random, start: int, ops: tuple[Operation, ...]) -> str:
    name, pronoun = rng.choice(_NAMES)
    obj = rng.choice(_OBJECTS)
    sentences = [f"{name} has {start} {obj}."]
    for op in ops:
        if op.symbol == "+":
            sentences.append(rng.choice(_ADD).format(p=pronoun, n=op.operand))
        elif op.symbol == "-":
            sentences.append(rng.choice(_SUB).format(p=pronoun, n=op.operand))
        elif op.operand in _MUL and rng.random() < 0.5:
            sentences.append(_MUL[op.operand].format(p=pronoun))
        else:
            sentences.append(_MUL_ANY.format(p=pronoun, k=op.operand))
    sentences.append(f"How many {obj} now?")
    return " ".join(sentences)


def chain_question(start: int, ops: tuple[Operation, ...]) -> str:
    expression = str(start)
    for index, op in enumerate(ops):
        inner = f"({expression})" if index > 0 else expression
        expression = f"{inner}{op.symbol}{op.operand}"
    return f"Compute {expression}."


def make_problem(family: str, rng: random.Random, difficulty: Difficulty, pid: str, bucket=None):
    """Draw one problem of ``family``; with ``bucket`` set, redraw until it falls in that split."""
    while True:
        start, ops = sample_chain(rng, difficulty)
        if bucket is None or _bucket(start, ops) == bucket:
            break
    question = (
        word_question(rng, start, ops) if family == "arith-word" else chain_question(start, ops)
    )
    return Problem(
        id=pid,
        question=question,
        reference=solution_text(start, ops),
        answer=str(final_value(start, ops)),
        metadata={
            "family": family,
            "n_steps": len(ops),
            "start": start,
            "ops": [(op.symbol, op.operand) for op in ops],
        },
    )


_FINAL = re.compile(r"####\s*(-?\d+)")


def extract_final_integer(completion: str) -> str | None:
    """The integer after the first ``####`` marker, or None when there is none."""
    match = _FINAL.search(completion)
    return match.group(1) if match else None


def grade_integer(completion: str, answer: str) -> bool:
    """Exact-match grading of the ``#### N`` line (the arithmetic tasks' answers are integers)."""
    found = extract_final_integer(completion)
    return found is not None and int(found) == int(answer)


def load_arith(family: str, split: str = "test", n: int = 500, seed: int = 0) -> Task:
    """Generate ``n`` problems of an arithmetic family and split, reproducibly from ``seed``.

    Example:
        >>> task = load_arith("arith-word", split="test", n=3)
        >>> task.problems[0].reference.splitlines()[-1].startswith("####")
        True
    """
    if family not in FAMILIES:
        raise IpgkitError(f"unknown arithmetic family {family!r}; choose one of {FAMILIES}")
    if split not in SPLITS:
        raise IpgkitError(f"unknown split {split!r} for {family}; choose one of {tuple(SPLITS)}")
    if n <= 0:
        raise IpgkitError(f"n must be positive, got {n}")
    bucket, difficulty = SPLITS[split]
    family_index = FAMILIES.index(family)
    split_index = tuple(SPLITS).index(split)
    rng = random.Random(f"{seed}:{family_index}:{split_index}")
    problems = [
        make_problem(family, rng, difficulty, f"{family}/{split}/{i}", bucket) for i in range(n)
    ]
    return Task(family, split, problems, grade=grade_integer, max_new_tokens=128)


def make_failed_attempt(rng: random.Random, problem: Problem) -> list[str]:
    """A plausible wrong attempt at ``problem``: one carry/borrow or copy slip at a random step,
    carried forward consistently (the error pattern small models show), as a list of steps."""
    start = problem.metadata["start"]
    ops = [Operation(symbol, operand) for symbol, operand in problem.metadata["ops"]]
    wrong_step = rng.randrange(len(ops) + 1)  # == len(ops): only the final answer line is wrong
    steps, value = [], start
    for index, op in enumerate(ops):
        correct = result = op.apply(value)
        if index == wrong_step:
            if rng.random() < 0.3:  # copied the wrong operand, then computed correctly
                op = Operation(op.symbol, _slip(rng, op.operand, minimum=1))
                result = op.apply(value)
            if result == correct or not 0 <= result <= MAX_VALUE:
                op, result = ops[index], _slip(rng, correct, minimum=0)
        steps.append(f"{value}{op.symbol}{op.operand}={result}")
        value = result
    final = value if wrong_step < len(ops) else _slip(rng, value, minimum=0)
    return [*steps, f"#### {final}"]


def _slip(rng: random.Random, value: int, minimum: int) -> int:
    """A nearby wrong number: off by 1, 10 or 100 (a carry or borrow slip), never ``value``."""
    while True:
        candidate = value + rng.choice((-100, -10, -1, 1, 10, 100, -20, 20))
        if candidate >= minimum and candidate != value:
            return candidate


#: the kinds of first error :func:`make_varied_failed_attempt` plants
FAILURE_KINDS = ("slip", "operand", "skip", "swap")


def make_varied_failed_attempt(rng: random.Random, problem: Problem) -> list[str]:
    """A wrong attempt with one first error of a random kind, later steps computed correctly
    from the wrong value: a carry/borrow ``slip`` or a copied ``operand`` slip (as
    :func:`make_failed_attempt`), a ``skip``ped operation, or two adjacent operations ``swap``ped
    (the errors the embedded model makes on long problems, besides slips). Its final answer
    always differs from the problem's; skips and swaps keep every value in [0, 999]."""
    ops = [Operation(symbol, operand) for symbol, operand in problem.metadata["ops"]]
    answer = int(problem.answer)
    for _ in range(100):
        kind = rng.choice(FAILURE_KINDS if len(ops) > 1 else FAILURE_KINDS[:2])
        if kind in ("slip", "operand"):
            return make_failed_attempt(rng, problem)
        index = rng.randrange(len(ops) - 1 if kind == "swap" else len(ops))
        wrong = list(ops)
        if kind == "skip":
            del wrong[index]
        else:
            wrong[index], wrong[index + 1] = wrong[index + 1], wrong[index]
        steps, value = _replay(problem.metadata["start"], wrong)
        if steps is not None and value != answer:
            return [*steps, f"#### {value}"]
    return make_failed_attempt(rng, problem)


def _replay(start: int, ops: list[Operation]) -> tuple[list[str] | None, int]:
    """The steps of ``ops`` from ``start``, or None when a value leaves [0, 999]."""
    steps, value = [], start
    for op in ops:
        steps.append(op.equation(value))
        value = op.apply(value)
        if not 0 <= value <= MAX_VALUE:
            return None, value
    return steps, value
