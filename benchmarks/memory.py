"""Peak memory of one IPG attribution as the completion length doubles (256 .. 2048 tokens).

A random-weight rotary model (6 layers, d_model 256, 8 heads, MLP neurons of block 2 attributed),
one prompt with ``--rollouts`` completions of exactly L tokens, ``--steps`` alpha points each, run
through the IPG engine (``path_gradients``) with ``internal_batch_size`` rows per pass. Each length
runs in a fresh process; the figure is the growth of its peak resident memory over what the
process held before the attribution (model and inputs built), so the lengths compare side by side.
A ratio of 2.0 per doubling is linear growth; 4.0 is quadratic.

With a memory budget (``path_gradients(memory_budget=...)``) attention is fused, blocks above the
hook are recomputed in the backward and rows per pass follow the budget: the script fails (exit 1)
unless every budgeted peak stays under its budget and grows at most linearly (never above the
shortest length's peak times the length ratio, plus 10% for the allocator).

    python benchmarks/memory.py [--lengths 256 512 1024 2048] [--budgets none 512]
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


def one_length(length: int, rollouts: int, steps: int, batch: int, budget: float | None) -> dict:
    import time

    import torch
    from transformer_lens import HookedTransformer

    from ipgkit.attribution.ipg import path_gradients
    from ipgkit.components import mlp_neurons
    from ipgkit.errors import IpgkitError
    from ipgkit.memory import MemoryBudget
    from ipgkit.models.arith import arith_config, build_policy

    torch.set_num_threads(2)
    config = arith_config(
        n_layers=6,
        d_model=256,
        n_heads=8,
        d_head=32,
        d_mlp=1024,
        n_ctx=length + 64,
        rotary_dim=32,
        seed=0,
    )
    policy = build_policy(HookedTransformer(config).eval(), name="random")
    generator = torch.Generator().manual_seed(0)
    vocab = policy.model.cfg.d_vocab
    prompt = torch.randint(4, vocab, (32,), generator=generator).tolist()
    completions = [
        torch.randint(4, vocab, (length,), generator=generator).tolist() for _ in range(rollouts)
    ]
    rows = [(c, (k + 1) / steps) for c in completions for k in range(steps)]
    components = mlp_neurons(2)
    passes = len(rows) // batch + bool(len(rows) % batch)
    if budget is not None:
        widths = [len(prompt) + length] * len(rows)
        chunks = [list(range(len(rows)))[i : i + batch] for i in range(0, len(rows), batch)]
        try:
            passes = len(
                MemoryBudget(budget).split(
                    chunks, widths, policy.model.cfg, units=components.hook_width(policy.model)
                )
            )
        except IpgkitError as error:
            return {"length": length, "rows": len(rows), "refused": str(error)}
    before = current_rss()
    started = time.perf_counter()
    path_gradients(
        policy,
        components,
        [prompt] * len(rows),
        [c for c, _ in rows],
        torch.tensor([a for _, a in rows]),
        torch.ones(len(rows)),
        internal_batch_size=batch,
        memory_budget=budget,
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "length": length,
        "rows": len(rows),
        "passes": passes,
        "seconds": seconds,
        "peak_over_start_mib": (peak - before) / 2**20,
    }


def run_lengths(args, budget: float | None) -> list[dict]:
    results = []
    for length in args.lengths:
        command = [
            sys.executable,
            __file__,
            "--one",
            str(length),
            "--rollouts",
            str(args.rollouts),
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--budgets",
            "none" if budget is None else str(budget),
        ]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{length} tokens failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def budget_value(text: str) -> float | None:
    return None if text == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="internal_batch_size")
    parser.add_argument(
        "--budgets",
        nargs="+",
        default=["none", "512"],
        help="memory budgets in MiB to compare ('none': internal_batch_size only)",
    )
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    budgets = [budget_value(b) for b in args.budgets]
    if args.one is not None:
        print(json.dumps(one_length(args.one, args.rollouts, args.steps, args.batch, budgets[0])))
        return
    print(
        f"IPG engine, random 6-layer model, {args.rollouts} rollouts x {args.steps} alpha points, "
        f"internal_batch_size {args.batch}; peak memory over the start of the attribution"
    )
    failures = []
    for budget in budgets:
        results = run_lengths(args, budget)
        name = "no budget" if budget is None else f"memory_budget {budget:g} MiB"
        print(f"\n{name}")
        print("| completion tokens | rows | passes | seconds | peak (MiB) | ratio to previous |")
        print("|---|---|---|---|---|---|")
        previous = first = None
        for row in results:
            if "refused" in row:
                print(f"| {row['length']} | {row['rows']} | refused: {row['refused']} | | | |")
                continue
            peak = row["peak_over_start_mib"]
            ratio = "" if previous is None else f"{peak / previous:.2f}"
            print(
                f"| {row['length']} | {row['rows']} | {row['passes']} | {row['seconds']:.1f} "
                f"| {peak:.0f} | {ratio} |"
            )
            if budget is not None and peak > budget:
                failures.append(f"{name}: {peak:.0f} MiB at {row['length']} tokens")
            # at most linear: never above the first length's peak scaled by the length ratio
            # (10% allowed for the allocator: glibc keeps freed blocks resident, so one run's
            # peak RSS varies by ~30% around the same live memory)
            first = first or row
            bound = 1.1 * first["peak_over_start_mib"] * row["length"] / first["length"]
            if budget is not None and peak > bound:
                failures.append(
                    f"{name}: {peak:.0f} MiB at {row['length']} tokens is more than "
                    f"linear growth from {first['length']} allows ({bound:.0f})"
                )
            previous = peak
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        sys.exit(1)
    if any(b is not None for b in budgets):
        print("\nbudgeted runs: at most linear growth and under the budget at every length")


if __name__ == "__main__":
    main()
