"""The validation choice: every method's accuracy over the (p, gamma) grid on validation
problems, and the (p, gamma) each method enhances with on the test problems."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ipgkit.errors import IpgkitError

from .methods import SelectedSets
from .suite import Suite


def validation_grid(suite: Suite) -> pd.DataFrame:
    """Validation accuracy of every method at every (p, gamma) of the enhancement grid, averaged
    over families (and the first ``validation_random_seeds`` seeds of seeded baselines)."""
    config = suite.config
    tasks = suite.tasks("validation", config.validation)
    rows = []
    for sets in suite.methods.values():
        seeds = sets.results[: config.validation_random_seeds]
        trial = SelectedSets(
            sets.method, sets.level, sets.policy, sets.policy_key, seeds, sets.fixed_p
        )
        base = np.mean(
            [
                suite.evaluate(None, task, policy=sets.policy, policy_key=sets.policy_key)[
                    0
                ].accuracy
                for task in tasks
            ]
        )
        ps = (sets.fixed_p,) if sets.fixed_p else config.p_grid
        gammas = config.gamma_grid
        if sets.applies_gains:  # learned gains enhance as learned: every unit, gamma = 1
            ps, gammas = (len(sets.results[0]),), (1.0,)
        for p in ps:
            for gamma in gammas:
                outcomes = [suite.evaluate(trial, task, p, gamma) for task in tasks]
                accuracy = float(np.mean([o.accuracy for per_task in outcomes for o in per_task]))
                rows.append(
                    {
                        "method": sets.method,
                        "level": sets.level,
                        "condition": "enhance",
                        "p": p,
                        "gamma": gamma,
                        "accuracy": accuracy,
                        "base_accuracy": float(base),
                        "seeds": len(seeds),
                        "problems": sum(len(t) for t in tasks),
                    }
                )
    return pd.DataFrame(rows)


def selection(suite) -> pd.DataFrame:
    """Validation accuracy of every method over the (p, gamma) grid (cached as a table)."""
    return suite.ws.table(
        "validation_grid", suite.config.settings(), lambda: validation_grid(suite)
    )


def chosen(suite, method: str) -> tuple[int, float]:
    """The (p, gamma) a method chose on validation: the best mean accuracy over families
    (and validation seeds); ties go to the smaller p, then the smaller gamma."""
    grid = selection(suite)
    rows = grid[(grid.method == method) & (grid.condition == "enhance")]
    if rows.empty:
        raise IpgkitError(f"no validation results for method {method!r}")
    best = rows.sort_values(["accuracy", "p", "gamma"], ascending=[False, True, True]).iloc[0]
    return int(best.p), float(best.gamma)
