"""The methods of the planted-headroom benchmark (:mod:`ipgkit.experiments.planted`) as it runs
them on a weakened model: every attribution, the causal unit sweep and learned gains, and how a
ranking is scored on finding the planted set S. ``bench`` is a
:class:`~ipgkit.experiments.planted.PlantedBenchmark` (its workspace, tasks and config)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from ipgkit.attribution import (
    AttributionResult,
    IPGConfig,
    activation_magnitude,
    amplification_ipg,
    integrated_gradients,
    ipg,
    policy_gradient,
    random_baseline,
)
from ipgkit.components import ComponentSet, mlp_neurons, resid_neurons
from ipgkit.errors import IpgkitError
from ipgkit.io import config_record
from ipgkit.models.policy import Policy
from ipgkit.progress import tqdm
from ipgkit.tasks import mix_tasks, step_progress
from ipgkit.training.gains import learn_gains

from .methods import PROCESS_ADVANTAGE
from .workspace import digest

#: the units "Sweep + gains" learns gains over: the unit sweep's top 10, the issue's set size
SWEEP_GAIN_UNITS = 10


def site_units(kind: str, layer: int) -> ComponentSet:
    if kind not in ("mlp", "resid"):
        raise IpgkitError(f"a planted site is 'mlp' or 'resid', got {kind!r}")
    return mlp_neurons(layer) if kind == "mlp" else resid_neurons(layer)


def recovery(ranking: AttributionResult | list[int], planted: ComponentSet) -> dict:
    """How well a ranking (a result, or units best first) finds S: precision at |S| and the
    mean rank of S's units (1 = top)."""
    order = ranking
    if isinstance(ranking, AttributionResult):
        order = [int(i) for i in ranking.top(len(ranking.components)).indices]
    rank = {unit: position + 1 for position, unit in enumerate(order)}
    found = set(order[: len(planted.indices)]) & set(planted.indices)
    return {
        "precision_at_size": len(found) / len(planted.indices),
        "mean_rank": float(np.mean([rank[i] for i in planted.indices])),
        "units": len(order),
    }


def rankings(bench, weak: Policy, planted: ComponentSet, kind: str, layer: int) -> dict:
    """Each method's attribution of the weakened model ``weak`` at the planted site, cached in
    the benchmark ``bench``'s workspace (learned gains: the set with its gains, and recovery)."""
    config = bench.config
    units = site_units(kind, layer)
    rollouts = bench.rollouts(weak)
    base = {"policy": bench.key(weak), "units": units.hook_name, "rollouts": digest(rollouts.texts)}
    ipg_config = IPGConfig(n_rollouts=config.n_rollouts, n_steps=config.n_steps, seed=config.seed)
    quiet = {"progress": False}
    support = bench.support

    def attribute(name: str, compute: Callable[[], AttributionResult]) -> AttributionResult:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IPG completeness gap")
            return bench.ws.attribution(name, base, compute)

    on_path = replace(ipg_config, mode="on_path", max_new_tokens=support.max_new_tokens)
    builders = {
        "IPG": lambda: ipg(weak, None, units, config=ipg_config, rollouts=rollouts, **quiet),
        "IPG on-path": lambda: ipg(
            weak, support.problems, units, support.correctness, on_path, **quiet
        ),
        "IPG amplify": lambda: amplification_ipg(
            weak, None, units, None, config.amplify_to, ipg_config, rollouts=rollouts, **quiet
        ),
        "IPG process": lambda: ipg(
            weak,
            None,
            units,
            config=replace(ipg_config, advantage=PROCESS_ADVANTAGE),
            rollouts=rollouts.with_rewards(step_progress),
            **quiet,
        ),
        "Policy Gradient": lambda: policy_gradient(weak, None, units, rollouts=rollouts, **quiet),
        "Integrated Gradients": lambda: integrated_gradients(
            weak, support.problems, units, n_steps=config.n_steps, **quiet
        ),
        "Activation": lambda: activation_magnitude(weak, rollouts, units, **quiet),
        "Random": lambda: random_baseline(weak, units, config.seed),
        "Unit sweep": lambda: unit_sweep(bench, weak, units),
    }
    cache_names = {"IPG process": f"ipg_process_{PROCESS_ADVANTAGE}"}
    rankings = {
        name: attribute(cache_names.get(name, name.lower().replace(" ", "_")), build)
        for name, build in builders.items()
        if name in config.methods
    }
    if "Learned gains" in config.methods:
        rankings["Learned gains"] = learned_gains_ranking(bench, weak, units, planted)
    if "Sweep + gains" in config.methods:  # gains over the unit sweep's top 10
        sweep = attribute("unit_sweep", lambda: unit_sweep(bench, weak, units))
        order = [int(i) for i in sweep.top(len(sweep)).indices]
        top = sweep.top(SWEEP_GAIN_UNITS)
        rankings["Sweep + gains"] = learned_gains_ranking(bench, weak, top, planted, order)
    return rankings


def learned_gains_ranking(
    bench, weak: Policy, units: ComponentSet, planted: ComponentSet, rest: Sequence[int] = ()
):
    """Gains over ``units`` (every unit of the site, or a method's top units), learned on the
    weakened model (train prompts, validation early stopping; resumable in the workspace): the
    set with its gains, and how well the ranking by gain (then ``rest``, the site's other units
    in a method's order) finds S."""
    config = bench.config
    validation = mix_tasks(bench.validation)
    settings = {"policy": bench.key(weak), "units": units.hook_name}
    if units.indices is not None:  # a subset (the whole site keeps its earlier key)
        settings["indices"] = list(units.indices)
    settings["gains"] = config_record(config.gains)
    path = bench.ws.root / "gains" / f"{digest(settings)}"
    run = learn_gains(
        weak,
        bench.support.problems,
        units,
        bench.support.correctness,
        config.gains,
        validation,
        path,
        progress=bench.progress,
    )
    by_gain = torch.argsort(torch.tensor(run.best.gains), descending=True, stable=True)
    order = [run.best.indices[j] for j in by_gain.tolist()]
    ranked = set(order)
    order += [unit for unit in rest if unit not in ranked]
    return run.best, recovery(order, planted)


def unit_sweep(bench, policy: Policy, units: ComponentSet) -> AttributionResult:
    """The causal baseline (Captum's feature ablation, upwards): each unit alone amplified by
    ``bench.config.amplify_to``, scored by the greedy accuracy it adds on the benchmark's support
    prompts. One evaluation per unit of the site, each cached, so a killed sweep resumes unit by
    unit. It asks the question restoration asks, by brute force, at the cost of one evaluation
    per unit instead of one attribution."""
    units = units.resolved(policy.model)
    support = [bench.support]
    base = bench.correct(policy, support).mean()
    gains = [
        bench.correct(policy, support, replace(units, indices=(i,)), bench.config.amplify_to)
        for i in tqdm(units.indices, desc="unit sweep", disable=not bench.progress, leave=False)
    ]
    scores = torch.tensor([g.mean() - base for g in gains], dtype=torch.float64)
    info = {"gamma": bench.config.amplify_to, "problems": len(bench.support), "base": float(base)}
    return AttributionResult(units, scores, method="unit-sweep", info=info)
