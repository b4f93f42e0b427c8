"""The shipped embedded model: loads offline, reasons imperfectly, and verifies its failed
attempts against the reference in the comparison format (InT)."""

import random

import pytest

import ipgkit
from ipgkit.models.arith import WEIGHTS_DIR
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import first_divergence, parse_intervention, verifier_prompt
from ipgkit.training.interventions import FailedAttempt, SelfProposer


@pytest.fixture(scope="module")
def shipped():
    return ipgkit.load_model("arith")


def test_ships_weights_config_and_tokenizer():
    for name in ("model.safetensors", "config.json", "tokenizer.json", "model_card.json"):
        assert (WEIGHTS_DIR / name).exists(), name
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.iterdir()) < 5_000_000


def test_architecture_and_string_apis(shipped):
    cfg = shipped.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.positional_embedding_type) == (4, 128, "rotary")
    tokens = shipped.model.to_tokens("Q: Compute 3+4.\nA:\n")
    assert tokens[0, 0] == shipped.tokenizer.bos_token_id
    assert shipped.model.to_string(tokens[0, 1:]) == "Q: Compute 3+4.\nA:\n"


def test_reasons_well_on_standard_and_poorly_on_hard_problems(shipped):
    # a regression guard for the whole sampling path: broken padding or rotary offsets collapse it
    accuracy = {}
    for split in ("test", "hard-test"):
        task = load("arith-chain", split=split, n=64)
        rollouts = ipgkit.sample(
            shipped,
            task.problems,
            temperature=0.0,
            max_new_tokens=task.max_new_tokens,
            reward=task.correctness,
        )
        accuracy[split] = float(rollouts.rewards.mean())
        assert all("####" in text for text in rollouts.texts)
    assert accuracy["test"] >= 0.45
    assert accuracy["hard-test"] <= accuracy["test"] - 0.25


def test_finds_and_fixes_the_first_error_in_the_comparison_format(shipped):
    # model card: 99.5% right location and 92% exact fixes on synthetic one-slip attempts, 98.2%
    # and 61.4% on its own failed hard attempts; the rule-based checker is the reference here
    rng = random.Random(0)
    task = load("arith-word", split="test", n=32)
    attempts = [
        FailedAttempt(p, "", tuple(arith.make_failed_attempt(rng, p))) for p in task.problems
    ]
    assert SelfProposer(shipped).resolved_style == "compare"  # the format it was trained on
    answers = SelfProposer(shipped, n=1, temperature=0.0)(attempts)
    parsed = [parse_intervention(row[0]) for row in answers]
    expected = [first_divergence(split_lines(a.problem.reference), a.steps) for a in attempts]
    pairs = list(zip(parsed, expected, strict=True))
    assert sum(p is not None and p.location == e.location for p, e in pairs) >= 28
    assert sum(p == e for p, e in pairs) >= 24


def test_verifies_without_the_reference_in_the_block_format(shipped):
    # without the reference it answers in the block format (99-100% parsed), mostly in the wrong
    # place (17% right location on its own failures): the InT paper's drop
    rng = random.Random(1)
    task = load("arith-chain", split="test", n=16)
    attempts = [arith.make_failed_attempt(rng, p) for p in task.problems]
    problems = zip(task.problems, attempts, strict=True)
    prompts = [verifier_prompt(p.question, None, a) for p, a in problems]
    rollouts = ipgkit.sample(
        shipped, prompts, temperature=0.0, max_new_tokens=96, format_prompts=False
    )
    assert sum(parse_intervention(text) is not None for text in rollouts.texts) >= 14
