"""IPG speed on the embedded model: three ratios measured side by side in one run.

The rollouts are sampled once; every timed run scores the same rows, and runs of different kinds
alternate so that machine noise affects them alike. Medians over ``--repeats``.

(a) sequential / packed: one forward/backward per (prompt, alpha) vs all alphas and rollouts packed
    into chunks of ``internal_batch_size`` rows. Target >= 3.
(b) IPG scoring / bare floor: IPG's whole scoring part (hooks, path gradients, the completeness
    end points) vs plain teacher-forced forward + backward passes over the same rows, chunked the
    same way, without hooks. Two floors: backward to every parameter (a training step) and
    backward to the input embeddings only (what Captum-style input attribution costs).
    Target <= 1.3.
(c) all units / one unit of the layer. Target <= 1.1.
(d) amplification IPG / IPG: the same rows scored along alpha in [1, 2] instead of [0, 1]
    (issue 19); the one difference is the surrogate's end point alpha = 1, off the amplification
    grid, so one more forward pass.
(e) one learned-gain step / one IPG attribution, sampling included: a step samples its own
    groups (8 prompts x 8 completions) with the gains in place and backpropagates to the gains.

Finally, the wall time of one attribution of the paper's size (prompts x 5 rollouts x 10 steps),
sampling included.

    python benchmarks/ipg.py [--prompts 50] [--repeats 3] [--layer 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import ipgkit
from ipgkit.attribution.ipg import frozen_parameters, integration_points, packed_chunks
from ipgkit.rollouts import iter_scores
from ipgkit.training.gains import GainConfig, learn_gains
from ipgkit.training.grpo_config import GRPOConfig


def bare_passes(policy, rows, internal_batch_size: int, parameters: str) -> None:
    """Teacher-forced forward + backward of sum log pi over ``rows``, no hooks."""
    prompts = [p for p, _ in rows]
    completions = [c for _, c in rows]
    lengths = [len(p) + len(c) for p, c in rows]
    model = policy.model
    embedding = model.embed.W_E
    with frozen_parameters(model):
        if parameters == "all":
            for parameter in model.parameters():
                parameter.requires_grad_(True)
        else:  # gradients reach the inputs: only the embedding matrix asks for one
            embedding.requires_grad_(True)
        for chunk in packed_chunks(lengths, internal_batch_size):
            ((_, scores),) = iter_scores(
                policy,
                [prompts[r] for r in chunk],
                [completions[r] for r in chunk],
                with_entropy=False,
            )
            scores.logprobs.sum().backward()
        model.zero_grad(set_to_none=True)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--rollouts", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--internal-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="IPG completeness gap")  # speed, not accuracy, here

    policy = ipgkit.load_model("arith")
    task = ipgkit.tasks.load("arith-word", split="train", n=args.prompts)
    started = time.perf_counter()
    rollouts = ipgkit.sample(
        policy,
        task.problems,
        n=args.rollouts,
        temperature=0.6,
        top_p=0.8,
        max_new_tokens=task.max_new_tokens,
        reward=task.correctness,
    )
    sampling_seconds = time.perf_counter() - started
    live = rollouts.advantages("mean_std").nonzero()[:, 0].tolist()
    prompt_ids, completion_ids = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    alphas, _ = integration_points("riemann_right", args.steps)
    rows = [(prompt_ids[r], completion_ids[r]) for r in live for _ in alphas]
    tokens = sum(len(p) + len(c) for p, c in rows)
    print(
        f"{args.prompts} prompts x {args.rollouts} rollouts x {args.steps} steps: {len(live)} "
        f"rollouts with signal -> {len(rows)} scored rows, {tokens} tokens "
        f"(frac_reward_zero_std {rollouts.frac_reward_zero_std:.2f})\n"
    )

    layer = ipgkit.resid_neurons(args.layer)
    settings = dict(
        n_steps=args.steps,
        internal_batch_size=args.internal_batch_size,
        progress=False,
        rollouts=rollouts,
    )

    def attribute(components=layer, **extra):
        return lambda: ipgkit.ipg(policy, None, components, **{**settings, **extra})

    def floor(parameters):
        return lambda: bare_passes(policy, rows, args.internal_batch_size, parameters)

    runs = {
        "packed": attribute(),
        "sequential": attribute(pack=False),
        "floor: backward to parameters": floor("all"),
        "floor: backward to inputs": floor("inputs"),
        "one unit": attribute(ipgkit.resid_neurons(args.layer, [7])),
        "amplification [1, 2]": attribute(alpha_range=(1.0, 2.0)),
        "one learned-gain step": lambda: learn_gains(
            policy,
            task.problems,
            layer,
            task.correctness,
            GainConfig(grpo=GRPOConfig(max_steps=1, max_completion_length=task.max_new_tokens)),
            progress=False,
        ),
    }
    runs["packed"]()  # warm-up (allocator, thread pools)
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            timings[name].append(timed(run))
    median = {name: statistics.median(values) for name, values in timings.items()}
    for name, value in median.items():
        spread = ", ".join(f"{v:.2f}" for v in timings[name])
        print(f"{name:32s} {value:7.2f} s   (runs: {spread})")
    print()
    print(
        f"(a) sequential / packed            {median['sequential'] / median['packed']:5.2f}"
        "   target >= 3"
    )
    for floor in ("floor: backward to parameters", "floor: backward to inputs"):
        print(
            f"(b) IPG scoring / {floor[7:]:17s}{median['packed'] / median[floor]:5.2f}"
            "   target <= 1.3"
        )
    print(
        f"(c) all units / one unit           {median['packed'] / median['one unit']:5.2f}"
        "   target <= 1.1"
    )
    amplification = median["amplification [1, 2]"] / median["packed"]
    print(f"(d) amplification / IPG            {amplification:5.2f}")
    whole = sampling_seconds + median["packed"]
    print(f"(e) one learned-gain step / IPG    {median['one learned-gain step'] / whole:5.2f}")
    print(
        f"\none attribution of this size, sampling included: "
        f"{sampling_seconds + median['packed']:.1f} s (sampling {sampling_seconds:.1f} s, "
        f"scoring {median['packed']:.1f} s)"
    )


if __name__ == "__main__":
    main()
