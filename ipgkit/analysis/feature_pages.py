"""Feature pages: each unit's top-activating contexts (with per-token colouring in HTML), its
activation histogram and the tokens its output direction promotes and suppresses, in the style
of SAE dashboards and Neuronpedia.

Activations come through :func:`ipgkit.rollouts.iter_activations`, the teacher-forced pass that
scoring uses, so any steering active on the model applies here too.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd
import torch

from ipgkit.components import ComponentSet, Positions
from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.positions import position_mask
from ipgkit.rollouts import Rollouts, TokenActivations, iter_activations, token_activations
from ipgkit.rollouts.token_views import tokens_html
from ipgkit.saes import decoder_directions


def top_activations(
    policy: Policy,
    components: ComponentSet,
    rollouts: Rollouts,
    n: int = 10,
    positions: Positions = "all",
    context: int = 24,
    internal_batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """Each unit's ``n`` largest activations over the rollouts' tokens, with their contexts.

    Rows of a group share their prompt (and often a completion prefix), and equal prefixes give
    equal activations, so each context is reported once: the text up to the token identifies it.

    Returns:
        A tidy DataFrame: index (the unit), rank, activation, row, position, token (its text),
        before (up to ``context`` tokens of text before it) and after (a few tokens after).

    Example:
        >>> top_activations(policy, sae_features(policy, 2, [17]), rollouts, n=5)  # doctest: +SKIP
    """
    if n < 1:
        raise IpgkitError(f"n must be >= 1, got {n}")
    components = components.resolved(policy.model)
    units = len(components)
    # a prefix repeats at most once per row of its group: keep enough candidates to drop repeats
    pool = n * (rollouts.n + 1)
    best = torch.full((units, 0), float("-inf"), dtype=torch.float64)
    where = torch.zeros((units, 0, 2), dtype=torch.long)
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    for chunk in iter_activations(
        policy,
        components.hook_name,
        prompts,
        completions,
        positions,
        internal_batch_size,
        progress=progress,
    ):
        values = components.coordinates(chunk.activations.double()).T  # [units, tokens]
        located = torch.stack([chunk.row_index, chunk.position], -1)  # [tokens, 2]
        candidates = torch.cat([best, values], dim=1)
        places = torch.cat([where, located[None].expand(units, -1, -1)], dim=1)
        best, order = candidates.topk(min(pool, candidates.shape[1]), dim=1)
        where = places.gather(1, order[..., None].expand(-1, -1, 2))
    sequences = [[*p, *c] for p, c in zip(prompts, completions, strict=True)]
    records = []
    for u, index in enumerate(components.indices):
        seen: set[tuple[int, ...]] = set()
        for value, (row, position) in zip(best[u].tolist(), where[u].tolist(), strict=True):
            sequence = sequences[row]
            prefix = tuple(sequence[: position + 1])
            if prefix in seen:
                continue
            seen.add(prefix)
            records.append(
                {
                    "index": index,
                    "rank": len(seen) - 1,
                    "activation": value,
                    "row": row,
                    "position": position,
                    "token": policy.tokenizer.decode([sequence[position]]),
                    "before": policy.tokenizer.decode(
                        sequence[max(0, position - context) : position]
                    ),
                    "after": policy.tokenizer.decode(
                        sequence[position + 1 : position + 1 + context // 4]
                    ),
                }
            )
            if len(seen) == n:
                break
    return pd.DataFrame.from_records(records)


def output_tokens(policy: Policy, components: ComponentSet, n: int = 10) -> pd.DataFrame:
    """The tokens each unit's output direction promotes and suppresses most: ``direction @ W_U``
    (a logit-lens read that skips the final LayerNorm's scale; SAE latents read their decoder row).

    Returns:
        A tidy DataFrame: index, effect (``"promotes"``/``"suppresses"``), rank, token, logit.
    """
    components = components.resolved(policy.model)
    directions = decoder_directions(policy, components).to(policy.model.W_U.dtype)
    logits = (directions @ policy.model.W_U.detach()).double()  # [units, vocab]
    count = min(n, logits.shape[1])
    records = []
    for effect, sign in (("promotes", 1.0), ("suppresses", -1.0)):
        values, ids = (sign * logits).topk(count, dim=1)
        for u, index in enumerate(components.indices):
            for rank in range(count):
                records.append(
                    {
                        "index": index,
                        "effect": effect,
                        "rank": rank,
                        "token": policy.tokenizer.decode([int(ids[u, rank])]),
                        "logit": sign * float(values[u, rank]),
                    }
                )
    return pd.DataFrame.from_records(records)


@dataclass
class FeaturePages:
    """What a researcher looks at for each unit: top-activating contexts, the activation
    histogram and output tokens (plain text, a figure, or HTML with per-token colouring).

    Attributes:
        components: the units the pages describe.
        contexts: :func:`top_activations`'s table.
        logits: :func:`output_tokens`'s table.
        histograms: per unit, the histogram of its activations over the selected tokens: index,
            low, high (bin edges), count.
        traces: every rollout's per-token activations of the units (what colours the contexts).
    """

    components: ComponentSet
    contexts: pd.DataFrame
    logits: pd.DataFrame
    histograms: pd.DataFrame = field(default_factory=pd.DataFrame)
    traces: TokenActivations | None = None

    @property
    def units(self) -> list[int]:
        return list(self.components.indices)

    def page(self, index: int) -> str:
        """A plain-text page for unit ``index``: contexts with the token in [[ ]], output tokens."""
        if index not in self.units:
            raise IpgkitError(f"unit {index} has no page; pages exist for {self.units}")
        contexts = self.contexts[self.contexts["index"] == index]
        logits = self.logits[self.logits["index"] == index]
        lines = [
            f"{self.components.kind} {index} at {self.components.hook_name}",
            "top activations:",
        ]
        for item in contexts.itertuples():
            text = f"{item.before}[[{item.token}]]{item.after}".replace("\n", "⏎")
            lines.append(f"  {item.activation:8.3f}  {text}")
        for effect in ("promotes", "suppresses"):
            chosen = logits[logits["effect"] == effect]
            tokens = ", ".join(
                f"{t!r} {v:+.2f}" for t, v in zip(chosen.token, chosen.logit, strict=True)
            )
            lines.append(f"{effect}: {tokens}")
        return "\n".join(lines)

    def plot(self, index: int, ax=None):
        """Top output-token logits (bars) with the top contexts as text beside them; returns the
        bar axes. Without ``ax`` the figure is laid out so a plain ``savefig`` clips nothing."""
        import matplotlib.pyplot as plt

        self.page(index)  # validates index
        logits = self.logits[self.logits["index"] == index].sort_values("logit")
        contexts = self.contexts[self.contexts["index"] == index].head(6)
        if ax is None:
            _, (ax, text_ax) = plt.subplots(
                1, 2, figsize=(9, 4.5), width_ratios=(1, 1.1), layout="constrained"
            )
        else:
            text_ax = ax.inset_axes((1.02, 0.0, 1.0, 1.0))
        labels = [repr(t)[1:-1] for t in logits.token]
        ax.barh(
            range(len(logits)),
            logits.logit,
            color=["tab:red" if v < 0 else "tab:blue" for v in logits.logit],
        )
        ax.set_yticks(range(len(logits)), labels, fontsize=8)
        ax.set_xlabel("direct logit effect per unit of activation")
        ax.set_title(f"{self.components.kind} {index} ({self.components.hook_name})", fontsize=9)
        rows = zip(
            contexts.activation, contexts.before, contexts.token, contexts.after, strict=True
        )
        text = "\n".join(f"{a:6.2f}  {b[-18:]}[{t}]{c}".replace("\n", "⏎") for a, b, t, c in rows)
        text_ax.axis("off")
        text_ax.text(0.0, 1.0, "top contexts\n" + text, va="top", family="monospace", fontsize=7)
        return ax

    def to_html(self, index: int | None = None) -> str:
        """Self-contained HTML pages (all units, or unit ``index``): contexts coloured per
        token, the activation histogram as inline SVG, promoted and suppressed tokens."""
        indices = self.units if index is None else [index]
        return "\n".join(feature_page_html(self, unit) for unit in indices)


def feature_pages(
    policy: Policy,
    components: ComponentSet,
    rollouts: Rollouts,
    n_contexts: int = 8,
    n_tokens: int = 8,
    positions: Positions = "all",
    bins: int = 30,
    progress: bool = True,
) -> FeaturePages:
    """Pages for a few units (SAE features, neurons or directions) from the rollouts' tokens.

    Two teacher-forced passes over the rollouts: one streams the top contexts, one keeps every
    position's activation of the units (the histograms and the contexts' colours).

    Example:
        >>> pages = feature_pages(policy, result.top(3), rollouts)        # doctest: +SKIP
        >>> print(pages.page(pages.units[0]))                             # doctest: +SKIP
        >>> Path("pages.html").write_text(pages.to_html())                # doctest: +SKIP
    """
    components = components.resolved(policy.model)
    contexts = top_activations(
        policy, components, rollouts, n_contexts, positions, progress=progress
    )
    traces = token_activations(policy, rollouts, components, progress=progress)
    return FeaturePages(
        components,
        contexts,
        output_tokens(policy, components, n_tokens),
        activation_histograms(traces, positions, bins),
        traces,
    )


def activation_histograms(
    traces: TokenActivations, positions: Positions = "all", bins: int = 30
) -> pd.DataFrame:
    """Per unit, ``bins`` equal bins between its smallest and largest activation over the
    selected positions of ``traces`` (index, low, high, count, active). SAE latents are binned
    over the tokens where they fire (> 0), as SAE dashboards do, with ``active`` the fraction of
    tokens that is; for other units every token is binned and ``active`` is 1."""
    if bins < 1:
        raise IpgkitError(f"bins must be >= 1, got {bins}")
    selected = []
    for values, prompt_length in zip(traces.activations, traces.prompt_lengths, strict=True):
        mask = position_mask(torch.tensor([prompt_length]), None, values.shape[0], positions)[0]
        selected.append(values[mask])
    values = torch.cat(selected)  # [tokens, units]
    records = []
    for column, index in enumerate(traces.components.indices):
        unit = values[:, column]
        if traces.components.kind == "sae":
            unit = unit[unit > 0]
        active = len(unit) / max(len(values), 1)
        if len(unit) == 0:
            continue
        low, high = float(unit.min()), float(unit.max())
        high = high if high > low else low + 1.0  # a constant unit still gets one visible bin
        counts, edges = torch.histogram(unit, bins=bins, range=(low, high))
        for b in range(bins):
            records.append(
                {
                    "index": index,
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "count": int(counts[b]),
                    "active": active,
                }
            )
    return pd.DataFrame.from_records(records)


# --- HTML (self-contained: inline styles and SVG, no scripts or network) -------------------------

#: tokens shown before and after a context's activating token
BEFORE, AFTER = 24, 6


def histogram_svg(bins: pd.DataFrame, width: int = 320, height: int = 90) -> str:
    """Bars of ``bins`` (low, high, count) as inline SVG, with the range written under them."""
    if bins.empty:
        return ""
    tallest = max(int(bins["count"].max()), 1)
    step = width / len(bins)
    bars = []
    for slot, item in enumerate(bins.itertuples()):
        bar = (height - 14) * item.count / tallest
        bars.append(
            f'<rect x="{slot * step:.1f}" y="{height - 14 - bar:.1f}" width="{step * 0.9:.1f}" '
            f'height="{bar:.1f}" fill="#d62728"><title>{item.low:.3g} .. {item.high:.3g}: '
            f"{item.count}</title></rect>"
        )
    low, high = float(bins["low"].iloc[0]), float(bins["high"].iloc[-1])
    labels = (
        f'<text x="0" y="{height - 2}" font-size="10">{low:.3g}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{high:.3g}</text>'
    )
    return (
        f'<svg class="histogram" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(bars)}{labels}</svg>'
    )


def context_html(pages: FeaturePages, unit: int, row: int, position: int, scale: float) -> str:
    """The tokens around ``position`` of rollout ``row``, coloured by ``unit``'s activation."""
    traces = pages.traces
    if traces is None or row not in traces.rows:
        item = pages.contexts[(pages.contexts["index"] == unit) & (pages.contexts["row"] == row)]
        return html.escape("".join(item[["before", "token", "after"]].iloc[0]))
    slot = traces.rows.index(row)
    return tokens_html(
        traces.tokens[slot],
        traces.values(row, unit, "activation"),
        scale,
        max(0, position - BEFORE),
        position + 1 + AFTER,
        marked=position,
    )


def feature_page_html(pages: FeaturePages, unit: int) -> str:
    """One unit's page: header, histogram, top contexts, promoted and suppressed tokens."""
    pages.page(unit)  # validates the unit
    contexts = pages.contexts[pages.contexts["index"] == unit]
    scale = float(contexts["activation"].abs().max()) if len(contexts) else 0.0
    rows = "".join(
        f'<tr><td class="num">{item.activation:.3f}</td><td>'
        f"{context_html(pages, unit, item.row, item.position, scale)}</td></tr>"
        for item in contexts.itertuples()
    )
    histogram = (
        pages.histograms[pages.histograms["index"] == unit] if len(pages.histograms) else None
    )
    logits = pages.logits[pages.logits["index"] == unit]
    effects = "".join(
        f"<tr><th>{effect}</th><td>"
        + " ".join(
            f'<code title="{value:+.3f}">{html.escape(repr(token))}</code>'
            for token, value in zip(chosen.token, chosen.logit, strict=True)
        )
        + "</td></tr>"
        for effect, chosen in logits.groupby("effect", sort=False)
    )
    kind, hook = pages.components.kind, pages.components.hook_name
    return (
        f'<section class="feature" id="{kind}-{unit}"><h3>{kind} {unit} '
        f"<small>at {html.escape(hook)}</small></h3>"
        + (_histogram_section(histogram) if histogram is not None and len(histogram) else "")
        + f'<h4>Top activations</h4><table class="contexts">{rows}</table>'
        f'<h4>Output tokens (direction @ W_U)</h4><table class="logits">{effects}</table>'
        "</section>"
    )


def _histogram_section(histogram: pd.DataFrame) -> str:
    active = float(histogram["active"].iloc[0])
    which = "" if active == 1.0 else f" (where it fires: {100 * active:.2g}% of tokens)"
    return f"<h4>Activation histogram{which}</h4>{histogram_svg(histogram)}"
