"""InT: hard pool, proposers, filters with exact yields, SFT pairs and the continuation table."""

import random

import pytest

from ipgkit.models.arith import arith_prompt
from ipgkit.tasks import load
from ipgkit.tasks.arith import make_failed_attempt
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import Intervention, first_divergence, format_intervention
from ipgkit.training.interventions import (
    FailedAttempt,
    ReferenceChecker,
    SelfProposer,
    continuation_table,
    hard_pool,
    int_examples,
    leaks_answer,
    propose_interventions,
)


@pytest.mark.parametrize(
    ("content", "answer", "leaks"),
    [
        ("228+53=281", "281", True),
        ("228+53=2810", "281", False),
        ("1281-1000=281.5", "281", False),
        ("so #### 12", "99", True),
        ("x = \\boxed{3}", "4", True),
        ("\\frac{1}{2} of it", "\\frac{1}{2}", True),
        ("4+4=8", "", False),
        ("a 12 b", "12", True),
        ("a12 b", "12", False),
    ],
)
def test_answer_leak_filter(content, answer, leaks):
    assert leaks_answer(content, answer) is leaks


@pytest.fixture(scope="module")
def policy():
    """A random tiny model with room for hard problems plus a 128-token completion budget."""
    from tests.conftest import tiny_policy

    return tiny_policy(n_ctx=512)


@pytest.fixture(scope="module")
def attempts():
    task = load("arith-word", split="hard-train", n=6)
    rng = random.Random(0)
    made = [FailedAttempt(p, "", tuple(make_failed_attempt(rng, p))) for p in task.problems]
    return task, made


class Scripted:
    """A proposer that answers each attempt with fixed texts."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = answers

    def __call__(self, attempts):
        return [
            list(self.answers[i]) if i < len(self.answers) else [] for i in range(len(attempts))
        ]


def test_filters_count_every_stage(policy, attempts):
    task, made = attempts
    script = [
        ["no block", format_intervention(Intervention(1, "1+1=2"))],  # unparsable, then good
        [format_intervention(Intervention(99, "1+1=2"))],  # outside the attempt
        [format_intervention(Intervention(1, f"9+9={made[2].problem.answer}"))],  # leaks
        ["<intervention>{'location': '2', 'content': '5*5=25'}"],  # repaired, good
        [],  # unanswered
    ]
    result = propose_interventions(
        policy, task, made, Scripted(script), n_continuations=2, require_correct_continuation=False
    )
    yields = dict(zip(result.yields.stage, result.yields["count"], strict=True))
    assert yields == {
        "attempts answered": 4,
        "proposed": 5,
        "parsed": 4,
        "in range": 3,
        "no answer leak": 2,
        "one per attempt": 2,
        "correct continuation": yields["correct continuation"],
        "kept": 2,
    }
    assert result.parse_status == {"no_block": 1, "ok": 3, "repaired": 1}
    assert [i is not None for i in result.candidates] == [True, False, False, True, False, False]
    strict = propose_interventions(policy, task, made, Scripted(script), n_continuations=2)
    # the random tiny model never reaches the answer: the correctness filter keeps nothing
    assert sum(i is not None for i in strict.interventions) == 0


def test_reference_checker_finds_the_first_wrong_step(attempts):
    _, made = attempts
    answers = ReferenceChecker()(made)
    for attempt, texts in zip(made, answers, strict=True):
        expected = first_divergence(split_lines(attempt.problem.reference), attempt.steps)
        assert texts == [format_intervention(expected)]


def test_sft_pairs_are_prefix_plus_intervention_without_eos(policy, attempts):
    task, made = attempts
    script = [[format_intervention(Intervention(3, "7*7=49"))]]
    result = propose_interventions(
        policy,
        task,
        made[:1],
        Scripted(script),
        n_continuations=1,
        require_correct_continuation=False,
    )
    (example,) = int_examples(policy, result)
    text = policy.tokenizer.decode(list(example.completion_ids))
    assert text == f"{made[0].steps[0]}\n{made[0].steps[1]}\n7*7=49\n"
    assert example.completion_ids[-1] != policy.tokenizer.eos_token_id
    assert policy.tokenizer.decode(list(example.prompt_ids)).endswith(
        arith_prompt(made[0].problem.question)
    )
    (bare,) = int_examples(policy, result, "intervention only")
    assert policy.tokenizer.decode(list(bare.completion_ids)) == "7*7=49\n"
    assert policy.tokenizer.decode(list(bare.prompt_ids)).endswith(f"{made[0].steps[1]}\n")
    assert int_examples(policy, result, "with suffix") == []  # no correct continuation was found


def test_hard_pool_and_continuation_table_on_a_model_that_never_solves(policy):
    task = load("arith-chain", split="hard-train", n=3)
    pool = hard_pool(policy, task, k=2, max_new_tokens=12)
    assert len(pool.problems) == 3 and pool.fraction == 1.0 and pool.k == 2
    assert all(a.steps == tuple(split_lines(a.completion)) for a in pool.attempts)
    pairs = [(a, Intervention(1, "1+1=2")) for a in pool.attempts]
    table = continuation_table(policy, task, pairs, n=2)
    assert list(table.condition) == ["prefix", "prefix + original step", "prefix + intervention"]
    assert (
        (table.accuracy == 0).all() and (table.coverage == 0).all() and (table.attempts == 3).all()
    )


def test_self_proposer_uses_the_verifier_format_and_skips_prompts_too_long(policy, attempts):
    _, made = attempts
    proposer = SelfProposer(policy, n=2, max_new_tokens=8, style="verifier")
    assert proposer.prompts(made[:1])[0].startswith("Verify.\nQ: ")
    chat = SelfProposer(policy, style="chat").prompts(made[:1])[0]
    assert "first step of the attempt that contains a critical error" in chat
    long_attempt = FailedAttempt(made[0].problem, "", ("1+1=2",) * 200)
    answers = proposer([made[0], long_attempt])
    assert len(answers[0]) == 2 and answers[1] == []
