import random

import pytest

from ipgkit.errors import IpgkitError
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import (
    Intervention,
    first_divergence,
    format_intervention,
    parse_intervention,
    verifier_prompt,
)


def evaluate_reference(reference: str) -> int:
    value = None
    for line in split_lines(reference)[:-1]:
        left, result = line.split("=")
        assert eval(left) == int(result), line  # each step is arithmetically right
        assert value is None or left.startswith(str(value))  # and chains from the last result
        value = int(result)
    return value


@pytest.mark.parametrize("family", arith.FAMILIES)
@pytest.mark.parametrize("split", ["test", "hard-test"])
def test_references_are_correct_chains_within_difficulty(family, split):
    task = load(family, split=split, n=200)
    _, difficulty = arith.SPLITS[split]
    for problem in task.problems:
        assert evaluate_reference(problem.reference) == int(problem.answer)
        assert problem.reference.endswith(f"#### {problem.answer}")
        n_steps = problem.metadata["n_steps"]
        assert difficulty.min_steps <= n_steps <= difficulty.max_steps
        assert len(split_lines(problem.reference)) == n_steps + 1
        assert 0 <= int(problem.answer) <= arith.MAX_VALUE
        assert task.grade(problem.reference, problem.answer)


def test_generation_is_deterministic_and_seeded():
    a = load("arith-word", split="test", n=20, seed=1)
    b = load("arith-word", split="test", n=20, seed=1)
    c = load("arith-word", split="test", n=20, seed=2)
    assert [p.question for p in a.problems] == [p.question for p in b.problems]
    assert [p.question for p in a.problems] != [p.question for p in c.problems]


def test_splits_are_disjoint_by_content():
    def keys(split):
        task = load("arith-chain", split=split, n=300)
        return {(*tuple(map(tuple, p.metadata["ops"])), p.metadata["start"]) for p in task.problems}

    train, validation, test = keys("train"), keys("validation"), keys("test")
    assert not train & test and not train & validation and not validation & test


def test_families_ask_differently():
    word = load("arith-word", n=1).problems[0].question
    chain = load("arith-chain", n=1).problems[0].question
    assert word.endswith("now?") and chain.startswith("Compute ")


def test_integer_grader():
    assert arith.grade_integer("1+2=3\n#### 3", "3")
    assert arith.grade_integer("#### 003", "3")
    assert not arith.grade_integer("1+2=3\n#### 4", "3")
    assert not arith.grade_integer("1+2=3", "3")


@pytest.mark.parametrize("make", [arith.make_failed_attempt, arith.make_varied_failed_attempt])
def test_failed_attempts_have_one_first_error_that_the_checker_finds(make):
    rng = random.Random(0)
    task = load("arith-word", split="hard-train", n=300)
    for problem in task.problems:
        attempt = make(rng, problem)
        reference = split_lines(problem.reference)
        fix = first_divergence(reference, attempt)
        assert fix is not None and 1 <= fix.location <= len(reference)
        assert attempt[: fix.location - 1] == reference[: fix.location - 1]
        assert fix.content == reference[fix.location - 1]
        assert not task.grade("\n".join(attempt), problem.answer)


def test_varied_attempts_skip_steps_and_never_reach_the_answer():
    rng = random.Random(1)
    problems = load("arith-chain", split="train", n=200).problems
    shapes = {"shorter": 0, "same length": 0}
    for problem in problems:
        attempt = arith.make_varied_failed_attempt(rng, problem)
        shapes["shorter" if len(attempt) < problem.metadata["n_steps"] + 1 else "same length"] += 1
        assert all(line.count("=") == 1 for line in attempt[:-1])
        assert int(attempt[-1].removeprefix("#### ")) != int(problem.answer)
    assert shapes["shorter"] >= 20 and shapes["same length"] >= 100  # skips and the rest


def test_verifier_format_round_trips():
    fix = Intervention(2, "38-7=31")
    block = format_intervention(fix)
    assert block == '<intervention>{"location": 2, "content": "38-7=31"}</intervention>'
    assert parse_intervention("noise " + block) == fix
    assert parse_intervention("<intervention>{broken</intervention>" + block) == fix
    assert (
        parse_intervention('<intervention>{"location": 0, "content": "x"}</intervention>') is None
    )
    prompt = verifier_prompt("Q?", "1+1=2\n#### 2", ["1+1=3", "#### 3"])
    assert "Reference:\n1+1=2\n#### 2\nAttempt:" in prompt
    assert prompt.endswith("Attempt:\n1. 1+1=3\n2. #### 3\nIntervention:\n")
    blind = verifier_prompt("Q?", None, ["1+1=3", "#### 3"])
    assert "Reference" not in blind and blind.endswith("2. #### 3\nIntervention:\n")


def test_bad_arguments():
    with pytest.raises(IpgkitError, match="unknown split 'dev'"):
        load("arith-word", split="dev")
    with pytest.raises(IpgkitError, match="unknown task"):
        load("arith-words")
    with pytest.raises(IpgkitError, match="n must be positive"):
        load("arith-word", n=0)
    with pytest.raises(IpgkitError, match="takes no path"):
        load("arith-word", path="x")
