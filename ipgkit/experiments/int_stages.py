"""The InT comparison's cached stages: SFT weights, the SFT ablations and the on-policyness table
(each stage a file in the experiment's folder, computed once; see :mod:`.int_grpo`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from ipgkit.io import atomic_write_text, cached, cached_state, load_json_record, save_json_record
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample, token_logprobs
from ipgkit.tasks.base import Problem
from ipgkit.tasks.verification import Intervention
from ipgkit.training.int_records import FailedAttempt, HardPool, InterventionSet
from ipgkit.training.interventions import int_examples, intervention_logprob
from ipgkit.training.sft import completion_nll, train_sft

from .int_tables import arms_summary, per_problem_results

#: the InT paper's SFT ablations, run on the self-proposed set
ABLATIONS = ("prefix+intervention", "intervention only", "with suffix")


def sft_ablations(policy, own: InterventionSet, held_out, config, out: Path):
    """The InT paper's SFT ablations on the self-proposed set (first seed, no GRPO): held-out
    accuracy after SFT on prefix + intervention, the intervention alone, and with the suffix."""

    def compute() -> pd.DataFrame:
        grpo, seed = config.grpo, config.seeds[0]
        frames = []
        for variant in ABLATIONS:
            examples = int_examples(policy, own, variant)
            if not examples:
                continue
            name = (
                "int-self" if variant == ABLATIONS[0] else f"int-self-{variant.replace(' ', '-')}"
            )
            tuned = sft_policy(policy, name, examples, config, seed, out)
            results = per_problem_results(tuned, held_out, grpo.eval_samples, grpo.eval_ks, seed)
            summary = arms_summary(results.assign(arm=variant, seed=seed))
            frames.append(summary.assign(examples=len(examples)))
        if not frames:  # no self-proposed intervention was kept: the header alone
            return pd.DataFrame(columns=["arm", "metric", "value", "ci_low", "ci_high", "examples"])
        return pd.concat(frames, ignore_index=True)

    return cached_frame(out / "ablations.csv", compute)


#: the classes an InT record may hold (JSON, rebuilt from this list only: nothing is unpickled)
RECORD_CLASSES = (HardPool, InterventionSet, FailedAttempt, Intervention, Problem)


def cached_record(path: Path, compute):
    """``compute()`` once, kept in ``path`` as a JSON record of :data:`RECORD_CLASSES`."""
    return cached(
        path,
        compute,
        lambda file: load_json_record(file, RECORD_CLASSES, "InT record"),
        save_json_record,
    )


def cached_frame(path: Path, compute) -> pd.DataFrame:
    """``compute()`` once, kept in ``path`` as CSV. The frame returned is always the one read
    back from the CSV, so a fresh run and a resumed one return the same dtypes (a column of
    one-seed means written as text, ``"0.390"``, reads back as numbers)."""
    cached(
        path,
        compute,
        pd.read_csv,
        lambda frame, file: atomic_write_text(file, frame.to_csv(index=False)),
    )
    return pd.read_csv(path)


def sft_policy(policy: Policy, name: str, examples, config, seed: int, out: Path) -> Policy:
    """A copy of ``policy`` fine-tuned on ``examples`` with ``config.sft`` at ``seed``, its
    weights cached in ``out/sft_<name>_s<seed>.pt`` (so every stage asking for the same set and
    seed shares one file)."""
    tuned = policy.clone()
    sft = replace(config.sft, seed=seed)

    def train() -> dict:
        train_sft(tuned, examples, sft, progress=False)
        return tuned.model.state_dict()

    weights = cached_state(out / f"sft_{name}_s{seed}.pt", train, "SFT weights file")
    tuned.model.load_state_dict(weights)
    return tuned


def on_policy_table(policy, datasets, sets, train, pool, config, out: Path) -> pd.DataFrame:
    """NLL per token of each SFT set under the base model; mean token entropy of completions
    sampled on the hard pool, base vs after each SFT (first seed); intervention-step
    log-likelihood per token before and after SFT on each intervention set."""
    rows = []
    seed = config.seeds[0]
    tuned = {
        name: sft_policy(policy, name, examples, config, seed, out)
        for name, examples in datasets.items()
        if examples
    }
    for name, examples in datasets.items():
        if examples:
            total, count = completion_nll(policy, examples)
            value = float(total.sum() / count.sum())
            rows.append(_row("nll_per_token_under_base", name, value, len(examples)))
    for name, model in {"base": policy, **tuned}.items():
        rollouts = sample(
            model,
            pool.problems,
            n=2,
            temperature=1.0,
            seed=config.seed,
            max_new_tokens=train.max_new_tokens,
            progress=False,
        )
        scores = token_logprobs(
            model, rollouts.row_prompt_ids(), rollouts.row_completion_ids(), 32, with_entropy=True
        )
        entropy = float(scores.entropy[scores.mask].mean())
        rows.append(_row("token_entropy_on_pool", name, entropy, len(rollouts)))
    for name, source in (("int-self", "self"), ("int-checker", "checker")):
        if name not in tuned:
            continue
        for model_name, model in (("base", policy), (name, tuned[name])):
            values = intervention_logprob(model, sets[source])
            metric = f"intervention_logprob_per_token ({source} set)"
            rows.append(_row(metric, model_name, float(values.mean()), len(values)))
    return pd.DataFrame(rows)


def _row(metric: str, dataset: str, value: float, n: int) -> dict:
    return {"metric": metric, "dataset": dataset, "value": value, "n": n}


__all__ = [
    "ABLATIONS",
    "RECORD_CLASSES",
    "cached_frame",
    "cached_record",
    "on_policy_table",
    "sft_ablations",
    "sft_policy",
]
