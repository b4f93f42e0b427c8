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


def verifier_prompt(question: str, reference: str, attempt_steps: Sequence[str]) -> str:
    """The plain-text verification prompt the embedded model was trained on."""
    return (
        f"Verify.\nQ: {question}\nReference:\n{reference}\n"
        f"Attempt:\n{number_steps(attempt_steps)}\nIntervention:\n"
    )


def format_intervention(intervention: Intervention) -> str:
    payload = json.dumps({"location": intervention.location, "content": intervention.content})
    return f"{OPEN}{payload}{CLOSE}"


_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


def parse_intervention(text: str) -> Intervention | None:
    """The last well-formed intervention block in ``text``, or None if there is none.

    Example:
        >>> parse_intervention('<intervention>{"location": 2, "content": "38-7=31"}</intervention>')
        Intervention(location=2, content='38-7=31')
    """
    for body in reversed(_BLOCK.findall(text)):
        try:
            payload = json.loads(body)
            location = int(payload["location"])
            content = str(payload["content"]).strip()
        except (ValueError, KeyError, TypeError):
            continue
        if location >= 1 and content:
            return Intervention(location, content)
    return None


def first_divergence(reference_steps: Sequence[str], attempt_steps: Sequence[str]):
    """Rule-based checker for step-aligned solutions: the first attempt step that differs from the
    reference, replaced by the reference's step; None when the attempt matches the reference."""
    for index, reference_step in enumerate(reference_steps):
        attempt_step = attempt_steps[index] if index < len(attempt_steps) else None
        if attempt_step is None or attempt_step.replace(" ", "") != reference_step.replace(" ", ""):
            return Intervention(index + 1, reference_step)
    return None
