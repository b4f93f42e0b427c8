"""The InT verification format: a problem, a reference solution and a numbered failed attempt in;
``<intervention>{"location": k, "content": "..."}</intervention>`` out (k is the 1-based step).

The embedded model is trained to answer this prompt; chat models get the same content through their
chat template. The rule-based checker gives the exact answer for step-aligned tasks (arithmetic), as
an upper bound for self-proposed interventions and as ground truth in tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

OPEN, CLOSE = "<intervention>", "</intervention>"


@dataclass(frozen=True)
class Intervention:
    """A one-step fix: replace attempt step ``location`` (1-based) with ``content``."""

    location: int
    content: str


def number_steps(steps: Sequence[str]) -> str:
    """``["a", "b"]`` -> ``"1. a\\n2. b"``."""
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))


def verifier_prompt(question: str, reference: str | None, attempt_steps: Sequence[str]) -> str:
    r"""The plain-text verification prompt the embedded model is trained on; with
    ``reference=None`` it has no reference block (InT's verification without the reference).

    Example:
        >>> print(verifier_prompt("Compute 2+3.", "2+3=5\n#### 5", ["2+3=6", "#### 6"]))
        Verify.
        Q: Compute 2+3.
        Reference:
        2+3=5
        #### 5
        Attempt:
        1. 2+3=6
        2. #### 6
        Intervention:
        <BLANKLINE>
    """
    block = "" if reference is None else f"Reference:\n{reference}\n"
    return (
        f"Verify.\nQ: {question}\n{block}Attempt:\n{number_steps(attempt_steps)}\nIntervention:\n"
    )


#: InT's verification instruction for chat models (problem, reference, numbered attempt in; one
#: replacement step out, in the attempt's voice, without the final answer)
INT_INSTRUCTION = """You are checking a student's solution against a reference solution.

Problem:
{question}

Reference solution:
{reference}

Student's attempt, one numbered step per line:
{attempt}

Find the first step of the attempt that contains a critical error. Write ONE replacement for that step, in the attempt's own style, so that the attempt can continue correctly from there. Do not reveal the final answer.
Answer only with
<intervention>{{"location": <number of the wrong step>, "content": "<the replacement step>"}}</intervention>"""  # noqa: E501 (the prompt's own lines)

#: the same instruction without the reference solution (InT's "verification without reference")
INT_INSTRUCTION_NO_REFERENCE = INT_INSTRUCTION.replace(
    "against a reference solution", "for errors"
).replace("Reference solution:\n{reference}\n\n", "")


def format_intervention(intervention: Intervention) -> str:
    payload = json.dumps({"location": intervention.location, "content": intervention.content})
    return f"{OPEN}{payload}{CLOSE}"


_OPEN_TAG = re.compile(re.escape(OPEN))
_CLOSE_TAG = re.compile(re.escape(CLOSE))
_LOCATION = re.compile(r"""["']?location["']?\s*:\s*["']?(?:step\s*)?(-?\d+(?:\.0+)?)\b""", re.I)
# LaTeX commands whose backslash JSON would read as an escape (\f, \b, \n, \r, \t)
_LATEX = re.compile(
    r"(?<!\\)\\(?=(?:frac|dfrac|tfrac|binom|boxed|bar|beta|bmod|times|text|textbf|theta|tan|tau"
    r"|to|right|rangle|rfloor|rceil|rho|neq|ne|nu|nabla|not|infty)(?![a-zA-Z]))"
)
_CONTENT = re.compile(r"""["']?content["']?\s*:\s*(["'])(.*)\1\s*[,}]?\s*$""", re.S | re.I)


@dataclass(frozen=True)
class ParseOutcome:
    """What :func:`parse_intervention_text` made of a proposer's answer.

    Attributes:
        intervention: the parsed fix, or None.
        status: ``"ok"`` (well-formed), ``"repaired"`` (parsed after repairs), or why it failed:
            ``"no_block"``, ``"bad_json"``, ``"bad_location"``, ``"empty_content"``.
        repairs: the repairs that were needed (``"unclosed"``, ``"quotes"``, ``"escapes"``,
            ``"trailing_comma"``, ``"fenced"``, ``"latex"``, ``"regex"``, ``"location_text"``).
    """

    intervention: Intervention | None
    status: str
    repairs: tuple[str, ...] = ()


def _blocks(text: str) -> list[tuple[str, bool]]:
    """Bodies of the intervention blocks in ``text`` (last one may be unclosed), in order."""
    bodies = []
    starts = [m.end() for m in _OPEN_TAG.finditer(text)]
    for index, start in enumerate(starts):
        stop = starts[index + 1] - len(OPEN) if index + 1 < len(starts) else len(text)
        close = _CLOSE_TAG.search(text, start, stop)
        bodies.append((text[start : close.start()], True) if close else (text[start:stop], False))
    return bodies


def _escape_inside_strings(body: str) -> str:
    """Escape raw newlines, tabs and lone backslashes inside JSON string literals."""
    out, inside, index = [], False, 0
    while index < len(body):
        char = body[index]
        if inside and char == "\\":
            following = body[index + 1 : index + 2]
            if following and following in '"\\/bfnrtu':
                out.append(body[index : index + 2])
                index += 2
                continue
            out.append("\\\\")
        elif inside and char == "\n":
            out.append("\\n")
        elif inside and char == "\t":
            out.append("\\t")
        else:
            if char == '"':
                inside = not inside
            out.append(char)
        index += 1
    return "".join(out)


def _load_payload(body: str) -> tuple[dict | None, list[str]]:
    repairs: list[str] = []
    text = body.strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-z]*\s*|\s*```$", "", text)
        repairs.append("fenced")
    latex = _LATEX.sub(r"\\\\", text)
    attempts = [(latex, ["latex"]), (text, [])] if latex != text else [(text, [])]
    if "'" in text and '"' not in text:
        attempts.append((text.replace("'", '"'), ["quotes"]))
    for candidate, extra in list(attempts):
        escaped = _escape_inside_strings(candidate)
        if escaped != candidate:
            attempts.append((escaped, [*extra, "escapes"]))
    for candidate, extra in list(attempts):
        trimmed = re.sub(r",\s*([}\]])", r"\1", candidate)
        if trimmed != candidate:
            attempts.append((trimmed, [*extra, "trailing_comma"]))
    for candidate, extra in attempts:
        try:
            payload = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(payload, dict):
            return payload, repairs + extra
    location, content = _LOCATION.search(text), _CONTENT.search(text)
    if location and content:  # last resort: the two fields by pattern
        return {"location": location.group(1), "content": content.group(2)}, [*repairs, "regex"]
    return None, repairs


def _location(value) -> tuple[int | None, bool]:
    """An integer step number from an int, an integral float or text like ``"3"``/``"step 3"``."""
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int):
        return value, False
    if isinstance(value, float) and value.is_integer():
        return int(value), True
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(?:step\s*)?(-?\d+)(?:\.0+)?\s*", value, re.I)
        if match:
            return int(match.group(1)), True
    return None, False


def parse_intervention_text(text: str) -> ParseOutcome:
    """Parse a proposer's answer: the last intervention block that can be read, with repairs.

    Repairs, in order: a missing closing tag, a code fence, LaTeX commands such as ``\\frac`` whose
    backslash JSON would read as an escape, single quotes, raw newlines and lone backslashes inside
    strings, trailing commas, and as a last resort the two fields by pattern.
    The location must be a positive integer (``"3"``, ``3.0`` and ``"step 3"`` are read as 3), the
    content a non-empty string.

    Example:
        >>> answer = "<intervention>{'location': '2', 'content': '38-7=31'}"
        >>> outcome = parse_intervention_text(answer)
        >>> outcome.intervention, outcome.status
        (Intervention(location=2, content='38-7=31'), 'repaired')
        >>> outcome.repairs
        ('unclosed', 'quotes', 'location_text')
    """
    blocks = _blocks(text)
    if not blocks:
        return ParseOutcome(None, "no_block")
    failure = "bad_json"
    for body, closed in reversed(blocks):
        repairs = [] if closed else ["unclosed"]
        payload, more = _load_payload(body)
        if payload is None:
            continue
        repairs += more
        location, converted = _location(payload.get("location"))
        if converted:
            repairs.append("location_text")
        content = payload.get("content")
        if location is None or location < 1:
            failure = "bad_location"
            continue
        if not isinstance(content, str | int | float) or not str(content).strip():
            failure = "empty_content"
            continue
        status = "repaired" if repairs else "ok"
        return ParseOutcome(Intervention(location, str(content).strip()), status, tuple(repairs))
    return ParseOutcome(None, failure)


def parse_intervention(text: str) -> Intervention | None:
    """The last intervention block in ``text`` that can be read (see
    :func:`parse_intervention_text` for the repairs), or None.

    Example:
        >>> parse_intervention('<intervention>{"location": 2, "content": "38-7=31"}</intervention>')
        Intervention(location=2, content='38-7=31')
    """
    return parse_intervention_text(text).intervention


def first_divergence(reference_steps: Sequence[str], attempt_steps: Sequence[str]):
    """Rule-based checker for step-aligned solutions: the first attempt step that differs from the
    reference, replaced by the reference's step; None when the attempt matches the reference."""
    for index, reference_step in enumerate(reference_steps):
        attempt_step = attempt_steps[index] if index < len(attempt_steps) else None
        if attempt_step is None or attempt_step.replace(" ", "") != reference_step.replace(" ", ""):
            return Intervention(index + 1, reference_step)
    return None
