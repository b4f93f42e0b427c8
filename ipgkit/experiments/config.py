"""The settings of the control experiments (:class:`ExperimentConfig`); ``settings()`` is the
workspace's cache key, so fields are only added with defaults that leave it unchanged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from ipgkit.errors import IpgkitError
from ipgkit.training.distill import DistillConfig
from ipgkit.training.gains import GainConfig

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
    "IPG amplify",
    "IPG process",
    "Learned gains",
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
        gains: how the "Learned gains" method learns its per-unit gains (over the whole site, on
            the support prompts, early-stopped on the validation problems).
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
    gains: GainConfig = field(default_factory=GainConfig)

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
        record = asdict(self)
        if self.gains == GainConfig():  # added later: default gains keep earlier workspaces' key
            del record["gains"]
        return record


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
