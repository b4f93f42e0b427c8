"""One self-contained HTML page per attribution result: the scores, whether they add up, which
prompts carried signal, each top unit's per-token heat maps on correct and wrong rollouts side by
side, and its feature page (top contexts, histogram, output tokens).

No scripts, no network at view time: styles are inline, the score plot is an embedded PNG and the
histograms inline SVG, so the file can be mailed, attached to a lab notebook or opened offline.

Example:
    >>> result = ipgkit.ipg(policy, task.problems[:16], mlp_neurons(2), task.correctness)
    >>> Path("report.html").write_text(result.to_html(policy))              # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ipgkit.analysis import feature_pages
from ipgkit.errors import no_signal_advice
from ipgkit.io import atomic_path
from ipgkit.models.policy import Policy, require_policy
from ipgkit.rollouts import Rollouts, TokenActivations, token_activations

from .config import IPGConfig
from .estimators import completeness_holds
from .tokens import token_attribution

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em} td,th{padding:2px 8px;border-bottom:1px solid #eee}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{background:#e8f5e9;padding:.5em 1em} .warn{background:#fff3e0;padding:.5em 1em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em} .rollout{border:1px solid #ddd;
padding:.4em;font-size:.85em;line-height:1.6;overflow-wrap:anywhere}
.feature{border-left:3px solid #d62728;padding-left:1em;margin:1em 0}
"""


@dataclass
class ReportOptions:
    """What :func:`attribution_report` shows.

    Attributes:
        top: units with heat maps and feature pages (the highest scores).
        table_rows: rows of the score table (highest ranks first).
        pairs: prompts whose best and worst rollouts are shown side by side per unit.
        n_contexts: top-activating contexts per feature page.
        progress: tqdm bars for the passes over the rollouts.
    """

    top: int = 5
    table_rows: int = 20
    pairs: int = 2
    n_contexts: int = 6
    progress: bool = False


def attribution_report(
    result,
    policy: Policy | None = None,
    rollouts: Rollouts | None = None,
    options: ReportOptions | None = None,
    title: str | None = None,
) -> str:
    """The HTML page of an :class:`~ipgkit.attribution.AttributionResult`.

    Without a policy the page holds the summary, the completeness check and the score table;
    with one (and rollouts: ``rollouts`` or the support set the result carries) it adds, per top
    unit, per-token IPG (paper mode; activations otherwise) on the best and worst rollout of a few
    prompts, and feature pages.

    Example:
        >>> page = attribution_report(result, policy, options=ReportOptions(top=3))
        >>> "Completeness" in page
        True
    """
    options = options or ReportOptions()
    rollouts = rollouts if rollouts is not None else getattr(result, "rollouts", None)
    title = title or f"{result.method} attribution at {result.components.hook_name}"
    sections = [_summary(result), _scores(result, options.table_rows)]
    if policy is not None and rollouts is not None and result.ranks_anything:
        policy = require_policy(policy, "attribution_report")
        units = list(result.top(min(options.top, len(result))).indices)
        sections.append(_token_views(result, policy, rollouts, units, options))
        pages = feature_pages(
            policy,
            replace(result.components, indices=tuple(units)),
            rollouts,
            options.n_contexts,
            progress=options.progress,
        )
        sections.append("<h2>Feature pages</h2>" + pages.to_html())
    else:
        sections.append(f'<p class="warn">{_why_no_views(result, policy, rollouts)}</p>')
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "".join(sections) + "</body></html>"
    )


def _why_no_views(result, policy, rollouts) -> str:
    if policy is None:
        return (
            "Per-token views and feature pages need the policy: "
            "<code>result.to_html(policy)</code> or <code>ipgkit report RESULT</code>."
        )
    if rollouts is None:
        return (
            "Per-token views and feature pages need the rollouts the units are read on: "
            "<code>result.to_html(policy, rollouts)</code> (paper-mode IPG results carry them)."
        )
    return "No unit ranks above another (every score is equal), so there are no top units to show."


def write_report(result, path: str | os.PathLike, *args, **kwargs) -> Path:
    """:func:`attribution_report` written to ``path`` atomically; returns the path."""
    path = Path(path)
    page = attribution_report(result, *args, **kwargs)
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path


def _summary(result) -> str:
    info = result.info
    rows = [
        ("method", result.method),
        ("outcome (reward)", info.get("reward", "")),
        ("units", f"{len(result)} {result.components.kind} at {result.components.hook_name}"),
        ("policy", info.get("policy", "")),
        ("prompts", len(info.get("problem_ids", [])) or ""),
        ("rows scored", info.get("rows_scored", "")),
        ("seconds", f"{info['seconds']:.1f}" if "seconds" in info else ""),
        ("settings", ", ".join(f"{k}={v}" for k, v in info.get("config", {}).items())),
    ]
    table = "".join(
        f"<tr><th>{name}</th><td>{html.escape(str(value))}</td></tr>"
        for name, value in rows
        if value != ""
    )
    return f"<h2>Summary</h2><table>{table}</table>" + _checks(result)


def _checks(result) -> str:
    parts = ["<h2>Completeness</h2>"]
    if result.delta is None:
        parts.append("<p>This method makes no completeness claim (no delta recorded).</p>")
    else:
        total = float(result.scores.sum())
        change = total - result.delta
        holds = completeness_holds(result.delta, change)
        verdict = "holds" if holds else "does not hold"
        parts.append(
            f'<p class="{"ok" if holds else "warn"}">The scores sum to {total:+.4g}; they should '
            f"add up to {html.escape(str(result.info.get('delta_of', 'the change')))} = "
            f"{change:+.4g}. Delta {result.delta:+.4g}: completeness {verdict} "
            "(|delta| &le; 10% of the change).</p>"
        )
    zero = result.frac_reward_zero_std
    if zero is not None:
        parts.append(
            f'<p class="{"warn" if zero >= 0.5 else "ok"}">frac_reward_zero_std = {zero:.2f}: '
            "the fraction of prompts whose rollouts all earned the same reward; they carry no "
            f"signal, so the scores rest on the other {100 * (1 - zero):.0f}%. "
            f"{html.escape(_signal_advice(result, zero))}</p>"
        )
    return "".join(parts)


def _signal_advice(result, zero: float) -> str:
    if not result.ranks_anything:
        return no_signal_advice(zero) + "."
    if zero >= 0.5:
        return (
            "More rollouts per prompt, or problems the model solves about half the time, would "
            "put more prompts to use."
        )
    return ""


def _scores(result, rows: int) -> str:
    frame = result.to_dataframe().sort_values("rank").head(rows)
    body = "".join(
        f'<tr><td class="num">{item.rank}</td><td class="num">{item.index}</td>'
        f'<td class="num">{item.score:+.4g}</td><td class="num">'
        f"{'' if math.isnan(item.stderr) else f'{item.stderr:.2g}'}</td></tr>"
        for item in frame.itertuples()
    )
    return (
        f"<h2>Scores</h2><img alt='scores per unit' src='data:image/png;base64,{_plot_png(result)}'"
        " style='max-width:100%'><table><tr><th>rank</th><th>index</th><th>score</th>"
        f"<th>stderr</th></tr>{body}</table>"
    )


def _plot_png(result) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ax = result.plot()
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png", dpi=110)
    plt.close(ax.figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def result_config(result) -> IPGConfig | None:
    """The IPGConfig a paper-mode IPG result was computed with (None if it cannot be rebuilt)."""
    settings = result.info.get("config") or {}
    if result.method != "ipg" or settings.get("mode") != "paper":
        return None
    if settings.get("baseline") == "tensor":
        return None  # a tensor baseline is not stored with the result
    names = {f.name for f in fields(IPGConfig)}
    return IPGConfig(**{k: v for k, v in settings.items() if k in names})


def contrasting_rows(rollouts: Rollouts, pairs: int) -> list[tuple[int, int]]:
    """(best, worst) rollout rows of the first ``pairs`` prompts whose rewards differ."""
    if rollouts.rewards is None:
        return []
    chosen = []
    for group, rewards in enumerate(rollouts.rewards_by_group()):
        if len(chosen) == pairs:
            break
        if rewards.max() > rewards.min():
            first = group * rollouts.n
            chosen.append((first + int(rewards.argmax()), first + int(rewards.argmin())))
    return chosen


def _token_views(result, policy, rollouts, units, options: ReportOptions) -> str:
    pairs = contrasting_rows(rollouts, options.pairs)
    if not pairs:
        return "<h2>Per-token views</h2><p>No prompt's rollouts differ in reward.</p>"
    rows = [row for pair in pairs for row in pair]
    config = result_config(result)
    if config is not None:
        view: TokenActivations = token_attribution(
            policy, rollouts, result.components, config, rows, units, options.progress
        )
        what = "each token's share of the unit's IPG (red adds to the outcome, blue takes away)"
    else:
        view = token_activations(policy, rollouts, result.components, rows, units)
        what = "the unit's activation at each token (this method has no per-token scores)"
    parts = [f"<h2>Per-token views</h2><p>Colour: {what}; best rollout left, worst right.</p>"]
    for unit in units:
        scale = max(max(abs(v) for v in view.values(row, unit)) for row in rows)
        parts.append(f"<h3>{result.components.kind} {unit}</h3>")
        for best, worst in pairs:
            cells = "".join(
                f'<div class="rollout"><b>reward {view.rewards[view.rows.index(row)]:g}</b> '
                f"(row {row})<br>{view.to_html(row, unit, scale=scale)}</div>"
                for row in (best, worst)
            )
            parts.append(f'<div class="pair">{cells}</div>')
    return "".join(parts)
