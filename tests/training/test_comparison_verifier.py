"""Self-verification in the comparison format: one teacher-forced pass finds the slot that greedy
decoding (restricted to the two marks) would flag first; sampling flags at the model's odds."""

import random
from dataclasses import replace

import pytest
import torch
from scipy.stats import binomtest

from ipgkit.errors import IpgkitError
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.comparison import comparison_table, flagged_prefix
from ipgkit.training.comparison_verifier import first_error_prefixes, flag_logits
from ipgkit.training.interventions import FailedAttempt, SelfProposer
from tests.conftest import tiny_policy


@pytest.fixture(scope="module")
def flagging_policy():
    """A random model (this seed flags on different rows and sometimes on none), with room for
    whole tables."""
    return tiny_policy(seed=4, n_ctx=512)


@pytest.fixture(scope="module")
def items():
    rng = random.Random(0)
    problems = load("arith-word", split="test", n=12, seed=1).problems
    return [
        (p.question, arith.make_varied_failed_attempt(rng, p), split_lines(p.reference))
        for p in problems
    ]


def decoded_first_flag(policy, question, attempt, reference):
    """The reference: decode the table character by character with the raw model, writing each
    given character and choosing each mark greedily between its two options; the text up to the
    first flag."""
    vocab = policy.tokenizer.get_vocab()
    text = f"Verify.\nQ: {question}\nCompare attempt|reference:\n"

    def prefers(bad: str, good: str) -> bool:
        ids = [vocab["<bos>"]] + [vocab[c] for c in text]
        with torch.no_grad():
            logits = policy.model(torch.tensor([ids]))[0, -1]
        return bool(logits[vocab[bad]] > logits[vocab[good]])

    for row in range(1, max(len(attempt), len(reference)) + 1):
        a = attempt[row - 1] if row <= len(attempt) else ""
        r = reference[row - 1] if row <= len(reference) else ""
        text += f"{row} | "
        pairs = [x + y for x, y in zip(a.ljust(len(r), "_"), r.ljust(len(a), "_"), strict=True)]
        for index, pair in enumerate(pairs):
            text += pair
            if prefers("^", "."):
                # a flagged row goes on to its end, pairs only
                return text + "^" + "".join(pairs[index + 1 :]) + " !\n"
            text += "."
        text += " "
        if prefers("!", "="):
            return text + "!\n"
        text += "=\n"
    return None


def test_one_pass_flags_where_greedy_decoding_would(flagging_policy, items):
    found = [draws[0] for draws in first_error_prefixes(flagging_policy, items)]
    expected = [decoded_first_flag(flagging_policy, *item) for item in items]
    assert found == expected
    rows = {None if text is None else text.count("\n") for text in expected}
    assert len(rows) >= 3  # flags on different rows and none: the check is not trivial


def test_sampled_flags_follow_the_models_odds(flagging_policy, items):
    margin = flag_logits(flagging_policy, items[:1])[0][0]
    draws = first_error_prefixes(flagging_policy, items[:1], n=2000, temperature=0.7, seed=3)[0]
    text, slots = comparison_table(*items[0])
    at_first_slot = sum(draw == flagged_prefix(text, slots[0]) for draw in draws)
    odds = torch.sigmoid(margin / 0.7).item()
    assert 0.05 < odds < 0.95
    assert binomtest(at_first_slot, len(draws), odds).pvalue > 1e-3


def test_the_self_proposer_answers_in_the_comparison_format(flagging_policy, items):
    attempts = [
        FailedAttempt(problem, "", tuple(attempt))
        for problem, (_, attempt, _) in zip(
            load("arith-word", split="test", n=12, seed=1).problems, items, strict=True
        )
    ]
    proposer = SelfProposer(flagging_policy, n=2, max_new_tokens=8, style="compare")
    answers = proposer(attempts[:3])
    assert [len(a) for a in answers] == [2, 2, 2]
    assert all(a.startswith("1 | ") for row in answers for a in row if a)
    # a budget larger than the context: each block is written in the room its prefix leaves
    roomy = SelfProposer(flagging_policy, max_new_tokens=5000, style="compare")(attempts[:6])
    flagged = [a for row in roomy for a in row if a.endswith("!\n") or "!\n" in a]
    assert flagged and any(not a.endswith("!\n") for a in flagged)
    with pytest.raises(IpgkitError, match="compares with the reference"):
        SelfProposer(flagging_policy, style="compare", with_reference=False)(attempts[:1])


def test_a_comparison_trained_model_verifies_without_the_reference_in_the_block_format(
    flagging_policy,
):
    trained = replace(flagging_policy, metadata={"verifier_format": "compare"})
    assert SelfProposer(trained).resolved_style == "compare"
    assert SelfProposer(trained, with_reference=False).resolved_style == "verifier"
    assert SelfProposer(flagging_policy).resolved_style == "verifier"  # no recorded format


def test_the_block_is_written_after_the_fix_prompt_of_the_flagged_step(
    flagging_policy, items, monkeypatch
):
    from ipgkit.training import comparison_verifier

    seen = []
    original = comparison_verifier.sample

    def recording(policy, prompts, **settings):
        seen.extend(prompts)
        return original(policy, prompts, **settings)

    monkeypatch.setattr(comparison_verifier, "sample", recording)
    answers = comparison_verifier.propose_by_comparison(flagging_policy, items, max_new_tokens=8)
    expected = []
    for (question, attempt, reference), answer in zip(items, answers, strict=True):
        flagged = decoded_first_flag(flagging_policy, question, attempt, reference)
        if flagged is not None:  # the step is the number of rows up to the flag, written here
            row = flagged.split("attempt|reference:\n", 1)[1].count("\n")
            a = attempt[row - 1] if row <= len(attempt) else ""
            r = reference[row - 1] if row <= len(reference) else ""
            expected.append(f"Fix.\nQ: {question}\nStep {row}: {a}|{r}\n")
            assert answer[0].startswith(flagged.split("attempt|reference:\n", 1)[1])
    assert expected and sorted(seen) == sorted(expected)
