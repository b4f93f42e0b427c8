"""The settings of an IPG run (:class:`IPGConfig`); its :meth:`~IPGConfig.describe` is the cache
key of every stored attribution, so fields are only ever added with defaults left out of it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

from torch import Tensor

from ipgkit.errors import IpgkitError
from ipgkit.memory import as_budget
from ipgkit.rollouts import AdvantageMode

from .engine import PathPositions
from .quadrature import IntegrationRule, integration_points


@dataclass(frozen=True)
class IPGConfig:
    """Settings of an IPG run (defaults follow the IPG paper, arXiv 2602.02313).

    Attributes:
        n_rollouts: N rollouts per prompt, the group for advantages (paper: 3 to 5).
        n_steps: q, the number of alpha points (paper: 10).
        method: quadrature rule over alpha: ``riemann_right`` (paper), ``riemann_left``,
            ``riemann_middle``, ``riemann_trapezoid`` or ``gausslegendre`` (Captum's names).
        mode: ``paper``: sample once from the unmodified model and re-score those rollouts at every
            alpha; ``on_path``: sample fresh rollouts under each alpha's scaled model, which makes
            the estimate unbiased for J(1) - J(0) (with ``rloo`` advantages).
        advantage: group-relative advantage: ``mean_std`` (GRPO), ``mean``, ``rloo`` or ``none``.
            None picks ``mean_std`` in paper mode and ``rloo`` in on-path mode.
        baseline: h': ``"zero"`` (paper), ``"mean"`` (mean activation over the support set's
            rollouts at the summed positions), or a tensor with one value per unit.
        positions: ``"all"`` (the path scales every position, the paper's setting) or
            ``"generated"`` (completion tokens only). Attributions sum over the same positions.
        temperature, top_p: sampling settings (paper: 0.6 and 0.8).
        max_new_tokens: longest completion.
        seed: sampling seed (on-path mode uses ``seed + k`` at alpha point k).
        internal_batch_size: (rollout, alpha) rows per forward/backward pass. On a 2-core CPU,
            16 to 32 rows run fastest (larger batches spill the caches); raise it on a GPU.
        sampling_batch_size: rollouts per sampling batch.
        pack: put all alpha points of all prompts in the batch dimension (chunked by length); with
            False, one pass per (prompt, alpha), the slow reference path.
        seeding: the sampler's seeding (see :class:`ipgkit.rollouts.SamplingConfig`);
            ``"problem"`` makes each prompt's rollouts independent of the others', which lets a
            torchrun launch shard prompts and still equal the single-process result.
        alpha_range: (start, end) of alpha: the units move from ``h' + start (h - h')`` to
            ``h' + end (h - h')`` and the scores add up to J(end) - J(start). (0, 1) is IPG, what
            each unit contributes now; (1, gamma_max) is amplification attribution, what
            amplifying each unit up to gamma_max adds (:func:`amplification_ipg`).
        memory_budget_mib: working memory of one scoring pass, in MiB (see
            :class:`ipgkit.memory.MemoryBudget`): rows per pass and logit positions per block
            follow it, attention is fused and blocks above the hook are recomputed, so long
            chains of thought fit. None (default): ``internal_batch_size`` rows per pass, TL's
            attention. Scores agree either way to float rounding (~1e-6 relative).
    """

    n_rollouts: int = 5
    n_steps: int = 10
    method: IntegrationRule = "riemann_right"
    mode: Literal["paper", "on_path"] = "paper"
    advantage: AdvantageMode | None = None
    baseline: Literal["zero", "mean"] | Tensor = "zero"
    positions: PathPositions = "all"
    temperature: float = 0.6
    top_p: float = 0.8
    max_new_tokens: int = 256
    seed: int = 0
    internal_batch_size: int = 32
    sampling_batch_size: int = 64
    pack: bool = True
    seeding: Literal["batch", "problem"] = "batch"
    memory_budget_mib: float | None = None
    alpha_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        integration_points(self.method, self.n_steps)  # validates both
        start, end = (float(x) for x in self.alpha_range)
        if not (math.isfinite(end) and 0 <= start < end):
            raise IpgkitError(
                f"alpha_range must be (start, end) with 0 <= start < end, got {self.alpha_range}"
            )
        object.__setattr__(self, "alpha_range", (start, end))
        as_budget(self.memory_budget_mib)  # validates it
        if self.mode not in ("paper", "on_path"):
            raise IpgkitError(f"mode must be 'paper' or 'on_path', got {self.mode!r}")
        if self.advantages not in ("mean_std", "mean", "rloo", "none"):
            raise IpgkitError(
                f"unknown advantage {self.advantage!r}; choose 'mean_std', 'mean', 'rloo' or 'none'"
            )
        if self.advantages != "none" and self.n_rollouts < 2:
            raise IpgkitError(
                f"group-relative advantages ({self.advantages!r}) need n_rollouts >= 2, got "
                f"{self.n_rollouts}; use advantage='none' for single rollouts"
            )
        if self.n_rollouts < 1:
            raise IpgkitError(f"n_rollouts must be >= 1, got {self.n_rollouts}")
        if isinstance(self.baseline, str) and self.baseline not in ("zero", "mean"):
            raise IpgkitError(f"baseline must be 'zero', 'mean' or a tensor, got {self.baseline!r}")
        if self.positions not in ("all", "generated"):
            raise IpgkitError(f"positions must be 'all' or 'generated', got {self.positions!r}")
        if self.internal_batch_size < 1 or self.sampling_batch_size < 1:
            raise IpgkitError("internal_batch_size and sampling_batch_size must be >= 1")

    @property
    def advantages(self) -> AdvantageMode:
        """The advantage mode in force (``advantage``, or the mode's default when None)."""
        if self.advantage is not None:
            return self.advantage
        return "mean_std" if self.mode == "paper" else "rloo"

    def describe(self) -> dict:
        """JSON-ready settings (a tensor baseline is recorded as ``"tensor"``)."""
        settings = asdict(replace(self, baseline="zero"))
        settings["baseline"] = self.baseline if isinstance(self.baseline, str) else "tensor"
        settings["advantage"] = self.advantages
        # defaults of options added later are left out, so earlier cache keys stay valid
        if self.seeding == "batch":
            del settings["seeding"]
        if self.memory_budget_mib is None:
            del settings["memory_budget_mib"]
        if self.alpha_range == (0.0, 1.0):
            del settings["alpha_range"]
        else:
            settings["alpha_range"] = list(self.alpha_range)
        return settings
