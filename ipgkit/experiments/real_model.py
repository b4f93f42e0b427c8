"""A real pretrained model (SmolLM2-135M-Instruct by default) on GSM8K and MATH500, and IPG with
steering on it.

SmolLM2-135M-Instruct gets almost no GSM8K problem right, so with correctness as the outcome every
GRPO group has zero advantage and IPG is zero everywhere. The outcome this study attributes is
the paper's other one, completion *length* (tokens): on GSM8K it varies widely from sample to
sample, because the model often falls into a repetition loop that runs to the token budget. IPG
finds the MLP neurons whose activation raises length on a GSM8K-train support set; steering them
(and random sets of the same size) on held-out GSM8K-test problems says whether they control it.

Every rollout set, attribution and evaluation is cached in a :class:`Workspace`, so a killed run
resumes where it stopped.

Example:
    >>> tables = real_model_study(RealModelConfig(), "runs/smollm2")       # doctest: +SKIP
    >>> tables["benchmarks"]                                               # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ipgkit.attribution.baselines import random_baseline
from ipgkit.attribution.ipg import IPGConfig, ipg
from ipgkit.components import mlp_neurons
from ipgkit.errors import IpgkitError
from ipgkit.experiments.workspace import Outcome, Workspace, digest
from ipgkit.models import load_model
from ipgkit.rollouts import sample
from ipgkit.stats import mean_interval, paired_comparison, wilson_interval
from ipgkit.tasks import load
from ipgkit.tasks.grading import extract_answer
from ipgkit.tasks.rewards import length_reward


@dataclass(frozen=True)
class RealModelConfig:
    """Settings of :func:`real_model_study`.

    Attributes:
        model: what :func:`ipgkit.load_model` loads (default: SmolLM2-135M-Instruct, offline).
        data: a folder holding ``gsm8k/`` and ``math500/`` JSONL files.
        benchmark_problems: the first n problems of GSM8K-test and MATH500 for the accuracy table.
        benchmark_tokens: greedy token budget of the accuracy table.
        layer: block whose MLP neurons are attributed and steered.
        support: GSM8K-train problems in the IPG support set.
        n_rollouts: samples per support problem (T = 0.6, top-p 0.8 as in the paper).
        n_steps: alpha points of the right-Riemann sum.
        support_tokens: token budget of the support samples.
        held_out: GSM8K-test problems steered (greedy), disjoint from the support set.
        steering_tokens: token budget of the steered generations.
        top: neurons steered (the top of the signed IPG score, and random sets of this size).
        gammas: steering factors (0 suppresses, > 1 enhances).
        random_seeds: random sets compared with the IPG set.
    """

    model: str = "smollm2-135m-instruct"
    data: str = "../shared/data"
    benchmark_problems: int = 100
    benchmark_tokens: int = 256
    layer: int = 20
    support: int = 24
    n_rollouts: int = 4
    n_steps: int = 5
    support_tokens: int = 192
    held_out: int = 40
    steering_tokens: int = 192
    top: int = 20
    gammas: tuple[float, ...] = (0.0, 2.0)
    random_seeds: int = 2

    def __post_init__(self) -> None:
        counts = {k: v for k, v in asdict(self).items() if isinstance(v, int) and k != "layer"}
        bad = [k for k, v in counts.items() if v < 1]
        if bad:
            raise IpgkitError(f"RealModelConfig: {bad} must be positive")
        if any(not np.isfinite(g) or g < 0 for g in self.gammas):
            raise IpgkitError(f"gammas must be finite and >= 0, got {self.gammas}")


def small_real_config(**overrides) -> RealModelConfig:
    """A minutes-long version (tests, a first look)."""
    settings = dict(
        benchmark_problems=4,
        benchmark_tokens=48,
        support=3,
        n_rollouts=2,
        n_steps=2,
        support_tokens=32,
        held_out=3,
        steering_tokens=32,
        top=5,
        gammas=(0.0,),
        random_seeds=1,
    )
    return RealModelConfig(**{**settings, **overrides})


def benchmark_row(task_name: str, outcome: Outcome, budget: int) -> dict:
    """Greedy accuracy with its 95% Wilson interval, length, and how often the answer format
    was followed (a final answer in ``\\boxed{}``) or the budget ran out."""
    n = len(outcome.problem_ids)
    correct = float(outcome.correct.sum())
    boxed = sum("\\boxed" in text for text in outcome.texts)
    answered = sum(extract_answer(text) is not None for text in outcome.texts)
    # a completion that stopped on its own has EOS inside the budget
    truncated = int((outcome.length >= budget).sum())
    low, high = wilson_interval(correct, n)
    return {
        "task": task_name,
        "n": n,
        "accuracy": correct / n,
        "ci_low": low,
        "ci_high": high,
        "boxed": boxed / n,
        "any_answer": answered / n,
        "truncated": truncated / n,
        "mean_length": float(outcome.length.mean()),
        "max_new_tokens": budget,
    }


def steering_row(method: str, gamma: float, base: Outcome, steered: list[Outcome], budget: int):
    """Length, truncation and accuracy of a steered condition (averaged over seeds), and the
    paired change in length against the unsteered model on the same problems."""
    length = np.mean([o.length for o in steered], axis=0)
    change = paired_comparison(base.length, length)
    mean, low, high = mean_interval(length.tolist())
    return {
        "method": method,
        "gamma": gamma,
        "seeds": len(steered),
        "n": length.size,
        "mean_length": mean,
        "ci_low": low,
        "ci_high": high,
        "length_change": change["difference"],
        "change_ci_low": change["ci_low"],
        "change_ci_high": change["ci_high"],
        "p_value": change["p_value"],
        "truncated": float(np.mean([(o.length >= budget).mean() for o in steered])),
        "accuracy": float(np.mean([o.accuracy for o in steered])),
    }


def real_model_study(
    config: RealModelConfig, out: str | os.PathLike, progress: bool = True, overwrite: bool = False
) -> dict[str, pd.DataFrame]:
    """Run (or resume) the study and write its tables as CSV files in ``out`` (a folder holding
    results of other settings is refused unless ``overwrite``, which moves it aside).

    Returns:
        ``benchmarks`` (GSM8K and MATH500 accuracy), ``top_neurons`` (the IPG ranking's head) and
        ``length_steering`` (IPG and random sets at each gamma against the unsteered model).
    """
    data = Path(config.data)
    for name in ("gsm8k", "math500"):
        if not (data / name).is_dir():
            raise IpgkitError(f"{data / name} not found: pass data=<folder with gsm8k/, math500/>")
    ws = Workspace(out, asdict(config), overwrite=overwrite)
    started = time.perf_counter()
    policy = load_model(config.model)
    benchmarks = _benchmarks(ws, policy, config, progress)
    rollouts, result = _length_attribution(ws, policy, config, progress)
    top = result.to_dataframe().sort_values("rank").head(config.top).reset_index(drop=True)
    tables = {
        "benchmarks": pd.DataFrame(benchmarks),
        "top_neurons": top,
        "length_steering": _length_steering(ws, policy, config, result, progress),
    }
    for name, frame in tables.items():
        ws.table(name, asdict(config), lambda frame=frame: frame)
    ws.note(
        "real_model",
        {
            "seconds": time.perf_counter() - started,
            "support_length_mean": float(rollouts.rewards.mean()),
            "support_length_std": float(rollouts.rewards.std()),
            "frac_reward_zero_std": float(rollouts.frac_reward_zero_std),
            "ipg_info": {k: v for k, v in result.info.items() if isinstance(v, int | float | str)},
        },
    )
    return tables


def _benchmarks(ws: Workspace, policy, config: RealModelConfig, progress: bool) -> list[dict]:
    """Greedy GSM8K and MATH500 accuracy within ``benchmark_tokens``."""
    rows = []
    for name in ("gsm8k", "math500"):
        task = load(name, split="test", path=Path(config.data) / name, n=config.benchmark_problems)
        outcome = ws.evaluate(
            policy, config.model, task, max_new_tokens=config.benchmark_tokens, progress=progress
        )
        rows.append(benchmark_row(name, outcome, config.benchmark_tokens))
    return rows


def _length_attribution(ws: Workspace, policy, config: RealModelConfig, progress: bool):
    """Support rollouts rewarded by length, and IPG of the MLP neurons at ``layer`` on them."""
    key, data = config.model, Path(config.data)
    support = load("gsm8k", split="train", path=data / "gsm8k", n=config.support)
    sampling = dict(
        n=config.n_rollouts,
        temperature=0.6,
        top_p=0.8,
        seed=0,
        max_new_tokens=config.support_tokens,
    )
    rollouts = ws.rollouts(
        "support",
        {"model": key, "problems": digest([p.id for p in support.problems]), **sampling},
        lambda: sample(
            policy, support.problems, reward=length_reward, progress=progress, **sampling
        ),
    )
    units = mlp_neurons(config.layer)
    ipg_config = IPGConfig(
        n_rollouts=config.n_rollouts,
        n_steps=config.n_steps,
        max_new_tokens=config.support_tokens,
        internal_batch_size=8,
    )

    def attribute():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IPG completeness gap")
            return ipg(policy, None, units, config=ipg_config, rollouts=rollouts, progress=progress)

    result = ws.attribution(
        "ipg-length",
        {
            "model": key,
            "units": units.hook_name,
            "config": ipg_config.describe(),
            "rollouts": digest(rollouts.texts),
        },
        attribute,
    )
    return rollouts, result


def _length_steering(ws: Workspace, policy, config: RealModelConfig, result, progress: bool):
    """IPG's top set and random sets at each gamma against the unsteered model (held-out GSM8K)."""
    held_out = load("gsm8k", split="test", path=Path(config.data) / "gsm8k", n=config.held_out)
    budget = config.steering_tokens

    def run(components=None, gamma=1.0) -> Outcome:
        return ws.evaluate(
            policy,
            config.model,
            held_out,
            components,
            gamma,
            max_new_tokens=budget,
            progress=progress,
        )

    base = run()
    rows = [steering_row("unsteered", 1.0, base, [base], budget)]
    units = mlp_neurons(config.layer)
    randoms = [
        random_baseline(policy, units, seed).top(config.top) for seed in range(config.random_seeds)
    ]
    for gamma in config.gammas:
        rows.append(steering_row("IPG", gamma, base, [run(result.top(config.top), gamma)], budget))
        steered = [run(chosen, gamma) for chosen in randoms]
        rows.append(steering_row("Random", gamma, base, steered, budget))
    return pd.DataFrame(rows)


__all__ = [
    "RealModelConfig",
    "benchmark_row",
    "real_model_study",
    "small_real_config",
    "steering_row",
]
