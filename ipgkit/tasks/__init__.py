"""Tasks: problems with reference solutions and answers, graders, rewards and step segmentation.

Example:
    >>> task = load("arith-word", split="test", n=100)
    >>> gsm8k = load("gsm8k", path="../shared/data/gsm8k", split="test")      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ipgkit.errors import IpgkitError
from ipgkit.tasks.arith import FAMILIES, load_arith
from ipgkit.tasks.base import (
    Problem,
    RewardFunction,
    Task,
    call_reward,
    mix_tasks,
    reward_columns,
    split_lines,
)
from ipgkit.tasks.jsonl import BOXED_INSTRUCTION, load_gsm8k, load_math500
from ipgkit.tasks.rewards import keyword_count, length_reward, step_progress

TASKS = (*FAMILIES, "gsm8k", "math500")


def load(
    name: str,
    split: str = "test",
    path: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    instruction: str | None = None,
) -> Task:
    """Load a task by name.

    Args:
        name: ``"arith-word"``, ``"arith-chain"`` (generated), ``"gsm8k"`` or ``"math500"`` (read
            from ``path``).
        split: for arithmetic ``train``/``validation``/``test`` (standard difficulty) or
            ``hard-train``/``hard-validation``/``hard-test``; for GSM8K ``train``/``test``.
        path: the JSONL file or its directory (GSM8K, MATH500 only).
        n: number of problems (arithmetic: how many to generate, default 500; files: first n).
        seed: generation seed (arithmetic only).
        instruction: GSM8K and MATH500 only: the answer-format instruction after each question
            (default :data:`BOXED_INSTRUCTION`, the paper's format; ``""`` for none).
    """
    if name in FAMILIES:
        if path is not None or instruction is not None:
            raise IpgkitError(
                f"{name} is generated in the embedded model's format; it takes no "
                "path and no instruction"
            )
        return load_arith(name, split=split, n=500 if n is None else n, seed=seed)
    if name in ("gsm8k", "math500"):
        if path is None:
            raise IpgkitError(
                f"{name} is read from disk: pass path=<directory or .jsonl file> "
                "(ipgkit ships no benchmark data)"
            )
        loader = load_gsm8k if name == "gsm8k" else load_math500
        task = loader(path, split, BOXED_INSTRUCTION if instruction is None else instruction)
        return task.subset(n)
    raise IpgkitError(f"unknown task {name!r}; choose one of {TASKS}")


__all__ = [
    "BOXED_INSTRUCTION",
    "TASKS",
    "Problem",
    "RewardFunction",
    "Task",
    "call_reward",
    "keyword_count",
    "length_reward",
    "load",
    "mix_tasks",
    "reward_columns",
    "split_lines",
    "step_progress",
]
