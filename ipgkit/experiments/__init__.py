"""The IPG paper's control experiments on any policy, one function per experiment.

Each function takes a :class:`Suite` (a workspace folder, an :class:`ExperimentConfig` and the
policy) and returns a tidy DataFrame; results are cached in the workspace as they finish, so a
rerun, or an interrupted ``ipgkit experiments --all``, picks up where it stopped.

=====================  =======================================================================
``control``            :func:`capability_control`: Table 1 (enhance / suppress, every baseline)
``head_to_head``       :func:`head_to_head`: IPG minus Random / Activation, paired
``dose``               :func:`dose_response`: accuracy vs gamma and vs p
``support``            :func:`support_size`: accuracy vs support prompts M, h' = zero / mean
``consistency``        :func:`dataset_consistency`: Dice of sets found on different datasets
``transfer``           :func:`dataset_transfer`: the set from dataset A steering family B
``distilled``          :func:`distilled_transfer`: base-model sets steering a distilled student
``strength``           :func:`reasoning_strength`: length reward, length and accuracy vs gamma
``sites``              :func:`site_search`: layers, sites and rollout modes tried (validation)
=====================  =======================================================================

Example:
    >>> from ipgkit.experiments import Suite, capability_control, small_config
    >>> suite = Suite("runs/experiments", small_config())                     # doctest: +SKIP
    >>> capability_control(suite)                                             # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pandas as pd

from ipgkit import distributed
from ipgkit.errors import IpgkitError
from ipgkit.io import atomic_write_text
from ipgkit.progress import tqdm

from .config import ExperimentConfig, small_config
from .control import (
    capability_control,
    dose_response,
    head_to_head,
    site_search,
    support_size,
)
from .methods import SelectedSets
from .suite import Suite
from .transfer import dataset_consistency, dataset_transfer, distilled_transfer, reasoning_strength
from .validation import validation_grid
from .workspace import Outcome, Workspace

#: the suite in the order ``--all`` runs it (later experiments reuse earlier evaluations)
EXPERIMENTS: dict[str, Callable[[Suite], pd.DataFrame]] = {
    "validation_grid": validation_grid,
    "control": capability_control,
    "head_to_head": head_to_head,
    "dose": dose_response,
    "support": support_size,
    "consistency": dataset_consistency,
    "transfer": dataset_transfer,
    "distilled": distilled_transfer,
    "strength": reasoning_strength,
    "sites": site_search,
}
#: the experiments whose tables read Table 1's method sets (directly, or through the validation
#: choice): their cache key includes the sets' fingerprint (:meth:`Suite.methods_digest`)
FROM_METHODS = frozenset(EXPERIMENTS) - {"consistency", "sites"}


def run_experiments(
    suite: Suite, names: Sequence[str] | None = None, progress: bool = True
) -> dict[str, pd.DataFrame]:
    """Run (or resume) experiments by name (all of them by default), in the suite's order.

    Each finished table is written to the workspace as ``<name>.csv`` together with the seconds it
    took (``timings.csv``); a finished table is read back, not recomputed, unless the settings
    changed, or (for tables built on Table 1's sets) a method's results did.
    """
    names = list(EXPERIMENTS) if names is None else list(names)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise IpgkitError(f"unknown experiments {unknown}; choose from {list(EXPERIMENTS)}")
    tables, timings = {}, []
    timing_path = suite.ws.table_path("timings")
    if timing_path.exists():
        timings = pd.read_csv(timing_path).to_dict("records")
    bar = tqdm([n for n in EXPERIMENTS if n in names], desc="experiments", disable=not progress)
    for name in bar:
        bar.set_postfix(now=name)
        started, before = time.perf_counter(), suite.ws.computed
        settings = suite.config.settings()
        if name in FROM_METHODS:
            settings = {**settings, "methods": suite.methods_digest()}
        tables[name] = suite.ws.table(name, settings, lambda n=name: EXPERIMENTS[n](suite))
        if suite.ws.computed > before or not any(t["experiment"] == name for t in timings):
            timings = [t for t in timings if t["experiment"] != name]
            timings.append(
                {
                    "experiment": name,
                    "seconds": round(time.perf_counter() - started, 1),
                    "evaluations_run": suite.ws.computed - before,
                }
            )
            if distributed.is_main():
                atomic_write_text(timing_path, pd.DataFrame(timings).to_csv(index=False))
    return tables


__all__ = [
    "EXPERIMENTS",
    "ExperimentConfig",
    "Outcome",
    "SelectedSets",
    "Suite",
    "Workspace",
    "capability_control",
    "dataset_consistency",
    "dataset_transfer",
    "distilled_transfer",
    "dose_response",
    "head_to_head",
    "reasoning_strength",
    "run_experiments",
    "site_search",
    "small_config",
    "support_size",
    "validation_grid",
]
