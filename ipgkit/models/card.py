"""Measure the embedded model's model card: what it solves, how often its samples disagree, how
often it fails completely (InT's hard pool), and how well it plays the InT verifier.

``ipgkit model-card`` writes ``model_card.json`` and prints the Markdown tables the README quotes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import torch

from ipgkit.evaluation import evaluate, wilson_interval
from ipgkit.models.policy import Policy
from ipgkit.rollouts import SamplingConfig, generate, sample
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import first_divergence, parse_intervention, verifier_prompt


def accuracy_table(policy: Policy, n: int, n_samples: int, seed: int = 0) -> pd.DataFrame:
    """accuracy@1, pass@k, frac_mixed, frac_all_wrong for each family and split."""
    frames = []
    for family in arith.FAMILIES:
        for split in ("test", "hard-test"):
            task = load(family, split=split, n=n, seed=seed)
            frames.append(evaluate(policy, task, n_samples=n_samples, ks=(1, n_samples),
                                   temperature=0.7, seed=seed, progress=True))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def accuracy_by_steps(policy: Policy, n: int, seed: int = 0) -> pd.DataFrame:
    """Greedy accuracy by number of reasoning steps, over both families and both difficulties."""
    rows = []
    for family in arith.FAMILIES:
        for split in ("test", "hard-test"):
            task = load(family, split=split, n=n, seed=seed)
            greedy = sample(policy, task.problems, temperature=0.0,
                            max_new_tokens=task.max_new_tokens, reward=task.correctness)  # fmt: skip
            for problem, reward in zip(task.problems, greedy.rewards.tolist(), strict=True):
                rows.append({"family": family, "split": split,
                             "n_steps": problem.metadata["n_steps"], "correct": reward})  # fmt: skip
    frame = pd.DataFrame(rows)
    return frame.groupby(["split", "n_steps"]).correct.agg(["mean", "count"]).reset_index()


def verifier_accuracy(policy: Policy, attempts: list[tuple], max_new_tokens: int = 96) -> dict:
    """Greedy interventions for (problem, attempt_steps) pairs, scored against the rule-based
    first-divergence checker: parse rate, location accuracy, exact (location and content).
    Prompts that leave no room for the answer in the context are skipped and counted."""
    prompts, expected = [], []
    for problem, steps in attempts:
        prompts.append(verifier_prompt(problem.question, problem.reference, steps))
        expected.append(first_divergence(split_lines(problem.reference), steps))
    ids = policy.encode(prompts)
    fits = [len(row) + max_new_tokens <= policy.n_ctx for row in ids]
    skipped = len(ids) - sum(fits)
    ids = [row for row, ok in zip(ids, fits, strict=True) if ok]
    expected = [e for e, ok in zip(expected, fits, strict=True) if ok]
    completions = []
    config = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    for start in range(0, len(prompts), 64):
        tokens, mask, _ = generate(policy, ids[start : start + 64], config)
        completions += [policy.decode(t[m].tolist()) for t, m in zip(tokens, mask, strict=True)]
    parsed = [parse_intervention(text) for text in completions]
    n = len(ids)
    located = sum(
        p is not None and p.location == e.location for p, e in zip(parsed, expected, strict=True)
    )
    exact = sum(p == e for p, e in zip(parsed, expected, strict=True))
    return {
        "n": n,
        "skipped_too_long": skipped,
        "parsed": sum(p is not None for p in parsed) / n,
        "location_accuracy": located / n,
        "exact_accuracy": exact / n,
        "exact_ci95": wilson_interval(exact, n),
    }


def own_failed_attempts(policy: Policy, n_problems: int, seed: int = 0) -> list[tuple]:
    """The model's own wrong answers (T=0.7) on hard problems, one per problem, as step lists."""
    attempts = []
    for family in arith.FAMILIES:
        task = load(family, split="hard-test", n=n_problems, seed=seed)
        rollouts = sample(policy, task.problems, n=4, temperature=0.7, seed=seed,
                          max_new_tokens=task.max_new_tokens, reward=task.correctness)  # fmt: skip
        for group, problem in enumerate(task.problems):
            for row in range(group * 4, group * 4 + 4):
                if rollouts.rewards[row] == 0 and "####" in rollouts.texts[row]:
                    attempts.append((problem, split_lines(rollouts.texts[row])))
                    break
    return attempts


def synthetic_failed_attempts(n_problems: int, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    attempts = []
    for family in arith.FAMILIES:
        for problem in load(family, split="test", n=n_problems, seed=seed).problems:
            attempts.append((problem, arith.make_failed_attempt(rng, problem)))
    return attempts


def model_card(policy: Policy, n: int = 200, n_samples: int = 8, seed: int = 0) -> dict:
    """All model-card measurements as one JSON-able dict."""
    torch.manual_seed(seed)
    table = accuracy_table(policy, n, n_samples, seed)
    steps = accuracy_by_steps(policy, n, seed)
    return {
        "n_problems_per_split": n,
        "n_samples": n_samples,
        "accuracy": table.to_dict(orient="records"),
        "accuracy_by_steps": steps.to_dict(orient="records"),
        "verifier_on_own_failures": verifier_accuracy(
            policy, own_failed_attempts(policy, n // 2, seed)
        ),
        "verifier_on_synthetic_failures": verifier_accuracy(
            policy, synthetic_failed_attempts(n // 2, seed)
        ),
    }


def markdown(card: dict) -> str:
    """The README's tables."""
    table = pd.DataFrame(card["accuracy"])
    wide = table.pivot_table(index=["task", "split"], columns="metric", values="value", sort=False)
    ci = table[table.metric == "accuracy@1"].set_index(["task", "split"])
    lines = ["| family | split | accuracy@1 (95% CI) | pass@8 | mixed correctness (8 @ T=0.7) | pass@8 = 0 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    pass_at_n = f"pass@{card['n_samples']}"
    for (task, split), row in wide.iterrows():
        low, high = ci.loc[(task, split), ["ci_low", "ci_high"]]
        lines.append(f"| {task} | {split} | {row['accuracy@1']:.1%} ({low:.1%}-{high:.1%}) | "
                     f"{row[pass_at_n]:.1%} | {row['frac_mixed']:.1%} | "
                     f"{row['frac_all_wrong']:.1%} |")  # fmt: skip
    lines += ["", "| split | steps | greedy accuracy | problems |", "|---|---|---|---|"]
    for row in card["accuracy_by_steps"]:
        lines.append(f"| {row['split']} | {row['n_steps']} | {row['mean']:.1%} | {row['count']} |")
    lines += [
        "",
        "| verifier input | n | parsed | right location | exact fix (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("verifier_on_own_failures", "the model's own failed hard attempts"),
                       ("verifier_on_synthetic_failures", "synthetic one-slip attempts")):  # fmt: skip
        v = card[key]
        lines.append(f"| {label} | {v['n']} | {v['parsed']:.1%} | {v['location_accuracy']:.1%} | "
                     f"{v['exact_accuracy']:.1%} ({v['exact_ci95'][0]:.1%}-{v['exact_ci95'][1]:.1%}) |")  # fmt: skip
    return "\n".join(lines)


def write_model_card(policy: Policy, out: str | Path, **kwargs) -> dict:
    from ipgkit.io import atomic_write_text

    card = model_card(policy, **kwargs)
    atomic_write_text(Path(out), json.dumps(card, indent=2, default=float))
    return card
