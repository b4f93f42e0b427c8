"""The one result type of every attribution method (IPG and the baselines): scores per unit."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError, no_signal_advice
from ipgkit.io import load_tensors, save_tensors
from ipgkit.rollouts import Rollouts

FORMAT_VERSION = 1


@dataclass
class AttributionResult:
    """Scores for the units of one ComponentSet, from IPG or a baseline.

    Attributes:
        components: the scored units, with explicit indices (``scores[j]`` is ``indices[j]``).
        scores: [units] signed scores (IPG: averaged over prompts). Higher = more of the outcome.
        stderr: [units] standard error across prompts, or None for methods without one.
        per_prompt: [prompts, units] per-prompt scores, or None.
        method: ``"ipg"``, ``"random"``, ``"activation"``, ``"reasoning_neuron"``,
            ``"control_vector"``, ``"policy_gradient"``, ``"integrated_gradients"``, ...
        info: JSON-ready details: settings, the completeness delta, rewards, timings.
        rollouts: IPG in paper mode: the support set it scored (what :meth:`to_html` shows per
            token); not part of :meth:`save` (``ipgkit attribute`` writes it beside the result
            with :meth:`Rollouts.save`).

    Example:
        >>> result.to_dataframe().head()                 # doctest: +SKIP
        >>> with ipgkit.steer(policy, result.top(20), gamma=1.5): ...   # doctest: +SKIP
    """

    components: ComponentSet
    scores: Float[Tensor, " units"]
    stderr: Float[Tensor, " units"] | None = None
    per_prompt: Float[Tensor, "prompts units"] | None = None
    method: str = "ipg"
    info: dict[str, Any] = field(default_factory=dict)
    rollouts: Rollouts | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.components.indices is None:
            raise IpgkitError("an AttributionResult needs resolved component indices")
        units = len(self.components.indices)
        self.scores = torch.as_tensor(self.scores, dtype=torch.float64).detach().cpu()
        if self.scores.shape != (units,):
            raise IpgkitError(f"scores have shape {tuple(self.scores.shape)}, expected ({units},)")
        if self.stderr is not None:
            self.stderr = torch.as_tensor(self.stderr, dtype=torch.float64).detach().cpu()
        if self.per_prompt is not None:
            self.per_prompt = torch.as_tensor(self.per_prompt, dtype=torch.float64).detach().cpu()

    @classmethod
    def from_per_prompt(
        cls,
        components: ComponentSet,
        per_prompt: Float[Tensor, "prompts units"],
        method: str,
        info: dict[str, Any] | None = None,
    ) -> AttributionResult:
        """Scores = mean over prompts; stderr = sample std over prompts / sqrt(prompts)."""
        per_prompt = torch.as_tensor(per_prompt, dtype=torch.float64)
        prompts = per_prompt.shape[0]
        if prompts == 0:
            raise IpgkitError("no prompts to average over")
        stderr = (
            per_prompt.std(0, unbiased=True) / math.sqrt(prompts)
            if prompts > 1
            else torch.full((per_prompt.shape[1],), math.nan, dtype=torch.float64)
        )
        return cls(components, per_prompt.mean(0), stderr, per_prompt, method, dict(info or {}))

    # --- what researchers read --------------------------------------------------------------------

    @property
    def delta(self) -> float | None:
        """Completeness check: sum of scores minus the change they should add up to (see info)."""
        return self.info.get("delta")

    @property
    def frac_reward_zero_std(self) -> float | None:
        """Fraction of prompts whose rollouts all earned the same reward (they carry no signal)."""
        return self.info.get("frac_reward_zero_std")

    @property
    def indices(self) -> tuple[int, ...]:
        return self.components.indices  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.indices)

    def ranking(self, by: Literal["score", "abs", "negative"] = "score") -> Tensor:
        """Positions into ``scores`` from best to worst (``abs``: largest magnitude first;
        ``negative``: most negative first). Ties keep index order."""
        key = {"score": self.scores, "abs": self.scores.abs(), "negative": -self.scores}.get(by)
        if key is None:
            raise IpgkitError(f"by must be 'score', 'abs' or 'negative', got {by!r}")
        return torch.sort(key, descending=True, stable=True).indices

    @property
    def ranks_anything(self) -> bool:
        """False when every score is the same (e.g. IPG where no prompt's rollouts disagree):
        then no unit ranks above another and :meth:`top` refuses."""
        return len(self) < 2 or bool(self.scores.max() != self.scores.min())

    def top(self, p: int, by: Literal["score", "abs", "negative"] = "score") -> ComponentSet:
        """The ``p`` best units as a ComponentSet (ready for :func:`ipgkit.steer`).

        The paper selects the top-p of the signed score: units whose activation raises the outcome.
        Refuses (:class:`~ipgkit.errors.IpgkitError`) when every score is equal, where the
        "top" would be the first p unit indices.
        """
        if not isinstance(p, int) or p < 1:
            raise IpgkitError(f"p must be a positive integer, got {p!r}")
        if p > len(self):
            raise IpgkitError(f"asked for the top {p} of only {len(self)} units")
        if p < len(self) and not self.ranks_anything:
            raise IpgkitError(
                f"cannot pick the top {p} of {len(self)} units at {self.components.hook_name}: "
                f"all {len(self)} {self.method} scores equal {float(self.scores[0]):g}; "
                + no_signal_advice(self.frac_reward_zero_std)
            )
        chosen = [self.indices[j] for j in self.ranking(by)[:p].tolist()]
        return ComponentSet(
            self.components.hook_name,
            tuple(chosen),
            self.components.kind,
            self.components.directions,
        )

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table, one row per unit: hook, kind, index, score, stderr, rank (1 = highest)."""
        rank = torch.empty(len(self), dtype=torch.long)
        rank[self.ranking("score")] = torch.arange(1, len(self) + 1)
        stderr = self.stderr.tolist() if self.stderr is not None else [math.nan] * len(self)
        return pd.DataFrame(
            {
                "hook": self.components.hook_name,
                "kind": self.components.kind,
                "index": list(self.indices),
                "score": self.scores.tolist(),
                "stderr": stderr,
                "rank": rank.tolist(),
                "method": self.method,
            }
        )

    def __repr__(self) -> str:
        best = ", ".join(
            f"{self.indices[j]}: {self.scores[j]:+.3g}" for j in self.ranking()[:5].tolist()
        )
        extra = ""
        if self.delta is not None:
            extra += f", delta={self.delta:+.3g}"
        if self.frac_reward_zero_std is not None:
            extra += f", frac_reward_zero_std={self.frac_reward_zero_std:.2f}"
        return (
            f"AttributionResult(method={self.method!r}, hook={self.components.hook_name!r}, "
            f"units={len(self)}, top=[{best}]{extra})"
        )

    def to_html(self, policy=None, rollouts: Rollouts | None = None, **options) -> str:
        """A self-contained HTML report (see :func:`ipgkit.attribution.report.attribution_report`):
        summary, completeness, scores; with ``policy``, per-token heat maps of the top units on
        correct and wrong rollouts (``rollouts``, or the support set this result carries) and
        their feature pages. ``options`` are :class:`~ipgkit.attribution.report.ReportOptions`
        fields (``top``, ``pairs``, ...).

        Example:
            >>> Path("report.html").write_text(result.to_html(policy))      # doctest: +SKIP
        """
        from .report import ReportOptions, attribution_report

        return attribution_report(self, policy, rollouts, ReportOptions(**options))

    # --- persistence ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file (tensors + JSON metadata; no pickle). Atomic."""
        tensors = {"scores": self.scores}
        if self.stderr is not None:
            tensors["stderr"] = self.stderr
        if self.per_prompt is not None:
            tensors["per_prompt"] = self.per_prompt
        if self.components.directions is not None:
            tensors["directions"] = self.components.directions
        header = {
            "format_version": FORMAT_VERSION,
            "hook_name": self.components.hook_name,
            "kind": self.components.kind,
            "indices": list(self.indices),
            "method": self.method,
            "info": self.info,
        }
        return save_tensors(path, tensors, "ipgkit", header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> AttributionResult:
        """Read a file written by :meth:`save`."""
        tensors, header = load_tensors(path, "ipgkit", "attribution result")
        components = ComponentSet(
            header["hook_name"], tuple(header["indices"]), header["kind"], tensors.get("directions")
        )
        return cls(
            components,
            tensors["scores"],
            tensors.get("stderr"),
            tensors.get("per_prompt"),
            header["method"],
            header["info"],
        )

    # --- plots ------------------------------------------------------------------------------------

    def plot(self, top: int = 20, ax=None, title: str | None = None):
        """Scores per unit index (with +-1 stderr where known), the ``top`` units highlighted.

        Returns the matplotlib Axes; without ``ax`` the figure is laid out so that a plain
        ``savefig`` clips nothing.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(9, 3.2), layout="constrained")
        index = torch.tensor(self.indices)
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        if self.stderr is not None and torch.isfinite(self.stderr).all():
            ax.errorbar(
                index, self.scores, yerr=self.stderr, fmt="none", ecolor="0.75", elinewidth=0.8
            )
        ax.scatter(index, self.scores, s=8, color="0.45", label="all units")
        chosen = self.ranking()[: min(top, len(self))]
        ax.scatter(
            index[chosen], self.scores[chosen], s=18, color="tab:red", label=f"top {len(chosen)}"
        )
        ax.set_xlabel(f"{self.components.kind} index at {self.components.hook_name}")
        ax.set_ylabel(f"{self.method} score")
        ax.set_title(title or f"{self.method}: {self.info.get('reward', '')}".rstrip(": "))
        ax.legend(loc="best", fontsize=8, frameon=False)
        return ax
