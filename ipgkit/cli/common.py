"""What every ``ipgkit`` subcommand shares: help texts, reward names and table writing."""

from __future__ import annotations

from pathlib import Path

OVERWRITE_HELP = "if --out holds results of other settings, move it aside and start afresh"
MODEL_HELP = (
    "'arith' (embedded), 'smollm2-135m-instruct', a trained or Hugging Face model directory, "
    "a .gguf file, or a hub name such as Qwen/Qwen2.5-Math-1.5B-Instruct"
)
TASK_HELP = "arith-word, arith-chain, gsm8k, math500"
PATH_HELP = "data file or directory (gsm8k, math500)"


def reward_from_name(spec: str, task):
    """``correctness``, ``length`` or ``keywords:wait,check`` -> a reward function."""
    from ipgkit.errors import IpgkitError
    from ipgkit.tasks.rewards import keyword_count, length_reward

    if spec == "correctness":
        return task.correctness
    if spec == "length":
        return length_reward
    if spec.startswith("keywords:") and spec[len("keywords:") :].strip():
        return keyword_count([k.strip() for k in spec[len("keywords:") :].split(",") if k.strip()])
    raise IpgkitError(f"unknown reward {spec!r}; use correctness, length or keywords:w1,w2")


def write_table(frame, out: Path) -> None:
    """``frame`` as Parquet or CSV (by suffix), atomically."""
    from ipgkit.io import atomic_path

    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def print_table(frame) -> None:
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
