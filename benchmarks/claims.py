"""The measurements behind README sentences that no other command produces.

Each claim is one option. Each writes ``benchmarks/results/<claim>.json`` (the numbers, the
settings, the machine and the date) and prints a summary; the README quotes those files.

    python benchmarks/claims.py completeness   # IPG's completeness gap: residual stream vs subsets
    python benchmarks/claims.py sae-cost       # scoring 2048 SAE latents vs 128 neurons, same rows
    python benchmarks/claims.py smollm2-long   # fused vs TL attention on long SmolLM2 rows
    python benchmarks/claims.py torchrun       # `ipgkit attribute`: 2 processes x 1 thread vs 1 x 2

Timings alternate the compared runs (medians over ``--repeats``), so machine noise hits both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pandas as pd
import scipy.stats
import torch

import ipgkit

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def record(name: str, settings: dict, results: dict) -> None:
    """Write the claim's JSON next to this script, with the machine and the date."""
    RESULTS.mkdir(exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # above the thread count, another job shared the cores during the measurement
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    payload = {
        "claim": name,
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "command": "python benchmarks/claims.py " + " ".join(sys.argv[1:]),
        "settings": settings,
        "results": results,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(f"wrote {path}")


def support_rollouts(policy, prompts: int, rollouts: int = 5):
    task = ipgkit.tasks.load("arith-word", split="train", n=prompts)
    return ipgkit.sample(
        policy,
        task.problems,
        n=rollouts,
        temperature=0.6,
        top_p=0.8,
        max_new_tokens=task.max_new_tokens,
        reward=task.correctness,
        seed=0,
    )


def alternate(runs: dict, repeats: int) -> dict[str, float]:
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def completeness(args) -> None:
    """delta = sum of scores - (S(1) - S(0)) for the whole residual stream (zero and mean
    baselines), half of it, and the MLP neurons of the same block, on the same rollouts."""
    warnings.filterwarnings("ignore", message="IPG completeness gap")
    policy = ipgkit.load_model("arith")
    rollouts = support_rollouts(policy, args.prompts)
    layer = args.layer
    sites = {
        "residual (all 128), zero baseline": (ipgkit.resid_neurons(layer), "zero"),
        "residual (all 128), mean baseline": (ipgkit.resid_neurons(layer), "mean"),
        "residual (units 0-63), zero baseline": (ipgkit.resid_neurons(layer, range(64)), "zero"),
        f"MLP neurons of block {layer}, zero baseline": (ipgkit.mlp_neurons(layer), "zero"),
    }
    results, scores = {}, {}
    for name, (components, baseline) in sites.items():
        for q in (10, 40):
            result = ipgkit.ipg(
                policy,
                None,
                components,
                rollouts=rollouts,
                n_steps=q,
                baseline=baseline,
                progress=False,
            )
            change = result.info["surrogate"]["S(1)"] - result.info["surrogate"]["S(0)"]
            results[f"{name}, q={q}"] = {
                "delta": result.delta,
                "change S(1)-S(0)": change,
                "sum of scores": float(result.scores.sum()),
            }
            scores[(name, q)] = result.scores
    zero = scores[("residual (all 128), zero baseline", 10)]
    mean = scores[("residual (all 128), mean baseline", 10)]
    results["zero vs mean baseline scores (q=10)"] = {
        "pearson": float(scipy.stats.pearsonr(zero, mean).statistic),
        "spearman": float(scipy.stats.spearmanr(zero, mean).statistic),
    }
    results["frac_reward_zero_std"] = rollouts.frac_reward_zero_std
    record(
        "completeness",
        {
            "task": "arith-word train",
            "prompts": args.prompts,
            "rollouts": 5,
            "layer": layer,
            "rule": "riemann_right",
        },
        results,
    )


def sae_cost(args) -> None:
    """All latents of the shipped layer SAE vs the 128 residual neurons it reads, same rows."""
    warnings.filterwarnings("ignore", message="IPG completeness gap")
    plain = ipgkit.load_model("arith")
    spliced = ipgkit.load_model("arith", saes=[args.layer])
    rollouts = support_rollouts(plain, args.prompts)
    settings = dict(rollouts=rollouts, n_steps=10, progress=False)
    latents = ipgkit.sae_features(spliced, layer=args.layer)
    runs = {
        "neurons": lambda: ipgkit.ipg(plain, None, ipgkit.resid_neurons(args.layer), **settings),
        "latents": lambda: ipgkit.ipg(spliced, None, latents, **settings),
    }
    median = alternate(runs, args.repeats)
    rows = ipgkit.ipg(plain, None, ipgkit.resid_neurons(args.layer), **settings).info
    record(
        "sae-cost",
        {
            "prompts": args.prompts,
            "rollouts": 5,
            "q": 10,
            "layer": args.layer,
            "repeats": args.repeats,
        },
        {
            "rows scored": rows["rows_scored"],
            "neurons seconds": median["neurons"],
            "latents seconds": median["latents"],
            "latents / neurons": median["latents"] / median["neurons"],
            "latents": len(latents.resolved(spliced.model)),
        },
    )


def smollm2_long(args) -> None:
    """Teacher-forced log-probs of long GSM8K rows on SmolLM2: fused attention (the memory
    budget's) against TransformerLens's own, values and time."""
    from ipgkit.memory import MemoryBudget
    from ipgkit.rollouts import iter_scores

    policy = ipgkit.load_model("smollm2-135m-instruct")
    task = ipgkit.tasks.load("gsm8k", split="test", path=args.data / "gsm8k", n=64)
    prompts = policy.encode([policy.prompt_format(p.statement) for p in task.problems[:4]])
    # completions: the following problems' worked solutions, concatenated to the target lengths
    solutions = policy.encode_completions([p.reference for p in task.problems[4:]], add_eos=False)
    completions, pool = [], iter(solutions)
    for prompt, target in zip(prompts, args.lengths, strict=True):
        completion: list[int] = []
        while len(prompt) + len(completion) < target:
            completion += next(pool)
        completions.append(completion[: target - len(prompt)])

    def logprobs(memory):
        values = []
        with torch.no_grad():
            for _, scores in iter_scores(
                policy, prompts, completions, 1, with_entropy=False, memory_budget=memory
            ):
                values.append(scores.logprobs[0, : scores.mask[0].sum()].double())
        return values

    budget = MemoryBudget(args.budget_mib)
    outputs = {}
    runs = {
        "fused": lambda: outputs.__setitem__("fused", logprobs(budget)),
        "transformer_lens": lambda: outputs.__setitem__("tl", logprobs(None)),
    }
    median = alternate(runs, args.repeats)
    difference = max(
        float((a - b).abs().max()) for a, b in zip(outputs["fused"], outputs["tl"], strict=True)
    )
    record(
        "smollm2-long",
        {
            "rows": [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)],
            "budget_mib": args.budget_mib,
            "repeats": args.repeats,
            "dtype": "float32",
        },
        {
            "max |log pi fused - log pi TL|": difference,
            "fused seconds": median["fused"],
            "transformer_lens seconds": median["transformer_lens"],
            "TL / fused": median["transformer_lens"] / median["fused"],
        },
    )


def torchrun(args) -> None:
    """`ipgkit attribute` on 50 problems: 2 gloo processes x 1 thread against 1 process x 2
    threads, both with per-problem seeding, and how far their scores differ."""
    ipgkit_cli = Path(sys.executable).with_name("ipgkit")
    torchrun_cli = Path(sys.executable).with_name("torchrun")
    common = [
        "attribute",
        "--task",
        "arith-word",
        "--layer",
        "2",
        "--n-problems",
        str(args.prompts),
        "--seeding",
        "problem",
    ]
    with tempfile.TemporaryDirectory() as folder:
        single, double = Path(folder) / "single.csv", Path(folder) / "double.csv"
        commands = {
            "1 process x 2 threads": ([str(ipgkit_cli), *common, "--out", str(single)], "2"),
            "2 processes x 1 thread": (
                [
                    str(torchrun_cli),
                    "--nproc_per_node",
                    "2",
                    "--master_port",
                    "29531",
                    str(ipgkit_cli),
                    *common,
                    "--out",
                    str(double),
                ],
                "1",
            ),
        }
        seconds = {}
        for name, (command, threads) in commands.items():
            environment = {**os.environ, "OMP_NUM_THREADS": threads}
            started = time.perf_counter()
            subprocess.run(command, check=True, env=environment, capture_output=True)
            seconds[name] = time.perf_counter() - started
        first, second = pd.read_csv(single), pd.read_csv(double)
        difference = float((first["score"] - second["score"]).abs().max())
    record(
        "torchrun",
        {"prompts": args.prompts, "command": " ".join(common)},
        {**{f"{k} seconds": v for k, v in seconds.items()}, "max |score difference|": difference},
    )


CLAIMS = {
    "completeness": completeness,
    "sae-cost": sae_cost,
    "smollm2-long": smollm2_long,
    "torchrun": torchrun,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("claims", nargs="+", choices=sorted(CLAIMS))
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs=4, default=[455, 700, 900, 1105])
    parser.add_argument("--budget-mib", type=float, default=4096)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="folder holding gsm8k/")
    args = parser.parse_args()
    for name in args.claims:
        print(f"== {name}")
        CLAIMS[name](args)


if __name__ == "__main__":
    main()
