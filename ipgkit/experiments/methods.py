"""Table 1's methods: IPG and every baseline, neuron- and SAE-feature-level, each a
:class:`SelectedSets` of component sets attributed on the suite's support set."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ipgkit.attribution import (
    activation_magnitude,
    control_vector,
    integrated_gradients,
    policy_gradient,
    random_baseline,
    reason_score,
    reasoning_neurons,
)
from ipgkit.attribution.result import AttributionResult
from ipgkit.components import ComponentSet
from ipgkit.io import config_record
from ipgkit.models.policy import Policy
from ipgkit.tasks import mix_tasks, step_progress
from ipgkit.training.gains import learn_gains

from .config import FEATURE_METHODS
from .workspace import digest

#: the group advantage of IPG on the process reward: centred, not divided by the group's std.
#: Dividing makes any reward that takes two values within a group give GRPO's advantages of
#: correctness exactly (a right rollout scores 1, a wrong one its step fraction s < 1: the
#: standardised values do not depend on s): on the stage-3 model IPG on step_progress with
#: ``mean_std`` correlated 0.99999999 with IPG (the same top 20); benchmarks/process_advantage.py.
PROCESS_ADVANTAGE = "mean"


@dataclass
class SelectedSets:
    """One method's component sets (several for seeded baselines) and where they apply.

    Attributes:
        method: the method's name in the tables (``"IPG"``, ``"Random"``, ...).
        level: ``"neuron"`` or ``"feature"`` (SAE latents).
        policy: the policy the sets steer (the SAE-spliced one for features).
        policy_key: names that policy's weights in cache keys.
        results: one AttributionResult per seed (one for deterministic methods).
        fixed_p: the set size when the method has no choice (a control vector is one direction).
    """

    method: str
    level: str
    policy: Policy
    policy_key: str
    results: list[AttributionResult]
    fixed_p: int | None = None
    applies_gains: bool = False

    def picks(self, p: int) -> bool:
        """Whether every result can name its top p (False where all scores tie below the whole
        set: learned gains that never beat gain 1 on validation, IPG with no signal)."""
        p = self.fixed_p or p
        return all(p >= len(result) or result.ranks_anything for result in self.results)

    def sets(self, p: int) -> list[ComponentSet]:
        """The top-p units of each result; for learned gains (``applies_gains``: the scores
        are gains) the units carry their gains, which steering multiplies gamma by."""
        chosen = [result.top(self.fixed_p or p) for result in self.results]
        if not self.applies_gains:
            return chosen
        return [
            replace(units, gains=tuple(_scores_of(result, units.indices)))
            for result, units in zip(self.results, chosen, strict=True)
        ]


def _scores_of(result: AttributionResult, indices) -> list[float]:
    position = {unit: j for j, unit in enumerate(result.indices)}
    return [float(result.scores[position[unit]]) for unit in indices]


def table1_methods(suite) -> dict[str, SelectedSets]:
    """Every method of Table 1 that ``suite.config.methods`` asks for, attributed on the same
    support set (Table 1's M prompts): cached in the suite's workspace."""
    rollouts = suite.support_rollouts().select(range(suite.support_count))
    problems = rollouts.problems
    units, key, policy = suite.neurons(), suite.policy_key, suite.policy
    cached, seeds, q = suite.ws.attribution, suite.config.random_seeds, suite.config.n_steps
    base = {
        "policy": key,
        "units": units.hook_name,
        "problems": digest([p.id for p in problems]),
        "rollouts": digest(rollouts.texts),
    }
    quiet = {"progress": False}
    neuron_methods = {
        "IPG": lambda: [suite.ipg("ipg", policy, key, units, rollouts)],
        "Random": lambda: [random_baseline(policy, units, seed) for seed in seeds],
        "Activation": lambda: [
            cached(
                "activation", base, lambda: activation_magnitude(policy, rollouts, units, **quiet)
            )
        ],
        "Reasoning Neuron": lambda: [
            cached(
                "reasoning_neurons",
                base,
                lambda: reasoning_neurons(policy, rollouts, units, **quiet),
            )
        ],
        "Control Vector": lambda: [
            cached("control_vector", base, lambda: control_vector(policy, problems, units, **quiet))
        ],
        "Policy Gradient": lambda: [
            cached(
                "policy_gradient",
                base,
                lambda: policy_gradient(policy, None, units, rollouts=rollouts, **quiet),
            )
        ],
        "Integrated Gradients": lambda: [
            cached(
                "integrated_gradients",
                {**base, "q": q},
                lambda: integrated_gradients(policy, problems, units, n_steps=q, **quiet),
            )
        ],
        **enhancement_methods(suite, base, rollouts),
    }
    wanted = suite.config.methods or (*neuron_methods, *FEATURE_METHODS)
    selected = {
        name: SelectedSets(
            name,
            "neuron",
            policy,
            key,
            build(),
            1 if name == "Control Vector" else None,
            applies_gains=name == "Learned gains",
        )
        for name, build in neuron_methods.items()
        if name in wanted
    }
    if suite.spliced is not None and any(name in wanted for name in FEATURE_METHODS):
        features, spliced, skey = suite.features(), suite.spliced, suite.spliced_key
        fbase = {**base, "policy": skey, "units": features.hook_name}
        feature_methods = {
            "IPG-SAE": lambda: [suite.ipg("ipg_sae", spliced, skey, features, rollouts)],
            "Random-SAE": lambda: [random_baseline(spliced, features, s) for s in seeds],
            "ReasonScore-SAE": lambda: [
                cached("reason_score", fbase, lambda: reason_score(spliced, rollouts, features))
            ],
        }
        for name, build in feature_methods.items():
            if name in wanted:
                selected[name] = SelectedSets(name, "feature", spliced, skey, build())
    return selected


def enhancement_methods(suite, base: dict, rollouts) -> dict:
    """Builders of the methods built for enhancement (issue 19), each a list of results like
    :func:`table1_methods`' others; ``base`` is the cache key of the support set's rollouts."""
    units, key, policy = suite.neurons(), suite.policy_key, suite.policy
    cached = suite.ws.attribution
    return {
        # what amplifying a unit adds: the path from 1 to the largest enhancement gamma
        "IPG amplify": lambda: [
            suite.ipg(
                "ipg_amplify",
                policy,
                key,
                units,
                rollouts,
                alpha_range=(1.0, max(suite.config.gamma_grid)),
            )
        ],
        # a process reward: the fraction of steps right before the first error
        "IPG process": lambda: [
            suite.ipg(
                "ipg_process",
                policy,
                key,
                units,
                rollouts.with_rewards(step_progress),
                advantage=PROCESS_ADVANTAGE,
            )
        ],
        "Learned gains": lambda: [
            cached(
                "learned_gains",
                {**base, "gains": config_record(suite.config.gains)},
                lambda: learned_gains(suite, policy, key, units),
            )
        ],
    }


def learned_gains(suite, policy: Policy, policy_key: str, units: ComponentSet) -> AttributionResult:
    """Per-unit gains over the whole site (:func:`~ipgkit.training.learn_gains` with the suite's
    ``gains`` settings), learned on the support prompts with the validation problems for early
    stopping (the ones that choose every other method's p and gamma), as a result whose scores are
    the gains: its top-p are the units with the largest gains, and Table 1 enhances with all of
    them at gamma = 1. Resumable in ``<workspace>/gains``."""
    problems = suite.support_task.problems[: suite.support_count]
    validation = mix_tasks(suite.tasks("validation", suite.config.validation))
    gain_config = suite.config.gains
    settings = {"policy": policy_key, "units": units.hook_name, "gains": config_record(gain_config)}
    settings["problems"] = digest([p.id for p in problems])
    run = learn_gains(
        policy,
        problems,
        units,
        suite.support_task.correctness,
        gain_config,
        validation,
        suite.ws.root / "gains" / digest(settings),
        progress=suite.progress,
    )
    resolved = run.best
    return AttributionResult(resolved, torch.tensor(resolved.gains), method="learned-gains")
