r"""The comparison-table verifier format: attempt and reference compared character by character.

InT's premise is that checking a failed attempt against a reference is easier than solving. Laid
out as two blocks (:func:`ipgkit.tasks.verification.verifier_prompt`), the embedded model cannot
find the first difference (its location accuracy stays at chance, see
``benchmarks/verifier_formats.py``): the characters it must compare are far apart. Here step k
of the attempt and of the reference are interleaved in pairs, and after each pair the verifier
writes a mark, ``.`` (same) or ``^`` (differs); a row ends with a verdict, ``=`` (the step
matches) or ``!`` (the first wrong step). The table stops at the first ``^``; the rest of that
row's pairs follow it unmarked::

    Verify.
    Q: Gus has 39 marbles. He ends with 5 times as many. How many marbles now?
    Compare attempt|reference:
    1 | 33.99.**.55.==.11.89^55 !

The intervention block is then written after a short fix prompt that shows the flagged step of the
attempt and of the reference side by side (:func:`fix_prompt`)::

    Fix.
    Q: Gus has 39 marbles. He ends with 5 times as many. How many marbles now?
    Step 1: 39*5=185|39*5=195
    <intervention>{"location": 1, "content": "39*5=195"}</intervention>

Written after the table, the block's step had to be picked out of the interleaved pairs; the model
recomputed it instead and, on its own failed attempts, repeated its own slip (41% exact fixes at
94% right locations), and a late row left too little context for the block. In the fix prompt the
corrected step is a contiguous copy and the context is short.

The pairs are the given input (no loss); the marks, verdicts and block are what the model writes.
A verifier reads its location from one teacher-forced pass over the whole table with ``.``/``=`` in
every slot: the first slot where the model prefers ``^``/``!`` is where greedy decoding would first
flag a mismatch, because the text before that slot is the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

HEADER = "Compare attempt|reference:\n"
PAD = "_"  # fills the shorter step of a pair (a step the attempt skipped reads as ``_``)
MARKS = {"mark": (".", "^"), "verdict": ("=", "!")}  # slot kind -> (matches, flags an error)

Role = Literal["mark", "verdict"] | None


@dataclass(frozen=True)
class Slot:
    """A place in a comparison table where the verifier writes a mark or a verdict.

    Attributes:
        position: index of the slot's character in the table text.
        row: the 1-based step the slot belongs to.
        kind: ``"mark"`` (after a character pair) or ``"verdict"`` (end of a row).
    """

    position: int
    row: int
    kind: Literal["mark", "verdict"]


def comparison_prompt(question: str) -> str:
    """The text before the first row."""
    return f"Verify.\nQ: {question}\n{HEADER}"


def _step(steps: Sequence[str], row: int) -> str:
    return steps[row - 1] if row <= len(steps) else ""


def comparison_rows(
    attempt_steps: Sequence[str], reference_steps: Sequence[str], truth: bool = True
) -> list[tuple[str, Role]]:
    """The table's rows as (text, role) pieces; role None marks given text.

    ``truth=True``: the verifier's right answer, stopping at the first mismatch (training data).
    ``truth=False``: every row in full with ``.``/``=`` in every slot (the location probe).

    Example:
        >>> "".join(text for text, _ in comparison_rows(["1+1=3"], ["1+1=2"]))
        '1 | 11.++.11.==.32^ !\\n'
        >>> "".join(text for text, _ in comparison_rows(["12+1=23"], ["12+1=13"]))
        '1 | 11.22.++.11.==.21^33 !\\n'
    """
    pieces: list[tuple[str, Role]] = []
    for row in range(1, max(len(attempt_steps), len(reference_steps)) + 1):
        attempt, reference = _step(attempt_steps, row), _step(reference_steps, row)
        width = max(len(attempt), len(reference))
        padded = zip(attempt.ljust(width, PAD), reference.ljust(width, PAD), strict=True)
        pairs = [a + r for a, r in padded]
        pieces.append((f"{row} | ", None))
        wrong_row = False
        for index, pair in enumerate(pairs):
            wrong = truth and pair[0] != pair[1]
            pieces += [(pair, None), (MARKS["mark"][wrong], "mark")]
            if wrong:
                wrong_row = True
                pieces += [("".join(pairs[index + 1 :]), None)] if index + 1 < width else []
                break
        pieces += [(" ", None), (MARKS["verdict"][wrong_row], "verdict"), ("\n", None)]
        if wrong_row:
            break
    return pieces


def comparison_table(
    question: str, attempt_steps: Sequence[str], reference_steps: Sequence[str]
) -> tuple[str, list[Slot]]:
    """The probe text (prompt + every row with ``.``/``=`` in every slot) and its slots."""
    text, slots = comparison_prompt(question), []
    row = 1
    for piece, role in comparison_rows(attempt_steps, reference_steps, truth=False):
        if role is not None:
            slots.append(Slot(len(text), row, role))
        text += piece
        row += piece == "\n"
    return text, slots


def flagged_prefix(text: str, slot: Slot) -> str:
    """The probe table ``text`` up to a flagged slot, the row closed as the format closes it
    (a flagged mark: the row's remaining pairs unmarked, then the verdict); the verifier then
    writes the intervention block."""
    if slot.kind == "verdict":
        return text[: slot.position] + "!\n"
    # the probe row goes on as pair + mark triples up to " =" and the newline
    rest = text[slot.position + 1 : text.index("\n", slot.position) - 2]
    pairs = "".join(rest[i : i + 2] for i in range(0, len(rest), 3))
    return text[: slot.position] + "^" + pairs + " !\n"


def fix_prompt(
    question: str, row: int, attempt_steps: Sequence[str], reference_steps: Sequence[str]
) -> str:
    """The prompt after which the verifier writes the intervention block for flagged step
    ``row``: the question, then step ``row`` of the attempt and of the reference, whole.

    Example:
        >>> fix_prompt("Compute 1+1.", 1, ["1+1=3"], ["1+1=2"])
        'Fix.\\nQ: Compute 1+1.\\nStep 1: 1+1=3|1+1=2\\n'
    """
    attempt, reference = _step(attempt_steps, row), _step(reference_steps, row)
    return f"Fix.\nQ: {question}\nStep {row}: {attempt}|{reference}\n"


def flagged_row(prefix: str) -> int:
    """The step a flagged table (:func:`flagged_prefix`) flags: its number of rows."""
    return prefix[prefix.index(HEADER) + len(HEADER) :].count("\n")


__all__ = ["HEADER", "MARKS", "PAD", "Slot", "comparison_prompt", "comparison_rows"]
__all__ += ["comparison_table", "fix_prompt", "flagged_prefix", "flagged_row"]
