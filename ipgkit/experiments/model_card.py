"""Measure the embedded model's model card: what it solves, how often its samples disagree, how
often it fails completely (InT's hard pool), and how well it plays the InT verifier.

``ipgkit model-card`` writes ``model_card.json`` and prints the Markdown tables the README quotes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from ipgkit.evaluation import evaluation_rollouts, evaluation_table
from ipgkit.models.policy import Policy
from ipgkit.stats import wilson_interval
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import first_divergence, parse_intervention
from ipgkit.training.interventions import FailedAttempt, SelfProposer


def measure_splits(policy: Policy, n: int, n_samples: int, seed: int = 0):
    """Greedy and sampled (T=0.7) rollouts for each family on the test and hard-test splits.

    Returns the evaluation table, greedy accuracy by number of steps, and the model's own failed
    hard-split attempts (one per problem that has one), all from the same rollouts.
    """
    tables, by_steps, failures = [], [], []
    for family in arith.FAMILIES:
        for split in ("test", "hard-test"):
            task = load(family, split=split, n=n, seed=seed)
            greedy, sampled = evaluation_rollouts(policy, task, n_samples, seed=seed, progress=True)
            tables.append(evaluation_table(policy.name, task, greedy, sampled, ks=(1, n_samples)))
            for problem, reward in zip(task.problems, greedy.rewards.tolist(), strict=True):
                by_steps.append(
                    {
                        "family": family,
                        "split": split,
                        "n_steps": problem.metadata["n_steps"],
                        "correct": reward,
                    }
                )
            if split == "hard-test":
                failures += first_failures(task, sampled)
    steps = pd.DataFrame(by_steps).groupby(["split", "n_steps"]).correct.agg(["mean", "count"])
    return pd.concat(tables, ignore_index=True), steps.reset_index(), failures


def first_failures(task, rollouts) -> list[tuple]:
    """(problem, attempt steps) for each problem's first wrong completion that gave an answer."""
    attempts = []
    for group, problem in enumerate(task.problems):
        for row in range(group * rollouts.n, (group + 1) * rollouts.n):
            if rollouts.rewards[row] == 0 and "####" in rollouts.texts[row]:
                attempts.append((problem, split_lines(rollouts.texts[row])))
                break
    return attempts


def verifier_outcomes(
    policy: Policy,
    attempts: list[tuple],
    max_new_tokens: int = 128,
    with_reference: bool = True,
    style: str | None = None,
) -> list[tuple | None]:
    """For each (problem, attempt_steps) pair, the greedy intervention of
    :class:`~ipgkit.training.SelfProposer` (parsed, or None where it does not parse) next to the
    rule-based first-divergence checker's; None for an attempt whose verification leaves no room
    for the answer in the context. ``with_reference=False`` hides the reference solution."""
    proposer = SelfProposer(
        policy,
        n=1,
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        style=style,
        with_reference=with_reference,
    )
    answers = proposer([FailedAttempt(problem, "", tuple(steps)) for problem, steps in attempts])
    return [
        (parse_intervention(answer[0]), first_divergence(split_lines(problem.reference), steps))
        if answer
        else None
        for (problem, steps), answer in zip(attempts, answers, strict=True)
    ]


def verifier_accuracy(
    policy: Policy,
    attempts: list[tuple],
    max_new_tokens: int = 128,
    with_reference: bool = True,
    style: str | None = None,
) -> dict:
    """:func:`verifier_outcomes` (in ``style``, by default the format the policy was trained on)
    scored against the rule-based first-divergence checker: parse rate, location accuracy, exact
    (location and content), each with a 95% Wilson interval. Attempts whose verification leaves
    no room for the answer in the context are skipped and counted."""
    outcomes = verifier_outcomes(policy, attempts, max_new_tokens, with_reference, style)
    fitted = [outcome for outcome in outcomes if outcome is not None]
    skipped = len(outcomes) - len(fitted)
    n = len(fitted)
    counts = {
        "parsed": sum(got is not None for got, _ in fitted),
        "location_accuracy": sum(
            got is not None and got.location == want.location for got, want in fitted
        ),
        "exact_accuracy": sum(got == want for got, want in fitted),
    }
    result: dict = {"n": n, "skipped_too_long": skipped}
    for name, hits in counts.items():
        result[name] = hits / n if n else float("nan")
        result[f"{name}_ci95"] = wilson_interval(hits, n) if n else (float("nan"),) * 2
    result["exact_ci95"] = result["exact_accuracy_ci95"]  # the name earlier cards used
    return result


def synthetic_failed_attempts(n_problems: int, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    attempts = []
    for family in arith.FAMILIES:
        for problem in load(family, split="test", n=n_problems, seed=seed).problems:
            attempts.append((problem, arith.make_failed_attempt(rng, problem)))
    return attempts


def model_card(policy: Policy, n: int = 200, n_samples: int = 8, seed: int = 0) -> dict:
    """All model-card measurements as one JSON-able dict."""
    table, steps, failures = measure_splits(policy, n, n_samples, seed)
    return {
        "n_problems_per_split": n,
        "n_samples": n_samples,
        "accuracy": table.to_dict(orient="records"),
        "accuracy_by_steps": steps.to_dict(orient="records"),
        "verifier_on_own_failures": verifier_accuracy(policy, failures),
        "verifier_on_own_failures_no_reference": verifier_accuracy(
            policy, failures, with_reference=False
        ),
        "verifier_format": SelfProposer(policy).resolved_style,
        "verifier_on_synthetic_failures": verifier_accuracy(
            policy, synthetic_failed_attempts(n // 2, seed)
        ),
    }


VERIFIER_ROWS = (
    ("verifier_on_own_failures", "the model's own failed hard attempts"),
    ("verifier_on_synthetic_failures", "synthetic one-slip attempts"),
    ("verifier_on_own_failures_no_reference", "its own failed hard attempts, no reference"),
)


def markdown(card: dict) -> str:
    """The README's tables."""
    table = pd.DataFrame(card["accuracy"])
    wide = table.pivot_table(index=["task", "split"], columns="metric", values="value", sort=False)
    ci = table[table.metric == "accuracy@1"].set_index(["task", "split"])
    lines = [
        "| family | split | accuracy@1 (95% CI) | pass@8 | mixed correctness (8 @ T=0.7) "
        "| pass@8 = 0 |",
        "|---|---|---|---|---|---|",
    ]
    pass_at_n = f"pass@{card['n_samples']}"
    for (task, split), row in wide.iterrows():
        low, high = ci.loc[(task, split), ["ci_low", "ci_high"]]
        lines.append(
            f"| {task} | {split} | {row['accuracy@1']:.1%} ({low:.1%}-{high:.1%}) | "
            f"{row[pass_at_n]:.1%} | {row['frac_mixed']:.1%} | "
            f"{row['frac_all_wrong']:.1%} |"
        )
    lines += ["", "| split | steps | greedy accuracy | problems |", "|---|---|---|---|"]
    for row in card["accuracy_by_steps"]:
        lines.append(f"| {row['split']} | {row['n_steps']} | {row['mean']:.1%} | {row['count']} |")
    lines += [
        "",
        "| verifier input | n | parsed | right location (95% CI) | exact fix (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for key, label in VERIFIER_ROWS:
        if key not in card:
            continue
        v = card[key]
        location_ci = v.get("location_accuracy_ci95", (float("nan"),) * 2)
        lines.append(
            f"| {label} | {v['n']} | {v['parsed']:.1%} | {v['location_accuracy']:.1%} "
            f"({location_ci[0]:.1%}-{location_ci[1]:.1%}) | "
            f"{v['exact_accuracy']:.1%} ({v['exact_ci95'][0]:.1%}-{v['exact_ci95'][1]:.1%}) |"
        )
    hard = table[(table.split == "hard-test") & (table.metric == "accuracy@1")]
    own = card["verifier_on_own_failures"]
    lines += [
        "",
        f"Solving vs verifying on hard-test: greedy accuracy@1 {hard.value.mean():.1%} (mean of "
        f"the families); exact first-error fix of its own failed attempts, with the reference, "
        f"{own['exact_accuracy']:.1%}.",
    ]
    return "\n".join(lines)


def write_model_card(policy: Policy, out: str | Path, **kwargs) -> dict:
    from ipgkit.io import atomic_write_text

    card = model_card(policy, **kwargs)
    atomic_write_text(Path(out), json.dumps(card, indent=2, default=float))
    return card
