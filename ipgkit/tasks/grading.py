"""Final-answer extraction and grading: ``#### N`` (GSM8K), ``\\boxed{...}`` (MATH), last number.

GSM8K answers are compared as numbers; MATH answers with math-verify (symbolic equivalence).
"""

from __future__ import annotations

import re
import threading

_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: after ``####``, else the last ``\\boxed{}``, else the last
    number; None when there is none.

    Example:
        >>> extract_answer("3+4=7\\n#### 7"), extract_answer("so \\\\boxed{\\\\frac{1}{2}}.")
        ('7', '\\\\frac{1}{2}')
    """
    found = _HASHES.findall(text)
    if found:
        return found[-1].strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    match = _NUMBER.fullmatch(cleaned)
    if not match:
        numbers = _NUMBER.findall(cleaned)
        if len(numbers) != 1:
            return None
        cleaned = numbers[0].replace(",", "")
    try:
        return float(cleaned.replace(",", ""))
    except ValueError:
        return None


def grade_numeric(completion: str, answer: str) -> bool:
    """GSM8K grading: the extracted final answer equals the gold number."""
    found = extract_answer(completion)
    if found is None:
        return False
    value, gold = _as_number(found), _as_number(answer)
    return value is not None and gold is not None and abs(value - gold) < 1e-6


def grade_math(completion: str, answer: str) -> bool:
    """MATH grading with math-verify: the completion's final answer is equivalent to the gold one.

    math-verify's timeouts use ``signal.alarm``, which works only in the main thread; elsewhere we
    switch them off.
    """
    from math_verify import parse, verify

    found = extract_answer(completion)
    if found is None:
        return False
    in_main = threading.current_thread() is threading.main_thread()
    timeout = {} if in_main else {"parsing_timeout": None}
    gold = parse(f"${answer}$", **timeout)
    prediction = parse(f"${found}$", **timeout)
    if not gold or not prediction:
        return found.replace(" ", "") == answer.replace(" ", "")
    return bool(verify(gold, prediction, **({} if in_main else {"timeout_seconds": None})))
