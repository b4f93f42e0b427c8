"""The shared state of the control experiments: settings, the models, the support set, and the
component sets every method selects, all cached in a :class:`Workspace`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property

from ipgkit import tasks as task_registry
from ipgkit.attribution.ipg import IPGConfig, ipg
from ipgkit.attribution.result import AttributionResult
from ipgkit.components import ComponentSet, mlp_neurons, resid_neurons
from ipgkit.errors import IpgkitError
from ipgkit.io import config_record
from ipgkit.models.policy import Policy
from ipgkit.rollouts import Rollouts, sample
from ipgkit.tasks.base import Task, mix_tasks

from .config import ExperimentConfig
from .methods import SelectedSets, table1_methods
from .workspace import Outcome, Workspace, digest


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
        self.policy_key = f"{self.policy.name}:{weights_digest(self.policy)}"
        settings = {"config": config_record(self.config), "policy": self.policy_key}
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
        """Names the spliced model's weights, the SAE's included: results of another SAE at the
        same layer (a retrained one) never share a cache entry."""
        return f"{self.policy.name}+sae{self.config.layer}:{weights_digest(self.spliced)}"

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
            return table1_methods(self)

    def methods_digest(self) -> str:
        """Fingerprints every method's results (their units and scores), so that a table built on
        them is recomputed when a method changes (new code, a new reward), not only when the
        config does."""
        return digest(
            {
                name: [
                    [result.components.hook_name, list(result.indices), result.scores.tolist()]
                    for result in sets.results
                ]
                for name, sets in self.methods.items()
            }
        )

    @cached_property
    def student(self) -> tuple[Policy, str]:
        """The distilled student (:func:`ipgkit.training.distill.distill`, trained once per
        workspace and settings on train problems the support pool does not use) and its cache
        key."""
        from ipgkit.training.distill import distill

        config = self.config
        settings = {
            "teacher": self.policy_key,
            "distill": config_record(config.distill),
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
                    progress=self.progress,
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
                progress=self.progress,
            )
            for chosen in sets.sets(p)
        ]


def weights_digest(policy: Policy) -> str:
    """A cheap fingerprint of a model's weights (a few statistics per tensor), spliced SAEs'
    included (sae-lens keeps them outside the model's ``state_dict``)."""
    stats = []
    tensors = dict(policy.model.state_dict())
    for site, sae in sorted(getattr(policy.model, "acts_to_saes", {}).items()):
        tensors.update({f"{site}.sae.{name}": value for name, value in sae.state_dict().items()})
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel():
            flat = tensor.detach().double().flatten()
            stats.append([name, round(float(flat.sum()), 6), round(float(flat.abs().sum()), 6)])
    return digest(stats)[:8]
