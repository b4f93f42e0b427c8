"""Planted headroom: a ground truth for outcome attribution (issue 19).

A weakened copy of the model scales a known set S of units (the planted set) by ``factor < 1``
at every position, through the one scaling hook. Accuracy drops; restoring S (the oracle: S
scaled by ``1 / factor``) gives it back exactly. Each method then attributes the weakened model
from its own rollouts and is scored twice:

- recovery: does its top-|S| contain S (precision at |S|), and where do S's units rank;
- restoration: its top-k amplified by gamma (k and gamma chosen on validation problems), as a
  fraction of the oracle's gain on test problems, with a bootstrap interval and paired tests
  against the weakened model and against Random.

S is chosen by rules that favour no method: ``"random"`` (seeded), or ``"top-activation"`` (on
the unmodified model's support rollouts). Everything is cached, so a rerun resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ipgkit.attribution import (
    activation_magnitude,
)
from ipgkit.components import ComponentSet, scaling_hook
from ipgkit.errors import IpgkitError
from ipgkit.io import atomic_write_text, config_record
from ipgkit.models.policy import Policy
from ipgkit.progress import tqdm
from ipgkit.rollouts import sample
from ipgkit.stats import fraction_of_oracle_gain, paired_comparison
from ipgkit.tasks import load, mix_tasks
from ipgkit.training.gains import GainConfig

from .planted_methods import rankings as planted_rankings
from .planted_methods import recovery, site_units
from .suite import weights_digest
from .workspace import Outcome, Workspace, digest

#: every method the benchmark can score; ``PlantedConfig.methods`` picks
PLANTED_METHODS = (
    "IPG",
    "IPG on-path",
    "IPG amplify",
    "IPG process",
    "Policy Gradient",
    "Integrated Gradients",
    "Activation",
    "Random",
    "Learned gains",
    "Unit sweep",
    "Sweep + gains",
)


#: learned gains in the benchmark: a larger step and ceiling than :class:`GainConfig`'s, so
#: that 60 steps can take a unit from 1 to the oracle's 1 / factor = 10
PLANTED_GAINS = GainConfig(
    grpo=replace(GainConfig().grpo, max_steps=60, learning_rate=0.2), max_gain=10.0
)


@dataclass(frozen=True)
class PlantedConfig:
    """Settings of :func:`planted_headroom` (``ipgkit planted``).

    Attributes:
        families: task families; attribution uses both (interleaved), results pool them.
        sites: ``(kind, layer)`` where S is planted: ``"mlp"`` (MLP neurons) or ``"resid"``.
            The defaults are where weakening costs the shipped model accuracy at all: its MLP
            neurons are redundant (ten of them at 0.1 cost at most 9 points in any block, twenty
            at most 15, in block 0), the residual stream of blocks 1 and 2 is not.
        rules: how S is chosen: ``"random"`` or ``"top-activation"``.
        sizes: |S|, the planted units (one planted set per size, site and rule).
        factor: the weakening factor (< 1) applied to S at every position; the oracle scales S
            by ``1 / factor``, a gamma every method may also choose on validation.
        min_drop: the accuracy the weakening must cost (test, pooled) for a planted set to be
            scored; a smaller drop leaves no headroom and the row says so.
        support: train prompts per family the methods attribute on (rollouts of the weakened
            model).
        n_rollouts, n_steps: IPG's N rollouts per prompt and q alpha points.
        validation, test: problems per family for choosing (k, gamma) and for reporting.
        k_grid: set sizes tried on validation.
        gamma_grid: amplification factors tried on validation, besides ``1 / factor``.
        amplify_to: gamma_max of amplification IPG's path (alpha from 1 to it); amplifying a
            whole site by ``1 / factor`` at once leaves the model's working range.
        methods: the methods scored (:data:`PLANTED_METHODS`).
        gains: learned gains' settings (over every unit of the site).
        (``"Unit sweep"`` amplifies each unit of the site alone by ``amplify_to``: one
        evaluation per unit; ``"Sweep + gains"`` learns gains over its top 10.)
        seed: seeds S (rule ``"random"``), the rollouts and Random.
    """

    families: tuple[str, ...] = ("arith-word", "arith-chain")
    sites: tuple[tuple[str, int], ...] = (("resid", 1), ("resid", 2), ("mlp", 0))
    rules: tuple[str, ...] = ("random", "top-activation")
    sizes: tuple[int, ...] = (10, 20)
    factor: float = 0.1
    min_drop: float = 0.10
    support: int = 50
    n_rollouts: int = 5
    n_steps: int = 10
    validation: int = 100
    test: int = 200
    k_grid: tuple[int, ...] = (10, 20)
    gamma_grid: tuple[float, ...] = (1.5, 2.0, 4.0)
    amplify_to: float = 2.0
    methods: tuple[str, ...] = PLANTED_METHODS
    gains: GainConfig = field(default_factory=lambda: PLANTED_GAINS)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise IpgkitError(f"factor must be in (0, 1) to weaken the units, got {self.factor}")
        unknown = set(self.methods) - set(PLANTED_METHODS)
        if unknown or not set(self.rules) <= {"random", "top-activation"}:
            raise IpgkitError(
                f"unknown methods {sorted(unknown)} or rules {self.rules}; methods are "
                f"{PLANTED_METHODS}, rules 'random' and 'top-activation'"
            )
        if not self.sizes or any(n < 1 for n in (*self.sizes, *self.k_grid)):
            raise IpgkitError(f"sizes and k_grid must be >= 1, got {self.sizes}, {self.k_grid}")
        if self.amplify_to <= 1:
            raise IpgkitError(f"amplify_to must be > 1, got {self.amplify_to}")

    @property
    def oracle_gamma(self) -> float:
        return 1 / self.factor


def weakened(policy: Policy, planted: ComponentSet, factor: float) -> Policy:
    """A copy of ``policy`` whose model scales ``planted`` by ``factor`` at every position, for
    good (a permanent hook: steering and attribution hooks come and go on top of it), under a
    name that keeps its cache entries apart from the unmodified model's.

    Example:
        >>> weak = weakened(policy, mlp_neurons(0, [3, 17]), 0.25)   # doctest: +SKIP
    """
    planted = planted.validate(policy.model)
    copy = policy.clone()
    copy.model.add_hook(planted.hook_name, scaling_hook(planted, factor), is_permanent=True)
    tag = digest([planted.hook_name, list(planted.indices), factor])[:8]
    return replace(copy, name=f"{policy.name}-planted-{tag}")


class PlantedBenchmark:
    """The workspace, tasks and evaluations shared by every planted set."""

    def __init__(self, policy: Policy, config: PlantedConfig, out_dir, progress: bool = True):
        self.policy, self.config, self.progress = policy, config, progress
        # what to run (methods, planted sets) is not part of the key: each result is cached
        # under its own planted set and method, so a rerun with more of them reuses the rest
        record = config_record(config)
        for which in ("methods", "sites", "rules", "sizes"):
            del record[which]
        settings = {"config": record, "policy": self.key(policy)}
        self.ws = Workspace(out_dir, settings)
        self.validation = [
            load(f, split="validation", n=config.validation) for f in config.families
        ]
        self.test = [load(f, split="test", n=config.test) for f in config.families]
        per_family = [load(f, split="train", n=config.support) for f in config.families]
        self.support = mix_tasks(per_family)

    @staticmethod
    def key(policy: Policy) -> str:
        """Names a policy in cache keys: its name (a weakened copy's carries its planted set)
        and a fingerprint of its weights."""
        return f"{policy.name}:{weights_digest(policy)}"

    def correct(self, policy: Policy, tasks, sets=None, gamma: float = 1.0) -> np.ndarray:
        """Greedy per-problem correctness over ``tasks`` (pooled), steered, cached."""
        key = self.key(policy)
        outcomes: list[Outcome] = [
            self.ws.evaluate(policy, key, task, sets, gamma, progress=False) for task in tasks
        ]
        return np.concatenate([o.correct for o in outcomes])

    def rollouts(self, policy: Policy):
        """The support prompts' rollouts of ``policy``, rewarded by correctness (cached); a
        method with another reward rescores them (``Rollouts.with_rewards``)."""
        config = self.config
        settings = {"policy": self.key(policy), "n": config.n_rollouts, "reward": "correctness"}
        settings["problems"] = digest([p.id for p in self.support.problems])
        return self.ws.rollouts(
            "support",
            settings,
            lambda: sample(
                policy,
                self.support.problems,
                n=config.n_rollouts,
                temperature=0.6,
                top_p=0.8,
                max_new_tokens=self.support.max_new_tokens,
                seed=config.seed,
                reward=self.support.correctness,
                progress=False,
            ),
        )

    def planted_set(self, kind: str, layer: int, rule: str, size: int) -> ComponentSet:
        """S: ``size`` units of the site by ``rule`` (a larger size's random S contains the
        smaller's: one seeded permutation)."""
        units = site_units(kind, layer).resolved(self.policy.model)
        if rule == "random":
            generator = torch.Generator().manual_seed(self.config.seed)
            chosen = torch.randperm(len(units), generator=generator)[:size]
            return replace(units, indices=tuple(sorted(int(i) for i in chosen)))
        magnitude = activation_magnitude(
            self.policy, self.rollouts(self.policy), units, progress=False
        )
        return replace(units, indices=tuple(sorted(magnitude.top(size).indices)))


def planted_headroom(
    policy: Policy,
    config: PlantedConfig | None = None,
    out_dir: str | os.PathLike = "runs/planted",
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) the benchmark: one row per (site, rule, method), plus each planted set's
    weakened, oracle and headroom numbers; written to ``<out_dir>/planted.csv``.

    Example:
        >>> table = planted_headroom(ipgkit.load_model("arith"), PlantedConfig())  # doctest: +SKIP
        >>> table.query("method == 'IPG amplify'")[["site", "fraction_of_oracle"]]  # doctest: +SKIP
    """
    config = config or PlantedConfig()
    bench = PlantedBenchmark(policy, config, out_dir, progress)
    rows = []
    plants = [
        (kind, layer, rule, size)
        for kind, layer in config.sites
        for rule in config.rules
        for size in config.sizes
    ]
    for plant in tqdm(plants, desc="planted", disable=not progress):
        rows += _score_plant(bench, *plant)
    table = pd.DataFrame(rows)
    atomic_write_text(Path(out_dir) / "planted.csv", table.to_csv(index=False))
    return table


def _score_plant(bench: PlantedBenchmark, kind: str, layer: int, rule: str, size: int) -> list:
    config, policy = bench.config, bench.policy
    planted = bench.planted_set(kind, layer, rule, size)
    weak = weakened(policy, planted, config.factor)
    head = {"site": f"{kind} {layer}", "rule": rule, "size": size}
    head["planted"] = " ".join(map(str, planted.indices))
    base, weak_test = bench.correct(policy, bench.test), bench.correct(weak, bench.test)
    oracle = bench.correct(weak, bench.test, planted, config.oracle_gamma)
    head.update(
        base_accuracy=base.mean(),
        weakened_accuracy=weak_test.mean(),
        oracle_accuracy=oracle.mean(),
        drop=base.mean() - weak_test.mean(),
    )
    if head["drop"] < config.min_drop:
        return [{**head, "method": "(no headroom)"}]
    rankings = planted_rankings(bench, weak, planted, kind, layer)
    random_test = None
    rows = []
    for method, ranking in rankings.items():
        k, gamma, steered = _restore(bench, weak, ranking)
        found = ranking[1] if isinstance(ranking, tuple) else recovery(ranking, planted)
        test = bench.correct(weak, bench.test, steered, gamma)
        if method == "Random":
            random_test = test
        fraction, low, high = fraction_of_oracle_gain(weak_test, test, oracle, config.seed)
        versus_weak = paired_comparison(weak_test, test)
        rows.append(
            {
                **head,
                "method": method,
                **found,
                "k": k,
                "gamma": gamma,
                "accuracy": test.mean(),
                "fraction_of_oracle": fraction,
                "fraction_ci_low": low,
                "fraction_ci_high": high,
                "vs_weakened": versus_weak["difference"],
                "vs_weakened_p": versus_weak["p_value"],
                "_test": test,
            }
        )
    for row in rows:  # paired against Random on the same problems
        test = row.pop("_test")
        if random_test is not None and row["method"] != "Random":
            versus = paired_comparison(random_test, test)
            row.update(vs_random=versus["difference"], vs_random_p=versus["p_value"])
    return rows


def _restore(bench: PlantedBenchmark, weak: Policy, ranking):
    """(k, gamma, set) that restore best on validation: a method's top-k amplified by gamma
    (the grid and the oracle's 1 / factor); learned gains apply as learned (k = every unit,
    gamma = 1)."""
    if isinstance(ranking, tuple):  # learned gains: (the set with its gains, recovery)
        return len(ranking[0]), 1.0, ranking[0]
    config = bench.config
    gammas = sorted({*config.gamma_grid, config.oracle_gamma})
    best = None
    for k in config.k_grid:
        chosen = ranking.top(k)
        for gamma in gammas:
            accuracy = bench.correct(weak, bench.validation, chosen, gamma).mean()
            if best is None or accuracy > best[0]:
                best = (accuracy, k, gamma, chosen)
    return best[1], best[2], best[3]


def small_planted_config(**overrides) -> PlantedConfig:
    """A minutes-long version: one site and rule, few problems, cheap methods."""
    base = PlantedConfig(
        sites=(("mlp", 0),),
        rules=("top-activation",),
        sizes=(10,),
        factor=0.25,
        support=4,
        n_steps=4,
        validation=12,
        test=24,
        k_grid=(10,),
        gamma_grid=(4.0,),
        methods=("IPG", "IPG amplify", "Activation", "Random"),
    )
    return replace(base, **overrides)


__all__ = [
    "PLANTED_METHODS",
    "PlantedConfig",
    "planted_headroom",
    "recovery",
    "small_planted_config",
    "weakened",
]
