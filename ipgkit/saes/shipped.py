"""The SAEs shipped in ``saes/``: train and evaluate one per layer, resumably, and their table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ipgkit.io import atomic_write_text
from ipgkit.models.policy import Policy

from .quality import evaluate_sae
from .splice import SAES_DIR
from .train import SAETrainingConfig, train_sae, training_traces


def train_saes(
    policy: Policy,
    layers: Sequence[int],
    out_dir: str | Path = SAES_DIR,
    config: SAETrainingConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (and evaluate) one SAE per layer into ``out_dir/<model>-L<layer>``, as ``ipgkit
    train-sae`` does. Layers whose folder already holds an SAE are skipped unless ``overwrite``,
    so an interrupted run resumes with the next layer. The traces are sampled once.

    Returns:
        One row of :func:`evaluate_sae` metrics per layer (also saved as each folder's
        ``metrics.json``).
    """
    config = config or SAETrainingConfig()
    out_dir = Path(out_dir)
    traces = None
    rows = []
    for layer in layers:
        target = out_dir / f"{policy.name}-L{layer}"
        if (target / "cfg.json").exists() and (target / "metrics.json").exists() and not overwrite:
            rows.append(json.loads((target / "metrics.json").read_text()))
            continue
        if traces is None:
            traces = training_traces(policy, config, progress)
        started = time.perf_counter()
        sae = train_sae(policy, replace(config, layer=layer), traces, target, progress)
        metrics = {**evaluate_sae(policy, sae), "train_seconds": time.perf_counter() - started}
        atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2))
        rows.append(metrics)
    return pd.DataFrame(rows)


def metrics_markdown(table: pd.DataFrame) -> str:
    """The saes/README.md table from :func:`train_saes`'s rows."""
    lines = [
        "| layer | d_sae | k | FVU | L0 | dead latents "
        "| accuracy plain -> SAE only (change, 95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        low, high = row["change_ci"]
        lines.append(
            f"| {row['layer']} | {row['d_sae']} | {row['k']} | {row['fvu']:.3f} | {row['l0']:.1f} "
            f"| {row['dead_fraction']:.1%} "
            f"| {row['accuracy']:.3f} -> {row['accuracy_spliced']:.3f} "
            f"({row['accuracy_change']:+.3f}, [{low:+.3f}, {high:+.3f}]) |"
        )
    return "\n".join(lines)
