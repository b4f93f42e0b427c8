"""Sampling throughput: ipgkit's KV-cached sampler vs TransformerLens ``generate`` (KV cache on).

Same model (the embedded one), same left-padded prompts, same max_new_tokens, both stopping when
every row has emitted EOS. Runs alternate and the median of each is compared, so machine noise
affects both alike. Prints tokens/s for each and the ratio.

    python benchmarks/rollouts.py [--batch 64] [--new-tokens 128] [--repeats 3] [--split hard-test]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import ipgkit
from ipgkit.rollouts import SamplingConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--split", default="test", help="arith-word split: test or hard-test")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy = ipgkit.load_model("arith")
    model = policy.model
    task = ipgkit.tasks.load("arith-word", split=args.split, n=args.batch)
    prompt_ids = policy.encode([policy.prompt_format(p.question) for p in task.problems])
    width = max(map(len, prompt_ids))
    tokens = torch.tensor([[policy.pad_token_id] * (width - len(r)) + r for r in prompt_ids])
    eos = policy.tokenizer.eos_token_id
    config = SamplingConfig(temperature=args.temperature, max_new_tokens=args.new_tokens)

    def run_ipgkit() -> int:
        _ids, mask, _ = generate(policy, prompt_ids, config, torch.Generator().manual_seed(0))
        return int(mask.sum())

    def run_transformer_lens() -> int:
        torch.manual_seed(0)
        out = model.generate(
            tokens,
            max_new_tokens=args.new_tokens,
            do_sample=True,
            temperature=args.temperature,
            stop_at_eos=True,
            eos_token_id=eos,
            use_past_kv_cache=True,
            verbose=False,
        )
        new = out[:, width:]
        is_eos = new == eos
        before_first_eos = (is_eos.cumsum(1) - is_eos.long()) == 0
        return int(before_first_eos.sum())

    timings: dict[str, list[float]] = {"ipgkit": [], "transformer_lens": []}
    counts: dict[str, int] = {}
    run_ipgkit(), run_transformer_lens()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("ipgkit", run_ipgkit), ("transformer_lens", run_transformer_lens)):
            started = time.perf_counter()
            counts[name] = fn()
            timings[name].append(time.perf_counter() - started)
    rates = {name: counts[name] / statistics.median(t) for name, t in timings.items()}
    print(
        f"arith-word {args.split}: batch {args.batch} x up to {args.new_tokens} new tokens, "
        f"prompts up to {width} tokens, "
        f"T={args.temperature}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, rate in rates.items():
        print(
            f"  {name:17s} {counts[name]:6d} tokens  {statistics.median(timings[name]):6.2f} s"
            f"  {rate:8.0f} tokens/s"
        )
    print(
        "throughput ratio ipgkit / transformer_lens: "
        f"{rates['ipgkit'] / rates['transformer_lens']:.2f}x"
    )


if __name__ == "__main__":
    main()
