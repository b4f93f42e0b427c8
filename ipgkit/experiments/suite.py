"""The shared state of the control experiments: settings, the models, the support set, and the
component sets every method selects, all cached in a :class:`Workspace`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Literal

import pandas as pd

from ipgkit import tasks as task_registry
from ipgkit.attribution import (
    activation_magnitude,
    control_vector,
    integrated_gradients,
    policy_gradient,
    random_baseline,
    reason_score,
    reasoning_neurons,
)
from ipgkit.attribution.ipg import IPGConfig, ipg
from ipgkit.attribution.result import AttributionResult
from ipgkit.components import ComponentSet, mlp_neurons, resid_neurons
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, sample
from ipgkit.tasks.base import Task, mix_tasks
from ipgkit.training.distill import DistillConfig

from .workspace import Outcome, Workspace, digest

Site = Literal["mlp", "resid"]
#: Table 1's methods: neuron-level, then SAE-feature-level (these need an SAE)
NEURON_METHODS = (
    "IPG",
    "Random",
    "Activation",
    "Reasoning Neuron",
    "Control Vector",
    "Policy Gradient",
    "Integrated Gradients",
)
FEATURE_METHODS = ("IPG-SAE", "Random-SAE", "ReasonScore-SAE")


@dataclass(frozen=True)
class ExperimentConfig:
    """Sizes, grids and sites of ``ipgkit experiments`` (the defaults run the suite in about 40
    minutes on 2 CPU cores; :func:`small_config` runs it in a few).

    Attributes:
        families: task families; attribution uses both (interleaved), tables report each.
        site: ``"mlp"`` (the MLP neurons of ``layer``, a privileged basis; the default) or
            ``"resid"`` (the residual stream after ``layer``).
        layer: block of the attributed neurons, and of the SAE whose latents are attributed.
        support: train prompts per family in the attribution support set (the paper's M / 2).
        n_rollouts, n_steps: IPG's N rollouts per prompt and q alpha points (paper: 5 and 10).
        validation: validation problems per family for choosing p and gamma.
        test: held-out test problems per family for Table 1.
        p_grid: component counts tried on validation for enhancement.
        gamma_grid: enhancement factors (> 1) tried on validation.
        suppress_p: components set to zero in Table 1's suppression column, the same count for
            every method, so suppression compares sets of equal size.
        random_seeds: seeds of the Random baseline on the test split (the paper averages seeds).
        validation_random_seeds: how many of them choose Random's p and gamma on validation.
        dose_problems: test problems per family for the dose-response, support-size, transfer,
            distillation and reasoning-strength experiments.
        dose_gammas: the gamma axis of the dose-response curves (p = ``dose_p``).
        dose_ps: the p axis (gamma = 0 and the enhancement gamma IPG chose on validation).
        dose_p: components steered where p is held fixed.
        support_sizes: numbers of support prompts M (families interleaved) for attribution.
        datasets: ``family/split`` support sets compared for consistency (Dice) and transfer.
        dice_ps: set sizes for Dice overlaps.
        distill_problems: train problems per family the teacher answers for distillation.
        distill: how the distilled student is trained.
        strength_gammas: gammas of the reasoning-strength sweep (length reward).
        strength_p: components in the reasoning-strength set.
        sites: ``(kind, layer)`` pairs tried in the site search (what was tried before settling).
        methods: the methods of Table 1 to run (None: all of :data:`NEURON_METHODS` and, with an
            SAE, :data:`FEATURE_METHODS`); must include ``"IPG"``.
        seed: sampling seed of the support set.
    """

    families: tuple[str, ...] = ("arith-word", "arith-chain")
    site: Site = "mlp"
    layer: int = 2
    support: int = 50
    n_rollouts: int = 5
    n_steps: int = 10
    validation: int = 150
    test: int = 300
    p_grid: tuple[int, ...] = (5, 20)
    gamma_grid: tuple[float, ...] = (1.25, 1.5, 2.0)
    suppress_p: int = 10
    random_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    validation_random_seeds: int = 2
    dose_problems: int = 100
    dose_gammas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    dose_ps: tuple[int, ...] = (1, 5, 10, 20, 40)
    dose_p: int = 10
    support_sizes: tuple[int, ...] = (1, 5, 20, 50, 200)
    datasets: tuple[str, ...] = (
        "arith-word/train",
        "arith-chain/train",
        "arith-word/hard-train",
        "arith-chain/hard-train",
    )
    dice_ps: tuple[int, ...] = (5, 10, 20)
    distill_problems: int = 700
    distill: DistillConfig = field(default_factory=DistillConfig)
    strength_gammas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    strength_p: int = 10
    sites: tuple[tuple[str, int], ...] = (
        ("mlp", 0),
        ("mlp", 1),
        ("mlp", 2),
        ("mlp", 3),
        ("resid", 1),
        ("resid", 2),
    )
    methods: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in (*NEURON_METHODS, *FEATURE_METHODS)]
            if unknown or "IPG" not in self.methods:
                raise IpgkitError(
                    f"methods must include 'IPG' and name only {NEURON_METHODS + FEATURE_METHODS}; "
                    f"got {self.methods}"
                )
        if self.site not in ("mlp", "resid"):
            raise IpgkitError(f"site must be 'mlp' or 'resid', got {self.site!r}")
        if not self.families:
            raise IpgkitError("families must name at least one task family")
        if any(g <= 1.0 for g in self.gamma_grid) or not self.gamma_grid:
            raise IpgkitError(f"gamma_grid holds enhancement factors > 1, got {self.gamma_grid}")
        if any(p < 1 for p in (*self.p_grid, *self.dose_ps, self.suppress_p, self.dose_p)):
            raise IpgkitError("component counts (p) must be >= 1")
        if not 1 <= self.validation_random_seeds <= len(self.random_seeds):
            raise IpgkitError("validation_random_seeds must be between 1 and len(random_seeds)")
        for dataset in self.datasets:
            if dataset.count("/") != 1:
                raise IpgkitError(f"datasets are 'family/split', got {dataset!r}")

    def settings(self) -> dict:
        return asdict(self)


def small_config(**overrides) -> ExperimentConfig:
    """A minutes-long suite for notebooks and tests: few problems, short grids."""
    from ipgkit.training.sft import SFTConfig

    base = ExperimentConfig(
        support=6,
        n_rollouts=4,
        n_steps=4,
        validation=12,
        test=16,
        p_grid=(2, 4),
        gamma_grid=(1.5, 2.0),
        suppress_p=4,
        random_seeds=(0, 1),
        validation_random_seeds=1,
        dose_problems=8,
        dose_gammas=(0.0, 1.0, 2.0),
        dose_ps=(1, 4),
        dose_p=4,
        support_sizes=(2, 6),
        datasets=("arith-word/train", "arith-chain/train"),
        dice_ps=(4,),
        distill_problems=12,
        strength_gammas=(0.0, 1.0, 2.0),
        strength_p=4,
        distill=DistillConfig(
            samples=2,
            max_new_tokens=96,
            sft=SFTConfig(learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=8),
        ),
        sites=(("mlp", 0), ("resid", 0)),
    )
    return replace(base, **overrides)


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

    def sets(self, p: int) -> list[ComponentSet]:
        return [result.top(self.fixed_p or p) for result in self.results]


class Suite:
    """What the experiments share: a workspace, the settings, the base policy (and, lazily, its
    SAE-spliced twin, the support rollouts, each method's attribution and the distilled student).

    Args:
        out_dir: the workspace folder (results are cached there; a rerun resumes).
        config: an :class:`ExperimentConfig`.
        policy: the base policy (default: the embedded model).
        sae: the SAE whose latents are attributed: a layer of the shipped SAEs, a directory or an
            SAE object (default: the shipped SAE at ``config.layer`` for the embedded model; no
            SAE methods otherwise). False leaves the SAE methods out.
        progress: tqdm bars.

    Example:
        >>> suite = Suite("runs/experiments", small_config())                 # doctest: +SKIP
        >>> table = capability_control(suite)                                  # doctest: +SKIP
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        config: ExperimentConfig | None = None,
        policy: Policy | None = None,
        sae=None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> None:
        from ipgkit.models import load_model

        self.config = config or ExperimentConfig()
        self.policy = policy if policy is not None else load_model("arith")
        self.policy_key = f"{self.policy.name}:{_weights_digest(self.policy)}"
        settings = {"config": asdict(self.config), "policy": self.policy_key}
        self.ws = Workspace(out_dir, settings, overwrite=overwrite)
        if sae is None and self.policy.name == "arith":
            sae = self.config.layer
        self.sae = sae if sae is not False else None
        self.progress = progress

    # --- tasks --------------------------------------------------------------------------------

    def task(self, family: str, split: str, n: int) -> Task:
        return task_registry.load(family, split=split, n=n)

    def tasks(self, split: str, n: int) -> list[Task]:
        return [self.task(family, split, n) for family in self.config.families]

    @cached_property
    def support_task(self) -> Task:
        """The support pool: train problems of every family, interleaved, as many as the largest
        support size needs. Table 1's support set is its first ``support * len(families)``."""
        per_family = max(
            self.config.support, -(-max(self.config.support_sizes) // len(self.config.families))
        )
        return mix_tasks(self.tasks("train", per_family))

    @property
    def support_count(self) -> int:
        return self.config.support * len(self.config.families)

    def support_rollouts(
        self,
        policy: Policy | None = None,
        policy_key: str | None = None,
        reward: Callable | None = None,
        reward_name: str = "correctness",
        max_new_tokens: int | None = None,
    ) -> Rollouts:
        """The support pool's rollouts (IPG paper settings: N per prompt, T = 0.6, top-p 0.8),
        sampled once per policy and reward."""
        task = self.support_task
        settings = {
            "policy": policy_key or self.policy_key,
            "problems": len(task),
            "n": self.config.n_rollouts,
            "seed": self.config.seed,
            "reward": reward_name,
            "max_new_tokens": max_new_tokens or task.max_new_tokens,
        }
        return self.paper_rollouts(
            "support",
            settings,
            task,
            policy or self.policy,
            self.config.seed,
            reward,
            max_new_tokens,
        )

    def paper_rollouts(
        self,
        name: str,
        settings,
        task: Task,
        policy: Policy,
        seed: int,
        reward: Callable | None = None,
        max_new_tokens: int | None = None,
    ) -> Rollouts:
        """``n_rollouts`` completions per problem of ``task`` with the IPG paper's sampling
        settings (T = 0.6, top-p 0.8), drawn once per (name, settings) and cached."""
        return self.ws.rollouts(
            name,
            settings,
            lambda: sample(
                policy,
                task.problems,
                n=self.config.n_rollouts,
                temperature=0.6,
                top_p=0.8,
                max_new_tokens=max_new_tokens or task.max_new_tokens,
                seed=seed,
                reward=reward or task.correctness,
                progress=self.progress,
            ),
        )

    # --- components ---------------------------------------------------------------------------

    def neurons(self, site: str | None = None, layer: int | None = None) -> ComponentSet:
        site, layer = site or self.config.site, self.config.layer if layer is None else layer
        return mlp_neurons(layer) if site == "mlp" else resid_neurons(layer)

    @cached_property
    def spliced(self) -> Policy | None:
        """The base policy with the SAE spliced in (error term kept), or None without an SAE."""
        if self.sae is None:
            return None
        from ipgkit.saes import attach_saes

        return attach_saes(self.policy, [self.sae])

    @property
    def spliced_key(self) -> str:
        return f"{self.policy_key}+sae{self.config.layer}"

    def features(self) -> ComponentSet:
        from ipgkit.saes import sae_features

        return sae_features(self.spliced, self.config.layer)

    def ipg(
        self,
        name: str,
        policy: Policy,
        policy_key: str,
        components: ComponentSet,
        rollouts: Rollouts,
        **settings,
    ) -> AttributionResult:
        """IPG on ``rollouts`` (paper mode), cached."""
        config = IPGConfig(n_rollouts=rollouts.n, n_steps=self.config.n_steps, **settings)
        key = {
            "policy": policy_key,
            "units": components.hook_name,
            "config": config.describe(),
            "problems": digest([p.id for p in rollouts.problems]),
            "rollouts": digest(rollouts.texts),
            "reward": rollouts.reward_name,
        }

        def compute() -> AttributionResult:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="IPG completeness gap")
                return ipg(
                    policy,
                    None,
                    components,
                    config=config,
                    rollouts=rollouts,
                    progress=self.progress,
                )

        return self.ws.attribution(name, key, compute)

    @cached_property
    def methods(self) -> dict[str, SelectedSets]:
        """Every method of Table 1, attributed on the same support set (Table 1's M prompts)."""
        with warnings.catch_warnings():  # completeness gaps are reported in the results' delta
            warnings.filterwarnings("ignore", message="IPG completeness gap")
            return self._methods()

    def _methods(self) -> dict[str, SelectedSets]:
        rollouts = self.support_rollouts().select(range(self.support_count))
        problems = rollouts.problems
        units, key, policy = self.neurons(), self.policy_key, self.policy
        cached, seeds, q = self.ws.attribution, self.config.random_seeds, self.config.n_steps
        base = {
            "policy": key,
            "units": units.hook_name,
            "problems": digest([p.id for p in problems]),
            "rollouts": digest(rollouts.texts),
        }
        quiet = {"progress": False}
        neuron_methods = {
            "IPG": lambda: [self.ipg("ipg", policy, key, units, rollouts)],
            "Random": lambda: [random_baseline(policy, units, seed) for seed in seeds],
            "Activation": lambda: [
                cached("activation", base, lambda: activation_magnitude(policy, rollouts, units))
            ],
            "Reasoning Neuron": lambda: [
                cached(
                    "reasoning_neurons", base, lambda: reasoning_neurons(policy, rollouts, units)
                )
            ],
            "Control Vector": lambda: [
                cached("control_vector", base, lambda: control_vector(policy, problems, units))
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
        }
        wanted = self.config.methods or (*neuron_methods, *FEATURE_METHODS)
        selected = {
            name: SelectedSets(
                name, "neuron", policy, key, build(), 1 if name == "Control Vector" else None
            )
            for name, build in neuron_methods.items()
            if name in wanted
        }
        if self.spliced is not None and any(name in wanted for name in FEATURE_METHODS):
            features, spliced, skey = self.features(), self.spliced, self.spliced_key
            fbase = {**base, "policy": skey, "units": features.hook_name}
            feature_methods = {
                "IPG-SAE": lambda: [self.ipg("ipg_sae", spliced, skey, features, rollouts)],
                "Random-SAE": lambda: [random_baseline(spliced, features, s) for s in seeds],
                "ReasonScore-SAE": lambda: [
                    cached("reason_score", fbase, lambda: reason_score(spliced, rollouts, features))
                ],
            }
            for name, build in feature_methods.items():
                if name in wanted:
                    selected[name] = SelectedSets(name, "feature", spliced, skey, build())
        return selected

    @cached_property
    def student(self) -> tuple[Policy, str]:
        """The distilled student (:func:`ipgkit.training.distill.distill`, trained once per
        workspace and settings on train problems the support pool does not use) and its cache key."""
        from ipgkit.training.distill import distill

        config = self.config
        settings = {
            "teacher": self.policy_key,
            "distill": asdict(config.distill),
            "problems": config.distill_problems,
            "families": config.families,
        }
        key = f"{self.policy_key}-distilled:{digest(settings)[:8]}"
        train = mix_tasks(self.tasks("train", config.distill_problems))
        unused = train.problems[len(self.support_task) :]
        if not unused:
            raise IpgkitError(
                f"distill_problems ({config.distill_problems} per family) must exceed the support "
                f"pool ({len(self.support_task)} problems) so the student never sees them"
            )
        train = replace(train, problems=unused)

        def fit() -> dict:
            trained, log, counts = distill(self.policy, train, config.distill, self.progress)
            self.ws.note(
                "student",
                {**counts, "final_loss": float(log.loss.tail(10).mean()), "steps": len(log)},
            )
            return trained.model.state_dict()

        model = self.policy.clone()
        model.model.load_state_dict(self.ws.weights("student", settings, fit))
        model.model.eval()
        model.name = f"{self.policy.name}-distilled"
        return model, key

    # --- evaluation ---------------------------------------------------------------------------

    def evaluate(
        self,
        sets: SelectedSets | None,
        task: Task,
        p: int = 0,
        gamma: float = 1.0,
        policy: Policy | None = None,
        policy_key: str | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Outcome]:
        """Per-problem outcomes of one condition, one per seed of ``sets`` (the unsteered model
        when ``sets`` is None or gamma = 1)."""
        if sets is None:
            return [
                self.ws.evaluate(
                    policy or self.policy,
                    policy_key or self.policy_key,
                    task,
                    max_new_tokens=max_new_tokens,
                )
            ]
        return [
            self.ws.evaluate(
                policy or sets.policy,
                policy_key or sets.policy_key,
                task,
                chosen,
                gamma,
                max_new_tokens=max_new_tokens,
            )
            for chosen in sets.sets(p)
        ]

    def selection(self) -> pd.DataFrame:
        """Validation accuracy of every method over the (p, gamma) grid (cached as a table)."""
        from .control import validation_grid

        return self.ws.table(
            "validation_grid", self.config.settings(), lambda: validation_grid(self)
        )

    def chosen(self, method: str) -> tuple[int, float]:
        """The (p, gamma) a method chose on validation: the best mean accuracy over families
        (and validation seeds); ties go to the smaller p, then the smaller gamma."""
        grid = self.selection()
        rows = grid[(grid.method == method) & (grid.condition == "enhance")]
        if rows.empty:
            raise IpgkitError(f"no validation results for method {method!r}")
        best = rows.sort_values(["accuracy", "p", "gamma"], ascending=[False, True, True]).iloc[0]
        return int(best.p), float(best.gamma)


def _weights_digest(policy: Policy) -> str:
    """A cheap fingerprint of a model's weights (a few statistics per tensor)."""
    stats = []
    for name, tensor in policy.model.state_dict().items():
        if tensor.is_floating_point() and tensor.numel():
            flat = tensor.detach().double().flatten()
            stats.append([name, round(float(flat.sum()), 6), round(float(flat.abs().sum()), 6)])
    return digest(stats)[:8]
