"""Figures of the control experiments, drawn from their saved tables only (no model needed), so
``ipgkit figures`` regenerates every one of them in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ipgkit.errors import IpgkitError


def _errors(frame: pd.DataFrame, low: str = "ci_low", high: str = "ci_high", value="accuracy"):
    return [
        (frame[value] - frame[low]).clip(lower=0).fillna(0),
        (frame[high] - frame[value]).clip(lower=0).fillna(0),
    ]


def plot_control(table: pd.DataFrame, ax=None):
    """Table 1 as bars: pooled test accuracy per method, enhanced and suppressed, with 95% CIs and
    the unsteered accuracy as a line."""
    import matplotlib.pyplot as plt

    pooled = table[table.family == "pooled"]
    methods = list(dict.fromkeys(pooled.method))
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods)), 3.6))
    width = 0.4
    for offset, condition in ((-width / 2, "enhance"), (width / 2, "suppress")):
        rows = pooled[pooled.condition == condition].set_index("method").loc[methods]
        ax.bar(
            np.arange(len(methods)) + offset,
            rows.accuracy,
            width,
            yerr=_errors(rows),
            capsize=3,
            label=condition,
        )
    bases = pooled.groupby("level").base_accuracy.first()
    for level, value in bases.items():
        ax.axhline(
            value,
            color="k",
            lw=0.8,
            ls="--" if level == "neuron" else ":",
            label=f"unsteered ({level} model)",
        )
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set(
        ylabel="greedy accuracy (test, pooled)",
        ylim=(0, 1),
        title="Capability control (IPG paper Table 1 analogue)",
    )
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_dose(table: pd.DataFrame):
    """Accuracy vs gamma at fixed p, and vs p at gamma = 0 and at IPG's enhancement gamma."""
    import matplotlib.pyplot as plt

    gammas = sorted(table[table.axis == "p"].gamma.unique())
    figure, axes = plt.subplots(1, 1 + len(gammas), figsize=(4.2 * (1 + len(gammas)), 3.4))
    for method, rows in table[table.axis == "gamma"].groupby("method", sort=False):
        axes[0].errorbar(
            rows.gamma, rows.accuracy, yerr=_errors(rows), marker="o", capsize=2, label=method
        )
    p_fixed = int(table[table.axis == "gamma"].p.iloc[0])
    axes[0].set(xlabel="gamma", ylabel="accuracy (test, pooled)", title=f"p = {p_fixed}")
    for ax, gamma in zip(axes[1:], gammas, strict=True):
        for method, rows in table[(table.axis == "p") & (table.gamma == gamma)].groupby(
            "method", sort=False
        ):
            ax.errorbar(
                rows.p, rows.accuracy, yerr=_errors(rows), marker="o", capsize=2, label=method
            )
        ax.set(xscale="log", xlabel="p (components)", title=f"gamma = {gamma:g}")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_support(table: pd.DataFrame):
    """Accuracy after suppression / enhancement vs the number of support prompts M, and the Dice
    overlap of each M's set with the largest M's set."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12.5, 3.4))
    for (baseline, condition), rows in table.groupby(["baseline", "condition"], sort=False):
        ax = axes[0 if condition == "suppress" else 1]
        ax.errorbar(
            rows.M,
            rows.accuracy,
            yerr=_errors(rows),
            marker="o",
            capsize=2,
            label=f"h' = {baseline}",
        )
        if condition == "suppress":
            axes[2].plot(rows.M, rows.dice_with_largest, marker="o", label=f"h' = {baseline}")
    for ax, title in zip(axes[:2], ("suppress (gamma = 0)", "enhance"), strict=True):
        ax.axhline(table.base_accuracy.iloc[0], color="k", lw=0.8, ls="--", label="unsteered")
        ax.set(
            xscale="log", xlabel="support prompts M", ylabel="accuracy (test, pooled)", title=title
        )
        ax.legend(fontsize=8)
    axes[2].set(
        xscale="log",
        xlabel="support prompts M",
        ylabel="Dice with the largest M",
        ylim=(0, 1.02),
        title="stability of the top set",
    )
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_consistency(consistency: pd.DataFrame, transfer: pd.DataFrame):
    """Dice overlap of IPG sets across datasets (vs the random expectation), and the accuracy of
    each target family when steered by each source dataset's set."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    pairs = consistency.assign(
        pair=consistency["first"].map(_short) + " vs " + consistency["second"].map(_short)
    )
    labels = list(dict.fromkeys(pairs.pair))
    ps = sorted(pairs.p.unique())
    width = 0.8 / len(ps)
    for i, p in enumerate(ps):
        rows = pairs[pairs.p == p].set_index("pair").loc[labels]
        x = np.arange(len(labels)) + i * width
        axes[0].bar(x, rows.dice, width, label=f"p = {p}")
        axes[0].scatter(
            x,
            rows.random_p95,
            marker="_",
            color="k",
            s=80,
            label="random 95th pct" if i == 0 else None,
        )
    axes[0].set_xticks(
        np.arange(len(labels)) + width * (len(ps) - 1) / 2,
        labels,
        fontsize=7,
        rotation=40,
        ha="right",
    )
    axes[0].set(ylabel="Dice", title="Overlap of top-p IPG sets across datasets")
    axes[0].legend(fontsize=7)
    cells = transfer.assign(column=transfer.source.map(_short) + "\n" + transfer.condition)
    columns = list(dict.fromkeys(cells.column))
    targets = list(dict.fromkeys(cells.target))
    for offset, target in enumerate(targets):
        rows = cells[cells.target == target].set_index("column").loc[columns]
        x = np.arange(len(columns)) + 0.15 * (offset - (len(targets) - 1) / 2)
        axes[1].errorbar(
            x,
            rows.difference,
            fmt="o",
            capsize=3,
            label=f"on {_short(target)}",
            yerr=_errors(rows, "diff_ci_low", "diff_ci_high", "difference"),
        )
    axes[1].set_xticks(range(len(columns)), columns, fontsize=7)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(
        ylabel="accuracy change (test, 95% CI)", title="Transfer: set from source -> target"
    )
    axes[1].legend(fontsize=6)
    figure.tight_layout()
    return figure


def _short(name: str) -> str:
    """``arith-word/hard-train (resampled)`` -> ``word-hard (resampled)`` for tick labels."""
    text = name.replace("arith-", "").replace("/train", "").replace("/hard-train", "-hard")
    return text.replace("/test", "")


def plot_distilled(table: pd.DataFrame, ax=None):
    """Accuracy change of base and distilled models under the base model's sets."""
    import matplotlib.pyplot as plt

    rows = table[table.condition != "unsteered"].copy()
    rows["label"] = rows["set"] + "\n" + rows.condition
    labels = list(dict.fromkeys(rows.label))
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.4
    for offset, model in ((-width / 2, "base"), (width / 2, "distilled")):
        part = rows[rows.model == model].set_index("label").reindex(labels)
        ax.bar(
            np.arange(len(labels)) + offset,
            part.difference,
            width,
            label=f"{model} model",
            yerr=_errors(part, "diff_ci_low", "diff_ci_high", "difference"),
            capsize=3,
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(
        ylabel="accuracy change (test, 95% CI)",
        title="Transfer to a distilled student (IPG paper Table 3 analogue)",
    )
    ax.legend(fontsize=8)
    return ax


def plot_strength(table: pd.DataFrame):
    """Mean completion length and accuracy vs gamma for the length-reward IPG set and a random
    set, on the base model and the distilled student."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12.5, 3.4))
    for (model, name), rows in table.groupby(["model", "set"], sort=False):
        label = f"{model}: {name}"
        axes[0].plot(rows.gamma, rows.mean_length, marker="o", label=label)
        axes[1].errorbar(
            rows.gamma, rows.accuracy, yerr=_errors(rows), marker="o", capsize=2, label=label
        )
        axes[2].plot(rows.gamma, rows.check_rate, marker="o", label=label)
    axes[0].set(xlabel="gamma", ylabel="mean completion tokens", title="reasoning length")
    axes[1].set(xlabel="gamma", ylabel="accuracy (test, pooled)", title="accuracy")
    axes[2].set(
        xlabel="gamma",
        ylabel="completions with a check line",
        title="check rate",
        ylim=(-0.02, 1.02),
    )
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_sites(table: pd.DataFrame):
    """Validation accuracy at each site tried, IPG against Random and Activation."""
    import matplotlib.pyplot as plt

    rows = table.assign(site_name=table.site + table.layer.astype(str) + " " + table["mode"])
    conditions = rows[["p", "gamma"]].drop_duplicates().values.tolist()
    figure, axes = plt.subplots(
        1, len(conditions), figsize=(3.2 * len(conditions), 3.4), sharey=True, squeeze=False
    )
    for ax, (p, gamma) in zip(axes[0], conditions, strict=True):
        part = rows[(rows.p == p) & (rows.gamma == gamma)]
        for method, group in part.groupby("method", sort=False):
            ax.plot(group.site_name, group.accuracy, marker="o", ls="", label=method)
        ax.set_title(f"p = {int(p)}, gamma = {gamma:g}", fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    axes[0][0].set_ylabel("accuracy (validation)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_planted(table: pd.DataFrame):
    """Planted headroom: per planted set, each method's restored fraction of the oracle's gain
    (95% bootstrap interval) and its precision at |S| (a dot, right axis)."""
    import matplotlib.pyplot as plt

    scored = table[table.method != "(no headroom)"]
    if "size" not in scored:  # tables written before planted sets had several sizes
        scored = scored.assign(size=scored.planted.str.split().str.len())
    plants = list(dict.fromkeys(zip(scored.site, scored.rule, scored["size"], strict=True)))
    columns = min(max(len(plants), 1), 4)
    lines = max(-(-len(plants) // columns), 1)
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4.2 * lines), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(plants) :]:
        ax.set_visible(False)
    for ax, (site, rule, size) in zip(axes, plants, strict=False):
        rows = scored[(scored.site == site) & (scored.rule == rule) & (scored["size"] == size)]
        x = np.arange(len(rows))
        low = (rows.fraction_of_oracle - rows.fraction_ci_low).clip(lower=0)
        high = (rows.fraction_ci_high - rows.fraction_of_oracle).clip(lower=0)
        ax.bar(x, rows.fraction_of_oracle, yerr=[low, high], capsize=3, color="tab:blue")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xticks(x, rows.method, rotation=60, fontsize=7)
        ax.set(ylabel="fraction of the oracle's gain (test)")
        drop = rows["drop"].iloc[0]
        ax.set_title(f"{site}, |S| = {size} by {rule}: drop {drop:.2f}", fontsize=9)
        twin = ax.twinx()
        twin.plot(x, rows.precision_at_size, "o", color="tab:orange")
        twin.set(ylim=(-0.05, 1.05), ylabel="precision at |S|")
    figure.tight_layout()
    return figure


FIGURES = {
    "control_table1.png": (("control",), plot_control),
    "control_dose.png": (("dose",), plot_dose),
    "control_support.png": (("support",), plot_support),
    "control_consistency.png": (("consistency", "transfer"), plot_consistency),
    "control_distilled.png": (("distilled",), plot_distilled),
    "control_strength.png": (("strength",), plot_strength),
    "control_sites.png": (("sites",), plot_sites),
    "planted.png": (("planted",), plot_planted),
}


def draw_figures(tables_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Every figure whose tables exist in ``tables_dir`` (``<experiment>.csv``), into
    ``out_dir``. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    if not tables_dir.is_dir():
        raise IpgkitError(f"no experiment tables at {tables_dir} (run `ipgkit experiments` first)")
    written = []
    for name, (needed, draw) in FIGURES.items():
        paths = [tables_dir / f"{table}.csv" for table in needed]
        if not all(path.exists() for path in paths):
            continue
        drawn = draw(*[pd.read_csv(path) for path in paths])
        figure = drawn.figure if hasattr(drawn, "figure") and drawn.figure is not None else drawn
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_dir / name, dpi=130, bbox_inches="tight")
        plt.close(figure)
        written.append(out_dir / name)
    return written


__all__ = [
    "FIGURES",
    "draw_figures",
    "plot_consistency",
    "plot_control",
    "plot_distilled",
    "plot_dose",
    "plot_planted",
    "plot_sites",
    "plot_strength",
    "plot_support",
]
