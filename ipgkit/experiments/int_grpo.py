"""The InT paper's core comparison on the embedded model: base vs GRPO vs InT + GRPO vs
reference-solution SFT + GRPO on a hard pool, with the same GRPO compute for every arm.

Every stage writes its result to ``out_dir`` as it finishes (the hard pool, the interventions and
their yields, the SFT weights, each arm's GRPO checkpoints, the tables), and a rerun with the same
settings picks up where it stopped; a folder holding another configuration is refused.

Example:
    >>> tables = run_int_experiment(InTExperimentConfig(), "runs/int")   # doctest: +SKIP
    >>> tables["final"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from ipgkit.errors import IpgkitError
from ipgkit.io import (
    atomic_write_text,
    cached,
    cached_state,
    load_json_record,
    save_json_record,
)
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample, token_logprobs
from ipgkit.tasks import load as load_task
from ipgkit.tasks.base import Problem
from ipgkit.tasks.verification import Intervention
from ipgkit.training.grpo import GRPOConfig, grpo_train
from ipgkit.training.int_records import FailedAttempt, HardPool, InterventionSet
from ipgkit.training.interventions import (
    ReferenceChecker,
    SelfProposer,
    continuation_table,
    hard_pool,
    int_examples,
    intervention_logprob,
    propose_interventions,
)
from ipgkit.training.sft import SFTConfig, completion_nll, reference_examples, train_sft

ARMS = ("base", "grpo", "int+grpo", "ref-sft+grpo")


@dataclass(frozen=True)
class InTExperimentConfig:
    """Settings of :func:`run_int_experiment` (defaults: the README's run, ~15 min on 2 cores).

    Attributes:
        family: arithmetic family of the hard pool and the held-out set.
        pool_candidates: hard-train problems tried for the pool.
        k: samples per problem; the pool holds those with pass@k = 0.
        held_out: hard-test problems evaluated (accuracy@1, pass@k).
        n_continuations: continuations sampled per intervention by the correctness filter.
        self_proposals: proposals per attempt from the model itself (reported in the yields; on
            the embedded model they do not survive the filters, so the InT arm trains on the
            reference checker's interventions).
        table_samples: continuations per attempt and condition in the intervention table.
        sft: SFT settings (both SFT arms). Adam at 3e-5: at 3e-4, nine steps on the 46 InT pairs
            took the embedded model's held-out greedy accuracy from 0.13 to 0.00 (Adam moves every
            weight by about the learning rate per step, whatever the gradient's size).
        grpo: GRPO settings (every arm the same; learning rate 1e-5 for the same reason).
        seed: sampling seed of the pool and the filters.
    """

    family: str = "arith-word"
    pool_candidates: int = 200
    k: int = 16
    held_out: int = 100
    n_continuations: int = 8
    self_proposals: int = 2
    table_samples: int = 8
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(learning_rate=3e-5, num_train_epochs=3)
    )
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            max_steps=30,
            learning_rate=1e-5,
            eval_every=10,
            max_completion_length=160,
            eval_ks=(1, 8),
        )
    )
    seed: int = 0


def run_int_experiment(
    policy: Policy, config: InTExperimentConfig, out_dir: str | Path, progress: bool = True
) -> dict[str, pd.DataFrame]:
    """Run (or resume) the whole comparison; ``policy`` itself is not modified.

    Returns the tables, also written to ``out_dir`` as CSV: ``yields`` (per proposer and filter),
    ``interventions`` (continuation accuracy and coverage by condition), ``on_policy`` (NLL of each
    SFT set under the base model, entropy after SFT, intervention likelihood before and after),
    ``steps`` (every arm's GRPO log) and ``final`` (held-out accuracy and pass@k per arm).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(asdict(config), default=str))
    recorded = out / "config.json"
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        raise IpgkitError(f"{out} holds an InT experiment with other settings; use another folder")
    atomic_write_text(recorded, json.dumps(settings, indent=2))
    train = load_task(config.family, split="hard-train", n=config.pool_candidates)
    held_out = load_task(config.family, split="hard-test", n=config.held_out)
    pool: HardPool = _cached(
        out / "pool.json",
        lambda: hard_pool(policy, train, k=config.k, seed=config.seed, progress=progress),
    )
    if not pool.problems:
        raise IpgkitError(f"no problem of {config.family} hard-train has pass@{config.k} = 0")
    rule, own = _interventions(policy, train, pool, config, out, progress)
    yields = pd.concat([rule.yields, own.yields], ignore_index=True)
    table = _cached_frame(
        out / "interventions.csv",
        lambda: continuation_table(policy, train, rule, n=config.table_samples, seed=config.seed),
    )

    datasets = {
        "int": int_examples(policy, rule),
        "ref-sft": reference_examples(policy, pool.problems),
    }
    if not datasets["int"]:
        raise IpgkitError("no intervention survived the filters; nothing to fine-tune on")
    tuned = {
        name: _sft_policy(policy, examples, config.sft, out / f"sft_{name}.pt", progress)
        for name, examples in datasets.items()
    }
    on_policy = _cached_frame(
        out / "on_policy.csv",
        lambda: _on_policy_table(policy, tuned, datasets, rule, train, pool, config),
    )

    starts = {"grpo": policy, "int+grpo": tuned["int"], "ref-sft+grpo": tuned["ref-sft"]}
    steps, finals = _grpo_arms(starts, pool, train, held_out, config, out, progress)
    tables = {
        "yields": yields,
        "interventions": table,
        "on_policy": on_policy,
        "steps": pd.concat(steps, ignore_index=True),
        "final": pd.concat(finals, ignore_index=True),
    }
    for name, frame in tables.items():
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
    return tables


def _interventions(policy, train, pool: HardPool, config, out: Path, progress: bool):
    """The reference checker's and the model's own interventions on the pool (cached)."""
    rule: InterventionSet = _cached(
        out / "interventions_rule.json",
        lambda: propose_interventions(
            policy,
            train,
            pool.attempts,
            ReferenceChecker(),
            config.n_continuations,
            seed=config.seed,
            progress=progress,
        ),
    )
    own: InterventionSet = _cached(
        out / "interventions_self.json",
        lambda: propose_interventions(
            policy,
            train,
            pool.attempts,
            SelfProposer(policy, n=config.self_proposals, seed=config.seed),
            config.n_continuations,
            seed=config.seed,
            progress=progress,
        ),
    )
    return rule, own


def _grpo_arms(starts: dict, pool: HardPool, train, held_out, config, out: Path, progress: bool):
    """GRPO from each start (same problems, settings and held-out set): logs and evaluations."""
    steps, finals = [], []
    for arm, start in starts.items():
        model = start.clone()
        run = grpo_train(
            model,
            pool.problems,
            train.correctness,
            config.grpo,
            held_out,
            out / f"grpo_{arm}",
            progress=progress,
        )
        steps.append(run.log.assign(arm=arm))
        if arm == "grpo":  # the untrained model, evaluated with the same seed before step 1
            finals.append(run.evals[run.evals.step == 0].assign(arm="base"))
        finals.append(run.evals.assign(arm=arm))
    return steps, finals


#: the classes an InT record may hold (JSON, rebuilt from this list only: nothing is unpickled)
RECORD_CLASSES = (HardPool, InterventionSet, FailedAttempt, Intervention, Problem)


def _cached(path: Path, compute):
    return cached(
        path,
        compute,
        lambda file: load_json_record(file, RECORD_CLASSES, "InT record"),
        save_json_record,
    )


def _cached_frame(path: Path, compute) -> pd.DataFrame:
    return cached(
        path,
        compute,
        pd.read_csv,
        lambda frame, file: atomic_write_text(file, frame.to_csv(index=False)),
    )


def _sft_policy(policy: Policy, examples, config: SFTConfig, path: Path, progress: bool) -> Policy:
    tuned = policy.clone()

    def train() -> dict:
        train_sft(tuned, examples, config, progress=progress)
        return tuned.model.state_dict()

    tuned.model.load_state_dict(cached_state(path, train, "SFT weights file"))
    return tuned


def _on_policy_table(policy, tuned, datasets, rule, train, pool, config) -> pd.DataFrame:
    """NLL per token of each SFT set under the base model; mean token entropy of completions
    sampled on the hard pool, base vs after SFT; intervention-step log-likelihood per token."""
    rows = []
    for name, examples in datasets.items():
        total, count = completion_nll(policy, examples)
        rows.append(
            {
                "metric": "nll_per_token_under_base",
                "dataset": name,
                "value": float(total.sum() / count.sum()),
                "n": len(examples),
            }
        )
    for name, model in {"base": policy, **tuned}.items():
        rollouts = sample(
            model,
            pool.problems,
            n=2,
            temperature=1.0,
            seed=config.seed,
            max_new_tokens=train.max_new_tokens,
        )
        scores = token_logprobs(
            model, rollouts.row_prompt_ids(), rollouts.row_completion_ids(), 32, with_entropy=True
        )
        entropy = float(scores.entropy[scores.mask].mean())
        rows.append(
            {
                "metric": "token_entropy_on_pool",
                "dataset": name,
                "value": entropy,
                "n": len(rollouts),
            }
        )
    for name, model in (("base", policy), ("int", tuned["int"])):
        values = intervention_logprob(model, rule)
        rows.append(
            {
                "metric": "intervention_logprob_per_token",
                "dataset": name,
                "value": float(values.mean()),
                "n": len(values),
            }
        )
    return pd.DataFrame(rows)


def plot_int_experiment(tables: dict[str, pd.DataFrame], path: str | Path | None = None):
    """Zero-advantage ratio and reward per GRPO step for each arm, and held-out pass@k at the end
    with 95% intervals. Returns the figure."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for arm, log in tables["steps"].groupby("arm", sort=False):
        axes[0].plot(log.step, log.frac_reward_zero_std, label=arm)
        axes[1].plot(log.step, log.reward, label=arm)
    axes[0].set(
        xlabel="GRPO step",
        ylabel="frac_reward_zero_std",
        ylim=(-0.02, 1.02),
        title="zero-advantage ratio (hard pool)",
    )
    axes[1].set(xlabel="GRPO step", ylabel="mean reward", title="reward (hard pool)")
    axes[0].legend(fontsize=8)
    final = tables["final"]
    last = final[final.step == final.groupby("arm").step.transform("max")]
    metrics = [m for m in last.metric.unique() if m.startswith("pass@") or m == "accuracy@1"]
    width = 0.8 / max(len(metrics), 1)
    arms = list(dict.fromkeys(last.arm))
    for position, metric in enumerate(metrics):
        rows = last[last.metric == metric].set_index("arm").loc[arms]
        x = [i + position * width for i in range(len(arms))]
        axes[2].bar(
            x,
            rows.value,
            width,
            yerr=[
                (rows.value - rows.ci_low).clip(lower=0).fillna(0),
                (rows.ci_high - rows.value).clip(lower=0).fillna(0),
            ],
            label=metric,
            capsize=3,
        )
    axes[2].set_xticks(
        [i + width * (len(metrics) - 1) / 2 for i in range(len(arms))], arms, fontsize=8
    )
    axes[2].set(ylabel="held-out (hard-test)", title="after GRPO")
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=130, bbox_inches="tight")
    return figure


def small_config(**overrides) -> InTExperimentConfig:
    """A minutes-long version for notebooks and tests: fewer problems, samples and steps."""
    base = InTExperimentConfig(
        pool_candidates=24,
        k=4,
        held_out=12,
        n_continuations=4,
        self_proposals=1,
        table_samples=2,
        grpo=GRPOConfig(
            num_generations=4,
            per_device_train_batch_size=16,
            max_steps=2,
            eval_every=2,
            eval_samples=2,
            eval_ks=(1, 2),
            max_completion_length=120,
        ),
    )
    return replace(base, **overrides)


__all__ = [
    "ARMS",
    "InTExperimentConfig",
    "plot_int_experiment",
    "run_int_experiment",
    "small_config",
]
