"""Peak memory of one IPG attribution as the completion length doubles (256 .. 2048 tokens).

A random-weight rotary model (6 layers, d_model 256, 8 heads, MLP neurons of block 2 attributed),
one prompt with ``--rollouts`` completions of exactly L tokens, ``--steps`` alpha points each, run
through the IPG engine (``path_gradients``) with ``internal_batch_size`` rows per pass. Each length
runs in a fresh process; the figure is the growth of its peak resident memory over what the
process held before the attribution (model and inputs built), so the lengths compare side by side.
A ratio of 2.0 per doubling is linear growth; 4.0 is quadratic.

    python benchmarks/memory.py [--lengths 256 512 1024 2048] [--rollouts 2] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_length(length: int, rollouts: int, steps: int, batch: int) -> dict:
    import torch
    from transformer_lens import HookedTransformer

    from ipgkit.attribution.ipg import path_gradients
    from ipgkit.components import mlp_neurons
    from ipgkit.models.arith import arith_config, build_policy

    torch.set_num_threads(2)
    config = arith_config(n_layers=6, d_model=256, n_heads=8, d_head=32, d_mlp=1024,
                          n_ctx=length + 64, rotary_dim=32, seed=0)  # fmt: skip
    policy = build_policy(HookedTransformer(config).eval(), name="random")
    generator = torch.Generator().manual_seed(0)
    vocab = policy.model.cfg.d_vocab
    prompt = torch.randint(4, vocab, (32,), generator=generator).tolist()
    completions = [torch.randint(4, vocab, (length,), generator=generator).tolist()
                   for _ in range(rollouts)]  # fmt: skip
    rows = [(c, (k + 1) / steps) for c in completions for k in range(steps)]
    before = current_rss()
    path_gradients(policy, mlp_neurons(2), [prompt] * len(rows), [c for c, _ in rows],
                   torch.tensor([a for _, a in rows]), torch.ones(len(rows)),
                   internal_batch_size=batch)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"length": length, "rows": len(rows), "peak_over_start_mib": (peak - before) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="internal_batch_size")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_length(args.one, args.rollouts, args.steps, args.batch)))
        return
    results = []
    for length in args.lengths:
        command = [sys.executable, __file__, "--one", str(length), "--rollouts",
                   str(args.rollouts), "--steps", str(args.steps), "--batch", str(args.batch)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"IPG engine, random 6-layer model, {args.rollouts} rollouts x {args.steps} alpha points, "
          f"internal_batch_size {args.batch}")  # fmt: skip
    print("| completion tokens | rows | peak over start (MiB) | ratio to previous |")
    print("|---|---|---|---|")
    previous = None
    for row in results:
        ratio = "" if previous is None else f"{row['peak_over_start_mib'] / previous:.2f}"
        print(f"| {row['length']} | {row['rows']} | {row['peak_over_start_mib']:.0f} | {ratio} |")
        previous = row["peak_over_start_mib"]


if __name__ == "__main__":
    main()
