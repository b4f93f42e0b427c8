"""The comparison-table verifier format: its first mismatch is the first wrong step."""

import random

import pytest

from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.comparison import comparison_rows, comparison_table, flagged_prefix
from ipgkit.tasks.verification import first_divergence


def test_a_worked_row():
    rows = comparison_rows(["5-5=0", "0+58=78", "#### 78"], ["5-5=0", "0+58=58", "#### 58"])
    assert "".join(text for text, _ in rows) == (
        "1 | 55.--.55.==.00. =\n2 | 00.++.55.88.==.75^88 !\n"
    )
    marks = [text for text, role in rows if role == "mark"]
    assert marks.count("^") == 1 and marks[-1] == "^"
    assert [text for text, role in rows if role == "verdict"] == ["=", "!"]


@pytest.mark.parametrize("seed", range(3))
def test_the_first_flag_is_the_first_wrong_step(seed):
    rng = random.Random(seed)
    for problem in load("arith-chain", split="test", n=30, seed=seed).problems:
        attempt = arith.make_varied_failed_attempt(rng, problem)
        reference = split_lines(problem.reference)
        rows = comparison_rows(attempt, reference)
        text = "".join(piece for piece, _ in rows)
        # hand-made expectation: rows are numbered, and the table stops at the wrong row
        expected = first_divergence(reference, attempt).location
        assert text.count("\n") == expected
        assert text.splitlines()[-1].startswith(f"{expected} | ")
        assert text.endswith(" !\n") and text.count("^") == 1
        # the flagged row holds the whole reference step: every pair's second character
        flagged_row = text.splitlines()[-1][len(f"{expected} | ") : -len(" !")]
        pairs = flagged_row.replace(".", "").replace("^", "")
        assert pairs[1::2].rstrip("_") == reference[expected - 1]
        assert pairs[0::2].rstrip("_") == _padded_step(attempt, expected)


def _padded_step(steps, row):
    return steps[row - 1] if row <= len(steps) else ""


@pytest.mark.parametrize("seed", range(3))
def test_closing_the_probe_at_the_true_slot_gives_the_training_text(seed):
    rng = random.Random(seed)
    for problem in load("arith-word", split="test", n=30, seed=seed).problems:
        attempt = arith.make_varied_failed_attempt(rng, problem)
        reference = split_lines(problem.reference)
        text, slots = comparison_table(problem.question, attempt, reference)
        truth = "".join(piece for piece, _ in comparison_rows(attempt, reference))
        expected = first_divergence(reference, attempt).location
        # the true slot: the first pair of the wrong row whose characters differ
        row_slots = [s for s in slots if s.row == expected and s.kind == "mark"]
        flagged = next(
            (s for s in row_slots if text[s.position - 2] != text[s.position - 1]),
            next(s for s in slots if s.row == expected and s.kind == "verdict"),
        )
        assert flagged_prefix(text, flagged) == text[: text.index("1 | ")] + truth


def test_the_probe_table_has_a_match_in_every_slot_and_a_skipped_step_reads_as_pad():
    text, slots = comparison_table("Compute 1+2.", ["1+2=3"], ["1+2=3", "#### 3"])
    assert {text[s.position] for s in slots if s.kind == "mark"} == {"."}
    assert {text[s.position] for s in slots if s.kind == "verdict"} == {"="}
    assert [s.row for s in slots if s.kind == "verdict"] == [1, 2]
    assert "2 | _#._#._#._#._ ._3. =\n" in text
    verdict_of_row_2 = [s for s in slots if s.kind == "verdict"][1]
    assert flagged_prefix(text, verdict_of_row_2).endswith("._3. !\n")
    first_mark_of_row_2 = next(s for s in slots if s.row == 2)
    assert flagged_prefix(text, first_mark_of_row_2).endswith("2 | _#^_#_#_#_ _3 !\n")
