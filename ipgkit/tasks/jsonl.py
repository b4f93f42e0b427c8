"""GSM8K and MATH500 from JSONL files at a path the user gives (ipgkit ships no benchmark data)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ipgkit.errors import DataFormatError
from ipgkit.tasks.base import Problem, Task
from ipgkit.tasks.grading import grade_math, grade_numeric, last_boxed

_CALCULATOR = re.compile(r"<<[^>]*>>")

#: the answer format of the IPG paper's models (Qwen2.5-Math, DeepSeek-R1-Distill) in evaluation
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; errors name the file and line (no file, bad JSON, missing keys)."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"data file not found: {path}")
    if path.is_dir():
        raise DataFormatError(f"expected a .jsonl file, got a directory: {path}")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{number}: malformed JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataFormatError(
                f"{path}:{number}: expected a JSON object, got {type(row).__name__}"
            )
        missing = [key for key in required if key not in row]
        if missing:
            raise DataFormatError(f"{path}:{number}: missing field(s) {missing}")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path} holds no rows")
    return rows


def _resolve(path: str | Path, split: str, name: str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.exists():
        raise DataFormatError(f"{name} data not found at {path} (pass path=<file or directory>)")
    return path


def load_gsm8k(path: str | Path, split: str = "test", instruction: str = BOXED_INSTRUCTION) -> Task:
    """GSM8K from ``path`` (a ``.jsonl`` file, or a directory holding ``{split}.jsonl``).

    The reference keeps the worked solution without calculator annotations; the answer is the
    number after ``####``. ``instruction`` follows each question in the prompt (see
    :attr:`Problem.statement`); the grader reads ``####``, ``\\boxed{}`` or the last number.
    """
    file = _resolve(path, split, "GSM8K")
    problems = []
    for index, row in enumerate(read_jsonl(file, ("question", "answer"))):
        solution = _CALCULATOR.sub("", row["answer"])
        if "####" not in solution:
            raise DataFormatError(f"{file}:{index + 1}: answer has no '#### <final>' line")
        answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
        question = row["question"].strip()
        problem_id = f"gsm8k/{split}/{index}"
        problems.append(
            Problem(problem_id, question, solution.strip(), answer, instruction=instruction)
        )
    return Task(name="gsm8k", split=split, problems=problems, grade=grade_numeric)


def load_math500(
    path: str | Path, split: str = "test", instruction: str = BOXED_INSTRUCTION
) -> Task:
    """MATH500 from ``path`` (a ``.jsonl`` file, or a directory holding ``test.jsonl``);
    ``instruction`` follows each question in the prompt."""
    file = _resolve(path, split, "MATH500")
    problems = []
    for index, row in enumerate(read_jsonl(file, ("problem", "solution", "answer"))):
        metadata = {key: row[key] for key in ("subject", "level", "unique_id") if key in row}
        if last_boxed(row["solution"]) is None:
            raise DataFormatError(f"{file}:{index + 1}: solution has no \\boxed{{...}} answer")
        problems.append(
            Problem(
                row.get("unique_id", f"math500/{index}"),
                row["problem"].strip(),
                row["solution"].strip(),
                str(row["answer"]).strip(),
                metadata,
                instruction=instruction,
            )
        )
    return Task(name="math500", split=split, problems=problems, grade=grade_math)
